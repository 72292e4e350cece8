//! The database goes away mid-exam (PostgreSQL behind a TCP proxy the test
//! cuts): the live fan-out carries on, readiness reports degraded, answers
//! wait unacknowledged, past the bound new connections are refused, and
//! once the database is back everything queued is written once.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use examwatch::auth::Role;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::helpers::*;

/// A TCP proxy that can be cut (every connection dropped, new ones refused)
/// and restored.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the database is "unreachable"
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(task);
            }
        });
        Proxy {
            addr,
            up,
            conns,
            _accept: accept,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

async fn ready(app: &TestApp) -> (u16, Value) {
    let r = reqwest::get(app.admin("/readyz")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_database_outage_degrades_but_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(Backend::Postgres, dir.path()).await else {
        return;
    };
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let via_proxy = url.replacen("127.0.0.1:5432", &proxy.addr.to_string(), 1);
    assert_ne!(
        via_proxy, url,
        "the test database URL points at 127.0.0.1:5432"
    );
    let app = spawn_app_on_url(Some(via_proxy), |s| {
        s.database.queue_limit = 40;
        s.limits.messages_per_second = 1000;
    })
    .await;
    let teacher_token = app.token("t1", Role::Teacher, &["e1"]);
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    t.next_of_type("student").await;
    app.flushed().await;

    proxy.cut();
    // The live path does not wait for the database.
    for q in 1..=5 {
        s.send_json(progress(q, q)).await;
        let ev = t.next_of_type("student").await;
        assert_eq!(ev["student"]["current_question"], q);
    }
    eventually("readiness reports the outage", || {
        app.state.writer.degraded()
    })
    .await;
    let (status, body) = ready(&app).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("degraded")),
        "{body}"
    );
    assert_eq!(body["database"], "failing");
    // An answer cannot be acknowledged until it is stored.
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": "x", "ref": "a1"}))
        .await;
    s.send_json(json!({"type": "heartbeat", "ref": "hb"})).await;
    assert_eq!(
        s.next_json().await,
        ack("hb"),
        "the heartbeat overtakes the unstored answer"
    );
    // Past the bound, new exam connections are refused with a clear error.
    for q in 6..=60 {
        s.send_json(progress(q, q)).await;
    }
    eventually("the backlog passes its bound", || {
        app.state.writer.over_limit()
    })
    .await;
    let late = app.token("late", Role::Student, &["e1"]);
    match app.try_connect(&app.ws_url("e1"), Some(&late), &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "database_backlog");
        }
        other => panic!("a new connection was admitted: {:?}", other.map(|_| ())),
    }
    assert_eq!(ready(&app).await.0, 503);
    // Past the bound, new answers are refused (kept by the client), not queued.
    s.send_json(json!({"type": "answer", "id": "a2", "question": "q2", "value": "y", "ref": "a2"}))
        .await;
    let busy = s.next_of_type("error").await;
    assert_eq!(
        (busy["code"].as_str(), busy["ref"].as_str()),
        (Some("storage_busy"), Some("a2"))
    );

    proxy.restore();
    // Acked once stored.
    s.expect_ack("a1").await;
    app.flushed().await;
    assert_eq!(ready(&app).await.1["status"], "ready");
    // Everything the teacher saw during the outage is in the log, once.
    let seqs: Vec<u64> = app
        .timeline("e1", &teacher_token, 1000)
        .await
        .iter()
        .map(|ev| ev["seq"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=*seqs.last().unwrap()).collect();
    assert_eq!(seqs, expected, "every event stored exactly once, no gap");
    assert!(seqs.len() > 60);
    let answers: Value = app
        .api(
            Method::GET,
            "/v1/exams/e1/students/s1/answers",
            &teacher_token,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answers["answers"].as_array().unwrap().len(), 1);
}
