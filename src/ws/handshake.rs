//! The handshake: every check a WebSocket request must pass before the
//! upgrade (rate limits per address, open connections per address, the exam
//! id, the query, the credential — ticket or token, its size —, the rate
//! per subject, Origin, grant, backlog, roster, drain), each refusal a JSON
//! answer with a stable code, counted and logged within the log budget. The
//! checks that `POST /v1/tickets` and the REST API share are `pub(crate)`
//! here. The address is the client's ([`ClientAddr`]: the peer, or whom a
//! trusted proxy forwarded for).

use std::{net::SocketAddr, time::Duration};

use axum::{
    extract::{
        ConnectInfo, Path, Query, RawQuery, State,
        rejection::QueryRejection,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use crate::{
    app::AppState,
    auth::{self, Claims, TokenError},
    client_ip::ClientAddr,
    http::ApiError,
    protocol::Seq,
    ratelimit::{ConnectionSlot, Verdict},
    roster::Admission,
    telemetry,
};

/// `Retry-After` of a refusal for too many open connections: there is no
/// telling when one closes, so a pause long enough not to hammer.
const CONNECTIONS_RETRY_AFTER: Duration = Duration::from_secs(5);

use super::{AuthVia, Connection, MAX_WRITE_BUFFER, SUBPROTOCOL};

#[derive(Debug, Deserialize)]
pub struct WsParams {
    access_token: Option<String>,
    /// A connection ticket from `POST /v1/tickets`, in place of a token.
    ticket: Option<String>,
    /// Teachers only: resume after this seq instead of taking a snapshot.
    last_seq: Option<Seq>,
    /// Students: the `session_id` of this client's previous connection.
    previous_session: Option<String>,
    /// Students: the handover token of the HTTP session `previous_session`
    /// names (PROTOCOL.md 8.4).
    handover: Option<String>,
}

/// `GET /v1/exams/{exam_id}/ws`: authenticate, authorize, then upgrade.
/// The protocol spoken after the upgrade is in docs/PROTOCOL.md.
#[utoipa::path(get, path = "/v1/exams/{exam_id}/ws", tag = "websocket",
    params(
        ("exam_id" = String, Path, description = "Exam id"),
        ("ticket" = Option<String>, Query, description = "Connection ticket from POST /v1/tickets: how browsers authenticate (single use, for this exam, about 30 s); the token is then not read"),
        ("access_token" = Option<String>, Query, description = "JWT (fallback for servers without tickets; else the Authorization header)"),
        ("last_seq" = Option<u64>, Query, description = "Teachers: resume after this seq instead of a snapshot"),
        ("previous_session" = Option<String>, Query, description = "Students: session_id of the previous connection"),
        ("handover" = Option<String>, Query, description = "Students, with previous_session naming an HTTP session: that session's handover token (its X-Examwatch-Handover response header), so it is taken over at once instead of after a liveness probe (PROTOCOL.md 8.4)"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol (subprotocol examwatch.v1 when offered)"),
        (status = 400, description = "Invalid exam id or query, or not a WebSocket request"),
        (status = 401, description = "Missing, invalid, expired or not yet valid token (`missing_token`, `invalid_token`, `token_expired`, `token_not_yet_valid`), a token over `limits.max_token_bytes` (`token_too_large`) or naming more than `limits.max_token_exams` exams (`too_many_exams`), or a ticket that is unknown, used, expired or for another exam (`invalid_ticket`)"),
        (status = 403, description = "Exam not granted, Origin not allowed, not on the roster, or the token revoked (`token_revoked`)"),
        (status = 429, description = "Too many handshakes from this IP or token subject (`rate_limited`), or too many open connections from this IP (`too_many_connections_from_ip`); see `Retry-After`"),
        (status = 503, description = "Shutting down, the database backlog is full, or tickets cannot be read (`tickets_unavailable`)"),
    ))]
pub async fn handshake(
    State(app): State<AppState>,
    Path(exam_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
    params: Result<Query<WsParams>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let guard = &app.handshake_guard;
    let client = ClientAddr::resolve(&app.settings.server, peer, &headers);
    // Client-chosen and headed for the log and the sessions table: bounded.
    let user_agent =
        telemetry::clip(header_str(&headers, header::USER_AGENT).unwrap_or("-")).into_owned();
    let refuse = |err: ApiError| {
        refused(
            &app,
            Transport::WebSocket,
            &exam_id,
            raw_query.as_deref(),
            client,
            &user_agent,
            err,
        )
    };
    // Before anything else, so a flood from one address costs a map lookup.
    if let Err(wait) = guard.limits.check_ip(client.ip) {
        return rate_limited(&app, refuse, "client address", wait);
    }
    // Held from here: released by any refusal below, else by the
    // connection's task when the socket ends.
    let slot = match connection_slot(&app, client) {
        Ok(slot) => slot,
        Err(err) => return refuse_connection(refuse, err),
    };
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
    // A ticket, when given, is the credential: the token is not read (a
    // page that has one never put its token in the URL).
    let (claims, via) = match params.ticket.as_deref() {
        // The ticket's token may have been revoked since it was minted.
        Some(ticket) => match app.tickets.redeem(ticket, &exam_id).await {
            Ok(c) => match crate::revocations::check(&app, &c) {
                Ok(()) => (c, AuthVia::Ticket),
                Err(e) => return refuse(e),
            },
            Err(e) => return refuse(e.into()),
        },
        None => {
            let token = auth::extract_token(
                header_str(&headers, header::AUTHORIZATION),
                params.access_token.as_deref(),
            );
            match token
                .ok_or(ApiError::unauthorized(TokenError::Missing))
                .and_then(|t| verify_token(&app, t))
            {
                Ok(c) => (c, AuthVia::Token),
                Err(e) => return refuse(e),
            }
        }
    };
    // A ticket's handshake was counted when it was minted.
    if via == AuthVia::Token
        && let Err(wait) = guard.limits.check_subject(&claims.sub)
    {
        return rate_limited(&app, refuse, "token subject", wait);
    }
    if let Err(e) = check_origin(&app, &headers) {
        return refuse(e);
    }
    if let Err(e) = require_grant(&claims, &exam_id) {
        return refuse(e);
    }
    if app.writer.over_limit() {
        return refuse(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_backlog",
            "too many records are waiting for the database; retry shortly",
        ));
    }
    if let Err(e) = check_roster(&app, &claims, &exam_id).await {
        return refuse(e);
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            let status = e.status();
            return refuse(ApiError::new(status, "not_a_websocket", e.body_text()));
        }
    };
    if app.shutdown.is_cancelled() || app.draining() {
        return refuse(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down; reconnect to another instance",
        ));
    }
    let ws = &app.settings.ws;
    let max = app.settings.limits.max_message_bytes;
    // Frames a little over the limit are read whole so they can be refused
    // with a clean 1009; far larger ones are cut off by tungstenite itself.
    let hard_cap = max.saturating_mul(4).max(64 * 1024);
    // One allocation for the user id: the revocation registry's copy of
    // the token's `sub` is the same string.
    let user: std::sync::Arc<str> = claims.sub.as_str().into();
    let conn = Box::new(Connection {
        id: app.next_conn_id(),
        exam_id: exam_id.into(),
        name: claims.name.as_str().into(),
        token: crate::revocations::TokenId::with_sub(&claims, user.clone()),
        user,
        role: claims.role,
        client,
        _slot: slot,
        exp: claims.exp,
        user_agent,
        session_id: uuid::Uuid::new_v4(),
        via,
        last_seq: params.last_seq,
        handover: crate::sse::sessions::handover_token(params.handover.as_deref()),
        previous_session: params.previous_session.filter(|s| s.len() <= 64),
        http: false,
        app: app.clone(),
    });
    let guard = app.tracker.token();
    upgrade
        .protocols([SUBPROTOCOL])
        .read_buffer_size(ws.read_buffer_bytes)
        .write_buffer_size(ws.write_buffer_bytes)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .on_upgrade(move |socket| conn.run(socket, guard))
}

