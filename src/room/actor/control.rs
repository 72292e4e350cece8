//! The room's side of exam control: taking in changes (from the REST API on
//! this instance, or published by another), telling students and watchers,
//! and the timers that run the exam by itself — the automatic start at
//! `opens_at`, the end at `closes_at` (or the latest deadline), and each
//! student's own deadline.
//!
//! What the state is, and what is due when, is decided by the plain state
//! in `room/control.rs`; this file only dispatches. Whatever must happen
//! once in a cluster (a phase change by timer, a `time_up` submission) is
//! decided by the database: every instance's room tries the same
//! conditional write, and only the one that made it publishes the event.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::Utf8Bytes;

use super::{Audience, Room, Timer};
use crate::{
    control::{ExamClock, Finish, Phase, StudentControl},
    protocol::{Cause, ServerMsg, Timestamp},
    room::{ControlCause, RoomCmd, control::Due},
    store::{control::PhaseChange, now_ms},
};

/// After a failed database write of a timer's effect, try again this soon.
const RETRY: Duration = Duration::from_secs(1);

/// Admitted students' starts waiting to be stored (`Room::store_starts`).
#[derive(Debug, Default)]
pub(super) struct Starts {
    pending: Vec<(Arc<str>, i64)>,
    /// A write is out; its answer comes back as `ClocksStarted`.
    in_flight: bool,
}

fn ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(Timestamp::from_unix_ms)
}

/// The longest a timer is armed for: the room's timer wheel takes about
/// two years at most (a longer one panics), and an exam months away is
/// simply looked at again when it fires (it re-arms, see `on_deadline`).
const LONGEST_TIMER: Duration = Duration::from_secs(24 * 3600);

fn until(at: i64, now: i64) -> Duration {
    Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0)).min(LONGEST_TIMER)
}

#[cfg(test)]
mod tests {
    #[test]
    fn timers_are_never_armed_further_than_a_day() {
        let day = super::LONGEST_TIMER;
        assert_eq!(
            super::until(i64::MAX, 0),
            day,
            "a date in 2099 cannot panic the room"
        );
        assert_eq!(
            super::until(5_000, 1_000),
            std::time::Duration::from_secs(4)
        );
        assert_eq!(super::until(1_000, 5_000), std::time::Duration::ZERO);
    }
}

#[derive(serde::Deserialize)]
struct ExamEvent {
    clock: ExamClock,
    version: i64,
    cause: ControlCause,
}

/// A `student` event with `control`, or a `student_control` event: the
/// student's id is in `student.student_id` or in `student_id`.
#[derive(serde::Deserialize)]
struct StudentControlEvent {
    student: Option<StudentIdOnly>,
    student_id: Option<String>,
    control: Option<StudentControl>,
}

#[derive(serde::Deserialize)]
struct StudentIdOnly {
    student_id: String,
}

impl Room {
    /// Loads the exam's clock and its students' records (room start).
    pub(super) async fn load_control(&mut self) -> Result<(), crate::store::StoreError> {
        let store = &self.ctx.store;
        if let Some((clock, version)) = store.exam_clock(&self.exam_id).await? {
            self.control = crate::room::control::Control::new(clock, version);
        }
        for (sid, control) in store.student_controls(&self.exam_id).await? {
            self.control.apply_student(sid.as_str().into(), control);
        }
        self.load_actions().await
    }

    /// After the room's state is loaded: views, timers.
    pub(super) fn control_started(&mut self) {
        let now = now_ms();
        let sids: Vec<Arc<str>> = self.students.keys().cloned().collect();
        for sid in &sids {
            self.refresh_view(sid, now);
            self.arm_deadline(sid, now);
        }
        self.arm_exam_timer(now);
    }

    /// Copies the student's clock into the state watchers see.
    pub(super) fn refresh_view(&mut self, sid: &str, now: i64) {
        let view = self.control.view(sid, now);
        if let Some(st) = self.students.get_mut(sid) {
            st.state.deadline = ts(view.deadline);
            st.state.paused = view.paused;
            st.state.extra_minutes = view.extra_minutes;
        }
    }

    /// The student's `exam_update`, encoded for them.
    pub(super) fn exam_update_for(&self, sid: &str, cause: &str, now: i64) -> Utf8Bytes {
        let view = self.control.view(sid, now);
        let exam = &self.control.exam;
        ServerMsg::ExamUpdate {
            seq: None,
            phase: exam.phase,
            opens_at: ts(exam.opens_at),
            closes_at: ts(exam.closes_at),
            server_time: Timestamp::from_unix_ms(now),
            deadline: Some(ts(view.deadline)),
            paused: view.paused,
            extra_minutes: Some(view.extra_minutes),
            cause,
            clock: None,
            version: None,
            id: None,
        }
        .encode()
    }

