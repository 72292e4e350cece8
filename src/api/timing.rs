//! The exam's timing model at the REST boundary: the fields a client sends
//! to create or change an exam (`phase`, `opens_at`, `closes_at`,
//! `duration_minutes`/`duration_seconds`, `auto_start`, `timing`), how they
//! become an [`ExamClock`], and how the clock is shown back.
//!
//! A field that is wrong on its own is a 422 `invalid_field`; fields that
//! are each fine but do not go together (`closes_at` before `opens_at`,
//! per-student timing without a duration) are a 400 `invalid_timing` that
//! names the field (`error.field`), as `control::validate_timing` decides.

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::invalid;
use crate::{
    control::{self, ExamClock, Phase, Timing},
    http::ApiError,
    protocol::Timestamp,
};

/// The phases an exam may be created in.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum InitialPhase {
    #[default]
    Draft,
    Scheduled,
    InProgress,
}

/// Every phase (`POST /v1/exams/{id}/phase`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PhaseName {
    Draft,
    Scheduled,
    InProgress,
    Paused,
    Ended,
    Grading,
}

impl From<PhaseName> for Phase {
    fn from(p: PhaseName) -> Self {
        match p {
            PhaseName::Draft => Phase::Draft,
            PhaseName::Scheduled => Phase::Scheduled,
            PhaseName::InProgress => Phase::InProgress,
            PhaseName::Paused => Phase::Paused,
            PhaseName::Ended => Phase::Ended,
            PhaseName::Grading => Phase::Grading,
        }
    }
}

/// `fixed`: everyone's time ends at `closes_at`; `per_student`: each
/// student's time starts at their first admission and lasts the duration,
/// never past `closes_at`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimingName {
    #[default]
    Fixed,
    PerStudent,
}

impl From<TimingName> for Timing {
    fn from(t: TimingName) -> Self {
        match t {
            TimingName::Fixed => Timing::Fixed,
            TimingName::PerStudent => Timing::PerStudent,
        }
    }
}

/// The timing fields as sent, before they are checked together.
#[derive(Debug, Default)]
pub struct TimingInput<'a> {
    pub starts_at: Option<&'a str>,
    pub opens_at: Option<&'a str>,
    pub closes_at: Option<&'a str>,
    pub duration_minutes: Option<u32>,
    pub duration_seconds: Option<u32>,
}

/// 400 `invalid_timing`, naming the field.
pub fn invalid_timing(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_timing", message.into()).with_field(field)
}

/// An RFC 3339 field to Unix ms (422 naming it when it is not one).
pub fn instant(field: &'static str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|s| {
            super::exams::parse_rfc3339(s).ok_or_else(|| {
                invalid(format!(
                    "{field} must be an RFC 3339 date-time with an offset, 1970 or later"
                ))
                .with_field(field)
            })
        })
        .transpose()
}

impl TimingInput<'_> {
    /// `(opens_at, closes_at, duration_ms)`; `None` inside for what was not sent.
    #[allow(clippy::type_complexity)]
    pub fn read(&self) -> Result<(Option<i64>, Option<i64>, Option<i64>), ApiError> {
        if self.starts_at.is_some() && self.opens_at.is_some() {
            return Err(invalid_timing(
                "starts_at",
                "send opens_at or its old name starts_at, not both",
            ));
        }
        if self.duration_minutes.is_some() && self.duration_seconds.is_some() {
            return Err(invalid_timing(
                "duration_seconds",
                "send duration_minutes or duration_seconds, not both",
            ));
        }
        let opens_at = match (self.opens_at, self.starts_at) {
            (Some(s), _) => instant("opens_at", Some(s))?,
            (None, s) => instant("starts_at", s)?,
        };
        let closes_at = instant("closes_at", self.closes_at)?;
        let duration_ms = self
            .duration_minutes
            .map(|m| i64::from(m) * 60_000)
            .or(self.duration_seconds.map(|s| i64::from(s) * 1000));
        Ok((opens_at, closes_at, duration_ms))
    }
}

/// Checks a clock's fields together (400 `invalid_timing` naming one).
/// The duration is named as the client sent it: `duration_seconds` when
/// `in_seconds`, else `duration_minutes`.
pub fn check(clock: &ExamClock, in_seconds: bool) -> Result<(), ApiError> {
    control::validate_timing(
        clock.timing,
        clock.opens_at,
        clock.closes_at,
        clock.duration_ms,
        clock.auto_start,
    )
    .map_err(|e| {
        let field = match e.field {
            "duration" if in_seconds => "duration_seconds",
            "duration" => "duration_minutes",
            other => other,
        };
        invalid_timing(field, e.message)
    })
}

/// Checks one student's accommodations (400 `invalid_timing` naming one).
pub fn check_accommodation(extra_minutes: i64, multiplier: f64) -> Result<(), ApiError> {
    control::validate_accommodation(extra_minutes, multiplier)
        .map_err(|e| invalid_timing(e.field, e.message))
}

/// Whole seconds as `…T09:00:00Z`, anything finer with milliseconds.
pub fn rfc3339(ms: Option<i64>) -> Option<String> {
    ms.map(|ms| {
        let t = Timestamp::from_unix_ms(ms).0;
        if ms % 1000 == 0 {
            humantime::format_rfc3339_seconds(t).to_string()
        } else {
            humantime::format_rfc3339_millis(t).to_string()
        }
    })
}

impl From<Timing> for TimingName {
    fn from(t: Timing) -> Self {
        match t {
            Timing::Fixed => TimingName::Fixed,
            Timing::PerStudent => TimingName::PerStudent,
        }
    }
}
