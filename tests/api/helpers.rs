//! Shared test harness: a real server on 127.0.0.1:0 per test, real
//! WebSocket clients, and helpers that wait for events instead of sleeping.

use std::{net::SocketAddr, sync::Arc, time::Duration};

mod redis_cluster;
pub use redis_cluster::{Backplane, RedisCluster};
mod run_end;
mod sse_client;
pub use sse_client::{SseClient, SseEvent, sse_get_at};
#[cfg(test)]
mod self_tests;
pub use run_end::{Prerequisite, missing};
use run_end::{created_database, sweep_stale_databases};

use examwatch::{
    App, Settings,
    auth::{Keys, Role},
    config::Secret,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle, time::Instant};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{
        self, Message,
        client::IntoClientRequest,
        http::{HeaderValue, Response},
        protocol::CloseFrame,
    },
};

/// How long any one wait may take in all before the test fails (one
/// deadline per wait: pings and other frames do not extend it).
pub const WAIT: Duration = Duration::from_secs(5);

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

pub struct TestApp {
    pub addr: SocketAddr,
    /// The operators' listener (`server.admin_bind`): /metrics, detailed /readyz.
    pub admin_addr: SocketAddr,
    pub keys: Arc<Keys>,
    pub state: examwatch::app::AppState,
    /// The database this server uses (to restart another on it).
    pub db_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    _data: Option<tempfile::TempDir>,
    pub _db_dir: Option<tempfile::TempDir>,
    /// Exams already opened for students by [`TestApp::try_connect`].
    opened: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// What must outlive a stopped server for another to start on its data.
pub struct TestAppParts {
    pub db_dir: Option<tempfile::TempDir>,
    pub data: Option<tempfile::TempDir>,
}

/// Settings for tests: a fixed secret, a temp data folder, quiet logs.
pub fn test_settings() -> Settings {
    let mut s = Settings::default();
    s.server.bind = "127.0.0.1:0".parse().expect("valid address");
    s.server.admin_bind = "127.0.0.1:0".parse().expect("valid address");
    s.server.shutdown_timeout = Duration::from_secs(3);
    // A rolling restart's spread close in a fraction of a second, and no
    // loopback readiness check (a connection of its own every few seconds
    // would sit among the connections that limit tests count); the tests
    // of either turn them on (tests/api/drain.rs).
    s.server.drain_window = Duration::from_millis(200);
    s.server.ws_probe_interval = Duration::ZERO;
    s.auth.jwt_secret = Some(Secret::new(SECRET));
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_on_url(None, configure).await
}

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database URL for `backend`; `None` (with a visible
/// notice) when PostgreSQL is not reachable outside CI. Under `CI=true` a
/// missing PostgreSQL fails the test. A PostgreSQL database is dropped when
/// the test process exits (see `run_end`).
pub async fn fresh_database(backend: Backend, dir: &std::path::Path) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(format!("sqlite://{}/examwatch.db", dir.display())),
        Backend::Postgres => {
            let base = std::env::var("TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let conn =
                tokio::time::timeout(Duration::from_secs(5), sqlx::PgPool::connect(&base)).await;
            let pool = match conn {
                Ok(Ok(pool)) => pool,
                other => {
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    missing(
                        Prerequisite::Postgres,
                        &format!("cannot reach {base}: {why}"),
                    );
                    return None;
                }
            };
            static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SWEPT.swap(true, std::sync::atomic::Ordering::Relaxed) {
                sweep_stale_databases(&pool).await;
            }
            let name = format!("examwatch_test_{}", uuid::Uuid::new_v4().simple());
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&pool)
                .await
                .expect("create a test database");
            // Dropped when the test process exits (the database may outlive
            // the test's server: restarts on the same data).
            created_database(&base, &name);
            pool.close().await;
            let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
            Some(format!("{prefix}/{name}"))
        }
    }
}

/// A server on a fresh database of `backend`; `None` if it is unavailable.
pub async fn spawn_app_on(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
) -> Option<TestApp> {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = fresh_database(backend, dir.path()).await?;
    let mut app = spawn_app_on_url(Some(url), configure).await;
    app._db_dir = Some(dir);
    Some(app)
}

