//! Roles (issue 14 item 1): a proctor watches like a teacher, on the socket
//! and through the REST reads, but may not create or edit exams nor send
//! room-wide announcements; teachers still may; students keep their
//! `teachers_only`; and `examwatch token --role proctor` mints a token the
//! server accepts.

use examwatch::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// Status, `error.code` and `error.message` of a refused REST call.
async fn refusal(resp: reqwest::Response) -> (StatusCode, String, String) {
    let status = resp.status();
    let body: Value = resp.json().await.expect("JSON error body");
    let field = |k: &str| body["error"][k].as_str().unwrap_or_default().to_owned();
    (status, field("code"), field("message"))
}

/// A proctor's socket after its whole join snapshot.
async fn proctor(app: &TestApp, exam: &str, sub: &str) -> (Client, Value) {
    let mut c = app
        .connect(exam, &app.token(sub, Role::Proctor, &[exam]))
        .await;
    let snapshot = c.snapshot().await;
    (c, snapshot)
}

#[tokio::test]
async fn a_proctor_watches_over_the_socket_and_resumes() {
    let app = spawn_app().await;
    let (mut s, _) = app.student("e1", "s1").await;
    let (mut p, snapshot) = proctor(&app, "e1", "p1").await;
    assert_eq!(snapshot["type"], "snapshot");
    let students = snapshot["students"].as_array().expect("students");
    assert!(
        students.iter().any(|st| st["student_id"] == "s1"),
        "the snapshot lists the connected student: {snapshot}"
    );
    s.send_json(progress(3, 2)).await;
    let ev = p
        .next_where("s1's progress", |v| is_student_event(v, "s1", "progress"))
        .await;
    assert_eq!(ev["student"]["answered"], 2, "{ev}");
    let seen = ev["seq"].as_u64().expect("seq");

    // Gone, then back with `resume`: exactly the missed event is replayed.
    drop(p);
    s.send_json(progress(4, 3)).await;
    s.send_json(json!({"type": "heartbeat", "ref": "hb"})).await;
    s.expect_ack("hb").await;
    let (mut back, _) = proctor(&app, "e1", "p1").await;
    back.send_json(json!({"type": "resume", "last_seq": seen, "ref": "r"}))
        .await;
    let replayed = back
        .next_where("the replayed progress", |v| {
            v["seq"].as_u64() > Some(seen) && is_student_event(v, "s1", "progress")
        })
        .await;
    assert_eq!(replayed["student"]["answered"], 3, "{replayed}");
    back.expect_ack("r").await;
}

#[tokio::test]
async fn a_proctor_may_not_announce_and_its_socket_stays_open() {
    let app = spawn_app().await;
    let (mut s, _) = app.student("e1", "s1").await;
    let (mut p, _) = proctor(&app, "e1", "p1").await;
    p.send_json(json!({"type": "announce", "text": "Pens down", "ref": "a1"}))
        .await;
    let reply = p.next_where("the reply to a1", |v| v["ref"] == "a1").await;
    assert_eq!(
        reply,
        json!({"type": "error", "code": "forbidden", "ref": "a1",
               "message": "`announce` is not allowed for role proctor"})
    );
    // Still open, and still watching.
    p.send_json(json!({"type": "heartbeat", "ref": "hb"})).await;
    p.expect_ack("hb").await;

    // A teacher still may, and the student gets that one announcement only.
    let (mut t, _) = app.teacher("e1", "t1").await;
    t.send_json(json!({"type": "announce", "text": "10 minutes left", "ref": "a2"}))
        .await;
    t.expect_ack("a2").await;
    let got = s.next_of_type("announcement").await;
    assert_eq!(got["text"], "10 minutes left");
    let at_proctor = p.next_of_type("announcement").await;
    assert_eq!(at_proctor["text"], "10 minutes left", "proctors see it too");
}

