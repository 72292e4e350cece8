//! Running an exam over REST: its phase (`POST /v1/exams/{id}/phase`), its
//! timing (`PATCH /v1/exams/{id}`) and one student's accommodations
//! (`PATCH /v1/exams/{id}/students/{student_id}`).
//!
//! Each handler changes the database first (store/control.rs, optimistic
//! and version-stamped), then tells the exam's room on this instance, which
//! pushes `exam_update` to the students it holds and publishes the change
//! as a numbered event, so the rooms of every other instance apply it too.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    Watcher,
    exams::{Exam, RosterEntry, live_counts, to_exam},
    timing::{PhaseName, TimingInput, TimingName},
};
use crate::{
    app::AppState,
    auth::Right,
    control::{Phase, StudentControl},
    http::ApiError,
    room::{ControlCause, RoomCmd},
    store::{control::PhaseChange, now_ms},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(set_phase))
        .routes(routes!(patch_student))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhaseBody {
    pub phase: PhaseName,
}

/// 409 `invalid_transition`: not a drawn transition from `from`.
fn invalid_transition(from: Phase, to: Phase) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "invalid_transition",
        format!(
            "an exam cannot go from {} to {}",
            from.as_str(),
            to.as_str()
        ),
    )
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such exam")
}

/// Tells this instance's room of the exam (started if none runs here:
/// its students may be elsewhere, its timers must run somewhere).
/// Notes in Redis that these students' control records changed, before
/// the change is announced: a handshake on another instance in the next
/// seconds reads their record from the database (ws `recent_control`)
/// rather than trust a room the announcement may not have reached yet.
pub(super) async fn note_controls(app: &AppState, exam_id: &str, students: &[&str]) {
    if let crate::broker::Broker::Redis(redis) = &app.broker
        && let Err(e) = redis.note_controls(exam_id, students).await
    {
        tracing::warn!(error = %e, "cannot note changed control records in Redis");
    }
}

pub(super) async fn notify(app: &AppState, exam_id: &str, cmd: RoomCmd) {
    let room = app.registry.get_or_start(exam_id);
    if room.send(cmd).await.is_err() {
        // The room was ending: a fresh one loads the change from the database.
        let _ = app.registry.get_or_start(exam_id);
    }
}

/// Change the exam's phase: `draft → scheduled → in_progress ⇄ paused →
/// ended → grading` (and `ended` from any earlier phase).
#[utoipa::path(post, path = "/v1/exams/{id}/phase", request_body = PhaseBody, tag = "control",
    params(("id" = String, Path, description = "Exam id")),
    responses(
        (status = 200, description = "Changed; the exam as it is now", body = Exam),
        (status = 400, description = "Malformed JSON", body = crate::http::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::http::ErrorBody),
        (status = 403, description = "Not granted, or the role may not change phases (`forbidden`)", body = crate::http::ErrorBody),
        (status = 404, description = "No such exam", body = crate::http::ErrorBody),
        (status = 409, description = "`invalid_transition`: not a transition from the current phase", body = crate::http::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::ErrorBody),
        (status = 422, description = "Not a phase", body = crate::http::ErrorBody),
        (status = 503, description = "The database could not answer", body = crate::http::ErrorBody)
    ))]
async fn set_phase(
    State(app): State<AppState>,
    caller: Watcher,
    Path(id): Path<String>,
    body: Result<Json<PhaseBody>, JsonRejection>,
) -> Result<Json<Exam>, ApiError> {
    caller.require_right(&id, Right::SetPhase)?;
    let Json(body) = body?;
    let to: Phase = body.phase.into();
    match app.store.change_phase(&id, to, None, now_ms()).await {
        Err(crate::store::StoreError::NotFound) => return Err(not_found()),
        Err(e) => return Err(e.into()),
        Ok(PhaseChange::Invalid { from }) => return Err(invalid_transition(from, to)),
        Ok(PhaseChange::Skipped) => {}
        Ok(PhaseChange::Changed(clock, version)) => {
            app.rosters.invalidate(&id);
            notify(
                &app,
                &id,
                RoomCmd::ExamControl {
                    clock,
                    version,
                    cause: ControlCause::Phase,
                },
            )
            .await;
        }
    }
    current(&app, &id).await
}

