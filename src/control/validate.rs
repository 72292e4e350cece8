//! What a client may ask for when it creates or patches an exam's timing
//! or a student's accommodations: checked once at the edge, so the clock's
//! arithmetic ([`super::clock`]) only ever sees values that make sense and
//! cannot overflow.
//!
//! Each refusal names the request field (the REST handler answers 400 with
//! it). Durations are named `duration`: the request says
//! `duration_minutes` or `duration_seconds`, and the handler may put the
//! one it received in their place.

use super::clock::Timing;

/// The longest duration accepted: 31 days. A take-home exam of a week fits;
/// a typo in milliseconds does not.
pub const MAX_DURATION_MS: i64 = 31 * 24 * 60 * 60 * 1000;

/// The latest instant accepted, 9999-12-31T23:59:59.999Z (RFC 3339's last
/// year), so that adding durations and pauses stays far from `i64::MAX`.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// The most extra minutes one student may get: about a week.
pub const MAX_EXTRA_MINUTES: i64 = 10_000;

/// The accepted range of `time_multiplier`. Below 1.0 is allowed (a
/// shorter paper for one student), not below half; above 10 is a typo.
pub const MULTIPLIER_RANGE: std::ops::RangeInclusive<f64> = 0.5..=10.0;

/// A refused request field: 400 with `field` named and a sentence to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> Result<(), FieldError> {
    Err(FieldError {
        field,
        message: message.into(),
    })
}

/// Checks an exam's timing settings, in this order:
/// timestamps within 1970..=9999; `duration` in (0, 31 days];
/// `closes_at` after `opens_at`; `per_student` needs a duration;
/// `auto_start` needs `opens_at`; and for `fixed` timing with all three,
/// `closes_at` no earlier than `opens_at + duration` (fixed timing ends
/// everyone at `closes_at`, so a longer duration could never be had; a
/// shorter one is accepted and does not change anyone's deadline).
/// No timing at all is valid: an untimed exam, ended by hand.
pub fn validate_timing(
    timing: Timing,
    opens_at: Option<i64>,
    closes_at: Option<i64>,
    duration_ms: Option<i64>,
    auto_start: bool,
) -> Result<(), FieldError> {
    for (field, at) in [("opens_at", opens_at), ("closes_at", closes_at)] {
        if at.is_some_and(|at| !(0..=MAX_TIMESTAMP_MS).contains(&at)) {
            return refuse(field, "must be between 1970 and 9999");
        }
    }
    if let Some(duration) = duration_ms {
        if duration <= 0 {
            return refuse("duration", "must be positive");
        }
        if duration > MAX_DURATION_MS {
            return refuse("duration", "must be at most 31 days");
        }
    }
    if let (Some(opens_at), Some(closes_at)) = (opens_at, closes_at) {
        if closes_at <= opens_at {
            return refuse("closes_at", "must be after opens_at");
        }
        if let (Timing::Fixed, Some(duration)) = (timing, duration_ms)
            && closes_at < opens_at + duration
        {
            return refuse(
                "closes_at",
                "is before opens_at + duration: with fixed timing everyone ends at closes_at",
            );
        }
    }
    if timing == Timing::PerStudent && duration_ms.is_none() {
        return refuse("duration", "is required with per_student timing");
    }
    if auto_start && opens_at.is_none() {
        return refuse("auto_start", "needs opens_at: the instant to start at");
    }
    Ok(())
}

