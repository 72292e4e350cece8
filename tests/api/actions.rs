//! Proctor actions over REST (`POST /v1/exams/{id}/actions`) and raised
//! hands: each kind seen from the student's socket and the watcher's
//! stream, idempotent retries, delivery going from pending to delivered,
//! the rights of each role, and one action across two instances.

use examwatch::auth::Role;
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

use crate::{helpers::*, on_both_databases};

on_both_databases!(
    terminate_closes_4003_refuses_reconnects_until_allow,
    a_message_to_an_absent_student_is_pending_until_they_connect,
);

/// Creates `exam` in progress with a duration of `seconds`.
async fn timed_exam(app: &TestApp, exam: &str, seconds: u32) {
    let admin = app.token("admin", Role::Admin, &[]);
    let res = app
        .api(reqwest::Method::POST, "/v1/exams", &admin)
        .json(&json!({"id": exam, "title": exam, "phase": "in_progress", "duration_seconds": seconds}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
}

#[tokio::test]
async fn extend_moves_the_deadline_and_a_negative_one_is_clamped() {
    let app = spawn_app().await;
    timed_exam(&app, "x1", 600).await;
    let teacher = app.token("t1", Role::Teacher, &["x1"]);
    let (mut t, _) = app.teacher("x1", "t1").await;
    let (mut s, welcome) = app.student("x1", "s1").await;
    let before = ms(&welcome["deadline"]);
    let post = post_action_later(
        &app,
        "x1",
        &teacher,
        json!({"id": "ext-1", "kind": "extend", "students": ["s1"], "minutes": 5}),
    );
    let update = receive_action(&mut s, "exam_update", "ext-1").await;
    assert_eq!(ms(&update["deadline"]) - before, 5 * 60_000, "{update}");
    assert_eq!(update["cause"], "extend");
    let (status, answer) = post.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let one = &answer["students"][0];
    assert_eq!(one["student_id"], "s1");
    assert_eq!(one["delivery"], "delivered", "{answer}");
    assert_eq!(one["clamped"], false);
    assert_eq!(ms(&one["deadline"]), ms(&update["deadline"]));
    assert_eq!(answer["actor"]["sub"], "t1");
    // The student's state first, then the action that changed it.
    let st = t
        .next_where("s1's new deadline", |v| {
            v["type"] == "student" && v["cause"] == "timing"
        })
        .await;
    assert_eq!(ms(&st["student"]["deadline"]), ms(&update["deadline"]));
    let ev = t
        .next_where("the action event", |v| v["type"] == "action")
        .await;
    assert_eq!(ev["action"]["id"], "ext-1");
    assert!(ev["seq"].as_u64().is_some(), "numbered: {ev}");

    // Minus a day: only down to now.
    let post = post_action_later(
        &app,
        "x1",
        &teacher,
        json!({"id": "ext-2", "kind": "extend", "students": ["s1"], "minutes": -1440}),
    );
    let update = receive_action(&mut s, "exam_update", "ext-2").await;
    let (_, answer) = post.await.unwrap();
    assert_eq!(answer["students"][0]["clamped"], true, "{answer}");
    let deadline = ms(&update["deadline"]);
    let now = examwatch::store::now_ms();
    assert!(
        deadline <= now && deadline > now - 5_000,
        "clamped to about now: {deadline} vs {now}"
    );
}

#[tokio::test]
async fn pause_refuses_answers_until_resume() {
    let app = spawn_app().await;
    timed_exam(&app, "p1", 600).await;
    let proctor = app.token("pr", Role::Proctor, &["p1"]);
    let (mut s, _) = app.student("p1", "s1").await;
    let post = post_action_later(
        &app,
        "p1",
        &proctor,
        json!({"id": "pause-1", "kind": "pause", "students": ["s1"]}),
    );
    let update = receive_action(&mut s, "exam_update", "pause-1").await;
    assert_eq!(update["paused"], true);
    assert_eq!(post.await.unwrap().1["students"][0]["paused"], true);
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": 1}))
        .await;
    let err = s.next_where("the refusal", |v| v["ref"] == 1).await;
    assert_eq!(err["code"], "exam_paused", "{err}");
    let post = post_action_later(
        &app,
        "p1",
        &proctor,
        json!({"id": "resume-1", "kind": "resume", "students": ["s1"]}),
    );
    let update = receive_action(&mut s, "exam_update", "resume-1").await;
    assert_eq!(update["paused"], false);
    post.await.unwrap();
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": 2}))
        .await;
    s.expect_ack(2).await;
    // Resuming a running student changes nothing and says so.
    let (_, answer) = post_action(
        &app,
        "p1",
        &proctor,
        json!({"id": "resume-2", "kind": "resume", "students": ["s1"]}),
    )
    .await;
    assert_eq!(answer["students"][0]["error"], "not_paused");
    assert_eq!(answer["students"][0]["delivery"], "none");
}

async fn terminate_closes_4003_refuses_reconnects_until_allow(db: Backend) {
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    timed_exam(&app, "k1", 600).await;
    let teacher = app.token("t1", Role::Teacher, &["k1"]);
    let (mut s, _) = app.student("k1", "s1").await;
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": 1}))
        .await;
    s.expect_ack(1).await;
    let post = post_action_later(
        &app,
        "k1",
        &teacher,
        json!({"id": "term-1", "kind": "terminate", "students": ["s1"], "reason": "cheating"}),
    );
    let frame = receive_action(&mut s, "terminated", "term-1").await;
    assert_eq!(frame["reason"], "cheating");
    assert_eq!(s.expect_close().await.0, Some(4003));
    let (_, answer) = post.await.unwrap();
    assert_eq!(answer["students"][0]["finished"], true, "{answer}");
    assert_eq!(answer["students"][0]["delivery"], "delivered");
    assert_eq!(
        refused_student(&app, "k1", "s1").await,
        (403, "terminated".into())
    );
    // Their answers stay.
    let answers = app
        .get_json("/v1/exams/k1/students/s1/answers", &teacher)
        .await;
    assert!(answers.to_string().contains("a1"), "{answers}");
    let (status, _) = post_action(
        &app,
        "k1",
        &teacher,
        json!({"id": "allow-1", "kind": "allow", "students": ["s1"]}),
    )
    .await;
    assert_eq!(status, 200);
    let (_s, welcome) = app.student("k1", "s1").await;
    assert_eq!(welcome["type"], "welcome");
}

#[tokio::test]
async fn deny_invalidates_the_session_and_the_handshake() {
    let app = spawn_app().await;
    timed_exam(&app, "d1", 600).await;
    let teacher = app.token("t1", Role::Teacher, &["d1"]);
    let (mut s, _) = app.student("d1", "s1").await;
    let started = Instant::now();
    let post = post_action_later(
        &app,
        "d1",
        &teacher,
        json!({"id": "deny-1", "kind": "deny", "students": ["s1"]}),
    );
    let frame = s
        .next_where("session_invalidated", |v| {
            v["type"] == "session_invalidated"
        })
        .await;
    assert_eq!(frame["reason"], "access_revoked");
    assert_eq!(frame["id"], "deny-1");
    assert_eq!(s.expect_close().await.0, Some(4003));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "closed within a second: {:?}",
        started.elapsed()
    );
    let (status, answer) = post.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    // This client never acknowledged: still owed (moot once allowed).
    assert_eq!(answer["students"][0]["delivery"], "pending");
    assert_eq!(
        refused_student(&app, "d1", "s1").await,
        (403, "access_revoked".into())
    );
    post_action(
        &app,
        "d1",
        &teacher,
        json!({"id": "allow-1", "kind": "allow", "students": ["s1"]}),
    )
    .await;
    let (mut back, _) = app.student("d1", "s1").await;
    // The moot deny is not sent again to the readmitted student.
    back.send_json(json!({"type": "heartbeat", "ref": "hb"}))
        .await;
    let v = back
        .next_where("the heartbeat's ack", |v| v["ref"] == "hb")
        .await;
    assert_eq!(v, ack("hb"));
}

#[tokio::test]
async fn reset_session_lets_a_second_session_in_under_reject() {
    let app = spawn_app_with(|s| {
        s.exam.second_session = examwatch::config::SecondSession::Reject;
    })
    .await;
    timed_exam(&app, "r1", 600).await;
    let teacher = app.token("t1", Role::Teacher, &["r1"]);
    let (mut first, _) = app.student("r1", "s1").await;
    let token = app.token("s1", Role::Student, &["r1"]);
    let mut second = app.connect("r1", &token).await;
    assert_eq!(second.expect_close().await.0, Some(4009), "blocked");
    let (status, answer) = post_action(
        &app,
        "r1",
        &teacher,
        json!({"id": "reset-1", "kind": "reset_session", "students": ["s1"]}),
    )
    .await;
    assert_eq!(
        (status, &answer["students"][0]["delivery"]),
        (200, &json!("none"))
    );
    let mut third = app.connect("r1", &token).await;
    assert_eq!(third.next_of_type("welcome").await["type"], "welcome");
    assert_eq!(
        first.expect_close().await.0,
        Some(4001),
        "the old one yields"
    );
    // Used up: the next second session is blocked again.
    let mut fourth = app.connect("r1", &token).await;
    assert_eq!(fourth.expect_close().await.0, Some(4009));
}

#[tokio::test]
async fn a_message_replying_to_a_raised_hand_lowers_it() {
    let app = spawn_app().await;
    timed_exam(&app, "h1", 600).await;
    let proctor = app.token("pr", Role::Proctor, &["h1"]);
    let (mut t, _) = app.teacher("h1", "t1").await;
    let (mut s, _) = app.student("h1", "s1").await;
    let (mut other, _) = app.student("h1", "s2").await;
    s.send_json(json!({"type": "raise_hand", "text": "question 3?", "ref": "h"}))
        .await;
    s.expect_ack("h").await;
    let hand = t.next_where("the hand", |v| v["type"] == "hand").await;
    assert_eq!(
        (hand["student_id"].as_str(), hand["text"].as_str()),
        (Some("s1"), Some("question 3?"))
    );
    let hand_id = hand["hand_id"].as_str().unwrap().to_owned();
    let st = t
        .next_where("hand_raised", |v| {
            v["type"] == "student" && v["student"]["hand_raised"] == true
        })
        .await;
    assert_eq!(st["student"]["student_id"], "s1");
    let snap = app.teacher("h1", "t2").await.1;
    assert!(
        snap.to_string().contains(r#""hand_raised":true"#),
        "in the snapshot: {snap}"
    );
    let post = post_action_later(
        &app,
        "h1",
        &proctor,
        json!({"id": "m1", "kind": "message", "students": ["s1"], "text": "yes", "reply_to": hand_id}),
    );
    let msg = receive_action(&mut s, "message", "m1").await;
    assert_eq!(
        (msg["text"].as_str(), msg["from"].as_str()),
        (Some("yes"), Some("Name pr"))
    );
    let (_, answer) = post.await.unwrap();
    assert_eq!(answer["students"][0]["delivery"], "delivered", "{answer}");
    let lowered = t
        .next_where("hand_lowered", |v| v["type"] == "hand_lowered")
        .await;
    assert_eq!(
        (lowered["hand_id"].as_str(), lowered["by"].as_str()),
        (Some(hand_id.as_str()), Some("pr"))
    );
    // Only s1 got it.
    other
        .send_json(json!({"type": "heartbeat", "ref": "x"}))
        .await;
    let v = other
        .next_where("s2's ack", |v| v["ref"] == "x" || v["type"] == "message")
        .await;
    assert_eq!(v, ack("x"), "s2 saw no message");
    // Lowered once: lower_hand now reports nothing lowered.
    let (_, again) = post_action(
        &app,
        "h1",
        &proctor,
        json!({"id": "l1", "kind": "lower_hand", "hand_id": hand_id}),
    )
    .await;
    assert_eq!(again["students"][0]["lowered"], false, "{again}");
    let snap = app.teacher("h1", "t3").await.1;
    assert!(
        !snap.to_string().contains(r#""hand_raised":true"#),
        "{snap}"
    );
}

#[tokio::test]
async fn the_same_action_id_applies_once_and_another_body_is_409() {
    let app = spawn_app().await;
    timed_exam(&app, "i1", 600).await;
    let teacher = app.token("t1", Role::Teacher, &["i1"]);
    let body = json!({"id": "same", "kind": "extend", "students": ["s1"], "minutes": 3});
    let (s1, first) = post_action(&app, "i1", &teacher, body.clone()).await;
    let (s2, second) = post_action(&app, "i1", &teacher, body).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first, second, "the same answer");
    let (status, err) = post_action(
        &app,
        "i1",
        &teacher,
        json!({"id": "same", "kind": "extend", "students": ["s1"], "minutes": 4}),
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (409, Some("action_id_reused"))
    );
    let list = app.get_json("/v1/exams/i1/actions", &teacher).await;
    assert_eq!(list["actions"].as_array().unwrap().len(), 1, "{list}");
    app.flushed().await;
    let timeline = app.timeline("i1", &teacher, 100).await;
    let actions = timeline.iter().filter(|e| e["type"] == "action").count();
    assert_eq!(actions, 1, "one action event: {timeline:?}");
    // Applied once: the deadline is 3 minutes on, not 6.
    let (_, welcome) = app.student("i1", "s1").await;
    assert_eq!(first["students"][0]["applied_ms"], 180_000);
    assert_eq!(
        ms(&welcome["deadline"]),
        ms(&first["students"][0]["deadline"])
    );
}

async fn a_message_to_an_absent_student_is_pending_until_they_connect(db: Backend) {
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    timed_exam(&app, "q1", 600).await;
    let teacher = app.token("t1", Role::Teacher, &["q1"]);
    let (mut t, _) = app.teacher("q1", "t1").await;
    let (status, answer) = post_action(
        &app,
        "q1",
        &teacher,
        json!({"id": "m1", "kind": "message", "students": ["late"], "text": "hello"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["students"][0]["delivery"], "pending", "{answer}");
    let (mut s, _) = app.student("q1", "late").await;
    let msg = receive_action(&mut s, "message", "m1").await;
    assert_eq!(msg["text"], "hello");
    let d = t
        .next_where("the delivery", |v| v["type"] == "delivery")
        .await;
    assert_eq!(
        (
            d["action_id"].as_str(),
            d["student_id"].as_str(),
            d["state"].as_str()
        ),
        (Some("m1"), Some("late"), Some("delivered"))
    );
    let list = app
        .get_json("/v1/exams/q1/actions?limit=10", &teacher)
        .await;
    assert_eq!(
        list["actions"][0]["students"][0]["delivery"], "delivered",
        "{list}"
    );
}

#[tokio::test]
async fn rights_per_role() {
    let app = spawn_app().await;
    timed_exam(&app, "o1", 600).await;
    let proctor = app.token("pr", Role::Proctor, &["o1"]);
    let student = app.token("s1", Role::Student, &["o1"]);
    let msg = |id: &str| json!({"id": id, "kind": "message", "students": ["s1"], "text": "hi"});
    assert_eq!(post_action(&app, "o1", &proctor, msg("m1")).await.0, 200);
    let pause = json!({"id": "p1", "kind": "pause", "students": ["s1"]});
    assert_eq!(post_action(&app, "o1", &proctor, pause).await.0, 200);
    for body in [
        json!({"id": "t1", "kind": "terminate", "students": ["s1"]}),
        json!({"id": "e1", "kind": "extend", "students": ["s1"], "minutes": 1}),
        json!({"id": "d1", "kind": "deny", "all": true}),
    ] {
        let (status, err) = post_action(&app, "o1", &proctor, body).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (403, Some("forbidden"))
        );
    }
    assert_eq!(post_action(&app, "o1", &student, msg("m2")).await.0, 403);
    // Bad input is named.
    let (status, err) = post_action(
        &app,
        "o1",
        &proctor,
        json!({"id": "", "kind": "message", "students": ["s1"], "text": "hi"}),
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (422, Some("invalid_field"))
    );
    let (status, _) = post_action(
        &app,
        "o1",
        &proctor,
        json!({"id": "m3", "kind": "message", "text": "hi"}),
    )
    .await;
    assert_eq!(status, 422, "no targets");
}

#[tokio::test]
async fn an_action_on_one_instance_reaches_the_student_on_another() {
    let Some(redis) = crate::cluster::Redis::start() else {
        return;
    };
    let apps = crate::cluster::cluster(&redis, 2, |_| {}).await;
    let (a, b) = (&apps[0], &apps[1]);
    timed_exam(a, "c1", 600).await;
    let teacher = b.token("t1", Role::Teacher, &["c1"]);
    let (mut s, _) = a.student("c1", "s1").await;
    let post = post_action_later(
        b,
        "c1",
        &teacher,
        json!({"id": "m1", "kind": "message", "students": ["s1"], "text": "from B"}),
    );
    let msg = receive_action(&mut s, "message", "m1").await;
    assert_eq!(msg["text"], "from B");
    let (_, answer) = post.await.unwrap();
    assert_eq!(answer["students"][0]["delivery"], "delivered", "{answer}");
    let started = Instant::now();
    let post = post_action_later(
        b,
        "c1",
        &teacher,
        json!({"id": "deny-1", "kind": "deny", "students": ["s1"]}),
    );
    let frame = s
        .next_where("session_invalidated", |v| {
            v["type"] == "session_invalidated"
        })
        .await;
    assert_eq!(frame["reason"], "access_revoked");
    let (code, _) = s.expect_close().await;
    assert_eq!(code, Some(4003));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "closed within a second: {:?}",
        started.elapsed()
    );
    assert_eq!(post.await.unwrap().0, 200);
    // And the other instance refuses them too (its roster cache refreshed).
    eventually_refused(a, "c1", "s1").await;
}

/// The handshake on `app` refuses `sub` with access_revoked within WAIT.
async fn eventually_refused(app: &TestApp, exam: &str, sub: &str) {
    let until = Instant::now() + WAIT;
    loop {
        let token = app.token(sub, Role::Student, &[exam]);
        match app.try_connect(&app.ws_url(exam), Some(&token), &[]).await {
            Err(tungstenite::Error::Http(resp)) if resp.status() == 403 => return,
            Ok(mut c) => {
                // Admitted on a stale cache: the room closes it (4003).
                assert_eq!(c.expect_close().await.0, Some(4003));
                return;
            }
            Err(e) => assert!(Instant::now() < until, "{e}"),
        }
    }
}

/// Makes every write of `student`'s control record fail (a trigger in the
/// app's own SQLite database), until the returned pool drops them.
async fn break_writes_of(app: &TestApp, student: &str) -> sqlx::SqlitePool {
    let pool = sqlx::SqlitePool::connect(&app.db_url)
        .await
        .expect("open the app's database");
    for (name, op) in [("no_insert", "INSERT"), ("no_update", "UPDATE")] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TRIGGER {name} BEFORE {op} ON student_control WHEN NEW.student_id = '{student}' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )))
        .execute(&pool)
        .await
        .expect("create the trigger");
    }
    pool
}

