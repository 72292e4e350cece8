//! Rebalancing (issue 18, items 4 and 5; PROTOCOL.md 4.9.1): an instance
//! above the fleet's average sheds its excess with 1012 "rebalance", the
//! clients come back through the load balancer, and nothing is lost; the
//! admin drain endpoint; a student mid-commit is never the one shed.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use examwatch::auth::Role;
use examwatch_loadgen::Plan;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::{net::TcpListener, time::Instant};

use crate::{
    cluster::{Redis, cluster, join_cluster},
    helpers::*,
};

/// A round-robin TCP proxy on 127.0.0.1:0, the load balancer of these
/// tests: each connection goes to the next backend of a list the test can
/// extend, bytes copied both ways until either side closes.
struct Proxy {
    addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(backends: Vec<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let backends = Arc::new(Mutex::new(backends));
        let next = Arc::new(AtomicUsize::new(0));
        let list = backends.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = {
                    let list = list.lock().unwrap();
                    list[next.fetch_add(1, Ordering::Relaxed) % list.len()]
                };
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                        return; // the client sees its connection close
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Proxy {
            addr,
            backends,
            accept,
        }
    }

    fn add(&self, backend: SocketAddr) {
        self.backends.lock().unwrap().push(backend);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Settings of every instance here: short intervals and windows, and no
/// per-IP limits (every client comes from 127.0.0.1, through the proxy).
fn tuned(rebalance: bool, window: Duration) -> impl Fn(&mut examwatch::Settings) {
    move |s| {
        s.cluster.rebalance = rebalance;
        s.cluster.rebalance_interval = Duration::from_millis(100);
        s.cluster.rebalance_window = window;
        s.limits.connections_per_ip = 0;
        s.limits.handshakes_per_ip = 0;
        s.limits.messages_per_second = 1000;
    }
}

fn admin(app: &TestApp) -> String {
    app.token("ops", Role::Admin, &[])
}

/// `GET /v1/admin/instances` on `app`: (id, students + teachers) of each.
async fn fleet(app: &TestApp) -> Vec<(String, u64)> {
    let v = app.get_json("/v1/admin/instances", &admin(app)).await;
    v["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("a fleet: {v}"))
        .iter()
        .map(|i| {
            let n = i["students"].as_u64().unwrap() + i["teachers"].as_u64().unwrap();
            (i["id"].as_str().unwrap().to_owned(), n)
        })
        .collect()
}

async fn drain(app: &TestApp, id: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let r = app
        .api(
            Method::POST,
            &format!("/v1/admin/instances/{id}/drain"),
            token,
        )
        .json(&body)
        .send()
        .await
        .expect("the drain answers");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Two instances hold every client (behind a round-robin proxy); a third
/// is started and added to the proxy. Counts even out within the
/// tolerance while students keep sending, every teacher gets every event
/// exactly once (no gap, no duplicate), every moved client comes back, and
/// no alert is raised (no `second_session`, no `network_incident`).
#[tokio::test]
async fn a_third_instance_gets_its_share_and_nothing_is_lost() {
    let Some(redis) = Redis::start() else { return };
    let db = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Sqlite, db.path())
        .await
        .expect("SQLite is always there");
    let tune = tuned(true, Duration::from_millis(500));
    let apps = join_cluster(&redis, &url, 0..2, &tune).await;
    let proxy = Proxy::start(vec![apps[0].addr, apps[1].addr]).await;
    let plan = Plan {
        servers: vec![proxy.addr],
        exams: 2,
        students: 15,
        teachers: 1,
        rate: 100.0,
        duration: Duration::from_secs(12),
        prefix: "rb-".into(),
        acked: true,
        ..Plan::new(proxy.addr)
    };
    let connected = examwatch_loadgen::connect(&plan, &apps[0].keys)
        .await
        .expect("every client connects");
    assert_eq!(connected.connections(), 32);
    let (sending, mut started) = tokio::sync::mpsc::unbounded_channel();
    let run = connected.send(move |line| {
        if line.starts_with("sent") {
            let _ = sending.send(());
        }
    });
    let scale_out = async {
        started.recv().await;
        let before = fleet(&apps[0]).await;
        assert_eq!(before.iter().map(|(_, n)| n).sum::<u64>(), 32, "{before:?}");
        assert!(
            before.iter().all(|(_, n)| *n >= 12),
            "both loaded: {before:?}"
        );
        let third = join_cluster(&redis, &url, 2..3, &tune).await.remove(0);
        proxy.add(third.addr);
        // Poll the listing (no fixed sleep) until every instance is within
        // the tolerance of the average, the new one included.
        let deadline = Instant::now() + Duration::from_secs(9);
        let even = loop {
            let now = fleet(&third).await;
            let total: u64 = now.iter().map(|(_, n)| n).sum();
            let avg = total as f64 / 3.0;
            let third_n = now.iter().find(|(id, _)| id == "node-2").map(|(_, n)| *n);
            if now.len() == 3
                && third_n.is_some_and(|n| n > 0)
                && now.iter().all(|(_, n)| (*n as f64) <= (avg * 1.2).ceil())
            {
                break now;
            }
            assert!(
                Instant::now() < deadline,
                "the counts did not even out: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // While every client is still connected (the run's end closes
        // them all at once, which is a network incident of its own): no
        // alert of any kind, not a second session, not a network incident.
        for exam in ["rb-0", "rb-1"] {
            assert_eq!(alerts_of(&apps[0], exam).await, json!([]), "{exam}");
        }
        (third, even)
    };
    let (report, (third, even)) = tokio::join!(run, scale_out);
    let report = report.expect("the run completes");
    let shed: i64 = apps
        .iter()
        .map(|a| a.metric_where("examwatch_rebalance_shed_total", &[("role", "student")]))
        .sum();
    assert!(shed > 0, "the loaded instances shed students: {even:?}");
    let restarts: i64 = apps
        .iter()
        .map(|a| {
            a.metric_where(
                "examwatch_closes_total",
                &[("by", "server"), ("code", "1012")],
            )
        })
        .sum();
    assert!(restarts >= shed, "every shed close is a 1012 close");
    let moved = report.moved.clone().expect("clients moved");
    assert!(moved.clients as i64 >= shed, "{moved:?}");
    assert_eq!(moved.back, moved.clients, "every moved client came back");
    assert_eq!(report.connect_errors, 0);
    assert_eq!(report.delivered, report.expected, "{}", report.summary());
    assert_eq!((report.lost, report.duplicated), (0, 0));
    // Until the end, never a second session (the end's own closes may
    // make a network incident).
    for exam in ["rb-0", "rb-1"] {
        let alerts = alerts_of(&apps[0], exam).await;
        let kinds: Vec<&Value> = alerts
            .as_array()
            .unwrap()
            .iter()
            .map(|a| &a["kind"])
            .collect();
        assert!(
            !kinds.contains(&&json!("second_session")),
            "{exam}: {alerts}"
        );
    }
    drop(third);
}

/// The alerts of an exam (`GET /v1/exams/{id}/alerts`), newest first.
async fn alerts_of(app: &TestApp, exam: &str) -> Value {
    let teacher = app.token("t", Role::Teacher, &[exam]);
    let v = app
        .get_json(&format!("/v1/exams/{exam}/alerts"), &teacher)
        .await;
    v["alerts"].clone()
}

/// The admin drain: admins only, a share in (0, 1], an id of a live
/// instance; this instance sheds at once, another one's drain is
/// forwarded through Redis and done there. On one Redis server and on a
/// Redis Cluster (the counts and the requests are single-key commands).
mod the_admin_drain_checks_its_caller_and_body_and_reaches_any_instance {
    #[tokio::test]
    async fn single() {
        let Some(redis) = crate::cluster::Redis::start() else {
            return;
        };
        super::admin_drain(&redis).await;
    }

    #[tokio::test]
    async fn cluster() {
        let Some(redis) = crate::helpers::RedisCluster::start() else {
            return;
        };
        super::admin_drain(&redis).await;
    }
}

async fn admin_drain(redis: &impl Backplane) {
    let apps = cluster(redis, 2, tuned(false, Duration::ZERO)).await;
    let ops = admin(&apps[0]);
    let teacher = apps[0].token("t1", Role::Teacher, &["e1"]);
    let (status, body) = drain(&apps[0], "node-0", &teacher, json!({"share": 0.5})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "admins_only");
    for bad in [
        json!({"share": 0}),
        json!({"share": 2}),
        json!({"share": -0.5}),
    ] {
        let (status, body) = drain(&apps[0], "node-0", &ops, bad.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    let (status, body) = drain(&apps[0], "node-9", &ops, json!({"share": 0.5})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "instance_not_found");

    // This instance: one of its two students is closed, 1012 "rebalance".
    let (mut s1, _) = apps[0].student("e1", "s1").await;
    let (mut s2, _) = apps[0].student("e1", "s2").await;
    let (status, body) = drain(&apps[0], "node-0", &ops, json!({"share": 0.5})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["forwarded"], false);
    assert_eq!(body["connections"], 1, "half of two: {body}");
    let (closed, first) = tokio::select! {
        c = s1.expect_close() => (c, true),
        c = s2.expect_close() => (c, false),
    };
    assert_eq!(closed, (Some(1012), "rebalance".to_owned()));
    let kept = if first { &mut s2 } else { &mut s1 };
    kept.send_json(json!({"type": "progress", "question": 1, "answered": 0, "ref": "k"}))
        .await;
    kept.expect_ack("k").await;
    eventually("one student shed here", || {
        apps[0].metric_where("examwatch_rebalance_shed_total", &[("role", "student")]) == 1
    })
    .await;

    // Another instance: forwarded through Redis, both its students go.
    let (mut s3, _) = apps[1].student("e1", "s3").await;
    let (mut s4, _) = apps[1].student("e1", "s4").await;
    let deadline = Instant::now() + WAIT;
    while !fleet(&apps[0]).await.contains(&("node-1".to_owned(), 2)) {
        assert!(Instant::now() < deadline, "node-1's count reaches node-0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = drain(&apps[0], "node-1", &ops, json!({"share": 1})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["forwarded"], true);
    assert_eq!(body["connections"], 2);
    for s in [&mut s3, &mut s4] {
        assert_eq!(s.expect_close().await, (Some(1012), "rebalance".to_owned()));
    }
    assert_eq!(
        apps[1].metric_where("examwatch_rebalance_shed_total", &[("role", "student")]),
        2
    );
    assert_eq!(
        apps[0].metric_where("examwatch_rebalance_shed_total", &[("role", "student")]),
        1,
        "node-0 shed nothing more"
    );
}

/// A student whose answer waits for its commit (the database is locked)
/// is not chosen: of two students, a drain of every connection closes the
/// other one only; once the commit lands the first gets its ack, still
/// connected, and the answer is stored once.
#[tokio::test]
async fn a_student_with_an_answer_in_flight_is_not_shed() {
    use sqlx::Connection;
    let app = spawn_app_with(tuned(false, Duration::ZERO)).await;
    let (mut busy, _) = app.student("e1", "s1").await;
    let (mut idle, _) = app.student("e1", "s2").await;
    app.flushed().await;
    // Another connection holds SQLite's write lock: the answer's commit
    // waits (and is retried) until it is released.
    let mut lock = sqlx::SqliteConnection::connect(&app.db_url)
        .await
        .expect("a second connection to the database");
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .expect("the write lock");
    busy.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": "a"}))
        .await;
    eventually("the answer is in flight", || {
        app.state
            .live
            .candidates()
            .iter()
            .any(|(_, _, kick)| kick.in_flight())
    })
    .await;
    let ops = admin(&app);
    let (status, body) = drain(&app, &app.state.instance_id, &ops, json!({"share": 1})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["connections"], 2, "every connection was asked for");
    assert_eq!(
        idle.expect_close().await,
        (Some(1012), "rebalance".to_owned())
    );
    eventually("one student shed", || {
        app.metric_where("examwatch_rebalance_shed_total", &[("role", "student")]) == 1
    })
    .await;
    sqlx::query("ROLLBACK")
        .execute(&mut lock)
        .await
        .expect("the lock released");
    lock.close().await.expect("closed");
    busy.expect_ack("a").await;
    busy.send_json(json!({"type": "progress", "question": 2, "answered": 1, "ref": "p"}))
        .await;
    busy.expect_ack("p").await;
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let answers = app
        .get_json("/v1/exams/e1/students/s1/answers", &teacher)
        .await;
    assert_eq!(
        answers["answers"].as_array().map(Vec::len),
        Some(1),
        "{answers}"
    );
}
