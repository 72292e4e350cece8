//! How a student's state changes: pure transitions, no I/O and no timers.
//!
//! Each transition returns an [`Outcome`] saying what teachers must be told
//! (a `student` event with its cause, maybe an alert) and whether the idle
//! clock restarts. The room actor turns outcomes into events and timers; the
//! server, not the client, decides `idle` and `disconnected`.

use tokio_util::time::delay_queue;

use crate::protocol::{
    ActivityState, AlertKind, Cause, Counts, ErrorCode, FocusState, Label, Status, StudentState,
    Timestamp,
};

use super::ConnId;

/// One student's entry in the room.
pub struct Student {
    pub state: StudentState,
    /// The connection currently speaking for this student, if any.
    pub conn: Option<ConnId>,
    /// Pending idle timer (while active and not submitted).
    pub idle_timer: Option<delay_queue::Key>,
    /// Pending disconnect-grace timer (while the socket is gone).
    pub grace_timer: Option<delay_queue::Key>,
    /// `session_id` of the current (or last) connection.
    pub session_id: Option<String>,
    /// Which of this student's alerts were sent, to fold repeats.
    pub alert_fold: super::alerts::Folding,
    /// The message-rate bucket every connection of this student shares
    /// (set by the first one to join), so reconnecting does not refill it.
    pub rate: Option<super::rate::LazyBucket>,
    /// Questions with at least one stored answer; `answered` counts them
    /// once any exist (before that, the client's own count is shown).
    pub answered_questions: std::collections::HashSet<String>,
    /// The count (`state.answered`) an exam-wide read of the database
    /// found no more stored answers for: a count the client claimed in
    /// `progress` (never sent as `answer`s), not answers Redis lost. A join
    /// reads the database again only for a count above it.
    pub answers_checked: u32,
    /// A submission is being committed; its ack is on the way. From the
    /// moment it arrived, nothing but another `submit` changes the student.
    pub submitting: bool,
    /// IP/device changes, `answered` going back, heartbeat gaps.
    pub signals: super::signals::Signals,
    /// For a student attached to another instance: the seq of the event
    /// their state here was mirrored from, so state reloaded from Redis
    /// that is older than an event already applied does not replace it.
    pub mirrored_seq: crate::protocol::Seq,
}

/// What a transition asks the room to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub cause: Option<Cause>,
    pub alert: Option<AlertKind>,
    /// The student did something: restart the idle clock.
    pub touched: bool,
}

impl Outcome {
    fn event(cause: Cause) -> Self {
        Self {
            cause: Some(cause),
            ..Self::default()
        }
    }
    fn with_alert(mut self, alert: AlertKind) -> Self {
        self.alert = Some(alert);
        self
    }
    fn touched(mut self) -> Self {
        self.touched = true;
        self
    }
}

impl Student {
    pub fn new(id: String, name: String, conn: ConnId) -> Self {
        Self {
            state: StudentState {
                connected: true,
                connections: 1,
                ..StudentState::fresh(id, name, Status::Active, Timestamp::now())
            },
            conn: Some(conn),
            idle_timer: None,
            grace_timer: None,
            session_id: None,
            alert_fold: Default::default(),
            rate: None,
            answered_questions: Default::default(),
            answers_checked: 0,
            submitting: false,
            signals: Default::default(),
            mirrored_seq: 0,
        }
    }

    /// A student as the database last knew them, with no socket yet.
    pub fn restored(mut state: StudentState, answered: std::collections::HashSet<String>) -> Self {
        state.connected = false;
        if !answered.is_empty() {
            state.answered = answered.len() as u32;
        }
        Self {
            state,
            conn: None,
            idle_timer: None,
            grace_timer: None,
            session_id: None,
            alert_fold: Default::default(),
            rate: None,
            answered_questions: answered,
            answers_checked: 0,
            submitting: false,
            signals: Default::default(),
            mirrored_seq: 0,
        }
    }

    /// An answer was stored (committed). Idempotent per question.
    pub fn answer_stored(&mut self, question: String) -> Outcome {
        let new = self.answered_questions.insert(question);
        let s = &mut self.state;
        s.answered = self.answered_questions.len() as u32;
        if new {
            Outcome::event(Cause::Answered)
        } else {
            Outcome::default()
        }
    }

