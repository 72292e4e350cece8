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
//! A stream cannot `refresh` its token: at the token's `exp` plus
//! `auth.expiry_grace` it sends an `error` event (`token_expired`) and
//! ends, and the client reconnects with a new token (`EventSource` does so
//! by itself, with the URL it has: a page that puts a token or ticket in
//! the URL opens a new `EventSource` instead). A revocation covering its
//! token ends it the same way with `token_revoked` ([`crate::revocations`]).
//!
//! A student's stream (`GET /v1/exams/{id}/me/events`, [`student`]) is
//! the same machinery with another join and another audience: the checks
//! of [`Opening`], then [`Stream`] with [`Audience::Student`].

pub mod event;
pub mod forward;
mod ids;
pub mod messages;
pub mod session;
pub mod sessions;
pub mod student;

use std::{convert::Infallible, net::SocketAddr};

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
    auth::{self, Claims, TokenError},
    client_ip::ClientAddr,
    http::ApiError,
    protocol::Seq,
    ratelimit::ConnectionSlot,
    revocations::TokenId,
    room::{CloseReason, ConnId, Kick, Outbox, RoomCmd, RoomHandle, close, queue::QueueRx},
    telemetry,
    ws::handshake::{Transport, header_str, rate_limited, refused},
    ws::lifetime,
    ws::{check_origin, connection_slot, refuse_connection, require_grant, verify_token},
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
        (status = 401, description = "Missing, invalid, expired or not yet valid token (`missing_token`, `invalid_token`, `token_expired`, `token_not_yet_valid`), or one too large (`token_too_large`) or naming too many exams (`too_many_exams`)", body = crate::http::ErrorBody),
        (status = 403, description = "`watchers_only` (a student token), `exam_not_granted`, `origin_not_allowed` or `token_revoked`", body = crate::http::ErrorBody),
        (status = 429, description = "Too many handshakes from this IP or token subject (`rate_limited`), or too many open connections from this IP (`too_many_connections_from_ip`); see `Retry-After`", body = crate::http::ErrorBody),
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
    let opening = Opening::new(&app, &exam_id, raw_query.as_deref(), peer, &headers);
    let (params, claims, slot) = match opening
        .admit(
            &headers,
            params,
            |p: &EventsParams| (p.access_token.as_deref(), None),
            |claims| {
                if claims.role.is_watcher() {
                    Ok(())
                } else {
                    Err(ApiError::forbidden(
                        "watchers_only",
                        "this stream is for the exam's watchers (proctors, teachers and admins)",
                    ))
                }
            },
        )
        .await
    {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let refuse = |e| opening.refuse(e);
    let last_seq = match resume_point(&headers, &params) {
        Ok(l) => l,
        Err(e) => return refuse(e),
    };
    if let Some(refusal) = opening.closed_for_streams() {
        return refusal;
    }
    let queue = app.settings.ws.teacher_queue;
    let (registry, exam) = (&app.registry, exam_id.as_str());
    let join =
        move |id, out: Outbox| async move { registry.join_watcher(exam, id, &out, last_seq).await };
    let audience = Audience::Watcher { last_seq };
    Stream::listen(&app, &opening, &claims, slot, queue, audience, join).await
}

/// Where to resume: the `Last-Event-ID` header (what a reconnecting
/// `EventSource` sends), else `?last_event_id=`, else `?last_seq=`.
fn resume_point(headers: &HeaderMap, params: &EventsParams) -> Result<Option<Seq>, ApiError> {
    if params.last_seq.is_some_and(|s| s > MAX_SEQ) {
        return Err(too_large_seq());
    }
    last_event_id(headers, params.last_event_id.or(params.last_seq))
}

/// A seq is at most i64::MAX (the database's BIGINT), whichever is used.
const MAX_SEQ: Seq = i64::MAX as Seq;

fn too_large_seq() -> ApiError {
    ApiError::bad_request(
        "invalid_query",
        format!("last_event_id and last_seq are at most {MAX_SEQ}"),
    )
}

