//! One room frame as one Server-Sent Event, and the heartbeat comment.
//!
//! The room encodes each message once, as the JSON of a WebSocket text
//! frame; an SSE stream sends those same bytes as the event's `data`, with
//! the message `type` as the event name (so `EventSource.addEventListener`
//! dispatches on it) and its `seq`, when it has one, as the event id (so a
//! reconnecting `EventSource` sends `Last-Event-ID` and the room replays).
//!
//! Reading `type` and `seq` must not cost a parse of the whole frame: a
//! snapshot part is up to 256 KiB. Every numbered message the server
//! encodes starts `{"type":"<name>","seq":<n>` (serde writes the tag first
//! and `seq` is each numbered variant's first field), so [`head`] reads
//! that prefix, and falls back to a real parse that skips the rest only for
//! frames shaped otherwise (acks, errors, a future message that puts its
//! `seq` later), which are small.

use std::borrow::Cow;

use std::io::Write as _;

use axum::body::Bytes;
use serde::Deserialize;

use crate::protocol::Seq;

/// The comment sent every `sse.heartbeat`.
pub const HEARTBEAT: &[u8] = b": ping\n\n";

/// What an event's header needs from a frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Head<'a> {
    /// The message `type`, when it can be an event name (no line break).
    pub kind: Option<Cow<'a, str>>,
    pub seq: Option<Seq>,
}

/// The `type` and top-level `seq` of an encoded server message.
pub fn head(json: &str) -> Head<'_> {
    if let Some(head) = fast_head(json) {
        return head;
    }
    #[derive(Deserialize)]
    struct Full<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Cow<'a, str>>,
        #[serde(default)]
        seq: Option<Seq>,
    }
    match serde_json::from_str::<Full<'_>>(json) {
        Ok(f) => Head {
            kind: f
                .kind
                .filter(|k| !k.is_empty() && !k.contains(['\n', '\r'])),
            seq: f.seq,
        },
        Err(_) => Head {
            kind: None,
            seq: None,
        },
    }
}

/// `{"type":"name","seq":123` → (name, 123); `None` for any other shape.
fn fast_head(json: &str) -> Option<Head<'_>> {
    let rest = json.strip_prefix(r#"{"type":""#)?;
    let end = rest.find('"')?;
    let kind = &rest[..end];
    if kind.is_empty()
        || !kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let digits = rest[end + 1..].strip_prefix(r#","seq":"#)?;
    let len = digits.bytes().take_while(u8::is_ascii_digit).count();
    // The number must end there (`,` or `}`), or it was not a plain seq.
    if !matches!(digits.as_bytes().get(len), Some(b',' | b'}')) {
        return None;
    }
    Some(Head {
        kind: Some(Cow::Borrowed(kind)),
        seq: Some(digits[..len].parse().ok()?),
    })
}

/// Appends `json` as one event: `id: <seq>` (when numbered), `event:
/// <type>`, `data: <json>`, and the blank line that ends it. A JSON text
/// from serde has no raw line break; should one ever hold one, each line
/// becomes a `data:` line of its own, which `EventSource` joins back.
pub fn append(buf: &mut Vec<u8>, json: &str) {
    let head = head(json);
    write_event(buf, head.seq.map(IdLine::Seq), head.kind.as_deref(), json);
}

/// What a student's frame needs for its event: its `type`, and its `id`
/// (a proctor action's, for `received`) when it has a string one.
#[derive(Debug, PartialEq, Eq)]
pub struct StudentHead<'a> {
    pub kind: Option<Cow<'a, str>>,
    pub id: Option<Cow<'a, str>>,
}

/// The `type` and action `id` of a frame sent to a student. These frames
/// are small (an `exam_update`, a `message`), so a real parse is cheap.
pub fn student_head(json: &str) -> StudentHead<'_> {
    #[derive(Deserialize)]
    struct WithId<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        id: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct KindOnly<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Cow<'a, str>>,
    }
    let (kind, id) = match serde_json::from_str::<WithId<'_>>(json) {
        Ok(w) => (w.kind, w.id),
        // An `id` that is not a string is no action's: the event has none.
        Err(_) => match serde_json::from_str::<KindOnly<'_>>(json) {
            Ok(k) => (k.kind, None),
            Err(_) => (None, None),
        },
    };
    let line_safe = |s: &Cow<'_, str>| !s.is_empty() && !s.contains(['\n', '\r', '\0']);
    StudentHead {
        kind: kind.filter(line_safe),
        id: id.filter(line_safe),
    }
}

/// The frames after which nothing more is a removed student's.
const REMOVING: [&str; 2] = ["terminated", "session_invalidated"];

/// Appends a frame sent to a student as one event: `id: <action id>`
/// (only for action frames, which the client acknowledges by that id),
/// `event: <type>`, `data: <json>`. Returns the frame's type when it is
/// one that removes the student from the exam (the stream ends after it).
pub fn append_student(buf: &mut Vec<u8>, json: &str) -> Option<&'static str> {
    let head = student_head(json);
    let id = head.id.as_deref().map(IdLine::Text);
    write_event(buf, id, head.kind.as_deref(), json);
    let kind = head.kind.as_deref()?;
    REMOVING.into_iter().find(|r| *r == kind)
}

