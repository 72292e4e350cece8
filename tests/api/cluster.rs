//! Several instances sharing exams through a real Redis (a `redis-server`
//! this harness starts on a free port, so it can stop and restart it).

use std::{collections::HashMap, io::Write, process::Child, time::Duration};

use tokio::time::Instant;

use examwatch::auth::Role;
use serde_json::{Value, json};

use crate::helpers::*;

/// Runs a case on one Redis server and on a Redis Cluster (3 primaries,
/// 3 replicas): `NAME::single` and `NAME::cluster`.
macro_rules! on_single_and_cluster {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn single() {
                let Some(redis) = super::Redis::start() else {
                    return;
                };
                super::$name(&redis).await;
            }

            #[tokio::test]
            async fn cluster() {
                let Some(redis) = crate::helpers::RedisCluster::start() else {
                    return;
                };
                super::$name(&redis).await;
            }
        }
    };
}

/// A private redis-server on a free port.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts one, or `None` (with a notice) when redis-server is missing
    /// outside CI. redis-server cannot bind port 0 and report it, so the
    /// port is a free one found by binding; another process may take it
    /// before redis-server binds, so a start that fails (or finds some other
    /// server there) is retried on a fresh port.
    pub fn start() -> Option<Redis> {
        let mut last = None;
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut redis = Redis { port, child: None };
            match redis.spawn() {
                Ok(()) => return Some(redis),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    missing(
                        Prerequisite::Redis,
                        &format!("cannot start redis-server: {e}"),
                    );
                    return None;
                }
                Err(e) => last = Some(e),
            }
        }
        panic!("redis-server did not start on five free ports: {last:?}");
    }

    /// Runs redis-server on `self.port` and waits until it answers there
    /// as itself (its `process_id`), not some other server on that port.
    fn spawn(&mut self) -> std::io::Result<()> {
        let mut child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let pid = child.id();
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "redis-server on port {} exited: {status}",
                    self.port
                )));
            }
            match redis_pid(self.port) {
                Some(p) if p == pid => {
                    self.child = Some(child);
                    return Ok(());
                }
                Some(other) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(std::io::Error::other(format!(
                        "port {} is held by another redis-server (pid {other})",
                        self.port
                    )));
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(std::io::Error::other("redis-server did not start"))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops it (its data is gone: it keeps nothing on disk).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (the instances' `redis_url`).
    pub fn start_again(&mut self) {
        self.spawn().expect("redis-server restarts on its port");
    }
}

/// The `process_id` of the Redis answering on `port`, if one answers.
fn redis_pid(port: u16) -> Option<u32> {
    use std::io::Read;
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    tcp.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .ok()?;
    let mut info = Vec::new();
    let mut buf = [0u8; 4096];
    // INFO server is one bulk string of a few KiB; read until its pid line.
    while !String::from_utf8_lossy(&info).contains("run_id:") {
        let n = tcp.read(&mut buf).ok().filter(|n| *n > 0)?;
        info.extend_from_slice(&buf[..n]);
    }
    let info = String::from_utf8_lossy(&info);
    let line = info.lines().find(|l| l.starts_with("process_id:"))?;
    line["process_id:".len()..].trim().parse().ok()
}

impl Backplane for Redis {
    fn url(&self) -> String {
        Redis::url(self)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `n` instances on one Redis and one (SQLite) database.
pub async fn cluster(
    redis: &impl Backplane,
    n: usize,
    tune: impl Fn(&mut examwatch::Settings),
) -> Vec<TestApp> {
    cluster_on(redis, Backend::Sqlite, n, tune)
        .await
        .expect("SQLite is always there")
}

/// `n` instances on one Redis and one fresh database of `backend`; `None`
/// when that database is unavailable outside CI. Every instance uses the
/// same database (`TestApp::db_url`), as a real deployment does.
pub async fn cluster_on(
    redis: &impl Backplane,
    backend: Backend,
    n: usize,
    tune: impl Fn(&mut examwatch::Settings),
) -> Option<Vec<TestApp>> {
    let db = tempfile::tempdir().unwrap();
    let url = fresh_database(backend, db.path()).await?;
    let mut apps = join_cluster(redis, &url, 0..n, tune).await;
    // The shared database's folder lives as long as the first app.
    apps[0]._db_dir = Some(db);
    Some(apps)
}

/// Instances `ids` (named `node-{id}`) joining a cluster on `db_url`.
pub async fn join_cluster(
    redis: &impl Backplane,
    db_url: &str,
    ids: std::ops::Range<usize>,
    tune: impl Fn(&mut examwatch::Settings),
) -> Vec<TestApp> {
    let mut apps = Vec::new();
    for i in ids {
        let app = spawn_app_on_url(Some(db_url.to_owned()), |s| {
            s.broker.redis_url = redis.url().into();
            s.database.instance_id = Some(format!("node-{i}"));
            tune(s);
        })
        .await;
        assert_eq!(app.db_url, db_url, "one database for the cluster");
        apps.push(app);
    }
    apps
}

/// Two real `examwatch serve` processes ("node-a", "node-b") sharing
/// `redis` and one SQLite file, for tests that SIGKILL one; `keys` mints
/// their tokens.
pub struct Processes {
    pub a: ServerProcess,
    pub b: ServerProcess,
    pub keys: examwatch::auth::Keys,
    /// The SQLite file both share (an in-process instance may join them).
    pub db_url: String,
    _dir: tempfile::TempDir,
}

impl Processes {
    pub fn start(
        redis: &impl Backplane,
        lease_ttl: &str,
        heartbeat_ttl: &str,
        grace: &str,
    ) -> Processes {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}/shared.db", dir.path().display());
        let redis_url = redis.url();
        let start = |id: &str| {
            let vars = [
                ("EXAMWATCH__BROKER__REDIS_URL", redis_url.as_str()),
                ("EXAMWATCH__DATABASE__URL", db.as_str()),
                ("EXAMWATCH__DATABASE__INSTANCE_ID", id),
                ("EXAMWATCH__AUTH__JWT_SECRET", SECRET),
                ("EXAMWATCH__EXAM__LEASE_TTL", lease_ttl),
                ("EXAMWATCH__BROKER__HEARTBEAT_TTL", heartbeat_ttl),
                ("EXAMWATCH__EXAM__DISCONNECT_GRACE", grace),
            ];
            ServerProcess::start(dir.path(), &vars)
        };
        let (a, b) = (start("node-a"), start("node-b"));
        let auth = examwatch::config::AuthSettings {
            jwt_secret: Some(examwatch::config::Secret::new(SECRET)),
            ..Default::default()
        };
        let keys = examwatch::auth::Keys::from_settings(&auth, dir.path()).unwrap();
        Processes {
            a,
            b,
            keys,
            db_url: db.clone(),
            _dir: dir,
        }
    }
}

/// A token for exam e1 signed with `keys`.
pub fn token_e1(keys: &examwatch::auth::Keys, sub: &str, role: examwatch::auth::Role) -> String {
    keys.mint(sub, sub, role, vec!["e1".into()], Duration::from_secs(600))
        .unwrap()
}

/// The socket URL of exam e1 on `addr`.
pub fn ws_e1(addr: &str) -> String {
    format!("ws://{addr}/v1/exams/e1/ws")
}

/// Sends a `progress` with `ref` `r` and waits for its ack.
pub async fn progress_acked(s: &mut Client, question: u64, r: u64) {
    s.send_json(json!({"type": "progress", "question": question, "answered": r, "ref": r}))
        .await;
    s.expect_ack(r).await;
}

/// Reads `t`'s frames into `view` until `wanted` holds of it, within
/// `within`; panics with the view (not just the frames) when stuck.
pub async fn read_until(
    t: &mut Client,
    view: &mut View,
    within: Duration,
    what: &str,
    wanted: impl Fn(&View) -> bool,
) {
    let deadline = Instant::now() + within;
    while !wanted(view) {
        let waited = tokio::time::timeout_at(deadline, t.next_json_within(deadline + WAIT)).await;
        let Ok(ev) = waited else {
            panic!("{what}: teacher view stuck at {view:?}");
        };
        view.apply(&ev);
    }
}

/// A teacher's model of the exam: applies snapshots and student events.
#[derive(Default, Debug)]
pub struct View {
    pub seq: u64,
    pub questions: HashMap<String, Value>,
    /// `(seq, student, cause)` of every live student event, in order.
    pub events: Vec<(u64, String, String)>,
    /// The seq of every snapshot received, in order.
    pub snapshots: Vec<u64>,
}

impl View {
    pub fn apply(&mut self, v: &Value) {
        match v["type"].as_str() {
            Some("snapshot") => {
                self.seq = v["seq"].as_u64().unwrap();
                self.snapshots.push(self.seq);
                self.questions = v["students"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        (
                            s["student_id"].as_str().unwrap().to_owned(),
                            s["current_question"].clone(),
                        )
                    })
                    .collect();
            }
            Some("student") => {
                let seq = v["seq"].as_u64().unwrap();
                if seq <= self.seq {
                    return;
                }
                self.seq = seq;
                let id = v["student"]["student_id"].as_str().unwrap().to_owned();
                self.questions
                    .insert(id.clone(), v["student"]["current_question"].clone());
                self.events
                    .push((seq, id, v["cause"].as_str().unwrap().to_owned()));
            }
            _ => {
                if let Some(seq) = v["seq"].as_u64() {
                    self.seq = self.seq.max(seq);
                }
            }
        }
    }
}

on_single_and_cluster!(three_instances_one_order_and_snapshots_include_every_instance);
async fn three_instances_one_order_and_snapshots_include_every_instance(redis: &impl Backplane) {
    let apps = cluster(redis, 3, |_| {}).await;
    let mut teachers = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        teachers.push(app.teacher("e1", &format!("t{i}")).await.0);
    }
    // Students spread over the three instances.
    let mut students = Vec::new();
    for i in 0..6 {
        let (s, _) = apps[i % 3].student("e1", &format!("s{i}")).await;
        students.push(s);
    }
    for round in 1..=3 {
        for (i, s) in students.iter_mut().enumerate() {
            s.send_json(json!({"type": "progress", "question": round * 10 + i, "answered": round, "ref": round}))
                .await;
        }
    }
    for s in students.iter_mut() {
        for round in 1..=3 {
            s.expect_ack(round).await;
        }
    }
    // 6 connects + 18 progress events; every teacher sees the same list.
    let mut seen = Vec::new();
    for t in teachers.iter_mut() {
        let mut v = View::default();
        let deadline = deadline();
        while v.events.len() < 24 {
            assert!(Instant::now() < deadline, "teacher view stuck at {v:?}");
            let ev = t.next_json_within(deadline).await;
            v.apply(&ev);
        }
        seen.push(v.events);
    }
    assert_eq!(seen[0], seen[1], "instances 0 and 1 agree on order");
    assert_eq!(seen[0], seen[2], "instances 0 and 2 agree on order");
    let seqs: Vec<u64> = seen[0].iter().map(|e| e.0).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "one gapless seq: {seqs:?}"
    );
    // A teacher joining any instance sees students of every instance.
    for app in &apps {
        let (_t, snap) = app.teacher("e1", "late").await;
        assert_eq!(snap["students"].as_array().unwrap().len(), 6, "{snap}");
        assert_eq!(snap["counts"]["active"], 6);
        assert_eq!(snap["seq"], *seqs.last().unwrap());
    }
}

