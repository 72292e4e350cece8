//! Durable records, run on SQLite and on PostgreSQL: answers and
//! submissions are stored before they are acked, exactly once; a restart
//! continues the exam where it stopped; the roster is enforced.

use examwatch::auth::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::{helpers::*, on_both_databases};

on_both_databases!(
    answers_are_stored_once_and_acked_after_commit,
    a_submission_is_durable_and_final,
    a_restart_continues_seq_and_resume_replays_from_the_database,
    the_roster_decides_who_may_join,
    sessions_and_teacher_actions_are_recorded,
    a_record_the_database_refuses_does_not_stall_the_others,
);

async fn sessions_and_teacher_actions_are_recorded(db: Backend) {
    use sqlx::Row;
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    let (mut t, _) = app.teacher("e1", "t1").await;
    let token = app.token("s1", Role::Student, &["e1"]);
    let mut s = app
        .try_connect(
            &app.ws_url("e1"),
            Some(&token),
            &[("user-agent", "exam-browser/1.0")],
        )
        .await
        .unwrap();
    let welcome = s.next_of_type("welcome").await;
    t.send_json(json!({"type": "announce", "text": "Pens down in 5", "ref": 1}))
        .await;
    t.expect_ack(1).await;
    s.ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "bye\0now".into(),
    }))
    .await
    .unwrap();
    s.expect_close().await;
    app.flushed().await;
    let pool = db_pool(&app).await;
    let session_id = welcome["session_id"].as_str().unwrap();
    let mut row = None;
    for _ in 0..100 {
        app.flushed().await;
        let r = sqlx::query(
            "SELECT user_id, role, ip, user_agent, close_code, close_reason, instance_id, disconnected_at \
             FROM sessions WHERE id = $1",
        )
        .bind(session_id)
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(r) = r
            && r.try_get::<Option<i64>, _>(7).unwrap().is_some()
        {
            row = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let row = row.expect("the session was closed in the database");
    assert_eq!(row.try_get::<String, _>(0).unwrap(), "s1");
    assert_eq!(row.try_get::<String, _>(1).unwrap(), "student");
    assert!(
        row.try_get::<String, _>(2)
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(row.try_get::<String, _>(3).unwrap(), "exam-browser/1.0");
    assert_eq!(row.try_get::<Option<i64>, _>(4).unwrap(), Some(1000));
    assert_eq!(
        row.try_get::<String, _>(5).unwrap(),
        "client: byenow",
        "control characters stripped"
    );
    assert!(
        !row.try_get::<String, _>(6).unwrap().is_empty(),
        "instance id"
    );
    let action =
        sqlx::query("SELECT actor_id, action, payload FROM teacher_actions WHERE exam_id = $1 AND action <> 'create_exam'")
            .bind("e1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(action.try_get::<String, _>(0).unwrap(), "t1");
    assert_eq!(action.try_get::<String, _>(1).unwrap(), "announce");
    let payload: Value = serde_json::from_str(&action.try_get::<String, _>(2).unwrap()).unwrap();
    assert_eq!(payload["text"], "Pens down in 5");
}

/// PostgreSQL refuses NUL in text. Such input is refused at the socket, and
/// a record the database refuses anyway is set aside without holding up the
/// records around it.
async fn a_record_the_database_refuses_does_not_stall_the_others(db: Backend) {
    use examwatch::store::writer::Record;
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    let (mut s, _) = app.student("e1", "s1").await;
    s.send_json(json!({"type": "answer", "id": "a\u{0}", "question": "q1", "value": 1, "ref": 1}))
        .await;
    let refused = s.next_json().await;
    assert_eq!(
        (
            refused["type"].as_str(),
            refused["code"].as_str(),
            refused["ref"].as_i64()
        ),
        (Some("error"), Some("invalid_message"), Some(1)),
        "{refused}"
    );
    let (bad, bad_done) = tokio::sync::oneshot::channel();
    let (good, good_done) = tokio::sync::oneshot::channel();
    let answer = |id: &str, done| Record::Answer {
        exam_id: "e1".into(),
        student_id: "s9".into(),
        answer_id: id.into(),
        question: "q1".into(),
        value: "1".into(),
        at: 1,
        done,
    };
    // Written directly, as a stand-in for any record the database rejects.
    let bad_id = if db == Backend::Postgres {
        "bad\0id"
    } else {
        "fine-on-sqlite"
    };
    app.state.writer.write(answer(bad_id, bad));
    app.state.writer.write(answer("good", good));
    let bad_stored = tokio::time::timeout(WAIT, bad_done).await.unwrap().unwrap();
    let good_stored = tokio::time::timeout(WAIT, good_done)
        .await
        .unwrap()
        .unwrap();
    assert!(good_stored, "the good record is committed");
    assert_eq!(
        bad_stored,
        db == Backend::Sqlite,
        "PostgreSQL refuses NUL, SQLite stores it"
    );
    app.flushed().await;
    assert!(
        !app.state.writer.degraded(),
        "the writer is not stuck retrying"
    );
    s.send_json(json!({"type": "answer", "id": "a2", "question": "q2", "value": 2, "ref": 2}))
        .await;
    s.expect_ack(2).await;
}

async fn answers_are_stored_once_and_acked_after_commit(db: Backend) {
    use sqlx::Row;
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    let pool = db_pool(&app).await;
    let answers = [
        ("a1", "q1", json!({"choice": "B"})),
        ("a1", "q1", json!({"choice": "B"})), // re-sent after a drop: harmless
        ("a2", "q1", json!({"choice": "C"})), // changed their mind
        ("a3", "q2", json!("free text, with \"quotes\"")),
    ];
    for (i, (id, q, value)) in answers.iter().enumerate() {
        s.send_json(json!({"type": "answer", "id": id, "question": q, "value": value, "ref": i}))
            .await;
        s.expect_ack(i).await;
        // The ack comes after the commit: read at the moment it arrived
        // (nothing flushed, nothing waited for), the row is in the database.
        let stored: i64 = sqlx::query(
            "SELECT COUNT(*) FROM answers WHERE exam_id = $1 AND student_id = $2 AND answer_id = $3",
        )
        .bind("e1")
        .bind("s1")
        .bind(*id)
        .fetch_one(&pool)
        .await
        .expect("count the answer")
        .try_get(0)
        .expect("a count");
        assert_eq!(
            stored, 1,
            "answer {id} is stored, once, when its ack arrives"
        );
    }
    let body: Value = app
        .get_json("/v1/exams/e1/students/s1/answers", &teacher)
        .await;
    let ids: Vec<_> = body["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    // Three answers (a1 once) to two questions.
    assert_eq!(ids.len(), 3, "{body}");
    assert!(ids.contains(&"a1") && ids.contains(&"a2") && ids.contains(&"a3"));
    let a3 = body["answers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "a3")
        .unwrap();
    assert_eq!(a3["value"], json!("free text, with \"quotes\""));
    // `answered` counts questions with a stored answer, not answers: every
    // s1 event up to a marker (another student joining) shows 1 for q1
    // (however many answers it got), then 2 for q2 — never 3.
    let (_marker, _) = app.student("e1", "marker").await;
    let mut answered = Vec::new();
    let deadline = deadline();
    loop {
        let ev = t.next_of_type_within("student", deadline).await;
        if ev["student"]["student_id"] == "marker" {
            break;
        }
        if ev["cause"] == "answered" {
            answered.push(ev["student"]["answered"].clone());
        }
    }
    assert_eq!(answered, [json!(1), json!(2)], "one event per new question");
    let (_t2, snap) = app.teacher("e1", "t2").await;
    let s1 = snap["students"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["student_id"] == "s1")
        .expect("s1 in the snapshot");
    assert_eq!(s1["answered"], 2, "two questions answered: {s1}");
    s.send_json(json!({"type": "answer", "id": "x", "question": "q3"}))
        .await;
    assert_eq!(
        s.next_json().await["code"],
        "invalid_message",
        "value is required"
    );
}

async fn a_submission_is_durable_and_final(db: Backend) {
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    s.send_json(json!({"type": "submit", "ref": "done"})).await;
    s.expect_ack("done").await;
    let ev = t.next_of_type("student").await;
    let ev = if ev["cause"] == "connected" {
        t.next_of_type("student").await
    } else {
        ev
    };
    assert!(is_student_event(&ev, "s1", "submitted"), "{ev}");
    s.send_json(json!({"type": "answer", "id": "late", "question": "q1", "value": 1, "ref": 2}))
        .await;
    assert_eq!(
        s.next_json().await,
        json!({"type": "error", "code": "already_submitted",
               "message": "the exam is already submitted", "ref": 2})
    );
    app.flushed().await;
    let csv = app
        .api(Method::GET, "/v1/exams/e1/report.csv", &teacher)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let row = csv
        .lines()
        .find(|l| l.starts_with("s1,"))
        .expect("a row for s1");
    let fields: Vec<_> = row.split(',').collect();
    assert_eq!(fields[2], "submitted", "{csv}");
    assert!(!fields[7].is_empty(), "submitted_at is set: {csv}");
}

async fn a_restart_continues_seq_and_resume_replays_from_the_database(db: Backend) {
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": 1}))
        .await;
    s.expect_ack(1).await;
    // The teacher saw everything up to here, then lost its connection.
    let mut last_seen = 0;
    let deadline = deadline();
    loop {
        let ev = t.next_of_type_within("student", deadline).await;
        last_seen = ev["seq"].as_u64().unwrap().max(last_seen);
        if ev["cause"] == "answered" {
            break;
        }
    }
    drop(t);
    for q in 2..=4 {
        s.send_json(json!({"type": "progress", "question": q, "answered": 1, "ref": q}))
            .await;
        s.expect_ack(q).await;
    }
    s.close().await;
    let url = app.db_url.clone();
    // Graceful stop (the writer drains), then a new server on the same database.
    let TestAppParts { db_dir, data } = app.stop().await;
    let app2 = spawn_app_on_url(Some(url), |_| {}).await;
    let token = app2.token("t1", Role::Teacher, &["e1"]);
    let resume = format!("{}?last_seq={last_seen}", app2.ws_url("e1"));
    let mut t2 = app2.try_connect(&resume, Some(&token), &[]).await.unwrap();
    // s1's three progress events, replayed from the log, no snapshot first.
    let mut seqs = Vec::new();
    let mut last = Value::Null;
    for _ in 0..3 {
        last = t2.next_json().await;
        assert_eq!(last["type"], "student", "{last}");
        seqs.push(last["seq"].as_u64().unwrap());
    }
    assert_eq!(last["student"]["current_question"], 4);
    let expected: Vec<u64> = ((last_seen + 1)..=last_seen + 3).collect();
    assert_eq!(
        seqs, expected,
        "a gapless replay that continues the old numbering"
    );
    // The student comes back to the restarted server: same student, state kept.
    let (_s, welcome) = app2.student("e1", "s1").await;
    assert_eq!(welcome["student"]["current_question"], 4);
    assert_eq!(welcome["student"]["answered"], 1);
    let ev = t2.next_json().await;
    assert!(is_student_event(&ev, "s1", "reconnected"), "{ev}");
    assert_eq!(
        ev["seq"],
        seqs.last().unwrap() + 1,
        "seq continues after the restart"
    );
    drop((db_dir, data));
}

async fn the_roster_decides_who_may_join(db: Backend) {
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["final"]);
    let r = app
        .api(Method::POST, "/v1/exams", &teacher)
        .json(&json!({
            "id": "final", "title": "Final", "duration_minutes": 90,
            "roster": [
                {"student_id": "s1", "name": "Ada"},
                {"student_id": "s2", "name": "Bob", "allowed": false},
            ]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (_s1, _) = app.student("final", "s1").await;
    for (sub, code) in [("s2", "not_allowed"), ("s3", "not_on_roster")] {
        let token = app.token(sub, Role::Student, &["final"]);
        match app
            .try_connect(&app.ws_url("final"), Some(&token), &[])
            .await
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403);
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], code);
            }
            other => panic!("{sub} was not refused: {:?}", other.map(|_| ())),
        }
    }
    let r = app
        .api(Method::PUT, "/v1/exams/final/roster", &teacher)
        .json(&json!({"roster": [{"student_id": "s3", "name": "Cy"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_s3, welcome) = app.student("final", "s3").await;
    assert_eq!(welcome["student"]["student_id"], "s3");
    // Exams without a roster take any student their token admits.
    let (_x, _) = app.student("open-exam", "anyone").await;
}

/// The writer sleeps through its flush intervals while a batch
/// gathers (no wake-up per record), but a full batch (`batch_max` records
/// waiting) is committed at once. With a one-minute interval and batches
/// of two, nothing here could happen within the test's few seconds
/// otherwise: the room's start waits for its seq reservation to commit
/// (beside the session record), and the answer's ack for its commit
/// (beside the events after it).
#[tokio::test]
async fn a_full_batch_is_committed_without_waiting_for_the_flush_interval() {
    let app = spawn_app_with(|s| {
        s.database.flush_interval = std::time::Duration::from_secs(60);
        s.database.events_flush_interval = std::time::Duration::from_secs(60);
        s.database.batch_max = 2;
    })
    .await;
    let (mut s, _) = app.student("e1", "s1").await;
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": "a"}))
        .await;
    for i in 0..2 {
        s.send_json(
            json!({"type": "progress", "question": format!("q{i}"), "answered": 1, "ref": i}),
        )
        .await;
    }
    // expect_ack gives up well before the minute is over.
    s.expect_ack("a").await;
}

/// An answer's (and a submission's) ack waits for its commit, and its batch goes within
/// `database.flush_interval` even when it joins a batch of events, which
/// alone would gather for `events_flush_interval` (here a minute: the ack
/// would never come within the test's wait).
#[tokio::test]
async fn an_answer_joining_a_batch_of_events_is_committed_within_the_short_interval() {
    let app = spawn_app_with(|s| {
        s.database.events_flush_interval = std::time::Duration::from_secs(60);
    })
    .await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    s.send_json(progress(1, 0)).await;
    t.next_where("the progress event", |v| {
        is_student_event(v, "s1", "progress")
    })
    .await;
    assert!(
        app.state
            .writer
            .stats()
            .pending
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the event waits for its batch"
    );
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": "a"}))
        .await;
    s.expect_ack("a").await;
    // The event queued before the answer went with it (the answer's own
    // event, queued after it, may still be gathering).
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let logged = app.timeline("e1", &teacher, 100).await;
    assert!(
        logged.iter().any(|e| is_student_event(e, "s1", "progress")),
        "{logged:?}"
    );
    // A submission too: it joins the batch the answer's event began.
    s.send_json(json!({"type": "submit", "ref": "sub"})).await;
    s.expect_ack("sub").await;
}

/// A batch of records nobody waits on (events, session records) gathers
/// for `database.events_flush_interval`, not for `flush_interval`: one
/// commit where there would be one per `flush_interval`.
#[tokio::test]
async fn events_alone_gather_for_the_events_flush_interval() {
    let gather = std::time::Duration::from_millis(400);
    let app = spawn_app_with(|s| {
        s.database.flush_interval = std::time::Duration::from_millis(5);
        s.database.events_flush_interval = gather;
    })
    .await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    app.flushed().await;
    // Before the student's session record, the batch's first.
    let joined = std::time::Instant::now();
    let (mut s, _) = app.student("e1", "s1").await;
    s.send_json(progress(1, 0)).await;
    t.next_where("the progress event", |v| {
        is_student_event(v, "s1", "progress")
    })
    .await;
    app.flushed().await;
    // A lower bound only: the commit cannot come before the batch's
    // deadline, however slow the machine.
    assert!(
        joined.elapsed() >= gather - std::time::Duration::from_millis(50),
        "committed after {:?}, before the batch's {gather:?}",
        joined.elapsed()
    );
}
