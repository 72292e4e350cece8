//! `GET /v1/exams/{id}/me/events`: a student's own server-to-client
//! messages as Server-Sent Events (docs/PROTOCOL.md 7.1) — their state on
//! connect, live `exam_update`, `message`, `announcement`,
//! `session_invalidated` / `terminated` (after which it ends) —,
//! acknowledged with `POST /v1/exams/{id}/me/received`; admitted like a
//! student's socket, and never counted as the student connecting.

use std::time::Duration;

use examwatch::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// Creates `exam` in progress, `seconds` long for each student.
async fn timed_exam_at(base: &str, app: &TestApp, exam: &str, seconds: u32) {
    let admin = app.token("admin", Role::Admin, &[]);
    let res = reqwest::Client::new()
        .post(format!("{base}/v1/exams"))
        .bearer_auth(&admin)
        .json(&json!({"id": exam, "title": exam, "phase": "in_progress", "duration_seconds": seconds}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
}

async fn timed_exam(app: &TestApp, exam: &str, seconds: u32) {
    timed_exam_at(&app.http(""), app, exam, seconds).await;
}

/// POST `path` on the server at `base` with `body`: status and JSON.
async fn post_at(base: &str, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let res = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request sent");
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn act_at(base: &str, exam: &str, token: &str, body: Value) -> (StatusCode, Value) {
    post_at(base, &format!("/v1/exams/{exam}/actions"), token, body).await
}

/// `POST me/received {"id"}` as `sub`.
async fn received_at(base: &str, app: &TestApp, exam: &str, sub: &str, id: &str) -> Value {
    let token = app.token(sub, Role::Student, &[exam]);
    let path = format!("/v1/exams/{exam}/me/received");
    let (status, body) = post_at(base, &path, &token, json!({ "id": id })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The delivery state of action `id` to `student`, as the audit lists it.
async fn delivery_at(base: &str, app: &TestApp, exam: &str, id: &str, student: &str) -> String {
    let teacher = app.token("audit", Role::Teacher, &[exam]);
    let list = get_json_at(
        &format!("{base}/v1/exams/{exam}/actions?limit=50"),
        &teacher,
    )
    .await;
    let action = list["actions"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["id"] == id))
        .unwrap_or_else(|| panic!("action {id} listed: {list}"));
    action["students"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["student_id"] == student))
        .and_then(|s| s["delivery"].as_str())
        .unwrap_or_else(|| panic!("{student} in {action}"))
        .to_owned()
}

/// The `{"error": {"code"}}` of a refused request, with its status.
async fn refusal(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().await.expect("a JSON error");
    (status, body["error"]["code"].as_str().unwrap_or("").into())
}

#[tokio::test]
async fn the_stream_starts_with_the_students_state_then_follows_the_exam_live() {
    let app = spawn_app().await;
    timed_exam(&app, "x1", 600).await;
    let teacher = app.token("t1", Role::Teacher, &["x1"]);
    // The socket starts the student's clock; the stream shows that deadline.
    let (mut socket, welcome) = app.student("x1", "s1").await;
    let mut sse = app.student_sse("x1", "s1").await;
    assert_eq!(sse.headers["content-type"], "text/event-stream");

    let first = sse.next_student_event().await;
    assert_eq!(
        (first.event.as_str(), first.id.as_deref()),
        ("exam_update", None)
    );
    assert_eq!(first.data["cause"], "stream", "{:?}", first.data);
    assert_eq!(first.data["phase"], "in_progress");
    assert_eq!(first.data["deadline"], welcome["deadline"], "{welcome}");
    assert!(
        first.data["deadline"].is_string(),
        "a timed exam: {welcome}"
    );
    assert_eq!(first.data["paused"], false);
    assert_eq!(first.data["extra_minutes"], 0);
    assert!(first.data["server_time"].is_string());

    // A phase change reaches the stream as it reaches the socket.
    let (status, body) = post_at(
        &app.http(""),
        "/v1/exams/x1/phase",
        &teacher,
        json!({"phase": "paused"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let paused = sse.next_student_event_named("exam_update").await;
    assert_eq!(paused.data["paused"], true, "{:?}", paused.data);
    assert_eq!(paused.data["phase"], "paused");
    assert_eq!(paused.data["cause"], "phase");
    let on_socket = socket.next_of_type("exam_update").await;
    assert_eq!(on_socket["paused"], true);

    // Announcements are for everyone, the stream included.
    let (mut t, _) = app.teacher("x1", "t1").await;
    t.send_json(json!({"type": "announce", "text": "ten minutes left", "ref": 1}))
        .await;
    t.expect_ack(1).await;
    let ann = sse.next_student_event_named("announcement").await;
    assert_eq!(ann.data["text"], "ten minutes left");
    assert_eq!(app.metric("examwatch_sse_student_streams"), 1);
}

#[tokio::test]
async fn a_message_is_pending_until_the_stream_acknowledges_it() {
    let app = spawn_app().await;
    let base = app.http("");
    timed_exam(&app, "m1", 600).await;
    let teacher = app.token("t1", Role::Teacher, &["m1"]);
    // Sent while nobody listens: owed, and sent when the stream opens.
    let (status, answer) = act_at(
        &base,
        "m1",
        &teacher,
        json!({"id": "early", "kind": "message", "students": ["s1"], "text": "before"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let mut sse = app.student_sse("m1", "s1").await;
    assert_eq!(sse.next_student_event().await.event, "exam_update");
    let early = sse.next_student_event().await;
    assert_eq!(early.event, "message");
    assert_eq!(early.id.as_deref(), Some("early"));
    assert_eq!(early.data["text"], "before");

    // A live one: nobody acknowledges it within action_ack_wait.
    let (_, answer) = act_at(
        &base,
        "m1",
        &teacher,
        json!({"id": "live", "kind": "message", "students": ["s1"], "text": "hello"}),
    )
    .await;
    assert_eq!(answer["students"][0]["delivery"], "pending", "{answer}");
    let msg = sse.next_student_event_named("message").await;
    assert_eq!(msg.id.as_deref(), Some("live"));
    assert_eq!(msg.data["text"], "hello");
    assert_eq!(msg.data["from"], "Name t1");
    assert_eq!(
        delivery_at(&base, &app, "m1", "live", "s1").await,
        "pending"
    );

    let (mut t, _) = app.teacher("m1", "t1").await;
    let ack = received_at(&base, &app, "m1", "s1", "live").await;
    assert_eq!(ack, json!({"id": "live", "recorded": true}));
    assert_eq!(
        delivery_at(&base, &app, "m1", "live", "s1").await,
        "delivered"
    );
    let d = t.next_of_type("delivery").await;
    assert_eq!(
        (d["action_id"].as_str(), d["state"].as_str()),
        (Some("live"), Some("delivered"))
    );
    // Again: nothing is owed any more; the earlier one still is.
    let again = received_at(&base, &app, "m1", "s1", "live").await;
    assert_eq!(again["recorded"], false);
    assert_eq!(
        delivery_at(&base, &app, "m1", "early", "s1").await,
        "pending"
    );

    // Bad calls are named.
    let path = "/v1/exams/m1/me/received";
    let (status, err) = post_at(&base, path, &teacher, json!({"id": "live"})).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("students_only"))
    );
    let student = app.token("s1", Role::Student, &["m1"]);
    let (status, err) = post_at(&base, path, &student, json!({"id": ""})).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_field"))
    );
    let (status, _) = post_at(&base, path, &student, json!({"ident": "x"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let res = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&json!({"id": "live"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refusal(res).await,
        (StatusCode::UNAUTHORIZED, "missing_token".into())
    );
}

#[tokio::test]
async fn deny_and_terminate_end_the_stream_after_their_frame() {
    let app = spawn_app().await;
    let base = app.http("");
    timed_exam(&app, "d1", 600).await;
    let teacher = app.token("t1", Role::Teacher, &["d1"]);
    let mut denied = app.student_sse("d1", "s1").await;
    let mut ended = app.student_sse("d1", "s2").await;
    assert_eq!(denied.next_student_event().await.event, "exam_update");
    assert_eq!(ended.next_student_event().await.event, "exam_update");

    act_at(
        &base,
        "d1",
        &teacher,
        json!({"id": "deny-1", "kind": "deny", "students": ["s1"]}),
    )
    .await;
    let bye = denied.next_student_event().await;
    assert_eq!(bye.event, "session_invalidated");
    assert_eq!(bye.id.as_deref(), Some("deny-1"));
    assert_eq!(bye.data["reason"], "access_revoked");
    denied.expect_end().await;

    act_at(
        &base,
        "d1",
        &teacher,
        json!({"id": "term-1", "kind": "terminate", "students": ["s2"], "reason": "cheating"}),
    )
    .await;
    let bye = ended.next_student_event_named("terminated").await;
    assert_eq!(bye.id.as_deref(), Some("term-1"));
    ended.expect_end().await;
    eventually("both streams ended", || {
        app.metric("examwatch_sse_student_streams") == 0
    })
    .await;

    // A removed student may still acknowledge what removed them...
    assert_eq!(
        received_at(&base, &app, "d1", "s1", "deny-1").await["recorded"],
        true
    );
    assert_eq!(
        delivery_at(&base, &app, "d1", "deny-1", "s1").await,
        "delivered"
    );
    // ...but gets no new stream, as they get no socket.
    for (sub, code) in [("s1", "access_revoked"), ("s2", "terminated")] {
        let token = app.token(sub, Role::Student, &["d1"]);
        let resp = app
            .sse_get(&app.me_events_url("d1"), Some(&token), &[])
            .await;
        assert_eq!(refusal(resp).await, (StatusCode::FORBIDDEN, code.into()));
    }
}

#[tokio::test]
async fn only_students_of_an_open_exam_get_a_stream() {
    let app = spawn_app().await;
    let teacher = app.token("t1", Role::Teacher, &["o1", "draft"]);
    // A draft exam, and one never created.
    let res = app
        .api(Method::POST, "/v1/exams", &teacher)
        .json(&json!({"id": "draft", "title": "Not yet"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    app.open_exam("o1").await;
    let url = app.me_events_url("o1");

    assert_eq!(
        refusal(app.sse_get(&url, Some(&teacher), &[]).await).await,
        (StatusCode::FORBIDDEN, "students_only".into())
    );
    let none = app.sse_get(&url, None, &[]).await;
    assert_eq!(
        refusal(none).await,
        (StatusCode::UNAUTHORIZED, "missing_token".into())
    );
    for exam in ["draft", "never"] {
        let token = app.token("s1", Role::Student, &[exam]);
        let resp = app
            .sse_get(&app.me_events_url(exam), Some(&token), &[])
            .await;
        assert_eq!(
            refusal(resp).await,
            (StatusCode::FORBIDDEN, "exam_not_open".into()),
            "{exam}"
        );
    }
    let other = app.token("s1", Role::Student, &["elsewhere"]);
    assert_eq!(
        refusal(app.sse_get(&url, Some(&other), &[]).await).await,
        (StatusCode::FORBIDDEN, "exam_not_granted".into())
    );
    assert_eq!(app.metric("examwatch_handshakes_rejected_total"), 5);

    // EventSource's way: the token in the query.
    let student = app.token("s1", Role::Student, &["o1"]);
    let resp = app
        .sse_get(&format!("{url}?access_token={student}"), None, &[])
        .await;
    let mut sse = SseClient::open(resp).await;
    assert_eq!(sse.next_student_event().await.event, "exam_update");
}

#[tokio::test]
async fn the_stream_does_not_connect_the_student() {
    let app = spawn_app_with(|s| s.sse.heartbeat = Duration::from_millis(100)).await;
    app.open_exam("c1").await;
    let mut sse = app.student_sse("c1", "s1").await;
    assert_eq!(sse.next_student_event().await.event, "exam_update");
    // A heartbeat comment, like the watchers' stream.
    assert_eq!(sse.next_block().await, Some(vec![": ping".to_owned()]));

    let (mut t, snapshot) = app.teacher("c1", "t1").await;
    assert_eq!(snapshot["students"], json!([]), "{snapshot}");
    assert_eq!(app.metric("examwatch_students_connected"), 0);
    assert_eq!(app.metric("examwatch_sse_student_streams"), 1);
    // Their socket is their first session, not a second one.
    let (_socket, _) = app.student("c1", "s1").await;
    let ev = t.next_of_type("student").await;
    assert!(is_student_event(&ev, "s1", "connected"), "{ev}");

    drop(sse);
    eventually("the stream's task ended", || {
        app.metric("examwatch_sse_student_streams") == 0
    })
    .await;
}

#[tokio::test]
async fn shutdown_ends_a_students_stream_cleanly() {
    let mut app = spawn_app_with(|s| s.server.drain_delay = Duration::from_millis(300)).await;
    app.open_exam("z1").await;
    let mut sse = app.student_sse("z1", "s1").await;
    assert_eq!(sse.next_student_event().await.event, "exam_update");
    app.begin_shutdown();
    sse.expect_end().await;
    app.stop().await;
}

#[tokio::test]
async fn a_stream_on_one_instance_gets_an_action_posted_on_another() {
    let Some(redis) = crate::cluster::Redis::start() else {
        return;
    };
    let apps = crate::cluster::cluster(&redis, 2, |_| {}).await;
    let (a, b) = (&apps[0], &apps[1]);
    let (base_a, base_b) = (a.http(""), b.http(""));
    timed_exam(a, "k1", 600).await;
    let mut sse = a.student_sse("k1", "s1").await;
    assert_eq!(sse.next_student_event().await.event, "exam_update");
    let teacher = b.token("t1", Role::Teacher, &["k1"]);
    let (status, answer) = act_at(
        &base_b,
        "k1",
        &teacher,
        json!({"id": "far", "kind": "message", "students": ["s1"], "text": "from B"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let msg = sse.next_student_event_named("message").await;
    assert_eq!(msg.id.as_deref(), Some("far"));
    assert_eq!(msg.data["text"], "from B");
    // Acknowledged through the other instance; the audit agrees on both.
    assert_eq!(
        received_at(&base_b, b, "k1", "s1", "far").await["recorded"],
        true
    );
    assert_eq!(
        delivery_at(&base_a, a, "k1", "far", "s1").await,
        "delivered"
    );
    // A phase change made on B is pushed on A's stream.
    let (status, _) = post_at(
        &base_b,
        "/v1/exams/k1/phase",
        &teacher,
        json!({"phase": "paused"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let paused = sse.next_student_event_named("exam_update").await;
    assert_eq!(paused.data["paused"], true, "{:?}", paused.data);
}

#[tokio::test]
async fn a_stream_elsewhere_follows_a_per_student_clock_to_time_up() {
    let Some(redis) = crate::cluster::Redis::start() else {
        return;
    };
    let apps = crate::cluster::cluster(&redis, 2, |_| {}).await;
    let (a, b) = (&apps[0], &apps[1]);
    let admin = a.token("admin", Role::Admin, &[]);
    let (status, exam) = post_at(
        &a.http(""),
        "/v1/exams",
        &admin,
        json!({"id": "k2", "title": "k2", "phase": "in_progress", "timing": "per_student", "duration_seconds": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{exam}");
    // The stream on B, before the student's clock started: no deadline.
    let mut sse = b.student_sse("k2", "s1").await;
    let first = sse.next_student_event_named("exam_update").await;
    assert_eq!(first.data["deadline"], Value::Null, "{:?}", first.data);
    // Their socket on A starts their clock; B's stream learns the deadline.
    let (_s, welcome) = a.student("k2", "s1").await;
    let deadline = ms(&welcome["deadline"]);
    let started = sse.next_student_event_named("exam_update").await;
    assert_eq!(
        ms(&started.data["deadline"]),
        deadline,
        "{:?}",
        started.data
    );
    // And B's room ends their time at that deadline.
    let up = loop {
        let e = sse.next_student_event_named("exam_update").await;
        if e.data["cause"] == "time_up" {
            break e;
        }
    };
    assert_eq!(ms(&up.data["deadline"]), deadline, "{:?}", up.data);
    assert!(examwatch::store::now_ms() >= deadline, "not before it");
}

#[tokio::test]
async fn the_openapi_document_describes_the_students_stream_and_acknowledgement() {
    let app = spawn_app().await;
    let doc: Value = reqwest::get(app.http("/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses = |path: &str, method: &str| {
        let mut s: Vec<String> = doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} documented"))
            .keys()
            .cloned()
            .collect();
        s.sort();
        s
    };
    assert_eq!(
        statuses("/v1/exams/{exam_id}/me/events", "get"),
        ["200", "400", "401", "403", "429", "503"]
    );
    assert_eq!(
        statuses("/v1/exams/{exam_id}/me/received", "post"),
        ["200", "400", "401", "403", "413", "415", "422", "503"]
    );
    let op = &doc["paths"]["/v1/exams/{exam_id}/me/events"]["get"];
    assert!(
        op["responses"]["200"]["content"]["text/event-stream"].is_object(),
        "{op}"
    );
}