/// A server on `url` (default: SQLite in its temp folder).
pub async fn spawn_app_on_url(
    url: Option<String>,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber_init();
    }
    let data = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings();
    settings.server.data_dir = data.path().to_path_buf();
    settings.database.url =
        url.unwrap_or_else(|| format!("sqlite://{}/examwatch.db", data.path().display()));
    configure(&mut settings);
    let db_url = settings.database.url.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let app = App::with_listener(settings, listener)
        .await
        .expect("app builds");
    let addr = app.local_addr().expect("local addr");
    let admin_addr = app.admin_addr().expect("admin addr");
    let state = app.state().clone();
    let keys = state.keys.clone();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        admin_addr,
        keys,
        state,
        db_url,
        shutdown: Some(tx),
        handle: Some(handle),
        _data: Some(data),
        _db_dir: None,
        opened: Default::default(),
    }
}

fn tracing_subscriber_init() -> anyhow::Result<()> {
    examwatch::telemetry::init(&examwatch::config::LogSettings {
        level: "debug".into(),
        ..Default::default()
    })
}

impl TestApp {
    pub fn token(&self, sub: &str, role: Role, exams: &[&str]) -> String {
        self.keys
            .mint(
                sub,
                &format!("Name {sub}"),
                role,
                exams.iter().map(|s| s.to_string()).collect(),
                Duration::from_secs(600),
            )
            .expect("mint token")
    }

