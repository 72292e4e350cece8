//! Who may sit an exam: the roster check at the handshake, with a short
//! cache so a reconnect storm does not become a query storm.
//!
//! The same cached read holds the exam's phase (no student socket to an
//! exam that does not exist or is a `draft`: `exam_not_open`) and who was
//! denied access (`deny`, `terminate`). A change forgets the entry on the
//! instance that made it, and on every instance with a room for the exam
//! as soon as the change's event reaches that room (room/actor/cluster.rs);
//! an instance without one (no student there lately) answers from its
//! cache for at most `TTL`, and the room it then starts enforces the
//! change on the socket (close 4003).
//!
//! Concurrent misses share one read: the handshakes of an exam that arrive
//! together (a reconnect storm, an exam's start) wait for the first one's
//! read instead of each querying the database (bench/callgrind.sh: 269
//! reads for 300 student handshakes before, two queries each). A handshake
//! joins a read in flight only if no change came since it began, so none
//! is answered from before a change it started after.
//!
//! Exams without a roster accept any student whose token grants the exam.
//! If the database cannot be reached and nothing is cached, the check fails
//! open by default (`exam.roster_fail_open`, and says so in the log):
//! locking every student out of a running exam because the database blinked
//! is worse than admitting one who holds a valid token for it. Set it to
//! false to refuse (503) instead.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use crate::store::{Store, control::Gate, queries::Roster};

const TTL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    NotOnRoster,
    NotAllowed,
    /// No such exam, or a `draft`.
    NotOpen,
    /// Denied by a teacher (`deny`, or `terminate`), with the reason.
    Denied(String),
    /// The roster could not be read and `exam.roster_fail_open` is false.
    Unavailable,
}

/// When a roster was fetched, the roster and the exam's gate.
type Entry = (Instant, Arc<(Roster, Gate)>);

/// A read of an exam's roster and gate that concurrent handshakes share:
/// its result, or the database error's text.
type Shared = Arc<tokio::sync::OnceCell<Result<Arc<(Roster, Gate)>, String>>>;

#[derive(Clone, Default)]
pub struct RosterCache {
    /// A std mutex: held for a lookup or an insert, never across an await.
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    /// Bumped by every `invalidate`: a read that began before a change may
    /// answer the handshake it was made for, but is not kept (it would put
    /// back what the change made stale, for a whole `TTL`).
    changes: Arc<std::sync::atomic::AtomicU64>,
    /// Reads in flight, by exam, with the `changes` count they began at.
    inflight: Arc<Mutex<HashMap<String, (u64, Shared)>>>,
    /// Reads made (each is two queries), for tests and diagnostics.
    reads: Arc<std::sync::atomic::AtomicU64>,
}

impl RosterCache {
    pub async fn check(
        &self,
        store: &Store,
        exam_id: &str,
        student_id: &str,
        fail_open: bool,
    ) -> Admission {
        let cached = self.lock().get(exam_id).cloned();
        let before = self.changes.load(Ordering::Acquire);
        let roster = match cached {
            Some((at, roster)) if at.elapsed() < TTL => roster,
            stale => match self.shared_read(store, exam_id, before).await {
                Ok(roster) => {
                    let mut entries = self.lock();
                    if self.changes.load(Ordering::Acquire) == before {
                        entries.insert(exam_id.to_owned(), (Instant::now(), roster.clone()));
                    }
                    roster
                }
                Err(e) => match stale {
                    Some((_, roster)) => {
                        // Keep using it for another TTL rather than making
                        // every handshake wait for an unreachable database.
                        self.lock()
                            .insert(exam_id.to_owned(), (Instant::now(), roster.clone()));
                        roster
                    }
                    None if fail_open => {
                        tracing::warn!(error = %e, %exam_id, "roster unavailable; admitting on the token alone");
                        return Admission::Admitted;
                    }
                    None => {
                        tracing::warn!(error = %e, %exam_id, "roster unavailable; refusing");
                        return Admission::Unavailable;
                    }
                },
            },
        };
        let (roster, gate) = &*roster;
        match gate.phase {
            None | Some(crate::control::Phase::Draft) => return Admission::NotOpen,
            Some(_) => {}
        }
        if let Some(reason) = gate.denied.get(student_id) {
            return Admission::Denied(reason.clone());
        }
        if roster.is_empty() {
            return Admission::Admitted;
        }
        match roster.get(student_id) {
            Some((_, true)) => Admission::Admitted,
            Some((_, false)) => Admission::NotAllowed,
            None => Admission::NotOnRoster,
        }
    }

    /// One read of the exam's roster and gate for every handshake that
    /// misses the cache while it runs (and began at the same `changes`
    /// count). If the handshake running it goes away, a waiting one takes
    /// it over (`OnceCell::get_or_init`).
    async fn shared_read(
        &self,
        store: &Store,
        exam_id: &str,
        changes: u64,
    ) -> Result<Arc<(Roster, Gate)>, String> {
        let cell = {
            let mut inflight = self.inflight();
            match inflight.get(exam_id) {
                Some((at, cell)) if *at == changes => cell.clone(),
                _ => {
                    let cell = Shared::default();
                    inflight.insert(exam_id.to_owned(), (changes, cell.clone()));
                    cell
                }
            }
        };
        let result = cell
            .get_or_init(|| async {
                self.reads.fetch_add(1, Ordering::Relaxed);
                read(store, exam_id)
                    .await
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .await
            .clone();
        let mut inflight = self.inflight();
        if inflight
            .get(exam_id)
            .is_some_and(|(_, c)| Arc::ptr_eq(c, &cell))
        {
            inflight.remove(exam_id);
        }
        result
    }

    /// How many reads of a roster and gate were made.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Shared)>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The exam's clock as last read for a handshake (see [`Gate`]).
    pub fn exam_clock(&self, exam_id: &str) -> Option<(crate::control::ExamClock, i64)> {
        self.lock()
            .get(exam_id)
            .and_then(|(_, entry)| entry.1.clock.clone())
    }

    /// Forgets an exam's roster and gate after they changed.
    pub fn invalidate(&self, exam_id: &str) {
        let mut entries = self.lock();
        self.changes.fetch_add(1, Ordering::AcqRel);
        entries.remove(exam_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn read(store: &Store, exam_id: &str) -> Result<(Roster, Gate), crate::store::StoreError> {
    Ok((
        store.roster(exam_id).await?,
        store.exam_gate(exam_id).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handshakes_that_miss_together_share_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::config::DatabaseSettings {
            url: format!("sqlite://{}", dir.path().join("r.db").display()),
            ..Default::default()
        };
        let store = Store::open(&settings).await.unwrap();
        let cache = RosterCache::default();
        let checks = (0..20).map(|i| cache.check(&store, "e1", ["s1", "s2"][i % 2], false));
        let answers = futures_util::future::join_all(checks).await;
        // No such exam: every one refused, from one read.
        assert!(
            answers.iter().all(|a| *a == Admission::NotOpen),
            "{answers:?}"
        );
        assert_eq!(cache.reads(), 1, "one read for 20 concurrent misses");
        // Cached now; a change makes the next check read again.
        cache.check(&store, "e1", "s1", false).await;
        assert_eq!(cache.reads(), 1);
        cache.invalidate("e1");
        cache.check(&store, "e1", "s1", false).await;
        assert_eq!(cache.reads(), 2);
        assert!(cache.inflight().is_empty(), "a finished read is forgotten");
    }
}
