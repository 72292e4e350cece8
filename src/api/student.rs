//! A student's record, for disputes (issue 14 item 9): everything the
//! server knows of one student in one exam on one page (their state and
//! clock, accommodations, sessions, alerts, the actions that targeted
//! them, answers and hands), and their own page of the event log.
//!
//! Students' personal data (names, IPs, user agents) is shown only to
//! watchers of that exam: the same grant check as every read
//! ([`Watcher::require_right`] with `Watch`), so a token for another exam
//! learns nothing, not even whether the student exists.
//!
//! The state and the deadline are the live ones when the exam's room runs
//! on this instance (it is asked, like the counts are); otherwise they are
//! rebuilt from the database with the room's own clock code
//! ([`Control::view`]), never computed a second way here.

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::StatusCode,
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    Watcher,
    actions::{ActionAnswer, answer_from},
    invalid,
    records::{Timeline, TimelineQuery, known},
};
use crate::{
    app::AppState,
    auth::Right,
    http::ApiError,
    protocol::{StudentState, Timestamp},
    room::control::Control,
    store::{alerts::AlertRow, now_ms},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(record))
        .routes(routes!(student_timeline))
}

/// One student's record.
#[derive(Debug, Serialize, ToSchema)]
pub struct StudentRecord {
    pub student_id: String,
    /// The roster's name, else the one their token carried.
    pub name: String,
    /// True when `state`, `deadline` and `paused` come from the exam's
    /// running room on the answering instance; false when rebuilt from the
    /// database (no room here: nobody is connected to this instance).
    pub live: bool,
    /// Their `StudentState` as watchers see it (the room's now, or the last
    /// stored one); null if they never connected.
    #[schema(value_type = Option<Object>)]
    pub state: Option<StudentState>,
    /// When their time ends, by the server's clock (RFC 3339; null while
    /// untimed). The same value their `exam_update` carries.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deadline: Option<Timestamp>,
    /// The exam or this student is paused.
    pub paused: bool,
    pub accommodations: Accommodations,
    /// Time granted by `extend` actions so far, in milliseconds (negative
    /// when time was taken away).
    pub extension_ms: i64,
    /// When their clock started (first admission while in progress).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    /// How and when their exam ended; null while it has not.
    pub finished: Option<Finished>,
    pub access: Access,
    /// Every WebSocket session, oldest first.
    pub sessions: Vec<Session>,
    /// Their alerts, oldest first.
    pub alerts: Vec<AlertRow>,
    /// Actions that targeted them, oldest first, `students` holding only
    /// their own entry (with its `delivery`).
    pub actions: Vec<ActionAnswer>,
    /// Distinct questions with a stored answer.
    pub answers: i64,
    /// Hands they raised, oldest first.
    pub hands: Vec<Hand>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Accommodations {
    pub extra_minutes: u32,
    pub time_multiplier: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Finished {
    /// `submitted`, `time_up` or `terminated`.
    pub how: String,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Access {
    /// Removed from the access list (`deny`, or `allowed: false` on the roster).
    pub denied: bool,
    /// Why, when denied.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    pub session_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub opened_at: Timestamp,
    /// Null while open (or when its instance died before closing it).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub closed_at: Option<Timestamp>,
    /// The client's IP (the peer address, or the forwarded one behind a
    /// trusted proxy).
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The instance that held the socket.
    pub instance_id: String,
    /// The WebSocket close code (PROTOCOL.md, close codes) and reason.
    pub close_code: Option<i64>,
    pub close_reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Hand {
    pub hand_id: String,
    pub text: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub raised_at: Timestamp,
    /// Null while the hand is up.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub lowered_at: Option<Timestamp>,
}

fn no_such_student() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such student in this exam",
    )
}

/// One student's record: state, clock, sessions, alerts, actions, answers.
#[utoipa::path(get, path = "/v1/exams/{id}/students/{student_id}", tag = "records",
    params(("id" = String, Path, description = "Exam id"), ("student_id" = String, Path, description = "Student id")),
    responses(
        (status = 200, description = "OK", body = StudentRecord),
        (status = 401, description = "Missing, invalid or expired token", body = crate::http::ErrorBody),
        (status = 403, description = "`teachers_only` (a student's token) or `exam_not_granted`", body = crate::http::ErrorBody),
        (status = 404, description = "`not_found`: no such exam, or a student neither on its roster nor ever seen in it", body = crate::http::ErrorBody),
        (status = 503, description = "The database could not answer", body = crate::http::ErrorBody)
    ))]
