//! The `id:` of a session stream's events: the highest exam `seq` the
//! stream has delivered to the student, so a client that reconnects with
//! `Last-Event-ID: N` gets exactly what a socket's `resume` from N gets
//! (docs/PROTOCOL.md 4.5, 8.1).
//!
//! What "delivered" means follows the socket's rule for a student: the
//! `welcome`'s `last_seq`, then each `announcement.seq`. A stream that
//! resumed starts from its resume point instead (its `welcome` is already
//! current, but the replay that follows is not delivered yet), and reaches
//! the `resumed` frame's `last_seq` once the replay it announced is
//! through: a stream cut off in the middle of its replay resumes from
//! where it was cut, not from past the announcements it never got.

use serde::Deserialize;

use crate::protocol::Seq;

/// What a session stream has delivered, frame by frame. Plain data: no
/// clock, no I/O.
#[derive(Debug, Default)]
pub(crate) struct EventIds {
    delivered: Option<Seq>,
    /// Resumed: the welcome does not count.
    resumed_from: Option<Seq>,
    /// A replay under way: announcements left, and the seq it brings the
    /// stream to.
    replay: Option<(usize, Seq)>,
}

/// The fields of the frames that move the id.
#[derive(Deserialize)]
struct Fields {
    #[serde(default)]
    seq: Option<Seq>,
    #[serde(default)]
    last_seq: Option<Seq>,
    #[serde(default)]
    replayed: Option<usize>,
}

impl EventIds {
    /// A stream opened with `Last-Event-ID: resume` (or without one).
    pub(crate) fn new(resume: Option<Seq>) -> Self {
        EventIds {
            delivered: resume,
            resumed_from: resume,
            replay: None,
        }
    }

    /// The id for the event carrying `json` (a frame of `kind`), after
    /// counting it as delivered.
    pub(crate) fn on_frame(&mut self, kind: &str, json: &str) -> Option<Seq> {
        let fields = || serde_json::from_str::<Fields>(json).ok();
        match kind {
            "welcome" if self.resumed_from.is_none() => {
                if let Some(last) = fields().and_then(|f| f.last_seq) {
                    self.raise(last);
                }
            }
            "resumed" => {
                if let Some(f) = fields()
                    && let Some(last) = f.last_seq
                {
                    match f.replayed.unwrap_or(0) {
                        0 => self.raise(last),
                        n => self.replay = Some((n, last)),
                    }
                }
            }
            "announcement" => {
                let seq = match super::event::head(json).seq {
                    Some(seq) => Some(seq),
                    None => fields().and_then(|f| f.seq),
                };
                if let Some(seq) = seq {
                    self.raise(seq);
                }
                if let Some((left, last)) = self.replay {
                    if left <= 1 {
                        self.replay = None;
                        self.raise(last);
                    } else {
                        self.replay = Some((left - 1, last));
                    }
                }
            }
            _ => {}
        }
        self.delivered
    }

    /// The id now, for an event that is no frame (`close`).
    pub(crate) fn current(&self) -> Option<Seq> {
        self.delivered
    }

    fn raise(&mut self, seq: Seq) {
        self.delivered = Some(self.delivered.map_or(seq, |d| d.max(seq)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcement(seq: Seq) -> String {
        format!(r#"{{"type":"announcement","seq":{seq},"text":"t","at":"x","from":"f"}}"#)
    }

    #[test]
    fn a_fresh_stream_counts_from_the_welcome_then_each_announcement() {
        let mut ids = EventIds::new(None);
        let welcome = r#"{"type":"welcome","session_id":"s","last_seq":7}"#;
        assert_eq!(ids.on_frame("welcome", welcome), Some(7));
        let update = r#"{"type":"exam_update","phase":"paused"}"#;
        assert_eq!(ids.on_frame("exam_update", update), Some(7));
        assert_eq!(ids.on_frame("announcement", &announcement(9)), Some(9));
        assert_eq!(ids.current(), Some(9));
    }

    #[test]
    fn a_resumed_stream_reaches_the_resumed_seq_only_after_its_replay() {
        let mut ids = EventIds::new(Some(3));
        let welcome = r#"{"type":"welcome","session_id":"s","last_seq":10}"#;
        assert_eq!(
            ids.on_frame("welcome", welcome),
            Some(3),
            "not yet delivered"
        );
        let resumed = r#"{"type":"resumed","recovered":true,"last_seq":10,"replayed":2}"#;
        assert_eq!(ids.on_frame("resumed", resumed), Some(3));
        assert_eq!(ids.on_frame("announcement", &announcement(5)), Some(5));
        assert_eq!(ids.on_frame("announcement", &announcement(8)), Some(10));
        assert_eq!(ids.on_frame("announcement", &announcement(11)), Some(11));
    }

    #[test]
    fn a_resume_with_nothing_to_replay_is_current_at_once() {
        let mut ids = EventIds::new(Some(4));
        let resumed = r#"{"type":"resumed","recovered":true,"last_seq":6,"replayed":0}"#;
        assert_eq!(ids.on_frame("resumed", resumed), Some(6));
    }
}