on_single_and_cluster!(resume_and_announcements_work_across_instances);
async fn resume_and_announcements_work_across_instances(redis: &impl Backplane) {
    let apps = cluster(redis, 2, |_| {}).await;
    let (mut t, _) = apps[0].teacher("e1", "t1").await;
    let (mut s, _) = apps[1].student("e1", "s1").await;
    let mut last_seen = t.next_of_type("student").await["seq"].as_u64().unwrap();
    s.send_json(progress(1, 1)).await;
    last_seen = last_seen.max(t.next_of_type("student").await["seq"].as_u64().unwrap());
    drop(t);
    for q in 2..=4 {
        s.send_json(json!({"type": "progress", "question": q, "answered": q, "ref": q}))
            .await;
        s.expect_ack(q).await;
    }
    // The teacher comes back through the other instance.
    let token = apps[1].token("t1", Role::Teacher, &["e1"]);
    let url = format!("{}?last_seq={last_seen}", apps[1].ws_url("e1"));
    let mut back = apps[1].try_connect(&url, Some(&token), &[]).await.unwrap();
    for (i, expected) in (last_seen + 1..=last_seen + 3).enumerate() {
        let ev = back.next_json().await;
        assert_eq!(ev["seq"], expected, "{ev}");
        assert_eq!(ev["student"]["current_question"], i as u64 + 2);
    }
    // An announcement on instance 1 reaches a student on instance 0.
    let (mut s0, _) = apps[0].student("e1", "s0").await;
    back.send_json(json!({"type": "announce", "text": "Time!"}))
        .await;
    assert_eq!(s0.next_of_type("announcement").await["text"], "Time!");
    assert_eq!(s.next_of_type("announcement").await["text"], "Time!");
}

