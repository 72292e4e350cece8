//! What each role may do: the rights matrix.
//!
//! A token's `role` says who the caller is; [`Right`] names one thing a
//! caller may do to an exam, and [`Role::may`] is the single table that
//! joins them. Every REST handler and every socket message asks this one
//! question (through `api::Watcher::require_right` and
//! `ClientMsg::allowed_for`) instead of comparing roles itself, so adding a
//! role or moving a right is a change to one `match`, and the unit test
//! below, which spells out the whole matrix, fails on any flipped entry.
//!
//! Rights are about *what*; *which exam* is the token's grant
//! ([`super::Claims::grants`]: admins hold every exam). A caller needs both.

use super::Role;

/// One thing a watcher may do to an exam it is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// Watch: the socket's snapshot and events, and every REST read (the
    /// exam, timeline, sessions, answers, report, alerts, a student's record).
    Watch,
    /// Private messages to students.
    Message,
    /// Reply to and lower raised hands.
    AnswerHands,
    /// Pause and resume single students (action kinds `pause`/`resume`).
    PauseStudent,
    /// File irregularity reports.
    FileReport,
    /// Resolve an alert.
    ResolveAlert,
    /// Room-wide announcements (the socket's `announce`).
    Announce,
    /// Change the exam's phase.
    SetPhase,
    /// Extend (or shorten) students' time.
    Extend,
    /// End a student's exam.
    Terminate,
    /// The access list: action kinds `deny` and `allow`.
    Access,
    /// Lift a second-session block.
    ResetSession,
    /// Create an exam, change it, its roster, accommodations and settings.
    EditExam,
}

impl Right {
    /// Every right, for tests and docs that must cover them all.
    pub const ALL: [Right; 13] = [
        Right::Watch,
        Right::Message,
        Right::AnswerHands,
        Right::PauseStudent,
        Right::FileReport,
        Right::ResolveAlert,
        Right::Announce,
        Right::SetPhase,
        Right::Extend,
        Right::Terminate,
        Right::Access,
        Right::ResetSession,
        Right::EditExam,
    ];

    /// What the right lets one do, worded for a refusal's message
    /// ("role proctor may not {describe}").
    pub fn describe(self) -> &'static str {
        match self {
            Right::Watch => "watch this exam",
            Right::Message => "send private messages to students",
            Right::AnswerHands => "answer raised hands",
            Right::PauseStudent => "pause or resume students",
            Right::FileReport => "file irregularity reports",
            Right::ResolveAlert => "resolve alerts",
            Right::Announce => "send announcements to the whole exam",
            Right::SetPhase => "change the exam's phase",
            Right::Extend => "extend students' time",
            Right::Terminate => "terminate students' exams",
            Right::Access => "change the access list (deny/allow)",
            Right::ResetSession => "reset students' sessions",
            Right::EditExam => "create or edit exams, rosters, accommodations and settings",
        }
    }
}

impl Role {
    /// Does this role hold `right` (on the exams its token grants)?
    pub fn may(self, right: Right) -> bool {
        match self {
            // Students sit exams: the socket's student messages are theirs,
            // but no right over an exam.
            Role::Student => false,
            // A proctor invigilates: watches and deals with individual
            // students, but does not change the exam for everyone.
            Role::Proctor => matches!(
                right,
                Right::Watch
                    | Right::Message
                    | Right::AnswerHands
                    | Right::PauseStudent
                    | Right::FileReport
                    | Right::ResolveAlert
            ),
            Role::Teacher | Role::Admin => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole matrix, written out: a flipped entry fails here.
    #[test]
    fn the_rights_matrix() {
        use Right::*;
        #[rustfmt::skip]
        let table: [(Right, [bool; 4]); 13] = [
            //              student proctor teacher admin
            (Watch,         [false, true,  true,  true]),
            (Message,       [false, true,  true,  true]),
            (AnswerHands,   [false, true,  true,  true]),
            (PauseStudent,  [false, true,  true,  true]),
            (FileReport,    [false, true,  true,  true]),
            (ResolveAlert,  [false, true,  true,  true]),
            (Announce,      [false, false, true,  true]),
            (SetPhase,      [false, false, true,  true]),
            (Extend,        [false, false, true,  true]),
            (Terminate,     [false, false, true,  true]),
            (Access,        [false, false, true,  true]),
            (ResetSession,  [false, false, true,  true]),
            (EditExam,      [false, false, true,  true]),
        ];
        let roles = [Role::Student, Role::Proctor, Role::Teacher, Role::Admin];
        assert_eq!(
            table.map(|(r, _)| r),
            Right::ALL,
            "the table covers every right, in order"
        );
        for (right, expected) in table {
            for (role, want) in roles.into_iter().zip(expected) {
                assert_eq!(role.may(right), want, "{role:?} may {right:?}");
            }
        }
    }

    #[test]
    fn every_watcher_may_watch_and_no_student_may() {
        for role in [Role::Student, Role::Proctor, Role::Teacher, Role::Admin] {
            assert_eq!(role.may(Right::Watch), role.is_watcher(), "{role:?}");
        }
    }

    #[test]
    fn every_right_is_described() {
        for right in Right::ALL {
            assert!(!right.describe().is_empty(), "{right:?}");
        }
    }
}
