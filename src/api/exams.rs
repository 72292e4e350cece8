//! Exams and their rosters.
//!
//! Every limit a handler enforces is also stated in the schema (`pattern`,
//! `minLength`, `maxLength`), so the OpenAPI document tells a client what
//! will be refused before it tries; `tests/api/api_doc.rs` and the CI's
//! schemathesis run hold the two together.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    Watcher, invalid,
    timing::{InitialPhase, TimingInput, TimingName, rfc3339},
};
use crate::{
    app::AppState,
    auth::valid_exam_id,
    control::{ExamClock, Phase},
    http::ApiError,
    protocol::{Counts, Status, Timestamp},
    store::{now_ms, queries::ExamRow},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_exam, list_exams))
        .routes(routes!(get_exam, super::control::patch_exam))
        .routes(routes!(replace_roster))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewExam {
    /// 1-64 characters of letters, digits, '-', '_' and '.'.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$", min_length = 1, max_length = 64)]
    pub id: String,
    /// 1-200 characters, not all whitespace (stored trimmed), without
    /// control characters (U+0000-U+001F, U+007F-U+009F).
    #[schema(
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
        min_length = 1,
        max_length = 200
    )]
    pub title: String,
    /// The old name of `opens_at` (send one or the other).
    /// RFC 3339 with an offset (`Z` or `+02:00`), e.g.
    /// "2026-12-01T09:00:00Z"; 1970 or later (UTC).
    #[schema(format = DateTime)]
    pub starts_at: Option<String>,
    /// The phase to create it in: `draft` (the default: no student may
    /// connect yet), `scheduled` (the waiting room) or `in_progress`.
    #[serde(default)]
    pub phase: Option<InitialPhase>,
    /// When the exam opens (RFC 3339 with an offset); with `auto_start`
    /// it moves from `scheduled` to `in_progress` by itself then.
    #[schema(format = DateTime)]
    pub opens_at: Option<String>,
    /// When it closes (RFC 3339 with an offset): `in_progress` moves to
    /// `ended` by itself then (or at the latest student deadline, when
    /// accommodations run past it).
    #[schema(format = DateTime)]
    pub closes_at: Option<String>,
    /// Whole minutes; JSON Schema counts `90.0` as an integer, so it is
    /// taken as 90 (serde alone would refuse it). Or `duration_seconds`.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 44640)]
    pub duration_minutes: Option<u32>,
    /// The duration in seconds (instead of `duration_minutes`), at most
    /// 31 days.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 2678400)]
    pub duration_seconds: Option<u32>,
    /// Start by itself at `opens_at` (needs `opens_at`).
    #[serde(default)]
    pub auto_start: bool,
    /// `fixed` (default) or `per_student`.
    #[serde(default)]
    pub timing: TimingName,
    /// Free-form exam settings (a JSON object; null or absent: `{}`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Value>,
    /// Students allowed to sit the exam; empty = any student whose token grants it.
    #[serde(default)]
    pub roster: Vec<RosterEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RosterEntry {
    /// 1-128 bytes, without control characters.
    #[schema(
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*$",
        min_length = 1,
        max_length = 128
    )]
    pub student_id: String,
    /// At most 200 bytes, without control characters.
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$", max_length = 200)]
    pub name: String,
    #[serde(default = "yes")]
    pub allowed: bool,
    /// Extra time for this student (an accommodation), 0-10000 minutes.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 10000)]
    pub extra_minutes: Option<i64>,
    /// Their time multiplied (an accommodation), e.g. 1.25; 0.5-10.
    #[serde(default)]
    #[schema(minimum = 0.5, maximum = 10.0)]
    pub time_multiplier: Option<f64>,
}

