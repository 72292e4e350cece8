//! Exam rooms: one actor task per exam owns that exam's state (students,
//! `seq`, recent history) and is the only code that changes it.
//!
//! Connections talk to a room through a cloneable [`RoomHandle`] (a bounded
//! mpsc); the room talks back through each member's [`Outbox`], a bounded
//! queue of already-encoded frames plus a [`Kick`] to close it. The room never
//! awaits a connection: it `try_send`s, and a member whose queue is full is
//! kicked with 4008, so one slow reader cannot stall an exam.
//!
//! The [`Registry`] maps exam ids to live rooms. A room with no members
//! lingers for `exam.room_linger`, then removes itself; a join that races with
//! that removal sees its reply channel dropped and retries on a fresh room.
//!
//! Where a broker goes: the actor turns commands into events in
//! [`actor`]'s `emit` (assign `seq`, encode once, keep in history) and hands
//! the encoded bytes to `deliver` (fan out to local members). A cross-instance
//! broker sits between the two: `emit` publishes, and every instance's room
//! `deliver`s what its subscription receives.

mod actor;
mod alerts;
pub mod control;
pub mod deliveries;
pub mod hands;
pub mod incident;
pub mod queue;
pub mod signals;
pub use queue::Kick;
pub mod rate;
mod replay;
pub mod scheduler;
mod snapshot;
// Public for the fuzz target fuzz/fuzz_targets/student_state.rs.
pub mod students;
pub use students::total_questions;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::ExamSettings,
    metrics::Metrics,
    protocol::{ClientMsg, Label, Seq},
};

/// Identifies one connection for the lifetime of the process.
pub type ConnId = u64;

/// A reason to close a connection, chosen by whoever kicks it first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

/// Close codes of the protocol (docs/PROTOCOL.md lists them all).
pub mod close {
    use super::CloseReason;

