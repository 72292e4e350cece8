//! Network incidents: many students of one exam dropping at once.
//!
//! When a building's Wi-Fi fails, thirty sockets close within a second or
//! two. Thirty `disconnected` alerts would bury everything else on the
//! dashboard and tell the proctor nothing they could act on per student.
//! So the room feeds every drop (a student's socket lost, the grace clock
//! started) to [`Incidents`]: when more than `alerts.incident_share` of
//! the exam's connected students, and at least `alerts.incident_min`, have
//! dropped within `alerts.incident_window`, it answers
//! [`Verdict::Incident`] once, and the room sends ONE `network_incident`
//! alert for the room. Those students' `disconnected` alerts (due when
//! their grace ends) are then swallowed ([`Incidents::folds_disconnect`]);
//! their `student` events still flow. Drops that keep coming within a
//! window of the last one belong to the same incident.
//!
//! A drop whose grace ended before the incident was recognised has already
//! had its alert (grace shorter than the time the incident took to form).
//! In a cluster every instance sees every drop: a room tells the others of
//! its students' lost sockets (an unnumbered `dropped` message on the
//! exam's channel), so each counts the whole exam's drops against the
//! whole exam's connected students and folds its own students' alerts
//! alike. Each recognises the incident; the first to claim it in Redis
//! (`SET NX`, lasting a window past the incident's last drop, which every
//! instance renews) sends the one alert; if Redis cannot answer, an
//! instance sends its own rather than none.
//!
//! Plain data; every method takes `now`, so its tests need no clock.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

/// The thresholds (`[alerts]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub share: f64,
    pub min: u32,
    pub window: Duration,
}

impl From<&crate::config::AlertSettings> for Thresholds {
    fn from(s: &crate::config::AlertSettings) -> Self {
        Self {
            share: s.incident_share,
            min: s.incident_min,
            window: s.incident_window,
        }
    }
}

/// What a drop means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing unusual (yet): the student's own `disconnected` alert will
    /// follow after grace, unless a later drop turns this into an incident.
    Normal,
    /// This drop made it an incident: send one `network_incident` alert,
    /// for this many students.
    Incident { students: u32 },
    /// Part of an incident already reported: nothing more to send.
    Folded,
}

#[derive(Debug, Default)]
pub struct Incidents {
    /// Drops not (yet) part of an incident, within the window, oldest
    /// first; one entry per student.
    recent: VecDeque<(Instant, Arc<str>)>,
    /// Students whose drop belongs to an incident: their `disconnected`
    /// alert is not sent. At most one entry per student of the exam.
    folded: HashSet<Arc<str>>,
    /// The incident in progress lasts until here (a window after its last
    /// drop).
    until: Option<Instant>,
}

