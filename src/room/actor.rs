//! The room actor: one task per exam, owning every piece of its state, so no
//! lock is ever needed and every event gets its `seq` in one place.
//!
//! Each event is encoded once ([`Room::emit`]), kept in a bounded history for
//! `resume`, and the same bytes are queued for every recipient
//! ([`Room::deliver`]). Timers (idle, disconnect grace) live in one
//! `DelayQueue` polled by the same loop, so a timer firing and a message
//! arriving can never race.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use axum::extract::ws::Utf8Bytes;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::time::DelayQueue;
use tracing::Instrument;

use crate::store::{now_ms, writer::Record};

mod actions;
mod cluster;
mod control;
mod durable;
mod fanout;
mod irregular;
mod join;
mod listen;
mod messages;
mod orphans;
mod watchers;

use super::{
    ConnId, Outbox, Registry, RoomCmd, RoomContext, alerts,
    students::{self, Outcome, Student},
};
use crate::protocol::{AlertKind, Seq, ServerMsg, Status};

/// Seqs reserved in the database per write.
pub(super) const SEQ_BLOCK: Seq = 1000;

enum Timer {
    Idle(Arc<str>),
    Grace(Arc<str>),
    /// The liveness probe of this (old) connection timed out.
    Probe(ConnId),
    /// A student's alert window of this kind ended: send what was folded.
    AlertFlush(Arc<str>, AlertKind),
    /// A student's time may have run out.
    Deadline(Arc<str>),
    /// The exam's automatic start or end may be due.
    ExamDue,
    /// Close this removed student's socket (`terminate`/`deny`) if its
    /// client has not acknowledged the frame that says so by now.
    Evict(ConnId, super::CloseReason),
}

/// A teacher connection and how far its stream is in sync.
struct Teacher {
    out: Outbox,
    /// The room's seq when this connection last received a snapshot or a
    /// replay. If the room has moved on since, live events were delivered
    /// after it, and a replay of older events would arrive out of order.
    synced_at: Seq,
}

/// Who receives an event.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Audience {
    Teachers,
    Everyone,
}

pub(super) struct Room {
    exam_id: Arc<str>,
    /// This room's id in the registry (rooms of one exam can succeed each other).
    id: u64,
    registry: Registry,
    ctx: RoomContext,
    /// The exam-wide answered-set read in flight, if any (`load_answered`).
    answered_load: cluster::AnsweredLoad,
    /// Who holds remote students' leases, for the orphan scan (`orphans.rs`).
    holders: orphans::Holders,
    /// Admitted students' starts not yet stored (`control.rs`).
    starts: control::Starts,
    /// Last assigned event number (with Redis: the latest delivered here,
    /// which may be provisional during an outage).
    seq: Seq,
    /// With Redis: the latest seq received from the cluster.
    confirmed: Seq,
    /// The seq reserved in the database (written ahead of use).
    reserved: Seq,
    /// Events were delivered here under provisional seqs while Redis was
    /// away: local teachers get a snapshot once it is back.
    diverged: bool,
    /// A gap was seen: the shared state is being reloaded, then teachers
    /// get a snapshot.
    resync_pending: bool,
    /// Another instance's event arrived numbered under this room's
    /// provisional seqs (its teachers never saw it) and a reload for it is
    /// in flight; `late_again`: more arrived meanwhile, reload once more.
    late_loading: bool,
    late_again: bool,
    /// A reload of the shared state is out (`start_resync`): at most one
    /// per room, so a burst of gaps cannot pile reloads onto Redis;
    /// `resync_again`: it was asked for again meanwhile, so the answer of
    /// the one out may predate what asked, and one more follows it.
    resync_loading: bool,
    resync_again: bool,
    /// The previous room of this exam ended cleanly in this process, so its
    /// last seq is known exactly even if its final write is still queued.
    ended_cleanly_here: bool,
    /// Resumes from before this seq get a snapshot: the previous room ended
    /// uncleanly and events below it may be missing from history and log.
    epoch_floor: Seq,
    /// The exam's `settings.total_questions`, read at start: `progress`
    /// and `answer` may not claim beyond it.
    total_questions: Option<u32>,
    /// When the total was last looked for while unknown (see
    /// `refresh_total`).
    total_checked: Option<std::time::Instant>,
    /// Boxed: the map's slots are mostly a fraction empty (a hash map
    /// grows by doubling), and an empty slot of a 400-byte `Student` is
    /// 400 bytes kept per student for nothing; a box's slot is a pointer.
    students: HashMap<Arc<str>, Box<Student>>,
    /// Student connections, by connection, with the student they speak for.
    student_conns: HashMap<ConnId, (Arc<str>, Outbox)>,
    teachers: HashMap<ConnId, Teacher>,
    /// Students' event streams (`me/events`), by connection, with the
    /// student they listen for: sent what that student's socket is sent
    /// (`listen.rs`), but never counted as the student connecting.
    listeners: HashMap<ConnId, (Arc<str>, Outbox)>,
    /// Joins waiting for a liveness probe of the student's old connection,
    /// keyed by that old connection.
    probes: HashMap<ConnId, (super::StudentJoin, tokio_util::time::delay_queue::Key)>,
    /// Last `exam.history_size` events, contiguous by seq, for teachers' resume.
    history: VecDeque<(Seq, Utf8Bytes)>,
    /// Recent announcements, for students' resume.
    announcements: VecDeque<(Seq, Utf8Bytes)>,
    /// Announcements at or below this seq may be missing from
    /// `announcements` (fallen out, older than the reloaded history, missed
    /// in a cluster gap): a student's `resume` from before it is not
    /// `recovered` (PROTOCOL.md 4.5).
    announcement_floor: Seq,
    timers: DelayQueue<Timer>,
    /// Drops of many students at once (room/incident.rs).
    incidents: super::incident::Incidents,
    /// Since when the room has had no members and no pending timers.
    empty_since: Option<Instant>,
    /// The room's own inbox, weakly: commit waiters post results here
    /// without keeping the room alive.
    inbox: mpsc::WeakSender<RoomCmd>,
    /// The exam's phase and clocks (`room/control.rs`).
    control: super::control::Control,
    deadline_timers: HashMap<Arc<str>, tokio_util::time::delay_queue::Key>,
    exam_timer: Option<tokio_util::time::delay_queue::Key>,
    /// The newest clock version this room has seen announced (published
    /// by it, or received from another instance).
    published_version: i64,
    /// Action frames each student has yet to acknowledge (`room/deliveries.rs`).
    deliveries: super::deliveries::Deliveries,
    /// Raised hands (`room/hands.rs`).
    hands: super::hands::Hands,
    /// When the room took what it is handling now (a command, a timer, a
    /// tick): where `examwatch_fanout_seconds` starts counting.
    step_started: std::time::Instant,
}