    pub fn ws_url(&self, exam: &str) -> String {
        format!("ws://{}/v1/exams/{exam}/ws", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connects with a bearer token; panics if the handshake fails.
    pub async fn connect(&self, exam: &str, token: &str) -> Client {
        self.try_connect(&self.ws_url(exam), Some(token), &[])
            .await
            .unwrap_or_else(|e| panic!("handshake failed: {e}"))
    }

    /// Connects to `url`. Whoever connects to an exam of this server finds
    /// it open: students may only join an exam a teacher created and opened
    /// (issue 14), so the exam is created `in_progress` first (or moved
    /// there), once per exam, before anyone's room starts. Tests of what
    /// happens before that use [`TestApp::try_connect_as_is`].
    pub async fn try_connect(
        &self,
        url: &str,
        bearer: Option<&str>,
        headers: &[(&'static str, &str)],
    ) -> Result<Client, tungstenite::Error> {
        if let (Some(token), Some(exam)) = (bearer, self.exam_of(url))
            && self.keys.verify(token).is_ok()
        {
            self.open_exam(&exam).await;
        }
        self.try_connect_as_is(url, bearer, headers).await
    }

    /// Makes sure `exam` exists and is in progress ([`open_exam_at`]),
    /// once per exam and server.
    pub async fn open_exam(&self, exam: &str) {
        if self.opened.lock().unwrap().insert(exam.to_owned()) {
            // Servers with keys of their own (RS256, EdDSA) cannot mint
            // here: their tests open their exams themselves.
            let Ok(admin) = self.keys.mint(
                "test-admin",
                "Test Admin",
                Role::Admin,
                vec![],
                Duration::from_secs(600),
            ) else {
                return;
            };
            open_exam_at(&self.http(""), &admin, exam).await;
        }
    }

    /// The exam id of a socket URL of this server.
    fn exam_of(&self, url: &str) -> Option<String> {
        let rest = url.strip_prefix(&format!("ws://{}/v1/exams/", self.addr))?;
        let (exam, tail) = rest.split_once('/')?;
        tail.starts_with("ws").then(|| exam.to_owned())
    }

    /// Connects to `url` without opening its exam first.
    pub async fn try_connect_as_is(
        &self,
        url: &str,
        bearer: Option<&str>,
        headers: &[(&'static str, &str)],
    ) -> Result<Client, tungstenite::Error> {
        let mut req = url.into_client_request()?;
        if let Some(t) = bearer {
            req.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).expect("header"),
            );
        }
        for (k, v) in headers {
            req.headers_mut()
                .insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("handshake timed out")?;
        Ok(Client { ws, response })
    }

    /// A student connection, after its `welcome`.
    pub async fn student(&self, exam: &str, sub: &str) -> (Client, Value) {
        let mut c = self
            .connect(exam, &self.token(sub, Role::Student, &[exam]))
            .await;
        let welcome = c.next_of_type("welcome").await;
        (c, welcome)
    }

    /// A teacher connection, after its whole join `snapshot` (every part,
    /// assembled: see [`Client::snapshot`]).
    pub async fn teacher(&self, exam: &str, sub: &str) -> (Client, Value) {
        let mut c = self
            .connect(exam, &self.token(sub, Role::Teacher, &[exam]))
            .await;
        let snapshot = c.snapshot().await;
        (c, snapshot)
    }

    /// A REST call with a bearer token.
    pub fn api(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, self.http(path))
            .bearer_auth(token)
    }

    /// GET a JSON document from the REST API.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        get_json_at(&self.http(path), token).await
    }

    /// The whole timeline of an exam, read page by page (`limit` per page).
    pub async fn timeline(&self, exam: &str, token: &str, limit: u32) -> Vec<Value> {
        let mut events = Vec::new();
        let mut after = 0;
        let deadline = deadline();
        loop {
            assert!(
                Instant::now() < deadline,
                "the timeline of {exam} did not end within {WAIT:?}: {} events, after_seq {after}",
                events.len()
            );
            let path = format!("/v1/exams/{exam}/timeline?after_seq={after}&limit={limit}");
            let page = self.get_json(&path, token).await;
            events.extend(page["events"].as_array().expect("events").iter().cloned());
            after = page["next_after_seq"].as_i64().expect("next_after_seq");
            if page["has_more"] == false {
                return events;
            }
        }
    }

    /// Waits until everything queued for the database is committed.
    pub async fn flushed(&self) {
        let stats = self.state.writer.stats();
        eventually("the database writer is flushed", || {
            stats.pending.load(std::sync::atomic::Ordering::Relaxed) == 0
        })
        .await;
    }

    pub fn metric(&self, name: &str) -> i64 {
        metric_in(&self.metrics_text(), name).unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// The sum of metric `name`'s series whose labels include every one
    /// of `labels` (`[("reason", "invalid_token")]`); 0 if none yet.
    pub fn metric_where(&self, name: &str, labels: &[(&str, &str)]) -> i64 {
        metric_where(&self.metrics_text(), name, labels).unwrap_or(0)
    }

    /// What `/metrics` answers, without the HTTP round trip.
    pub fn metrics_text(&self) -> String {
        self.state.metrics.render(self.state.writer.stats())
    }

    /// A URL on the operators' listener.
    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// Triggers graceful shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().expect("running");
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("shutdown finished in time")
            .expect("server task joined")
    }

    /// Graceful stop that keeps the database files for a restart.
    pub async fn stop(mut self) -> TestAppParts {
        self.begin_shutdown();
        let handle = self.handle.take().expect("running");
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("shutdown finished in time")
            .expect("server task joined")
            .expect("clean shutdown");
        TestAppParts {
            db_dir: self._db_dir.take(),
            data: self._data.take(),
        }
    }

    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub response: Response<Option<Vec<u8>>>,
}

/// What a client observed next.
#[derive(Debug)]
pub enum Next {
    Json(Value),
    Closed(Option<u16>, String),
}

impl Client {
    pub async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// Sends, reporting failure instead of panicking (for killed servers).
    pub async fn ws_send(&mut self, v: Value) -> Result<(), tungstenite::Error> {
        self.ws.send(Message::text(v.to_string())).await
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).await.expect("send");
    }

    /// The next JSON message or close, skipping pings and pongs, within
    /// [`WAIT`] in all (pings do not extend it).
    pub async fn next(&mut self) -> Next {
        self.next_within(deadline()).await
    }

    /// [`Client::next`] with the caller's overall deadline (one `deadline`
    /// for a whole waiting loop).
    pub async fn next_within(&mut self, deadline: Instant) -> Next {
        let mut seen = Seen::default();
        match self.frame_within(deadline, &mut seen, "a message").await {
            Frame::Text(t) => Next::Json(parse(&t)),
            Frame::Closed(code, reason) => Next::Closed(code, reason),
        }
    }

    pub async fn next_json(&mut self) -> Value {
        self.next_json_within(deadline()).await
    }

    /// The next JSON message by `deadline`; panics on a close.
    pub async fn next_json_within(&mut self, deadline: Instant) -> Value {
        match self.next_within(deadline).await {
            Next::Json(v) => v,
            Next::Closed(code, reason) => panic!("expected a message, got close {code:?} {reason}"),
        }
    }

    /// Skips messages until one of type `ty` arrives, within [`WAIT`] in
    /// all; fails with the messages it skipped.
    pub async fn next_of_type(&mut self, ty: &str) -> Value {
        self.next_of_type_within(ty, deadline()).await
    }

    /// [`Client::next_of_type`] with the caller's overall deadline.
    pub async fn next_of_type_within(&mut self, ty: &str, deadline: Instant) -> Value {
        self.next_where_within(&format!("a `{ty}`"), deadline, |v| v["type"] == ty)
            .await
    }

    /// Skips messages until one for which `wanted` holds, within [`WAIT`]
    /// in all; fails naming `what` it waited for and what it skipped.
    pub async fn next_where(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        self.next_where_within(what, deadline(), wanted).await
    }

    /// [`Client::next_where`] with the caller's overall deadline.
    pub async fn next_where_within(
        &mut self,
        what: &str,
        deadline: Instant,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut seen = Seen::default();
        loop {
            match self.frame_within(deadline, &mut seen, what).await {
                Frame::Text(t) => {
                    let v = parse(&t);
                    if wanted(&v) {
                        return v;
                    }
                    seen.push(t);
                }
                Frame::Closed(code, reason) => {
                    panic!("expected {what}, got close {code:?} {reason}; before it: {seen}")
                }
            }
        }
    }

    /// Skips messages until a `snapshot` starts, then reads all its parts
    /// (docs/PROTOCOL.md 4.12) and returns them assembled: the first part
    /// with `students` holding every part's students, in order.
    pub async fn snapshot(&mut self) -> Value {
        let parts = self.snapshot_parts().await;
        assemble_snapshot(parts.into_iter().map(|(_, v)| v).collect())
    }

    /// Skips messages until a `snapshot` starts; returns each of its parts
    /// with the size of its frame in bytes. Checks that the parts belong
    /// together: numbered 1, 2, … `parts`, nothing else in between (no
    /// socket-level errors are provoked here), the same `seq`, `exam_id`,
    /// `parts` and `counts` in each. A snapshot without `part`/`parts` is
    /// taken as whole. All parts within one [`WAIT`] (a 20,000-student
    /// snapshot takes well under a second here).
    pub async fn snapshot_parts(&mut self) -> Vec<(usize, Value)> {
        let deadline = deadline();
        let mut seen = Seen::default();
        let mut parts: Vec<(usize, Value)> = Vec::new();
        loop {
            let t = match self
                .frame_within(deadline, &mut seen, "a snapshot part")
                .await
            {
                Frame::Text(t) => t,
                Frame::Closed(code, reason) => {
                    panic!(
                        "expected a snapshot part, got close {code:?} {reason}; before it: {seen}"
                    )
                }
            };
            let (bytes, v) = (t.len(), parse(&t));
            if parts.is_empty() && v["type"] != "snapshot" {
                seen.push(t);
                continue;
            }
            assert_eq!(v["type"], "snapshot", "a snapshot part, got {v}");
            let part = v["part"].as_u64().unwrap_or(1);
            let total = v["parts"].as_u64().unwrap_or(1);
            assert_eq!(part, parts.len() as u64 + 1, "parts in order: {v}");
            if let Some((_, first)) = parts.first() {
                for field in ["seq", "exam_id", "parts", "counts"] {
                    assert_eq!(v[field], first[field], "`{field}` of part {part}");
                }
            }
            parts.push((bytes, v));
            if part == total {
                return parts;
            }
        }
    }

    /// The next text frame or close by `deadline`, skipping (and noting in
    /// `seen`) pings and pongs; panics at the deadline with what was seen.
    async fn frame_within(&mut self, deadline: Instant, seen: &mut Seen, what: &str) -> Frame {
        loop {
            let Ok(msg) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                panic!("timed out waiting for {what}; saw {seen}");
            };
            match msg {
                Some(Ok(Message::Text(t))) => return Frame::Text(t.as_str().to_owned()),
                Some(Ok(Message::Close(f))) => {
                    let Next::Closed(code, reason) = close_of(f) else {
                        unreachable!("close_of returns Closed")
                    };
                    return Frame::Closed(code, reason);
                }
                Some(Ok(Message::Ping(_))) => seen.push("(ping)".into()),
                Some(Ok(Message::Pong(_))) => seen.push("(pong)".into()),
                Some(Ok(other)) => panic!("unexpected frame {other:?} waiting for {what}"),
                Some(Err(e)) => return Frame::Closed(None, format!("error: {e}")),
                None => return Frame::Closed(None, "stream ended".into()),
            }
        }
    }

    /// Skips messages until the close frame, within [`WAIT`] in all;
    /// returns its code and reason.
    pub async fn expect_close(&mut self) -> (Option<u16>, String) {
        self.expect_close_within(deadline()).await
    }

    /// [`Client::expect_close`] with the caller's overall deadline.
    pub async fn expect_close_within(&mut self, deadline: Instant) -> (Option<u16>, String) {
        let mut seen = Seen::default();
        loop {
            match self.frame_within(deadline, &mut seen, "the close").await {
                Frame::Text(t) => seen.push(t),
                Frame::Closed(code, reason) => return (code, reason),
            }
        }
    }

    /// Closes and reads until the server's close (or [`WAIT`] in all).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let deadline = deadline();
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
    }
}

