//! The two fan-out counters an operator graphs, held to what their help
//! texts say (issue 13 item 13): `examwatch_slow_consumer_closes_total`
//! counts every connection closed 4008, students kicked while an
//! announcement fans out included, and `examwatch_frames_out_total` counts
//! frames actually queued to sockets, never a push that was refused.
//!
//! A student is made slow for real: it never reads, its queue
//! (`ws.student_queue`) is tiny, and each announcement is 50 KB, so the
//! socket buffers fill after a few MB and the next push finds the queue
//! full. Everyone else reads (teachers have the large `ws.teacher_queue`).
//! Values are scraped from the operators' listener, as Prometheus would.

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::helpers::*;

/// Announcements sent before the test gives up waiting for a kick (50 KB
/// each, far more than loopback buffers hold for a reader that never reads).
const MAX_ANNOUNCEMENTS: usize = 1500;

async fn slow_students_app() -> TestApp {
    spawn_app_with(|s| {
        s.ws.student_queue = 2;
        s.exam.history_size = 8;
        // Nothing but the announcements may produce frames while we count:
        // no grace expiry, no idle change.
        s.exam.disconnect_grace = std::time::Duration::from_secs(120);
        s.exam.idle_after = std::time::Duration::from_secs(120);
        // Nor a network incident when the kicked student and the readers
        // all drop within a few seconds at the end (PROTOCOL.md 3.5).
        s.alerts.incident_min = 1000;
        s.limits.max_message_bytes = 64 * 1024;
        s.limits.max_announcement_chars = 60_000;
        s.limits.messages_per_second = 100_000;
    })
    .await
}

/// The operators' `/metrics`, scraped over HTTP.
async fn scrape(app: &TestApp) -> String {
    reqwest::get(app.admin("/metrics"))
        .await
        .expect("admin listener answers")
        .text()
        .await
        .expect("a metrics body")
}

async fn scraped(app: &TestApp, name: &str) -> i64 {
    let text = scrape(app).await;
    metric_in(&text, name).unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

/// A member that reads everything in its own task, until the announcement
/// [`LAST`]; returns how many announcements it saw. A close fails it.
fn reader(mut c: Client, who: &'static str) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let mut seen = 0;
        let deadline = deadline() + WAIT * 6;
        loop {
            match c.next_within(deadline).await {
                Next::Json(v) if v["type"] == "announcement" => {
                    seen += 1;
                    if v["text"] == LAST {
                        return seen;
                    }
                }
                Next::Json(_) => {}
                Next::Closed(code, reason) => panic!("{who} was closed: {code:?} {reason}"),
            }
        }
    })
}

/// The text of the announcement that ends the readers.
const LAST: &str = "last";

/// Reads a slow client's backlog until the server's close, which must be
/// 4008; returns how many announcements had reached it.
async fn closed_too_slow(c: &mut Client, who: &str) -> usize {
    let deadline = deadline();
    let mut got = 0;
    loop {
        match c.next_within(deadline).await {
            Next::Json(v) => {
                assert_eq!(v["type"], "announcement", "{who}: {v}");
                got += 1;
            }
            Next::Closed(code, reason) => {
                assert_eq!(
                    (code, reason.as_str()),
                    (Some(4008), "too slow"),
                    "{who} closed"
                );
                return got;
            }
        }
    }
}

/// Sends announcement `r` and waits for its ack (skipping the teacher's
/// own copy), so the room has finished its fan-out.
async fn announce(teacher: &mut Client, r: impl Into<Value>, text: &str) {
    let r = r.into();
    teacher
        .send_json(json!({"type": "announce", "text": text, "ref": r}))
        .await;
    teacher.expect_ack(r).await;
}

/// Reads a teacher's events until `student` is reported connected.
async fn sees_connected(teacher: &mut Client, student: &str) {
    teacher
        .next_where(&format!("{student} connected"), |v| {
            v["type"] == "student"
                && v["student"]["student_id"] == student
                && v["cause"] == "connected"
        })
        .await;
}

