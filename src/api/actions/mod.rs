//! Proctor actions over REST: `POST /v1/exams/{id}/actions` applies one
//! (extend, pause, resume, terminate, deny, allow, reset_session, message,
//! lower_hand) to some or all students, `GET /v1/exams/{id}/actions` lists
//! them for the audit.
//!
//! An action is idempotent by the id its client chose: the id is claimed in
//! the database first (store/actions.rs), the students' records are changed
//! (store/control.rs), the outcome and one delivery row per target that
//! gets a frame are stored, and only then is this instance's room told. The
//! room applies it, sends the frames to the targets it holds and publishes
//! an `action` event, so the rooms of every instance do the same for theirs.
//! The answer waits up to `exam.action_ack_wait` for the targets' clients to
//! acknowledge (`received`): a connected student shows `delivered`.
//! A retry with the same body gets the same answer (with the deliveries as
//! they are now); another body under a used id is 409 `action_id_reused`.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::JsonRejection},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

mod apply;

use self::apply::apply;
use super::{
    Watcher,
    control::{note_controls, notify},
};
use crate::{
    app::AppState,
    control::{AlreadyInState, ExamClock, Finish, StudentControl},
    http::ApiError,
    protocol::{ActionKind, ServerMsg, Timestamp},
    room::{ActionApplied, LoweredHand, RoomCmd},
    store::{
        StoreError,
        actions::{Claim, StoredAction},
        now_ms,
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(post_action, list_actions))
}

const MAX_TARGETS: usize = 1000;
const MAX_TEXT: usize = 2000;
const MAX_REASON: usize = 500;
const MAX_EXTEND_MINUTES: i64 = 10_000;

/// A proctor action. Which fields go with which `kind`: `minutes` with
/// `extend`; `reason` with `terminate`; `text` (and `reply_to`, a raised
/// hand's id) with `message`; `hand_id` with `lower_hand` (which needs no
/// targets). Every other kind takes `students` or `"all": true`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Chosen by the client, 1-64 characters: a retry with the same id and
    /// body is applied once and answered the same.
    pub id: String,
    pub kind: ActionKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub students: Option<Vec<String>>,
    /// Every student the exam knows (roster, accommodations, connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// `extend`: minutes to add (negative shortens, never before now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -10000, maximum = 10000)]
    pub minutes: Option<i64>,
    /// `terminate`: why (shown to the student), at most 500 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `message`: 1-2000 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `message`: the raised hand it answers (lowered with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// `lower_hand`: the hand to lower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hand_id: Option<String>,
}

/// Who acted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Actor {
    pub sub: String,
    pub name: String,
    pub role: String,
}

/// An action and what it did to each student.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActionAnswer {
    pub id: String,
    pub kind: ActionKind,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub actor: Actor,
    /// The request as received.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Per student: `student_id`; `delivery`: `delivered` (their client
    /// acknowledged the frame), `pending` (not yet: they get it when they
    /// come back), `superseded` (an undelivered deny/terminate made moot by
    /// `allow`) or `none` (the kind sends no frame, or nothing changed);
    /// `delivered_at` once delivered; and per kind: `deadline`, `clamped`,
    /// `applied_ms` (extend), `paused`, `deadline` (pause/resume),
    /// `finished` (terminate), `on_roster` (deny/allow), `lowered`
    /// (lower_hand, message with reply_to), or `error` (`untimed`,
    /// `already_paused`, `not_paused`, `too_many_pauses`) when nothing
    /// changed for that student.
    #[schema(value_type = Vec<Object>)]
    pub students: Vec<Value>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// At most this many, newest first (1-500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActionList {
    pub actions: Vec<ActionAnswer>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    super::invalid(message)
}

fn valid_id(s: &str, max: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control)
}

