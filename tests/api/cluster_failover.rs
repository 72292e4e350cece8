//! A Redis Cluster changing under an exam: the primary that owns the
//! exam's slot is SIGKILLed while its replica is there to take over, or
//! the slot is moved to another primary (resharding). The instances follow
//! the change, subscribe the exam's sharded channel on the slot's new
//! owner and re-synchronise; no acknowledged work is lost and every
//! teacher sees one order.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::cluster::{View, cluster, progress_acked, read_until};
use crate::helpers::*;

fn reconnects(app: &TestApp) -> i64 {
    app.metric("examwatch_broker_reconnects_total")
}

fn resubscriptions(app: &TestApp) -> i64 {
    app.metric("examwatch_broker_resubscriptions_total")
}

/// Reads a teacher's frames into `view` until student `a` is on question
/// `qa` and `b` on `qb`.
async fn converge(t: &mut Client, view: &mut View, qa: u64, qb: u64) {
    read_until(t, view, WAIT * 4, "converge", |v| {
        v.questions.get("a") == Some(&json!(qa)) && v.questions.get("b") == Some(&json!(qb))
    })
    .await;
}

/// From `recovered` on, both teachers saw every seq live or under a later
/// snapshot, and where both saw an event live it is the same event.
fn one_order_since(v0: &View, v1: &View, recovered: u64) {
    let last = v0.seq.max(v1.seq);
    for (name, v) in [("t0", v0), ("t1", v1)] {
        for seq in recovered + 1..=last {
            let live = v.events.iter().any(|e| e.0 == seq);
            let snapshotted = v.snapshots.iter().any(|s| *s >= seq);
            assert!(live || snapshotted, "{name} missed seq {seq}: {v:?}");
        }
        let seqs: Vec<u64> = v.events.iter().map(|e| e.0).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{name}: one increasing order: {seqs:?}"
        );
    }
    let by_seq: HashMap<u64, _> = v0.events.iter().map(|e| (e.0, e)).collect();
    for e in v1.events.iter().filter(|e| e.0 > recovered) {
        if let Some(other) = by_seq.get(&e.0) {
            assert_eq!(*other, e, "one seq, one event, on both instances");
        }
    }
}

/// Two instances on `redis`, a teacher on each, student `a` on the first
/// and `b` on the second, each with one acked progress both teachers saw.
struct Exam {
    apps: Vec<TestApp>,
    t0: Client,
    t1: Client,
    v0: View,
    v1: View,
    a: Client,
    b: Client,
}

async fn exam_on(redis: &RedisCluster) -> Exam {
    let apps = cluster(redis, 2, |_| {}).await;
    let (mut t0, snap0) = apps[0].teacher("e1", "t0").await;
    let (mut t1, snap1) = apps[1].teacher("e1", "t1").await;
    let (mut v0, mut v1) = (View::default(), View::default());
    v0.apply(&snap0);
    v1.apply(&snap1);
    let (mut a, _) = apps[0].student("e1", "a").await;
    let (mut b, _) = apps[1].student("e1", "b").await;
    progress_acked(&mut a, 1, 1).await;
    progress_acked(&mut b, 101, 1).await;
    converge(&mut t0, &mut v0, 1, 101).await;
    converge(&mut t1, &mut v1, 1, 101).await;
    Exam {
        apps,
        t0,
        t1,
        v0,
        v1,
        a,
        b,
    }
}

