//! Handshake limits (rate per client IP and per token subject, open
//! connections per client IP), and the budget of refused-handshake log lines.
//!
//! A student token in a reconnect loop made 60 handshakes in 5 s, and a
//! bad-token flood 91,000 in 8 s (127 MB of log). Each handshake is cheap,
//! but everything behind it (a room join, a session row, events pushed to
//! every teacher, a log line) is not. So before the upgrade, handshakes are
//! limited per client IP (checked first, before the token is even parsed)
//! and per token subject (checked right after the token is verified); past
//! either limit the answer is 429 with `Retry-After`. The client IP is the
//! TCP peer, or what a trusted proxy says it is ([`crate::client_ip`]).
//!
//! The rate limits are governor's keyed GCRA (the "generic cell rate
//! algorithm", a token bucket kept as one instant per key): `limit`
//! handshakes may come at once, then one every `window / limit`. governor
//! keeps its keys in a `DashMap` and offers `retain_recent()` to drop the
//! keys that are as good as new; what it does not do is bound the map. So
//! the map is governor's own [`DashMapStateStore`] behind [`BoundedStore`],
//! which admits a key it has no room for *untracked* (the key's decision is
//! made as for a fresh key and not stored) once [`MAX_KEYS`] keys are held
//! and a sweep of expired ones freed nothing: an attacker with many
//! addresses can make the map fill, but not grow, and the keys already
//! tracked (someone's reconnect loop) stay limited. Subjects are kept as a
//! keyed hash (8 bytes, whatever the length of `sub`); IPv6 addresses by
//! their /64, the block one host gets, so one host cannot rotate through
//! its own addresses.
//!
//! The limiters read a governor clock ([`MonotonicClock`] in the server);
//! the unit tests hand them a `FakeRelativeClock` and advance it, so they
//! need no sleeps.
//!
//! Open connections per client IP are counted by [`connections`]: a slot
//! taken before the upgrade and held by the connection's task.

pub mod connections;

use std::{
    hash::{BuildHasher, Hash, RandomState},
    net::IpAddr,
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, MonotonicClock},
    middleware::NoOpMiddleware,
    nanos::Nanos,
    state::{
        StateStore,
        keyed::{DashMapStateStore, ShrinkableKeyedStateStore},
    },
};

use crate::config::{LimitSettings, Settings};

pub use connections::{ConnectionCounter, ConnectionSlot};

/// Most keys a limiter tracks. At about 40 bytes a key, 4 MB at worst.
pub const MAX_KEYS: usize = 100_000;

/// governor's `DashMap` store, bounded: past `max_keys` keys, a key it does
/// not hold yet is decided as a fresh key and not stored.
pub struct BoundedStore<K: Hash + Eq + Clone> {
    inner: DashMapStateStore<K>,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // Racing insertions may overshoot `max_keys` by the number of
        // handshakes in flight at that instant: a bound all the same.
        if self.inner.len() >= self.max_keys && !self.inner.contains_key(key) {
            return f(None).map(|(outcome, _)| outcome);
        }
        self.inner.measure_and_replace(key, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        self.inner.retain_recent(drop_below);
    }
    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&self.inner);
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// A keyed GCRA limiter (governor's) with bounded memory.
pub struct KeyedLimiter<K: Hash + Eq + Clone, C: Clock = MonotonicClock> {
    limiter: RateLimiter<K, BoundedStore<K>, C, NoOpMiddleware<C::Instant>>,
    max_keys: usize,
    /// A full map is swept of expired keys at most once per `interval`,
    /// so a flood of new keys does not pay for a sweep each. A std Mutex:
    /// held for a comparison, never across an `.await`.
    next_sweep: Mutex<Option<C::Instant>>,
    interval: Nanos,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `limit` requests per `window` per key; `None` when `limit` is 0
    /// (the limit is off).
    pub fn new(limit: u32, window: Duration, max_keys: usize) -> Option<Self> {
        Self::with_clock(limit, window, max_keys, MonotonicClock)
    }
}

impl<K: Hash + Eq + Clone, C: Clock> KeyedLimiter<K, C> {
    pub fn with_clock(limit: u32, window: Duration, max_keys: usize, clock: C) -> Option<Self> {
        let burst = NonZeroU32::new(limit)?;
        let interval = window / limit;
        let quota = Quota::with_period(interval)?.allow_burst(burst);
        let store = BoundedStore {
            inner: DashMapStateStore::default(),
            max_keys,
        };
        Some(Self {
            limiter: RateLimiter::new(quota, store, clock),
            max_keys,
            next_sweep: Mutex::new(None),
            interval: interval.into(),
        })
    }

