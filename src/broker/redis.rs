//! The Redis broker: one reconnecting connection per instance (RESP3,
//! automatic resubscription), to one server or to a Redis Cluster (there,
//! one for commands and one for subscriptions: `conn::BrokerConn`; the
//! code below does not care which).
//!
//! - **Publishing** goes through one task that owns the order (the
//!   `Publisher`, src/broker/publish.rs). While Redis is unreachable drafts
//!   wait (bounded) and are retried with backoff; `/readyz` reports
//!   degraded.
//! - **Subscribing**: one sharded channel per exam (`{prefix}:exam:{<exam>}`,
//!   SSUBSCRIBE/SPUBLISH: it lives on the exam's slot, with its keys), only
//!   while this instance has a room for it. Each message is a batch of the
//!   exam's events (src/broker/frame.rs), split here and routed to rooms. A subscription lost and regained (a
//!   reconnection, a failed-over primary, a slot moved to another node)
//!   re-synchronises that exam's room: events published meanwhile never
//!   reached it.
//! - **Re-synchronising**: after a disconnection, every room is told to
//!   reload the exam's shared state, so a teacher whose instance missed
//!   events gets a fresh snapshot instead of a silent gap.
//! - **Leases**: one session per student across the cluster, and liveness
//!   keys per instance so a crashed instance's presence expires.
//! - **Revocations**: one cluster-wide channel (`{prefix}:revocations`),
//!   subscribed for the instance's whole life (and resubscribed after a
//!   reconnection like the exam channels); a revocation is published
//!   through the publisher's queue, so it waits out a Redis outage.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use redis::{AsyncCommands, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};

use super::publish::{Op, PUBLISH_LUA, Publisher};
use super::{
    Draft, Published, SharedState,
    conn::{BrokerConn, Target},
    frame,
};

/// The liveness key's value while its instance drains (`start_draining`).
const DRAINING: &str = "draining";

/// How long a change of a student's control record makes handshakes read
/// it from the database ([`RedisBroker::note_controls`]): far longer than
/// an event takes to reach every instance.
pub const CONTROL_NOTE: Duration = Duration::from_secs(10);

/// What the broker tells the rooms of this instance.
#[derive(Debug)]
pub enum Inbound {
    /// A numbered event for an exam.
    Event(Arc<str>, Published),
    /// A message for one connection of this instance (second session);
    /// with the HTTP session and handover token the new connection
    /// presented, if it did (PROTOCOL.md 8.4).
    Kick {
        exam: Arc<str>,
        student: Arc<str>,
        handover: Option<(String, uuid::Uuid)>,
    },
    /// A student's socket was lost on another instance (their grace clock
    /// runs there): every room counts it towards a network incident.
    Dropped { exam: Arc<str>, student: Arc<str> },
    /// Redis came back after a disconnection: reload shared state.
    Resync,
    /// One exam's subscription was lost and is back (a failover, a slot
    /// moved): its room reloads the shared state.
    ResyncExam(Arc<str>),
    /// A token revocation made on some instance (its wire JSON,
    /// `Revocation::to_wire`).
    Revoked(String),
    /// A message on this instance's own channel: a forwarded HTTP batch
    /// or the answer to one (src/sse/forward.rs).
    Forward(String),
}

