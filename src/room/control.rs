//! The room's copy of the exam's control state: the exam's clock and each
//! student's control record, each with the version it was written at.
//!
//! Plain state, no I/O, no timers: every question that depends on time
//! takes `now` (Unix ms), so its tests need no sleeps. The actor
//! ([`super::actor`]) feeds it what the database and the broker say,
//! asks it whether a student may work, what their deadline is, and when
//! its next timers are due, and turns the answers into events and timers.
//!
//! Copies arrive out of order in a cluster (two changes made on two
//! instances race through Redis): a copy older than the one held is
//! ignored, by version, so every instance ends up with the newest.

use std::{collections::HashMap, sync::Arc};

use crate::{
    control::{ExamClock, Finish, Phase, StudentClock, StudentControl, Timing, WorkRefused},
    protocol::ErrorCode,
};

pub struct Control {
    pub exam: ExamClock,
    pub version: i64,
    pub students: HashMap<Arc<str>, StudentControl>,
}

/// What a student's clock looks like right now, for `exam_update`,
/// `welcome` and their state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct View {
    pub deadline: Option<i64>,
    pub paused: bool,
    pub extra_minutes: u32,
}

/// A timer the room should have armed, and when (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    AutoStart(i64),
    AutoEnd(i64),
}

impl Default for Control {
    fn default() -> Self {
        Self::new(
            ExamClock::new(Phase::Draft, Timing::Fixed, None, None, None, false),
            // Not known yet (no such exam when the room started): any
            // stored clock, even at version 0, is newer.
            -1,
        )
    }
}

const NO_CONTROL: &StudentControl = &StudentControl {
    clock: StudentClock {
        extra_minutes: 0,
        multiplier: 1.0,
        extension_ms: 0,
        started_at: None,
        pauses: Vec::new(),
    },
    finished: None,
    denied: false,
    deny_reason: None,
    reset_at: None,
    version: 0,
    applied: Vec::new(),
};

