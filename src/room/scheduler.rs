//! Keeps a room running for every exam whose clock runs, on every
//! instance: an exam opening by itself soon, or one in progress with an end
//! or deadlines to keep. Its timers live in its room (room/control.rs,
//! actor/control.rs); a room with nobody connected would otherwise not
//! exist, and after a restart nothing would fire until someone connected.
//!
//! Every instance runs the room; which one's timer wins is decided by the
//! database (store/control.rs), so running it more than once is harmless.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Registry;
use crate::store::{Store, now_ms};

pub async fn run(registry: Registry, store: Store, every: Duration, shutdown: CancellationToken) {
    let every = every.max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Rooms for exams opening within two scans start ahead of time.
        let horizon = now_ms() + 2 * every.as_millis() as i64;
        match store.exams_with_running_clocks(horizon).await {
            Ok(ids) => {
                for id in ids {
                    if registry.get(&id).is_none() {
                        tracing::debug!(exam_id = %id, "starting the room of an exam whose clock runs");
                        registry.get_or_start(&id);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot look for exams whose clock runs"),
        }
    }
}