pub struct RedisBroker {
    pub(super) instance: Arc<str>,
    pub(super) prefix: Arc<str>,
    pub(super) conn: BrokerConn,
    ops: mpsc::UnboundedSender<Op>,
    /// The exams this instance wants events of (it has a room for them):
    /// what `read_pushes` subscribes again when a subscription is lost.
    wanted: Wanted,
    healthy: Arc<AtomicBool>,
    pending: Arc<AtomicUsize>,
    /// Drafts allowed to wait while Redis is unreachable.
    limit: usize,
    /// Set when drafts had to be dropped: rooms re-synchronise afterwards.
    overflowed: Arc<AtomicBool>,
    /// Set by a graceful stop (`retire`): the heartbeat stops renewing the
    /// liveness key, which is gone.
    retired: AtomicBool,
    /// Set when a rolling restart begins (`start_draining`): the liveness
    /// key says `draining` instead of `1` until `retire` deletes it.
    draining: AtomicBool,
    /// `broker.heartbeat_ttl` (see `RedisOptions`).
    pub(super) heartbeat_ttl: Duration,
    /// Other instances' liveness, read for the rooms' orphan scans
    /// (src/broker/orphans.rs).
    pub(super) peer_liveness: super::orphans::Liveness,
    /// The orphan scans' reads (`examwatch_broker_lease_reads_total`,
    /// `examwatch_broker_liveness_reads_total`).
    pub(super) scan_reads: (metrics::Counter, metrics::Counter),
}

/// Settings the broker needs.
pub struct RedisOptions {
    /// One server or a cluster (`broker.redis_url`, parsed).
    pub target: Target,
    pub instance: Arc<str>,
    pub prefix: String,
    pub history: usize,
    pub queue_limit: usize,
    /// `broker.heartbeat_ttl`: how soon a dead instance's liveness key is
    /// gone, hence how often rooms look for its orphaned students.
    pub heartbeat_ttl: Duration,
    /// Publish latency and reconnects (`examwatch_broker_*`).
    pub metrics: crate::metrics::BrokerMetrics,
}

impl RedisBroker {
    /// Connects, and starts the publisher and the push reader. Inbound
    /// events for rooms arrive on the returned receiver.
    pub async fn connect(
        options: RedisOptions,
    ) -> Result<(Arc<Self>, mpsc::UnboundedReceiver<Inbound>), redis::RedisError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        // Lazy: an instance starts (and serves its own members) even while
        // Redis is down; the publisher's pings connect it when it is back.
        let conn = BrokerConn::open(&options.target, push_tx)?;
        // Until the first command succeeds Redis counts as away (events are
        // served locally); reaching it then re-synchronises every room.
        let needs_resync = Arc::new(AtomicBool::new(true));
        let mut probe = conn.clone();
        let reachable = tokio::time::timeout(
            Duration::from_secs(2),
            redis::cmd("PING").query_async::<Value>(&mut probe),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if reachable {
            needs_resync.store(false, Ordering::Relaxed);
        } else {
            tracing::warn!("Redis is not reachable yet; serving this instance's members alone");
        }
        let (ops, ops_rx) = mpsc::unbounded_channel();
        // For the instance's whole life; retried by the publisher until
        // Redis confirms, resubscribed by the connection after a reconnect.
        let _ = ops.send(Op::SubscribeRevocations);
        let _ = ops.send(Op::SubscribeInstance);
        let (inbound_tx, inbound) = mpsc::unbounded_channel();
        let broker = Arc::new(Self {
            instance: options.instance.clone(),
            prefix: options.prefix.clone().into(),
            conn: conn.clone(),
            ops: ops.clone(),
            wanted: Wanted::default(),
            healthy: Arc::new(AtomicBool::new(reachable)),
            pending: Arc::default(),
            limit: options.queue_limit,
            overflowed: Arc::default(),
            retired: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            heartbeat_ttl: options.heartbeat_ttl,
            peer_liveness: Default::default(),
            scan_reads: (
                options.metrics.lease_reads.clone(),
                options.metrics.liveness_reads.clone(),
            ),
        });
        tokio::spawn(
            Pushes {
                instance: options.instance.clone(),
                prefix: options.prefix.clone(),
                inbound: inbound_tx.clone(),
                healthy: broker.healthy.clone(),
                needs_resync: needs_resync.clone(),
                wanted: broker.wanted.clone(),
                ops,
                confirmed: Default::default(),
                metrics: options.metrics.clone(),
            }
            .run(push_rx),
        );
        tokio::spawn(
            Publisher {
                conn,
                rx: ops_rx,
                prefix: options.prefix,
                instance: options.instance,
                history: options.history,
                healthy: broker.healthy.clone(),
                pending: broker.pending.clone(),
                overflowed: broker.overflowed.clone(),
                needs_resync,
                inbound: inbound_tx,
                script_sha: redis::Script::new(PUBLISH_LUA).get_hash().to_owned(),
                script_loaded: false,
                metrics: options.metrics,
            }
            .run(),
        );
        Ok((broker, inbound))
    }

