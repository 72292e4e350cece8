//! Encode once, fan out bytes: numbering an event, keeping it in the
//! bounded history `resume` replays from, and queueing the same bytes for
//! every recipient. A recipient whose queue is full is closed as a slow
//! consumer (4008), never waited for; replies (ack, error) go to one
//! connection.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

use super::{Audience, Room, SEQ_BLOCK};
use crate::metrics::SlowPath;
use crate::protocol::{ErrorCode, Label, Seq, ServerMsg};
use crate::room::{ConnId, Outbox, close};
use crate::store::{now_ms, writer::Record};

impl Room {
    /// Keeps an event in the bounded history that `resume` replays from.
    pub(super) fn remember(&mut self, seq: Seq, bytes: &Utf8Bytes) {
        self.history.push_back((seq, bytes.clone()));
        if self.history.len() > self.ctx.settings.history_size {
            self.history.pop_front();
        }
    }

    /// Keeps an announcement for students' `resume`.
    pub(super) fn remember_announcement(&mut self, seq: Seq, bytes: &Utf8Bytes) {
        self.announcements.push_back((seq, bytes.clone()));
        if self.announcements.len() > self.ctx.settings.history_size
            && let Some((gone, _)) = self.announcements.pop_front()
        {
            self.announcement_floor = self.announcement_floor.max(gone);
        }
    }

    /// The next event number, reserving more in the database ahead of use
    /// (asynchronously: the reservation runs at least half a block ahead).
    pub(super) fn next_seq(&mut self) -> Seq {
        self.seq += 1;
        self.reserve_ahead();
        self.seq
    }

    /// Keeps the database's reservation at least half a block ahead of
    /// `seq`, so a room started after a crash (or, in a cluster without
    /// `student` events in the log, after Redis lost its counter) never
    /// issues a number that may already have reached a teacher.
    pub(super) fn reserve_ahead(&mut self) {
        if self.seq + SEQ_BLOCK / 2 >= self.reserved {
            self.reserved = self.seq + SEQ_BLOCK;
            self.ctx.writer.write(Record::SeqReserved {
                exam_id: self.exam_id.clone(),
                reserved: self.reserved as i64,
                done: None,
            });
        }
    }

    /// Records an encoded event in the history, delivers it, then hands it
    /// to the database writer: teachers never wait for the disk.
    pub(super) fn emit(
        &mut self,
        seq: Seq,
        bytes: Utf8Bytes,
        audience: Audience,
        kind: &'static str,
        student: Option<&Arc<str>>,
    ) {
        self.remember(seq, &bytes);
        if audience == Audience::Everyone {
            self.remember_announcement(seq, &bytes);
        }
        self.ctx.metrics.events.increment(1);
        self.deliver(&bytes, audience);
        if self.logs(kind, bytes.as_str()) {
            self.ctx.writer.write(Record::Event {
                exam_id: self.exam_id.clone(),
                seq: seq as i64,
                at: now_ms(),
                student_id: student.cloned(),
                kind,
                payload: bytes.clone(),
            });
        }
        self.log_alert(seq, kind, bytes.as_str());
    }

