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
    sync::{Arc, atomic::Ordering},
};

use axum::extract::ws::Utf8Bytes;
use tokio::{
    sync::mpsc::{self, error::TrySendError},
    time::Instant,
};
use tokio_util::time::DelayQueue;
use tracing::Instrument;

use super::{
    ConnId, Outbox, Registry, RoomCmd, RoomContext, StudentId, close,
    students::{self, Outcome, Student},
};
use crate::{
    config::SecondSession,
    protocol::{AlertKind, Cause, ClientMsg, ErrorCode, Label, Seq, ServerMsg, Status, Timestamp},
};

enum Timer {
    Idle(Arc<str>),
    Grace(Arc<str>),
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
    /// Last assigned event number.
    seq: Seq,
    students: HashMap<Arc<str>, Student>,
    /// Student connections, by connection, with the student they speak for.
    student_conns: HashMap<ConnId, (Arc<str>, Outbox)>,
    teachers: HashMap<ConnId, Outbox>,
    /// Last `exam.history_size` events, contiguous by seq, for teachers' resume.
    history: VecDeque<(Seq, Utf8Bytes)>,
    /// Recent announcements, for students' resume.
    announcements: VecDeque<(Seq, Utf8Bytes)>,
    timers: DelayQueue<Timer>,
    /// Since when the room has had no members and no pending timers.
    empty_since: Option<Instant>,
}

