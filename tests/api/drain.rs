//! Rolling restarts, the server's side (issue 16 item 4): from the first
//! moment of a graceful stop `/readyz` is 503 and the listener refuses new
//! connections; the sockets close with 1012 spread over
//! `server.drain_window`, not at one instant; answers sent while draining
//! are acked and committed once. And the upgrade-aware readiness check
//! (item 5): `/readyz` turns 503 when a WebSocket can no longer be opened
//! here, and 200 again once it can.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::helpers::*;

/// Polls the operators' `/readyz` until it answers `want` with the
/// `websocket` check in `state` (any, if `None`); its body then.
async fn admin_readyz_becomes(app: &TestApp, want: u16) -> Value {
    admin_readyz_until(app, want, None).await
}

async fn admin_readyz_until(app: &TestApp, want: u16, state: Option<&str>) -> Value {
    let http = reqwest::Client::new();
    let until = deadline();
    let mut last = (0, Value::Null);
    while Instant::now() < until {
        let r = http.get(app.admin("/readyz")).send().await.unwrap();
        let status = r.status().as_u16();
        last = (status, r.json().await.unwrap_or(Value::Null));
        if status == want && state.is_none_or(|s| last.1["websocket"]["state"] == s) {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "/readyz never answered {want} with websocket {state:?}; last {} {}",
        last.0, last.1
    );
}

#[tokio::test]
async fn a_graceful_stop_refuses_new_connections_and_closes_1012_over_the_window() {
    let window = Duration::from_millis(1500);
    let mut app = spawn_app_with(|s| {
        s.server.drain_delay = Duration::from_millis(400);
        s.server.drain_window = window;
    })
    .await;
    let (t, _) = app.teacher("e1", "t1").await;
    let mut students = Vec::new();
    for i in 1..=5 {
        students.push(app.student("e1", &format!("s{i}")).await.0);
    }
    app.begin_shutdown();
    // At once: not ready (the operators' listener still answers), and the
    // public listener refuses a new connection instead of accepting it.
    let body = admin_readyz_becomes(&app, 503).await;
    assert_eq!(body["reasons"][0], "shutting_down", "{body}");
    let until = deadline();
    loop {
        match tokio::net::TcpStream::connect(app.addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            Err(e) => panic!("refused, not {e}"),
            Ok(_) => {
                assert!(Instant::now() < until, "the listener still accepts");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // While draining, the sockets still work: every answer is acked
    // (committed) before its socket closes.
    for (i, s) in students.iter_mut().enumerate() {
        s.send_json(json!({"type": "answer", "id": format!("a{i}"), "question": "q1", "value": i, "ref": i}))
            .await;
        s.expect_ack(i).await;
    }
    let mut closes = Vec::new();
    let mut all: Vec<Client> = students;
    all.push(t);
    let waits: Vec<_> = all
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let close = c
                    .expect_close_within(Instant::now() + Duration::from_secs(10))
                    .await;
                (Instant::now(), close)
            })
        })
        .collect();
    for w in waits {
        closes.push(w.await.unwrap());
    }
    for (_, close) in &closes {
        assert_eq!(close, &(Some(1012), "service restart".to_string()));
    }
    // Spread, not one instant: six closes over 1.5 s are 0.25 s apart, so
    // the first and the last are 1.25 s apart; half of that is plenty of
    // tolerance for a busy machine.
    let first = closes.iter().map(|c| c.0).min().unwrap();
    let last = closes.iter().map(|c| c.0).max().unwrap();
    assert!(
        last - first >= window * 5 / 6 / 2,
        "closes spread over the window, not at once: {:?}",
        last - first
    );
    let db_url = app.db_url.clone();
    let parts = app.stop().await;
    // Flushed before the exit: each answer stored exactly once.
    let db = sqlx::SqlitePool::connect(&db_url).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT student_id, answer_id FROM answers WHERE exam_id = 'e1' ORDER BY student_id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(rows.len(), 5, "{rows:?}");
    // Written after the closes, before the exit: every session's end, 1012.
    let codes: Vec<(Option<i64>, Option<String>)> =
        sqlx::query_as("SELECT close_code, close_reason FROM sessions WHERE exam_id = 'e1'")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(codes.len(), 6, "{codes:?}");
    assert!(
        codes.iter().all(|(code, reason)| *code == Some(1012)
            && reason.as_deref() == Some("server: service restart")),
        "{codes:?}"
    );
    drop(parts);
}