    pub fn instance(&self) -> &Arc<str> {
        &self.instance
    }

    /// The lease holder name of one of this instance's sessions.
    pub fn holder(&self, session: &str) -> String {
        format!("{}/{session}", self.instance)
    }

    /// How long a liveness key outlives its instance's last heartbeat.
    pub fn heartbeat_ttl(&self) -> Duration {
        self.heartbeat_ttl
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Queues a draft; false if it was dropped because too many wait (the
    /// room then owes its teachers a snapshot).
    pub fn publish(&self, draft: Draft) -> bool {
        if self.pending.load(Ordering::Relaxed) >= self.limit {
            // Bounded memory while Redis is away or slow: drop, and make
            // every room re-synchronise (fresh snapshots) once it catches up.
            self.overflowed.store(true, Ordering::Relaxed);
            return false;
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        let queued = std::time::Instant::now();
        self.ops.send(Op::Publish(draft, queued)).is_ok()
    }

    /// Subscribes to an exam's channel; resolves once Redis confirmed.
    pub fn subscribe(&self, exam: Arc<str>) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.wanted.set(&exam, true);
        let _ = self.ops.send(Op::Subscribe(exam, tx));
        rx
    }

    pub fn unsubscribe(&self, exam: Arc<str>) {
        self.wanted.set(&exam, false);
        let _ = self.ops.send(Op::Unsubscribe(exam));
    }

    /// Publishes a revocation to every instance (this one included), in
    /// order with everything else this instance publishes; retried until
    /// Redis takes it.
    pub fn publish_revocation(&self, wire: String) {
        let _ = self.ops.send(Op::Revoke(wire));
    }

    /// The exam's shared state: seq, students' latest events, history.
    pub async fn load(&self, exam: &str) -> Result<SharedState, redis::RedisError> {
        let mut conn = self.conn.clone();
        let p = &self.prefix;
        let (seq, students, history): (Option<u64>, Vec<String>, Vec<String>) = redis::pipe()
            .get(format!("{p}:{{{exam}}}:seq"))
            .hvals(format!("{p}:{{{exam}}}:students"))
            .lrange(format!("{p}:{{{exam}}}:history"), 0, -1)
            .query_async(&mut conn)
            .await?;
        let history = history
            .into_iter()
            .filter_map(|entry| {
                let (seq, event) = entry.split_once('\n')?;
                Some((seq.parse().ok()?, event.to_owned()))
            })
            .collect();
        Ok(SharedState {
            seq: seq.unwrap_or(0),
            students,
            history,
        })
    }

    /// Tries to take the student's cluster-wide session lease for `holder`
    /// (`instance/session`), atomically. `Ok(None)`: taken (nobody held
    /// it, or we did). `Ok(Some(previous))`: held by someone else and left
    /// alone, unless `force`, which replaces it. A holder ending in
    /// `/grace` has lost its socket and is within its grace period.
    pub async fn claim_lease(
        &self,
        exam: &str,
        student: &str,
        holder: &str,
        ttl: Duration,
        force: bool,
    ) -> Result<Option<String>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(
            r"local cur = redis.call('GET', KEYS[1])
              if (not cur) or cur == ARGV[1] or cur == ARGV[1] .. '/grace' or ARGV[3] == '1' then
                redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                if (not cur) or cur == ARGV[1] or cur == ARGV[1] .. '/grace' then return '' end
              end
              return cur",
        );
        let previous: String = script
            .key(self.lease_key(exam, student))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .arg(if force { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        Ok((!previous.is_empty()).then_some(previous))
    }

    /// Renews this instance's leases: each `(student, holder, in_grace)`
    /// keeps its lease only if it still holds it (another instance may have
    /// taken it over), marked `/grace` while the socket is gone.
    pub async fn renew_leases(
        &self,
        exam: &str,
        leases: &[(Arc<str>, String, bool)],
        ttl: Duration,
    ) -> Result<(), redis::RedisError> {
        if leases.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mine = format!("{}/", self.instance);
        // One script call per chunk of the room's students (not one round
        // trip each): every key carries the exam's hash tag, one slot.
        for chunk in leases.chunks(RENEW_CHUNK) {
            let mut call = RENEW.prepare_invoke();
            call.arg(&mine).arg(ttl.as_millis() as u64);
            for (student, holder, in_grace) in chunk {
                call.key(self.lease_key(exam, student));
                if *in_grace {
                    call.arg(format!("{holder}/grace"));
                } else {
                    call.arg(holder);
                }
            }
            let _: i64 = call.invoke_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Releases a lease if this holder (in either form) still has it.
    pub async fn release_lease(&self, exam: &str, student: &str, holder: &str) {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(
            r"local cur = redis.call('GET', KEYS[1])
              if cur == ARGV[1] or cur == ARGV[1] .. '/grace' then
                return redis.call('DEL', KEYS[1])
              end
              return 0",
        );
        let _: Result<i64, _> = script
            .key(self.lease_key(exam, student))
            .arg(holder)
            .invoke_async(&mut conn)
            .await;
    }

    /// Who holds a student's lease right now.
    pub async fn lease_holder(
        &self,
        exam: &str,
        student: &str,
    ) -> Result<Option<String>, redis::RedisError> {
        let mut conn = self.conn.clone();
        conn.get(self.lease_key(exam, student)).await
    }

    /// An instance's liveness key (`heartbeat`; no hash tag: read with
    /// `GET`/`EXISTS` alone, never inside an exam's script).
    pub(super) fn liveness_key(&self, instance: &str) -> String {
        format!("{}:instance:{instance}", self.prefix)
    }

    pub(super) fn lease_key(&self, exam: &str, student: &str) -> String {
        format!("{}:{{{exam}}}:lease:{student}", self.prefix)
    }

    /// Adds a committed answer's question to the student's answered set
    /// (kept, like the exam's other keys, a day past its last write).
    pub async fn record_answer(
        &self,
        exam: &str,
        student: &str,
        question: &str,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let key = self.answered_key(exam, student);
        redis::pipe()
            .sadd(&key, question)
            .ignore()
            .pexpire(&key, 86_400_000)
            .ignore()
            .query_async(&mut conn)
            .await
    }

    /// The questions a student has a committed answer for, as recorded by
    /// `record_answer`; `None` when Redis holds no state for the exam (its
    /// keys expired or Redis lost its data): then only the database knows.
    pub async fn answered(
        &self,
        exam: &str,
        student: &str,
    ) -> Result<Option<std::collections::HashSet<String>>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let (known, answered): (bool, std::collections::HashSet<String>) = redis::pipe()
            .exists(format!("{}:{{{exam}}}:seq", self.prefix))
            .smembers(self.answered_key(exam, student))
            .query_async(&mut conn)
            .await?;
        Ok(known.then_some(answered))
    }

    fn answered_key(&self, exam: &str, student: &str) -> String {
        format!("{}:{{{exam}}}:answered:{student}", self.prefix)
    }

    /// Sends `payload` on `instance`'s own channel; false when no
    /// instance listens there (it is gone).
    pub async fn send_to_instance(
        &self,
        instance: &str,
        payload: &str,
    ) -> Result<bool, redis::RedisError> {
        let mut conn = self.conn.clone();
        let receivers: i64 = conn
            .publish(instance_channel(&self.prefix, instance), payload)
            .await?;
        Ok(receivers > 0)
    }

    /// Asks the instance holding a student's old session to close it.
    /// `handover`: the previous session and the handover token the new
    /// connection presented (PROTOCOL.md 8.4), for the holder to check.
    pub async fn send_kick(
        &self,
        exam: &str,
        student: &str,
        handover: Option<(&str, &uuid::Uuid)>,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let proof = handover.map(|(session, token)| format!("{session} {token}"));
        let msg = frame::control_with(
            &self.instance,
            "kick",
            student,
            proof.as_deref().unwrap_or(""),
        );
        conn.spublish(exam_channel(&self.prefix, exam), msg).await
    }

    /// Tells the other instances' rooms of the exam that a student's socket
    /// was lost here (room/incident.rs counts drops cluster-wide).
    pub async fn send_dropped(&self, exam: &str, student: &str) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let msg = frame::control(&self.instance, "dropped", student);
        conn.spublish(exam_channel(&self.prefix, exam), msg).await
    }

    /// Claims the right to report the exam's current network incident:
    /// true for the first instance to ask, false for the others (each saw
    /// the same drops and folds its students' alerts) while the claim lasts
    /// (`ttl`, renewed by every later drop of the incident).
    pub async fn claim_incident(
        &self,
        exam: &str,
        ttl: Duration,
    ) -> Result<bool, redis::RedisError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}:{{{exam}}}:incident", self.prefix))
            .arg(&*self.instance)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// The exam's incident goes on (another drop): its claim lasts `ttl`
    /// from now.
    pub async fn extend_incident(
        &self,
        exam: &str,
        ttl: Duration,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let _: bool = conn
            .pexpire(
                format!("{}:{{{exam}}}:incident", self.prefix),
                ttl.as_millis().max(1) as i64,
            )
            .await?;
        Ok(())
    }

    /// Where a student's latest admitted session came from (peer IP and
    /// user agent, `room::signals::Client::encode`), whichever instance it
    /// was on; `None` when Redis has none (the caller asks the database).
    pub async fn client_of(
        &self,
        exam: &str,
        student: &str,
    ) -> Result<Option<String>, redis::RedisError> {
        let mut conn = self.conn.clone();
        conn.get(self.client_key(exam, student)).await
    }

    /// Records where a student's session that was just admitted comes from
    /// (a refused one never replaces it: it would make the next honest
    /// session look like another device).
    pub async fn record_client(
        &self,
        exam: &str,
        student: &str,
        client: &str,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        conn.pset_ex(self.client_key(exam, student), client, 86_400_000)
            .await
    }

    fn client_key(&self, exam: &str, student: &str) -> String {
        format!("{}:{{{exam}}}:client:{student}", self.prefix)
    }

    /// Notes that these students' control records changed (a proctor
    /// action, an accommodation), for [`CONTROL_NOTE`]: a handshake on any
    /// instance within that time reads the record from the database
    /// instead of trusting a room that may not have its event yet.
    pub async fn note_controls(
        &self,
        exam: &str,
        students: &[&str],
    ) -> Result<(), redis::RedisError> {
        if students.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for s in students {
            pipe.cmd("SET")
                .arg(self.control_key(exam, s))
                .arg(1)
                .arg("PX")
                .arg(CONTROL_NOTE.as_millis() as u64)
                .ignore();
        }
        pipe.query_async(&mut conn).await
    }

    /// Whether a student's control record changed within [`CONTROL_NOTE`].
    pub async fn control_changed(
        &self,
        exam: &str,
        student: &str,
    ) -> Result<bool, redis::RedisError> {
        let mut conn = self.conn.clone();
        conn.exists(self.control_key(exam, student)).await
    }

    fn control_key(&self, exam: &str, student: &str) -> String {
        format!("{}:{{{exam}}}:control:{student}", self.prefix)
    }

    /// Stores a connection ticket's value for `ttl` (see `crate::tickets`).
    pub async fn put_ticket(
        &self,
        ticket: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        conn.pset_ex(self.ticket_key(ticket), value, ms).await
    }

    /// Takes a ticket's value and deletes it in one command (`GETDEL`,
    /// Redis 6.2+): of any number of instances redeeming the same ticket at
    /// once, exactly one gets it.
    pub async fn take_ticket(&self, ticket: &str) -> Result<Option<String>, redis::RedisError> {
        let mut conn = self.conn.clone();
        redis::cmd("GETDEL")
            .arg(self.ticket_key(ticket))
            .query_async(&mut conn)
            .await
    }

    fn ticket_key(&self, ticket: &str) -> String {
        format!("{}:ticket:{ticket}", self.prefix)
    }

    /// Marks this instance alive for `ttl` (not once it has retired).
    pub async fn heartbeat(&self, ttl: Duration) -> Result<(), redis::RedisError> {
        if self.retired.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let key = self.liveness_key(&self.instance);
        conn.set_ex(key, self.liveness(), ttl.as_secs().max(1))
            .await
    }

    /// What the liveness key holds: `1`, or `draining` during a rolling
    /// restart.
    fn liveness(&self) -> &'static str {
        if self.draining.load(Ordering::Relaxed) {
            DRAINING
        } else {
            "1"
        }
    }

    /// A rolling restart begins (src/drain.rs), before the first socket
    /// closes: the liveness key says `draining` (the heartbeat keeps it
    /// so). To a student's handshake elsewhere this instance is then not
    /// alive — its lease is free to take, a reconnect not a live second
    /// session, and no kick is sent here — while the orphan scan still sees
    /// it alive: its students are still connected until it closes them,
    /// and must not be put through a grace period elsewhere meanwhile.
    pub async fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let ttl = self.heartbeat_ttl;
        let marked = tokio::time::timeout(Duration::from_secs(2), self.heartbeat(ttl)).await;
        if !matches!(marked, Ok(Ok(()))) {
            tracing::warn!("cannot mark this instance as draining in Redis");
        }
    }

