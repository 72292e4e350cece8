//! The HTTP surface: routes, the one JSON error shape every non-WebSocket
//! answer uses (`{"error": {"code", "message"}}`), and the operational
//! endpoints (`/healthz`, `/readyz`, `/metrics`). The browser pages are
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
        .routes(routes!(ws::handshake))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
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
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
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
}

/// The HTTP boundary's error: a status, a stable machine code, a message
/// for humans. Internal causes are logged, never sent.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
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
        }
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
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
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

/// Ready for new clients: 503 once draining, or when so much waits for the
/// database that new exam connections are refused. While database writes
/// fail but the backlog is under its bound, 200 with `"status": "degraded"`:
/// the live exam still works, and nothing is lost.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready (`status` is `ready`, or `degraded` while database writes are retried)"),
        (status = 503, description = "Shutting down, or too much waiting for the database"),
    ))]
async fn readyz(State(app): State<AppState>) -> Response {
    use std::sync::atomic::Ordering;
    let pending = app.writer.stats().pending.load(Ordering::Relaxed);
    let database = if app.writer.degraded() {
        "failing"
    } else {
        "ok"
    };
    let (status, code) = if app.draining() || app.shutdown.is_cancelled() {
        ("shutting_down", StatusCode::SERVICE_UNAVAILABLE)
    } else if app.writer.over_limit() {
        ("degraded", StatusCode::SERVICE_UNAVAILABLE)
    } else if app.writer.degraded() || !app.broker.healthy() {
        ("degraded", StatusCode::OK)
    } else {
        ("ready", StatusCode::OK)
    };
    let broker = match (&app.broker, app.broker.healthy()) {
        (crate::broker::Broker::Memory, _) => "memory",
        (_, true) => "ok",
        (_, false) => "unreachable",
    };
    let body = json!({"status": status, "database": database, "pending_writes": pending, "broker": broker});
    (code, Json(body)).into_response()
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(app): State<AppState>) -> Response {
    use std::sync::atomic::Ordering;
    let w = app.writer.stats();
    let mut text = app.metrics.render();
    text.push_str(&format!(
        "# HELP examwatch_db_pending_writes Records waiting for the database\n\
         # TYPE examwatch_db_pending_writes gauge\nexamwatch_db_pending_writes {}\n\
         # HELP examwatch_db_failing 1 while database writes fail\n\
         # TYPE examwatch_db_failing gauge\nexamwatch_db_failing {}\n\
         # HELP examwatch_db_committed_total Records committed\n\
         # TYPE examwatch_db_committed_total counter\nexamwatch_db_committed_total {}\n\
         # HELP examwatch_db_retries_total Failed batch commits (retried)\n\
         # TYPE examwatch_db_retries_total counter\nexamwatch_db_retries_total {}\n",
        w.pending.load(Ordering::Relaxed),
        u8::from(w.failing.load(Ordering::Relaxed)),
        w.committed.load(Ordering::Relaxed),
        w.retries.load(Ordering::Relaxed),
    ));
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
