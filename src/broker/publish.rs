//! The publisher: the one task that owns the order in which this
//! instance's drafts reach Redis, and numbers them there in batches.
//!
//! Drafts queued together are grouped per exam, in the order the room
//! handed them over (exams are independent: only each exam's own order
//! matters). Each group is one *batch*: one call of the numbering script,
//! which gives its N events the exam's next N seqs, appends them to the
//! history, records each student's latest state and publishes them as ONE
//! message on the exam's sharded channel (framing: src/broker/frame.rs).
//! The batches of every exam go in one pipeline, one round trip. Nothing
//! waits to fill a batch: a batch holds what queued while the previous
//! round trip was out, so batches grow with the load, exactly when the
//! per-call cost matters (at a few events per exam per round trip each
//! call still numbers them all, with one publish instead of one each).
//!
//! A batch sent and not confirmed (an error, a timeout, a lost reply) is
//! re-sent exactly as it was, under the same id, before anything newer:
//! the script records the last batch id it numbered for this publisher
//! in the exam's hash tag, so a batch Redis ran but whose reply was lost
//! is not numbered twice. While Redis is unreachable drafts wait (bounded
//! by `broker.queue_limit`) and are retried with backoff; `/readyz`
//! reports degraded. Subscriptions and revocations go through the same
//! queue, in order with the events.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{AsyncCommands, Value};
use tokio::sync::{mpsc, oneshot};

use super::redis::{Inbound, exam_channel, instance_channel, revocations_channel};
use super::{Draft, conn::BrokerConn};

/// Numbers, records and publishes one batch of an exam's events
/// atomically. Every key carries the exam's hash tag (one cluster slot),
/// the channel too.
///
/// KEYS: seq, channel, history, students (latest event per student),
/// batches (per publisher, the last batch id numbered).
/// ARGV: publisher, batch id, history length, origin; then six per event:
/// `!` or empty (delivered at the origin already), kind, student (or
/// empty), floor, and the event's text before its seq and after it.
///
/// An event's floor is the latest seq its room had when it was decided:
/// its seq is above it even if Redis lost its data, exactly as if each
/// event were numbered alone (`INCRBY` for the batch, then a `SET` only
/// when a floor moved the count). The frame is built in the same pass as
/// the history entries (frame.rs describes it). Returns the last seq
/// given, or 0 for a batch numbered already (re-sent after its reply was
/// lost).
pub(super) const PUBLISH_LUA: &str = r#"
local id = tonumber(ARGV[2])
if id <= tonumber(redis.call('HGET', KEYS[5], ARGV[1]) or 0) then
  return 0
end
redis.call('HSET', KEYS[5], ARGV[1], id)
local n = (#ARGV - 4) / 6
local last = redis.call('INCRBY', KEYS[1], n)
local seq = last - n
local frame, f = {ARGV[4], '\n'}, 2
local history, students, s = {}, {}, 0
for i = 1, n do
  local a = 6 * i - 1
  seq = seq + 1
  local floor = tonumber(ARGV[a + 3])
  if seq <= floor then
    seq = floor + 1
  end
  local event = ARGV[a + 4] .. seq .. ARGV[a + 5]
  history[i] = seq .. '\n' .. event
  frame[f + 1] = ARGV[a] .. ARGV[a + 1] .. '\n' .. ARGV[a + 2] .. '\n' .. seq .. '\n' .. #event .. '\n'
  frame[f + 2] = event
  f = f + 2
  if ARGV[a + 1] == 'student' and ARGV[a + 2] ~= '' then
    students[s + 1] = ARGV[a + 2]
    students[s + 2] = event
    s = s + 2
  end
end
if seq ~= last then
  redis.call('SET', KEYS[1], seq)
end
redis.call('SPUBLISH', KEYS[2], table.concat(frame))
redis.call('RPUSH', KEYS[3], unpack(history))
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[3]), -1)
if s > 0 then
  redis.call('HSET', KEYS[4], unpack(students))
end
-- An exam's keys live a day past its last event (the database keeps all).
redis.call('PEXPIRE', KEYS[1], 86400000)
redis.call('PEXPIRE', KEYS[3], 86400000)
redis.call('PEXPIRE', KEYS[4], 86400000)
redis.call('PEXPIRE', KEYS[5], 86400000)
return seq
"#;

/// The most events in one batch (one script call, one message): bounds the
/// script's arguments, the Lua stack its `unpack` uses, and the message
/// every subscriber receives.
const BATCH_EVENTS: usize = 256;

