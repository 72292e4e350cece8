//! Shards: an exam's sockets and its room on one thread (`server.shards`).
//!
//! On tokio's multi-thread runtime a room that wakes ten teacher tasks
//! wakes a second worker to steal some of them, which is a futex wake-up
//! and a park for that worker per batch: ≈0.75 thread switches per frame
//! out at fan-out 10 (docs/bench/cpu.md). One worker removes that but
//! gives up the second core. A shard is an OS thread running a tokio
//! current-thread runtime (I/O and timers); an exam id picks one shard
//! ([`route::shard_of`]), and both the exam's connections (routed by the
//! accept loop from the request line, [`crate::accept`]) and its room
//! ([`crate::room::Registry::get_or_start`]) run there. An event then goes
//! from a student's socket through the room to every teacher's socket
//! without crossing a thread, and N shards still use N cores.
//!
//! Everything else — the accept loop itself, the database writer, the
//! broker, the operators' listener, timers of the app — stays on the main
//! runtime. Cross-runtime calls are all channels (mpsc, oneshot), which
//! tokio allows between runtimes.
//!
//! Each thread owns its runtime: it `block_on`s until [`ShardThreads`] is
//! ended (the app's last step of shutdown, or its drop), then shuts the
//! runtime down there, outside async code. [`ShardThreads`] joins the
//! threads, so a server that stops leaves none behind (tests run dozens in
//! one process).

pub mod route;

