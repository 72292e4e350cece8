//! The message rules of docs/PROTOCOL.md 1.7, 2 and 2.1 that no other
//! module exercises: which refusals spend the bad-message budget and for
//! how long, the exact size limit, `activity active`, question ids compared
//! as text, `value: null`, a teacher's `answer`, and what still works after
//! a submission. Replies are compared whole.

use std::time::Duration;

use examwatch::auth::Role;
use serde_json::{Value, json};

use crate::helpers::*;

fn ack(r: &str) -> Value {
    json!({"type": "ack", "ref": r})
}

/// Sends a heartbeat and expects its ack: the socket is still open.
async fn still_open(c: &mut Client, r: &str) {
    c.send_json(json!({"type": "heartbeat", "ref": r})).await;
    assert_eq!(c.next_json().await, ack(r));
}

#[tokio::test]
async fn already_submitted_and_invalid_announcement_do_not_spend_the_budget() {
    let app = spawn_app_with(|s| s.limits.max_bad_messages = 3).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    s.send_json(json!({"type": "submit", "ref": "sub"})).await;
    assert_eq!(s.next_json().await, ack("sub"));
    // Twice the budget of each: none closes the socket.
    for i in 0..6 {
        let r = format!("late-{i}");
        s.send_json(json!({"type": "progress", "question": 1, "answered": 1, "ref": r}))
            .await;
        assert_eq!(
            s.next_json().await,
            json!({"type": "error", "code": "already_submitted",
                "message": "the exam is already submitted", "ref": r})
        );
        let r = format!("empty-{i}");
        t.send_json(json!({"type": "announce", "text": "  ", "ref": r}))
            .await;
        let err = t.next_of_type("error").await;
        assert_eq!(
            (&err["code"], &err["ref"]),
            (&json!("invalid_announcement"), &json!(r))
        );
    }
    still_open(&mut s, "s-open").await;
    still_open(&mut t, "t-open").await;
    // The control: three refusals that do count close at once.
    for i in 0..3 {
        s.send_json(json!({"type": "nonsense", "ref": i})).await;
        assert_eq!(s.next_json().await["code"], "unknown_type");
    }
    assert_eq!(
        s.expect_close().await,
        (Some(1007), "too many invalid messages".into())
    );
}

#[tokio::test]
async fn the_bad_message_budget_starts_again_after_its_window() {
    // Long enough that the last three refusals surely fall in one window
    // on a loaded machine, short enough for a test.
    let window = Duration::from_secs(1);
    let app = spawn_app_with(|s| {
        s.limits.max_bad_messages = 3;
        s.limits.bad_message_window = window;
    })
    .await;
    let (mut s, _) = app.student("e1", "s1").await;
    for _ in 0..2 {
        s.send_text("garbage").await;
        assert_eq!(s.next_json().await["code"], "invalid_json");
    }
    // The point is time passing: nothing to await but the clock.
    tokio::time::sleep(window + Duration::from_millis(200)).await;
    // Two more in the new window: still under the budget of three.
    for _ in 0..2 {
        s.send_text("garbage").await;
        assert_eq!(s.next_json().await["code"], "invalid_json");
    }
    still_open(&mut s, "open").await;
    // The third of this window closes, with its error first.
    s.send_text("garbage").await;
    assert_eq!(
        s.next_json().await,
        json!({"type": "error", "code": "invalid_json", "message": s_last_message()})
    );
    assert_eq!(
        s.expect_close().await,
        (Some(1007), "too many invalid messages".into())
    );
}

/// The server's wording for "garbage" (not JSON): read from a throwaway
/// socket would be circular, so it is pinned here.
fn s_last_message() -> Value {
    json!("expected a JSON object")
}

#[tokio::test]
async fn a_message_of_exactly_max_message_bytes_is_accepted() {
    let max = 1024;
    let app = spawn_app_with(|s| s.limits.max_message_bytes = max).await;
    let (mut s, _) = app.student("e1", "s1").await;
    let padded = |len: usize| {
        let bare = r#"{"type":"heartbeat","ref":"big","pad":""}"#.len();
        let text = format!(
            r#"{{"type":"heartbeat","ref":"big","pad":"{}"}}"#,
            "x".repeat(len - bare)
        );
        assert_eq!(text.len(), len);
        text
    };
    s.send_text(&padded(max)).await;
    assert_eq!(s.next_json().await, ack("big"));
    // One byte more: closed with 1009, and nothing sent before the close.
    s.send_text(&padded(max + 1)).await;
    match s.next().await {
        Next::Closed(code, reason) => {
            assert_eq!((code, reason.as_str()), (Some(1009), "message too big"))
        }
        Next::Json(v) => panic!("expected the 1009 close, got {v}"),
    }
}

