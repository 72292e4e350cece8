//! Fuzzes the student state machine (`examwatch::room::students`): the
//! input bytes choose an exam total and a sequence of steps (messages,
//! commits landing in any order or refused, drops, reconnects, takeovers,
//! the server submitting, timers firing), applied the way the room applies
//! them; after every step the invariants of the property test hold
//! (`answered` counts each question once, `submitted` is final, only the
//! status changes PROTOCOL.md 4.2 allows). The model and the checks are the
//! property test's own, `src/room/students/model.rs`, included here.
#![no_main]

use std::collections::BTreeSet;

use examwatch::protocol::{ActivityState, Cause, ErrorCode, FocusState, Label, Status, Timestamp};
use examwatch::room::{
    ConnId,
    students::{Outcome, Student},
};
use libfuzzer_sys::{
    arbitrary::{Result as ArbResult, Unstructured},
    fuzz_target,
};

include!("../../src/room/students/model.rs");

/// Few questions, named both ways, so repeats and `3`/`"3"` collide.
fn question(u: &mut Unstructured) -> ArbResult<Label> {
    let n: u64 = u.int_in_range(0..=5)?;
    Ok(match u.int_in_range(0..=2)? {
        0 => Label::Number(n.into()),
        1 => Label::Text(n.to_string()),
        _ => Label::Text(format!("q{}", n % 3)),
    })
}

fn step(u: &mut Unstructured) -> ArbResult<Step> {
    Ok(match u.int_in_range(0..=13)? {
        0 => Step::Progress(question(u)?, u.int_in_range(0..=8)?),
        1 => Step::Answer(question(u)?),
        2 => Step::AnswerCommitted(u.arbitrary()?, u.ratio(9, 10)?),
        3 => Step::Submit,
        4 => Step::SubmitCommitted(u.ratio(7, 10)?),
        5 => Step::ServerSubmits,
        6 => Step::Focus(*u.choose(&[
            FocusState::Lost,
            FocusState::Gained,
            FocusState::FullscreenExit,
        ])?),
        7 => Step::Activity(*u.choose(&[ActivityState::Idle, ActivityState::Active])?),
        8 => Step::Heartbeat,
        9 => Step::Disconnect,
        10 => Step::Reconnect(*u.choose(&["", "Ada"])?),
        11 => Step::TakeOver,
        12 => Step::IdleTimer,
        _ => Step::GraceTimer,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(total) = u.int_in_range(0..=8u32) else {
        return;
    };
    let total = (total > 0).then_some(total);
    let mut st = Student::new("s1".into(), "S".into(), 0);
    let mut m = Model::default();
    for i in 0..200 {
        if u.is_empty() {
            break;
        }
        let Ok(step) = step(&mut u) else {
            break;
        };
        if let Err(e) = step_and_check(&mut st, &mut m, &step, total) {
            panic!("step {i}: {e}");
        }
    }
});