use std::{
    cell::Cell,
    future::Future,
    io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use metrics::Gauge;
use tokio::runtime::Handle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::metrics::Metrics;

pub use route::shard_of;

/// How long a shard's runtime waits for its blocking tasks when it shuts
/// down; its async tasks are dropped at once (the app waited for them).
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

thread_local! {
    /// The shard this thread runs, set once by the shard's thread.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The shard whose thread this is; `None` on the main runtime.
pub fn current() -> Option<usize> {
    CURRENT.get()
}

/// The shards' runtimes, for spawning on them: cloneable, and empty when
/// `server.shards = 0` (then everything runs on the main runtime, as it did
/// before shards).
#[derive(Clone, Default)]
pub struct Shards(Option<Arc<Inner>>);

struct Inner {
    handles: Vec<Handle>,
    /// For connections whose shard the request line does not tell.
    next: AtomicUsize,
    /// `examwatch_shard_connections{shard}` and `examwatch_shard_rooms{shard}`.
    connections: Vec<Gauge>,
    rooms: Vec<Gauge>,
}

/// The shards' threads: ending (or dropping) this stops and joins them.
pub struct ShardThreads {
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

impl Shards {
    /// Starts `n` shard threads (none for `n = 0`).
    pub fn start(n: usize, metrics: &Metrics) -> io::Result<(Shards, ShardThreads)> {
        let stop = CancellationToken::new();
        let mut threads = ShardThreads {
            stop: stop.clone(),
            threads: Vec::with_capacity(n),
        };
        if n == 0 {
            return Ok((Shards(None), threads));
        }
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let stop = stop.clone();
            // The runtime is built, run and shut down on its own thread:
            // dropped here, in async code, it would panic.
            let thread = std::thread::Builder::new()
                .name(format!("examwatch-shard-{i}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .thread_name(format!("examwatch-shard-{i}-blocking"))
                        .build();
                    let rt = match rt {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    CURRENT.set(Some(i));
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(stop.cancelled());
                    rt.shutdown_timeout(RUNTIME_SHUTDOWN);
                })?;
            threads.threads.push(thread);
            // A start-up wait of a few microseconds: the thread only builds
            // its runtime before it answers.
            let handle = rx
                .recv()
                .map_err(|_| io::Error::other("a shard thread ended while starting"))??;
            handles.push(handle);
        }
        let shard_gauges = |name: &'static str| -> Vec<Gauge> {
            (0..n).map(|i| metrics.shard_gauge(name, i)).collect()
        };
        let inner = Inner {
            handles,
            next: AtomicUsize::new(0),
            connections: shard_gauges("examwatch_shard_connections"),
            rooms: shard_gauges("examwatch_shard_rooms"),
        };
        Ok((Shards(Some(Arc::new(inner))), threads))
    }

    /// Shard threads running (0: off).
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.handles.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shard of `exam_id`; `None` when shards are off.
    pub fn for_exam(&self, exam_id: &str) -> Option<usize> {
        let n = self.len();
        (n > 0).then(|| shard_of(exam_id, n))
    }

    /// The next shard in turn; `None` when shards are off.
    pub fn round_robin(&self) -> Option<usize> {
        let s = self.0.as_ref()?;
        Some(s.next.fetch_add(1, Ordering::Relaxed) % s.handles.len())
    }

    /// The runtime of shard `i`.
    pub fn handle(&self, i: usize) -> Option<&Handle> {
        self.0.as_ref()?.handles.get(i)
    }

    /// Spawns `task` on `tracker`, on shard `shard`'s runtime if there is
    /// one (else on the current runtime).
    pub fn spawn_on<F>(&self, shard: Option<usize>, tracker: &TaskTracker, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match shard.and_then(|i| self.handle(i)) {
            Some(handle) => drop(tracker.spawn_on(task, handle)),
            None => drop(tracker.spawn(task)),
        }
    }

    /// Counts a connection on the shard whose thread calls this, for as long
    /// as the guard lives (`None` off a shard).
    pub fn connection_here(&self) -> Option<OnShard> {
        self.here(|s| &s.connections)
    }

    /// Counts a room on the shard whose thread calls this.
    pub fn room_here(&self) -> Option<OnShard> {
        self.here(|s| &s.rooms)
    }

    fn here(&self, which: impl Fn(&Inner) -> &Vec<Gauge>) -> Option<OnShard> {
        let gauge = which(self.0.as_ref()?).get(current()?)?.clone();
        gauge.increment(1);
        Some(OnShard(gauge))
    }
}

/// One connection or room counted on the shard it runs on (read from the
/// thread, not from the choice: the metric shows where tasks really are).
pub struct OnShard(Gauge);

impl Drop for OnShard {
    fn drop(&mut self) {
        self.0.decrement(1);
    }
}

impl ShardThreads {
    /// Stops the shards and waits for their threads. Every task on them
    /// should have ended first (the app awaits its tracker); what is left
    /// is dropped.
    pub fn end(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.cancel();
        let me = std::thread::current().id();
        for thread in self.threads.drain(..) {
            // Never join ourselves: an app dropped by a task of a shard.
            if thread.thread().id() != me && thread.join().is_err() {
                tracing::error!("a shard thread panicked");
            }
        }
    }
}

impl Drop for ShardThreads {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// `server.shards = "auto"`: one shard per core the process may use.
pub fn auto_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_their_shard_and_the_threads_end_with_their_owner() {
        let metrics = Metrics::default();
        let (shards, threads) = Shards::start(2, &metrics).unwrap();
        assert_eq!(shards.len(), 2);
        let tracker = TaskTracker::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        shards.spawn_on(Some(1), &tracker, async move {
            let _ = tx.send((current(), std::thread::current().name().map(str::to_owned)));
        });
        let (shard, name) = rx.await.unwrap();
        assert_eq!(shard, Some(1));
        assert_eq!(name.as_deref(), Some("examwatch-shard-1"));
        assert_eq!(current(), None, "the test's own thread is no shard");
        // Other tests in this process run shards too: ours are known by
        // their handles, which refuse work once the runtimes are gone.
        threads.end();
        assert!(
            shards
                .handle(0)
                .unwrap()
                .spawn(async {})
                .await
                .unwrap_err()
                .is_cancelled(),
            "an ended shard runs nothing"
        );
    }

    #[test]
    fn zero_shards_is_the_main_runtime() {
        let (shards, _threads) = Shards::start(0, &Metrics::default()).unwrap();
        assert!(shards.is_empty());
        assert_eq!(shards.for_exam("e1"), None);
        assert_eq!(shards.round_robin(), None);
        assert!(shards.connection_here().is_none());
    }
}
