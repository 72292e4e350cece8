//! `events.persist = false`: `student` events reach teachers but never the
//! event log, while what a student is acked for (answers, submissions)
//! is still committed first and survives a restart. With the default, the
//! log keeps every event. On SQLite and on PostgreSQL.

use std::time::Duration;

use examwatch::auth::Role;
use serde_json::{Value, json};

use crate::{
    cluster::{Redis, cluster, join_cluster},
    helpers::*,
    on_both_databases,
};

on_both_databases!(
    the_event_log_keeps_student_events_only_with_persistence_on,
    answers_and_submissions_stay_durable_with_persistence_off,
    a_per_student_control_change_stays_in_the_log_with_persistence_off,
    a_teacher_session_alone_does_not_make_an_exam_known,
    the_report_after_the_room_ended_knows_every_student_from_their_records,
);

/// A student's progress and a teacher's announcement; returns the event
/// log as the REST timeline serves it, and the `student` rows in the
/// database's event log.
async fn progress_then_announcement(app: &TestApp) -> (Vec<Value>, i64) {
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    s.send_json(json!({"type": "progress", "question": "q7", "answered": 1, "ref": 1}))
        .await;
    s.expect_ack(1).await;
    let ev = t
        .next_where("s1's progress", |v| is_student_event(v, "s1", "progress"))
        .await;
    assert_eq!(ev["student"]["current_question"], "q7", "{ev}");
    t.send_json(json!({"type": "announce", "text": "Ten minutes left", "ref": 2}))
        .await;
    t.expect_ack(2).await;
    app.flushed().await;
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let timeline = app.timeline("e1", &teacher, 100).await;
    let pool = db_pool(app).await;
    let rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE exam_id = $1 AND kind = 'student'")
            .bind("e1")
            .fetch_one(&pool)
            .await
            .expect("count the student events");
    (timeline, rows)
}

fn kinds(timeline: &[Value]) -> Vec<&str> {
    timeline.iter().filter_map(|e| e["type"].as_str()).collect()
}

async fn the_event_log_keeps_student_events_only_with_persistence_on(db: Backend) {
    let Some(on) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    let (timeline, rows) = progress_then_announcement(&on).await;
    assert!(
        timeline
            .iter()
            .any(|e| is_student_event(e, "s1", "progress")),
        "the default logs the progress: {:?}",
        kinds(&timeline)
    );
    assert!(rows >= 2, "connected and progress are stored: {rows}");
    assert!(kinds(&timeline).contains(&"announcement"));

    let Some(off) = spawn_app_on(db, |s| s.events.persist = false).await else {
        return;
    };
    let (timeline, rows) = progress_then_announcement(&off).await;
    assert_eq!(rows, 0, "no student event reaches the database");
    assert_eq!(
        kinds(&timeline),
        ["announcement"],
        "the log keeps the exam's control events only"
    );
}

