//! What watchers see of a student, and the vocabulary of causes and
//! alerts that explains each change.

use serde::{Deserialize, Serialize};

use super::{Label, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Idle,
    Submitted,
    Disconnected,
}

/// What a teacher sees of one student.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudentState {
    pub student_id: String,
    pub name: String,
    pub status: Status,
    pub current_question: Option<Label>,
    pub answered: u32,
    /// Last progress or activity (not heartbeats).
    pub last_activity: Timestamp,
    /// Whether a socket is open right now (false during the grace period).
    pub connected: bool,
    /// Whether the exam page has focus, as last reported.
    pub focused: bool,
    pub focus_lost_count: u32,
    /// Alerts raised for this student so far, per kind, folded ones
    /// included (`room/alerts.rs`). Absent while none; `default` so states
    /// stored before this field existed still load.
    #[serde(default, skip_serializing_if = "AlertCounts::is_empty")]
    pub alerts: AlertCounts,
    /// Connections opened so far (1 + reconnects + takeovers).
    pub connections: u32,
    pub submitted_at: Option<Timestamp>,
    /// When this student's time ends, by the server's clock (null while
    /// untimed or not started); while `paused`, as if the pause ended now.
    #[serde(default)]
    pub deadline: Option<Timestamp>,
    /// The exam or this student is paused (their time stands still).
    #[serde(default)]
    pub paused: bool,
    /// Extra time granted as an accommodation.
    #[serde(default)]
    pub extra_minutes: u32,
    /// Total time disconnected so far, up to this state (while
    /// `connected` is false, add the time since `disconnected_since`).
    #[serde(default)]
    pub disconnected_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnected_since: Option<Timestamp>,
    /// The student has a raised hand waiting for an answer.
    #[serde(default)]
    pub hand_raised: bool,
}

impl StudentState {
    /// A student as first known, from `now` on: nothing answered, no alerts,
    /// no timing of their own, focused, not connected. Callers set what
    /// they know on top (`StudentState { connected: true, ..fresh(..) }`).
    pub fn fresh(student_id: String, name: String, status: Status, now: Timestamp) -> Self {
        Self {
            student_id,
            name,
            status,
            current_question: None,
            answered: 0,
            last_activity: now,
            connected: false,
            focused: true,
            focus_lost_count: 0,
            alerts: AlertCounts::default(),
            connections: 0,
            submitted_at: None,
            deadline: None,
            paused: false,
            extra_minutes: 0,
            disconnected_ms: 0,
            disconnected_since: None,
            hand_raised: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub active: u32,
    pub idle: u32,
    pub submitted: u32,
    pub disconnected: u32,
}

/// Why a `student` event was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    Connected,
    Reconnected,
    Progress,
    Answered,
    Idle,
    Active,
    FocusLost,
    FocusGained,
    Disconnected,
    Submitted,
    SecondSession,
    /// Their time ran out: the server submitted for them.
    TimeUp,
    /// Their clock changed: an accommodation, an extension, a pause.
    Timing,
    FullscreenExit,
    /// A teacher ended their exam (`terminate`).
    Terminated,
    /// Their access changed (`deny`, `allow`, `reset_session`).
    Access,
    /// They raised their hand.
    HandRaised,
    /// Their hand was answered or lowered.
    HandLowered,
}

/// What an alert is about. The per-student kinds fold (room/alerts.rs);
/// `network_incident` is one per room and `report` is filed by a proctor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    FocusLost,
    Idle,
    Disconnected,
    SecondSession,
    FullscreenExit,
    IpChanged,
    DeviceChanged,
    AnsweredDecreased,
    HeartbeatGap,
    NetworkIncident,
    Report,
}

/// TAO's three irregularity categories. Every automatic kind has one
/// ([`AlertKind::category`]); a `report` carries the proctor's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertCategory {
    /// The room, the network, the building: nobody's doing.
    Environment,
    /// Something the student did (or seems to have done).
    TestTaker,
    /// The student's device or connection failed.
    Technical,
}

