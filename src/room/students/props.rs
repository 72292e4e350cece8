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

// `Step`, `Model`, `run` and `step_and_check`, shared with the fuzz target
// fuzz/fuzz_targets/student_state.rs.
include!("model.rs");

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
        4 => (any::<usize>(), prop::bool::weighted(0.9))
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

proptest! {
    #[test]
    fn a_students_state_keeps_its_invariants(
        total in prop_oneof![Just(None), (1u32..8).prop_map(Some)],
        steps in prop::collection::vec(step(), 1..60),
    ) {
        let mut st = Student::new("s1".into(), "S".into(), 0);
        let mut m = Model::default();
        for (i, step) in steps.iter().enumerate() {
            step_and_check(&mut st, &mut m, step, total)
                .map_err(|e| TestCaseError::fail(format!("step {i}: {e}")))?;
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
