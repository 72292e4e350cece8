//! No silent gaps: a teacher that comes back gets exactly the events it
//! missed, or a fresh snapshot when they are older than the history.

use examwatch::auth::Role;
use serde_json::{Value, json};

use crate::helpers::*;

/// Makes `n` progress events and returns the seq of the last one, as seen
/// by an always-connected observer. `answered` stays 0: a count going
/// down would add an `answered_decreased` alert (PROTOCOL.md 3.2).
async fn make_events(student: &mut Client, observer: &mut Client, n: u32) -> u64 {
    let mut last = 0;
    for i in 0..n {
        student.send_json(progress(i + 10, 0)).await;
        let ev = observer.next_of_type("student").await;
        last = ev["seq"].as_u64().unwrap();
    }
    last
}

/// Reads until the ack of `reference`, returning everything before it.
async fn until_ack(c: &mut Client, reference: &str) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = deadline();
    loop {
        let v = c.next_json_within(deadline).await;
        // An `error` echoes the `ref` too: the reply must be the ack itself.
        if v["ref"] == reference {
            assert_eq!(v, ack(reference), "the reply to {reference}");
            return got;
        }
        got.push(v);
    }
}

#[tokio::test]
async fn resume_replays_exactly_the_missed_events() {
    let app = spawn_app().await;
    let (mut observer, _) = app.teacher("e1", "observer").await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    observer.next_of_type("student").await; // connected
    make_events(&mut s, &mut observer, 3).await;
    // The teacher has read everything so far, then its network drops.
    let mut last_seen = 0;
    for _ in 0..4 {
        last_seen = t.next_json().await["seq"].as_u64().unwrap();
    }
    drop(t);
    let newest = make_events(&mut s, &mut observer, 5).await;
    assert_eq!(newest, last_seen + 5);

    // Message form: reconnect, then `resume {last_seq}` first thing.
    let (mut back, snap) = app.teacher("e1", "t1").await;
    assert_eq!(snap["seq"], newest);
    back.send_json(json!({"type": "resume", "last_seq": last_seen, "ref": "r1"}))
        .await;
    let replay = until_ack(&mut back, "r1").await;
    let seqs: Vec<u64> = replay.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, ((last_seen + 1)..=newest).collect::<Vec<_>>());
    assert!(replay.iter().all(|v| v["type"] == "student"));

    // Handshake form: `?last_seq=` replays instead of sending a snapshot.
    let token = app.token("t2", Role::Teacher, &["e1"]);
    let url = format!("{}?last_seq={last_seen}", app.ws_url("e1"));
    let mut direct = app.try_connect(&url, Some(&token), &[]).await.unwrap();
    for expected in (last_seen + 1)..=newest {
        let ev = direct.next_json().await;
        assert_eq!(ev["type"], "student", "no snapshot first: {ev}");
        assert_eq!(ev["seq"], expected);
    }
    // And both continue live, with no duplicate.
    let next = make_events(&mut s, &mut observer, 1).await;
    assert_eq!(back.next_json().await["seq"], next);
    assert_eq!(direct.next_json().await["seq"], next);
}

#[tokio::test]
async fn resume_past_the_history_gets_a_fresh_snapshot() {
    let app = spawn_app_with(|s| s.exam.history_size = 5).await;
    let (mut observer, _) = app.teacher("e1", "observer").await;
    let (mut s, _) = app.student("e1", "s1").await;
    observer.next_of_type("student").await;
    let newest = make_events(&mut s, &mut observer, 12).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    t.send_json(json!({"type": "resume", "last_seq": 1, "ref": "r"}))
        .await;
    let got = until_ack(&mut t, "r").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["type"], "snapshot");
    assert_eq!(got[0]["seq"], newest);
    assert_eq!(got[0]["students"][0]["current_question"], 21);
    // A seq this room never issued (e.g. from before a restart) also gets one.
    t.send_json(json!({"type": "resume", "last_seq": newest + 100, "ref": "r2"}))
        .await;
    assert_eq!(until_ack(&mut t, "r2").await[0]["type"], "snapshot");
    // Up to date: nothing to replay.
    t.send_json(json!({"type": "resume", "last_seq": newest, "ref": "r3"}))
        .await;
    assert!(until_ack(&mut t, "r3").await.is_empty());
    assert_eq!(app.metric("examwatch_resume_snapshots_total"), 2);
}

/// Announces each text and returns the seq of the last one (the teacher's
/// own copy carries it).
async fn announce(t: &mut Client, texts: &[&str]) -> u64 {
    let mut seq = 0;
    for text in texts {
        t.send_json(json!({"type": "announce", "text": text, "ref": text}))
            .await;
        seq = t.next_of_type("announcement").await["seq"]
            .as_u64()
            .unwrap();
        t.expect_ack(*text).await;
    }
    seq
}

/// Reconnects student `sid` and returns it with the exam's seq after its
/// `reconnected` event (what a `resumed.last_seq` must say).
async fn come_back(app: &TestApp, t: &mut Client, sid: &str) -> (Client, u64) {
    let (s, _) = app.student("e1", sid).await;
    let ev = t.next_of_type("student").await;
    assert_eq!(ev["student"]["student_id"], sid, "{ev}");
    (s, ev["seq"].as_u64().unwrap())
}

