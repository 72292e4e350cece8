//! Server-Sent Events: `GET /v1/exams/{exam_id}/events` streams what a
//! watcher's socket would receive, as `text/event-stream`, for clients that
//! only listen (`EventSource`, `curl -N`, a proxy that does not upgrade).
//!
//! A stream is a watcher connection without a socket. It passes the same
//! checks as the WebSocket handshake (the very functions of
//! [`crate::ws::handshake`], so a refusal is answered, counted and logged
//! the same way), joins the exam's room like a teacher's socket
//! ([`crate::room::Registry::join_watcher`]: snapshot, or the replay after
//! `Last-Event-ID`), and sends each frame the room queues as one event
//! ([`event`]: `id` = `seq`, `event` = `type`, `data` = the frame's JSON,
//! not re-encoded). The room cannot tell it from a socket.
//!
//! Why a task per stream, and not a body that reads the room's queue
//! itself: hyper polls a body only when it can write, so a body would never
//! notice a kick (4008), a shutdown or a departed client while a peer that
//! stopped reading holds its writes. The stream's task, on the
//! [`crate::app::AppState::tracker`] like every socket, races each hand-off
//! to the body against the kick and the shutdown (as `ws.rs` races its
//! socket writes), so it always ends, always sends the room its `Leave`,
//! and at shutdown ends at once: the body then ends cleanly (the chunked
//! terminator), and nothing holds the drain.
//!
//! Only the watcher stream lives here now; a student's
//! (`GET /v1/exams/{id}/me/events`) would reuse [`event`] and [`Stream`]
//! with another join.

pub mod event;

use std::{convert::Infallible, net::SocketAddr, sync::atomic::Ordering};

use axum::{
    body::{Body, Bytes},
    extract::{ConnectInfo, Path, Query, RawQuery, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use tokio::{
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};
use tracing::Instrument;

use crate::{
    app::AppState,
    auth::{self, TokenError},
    http::ApiError,
    protocol::Seq,
    room::{CloseReason, ConnId, Kick, Outbox, RoomCmd, RoomHandle, close, queue::QueueRx},
    telemetry,
    ws::handshake::{Transport, header_str, rate_limited, refused},
    ws::{check_origin, require_grant},
};

/// Frames taken from the room's queue per hand-off to the body: one chunk
/// (and one write) for a burst, as the socket batches its writes.
const BATCH: usize = 64;

#[derive(Debug, Deserialize)]
pub struct EventsParams {
    /// The JWT, for clients that cannot set headers (`EventSource`).
    access_token: Option<String>,
    /// Resume after this seq; the `Last-Event-ID` header wins over it.
    last_event_id: Option<Seq>,
    /// The socket's name for `last_event_id`.
    last_seq: Option<Seq>,
}

/// Streams an exam's events to a watcher (teacher or admin), as
/// Server-Sent Events: `id:` is the event's `seq`, `event:` its `type`,
/// `data:` the JSON message of docs/PROTOCOL.md section 3, one line. The
/// stream starts with a `snapshot` (every part carries the snapshot's seq
/// as its id), or with exactly the events after `Last-Event-ID` (or
/// `?last_event_id=` / `?last_seq=`), or with a fresh `snapshot` when those
/// can no longer be replayed. A `: ping` comment every `sse.heartbeat`.
/// The stream ends when the server shuts down or the watcher falls too far
/// behind (reconnect with `Last-Event-ID`). Same token as the socket
/// (`Authorization` header or `?access_token=`), same limits.
/// One event of the stream, as its fields (`id:`, `event:`, `data:`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the event-stream's shape
pub struct SseEventDoc {
    /// The event's `seq`, for `Last-Event-ID`.
    pub id: Option<String>,
    /// The message `type` (`snapshot`, `student`, `alert`, …).
    pub event: Option<String>,
    /// The message's JSON, as the socket sends it.
    pub data: String,
}

#[utoipa::path(get, path = "/v1/exams/{exam_id}/events", tag = "events",
    params(
        ("exam_id" = String, Path, description = "Exam id"),
        ("access_token" = Option<String>, Query, description = "JWT, for clients that cannot set the Authorization header (EventSource)"),
        ("last_event_id" = Option<u64>, Query, maximum = 9223372036854775807_u64, description = "Resume after this seq (the Last-Event-ID header wins)"),
        ("last_seq" = Option<u64>, Query, maximum = 9223372036854775807_u64, description = "Same as last_event_id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this seq: sent by EventSource when it reconnects"),
    ),
    responses(
        (status = 200, description = "An event stream (`text/event-stream`, `Cache-Control: no-cache`, `X-Accel-Buffering: no`)", content_type = "text/event-stream", body = SseEventDoc),
        (status = 400, description = "`invalid_exam_id`, `invalid_query` or `invalid_last_event_id`", body = crate::http::ErrorBody),
        (status = 401, description = "Missing, invalid, expired or not yet valid token (`missing_token`, `invalid_token`, `token_expired`, `token_not_yet_valid`)", body = crate::http::ErrorBody),
        (status = 403, description = "`watchers_only` (a student token), `exam_not_granted` or `origin_not_allowed`", body = crate::http::ErrorBody),
        (status = 429, description = "Too many handshakes from this IP or token subject (`rate_limited`); see `Retry-After`", body = crate::http::ErrorBody),
        (status = 503, description = "`shutting_down`, or `exam_unavailable` (the exam's room did not answer)", body = crate::http::ErrorBody),
    ))]
