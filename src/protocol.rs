//! The wire contract: every JSON message a client may send ([`ClientMsg`]) or
//! receive ([`ServerMsg`]), and the student state teachers see.
//! `docs/PROTOCOL.md` mirrors this module; change both together.
//!
//! Parsing happens once, at the socket ([`parse`]): a first pass reads only
//! `type` and `ref` so that even a message with bad fields gets an `error`
//! that echoes its `ref`; the second pass builds the typed message.

use std::{borrow::Cow, time::SystemTime};

use serde::{Deserialize, Serialize, Serializer};

use crate::auth::{Right, Role};

/// Per-exam event number; strictly increasing, never reused.
pub type Seq = u64;

/// Longest accepted `ref` or question label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;

/// A short client-chosen label: a string or a number, echoed back verbatim.
/// Used for `ref` and for question ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Label {
    Number(serde_json::Number),
    Text(String),
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Label::Number(n) => write!(f, "{n}"),
            Label::Text(s) => f.write_str(s),
        }
    }
}

impl Label {
    /// At most 64 bytes, and no control characters (PostgreSQL cannot
    /// store NUL in text, and none belong in an id).
    fn is_valid(&self) -> bool {
        match self {
            Label::Number(n) => n.to_string().len() <= MAX_LABEL_LEN,
            Label::Text(s) => s.len() <= MAX_LABEL_LEN && !s.chars().any(char::is_control),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityState {
    Idle,
    Active,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FocusState {
    Lost,
    Gained,
    /// The page left full-screen mode (an alert of kind `fullscreen_exit`).
    FullscreenExit,
}

/// Client → server. Students send `progress`, `activity`, `focus`,
/// `submit` and `answer`; everyone `heartbeat` and `resume`; `announce`
/// takes `Right::Announce` (teachers, admins). See [`ClientMsg::allowed_for`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    Progress {
        question: Label,
        answered: u32,
    },
    Activity {
        state: ActivityState,
    },
    Focus {
        state: FocusState,
    },
    Heartbeat {},
    Submit {},
    Resume {
        last_seq: Seq,
    },
    Announce {
        text: String,
    },
    /// A student's answer, stored durably before it is acked. `id` is
    /// client-generated and unique: re-sending it is harmless.
    Answer {
        id: Label,
        question: Label,
        value: serde_json::Value,
    },
    /// A student's client acknowledges a frame that carries an `id`
    /// (`message`, `terminated`, `exam_update`, `session_invalidated` sent
    /// for a proctor action): the action shows `delivered` for them.
    Received {
        id: String,
    },
    /// A student raises their hand, optionally saying why (at most
    /// [`MAX_HAND_TEXT`] characters).
    RaiseHand {
        #[serde(default)]
        text: Option<String>,
    },
}

/// Longest `raise_hand` text, in characters.
pub const MAX_HAND_TEXT: usize = 500;

/// Every `type` the server understands (for the `unknown_type` error).
const KNOWN_TYPES: &[&str] = &[
    "progress",
    "activity",
    "focus",
    "heartbeat",
    "submit",
    "resume",
    "announce",
    "answer",
    "received",
    "raise_hand",
];

impl ClientMsg {
    /// May a client with this role send this message? The student
    /// messages are for students only (a watcher has no answers to give);
    /// the watcher messages need the [`Right`] the rights matrix gives them.
    pub fn allowed_for(&self, role: Role) -> bool {
        match self {
            ClientMsg::Heartbeat {} | ClientMsg::Resume { .. } => true,
            ClientMsg::Announce { .. } => role.may(Right::Announce),
            ClientMsg::Progress { .. }
            | ClientMsg::Activity { .. }
            | ClientMsg::Focus { .. }
            | ClientMsg::Submit {}
            | ClientMsg::Answer { .. }
            | ClientMsg::Received { .. }
            | ClientMsg::RaiseHand { .. } => !role.is_watcher(),
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Progress { .. } => "progress",
            ClientMsg::Activity { .. } => "activity",
            ClientMsg::Focus { .. } => "focus",
            ClientMsg::Heartbeat {} => "heartbeat",
            ClientMsg::Submit {} => "submit",
            ClientMsg::Resume { .. } => "resume",
            ClientMsg::Announce { .. } => "announce",
            ClientMsg::Answer { .. } => "answer",
            ClientMsg::Received { .. } => "received",
            ClientMsg::RaiseHand { .. } => "raise_hand",
        }
    }
}

/// The kinds of proctor action (`POST /v1/exams/{id}/actions`,
/// PROTOCOL.md 4.14): one vocabulary for the API, the events and the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Extend,
    Pause,
    Resume,
    Terminate,
    Deny,
    Allow,
    ResetSession,
    Message,
    LowerHand,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Extend => "extend",
            ActionKind::Pause => "pause",
            ActionKind::Resume => "resume",
            ActionKind::Terminate => "terminate",
            ActionKind::Deny => "deny",
            ActionKind::Allow => "allow",
            ActionKind::ResetSession => "reset_session",
            ActionKind::Message => "message",
            ActionKind::LowerHand => "lower_hand",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            ActionKind::Extend,
            ActionKind::Pause,
            ActionKind::Resume,
            ActionKind::Terminate,
            ActionKind::Deny,
            ActionKind::Allow,
            ActionKind::ResetSession,
            ActionKind::Message,
            ActionKind::LowerHand,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// The right a caller needs for this kind.
    pub fn right(self) -> Right {
        match self {
            ActionKind::Extend => Right::Extend,
            ActionKind::Pause | ActionKind::Resume => Right::PauseStudent,
            ActionKind::Terminate => Right::Terminate,
            ActionKind::Deny | ActionKind::Allow => Right::Access,
            ActionKind::ResetSession => Right::ResetSession,
            ActionKind::Message => Right::Message,
            ActionKind::LowerHand => Right::AnswerHands,
        }
    }

    /// Whether the action sends its targets a frame they acknowledge
    /// (`extend`/`pause`/`resume`: `exam_update`; `terminate`:
    /// `terminated`; `deny`: `session_invalidated`; `message`).
    pub fn sends_frame(self) -> bool {
        matches!(
            self,
            ActionKind::Extend
                | ActionKind::Pause
                | ActionKind::Resume
                | ActionKind::Terminate
                | ActionKind::Deny
                | ActionKind::Message
        )
    }

    /// Whether its frame removes the student (close 4003 follows).
    pub fn removes(self) -> bool {
        matches!(self, ActionKind::Terminate | ActionKind::Deny)
    }
}

/// A parsed client message with its optional `ref`.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub r#ref: Option<Label>,
    pub msg: ClientMsg,
}