async fn current(app: &AppState, id: &str) -> Result<Json<Exam>, ApiError> {
    let row = app.store.exam(id).await?.ok_or_else(not_found)?;
    let counts = live_counts(app, id).await?;
    Ok(Json(to_exam(row, counts)))
}

/// `null` clears a field, absent leaves it.
fn double<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ExamPatch {
    /// RFC 3339 with an offset; null clears it.
    #[serde(default, deserialize_with = "double")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub opens_at: Option<Option<String>>,
    /// RFC 3339 with an offset; null clears it.
    #[serde(default, deserialize_with = "double")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub closes_at: Option<Option<String>>,
    /// Whole minutes (or `duration_seconds`, not both).
    #[serde(default, deserialize_with = "super::exams::whole_number")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 44640)]
    pub duration_minutes: Option<u32>,
    /// Whole seconds (or `duration_minutes`, not both).
    #[serde(default, deserialize_with = "super::exams::whole_number")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 2678400)]
    pub duration_seconds: Option<u32>,
    pub auto_start: Option<bool>,
    pub timing: Option<TimingName>,
    /// A phase change, as `POST /v1/exams/{id}/phase` does it.
    pub phase: Option<PhaseName>,
}

/// Change an exam's timing (and, with `phase`, its phase).
#[utoipa::path(patch, path = "/v1/exams/{id}", request_body = ExamPatch, tag = "control",
    params(("id" = String, Path, description = "Exam id")),
    responses(
        (status = 200, description = "Changed; the exam as it is now", body = Exam),
        (status = 400, description = "Malformed JSON, or fields that do not go together (`invalid_timing`, with `error.field`)", body = crate::http::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::http::ErrorBody),
        (status = 403, description = "Not granted, or the role may not change exams (`forbidden`)", body = crate::http::ErrorBody),
        (status = 404, description = "No such exam", body = crate::http::ErrorBody),
        (status = 409, description = "`invalid_transition`, or the exam changed meanwhile (`conflict`): retry", body = crate::http::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::ErrorBody),
        (status = 422, description = "A field is invalid", body = crate::http::ErrorBody),
        (status = 503, description = "The database could not answer", body = crate::http::ErrorBody)
    ))]
pub(super) async fn patch_exam(
    State(app): State<AppState>,
    caller: Watcher,
    Path(id): Path<String>,
    body: Result<Json<serde_json::Map<String, serde_json::Value>>, JsonRejection>,
) -> Result<Json<Exam>, ApiError> {
    caller.require_right(&id, Right::EditExam)?;
    let patch: ExamPatch = super::object_body(body)?;
    if patch.phase.is_some() {
        caller.require_right(&id, Right::SetPhase)?;
    }
    let input = TimingInput {
        starts_at: None,
        opens_at: patch.opens_at.as_ref().and_then(|o| o.as_deref()),
        closes_at: patch.closes_at.as_ref().and_then(|o| o.as_deref()),
        duration_minutes: patch.duration_minutes,
        duration_seconds: patch.duration_seconds,
    };
    let (opens_at, closes_at, duration_ms) = input.read()?;
    let now = now_ms();
    let mut changed = None;
    for _ in 0..8 {
        let (mut clock, version) = app.store.exam_clock(&id).await?.ok_or_else(not_found)?;
        if patch.opens_at.is_some() {
            clock.opens_at = opens_at;
        }
        if patch.closes_at.is_some() {
            clock.closes_at = closes_at;
        }
        if duration_ms.is_some() {
            clock.duration_ms = duration_ms;
        }
        if let Some(a) = patch.auto_start {
            clock.auto_start = a;
        }
        if let Some(t) = patch.timing {
            clock.timing = t.into();
        }
        super::timing::check(&clock, patch.duration_seconds.is_some())?;
        if let Some(p) = patch.phase {
            let (from, to) = (clock.phase, Phase::from(p));
            if from != to && clock.set_phase(to, now).is_err() {
                return Err(invalid_transition(from, to));
            }
        }
        if app.store.write_clock(&id, &clock, version).await? {
            changed = Some((clock, version + 1));
            break;
        }
    }
    let Some((clock, version)) = changed else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "the exam kept changing meanwhile; retry",
        ));
    };
    app.rosters.invalidate(&id);
    notify(
        &app,
        &id,
        RoomCmd::ExamControl {
            clock,
            version,
            cause: ControlCause::Timing,
        },
    )
    .await;
    current(&app, &id).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StudentPatch {
    /// Extra time (an accommodation), 0-10000 minutes.
    #[schema(minimum = 0, maximum = 10000)]
    pub extra_minutes: Option<i64>,
    /// Their time multiplied (an accommodation), e.g. 1.25; 0.5-10.
    #[schema(minimum = 0.5, maximum = 10.0)]
    pub time_multiplier: Option<f64>,
}

