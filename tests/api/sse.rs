//! `GET /v1/exams/{id}/events`: a watcher's events as Server-Sent Events
//! (docs/PROTOCOL.md 7): ids are seqs, names are message types, a
//! `Last-Event-ID` resumes (replay, or a snapshot when the gap cannot be
//! replayed), heartbeats keep it open, and it ends cleanly.

use std::time::Duration;

use examwatch::auth::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::cluster::{Processes, Redis, token_e1, ws_e1};
use crate::helpers::*;

fn student_event(ev: &SseEvent, id: u64, student: &str, cause: &str) {
    assert_eq!(
        ev.lines[..2],
        [format!("id: {id}"), "event: student".to_owned()],
        "{ev:?}"
    );
    assert_eq!(ev.data["student"]["student_id"], student, "{ev:?}");
    assert_eq!(ev.data["cause"], cause, "{ev:?}");
}

async fn send_progress(s: &mut Client, question: u32, answered: u32) {
    s.send_json(
        json!({"type": "progress", "question": question, "answered": answered, "ref": question}),
    )
    .await;
    s.expect_ack(question).await;
}

/// The text of the frame numbered `seq` on a teacher socket, unparsed.
async fn raw_frame_with_seq(socket: &mut Client, seq: u64) -> String {
    use futures_util::StreamExt;
    let wait = async {
        loop {
            let msg = socket.ws.next().await.expect("open").expect("a frame");
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if v["seq"] == seq {
                    return t.to_string();
                }
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("the frame arrived")
}

/// The `{"error": {"code"}}` of a refused stream, with its status.
async fn refusal(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().await.expect("a JSON error");
    (status, body["error"]["code"].as_str().unwrap_or("").into())
}

#[tokio::test]
async fn a_watcher_gets_the_snapshot_then_live_student_events() {
    let app = spawn_app().await;
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let mut sse = app.sse("e1", &teacher).await;
    let (mut socket, _) = app.teacher("e1", "t2").await;
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");

    let snapshot = sse.next_event().await;
    assert_eq!(snapshot.lines[..2], ["id: 0", "event: snapshot"]);
    assert_eq!(snapshot.data["students"], json!([]));
    assert_eq!(snapshot.data["exam_id"], "e1");

    let (mut s1, _) = app.student("e1", "s1").await;
    student_event(&sse.next_event().await, 1, "s1", "connected");
    send_progress(&mut s1, 3, 2).await;
    let ev = sse.next_event().await;
    student_event(&ev, 2, "s1", "progress");
    assert_eq!(ev.data["student"]["answered"], 2);
    // The data line is the socket's frame, byte for byte (encoded once).
    let frame = raw_frame_with_seq(&mut socket, 2).await;
    assert_eq!(ev.lines[2], format!("data: {frame}"));

    assert_eq!(app.metric("examwatch_sse_streams"), 1);
    assert_eq!(
        app.metric("examwatch_teachers_connected"),
        1,
        "the socket only"
    );
    assert!(app.metric("examwatch_frames_out_total") >= 3);
}

#[tokio::test]
async fn last_event_id_replays_exactly_the_missed_events() {
    let app = spawn_app().await;
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let mut first = app.sse("e1", &teacher).await;
    assert_eq!(first.next_event().await.id, Some(0));
    let (mut s1, _) = app.student("e1", "s1").await;
    student_event(&first.next_event().await, 1, "s1", "connected");
    drop(first);
    // Missed while away: seqs 2, 3, 4.
    for q in 1..=3 {
        send_progress(&mut s1, q, q).await;
    }

    let url = app.events_url("e1");
    let by_header = app
        .sse_get(&url, Some(&teacher), &[("last-event-id", "1")])
        .await;
    let mut by_header = SseClient::open(by_header).await;
    let by_query = app
        .sse_get(&format!("{url}?last_event_id=3"), Some(&teacher), &[])
        .await;
    let mut by_query = SseClient::open(by_query).await;
    // The socket's parameter works too; the header wins over the query.
    let by_last_seq = app
        .sse_get(
            &format!("{url}?last_seq=0"),
            Some(&teacher),
            &[("last-event-id", "4")],
        )
        .await;
    let mut by_last_seq = SseClient::open(by_last_seq).await;
    for id in 2..=4 {
        student_event(&by_header.next_event().await, id, "s1", "progress");
    }
    student_event(&by_query.next_event().await, 4, "s1", "progress");
    // Nothing else came before the next live event: no snapshot, no repeat.
    send_progress(&mut s1, 4, 4).await;
    for sse in [&mut by_header, &mut by_query, &mut by_last_seq] {
        student_event(&sse.next_event().await, 5, "s1", "progress");
    }
    assert_eq!(app.metric("examwatch_resume_replays_total"), 2);
    assert_eq!(app.metric("examwatch_resume_snapshots_total"), 0);
}

#[tokio::test]
async fn a_last_event_id_the_history_no_longer_holds_gets_a_snapshot() {
    let app = spawn_app_with(|s| s.exam.history_size = 2).await;
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let (mut s1, _) = app.student("e1", "s1").await; // seq 1
    for q in 1..=4 {
        send_progress(&mut s1, q, q).await; // seqs 2..=5
    }
    let resp = app
        .sse_get(
            &app.events_url("e1"),
            Some(&teacher),
            &[("last-event-id", "1")],
        )
        .await;
    let mut sse = SseClient::open(resp).await;
    let snapshot = sse.next_event().await;
    // Never a silent gap: the state as of seq 5, under that id.
    assert_eq!(snapshot.lines[..2], ["id: 5", "event: snapshot"]);
    let students = snapshot.data["students"].as_array().expect("students");
    assert_eq!(students.len(), 1);
    assert_eq!(students[0]["student_id"], "s1");
    assert_eq!(students[0]["answered"], 4);
    assert_eq!(app.metric("examwatch_resume_snapshots_total"), 1);
    send_progress(&mut s1, 5, 5).await;
    student_event(&sse.next_event().await, 6, "s1", "progress");
}

#[tokio::test]
async fn the_token_may_come_in_the_query_and_refusals_are_answered_like_the_sockets() {
    let app = spawn_app_with(|s| {
        s.server.allowed_origins = vec!["https://exams.example".into()];
    })
    .await;
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let url = app.events_url("e1");

    let resp = app
        .sse_get(&format!("{url}?access_token={teacher}"), None, &[])
        .await;
    let mut sse = SseClient::open(resp).await;
    assert_eq!(sse.next_event().await.event, "snapshot");
    let resp = app
        .sse_get(&url, Some(&teacher), &[("origin", "https://exams.example")])
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);

    let none = app.sse_get(&url, None, &[]).await;
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        refusal(none).await,
        (StatusCode::UNAUTHORIZED, "missing_token".into())
    );
    let student = app.token("s1", Role::Student, &["e1"]);
    assert_eq!(
        refusal(app.sse_get(&url, Some(&student), &[]).await).await,
        (StatusCode::FORBIDDEN, "watchers_only".into())
    );
    let other = app.token("t2", Role::Teacher, &["e2"]);
    assert_eq!(
        refusal(app.sse_get(&url, Some(&other), &[]).await).await,
        (StatusCode::FORBIDDEN, "exam_not_granted".into())
    );
    let evil = [("origin", "https://evil.example")];
    assert_eq!(
        refusal(app.sse_get(&url, Some(&teacher), &evil).await).await,
        (StatusCode::FORBIDDEN, "origin_not_allowed".into())
    );
    let bad_id = [("last-event-id", "abc")];
    assert_eq!(
        refusal(app.sse_get(&url, Some(&teacher), &bad_id).await).await,
        (StatusCode::BAD_REQUEST, "invalid_last_event_id".into())
    );
    let bad_query = format!("{url}?last_seq=-1");
    assert_eq!(
        refusal(app.sse_get(&bad_query, Some(&teacher), &[]).await).await,
        (StatusCode::BAD_REQUEST, "invalid_query".into())
    );
    let bad_exam = app.events_url("a%20b");
    assert_eq!(
        refusal(app.sse_get(&bad_exam, Some(&teacher), &[]).await).await,
        (StatusCode::BAD_REQUEST, "invalid_exam_id".into())
    );
    // Counted with the socket's refused handshakes.
    assert_eq!(app.metric("examwatch_handshakes_rejected_total"), 7);
}

