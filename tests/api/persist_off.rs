//! `events.persist = false`: `student` events reach teachers but never the
//! event log, while what a student is acked for (answers, submissions)
//! is still committed first and survives a restart. With the default, the
//! log keeps every event. On SQLite and on PostgreSQL.

use examwatch::auth::Role;
use serde_json::{Value, json};

use crate::{helpers::*, on_both_databases};

on_both_databases!(
    the_event_log_keeps_student_events_only_with_persistence_on,
    answers_and_submissions_stay_durable_with_persistence_off,
);

async fn db_pool(app: &TestApp) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(&app.db_url)
        .await
        .expect("connect to the test database")
}

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
    drop(t);
    s.close().await;

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