/// The most bytes of events in one batch (a batch is closed once past it).
const BATCH_BYTES: usize = 256 * 1024;

/// The most drafts in one round trip, all exams together: bounds the
/// pipeline's size, hence how long its reply takes.
const PIPELINE_EVENTS: usize = 1024;

pub(super) enum Op {
    /// A draft, and when it was queued.
    Publish(Draft, Instant),
    Subscribe(Arc<str>, oneshot::Sender<()>),
    Unsubscribe(Arc<str>),
    /// The revocations channel, once at start-up.
    SubscribeRevocations,
    /// This instance's own channel (forwarded HTTP batches and their
    /// answers, src/sse/forward.rs), once at start-up.
    SubscribeInstance,
    /// A revocation's wire JSON, for every instance.
    Revoke(String),
}

/// An exam's drafts numbered by one script call.
struct Batch {
    exam: Arc<str>,
    /// Increasing in the order batches are formed, hence per exam too: the
    /// script numbers a batch only if its id is above the last it numbered
    /// for this publisher.
    id: u64,
    drafts: Vec<Queued>,
    bytes: usize,
}

/// A draft in a batch.
struct Queued {
    draft: Draft,
    /// Where the `0` of its placeholder seq is in its body ([`seq_at`]).
    seq_at: usize,
    queued: Instant,
}

impl Batch {
    fn full(&self) -> bool {
        self.drafts.len() >= BATCH_EVENTS || self.bytes >= BATCH_BYTES
    }
}

/// The batches in flight, and how new ones are named.
struct Batches {
    /// This publisher's field in each exam's `batches` hash: the instance
    /// and a random word drawn at start-up, so an instance restarted under
    /// the same id does not find its first batches numbered already by its
    /// previous life.
    publisher: String,
    next_id: u64,
    /// Sent, not yet confirmed: re-sent as they are (same ids, same drafts)
    /// until Redis confirms them. Empty when nothing is in flight.
    sent: Vec<Batch>,
}

