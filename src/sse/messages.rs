//! `POST /v1/exams/{exam_id}/me/messages`: the client-to-server half of the
//! HTTP transport (docs/PROTOCOL.md 8.2). A batch of the socket's client
//! messages for the student's session stream ([`super::session`]),
//! answered with each message's result, in order.
//!
//! Each message goes exactly the socket's way: [`crate::ws::inbound`]
//! (size, the student's shared rate bucket, parse, rights), then the same
//! `RoomCmd::Message` as the session's connection, so the room cannot tell
//! it from a socket's frame and answers it as one (`ack` after the commit
//! for `answer`/`submit`). The answers come back on the stream's outbox and
//! are handed here by ref ([`super::sessions::Replies`]). The POST may
//! reach any instance: one that does not hold the session asks the one
//! that does ([`super::forward`]).

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use utoipa::ToSchema;

use super::sessions::HttpSession;
use crate::{
    app::AppState,
    auth::{self, Role},
    http::ApiError,
    protocol::{ClientMsg, ErrorCode, Label, ServerMsg},
    ws::{
        check_roster,
        inbound::{self, Inbound, Refusal},
        lifetime,
    },
};

/// The header that names the session (its stream's `welcome.session_id`).
pub const SESSION_HEADER: &str = "x-examwatch-session";

/// One client message, as on the socket (docs/PROTOCOL.md 2).
#[derive(ToSchema)]
#[allow(dead_code)] // documents the request's shape
pub struct ClientMessageDoc {
    /// `progress`, `answer`, `submit`, `focus`, `activity`, `heartbeat`,
    /// `raise_hand` or `received`, with that message's fields.
    pub r#type: String,
    /// Echoed in the result; optional (a result comes either way).
    pub r#ref: Option<String>,
}

/// One message's result: the socket's reply object for it.
#[derive(ToSchema)]
#[allow(dead_code)] // documents the answer's shape
pub struct MessageResultDoc {
    /// `ack` or `error`.
    pub r#type: String,
    /// The message's `ref`, when it had one.
    pub r#ref: Option<String>,
    /// `error` only: the socket's error code (PROTOCOL.md 3.2), or
    /// `unsupported_on_http`.
    pub code: Option<String>,
    pub message: Option<String>,
    /// `rate_limited` only.
    pub retry_after_ms: Option<u64>,
    /// `not_stored` only: true when no result came within
    /// `http.reply_timeout` (send it again; duplicates are harmless).
    pub retry: Option<bool>,
}

/// What a batch came to, on whichever instance holds the session (also
/// the answer of a forwarded batch, [`super::forward`]).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub(crate) enum BatchOutcome {
    /// One result per message, in order.
    Results { results: Vec<Value> },
    /// The student's message budget was spent before the first message.
    RateLimited { retry_after_ms: u64 },
    /// No such session open for this student (here, or anywhere).
    NoSession,
}

