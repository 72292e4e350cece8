//! What the exam's control knows of one student besides their clock: how
//! their exam ended, and whether they may connect. Stored per student in
//! `student_control` (store/control.rs) and carried, with the clock and a
//! version, in the events that change it, so every instance agrees.

use serde::{Deserialize, Serialize};

use super::StudentClock;

/// How a student's exam ended (the report's "how it ended").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The student submitted.
    Submitted,
    /// The server submitted for them at their deadline or at the exam's end.
    TimeUp,
    /// A teacher ended their exam (`terminate`).
    Terminated,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Submitted => "submitted",
            Finish::TimeUp => "time_up",
            Finish::Terminated => "terminated",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "submitted" => Some(Finish::Submitted),
            "time_up" => Some(Finish::TimeUp),
            "terminated" => Some(Finish::Terminated),
            _ => None,
        }
    }
}

/// One student's control record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StudentControl {
    pub clock: StudentClock,
    /// How and when (unix ms) their exam ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<(Finish, i64)>,
    /// Refused at the handshake and closed (4003) while true: `deny`, or
    /// `terminate` until an `allow`.
    #[serde(default)]
    pub denied: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_reason: Option<String>,
    /// A `reset_session` lifted a second-session block at this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<i64>,
    /// Increases with every change; of two copies, the higher is newer.
    #[serde(default)]
    pub version: i64,
    /// The ids of the latest proctor actions that changed this record
    /// (newest last, at most [`APPLIED_KEPT`]): a retried action skips the
    /// students it already changed. Kept in the database only; events do
    /// not carry it.
    #[serde(skip)]
    pub applied: Vec<String>,
}

/// How many action ids a student's record remembers: far more than the
/// actions a retry can overlap with.
pub const APPLIED_KEPT: usize = 32;

impl StudentControl {
    /// Whether the action `id` already changed this record.
    pub fn has_applied(&self, id: &str) -> bool {
        self.applied.iter().any(|a| a == id)
    }

    /// Remembers that the action `id` changed this record.
    pub fn mark_applied(&mut self, id: &str) {
        if self.has_applied(id) {
            return;
        }
        self.applied.push(id.to_owned());
        if self.applied.len() > APPLIED_KEPT {
            let over = self.applied.len() - APPLIED_KEPT;
            self.applied.drain(..over);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_remembers_the_latest_actions_each_once() {
        let mut c = StudentControl::default();
        assert!(!c.has_applied("a0"));
        c.mark_applied("a0");
        c.mark_applied("a0");
        assert_eq!(c.applied, ["a0"], "once");
        for n in 1..=APPLIED_KEPT {
            c.mark_applied(&format!("a{n}"));
        }
        assert_eq!(c.applied.len(), APPLIED_KEPT);
        assert!(!c.has_applied("a0"), "the oldest is forgotten first");
        assert!(c.has_applied("a1") && c.has_applied(&format!("a{APPLIED_KEPT}")));
        assert_eq!(c.applied.last().map(String::as_str), Some("a32"));
    }
}
