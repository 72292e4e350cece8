//! Events numbered by Redis in batches (src/broker/publish.rs): a burst
//! through two instances keeps one order with no gap and no duplicate, and
//! a batch whose reply was lost is sent again but numbered once.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
    task::JoinHandle,
    time::Instant,
};

use crate::cluster::{Redis, cluster, join_cluster};
use crate::helpers::*;

/// Everything with a seq a teacher received after its join snapshot.
#[derive(Default, Debug)]
struct Stream {
    /// `(seq, type, student, cause, question)`.
    events: Vec<(u64, String, String, String, u64)>,
    /// Snapshots after the first: a re-synchronisation (a gap seen).
    resyncs: usize,
}

impl Stream {
    async fn read_until(&mut self, t: &mut Client, done: impl Fn(&Stream) -> bool) {
        let deadline = Instant::now() + WAIT * 3;
        while !done(self) {
            assert!(Instant::now() < deadline, "stuck at {self:?}");
            let v = t.next_json_within(deadline).await;
            let Some(seq) = v["seq"].as_u64() else {
                continue;
            };
            if v["type"] == "snapshot" {
                self.resyncs += 1;
                continue;
            }
            let s = &v["student"];
            self.events.push((
                seq,
                v["type"].as_str().unwrap_or_default().to_owned(),
                s["student_id"].as_str().unwrap_or_default().to_owned(),
                v["cause"].as_str().unwrap_or_default().to_owned(),
                s["current_question"].as_u64().unwrap_or_default(),
            ));
        }
    }

    /// How many `progress` events carried `student` to `question`.
    fn progress(&self, student: &str, question: u64) -> usize {
        self.events
            .iter()
            .filter(|e| e.2 == student && e.3 == "progress" && e.4 == question)
            .count()
    }

    fn count(&self, cause: &str) -> usize {
        self.events.iter().filter(|e| e.3 == cause).count()
    }

    fn last_seq(&self) -> u64 {
        self.events.last().map_or(0, |e| e.0)
    }

    /// Every seq once, each one more than the one before.
    fn assert_gapless(&self) {
        let seqs: Vec<u64> = self.events.iter().map(|e| e.0).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "one gapless seq: {seqs:?}"
        );
        assert_eq!(self.resyncs, 0, "no gap, so no fresh snapshot");
    }
}

fn progress_ref(question: u64) -> Value {
    json!({"type": "progress", "question": question, "answered": question, "ref": question})
}

#[tokio::test]
async fn a_burst_through_two_instances_reaches_every_teacher_in_one_order_once() {
    const STUDENTS: usize = 20;
    const EVENTS: u64 = 10;
    let Some(redis) = Redis::start() else { return };
    let apps = cluster(&redis, 2, |_| {}).await;
    let mut teachers = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        teachers.push(app.teacher("e1", &format!("t{i}")).await.0);
    }
    let mut students = Vec::new();
    for i in 0..STUDENTS {
        students.push(apps[i % 2].student("e1", &format!("s{i}")).await.0);
    }
    // Every student's events back to back, acks awaited only afterwards:
    // drafts pile up in both publishers while round trips are out.
    for q in 1..=EVENTS {
        for s in students.iter_mut() {
            s.send_json(progress_ref(q)).await;
        }
    }
    for s in students.iter_mut() {
        for q in 1..=EVENTS {
            s.expect_ack(q).await;
        }
    }
    let mut streams = Vec::new();
    for t in teachers.iter_mut() {
        let mut stream = Stream::default();
        stream
            .read_until(t, |s| s.count("progress") == STUDENTS * EVENTS as usize)
            .await;
        stream.assert_gapless();
        streams.push(stream);
    }
    assert_eq!(
        streams[0].events, streams[1].events,
        "both instances saw one order"
    );
    assert_eq!(streams[0].count("connected"), STUDENTS);
    for i in 0..STUDENTS {
        let student = format!("s{i}");
        let questions: Vec<u64> = streams[0]
            .events
            .iter()
            .filter(|e| e.2 == student && e.3 == "progress")
            .map(|e| e.4)
            .collect();
        assert_eq!(
            questions,
            (1..=EVENTS).collect::<Vec<_>>(),
            "{student}'s events once each, in the order sent"
        );
    }
}

