//! Typed settings, loaded in layers: built-in defaults ← a TOML file
//! (`config/default.toml`, or `--config FILE`) ← `EXAMWATCH__SECTION__KEY`
//! environment variables.
//!
//! Every knob has a default here so the server runs with no file at all; the
//! file shipped in `config/default.toml` only documents them. Durations are
//! humantime strings (`"15s"`, `"250ms"`) so tests can shrink minutes to
//! milliseconds. A bad value is a start-up error that names the key: figment
//! reports type errors with their key and source, and [`Settings::validate`]
//! checks what types alone cannot.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Deserializer, Serialize};

/// Environment prefix; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "EXAMWATCH__";
/// The file read when `--config` is not given (skipped if it does not exist).
pub const DEFAULT_CONFIG_FILE: &str = "config/default.toml";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub database: DatabaseSettings,
    pub events: EventSettings,
    pub broker: BrokerSettings,
    pub cluster: ClusterSettings,
    pub exam: ExamSettings,
    pub alerts: AlertSettings,
    pub ws: WsSettings,
    pub sse: SseSettings,
    pub http: HttpSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the HTTP/WebSocket listener binds.
    pub bind: SocketAddr,
    /// Allowed `Origin` values for WebSocket handshakes. Empty = any origin
    /// (a warning is logged at start-up). Comma-separated from the env.
    #[serde(deserialize_with = "string_or_list")]
    pub allowed_origins: Vec<String>,
    /// Where the server keeps its own files (the generated JWT secret).
    pub data_dir: PathBuf,
    /// Upper bound on waiting for connections to finish at shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Time between reporting not-ready and closing sockets, so a load
    /// balancer stops routing new clients here first.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// A rolling restart closes this instance's sockets (close 1012) one by
    /// one, spread evenly over this window after `drain_delay`, so their
    /// clients do not all reconnect elsewhere in the same second
    /// (src/drain.rs). 0 closes them all at once.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// How often the readiness check opens a WebSocket to this server's own
    /// public listener and pings it (src/health.rs). 0 turns the check off.
    #[serde(with = "humantime_serde")]
    pub ws_probe_interval: Duration,
    /// How long one such check may take (connect, upgrade, ping, pong).
    #[serde(with = "humantime_serde")]
    pub ws_probe_timeout: Duration,
    /// Address of the operators' listener (`/metrics`, and `/readyz` with
    /// its details). Loopback by default: never expose it publicly.
    pub admin_bind: SocketAddr,
    /// Deadline for a client to send a complete request head, and for the
    /// next one on an idle keep-alive connection (see `accept.rs`).
    #[serde(with = "humantime_serde")]
    pub request_head_timeout: Duration,
    /// Deadline for a whole request once its head is in: its body read and
    /// its answer made (408 `request_timeout` past it).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Open connections at most (HTTP and WebSocket together); past it a
    /// client gets 503 with `Retry-After`. 0 = the open-files limit less a
    /// reserve for the database, Redis and the server itself (logged at
    /// start-up).
    pub max_connections: usize,
    /// Peers (IPs or CIDR blocks) whose `server.client_ip_header` names the
    /// client; from any other peer the header is ignored (`client_ip.rs`).
    /// Empty (the default): the client is always the TCP peer.
    pub trusted_proxies: crate::client_ip::TrustedProxies,
    /// The header a trusted proxy writes: `x-forwarded-for` or `forwarded`.
    pub client_ip_header: crate::client_ip::ClientIpHeader,
    /// TLS on the public listener (HTTPS and wss), in-process.
    pub tls: TlsSettings,
    /// Shard threads (src/shard.rs): each runs its own single-threaded
    /// runtime, and an exam's connections and room run on the one its id
    /// hashes to, so an event crosses no thread. `"auto"` (the default):
    /// one per core the process may use; `0`: off, everything on the main
    /// runtime's worker threads.
    pub shards: ShardCount,
}

/// More shard threads than this is a typo, not a machine.
const MAX_SHARDS: usize = 1024;

/// `server.shards`: `"auto"` or a number of threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShardCount {
    /// One per core (`std::thread::available_parallelism`).
    #[default]
    Auto,
    Count(usize),
}

impl ShardCount {
    /// The number of shard threads to start (0: shards off).
    pub fn resolve(self) -> usize {
        match self {
            ShardCount::Auto => crate::shard::auto_count(),
            ShardCount::Count(n) => n,
        }
    }
}

impl Serialize for ShardCount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ShardCount::Auto => s.serialize_str("auto"),
            ShardCount::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for ShardCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u64),
            Word(String),
        }
        let bad =
            || <D::Error as serde::de::Error>::custom("expected \"auto\" or a number of threads");
        match Raw::deserialize(d)? {
            Raw::Count(n) => usize::try_from(n).map(ShardCount::Count).map_err(|_| bad()),
            Raw::Word(w) if w.trim().eq_ignore_ascii_case("auto") => Ok(ShardCount::Auto),
            Raw::Word(w) => w.trim().parse().map(ShardCount::Count).map_err(|_| bad()),
        }
    }
}