#[tokio::test]
async fn a_proctor_reads_but_may_not_create_or_edit_exams() {
    let app = spawn_app().await;
    let teacher = app.token("t1", Role::Teacher, &["e1", "e2"]);
    let proctor = app.token("p1", Role::Proctor, &["e1", "e2"]);
    let created = app
        .api(Method::POST, "/v1/exams", &teacher)
        .json(&json!({"id": "e1", "title": "Algebra", "roster": [{"student_id": "s1", "name": "Ada"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let (mut s, _) = app.student("e1", "s1").await;
    s.send_json(json!({"type": "answer", "id": "a", "question": "q1", "value": 7, "ref": 1}))
        .await;
    s.expect_ack(1).await;
    app.flushed().await;

    // Reads: the exam, the list, the timeline, the answers, the report.
    let exam = app.get_json("/v1/exams/e1", &proctor).await;
    assert_eq!(exam["title"], "Algebra");
    let list = app.get_json("/v1/exams", &proctor).await;
    assert_eq!(list["exams"][0]["id"], "e1", "{list}");
    let timeline = app.timeline("e1", &proctor, 100).await;
    assert!(
        timeline
            .iter()
            .any(|ev| is_student_event(ev, "s1", "connected")),
        "{timeline:?}"
    );
    let answers = app
        .get_json("/v1/exams/e1/students/s1/answers", &proctor)
        .await;
    assert_eq!(answers["answers"][0]["value"], 7, "{answers}");
    let report = app
        .api(Method::GET, "/v1/exams/e1/report.csv", &proctor)
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), StatusCode::OK);
    let csv = report.text().await.unwrap();
    assert!(
        csv.lines().nth(1).is_some_and(|row| row.contains("s1")),
        "{csv}"
    );

    // Writes: 403 `forbidden`, naming the role and what it may not do.
    let create = app
        .api(Method::POST, "/v1/exams", &proctor)
        .json(&json!({"id": "e2", "title": "Biology"}))
        .send()
        .await
        .unwrap();
    let (status, code, message) = refusal(create).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    assert!(
        message.contains("proctor") && message.contains("create or edit exams"),
        "{message}"
    );
    let roster = app
        .api(Method::PUT, "/v1/exams/e1/roster", &proctor)
        .json(&json!({"roster": []}))
        .send()
        .await
        .unwrap();
    let (status, code, message) = refusal(roster).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    assert!(message.contains("proctor"), "{message}");
    // Nothing was changed: e2 does not exist, and s1 is still on the roster.
    let missing = app
        .api(Method::GET, "/v1/exams/e2", &proctor)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        app.get_json("/v1/exams/e1", &proctor).await["roster_size"],
        1
    );

    // The grant still comes first: an exam the token lacks is
    // `exam_not_granted`, whatever the right.
    let other = app.token("p2", Role::Proctor, &["e2"]);
    let (status, code, _) = refusal(
        app.api(Method::GET, "/v1/exams/e1", &other)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "exam_not_granted")
    );

    // A teacher still may do both.
    let replaced = app
        .api(Method::PUT, "/v1/exams/e1/roster", &teacher)
        .json(&json!({"roster": [{"student_id": "s1", "name": "Ada"}, {"student_id": "s2", "name": "Bob"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), StatusCode::NO_CONTENT);
    let created = app
        .api(Method::POST, "/v1/exams", &teacher)
        .json(&json!({"id": "e2", "title": "Biology"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_student_is_still_teachers_only_on_the_rest_api() {
    let app = spawn_app().await;
    let student = app.token("s1", Role::Student, &["e1"]);
    for (method, path) in [
        (Method::GET, "/v1/exams"),
        (Method::GET, "/v1/exams/e1"),
        (Method::GET, "/v1/exams/e1/timeline"),
        (Method::POST, "/v1/exams"),
    ] {
        let resp = app
            .api(method.clone(), path, &student)
            .json(&json!({"id": "e1", "title": "T"}))
            .send()
            .await
            .unwrap();
        let (status, code, _) = refusal(resp).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "teachers_only"),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn the_cli_mints_a_proctor_token_the_server_accepts() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let out = examwatch_command(dir.path())
        .env("EXAMWATCH__AUTH__JWT_SECRET", SECRET)
        .args([
            "token",
            "--sub",
            "p1",
            "--name",
            "Mr Proctor",
            "--role",
            "proctor",
            "--exam",
            "e1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let claims = app.keys.verify(&token).expect("the server verifies it");
    assert_eq!((claims.role, claims.sub.as_str()), (Role::Proctor, "p1"));
    // Accepted where it matters: the socket (a watcher's snapshot) and REST.
    let mut c = app.connect("e1", &token).await;
    assert_eq!(c.snapshot().await["exam_id"], "e1");
    let list = app
        .api(Method::GET, "/v1/exams", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
}