    /// Sends a student their `exam_update` on every socket and event
    /// stream they have here.
    fn tell_student(&mut self, sid: &str, cause: &str, now: i64) {
        // Looked up through the student, not by scanning every socket: a
        // phase change tells every student, so a scan would be n² per change.
        let mut conns = self.listeners_of(sid);
        conns.extend(self.socket_of(sid).map(|(_, out)| out));
        if conns.is_empty() {
            return;
        }
        let bytes = self.exam_update_for(sid, cause, now);
        for out in conns {
            self.push(&out, bytes.clone());
        }
    }

    /// A change of the exam's clock: from this instance's API or timers
    /// (`local`: publish it), or published by another instance.
    pub(super) fn on_exam_control(
        &mut self,
        clock: ExamClock,
        version: i64,
        cause: ControlCause,
        local: bool,
    ) {
        let before = self.control.phase();
        if self.control.apply_exam(clock, version) {
            self.exam_changed(before, cause);
        }
        // Announced by the instance that made the change, once per version,
        // even if a join here already brought the room up to date with it.
        if local && version > self.published_version {
            self.published_version = version;
            self.publish_exam_update(cause);
        }
    }

    /// The exam's clock just changed: students, timers, the end.
    fn exam_changed(&mut self, before: Phase, cause: ControlCause) {
        let now = now_ms();
        let phase = self.control.phase();
        // Students waiting here when it starts: their clocks start now.
        if before != phase && phase == Phase::InProgress {
            let waiting: Vec<Arc<str>> = self
                .student_conns
                .values()
                .map(|(s, _)| s.clone())
                .collect();
            for sid in waiting {
                self.start_clock(&sid, now);
            }
        }
        let sids: Vec<Arc<str>> = self.students.keys().cloned().collect();
        for sid in &sids {
            self.refresh_view(sid, now);
            self.tell_student(sid, cause.as_str(), now);
            self.arm_deadline(sid, now);
        }
        // Students who only listen here (their socket is elsewhere, or
        // they have none) are told too.
        for sid in self.listening_only() {
            self.tell_student(&sid, cause.as_str(), now);
        }
        self.arm_exam_timer(now);
        if phase == Phase::Ended && before != Phase::Ended {
            // Everyone not done is submitted at the moment it ended.
            let at = self.control.exam.ended_at.unwrap_or(now);
            let mut known: Vec<Arc<str>> = self.students.keys().cloned().collect();
            known.extend(self.control.students.keys().cloned());
            known.sort_unstable();
            known.dedup();
            for sid in known {
                self.finish_once(sid, at);
            }
        }
    }

    fn publish_exam_update(&mut self, cause: ControlCause) {
        let now = now_ms();
        self.publish_event(Audience::Teachers, "exam_update", None, |room, seq| {
            let exam = &room.control.exam;
            Some(
                ServerMsg::ExamUpdate {
                    seq: Some(seq),
                    phase: exam.phase,
                    opens_at: ts(exam.opens_at),
                    closes_at: ts(exam.closes_at),
                    server_time: Timestamp::from_unix_ms(now),
                    deadline: None,
                    paused: exam.is_paused(),
                    extra_minutes: None,
                    cause: cause.as_str(),
                    clock: Some(exam),
                    version: Some(room.control.version),
                    id: None,
                }
                .encode(),
            )
        });
    }

    /// Another instance's `exam_update` event (or our own, back from Redis).
    pub(super) fn exam_update_published(&mut self, event: &str) {
        if let Ok(ev) = serde_json::from_str::<ExamEvent>(event) {
            self.published_version = self.published_version.max(ev.version);
            self.on_exam_control(ev.clock, ev.version, ev.cause, false);
        }
    }

    /// A student event that carries a control record (from any instance).
    pub(super) fn student_control_published(&mut self, event: &str) {
        let Ok(ev) = serde_json::from_str::<StudentControlEvent>(event) else {
            return;
        };
        let id = ev.student.map(|s| s.student_id).or(ev.student_id);
        if let (Some(control), Some(id)) = (ev.control, id) {
            let sid: Arc<str> = id.as_str().into();
            self.take_student_control(&sid, control, ControlCause::Timing.as_str());
        }
    }

    /// A student's record changed here (the API): apply, tell, publish.
    pub(super) fn on_student_control(
        &mut self,
        sid: Arc<str>,
        control: StudentControl,
        cause: ControlCause,
    ) {
        // Announced even when this room already had it: a room that
        // started just now loaded the stored record, which is this one,
        // and the other instances' rooms still need to hear of it.
        self.take_student_control(&sid, control, cause.as_str());
        self.publish_student_control(&sid, Cause::Timing);
    }

