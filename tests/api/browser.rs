//! Browser tests: the dashboard, the client library and the student demo
//! page in Debian's chromium, driven by playwright-core from
//! `tests/browser/` (its own package.json and lock file; never a
//! downloaded browser). Each scenario is a node script that starts its own
//! `examwatch` process (it kills and restarts it, so in-process servers
//! will not do) and exits non-zero on the first failed check; this module
//! runs them, one at a time, and checks the database afterwards.
//!
//! `client.mjs` checks the client library's rules in node alone, against a
//! scripted fake socket; `alerts.mjs` the dashboard's alerts list, against
//! a minimal fake DOM; `clock.mjs` the dashboard's time-left arithmetic.
//! `history.mjs` checks a dashboard opened mid-exam; `clean.mjs` a page
//! load without console errors and bidi-isolated names; `controls.mjs`,
//! `proctor.mjs` and `cluster.mjs` the exam's controls (issue 15), the
//! last with two instances and a redis-server started here, as has
//! `drain.mjs` (a rolling restart through a failover forwarder);
//! `fallback.mjs` puts a proxy that refuses WebSocket upgrades in front of
//! the students (the library's HTTP fallback and its way back).
//!
//! Checks promised "within a second" wait up to `BROWSER_SLACK` (default
//! 3) times their promise before failing, and log `SLOW` when they took
//! longer than promised (tests/browser/lib.mjs).
//!
//! Without chromium, node or `npm ci` in tests/browser they are skipped
//! with a visible notice, except under `CI=true`, where that is a failure
//! (`.ci/run` installs all three).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use sqlx::Row;

use crate::helpers::{Prerequisite, missing};

/// Chromium is heavy: one browser scenario at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Where screenshots land (target/tmp/browser-artifacts). Emptied once per
/// run, before the first scenario, so what is there after a run is that
/// run's, never a stale screenshot of an earlier one.
fn artifact_dir() -> PathBuf {
    static CLEARED: std::sync::Once = std::sync::Once::new();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts");
    CLEARED.call_once(|| match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot clear {}: {e}", dir.display()),
    });
    dir
}

/// `Err(reason)` when something the tests need is missing: node, and for
/// the browser scenarios chromium and `npm ci` in tests/browser.
fn prerequisites(browser: bool) -> Result<(), String> {
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("node not found".into());
    }
    if !browser {
        return Ok(());
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Err(format!("{chromium} not found (apt-get install chromium)"));
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Err("tests/browser/node_modules missing (npm ci in tests/browser)".into());
    }
    Ok(())
}

/// Whether to run; a visible notice when not, a failure under CI.
fn ready(browser: bool) -> bool {
    match prerequisites(browser) {
        Ok(()) => true,
        Err(why) => {
            // A failure under CI; a notice and an end-of-run line otherwise.
            missing(Prerequisite::Browser, &why);
            false
        }
    }
}