#[tokio::test]
async fn students_kicked_during_an_announcement_fan_out_are_counted() {
    let app = slow_students_app().await;
    let (mut teacher, _) = app.teacher("e1", "t1").await;
    let (steady, _) = app.student("e1", "steady").await;
    let steady = reader(steady, "the steady student");
    let closes_before = scraped(&app, "examwatch_slow_consumer_closes_total").await;
    let text = "x".repeat(50_000);
    let mut sent = 0;
    // Two students who never read, one after the other: each must be read
    // as soon as it is kicked, or the server gives up on its close frame
    // (after 2 s) and the socket just ends.
    for (kicked, who) in [(1, "slow1"), (2, "slow2")] {
        let (mut slow, _) = app.student("e1", who).await; // never read again
        sees_connected(&mut teacher, who).await;
        let mut sent_to_it = 0;
        // Announce until it is counted kicked, or (the failure this test is
        // for) until its socket is gone without being counted.
        loop {
            let text_now = scrape(&app).await;
            let metric = |name| metric_in(&text_now, name).expect("metric present");
            if metric("examwatch_slow_consumer_closes_total") - closes_before == kicked
                || metric("examwatch_students_connected") < 2
            {
                break;
            }
            assert!(
                sent_to_it < MAX_ANNOUNCEMENTS,
                "{who} was neither kicked nor gone after {sent_to_it} announcements"
            );
            announce(&mut teacher, sent, &text).await;
            sent += 1;
            sent_to_it += 1;
        }
        assert_eq!(
            scraped(&app, "examwatch_slow_consumer_closes_total").await - closes_before,
            kicked,
            "{who} was kicked during fan-out and counted"
        );
        let got = closed_too_slow(&mut slow, who).await;
        assert!(
            got < sent_to_it,
            "{who} missed announcements: got {got} of {sent_to_it}"
        );
        eventually(&format!("{who}'s socket is gone"), || {
            app.metric("examwatch_students_connected") == 1
        })
        .await;
    }

    // The steady student was not kicked and got every announcement.
    announce(&mut teacher, "last", LAST).await;
    let seen = tokio::time::timeout(WAIT * 2, steady)
        .await
        .expect("the steady student read to the end")
        .expect("the steady student's reader did not fail");
    assert_eq!(seen, sent + 1);
    assert_eq!(
        scraped(&app, "examwatch_slow_consumer_closes_total").await - closes_before,
        2,
        "two students closed 4008, two counted, nobody else"
    );
    let slow_path = [("path", "student_queue")];
    assert_eq!(
        app.metric_where("examwatch_slow_consumer_closes_total", &slow_path),
        2
    );
}

#[tokio::test]
async fn frames_out_counts_frames_queued_not_pushes_refused() {
    let app = slow_students_app().await;
    let help = scrape(&app).await;
    let help = help
        .lines()
        .find(|l| l.starts_with("# HELP examwatch_frames_out_total "))
        .expect("frames_out_total has a help text");
    assert!(
        help.contains("queued") && help.contains("refused pushes") && help.contains("not counted"),
        "the help text says refused pushes are not counted: {help}"
    );

    // One teacher and two students who read: one announcement is 1 + 2
    // frames.
    let (mut teacher, _) = app.teacher("e1", "t1").await;
    let (r1, _) = app.student("e1", "r1").await;
    let (r2, _) = app.student("e1", "r2").await;
    sees_connected(&mut teacher, "r1").await;
    sees_connected(&mut teacher, "r2").await;
    let (r1, r2) = (reader(r1, "r1"), reader(r2, "r2"));
    let frames = || scraped(&app, "examwatch_frames_out_total");
    let before = frames().await;
    announce(&mut teacher, "first", "ten minutes left").await;
    assert_eq!(frames().await - before, 3, "1 teacher + 2 students");

    // A student who never reads joins (its `connected` event is one frame,
    // to the teacher). Each announcement is then 4 frames, until the one
    // its full queue refuses: that one is 3, and it is the one kick.
    let (mut slow, _) = app.student("e1", "slow").await;
    sees_connected(&mut teacher, "slow").await;
    let text = "x".repeat(50_000);
    let mut kicked_at = None;
    for i in 0..MAX_ANNOUNCEMENTS {
        let before = frames().await;
        let closes = scraped(&app, "examwatch_slow_consumer_closes_total").await;
        announce(&mut teacher, i, &text).await;
        let delta = frames().await - before;
        let kicks = scraped(&app, "examwatch_slow_consumer_closes_total").await - closes;
        match kicks {
            0 => assert_eq!(
                delta, 4,
                "announcement {i}: every member's frame was queued"
            ),
            1 => {
                assert_eq!(
                    delta, 3,
                    "announcement {i}: the refused push is not counted"
                );
                kicked_at = Some(i);
                break;
            }
            n => panic!("announcement {i} kicked {n} members"),
        }
    }
    let kicked_at = kicked_at.expect("the slow student's queue filled");
    // It had at most the frames queued before the refused one.
    let got = closed_too_slow(&mut slow, "slow").await;
    assert!(
        got <= kicked_at,
        "{got} frames reached it, {kicked_at} were queued"
    );

    // Once it is gone, announcements are 3 frames again.
    eventually("the slow student's socket is gone", || {
        app.metric("examwatch_students_connected") == 2
    })
    .await;
    let before = frames().await;
    announce(&mut teacher, "last", LAST).await;
    assert_eq!(frames().await - before, 3, "1 teacher + 2 students again");
    // And the readers really got every one of them.
    for r in [r1, r2] {
        let seen = tokio::time::timeout(WAIT * 2, r)
            .await
            .expect("a reader read to the end")
            .expect("a reader did not fail");
        assert_eq!(seen, kicked_at + 3, "first, 0..={kicked_at}, last");
    }
}