impl Incidents {
    /// `student`'s socket was lost at `now`; `connected` students of the
    /// exam are still connected (this one no longer counted).
    pub fn dropped(
        &mut self,
        student: &Arc<str>,
        connected: usize,
        now: Instant,
        t: Thresholds,
    ) -> Verdict {
        // A drop of its own: whatever an earlier incident said about this
        // student (they came back since) is over.
        self.folded.remove(student);
        if let Some(until) = self.until {
            if now <= until {
                self.folded.insert(student.clone());
                self.until = Some(now + t.window);
                return Verdict::Folded;
            }
            self.until = None;
        }
        while let Some((at, _)) = self.recent.front() {
            if now.saturating_duration_since(*at) > t.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.retain(|(_, s)| s != student);
        self.recent.push_back((now, student.clone()));
        let dropped = self.recent.len();
        // Those who dropped were connected when the burst began.
        let population = connected + dropped;
        if dropped as u64 >= u64::from(t.min) && dropped as f64 > t.share * population as f64 {
            self.folded.extend(self.recent.drain(..).map(|(_, s)| s));
            self.until = Some(now + t.window);
            return Verdict::Incident {
                students: dropped as u32,
            };
        }
        Verdict::Normal
    }

    /// `student`'s grace ended: true if their `disconnected` alert is part
    /// of an incident (do not send it). Forgets them either way.
    pub fn folds_disconnect(&mut self, student: &str) -> bool {
        self.folded.remove(student)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        share: 0.3,
        min: 3,
        window: Duration::from_secs(5),
    };

    fn sid(n: u32) -> Arc<str> {
        format!("s{n}").into()
    }

    #[test]
    fn four_of_five_at_once_is_one_incident_and_their_alerts_are_folded() {
        let t0 = Instant::now();
        let mut inc = Incidents::default();
        let ms = |n| t0 + Duration::from_millis(n);
        // 5 connected; each drop leaves one fewer.
        assert_eq!(inc.dropped(&sid(1), 4, ms(0), T), Verdict::Normal);
        assert_eq!(inc.dropped(&sid(2), 3, ms(10), T), Verdict::Normal);
        assert_eq!(
            inc.dropped(&sid(3), 2, ms(20), T),
            Verdict::Incident { students: 3 }
        );
        assert_eq!(inc.dropped(&sid(4), 1, ms(30), T), Verdict::Folded);
        for n in 1..=4 {
            assert!(inc.folds_disconnect(&format!("s{n}")), "s{n}");
            assert!(!inc.folds_disconnect(&format!("s{n}")), "forgotten");
        }
        assert!(!inc.folds_disconnect("s5"));
    }

    #[test]
    fn one_drop_alone_is_normal() {
        let t0 = Instant::now();
        let mut inc = Incidents::default();
        assert_eq!(inc.dropped(&sid(1), 4, t0, T), Verdict::Normal);
        assert!(!inc.folds_disconnect("s1"));
    }

    #[test]
    fn drops_spread_over_more_than_the_window_are_not_an_incident() {
        let t0 = Instant::now();
        let mut inc = Incidents::default();
        for n in 0..10u32 {
            let now = t0 + Duration::from_secs(3 * u64::from(n));
            assert_eq!(
                inc.dropped(&sid(n), 20, now, T),
                Verdict::Normal,
                "drop {n}"
            );
        }
    }

    #[test]
    fn below_the_share_or_the_minimum_is_not_an_incident() {
        let t0 = Instant::now();
        let mut inc = Incidents::default();
        // 3 of 100 at once: above the minimum, far below 30 %.
        for n in 0..3 {
            assert_eq!(
                inc.dropped(&sid(n), 99 - n as usize, t0, T),
                Verdict::Normal
            );
        }
        // 2 of 2: the whole exam, but fewer than incident_min.
        let mut inc = Incidents::default();
        assert_eq!(inc.dropped(&sid(1), 1, t0, T), Verdict::Normal);
        assert_eq!(inc.dropped(&sid(2), 0, t0, T), Verdict::Normal);
    }

    #[test]
    fn the_same_student_dropping_twice_counts_once() {
        let t0 = Instant::now();
        let mut inc = Incidents::default();
        for _ in 0..5 {
            assert_eq!(inc.dropped(&sid(1), 2, t0, T), Verdict::Normal);
        }
    }

    #[test]
    fn an_incident_ends_a_window_after_its_last_drop() {
        let t0 = Instant::now();
        let mut inc = Incidents::default();
        inc.dropped(&sid(1), 2, t0, T);
        inc.dropped(&sid(2), 1, t0, T);
        assert_eq!(
            inc.dropped(&sid(3), 0, t0, T),
            Verdict::Incident { students: 3 }
        );
        // A late straggler extends it...
        let late = t0 + Duration::from_secs(4);
        assert_eq!(inc.dropped(&sid(4), 10, late, T), Verdict::Folded);
        // ...and a drop well after is news again.
        let after = late + Duration::from_secs(6);
        assert_eq!(inc.dropped(&sid(5), 10, after, T), Verdict::Normal);
        assert!(!inc.folds_disconnect("s5"));
    }

    #[test]
    fn a_student_who_came_back_and_drops_alone_later_gets_their_alert() {
        let t0 = Instant::now();
        let mut inc = Incidents::default();
        for n in 1..=3 {
            inc.dropped(&sid(n), 3 - n as usize, t0, T);
        }
        // s1 reconnected within grace, then drops alone a minute later.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(inc.dropped(&sid(1), 5, later, T), Verdict::Normal);
        assert!(!inc.folds_disconnect("s1"), "its own drop, its own alert");
    }
}
