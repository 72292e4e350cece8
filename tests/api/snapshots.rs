//! Snapshots of large exams arrive in parts (docs/PROTOCOL.md 4.12). A
//! snapshot used to be one frame: past 1 MiB (about 2,700 students with
//! long names) the socket's write buffer refused it ("Write buffer is
//! full") and every teacher connection of the exam failed, forever.
//!
//! The students of a large exam are put where a restarted server finds
//! them: their `student` events are written to the database through the
//! server's own writer, exactly as a room writes them, and the room that
//! starts for the first connection loads them (4.10). 20,000 real sockets
//! would need more open files than a test may hold.

use std::time::Instant;

use examwatch::{
    auth::Role,
    protocol::{Cause, Label, ServerMsg, Status, StudentState, Timestamp},
    store::writer::Record,
};
use serde_json::Value;

use crate::helpers::*;

/// The longest name a token may carry (`name` ≤ 200 bytes), some of it
/// outside ASCII, so each student costs what a real worst case costs.
fn long_name(i: usize) -> String {
    let mut name =
        format!("{i:05} Maximiliane-Cäcilie Ōtsuka-Wójcik von Hohenzollern-Sigmaringen ");
    while name.len() < 200 {
        name.push_str("Ørsted-");
    }
    while name.len() > 200 {
        name.pop();
    }
    name
}

/// Writes `n` students' `connected`-style events (seq 1..=n) for `exam` and
/// waits for the commit. Every fourth is submitted, the rest disconnected
/// (neither starts a timer when the room restores them).
pub async fn seed_students(app: &TestApp, exam: &str, n: usize) {
    let exam_id: std::sync::Arc<str> = exam.into();
    for i in 0..n {
        let state = StudentState {
            student_id: format!("student-{i:05}@faculty-of-engineering.example.edu"),
            name: long_name(i),
            status: if i % 4 == 0 {
                Status::Submitted
            } else {
                Status::Disconnected
            },
            current_question: Some(Label::Text("question-17-part-b".into())),
            answered: 16,
            last_activity: Timestamp::now(),
            connected: false,
            focused: true,
            focus_lost_count: 3,
            connections: 2,
            submitted_at: (i % 4 == 0).then(Timestamp::now),
            alerts: Default::default(),
            deadline: Some(Timestamp::now()),
            paused: false,
            extra_minutes: 15,
            disconnected_ms: 1234,
            disconnected_since: None,
            hand_raised: false,
        };
        let seq = i as u64 + 1;
        let payload = ServerMsg::Student {
            seq,
            student: &state,
            cause: Cause::Disconnected,
            control: None,
        }
        .encode();
        app.state.writer.write(Record::Event {
            exam_id: exam_id.clone(),
            seq: seq as i64,
            at: examwatch::store::now_ms(),
            student_id: Some(state.student_id.as_str().into()),
            kind: "student",
            payload,
        });
    }
    app.flushed().await;
}

/// Students seeded into the large exam.
const N_SEEDED: usize = 20_000;

