//! One session per student per exam, under both policies.

use examwatch::config::SecondSession;
use serde_json::json;

use crate::helpers::Next;
use crate::helpers::*;

#[tokio::test]
async fn takeover_invalidates_the_old_socket_and_alerts_teachers() {
    let app = spawn_app().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut old, _) = app.student("e1", "s1").await;
    t.next_of_type("student").await;
    let (mut new, welcome) = app.student("e1", "s1").await;
    assert_eq!(welcome["student"]["connections"], 2);
    let bye = old.next_json().await;
    assert_eq!(
        bye,
        json!({"type": "session_invalidated", "reason": "second_session"})
    );
    assert_eq!(
        old.expect_close().await,
        (
            Some(4001),
            "session taken over by a new connection".to_string()
        )
    );
    let ev = t.next_json().await;
    assert!(is_student_event(&ev, "s1", "second_session"), "{ev}");
    let alert = t.next_json().await;
    assert_eq!(
        (alert["type"].as_str(), alert["kind"].as_str()),
        (Some("alert"), Some("second_session"))
    );
    // The new socket is the student now; the old one's close is not a drop.
    new.send_json(json!({"type": "progress", "question": 1, "answered": 1, "ref": 1}))
        .await;
    new.expect_ack(1).await;
    let ev = t.next_json().await;
    assert!(is_student_event(&ev, "s1", "progress"), "{ev}");
    assert_eq!(ev["student"]["connected"], true);
}

#[tokio::test]
async fn reject_refuses_the_new_socket_with_4009() {
    let app = spawn_app_with(|s| s.exam.second_session = SecondSession::Reject).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut first, _) = app.student("e1", "s1").await;
    t.next_of_type("student").await;
    let token = app.token("s1", examwatch::auth::Role::Student, &["e1"]);
    let mut second = app.connect("e1", &token).await;
    // Refused outright: no welcome, the very next frame is the close.
    match second.next().await {
        Next::Closed(code, reason) => assert_eq!(
            (code, reason.as_str()),
            (Some(4009), "another session is active for this student")
        ),
        Next::Json(v) => panic!("the rejected socket got {v}"),
    }
    let alert = t.next_json().await;
    assert_eq!(
        (alert["kind"].as_str(), alert["student_id"].as_str()),
        (Some("second_session"), Some("s1"))
    );
    // The first session is untouched.
    first
        .send_json(json!({"type": "heartbeat", "ref": "still-here"}))
        .await;
    assert_eq!(first.next_json().await, ack("still-here"));
}

#[tokio::test]
async fn the_same_client_reconnecting_over_a_dead_socket_is_not_a_second_session() {
    for policy in [SecondSession::Takeover, SecondSession::Reject] {
        let app = spawn_app_with(|s| {
            s.exam.second_session = policy;
            s.exam.probe_timeout = std::time::Duration::from_millis(200);
        })
        .await;
        let (mut t, _) = app.teacher("e1", "t1").await;
        // The old socket stays open: the server has not noticed the drop yet.
        let (mut old, welcome) = app.student("e1", "s1").await;
        t.next_of_type("student").await;
        let session = welcome["session_id"].as_str().unwrap();
        let token = app.token("s1", examwatch::auth::Role::Student, &["e1"]);
        let url = format!("{}?previous_session={session}", app.ws_url("e1"));
        let mut new = app.try_connect(&url, Some(&token), &[]).await.unwrap();
        let welcome = new.next_of_type("welcome").await;
        assert_ne!(welcome["session_id"], session, "{policy:?}");
        assert_eq!(
            old.expect_close().await,
            (
                Some(4001),
                "session taken over by a new connection".to_string()
            ),
            "{policy:?}"
        );
        let ev = t.next_json().await;
        assert!(
            is_student_event(&ev, "s1", "reconnected"),
            "{policy:?}: {ev}"
        );
        // No alert followed: the next thing the teacher sees is our probe.
        new.send_json(json!({"type": "progress", "question": 1, "answered": 0}))
            .await;
        let next = t.next_json().await;
        assert!(
            is_student_event(&next, "s1", "progress"),
            "{policy:?}: {next}"
        );
    }
}

#[tokio::test]
async fn claiming_a_previous_session_while_the_old_device_is_alive_is_a_second_session() {
    let app = spawn_app().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut old, welcome) = app.student("e1", "s1").await;
    t.next_of_type("student").await;
    let session = welcome["session_id"].as_str().unwrap().to_owned();
    // The old device keeps reading, so it answers the server's probe ping.
    let old_reader = tokio::spawn(async move {
        let first = old.next_json().await;
        let (code, _) = old.expect_close().await;
        (first, code)
    });
    let token = app.token("s1", examwatch::auth::Role::Student, &["e1"]);
    let url = format!("{}?previous_session={session}", app.ws_url("e1"));
    let mut new = app.try_connect(&url, Some(&token), &[]).await.unwrap();
    new.next_of_type("welcome").await;
    let (first, code) = old_reader.await.unwrap();
    assert_eq!(first["type"], "session_invalidated");
    assert_eq!(code, Some(4001));
    let ev = t.next_json().await;
    assert!(is_student_event(&ev, "s1", "second_session"), "{ev}");
    assert_eq!(t.next_json().await["kind"], "second_session");
}