/// The overall deadline of one wait: [`WAIT`] from now.
pub fn deadline() -> Instant {
    Instant::now() + WAIT
}

/// A text frame or the end of the socket.
enum Frame {
    Text(String),
    Closed(Option<u16>, String),
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("server sent JSON ({e}): {text}"))
}

/// What a wait skipped, for its failure message: how many frames, and the
/// last few of them (shortened), which is where a regression shows.
#[derive(Default)]
pub struct Seen {
    count: usize,
    last: std::collections::VecDeque<String>,
}

impl Seen {
    const KEEP: usize = 12;

    pub fn push(&mut self, mut frame: String) {
        if frame.len() > 600 {
            let cut = (0..=600)
                .rev()
                .find(|i| frame.is_char_boundary(*i))
                .unwrap_or(0);
            frame.truncate(cut);
            frame.push('…');
        }
        self.count += 1;
        if self.last.len() == Self::KEEP {
            self.last.pop_front();
        }
        self.last.push_back(frame);
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.count == 0 {
            return write!(f, "nothing");
        }
        write!(f, "{} frames, the last {}:", self.count, self.last.len())?;
        for frame in &self.last {
            write!(f, "\n  {frame}")?;
        }
        Ok(())
    }
}

/// One snapshot from its parts: the first, with every part's students.
pub fn assemble_snapshot(parts: Vec<Value>) -> Value {
    let mut parts = parts.into_iter();
    let mut whole = parts.next().expect("at least one part");
    let students = whole["students"].as_array_mut().expect("students");
    for part in parts {
        students.extend(
            part["students"]
                .as_array()
                .expect("students")
                .iter()
                .cloned(),
        );
    }
    whole
}

