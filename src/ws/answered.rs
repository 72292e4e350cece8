//! The database's answered sets, for the joins Redis cannot answer.
//!
//! In cluster mode a joining student's answered questions come from Redis
//! (`broker::redis::answered`). When Redis holds no state for the exam (it
//! restarted without persistence, or its keys expired) or does not answer,
//! only the database knows. Asking it once per join turned a reconnect
//! storm after a Redis restart into one query per student; instead the
//! first join of an exam reads every student's set in one query, and the
//! joins of the same exam within [`WINDOW`] share that read.
//!
//! What a shared read can miss: an answer committed through another
//! instance after the read, for a student who joins within the window
//! (the per-join read had the same gap, between its query and the join,
//! only shorter). The room heals it: a set smaller than the count it knows
//! is read again for that student (`room::actor::join`, `load_answered`).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::OnceCell, time::Instant};

use crate::store::Store;

/// How long one exam-wide read serves the exam's joins: a burst's length.
pub const WINDOW: Duration = Duration::from_secs(2);

/// Every student's answered questions, by student.
type Sets = HashMap<String, HashSet<String>>;

/// The exam-wide reads in use (at most one per exam, each for [`WINDOW`]).
#[derive(Default)]
pub struct AnsweredReads {
    /// A std mutex: held to find or add an exam's read, never across an
    /// await (the query runs outside it, in the read's `OnceCell`).
    open: Mutex<HashMap<Arc<str>, Arc<Read>>>,
}

struct Read {
    started: Instant,
    /// `None` when the query failed: the joins of the window go without,
    /// as a failed per-join read did.
    sets: OnceCell<Option<Sets>>,
}

impl AnsweredReads {
    /// The student's answered questions as the database has them, from the
    /// exam's shared read (made now if there is none younger than
    /// [`WINDOW`]); `None` if the database cannot say.
    pub async fn answered(
        &self,
        store: &Store,
        exam: &Arc<str>,
        student: &str,
    ) -> Option<HashSet<String>> {
        let read = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // Ended reads go (the map holds only the exams of a burst).
            open.retain(|_, r| now.duration_since(r.started) < WINDOW);
            open.entry(exam.clone())
                .or_insert_with(|| {
                    Arc::new(Read {
                        started: now,
                        sets: OnceCell::new(),
                    })
                })
                .clone()
        };
        let sets = read
            .sets
            .get_or_init(|| async { store.answered_sets(exam).await.ok() })
            .await;
        sets.as_ref()
            .map(|sets| sets.get(student).cloned().unwrap_or_default())
    }
}
