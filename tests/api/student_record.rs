//! A student's record for disputes (issue 14 item 9, PROTOCOL.md 1.8):
//! `GET /v1/exams/{id}/students/{student_id}` shows an accommodation, an
//! extension, an alert, a message, a raised hand and two sessions from two
//! IPs with exact values, the deadline the student was told, and the same
//! record rebuilt from the database once no room runs; the student's
//! timeline pages exactly their events; only watchers of the exam read it.
//! On SQLite and PostgreSQL.

use examwatch::auth::Role;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::{
    MaybeTlsStream,
    tungstenite::{
        client::IntoClientRequest,
        http::HeaderValue,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};

use crate::{helpers::*, on_both_databases};

on_both_databases!(
    the_record_shows_everything_that_happened_to_the_student,
    the_record_is_for_watchers_of_the_exam_only,
);

/// A student socket from `ip` (any 127.0.0.0/8 address is this host),
/// with its `welcome`.
async fn student_from(app: &TestApp, exam: &str, sub: &str, ip: &str) -> (Client, Value) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(app.addr).await.expect("connect");
    let mut req = app.ws_url(exam).into_client_request().unwrap();
    let token = app.token(sub, Role::Student, &[exam]);
    let h = req.headers_mut();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h.insert("user-agent", HeaderValue::from_static("record-test/1"));
    let (ws, response) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("handshake in time")
    .expect("handshake accepted");
    let mut c = Client { ws, response };
    let welcome = c.next_of_type("welcome").await;
    (c, welcome)
}