/// Appends a frame of a session stream (docs/PROTOCOL.md 8.1): `id: <id>`
/// (the highest seq delivered, [`super::ids`]), `event: <kind>`, `data:
/// <json>`.
pub fn append_with_id(buf: &mut Vec<u8>, id: Option<Seq>, kind: Option<&str>, json: &str) {
    write_event(buf, id.map(IdLine::Seq), kind, json);
}

/// An event's `id:` line: a watcher's seq, or a student's action id.
enum IdLine<'a> {
    Seq(Seq),
    Text(&'a str),
}

fn write_event(buf: &mut Vec<u8>, id: Option<IdLine<'_>>, kind: Option<&str>, json: &str) {
    buf.reserve(json.len() + 64);
    match id {
        // Writing to a Vec cannot fail.
        Some(IdLine::Seq(seq)) => {
            let _ = writeln!(buf, "id: {seq}");
        }
        Some(IdLine::Text(id)) => {
            let _ = writeln!(buf, "id: {id}");
        }
        None => {}
    }
    if let Some(kind) = kind {
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(kind.as_bytes());
        buf.push(b'\n');
    }
    if json.contains(['\n', '\r']) {
        for line in json.split(['\n', '\r']).filter(|l| !l.is_empty()) {
            buf.extend_from_slice(b"data: ");
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
        }
    } else {
        buf.extend_from_slice(b"data: ");
        buf.extend_from_slice(json.as_bytes());
        buf.push(b'\n');
    }
    buf.push(b'\n');
}

/// One event on its own, for tests and single frames.
pub fn encode(json: &str) -> Bytes {
    let mut buf = Vec::new();
    append(&mut buf, json);
    buf.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn a_numbered_event_gets_its_seq_as_id_and_its_type_as_name() {
        let json =
            r#"{"type":"student","seq":42,"student":{"last_seq":7,"seq":9},"cause":"progress"}"#;
        assert_eq!(
            text(encode(json)),
            format!("id: 42\nevent: student\ndata: {json}\n\n")
        );
    }

    #[test]
    fn the_prefix_is_read_without_parsing_the_rest() {
        // Invalid JSON after the prefix: only the prefix was looked at.
        let h = head(r#"{"type":"snapshot","seq":0,"students":[ not json"#);
        assert_eq!(h.kind.as_deref(), Some("snapshot"));
        assert_eq!(h.seq, Some(0));
    }

    #[test]
    fn a_frame_without_a_leading_seq_is_parsed_and_a_nested_seq_ignored() {
        assert_eq!(
            text(encode(r#"{"type":"ack","ref":{"seq":3}}"#)),
            "event: ack\ndata: {\"type\":\"ack\",\"ref\":{\"seq\":3}}\n\n"
        );
        let h = head(r#"{"type":"hand","hand_id":"h1","seq":12}"#);
        assert_eq!((h.kind.as_deref(), h.seq), (Some("hand"), Some(12)));
        // A seq that is not a plain number at the prefix: parsed properly.
        let h = head(r#"{"type":"x","seq":12.5}"#);
        assert_eq!(h.seq, None);
    }

    #[test]
    fn what_cannot_be_an_event_name_or_id_is_left_out() {
        assert_eq!(text(encode("not json")), "data: not json\n\n");
        assert_eq!(
            text(encode("{\"type\":\"a\\nb\"}")),
            "data: {\"type\":\"a\\nb\"}\n\n",
            "an escaped newline stays escaped in data"
        );
        let h = head(r#"{"type":"a b","seq":1}"#);
        assert_eq!((h.kind.as_deref(), h.seq), (Some("a b"), Some(1)));
    }

    #[test]
    fn a_student_frame_gets_its_action_id_as_id_and_nothing_else() {
        let json = r#"{"type":"message","id":"a1","text":"hi","seq":3}"#;
        let mut buf = Vec::new();
        assert_eq!(append_student(&mut buf, json), None);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            format!("id: a1\nevent: message\ndata: {json}\n\n"),
            "the action id, not the seq"
        );
        let mut buf = Vec::new();
        append_student(&mut buf, r#"{"type":"exam_update","paused":true}"#);
        assert!(
            String::from_utf8(buf)
                .unwrap()
                .starts_with("event: exam_update\n")
        );
        let removing = r#"{"type":"session_invalidated","reason":"access_revoked","id":"d1"}"#;
        assert_eq!(
            append_student(&mut Vec::new(), removing),
            Some("session_invalidated")
        );
        let h = student_head(r#"{"type":"x","id":7}"#);
        assert_eq!(
            (h.kind.as_deref(), h.id),
            (Some("x"), None),
            "a numeric id is none"
        );
        let h = student_head("{\"type\":\"x\",\"id\":\"a\\nb\"}");
        assert_eq!(h.id, None, "an id that would break the line is left out");
        assert_eq!(student_head("nope").kind, None);
    }

    #[test]
    fn raw_line_breaks_become_separate_data_lines() {
        assert_eq!(
            text(encode("{\"type\":\"x\",\n\"seq\":1}")),
            "id: 1\nevent: x\ndata: {\"type\":\"x\",\ndata: \"seq\":1}\n\n"
        );
    }
}