impl AlertCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertCategory::Environment => "environment",
            AlertCategory::TestTaker => "test_taker",
            AlertCategory::Technical => "technical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "environment" => Some(AlertCategory::Environment),
            "test_taker" => Some(AlertCategory::TestTaker),
            "technical" => Some(AlertCategory::Technical),
            _ => None,
        }
    }
}

/// Whether a proctor has dealt with an alert yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Open,
    Resolved,
}

impl AlertKind {
    /// The category of an automatic alert (docs/PROTOCOL.md, alerts).
    /// What the student does to the exam page is `test_taker`, idle
    /// included (an invigilator walks over either way); what breaks the
    /// connection is `technical`, a room-wide drop included (a network
    /// outage is a technical failure, however many it hits). A `report`
    /// has no default: its filer picks one (`environment` is offered as
    /// the fallback only so this function is total).
    pub fn category(self) -> AlertCategory {
        match self {
            AlertKind::FocusLost
            | AlertKind::Idle
            | AlertKind::SecondSession
            | AlertKind::FullscreenExit
            | AlertKind::IpChanged
            | AlertKind::DeviceChanged
            | AlertKind::AnsweredDecreased => AlertCategory::TestTaker,
            AlertKind::Disconnected | AlertKind::HeartbeatGap | AlertKind::NetworkIncident => {
                AlertCategory::Technical
            }
            AlertKind::Report => AlertCategory::Environment,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::FocusLost => "focus_lost",
            AlertKind::Idle => "idle",
            AlertKind::Disconnected => "disconnected",
            AlertKind::SecondSession => "second_session",
            AlertKind::FullscreenExit => "fullscreen_exit",
            AlertKind::IpChanged => "ip_changed",
            AlertKind::DeviceChanged => "device_changed",
            AlertKind::AnsweredDecreased => "answered_decreased",
            AlertKind::HeartbeatGap => "heartbeat_gap",
            AlertKind::NetworkIncident => "network_incident",
            AlertKind::Report => "report",
        }
    }
}

/// Alerts raised for one student, per kind. Only non-zero kinds are
/// written, so a student without alerts costs nothing in a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertCounts {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub focus_lost: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub idle: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disconnected: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub second_session: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fullscreen_exit: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ip_changed: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub device_changed: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub answered_decreased: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub heartbeat_gap: u32,
    /// Manual reports filed about this student.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub report: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl AlertCounts {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn get(&self, kind: AlertKind) -> u32 {
        match kind {
            AlertKind::FocusLost => self.focus_lost,
            AlertKind::Idle => self.idle,
            AlertKind::Disconnected => self.disconnected,
            AlertKind::SecondSession => self.second_session,
            AlertKind::FullscreenExit => self.fullscreen_exit,
            AlertKind::IpChanged => self.ip_changed,
            AlertKind::DeviceChanged => self.device_changed,
            AlertKind::AnsweredDecreased => self.answered_decreased,
            AlertKind::HeartbeatGap => self.heartbeat_gap,
            AlertKind::Report => self.report,
            // A room's alert, never counted per student.
            AlertKind::NetworkIncident => 0,
        }
    }

    /// Counts one more alert of `kind`; returns the new count.
    pub fn bump(&mut self, kind: AlertKind) -> u32 {
        let n = match kind {
            AlertKind::FocusLost => &mut self.focus_lost,
            AlertKind::Idle => &mut self.idle,
            AlertKind::Disconnected => &mut self.disconnected,
            AlertKind::SecondSession => &mut self.second_session,
            AlertKind::FullscreenExit => &mut self.fullscreen_exit,
            AlertKind::IpChanged => &mut self.ip_changed,
            AlertKind::DeviceChanged => &mut self.device_changed,
            AlertKind::AnsweredDecreased => &mut self.answered_decreased,
            AlertKind::HeartbeatGap => &mut self.heartbeat_gap,
            AlertKind::Report => &mut self.report,
            AlertKind::NetworkIncident => return 1,
        };
        *n = n.saturating_add(1);
        *n
    }
}
