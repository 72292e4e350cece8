//! The application: shared state, start-up and graceful shutdown.
//!
//! `App::build(settings)` binds the listener (tests pass their own bound to
//! port 0 via [`App::with_listener`]); `app.run(shutdown)` serves until the
//! `shutdown` future resolves (SIGTERM in `main`), then drains for a
//! rolling restart (docs/DEPLOY.md, "Rolling restarts"):
//!
//! 1. `/readyz` turns 503 and the public listener stops accepting (a new
//!    connection is refused; the operators' listener keeps answering);
//! 2. after `server.drain_delay`, the liveness key in Redis says
//!    `draining`: sessions here are free to take elsewhere, as reconnects;
//! 3. the sockets close with 1012, spread evenly over `server.drain_window`
//!    ([`crate::drain`]), and their close handshakes finish (up to
//!    `server.shutdown_timeout`);
//! 4. the liveness key goes, rooms release their leases and end, tasks are
//!    awaited (the same deadline), the writer commits everything queued
//!    (up to `server.shutdown_timeout`), the listeners stop, and `run`
//!    returns `Ok` (exit 0).
//!
//! axum's graceful shutdown does not wait for upgraded sockets, so every
//! connection and room is spawned on our own [`TaskTracker`]. Those tasks
//! run on the shard threads (`server.shards`, [`crate::shard`]), which end
//! last, after the tracker is empty.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::accept::{self, ListenerLimits};
use crate::broker::{Broker, RedisBroker, redis::RedisOptions};
use crate::{
    auth::Keys,
    config::Settings,
    http,
    metrics::Metrics,
    room::{ConnId, Registry, RoomContext},
    roster::RosterCache,
    shard::{ShardThreads, Shards},
    store::{
        Store,
        writer::{Writer, WriterTask},
    },
    tickets::Tickets,
};

/// What every handler and connection shares: one pointer, so a clone is one
/// reference count and a connection that keeps it holds 8 bytes, not a
/// copy of every handle (368 bytes, for the whole life of every socket).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The handles behind [`AppState`].
pub struct Shared {
    pub settings: Arc<Settings>,
    pub keys: Arc<Keys>,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server stops: connections close 1001, rooms end.
    pub shutdown: CancellationToken,
    /// Tracks every connection and room task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    pub store: Store,
    pub writer: Writer,
    pub rosters: RosterCache,
    /// Recorded with every session (`database.instance_id` or hostname:pid).
    pub instance_id: Arc<str>,
    pub broker: Broker,
    pub handshake_guard: Arc<crate::ratelimit::HandshakeGuard>,
    /// Connection tickets (`POST /v1/tickets`, `?ticket=`).
    pub tickets: Arc<Tickets>,
    /// Revoked tokens and the live connections they close
    /// (`POST /v1/revocations`, [`crate::revocations`]).
    pub revocations: Arc<crate::revocations::Revocations>,
    /// The open WebSockets and event streams, one registry for a rolling
    /// restart's spread close, a rebalance's shedding and revocations
    /// ([`crate::live`]).
    pub live: Arc<crate::live::Live>,
    /// Rebalancing across the fleet ([`crate::rebalance`]).
    pub rebalancer: crate::rebalance::Rebalancer,
    /// The WebSocket loopback check's last result, for `/readyz`.
    pub health: Arc<crate::health::Health>,
    /// Exam-wide answered-set reads shared by the joins Redis cannot
    /// answer (cluster mode, [`crate::ws::answered`]).
    pub(crate) answered_reads: crate::ws::answered::AnsweredReads,
    /// The students' HTTP sessions open here (`?transport=http`), for
    /// `POST me/messages` ([`crate::sse::sessions`]).
    pub http_sessions: Arc<crate::sse::sessions::HttpSessions>,
    /// This instance's batches forwarded to the instance holding their
    /// session, waiting for its answer ([`crate::sse::forward`]).
    pub forwards: crate::sse::forward::Forwards,
    /// The shard threads' runtimes (`server.shards`; empty when off).
    pub shards: Shards,
    draining: AtomicBool,
    next_conn: AtomicU64,
}

