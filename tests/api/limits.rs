//! What one student cannot do to an exam: push more messages than the rate
//! limit by reconnecting, change anything after `submit`, claim more progress
//! than the exam has questions, or flood the teachers' alerts.

use std::time::{Duration, Instant};

use examwatch::auth::Role;
use futures_util::SinkExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

#[tokio::test]
async fn reconnecting_does_not_refill_a_students_message_budget() {
    let rate = 5; // per second, bursts of 10
    let app = spawn_app_with(|s| s.limits.messages_per_second = rate).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut other, _) = app.student("e1", "s2").await;
    let started = Instant::now();
    let mut acked = 0;
    // Ten connections in a row, each sending a full burst's worth at once.
    for _ in 0..10 {
        let (mut s, _) = app.student("e1", "s1").await;
        for i in 0..10 {
            s.send_json(json!({"type": "progress", "question": 1, "answered": 0, "ref": i}))
                .await;
        }
        // Every message is answered: acked, or refused unprocessed.
        for _ in 0..10 {
            let reply = s.next_json().await;
            if reply["type"] == "ack" {
                acked += 1;
            } else {
                // No ref (the message was not read), and how long to wait:
                // at most one interval of the sustained rate (200 ms).
                let wait = reply["retry_after_ms"].as_u64().unwrap_or(0);
                assert!((1..=200).contains(&wait), "{reply}");
                assert_eq!(
                    reply,
                    json!({"type": "error", "code": "rate_limited", "message": "more than 5 messages per second", "retry_after_ms": wait})
                );
            }
        }
        s.close().await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Another student has a budget of their own.
    for i in 0..10 {
        other
            .send_json(json!({"type": "progress", "question": 2, "answered": 1, "ref": i}))
            .await;
        assert_eq!(other.next_json().await, json!({"type": "ack", "ref": i}));
    }
    // The teacher's stream is in room order: every s1 event came before s2's last one.
    let (mut s1_progress, mut s2_progress) = (0, 0);
    let in_time = tokio::time::timeout(WAIT, async {
        while s2_progress < 10 {
            let ev = t.next_json().await;
            if is_student_event(&ev, "s1", "progress") {
                s1_progress += 1;
            } else if is_student_event(&ev, "s2", "progress") {
                s2_progress += 1;
            }
        }
    })
    .await;
    assert!(
        in_time.is_ok(),
        "within {WAIT:?}: {s1_progress} s1 and {s2_progress} s2 progress events"
    );
    // A token bucket lets at most its burst plus the rate times the span through.
    let bound = 2 * rate as usize + (f64::from(rate) * elapsed).floor() as usize;
    assert_eq!(s1_progress, acked, "teachers saw exactly what was acked");
    assert!(
        s1_progress <= bound,
        "{s1_progress} events in {elapsed:.2} s; the limit allows {bound}"
    );
}

/// Sends heartbeats `refs` at once and returns the replies, in order (a
/// refusal has no `ref`, and errors may overtake acks: 1.6).
async fn heartbeats(c: &mut Client, refs: std::ops::Range<u32>) -> Vec<Value> {
    let n = refs.len();
    for r in refs {
        c.send_json(json!({"type": "heartbeat", "ref": r})).await;
    }
    let mut replies = Vec::new();
    for _ in 0..n {
        replies.push(c.next_json().await);
    }
    replies
}

fn acks(replies: &[Value]) -> usize {
    replies.iter().filter(|r| r["type"] == "ack").count()
}

#[tokio::test]
async fn a_rate_limited_message_says_how_long_to_wait_and_that_wait_is_enough() {
    let app = spawn_app_with(|s| s.limits.messages_per_second = 2).await; // bursts of 4
    let (mut s, _) = app.student("e1", "s1").await;
    let replies = heartbeats(&mut s, 0..5).await;
    assert_eq!(acks(&replies), 4, "{replies:?}");
    let refused = replies
        .iter()
        .find(|r| r["type"] == "error")
        .expect("one refused");
    assert_eq!(refused["code"], "rate_limited");
    let wait = refused["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(
        (1..=500).contains(&wait),
        "one message comes back every 500 ms: {refused}"
    );
    tokio::time::sleep(Duration::from_millis(wait)).await;
    s.send_json(json!({"type": "heartbeat", "ref": "after"}))
        .await;
    s.expect_ack("after").await;
}