/// Runs a scenario in a fresh folder (kept for checks on its database),
/// one at a time; `None` when the browser tests are skipped.
async fn scenario(script: &str) -> Option<(tempfile::TempDir, String)> {
    if !ready(true) {
        return None;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let stdout = run_scenario(script, dir.path()).await;
    Some((dir, stdout))
}

/// Runs `tests/browser/{script}` with its own temp folder; returns stdout.
/// Panics with the script's output if it fails or hangs.
async fn run_scenario(script: &str, dir: &Path) -> String {
    run_scenario_with(script, dir, &[]).await
}

/// `run_scenario` with extra environment variables for the script.
async fn run_scenario_with(script: &str, dir: &Path, env: &[(&str, &str)]) -> String {
    let mut node = tokio::process::Command::new("node");
    node.envs(env.iter().copied());
    // The servers the scenario starts get none of this process's settings.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EXAMWATCH__") {
            node.env_remove(key);
        }
    }
    let child = node
        .arg(browser_dir().join(script))
        .current_dir(browser_dir())
        .env("EXAMWATCH_BIN", env!("CARGO_BIN_EXE_examwatch"))
        .env("TEST_DIR", dir)
        .env("ARTIFACT_DIR", artifact_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let out = tokio::time::timeout(SCENARIO_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} took longer than {SCENARIO_TIMEOUT:?}"))
        .expect("node ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown with --nocapture, and on failure.
    println!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// The JSON after `prefix` on a line of the script's output.
fn line_json(stdout: &str, prefix: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{stdout}"));
    serde_json::from_str(line).expect("the line holds JSON")
}

/// The client library's rules against a scripted fake socket (node only).
#[tokio::test]
async fn client_library_backs_off_resumes_and_keeps_its_outbox() {
    if !ready(false) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let stdout = run_scenario("client.mjs", dir.path()).await;
    assert!(stdout.contains("client library: ok"), "{stdout}");
}

/// The dashboard's alerts list under one student's flood (node only).
#[tokio::test]
async fn dashboard_alerts_keep_one_line_per_student_and_kind() {
    if !ready(false) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let stdout = run_scenario("alerts.mjs", dir.path()).await;
    assert!(stdout.contains("alerts list: ok"), "{stdout}");
}

/// The dashboard's time-left arithmetic: server time, exam pauses after a
/// state, a student's own pause (node only).
#[tokio::test]
async fn dashboard_time_left_counts_the_exams_pauses() {
    if !ready(false) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let stdout = run_scenario("clock.mjs", dir.path()).await;
    assert!(stdout.contains("time left: ok"), "{stdout}");
}

#[tokio::test]
async fn dashboard_shows_students_joining_changes_and_announcements_live() {
    let Some(_) = scenario("live.mjs").await else {
        return;
    };
    let shot = artifact_dir().join("dashboard-30.png");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot of 30 students at {shot:?}");
}

#[tokio::test]
async fn after_a_kill_the_dashboard_recovers_and_the_page_delivers_its_answers_once() {
    let Some((dir, stdout)) = scenario("restart.mjs").await else {
        return;
    };
    let result = line_json(&stdout, "RESULT ");
    let url = format!("sqlite://{}/examwatch.db", dir.path().display());
    let db = sqlx::SqlitePool::connect(&url)
        .await
        .expect("open the database");
    // s1 closed its tab while the server was down and came back with a new
    // page; s2 kept its page open and reconnected by itself.
    for (student, key) in [("s1", "unacked"), ("s2", "stayed_open")] {
        let unacked: Vec<String> = result[key]
            .as_array()
            .expect("unacked ids")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        assert_eq!(unacked.len(), 2, "{student}: {unacked:?}");
        delivered_once(&db, student, &unacked).await;
    }
}

/// The student's answers q1, q2, q3 are stored once each, the `unacked` ones
/// (re-sent after the restart) too, and teachers were told of each newly
/// answered question once.
async fn delivered_once(db: &sqlx::SqlitePool, student: &str, unacked: &[String]) {
    let rows = sqlx::query(
        "SELECT answer_id, question FROM answers WHERE exam_id = 'e1' AND student_id = ?",
    )
    .bind(student)
    .fetch_all(db)
    .await
    .expect("read answers");
    let stored: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.get("answer_id"), r.get("question")))
        .collect();
    let questions: Vec<&str> = {
        let mut q: Vec<&str> = stored.iter().map(|(_, q)| q.as_str()).collect();
        q.sort_unstable();
        q
    };
    assert_eq!(
        questions,
        ["q1", "q2", "q3"],
        "{student}: one stored answer per click: {stored:?}"
    );
    for id in unacked {
        let n = stored.iter().filter(|(a, _)| a == id).count();
        assert_eq!(
            n, 1,
            "{student}: unacked answer {id} stored exactly once: {stored:?}"
        );
    }
    // `answered` events counting 2, then 3: re-sending did not count an
    // answer twice. (The event for q1 may be lost with the kill: events are
    // written after delivery, PROTOCOL.md 4.10.)
    let events = sqlx::query(
        "SELECT payload FROM events WHERE exam_id = 'e1' AND student_id = ? ORDER BY seq",
    )
    .bind(student)
    .fetch_all(db)
    .await
    .expect("read events");
    let counts: Vec<u64> = events
        .iter()
        .filter_map(|r| serde_json::from_str::<serde_json::Value>(r.get("payload")).ok())
        .filter(|e| e["cause"] == "answered")
        .filter_map(|e| e["student"]["answered"].as_u64())
        .filter(|&n| n > 1)
        .collect();
    assert_eq!(
        counts,
        [2, 3],
        "{student}: `answered` events after the restart"
    );
}

#[tokio::test]
async fn dashboard_stays_smooth_with_300_students() {
    let Some((_, stdout)) = scenario("perf.mjs").await else {
        return;
    };
    let perf = line_json(&stdout, "PERF ");
    assert_eq!(perf["students"], 300, "{perf}");
    assert!(perf["row_updates"].as_u64().unwrap_or(0) >= 3000, "{perf}");
}

