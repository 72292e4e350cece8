//! Stories with instants: an exam, some students, what the clock says.

use super::*;

/// An arbitrary "09:00" for the stories.
const T: i64 = 1_700_000_000_000;
const S: i64 = 1_000;
const M: i64 = 60_000;

/// The wall-clock time `h:m` of the worked example's day, with 09:00 = `T`.
fn hm(h: i64, m: i64) -> i64 {
    T + ((h - 9) * 60 + m) * M
}

fn exam(
    timing: Timing,
    opens: Option<i64>,
    closes: Option<i64>,
    duration: Option<i64>,
) -> ExamClock {
    ExamClock::new(Phase::Scheduled, timing, opens, closes, duration, false)
}

/// A fixed exam from `T` for 60 s, started at `T`.
fn running_minute() -> ExamClock {
    let mut e = exam(Timing::Fixed, Some(T), Some(T + 60 * S), None);
    e.set_phase(Phase::InProgress, T).unwrap();
    e
}

fn student(extra_minutes: u32, multiplier: f64) -> StudentClock {
    StudentClock {
        extra_minutes,
        multiplier,
        ..StudentClock::default()
    }
}

fn started(exam: &ExamClock, at: i64) -> StudentClock {
    let mut s = StudentClock::default();
    assert!(s.admit(exam, at));
    s
}

#[test]
fn the_design_notes_worked_example() {
    // opens 09:00, closes 10:00; Ada has 15 extra minutes, Bob none. Both
    // wait in the room and start when the exam does. (Minutes, as in the
    // note: extra time and extensions are counted in minutes, and pure
    // arithmetic needs no waiting.)
    let mut e = exam(Timing::Fixed, Some(hm(9, 0)), Some(hm(10, 0)), None);
    let mut bob = StudentClock::default();
    let mut ada = student(15, 1.0);
    assert!(
        !bob.admit(&e, hm(8, 55)),
        "scheduled: the clock does not run yet"
    );
    e.set_phase(Phase::InProgress, hm(9, 0)).unwrap();
    assert!(bob.admit(&e, hm(9, 0)));
    assert!(ada.admit(&e, hm(9, 0)));
    assert_eq!(bob.deadline(&e, hm(9, 1)), Some(hm(10, 0)));
    assert_eq!(ada.deadline(&e, hm(9, 1)), Some(hm(10, 15)));

    // 09:20-09:25 the exam is paused; at 09:22 deadlines read as if the
    // pause ended then.
    e.set_phase(Phase::Paused, hm(9, 20)).unwrap();
    assert_eq!(bob.deadline(&e, hm(9, 22)), Some(hm(10, 2)));
    assert_eq!(ada.deadline(&e, hm(9, 22)), Some(hm(10, 17)));
    e.set_phase(Phase::InProgress, hm(9, 25)).unwrap();
    assert_eq!(bob.deadline(&e, hm(9, 30)), Some(hm(10, 5)));
    assert_eq!(ada.deadline(&e, hm(9, 30)), Some(hm(10, 20)));

    // 09:40 Bob gets `extend 10`.
    let ext = bob.extend(&e, 10, hm(9, 40)).unwrap();
    assert_eq!(
        ext,
        Extended {
            applied_ms: 10 * M,
            clamped: false,
            deadline: hm(10, 15)
        }
    );
    assert_eq!(bob.deadline(&e, hm(9, 41)), Some(hm(10, 15)));

    // 09:50 Ada is paused alone for 3 minutes.
    ada.pause(hm(9, 50)).unwrap();
    assert_eq!(ada.deadline(&e, hm(9, 52)), Some(hm(10, 22)));
    ada.resume(hm(9, 53)).unwrap();
    assert_eq!(ada.deadline(&e, hm(9, 55)), Some(hm(10, 23)));
    assert_eq!(
        bob.deadline(&e, hm(9, 55)),
        Some(hm(10, 15)),
        "Ada's pause is hers"
    );

    // The exam itself runs until the last of them is done.
    assert_eq!(e.auto_end_at([&bob, &ada], hm(9, 55)), Some(hm(10, 23)));
    assert_eq!(e.auto_end_at([&bob], hm(9, 55)), Some(hm(10, 15)));
    assert!(!bob.time_up(&e, hm(10, 15) - 1));
    assert!(bob.time_up(&e, hm(10, 15)));
    assert!(!ada.time_up(&e, hm(10, 15)));
    assert!(ada.time_up(&e, hm(10, 23)));
}