/// Error codes sent in `error {code}`; stable, documented in PROTOCOL.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not a JSON object.
    InvalidJson,
    /// `type` missing or not one of the known types.
    UnknownType,
    /// Known `type`, but fields missing or of the wrong type.
    InvalidMessage,
    /// `ref` is not a string/number of at most 64 characters.
    InvalidRef,
    /// The message is not allowed for this role.
    Forbidden,
    /// Too many messages per second.
    RateLimited,
    /// The student has already submitted; progress is no longer accepted.
    AlreadySubmitted,
    /// The announcement is empty or too long.
    InvalidAnnouncement,
    /// The database refused to store this answer or submission (its data);
    /// re-sending the same message will not help.
    NotStored,
    /// Too much is waiting for the database: keep the answer and re-send it
    /// later (with backoff). Nothing was stored, nothing was lost.
    StorageBusy,
    /// The exam has not started (`draft` or `scheduled`: the waiting
    /// room); keep the message for when it does.
    ExamNotStarted,
    /// The exam, or this student's time, is over: nothing more is taken.
    /// What was acked before stays.
    ExamEnded,
    /// The exam or this student is paused: no time is lost, and nothing is
    /// taken until `exam_update` says `paused: false`; re-send then.
    ExamPaused,
}

impl ErrorCode {
    /// Malformed data closes with 1007 when repeated; other misuse with 1008.
    pub fn is_invalid_data(self) -> bool {
        matches!(
            self,
            ErrorCode::InvalidJson
                | ErrorCode::UnknownType
                | ErrorCode::InvalidMessage
                | ErrorCode::InvalidRef
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub code: ErrorCode,
    pub message: String,
    pub r#ref: Option<Label>,
}

/// Parses one text frame into a typed message.
pub fn parse(text: &str) -> Result<Incoming, ParseError> {
    #[derive(Deserialize)]
    struct Header {
        #[serde(rename = "type")]
        kind: Option<serde_json::Value>,
        #[serde(rename = "ref")]
        r#ref: Option<serde_json::Value>,
    }
    let fail = |code, message: String, r#ref| ParseError {
        code,
        message,
        r#ref,
    };
    if !text.trim_start().starts_with('{') {
        return Err(fail(
            ErrorCode::InvalidJson,
            "expected a JSON object".into(),
            None,
        ));
    }
    let header: Header = serde_json::from_str(text).map_err(|e| {
        fail(
            ErrorCode::InvalidJson,
            format!("expected a JSON object: {e}"),
            None,
        )
    })?;
    let r#ref = match header.r#ref {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match serde_json::from_value::<Label>(v) {
            Ok(l) if l.is_valid() => Some(l),
            _ => {
                return Err(fail(
                    ErrorCode::InvalidRef,
                    format!(
                        "`ref` must be a string or number of at most {MAX_LABEL_LEN} characters"
                    ),
                    None,
                ));
            }
        },
    };
    let kind = match &header.kind {
        Some(serde_json::Value::String(k)) if KNOWN_TYPES.contains(&k.as_str()) => k.clone(),
        Some(serde_json::Value::String(k)) => {
            let shown: String = k.chars().take(32).collect();
            return Err(fail(
                ErrorCode::UnknownType,
                format!("unknown message type {shown:?}"),
                r#ref,
            ));
        }
        _ => {
            return Err(fail(
                ErrorCode::UnknownType,
                "missing string field `type`".into(),
                r#ref,
            ));
        }
    };
    let msg: ClientMsg = serde_json::from_str(text).map_err(|e| {
        fail(
            ErrorCode::InvalidMessage,
            format!("invalid `{kind}` message: {e}"),
            r#ref.clone(),
        )
    })?;
    let labels_ok = match &msg {
        ClientMsg::Progress { question, .. } => question.is_valid(),
        ClientMsg::Answer { id, question, .. } => id.is_valid() && question.is_valid(),
        ClientMsg::Received { id } => {
            !id.is_empty() && id.len() <= MAX_LABEL_LEN && !id.chars().any(char::is_control)
        }
        ClientMsg::RaiseHand { text: Some(t) } => {
            if t.chars().count() > MAX_HAND_TEXT {
                return Err(fail(
                    ErrorCode::InvalidMessage,
                    format!("`text` of raise_hand must be at most {MAX_HAND_TEXT} characters"),
                    r#ref,
                ));
            }
            true
        }
        _ => true,
    };
    if !labels_ok {
        return Err(fail(
            ErrorCode::InvalidMessage,
            format!(
                "`id` and `question` must be at most {MAX_LABEL_LEN} characters, without control characters"
            ),
            r#ref,
        ));
    }
    Ok(Incoming { r#ref, msg })
}

/// A point in time, serialized as RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    pub fn now() -> Self {
        Self(SystemTime::now())
    }
}

