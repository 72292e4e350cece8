//! The HTTP surface: routes, the one JSON error shape every non-WebSocket
//! answer uses (`{"error": {"code", "message"}}`), and the operational
//! endpoints (`/healthz` and `/readyz` here; `/metrics` and a detailed
//! `/readyz` on the operators' listener, [`admin_router`]). The browser pages are
//! merged in from [`crate::dashboard`].

use std::borrow::Cow;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use utoipa_axum::routes;

use crate::{app::AppState, auth::TokenError, ws};

pub fn router(state: AppState) -> Router {
    let (router, openapi) = crate::api::router()
        .routes(routes!(ws::handshake::handshake))
        .routes(routes!(crate::sse::watcher_events))
        .routes(routes!(crate::sse::student::student_events))
        .routes(routes!(crate::sse::student::received))
        .routes(routes!(crate::sse::messages::post_messages))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .split_for_parts();
    let openapi = std::sync::Arc::new(openapi);
    router
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = openapi.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .merge(crate::dashboard::router())
        .fallback(not_found)
        // Innermost: the readiness probe's upgrade is answered here, behind
        // the same layers as a client's (src/health.rs).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::health::intercept,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_deadline,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// A whole request (its body read, its answer made) within
/// `server.request_timeout`, else 408 `request_timeout`: the head has its
/// own deadline in the accept loop, and without this one a client could
/// hold a connection by trickling a body (a handler reads the body before
/// it can look at the token). A WebSocket handshake answers at once; the
/// socket that follows is not a request any more.
async fn request_deadline(
    State(app): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = app.settings.server.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            let mut res = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request took longer than {} ms", limit.as_millis()),
            )
            .into_response();
            res.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            res
        }
    }
}

/// The body of every error answer, for the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the JSON shape ApiError renders
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Stable, machine-readable (e.g. `exam_not_granted`).
    pub code: String,
    /// For humans.
    pub message: String,
    /// The request field at fault, when one is.
    pub field: Option<String>,
}

/// The HTTP boundary's error: a status, a stable machine code, a message
/// for humans. Internal causes are logged, never sent.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// The request field at fault, when one is (`error.field`).
    pub field: Option<&'static str>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
    /// Names the request field at fault.
    pub fn with_field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }
    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
    pub fn unauthorized(err: TokenError) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, err.code(), err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.field {
            Some(field) => {
                json!({"error": {"code": self.code, "message": self.message, "field": field}})
            }
            None => json!({"error": {"code": self.code, "message": self.message}}),
        };
        let body = Json(body);
        let mut res = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

/// Alive: the process answers HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "The process is alive")))]
async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// What readiness is made of, for both listeners.
struct Readiness {
    code: StatusCode,
    status: &'static str,
    /// Why it is not simply `ready` (stable words, for operators).
    reasons: Vec<&'static str>,
    /// The WebSocket loopback check (src/health.rs).
    websocket: crate::health::ProbeState,
}

fn readiness(app: &AppState) -> Readiness {
    let mut reasons = Vec::new();
    let websocket = app.health.state(std::time::Instant::now());
    let probe_failed = websocket.reason();
    if app.writer.degraded() {
        reasons.push("database_writes_failing");
    }
    if app.writer.over_limit() {
        reasons.push("database_backlog");
    }
    if !app.broker.healthy() {
        reasons.push("broker_unreachable");
    }
    if let Some(reason) = probe_failed {
        reasons.push(reason);
    }
    let (code, status) = if app.draining() || app.shutdown.is_cancelled() {
        reasons.insert(0, "shutting_down");
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else if app.writer.over_limit() || probe_failed.is_some() {
        (StatusCode::SERVICE_UNAVAILABLE, "degraded")
    } else if !reasons.is_empty() {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "ready")
    };
    Readiness {
        code,
        status,
        reasons,
        websocket,
    }
}

/// Ready for new clients, for load balancers: 503 once draining, when so
/// much waits for the database that new exam connections are refused, or
/// when the WebSocket loopback check (`server.ws_probe_interval`) failed or
/// has not finished recently: a client could not open a socket here.
/// While database writes fail but the backlog is under its bound, 200 with
/// `"status": "degraded"`: the live exam still works, answers wait for
/// their commit, and nothing is lost. Says nothing more (the reasons and
/// numbers are on the operators' listener, `server.admin_bind`).
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready (`status` is `ready`, or `degraded` while database writes are retried or the broker is unreachable)"),
        (status = 503, description = "Shutting down, too much waiting for the database, or the WebSocket loopback check failing or stale"),
    ))]
async fn readyz(State(app): State<AppState>) -> Response {
    let r = readiness(&app);
    (r.code, Json(json!({"status": r.status}))).into_response()
}

/// The operators' listener (`server.admin_bind`): metrics, and readiness
/// with its reasons and numbers. Loopback by default.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(admin_readyz))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(state)
}

/// Readiness with its reasons, the database backlog, the broker and the
/// WebSocket loopback check (`websocket`: `{"state": "ok", "age_ms",
/// "rtt_ms"}`, `failing` with its `error`, `stale`, `pending` or `off`).
async fn admin_readyz(State(app): State<AppState>) -> Response {
    use std::sync::atomic::Ordering;
    let r = readiness(&app);
    let pending = app.writer.stats().pending.load(Ordering::Relaxed);
    let database = if app.writer.degraded() {
        "failing"
    } else {
        "ok"
    };
    let broker = match (&app.broker, app.broker.healthy()) {
        (crate::broker::Broker::Memory, _) => "memory",
        (_, true) => "ok",
        (_, false) => "unreachable",
    };
    let body = json!({
        "status": r.status,
        "reasons": r.reasons,
        "database": database,
        "pending_writes": pending,
        "broker": broker,
        "websocket": r.websocket,
        "instance_id": app.instance_id.as_ref(),
    });
    (r.code, Json(body)).into_response()
}

/// Prometheus text format; every series is labelled with `instance_id`
/// (src/metrics.rs; docs/DEPLOY.md lists the families).
async fn metrics(State(app): State<AppState>) -> Response {
    let text = app.metrics.render(app.writer.stats());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Puts every error answer in the one JSON shape, including those produced
/// by axum itself (405, extractor rejections such as a bad path), which
/// come as plain text or an empty body.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text.trim().to_owned()
    };
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        _ if status.is_server_error() => "internal",
        _ => "error",
    };
    let mut res = (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response();
    // Keep headers such as `Allow` on a 405.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            res.headers_mut().insert(name.clone(), value.clone());
        }
    }
    res
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
