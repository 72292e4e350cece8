//! The exam's phase and the transitions the design note draws.
//!
//! ```text
//! draft ──► scheduled ──► in_progress ◄──► paused
//!   │           │              │              │
//!   └───────────┴──────────────┴──────► ended ◄┘ ──► grading
//! ```
//!
//! A phase answers three questions the rest of the server asks: may the
//! exam move to that phase ([`Phase::can_become`], anything else is 409
//! `invalid_transition`), may a student open a socket at all
//! ([`Phase::students_may_connect`], 403 `exam_not_open` otherwise), and may
//! a connected student's work count ([`Phase::work`]). The clock that runs
//! in some of these phases lives in [`super::clock`].

use serde::{Deserialize, Serialize};

/// Where an exam is in its life. Stored and sent as its snake_case name
/// ([`Phase::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Being prepared: no student socket.
    Draft,
    /// The waiting room: students connect, nothing counts yet.
    Scheduled,
    /// The clock runs.
    InProgress,
    /// Every student's clock is stopped.
    Paused,
    /// Nobody may answer; unsubmitted students were submitted (`time_up`).
    Ended,
    /// After the exam; read-only for students.
    Grading,
}

impl Phase {
    /// Every phase, in the order of an exam's life (for tests and docs).
    pub const ALL: [Phase; 6] = [
        Phase::Draft,
        Phase::Scheduled,
        Phase::InProgress,
        Phase::Paused,
        Phase::Ended,
        Phase::Grading,
    ];

    /// The wire and database name, the same as serde's.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Draft => "draft",
            Phase::Scheduled => "scheduled",
            Phase::InProgress => "in_progress",
            Phase::Paused => "paused",
            Phase::Ended => "ended",
            Phase::Grading => "grading",
        }
    }

    /// The inverse of [`Phase::as_str`]. Also reads `running`, the value
    /// the demo stored in `exams.phase` before phases were real, so exams
    /// created then load as `in_progress`.
    pub fn parse(s: &str) -> Option<Phase> {
        match s {
            "running" => Some(Phase::InProgress),
            _ => Phase::ALL.into_iter().find(|p| p.as_str() == s),
        }
    }

    /// Whether the drawn diagram has an arrow from `self` to `to`. Staying
    /// in the same phase is not a transition (the caller decides whether a
    /// repeated request is an idempotent no-op or a 409).
    pub fn can_become(self, to: Phase) -> bool {
        use Phase::*;
        matches!(
            (self, to),
            (Draft, Scheduled)
                | (Scheduled, InProgress)
                | (InProgress, Paused)
                | (Paused, InProgress)
                | (Draft | Scheduled | InProgress | Paused, Ended)
                | (Ended, Grading)
        )
    }

    /// Whether a student may open a socket: everywhere but in `draft`
    /// (a scheduled exam is a waiting room; an ended one shows the result).
    pub fn students_may_connect(self) -> bool {
        self != Phase::Draft
    }

    /// Whether a student's `progress`, `answer` and `submit` count now, and
    /// if not, why (the error code the student gets).
    pub fn work(self) -> Result<(), WorkRefused> {
        match self {
            Phase::InProgress => Ok(()),
            Phase::Draft | Phase::Scheduled => Err(WorkRefused::NotStarted),
            Phase::Paused => Err(WorkRefused::Paused),
            Phase::Ended | Phase::Grading => Err(WorkRefused::Ended),
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a student's work is refused in the current phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkRefused {
    /// `draft` or `scheduled`: error `exam_not_started`.
    NotStarted,
    /// `paused`: the clock is stopped, so is the work.
    Paused,
    /// `ended` or `grading`: error `exam_ended`.
    Ended,
}

impl WorkRefused {
    /// The socket error code for this refusal. `exam_paused` is a
    /// suggestion: the issue names only the other two.
    pub fn code(self) -> &'static str {
        match self {
            WorkRefused::NotStarted => "exam_not_started",
            WorkRefused::Paused => "exam_paused",
            WorkRefused::Ended => "exam_ended",
        }
    }
}

/// A phase change the diagram does not draw (409 `invalid_transition`).
/// Also returned for `in_progress → paused` once the exam has recorded
/// [`super::clock::MAX_PAUSES`] pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an exam cannot go from {from} to {to}")]
pub struct InvalidTransition {
    pub from: Phase,
    pub to: Phase,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arrows of the diagram, written out once more by hand.
    const DRAWN: [(Phase, Phase); 8] = [
        (Phase::Draft, Phase::Scheduled),
        (Phase::Scheduled, Phase::InProgress),
        (Phase::InProgress, Phase::Paused),
        (Phase::Paused, Phase::InProgress),
        (Phase::Draft, Phase::Ended),
        (Phase::Scheduled, Phase::Ended),
        (Phase::InProgress, Phase::Ended),
        (Phase::Paused, Phase::Ended),
    ];

    #[test]
    fn exactly_the_drawn_transitions_are_valid() {
        let drawn: Vec<_> = DRAWN
            .into_iter()
            .chain([(Phase::Ended, Phase::Grading)])
            .collect();
        let mut valid = 0;
        for from in Phase::ALL {
            for to in Phase::ALL {
                let expected = drawn.contains(&(from, to));
                assert_eq!(from.can_become(to), expected, "{from} -> {to}");
                valid += usize::from(expected);
            }
        }
        assert_eq!(valid, 9);
    }

    #[test]
    fn names_round_trip_and_match_serde() {
        let names = [
            "draft",
            "scheduled",
            "in_progress",
            "paused",
            "ended",
            "grading",
        ];
        for (phase, name) in Phase::ALL.into_iter().zip(names) {
            assert_eq!(phase.as_str(), name);
            assert_eq!(phase.to_string(), name);
            assert_eq!(Phase::parse(name), Some(phase));
            assert_eq!(
                serde_json::to_string(&phase).unwrap(),
                format!("\"{name}\"")
            );
            assert_eq!(
                serde_json::from_str::<Phase>(&format!("\"{name}\"")).unwrap(),
                phase
            );
        }
    }

    #[test]
    fn the_legacy_running_is_in_progress_and_junk_is_none() {
        assert_eq!(Phase::parse("running"), Some(Phase::InProgress));
        for junk in ["", "Draft", "in-progress", "RUNNING", " draft", "started"] {
            assert_eq!(Phase::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn only_draft_keeps_students_out() {
        for phase in Phase::ALL {
            assert_eq!(phase.students_may_connect(), phase != Phase::Draft);
        }
    }

    #[test]
    fn work_counts_only_in_progress() {
        use WorkRefused::*;
        let expected = [
            Err(NotStarted),
            Err(NotStarted),
            Ok(()),
            Err(Paused),
            Err(Ended),
            Err(Ended),
        ];
        for (phase, want) in Phase::ALL.into_iter().zip(expected) {
            assert_eq!(phase.work(), want, "{phase}");
        }
        assert_eq!(NotStarted.code(), "exam_not_started");
        assert_eq!(Paused.code(), "exam_paused");
        assert_eq!(Ended.code(), "exam_ended");
    }

    #[test]
    fn invalid_transition_says_both_phases() {
        let err = InvalidTransition {
            from: Phase::Ended,
            to: Phase::InProgress,
        };
        assert_eq!(
            err.to_string(),
            "an exam cannot go from ended to in_progress"
        );
    }
}