#[tokio::test]
async fn a_batch_sent_again_after_its_reply_was_lost_is_numbered_once() {
    let Some(redis) = Redis::start() else { return };
    // Instance A reaches Redis through a proxy that can lose replies;
    // instance B (the teacher's) reaches it directly.
    let proxy = LossyProxy::start(redis.port).await;
    let a = cluster(&redis, 1, |s| s.broker.redis_url = proxy.url().into())
        .await
        .remove(0);
    let b = join_cluster(&redis, &a.db_url, 1..2, |_| {})
        .await
        .remove(0);
    let (mut t, _) = b.teacher("e1", "t1").await;
    let mut students = Vec::new();
    for i in 0..3 {
        students.push(a.student("e1", &format!("s{i}")).await.0);
    }
    let mut stream = Stream::default();
    stream
        .read_until(&mut t, |s| s.count("connected") == 3)
        .await;

    // s0's event goes to Redis, which numbers and publishes it (the teacher
    // on B gets it), but its reply never reaches A: A's connection is then
    // cut, while A's students go on working.
    let lost: &[u8] = br#""current_question":101"#;
    proxy.lose_replies_after(lost);
    students[0].send_json(progress_ref(101)).await;
    students[0].expect_ack(101).await;
    tokio::time::timeout(WAIT, proxy.losing())
        .await
        .expect("A sent the batch");
    stream
        .read_until(&mut t, |s| s.progress("s0", 101) == 1)
        .await;
    proxy.cut();
    eventually("A notices Redis is away", || !a.state.broker.healthy()).await;
    for q in 1..=4 {
        for s in students.iter_mut() {
            s.send_json(progress_ref(q)).await;
            s.expect_ack(q).await;
        }
    }
    proxy.restore();

    stream
        .read_until(&mut t, |s| {
            (1..=4).all(|q| (0..3).all(|i| s.progress(&format!("s{i}"), q) == 1))
        })
        .await;
    assert!(
        proxy.sent(lost) >= 2,
        "A sent the batch whose reply it lost again"
    );
    // Whatever else Redis numbered, the teacher sees it too; nothing twice.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let numbered: u64 = redis::cmd("GET")
        .arg("examwatch:{e1}:seq")
        .query_async(&mut conn)
        .await
        .unwrap();
    stream
        .read_until(&mut t, |s| s.last_seq() >= numbered)
        .await;
    assert_eq!(stream.progress("s0", 101), 1, "numbered once: {stream:?}");
    let mut seen: HashMap<(String, String, u64), usize> = HashMap::new();
    for e in stream.events.iter().filter(|e| e.1 == "student") {
        *seen.entry((e.2.clone(), e.3.clone(), e.4)).or_default() += 1;
    }
    assert!(
        seen.values().all(|&n| n == 1),
        "no student event twice: {stream:?}"
    );
    stream.assert_gapless();
    assert_eq!(stream.last_seq(), numbered);
}

/// A TCP proxy in front of Redis for one instance that can lose replies:
/// once told a marker, from the moment the instance sends bytes containing
/// it, nothing Redis answers reaches the instance (Redis ran the command;
/// the reply is lost), until the proxy is cut and restored.
struct LossyProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _accept: JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    /// True while cut: new connections are dropped.
    down: AtomicBool,
    /// What to wait for, and from where in `upstream` to look for it.
    marker: Mutex<Option<(Vec<u8>, usize)>>,
    losing: AtomicBool,
    lost: Notify,
    /// Everything the instance sent.
    upstream: Mutex<Vec<u8>>,
}

