//! Finding the students of a dead instance (the rooms' orphan scans,
//! src/room/actor/orphans.rs), cheaply enough for a national exam.
//!
//! A student attached to another instance is an orphan when their lease
//! expired, or when the instance holding it is gone (its liveness key,
//! `{prefix}:instance:{id}`, expired or was deleted by a graceful stop).
//! Every room of every instance looks every `broker.heartbeat_ttl` / 3,
//! so at 1,000 exams on 6 instances that is 1,800 scans a second: reading
//! every remote student's lease each time (one `MGET` of ~80 keys per
//! scan) was most of Redis's CPU in the national benchmark
//! (docs/bench/national.md, 2026-12-04). Instead:
//!
//! - **Liveness is read per instance, not per room**: [`Liveness`] keeps
//!   each instance's answer for a short while (`heartbeat_ttl` / 6), and
//!   every room of this instance asks it; so a fleet of N instances costs
//!   each of them about N `EXISTS` per freshness window, whatever the
//!   number of rooms.
//! - **A lease is read only when its holder is unknown or dead** (the room
//!   remembers each remote student's holder from the last read, and
//!   forgets it when anything says the student moved), plus a full read
//!   of every candidate once per `exam.lease_ttl`, for a lease that
//!   expired under a live holder.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::RedisBroker;
use super::redis::holder_instance;

/// What one read of leases found.
#[derive(Debug, Default)]
pub struct LeaseScan {
    /// Students whose session is on no live instance, each with the lease
    /// value seen (`None`: none), for [`RedisBroker::claim_orphan`].
    pub orphans: Vec<(Arc<str>, Option<String>)>,
    /// The others that have a lease: the (live) instance holding it.
    pub holders: Vec<(Arc<str>, Arc<str>)>,
}

/// Instances' liveness as last read, shared by this instance's rooms.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    /// Instance id → (alive, when read). Locked across the read of the
    /// stale ones, so rooms scanning at the same moment read once.
    known: tokio::sync::Mutex<HashMap<Arc<str>, (bool, Instant)>>,
}

/// Entries unread for this many freshness windows are dropped (instances
/// gone for good, or no longer holding anything here).
const FORGET_AFTER: u32 = 20;

impl RedisBroker {
    /// How long an instance's liveness, once read, is taken as current.
    fn liveness_fresh(&self) -> Duration {
        (self.heartbeat_ttl / 6).max(Duration::from_millis(20))
    }

    /// Whether each of these instances is alive (its liveness key exists;
    /// a draining instance is alive), from the shared cache where fresh.
    pub async fn alive(&self, instances: &[Arc<str>]) -> Result<Vec<bool>, redis::RedisError> {
        if instances.is_empty() {
            return Ok(Vec::new());
        }
        let fresh = self.liveness_fresh();
        let now = Instant::now();
        let mut known = self.peer_liveness.known.lock().await;
        known.retain(|_, (_, at)| now.duration_since(*at) < fresh * FORGET_AFTER);
        let mut stale: Vec<&Arc<str>> = instances
            .iter()
            .filter(|i| {
                known
                    .get(*i)
                    .is_none_or(|(_, at)| now.duration_since(*at) >= fresh)
            })
            .collect();
        stale.sort_unstable();
        stale.dedup();
        if !stale.is_empty() {
            let mut pipe = redis::pipe();
            for i in &stale {
                pipe.exists(self.liveness_key(i));
            }
            let mut conn = self.conn.clone();
            self.scan_reads.1.increment(stale.len() as u64);
            let answers: Vec<bool> = pipe.query_async(&mut conn).await?;
            let read_at = Instant::now();
            for (i, alive) in stale.into_iter().zip(answers) {
                known.insert(i.clone(), (alive, read_at));
            }
        }
        // Every one was read above if it was not known: unknown is alive
        // only if Redis answered fewer than asked (never: then an error).
        Ok(instances
            .iter()
            .map(|i| known.get(i).is_none_or(|(alive, _)| *alive))
            .collect())
    }

    /// Reads these students' leases (who look connected, with no socket or
    /// grace period here): which are orphans, and who holds the others.
    /// One `MGET`, and [`RedisBroker::alive`] for the holders.
    pub async fn find_orphans(
        &self,
        exam: &str,
        students: &[Arc<str>],
    ) -> Result<LeaseScan, redis::RedisError> {
        if students.is_empty() {
            return Ok(LeaseScan::default());
        }
        let mut conn = self.conn.clone();
        let keys: Vec<String> = students.iter().map(|s| self.lease_key(exam, s)).collect();
        self.scan_reads.0.increment(keys.len() as u64);
        // `MGET` of one key returns a single value: ask with a slice, the
        // crate then always answers with a list.
        let leases: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let mut holders: Vec<Arc<str>> = leases
            .iter()
            .flatten()
            .map(|l| Arc::from(holder_instance(l)))
            .collect();
        holders.sort_unstable();
        holders.dedup();
        let alive = self.alive(&holders).await?;
        let holder_of = |l: &str| {
            let h = holder_instance(l);
            holders
                .iter()
                .position(|x| &**x == h)
                .filter(|i| alive.get(*i).copied().unwrap_or(true))
                .map(|i| holders[i].clone())
        };
        let mut scan = LeaseScan::default();
        for (student, lease) in students.iter().cloned().zip(leases) {
            match lease.as_deref().map(holder_of) {
                Some(Some(holder)) => scan.holders.push((student, holder)),
                _ => scan.orphans.push((student, lease)),
            }
        }
        Ok(scan)
    }

    /// Claims a student whose session is on no live instance (see
    /// `find_orphans`); true for the one instance that wins. Atomic: it
    /// wins only if the lease is still `seen` (the student did not come
    /// back elsewhere meanwhile) and nobody claimed that same lease yet.
    /// The claim remembers the lease it was for, so a later lease of the
    /// same student (on another instance that dies too) can be claimed;
    /// an expired lease is claimable only if no claim is recorded at all
    /// (the claimed lease may expire during the grace period started for
    /// it: that is not a second orphan).
    pub async fn claim_orphan(
        &self,
        exam: &str,
        student: &str,
        seen: Option<&str>,
        ttl: Duration,
    ) -> Result<bool, redis::RedisError> {
        let mut conn = self.conn.clone();
        let won: i64 = CLAIM
            .key(self.lease_key(exam, student))
            .key(format!("{}:{{{exam}}}:reap:{student}", self.prefix))
            .arg(seen.unwrap_or(""))
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(won == 1)
    }
}

static CLAIM: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"local cur = redis.call('GET', KEYS[1]) or ''
          if cur ~= ARGV[1] then return 0 end
          local reaped = redis.call('GET', KEYS[2])
          if reaped and (reaped == ARGV[1] or ARGV[1] == '') then return 0 end
          redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
          return 1",
    )
});