    /// A graceful stop, once the drain closed the sockets (or at once
    /// without one): this instance stops saying it is alive and deletes its
    /// liveness key, so a student who reconnects elsewhere is a reconnect
    /// there, not a live second session (which it would be until the key
    /// expired, up to `broker.heartbeat_ttl`), and students who did not
    /// come back are found by the orphan scan. The rooms release their
    /// leases as they end.
    pub async fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let key = self.liveness_key(&self.instance);
        let deleted: Result<i64, _> = tokio::time::timeout(Duration::from_secs(2), conn.del(key))
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from(std::io::Error::from(
                    std::io::ErrorKind::TimedOut,
                )))
            });
        if let Err(e) = deleted {
            tracing::warn!(error = %e, "cannot delete this instance's liveness key; it expires by itself");
        }
    }

    /// Whether an instance has heartbeated recently, and whether it drains
    /// (a draining instance's sessions are free to take: `start_draining`).
    pub async fn instance_state(&self, instance: &str) -> Result<InstanceState, redis::RedisError> {
        let mut conn = self.conn.clone();
        let value: Option<String> = conn.get(self.liveness_key(instance)).await?;
        Ok(match value.as_deref() {
            None => InstanceState::Gone,
            Some(DRAINING) => InstanceState::Draining,
            Some(_) => InstanceState::Alive,
        })
    }
}