#[test]
fn a_new_exam_clock_has_nothing_started() {
    let e = ExamClock::new(
        Phase::Draft,
        Timing::PerStudent,
        Some(T),
        Some(T + 10 * S),
        Some(5 * S),
        true,
    );
    assert_eq!(
        e,
        ExamClock {
            phase: Phase::Draft,
            timing: Timing::PerStudent,
            opens_at: Some(T),
            closes_at: Some(T + 10 * S),
            duration_ms: Some(5 * S),
            auto_start: true,
            started_at: None,
            ended_at: None,
            pauses: vec![],
        }
    );
    let s = StudentClock::default();
    assert_eq!(
        (s.extra_minutes, s.multiplier, s.extension_ms, s.started_at),
        (0, 1.0, 0, None)
    );
    assert!(s.pauses.is_empty());
    assert_eq!(Timing::default(), Timing::Fixed);
}

#[test]
fn set_phase_follows_the_diagram_and_changes_nothing_when_refused() {
    for from in Phase::ALL {
        for to in Phase::ALL {
            let mut e = exam(Timing::Fixed, None, None, None);
            e.phase = from;
            if from == Phase::Paused {
                e.pauses.push(Span { from: T, to: None });
            }
            let before = e.clone();
            let result = e.set_phase(to, T + S);
            if from.can_become(to) {
                assert_eq!(result, Ok(()), "{from} -> {to}");
                assert_eq!(e.phase, to);
            } else {
                assert_eq!(
                    result,
                    Err(InvalidTransition { from, to }),
                    "{from} -> {to}"
                );
                assert_eq!(e, before, "{from} -> {to} changed the clock");
            }
        }
    }
}

#[test]
fn set_phase_records_start_pauses_and_end() {
    let mut e = exam(Timing::Fixed, None, Some(T + 60 * S), None);
    assert!(!e.is_paused());
    e.set_phase(Phase::InProgress, T).unwrap();
    assert_eq!(e.started_at, Some(T));
    assert!(!e.is_paused());

    e.set_phase(Phase::Paused, T + 10 * S).unwrap();
    assert!(e.is_paused());
    assert_eq!(
        e.pauses,
        vec![Span {
            from: T + 10 * S,
            to: None
        }]
    );
    e.set_phase(Phase::InProgress, T + 12 * S).unwrap();
    assert!(!e.is_paused());
    assert_eq!(e.started_at, Some(T), "a resume is not a start");
    assert_eq!(
        e.pauses,
        vec![Span {
            from: T + 10 * S,
            to: Some(T + 12 * S)
        }]
    );
    assert_eq!(e.ended_at, None);

    // Ending from paused closes the pause at the end.
    e.set_phase(Phase::Paused, T + 20 * S).unwrap();
    e.set_phase(Phase::Ended, T + 25 * S).unwrap();
    assert_eq!(e.ended_at, Some(T + 25 * S));
    assert_eq!(
        e.pauses[1],
        Span {
            from: T + 20 * S,
            to: Some(T + 25 * S)
        }
    );
    e.set_phase(Phase::Grading, T + 30 * S).unwrap();
    assert_eq!(
        e.ended_at,
        Some(T + 25 * S),
        "grading does not move the end"
    );
    assert_eq!(e.started_at, Some(T));
}