/// Checks the fields against the kind, before anything is stored.
fn validate(b: &ActionBody) -> Result<(), ApiError> {
    if !valid_id(&b.id, 64) {
        return Err(invalid(
            "id must be 1 to 64 characters, without control characters",
        ));
    }
    let k = b.kind;
    let only = |present: bool, field: &str, kind: ActionKind| -> Result<(), ApiError> {
        if present && k != kind {
            return Err(invalid(format!(
                "{field} is only for kind {}",
                kind.as_str()
            )));
        }
        Ok(())
    };
    only(b.minutes.is_some(), "minutes", ActionKind::Extend)?;
    only(b.reason.is_some(), "reason", ActionKind::Terminate)?;
    only(b.text.is_some(), "text", ActionKind::Message)?;
    only(b.reply_to.is_some(), "reply_to", ActionKind::Message)?;
    only(b.hand_id.is_some(), "hand_id", ActionKind::LowerHand)?;
    match k {
        ActionKind::Extend => match b.minutes {
            None => return Err(invalid("extend needs minutes (an integer)")),
            Some(m) if m.abs() > MAX_EXTEND_MINUTES => {
                return Err(invalid("minutes must be between -10000 and 10000"));
            }
            _ => {}
        },
        ActionKind::Terminate
            if b.reason
                .as_ref()
                .is_some_and(|r| r.chars().count() > MAX_REASON) =>
        {
            return Err(invalid("reason must be at most 500 characters"));
        }
        ActionKind::Message => {
            let text = b.text.as_deref().map(str::trim).unwrap_or_default();
            if text.is_empty() || text.chars().count() > MAX_TEXT {
                return Err(invalid("message needs text of 1 to 2000 characters"));
            }
            if b.reply_to.as_ref().is_some_and(|h| !valid_id(h, 64)) {
                return Err(invalid("reply_to must be a hand id"));
            }
        }
        ActionKind::LowerHand => {
            if !b.hand_id.as_ref().is_some_and(|h| valid_id(h, 64)) {
                return Err(invalid("lower_hand needs hand_id"));
            }
            if b.students.is_some() || b.all.is_some() {
                return Err(invalid("lower_hand takes hand_id, not students or all"));
            }
            return Ok(());
        }
        _ => {}
    }
    match (&b.students, b.all) {
        (Some(_), Some(_)) => Err(invalid("give students or all, not both")),
        (None, Some(true)) => Ok(()),
        (None, _) => Err(invalid("give students (a list) or \"all\": true")),
        (Some(s), None) if s.is_empty() || s.len() > MAX_TARGETS => {
            Err(invalid("students must list 1 to 1000 student ids"))
        }
        (Some(s), None) if s.iter().any(|id| !valid_id(id, 128)) => Err(invalid(
            "each student id must be 1 to 128 characters, without control characters",
        )),
        (Some(_), None) => Ok(()),
    }
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such exam")
}

/// Apply a proctor action to students of the exam.
#[utoipa::path(post, path = "/v1/exams/{id}/actions", request_body = ActionBody, tag = "control",
    params(("id" = String, Path, description = "Exam id")),
    responses(
        (status = 200, description = "Applied (or a retry of one applied): what it did to each student, and whether their client has it (`delivery`); waits up to `exam.action_ack_wait` for acknowledgements", body = ActionAnswer),
        (status = 400, description = "Malformed JSON", body = crate::http::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::http::ErrorBody),
        (status = 403, description = "Not granted, a student's token (`teachers_only`), or the role may not take this kind of action (`forbidden`)", body = crate::http::ErrorBody),
        (status = 404, description = "No such exam", body = crate::http::ErrorBody),
        (status = 409, description = "`action_id_reused`: this id was used for a different action", body = crate::http::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::ErrorBody),
        (status = 422, description = "A field is missing, invalid, or not for this kind; or an unknown hand (`invalid_field`)", body = crate::http::ErrorBody),
        (status = 503, description = "The database could not answer; retry with the same id", body = crate::http::ErrorBody)
    ))]
async fn post_action(
    State(app): State<AppState>,
    caller: Watcher,
    Path(exam_id): Path<String>,
    body: Result<Json<ActionBody>, JsonRejection>,
) -> Result<Json<ActionAnswer>, ApiError> {
    crate::ws::require_grant(&caller.0, &exam_id)?;
    let Json(body) = body?;
    caller.require_right(&exam_id, body.kind.right())?;
    validate(&body)?;
    let (clock, _) = app
        .store
        .exam_clock(&exam_id)
        .await?
        .ok_or_else(not_found)?;
    let payload = serde_json::to_string(&body).unwrap_or_default();
    let now = now_ms();
    let claim = StoredAction {
        action_id: body.id.clone(),
        kind: body.kind.as_str().into(),
        actor_sub: caller.0.sub.clone(),
        actor_name: caller.0.name.clone(),
        actor_role: caller.0.role.as_str().into(),
        at: now,
        payload: payload.clone(),
        result: None,
    };
    match app.store.claim_action(&exam_id, &claim).await? {
        Claim::Claimed => {}
        Claim::Existing(existing) => {
            if existing.payload != payload {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "action_id_reused",
                    format!(
                        "action id {:?} was already used for a different action",
                        body.id
                    ),
                ));
            }
            // A claim never finished (its instance stopped mid-way, or the
            // release failed): taken over, and applied where it stopped.
            let abandoned = existing.result.is_none()
                && now.saturating_sub(existing.at) > ABANDONED_CLAIM_MS
                && app
                    .store
                    .take_over_action(&exam_id, &body.id, existing.at, now)
                    .await?;
            if !abandoned {
                return retried(&app, &exam_id, &body.id).await;
            }
        }
    }
    // Applied in a task of its own: a client that hangs up, or the request
    // timeout, must not stop an action half way through its students.
    let task = {
        let (app, exam_id, body) = (app.clone(), exam_id.clone(), body.clone());
        let caller = Watcher(caller.0.clone());
        app.tracker.clone().spawn(async move {
            let applied = apply(&app, &exam_id, &clock, &body, &caller, now).await;
            if applied.is_err() {
                // Unclaimed, so a retry applies it; the students it changed
                // before failing remember its id and are not changed twice.
                let _ = app.store.release_action(&exam_id, &body.id).await;
            }
            applied
        })
    };
    let deliver = task.await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the action stopped unexpectedly; retry with the same id",
        )
    })??;
    wait_for_acks(&app, &exam_id, &body.id, deliver).await;
    answer(&app, &exam_id, &body.id).await
}