/// What another instance's liveness key says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Alive,
    /// In a rolling restart: its sockets are closing (1012), its students'
    /// sessions are free to take, but a socket it still holds is live.
    Draining,
    /// No key: the instance stopped or died.
    Gone,
}

/// The exams this instance wants events of: set by the rooms' subscribe
/// and unsubscribe, read by the push reader when a subscription is lost.
/// A std Mutex: it is never held across an await.
#[derive(Clone, Default)]
struct Wanted(Arc<std::sync::Mutex<HashSet<Arc<str>>>>);

impl Wanted {
    fn set(&self, exam: &Arc<str>, wanted: bool) {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if wanted {
            set.insert(exam.clone());
        } else {
            set.remove(exam);
        }
    }

    fn contains(&self, exam: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(exam)
    }

    fn all(&self) -> Vec<Arc<str>> {
        let set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        set.iter().cloned().collect()
    }
}

/// A kick's `{session} {token}` (see [`RedisBroker::send_kick`]), if it
/// carries one that parses.
fn handover_proof(payload: &str) -> Option<(String, uuid::Uuid)> {
    let (session, token) = payload.split_once(' ')?;
    let token = uuid::Uuid::try_parse(token).ok()?;
    (!session.is_empty() && session.len() <= 64).then(|| (session.to_owned(), token))
}

