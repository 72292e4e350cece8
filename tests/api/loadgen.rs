//! A seconds-long smoke run of the load generator against a real server,
//! so it keeps working: it must deliver everything, once. (No timing is
//! asserted; performance lives in docs/BENCHMARKS.md.)

use std::time::Duration;

use examwatch::loadgen::{Plan, Report, run};

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

#[tokio::test]
async fn a_teacher_who_never_reads_does_not_cost_the_others_an_event() {
    let report = run_on_fresh_app(|addr| Plan {
        exams: 1,
        students: 10,
        teachers: 2,
        rate: 1000.0,
        duration: Duration::from_secs(2),
        prefix: "slow-".into(),
        slow_teachers: 1,
        ..Plan::new(addr)
    })
    .await;
    assert_eq!(report.connections, 13);
    assert_eq!(report.delivered, report.expected);
    assert_eq!((report.lost, report.duplicated), (0, 0));
}