async fn answers_and_submissions_stay_durable_with_persistence_off(db: Backend) {
    let Some(app) = spawn_app_on(db, |s| s.events.persist = false).await else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    let pool = db_pool(&app).await;
    s.send_json(
        json!({"type": "answer", "id": "a1", "question": "q1", "value": {"choice": "B"}, "ref": 1}),
    )
    .await;
    s.expect_ack(1).await;
    // Read the moment the ack arrived: committed before it was sent.
    let stored: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM answers WHERE exam_id = $1 AND student_id = $2 AND answer_id = $3",
    )
    .bind("e1")
    .bind("s1")
    .bind("a1")
    .fetch_one(&pool)
    .await
    .expect("count the answer");
    assert_eq!(stored, 1, "the answer is stored when its ack arrives");
    s.send_json(json!({"type": "submit", "ref": "done"})).await;
    s.expect_ack("done").await;
    let submitted: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM submissions WHERE exam_id = $1 AND student_id = $2",
    )
    .bind("e1")
    .bind("s1")
    .fetch_one(&pool)
    .await
    .expect("count the submission");
    assert_eq!(
        submitted, 1,
        "the submission is stored when its ack arrives"
    );
    let ev = t
        .next_where("s1 submitted", |v| is_student_event(v, "s1", "submitted"))
        .await;
    let last_seen = ev["seq"].as_u64().expect("seq");
    let body = app
        .get_json("/v1/exams/e1/students/s1/answers", &teacher)
        .await;
    assert_eq!(body["answers"][0]["id"], "a1", "{body}");
    assert_eq!(
        body["answers"][0]["value"],
        json!({"choice": "B"}),
        "{body}"
    );
    // s2 connects and stores nothing: known from their session alone.
    let (s2, _) = app.student("e1", "s2").await;
    t.next_where("s2 connected", |v| is_student_event(v, "s2", "connected"))
        .await;
    s2.close().await;
    drop(t);
    s.close().await;
    app.flushed().await;

    // A restart on the same database, persistence still off.
    let url = app.db_url.clone();
    let TestAppParts { db_dir, data } = app.stop().await;
    let app2 = spawn_app_on_url(Some(url), |s| s.events.persist = false).await;
    // The teacher resumes from before the restart: the log cannot replay
    // what it never kept, so a snapshot, whose s1 is submitted with one
    // stored answer.
    let token = app2.token("t1", Role::Teacher, &["e1"]);
    let resume = format!("{}?last_seq={}", app2.ws_url("e1"), last_seen - 1);
    let mut t2 = app2.try_connect(&resume, Some(&token), &[]).await.unwrap();
    let snap = t2.snapshot().await;
    assert!(
        snap["seq"].as_u64().expect("seq") >= last_seen,
        "the numbering continues: {snap}"
    );
    let s1 = snap["students"]
        .as_array()
        .expect("students")
        .iter()
        .find(|st| st["student_id"] == "s1")
        .unwrap_or_else(|| panic!("s1 is known from its records: {snap}"));
    assert_eq!(s1["status"], "submitted", "{s1}");
    assert_eq!(s1["answered"], 1, "{s1}");
    let s2 = snap["students"]
        .as_array()
        .expect("students")
        .iter()
        .find(|st| st["student_id"] == "s2")
        .unwrap_or_else(|| panic!("s2 is known from their session: {snap}"));
    assert_eq!(s2["status"], "disconnected", "{s2}");
    assert_eq!(s2["answered"], 0, "{s2}");
    // The student comes back: still submitted, nothing more is taken.
    let (mut s, welcome) = app2.student("e1", "s1").await;
    assert_eq!(welcome["student"]["status"], "submitted", "{welcome}");
    assert_eq!(welcome["student"]["name"], "Name s1", "{welcome}");
    s.send_json(json!({"type": "answer", "id": "late", "question": "q2", "value": 2, "ref": 3}))
        .await;
    let reply = s.next_of_type("error").await;
    assert_eq!(reply["code"], "already_submitted", "{reply}");
    // The report knows them from their records, not as absent.
    let csv = app2
        .api(reqwest::Method::GET, "/v1/exams/e1/report.csv", &token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let row = csv
        .lines()
        .find(|l| l.starts_with("s1,"))
        .unwrap_or_else(|| panic!("a row for s1: {csv}"));
    let fields: Vec<_> = row.split(',').collect();
    assert_eq!(fields[2], "submitted", "{csv}");
    assert_eq!(fields[3], "1", "one question answered: {csv}");
    assert!(!fields[7].is_empty(), "submitted_at is set: {csv}");
    drop((db_dir, data));
}

