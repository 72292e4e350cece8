//! Handshake rate limits, and the budget of refused-handshake log lines.
//!
//! A student token in a reconnect loop made 60 handshakes in 5 s, and a
//! bad-token flood 91,000 in 8 s (127 MB of log). Each handshake is cheap,
//! but everything behind it (a room join, a session row, events pushed to
//! every teacher, a log line) is not. So before the upgrade, handshakes are
//! limited per client IP (checked first, before the token is even parsed)
//! and per token subject (checked right after the token is verified); past
//! either limit the answer is 429 with `Retry-After`.
//!
//! The limiter is GCRA (the "generic cell rate algorithm", a token bucket
//! kept as one instant per key): `limit` handshakes may come at once, then
//! one every `window / limit`. A key whose instant has passed is exactly
//! as good as no key at all, so the map is pruned of those, and it never
//! holds more than [`MAX_KEYS`] keys: an attacker with many addresses can
//! make it fill, but not grow. Subjects are kept as a keyed hash (8 bytes,
//! whatever the length of `sub`); IPv6 addresses by their /64, the block
//! one host gets, so one host cannot rotate through its own addresses.
//!
//! Everything takes `now` as an argument, so the unit tests need no clock.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, RandomState},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::config::{LimitSettings, Settings};

/// Most keys a limiter tracks. At about 40 bytes a key, 4 MB at worst.
pub const MAX_KEYS: usize = 100_000;

/// Keyed GCRA limiter with bounded memory.
pub struct KeyedLimiter<K> {
    /// `window / limit`: how far each admitted request pushes its key ahead.
    interval: Duration,
    /// `window - interval`: how far ahead of now a key may be and still be
    /// admitted, which lets `limit` requests through at once.
    tolerance: Duration,
    max_keys: usize,
    /// A std Mutex: held for a map lookup, never across an `.await`.
    state: Mutex<LimiterState<K>>,
}

struct LimiterState<K> {
    /// Per key, the "theoretical arrival time" of its next request.
    next: HashMap<K, Instant>,
    /// A full map is swept of expired keys at most once per `interval`,
    /// so a flood of new keys does not pay for a sweep each.
    next_sweep: Option<Instant>,
}

impl<K: Hash + Eq> KeyedLimiter<K> {
    /// `limit` requests per `window` per key; `None` when `limit` is 0
    /// (the limit is off).
    pub fn new(limit: u32, window: Duration, max_keys: usize) -> Option<Self> {
        if limit == 0 || window.is_zero() {
            return None;
        }
        let interval = window / limit;
        Some(Self {
            interval,
            tolerance: window.saturating_sub(interval),
            max_keys,
            state: Mutex::new(LimiterState {
                next: HashMap::new(),
                next_sweep: None,
            }),
        })
    }

    /// Admits a request for `key` at `now`, or says how long to wait.
    pub fn check(&self, key: K, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let tracked = state.next.get(&key).copied();
        let next = tracked.filter(|t| *t > now).unwrap_or(now);
        let ahead = next - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        if tracked.is_none() && state.next.len() >= self.max_keys {
            if state.next_sweep.is_none_or(|t| now >= t) {
                state.next.retain(|_, t| *t > now);
                state.next_sweep = Some(now + self.interval);
            }
            if state.next.len() >= self.max_keys {
                // Still full of live keys: admit this one untracked rather
                // than refuse everyone new (or evict someone's history).
                return Ok(());
            }
        }
        state.next.insert(key, next + self.interval);
        Ok(())
    }

    /// Keys currently tracked (for tests and metrics).
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the per-IP limit counts: IPv4 addresses whole, IPv6 by /64
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
/// and the budget of refusal log lines.
pub struct HandshakeGuard {
    pub limits: HandshakeLimits,
    pub refusal_log: LogBudget,
}

impl HandshakeGuard {
    pub fn new(settings: &Settings) -> Self {
        Self {
            limits: HandshakeLimits::new(&settings.limits),
            refusal_log: LogBudget::new(settings.log.refused_handshakes_per_second),
        }
    }
}

/// The handshake limits of one server instance.
pub struct HandshakeLimits {
    per_subject: Option<KeyedLimiter<u64>>,
    per_ip: Option<KeyedLimiter<IpKey>>,
    /// Keys the subject hash; random per process, so nobody can pick
    /// subjects that collide with someone else's.
    hasher: RandomState,
}

impl HandshakeLimits {
    pub fn new(limits: &LimitSettings) -> Self {
        let window = limits.handshake_window;
        Self {
            per_subject: KeyedLimiter::new(limits.handshakes_per_subject, window, MAX_KEYS),
            per_ip: KeyedLimiter::new(limits.handshakes_per_ip, window, MAX_KEYS),
            hasher: RandomState::new(),
        }
    }

    pub fn check_ip(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        match &self.per_ip {
            Some(l) => l.check(ip.into(), now),
            None => Ok(()),
        }
    }

    pub fn check_subject(&self, sub: &str, now: Instant) -> Result<(), Duration> {
        match &self.per_subject {
            Some(l) => l.check(self.hasher.hash_one(sub), now),
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
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_burst_of_limit_then_one_per_interval() {
        let l = KeyedLimiter::new(5, 10 * S, 100).unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(l.check("a", t0), Ok(()));
        }
        assert_eq!(l.check("a", t0), Err(2 * S), "one slot frees in 10 s / 5");
        assert_eq!(l.check("b", t0), Ok(()), "another key is unaffected");
        assert_eq!(l.check("a", t0 + S), Err(S));
        assert_eq!(l.check("a", t0 + 2 * S), Ok(()));
        assert_eq!(l.check("a", t0 + 2 * S), Err(2 * S));
        // A key left alone for a window is as good as new.
        for _ in 0..5 {
            assert_eq!(l.check("a", t0 + 20 * S), Ok(()));
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
        let now = Instant::now();
        for _ in 0..10_000 {
            assert!(limits.check_subject("s1", now).is_ok());
            assert!(limits.check_ip([10, 0, 0, 1].into(), now).is_ok());
        }
    }

    #[test]
    fn memory_is_bounded_and_expired_keys_are_pruned() {
        let l = KeyedLimiter::new(2, 10 * S, 3).unwrap();
        let t0 = Instant::now();
        for k in 0..3 {
            l.check(k, t0).unwrap();
        }
        // Full of live keys: a new key is admitted but not tracked.
        assert_eq!(l.check(99, t0), Ok(()));
        assert_eq!(l.len(), 3);
        // Key 0 is still limited (its history was not evicted).
        l.check(0, t0).unwrap();
        assert!(l.check(0, t0).is_err());
        // Once the others' entries expire, a sweep makes room.
        assert_eq!(l.check(7, t0 + 20 * S), Ok(()));
        assert_eq!(l.len(), 1);
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