impl Room {
    pub(super) fn new(
        exam_id: Arc<str>,
        id: u64,
        first_seq: Option<Seq>,
        registry: Registry,
        ctx: RoomContext,
        inbox: mpsc::WeakSender<RoomCmd>,
    ) -> Self {
        Self {
            exam_id,
            id,
            registry,
            ctx,
            seq: first_seq.unwrap_or(0),
            confirmed: 0,
            ended_cleanly_here: first_seq.is_some(),
            diverged: false,
            resync_pending: false,
            late_loading: false,
            late_again: false,
            resync_loading: false,
            resync_again: false,
            reserved: 0,
            epoch_floor: 0,
            total_questions: None,
            total_checked: None,
            students: HashMap::new(),
            student_conns: HashMap::new(),
            teachers: HashMap::new(),
            listeners: HashMap::new(),
            probes: HashMap::new(),
            history: VecDeque::new(),
            announcements: VecDeque::new(),
            announcement_floor: 0,
            timers: DelayQueue::new(),
            incidents: Default::default(),
            empty_since: Some(Instant::now()),
            inbox,
            control: Default::default(),
            deadline_timers: HashMap::new(),
            exam_timer: None,
            published_version: -1,
            deliveries: Default::default(),
            hands: Default::default(),
            step_started: std::time::Instant::now(),
            answered_load: Default::default(),
            holders: Default::default(),
            starts: Default::default(),
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<RoomCmd>) {
        let span = tracing::info_span!("room", exam_id = %self.exam_id);
        async move {
            tracing::debug!("room started");
            if let Err(e) = self.restore().await {
                tracing::error!(error = %e, "cannot load the exam's state; refusing joins (1013)");
                self.refuse_all(&mut rx);
                self.ctx.metrics.rooms.decrement(1);
                return;
            }
            self.control_started();
            let shutdown = self.ctx.shutdown.clone();
            let clustered = self.ctx.broker.clustered();
            let tick_every =
                (self.ctx.settings.lease_ttl / 3).max(std::time::Duration::from_millis(100));
            let mut tick = tokio::time::interval(tick_every);
            // Orphans are looked for as often as a dead instance's liveness
            // key can vanish, independently of the (slower) lease renewal.
            let orphans_every = match &self.ctx.broker {
                crate::broker::Broker::Redis(r) => r.heartbeat_ttl() / 3,
                crate::broker::Broker::Memory => tick_every,
            }
            .max(std::time::Duration::from_millis(100));
            let mut orphan_tick = tokio::time::interval(orphans_every);
            loop {
                let linger = self.empty_since.map(|t| t + self.ctx.settings.room_linger);
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        // A graceful stop: this instance's leases go with it.
                        self.release_all_leases();
                        break;
                    }
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => self.handle(cmd),
                        None => break,
                    },
                    Some(expired) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)) => {
                        self.on_timer(expired.into_inner());
                    }
                    _ = tick.tick(), if clustered => self.cluster_tick(),
                    _ = orphan_tick.tick(), if clustered => self.orphan_tick(),
                    _ = sleep_until_opt(linger), if linger.is_some() => {
                        if self.try_end(&mut rx) {
                            break;
                        }
                    }
                }
                self.update_empty();
            }
            if let crate::broker::Broker::Redis(redis) = &self.ctx.broker {
                redis.unsubscribe(self.exam_id.clone());
            }
            // A clean end: the next room continues right after our last seq.
            // Not in a cluster whose log keeps no `student` events: there
            // the reservation is the only floor left if Redis loses its
            // counter, and other instances may still be numbering past us.
            if !self.ctx.broker.clustered() || self.ctx.persist_events {
                self.ctx.writer.write(Record::SeqReserved {
                    exam_id: self.exam_id.clone(),
                    reserved: self.seq as i64,
                    done: None,
                });
            }
            self.ctx.metrics.rooms.decrement(1);
            tracing::debug!(seq = self.seq, "room ended");
        }
        .instrument(span)
        .await
    }

    fn handle(&mut self, cmd: RoomCmd) {
        self.step_started = match &cmd {
            RoomCmd::Message { received, .. } => *received,
            _ => std::time::Instant::now(),
        };
        match cmd {
            RoomCmd::JoinStudent(join) => self.join_student(*join),
            RoomCmd::JoinTeacher {
                conn,
                out,
                last_seq,
                reply,
            } => {
                self.teachers.insert(
                    conn,
                    Teacher {
                        out,
                        synced_at: self.seq,
                    },
                );
                match last_seq {
                    Some(l) => self.resume_teacher(conn, l),
                    None => self.send_snapshot(conn),
                }
                let _ = reply.send(());
            }
            RoomCmd::Message {
                conn,
                r#ref,
                msg,
                user,
                from,
                received: _,
            } => {
                if self.teachers.contains_key(&conn) {
                    self.teacher_message(conn, r#ref, msg, &user, &from);
                } else {
                    self.student_message(conn, r#ref, msg);
                }
            }
            RoomCmd::Stored {
                conn,
                student,
                what,
                stored,
                r#ref,
            } => self.stored(conn, student, what, stored, r#ref),
            RoomCmd::ListenStudent {
                conn,
                student,
                out,
                reply,
            } => {
                self.listen_student(conn, student, out);
                let _ = reply.send(());
            }
            RoomCmd::Received { student, id, reply } => {
                self.on_received(&student, &id, Some(reply))
            }
            RoomCmd::Leave { conn } => self.leave(conn),
            RoomCmd::Alive { conn } => self.probe_result(conn, true),
            RoomCmd::Counts { reply } => {
                let _ = reply.send(students::count(self.students.values().map(|s| &s.state)));
            }
            RoomCmd::Student { student, reply } => {
                let _ = reply.send(super::LiveStudent {
                    state: self.students.get(student.as_str()).map(|s| s.state.clone()),
                    view: self.control.view(&student, now_ms()),
                });
            }
            RoomCmd::States { reply } => {
                let states = self.students.iter();
                let _ = reply.send(
                    states
                        .map(|(id, s)| (id.to_string(), s.state.clone()))
                        .collect(),
                );
            }
            RoomCmd::Published(p) => self.on_published(p),
            RoomCmd::Resync => self.start_resync(),
            RoomCmd::ExamTotal(total) => self.total_questions = Some(total),
            RoomCmd::Resynced(state) => self.on_resynced(state),
            RoomCmd::KickedElsewhere { student, quiet } => self.kicked_elsewhere(&student, quiet),
            RoomCmd::DroppedElsewhere { student } => self.dropped_elsewhere(&student),
            RoomCmd::ClocksStarted { stored } => self.clocks_started(stored),
            RoomCmd::RefusedAtHandshake { student } => self.refused_at_handshake(&student),
            RoomCmd::PreviousClient {
                student,
                previous,
                now,
            } => self.previous_client(&student, &previous, &now),
            RoomCmd::IncidentClaimed { students } => self.incident_claimed(students),
            RoomCmd::Orphaned { student } => self.orphaned(student),
            RoomCmd::LeaseHolders { holders } => self.holders.learned(holders),
            RoomCmd::AnsweredLoaded { answered } => self.answered_loaded(answered),
            RoomCmd::ExamControl {
                clock,
                version,
                cause,
            } => self.on_exam_control(clock, version, cause, true),
            RoomCmd::StudentControl {
                student,
                control,
                cause,
            } => self.on_student_control(student, *control, cause),
            RoomCmd::TimeUp { student, won, at } => self.time_up(student, won, at),
            RoomCmd::Report { report, reply } => self.file_report(report, reply),
            RoomCmd::AlertResolved {
                alert_id,
                by,
                note,
                at,
            } => self.alert_resolved(&alert_id, &by, &note, at),
            RoomCmd::Action(applied) => self.on_action(*applied),
            RoomCmd::HandStored {
                conn,
                student,
                hand,
                r#ref,
            } => self.hand_stored(conn, student, hand, r#ref),
            RoomCmd::Delivered { student, action_id } => self.delivered(student, action_id),
            RoomCmd::LeaseLost { student, session } => {
                let current = self
                    .students
                    .get(&student)
                    .and_then(|st| st.session_id.as_deref());
                if current == Some(session.as_str()) {
                    self.kicked_elsewhere(&student, false);
                }
            }
        }
    }

    fn leave(&mut self, conn: ConnId) {
        if self.teachers.remove(&conn).is_some() || self.listeners.remove(&conn).is_some() {
            return;
        }
        let Some((sid, out)) = self.student_conns.remove(&conn) else {
            return;
        };
        // Closed by a rolling restart (src/drain.rs) or a rebalance
        // (src/rebalance): 1012 either way, and the client comes back here
        // or elsewhere within the grace, as the same session. Not a network
        // drop: no incident count, nothing told to the cluster.
        let restart = out.kick.reason().is_some_and(|r| {
            r == crate::room::close::RESTART || r == crate::room::close::REBALANCE
        });
        let grace = self.ctx.settings.disconnect_grace;
        if let Some(st) = self.students.get_mut(&sid)
            && st.conn == Some(conn)
        {
            st.drop_connection();
            // Away is not idle: the grace timer decides what happens next.
            if let Some(key) = st.idle_timer.take() {
                self.timers.try_remove(&key);
            }
            if st.submitted() {
                self.release_lease(&sid);
            } else {
                st.grace_timer = Some(self.timers.insert(Timer::Grace(sid.clone()), grace));
                if !restart {
                    self.student_dropped(&sid);
                }
            }
        }
        // A join was waiting to learn whether this socket is alive: it is not.
        self.probe_result(conn, false);
    }

    fn on_timer(&mut self, timer: Timer) {
        self.step_started = std::time::Instant::now();
        let (sid, outcome) = match timer {
            Timer::Idle(sid) => {
                let Some(st) = self.students.get_mut(&sid) else {
                    return;
                };
                st.idle_timer = None;
                let o = st.idle_expired();
                (sid, o)
            }
            Timer::Grace(sid) => {
                let Some(st) = self.students.get_mut(&sid) else {
                    return;
                };
                st.grace_timer = None;
                let mut o = st.grace_expired();
                // Part of a network incident: reported once for the room.
                if o.alert.is_some() && self.incidents.folds_disconnect(&sid) {
                    o.alert = None;
                }
                if o.cause.is_some() {
                    self.release_lease(&sid);
                }
                (sid, o)
            }
            Timer::Probe(old) => return self.probe_result(old, false),
            Timer::Deadline(sid) => return self.on_deadline(sid),
            Timer::ExamDue => return self.on_exam_due(),
            Timer::Evict(conn, reason) => return self.evict_now(conn, reason),
            Timer::AlertFlush(sid, kind) => {
                let Some(st) = self.students.get_mut(&sid) else {
                    return;
                };
                let now = std::time::Instant::now();
                if let Some(count) = st.alert_fold.flush(&st.state.alerts, kind, now) {
                    self.emit_alert(&sid, kind, count);
                }
                return;
            }
        };
        self.apply(&sid, outcome);
    }

    /// While the exam's total is unknown (no exam yet when the room
    /// started, or its read failed under load), looks for it again at most
    /// every `TOTAL_RECHECK`, off the room's loop; the answer comes back as
    /// `RoomCmd::ExamTotal`. An exam created on this instance tells its
    /// room at once (`api/exams.rs`); this covers the others and failures.
    fn refresh_total(&mut self) {
        const TOTAL_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);
        if self.total_questions.is_some() {
            return;
        }
        let now = std::time::Instant::now();
        if self
            .total_checked
            .is_some_and(|t| now.duration_since(t) < TOTAL_RECHECK)
        {
            return;
        }
        self.total_checked = Some(now);
        let (store, exam_id, inbox) = (
            self.ctx.store.clone(),
            self.exam_id.clone(),
            self.inbox.clone(),
        );
        self.ctx.tracker.spawn(async move {
            let read = tokio::time::timeout(TOTAL_RECHECK, store.exam(&exam_id)).await;
            let total = match read {
                Ok(Ok(Some(exam))) => crate::room::students::total_questions(&exam.settings),
                _ => None,
            };
            if let (Some(total), Some(inbox)) = (total, inbox.upgrade()) {
                let _ = inbox.send(RoomCmd::ExamTotal(total)).await;
            }
        });
    }

    /// Turns a transition's outcome into timers and events.
    fn apply(&mut self, sid: &Arc<str>, outcome: Outcome) {
        let idle_after = self.ctx.settings.idle_after;
        let Some(st) = self.students.get_mut(sid) else {
            return;
        };
        if st.state.status == Status::Active {
            if outcome.touched || st.idle_timer.is_none() {
                if let Some(key) = st.idle_timer.take() {
                    self.timers.try_remove(&key);
                }
                st.idle_timer = Some(self.timers.insert(Timer::Idle(sid.clone()), idle_after));
            }
        } else if let Some(key) = st.idle_timer.take() {
            self.timers.try_remove(&key);
        }
        // Counted before the `student` event, so the state it carries
        // includes this alert even when the alert itself is folded.
        let alert = outcome
            .alert
            .and_then(|kind| Some((kind, self.raise_alert(sid, kind)?)));
        if let Some(cause) = outcome.cause {
            // Encoded straight from the room's state: no copy per event.
            self.publish_event(Audience::Teachers, "student", Some(sid), |room, seq| {
                let st = room.students.get(sid)?;
                Some(
                    ServerMsg::Student {
                        seq,
                        student: &st.state,
                        cause,
                        control: None,
                    }
                    .encode(),
                )
            });
        }
        if let Some((kind, count)) = alert {
            self.emit_alert(sid, kind, count);
        }
    }

    /// Counts an alert for a student and says whether to send it now
    /// (with its count) or whether it was folded (`room/alerts.rs`); the
    /// first fold of a window schedules the flush that reports it.
    fn raise_alert(&mut self, sid: &Arc<str>, kind: AlertKind) -> Option<u32> {
        let window = self.ctx.settings.alert_window;
        let Some(st) = self.students.get_mut(sid) else {
            // Not known here (refused for a session elsewhere): nothing to fold into.
            return Some(1);
        };
        let now = std::time::Instant::now();
        match st.alert_fold.raise(&mut st.state.alerts, kind, now, window) {
            alerts::Raised::Send(count) => Some(count),
            alerts::Raised::Folded { flush_at } => {
                if let Some(at) = flush_at {
                    let at = Instant::from_std(at);
                    self.timers
                        .insert_at(Timer::AlertFlush(sid.clone(), kind), at);
                }
                None
            }
        }
    }

    /// An alert with no `student` event of its own (a refused second session).
    fn alert(&mut self, sid: &Arc<str>, kind: AlertKind) {
        if let Some(count) = self.raise_alert(sid, kind) {
            self.emit_alert(sid, kind, count);
        }
    }

    fn emit_alert(&mut self, sid: &Arc<str>, kind: AlertKind, count: u32) {
        self.send_alert(Some(sid), kind, count, None);
    }

    fn update_empty(&mut self) {
        let empty =
            self.teachers.is_empty() && self.student_conns.is_empty() && self.listeners.is_empty();
        if empty && self.timers.is_empty() {
            self.empty_since.get_or_insert_with(Instant::now);
        } else {
            self.empty_since = None;
        }
    }

    /// Leaves the registry if still empty; joins that raced see their reply
    /// dropped and retry on a new room.
    fn try_end(&mut self, rx: &mut mpsc::Receiver<RoomCmd>) -> bool {
        if !self
            .registry
            .remove_if_idle(&self.exam_id, self.id, self.seq, || rx.is_empty())
        {
            return false;
        }
        rx.close();
        while rx.try_recv().is_ok() {}
        true
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
