//! Irregularities: proctors' manual reports, resolving alerts, and the
//! list of an exam's alerts (automatic and manual alike).
//!
//! The `alerts` table is the truth every instance shares
//! (`store/alerts.rs`); the exam's room only numbers and pushes the events
//! (`alert` for a report, `alert_resolved`), through the broker, so a
//! watcher on any instance sees them and they land in the timeline.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::JsonRejection, rejection::QueryRejection},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Watcher, invalid};
use crate::{
    app::AppState,
    auth::Right,
    http::ApiError,
    protocol::{AlertCategory, AlertKind, AlertState, Timestamp},
    room::{Report, RoomCmd},
    store::alerts::{AlertRow, Resolved},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(file_report))
        .routes(routes!(list_alerts))
        .routes(routes!(resolve_alert))
}

/// Longest report text and resolution note, in characters.
const MAX_TEXT: usize = 2000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReport {
    /// The student it is about; absent for the whole room. 1-128
    /// characters without control characters.
    #[schema(min_length = 1, max_length = 128)]
    pub student_id: Option<String>,
    /// `environment`, `test_taker` or `technical`.
    #[schema(value_type = AlertCategory)]
    pub category: String,
    /// 1-2000 characters, not all whitespace; no control characters but
    /// newlines.
    #[schema(min_length = 1, max_length = 2000)]
    pub text: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resolve {
    /// Why it is resolved: at most 2000 characters; no control characters
    /// but newlines. Absent: empty.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub note: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// `open` or `resolved`; absent: both.
    #[param(value_type = Option<AlertState>)]
    pub state: Option<String>,
    /// At most this many alerts (1-1000, default 100), newest first.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertList {
    /// Newest first.
    pub alerts: Vec<AlertRow>,
}

/// Text a person typed: `max` characters at most, not blank, no control
/// characters except newlines.
fn check_text(field: &str, text: &str, max: usize, required: bool) -> Result<(), ApiError> {
    let ok = text.chars().count() <= max
        && !(required && text.trim().is_empty())
        && !text.chars().any(|c| c.is_control() && c != '\n');
    if ok {
        Ok(())
    } else {
        let need = if required { "1" } else { "0" };
        Err(invalid(format!(
            "{field} must be {need} to {max} characters, without control characters other than newline"
        )))
    }
}

async fn exam_known(app: &AppState, id: &str) -> Result<(), ApiError> {
    if app.store.exam_known(id).await? {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such exam",
        ))
    }
}

/// File an irregularity report: an alert of kind `report`, pushed to every
/// watcher of the exam on every instance and kept in its timeline.
#[utoipa::path(post, path = "/v1/exams/{id}/irregularities", request_body = NewReport, tag = "alerts",
    params(("id" = String, Path, description = "Exam id")),
    responses(
        (status = 201, description = "Filed; the alert as stored", body = AlertRow),
        (status = 400, description = "Malformed JSON", body = crate::http::ErrorBody),
        (status = 401, description = "Missing, invalid or expired token", body = crate::http::ErrorBody),
        (status = 403, description = "`teachers_only` (a student's token), `exam_not_granted`, or `forbidden` (the role may not file reports)", body = crate::http::ErrorBody),
        (status = 404, description = "No such exam", body = crate::http::ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over 2 MiB", body = crate::http::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not sent as `Content-Type: application/json`", body = crate::http::ErrorBody),
        (status = 422, description = "`invalid_field`: `category`, `text` or `student_id` is invalid (named in the message)", body = crate::http::ErrorBody),
        (status = 503, description = "The database could not answer, or the exam's room did not", body = crate::http::ErrorBody)
    ))]
async fn file_report(
    State(app): State<AppState>,
    caller: Watcher,
    Path(id): Path<String>,
    body: Result<Json<NewReport>, JsonRejection>,
) -> Result<(StatusCode, Json<AlertRow>), ApiError> {
    caller.require_right(&id, Right::FileReport)?;
    let Json(new) = body?;
    let category = AlertCategory::parse(&new.category)
        .ok_or_else(|| invalid("category must be one of environment, test_taker, technical"))?;
    check_text("text", &new.text, MAX_TEXT, true)?;
    if let Some(s) = &new.student_id
        && (s.is_empty() || s.chars().count() > 128 || s.chars().any(char::is_control))
    {
        return Err(invalid(
            "student_id must be 1 to 128 characters, without control characters",
        ));
    }
    exam_known(&app, &id).await?;
    let report = Report {
        alert_id: uuid::Uuid::new_v4().to_string(),
        student_id: new.student_id,
        category,
        text: new.text,
        by: caller.0.sub.clone(),
        at: Timestamp::now(),
    };
    let mut row = AlertRow {
        alert_id: report.alert_id.clone(),
        exam_id: id.clone(),
        seq: None,
        student_id: report.student_id.clone(),
        kind: AlertKind::Report.as_str().to_owned(),
        category,
        state: AlertState::Open,
        count: 1,
        students: None,
        text: Some(report.text.clone()),
        by: Some(report.by.clone()),
        at: report.at,
        resolution: None,
    };
    // Stored before it is announced: whoever sees the event can resolve it.
    app.store.insert_alert(&row).await?;
    row.seq = tell_room(&app, &id, report).await?.map(|s| s as i64);
    Ok((StatusCode::CREATED, Json(row)))
}

