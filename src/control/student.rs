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
}