#[tokio::test]
async fn a_subject_over_its_handshake_limit_gets_429_like_on_the_socket() {
    let app = spawn_app_with(|s| {
        s.limits.handshakes_per_subject = 1;
        s.limits.handshake_window = Duration::from_secs(60);
    })
    .await;
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let _open = app.sse("e1", &teacher).await;
    let again = app
        .sse_get(&app.events_url("e1"), Some(&teacher), &[])
        .await;
    let retry_after: u64 = again.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        refusal(again).await,
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited".into())
    );
    // The socket shares the budget: its handshake is refused as well.
    let ws = app
        .try_connect(&app.ws_url("e1"), Some(&teacher), &[])
        .await;
    assert!(ws.is_err(), "the socket handshake is over the same limit");
    assert_eq!(app.metric("examwatch_handshakes_rate_limited_total"), 2);
}

#[tokio::test]
async fn heartbeats_arrive_every_configured_interval() {
    let app = spawn_app_with(|s| s.sse.heartbeat = Duration::from_millis(100)).await;
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let mut sse = app.sse("e1", &teacher).await;
    assert_eq!(sse.next_event().await.event, "snapshot");
    let started = tokio::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(sse.next_block().await, Some(vec![": ping".to_owned()]));
    }
    // Three intervals, not one burst and not the 15 s default.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_watcher_that_goes_away_leaves_the_room() {
    let app = spawn_app_with(|s| {
        s.sse.heartbeat = Duration::from_millis(50);
        s.exam.room_linger = Duration::from_millis(50);
    })
    .await;
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let mut sse = app.sse("e1", &teacher).await;
    assert_eq!(sse.next_event().await.event, "snapshot");
    assert_eq!(app.metric("examwatch_sse_streams"), 1);
    assert_eq!(app.metric("examwatch_rooms"), 1);
    drop(sse);
    eventually("the stream's task ended", || {
        app.metric("examwatch_sse_streams") == 0
    })
    .await;
    // A room with a watcher never ends: it did, so the Leave arrived.
    eventually("the exam's room ended", || {
        app.metric("examwatch_rooms") == 0
    })
    .await;
}

