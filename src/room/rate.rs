//! The message-rate limit, shared by all of one student's connections.
//!
//! A bucket per connection is refilled by reconnecting: one student token
//! that reconnected 60 times in 5 s pushed 2,280 events to teachers where
//! one connection is held to about 140. So a student's bucket lives in the
//! room's entry for that student (`Student::rate`) and every connection of
//! theirs is handed the same one when it joins.
//!
//! The connection checks it before parsing (a refused message never reaches
//! the room), so several tasks may use one bucket: it is a single atomic,
//! the generic cell rate algorithm (GCRA), a token bucket expressed as "the
//! theoretical arrival time" of the next message. `rate` messages a second
//! sustained, bursts of `2 × rate`, exactly as the old per-connection
//! bucket: in any span of `d` seconds at most `2 × rate + rate × d` pass.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

pub struct RateBucket {
    /// What `tat` counts from.
    origin: Instant,
    /// Theoretical arrival time of the next message, in nanoseconds since
    /// `origin`; a message is allowed while it is at most `tolerance` ahead.
    tat: AtomicU64,
    /// Nanoseconds per message at the sustained rate.
    interval: u64,
    /// How far ahead of now `tat` may run: `(burst - 1) × interval`.
    tolerance: u64,
}

impl RateBucket {
    /// `per_second` sustained (at least 1), bursts of twice that, starting full.
    pub fn new(per_second: u32, now: Instant) -> Self {
        let rate = u64::from(per_second.max(1));
        let interval = 1_000_000_000 / rate;
        let burst = 2 * rate;
        Self {
            origin: now,
            tat: AtomicU64::new(0),
            interval,
            tolerance: (burst - 1) * interval,
        }
    }

    /// Takes one message's worth at `now`; false if over the rate (a
    /// refused message takes nothing).
    pub fn allow(&self, now: Instant) -> bool {
        let now = now.saturating_duration_since(self.origin).as_nanos() as u64;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > self.tolerance {
                return false;
            }
            // Relaxed: the bucket guards nothing but its own value.
            match self.tat.compare_exchange_weak(
                tat,
                start + self.interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn allowed(b: &RateBucket, at: Instant, n: u32) -> u32 {
        (0..n).map(|_| u32::from(b.allow(at))).sum()
    }

    #[test]
    fn bursts_of_twice_the_rate_then_the_rate() {
        let t0 = Instant::now();
        let b = RateBucket::new(20, t0);
        assert_eq!(allowed(&b, t0, 100), 40, "a full bucket: 2 × rate");
        assert_eq!(allowed(&b, t0 + Duration::from_millis(49), 10), 0);
        assert_eq!(allowed(&b, t0 + Duration::from_millis(50), 10), 1);
        // A second later: 20 more, not a fresh burst.
        assert_eq!(allowed(&b, t0 + Duration::from_millis(1050), 100), 20);
        // Idle long enough, it is full again, and never fuller.
        assert_eq!(allowed(&b, t0 + Duration::from_secs(60), 100), 40);
    }

    #[test]
    fn the_bound_holds_over_any_span() {
        let t0 = Instant::now();
        let b = RateBucket::new(10, t0);
        // Ten tries every 10 ms for 3 s: at most 2 × 10 + 10 × 3 pass.
        let mut passed = 0;
        for i in 0..300 {
            passed += allowed(&b, t0 + Duration::from_millis(10 * i), 10);
        }
        assert!((49..=50).contains(&passed), "{passed}");
    }

    #[test]
    fn shared_between_threads_it_never_lets_more_through() {
        let t0 = Instant::now();
        let b = std::sync::Arc::new(RateBucket::new(1000, t0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || allowed(&b, t0, 1000))
            })
            .collect();
        let total: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 2000);
    }
}