#[tokio::test]
async fn an_action_that_failed_halfway_is_retried_without_extending_anyone_twice() {
    let app = spawn_app().await;
    timed_exam(&app, "h1", 600).await;
    let teacher = app.token("t1", Role::Teacher, &["h1"]);
    let (mut s1, w1) = app.student("h1", "s1").await;
    let (mut s2, w2) = app.student("h1", "s2").await;
    let (d1, d2) = (ms(&w1["deadline"]), ms(&w2["deadline"]));
    let body = json!({"id": "half", "kind": "extend", "students": ["s1", "s2"], "minutes": 5});

    // s1 is extended, then writing s2's record fails: the request fails.
    let db = break_writes_of(&app, "s2").await;
    let (status, err) = post_action(&app, "h1", &teacher, body.clone()).await;
    assert_eq!(status, 503, "{err}");
    // What did change is shown at once, not left to the retry.
    let update = s1
        .next_where("s1's record as changed", |v| v["type"] == "exam_update")
        .await;
    assert_eq!(update["cause"], "action", "{update}");
    assert_eq!(ms(&update["deadline"]) - d1, 5 * 60_000, "{update}");
    for name in ["no_insert", "no_update"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER {name}")))
            .execute(&db)
            .await
            .unwrap();
    }

    // The retry extends s2 and leaves s1 as the first attempt left them.
    let post = post_action_later(&app, "h1", &teacher, body);
    let u1 = receive_action(&mut s1, "exam_update", "half").await;
    let u2 = receive_action(&mut s2, "exam_update", "half").await;
    assert_eq!(ms(&u1["deadline"]) - d1, 5 * 60_000, "once for s1: {u1}");
    assert_eq!(ms(&u2["deadline"]) - d2, 5 * 60_000, "once for s2: {u2}");
    let (status, answer) = post.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let [one, two] = [&answer["students"][0], &answer["students"][1]];
    assert_eq!(
        (&one["student_id"], &one["already_applied"]),
        (&json!("s1"), &json!(true)),
        "{answer}"
    );
    assert_eq!(ms(&one["deadline"]), ms(&u1["deadline"]));
    assert_eq!(two["applied_ms"], 300_000, "{answer}");
    assert!(two.get("already_applied").is_none(), "{answer}");
    // And the records say so after a reconnect.
    drop(s1);
    let (_, again) = app.student("h1", "s1").await;
    assert_eq!(ms(&again["deadline"]) - d1, 5 * 60_000, "{again}");
}