fn close_of(f: Option<CloseFrame>) -> Next {
    match f {
        Some(f) => Next::Closed(Some(f.code.into()), f.reason.to_string()),
        None => Next::Closed(None, String::new()),
    }
}

/// A student event of `cause` for `student_id`.
pub fn is_student_event(v: &Value, student_id: &str, cause: &str) -> bool {
    v["type"] == "student" && v["student"]["student_id"] == student_id && v["cause"] == cause
}

pub fn progress(question: u32, answered: u32) -> Value {
    json!({"type": "progress", "question": question, "answered": answered})
}

/// Waits (bounded) for a condition on server state that has no event of its
/// own, such as a gauge going down after a socket closes.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = deadline();
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A pool on the test app's own database (either backend).
pub async fn db_pool(app: &TestApp) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(&app.db_url)
        .await
        .expect("connect to the test database")
}

/// Runs each named `async fn(Backend)` test once on SQLite and once on
/// PostgreSQL, as `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name($crate::helpers::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name($crate::helpers::Backend::Postgres).await })*
        }
    };
}

/// The value of metric `name` in a Prometheus text: the sum of its series
/// over all labels (`None` if it has none).
pub fn metric_in(text: &str, name: &str) -> Option<i64> {
    metric_where(text, name, &[])
}

