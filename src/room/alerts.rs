//! Which alerts teachers are sent, and how repeats are folded.
//!
//! An alert is one line on every teacher's dashboard. A student whose page
//! loses focus fifty times in five seconds must not fill that list and push
//! everyone else's alerts off it. So alerts of one kind for one student are
//! folded within a window (`exam.alert_window`): the first is sent at once;
//! repeats inside the window are only counted (in the student's
//! `alerts`, which rides along in their `student` events), and when the
//! window ends one alert carries the count, if anything was folded. That
//! flush starts the next window, so a steady stream of repeats yields one
//! alert per window: at most `1 + duration / window` per student and kind.
//!
//! Plain data and functions that take the current time as an argument: the
//! room asks, schedules the flush timer it is told about, and sends.

use std::time::{Duration, Instant};

use crate::protocol::{AlertCounts, AlertKind};

/// What to do with an alert that was just raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raised {
    /// Send it now; the student's count of this kind, this one included.
    Send(u32),
    /// Folded into the last one sent. `flush_at` is set for the first
    /// repeat of a window: the room schedules [`Folding::flush`] then.
    Folded { flush_at: Option<Instant> },
}

/// One student's folding state, per alert kind. On the heap, and only
/// once the student's first alert is raised: nine windows are 216 bytes,
/// and most students never raise one, so every idle student's entry in
/// the room would carry them for nothing.
#[derive(Debug, Default)]
pub struct Folding {
    kinds: Option<Box<[KindFold; FOLDED_KINDS]>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct KindFold {
    /// When the current window began: the last alert of this kind sent.
    sent_at: Option<Instant>,
    /// Repeats folded since then; a flush is scheduled while non-zero.
    folded: u32,
}

/// The per-student kinds, which fold.
const FOLDED_KINDS: usize = 9;

/// A kind's slot; `None` for those that never fold: a room's
/// `network_incident` and a proctor's `report` are each news.
fn index(kind: AlertKind) -> Option<usize> {
    Some(match kind {
        AlertKind::FocusLost => 0,
        AlertKind::Idle => 1,
        AlertKind::Disconnected => 2,
        AlertKind::SecondSession => 3,
        AlertKind::FullscreenExit => 4,
        AlertKind::IpChanged => 5,
        AlertKind::DeviceChanged => 6,
        AlertKind::AnsweredDecreased => 7,
        AlertKind::HeartbeatGap => 8,
        AlertKind::NetworkIncident | AlertKind::Report => return None,
    })
}

impl Folding {
    /// An alert of `kind` was raised at `now`: counts it in `counts` and
    /// says whether to send it or fold it. A zero `window` folds nothing.
    pub fn raise(
        &mut self,
        counts: &mut AlertCounts,
        kind: AlertKind,
        now: Instant,
        window: Duration,
    ) -> Raised {
        let count = counts.bump(kind);
        let Some(i) = index(kind) else {
            return Raised::Send(count);
        };
        let k = &mut self.kinds.get_or_insert_with(Box::default)[i];
        match k.sent_at {
            Some(start) if now.saturating_duration_since(start) < window => {
                k.folded += 1;
                Raised::Folded {
                    flush_at: (k.folded == 1).then(|| start + window),
                }
            }
            // No window open (or it ended before its flush ran): a fresh
            // alert, which also covers anything folded before it.
            _ => {
                k.sent_at = Some(now);
                k.folded = 0;
                Raised::Send(count)
            }
        }
    }

