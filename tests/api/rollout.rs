//! Rolling restarts in a cluster: an instance stopped gracefully lets go of
//! what it holds (its liveness key, its students' session leases) before
//! its sockets close, so a student who reconnects on another instance at
//! once, without `previous_session`, is a reconnect there: no
//! `second_session` alert, and no 4009 under the `reject` policy.

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
    assert_eq!(s.expect_close().await.0, Some(1001));
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