/// Parses pushed messages and hands them to the rooms; keeps the exams'
/// sharded subscriptions alive.
///
/// The redis crate re-subscribes after a reconnection and, in a cluster,
/// after a slot refresh; but a server that moves a slot away tells its
/// subscribers with a `sunsubscribe` push and forgets them, and events
/// published while a subscription was away are missed either way. So:
/// a `sunsubscribe` this instance did not ask for subscribes again (the
/// cluster connection follows the `MOVED` to the slot's new owner); a lost
/// connection re-issues every wanted subscription (queued, hence retried
/// until Redis takes them); and a confirmation of a subscription that was
/// already confirmed (a re-subscription, by us or by the crate) makes that
/// exam's room re-synchronise.
struct Pushes {
    instance: Arc<str>,
    prefix: String,
    inbound: mpsc::UnboundedSender<Inbound>,
    healthy: Arc<AtomicBool>,
    needs_resync: Arc<AtomicBool>,
    wanted: Wanted,
    ops: mpsc::UnboundedSender<Op>,
    /// Exams whose subscription Redis has confirmed since this instance
    /// last unsubscribed them: a further confirmation is a re-subscription.
    confirmed: HashSet<Arc<str>>,
    metrics: crate::metrics::BrokerMetrics,
}

impl Pushes {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<PushInfo>) {
        let revocations = revocations_channel(&self.prefix);
        let own = instance_channel(&self.prefix, &self.instance);
        while let Some(push) = rx.recv().await {
            match push.kind {
                PushKind::Message | PushKind::SMessage => {
                    let mut data = push.data.into_iter();
                    let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                        (data.next(), data.next())
                    else {
                        continue;
                    };
                    if channel.as_slice() == revocations.as_bytes() {
                        if let Ok(wire) = String::from_utf8(payload) {
                            let _ = self.inbound.send(Inbound::Revoked(wire));
                        }
                        continue;
                    }
                    if channel.as_slice() == own.as_bytes() {
                        if let Ok(wire) = String::from_utf8(payload) {
                            let _ = self.inbound.send(Inbound::Forward(wire));
                        }
                        continue;
                    }
                    if let Some(exam) = self.exam_of(&channel) {
                        self.on_event(exam, payload);
                    }
                }
                PushKind::SSubscribe => {
                    let Some(exam) = self.exam_in(&push.data) else {
                        continue;
                    };
                    if !self.wanted.contains(&exam) {
                        // A stale re-subscription that lost a race with the
                        // room's end: undo it.
                        self.confirmed.remove(&exam);
                        let _ = self.ops.send(Op::Unsubscribe(exam));
                    } else if !self.confirmed.insert(exam.clone()) {
                        self.metrics.resubscriptions.increment(1);
                        tracing::debug!(exam = %exam, "exam subscription restored; re-synchronising");
                        let _ = self.inbound.send(Inbound::ResyncExam(exam));
                    }
                }
                PushKind::SUnsubscribe => {
                    let Some(exam) = self.exam_in(&push.data) else {
                        continue;
                    };
                    if self.wanted.contains(&exam) {
                        tracing::info!(exam = %exam, "Redis dropped an exam subscription (slot moved); subscribing again");
                        let (done, _) = oneshot::channel();
                        let _ = self.ops.send(Op::Subscribe(exam, done));
                    } else {
                        self.confirmed.remove(&exam);
                    }
                }
                PushKind::Disconnection => {
                    self.healthy.store(false, Ordering::Relaxed);
                    self.needs_resync.store(true, Ordering::Relaxed);
                    tracing::warn!("Redis connection lost; reconnecting");
                    // In a cluster the subscriptions have a connection of
                    // their own (src/broker/conn.rs) that nothing else uses:
                    // these commands are what makes it reconnect and re-route,
                    // the revocations and our own channel included (asking
                    // again for a live subscription is harmless).
                    let _ = self.ops.send(Op::SubscribeRevocations);
                    let _ = self.ops.send(Op::SubscribeInstance);
                    for exam in self.wanted.all() {
                        let (done, _) = oneshot::channel();
                        let _ = self.ops.send(Op::Subscribe(exam, done));
                    }
                }
                _ => {}
            }
        }
    }

    /// One message on an exam channel: one batch of the exam's events
    /// (src/broker/frame.rs), or a kick / dropped record.
    fn on_event(&self, exam: Arc<str>, payload: Vec<u8>) {
        let Some(events) = frame::parse(payload.into()) else {
            tracing::warn!("unparseable message on an exam channel");
            return;
        };
        for msg in events {
            let exam = exam.clone();
            let inbound_msg = if msg.kind == "kick" || msg.kind == "dropped" {
                if msg.origin == self.instance {
                    continue; // our own: the new session, or the drop, is here
                }
                match (msg.student, msg.kind == "kick") {
                    (Some(student), true) => Inbound::Kick {
                        exam,
                        student,
                        handover: handover_proof(msg.event.as_str()),
                    },
                    (Some(student), false) => Inbound::Dropped { exam, student },
                    (None, _) => continue,
                }
            } else {
                Inbound::Event(exam, msg)
            };
            let _ = self.inbound.send(inbound_msg);
        }
    }

    /// The exam of a (un)subscription confirmation (`[channel, count]`).
    fn exam_in(&self, data: &[Value]) -> Option<Arc<str>> {
        match data.first() {
            Some(Value::BulkString(channel)) => self.exam_of(channel),
            _ => None,
        }
    }

    /// The exam an exam channel (`{prefix}:exam:{<exam>}`) is for.
    fn exam_of(&self, channel: &[u8]) -> Option<Arc<str>> {
        std::str::from_utf8(channel)
            .ok()?
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":exam:{")?
            .strip_suffix('}')
            .map(Arc::from)
    }
}