impl Shared {
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

pub struct App {
    state: AppState,
    listener: TcpListener,
    /// The operators' listener (`server.admin_bind`).
    admin: TcpListener,
    limits: ListenerLimits,
    writer_task: WriterTask,
    /// The public listener's connections and the rooms run on these
    /// (`server.shards`); empty when off.
    shards: Shards,
    /// Their threads: ended last in `run`, or when an app that never ran
    /// is dropped.
    shard_threads: ShardThreads,
}

impl App {
    /// Binds `server.bind` and prepares the server.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = listen(settings.server.bind)
            .with_context(|| format!("cannot listen on server.bind = {}", settings.server.bind))?;
        Self::with_listener(settings, listener).await
    }

    /// Prepares the server on an already-bound listener: opens (and
    /// migrates) the database and starts its writer.
    pub async fn with_listener(settings: Settings, listener: TcpListener) -> anyhow::Result<Self> {
        settings.validate()?;
        let admin = listen(settings.server.admin_bind).with_context(|| {
            format!(
                "cannot listen on server.admin_bind = {}",
                settings.server.admin_bind
            )
        })?;
        let tls = crate::tls::Tls::from_settings(&settings.server.tls)?;
        let limits = listener_limits(&settings, tls.clone());
        let store = Store::open(&settings.database).await.with_context(|| {
            format!(
                "cannot open database.url = {}",
                redact_url(&settings.database.url)
            )
        })?;
        let instance_id: Arc<str> = match &settings.database.instance_id {
            Some(id) => id.as_str().into(),
            None => format!("{}:{}", hostname(), std::process::id()).into(),
        };
        store.check_writable(&instance_id).await.with_context(|| {
            format!(
                "cannot write to the database at database.url = {} (read-only file, folder or server?)",
                redact_url(&settings.database.url)
            )
        })?;
        let metrics = Arc::new(Metrics::new(&instance_id));
        let (shards, shard_threads) = Shards::start(settings.server.shards.resolve(), &metrics)
            .context("cannot start the shard threads (server.shards)")?;
        if !shards.is_empty() {
            tracing::info!(
                shards = shards.len(),
                tls = tls.is_some(),
                "exams sharded over threads (server.shards)"
            );
        }
        let (writer, writer_task) =
            Writer::spawn(store.clone(), &settings.database, metrics.db.clone());
        let keys = Keys::from_settings(&settings.auth, &settings.server.data_dir)?;
        if settings.server.allowed_origins.is_empty() {
            tracing::warn!(
                "server.allowed_origins is empty: WebSocket handshakes from any Origin are accepted"
            );
        }
        let settings = Arc::new(settings);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Settings built in code skip `Settings::validate`: the URL is
        // checked here too, with the same error.
        let target = settings.broker.redis_url.target().map_err(|problem| {
            crate::config::ConfigError::Invalid {
                key: "broker.redis_url",
                problem,
            }
        })?;
        let (broker, inbound) = if let Some(target) = target {
            let (redis, inbound) = RedisBroker::connect(RedisOptions {
                target,
                instance: instance_id.clone(),
                prefix: settings.broker.prefix.clone(),
                history: settings.exam.history_size,
                queue_limit: settings.broker.queue_limit,
                heartbeat_ttl: settings.broker.heartbeat_ttl,
                metrics: metrics.broker.clone(),
            })
            .await
            .context("cannot connect to broker.redis_url")?;
            tracing::info!(instance = %instance_id, "sharing exams through Redis");
            (Broker::Redis(redis), Some(inbound))
        } else {
            (Broker::Memory, None)
        };
        // Loaded before the first handshake: a restarted instance refuses
        // what was revoked before it started.
        let open = Arc::new(crate::live::Live::default());
        let revocations = Arc::new(crate::revocations::Revocations::new(open.clone()));
        let now = crate::store::now_ms();
        let stored = store
            .live_revocations(now)
            .await
            .context("cannot read the token revocations from the database")?;
        revocations.load(stored, now);
        let rosters = RosterCache::default();
        let registry = Registry::new(RoomContext {
            settings: Arc::new(settings.exam.clone()),
            alerts: settings.alerts,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            max_announcement_chars: settings.limits.max_announcement_chars,
            persist_events: settings.events.persist,
            store: store.clone(),
            writer: writer.clone(),
            broker: broker.clone(),
            rosters: rosters.clone(),
            shards: shards.clone(),
        });
        tokio::spawn(metrics.clone().upkeep(shutdown.clone()));
        tokio::spawn(crate::room::scheduler::run(
            registry.clone(),
            store.clone(),
            settings.exam.control_scan,
            shutdown.clone(),
        ));
        // Forwarded HTTP batches need the whole state: served once it exists.
        let (forwards_tx, forwards_rx) = tokio::sync::mpsc::unbounded_channel();
        let http_sessions: Arc<crate::sse::sessions::HttpSessions> = Default::default();
        if let (Some(inbound), Broker::Redis(redis)) = (inbound, &broker) {
            tokio::spawn(crate::broker::dispatch(
                inbound,
                registry.clone(),
                revocations.clone(),
                store.clone(),
                forwards_tx,
                http_sessions.clone(),
            ));
            tokio::spawn(crate::broker::heartbeat(
                redis.clone(),
                settings.broker.heartbeat_ttl,
                shutdown.clone(),
            ));
        }
        let shared = match &broker {
            Broker::Redis(redis) => Some(redis.clone()),
            Broker::Memory => None,
        };
        let tickets = Arc::new(Tickets::new(&settings.auth, shared, metrics.clone()));
        if let Some(tls) = &tls {
            tls.spawn_reloader(shutdown.clone())
                .context("cannot install the SIGHUP handler for TLS certificate reloads")?;
            tracing::info!(
                cert = ?settings.server.tls.cert,
                reload_interval_ms = settings.server.tls.reload_interval.as_millis() as u64,
                "TLS on server.bind (1.2 and 1.3); the certificate reloads on SIGHUP or a file change"
            );
        }
        let state = AppState(Arc::new(Shared {
            handshake_guard: Arc::new(crate::ratelimit::HandshakeGuard::new(&settings)),
            tickets,
            revocations,
            live: open,
            rebalancer: crate::rebalance::Rebalancer::new(&settings.cluster),
            health: Arc::new(crate::health::Health::new(&settings.server)),
            answered_reads: Default::default(),
            http_sessions,
            forwards: Default::default(),
            shards: shards.clone(),
            settings,
            keys: Arc::new(keys),
            registry,
            metrics,
            shutdown,
            tracker,
            draining: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            store,
            writer,
            rosters,
            instance_id,
            broker,
        }));
        tokio::spawn(crate::sse::forward::serve(state.clone(), forwards_rx));
        Ok(Self {
            state,
            listener,
            admin,
            limits,
            writer_task,
            shards,
            shard_threads,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the operators' listener (metrics, detailed readiness) is.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            state,
            listener,
            admin,
            limits,
            writer_task,
            shards,
            shard_threads,
        } = self;
        let addr = listener.local_addr()?;
        let admin_addr = admin.local_addr()?;
        let scheme = if limits.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let token = state.shutdown.clone();
        // The public listener stops accepting when the drain begins, long
        // before the rest stops: its own token.
        let accepting = token.child_token();
        let server = tokio::spawn(accept::serve(
            listener,
            http::router(state.clone()),
            limits.clone(),
            shards,
            state.metrics.clone(),
            accepting.clone(),
        ));
        // The operators' listener has a small cap of its own, inside the
        // descriptor reserve, so it never eats into the public one's.
        let admin_limits = ListenerLimits {
            max_connections: ADMIN_CONNECTIONS,
            tls: None, // plain: loopback or a private network (docs/DEPLOY.md)
            ..limits
        };
        let admin_server = tokio::spawn(accept::serve(
            admin,
            http::admin_router(state.clone()),
            admin_limits,
            Shards::default(), // the operators' listener stays on the main runtime
            state.metrics.clone(),
            token.clone(),
        ));
        // With TLS in-process the readiness check speaks TLS too, trusting
        // exactly the certificate served (a reload included).
        let probe = match &limits.tls {
            Some(tls) => crate::health::Connector::Tls(tls.loopback_connector()?),
            None => crate::health::Connector::Plain,
        };
        tokio::spawn(crate::health::run(
            state.clone(),
            addr,
            probe,
            accepting.clone(),
        ));
        // Counts for the fleet, shed requests, and (with
        // `cluster.rebalance`) the shedding of an excess.
        tokio::spawn(crate::rebalance::run(state.clone()));
        tracing::info!(%addr, "examwatch listening on {scheme}://{addr}");
        tracing::info!(addr = %admin_addr, "operators' endpoints (/metrics, /readyz) on http://{admin_addr}");

        shutdown.await;
        let settings = &state.settings.server;
        state.draining.store(true, Ordering::Relaxed);
        accepting.cancel();
        tracing::info!(
            drain_delay_ms = settings.drain_delay.as_millis() as u64,
            drain_window_ms = settings.drain_window.as_millis() as u64,
            sockets = state.live.open(),
            "shutting down: not ready any more, not accepting"
        );
        tokio::time::sleep(settings.drain_delay).await;
        let redis = match &state.broker {
            Broker::Redis(redis) => Some(redis.clone()),
            Broker::Memory => None,
        };
        // Before the first socket closes: a student who reconnects elsewhere
        // must find this instance's sessions free to take (a reconnect, not
        // a second session), while the orphan scan elsewhere still leaves
        // the students connected here alone.
        if let Some(redis) = &redis {
            redis.start_draining().await;
        }
        let closed = state.live.close_spread(settings.drain_window).await;
        let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
        if !state.live.closed_by(deadline).await {
            tracing::warn!(
                sockets = state.live.open(),
                "shutdown timeout: sockets still closing"
            );
        }
        tracing::info!(
            connections = closed,
            "drained: every socket closed with 1012, every event stream ended"
        );
        if let Some(redis) = &redis {
            redis.retire().await;
        }
        token.cancel();
        // Connections wait for no shutdown signal of their own (ws::pump):
        // any the drain's kick missed get one now (a kick's first reason
        // wins, so those it reached keep their 1012).
        state.live.kick_all(crate::room::close::GOING_AWAY);
        state.tracker.close();
        let open = state.tracker.len();
        if tokio::time::timeout_at(deadline, state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = state.tracker.len(),
                "shutdown timeout: abandoning tasks"
            );
        }
        // Everything the rooms and sockets produced is written before exit.
        writer_task.finish(settings.shutdown_timeout).await;
        // Both listeners under one deadline, so shutdown stays within
        // drain_delay + drain_window + 3 x shutdown_timeout (docs/DEPLOY.md).
        let both = async { (server.await, admin_server.await) };
        match tokio::time::timeout(settings.shutdown_timeout, both).await {
            Ok((a, b)) => {
                for r in [a, b] {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "HTTP server task failed");
                    }
                }
            }
            Err(_) => tracing::warn!("HTTP server did not stop in time"),
        }
        // Last: every connection and room on them has ended (or was
        // abandoned at a deadline above, and is dropped with its shard).
        shard_threads.end();
        tracing::info!(closed_tasks = open, "shutdown complete");
        Ok(())
    }
}

