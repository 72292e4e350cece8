//! The quieter signs of trouble with one student, which are not changes of
//! their status: a session from another IP or browser than the last one,
//! an `answered` count that goes backwards, and a client that keeps
//! answering while its heartbeats stopped (the page was reloaded without
//! its heartbeat, or answers come from elsewhere).
//!
//! Plain data and functions taking `now`; the room asks and raises the
//! alert kinds it is told (folded like the others, `room/alerts.rs`).
//! The previous session is the student's latest one anywhere: what this
//! room saw of it, or, when the room never saw one (it restarted, or the
//! student was elsewhere), what the cluster (Redis) or the database
//! recorded of it (the room asks off its loop, actor/join.rs).

use std::time::{Duration, Instant};

use crate::protocol::AlertKind;

#[derive(Debug, Default)]
pub struct Signals {
    /// The peer IP and user agent of the student's latest session.
    ip: Option<String>,
    user_agent: Option<String>,
    /// `answered` of the student's latest `progress`.
    last_answered: Option<u32>,
    /// The latest `heartbeat`; `None` while the client sent none (a client
    /// that never sends them is not judged by them).
    last_heartbeat: Option<Instant>,
    /// A gap was reported; the next heartbeat re-arms it.
    gap_reported: bool,
}

impl Signals {
    /// A session joined (new, reconnect or takeover) from `ip` with
    /// `user_agent`: the kinds to raise if either differs from the last.
    pub fn joined(&mut self, ip: Option<&str>, user_agent: Option<&str>) -> Vec<AlertKind> {
        let raised = self
            .previous()
            .map(|before| changes(&before, ip, user_agent))
            .unwrap_or_default();
        self.record(ip, user_agent);
        raised
    }

    /// The peer IP and user agent of the latest session this room saw;
    /// `None` when it saw none.
    pub fn previous(&self) -> Option<Client> {
        (self.ip.is_some() || self.user_agent.is_some()).then(|| Client {
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
        })
    }

    /// Remembers a session's IP and user agent as the latest.
    pub fn record(&mut self, ip: Option<&str>, user_agent: Option<&str>) {
        if let Some(ip) = ip {
            self.ip = Some(ip.to_owned());
        }
        if let Some(ua) = user_agent {
            self.user_agent = Some(ua.to_owned());
        }
    }

    /// A `progress` claimed `answered`: `answered_decreased` if below the
    /// previous claim.
    pub fn progress(&mut self, answered: u32) -> Option<AlertKind> {
        let before = self.last_answered.replace(answered);
        before
            .is_some_and(|b| answered < b)
            .then_some(AlertKind::AnsweredDecreased)
    }

    pub fn heartbeat(&mut self, now: Instant) {
        self.last_heartbeat = Some(now);
        self.gap_reported = false;
    }

    /// Progress or an answer arrived at `now`: `heartbeat_gap` once per
    /// gap if the last heartbeat is older than `gap`.
    pub fn working(&mut self, now: Instant, gap: Duration) -> Option<AlertKind> {
        let last = self.last_heartbeat?;
        if self.gap_reported || now.saturating_duration_since(last) <= gap {
            return None;
        }
        self.gap_reported = true;
        Some(AlertKind::HeartbeatGap)
    }
}

/// Where a session came from: its peer IP and user agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Client {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Client {
    /// As stored in Redis: `ip`, a newline, the user agent (a header
    /// value holds no newline).
    pub fn encode(&self) -> String {
        format!(
            "{}\n{}",
            self.ip.as_deref().unwrap_or_default(),
            self.user_agent.as_deref().unwrap_or_default()
        )
    }

    pub fn decode(s: &str) -> Self {
        let (ip, ua) = s.split_once('\n').unwrap_or((s, ""));
        let some = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        Self {
            ip: some(ip),
            user_agent: some(ua),
        }
    }
}

