//! The `student` event, written straight into the encoder's buffer: the
//! one frame every student message produces (PROTOCOL.md 4, `student`).
//!
//! Derived `Serialize` (through serde_json) escapes every key, writes each
//! piece through `io::Write` and each timestamp through a `fmt::Write`
//! adapter that escapes again: ~7,700 instructions for one `student` event
//! under bench/callgrind.sh, most of them spent on the 24 fixed keys
//! (docs/bench/cpu.md, round 3). Here the keys are literals and only the
//! values are written. The derived form stays the definition: the tests
//! below compare the bytes with it for states that set every field, and
//! the destructuring in [`write_state`] has no `..`, so a new field of
//! [`StudentState`] does not compile until it is written here too.

use super::{Cause, Seq, StudentState, Timestamp};

/// `{"type":"student","seq":…,"student":{…},"cause":"…"}`, byte for byte
/// what `serde_json::to_writer(ServerMsg::Student { control: None, .. })`
/// writes.
pub(super) fn write(
    buf: &mut Vec<u8>,
    seq: Seq,
    student: &StudentState,
    cause: Cause,
) -> Result<(), serde_json::Error> {
    buf.extend_from_slice(br#"{"type":"student","seq":"#);
    serde_json::to_writer(&mut *buf, &seq)?;
    buf.extend_from_slice(br#","student":"#);
    write_state(buf, student)?;
    buf.extend_from_slice(br#","cause":"#);
    serde_json::to_writer(&mut *buf, &cause)?;
    buf.push(b'}');
    Ok(())
}

/// One [`StudentState`] as its derived `Serialize` writes it.
fn write_state(buf: &mut Vec<u8>, st: &StudentState) -> Result<(), serde_json::Error> {
    let StudentState {
        student_id,
        name,
        status,
        current_question,
        answered,
        last_activity,
        connected,
        focused,
        focus_lost_count,
        alerts,
        connections,
        submitted_at,
        deadline,
        paused,
        extra_minutes,
        disconnected_ms,
        disconnected_since,
        hand_raised,
    } = st;
    buf.extend_from_slice(br#"{"student_id":"#);
    string(buf, student_id)?;
    buf.extend_from_slice(br#","name":"#);
    string(buf, name)?;
    buf.extend_from_slice(br#","status":"#);
    serde_json::to_writer(&mut *buf, status)?;
    buf.extend_from_slice(br#","current_question":"#);
    serde_json::to_writer(&mut *buf, current_question)?;
    buf.extend_from_slice(br#","answered":"#);
    serde_json::to_writer(&mut *buf, answered)?;
    buf.extend_from_slice(br#","last_activity":"#);
    timestamp(buf, last_activity);
    buf.extend_from_slice(br#","connected":"#);
    boolean(buf, *connected);
    buf.extend_from_slice(br#","focused":"#);
    boolean(buf, *focused);
    buf.extend_from_slice(br#","focus_lost_count":"#);
    serde_json::to_writer(&mut *buf, focus_lost_count)?;
    if !alerts.is_empty() {
        buf.extend_from_slice(br#","alerts":"#);
        serde_json::to_writer(&mut *buf, alerts)?;
    }
    buf.extend_from_slice(br#","connections":"#);
    serde_json::to_writer(&mut *buf, connections)?;
    buf.extend_from_slice(br#","submitted_at":"#);
    optional_timestamp(buf, submitted_at.as_ref());
    buf.extend_from_slice(br#","deadline":"#);
    optional_timestamp(buf, deadline.as_ref());
    buf.extend_from_slice(br#","paused":"#);
    boolean(buf, *paused);
    buf.extend_from_slice(br#","extra_minutes":"#);
    serde_json::to_writer(&mut *buf, extra_minutes)?;
    buf.extend_from_slice(br#","disconnected_ms":"#);
    serde_json::to_writer(&mut *buf, disconnected_ms)?;
    if let Some(since) = disconnected_since {
        buf.extend_from_slice(br#","disconnected_since":"#);
        timestamp(buf, since);
    }
    buf.extend_from_slice(br#","hand_raised":"#);
    boolean(buf, *hand_raised);
    buf.push(b'}');
    Ok(())
}

/// A JSON string: copied as it is when serde_json would escape nothing in
/// it (no `"`, `\` or control character; it leaves everything else as is).
fn string(buf: &mut Vec<u8>, s: &str) -> Result<(), serde_json::Error> {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(&mut *buf, s)
    }
}

fn boolean(buf: &mut Vec<u8>, b: bool) {
    buf.extend_from_slice(if b { b"true" } else { b"false" });
}

fn optional_timestamp(buf: &mut Vec<u8>, t: Option<&Timestamp>) {
    match t {
        Some(t) => timestamp(buf, t),
        None => buf.extend_from_slice(b"null"),
    }
}

/// RFC 3339 with milliseconds, as [`Timestamp`]'s `Serialize` writes it:
/// digits, `-`, `:`, `T`, `.` and `Z`, nothing to escape.
fn timestamp(buf: &mut Vec<u8>, t: &Timestamp) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(
        buf,
        "\"{}\"",
        humantime::format_rfc3339_millis(t.formattable())
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AlertCounts, Label, ServerMsg, Status};

    fn derived(seq: Seq, student: &StudentState, cause: Cause) -> String {
        serde_json::to_string(&ServerMsg::Student {
            seq,
            student,
            cause,
            control: None,
        })
        .expect("a student event serializes")
    }

    fn written(seq: Seq, student: &StudentState, cause: Cause) -> String {
        let mut buf = Vec::new();
        write(&mut buf, seq, student, cause).expect("a student event is written");
        String::from_utf8(buf).expect("the frame is UTF-8")
    }

    /// Every field away from its default, the optional ones present.
    fn everything() -> StudentState {
        StudentState {
            student_id: "s-1".into(),
            name: "Zoë \"Z\" O'Neil\\\u{1}\t🙂".into(),
            status: Status::Disconnected,
            current_question: Some(Label::Text("q\"7\n".into())),
            answered: 12,
            last_activity: Timestamp::from_unix_ms(1_764_633_600_123),
            connected: true,
            focused: true,
            focus_lost_count: 3,
            alerts: AlertCounts {
                focus_lost: 3,
                heartbeat_gap: 1,
                ..AlertCounts::default()
            },
            connections: 2,
            submitted_at: Some(Timestamp::from_unix_ms(1_764_633_700_000)),
            // Past year 9999: shown as the last instant there is.
            deadline: Some(Timestamp(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(400_000_000_000),
            )),
            paused: true,
            extra_minutes: 15,
            disconnected_ms: 90_061,
            disconnected_since: Some(Timestamp::from_unix_ms(0)),
            hand_raised: true,
        }
    }

    #[test]
    fn a_state_with_every_field_set_is_written_as_derived() {
        let st = everything();
        assert_eq!(
            written(u64::MAX, &st, Cause::HandRaised),
            derived(u64::MAX, &st, Cause::HandRaised)
        );
    }

    #[test]
    fn a_fresh_state_is_written_as_derived() {
        let st = StudentState {
            focused: false,
            ..StudentState::fresh(
                "student-042".into(),
                String::new(),
                Status::Active,
                Timestamp::from_unix_ms(1),
            )
        };
        for question in [
            None,
            Some(Label::Number(7.into())),
            Some(Label::Number((-3).into())),
            Some(Label::Number(
                serde_json::Number::from_f64(2.5).expect("finite"),
            )),
            Some(Label::Text("42:1764633600123".into())),
        ] {
            let st = StudentState {
                current_question: question,
                ..st.clone()
            };
            assert_eq!(
                written(1, &st, Cause::Progress),
                derived(1, &st, Cause::Progress)
            );
        }
    }

    #[test]
    fn encode_takes_the_written_form_for_a_student_event() {
        let st = everything();
        let msg = ServerMsg::Student {
            seq: 9,
            student: &st,
            cause: Cause::Timing,
            control: None,
        };
        assert_eq!(msg.encode().as_str(), derived(9, &st, Cause::Timing));
    }
}
