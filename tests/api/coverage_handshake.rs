//! The refusals of docs/PROTOCOL.md 1.2 and 1.4 that no other module
//! provokes: malformed exam ids and queries, requests that are not
//! WebSocket upgrades (HTTP/1.0 included), the drain before shutdown,
//! `WWW-Authenticate`, issuer and audience, RS256/EdDSA keys made at test
//! time, the `exp` leeway and the `sub`/`name` length limits. Each answer
//! is checked whole: status, code and, where the server words it, message.

use std::time::Duration;

use examwatch::{
    auth::{Claims, Role, unix_now},
    config::JwtAlgorithm,
};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite;

use crate::helpers::*;

/// A refused handshake's status, `WWW-Authenticate` header and JSON body.
async fn refusal(app: &TestApp, url: &str, bearer: Option<&str>) -> (u16, Option<String>, Value) {
    match app.try_connect(url, bearer, &[]).await {
        Ok(_) => panic!("the socket was upgraded for {url}"),
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let www = resp
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().expect("ASCII header").to_owned());
            let body = serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                .expect("a JSON error body");
            (status, www, body)
        }
        Err(e) => panic!("unexpected handshake error {e}"),
    }
}

/// The `code` of a refusal, with its status.
async fn refused_code(app: &TestApp, url: &str, bearer: Option<&str>) -> (u16, String) {
    let (status, _, body) = refusal(app, url, bearer).await;
    let code = body["error"]["code"].as_str().expect("a code").to_owned();
    (status, code)
}

/// Claims for exam `e1` valid for an hour.
fn claims(sub: &str, name: &str) -> Claims {
    Claims {
        sub: sub.into(),
        name: name.into(),
        role: Role::Student,
        exams: vec!["e1".into()],
        exp: unix_now() + 3600,
        iss: None,
        aud: None,
        jti: None,
        iat: None,
    }
}

fn hs256(claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// Sends `request` on a fresh TCP connection; returns the status and the
/// JSON body of the answer (read by its `content-length`, within `WAIT`).
async fn raw_request(app: &TestApp, request: &str) -> (u16, Value) {
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .expect("a content-length");
            if body.len() >= length {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("a status line");
                return (status, serde_json::from_str(body).expect("a JSON body"));
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "connection closed before a whole answer: {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn a_malformed_exam_id_or_query_gets_400_before_the_token_is_read() {
    let app = spawn_app().await;
    let token = app.token("s1", Role::Student, &["e1"]);
    let long = "x".repeat(65);
    for exam in ["bad!id", "sp%20ace", long.as_str()] {
        let url = app.ws_url(exam);
        // Without a token too: the exam id is checked first.
        for bearer in [Some(token.as_str()), None] {
            let (status, _, body) = refusal(&app, &url, bearer).await;
            assert_eq!(status, 400, "{exam}");
            assert_eq!(
                body,
                json!({"error": {"code": "invalid_exam_id",
                    "message": "exam ids are 1-64 characters of letters, digits, '-', '_' and '.'"}}),
                "{exam}"
            );
        }
    }
    // 64 characters is the longest valid id.
    let mut ok = app
        .connect(&"x".repeat(64), &app.token("a", Role::Admin, &[]))
        .await;
    assert_eq!(ok.next_json().await["type"], "snapshot");

    for query in ["last_seq=abc", "last_seq=-1", "last_seq=1.5"] {
        let url = format!("{}?{query}", app.ws_url("e1"));
        let (status, code) = refused_code(&app, &url, Some(&token)).await;
        assert_eq!((status, code.as_str()), (400, "invalid_query"), "{query}");
        let (status, code) = refused_code(&app, &url, None).await;
        assert_eq!((status, code.as_str()), (400, "invalid_query"), "{query}");
    }
}

#[tokio::test]
async fn a_request_that_is_not_an_upgrade_gets_400_and_http_1_0_gets_426() {
    let app = spawn_app().await;
    app.open_exam("e1").await;
    let token = app.token("s1", Role::Student, &["e1"]);
    let head = |version: &str, extra: &str| {
        format!(
            "GET /v1/exams/e1/ws {version}\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n{extra}\r\n",
            app.addr
        )
    };
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        ("a plain GET", head("HTTP/1.1", "")),
        (
            "no Sec-WebSocket-Key",
            head(
                "HTTP/1.1",
                "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            ),
        ),
        (
            "version 12",
            head(
                "HTTP/1.1",
                &format!("{upgrade}Sec-WebSocket-Version: 12\r\n"),
            ),
        ),
        (
            "no Upgrade header",
            head(
                "HTTP/1.1",
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            ),
        ),
    ];
    for (what, request) in cases {
        let (status, body) = raw_request(&app, &request).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"]["code"], "not_a_websocket", "{what}");
    }
    // A complete upgrade request, but HTTP/1.0 cannot switch protocols.
    let request = head(
        "HTTP/1.0",
        &format!("{upgrade}Sec-WebSocket-Version: 13\r\n"),
    );
    let (status, body) = raw_request(&app, &request).await;
    assert_eq!(status, 426, "{body}");
    assert_eq!(body["error"]["code"], "not_a_websocket");
    // The same request over HTTP/1.1 is upgraded: the refusals were about
    // the request, not the token.
    let request = head(
        "HTTP/1.1",
        &format!("{upgrade}Sec-WebSocket-Version: 13\r\n"),
    );
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut first))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(&first, b"HTTP/1.1 101");
}

