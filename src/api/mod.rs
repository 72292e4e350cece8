//! The REST API under `/v1`: exams, rosters, the audit timeline, answers
//! and the report. Routes are registered through utoipa-axum, so the
//! OpenAPI document at `/v1/openapi.json` is generated from the very same
//! handlers and cannot drift from them.
//!
//! Same JWT as the WebSocket (header only); watchers only (proctors,
//! teachers, admins), and only for exams their token grants (admins: all),
//! each handler asking for the [`Right`] it needs (reads: `Watch`; creating
//! an exam or replacing its roster: `EditExam`). The exception is
//! `POST /v1/tickets` ([`tickets`]), which every role uses to connect.

mod actions;
mod alerts;
mod control;
mod exams;
mod instances;
mod records;
mod revocations;
mod student;
mod tickets;
mod timing;

use axum::{
    extract::{FromRequestParts, rejection::JsonRejection},
    http::{StatusCode, header, request::Parts},
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::router::OpenApiRouter;

use crate::{
    app::AppState,
    auth::{self, Claims, Right, TokenError},
    http::ApiError,
    store::StoreError,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "examwatch", description = "Live exam monitoring: REST API"),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The API routes, carrying their OpenAPI description.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(exams::router())
        .merge(control::router())
        .merge(alerts::router())
        .merge(actions::router())
        .merge(records::router())
        .merge(student::router())
        .merge(tickets::router())
        .merge(revocations::router())
        .merge(instances::router())
}

/// A caller of the REST API: a verified watcher (proctor, teacher or
/// admin). Holding one proves only that; each handler then asks
/// [`Watcher::require_right`] for the exam and the right it needs.
pub struct Watcher(pub Claims);

impl FromRequestParts<AppState> for Watcher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = auth::extract_token(header, None);
        let claims = token
            .ok_or(ApiError::unauthorized(TokenError::Missing))
            .and_then(|t| crate::ws::verify_token(app, t))?;
        if !claims.role.is_watcher() {
            return Err(ApiError::forbidden(
                "teachers_only",
                "this API is for proctors, teachers and admins",
            ));
        }
        Ok(Watcher(claims))
    }
}

impl Watcher {
    /// Refuses (403) an exam the token does not grant (`exam_not_granted`),
    /// then a right the caller's role does not hold (`forbidden`, naming
    /// the role and what it may not do). The grant comes first, so a token
    /// learns nothing about an exam it was not given.
    pub fn require_right(&self, exam_id: &str, right: Right) -> Result<(), ApiError> {
        crate::ws::require_grant(&self.0, exam_id)?;
        if !self.0.role.may(right) {
            return Err(ApiError::forbidden(
                "forbidden",
                format!(
                    "role {} may not {} (exam {exam_id:?})",
                    self.0.role.as_str(),
                    right.describe()
                ),
            ));
        }
        Ok(())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "already exists")
            }
            StoreError::NotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such exam")
            }
            other => {
                tracing::error!(error = %other, "database error in the API");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "the database could not answer; retry shortly",
                )
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        // axum knows the right status: 413 past the body limit (2 MiB),
        // 415 without `Content-Type: application/json`, 422 for JSON of
        // the wrong shape, 400 for JSON that does not parse.
        let status = e.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid_body",
        };
        ApiError::new(status, code, e.body_text())
    }
}

/// A JSON body that must be an object. serde also reads a struct from a
/// JSON array (its fields in order), so a body whose fields are all
/// optional would take `[]` or `[null]` as "nothing to change": read the
/// object first, then the struct (422 `invalid_body` for anything else).
pub fn object_body<T: serde::de::DeserializeOwned>(
    body: Result<axum::Json<serde_json::Map<String, serde_json::Value>>, JsonRejection>,
) -> Result<T, ApiError> {
    let axum::Json(map) = body?;
    serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("Failed to deserialize the JSON body into the target type: {e}"),
        )
    })
}

/// 422 with a message naming the field.
pub fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        message.into(),
    )
}
