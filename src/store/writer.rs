//! The batching writer: the only path from the live exam to the database.
//!
//! Rooms and connections hand it records and move on; it commits them in
//! batches (up to `database.batch_max` records, at least every
//! `database.flush_interval`), one transaction per batch. If the database is
//! slow or down, records wait in memory, `/readyz` reports degraded, and the
//! batch is retried with exponential backoff until it commits — a record is
//! never dropped. Past `database.queue_limit` waiting records the server
//! refuses new exam connections instead (see `ws.rs`).
//!
//! Answers and submissions carry a completion: it fires only after their
//! transaction committed, and that is when the student gets its `ack`.
//!
//! The task wakes once per batch, not once per record: after the first
//! record of a batch it sleeps on one timer while the rest gather in the
//! queue (a record sent while the task sleeps is a push and no wake-up: the
//! task is not waiting on the queue). A full batch (`database.batch_max`
//! records waiting) cuts the sleep short.
//!
//! How long a batch gathers depends on who waits for it. A record someone
//! waits on (an answer's or a submission's `ack`, a room's seq reservation)
//! is committed within `database.flush_interval` (5 ms): its arrival wakes
//! the task once, to bring the batch's deadline forward. A batch of records
//! nobody waits on (events, session records, proctor actions, alerts)
//! gathers for `database.events_flush_interval` (25 ms): most of a commit's
//! cost (the transaction, the WAL's fsync, the index pages it dirties) is
//! per commit, not per record, so at a few thousand events per second five
//! times fewer commits take most of persistence's CPU away
//! (docs/bench/writer.md).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;
use tokio::{
    sync::{Notify, mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::Store;
use crate::{config::DatabaseSettings, metrics::DbMetrics};

/// One record for the database.
#[derive(Debug)]
pub enum Record {
    /// An exam event exactly as teachers received it.
    Event {
        exam_id: Arc<str>,
        seq: i64,
        at: i64,
        student_id: Option<Arc<str>>,
        kind: &'static str,
        /// The very bytes teachers were sent (reference counted: the
        /// writer shares them with the room's history, no copy).
        payload: Utf8Bytes,
    },
    /// The exam's seq may be used up to `reserved` (see `exam_seq`).
    /// `done`, if given, fires once committed (a room starting up waits).
    SeqReserved {
        exam_id: Arc<str>,
        reserved: i64,
        done: Option<oneshot::Sender<bool>>,
    },
    SessionOpened {
        id: String,
        exam_id: Arc<str>,
        user_id: String,
        role: &'static str,
        at: i64,
        ip: String,
        user_agent: String,
        instance_id: Arc<str>,
    },
    SessionClosed {
        id: String,
        at: i64,
        code: Option<i64>,
        reason: String,
    },
    TeacherAction {
        exam_id: Arc<str>,
        actor_id: String,
        action: &'static str,
        payload: String,
        at: i64,
    },
    /// Stored idempotently by (exam, student, answer id).
    Answer {
        exam_id: Arc<str>,
        student_id: Arc<str>,
        answer_id: String,
        question: String,
        value: String,
        at: i64,
        done: oneshot::Sender<bool>,
    },
    Submission {
        exam_id: Arc<str>,
        student_id: Arc<str>,
        at: i64,
        done: oneshot::Sender<bool>,
    },
    /// An alert watchers were sent, beside its event (`store/alerts.rs`).
    Alert(Box<super::alerts::AlertRow>),
}

/// The writer's state, for readiness (and gauges read at scrape time).
/// What it counts (commits, retries, records refused, seq collisions,
/// batch sizes, commit times) goes to [`DbMetrics`].
#[derive(Default)]
pub struct WriterStats {
    /// Records accepted but not yet committed.
    pub pending: AtomicUsize,
    /// The last attempt to commit failed (and is being retried).
    pub failing: AtomicBool,
}

/// A cheap handle for handing records to the writer task.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Record>,
    stats: Arc<WriterStats>,
    wake: Arc<Wake>,
    limit: usize,
}

/// What cuts the writer's sleep short: a full batch waiting, or a record
/// someone waits on.
struct Wake {
    /// Records in the queue the task has not taken yet.
    unread: AtomicUsize,
    /// This many unread records wake the sleeping task: with the record
    /// it holds, a full batch (`database.batch_max - 1`, at least 1).
    full_at: usize,
    /// Notified when `unread` reaches `full_at` (a permit is kept if the
    /// task is not sleeping: at worst one batch goes early).
    full: Notify,
    /// Notified for each record someone waits on (see [`Record::awaited`]):
    /// the batch it joins is committed within `flush_interval`.
    awaited: Notify,
}

/// Owns the writer task; `finish` drains it at shutdown.
pub struct WriterTask {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Writer {
    pub fn spawn(
        store: Store,
        settings: &DatabaseSettings,
        metrics: Arc<DbMetrics>,
    ) -> (Writer, WriterTask) {
        // Unbounded on purpose: bounding here would mean dropping or blocking
        // the live path. The bound is enforced at admission (queue_limit).
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(WriterStats::default());
        let stop = CancellationToken::new();
        let wake = Arc::new(Wake {
            unread: AtomicUsize::new(0),
            full_at: settings.batch_max.saturating_sub(1).max(1),
            full: Notify::new(),
            awaited: Notify::new(),
        });
        let worker = Worker {
            store,
            rx,
            stats: stats.clone(),
            wake: wake.clone(),
            metrics,
            batch_max: settings.batch_max,
            flush_interval: settings.flush_interval,
            events_flush_interval: settings.events_flush_interval,
            stop: stop.clone(),
        };
        let handle = tokio::spawn(worker.run());
        let writer = Writer {
            tx,
            stats,
            wake,
            limit: settings.queue_limit,
        };
        (writer, WriterTask { stop, handle })
    }

    /// Queues a record. Never blocks, never drops while the task runs.
    pub fn write(&self, record: Record) {
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        // Counted before the send, so the task (which subtracts what it
        // takes) never sees fewer unread than it takes.
        let unread = self.wake.unread.fetch_add(1, Ordering::Relaxed) + 1;
        let awaited = record.awaited();
        if self.tx.send(record).is_err() {
            self.stats.pending.fetch_sub(1, Ordering::Relaxed);
            self.wake.unread.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("record written after the writer stopped");
            return;
        }
        if unread == self.wake.full_at {
            self.wake.full.notify_one();
        }
        if awaited {
            self.wake.awaited.notify_one();
        }
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Too much is waiting for the database to admit new connections.
    pub fn over_limit(&self) -> bool {
        self.stats.pending.load(Ordering::Relaxed) >= self.limit
    }

    /// The database is failing writes right now.
    pub fn degraded(&self) -> bool {
        self.stats.failing.load(Ordering::Relaxed)
    }
}

impl WriterTask {
    /// Stops accepting the wait, writes everything still queued (retrying
    /// until `deadline`), then returns.
    pub async fn finish(self, deadline: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(deadline, self.handle).await.is_err() {
            tracing::error!("database writer did not drain before the shutdown deadline");
        }
    }
}

struct Worker {
    store: Store,
    rx: mpsc::UnboundedReceiver<Record>,
    stats: Arc<WriterStats>,
    wake: Arc<Wake>,
    /// Commits, retries, records refused (`rejected`), seq collisions,
    /// batch sizes and commit times.
    metrics: Arc<DbMetrics>,
    batch_max: usize,
    /// How long a batch may gather once a record someone waits on is in it.
    flush_interval: Duration,
    /// How long a batch of records nobody waits on may gather.
    events_flush_interval: Duration,
    stop: CancellationToken,
}

impl Worker {
    async fn run(mut self) {
        let mut batch: Vec<Record> = Vec::with_capacity(self.batch_max);
        loop {
            // Wait for the first record, or for the order to stop.
            let first = tokio::select! {
                r = self.rx.recv() => r,
                _ = self.stop.cancelled() => None,
            };
            match first {
                Some(r) => {
                    self.taken(1);
                    batch.push(r);
                }
                None => {
                    // Stopping: take whatever is still queued.
                    while let Ok(r) = self.rx.try_recv() {
                        batch.push(r);
                    }
                    if !batch.is_empty() {
                        self.commit(std::mem::take(&mut batch)).await;
                    }
                    return;
                }
            }
            // Let the batch gather on one timer, not one wake-up per record
            // (see the module's doc); a full batch waiting goes at once.
            if self.wake.unread.load(Ordering::Relaxed) < self.wake.full_at {
                self.gather().await;
            }
            let before = batch.len();
            while batch.len() < self.batch_max {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.taken(batch.len() - before);
            self.commit(std::mem::take(&mut batch)).await;
        }
    }

    /// Sleeps while a batch gathers: until `events_flush_interval` after
    /// its first record, brought forward to `flush_interval` after a
    /// record someone waits on. Such a record's notification is never
    /// missed: sent while the task was not sleeping here (the record is the
    /// batch's first, or still queued), it is kept as a permit.
    async fn gather(&self) {
        let mut deadline = Instant::now() + self.events_flush_interval;
        loop {
            tokio::select! {
                biased;
                () = self.wake.full.notified() => return,
                () = self.stop.cancelled() => return,
                () = self.wake.awaited.notified() => {
                    // The permit may be one the last batch left (its record
                    // went with it): at worst this batch goes early.
                    deadline = deadline.min(Instant::now() + self.flush_interval);
                }
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// `n` records left the queue.
    fn taken(&self, n: usize) {
        self.wake.unread.fetch_sub(n, Ordering::Relaxed);
    }

    /// Commits one batch, retrying with backoff until it succeeds. A batch
    /// the database refuses for its data (not for being unreachable) is
    /// committed record by record so one bad record cannot stall the rest.
    async fn commit(&self, batch: Vec<Record>) {
        let n = batch.len();
        self.metrics.batch_records.record(n as f64);
        let mut pending = batch;
        let mut backoff = Duration::from_millis(50);
        while !pending.is_empty() {
            let started = std::time::Instant::now();
            match super::queries::write_batch(&self.store, &pending, &self.metrics).await {
                Ok(()) => {
                    self.metrics.commit_seconds.record(started.elapsed());
                    self.succeeded();
                    finish(std::mem::take(&mut pending), true);
                }
                Err(e) if e.is_permanent() => {
                    pending = self.commit_one_by_one(pending).await;
                }
                Err(e) => {
                    if !self.stats.failing.swap(true, Ordering::Relaxed) {
                        tracing::error!(error = %e, records = pending.len(), "database write failed; retrying, nothing is dropped");
                    }
                    self.metrics.retries.increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        self.stats.pending.fetch_sub(n, Ordering::Relaxed);
        self.metrics.committed.increment(n as u64);
    }

    /// Commits each record alone; drops (with a log line) those the database
    /// refuses for their data, and returns the rest if it becomes
    /// unreachable midway.
    async fn commit_one_by_one(&self, batch: Vec<Record>) -> Vec<Record> {
        let mut rest = batch.into_iter();
        while let Some(record) = rest.next() {
            let one = std::slice::from_ref(&record);
            let started = std::time::Instant::now();
            match super::queries::write_batch(&self.store, one, &self.metrics).await {
                Ok(()) => {
                    self.metrics.commit_seconds.record(started.elapsed());
                    finish(vec![record], true)
                }
                Err(e) if e.is_permanent() => {
                    self.metrics.rejected.increment(1);
                    tracing::error!(error = %e, record = record.describe(), "the database refused a record; it is set aside");
                    finish(vec![record], false);
                }
                Err(_) => {
                    let mut left = vec![record];
                    left.extend(rest);
                    return left;
                }
            }
        }
        self.succeeded();
        Vec::new()
    }

    fn succeeded(&self) {
        if self.stats.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("database writes succeed again");
        }
    }
}

/// Tells whoever waits on these records how they ended.
fn finish(records: Vec<Record>, stored: bool) {
    for record in records {
        match record {
            Record::Answer { done, .. } | Record::Submission { done, .. } => {
                let _ = done.send(stored);
            }
            Record::SeqReserved {
                done: Some(done), ..
            } => {
                let _ = done.send(stored);
            }
            _ => {}
        }
    }
}

impl Record {
    /// Someone waits for this record's commit: a student for its `ack`, a
    /// room for its start. Its batch goes within `database.flush_interval`.
    fn awaited(&self) -> bool {
        matches!(
            self,
            Record::Answer { .. }
                | Record::Submission { .. }
                | Record::SeqReserved { done: Some(_), .. }
        )
    }

    /// A short description for logs (no payloads).
    fn describe(&self) -> String {
        match self {
            Record::Event { exam_id, seq, .. } => format!("event {exam_id}#{seq}"),
            Record::SeqReserved { exam_id, .. } => format!("seq reservation of {exam_id}"),
            Record::SessionOpened { id, .. } => format!("session {id} opened"),
            Record::SessionClosed { id, .. } => format!("session {id} closed"),
            Record::TeacherAction {
                exam_id, action, ..
            } => format!("{action} in {exam_id}"),
            Record::Answer {
                exam_id,
                student_id,
                ..
            } => format!("answer of {student_id} in {exam_id}"),
            Record::Submission {
                exam_id,
                student_id,
                ..
            } => {
                format!("submission of {student_id} in {exam_id}")
            }
            Record::Alert(row) => format!("alert {} in {}", row.alert_id, row.exam_id),
        }
    }
}
