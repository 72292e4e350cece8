//! What clients can put in the server's log. A flood of refused handshakes
//! with a long User-Agent writes a bounded number of short lines (and the
//! metrics count every refusal), and no spelling of the token's query
//! parameter gets a token into the log. The log is the real one: the
//! binary's stderr, in JSON lines.

use std::time::{Duration, Instant};

use examwatch::auth::{Keys, Role};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, http::HeaderValue};

use crate::helpers::*;

/// Refused-handshake lines per second in these tests.
const BUDGET: u64 = 5;

fn keys(dir: &std::path::Path) -> Keys {
    let auth = examwatch::config::AuthSettings {
        jwt_secret: Some(examwatch::config::Secret::new(SECRET)),
        ..Default::default()
    };
    Keys::from_settings(&auth, dir).expect("keys")
}

/// A handshake to `url` with an optional bearer token and User-Agent.
async fn handshake(
    url: &str,
    bearer: Option<&str>,
    user_agent: Option<&str>,
) -> Result<Client, tungstenite::Error> {
    let mut req = url.into_client_request()?;
    if let Some(t) = bearer {
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {t}")).expect("header"),
        );
    }
    if let Some(ua) = user_agent {
        req.headers_mut()
            .insert("user-agent", HeaderValue::from_str(ua).expect("header"));
    }
    let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake timed out")?;
    Ok(Client { ws, response })
}

fn status_of(result: Result<Client, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the socket was upgraded"),
    }
}

/// The server's next log line, parsed, within `deadline`.
fn next_line(server: &ServerProcess, deadline: Instant) -> (String, Value) {
    let left = deadline.saturating_duration_since(Instant::now());
    let line = server
        ._logs
        .recv_timeout(left)
        .expect("the expected log lines arrived in time");
    let json = serde_json::from_str(&line).unwrap_or(Value::Null);
    (line, json)
}

fn start(dir: &std::path::Path, per_second: &str) -> ServerProcess {
    let mut server = ServerProcess::start(
        dir,
        &[
            ("EXAMWATCH__AUTH__JWT_SECRET", SECRET),
            ("EXAMWATCH__LOG__FORMAT", "json"),
            ("EXAMWATCH__LOG__REFUSED_HANDSHAKES_PER_SECOND", per_second),
            // Every refusal here is a 401 (no 429 from the per-IP limit).
            ("EXAMWATCH__LIMITS__HANDSHAKES_PER_IP", "0"),
        ],
    );
    // In a JSON line the address is followed by the closing quote.
    server.addr = server.addr.split('"').next().unwrap_or_default().to_owned();
    server
}

#[tokio::test]
async fn a_flood_of_refused_handshakes_writes_a_bounded_log() {
    const N: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &BUDGET.to_string());
    open_exam_on(&server.addr, "e1").await;
    let url = format!("ws://{}/v1/exams/e1/ws", server.addr);
    let long_ua = format!("Mozilla/5.0 {}", "A".repeat(8600));

    let started = Instant::now();
    for _ in 0..N {
        let refused = handshake(&url, Some("not.a.jwt"), Some(&long_ua)).await;
        assert_eq!(status_of(refused), 401);
    }
    let elapsed = started.elapsed();
    // A real client with the same User-Agent is served, its UA clipped.
    let token = keys(dir.path())
        .mint(
            "s1",
            "S1",
            Role::Student,
            vec!["e1".into()],
            Duration::from_secs(600),
        )
        .unwrap();
    let mut ok = handshake(&url, Some(&token), Some(&long_ua))
        .await
        .expect("a valid handshake");
    ok.next_of_type("welcome").await;

    // Every refusal is either a line of its own or counted in a summary.
    let deadline = Instant::now() + 3 * WAIT;
    let (mut written, mut summarized, mut summaries, mut connected) = (0, 0, 0, false);
    let mut longest = 0;
    while written + summarized < N || !connected {
        let (line, json) = next_line(&server, deadline);
        longest = longest.max(line.len());
        match json["message"].as_str().unwrap_or_default() {
            "websocket handshake refused" => {
                written += 1;
                assert_eq!(json["code"], "invalid_token");
                assert_eq!(
                    json["user_agent"],
                    format!("{}…[truncated, {} bytes]", &long_ua[..256], long_ua.len())
                );
            }
            "connected" => {
                connected = true;
                assert!(json["user_agent"].as_str().unwrap().len() < 300, "{line}");
            }
            m if m.contains("more refused handshakes not logged") => {
                summaries += 1;
                summarized += json["suppressed"].as_u64().expect("a count");
            }
            _ => {}
        }
    }
    assert_eq!(written + summarized, N);
    // At most BUDGET lines in each second the flood lasted (the first
    // second starts with the first line, so one more partial second).
    let seconds = elapsed.as_secs() + 2;
    assert!(
        written <= BUDGET * seconds && written < N / 4,
        "{written} lines for {N} refusals in {elapsed:?}"
    );
    assert!(summaries <= seconds + 1, "{summaries} summary lines");
    // Each line is short: before, each carried the whole 8.6 KB User-Agent.
    assert!(longest < 1500, "a {longest}-byte log line");
}

