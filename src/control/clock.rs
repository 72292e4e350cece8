//! Deadlines: the exam's clock and each student's, as plain data.
//!
//! Nothing here reads the time or sets a timer: every question takes `now`
//! (Unix milliseconds) and the room actor schedules what it is told, the
//! way `quinn-proto` leaves time to `quinn`. The arithmetic is the design
//! note's (shared/design/exam-clock.md), see [`StudentClock::deadline`].
//!
//! Pauses are kept as spans, not as a running total, because a total would
//! be wrong for someone: the exam's pauses count for a student only after
//! that student's `started_at`, and students start at different instants;
//! an exam pause and a student's own pause that overlap count once. So
//! both vectors are kept whole, and bounded at [`MAX_PAUSES`] spans each:
//! ten thousand pause/resume toggles on one exam is abuse, not
//! invigilation, and past it further pauses are refused (the exam's with
//! [`InvalidTransition`], a student's with [`AlreadyInState::TooManyPauses`]).
//! At that bound a deadline costs a sort of 20,000 spans, well under a
//! millisecond.

use serde::{Deserialize, Serialize};

use super::phase::{InvalidTransition, Phase};

pub use super::validate::{FieldError, validate_accommodation, validate_timing};

/// The most pause spans one exam, or one student, may record.
pub const MAX_PAUSES: usize = 10_000;

/// The most extra time extensions may add up to for one student: 10,000
/// minutes (about a week), like `extra_minutes`.
pub const MAX_EXTENSION_MS: i64 = 10_000 * MINUTE_MS;

const MINUTE_MS: i64 = 60_000;

/// How the base time of a deadline is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// Everyone's time ends at `closes_at` (or `opens_at + duration`).
    #[default]
    Fixed,
    /// Each student's time starts at their first admission and lasts the
    /// duration, never (for the base) past `closes_at`.
    PerStudent,
}

/// One pause, `[from, to)` in Unix milliseconds; `to` is `None` while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub from: i64,
    pub to: Option<i64>,
}

/// The exam's side of the clock: its phase, timing settings and the
/// exam-wide pauses. Stored with the exam; the room owns the live copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExamClock {
    pub phase: Phase,
    pub timing: Timing,
    pub opens_at: Option<i64>,
    pub closes_at: Option<i64>,
    pub duration_ms: Option<i64>,
    /// Whether a `scheduled` exam starts by itself at `opens_at`.
    pub auto_start: bool,
    /// The first entry into `in_progress`: the fixed start when there is no
    /// `opens_at`, and where exam pauses start counting for a student who
    /// never started.
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// Exam-wide pauses (phase `paused`), oldest first; the last one is open
    /// exactly while the phase is `paused`.
    #[serde(default)]
    pub pauses: Vec<Span>,
}

/// One student's side of the clock: accommodations, extensions, own pauses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudentClock {
    /// Accommodation added after the base time, in minutes (default 0).
    pub extra_minutes: u32,
    /// Accommodation scaling the base time span (default 1.0).
    pub multiplier: f64,
    /// The sum of the `extend`s granted, clamped as applied (may be negative).
    pub extension_ms: i64,
    /// First admission while the exam was `in_progress` or `paused`, or when
    /// the exam entered `in_progress` while they waited.
    pub started_at: Option<i64>,
    /// This student's own pauses, oldest first; the last is open while they
    /// are paused.
    #[serde(default)]
    pub pauses: Vec<Span>,
}

impl Default for StudentClock {
    fn default() -> Self {
        StudentClock {
            extra_minutes: 0,
            multiplier: 1.0,
            extension_ms: 0,
            started_at: None,
            pauses: Vec::new(),
        }
    }
}

/// Why a student's pause or resume changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AlreadyInState {
    /// `pause` of a student who is already paused.
    #[error("the student is already paused")]
    Paused,
    /// `resume` of a student who is not paused.
    #[error("the student is not paused")]
    Running,
    /// `pause` refused: the student already has [`MAX_PAUSES`] pauses.
    #[error("the student has reached the limit of {MAX_PAUSES} pauses")]
    TooManyPauses,
}

/// `extend` on a student without a deadline (untimed exam, or a
/// per-student exam they have not started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the student has no deadline to extend")]
pub struct Untimed;

/// What an `extend` did, for the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extended {
    /// Added to the student's deadline (ms); less negative than asked when
    /// clamped.
    pub applied_ms: i64,
    /// Whether the request was cut: a negative one so the deadline stays
    /// >= now, a positive one at [`MAX_EXTENSION_MS`] in all.
    pub clamped: bool,
    /// The new deadline (as if a running pause ended now).
    pub deadline: i64,
}

impl ExamClock {
    /// A fresh exam's clock: nothing started, ended or paused yet.
    pub fn new(
        phase: Phase,
        timing: Timing,
        opens_at: Option<i64>,
        closes_at: Option<i64>,
        duration_ms: Option<i64>,
        auto_start: bool,
    ) -> Self {
        ExamClock {
            phase,
            timing,
            opens_at,
            closes_at,
            duration_ms,
            auto_start,
            started_at: None,
            ended_at: None,
            pauses: Vec::new(),
        }
    }