#[tokio::test]
async fn a_claim_left_unfinished_is_taken_over_by_a_retry() {
    let app = spawn_app().await;
    timed_exam(&app, "h2", 600).await;
    let teacher = app.token("t1", Role::Teacher, &["h2"]);
    let (_s1, w1) = app.student("h2", "s1").await;
    let (_s2, w2) = app.student("h2", "s2").await;
    let body = json!({"id": "stuck", "kind": "extend", "students": ["s1", "s2"], "minutes": 2});
    // s2's write fails, and so does giving the claim up: it stays behind.
    let db = break_writes_of(&app, "s2").await;
    sqlx::query(
        "CREATE TRIGGER keep_claims BEFORE DELETE ON actions \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    .execute(&db)
    .await
    .unwrap();
    let (status, _) = post_action(&app, "h2", &teacher, body.clone()).await;
    assert_eq!(status, 503);
    for name in ["no_insert", "no_update", "keep_claims"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER {name}")))
            .execute(&db)
            .await
            .unwrap();
    }
    let left: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM actions WHERE action_id = 'stuck' AND result IS NULL",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(left, 1, "the claim is still there, unfinished");
    // While it is recent, a retry waits for it and is told it is running.
    let (status, err) = post_action(&app, "h2", &teacher, body.clone()).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (409, Some("action_in_progress"))
    );
    // Minutes later nothing will finish it: a retry takes it over, and
    // nobody is extended twice.
    sqlx::query("UPDATE actions SET at = at - 600000 WHERE action_id = 'stuck'")
        .execute(&db)
        .await
        .unwrap();
    let (status, answer) = post_action(&app, "h2", &teacher, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["students"][0]["already_applied"], true, "{answer}");
    assert_eq!(answer["students"][1]["applied_ms"], 120_000, "{answer}");
    let d1 = ms(&answer["students"][0]["deadline"]);
    let d2 = ms(&answer["students"][1]["deadline"]);
    assert_eq!(d1 - ms(&w1["deadline"]), 120_000, "{answer}");
    assert_eq!(d2 - ms(&w2["deadline"]), 120_000, "{answer}");
    let list = app.get_json("/v1/exams/h2/actions", &teacher).await;
    assert_eq!(list["actions"][0]["id"], "stuck", "audited: {list}");
}