/// What a refused handshake was opening, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    WebSocket,
    /// A Server-Sent Events stream ([`crate::sse`]).
    EventStream,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::EventStream => "sse",
        }
    }
}

/// Counts a refused handshake, logs it within the log budget (every
/// client-supplied field clipped, credentials redacted), and answers.
/// Shared by the socket and the SSE stream: one counter, one log budget.
pub(crate) fn refused(
    app: &AppState,
    transport: Transport,
    exam_id: &str,
    raw_query: Option<&str>,
    client: ClientAddr,
    user_agent: &str,
    err: ApiError,
) -> Response {
    let metrics = &app.metrics;
    metrics.handshake_rejected(transport.as_str(), err.code);
    match app
        .handshake_guard
        .refusal_log
        .admit(std::time::Instant::now())
    {
        Verdict::Write => {
            // Redact first, clip after: a clipped token might no longer
            // look like one. Only written lines pay for either.
            let query = auth::redact_query(raw_query.unwrap_or_default());
            tracing::info!(
                exam_id = %telemetry::clip(&auth::redact_jwts(exam_id)),
                query = %telemetry::clip(&query),
                ip = %client, %user_agent, auth = "rejected",
                status = err.status.as_u16(), code = err.code,
                reason = %telemetry::clip(&auth::redact_jwts(&err.message)),
                "{} handshake refused", transport.as_str()
            );
        }
        Verdict::Suppress { schedule_summary } => {
            metrics.handshake_logs_suppressed.increment(1);
            if schedule_summary {
                app.tracker.spawn(summarize_suppressed(app.clone()));
            }
        }
    }
    err.into_response()
}

