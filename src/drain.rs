//! Rolling restarts without a herd: which sockets are open, and closing
//! them one by one over `server.drain_window`.
//!
//! Closing every socket at the same instant (what a plain shutdown does)
//! sends a whole instance's clients to the others in the same second: a
//! reconnect storm of handshakes, lease claims and snapshots. Instead
//! [`App::run`](crate::app::App::run) asks [`Live::close_spread`] to kick
//! connection *i* of *n* with close 1012 ("service restart") at
//! `i × window / n`; the client library adds a random wait of its own
//! (`restartJitterMs`) before it reconnects.
//!
//! The order is fair: every (exam, role) group is spread over the whole
//! window, each connection placed at the middle of its share of it
//! ([`fair_order`]). No exam loses all its students first, and an exam's
//! teachers go in among its students rather than all at the start or the
//! end, so a teacher on another instance sees the students move one by
//! one, and a teacher here is back (resumed with `last_seq`) while the
//! rest of the exam is still moving.
//!
//! The connections are those of the one registry of open connections
//! ([`crate::live`]), which revocations read too.
//!
//! The kick is the connection's own [`Kick`](crate::room::Kick): queued frames still go out
//! before the close (see `ws::pump`), and the room learns why the socket
//! went (`Kick::reason`), so a restart is neither a drop that counts
//! towards a network incident nor anything but the normal grace period.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::{
    live::Live,
    room::{ConnId, Kick, close},
};

/// One open connection as the ordering sees it.
#[derive(Debug, Clone)]
pub struct Member {
    pub conn: ConnId,
    pub exam: Arc<str>,
    pub watcher: bool,
}

/// The drain over the registry of open connections ([`crate::live`]), and
/// what a rebalance reads of it (src/rebalance).
impl Live {
    /// Open connections by role, for the fleet's counts (src/rebalance).
    pub fn counts(&self) -> crate::rebalance::Counts {
        let s = self.lock();
        let teachers = s.open.values().filter(|e| e.watcher).count() as u64;
        crate::rebalance::Counts {
            students: s.open.len() as u64 - teachers,
            teachers,
        }
    }

    /// The open connections with their kicks, for a rebalance to choose
    /// from (src/rebalance/shed.rs); empty once a rolling restart began
    /// (it closes them all anyway).
    pub fn candidates(&self) -> Vec<(ConnId, bool, Kick)> {
        let s = self.lock();
        if s.restarting {
            return Vec::new();
        }
        s.open
            .iter()
            .map(|(conn, e)| (*conn, e.watcher, e.out.kick.clone()))
            .collect()
    }

    /// Whether a rolling restart began (a rebalance then stops shedding).
    pub fn restarting(&self) -> bool {
        self.lock().restarting
    }

    /// Whether a connection is still listed.
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.lock().open.contains_key(&conn)
    }

    /// Closes every open connection with 1012, connection `i` of `n` at
    /// `i × window / n` from now, in [`fair_order`]; returns once the last
    /// one was kicked. Connections that register meanwhile are kicked at
    /// once.
    pub async fn close_spread(&self, window: Duration) -> usize {
        let members: Vec<Member> = {
            let mut s = self.lock();
            s.restarting = true;
            s.open
                .iter()
                .map(|(conn, e)| Member {
                    conn: *conn,
                    exam: e.exam.clone(),
                    watcher: e.watcher,
                })
                .collect()
        };
        let order = fair_order(&members);
        let n = order.len();
        let start = Instant::now();
        for (i, conn) in order.into_iter().enumerate() {
            tokio::time::sleep_until(start + close_at(i, n, window)).await;
            // Gone already (closed by its client, kicked for another reason).
            let kick = self.lock().open.get(&conn).map(|e| e.out.kick.clone());
            if let Some(kick) = kick {
                kick.kick(close::RESTART);
            }
        }
        n
    }

    /// Kicks every open connection with `reason` (the shutdown, after the
    /// drain: a connection its kick missed still ends); how many.
    pub fn kick_all(&self, reason: crate::room::CloseReason) -> usize {
        let s = self.lock();
        for e in s.open.values() {
            e.out.kick.kick(reason.clone());
        }
        s.open.len()
    }

    /// Waits, until `deadline` at most, for every listed connection to
    /// finish its close; true if they all did.
    pub async fn closed_by(&self, deadline: Instant) -> bool {
        loop {
            // Interest first, then the check: a last connection leaving in
            // between still wakes us.
            let emptied = self.emptied.notified();
            let mut emptied = std::pin::pin!(emptied);
            emptied.as_mut().enable();
            if self.open() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, emptied).await.is_err() {
                return self.open() == 0;
            }
        }
    }
}

