//! How an instance numbers its events when Redis refuses them for a
//! while, and what its teachers see once it is back. Two ways Redis
//! refuses a numbering call without being away: a node that never ran the
//! script (a slot moved, a replica promoted: `NOSCRIPT`), which is not an
//! outage at all; and a refusal that lasts (here an ACL taking `EVALSHA`
//! from one instance's user), during which that instance serves its own
//! members under provisional seqs (PROTOCOL.md 4.11).

use serde_json::json;

use crate::cluster::{Redis, View, cluster, progress_acked as progress, read_until};
use crate::helpers::*;

async fn redis_cmd(redis: &Redis, args: &[&str]) -> redis::Value {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

fn on(view: &View, student: &str, question: u64) -> bool {
    view.questions.get(student) == Some(&json!(question))
}

#[tokio::test]
async fn a_node_that_lost_the_numbering_script_is_not_an_outage() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let apps = cluster(&redis, 2, |_| {}).await;
    let (mut t1, snap) = apps[1].teacher("e1", "t1").await;
    let mut v1 = View::default();
    v1.apply(&snap);
    let (mut a, _) = apps[0].student("e1", "a").await;
    progress(&mut a, 1, 1).await;
    read_until(&mut t1, &mut v1, WAIT * 2, "first event", |v| on(v, "a", 1)).await;
    let reconnects = apps[0].metric("examwatch_broker_reconnects_total");

    // What a node that never ran the script answers (`NOSCRIPT`).
    redis_cmd(&redis, &["SCRIPT", "FLUSH"]).await;
    progress(&mut a, 2, 2).await;
    // The next frame is that event, live, under the next seq: no
    // provisional numbering, no snapshot to make up for it.
    let ev = t1.next_json().await;
    assert_eq!(
        (ev["type"].as_str(), &ev["student"]["current_question"]),
        (Some("student"), &json!(2)),
        "{ev}"
    );
    assert_eq!(ev["seq"].as_u64(), Some(v1.seq + 1), "{ev}");
    assert!(apps[0].state.broker.healthy());
    assert_eq!(
        apps[0].metric("examwatch_broker_reconnects_total"),
        reconnects,
        "a missing script is loaded again, not taken as Redis going away"
    );
}

#[tokio::test]
async fn drafts_queued_before_an_outage_showed_do_not_leave_teachers_stale() {
    let Some(redis) = Redis::start() else {
        return;
    };
    // Instance 0 reaches Redis as a user of its own, whose numbering
    // calls the test can refuse while everything else goes on.
    redis_cmd(
        &redis,
        &["ACL", "SETUSER", "node0", "on", ">pw", "~*", "&*", "+@all"],
    )
    .await;
    let port = redis.port;
    let apps = cluster(&redis, 2, |s| {
        if s.database.instance_id.as_deref() == Some("node-0") {
            s.broker.redis_url = format!("redis://node0:pw@127.0.0.1:{port}/").into();
        }
    })
    .await;
    let (mut t0, snap) = apps[0].teacher("e1", "t0").await;
    let mut v0 = View::default();
    v0.apply(&snap);
    let (mut s, _) = apps[0].student("e1", "s").await;
    let (mut r, _) = apps[1].student("e1", "r").await;
    progress(&mut s, 1, 1).await;
    progress(&mut r, 101, 1).await;
    read_until(&mut t0, &mut v0, WAIT * 2, "baseline", |v| {
        on(v, "s", 1) && on(v, "r", 101)
    })
    .await;

    // Instance 0's next draft is queued while Redis still looks healthy,
    // and refused: the instance sees an outage.
    redis_cmd(&redis, &["ACL", "SETUSER", "node0", "-evalsha"]).await;
    progress(&mut s, 2, 2).await;
    eventually("instance 0 sees Redis refuse it", || {
        !apps[0].state.broker.healthy()
    })
    .await;
    // Now its members are served under a provisional seq...
    progress(&mut s, 3, 3).await;
    read_until(&mut t0, &mut v0, WAIT * 2, "provisional", |v| on(v, "s", 3)).await;
    // ...while the other instance numbers its own events for real; they
    // reach instance 0 at or above its provisional seqs, and its teacher
    // gets a snapshot for them.
    let snapshots = v0.snapshots.len();
    progress(&mut r, 102, 2).await;
    progress(&mut r, 103, 3).await;
    read_until(
        &mut t0,
        &mut v0,
        WAIT * 2,
        "the other instance's events",
        |v| on(v, "r", 103) && v.snapshots.len() > snapshots,
    )
    .await;

    // Redis takes instance 0's drafts again: `s` on 2 (queued before the
    // outage showed) and on 3 (already seen) are numbered above all that;
    // the teacher ends on 3, by a snapshot after both came back.
    redis_cmd(&redis, &["ACL", "SETUSER", "node0", "+evalsha"]).await;
    eventually("instance 0 publishes again", || {
        apps[0].state.broker.healthy()
    })
    .await;
    progress(&mut r, 104, 4).await;
    read_until(&mut t0, &mut v0, WAIT * 2, "after the outage", |v| {
        on(v, "s", 3) && on(v, "r", 104)
    })
    .await;
    // And it stays there: nothing older arrives after it.
    let (_late, snap) = apps[1].teacher("e1", "late").await;
    let truth: View = {
        let mut v = View::default();
        v.apply(&snap);
        v
    };
    assert!(on(&truth, "s", 3) && on(&truth, "r", 104), "{snap}");
    progress(&mut r, 105, 5).await;
    read_until(&mut t0, &mut v0, WAIT * 2, "live again", |v| {
        on(v, "r", 105)
    })
    .await;
    assert!(on(&v0, "s", 3), "teacher view went back: {v0:?}");
}