/// The kinds to raise for a session from `ip` with `user_agent` after one
/// from `before`.
pub fn changes(before: &Client, ip: Option<&str>, user_agent: Option<&str>) -> Vec<AlertKind> {
    let mut raised = Vec::new();
    if changed(before.ip.as_deref(), ip) {
        raised.push(AlertKind::IpChanged);
    }
    if changed(before.user_agent.as_deref(), user_agent) {
        raised.push(AlertKind::DeviceChanged);
    }
    raised
}

/// Known before, known now, and different. A session that does not tell
/// (no user agent) proves nothing.
fn changed(before: Option<&str>, now: Option<&str>) -> bool {
    matches!((before, now), (Some(b), Some(n)) if b != n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_ip_or_browser_than_last_time_is_raised() {
        let mut s = Signals::default();
        assert!(s.joined(Some("10.0.0.1"), Some("Firefox")).is_empty());
        assert!(s.joined(Some("10.0.0.1"), Some("Firefox")).is_empty());
        assert_eq!(
            s.joined(Some("10.0.0.2"), Some("Firefox")),
            [AlertKind::IpChanged]
        );
        assert_eq!(
            s.joined(Some("10.0.0.2"), Some("Chrome")),
            [AlertKind::DeviceChanged]
        );
        assert_eq!(
            s.joined(Some("10.0.0.3"), Some("Safari")),
            [AlertKind::IpChanged, AlertKind::DeviceChanged]
        );
        assert!(s.joined(None, None).is_empty(), "unknown proves nothing");
        assert!(s.joined(Some("10.0.0.3"), Some("Safari")).is_empty());
    }

    #[test]
    fn a_client_survives_its_redis_encoding() {
        let c = Client {
            ip: Some("10.0.0.1".into()),
            user_agent: Some("Mozilla/5.0 (X11; Linux)".into()),
        };
        assert_eq!(Client::decode(&c.encode()), c);
        assert_eq!(
            Client::decode(&Client::default().encode()),
            Client::default()
        );
        let no_ua = Client {
            ip: Some("::1".into()),
            user_agent: None,
        };
        assert_eq!(Client::decode(&no_ua.encode()), no_ua);
    }

    #[test]
    fn what_the_room_saw_is_the_previous_client() {
        let mut s = Signals::default();
        assert_eq!(s.previous(), None, "nothing seen yet");
        s.record(Some("10.0.0.1"), None);
        assert_eq!(s.previous().and_then(|c| c.ip).as_deref(), Some("10.0.0.1"));
        let before = s.previous().unwrap();
        assert_eq!(
            changes(&before, Some("10.0.0.9"), Some("Chrome")),
            [AlertKind::IpChanged],
            "a user agent not known before proves nothing"
        );
    }

    #[test]
    fn answered_going_down_is_raised_and_going_up_is_not() {
        let mut s = Signals::default();
        assert_eq!(s.progress(3), None);
        assert_eq!(s.progress(5), None);
        assert_eq!(s.progress(5), None);
        assert_eq!(s.progress(2), Some(AlertKind::AnsweredDecreased));
        assert_eq!(s.progress(3), None, "compared with the latest claim");
    }

    #[test]
    fn a_heartbeat_gap_while_working_is_raised_once_per_gap() {
        let gap = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut s = Signals::default();
        // Never sent a heartbeat: never judged.
        assert_eq!(s.working(t0 + gap * 10, gap), None);
        s.heartbeat(t0);
        assert_eq!(s.working(t0 + gap, gap), None, "not longer than the gap");
        let late = t0 + gap + Duration::from_millis(1);
        assert_eq!(s.working(late, gap), Some(AlertKind::HeartbeatGap));
        assert_eq!(s.working(late + gap, gap), None, "once per gap");
        s.heartbeat(late + gap);
        assert_eq!(s.working(late + gap + Duration::from_secs(1), gap), None);
        assert_eq!(
            s.working(late + gap * 3, gap),
            Some(AlertKind::HeartbeatGap),
            "re-armed by the heartbeat"
        );
    }
}