/// When connection `i` of `n` closes: `i × window / n` (the first at once,
/// the last one share before the window's end).
pub fn close_at(i: usize, n: usize, window: Duration) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    let nanos = window.as_nanos() * i as u128 / n as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The closing order: each (exam, role) group is spread evenly over the
/// whole window. Member `k` of a group of `g` gets the position
/// `(k + ½) / g`; sorting by position interleaves the groups (an exam's
/// teachers among its students, exams among each other). Ties go by the
/// group's name, then by connection id, so the order is deterministic.
pub fn fair_order(members: &[Member]) -> Vec<ConnId> {
    let mut groups: HashMap<(&str, bool), Vec<ConnId>> = HashMap::new();
    for m in members {
        groups
            .entry((m.exam.as_ref(), m.watcher))
            .or_default()
            .push(m.conn);
    }
    let mut placed: Vec<(u128, (&str, bool), ConnId)> = Vec::with_capacity(members.len());
    for (group, mut conns) in groups {
        conns.sort_unstable();
        let g = conns.len() as u128;
        for (k, conn) in conns.into_iter().enumerate() {
            // (k + 1/2) / g, in fixed point, exact for any realistic g.
            let position = ((2 * k as u128 + 1) << 40) / (2 * g);
            placed.push((position, group, conn));
        }
    }
    placed.sort_unstable();
    placed.into_iter().map(|(_, _, conn)| conn).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(conn: ConnId, exam: &str, watcher: bool) -> Member {
        Member {
            conn,
            exam: exam.into(),
            watcher,
        }
    }

    #[test]
    fn closes_are_spread_evenly_over_the_window() {
        let w = Duration::from_secs(10);
        let at: Vec<_> = (0..4).map(|i| close_at(i, 4, w)).collect();
        assert_eq!(
            at,
            [0, 2500, 5000, 7500].map(Duration::from_millis).to_vec()
        );
        assert_eq!(close_at(0, 1, w), Duration::ZERO);
        assert_eq!(close_at(3, 4, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn teachers_go_among_their_students_and_exams_interleave() {
        // e1: 4 students (1-4) and one teacher (10); e2: 2 students (20, 21).
        let members = [
            member(1, "e1", false),
            member(2, "e1", false),
            member(3, "e1", false),
            member(4, "e1", false),
            member(10, "e1", true),
            member(20, "e2", false),
            member(21, "e2", false),
        ];
        let order = fair_order(&members);
        assert_eq!(order.len(), members.len());
        let pos = |c: ConnId| order.iter().position(|&x| x == c).unwrap();
        // The teacher is in the middle, not first or last.
        assert!(pos(10) > 1 && pos(10) < 5, "{order:?}");
        // e2's two students are not both before (or both after) e1's.
        assert!(pos(20) < pos(4) && pos(21) > pos(1), "{order:?}");
        // Within a group, by connection id.
        assert!(pos(1) < pos(2) && pos(2) < pos(3) && pos(3) < pos(4));
    }

    fn listed(
        drain: &Arc<Live>,
        conn: ConnId,
        exam: &Arc<str>,
    ) -> (crate::live::Listed, crate::room::Kick) {
        let (tx, _rx, kick) = crate::room::queue::queue(4);
        let out = crate::room::Outbox {
            tx,
            kick: kick.clone(),
            lane: crate::metrics::SlowPath::StudentQueue,
        };
        let token = crate::revocations::TokenId::new("s1".into(), None, None);
        (drain.insert(conn, exam.clone(), false, token, out), kick)
    }

    #[tokio::test]
    async fn a_connection_joining_after_the_drain_started_is_kicked_at_once() {
        let drain = Arc::new(Live::default());
        let exam: Arc<str> = "e1".into();
        let (first, kick) = listed(&drain, 1, &exam);
        assert_eq!(drain.close_spread(Duration::ZERO).await, 1);
        assert_eq!(kick.reason(), Some(close::RESTART));
        let (second, late) = listed(&drain, 2, &exam);
        assert_eq!(late.reason(), Some(close::RESTART));
        drop(first);
        assert_eq!(drain.open(), 1);
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(!drain.closed_by(soon).await, "one is still open");
        let waiter = {
            let drain = drain.clone();
            tokio::spawn(async move {
                drain
                    .closed_by(Instant::now() + Duration::from_secs(5))
                    .await
            })
        };
        tokio::task::yield_now().await;
        drop(second);
        assert!(waiter.await.unwrap(), "woken when the last one left");
    }
}