#[tokio::test]
async fn readyz_fails_while_a_websocket_cannot_be_opened_here_and_recovers() {
    // A connection cap of 4: four students fill it, and the loopback check,
    // like any client, is then refused (503 too_many_connections).
    let app = spawn_app_with(|s| {
        s.server.max_connections = 4;
        s.server.ws_probe_interval = Duration::from_millis(100);
        s.server.ws_probe_timeout = Duration::from_millis(1000);
    })
    .await;
    let body = admin_readyz_until(&app, 200, Some("ok")).await;
    assert!(body["websocket"]["rtt_ms"].is_u64(), "{body}");
    let http = reqwest::Client::new();
    let public = http.get(app.http("/readyz")).send().await.unwrap();
    assert_eq!(public.status(), 200);
    let public: Value = public.json().await.unwrap();
    assert_eq!(
        public,
        json!({"status": "ready"}),
        "the public one stays terse"
    );
    // No idle keep-alive connection of ours left holding a place.
    app.open_exam("e1").await;
    drop(http);

    let mut students = Vec::new();
    for i in 1..=4 {
        students.push(student_despite_the_probe(&app, &format!("s{i}")).await);
    }
    let body = admin_readyz_until(&app, 503, Some("failing")).await;
    assert!(
        body["reasons"]
            .as_array()
            .unwrap()
            .contains(&json!("websocket_probe_failing")),
        "{body}"
    );
    assert!(
        body["websocket"]["error"].as_str().unwrap().contains("503"),
        "{body}"
    );
    // A place again: the next check gets through.
    students.pop().unwrap().close().await;
    let body = admin_readyz_until(&app, 200, Some("ok")).await;
    assert_eq!(body["status"], "ready", "{body}");
    // The probe is no student or teacher: none counted beyond the three.
    assert_eq!(app.metric("examwatch_students_connected"), 3);
    assert_eq!(app.metric("examwatch_teachers_connected"), 0);
}

/// A student's socket, retried while the loopback check holds the last
/// place for its moment.
async fn student_despite_the_probe(app: &TestApp, sub: &str) -> Client {
    let token = app.token(sub, examwatch::auth::Role::Student, &["e1"]);
    let until = deadline();
    loop {
        match app.try_connect(&app.ws_url("e1"), Some(&token), &[]).await {
            Ok(mut c) => {
                c.next_of_type("welcome").await;
                return c;
            }
            Err(e) => {
                assert!(Instant::now() < until, "{sub} never got a place: {e}");
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    }
}

#[tokio::test]
async fn the_probe_path_without_the_probes_secret_is_an_ordinary_handshake() {
    let app = spawn_app_with(|s| s.server.ws_probe_interval = Duration::from_millis(100)).await;
    let url = format!("ws://{}{}", app.addr, examwatch::health::PROBE_PATH);
    // A guessed secret opens nothing: the handshake wants a token.
    let guessed = app
        .try_connect_as_is(&url, None, &[(examwatch::health::PROBE_HEADER, "guess")])
        .await;
    match guessed {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 401),
        other => panic!("refused with 401, not {:?}", other.map(|_| "a socket")),
    }
    // Meanwhile the real probe gets through, and is not a connection of
    // anyone's: no student, no teacher, no room.
    admin_readyz_until(&app, 200, Some("ok")).await;
    assert_eq!(app.metric("examwatch_students_connected"), 0);
    assert_eq!(app.metric("examwatch_teachers_connected"), 0);
    assert!(app.state.registry.is_empty(), "the probe joined no room");
}