    /// Whether an event of this kind goes to the exam's event log: all of
    /// them, but `student` events only with `events.persist` (the one kind
    /// that comes with every student message; the others are the exam's
    /// control events, rare, and a proctor's record). A `student` event
    /// that carries a teacher's per-student change (`control`: clock,
    /// pause, deny, accommodation) is such a record too and is kept.
    pub(super) fn logs(&self, kind: &str, payload: &str) -> bool {
        self.ctx.persist_events || kind != "student" || payload.contains(r#""control":"#)
    }

    /// Fans one encoded event out to local members without ever waiting.
    pub(super) fn deliver(&mut self, bytes: &Utf8Bytes, audience: Audience) {
        let mut too_slow = Vec::new();
        for (conn, teacher) in &self.teachers {
            if !try_push(&teacher.out, bytes.clone()) {
                too_slow.push(*conn);
            }
        }
        for conn in too_slow {
            if let Some(teacher) = self.teachers.remove(&conn) {
                self.kick_slow(&teacher.out);
            }
        }
        let students = match audience {
            Audience::Everyone => self.push_to_students(bytes),
            Audience::Teachers => 0,
        };
        // Frames actually queued (a refused push is a 4008, counted there),
        // by type once for all of them.
        let queued = (self.teachers.len() + students) as u64;
        let metrics = &self.ctx.metrics;
        metrics.messages_out(bytes.as_str(), queued);
        metrics.frames_out.increment(queued);
        metrics.fanout_seconds.record(self.step_started.elapsed());
    }

    /// An announcement (or an event for everyone) to this room's students;
    /// kicks (4008, counted) those whose queue is full. Returns how many
    /// frames were queued.
    pub(super) fn deliver_to_students(&mut self, bytes: &Utf8Bytes) -> usize {
        let queued = self.push_to_students(bytes);
        self.ctx.metrics.messages_out(bytes.as_str(), queued as u64);
        queued
    }

    /// [`Room::deliver_to_students`] without counting the frames out.
    fn push_to_students(&mut self, bytes: &Utf8Bytes) -> usize {
        let mut queued = 0;
        for (_, out) in self.student_conns.values().chain(self.listeners.values()) {
            if try_push(out, bytes.clone()) {
                queued += 1;
            } else {
                self.kick_slow(out);
            }
        }
        queued
    }

    /// The socket a student has here (their current connection), if any.
    pub(super) fn socket_of(&self, sid: &str) -> Option<(ConnId, Outbox)> {
        let conn = self.students.get(sid)?.conn?;
        self.student_conns
            .get(&conn)
            .map(|(_, out)| (conn, out.clone()))
    }

    /// Queues one frame for one member; kicks it (4008) if its queue is full.
    pub(super) fn push(&self, out: &Outbox, bytes: Utf8Bytes) -> bool {
        self.push_as(out, bytes, out.lane)
    }

    /// [`Room::push`], a full queue counted as a slow close on `path`.
    pub(super) fn push_as(&self, out: &Outbox, bytes: Utf8Bytes, path: SlowPath) -> bool {
        let ok = try_push(out, bytes.clone());
        if ok {
            self.ctx.metrics.messages_out(bytes.as_str(), 1);
        } else {
            self.kick_slow_as(out, path);
        }
        ok
    }

    pub(super) fn kick_slow(&self, out: &Outbox) {
        self.kick_slow_as(out, out.lane);
    }

    /// Closes a slow consumer (4008), counted once, on `path`.
    pub(super) fn kick_slow_as(&self, out: &Outbox, path: SlowPath) {
        if out.kick.reason().is_none() {
            self.ctx.metrics.slow_close(path);
            tracing::warn!(
                path = path.as_str(),
                "closing a connection whose outbound queue is full (4008)"
            );
        }
        out.kick.kick(close::TOO_SLOW);
    }

    pub(super) fn ack(&self, out: &Outbox, r#ref: Option<&Label>) {
        if let Some(r#ref) = r#ref {
            self.push(out, ServerMsg::Ack { r#ref }.encode());
        }
    }

    pub(super) fn error(&self, out: &Outbox, code: ErrorCode, r#ref: Option<&Label>) {
        let message = match code {
            ErrorCode::AlreadySubmitted => "the exam is already submitted",
            ErrorCode::InvalidAnnouncement => "announcement text is empty or too long",
            ErrorCode::NotStored => "the database refused to store this message",
            ErrorCode::StorageBusy => {
                "the database is behind; keep this answer and re-send it later"
            }
            ErrorCode::Forbidden => "this message is not allowed for your role",
            ErrorCode::InvalidMessage => {
                "answered or question is beyond the exam's total_questions"
            }
            ErrorCode::ExamNotStarted => "the exam has not started yet",
            ErrorCode::ExamEnded => "the exam is over for you: nothing more is taken",
            ErrorCode::ExamPaused => "the exam is paused: re-send when it resumes",
            _ => "request refused",
        };
        // Counted like the socket's own refusals (examwatch_bad_messages_total).
        self.ctx.metrics.bad_messages.increment(1);
        let bytes = ServerMsg::Error {
            code,
            message: message.into(),
            r#ref,
            retry_after_ms: None,
        }
        .encode();
        self.push(out, bytes);
    }
}

pub(super) fn try_push(out: &Outbox, bytes: Utf8Bytes) -> bool {
    use crate::room::queue::PushError;
    match out.tx.try_send(bytes) {
        Ok(()) => true,
        // A closed queue means the connection is already gone; its Leave
        // is on the way.
        Err(PushError::Closed) => true,
        Err(PushError::Full) => false,
    }
}