async fn record(
    State(app): State<AppState>,
    caller: Watcher,
    Path((id, student_id)): Path<(String, String)>,
) -> Result<Json<StudentRecord>, ApiError> {
    caller.require_right(&id, Right::Watch)?;
    known(&app, &id).await?;
    let store = &app.store;
    let live = app.registry.student(&id, &student_id).await;
    let stored_state = match &live {
        Some(l) if l.state.is_some() => None,
        _ => store.last_student_state(&id, &student_id).await?,
    };
    if live.as_ref().is_none_or(|l| l.state.is_none())
        && stored_state.is_none()
        && !store.student_known(&id, &student_id).await?
    {
        return Err(no_such_student());
    }
    let control = store
        .student_control(&id, &student_id)
        .await?
        .unwrap_or_default();
    let roster = store.roster(&id).await?;
    let on_roster = roster.get(&student_id);
    // The clock: the room's answer, else the room's computation on the
    // stored records.
    let (view, is_live, state) = match live {
        Some(l) if l.state.is_some() => (l.view, true, l.state),
        Some(l) => (l.view, true, stored_state),
        None => {
            let view = match store.exam_clock(&id).await? {
                Some((clock, version)) => {
                    let mut c = Control::new(clock, version);
                    c.apply_student(student_id.as_str().into(), control.clone());
                    c.view(&student_id, now_ms())
                }
                None => Default::default(),
            };
            (view, false, stored_state)
        }
    };
    let name = on_roster
        .map(|(n, _)| n.clone())
        .or_else(|| state.as_ref().map(|s| s.name.clone()))
        .unwrap_or_default();
    let denied = control.denied || on_roster.is_some_and(|(_, allowed)| !allowed);
    let sessions = store
        .student_sessions(&id, &student_id)
        .await?
        .into_iter()
        .map(|s| Session {
            session_id: s.session_id,
            opened_at: Timestamp::from_unix_ms(s.opened_at),
            closed_at: s.closed_at.map(Timestamp::from_unix_ms),
            // Stored as the peer's socket address; the record shows the IP
            // (a forwarded client address has no port and stays as it is).
            ip: s.ip.map(|ip| {
                ip.parse::<std::net::SocketAddr>()
                    .map_or(ip, |a| a.ip().to_string())
            }),
            user_agent: s.user_agent,
            instance_id: s.instance_id,
            close_code: s.close_code,
            close_reason: s.close_reason,
        })
        .collect();
    let hands = store
        .student_hands(&id, &student_id)
        .await?
        .into_iter()
        .map(|h| Hand {
            hand_id: h.hand_id,
            text: h.text,
            raised_at: Timestamp::from_unix_ms(h.raised_at),
            lowered_at: h.lowered_at.map(Timestamp::from_unix_ms),
        })
        .collect();
    Ok(Json(StudentRecord {
        name,
        live: is_live,
        state,
        deadline: view.deadline.map(Timestamp::from_unix_ms),
        paused: view.paused,
        accommodations: Accommodations {
            extra_minutes: control.clock.extra_minutes,
            time_multiplier: control.clock.multiplier,
        },
        extension_ms: control.clock.extension_ms,
        started_at: control.clock.started_at.map(Timestamp::from_unix_ms),
        finished: control.finished.map(|(how, at)| Finished {
            how: how.as_str().to_owned(),
            at: Timestamp::from_unix_ms(at),
        }),
        access: Access {
            denied,
            reason: denied.then(|| {
                control
                    .deny_reason
                    .clone()
                    .unwrap_or_else(|| "access_revoked".into())
            }),
        },
        sessions,
        alerts: store.student_alerts(&id, &student_id).await?,
        actions: targeting(&app, &id, &student_id).await?,
        answers: store.answered_count(&id, &student_id).await?,
        hands,
        student_id,
    }))
}

/// The applied actions whose outcome names this student, oldest first,
/// each with only this student's entry and delivery.
async fn targeting(
    app: &AppState,
    exam_id: &str,
    student_id: &str,
) -> Result<Vec<ActionAnswer>, ApiError> {
    let deliveries = app.store.student_deliveries(exam_id, student_id).await?;
    // Actions are human-paced (a handful per student per exam): reading
    // them all and keeping this student's is simpler than indexing the
    // outcome's JSON, and the same SQL on both databases.
    let mut out = Vec::new();
    for a in app
        .store
        .actions(exam_id, u32::MAX)
        .await?
        .into_iter()
        .rev()
    {
        let mine = deliveries
            .get(&a.action_id)
            .map(|d| (student_id.to_owned(), (d.state.clone(), d.delivered_at)))
            .into_iter()
            .collect();
        let mut answer = answer_from(&a, &mine);
        answer.students.retain(|s| s["student_id"] == student_id);
        if !answer.students.is_empty() {
            out.push(answer);
        }
    }
    Ok(out)
}

/// One student's events (PROTOCOL.md 1.8), paged by seq like the exam's
/// timeline: every event stored under their id (their states, alerts,
/// deliveries, hands). Room-wide events (phases, announcements, the
/// `action` events themselves) are in the exam's timeline; the actions
/// that targeted the student are in their record.
#[utoipa::path(get, path = "/v1/exams/{id}/students/{student_id}/timeline", tag = "records",
    params(("id" = String, Path, description = "Exam id"), ("student_id" = String, Path, description = "Student id"), TimelineQuery),
    responses(
        (status = 200, description = "OK", body = Timeline),
        (status = 400, description = "Malformed request", body = crate::http::ErrorBody),
        (status = 401, description = "Missing, invalid or expired token", body = crate::http::ErrorBody),
        (status = 403, description = "`teachers_only` (a student's token) or `exam_not_granted`", body = crate::http::ErrorBody),
        (status = 404, description = "No such exam", body = crate::http::ErrorBody),
        (status = 422, description = "`invalid_field`: `limit` is outside 1-1000", body = crate::http::ErrorBody),
        (status = 503, description = "The database could not answer", body = crate::http::ErrorBody)
    ))]
async fn student_timeline(
    State(app): State<AppState>,
    caller: Watcher,
    Path((id, student_id)): Path<(String, String)>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> Result<Json<Timeline>, ApiError> {
    caller.require_right(&id, Right::Watch)?;
    known(&app, &id).await?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let after = q.after_seq.unwrap_or(0);
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(invalid("limit must be between 1 and 1000"));
    }
    let rows = app
        .store
        .student_timeline(&id, &student_id, after, limit + 1)
        .await?;
    Ok(Json(Timeline::page(rows, after, limit)))
}