#[tokio::test]
async fn activity_active_wakes_an_idle_student_and_is_silent_when_already_active() {
    let app = spawn_app().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    assert!(is_student_event(&t.next_json().await, "s1", "connected"));
    s.send_json(json!({"type": "activity", "state": "idle", "ref": "i"}))
        .await;
    assert_eq!(s.next_json().await, ack("i"));
    let idle = t.next_json().await;
    assert!(is_student_event(&idle, "s1", "idle"), "{idle}");
    assert_eq!(idle["student"]["status"], "idle");
    let alert = t.next_json().await;
    assert_eq!(
        (&alert["type"], &alert["kind"]),
        (&json!("alert"), &json!("idle"))
    );

    // Timestamps have millisecond resolution: let the clock move on, so a
    // refreshed `last_activity` differs from the one set at connect.
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.send_json(json!({"type": "activity", "state": "active", "ref": "a1"}))
        .await;
    assert_eq!(s.next_json().await, ack("a1"));
    let active = t.next_json().await;
    assert!(is_student_event(&active, "s1", "active"), "{active}");
    assert_eq!(active["student"]["status"], "active");
    assert_ne!(
        active["student"]["last_activity"], idle["student"]["last_activity"],
        "`activity active` refreshes last_activity"
    );
    // Already active: acked, no event. The next event teachers get is the
    // progress sent after it.
    s.send_json(json!({"type": "activity", "state": "active", "ref": "a2"}))
        .await;
    assert_eq!(s.next_json().await, ack("a2"));
    s.send_json(json!({"type": "progress", "question": "q1", "answered": 0, "ref": "p"}))
        .await;
    assert_eq!(s.next_json().await, ack("p"));
    let next = t.next_json().await;
    assert!(is_student_event(&next, "s1", "progress"), "{next}");
}

#[tokio::test]
async fn a_numeric_and_a_string_question_are_one_question_and_null_is_a_value() {
    let app = spawn_app().await;
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    assert!(is_student_event(&t.next_json().await, "s1", "connected"));
    let answer = |id: &str, q: Value, value: Value| json!({"type": "answer", "id": id, "question": q, "value": value, "ref": id});
    s.send_json(answer("a1", json!(3), json!("B"))).await;
    assert_eq!(s.next_json().await, ack("a1"));
    let first = t.next_json().await;
    assert!(is_student_event(&first, "s1", "answered"), "{first}");
    assert_eq!(first["student"]["answered"], 1);
    // "3" is question 3 again: stored, acked, no `answered` event.
    s.send_json(answer("a2", json!("3"), Value::Null)).await;
    assert_eq!(s.next_json().await, ack("a2"));
    s.send_json(answer("a3", json!(4), Value::Null)).await;
    assert_eq!(s.next_json().await, ack("a3"));
    let next = t.next_json().await;
    assert!(is_student_event(&next, "s1", "answered"), "{next}");
    // The event of question 4, not one of "3": that sent none.
    assert_eq!(next["student"]["current_question"], 4, "{next}");
    assert_eq!(next["student"]["answered"], 2, "questions 3 and 4");
    // A missing `value` is not `null`.
    s.send_json(json!({"type": "answer", "id": "a4", "question": 5, "ref": "a4"}))
        .await;
    let err = s.next_json().await;
    assert_eq!(
        (&err["type"], &err["code"], &err["ref"]),
        (&json!("error"), &json!("invalid_message"), &json!("a4"))
    );
    let stored = app
        .get_json("/v1/exams/e1/students/s1/answers", &teacher)
        .await;
    let values: Vec<Value> = stored["answers"]
        .as_array()
        .expect("answers")
        .iter()
        .map(|a| json!([a["id"], a["question"], a["value"]]))
        .collect();
    assert_eq!(
        values,
        vec![
            json!(["a1", "3", "B"]),
            json!(["a2", "3", null]),
            json!(["a3", "4", null]),
        ]
    );
}

#[tokio::test]
async fn a_teacher_answer_is_forbidden() {
    let app = spawn_app().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    t.send_json(json!({"type": "answer", "id": "x", "question": 1, "value": 1, "ref": "ans"}))
        .await;
    assert_eq!(
        t.next_json().await,
        json!({"type": "error", "code": "forbidden",
            "message": "`answer` is not allowed for role teacher", "ref": "ans"})
    );
    still_open(&mut t, "open").await;
}

#[tokio::test]
async fn heartbeat_resume_and_submit_still_work_after_submission() {
    let app = spawn_app().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    t.send_json(json!({"type": "announce", "text": "hello", "ref": "an"}))
        .await;
    let announcement = s.next_json().await;
    assert_eq!(announcement["type"], "announcement");
    s.send_json(json!({"type": "submit", "ref": "sub"})).await;
    assert_eq!(s.next_json().await, ack("sub"));
    still_open(&mut s, "hb").await;
    s.send_json(json!({"type": "resume", "last_seq": 0, "ref": "r"}))
        .await;
    let resumed = s.next_json().await;
    assert_eq!(
        (&resumed["type"], &resumed["recovered"]),
        (&json!("resumed"), &json!(true))
    );
    assert_eq!(
        s.next_json().await,
        announcement,
        "the replayed announcement"
    );
    assert_eq!(s.next_json().await, ack("r"));
    s.send_json(json!({"type": "submit", "ref": "again"})).await;
    assert_eq!(s.next_json().await, ack("again"));
}
