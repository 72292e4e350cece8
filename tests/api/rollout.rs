//! Rolling restarts in a cluster: an instance stopped gracefully lets go of
//! what it holds before its sockets close (its liveness key says
//! `draining`, so its students' session leases are free to take), so a
//! student who reconnects on another instance at once, without
//! `previous_session`, is a reconnect there: no `second_session` alert,
//! and no 4009 under the `reject` policy; and the 1012 closes of a drain
//! are not a network incident.

use examwatch::config::SecondSession;
use serde_json::json;

use crate::{
    cluster::{Redis, cluster},
    helpers::*,
};

async fn reconnecting_elsewhere_after_a_graceful_stop(policy: SecondSession) {
    let Some(redis) = Redis::start() else { return };
    let mut apps = cluster(&redis, 2, |s| s.exam.second_session = policy).await;
    let (mut t, _) = apps[1].teacher("e1", "t1").await;
    let (mut s, _) = apps[0].student("e1", "s1").await;
    let ev = t.next_of_type("student").await;
    assert!(is_student_event(&ev, "s1", "connected"), "{ev}");
    apps[0].begin_shutdown();
    assert_eq!(s.expect_close().await.0, Some(1012));
    // At once on the other instance, naming no previous session.
    let token = apps[1].token("s1", examwatch::auth::Role::Student, &["e1"]);
    let mut again = apps[1].connect("e1", &token).await;
    let first = again.next_json().await;
    assert_eq!(
        first["type"], "welcome",
        "admitted, not closed 4009: {first}"
    );
    again
        .send_json(json!({"type": "progress", "question": 2, "answered": 1, "ref": "p"}))
        .await;
    assert_eq!(again.next_json().await, json!({"type": "ack", "ref": "p"}));
    // Everything the teacher sees up to that progress: never a second session.
    loop {
        let ev = t.next_json().await;
        assert!(
            !(ev["type"] == "alert" && ev["kind"] == "second_session"),
            "a graceful stop is not a second session: {ev}"
        );
        assert!(
            !is_student_event(&ev, "s1", "second_session"),
            "a graceful stop is not a second session: {ev}"
        );
        if is_student_event(&ev, "s1", "progress") {
            break;
        }
    }
}

#[tokio::test]
async fn after_a_graceful_stop_a_takeover_elsewhere_raises_no_alert() {
    reconnecting_elsewhere_after_a_graceful_stop(SecondSession::Takeover).await;
}

#[tokio::test]
async fn after_a_graceful_stop_reject_still_admits_the_student_elsewhere() {
    reconnecting_elsewhere_after_a_graceful_stop(SecondSession::Reject).await;
}

/// A whole exam moved by a rolling restart: five students (past
/// `alerts.incident_min`, the whole room) closed 1012 over the window and
/// back on the other instance as the same sessions. The teacher there sees
/// each come back as a reconnect, and no alert at all: not a network
/// incident, not a second session, not a disconnection.
#[tokio::test]
async fn a_drained_exam_reconnects_elsewhere_without_any_alert() {
    let Some(redis) = Redis::start() else { return };
    let mut apps = cluster(&redis, 2, |s| {
        s.server.drain_window = std::time::Duration::from_millis(600);
    })
    .await;
    let (mut t, _) = apps[1].teacher("e1", "t1").await;
    let mut students = Vec::new();
    for i in 1..=5 {
        let id = format!("s{i}");
        let (s, welcome) = apps[0].student("e1", &id).await;
        let session = welcome["session_id"].as_str().unwrap().to_owned();
        t.next_where("connected", |e| is_student_event(e, &id, "connected"))
            .await;
        students.push((id, session, s));
    }
    apps[0].begin_shutdown();
    let mut back = Vec::new();
    for (id, session, mut s) in students {
        assert_eq!(s.expect_close().await.0, Some(1012), "{id}");
        let token = apps[1].token(&id, examwatch::auth::Role::Student, &["e1"]);
        let url = format!("{}?previous_session={session}", apps[1].ws_url("e1"));
        let mut again = apps[1]
            .try_connect(&url, Some(&token), &[])
            .await
            .unwrap_or_else(|e| panic!("{id} admitted on the other instance: {e}"));
        assert_eq!(again.next_json().await["type"], "welcome", "{id}");
        back.push((id, again));
    }
    let mut reconnected = std::collections::HashSet::new();
    while reconnected.len() < back.len() {
        let ev = t.next_json().await;
        assert_ne!(
            ev["type"], "alert",
            "a rolling restart raises no alert: {ev}"
        );
        if ev["type"] == "student" {
            let cause = ev["cause"].as_str().unwrap_or_default();
            assert!(
                matches!(cause, "reconnected" | "active"),
                "only reconnects: {ev}"
            );
            if cause == "reconnected" {
                reconnected.insert(ev["student"]["student_id"].as_str().unwrap().to_owned());
            }
        }
    }
    // And nothing after them: a progress of the last one comes next.
    let (id, last) = back.last_mut().unwrap();
    last.send_json(json!({"type": "progress", "question": 2, "answered": 0, "ref": "p"}))
        .await;
    let ev = t.next_of_type("student").await;
    assert!(is_student_event(&ev, id, "progress"), "{ev}");
}

