//! A student's own stream, `GET /v1/exams/{exam_id}/me/events`: the
//! server-to-client part of their socket as Server-Sent Events (their
//! `exam_update`s, proctors' `message`s, `terminated`,
//! `session_invalidated`, announcements), for a page that only listens —
//! the SSE alternative of EVAL's proposal. And, since a stream cannot talk
//! back, `POST /v1/exams/{exam_id}/me/received`: the socket's `received`.
//!
//! The stream is admitted like a student's socket (the same checks, in
//! [`super::Opening`], then the roster and access list of
//! [`crate::ws::check_roster`]), but it is not a connection of the student:
//! the room registers it as a *listener* of that student
//! ([`crate::room::RoomCmd::ListenStudent`]) and sends it what it sends
//! their socket. Watchers never see the student `connected` because of
//! it, it holds no session lease, and a socket opened beside it is no
//! second session. With `?transport=http` the same request opens a
//! session stream instead ([`super::session`]), which is a connection.

use std::net::SocketAddr;

use axum::{
    Json,
    extract::{ConnectInfo, Path, Query, RawQuery, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use utoipa::ToSchema;

use super::{Audience, Opening, Stream};
use crate::{
    app::AppState,
    auth::{self, Claims, TokenError},
    http::ApiError,
    room::{Outbox, RoomCmd},
    ws::{check_roster, handshake::header_str, require_grant, verify_token},
};

#[derive(Debug, Deserialize)]
pub struct MeEventsParams {
    /// The JWT, for clients that cannot set headers (`EventSource`).
    access_token: Option<String>,
    /// A connection ticket (`POST /v1/tickets`), in place of a token.
    ticket: Option<String>,
    /// `http`: the stream is a session of the student (docs/PROTOCOL.md
    /// 8, [`super::session`]); absent, a listener (7.1).
    transport: Option<StreamTransport>,
    /// A session stream: the `session_id` of this client's previous
    /// connection (a socket's or a session stream's), as on a socket (4.3).
    previous_session: Option<String>,
    /// A session stream: resume after this seq (the `Last-Event-ID`
    /// header wins), for clients that cannot set the header.
    last_event_id: Option<crate::protocol::Seq>,
    /// A session stream: the handover token of the HTTP session named by
    /// `previous_session` (PROTOCOL.md 8.4).
    handover: Option<String>,
}

/// What `?transport=` may say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamTransport {
    /// The HTTP transport: the stream is a connection of the student.
    Http,
}

pub(crate) fn students_only() -> ApiError {
    ApiError::forbidden(
        "students_only",
        "this is a student's own stream; watchers use GET /v1/exams/{exam_id}/events",
    )
}

/// Streams a student's own server-to-client messages as Server-Sent
/// Events: first an `exam_update` with their state now (`cause:
/// "stream"`: phase, `deadline`, `server_time`, `paused`,
/// `extra_minutes`), then the action frames they have not acknowledged,
/// then live `exam_update`, `message`, `terminated`, `session_invalidated`
/// and `announcement` events. `event:` is the message `type`, `data:` the
/// socket's JSON, `id:` an action frame's `id` (acknowledge it with `POST
/// /v1/exams/{exam_id}/me/received`). The stream ends after `terminated`
/// or `session_invalidated`, at shutdown, and when the client falls too
/// far behind. A `: ping` comment every `sse.heartbeat`. It does not make
/// the student connected. Admission as for a student's socket.
///
/// With `?transport=http` it is instead a *session* of the student, the
/// server-to-client half of the HTTP transport (PROTOCOL.md 8): a
/// connection like a socket (status, lease, second session, grace), whose
/// first event is the socket's `welcome`, every event's `id:` the highest
/// seq delivered (for `Last-Event-ID`), and whose end sends `event: close`
/// with the socket's close code.
#[utoipa::path(get, path = "/v1/exams/{exam_id}/me/events", tag = "events",
    params(
        ("exam_id" = String, Path, description = "Exam id"),
        ("access_token" = Option<String>, Query, description = "JWT, for clients that cannot set the Authorization header (EventSource)"),
        ("ticket" = Option<String>, Query, description = "Connection ticket from POST /v1/tickets, in place of a token (single use)"),
        ("transport" = Option<String>, Query, description = "`http`: the stream is a session of the student, the server-to-client half of the HTTP transport (PROTOCOL.md 8; messages go to POST /v1/exams/{exam_id}/me/messages); absent: a listener that is no connection (7.1)"),
        ("previous_session" = Option<String>, Query, description = "With transport=http: session_id of this client's previous connection (socket or HTTP session), as on the socket"),
        ("last_event_id" = Option<u64>, Query, maximum = 9223372036854775807_u64, description = "With transport=http: resume after this seq (the Last-Event-ID header wins)"),
        ("handover" = Option<String>, Query, description = "With transport=http and previous_session naming an HTTP session: that session's handover token (its X-Examwatch-Handover response header), so it is taken over at once (PROTOCOL.md 8.4)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "With transport=http: resume after this seq (the highest seq the stream delivered, its last `id:`): `resumed` and the replay follow the welcome"),
    ),
    responses(
        (status = 200, description = "An event stream (`text/event-stream`, `Cache-Control: no-cache`, `X-Accel-Buffering: no`)", content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_exam_id`, `invalid_query` (also an unknown `transport`) or `invalid_last_event_id`", body = crate::http::ErrorBody),
        (status = 401, description = "Missing, invalid, expired or not yet valid token (`missing_token`, `invalid_token`, `token_expired`, `token_not_yet_valid`), one too large (`token_too_large`) or naming too many exams (`too_many_exams`), or a ticket that is unknown, used, expired or for another exam (`invalid_ticket`)", body = crate::http::ErrorBody),
        (status = 403, description = "`students_only` (a watcher's token), `exam_not_granted`, `origin_not_allowed`, `not_on_roster`, `not_allowed`, `exam_not_open` (a draft or unknown exam), `access_revoked`, `terminated` or `token_revoked`", body = crate::http::ErrorBody),
        (status = 429, description = "Too many handshakes from this IP or token subject (`rate_limited`), or too many open connections from this IP (`too_many_connections_from_ip`), shared with the socket; see `Retry-After`", body = crate::http::ErrorBody),
        (status = 503, description = "`shutting_down`, `roster_unavailable`, `tickets_unavailable`, `database_backlog` (transport=http), or `exam_unavailable` (the exam's room did not answer)", body = crate::http::ErrorBody),
    ))]
pub async fn student_events(
    State(app): State<AppState>,
    Path(exam_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
    params: Result<Query<MeEventsParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let opening = Opening::new(&app, &exam_id, raw_query.as_deref(), peer, &headers);
    let (params, claims, slot) = match opening
        .admit(
            &headers,
            params,
            |p: &MeEventsParams| (p.access_token.as_deref(), p.ticket.as_deref()),
            |claims| {
                if claims.role.is_watcher() {
                    Err(students_only())
                } else {
                    Ok(())
                }
            },
        )
        .await
    {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    if let Err(e) = check_roster(&app, &claims, &exam_id).await {
        return opening.refuse(e);
    }
    if let Some(refusal) = opening.closed_for_streams() {
        return refusal;
    }
    if params.transport == Some(StreamTransport::Http) {
        let query = super::session::SessionQuery {
            via_ticket: params.ticket.is_some(),
            previous_session: params.previous_session,
            last_event_id: params.last_event_id,
            handover: params.handover,
        };
        return super::session::open(&app, &opening, &headers, &exam_id, claims, slot, query);
    }
    let queue = app.settings.ws.student_queue;
    let (registry, exam) = (&app.registry, exam_id.as_str());
    let student: std::sync::Arc<str> = claims.sub.as_str().into();
    let join = move |id, out: Outbox| async move {
        registry.listen_student(exam, id, &student, &out).await
    };
    Stream::listen(
        &app,
        &opening,
        &claims,
        slot,
        queue,
        Audience::Student,
        join,
    )
    .await
}

/// What a student acknowledges.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceivedBody {
    /// The `id` of the frame (the `id:` of its event): a proctor action's.
    pub id: String,
}

/// The acknowledgement's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceivedAnswer {
    pub id: String,
    /// True: the delivery is recorded as `delivered` (now, or by an
    /// earlier acknowledgement elsewhere). False: nothing was waiting for
    /// this student's acknowledgement under this id (unknown, or
    /// acknowledged already), so nothing changed.
    pub recorded: bool,
}

/// The student of a REST call: a verified student token for the exam.
pub(crate) fn student_of(
    app: &AppState,
    headers: &HeaderMap,
    exam_id: &str,
) -> Result<Claims, ApiError> {
    let token = auth::extract_token(header_str(headers, header::AUTHORIZATION), None);
    let claims = token
        .ok_or(ApiError::unauthorized(TokenError::Missing))
        .and_then(|t| verify_token(app, t))?;
    if claims.role.is_watcher() {
        return Err(students_only());
    }
    require_grant(&claims, exam_id)?;
    Ok(claims)
}

/// Acknowledges an action's frame received on the event stream: exactly
/// the socket's `{"type":"received","id"}` (docs/PROTOCOL.md 4.14), so
/// the action's delivery to this student goes from `pending` to
/// `delivered` (`GET /v1/exams/{exam_id}/actions`, a `delivery` event for
/// watchers). Answered once it is recorded. Acknowledging the same id
/// again changes nothing (`recorded: false`). Allowed to a student whose
/// access was revoked or who was terminated: that is the frame they
/// acknowledge.
#[utoipa::path(post, path = "/v1/exams/{exam_id}/me/received", tag = "events",
    params(("exam_id" = String, Path, description = "Exam id")),
    request_body = ReceivedBody,
    responses(
        (status = 200, description = "Acknowledged (see `recorded`)", body = ReceivedAnswer),
        (status = 400, description = "`invalid_exam_id`, or a body that is not JSON (`invalid_body`)", body = crate::http::ErrorBody),
        (status = 401, description = "Missing, invalid, expired or not yet valid token", body = crate::http::ErrorBody),
        (status = 403, description = "`students_only` (a watcher's token), `exam_not_granted` or `token_revoked`", body = crate::http::ErrorBody),
        (status = 413, description = "Body too large (`payload_too_large`)", body = crate::http::ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json` (`unsupported_media_type`)", body = crate::http::ErrorBody),
        (status = 422, description = "A body of the wrong shape (`invalid_body`), or an `id` that is not 1-64 characters (`invalid_field`)", body = crate::http::ErrorBody),
        (status = 503, description = "`database_unavailable` (the delivery could not be recorded; retry) or `exam_unavailable`", body = crate::http::ErrorBody),
    ))]
pub async fn received(
    State(app): State<AppState>,
    Path(exam_id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<ReceivedBody>, JsonRejection>,
) -> Result<Json<ReceivedAnswer>, ApiError> {
    if !auth::valid_exam_id(&exam_id) {
        return Err(ApiError::bad_request(
            "invalid_exam_id",
            "exam ids are 1-64 characters of letters, digits, '-', '_' and '.'",
        ));
    }
    let claims = student_of(&app, &headers, &exam_id)?;
    let Json(body) = body?;
    if body.id.is_empty() || body.id.chars().count() > 64 {
        return Err(crate::api::invalid("id: 1-64 characters"));
    }
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "exam_unavailable",
            "the exam's room did not answer; retry shortly",
        )
    };
    // This instance's room: every room knows what is owed to every
    // student of its exam (from the database, and from the cluster).
    // A room that ended just as it was looked up drops the command
    // unanswered: then a fresh one is asked.
    let mut outcome = None;
    for _ in 0..3 {
        let room = app.registry.get_or_start(&exam_id);
        let (reply, answer) = oneshot::channel();
        let cmd = RoomCmd::Received {
            student: claims.sub.as_str().into(),
            id: body.id.clone(),
            reply,
        };
        if room.send(cmd).await.is_ok()
            && let Ok(o) = answer.await
        {
            outcome = Some(o);
            break;
        }
    }
    match outcome.ok_or_else(unavailable)? {
        Some(true) => Ok(Json(ReceivedAnswer {
            id: body.id,
            recorded: true,
        })),
        None => Ok(Json(ReceivedAnswer {
            id: body.id,
            recorded: false,
        })),
        Some(false) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the acknowledgement could not be recorded; send it again",
        )),
    }
}