#[tokio::test]
async fn the_metrics_count_every_refused_handshake_logged_or_not() {
    const N: u64 = 100;
    let app = spawn_app_with(|s| {
        s.log.refused_handshakes_per_second = BUDGET as u32;
        s.limits.handshakes_per_ip = 0;
    })
    .await;
    let long_ua = "B".repeat(4000);
    let started = Instant::now();
    for _ in 0..N {
        let refused = handshake(&app.ws_url("e1"), Some("not.a.jwt"), Some(&long_ua)).await;
        assert_eq!(status_of(refused), 401);
    }
    let seconds = started.elapsed().as_secs() + 2;
    assert_eq!(app.metric("examwatch_handshakes_rejected_total"), N as i64);
    let suppressed = app.metric("examwatch_handshake_logs_suppressed_total") as u64;
    assert!(
        suppressed >= N - BUDGET * seconds && suppressed < N,
        "{suppressed} of {N} suppressed"
    );
}

#[tokio::test]
async fn no_spelling_of_the_token_parameter_gets_a_token_into_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "1000");
    open_exam_on(&server.addr, "e1").await;
    let base = format!("ws://{}/v1/exams", server.addr);
    let token = keys(dir.path())
        .mint(
            "s1",
            "S1",
            Role::Student,
            vec!["e1".into()],
            Duration::from_secs(600),
        )
        .unwrap();
    let signature = token.rsplit('.').next().unwrap().to_owned();
    let encoded_value = format!("%65{}", &token[1..]);
    let spellings = [
        format!("access_token={token}"),
        format!("access%5Ftoken={token}"),
        format!("%61ccess_token={token}"),
        format!("%61%63%63%65%73%73%5F%74%6F%6B%65%6E={token}"),
        format!("access_token={encoded_value}"),
    ];
    let mut expected_queries = Vec::new();
    for query in &spellings {
        // Each spelling authenticates: the query parser decodes the key.
        let mut c = handshake(&format!("{base}/e1/ws?{query}"), None, None)
            .await
            .unwrap_or_else(|e| panic!("{query} did not authenticate: {e}"));
        c.next_of_type("welcome").await;
        c.close().await;
        // The same URL for an exam the token does not grant is refused
        // (403), and the refusal's log line carries the query.
        let refused = handshake(&format!("{base}/e2/ws?{query}"), None, None).await;
        assert_eq!(status_of(refused), 403);
        let key = query.split_once('=').unwrap().0;
        expected_queries.push(format!("{key}=[redacted]"));
    }
    // A JWT by value under any key, and a ticket, are redacted too.
    let refused = handshake(
        &format!("{base}/e2/ws?last_seq=1&previous_session={token}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status_of(refused), 403);
    expected_queries.push("last_seq=1&previous_session=[redacted]".into());
    let refused = handshake(
        &format!("{base}/e1/ws?ticket=tk-0123456789abcdef"),
        None,
        None,
    )
    .await;
    assert_eq!(status_of(refused), 401);
    expected_queries.push("ticket=[redacted]".into());
    // An HTTP session's handover token (PROTOCOL.md 8.4) is a secret too.
    let handover = "5f0e8a4c-2b1d-4c3e-9f7a-0d1e2c3b4a59";
    let refused = handshake(
        &format!("{base}/e2/ws?previous_session=p1&handover={handover}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status_of(refused), 403);
    expected_queries.push("previous_session=p1&handover=[redacted]".into());

    let deadline = Instant::now() + 2 * WAIT;
    let mut queries = Vec::new();
    let mut log = String::new();
    while queries.len() < expected_queries.len() {
        let (line, json) = next_line(&server, deadline);
        if json["message"] == "websocket handshake refused" {
            queries.push(json["query"].as_str().expect("a query field").to_owned());
        }
        log.push_str(&line);
        log.push('\n');
    }
    assert_eq!(queries, expected_queries);
    assert!(!log.contains(&signature), "a token reached the log:\n{log}");
    assert!(
        !log.contains("tk-0123456789abcdef"),
        "a ticket reached the log"
    );
    assert!(!log.contains(handover), "a handover token reached the log");
}
