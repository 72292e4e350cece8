//! The room's orphan scan: finding its students whose instance died
//! (every `broker.heartbeat_ttl` / 3), without reading every remote
//! student's lease each time (src/broker/orphans.rs says why).
//!
//! [`Holders`] is the plain state it keeps: who held each remote student's
//! lease when it was last read. A scan reads the lease only of students
//! whose holder is unknown or now dead, and of every candidate once per
//! `exam.lease_ttl` (a lease can expire under a live holder). A student
//! event from another instance, a kick or a drop says the student may
//! have moved: the holder is forgotten and read again at the next scan.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use super::Room;
use crate::{broker::Broker, room::RoomCmd};

/// Who held each remote student's lease at the last read.
#[derive(Debug, Default)]
pub(super) struct Holders {
    by_student: HashMap<Arc<str>, Arc<str>>,
    /// When every candidate's lease was last read.
    swept: Option<Instant>,
}

/// What one scan asks of Redis.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Plan {
    /// Students whose holder is known: their lease is read only if the
    /// holder turns out dead.
    pub by_holder: Vec<(Arc<str>, Arc<str>)>,
    /// Students whose lease is read in any case.
    pub read: Vec<Arc<str>>,
}

impl Holders {
    /// Splits this scan's candidates (remote students who look connected):
    /// all are read once per `sweep_every`, else only those whose holder is
    /// unknown. Holders of students no longer candidates are dropped.
    pub(super) fn plan(
        &mut self,
        now: Instant,
        sweep_every: Duration,
        candidates: Vec<Arc<str>>,
    ) -> Plan {
        let sweep = self
            .swept
            .is_none_or(|at| now.duration_since(at) >= sweep_every);
        if sweep {
            self.swept = Some(now);
        }
        let mut kept = HashMap::with_capacity(candidates.len().min(self.by_student.len()));
        let mut plan = Plan::default();
        for sid in candidates {
            match self.by_student.remove(&sid) {
                Some(holder) => {
                    kept.insert(sid.clone(), holder.clone());
                    if sweep {
                        plan.read.push(sid);
                    } else {
                        plan.by_holder.push((sid, holder));
                    }
                }
                None => plan.read.push(sid),
            }
        }
        self.by_student = kept;
        plan
    }

    /// Holders read from Redis.
    pub(super) fn learned(&mut self, holders: Vec<(Arc<str>, Arc<str>)>) {
        self.by_student.extend(holders);
    }

    /// Something says the student may have moved: read their lease again.
    pub(super) fn forget(&mut self, sid: &str) {
        self.by_student.remove(sid);
    }

    /// A student event published by `origin`: if that is not the holder
    /// we know, the student may have moved there.
    pub(super) fn event_from(&mut self, sid: &str, origin: &str) {
        if self
            .by_student
            .get(sid)
            .is_some_and(|holder| **holder != *origin)
        {
            self.by_student.remove(sid);
        }
    }
}