    /// What a close code means to a client, in a few words (PROTOCOL.md,
    /// close codes): for tools that show it to a person.
    pub fn meaning(code: u16) -> &'static str {
        match code {
            1000 => "normal close",
            1001 => "server shutting down: reconnect (another instance may take you)",
            1002 => "WebSocket protocol error: the client broke the framing rules",
            1003 => "binary frames are not supported: send JSON text",
            1005 => "closed without a code",
            1006 => "connection lost without a close frame",
            1007 => "invalid data: not UTF-8, or too many invalid messages",
            1008 => "too many rejected messages (forbidden or rate limited)",
            1009 => "message too big: never resend it",
            1011 => "server error",
            1012 => {
                "service restart (rolling restart, or rebalancing): reconnect after a short random wait, another instance takes you"
            }
            1013 => "exam state unavailable: try again later, with backoff",
            4000 => "ping timeout: no sign of life from the client",
            4001 => "session taken over by a newer connection of this student",
            4003 => {
                "removed from the exam by a teacher (terminated, or access revoked): do not reconnect"
            }
            4008 => "too slow: the outbound queue was full",
            4401 => {
                "token expired: reconnect with a new token (or send `refresh` before it expires)"
            }
            4403 => "token revoked: do not reconnect with it; sign in again",
            4009 => "another session is active for this student (policy reject)",
            4408 => "no message within limits.first_message_timeout of connecting",
            _ => "not an examwatch close code",
        }
    }

    /// `limits.first_message_timeout` passed without a text message.
    pub const FIRST_MESSAGE_TIMEOUT: CloseReason = CloseReason {
        code: 4408,
        reason: "no message received",
    };

    /// The server stops without a drain: the sockets still open when
    /// `server.shutdown_timeout`'s wait begins (a connection that was
    /// joining as the drain ended), a room that ended under a connection.
    pub const GOING_AWAY: CloseReason = CloseReason {
        code: 1001,
        reason: "server shutting down",
    };
    /// A rolling restart (src/drain.rs): this instance closes its sockets
    /// one by one over `server.drain_window`; the client waits a random
    /// share of its own jitter window, then reconnects (to another
    /// instance) as the same session.
    pub const RESTART: CloseReason = CloseReason {
        code: 1012,
        reason: "service restart",
    };
    /// Rebalancing (src/rebalance): this instance holds more than its share
    /// of the fleet's connections and closes some, spread over
    /// `cluster.rebalance_window`; the client reconnects (through the load
    /// balancer, to whichever instance it picks) as the same session,
    /// exactly as after [`RESTART`]: same code, another reason.
    pub const REBALANCE: CloseReason = CloseReason {
        code: 1012,
        reason: "rebalance",
    };
    pub const UNSUPPORTED: CloseReason = CloseReason {
        code: 1003,
        reason: "binary frames are not supported",
    };
    pub const PROTOCOL: CloseReason = CloseReason {
        code: 1002,
        reason: "WebSocket protocol error",
    };
    pub const NOT_UTF8: CloseReason = CloseReason {
        code: 1007,
        reason: "text frame is not valid UTF-8",
    };
    pub const INVALID_DATA: CloseReason = CloseReason {
        code: 1007,
        reason: "too many invalid messages",
    };
    pub const POLICY: CloseReason = CloseReason {
        code: 1008,
        reason: "too many rejected messages",
    };
    pub const TOO_BIG: CloseReason = CloseReason {
        code: 1009,
        reason: "message too big",
    };
    pub const TRY_AGAIN: CloseReason = CloseReason {
        code: 1013,
        reason: "exam state unavailable, try again later",
    };
    pub const PING_TIMEOUT: CloseReason = CloseReason {
        code: 4000,
        reason: "ping timeout",
    };
    pub const TAKEN_OVER: CloseReason = CloseReason {
        code: 4001,
        reason: "session taken over by a new connection",
    };
    /// A teacher ended this student's exam (`terminate`).
    pub const TERMINATED: CloseReason = CloseReason {
        code: 4003,
        reason: "terminated",
    };
    /// The student was removed from the access list (`deny`).
    pub const ACCESS_REVOKED: CloseReason = CloseReason {
        code: 4003,
        reason: "access revoked",
    };
    pub const TOO_SLOW: CloseReason = CloseReason {
        code: 4008,
        reason: "too slow",
    };
    /// The connection's token expired (past `auth.expiry_grace`) without
    /// a `refresh` (docs/PROTOCOL.md 1.2.3).
    pub const TOKEN_EXPIRED: CloseReason = CloseReason {
        code: 4401,
        reason: "token expired",
    };
    /// A revocation covers the connection's token (`POST /v1/revocations`).
    pub const TOKEN_REVOKED: CloseReason = CloseReason {
        code: 4403,
        reason: "token revoked",
    };
    pub const SECOND_SESSION: CloseReason = CloseReason {
        code: 4009,
        reason: "another session is active for this student",
    };
}

/// How the room reaches one connection.
#[derive(Clone)]
pub struct Outbox {
    pub tx: queue::QueueTx,
    pub kick: Kick,
    /// What kind of member it is, for the slow-consumer metric.
    pub lane: crate::metrics::SlowPath,
}

/// A student as the token describes them.
#[derive(Debug, Clone)]
pub struct StudentId {
    pub id: String,
    pub name: String,
}