    /// An answer arrived: it is activity, whatever its fate in storage.
    /// `total` is the exam's `total_questions`, when it has one.
    pub fn answering(&mut self, question: Label, total: Option<u32>) -> Result<Outcome, ErrorCode> {
        self.refuse_if_submitted()?;
        plausible(&question, None, total)?;
        let s = &mut self.state;
        s.current_question = Some(question);
        s.last_activity = Timestamp::now();
        let woke = s.status != Status::Active;
        s.status = Status::Active;
        Ok(if woke {
            Outcome::event(Cause::Active).touched()
        } else {
            Outcome::default().touched()
        })
    }

    pub fn submitted(&self) -> bool {
        self.state.status == Status::Submitted
    }

    /// A new socket for a student who was away (within grace or after).
    pub fn reconnect(&mut self, conn: ConnId, name: String) -> Outcome {
        self.back();
        let s = &mut self.state;
        self.conn = Some(conn);
        s.connected = true;
        s.connections += 1;
        if !name.is_empty() {
            s.name = name;
        }
        if s.status != Status::Submitted {
            s.status = Status::Active;
            s.last_activity = Timestamp::now();
        }
        Outcome::event(Cause::Reconnected).touched()
    }

    /// A second socket replaces a live one (takeover policy).
    pub fn take_over(&mut self, conn: ConnId) -> Outcome {
        self.back();
        self.conn = Some(conn);
        self.state.connections += 1;
        self.state.connected = true;
        Outcome::event(Cause::SecondSession)
            .with_alert(AlertKind::SecondSession)
            .touched()
    }

    /// The student's socket is gone; the grace clock starts (not here).
    pub fn drop_connection(&mut self) {
        self.conn = None;
        self.state.connected = false;
        if !self.submitted() {
            self.state
                .disconnected_since
                .get_or_insert_with(Timestamp::now);
        }
    }

    /// A socket is back: the time away is added to `disconnected_ms`.
    fn back(&mut self) {
        if let Some(since) = self.state.disconnected_since.take() {
            let away = Timestamp::now().unix_ms() - since.unix_ms();
            self.state.disconnected_ms = self
                .state
                .disconnected_ms
                .saturating_add(u64::try_from(away).unwrap_or(0));
        }
    }

    /// The grace period ended without a reconnect.
    pub fn grace_expired(&mut self) -> Outcome {
        if self.state.connected || self.submitted() {
            return Outcome::default();
        }
        self.state.status = Status::Disconnected;
        Outcome::event(Cause::Disconnected).with_alert(AlertKind::Disconnected)
    }

    /// No progress or activity for `exam.idle_after`. Never while the
    /// socket is gone (PROTOCOL.md 4.2: away is not idle, the grace timer
    /// decides): a timer the room armed for a student who then dropped
    /// (any event about them re-arms it) does nothing.
    pub fn idle_expired(&mut self) -> Outcome {
        if self.state.status != Status::Active || !self.state.connected {
            return Outcome::default();
        }
        self.state.status = Status::Idle;
        Outcome::event(Cause::Idle).with_alert(AlertKind::Idle)
    }

    pub fn progress(
        &mut self,
        question: Label,
        answered: u32,
        total: Option<u32>,
    ) -> Result<Outcome, ErrorCode> {
        self.refuse_if_submitted()?;
        plausible(&question, Some(answered), total)?;
        let s = &mut self.state;
        s.current_question = Some(question);
        s.answered = if self.answered_questions.is_empty() {
            answered
        } else {
            self.answered_questions.len() as u32
        };
        s.status = Status::Active;
        s.last_activity = Timestamp::now();
        Ok(Outcome::event(Cause::Progress).touched())
    }

    pub fn activity(&mut self, state: ActivityState) -> Result<Outcome, ErrorCode> {
        self.refuse_if_submitted()?;
        let s = &mut self.state;
        Ok(match (state, s.status) {
            (ActivityState::Idle, Status::Idle) => Outcome::default(),
            (ActivityState::Idle, _) => {
                s.status = Status::Idle;
                Outcome::event(Cause::Idle).with_alert(AlertKind::Idle)
            }
            (ActivityState::Active, before) => {
                s.status = Status::Active;
                s.last_activity = Timestamp::now();
                // Only a change of status is news for teachers; a refreshed
                // `last_activity` rides along with the next event.
                let out = if before == Status::Active {
                    Outcome::default()
                } else {
                    Outcome::event(Cause::Active)
                };
                out.touched()
            }
        })
    }