// The patterns above: no control character (what `char::is_control`
// refuses: the C0 and C1 ranges and DEL), in a regex both ECMA-262 and
// Python read; a title also needs one non-whitespace character.
/// A `u32` written as an integer or as a float with no fraction (`90.0`).
pub(super) fn whole_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<u32>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= f64::from(u32::MAX))
            .map(|f| f as u64)
    });
    whole
        .and_then(|v| u32::try_from(v).ok())
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected a whole number of minutes 0-4294967295, got {n}"
            ))
        })
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RosterBody {
    pub roster: Vec<RosterEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Exam {
    pub id: String,
    pub title: String,
    /// `draft`, `scheduled`, `in_progress`, `paused`, `ended` or `grading`.
    pub phase: String,
    pub timing: TimingName,
    pub opens_at: Option<String>,
    pub closes_at: Option<String>,
    pub duration_seconds: Option<i64>,
    pub auto_start: bool,
    /// When the exam first entered `in_progress`.
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// The server's clock when this was answered: compare times with it,
    /// never with the client's own clock.
    pub server_time: String,
    /// The old name of `opens_at`.
    pub starts_at: Option<String>,
    pub duration_minutes: Option<i64>,
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    pub created_by: String,
    pub created_at: String,
    pub roster_size: i64,
    /// Students per status right now: from the room when this instance
    /// runs it, else from the stored states (everyone not submitted counts
    /// as disconnected). The same in create, get and list.
    #[schema(value_type = CountsDoc)]
    pub counts: Counts,
}

/// The schema of [`Counts`] (kept out of the wire-contract module, which
/// has no OpenAPI derive).
#[derive(ToSchema)]
#[schema(as = Counts)]
#[allow(dead_code)] // documents the JSON shape Counts serializes to
pub struct CountsDoc {
    pub active: u32,
    pub idle: u32,
    pub submitted: u32,
    pub disconnected: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExamList {
    pub exams: Vec<Exam>,
}

pub(super) fn to_exam(row: ExamRow, counts: Counts) -> Exam {
    let clock = &row.clock;
    let duration_seconds = clock.duration_ms.map(|ms| ms / 1000);
    Exam {
        starts_at: rfc3339(clock.opens_at),
        duration_minutes: duration_seconds.map(|s| s / 60),
        phase: clock.phase.as_str().to_owned(),
        timing: clock.timing.into(),
        opens_at: rfc3339(clock.opens_at),
        closes_at: rfc3339(clock.closes_at),
        duration_seconds,
        auto_start: clock.auto_start,
        started_at: rfc3339(clock.started_at),
        ended_at: rfc3339(clock.ended_at),
        server_time: humantime::format_rfc3339_millis(Timestamp::now().0).to_string(),
        settings: serde_json::from_str(&row.settings).unwrap_or_default(),
        created_at: humantime::format_rfc3339_millis(Timestamp::from_unix_ms(row.created_at).0)
            .to_string(),
        id: row.id,
        title: row.title,
        created_by: row.created_by,
        roster_size: row.roster_size,
        counts,
    }
}

fn validate_roster(roster: &[RosterEntry]) -> Result<Vec<(String, String, bool)>, ApiError> {
    let mut seen = std::collections::HashSet::new();
    roster
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if e.student_id
                .chars()
                .chain(e.name.chars())
                .any(char::is_control)
            {
                return Err(invalid(format!(
                    "roster[{i}] may not contain control characters"
                )));
            }
            // Characters, as the schema's maxLength counts them.
            if e.student_id.is_empty() || e.student_id.chars().count() > 128 {
                return Err(invalid(format!(
                    "roster[{i}].student_id must be 1 to 128 characters"
                )));
            }
            if e.name.chars().count() > 200 {
                return Err(invalid(format!(
                    "roster[{i}].name is longer than 200 characters"
                )));
            }
            if !seen.insert(e.student_id.as_str()) {
                return Err(invalid(format!(
                    "roster[{i}].student_id {:?} appears twice",
                    e.student_id
                )));
            }
            if e.extra_minutes.is_some() || e.time_multiplier.is_some() {
                super::timing::check_accommodation(
                    e.extra_minutes.unwrap_or(0),
                    e.time_multiplier.unwrap_or(1.0),
                )
                .map_err(|err| ApiError {
                    message: format!("roster[{i}]: {}", err.message).into(),
                    ..err
                })?;
            }
            Ok((e.student_id.clone(), e.name.clone(), e.allowed))
        })
        .collect()
}

/// Create an exam (teachers and admins, for an exam id their token grants).
#[utoipa::path(post, path = "/v1/exams", request_body = NewExam, tag = "exams",
    responses(
        (status = 201, description = "Created", body = Exam),
        (status = 400, description = "Malformed JSON", body = crate::http::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::http::ErrorBody),
        (status = 403, description = "`teachers_only` (a student's token), `exam_not_granted`, or `forbidden` (the role may not edit exams: a proctor)", body = crate::http::ErrorBody),
        (status = 409, description = "An exam with this id exists", body = crate::http::ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over 2 MiB", body = crate::http::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not sent as `Content-Type: application/json`", body = crate::http::ErrorBody),
        (status = 422, description = "A field is invalid", body = crate::http::ErrorBody), (status = 503, description = "The database could not answer", body = crate::http::ErrorBody)
    ))]