/// A student connection asking to join its exam's room.
pub struct StudentJoin {
    pub conn: ConnId,
    pub who: StudentId,
    pub session_id: String,
    /// The `session_id` of this client's previous connection, if it says
    /// so: a reconnect over a not-yet-detected dead socket is then the same
    /// session, not a second one.
    pub previous_session: Option<String>,
    /// The connection proved it is the client of the HTTP session it names
    /// as `previous_session` (its handover token, PROTOCOL.md 8.4): that
    /// session is taken over at once, without a liveness probe.
    pub handover: bool,
    /// The peer's IP and user agent, compared with the student's previous
    /// session (`ip_changed`, `device_changed`: room/signals.rs).
    pub peer_ip: Option<String>,
    pub user_agent: Option<String>,
    /// With several instances: where the student's previous session came
    /// from, whichever instance it was on (the latest admitted one, read
    /// by the handshake from Redis); `None` when Redis had none.
    pub previous_client: Option<signals::Client>,
    /// What the cluster-wide session lease said (always `Alone` in memory).
    pub cluster: ClusterJoin,
    /// With several instances: the student's answered questions, from the
    /// database (another instance may have stored them).
    pub answered: Option<std::collections::HashSet<String>>,
    /// The exam's clock as the handshake read it (store/control.rs `Gate`).
    pub exam_clock: Option<(crate::control::ExamClock, i64)>,
    /// With several instances: the student's control record, read by the
    /// handshake from the database because Redis said it changed within
    /// the last seconds (its event may not have reached this room yet).
    pub control: Option<Box<crate::control::StudentControl>>,
    pub out: Outbox,
    /// A fresh (empty) message-rate bucket, kept as the student's if they
    /// have none yet (`room/rate.rs`).
    pub rate: rate::LazyBucket,
    /// Answered once joined (or refused) with the bucket this connection
    /// must use: the student's own, shared by all their connections.
    /// Dropped if the room ended.
    pub reply: oneshot::Sender<rate::LazyBucket>,
}