#[test]
fn ending_a_running_exam_opens_no_pause_and_a_clock_stepping_back_makes_no_negative_span() {
    let mut e = running_minute();
    e.set_phase(Phase::Ended, T + 5 * S).unwrap();
    assert!(e.pauses.is_empty());

    let mut e = running_minute();
    e.set_phase(Phase::Paused, T + 10 * S).unwrap();
    e.set_phase(Phase::InProgress, T + 9 * S).unwrap();
    assert_eq!(
        e.pauses,
        vec![Span {
            from: T + 10 * S,
            to: Some(T + 10 * S)
        }]
    );

    let mut s = started(&e, T);
    s.pause(T + 20 * S).unwrap();
    s.resume(T + 19 * S).unwrap();
    assert_eq!(
        s.pauses,
        vec![Span {
            from: T + 20 * S,
            to: Some(T + 20 * S)
        }]
    );
}

#[test]
fn pauses_are_bounded() {
    let mut e = running_minute();
    let closed = |i: i64| Span {
        from: T + 2 * i,
        to: Some(T + 2 * i + 1),
    };
    e.pauses = (0..MAX_PAUSES as i64 - 1).map(closed).collect();
    assert_eq!(e.set_phase(Phase::Paused, T + 50 * S), Ok(()));
    e.set_phase(Phase::InProgress, T + 51 * S).unwrap();
    assert_eq!(e.pauses.len(), MAX_PAUSES);
    let before = e.clone();
    assert_eq!(
        e.set_phase(Phase::Paused, T + 52 * S),
        Err(InvalidTransition {
            from: Phase::InProgress,
            to: Phase::Paused
        })
    );
    assert_eq!(e, before);
    assert_eq!(
        e.set_phase(Phase::Ended, T + 53 * S),
        Ok(()),
        "ending still works"
    );

    let mut s = StudentClock {
        pauses: (0..MAX_PAUSES as i64 - 1).map(closed).collect(),
        ..StudentClock::default()
    };
    assert_eq!(s.pause(T + 50 * S), Ok(()));
    s.resume(T + 51 * S).unwrap();
    assert_eq!(s.pause(T + 52 * S), Err(AlreadyInState::TooManyPauses));
    assert_eq!(s.pauses.len(), MAX_PAUSES);
    assert!(!s.is_paused());
}

#[test]
fn own_pause_and_resume_are_not_repeated() {
    let mut s = StudentClock::default();
    assert!(!s.is_paused());
    assert_eq!(s.resume(T), Err(AlreadyInState::Running));
    assert!(s.pauses.is_empty());
    s.pause(T).unwrap();
    assert!(s.is_paused());
    assert_eq!(s.pause(T + S), Err(AlreadyInState::Paused));
    assert_eq!(s.pauses, vec![Span { from: T, to: None }]);
    s.resume(T + 2 * S).unwrap();
    assert!(!s.is_paused());
    assert_eq!(s.resume(T + 3 * S), Err(AlreadyInState::Running));
    assert_eq!(
        s.pauses,
        vec![Span {
            from: T,
            to: Some(T + 2 * S)
        }]
    );
}

#[test]
fn admission_starts_the_clock_once_and_only_while_it_runs() {
    let mut e = exam(Timing::PerStudent, None, None, Some(60 * S));
    for phase in [Phase::Draft, Phase::Scheduled] {
        e.phase = phase;
        let mut s = StudentClock::default();
        assert!(!s.admit(&e, T), "{phase}");
        assert_eq!(s.started_at, None);
    }
    for phase in [Phase::InProgress, Phase::Paused] {
        e.phase = phase;
        let mut s = StudentClock::default();
        assert!(s.admit(&e, T), "{phase}");
        assert!(
            !s.admit(&e, T + 5 * S),
            "{phase}: a reconnect is not a new start"
        );
        assert_eq!(s.started_at, Some(T));
    }
    for phase in [Phase::Ended, Phase::Grading] {
        e.phase = phase;
        let mut s = StudentClock::default();
        assert!(!s.admit(&e, T), "{phase}");
        assert_eq!(s.started_at, None);
    }
}

