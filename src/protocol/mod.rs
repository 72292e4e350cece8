//! The wire contract: every JSON message a client may send ([`ClientMsg`]) or
//! receive ([`ServerMsg`]), and the student state teachers see.
//! `docs/PROTOCOL.md` mirrors this module; change both together.
//!
//! Parsing happens once, at the socket ([`parse`]): a first pass reads only
//! `type` and `ref` so that even a message with bad fields gets an `error`
//! that echoes its `ref`; the second pass builds the typed message.

//!
//! Cut by concept: [`client`] (what clients send, and its parser),
//! [`state`] (the student state and alert vocabulary watchers see),
//! [`server`] (what the server sends, encoded once); the shared pieces
//! (labels, timestamps, error codes) are here.

mod client;
#[cfg(test)]
mod props;
mod server;
mod state;
mod student_frame;

pub use client::*;
pub use server::*;
pub use state::*;

use std::{borrow::Cow, time::SystemTime};

use serde::{Deserialize, Serialize, Serializer};

/// Per-exam event number; strictly increasing, never reused.
pub type Seq = u64;

/// Longest accepted `ref` or question label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;

/// A short client-chosen label: a string or a number, echoed back verbatim.
/// Used for `ref` and for question ids. Serialized untagged; deserialized by
/// hand (below) with the same meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Label {
    Number(serde_json::Number),
    Text(String),
}

/// What `#[serde(untagged)]` would accept (a number, else a string), read
/// straight from the input: the derived untagged form first buffers the
/// value, then tries `Number` and builds an error before it tries `String`,
/// ~3,000 instructions per `progress` message (docs/bench/cpu.md, round 3).
impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Label;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Label, E> {
                Ok(Label::Number(n.into()))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Label, E> {
                Ok(Label::Number(n.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Label, E> {
                serde_json::Number::from_f64(n)
                    .map(Label::Number)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Float(n), &self))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Label, E> {
                Ok(Label::Text(s.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Label, E> {
                Ok(Label::Text(s))
            }
        }
        d.deserialize_any(Visitor)
    }
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
            Label::Number(n) => {
                // Its text's length, counted without building it.
                struct Len(usize);
                impl std::fmt::Write for Len {
                    fn write_str(&mut self, s: &str) -> std::fmt::Result {
                        self.0 += s.len();
                        Ok(())
                    }
                }
                let mut len = Len(0);
                let _ = std::fmt::Write::write_fmt(&mut len, format_args!("{n}"));
                len.0 <= MAX_LABEL_LEN
            }
            Label::Text(s) => s.len() <= MAX_LABEL_LEN && !s.chars().any(char::is_control),
        }
    }
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
    /// A `refresh` token that does not verify (signature, issuer, audience,
    /// `nbf`, shape): the connection keeps its old token.
    InvalidToken,
    /// The connection's token expired without a `refresh` (close 4401
    /// follows), or a `refresh` brought an already expired token.
    TokenExpired,
    /// A revocation covers the connection's token (close 4403 follows).
    TokenRevoked,
    /// A message the HTTP transport does not take (`resume`: send
    /// `Last-Event-ID` with the stream instead; `refresh`: open a new
    /// stream with the new token), docs/PROTOCOL.md 8.
    UnsupportedOnHttp,
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
        s.collect_str(&humantime::format_rfc3339_millis(self.formattable()))
    }
}

impl Timestamp {
    /// The instant as it is shown: at most [`LAST_MS`].
    fn formattable(&self) -> SystemTime {
        if self.unix_ms() > LAST_MS {
            Timestamp::from_unix_ms(LAST_MS).0
        } else {
            self.0
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

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