/// The URL without its password, for error messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "examwatch".into())
}

/// Pending connections the kernel may hold before `accept` (it caps this at
/// `net.core.somaxconn`, 4096 on current kernels). tokio's `bind` asks for
/// 1024: when a whole exam hall reconnects at once (a Wi-Fi access point
/// coming back), the SYNs past that are dropped and those clients retry
/// only after the kernel's 1 s, then 3 s SYN timeouts — measured in the
/// reconnect-storm benchmark (docs/BENCHMARKS.md).
const LISTEN_BACKLOG: u32 = 65_535;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Connections the operators' listener takes at once (scrapers, probes).
const ADMIN_CONNECTIONS: usize = 32;

/// The accept loop's limits: the request-head deadline, and the
/// connection cap (by default the open-files limit, raised to its hard
/// limit first, less a reserve), logged so an operator sees what applies.
fn listener_limits(settings: &Settings, tls: Option<Arc<crate::tls::Tls>>) -> ListenerLimits {
    let (soft, hard) = accept::raise_open_files_limit();
    let reserve = accept::fd_reserve(settings.database.max_connections);
    let fits = soft.saturating_sub(reserve).max(16);
    let max_connections = match settings.server.max_connections {
        0 => fits,
        n => {
            if n > fits {
                tracing::warn!(
                    max_connections = n,
                    open_files_limit = soft,
                    "server.max_connections is above what the open-files limit leaves room for: accepts may fail with EMFILE"
                );
            }
            n
        }
    };
    tracing::info!(
        open_files_limit = soft,
        open_files_hard_limit = hard,
        max_connections,
        request_head_timeout_ms = settings.server.request_head_timeout.as_millis() as u64,
        "connection limits"
    );
    ListenerLimits {
        max_connections,
        request_head_timeout: settings.server.request_head_timeout,
        tls,
    }
}