/// While an instance drains, its students still connected there are not
/// taken for orphans by the others: its liveness key says `draining`
/// (free to take for a reconnect) rather than being gone (dead). Here the
/// second student is closed half a window (2 s) after the first, longer
/// than `broker.heartbeat_ttl` (1 s) and the grace (1 s) together: had the
/// key simply been deleted, the other instance would have shown them
/// `disconnected` while they were still connected.
#[tokio::test]
async fn students_still_connected_to_a_draining_instance_are_not_orphaned() {
    let Some(redis) = Redis::start() else { return };
    let mut apps = cluster(&redis, 2, |s| {
        s.broker.heartbeat_ttl = std::time::Duration::from_secs(1);
        s.exam.disconnect_grace = std::time::Duration::from_secs(1);
        s.server.drain_window = std::time::Duration::from_secs(4);
    })
    .await;
    let (mut t, _) = apps[1].teacher("e1", "t1").await;
    let mut students = Vec::new();
    for id in ["s1", "s2"] {
        let (s, welcome) = apps[0].student("e1", id).await;
        let session = welcome["session_id"].as_str().unwrap().to_owned();
        t.next_where("connected", |e| is_student_event(e, id, "connected"))
            .await;
        students.push((id, session, s));
    }
    apps[0].begin_shutdown();
    let mut last = None;
    for (id, session, mut s) in students {
        let closed = s
            .expect_close_within(tokio::time::Instant::now() + std::time::Duration::from_secs(8))
            .await;
        assert_eq!(closed.0, Some(1012), "{id}");
        let token = apps[1].token(id, examwatch::auth::Role::Student, &["e1"]);
        let url = format!("{}?previous_session={session}", apps[1].ws_url("e1"));
        let mut again = apps[1].try_connect(&url, Some(&token), &[]).await.unwrap();
        assert_eq!(again.next_json().await["type"], "welcome", "{id}");
        last = Some((id, again));
    }
    let (id, mut again) = last.unwrap();
    again
        .send_json(json!({"type": "progress", "question": 2, "answered": 0, "ref": "p"}))
        .await;
    loop {
        let ev = t.next_json().await;
        assert!(
            !is_student_event(&ev, "s1", "disconnected")
                && !is_student_event(&ev, "s2", "disconnected"),
            "still connected to the draining instance, never disconnected: {ev}"
        );
        assert_ne!(ev["type"], "alert", "{ev}");
        if is_student_event(&ev, id, "progress") {
            break;
        }
    }
}

/// A second device that joins another instance while the student's first
/// socket is still open on a draining one: the draining instance is told
/// to close that socket at once (session_invalidated, 4001), so the two
/// do not run side by side until the drain would have reached it.
#[tokio::test]
async fn a_socket_still_open_on_a_draining_instance_is_closed_when_its_student_joins_elsewhere() {
    let Some(redis) = Redis::start() else { return };
    let mut apps = cluster(&redis, 2, |s| {
        s.server.drain_window = std::time::Duration::from_secs(30);
    })
    .await;
    let (mut a, _) = apps[0].student("e1", "s1").await;
    let (mut b, _) = apps[0].student("e1", "s2").await;
    apps[0].begin_shutdown();
    // The drain closes one of the two at once and the other 15 s later:
    // the one still open is the one to take over.
    let soon = || tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let (open, id) = tokio::select! {
        closed = a.expect_close_within(soon()) => {
            assert_eq!(closed.0, Some(1012));
            (b, "s2")
        }
        closed = b.expect_close_within(soon()) => {
            assert_eq!(closed.0, Some(1012));
            (a, "s1")
        }
    };
    let mut open = open;
    let (_second, welcome) = apps[1].student("e1", id).await;
    assert_eq!(welcome["type"], "welcome");
    let invalidated = open
        .next_of_type_within("session_invalidated", soon())
        .await;
    assert_eq!(invalidated["reason"], "second_session", "{invalidated}");
    let (code, _) = open.expect_close_within(soon()).await;
    assert_eq!(
        code,
        Some(4001),
        "taken over, not left for the drain's 1012"
    );
}