on_single_and_cluster!(a_second_session_on_another_instance_takes_over_with_an_alert);
async fn a_second_session_on_another_instance_takes_over_with_an_alert(redis: &impl Backplane) {
    let apps = cluster(redis, 2, |_| {}).await;
    let (mut t, _) = apps[0].teacher("e1", "t1").await;
    let (mut first, _) = apps[0].student("e1", "s1").await;
    t.next_of_type("student").await;
    let (_second, welcome) = apps[1].student("e1", "s1").await;
    assert_eq!(welcome["student"]["student_id"], "s1");
    assert_eq!(first.next_json().await["type"], "session_invalidated");
    assert_eq!(
        first.expect_close().await,
        (Some(4001), "session taken over by a new connection".into())
    );
    let ev = t.next_of_type("student").await;
    assert!(is_student_event(&ev, "s1", "second_session"), "{ev}");
    assert_eq!(t.next_of_type("alert").await["kind"], "second_session");
    let (_t2, snap) = apps[1].teacher("e1", "t2").await;
    assert_eq!(
        snap["students"].as_array().unwrap().len(),
        1,
        "never a duplicate student"
    );
}

#[tokio::test]
async fn redis_restarted_mid_exam_every_teacher_ends_with_the_true_state() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let apps = cluster(&redis, 2, |_| {}).await;
    let (mut t0, snap0) = apps[0].teacher("e1", "t0").await;
    let (mut t1, snap1) = apps[1].teacher("e1", "t1").await;
    let (mut v0, mut v1) = (View::default(), View::default());
    v0.apply(&snap0);
    v1.apply(&snap1);
    let (mut a, _) = apps[0].student("e1", "a").await;
    let (mut b, _) = apps[1].student("e1", "b").await;
    redis.stop();
    eventually("the instances notice", || {
        apps.iter().all(|a| !a.state.broker.healthy())
    })
    .await;
    let ready: Value = reqwest::get(apps[0].admin("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["broker"].as_str()),
        (Some("degraded"), Some("unreachable"))
    );
    // Each instance keeps serving its own members while Redis is away.
    a.send_json(json!({"type": "progress", "question": 77, "answered": 1, "ref": "x"}))
        .await;
    a.expect_ack("x").await;
    let deadline = deadline();
    loop {
        assert!(Instant::now() < deadline, "teacher view stuck at {v0:?}");
        let ev = t0.next_json_within(deadline).await;
        v0.apply(&ev);
        if v0.questions.get("a") == Some(&json!(77)) {
            break;
        }
    }
    redis.start_again();
    // Students keep working through the outage and after it.
    for q in 1..=5 {
        a.send_json(json!({"type": "progress", "question": q, "answered": q, "ref": q}))
            .await;
        b.send_json(json!({"type": "progress", "question": 100 + q, "answered": q, "ref": q}))
            .await;
        a.expect_ack(q).await;
        b.expect_ack(q).await;
    }
    // Every teacher converges on the truth (events replayed late, or a
    // fresh snapshot), never a stale view.
    for (t, v) in [(&mut t0, &mut v0), (&mut t1, &mut v1)] {
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        while v.questions.get("a") != Some(&json!(5)) || v.questions.get("b") != Some(&json!(105)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "teacher view stuck at {v:?}"
            );
            let ev = t.next_json_within(deadline).await;
            v.apply(&ev);
        }
    }
    eventually("readiness recovers", || {
        apps.iter().all(|a| a.state.broker.healthy())
    })
    .await;
}