impl Room {
    pub(super) fn new(
        exam_id: Arc<str>,
        id: u64,
        first_seq: Seq,
        registry: Registry,
        ctx: RoomContext,
    ) -> Self {
        Self {
            exam_id,
            id,
            registry,
            ctx,
            seq: first_seq,
            students: HashMap::new(),
            student_conns: HashMap::new(),
            teachers: HashMap::new(),
            history: VecDeque::new(),
            announcements: VecDeque::new(),
            timers: DelayQueue::new(),
            empty_since: Some(Instant::now()),
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<RoomCmd>) {
        let span = tracing::info_span!("room", exam_id = %self.exam_id);
        async move {
            tracing::debug!("room started");
            let shutdown = self.ctx.shutdown.clone();
            loop {
                let linger = self.empty_since.map(|t| t + self.ctx.settings.room_linger);
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => self.handle(cmd),
                        None => break,
                    },
                    Some(expired) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)) => {
                        self.on_timer(expired.into_inner());
                    }
                    _ = sleep_until_opt(linger), if linger.is_some() => {
                        if self.try_end(&mut rx) {
                            break;
                        }
                    }
                }
                self.update_empty();
            }
            self.ctx.metrics.rooms.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(seq = self.seq, "room ended");
        }
        .instrument(span)
        .await
    }

    fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::JoinStudent {
                conn,
                student,
                session_id,
                previous_session,
                out,
                reply,
            } => {
                self.join_student(conn, student, session_id, previous_session, out);
                let _ = reply.send(());
            }
            RoomCmd::JoinTeacher {
                conn,
                out,
                last_seq,
                reply,
            } => {
                self.teachers.insert(conn, out);
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
                from,
            } => {
                if self.teachers.contains_key(&conn) {
                    self.teacher_message(conn, r#ref, msg, &from);
                } else {
                    self.student_message(conn, r#ref, msg);
                }
            }
            RoomCmd::Leave { conn } => self.leave(conn),
        }
    }

    fn join_student(
        &mut self,
        conn: ConnId,
        who: StudentId,
        session_id: String,
        previous_session: Option<String>,
        out: Outbox,
    ) {
        let sid: Arc<str> = who.id.as_str().into();
        let outcome = match self.students.get_mut(&sid) {
            // The same client coming back while its old socket still looks
            // alive (a silent network drop not yet detected): a reconnect,
            // not a second session, and no alert.
            Some(st)
                if st.conn.is_some()
                    && previous_session.is_some()
                    && previous_session == st.session_id =>
            {
                if let Some((_, old)) = st.conn.and_then(|c| self.student_conns.remove(&c)) {
                    old.kick.kick(close::TAKEN_OVER);
                }
                st.reconnect(conn, who.name)
            }
            Some(st) if st.conn.is_some() => match self.ctx.settings.second_session {
                SecondSession::Reject => {
                    out.kick.kick(close::SECOND_SESSION);
                    self.emit_alert(&sid, AlertKind::SecondSession);
                    return;
                }
                SecondSession::Takeover => {
                    if let Some((_, old)) = st.conn.and_then(|c| self.student_conns.remove(&c)) {
                        let bye = ServerMsg::SessionInvalidated {
                            reason: "second_session",
                        }
                        .encode();
                        let _ = old.tx.try_send(bye);
                        old.kick.kick(close::TAKEN_OVER);
                    }
                    st.take_over(conn)
                }
            },
            Some(st) => {
                if let Some(key) = st.grace_timer.take() {
                    self.timers.try_remove(&key);
                }
                st.reconnect(conn, who.name)
            }
            None => {
                let st = Student::new(who.id, who.name, conn);
                self.students.insert(sid.clone(), st);
                Outcome {
                    cause: Some(Cause::Connected),
                    alert: None,
                    touched: true,
                }
            }
        };
        if let Some(st) = self.students.get_mut(&sid) {
            st.session_id = Some(session_id);
            let welcome = ServerMsg::Welcome {
                session_id: st.session_id.as_deref().unwrap_or_default(),
                server_time: Timestamp::now(),
                exam_id: &self.exam_id,
                student: &st.state,
                last_seq: self.seq,
            }
            .encode();
            self.push(&out, welcome);
        }
        self.student_conns.insert(conn, (sid.clone(), out));
        self.apply(&sid, outcome);
    }

    fn leave(&mut self, conn: ConnId) {
        if self.teachers.remove(&conn).is_some() {
            return;
        }
        let Some((sid, _)) = self.student_conns.remove(&conn) else {
            return;
        };
        let grace = self.ctx.settings.disconnect_grace;
        if let Some(st) = self.students.get_mut(&sid)
            && st.conn == Some(conn)
        {
            st.drop_connection();
            if !st.submitted() {
                st.grace_timer = Some(self.timers.insert(Timer::Grace(sid.clone()), grace));
            }
        }
    }

    fn on_timer(&mut self, timer: Timer) {
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
                let o = st.grace_expired();
                (sid, o)
            }
        };
        self.apply(&sid, outcome);
    }

    fn student_message(&mut self, conn: ConnId, r#ref: Option<Label>, msg: ClientMsg) {
        let Some((sid, out)) = self.student_conns.get(&conn) else {
            return; // left, or taken over: its socket is closing
        };
        let (sid, out) = (sid.clone(), out.clone());
        let Some(st) = self.students.get_mut(&sid) else {
            return;
        };
        let result = match msg {
            ClientMsg::Progress { question, answered } => st.progress(question, answered),
            ClientMsg::Activity { state } => st.activity(state),
            ClientMsg::Focus { state } => st.focus(state),
            ClientMsg::Submit {} => Ok(st.submit()),
            ClientMsg::Heartbeat {} => Ok(Outcome::default()),
            ClientMsg::Resume { last_seq } => {
                let missed: Vec<Utf8Bytes> = self
                    .announcements
                    .iter()
                    .filter(|(s, _)| *s > last_seq)
                    .map(|(_, b)| b.clone())
                    .collect();
                for bytes in missed {
                    self.push(&out, bytes);
                }
                Ok(Outcome::default())
            }
            ClientMsg::Announce { .. } => Err(ErrorCode::Forbidden),
        };
        match result {
            Ok(outcome) => {
                self.apply(&sid, outcome);
                self.ack(&out, r#ref.as_ref());
            }
            Err(code) => self.error(&out, code, r#ref.as_ref()),
        }
    }

    fn teacher_message(&mut self, conn: ConnId, r#ref: Option<Label>, msg: ClientMsg, from: &str) {
        let Some(out) = self.teachers.get(&conn).cloned() else {
            return;
        };
        match msg {
            ClientMsg::Announce { text } => {
                let text = text.trim();
                let max = self.ctx.max_announcement_chars;
                if text.is_empty() || text.chars().count() > max {
                    return self.error(&out, ErrorCode::InvalidAnnouncement, r#ref.as_ref());
                }
                self.seq += 1;
                let seq = self.seq;
                let bytes = ServerMsg::Announcement {
                    seq,
                    text,
                    at: Timestamp::now(),
                    from,
                }
                .encode();
                self.announcements.push_back((seq, bytes.clone()));
                if self.announcements.len() > self.ctx.settings.history_size {
                    self.announcements.pop_front();
                }
                self.emit(seq, bytes, Audience::Everyone);
            }
            ClientMsg::Resume { last_seq } => self.resume_teacher(conn, last_seq),
            ClientMsg::Heartbeat {} => {}
            _ => return self.error(&out, ErrorCode::Forbidden, r#ref.as_ref()),
        }
        self.ack(&out, r#ref.as_ref());
    }

    /// Replays events after `last_seq` from history, or sends a fresh
    /// snapshot when the history no longer reaches back that far (or the
    /// client claims a seq this room never issued).
    fn resume_teacher(&mut self, conn: ConnId, last_seq: Seq) {
        let Some(out) = self.teachers.get(&conn).cloned() else {
            return;
        };
        if last_seq == self.seq {
            return;
        }
        let covered = last_seq < self.seq
            && self
                .history
                .front()
                .is_some_and(|(oldest, _)| *oldest <= last_seq + 1);
        if !covered {
            self.ctx
                .metrics
                .resume_snapshots
                .fetch_add(1, Ordering::Relaxed);
            return self.send_snapshot(conn);
        }
        self.ctx
            .metrics
            .resume_replays
            .fetch_add(1, Ordering::Relaxed);
        let missed: Vec<Utf8Bytes> = self
            .history
            .iter()
            .filter(|(s, _)| *s > last_seq)
            .map(|(_, b)| b.clone())
            .collect();
        for bytes in missed {
            if !self.push(&out, bytes) {
                break;
            }
        }
    }

    fn send_snapshot(&mut self, conn: ConnId) {
        let Some(out) = self.teachers.get(&conn).cloned() else {
            return;
        };
        let mut students: Vec<_> = self.students.values().map(|s| &s.state).collect();
        students.sort_unstable_by(|a, b| a.student_id.cmp(&b.student_id));
        let counts = students::count(students.iter().copied());
        let bytes = ServerMsg::Snapshot {
            seq: self.seq,
            exam_id: &self.exam_id,
            students,
            counts,
        }
        .encode();
        self.push(&out, bytes);
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
        if let Some(cause) = outcome.cause {
            self.seq += 1;
            let bytes = ServerMsg::Student {
                seq: self.seq,
                student: &st.state,
                cause,
            }
            .encode();
            self.emit(self.seq, bytes, Audience::Teachers);
        }
        if let Some(kind) = outcome.alert {
            self.emit_alert(sid, kind);
        }
    }

    fn emit_alert(&mut self, sid: &str, kind: AlertKind) {
        self.seq += 1;
        let bytes = ServerMsg::Alert {
            seq: self.seq,
            student_id: sid,
            kind,
            at: Timestamp::now(),
        }
        .encode();
        self.emit(self.seq, bytes, Audience::Teachers);
    }

    /// Records an encoded event in the history and delivers it.
    fn emit(&mut self, seq: Seq, bytes: Utf8Bytes, audience: Audience) {
        self.history.push_back((seq, bytes.clone()));
        if self.history.len() > self.ctx.settings.history_size {
            self.history.pop_front();
        }
        self.ctx.metrics.events.fetch_add(1, Ordering::Relaxed);
        self.deliver(&bytes, audience);
    }

    /// Fans one encoded event out to local members without ever waiting.
    fn deliver(&mut self, bytes: &Utf8Bytes, audience: Audience) {
        let mut too_slow = Vec::new();
        for (conn, out) in &self.teachers {
            if !try_push(out, bytes.clone()) {
                too_slow.push(*conn);
            }
        }
        for conn in too_slow {
            if let Some(out) = self.teachers.remove(&conn) {
                self.kick_slow(&out);
            }
        }
        if audience == Audience::Everyone {
            for (_, out) in self.student_conns.values() {
                if !try_push(out, bytes.clone()) {
                    out.kick.kick(close::TOO_SLOW);
                }
            }
        }
        let n = self.teachers.len()
            + match audience {
                Audience::Everyone => self.student_conns.len(),
                Audience::Teachers => 0,
            };
        self.ctx
            .metrics
            .frames_out
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Queues one frame for one member; kicks it (4008) if its queue is full.
    fn push(&self, out: &Outbox, bytes: Utf8Bytes) -> bool {
        let ok = try_push(out, bytes);
        if !ok {
            self.kick_slow(out);
        }
        ok
    }

    fn kick_slow(&self, out: &Outbox) {
        if out.kick.reason().is_none() {
            self.ctx.metrics.slow_closes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("closing a connection whose outbound queue is full (4008)");
        }
        out.kick.kick(close::TOO_SLOW);
    }

    fn ack(&self, out: &Outbox, r#ref: Option<&Label>) {
        if let Some(r#ref) = r#ref {
            self.push(out, ServerMsg::Ack { r#ref }.encode());
        }
    }

    fn error(&self, out: &Outbox, code: ErrorCode, r#ref: Option<&Label>) {
        let message = match code {
            ErrorCode::AlreadySubmitted => "the exam is already submitted",
            ErrorCode::InvalidAnnouncement => "announcement text is empty or too long",
            ErrorCode::Forbidden => "this message is not allowed for your role",
            _ => "request refused",
        };
        let bytes = ServerMsg::Error {
            code,
            message: message.into(),
            r#ref,
        }
        .encode();
        self.push(out, bytes);
    }

    fn update_empty(&mut self) {
        let empty = self.teachers.is_empty() && self.student_conns.is_empty();
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

fn try_push(out: &Outbox, bytes: Utf8Bytes) -> bool {
    match out.tx.try_send(bytes) {
        Ok(()) => true,
        // A closed queue means the connection is already gone; its Leave
        // is on the way.
        Err(TrySendError::Closed(_)) => true,
        Err(TrySendError::Full(_)) => false,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