pub async fn watcher_events(
    State(app): State<AppState>,
    Path(exam_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
    params: Result<Query<EventsParams>, QueryRejection>,
) -> Response {
    let now = std::time::Instant::now();
    let guard = &app.handshake_guard;
    let user_agent =
        telemetry::clip(header_str(&headers, header::USER_AGENT).unwrap_or("-")).into_owned();
    let refuse = |err: ApiError| {
        refused(
            &app,
            Transport::EventStream,
            &exam_id,
            raw_query.as_deref(),
            peer,
            &user_agent,
            err,
        )
    };
    if let Err(wait) = guard.limits.check_ip(peer.ip(), now) {
        return rate_limited(&app, refuse, "client address", wait);
    }
    if !auth::valid_exam_id(&exam_id) {
        return refuse(ApiError::bad_request(
            "invalid_exam_id",
            "exam ids are 1-64 characters of letters, digits, '-', '_' and '.'",
        ));
    }
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => return refuse(ApiError::bad_request("invalid_query", e.body_text())),
    };
    let token = auth::extract_token(
        header_str(&headers, header::AUTHORIZATION),
        params.access_token.as_deref(),
    );
    let claims = match token
        .ok_or(TokenError::Missing)
        .and_then(|t| app.keys.verify(t))
    {
        Ok(c) => c,
        Err(e) => return refuse(ApiError::unauthorized(e)),
    };
    if let Err(wait) = guard.limits.check_subject(&claims.sub, now) {
        return rate_limited(&app, refuse, "token subject", wait);
    }
    if let Err(e) = check_origin(&app, &headers) {
        return refuse(e);
    }
    if !claims.role.is_watcher() {
        return refuse(ApiError::forbidden(
            "watchers_only",
            "this stream is for the exam's watchers (teachers and admins)",
        ));
    }
    if let Err(e) = require_grant(&claims, &exam_id) {
        return refuse(e);
    }
    let last_seq = match resume_point(&headers, &params) {
        Ok(l) => l,
        Err(e) => return refuse(e),
    };
    if app.shutdown.is_cancelled() || app.draining() {
        return refuse(shutting_down());
    }
    let (tx, rx, kick) = crate::room::queue::queue(app.settings.ws.teacher_queue);
    let out = Outbox {
        tx,
        kick: kick.clone(),
    };
    let id = app.next_conn_id();
    let Some(room) = app
        .registry
        .join_watcher(&exam_id, id, &out, last_seq)
        .await
    else {
        return refuse(if app.shutdown.is_cancelled() {
            shutting_down()
        } else {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "exam_unavailable",
                "the exam's room did not answer; retry shortly",
            )
        });
    };
    // The body's side: a small buffer, so the task notices a stalled
    // client as a hand-off that waits (raced against kick and shutdown).
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(2);
    let stream = Stream {
        id,
        room,
        rx,
        kick,
        app: app.clone(),
        peer,
        user_agent: user_agent.clone(),
        last_seq,
    };
    let span = tracing::info_span!(
        "sse",
        conn_id = id,
        exam_id = %exam_id,
        user_id = %claims.sub,
        role = claims.role.as_str(),
    );
    app.tracker.spawn(stream.run(body_tx).instrument(span));
    response(body_rx)
}