/// While refusals are over the log budget: once a second, one line with
/// how many were not logged; ends when a second passes with none.
async fn summarize_suppressed(app: AppState) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = app.shutdown.cancelled() => {}
        }
        let n = app.handshake_guard.refusal_log.take_suppressed();
        if n > 0 {
            tracing::warn!(
                suppressed = n,
                "{n} more refused handshakes not logged (all are counted in \
                 examwatch_handshakes_rejected_total)"
            );
        }
        if n == 0 || app.shutdown.is_cancelled() {
            return;
        }
    }
}

/// A wait as `Retry-After` seconds: whole, rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// 429 with `Retry-After` (whole seconds, rounded up).
pub(crate) fn rate_limited(
    app: &AppState,
    refuse: impl FnOnce(ApiError) -> Response,
    what: &str,
    wait: Duration,
) -> Response {
    app.metrics.handshakes_rate_limited.increment(1);
    let secs = retry_after_secs(wait);
    let mut res = refuse(ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many handshakes from this {what}; retry in {secs} s"),
    ));
    res.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    res
}

/// A place among the client IP's open connections
/// (`limits.connections_per_ip`), or 429 `too_many_connections_from_ip`.
pub(crate) fn connection_slot(
    app: &AppState,
    client: ClientAddr,
) -> Result<ConnectionSlot, ApiError> {
    app.handshake_guard
        .connections
        .acquire(client.ip)
        .map_err(|full| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections_from_ip",
                format!(
                    "this client address already has {} connections open; close one first",
                    full.limit
                ),
            )
        })
}

/// Answers a [`connection_slot`] refusal, with `Retry-After`.
pub(crate) fn refuse_connection(
    refuse: impl FnOnce(ApiError) -> Response,
    err: ApiError,
) -> Response {
    let mut res = refuse(err);
    res.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from(CONNECTIONS_RETRY_AFTER.as_secs()),
    );
    res
}