#[test]
fn fixed_timing_scales_the_window_and_adds_extra_past_closes_at() {
    let e = running_minute();
    let s = started(&e, T + 30 * S);
    assert_eq!(
        s.deadline(&e, T + 30 * S),
        Some(T + 60 * S),
        "a late start keeps the fixed end"
    );
    assert_eq!(student(0, 1.5).deadline(&e, T), Some(T + 90 * S));
    assert_eq!(student(0, 0.5).deadline(&e, T), Some(T + 30 * S));
    assert_eq!(student(2, 1.5).deadline(&e, T), Some(T + 90 * S + 2 * M));
}

#[test]
fn fixed_timing_without_closes_at_or_opens_at() {
    // opens_at + duration when there is no closes_at.
    let mut e = exam(Timing::Fixed, Some(T), None, Some(40 * S));
    assert_eq!(student(0, 1.0).deadline(&e, T), Some(T + 40 * S));
    assert_eq!(student(0, 2.0).deadline(&e, T), Some(T + 80 * S));
    e.set_phase(Phase::InProgress, T + 7 * S).unwrap();
    assert_eq!(
        student(0, 1.0).deadline(&e, T + 8 * S),
        Some(T + 40 * S),
        "opens_at, not the actual start, is the fixed start"
    );

    // No opens_at: the exam's start, once it has one.
    let mut e = exam(Timing::Fixed, None, None, Some(40 * S));
    assert_eq!(
        student(0, 1.0).deadline(&e, T),
        None,
        "not started: no start yet"
    );
    e.set_phase(Phase::InProgress, T + 5 * S).unwrap();
    assert_eq!(student(0, 1.0).deadline(&e, T + 6 * S), Some(T + 45 * S));
    assert_eq!(student(0, 1.5).deadline(&e, T + 6 * S), Some(T + 65 * S));

    // No opens_at but a closes_at: unscaled until started, scaled after.
    let mut e = exam(Timing::Fixed, None, Some(T + 100 * S), None);
    assert_eq!(student(1, 2.0).deadline(&e, T), Some(T + 100 * S + M));
    e.set_phase(Phase::InProgress, T + 20 * S).unwrap();
    assert_eq!(
        student(1, 2.0).deadline(&e, T + 20 * S),
        Some(T + 180 * S + M)
    );
}

#[test]
fn per_student_timing_scales_the_duration_and_caps_the_base_at_closes_at() {
    let mut e = exam(Timing::PerStudent, Some(T), None, Some(60 * S));
    e.set_phase(Phase::InProgress, T).unwrap();
    let mut s = student(0, 1.5);
    assert_eq!(s.deadline(&e, T), None, "not started");
    assert!(s.admit(&e, T + 10 * S));
    assert_eq!(s.deadline(&e, T + 10 * S), Some(T + 100 * S));

    // With closes_at at T+80 s the base is capped there...
    e.closes_at = Some(T + 80 * S);
    assert_eq!(s.deadline(&e, T + 10 * S), Some(T + 80 * S));
    // ...and an accommodation still runs past it.
    s.extra_minutes = 1;
    assert_eq!(s.deadline(&e, T + 10 * S), Some(T + 80 * S + M));
    // A cap later than the scaled duration does not bind.
    e.closes_at = Some(T + 200 * S);
    assert_eq!(s.deadline(&e, T + 10 * S), Some(T + 100 * S + M));

    // Without a duration the base is closes_at.
    e.duration_ms = None;
    assert_eq!(s.deadline(&e, T + 10 * S), Some(T + 200 * S + M));
    e.closes_at = None;
    assert_eq!(s.deadline(&e, T + 10 * S), None, "untimed");
}

#[test]
fn scaling_rounds_to_the_nearest_millisecond() {
    let mut e = exam(Timing::PerStudent, None, None, Some(1_001));
    e.set_phase(Phase::InProgress, T).unwrap();
    let mut s = started(&e, T);
    s.multiplier = 1.5; // 1501.5 ms
    assert_eq!(s.deadline(&e, T), Some(T + 1_502));
    s.multiplier = 1.4; // 1401.4 ms
    assert_eq!(s.deadline(&e, T), Some(T + 1_401));
}