/// The `Last-Event-ID` header, else `query` (the stream's query parameter
/// for clients that cannot set the header).
pub(crate) fn last_event_id(
    headers: &HeaderMap,
    query: Option<Seq>,
) -> Result<Option<Seq>, ApiError> {
    if query.is_some_and(|s| s > MAX_SEQ) {
        return Err(too_large_seq());
    }
    let header = headers
        .get("last-event-id")
        .map(|v| v.to_str().map(str::trim).unwrap_or("?"));
    match header {
        // An empty id is what a client sends when it has none.
        Some("") | None => Ok(query),
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

/// A stream being opened: what its refusals are logged with, and the
/// checks every stream passes before its own (the socket's handshake, in
/// the socket's order, with the very functions of [`crate::ws::handshake`]).
pub(crate) struct Opening<'a> {
    app: &'a AppState,
    exam_id: &'a str,
    raw_query: Option<&'a str>,
    /// Whom the stream is for (the peer, or whom a trusted proxy forwarded for).
    pub(crate) client: ClientAddr,
    /// Client-chosen and headed for the log: clipped.
    pub(crate) user_agent: String,
}

impl<'a> Opening<'a> {
    pub(crate) fn new(
        app: &'a AppState,
        exam_id: &'a str,
        raw_query: Option<&'a str>,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Self {
        let user_agent =
            telemetry::clip(header_str(headers, header::USER_AGENT).unwrap_or("-")).into_owned();
        Opening {
            app,
            exam_id,
            raw_query,
            client: ClientAddr::resolve(&app.settings.server, peer, headers),
            user_agent,
        }
    }

    /// Answers, counts and logs a refusal like a refused socket handshake.
    pub(crate) fn refuse(&self, err: ApiError) -> Response {
        refused(
            self.app,
            Transport::EventStream,
            self.exam_id,
            self.raw_query,
            self.client,
            &self.user_agent,
            err,
        )
    }

    /// The per-address limits (handshake rate, then open connections: the
    /// slot returned is the stream's, to hold while it runs), the exam id,
    /// the query, the credential (a ticket, else the `Authorization` header
    /// or `access_token`, which `credential` picks from the query), the
    /// per-subject limit, `Origin`, the stream's own `role` check, then the
    /// grant.
    pub(crate) async fn admit<P>(
        &self,
        headers: &HeaderMap,
        params: Result<Query<P>, QueryRejection>,
        credential: impl Fn(&P) -> (Option<&str>, Option<&str>),
        role: impl FnOnce(&Claims) -> Result<(), ApiError>,
    ) -> Result<(P, Claims, ConnectionSlot), Response> {
        let app = self.app;
        let limits = &app.handshake_guard.limits;
        let refuse = |err: ApiError| self.refuse(err);
        if let Err(wait) = limits.check_ip(self.client.ip) {
            return Err(rate_limited(app, refuse, "client address", wait));
        }
        let slot = match connection_slot(app, self.client) {
            Ok(slot) => slot,
            Err(err) => return Err(refuse_connection(refuse, err)),
        };
        if !auth::valid_exam_id(self.exam_id) {
            return Err(refuse(ApiError::bad_request(
                "invalid_exam_id",
                "exam ids are 1-64 characters of letters, digits, '-', '_' and '.'",
            )));
        }
        let params = match params {
            Ok(Query(p)) => p,
            Err(e) => {
                return Err(refuse(ApiError::bad_request(
                    "invalid_query",
                    e.body_text(),
                )));
            }
        };
        let (access_token, ticket) = credential(&params);
        let claims = match ticket {
            // A ticket's handshake was counted when it was minted.
            // The ticket's token may have been revoked since it was minted.
            Some(ticket) => match app.tickets.redeem(ticket, self.exam_id).await {
                Ok(c) => match crate::revocations::check(app, &c) {
                    Ok(()) => c,
                    Err(e) => return Err(refuse(e)),
                },
                Err(e) => return Err(refuse(e.into())),
            },
            None => {
                let token =
                    auth::extract_token(header_str(headers, header::AUTHORIZATION), access_token);
                let claims = match token
                    .ok_or(ApiError::unauthorized(TokenError::Missing))
                    .and_then(|t| verify_token(app, t))
                {
                    Ok(c) => c,
                    Err(e) => return Err(refuse(e)),
                };
                if let Err(wait) = limits.check_subject(&claims.sub) {
                    return Err(rate_limited(app, refuse, "token subject", wait));
                }
                claims
            }
        };
        if let Err(e) = check_origin(app, headers) {
            return Err(refuse(e));
        }
        if let Err(e) = role(&claims) {
            return Err(refuse(e));
        }
        if let Err(e) = require_grant(&claims, self.exam_id) {
            return Err(refuse(e));
        }
        Ok((params, claims, slot))
    }

    /// The refusal while the server drains or stops (`None`: streams are
    /// still taken).
    pub(crate) fn closed_for_streams(&self) -> Option<Response> {
        (self.app.shutdown.is_cancelled() || self.app.draining())
            .then(|| self.refuse(shutting_down()))
    }

    /// The refusal when the exam's room did not take the stream.
    pub(crate) fn room_refused(&self) -> Response {
        self.refuse(if self.app.shutdown.is_cancelled() {
            shutting_down()
        } else {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "exam_unavailable",
                "the exam's room did not answer; retry shortly",
            )
        })
    }
}

