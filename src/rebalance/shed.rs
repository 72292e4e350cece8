//! Which connections a rebalance closes, and closing them: `n` of them,
//! one at a time, spread evenly over the window (the drain's
//! [`close_at`]), with close 1012 "rebalance".
//!
//! Students go first, in random order: a student reconnects with
//! `previous_session` and resumes where they were, while a teacher who
//! moves has to catch up (a replay from `last_seq`). Teachers go only
//! when there are not enough students. A student with an answer or a
//! submission handed to the database and not committed yet is never
//! chosen ([`Kick::kick_unless_in_flight`]): it is passed over, and tried
//! again after the other students, before any teacher.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    drain::close_at,
    live::Live,
    room::{ConnId, Kick, close},
};

/// What a shedding closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shed {
    pub students: u64,
    pub teachers: u64,
}

/// Connections in the order they are tried.
pub type Queue = VecDeque<(ConnId, Kick)>;

/// The candidates in the order they are tried: students shuffled, then
/// watchers shuffled (`seed` makes the order reproducible in tests).
pub fn order(candidates: Vec<(ConnId, bool, Kick)>, seed: u64) -> (Queue, Queue) {
    let mut rng = SplitMix(seed);
    let (mut students, mut teachers): (Vec<_>, Vec<_>) =
        candidates.into_iter().partition(|(_, watcher, _)| !watcher);
    // Sorted first: the shuffle, not the map's iteration order, decides.
    students.sort_unstable_by_key(|(c, _, _)| *c);
    teachers.sort_unstable_by_key(|(c, _, _)| *c);
    shuffle(&mut students, &mut rng);
    shuffle(&mut teachers, &mut rng);
    let strip =
        |v: Vec<(ConnId, bool, Kick)>| -> Queue { v.into_iter().map(|(c, _, k)| (c, k)).collect() };
    (strip(students), strip(teachers))
}

/// Closes up to `n` of the drain's connections over `window`, in
/// [`order`]; stops early at `stop`, when a rolling restart begins, or
/// when no candidate is left. `on_kick(watcher)` is told of each close.
pub async fn shed(
    drain: &Live,
    n: usize,
    window: Duration,
    stop: &CancellationToken,
    mut on_kick: impl FnMut(bool),
) -> Shed {
    let (mut students, mut teachers) = order(drain.candidates(), seed());
    let mut deferred = Queue::new();
    let mut done = Shed::default();
    let start = Instant::now();
    for i in 0..n {
        tokio::select! {
            _ = tokio::time::sleep_until(start + close_at(i, n, window)) => {}
            _ = stop.cancelled() => return done,
        }
        if drain.restarting() {
            return done;
        }
        let kicked = loop {
            // Students, then the students passed over (their commit may
            // have landed meanwhile), then teachers.
            // (first pass, watcher)
            let ((conn, kick), first, watcher) = match students.pop_front() {
                Some(s) => (s, true, false),
                None => match deferred.pop_front() {
                    Some(s) => (s, false, false),
                    None => match teachers.pop_front() {
                        Some(t) => (t, false, true),
                        None => break None,
                    },
                },
            };
            if !drain.is_open(conn) {
                continue; // gone meanwhile
            }
            if kick.kick_unless_in_flight(close::REBALANCE) {
                break Some(watcher);
            }
            if first && kick.in_flight() {
                deferred.push_back((conn, kick));
            }
        };
        match kicked {
            Some(true) => done.teachers += 1,
            Some(false) => done.students += 1,
            None => return done,
        }
        on_kick(kicked == Some(true));
    }
    done
}

fn seed() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    })
}

/// A small, fast generator: the choice only has to be unpredictable
/// enough that the same students are not always the ones moved.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Fisher–Yates.
fn shuffle<T>(v: &mut [T], rng: &mut SplitMix) {
    for i in (1..v.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn listed(drain: &Arc<Live>, n: u64, watcher: bool) -> Vec<(crate::live::Listed, Kick)> {
        let exam: Arc<str> = "e1".into();
        (0..n)
            .map(|i| {
                let (tx, _rx, kick) = crate::room::queue::queue(4);
                let conn = if watcher { 1000 + i } else { i };
                let out = crate::room::Outbox {
                    tx,
                    kick: kick.clone(),
                    lane: crate::metrics::SlowPath::StudentQueue,
                };
                let token = crate::revocations::TokenId::new(format!("u{conn}").into(), None, None);
                (drain.insert(conn, exam.clone(), watcher, token, out), kick)
            })
            .collect()
    }

    #[test]
    fn students_come_first_in_an_order_that_depends_on_the_seed() {
        let cands = |n: u64| -> Vec<(ConnId, bool, Kick)> {
            (0..n)
                .map(|i| {
                    let (_tx, _rx, kick) = crate::room::queue::queue(1);
                    (i, i % 4 == 0, kick)
                })
                .collect()
        };
        let (s1, t1) = order(cands(40), 1);
        let (s2, _) = order(cands(40), 2);
        assert_eq!((s1.len(), t1.len()), (30, 10));
        let ids = |q: &Queue| q.iter().map(|(c, _)| *c).collect::<Vec<_>>();
        assert!(ids(&s1).iter().all(|c| c % 4 != 0), "no teacher among them");
        assert_ne!(ids(&s1), ids(&s2), "another seed, another order");
        let mut sorted = ids(&s1);
        sorted.sort_unstable();
        assert_ne!(ids(&s1), sorted, "shuffled");
    }

    #[tokio::test]
    async fn sheds_students_then_teachers_and_never_one_mid_commit() {
        let drain = Arc::new(Live::default());
        let students = listed(&drain, 3, false);
        let teachers = listed(&drain, 2, true);
        // Student 0 has an answer awaiting its commit the whole time.
        let _mid_commit = students[0].1.commit_started();
        let stop = CancellationToken::new();
        let mut kicks = Vec::new();
        let done = shed(&drain, 4, Duration::ZERO, &stop, |w| kicks.push(w)).await;
        assert_eq!(
            done,
            Shed {
                students: 2,
                teachers: 2
            }
        );
        assert_eq!(kicks, [false, false, true, true], "students first");
        assert_eq!(students[0].1.reason(), None, "mid-commit: left alone");
        for (_, k) in &students[1..] {
            assert_eq!(k.reason(), Some(close::REBALANCE));
        }
        for (_, k) in &teachers {
            assert_eq!(k.reason(), Some(close::REBALANCE));
        }
    }

    #[tokio::test]
    async fn sheds_no_more_than_asked_and_stops_when_nobody_is_left() {
        let drain = Arc::new(Live::default());
        let students = listed(&drain, 5, false);
        let stop = CancellationToken::new();
        let done = shed(&drain, 2, Duration::ZERO, &stop, |_| {}).await;
        assert_eq!(done.students, 2);
        let kicked = students
            .iter()
            .filter(|(_, k)| k.reason().is_some())
            .count();
        assert_eq!(kicked, 2);
        let done = shed(&drain, 10, Duration::ZERO, &stop, |_| {}).await;
        assert_eq!(done.students, 3, "only the three not kicked yet");
    }
}