impl Control {
    pub fn new(exam: ExamClock, version: i64) -> Self {
        Self {
            exam,
            version,
            students: HashMap::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.exam.phase
    }

    /// A student's record (the defaults if none was written).
    pub fn student(&self, sid: &str) -> &StudentControl {
        self.students.get(sid).unwrap_or(NO_CONTROL)
    }

    /// Takes a newer copy of the exam's clock; false (ignored) if it is
    /// not newer than the one held.
    pub fn apply_exam(&mut self, clock: ExamClock, version: i64) -> bool {
        if version <= self.version {
            return false;
        }
        self.exam = clock;
        self.version = version;
        true
    }

    /// Takes a newer copy of a student's record. A `finished` or a clock
    /// start already known here is kept: both only ever go from none to
    /// some, and the copy may have been read before this room set them.
    ///
    /// Version 0 is no exception: it is the record no change has written
    /// yet (at most the start of the clock, see below), so a copy of it is
    /// not newer than the room's. In particular the room's own
    /// announcement of a start, back from Redis, is not news, and the
    /// student is not sent an `exam_update` for it.
    pub fn apply_student(&mut self, sid: Arc<str>, mut control: StudentControl) -> bool {
        let current = self.students.get_mut(&sid);
        if let Some(c) = current
            && c.version >= control.version
        {
            // Not newer. But the instant their clock started is written
            // once, without a new version (store `mark_started`): news
            // even in a copy of the same version.
            if c.clock.started_at.is_none() && control.clock.started_at.is_some() {
                c.clock.started_at = control.clock.started_at;
                return true;
            }
            return false;
        }
        let current = self.students.get(&sid);
        if control.finished.is_none() {
            control.finished = current.and_then(|c| c.finished);
        }
        if control.clock.started_at.is_none() {
            control.clock.started_at = current.and_then(|c| c.clock.started_at);
        }
        self.students.insert(sid, control);
        true
    }

    /// Sets the instant the student's clock started to the stored one;
    /// true if that moved it.
    pub fn started_at(&mut self, sid: &Arc<str>, at: i64) -> bool {
        let c = self.students.entry(sid.clone()).or_default();
        let moved = c.clock.started_at != Some(at);
        c.clock.started_at = Some(at);
        moved
    }

    /// The student's exam ended (`time_up`, `terminated`, `submitted`).
    pub fn finish(&mut self, sid: &Arc<str>, finish: Finish, at: i64) {
        let c = self.students.entry(sid.clone()).or_default();
        c.finished.get_or_insert((finish, at));
    }

    /// A student is admitted (or the exam starts while they wait): their
    /// clock starts if it had not. `Some(at)` when it started now, to be
    /// stored.
    pub fn admit(&mut self, sid: &Arc<str>, now: i64) -> Option<i64> {
        let exam = &self.exam;
        let c = self.students.entry(sid.clone()).or_default();
        c.clock.admit(exam, now).then_some(now)
    }

    pub fn view(&self, sid: &str, now: i64) -> View {
        let c = self.student(sid);
        View {
            deadline: c.clock.deadline(&self.exam, now),
            paused: self.exam.is_paused() || c.clock.is_paused(),
            extra_minutes: c.clock.extra_minutes,
        }
    }

    /// May this student send `progress`, `answer` or `submit` now?
    pub fn work(&self, sid: &str, now: i64) -> Result<(), ErrorCode> {
        self.exam.phase.work().map_err(refusal)?;
        let c = self.student(sid);
        if c.denied {
            // Removed (`deny`): their socket is closing (4003).
            return Err(ErrorCode::Forbidden);
        }
        if matches!(c.finished, Some((Finish::TimeUp | Finish::Terminated, _))) {
            return Err(ErrorCode::ExamEnded);
        }
        if c.clock.is_paused() {
            return Err(ErrorCode::ExamPaused);
        }
        if c.clock.started_at.is_some() && c.clock.time_up(&self.exam, now) {
            return Err(ErrorCode::ExamEnded);
        }
        Ok(())
    }

    /// When this student's time runs out, if it is running (started, not
    /// paused, not finished).
    pub fn deadline_due(&self, sid: &str, now: i64) -> Option<i64> {
        let c = self.student(sid);
        if c.finished.is_some()
            || c.clock.started_at.is_none()
            || c.clock.is_paused()
            || self.exam.phase != Phase::InProgress
        {
            return None;
        }
        c.clock.deadline(&self.exam, now)
    }

    /// Whether the student's time is up at `now` and they are not done.
    pub fn time_up(&self, sid: &str, now: i64) -> bool {
        self.deadline_due(sid, now).is_some_and(|d| now >= d)
    }

    /// The exam-wide timer that should be armed.
    pub fn exam_due(&self, now: i64) -> Option<Due> {
        if let Some(at) = self.exam.auto_start_at() {
            return Some(Due::AutoStart(at));
        }
        let unfinished = self
            .students
            .values()
            .filter(|c| c.finished.is_none())
            .map(|c| &c.clock);
        self.exam.auto_end_at(unfinished, now).map(Due::AutoEnd)
    }
}

fn refusal(r: WorkRefused) -> ErrorCode {
    match r {
        WorkRefused::NotStarted => ErrorCode::ExamNotStarted,
        WorkRefused::Paused => ErrorCode::ExamPaused,
        WorkRefused::Ended => ErrorCode::ExamEnded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn running(now: i64, closes_in: i64) -> Control {
        let mut exam = ExamClock::new(
            Phase::Draft,
            Timing::Fixed,
            Some(now),
            Some(now + closes_in),
            None,
            false,
        );
        exam.set_phase(Phase::Scheduled, now).unwrap();
        exam.set_phase(Phase::InProgress, now).unwrap();
        Control::new(exam, 1)
    }

    #[test]
    fn a_copy_of_the_same_version_still_brings_the_start_of_the_clock() {
        let t0 = 1_000_000;
        let mut c = running(t0, 10 * MIN);
        let ada: Arc<str> = "ada".into();
        let mut record = StudentControl {
            version: 3,
            ..Default::default()
        };
        assert!(c.apply_student(ada.clone(), record.clone()));
        assert!(!c.apply_student(ada.clone(), record.clone()), "nothing new");
        record.clock.started_at = Some(t0 + 7);
        assert!(
            c.apply_student(ada.clone(), record.clone()),
            "the start is news"
        );
        assert_eq!(c.student("ada").clock.started_at, Some(t0 + 7));
        record.clock.started_at = Some(t0 + 9);
        assert!(!c.apply_student(ada.clone(), record), "written once");
        assert_eq!(c.student("ada").clock.started_at, Some(t0 + 7));
    }

    #[test]
    fn a_copy_of_the_unchanged_record_is_not_news() {
        // The room admitted ada and stored the start; its announcement of
        // it (version 0: no change has written her record) comes back.
        let t0 = 1_000_000;
        let mut c = running(t0, 10 * MIN);
        let ada: Arc<str> = "ada".into();
        assert_eq!(c.admit(&ada, t0), Some(t0));
        let echo = c.student("ada").clone();
        assert_eq!(echo.version, 0);
        assert!(!c.apply_student(ada.clone(), echo.clone()), "nothing new");
        // Nor does a copy of version 0 move a start the room has.
        let mut other = echo;
        other.clock.started_at = Some(t0 - 5);
        assert!(!c.apply_student(ada.clone(), other.clone()));
        assert_eq!(c.student("ada").clock.started_at, Some(t0));
        // But to a room that has not seen her start, it is news.
        let bob: Arc<str> = "bob".into();
        assert!(c.apply_student(bob.clone(), other.clone()), "unknown here");
        let mut fresh = running(t0, 10 * MIN);
        fresh.finish(&ada, Finish::TimeUp, t0 + 1);
        assert!(fresh.apply_student(ada.clone(), other), "the start is news");
        assert_eq!(fresh.student("ada").clock.started_at, Some(t0 - 5));
        assert_eq!(
            fresh.student("ada").finished,
            Some((Finish::TimeUp, t0 + 1))
        );
    }

    #[test]
    fn work_follows_the_phase_and_the_students_own_clock() {
        let t0 = 1_000_000;
        let mut c = running(t0, 10 * MIN);
        let ada: Arc<str> = "ada".into();
        assert_eq!(c.admit(&ada, t0), Some(t0), "the clock starts at admission");
        assert_eq!(c.admit(&ada, t0 + 5), None, "and only once");
        assert_eq!(c.work("ada", t0 + MIN), Ok(()));
        assert_eq!(c.work("ada", t0 + 10 * MIN), Err(ErrorCode::ExamEnded));
        assert!(c.time_up("ada", t0 + 10 * MIN));
        assert!(!c.time_up("ada", t0 + 10 * MIN - 1));
        c.students
            .get_mut("ada")
            .unwrap()
            .clock
            .pause(t0 + MIN)
            .unwrap();
        assert_eq!(c.work("ada", t0 + 2 * MIN), Err(ErrorCode::ExamPaused));
        assert_eq!(
            c.deadline_due("ada", t0 + 2 * MIN),
            None,
            "no timer while paused"
        );
        assert!(c.view("ada", t0 + 2 * MIN).paused);
        let mut exam = c.exam.clone();
        exam.set_phase(Phase::Ended, t0 + 3 * MIN).unwrap();
        assert!(c.apply_exam(exam.clone(), 2));
        assert!(!c.apply_exam(exam, 2), "the same version again is ignored");
        assert_eq!(c.work("bob", t0 + 3 * MIN), Err(ErrorCode::ExamEnded));
    }

    #[test]
    fn a_scheduled_exam_refuses_work_and_arms_its_start() {
        let mut exam = ExamClock::new(
            Phase::Draft,
            Timing::Fixed,
            Some(5000),
            None,
            Some(MIN),
            true,
        );
        exam.set_phase(Phase::Scheduled, 0).unwrap();
        let c = Control::new(exam, 1);
        assert_eq!(c.work("ada", 10), Err(ErrorCode::ExamNotStarted));
        assert_eq!(c.exam_due(10), Some(Due::AutoStart(5000)));
    }

    #[test]
    fn older_student_copies_are_ignored_and_finish_sticks() {
        let mut c = running(0, 10 * MIN);
        let ada: Arc<str> = "ada".into();
        let newer = StudentControl {
            version: 3,
            ..Default::default()
        };
        assert!(c.apply_student(ada.clone(), newer));
        let older = StudentControl {
            version: 2,
            denied: true,
            ..Default::default()
        };
        assert!(!c.apply_student(ada.clone(), older));
        assert!(!c.student("ada").denied);
        c.finish(&ada, Finish::TimeUp, 42);
        assert!(c.apply_student(
            ada.clone(),
            StudentControl {
                version: 4,
                ..Default::default()
            }
        ));
        assert_eq!(c.student("ada").finished, Some((Finish::TimeUp, 42)));
        // A copy read before the student's clock started keeps the start.
        let exam = c.exam.clone();
        let mut started = StudentControl::default();
        started.clock.admit(&exam, 7);
        let bob: Arc<str> = "bob".into();
        assert!(c.apply_student(bob.clone(), started));
        assert!(c.apply_student(
            bob.clone(),
            StudentControl {
                version: 1,
                ..Default::default()
            }
        ));
        assert_eq!(c.student("bob").clock.started_at, Some(7));
        assert_eq!(c.work("ada", 1), Err(ErrorCode::ExamEnded));
        assert_eq!(c.deadline_due("ada", 1), None);
    }
}