/// The sum of metric `name`'s series whose labels include every one of
/// `labels` (`None` if no series matches).
pub fn metric_where(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<i64> {
    let mut sum = None;
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        let (set, value) = match rest.strip_prefix('{') {
            Some(labelled) => match labelled.split_once("} ") {
                Some(parts) => parts,
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let wanted = labels
            .iter()
            .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if !wanted {
            continue;
        }
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        *sum.get_or_insert(0) += value as i64;
    }
    sum
}

/// The real binary, run in `dir`, on 127.0.0.1:0, logging at info level,
/// with none of the test process's own `EXAMWATCH__*` settings (a developer's
/// shell must not change what a test runs).
pub fn examwatch_command(dir: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_examwatch"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EXAMWATCH__") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .env("EXAMWATCH__SERVER__BIND", "127.0.0.1:0")
        .env("EXAMWATCH__SERVER__ADMIN_BIND", "127.0.0.1:0")
        .env("EXAMWATCH__LOG__LEVEL", "info");
    cmd
}

/// A child's output, line by line, read on a thread of its own (so the
/// child never blocks on a full pipe).
pub fn lines_of(output: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(output)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    rx
}

/// A real `examwatch serve` process, for tests that kill or signal it.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: String,
    /// The operators' listener (metrics).
    pub admin_addr: String,
    /// The server's log lines (kept so the reader thread never blocks).
    pub _logs: std::sync::mpsc::Receiver<String>,
}

impl ServerProcess {
    /// Starts the binary with `env` (on 127.0.0.1:0) and waits for its address.
    pub fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> ServerProcess {
        let mut cmd = examwatch_command(dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd)
    }

    /// Runs `cmd` (which runs the server) and waits for its addresses.
    pub fn spawn(mut cmd: std::process::Command) -> ServerProcess {
        cmd.stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("start examwatch");
        let _logs = lines_of(child.stderr.take().expect("piped stderr"));
        let addr_after = |line: &str, marker: &str| {
            line.split(marker).nth(1).map(|rest| {
                rest.chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"')
                    .collect::<String>()
            })
        };
        let (mut addr, mut admin_addr) = (None, None);
        // One deadline for both addresses: other log lines do not extend it.
        let deadline = std::time::Instant::now() + WAIT * 2;
        let mut seen = Seen::default();
        while addr.is_none() || admin_addr.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = _logs.recv_timeout(left).unwrap_or_else(|e| {
                let _ = child.kill();
                panic!("the server did not log its addresses ({e}); it logged {seen}")
            });
            seen.push(line.clone());
            if let Some(a) = addr_after(&line, "listening on http://") {
                addr = Some(a);
            } else if let Some(a) = addr_after(&line, "(/metrics, /readyz) on http://") {
                admin_addr = Some(a);
            }
        }
        ServerProcess {
            child,
            addr: addr.unwrap_or_default(),
            admin_addr: admin_addr.unwrap_or_default(),
            _logs,
        }
    }

    pub fn kill9(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET a JSON document at `url` with a bearer token (any server).
pub async fn get_json_at(url: &str, token: &str) -> Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("a JSON body")
}

/// Makes sure exam `exam` exists and is `in_progress` on the server at
/// `base` (`http://host:port`), with an admin's token: created so, or moved
/// there through the phases before it. Other phases are left alone.
pub async fn open_exam_at(base: &str, admin: &str, exam: &str) {
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{base}/v1/exams"))
        .bearer_auth(admin)
        .json(&json!({"id": exam, "title": format!("Exam {exam}"), "phase": "in_progress"}))
        .send()
        .await
        .expect("create exam request");
    if created.status() != reqwest::StatusCode::CONFLICT {
        return; // created, or an id the API refuses (the test's concern)
    }
    let now: Value = http
        .get(format!("{base}/v1/exams/{exam}"))
        .bearer_auth(admin)
        .send()
        .await
        .expect("get exam request")
        .json()
        .await
        .expect("exam JSON");
    let path: &[&str] = match now["phase"].as_str() {
        Some("draft") => &["scheduled", "in_progress"],
        Some("scheduled") => &["in_progress"],
        _ => &[],
    };
    for phase in path {
        let res = http
            .post(format!("{base}/v1/exams/{exam}/phase"))
            .bearer_auth(admin)
            .json(&json!({ "phase": phase }))
            .send()
            .await
            .expect("phase request");
        assert!(
            res.status().is_success(),
            "opening {exam}: {}",
            res.status()
        );
    }
}

/// Keys signed with [`SECRET`], the secret every test server uses.
fn test_keys() -> &'static Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let auth = examwatch::config::AuthSettings {
            jwt_secret: Some(Secret::new(SECRET)),
            ..Default::default()
        };
        Keys::from_settings(&auth, std::path::Path::new(".")).expect("test keys")
    })
}

