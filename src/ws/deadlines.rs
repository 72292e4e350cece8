//! A connection's timed duties — pinging its peer, the token's end, the
//! first message's deadline — as one small state machine behind one timer.
//!
//! Each duty used to be a timer of its own in the connection's future: a
//! ping `Interval` (with its boxed `Sleep`), the token-expiry `Sleep`, and a
//! boxed `Sleep` for `limits.first_message_timeout`. The future lives as
//! long as the connection, so every idle connection paid for all three.
//! [`Deadlines`] keeps only the instants; the loop arms a single `Sleep` for
//! [`Deadlines::next`] and, when it fires, asks [`Deadlines::due`] what is
//! due. It takes `now` as an argument and owns no timer, so its tests need
//! no runtime and no sleeps.

use std::time::Duration;

use tokio::time::Instant;

/// What the timer woke the connection for, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// The token's deadline as last armed: the caller checks the wall clock
    /// and either ends the connection or arms it again
    /// ([`Deadlines::set_expiry`]).
    Expiry,
    /// No text message by `limits.first_message_timeout` (unless one is
    /// waiting to be read: the caller looks before closing).
    FirstMessage,
    /// Time to ping the peer.
    Ping,
    /// A ping went unanswered: the peer is gone.
    PingTimeout,
}

/// The instants a connection's loop waits for (see the module doc).
#[derive(Debug)]
pub(crate) struct Deadlines {
    /// `ws.ping_interval`.
    interval: Duration,
    next_ping: Instant,
    /// The token's end (exp + grace), or an earlier instant to look again
    /// (`lifetime::next_wake` caps it).
    expiry: Instant,
    /// Until the first text message, if `limits.first_message_timeout` is set.
    first_message: Option<Instant>,
    /// The client's last frame, of any kind.
    last_seen: Instant,
    /// A ping went out (at an earlier tick, so an interval ago or more)
    /// since the client's last frame. A connection is dead when a ping
    /// stayed unanswered, not merely when the client was silent: while the
    /// queue is never empty (a large snapshot to a slow link) the loop
    /// writes and sends no ping, and a client never asked owes no pong.
    pinged: bool,
}

impl Deadlines {
    /// A connection opened at `now`: its first ping an interval later.
    /// `first_timeout` zero means no first-message deadline.
    pub(crate) fn new(
        now: Instant,
        interval: Duration,
        expiry: Instant,
        first_timeout: Duration,
    ) -> Self {
        Self {
            interval,
            next_ping: now + interval,
            expiry,
            first_message: (!first_timeout.is_zero()).then(|| now + first_timeout),
            last_seen: now,
            pinged: false,
        }
    }

    /// When the timer must fire next.
    pub(crate) fn next(&self) -> Instant {
        let next = self.next_ping.min(self.expiry);
        self.first_message.map_or(next, |first| next.min(first))
    }

    /// The client sent a frame (any kind): it is alive.
    pub(crate) fn heard(&mut self, now: Instant) {
        self.last_seen = now;
        self.pinged = false;
    }

    /// The client sent a text message: the first-message deadline is met.
    pub(crate) fn spoke(&mut self) {
        self.first_message = None;
    }

    /// Arms the token's deadline anew (a `refresh`, or a capped wait ended).
    pub(crate) fn set_expiry(&mut self, at: Instant) {
        self.expiry = at;
    }

    /// What is due at `now`, the most urgent first; `None` if nothing is
    /// (the timer fired early, or for a deadline since moved). Taking a
    /// `Ping` or `PingTimeout` schedules the next ping an interval from
    /// `now` (a late tick delays the ones after it, as tokio's
    /// `MissedTickBehavior::Delay` did).
    pub(crate) fn due(&mut self, now: Instant) -> Option<Due> {
        if self.expiry <= now {
            return Some(Due::Expiry);
        }
        if self.first_message.is_some_and(|first| first <= now) {
            return Some(Due::FirstMessage);
        }
        if self.next_ping <= now {
            self.next_ping = now + self.interval;
            if self.pinged && now.saturating_duration_since(self.last_seen) > self.interval * 2 {
                return Some(Due::PingTimeout);
            }
            self.pinged = true;
            return Some(Due::Ping);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + S * u32::try_from(secs).unwrap()
    }

    #[test]
    fn pings_every_interval_and_gives_up_on_a_silent_peer() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0, 15 * S, at(t0, 3600), Duration::ZERO);
        assert_eq!(d.next(), at(t0, 15));
        assert_eq!(d.due(at(t0, 14)), None, "early");
        assert_eq!(d.due(at(t0, 15)), Some(Due::Ping));
        assert_eq!(d.next(), at(t0, 30));
        // Unanswered, but only 30 s silent: another ping.
        assert_eq!(d.due(at(t0, 30)), Some(Due::Ping));
        // 45 s silent with a ping out: gone.
        assert_eq!(d.due(at(t0, 45)), Some(Due::PingTimeout));
    }

    #[test]
    fn an_answer_keeps_the_connection_and_a_late_tick_delays_the_next() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0, 15 * S, at(t0, 3600), Duration::ZERO);
        assert_eq!(d.due(at(t0, 15)), Some(Due::Ping));
        d.heard(at(t0, 16));
        // Handled 5 s late: the next one an interval after that.
        assert_eq!(d.due(at(t0, 35)), Some(Due::Ping));
        assert_eq!(d.next(), at(t0, 50));
        d.heard(at(t0, 40));
        assert_eq!(d.due(at(t0, 50)), Some(Due::Ping));
        assert_eq!(d.due(at(t0, 65)), Some(Due::Ping), "25 s silent only");
        assert_eq!(d.due(at(t0, 80)), Some(Due::PingTimeout));
    }

    #[test]
    fn the_token_end_comes_first_and_stays_due_until_re_armed() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0, 15 * S, at(t0, 15), 15 * S);
        assert_eq!(d.next(), at(t0, 15));
        assert_eq!(d.due(at(t0, 15)), Some(Due::Expiry));
        assert_eq!(d.due(at(t0, 15)), Some(Due::Expiry), "until set again");
        d.set_expiry(at(t0, 100));
        assert_eq!(d.due(at(t0, 15)), Some(Due::FirstMessage));
        d.spoke();
        assert_eq!(d.due(at(t0, 15)), Some(Due::Ping));
        assert_eq!(d.next(), at(t0, 30));
        assert_eq!(d.due(at(t0, 100)), Some(Due::Expiry));
    }

    #[test]
    fn without_a_first_message_timeout_there_is_no_such_deadline() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0, 15 * S, at(t0, 3600), Duration::ZERO);
        assert_eq!(d.due(at(t0, 1)), None);
        let mut d = Deadlines::new(t0, 15 * S, at(t0, 3600), 2 * S);
        assert_eq!(d.next(), at(t0, 2));
        assert_eq!(d.due(at(t0, 2)), Some(Due::FirstMessage));
        d.heard(at(t0, 2));
        assert_eq!(
            d.due(at(t0, 2)),
            Some(Due::FirstMessage),
            "a ping is not a message"
        );
    }
}
