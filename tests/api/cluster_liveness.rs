//! Cluster presence follows instance liveness, and a reconnect storm stays
//! off the database (issue 13 items 2 and 3).

use std::time::Duration;

use examwatch::auth::Role;
use serde_json::json;
use tokio::time::Instant;

use crate::{
    cluster::{Processes, Redis, cluster, join_cluster, token_e1, ws_e1},
    helpers::*,
};

/// kill -9 of an instance: its students are shown `disconnected` once its
/// liveness key expires (plus the grace), not once their 30 s lease does.
#[tokio::test]
async fn a_killed_instances_students_are_disconnected_within_heartbeat_ttl_and_grace() {
    let Some(redis) = Redis::start() else { return };
    // The lease would keep the student "connected" for 30 s.
    let p = Processes::start(&redis, "30s", "1s", "300ms");
    let (mut a, b) = (p.a, p.b);
    let token = |sub: &str, role| token_e1(&p.keys, sub, role);
    let ws = |addr: &str| ws_e1(addr);
    let mut t = connect_url(&ws(&b.addr), &token("t1", Role::Teacher)).await;
    t.next_of_type("snapshot").await;
    let mut s = connect_url(&ws(&a.addr), &token("s1", Role::Student)).await;
    s.next_of_type("welcome").await;
    assert_eq!(t.next_of_type("student").await["cause"], "connected");

    a.kill9();
    let killed = Instant::now();
    drop(s);
    // heartbeat_ttl (1 s) + a check every ttl/3 + grace (0.3 s) + slack:
    // well before the 30 s lease could run out.
    let ev = t
        .next_of_type_within("student", killed + Duration::from_secs(5))
        .await;
    assert_eq!(ev["cause"], "disconnected", "{ev}");
    assert_eq!(ev["student"]["student_id"], "s1");
    assert_eq!(ev["student"]["connected"], false);
}

/// Students of a live room reconnecting on another instance: their answers
/// come from Redis, not one database query each, and still count.
#[tokio::test]
async fn a_reconnect_storm_reads_no_answers_from_the_database() {
    let Some(redis) = Redis::start() else { return };
    let apps = cluster(&redis, 2, |_| {}).await;
    let (t, _) = apps[1].teacher("e1", "t1").await;
    let students = ["s1", "s2", "s3", "s4"];
    let mut sessions = Vec::new();
    for (i, sid) in students.iter().enumerate() {
        let (mut s, welcome) = apps[0].student("e1", sid).await;
        for q in 0..=i {
            let r = q as u64 + 1;
            s.send_json(json!({"type": "answer", "id": format!("a{q}"), "question": format!("q{q}"), "value": q, "ref": r}))
                .await;
            s.expect_ack(r).await;
        }
        sessions.push((s, welcome["session_id"].as_str().unwrap().to_owned()));
    }
    let before = apps[1].state.store.answered_reads();
    let mut moved = Vec::new();
    for (sid, (s, session)) in students.iter().zip(sessions) {
        s.close().await;
        let url = format!("{}?previous_session={session}", apps[1].ws_url("e1"));
        let token = apps[1].token(sid, Role::Student, &["e1"]);
        let mut c = apps[1].try_connect(&url, Some(&token), &[]).await.unwrap();
        moved.push((sid, c.next_of_type("welcome").await));
        drop(c);
    }
    for (i, (sid, welcome)) in moved.iter().enumerate() {
        assert_eq!(
            welcome["student"]["answered"],
            i as u64 + 1,
            "{sid}: {welcome}"
        );
    }
    assert_eq!(
        apps[1].state.store.answered_reads(),
        before,
        "no answered_questions query for students of a live room"
    );
    t.close().await;
}

