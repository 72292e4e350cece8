//! Token lifetime (docs/PROTOCOL.md 1.2.3): a connection ends at its
//! token's `exp` plus `auth.expiry_grace` (error `token_expired`, close
//! 4401) unless a `refresh` brings a new token for the same subject, role
//! and exam; and revocation (`POST /v1/revocations`): covered live
//! connections close with 4403 on every instance, and covered tokens are
//! refused while the entry lasts, also by an instance started afterwards.

use std::time::Duration;

use examwatch::auth::{Claims, Role, unix_now};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

use crate::cluster::{Redis, cluster, join_cluster};
use crate::{helpers::*, on_both_databases};

/// Short enough for tests; `auth.leeway` 0 so `exp` is exact.
fn short_lived(s: &mut examwatch::Settings) {
    s.auth.expiry_grace = Duration::from_millis(200);
    s.auth.leeway = Duration::ZERO;
}

/// Claims for `sub` with `role` on exam e1, expiring `ttl_secs` from now.
fn claims(sub: &str, role: Role, ttl_secs: u64) -> Claims {
    Claims {
        sub: sub.into(),
        name: format!("Name {sub}"),
        role,
        exams: vec!["e1".into()],
        exp: unix_now() + ttl_secs,
        iss: None,
        aud: None,
        jti: Some(uuid::Uuid::new_v4().to_string()),
        iat: Some(unix_now()),
    }
}

fn sign(app: &TestApp, c: &Claims) -> String {
    app.keys.sign(c).expect("sign")
}

/// When a token with this `exp` has outlived a 200 ms grace.
fn end_of(exp: u64) -> Instant {
    let end_ms = exp as i64 * 1000 + 200;
    Instant::now() + Duration::from_millis((end_ms - now_ms()).max(0) as u64)
}