/// A 20,000-student exam's snapshot (about 10 MB, in parts) on the
/// dashboard: every row and the whole exam's counts, live.
#[tokio::test]
async fn dashboard_shows_a_20000_student_exam() {
    if !ready(true) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // The scenario's server uses `examwatch.db` in its folder: seed it first.
    let url = format!("sqlite://{}/examwatch.db", dir.path().display());
    let app = crate::helpers::spawn_app_on_url(Some(url), |_| {}).await;
    crate::snapshots::seed_students(&app, "big", 20_000).await;
    app.stop().await;
    let stdout = run_scenario("large.mjs", dir.path()).await;
    let large = line_json(&stdout, "LARGE ");
    assert_eq!(large["rows"], 20_000, "{large}");
}

/// A dashboard opened after the student acted shows the earlier alerts and
/// timeline entries, each once, merged by seq with what came live while the
/// REST timeline was loading (issue 13 item 9).
#[tokio::test]
async fn a_dashboard_opened_mid_exam_shows_the_earlier_alerts_and_timeline_once() {
    let Some((_, stdout)) = scenario("history.mjs").await else {
        return;
    };
    assert!(stdout.contains("history: ok"), "{stdout}");
}

/// No console error, no answer >= 400 on load (the icon is served), and
/// strings with U+202E are isolated (issue 13 item 11).
#[tokio::test]
async fn a_page_load_is_clean_and_user_strings_are_bidi_isolated() {
    let Some((_, stdout)) = scenario("clean.mjs").await else {
        return;
    };
    assert!(stdout.contains("clean page: ok"), "{stdout}");
}

/// The raised hands, alerts and record panels against a real server, with
/// a proctor's token and students on node WebSockets (issue 15 items 3-5):
/// hands oldest first and counted in the title (after a reload too), a
/// private reply typed with the keyboard reaches the student and lowers the
/// hand, dismiss lowers; a refused resolve (403) is said; an alert resolved
/// with a note moves to "resolved"; reports about a student and the room;
/// one line for a network incident; the record by click and by keyboard,
/// with sessions, alerts, actions and a paged timeline; Escape and focus.
#[tokio::test]
async fn dashboard_panels_answer_hands_resolve_alerts_and_show_a_record() {
    let Some((_, stdout)) = scenario("panels.mjs").await else {
        return;
    };
    assert!(stdout.contains("panels: ok"), "{stdout}");
}

/// The README's screenshot: the demo's exam in progress with a raised hand
/// and open alerts (`dashboard.png`, copied into docs/img by hand).
#[tokio::test]
async fn the_readme_screenshot_shows_a_raised_hand_and_open_alerts() {
    let Some(_) = scenario("screenshot.mjs").await else {
        return;
    };
    let shot = artifact_dir().join("dashboard.png");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot of the demo exam at {shot:?}");
}

/// What a student sees on the demo page, against a real server driven by
/// REST as a teacher would (issue 15 item 7): the waiting room, a countdown
/// from the server's clock (the browser's is an hour off), a private
/// message shown and acknowledged (`delivered`), pause (disabled inputs, a
/// countdown that stands still), resume, extend, a raised hand in the
/// timeline and its reply, the French switch, the terminated screen with
/// no reconnect (also after a reload), the access-removed screen, and
/// "time is up" for a short exam.
#[tokio::test]
async fn the_student_page_shows_the_waiting_room_countdown_messages_pauses_and_end_screens() {
    let Some((_, stdout)) = scenario("student.mjs").await else {
        return;
    };
    assert!(stdout.contains("student page: ok"), "{stdout}");
}

/// The dashboard runs the exam as a teacher (issue 15 items 1, 2, 8, 9):
/// phase buttons with the end's confirmation, the countdown by the
/// server's clock (the browser's is two hours off), the waiting room,
/// report.csv, every row action by menu (keyboard only for one) with its
/// effect and its delivery going pending → delivered, bulk actions on a
/// shift-click range and on "select all filtered", a failed action's
/// reason, and the language switch to French and back.
#[tokio::test]
async fn the_dashboard_runs_the_exam_header_rows_bulk_and_languages() {
    let Some((_, stdout)) = scenario("controls.mjs").await else {
        return;
    };
    assert!(stdout.contains("controls: ok"), "{stdout}");
}

/// A proctor sees no control a proctor may not use, and a refused (403)
/// action is reported (issue 15 item 6).
#[tokio::test]
async fn a_proctor_sees_only_their_controls_and_a_refusal_is_reported() {
    let Some((_, stdout)) = scenario("proctor.mjs").await else {
        return;
    };
    assert!(stdout.contains("proctor: ok"), "{stdout}");
}