/// Redis lost a student's answered set (a restart without persistence):
/// the join on another instance notices the set is smaller than the count
/// it knows and reads the database once, so the next answer counts on from
/// the truth instead of starting again at 1.
#[tokio::test]
async fn an_answered_set_lost_by_redis_is_read_again_from_the_database() {
    let Some(redis) = Redis::start() else { return };
    let apps = cluster(&redis, 2, |_| {}).await;
    let (mut t, _) = apps[1].teacher("e1", "t1").await;
    let (mut s, welcome) = apps[0].student("e1", "s1").await;
    for q in 1..=3 {
        s.send_json(json!({"type": "answer", "id": format!("a{q}"), "question": format!("q{q}"), "value": q, "ref": q}))
            .await;
        s.expect_ack(q).await;
    }
    t.next_where("the third answer", |v| v["student"]["answered"] == 3)
        .await;
    s.close().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let removed: i64 = redis::cmd("DEL")
        .arg("examwatch:{e1}:answered:s1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(removed, 1, "the answered set was in Redis");

    let url = format!(
        "{}?previous_session={}",
        apps[1].ws_url("e1"),
        welcome["session_id"].as_str().unwrap()
    );
    let token = apps[1].token("s1", Role::Student, &["e1"]);
    let mut moved = apps[1].try_connect(&url, Some(&token), &[]).await.unwrap();
    assert_eq!(
        moved.next_of_type("welcome").await["student"]["answered"],
        3
    );
    moved
        .send_json(json!({"type": "answer", "id": "a4", "question": "q4", "value": 4, "ref": 4}))
        .await;
    moved.expect_ack(4).await;
    let ev = t
        .next_where("the fourth answer", |v| v["cause"] == "answered")
        .await;
    assert_eq!(ev["student"]["answered"], 4, "{ev}");
}

/// Redis restarted and lost everything: students moving to another
/// instance still get their answered questions right (their welcome's
/// count, and a new answer counting on from it), and the instance reads
/// them from the database in one exam-wide query, not one per student.
#[tokio::test]
async fn after_a_redis_restart_moving_students_share_one_answers_read() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let apps = cluster(&redis, 2, |_| {}).await;
    // A teacher on the second instance: its room mirrors the students.
    let (mut t, _) = apps[1].teacher("e1", "t1").await;
    let students = ["s1", "s2", "s3", "s4"];
    let mut sessions = Vec::new();
    for (i, sid) in students.iter().enumerate() {
        let (mut s, welcome) = apps[0].student("e1", sid).await;
        for q in 0..=i {
            let r = q as u64 + 1;
            s.send_json(json!({"type": "answer", "id": format!("a{q}"), "question": format!("q{q}"), "value": q, "ref": r}))
                .await;
            s.expect_ack(r).await;
        }
        sessions.push((s, welcome["session_id"].as_str().unwrap().to_owned()));
    }
    t.next_where("s4's fourth answer", |v| {
        v["student"]["student_id"] == "s4" && v["student"]["answered"] == 4
    })
    .await;
    redis.stop();
    eventually("the instances notice", || {
        apps.iter().all(|a| !a.state.broker.healthy())
    })
    .await;
    redis.start_again();
    eventually("the instances are back on Redis", || {
        apps.iter().all(|a| a.state.broker.healthy())
    })
    .await;
    let before = apps[1].state.store.answered_reads();
    let mut moved = Vec::new();
    for (sid, (s, session)) in students.iter().zip(sessions) {
        s.close().await;
        let url = format!("{}?previous_session={session}", apps[1].ws_url("e1"));
        let token = apps[1].token(sid, Role::Student, &["e1"]);
        let mut c = apps[1].try_connect(&url, Some(&token), &[]).await.unwrap();
        let welcome = c.next_of_type("welcome").await;
        moved.push((sid, c, welcome));
    }
    for (i, (sid, c, welcome)) in moved.iter_mut().enumerate() {
        assert_eq!(
            welcome["student"]["answered"],
            i as u64 + 1,
            "{sid}: {welcome}"
        );
        // A new question counts on from the stored ones: the set is whole.
        c.send_json(
            json!({"type": "answer", "id": "new", "question": "q-new", "value": 1, "ref": 99}),
        )
        .await;
        c.expect_ack(99).await;
        let ev = t
            .next_where("the new answer", |v| {
                v["cause"] == "answered" && v["student"]["student_id"] == **sid
            })
            .await;
        assert_eq!(ev["student"]["answered"], i as u64 + 2, "{sid}: {ev}");
    }
    let reads = apps[1].state.store.answered_reads() - before;
    assert!(
        (1..=2).contains(&reads),
        "{reads} answered-set reads for 4 returning students: one exam-wide read \
         (and at most one more for those who asked while it ran), not one each"
    );
    t.close().await;
}

