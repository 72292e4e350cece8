//! Who may sit an exam: the roster check at the handshake, with a short
//! cache so a reconnect storm does not become a query storm.
//!
//! Exams without a roster accept any student whose token grants the exam.
//! If the database cannot be reached and nothing is cached, the check fails
//! open by default (`exam.roster_fail_open`, and says so in the log):
//! locking every student out of a running exam because the database blinked
//! is worse than admitting one who holds a valid token for it. Set it to
//! false to refuse (503) instead.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::store::{Store, queries::Roster};

const TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    NotOnRoster,
    NotAllowed,
    /// The roster could not be read and `exam.roster_fail_open` is false.
    Unavailable,
}

/// When a roster was fetched, and the roster.
type Entry = (Instant, Arc<Roster>);

#[derive(Clone, Default)]
pub struct RosterCache {
    /// A std mutex: held for a lookup or an insert, never across an await.
    entries: Arc<Mutex<HashMap<String, Entry>>>,
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
        let roster = match cached {
            Some((at, roster)) if at.elapsed() < TTL => roster,
            stale => match store.roster(exam_id).await {
                Ok(roster) => {
                    let roster = Arc::new(roster);
                    self.lock()
                        .insert(exam_id.to_owned(), (Instant::now(), roster.clone()));
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
        if roster.is_empty() {
            return Admission::Admitted;
        }
        match roster.get(student_id) {
            Some((_, true)) => Admission::Admitted,
            Some((_, false)) => Admission::NotAllowed,
            None => Admission::NotOnRoster,
        }
    }

    /// Forgets an exam's roster after it changed.
    pub fn invalidate(&self, exam_id: &str) {
        self.lock().remove(exam_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}