/// The `text`s of a replay, which must be announcements only.
fn texts(replay: &[Value]) -> Vec<&str> {
    replay
        .iter()
        .map(|v| {
            assert_eq!(v["type"], "announcement", "{v}");
            v["text"].as_str().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_student_resume_replays_missed_announcements() {
    let app = spawn_app().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (s, welcome) = app.student("e1", "s1").await;
    let joined_at = welcome["last_seq"].as_u64().unwrap();
    t.next_of_type("student").await; // connected
    drop(s);
    announce(&mut t, &["one", "two"]).await;
    let (mut s, now) = come_back(&app, &mut t, "s1").await;
    s.send_json(json!({"type": "resume", "last_seq": joined_at, "ref": "r"}))
        .await;
    let got = until_ack(&mut s, "r").await;
    // Everything missed is still kept: recovered, then exactly the missed ones.
    assert_eq!(
        got[0],
        json!({"type": "resumed", "recovered": true, "last_seq": now, "replayed": 2})
    );
    assert_eq!(texts(&got[1..]), ["one", "two"]);
}

#[tokio::test]
async fn a_student_resume_from_before_the_kept_announcements_is_not_recovered() {
    // Only the last two announcements are kept.
    let app = spawn_app_with(|s| s.exam.history_size = 2).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (s, welcome) = app.student("e1", "s1").await;
    let joined_at = welcome["last_seq"].as_u64().unwrap();
    t.next_of_type("student").await; // connected
    drop(s);
    announce(&mut t, &["one", "two", "three", "four"]).await;
    let (mut s, now) = come_back(&app, &mut t, "s1").await;
    s.send_json(json!({"type": "resume", "last_seq": joined_at, "ref": "r"}))
        .await;
    let got = until_ack(&mut s, "r").await;
    assert_eq!(
        got[0],
        json!({"type": "resumed", "recovered": false, "last_seq": now, "replayed": 2})
    );
    assert_eq!(texts(&got[1..]), ["three", "four"], "the ones still kept");
    // Announcements follow each other here: `three - 1` is "two" (gone,
    // but a student who saw it missed only kept ones), `three - 2` is "one".
    let three = got[1]["seq"].as_u64().unwrap();
    s.send_json(json!({"type": "resume", "last_seq": three - 2, "ref": "r2"}))
        .await;
    let got = until_ack(&mut s, "r2").await;
    assert_eq!(
        got[0]["recovered"], false,
        "\"two\" was missed and is gone: {got:?}"
    );
    s.send_json(json!({"type": "resume", "last_seq": three - 1, "ref": "r3"}))
        .await;
    let got = until_ack(&mut s, "r3").await;
    assert_eq!(
        got[0],
        json!({"type": "resumed", "recovered": true, "last_seq": now, "replayed": 2})
    );
    assert_eq!(texts(&got[1..]), ["three", "four"]);
}

#[tokio::test]
async fn a_student_resume_with_nothing_missed_is_recovered_and_nothing_else() {
    let app = spawn_app().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    announce(&mut t, &["before"]).await;
    let (mut s, now) = come_back(&app, &mut t, "s1").await;
    s.send_json(json!({"type": "resume", "last_seq": now, "ref": "r"}))
        .await;
    assert_eq!(
        until_ack(&mut s, "r").await,
        [json!({"type": "resumed", "recovered": true, "last_seq": now, "replayed": 0})]
    );
    // A seq this exam never reached (a server that lost its data): its
    // numbering cannot be trusted, so not recovered, and every kept one.
    s.send_json(json!({"type": "resume", "last_seq": now + 50, "ref": "r2"}))
        .await;
    let got = until_ack(&mut s, "r2").await;
    assert_eq!(
        got[0],
        json!({"type": "resumed", "recovered": false, "last_seq": now, "replayed": 1})
    );
    assert_eq!(texts(&got[1..]), ["before"]);
}

#[tokio::test]
async fn a_resume_after_live_events_gets_a_snapshot_never_duplicates() {
    let app = spawn_app().await;
    let (mut observer, _) = app.teacher("e1", "observer").await;
    let (mut s, _) = app.student("e1", "s1").await;
    observer.next_of_type("student").await;
    make_events(&mut s, &mut observer, 3).await;
    let (mut t, snap) = app.teacher("e1", "t1").await;
    let at_join = snap["seq"].as_u64().unwrap();
    // Two live events reach the teacher before it asks to resume.
    let newest = make_events(&mut s, &mut observer, 2).await;
    for expected in at_join + 1..=newest {
        assert_eq!(t.next_json().await["seq"], expected);
    }
    t.send_json(json!({"type": "resume", "last_seq": 1, "ref": "r"}))
        .await;
    let got = until_ack(&mut t, "r").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["type"], "snapshot");
    assert_eq!(got[0]["seq"], newest);
    // Live events continue after it, in order.
    let next = make_events(&mut s, &mut observer, 1).await;
    assert_eq!(t.next_json().await["seq"], next);
}

/// Announcements are reloaded from the database when a room starts (4.5):
/// a student who missed them before a restart still gets them, recovered.
#[tokio::test]
async fn a_student_resume_after_a_restart_replays_announcements_from_the_database() {
    let app = spawn_app().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (s, welcome) = app.student("e1", "s1").await;
    let joined_at = welcome["last_seq"].as_u64().unwrap();
    t.next_of_type("student").await; // connected
    drop(s);
    announce(&mut t, &["before", "the restart"]).await;
    t.close().await;
    let url = app.db_url.clone();
    let TestAppParts {
        db_dir: _db,
        data: _data,
    } = app.stop().await;
    let app2 = spawn_app_on_url(Some(url), |_| {}).await;
    let (mut s, _) = app2.student("e1", "s1").await;
    s.send_json(json!({"type": "resume", "last_seq": joined_at, "ref": "r"}))
        .await;
    let got = until_ack(&mut s, "r").await;
    assert_eq!(got[0]["type"], "resumed", "{got:?}");
    assert_eq!(got[0]["recovered"], true, "{got:?}");
    assert_eq!(texts(&got[1..]), ["before", "the restart"]);
}