const LEASE_READS: &str = "examwatch_broker_lease_reads_total";
const LIVENESS_READS: &str = "examwatch_broker_liveness_reads_total";

/// The orphan scan of a steady room reads its remote students' leases
/// once, then checks only their holder's liveness (one key for the
/// instance, not one lease per student) until the next `lease_ttl` sweep:
/// at national scale reading every lease every scan was most of Redis's
/// work (src/broker/orphans.rs).
#[tokio::test]
async fn a_steady_rooms_orphan_scan_reads_each_lease_once_per_lease_ttl() {
    let Some(redis) = Redis::start() else { return };
    let apps = cluster(&redis, 2, |s| {
        // A scan every 100 ms; a sweep of every lease only every 30 s.
        s.broker.heartbeat_ttl = Duration::from_millis(300);
        s.exam.lease_ttl = Duration::from_secs(30);
    })
    .await;
    let (mut t, _) = apps[1].teacher("e1", "t1").await;
    let mut students = Vec::new();
    for id in ["s1", "s2", "s3"] {
        students.push(apps[0].student("e1", id).await.0);
        t.next_where("connected", |e| is_student_event(e, id, "connected"))
            .await;
    }
    eventually("the first scan read the three leases", || {
        apps[1].metric(LEASE_READS) >= 3
    })
    .await;
    let read = apps[1].metric(LEASE_READS);
    let checked = apps[1].metric(LIVENESS_READS);
    // Scans go on (the holder's liveness is read again each time its
    // answer is older than heartbeat_ttl / 6 = 50 ms) ...
    eventually("five more scans", || {
        apps[1].metric(LIVENESS_READS) >= checked + 5
    })
    .await;
    // ... without reading a lease: the holder, node-0, is alive.
    assert_eq!(apps[1].metric(LEASE_READS), read);
    assert_eq!(read, 3, "each remote student's lease read once");
    // The instance holding the students has no remote student to scan.
    assert_eq!(apps[0].metric(LEASE_READS), 0);
    drop(students);
}

