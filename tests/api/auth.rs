//! Every way a handshake can be refused: 401/403 with a JSON body, and the
//! socket never upgraded.

use examwatch::auth::{Claims, Role, unix_now};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::Value;
use tokio_tungstenite::tungstenite;

use crate::helpers::*;

/// Attempts a handshake and returns the HTTP status and JSON error body.
async fn refused(
    app: &TestApp,
    url: &str,
    bearer: Option<&str>,
    headers: &[(&'static str, &str)],
) -> (u16, Value) {
    match app.try_connect(url, bearer, headers).await {
        Ok(_) => panic!("the socket was upgraded"),
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                .expect("JSON error body");
            (status, body)
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn claims(sub: &str, role: Role, exp: u64) -> Claims {
    Claims {
        sub: sub.into(),
        name: "X".into(),
        role,
        exams: vec!["e1".into()],
        exp,
        iss: None,
        aud: None,
        jti: None,
        iat: None,
    }
}

#[tokio::test]
async fn missing_bad_and_expired_tokens_get_401() {
    let app = spawn_app().await;
    let url = app.ws_url("e1");

    let (status, body) = refused(&app, &url, None, &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "missing_token");

    let (status, body) = refused(&app, &url, Some("not.a.jwt"), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_token");

    let expired = jsonwebtoken::encode(
        &Header::default(),
        &claims("s1", Role::Student, unix_now() - 3600),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (status, body) = refused(&app, &url, Some(&expired), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "token_expired");
    assert_eq!(body["error"]["message"], "token expired");

    let wrong_key = jsonwebtoken::encode(
        &Header::default(),
        &claims("s1", Role::Student, unix_now() + 3600),
        &EncodingKey::from_secret(b"another-secret-another-secret-another-secret"),
    )
    .unwrap();
    let (status, body) = refused(&app, &url, Some(&wrong_key), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_token");
}

#[tokio::test]
async fn alg_none_and_other_algorithms_are_refused() {
    let app = spawn_app().await;
    let url = app.ws_url("e1");
    let claims = serde_json::to_vec(&claims("s1", Role::Admin, unix_now() + 3600)).unwrap();
    let unsigned = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(&claims)
    );
    let (status, body) = refused(&app, &url, Some(&unsigned), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_token");

    // HS384 with the right secret: still refused, the algorithm is pinned.
    let hs384 = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS384),
        &serde_json::from_slice::<Claims>(&claims).unwrap(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (status, body) = refused(&app, &url, Some(&hs384), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error"]["message"],
        "invalid token: algorithm not accepted"
    );
}

fn base64_url(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn exam_not_granted_and_bad_origin_get_403() {
    let app =
        spawn_app_with(|s| s.server.allowed_origins = vec!["https://exams.example".into()]).await;
    let token = app.token("s1", Role::Student, &["e1"]);
    let ok_origin = [("origin", "https://exams.example")];

    let (status, body) = refused(&app, &app.ws_url("e2"), Some(&token), &ok_origin).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "exam_not_granted");

    let (status, body) = refused(
        &app,
        &app.ws_url("e1"),
        Some(&token),
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "origin_not_allowed");

    // The allowed origin, with the token in the query string, is accepted.
    let url = format!("{}?access_token={token}", app.ws_url("e1"));
    let mut c = app
        .try_connect(&url, None, &ok_origin)
        .await
        .expect("upgraded");
    assert_eq!(c.next_json().await["type"], "welcome");
    assert_eq!(app.metric("examwatch_handshakes_rejected_total"), 2);
}

#[tokio::test]
async fn admin_sees_every_exam_and_subprotocol_is_accepted() {
    let app = spawn_app().await;
    let admin = app.token("root", Role::Admin, &[]);
    let c = app
        .try_connect(
            &app.ws_url("any-exam"),
            Some(&admin),
            &[("sec-websocket-protocol", "examwatch.v1")],
        )
        .await
        .expect("admin may watch any exam");
    assert_eq!(
        c.response.headers().get("sec-websocket-protocol").unwrap(),
        "examwatch.v1"
    );
}

#[tokio::test]
async fn eddsa_with_a_configured_public_key() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let app = spawn_app_with(|s| {
        s.auth.algorithm = examwatch::config::JwtAlgorithm::EdDSA;
        s.auth.jwt_secret = None;
        s.auth.public_key_file = Some(format!("{dir}/tests/fixtures/ed25519_public.pem").into());
        s.auth.private_key_file = Some(format!("{dir}/tests/fixtures/ed25519_private.pem").into());
    })
    .await;
    let (_c, welcome) = app.student("e1", "s1").await;
    assert_eq!(welcome["student"]["student_id"], "s1");
    // An HS256 token (even one signed with some secret) is refused.
    let hs = jsonwebtoken::encode(
        &Header::default(),
        &claims("s1", Role::Student, unix_now() + 3600),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (status, _) = refused(&app, &app.ws_url("e1"), Some(&hs), &[]).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let app = spawn_app_with(|s| {
        s.auth.issuer = vec!["https://idp.example".into()];
        s.auth.audience = vec!["examwatch".into()];
    })
    .await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let mut c = claims("s1", Role::Student, unix_now() + 3600);
    let (status, _) = refused(
        &app,
        &app.ws_url("e1"),
        Some(&jsonwebtoken::encode(&Header::default(), &c, &key).unwrap()),
        &[],
    )
    .await;
    assert_eq!(status, 401, "iss/aud are required once configured");
    c.iss = Some("https://idp.example".into());
    c.aud = Some(examwatch::auth::Audience::One("someone-else".into()));
    let (status, body) = refused(
        &app,
        &app.ws_url("e1"),
        Some(&jsonwebtoken::encode(&Header::default(), &c, &key).unwrap()),
        &[],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error"]["message"],
        "invalid token: audience not accepted"
    );
    c.aud = Some(examwatch::auth::Audience::Many(vec![
        "other".into(),
        "examwatch".into(),
    ]));
    let token = jsonwebtoken::encode(&Header::default(), &c, &key).unwrap();
    let mut ok = app.connect("e1", &token).await;
    assert_eq!(ok.next_json().await["type"], "welcome");
}

/// A token signed with the test secret, with `nbf` (not before) set.
fn token_with_nbf(sub: &str, role: &str, nbf: u64) -> String {
    let claims = serde_json::json!({
        "sub": sub, "name": "X", "role": role, "exams": ["e1"],
        "exp": unix_now() + 3600, "nbf": nbf,
    });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_token_not_valid_until_tomorrow_is_refused_at_the_handshake() {
    // The default leeway (30 s) applies to `nbf` as it does to `exp`.
    let app = spawn_app().await;
    let tomorrow = token_with_nbf("s1", "student", unix_now() + 86_400);
    let (status, body) = refused(&app, &app.ws_url("e1"), Some(&tomorrow), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        serde_json::json!({"error": {
            "code": "token_not_yet_valid",
            "message": "token not yet valid: its `nbf` is in the future",
        }})
    );
    // Ten seconds ahead (a client clock a little fast) is within the leeway.
    let soon = token_with_nbf("s1", "student", unix_now() + 10);
    let mut c = app.connect("e1", &soon).await;
    assert_eq!(c.next_json().await["type"], "welcome");
}

#[tokio::test]
async fn a_token_not_valid_until_tomorrow_is_refused_by_the_rest_api() {
    let app = spawn_app().await;
    let tomorrow = token_with_nbf("t1", "teacher", unix_now() + 86_400);
    let res = app
        .api(reqwest::Method::GET, "/v1/exams", &tomorrow)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "token_not_yet_valid");

    let soon = token_with_nbf("t1", "teacher", unix_now() + 10);
    let res = app
        .api(reqwest::Method::GET, "/v1/exams", &soon)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}
