//! The publisher: the one task that owns the order in which this
//! instance's drafts reach Redis. Drafts are pipelined, each through the
//! numbering script, so the order rooms handed them over is the order they
//! are numbered and published in. While Redis is unreachable drafts wait
//! (bounded) and are retried with backoff; `/readyz` reports degraded.
//! Subscriptions and revocations go through the same queue, in order with
//! the events.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use redis::{AsyncCommands, Value, aio::ConnectionManager};
use tokio::sync::{mpsc, oneshot};

use super::Draft;
use super::redis::{Inbound, revocations_channel};

/// Numbers, records and publishes one event atomically. KEYS[5] is the
/// draft's id: a pipeline re-sent after a timeout (that Redis had in fact
/// run) does not number the same draft twice.
pub(super) const PUBLISH_LUA: &str = r#"
if not redis.call('SET', KEYS[5], '1', 'NX', 'PX', 60000) then
  return 0
end
local seq = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if seq <= floor then
  seq = floor + 1
  redis.call('SET', KEYS[1], seq)
end
local event = string.gsub(ARGV[2], '"seq":0,', '"seq":' .. seq .. ',', 1)
redis.call('PUBLISH', KEYS[2], ARGV[3] .. '\n' .. ARGV[4] .. '\n' .. ARGV[5] .. '\n' .. seq .. '\n' .. event)
redis.call('RPUSH', KEYS[3], seq .. '\n' .. event)
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[6]), -1)
if ARGV[4] == 'student' and ARGV[5] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[5], event)
end
-- An exam's keys live a day past its last event (the database keeps all).
redis.call('PEXPIRE', KEYS[1], 86400000)
redis.call('PEXPIRE', KEYS[3], 86400000)
redis.call('PEXPIRE', KEYS[4], 86400000)
return seq
"#;

pub(super) enum Op {
    /// A draft, its id (unique per instance), and when it was queued.
    Publish(Draft, u64, std::time::Instant),
    Subscribe(Arc<str>, oneshot::Sender<()>),
    Unsubscribe(Arc<str>),
    /// The revocations channel, once at start-up.
    SubscribeRevocations,
    /// A revocation's wire JSON, for every instance.
    Revoke(String),
}

pub(super) struct Publisher {
    pub(super) conn: ConnectionManager,
    pub(super) rx: mpsc::UnboundedReceiver<Op>,
    pub(super) prefix: String,
    pub(super) instance: Arc<str>,
    pub(super) history: usize,
    pub(super) healthy: Arc<AtomicBool>,
    pub(super) pending: Arc<AtomicUsize>,
    pub(super) overflowed: Arc<AtomicBool>,
    pub(super) needs_resync: Arc<AtomicBool>,
    pub(super) inbound: mpsc::UnboundedSender<Inbound>,
    /// The numbering script runs by its SHA1 (`EVALSHA`): sending its text
    /// with every event made Redis hash a kilobyte per event.
    pub(super) script_sha: String,
    /// Loaded since the last error (a restarted Redis forgets scripts; any
    /// failed pipeline, NOSCRIPT included, loads it again before retrying).
    pub(super) script_loaded: bool,
    pub(super) metrics: crate::metrics::BrokerMetrics,
}

impl Publisher {
    pub(super) async fn run(mut self) {
        let mut queue: VecDeque<Op> = VecDeque::new();
        let mut backoff = Duration::from_millis(50);
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        loop {
            if queue.is_empty() {
                tokio::select! {
                    op = self.rx.recv() => match op {
                        Some(op) => queue.push_back(op),
                        None => return,
                    },
                    // A regular PING notices a lost connection (and brings
                    // the subscriptions back) even when nothing is published.
                    _ = ping.tick() => {
                        let ok = redis::cmd("PING").query_async::<Value>(&mut self.conn).await.is_ok();
                        self.report(ok);
                        continue;
                    }
                }
            }
            while let Ok(op) = self.rx.try_recv() {
                queue.push_back(op);
            }
            let ok = match queue.front() {
                Some(Op::Publish(..)) => self.publish_batch(&mut queue).await,
                Some(Op::Subscribe(exam, _)) => {
                    let channel = format!("{}:exam:{exam}", self.prefix);
                    let ok = self.conn.subscribe(channel).await.is_ok();
                    if ok && let Some(Op::Subscribe(_, done)) = queue.pop_front() {
                        let _ = done.send(());
                    }
                    ok
                }
                Some(Op::SubscribeRevocations) => {
                    let channel = revocations_channel(&self.prefix);
                    let ok = self.conn.subscribe(channel).await.is_ok();
                    if ok {
                        queue.pop_front();
                    }
                    ok
                }
                Some(Op::Revoke(wire)) => {
                    let channel = revocations_channel(&self.prefix);
                    let sent: Result<i64, _> = self.conn.publish(channel, wire.as_str()).await;
                    if sent.is_ok() {
                        queue.pop_front();
                    }
                    sent.is_ok()
                }
                Some(Op::Unsubscribe(exam)) => {
                    let channel = format!("{}:exam:{exam}", self.prefix);
                    let _ = self.conn.unsubscribe(channel).await;
                    queue.pop_front();
                    true
                }
                None => true,
            };
            self.report(ok);
            if ok {
                backoff = Duration::from_millis(50);
            } else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }

    /// Publishes the drafts at the front of the queue in one pipeline.
    async fn publish_batch(&mut self, queue: &mut VecDeque<Op>) -> bool {
        let mut pipe = redis::pipe();
        if !self.script_loaded {
            pipe.cmd("SCRIPT").arg("LOAD").arg(PUBLISH_LUA).ignore();
        }
        let mut n = 0;
        for op in queue.iter().take(256) {
            let Op::Publish(d, id, _) = op else { break };
            let exam = &d.exam;
            let p = &self.prefix;
            pipe.cmd("EVALSHA")
                .arg(&self.script_sha)
                .arg(5)
                .arg(format!("{p}:{{{exam}}}:seq"))
                .arg(format!("{p}:exam:{exam}"))
                .arg(format!("{p}:{{{exam}}}:history"))
                .arg(format!("{p}:{{{exam}}}:students"))
                .arg(format!("{p}:{{{exam}}}:draft:{}:{id}", self.instance))
                .arg(d.floor)
                .arg(&d.body)
                .arg(if d.delivered_locally {
                    format!("{}!", self.instance)
                } else {
                    self.instance.to_string()
                })
                .arg(d.kind)
                .arg(d.student.as_deref().unwrap_or(""))
                .arg(self.history)
                .ignore();
            n += 1;
        }
        match pipe.query_async::<()>(&mut self.conn).await {
            Ok(()) => {
                self.script_loaded = true;
                for op in queue.drain(..n) {
                    if let Op::Publish(_, _, queued) = op {
                        self.metrics.publish_seconds.record(queued.elapsed());
                    }
                }
                self.pending.fetch_sub(n, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.script_loaded = false;
                if self.healthy.load(Ordering::Relaxed) {
                    tracing::error!(error = %e, waiting = n, "cannot publish to Redis; retrying");
                }
                false
            }
        }
    }

    fn report(&self, ok: bool) {
        let was = self.healthy.swap(ok, Ordering::Relaxed);
        if !ok {
            self.needs_resync.store(true, Ordering::Relaxed);
            return;
        }
        if !was {
            self.metrics.reconnects.increment(1);
            tracing::info!("Redis reachable again");
        }
        let resync = self.needs_resync.swap(false, Ordering::Relaxed)
            | self.overflowed.swap(false, Ordering::Relaxed);
        if resync {
            let _ = self.inbound.send(Inbound::Resync);
        }
    }
}