/// The dashboard on one instance, the students on another, through Redis
/// (issue 15 item 10): phase, extend, message, pause, hand and a bulk
/// extend cross, and the deliveries come back.
#[tokio::test]
async fn the_dashboard_on_one_instance_runs_students_on_another() {
    if !ready(true) {
        return;
    }
    let Some(redis) = crate::cluster::Redis::start() else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = redis.url();
    let stdout = run_scenario_with("cluster.mjs", dir.path(), &[("REDIS_URL", &url)]).await;
    assert!(stdout.contains("cluster: ok"), "{stdout}");
}

/// A rolling restart with two instances, Redis and the client library
/// (issue 16 item 4): the clients of the stopped instance get 1012 spread
/// over the drain window, resume on the other one through a failover
/// forwarder, and nothing is lost (every answer reaches both teachers,
/// no alert); here, each answer is in the database once.
#[tokio::test]
async fn a_rolling_restart_moves_every_client_to_the_other_instance_losing_nothing() {
    if !ready(true) {
        return;
    }
    let Some(redis) = crate::cluster::Redis::start() else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = redis.url();
    let stdout = run_scenario_with("drain.mjs", dir.path(), &[("REDIS_URL", &url)]).await;
    let result = line_json(&stdout, "RESULT ");
    let db_url = format!("sqlite://{}/examwatch.db", dir.path().display());
    let db = sqlx::SqlitePool::connect(&db_url)
        .await
        .expect("open the database");
    let answers = result["answers"].as_u64().expect("answers") as usize;
    for student in result["students"].as_array().expect("students") {
        let student = student.as_str().expect("a student id");
        let rows = sqlx::query(
            "SELECT question FROM answers WHERE exam_id = 'e1' AND student_id = ? ORDER BY question",
        )
        .bind(student)
        .fetch_all(&db)
        .await
        .expect("read answers");
        let questions: Vec<String> = rows.iter().map(|r| r.get("question")).collect();
        let want: Vec<String> = (1..=answers).map(|n| format!("q{n}")).collect();
        assert_eq!(questions, want, "{student}: each answer stored once");
    }
}

/// The client library falls back to HTTP by itself (issue 18 item 2): the
/// students' page is behind a proxy that refuses WebSocket upgrades; the
/// library sits the exam over SSE + POST (a teacher on the server sees it
/// all), then returns to the socket once upgrades get through, losing
/// nothing. Here: each answer and each submission is in the database
/// once, under the ids the page got, and each `answered` count was
/// reached once (a re-sent answer counted twice would repeat one).
#[tokio::test]
async fn the_client_library_falls_back_to_http_and_returns_to_the_socket_losing_nothing() {
    let Some((dir, stdout)) = scenario("fallback.mjs").await else {
        return;
    };
    let result = line_json(&stdout, "RESULT ");
    let url = format!("sqlite://{}/examwatch.db", dir.path().display());
    let db = sqlx::SqlitePool::connect(&url)
        .await
        .expect("open the database");
    let answers = result["answers"].as_object().expect("answers by student");
    for (student, ids) in answers {
        let ids = ids.as_object().expect("answer ids by question");
        let rows = sqlx::query(
            "SELECT answer_id, question FROM answers WHERE exam_id = 'e1' AND student_id = ? ORDER BY question",
        )
        .bind(student)
        .fetch_all(&db)
        .await
        .expect("read answers");
        let stored: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r.get("question"), r.get("answer_id")))
            .collect();
        let mut want: Vec<(String, String)> = ids
            .iter()
            .map(|(q, id)| (q.clone(), id.as_str().expect("an id").to_owned()))
            .collect();
        want.sort();
        assert_eq!(stored, want, "{student}: each answer stored once");
        let submissions: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM submissions WHERE exam_id = 'e1' AND student_id = ?",
        )
        .bind(student)
        .fetch_one(&db)
        .await
        .expect("read submissions");
        assert_eq!(submissions, 1, "{student}: submitted once");
        let events = sqlx::query(
            "SELECT payload FROM events WHERE exam_id = 'e1' AND student_id = ? ORDER BY seq",
        )
        .bind(student)
        .fetch_all(&db)
        .await
        .expect("read events");
        let counts: Vec<u64> = events
            .iter()
            .filter_map(|r| serde_json::from_str::<serde_json::Value>(r.get("payload")).ok())
            .filter(|e| e["cause"] == "answered")
            .filter_map(|e| e["student"]["answered"].as_u64())
            .collect();
        let expected: Vec<u64> = (1..=want.len() as u64).collect();
        assert_eq!(counts, expected, "{student}: `answered` events, each once");
    }
}