/// Verifies a bearer token within the size limits: its length
/// (`limits.max_token_bytes`) before anything is decoded, then, once it is
/// verified, the number of exams it names (`limits.max_token_exams`; the
/// length bounds the cost of decoding them), and last whether a revocation
/// covers it (403 `token_revoked`). Shared by every way in: the socket, the
/// SSE streams, tickets, the REST API and a socket's `refresh`.
pub(crate) fn verify_token(app: &AppState, token: &str) -> Result<Claims, ApiError> {
    let limits = &app.settings.limits;
    if limits.max_token_bytes > 0 && token.len() > limits.max_token_bytes {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_too_large",
            format!(
                "the token is {} bytes; at most {} are accepted",
                token.len(),
                limits.max_token_bytes
            ),
        ));
    }
    let claims = app.keys.verify(token).map_err(ApiError::unauthorized)?;
    if limits.max_token_exams > 0 && claims.exams.len() > limits.max_token_exams {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "too_many_exams",
            format!(
                "the token names {} exams; at most {} are accepted",
                claims.exams.len(),
                limits.max_token_exams
            ),
        ));
    }
    crate::revocations::check(app, &claims)?;
    Ok(claims)
}

/// 403 `origin_not_allowed` unless the `Origin` header (if any) is allowed.
pub(crate) fn check_origin(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let origin = header_str(headers, header::ORIGIN);
    if auth::origin_allowed(&app.settings.server.allowed_origins, origin) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "origin_not_allowed",
            format!(
                "origin {:?} is not allowed",
                telemetry::clip(origin.unwrap_or("(none)"))
            ),
        ))
    }
}

/// 403 `exam_not_granted` unless the claims grant the exam.
pub(crate) fn require_grant(claims: &Claims, exam_id: &str) -> Result<(), ApiError> {
    if claims.grants(exam_id) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "exam_not_granted",
            format!("this token does not grant exam {exam_id:?}"),
        ))
    }
}

/// Students only: 403 unless on the exam's roster (when it has one) and
/// allowed; 503 when the roster cannot be read (and `roster_fail_open` is off).
pub(crate) async fn check_roster(
    app: &AppState,
    claims: &Claims,
    exam_id: &str,
) -> Result<(), ApiError> {
    if claims.role.is_watcher() {
        return Ok(());
    }
    let fail_open = app.settings.exam.roster_fail_open;
    match app
        .rosters
        .check(&app.store, exam_id, &claims.sub, fail_open)
        .await
    {
        Admission::Admitted => Ok(()),
        Admission::NotOnRoster => Err(ApiError::forbidden(
            "not_on_roster",
            format!(
                "student {:?} is not on the roster of exam {exam_id:?}",
                claims.sub
            ),
        )),
        Admission::NotAllowed => Err(ApiError::forbidden(
            "not_allowed",
            format!(
                "student {:?} is not allowed to sit exam {exam_id:?}",
                claims.sub
            ),
        )),
        Admission::NotOpen => Err(ApiError::forbidden(
            "exam_not_open",
            format!(
                "exam {exam_id:?} does not exist or is a draft: a teacher must create and open it first"
            ),
        )),
        Admission::Denied(reason) => {
            // Told now: what the deny or terminate owed them is delivered.
            let room = app.registry.get_or_start(exam_id);
            let student = claims.sub.as_str().into();
            let _ = room
                .send(crate::room::RoomCmd::RefusedAtHandshake { student })
                .await;
            Err(denied(&reason, claims, exam_id))
        }
        Admission::Unavailable => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "roster_unavailable",
            "the exam's roster cannot be read right now; retry shortly",
        )),
    }
}

/// The refusal of a student shut out by `deny` or `terminate`.
fn denied(reason: &str, claims: &Claims, exam_id: &str) -> ApiError {
    ApiError::forbidden(
        if reason == "terminated" {
            "terminated"
        } else {
            "access_revoked"
        },
        format!(
            "student {:?} may not connect to exam {exam_id:?} ({reason})",
            claims.sub
        ),
    )
}

pub(crate) fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use super::*;

    /// Every connection keeps its `Connection` (and so an `AppState`) for
    /// its whole life: one pointer to the shared handles, not a 368-byte
    /// copy of them, and no field that doubles it again.
    #[test]
    fn a_connection_keeps_one_pointer_to_the_app_not_a_copy_of_it() {
        assert_eq!(size_of::<AppState>(), size_of::<usize>());
        assert!(
            size_of::<Connection>() <= 320,
            "Connection grew to {} bytes",
            size_of::<Connection>()
        );
    }
}
