//! The real binary: `examwatch token` signs with the secret the server
//! generated, `serve` is the default, a bad setting is a clear error, and
//! SIGTERM drains with 1001 and exits 0.

use std::process::{Command, Stdio};

use crate::helpers::*;

#[tokio::test]
async fn token_then_serve_then_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // `token` before the first start creates the secret the server will use.
    let out = examwatch_command(dir.path())
        .args([
            "token", "--sub", "s1", "--name", "Ada", "--role", "student", "--exam", "e1", "--ttl",
            "1h",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(token.split('.').count(), 3);
    assert!(dir.path().join("data/jwt_secret").exists());

    // No subcommand = serve.
    let mut child = examwatch_command(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(child.stderr.take().unwrap());
    let mut logs = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    let addr = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no address logged ({e}); logged: {logs:#?}"));
        logs.push(line.clone());
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest
                .chars()
                .take_while(|c| !c.is_whitespace())
                .collect::<String>();
        }
    };
    let url = format!("ws://{addr}/v1/exams/e1/ws?access_token={token}");
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    req.headers_mut()
        .insert("user-agent", "examwatch-test".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("token accepted");
    let mut client = Client {
        ws,
        response: Default::default(),
    };
    let welcome = client.next_json().await;
    assert_eq!(welcome["student"]["name"], "Ada");

    // A refused handshake is logged with the query, but never the token.
    let refused = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/v1/exams/e2/ws?access_token={token}"
    ))
    .await;
    assert!(
        matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 403)
    );

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(client.expect_close().await.0, Some(1001));
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    // The process has exited: read its log to the end (try_iter could
    // miss lines the reader thread has not passed on yet).
    logs.extend(rx.iter());
    assert!(
        logs.iter()
            .any(|l| l.contains("disconnected") && l.contains("examwatch-test")),
        "disconnect logged with user agent: {logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("handshake refused") && l.contains("access_token=[redacted]")),
        "refusal logged with a redacted query: {logs:?}"
    );
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        logs.iter().all(|l| !l.contains(signature)),
        "the token never reaches the logs"
    );
}

#[test]
fn an_invalid_setting_is_a_startup_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = examwatch_command(dir.path())
        .env("EXAMWATCH__WS__PING_INTERVAL", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("ws.ping_interval"), "{err}");
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = examwatch_command(dir.path())
        .env("EXAMWATCH__LOG__FORMAT", "json")
        .env("EXAMWATCH__AUTH__JWT_SECRET", SECRET)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(child.stderr.take().unwrap());
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    let line = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no `listening` line ({e}); logged: {seen:#?}"));
        if line.contains("listening") {
            break line;
        }
        seen.push(line);
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(v["level"], "INFO");
    assert!(
        v["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{v}"
    );
    assert!(status.success());
}

#[tokio::test]
async fn migrate_creates_the_default_sqlite_database_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let out = examwatch_command(dir.path())
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = dir.path().join("data/examwatch.db");
    assert!(
        db.exists(),
        "the default database file and its folder are created"
    );
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    for t in [
        "answers",
        "events",
        "exams",
        "roster",
        "sessions",
        "submissions",
        "teacher_actions",
    ] {
        assert!(tables.iter().any(|n| n == t), "table {t} in {tables:?}");
    }
    // Running it again is a no-op.
    assert!(
        examwatch_command(dir.path())
            .arg("migrate")
            .status()
            .unwrap()
            .success()
    );
}
