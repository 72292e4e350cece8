//! A `POST me/messages` that reached an instance which does not hold the
//! session (docs/PROTOCOL.md 8.3): the batch goes to the instance that
//! does, through Redis, and its outcome comes back the same way.
//!
//! Which instance holds a session is what the student's session lease
//! says (`instance/session`, `/grace` once its connection is gone: then it
//! is no live session). Every instance listens on a channel of its own
//! (`{prefix}:instance:{id}`, [`crate::broker::RedisBroker::send_to_instance`]);
//! a request names the asker, the holder runs the batch exactly as for a
//! local POST ([`super::messages::run_batch`]) and publishes the outcome on
//! the asker's channel, where [`Forwards`] hands it to the waiting POST.
//! A holder that does not answer within `http.reply_timeout` (plus
//! [`MARGIN`], so its own per-message timeouts answer first) is 503
//! `session_unreachable`: the client sends the batch again, which is safe
//! (duplicates are harmless). With the in-memory broker there is only one
//! instance, so a session not here is no session.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::messages::{BatchOutcome, run_batch};
use crate::metrics::HttpBatch;
use crate::{app::AppState, broker::Broker, http::ApiError};

/// How much longer the asker waits than the holder's own reply timeout.
pub const MARGIN: Duration = Duration::from_secs(2);

/// What travels on an instance's channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Wire {
    /// A batch for a session held by the receiving instance.
    Request {
        id: u64,
        /// The asking instance (where the reply goes).
        from: String,
        exam: String,
        student: String,
        session: String,
        texts: Vec<String>,
    },
    /// The outcome of request `id`.
    Reply { id: u64, outcome: BatchOutcome },
}

/// The forwarded batches of this instance waiting for their outcome.
#[derive(Default)]
pub struct Forwards {
    next: AtomicU64,
    /// A std mutex: held to add or take one entry.
    waiting: Mutex<HashMap<u64, oneshot::Sender<BatchOutcome>>>,
}

impl Forwards {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<BatchOutcome>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The outcome of `texts` on the instance holding `session_id`.
pub(crate) async fn forward(
    app: &AppState,
    exam: &str,
    student: &str,
    session_id: &str,
    texts: Vec<String>,
) -> Result<BatchOutcome, ApiError> {
    let Broker::Redis(redis) = &app.broker else {
        return Ok(BatchOutcome::NoSession);
    };
    let lease = match redis.lease_holder(exam, student).await {
        Ok(lease) => lease,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a session lease to forward a batch");
            return Err(unreachable(app));
        }
    };
    let Some(instance) = lease.as_deref().and_then(|l| live_holder(l, session_id)) else {
        return Ok(BatchOutcome::NoSession);
    };
    if instance == &*app.instance_id {
        // Its lease says here, but it is not open here: it just ended.
        return Ok(BatchOutcome::NoSession);
    }
    let forwards = &app.forwards;
    let id = forwards.next.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    forwards.lock().insert(id, tx);
    let request = Wire::Request {
        id,
        from: app.instance_id.to_string(),
        exam: exam.to_owned(),
        student: student.to_owned(),
        session: session_id.to_owned(),
        texts,
    };
    let sent = match serde_json::to_string(&request) {
        Ok(wire) => redis.send_to_instance(instance, &wire).await,
        Err(_) => Ok(false),
    };
    if !matches!(sent, Ok(true)) {
        forwards.lock().remove(&id);
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot forward a batch to {instance}");
        }
        return Err(unreachable(app));
    }
    let wait = app.settings.http.reply_timeout + MARGIN;
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(outcome)) => {
            app.metrics.http_batch(HttpBatch::Forwarded);
            Ok(outcome)
        }
        _ => {
            forwards.lock().remove(&id);
            Err(unreachable(app))
        }
    }
}

/// The instance of a lease naming `session` while its connection lives
/// (`instance/session`; not `instance/session/grace`).
fn live_holder<'a>(lease: &'a str, session: &str) -> Option<&'a str> {
    let (instance, held) = lease.split_once('/')?;
    (held == session).then_some(instance)
}

/// The 503 for a batch that could not be run on its session's instance
/// (counted as `unreachable`).
fn unreachable(app: &AppState) -> ApiError {
    app.metrics.http_batch(HttpBatch::Unreachable);
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "session_unreachable",
        "the instance holding this session did not answer; send the batch again \
         (duplicates are harmless)",
    )
}

/// Serves this instance's channel for its whole life: runs the batches
/// forwarded to it, and hands the outcomes of its own to their POSTs.
pub(crate) async fn serve(app: AppState, mut wires: mpsc::UnboundedReceiver<String>) {
    while let Some(wire) = wires.recv().await {
        match serde_json::from_str::<Wire>(&wire) {
            Ok(Wire::Reply { id, outcome }) => {
                if let Some(waiting) = app.forwards.lock().remove(&id) {
                    let _ = waiting.send(outcome);
                }
            }
            Ok(Wire::Request {
                id,
                from,
                exam,
                student,
                session,
                texts,
            }) => {
                let app = app.clone();
                app.tracker.clone().spawn(async move {
                    let outcome = match app.http_sessions.get(&session, &exam, &student) {
                        Some(held) => {
                            app.metrics.http_batch(HttpBatch::Relayed);
                            run_batch(&app, &held, texts).await
                        }
                        None => BatchOutcome::NoSession,
                    };
                    let reply = Wire::Reply { id, outcome };
                    let Broker::Redis(redis) = &app.broker else {
                        return;
                    };
                    if let Ok(wire) = serde_json::to_string(&reply)
                        && let Err(e) = redis.send_to_instance(&from, &wire).await
                    {
                        tracing::warn!(error = %e, "cannot answer a forwarded batch");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "unparseable message on this instance's channel"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lease_naming_the_live_session_has_a_holder() {
        assert_eq!(live_holder("node-a/s1", "s1"), Some("node-a"));
        assert_eq!(
            live_holder("node-a/s1/grace", "s1"),
            None,
            "its stream ended"
        );
        assert_eq!(
            live_holder("node-a/s2", "s1"),
            None,
            "another session holds it"
        );
        assert_eq!(live_holder("garbage", "s1"), None);
    }

    #[test]
    fn the_wire_round_trips() {
        let reply = Wire::Reply {
            id: 3,
            outcome: BatchOutcome::RateLimited {
                retry_after_ms: 250,
            },
        };
        let text = serde_json::to_string(&reply).unwrap();
        match serde_json::from_str::<Wire>(&text).unwrap() {
            Wire::Reply {
                id: 3,
                outcome:
                    BatchOutcome::RateLimited {
                        retry_after_ms: 250,
                    },
            } => {}
            other => panic!("{other:?}"),
        }
    }
}
