//! `POST /v1/tickets`: a short-lived, single-use ticket to open one exam's
//! WebSocket with `?ticket=` instead of putting the JWT in the URL (why, and
//! where tickets live: [`crate::tickets`]).
//!
//! Any role may ask (students sit exams through it too), with the token in
//! the `Authorization` header only, and a ticket is minted only for what
//! the handshake itself would admit: the token grants the exam, the
//! `Origin` is allowed, and a student is on the roster. The handshake
//! checks all of that again when the ticket is redeemed.

use axum::{
    Json,
    extract::{ConnectInfo, State, rejection::JsonRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    app::AppState,
    auth::{self, TokenError},
    client_ip::ClientAddr,
    http::ApiError,
    ws,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_ticket))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    /// The one exam the ticket opens.
    pub exam_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ticket {
    /// Opaque (64 hex digits). Use it once, as
    /// `/v1/exams/{exam_id}/ws?ticket=…`, within `expires_in_ms`.
    pub ticket: String,
    pub exam_id: String,
    /// `auth.ticket_ttl` (30 s by default), or less if the token expires sooner.
    pub expires_in_ms: u64,
}

/// Mints a connection ticket for one exam. Send the JWT in the
/// `Authorization: Bearer` header; then open
/// `/v1/exams/{exam_id}/ws?ticket=…` once, within `expires_in_ms`. Any
/// role; the token must grant the exam, and a student must be on its roster.
#[utoipa::path(post, path = "/v1/tickets", tag = "websocket",
    request_body = TicketRequest,
    responses(
        (status = 200, description = "A ticket (never cached: `Cache-Control: no-store`)", body = Ticket),
        (status = 400, description = "The body is not JSON", body = crate::http::ErrorBody),
        (status = 401, description = "Missing, invalid or expired token in the Authorization header, or one too large (`token_too_large`) or naming too many exams (`too_many_exams`)", body = crate::http::ErrorBody),
        (status = 403, description = "`exam_not_granted`, `origin_not_allowed`, `not_on_roster`, `not_allowed`, `exam_not_open` (never created, or a draft), `access_revoked` (denied), `terminated` (the student's exam was ended) or `token_revoked` (a revocation covers the token)", body = crate::http::ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over 2 MiB", body = crate::http::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not sent as `Content-Type: application/json`", body = crate::http::ErrorBody),
        (status = 422, description = "`invalid_exam_id`, or the body lacks `exam_id`", body = crate::http::ErrorBody),
        (status = 429, description = "`rate_limited`: too many tickets or handshakes for this token subject or client address; `too_many_connections_from_ip`: this client address has `limits.connections_per_ip` connections open; see `Retry-After`", body = crate::http::ErrorBody),
        (status = 503, description = "`tickets_unavailable` (too many unused tickets, or Redis failed; `Retry-After`) or `roster_unavailable`", body = crate::http::ErrorBody),
    ))]
async fn create_ticket(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<TicketRequest>, JsonRejection>,
) -> Response {
    let client = ClientAddr::resolve(&app.settings.server, peer, &headers);
    let minted = mint(&app, client, &headers, body).await;
    if let Err(refusal) = &minted {
        app.metrics.handshake_rejected("ticket", refusal.code());
    }
    match minted {
        Ok(ticket) => (
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            Json(ticket),
        )
            .into_response(),
        Err(Refusal::RateLimited(secs)) => {
            app.metrics.handshakes_rate_limited.increment(1);
            let e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "too many tickets or handshakes for this token subject or address; retry in {secs} s"
                ),
            );
            ([(header::RETRY_AFTER, HeaderValue::from(secs))], e).into_response()
        }
        Err(Refusal::Connections(e)) => ws::refuse_connection(IntoResponse::into_response, e),
        Err(Refusal::Api(e)) if e.code == "tickets_unavailable" => {
            ([(header::RETRY_AFTER, HeaderValue::from_static("1"))], e).into_response()
        }
        Err(Refusal::Api(e)) => e.into_response(),
    }
}

/// Why no ticket was minted.
enum Refusal {
    Api(ApiError),
    /// Over `limits.handshakes_per_subject`; seconds until one is allowed.
    RateLimited(u64),
    /// The address has `limits.connections_per_ip` connections open.
    Connections(ApiError),
}

impl Refusal {
    /// The error code answered (the metrics' `reason`).
    fn code(&self) -> &'static str {
        match self {
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::Api(e) | Refusal::Connections(e) => e.code,
        }
    }
}

impl<E: Into<ApiError>> From<E> for Refusal {
    fn from(e: E) -> Self {
        Refusal::Api(e.into())
    }
}

async fn mint(
    app: &AppState,
    client: ClientAddr,
    headers: &HeaderMap,
    body: Result<Json<TicketRequest>, JsonRejection>,
) -> Result<Ticket, Refusal> {
    // Per address first, as at the handshake: a flood costs a map lookup.
    if let Err(wait) = app.handshake_guard.limits.check_ip(client.ip) {
        return Err(Refusal::RateLimited(ws::retry_after_secs(wait)));
    }
    // No ticket for a socket the handshake would refuse for this address's
    // open connections: refused here, where a browser can read the 429 (the
    // place is only looked at, given back at once).
    ws::connection_slot(app, client)
        .map(drop)
        .map_err(Refusal::Connections)?;
    // Who asks comes first: without a valid token nothing else is said.
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let claims = auth::extract_token(header, None)
        .ok_or(ApiError::unauthorized(TokenError::Missing))
        .and_then(|t| ws::verify_token(app, t))?;
    // Minting is where a ticket's handshake is counted against the token
    // subject's handshake budget (the handshake that redeems it is not
    // counted again): one token cannot fill the ticket store, nor loop.
    if let Err(wait) = app.handshake_guard.limits.check_subject(&claims.sub) {
        return Err(Refusal::RateLimited(ws::retry_after_secs(wait)));
    }
    let Json(request) = body?;
    let exam_id = request.exam_id;
    if !auth::valid_exam_id(&exam_id) {
        return Err(Refusal::Api(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_exam_id",
            "exam ids are 1-64 characters of letters, digits, '-', '_' and '.'",
        )));
    }
    ws::check_origin(app, headers)?;
    ws::require_grant(&claims, &exam_id)?;
    ws::check_roster(app, &claims, &exam_id).await?;
    let issued = app
        .tickets
        .issue(&exam_id, &claims)
        .await
        .map_err(ApiError::from)?;
    Ok(Ticket {
        ticket: issued.ticket,
        exam_id,
        expires_in_ms: u64::try_from(issued.expires_in.as_millis()).unwrap_or(u64::MAX),
    })
}
