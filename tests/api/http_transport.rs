//! The HTTP transport of students (docs/PROTOCOL.md 8, issue 18): a session
//! stream (`GET me/events?transport=http`) that is a connection of the
//! student like a socket, and `POST me/messages` batches answered with the
//! socket's replies, in order. A student on HTTP is the same student to
//! everyone else: same state, status, grace, single session, rate limit.

use std::time::Duration;

use examwatch::auth::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// One event of a session stream: `id:` (the highest seq delivered),
/// `event:` (the frame's type), `data:` (its JSON).
#[derive(Debug)]
struct Ev {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// A student on the HTTP transport: their session stream and token.
struct HttpStudent {
    sse: SseClient,
    base: String,
    exam: String,
    token: String,
    session: String,
    welcome: Value,
    /// The `id:` of the welcome event.
    welcome_id: Option<u64>,
}

fn parse(lines: &[String]) -> Ev {
    let mut id = None;
    let mut event = None;
    let mut data = None;
    for l in lines {
        if let Some(v) = l.strip_prefix("id: ") {
            id = Some(
                v.parse()
                    .unwrap_or_else(|e| panic!("id is a seq ({e}): {lines:?}")),
            );
        } else if let Some(v) = l.strip_prefix("event: ") {
            event = Some(v.to_owned());
        } else if let Some(v) = l.strip_prefix("data: ") {
            assert!(data.is_none(), "one data line: {lines:?}");
            data = Some(serde_json::from_str::<Value>(v).expect("data is JSON"));
        } else {
            panic!("an unexpected line in {lines:?}");
        }
    }
    let event = event.unwrap_or_else(|| panic!("an event line: {lines:?}"));
    let data = data.unwrap_or_else(|| panic!("a data line: {lines:?}"));
    if event != "close" {
        assert_eq!(data["type"], event.as_str(), "event = type: {lines:?}");
    }
    Ev { id, event, data }
}

/// `GET me/events?transport=http{query}` as `sub` on the server at `base`.
async fn open_at(
    base: &str,
    token: &str,
    exam: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let url = format!("{base}/v1/exams/{exam}/me/events?transport=http{query}");
    sse_get_at(&url, Some(token), headers).await
}

impl HttpStudent {
    async fn open(app: &TestApp, exam: &str, sub: &str) -> HttpStudent {
        Self::open_with(app, exam, sub, "", &[]).await
    }