    /// Whether the exam-wide pause runs (phase `paused`).
    pub fn is_paused(&self) -> bool {
        self.phase == Phase::Paused
    }

    /// Changes phase at `now`: leaving `paused` closes its span, entering it
    /// opens one, the first `in_progress` sets `started_at`, `ended` sets
    /// `ended_at`. Err for an undrawn transition, and for a pause past
    /// [`MAX_PAUSES`]; on Err nothing changed.
    pub fn set_phase(&mut self, to: Phase, now: i64) -> Result<(), InvalidTransition> {
        let refused = InvalidTransition {
            from: self.phase,
            to,
        };
        if !self.phase.can_become(to) || (to == Phase::Paused && self.pauses.len() >= MAX_PAUSES) {
            return Err(refused);
        }
        if self.phase == Phase::Paused {
            close_last(&mut self.pauses, now);
        }
        match to {
            Phase::Paused => self.pauses.push(Span {
                from: now,
                to: None,
            }),
            Phase::InProgress if self.started_at.is_none() => self.started_at = Some(now),
            Phase::Ended => self.ended_at = Some(now),
            _ => {}
        }
        self.phase = to;
        Ok(())
    }

    /// When a `scheduled` exam with `auto_start` starts by itself: at
    /// `opens_at` (which may already have passed: start at once).
    pub fn auto_start_at(&self) -> Option<i64> {
        match self.phase {
            Phase::Scheduled if self.auto_start => self.opens_at,
            _ => None,
        }
    }

    /// When an `in_progress` exam ends by itself: its scheduled end
    /// (`closes_at`, or for fixed timing `start + duration`), or the latest
    /// deadline among `students` (the unfinished ones, which the caller
    /// picks) when accommodations, extensions or pauses run past it.
    ///
    /// None while paused (the end moves with the pause: ask again on
    /// resume), outside `in_progress`, or when there is no scheduled end (no
    /// `closes_at` and, for fixed timing, no duration); then only students'
    /// own deadlines (`time_up`) and a proctor end it. A student whose own
    /// pause runs counts with the deadline as if it ended now, so the answer
    /// moves later while they stay paused: at the timer, ask again. The
    /// instant may be <= `now`: end at once.
    pub fn auto_end_at<'a>(
        &self,
        students: impl IntoIterator<Item = &'a StudentClock>,
        now: i64,
    ) -> Option<i64> {
        if self.phase != Phase::InProgress {
            return None;
        }
        let scheduled = match (self.closes_at, self.timing) {
            (Some(closes_at), _) => closes_at,
            (None, Timing::Fixed) => self.fixed_window()?.1,
            (None, Timing::PerStudent) => return None,
        };
        Some(
            students
                .into_iter()
                .filter_map(|s| s.deadline(self, now))
                .fold(scheduled, i64::max),
        )
    }

    /// Fixed timing's `(start, end)` before accommodations: start is
    /// `opens_at` or else the first `in_progress`; end is `closes_at` or else
    /// `start + duration`. None when either cannot be known yet.
    fn fixed_window(&self) -> Option<(i64, i64)> {
        let start = self.opens_at.or(self.started_at);
        match (start, self.closes_at, self.duration_ms) {
            (Some(start), Some(end), _) => Some((start, end)),
            (Some(start), None, Some(duration)) => Some((start, start.saturating_add(duration))),
            _ => None,
        }
    }
}

impl StudentClock {
    /// Whether this student's own pause runs (not the exam's).
    pub fn is_paused(&self) -> bool {
        self.pauses.last().is_some_and(|p| p.to.is_none())
    }

    /// The student joins, or the exam starts while they wait: their clock
    /// starts now if the exam's runs (`in_progress` or `paused`) and theirs
    /// has not started yet. Returns whether it changed.
    pub fn admit(&mut self, exam: &ExamClock, now: i64) -> bool {
        let runs = matches!(exam.phase, Phase::InProgress | Phase::Paused);
        let starts = runs && self.started_at.is_none();
        if starts {
            self.started_at = Some(now);
        }
        starts
    }

    /// Pauses this student alone at `now`.
    pub fn pause(&mut self, now: i64) -> Result<(), AlreadyInState> {
        if self.is_paused() {
            return Err(AlreadyInState::Paused);
        }
        if self.pauses.len() >= MAX_PAUSES {
            return Err(AlreadyInState::TooManyPauses);
        }
        self.pauses.push(Span {
            from: now,
            to: None,
        });
        Ok(())
    }

    /// Ends this student's own pause at `now`.
    pub fn resume(&mut self, now: i64) -> Result<(), AlreadyInState> {
        if !self.is_paused() {
            return Err(AlreadyInState::Running);
        }
        close_last(&mut self.pauses, now);
        Ok(())
    }

