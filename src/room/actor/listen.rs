//! Students' event streams (`GET /v1/exams/{id}/me/events`, `sse/student.rs`)
//! as the room sees them: listeners of one student.
//!
//! A listener is sent what the room sends that student's socket — their
//! `exam_update`s, the action frames (`message`, `terminated`,
//! `session_invalidated`, an action's `exam_update`) and announcements —
//! but it is not a connection of the student: it changes no status, takes
//! no session lease and is no second session, so watchers do not see the
//! student `connected` because their page listens. That is why listeners
//! are kept apart from `student_conns` rather than flagged inside it: every
//! place that reasons about a student's socket (status, grace, probes,
//! leases, eviction) stays as it was, and only the places that send a
//! student a frame look here as well (`tell_student`, `send_owed`,
//! `deliver_to_students`).

use std::sync::Arc;

use super::Room;
use crate::{
    room::{ConnId, Outbox},
    store::now_ms,
};

/// The `cause` of the `exam_update` a stream opens with.
pub const STREAM_OPENED: &str = "stream";

impl Room {
    /// A student's stream joins: it gets their `exam_update` as things
    /// stand, then every frame owed to them and not yet acknowledged
    /// (what a socket gets on joining), then live frames.
    pub(super) fn listen_student(&mut self, conn: ConnId, sid: Arc<str>, out: Outbox) {
        if let Some(reason) = self.refused_access(&sid) {
            // Removed since the handshake read the access list.
            out.kick.kick(reason);
            return;
        }
        let now = now_ms();
        if !self.push(&out, self.exam_update_for(&sid, STREAM_OPENED, now)) {
            return;
        }
        for owed in self.deliveries.owed(&sid).to_vec() {
            if !self.push(&out, self.owed_frame(&sid, &owed, now)) {
                return;
            }
        }
        self.listeners.insert(conn, (sid, out));
    }

    /// The event streams of one student here.
    pub(super) fn listeners_of(&self, sid: &str) -> Vec<Outbox> {
        self.listeners
            .values()
            .filter(|(s, _)| s.as_ref() == sid)
            .map(|(_, out)| out.clone())
            .collect()
    }

    /// Students with a stream here whom the room does not otherwise know
    /// (never connected to this instance).
    pub(super) fn listening_only(&self) -> Vec<Arc<str>> {
        let mut sids: Vec<Arc<str>> = self
            .listeners
            .values()
            .map(|(s, _)| s.clone())
            .filter(|s| !self.students.contains_key(s))
            .collect();
        sids.sort_unstable();
        sids.dedup();
        sids
    }
}
