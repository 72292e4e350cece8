//! What a test run leaves behind, reported or removed when the test process
//! exits. libtest has no end-of-run hook, so a C `atexit` handler (libtest
//! ends with `std::process::exit`, which runs it after the last test, passed
//! or failed) prints one line naming every group of tests that was skipped
//! and the command that enables it, and drops the PostgreSQL databases this
//! process created. A run killed before it exits (a timeout, SIGKILL) leaves
//! its databases; the next run sweeps those older than an hour (see
//! [`sweep_stale_databases`]), so they cannot pile up.

use std::{
    collections::BTreeMap,
    io::Write,
    sync::{Mutex, Once},
    time::Duration,
};

/// Something a group of tests needs that this machine may lack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Prerequisite {
    /// PostgreSQL at `TEST_DATABASE_URL` (default 127.0.0.1:5432, trust).
    Postgres,
    /// A `redis-server` binary (the cluster tests start their own).
    Redis,
    /// chromium, Node.js ≥ 20 and `npm ci` in tests/browser.
    Browser,
    /// Root, to mount the small tmpfs the filesystem-fault tests fill.
    Root,
    /// PostgreSQL's server binaries, for a PostgreSQL of the test's own.
    OwnPostgres,
    /// `prlimit`, to run a server under a small open-files limit.
    Prlimit,
}

impl Prerequisite {
    fn group(self) -> &'static str {
        match self {
            Prerequisite::Postgres => "PostgreSQL tests",
            Prerequisite::Redis => "Redis tests",
            Prerequisite::Browser => "browser tests",
            Prerequisite::Root => "filesystem-fault tests",
            Prerequisite::OwnPostgres => "own-PostgreSQL fault tests",
            Prerequisite::Prlimit => "open-files-limit tests",
        }
    }

    /// The exact command that makes this group run.
    fn enable(self) -> &'static str {
        match self {
            Prerequisite::Postgres => {
                "bash .ci/run (installs PostgreSQL, trusts 127.0.0.1, creates database `test`), or TEST_DATABASE_URL=postgres://… cargo test --locked"
            }
            Prerequisite::Redis => "apt-get install redis-server",
            Prerequisite::Browser => {
                "apt-get install chromium && (cd tests/browser && npm ci) (Node.js >= 20)"
            }
            Prerequisite::Root => "sudo -E cargo test --locked faults::",
            Prerequisite::OwnPostgres => {
                "apt-get install postgresql && sudo -E cargo test --locked faults::"
            }
            Prerequisite::Prlimit => "apt-get install util-linux",
        }
    }
}

/// Whether a missing prerequisite must fail the test (`CI=true` or `1`).
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A test that cannot run here: under CI a failure; otherwise a notice
/// now and a line in the end-of-run summary. The caller then returns.
pub fn missing(what: Prerequisite, why: &str) {
    if under_ci() {
        panic!(
            "{} are required under CI: {why} (enable: {})",
            what.group(),
            what.enable()
        );
    }
    // Not `eprintln!`, which libtest captures in a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "NOTICE: skipping one of the {}: {why}",
        what.group()
    );
    at_exit();
    *SKIPPED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(what)
        .or_default() += 1;
}

/// A database `name` this process created on the server `admin_url` (a URL
/// of another database on it, to drop from).
pub fn created_database(admin_url: &str, name: &str) {
    at_exit();
    DATABASES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((admin_url.to_owned(), name.to_owned()));
}

/// Drops the test databases older than an hour (a killed run's; no run
/// lasts that long: `.ci/run` stops the tests after 20 minutes). Younger
/// ones may belong to a run in progress next to this one. Best effort: the
/// creation time is read from the database's files, which needs a superuser
/// (the tests' `postgres`).
pub async fn sweep_stale_databases(pool: &sqlx::PgPool) {
    let stale: Vec<(String,)> = sqlx::query_as(
        "SELECT datname FROM pg_database WHERE datname LIKE 'examwatch\\_test\\_%' \
         AND (pg_stat_file('base/' || oid || '/PG_VERSION')).modification < now() - interval '1 hour'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    for (name,) in stale {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(pool)
        .await;
    }
}

static SKIPPED: Mutex<BTreeMap<Prerequisite, usize>> = Mutex::new(BTreeMap::new());
static DATABASES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
static REGISTER: Once = Once::new();

unsafe extern "C" {
    fn atexit(handler: extern "C" fn()) -> std::ffi::c_int;
}

/// Registers [`run_ended`] once per process.
fn at_exit() {
    REGISTER.call_once(|| {
        // SAFETY: `atexit` only stores the pointer to a function that lives
        // as long as the program; the handler never unwinds into C.
        unsafe {
            atexit(run_ended);
        }
    });
}

extern "C" fn run_ended() {
    // Nothing may unwind across the C boundary.
    let _ = std::panic::catch_unwind(|| {
        drop_databases();
        print_skipped();
    });
}

fn print_skipped() {
    let skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    if skipped.is_empty() {
        return;
    }
    let groups: Vec<String> = skipped
        .iter()
        .map(|(what, n)| format!("{} ({n}; enable: {})", what.group(), what.enable()))
        .collect();
    let _ = writeln!(
        std::io::stderr(),
        "\nSKIPPED {} test group(s): {}",
        skipped.len(),
        groups.join("; ")
    );
}

fn drop_databases() {
    let databases = std::mem::take(&mut *DATABASES.lock().unwrap_or_else(|e| e.into_inner()));
    if databases.is_empty() {
        return;
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            let mut by_server: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (admin, name) in databases {
                by_server.entry(admin).or_default().push(name);
            }
            for (admin, names) in by_server {
                let Ok(pool) = sqlx::PgPool::connect(&admin).await else {
                    continue;
                };
                for name in names {
                    // FORCE: a pool a test leaked may still be connected.
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&pool)
                    .await;
                }
                pool.close().await;
            }
        })
        .await;
    });
}
