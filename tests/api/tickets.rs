//! Connection tickets: `POST /v1/tickets` with the token in a header, then
//! `?ticket=` on the WebSocket URL, once, for one exam, for a short while;
//! on every instance when they share a Redis.

use std::time::Duration;

use examwatch::auth::Role;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use crate::{cluster::Redis, helpers::*};

/// `POST /v1/tickets` for `exam` with `bearer`; the status, headers, body.
async fn post_ticket(
    app: &TestApp,
    exam: &str,
    bearer: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new()
        .post(app.http("/v1/tickets"))
        .json(&json!({ "exam_id": exam }));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    if let Some(t) = bearer
        && app.keys.verify(t).is_ok_and(|c| c.role == Role::Student)
    {
        app.open_exam(exam).await; // students may only sit an opened exam
    }
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.json().await.expect("a JSON body"))
}

/// A ticket for `exam`, asserting the whole answer.
async fn ticket(app: &TestApp, exam: &str, token: &str, expires_in_ms: u64) -> String {
    let (status, headers, body) = post_ticket(app, exam, Some(token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    let ticket = body["ticket"].as_str().expect("a ticket").to_owned();
    assert_eq!(
        body,
        json!({"ticket": ticket, "exam_id": exam, "expires_in_ms": expires_in_ms})
    );
    assert_eq!(ticket.len(), 64, "256 random bits in hex: {ticket}");
    ticket
}

fn ticket_url(app: &TestApp, exam: &str, ticket: &str) -> String {
    format!("{}?ticket={ticket}", app.ws_url(exam))
}

/// Connects with `?ticket=` and no other credential.
async fn connect_with(app: &TestApp, exam: &str, ticket: &str) -> Client {
    app.try_connect(&ticket_url(app, exam, ticket), None, &[])
        .await
        .unwrap_or_else(|e| panic!("the ticket was refused: {e}"))
}

/// A handshake that must be refused: its status and JSON body.
async fn refused_with(app: &TestApp, exam: &str, ticket: &str) -> (u16, Value) {
    match app
        .try_connect(&ticket_url(app, exam, ticket), None, &[])
        .await
    {
        Ok(_) => panic!("the socket was upgraded"),
        Err(tungstenite::Error::Http(resp)) => (
            resp.status().as_u16(),
            serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                .expect("a JSON error body"),
        ),
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn is_invalid_ticket(refusal: &(u16, Value)) -> bool {
    refusal.0 == 401 && refusal.1["error"]["code"] == "invalid_ticket"
}

#[tokio::test]
async fn a_ticket_connects_once_with_the_identity_of_its_token() {
    let app = spawn_app().await;
    let token = app.token("s1", Role::Student, &["e1"]);
    let t = ticket(&app, "e1", &token, 30_000).await;

    let mut student = connect_with(&app, "e1", &t).await;
    let welcome = student.next_of_type("welcome").await;
    assert_eq!(welcome["student"]["student_id"], "s1");
    assert_eq!(welcome["student"]["name"], "Name s1");

    let refusal = refused_with(&app, "e1", &t).await;
    assert_eq!(
        refusal.1,
        json!({"error": {"code": "invalid_ticket",
            "message": "invalid ticket: unknown, already used, expired or for another exam"}})
    );
    assert_eq!(refusal.0, 401);
    assert!(is_invalid_ticket(
        &refused_with(&app, "e1", &"0".repeat(64)).await
    ));
    assert!(is_invalid_ticket(
        &refused_with(&app, "e1", "not-a-ticket").await
    ));

    // A teacher's ticket makes a watcher: the join snapshot comes first.
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let t = ticket(&app, "e1", &teacher, 30_000).await;
    let mut watcher = connect_with(&app, "e1", &t).await;
    let snapshot = watcher.next_of_type("snapshot").await;
    assert_eq!(snapshot["students"][0]["student_id"], "s1");
    assert_eq!(app.metric("examwatch_tickets_issued_total"), 2);
    assert_eq!(app.metric("examwatch_tickets_redeemed_total"), 2);
    assert_eq!(app.metric("examwatch_tickets_refused_total"), 3);
}

#[tokio::test]
async fn a_ticket_opens_only_the_exam_it_was_minted_for() {
    let app = spawn_app().await;
    let token = app.token("s1", Role::Student, &["e1", "e2"]);
    let t = ticket(&app, "e1", &token, 30_000).await;
    assert!(is_invalid_ticket(&refused_with(&app, "e2", &t).await));
    // Burnt by the attempt: no probing exam after exam with one ticket.
    assert!(is_invalid_ticket(&refused_with(&app, "e1", &t).await));
}

#[tokio::test]
async fn an_expired_ticket_is_refused() {
    let app = spawn_app_with(|s| s.auth.ticket_ttl = Duration::from_millis(200)).await;
    let token = app.token("s1", Role::Student, &["e1"]);
    let t = ticket(&app, "e1", &token, 200).await;
    let tickets = app.state.tickets.clone();
    assert!(tickets.held_locally(&t));
    eventually("the ticket expires", || !tickets.held_locally(&t)).await;
    assert!(is_invalid_ticket(&refused_with(&app, "e1", &t).await));
}

#[tokio::test]
async fn a_ticket_never_outlives_its_token() {
    let app = spawn_app_with(|s| s.auth.leeway = Duration::ZERO).await;
    let token = app
        .keys
        .mint(
            "s1",
            "Ada",
            Role::Student,
            vec!["e1".into()],
            Duration::from_secs(5),
        )
        .unwrap();
    let (status, _, body) = post_ticket(&app, "e1", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let ms = body["expires_in_ms"].as_u64().unwrap();
    assert!((1..=5000).contains(&ms), "bounded by the token's exp: {ms}");
}

#[tokio::test]
async fn minting_needs_a_valid_token_in_the_header_that_grants_the_exam() {
    let app = spawn_app().await;
    let student = app.token("s1", Role::Student, &["e1"]);
    let code = |(status, _, body): (u16, _, Value)| (status, body["error"]["code"].clone());

    assert_eq!(
        code(post_ticket(&app, "e1", None).await),
        (401, json!("missing_token"))
    );
    let bad = post_ticket(&app, "e1", Some("not.a.jwt")).await;
    assert_eq!(bad.1["www-authenticate"], "Bearer");
    assert_eq!(code(bad), (401, json!("invalid_token")));
    // The token in the query does not count: that is what tickets avoid.
    let res = reqwest::Client::new()
        .post(app.http(&format!("/v1/tickets?access_token={student}")))
        .json(&json!({"exam_id": "e1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    assert_eq!(
        code(post_ticket(&app, "e2", Some(&student)).await),
        (403, json!("exam_not_granted"))
    );
    assert_eq!(
        code(post_ticket(&app, "no/such", Some(&student)).await),
        (422, json!("invalid_exam_id"))
    );
    let res = app
        .api(reqwest::Method::POST, "/v1/tickets", &student)
        .json(&json!({"exam": "e1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);

    // A student not on the exam's roster gets no ticket either.
    let admin = app.token("admin", Role::Admin, &[]);
    let res = app
        .api(reqwest::Method::POST, "/v1/exams", &admin)
        .json(&json!({"id": "e3", "title": "Roster",
            "roster": [{"student_id": "s9", "name": "Nine"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let s1 = app.token("s1", Role::Student, &["e3"]);
    assert_eq!(
        code(post_ticket(&app, "e3", Some(&s1)).await),
        (403, json!("not_on_roster"))
    );
    let s9 = app.token("s9", Role::Student, &["e3"]);
    let t = ticket(&app, "e3", &s9, 30_000).await;
    connect_with(&app, "e3", &t)
        .await
        .next_of_type("welcome")
        .await;
}

#[tokio::test]
async fn unused_tickets_in_memory_are_capped() {
    let app = spawn_app_with(|s| s.auth.ticket_capacity = 2).await;
    let token = app.token("s1", Role::Student, &["e1"]);
    let first = ticket(&app, "e1", &token, 30_000).await;
    ticket(&app, "e1", &token, 30_000).await;
    let (status, headers, body) = post_ticket(&app, "e1", Some(&token)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("tickets_unavailable"))
    );
    assert_eq!(headers["retry-after"], "1");
    // Redeeming one makes room again.
    connect_with(&app, "e1", &first).await;
    ticket(&app, "e1", &token, 30_000).await;
}

/// Two instances on one Redis (and one database).
async fn two_instances(redis: &Redis, tune: impl Fn(&mut examwatch::Settings)) -> [TestApp; 2] {
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/shared.db", db.path().display());
    let mut apps = Vec::new();
    for i in 0..2 {
        apps.push(
            spawn_app_on_url(Some(url.clone()), |s| {
                s.broker.redis_url = redis.url().into();
                s.database.instance_id = Some(format!("node-{i}"));
                tune(s);
            })
            .await,
        );
    }
    apps[0]._db_dir = Some(db);
    apps.try_into().unwrap_or_else(|_| unreachable!("two apps"))
}

#[tokio::test]
async fn a_ticket_minted_on_one_instance_works_once_on_any() {
    let Some(redis) = Redis::start() else { return };
    let [a, b] = two_instances(&redis, |_| {}).await;
    let token = a.token("s1", Role::Student, &["e1"]);

    let t = ticket(&a, "e1", &token, 30_000).await;
    assert!(
        !a.state.tickets.held_locally(&t),
        "kept in Redis, not in memory"
    );
    let mut student = connect_with(&b, "e1", &t).await;
    let welcome = student.next_of_type("welcome").await;
    assert_eq!(welcome["student"]["student_id"], "s1");
    assert!(is_invalid_ticket(&refused_with(&b, "e1", &t).await));
    assert!(is_invalid_ticket(&refused_with(&a, "e1", &t).await));

    // The other way round, and a ticket for another exam burnt on B is
    // gone on A too.
    let t = ticket(&b, "e1", &token, 30_000).await;
    let teacher = b.token("t1", Role::Teacher, &["e1", "e2"]);
    let other = ticket(&b, "e2", &teacher, 30_000).await;
    connect_with(&a, "e1", &t)
        .await
        .next_of_type("welcome")
        .await;
    assert!(is_invalid_ticket(&refused_with(&a, "e1", &t).await));
    assert!(is_invalid_ticket(&refused_with(&b, "e1", &other).await));
    assert!(is_invalid_ticket(&refused_with(&a, "e2", &other).await));
}

#[tokio::test]
async fn tickets_in_redis_expire() {
    let Some(redis) = Redis::start() else { return };
    let [a, b] = two_instances(&redis, |s| s.auth.ticket_ttl = Duration::from_millis(300)).await;
    let token = a.token("s1", Role::Student, &["e1"]);
    let t = ticket(&a, "e1", &token, 300).await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("examwatch:ticket:{t}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !exists {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ticket never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(is_invalid_ticket(&refused_with(&b, "e1", &t).await));
}

#[tokio::test]
async fn while_redis_is_away_a_ticket_still_works_once_on_its_own_instance() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let [a, _b] = two_instances(&redis, |_| {}).await;
    let token = a.token("s1", Role::Student, &["e1"]);
    redis.stop();
    let t = ticket(&a, "e1", &token, 30_000).await;
    assert!(a.state.tickets.held_locally(&t), "kept in memory meanwhile");
    connect_with(&a, "e1", &t)
        .await
        .next_of_type("welcome")
        .await;
    // Used: not in memory any more, and Redis cannot be asked.
    let (status, body) = refused_with(&a, "e1", &t).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("tickets_unavailable"))
    );
    redis.start_again();
    let broker = a.state.broker.clone();
    eventually("Redis is reachable again", || broker.healthy()).await;
    assert!(is_invalid_ticket(&refused_with(&a, "e1", &t).await));
}

#[tokio::test]
async fn the_openapi_document_describes_tickets() {
    let app = spawn_app().await;
    let doc: Value = reqwest::get(app.http("/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let post = &doc["paths"]["/v1/tickets"]["post"];
    assert_eq!(
        post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/TicketRequest"
    );
    assert!(post["responses"]["200"].is_object(), "{post}");
    let ws = &doc["paths"]["/v1/exams/{exam_id}/ws"]["get"]["parameters"];
    assert!(
        ws.as_array().unwrap().iter().any(|p| p["name"] == "ticket"),
        "{ws}"
    );
}

/// Minting counts against the token subject's handshake budget (so one
/// token cannot fill the ticket store), and the handshake that redeems a
/// ticket is not counted a second time.
#[tokio::test]
async fn tickets_count_once_against_the_subjects_handshake_budget() {
    let app = spawn_app_with(|s| {
        s.limits.handshakes_per_subject = 6;
        s.limits.handshake_window = Duration::from_secs(600);
    })
    .await;
    let token = app.token("s1", Role::Student, &["e1"]);
    // Six tickets, six sockets: twelve handshake-ish steps, within a budget of six.
    for _ in 0..6 {
        let t = ticket(&app, "e1", &token, 30_000).await;
        let mut c = connect_with(&app, "e1", &t).await;
        c.next_of_type("welcome").await;
        c.close().await;
    }
    let (status, headers, body) = post_ticket(&app, "e1", Some(&token)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let secs: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=100).contains(&secs), "Retry-After {secs}");
    // Another student is not affected.
    let other = app.token("s2", Role::Student, &["e1"]);
    ticket(&app, "e1", &other, 30_000).await;
}

#[tokio::test]
async fn minting_counts_against_the_address_budget_too() {
    let app = spawn_app_with(|s| {
        s.limits.handshakes_per_ip = 3;
        s.limits.handshake_window = Duration::from_secs(600);
    })
    .await;
    for i in 0..3 {
        let token = app.token(&format!("s{i}"), Role::Student, &["e1"]);
        ticket(&app, "e1", &token, 30_000).await;
    }
    let token = app.token("s9", Role::Student, &["e1"]);
    let (status, headers, body) = post_ticket(&app, "e1", Some(&token)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(headers.contains_key("retry-after"));
}
