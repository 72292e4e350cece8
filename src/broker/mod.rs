//! Where events go between being decided and being delivered.
//!
//! `Broker::Memory` (one instance): the room numbers its events itself and
//! delivers them at once. `Broker::Redis` (several instances): the room
//! hands the event to Redis, where one Lua script call per batch of the
//! exam's queued events gives them the exam's next cluster-wide `seq`s,
//! appends them to a trimmed history list, records the students' latest
//! state and publishes them as one message on the exam's channel — all
//! atomically, so the channel's order *is* the seq order. Every instance
//! with members in that exam (the origin included) receives it from its one
//! subscription per exam and delivers it locally. Rooms only call the small
//! surface below and do not care which broker they have.

pub mod conn;
pub mod fleet;
mod frame;
pub mod orphans;
mod publish;
pub mod redis;

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

use crate::protocol::Seq;

pub use self::redis::RedisBroker;

/// An event decided by a room, not yet numbered. `body` is the encoded
/// event with `"seq":0`; the broker puts the real seq in its place.
#[derive(Debug)]
pub struct Draft {
    pub exam: Arc<str>,
    pub body: String,
    /// `student`, `alert` or `announcement`.
    pub kind: &'static str,
    pub student: Option<Arc<str>>,
    /// The room's latest seq: the counter never goes below it, even if
    /// Redis lost its data.
    pub floor: Seq,
    /// Already delivered to the origin's own members (Redis was away when
    /// it was decided): the origin must not deliver it a second time.
    pub delivered_locally: bool,
}

/// A numbered event, as every instance receives it.
#[derive(Debug, Clone)]
pub struct Published {
    pub origin: Arc<str>,
    /// The origin delivered it locally already (see `Draft`).
    pub delivered_at_origin: bool,
    pub kind: String,
    pub student: Option<Arc<str>>,
    pub seq: Seq,
    pub event: Utf8Bytes,
}

/// What the broker knows of an exam, for a room starting up.
#[derive(Debug, Default)]
pub struct SharedState {
    pub seq: Seq,
    /// Each student's latest `student` event (JSON).
    pub students: Vec<String>,
    /// Recent events, oldest first.
    pub history: Vec<(Seq, String)>,
}

#[derive(Clone)]
pub enum Broker {
    Memory,
    Redis(Arc<RedisBroker>),
}

impl Broker {
    /// True when events are numbered and fanned out by Redis.
    pub fn clustered(&self) -> bool {
        matches!(self, Broker::Redis(_))
    }

    /// This instance's id (events it published come back with it).
    pub fn instance(&self) -> Option<&Arc<str>> {
        match self {
            Broker::Memory => None,
            Broker::Redis(r) => Some(r.instance()),
        }
    }

    /// Hands a draft to Redis, in order, without waiting. False if it had
    /// to be dropped (too many waiting).
    pub fn publish(&self, draft: Draft) -> bool {
        match self {
            Broker::Memory => true,
            Broker::Redis(r) => r.publish(draft),
        }
    }

    /// Tells every other instance of a revocation this instance has
    /// applied (in memory there are none: nothing to do).
    pub fn publish_revocation(&self, entry: &crate::revocations::Revocation) {
        if let Broker::Redis(r) = self {
            r.publish_revocation(entry.to_wire());
        }
    }

    /// Whether the broker is reachable (always, in memory).
    pub fn healthy(&self) -> bool {
        match self {
            Broker::Memory => true,
            Broker::Redis(r) => r.healthy(),
        }
    }
}

/// Routes what Redis pushes to this instance's rooms, revocations to its
/// revocation set, and its own channel's messages to `forwards`
/// (src/sse/forward.rs).
pub async fn dispatch(
    mut inbound: tokio::sync::mpsc::UnboundedReceiver<redis::Inbound>,
    registry: crate::room::Registry,
    revocations: Arc<crate::revocations::Revocations>,
    store: crate::store::Store,
    forwards: tokio::sync::mpsc::UnboundedSender<String>,
    http_sessions: Arc<crate::sse::sessions::HttpSessions>,
) {
    use crate::room::RoomCmd;
    while let Some(msg) = inbound.recv().await {
        match msg {
            redis::Inbound::Event(exam, published) => {
                registry.route(&exam, RoomCmd::Published(published)).await;
            }
            redis::Inbound::Kick {
                exam,
                student,
                handover,
            } => {
                // The client of an HTTP session here moving to another
                // instance, with the stream's token (PROTOCOL.md 8.4):
                // retired quietly, as the room does for a local handover.
                let quiet = handover.is_some_and(|(session, token)| {
                    http_sessions.hands_over(&session, &token, &exam, &student)
                });
                registry
                    .route(&exam, RoomCmd::KickedElsewhere { student, quiet })
                    .await;
            }
            redis::Inbound::Dropped { exam, student } => {
                registry
                    .route(&exam, RoomCmd::DroppedElsewhere { student })
                    .await;
            }
            redis::Inbound::ResyncExam(exam) => {
                registry.route(&exam, RoomCmd::Resync).await;
            }
            redis::Inbound::Resync => {
                // Revocations published while Redis was away never reached
                // this instance: the database has them all.
                tokio::spawn(reload_revocations(revocations.clone(), store.clone()));
                for room in registry.all() {
                    let _ = room.send(RoomCmd::Resync).await;
                }
            }
            redis::Inbound::Revoked(wire) => {
                match crate::revocations::Revocation::from_wire(&wire) {
                    Some(entry) => {
                        revocations.apply(entry, crate::store::now_ms());
                    }
                    None => tracing::warn!("unparseable message on the revocations channel"),
                }
            }
            redis::Inbound::Forward(wire) => {
                let _ = forwards.send(wire);
            }
        }
    }
}

/// Replaces this instance's revocation set with the database's (start-up,
/// and after a Redis disconnection); on failure the set is kept as it was.
pub async fn reload_revocations(
    revocations: Arc<crate::revocations::Revocations>,
    store: crate::store::Store,
) {
    let now = crate::store::now_ms();
    match store.live_revocations(now).await {
        Ok(entries) => revocations.load(entries, now),
        Err(e) => tracing::warn!(error = %e, "cannot reload token revocations"),
    }
}

/// Keeps this instance's liveness key alive until shutdown.
pub async fn heartbeat(
    redis: Arc<RedisBroker>,
    ttl: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval((ttl / 3).max(std::time::Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = every.tick() => {
                let _ = redis.heartbeat(ttl).await;
            }
            _ = shutdown.cancelled() => return,
        }
    }
}