/// Checks a snapshot of the seeded exam (plus `n - N_SEEDED` live
/// students): parts of at most 256 KiB (a quarter of the server's 1 MiB
/// write buffer), together every student once, sorted, with the counts.
fn check_large(parts: &[(usize, Value)], n: usize) -> Value {
    assert!(parts.len() > 1, "a large exam's snapshot comes in parts");
    for (bytes, part) in parts {
        assert!(
            *bytes <= 256 * 1024,
            "part {} is {bytes} bytes",
            part["part"]
        );
        assert_eq!(part["parts"], parts.len());
        assert!(!part["students"].as_array().unwrap().is_empty());
    }
    let whole = assemble_snapshot(parts.iter().map(|(_, v)| v.clone()).collect());
    let ids: Vec<&str> = whole["students"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["student_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), n, "every student is in the snapshot");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "sorted, each once");
    let seventh = whole["students"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["student_id"] == "student-00007@faculty-of-engineering.example.edu")
        .expect("student 7");
    assert_eq!(seventh["name"], long_name(7));
    let counts = &whole["counts"];
    assert_eq!(counts["submitted"], N_SEEDED / 4);
    assert_eq!(counts["disconnected"], N_SEEDED - N_SEEDED / 4);
    let sum: u64 = ["active", "idle", "submitted", "disconnected"]
        .iter()
        .map(|k| counts[k].as_u64().unwrap())
        .sum();
    assert_eq!(sum, n as u64, "the counts add up to the students");
    whole
}

#[tokio::test]
async fn a_20000_student_exam_opens_in_parts_on_join_and_on_resume() {
    const N: usize = N_SEEDED;
    let app = spawn_app().await;
    seed_students(&app, "big", N).await;
    let token = app.token("t1", Role::Teacher, &["big"]);

    // Join: the whole snapshot, in parts, then live events after it.
    let started = Instant::now();
    let mut t = app.connect("big", &token).await;
    let parts = t.snapshot_parts().await;
    let elapsed = started.elapsed();
    let bytes: usize = parts.iter().map(|(b, _)| b).sum();
    println!(
        "SNAPSHOT {N} students: {} parts, {bytes} bytes, received in {elapsed:?} (handshake, room start-up from the database, last part)",
        parts.len()
    );
    let whole = check_large(&parts, N);
    assert_eq!(whole["seq"], N as u64);
    let (_s, _) = app.student("big", "late-1").await;
    let ev = t.next_json().await;
    assert!(is_student_event(&ev, "late-1", "connected"), "{ev}");
    assert_eq!(
        ev["seq"],
        N as u64 + 1,
        "the first event after the last part"
    );

    // Resume from a seq older than the history (1024 events): a snapshot
    // instead of a replay, in parts just the same; by handshake and by message.
    let url = format!("{}?last_seq=5", app.ws_url("big"));
    let mut r = app.try_connect(&url, Some(&token), &[]).await.unwrap();
    let whole = check_large(&r.snapshot_parts().await, N + 1);
    assert_eq!(whole["seq"], N as u64 + 1);
    let started = Instant::now();
    r.send_json(serde_json::json!({"type": "resume", "last_seq": 5, "ref": "r1"}))
        .await;
    check_large(&r.snapshot_parts().await, N + 1);
    println!(
        "SNAPSHOT {N} students from a running room (resume message to last part): {:?}",
        started.elapsed()
    );
    assert_eq!(
        r.next_json().await,
        serde_json::json!({"type": "ack", "ref": "r1"})
    );
}

#[tokio::test]
async fn a_small_exam_gets_its_snapshot_in_one_part() {
    let app = spawn_app().await;
    let (_s, _) = app.student("e1", "s1").await;
    let (_t, snapshot) = app.teacher("e1", "t1").await;
    let mut keys: Vec<&str> = snapshot
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "clock",
            "counts",
            "exam_id",
            "part",
            "parts",
            "phase",
            "seq",
            "server_time",
            "students",
            "type",
            "version"
        ]
    );
    assert_eq!(snapshot["phase"], "in_progress");
    assert_eq!(snapshot["clock"]["phase"], "in_progress");
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["part"], 1);
    assert_eq!(snapshot["parts"], 1);
    assert_eq!(snapshot["seq"], 1);
    assert_eq!(snapshot["exam_id"], "e1");
    assert_eq!(snapshot["students"].as_array().unwrap().len(), 1);
    assert_eq!(snapshot["students"][0]["student_id"], "s1");
    assert_eq!(
        snapshot["counts"],
        serde_json::json!({"active": 1, "idle": 0, "submitted": 0, "disconnected": 0})
    );
}

#[tokio::test]
async fn an_empty_exam_gets_one_empty_part() {
    let app = spawn_app().await;
    let (_t, mut snapshot) = app.teacher("e0", "t1").await;
    let server_time = snapshot["server_time"].take();
    assert!(
        server_time.as_str().is_some_and(|t| t.ends_with('Z')),
        "{server_time}"
    );
    // The exam's clock (4.13), checked in tests/api/exam_control.rs.
    let clock = snapshot["clock"].take();
    assert_eq!(clock["phase"], "in_progress", "{clock}");
    assert!(snapshot["version"].take().is_i64());
    assert_eq!(
        snapshot,
        serde_json::json!({
            "type": "snapshot", "seq": 0, "exam_id": "e0", "part": 1, "parts": 1,
            "students": [], "counts": {"active": 0, "idle": 0, "submitted": 0, "disconnected": 0},
            "phase": "in_progress", "server_time": null, "clock": null, "version": null
        })
    );
}

