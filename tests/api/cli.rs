//! The real binary: `examwatch token` signs with the secret the server
//! generated, `serve` is the default, a bad setting is a clear error, and
//! SIGTERM drains with 1012 and exits 0.

use std::process::{Command, Stdio};

use crate::helpers::*;

#[tokio::test]
async fn serve_then_token_then_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // No subcommand = serve; the first start writes the secret.
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
    assert!(dir.path().join("data/jwt_secret").exists());
    // `token` from the same folder signs with that secret.
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
    // A teacher's token from the same command opens the exam first.
    let teacher = examwatch_command(dir.path())
        .args([
            "token", "--sub", "t1", "--role", "teacher", "--exam", "e1", "--ttl", "1h",
        ])
        .output()
        .unwrap();
    assert!(teacher.status.success());
    let teacher = String::from_utf8(teacher.stdout).unwrap().trim().to_owned();
    open_exam_at(&format!("http://{addr}"), &teacher, "e1").await;
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
    assert_eq!(
        client.expect_close().await,
        (Some(1012), "service restart".to_string())
    );
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

/// `token` never makes up a secret: from a folder with none it fails,
/// naming where it looked and how to point it at the server's, and writes
/// nothing; with `--data-dir` it signs with the server's own secret.
#[test]
fn token_never_mints_with_a_secret_the_server_does_not_use() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = examwatch_command(elsewhere.path())
        .args(["token", "--sub", "s1", "--role", "student", "--exam", "e1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "refused");
    assert!(out.stdout.is_empty(), "no token printed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data/jwt_secret"),
        "names where it looked: {err}"
    );
    for hint in ["--data-dir", "--config", "EXAMWATCH__AUTH__JWT_SECRET"] {
        assert!(
            err.contains(hint),
            "says how to point at the server's ({hint}): {err}"
        );
    }
    assert!(
        !elsewhere.path().join("data").exists(),
        "no secret (or folder) was generated"
    );
    // The server's folder, named from elsewhere, works.
    let server = tempfile::tempdir().unwrap();
    let data = server.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("jwt_secret"), "s".repeat(40)).unwrap();
    let out = examwatch_command(elsewhere.path())
        .args([
            "token",
            "--sub",
            "s1",
            "--role",
            "student",
            "--exam",
            "e1",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let auth = examwatch::config::AuthSettings {
        jwt_secret: Some(examwatch::config::Secret::new("s".repeat(40))),
        ..Default::default()
    };
    let keys = examwatch::auth::Keys::from_settings(&auth, server.path()).unwrap();
    assert_eq!(
        keys.verify(token.trim()).unwrap().sub,
        "s1",
        "signed with the server's secret"
    );
}

/// The example client built by `cargo test` along with the tests.
fn example_client() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_BIN_EXE_examwatch"))
        .parent()
        .expect("a target folder")
        .join("examples/client")
}

/// Waits (with a deadline) for a child to exit.
fn exit_of(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}: still running after {WAIT:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

// Multi-threaded: the in-process server keeps serving while this test
// blocks on the child's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_client_keeps_its_token_off_the_command_line_and_exits_on_close() {
    use std::io::Write;
    let app = spawn_app().await;
    let url = app.ws_url("e1");
    let token = app.token("t1", examwatch::auth::Role::Teacher, &["e1"]);
    // A token on the command line is refused, with the way to pass it.
    let out = Command::new(example_client())
        .args([&url, &token])
        .output()
        .expect("run the example client (built by cargo test)");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("EXAMWATCH_TOKEN"));
    // From stdin's first line: connects, prints the snapshot, and ctrl-d ends it.
    let mut child = Command::new(example_client())
        .arg(&url)
        .env_remove("EXAMWATCH_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{token}").unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let first: serde_json::Value =
        serde_json::from_str(&out.recv_timeout(WAIT).expect("a first line")).unwrap();
    assert_eq!(first["type"], "snapshot");
    drop(stdin);
    assert!(exit_of(&mut child, "after ctrl-d").success());
    // From the environment; stdin stays open (nobody presses Enter), and
    // the server's close ends the client, saying what the code means.
    let mut child = Command::new(example_client())
        .arg(&url)
        .env("EXAMWATCH_TOKEN", &token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stdin = child.stdin.take().unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    let first: serde_json::Value =
        serde_json::from_str(&out.recv_timeout(WAIT).expect("a first line")).unwrap();
    assert_eq!(first["type"], "snapshot");
    app.shutdown().await.expect("clean shutdown");
    let status = exit_of(&mut child, "after the server closed the socket");
    assert!(status.success(), "{status}");
    let said: Vec<String> = err.iter().collect();
    assert!(
        said.iter().any(|l| l.contains("1012")
            && l.contains("service restart")
            && l.contains("reconnect")),
        "the close code and its meaning: {said:?}"
    );
}

/// The demo's links stay visible: printed in a framed block, again on
/// Enter, and not buried under info-level log lines (the demo logs at
/// `warn` unless a level is asked for).
#[test]
fn the_demo_keeps_its_links_visible() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut child = examwatch_command(dir.path())
        .env_remove("EXAMWATCH__LOG__LEVEL")
        .args(["demo", "--students", "2", "--pace", "300ms"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    let block = |what: &str| {
        let mut lines = Vec::new();
        let mut rules = 0;
        while rules < 2 {
            let line = out
                .recv_timeout(WAIT * 2)
                .unwrap_or_else(|_| panic!("{what}: a framed block, got {lines:?}"));
            if line.starts_with('─') {
                rules += 1;
            }
            lines.push(line);
        }
        lines
    };
    let first = block("at start");
    let link = |lines: &[String]| {
        lines.iter().find_map(|l| {
            l.trim()
                .strip_prefix("dashboard:")
                .map(|u| u.trim().to_owned())
        })
    };
    let dashboard = link(&first).expect("the dashboard link in the block");
    assert!(first.iter().any(|l| l.trim().starts_with("student page:")));
    assert!(first.iter().any(|l| l.contains("Enter")), "{first:?}");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin).unwrap();
    let again = block("after Enter");
    assert_eq!(link(&again), Some(dashboard), "the same links again");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    let logged: Vec<String> = err.iter().collect();
    assert!(
        logged.iter().all(|l| !l.contains("INFO")),
        "no info lines by default: {logged:?}"
    );
}
