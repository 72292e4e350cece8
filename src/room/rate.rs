//! The message-rate limit, shared by all of one student's connections.
//!
//! A bucket per connection is refilled by reconnecting: one student token
//! that reconnected 60 times in 5 s pushed 2,280 events to teachers where
//! one connection is held to about 140. So a student's bucket lives in the
//! room's entry for that student (`Student::rate`) and every connection of
//! theirs is handed the same one (an `Arc`) when it joins. Teachers get one
//! per connection.
//!
//! The connection checks it before parsing (a refused message never reaches
//! the room, and takes nothing from the bucket), so several tasks may use
//! one bucket at once. Two limits, both answered with how long to wait
//! (the `retry_after_ms` of `error rate_limited`):
//!
//! * `limits.messages_per_second`: governor's direct GCRA limiter (one
//!   atomic), `rate` a second sustained, bursts of `2 × rate`: in any span
//!   of `d` seconds at most `2 × rate + rate × d` pass.
//! * `limits.messages_per_minute` (0 = off): at most that many in *any*
//!   `limits.message_window` (a minute), a sliding window. GCRA cannot say
//!   this: a bucket of `n` a minute lets `n` through at once and then one
//!   every `60 / n` seconds, so `n + 1` pass within the first minute, and
//!   more in any later minute that starts with a full bucket. The window is
//!   therefore its own small structure: the instants of the messages taken
//!   within the last window, oldest first (8 bytes each, at most `n` per
//!   student, allocated only as they are sent); the wait is until the
//!   oldest leaves the window.
//!
//! A student's bucket is made on their first message ([`LazyBucket`]):
//! the room hands every connection of the student the same empty slot, and
//! most students of an exam never send a message (the client library's
//! events are few), so an idle student costs a pointer, not a bucket.
//!
//! Both read a governor clock ([`MonotonicClock`] in the server); the unit
//! tests use a `FakeRelativeClock`, so they need no sleeps.

use std::{
    collections::VecDeque,
    num::NonZeroU32,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, MonotonicClock, Reference},
    middleware::NoOpMiddleware,
    nanos::Nanos,
    state::{InMemoryState, NotKeyed},
};

use crate::config::LimitSettings;

/// One student's (or one teacher connection's) message budget.
pub struct RateBucket<C: Clock = MonotonicClock> {
    per_second: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    /// The sustained rate, for the refusal's text.
    rate: u32,
    /// `None` when `messages_per_minute` is 0. A std Mutex: held for a
    /// few comparisons, never across an `.await`.
    window: Option<Mutex<SlidingWindow<C::Instant>>>,
}

/// Why a message was refused, and how long until one would be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub wait: Duration,
    pub limit: Limit,
}

/// Which limit refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    PerSecond(u32),
    /// `n` per window.
    PerWindow(u32, Duration),
}

impl Refused {
    /// The wait in whole milliseconds, rounded up (never 0: a client told
    /// 0 would send again at once and be refused again).
    pub fn retry_after_ms(&self) -> u64 {
        let ms = self.wait.as_nanos().div_ceil(1_000_000);
        u64::try_from(ms).unwrap_or(u64::MAX).max(1)
    }

    /// The refusal's text, for `error.message`.
    pub fn message(&self) -> String {
        match self.limit {
            Limit::PerSecond(rate) => format!("more than {rate} messages per second"),
            Limit::PerWindow(n, window) if window == Duration::from_secs(60) => {
                format!("more than {n} messages per minute")
            }
            Limit::PerWindow(n, window) => {
                format!("more than {n} messages per {} ms", window.as_millis())
            }
        }
    }
}

impl RateBucket {
    /// A full bucket with the limits of `limits`.
    pub fn new(limits: &LimitSettings) -> Self {
        Self::with_clock(limits, MonotonicClock)
    }
}