    async fn open_with(
        app: &TestApp,
        exam: &str,
        sub: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> HttpStudent {
        app.open_exam(exam).await;
        let token = app.token(sub, Role::Student, &[exam]);
        Self::open_at(&app.http(""), &token, exam, query, headers).await
    }

    async fn open_at(
        base: &str,
        token: &str,
        exam: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> HttpStudent {
        let resp = open_at(base, token, exam, query, headers).await;
        let mut sse = SseClient::open(resp).await;
        let first = next_of(&mut sse).await;
        assert_eq!(first.event, "welcome", "the first event: {first:?}");
        HttpStudent {
            sse,
            base: base.to_owned(),
            exam: exam.to_owned(),
            token: token.to_owned(),
            session: first.data["session_id"]
                .as_str()
                .expect("a session_id")
                .into(),
            welcome_id: first.id,
            welcome: first.data,
        }
    }

    async fn next(&mut self) -> Ev {
        next_of(&mut self.sse).await
    }

    async fn next_named(&mut self, name: &str) -> Ev {
        loop {
            let ev = self.next().await;
            if ev.event == name {
                return ev;
            }
        }
    }

    /// POSTs `batch` for this session: status and body.
    async fn post(&self, batch: Value) -> (StatusCode, Value) {
        post_messages(
            &self.base,
            &self.token,
            &self.exam,
            Some(&self.session),
            batch,
        )
        .await
    }

    /// POSTs `batch`; must be a 200.
    async fn send(&self, batch: Value) -> Vec<Value> {
        let (status, body) = self.post(batch).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array().expect("an array of results").clone()
    }
}

/// The next event of a stream, skipping heartbeats.
async fn next_of(sse: &mut SseClient) -> Ev {
    loop {
        let block = sse.next_block().await.expect("the stream goes on");
        if block != [": ping"] {
            return parse(&block);
        }
    }
}

async fn post_messages(
    base: &str,
    token: &str,
    exam: &str,
    session: Option<&str>,
    batch: Value,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v1/exams/{exam}/me/messages"))
        .bearer_auth(token)
        .json(&batch);
    if let Some(s) = session {
        req = req.header("X-Examwatch-Session", s);
    }
    let res = tokio::time::timeout(WAIT * 3, req.send())
        .await
        .expect("the POST answered")
        .expect("request sent");
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The code of a refused request's `{"error": {"code"}}`.
fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_session_stream_is_a_connection_that_starts_with_the_welcome() {
    let app = spawn_app().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let s = HttpStudent::open(&app, "e1", "s1").await;
    assert_eq!(s.sse.headers["content-type"], "text/event-stream");
    assert_eq!(s.sse.headers["cache-control"], "no-cache");
    assert_eq!(s.sse.headers["x-accel-buffering"], "no");
    assert_eq!(s.welcome["exam_id"], "e1");
    assert_eq!(s.welcome["student"]["student_id"], "s1");
    assert_eq!(s.welcome["student"]["status"], "active");
    assert_eq!(
        s.welcome_id,
        s.welcome["last_seq"].as_u64(),
        "the welcome's id is its last_seq"
    );
    // Teachers see the student connect, as for a socket.
    let ev = t
        .next_where("connected", |v| is_student_event(v, "s1", "connected"))
        .await;
    assert_eq!(ev["student"]["connections"], 1);
    eventually("the student counts as connected", || {
        app.metric("examwatch_students_connected") == 1
    })
    .await;
    assert_eq!(app.state.http_sessions.len(), 1);
    // The listener stream (no transport) is still no connection.
    let _listener = app.student_sse("e1", "s2").await;
    let counts = app
        .get_json("/v1/exams/e1", &app.token("t1", Role::Teacher, &["e1"]))
        .await;
    assert_eq!(counts["counts"]["active"], 1, "{counts}");
}

#[tokio::test]
async fn every_message_type_gets_the_sockets_reply_in_order() {
    let app = spawn_app().await;
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let (mut t, _) = app.teacher("e1", "t1").await;
    let s = HttpStudent::open(&app, "e1", "s1").await;
    t.next_where("connected", |v| is_student_event(v, "s1", "connected"))
        .await;
    let results = s
        .send(json!([
            {"type": "progress", "question": 2, "answered": 1, "ref": "p"},
            {"type": "focus", "state": "lost", "ref": 7},
            {"type": "activity", "state": "idle", "ref": "a"},
            {"type": "heartbeat"},
            {"type": "raise_hand", "text": "help", "ref": "h"},
            {"type": "received", "id": "nothing-owed", "ref": "r"},
            {"type": "answer", "id": "a1", "question": "q1", "value": "B", "ref": "ans"},
        ]))
        .await;
    assert_eq!(
        results,
        [
            json!({"type": "ack", "ref": "p"}),
            json!({"type": "ack", "ref": 7}),
            json!({"type": "ack", "ref": "a"}),
            json!({"type": "ack"}),
            json!({"type": "ack", "ref": "h"}),
            json!({"type": "ack", "ref": "r"}),
            json!({"type": "ack", "ref": "ans"}),
        ]
    );
    // The ack of an answer comes after its commit: the stored answers
    // have it when the POST returns.
    let stored = app
        .get_json("/v1/exams/e1/students/s1/answers", &teacher)
        .await;
    let ids: Vec<&str> = stored["answers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert_eq!(ids, ["a1"], "{stored}");
    // Teachers see all of it, as from a socket.
    let ev = t
        .next_where("the answer", |v| {
            v["type"] == "student" && v["student"]["answered"] == 1
        })
        .await;
    assert_eq!(ev["student"]["current_question"], 2, "{ev}");
    let results = s
        .send(json!([{"type": "submit", "ref": "sub"}, {"type": "progress", "question": 3, "answered": 1, "ref": "late"}]))
        .await;
    assert_eq!(results[0], json!({"type": "ack", "ref": "sub"}));
    assert_eq!(results[1]["type"], "error");
    assert_eq!(results[1]["code"], "already_submitted");
    assert_eq!(results[1]["ref"], "late");
    let ev = t
        .next_where("submitted", |v| is_student_event(v, "s1", "submitted"))
        .await;
    assert_eq!(ev["student"]["status"], "submitted");
}

/// What teachers see of a student is the same whichever transport they use.
#[tokio::test]
async fn a_student_on_http_has_the_same_state_as_one_on_a_socket() {
    let app = spawn_app().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut socket, _) = app.student("e1", "ws").await;
    let http = HttpStudent::open(&app, "e1", "ht").await;
    let steps = [
        json!({"type": "progress", "question": 4, "answered": 2, "ref": 1}),
        json!({"type": "focus", "state": "lost", "ref": 2}),
        json!({"type": "answer", "id": "x", "question": "q1", "value": 1, "ref": 3}),
        json!({"type": "submit", "ref": 4}),
    ];
    for step in &steps {
        socket.send_json(step.clone()).await;
        socket.expect_ack(step["ref"].clone()).await;
    }
    let results = http.send(Value::Array(steps.to_vec())).await;
    assert!(results.iter().all(|r| r["type"] == "ack"), "{results:?}");
    let last = |who: &'static str| move |v: &Value| is_student_event(v, who, "submitted");
    let a = t.next_where("ws submitted", last("ws")).await["student"].clone();
    let b = t.next_where("ht submitted", last("ht")).await["student"].clone();
    let without_ids = |mut v: Value| {
        let o = v.as_object_mut().unwrap();
        for k in [
            "student_id",
            "name",
            "last_activity",
            "submitted_at",
            "started_at",
        ] {
            o.remove(k);
        }
        v
    };
    assert_eq!(without_ids(a), without_ids(b));
}

#[tokio::test]
async fn refusals_have_the_sockets_codes_and_whole_request_errors_theirs() {
    let app = spawn_app_with(|s| s.limits.http_batch_max = 3).await;
    let s = HttpStudent::open(&app, "e1", "s1").await;
    let results = s
        .send(json!([
            {"type": "nope", "ref": 1},
            {"type": "progress", "question": "x", "ref": 2},
            {"type": "announce", "text": "hi", "ref": 3},
        ]))
        .await;
    let codes: Vec<&str> = results
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["unknown_type", "invalid_message", "forbidden"]);
    assert_eq!(results[2]["ref"], 3);
    let results = s
        .send(json!([{"type": "resume", "last_seq": 0, "ref": "r"}, {"type": "refresh", "token": "t"}]))
        .await;
    assert_eq!(results[0]["code"], "unsupported_on_http");
    assert_eq!(results[0]["ref"], "r");
    assert_eq!(results[1]["code"], "unsupported_on_http");

    let four = json!([{"type": "heartbeat"}, {"type": "heartbeat"}, {"type": "heartbeat"}, {"type": "heartbeat"}]);
    let (status, body) = s.post(four).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "batch_too_big")
    );
    let (status, body) = s.post(json!([])).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_batch")
    );
    let (status, body) = s.post(json!({"type": "heartbeat"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_batch")
    );
    let big = "x".repeat(20_000);
    let (status, body) = s.post(json!([{"type": "raise_hand", "text": big}])).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "message_too_big")
    );

