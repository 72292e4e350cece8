//! Handshake rate limits: a reconnect loop with one token, or a flood from
//! one address, gets 429 with `Retry-After` before the upgrade, while other
//! students (other subjects, other addresses) are served as usual. And the
//! token's size limits (its length, checked before decoding, and the exams
//! it names), on every way a token comes in.

use std::net::SocketAddr;

use examwatch::auth::Role;
use serde_json::{Value, json};
use tokio_tungstenite::{
    MaybeTlsStream,
    tungstenite::{self, client::IntoClientRequest, http::HeaderValue},
};

use crate::helpers::*;

/// What a refused handshake answered: status, `Retry-After`, JSON body.
pub fn refusal(err: tungstenite::Error) -> (u16, Option<String>, Value) {
    match err {
        tungstenite::Error::Http(resp) => {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().expect("ASCII").to_owned());
            let body = serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                .expect("JSON error body");
            (resp.status().as_u16(), retry_after, body)
        }
        e => panic!("unexpected error {e}"),
    }
}

/// Opens a handshake from the local address `from` (any 127.0.0.0/8
/// address is this machine's), with a bearer token.
pub async fn connect_from(
    from: [u8; 4],
    app: &TestApp,
    token: &str,
) -> Result<Client, tungstenite::Error> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback source address");
    let stream = socket.connect(app.addr).await.expect("TCP connect");
    let mut req = app.ws_url("e1").into_client_request()?;
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let (ws, response) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("handshake timed out")?;
    Ok(Client { ws, response })
}

/// The `Retry-After` of a limit of 3 per minute: one slot frees every
/// 20 s, so the wait is between 1 and 20 whole seconds.
fn assert_retry_after(retry_after: Option<String>) {
    let secs: u64 = retry_after
        .expect("a Retry-After header")
        .parse()
        .expect("whole seconds");
    assert!((1..=20).contains(&secs), "Retry-After {secs}");
}

#[tokio::test]
async fn a_reconnect_loop_with_one_token_gets_429_and_others_are_unaffected() {
    let app = spawn_app_with(|s| {
        s.limits.handshakes_per_subject = 3;
        s.limits.handshake_window = std::time::Duration::from_secs(60);
    })
    .await;
    let looping = app.token("s1", Role::Student, &["e1"]);
    for _ in 0..3 {
        let mut c = app.connect("e1", &looping).await;
        assert_eq!(c.next_of_type("welcome").await["type"], "welcome");
        c.close().await;
    }
    let err = app
        .try_connect(&app.ws_url("e1"), Some(&looping), &[])
        .await
        .err()
        .expect("the fourth handshake in a minute is refused");
    let (status, retry_after, body) = refusal(err);
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_retry_after(retry_after);
    // A fresh token for the same student is the same subject.
    let again = app.token("s1", Role::Student, &["e1"]);
    let (status, _, _) = refusal(
        app.try_connect(&app.ws_url("e1"), Some(&again), &[])
            .await
            .err()
            .expect("refused"),
    );
    assert_eq!(status, 429);

    // Another student and a teacher, from the same address, are served.
    let (_s2, welcome) = app.student("e1", "s2").await;
    assert_eq!(welcome["student"]["student_id"], "s2");
    let (_t, snapshot) = app.teacher("e1", "t1").await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(app.metric("examwatch_handshakes_rate_limited_total"), 2);
    assert_eq!(app.metric("examwatch_handshakes_rejected_total"), 2);
}