/// What a connection asks of its room.
pub enum RoomCmd {
    /// Boxed: by far the largest command, and one per connection.
    JoinStudent(Box<StudentJoin>),
    JoinTeacher {
        conn: ConnId,
        out: Outbox,
        /// `Some` resumes after this seq instead of sending a snapshot.
        last_seq: Option<Seq>,
        reply: oneshot::Sender<()>,
    },
    Message {
        conn: ConnId,
        r#ref: Option<Label>,
        msg: ClientMsg,
        /// When the connection read the frame: where the fan-out latency
        /// (`examwatch_fanout_seconds`) starts, so the wait in the room's
        /// inbox is in it.
        received: std::time::Instant,
        /// The sender's user id and display name (for announcements).
        user: Arc<str>,
        from: Arc<str>,
    },
    /// The writer committed a student's answer or submission.
    Stored {
        conn: ConnId,
        student: Arc<str>,
        what: Stored,
        /// False if the database refused the record for its data.
        stored: bool,
        r#ref: Option<Label>,
    },
    /// A student's event stream (`GET /v1/exams/{id}/me/events`): it gets
    /// what the room sends that student's socket, but it is not a
    /// connection of theirs (no status change, no lease, no second
    /// session). Answered once the opening frames are queued.
    ListenStudent {
        conn: ConnId,
        student: Arc<str>,
        out: Outbox,
        reply: oneshot::Sender<()>,
    },
    /// A student acknowledged an action's frame outside a socket (`POST
    /// /v1/exams/{id}/me/received`): the socket's `received`, with an
    /// answer once the delivery is recorded (`Some(true)`), could not be
    /// (`Some(false)`), or `None` when nothing is owed under this id.
    Received {
        student: Arc<str>,
        id: String,
        reply: oneshot::Sender<Option<bool>>,
    },
    Leave {
        conn: ConnId,
    },
    /// The peer of this connection answered a liveness probe.
    Alive {
        conn: ConnId,
    },
    /// Students per status, for the REST API.
    Counts {
        reply: oneshot::Sender<crate::protocol::Counts>,
    },
    /// One student's state and clock as this room has them now, for
    /// their record (`GET /v1/exams/{id}/students/{student_id}`).
    Student {
        student: String,
        reply: oneshot::Sender<LiveStudent>,
    },
    /// Every student's state as this room has them now, for the report
    /// (one command for the whole exam, not one per student).
    States {
        reply: oneshot::Sender<HashMap<String, crate::protocol::StudentState>>,
    },
    /// A numbered event from the broker.
    Published(crate::broker::Published),
    /// The broker reconnected: reload the shared state.
    Resync,
    /// The exam's `settings.total_questions`, learnt after the room started
    /// (the exam was created later, or the first read failed).
    ExamTotal(u32),
    /// The reloaded shared state.
    Resynced(crate::broker::SharedState),
    /// Another instance took over this student's session; `quiet`: it
    /// was this HTTP session's own client moving (PROTOCOL.md 8.4), so no
    /// `session_invalidated` goes first.
    KickedElsewhere {
        student: Arc<str>,
        quiet: bool,
    },
    /// Where a student's previous session came from, learnt after their
    /// join (from Redis or the database): compared with where the one that
    /// joined (`now`) comes from.
    PreviousClient {
        student: Arc<str>,
        previous: signals::Client,
        now: signals::Client,
    },
    /// A student's handshake (or ticket) was refused because a `deny` or
    /// `terminate` shut them out: their client was told, so the frames of
    /// those actions they never got count as delivered.
    RefusedAtHandshake {
        student: Arc<str>,
    },
    /// The instants students' clocks started, as the database stored
    /// them (one write of the room's admitted students; empty: it failed).
    ClocksStarted {
        stored: Vec<(String, i64)>,
    },
    /// A student's socket was lost on another instance.
    DroppedElsewhere {
        student: Arc<str>,
    },
    /// This room won the claim to report the network incident it saw
    /// (or could not ask Redis): send the one alert.
    IncidentClaimed {
        students: u32,
    },
    /// This instance claimed a student whose instance died.
    Orphaned {
        student: Arc<str>,
    },
    /// Who holds these remote students' leases (an orphan scan read them).
    LeaseHolders {
        holders: Vec<(Arc<str>, Arc<str>)>,
    },
    /// Every student's answered questions read from the database (one
    /// query for the exam), because the set Redis gave at a join was
    /// smaller than the count the room knew (Redis lost data, or a record
    /// failed). `None` when the read failed.
    AnsweredLoaded {
        answered: Option<std::collections::HashMap<String, std::collections::HashSet<String>>>,
    },
    /// A proctor's irregularity report (`POST .../irregularities`): the
    /// room numbers and publishes it; `reply` gets its seq when known
    /// here (`None` when the cluster numbers it later).
    Report {
        report: Report,
        reply: oneshot::Sender<Option<Seq>>,
    },
    /// An alert was resolved (the row is already updated): tell watchers.
    AlertResolved {
        alert_id: String,
        by: String,
        note: String,
        at: crate::protocol::Timestamp,
    },
    /// Right after this session joined, its lease turned out to be held
    /// elsewhere (a simultaneous claim on another instance won).
    LeaseLost {
        student: Arc<str>,
        session: String,
    },
    /// The exam's clock changed (stored already, at `version`).
    ExamControl {
        clock: crate::control::ExamClock,
        version: i64,
        cause: ControlCause,
    },
    /// One student's control record changed (stored already).
    StudentControl {
        student: Arc<str>,
        control: Box<crate::control::StudentControl>,
        cause: ControlCause,
    },
    /// A proctor action was stored (api/actions.rs): apply it here,
    /// deliver its frames, and publish it as an `action` event.
    Action(Box<ActionApplied>),
    /// A student's `raise_hand` was stored (`None`: it could not be).
    HandStored {
        conn: ConnId,
        student: Arc<str>,
        hand: Option<hands::Hand>,
        r#ref: Option<Label>,
    },
    /// A student's acknowledgement of an action's frame was recorded by
    /// this room (the first in the cluster): tell watchers.
    Delivered {
        student: Arc<str>,
        action_id: Arc<str>,
    },
    /// A `time_up` submission was written; `won` if by this room.
    TimeUp {
        student: Arc<str>,
        won: bool,
        at: i64,
    },
}