/// TLS in-process (`src/tls.rs`): with both files set, `server.bind`
/// speaks only TLS (1.2 and 1.3, rustls on `ring`); without them, plain
/// HTTP for a proxy to terminate. The operators' listener
/// (`server.admin_bind`) stays plain either way: it is meant for loopback
/// or a private monitoring network.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, the server's certificate first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate.
    pub key: Option<PathBuf>,
    /// How often the two files' modification times are checked; a change
    /// reloads them (so does SIGHUP). A bad new pair keeps the old one.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allowed_origins: Vec::new(),
            data_dir: PathBuf::from("data"),
            shutdown_timeout: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
            drain_window: Duration::from_secs(10),
            ws_probe_interval: Duration::from_secs(5),
            ws_probe_timeout: Duration::from_secs(2),
            admin_bind: SocketAddr::from(([127, 0, 0, 1], 9090)),
            request_head_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 0,
            trusted_proxies: Default::default(),
            client_ip_header: Default::default(),
            tls: TlsSettings::default(),
            shards: ShardCount::Auto,
        }
    }
}

/// Token signature algorithm. Pinned: a token signed with anything else is
/// refused, whatever its header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    EdDSA,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret. When absent, one is generated and kept in
    /// `server.data_dir` (mode 0600).
    pub jwt_secret: Option<Secret>,
    /// PEM public key (RS256/EdDSA), inline or via `public_key_file`.
    pub public_key: Option<String>,
    pub public_key_file: Option<PathBuf>,
    /// PEM private key, only used by `examwatch token` with RS256/EdDSA.
    pub private_key_file: Option<PathBuf>,
    /// Accepted `iss` values; checked (and required) when non-empty.
    #[serde(deserialize_with = "string_or_list")]
    pub issuer: Vec<String>,
    /// Accepted `aud` values; checked (and required) when non-empty.
    #[serde(deserialize_with = "string_or_list")]
    pub audience: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// How long a connection ticket (`POST /v1/tickets`) stays valid. Short:
    /// it is put in a WebSocket URL, where proxies may log it.
    #[serde(with = "humantime_serde")]
    pub ticket_ttl: Duration,
    /// Unused tickets this instance keeps in memory at most (without
    /// Redis, or while it is unreachable); past it, `POST /v1/tickets`
    /// answers 503 `tickets_unavailable`.
    pub ticket_capacity: usize,
    /// How long past its token's `exp` a connection may stay open before
    /// it gets `error token_expired` and close 4401 (a socket may send
    /// `refresh` with a new token before that). Also ends SSE streams.
    #[serde(with = "humantime_serde")]
    pub expiry_grace: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::HS256,
            jwt_secret: None,
            public_key: None,
            public_key_file: None,
            private_key_file: None,
            issuer: Vec::new(),
            audience: Vec::new(),
            leeway: Duration::from_secs(30),
            ticket_ttl: Duration::from_secs(30),
            ticket_capacity: 50_000,
            expiry_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// `redis://host:port/` (one server) or `redis+cluster://h1:p1,h2:p2`
    /// (a Redis Cluster; a TOML list of `redis://` URLs means the same) to
    /// share exams between instances; empty = this instance alone
    /// (in-memory broker). See `broker::conn`.
    pub redis_url: crate::broker::conn::RedisUrl,
    /// Prefix of every Redis key and channel.
    pub prefix: String,
    /// Events allowed to wait while Redis is unreachable; beyond it they
    /// are dropped from the stream and every teacher gets a snapshot once
    /// Redis is back.
    pub queue_limit: usize,
    /// How long an instance's liveness key lives (renewed every third).
    /// Rooms look for a dead instance's students every third of it.
    #[serde(with = "humantime_serde")]
    pub heartbeat_ttl: Duration,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            redis_url: Default::default(),
            prefix: "examwatch".into(),
            queue_limit: 100_000,
            heartbeat_ttl: Duration::from_secs(10),
        }
    }
}