    /// The student's deadline at `now`, Unix ms:
    ///
    /// ```text
    /// fixed:        base = start + round((end − start) × multiplier)
    ///               start = opens_at, else the exam's started_at
    ///               end   = closes_at, else start + duration
    /// per_student:  base = min(started_at + round(duration × multiplier), closes_at)
    ///               (no closes_at: no cap; no duration: base = closes_at)
    /// deadline = base + extra_minutes + extension + paused
    /// ```
    ///
    /// `paused` is the measure of the union of the exam's and this student's
    /// pauses after `started_at` (the exam's `started_at` for a student who
    /// has not started), up to `now`: a running pause counts as if it ended
    /// now, and overlapping pauses count once.
    ///
    /// None when untimed (no duration, no closes_at), for per-student timing
    /// before the student started, and for fixed timing with only a duration
    /// before the exam started. A choice the note leaves open: a fixed exam
    /// without `opens_at` that has not started yet has the unscaled
    /// `closes_at` as base (the multiplier needs a start).
    pub fn deadline(&self, exam: &ExamClock, now: i64) -> Option<i64> {
        let base = match exam.timing {
            Timing::Fixed => match exam.fixed_window() {
                Some((start, end)) => start.saturating_add(self.scale(end.saturating_sub(start))),
                None => exam.closes_at?,
            },
            Timing::PerStudent => {
                let started_at = self.started_at?;
                match (exam.duration_ms, exam.closes_at) {
                    (Some(duration), cap) => {
                        let end = started_at.saturating_add(self.scale(duration));
                        cap.map_or(end, |cap| end.min(cap))
                    }
                    (None, cap) => cap?,
                }
            }
        };
        let extra = i64::from(self.extra_minutes) * MINUTE_MS;
        Some(
            base.saturating_add(extra)
                .saturating_add(self.extension_ms)
                .saturating_add(self.paused_ms(exam, now)),
        )
    }

    /// Whether the student's time is up at `now`: the exam is `in_progress`,
    /// this student is not paused, and the deadline is at or before `now`.
    /// (Outside `in_progress` nothing runs: a scheduled exam's work does not
    /// count yet, an ended one already submitted everyone.)
    pub fn time_up(&self, exam: &ExamClock, now: i64) -> bool {
        exam.phase == Phase::InProgress
            && !self.is_paused()
            && self.deadline(exam, now).is_some_and(|d| d <= now)
    }

    /// Extends this student's time by `minutes` (negative shortens it, but
    /// never to before `now`; a deadline already past is not moved earlier).
    /// The sum of a student's extensions is capped at [`MAX_EXTENSION_MS`]
    /// (so the arithmetic stays exact). When either bound cuts the request,
    /// `clamped` says so. Err when there is no deadline.
    pub fn extend(
        &mut self,
        exam: &ExamClock,
        minutes: i64,
        now: i64,
    ) -> Result<Extended, Untimed> {
        let deadline = self.deadline(exam, now).ok_or(Untimed)?;
        let asked = minutes.saturating_mul(MINUTE_MS);
        let floor = now.saturating_sub(deadline).min(0);
        let ceiling = MAX_EXTENSION_MS.saturating_sub(self.extension_ms).max(0);
        let applied = asked.max(floor).min(ceiling);
        self.extension_ms = self.extension_ms.saturating_add(applied);
        Ok(Extended {
            applied_ms: applied,
            clamped: applied != asked,
            deadline: deadline.saturating_add(applied),
        })
    }

    /// `span × multiplier`, rounded to the millisecond.
    fn scale(&self, span_ms: i64) -> i64 {
        // An f64 holds every millisecond count below 2^53 (285,000 years)
        // exactly; `as` saturates, and maps a NaN multiplier to 0.
        (span_ms as f64 * self.multiplier).round() as i64
    }

    /// The measure of the union of the exam's and this student's pauses
    /// within `[from, now]`, from the student's start (else the exam's).
    fn paused_ms(&self, exam: &ExamClock, now: i64) -> i64 {
        let Some(from) = self.started_at.or(exam.started_at) else {
            return 0;
        };
        let mut spans: Vec<(i64, i64)> = exam
            .pauses
            .iter()
            .chain(&self.pauses)
            .map(|p| (p.from.max(from), p.to.unwrap_or(now).min(now)))
            .collect();
        // Sweep in order of start; `covered` is where the union so far
        // ends, so an overlap adds only what sticks out past it, and a span
        // clipped to nothing (it ended before `from`) adds nothing.
        spans.sort_unstable();
        let mut total = 0i64;
        let mut covered = from;
        for (a, b) in spans {
            total = total.saturating_add((b - a.max(covered)).max(0));
            covered = covered.max(b);
        }
        total
    }
}

/// Closes the open last span at `now` (never before it began, should the
/// caller's clock step back).
fn close_last(pauses: &mut [Span], now: i64) {
    if let Some(last) = pauses.last_mut() {
        last.to = Some(now.max(last.from));
    }
}

#[cfg(test)]
mod tests;