/// Where to resume: the `Last-Event-ID` header (what a reconnecting
/// `EventSource` sends), else `?last_event_id=`, else `?last_seq=`.
fn resume_point(headers: &HeaderMap, params: &EventsParams) -> Result<Option<Seq>, ApiError> {
    // A seq is at most i64::MAX (the database's BIGINT), whichever is used.
    const MAX_SEQ: Seq = i64::MAX as Seq;
    if params
        .last_event_id
        .or(params.last_seq)
        .is_some_and(|s| s > MAX_SEQ)
        || params.last_seq.is_some_and(|s| s > MAX_SEQ)
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("last_event_id and last_seq are at most {MAX_SEQ}"),
        ));
    }
    let header = headers
        .get("last-event-id")
        .map(|v| v.to_str().map(str::trim).unwrap_or("?"));
    match header {
        // An empty id is what a client sends when it has none.
        Some("") | None => Ok(params.last_event_id.or(params.last_seq)),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::bad_request(
                "invalid_last_event_id",
                format!(
                    "Last-Event-ID {:?} is not a seq (a whole number)",
                    telemetry::clip(v)
                ),
            )
        }),
    }
}

fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the server is shutting down; reconnect to another instance",
    )
}

/// The `200 text/event-stream` answer whose body is what the task sends.
fn response(body_rx: mpsc::Receiver<Bytes>) -> Response {
    let chunks = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// How a stream ended, for its log line.
enum Ending {
    /// The room closed it (4008: too slow).
    Kicked(CloseReason),
    /// The server is shutting down.
    Shutdown,
    /// The body was dropped: the client went away.
    ClientGone,
}

/// One watcher's stream: the room's side (its queue and kick) and the
/// body's (a channel hyper reads).
pub(crate) struct Stream {
    id: ConnId,
    room: RoomHandle,
    rx: QueueRx,
    kick: Kick,
    app: AppState,
    peer: SocketAddr,
    user_agent: String,
    last_seq: Option<Seq>,
}

impl Stream {
    async fn run(self, body: mpsc::Sender<Bytes>) {
        let metrics = &self.app.metrics;
        metrics.sse_streams.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            ip = %self.peer, user_agent = %self.user_agent, auth = "ok",
            last_event_id = self.last_seq.map(|s| s as i64).unwrap_or(-1),
            "sse stream opened"
        );
        let started = Instant::now();
        let ending = self.pump(&body).await;
        // The room forgets this watcher (and may end, if it was the last).
        let _ = self.room.send(RoomCmd::Leave { conn: self.id }).await;
        metrics.sse_streams.fetch_sub(1, Ordering::Relaxed);
        let (by, reason) = match &ending {
            Ending::Kicked(r) => ("server", format!("{} {}", r.code, r.reason)),
            Ending::Shutdown => ("server", close::GOING_AWAY.reason.to_owned()),
            Ending::ClientGone => ("client", "stream dropped".to_owned()),
        };
        tracing::info!(
            ip = %self.peer, user_agent = %self.user_agent,
            closed_by = by, close_reason = %reason,
            duration_ms = started.elapsed().as_millis() as u64,
            "sse stream closed"
        );
    }

    /// Hands the room's frames and the heartbeats to the body until the
    /// stream must end.
    async fn pump(&self, body: &mpsc::Sender<Bytes>) -> Ending {
        let shutdown = self.app.shutdown.clone();
        let every = self.app.settings.sse.heartbeat;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let chunk = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ending::Shutdown,
                // Queued frames go before a kick is noticed, as on a socket.
                first = self.rx.recv() => self.batch(first),
                reason = self.kick.kicked() => return Ending::Kicked(reason),
                _ = body.closed() => return Ending::ClientGone,
                _ = heartbeat.tick() => Bytes::from_static(event::HEARTBEAT),
            };
            if let Err(ending) = self.hand_off(body, chunk).await {
                return ending;
            }
        }
    }

    /// `first` and whatever else is queued already, as one chunk.
    fn batch(&self, first: axum::extract::ws::Utf8Bytes) -> Bytes {
        let mut buf = Vec::new();
        event::append(&mut buf, first.as_str());
        for _ in 1..BATCH {
            match self.rx.try_recv() {
                Some(more) => event::append(&mut buf, more.as_str()),
                None => break,
            }
        }
        buf.into()
    }

    /// Gives one chunk to the body, unless the room kicks this stream or
    /// the server stops first: a client that does not read cannot hold
    /// the task.
    async fn hand_off(&self, body: &mpsc::Sender<Bytes>, chunk: Bytes) -> Result<(), Ending> {
        tokio::select! {
            biased;
            r = body.send(chunk) => r.map_err(|_| Ending::ClientGone),
            reason = self.kick.kicked() => Err(Ending::Kicked(reason)),
            _ = self.app.shutdown.cancelled() => Err(Ending::Shutdown),
        }
    }
}
