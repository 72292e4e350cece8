//! The room's durable side: picking up an exam's state from the database
//! when the room starts, and acknowledging answers and submissions only
//! once they are committed.
//!
//! The room never awaits the database while it runs. An answer goes to the
//! batching writer with a completion; a small task waits for the commit and
//! posts `RoomCmd::Stored` back into the room's inbox, where the ack is sent.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{Room, Timer};
use crate::{
    protocol::{ErrorCode, Label, Seq, Status, Timestamp},
    room::{RoomCmd, Stored, close, students::Outcome, students::Student},
    store::{StoreError, now_ms, writer::Record},
};

impl Room {
    /// Loads seq, students, answers and recent history. Students who were
    /// connected when the last room ended get a grace period to come back.
    pub(super) async fn restore(&mut self) -> Result<(), StoreError> {
        let mut attempt = 0;
        let mut state = loop {
            let load = self.ctx.store.load_exam_state(
                &self.exam_id,
                self.ctx.settings.history_size,
                self.ctx.persist_events,
            );
            match tokio::time::timeout(Duration::from_secs(3), load).await {
                Ok(Ok(s)) => break s,
                Ok(Err(e)) if attempt >= 2 => return Err(e),
                Err(_) if attempt >= 2 => {
                    return Err(StoreError::Db(sqlx::Error::PoolTimedOut));
                }
                _ => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        };
        self.seq = self.seq.max(state.last_seq);
        let reservation = state.reserved;
        // The exam's total bounds what `progress` may claim. Read once: an
        // exam's settings do not change once it is created (normally before
        // its students connect). Not fatal: unknown, nothing is bounded.
        self.total_checked = Some(std::time::Instant::now());
        let exam = self.ctx.store.exam(&self.exam_id);
        self.total_questions = match tokio::time::timeout(Duration::from_secs(3), exam).await {
            Ok(Ok(row)) => row.and_then(|e| crate::room::students::total_questions(&e.settings)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the exam's settings; total_questions unknown");
                None
            }
            Err(_) => None,
        };
        // With Redis, the cluster's counter numbers events (floored by what
        // the log holds); the database reservation is for a single instance.
        let single = !self.ctx.broker.clustered();
        if single && state.reserved > self.seq && !self.ended_cleanly_here {
            // The last room did not end cleanly (a crash): seqs up to its
            // reservation may have reached teachers without reaching the
            // log. Never re-issue them, and answer older resumes with a
            // snapshot. (Without `student` events in the log, this is
            // every restart, clean or not: nothing to warn about.)
            if self.ctx.persist_events {
                tracing::warn!(
                    last_stored = state.last_seq,
                    reserved = state.reserved,
                    "previous room ended uncleanly; continuing after its reservation"
                );
            }
            self.seq = state.reserved;
            self.epoch_floor = state.reserved;
        }
        // Reserve the next block before issuing anything: a crash right after
        // this start must not re-issue seqs teachers may already have seen.
        // Through the writer, so it lands after a predecessor's final write.
        if single {
            self.reserved = self.seq + super::SEQ_BLOCK;
            let (done, reserved) = oneshot::channel();
            self.ctx.writer.write(Record::SeqReserved {
                exam_id: self.exam_id.clone(),
                reserved: self.reserved as i64,
                done: Some(done),
            });
            match tokio::time::timeout(Duration::from_secs(5), reserved).await {
                Ok(Ok(true)) => {}
                _ => return Err(StoreError::Db(sqlx::Error::PoolTimedOut)),
            }
        }
        let grace = self.ctx.settings.disconnect_grace;
        let mut answered = state.answered;
        for st in state.students {
            let sid: Arc<str> = st.student_id.as_str().into();
            let questions = answered.remove(st.student_id.as_str()).unwrap_or_default();
            let mut student = Student::restored(st, questions);
            if let Some(at) = state.submitted.remove(sid.as_ref()) {
                student.state.status = Status::Submitted;
                student.state.submitted_at = Some(Timestamp::from_unix_ms(at));
            }
            if matches!(student.state.status, Status::Active | Status::Idle) {
                student.grace_timer = Some(self.timers.insert(Timer::Grace(sid.clone()), grace));
            }
            self.students.insert(sid, Box::new(student));
        }
        // Without `student` events in the log (`events.persist = false`),
        // what is durable still counts: a student with stored answers or a
        // submission comes back with them (answered count, submitted), not
        // as a newcomer who could submit again. So does one who connected
        // but stored nothing (from their session), under their roster name.
        let mut seen = std::mem::take(&mut state.seen);
        for (id, questions) in answered {
            let at = state.submitted.remove(&id);
            let name = seen.remove(&id).flatten();
            self.restore_from_records(id, questions, at, name);
        }
        for (id, at) in state.submitted {
            let name = seen.remove(&id).flatten();
            self.restore_from_records(id, Default::default(), Some(at), name);
        }
        for (id, name) in seen {
            self.restore_from_records(id, Default::default(), None, name);
        }
        self.history = state
            .history
            .into_iter()
            .map(|(seq, payload)| (seq, Utf8Bytes::from(payload)))
            .collect();
        // With Redis, the shared state is the newest: students attached to
        // other instances, the cluster's seq and recent history. Subscribe
        // first, so nothing published meanwhile is missed.
        let mut from_broker = false;
        if let crate::broker::Broker::Redis(redis) = &self.ctx.broker {
            let subscribed = redis.subscribe(self.exam_id.clone());
            if tokio::time::timeout(Duration::from_secs(2), subscribed)
                .await
                .is_err()
            {
                tracing::warn!("Redis subscription pending; serving from the database meanwhile");
            }
            match tokio::time::timeout(Duration::from_secs(2), redis.load(&self.exam_id)).await {
                Ok(Ok(shared)) => {
                    let (lost, floor) = (shared.seq == 0, self.epoch_floor);
                    let before = self.seq;
                    self.apply_shared(shared);
                    if !self.ctx.persist_events {
                        self.persist_off_shared(before, floor, lost, reservation);
                        from_broker = self.seq > before;
                    }
                }
                _ => tracing::warn!("cannot load the exam's shared state from Redis yet"),
            }
        }
        // A history that does not end at the current seq has a hole (lost
        // events): resumes from before here get a snapshot. So does one
        // read from a log that keeps no `student` events, unless Redis's
        // history replaced it.
        let unlogged = !self.ctx.persist_events && !from_broker;
        if unlogged || self.history.back().is_some_and(|(s, _)| *s != self.seq) {
            self.epoch_floor = self.epoch_floor.max(self.seq);
        }
        // Announcements among them stay available to students' `resume`;
        // older ones (before the reloaded history) are gone.
        self.announcements = self
            .history
            .iter()
            .filter(|(_, b)| is_announcement(b))
            .cloned()
            .collect();
        self.announcement_floor = self
            .history
            .front()
            .map_or(self.seq, |(s, _)| s.saturating_sub(1));
        match tokio::time::timeout(Duration::from_secs(3), self.load_control()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(StoreError::Db(sqlx::Error::PoolTimedOut)),
        }
        if !self.students.is_empty() {
            tracing::info!(
                seq = self.seq,
                students = self.students.len(),
                "exam state restored from the database"
            );
        }
        Ok(())
    }

    /// A student known only from their stored answers and submission (no
    /// `student` event in the log): disconnected until they come back.
    /// A cluster room starting without `student` events in its log
    /// (`events.persist = false`), once Redis's shared state is applied.
    /// Redis's history, when it replaced the log's, is whole: its first
    /// event need not follow the log's last (which is a control event), so
    /// teachers resuming within it are replayed, not snapshotted. And when
    /// Redis knows nothing of the exam (it lost its data), the log cannot
    /// say how far the cluster numbered: the reservation the origins kept
    /// ahead does, so no seq a teacher may have seen is issued again.
    fn persist_off_shared(&mut self, before: Seq, floor: Seq, lost: bool, reservation: Seq) {
        if self.seq > before {
            self.epoch_floor = floor;
        }
        if lost && reservation > self.seq {
            tracing::warn!(
                reserved = reservation,
                "Redis has no state for this exam; numbering continues after the reservation"
            );
            self.seq = reservation;
            self.epoch_floor = reservation;
        }
    }

    fn restore_from_records(
        &mut self,
        id: String,
        questions: std::collections::HashSet<String>,
        submitted_at: Option<i64>,
        roster_name: Option<String>,
    ) {
        let sid: Arc<str> = id.as_str().into();
        if self.students.contains_key(&sid) {
            return;
        }
        // Their roster name if they have one (else their id); their token's
        // name comes back with their next connection.
        let name = roster_name.unwrap_or_else(|| id.clone());
        let mut state = Student::new(id, name, 0).state;
        state.status = Status::Disconnected;
        state.connections = 0;
        if let Some(at) = submitted_at {
            state.status = Status::Submitted;
            state.submitted_at = Some(Timestamp::from_unix_ms(at));
        }
        self.students
            .insert(sid, Box::new(Student::restored(state, questions)));
    }

    /// The room could not load its state: every pending join is told to
    /// come back later (1013) rather than starting from a wrong seq.
    pub(super) fn refuse_all(&mut self, rx: &mut mpsc::Receiver<RoomCmd>) {
        self.registry
            .remove_if_idle(&self.exam_id, self.id, self.seq, || true);
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                RoomCmd::JoinStudent(join) => {
                    let crate::room::StudentJoin {
                        out, reply, rate, ..
                    } = *join;
                    out.kick.kick(close::TRY_AGAIN);
                    let _ = reply.send(rate);
                }
                RoomCmd::JoinTeacher { out, reply, .. } => {
                    out.kick.kick(close::TRY_AGAIN);
                    let _ = reply.send(());
                }
                _ => {}
            }
        }
    }

    /// Hands an answer to the writer; the ack comes with `Stored`.
    pub(super) fn store_answer(
        &mut self,
        conn: crate::room::ConnId,
        sid: &Arc<str>,
        id: Label,
        question: Label,
        value: serde_json::Value,
        r#ref: Option<Label>,
    ) -> Result<Outcome, ErrorCode> {
        if self.ctx.writer.over_limit() {
            // Refuse rather than queue more: the client keeps it and re-sends.
            return Err(ErrorCode::StorageBusy);
        }
        let st = self.students.get_mut(sid).ok_or(ErrorCode::Forbidden)?;
        let outcome = st.answering(question.clone(), self.total_questions)?;
        let question = question.to_string();
        let (done, committed) = oneshot::channel();
        self.ctx.writer.write(Record::Answer {
            exam_id: self.exam_id.clone(),
            student_id: sid.clone(),
            answer_id: id.to_string(),
            question: question.clone(),
            value: value.to_string(),
            at: now_ms(),
            done,
        });
        self.when_committed(committed, conn, sid, Stored::Answer { question }, r#ref);
        Ok(outcome)
    }

    /// Hands a submission to the writer; the ack comes with `Stored`.
    /// A repeated submit is acked at once.
    pub(super) fn store_submission(
        &mut self,
        conn: crate::room::ConnId,
        sid: &Arc<str>,
        r#ref: Option<Label>,
    ) -> bool {
        let Some(st) = self.students.get_mut(sid) else {
            return false;
        };
        if !st.submit_arrived() {
            return false;
        }
        let at = Timestamp::now();
        let (done, committed) = oneshot::channel();
        self.ctx.writer.write(Record::Submission {
            exam_id: self.exam_id.clone(),
            student_id: sid.clone(),
            at: at.unix_ms(),
            done,
        });
        self.when_committed(committed, conn, sid, Stored::Submission { at }, r#ref);
        true
    }

    fn when_committed(
        &self,
        committed: oneshot::Receiver<bool>,
        conn: crate::room::ConnId,
        sid: &Arc<str>,
        what: Stored,
        r#ref: Option<Label>,
    ) {
        let inbox = self.inbox.clone();
        let student = sid.clone();
        let share = self.answer_sharing();
        // Until the commit is known (and the room told), the connection
        // is mid-commit: a rebalance leaves it alone (src/rebalance).
        let in_flight = self
            .student_conns
            .get(&conn)
            .map(|(_, out)| out.kick.commit_started());
        self.ctx.tracker.spawn(async move {
            let _in_flight = in_flight;
            let Ok(stored) = committed.await else {
                return; // writer stopped before committing: no ack, the client re-sends
            };
            if let (true, Some(share), Stored::Answer { question }) = (stored, &share, &what) {
                // Before the ack: an acked answer counts on every instance.
                share.record(&student, question).await;
            }
            if let Some(inbox) = inbox.upgrade() {
                let _ = inbox
                    .send(RoomCmd::Stored {
                        conn,
                        student,
                        what,
                        stored,
                        r#ref,
                    })
                    .await;
            }
        });
    }

    /// A commit landed: update the student, tell teachers, ack the sender.
    pub(super) fn stored(
        &mut self,
        conn: crate::room::ConnId,
        sid: Arc<str>,
        what: Stored,
        stored: bool,
        r#ref: Option<Label>,
    ) {
        if !stored {
            if let Some(st) = self.students.get_mut(&sid) {
                st.store_refused(matches!(what, Stored::Submission { .. }));
            }
            if let Some((_, out)) = self.student_conns.get(&conn) {
                let out = out.clone();
                self.error(&out, ErrorCode::NotStored, r#ref.as_ref());
            }
            return;
        }
        let Some(st) = self.students.get_mut(&sid) else {
            return;
        };
        let outcome = match what {
            Stored::Answer { question } => st.answer_stored(question),
            Stored::Submission { at } => st.submit(at),
        };
        self.apply(&sid, outcome);
        // Ack on the socket that sent it, if it is still here; otherwise the
        // client re-sends after reconnecting and gets its ack then.
        if let Some((_, out)) = self.student_conns.get(&conn) {
            let out = out.clone();
            self.ack(&out, r#ref.as_ref());
        }
    }
}

/// Whether an encoded event is an announcement (every `ServerMsg` starts
/// with its `type`).
pub(super) fn is_announcement(event: &Utf8Bytes) -> bool {
    event.as_str().starts_with(r#"{"type":"announcement""#)
}