/// A student known to be held by one instance moves to another, which is
/// then killed: the watching instance forgot the old holder when the
/// student moved (the kick, the student's event from the new instance),
/// reads the lease again, finds its holder dead and shows the student
/// `disconnected` within heartbeat_ttl and the grace, not at the sweep
/// 30 s (`exam.lease_ttl`) later.
#[tokio::test]
async fn a_student_who_moved_is_orphaned_when_the_new_instance_is_killed() {
    let Some(redis) = Redis::start() else { return };
    // a watches, b is killed; the student starts on node-0 (in process).
    let p = Processes::start(&redis, "30s", "300ms", "300ms");
    let (a, mut b) = (p.a, p.b);
    let x = join_cluster(&redis, &p.db_url, 0..1, |s| {
        s.broker.heartbeat_ttl = Duration::from_millis(300);
        s.exam.lease_ttl = Duration::from_secs(30);
        s.exam.disconnect_grace = Duration::from_millis(300);
        // Its room ends once s1 has left: only a is left to watch s1.
        s.exam.room_linger = Duration::from_millis(50);
    })
    .await
    .remove(0);
    let token = |sub: &str, role| token_e1(&p.keys, sub, role);
    let mut t = connect_url(&ws_e1(&a.addr), &token("t1", Role::Teacher)).await;
    t.next_of_type("snapshot").await;
    let (s, welcome) = x.student("e1", "s1").await;
    t.next_where("connected", |e| is_student_event(e, "s1", "connected"))
        .await;
    // The watching instance learned s1's holder: its scans go on without
    // reading the lease again.
    let metric = |name: &str| {
        let admin = a.admin_addr.clone();
        let name = name.to_owned();
        async move {
            let text = reqwest::get(format!("http://{admin}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            metric_in(&text, &name).unwrap_or(0)
        }
    };
    let deadline = Instant::now() + WAIT;
    while metric(LEASE_READS).await < 1 {
        assert!(Instant::now() < deadline, "s1's lease never read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let checked = metric(LIVENESS_READS).await;
    while metric(LIVENESS_READS).await < checked + 3 {
        assert!(Instant::now() < deadline, "no more scans");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(LEASE_READS).await, 1, "the holder is known");

    // A second device on b takes the session over (s1 stays connected).
    let mut moved = connect_url(&ws_e1(&b.addr), &token("s1", Role::Student)).await;
    assert_eq!(moved.next_json().await["type"], "welcome");
    let mut s = s;
    assert_eq!(s.expect_close().await.0, Some(4001));
    let _ = welcome;
    t.next_where("the second session", |e| {
        is_student_event(e, "s1", "second_session")
    })
    .await;
    eventually("node-0's room ended", || x.metric("examwatch_rooms") == 0).await;
    b.kill9();
    let killed = Instant::now();
    drop(moved);
    loop {
        let ev = t
            .next_of_type_within("student", killed + Duration::from_secs(5))
            .await;
        if is_student_event(&ev, "s1", "disconnected") {
            break;
        }
    }
    drop(x);
}

/// A client that only claims its count in `progress` (it never sends an
/// `answer`) has no stored answers for Redis to lose: the first move reads
/// the database once to be sure, and later moves to the same instance do
/// not read it again for that same count.
#[tokio::test]
async fn a_claimed_count_is_checked_against_the_database_once() {
    let Some(redis) = Redis::start() else { return };
    let apps = cluster(&redis, 2, |_| {}).await;
    let (mut t, _) = apps[1].teacher("e1", "t1").await;
    let (mut s, welcome) = apps[0].student("e1", "s1").await;
    let mut session = welcome["session_id"].as_str().unwrap().to_owned();
    s.send_json(json!({"type": "progress", "question": 3, "answered": 3, "ref": 1}))
        .await;
    s.expect_ack(1).await;
    t.next_where("the claim", |v| v["student"]["answered"] == 3)
        .await;
    let reads = |app: &crate::helpers::TestApp| app.state.store.answered_reads();
    let mut moves = Vec::new();
    // 1 -> 0 -> 1 -> 0 -> 1: each instance sees s1 arrive twice.
    for (round, to) in [1, 0, 1, 0, 1].into_iter().enumerate() {
        s.close().await;
        let before = reads(&apps[to]);
        let url = format!("{}?previous_session={session}", apps[to].ws_url("e1"));
        let token = apps[to].token("s1", Role::Student, &["e1"]);
        s = apps[to].try_connect(&url, Some(&token), &[]).await.unwrap();
        let welcome = s.next_of_type("welcome").await;
        assert_eq!(
            welcome["student"]["answered"], 3,
            "round {round}: {welcome}"
        );
        session = welcome["session_id"].as_str().unwrap().to_owned();
        if round < 2 {
            eventually("the read", || reads(&apps[to]) > before).await;
        }
        // A read the join started has begun once the room acked a message
        // after it (the read is spawned on the room's thread first).
        s.send_json(json!({"type": "heartbeat", "ref": round}))
            .await;
        s.expect_ack(round as u64).await;
        moves.push(reads(&apps[to]) - before);
    }
    assert_eq!(moves, [1, 1, 0, 0, 0], "database reads per move");
    t.close().await;
}