    let hb = json!([{"type": "heartbeat"}]);
    let base = app.http("");
    let (status, body) =
        post_messages(&base, &s.token, "e1", Some("not-a-session"), hb.clone()).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "no_session"));
    let (status, body) = post_messages(&base, &s.token, "e1", None, hb.clone()).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "missing_session")
    );
    // Another student cannot speak for this session.
    let other = app.token("s2", Role::Student, &["e1"]);
    let (status, body) = post_messages(&base, &other, "e1", Some(&s.session), hb.clone()).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "no_session"));
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let (status, body) = post_messages(&base, &teacher, "e1", Some(&s.session), hb.clone()).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "students_only")
    );
    let (status, _) = post_messages(&base, "garbage", "e1", Some(&s.session), hb).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_rate_limit_is_the_students_across_socket_and_http() {
    // A budget that does not refill during the test.
    let app = spawn_app_with(|s| s.limits.messages_per_minute = 3).await;
    let (mut socket, _) = app.student("e1", "s1").await;
    for i in 0..2 {
        socket
            .send_json(json!({"type": "heartbeat", "ref": i}))
            .await;
        socket.expect_ack(i).await;
    }
    // The HTTP session (taking over) spends from the same budget: one
    // message is left, the second of the batch is refused...
    let s = HttpStudent::open(&app, "e1", "s1").await;
    let results = s
        .send(json!([{"type": "heartbeat", "ref": "a"}, {"type": "heartbeat", "ref": "b"}]))
        .await;
    assert_eq!(results[0], json!({"type": "ack", "ref": "a"}));
    assert_eq!(results[1]["code"], "rate_limited", "{results:?}");
    assert!(results[1]["retry_after_ms"].as_u64().is_some());
    // ...and a batch that can take nothing is refused whole.
    let res = reqwest::Client::new()
        .post(app.http("/v1/exams/e1/me/messages"))
        .bearer_auth(&s.token)
        .header("X-Examwatch-Session", &s.session)
        .json(&json!([{"type": "heartbeat"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(code(&body), "rate_limited");
}

#[tokio::test]
async fn a_dropped_stream_is_a_disconnect_after_the_grace_and_a_new_one_within_it_a_reconnect() {
    let app = spawn_app_with(|s| s.exam.disconnect_grace = Duration::from_millis(300)).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let s = HttpStudent::open(&app, "e1", "s1").await;
    t.next_where("connected", |v| is_student_event(v, "s1", "connected"))
        .await;
    drop(s);
    let ev = t
        .next_where("disconnected", |v| {
            is_student_event(v, "s1", "disconnected")
        })
        .await;
    assert_eq!(ev["student"]["status"], "disconnected");
    // Within a long grace, a new stream is a reconnect, with no disconnect.
    let app = spawn_app_with(|s| s.exam.disconnect_grace = Duration::from_secs(30)).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let s = HttpStudent::open(&app, "e1", "s1").await;
    t.next_where("connected", |v| is_student_event(v, "s1", "connected"))
        .await;
    let session = s.session.clone();
    drop(s);
    let again = HttpStudent::open_with(
        &app,
        "e1",
        "s1",
        &format!("&previous_session={session}"),
        &[],
    )
    .await;
    let ev = t
        .next_where("reconnected", |v| {
            v["type"] == "student" && v["student"]["student_id"] == "s1"
        })
        .await;
    assert_eq!(ev["cause"], "reconnected", "{ev}");
    assert_eq!(again.welcome["student"]["connections"], 2);
}

#[tokio::test]
async fn one_session_across_transports_socket_then_http() {
    let app = spawn_app().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut socket, _) = app.student("e1", "s1").await;
    t.next_where("connected", |v| is_student_event(v, "s1", "connected"))
        .await;
    let _http = HttpStudent::open(&app, "e1", "s1").await;
    let bye = socket.next_of_type("session_invalidated").await;
    assert_eq!(bye["reason"], "second_session");
    let (code, _) = socket.expect_close().await;
    assert_eq!(code, Some(4001));
    let ev = t
        .next_where("second session", |v| {
            is_student_event(v, "s1", "second_session")
        })
        .await;
    assert_eq!(ev["student"]["connections"], 2);
}

#[tokio::test]
async fn one_session_across_transports_http_then_socket() {
    let app = spawn_app().await;
    let mut http = HttpStudent::open(&app, "e1", "s1").await;
    let (_socket, _) = app.student("e1", "s1").await;
    let bye = http.next_named("session_invalidated").await;
    assert_eq!(bye.data["reason"], "second_session");
    let close = http.next().await;
    assert_eq!(
        (close.event.as_str(), close.data["code"].as_u64()),
        ("close", Some(4001))
    );
    assert_eq!(http.sse.next_block().await, None, "the stream ended");
    let (status, body) = http.post(json!([{"type": "heartbeat"}])).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "no_session"));
}

#[tokio::test]
async fn previous_session_naming_an_http_session_is_a_reconnect() {
    let app = spawn_app_with(|s| s.exam.probe_timeout = Duration::from_millis(200)).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let http = HttpStudent::open(&app, "e1", "s1").await;
    t.next_where("connected", |v| is_student_event(v, "s1", "connected"))
        .await;
    reconnect_over(&app, &mut t, &http.session, "").await;
}

/// Student s1's socket naming `session` as its previous one (and `query`
/// more): welcomed as their second connection, a reconnect for teacher `t`.
async fn reconnect_over(app: &TestApp, t: &mut Client, session: &str, query: &str) -> Client {
    let url = format!("{}?previous_session={session}{query}", app.ws_url("e1"));
    let mut socket = connect_url(&url, &app.token("s1", Role::Student, &["e1"])).await;
    let welcome = socket.next_of_type("welcome").await;
    assert_eq!(welcome["student"]["connections"], 2);
    let ev = t
        .next_where("s1 again", |v| {
            v["type"] == "student" && v["student"]["student_id"] == "s1"
        })
        .await;
    assert_eq!(ev["cause"], "reconnected", "no second session: {ev}");
    socket
}

#[tokio::test]
async fn last_event_id_resumes_with_resumed_and_the_missed_announcements() {
    let app = spawn_app().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let mut s = HttpStudent::open(&app, "e1", "s1").await;
    t.send_json(json!({"type": "announce", "text": "one", "ref": 1}))
        .await;
    t.expect_ack(1).await;
    let one = s.next_named("announcement").await;
    assert_eq!(
        one.id,
        one.data["seq"].as_u64(),
        "the id follows the announcements"
    );
    let seen = one.id.expect("an id");
    drop(s);
    for (i, text) in ["two", "three"].iter().enumerate() {
        t.send_json(json!({"type": "announce", "text": text, "ref": i + 2}))
            .await;
        t.expect_ack(i + 2).await;
    }
    let last = seen.to_string();
    let mut s =
        HttpStudent::open_with(&app, "e1", "s1", "", &[("Last-Event-ID", last.as_str())]).await;
    assert_eq!(s.welcome_id, Some(seen), "not past what it has not got yet");
    let resumed = s.next_named("resumed").await;
    assert_eq!(resumed.data["recovered"], true);
    assert_eq!(resumed.data["replayed"], 2);
    let texts = [s.next().await, s.next().await];
    assert_eq!(
        texts
            .iter()
            .map(|e| e.data["text"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["two", "three"]
    );
    assert_eq!(texts[1].id, resumed.data["last_seq"].as_u64());
}

#[tokio::test]
async fn a_drain_ends_the_stream_with_close_1012() {
    let mut app = spawn_app().await;
    let mut s = HttpStudent::open(&app, "e1", "s1").await;
    app.begin_shutdown();
    let close = s.next_named("close").await;
    assert_eq!(close.data["code"], 1012, "{close:?}");
    assert_eq!(s.sse.next_block().await, None, "then the stream ends");
}

/// Two instances A and B on one Redis of their own (`None`: Redis or the
/// database is not there), exam e1 open, and teacher t1 on B past its
/// snapshot.
async fn two_instances() -> Option<(crate::cluster::Redis, Vec<TestApp>, Client)> {
    let redis = crate::cluster::Redis::start()?;
    let apps = crate::cluster::cluster_on(&redis, Backend::Sqlite, 2, |_| {}).await?;
    apps[0].open_exam("e1").await;
    let teacher = apps[1].token("t1", Role::Teacher, &["e1"]);
    let mut t = connect_url(&apps[1].ws_url("e1"), &teacher).await;
    t.snapshot().await;
    Some((redis, apps, t))
}

/// Two instances on one Redis: the student's stream on A, a teacher on B
/// sees them as any student; a POST on B is forwarded to A and answered
/// with A's results; a session whose holder does not answer is 503.
#[tokio::test]
async fn on_two_instances_the_post_may_reach_either() {
    let Some((redis, apps, mut t)) = two_instances().await else {
        return;
    };
    let (a, b) = (&apps[0], &apps[1]);
    let teacher = b.token("t1", Role::Teacher, &["e1"]);
    let s = HttpStudent::open(a, "e1", "s1").await;
    t.next_where("connected on A", |v| is_student_event(v, "s1", "connected"))
        .await;
    let on_a = s
        .send(json!([{"type": "progress", "question": 2, "answered": 0, "ref": "a"}]))
        .await;
    assert_eq!(on_a, [json!({"type": "ack", "ref": "a"})]);
    t.next_where("progress via A", |v| {
        v["type"] == "student" && v["student"]["current_question"] == 2
    })
    .await;
    // The same session through B: forwarded to A, acked after the commit.
    let batch = json!([
        {"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": "b1"},
        {"type": "nope"},
        {"type": "progress", "question": 3, "answered": 1},
    ]);
    let (status, body) = post_messages(&b.http(""), &s.token, "e1", Some(&s.session), batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[0], json!({"type": "ack", "ref": "b1"}));
    assert_eq!(body[1]["code"], "unknown_type");
    assert_eq!(body[2], json!({"type": "ack"}));
    let path =
        |app: &TestApp, path| app.metric_where("examwatch_http_batches_total", &[("path", path)]);
    assert_eq!(
        [path(b, "forwarded"), path(a, "relayed"), path(a, "local")],
        [1, 1, 1],
        "B forwarded it, A ran it for B (and its own first batch)"
    );
    t.next_where("progress via B", |v| {
        v["type"] == "student" && v["student"]["current_question"] == 3
    })
    .await;
    let stored = b
        .get_json("/v1/exams/e1/students/s1/answers", &teacher)
        .await;
    assert_eq!(stored["answers"][0]["id"], "a1", "{stored}");
    // No such session anywhere: 409 on either instance.
    let hb = json!([{"type": "heartbeat"}]);
    for app in [a, b] {
        let (status, body) =
            post_messages(&app.http(""), &s.token, "e1", Some("gone"), hb.clone()).await;
        assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "no_session"));
    }
    // A lease naming an instance that does not listen: 503.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("examwatch:{e1}:lease:s9")
        .arg("node-x/ghost")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ghost = b.token("s9", Role::Student, &["e1"]);
    let (status, body) = post_messages(&b.http(""), &ghost, "e1", Some("ghost"), hb).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "session_unreachable")
    );
    assert_eq!(path(b, "unreachable"), 1);
    assert_eq!(path(b, "forwarded"), 1, "each batch in one path");
}

