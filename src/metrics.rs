//! What operators graph, rendered in the Prometheus text format at
//! `/metrics` on the operators' listener (`server.admin_bind`).
//!
//! Built on the `metrics` crate's handles and `metrics-exporter-prometheus`
//! (docs/DEPLOY.md, "Metrics", lists every family). Each [`Metrics`] owns
//! its own [`PrometheusRecorder`], never the global one: tests run dozens of
//! servers in one process and each reads its own counters. Every handle is
//! registered once, here, at start-up; hot paths call `increment` on a
//! handle they already hold (an atomic add, no lookup, no allocation).
//! Families whose label values are an open set (refusal codes, close codes,
//! message types) use [`family::Family`], a small lock-free cache.
//!
//! Every series carries `instance_id` (Prometheus owns `instance`), so
//! several instances behind one scrape job stay apart.

mod family;
mod help;
mod process;

pub use help::{described, families};

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio_util::sync::CancellationToken;

use crate::auth::Role;
use family::{Family, OTHER, metadata, register};
use help::{HELP, Kind};

/// How often histogram samples are folded into their buckets when nobody
/// scrapes (each sample waits in a lock-free list until then).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Bucket bounds (seconds) of the fan-out histogram: one room step is tens
/// of microseconds for a small exam, milliseconds for thousands of watchers.
const FANOUT_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];
/// Round trips to Redis or the database, queueing while it is away included.
const IO_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Records per database batch (`database.batch_max` bounds it).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// The server frame types whose `examwatch_messages_out_total` counters are
/// resolved once and kept (see [`Metrics::messages_out`]): every type a
/// `ServerMsg` encodes to, the most frequent first (a lookup compares in
/// this order, and most lookups end at the first or second).
const SERVER_TYPES: [&str; 19] = [
    "student",
    "ack",
    "exam_update",
    "alert",
    "announcement",
    "error",
    "hand",
    "hand_lowered",
    "delivery",
    "action",
    "alert_resolved",
    "message",
    "student_control",
    "welcome",
    "snapshot",
    "resumed",
    "session_invalidated",
    "terminated",
    "other",
];

/// The close codes a client's close is counted under as they are; any
/// other code a client sends is counted as `other`.
const CLIENT_CLOSE_CODES: [u16; 4] = [1000, 1001, 1005, 1006];

/// The reasons a TLS handshake fails, in the order of their counters.
const TLS_FAILURES: [crate::tls::HandshakeFailure; 3] = [
    crate::tls::HandshakeFailure::Timeout,
    crate::tls::HandshakeFailure::Closed,
    crate::tls::HandshakeFailure::Protocol,
];

/// Why a connection was closed as a slow consumer (4008): which queue was
/// full, or what was being sent when it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowPath {
    /// A teacher's, proctor's or admin's socket (`ws.teacher_queue`).
    TeacherQueue,
    /// A student's socket (`ws.student_queue`).
    StudentQueue,
    /// A watcher's Server-Sent Events stream that fell behind.
    SseWatcher,
    /// A student's Server-Sent Events stream that fell behind.
    SseStudent,
    /// A watcher's queue could not take a whole snapshot.
    Snapshot,
    /// A watcher's queue could not take the replay of its `resume`.
    Replay,
}

impl SlowPath {
    /// The lane of a socket opened with this role.
    pub fn of_socket(role: Role) -> Self {
        if role.is_watcher() {
            SlowPath::TeacherQueue
        } else {
            SlowPath::StudentQueue
        }
    }

    const ALL: [SlowPath; 6] = [
        SlowPath::TeacherQueue,
        SlowPath::StudentQueue,
        SlowPath::SseWatcher,
        SlowPath::SseStudent,
        SlowPath::Snapshot,
        SlowPath::Replay,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            SlowPath::TeacherQueue => "teacher_queue",
            SlowPath::StudentQueue => "student_queue",
            SlowPath::SseWatcher => "sse_watcher",
            SlowPath::SseStudent => "sse_student",
            SlowPath::Snapshot => "snapshot",
            SlowPath::Replay => "replay",
        }
    }
}

const ROLES: [Role; 4] = [Role::Student, Role::Proctor, Role::Teacher, Role::Admin];

fn role_index(role: Role) -> usize {
    match role {
        Role::Student => 0,
        Role::Proctor => 1,
        Role::Teacher => 2,
        Role::Admin => 3,
    }
}