/// `[cluster]`: spreading connections over the fleet (src/rebalance).
/// With the in-memory broker (one instance) there is no fleet: nothing is
/// published and nothing is ever shed automatically.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// Shed connections while this instance holds more than its share of
    /// the fleet's (docs/DEPLOY.md, "Rebalancing"). Counts are published
    /// either way (`GET /v1/admin/instances`, the operator's drain).
    pub rebalance: bool,
    /// How far above the fleet's average an instance may be before it
    /// sheds (0.2: 20 % above); it then sheds down to the average.
    pub rebalance_tolerance: f64,
    /// The shed connections close (1012 "rebalance") spread over this
    /// window; a new shedding starts no sooner than a window later.
    #[serde(with = "humantime_serde")]
    pub rebalance_window: Duration,
    /// How often the counts are published and the decision taken. A count
    /// older than three of these is an instance that is gone.
    #[serde(with = "humantime_serde")]
    pub rebalance_interval: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            rebalance: false,
            rebalance_tolerance: 0.2,
            rebalance_window: Duration::from_secs(60),
            rebalance_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path/to/file.db` (created with its folder, WAL mode) or
    /// `postgres://user@host/db`. The same code runs on both.
    pub url: String,
    pub max_connections: u32,
    /// The event writer commits at most this many records per transaction...
    pub batch_max: usize,
    /// ...and waits at most this long to fill a batch that holds a record
    /// someone waits on (an answer's or a submission's `ack`)...
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// ...and at most this long to fill a batch of records nobody waits on
    /// (events, session records, proctor actions, alerts): fewer commits,
    /// less CPU per event (store/writer.rs).
    #[serde(with = "humantime_serde")]
    pub events_flush_interval: Duration,
    /// Records waiting for the database beyond this: new exam connections
    /// are refused (503) until the backlog drains. Nothing is dropped.
    pub queue_limit: usize,
    /// Recorded with every session; defaults to `hostname:pid`.
    pub instance_id: Option<String>,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://data/examwatch.db".into(),
            max_connections: 8,
            batch_max: 512,
            flush_interval: Duration::from_millis(5),
            events_flush_interval: Duration::from_millis(25),
            queue_limit: 100_000,
            instance_id: None,
        }
    }
}

/// `[events]`: what of the live stream goes to the database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventSettings {
    /// Write each `student` event (progress, focus, connects...) to the
    /// exam's event log. `false` keeps the log to the exam's control
    /// events (announcements, phase and clock changes, actions, alerts,
    /// hands, deliveries), so a student event costs no database work at
    /// all: the like-for-like setting against in-memory servers
    /// (bench/ab.sh `examwatch-mem`). Answers, submissions, sessions,
    /// proctor actions and alerts stay durable either way; what is lost is
    /// the per-event history (timeline, a student's page of it, their
    /// last state after a restart): docs/DEPLOY.md.
    pub persist: bool,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self { persist: true }
    }
}

/// What happens when a student opens a second connection to the same exam.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondSession {
    /// The new connection wins; the old one gets `session_invalidated` and 4001.
    Takeover,
    /// The new connection is closed with 4009; the old one keeps going.
    Reject,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExamSettings {
    /// A connected student with no progress or activity for this long is idle.
    #[serde(with = "humantime_serde")]
    pub idle_after: Duration,
    /// A dropped student is marked disconnected only after this long away.
    #[serde(with = "humantime_serde")]
    pub disconnect_grace: Duration,
    pub second_session: SecondSession,
    /// How long a reconnecting client's old socket may take to answer a
    /// liveness ping before it is judged dead (see `previous_session`).
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// Events kept per exam for `resume`; older gaps get a fresh snapshot.
    pub history_size: usize,
    /// How long an exam room with nobody in it is kept before it is dropped.
    #[serde(with = "humantime_serde")]
    pub room_linger: Duration,
    /// Bound of each room's command inbox.
    pub room_inbox: usize,
    /// How long a student's cluster-wide session lease lives without being
    /// renewed (renewed every third of it); a crashed instance's students
    /// are freed after this.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// When the roster cannot be read (database down, nothing cached):
    /// admit on the token alone (true) or refuse with 503 (false).
    pub roster_fail_open: bool,
    /// Repeated alerts of one kind for one student within this are folded
    /// into one (sent with their count when it ends), so one student cannot
    /// flood the dashboard; zero sends every alert.
    #[serde(with = "humantime_serde")]
    pub alert_window: Duration,
    /// How often each instance looks for exams whose clock runs (an
    /// automatic start coming up, a deadline or an end to keep) and starts
    /// their rooms, so timers fire with nobody connected and after a
    /// restart (room/scheduler.rs).
    #[serde(with = "humantime_serde")]
    pub control_scan: Duration,
    /// How long `POST /v1/exams/{id}/actions` waits for the targets'
    /// clients to acknowledge the action's frame before it answers (those
    /// that did show `delivered`, the others `pending`). Zero: no wait.
    #[serde(with = "humantime_serde")]
    pub action_ack_wait: Duration,
}

impl Default for ExamSettings {
    fn default() -> Self {
        Self {
            idle_after: Duration::from_secs(60),
            disconnect_grace: Duration::from_secs(10),
            second_session: SecondSession::Takeover,
            probe_timeout: Duration::from_secs(2),
            history_size: 1024,
            room_linger: Duration::from_secs(300),
            room_inbox: 1024,
            roster_fail_open: true,
            lease_ttl: Duration::from_secs(30),
            alert_window: Duration::from_secs(10),
            control_scan: Duration::from_secs(5),
            action_ack_wait: Duration::from_secs(1),
        }
    }
}

