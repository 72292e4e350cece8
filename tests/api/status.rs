//! The server decides status: idle after `exam.idle_after`, disconnected only
//! after the grace period, submitted is final, and a quick reconnect is the
//! same student, not a new one.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

#[tokio::test]
async fn idle_after_silence_then_active_on_progress() {
    let idle_after = Duration::from_millis(200);
    let app = spawn_app_with(|s| s.exam.idle_after = idle_after).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    assert!(is_student_event(&t.next_json().await, "s1", "connected"));
    // Heartbeats all along keep the socket alive but are not activity: the
    // student still goes idle while they keep coming (four or more of them
    // before `idle_after` is up, so each would have restarted the clock).
    let mut beat = tokio::time::interval(idle_after / 4);
    let mut beats = 0;
    let idle = tokio::time::timeout(WAIT, async {
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    s.send_json(json!({"type": "heartbeat", "ref": format!("hb{beats}")})).await;
                    beats += 1;
                }
                ev = t.next_json() => return ev,
            }
        }
    })
    .await
    .expect("the student went idle while sending heartbeats");
    assert!(is_student_event(&idle, "s1", "idle"), "{idle}");
    assert!(beats >= 4, "heartbeats throughout: {beats}");
    assert_eq!(idle["student"]["status"], "idle");
    for i in 0..beats {
        s.expect_ack(format!("hb{i}")).await;
    }
    let alert = t.next_json().await;
    assert_eq!(alert["type"], "alert");
    assert_eq!(alert["kind"], "idle");
    assert_eq!(alert["student_id"], "s1");
    assert_eq!(alert["seq"], idle["seq"].as_u64().unwrap() + 1);
    s.send_json(progress(2, 1)).await;
    let back = t.next_json().await;
    assert!(is_student_event(&back, "s1", "progress"));
    assert_eq!(back["student"]["status"], "active");
}

#[tokio::test]
async fn focus_lost_is_counted_and_alerted() {
    // Nothing folded here (tests/api/limits.rs covers folding).
    let app = spawn_app_with(|s| s.exam.alert_window = Duration::ZERO).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    t.next_of_type("student").await;
    for _ in 0..2 {
        s.send_json(json!({"type": "focus", "state": "lost"})).await;
        s.send_json(json!({"type": "focus", "state": "gained"}))
            .await;
    }
    let mut lost = 0;
    let mut alerts = 0;
    for _ in 0..6 {
        let ev = t.next_json().await;
        match (
            ev["type"].as_str(),
            ev["cause"].as_str(),
            ev["kind"].as_str(),
        ) {
            (Some("student"), Some("focus_lost"), _) => {
                lost += 1;
                assert_eq!(ev["student"]["focus_lost_count"], lost);
            }
            (Some("alert"), _, Some("focus_lost")) => {
                alerts += 1;
                assert_eq!(ev["count"], alerts);
            }
            (Some("student"), Some("focus_gained"), _) => {}
            _ => panic!("unexpected {ev}"),
        }
    }
    assert_eq!((lost, alerts), (2, 2));
}

#[tokio::test]
async fn a_dropped_student_is_disconnected_only_after_the_grace_period() {
    let app = spawn_app_with(|s| s.exam.disconnect_grace = Duration::from_millis(300)).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (s, _) = app.student("e1", "s1").await;
    t.next_of_type("student").await;
    let dropped_at = std::time::Instant::now();
    drop(s); // no close frame: the network just went away
    let ev = t.next_json().await;
    assert!(is_student_event(&ev, "s1", "disconnected"), "{ev}");
    assert!(
        dropped_at.elapsed() >= Duration::from_millis(300),
        "not before the grace period"
    );
    assert_eq!(ev["student"]["status"], "disconnected");
    assert_eq!(ev["student"]["connected"], false);
    let alert = t.next_json().await;
    assert_eq!(
        (alert["type"].as_str(), alert["kind"].as_str()),
        (Some("alert"), Some("disconnected"))
    );
}

#[tokio::test]
async fn reconnect_within_grace_is_reconnected_and_never_disconnected() {
    let grace = Duration::from_millis(400);
    let app = spawn_app_with(|s| s.exam.disconnect_grace = grace).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    s.send_json(progress(4, 3)).await;
    t.next_of_type("student").await; // connected
    t.next_of_type("student").await; // progress
    s.close().await;
    let (_s, welcome) = app.student("e1", "s1").await;
    // The student gets its state back.
    assert_eq!(welcome["student"]["current_question"], 4);
    assert_eq!(welcome["student"]["answered"], 3);
    assert_eq!(welcome["student"]["connections"], 2);
    let ev = t.next_json().await;
    assert!(is_student_event(&ev, "s1", "reconnected"), "{ev}");
    assert_eq!(ev["student"]["status"], "active");
    // Let the old grace period run out, then probe with another student's
    // event: nothing about s1 may have arrived in between.
    tokio::time::sleep(grace * 2).await;
    let (_other, _) = app.student("e1", "probe").await;
    let next = t.next_json().await;
    assert!(is_student_event(&next, "probe", "connected"), "got {next}");
}