/// A teacher's per-student change (here an accommodation) reaches a
/// connected student as a `student` event carrying `control`: a proctor's
/// record, kept in the log even when `student` events are not.
async fn a_per_student_control_change_stays_in_the_log_with_persistence_off(db: Backend) {
    let Some(app) = spawn_app_on(db, |s| s.events.persist = false).await else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["pc"]);
    let res = app
        .api(reqwest::Method::POST, "/v1/exams", &teacher)
        .json(&json!({"id": "pc", "title": "PC", "phase": "in_progress"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    let (mut t, _) = app.teacher("pc", "t1").await;
    let (_s, _) = app.student("pc", "s1").await;
    let res = app
        .api(reqwest::Method::PATCH, "/v1/exams/pc/students/s1", &teacher)
        .json(&json!({"extra_minutes": 2}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    t.next_where("s1's accommodation", |v| {
        v["type"] == "student" && v["student"]["student_id"] == "s1" && !v["control"].is_null()
    })
    .await;
    app.flushed().await;
    let page = app
        .get_json("/v1/exams/pc/students/s1/timeline?limit=100", &teacher)
        .await;
    let events = page["events"].as_array().expect("events");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "student" && !e["control"].is_null()),
        "the change is in s1's timeline: {page}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["type"] != "student" || !e["control"].is_null()),
        "no other student event is kept: {page}"
    );
}

/// A teacher's socket on a mistyped exam id leaves a session, not an
/// exam: REST still answers 404 (with persistence on or off).
async fn a_teacher_session_alone_does_not_make_an_exam_known(db: Backend) {
    let Some(app) = spawn_app_on(db, |s| s.events.persist = false).await else {
        return;
    };
    // As is: the test helpers would create the exam themselves.
    let teacher = app.token("t1", Role::Teacher, &["typo"]);
    let mut t = app
        .try_connect_as_is(&app.ws_url("typo"), Some(&teacher), &[])
        .await
        .expect("a teacher may watch an exam id nobody created");
    t.snapshot().await;
    drop(t);
    app.flushed().await;
    let pool = db_pool(&app).await;
    let sessions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE exam_id = $1")
        .bind("typo")
        .fetch_one(&pool)
        .await
        .expect("count the sessions");
    assert!(sessions >= 1, "the teacher's session is recorded");
    let res = app
        .api(reqwest::Method::GET, "/v1/exams/typo/timeline", &teacher)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::NOT_FOUND);
}

/// The report once the room is gone: with no `student` events in the log,
/// every student is rebuilt from their records (answers, submission,
/// sessions), none is `absent`, nobody is connected.
async fn the_report_after_the_room_ended_knows_every_student_from_their_records(db: Backend) {
    let Some(app) = spawn_app_on(db, |s| {
        s.events.persist = false;
        s.exam.room_linger = Duration::from_millis(50);
        s.exam.disconnect_grace = Duration::from_millis(20);
    })
    .await
    else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let (mut s1, _) = app.student("e1", "s1").await;
    s1.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": 1}))
        .await;
    s1.expect_ack(1).await;
    s1.send_json(json!({"type": "submit", "ref": 2})).await;
    s1.expect_ack(2).await;
    let (s2, _) = app.student("e1", "s2").await;
    s1.close().await;
    s2.close().await;
    eventually("the room ends", || app.state.registry.is_empty()).await;
    app.flushed().await;
    let csv = app
        .api(reqwest::Method::GET, "/v1/exams/e1/report.csv", &teacher)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let row = |id: &str| -> Vec<String> {
        csv.lines()
            .find(|l| l.starts_with(&format!("{id},")))
            .unwrap_or_else(|| panic!("a row for {id}: {csv}"))
            .split(',')
            .map(str::to_owned)
            .collect()
    };
    let (r1, r2) = (row("s1"), row("s2"));
    // No roster here: a token's `name` lives only in `student` events, so
    // the name column falls back to the student's id (DEPLOY.md says so).
    assert_eq!(
        (r1[1].as_str(), r1[2].as_str(), r1[3].as_str()),
        ("s1", "submitted", "1"),
        "{csv}"
    );
    assert!(!r1[7].is_empty(), "s1's submitted_at: {csv}");
    assert_eq!(
        (r2[1].as_str(), r2[2].as_str(), r2[3].as_str()),
        ("s2", "disconnected", "0"),
        "{csv}"
    );
    assert_eq!(r2[4], "1", "s2 connected once: {csv}");
    assert!(app.state.registry.is_empty(), "the report started no room");
}

/// Two instances on Redis, persistence off: a room started on B for a
/// teacher who resumes there takes Redis's history, which is whole, so the
/// teacher is replayed exactly what it missed instead of a snapshot (the
/// log's history, without `student` events, could not have been).
#[tokio::test]
async fn a_teacher_resuming_on_another_instance_is_replayed_with_persistence_off() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let apps = cluster(&redis, 2, |s| s.events.persist = false).await;
    let (mut t, _) = apps[0].teacher("e1", "t1").await;
    let (mut s, _) = apps[0].student("e1", "s1").await;
    let mut seqs = Vec::new();
    for q in 1..=3 {
        s.send_json(json!({"type": "progress", "question": q, "answered": q, "ref": q}))
            .await;
        s.expect_ack(q).await;
        let ev = t
            .next_where("s1's progress", |v| is_student_event(v, "s1", "progress"))
            .await;
        seqs.push(ev["seq"].as_u64().expect("seq"));
    }
    assert!(apps[1].state.registry.is_empty(), "B has no room yet");
    let token = apps[1].token("t2", Role::Teacher, &["e1"]);
    let resume = format!("{}?last_seq={}", apps[1].ws_url("e1"), seqs[0]);
    let mut t2 = apps[1]
        .try_connect(&resume, Some(&token), &[])
        .await
        .unwrap();
    for (i, want) in seqs[1..].iter().enumerate() {
        let ev = t2.next_json().await;
        assert_eq!(ev["type"], "student", "a replay, not a snapshot: {ev}");
        assert_eq!(
            ev["seq"].as_u64(),
            Some(*want),
            "event {i} of the replay: {ev}"
        );
        assert_eq!(ev["student"]["current_question"], json!(i + 2), "{ev}");
    }
}

