//! Room behaviour of docs/PROTOCOL.md 3.1, 4.2, 4.5, 4.6 and 4.10 that no
//! other module exercises: snapshot order, which reconnects update `name`,
//! a clean student close starting the grace period, a student replay too
//! large for its queue, and an exam whose state (or roster) cannot be read.

use std::time::Duration;

use examwatch::auth::Role;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, protocol::CloseFrame};

use crate::helpers::*;

fn ack(r: &str) -> Value {
    json!({"type": "ack", "ref": r})
}

/// A student token with a chosen display name.
fn named(app: &TestApp, sub: &str, name: &str) -> String {
    app.keys
        .mint(
            sub,
            name,
            Role::Student,
            vec!["e1".into()],
            Duration::from_secs(600),
        )
        .expect("mint")
}

#[tokio::test]
async fn the_snapshot_lists_students_sorted_by_student_id() {
    let app = spawn_app().await;
    // Joined out of order; sorted as strings ("s10" before "s2").
    let mut held = Vec::new();
    for sub in ["s3", "s10", "b", "s1", "s2", "a"] {
        held.push(app.student("e1", sub).await.0);
    }
    let (_t, snapshot) = app.teacher("e1", "t1").await;
    let order: Vec<&str> = snapshot["students"]
        .as_array()
        .expect("students")
        .iter()
        .map(|s| s["student_id"].as_str().expect("an id"))
        .collect();
    assert_eq!(order, ["a", "b", "s1", "s10", "s2", "s3"]);
}

#[tokio::test]
async fn name_is_updated_on_reconnect_but_not_on_takeover() {
    let app = spawn_app_with(|s| s.exam.disconnect_grace = Duration::from_secs(30)).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let mut first = app.connect("e1", &named(&app, "s1", "Ada")).await;
    assert_eq!(first.next_json().await["student"]["name"], "Ada");
    assert!(is_student_event(&t.next_json().await, "s1", "connected"));
    first.close().await;

    // A reconnect takes the new token's name...
    let mut second = app.connect("e1", &named(&app, "s1", "Ada Lovelace")).await;
    let welcome = second.next_json().await;
    assert_eq!(welcome["student"]["name"], "Ada Lovelace");
    let ev = t.next_json().await;
    assert!(is_student_event(&ev, "s1", "reconnected"), "{ev}");
    assert_eq!(ev["student"]["name"], "Ada Lovelace");
    second.close().await;

    // ...unless it is empty.
    let mut third = app.connect("e1", &named(&app, "s1", "")).await;
    assert_eq!(third.next_json().await["student"]["name"], "Ada Lovelace");
    let ev = t.next_json().await;
    assert!(is_student_event(&ev, "s1", "reconnected"), "{ev}");

    // A takeover (the old socket is open) keeps the name.
    let mut fourth = app.connect("e1", &named(&app, "s1", "Someone Else")).await;
    let welcome = fourth.next_of_type("welcome").await;
    assert_eq!(welcome["student"]["name"], "Ada Lovelace");
    let ev = t.next_json().await;
    assert!(is_student_event(&ev, "s1", "second_session"), "{ev}");
    assert_eq!(ev["student"]["name"], "Ada Lovelace");
    assert_eq!(
        third.next_json().await,
        json!({"type": "session_invalidated", "reason": "second_session"})
    );
}