    pub fn focus(&mut self, state: FocusState) -> Result<Outcome, ErrorCode> {
        self.refuse_if_submitted()?;
        let s = &mut self.state;
        Ok(match state {
            FocusState::Lost if !s.focused => Outcome::default(),
            FocusState::Lost => {
                s.focused = false;
                s.focus_lost_count += 1;
                Outcome::event(Cause::FocusLost).with_alert(AlertKind::FocusLost)
            }
            FocusState::Gained if s.focused => {
                s.last_activity = Timestamp::now();
                if s.status == Status::Idle {
                    s.status = Status::Active;
                    Outcome::event(Cause::Active).touched()
                } else {
                    Outcome::default().touched()
                }
            }
            // Not a loss of focus (the page may still have it): its own alert.
            FocusState::FullscreenExit => {
                Outcome::event(Cause::FullscreenExit).with_alert(AlertKind::FullscreenExit)
            }
            FocusState::Gained => {
                s.focused = true;
                s.status = Status::Active;
                s.last_activity = Timestamp::now();
                Outcome::event(Cause::FocusGained).touched()
            }
        })
    }

    /// A `submit` arrived: from now on nothing but another `submit`
    /// changes the student ([`Self::refuse_if_submitted`]). False when they
    /// have already submitted (the repeat is acked at once, nothing stored).
    pub fn submit_arrived(&mut self) -> bool {
        if self.submitted() {
            return false;
        }
        self.submitting = true;
        true
    }

    /// The database refused a record of this student's. A refused
    /// submission lets the student carry on; a refused answer changes
    /// nothing, and in particular does not reopen a submission still being
    /// committed (which would let messages sent after the `submit` in).
    pub fn store_refused(&mut self, submission: bool) {
        if submission {
            self.submitting = false;
        }
    }

    /// Final: a second submit is acknowledged but changes nothing.
    pub fn submit(&mut self, at: Timestamp) -> Outcome {
        self.submitting = false;
        if self.submitted() {
            return Outcome::default();
        }
        self.back();
        self.state.status = Status::Submitted;
        self.state.submitted_at = Some(at);
        Outcome::event(Cause::Submitted)
    }

    /// Submitted, or a `submit` arrived and is being committed: a message
    /// that arrives behind it (even in the same TCP segment) is refused, so
    /// nothing is ever stored after the submission.
    fn refuse_if_submitted(&self) -> Result<(), ErrorCode> {
        if self.submitted() || self.submitting {
            Err(ErrorCode::AlreadySubmitted)
        } else {
            Ok(())
        }
    }
}

/// With the exam's total known, `answered` above it, or a question that is
/// an index (an integer) above it, cannot be true: `invalid_message`.
/// Text labels (`"q3"`) and other numbers (`1.5`) are names, not indices.
pub fn plausible(
    question: &Label,
    answered: Option<u32>,
    total: Option<u32>,
) -> Result<(), ErrorCode> {
    let Some(total) = total else {
        return Ok(());
    };
    let index_above = match question {
        Label::Number(n) => n.as_u64().is_some_and(|q| q > u64::from(total)),
        Label::Text(_) => false,
    };
    if index_above || answered.is_some_and(|a| a > total) {
        return Err(ErrorCode::InvalidMessage);
    }
    Ok(())
}

/// The exam's `settings.total_questions` (a positive integer), if it has one.
pub fn total_questions(settings: &str) -> Option<u32> {
    let settings: serde_json::Value = serde_json::from_str(settings).ok()?;
    let total = settings.get("total_questions")?.as_u64()?;
    u32::try_from(total).ok().filter(|t| *t > 0)
}

