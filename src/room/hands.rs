//! Raised hands: at most one open hand per student, until a proctor
//! answers it (`message` with `reply_to`) or lowers it (`lower_hand`).
//!
//! Plain state; the room stores each raise before announcing it (so a
//! proctor can answer it through any instance's API, which reads the
//! database), loads the open ones when it starts, and applies the `hand` /
//! `hand_lowered` events of other instances, so every instance's rooms
//! agree. A raise while the student's hand is up (or being stored) is
//! acknowledged without a second hand.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hand {
    pub hand_id: Arc<str>,
    pub student_id: Arc<str>,
    pub text: Option<String>,
    /// Unix ms.
    pub at: i64,
}

#[derive(Default)]
pub struct Hands {
    /// Open hands by student.
    open: HashMap<Arc<str>, Hand>,
    /// Students whose raise is being stored.
    storing: HashSet<Arc<str>>,
}

impl Hands {
    /// May this student raise a hand now? Marks the raise as being stored.
    pub fn begin_raise(&mut self, sid: &Arc<str>) -> bool {
        !self.open.contains_key(sid) && self.storing.insert(sid.clone())
    }

    /// The raise was stored (or failed: `None`).
    pub fn raised(&mut self, sid: &Arc<str>, hand: Option<Hand>) {
        self.storing.remove(sid);
        if let Some(hand) = hand {
            self.open.insert(sid.clone(), hand);
        }
    }

    /// A hand known from the database or another instance's event.
    pub fn learn(&mut self, hand: Hand) {
        self.open.insert(hand.student_id.clone(), hand);
    }

    /// Whether this student's hand is up.
    pub fn is_raised(&self, sid: &str) -> bool {
        self.open.contains_key(sid)
    }

    /// Lowers the hand `hand_id`; the hand if it was open here.
    pub fn lower(&mut self, hand_id: &str) -> Option<Hand> {
        let sid = self
            .open
            .iter()
            .find(|(_, h)| h.hand_id.as_ref() == hand_id)
            .map(|(s, _)| s.clone())?;
        self.open.remove(&sid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hand(id: &str, sid: &str) -> Hand {
        Hand {
            hand_id: id.into(),
            student_id: sid.into(),
            text: None,
            at: 5,
        }
    }

    #[test]
    fn one_open_hand_per_student_until_lowered() {
        let mut h = Hands::default();
        let ada: Arc<str> = "ada".into();
        assert!(h.begin_raise(&ada));
        assert!(!h.begin_raise(&ada), "being stored: no second one");
        h.raised(&ada, Some(hand("h1", "ada")));
        assert!(h.is_raised("ada"));
        assert!(!h.begin_raise(&ada), "up: no second one");
        assert_eq!(h.lower("nope"), None);
        assert_eq!(h.lower("h1").map(|h| h.student_id), Some(ada.clone()));
        assert!(!h.is_raised("ada"));
        assert_eq!(h.lower("h1"), None, "lowered once");
        assert!(h.begin_raise(&ada), "may raise again");
        h.raised(&ada, None);
        assert!(!h.is_raised("ada"), "a failed store raises nothing");
        assert!(h.begin_raise(&ada));
    }

    #[test]
    fn hands_learnt_from_elsewhere_can_be_lowered_here() {
        let mut h = Hands::default();
        h.learn(hand("h9", "bob"));
        assert!(h.is_raised("bob"));
        assert!(h.lower("h9").is_some());
    }
}