#[test]
fn untimed_exams_have_no_deadline_no_time_up_and_no_end() {
    for timing in [Timing::Fixed, Timing::PerStudent] {
        let mut e = exam(timing, Some(T), None, None);
        e.set_phase(Phase::InProgress, T).unwrap();
        let mut s = started(&e, T);
        assert_eq!(s.deadline(&e, T + S), None, "{timing:?}");
        assert!(!s.time_up(&e, T + 1_000_000 * S));
        assert_eq!(s.extend(&e, 5, T + S), Err(Untimed));
        assert_eq!(s.extension_ms, 0);
        assert_eq!(e.auto_end_at([&s], T + S), None);
    }
}

#[test]
fn exam_pauses_count_only_after_the_student_started() {
    let mut e = running_minute();
    e.set_phase(Phase::Paused, T + 5 * S).unwrap();
    e.set_phase(Phase::InProgress, T + 10 * S).unwrap();
    e.set_phase(Phase::Paused, T + 15 * S).unwrap();
    e.set_phase(Phase::InProgress, T + 25 * S).unwrap();

    let early = started(&e, T);
    let straddling = started(&e, T + 20 * S);
    let late = started(&e, T + 30 * S);
    assert_eq!(early.deadline(&e, T + 30 * S), Some(T + 75 * S));
    assert_eq!(straddling.deadline(&e, T + 30 * S), Some(T + 65 * S));
    assert_eq!(late.deadline(&e, T + 30 * S), Some(T + 60 * S));
    // A student who never joined a fixed exam counts from the exam's start.
    assert_eq!(
        StudentClock::default().deadline(&e, T + 30 * S),
        Some(T + 75 * S)
    );
}

#[test]
fn overlapping_exam_and_own_pauses_count_once() {
    let mut e = running_minute();
    let mut s = started(&e, T);
    // Own 10-20, exam 15-25: the union is 10-25, 15 s.
    s.pause(T + 10 * S).unwrap();
    e.set_phase(Phase::Paused, T + 15 * S).unwrap();
    s.resume(T + 20 * S).unwrap();
    e.set_phase(Phase::InProgress, T + 25 * S).unwrap();
    assert_eq!(s.deadline(&e, T + 26 * S), Some(T + 75 * S));

    // Exam 30-40 around own 32-35: 10 s more.
    e.set_phase(Phase::Paused, T + 30 * S).unwrap();
    s.pause(T + 32 * S).unwrap();
    s.resume(T + 35 * S).unwrap();
    e.set_phase(Phase::InProgress, T + 40 * S).unwrap();
    assert_eq!(s.deadline(&e, T + 41 * S), Some(T + 85 * S));

    // Own 45-55 around exam 47-50, then own 60-61 apart: 11 s more.
    s.pause(T + 45 * S).unwrap();
    e.set_phase(Phase::Paused, T + 47 * S).unwrap();
    e.set_phase(Phase::InProgress, T + 50 * S).unwrap();
    s.resume(T + 55 * S).unwrap();
    s.pause(T + 60 * S).unwrap();
    s.resume(T + 61 * S).unwrap();
    assert_eq!(s.deadline(&e, T + 62 * S), Some(T + 96 * S));

    // Touching spans (own 70-72, exam 72-74) add up, no gap, no overlap.
    s.pause(T + 70 * S).unwrap();
    s.resume(T + 72 * S).unwrap();
    e.set_phase(Phase::Paused, T + 72 * S).unwrap();
    e.set_phase(Phase::InProgress, T + 74 * S).unwrap();
    assert_eq!(s.deadline(&e, T + 80 * S), Some(T + 100 * S));
}