/// Sends a batch of client messages for the student's HTTP session (the
/// `X-Examwatch-Session` header: the `session_id` of its stream's
/// `welcome`) and answers each message's result in order, exactly the
/// socket's reply for it: `{"type":"ack","ref"}` (for `answer` and
/// `submit` only once committed) or `{"type":"error","code","message",
/// "ref"}`. A message without `ref` gets a result without one. A result
/// not ready within `http.reply_timeout` is `error not_stored` with
/// `"retry": true`: send it again (duplicates are harmless). Any instance
/// will do.
#[utoipa::path(post, path = "/v1/exams/{exam_id}/me/messages", tag = "events",
    params(
        ("exam_id" = String, Path, description = "Exam id"),
        ("X-Examwatch-Session" = String, Header, description = "The session_id of the session stream's welcome (GET /v1/exams/{exam_id}/me/events?transport=http)"),
    ),
    request_body(content = Vec<ClientMessageDoc>, description = "1 to `limits.http_batch_max` (32) client messages, the socket's JSON objects"),
    responses(
        (status = 200, description = "One result per message, in order", body = Vec<MessageResultDoc>),
        (status = 400, description = "`invalid_exam_id`, a body that is not JSON (`invalid_body`), or no `X-Examwatch-Session` header (`missing_session`)", body = crate::http::ErrorBody),
        (status = 401, description = "Missing, invalid, expired or not yet valid token", body = crate::http::ErrorBody),
        (status = 403, description = "`students_only`, `exam_not_granted`, `token_revoked`, `not_on_roster`, `not_allowed`, `exam_not_open`, `access_revoked` or `terminated`", body = crate::http::ErrorBody),
        (status = 409, description = "`no_session`: no open HTTP session with that id for this student (open the stream, again)", body = crate::http::ErrorBody),
        (status = 413, description = "A body too large (`payload_too_large`), or a message over `limits.max_message_bytes` (`message_too_big`)", body = crate::http::ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json` (`unsupported_media_type`)", body = crate::http::ErrorBody),
        (status = 422, description = "Not a JSON array of 1 or more messages (`invalid_batch`), or more than `limits.http_batch_max` (`batch_too_big`)", body = crate::http::ErrorBody),
        (status = 429, description = "`rate_limited`: the student's message budget (`limits.messages_per_second`, shared with their sockets) is spent; see `Retry-After`", body = crate::http::ErrorBody),
        (status = 503, description = "`shutting_down`, `roster_unavailable`, or `session_unreachable` (the instance holding the session did not answer)", body = crate::http::ErrorBody),
    ))]
pub async fn post_messages(
    State(app): State<AppState>,
    Path(exam_id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    match post(&app, &exam_id, &headers, body).await {
        Ok(results) => Json(results).into_response(),
        Err(refusal) => refusal,
    }
}

async fn post(
    app: &AppState,
    exam_id: &str,
    headers: &HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Vec<Value>, Response> {
    let refuse = |e: ApiError| e.into_response();
    if !auth::valid_exam_id(exam_id) {
        return Err(refuse(ApiError::bad_request(
            "invalid_exam_id",
            "exam ids are 1-64 characters of letters, digits, '-', '_' and '.'",
        )));
    }
    let claims = super::student::student_of(app, headers, exam_id).map_err(refuse)?;
    check_roster(app, &claims, exam_id).await.map_err(refuse)?;
    let Json(body) = body.map_err(|e| refuse(e.into()))?;
    let texts = batch(app, body).map_err(refuse)?;
    if app.shutdown.is_cancelled() {
        return Err(refuse(super::shutting_down()));
    }
    let session_id = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .ok_or_else(|| {
            refuse(ApiError::bad_request(
                "missing_session",
                "the X-Examwatch-Session header must name the session (its welcome's session_id)",
            ))
        })?;
    let outcome = match app.http_sessions.get(session_id, exam_id, &claims.sub) {
        Some(session) => {
            app.metrics.http_batch(crate::metrics::HttpBatch::Local);
            run_batch(app, &session, texts).await
        }
        None => super::forward::forward(app, exam_id, &claims.sub, session_id, texts)
            .await
            .map_err(refuse)?,
    };
    match outcome {
        BatchOutcome::Results { results } => Ok(results),
        BatchOutcome::RateLimited { retry_after_ms } => {
            let secs =
                crate::ws::retry_after_secs(std::time::Duration::from_millis(retry_after_ms));
            let mut res = refuse(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many messages from this student; retry in {secs} s"),
            ));
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            Err(res)
        }
        BatchOutcome::NoSession => Err(refuse(no_session())),
    }
}

pub(crate) fn no_session() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "no_session",
        "no open HTTP session with this id for you: open the event stream \
         (GET /v1/exams/{exam_id}/me/events?transport=http) first, or again",
    )
}

/// The body as the messages' JSON texts: an array of 1..=
/// `limits.http_batch_max`, none over `limits.max_message_bytes`.
fn batch(app: &AppState, body: Value) -> Result<Vec<String>, ApiError> {
    let limits = &app.settings.limits;
    let Value::Array(messages) = body else {
        return Err(invalid_batch("the body must be a JSON array of messages"));
    };
    if messages.is_empty() {
        return Err(invalid_batch("the batch is empty: send 1 or more messages"));
    }
    if messages.len() > limits.http_batch_max {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "batch_too_big",
            format!(
                "{} messages; at most limits.http_batch_max = {} per request",
                messages.len(),
                limits.http_batch_max
            ),
        ));
    }
    let texts: Vec<String> = messages.iter().map(Value::to_string).collect();
    if let Some(big) = texts.iter().find(|t| t.len() > limits.max_message_bytes) {
        // The socket closes 1009 for it: never resend it.
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_big",
            format!(
                "a message of {} bytes; at most limits.max_message_bytes = {}",
                big.len(),
                limits.max_message_bytes
            ),
        ));
    }
    Ok(texts)
}

fn invalid_batch(message: &'static str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_batch", message)
}

/// One message's place in the answer: its result, or the wait for it.
enum Slot {
    Ready(Value),
    Waiting {
        /// The client's ref, put back in the room's answer.
        r#ref: Option<Label>,
        answer: oneshot::Receiver<axum::extract::ws::Utf8Bytes>,
    },
}

/// Runs a batch on the instance holding `session`: each message through
/// the socket's checks to the room, in order, then every result (the
/// room's answers within `http.reply_timeout` of the start).
pub(crate) async fn run_batch(
    app: &AppState,
    session: &HttpSession,
    texts: Vec<String>,
) -> BatchOutcome {
    let deadline = tokio::time::Instant::now() + app.settings.http.reply_timeout;
    // Any message meets the first-message deadline, as any text frame does
    // on a socket (refused ones too).
    session
        .spoke
        .store(true, std::sync::atomic::Ordering::Release);
    let mut slots = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let received = std::time::Instant::now();
        let refusal = match inbound::classify(app, Role::Student, &session.limiter, text) {
            Inbound::Room(incoming) if !matches!(incoming.msg, ClientMsg::Resume { .. }) => {
                let (ours, answer) = session.replies.expect();
                let cmd = crate::room::RoomCmd::Message {
                    received,
                    conn: session.conn,
                    r#ref: Some(ours.clone()),
                    msg: incoming.msg,
                    user: session.user.clone(),
                    from: session.name.clone(),
                };
                if session.room.send(cmd).await.is_err() {
                    session.replies.forget(&ours);
                    slots.push(Slot::Ready(not_stored(incoming.r#ref.as_ref())));
                } else {
                    slots.push(Slot::Waiting {
                        r#ref: incoming.r#ref,
                        answer,
                    });
                }
                continue;
            }
            Inbound::Room(incoming) => unsupported(incoming.r#ref, "resume"),
            Inbound::Refresh { r#ref, .. } => unsupported(r#ref, "refresh"),
            Inbound::Refused(refusal) => {
                if i == 0 && refusal.code == ErrorCode::RateLimited {
                    // Nothing of the batch was taken: the whole request waits.
                    return BatchOutcome::RateLimited {
                        retry_after_ms: refusal.retry_after_ms.unwrap_or(1000),
                    };
                }
                refusal
            }
            // `batch` refused these already; should one slip through,
            // the socket's own answer (1009) has no result to give.
            Inbound::TooBig => Refusal {
                code: ErrorCode::InvalidMessage,
                message: "the message is over limits.max_message_bytes".into(),
                r#ref: None,
                retry_after_ms: None,
            },
        };
        slots.push(Slot::Ready(refused(app, session, &refusal)));
    }
    let mut results = Vec::with_capacity(slots.len());
    for slot in slots {
        results.push(match slot {
            Slot::Ready(v) => v,
            Slot::Waiting { r#ref, answer } => {
                match tokio::time::timeout_at(deadline, answer).await {
                    Ok(Ok(frame)) => with_ref(frame.as_str(), r#ref.as_ref()),
                    // The stream ended (its answers with it), or the time is up.
                    Ok(Err(_)) | Err(_) => not_stored(r#ref.as_ref()),
                }
            }
        });
    }
    BatchOutcome::Results { results }
}

fn unsupported(r#ref: Option<Label>, kind: &str) -> Refusal {
    Refusal {
        code: ErrorCode::UnsupportedOnHttp,
        message: match kind {
            "resume" => "`resume` is not taken over HTTP: open the event stream with \
                         Last-Event-ID instead"
                .into(),
            _ => "`refresh` is not taken over HTTP: open a new event stream with the new token"
                .into(),
        },
        r#ref,
        retry_after_ms: None,
    }
}

/// A refusal's result; refusals count toward the session's budget, as a
/// socket's do: past it the session ends (1007/1008).
fn refused(app: &AppState, session: &HttpSession, refusal: &Refusal) -> Value {
    let exhausted = session
        .bad
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .spend(app.settings.limits.max_bad_messages);
    let frame = refusal.frame(app);
    if exhausted {
        session.kick.kick(lifetime::bad_close(refusal.code));
    }
    serde_json::from_str(frame.as_str()).unwrap_or(Value::Null)
}

/// The room's answer with the client's ref in place of ours.
fn with_ref(frame: &str, r#ref: Option<&Label>) -> Value {
    let mut v: Value = serde_json::from_str(frame).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        match r#ref {
            Some(r) => {
                obj.insert("ref".into(), serde_json::to_value(r).unwrap_or(Value::Null));
            }
            None => {
                obj.remove("ref");
            }
        }
    }
    v
}

/// The result of a message with no answer in time: send it again.
fn not_stored(r#ref: Option<&Label>) -> Value {
    let frame = ServerMsg::Error {
        code: ErrorCode::NotStored,
        message: "no result within http.reply_timeout: send it again (duplicates are harmless)"
            .into(),
        r#ref,
        retry_after_ms: None,
    }
    .encode();
    let mut v: Value = serde_json::from_str(frame.as_str()).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("retry".into(), Value::Bool(true));
    }
    v
}