/// Change one student's accommodations (before or during the exam).
#[utoipa::path(patch, path = "/v1/exams/{id}/students/{student_id}", request_body = StudentPatch, tag = "control",
    params(("id" = String, Path, description = "Exam id"), ("student_id" = String, Path, description = "Student id")),
    responses(
        (status = 200, description = "Changed; the student's control record", body = Object),
        (status = 400, description = "Malformed JSON, or an accommodation out of range (`invalid_timing`, with `error.field`)", body = crate::http::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::http::ErrorBody),
        (status = 403, description = "Not granted, or the role may not change accommodations (`forbidden`)", body = crate::http::ErrorBody),
        (status = 404, description = "No such exam", body = crate::http::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::ErrorBody),
        (status = 422, description = "A field is invalid", body = crate::http::ErrorBody),
        (status = 503, description = "The database could not answer", body = crate::http::ErrorBody)
    ))]
async fn patch_student(
    State(app): State<AppState>,
    caller: Watcher,
    Path((id, student_id)): Path<(String, String)>,
    body: Result<Json<serde_json::Map<String, serde_json::Value>>, JsonRejection>,
) -> Result<Json<StudentControl>, ApiError> {
    caller.require_right(&id, Right::EditExam)?;
    let patch: StudentPatch = super::object_body(body)?;
    if student_id.is_empty()
        || student_id.chars().count() > 128
        || student_id.chars().any(char::is_control)
    {
        return Err(super::invalid(
            "student_id must be 1 to 128 characters, without control characters",
        ));
    }
    app.store.exam_clock(&id).await?.ok_or_else(not_found)?;
    let control = set_accommodation(
        &app,
        &id,
        &student_id,
        patch.extra_minutes,
        patch.time_multiplier,
    )
    .await?;
    Ok(Json(control))
}

/// Writes one student's accommodations and tells the room.
async fn set_accommodation(
    app: &AppState,
    exam_id: &str,
    student_id: &str,
    extra_minutes: Option<i64>,
    multiplier: Option<f64>,
) -> Result<StudentControl, ApiError> {
    let written = app
        .store
        .update_student_control(exam_id, student_id, |c| {
            let extra = extra_minutes.unwrap_or(i64::from(c.clock.extra_minutes));
            let mult = multiplier.unwrap_or(c.clock.multiplier);
            super::timing::check_accommodation(extra, mult)?;
            c.clock.extra_minutes = u32::try_from(extra).unwrap_or(0);
            c.clock.multiplier = mult;
            Ok::<(), ApiError>(())
        })
        .await??;
    note_controls(app, exam_id, &[student_id]).await;
    notify(
        app,
        exam_id,
        RoomCmd::StudentControl {
            student: student_id.into(),
            control: Box::new(written.clone()),
            cause: ControlCause::Accommodation,
        },
    )
    .await;
    Ok(written)
}

/// The accommodations given with a roster (create or replace).
pub(super) async fn store_accommodations(
    app: &AppState,
    exam_id: &str,
    roster: &[RosterEntry],
) -> Result<(), ApiError> {
    for e in roster {
        if e.extra_minutes.is_some() || e.time_multiplier.is_some() {
            set_accommodation(
                app,
                exam_id,
                &e.student_id,
                e.extra_minutes,
                e.time_multiplier,
            )
            .await?;
        }
    }
    Ok(())
}