/// What a running room knows of one student right now.
#[derive(Debug, Clone)]
pub struct LiveStudent {
    /// `None`: the student never joined this room (nor was loaded into it).
    pub state: Option<crate::protocol::StudentState>,
    /// Their clock, computed by the room's [`control::Control::view`].
    pub view: control::View,
}

/// A proctor action, stored, as the room applies it (and as the `action`
/// event carries it to the other instances).
pub struct ActionApplied {
    pub id: Arc<str>,
    pub kind: crate::protocol::ActionKind,
    /// What watchers see: the action's answer with its actor and payload.
    pub record: serde_json::Value,
    /// The students' control records as written (extend, pause, resume,
    /// terminate, deny, allow, reset_session).
    pub controls: std::collections::BTreeMap<String, crate::control::StudentControl>,
    /// The frame every target gets (`message`, `terminated`,
    /// `session_invalidated`); `None` for an `exam_update`, built per student.
    pub frame: Option<serde_json::Value>,
    /// The students owed the frame.
    pub deliver: Vec<String>,
    /// A hand lowered by it (`lower_hand`, `message` with `reply_to`).
    pub lowered: Option<LoweredHand>,
}

/// A hand a proctor lowered.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoweredHand {
    pub hand_id: String,
    pub student_id: String,
    pub by: String,
    pub at: i64,
}

/// Why the exam's control changed (the `cause` of `exam_update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlCause {
    /// A teacher changed the phase.
    Phase,
    /// A teacher changed the exam's timing.
    Timing,
    /// The phase changed by itself (`opens_at` with `auto_start`, the end).
    Auto,
    /// A student's accommodations changed.
    Accommodation,
    /// Part of a proctor action that failed before it finished (its retry
    /// sends the action's own `exam_update`).
    Action,
}

impl ControlCause {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlCause::Phase => "phase",
            ControlCause::Timing => "timing",
            ControlCause::Auto => "auto",
            ControlCause::Accommodation => "accommodation",
            ControlCause::Action => "action",
        }
    }
}

/// A manual irregularity report, as filed (validated by the API).
#[derive(Debug, Clone)]
pub struct Report {
    pub alert_id: String,
    pub student_id: Option<String>,
    pub category: crate::protocol::AlertCategory,
    pub text: String,
    /// The filer's `sub`.
    pub by: String,
    pub at: crate::protocol::Timestamp,
}

/// The outcome of the cluster-wide session lease for a joining student.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterJoin {
    /// No live session elsewhere (or the same client coming back).
    Alone,
    /// A live session on another instance was taken over.
    TookOverElsewhere,
    /// A live session on another instance holds the lease; refuse (4009).
    RejectedElsewhere,
}

/// What became durable.
#[derive(Debug)]
pub enum Stored {
    Answer { question: String },
    Submission { at: crate::protocol::Timestamp },
}

/// A cloneable handle to one room's inbox.
#[derive(Clone)]
pub struct RoomHandle {
    /// Distinguishes successive rooms of one exam in the registry.
    id: u64,
    tx: mpsc::Sender<RoomCmd>,
}

impl RoomHandle {
    /// Sends a command; waits while the room's inbox is full (backpressure
    /// on the sending connection, never on the room). Errors if it ended.
    pub async fn send(&self, cmd: RoomCmd) -> Result<(), RoomCmd> {
        self.tx.send(cmd).await.map_err(|e| e.0)
    }
}