/// Who ended a WebSocket connection, for `examwatch_closes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    Server,
    Client,
    /// The connection went away without a close frame (code 1006).
    Transport,
}

impl ClosedBy {
    fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Server => "server",
            ClosedBy::Client => "client",
            ClosedBy::Transport => "transport",
        }
    }
}

/// Where a `POST /v1/exams/{id}/me/messages` batch went
/// (`examwatch_http_batches_total{path}`, src/sse/messages.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpBatch {
    /// Run here: this instance holds the session.
    Local,
    /// Sent through Redis to the instance holding the session, which
    /// answered.
    Forwarded,
    /// Run here for a POST that reached another instance.
    Relayed,
    /// For another instance that could not be reached or did not answer
    /// (503 `session_unreachable`): each batch is in one path only.
    Unreachable,
}

impl HttpBatch {
    const ALL: [HttpBatch; 4] = [
        HttpBatch::Local,
        HttpBatch::Forwarded,
        HttpBatch::Relayed,
        HttpBatch::Unreachable,
    ];

    fn as_str(self) -> &'static str {
        match self {
            HttpBatch::Local => "local",
            HttpBatch::Forwarded => "forwarded",
            HttpBatch::Relayed => "relayed",
            HttpBatch::Unreachable => "unreachable",
        }
    }
}

/// The database writer's handles (src/store/writer.rs).
pub struct DbMetrics {
    pub committed: Counter,
    pub retries: Counter,
    pub rejected: Counter,
    pub collisions: Counter,
    pub batch_records: Histogram,
    pub commit_seconds: Histogram,
    pending: Gauge,
    failing: Gauge,
}

/// The Redis broker's handles (src/broker/redis.rs).
#[derive(Clone)]
pub struct BrokerMetrics {
    pub publish_seconds: Histogram,
    pub reconnects: Counter,
    /// Exam subscriptions restored after Redis dropped them (a reconnect,
    /// a failed-over primary, a slot moved): each re-synchronises a room.
    pub resubscriptions: Counter,
    /// Session leases read by the rooms' orphan scans, and instances'
    /// liveness keys read for them (src/broker/orphans.rs): in a steady
    /// cluster both stay near zero between `exam.lease_ttl` sweeps.
    pub lease_reads: Counter,
    pub liveness_reads: Counter,
}

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub connections_total: Counter,
    pub students_connected: Gauge,
    pub teachers_connected: Gauge,
    /// Open sockets per role (`examwatch_connections_open`,
    /// `transport="websocket"`).
    connections_open: [Gauge; 4],
    /// Open HTTP sessions of students (`examwatch_connections_open`,
    /// `role="student", transport="http"`): only students have them.
    http_sessions_open: Gauge,
    /// `POST me/messages` batches by path ([`HttpBatch`]).
    http_batches: [Counter; 4],
    /// Open Server-Sent Events streams (`GET /v1/exams/{id}/events`), which
    /// are not sockets: counted apart from the socket gauges.
    pub sse_streams: Gauge,
    /// Open student streams (`GET /v1/exams/{id}/me/events`): not sockets,
    /// and not in `students_connected` (the student is not connected).
    pub sse_student_streams: Gauge,
    /// By (transport, refusal code).
    handshakes_rejected: Family<(&'static str, &'static str)>,
    /// Of those, refused with 429 by a handshake rate limit.
    pub handshakes_rate_limited: Counter,
    /// Refused-handshake log lines not written (over the log budget).
    pub handshake_logs_suppressed: Counter,
    pub rooms: Gauge,
    /// By client message type.
    messages_in: Family<&'static str>,
    pub bad_messages: Counter,
    pub events: Counter,
    pub frames_out: Counter,
    /// By server message type (parsed from the frame's first field): the
    /// types of [`SERVER_TYPES`] through a counter each, resolved on first
    /// use and then an atomic add; any other through the family.
    messages_out_known: [OnceLock<Counter>; SERVER_TYPES.len()],
    messages_out: Family<Box<str>>,
    slow_closes: [Counter; 6],
    /// By (who closed, code).
    closes: Family<(ClosedBy, u16)>,
    pub ping_timeouts: Counter,
    pub resume_replays: Counter,
    pub resume_snapshots: Counter,
    /// `accept` failed (out of file descriptors, …); the loop backed off.
    pub accept_errors: Counter,
    /// Connections answered 503 because `server.max_connections` were open.
    pub connections_refused_full: Counter,
    /// TLS handshakes on the public listener that made no connection, by
    /// reason (timeout, closed, protocol: [`crate::tls::HandshakeFailure`]).
    tls_handshake_failures: [Counter; 3],
    /// Connection tickets minted, redeemed, and refused at a handshake.
    pub tickets_issued: Counter,
    pub tickets_redeemed: Counter,
    pub tickets_refused: Counter,
    /// Event received by the room → its bytes queued for every local member.
    pub fanout_seconds: Histogram,
    pub broker: BrokerMetrics,
    pub db: Arc<DbMetrics>,
    /// Connections closed by rebalancing: students, teachers (watchers).
    rebalance_shed: [Counter; 2],
    open_fds: Gauge,
    max_fds: Gauge,
}

