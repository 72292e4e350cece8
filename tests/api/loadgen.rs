//! A seconds-long smoke run of the load generator against a real server,
//! so it keeps working: it must deliver everything, once. (No timing is
//! asserted; performance lives in docs/BENCHMARKS.md.)

use std::time::Duration;

use examwatch::loadgen::{Plan, run};

use crate::helpers::*;

#[tokio::test]
async fn the_load_generator_delivers_every_event_exactly_once() {
    let app = spawn_app_with(|s| s.limits.messages_per_second = 1000).await;
    let plan = Plan {
        server: app.addr,
        exams: 2,
        students: 10,
        teachers: 2,
        rate: 500.0,
        duration: Duration::from_secs(2),
        sources: vec!["127.0.0.1".parse().unwrap()],
        prefix: "smoke-".into(),
    };
    let report = run(&plan, &app.keys, |_| {})
        .await
        .expect("the run completes");
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