async fn act(app: &TestApp, exam: &str, token: &str, body: Value) -> Value {
    let res = app
        .api(Method::POST, &format!("/v1/exams/{exam}/actions"), token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

/// Status and body of a GET.
async fn get(app: &TestApp, path: &str, token: &str) -> (StatusCode, Value) {
    let res = app.api(Method::GET, path, token).send().await.unwrap();
    (res.status(), res.json().await.unwrap_or(Value::Null))
}

/// The record, once `ready` holds (the database writer is asynchronous).
async fn record_when(
    app: &TestApp,
    path: &str,
    token: &str,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = get(app, path, token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if ready(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{what}: never happened; last record {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Whether a stored event is about `sid` (its `student` or its `student_id`).
fn names(ev: &Value, sid: &str) -> bool {
    ev["student"]["student_id"] == sid || ev["student_id"] == sid
}

async fn the_record_shows_everything_that_happened_to_the_student(db: Backend) {
    let Some(app) = spawn_app_on(db, |s| s.exam.alert_window = std::time::Duration::ZERO).await
    else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["rec"]);
    let res = app
        .api(Method::POST, "/v1/exams", &teacher)
        .json(
            &json!({"id": "rec", "title": "Record", "phase": "in_progress", "duration_seconds": 600,
                      "roster": [{"student_id": "ada", "name": "Ada Lovelace", "extra_minutes": 2},
                                 {"student_id": "bob", "name": "Bob"},
                                 {"student_id": "cy", "name": "Cy"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let (mut t, _) = app.teacher("rec", "t1").await;
    let (mut ada, _) = student_from(&app, "rec", "ada", "127.0.0.1").await;
    let (mut bob, _) = app.student("rec", "bob").await;
    bob.send_json(json!({"type": "answer", "id": "b1", "question": "q1", "value": 1, "ref": "b"}))
        .await;
    bob.expect_ack("b").await;
    // Two distinct questions, one answered twice.
    for (i, q) in ["q1", "q2", "q1"].into_iter().enumerate() {
        ada.send_json(
            json!({"type": "answer", "id": format!("a{i}"), "question": q, "value": i, "ref": i}),
        )
        .await;
        ada.expect_ack(i).await;
    }
    ada.send_json(json!({"type": "focus", "state": "lost", "ref": "f"}))
        .await;
    ada.expect_ack("f").await;
    let focus = t
        .next_where("ada's focus_lost alert", |v| {
            v["type"] == "alert" && v["student_id"] == "ada" && v["kind"] == "focus_lost"
        })
        .await;
    let extend = act(
        &app,
        "rec",
        &teacher,
        json!({"id": "ext-1", "kind": "extend", "students": ["ada"], "minutes": 5}),
    )
    .await;
    let update = receive_action(&mut ada, "exam_update", "ext-1").await;
    assert_eq!(extend["students"][0]["student_id"], "ada", "{extend}");
    act(
        &app,
        "rec",
        &teacher,
        json!({"id": "msg-1", "kind": "message", "students": ["ada"], "text": "five more minutes"}),
    )
    .await;
    receive_action(&mut ada, "message", "msg-1").await;
    ada.send_json(json!({"type": "raise_hand", "text": "thanks", "ref": "h"}))
        .await;
    ada.expect_ack("h").await;
    // She closes (1000, "bye") and comes back from another IP.
    ada.ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline(), ada.ws.next()).await {}
    let (_ada2, welcome2) = student_from(&app, "rec", "ada", "127.0.0.2").await;
    assert_eq!(welcome2["deadline"], update["deadline"], "{welcome2}");
    t.next_where("ada's ip_changed alert", |v| {
        v["type"] == "alert" && v["student_id"] == "ada" && v["kind"] == "ip_changed"
    })
    .await;

    let proctor = app.token("p1", Role::Proctor, &["rec"]);
    let path = "/v1/exams/rec/students/ada";
    let r = record_when(&app, path, &proctor, "two sessions, one closed", |r| {
        r["sessions"].as_array().is_some_and(|s| s.len() == 2)
            && !r["sessions"][0]["closed_at"].is_null()
            && r["hands"].as_array().is_some_and(|h| h.len() == 1)
            && r["alerts"].as_array().is_some_and(|a| a.len() >= 2)
            && r["actions"][1]["students"][0]["delivery"] == "delivered"
    })
    .await;
    assert_eq!(
        (&r["student_id"], &r["name"], &r["live"]),
        (&json!("ada"), &json!("Ada Lovelace"), &json!(true)),
        "{r}"
    );
    assert_eq!(
        r["deadline"], update["deadline"],
        "the deadline she was told"
    );
    assert_eq!(r["paused"], false);
    assert_eq!(
        r["accommodations"],
        json!({"extra_minutes": 2, "time_multiplier": 1.0})
    );
    assert_eq!(r["extension_ms"], 300_000);
    assert!(r["started_at"].is_string(), "{r}");
    assert_eq!(r["finished"], Value::Null);
    assert_eq!(r["access"], json!({"denied": false, "reason": null}));
    assert_eq!(r["answers"], 2, "distinct questions");
    assert_eq!(r["state"]["student_id"], "ada");
    assert_eq!(r["state"]["connections"], 2);
    assert_eq!(r["state"]["deadline"], update["deadline"]);
    // Sessions, oldest first, with their addresses and how they closed.
    let s = &r["sessions"];
    assert_eq!(
        (&s[0]["ip"], &s[0]["user_agent"], &s[0]["close_code"]),
        (&json!("127.0.0.1"), &json!("record-test/1"), &json!(1000)),
        "{s}"
    );
    assert_eq!(s[0]["close_reason"], "client: bye");
    assert_eq!(
        (&s[0]["ip"], &s[0]["user_agent"]),
        (&json!("127.0.0.1"), &json!("record-test/1")),
        "{s}"
    );
    assert_eq!(
        (&s[1]["ip"], &s[1]["closed_at"], &s[1]["close_code"]),
        (&json!("127.0.0.2"), &Value::Null, &Value::Null),
        "{s}"
    );
    assert_ne!(s[0]["session_id"], s[1]["session_id"]);
    assert!(s[0]["instance_id"].as_str().is_some_and(|i| !i.is_empty()));
    // Alerts: the focus loss exactly as watchers got it, then the new IP.
    let alerts = r["alerts"].as_array().unwrap();
    let first = &alerts[0];
    assert_eq!(
        (
            &first["alert_id"],
            &first["kind"],
            &first["category"],
            &first["state"],
            &first["resolution"]
        ),
        (
            &focus["alert_id"],
            &json!("focus_lost"),
            &json!("test_taker"),
            &json!("open"),
            &Value::Null
        ),
        "{first}"
    );
    assert!(
        alerts.iter().any(|a| a["kind"] == "ip_changed"),
        "{alerts:?}"
    );
    assert!(alerts.iter().all(|a| a["student_id"] == "ada"));
    // The actions that targeted her, oldest first, with her delivery.
    let actions = r["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(
        (&actions[0]["id"], &actions[0]["kind"]),
        (&json!("ext-1"), &json!("extend"))
    );
    assert_eq!(actions[0]["students"][0]["delivery"], "delivered");
    assert_eq!(actions[0]["students"][0]["deadline"], update["deadline"]);
    assert_eq!(
        (&actions[1]["id"], &actions[1]["kind"]),
        (&json!("msg-1"), &json!("message"))
    );
    assert_eq!(actions[1]["students"].as_array().unwrap().len(), 1);
    assert_eq!(r["hands"][0]["text"], "thanks");
    assert_eq!(r["hands"][0]["lowered_at"], Value::Null);
    // Bob's record has none of hers; Cy, on the roster, never came.
    let (_, bob_r) = get(&app, "/v1/exams/rec/students/bob", &proctor).await;
    assert_eq!(
        (&bob_r["actions"], &bob_r["alerts"], &bob_r["answers"]),
        (&json!([]), &json!([]), &json!(1)),
        "{bob_r}"
    );
    let (status, cy) = get(&app, "/v1/exams/rec/students/cy", &proctor).await;
    assert_eq!(status, StatusCode::OK, "{cy}");
    assert_eq!(
        (&cy["name"], &cy["sessions"], &cy["state"], &cy["answers"]),
        (&json!("Cy"), &json!([]), &Value::Null, &json!(0)),
        "{cy}"
    );

    // Her timeline: exactly her events, in seq order, in pages of 2.
    app.flushed().await;
    let mut mine = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = get(
            &app,
            &format!("/v1/exams/rec/students/ada/timeline?after_seq={after}&limit=2"),
            &proctor,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let events = page["events"].as_array().unwrap().clone();
        assert!(events.len() <= 2);
        mine.extend(events);
        after = page["next_after_seq"].as_i64().unwrap();
        if page["has_more"] == false {
            break;
        }
    }
    let all = app.timeline("rec", &teacher, 1000).await;
    let expected: Vec<&Value> = all.iter().filter(|e| names(e, "ada")).collect();
    assert!(expected.len() > 5, "{expected:?}");
    assert_eq!(mine.iter().collect::<Vec<_>>(), expected);
    assert!(
        mine.windows(2)
            .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64())
    );
    assert!(
        mine.iter()
            .any(|e| e["type"] == "alert" && e["kind"] == "focus_lost")
    );
    for limit in [0, 1001] {
        let (status, body) = get(
            &app,
            &format!("/v1/exams/rec/students/ada/timeline?limit={limit}"),
            &proctor,
        )
        .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_field"))
        );
    }

    // Ended, then restarted: no room runs, the record comes from the
    // database and the server computes the same deadline.
    let res = app
        .api(Method::POST, "/v1/exams/rec/phase", &teacher)
        .json(&json!({"phase": "ended"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let ended = record_when(&app, path, &proctor, "ada finished", |r| {
        !r["finished"].is_null()
    })
    .await;
    assert_eq!(ended["finished"]["how"], "time_up", "{ended}");
    drop(_ada2);
    let url = app.db_url.clone();
    let _parts = app.stop().await;
    let app2 = spawn_app_on_url(Some(url), |_| {}).await;
    let proctor2 = app2.token("p1", Role::Proctor, &["rec"]);
    let (status, again) = get(&app2, path, &proctor2).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["live"], false, "{again}");
    assert_eq!(again["deadline"], ended["deadline"]);
    assert_eq!(again["finished"], ended["finished"]);
    assert_eq!(again["state"]["student_id"], "ada");
    assert_eq!(again["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(again["actions"], ended["actions"]);
    assert_eq!(again["answers"], 2);
}

async fn the_record_is_for_watchers_of_the_exam_only(db: Backend) {
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["rights"]);
    let res = app
        .api(Method::POST, "/v1/exams", &teacher)
        .json(
            &json!({"id": "rights", "title": "R", "phase": "in_progress",
                      "roster": [{"student_id": "s1", "name": "S One"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let path = "/v1/exams/rights/students/s1";
    let (status, r) = get(&app, path, &teacher).await;
    assert_eq!(
        (status, &r["name"]),
        (StatusCode::OK, &json!("S One")),
        "{r}"
    );
    for p in [path.to_owned(), format!("{path}/timeline")] {
        let other = app.token("t2", Role::Teacher, &["elsewhere"]);
        let (status, body) = get(&app, &p, &other).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::FORBIDDEN, &json!("exam_not_granted")),
            "{p}"
        );
        let student = app.token("s1", Role::Student, &["rights"]);
        let (status, body) = get(&app, &p, &student).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::FORBIDDEN, &json!("teachers_only")),
            "{p}"
        );
    }
    let admin = app.token("root", Role::Admin, &[]);
    for p in [
        "/v1/exams/nope/students/s1",
        "/v1/exams/nope/students/s1/timeline",
        "/v1/exams/rights/students/ghost",
    ] {
        let (status, body) = get(&app, p, &admin).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::NOT_FOUND, &json!("not_found")),
            "{p}"
        );
    }
    // Both routes are in the OpenAPI document with their statuses.
    let doc: Value = reqwest::get(app.http("/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let record = &doc["paths"]["/v1/exams/{id}/students/{student_id}"];
    assert!(record["get"]["responses"]["404"].is_object(), "{record}");
    assert!(
        record["patch"].is_object(),
        "the accommodations route stays"
    );
    let timeline = &doc["paths"]["/v1/exams/{id}/students/{student_id}/timeline"]["get"];
    assert!(timeline["responses"]["422"].is_object());
}
