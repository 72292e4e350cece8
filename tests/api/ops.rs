//! What operators rely on: health, readiness, metrics, JSON errors, and a
//! graceful shutdown that says goodbye (1012, spread: tests/api/drain.rs) to every socket.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn health_readiness_metrics_and_json_404() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let r = http.get(app.http("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(app.http("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The public readiness says how it is, not why: no numbers, no names.
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "ready"}));
    let (_s, _) = app.student("e1", "s1").await;
    // Metrics are for operators only: not on the public port.
    let r = http.get(app.http("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let text = http
        .get(app.admin("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let id = app.state.instance_id.as_ref();
    assert!(
        text.contains(&format!(
            "examwatch_students_connected{{instance_id=\"{id}\"}} 1\n"
        )),
        "{text}"
    );
    assert_eq!(metric_in(&text, "examwatch_rooms"), Some(1), "{text}");
    assert_eq!(metric_in(&text, "examwatch_db_failing"), Some(0), "{text}");
    for exported in [
        "examwatch_db_rejected_total",
        "examwatch_db_collisions_total",
    ] {
        assert_eq!(metric_in(&text, exported), Some(0), "{exported}: {text}");
    }
    // Every series, labelled or not, names its instance.
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        assert!(line.contains(&format!("{{instance_id=\"{id}\"")), "{line}");
    }
    // The operators' readiness has the details.
    let body: serde_json::Value = http
        .get(app.admin("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["database"], "ok");
    assert_eq!(body["broker"], "memory");
    assert_eq!(body["reasons"], serde_json::json!([]));
    assert_eq!(body["instance_id"], id);
    let r = http.get(app.http("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    // A plain GET on the socket route (after auth) is a clear 4xx, not a hang.
    let token = app.token("s1", examwatch::auth::Role::Student, &["e1"]);
    let r = http
        .get(app.ws_url("e1").replace("ws://", "http://"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
}

#[tokio::test]
async fn shutdown_sends_1012_to_every_client_and_turns_not_ready() {
    let mut app = spawn_app_with(|s| s.server.drain_delay = Duration::from_millis(300)).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s1, _) = app.student("e1", "s1").await;
    let (mut s2, _) = app.student("e2", "s2").await;
    let http = reqwest::Client::new();
    app.begin_shutdown();
    // During the drain delay the server is not ready (the public listener
    // refuses new connections: the operators' one answers).
    let mut status = 200;
    for _ in 0..50 {
        status = http
            .get(app.admin("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(status, 503);
    for c in [&mut t, &mut s1, &mut s2] {
        assert_eq!(
            c.expect_close().await,
            (Some(1012), "service restart".to_string())
        );
    }
    app.shutdown().await.expect("clean exit");
}

#[tokio::test]
async fn an_empty_room_is_dropped_after_its_linger_time() {
    let app = spawn_app_with(|s| {
        s.exam.room_linger = Duration::from_millis(100);
        s.exam.disconnect_grace = Duration::from_millis(50);
    })
    .await;
    let (s, _) = app.student("e1", "s1").await;
    assert_eq!(app.state.registry.len(), 1);
    s.close().await;
    eventually("the room ends", || app.state.registry.is_empty()).await;
    assert_eq!(app.metric("examwatch_rooms"), 0);
    // A new connection starts a new room, which picks the student's state
    // up from the database: the same student, reconnected.
    let (_s, welcome) = app.student("e1", "s1").await;
    assert_eq!(welcome["student"]["connections"], 2);
}

#[tokio::test]
async fn a_recreated_room_continues_the_seq() {
    let app = spawn_app_with(|s| {
        s.exam.room_linger = Duration::from_millis(50);
        s.exam.disconnect_grace = Duration::from_millis(20);
    })
    .await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (s, _) = app.student("e1", "s1").await;
    let before = t.next_of_type("student").await["seq"].as_u64().unwrap();
    s.close().await;
    let after_drop = t.next_of_type("alert").await["seq"].as_u64().unwrap();
    assert!(after_drop > before);
    t.close().await;
    eventually("the room ends", || app.state.registry.is_empty()).await;
    let (_t, snap) = app.teacher("e1", "t1").await;
    assert_eq!(
        snap["seq"], after_drop,
        "numbering continues, never restarts"
    );
}
