//! The HTTP sessions open on this instance, by `session_id`: what `POST
//! /v1/exams/{id}/me/messages` needs to speak for a session stream
//! ([`super::session`]) — its room, its connection id, the student's
//! message budget — and how the room's answers find their POST.
//!
//! A session stream is a connection of the student like a socket: the room
//! answers its messages (`ack`, `error`) on its outbox, in the order it
//! takes them, an `answer`'s or `submit`'s only after the commit. The POST
//! gives each message it sends a ref of its own (a number from
//! [`Replies`]), remembers the client's, and waits; the stream's task
//! hands every frame of the outbox that answers such a ref to that wait
//! instead of the event stream ([`Replies::route`]). So the room needs
//! nothing new, and answers never reach the stream: they are the POST's.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::extract::ws::Utf8Bytes;
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::{
    protocol::Label,
    room::{ConnId, Kick, RoomHandle, rate::LazyBucket},
    ws::BadBudget,
};

/// The live HTTP sessions of this instance.
#[derive(Default)]
pub struct HttpSessions {
    /// A std mutex: held for a map lookup or change, never across an await.
    open: Mutex<HashMap<String, Arc<HttpSession>>>,
}

/// One open session stream, as its POSTs see it.
pub struct HttpSession {
    pub(crate) exam: Arc<str>,
    pub(crate) student: Arc<str>,
    /// The connection the room knows the stream as.
    pub(crate) conn: ConnId,
    pub(crate) room: RoomHandle,
    pub(crate) user: Arc<str>,
    pub(crate) name: Arc<str>,
    /// The student's message budget, shared with their sockets.
    pub(crate) limiter: LazyBucket,
    /// Ends the stream (a close code), like the room's kicks.
    pub(crate) kick: Kick,
    /// Refused messages per window, as a socket counts them: past
    /// `limits.max_bad_messages` the stream ends (1007/1008).
    pub(crate) bad: Mutex<BadBudget>,
    pub(crate) replies: Replies,
    /// The stream's handover token (`X-Examwatch-Handover`, PROTOCOL.md
    /// 8.4): only the client holding the stream has it.
    pub(crate) handover: uuid::Uuid,
    /// A POST brought a message: `limits.first_message_timeout` is met.
    pub(crate) spoke: std::sync::atomic::AtomicBool,
}

impl HttpSessions {
    /// Lists `session` under `id` until the returned guard is dropped.
    pub(crate) fn insert(self: &Arc<Self>, id: String, session: Arc<HttpSession>) -> Listed {
        let conn = session.conn;
        self.lock().insert(id.clone(), session);
        Listed {
            sessions: self.clone(),
            id,
            conn,
        }
    }

    /// The open session `id` of `student` in `exam`, if it is here.
    pub(crate) fn get(&self, id: &str, exam: &str, student: &str) -> Option<Arc<HttpSession>> {
        self.lock()
            .get(id)
            .filter(|s| &*s.exam == exam && &*s.student == student)
            .cloned()
    }

    /// Whether a new connection of `student` naming `previous` as its
    /// previous session presents that open HTTP session's handover token:
    /// the client holding the stream is moving (to a socket, or to a new
    /// stream), so the room may take the session over without a probe.
    pub(crate) fn hands_over(
        &self,
        previous: &str,
        token: &uuid::Uuid,
        exam: &str,
        student: &str,
    ) -> bool {
        self.get(previous, exam, student)
            .is_some_and(|s| same_secret(s.handover.as_bytes(), token.as_bytes()))
    }

