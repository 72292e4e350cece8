//! Property tests of the student state machine ([`Student`]): random
//! sequences of what can happen to one student — their messages, the
//! commits of their answers and submission (landing in any order, or
//! refused), drops, reconnects, takeovers, the server submitting for them,
//! and the idle and grace timers firing (also late: a timer the room armed
//! may fire after the state moved on) — driven through the same methods the
//! room calls, in the same way (room/actor/messages.rs, durable.rs).
//!
//! After every step: `answered` counts each question once (`3` and `"3"`
//! are one question, PROTOCOL.md 2.1), and before any stored answer is the
//! last accepted claim, never above the exam's total; `submitted` is final
//! (nothing after it changes the state or un-submits, and nothing sent
//! after the `submit` arrived is taken); and every change of `status` is one
//! PROTOCOL.md 4.2 allows, for the step that made it.
//!
//! Default case count: proptest's (256 sequences of up to 60 steps, well
//! under a second); `PROPTEST_CASES` raises it (`.ci/run`).

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Step {
    Progress(Label, u32),
    /// An `answer` arrives (stored by the writer, committed later).
    Answer(Label),
    /// One of the answers handed to the writer commits, or is refused.
    AnswerCommitted(prop::sample::Index, bool),
    /// A `submit` arrives.
    Submit,
    /// The submission commits, or is refused (`not_stored`).
    SubmitCommitted(bool),
    /// Their time ran out, or a teacher terminated them: the server submits.
    ServerSubmits,
    Focus(FocusState),
    Activity(ActivityState),
    Heartbeat,
    Disconnect,
    Reconnect(&'static str),
    TakeOver,
    IdleTimer,
    GraceTimer,
}

/// Few questions, named both ways, so repeats and `3`/`"3"` collide.
fn question() -> impl Strategy<Value = Label> {
    prop_oneof![
        (0u64..6).prop_map(|n| Label::Number(n.into())),
        (0u64..6).prop_map(|n| Label::Text(n.to_string())),
        (0u64..3).prop_map(|n| Label::Text(format!("q{n}"))),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (question(), prop_oneof![0u32..8, any::<u32>()]).prop_map(|(q, a)| Step::Progress(q, a)),
        4 => question().prop_map(Step::Answer),
        4 => (any::<prop::sample::Index>(), prop::bool::weighted(0.9))
            .prop_map(|(i, ok)| Step::AnswerCommitted(i, ok)),
        1 => Just(Step::Submit),
        1 => prop::bool::weighted(0.7).prop_map(Step::SubmitCommitted),
        1 => Just(Step::ServerSubmits),
        2 => prop::sample::select(vec![FocusState::Lost, FocusState::Gained, FocusState::FullscreenExit])
            .prop_map(Step::Focus),
        2 => prop::sample::select(vec![ActivityState::Idle, ActivityState::Active]).prop_map(Step::Activity),
        1 => Just(Step::Heartbeat),
        2 => Just(Step::Disconnect),
        2 => prop::sample::select(vec!["", "Ada"]).prop_map(Step::Reconnect),
        1 => Just(Step::TakeOver),
        2 => Just(Step::IdleTimer),
        2 => Just(Step::GraceTimer),
    ]
}

/// What the test remembers beside the student.
#[derive(Default)]
struct Model {
    /// Answers handed to the writer, not yet committed.
    pending: Vec<String>,
    /// Questions with a committed answer, as text.
    stored: BTreeSet<String>,
    /// The last `progress.answered` accepted.
    claimed: u32,
    /// A `submit` arrived and was not refused since.
    submit_arrived: bool,
    /// Submissions handed to the writer, not yet committed.
    submissions_pending: u32,
    next_conn: ConnId,
}

/// The status changes PROTOCOL.md 4.2 allows, by what caused them.
fn allowed(from: Status, to: Status, step: &Step, connected_before: bool) -> bool {
    use Status::*;
    if from == to {
        return true;
    }
    match (from, to) {
        // Submitted is final.
        (Submitted, _) => false,
        (_, Submitted) => matches!(step, Step::SubmitCommitted(true) | Step::ServerSubmits),
        // Idle only while connected: the idle clock stops while away.
        (Active, Idle) => {
            connected_before
                && matches!(step, Step::IdleTimer | Step::Activity(ActivityState::Idle))
        }
        (Idle, Active) => matches!(
            step,
            Step::Progress(..)
                | Step::Answer(_)
                | Step::Activity(ActivityState::Active)
                | Step::Focus(FocusState::Gained)
                | Step::Reconnect(_)
        ),
        // Only once the grace period ran out with the socket gone.
        (Active | Idle, Disconnected) => !connected_before && matches!(step, Step::GraceTimer),
        (Disconnected, Active) => matches!(step, Step::Reconnect(_)),
        _ => false,
    }
}

/// Applies one step as the room would; returns the code a refused message
/// got (`None` when accepted, or when the step was not a message).
fn run(st: &mut Student, m: &mut Model, step: &Step, total: Option<u32>) -> Option<ErrorCode> {
    let connected = st.conn.is_some();
    // The room routes messages only from the student's current socket.
    let message = matches!(
        step,
        Step::Progress(..)
            | Step::Answer(_)
            | Step::Submit
            | Step::Focus(_)
            | Step::Activity(_)
            | Step::Heartbeat
    );
    if message && !connected {
        return None;
    }
    let refused = |r: Result<Outcome, ErrorCode>| r.err();
    match step.clone() {
        Step::Progress(q, answered) => {
            let r = st.progress(q, answered, total);
            if r.is_ok() {
                m.claimed = answered;
            }
            refused(r)
        }
        Step::Answer(q) => {
            let text = q.to_string();
            let r = st.answering(q, total);
            if r.is_ok() {
                m.pending.push(text);
            }
            refused(r)
        }
        Step::AnswerCommitted(pick, ok) => {
            if m.pending.is_empty() {
                return None;
            }
            let q = m.pending.remove(pick.index(m.pending.len()));
            if ok {
                let new = !m.stored.contains(&q);
                let outcome = st.answer_stored(q.clone());
                m.stored.insert(q);
                assert_eq!(
                    outcome.cause == Some(Cause::Answered),
                    new,
                    "one event per question"
                );
            } else {
                st.store_refused(false);
            }
            None
        }
        Step::Submit => {
            if st.submit_arrived() {
                m.submit_arrived = true;
                m.submissions_pending += 1;
            }
            None
        }
        Step::SubmitCommitted(ok) => {
            if m.submissions_pending == 0 {
                return None;
            }
            m.submissions_pending -= 1;
            if ok {
                st.submit(Timestamp::now());
            } else {
                st.store_refused(true);
                m.submit_arrived = false;
            }
            None
        }
        Step::ServerSubmits => {
            st.submit(Timestamp::now());
            None
        }
        Step::Focus(f) => refused(st.focus(f)),
        Step::Activity(a) => refused(st.activity(a)),
        Step::Heartbeat => None,
        Step::Disconnect => {
            if connected {
                st.drop_connection();
            }
            None
        }
        Step::Reconnect(name) => {
            if !connected {
                m.next_conn += 1;
                st.reconnect(m.next_conn, name.to_owned());
            }
            None
        }
        Step::TakeOver => {
            if connected {
                m.next_conn += 1;
                st.take_over(m.next_conn);
            }
            None
        }
        Step::IdleTimer => {
            st.idle_expired();
            None
        }
        Step::GraceTimer => {
            st.grace_expired();
            None
        }
    }
}

proptest! {
    #[test]
    fn a_students_state_keeps_its_invariants(
        total in prop_oneof![Just(None), (1u32..8).prop_map(Some)],
        steps in prop::collection::vec(step(), 1..60),
    ) {
        let mut st = Student::new("s1".into(), "S".into(), 0);
        let mut m = Model::default();
        for (i, step) in steps.iter().enumerate() {
            let before = st.state.clone();
            let was_submitted = st.submitted();
            let connected_before = st.conn.is_some();
            let refusal = run(&mut st, &mut m, step, total);
            let s = &st.state;
            let at = format!("step {i} ({step:?})");

            // `answered`: each question once; before any stored answer,
            // the last accepted claim, within the exam's total.
            if m.stored.is_empty() {
                prop_assert_eq!(s.answered, m.claimed, "{}", at);
                if let Some(t) = total {
                    prop_assert!(s.answered <= t, "{}: {} > total {}", at, s.answered, t);
                }
            } else {
                prop_assert_eq!(s.answered as usize, m.stored.len(), "{}", at);
            }

            // `submitted` is final; nothing sent after the `submit` is taken.
            if was_submitted {
                prop_assert_eq!(s.status, Status::Submitted, "{}", at);
                prop_assert_eq!(s.submitted_at, before.submitted_at, "{}", at);
            }
            prop_assert_eq!(st.submitted(), s.submitted_at.is_some(), "{}", at);
            let work = matches!(step, Step::Progress(..) | Step::Answer(_) | Step::Focus(_) | Step::Activity(_));
            if work && connected_before && (was_submitted || m.submit_arrived) {
                prop_assert_eq!(refusal, Some(ErrorCode::AlreadySubmitted), "{}", at);
                let unchanged = serde_json::to_value(&before).ok() == serde_json::to_value(s).ok();
                prop_assert!(unchanged, "{}: a refused message changed the state", at);
            }

            // Status: only the documented transitions (4.2).
            prop_assert!(
                allowed(before.status, s.status, step, connected_before),
                "{}: {:?} -> {:?}", at, before.status, s.status
            );
            if matches!(step, Step::Disconnect | Step::TakeOver) {
                prop_assert_eq!(s.status, before.status, "{}: a drop or takeover keeps the status", at);
            }

            // The rest of what a teacher sees.
            prop_assert_eq!(s.connected, st.conn.is_some(), "{}", at);
            prop_assert!(s.connections >= before.connections, "{}", at);
            let lost = matches!(step, Step::Focus(FocusState::Lost))
                && before.focused && refusal.is_none() && connected_before;
            prop_assert_eq!(s.focus_lost_count, before.focus_lost_count + u32::from(lost), "{}", at);
        }
    }
}

/// The case the properties found: a timer armed while the student was
/// connected, firing once their socket is gone, must not make them idle
/// (4.2: the idle clock does not run while away; the grace timer decides).
#[test]
fn the_idle_timer_does_nothing_while_the_socket_is_gone() {
    let mut st = Student::new("s1".into(), "S".into(), 1);
    st.drop_connection();
    assert_eq!(st.idle_expired(), Outcome::default());
    assert_eq!(st.state.status, Status::Active);
    assert_eq!(st.grace_expired().cause, Some(Cause::Disconnected));
}

/// The other: an answer the database refused while the submission was
/// still being committed must not reopen the student to new work.
#[test]
fn a_refused_answer_does_not_reopen_a_submission_being_committed() {
    let mut st = Student::new("s1".into(), "S".into(), 1);
    let q = || Label::Text("q1".into());
    assert!(st.answering(q(), None).is_ok());
    assert!(st.submit_arrived());
    st.store_refused(false); // the answer's commit failed
    assert_eq!(st.answering(q(), None), Err(ErrorCode::AlreadySubmitted));
    st.store_refused(true); // the submission's commit failed: carry on
    assert!(st.answering(q(), None).is_ok());
}