impl Room {
    /// Looks for students whose instance died (every `broker.heartbeat_ttl`
    /// / 3): they still look connected here, but their lease is held by an
    /// instance whose liveness key is gone, or has expired. One instance
    /// claims each and gives them the usual grace period, so the dashboard
    /// shows them `disconnected` within `heartbeat_ttl` + `disconnect_grace`
    /// of the crash, not after the 30 s lease. A student of a gracefully
    /// stopped instance (whose key `retire` deleted) is claimed the same
    /// way, but reconnects within the grace: no event at all.
    pub(super) fn orphan_tick(&mut self) {
        self.step_started = std::time::Instant::now();
        let Broker::Redis(redis) = &self.ctx.broker else {
            return;
        };
        let candidates: Vec<Arc<str>> = self
            .students
            .iter()
            .filter(|(_, st)| st.conn.is_none() && st.grace_timer.is_none() && st.state.connected)
            .map(|(sid, _)| sid.clone())
            .collect();
        let plan = self
            .holders
            .plan(Instant::now(), self.ctx.settings.lease_ttl, candidates);
        if plan == Plan::default() {
            return;
        }
        let ttl = self.ctx.settings.lease_ttl;
        let (redis, exam, inbox) = (redis.clone(), self.exam_id.clone(), self.inbox.clone());
        self.ctx.tracker.spawn(async move {
            let Plan {
                by_holder,
                mut read,
            } = plan;
            let mut instances: Vec<Arc<str>> = by_holder.iter().map(|(_, h)| h.clone()).collect();
            instances.sort_unstable();
            instances.dedup();
            let Ok(alive) = redis.alive(&instances).await else {
                return;
            };
            let dead = |h: &Arc<str>| {
                instances
                    .binary_search(h)
                    .is_ok_and(|i| !alive.get(i).copied().unwrap_or(true))
            };
            read.extend(
                by_holder
                    .into_iter()
                    .filter(|(_, h)| dead(h))
                    .map(|(s, _)| s),
            );
            let Ok(scan) = redis.find_orphans(&exam, &read).await else {
                return;
            };
            if !scan.holders.is_empty()
                && let Some(inbox) = inbox.upgrade()
            {
                let _ = inbox
                    .send(RoomCmd::LeaseHolders {
                        holders: scan.holders,
                    })
                    .await;
            }
            for (sid, seen) in scan.orphans {
                if let Ok(true) = redis
                    .claim_orphan(&exam, &sid, seen.as_deref(), ttl * 2)
                    .await
                    && let Some(inbox) = inbox.upgrade()
                {
                    let _ = inbox.send(RoomCmd::Orphaned { student: sid }).await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<Arc<str>> {
        v.iter().map(|s| Arc::from(*s)).collect()
    }

    fn pair(s: &str, h: &str) -> (Arc<str>, Arc<str>) {
        (s.into(), h.into())
    }

    const SWEEP: Duration = Duration::from_secs(30);

    #[test]
    fn the_first_scan_reads_every_candidate() {
        let mut h = Holders::default();
        let plan = h.plan(Instant::now(), SWEEP, ids(&["s1", "s2"]));
        assert_eq!(plan.read, ids(&["s1", "s2"]));
        assert!(plan.by_holder.is_empty());
    }

    #[test]
    fn a_known_holder_is_checked_by_liveness_alone_until_the_sweep() {
        let mut h = Holders::default();
        let t0 = Instant::now();
        h.plan(t0, SWEEP, ids(&["s1", "s2"]));
        h.learned(vec![pair("s1", "A")]);
        let plan = h.plan(t0 + Duration::from_secs(3), SWEEP, ids(&["s1", "s2"]));
        assert_eq!(plan.by_holder, vec![pair("s1", "A")]);
        assert_eq!(plan.read, ids(&["s2"]), "s2's holder is unknown");
        // Once per lease_ttl every candidate's lease is read again.
        let plan = h.plan(t0 + SWEEP, SWEEP, ids(&["s1", "s2"]));
        assert_eq!(plan.read, ids(&["s1", "s2"]));
        assert!(plan.by_holder.is_empty());
        // The holder is still known after the sweep.
        let plan = h.plan(t0 + SWEEP + Duration::from_secs(1), SWEEP, ids(&["s1"]));
        assert_eq!(plan.by_holder, vec![pair("s1", "A")]);
    }

    #[test]
    fn a_student_who_is_no_longer_a_candidate_is_forgotten() {
        let mut h = Holders::default();
        let t0 = Instant::now();
        h.plan(t0, SWEEP, ids(&["s1"]));
        h.learned(vec![pair("s1", "A")]);
        let plan = h.plan(t0 + Duration::from_secs(1), SWEEP, vec![]);
        assert_eq!(plan, Plan::default());
        let plan = h.plan(t0 + Duration::from_secs(2), SWEEP, ids(&["s1"]));
        assert_eq!(plan.read, ids(&["s1"]));
    }

    #[test]
    fn an_event_from_another_instance_or_a_kick_forgets_the_holder() {
        let mut h = Holders::default();
        let t0 = Instant::now();
        h.plan(t0, SWEEP, ids(&["s1", "s2"]));
        h.learned(vec![pair("s1", "A"), pair("s2", "A")]);
        h.event_from("s1", "A"); // its own holder: still known
        h.event_from("s2", "B"); // moved to B, perhaps
        let plan = h.plan(t0 + Duration::from_secs(1), SWEEP, ids(&["s1", "s2"]));
        assert_eq!(plan.by_holder, vec![pair("s1", "A")]);
        assert_eq!(plan.read, ids(&["s2"]));
        h.forget("s1");
        let plan = h.plan(t0 + Duration::from_secs(2), SWEEP, ids(&["s1"]));
        assert_eq!(plan.read, ids(&["s1"]));
    }
}