#[tokio::test]
async fn a_terminate_owed_to_an_absent_student_is_delivered_by_the_refusal() {
    let app = spawn_app().await;
    timed_exam(&app, "r1", 600).await;
    let teacher = app.token("t1", Role::Teacher, &["r1"]);
    let (mut t, _) = app.teacher("r1", "t1").await;
    let (s, _) = app.student("r1", "s1").await;
    s.close().await;
    let (status, answer) = post_action(
        &app,
        "r1",
        &teacher,
        json!({"id": "away-t", "kind": "terminate", "students": ["s1"], "reason": "left the room"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["students"][0]["delivery"], "pending", "{answer}");
    // Their client comes back and is refused with the reason: told.
    assert_eq!(
        refused_student(&app, "r1", "s1").await,
        (403, "terminated".into())
    );
    let ev = t
        .next_where("the delivery", |v| v["type"] == "delivery")
        .await;
    assert_eq!(
        (&ev["action_id"], &ev["student_id"], &ev["state"]),
        (&json!("away-t"), &json!("s1"), &json!("delivered")),
        "{ev}"
    );
    let list = app.get_json("/v1/exams/r1/actions", &teacher).await;
    assert_eq!(
        list["actions"][0]["students"][0]["delivery"], "delivered",
        "{list}"
    );
}

#[tokio::test]
async fn a_pause_that_failed_halfway_is_retried_without_refusing_the_students_it_paused() {
    let app = spawn_app().await;
    timed_exam(&app, "h3", 600).await;
    let teacher = app.token("t1", Role::Teacher, &["h3"]);
    let (_s1, _) = app.student("h3", "s1").await;
    let (_s2, _) = app.student("h3", "s2").await;
    let body = json!({"id": "half-pause", "kind": "pause", "students": ["s1", "s2"]});
    let db = break_writes_of(&app, "s2").await;
    let (status, _) = post_action(&app, "h3", &teacher, body.clone()).await;
    assert_eq!(status, 503);
    for name in ["no_insert", "no_update"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER {name}")))
            .execute(&db)
            .await
            .unwrap();
    }
    // s1 was paused by the first attempt: not `already_paused`, but done.
    let (status, answer) = post_action(&app, "h3", &teacher, body).await;
    assert_eq!(status, 200, "{answer}");
    let [one, two] = [&answer["students"][0], &answer["students"][1]];
    assert_eq!(
        (&one["paused"], &one["already_applied"], one.get("error")),
        (&json!(true), &json!(true), None),
        "{answer}"
    );
    assert_eq!(
        (&two["paused"], two.get("already_applied"), two.get("error")),
        (&json!(true), None, None),
        "{answer}"
    );
}
