//! Which action frames each student still owes an acknowledgement for.
//!
//! A proctor action that sends a student a frame (`message`, `terminated`,
//! `session_invalidated`, or an `exam_update` for `extend`/`pause`/
//! `resume`) is *owed* to that student until their client answers
//! `received {id}`. Owed frames are sent again whenever the student joins
//! or sends `resume`, so a student who was away, or whose socket died with
//! the frame in it, still gets it. An `exam_update` is not kept as bytes:
//! it is rebuilt when re-sent, so it carries the clock as it is then.
//!
//! Plain state, no I/O: the room asks and does the sending; the database
//! (store/actions.rs) holds the same facts for rooms that start later.
//! Also remembers the action ids it has applied, so an action that comes
//! back from the broker (or twice) is applied once.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use axum::extract::ws::Utf8Bytes;

use crate::protocol::ActionKind;

/// Frames owed to one student at most; past it the oldest is dropped (it
/// stays `pending` in the database, and a room started later sends it).
pub const MAX_OWED: usize = 64;
/// Action ids remembered for deduplication.
const MAX_KNOWN: usize = 4096;

/// What to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// The exact frame (`message`, `terminated`, `session_invalidated`).
    Bytes(Utf8Bytes),
    /// An `exam_update` with the action's id, built when sent.
    ExamUpdate,
}

/// One frame owed to a student.
#[derive(Debug, Clone, PartialEq)]
pub struct Owed {
    pub action_id: Arc<str>,
    pub kind: ActionKind,
    pub frame: Frame,
}

#[derive(Default)]
pub struct Deliveries {
    owed: HashMap<Arc<str>, Vec<Owed>>,
    known: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
}

impl Deliveries {
    /// Records that this action was applied here; false if it already was.
    pub fn learn(&mut self, action_id: &Arc<str>) -> bool {
        if !self.known.insert(action_id.clone()) {
            return false;
        }
        self.order.push_back(action_id.clone());
        if self.order.len() > MAX_KNOWN
            && let Some(old) = self.order.pop_front()
        {
            self.known.remove(&old);
        }
        true
    }

    /// Owes `owed` to `sid` (once per action).
    pub fn owe(&mut self, sid: &Arc<str>, owed: Owed) {
        let list = self.owed.entry(sid.clone()).or_default();
        if list.iter().any(|o| o.action_id == owed.action_id) {
            return;
        }
        list.push(owed);
        if list.len() > MAX_OWED {
            list.remove(0);
        }
    }

    /// What `sid` has not acknowledged, oldest first.
    pub fn owed(&self, sid: &str) -> &[Owed] {
        self.owed.get(sid).map(Vec::as_slice).unwrap_or_default()
    }

    /// The student acknowledged `id`: no longer owed. `Some` if it was
    /// (the first acknowledgement), so the room records it once.
    pub fn received(&mut self, sid: &str, id: &str) -> Option<Owed> {
        let list = self.owed.get_mut(sid)?;
        let at = list.iter().position(|o| o.action_id.as_ref() == id)?;
        let owed = list.remove(at);
        if list.is_empty() {
            self.owed.remove(sid);
        }
        Some(owed)
    }

    /// `allow`: frames that would remove the student are moot.
    pub fn forget_removals(&mut self, sid: &str) {
        if let Some(list) = self.owed.get_mut(sid) {
            list.retain(|o| !o.kind.removes());
            if list.is_empty() {
                self.owed.remove(sid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owed(id: &str, kind: ActionKind) -> Owed {
        Owed {
            action_id: id.into(),
            kind,
            frame: Frame::ExamUpdate,
        }
    }

    #[test]
    fn owed_until_received_once() {
        let mut d = Deliveries::default();
        let ada: Arc<str> = "ada".into();
        d.owe(&ada, owed("a1", ActionKind::Extend));
        d.owe(&ada, owed("a2", ActionKind::Message));
        d.owe(&ada, owed("a1", ActionKind::Extend));
        assert_eq!(d.owed("ada").len(), 2, "one per action");
        assert_eq!(d.owed("ada")[0].action_id.as_ref(), "a1", "oldest first");
        assert!(d.owed("bob").is_empty());
        assert!(d.received("ada", "a1").is_some());
        assert!(d.received("ada", "a1").is_none(), "a second ack is nothing");
        assert!(d.received("bob", "a2").is_none(), "only its own student");
        assert_eq!(d.owed("ada").len(), 1);
    }

    #[test]
    fn allow_forgets_removals_only() {
        let mut d = Deliveries::default();
        let ada: Arc<str> = "ada".into();
        d.owe(&ada, owed("t", ActionKind::Terminate));
        d.owe(&ada, owed("m", ActionKind::Message));
        d.owe(&ada, owed("d", ActionKind::Deny));
        d.forget_removals("ada");
        let left: Vec<_> = d.owed("ada").iter().map(|o| o.action_id.clone()).collect();
        assert_eq!(left, vec![Arc::<str>::from("m")]);
    }

    #[test]
    fn actions_are_learnt_once_and_bounds_hold() {
        let mut d = Deliveries::default();
        let a: Arc<str> = "x".into();
        assert!(d.learn(&a));
        assert!(!d.learn(&a));
        let ada: Arc<str> = "ada".into();
        for i in 0..MAX_OWED + 5 {
            d.owe(&ada, owed(&format!("m{i}"), ActionKind::Message));
        }
        assert_eq!(d.owed("ada").len(), MAX_OWED);
        assert_eq!(d.owed("ada")[0].action_id.as_ref(), "m5", "oldest dropped");
        for i in 0..MAX_KNOWN + 1 {
            d.learn(&format!("k{i}").into());
        }
        assert!(d.learn(&a), "forgotten past the bound");
    }
}