    /// The flush of `kind` is due: the count to send if repeats were folded
    /// since the last alert (then a new window starts at `now`), or `None`.
    pub fn flush(&mut self, counts: &AlertCounts, kind: AlertKind, now: Instant) -> Option<u32> {
        let k = &mut self.kinds.as_mut()?[index(kind)?];
        if k.folded == 0 {
            return None;
        }
        k.folded = 0;
        k.sent_at = Some(now);
        Some(counts.get(kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(10);

    #[test]
    fn a_student_who_never_raised_an_alert_carries_no_windows() {
        let mut f = Folding::default();
        assert_eq!(std::mem::size_of::<Folding>(), std::mem::size_of::<usize>());
        assert!(f.kinds.is_none());
        // A flush with nothing raised leaves it so; the first raise fills it.
        assert_eq!(
            f.flush(&AlertCounts::default(), AlertKind::Idle, Instant::now()),
            None
        );
        assert!(f.kinds.is_none());
        let mut counts = AlertCounts::default();
        f.raise(&mut counts, AlertKind::Idle, Instant::now(), W);
        assert!(f.kinds.is_some());
    }

    fn ms(start: Instant, n: u64) -> Instant {
        start + Duration::from_millis(n)
    }

    #[test]
    fn the_first_alert_is_sent_and_repeats_in_the_window_are_folded() {
        let t0 = Instant::now();
        let (mut f, mut c) = (Folding::default(), AlertCounts::default());
        assert_eq!(
            f.raise(&mut c, AlertKind::FocusLost, t0, W),
            Raised::Send(1)
        );
        // Only the first repeat asks for a flush, at the window's end.
        assert_eq!(
            f.raise(&mut c, AlertKind::FocusLost, ms(t0, 100), W),
            Raised::Folded {
                flush_at: Some(t0 + W)
            }
        );
        for i in 2..50 {
            assert_eq!(
                f.raise(&mut c, AlertKind::FocusLost, ms(t0, 100 * i), W),
                Raised::Folded { flush_at: None }
            );
        }
        assert_eq!(c.focus_lost, 50);
        // The flush carries the count; a second flush has nothing to say.
        assert_eq!(f.flush(&c, AlertKind::FocusLost, t0 + W), Some(50));
        assert_eq!(f.flush(&c, AlertKind::FocusLost, t0 + W), None);
    }

    #[test]
    fn a_steady_stream_yields_one_alert_per_window() {
        let t0 = Instant::now();
        let (mut f, mut c) = (Folding::default(), AlertCounts::default());
        let mut sent = 0;
        let mut flush_at = None;
        // One repeat every 100 ms for 60 s, flushes run when due.
        for i in 0..600 {
            let now = ms(t0, 100 * i);
            if let Some(at) = flush_at
                && now >= at
            {
                flush_at = None;
                sent += u32::from(f.flush(&c, AlertKind::Idle, at).is_some());
            }
            match f.raise(&mut c, AlertKind::Idle, now, W) {
                Raised::Send(_) => sent += 1,
                Raised::Folded { flush_at: Some(at) } => flush_at = Some(at),
                Raised::Folded { flush_at: None } => {}
            }
        }
        assert_eq!(c.idle, 600);
        assert!(sent <= 1 + 60 / 10, "{sent} alerts in 60 s");
        assert!(sent >= 60 / 10, "still told every window: {sent}");
    }

    #[test]
    fn kinds_fold_separately_and_a_quiet_window_sends_at_once() {
        let t0 = Instant::now();
        let (mut f, mut c) = (Folding::default(), AlertCounts::default());
        assert_eq!(
            f.raise(&mut c, AlertKind::FocusLost, t0, W),
            Raised::Send(1)
        );
        assert_eq!(f.raise(&mut c, AlertKind::Idle, t0, W), Raised::Send(1));
        // After a quiet window, the next one is news again.
        assert_eq!(
            f.raise(&mut c, AlertKind::FocusLost, t0 + W, W),
            Raised::Send(2)
        );
        // Nothing was folded: no flush.
        assert_eq!(f.flush(&c, AlertKind::FocusLost, t0 + W * 2), None);
    }

    #[test]
    fn an_alert_after_a_late_flush_is_sent_and_the_flush_stays_quiet() {
        let t0 = Instant::now();
        let (mut f, mut c) = (Folding::default(), AlertCounts::default());
        f.raise(&mut c, AlertKind::Disconnected, t0, W);
        f.raise(&mut c, AlertKind::Disconnected, ms(t0, 1), W);
        // The window ended but its flush has not run yet.
        assert_eq!(
            f.raise(&mut c, AlertKind::Disconnected, t0 + W, W),
            Raised::Send(3)
        );
        assert_eq!(f.flush(&c, AlertKind::Disconnected, t0 + W), None);
    }

    #[test]
    fn the_new_kinds_fold_too_and_reports_never_do() {
        let t0 = Instant::now();
        let (mut f, mut c) = (Folding::default(), AlertCounts::default());
        for kind in [AlertKind::FullscreenExit, AlertKind::HeartbeatGap] {
            assert_eq!(f.raise(&mut c, kind, t0, W), Raised::Send(1));
            assert!(matches!(
                f.raise(&mut c, kind, t0, W),
                Raised::Folded { .. }
            ));
        }
        for n in 1..=3 {
            assert_eq!(f.raise(&mut c, AlertKind::Report, t0, W), Raised::Send(n));
        }
        assert_eq!(f.flush(&c, AlertKind::Report, t0 + W), None);
    }

    #[test]
    fn a_zero_window_folds_nothing() {
        let t0 = Instant::now();
        let (mut f, mut c) = (Folding::default(), AlertCounts::default());
        for n in 1..=3 {
            assert_eq!(
                f.raise(&mut c, AlertKind::SecondSession, t0, Duration::ZERO),
                Raised::Send(n)
            );
        }
    }
}