impl<C: Clock> RateBucket<C> {
    pub fn with_clock(limits: &LimitSettings, clock: C) -> Self {
        let rate = limits.messages_per_second.max(1);
        let sustained = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.saturating_mul(2)).unwrap_or(sustained);
        let quota = Quota::per_second(sustained).allow_burst(burst);
        let per_second = RateLimiter::new(quota, InMemoryState::default(), clock);
        let window =
            (limits.messages_per_minute > 0 && !limits.message_window.is_zero()).then(|| {
                Mutex::new(SlidingWindow {
                    limit: limits.messages_per_minute,
                    window: limits.message_window,
                    start: per_second.clock().now(),
                    taken: VecDeque::new(),
                })
            });
        Self {
            per_second,
            rate,
            window,
        }
    }

    /// Takes one message's worth now, or says which limit refused it and
    /// how long until a message would be taken.
    pub fn allow(&self) -> Result<(), Refused> {
        let Some(window) = &self.window else {
            return self.check_per_second();
        };
        let mut window = window.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.per_second.clock().now();
        if let Err(wait) = window.check(now) {
            // The per-second bucket is not asked (it would take a cell):
            // when the window frees a place sooner than one cell comes
            // back, the longer of the two is the wait that is enough.
            let cell = self.per_second_interval();
            return Err(Refused {
                wait: if wait < cell { cell } else { wait },
                limit: Limit::PerWindow(window.limit, window.window),
            });
        }
        self.check_per_second()?;
        window.record(now);
        Ok(())
    }

    fn check_per_second(&self) -> Result<(), Refused> {
        self.per_second.check().map_err(|not_until| Refused {
            wait: not_until.wait_time_from(self.per_second.clock().now()),
            limit: Limit::PerSecond(self.rate),
        })
    }

    fn per_second_interval(&self) -> Duration {
        Duration::from_secs(1) / self.rate
    }
}

/// The slot of one student's (or teacher connection's) [`RateBucket`],
/// shared by every clone, filled on the first message: a full bucket made
/// then takes the same messages as one made at the join (it cannot be
/// fuller than full), so nothing changes but when its memory is taken.
/// The bucket is boxed so that the empty slot, which every connection and
/// the room's student entry point to, stays a pointer's size.
#[derive(Clone, Default)]
pub struct LazyBucket(Arc<OnceLock<Box<RateBucket>>>);

impl LazyBucket {
    /// [`RateBucket::allow`], making the bucket with `limits` on first use.
    pub fn allow(&self, limits: &LimitSettings) -> Result<(), Refused> {
        self.0
            .get_or_init(|| Box::new(RateBucket::new(limits)))
            .allow()
    }

    /// Whether a message was ever checked against it.
    pub fn is_made(&self) -> bool {
        self.0.get().is_some()
    }
}

/// At most `limit` messages in any `window`.
struct SlidingWindow<I: Reference> {
    limit: u32,
    window: Duration,
    /// What the instants of `taken` count from.
    start: I,
    /// When each message of the last window was taken, oldest first.
    taken: VecDeque<Nanos>,
}