/// Thresholds of the automatic alerts (docs/PROTOCOL.md, alerts).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    /// A student who has sent heartbeats and goes this long without one
    /// while progress or answers keep arriving gets a `heartbeat_gap`
    /// alert (a second client, or a page with its heartbeat removed).
    #[serde(with = "humantime_serde")]
    pub heartbeat_gap: Duration,
    /// More than this share (0-1) of the exam's connected students
    /// dropping within `incident_window` is one `network_incident`...
    pub incident_share: f64,
    /// ...provided at least this many dropped.
    pub incident_min: u32,
    #[serde(with = "humantime_serde")]
    pub incident_window: Duration,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            heartbeat_gap: Duration::from_secs(60),
            incident_share: 0.3,
            incident_min: 3,
            incident_window: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsSettings {
    /// Server → client ping period; no pong (or any frame) within two
    /// periods, with a ping unanswered for one, closes the connection.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Outbound queue bound (messages) for a teacher connection. A teacher
    /// whose queue is full is closed with 4008.
    pub teacher_queue: usize,
    /// Outbound queue bound (messages) for a student connection.
    pub student_queue: usize,
    /// tungstenite read buffer; small keeps idle connections cheap (client
    /// messages are mostly under 200 bytes; larger frames take more reads,
    /// not more memory held: 1 KiB -> 256 B saved 0.8 KB per idle
    /// connection, with no measurable CPU change: docs/BENCHMARKS.md).
    pub read_buffer_bytes: usize,
    /// tungstenite write buffer before a flush is forced; at most 512 KiB,
    /// so the largest frame (a 256 KiB snapshot part) fits beside it within
    /// the socket's 1 MiB write limit.
    pub write_buffer_bytes: usize,
}

/// Server-Sent Events streams (`GET /v1/exams/{id}/events`, [`crate::sse`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseSettings {
    /// A `: ping` comment line this often, so proxies keep an idle stream
    /// open and a client that went away is found by the failing write.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl Default for SseSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
        }
    }
}

/// The HTTP transport of students (`?transport=http` on `me/events`, `POST
/// me/messages`, [`crate::sse::session`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// How long `POST me/messages` waits for a message's result (an
    /// `answer`'s or `submit`'s commit, a forwarded batch's answer) before
    /// it answers that message `error not_stored` ("send it again").
    #[serde(with = "humantime_serde")]
    pub reply_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            reply_timeout: Duration::from_secs(10),
        }
    }
}

/// The largest accepted `ws.write_buffer_bytes`.
const MAX_WRITE_BUFFER_BYTES: usize = 512 * 1024;

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(15),
            teacher_queue: 4096,
            student_queue: 64,
            read_buffer_bytes: 256,
            write_buffer_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest accepted client frame; larger closes with 1009.
    pub max_message_bytes: usize,
    /// Bad messages tolerated per connection per `bad_message_window`
    /// before it is closed (1007/1008).
    pub max_bad_messages: u32,
    /// The window of `max_bad_messages` (a minute): scattered mistakes over
    /// a long exam are forgiven, a burst is not. A setting so tests can
    /// show the window ends without waiting a minute.
    #[serde(with = "humantime_serde")]
    pub bad_message_window: Duration,
    /// Sustained client messages per second (burst = 2×): per student,
    /// shared by all their connections (`room/rate.rs`); per connection
    /// for teachers.
    pub messages_per_second: u32,
    /// Longest `announce` text, in characters.
    pub max_announcement_chars: usize,
    /// WebSocket handshakes per token subject (`sub`) per
    /// `handshake_window`, on this instance; past it, 429. 0 = no limit.
    /// A reconnect loop is stopped; a real client's backoff never gets here.
    pub handshakes_per_subject: u32,
    /// WebSocket handshakes per client IP (IPv6: per /64) per
    /// `handshake_window`, counted before the token is checked; past it,
    /// 429. Sized for an exam hall behind one NAT address reconnecting at
    /// once, several times. The IP is the TCP peer, or the client a
    /// `server.trusted_proxies` peer forwarded for.
    pub handshakes_per_ip: u32,
    /// The window of both handshake limits: `limit` at once, then one
    /// every `window / limit`.
    #[serde(with = "humantime_serde")]
    pub handshake_window: Duration,
    /// Open WebSocket connections and SSE streams per client IP (IPv6: per
    /// /64) on this instance; past it the handshake gets 429
    /// `too_many_connections_from_ip`. 0 = no limit.
    pub connections_per_ip: u32,
    /// Messages per `message_window` (a minute) per student across their
    /// connections (per connection for teachers), as a sliding window:
    /// never more than this in any window. 0 = off (only
    /// `messages_per_second` applies).
    pub messages_per_minute: u32,
    /// The window of `messages_per_minute`: a minute (a setting so tests
    /// can use a shorter one).
    #[serde(with = "humantime_serde")]
    pub message_window: Duration,
    /// How long after the welcome/snapshot a connection may stay without
    /// sending a text message before it is closed with 4408. 0 = off: the
    /// protocol has no mandatory first message (docs/PROTOCOL.md 1.7).
    #[serde(with = "humantime_serde")]
    pub first_message_timeout: Duration,
    /// Longest token accepted, in bytes, checked before it is decoded;
    /// longer is 401 `token_too_large`. 0 = no limit.
    pub max_token_bytes: usize,
    /// Most client messages in one `POST /v1/exams/{id}/me/messages`
    /// (the HTTP transport); more is 422 `batch_too_big`.
    pub http_batch_max: usize,
    /// Most exams a token's `exams` claim may list; more is 401
    /// `too_many_exams`. 0 = no limit.
    pub max_token_exams: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 * 1024,
            max_bad_messages: 10,
            bad_message_window: Duration::from_secs(60),
            messages_per_second: 20,
            max_announcement_chars: 2000,
            handshakes_per_subject: 30,
            handshakes_per_ip: 1200,
            handshake_window: Duration::from_secs(60),
            connections_per_ip: 50,
            messages_per_minute: 0,
            message_window: Duration::from_secs(60),
            first_message_timeout: Duration::ZERO,
            max_token_bytes: 4096,
            http_batch_max: 32,
            max_token_exams: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `tracing` filter directive; `RUST_LOG` overrides it.
    pub level: String,
    /// "websocket handshake refused" lines written per second, at most;
    /// the rest are counted (`examwatch_handshake_logs_suppressed_total`)
    /// and summed up in one line per second while they last.
    pub refused_handshakes_per_second: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
            refused_handshakes_per_second: 20,
        }
    }
}