#[tokio::test]
async fn handshakes_during_the_drain_are_refused_at_connect() {
    // Long enough that the whole check runs inside the drain.
    let mut app = spawn_app_with(|s| s.server.drain_delay = Duration::from_secs(3)).await;
    let (mut open, _) = app.student("e1", "s1").await;
    let token = app.token("s2", Role::Student, &["e1"]);
    app.begin_shutdown();
    eventually("the server drains", || app.state.draining()).await;
    // The listener stopped accepting (a rolling restart): refused, never
    // accepted and dropped. (A handshake already on its way gets 503
    // `shutting_down` from the handshake itself.)
    let refused = app
        .try_connect_as_is(&app.ws_url("e1"), Some(&token), &[])
        .await;
    assert!(
        matches!(&refused, Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "refused at connect: {:?}",
        refused.err()
    );
    // Open sockets are served through the drain, then closed with 1012.
    open.send_json(json!({"type": "heartbeat", "ref": "h"}))
        .await;
    assert_eq!(open.next_json().await, json!({"type": "ack", "ref": "h"}));
    assert_eq!(
        open.expect_close().await,
        (Some(1012), "service restart".into())
    );
    app.shutdown().await.expect("clean exit");
}

#[tokio::test]
async fn every_401_carries_www_authenticate_bearer_and_a_403_does_not() {
    let app = spawn_app().await;
    let url = app.ws_url("e1");
    let mut expired = claims("s1", "X");
    expired.exp = unix_now() - 3600;
    let cases = [
        (None, "missing_token"),
        (Some("not.a.jwt".to_owned()), "invalid_token"),
        (Some(hs256(&expired)), "token_expired"),
    ];
    for (bearer, code) in cases {
        let (status, www, body) = refusal(&app, &url, bearer.as_deref()).await;
        assert_eq!(status, 401, "{code}");
        assert_eq!(www.as_deref(), Some("Bearer"), "{code}");
        assert_eq!(body["error"]["code"], code);
    }
    let other_exam = app.token("s1", Role::Student, &["e2"]);
    let (status, www, body) = refusal(&app, &url, Some(&other_exam)).await;
    assert_eq!(
        (status, www, &body["error"]["code"]),
        (403, None, &json!("exam_not_granted"))
    );
}

#[tokio::test]
async fn a_wrong_issuer_or_a_missing_audience_is_refused() {
    let app = spawn_app_with(|s| {
        s.auth.issuer = vec!["https://idp.example".into(), "https://idp2.example".into()];
        s.auth.audience = vec!["examwatch".into()];
    })
    .await;
    let url = app.ws_url("e1");
    let invalid = |why: &str| json!({"error": {"code": "invalid_token", "message": format!("invalid token: {why}")}});
    let mut c = claims("s1", "X");
    c.aud = Some(examwatch::auth::Audience::One("examwatch".into()));
    c.iss = Some("https://evil.example".into());
    let (status, _, body) = refusal(&app, &url, Some(&hs256(&c))).await;
    assert_eq!((status, body), (401, invalid("issuer not accepted")));
    c.iss = None;
    let (status, _, body) = refusal(&app, &url, Some(&hs256(&c))).await;
    assert_eq!((status, body), (401, invalid("missing required claim")));
    c.iss = Some("https://idp2.example".into());
    c.aud = None;
    let (status, _, body) = refusal(&app, &url, Some(&hs256(&c))).await;
    assert_eq!((status, body), (401, invalid("missing required claim")));
    // Any configured issuer will do.
    c.aud = Some(examwatch::auth::Audience::One("examwatch".into()));
    let mut ok = app.connect("e1", &hs256(&c)).await;
    assert_eq!(ok.next_json().await["type"], "welcome");
}

/// A key pair made by the `openssl` CLI in `dir`: (private PEM, public
/// PEM file). `None`, with a notice, if there is no `openssl` outside CI.
fn openssl_keys(dir: &std::path::Path, algorithm: &str) -> Option<(Vec<u8>, std::path::PathBuf)> {
    let private = dir.join(format!("{algorithm}.key"));
    let public = dir.join(format!("{algorithm}.pub"));
    let genkey: &[&str] = match algorithm {
        "RSA" => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        _ => &["-algorithm", "ED25519"],
    };
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .output()
            .map(|o| o.status.success())
    };
    let mut gen_args = vec!["genpkey"];
    gen_args.extend_from_slice(genkey);
    gen_args.extend(["-out", private.to_str().unwrap()]);
    match run(&gen_args) {
        Ok(true) => {}
        other => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("the `openssl` CLI is required under CI: {other:?}");
            }
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "NOTICE: skipping a {algorithm} test: `openssl genpkey` failed: {other:?}"
            );
            return None;
        }
    }
    let ok = run(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    assert!(matches!(ok, Ok(true)), "openssl pkey -pubout: {ok:?}");
    Some((std::fs::read(&private).unwrap(), public))
}

