//! `server.shards`: an exam's sockets and its room run on the shard thread
//! its id hashes to, whoever starts the room; another exam's on its own
//! shard; with shards off everything still works on the main runtime; and
//! a server that stops ends its shard threads.
//!
//! Where a socket or room runs is read from the thread it runs on: the
//! `examwatch_shard_*{shard}` gauges are moved by the task itself, from
//! its thread's shard, not from the accept loop's choice.

use examwatch::shard::shard_of;

use crate::helpers::*;

/// The first two exam ids that hash to shard 0 and shard 1 of two.
fn one_exam_per_shard() -> [String; 2] {
    let id = |want| {
        (0..)
            .map(|i| format!("exam-{i}"))
            .find(|e| shard_of(e, 2) == want)
            .expect("some id hashes there")
    };
    [id(0), id(1)]
}

fn on_shard(app: &TestApp, family: &str, shard: usize) -> i64 {
    app.metric_where(family, &[("shard", &shard.to_string())])
}

/// `(connections, rooms)` on each of two shards, once the short HTTP
/// connections of the set-up (creating the exams) are closed.
async fn spread_becomes(app: &TestApp, want: [(i64, i64); 2]) {
    let now = || {
        [0, 1].map(|i| {
            (
                on_shard(app, "examwatch_shard_connections", i),
                on_shard(app, "examwatch_shard_rooms", i),
            )
        })
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = now();
        if seen == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "(connections, rooms) per shard: {seen:?}, not {want:?}\n{}",
            app.metrics_text()
                .lines()
                .filter(|l| l.contains("shard"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_exams_sockets_and_room_share_its_shard_and_another_exam_uses_the_other() {
    let app = spawn_app_with(|s| s.server.shards = examwatch::config::ShardCount::Count(2)).await;
    assert_eq!(app.state.shards.len(), 2);
    let [a, b] = one_exam_per_shard();

    let (mut teacher, _) = app.teacher(&a, "t1").await;
    let (mut student, _) = app.student(&a, "s1").await;
    spread_becomes(&app, [(2, 1), (0, 0)]).await;
    student.send_json(progress(1, 1)).await;
    teacher
        .next_where("s1's progress", |v| {
            v["type"] == "student"
                && v["student"]["student_id"] == "s1"
                && v["student"]["answered"] == 1
        })
        .await;

    let (mut other, _) = app.student(&b, "s2").await;
    spread_becomes(&app, [(2, 1), (1, 1)]).await;
    let mut p = progress(1, 0);
    p["ref"] = serde_json::json!("p");
    other.send_json(p).await;
    other.expect_ack("p").await;

    // A room started off the sockets' path (REST, the broker, the
    // scheduler all call the registry) still starts on its exam's shard.
    let c = (2..)
        .map(|i| format!("exam-{i}"))
        .find(|e| e != &a && shard_of(e, 2) == 0)
        .expect("a third id on shard 0");
    app.state.registry.get_or_start(&c);
    spread_becomes(&app, [(2, 2), (1, 1)]).await;

    drop(student);
    spread_becomes(&app, [(1, 2), (1, 1)]).await;
}

#[tokio::test]
async fn with_shards_off_nothing_runs_on_a_shard_and_everything_works() {
    let app = spawn_app_with(|s| s.server.shards = examwatch::config::ShardCount::Count(0)).await;
    assert!(app.state.shards.is_empty());
    let (mut teacher, _) = app.teacher("e1", "t1").await;
    let (mut student, _) = app.student("e1", "s1").await;
    student.send_json(progress(1, 1)).await;
    teacher
        .next_where("s1's progress", |v| {
            v["type"] == "student"
                && v["student"]["student_id"] == "s1"
                && v["student"]["answered"] == 1
        })
        .await;
    assert_eq!(app.metric("examwatch_rooms"), 1);
    assert!(
        !app.metrics_text().contains("examwatch_shard_connections{"),
        "no shard series without shards"
    );
}

#[tokio::test]
async fn a_stopped_server_ends_its_shard_threads() {
    let app = spawn_app_with(|s| s.server.shards = examwatch::config::ShardCount::Count(2)).await;
    let [a, b] = one_exam_per_shard();
    let (_s1, _) = app.student(&a, "s1").await;
    let (_s2, _) = app.student(&b, "s2").await;
    let shards = app.state.shards.clone();
    for i in 0..2 {
        let ran = shards.handle(i).expect("a shard").spawn(async {}).await;
        assert!(ran.is_ok(), "shard {i} runs tasks while the server runs");
    }
    app.shutdown().await.expect("a clean shutdown");
    for i in 0..2 {
        let ran = shards.handle(i).expect("a shard").spawn(async {}).await;
        assert!(
            ran.is_err_and(|e| e.is_cancelled()),
            "shard {i}'s runtime is gone once the server stopped"
        );
    }
}