on_single_and_cluster!(an_instance_killed_mid_exam_its_students_move_and_its_presence_expires);
async fn an_instance_killed_mid_exam_its_students_move_and_its_presence_expires(
    redis: &impl Backplane,
) {
    let p = Processes::start(redis, "600ms", "600ms", "800ms");
    let (mut a, b) = (p.a, p.b);
    let token = |sub: &str, role| token_e1(&p.keys, sub, role);
    let ws = |addr: &str| ws_e1(addr);
    let mut t = connect_url(&ws(&b.addr), &token("t1", Role::Teacher)).await;
    t.next_of_type("snapshot").await;
    let mut sessions = HashMap::new();
    let mut on_a = Vec::new();
    for s in ["s1", "s2"] {
        let mut c = connect_url(&ws(&a.addr), &token(s, Role::Student)).await;
        let welcome = c.next_of_type("welcome").await;
        sessions.insert(s, welcome["session_id"].as_str().unwrap().to_owned());
        on_a.push(c);
    }
    for _ in 0..2 {
        assert_eq!(t.next_of_type("student").await["cause"], "connected");
    }
    a.kill9();
    drop(on_a);
    // s1's client reconnects through the other instance, naming its session.
    let url = format!("{}?previous_session={}", ws(&b.addr), sessions["s1"]);
    let mut s1 = connect_url(&url, &token("s1", Role::Student)).await;
    let welcome = s1.next_of_type("welcome").await;
    assert_eq!(
        welcome["student"]["connections"], 2,
        "the same student, state moved with it"
    );
    let mut causes = HashMap::new();
    let deadline = deadline();
    while causes.len() < 2 {
        assert!(Instant::now() < deadline, "only {causes:?}");
        let ev = t.next_of_type_within("student", deadline).await;
        let id = ev["student"]["student_id"].as_str().unwrap().to_owned();
        causes.insert(id, ev["cause"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        causes["s1"], "reconnected",
        "not a second session, not a new student"
    );
    assert_eq!(
        causes["s2"], "disconnected",
        "the dead instance's presence expired"
    );
    let mut late = connect_url(&ws(&b.addr), &token("t2", Role::Teacher)).await;
    let snap = late.next_of_type("snapshot").await;
    let students = snap["students"].as_array().unwrap();
    assert_eq!(students.len(), 2, "never a duplicate student: {snap}");
    assert_eq!(snap["counts"]["active"], 1);
    assert_eq!(snap["counts"]["disconnected"], 1);
}

#[tokio::test]
async fn simultaneous_connections_on_two_instances_leave_one_session() {
    let Some(redis) = Redis::start() else { return };
    let apps = cluster(&redis, 2, |_| {}).await;
    let mut survivors = Vec::new();
    for round in 0..5 {
        let sub = format!("s{round}");
        let token = apps[0].token(&sub, Role::Student, &["e1"]);
        let (url_a, url_b) = (apps[0].ws_url("e1"), apps[1].ws_url("e1"));
        let (a, b) = tokio::join!(
            apps[0].try_connect(&url_a, Some(&token), &[]),
            apps[1].try_connect(&url_b, Some(&token), &[]),
        );
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        // Whichever closes first is the one taken over.
        let (closed, survivor) = tokio::time::timeout(WAIT, async {
            tokio::select! {
                close = a.expect_close() => (close, b),
                close = b.expect_close() => (close, a),
            }
        })
        .await
        .unwrap_or_else(|_| panic!("round {round}: neither session was closed"));
        assert_eq!(
            closed,
            (Some(4001), "session taken over by a new connection".into()),
            "round {round}"
        );
        survivors.push((round, survivor));
    }
    // A late second close would leave the student with no session at all.
    // Once the takeovers of every round have had time to settle (each
    // student's last close came within the round; allow the lease and
    // probe machinery twice the wait), every survivor still answers, and
    // every student is connected, once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (round, survivor) in survivors.iter_mut() {
        let r = format!("alive-{round}");
        survivor
            .send_json(json!({"type": "heartbeat", "ref": r}))
            .await;
        survivor.expect_ack(r).await;
    }
    let (_t, snap) = apps[1].teacher("e1", "t1").await;
    let students = snap["students"].as_array().unwrap();
    assert_eq!(students.len(), 5, "{snap}");
    for st in students {
        assert_eq!(
            (&st["connected"], &st["status"]),
            (&json!(true), &json!("active")),
            "{st}"
        );
    }
}

#[tokio::test]
async fn a_disconnect_watched_from_another_instance_is_reported_once() {
    let Some(redis) = Redis::start() else { return };
    let apps = cluster(&redis, 2, |s| {
        s.exam.disconnect_grace = Duration::from_millis(300);
        s.exam.lease_ttl = Duration::from_millis(400);
    })
    .await;
    let (mut t, _) = apps[1].teacher("e1", "t1").await;
    let (s, _) = apps[0].student("e1", "s1").await;
    t.next_of_type("student").await;
    s.close().await;
    let ev = t.next_of_type("student").await;
    assert!(is_student_event(&ev, "s1", "disconnected"), "{ev}");
    // The one alert that goes with the disconnect, right after it.
    let alert = t.next_json().await;
    assert_eq!(
        (
            alert["type"].as_str(),
            alert["kind"].as_str(),
            alert["student_id"].as_str()
        ),
        (Some("alert"), Some("disconnected"), Some("s1")),
        "{alert}"
    );
    assert_eq!(alert["seq"], ev["seq"].as_u64().unwrap() + 1);
    // Well past another lease lifetime and grace period, nothing more about
    // s1 arrives (no second event, no second alert): the very next frame is
    // our probe's.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_probe, _) = apps[1].student("e1", "probe").await;
    let next = t.next_json_within(deadline()).await;
    assert!(
        is_student_event(&next, "probe", "connected"),
        "a second report: {next}"
    );
}

/// On PostgreSQL (the production setup): both instances read and write
/// the one database.
#[tokio::test]
async fn answers_stored_through_another_instance_still_count() {
    let Some(redis) = Redis::start() else { return };
    let Some(apps) = cluster_on(&redis, Backend::Postgres, 2, |_| {}).await else {
        return;
    };
    assert!(apps[0].db_url.starts_with("postgres://"));
    let (mut t, _) = apps[1].teacher("e1", "t1").await;
    let (mut s, welcome) = apps[0].student("e1", "s1").await;
    for q in 1..=3 {
        s.send_json(json!({"type": "answer", "id": format!("a{q}"), "question": format!("q{q}"), "value": q, "ref": q}))
            .await;
        s.expect_ack(q).await;
    }
    s.close().await;
    let token = apps[1].token("s1", Role::Student, &["e1"]);
    let url = format!(
        "{}?previous_session={}",
        apps[1].ws_url("e1"),
        welcome["session_id"].as_str().unwrap()
    );
    let mut moved = apps[1].try_connect(&url, Some(&token), &[]).await.unwrap();
    let w = moved.next_of_type("welcome").await;
    assert_eq!(w["student"]["answered"], 3);
    moved
        .send_json(json!({"type": "answer", "id": "a4", "question": "q4", "value": 4, "ref": 4}))
        .await;
    moved.expect_ack(4).await;
    let mut most = 0;
    let deadline = deadline();
    loop {
        let ev = t.next_of_type_within("student", deadline).await;
        let answered = ev["student"]["answered"].as_u64().unwrap();
        assert!(answered >= most, "answered never goes backwards: {ev}");
        most = answered;
        if ev["cause"] == "answered" && answered == 4 {
            break;
        }
    }
    // The answer written through one instance is read through the other.
    let teacher = apps[0].token("t1", Role::Teacher, &["e1"]);
    let body = apps[0]
        .get_json("/v1/exams/e1/students/s1/answers", &teacher)
        .await;
    let mut ids: Vec<_> = body["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["a1", "a2", "a3", "a4"], "{body}");
}

#[tokio::test]
async fn an_instance_starts_while_redis_is_down_and_joins_the_cluster_later() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    redis.stop();
    let apps = cluster(&redis, 1, |_| {}).await;
    let (mut t, _) = apps[0].teacher("e1", "t1").await;
    let (mut s, _) = apps[0].student("e1", "s1").await;
    s.send_json(json!({"type": "progress", "question": 3, "answered": 1, "ref": 1}))
        .await;
    s.expect_ack(1).await;
    // Served alone meanwhile.
    loop {
        let ev = t.next_of_type("student").await;
        if ev["cause"] == "progress" {
            break;
        }
    }
    let ready: Value = reqwest::get(apps[0].admin("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["broker"], "unreachable");
    redis.start_again();
    eventually("the instance reaches Redis", || {
        apps[0].state.broker.healthy()
    })
    .await;
    // A second instance, on the same database, now sees the student the
    // first one served.
    let other = join_cluster(&redis, &apps[0].db_url, 1..2, |_| {})
        .await
        .remove(0);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_t2, snap) = other.teacher("e1", "t2").await;
        if snap["students"][0]["current_question"] == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never shared: {snap}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