#[tokio::test]
async fn in_a_cluster_a_large_snapshot_comes_in_parts_on_every_instance() {
    let Some(redis) = crate::cluster::Redis::start() else {
        return;
    };
    const N: usize = 3_000; // ~1.5 MB: one frame would not fit in 1 MiB
    let apps = crate::cluster::cluster(&redis, 2, |_| {}).await;
    seed_students(&apps[0], "big", N).await;
    let (mut t0, whole) = apps[0].teacher("big", "t0").await;
    assert_eq!(whole["students"].as_array().unwrap().len(), N);
    assert!(
        whole["parts"].as_u64().unwrap() > 1,
        "in parts: {}",
        whole["parts"]
    );
    // A student on instance 0; a teacher joining instance 1 sees it too.
    let (_s, _) = apps[0].student("big", "live-1").await;
    let ev = t0.next_json().await;
    assert!(is_student_event(&ev, "live-1", "connected"), "{ev}");
    let token = apps[1].token("t1", Role::Teacher, &["big"]);
    let mut t1 = apps[1].connect("big", &token).await;
    let parts = t1.snapshot_parts().await;
    assert!(parts.len() > 1);
    assert!(parts.iter().all(|(bytes, _)| *bytes <= 256 * 1024));
    let whole = assemble_snapshot(parts.into_iter().map(|(_, v)| v).collect());
    let students = whole["students"].as_array().unwrap();
    assert_eq!(students.len(), N + 1);
    assert!(
        students
            .iter()
            .any(|s| s["student_id"] == "live-1" && s["connected"] == true)
    );
    assert_eq!(whole["seq"], ev["seq"]);
}

/// A teacher on a slow link: a small receive buffer, so the server's
/// writes wait for the reader.
async fn slow_teacher(app: &TestApp, exam: &str) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(app.addr).await.unwrap();
    let mut req = app.ws_url(exam).into_client_request().unwrap();
    let token = app.token("slow", Role::Teacher, &[exam]);
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let (ws, response) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    Client { ws, response }
}

#[tokio::test]
async fn a_teacher_slowly_receiving_a_large_snapshot_is_not_taken_for_dead() {
    // Two silent ping intervals close a connection (4000). While the server
    // writes the parts it cannot ping, so that silence must not count: it
    // pings once the parts are out, and the pong answers.
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let interval = std::time::Duration::from_secs(1);
    let app = spawn_app_with(|s| s.ws.ping_interval = interval).await;
    seed_students(&app, "big", N_SEEDED).await;
    let mut t = slow_teacher(&app, "big").await;
    let started = Instant::now();
    // The first 6 MB (more than the kernel's buffers hold: 4 MiB at most
    // to send) at a slow link's pace, ~1.7 MB/s: the server's write waits
    // for ~3.5 s, over three intervals. Then the rest at once, answering
    // the ping on the way (tungstenite pongs while reading). Parsed
    // afterwards: reading is fast, parsing in a debug build is not.
    let mut frames = Vec::new();
    let mut read = 0;
    let deadline = deadline() + WAIT * 3;
    loop {
        let msg = tokio::time::timeout_at(deadline, t.ws.next())
            .await
            .unwrap_or_else(|_| panic!("the whole snapshot within {:?}: {read} bytes", WAIT * 4));
        match msg {
            Some(Ok(Message::Text(text))) => {
                read += text.len();
                let (part, parts) = (number(&text, "part"), number(&text, "parts"));
                frames.push(text);
                if part == parts {
                    break;
                }
                if read < 6_000_000 {
                    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("a snapshot part, got {other:?}"),
        }
    }
    println!("SLOW SNAPSHOT received in {:?}", started.elapsed());
    // Still open after the download (reading answers the server's ping).
    // Before parsing: the server runs on its shard threads, not on this
    // test's runtime, so its ping timer keeps running while a debug build
    // parses 20,000 students here without reading.
    t.send_json(serde_json::json!({"type": "heartbeat", "ref": "hb"}))
        .await;
    assert_eq!(
        t.next_json().await,
        serde_json::json!({"type": "ack", "ref": "hb"}),
        "still open after the download"
    );
    let parts: Vec<(usize, Value)> = frames
        .iter()
        .map(|f| (f.len(), serde_json::from_str(f.as_str()).unwrap()))
        .collect();
    check_large(&parts, N_SEEDED);
}

/// The first `"name":N` of a frame, without parsing it (the header fields
/// come before any student).
fn number(text: &str, name: &str) -> u64 {
    let key = format!(r#""{name}":"#);
    let at = text.find(&key).expect("field") + key.len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("a number")
}