#[tokio::test]
async fn a_primary_killed_mid_exam_fails_over_and_events_flow_again_in_one_order() {
    let Some(mut redis) = RedisCluster::start() else {
        return;
    };
    let Exam {
        apps,
        mut t0,
        mut t1,
        mut v0,
        mut v1,
        mut a,
        mut b,
    } = exam_on(&redis).await;
    let before: Vec<i64> = apps.iter().map(reconnects).collect();

    let dead = redis.primary_of("{e1}");
    redis.kill(dead);
    // Students keep working while the cluster fails over, and after.
    for r in 2..=4 {
        progress_acked(&mut a, r, r).await;
        progress_acked(&mut b, 100 + r, r).await;
    }
    redis.wait_for_failover("{e1}", dead);
    for r in 5..=7 {
        progress_acked(&mut a, r, r).await;
        progress_acked(&mut b, 100 + r, r).await;
    }
    // Every teacher ends with the last acknowledged state (events replayed
    // late, or a fresh snapshot), never a stale view.
    converge(&mut t0, &mut v0, 7, 107).await;
    converge(&mut t1, &mut v1, 7, 107).await;
    eventually("readiness recovers", || {
        apps.iter().all(|a| a.state.broker.healthy())
    })
    .await;
    let ready: Value = reqwest::get(apps[0].admin("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    for (app, before) in apps.iter().zip(before) {
        assert!(
            reconnects(app) > before,
            "the instance saw Redis go away and come back (degraded, then ready)"
        );
        assert!(
            resubscriptions(app) >= 1,
            "the exam's subscription was restored on the new primary"
        );
    }

    // While the shard was away each instance numbered its own members'
    // events provisionally (PROTOCOL.md 4.11) and its teachers then got a
    // snapshot; the seq a teacher saw never went backwards.
    for view in [&v0, &v1] {
        let seqs: Vec<u64> = view.events.iter().map(|e| e.0).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one increasing order: {seqs:?}"
        );
    }
    // From now on live events flow between the instances again: both
    // teachers get the same events in one gapless order, except where the
    // instance lost its subscription while the cluster connection moved it
    // to the new primary: then a snapshot covers what it missed.
    let recovered = v0.seq.max(v1.seq);
    for r in 8..=10 {
        progress_acked(&mut a, 40 + r, r).await;
        progress_acked(&mut b, 140 + r, r).await;
    }
    converge(&mut t0, &mut v0, 50, 150).await;
    converge(&mut t1, &mut v1, 50, 150).await;
    let last = v0.seq.max(v1.seq);
    assert!(last >= recovered + 6, "six events numbered: {v0:?} {v1:?}");
    one_order_since(&v0, &v1, recovered);
    // A teacher arriving now on either instance sees the acknowledged state.
    for app in &apps {
        let (_t, snap) = app.teacher("e1", "late").await;
        let questions: HashMap<&str, &Value> = snap["students"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["student_id"].as_str().unwrap(), &s["current_question"]))
            .collect();
        assert_eq!(questions.get("a"), Some(&&json!(50)), "{snap}");
        assert_eq!(questions.get("b"), Some(&&json!(150)), "{snap}");
    }
}

#[tokio::test]
async fn the_exams_slot_moved_to_another_primary_events_follow_it() {
    let Some(redis) = RedisCluster::start() else {
        return;
    };
    let Exam {
        apps,
        mut t0,
        mut t1,
        mut v0,
        mut v1,
        mut a,
        mut b,
    } = exam_on(&redis).await;
    let before = redis.primary_of("{e1}");

    assert!(apps.iter().all(|a| resubscriptions(a) == 0));
    let after = redis.move_slot_of("{e1}");
    assert_ne!(before, after);
    for r in 2..=5 {
        progress_acked(&mut a, r, r).await;
        progress_acked(&mut b, 100 + r, r).await;
    }
    converge(&mut t0, &mut v0, 5, 105).await;
    converge(&mut t1, &mut v1, 5, 105).await;
    // While the slot moved, publishes may have failed (TRYAGAIN, MOVED)
    // and instances numbered their own members' events provisionally, as
    // in an outage; once it settled, one order on both instances, with
    // any gap covered by a snapshot.
    let recovered = v0.seq.max(v1.seq);
    for r in 6..=8 {
        progress_acked(&mut a, 50 + r, r).await;
        progress_acked(&mut b, 150 + r, r).await;
    }
    converge(&mut t0, &mut v0, 58, 158).await;
    converge(&mut t1, &mut v1, 58, 158).await;
    one_order_since(&v0, &v1, recovered);
    for app in &apps {
        assert!(
            resubscriptions(app) >= 1,
            "the old owner dropped the exam's subscription; it was made on the new one"
        );
    }
    // And live events reach the other instance through the new owner.
    progress_acked(&mut a, 60, 9).await;
    converge(&mut t1, &mut v1, 60, 158).await;
    let last = v1.events.last().expect("live events");
    assert_eq!(
        (last.0, last.1.as_str(), last.2.as_str()),
        (v1.seq, "a", "progress"),
        "the latest state came as a live event: {v1:?}"
    );
}