/// The last instant RFC 3339 can write (9999-12-31T23:59:59.999Z).
const LAST_MS: i64 = 253_402_300_799_999;

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // humantime cannot format past year 9999 (and serde_json panics on
        // a formatter's error): a deadline pushed that far by extra time
        // and extensions is shown as the last instant there is.
        let t = if self.unix_ms() > LAST_MS {
            Timestamp::from_unix_ms(LAST_MS).0
        } else {
            self.0
        };
        s.collect_str(&humantime::format_rfc3339_millis(t))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        humantime::parse_rfc3339(&s)
            .map(Timestamp)
            .map_err(serde::de::Error::custom)
    }
}

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub fn unix_ms(self) -> i64 {
        self.0
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
    /// Clamped to 1970..=9999 (what RFC 3339 can write).
    pub fn from_unix_ms(ms: i64) -> Self {
        Self(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.clamp(0, LAST_MS) as u64))
    }
}

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

/// Server → client. Serialized once per event; the same bytes go to every
/// recipient.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg<'a> {
    Welcome {
        session_id: &'a str,
        server_time: Timestamp,
        exam_id: &'a str,
        student: &'a StudentState,
        /// The exam's latest seq; a later `resume {last_seq}` replays
        /// announcements after it.
        last_seq: Seq,
        /// The exam's phase and this student's clock (as `exam_update`).
        phase: crate::control::Phase,
        deadline: Option<Timestamp>,
        paused: bool,
        opens_at: Option<Timestamp>,
        closes_at: Option<Timestamp>,
    },
    /// The exam's phase or timing, or this student's clock, changed
    /// (PROTOCOL.md 4.13). Students get their own `deadline`,
    /// `extra_minutes` and `paused`; watchers get it as a numbered event
    /// (`seq`) with the exam's whole `clock` and its `version`.
    ExamUpdate {
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<Seq>,
        phase: crate::control::Phase,
        opens_at: Option<Timestamp>,
        closes_at: Option<Timestamp>,
        server_time: Timestamp,
        /// The student's own (null when untimed); absent for watchers.
        #[serde(skip_serializing_if = "Option::is_none")]
        deadline: Option<Option<Timestamp>>,
        paused: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        extra_minutes: Option<u32>,
        cause: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        clock: Option<&'a crate::control::ExamClock>,
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<i64>,
        /// Set when a proctor action (`extend`, `pause`, `resume`) caused
        /// it: acknowledge it with `received {id}`.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
    Announcement {
        seq: Seq,
        text: &'a str,
        at: Timestamp,
        from: &'a str,
    },
    Ack {
        r#ref: &'a Label,
    },
    Error {
        code: ErrorCode,
        message: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a Label>,
    },
    SessionInvalidated {
        reason: &'a str,
        /// Set when a proctor action (`deny`) caused it: acknowledge it
        /// with `received {id}`.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
    /// A teacher ended this student's exam (`terminate`); close 4003 follows.
    Terminated {
        id: &'a str,
        reason: &'a str,
    },
    /// A private message from a proctor (action `message`).
    Message {
        id: &'a str,
        text: &'a str,
        from: &'a str,
        at: Timestamp,
    },
    /// A proctor action, as a numbered event for watchers (PROTOCOL.md
    /// 4.14): what was done, by whom, to whom. `controls` and `frame` are
    /// for the other instances' rooms (the records to apply, the frame to
    /// deliver to the targets they hold).
    Action {
        seq: Seq,
        action: &'a serde_json::Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        controls: Option<&'a std::collections::BTreeMap<String, crate::control::StudentControl>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        frame: Option<&'a serde_json::Value>,
        deliver: &'a [String],
    },
    /// A student acknowledged an action's frame.
    Delivery {
        seq: Seq,
        action_id: &'a str,
        student_id: &'a str,
        state: &'a str,
    },
    /// A student raised their hand.
    Hand {
        seq: Seq,
        hand_id: &'a str,
        student_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<&'a str>,
        at: Timestamp,
    },
    /// A raised hand was answered (`message` with `reply_to`) or lowered.
    HandLowered {
        seq: Seq,
        hand_id: &'a str,
        student_id: &'a str,
        by: &'a str,
        at: Timestamp,
    },
    /// One part of a snapshot (`part` of `parts`, from 1): a large exam's
    /// students are split over several frames (room/snapshot.rs,
    /// docs/PROTOCOL.md 4.12); `counts` is the whole exam's in every part.
    Snapshot {
        seq: Seq,
        exam_id: &'a str,
        part: u32,
        parts: u32,
        students: &'a [&'a StudentState],
        counts: Counts,
        phase: crate::control::Phase,
        server_time: Timestamp,
    },
    Student {
        seq: Seq,
        student: &'a StudentState,
        cause: Cause,
        /// With cause `timing`/`started`/`time_up`: the student's control
        /// record, so every instance's room applies it.
        #[serde(skip_serializing_if = "Option::is_none")]
        control: Option<&'a crate::control::StudentControl>,
    },
    Alert {
        seq: Seq,
        /// Unique and the same on every instance (a UUID): what
        /// `POST /v1/exams/{id}/alerts/{alert_id}/resolve` names.
        alert_id: &'a str,
        /// Null for a room's alert (`network_incident`, a report about
        /// nobody in particular).
        student_id: Option<&'a str>,
        kind: AlertKind,
        category: AlertCategory,
        /// Always `open` when sent; `alert_resolved` closes it.
        state: AlertState,
        at: Timestamp,
        /// Alerts of this kind raised for this student so far, this one
        /// and any folded into it included (`AlertCounts`).
        count: u32,
        /// `network_incident`: how many students dropped.
        #[serde(skip_serializing_if = "Option::is_none")]
        students: Option<u32>,
        /// `report`: the proctor's text.
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<&'a str>,
        /// `report`: who filed it (their `sub`).
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<&'a str>,
    },
    /// An alert was resolved (`POST .../alerts/{alert_id}/resolve`).
    AlertResolved {
        seq: Seq,
        alert_id: &'a str,
        by: &'a str,
        note: &'a str,
        at: Timestamp,
    },
    /// A student's control record changed before the room knew them
    /// (an accommodation set ahead of the exam): watchers see it, and
    /// every instance's room applies it (PROTOCOL.md 4.13).
    StudentControl {
        seq: Seq,
        student_id: &'a str,
        control: &'a crate::control::StudentControl,
    },
    /// The answer to a student's `resume` (PROTOCOL.md 4.5), sent before
    /// the `replayed` announcements it announces. `recovered` is true only
    /// when every announcement after the student's `last_seq` is among
    /// them; `last_seq` is the exam's seq now, the student's from here on.
    Resumed {
        recovered: bool,
        last_seq: Seq,
        replayed: usize,
    },
}