    /// Applies a record if newer; tells the student. True if applied.
    fn take_student_control(
        &mut self,
        sid: &Arc<str>,
        control: StudentControl,
        cause: &str,
    ) -> bool {
        if !self.control.apply_student(sid.clone(), control) {
            return false;
        }
        let now = now_ms();
        self.refresh_view(sid, now);
        self.tell_student(sid, cause, now);
        self.arm_deadline(sid, now);
        self.arm_exam_timer(now);
        true
    }

    /// A student's record as their handshake read it: applied if newer,
    /// with its timers; the welcome that follows tells the student.
    pub(super) fn control_from_join(&mut self, sid: &Arc<str>, control: StudentControl) {
        if self.control.apply_student(sid.clone(), control) {
            let now = now_ms();
            self.refresh_view(sid, now);
            self.arm_deadline(sid, now);
            self.arm_exam_timer(now);
        }
    }

    /// A `student` event with the student's control record in it.
    fn publish_student_control(&mut self, sid: &Arc<str>, cause: Cause) {
        if !self.students.contains_key(sid) {
            // Never seen here, so no state to show: the record alone, so
            // that every instance's room has it before the student joins
            // (their deadline, and the exam's own end, depend on it).
            let sid2 = sid.clone();
            return self.publish_event(
                Audience::Teachers,
                "student_control",
                Some(sid),
                move |room, seq| {
                    Some(
                        ServerMsg::StudentControl {
                            seq,
                            student_id: &sid2,
                            control: room.control.student(&sid2),
                        }
                        .encode(),
                    )
                },
            );
        }
        let sid2 = sid.clone();
        self.publish_event(
            Audience::Teachers,
            "student",
            Some(sid),
            move |room, seq| {
                let st = room.students.get(&sid2)?;
                Some(
                    ServerMsg::Student {
                        seq,
                        student: &st.state,
                        cause,
                        control: Some(room.control.student(&sid2)),
                    }
                    .encode(),
                )
            },
        );
    }

    /// Starts a student's clock if it had not (admission while the exam
    /// runs, or the start while they wait); stores the instant.
    pub(super) fn start_clock(&mut self, sid: &Arc<str>, now: i64) {
        let Some(at) = self.control.admit(sid, now) else {
            return;
        };
        self.starts.pending.push((sid.clone(), at));
        self.store_starts();
        self.refresh_view(sid, now);
        self.arm_deadline(sid, now);
        self.arm_exam_timer(now);
    }