#[tokio::test]
async fn a_minute_is_a_sliding_window_shared_by_a_students_connections() {
    let window = Duration::from_secs(4); // "a minute", shortened for the test
    let app = spawn_app_with(|s| {
        s.limits.messages_per_second = 100;
        s.limits.messages_per_minute = 30;
        s.limits.message_window = window;
    })
    .await;
    let started = Instant::now();
    let (mut s, _) = app.student("e1", "s1").await;
    assert_eq!(acks(&heartbeats(&mut s, 0..20).await), 20);
    // Reconnecting does not refill it: 10 more, then the 31st is refused.
    s.close().await;
    let (mut s, _) = app.student("e1", "s1").await;
    assert_eq!(acks(&heartbeats(&mut s, 20..30).await), 10);
    let replies = heartbeats(&mut s, 30..31).await;
    let elapsed = started.elapsed();
    let refused = &replies[0];
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert_eq!(refused["message"], "more than 30 messages per 4000 ms");
    // Until the first of the 30 is a window old: within (window - elapsed, window].
    let wait = Duration::from_millis(refused["retry_after_ms"].as_u64().expect("a wait"));
    assert!(
        wait <= window && wait + elapsed >= window,
        "{wait:?} after {elapsed:?} in a window of {window:?}"
    );
    // Another student has a window of their own.
    let (mut other, _) = app.student("e1", "s2").await;
    assert_eq!(acks(&heartbeats(&mut other, 0..30).await), 30);
    // Waiting as told is enough.
    tokio::time::sleep(wait).await;
    s.send_json(json!({"type": "heartbeat", "ref": "after"}))
        .await;
    s.expect_ack("after").await;
}

#[tokio::test]
async fn nothing_behind_submit_is_stored_even_in_the_same_segment() {
    let app = spawn_app().await;
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let (mut s, _) = app.student("e1", "s1").await;
    // Three frames in one write: they reach the server together.
    for frame in [
        json!({"type": "submit", "ref": "final"}),
        json!({"type": "answer", "id": "late-1", "question": "q1", "value": "B", "ref": "late"}),
        json!({"type": "progress", "question": "q2", "answered": 1, "ref": "later"}),
    ] {
        s.ws.feed(Message::text(frame.to_string())).await.unwrap();
    }
    s.ws.flush().await.unwrap();
    let mut replies = Vec::new();
    for _ in 0..3 {
        replies.push(s.next_json().await);
    }
    // Errors are sent at once, the ack after the commit: match by ref.
    let reply = |r: &str| {
        replies
            .iter()
            .find(|v| v["ref"] == r)
            .cloned()
            .unwrap_or_else(|| panic!("no reply for {r}: {replies:?}"))
    };
    assert_eq!(reply("final"), json!({"type": "ack", "ref": "final"}));
    for r in ["late", "later"] {
        assert_eq!(
            reply(r),
            json!({"type": "error", "code": "already_submitted", "message": "the exam is already submitted", "ref": r})
        );
    }
    app.flushed().await;
    let stored = app
        .get_json("/v1/exams/e1/students/s1/answers", &teacher)
        .await;
    assert_eq!(
        stored["answers"],
        json!([]),
        "no answer after the submission"
    );
}