/// Checks one student's accommodations: `extra_minutes` in
/// 0..=[`MAX_EXTRA_MINUTES`], `time_multiplier` finite and within
/// [`MULTIPLIER_RANGE`].
pub fn validate_accommodation(extra_minutes: i64, multiplier: f64) -> Result<(), FieldError> {
    if !(0..=MAX_EXTRA_MINUTES).contains(&extra_minutes) {
        return refuse("extra_minutes", "must be between 0 and 10000");
    }
    if !MULTIPLIER_RANGE.contains(&multiplier) {
        // NaN and the infinities are outside the range too.
        return refuse("time_multiplier", "must be a number from 0.5 to 10");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_700_000_000_000;
    const MIN: i64 = 60_000;

    fn field(r: Result<(), FieldError>) -> &'static str {
        r.expect_err("should be refused").field
    }

    #[test]
    fn valid_timings_pass() {
        use Timing::*;
        let ok = [
            (Fixed, None, None, None, false),
            (Fixed, Some(T), Some(T + 60 * MIN), None, true),
            (Fixed, Some(T), Some(T + 60 * MIN), Some(60 * MIN), false),
            (Fixed, Some(T), Some(T + 60 * MIN), Some(45 * MIN), false),
            (Fixed, None, None, Some(MIN), false),
            (Fixed, None, Some(T), None, false),
            (
                Fixed,
                Some(0),
                Some(MAX_TIMESTAMP_MS),
                Some(MAX_DURATION_MS),
                false,
            ),
            (PerStudent, None, None, Some(1), false),
            (PerStudent, Some(T), Some(T + 1), Some(90 * MIN), true),
        ];
        for (timing, opens, closes, duration, auto) in ok {
            assert_eq!(
                validate_timing(timing, opens, closes, duration, auto),
                Ok(()),
                "{timing:?} {opens:?} {closes:?} {duration:?} {auto}"
            );
        }
    }

    #[test]
    fn each_refusal_names_its_field() {
        use Timing::*;
        let refused = [
            (Fixed, Some(-1), None, None, false, "opens_at"),
            (
                Fixed,
                Some(MAX_TIMESTAMP_MS + 1),
                None,
                None,
                false,
                "opens_at",
            ),
            (Fixed, None, Some(-1), None, false, "closes_at"),
            (
                Fixed,
                None,
                Some(MAX_TIMESTAMP_MS + 1),
                None,
                false,
                "closes_at",
            ),
            (Fixed, None, None, Some(0), false, "duration"),
            (Fixed, None, None, Some(-5), false, "duration"),
            (
                Fixed,
                None,
                None,
                Some(MAX_DURATION_MS + 1),
                false,
                "duration",
            ),
            (Fixed, Some(T), Some(T), None, false, "closes_at"),
            (Fixed, Some(T), Some(T - 1), None, false, "closes_at"),
            (PerStudent, Some(T), Some(T), Some(MIN), false, "closes_at"),
            (
                Fixed,
                Some(T),
                Some(T + 60 * MIN),
                Some(60 * MIN + 1),
                false,
                "closes_at",
            ),
            (PerStudent, None, Some(T), None, false, "duration"),
            (PerStudent, None, None, None, false, "duration"),
            (Fixed, None, Some(T), None, true, "auto_start"),
            (PerStudent, None, None, Some(MIN), true, "auto_start"),
        ];
        for (timing, opens, closes, duration, auto, want) in refused {
            let err = validate_timing(timing, opens, closes, duration, auto).unwrap_err();
            assert_eq!(
                err.field, want,
                "{timing:?} {opens:?} {closes:?} {duration:?}"
            );
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn a_week_long_take_home_passes_and_a_month_and_a_day_does_not() {
        let day = 24 * 60 * MIN;
        assert_eq!(
            validate_timing(Timing::PerStudent, None, None, Some(7 * day), false),
            Ok(())
        );
        assert_eq!(
            validate_timing(Timing::PerStudent, None, None, Some(31 * day), false),
            Ok(())
        );
        let err = validate_timing(Timing::PerStudent, None, None, Some(32 * day), false);
        assert_eq!(field(err), "duration");
    }

    #[test]
    fn messages_explain() {
        let err = validate_timing(Timing::Fixed, Some(T), Some(T), None, false).unwrap_err();
        assert_eq!(err.to_string(), "closes_at: must be after opens_at");
        let err = validate_timing(Timing::PerStudent, None, None, None, false).unwrap_err();
        assert_eq!(err.message, "is required with per_student timing");
    }

    #[test]
    fn accommodations_within_bounds_pass() {
        for (extra, m) in [(0, 1.0), (10_000, 10.0), (15, 0.5), (1, 1.25)] {
            assert_eq!(validate_accommodation(extra, m), Ok(()), "{extra} {m}");
        }
    }

    #[test]
    fn accommodations_out_of_bounds_name_the_field() {
        assert_eq!(field(validate_accommodation(-1, 1.0)), "extra_minutes");
        assert_eq!(field(validate_accommodation(10_001, 1.0)), "extra_minutes");
        for m in [
            0.49,
            10.01,
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            assert_eq!(
                field(validate_accommodation(0, m)),
                "time_multiplier",
                "{m}"
            );
        }
    }
}