/// A scratch buffer grown past this (a large snapshot) is not kept.
const SCRATCH_KEEP: usize = 64 * 1024;

impl ServerMsg<'_> {
    /// Encodes to the text-frame payload. Serializing these types cannot
    /// fail (no maps with non-string keys, no fallible Serialize impls).
    ///
    /// Serialized into a per-thread scratch buffer, then copied once into an
    /// allocation of exactly its size: `to_string` grows its buffer 128 →
    /// 256 → 512 bytes for a typical 300-byte event (two reallocs), and the
    /// frame kept in the room's history would hold the whole 512.
    pub fn encode(&self) -> axum::extract::ws::Utf8Bytes {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let encoded = SCRATCH.with(|scratch| -> Result<String, serde_json::Error> {
            // Not re-entrant (Serialize impls here never encode), but a
            // borrowed scratch falls back to a fresh buffer all the same.
            let mut fresh = Vec::new();
            let mut borrowed = scratch.try_borrow_mut();
            let buf = match borrowed.as_deref_mut() {
                Ok(b) => b,
                Err(_) => &mut fresh,
            };
            buf.clear();
            serde_json::to_writer(&mut *buf, self)?;
            let text = String::from_utf8(buf.as_slice().to_vec())
                .map_err(<serde_json::Error as serde::ser::Error>::custom);
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::new();
            }
            text
        });
        match encoded {
            Ok(s) => s.into(),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a server message");
                r#"{"type":"error","code":"internal","message":"encoding failed"}"#.into()
            }
        }
    }

    /// Encodes into a buffer of `capacity` bytes, for a large frame whose
    /// size is known (a snapshot part): no scratch, no regrowth, no copy.
    pub fn encode_sized(&self, capacity: usize) -> axum::extract::ws::Utf8Bytes {
        let mut buf = Vec::with_capacity(capacity);
        serde_json::to_writer(&mut buf, self)
            .and_then(|()| {
                String::from_utf8(buf).map_err(<serde_json::Error as serde::ser::Error>::custom)
            })
            .map(Into::into)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot encode a server message");
                r#"{"type":"error","code":"internal","message":"encoding failed"}"#.into()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_message_with_ref() {
        let m = parse(r#"{"type":"progress","question":3,"answered":2,"ref":"a1"}"#).unwrap();
        assert_eq!(m.r#ref, Some(Label::Text("a1".into())));
        assert!(matches!(m.msg, ClientMsg::Progress { answered: 2, .. }));
        let m = parse(r#"{"type":"heartbeat","ref":7}"#).unwrap();
        assert_eq!(m.msg, ClientMsg::Heartbeat {});
        assert!(matches!(
            parse(r#"{"type":"submit"}"#).unwrap().msg,
            ClientMsg::Submit {}
        ));
        assert!(matches!(
            parse(r#"{"type":"focus","state":"lost"}"#).unwrap().msg,
            ClientMsg::Focus {
                state: FocusState::Lost
            }
        ));
        assert!(matches!(
            parse(r#"{"type":"resume","last_seq":10}"#).unwrap().msg,
            ClientMsg::Resume { last_seq: 10 }
        ));
        let m = parse(
            r#"{"type":"answer","id":"a-1","question":"q3","value":{"choice":[1,2]},"ref":9}"#,
        )
        .unwrap();
        assert!(matches!(m.msg, ClientMsg::Answer { .. }));
        let e = parse(r#"{"type":"answer","question":"q3","value":1}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage, "id is required");
    }

    #[test]
    fn errors_are_classified_and_keep_the_ref() {
        assert_eq!(parse("{nope").unwrap_err().code, ErrorCode::InvalidJson);
        assert_eq!(parse("[1,2]").unwrap_err().code, ErrorCode::InvalidJson);
        let e = parse(r#"{"type":"dance","ref":"r"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert_eq!(e.r#ref, Some(Label::Text("r".into())));
        let e = parse(r#"{"type":"progress","question":1,"answered":"x","ref":5}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert!(e.r#ref.is_some());
        let long = "x".repeat(65);
        let e = parse(&format!(r#"{{"type":"heartbeat","ref":"{long}"}}"#)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRef);
        let e = parse(r#"{"type":"activity","state":"asleep"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
    }

    #[test]
    fn instants_past_year_9999_are_written_as_its_last_instant() {
        let far =
            Timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(400_000_000_000));
        let json = serde_json::to_string(&far).expect("no panic, no error");
        assert_eq!(json, r#""9999-12-31T23:59:59.999Z""#);
        let clamped = Timestamp::from_unix_ms(i64::MAX);
        assert_eq!(clamped.unix_ms(), LAST_MS);
        assert_eq!(Timestamp::from_unix_ms(-5).unix_ms(), 0);
    }

    #[test]
    fn server_messages_are_snake_case_json() {
        let r = Label::Number(5.into());
        let v: serde_json::Value =
            serde_json::from_str(ServerMsg::Ack { r#ref: &r }.encode().as_str()).unwrap();
        assert_eq!(v, serde_json::json!({"type": "ack", "ref": 5}));
        let v: serde_json::Value = serde_json::from_str(
            ServerMsg::Alert {
                seq: 3,
                alert_id: "a-1",
                student_id: Some("s1"),
                kind: AlertKind::SecondSession,
                category: AlertKind::SecondSession.category(),
                state: AlertState::Open,
                at: Timestamp::now(),
                count: 2,
                students: None,
                text: None,
                by: None,
            }
            .encode()
            .as_str(),
        )
        .unwrap();
        assert_eq!(v["type"], "alert");
        assert_eq!(v["kind"], "second_session");
        assert_eq!(v["count"], 2);
        assert_eq!(v["category"], "test_taker");
        assert_eq!(v["state"], "open");
        assert!(v.get("text").is_none(), "absent, not null");
        assert!(v["at"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn alert_kind_names_are_their_wire_names() {
        use AlertKind::*;
        for kind in [
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
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for c in [
            AlertCategory::Environment,
            AlertCategory::TestTaker,
            AlertCategory::Technical,
        ] {
            assert_eq!(AlertCategory::parse(c.as_str()), Some(c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        assert_eq!(AlertCategory::parse("weather"), None);
        assert!(matches!(
            parse(r#"{"type":"focus","state":"fullscreen_exit"}"#)
                .unwrap()
                .msg,
            ClientMsg::Focus {
                state: FocusState::FullscreenExit
            }
        ));
    }

    #[test]
    fn who_may_send_what() {
        let msgs = [
            r#"{"type":"progress","question":1,"answered":1}"#,
            r#"{"type":"activity","state":"idle"}"#,
            r#"{"type":"focus","state":"lost"}"#,
            r#"{"type":"heartbeat"}"#,
            r#"{"type":"submit"}"#,
            r#"{"type":"resume","last_seq":0}"#,
            r#"{"type":"announce","text":"hi"}"#,
            r#"{"type":"answer","id":"a","question":1,"value":2}"#,
        ]
        .map(|m| parse(m).unwrap().msg);
        let allowed = |role: Role| -> Vec<&str> {
            msgs.iter()
                .filter(|m| m.allowed_for(role))
                .map(ClientMsg::kind)
                .collect()
        };
        assert_eq!(
            allowed(Role::Student),
            [
                "progress",
                "activity",
                "focus",
                "heartbeat",
                "submit",
                "resume",
                "answer"
            ]
        );
        // A proctor watches like a teacher but may not announce.
        assert_eq!(allowed(Role::Proctor), ["heartbeat", "resume"]);
        for role in [Role::Teacher, Role::Admin] {
            assert_eq!(
                allowed(role),
                ["heartbeat", "resume", "announce"],
                "{role:?}"
            );
        }
    }
}