impl<I: Reference> SlidingWindow<I> {
    /// Forgets messages a window old or older; `Err(wait)` while `limit`
    /// remain, `wait` being how long until the oldest leaves the window.
    fn check(&mut self, now: I) -> Result<(), Duration> {
        let now = now.duration_since(self.start);
        let window = Nanos::from(self.window);
        while self
            .taken
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= window)
        {
            self.taken.pop_front();
        }
        match self.taken.front() {
            Some(&oldest) if self.taken.len() >= self.limit as usize => Err(Duration::from(
                window.saturating_sub(now.saturating_sub(oldest)),
            )),
            _ => Ok(()),
        }
    }

    fn record(&mut self, now: I) {
        self.taken.push_back(now.duration_since(self.start));
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn bucket(
        per_second: u32,
        per_minute: u32,
    ) -> (RateBucket<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limits = LimitSettings {
            messages_per_second: per_second,
            messages_per_minute: per_minute,
            ..LimitSettings::default()
        };
        (RateBucket::with_clock(&limits, clock.clone()), clock)
    }

    fn allowed<C: Clock>(b: &RateBucket<C>, n: u32) -> u32 {
        (0..n).map(|_| u32::from(b.allow().is_ok())).sum()
    }

    #[test]
    fn bursts_of_twice_the_rate_then_the_rate() {
        let (b, clock) = bucket(20, 0);
        assert_eq!(allowed(&b, 100), 40, "a full bucket: 2 × rate");
        let refused = b.allow().unwrap_err();
        assert_eq!(refused.wait, 50 * MS, "one message comes back every 50 ms");
        assert_eq!(refused.retry_after_ms(), 50);
        assert_eq!(refused.message(), "more than 20 messages per second");
        clock.advance(49 * MS);
        assert_eq!(allowed(&b, 10), 0);
        assert_eq!(b.allow().unwrap_err().wait, MS);
        clock.advance(MS);
        assert_eq!(allowed(&b, 10), 1, "waiting retry_after is enough");
        // A second later: 20 more, not a fresh burst.
        clock.advance(1000 * MS);
        assert_eq!(allowed(&b, 100), 20);
        // Idle long enough, it is full again, and never fuller.
        clock.advance(Duration::from_secs(60));
        assert_eq!(allowed(&b, 100), 40);
    }

    #[test]
    fn the_bound_holds_over_any_span() {
        let (b, clock) = bucket(10, 0);
        // Ten tries every 10 ms for 3 s: at most 2 × 10 + 10 × 3 pass.
        let mut passed = 0;
        for _ in 0..300 {
            passed += allowed(&b, 10);
            clock.advance(10 * MS);
        }
        assert!((49..=50).contains(&passed), "{passed}");
    }

    #[test]
    fn shared_between_threads_it_never_lets_more_through() {
        let (b, _clock) = bucket(1000, 0);
        let b = std::sync::Arc::new(b);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || allowed(&*b, 1000))
            })
            .collect();
        let total: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 2000);
    }

    #[test]
    fn the_minute_is_a_sliding_window() {
        let (b, clock) = bucket(100, 30);
        // 30 spread over the first 29 s: each 1 s after the previous one.
        for _ in 0..30 {
            assert!(b.allow().is_ok());
            clock.advance(Duration::from_secs(1));
        }
        // At 30 s the 31st is refused until the first is a minute old.
        let refused = b.allow().unwrap_err();
        assert_eq!(refused.wait, Duration::from_secs(30));
        assert_eq!(refused.retry_after_ms(), 30_000);
        assert_eq!(refused.message(), "more than 30 messages per minute");
        clock.advance(Duration::from_secs(30) - MS);
        assert!(b.allow().is_err(), "a millisecond early");
        clock.advance(MS);
        assert!(b.allow().is_ok(), "waiting retry_after is enough");
        assert!(
            b.allow().is_err(),
            "one left the window, one came in: the next waits for the second"
        );
        assert_eq!(b.allow().unwrap_err().wait, Duration::from_secs(1));
    }

    #[test]
    fn the_window_does_not_refill_within_the_minute() {
        // A burst of 30 at once, then nothing until those are a minute old
        // (a GCRA of 30 a minute would take one more every 2 s).
        let (b, clock) = bucket(100, 30);
        assert_eq!(allowed(&b, 100), 30, "30 at once");
        clock.advance(Duration::from_secs(59));
        assert_eq!(allowed(&b, 100), 0, "nothing more within that minute");
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            allowed(&b, 100),
            30,
            "all 30 again once they are a minute old"
        );
    }

    #[test]
    fn refused_by_the_window_takes_nothing_from_the_per_second_bucket() {
        let clock = FakeRelativeClock::default();
        let limits = LimitSettings {
            messages_per_second: 2, // bursts of 4, one back every 500 ms
            messages_per_minute: 3,
            message_window: Duration::from_secs(1),
            ..LimitSettings::default()
        };
        let b = RateBucket::with_clock(&limits, clock.clone());
        assert_eq!(allowed(&b, 3), 3);
        for _ in 0..10 {
            let refused = b.allow().unwrap_err();
            assert!(matches!(refused.limit, Limit::PerWindow(3, _)));
        }
        // Had those ten taken cells, the per-second bucket would be empty.
        clock.advance(Duration::from_secs(1));
        assert_eq!(allowed(&b, 10), 3, "the window frees three places");
    }

    #[test]
    fn a_lazy_bucket_is_made_on_the_first_message_and_shared_by_its_clones() {
        let limits = LimitSettings {
            messages_per_second: 2,
            ..LimitSettings::default()
        };
        let bucket = LazyBucket::default();
        let other_connection = bucket.clone();
        assert!(!bucket.is_made(), "no bucket before a message");
        assert_eq!(
            std::mem::size_of::<Option<LazyBucket>>(),
            std::mem::size_of::<usize>()
        );
        // Bursts of 4: shared, the two connections together get 4.
        let taken = (0..4)
            .filter(|i| {
                let b = if i % 2 == 0 {
                    &bucket
                } else {
                    &other_connection
                };
                b.allow(&limits).is_ok()
            })
            .count();
        assert_eq!(taken, 4);
        assert!(bucket.is_made() && other_connection.is_made());
        assert!(bucket.allow(&limits).is_err());
        assert!(other_connection.allow(&limits).is_err());
    }

    #[test]
    fn a_short_window_for_tests() {
        let clock = FakeRelativeClock::default();
        let limits = LimitSettings {
            messages_per_second: 100,
            messages_per_minute: 2,
            message_window: 500 * MS,
            ..LimitSettings::default()
        };
        let b = RateBucket::with_clock(&limits, clock.clone());
        assert_eq!(allowed(&b, 5), 2);
        let refused = b.allow().unwrap_err();
        assert_eq!(refused.wait, 500 * MS);
        assert_eq!(refused.message(), "more than 2 messages per 500 ms");
        clock.advance(500 * MS);
        assert_eq!(allowed(&b, 5), 2);
    }
}