#[tokio::test]
async fn a_students_normal_close_starts_the_grace_period() {
    let grace = Duration::from_millis(300);
    let app = spawn_app_with(|s| s.exam.disconnect_grace = grace).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    assert!(is_student_event(&t.next_json().await, "s1", "connected"));
    // Taken before the close is sent: the server cannot start the grace
    // period earlier.
    let closing = tokio::time::Instant::now();
    s.ws.close(Some(CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .expect("close sent");
    // Closing is not submitting: after the grace, `disconnected` + alert,
    // and nothing before it.
    let ev = t.next_json().await;
    assert!(
        closing.elapsed() >= grace,
        "reported before the grace ended"
    );
    assert!(is_student_event(&ev, "s1", "disconnected"), "{ev}");
    assert_eq!(
        (&ev["student"]["status"], &ev["student"]["connected"]),
        (&json!("disconnected"), &json!(false))
    );
    let alert = t.next_json().await;
    assert_eq!(
        (&alert["type"], &alert["kind"], &alert["student_id"]),
        (&json!("alert"), &json!("disconnected"), &json!("s1"))
    );
}

#[tokio::test]
async fn a_student_replay_larger_than_its_queue_closes_4008() {
    let app = spawn_app_with(|s| s.ws.student_queue = 4).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let mut seqs = Vec::new();
    for i in 0..12 {
        let r = format!("an-{i}");
        t.send_json(json!({"type": "announce", "text": format!("note {i}"), "ref": r}))
            .await;
        // The teacher's own copy, then its ack.
        let copy = t.next_json().await;
        assert_eq!(copy["type"], "announcement");
        seqs.push(copy["seq"].as_u64().expect("a seq"));
        assert_eq!(t.next_json().await, ack(&r));
    }
    let (mut s, _) = app.student("e1", "s1").await;
    // Resuming from 0 needs 12 slots of 4. Without a `ref`, so the close
    // comes from the replay itself, not from an ack that finds no room.
    s.send_json(json!({"type": "resume", "last_seq": 0})).await;
    assert_eq!(s.next_json().await["type"], "resumed");
    loop {
        match s.next().await {
            Next::Json(v) => assert_eq!(v["type"], "announcement", "{v}"),
            Next::Closed(code, reason) => {
                assert_eq!((code, reason.as_str()), (Some(4008), "too slow"));
                break;
            }
        }
    }
    // A replay that fits is delivered: another student misses two.
    let (mut s2, _) = app.student("e1", "s2").await;
    s2.send_json(json!({"type": "resume", "last_seq": seqs[9], "ref": "r2"}))
        .await;
    let resumed = s2.next_json().await;
    assert_eq!(
        (
            &resumed["type"],
            &resumed["recovered"],
            &resumed["replayed"]
        ),
        (&json!("resumed"), &json!(true), &json!(2))
    );
    assert_eq!(s2.next_json().await["text"], "note 10");
    assert_eq!(s2.next_json().await["text"], "note 11");
    assert_eq!(s2.next_json().await, ack("r2"));
}

#[tokio::test]
async fn an_unreadable_roster_is_503_when_fail_closed() {
    let app = spawn_app_with(|s| s.exam.roster_fail_open = false).await;
    // The database goes away: every query fails at once.
    app.state.store.pool().close().await;
    let token = app.token("s1", Role::Student, &["e1"]);
    let refusal = app
        .try_connect(&app.ws_url("e1"), Some(&token), &[])
        .await
        .err()
        .expect("refused");
    let tungstenite::Error::Http(resp) = refusal else {
        panic!("expected an HTTP refusal, got {refusal}");
    };
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
    assert_eq!(body["error"]["code"], "roster_unavailable");
}

#[tokio::test]
async fn an_unreadable_roster_admits_on_the_token_and_an_unloadable_room_closes_1013() {
    // The default: fail open. The student is admitted past the roster, but
    // its room cannot load the exam's state either, so every waiting
    // connection (teacher or student) is upgraded and closed with 1013.
    let app = spawn_app().await;
    assert!(app.state.settings.exam.roster_fail_open, "the default");
    app.state.store.pool().close().await;
    let student = app.token("s1", Role::Student, &["e1"]);
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let expected = (
        Some(1013),
        "exam state unavailable, try again later".to_owned(),
    );
    for token in [student, teacher] {
        let mut c = app.connect("e1", &token).await;
        match c.next().await {
            Next::Closed(code, reason) => assert_eq!((code, reason), expected),
            Next::Json(v) => panic!("nothing before the 1013, got {v}"),
        }
    }
}