/// A server that verifies `algorithm` with the public key only, and a
/// token signed by the test with the private key, connect end to end; a
/// token signed with another key of the same kind, or HS256, is refused.
async fn asymmetric_end_to_end(algorithm: JwtAlgorithm, kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let Some((private, public)) = openssl_keys(dir.path(), kind) else {
        return;
    };
    let other_dir = tempfile::tempdir().unwrap();
    let (other_private, _) = openssl_keys(other_dir.path(), kind).expect("a second key");
    let app = spawn_app_with(|s| {
        s.auth.algorithm = algorithm;
        s.auth.jwt_secret = None;
        s.auth.public_key_file = Some(public);
    })
    .await;
    let (jwt_alg, key, other): (_, fn(&[u8]) -> _, _) = match algorithm {
        JwtAlgorithm::RS256 => (
            jsonwebtoken::Algorithm::RS256,
            EncodingKey::from_rsa_pem,
            other_private,
        ),
        _ => (
            jsonwebtoken::Algorithm::EdDSA,
            EncodingKey::from_ed_pem,
            other_private,
        ),
    };
    let c = claims("s1", "Ada");
    let sign = |pem: &[u8]| {
        jsonwebtoken::encode(&Header::new(jwt_alg), &c, &key(pem).expect("a PEM key"))
            .expect("sign")
    };
    // A teacher signed with the same key opens the exam first.
    let mut teacher = claims("t1", "Teacher");
    teacher.role = examwatch::auth::Role::Teacher;
    let teacher = jsonwebtoken::encode(
        &Header::new(jwt_alg),
        &teacher,
        &key(&private).expect("a PEM key"),
    )
    .expect("sign");
    open_exam_at(&app.http(""), &teacher, "e1").await;
    let mut s = app.connect("e1", &sign(&private)).await;
    let welcome = s.next_json().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["student"]["student_id"], "s1");
    assert_eq!(welcome["student"]["name"], "Ada");
    let url = app.ws_url("e1");
    let (status, _, body) = refusal(&app, &url, Some(&sign(&other))).await;
    assert_eq!(
        (status, body),
        (
            401,
            json!({"error": {"code": "invalid_token", "message": "invalid token: bad signature"}})
        )
    );
    let (status, _, body) = refusal(&app, &url, Some(&hs256(&c))).await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error"]["message"],
        "invalid token: algorithm not accepted"
    );
}

