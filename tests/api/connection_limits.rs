//! Limits on connections rather than messages: open connections per client
//! IP (sockets and SSE streams, refused with 429 before the upgrade, a place
//! given back when the connection ends), the client IP behind a trusted
//! proxy (`X-Forwarded-For` believed from `server.trusted_proxies` only),
//! and the deadline for a connection's first message.

use std::{net::IpAddr, time::Duration};

use examwatch::auth::Role;
use serde_json::{Value, json};

use crate::handshake_limits::{connect_from, refusal};
use crate::helpers::*;

const LOCAL: [u8; 4] = [127, 0, 0, 1];

/// Connections this server counts for `ip`.
fn open(app: &TestApp, ip: impl Into<IpAddr>) -> u32 {
    app.state.handshake_guard.connections.open(ip.into())
}

/// A refused socket handshake as (status, Retry-After, error code).
async fn refused_socket(
    app: &TestApp,
    sub: &str,
    role: Role,
    headers: &[(&'static str, &str)],
) -> (u16, Option<String>, Value) {
    let token = app.token(sub, role, &["e1"]);
    let err = app
        .try_connect(&app.ws_url("e1"), Some(&token), headers)
        .await
        .err()
        .unwrap_or_else(|| panic!("{sub}'s handshake should be refused"));
    let (status, retry_after, body) = refusal(err);
    (status, retry_after, body["error"]["code"].clone())
}

#[tokio::test]
async fn past_the_per_ip_cap_handshakes_get_429_and_a_closed_connection_frees_its_place() {
    let app = spawn_app_with(|s| s.limits.connections_per_ip = 3).await;
    let (s1, _) = app.student("e1", "s1").await;
    let (_t1, _) = app.teacher("e1", "t1").await;
    // An SSE stream is a long-lived connection too: the third.
    let watcher = app.token("t2", Role::Teacher, &["e1"]);
    let mut sse = app.sse("e1", &watcher).await;
    assert_eq!(sse.next_event().await.event, "snapshot");
    assert_eq!(open(&app, LOCAL), 3);

    // The fourth socket is answered 429 before the upgrade (never a socket
    // that is then dropped), with Retry-After.
    let (status, retry_after, code) = refused_socket(&app, "s2", Role::Student, &[]).await;
    assert_eq!((status, code), (429, json!("too_many_connections_from_ip")));
    assert_eq!(retry_after.as_deref(), Some("5"));
    // So is a fourth stream, and a ticket for a socket that would be refused.
    let resp = app
        .sse_get(&app.events_url("e1"), Some(&watcher), &[])
        .await;
    assert_eq!(resp.status().as_u16(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "too_many_connections_from_ip");
    let resp = reqwest::Client::new()
        .post(app.http("/v1/tickets"))
        .bearer_auth(app.token("s2", Role::Student, &["e1"]))
        .json(&json!({"exam_id": "e1"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "5");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "too_many_connections_from_ip");
    // Another address has its own count.
    let mut other = connect_from(
        [127, 0, 0, 2],
        &app,
        &app.token("s3", Role::Student, &["e1"]),
    )
    .await
    .expect("another address is served");
    other.next_of_type("welcome").await;
    // The socket, the stream and the ticket (counted with `transport="ticket"`).
    assert_eq!(app.metric("examwatch_handshakes_rejected_total"), 3);
    assert_eq!(open(&app, LOCAL), 3, "refusals hold no place");

    // A socket that closes gives its place back, and so does a stream.
    s1.close().await;
    eventually("the closed socket's place is free", || {
        open(&app, LOCAL) == 2
    })
    .await;
    let (_s2, welcome) = app.student("e1", "s2").await;
    assert_eq!(welcome["student"]["student_id"], "s2");
    drop(sse);
    eventually("the dropped stream's place is free", || {
        open(&app, LOCAL) == 2
    })
    .await;
    let mut sse = app.sse("e1", &watcher).await;
    assert_eq!(sse.next_event().await.event, "snapshot");
}

#[tokio::test]
async fn a_socket_refused_after_taking_its_place_gives_it_back() {
    let app = spawn_app_with(|s| s.limits.connections_per_ip = 1).await;
    // Refused after the per-IP checks (exam not granted): nothing is held.
    let token = app.token("s1", Role::Student, &["other"]);
    let err = app
        .try_connect(&app.ws_url("e1"), Some(&token), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(refusal(err).0, 403);
    assert_eq!(open(&app, LOCAL), 0);
    let (_s1, _) = app.student("e1", "s1").await;
    assert_eq!(open(&app, LOCAL), 1);
}

#[tokio::test]
async fn forwarded_for_is_believed_from_a_trusted_proxy_only() {
    let app = spawn_app_with(|s| {
        s.limits.connections_per_ip = 1;
        s.server.trusted_proxies = "127.0.0.1".parse().expect("a block");
        s.exam.alert_window = Duration::ZERO;
        s.exam.disconnect_grace = Duration::from_secs(30);
    })
    .await;
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let mut t = app
        .try_connect(&app.ws_url("e1"), Some(&teacher), &xff("198.51.100.1"))
        .await
        .expect("the teacher, from its own address");
    t.snapshot().await;
    // Each forwarded client has its own count, whatever the peer.
    let s1_token = app.token("s1", Role::Student, &["e1"]);
    let mut s1 = app
        .try_connect(&app.ws_url("e1"), Some(&s1_token), &xff("203.0.113.1"))
        .await
        .expect("s1 from 203.0.113.1");
    s1.next_of_type("welcome").await;
    let (status, _, code) = refused_socket(&app, "s2", Role::Student, &xff("203.0.113.1")).await;
    assert_eq!((status, code), (429, json!("too_many_connections_from_ip")));
    // The client is the right-most address: one forged on the left is no help.
    let (status, _, _) =
        refused_socket(&app, "s2", Role::Student, &xff("203.0.113.99, 203.0.113.1")).await;
    assert_eq!(status, 429);
    let mut s2 = app
        .try_connect(
            &app.ws_url("e1"),
            Some(&app.token("s2", Role::Student, &["e1"])),
            &xff("203.0.113.1, 203.0.113.2"),
        )
        .await
        .expect("s2 from 203.0.113.2");
    s2.next_of_type("welcome").await;
    assert_eq!(open(&app, [203, 0, 113, 1]), 1);
    assert_eq!(open(&app, [203, 0, 113, 2]), 1);
    assert_eq!(open(&app, LOCAL), 0, "the proxy itself is not counted");

    // The forwarded address is the session's: a reconnect from another one
    // raises ip_changed, and the record shows both.
    s1.close().await;
    eventually("s1's place is free", || open(&app, [203, 0, 113, 1]) == 0).await;
    let mut s1 = app
        .try_connect(&app.ws_url("e1"), Some(&s1_token), &xff("203.0.113.7"))
        .await
        .expect("s1 back from 203.0.113.7");
    s1.next_of_type("welcome").await;
    t.next_where("s1's ip_changed alert", |v| {
        v["type"] == "alert" && v["student_id"] == "s1" && v["kind"] == "ip_changed"
    })
    .await;
    app.flushed().await;
    let proctor = app.token("p1", Role::Proctor, &["e1"]);
    let record = app.get_json("/v1/exams/e1/students/s1", &proctor).await;
    let ips: Vec<&Value> = record["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| &s["ip"])
        .collect();
    assert_eq!(
        ips,
        [&json!("203.0.113.1"), &json!("203.0.113.7")],
        "{record}"
    );
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = spawn_app_with(|s| s.limits.connections_per_ip = 1).await;
    let s1 = app.token("s1", Role::Student, &["e1"]);
    let mut c = app
        .try_connect(
            &app.ws_url("e1"),
            Some(&s1),
            &[("x-forwarded-for", "203.0.113.1")],
        )
        .await
        .expect("s1");
    c.next_of_type("welcome").await;
    // Another "client" by the header, the same peer: the header is ignored.
    let (status, _, code) = refused_socket(
        &app,
        "s2",
        Role::Student,
        &[
            ("x-forwarded-for", "203.0.113.2"),
            ("forwarded", "for=203.0.113.3"),
        ],
    )
    .await;
    assert_eq!((status, code), (429, json!("too_many_connections_from_ip")));
    assert_eq!(open(&app, LOCAL), 1);
    assert_eq!(open(&app, [203, 0, 113, 1]), 0);
}

#[tokio::test]
async fn a_connection_that_never_speaks_is_closed_at_the_first_message_deadline() {
    let app = spawn_app_with(|s| {
        s.limits.first_message_timeout = Duration::from_millis(300);
    })
    .await;
    // These connect first and speak at once...
    let (mut talking, _) = app.student("e1", "s1").await;
    talking
        .send_json(json!({"type": "heartbeat", "ref": "hb1"}))
        .await;
    talking.expect_ack("hb1").await;
    let (mut teacher, _) = app.teacher("e1", "t1").await;
    teacher
        .send_json(json!({"type": "heartbeat", "ref": "t1"}))
        .await;
    teacher.expect_ack("t1").await;
    // ...these never do (answering pings is not a message).
    let (mut silent, _) = app.student("e1", "s2").await;
    let (mut silent_teacher, _) = app.teacher("e1", "t2").await;
    assert_eq!(
        silent.expect_close().await,
        (Some(4408), "no message received".to_owned())
    );
    assert_eq!(
        silent_teacher.expect_close().await,
        (Some(4408), "no message received".to_owned())
    );
    // Their deadlines have passed too: those that spoke are still served.
    talking
        .send_json(json!({"type": "heartbeat", "ref": "hb2"}))
        .await;
    talking.expect_ack("hb2").await;
    teacher
        .send_json(json!({"type": "heartbeat", "ref": "t2"}))
        .await;
    teacher.expect_ack("t2").await;
}

#[tokio::test]
async fn without_a_first_message_deadline_a_silent_connection_stays() {
    // The default: no message is mandatory (docs/PROTOCOL.md 1.7), so a
    // client that only listens is closed by nothing but the ping timeout.
    let app = spawn_app_with(|s| s.ws.ping_interval = Duration::from_millis(100)).await;
    let (mut silent, _) = app.student("e1", "s1").await;
    // Ten ping intervals of silence (the client answers pings as it reads).
    let quiet = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < quiet {
        match tokio::time::timeout_at(quiet, silent.next()).await {
            Err(_) => break,
            Ok(Next::Closed(code, reason)) => panic!("closed {code:?} {reason}"),
            Ok(Next::Json(_)) => {}
        }
    }
    silent
        .send_json(json!({"type": "heartbeat", "ref": "late"}))
        .await;
    silent.expect_ack("late").await;
}