impl Default for Metrics {
    /// For unit tests that need a `Metrics` and read none of it.
    fn default() -> Self {
        Self::new("test")
    }
}

impl Metrics {
    /// A recorder of its own, every family registered and described, every
    /// series labelled `instance_id = instance`.
    pub fn new(instance: &str) -> Self {
        let mut builder = PrometheusBuilder::new().add_global_label("instance_id", instance);
        for (name, buckets) in [
            ("examwatch_fanout_seconds", FANOUT_BUCKETS),
            ("examwatch_broker_publish_seconds", IO_BUCKETS),
            ("examwatch_db_commit_seconds", IO_BUCKETS),
            ("examwatch_db_batch_records", BATCH_BUCKETS),
        ] {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.into()), buckets)
                .expect("histogram buckets are not empty");
        }
        let recorder = builder.build_recorder();
        let r = &recorder;
        for (name, unit, help) in HELP {
            let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
            match unit {
                Kind::Counter => r.describe_counter(name, None, help),
                Kind::Gauge => r.describe_gauge(name, None, help),
                Kind::Seconds => r.describe_histogram(name, Some(Unit::Seconds), help),
                Kind::Records => r.describe_histogram(name, Some(Unit::Count), help),
            }
        }
        let counter = |name: &'static str| register(r, name, vec![]);
        let gauge = |name: &'static str, labels: Vec<Label>| {
            r.register_gauge(&Key::from_parts(name, labels), &metadata())
        };
        let histogram =
            |name: &'static str| r.register_histogram(&Key::from_static_name(name), &metadata());
        let label = |k: &'static str, v: &'static str| Label::from_static_parts(k, v);
        let db = DbMetrics {
            committed: counter("examwatch_db_committed_total"),
            retries: counter("examwatch_db_retries_total"),
            rejected: counter("examwatch_db_rejected_total"),
            collisions: counter("examwatch_db_collisions_total"),
            batch_records: histogram("examwatch_db_batch_records"),
            commit_seconds: histogram("examwatch_db_commit_seconds"),
            pending: gauge("examwatch_db_pending_writes", vec![]),
            failing: gauge("examwatch_db_failing", vec![]),
        };
        let metrics = Self {
            connections_total: counter("examwatch_connections_total"),
            students_connected: gauge("examwatch_students_connected", vec![]),
            teachers_connected: gauge("examwatch_teachers_connected", vec![]),
            connections_open: ROLES.map(|role| {
                gauge(
                    "examwatch_connections_open",
                    vec![
                        label("role", role.as_str()),
                        label("transport", "websocket"),
                    ],
                )
            }),
            http_sessions_open: gauge(
                "examwatch_connections_open",
                vec![label("role", "student"), label("transport", "http")],
            ),
            http_batches: HttpBatch::ALL.map(|path| {
                register(
                    r,
                    "examwatch_http_batches_total",
                    vec![label("path", path.as_str())],
                )
            }),
            sse_streams: gauge("examwatch_sse_streams", vec![]),
            sse_student_streams: gauge("examwatch_sse_student_streams", vec![]),
            handshakes_rejected: Family::new(
                r,
                "examwatch_handshakes_rejected_total",
                vec![label("transport", OTHER), label("reason", OTHER)],
            ),
            handshakes_rate_limited: counter("examwatch_handshakes_rate_limited_total"),
            handshake_logs_suppressed: counter("examwatch_handshake_logs_suppressed_total"),
            rooms: gauge("examwatch_rooms", vec![]),
            messages_in: Family::new(r, "examwatch_messages_in_total", vec![label("type", OTHER)]),
            bad_messages: counter("examwatch_bad_messages_total"),
            events: counter("examwatch_events_total"),
            frames_out: counter("examwatch_frames_out_total"),
            messages_out_known: std::array::from_fn(|_| OnceLock::new()),
            messages_out: Family::new(
                r,
                "examwatch_messages_out_total",
                vec![label("type", OTHER)],
            ),
            slow_closes: SlowPath::ALL.map(|path| {
                register(
                    r,
                    "examwatch_slow_consumer_closes_total",
                    vec![label("path", path.as_str())],
                )
            }),
            closes: Family::new(
                r,
                "examwatch_closes_total",
                vec![label("by", OTHER), label("code", OTHER)],
            ),
            ping_timeouts: counter("examwatch_ping_timeouts_total"),
            resume_replays: counter("examwatch_resume_replays_total"),
            resume_snapshots: counter("examwatch_resume_snapshots_total"),
            accept_errors: counter("examwatch_accept_errors_total"),
            connections_refused_full: counter("examwatch_connections_refused_full_total"),
            tickets_issued: counter("examwatch_tickets_issued_total"),
            tickets_redeemed: counter("examwatch_tickets_redeemed_total"),
            tickets_refused: counter("examwatch_tickets_refused_total"),
            tls_handshake_failures: TLS_FAILURES.map(|reason| {
                register(
                    r,
                    "examwatch_tls_handshake_failures_total",
                    vec![label("reason", reason.as_str())],
                )
            }),
            fanout_seconds: histogram("examwatch_fanout_seconds"),
            broker: BrokerMetrics {
                publish_seconds: histogram("examwatch_broker_publish_seconds"),
                reconnects: counter("examwatch_broker_reconnects_total"),
                resubscriptions: counter("examwatch_broker_resubscriptions_total"),
                lease_reads: counter("examwatch_broker_lease_reads_total"),
                liveness_reads: counter("examwatch_broker_liveness_reads_total"),
            },
            db: Arc::new(db),
            rebalance_shed: ["student", "teacher"].map(|role| {
                register(
                    r,
                    "examwatch_rebalance_shed_total",
                    vec![label("role", role)],
                )
            }),
            open_fds: gauge("process_open_fds", vec![]),
            max_fds: gauge("process_max_fds", vec![]),
            handle: recorder.handle(),
            recorder,
        };
        // The common values from the start, so a dashboard has series to
        // draw (zero) before the first refusal or close.
        metrics.messages_in("progress", 0);
        metrics.closes(ClosedBy::Server, 4008, 0);
        metrics.fleet_connections(instance, crate::rebalance::Counts::default());
        metrics
    }

    /// A connection closed by rebalancing (`examwatch_rebalance_shed_total`).
    pub fn rebalance_shed(&self, watcher: bool) {
        self.rebalance_shed[usize::from(watcher)].increment(1);
    }

    /// An instance's connections as this one last read them from the
    /// fleet's counts (`examwatch_fleet_connections`).
    pub fn fleet_connections(&self, member: &str, counts: crate::rebalance::Counts) {
        for (role, n) in [("student", counts.students), ("teacher", counts.teachers)] {
            let labels = vec![
                Label::new("member", member.to_owned()),
                Label::from_static_parts("role", role),
            ];
            self.recorder
                .register_gauge(
                    &Key::from_parts("examwatch_fleet_connections", labels),
                    &metadata(),
                )
                .set(n as f64);
        }
    }

    /// A per-shard gauge (`examwatch_shard_connections`,
    /// `examwatch_shard_rooms`), registered when the shards start: their
    /// number is only known then.
    pub fn shard_gauge(&self, name: &'static str, shard: usize) -> Gauge {
        let labels = vec![Label::new("shard", shard.to_string())];
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &metadata())
    }

    /// The open-connections gauge of a role on a transport
    /// (`examwatch_connections_open`): `http` for a student's HTTP session
    /// (PROTOCOL.md 8), a socket otherwise.
    pub fn connections_open(&self, role: Role, http: bool) -> &Gauge {
        if http {
            &self.http_sessions_open
        } else {
            &self.connections_open[role_index(role)]
        }
    }

    /// A `POST me/messages` batch went `path` (`examwatch_http_batches_total`).
    pub fn http_batch(&self, path: HttpBatch) {
        self.http_batches[path as usize].increment(1);
    }

    /// A handshake refused with `reason` (its error code) on `transport`
    /// (`websocket`, `sse`, `ticket`).
    /// A TLS handshake that made no connection (`tls::handshake_failed`).
    pub fn tls_handshake_failed(&self, reason: crate::tls::HandshakeFailure) {
        if let Some(i) = TLS_FAILURES.iter().position(|r| *r == reason) {
            self.tls_handshake_failures[i].increment(1);
        }
    }

    pub fn handshake_rejected(&self, transport: &'static str, reason: &'static str) {
        self.handshakes_rejected.increment(
            &self.recorder,
            |k| *k == (transport, reason),
            || {
                let labels = vec![
                    Label::new("transport", transport),
                    Label::new("reason", reason),
                ];
                ((transport, reason), labels)
            },
            1,
        );
    }

    /// One client frame read, of type `kind` (`invalid`, `unread`: see the help).
    pub fn messages_in(&self, kind: &'static str, n: u64) {
        self.messages_in.increment(
            &self.recorder,
            |k| std::ptr::eq(*k, kind) || *k == kind,
            || (kind, vec![Label::new("type", kind)]),
            n,
        );
    }

    /// `n` copies of `frame` queued (or written) to sockets and streams,
    /// counted by the frame's `type`.
    pub fn messages_out(&self, frame: &str, n: u64) {
        if n == 0 {
            return;
        }
        let kind = frame_type(frame).unwrap_or(OTHER);
        // The hot path (every fanned-out event): a counter resolved once.
        // The family would scan its slots comparing strings (~390
        // instructions a call in bench/callgrind.sh).
        if let Some(i) = SERVER_TYPES.iter().position(|t| *t == kind) {
            self.messages_out_known[i]
                .get_or_init(|| {
                    let labels = vec![Label::from_static_parts("type", SERVER_TYPES[i])];
                    register(&self.recorder, "examwatch_messages_out_total", labels)
                })
                .increment(n);
            return;
        }
        self.messages_out.increment(
            &self.recorder,
            |k| &**k == kind,
            || (kind.into(), vec![Label::new("type", kind.to_owned())]),
            n,
        );
    }

    /// A connection closed as a slow consumer (4008).
    pub fn slow_close(&self, path: SlowPath) {
        let i = SlowPath::ALL.iter().position(|p| *p == path).unwrap_or(0);
        self.slow_closes[i].increment(1);
    }

    /// A WebSocket connection ended with `code` (1005: a client close
    /// frame without one; 1006: no close frame at all).
    pub fn closes(&self, by: ClosedBy, code: u16, n: u64) {
        // A client chooses its close code: any but the ordinary ones is
        // `other`, so no client can fill the family's slots with made-up
        // codes and push the server's own (4401, 4403, 1012, …) out.
        let code = match by {
            ClosedBy::Client if !CLIENT_CLOSE_CODES.contains(&code) => 0,
            _ => code,
        };
        self.closes.increment(
            &self.recorder,
            |k| *k == (by, code),
            || {
                let shown = match code {
                    0 => OTHER.to_owned(),
                    c => c.to_string(),
                };
                let labels = vec![Label::new("by", by.as_str()), Label::new("code", shown)];
                ((by, code), labels)
            },
            n,
        );
    }

    /// A WebSocket connection ended: [`Metrics::closes`] once.
    pub fn closed(&self, (by, code): (ClosedBy, u16)) {
        self.closes(by, code, 1);
    }

    /// The scrape: gauges read at scrape time refreshed (the writer's
    /// backlog, open descriptors), then every series in the text format.
    pub fn render(&self, writer: &crate::store::writer::WriterStats) -> String {
        use std::sync::atomic::Ordering;
        self.db
            .pending
            .set(writer.pending.load(Ordering::Relaxed) as f64);
        self.db
            .failing
            .set(f64::from(u8::from(writer.failing.load(Ordering::Relaxed))));
        let (open, max) = process::fds();
        self.open_fds.set(open);
        self.max_fds.set(max);
        self.handle.render()
    }

    /// Folds histogram samples into their buckets every few seconds until
    /// `stop`: without a scrape they would pile up in memory.
    pub async fn upkeep(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => self.handle.run_upkeep(),
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// A server frame's `type`, the first field of every encoded `ServerMsg`
/// (serde writes an internally tagged enum's tag first); `None` if the
/// frame does not start so, or the type does not look like one.
fn frame_type(frame: &str) -> Option<&str> {
    let rest = frame.strip_prefix("{\"type\":\"")?;
    let end = rest.find('"')?;
    let kind = &rest[..end];
    let plausible = !kind.is_empty()
        && kind.len() <= 32
        && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    plausible.then_some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> crate::store::writer::WriterStats {
        Default::default()
    }

    #[test]
    fn every_series_carries_the_instance() {
        let m = Metrics::new("host:1");
        m.events.increment(3);
        let text = m.render(&stats());
        assert!(
            text.contains("examwatch_events_total{instance_id=\"host:1\"} 3\n"),
            "{text}"
        );
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            assert!(line.contains("{instance_id=\"host:1\""), "{line}");
        }
    }

    #[test]
    fn every_family_is_exported_and_described_from_the_start() {
        let text = Metrics::new("i").render(&stats());
        // The per-shard gauges have a series per shard thread, and a bare
        // `Metrics` has no shards (`server.shards = 0`): tests/api/shards.rs
        // checks them on a server with shards.
        for name in families().filter(|n| !n.starts_with("examwatch_shard_")) {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no help: {text}"
            );
            assert!(
                text.lines()
                    .any(|l| l.starts_with(name) && !l.starts_with('#')),
                "{name} has no series: {text}"
            );
        }
    }

    #[test]
    fn open_label_sets_are_counted_apart_and_bounded() {
        let m = Metrics::new("i");
        m.handshake_rejected("websocket", "invalid_token");
        m.handshake_rejected("websocket", "invalid_token");
        m.handshake_rejected("sse", "rate_limited");
        m.closes(ClosedBy::Server, 4401, 1);
        for i in 0..200u16 {
            m.closes(ClosedBy::Client, 3000 + i, 1);
        }
        let text = m.render(&stats());
        for line in [
            "examwatch_handshakes_rejected_total{instance_id=\"i\",transport=\"websocket\",reason=\"invalid_token\"} 2",
            "examwatch_handshakes_rejected_total{instance_id=\"i\",transport=\"sse\",reason=\"rate_limited\"} 1",
            "examwatch_closes_total{instance_id=\"i\",by=\"server\",code=\"4401\"} 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let closes = text
            .lines()
            .filter(|l| l.starts_with("examwatch_closes_total{"))
            .count();
        assert!(closes <= 50, "{closes} close series");
        assert!(text.contains("by=\"other\",code=\"other\"} "), "{text}");
    }

    #[test]
    fn a_clients_own_close_codes_cannot_crowd_out_the_servers() {
        let m = Metrics::new("i");
        for code in 3000..3100 {
            m.closed((ClosedBy::Client, code));
        }
        m.closed((ClosedBy::Client, 1000));
        m.closed((ClosedBy::Server, 4403));
        let text = m.render(&stats());
        for line in [
            "examwatch_closes_total{instance_id=\"i\",by=\"client\",code=\"other\"} 100",
            "examwatch_closes_total{instance_id=\"i\",by=\"client\",code=\"1000\"} 1",
            "examwatch_closes_total{instance_id=\"i\",by=\"server\",code=\"4403\"} 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn frames_out_are_counted_by_type_known_or_not() {
        let m = Metrics::new("i");
        let r#ref = crate::protocol::Label::Number(1.into());
        let ack = crate::protocol::ServerMsg::Ack { r#ref: &r#ref }.encode();
        m.messages_out(ack.as_str(), 2);
        m.messages_out(ack.as_str(), 3);
        m.messages_out(r#"{"type":"student","seq":1}"#, 10);
        m.messages_out(r#"{"type":"brand_new","seq":1}"#, 1);
        m.messages_out(r#"{"seq":1}"#, 4);
        m.messages_out(r#"{"type":"other"}"#, 1);
        let text = m.render(&stats());
        for line in [
            "examwatch_messages_out_total{instance_id=\"i\",type=\"ack\"} 5\n",
            "examwatch_messages_out_total{instance_id=\"i\",type=\"student\"} 10\n",
            "examwatch_messages_out_total{instance_id=\"i\",type=\"brand_new\"} 1\n",
            "examwatch_messages_out_total{instance_id=\"i\",type=\"other\"} 5\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let series = text
            .lines()
            .filter(|l| l.starts_with("examwatch_messages_out_total{"))
            .count();
        assert_eq!(series, 4, "{text}");
    }

    #[test]
    fn frame_types_come_from_the_first_field() {
        let r#ref = crate::protocol::Label::Number(1.into());
        let ack = crate::protocol::ServerMsg::Ack { r#ref: &r#ref }.encode();
        assert_eq!(frame_type(ack.as_str()), Some("ack"));
        assert_eq!(frame_type(r#"{"seq":1,"type":"x"}"#), None);
        assert_eq!(frame_type(r#"{"type":"<script>"}"#), None);
    }
}