/// The HTTP refusal of a handshake: status and error code.
async fn refused(app: &TestApp, token: &str) -> (u16, String) {
    match app.try_connect(&app.ws_url("e1"), Some(token), &[]).await {
        Ok(_) => panic!("the socket was upgraded"),
        Err(tungstenite::Error::Http(resp)) => {
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                .expect("JSON error body");
            (
                resp.status().as_u16(),
                body["error"]["code"].as_str().unwrap_or("").to_owned(),
            )
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn admin(app: &TestApp) -> String {
    app.token("root", Role::Admin, &[])
}

fn in_secs(secs: i64) -> String {
    rfc3339(now_ms() + secs * 1000)
}

async fn revoke(app: &TestApp, token: &str, body: Value) -> (StatusCode, Value) {
    let r = app
        .api(Method::POST, "/v1/revocations", token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A heartbeat with `ref` is acked: the connection is alive and served.
async fn alive(c: &mut Client, r: &str) {
    c.send_json(json!({"type": "heartbeat", "ref": r})).await;
    c.expect_ack(r).await;
}

/// The next `error` frame, then the close: (code, close code).
async fn error_then_close(c: &mut Client) -> (String, Option<u16>) {
    let err = c.next_of_type("error").await;
    let (code, _) = c.expect_close().await;
    (err["code"].as_str().unwrap_or("").to_owned(), code)
}

#[tokio::test]
async fn an_unrefreshed_token_ends_the_connection_with_4401() {
    let app = spawn_app_with(short_lived).await;
    let mut open = Vec::new();
    for (sub, role) in [
        ("s1", Role::Student),
        ("t1", Role::Teacher),
        ("p1", Role::Proctor),
    ] {
        // Two seconds: time to connect all three even on a loaded machine.
        let c = claims(sub, role, 2);
        open.push((sub, c.exp, app.connect("e1", &sign(&app, &c)).await));
    }
    for (sub, exp, mut ws) in open {
        let (code, close) = error_then_close(&mut ws).await;
        assert_eq!(
            (code.as_str(), close),
            ("token_expired", Some(4401)),
            "{sub}"
        );
        // Not before exp + grace (a little slack for clock granularity).
        let end_ms = exp as i64 * 1000 + 200;
        assert!(
            now_ms() >= end_ms - 50,
            "{sub}: closed {} ms early",
            end_ms - now_ms()
        );
    }
}

#[tokio::test]
async fn a_refresh_is_acked_and_the_connection_outlives_the_old_exp() {
    let app = spawn_app_with(short_lived).await;
    let old = claims("s1", Role::Student, 2);
    let mut ws = app.connect("e1", &sign(&app, &old)).await;
    ws.next_of_type("welcome").await;
    let new = claims("s1", Role::Student, 600);
    ws.send_json(json!({"type": "refresh", "token": sign(&app, &new), "ref": "r1"}))
        .await;
    ws.expect_ack("r1").await;
    // Past the old token's end (a known instant, not a guess): still served.
    tokio::time::sleep_until(end_of(old.exp) + Duration::from_millis(300)).await;
    alive(&mut ws, "h1").await;
}

#[tokio::test]
async fn a_refresh_for_someone_else_is_forbidden_and_the_old_exp_still_applies() {
    let app = spawn_app_with(short_lived).await;
    // Long enough for the refusals below to be answered before it ends.
    let old = claims("t1", Role::Teacher, 3);
    let mut ws = app.connect("e1", &sign(&app, &old)).await;
    ws.snapshot().await;
    let refusals = [
        (claims("t2", Role::Teacher, 600), "forbidden"),
        (claims("t1", Role::Admin, 600), "forbidden"),
        (
            Claims {
                exams: vec!["e2".into()],
                ..claims("t1", Role::Teacher, 600)
            },
            "forbidden",
        ),
        (
            Claims {
                exp: unix_now() - 10,
                ..claims("t1", Role::Teacher, 0)
            },
            "token_expired",
        ),
    ];
    for (i, (c, code)) in refusals.iter().enumerate() {
        let r = format!("r{i}");
        ws.send_json(json!({"type": "refresh", "token": sign(&app, c), "ref": r}))
            .await;
        let err = ws.next_of_type("error").await;
        assert_eq!(
            (err["code"].as_str(), err["ref"].as_str()),
            (Some(*code), Some(&*r))
        );
    }
    ws.send_json(json!({"type": "refresh", "token": "not.a.jwt", "ref": "bad"}))
        .await;
    let err = ws.next_of_type("error").await;
    assert_eq!(err["code"], "invalid_token", "{err}");
    let (code, close) = error_then_close(&mut ws).await;
    assert_eq!((code.as_str(), close), ("token_expired", Some(4401)));
}

#[tokio::test]
async fn an_sse_stream_ends_at_its_tokens_expiry() {
    let app = spawn_app_with(short_lived).await;
    let c = claims("t1", Role::Teacher, 2);
    let mut sse = app.sse("e1", &sign(&app, &c)).await;
    let err = sse.next_event_named("error").await;
    assert_eq!(err.data["code"], "token_expired", "{:?}", err.lines);
    sse.expect_end().await;
}

/// Revocation by `sub` on one instance, and what a restarted instance on
/// the same database still refuses (the store on both backends).
async fn revoked_by_subject_and_still_refused_after_a_restart(backend: Backend) {
    let Some(app) = spawn_app_on(backend, |_| {}).await else {
        return;
    };
    let (mut s1, _) = app.student("e1", "s1").await;
    let (mut s2, _) = app.student("e1", "s2").await;
    let old_s1 = app.token("s1", Role::Student, &["e1"]);
    let (status, entry) = revoke(
        &app,
        &admin(&app),
        json!({"sub": "s1", "until": in_secs(3600)}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{entry}");
    assert_eq!(entry["sub"], "s1");
    assert_eq!(entry["created_by"], "root");
    let (code, close) = error_then_close(&mut s1).await;
    assert_eq!((code.as_str(), close), ("token_revoked", Some(4403)));
    alive(&mut s2, "untouched").await;
    assert_eq!(refused(&app, &old_s1).await, (403, "token_revoked".into()));
    // No `iat`: covered while the entry lasts. Issued after it: works.
    let no_iat = Claims {
        iat: None,
        ..claims("s1", Role::Student, 600)
    };
    assert_eq!(
        refused(&app, &sign(&app, &no_iat)).await,
        (403, "token_revoked".into())
    );
    let later = Claims {
        iat: Some(unix_now() + 1),
        ..claims("s1", Role::Student, 600)
    };
    let mut again = app.connect("e1", &sign(&app, &later)).await;
    again.next_of_type("welcome").await;
    again.close().await;
    s2.close().await;

    let db_url = app.db_url.clone();
    let _parts = app.stop().await;
    let app = spawn_app_on_url(Some(db_url), |_| {}).await;
    assert_eq!(refused(&app, &old_s1).await, (403, "token_revoked".into()));
    let list = app.get_json("/v1/revocations", &admin(&app)).await;
    assert_eq!(
        list["revocations"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    assert_eq!(list["revocations"][0]["id"], entry["id"]);
}

on_both_databases!(revoked_by_subject_and_still_refused_after_a_restart);

#[tokio::test]
async fn revocation_by_jti_closes_that_token_only_and_refuses_it_everywhere() {
    let app = spawn_app().await;
    let target = claims("t1", Role::Teacher, 600);
    let other = claims("t1", Role::Teacher, 600);
    let (target_token, other_token) = (sign(&app, &target), sign(&app, &other));
    let mut a = app.connect("e1", &target_token).await;
    a.snapshot().await;
    let mut b = app.connect("e1", &other_token).await;
    b.snapshot().await;
    let mut sse = app.sse("e1", &target_token).await;
    let jti = target.jti.clone().unwrap();
    let (status, _) = revoke(
        &app,
        &admin(&app),
        json!({"jti": jti, "until": in_secs(600)}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (code, close) = error_then_close(&mut a).await;
    assert_eq!((code.as_str(), close), ("token_revoked", Some(4403)));
    let err = sse.next_event_named("error").await;
    assert_eq!(err.data["code"], "token_revoked");
    sse.expect_end().await;
    alive(&mut b, "same subject, other token").await;
    // Refused at the handshake, the SSE stream, a ticket and the REST API.
    assert_eq!(
        refused(&app, &target_token).await,
        (403, "token_revoked".into())
    );
    let r = app
        .sse_get(&app.events_url("e1"), Some(&target_token), &[])
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app
        .api(Method::POST, "/v1/tickets", &target_token)
        .json(&json!({"exam_id": "e1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app
        .api(Method::GET, "/v1/exams/e1", &target_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "token_revoked");
    // A `refresh` to a revoked token ends the connection as a revocation.
    b.send_json(json!({"type": "refresh", "token": target_token, "ref": "r"}))
        .await;
    let (code, close) = error_then_close(&mut b).await;
    assert_eq!((code.as_str(), close), ("token_revoked", Some(4403)));
}

#[tokio::test]
async fn a_ticket_minted_before_the_revocation_is_refused_after_it() {
    let app = spawn_app().await;
    app.open_exam("e1").await;
    let c = claims("s1", Role::Student, 600);
    let token = sign(&app, &c);
    let r = app
        .api(Method::POST, "/v1/tickets", &token)
        .json(&json!({"exam_id": "e1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ticket: Value = r.json().await.unwrap();
    let (status, _) = revoke(
        &app,
        &admin(&app),
        json!({"sub": "s1", "until": in_secs(600)}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let url = format!(
        "{}?ticket={}",
        app.ws_url("e1"),
        ticket["ticket"].as_str().unwrap()
    );
    match app.try_connect_as_is(&url, None, &[]).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| "an upgrade")),
    }
}

#[tokio::test]
async fn an_ended_entry_no_longer_refuses_and_is_not_listed() {
    let app = spawn_app().await;
    let admin = admin(&app);
    let token = app.token("s1", Role::Student, &["e1"]);
    // Long enough for the checks below under load, short for the test.
    let until = now_ms() + 3000;
    let (status, _) = revoke(&app, &admin, json!({"sub": "s1", "until": rfc3339(until)})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, lasting) = revoke(&app, &admin, json!({"sub": "s9", "until": in_secs(600)})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(refused(&app, &token).await, (403, "token_revoked".into()));
    let list = app.get_json("/v1/revocations", &admin).await;
    assert_eq!(
        list["revocations"].as_array().map(Vec::len),
        Some(2),
        "{list}"
    );
    // Wait for the entry's end, a known instant.
    tokio::time::sleep(Duration::from_millis((until - now_ms()).max(0) as u64 + 50)).await;
    let mut c = app.connect("e1", &token).await;
    c.next_of_type("welcome").await;
    let list = app.get_json("/v1/revocations", &admin).await;
    assert_eq!(list["revocations"], json!([lasting]), "{list}");
}

#[tokio::test]
async fn only_admins_revoke_and_bad_entries_are_422() {
    let app = spawn_app().await;
    let body = json!({"sub": "s1", "until": in_secs(600)});
    for role in [Role::Student, Role::Proctor, Role::Teacher] {
        let token = app.token("x", role, &["e1"]);
        let (status, err) = revoke(&app, &token, body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{role:?}");
        assert_eq!(err["error"]["code"], "admins_only", "{role:?}");
        let r = app
            .api(Method::GET, "/v1/revocations", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{role:?}");
    }
    let r = reqwest::Client::new()
        .get(app.http("/v1/revocations"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let admin = admin(&app);
    for bad in [
        json!({"until": in_secs(600)}),
        json!({"sub": "", "until": in_secs(600)}),
        json!({"sub": "s1", "until": in_secs(-1)}),
        json!({"sub": "s1", "until": in_secs(31 * 24 * 3600)}),
        json!({"sub": "s1", "until": "soon"}),
    ] {
        let (status, err) = revoke(&app, &admin, bad.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad} {err}");
    }
    let (status, _) = revoke(
        &app,
        &admin,
        json!({"sub": "s1", "until": in_secs(60), "x": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "unknown field");
    let list = app.get_json("/v1/revocations", &admin).await;
    assert_eq!(list, json!({"revocations": []}));
}

#[tokio::test]
async fn the_openapi_document_declares_both_endpoints() {
    let app = spawn_app().await;
    let doc: Value = reqwest::get(app.http("/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses = |method: &str| -> Vec<String> {
        doc["paths"]["/v1/revocations"][method]["responses"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    for code in ["201", "400", "401", "403", "413", "415", "422", "503"] {
        assert!(statuses("post").contains(&code.to_owned()), "post {code}");
    }
    for code in ["200", "401", "403", "503"] {
        assert!(statuses("get").contains(&code.to_owned()), "get {code}");
    }
}

#[tokio::test]
async fn a_revocation_through_one_instance_closes_a_socket_on_another() {
    let Some(redis) = Redis::start() else { return };
    let apps = cluster(&redis, 2, |_| {}).await;
    let (a, b) = (&apps[0], &apps[1]);
    let student = b.token("s1", Role::Student, &["e1"]);
    let mut on_b = b.connect("e1", &student).await;
    on_b.next_of_type("welcome").await;
    let (mut bystander, _) = b.student("e1", "s2").await;
    let (status, _) = revoke(a, &admin(a), json!({"sub": "s1", "until": in_secs(600)})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (code, close) = error_then_close(&mut on_b).await;
    assert_eq!((code.as_str(), close), ("token_revoked", Some(4403)));
    alive(&mut bystander, "untouched").await;
    assert_eq!(refused(b, &student).await, (403, "token_revoked".into()));
    // An instance that starts afterwards loads the entry from the database.
    let late = join_cluster(&redis, &a.db_url, 2..3, |_| {}).await;
    assert_eq!(
        refused(&late[0], &student).await,
        (403, "token_revoked".into())
    );
}

/// How many connections subscribe to the revocations channel.
async fn revocation_subscribers(redis: &Redis) -> i64 {
    let Ok(client) = redis::Client::open(redis.url()) else {
        return 0;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return 0;
    };
    let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("examwatch:revocations")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    counts.first().map_or(0, |(_, n)| *n)
}

async fn until_subscribed(redis: &Redis, n: i64) {
    let deadline = deadline();
    while revocation_subscribers(redis).await != n {
        assert!(
            Instant::now() < deadline,
            "{n} subscribers to the revocations channel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn revocations_reach_other_instances_across_a_redis_restart() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let apps = cluster(&redis, 2, |_| {}).await;
    let (a, b) = (&apps[0], &apps[1]);
    until_subscribed(&redis, 2).await;
    let (mut s1, _) = b.student("e1", "s1").await;
    let (mut s2, _) = b.student("e1", "s2").await;
    // Revoked while Redis is down: stored, and B learns it when Redis is
    // back (the queued message, or its reload from the database).
    redis.stop();
    let brokers = (a.state.broker.clone(), b.state.broker.clone());
    eventually("both instances see Redis gone", || {
        !brokers.0.healthy() && !brokers.1.healthy()
    })
    .await;
    let (status, _) = revoke(a, &admin(a), json!({"sub": "s1", "until": in_secs(600)})).await;
    assert_eq!(status, StatusCode::CREATED);
    redis.start_again();
    let (code, close) = error_then_close(&mut s1).await;
    assert_eq!((code.as_str(), close), ("token_revoked", Some(4403)));
    // Both subscriptions came back by themselves: a revocation after the
    // restart reaches B through the channel.
    until_subscribed(&redis, 2).await;
    let (status, _) = revoke(a, &admin(a), json!({"sub": "s2", "until": in_secs(600)})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (code, close) = error_then_close(&mut s2).await;
    assert_eq!((code.as_str(), close), ("token_revoked", Some(4403)));
}
