//! The fleet's connection counts and the operators' shed requests, in
//! Redis (src/rebalance uses them).
//!
//! - **Counts**: one hash, `{prefix}:fleet`, one field per instance, whose
//!   value is that instance's [`Entry`] (JSON) with the time it was
//!   written. One key, hence one slot: it works the same on one server
//!   and on a Redis Cluster, and one `HGETALL` reads the whole fleet. A
//!   field cannot expire by itself (not before Redis 7.4), so a reader
//!   ignores an entry older than the expiry it is given (a dead instance
//!   drops out of the average), and the writer deletes fields far older
//!   than that, so the hash does not keep every instance that ever ran.
//!   The times are the instances' wall clocks: they must agree to well
//!   within the expiry (NTP; docs/DEPLOY.md).
//! - **Shed requests** (`POST /v1/admin/instances/{id}/drain` answered by
//!   another instance): a key per target instance, `{prefix}:shed:{id}`,
//!   holding the share; the target takes it with `GETDEL` at its next
//!   count (so within `cluster.rebalance_interval`), and it expires if the
//!   target never comes to take it.

use std::time::Duration;

use redis::AsyncCommands;

use super::RedisBroker;
use crate::rebalance::Counts;

/// What an instance publishes about itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub counts: Counts,
    /// In a rolling restart: its count is going to zero, and it takes no
    /// new connections; it is left out of the average.
    #[serde(default)]
    pub draining: bool,
    /// When it was written (Unix ms, the writer's clock).
    pub at: i64,
}

/// Entries this many expiries old are deleted by the next writer.
const FORGET_AFTER: i64 = 10;

impl RedisBroker {
    fn fleet_key(&self) -> String {
        format!("{}:fleet", self.prefix)
    }

    fn shed_key(&self, instance: &str) -> String {
        format!("{}:shed:{instance}", self.prefix)
    }

    /// Writes this instance's entry, and forgets the entries of instances
    /// gone for long (see the module docs).
    pub async fn publish_counts(
        &self,
        entry: &Entry,
        expiry: Duration,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let value = serde_json::to_string(entry).unwrap_or_default();
        let key = self.fleet_key();
        let _: i64 = conn.hset(&key, &*self.instance, value).await?;
        let all = self.read_fleet(&mut conn).await?;
        let forget = expiry.as_millis() as i64 * FORGET_AFTER;
        let stale: Vec<&String> = all
            .iter()
            .filter(|(_, e)| e.as_ref().is_none_or(|e| entry.at - e.at > forget))
            .map(|(id, _)| id)
            .collect();
        if !stale.is_empty() {
            let _: i64 = conn.hdel(&key, stale).await?;
        }
        Ok(())
    }

    /// Every instance whose entry is younger than `expiry` at `now` (Unix
    /// ms), this one included, sorted by id.
    pub async fn fleet(
        &self,
        expiry: Duration,
        now: i64,
    ) -> Result<Vec<(String, Entry)>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let mut live: Vec<(String, Entry)> = self
            .read_fleet(&mut conn)
            .await?
            .into_iter()
            .filter_map(|(id, e)| Some((id, e?)))
            .filter(|(_, e)| now - e.at <= expiry.as_millis() as i64)
            .collect();
        live.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(live)
    }

    async fn read_fleet(
        &self,
        conn: &mut super::conn::BrokerConn,
    ) -> Result<Vec<(String, Option<Entry>)>, redis::RedisError> {
        let raw: std::collections::HashMap<String, String> = conn.hgetall(self.fleet_key()).await?;
        Ok(raw
            .into_iter()
            .map(|(id, v)| (id, serde_json::from_str(&v).ok()))
            .collect())
    }

    /// Asks `instance` to shed `share` of its connections (it takes the
    /// request within its `cluster.rebalance_interval`; the request lapses
    /// after `ttl`).
    pub async fn request_shed(
        &self,
        instance: &str,
        share: f64,
        ttl: Duration,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        conn.pset_ex(self.shed_key(instance), share.to_string(), ms)
            .await
    }

    /// Takes the shed request made for this instance, if there is one.
    pub async fn take_shed_request(&self) -> Result<Option<f64>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let value: Option<String> = redis::cmd("GETDEL")
            .arg(self.shed_key(&self.instance))
            .query_async(&mut conn)
            .await?;
        Ok(value
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| *s > 0.0 && *s <= 1.0))
    }
}