/// How old a claim without a result must be before a retry takes it over:
/// far longer than any action takes, since it runs to its end even when
/// its request is gone; only an instance that stopped mid-way leaves one.
const ABANDONED_CLAIM_MS: i64 = 120_000;

/// A retry: the first request's answer, once it has one.
async fn retried(
    app: &AppState,
    exam_id: &str,
    action_id: &str,
) -> Result<Json<ActionAnswer>, ApiError> {
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match app.store.action(exam_id, action_id).await? {
            Some(a) if a.result.is_some() => return answer(app, exam_id, action_id).await,
            Some(_) if tokio::time::Instant::now() < until => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "action_in_progress",
                    "this action is still being applied; retry shortly",
                ));
            }
        }
    }
}

pub(super) type Deliveries = HashMap<String, (String, Option<i64>)>;

/// The answer for a stored action and its deliveries.
pub(super) fn answer_from(a: &StoredAction, deliveries: &Deliveries) -> ActionAnswer {
    let result: Value = a
        .result
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or(Value::Null);
    let students = result["students"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut s| {
            let sid = s["student_id"].as_str().unwrap_or_default().to_owned();
            if let Some(obj) = s.as_object_mut() {
                let (state, at) = deliveries
                    .get(&sid)
                    .cloned()
                    .unwrap_or_else(|| ("none".into(), None));
                obj.insert("delivery".into(), json!(state));
                if let Some(at) = at {
                    obj.insert("delivered_at".into(), json!(Timestamp::from_unix_ms(at)));
                }
            }
            s
        })
        .collect();
    ActionAnswer {
        id: a.action_id.clone(),
        kind: ActionKind::parse(&a.kind).unwrap_or(ActionKind::Message),
        at: Timestamp::from_unix_ms(a.at),
        actor: Actor {
            sub: a.actor_sub.clone(),
            name: a.actor_name.clone(),
            role: a.actor_role.clone(),
        },
        payload: serde_json::from_str(&a.payload).unwrap_or(Value::Null),
        students,
    }
}

async fn deliveries_of(
    app: &AppState,
    exam_id: &str,
    action_id: &str,
) -> Result<Deliveries, ApiError> {
    Ok(app
        .store
        .deliveries(exam_id, action_id)
        .await?
        .into_iter()
        .map(|(s, d)| (s, (d.state, d.delivered_at)))
        .collect())
}

async fn answer(
    app: &AppState,
    exam_id: &str,
    action_id: &str,
) -> Result<Json<ActionAnswer>, ApiError> {
    let a = app
        .store
        .action(exam_id, action_id)
        .await?
        .ok_or_else(not_found)?;
    let d = deliveries_of(app, exam_id, action_id).await?;
    Ok(Json(answer_from(&a, &d)))
}

/// Waits (at most `exam.action_ack_wait`) until no target is pending.
async fn wait_for_acks(app: &AppState, exam_id: &str, action_id: &str, deliver: Vec<String>) {
    let wait = app.settings.exam.action_ack_wait;
    if deliver.is_empty() || wait.is_zero() {
        return;
    }
    let until = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        match app.store.deliveries(exam_id, action_id).await {
            Ok(d) if d.values().all(|d| d.state != "pending") => return,
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// The exam's actions, newest first, with their deliveries (the audit).
#[utoipa::path(get, path = "/v1/exams/{id}/actions", tag = "control",
    params(("id" = String, Path, description = "Exam id"), ListQuery),
    responses(
        (status = 200, description = "The newest actions first", body = ActionList),
        (status = 400, description = "Malformed query (`limit` not a whole number)", body = crate::http::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::http::ErrorBody),
        (status = 403, description = "Not granted", body = crate::http::ErrorBody),
        (status = 404, description = "No such exam", body = crate::http::ErrorBody),
        (status = 422, description = "`limit` out of range", body = crate::http::ErrorBody),
        (status = 503, description = "The database could not answer", body = crate::http::ErrorBody)
    ))]
async fn list_actions(
    State(app): State<AppState>,
    caller: Watcher,
    Path(exam_id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ActionList>, ApiError> {
    caller.require_right(&exam_id, crate::auth::Right::Watch)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(invalid("limit must be between 1 and 500"));
    }
    app.store
        .exam_clock(&exam_id)
        .await?
        .ok_or_else(not_found)?;
    let mut actions = Vec::new();
    for a in app.store.actions(&exam_id, limit).await? {
        let d = deliveries_of(&app, &exam_id, &a.action_id).await?;
        actions.push(answer_from(&a, &d));
    }
    Ok(Json(ActionList { actions }))
}
