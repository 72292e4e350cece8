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

use std::collections::{BTreeMap, HashMap};

use axum::{
    Json,
    extract::{Path, Query, State, rejection::JsonRejection},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

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
            return retried(&app, &exam_id, &body.id).await;
        }
    }
    match apply(&app, &exam_id, &clock, &body, &caller, now).await {
        Ok(deliver) => {
            wait_for_acks(&app, &exam_id, &body.id, deliver).await;
            answer(&app, &exam_id, &body.id).await
        }
        Err(e) => {
            // Unclaimed, so a retry applies it; the students it changed
            // before failing remember its id and are not changed twice.
            let _ = app.store.release_action(&exam_id, &body.id).await;
            Err(e)
        }
    }
}

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

/// The students an action targets.
async fn targets(
    app: &AppState,
    exam_id: &str,
    body: &ActionBody,
) -> Result<Vec<String>, ApiError> {
    if body.all == Some(true) {
        return Ok(app.store.exam_students(exam_id).await?);
    }
    let mut ids = body.students.clone().unwrap_or_default();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Applies the action; returns the students owed a frame.
async fn apply(
    app: &AppState,
    exam_id: &str,
    clock: &ExamClock,
    body: &ActionBody,
    caller: &Watcher,
    now: i64,
) -> Result<Vec<String>, ApiError> {
    let store = &app.store;
    let kind = body.kind;
    let mut lowered = None;
    let students = match kind {
        ActionKind::LowerHand => {
            let hand_id = body.hand_id.as_deref().unwrap_or_default();
            let hand = store
                .hand(exam_id, hand_id)
                .await?
                .ok_or_else(|| invalid(format!("no raised hand {hand_id:?} in this exam")))?;
            vec![hand.student_id]
        }
        _ => targets(app, exam_id, body).await?,
    };
    if let Some(hand_id) = body.reply_to.as_deref().or(body.hand_id.as_deref()) {
        let hand = store
            .hand(exam_id, hand_id)
            .await?
            .ok_or_else(|| invalid(format!("no raised hand {hand_id:?} in this exam")))?;
        if store
            .lower_hand(exam_id, hand_id, &caller.0.sub, now)
            .await?
        {
            lowered = Some(LoweredHand {
                hand_id: hand_id.to_owned(),
                student_id: hand.student_id.clone(),
                by: caller.0.sub.clone(),
                at: now,
            });
        }
    }
    let mut controls = BTreeMap::new();
    let mut outcomes = Vec::with_capacity(students.len());
    let mut deliver = Vec::new();
    let roster = if matches!(kind, ActionKind::Deny | ActionKind::Allow) {
        store.roster(exam_id).await?
    } else {
        Default::default()
    };
    for sid in &students {
        let mut out = serde_json::Map::new();
        out.insert("student_id".into(), json!(sid));
        let changed = match apply_one(app, exam_id, clock, body, sid, now, &roster, &mut out).await
        {
            Ok(changed) => changed,
            Err(e) => {
                stopped_halfway(app, exam_id, controls).await;
                return Err(e);
            }
        };
        if let Some(control) = changed.control {
            controls.insert(sid.clone(), control);
        }
        if changed.frame && kind.sends_frame() {
            deliver.push(sid.clone());
        }
        if kind == ActionKind::LowerHand {
            out.insert("lowered".into(), json!(lowered.is_some()));
        }
        outcomes.push(Value::Object(out));
    }
    if matches!(
        kind,
        ActionKind::Deny | ActionKind::Allow | ActionKind::Terminate
    ) {
        app.rosters.invalidate(exam_id);
    }
    let at = Timestamp::from_unix_ms(now);
    let frame = frame_for(body, &caller.0.name, at);
    let frame_text = frame.as_ref().map(Value::to_string);
    let result = json!({ "students": outcomes });
    let rows: Vec<(String, Option<String>)> = deliver
        .iter()
        .map(|s| (s.clone(), frame_text.clone()))
        .collect();
    store
        .finish_action(
            exam_id,
            &body.id,
            kind.as_str(),
            now,
            &result.to_string(),
            &rows,
        )
        .await?;
    let mut record = serde_json::to_value(answer_from(
        &stored(body, caller, now, &result),
        &deliver
            .iter()
            .map(|s| (s.clone(), ("pending".to_owned(), None)))
            .collect(),
    ))
    .unwrap_or(Value::Null);
    if let Some(obj) = record.as_object_mut() {
        obj.remove("payload");
        obj.insert(
            "payload".into(),
            serde_json::to_value(body).unwrap_or(Value::Null),
        );
    }
    let changed: Vec<&str> = controls.keys().map(String::as_str).collect();
    note_controls(app, exam_id, &changed).await;
    notify(
        app,
        exam_id,
        RoomCmd::Action(Box::new(ActionApplied {
            id: body.id.as_str().into(),
            kind,
            record,
            controls,
            frame,
            deliver: deliver.clone(),
            lowered,
        })),
    )
    .await;
    Ok(deliver)
}

/// The action failed after changing some students' records: their rooms
/// are told now (cause `action`), so what every instance shows matches the
/// database while the client decides whether to retry. The retry skips
/// these students' changes (store `apply_student_action`) and sends the
/// action's own frames.
async fn stopped_halfway(
    app: &AppState,
    exam_id: &str,
    controls: BTreeMap<String, StudentControl>,
) {
    let changed: Vec<&str> = controls.keys().map(String::as_str).collect();
    note_controls(app, exam_id, &changed).await;
    for (student, control) in controls {
        notify(
            app,
            exam_id,
            RoomCmd::StudentControl {
                student: student.as_str().into(),
                control: Box::new(control),
                cause: crate::room::ControlCause::Action,
            },
        )
        .await;
    }
}

/// What one student's part of an action changed.
struct Changed {
    control: Option<StudentControl>,
    /// Whether they are owed the action's frame.
    frame: bool,
}

#[allow(clippy::too_many_arguments)]
async fn apply_one(
    app: &AppState,
    exam_id: &str,
    clock: &ExamClock,
    body: &ActionBody,
    sid: &str,
    now: i64,
    roster: &crate::store::queries::Roster,
    out: &mut serde_json::Map<String, Value>,
) -> Result<Changed, ApiError> {
    let store = &app.store;
    let ts = |ms: Option<i64>| ms.map(Timestamp::from_unix_ms);
    let refused = |out: &mut serde_json::Map<String, Value>, e: &str| {
        out.insert("error".into(), json!(e));
        Changed {
            control: None,
            frame: false,
        }
    };
    let written = match body.kind {
        ActionKind::Extend => {
            let minutes = body.minutes.unwrap_or(0);
            let mut done = None;
            let r = store
                .apply_student_action(exam_id, sid, &body.id, |c| {
                    done = Some(c.clock.extend(clock, minutes, now)?);
                    Ok::<(), crate::control::Untimed>(())
                })
                .await?;
            match (r, done) {
                (Ok((c, true)), Some(e)) => {
                    out.insert(
                        "deadline".into(),
                        json!(Timestamp::from_unix_ms(e.deadline)),
                    );
                    out.insert("clamped".into(), json!(e.clamped));
                    out.insert("applied_ms".into(), json!(e.applied_ms));
                    c
                }
                (Ok((c, false)), _) => {
                    // A retry of an action that failed after this student.
                    out.insert("deadline".into(), json!(ts(c.clock.deadline(clock, now))));
                    out.insert("already_applied".into(), json!(true));
                    c
                }
                _ => return Ok(refused(out, "untimed")),
            }
        }
        ActionKind::Pause | ActionKind::Resume => {
            let pause = body.kind == ActionKind::Pause;
            let r = store
                .apply_student_action(exam_id, sid, &body.id, |c| {
                    if pause {
                        c.clock.pause(now)
                    } else {
                        c.clock.resume(now)
                    }
                })
                .await?;
            match r {
                Ok((c, fresh)) => {
                    out.insert("paused".into(), json!(pause));
                    out.insert("deadline".into(), json!(ts(c.clock.deadline(clock, now))));
                    if !fresh {
                        out.insert("already_applied".into(), json!(true));
                    }
                    c
                }
                Err(AlreadyInState::Paused) => return Ok(refused(out, "already_paused")),
                Err(AlreadyInState::Running) => return Ok(refused(out, "not_paused")),
                Err(AlreadyInState::TooManyPauses) => return Ok(refused(out, "too_many_pauses")),
            }
        }
        ActionKind::Terminate => {
            let won = store
                .finish_student(exam_id, sid, Finish::Terminated, now)
                .await?;
            out.insert("finished".into(), json!(won));
            set(store, exam_id, &body.id, sid, |c| {
                c.denied = true;
                c.deny_reason = Some("terminated".into());
            })
            .await?
        }
        ActionKind::Deny | ActionKind::Allow => {
            let deny = body.kind == ActionKind::Deny;
            if roster.contains_key(sid) {
                store.set_roster_allowed(exam_id, sid, !deny).await?;
            }
            out.insert("on_roster".into(), json!(roster.contains_key(sid)));
            if !deny {
                store.supersede_removals(exam_id, sid).await?;
            }
            set(store, exam_id, &body.id, sid, |c| {
                c.denied = deny;
                c.deny_reason = deny.then(|| "access_revoked".into());
            })
            .await?
        }
        ActionKind::ResetSession => {
            set(store, exam_id, &body.id, sid, |c| c.reset_at = Some(now)).await?
        }
        ActionKind::Message => {
            return Ok(Changed {
                control: None,
                frame: true,
            });
        }
        ActionKind::LowerHand => {
            return Ok(Changed {
                control: None,
                frame: false,
            });
        }
    };
    Ok(Changed {
        control: Some(written),
        frame: true,
    })
}

/// Changes a student's record for the action `action_id`, once: a retry
/// returns the record as the first attempt left it.
async fn set(
    store: &crate::store::Store,
    exam_id: &str,
    action_id: &str,
    sid: &str,
    mut change: impl FnMut(&mut StudentControl),
) -> Result<StudentControl, StoreError> {
    store
        .apply_student_action(exam_id, sid, action_id, |c| {
            change(c);
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .map(|r| match r {
            Ok((c, _)) => c,
            Err(never) => match never {},
        })
}

/// The frame every target gets, for kinds whose frame is the same for all.
fn frame_for(body: &ActionBody, from: &str, at: Timestamp) -> Option<Value> {
    let encoded = match body.kind {
        ActionKind::Message => ServerMsg::Message {
            id: &body.id,
            text: body.text.as_deref().map(str::trim).unwrap_or_default(),
            from,
            at,
        }
        .encode(),
        ActionKind::Terminate => ServerMsg::Terminated {
            id: &body.id,
            reason: body.reason.as_deref().unwrap_or("terminated by a teacher"),
        }
        .encode(),
        ActionKind::Deny => ServerMsg::SessionInvalidated {
            reason: "access_revoked",
            id: Some(&body.id),
        }
        .encode(),
        _ => return None,
    };
    serde_json::from_str(encoded.as_str()).ok()
}

fn stored(body: &ActionBody, caller: &Watcher, at: i64, result: &Value) -> StoredAction {
    StoredAction {
        action_id: body.id.clone(),
        kind: body.kind.as_str().into(),
        actor_sub: caller.0.sub.clone(),
        actor_name: caller.0.name.clone(),
        actor_role: caller.0.role.as_str().into(),
        at,
        payload: serde_json::to_string(body).unwrap_or_default(),
        result: Some(result.to_string()),
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
