//! Bad input never hurts anyone else: each mistake gets an `error`, repeated
//! or oversized abuse gets a documented close code, and the exam goes on.

use examwatch::auth::Role;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

#[tokio::test]
async fn each_bad_message_gets_a_clear_error_and_the_socket_stays_open() {
    let app = spawn_app().await;
    let (mut s, _) = app.student("e1", "s1").await;
    let cases = [
        ("{not json", "invalid_json", None),
        ("[1,2,3]", "invalid_json", None),
        (
            r#"{"type":"teleport","ref":"r1"}"#,
            "unknown_type",
            Some("r1"),
        ),
        (r#"{"ref":"r2"}"#, "unknown_type", Some("r2")),
        (
            r#"{"type":"progress","question":1,"answered":"three","ref":"r3"}"#,
            "invalid_message",
            Some("r3"),
        ),
        (
            r#"{"type":"activity","state":"sleeping","ref":4}"#,
            "invalid_message",
            None,
        ),
        (
            r#"{"type":"resume","last_seq":-1}"#,
            "invalid_message",
            None,
        ),
        (
            r#"{"type":"announce","text":"hi","ref":"r5"}"#,
            "forbidden",
            Some("r5"),
        ),
    ];
    for (frame, code, r#ref) in cases {
        s.send_text(frame).await;
        let err = s.next_json().await;
        assert_eq!(err["type"], "error", "{frame}");
        assert_eq!(err["code"], code, "{frame}: {err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        if let Some(r) = r#ref {
            assert_eq!(err["ref"], r, "{frame}");
        }
    }
    let long_ref = "x".repeat(65);
    s.send_json(json!({"type": "heartbeat", "ref": long_ref}))
        .await;
    assert_eq!(s.next_json().await["code"], "invalid_ref");
    // Still usable.
    s.send_json(json!({"type": "heartbeat", "ref": "ok"})).await;
    assert_eq!(s.next_json().await, json!({"type": "ack", "ref": "ok"}));
}

#[tokio::test]
async fn a_teacher_cannot_send_student_messages() {
    let app = spawn_app().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    t.send_json(json!({"type": "submit", "ref": "x"})).await;
    let err = t.next_json().await;
    assert_eq!(
        (err["code"].as_str(), err["ref"].as_str()),
        (Some("forbidden"), Some("x"))
    );
    t.send_json(json!({"type": "announce", "text": "   ", "ref": "y"}))
        .await;
    assert_eq!(t.next_json().await["code"], "invalid_announcement");
}

#[tokio::test]
async fn binary_frames_close_with_1003() {
    let app = spawn_app().await;
    let (mut s, _) = app.student("e1", "s1").await;
    s.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(s.expect_close().await.0, Some(1003));
}

#[tokio::test]
async fn frames_over_the_limit_close_with_1009() {
    let app = spawn_app().await;
    let (mut s, _) = app.student("e1", "s1").await;
    let big = format!(
        r#"{{"type":"heartbeat","pad":"{}"}}"#,
        "x".repeat(17 * 1024)
    );
    s.send_text(&big).await;
    assert_eq!(s.expect_close().await.0, Some(1009));
    // Far over the limit: cut off by the WebSocket layer, still 1009.
    let (mut s2, _) = app.student("e1", "s2").await;
    let _ = s2.ws.send(Message::text("y".repeat(200 * 1024))).await;
    assert_eq!(s2.expect_close().await.0, Some(1009));
}

#[tokio::test]
async fn repeated_invalid_data_closes_1007_and_repeated_misuse_1008() {
    let app = spawn_app_with(|s| s.limits.max_bad_messages = 3).await;
    let (mut s, _) = app.student("e1", "s1").await;
    for _ in 0..3 {
        s.send_text("garbage").await;
    }
    assert_eq!(s.expect_close().await.0, Some(1007));
    let (mut s2, _) = app.student("e1", "s2").await;
    for _ in 0..3 {
        s2.send_json(json!({"type": "announce", "text": "hi"}))
            .await;
    }
    assert_eq!(s2.expect_close().await.0, Some(1008));
}

#[tokio::test]
async fn floods_are_rate_limited() {
    let app = spawn_app_with(|s| {
        s.limits.messages_per_second = 5;
        s.limits.max_bad_messages = 1000;
    })
    .await;
    let (mut s, _) = app.student("e1", "s1").await;
    for i in 0..30 {
        s.send_json(json!({"type": "heartbeat", "ref": i})).await;
    }
    let mut limited = 0;
    for _ in 0..30 {
        let v = s.next_json().await;
        if v["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(
        limited >= 15,
        "burst of 10 allowed, the rest refused: {limited}"
    );
}

#[tokio::test]
async fn abuse_on_one_socket_does_not_disturb_the_exam() {
    let app = spawn_app_with(|s| s.limits.max_bad_messages = 2).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut good, _) = app.student("e1", "good").await;
    t.next_of_type("student").await;
    let mut abusers = Vec::new();
    for i in 0..5 {
        let token = app.token(&format!("bad{i}"), Role::Student, &["e1"]);
        abusers.push(app.connect("e1", &token).await);
    }
    for (i, a) in abusers.iter_mut().enumerate() {
        match i % 3 {
            0 => a.ws.send(Message::binary(vec![0u8; 10])).await.unwrap(),
            1 => {
                a.send_text("{{{").await;
                a.send_text("{{{").await;
            }
            _ => a.send_text(&"z".repeat(20_000)).await,
        }
    }
    for a in abusers.iter_mut() {
        assert!(a.expect_close().await.0.is_some());
    }
    good.send_json(progress(1, 1)).await;
    // Teachers see the abusers come and go, and the good student's progress.
    let ev = t
        .next_where("good's progress", |ev| {
            is_student_event(ev, "good", "progress")
        })
        .await;
    assert_eq!(ev["student"]["answered"], 1);
}

#[tokio::test]
async fn text_that_is_not_utf8_closes_with_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let app = spawn_app().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    s.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(s.expect_close().await.0, Some(1007));
    // The teacher's connection is untouched.
    t.send_json(json!({"type": "heartbeat", "ref": "alive"}))
        .await;
    assert_eq!(t.next_of_type("ack").await["ref"], "alive");
}
