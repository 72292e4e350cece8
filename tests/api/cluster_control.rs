//! Exam control across two instances on one Redis and one database (issue
//! 14 item 11): proctor actions posted on one instance for a student on the
//! other, a per-student deadline and the automatic start and end handled
//! exactly once in the cluster, and an accommodation set on one instance
//! before the student ever connected to the room running on the other.
//!
//! Durations are seconds; every wait is for an event, with a deadline.
//! "Exactly once" is checked by reading on until the reply to a heartbeat
//! sent after the first event: a second one would have come before it.

use std::time::Duration;

use examwatch::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

async fn create(app: &TestApp, token: &str, body: Value) {
    let res = app
        .api(Method::POST, "/v1/exams", token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    assert_eq!(status, StatusCode::CREATED, "{}", res.text().await.unwrap());
}

/// Sends a heartbeat and reads until its ack; how many frames before it
/// `counted` holds for.
async fn count_until_heartbeat(c: &mut Client, r: &str, counted: impl Fn(&Value) -> bool) -> usize {
    c.send_json(json!({"type": "heartbeat", "ref": r})).await;
    let deadline = deadline();
    let mut n = 0;
    loop {
        let v = c.next_json_within(deadline).await;
        if v["ref"] == r {
            assert_eq!(v, ack(r), "the heartbeat's reply is its ack");
            return n;
        }
        if counted(&v) {
            n += 1;
        }
    }
}

/// A teacher on `app` connected as is (the helpers' `teacher` would open
/// a scheduled exam), after its snapshot.
async fn teacher_as_is(app: &TestApp, exam: &str, sub: &str) -> Client {
    let token = app.token(sub, Role::Teacher, &[exam]);
    let mut c = app
        .try_connect_as_is(&app.ws_url(exam), Some(&token), &[])
        .await
        .unwrap_or_else(|e| panic!("teacher handshake: {e}"));
    c.snapshot().await;
    c
}

#[tokio::test]
async fn actions_posted_on_one_instance_control_a_student_on_another() {
    let Some(redis) = crate::cluster::Redis::start() else {
        return;
    };
    let apps = crate::cluster::cluster(&redis, 2, |_| {}).await;
    let (a, b) = (&apps[0], &apps[1]);
    let t = b.token("t1", Role::Teacher, &["ca"]);
    create(
        b,
        &t,
        json!({"id": "ca", "title": "CA", "phase": "in_progress", "duration_seconds": 3600}),
    )
    .await;
    let (mut watcher, _) = b.teacher("ca", "t1").await;
    let (mut s, _) = a.student("ca", "s1").await;

    // Pause on B: the student on A is stopped.
    let post = post_action_later(
        b,
        "ca",
        &t,
        json!({"id": "pause-1", "kind": "pause", "students": ["s1"]}),
    );
    let update = receive_action(&mut s, "exam_update", "pause-1").await;
    assert_eq!(update["paused"], true, "{update}");
    assert!(
        control_noted(&redis, "ca", "s1").await,
        "an action's change is noted too"
    );
    let (status, answer) = post.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["students"][0]["paused"], true, "{answer}");
    assert_eq!(answer["students"][0]["delivery"], "delivered", "{answer}");
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": "a1"}))
        .await;
    let err = s.next_where("the refusal", |v| v["ref"] == "a1").await;
    assert_eq!(
        (&err["type"], &err["code"]),
        (&json!("error"), &json!("exam_paused")),
        "{err}"
    );

    // Resume on B: the student on A answers again.
    let post = post_action_later(
        b,
        "ca",
        &t,
        json!({"id": "resume-1", "kind": "resume", "students": ["s1"]}),
    );
    let update = receive_action(&mut s, "exam_update", "resume-1").await;
    assert_eq!(update["paused"], false, "{update}");
    let (status, answer) = post.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["students"][0]["paused"], false, "{answer}");
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": "a2"}))
        .await;
    s.expect_ack("a2").await;

    // Terminate on B: the student on A is told, closed 4003, and neither
    // instance lets them back in.
    let post = post_action_later(
        b,
        "ca",
        &t,
        json!({"id": "term-1", "kind": "terminate", "students": ["s1"], "reason": "cheating"}),
    );
    let frame = receive_action(&mut s, "terminated", "term-1").await;
    assert_eq!(frame["reason"], "cheating", "{frame}");
    assert_eq!(s.expect_close().await.0, Some(4003));
    let (status, answer) = post.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["students"][0]["finished"], true, "{answer}");
    assert_eq!(answer["students"][0]["delivery"], "delivered", "{answer}");
    // B made the change and forgot its cached roster; A forgot its own when
    // the action reached its room (before the room closed the socket):
    // refused at once on both, before the upgrade.
    assert_eq!(
        refused_student(b, "ca", "s1").await,
        (403, "terminated".into())
    );
    assert_eq!(
        refused_student(a, "ca", "s1").await,
        (403, "terminated".into())
    );

    // Allow on B: the student is admitted on A again.
    let (mut on_a, _) = a.teacher("ca", "t2").await;
    let (status, answer) = post_action(
        b,
        "ca",
        &t,
        json!({"id": "allow-1", "kind": "allow", "students": ["s1"]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    // Once A's room has the action (its watcher sees it), A's handshake
    // judges by the new rule: no stale refusal.
    on_a.next_where("the allow on A", |v| {
        v["type"] == "action" && v["action"]["id"] == "allow-1"
    })
    .await;
    let (mut s, welcome) = a.student("ca", "s1").await;
    assert_eq!(welcome["student"]["student_id"], "s1", "{welcome}");

    // A hand raised on A, lowered from B: the teacher on B sees both.
    s.send_json(json!({"type": "raise_hand", "text": "question 3?", "ref": "h"}))
        .await;
    s.expect_ack("h").await;
    let hand = watcher
        .next_where("the hand", |v| v["type"] == "hand")
        .await;
    assert_eq!(
        (hand["student_id"].as_str(), hand["text"].as_str()),
        (Some("s1"), Some("question 3?"))
    );
    let hand_id = hand["hand_id"].as_str().expect("a hand_id").to_owned();
    let (status, answer) = post_action(
        b,
        "ca",
        &t,
        json!({"id": "lower-1", "kind": "lower_hand", "hand_id": hand_id}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["students"][0]["lowered"], true, "{answer}");
    let lowered = watcher
        .next_where("hand_lowered", |v| v["type"] == "hand_lowered")
        .await;
    assert_eq!(
        (
            lowered["hand_id"].as_str(),
            lowered["student_id"].as_str(),
            lowered["by"].as_str()
        ),
        (Some(hand_id.as_str()), Some("s1"), Some("t1"))
    );
}

#[tokio::test]
async fn a_student_deadline_in_a_cluster_ends_their_work_once() {
    let Some(redis) = crate::cluster::Redis::start() else {
        return;
    };
    let apps = crate::cluster::cluster(&redis, 2, |_| {}).await;
    let (a, b) = (&apps[0], &apps[1]);
    let t = a.token("t1", Role::Teacher, &["cd"]);
    create(
        a,
        &t,
        json!({"id": "cd", "title": "CD", "phase": "in_progress", "timing": "per_student",
               "duration_seconds": 2}),
    )
    .await;
    let (mut ta, _) = a.teacher("cd", "t1").await;
    let (mut tb, _) = b.teacher("cd", "t2").await;
    let (mut s, welcome) = a.student("cd", "s1").await;
    let deadline_ms = ms(&welcome["deadline"]);
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": "a"}))
        .await;
    // Nothing changes s1's clock before the deadline, so the only
    // `exam_update` they get is the time_up: not before the ack (which
    // `expect_ack` would skip), not after it. (The room's own announcement
    // of their start, back from Redis, once reached them as one with cause
    // `timing`.)
    let until = deadline();
    let acked = loop {
        let v = s.next_json_within(until).await;
        assert_ne!(v["type"], "exam_update", "before the answer's ack: {v}");
        if v["ref"] == "a" {
            break v;
        }
    };
    assert_eq!(acked, ack("a"), "the reply is exactly the ack");
    let up = s.next_of_type("exam_update").await;
    assert_eq!(up["cause"], "time_up", "{up}");
    assert!(now_ms() >= deadline_ms, "not before the deadline");
    for (name, teacher) in [("A", &mut ta), ("B", &mut tb)] {
        let ev = teacher
            .next_where(&format!("s1 time_up on {name}"), |v| {
                is_student_event(v, "s1", "time_up")
            })
            .await;
        assert_eq!(ev["student"]["status"], "submitted", "{name}: {ev}");
        assert_eq!(ms(&ev["student"]["submitted_at"]), deadline_ms, "{name}");
    }
    // Stored once: one row for s1, ended by the server.
    a.flushed().await;
    b.flushed().await;
    let report = b
        .api(Method::GET, "/v1/exams/cd/report.csv", &t)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rows: Vec<&str> = report.lines().filter(|l| l.starts_with("s1,")).collect();
    assert_eq!(rows.len(), 1, "{report}");
    assert!(rows[0].ends_with(",time_up"), "{report}");
    // No second time_up reached either teacher.
    for (name, teacher) in [("A", &mut ta), ("B", &mut tb)] {
        let more =
            count_until_heartbeat(teacher, "hb", |v| is_student_event(v, "s1", "time_up")).await;
        assert_eq!(more, 0, "one time_up on {name}");
    }
}

#[tokio::test]
async fn an_exam_starts_and_ends_by_itself_once_in_a_cluster() {
    let Some(redis) = crate::cluster::Redis::start() else {
        return;
    };
    let apps = crate::cluster::cluster(&redis, 2, |s| {
        s.exam.control_scan = Duration::from_millis(100)
    })
    .await;
    let (a, b) = (&apps[0], &apps[1]);
    let t = a.token("t1", Role::Teacher, &["cs"]);
    let opens = now_ms() + 1000;
    create(
        a,
        &t,
        json!({"id": "cs", "title": "CS", "phase": "scheduled", "auto_start": true,
               "opens_at": rfc3339(opens), "closes_at": rfc3339(opens + 1500)}),
    )
    .await;
    let mut ta = teacher_as_is(a, "cs", "t1").await;
    let mut tb = teacher_as_is(b, "cs", "t2").await;
    let is_update =
        |phase: &'static str| move |v: &Value| v["type"] == "exam_update" && v["phase"] == phase;
    for (name, teacher) in [("A", &mut ta), ("B", &mut tb)] {
        // One wait for both: the exam ends 2.5 s after its creation.
        let until = deadline();
        let mut starts = Vec::new();
        let ended = loop {
            let v = teacher.next_json_within(until).await;
            if is_update("in_progress")(&v) {
                starts.push(v);
            } else if is_update("ended")(&v) {
                break v;
            }
        };
        assert_eq!(starts.len(), 1, "one start on {name}: {starts:?}");
        assert_eq!(starts[0]["cause"], "auto", "{name}: {starts:?}");
        assert_eq!(ended["cause"], "auto", "{name}: {ended}");
        assert!(now_ms() >= opens + 1500, "not before closes_at");
        let more = count_until_heartbeat(teacher, "hb", |v| {
            is_update("in_progress")(v) || is_update("ended")(v)
        })
        .await;
        assert_eq!(more, 0, "nothing more after the end on {name}");
    }
    let got = b.get_json("/v1/exams/cs", &t).await;
    assert_eq!(got["phase"], "ended", "{got}");
}

#[tokio::test]
async fn an_accommodation_set_on_one_instance_before_the_student_joins_holds_on_another() {
    let Some(redis) = crate::cluster::Redis::start() else {
        return;
    };
    let apps = crate::cluster::cluster(&redis, 2, |s| {
        s.exam.control_scan = Duration::from_millis(100)
    })
    .await;
    let (a, b) = (&apps[0], &apps[1]);
    let t = b.token("t1", Role::Teacher, &["cm"]);
    let opens = now_ms();
    let closes = opens + 2000;
    create(
        b,
        &t,
        json!({"id": "cm", "title": "CM", "phase": "in_progress", "timing": "fixed",
               "opens_at": rfc3339(opens), "closes_at": rfc3339(closes)}),
    )
    .await;
    // The room runs on A before the accommodation is set on B.
    let (mut teacher, _) = a.teacher("cm", "t1").await;
    let res = b
        .api(Method::PATCH, "/v1/exams/cm/students/s1", &t)
        .json(&json!({"extra_minutes": 1}))
        .send()
        .await
        .unwrap();
    let status = res.status();
    assert_eq!(status, StatusCode::OK, "{}", res.text().await.unwrap());
    // The change is noted in Redis before it is announced (what lets a
    // handshake anywhere read it in the moment before the announcement).
    assert!(control_noted(&redis, "cm", "s1").await, "noted in Redis");
    // The student joins on A at once, without waiting for the change's
    // announcement to reach A's room: the handshake learnt from Redis that
    // their record changed a moment ago and read it, so the welcome has it.
    let (mut s, welcome) = a.student("cm", "s1").await;
    assert_eq!(ms(&welcome["deadline"]), closes + 60_000, "{welcome}");
    assert_eq!(welcome["student"]["extra_minutes"], 1, "{welcome}");
    let announced = teacher
        .next_where("s1's control record", |v| v["type"] == "student_control")
        .await;
    assert_eq!(announced["student_id"], "s1");
    assert_eq!(announced["control"]["clock"]["extra_minutes"], 1);
    // Past closes_at (the scan runs every 100 ms), the exam goes on for
    // the student who still has time: they answer, and nobody is ended.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut beat = 0;
    while tokio::time::Instant::now() < until {
        beat += 1;
        let r = format!("hb{beat}");
        let ended = count_until_heartbeat(&mut teacher, &r, |v| {
            (v["type"] == "exam_update" && v["phase"] == "ended")
                || is_student_event(v, "s1", "time_up")
        })
        .await;
        assert_eq!(ended, 0, "nothing ended at {} ms", now_ms() - opens);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(now_ms() > closes + 500, "well past closes_at");
    let got = b.get_json("/v1/exams/cm", &t).await;
    assert_eq!(got["phase"], "in_progress", "{got}");
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": "a"}))
        .await;
    s.expect_ack("a").await;
}

#[tokio::test]
async fn a_handshake_reads_a_record_changed_a_moment_ago_before_its_event_arrives() {
    let Some(redis) = crate::cluster::Redis::start() else {
        return;
    };
    let apps = crate::cluster::cluster(&redis, 2, |_| {}).await;
    let a = &apps[0];
    let t = a.token("t1", Role::Teacher, &["cr"]);
    let closes = now_ms() + 600_000;
    create(
        a,
        &t,
        json!({"id": "cr", "title": "CR", "phase": "in_progress", "timing": "fixed",
               "opens_at": rfc3339(now_ms()), "closes_at": rfc3339(closes)}),
    )
    .await;
    let (_watcher, _) = a.teacher("cr", "t1").await;
    // A change whose announcement has not reached A's room (it never will
    // here): stored, and noted in Redis as another instance's API does.
    let db = sqlx::SqlitePool::connect(&a.db_url).await.unwrap();
    sqlx::query(
        "INSERT INTO student_control (exam_id, student_id, extra_minutes, version) \
         VALUES ('cr', 's1', 3, 1)",
    )
    .execute(&db)
    .await
    .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::AsyncCommands::set_ex(&mut conn, "examwatch:{cr}:control:s1", 1, 10)
        .await
        .unwrap();
    let (_s, welcome) = a.student("cr", "s1").await;
    assert_eq!(welcome["student"]["extra_minutes"], 3, "{welcome}");
    assert_eq!(ms(&welcome["deadline"]), closes + 3 * 60_000, "{welcome}");
}

/// Whether `student`'s control record of `exam` was noted as changed in
/// the last seconds (broker `note_controls`).
async fn control_noted(redis: &crate::cluster::Redis, exam: &str, student: &str) -> bool {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::AsyncCommands::exists(&mut conn, format!("examwatch:{{{exam}}}:control:{student}"))
        .await
        .unwrap()
}