#[tokio::test]
async fn submitted_is_final_and_survives_a_drop() {
    let app = spawn_app_with(|s| s.exam.disconnect_grace = Duration::from_millis(100)).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    s.send_json(json!({"type": "submit", "ref": "sub"})).await;
    s.expect_ack("sub").await;
    // A repeated submit is acked, not refused.
    s.send_json(json!({"type": "submit", "ref": "again"})).await;
    s.expect_ack("again").await;
    s.send_json(json!({"type": "progress", "question": 1, "answered": 1, "ref": "late"}))
        .await;
    assert_eq!(
        s.next_json().await,
        json!({"type": "error", "code": "already_submitted",
               "message": "the exam is already submitted", "ref": "late"})
    );
    t.next_of_type("student").await; // connected
    let sub = t.next_json().await;
    assert!(is_student_event(&sub, "s1", "submitted"));
    assert!(sub["student"]["submitted_at"].is_string());
    s.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_t2, snap) = app.teacher("e1", "t2").await;
    assert_eq!(snap["students"][0]["status"], "submitted");
    assert_eq!(snap["counts"]["submitted"], 1);
}

/// docs/PROTOCOL.md 4.8: a connection is closed 2–3 intervals after its
/// last frame, and one that answers pings is never closed.
#[tokio::test]
async fn a_silent_connection_is_closed_after_two_ping_intervals() {
    let interval = Duration::from_millis(300);
    // Scheduling on a loaded machine may delay the close, never advance it.
    let slack = Duration::from_millis(250);
    let app = spawn_app_with(|s| s.ws.ping_interval = interval).await;
    // A control client that reads all along, so its WebSocket layer answers
    // every ping: it must stay open.
    let (mut control, _) = app.student("e1", "control").await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return control,
                frame = control.ws.next() => match frame {
                    Some(Ok(Message::Ping(_))) => continue,
                    other => panic!("the control client got {other:?}"),
                },
            }
        }
    });
    // Before the handshake, so no later than the server's last sight of s1.
    let connecting = std::time::Instant::now();
    let (mut s, _) = app.student("e1", "s1").await;
    // After the welcome, so no earlier than the server's last sight of s1.
    let welcomed = std::time::Instant::now();
    // Not read (so no pong is sent): when the server gives up is seen in
    // its counter, not on the socket, which reading would answer.
    let deadline = welcomed + WAIT;
    while app.metric("examwatch_ping_timeouts_total") == 0 {
        assert!(std::time::Instant::now() < deadline, "never closed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        connecting.elapsed() > interval * 2,
        "not before two intervals: {:?}",
        connecting.elapsed()
    );
    assert!(
        welcomed.elapsed() < interval * 3 + slack,
        "within three intervals: {:?}",
        welcomed.elapsed()
    );
    assert_eq!(
        s.expect_close().await,
        (Some(4000), "ping timeout".to_string())
    );
    // The control client outlived it and still works.
    stop.send(()).expect("the control reader is waiting");
    let mut control = reader.await.expect("control reader");
    control
        .send_json(json!({"type": "heartbeat", "ref": "alive"}))
        .await;
    control.expect_ack("alive").await;
    assert_eq!(app.metric("examwatch_ping_timeouts_total"), 1);
}

/// An event about a student while they are away (here a teacher's
/// `extend`) does not restart an idle clock for them: the next news about
/// them is `disconnected` once the grace period ends, never `idle` (found by
/// the state machine's property tests, src/room/students/props.rs).
#[tokio::test]
async fn an_action_on_an_away_student_does_not_make_them_idle() {
    let app = spawn_app_with(|s| {
        s.exam.idle_after = Duration::from_millis(150);
        s.exam.disconnect_grace = Duration::from_secs(3);
    })
    .await;
    let admin = app.token("admin", examwatch::auth::Role::Admin, &[]);
    let created = app
        .api(reqwest::Method::POST, "/v1/exams", &admin)
        .json(&json!({"id": "e1", "title": "e1", "phase": "in_progress", "duration_seconds": 600}))
        .send()
        .await
        .expect("exam created");
    assert_eq!(created.status(), 201);
    let teacher = app.token("t1", examwatch::auth::Role::Teacher, &["e1"]);
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (s, _) = app.student("e1", "s1").await;
    t.next_of_type("student").await;
    // The server's close reply comes after the room was told of the drop,
    // so the action below reaches a room where s1 is away.
    s.close().await;
    let body = json!({"id": "ext-1", "kind": "extend", "students": ["s1"], "minutes": 5});
    let (status, answer) = post_action(&app, "e1", &teacher, body).await;
    assert_eq!(status, 200, "{answer}");
    let timing = t
        .next_where("s1's new deadline", |v| is_student_event(v, "s1", "timing"))
        .await;
    assert_eq!(timing["student"]["connected"], false, "{timing}");
    let next = t
        .next_where("the next news about s1", |v| {
            let student = v["type"] == "student" && v["student"]["student_id"] == "s1";
            let alert = v["type"] == "alert" && v["student_id"] == "s1";
            (student && v["cause"] != "timing") || alert
        })
        .await;
    assert!(
        is_student_event(&next, "s1", "disconnected"),
        "away is not idle: {next}"
    );
}

#[tokio::test]
async fn a_dropped_student_is_not_reported_idle_while_away() {
    let app = spawn_app_with(|s| {
        s.exam.idle_after = Duration::from_millis(150);
        s.exam.disconnect_grace = Duration::from_millis(500);
    })
    .await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (s, _) = app.student("e1", "s1").await;
    t.next_of_type("student").await;
    drop(s);
    let ev = t.next_json().await;
    assert!(
        is_student_event(&ev, "s1", "disconnected"),
        "away is not idle: {ev}"
    );
}
