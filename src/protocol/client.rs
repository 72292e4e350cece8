//! What clients send: every message type, who may send it, and the parser
//! that turns one text frame into a typed message (or an `error` that
//! still echoes its `ref`).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{ErrorCode, Label, MAX_LABEL_LEN, Seq};
use crate::auth::{Right, Role};

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
    /// Anyone: a new token for this connection, before the current one
    /// expires (PROTOCOL.md 1.2.3). Handled by the connection itself, never
    /// by the room: verified like a handshake's token, it must name the
    /// same subject and role and grant the connection's exam.
    Refresh {
        token: RefreshToken,
    },
}

/// A `refresh` message's token: a credential, so its `Debug` never shows it
/// (a message may be logged with `{:?}`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RefreshToken(pub String);

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Longest `raise_hand` text, in characters.
pub const MAX_HAND_TEXT: usize = 500;

/// Every `type` the server understands (for the `unknown_type` error;
/// the property tests check it against PROTOCOL.md 2).
pub(crate) const KNOWN_TYPES: &[&str] = &[
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
    "refresh",
];

impl ClientMsg {
    /// May a client with this role send this message? The student
    /// messages are for students only (a watcher has no answers to give);
    /// the watcher messages need the [`Right`] the rights matrix gives them.
    pub fn allowed_for(&self, role: Role) -> bool {
        match self {
            ClientMsg::Heartbeat {} | ClientMsg::Resume { .. } | ClientMsg::Refresh { .. } => true,
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
            ClientMsg::Refresh { .. } => "refresh",
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
                | ActionKind::LowerHand
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

#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub code: ErrorCode,
    pub message: String,
    pub r#ref: Option<Label>,
}

/// A header field of [`parse`]'s first pass: `null`, a value of the
/// expected kind, or any other JSON value (skipped, never an error, so the
/// first pass fails only on JSON that is not an object).
enum Field<T> {
    Null,
    Is(T),
    Other,
}

/// The scalars a [`Field`] holds: which JSON strings and numbers are one.
trait Scalar<'de>: Sized {
    fn from_borrowed(s: &'de str) -> Option<Self>;
    fn from_str(s: &str) -> Option<Self>;
    fn from_number(n: serde_json::Number) -> Option<Self>;
}

impl<'de: 'a, 'a> Scalar<'de> for Cow<'a, str> {
    fn from_borrowed(s: &'de str) -> Option<Self> {
        Some(Cow::Borrowed(s))
    }
    fn from_str(s: &str) -> Option<Self> {
        Some(Cow::Owned(s.to_owned()))
    }
    fn from_number(_: serde_json::Number) -> Option<Self> {
        None
    }
}

impl<'de> Scalar<'de> for Label {
    fn from_borrowed(s: &'de str) -> Option<Self> {
        Self::from_str(s)
    }
    fn from_str(s: &str) -> Option<Self> {
        Some(Label::Text(s.to_owned()))
    }
    fn from_number(n: serde_json::Number) -> Option<Self> {
        Some(Label::Number(n))
    }
}

impl<'de, T: Scalar<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess, SeqAccess};
        struct Visitor<T>(std::marker::PhantomData<T>);
        fn is<T>(v: Option<T>) -> Field<T> {
            v.map_or(Field::Other, Field::Is)
        }
        impl<'de, T: Scalar<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = Field<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: Error>(self, _: bool) -> Result<Field<T>, E> {
                Ok(Field::Other)
            }
            fn visit_u64<E: Error>(self, n: u64) -> Result<Field<T>, E> {
                Ok(is(T::from_number(n.into())))
            }
            fn visit_i64<E: Error>(self, n: i64) -> Result<Field<T>, E> {
                Ok(is(T::from_number(n.into())))
            }
            fn visit_f64<E: Error>(self, n: f64) -> Result<Field<T>, E> {
                Ok(is(serde_json::Number::from_f64(n).and_then(T::from_number)))
            }
            fn visit_borrowed_str<E: Error>(self, s: &'de str) -> Result<Field<T>, E> {
                Ok(is(T::from_borrowed(s)))
            }
            fn visit_str<E: Error>(self, s: &str) -> Result<Field<T>, E> {
                Ok(is(T::from_str(s)))
            }
            fn visit_unit<E: Error>(self) -> Result<Field<T>, E> {
                Ok(Field::Null)
            }
            fn visit_none<E: Error>(self) -> Result<Field<T>, E> {
                Ok(Field::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<T>, A::Error> {
                // Drained through `deserialize_any` (not `IgnoredAny`, which
                // skips serde_json's depth limit): JSON nested too deep stays
                // `invalid_json`, as it was when this pass read a `Value`.
                while seq.next_element::<Field<Cow<'de, str>>>()?.is_some() {}
                Ok(Field::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<T>, A::Error> {
                while map
                    .next_entry::<IgnoredAny, Field<Cow<'de, str>>>()?
                    .is_some()
                {}
                Ok(Field::Other)
            }
        }
        d.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

/// Parses one text frame into a typed message.
pub fn parse(text: &str) -> Result<Incoming, ParseError> {
    // The first pass borrows `type` and reads `ref` as a label, and takes
    // any other JSON value in either place as what it is not (a
    // `serde_json::Value` per field cost an allocation and a second
    // conversion per message).
    #[derive(Deserialize)]
    struct Header<'a> {
        #[serde(rename = "type", borrow, default)]
        kind: Option<Field<Cow<'a, str>>>,
        #[serde(rename = "ref", default)]
        r#ref: Option<Field<Label>>,
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
        None | Some(Field::Null) => None,
        Some(Field::Is(l)) if l.is_valid() => Some(l),
        Some(Field::Is(_) | Field::Other) => {
            return Err(fail(
                ErrorCode::InvalidRef,
                format!("`ref` must be a string or number of at most {MAX_LABEL_LEN} characters"),
                None,
            ));
        }
    };
    let kind = match &header.kind {
        Some(Field::Is(k)) if KNOWN_TYPES.contains(&&**k) => k,
        Some(Field::Is(k)) => {
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