/// The `error` event a stream ends with when its token expires.
fn expired_frame() -> axum::extract::ws::Utf8Bytes {
    crate::protocol::ServerMsg::Error {
        code: crate::protocol::ErrorCode::TokenExpired,
        message: "this stream's token has expired: reconnect with a new token".into(),
        r#ref: None,
        retry_after_ms: None,
    }
    .encode()
}

pub(crate) fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the server is shutting down; reconnect to another instance",
    )
}

/// The `200 text/event-stream` answer whose body is what the task sends.
pub(crate) fn response(body_rx: mpsc::Receiver<Bytes>) -> Response {
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
    /// A student's stream sent the frame that removes them from the exam
    /// (`terminated`, `session_invalidated`): nothing more is theirs.
    Removed(&'static str),
    /// Its token's `exp` plus `auth.expiry_grace` passed (an `error`
    /// event `token_expired` was sent).
    Expired,
}

/// Whose stream it is, and so how its frames become events.
pub(crate) enum Audience {
    /// A watcher's (`GET .../events`): `id:` is the `seq`.
    Watcher {
        /// Where it resumed from, for its log line.
        last_seq: Option<Seq>,
    },
    /// A student's (`GET .../me/events`): `id:` is an action frame's `id`,
    /// and the stream ends after a frame that removes the student.
    Student,
}

/// One stream: the room's side (its queue and kick) and the body's (a
/// channel hyper reads).
pub(crate) struct Stream {
    id: ConnId,
    room: RoomHandle,
    rx: QueueRx,
    kick: Kick,
    /// Its entry among the live connections revocations close: held, not
    /// read (dropped with the stream, it unregisters).
    _live: crate::live::Listed,
    /// Its token's `exp` (Unix seconds): the stream ends past it.
    exp: u64,
    app: AppState,
    client: ClientAddr,
    /// The stream's place in its IP's count (`limits.connections_per_ip`),
    /// given back when the stream's task ends.
    _slot: ConnectionSlot,
    user_agent: String,
    audience: Audience,
}

impl Stream {
    /// Opens a listener stream (sections 7 and 7.1) for admitted `claims`:
    /// its queue of `queue` frames, `join` to put it in its room (`None`:
    /// the room refused, 503), its entry among the live connections, and
    /// the task that feeds the body.
    pub(crate) async fn listen<F, Fut>(
        app: &AppState,
        opening: &Opening<'_>,
        claims: &Claims,
        slot: ConnectionSlot,
        queue: usize,
        audience: Audience,
        join: F,
    ) -> Response
    where
        F: FnOnce(ConnId, Outbox) -> Fut,
        Fut: std::future::Future<Output = Option<RoomHandle>>,
    {
        let watcher = matches!(audience, Audience::Watcher { .. });
        let (tx, rx, kick) = crate::room::queue::queue(queue);
        let lane = if watcher {
            crate::metrics::SlowPath::SseWatcher
        } else {
            crate::metrics::SlowPath::SseStudent
        };
        let out = Outbox {
            tx,
            kick: kick.clone(),
            lane,
        };
        let id = app.next_conn_id();
        let Some(room) = join(id, out.clone()).await else {
            return opening.room_refused();
        };
        // The body's side: a small buffer, so the task notices a stalled
        // client as a hand-off that waits (raced against kick and shutdown).
        let (body_tx, body_rx) = mpsc::channel::<Bytes>(2);
        let stream = Stream {
            id,
            room,
            rx,
            kick,
            // Listed for revocations and the drain (src/live.rs).
            _live: app.revocations.register(
                id,
                opening.exam_id.into(),
                watcher,
                TokenId::of(claims),
                out,
            ),
            exp: claims.exp,
            app: app.clone(),
            client: opening.client,
            _slot: slot,
            user_agent: opening.user_agent.clone(),
            audience,
        };
        let span = tracing::info_span!(
            "sse",
            conn_id = id,
            exam_id = %opening.exam_id,
            user_id = %claims.sub,
            role = claims.role.as_str(),
        );
        stream.start(body_tx, span);
        response(body_rx)
    }

    /// Runs the stream on the server's task tracker, in `span`.
    fn start(self, body: mpsc::Sender<Bytes>, span: tracing::Span) {
        let tracker = self.app.tracker.clone();
        tracker.spawn(self.run(body).instrument(span));
    }

    /// The open-streams gauge this stream counts in.
    fn gauge(&self) -> &metrics::Gauge {
        match self.audience {
            Audience::Watcher { .. } => &self.app.metrics.sse_streams,
            Audience::Student => &self.app.metrics.sse_student_streams,
        }
    }

    async fn run(self, body: mpsc::Sender<Bytes>) {
        // A rolling restart ends streams spread over its window like
        // sockets (a kick with 1012's reason: the body ends cleanly): the
        // stream was listed for it with `_live`.
        self.gauge().increment(1);
        let last_event_id = match self.audience {
            Audience::Watcher { last_seq } => last_seq.map(|s| s as i64).unwrap_or(-1),
            Audience::Student => -1,
        };
        tracing::info!(
            ip = %self.client, user_agent = %self.user_agent, auth = "ok", last_event_id,
            "sse stream opened"
        );
        let started = Instant::now();
        let ending = self.pump(&body).await;
        // The room forgets this stream (and may end, if it was the last).
        let _ = self.room.send(RoomCmd::Leave { conn: self.id }).await;
        self.gauge().decrement(1);
        let (by, reason) = match &ending {
            Ending::Kicked(r) => ("server", format!("{} {}", r.code, r.reason)),
            Ending::Shutdown => ("server", close::GOING_AWAY.reason.to_owned()),
            Ending::ClientGone => ("client", "stream dropped".to_owned()),
            Ending::Removed(by) => ("server", format!("removed ({by})")),
            Ending::Expired => ("server", close::TOKEN_EXPIRED.reason.to_owned()),
        };
        tracing::info!(
            ip = %self.client, user_agent = %self.user_agent,
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
        let grace = lifetime::grace(&self.app.settings.auth);
        let expiry = tokio::time::sleep_until(lifetime::next_wake(self.exp, grace));
        tokio::pin!(expiry);
        loop {
            let (chunk, last) = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ending::Shutdown,
                // Queued frames go before a kick is noticed, as on a socket.
                first = self.rx.recv() => self.batch(first),
                reason = self.kick.kicked() => return Ending::Kicked(reason),
                _ = body.closed() => return Ending::ClientGone,
                _ = heartbeat.tick() => (Bytes::from_static(event::HEARTBEAT), None),
                () = &mut expiry => {
                    if !lifetime::until_expiry(self.exp, grace, crate::store::now_ms()).is_zero() {
                        expiry.as_mut().reset(lifetime::next_wake(self.exp, grace));
                        continue;
                    }
                    let mut buf = Vec::new();
                    event::append(&mut buf, expired_frame().as_str());
                    let _ = self.hand_off(body, buf.into()).await;
                    return Ending::Expired;
                }
            };
            if let Err(ending) = self.hand_off(body, chunk).await {
                return ending;
            }
            if let Some(removed) = last {
                return Ending::Removed(removed);
            }
        }
    }

    /// `first` and whatever else is queued already, as one chunk; on a
    /// student's stream, up to a frame that removes them (named, so the
    /// stream ends once it is handed off).
    fn batch(&self, first: axum::extract::ws::Utf8Bytes) -> (Bytes, Option<&'static str>) {
        let mut buf = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(frame) = next.take() {
            match self.audience {
                Audience::Watcher { .. } => event::append(&mut buf, frame.as_str()),
                Audience::Student => {
                    if let Some(removed) = event::append_student(&mut buf, frame.as_str()) {
                        return (buf.into(), Some(removed));
                    }
                }
            }
            taken += 1;
            if taken < BATCH {
                next = self.rx.try_recv();
            }
        }
        (buf.into(), None)
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