#[test]
fn a_running_pause_reads_as_if_it_ended_now() {
    let mut e = running_minute();
    let mut s = started(&e, T);
    e.set_phase(Phase::Paused, T + 10 * S).unwrap();
    assert_eq!(s.deadline(&e, T + 10 * S), Some(T + 60 * S));
    assert_eq!(s.deadline(&e, T + 13 * S), Some(T + 63 * S));
    assert_eq!(s.deadline(&e, T + 17 * S), Some(T + 67 * S));
    e.set_phase(Phase::InProgress, T + 20 * S).unwrap();
    assert_eq!(
        s.deadline(&e, T + 30 * S),
        Some(T + 70 * S),
        "frozen at 10 s once over"
    );

    s.pause(T + 40 * S).unwrap();
    assert_eq!(s.deadline(&e, T + 44 * S), Some(T + 74 * S));
    // Asked about an instant inside a pause that is over: only up to it.
    s.resume(T + 50 * S).unwrap();
    assert_eq!(s.deadline(&e, T + 15 * S), Some(T + 65 * S));
}

#[test]
fn time_up_waits_for_the_deadline_and_for_every_pause() {
    let mut e = running_minute();
    let mut s = started(&e, T);
    assert!(!s.time_up(&e, T + 60 * S - 1));
    assert!(s.time_up(&e, T + 60 * S));
    assert!(s.time_up(&e, T + 61 * S));

    // Paused after the deadline passed but before the server acted on it:
    // nothing ends while a pause runs, neither the exam's nor the student's.
    s.pause(T + 70 * S).unwrap();
    assert_eq!(s.deadline(&e, T + 75 * S), Some(T + 65 * S));
    assert!(!s.time_up(&e, T + 75 * S));
    s.resume(T + 75 * S).unwrap();
    assert!(s.time_up(&e, T + 75 * S));
    e.set_phase(Phase::Paused, T + 80 * S).unwrap();
    assert!(!s.time_up(&e, T + 85 * S));

    // Outside in_progress nobody's time runs out.
    let mut e = exam(Timing::Fixed, Some(T), Some(T + 60 * S), None);
    let s = StudentClock::default();
    assert!(!s.time_up(&e, T + 100 * S), "scheduled");
    e.set_phase(Phase::InProgress, T).unwrap();
    assert!(s.time_up(&e, T + 100 * S));
    e.set_phase(Phase::Ended, T + 100 * S).unwrap();
    assert!(!s.time_up(&e, T + 100 * S), "ended");
}

#[test]
fn extensions_add_up_and_negative_ones_stop_at_now() {
    let mut e = exam(Timing::Fixed, Some(T), Some(T + 10 * M), None);
    e.set_phase(Phase::InProgress, T).unwrap();
    let mut s = started(&e, T);

    let ext = s.extend(&e, -3, T + M).unwrap();
    assert_eq!(
        ext,
        Extended {
            applied_ms: -3 * M,
            clamped: false,
            deadline: T + 7 * M
        }
    );
    let ext = s.extend(&e, 0, T + M).unwrap();
    assert_eq!(
        (ext.applied_ms, ext.clamped, ext.deadline),
        (0, false, T + 7 * M)
    );

    // Six minutes left; taking seven leaves none: the deadline is now.
    let ext = s.extend(&e, -7, T + M).unwrap();
    assert_eq!(
        ext,
        Extended {
            applied_ms: -6 * M,
            clamped: true,
            deadline: T + M
        }
    );
    assert_eq!(s.extension_ms, -9 * M);
    assert_eq!(s.deadline(&e, T + M), Some(T + M));

    // Exactly what is left is not a clamp.
    let mut s = started(&e, T);
    let ext = s.extend(&e, -2, T + 8 * M).unwrap();
    assert_eq!(
        (ext.applied_ms, ext.clamped, ext.deadline),
        (-2 * M, false, T + 8 * M)
    );

    // Time already up: a negative extension moves nothing, a positive one
    // counts from the old deadline.
    let mut s = started(&e, T);
    let ext = s.extend(&e, -1, T + 12 * M).unwrap();
    assert_eq!(
        (ext.applied_ms, ext.clamped, ext.deadline),
        (0, true, T + 10 * M)
    );
    let ext = s.extend(&e, 1, T + 12 * M).unwrap();
    assert_eq!(
        (ext.applied_ms, ext.clamped, ext.deadline),
        (M, false, T + 11 * M)
    );
    assert_eq!(s.extension_ms, M);
}