impl LossyProxy {
    async fn start(redis_port: u16) -> LossyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState::default());
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (st, cs) = (state.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if st.down.load(Ordering::SeqCst) {
                    continue; // dropped: Redis is "unreachable"
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                    continue;
                };
                let (mut ci, mut co) = client.into_split();
                let (mut si, mut so) = server.into_split();
                let up = st.clone();
                let upstream = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = ci.read(&mut buf).await {
                        up.saw(&buf[..n]);
                        if so.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let down = st.clone();
                let downstream = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = si.read(&mut buf).await {
                        if down.losing.load(Ordering::SeqCst) {
                            continue; // the reply is lost
                        }
                        if co.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                cs.lock().unwrap().extend([upstream, downstream]);
            }
        });
        LossyProxy {
            addr,
            state,
            conns,
            _accept: accept,
        }
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    fn lose_replies_after(&self, marker: &[u8]) {
        let from = self.state.upstream.lock().unwrap().len();
        *self.state.marker.lock().unwrap() = Some((marker.to_vec(), from));
    }

    /// Resolves once the marker went by (replies are being lost).
    async fn losing(&self) {
        self.state.lost.notified().await
    }

    /// Drops every connection and refuses new ones.
    fn cut(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.state.losing.store(false, Ordering::SeqCst);
        self.state.down.store(false, Ordering::SeqCst);
    }

    /// How many times the instance sent `needle`.
    fn sent(&self, needle: &[u8]) -> usize {
        let upstream = self.state.upstream.lock().unwrap();
        upstream
            .windows(needle.len())
            .filter(|w| w == &needle)
            .count()
    }
}

impl ProxyState {
    /// Records bytes from the instance; starts losing replies if they
    /// complete the marker (before they are forwarded, so no reply to them
    /// can slip through).
    fn saw(&self, bytes: &[u8]) {
        let mut upstream = self.upstream.lock().unwrap();
        upstream.extend_from_slice(bytes);
        let mut marker = self.marker.lock().unwrap();
        let found = marker.as_ref().is_some_and(|(m, from)| {
            upstream[*from..]
                .windows(m.len())
                .any(|w| w == m.as_slice())
        });
        if found {
            *marker = None;
            self.losing.store(true, Ordering::SeqCst);
            self.lost.notify_one();
        }
    }
}

/// How many times Redis ran `command` so far (`INFO commandstats`).
async fn calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A burst of gaps (events numbered elsewhere that never reached this
/// instance) reloads the exam's shared state once at a time, not once per
/// gap: the gaps arrive while Redis is paused, so without the bound every
/// one of them would queue a reload behind the pause. The teacher still
/// gets the truth as a snapshot afterwards.
#[tokio::test]
async fn a_burst_of_gaps_reloads_the_shared_state_one_at_a_time() {
    const GAPS: u64 = 30;
    let Some(redis) = Redis::start() else { return };
    let apps = cluster(&redis, 1, |_| {}).await;
    let (mut t, _) = apps[0].teacher("e1", "t0").await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let before = calls(&mut conn, "hvals").await;
    // One pipeline, run by Redis in one go: every gap is pushed to the
    // instance, then Redis pauses every client (the reloads wait).
    let mut pipe = redis::pipe();
    for i in 0..GAPS {
        let seq = 1000 + 2 * i;
        let event = format!(r#"{{"type":"announcement","seq":{seq},"text":"gap {i}"}}"#);
        let frame = format!("elsewhere\nannouncement\n\n{seq}\n{}\n{event}", event.len());
        pipe.cmd("SPUBLISH")
            .arg("examwatch:exam:{e1}")
            .arg(frame)
            .ignore();
    }
    pipe.cmd("CLIENT").arg("PAUSE").arg(300).arg("ALL").ignore();
    pipe.query_async::<()>(&mut conn).await.unwrap();
    t.next_of_type("snapshot").await;
    let reloads = calls(&mut conn, "hvals").await - before;
    assert!(
        (1..=3).contains(&reloads),
        "one reload, one more for the gaps that came meanwhile (at most one racing the pause); not {reloads} for {GAPS} gaps"
    );
}
