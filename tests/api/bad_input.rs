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
            Some(json!("r1")),
        ),
        (r#"{"ref":"r2"}"#, "unknown_type", Some(json!("r2"))),
        (
            r#"{"type":"progress","question":1,"answered":"three","ref":"r3"}"#,
            "invalid_message",
            Some(json!("r3")),
        ),
        (
            r#"{"type":"activity","state":"sleeping","ref":4}"#,
            "invalid_message",
            Some(json!(4)),
        ),
        (
            r#"{"type":"resume","last_seq":-1}"#,
            "invalid_message",
            None,
        ),
        (
            r#"{"type":"announce","text":"hi","ref":"r5"}"#,
            "forbidden",
            Some(json!("r5")),
        ),
    ];
    for (frame, code, r#ref) in cases {
        s.send_text(frame).await;
        let err = s.next_json().await;
        assert_eq!(err["type"], "error", "{frame}");
        assert_eq!(err["code"], code, "{frame}: {err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        // The `ref` is echoed when known, and absent (not null) otherwise.
        assert_eq!(err.get("ref"), r#ref.as_ref(), "{frame}: {err}");
    }
    let long_ref = "x".repeat(65);
    s.send_json(json!({"type": "heartbeat", "ref": long_ref}))
        .await;
    let err = s.next_json().await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str(), err.get("ref")),
        (Some("error"), Some("invalid_ref"), None),
        "{err}"
    );
    // Still usable.
    s.send_json(json!({"type": "heartbeat", "ref": "ok"})).await;
    assert_eq!(s.next_json().await, ack("ok"));
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
    let err = t.next_json().await;
    assert_eq!(
        (
            err["type"].as_str(),
            err["code"].as_str(),
            err["ref"].as_str()
        ),
        (Some("error"), Some("invalid_announcement"), Some("y")),
        "{err}"
    );
}

#[tokio::test]
async fn binary_frames_close_with_1003() {
    let app = spawn_app().await;
    let (mut s, _) = app.student("e1", "s1").await;
    s.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    next_is_close(&mut s, 1003, "binary frames are not supported").await;
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
    // No `error` first (docs/PROTOCOL.md 1.7): the close is the next frame.
    next_is_close(&mut s, 1009, "message too big").await;
    // Far over the limit: cut off by the WebSocket layer, still 1009.
    let (mut s2, _) = app.student("e1", "s2").await;
    let _ = s2.ws.send(Message::text("y".repeat(200 * 1024))).await;
    next_is_close(&mut s2, 1009, "message too big").await;
}

#[tokio::test]
async fn repeated_invalid_data_closes_1007_and_repeated_misuse_1008() {
    let app = spawn_app_with(|s| s.limits.max_bad_messages = 3).await;
    let (mut s, _) = app.student("e1", "s1").await;
    for _ in 0..3 {
        s.send_text("garbage").await;
    }
    // Every refusal, the last included, gets its error before the close.
    for _ in 0..3 {
        assert_eq!(s.next_json().await["code"], "invalid_json");
    }
    next_is_close(&mut s, 1007, "too many invalid messages").await;
    let (mut s2, _) = app.student("e1", "s2").await;
    for _ in 0..3 {
        s2.send_json(json!({"type": "announce", "text": "hi"}))
            .await;
    }
    for _ in 0..3 {
        assert_eq!(s2.next_json().await["code"], "forbidden");
    }
    next_is_close(&mut s2, 1008, "too many rejected messages").await;
}

#[tokio::test]
async fn floods_are_rate_limited() {
    // 2/s sustained, so a burst of 4 (docs/PROTOCOL.md 1.7). At one token
    // per 500 ms, a flood written at once is processed long before another
    // token is due: exactly 4 acks and 20 refusals.
    let app = spawn_app_with(|s| {
        s.limits.messages_per_second = 2;
        s.limits.max_bad_messages = 1000;
    })
    .await;
    let (mut s, _) = app.student("e1", "s1").await;
    for i in 0..24 {
        let frame = json!({"type": "heartbeat", "ref": i}).to_string();
        s.ws.feed(Message::text(frame))
            .await
            .expect("queue a frame");
    }
    s.ws.flush().await.expect("send the flood");
    let (mut acked, mut limited) = (Vec::new(), 0);
    for _ in 0..24 {
        let v = s.next_json().await;
        if v["type"] == "ack" {
            acked.push(v);
        } else {
            assert_eq!(
                (v["type"].as_str(), v["code"].as_str(), v.get("ref")),
                (Some("error"), Some("rate_limited"), None),
                "a refusal has no `ref`: {v}"
            );
            limited += 1;
        }
    }
    assert_eq!(
        acked,
        [ack(0), ack(1), ack(2), ack(3)],
        "the burst, in order"
    );
    assert_eq!(limited, 20, "the rest refused");
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
    for (i, a) in abusers.iter_mut().enumerate() {
        assert_eq!(a.next_json().await["type"], "welcome");
        match i % 3 {
            0 => next_is_close(a, 1003, "binary frames are not supported").await,
            1 => {
                for _ in 0..2 {
                    assert_eq!(a.next_json().await["code"], "invalid_json");
                }
                next_is_close(a, 1007, "too many invalid messages").await
            }
            _ => next_is_close(a, 1009, "message too big").await,
        }
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
    next_is_close(&mut s, 1007, "text frame is not valid UTF-8").await;
    // The teacher's connection is untouched.
    t.send_json(json!({"type": "heartbeat", "ref": "alive"}))
        .await;
    t.expect_ack("alive").await;
}

/// The very next thing `c` sees (nothing before it) is the close `code`
/// with `reason`.
async fn next_is_close(c: &mut Client, code: u16, reason: &str) {
    match c.next().await {
        Next::Closed(got, why) => {
            assert_eq!((got, why.as_str()), (Some(code), reason), "the close")
        }
        Next::Json(v) => panic!("expected close {code} first, got {v}"),
    }
}