/// Everything a room needs besides its exam id.
#[derive(Clone)]
pub struct RoomContext {
    pub settings: Arc<ExamSettings>,
    /// `[alerts]`: thresholds of the automatic alerts.
    pub alerts: crate::config::AlertSettings,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// `limits.max_announcement_chars`.
    pub max_announcement_chars: usize,
    /// `events.persist`: `student` events go to the event log. Off, they
    /// are delivered and kept for `resume` but never handed to the writer
    /// (no record, no copy of the payload); every other event still is.
    pub persist_events: bool,
    pub store: crate::store::Store,
    pub writer: crate::store::writer::Writer,
    pub broker: crate::broker::Broker,
    /// This instance's cache of rosters and gates for the handshake: a
    /// room forgets its exam's entry when another instance's action or
    /// phase change arrives, so a student denied, terminated or allowed
    /// elsewhere is judged by the new rule at their next handshake here.
    pub rosters: crate::roster::RosterCache,
    /// Where rooms run: on the shard of their exam id, with the sockets
    /// the accept loop routed there by the same hash.
    pub shards: crate::shard::Shards,
}

/// The live rooms of this instance.
#[derive(Clone)]
pub struct Registry {
    /// A std mutex: held only to look up or insert, never across an await.
    rooms: Arc<Mutex<HashMap<Arc<str>, RoomHandle>>>,
    /// Last seq of exams whose room ended, so a recreated room continues
    /// the numbering and an old `last_seq` can never match a new event.
    ended: Arc<Mutex<HashMap<Arc<str>, Seq>>>,
    next_id: Arc<AtomicU64>,
    ctx: RoomContext,
}

impl Registry {
    pub fn new(ctx: RoomContext) -> Self {
        Self {
            rooms: Arc::default(),
            ended: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            ctx,
        }
    }