#[tokio::test]
async fn a_flood_from_one_address_gets_429_and_other_addresses_are_served() {
    let app = spawn_app_with(|s| {
        s.limits.handshakes_per_ip = 3;
        s.limits.handshakes_per_subject = 0;
        s.limits.handshake_window = std::time::Duration::from_secs(60);
    })
    .await;
    app.open_exam("e1").await;
    let here = [127, 0, 0, 1];
    // Refused handshakes count too: the per-IP limit comes before the token.
    let (status, _, body) = refusal(
        connect_from(here, &app, "not.a.jwt")
            .await
            .err()
            .expect("refused"),
    );
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("invalid_token"))
    );
    for sub in ["s1", "s2"] {
        let mut c = connect_from(here, &app, &app.token(sub, Role::Student, &["e1"]))
            .await
            .expect("within the limit");
        c.next_of_type("welcome").await;
    }
    let err = connect_from(here, &app, &app.token("s3", Role::Student, &["e1"]))
        .await
        .err()
        .expect("the fourth handshake from this address in a minute is refused");
    let (status, retry_after, body) = refusal(err);
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_retry_after(retry_after);

    // The same student from another address is served.
    let mut c = connect_from(
        [127, 0, 0, 2],
        &app,
        &app.token("s3", Role::Student, &["e1"]),
    )
    .await
    .expect("another address has its own limit");
    assert_eq!(
        c.next_of_type("welcome").await["student"]["student_id"],
        "s3"
    );
    assert_eq!(app.metric("examwatch_handshakes_rate_limited_total"), 1);
    assert_eq!(app.metric("examwatch_handshakes_rejected_total"), 2);
}

/// A student token for `e1` that also names `extra` other exams.
fn token_naming(app: &TestApp, sub: &str, role: Role, extra: usize) -> String {
    let mut exams: Vec<String> = (0..extra).map(|i| format!("other-{i}")).collect();
    exams.push("e1".into());
    let exams: Vec<&str> = exams.iter().map(String::as_str).collect();
    app.token(sub, role, &exams)
}

#[tokio::test]
async fn a_token_naming_too_many_exams_is_refused_everywhere() {
    let app = spawn_app_with(|s| s.limits.max_token_exams = 10).await;
    app.open_exam("e1").await;
    // Ten exams in all: admitted.
    let fine = token_naming(&app, "s1", Role::Student, 9);
    let mut c = app.connect("e1", &fine).await;
    c.next_of_type("welcome").await;
    // Eleven: refused at the socket, the stream, a ticket and the REST API.
    let student = token_naming(&app, "s2", Role::Student, 10);
    let (status, _, body) = refusal(
        app.try_connect(&app.ws_url("e1"), Some(&student), &[])
            .await
            .err()
            .expect("refused"),
    );
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("too_many_exams"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("11") && m.contains("10")),
        "{body}"
    );
    let teacher = token_naming(&app, "t1", Role::Teacher, 10);
    let resp = app
        .sse_get(&app.events_url("e1"), Some(&teacher), &[])
        .await;
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "too_many_exams");
    let resp = reqwest::Client::new()
        .post(app.http("/v1/tickets"))
        .bearer_auth(&student)
        .json(&json!({"exam_id": "e1"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "too_many_exams");
    let resp = app
        .api(reqwest::Method::GET, "/v1/exams/e1", &teacher)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "too_many_exams");
}

#[tokio::test]
async fn a_token_over_the_size_limit_is_refused_before_it_is_decoded() {
    let app = spawn_app_with(|s| s.limits.max_token_bytes = 600).await;
    app.open_exam("e1").await;
    let small = app.token("s1", Role::Student, &["e1"]);
    assert!(small.len() <= 600, "{}", small.len());
    let mut c = app.connect("e1", &small).await;
    c.next_of_type("welcome").await;
    // A real token over the limit, and 20 KB of garbage: the same answer,
    // so the garbage was never parsed (it would be `invalid_token`).
    let large = token_naming(&app, "s2", Role::Student, 40);
    assert!(large.len() > 600);
    let garbage = "x".repeat(20_000);
    for token in [&large, &garbage] {
        let (status, _, body) = refusal(
            app.try_connect(&app.ws_url("e1"), Some(token), &[])
                .await
                .err()
                .expect("refused"),
        );
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &json!("token_too_large")),
            "{body}"
        );
    }
    // In the query as well as the header.
    let url = format!("{}?access_token={garbage}", app.ws_url("e1"));
    let (status, _, body) = refusal(
        app.try_connect_as_is(&url, None, &[])
            .await
            .err()
            .expect("refused"),
    );
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("token_too_large"))
    );
    let resp = app
        .api(reqwest::Method::GET, "/v1/exams", &garbage)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "token_too_large");
    let resp = reqwest::Client::new()
        .post(app.http("/v1/tickets"))
        .bearer_auth(&large)
        .json(&json!({"exam_id": "e1"}))
        .send()
        .await
        .expect("sent");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "token_too_large");
}