    /// Stores the starts admitted since the last write, in one transaction
    /// (`Store::mark_started`); one write out at a time, so a hall admitted
    /// at once costs a few commits, not one per student (the national
    /// benchmark's database pools were the bound).
    fn store_starts(&mut self) {
        if self.starts.in_flight || self.starts.pending.is_empty() {
            return;
        }
        self.starts.in_flight = true;
        let starts = std::mem::take(&mut self.starts.pending);
        let (store, exam, inbox) = (
            self.ctx.store.clone(),
            self.exam_id.clone(),
            self.inbox.clone(),
        );
        self.ctx.tracker.spawn(async move {
            let mut stored = Vec::new();
            for attempt in 0..5u32 {
                match store.mark_started(&exam, &starts).await {
                    Ok(s) => {
                        stored = s;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, students = starts.len(), attempt, "cannot store students' start; retrying");
                        tokio::time::sleep(RETRY * (attempt + 1)).await;
                    }
                }
            }
            if let Some(inbox) = inbox.upgrade() {
                let _ = inbox.send(RoomCmd::ClocksStarted { stored }).await;
            }
        });
    }

    /// A write of starts is done (`stored`: empty if it failed for good);
    /// the next one takes what was admitted meanwhile.
    pub(super) fn clocks_started(&mut self, stored: Vec<(String, i64)>) {
        self.starts.in_flight = false;
        for (student, at) in stored {
            self.clock_started(&Arc::from(student), at);
        }
        self.store_starts();
    }

    /// The database stored the instant a student's clock started: the first
    /// writer's, which may be another instance's admission a moment before
    /// ours. Ours is corrected to it, and with per-student timing it is
    /// announced, so every instance's room has the same deadline (a stream
    /// of theirs elsewhere, its time_up). Only stored instants travel.
    pub(super) fn clock_started(&mut self, sid: &Arc<str>, at: i64) {
        let now = now_ms();
        let before = self.control.view(sid, now);
        if self.control.started_at(sid, at) {
            self.refresh_view(sid, now);
            // Told only if it moved their deadline (with fixed timing, or
            // none, the start changes nothing they see).
            if self.control.view(sid, now) != before {
                self.tell_student(sid, ControlCause::Timing.as_str(), now);
            }
            self.arm_deadline(sid, now);
            self.arm_exam_timer(now);
        }
        if self.control.exam.timing == crate::control::Timing::PerStudent {
            self.publish_student_control(sid, Cause::Timing);
        }
    }

    /// (Re)arms the timer of a student's deadline, or removes it.
    pub(super) fn arm_deadline(&mut self, sid: &Arc<str>, now: i64) {
        if let Some(key) = self.deadline_timers.remove(sid) {
            self.timers.try_remove(&key);
        }
        if let Some(at) = self.control.deadline_due(sid, now) {
            let key = self
                .timers
                .insert(Timer::Deadline(sid.clone()), until(at, now));
            self.deadline_timers.insert(sid.clone(), key);
        }
    }

    /// (Re)arms the exam's own timer (automatic start or end).
    pub(super) fn arm_exam_timer(&mut self, now: i64) {
        if let Some(key) = self.exam_timer.take() {
            self.timers.try_remove(&key);
        }
        let at = match self.control.exam_due(now) {
            Some(Due::AutoStart(at) | Due::AutoEnd(at)) => at,
            None => return,
        };
        self.exam_timer = Some(self.timers.insert(Timer::ExamDue, until(at, now)));
    }

    /// A student's deadline timer fired.
    pub(super) fn on_deadline(&mut self, sid: Arc<str>) {
        self.deadline_timers.remove(&sid);
        let now = now_ms();
        if !self.control.time_up(&sid, now) {
            // Moved (an extension, a pause) since it was armed.
            return self.arm_deadline(&sid, now);
        }
        // Their client learns at once, from here; the submission is
        // recorded by whichever instance's write lands first.
        self.refresh_view(&sid, now);
        self.tell_student(&sid, "time_up", now);
        let at = self.control.deadline_due(&sid, now).unwrap_or(now);
        self.finish_once(sid, at);
    }

    /// Ends a student's exam with `time_up` in the database, once in the
    /// cluster; the winner's room is told (`RoomCmd::TimeUp`).
    fn finish_once(&mut self, sid: Arc<str>, at: i64) {
        let c = self.control.student(&sid);
        let submitted = self.students.get(&sid).is_some_and(|st| st.submitted());
        if c.finished.is_some() || submitted {
            return;
        }
        let (store, exam, inbox) = (
            self.ctx.store.clone(),
            self.exam_id.clone(),
            self.inbox.clone(),
        );
        let shutdown = self.ctx.shutdown.clone();
        self.ctx.tracker.spawn(async move {
            let won = loop {
                match store.finish_student(&exam, &sid, Finish::TimeUp, at).await {
                    Ok(won) => break won,
                    // Every instance's room tries; after a restart the
                    // room's start tries again (the deadline is stored).
                    Err(e) if shutdown.is_cancelled() => {
                        tracing::warn!(error = %e, student = %sid, "time_up submission not stored before shutdown");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, student = %sid, "cannot store a time_up submission; retrying");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            };
            if let Some(inbox) = inbox.upgrade() {
                let _ = inbox.send(RoomCmd::TimeUp { student: sid, won, at }).await;
            }
        });
    }

    /// The outcome of `finish_once`: the winner tells watchers.
    pub(super) fn time_up(&mut self, sid: Arc<str>, won: bool, at: i64) {
        if !won {
            return;
        }
        self.control.finish(&sid, Finish::TimeUp, at);
        let outcome = match self.students.get_mut(&sid) {
            Some(st) => {
                st.submit(Timestamp::from_unix_ms(at));
                crate::room::students::Outcome {
                    cause: Some(Cause::TimeUp),
                    ..Default::default()
                }
            }
            None => return,
        };
        self.release_lease(&sid);
        self.apply(&sid, outcome);
    }

    /// The exam's timer fired: start or end it, if this instance wins.
    pub(super) fn on_exam_due(&mut self) {
        self.exam_timer = None;
        let now = now_ms();
        let (to, from) = match self.control.exam_due(now) {
            Some(Due::AutoStart(at)) if at <= now => (Phase::InProgress, Phase::Scheduled),
            Some(Due::AutoEnd(at)) if at <= now => (Phase::Ended, Phase::InProgress),
            _ => return self.arm_exam_timer(now),
        };
        let (store, exam, inbox) = (
            self.ctx.store.clone(),
            self.exam_id.clone(),
            self.inbox.clone(),
        );
        let shutdown = self.ctx.shutdown.clone();
        self.ctx.tracker.spawn(async move {
            let change = loop {
                match store.change_phase(&exam, to, Some(from), now).await {
                    Ok(c) => break c,
                    Err(_) if shutdown.is_cancelled() => return,
                    Err(e) => {
                        tracing::warn!(error = %e, phase = to.as_str(), "cannot change the exam's phase by timer; retrying");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            };
            if let (PhaseChange::Changed(clock, version), Some(inbox)) = (change, inbox.upgrade()) {
                let _ = inbox
                    .send(RoomCmd::ExamControl {
                        clock,
                        version,
                        cause: ControlCause::Auto,
                    })
                    .await;
            }
        });
    }
}