impl Batches {
    fn new(instance: &str) -> Self {
        let word = getrandom::u64().unwrap_or_else(|_| {
            // No entropy source: the time of day still differs between
            // two lives of one instance.
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Batches {
            publisher: format!("{instance}/{word:016x}"),
            next_id: 1,
            sent: Vec::new(),
        }
    }

    /// Moves the drafts at the front of the queue (up to
    /// [`PIPELINE_EVENTS`]) into batches, one open batch per exam, each
    /// exam's drafts in queue order. Returns how many drafts were dropped
    /// instead (a body without a placeholder seq).
    fn form(&mut self, queue: &mut VecDeque<Op>) -> usize {
        let mut open: HashMap<Arc<str>, usize> = HashMap::new();
        let (mut taken, mut dropped) = (0, 0);
        while taken < PIPELINE_EVENTS && matches!(queue.front(), Some(Op::Publish(..))) {
            let Some(Op::Publish(draft, queued)) = queue.pop_front() else {
                break;
            };
            taken += 1;
            let Some(seq_at) = seq_at(&draft.body) else {
                // Every event a room publishes has a seq: this is a bug, and
                // a frame without one would be read as seq 0.
                tracing::error!(
                    kind = draft.kind,
                    "draft without a seq placeholder; dropped"
                );
                dropped += 1;
                continue;
            };
            let i = match open.get(&draft.exam) {
                Some(&i) if !self.sent[i].full() => i,
                _ => {
                    self.sent.push(Batch {
                        exam: draft.exam.clone(),
                        id: self.next_id,
                        drafts: Vec::new(),
                        bytes: 0,
                    });
                    self.next_id += 1;
                    let i = self.sent.len() - 1;
                    open.insert(draft.exam.clone(), i);
                    i
                }
            };
            let batch = &mut self.sent[i];
            batch.bytes += draft.body.len();
            batch.drafts.push(Queued {
                draft,
                seq_at,
                queued,
            });
        }
        dropped
    }

    fn drafts(&self) -> usize {
        self.sent.iter().map(|b| b.drafts.len()).sum()
    }
}

/// Where the `0` of a draft's placeholder seq is (`"seq":0` followed by
/// `,` or `}`, the first one): the script puts the real seq in its place.
fn seq_at(body: &str) -> Option<usize> {
    const PLACEHOLDER: &str = r#""seq":0"#;
    let mut from = 0;
    while let Some(found) = body[from..].find(PLACEHOLDER) {
        let end = from + found + PLACEHOLDER.len();
        if matches!(body.as_bytes().get(end), Some(b',' | b'}')) {
            return Some(end - 1);
        }
        from = end;
    }
    None
}

pub(super) struct Publisher {
    pub(super) conn: BrokerConn,
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
        let mut batches = Batches::new(&self.instance);
        let mut backoff = Duration::from_millis(50);
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        loop {
            if queue.is_empty() && batches.sent.is_empty() {
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
                _ if !batches.sent.is_empty() => self.publish(&mut batches, &mut queue).await,
                Some(Op::Publish(..)) => self.publish(&mut batches, &mut queue).await,
                Some(Op::Subscribe(exam, _)) => {
                    let channel = exam_channel(&self.prefix, exam);
                    let ok = self.conn.ssubscribe(&channel).await.is_ok();
                    if ok && let Some(Op::Subscribe(_, done)) = queue.pop_front() {
                        let _ = done.send(());
                    }
                    ok
                }
                Some(Op::SubscribeRevocations) => {
                    let channel = revocations_channel(&self.prefix);
                    let ok = self.conn.subscribe(&channel).await.is_ok();
                    if ok {
                        queue.pop_front();
                    }
                    ok
                }
                Some(Op::SubscribeInstance) => {
                    let channel = instance_channel(&self.prefix, &self.instance);
                    let ok = self.conn.subscribe(&channel).await.is_ok();
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
                    let channel = exam_channel(&self.prefix, exam);
                    let _ = self.conn.sunsubscribe(&channel).await;
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

    /// Sends the batches in flight, or if none, the drafts at the front of
    /// the queue as new batches, in one pipeline; true once Redis confirmed
    /// them all.
    async fn publish(&mut self, batches: &mut Batches, queue: &mut VecDeque<Op>) -> bool {
        if batches.sent.is_empty() {
            let dropped = batches.form(queue);
            self.pending.fetch_sub(dropped, Ordering::Relaxed);
            if batches.sent.is_empty() {
                return true;
            }
        }
        let mut result = self.send(batches).await;
        if let Err(e) = &result
            && self.script_loaded
            && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
        {
            // A node that never ran the script: the exam's slot moved to
            // another primary, or a replica took over. Not an outage: load
            // it there and send again at once (batches Redis numbered in
            // the first try are recognised by their ids and not numbered
            // twice). Treating it as one would number events provisionally
            // and cost every teacher a snapshot at each resharding.
            tracing::debug!("numbering script missing on a node; loading it");
            self.script_loaded = false;
            result = self.send(batches).await;
        }
        match result {
            Ok(()) => {
                self.script_loaded = true;
                let n = batches.drafts();
                for batch in batches.sent.drain(..) {
                    for q in batch.drafts {
                        self.metrics.publish_seconds.record(q.queued.elapsed());
                    }
                }
                self.pending.fetch_sub(n, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.script_loaded = false;
                if self.healthy.load(Ordering::Relaxed) {
                    tracing::error!(error = %e, waiting = batches.drafts(), "cannot publish to Redis; retrying");
                }
                false
            }
        }
    }

    /// One pipeline: the script (unless loaded since the last error), then
    /// one numbering call per batch in flight.
    async fn send(&mut self, batches: &Batches) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        if !self.script_loaded {
            pipe.cmd("SCRIPT").arg("LOAD").arg(PUBLISH_LUA).ignore();
        }
        let p = &self.prefix;
        for batch in &batches.sent {
            let exam = &batch.exam;
            pipe.cmd("EVALSHA")
                .arg(&self.script_sha)
                .arg(5)
                .arg(format!("{p}:{{{exam}}}:seq"))
                .arg(exam_channel(p, exam))
                .arg(format!("{p}:{{{exam}}}:history"))
                .arg(format!("{p}:{{{exam}}}:students"))
                .arg(format!("{p}:{{{exam}}}:batches"))
                .arg(&batches.publisher)
                .arg(batch.id)
                .arg(self.history)
                .arg(&*self.instance);
            for Queued {
                draft: d, seq_at, ..
            } in &batch.drafts
            {
                // The placeholder's `0` is ASCII: both cuts are on char
                // boundaries.
                let (before, after) = (&d.body[..*seq_at], &d.body[*seq_at + 1..]);
                pipe.arg(if d.delivered_locally { "!" } else { "" })
                    .arg(d.kind)
                    .arg(d.student.as_deref().unwrap_or(""))
                    .arg(d.floor)
                    .arg(before)
                    .arg(after);
            }
            pipe.ignore();
        }
        pipe.query_async::<()>(&mut self.conn).await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(exam: &str, n: usize) -> Op {
        Op::Publish(
            Draft {
                exam: exam.into(),
                body: format!(r#"{{"type":"student","seq":0,"n":{n}}}"#),
                kind: "student",
                student: None,
                floor: n as u64,
                delivered_locally: false,
            },
            Instant::now(),
        )
    }

    /// `(exam, id, the drafts' n)` of each batch formed.
    fn formed(b: &Batches) -> Vec<(String, u64, Vec<u64>)> {
        b.sent
            .iter()
            .map(|batch| {
                let ns = batch.drafts.iter().map(|q| q.draft.floor).collect();
                (batch.exam.to_string(), batch.id, ns)
            })
            .collect()
    }

    #[test]
    fn drafts_are_grouped_per_exam_in_their_order_up_to_the_next_other_op() {
        let mut queue: VecDeque<Op> = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("a", 5)]
            .into_iter()
            .map(|(e, n)| draft(e, n))
            .collect();
        queue.push_back(Op::Revoke("r".into()));
        queue.push_back(draft("a", 6));
        let mut batches = Batches::new("node-a");
        assert_eq!(batches.form(&mut queue), 0);
        assert_eq!(
            formed(&batches),
            [
                ("a".into(), 1, vec![1, 3, 5]),
                ("b".into(), 2, vec![2]),
                ("c".into(), 3, vec![4]),
            ]
        );
        // What follows a non-publish op waits for it.
        assert!(matches!(queue.front(), Some(Op::Revoke(_))));
        assert_eq!(queue.len(), 2);
        assert_eq!(batches.drafts(), 5);
    }

    #[test]
    fn batches_and_round_trips_are_bounded_and_ids_keep_increasing() {
        let mut queue: VecDeque<Op> = (0..PIPELINE_EVENTS + 10)
            .map(|n| draft(if n < 300 { "a" } else { "b" }, n))
            .collect();
        let mut batches = Batches::new("node-a");
        batches.form(&mut queue);
        assert_eq!(queue.len(), 10, "one round trip takes PIPELINE_EVENTS");
        let sizes: Vec<(String, u64, usize)> = formed(&batches)
            .into_iter()
            .map(|(e, id, ns)| (e, id, ns.len()))
            .collect();
        assert_eq!(
            sizes,
            [
                ("a".into(), 1, BATCH_EVENTS),
                ("a".into(), 2, 300 - BATCH_EVENTS),
                ("b".into(), 3, BATCH_EVENTS),
                ("b".into(), 4, BATCH_EVENTS),
                ("b".into(), 5, PIPELINE_EVENTS - 300 - 2 * BATCH_EVENTS),
            ]
        );
        // Each exam's drafts stay in order across its batches.
        let a: Vec<u64> = formed(&batches)
            .into_iter()
            .filter(|(e, ..)| e == "a")
            .flat_map(|(.., ns)| ns)
            .collect();
        assert_eq!(a, (0..300).collect::<Vec<u64>>());
        batches.sent.clear();
        batches.form(&mut queue);
        assert_eq!(formed(&batches)[0].1, 6, "ids never repeat");
    }

    #[test]
    fn a_draft_without_a_placeholder_seq_is_dropped_not_sent() {
        let mut queue = VecDeque::from([draft("a", 1), draft("a", 2)]);
        if let Some(Op::Publish(d, _)) = queue.front_mut() {
            d.body = r#"{"type":"student"}"#.into();
        }
        let mut batches = Batches::new("node-a");
        assert_eq!(batches.form(&mut queue), 1);
        assert_eq!(formed(&batches), [("a".into(), 1, vec![2])]);
    }

    #[test]
    fn the_placeholder_is_the_first_seq_zero_that_ends_a_value() {
        assert_eq!(seq_at(r#"{"type":"x","seq":0,"y":1}"#), Some(18));
        assert_eq!(seq_at(r#"{"type":"x","y":1,"seq":0}"#), Some(24));
        assert_eq!(seq_at(r#"{"a":{"seq":05},"seq":0,"b":2}"#), Some(22));
        assert_eq!(seq_at(r#"{"type":"x","seq":7}"#), None);
        assert_eq!(seq_at(""), None);
    }

    #[test]
    fn two_lives_of_one_instance_publish_under_different_names() {
        let (a, b) = (Batches::new("node-a"), Batches::new("node-a"));
        assert!(a.publisher.starts_with("node-a/"));
        assert_ne!(a.publisher, b.publisher);
    }
}
