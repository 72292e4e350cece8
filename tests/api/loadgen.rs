//! A seconds-long smoke run of the load generator against a real server,
//! so it keeps working: it must deliver everything, once. The generator is
//! its own crate (bench/loadgen), a dev-dependency here. (No timing is
//! asserted; performance lives in docs/BENCHMARKS.md.)

use std::time::Duration;

use examwatch_loadgen::{Plan, Report, run};

use crate::helpers::*;

/// Runs `plan` (given the server's address) against a fresh server that
/// lets each connection send fast enough for the generator.
async fn run_on_fresh_app(plan: impl FnOnce(std::net::SocketAddr) -> Plan) -> Report {
    let app = spawn_app_with(|s| s.limits.messages_per_second = 1000).await;
    run(&plan(app.addr), &app.keys, |_| {})
        .await
        .expect("the run completes")
}

#[tokio::test]
async fn the_load_generator_delivers_every_event_exactly_once() {
    let report = run_on_fresh_app(|addr| Plan {
        exams: 2,
        students: 10,
        teachers: 2,
        rate: 500.0,
        duration: Duration::from_secs(2),
        prefix: "smoke-".into(),
        ..Plan::new(addr)
    })
    .await;
    assert_eq!(report.connections, 24);
    assert_eq!(report.sent, 1000);
    assert_eq!(
        report.expected, 2000,
        "each event goes to its exam's 2 teachers"
    );
    assert_eq!(report.delivered, report.expected);
    assert_eq!((report.lost, report.duplicated), (0, 0));
    assert!(report.latency_us.max >= report.latency_us.p50);
}

#[tokio::test]
async fn a_reconnect_storm_loses_nothing_and_everyone_comes_back() {
    let report = run_on_fresh_app(|addr| Plan {
        exams: 2,
        students: 8,
        teachers: 1,
        rate: 300.0,
        duration: Duration::from_secs(2),
        prefix: "storm-".into(),
        storm_after: Some(Duration::from_millis(800)),
        ..Plan::new(addr)
    })
    .await;
    let storm = report.storm.expect("the storm happened");
    assert_eq!(storm.clients, 18, "16 students and 2 teachers dropped");
    assert_eq!(storm.back, 18, "every client came back");
    assert_eq!(storm.snapshots, 0, "teachers resumed with a replay");
    assert_eq!(report.connect_errors, 0);
    assert_eq!(report.sent, 600);
    assert_eq!(report.delivered, report.expected);
    assert_eq!((report.lost, report.duplicated), (0, 0));
}

/// The slow teacher is made slow for real: its queue (`ws.teacher_queue`)
/// holds 256 frames, and it connects with small TCP buffers and segments
/// (see `Target::small_receive_buffer`), so 2,000 events of ~350 bytes are
/// far more than its queue and socket buffers hold. (Without them, loopback
/// buffers absorbed all 4,000 events of a test run and the queue never
/// filled.) The server must close it with 4008, and only it: the reading
/// teacher loses nothing.
#[tokio::test]
async fn a_teacher_who_never_reads_does_not_cost_the_others_an_event() {
    use sqlx::Row;
    let app = spawn_app_with(|s| {
        s.limits.messages_per_second = 1000;
        s.ws.teacher_queue = 256;
        // The queue must hold a full replay (config validation).
        s.exam.history_size = 128;
    })
    .await;
    let plan = Plan {
        exams: 1,
        students: 10,
        teachers: 1,
        rate: 1000.0,
        duration: Duration::from_secs(2),
        prefix: "slow-".into(),
        slow_teachers: 1,
        ..Plan::new(app.addr)
    };
    let report = run(&plan, &app.keys, |_| {})
        .await
        .expect("the run completes");
    assert_eq!(report.connections, 12);
    assert_eq!(report.sent, 2000);
    assert_eq!(report.expected, 2000, "the reading teacher's share");
    assert_eq!(report.delivered, report.expected);
    assert_eq!((report.lost, report.duplicated), (0, 0));
    // Exactly one connection was too slow, and it was the slow teacher's.
    assert_eq!(app.metric("examwatch_slow_consumer_closes_total"), 1);
    app.flushed().await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&app.db_url)
        .await
        .expect("connect to the test database");
    let mut closes = Vec::new();
    for _ in 0..100 {
        closes = sqlx::query(
            "SELECT user_id, close_code FROM sessions WHERE role = 'teacher' ORDER BY user_id",
        )
        .fetch_all(&pool)
        .await
        .expect("read the sessions")
        .iter()
        .map(|r| {
            let user: String = r.try_get(0).expect("user_id");
            let code: Option<i64> = r.try_get(1).expect("close_code");
            (user, code)
        })
        .collect::<Vec<_>>();
        if closes.iter().any(|(_, code)| code.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        closes.contains(&("slow0-0".to_string(), Some(4008))),
        "the slow teacher was closed with 4008: {closes:?}"
    );
    assert!(
        closes
            .iter()
            .all(|(user, code)| user == "slow0-0" || *code != Some(4008)),
        "no other teacher was: {closes:?}"
    );
}

/// Three instances on one Redis and one database, students round-robin
/// over all three (student `s` of exam `g` on instance `(g + s) % 3`) and
/// each exam's teacher on instance `g % 3`: the second instance holds 9
/// students and exam 1's teacher. Mid-run it stops gracefully (1012 over
/// its drain window): those 10 clients move to the next instance of their
/// list and resume there (students with `previous_session`, re-sending
/// what was not acked; the teacher with `last_seq`), and every teacher
/// still gets every event exactly once.
#[tokio::test]
async fn clients_of_a_draining_instance_move_to_another_losing_nothing() {
    let Some(redis) = crate::cluster::Redis::start() else {
        return;
    };
    let mut apps = crate::cluster::cluster(&redis, 3, |s| {
        s.limits.messages_per_second = 1000;
        s.server.drain_window = Duration::from_millis(500);
    })
    .await;
    let plan = Plan {
        servers: apps.iter().map(|a| a.addr).collect(),
        exams: 3,
        students: 9,
        teachers: 1,
        rate: 300.0,
        duration: Duration::from_secs(3),
        prefix: "move-".into(),
        acked: true,
        ..Plan::new(apps[0].addr)
    };
    let connected = examwatch_loadgen::connect(&plan, &apps[0].keys)
        .await
        .expect("every client connects");
    assert_eq!(connected.connections(), 30);
    // Once the generator reports that it is sending, instance 1 stops.
    let (sending, mut started) = tokio::sync::mpsc::unbounded_channel();
    let run = connected.send(move |line| {
        if line.starts_with("sent") {
            let _ = sending.send(());
        }
    });
    let restart = async {
        started.recv().await;
        apps[1].begin_shutdown();
    };
    let (report, ()) = tokio::join!(run, restart);
    let report = report.expect("the run completes");
    let moved = report.moved.clone().expect("instance 1's clients moved");
    assert_eq!(moved.clients, 10, "9 students and 1 teacher were on it");
    assert_eq!(moved.back, 10, "all of them came back elsewhere");
    assert_eq!(report.connect_errors, 0);
    assert_eq!(report.sent, 900);
    assert_eq!(report.expected, 900);
    assert_eq!(report.delivered, report.expected, "{}", report.summary());
    assert_eq!((report.lost, report.duplicated), (0, 0));
}