#[test]
fn extensions_are_capped_in_total_and_absurd_ones_do_not_overflow() {
    let e = running_minute();
    let mut s = started(&e, T);
    let ext = s.extend(&e, i64::MAX, T).unwrap();
    assert_eq!(
        ext,
        Extended {
            applied_ms: MAX_EXTENSION_MS,
            clamped: true,
            deadline: T + 60 * S + MAX_EXTENSION_MS
        }
    );
    assert_eq!(s.deadline(&e, T), Some(ext.deadline));
    let ext = s.extend(&e, 1, T).unwrap();
    assert_eq!(
        (ext.applied_ms, ext.clamped),
        (0, true),
        "the cap is on the sum"
    );
    let ext = s.extend(&e, i64::MIN, T).unwrap();
    assert!(ext.clamped);
    assert_eq!(ext.deadline, T);
    assert_eq!(s.deadline(&e, T), Some(T));
    assert_eq!(s.extension_ms, -60 * S);

    // Exactly up to the cap is not a clamp.
    let mut s = started(&e, T);
    s.extend(&e, 9_999, T).unwrap();
    let ext = s.extend(&e, 1, T).unwrap();
    assert_eq!((ext.applied_ms, ext.clamped), (M, false));
    assert_eq!(s.extension_ms, MAX_EXTENSION_MS);
}

#[test]
fn the_exam_ends_at_closes_at_or_at_the_latest_unfinished_deadline() {
    let mut e = running_minute();
    let bob = started(&e, T);
    let mut ada = started(&e, T);
    ada.extra_minutes = 1;
    let none: [&StudentClock; 0] = [];
    assert_eq!(e.auto_end_at(none, T), Some(T + 60 * S));
    assert_eq!(e.auto_end_at([&bob], T), Some(T + 60 * S));
    assert_eq!(e.auto_end_at([&bob, &ada], T), Some(T + 60 * S + M));
    assert_eq!(e.auto_end_at([&ada, &bob], T), Some(T + 60 * S + M));

    // A shortened student does not end the exam early.
    let mut short = started(&e, T);
    short.extend(&e, -1, T + 10 * S).unwrap();
    assert_eq!(short.deadline(&e, T + 10 * S), Some(T + 10 * S));
    assert_eq!(e.auto_end_at([&short], T + 10 * S), Some(T + 60 * S));

    // A student's own running pause moves the end while it runs.
    let mut paused = started(&e, T);
    paused.pause(T + 50 * S).unwrap();
    assert_eq!(e.auto_end_at([&paused], T + 70 * S), Some(T + 80 * S));
    assert_eq!(e.auto_end_at([&paused], T + 75 * S), Some(T + 85 * S));

    // No end while the exam is paused or not in progress.
    e.set_phase(Phase::Paused, T + 20 * S).unwrap();
    assert_eq!(e.auto_end_at([&bob], T + 20 * S), None);
    e.set_phase(Phase::InProgress, T + 30 * S).unwrap();
    assert_eq!(e.auto_end_at([&bob], T + 30 * S), Some(T + 70 * S));
    e.set_phase(Phase::Ended, T + 40 * S).unwrap();
    assert_eq!(e.auto_end_at([&bob], T + 40 * S), None);
    let s = exam(Timing::Fixed, Some(T), Some(T + 60 * S), None);
    assert_eq!(s.auto_end_at([&bob], T), None, "scheduled");
}

