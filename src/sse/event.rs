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
    buf.reserve(json.len() + 64);
    if let Some(seq) = head.seq {
        // Writing to a Vec cannot fail.
        let _ = writeln!(buf, "id: {seq}");
    }
    if let Some(kind) = &head.kind {
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
    fn raw_line_breaks_become_separate_data_lines() {
        assert_eq!(
            text(encode("{\"type\":\"x\",\n\"seq\":1}")),
            "id: 1\nevent: x\ndata: {\"type\":\"x\",\ndata: \"seq\":1}\n\n"
        );
    }
}
