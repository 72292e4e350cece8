//! What travels on an exam's channel: one message per *batch* of an exam's
//! events (the numbering script publishes each batch it numbers as one
//! `SPUBLISH`), and what every subscriber splits back into events.
//!
//! ```text
//! message = origin "\n" record+
//! record  = ["!"] kind "\n" student "\n" seq "\n" length "\n" event
//! ```
//!
//! - `origin`: the instance that published the batch (one line for all its
//!   records: a batch comes from one instance).
//! - `!`: the origin delivered this event to its own members already,
//!   under a provisional seq, while Redis was away (`Draft::delivered_locally`).
//! - `student`: empty when the event is about no one student.
//! - `length`: the byte length of `event`, so a subscriber cuts the events
//!   out by offset instead of scanning or parsing them: no JSON is read
//!   here, and each event stays a view of the one buffer the message was
//!   read into (all of a batch's events are the same exam's, kept by the
//!   same room, so the buffer is not held for strangers).
//!
//! Kicks and drops (`send_kick`, `send_dropped`) are one-record messages
//! with an empty event, built by [`Frame`]; batches are built by the Lua
//! script in src/broker/publish.rs, which follows this same grammar.

use std::sync::Arc;

use axum::{body::Bytes, extract::ws::Utf8Bytes};

use super::Published;
use crate::protocol::Seq;

/// A message being built (control messages here; tests build batches).
pub(super) struct Frame(String);

impl Frame {
    pub(super) fn new(origin: &str) -> Self {
        Frame(format!("{origin}\n"))
    }

    /// Appends one record.
    pub(super) fn push(
        &mut self,
        delivered_at_origin: bool,
        kind: &str,
        student: Option<&str>,
        seq: Seq,
        event: &str,
    ) -> &mut Self {
        use std::fmt::Write;
        let mark = if delivered_at_origin { "!" } else { "" };
        let student = student.unwrap_or("");
        // Writing to a String cannot fail.
        let _ = write!(self.0, "{mark}{kind}\n{student}\n{seq}\n{}\n", event.len());
        self.0.push_str(event);
        self
    }

    pub(super) fn into_string(self) -> String {
        self.0
    }
}

/// A one-record message about a student with no event (`kick`, `dropped`).
pub(super) fn control(origin: &str, kind: &str, student: &str) -> String {
    control_with(origin, kind, student, "")
}

/// [`control`] with a payload of one line (a kick's handover proof).
pub(super) fn control_with(origin: &str, kind: &str, student: &str, payload: &str) -> String {
    let mut frame = Frame::new(origin);
    frame.push(false, kind, Some(student), 0, payload);
    frame.into_string()
}

/// Splits a message into its events, in order; `None` if any part of it is
/// malformed (the whole message is then ignored: a room that misses events
/// sees the gap in seqs and re-synchronises).
pub(super) fn parse(payload: Bytes) -> Option<Vec<Published>> {
    let mut at = 0;
    let origin: Arc<str> = line(&payload, &mut at)?.into();
    let mut events = Vec::new();
    while at < payload.len() {
        let kind = line(&payload, &mut at)?;
        let (kind, delivered_at_origin) = match kind.strip_prefix('!') {
            Some(k) => (k, true),
            None => (kind, false),
        };
        let student = line(&payload, &mut at)?;
        let seq: Seq = line(&payload, &mut at)?.parse().ok()?;
        let len: usize = line(&payload, &mut at)?.parse().ok()?;
        let end = at.checked_add(len).filter(|&end| end <= payload.len())?;
        let event = Utf8Bytes::try_from(payload.slice(at..end)).ok()?;
        at = end;
        if kind.is_empty() {
            return None;
        }
        events.push(Published {
            origin: origin.clone(),
            delivered_at_origin,
            kind: kind.to_owned(),
            student: (!student.is_empty()).then(|| student.into()),
            seq,
            event,
        });
    }
    (!events.is_empty()).then_some(events)
}

/// The text from `*at` to the next newline (which it steps over).
fn line<'a>(payload: &'a [u8], at: &mut usize) -> Option<&'a str> {
    let rest = payload.get(*at..)?;
    let n = rest.iter().position(|&b| b == b'\n')?;
    let text = std::str::from_utf8(&rest[..n]).ok()?;
    *at += n + 1;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> String {
        let mut f = Frame::new("node-a");
        f.push(
            false,
            "student",
            Some("s1"),
            41,
            r#"{"type":"student","seq":41}"#,
        )
        // An event may hold anything, newlines included: it is cut by length.
        .push(true, "announcement", None, 42, "{\"text\":\"a\nb\"}")
        .push(
            false,
            "alert",
            Some("s2"),
            43,
            r#"{"type":"alert","seq":43}"#,
        );
        f.into_string()
    }

    #[test]
    fn a_batch_splits_back_into_its_events_in_order() {
        let events = parse(Bytes::from(batch())).expect("a well-formed batch");
        let summary: Vec<_> = events
            .iter()
            .map(|p| {
                (
                    &*p.origin,
                    p.delivered_at_origin,
                    p.kind.as_str(),
                    p.student.as_deref(),
                    p.seq,
                    p.event.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "node-a",
                    false,
                    "student",
                    Some("s1"),
                    41,
                    r#"{"type":"student","seq":41}"#
                ),
                (
                    "node-a",
                    true,
                    "announcement",
                    None,
                    42,
                    "{\"text\":\"a\nb\"}"
                ),
                (
                    "node-a",
                    false,
                    "alert",
                    Some("s2"),
                    43,
                    r#"{"type":"alert","seq":43}"#
                ),
            ]
        );
    }

    #[test]
    fn a_control_message_is_one_record_without_an_event() {
        let events = parse(Bytes::from(control("node-b", "kick", "s9"))).unwrap();
        assert_eq!(events.len(), 1);
        let p = &events[0];
        assert_eq!(
            (&*p.origin, p.kind.as_str(), p.student.as_deref(), p.seq),
            ("node-b", "kick", Some("s9"), 0)
        );
        assert!(p.event.as_str().is_empty());
    }

    #[test]
    fn malformed_messages_are_refused_whole() {
        let good = batch();
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"node-a\n".to_vec(),
            b"node-a".to_vec(),
            // Every truncation of a good batch that is not at a record's end.
            good.as_bytes()[..good.len() - 1].to_vec(),
            good.as_bytes()[..good.find("41\n").unwrap()].to_vec(),
            // A seq or a length that is not a number, a length past the end.
            good.replacen("\n41\n", "\nx\n", 1).into_bytes(),
            good.replacen("\n27\n", "\n-1\n", 1).into_bytes(),
            good.replacen("\n27\n", "\n99999\n", 1).into_bytes(),
            good.replacen("\n27\n", "\n18446744073709551615\n", 1)
                .into_bytes(),
            // A record with no kind.
            b"node-a\n\ns1\n1\n0\n".to_vec(),
            // An event that is not UTF-8.
            b"node-a\nstudent\ns1\n1\n2\n\xff\xfe".to_vec(),
        ];
        for case in cases {
            assert!(
                parse(Bytes::from(case.clone())).is_none(),
                "accepted {:?}",
                String::from_utf8_lossy(&case)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(bytes: Vec<u8>) {
            let _ = parse(Bytes::from(bytes));
        }

        #[test]
        fn any_cut_of_a_batch_parses_without_panicking(cut in 0usize..200) {
            let good = batch().into_bytes();
            let cut = cut.min(good.len());
            let _ = parse(Bytes::copy_from_slice(&good[..cut]));
        }
    }
}
