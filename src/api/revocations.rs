//! `POST /v1/revocations` and `GET /v1/revocations`: refusing tokens
//! before their `exp` (admins only). What an entry covers, where the set
//! lives and how it reaches every instance: [`crate::revocations`].
//!
//! A new entry is stored first (so a restarted instance, or one that
//! missed the broker's message, has it), then applied on this instance
//! (its live connections covered by it close with 4403 at once) and
//! published to the others, which apply it on receipt.

use axum::{
    Json,
    extract::{FromRequestParts, State, rejection::JsonRejection},
    http::{StatusCode, header, request::Parts},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::invalid;
use crate::{
    app::AppState,
    auth::{self, Claims, Role, TokenError},
    http::ApiError,
    revocations::{MAX_LIFETIME, MAX_NAME_LEN, Revocation},
    store::now_ms,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_revocation, list_revocations))
}

/// A caller with an admin token (header only); also the fleet's admin
/// endpoints' ([`super::instances`]).
pub(super) struct Admin(pub(super) Claims);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let claims = auth::extract_token(header, None)
            .ok_or(ApiError::unauthorized(TokenError::Missing))
            .and_then(|t| crate::ws::verify_token(app, t))?;
        if claims.role != Role::Admin {
            return Err(ApiError::forbidden(
                "admins_only",
                "this endpoint is for admins only",
            ));
        }
        Ok(Admin(claims))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRevocation {
    /// Revoke this subject's tokens issued (`iat`) up to now, and its
    /// tokens without `iat`. 1-128 bytes, without control characters.
    #[serde(default)]
    #[schema(
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*$",
        min_length = 1,
        max_length = 128,
        example = "s42"
    )]
    pub sub: Option<String>,
    /// Revoke the token with this `jti` (with `sub` too: only if it is that
    /// subject's). 1-128 bytes, without control characters.
    #[serde(default)]
    #[schema(
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*$",
        min_length = 1,
        max_length = 128,
        example = "6f1c2a9e-8d4b-4c3e-9a57-0b2d1e4f7a10"
    )]
    pub jti: Option<String>,
    /// RFC 3339 (any offset): the entry lasts until then. In the future,
    /// at most 30 days ahead.
    #[schema(value_type = String, format = DateTime)]
    pub until: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevocationList {
    /// The entries that still last, soonest to end first.
    pub revocations: Vec<Revocation>,
}

/// Revokes tokens until `until`: by `jti` (one token), by `sub` (the
/// subject's tokens issued up to now; a token issued later works), or
/// both (that token if it is that subject's). Live WebSockets and SSE
/// streams with a covered token close on every instance (`error
/// token_revoked`, close 4403), and covered tokens are refused (403
/// `token_revoked`) at every handshake, ticket and REST call while the
/// entry lasts. Admins only.
#[utoipa::path(post, path = "/v1/revocations", tag = "auth",
    request_body = NewRevocation,
    responses(
        (status = 201, description = "Stored and applied; the entry", body = Revocation),
        (status = 400, description = "`invalid_body`: the body is not JSON", body = crate::http::ErrorBody),
        (status = 401, description = "Missing, invalid or expired token", body = crate::http::ErrorBody),
        (status = 403, description = "`admins_only` (not an admin's token) or `token_revoked`", body = crate::http::ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over 2 MiB", body = crate::http::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not sent as `Content-Type: application/json`", body = crate::http::ErrorBody),
        (status = 422, description = "`invalid_body` (wrong shape) or `invalid_field`: neither `sub` nor `jti`, one of them empty, too long or with control characters, or `until` not an RFC 3339 time, not in the future or more than 30 days ahead", body = crate::http::ErrorBody),
        (status = 503, description = "`database_unavailable`: the entry could not be stored (nothing was revoked); retry", body = crate::http::ErrorBody),
    ))]