#[tokio::test]
async fn rs256_with_keys_made_at_test_time() {
    asymmetric_end_to_end(JwtAlgorithm::RS256, "RSA").await;
}

#[tokio::test]
async fn eddsa_with_keys_made_at_test_time() {
    asymmetric_end_to_end(JwtAlgorithm::EdDSA, "ED25519").await;
}

#[tokio::test]
async fn an_expired_token_is_accepted_within_the_leeway_only() {
    let app = spawn_app_with(|s| s.auth.leeway = Duration::from_secs(30)).await;
    let strict = spawn_app_with(|s| s.auth.leeway = Duration::ZERO).await;
    let expired_by = |secs: u64| {
        let mut c = claims("s1", "X");
        c.exp = unix_now() - secs;
        hs256(&c)
    };
    // Ten seconds late: inside 30 s of leeway, outside none.
    let mut ok = app.connect("e1", &expired_by(10)).await;
    assert_eq!(ok.next_json().await["type"], "welcome");
    let (status, code) = refused_code(&strict, &strict.ws_url("e1"), Some(&expired_by(10))).await;
    assert_eq!((status, code.as_str()), (401, "token_expired"));
    // A minute late is past the leeway.
    let (status, code) = refused_code(&app, &app.ws_url("e1"), Some(&expired_by(60))).await;
    assert_eq!((status, code.as_str()), (401, "token_expired"));
}

#[tokio::test]
async fn sub_and_name_lengths_are_bounded() {
    let app = spawn_app().await;
    let url = app.ws_url("e1");
    let invalid = |why: &str| json!({"error": {"code": "invalid_token", "message": format!("invalid token: {why}")}});
    let sub_rule = "`sub` must be 1 to 128 characters";
    for sub in [String::new(), "s".repeat(129)] {
        let (status, _, body) = refusal(&app, &url, Some(&hs256(&claims(&sub, "X")))).await;
        assert_eq!(
            (status, body),
            (401, invalid(sub_rule)),
            "sub of {}",
            sub.len()
        );
    }
    let (status, _, body) =
        refusal(&app, &url, Some(&hs256(&claims("s1", &"n".repeat(201))))).await;
    assert_eq!(
        (status, body),
        (401, invalid("`name` is longer than 200 characters"))
    );
    // The limits are bytes: 128 and 200 pass, and a 2-byte character that
    // makes 201 bytes of 101 characters does not.
    let longest = hs256(&claims(&"s".repeat(128), &"n".repeat(200)));
    let mut ok = app.connect("e1", &longest).await;
    let welcome = ok.next_json().await;
    assert_eq!(welcome["student"]["student_id"], "s".repeat(128));
    assert_eq!(welcome["student"]["name"], "n".repeat(200));
    let wide = format!("{}n", "é".repeat(100));
    let (status, _, body) = refusal(&app, &url, Some(&hs256(&claims("s2", &wide)))).await;
    assert_eq!(
        (status, body),
        (401, invalid("`name` is longer than 200 characters"))
    );
}
