//! Live fan-out: every change reaches every teacher, in `seq` order, and a
//! teacher that stops reading harms nobody else.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn thirty_students_every_change_reaches_the_teacher_in_order() {
    let app = spawn_app().await;
    let (mut teacher, snapshot) = app.teacher("e1", "t1").await;
    assert_eq!(snapshot["students"].as_array().unwrap().len(), 0);
    let mut last_seq = snapshot["seq"].as_u64().unwrap();

    let mut students = Vec::new();
    for i in 0..30 {
        let (s, welcome) = app.student("e1", &format!("s{i:02}")).await;
        assert_eq!(welcome["exam_id"], "e1");
        assert_eq!(welcome["student"]["status"], "active");
        assert!(
            welcome["session_id"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
        students.push(s);
    }
    // Each student answers three questions, with a ref to be acked.
    for round in 1..=3u32 {
        for (i, s) in students.iter_mut().enumerate() {
            s.send_json(json!({"type": "progress", "question": round, "answered": round, "ref": format!("{i}-{round}")}))
                .await;
        }
    }
    for (i, s) in students.iter_mut().enumerate() {
        for round in 1..=3u32 {
            s.expect_ack(format!("{i}-{round}")).await;
        }
    }
    // The teacher sees 30 connects then 90 progress events, seq +1 each time.
    let mut connected = 0;
    let mut progress = std::collections::HashMap::new();
    for _ in 0..120 {
        let ev = teacher.next_json().await;
        assert_eq!(ev["type"], "student", "{ev}");
        let seq = ev["seq"].as_u64().unwrap();
        assert_eq!(seq, last_seq + 1, "no gap, no reorder");
        last_seq = seq;
        match ev["cause"].as_str().unwrap() {
            "connected" => connected += 1,
            "progress" => {
                let id = ev["student"]["student_id"].as_str().unwrap().to_owned();
                let q = ev["student"]["current_question"].as_u64().unwrap();
                let prev = progress.insert(id, q).unwrap_or(0);
                assert_eq!(q, prev + 1, "a student's own changes stay in order");
            }
            other => panic!("unexpected cause {other}"),
        }
    }
    assert_eq!(connected, 30);
    assert!(progress.values().all(|q| *q == 3));
}

#[tokio::test]
async fn snapshot_on_join_has_every_student_and_the_counts() {
    let app =
        spawn_app_with(|s| s.exam.disconnect_grace = std::time::Duration::from_millis(50)).await;
    let (mut a, _) = app.student("e1", "a").await;
    let (mut b, _) = app.student("e1", "b").await;
    let (c, _) = app.student("e1", "c").await;
    b.send_json(json!({"type": "submit", "ref": 1})).await;
    b.expect_ack(1).await;
    a.send_json(json!({"type": "activity", "state": "idle", "ref": 1}))
        .await;
    a.expect_ack(1).await;
    // c drops; watch it become disconnected before taking the snapshot.
    let (mut watcher, _) = app.teacher("e1", "t0").await;
    c.close().await;
    watcher
        .next_where("c disconnected", |ev| {
            is_student_event(ev, "c", "disconnected")
        })
        .await;
    let (_t, snap) = app.teacher("e1", "t1").await;
    assert_eq!(snap["exam_id"], "e1");
    assert_eq!(
        snap["counts"],
        json!({"active": 0, "idle": 1, "submitted": 1, "disconnected": 1})
    );
    let students = snap["students"].as_array().unwrap();
    let ids: Vec<_> = students
        .iter()
        .map(|s| s["student_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let a_state = &students[0];
    for field in [
        "student_id",
        "name",
        "status",
        "current_question",
        "answered",
        "last_activity",
        "connected",
        "focus_lost_count",
        "connections",
    ] {
        assert!(a_state.get(field).is_some(), "student state has {field}");
    }
    assert_eq!(students[2]["connected"], false);
}

#[tokio::test]
async fn announcements_reach_every_student_and_teacher() {
    let app = spawn_app().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s1, _) = app.student("e1", "s1").await;
    let (mut s2, _) = app.student("e1", "s2").await;
    let (mut other_exam, _) = app.student("e2", "s3").await;
    t.send_json(json!({"type": "announce", "text": "10 minutes left", "ref": "a"}))
        .await;
    for s in [&mut s1, &mut s2] {
        let a = s.next_of_type("announcement").await;
        assert_eq!(a["text"], "10 minutes left");
        assert!(a["at"].as_str().unwrap().ends_with('Z'));
    }
    t.expect_ack("a").await;
    // Another exam's student got nothing: its next message is our probe's ack.
    other_exam
        .send_json(json!({"type": "heartbeat", "ref": "probe"}))
        .await;
    assert_eq!(other_exam.next_json().await, ack("probe"));
}

#[tokio::test]
async fn a_teacher_that_never_reads_is_closed_without_delaying_others() {
    let app = spawn_app_with(|s| {
        s.ws.teacher_queue = 16;
        s.exam.history_size = 8;
        s.limits.max_message_bytes = 64 * 1024;
        s.limits.max_announcement_chars = 60_000;
        s.limits.messages_per_second = 100_000;
    })
    .await;
    let (slow, _) = app.teacher("e1", "slow").await; // never read again
    let (mut fast, _) = app.teacher("e1", "fast").await;
    let (mut announcer, _) = app.teacher("e1", "announcer").await;
    let text = "x".repeat(50_000);
    let total = 400;
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        let deadline = deadline() + WAIT * 3;
        while seqs.len() < total {
            let ev = fast.next_json_within(deadline).await;
            if ev["type"] == "announcement" {
                seqs.push(ev["seq"].as_u64().unwrap());
            }
        }
        (seqs, fast)
    });
    for i in 0..total {
        announcer
            .send_json(json!({"type": "announce", "text": text, "ref": i}))
            .await;
        // The announcer reads its acks so it never becomes slow itself.
        announcer.expect_ack(i).await;
    }
    let (seqs, _fast) = tokio::time::timeout(WAIT * 4, reader)
        .await
        .expect("fast teacher kept up")
        .unwrap();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gaps"
    );
    assert_eq!(app.metric("examwatch_slow_consumer_closes_total"), 1);
    eventually("the slow teacher's socket is gone", || {
        app.metric("examwatch_teachers_connected") == 2
    })
    .await;
    // Counted on its path, and among the closes by code.
    let slow_path = [("path", "teacher_queue")];
    assert_eq!(
        app.metric_where("examwatch_slow_consumer_closes_total", &slow_path),
        1
    );
    let too_slow = [("by", "server"), ("code", "4008")];
    assert_eq!(app.metric_where("examwatch_closes_total", &too_slow), 1);
    drop(slow);
}