async fn create_revocation(
    State(app): State<AppState>,
    Admin(caller): Admin,
    body: Result<Json<serde_json::Map<String, serde_json::Value>>, JsonRejection>,
) -> Result<(StatusCode, Json<Revocation>), ApiError> {
    let request: NewRevocation = super::object_body(body)?;
    let now = now_ms();
    let entry = validate(request, &caller.sub, now)?;
    app.store.insert_revocation(&entry, now).await?;
    app.revocations.prune(now);
    let closed = app.revocations.apply(entry.clone(), now);
    app.broker.publish_revocation(&entry);
    tracing::info!(
        revocation = %entry.id, sub = entry.sub.as_deref().unwrap_or("-"),
        jti = entry.jti.as_deref().unwrap_or("-"), until = entry.until, by = %caller.sub,
        closed_here = closed, "tokens revoked"
    );
    Ok((StatusCode::CREATED, Json(entry)))
}

/// The revocations that still last (expired ones are ignored, and pruned
/// as new ones are stored). Admins only.
#[utoipa::path(get, path = "/v1/revocations", tag = "auth",
    responses(
        (status = 200, description = "The live entries", body = RevocationList),
        (status = 401, description = "Missing, invalid or expired token", body = crate::http::ErrorBody),
        (status = 403, description = "`admins_only` (not an admin's token) or `token_revoked`", body = crate::http::ErrorBody),
        (status = 503, description = "`database_unavailable`", body = crate::http::ErrorBody),
    ))]
async fn list_revocations(
    State(app): State<AppState>,
    _admin: Admin,
) -> Result<Json<RevocationList>, ApiError> {
    // From the database: every instance's entries, whatever this one heard.
    let revocations = app.store.live_revocations(now_ms()).await?;
    Ok(Json(RevocationList { revocations }))
}

/// The entry a request asks for, or the 422 saying what is wrong.
fn validate(request: NewRevocation, by: &str, now: i64) -> Result<Revocation, ApiError> {
    let name = |field: &str, v: Option<String>| match v {
        Some(v) if v.is_empty() || v.len() > MAX_NAME_LEN || v.chars().any(char::is_control) => {
            Err(invalid(format!(
                "{field}: 1-{MAX_NAME_LEN} bytes, without control characters"
            )))
        }
        v => Ok(v),
    };
    let sub = name("sub", request.sub)?;
    let jti = name("jti", request.jti)?;
    if sub.is_none() && jti.is_none() {
        return Err(invalid("give `sub`, `jti` or both"));
    }
    let until = super::exams::parse_rfc3339(&request.until)
        .ok_or_else(|| invalid("until: an RFC 3339 time, e.g. 2026-12-01T18:00:00Z"))?;
    let max_ms = i64::try_from(MAX_LIFETIME.as_millis()).unwrap_or(i64::MAX);
    if until <= now {
        return Err(invalid("until: must be in the future"));
    }
    if until > now.saturating_add(max_ms) {
        return Err(invalid("until: at most 30 days ahead"));
    }
    Ok(Revocation {
        id: uuid::Uuid::new_v4().to_string(),
        sub,
        jti,
        until,
        created_at: now,
        created_by: by.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(sub: Option<&str>, jti: Option<&str>, until: &str) -> NewRevocation {
        NewRevocation {
            sub: sub.map(Into::into),
            jti: jti.map(Into::into),
            until: until.into(),
        }
    }

    #[test]
    fn requests_are_checked() {
        let now = 1_800_000_000_000; // 2027-01-15T08:00:00Z
        let ok = validate(request(Some("s1"), None, "2027-01-16T08:00:00Z"), "a", now).unwrap();
        assert_eq!(ok.until, now + 86_400_000);
        assert_eq!((ok.created_at, ok.created_by.as_str()), (now, "a"));
        for (sub, jti, until) in [
            (None, None, "2027-01-16T08:00:00Z"),
            (Some(""), None, "2027-01-16T08:00:00Z"),
            (Some("a\u{0}b"), None, "2027-01-16T08:00:00Z"),
            (None, Some(&*"j".repeat(129)), "2027-01-16T08:00:00Z"),
            (Some("s1"), None, "tomorrow"),
            (Some("s1"), None, "2027-01-15T07:59:59Z"),
            (Some("s1"), None, "2027-01-15T09:59:59+02:00"),
            (Some("s1"), None, "2027-03-01T00:00:00Z"),
        ] {
            let e = validate(request(sub, jti, until), "a", now).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field")
            );
        }
    }
}