    /// The room of `exam_id`, started if there is none.
    pub fn get_or_start(&self, exam_id: &str) -> RoomHandle {
        let mut rooms = self.lock();
        if let Some(h) = rooms.get(exam_id)
            && !h.tx.is_closed()
        {
            return h.clone();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.ctx.settings.room_inbox);
        let handle = RoomHandle { id, tx };
        let exam: Arc<str> = exam_id.into();
        rooms.insert(exam.clone(), handle.clone());
        self.ctx.metrics.rooms.increment(1);
        // Known only if this exam's previous room ended cleanly in this process.
        let first_seq = self
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exam_id)
            .copied();
        let room = actor::Room::new(
            exam,
            id,
            first_seq,
            self.clone(),
            self.ctx.clone(),
            handle.tx.downgrade(),
        );
        // On the exam's shard whoever starts it (a socket there, a REST
        // call, the broker, the scheduler), so it lives with its sockets.
        let shards = self.ctx.shards.clone();
        let shard = shards.for_exam(exam_id);
        self.ctx
            .shards
            .spawn_on(shard, &self.ctx.tracker, async move {
                let _counted = shards.room_here();
                room.run(rx).await;
            });
        handle
    }

    /// Sends a command to an exam's room if it runs here (broker traffic).
    /// Never waits: one busy room must not hold up every other exam's
    /// events. An event a full inbox cannot take shows up as a gap in that
    /// room's seq, which makes it reload the shared state.
    pub async fn route(&self, exam_id: &str, cmd: RoomCmd) {
        let handle = self.lock().get(exam_id).cloned();
        if let Some(handle) = handle
            && handle.tx.try_send(cmd).is_err()
        {
            tracing::warn!(%exam_id, "room inbox full; it will re-synchronise");
        }
    }

    /// Joins `exam_id`'s room as a watcher (a teacher's socket, an SSE
    /// stream): the room queues a snapshot, or the replay after `last_seq`,
    /// on `out` before it answers. Retries when the room ended just as it
    /// was looked up; `None` when shutting down or the room never answered.
    /// The caller owes the room a [`RoomCmd::Leave`] once it is done.
    pub async fn join_watcher(
        &self,
        exam_id: &str,
        conn: ConnId,
        out: &Outbox,
        last_seq: Option<Seq>,
    ) -> Option<RoomHandle> {
        self.join(exam_id, |reply| RoomCmd::JoinTeacher {
            conn,
            out: out.clone(),
            last_seq,
            reply,
        })
        .await
    }

    /// Registers a student's event stream with `exam_id`'s room
    /// ([`RoomCmd::ListenStudent`]): the room queues the student's
    /// `exam_update` and their unacknowledged action frames on `out`
    /// before it answers. Same retries and duty to `Leave` as
    /// [`Registry::join_watcher`].
    pub async fn listen_student(
        &self,
        exam_id: &str,
        conn: ConnId,
        student: &Arc<str>,
        out: &Outbox,
    ) -> Option<RoomHandle> {
        self.join(exam_id, |reply| RoomCmd::ListenStudent {
            conn,
            student: student.clone(),
            out: out.clone(),
            reply,
        })
        .await
    }

    /// Sends the command `make` builds to the exam's room and waits for
    /// its answer, retrying on a fresh room when the one looked up ended.
    async fn join(
        &self,
        exam_id: &str,
        make: impl Fn(oneshot::Sender<()>) -> RoomCmd,
    ) -> Option<RoomHandle> {
        for _ in 0..8 {
            if self.ctx.shutdown.is_cancelled() {
                return None;
            }
            let room = self.get_or_start(exam_id);
            let (reply, joined) = oneshot::channel();
            if room.send(make(reply)).await.is_ok() && joined.await.is_ok() {
                return Some(room);
            }
        }
        None
    }

    /// The room of `exam_id`, if this instance has one running.
    pub fn get(&self, exam_id: &str) -> Option<RoomHandle> {
        self.lock()
            .get(exam_id)
            .filter(|h| !h.tx.is_closed())
            .cloned()
    }

    /// Every room running here.
    pub fn all(&self) -> Vec<RoomHandle> {
        self.lock().values().cloned().collect()
    }

    /// Live counts of an exam whose room is running here.
    pub async fn counts(&self, exam_id: &str) -> Option<crate::protocol::Counts> {
        let handle = self.lock().get(exam_id).cloned()?;
        let (reply, counts) = oneshot::channel();
        handle.send(RoomCmd::Counts { reply }).await.ok()?;
        counts.await.ok()
    }

    /// One student's live state and clock, if the exam's room runs here.
    pub async fn student(&self, exam_id: &str, student: &str) -> Option<LiveStudent> {
        let handle = self.lock().get(exam_id).cloned()?;
        let (reply, live) = oneshot::channel();
        let cmd = RoomCmd::Student {
            student: student.to_owned(),
            reply,
        };
        handle.send(cmd).await.ok()?;
        live.await.ok()
    }

    /// Every student's live state, if the exam's room runs here.
    pub async fn states(
        &self,
        exam_id: &str,
    ) -> Option<HashMap<String, crate::protocol::StudentState>> {
        let handle = self.lock().get(exam_id).cloned()?;
        let (reply, states) = oneshot::channel();
        handle.send(RoomCmd::States { reply }).await.ok()?;
        states.await.ok()
    }

    /// Number of live rooms.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Called by a room that wants to end: removes it only if it is still
    /// the registered room for its exam and nothing is waiting in its inbox.
    fn remove_if_idle(
        &self,
        exam_id: &Arc<str>,
        id: u64,
        last_seq: Seq,
        inbox_empty: impl FnOnce() -> bool,
    ) -> bool {
        let mut rooms = self.lock();
        match rooms.get(exam_id) {
            Some(h) if h.id == id => {
                if !inbox_empty() {
                    return false;
                }
                rooms.remove(exam_id);
                let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
                // Bounded: the database keeps the numbering anyway; this
                // only spares a fresh room a reservation round.
                if ended.len() >= 100_000 {
                    ended.clear();
                }
                ended.insert(exam_id.clone(), last_seq);
                true
            }
            _ => true,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, RoomHandle>> {
        // A poisoned map is still a valid map: rooms never panic while
        // holding it, and recovering beats taking the server down.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }
}