async fn create_exam(
    State(app): State<AppState>,
    caller: Watcher,
    body: Result<Json<NewExam>, JsonRejection>,
) -> Result<(StatusCode, Json<Exam>), ApiError> {
    let Json(new) = body?;
    if !valid_exam_id(&new.id) {
        return Err(invalid(
            "id must be 1-64 characters of letters, digits, '-', '_' and '.'",
        ));
    }
    caller.require_right(&new.id, crate::auth::Right::EditExam)?;
    // The length is the one sent (the schema's maxLength), the blank check
    // on what is stored.
    let title = new.title.trim();
    if title.is_empty() || new.title.chars().count() > 200 || title.chars().any(char::is_control) {
        return Err(invalid(
            "title must be 1 to 200 characters, without control characters",
        ));
    }
    let (opens_at, closes_at, duration_ms) = TimingInput {
        starts_at: new.starts_at.as_deref(),
        opens_at: new.opens_at.as_deref(),
        closes_at: new.closes_at.as_deref(),
        duration_minutes: new.duration_minutes,
        duration_seconds: new.duration_seconds,
    }
    .read()?;
    let now = now_ms();
    let mut clock = ExamClock::new(
        Phase::Draft,
        new.timing.into(),
        opens_at,
        closes_at,
        duration_ms,
        new.auto_start,
    );
    super::timing::check(&clock, new.duration_seconds.is_some())?;
    // Created in a later phase: through the phases before it, so the clock
    // is what those transitions make it (`started_at` for in_progress).
    let path: &[Phase] = match new.phase.unwrap_or_default() {
        InitialPhase::Draft => &[],
        InitialPhase::Scheduled => &[Phase::Scheduled],
        InitialPhase::InProgress => &[Phase::Scheduled, Phase::InProgress],
    };
    for phase in path {
        clock
            .set_phase(*phase, now)
            .map_err(|_| invalid("phase: not a phase an exam can be created in"))?;
    }
    let settings = match new.settings {
        None => serde_json::json!({}),
        Some(v @ serde_json::Value::Object(_)) => v,
        Some(_) => return Err(invalid("settings must be a JSON object")),
    };
    let roster = validate_roster(&new.roster)?;
    let row = ExamRow {
        id: new.id,
        title: title.to_owned(),
        settings: settings.to_string(),
        created_by: caller.0.sub.clone(),
        created_at: now,
        roster_size: roster.len() as i64,
        clock,
        version: 0,
    };
    app.store.create_exam(&row, &roster).await?;
    super::control::store_accommodations(&app, &row.id, &new.roster).await?;
    app.rosters.invalidate(&row.id);
    // A room already running for this id (students connected before the
    // exam was created) learns its total now; rooms on other instances
    // look for it themselves (`Room::refresh_total`).
    if let (Some(room), Some(total)) = (
        app.registry.get(&row.id),
        crate::room::total_questions(&row.settings),
    ) {
        let _ = room.send(crate::room::RoomCmd::ExamTotal(total)).await;
    }
    // A room already running here (watchers opened it first) takes the
    // clock now, and publishes it to the rooms of other instances.
    if app.registry.get(&row.id).is_some() {
        super::control::notify(
            &app,
            &row.id,
            crate::room::RoomCmd::ExamControl {
                clock: row.clock.clone(),
                version: row.version,
                cause: crate::room::ControlCause::Phase,
            },
        )
        .await;
    }
    // The same counts GET answers: students may already be in the room.
    let counts = live_counts(&app, &row.id).await?;
    Ok((StatusCode::CREATED, Json(to_exam(row, counts))))
}

/// RFC 3339 (`2026-12-01T09:00:00Z`, `…+02:00`, `…-05:30`, lower-case `t`
/// and `z`, fractions of a second) to Unix milliseconds. humantime reads
/// only UTC, so an offset is taken off here and applied after. `None` for
/// anything else, a missing offset, or an instant before 1970.
pub(super) fn parse_rfc3339(s: &str) -> Option<i64> {
    if !s.is_ascii() || s.len() < "2026-12-01T09:00:00Z".len() {
        return None;
    }
    let s = s.to_ascii_uppercase();
    let (utc, offset_mins) = if s.ends_with('Z') {
        (s, 0)
    } else {
        let (base, off) = s.split_at(s.len() - 6);
        let b = off.as_bytes();
        let sign = match b[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        if b[3] != b':'
            || !off[1..3]
                .bytes()
                .chain(off[4..].bytes())
                .all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let (h, m): (i64, i64) = (off[1..3].parse().ok()?, off[4..].parse().ok()?);
        if h > 23 || m > 59 {
            return None;
        }
        (format!("{base}Z"), sign * (h * 60 + m))
    };
    // humantime also takes a space for the `T`; RFC 3339 proper does not.
    if utc.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    let local = humantime::parse_rfc3339_weak(&utc).ok()?;
    let ms = local
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis();
    let ms = i64::try_from(ms).ok()? - offset_mins * 60_000;
    (ms >= 0).then_some(ms)
}

/// List the exams the token grants (admins: all).
#[utoipa::path(get, path = "/v1/exams", tag = "exams",
    responses((status = 200, description = "OK", body = ExamList), (status = 401, description = "Missing, invalid or expired token", body = crate::http::ErrorBody), (status = 403, description = "`teachers_only`: a student's token", body = crate::http::ErrorBody), (status = 503, description = "The database could not answer", body = crate::http::ErrorBody)))]