#[tokio::test]
async fn progress_beyond_the_exams_total_is_invalid() {
    let app = spawn_app().await;
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let created = app
        .api(Method::POST, "/v1/exams", &teacher)
        .json(&json!({"id": "e1", "title": "T", "settings": {"total_questions": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    let invalid = |r: &str| json!({"type": "error", "code": "invalid_message", "message": "answered or question is beyond the exam's total_questions", "ref": r});
    for (msg, r) in [
        (
            json!({"type": "progress", "question": 1, "answered": 4294967295_u32}),
            "a",
        ),
        (
            json!({"type": "progress", "question": 1, "answered": 6}),
            "b",
        ),
        (
            json!({"type": "progress", "question": 6, "answered": 0}),
            "c",
        ),
        (
            json!({"type": "answer", "id": "x", "question": 6, "value": 1}),
            "d",
        ),
    ] {
        let mut msg = msg;
        msg["ref"] = json!(r);
        s.send_json(msg).await;
        assert_eq!(s.next_json().await, invalid(r));
    }
    // Refused by the room, and counted like the socket's own refusals.
    assert_eq!(app.metric("examwatch_bad_messages_total"), 4);
    // Up to the total is fine, and it is all teachers ever saw.
    s.send_json(json!({"type": "progress", "question": 5, "answered": 5, "ref": "ok"}))
        .await;
    assert_eq!(s.next_json().await, json!({"type": "ack", "ref": "ok"}));
    assert!(is_student_event(&t.next_json().await, "s1", "connected"));
    let ev = t.next_json().await;
    assert!(is_student_event(&ev, "s1", "progress"), "{ev}");
    assert_eq!(ev["student"]["answered"], 5);
    app.flushed().await;
    let answers = app
        .get_json("/v1/exams/e1/students/s1/answers", &teacher)
        .await;
    assert_eq!(answers["answers"], json!([]));
}

/// The alerts a teacher receives until `done` says it has seen enough.
/// Fails with the alerts seen if `done` does not hold within `WAIT` in all.
async fn alerts_until(t: &mut Client, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let mut alerts = Vec::new();
    let in_time = tokio::time::timeout(WAIT, async {
        while !done(&alerts) {
            let ev = t.next_json().await;
            if ev["type"] == "alert" {
                alerts.push(ev);
            }
        }
    })
    .await;
    assert!(
        in_time.is_ok(),
        "within {WAIT:?}, only these alerts: {alerts:#?}"
    );
    alerts
}

#[tokio::test]
async fn one_students_alert_flood_is_folded_and_others_are_still_alerted() {
    let window = Duration::from_millis(500);
    let app = spawn_app_with(|s| {
        s.exam.alert_window = window;
        s.limits.messages_per_second = 1000;
    })
    .await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s1, _) = app.student("e1", "s1").await;
    let (mut s2, _) = app.student("e1", "s2").await;
    let started = Instant::now();
    for _ in 0..50 {
        s1.send_json(json!({"type": "focus", "state": "lost"}))
            .await;
        s1.send_json(json!({"type": "focus", "state": "gained"}))
            .await;
    }
    s1.send_json(json!({"type": "heartbeat", "ref": "done"}))
        .await;
    assert_eq!(s1.next_json().await, json!({"type": "ack", "ref": "done"}));
    s2.send_json(json!({"type": "focus", "state": "lost"}))
        .await;
    // Until s2's alert and the one that reports all 50 of s1's.
    let alerts = alerts_until(&mut t, |seen| {
        seen.iter().any(|a| a["student_id"] == "s2")
            && seen
                .iter()
                .any(|a| a["student_id"] == "s1" && a["count"] == 50)
    })
    .await;
    let span = started.elapsed();
    let s1_counts: Vec<u64> = alerts
        .iter()
        .filter(|a| a["student_id"] == "s1")
        .map(|a| {
            assert_eq!(a["kind"], "focus_lost");
            a["count"].as_u64().expect("an alert carries its count")
        })
        .collect();
    // The first is sent at once; each later one opens a window of its own.
    assert_eq!(s1_counts.first(), Some(&1));
    assert!(s1_counts.windows(2).all(|w| w[0] < w[1]), "{s1_counts:?}");
    let bound = 1 + (span.as_millis() / window.as_millis()) as usize;
    assert!(
        s1_counts.len() <= bound,
        "{} alerts in {span:?}: {s1_counts:?}",
        s1_counts.len()
    );
    let s2_alert = alerts.iter().find(|a| a["student_id"] == "s2").unwrap();
    assert_eq!(
        (&s2_alert["kind"], &s2_alert["count"]),
        (&json!("focus_lost"), &json!(1))
    );
    // The student's state counts every one of them.
    let (_t2, snapshot) = app.teacher("e1", "t2").await;
    let s1 = snapshot["students"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["student_id"] == "s1")
        .unwrap();
    assert_eq!(s1["alerts"], json!({"focus_lost": 50}));
    assert_eq!(s1["focus_lost_count"], 50);
}

/// A room that started before its exam was created (students connected
/// first) learns the total when the exam is created, and bounds progress
/// from then on.
#[tokio::test]
async fn an_exam_created_after_its_room_started_still_bounds_progress() {
    let app = spawn_app().await;
    // A watcher starts the room before the exam exists.
    let teacher = app.token("t1", Role::Teacher, &["late"]);
    let mut t = app
        .try_connect_as_is(&app.ws_url("late"), Some(&teacher), &[])
        .await
        .unwrap();
    assert_eq!(t.snapshot().await["phase"], "draft", "no such exam yet");
    let created = app
        .api(Method::POST, "/v1/exams", &teacher)
        .json(&json!({"id": "late", "title": "T", "phase": "in_progress", "settings": {"total_questions": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let (mut s, _) = app.student("late", "s1").await;
    s.send_json(json!({"type": "progress", "question": 1, "answered": 6, "ref": "after"}))
        .await;
    assert_eq!(
        s.next_json().await,
        json!({"type": "error", "code": "invalid_message", "message": "answered or question is beyond the exam's total_questions", "ref": "after"})
    );
}