/// Students per status.
pub fn count<'a>(students: impl Iterator<Item = &'a StudentState>) -> Counts {
    let mut c = Counts::default();
    for s in students {
        match s.status {
            Status::Active => c.active += 1,
            Status::Idle => c.idle += 1,
            Status::Submitted => c.submitted += 1,
            Status::Disconnected => c.disconnected += 1,
        }
    }
    c
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submitted_is_final() {
        let mut s = Student::new("s".into(), "S".into(), 1);
        assert_eq!(s.submit(Timestamp::now()).cause, Some(Cause::Submitted));
        assert_eq!(s.submit(Timestamp::now()), Outcome::default());
        assert_eq!(
            s.progress(Label::Number(1.into()), 1, None),
            Err(ErrorCode::AlreadySubmitted)
        );
        s.drop_connection();
        assert_eq!(s.grace_expired(), Outcome::default());
        assert_eq!(s.state.status, Status::Submitted);
    }

    #[test]
    fn idle_then_progress_then_focus() {
        let mut s = Student::new("s".into(), "S".into(), 1);
        assert_eq!(s.idle_expired().alert, Some(AlertKind::Idle));
        assert_eq!(s.idle_expired(), Outcome::default(), "no double idle");
        let o = s.progress(Label::Text("q2".into()), 1, None).unwrap();
        assert!(o.touched && s.state.status == Status::Active);
        assert_eq!(
            s.focus(FocusState::Lost).unwrap().alert,
            Some(AlertKind::FocusLost)
        );
        assert_eq!(s.focus(FocusState::Lost).unwrap(), Outcome::default());
        assert_eq!(s.state.focus_lost_count, 1);
        let o = s.focus(FocusState::FullscreenExit).unwrap();
        assert_eq!(o.alert, Some(AlertKind::FullscreenExit));
        assert_eq!(o.cause, Some(Cause::FullscreenExit));
        assert_eq!(s.state.focus_lost_count, 1, "not a focus loss");
    }

    #[test]
    fn grace_then_reconnect() {
        let mut s = Student::new("s".into(), "S".into(), 1);
        s.drop_connection();
        assert_eq!(s.grace_expired().cause, Some(Cause::Disconnected));
        let o = s.reconnect(2, String::new());
        assert_eq!(o.cause, Some(Cause::Reconnected));
        assert_eq!(s.state.status, Status::Active);
        assert_eq!(s.state.connections, 2);
    }

    #[test]
    fn nothing_changes_the_student_once_a_submit_arrived() {
        let mut s = Student::new("s".into(), "S".into(), 1);
        s.submitting = true; // what the room sets when `submit` arrives
        let q = || Label::Text("q1".into());
        assert_eq!(s.answering(q(), None), Err(ErrorCode::AlreadySubmitted));
        assert_eq!(s.progress(q(), 1, None), Err(ErrorCode::AlreadySubmitted));
        assert_eq!(s.focus(FocusState::Lost), Err(ErrorCode::AlreadySubmitted));
        // A submission the database refused lets the student carry on.
        s.submitting = false;
        assert!(s.progress(q(), 1, None).is_ok());
    }

    #[test]
    fn progress_beyond_the_exams_total_is_refused() {
        let mut s = Student::new("s".into(), "S".into(), 1);
        let n = |i: u64| Label::Number(i.into());
        assert_eq!(
            s.progress(n(1), u32::MAX, Some(5)),
            Err(ErrorCode::InvalidMessage)
        );
        assert_eq!(s.progress(n(6), 0, Some(5)), Err(ErrorCode::InvalidMessage));
        assert_eq!(s.answering(n(6), Some(5)), Err(ErrorCode::InvalidMessage));
        assert_eq!(s.state.answered, 0, "a refused claim changes nothing");
        assert!(s.progress(n(5), 5, Some(5)).is_ok());
        assert_eq!(s.state.answered, 5);
        // Names are not indices; without a total anything goes.
        assert!(s.progress(Label::Text("q99".into()), 2, Some(5)).is_ok());
        assert!(s.answering(n(99), None).is_ok());
        assert!(s.progress(n(99), u32::MAX, None).is_ok());
    }

    #[test]
    fn total_questions_comes_from_the_exams_settings() {
        assert_eq!(total_questions(r#"{"total_questions":5}"#), Some(5));
        assert_eq!(total_questions(r#"{"total_questions":0}"#), None);
        assert_eq!(total_questions(r#"{"total_questions":"5"}"#), None);
        assert_eq!(total_questions(r#"{"total_questions":-1}"#), None);
        assert_eq!(total_questions(r#"{"total_questions":4294967296}"#), None);
        assert_eq!(total_questions(r#"{"calculator":true}"#), None);
        assert_eq!(total_questions("not json"), None);
    }
}
