//! `GET /v1/admin/instances` and `POST /v1/admin/instances/{id}/drain`:
//! the fleet's connection counts, and an operator asking one instance to
//! shed a share of its connections (admins only). What shedding does and
//! how the counts travel: [`crate::rebalance`], [`crate::broker::fleet`].
//!
//! A drain of this instance starts here at once. A drain of another
//! instance is forwarded through Redis: the target takes the request at
//! its next count (within `cluster.rebalance_interval`), so the answer
//! says what it will shed as of the target's last published count.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::revocations::Admin;
use crate::{app::AppState, broker::Broker, http::ApiError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_instances))
        .routes(routes!(drain_instance))
}

/// One instance of the fleet, as last published.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Instance {
    /// `database.instance_id` (or hostname:pid).
    pub id: String,
    /// Open student WebSockets and event streams.
    pub students: u64,
    /// Open watcher (teacher, proctor, admin) WebSockets and event streams.
    pub teachers: u64,
    /// In a rolling restart (left out of the average).
    pub draining: bool,
    /// The instance that answered.
    pub local: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Fleet {
    /// Every live instance (its count younger than three
    /// `cluster.rebalance_interval`s), by id; this one always.
    pub instances: Vec<Instance>,
    /// Connections per instance not draining.
    pub average: f64,
    /// `cluster.rebalance` on the instance that answered.
    pub rebalance: bool,
}

/// `POST /v1/admin/instances/{id}/drain`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// The share of the instance's connections to close: more than 0, at
    /// most 1 (rounded up to whole connections).
    #[schema(exclusive_minimum = 0.0, maximum = 1.0, example = 0.5)]
    pub share: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DrainAccepted {
    pub instance: String,
    pub share: f64,
    /// Sent to that instance through Redis (it is not the one answering).
    pub forwarded: bool,
    /// Connections it will close: this instance's own count, or the
    /// target's last published one, times `share`, rounded up.
    pub connections: u64,
    /// Over how long (`cluster.rebalance_window`, milliseconds).
    pub window_ms: u64,
}

/// The fleet as seen from here: this instance's live count, the others'
/// last published ones.
async fn fleet(app: &AppState) -> Result<Vec<Instance>, ApiError> {
    let own = app.live.counts();
    let me = app.instance_id.to_string();
    let mut list = vec![Instance {
        id: me.clone(),
        students: own.students,
        teachers: own.teachers,
        draining: app.draining(),
        local: true,
    }];
    if let Broker::Redis(redis) = &app.broker {
        let read = redis.fleet(app.rebalancer.expiry(), crate::store::now_ms());
        let others = match tokio::time::timeout(std::time::Duration::from_secs(2), read).await {
            Ok(Ok(f)) => f,
            _ => return Err(broker_unavailable()),
        };
        for (id, e) in others.into_iter().filter(|(id, _)| *id != me) {
            list.push(Instance {
                id,
                students: e.counts.students,
                teachers: e.counts.teachers,
                draining: e.draining,
                local: false,
            });
        }
    }
    list.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(list)
}

fn broker_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "broker_unavailable",
        "Redis could not answer; retry shortly",
    )
}

/// The fleet's instances and their open connections (sockets and event
/// streams, by role). With the in-memory broker, this instance alone.
/// Admins only.
#[utoipa::path(get, path = "/v1/admin/instances", tag = "admin",
    responses(
        (status = 200, description = "The fleet", body = Fleet),
        (status = 401, description = "Missing, invalid or expired token", body = crate::http::ErrorBody),
        (status = 403, description = "`admins_only` (not an admin's token) or `token_revoked`", body = crate::http::ErrorBody),
        (status = 503, description = "`broker_unavailable`: Redis could not answer", body = crate::http::ErrorBody),
    ))]
async fn list_instances(State(app): State<AppState>, _: Admin) -> Result<Json<Fleet>, ApiError> {
    let instances = fleet(&app).await?;
    let live: Vec<&Instance> = instances.iter().filter(|i| !i.draining).collect();
    let average = if live.is_empty() {
        0.0
    } else {
        live.iter()
            .map(|i| (i.students + i.teachers) as f64)
            .sum::<f64>()
            / live.len() as f64
    };
    Ok(Json(Fleet {
        instances,
        average,
        rebalance: app.settings.cluster.rebalance,
    }))
}

/// Asks instance `id` to close `share` of its connections with 1012
/// "rebalance", spread over `cluster.rebalance_window` (students first,
/// at random, never one with an answer not yet committed; teachers only
/// if students are not enough). The clients reconnect through the load
/// balancer. Another instance's id is forwarded to it through Redis (it
/// starts within `cluster.rebalance_interval`). Admins only.
#[utoipa::path(post, path = "/v1/admin/instances/{id}/drain", tag = "admin",
    params(("id" = String, Path, description = "Instance id (`database.instance_id`), as `GET /v1/admin/instances` lists it")),
    request_body = DrainRequest,
    responses(
        (status = 202, description = "Accepted: the closes start (here, or at the target's next count)", body = DrainAccepted),
        (status = 400, description = "`invalid_body`: the body is not JSON", body = crate::http::ErrorBody),
        (status = 401, description = "Missing, invalid or expired token", body = crate::http::ErrorBody),
        (status = 403, description = "`admins_only` (not an admin's token) or `token_revoked`", body = crate::http::ErrorBody),
        (status = 404, description = "`instance_not_found`: no live instance has this id", body = crate::http::ErrorBody),
        (status = 409, description = "`instance_draining`: that instance is in a rolling restart (it closes everything anyway)", body = crate::http::ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over 2 MiB", body = crate::http::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not sent as `Content-Type: application/json`", body = crate::http::ErrorBody),
        (status = 422, description = "`invalid_body` (wrong shape) or `invalid_field`: `share` not more than 0 and at most 1", body = crate::http::ErrorBody),
        (status = 503, description = "`broker_unavailable`: Redis could not answer (nothing was forwarded)", body = crate::http::ErrorBody),
    ))]
async fn drain_instance(
    State(app): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    body: Result<Json<serde_json::Map<String, serde_json::Value>>, JsonRejection>,
) -> Result<(StatusCode, Json<DrainAccepted>), ApiError> {
    let request: DrainRequest = super::object_body(body)?;
    let share = request.share;
    if !(share > 0.0 && share <= 1.0) {
        return Err(super::invalid("share must be more than 0 and at most 1"));
    }
    let window_ms = app.rebalancer.window().as_millis() as u64;
    let accepted = |forwarded, connections| {
        (
            StatusCode::ACCEPTED,
            Json(DrainAccepted {
                instance: id.clone(),
                share,
                forwarded,
                connections,
                window_ms,
            }),
        )
    };
    let draining = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "instance_draining",
            "that instance is in a rolling restart",
        )
    };
    if id == *app.instance_id {
        if app.draining() {
            return Err(draining());
        }
        let n = app.rebalancer.shed_share(&app, share);
        return Ok(accepted(false, n));
    }
    let Broker::Redis(redis) = &app.broker else {
        return Err(not_found(&id));
    };
    let target = fleet(&app)
        .await?
        .into_iter()
        .find(|i| i.id == id)
        .ok_or_else(|| not_found(&id))?;
    if target.draining {
        return Err(draining());
    }
    let ttl = app.rebalancer.request_ttl();
    let sent = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        redis.request_shed(&id, share, ttl),
    )
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return Err(broker_unavailable());
    }
    let total = target.students + target.teachers;
    let connections = ((total as f64) * share).ceil() as u64;
    Ok(accepted(true, connections.min(total)))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "instance_not_found",
        format!("no live instance {id:?}"),
    )
}