#[test]
fn the_scheduled_end_without_closes_at() {
    // Fixed: start + duration.
    let mut e = exam(Timing::Fixed, None, None, Some(30 * S));
    e.set_phase(Phase::InProgress, T + 5 * S).unwrap();
    assert_eq!(e.auto_end_at([], T + 5 * S), Some(T + 35 * S));
    let mut e = exam(Timing::Fixed, Some(T), None, Some(30 * S));
    e.set_phase(Phase::InProgress, T + 5 * S).unwrap();
    assert_eq!(e.auto_end_at([], T + 5 * S), Some(T + 30 * S));

    // Per student: no exam-wide end; each student's own time_up ends theirs,
    // and late joiners keep their full duration.
    let mut e = exam(Timing::PerStudent, Some(T), None, Some(30 * S));
    e.set_phase(Phase::InProgress, T).unwrap();
    let s = started(&e, T);
    assert_eq!(e.auto_end_at([&s], T), None);
    // With closes_at, students who never started do not count.
    e.closes_at = Some(T + 20 * S);
    let waiting = StudentClock::default();
    assert_eq!(e.auto_end_at([&waiting], T), Some(T + 20 * S));
    let mut long = started(&e, T + 10 * S);
    long.extra_minutes = 1;
    assert_eq!(
        e.auto_end_at([&waiting, &long], T + 10 * S),
        Some(T + 20 * S + M)
    );
}

#[test]
fn auto_start_only_for_scheduled_auto_start_exams_with_opens_at() {
    let mut e = ExamClock::new(Phase::Scheduled, Timing::Fixed, Some(T), None, None, true);
    assert_eq!(e.auto_start_at(), Some(T));
    e.auto_start = false;
    assert_eq!(e.auto_start_at(), None);
    e.auto_start = true;
    for phase in [
        Phase::Draft,
        Phase::InProgress,
        Phase::Paused,
        Phase::Ended,
        Phase::Grading,
    ] {
        e.phase = phase;
        assert_eq!(e.auto_start_at(), None, "{phase}");
    }
    e.phase = Phase::Scheduled;
    e.opens_at = None;
    assert_eq!(e.auto_start_at(), None);
}

#[test]
fn clocks_survive_serde() {
    let mut e = ExamClock::new(
        Phase::Scheduled,
        Timing::PerStudent,
        Some(T),
        Some(T + 60 * S),
        Some(30 * S),
        true,
    );
    e.set_phase(Phase::InProgress, T).unwrap();
    e.set_phase(Phase::Paused, T + S).unwrap();
    e.set_phase(Phase::InProgress, T + 2 * S).unwrap();
    e.set_phase(Phase::Paused, T + 3 * S).unwrap();
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["phase"], "paused");
    assert_eq!(json["timing"], "per_student");
    assert_eq!(
        json["pauses"][1],
        serde_json::json!({"from": T + 3 * S, "to": null})
    );
    assert_eq!(serde_json::from_value::<ExamClock>(json).unwrap(), e);

    let mut s = student(15, 1.25);
    s.admit(&e, T);
    s.extend(&e, 2, T).unwrap();
    s.pause(T + 4 * S).unwrap();
    let back: StudentClock = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);

    // Stored before pauses existed: no `pauses` field at all.
    let old = r#"{"extra_minutes":0,"multiplier":1.0,"extension_ms":0,"started_at":null}"#;
    assert_eq!(
        serde_json::from_str::<StudentClock>(old).unwrap(),
        StudentClock::default()
    );
    let old = r#"{"phase":"draft","timing":"fixed","opens_at":null,"closes_at":null,
        "duration_ms":null,"auto_start":false,"started_at":null,"ended_at":null}"#;
    assert_eq!(
        serde_json::from_str::<ExamClock>(old).unwrap(),
        ExamClock::new(Phase::Draft, Timing::Fixed, None, None, None, false)
    );
}

#[test]
fn errors_read_well() {
    assert_eq!(
        AlreadyInState::Paused.to_string(),
        "the student is already paused"
    );
    assert_eq!(
        AlreadyInState::Running.to_string(),
        "the student is not paused"
    );
    assert_eq!(
        AlreadyInState::TooManyPauses.to_string(),
        "the student has reached the limit of 10000 pauses"
    );
    assert_eq!(Untimed.to_string(), "the student has no deadline to extend");
}