/// The exam's sharded event channel. It carries the exam's hash tag, like
/// every per-exam key, so a cluster keeps it on the exam's slot and the
/// numbering script may publish on it.
pub(super) fn exam_channel(prefix: &str, exam: &str) -> String {
    format!("{prefix}:exam:{{{exam}}}")
}

/// The cluster-wide channel of token revocations.
pub(super) fn revocations_channel(prefix: &str) -> String {
    format!("{prefix}:revocations")
}

/// One instance's own channel (forwarded HTTP batches, their answers).
pub(super) fn instance_channel(prefix: &str, instance: &str) -> String {
    format!("{prefix}:instance:{instance}")
}

/// Renews each of `KEYS` that is free or held by this instance (any lease
/// held by this instance is ours to renew: the room knows which of its
/// sessions speaks for the student now). ARGV: this instance's prefix
/// (`instance/`), the ttl in ms, then the value for each key. Returns how
/// many were renewed.
static RENEW: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"local n = 0
          for i = 1, #KEYS do
            local cur = redis.call('GET', KEYS[i])
            if (not cur) or string.sub(cur, 1, #ARGV[1]) == ARGV[1] then
              redis.call('SET', KEYS[i], ARGV[i + 2], 'PX', ARGV[2])
              n = n + 1
            end
          end
          return n",
    )
});

/// The most leases renewed by one script call (bounds how long Redis runs it).
const RENEW_CHUNK: usize = 500;

/// The instance part of a lease value (`instance/session[/grace]`).
pub(super) fn holder_instance(lease: &str) -> &str {
    lease.split_once('/').map_or(lease, |(i, _)| i)
}