/// A string that never shows up in `Debug` output or logs.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A start-up configuration error; its message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
}

impl Settings {
    /// Loads defaults ← file ← environment. `file` = `None` reads
    /// [`DEFAULT_CONFIG_FILE`] when it exists.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, Env::prefixed(ENV_PREFIX).split("__"))
    }

    fn load_from(file: Option<&std::path::Path>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match file {
            Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.into())),
            Some(path) => figment = figment.merge(Toml::file(path)),
            None => figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE)),
        }
        let settings: Settings = figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the constraints types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn positive(key: &'static str, ok: bool) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key,
                    problem: "must be greater than zero".into(),
                })
            }
        }
        fn at_most(key: &'static str, value: Duration, max: Duration) -> Result<(), ConfigError> {
            if value <= max {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key,
                    problem: format!("must be at most {}", humantime::format_duration(max)),
                })
            }
        }
        const DAY: Duration = Duration::from_secs(24 * 3600);
        const HOUR: Duration = Duration::from_secs(3600);
        if let Err(problem) = self.broker.redis_url.target() {
            return Err(ConfigError::Invalid {
                key: "broker.redis_url",
                problem,
            });
        }
        positive(
            "server.request_head_timeout",
            !self.server.request_head_timeout.is_zero(),
        )?;
        at_most(
            "server.request_head_timeout",
            self.server.request_head_timeout,
            HOUR,
        )?;
        positive(
            "server.request_timeout",
            !self.server.request_timeout.is_zero(),
        )?;
        at_most("server.request_timeout", self.server.request_timeout, HOUR)?;
        match (&self.server.tls.cert, &self.server.tls.key) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    key: "server.tls.key",
                    problem: "is required when server.tls.cert is set".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "server.tls.cert",
                    problem: "is required when server.tls.key is set".into(),
                });
            }
            _ => {}
        }
        positive(
            "server.tls.reload_interval",
            !self.server.tls.reload_interval.is_zero(),
        )?;
        at_most(
            "server.tls.reload_interval",
            self.server.tls.reload_interval,
            HOUR,
        )?;
        at_most("exam.idle_after", self.exam.idle_after, DAY)?;
        at_most("exam.disconnect_grace", self.exam.disconnect_grace, DAY)?;
        at_most("exam.room_linger", self.exam.room_linger, DAY)?;
        at_most("exam.control_scan", self.exam.control_scan, DAY)?;
        at_most(
            "exam.action_ack_wait",
            self.exam.action_ack_wait,
            Duration::from_secs(30),
        )?;
        at_most("exam.probe_timeout", self.exam.probe_timeout, HOUR)?;
        at_most("exam.lease_ttl", self.exam.lease_ttl, HOUR)?;
        at_most("alerts.heartbeat_gap", self.alerts.heartbeat_gap, DAY)?;
        positive("alerts.heartbeat_gap", !self.alerts.heartbeat_gap.is_zero())?;
        at_most("alerts.incident_window", self.alerts.incident_window, HOUR)?;
        positive("alerts.incident_min", self.alerts.incident_min > 0)?;
        if !(0.0..=1.0).contains(&self.alerts.incident_share) {
            return Err(ConfigError::Invalid {
                key: "alerts.incident_share",
                problem: "must be between 0 and 1".into(),
            });
        }
        positive(
            "exam.lease_ttl",
            self.exam.lease_ttl >= Duration::from_millis(300),
        )?;
        at_most("ws.ping_interval", self.ws.ping_interval, HOUR)?;
        at_most("sse.heartbeat", self.sse.heartbeat, HOUR)?;
        positive("sse.heartbeat", !self.sse.heartbeat.is_zero())?;
        at_most(
            "server.shutdown_timeout",
            self.server.shutdown_timeout,
            HOUR,
        )?;
        at_most("server.drain_delay", self.server.drain_delay, HOUR)?;
        at_most("server.drain_window", self.server.drain_window, HOUR)?;
        at_most(
            "cluster.rebalance_window",
            self.cluster.rebalance_window,
            HOUR,
        )?;
        at_most(
            "cluster.rebalance_interval",
            self.cluster.rebalance_interval,
            HOUR,
        )?;
        positive(
            "cluster.rebalance_interval",
            self.cluster.rebalance_interval >= Duration::from_millis(10),
        )?;
        let tolerance = self.cluster.rebalance_tolerance;
        if !(tolerance.is_finite() && (0.0..=10.0).contains(&tolerance)) {
            return Err(ConfigError::Invalid {
                key: "cluster.rebalance_tolerance",
                problem: "must be between 0 and 10 (0.2: 20 % above the average)".into(),
            });
        }
        at_most(
            "server.ws_probe_interval",
            self.server.ws_probe_interval,
            HOUR,
        )?;
        at_most(
            "server.ws_probe_timeout",
            self.server.ws_probe_timeout,
            HOUR,
        )?;
        positive(
            "server.ws_probe_timeout",
            !self.server.ws_probe_timeout.is_zero(),
        )?;
        at_most("auth.leeway", self.auth.leeway, HOUR)?;
        at_most("auth.ticket_ttl", self.auth.ticket_ttl, HOUR)?;
        at_most("auth.expiry_grace", self.auth.expiry_grace, HOUR)?;
        positive("auth.ticket_ttl", !self.auth.ticket_ttl.is_zero())?;
        positive("auth.ticket_capacity", self.auth.ticket_capacity > 0)?;
        at_most(
            "limits.handshake_window",
            self.limits.handshake_window,
            HOUR,
        )?;
        positive(
            "limits.handshake_window",
            !self.limits.handshake_window.is_zero(),
        )?;
        at_most(
            "limits.bad_message_window",
            self.limits.bad_message_window,
            HOUR,
        )?;
        at_most("limits.message_window", self.limits.message_window, HOUR)?;
        positive(
            "limits.message_window",
            !self.limits.message_window.is_zero(),
        )?;
        // The window keeps one instant per message taken (8 bytes each).
        if self.limits.messages_per_minute > 10_000 {
            return Err(ConfigError::Invalid {
                key: "limits.messages_per_minute",
                problem: "must be at most 10000 (0 turns it off)".into(),
            });
        }
        at_most(
            "limits.first_message_timeout",
            self.limits.first_message_timeout,
            HOUR,
        )?;
        positive(
            "limits.bad_message_window",
            !self.limits.bad_message_window.is_zero(),
        )?;
        at_most(
            "database.flush_interval",
            self.database.flush_interval,
            HOUR,
        )?;
        at_most(
            "database.events_flush_interval",
            self.database.events_flush_interval,
            HOUR,
        )?;
        positive(
            "database.max_connections",
            self.database.max_connections > 0,
        )?;
        positive("database.batch_max", self.database.batch_max > 0)?;
        if let ShardCount::Count(n) = self.server.shards
            && n > MAX_SHARDS
        {
            return Err(ConfigError::Invalid {
                key: "server.shards",
                problem: format!("at most {MAX_SHARDS} threads (0 = off, \"auto\" = one per core)"),
            });
        }
        positive("database.queue_limit", self.database.queue_limit > 0)?;
        if !(self.database.url.starts_with("sqlite:")
            || self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid {
                key: "database.url",
                problem: "must start with sqlite: or postgres://".into(),
            });
        }
        positive("exam.idle_after", !self.exam.idle_after.is_zero())?;
        positive("exam.history_size", self.exam.history_size > 0)?;
        positive("exam.room_inbox", self.exam.room_inbox > 0)?;
        positive("ws.ping_interval", !self.ws.ping_interval.is_zero())?;
        positive("limits.http_batch_max", self.limits.http_batch_max > 0)?;
        positive("http.reply_timeout", !self.http.reply_timeout.is_zero())?;
        at_most("http.reply_timeout", self.http.reply_timeout, HOUR)?;
        positive("ws.teacher_queue", self.ws.teacher_queue > 0)?;
        positive("ws.student_queue", self.ws.student_queue > 0)?;
        positive("ws.read_buffer_bytes", self.ws.read_buffer_bytes > 0)?;
        // tungstenite holds at most 1 MiB per socket (ws::MAX_WRITE_BUFFER)
        // and panics at the upgrade if the write buffer is not below that;
        // a snapshot part (256 KiB) must also fit beside a full one.
        if self.ws.write_buffer_bytes > MAX_WRITE_BUFFER_BYTES {
            return Err(ConfigError::Invalid {
                key: "ws.write_buffer_bytes",
                problem: format!(
                    "must be at most {MAX_WRITE_BUFFER_BYTES} (512 KiB): a 256 KiB frame must \
                     fit beside it in the socket's 1 MiB write limit"
                ),
            });
        }
        positive(
            "limits.max_message_bytes",
            self.limits.max_message_bytes > 0,
        )?;
        positive(
            "limits.messages_per_second",
            self.limits.messages_per_second > 0,
        )?;
        if self.ws.teacher_queue <= self.exam.history_size {
            return Err(ConfigError::Invalid {
                key: "ws.teacher_queue",
                problem: format!(
                    "must be larger than exam.history_size ({}) so a full replay fits",
                    self.exam.history_size
                ),
            });
        }
        if let Some(secret) = &self.auth.jwt_secret
            && secret.expose().len() < 32
        {
            return Err(ConfigError::Invalid {
                key: "auth.jwt_secret",
                problem: "must be at least 32 characters".into(),
            });
        }
        if self.auth.algorithm != JwtAlgorithm::HS256
            && self.auth.public_key.is_none()
            && self.auth.public_key_file.is_none()
        {
            return Err(ConfigError::Invalid {
                key: "auth.public_key",
                problem: format!(
                    "is required when auth.algorithm is {:?} (or set auth.public_key_file)",
                    self.auth.algorithm
                ),
            });
        }
        for origin in &self.server.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    key: "server.allowed_origins",
                    problem: format!("entry {origin:?} must start with http:// or https://"),
                });
            }
        }
        Ok(())
    }
}

