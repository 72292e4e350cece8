//! What the server sends: every message type, serialized once per event
//! so the same bytes go to every recipient.

use std::borrow::Cow;

use serde::Serialize;

use super::{
    AlertCategory, AlertKind, AlertState, Cause, Counts, ErrorCode, Label, Seq, StudentState,
    Timestamp,
};

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
        /// `rate_limited` only: milliseconds until a message would be taken.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
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
        /// The raised hand this answers (and lowered).
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<&'a str>,
    },
    /// To a student: a proctor lowered their hand without a message
    /// (`lower_hand`, PROTOCOL.md 4.14). The watchers' event of the same
    /// name is [`ServerMsg::HandLowered`].
    #[serde(rename = "hand_lowered")]
    YourHandLowered {
        id: &'a str,
        hand_id: &'a str,
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
        /// The exam's whole timing model and its version, as in the
        /// watchers' `exam_update` (PROTOCOL.md 4.13): a dashboard opened
        /// mid-exam has the times and pauses without another request.
        clock: &'a crate::control::ExamClock,
        version: i64,
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
            match self {
                // The frame of every student message, written by hand
                // (protocol/student_frame.rs); the same bytes.
                ServerMsg::Student {
                    seq,
                    student,
                    cause,
                    control: None,
                } => super::student_frame::write(buf, *seq, student, *cause)?,
                _ => serde_json::to_writer(&mut *buf, self)?,
            }
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
