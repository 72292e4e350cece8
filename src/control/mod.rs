//! Exam control as plain state machines: the phase an exam is in, and the
//! clock that decides each student's deadline.
//!
//! No I/O, no tokio, no timers. Every function that needs the time takes
//! `now` (Unix milliseconds), and the answers are values: the room actor
//! asks ("may this student answer?", "when does this exam end by itself?")
//! and does what follows (persist, push `exam_update`, schedule a timer at
//! the instant it was given, then ask again when it fires). So the tests
//! below are stories with instants in them, not sleeps.
//!
//! The model, from shared/design/exam-clock.md:
//!
//! - [`Phase`]: `draft → scheduled → in_progress ⇄ paused → ended →
//!   grading`, and `ended` from any phase before it; nothing else.
//! - [`ExamClock`]: the exam's timing ([`Timing::Fixed`] or
//!   [`Timing::PerStudent`], `opens_at`, `closes_at`, duration) and its
//!   exam-wide pauses. [`StudentClock`]: one student's accommodations
//!   (`extra_minutes`, multiplier), extensions and own pauses.
//! - A deadline is `base + extra_minutes + extensions + paused`, where base
//!   is the fixed window scaled by the multiplier (`opens_at + (closes_at −
//!   opens_at) × multiplier`), or per student `min(started_at + duration ×
//!   multiplier, closes_at)`, and `paused` is the time the exam or the
//!   student was paused since the student started, overlaps counted once.
//!   See [`StudentClock::deadline`].
//! - An exam ends by itself at `closes_at`, or later at the latest
//!   unfinished student's deadline ([`ExamClock::auto_end_at`]).
//! - [`validate_timing`] and [`validate_accommodation`] check what a client
//!   sends before any of it reaches the arithmetic.

pub mod clock;
pub mod phase;
pub mod validate;

pub use clock::{
    AlreadyInState, ExamClock, Extended, MAX_EXTENSION_MS, MAX_PAUSES, Span, StudentClock, Timing,
    Untimed,
};
pub use phase::{InvalidTransition, Phase, WorkRefused};
pub use validate::{FieldError, validate_accommodation, validate_timing};
pub mod student;
pub use student::{Finish, StudentControl};