/// Accepts a list, or a comma-separated string (how lists come from the env).
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_file_or_env() {
        figment::Jail::expect_with(|_jail| {
            let s = Settings::load(None).expect("defaults are valid");
            assert_eq!(s.server.bind.to_string(), "127.0.0.1:8080");
            assert_eq!(s.exam.idle_after, Duration::from_secs(60));
            assert_eq!(s.exam.second_session, SecondSession::Takeover);
            assert_eq!(s.sse.heartbeat, Duration::from_secs(15));
            Ok(())
        });
    }

    #[test]
    fn env_overrides_file_and_lists_are_comma_separated() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "custom.toml",
                "[server]\nbind = \"127.0.0.1:9000\"\n[exam]\nidle_after = \"5s\"\n",
            )?;
            jail.set_env("EXAMWATCH__SERVER__BIND", "0.0.0.0:7000");
            jail.set_env(
                "EXAMWATCH__SERVER__ALLOWED_ORIGINS",
                "https://a.example, https://b.example",
            );
            jail.set_env("EXAMWATCH__EXAM__SECOND_SESSION", "reject");
            jail.set_env("EXAMWATCH__SSE__HEARTBEAT", "250ms");
            jail.set_env("EXAMWATCH__ALERTS__INCIDENT_SHARE", "0.5");
            jail.set_env("EXAMWATCH__ALERTS__HEARTBEAT_GAP", "2s");
            let s = Settings::load(Some("custom.toml".as_ref())).expect("valid");
            assert_eq!(s.sse.heartbeat, Duration::from_millis(250));
            assert_eq!(s.server.bind.to_string(), "0.0.0.0:7000");
            assert_eq!(s.exam.idle_after, Duration::from_secs(5));
            assert_eq!(
                s.server.allowed_origins,
                vec!["https://a.example", "https://b.example"]
            );
            assert_eq!(s.exam.second_session, SecondSession::Reject);
            assert_eq!(s.alerts.incident_share, 0.5);
            assert_eq!(s.alerts.heartbeat_gap, Duration::from_secs(2));
            assert_eq!(s.alerts.incident_min, 3, "the default stays");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__ALERTS__INCIDENT_SHARE", "1.5");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("alerts.incident_share"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn invalid_settings_name_their_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__SERVER__BIND", "not-an-address");
            let err = Settings::load(None).unwrap_err().to_string().to_lowercase();
            assert!(err.contains("server.bind"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__EXAM__IDLE_AFTER", "0s");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("exam.idle_after"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__AUTH__JWT_SECRET", "short");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("auth.jwt_secret"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__EXAM__IDLE_AFTER", "3years");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(
                err.contains("exam.idle_after") && err.contains("at most"),
                "{err}"
            );
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__EXAM__HISTORY_SIZE", "5000");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("ws.teacher_queue"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__SSE__HEARTBEAT", "0s");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("sse.heartbeat"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__EXAM__NOPE", "1");
            let err = Settings::load(None).unwrap_err().to_string().to_lowercase();
            assert!(err.contains("nope"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn event_persistence_is_on_unless_turned_off_and_a_non_boolean_names_the_key() {
        figment::Jail::expect_with(|_jail| {
            assert!(Settings::load(None).expect("defaults").events.persist);
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__EVENTS__PERSIST", "false");
            assert!(!Settings::load(None).expect("valid").events.persist);
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__EVENTS__PERSIST", "sometimes");
            let err = Settings::load(None).unwrap_err().to_string().to_lowercase();
            assert!(err.contains("events.persist"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_write_buffer_that_leaves_no_room_for_a_frame_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__WS__WRITE_BUFFER_BYTES", "2097152");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("ws.write_buffer_bytes"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__WS__WRITE_BUFFER_BYTES", "524288");
            assert!(Settings::load(None).is_ok());
            Ok(())
        });
    }

    #[test]
    fn trusted_proxies_come_from_a_list_or_the_env_and_a_bad_entry_names_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "proxies.toml",
                "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nclient_ip_header = \"forwarded\"\n",
            )?;
            let s = Settings::load(Some("proxies.toml".as_ref())).expect("valid");
            assert!(s.server.trusted_proxies.contains([10, 1, 2, 3].into()));
            assert!(s.server.trusted_proxies.contains("::1".parse().unwrap()));
            assert!(!s.server.trusted_proxies.contains([127, 0, 0, 1].into()));
            assert_eq!(
                s.server.client_ip_header,
                crate::client_ip::ClientIpHeader::Forwarded
            );
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "EXAMWATCH__SERVER__TRUSTED_PROXIES",
                "127.0.0.1, 192.168.0.0/16",
            );
            let s = Settings::load(None).expect("valid");
            assert!(s.server.trusted_proxies.contains([192, 168, 4, 5].into()));
            assert_eq!(
                s.server.client_ip_header,
                crate::client_ip::ClientIpHeader::XForwardedFor,
                "the default"
            );
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__SERVER__TRUSTED_PROXIES", "10.0.0.0/99");
            let err = Settings::load(None).unwrap_err().to_string().to_lowercase();
            assert!(err.contains("server.trusted_proxies"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__LIMITS__MESSAGES_PER_MINUTE", "20000");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("limits.messages_per_minute"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn tls_needs_both_files_and_comes_from_the_env() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__SERVER__TLS__CERT", "/etc/examwatch/cert.pem");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("server.tls.key"), "{err}");
            jail.set_env("EXAMWATCH__SERVER__TLS__KEY", "/etc/examwatch/key.pem");
            jail.set_env("EXAMWATCH__SERVER__TLS__RELOAD_INTERVAL", "250ms");
            let s = Settings::load(None).expect("valid");
            assert_eq!(
                s.server.tls.key.as_deref(),
                Some(std::path::Path::new("/etc/examwatch/key.pem"))
            );
            assert_eq!(s.server.tls.reload_interval, Duration::from_millis(250));
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__SERVER__TLS__KEY", "key.pem");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("server.tls.cert"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMWATCH__SERVER__TLS__RELOAD_INTERVAL", "0s");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("server.tls.reload_interval"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn shards_are_auto_a_number_or_off() {
        figment::Jail::expect_with(|jail| {
            assert_eq!(
                Settings::load(None).unwrap().server.shards,
                ShardCount::Auto
            );
            assert!(ShardCount::Auto.resolve() >= 1);
            jail.create_file("s.toml", "[server]\nshards = \"auto\"\n")?;
            let s = Settings::load(Some("s.toml".as_ref())).unwrap();
            assert_eq!(s.server.shards, ShardCount::Auto);
            jail.set_env("EXAMWATCH__SERVER__SHARDS", "0");
            assert_eq!(Settings::load(None).unwrap().server.shards.resolve(), 0);
            jail.set_env("EXAMWATCH__SERVER__SHARDS", "3");
            assert_eq!(
                Settings::load(None).unwrap().server.shards,
                ShardCount::Count(3)
            );
            jail.set_env("EXAMWATCH__SERVER__SHARDS", "many");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.to_lowercase().contains("server.shards"), "{err}");
            jail.set_env("EXAMWATCH__SERVER__SHARDS", "100000");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("server.shards"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Settings::load(Some("/nonexistent/x.toml".as_ref())).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }
}
