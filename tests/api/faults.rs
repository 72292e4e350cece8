//! Real faults under the database, the way issue 11's attack found them: a
//! SQLite file on a tiny tmpfs that fills up while students answer, then
//! frees; a folder that turns read-only; PostgreSQL connections killed
//! mid-commit. Every answer a student saw acknowledged must be in the
//! database afterwards.
//!
//! The tmpfs is mounted in a private mount namespace (`unshare -m`, root
//! only) held open by a `sleep` process; the server runs inside it through
//! `nsenter`, and the test reaches the files through `/proc/<holder>/root`.
//! Where that is not permitted the SQLite tests are skipped with a notice,
//! and fail under `CI=true`.

use std::{
    collections::HashSet,
    io::{BufRead, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use examwatch::auth::{Keys, Role};
use serde_json::json;

use crate::helpers::*;

/// A tmpfs of `size` mounted on a fresh folder in a mount namespace of its
/// own, for as long as this value lives.
struct Tmpfs {
    holder: Child,
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let spawned = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o "size=$1" tmpfs "$2" && echo mounted && exec sleep 3600"#)
            .args(["sh", size])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let why = match spawned {
            Ok(mut holder) => {
                let mut line = String::new();
                let out = holder.stdout.take().expect("piped stdout");
                let _ = std::io::BufReader::new(out).read_line(&mut line);
                if line.trim() == "mounted" {
                    return Some(Tmpfs { holder, dir });
                }
                let _ = holder.kill();
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(
                    &mut holder.stderr.take().expect("piped stderr"),
                    &mut err,
                );
                let _ = holder.wait();
                format!(
                    "cannot mount a tmpfs in a private namespace: {}",
                    err.trim()
                )
            }
            Err(e) => format!("cannot run unshare: {e}"),
        };
        missing(Prerequisite::Root, &why);
        None
    }

    /// The mount point, as the server (inside the namespace) sees it.
    fn inside(&self) -> &Path {
        self.dir.path()
    }

    /// A file on the tmpfs, as this test process reaches it.
    fn outside_path(&self, name: &str) -> PathBuf {
        let mut p = PathBuf::from(format!("/proc/{}/root", self.holder.id()));
        p.push(
            self.dir
                .path()
                .strip_prefix("/")
                .expect("absolute temp dir"),
        );
        p.push(name);
        p
    }

    /// `program` run inside the namespace.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &self.holder.id().to_string(), "--mount", "--"])
            .arg(program);
        cmd
    }

    /// Fills the filesystem to the last byte; returns the filler's path.
    fn fill(&self) -> PathBuf {
        let path = self.outside_path("filler");
        let mut f = std::fs::File::create(&path).expect("create the filler");
        let block = vec![0u8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // Single bytes, for whatever a large write could not take.
        while let Ok(1) = f.write(&[0]) {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The examwatch binary as `examwatch_command` configures it, inside `fs`.
fn server_in(fs: &Tmpfs, dir: &Path, env: &[(&str, &str)]) -> Command {
    let plain = examwatch_command(dir);
    let mut cmd = fs.command(plain.get_program());
    cmd.current_dir(dir).env_remove("RUST_LOG");
    for (k, v) in plain.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn keys(dir: &Path) -> Keys {
    let auth = examwatch::config::AuthSettings {
        jwt_secret: Some(examwatch::config::Secret::new(SECRET)),
        ..Default::default()
    };
    Keys::from_settings(&auth, dir).expect("keys")
}

/// Students answering as fast as acks come, each remembering what was
/// acknowledged; `error` replies are counted (a full disk may delay an ack,
/// never turn it into a false one).
struct Answering {
    acked: Arc<Mutex<HashSet<String>>>,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn start_answering(addr: &str, keys: &Keys, students: usize) -> Answering {
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..students {
        let sub = format!("s{i}");
        let token = keys
            .mint(
                &sub,
                &sub,
                Role::Student,
                vec!["e1".into()],
                Duration::from_secs(600),
            )
            .expect("token");
        let mut c = connect_url(&format!("ws://{addr}/v1/exams/e1/ws"), &token).await;
        c.next_of_type("welcome").await;
        let (acked, count, stop) = (acked.clone(), count.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let id = format!("{sub}-a{k}");
                let msg = json!({"type": "answer", "id": id, "question": format!("q{}", k % 5), "value": {"k": k, "pad": "x".repeat(200)}, "ref": id});
                if c.ws_send(msg).await.is_err() {
                    return;
                }
                // The ack may wait for the disk to come back: no deadline
                // on this one reply beyond the test's own.
                let until = tokio::time::Instant::now() + Duration::from_secs(60);
                let reply = loop {
                    use futures_util::StreamExt;
                    use tokio_tungstenite::tungstenite::Message;
                    match tokio::time::timeout_at(until, c.ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => {
                            let v: serde_json::Value =
                                serde_json::from_str(t.as_str()).expect("server sent JSON");
                            if v["type"] == "ack" || v["type"] == "error" {
                                break v;
                            }
                        }
                        Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                        Ok(Some(Ok(other))) => panic!("unexpected frame {other:?}"),
                        Ok(Some(Err(_)) | None) => return,
                        Err(_) => panic!("no reply to answer {id} within 60 s"),
                    }
                };
                assert_eq!(
                    reply,
                    json!({"type": "ack", "ref": id}),
                    "an answer is acked, never refused, because the disk was full"
                );
                acked.lock().unwrap().insert(id);
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    Answering {
        acked,
        count,
        stop,
        tasks,
    }
}

impl Answering {
    /// Waits until `n` more answers than now are acknowledged.
    async fn acks_grow_by(&self, n: usize, what: &str) {
        let target = self.count.load(Ordering::Relaxed) + n;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.count.load(Ordering::Relaxed) < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {} acks, waited for {target}",
                self.count.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> HashSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("student task ended")
                .expect("student task did not panic");
        }
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

async fn metric_at(admin: &str, name: &str) -> i64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    metric_in(&text, name).unwrap_or_else(|| panic!("metric {name} missing"))
}

/// Every answer id stored in the SQLite file at `db`.
async fn stored_answers(db: &Path) -> HashSet<String> {
    use sqlx::Row;
    let url = format!("sqlite://{}?mode=ro", db.display());
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .expect("open the copy");
    let rows = sqlx::query("SELECT answer_id FROM answers WHERE exam_id = 'e1'")
        .fetch_all(&pool)
        .await
        .expect("read answers");
    rows.iter().map(|r| r.get::<String, _>(0)).collect()
}

#[tokio::test]
async fn a_full_disk_never_loses_an_acked_answer_and_recovers_by_itself() {
    let Some(fs) = Tmpfs::mount("8m") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/exam.db", fs.inside().display());
    let env = [
        ("EXAMWATCH__DATABASE__URL", url.as_str()),
        ("EXAMWATCH__AUTH__JWT_SECRET", SECRET),
        ("EXAMWATCH__LIMITS__MESSAGES_PER_SECOND", "1000"),
    ];
    let mut server = ServerProcess::spawn(server_in(&fs, dir.path(), &env));
    let keys = keys(dir.path());
    let students = start_answering(&server.addr, &keys, 4).await;
    students
        .acks_grow_by(40, "answers are acked before the fault")
        .await;

    // The disk fills while students keep answering.
    let filler = fs.fill();
    let admin = server.admin_addr.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metric_at(&admin, "examwatch_db_failing").await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the full disk made commits fail"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready: serde_json::Value = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["database"], "failing", "{ready}");
    assert!(
        ready["reasons"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("database_writes_failing"))),
        "{ready}"
    );
    let public: serde_json::Value = reqwest::get(format!("http://{}/readyz", server.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(public, json!({"status": "degraded"}));
    // Hold the fault through several failed commits while answers keep
    // arriving (and wait).
    retries_grow_while_failing(&admin, 3).await;

    // Space comes back: the writer recovers by itself, acks flow again.
    std::fs::remove_file(&filler).expect("free the disk");
    students
        .acks_grow_by(40, "answers are acked again once space returns")
        .await;
    assert_eq!(metric_at(&admin, "examwatch_db_failing").await, 0);
    assert!(metric_at(&admin, "examwatch_db_retries_total").await >= 1);
    let acked = students.finish().await;

    // A clean stop, then the file holds every acknowledged answer.
    let pid = server.child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = server.child.wait().expect("server exits");
    assert!(status.success(), "clean exit: {status}");
    let copy = tempfile::tempdir().unwrap();
    for suffix in ["", "-wal"] {
        let from = fs.outside_path(&format!("exam.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, copy.path().join(format!("exam.db{suffix}"))).unwrap();
        }
    }
    let stored = stored_answers(&copy.path().join("exam.db")).await;
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acked answers are missing from the database: {lost:?}",
        lost.len(),
        acked.len()
    );
}

#[tokio::test]
async fn a_database_that_cannot_be_written_stops_the_server_naming_it() {
    let Some(fs) = Tmpfs::mount("8m") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/exam.db", fs.inside().display());
    let env = [
        ("EXAMWATCH__DATABASE__URL", url.as_str()),
        ("EXAMWATCH__AUTH__JWT_SECRET", SECRET),
    ];
    // A database created (and migrated) while the folder was writable …
    let migrated = server_in(&fs, dir.path(), &env)
        .arg("migrate")
        .output()
        .expect("run migrate");
    assert!(migrated.status.success(), "{migrated:?}");
    // … whose folder and file have since turned read-only.
    let remount = fs
        .command("mount")
        .args(["-o", "remount,ro"])
        .arg(fs.inside())
        .status()
        .expect("remount");
    assert!(remount.success());
    let mut child = server_in(&fs, dir.path(), &env)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run serve");
    let lines = lines_of(child.stderr.take().expect("piped stderr"));
    let deadline = std::time::Instant::now() + WAIT * 2;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the server") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log: Vec<String> = lines.try_iter().collect();
            panic!("the server kept running on a read-only database: {log:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr: Vec<String> = lines.iter().collect();
    let stderr = stderr.join("\n");
    assert!(!status.success(), "the server refused to start: {stderr}");
    assert!(
        stderr.contains(&format!("{}/exam.db", fs.inside().display())),
        "the error names the database: {stderr}"
    );
    assert!(
        !stderr.contains("listening on"),
        "it never served: {stderr}"
    );
}

/// PostgreSQL's side of the same promise: the writer's connections are
/// killed again and again while students answer (what a server restart
/// does to them, mid-commit included); every acked answer is stored.
#[tokio::test]
async fn postgres_connections_killed_mid_commit_lose_no_acked_answer() {
    use sqlx::Row;
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(Backend::Postgres, dir.path()).await else {
        return;
    };
    let (app, students) = answering_on(&url).await;
    let database = url.rsplit('/').next().expect("a database name").to_owned();
    let killer = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .expect("connect as the killer");
    let mut killed = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while killed < 5 || tokio::time::Instant::now() < until {
        assert!(
            tokio::time::Instant::now() < until + WAIT,
            "only {killed} backends terminated"
        );
        let rows = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&database)
        .fetch_all(&killer)
        .await
        .expect("terminate backends");
        killed += rows.iter().filter(|r| r.get::<bool, _>(0)).count();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    students
        .acks_grow_by(30, "answers are acked again after the kills")
        .await;
    let admin = app.admin_addr.to_string();
    assert!(
        metric_at(&admin, "examwatch_db_retries_total").await >= 1,
        "the kills hit the writer"
    );
    every_ack_stored(app, students, &url).await;
}

/// A PostgreSQL server of the test's own, its data on a tmpfs of its own
/// (so the test can fill its disk or restart it without touching the
/// machine's shared server).
struct OwnPostgres {
    fs: Tmpfs,
    bin: PathBuf,
    port: u16,
    server: Option<Child>,
}

impl OwnPostgres {
    async fn start() -> Option<OwnPostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|dirs| {
                dirs.flatten()
                    .map(|d| d.path().join("bin"))
                    .filter(|b| b.join("postgres").exists())
                    .max()
            });
        let Some(bin) = bin else {
            missing(
                Prerequisite::OwnPostgres,
                "no /usr/lib/postgresql/*/bin/postgres",
            );
            return None;
        };
        let fs = Tmpfs::mount("96m")?;
        let ok = fs
            .command("chown")
            .arg("postgres:postgres")
            .arg(fs.inside())
            .status()
            .expect("chown")
            .success();
        assert!(ok, "chown the tmpfs to postgres");
        let out = fs
            .command("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .arg("-D")
            .arg(fs.inside().join("data"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "--wal-segsize=1",
            ])
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb: {out:?}");
        let mut pg = OwnPostgres {
            fs,
            bin,
            port: 0,
            server: None,
        };
        // postgres cannot bind port 0 and report it: a free port is found
        // by binding, and a start that loses it to another process (or finds
        // another server there) is retried on a fresh one.
        let mut failures = Vec::new();
        while pg.server.is_none() {
            assert!(failures.len() < 5, "postgres did not start: {failures:?}");
            pg.port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            if let Err(e) = pg.try_launch().await {
                failures.push(e);
            }
        }
        let admin = sqlx::PgPool::connect(&pg.url("postgres"))
            .await
            .expect("connect");
        sqlx::query("CREATE DATABASE examwatch")
            .execute(&admin)
            .await
            .expect("create the database");
        admin.close().await;
        Some(pg)
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts again on its port (the server's `database.url`).
    async fn launch(&mut self) {
        if let Err(e) = self.try_launch().await {
            panic!("postgres restarts on port {}: {e}", self.port);
        }
    }

    /// Runs the postmaster on `self.port` and waits until it answers there
    /// as itself (its data directory), not some other server on that port.
    async fn try_launch(&mut self) -> Result<(), String> {
        // setpriv execs (runuser would stay in between as the parent and
        // not pass signals on): the child is the postmaster itself.
        let data = self.fs.inside().join("data");
        let mut child = self
            .fs
            .command("setpriv")
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(self.bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.fs.inside())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        let outcome = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Err(format!("postgres on port {} exited: {status}", self.port));
            }
            if let Ok(pool) = sqlx::PgPool::connect(&self.url("postgres")).await {
                let dir: Result<String, _> = sqlx::query_scalar("SHOW data_directory")
                    .fetch_one(&pool)
                    .await;
                pool.close().await;
                match dir {
                    Ok(dir) if Path::new(&dir) == data => break Ok(()),
                    other => {
                        break Err(format!("port {} is another server's: {other:?}", self.port));
                    }
                }
            }
            if tokio::time::Instant::now() > deadline {
                break Err("postgres did not start in time".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        match outcome {
            Ok(()) => self.server = Some(child),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        outcome
    }

    /// Immediate shutdown (SIGQUIT to the postmaster: no checkpoint, every
    /// backend killed, what a crash or an OOM kill does), then start again.
    async fn restart_immediately(&mut self) {
        self.stop();
        self.launch().await;
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + WAIT;
            while child.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn stored_in_postgres(url: &str) -> HashSet<String> {
    use sqlx::Row;
    let check = sqlx::PgPool::connect(url).await.expect("connect to check");
    let rows = sqlx::query("SELECT answer_id FROM answers WHERE exam_id = 'e1'")
        .fetch_all(&check)
        .await
        .expect("read answers");
    rows.iter().map(|r| r.get::<String, _>(0)).collect()
}

/// Waits until `n` more commits have failed, the database still failing.
async fn retries_grow_while_failing(admin: &str, n: i64) {
    let target = metric_at(admin, "examwatch_db_retries_total").await + n;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metric_at(admin, "examwatch_db_retries_total").await < target {
        assert!(
            tokio::time::Instant::now() < deadline,
            "commits kept failing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric_at(admin, "examwatch_db_failing").await, 1);
}

/// A server on the PostgreSQL at `url` with four students answering, 30
/// answers acked already.
async fn answering_on(url: &str) -> (TestApp, Answering) {
    let app = spawn_app_on_url(Some(url.to_owned()), |s| {
        s.limits.messages_per_second = 1000;
    })
    .await;
    let students = start_answering(&app.addr.to_string(), &app.keys, 4).await;
    students
        .acks_grow_by(30, "answers are acked before the fault")
        .await;
    (app, students)
}

/// Stops the students, waits for the writer, and checks that every answer
/// they saw acked is in the database at `url`.
async fn every_ack_stored(app: TestApp, students: Answering, url: &str) {
    let acked = students.finish().await;
    app.flushed().await;
    let stored = stored_in_postgres(url).await;
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acked answers missing: {lost:?}",
        lost.len()
    );
}

async fn wait_for_failing(admin: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metric_at(admin, "examwatch_db_failing").await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fault made commits fail"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn postgres_restarted_mid_stream_loses_no_acked_answer() {
    let Some(mut pg) = OwnPostgres::start().await else {
        return;
    };
    let url = pg.url("examwatch");
    let (app, students) = answering_on(&url).await;
    for _ in 0..3 {
        pg.restart_immediately().await;
        students
            .acks_grow_by(20, "answers are acked again after the restart")
            .await;
    }
    // (Whether a restart lands mid-commit is luck here; the test above
    // kills connections often enough to hit the writer every time.)
    every_ack_stored(app, students, &url).await;
}

#[tokio::test]
async fn postgres_with_a_full_disk_loses_no_acked_answer() {
    let Some(mut pg) = OwnPostgres::start().await else {
        return;
    };
    let url = pg.url("examwatch");
    let (app, students) = answering_on(&url).await;
    let filler = pg.fs.fill();
    let admin = app.admin_addr.to_string();
    wait_for_failing(&admin).await;
    retries_grow_while_failing(&admin, 3).await;
    std::fs::remove_file(&filler).expect("free the disk");
    // PostgreSQL panics when it cannot write its WAL; if it did not come
    // back by itself, an operator restarts it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sqlx::PgPool::connect(&url).await.is_err() {
        if tokio::time::Instant::now() > deadline {
            pg.restart_immediately().await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    students
        .acks_grow_by(30, "answers are acked again once space returns")
        .await;
    every_ack_stored(app, students, &url).await;
}