/// On PostgreSQL too, an answer's ack comes after its commit: the stored
/// answers hold it when the POST returns; a re-sent one is harmless.
#[tokio::test]
async fn on_postgres_an_answer_is_acked_after_its_commit() {
    let Some(app) = spawn_app_on(Backend::Postgres, |_| {}).await else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let s = HttpStudent::open(&app, "e1", "s1").await;
    let answer = json!({"type": "answer", "id": "a1", "question": "q1", "value": "B", "ref": 1});
    for _ in 0..2 {
        let results = s.send(json!([answer.clone()])).await;
        assert_eq!(results, [json!({"type": "ack", "ref": 1})]);
        let stored = app
            .get_json("/v1/exams/e1/students/s1/answers", &teacher)
            .await;
        let ids: Vec<&str> = stored["answers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["id"].as_str())
            .collect();
        assert_eq!(ids, ["a1"], "stored once when acked: {stored}");
    }
}

#[tokio::test]
async fn the_session_stream_sends_its_heartbeat() {
    let app = spawn_app_with(|s| s.sse.heartbeat = Duration::from_millis(100)).await;
    let mut s = HttpStudent::open(&app, "e1", "s1").await;
    assert_eq!(s.sse.next_block().await, Some(vec![": ping".to_owned()]));
}

/// Refused messages spend the session's budget as a socket's do; past it
/// the stream ends with the socket's close code (1007 for malformed data).
#[tokio::test]
async fn too_many_refused_messages_end_the_session_with_1007() {
    let app = spawn_app_with(|s| s.limits.max_bad_messages = 2).await;
    let mut s = HttpStudent::open(&app, "e1", "s1").await;
    let results = s.send(json!([{"type": "nope"}, {"type": "nope"}])).await;
    assert!(
        results.iter().all(|r| r["code"] == "unknown_type"),
        "{results:?}"
    );
    let close = s.next_named("close").await;
    assert_eq!(close.data["code"], 1007, "{close:?}");
    assert_eq!(s.sse.next_block().await, None, "then the stream ends");
}

/// A session stream cannot `refresh`: at its token's end it gets `error
/// token_expired`, then `event: close` 4401.
#[tokio::test]
async fn the_tokens_end_ends_the_session_with_4401() {
    let app = spawn_app_with(|s| {
        s.auth.leeway = Duration::ZERO;
        s.auth.expiry_grace = Duration::ZERO;
    })
    .await;
    app.open_exam("e1").await;
    let token = app
        .keys
        .mint(
            "s1",
            "S One",
            Role::Student,
            vec!["e1".into()],
            Duration::from_secs(2),
        )
        .unwrap();
    let mut s = HttpStudent::open_at(&app.http(""), &token, "e1", "", &[]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let block = s.sse.next_block_within(deadline).await.expect("events");
        if block != [": ping"] {
            seen.push(parse(&block));
        }
    }
    assert_eq!(seen[0].event, "error");
    assert_eq!(seen[0].data["code"], "token_expired");
    assert_eq!(
        (seen[1].event.as_str(), seen[1].data["code"].as_u64()),
        ("close", Some(4401))
    );
}

/// The handover token (PROTOCOL.md 8.4): a socket that names the HTTP
/// session and presents its token takes it over at once, as a reconnect,
/// although the probe would wait a minute; so does a new session stream.
#[tokio::test]
async fn the_handover_token_takes_the_http_session_over_at_once() {
    let app = spawn_app_with(|s| s.exam.probe_timeout = Duration::from_secs(60)).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let mut http = HttpStudent::open(&app, "e1", "s1").await;
    t.next_where("connected", |v| is_student_event(v, "s1", "connected"))
        .await;
    let token = http.sse.headers["x-examwatch-handover"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(uuid::Uuid::try_parse(&token).is_ok(), "a UUID: {token}");
    assert_ne!(token, http.session, "not the shareable session id");
    // Socket: its welcome well within the probe's minute (WAIT is 5 s).
    let _socket = reconnect_over(&app, &mut t, &http.session, &format!("&handover={token}")).await;
    let close = http.next().await;
    assert_eq!(
        (close.event.as_str(), close.data["code"].as_u64()),
        ("close", Some(4001)),
        "taken over quietly: no session_invalidated first"
    );
    // HTTP to HTTP: a new stream presenting the token of the one it moves from.
    let first = HttpStudent::open(&app, "e1", "s2").await;
    let token = first.sse.headers["x-examwatch-handover"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut first = first;
    t.next_where("s2 connected", |v| is_student_event(v, "s2", "connected"))
        .await;
    let query = format!("&previous_session={}&handover={token}", first.session);
    let second = HttpStudent::open_with(&app, "e1", "s2", &query, &[]).await;
    assert_eq!(second.welcome["student"]["connections"], 2);
    let close = first.next().await;
    assert_eq!(
        (close.event.as_str(), close.data["code"].as_u64()),
        ("close", Some(4001))
    );
    let ev = t
        .next_where("s2 again", |v| {
            v["type"] == "student" && v["student"]["student_id"] == "s2"
        })
        .await;
    assert_eq!(ev["cause"], "reconnected", "{ev}");
    assert_ne!(
        second.sse.headers["x-examwatch-handover"].to_str().unwrap(),
        token,
        "each stream has its own"
    );
}

/// Without the right token the probe's rule holds: the new connection waits
/// `exam.probe_timeout` (the HTTP session cannot answer), then takes over.
#[tokio::test]
async fn a_wrong_handover_token_waits_for_the_probe() {
    let probe = Duration::from_millis(800);
    let app = spawn_app_with(|s| s.exam.probe_timeout = probe).await;
    let other = HttpStudent::open(&app, "e1", "s0").await;
    let others = other.sse.headers["x-examwatch-handover"]
        .to_str()
        .unwrap()
        .to_owned();
    let stranger = uuid::Uuid::new_v4().to_string();
    // Another student's, a malformed one, and a well-formed stranger.
    for (sub, wrong) in [
        ("s1", &others[..]),
        ("s2", "not-a-uuid"),
        ("s3", &stranger[..]),
    ] {
        let http = HttpStudent::open(&app, "e1", sub).await;
        let real = &http.sse.headers["x-examwatch-handover"];
        assert_ne!(real.to_str().unwrap(), wrong);
        let url = format!(
            "{}?previous_session={}&handover={wrong}",
            app.ws_url("e1"),
            http.session
        );
        let started = tokio::time::Instant::now();
        let mut socket = connect_url(&url, &app.token(sub, Role::Student, &["e1"])).await;
        let welcome = socket.next_of_type("welcome").await;
        assert!(
            started.elapsed() >= probe,
            "{wrong}: admitted after {:?}, before the probe's end",
            started.elapsed()
        );
        assert_eq!(welcome["student"]["connections"], 2, "then a reconnect");
    }
}

/// `limits.first_message_timeout` holds for HTTP sessions: one that POSTs
/// nothing ends with `event: close` 4408; one that POSTed stays.
#[tokio::test]
async fn an_http_session_that_never_posts_is_closed_at_the_first_message_deadline() {
    let app = spawn_app_with(|s| s.limits.first_message_timeout = Duration::from_millis(300)).await;
    let talking = HttpStudent::open(&app, "e1", "s1").await;
    assert_eq!(
        talking.send(json!([{"type": "heartbeat"}])).await,
        [json!({"type": "ack"})]
    );
    // A refused message is a message too, as on a socket.
    let refused = HttpStudent::open(&app, "e1", "s3").await;
    let results = refused.send(json!([{"type": "nope"}])).await;
    assert_eq!(results[0]["code"], "unknown_type");
    let mut silent = HttpStudent::open(&app, "e1", "s2").await;
    let close = silent.next_named("close").await;
    assert_eq!(
        close.data,
        json!({"code": 4408, "reason": "no message received"})
    );
    assert_eq!(silent.sse.next_block().await, None, "then the stream ends");
    // The talking ones' deadlines have passed too: they are still served.
    for s in [&talking, &refused] {
        assert_eq!(
            s.send(json!([{"type": "heartbeat"}])).await,
            [json!({"type": "ack"})]
        );
    }
    assert_eq!(app.state.http_sessions.len(), 2);
}

/// The connection metrics tell the transports apart, and the POSTs' paths
/// are counted.
#[tokio::test]
async fn connection_metrics_carry_the_transport_and_batches_are_counted() {
    let app = spawn_app().await;
    let open = |transport| {
        app.metric_where(
            "examwatch_connections_open",
            &[("role", "student"), ("transport", transport)],
        )
    };
    let (_socket, _) = app.student("e1", "ws").await;
    let http = HttpStudent::open(&app, "e1", "ht").await;
    eventually("one of each", || {
        open("websocket") == 1 && open("http") == 1
    })
    .await;
    assert_eq!(app.metric("examwatch_students_connected"), 2);
    let local = || app.metric_where("examwatch_http_batches_total", &[("path", "local")]);
    assert_eq!(local(), 0);
    http.send(json!([{"type": "heartbeat"}])).await;
    http.send(json!([{"type": "heartbeat"}, {"type": "heartbeat"}]))
        .await;
    assert_eq!(local(), 2, "one per batch, not per message");
    drop(http);
    eventually("the session closed", || open("http") == 0).await;
    assert_eq!(open("websocket"), 1);
}

/// Across instances (8.4): an HTTP session on A, and its client's socket on
/// B presenting the stream's token: B's kick carries it, A checks it and
/// closes the stream with 4001 and nothing before it (the library moves on
/// quietly); without the token A says `session_invalidated` first.
#[tokio::test]
async fn across_instances_the_handover_token_retires_the_http_session_quietly() {
    let Some((_redis, apps, mut t)) = two_instances().await else {
        return;
    };
    let (a, b) = (&apps[0], &apps[1]);
    for (sub, with_token) in [("s1", true), ("s2", false)] {
        let mut http = HttpStudent::open(a, "e1", sub).await;
        t.next_where("connected on A", |v| is_student_event(v, sub, "connected"))
            .await;
        let token = http.sse.headers["x-examwatch-handover"]
            .to_str()
            .unwrap()
            .to_owned();
        let proof = if with_token {
            format!("&handover={token}")
        } else {
            String::new()
        };
        let url = format!(
            "{}?previous_session={}{proof}",
            b.ws_url("e1"),
            http.session
        );
        let mut socket = connect_url(&url, &b.token(sub, Role::Student, &["e1"])).await;
        socket.next_of_type("welcome").await;
        let next = http.next().await;
        if with_token {
            assert_eq!(
                (next.event.as_str(), next.data["code"].as_u64()),
                ("close", Some(4001)),
                "{sub}: quietly, nothing before the close"
            );
        } else {
            assert_eq!(next.event, "session_invalidated", "{sub}: {next:?}");
            assert_eq!(next.data["reason"], "second_session");
            let close = http.next().await;
            assert_eq!(close.data["code"], 4001);
        }
        let ev = t
            .next_where("again on B", |v| {
                v["type"] == "student"
                    && v["student"]["student_id"] == sub
                    && v["cause"] != "progress"
            })
            .await;
        assert_eq!(ev["cause"], "reconnected", "{sub}: the same client: {ev}");
    }
}
