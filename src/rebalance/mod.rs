//! Rebalancing: spreading connections over the fleet after it changed.
//!
//! Clients stay on the instance they first reached: a server added to a
//! busy fleet gets no traffic from the students already connected, so
//! scaling out mid-exam relieves nobody. Here every instance publishes its
//! open connections (sockets and event streams, by role) through Redis
//! every `cluster.rebalance_interval` ([`crate::broker::fleet`]); with
//! `cluster.rebalance = true`, one holding more than
//! `cluster.rebalance_tolerance` above the fleet's average closes the
//! excess ([`decide`]) with 1012 "rebalance", spread over
//! `cluster.rebalance_window` ([`shed`]). The clients come back through the
//! load balancer the way they come back from a rolling restart (students
//! with `previous_session`, teachers with `last_seq`), and the room treats
//! the close like a restart's: no network-incident count, the normal grace
//! period, no alert. An operator can also ask any instance to shed a share
//! of its connections (`POST /v1/admin/instances/{id}/drain`,
//! src/api/instances.rs), forwarded through Redis to another instance.
//!
//! With the in-memory broker there is one instance and no fleet:
//! rebalancing is a no-op (an operator's drain of this instance still
//! works).

mod decide;
pub mod shed;

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

pub use decide::{Counts, Decider};

use crate::{
    app::AppState,
    broker::{Broker, fleet::Entry},
    config::ClusterSettings,
};

/// The longest a step may wait for Redis: the next tick tries again.
const REDIS_WAIT: Duration = Duration::from_secs(2);

/// This instance's rebalancing state, shared by the loop and the API.
pub struct Rebalancer {
    settings: ClusterSettings,
    /// A std mutex: held to decide, never across an await.
    decider: Mutex<Decider>,
}

impl Rebalancer {
    pub fn new(settings: &ClusterSettings) -> Self {
        Self {
            decider: Mutex::new(Decider::new(
                settings.rebalance_tolerance,
                settings.rebalance_window,
            )),
            settings: settings.clone(),
        }
    }

    fn decider(&self) -> std::sync::MutexGuard<'_, Decider> {
        // Plain data: a poisoned decider is still a valid one.
        self.decider.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A count older than this is an instance that is gone.
    pub fn expiry(&self) -> Duration {
        self.settings.rebalance_interval * 3
    }

    /// How long a forwarded shed request waits for its instance.
    pub fn request_ttl(&self) -> Duration {
        self.expiry().max(Duration::from_secs(1))
    }

    pub fn window(&self) -> Duration {
        self.settings.rebalance_window
    }

    /// Sheds `share` of this instance's connections over the window, in
    /// the background (an operator asked); how many that is.
    pub fn shed_share(&self, app: &AppState, share: f64) -> u64 {
        let own = app.live.counts().total();
        let n = self.decider().operator(own, share, Instant::now());
        start(app, n, "operator");
        n
    }
}

/// Publishes the counts, takes shed requests and decides, every
/// `cluster.rebalance_interval` until shutdown.
pub async fn run(app: AppState) {
    let mut tick = tokio::time::interval(app.settings.cluster.rebalance_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => step(&app).await,
            _ = app.shutdown.cancelled() => return,
        }
    }
}

async fn step(app: &AppState) {
    let counts = app.live.counts();
    app.metrics.fleet_connections(&app.instance_id, counts);
    let Broker::Redis(redis) = &app.broker else {
        return; // alone: nothing to balance against
    };
    let draining = app.draining();
    let entry = Entry {
        counts,
        draining,
        at: crate::store::now_ms(),
    };
    let expiry = app.rebalancer.expiry();
    let io = async {
        redis.publish_counts(&entry, expiry).await?;
        let fleet = redis.fleet(expiry, entry.at).await?;
        let request = redis.take_shed_request().await?;
        Ok::<_, redis::RedisError>((fleet, request))
    };
    let (fleet, request) = match tokio::time::timeout(REDIS_WAIT, io).await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot publish or read the fleet's counts");
            return;
        }
        Err(_) => return,
    };
    let me = app.instance_id.as_ref();
    for (id, e) in fleet.iter().filter(|(id, _)| id != me) {
        app.metrics.fleet_connections(id, e.counts);
    }
    if draining {
        return; // a rolling restart closes everything anyway
    }
    if let Some(share) = request {
        let n = app.rebalancer.shed_share(app, share);
        tracing::info!(share, connections = n, "shed request from another instance");
        return;
    }
    if !app.settings.cluster.rebalance {
        return;
    }
    let others: Vec<u64> = fleet
        .iter()
        .filter(|(id, e)| id != me && !e.draining)
        .map(|(_, e)| e.counts.total())
        .collect();
    let n = app
        .rebalancer
        .decider()
        .decide(counts.total(), &others, Instant::now());
    start(app, n, "automatic");
}

/// Starts shedding `n` connections over the window (nothing for 0).
fn start(app: &AppState, n: u64, trigger: &'static str) {
    if n == 0 {
        return;
    }
    let window = app.rebalancer.window();
    tracing::info!(
        connections = n,
        window_ms = window.as_millis() as u64,
        trigger,
        "rebalancing: shedding connections with 1012"
    );
    let app = app.clone();
    // Not on the task tracker: a shutdown's drain closes everything
    // anyway, and this task ends at its next close (or the cancellation).
    tokio::spawn(async move {
        let metrics = app.metrics.clone();
        let done = shed::shed(&app.live, n as usize, window, &app.shutdown, |watcher| {
            metrics.rebalance_shed(watcher)
        })
        .await;
        tracing::info!(
            students = done.students,
            teachers = done.teachers,
            trigger,
            "rebalancing: shedding done"
        );
    });
}