/// An admin's token signed with [`SECRET`].
fn test_admin() -> String {
    test_keys()
        .mint(
            "test-admin",
            "Admin",
            Role::Admin,
            vec![],
            Duration::from_secs(600),
        )
        .expect("admin token")
}

/// Opens `exam` on the server at `addr` (`host:port`) signed with [`SECRET`].
pub async fn open_exam_on(addr: &str, exam: &str) {
    let admin = test_admin();
    open_exam_at(&format!("http://{addr}"), &admin, exam).await;
}

/// Connects a WebSocket client to `url`. Anyone with a token signed with
/// [`SECRET`] finds the exam open, as with [`TestApp::try_connect`].
pub async fn connect_url(url: &str, token: &str) -> Client {
    if let Some((host, rest)) = url
        .strip_prefix("ws://")
        .and_then(|u| u.split_once("/v1/exams/"))
        && let Some((exam, _)) = rest.split_once('/')
        && test_keys().verify(token).is_ok()
    {
        let admin = test_admin();
        open_exam_at(&format!("http://{host}"), &admin, exam).await;
    }
    let mut req = url.into_client_request().expect("valid url");
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake timed out")
        .expect("handshake accepted");
    Client { ws, response }
}

/// The whole acknowledgement of a message sent with `ref` `r`.
pub fn ack(r: impl Into<Value>) -> Value {
    json!({"type": "ack", "ref": r.into()})
}

impl Client {
    /// Reads until the reply to `r` arrives and asserts it is exactly
    /// `{"type":"ack","ref":r}`. An `error` (which echoes the `ref` too, or
    /// none at all, like `rate_limited`) or a close fails at once; events
    /// and acks of other messages are skipped, because replies are matched
    /// by `ref`, never by order (docs/PROTOCOL.md 1.6). One deadline for
    /// the whole wait, so chatter cannot extend it.
    pub async fn expect_ack(&mut self, r: impl Into<Value>) {
        let r = r.into();
        let wait = async {
            loop {
                let v = self.next_json().await;
                if v["type"] == "error" || v["ref"] == r {
                    return v;
                }
            }
        };
        let reply = tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for the ack of {r}"));
        assert_eq!(reply, ack(r), "the reply is exactly the ack");
    }
}

/// A JSON timestamp (RFC 3339) as Unix milliseconds.
pub fn ms(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("a timestamp: {v}"));
    humantime::parse_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Unix milliseconds as RFC 3339 with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The server's clock (Unix milliseconds), for comparing with deadlines.
pub fn now_ms() -> i64 {
    examwatch::store::now_ms()
}

/// Posts a proctor action to `app`; status and JSON body.
pub async fn post_action(app: &TestApp, exam: &str, token: &str, body: Value) -> (u16, Value) {
    let res = app
        .api(
            reqwest::Method::POST,
            &format!("/v1/exams/{exam}/actions"),
            token,
        )
        .json(&body)
        .send()
        .await
        .expect("action request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Posts an action in the background (its answer waits for acks).
pub fn post_action_later(
    app: &TestApp,
    exam: &str,
    token: &str,
    body: Value,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let req = app
        .api(
            reqwest::Method::POST,
            &format!("/v1/exams/{exam}/actions"),
            token,
        )
        .json(&body);
    tokio::spawn(async move {
        let res = req.send().await.expect("action request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    })
}

/// Reads until a frame of `ty` carrying action id `id`, then acknowledges it.
pub async fn receive_action(c: &mut Client, ty: &str, id: &str) -> Value {
    let v = c
        .next_where(&format!("{ty} {id}"), |v| v["type"] == ty && v["id"] == id)
        .await;
    c.send_json(serde_json::json!({"type": "received", "id": id}))
        .await;
    v
}

/// A student's handshake on `app` is refused: status and error code.
pub async fn refused_student(app: &TestApp, exam: &str, sub: &str) -> (u16, String) {
    let token = app.token(sub, Role::Student, &[exam]);
    match app.try_connect(&app.ws_url(exam), Some(&token), &[]).await {
        Ok(_) => panic!("the socket was upgraded on {}", app.addr),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            let code = body["error"]["code"].as_str().unwrap_or_default();
            (resp.status().as_u16(), code.to_owned())
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}