#[tokio::test]
async fn shutdown_refuses_new_streams_then_ends_open_ones_cleanly() {
    let mut app = spawn_app_with(|s| s.server.drain_delay = Duration::from_millis(500)).await;
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let mut sse = app.sse("e1", &teacher).await;
    assert_eq!(sse.next_event().await.event, "snapshot");
    let url = app.events_url("e1");
    let started = tokio::time::Instant::now();
    app.begin_shutdown();
    eventually("the server drains", || app.state.draining()).await;
    // The listener stopped accepting (a rolling restart, tests/api/drain.rs):
    // a new stream is refused at connect.
    let refused = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&teacher)
        .send()
        .await;
    assert!(
        refused.as_ref().is_err_and(|e| e.is_connect()),
        "refused at connect: {refused:?}"
    );
    // The open stream ends with the chunked terminator, not a reset.
    sse.expect_end().await;
    app.stop().await;
    // The stream did not hold the drain: well under shutdown_timeout (3 s).
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
}

#[tokio::test]
async fn a_watcher_that_never_reads_is_ended_as_too_slow() {
    let app = spawn_app_with(|s| {
        s.ws.teacher_queue = 16;
        s.exam.history_size = 8;
        s.limits.max_message_bytes = 64 * 1024;
        s.limits.max_announcement_chars = 60_000;
        s.limits.messages_per_second = 100_000;
    })
    .await;
    let teacher = app.token("slow", Role::Teacher, &["e1"]);
    // A raw client that sends its request and never reads a byte.
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /v1/exams/e1/events HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {teacher}\r\n\r\n",
        app.addr
    );
    slow.write_all(request.as_bytes()).await.unwrap();
    eventually("the slow stream is open", || {
        app.metric("examwatch_sse_streams") == 1
    })
    .await;
    let (mut announcer, _) = app.teacher("e1", "announcer").await;
    let text = "x".repeat(50_000);
    let mut sent = 0;
    while app.metric("examwatch_slow_consumer_closes_total") == 0 {
        assert!(
            sent < 2_000,
            "never closed as too slow after {sent} announcements"
        );
        announcer
            .send_json(json!({"type": "announce", "text": text, "ref": sent}))
            .await;
        announcer.expect_ack(sent).await;
        sent += 1;
    }
    // The stream's task ended and left the room, though its client still
    // holds the connection without reading.
    eventually("the slow stream ended", || {
        app.metric("examwatch_sse_streams") == 0
    })
    .await;
    assert_eq!(app.metric("examwatch_slow_consumer_closes_total"), 1);
    let slow_path = [("path", "sse_watcher")];
    assert_eq!(
        app.metric_where("examwatch_slow_consumer_closes_total", &slow_path),
        1
    );
    drop(slow);
}

#[tokio::test]
async fn a_stream_on_one_instance_sees_a_student_on_another() {
    let Some(redis) = Redis::start() else { return };
    let nodes = Processes::start(&redis, "5s", "5s", "5s");
    let teacher = token_e1(&nodes.keys, "t1", Role::Teacher);
    let url = format!("http://{}/v1/exams/e1/events", nodes.b.addr);
    let mut sse = SseClient::open(sse_get_at(&url, Some(&teacher), &[]).await).await;
    let snapshot = sse.next_event().await;
    assert_eq!(snapshot.event, "snapshot");
    let base = snapshot.id.expect("the snapshot has an id");

    let student = token_e1(&nodes.keys, "s1", Role::Student);
    let mut s1 = connect_url(&ws_e1(&nodes.a.addr), &student).await;
    s1.next_of_type("welcome").await;
    student_event(
        &sse.next_event_named("student").await,
        base + 1,
        "s1",
        "connected",
    );
    send_progress(&mut s1, 7, 1).await;
    let ev = sse.next_event().await;
    student_event(&ev, base + 2, "s1", "progress");
    assert_eq!(ev.data["student"]["answered"], 1);
}

#[tokio::test]
async fn the_openapi_document_describes_the_stream() {
    let app = spawn_app().await;
    let doc: Value = reqwest::get(app.http("/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let op = &doc["paths"]["/v1/exams/{exam_id}/events"]["get"];
    let mut statuses: Vec<&String> = op["responses"]
        .as_object()
        .expect("responses")
        .keys()
        .collect();
    statuses.sort();
    assert_eq!(statuses, ["200", "400", "401", "403", "429", "503"], "{op}");
    assert!(
        op["responses"]["200"]["content"]["text/event-stream"].is_object(),
        "{op}"
    );
    let params: Vec<&str> = op["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in [
        "exam_id",
        "access_token",
        "last_event_id",
        "last_seq",
        "Last-Event-ID",
    ] {
        assert!(params.contains(&name), "{name} in {params:?}");
    }
}