    /// Admits a request for `key` now, or says how long to wait.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        if self.limiter.len() >= self.max_keys {
            self.sweep_if_due();
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Drops the keys that are as good as new, at most once per interval.
    fn sweep_if_due(&self) {
        let now = self.limiter.clock().now();
        {
            let mut next = self.next_sweep.lock().unwrap_or_else(|p| p.into_inner());
            if next.is_some_and(|t| now < t) {
                return;
            }
            *next = Some(now + self.interval);
        }
        self.limiter.retain_recent();
    }

    /// Keys currently tracked (for tests and metrics).
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the per-IP limits count: IPv4 addresses whole, IPv6 by /64
/// (IPv4-mapped IPv6 addresses as the IPv4 address they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    V4(u32),
    V6Prefix(u64),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4.to_bits()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4.to_bits()),
                None => IpKey::V6Prefix((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

/// What the handshake keeps per instance to protect itself: the limits,
/// the open connections per client IP, and the budget of refusal log lines.
pub struct HandshakeGuard {
    pub limits: HandshakeLimits,
    pub connections: ConnectionCounter,
    pub refusal_log: LogBudget,
}

impl HandshakeGuard {
    pub fn new(settings: &Settings) -> Self {
        Self {
            limits: HandshakeLimits::new(&settings.limits),
            connections: ConnectionCounter::new(settings.limits.connections_per_ip),
            refusal_log: LogBudget::new(settings.log.refused_handshakes_per_second),
        }
    }
}

/// The handshake rate limits of one server instance.
pub struct HandshakeLimits<C: Clock = MonotonicClock> {
    per_subject: Option<KeyedLimiter<u64, C>>,
    per_ip: Option<KeyedLimiter<IpKey, C>>,
    /// Keys the subject hash; random per process, so nobody can pick
    /// subjects that collide with someone else's.
    hasher: RandomState,
}

impl HandshakeLimits {
    pub fn new(limits: &LimitSettings) -> Self {
        Self::with_clock(limits, MonotonicClock)
    }
}

impl<C: Clock + Clone> HandshakeLimits<C> {
    pub fn with_clock(limits: &LimitSettings, clock: C) -> Self {
        let window = limits.handshake_window;
        Self {
            per_subject: KeyedLimiter::with_clock(
                limits.handshakes_per_subject,
                window,
                MAX_KEYS,
                clock.clone(),
            ),
            per_ip: KeyedLimiter::with_clock(limits.handshakes_per_ip, window, MAX_KEYS, clock),
            hasher: RandomState::new(),
        }
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        match &self.per_ip {
            Some(l) => l.check(&ip.into()),
            None => Ok(()),
        }
    }

    pub fn check_subject(&self, sub: &str) -> Result<(), Duration> {
        match &self.per_subject {
            Some(l) => l.check(&self.hasher.hash_one(sub)),
            None => Ok(()),
        }
    }
}

/// A budget of log lines per second, process-wide: past it, lines are
/// counted instead of written, and one summary line reports the count.
pub struct LogBudget {
    per_second: u32,
    state: Mutex<BudgetState>,
}

#[derive(Default)]
struct BudgetState {
    window_start: Option<Instant>,
    written: u32,
    /// Suppressed since the last summary.
    suppressed: u64,
    /// A summary is scheduled (one at a time).
    summary_due: bool,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Write,
    /// Count it; the caller schedules the summary when told to.
    Suppress {
        schedule_summary: bool,
    },
}

impl LogBudget {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            state: Mutex::default(),
        }
    }

    pub fn admit(&self, now: Instant) -> Verdict {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.window_start
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1))
        {
            s.window_start = Some(now);
            s.written = 0;
        }
        if s.written < self.per_second {
            s.written += 1;
            return Verdict::Write;
        }
        s.suppressed += 1;
        let schedule_summary = !s.summary_due;
        s.summary_due = true;
        Verdict::Suppress { schedule_summary }
    }

    /// Takes the count for a summary line. Zero means the flood is over:
    /// the next suppressed line schedules a new summary.
    pub fn take_suppressed(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let n = std::mem::take(&mut s.suppressed);
        if n == 0 {
            s.summary_due = false;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn limiter<K: Hash + Eq + Clone>(
        limit: u32,
        window: Duration,
        max_keys: usize,
    ) -> (KeyedLimiter<K, FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let l = KeyedLimiter::with_clock(limit, window, max_keys, clock.clone()).unwrap();
        (l, clock)
    }

    #[test]
    fn a_burst_of_limit_then_one_per_interval() {
        let (l, clock) = limiter(5, 10 * S, 100);
        for _ in 0..5 {
            assert_eq!(l.check(&"a"), Ok(()));
        }
        assert_eq!(l.check(&"a"), Err(2 * S), "one slot frees in 10 s / 5");
        assert_eq!(l.check(&"b"), Ok(()), "another key is unaffected");
        clock.advance(S);
        assert_eq!(l.check(&"a"), Err(S));
        clock.advance(S);
        assert_eq!(l.check(&"a"), Ok(()));
        assert_eq!(l.check(&"a"), Err(2 * S));
        // A key left alone for a window is as good as new.
        clock.advance(18 * S);
        for _ in 0..5 {
            assert_eq!(l.check(&"a"), Ok(()));
        }
    }

    #[test]
    fn zero_turns_the_limit_off() {
        assert!(KeyedLimiter::<u8>::new(0, S, 10).is_none());
        let limits = HandshakeLimits::new(&LimitSettings {
            handshakes_per_subject: 0,
            handshakes_per_ip: 0,
            ..LimitSettings::default()
        });
        for _ in 0..10_000 {
            assert!(limits.check_subject("s1").is_ok());
            assert!(limits.check_ip([10, 0, 0, 1].into()).is_ok());
        }
    }

    #[test]
    fn memory_is_bounded_and_expired_keys_are_pruned() {
        let (l, clock) = limiter(2, 10 * S, 3);
        for k in 0..3 {
            l.check(&k).unwrap();
        }
        // Full of live keys: a new key is admitted but not tracked...
        for _ in 0..10 {
            assert_eq!(l.check(&99), Ok(()));
        }
        assert_eq!(l.len(), 3);
        // ...while key 0 is still limited (its history was not evicted).
        l.check(&0).unwrap();
        assert!(l.check(&0).is_err());
        // Once the others' entries expire, a sweep makes room.
        clock.advance(20 * S);
        assert_eq!(l.check(&7), Ok(()));
        assert_eq!(l.len(), 1);
        assert_eq!(l.check(&7), Ok(()));
        assert!(l.check(&7).is_err(), "the new key is tracked, and limited");
    }

    #[test]
    fn the_handshake_limits_count_per_subject_and_per_ip() {
        let clock = FakeRelativeClock::default();
        let limits = HandshakeLimits::with_clock(
            &LimitSettings {
                handshakes_per_subject: 2,
                handshakes_per_ip: 3,
                handshake_window: 60 * S,
                ..LimitSettings::default()
            },
            clock.clone(),
        );
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert!(limits.check_subject("s1").is_ok());
        assert!(limits.check_subject("s1").is_ok());
        assert_eq!(limits.check_subject("s1"), Err(30 * S));
        assert!(limits.check_subject("s2").is_ok());
        for _ in 0..3 {
            assert!(limits.check_ip(ip).is_ok());
        }
        assert_eq!(limits.check_ip(ip), Err(20 * S));
        assert!(limits.check_ip([10, 0, 0, 2].into()).is_ok());
        clock.advance(20 * S);
        assert!(limits.check_ip(ip).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(IpKey::from(a), IpKey::from(b));
        assert_ne!(IpKey::from(a), IpKey::from(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            IpKey::from(mapped),
            IpKey::from(IpAddr::from([192, 0, 2, 7]))
        );
    }

    #[test]
    fn the_log_budget_writes_n_per_second_and_schedules_one_summary() {
        let b = LogBudget::new(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.admit(t0), Verdict::Write);
        }
        assert_eq!(
            b.admit(t0),
            Verdict::Suppress {
                schedule_summary: true
            }
        );
        for _ in 0..99 {
            assert_eq!(
                b.admit(t0 + S / 2),
                Verdict::Suppress {
                    schedule_summary: false
                }
            );
        }
        assert_eq!(b.take_suppressed(), 100);
        // The next second writes again; the summary is still running.
        assert_eq!(b.admit(t0 + S), Verdict::Write);
        assert_eq!(b.take_suppressed(), 0, "nothing new: the summary ends");
        for _ in 0..2 {
            b.admit(t0 + S);
        }
        assert_eq!(
            b.admit(t0 + S),
            Verdict::Suppress {
                schedule_summary: true
            },
            "a new flood schedules a new summary"
        );
    }
}