    /// How many are open (for tests and the log).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<HttpSession>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes its session from the list when dropped (the stream ended).
pub(crate) struct Listed {
    sessions: Arc<HttpSessions>,
    id: String,
    conn: ConnId,
}

impl Drop for Listed {
    fn drop(&mut self) {
        let mut open = self.sessions.lock();
        if open.get(&self.id).is_some_and(|s| s.conn == self.conn) {
            open.remove(&self.id);
        }
    }
}

/// The POSTs waiting for the room's answers on one session.
#[derive(Default)]
pub(crate) struct Replies {
    next: AtomicU64,
    /// A std mutex: held to add or take one entry.
    waiting: Mutex<HashMap<u64, oneshot::Sender<Utf8Bytes>>>,
}

impl Replies {
    /// A ref for one message, and where its answer will arrive. Dropping
    /// the receiver (a POST that gave up) is fine: the answer is dropped.
    pub(crate) fn expect(&self) -> (Label, oneshot::Receiver<Utf8Bytes>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().insert(n, tx);
        (Label::Number(n.into()), rx)
    }

    /// Forgets a ref whose message never reached the room.
    pub(crate) fn forget(&self, r#ref: &Label) {
        if let Some(n) = number(r#ref) {
            self.lock().remove(&n);
        }
    }

    /// A frame the room queued for the session: `None` if it was an
    /// answer to a POSTed message (handed to its wait, or dropped if the
    /// wait is over), the frame back if it belongs on the event stream.
    ///
    /// Every message of a session comes from a POST with a ref of ours,
    /// so every `ack` and every `error` with a ref is an answer; an
    /// `error` without one is the connection's own (`token_revoked`).
    pub(crate) fn route(&self, frame: Utf8Bytes) -> Option<Utf8Bytes> {
        let json = frame.as_str();
        let is_ack = json.starts_with(r#"{"type":"ack""#);
        if !is_ack && !json.starts_with(r#"{"type":"error""#) {
            return Some(frame);
        }
        #[derive(Deserialize)]
        struct Ref {
            #[serde(rename = "ref", default)]
            r#ref: Option<Label>,
        }
        let r#ref = serde_json::from_str::<Ref>(json).ok().and_then(|r| r.r#ref);
        let Some(r#ref) = r#ref else {
            return if is_ack { None } else { Some(frame) };
        };
        let waiting = number(&r#ref).and_then(|n| self.lock().remove(&n));
        if let Some(waiting) = waiting {
            let _ = waiting.send(frame);
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Utf8Bytes>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A `?handover=` parameter as a token: `None` if absent or not a UUID
/// (then it proves nothing, and the probe's rule applies).
pub(crate) fn handover_token(param: Option<&str>) -> Option<Box<uuid::Uuid>> {
    param
        .and_then(|t| uuid::Uuid::try_parse(t).ok())
        .map(Box::new)
}

/// Equal without an early exit: the time taken says nothing of where two
/// secrets differ.
fn same_secret(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn number(r#ref: &Label) -> Option<u64> {
    match r#ref {
        Label::Number(n) => n.as_u64(),
        Label::Text(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Utf8Bytes {
        s.to_owned().into()
    }

    #[test]
    fn answers_go_to_their_wait_and_nothing_else_is_taken() {
        let replies = Replies::default();
        let (first, mut rx1) = replies.expect();
        let (second, mut rx2) = replies.expect();
        assert_ne!(first, second);
        let ack = format!(r#"{{"type":"ack","ref":{}}}"#, serde_json::json!(second));
        assert!(replies.route(frame(&ack)).is_none());
        assert_eq!(rx2.try_recv().unwrap().as_str(), ack);
        assert!(rx1.try_recv().is_err(), "not answered yet");
        let err = format!(
            r#"{{"type":"error","code":"not_stored","message":"m","ref":{}}}"#,
            serde_json::json!(first)
        );
        assert!(replies.route(frame(&err)).is_none());
        assert_eq!(rx1.try_recv().unwrap().as_str(), err);
        // A late answer (its POST gave up) is dropped, not streamed.
        assert!(replies.route(frame(&ack)).is_none());
        // The connection's own error and every other frame are streamed.
        let own = r#"{"type":"error","code":"token_revoked","message":"m"}"#;
        assert!(replies.route(frame(own)).is_some());
        let update = r#"{"type":"exam_update","phase":"paused"}"#;
        assert!(replies.route(frame(update)).is_some());
    }
}
