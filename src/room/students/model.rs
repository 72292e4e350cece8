// The student state machine's model, shared by the property test
// (src/room/students/props.rs, `include!`d after `use super::*`) and the
// fuzz target fuzz/fuzz_targets/student_state.rs (`include!`d after the
// same names are imported from the library): the steps that can happen to
// one student, how the room applies each (room/actor/messages.rs,
// durable.rs), and the invariants every step must keep. Not a module of its
// own, so both can use it with their own imports; it names only public
// items of `room::students` and `protocol`.

#[derive(Debug, Clone)]
enum Step {
    Progress(Label, u32),
    /// An `answer` arrives (stored by the writer, committed later).
    Answer(Label),
    /// One of the answers handed to the writer (this index, modulo how many
    /// wait) commits, or is refused.
    AnswerCommitted(usize, bool),
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
            let q = m.pending.remove(pick % m.pending.len());
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

/// Applies `step` and checks every invariant on what it did; `Err` names
/// the broken one.
fn step_and_check(
    st: &mut Student,
    m: &mut Model,
    step: &Step,
    total: Option<u32>,
) -> Result<(), String> {
    macro_rules! ensure_eq {
        ($left:expr, $right:expr, $($why:tt)+) => {
            if $left != $right {
                return Err(format!("{:?} != {:?}: {}", $left, $right, format!($($why)+)));
            }
        };
    }
    macro_rules! ensure {
        ($cond:expr, $($why:tt)+) => {
            if !$cond {
                return Err(format!($($why)+));
            }
        };
    }
    let before = st.state.clone();
    let was_submitted = st.submitted();
    let connected_before = st.conn.is_some();
    let refusal = run(st, m, step, total);
    let s = &st.state;
    let at = format!("{step:?}");

    // `answered`: each question once; before any stored answer,
    // the last accepted claim, within the exam's total.
    if m.stored.is_empty() {
        ensure_eq!(s.answered, m.claimed, "{}", at);
        if let Some(t) = total {
            ensure!(s.answered <= t, "{}: {} > total {}", at, s.answered, t);
        }
    } else {
        ensure_eq!(s.answered as usize, m.stored.len(), "{}", at);
    }

    // `submitted` is final; nothing sent after the `submit` is taken.
    if was_submitted {
        ensure_eq!(s.status, Status::Submitted, "{}", at);
        ensure_eq!(s.submitted_at, before.submitted_at, "{}", at);
    }
    ensure_eq!(st.submitted(), s.submitted_at.is_some(), "{}", at);
    let work = matches!(
        step,
        Step::Progress(..) | Step::Answer(_) | Step::Focus(_) | Step::Activity(_)
    );
    if work && connected_before && (was_submitted || m.submit_arrived) {
        ensure_eq!(refusal, Some(ErrorCode::AlreadySubmitted), "{}", at);
        let unchanged = serde_json::to_value(&before).ok() == serde_json::to_value(s).ok();
        ensure!(unchanged, "{}: a refused message changed the state", at);
    }

    // Status: only the documented transitions (4.2).
    ensure!(
        allowed(before.status, s.status, step, connected_before),
        "{}: {:?} -> {:?}",
        at,
        before.status,
        s.status
    );
    if matches!(step, Step::Disconnect | Step::TakeOver) {
        ensure_eq!(
            s.status,
            before.status,
            "{}: a drop or takeover keeps the status",
            at
        );
    }

    // The rest of what a teacher sees.
    ensure_eq!(s.connected, st.conn.is_some(), "{}", at);
    ensure!(s.connections >= before.connections, "{}", at);
    let lost = matches!(step, Step::Focus(FocusState::Lost))
        && before.focused
        && refusal.is_none()
        && connected_before;
    ensure_eq!(
        s.focus_lost_count,
        before.focus_lost_count + u32::from(lost),
        "{}",
        at
    );
    Ok(())
}