async fn list_exams(
    State(app): State<AppState>,
    caller: Watcher,
) -> Result<Json<ExamList>, ApiError> {
    let exams = app
        .store
        .exams()
        .await?
        .into_iter()
        .filter(|e| caller.0.grants(&e.id));
    // The same counts as `GET /v1/exams/{id}`, never null: an exam's
    // numbers must not depend on which endpoint was asked.
    let mut list = Vec::new();
    for row in exams {
        let counts = live_counts(&app, &row.id).await?;
        list.push(to_exam(row, counts));
    }
    Ok(Json(ExamList { exams: list }))
}

/// One exam, with live counts.
#[utoipa::path(get, path = "/v1/exams/{id}", tag = "exams",
    params(("id" = String, Path, description = "Exam id")),
    responses((status = 200, description = "OK", body = Exam), (status = 401, description = "Missing, invalid or expired token", body = crate::http::ErrorBody), (status = 403, description = "`teachers_only` (a student's token) or `exam_not_granted`", body = crate::http::ErrorBody), (status = 404, description = "No such exam", body = crate::http::ErrorBody), (status = 503, description = "The database could not answer", body = crate::http::ErrorBody)))]
async fn get_exam(
    State(app): State<AppState>,
    caller: Watcher,
    Path(id): Path<String>,
) -> Result<Json<Exam>, ApiError> {
    caller.require_right(&id, crate::auth::Right::Watch)?;
    let row = app
        .store
        .exam(&id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such exam"))?;
    let counts = live_counts(&app, &id).await?;
    Ok(Json(to_exam(row, counts)))
}

/// Counts from the live room, else from the last stored states (nobody is
/// connected when no room is live).
pub(super) async fn live_counts(app: &AppState, exam_id: &str) -> Result<Counts, ApiError> {
    if let Some(counts) = app.registry.counts(exam_id).await {
        return Ok(counts);
    }
    let submitted = app.store.submissions(exam_id).await?;
    let mut counts = Counts::default();
    for st in app.store.student_states(exam_id).await? {
        if st.status == Status::Submitted || submitted.contains_key(&st.student_id) {
            counts.submitted += 1;
        } else {
            counts.disconnected += 1;
        }
    }
    Ok(counts)
}

/// Replace an exam's roster.
#[utoipa::path(put, path = "/v1/exams/{id}/roster", request_body = RosterBody, tag = "exams",
    params(("id" = String, Path, description = "Exam id")),
    responses((status = 204, description = "Replaced"), (status = 400, description = "Malformed request", body = crate::http::ErrorBody), (status = 401, description = "Missing, invalid or expired token", body = crate::http::ErrorBody), (status = 403, description = "`teachers_only` (a student's token), `exam_not_granted`, or `forbidden` (the role may not edit exams: a proctor)", body = crate::http::ErrorBody), (status = 404, description = "No such exam", body = crate::http::ErrorBody), (status = 413, description = "`payload_too_large`: the body is over 2 MiB", body = crate::http::ErrorBody), (status = 415, description = "`unsupported_media_type`: the body is not sent as `Content-Type: application/json`", body = crate::http::ErrorBody), (status = 422, description = "A field is invalid", body = crate::http::ErrorBody), (status = 503, description = "The database could not answer", body = crate::http::ErrorBody)))]
async fn replace_roster(
    State(app): State<AppState>,
    caller: Watcher,
    Path(id): Path<String>,
    body: Result<Json<RosterBody>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    caller.require_right(&id, crate::auth::Right::EditExam)?;
    let Json(body) = body?;
    let roster = validate_roster(&body.roster)?;
    app.store
        .replace_roster(&id, &caller.0.sub, &roster)
        .await?;
    super::control::store_accommodations(&app, &id, &body.roster).await?;
    app.rosters.invalidate(&id);
    Ok(StatusCode::NO_CONTENT)
}
