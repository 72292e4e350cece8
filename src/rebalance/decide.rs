//! The rebalancing decision, as plain data: given the fleet's counts, this
//! instance's own and the time, how many connections to shed. No I/O and
//! no clock of its own (the caller passes `now`), so its tests need no
//! sleeps and no runtime.
//!
//! Two rules keep a fleet from ping-ponging connections between
//! instances:
//! - an instance sheds only when it is more than `tolerance` above the
//!   average, and then only down to the average (rounded up), never
//!   below: the instances that receive the clients end near the average,
//!   not above the tolerance, so they do not shed them back;
//! - once it sheds, it does not decide again until `window` has passed:
//!   the clients it closed are reconnecting meanwhile, and counts taken
//!   mid-way would make it shed the same excess twice.

use std::time::Duration;

use tokio::time::Instant;

/// One instance's connections, as it publishes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Student sockets and student event streams.
    pub students: u64,
    /// Watcher (teacher, proctor, admin) sockets and event streams.
    pub teachers: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.students + self.teachers
    }
}

/// The decision's state: when the last shedding's window ends.
#[derive(Debug, Clone)]
pub struct Decider {
    tolerance: f64,
    window: Duration,
    /// No new decision before this (a shedding is under way).
    quiet_until: Option<Instant>,
}

impl Decider {
    pub fn new(tolerance: f64, window: Duration) -> Self {
        Self {
            tolerance: tolerance.max(0.0),
            window,
            quiet_until: None,
        }
    }

    /// Whether a shedding's window is still running at `now`.
    pub fn shedding(&self, now: Instant) -> bool {
        self.quiet_until.is_some_and(|t| now < t)
    }

    /// How many of its `own` connections this instance sheds now, given
    /// the totals of the fleet's live instances (`others`, this one left
    /// out). 0 when alone, within the tolerance, or still shedding.
    pub fn decide(&mut self, own: u64, others: &[u64], now: Instant) -> u64 {
        if others.is_empty() || self.shedding(now) {
            return 0;
        }
        let n = others.len() as u64 + 1;
        let sum: u64 = others.iter().sum::<u64>() + own;
        // Integers where it matters: `own > avg × (1 + tol)` as
        // `own × n > sum × (1 + tol)`, and the target is ⌈sum / n⌉.
        if (own * n) as f64 <= sum as f64 * (1.0 + self.tolerance) {
            return 0;
        }
        let target = sum.div_ceil(n);
        let shed = own.saturating_sub(target);
        if shed > 0 {
            self.quiet_until = Some(now + self.window);
        }
        shed
    }

    /// An operator asked this instance to shed `share` (0 < share ≤ 1) of
    /// its `own` connections: how many that is (rounded up, so a share of
    /// one connection is that connection). Starts the quiet window too, so
    /// the automatic decision does not add to it.
    pub fn operator(&mut self, own: u64, share: f64, now: Instant) -> u64 {
        let shed = ((own as f64) * share.clamp(0.0, 1.0)).ceil() as u64;
        let shed = shed.min(own);
        if shed > 0 {
            self.quiet_until = Some(now + self.window);
        }
        shed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);

    #[test]
    fn alone_or_within_the_tolerance_sheds_nothing() {
        let now = Instant::now();
        let mut d = Decider::new(0.2, W);
        assert_eq!(d.decide(1000, &[], now), 0, "alone: no fleet");
        // Average 110; 120 is 9 % above it.
        assert_eq!(d.decide(120, &[100], now), 0);
        // Exactly at the tolerance is still within it: avg 100, own 120.
        assert_eq!(d.decide(120, &[90, 90], now), 0);
        assert!(!d.shedding(now));
    }

    #[test]
    fn above_the_tolerance_sheds_down_to_the_average_not_below() {
        let now = Instant::now();
        // Two instances holding 300 each, a third just added.
        let mut a = Decider::new(0.2, W);
        assert_eq!(a.decide(300, &[300, 0], now), 100, "down to 200");
        // The average rounds up: 7 + 0 + 0 → ⌈7/3⌉ = 3, shed 4.
        let mut b = Decider::new(0.2, W);
        assert_eq!(b.decide(7, &[0, 0], now), 4);
        // The receiving instance, at the average, sheds nothing back.
        let mut c = Decider::new(0.2, W);
        assert_eq!(c.decide(200, &[200, 200], now), 0);
    }

    #[test]
    fn once_shedding_no_new_decision_until_the_window_has_passed() {
        let t0 = Instant::now();
        let mut d = Decider::new(0.2, W);
        assert_eq!(d.decide(300, &[0], t0), 150);
        assert!(d.shedding(t0 + W / 2));
        // Mid-window the counts still look uneven: nothing more.
        assert_eq!(d.decide(250, &[50], t0 + W / 2), 0);
        assert_eq!(d.decide(250, &[50], t0 + W - Duration::from_millis(1)), 0);
        // Once it passed, a remaining excess is shed again.
        assert_eq!(d.decide(250, &[50], t0 + W), 100);
    }

    #[test]
    fn two_instances_do_not_ping_pong() {
        // A sheds its excess; its clients land on B. Neither sheds again:
        // B ends at the average, A at the average too.
        let t0 = Instant::now();
        let (mut a, mut b) = (Decider::new(0.2, W), Decider::new(0.2, W));
        assert_eq!(a.decide(100, &[20], t0), 40);
        assert_eq!(b.decide(20, &[100], t0), 0);
        let later = t0 + W * 2;
        assert_eq!(a.decide(60, &[60], later), 0);
        assert_eq!(b.decide(60, &[60], later), 0);
        // Within the tolerance after a few reconnects landed unevenly.
        assert_eq!(b.decide(66, &[54], later), 0);
    }

    #[test]
    fn an_operator_share_is_rounded_up_and_bounded_and_quiets_the_decision() {
        let now = Instant::now();
        let mut d = Decider::new(0.2, W);
        assert_eq!(d.operator(10, 0.5, now), 5);
        assert!(d.shedding(now));
        assert_eq!(d.decide(10, &[0], now), 0, "no automatic shedding on top");
        let mut e = Decider::new(0.2, W);
        assert_eq!(e.operator(3, 0.5, now), 2);
        assert_eq!(e.operator(3, 1.0, now), 3);
        assert_eq!(e.operator(0, 1.0, now), 0);
        assert_eq!(e.operator(1, 0.01, now), 1);
    }
}