/// Persistence off, and Redis loses everything while no room runs: the log
/// holds no `student` events to floor the cluster's counter, so the
/// reservation the origin kept ahead does. No seq a teacher may have seen
/// is issued again (a teacher resuming from an old seq would otherwise be
/// replayed different events under the same numbers).
#[tokio::test]
async fn after_redis_lost_its_data_no_seq_is_issued_twice_with_persistence_off() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let tune = |s: &mut examwatch::Settings| s.events.persist = false;
    let mut apps = cluster(&redis, 1, tune).await;
    let a = apps.remove(0);
    let url = a.db_url.clone();
    let (mut t, _) = a.teacher("e1", "t1").await;
    let (mut s, _) = a.student("e1", "s1").await;
    let mut last = 0;
    for q in 1..=5 {
        s.send_json(json!({"type": "progress", "question": q, "answered": q, "ref": q}))
            .await;
        s.expect_ack(q).await;
        let ev = t
            .next_where("s1's progress", |v| is_student_event(v, "s1", "progress"))
            .await;
        last = ev["seq"].as_u64().expect("seq");
    }
    s.close().await;
    drop(t);
    let parts = a.stop().await;
    redis.stop();
    redis.start_again();
    let b = join_cluster(&redis, &url, 1..2, tune).await.remove(0);
    let (mut t, snap) = b.teacher("e1", "t1").await;
    assert!(
        snap["seq"].as_u64().expect("seq") >= last,
        "the snapshot does not go back to before {last}: {snap}"
    );
    let (mut s, _) = b.student("e1", "s1").await;
    s.send_json(json!({"type": "progress", "question": 9, "answered": 5, "ref": 9}))
        .await;
    s.expect_ack(9).await;
    let ev = t
        .next_where("s1's progress on B", |v| {
            is_student_event(v, "s1", "progress")
        })
        .await;
    assert!(
        ev["seq"].as_u64().expect("seq") > last,
        "numbering continues after {last}: {ev}"
    );
    drop(parts);
}