/// Hands a report to the exam's room (started if it is not running here),
/// retrying when the room ended just as it was looked up.
async fn tell_room(app: &AppState, id: &str, report: Report) -> Result<Option<u64>, ApiError> {
    for _ in 0..8 {
        let room = app.registry.get_or_start(id);
        let (reply, seq) = oneshot::channel();
        let cmd = RoomCmd::Report {
            report: report.clone(),
            reply,
        };
        if room.send(cmd).await.is_ok()
            && let Ok(Ok(seq)) = tokio::time::timeout(Duration::from_secs(5), seq).await
        {
            return Ok(seq);
        }
    }
    tracing::error!(exam_id = %id, "the exam's room did not take a report");
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "room_unavailable",
        "the report is stored but could not be announced; it is listed by GET /v1/exams/{id}/alerts",
    ))
}

/// The exam's alerts, newest first.
#[utoipa::path(get, path = "/v1/exams/{id}/alerts", tag = "alerts",
    params(("id" = String, Path, description = "Exam id"), AlertQuery),
    responses(
        (status = 200, description = "OK", body = AlertList),
        (status = 400, description = "Malformed query", body = crate::http::ErrorBody),
        (status = 401, description = "Missing, invalid or expired token", body = crate::http::ErrorBody),
        (status = 403, description = "`teachers_only` (a student's token) or `exam_not_granted`", body = crate::http::ErrorBody),
        (status = 404, description = "No such exam", body = crate::http::ErrorBody),
        (status = 422, description = "`invalid_field`: `state` is not open/resolved, or `limit` is outside 1-1000", body = crate::http::ErrorBody),
        (status = 503, description = "The database could not answer", body = crate::http::ErrorBody)
    ))]
async fn list_alerts(
    State(app): State<AppState>,
    caller: Watcher,
    Path(id): Path<String>,
    query: Result<Query<AlertQuery>, QueryRejection>,
) -> Result<Json<AlertList>, ApiError> {
    caller.require_right(&id, Right::Watch)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let state = match q.state.as_deref() {
        None => None,
        Some("open") => Some(AlertState::Open),
        Some("resolved") => Some(AlertState::Resolved),
        Some(_) => return Err(invalid("state must be open or resolved")),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(invalid("limit must be between 1 and 1000"));
    }
    exam_known(&app, &id).await?;
    let alerts = app.store.alerts(&id, state, limit).await?;
    Ok(Json(AlertList { alerts }))
}

/// Resolve an alert. Idempotent: resolving it again answers the first
/// resolution and sends no second `alert_resolved`.
#[utoipa::path(post, path = "/v1/exams/{id}/alerts/{alert_id}/resolve", request_body = Resolve, tag = "alerts",
    params(("id" = String, Path, description = "Exam id"), ("alert_id" = String, Path, description = "The alert's `alert_id`")),
    responses(
        (status = 200, description = "Resolved (now or before); the alert with its resolution", body = AlertRow),
        (status = 400, description = "Malformed JSON", body = crate::http::ErrorBody),
        (status = 401, description = "Missing, invalid or expired token", body = crate::http::ErrorBody),
        (status = 403, description = "`teachers_only` (a student's token), `exam_not_granted`, or `forbidden` (the role may not resolve alerts)", body = crate::http::ErrorBody),
        (status = 404, description = "`not_found`: no such alert in this exam", body = crate::http::ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over 2 MiB", body = crate::http::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not sent as `Content-Type: application/json`", body = crate::http::ErrorBody),
        (status = 422, description = "`invalid_field`: `note` is invalid", body = crate::http::ErrorBody),
        (status = 503, description = "The database could not answer", body = crate::http::ErrorBody)
    ))]
async fn resolve_alert(
    State(app): State<AppState>,
    caller: Watcher,
    Path((id, alert_id)): Path<(String, String)>,
    body: Result<Json<serde_json::Map<String, serde_json::Value>>, JsonRejection>,
) -> Result<Json<AlertRow>, ApiError> {
    caller.require_right(&id, Right::ResolveAlert)?;
    let Resolve { note } = super::object_body(body)?;
    check_text("note", &note, MAX_TEXT, false)?;
    let by = caller.0.sub.clone();
    // An automatic alert reaches the table through the batching writer, a
    // few milliseconds after watchers saw it: one just raised is looked
    // for again for a moment before it is called unknown.
    let db = &app.settings.database;
    let patience = db.flush_interval.max(db.events_flush_interval) * 4 + Duration::from_millis(500);
    let give_up = tokio::time::Instant::now() + patience;
    let resolved = loop {
        let at = Timestamp::now();
        match app
            .store
            .resolve_alert(&id, &alert_id, &by, &note, at)
            .await?
        {
            Resolved::NotFound if tokio::time::Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Resolved::NotFound => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such alert in this exam",
                ));
            }
            Resolved::Already(row) => return Ok(Json(row)),
            Resolved::Now(row) => break row,
        }
    };
    let cmd = RoomCmd::AlertResolved {
        alert_id,
        by,
        note,
        at: resolved
            .resolution
            .as_ref()
            .map_or_else(Timestamp::now, |r| r.at),
    };
    if app.registry.get_or_start(&id).send(cmd).await.is_err() {
        // Stored all the same; watchers see it in the list and the next snapshot.
        tracing::warn!(exam_id = %id, "the exam's room ended before it could announce a resolution");
    }
    Ok(Json(resolved))
}
