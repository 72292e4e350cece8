//! Exam control, slice 1 (issue 14 items 2-5, PROTOCOL.md 4.13): phases over
//! REST, the timing model, the waiting room, `exam_update` to students and
//! watchers, the server's clock with accommodations and pauses, the
//! automatic start, end and `time_up`, on one instance, after a restart and
//! across two instances.
//!
//! Durations are seconds; every wait is for an event, with a deadline.

use std::time::Duration;

use examwatch::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use crate::{helpers::*, on_both_databases};

on_both_databases!(
    deadlines_follow_accommodations_pauses_and_end_with_time_up,
    the_clock_survives_a_restart_with_nobody_connected,
    a_hall_admitted_at_once_has_every_start_stored_and_the_earlier_one_kept,
);

const PHASES: [&str; 6] = [
    "draft",
    "scheduled",
    "in_progress",
    "paused",
    "ended",
    "grading",
];

/// The drawn transitions (shared/design/exam-clock.md).
fn drawn(from: &str, to: &str) -> bool {
    matches!(
        (from, to),
        ("draft", "scheduled")
            | ("scheduled", "in_progress")
            | ("in_progress", "paused")
            | ("paused", "in_progress")
            | ("draft" | "scheduled" | "in_progress" | "paused", "ended")
            | ("ended", "grading")
    )
}

/// The phases to go through from `draft` to reach `phase`.
fn path_to(phase: &str) -> &'static [&'static str] {
    match phase {
        "draft" => &[],
        "scheduled" => &["scheduled"],
        "in_progress" => &["scheduled", "in_progress"],
        "paused" => &["scheduled", "in_progress", "paused"],
        "ended" => &["ended"],
        _ => &["ended", "grading"],
    }
}

async fn create(app: &TestApp, token: &str, body: Value) -> (StatusCode, Value) {
    let res = app
        .api(Method::POST, "/v1/exams", token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap())
}

async fn set_phase(app: &TestApp, token: &str, exam: &str, phase: &str) -> (StatusCode, Value) {
    let res = app
        .api(Method::POST, &format!("/v1/exams/{exam}/phase"), token)
        .json(&json!({ "phase": phase }))
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap())
}

#[tokio::test]
async fn every_phase_transition_is_allowed_exactly_as_drawn() {
    let app = spawn_app().await;
    let admin = app.token("root", Role::Admin, &[]);
    let mut n = 0;
    for from in PHASES {
        for to in PHASES {
            n += 1;
            let id = format!("x{n}");
            let (status, _) = create(&app, &admin, json!({"id": id, "title": "T"})).await;
            assert_eq!(status, StatusCode::CREATED);
            for step in path_to(from) {
                let (status, body) = set_phase(&app, &admin, &id, step).await;
                assert_eq!(status, StatusCode::OK, "{from}: {step}: {body}");
            }
            let (status, body) = set_phase(&app, &admin, &id, to).await;
            if drawn(from, to) {
                assert_eq!(status, StatusCode::OK, "{from} -> {to}: {body}");
                assert_eq!(body["phase"], to);
            } else {
                assert_eq!(status, StatusCode::CONFLICT, "{from} -> {to}: {body}");
                assert_eq!(
                    body,
                    json!({"error": {"code": "invalid_transition",
                        "message": format!("an exam cannot go from {from} to {to}")}})
                );
                let got = app.get_json(&format!("/v1/exams/{id}"), &admin).await;
                assert_eq!(got["phase"], from, "a refused transition changes nothing");
            }
        }
    }
    let (status, body) = set_phase(&app, &admin, "nope", "ended").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
    // A proctor may not change phases.
    let proctor = app.token("p1", Role::Proctor, &["x1"]);
    let (status, body) = set_phase(&app, &proctor, "x1", "scheduled").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::FORBIDDEN, &json!("forbidden"))
    );
}

#[tokio::test]
async fn the_timing_model_is_checked_together_and_shown_back() {
    let app = spawn_app().await;
    let t = app.token("t1", Role::Teacher, &["a", "b", "c", "d", "e", "f"]);
    let t0 = now_ms() + 60_000;
    let (status, body) = create(
        &app,
        &t,
        json!({"id": "a", "title": "A", "opens_at": rfc3339(t0), "closes_at": rfc3339(t0 - 1000)}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_timing");
    assert_eq!(body["error"]["field"], "closes_at");
    let (status, body) = create(
        &app,
        &t,
        json!({"id": "b", "title": "B", "timing": "per_student"}),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (StatusCode::BAD_REQUEST, &json!("duration_minutes"))
    );
    let (status, body) = create(
        &app,
        &t,
        json!({"id": "c", "title": "C", "auto_start": true}),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (StatusCode::BAD_REQUEST, &json!("auto_start"))
    );
    let (status, body) = create(
        &app,
        &t,
        json!({"id": "d", "title": "D", "duration_minutes": 5, "duration_seconds": 300}),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (StatusCode::BAD_REQUEST, &json!("duration_seconds"))
    );
    let (status, body) = create(
        &app,
        &t,
        json!({"id": "e", "title": "E", "roster": [{"student_id": "s1", "name": "S", "time_multiplier": 0}]}),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (StatusCode::BAD_REQUEST, &json!("time_multiplier"))
    );
    // The old `starts_at` (with an offset) still works and is `opens_at`.
    let (status, body) = create(
        &app,
        &t,
        json!({"id": "f", "title": "F", "starts_at": "2030-01-01T10:00:00+02:00", "duration_minutes": 90}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["phase"], "draft", "draft by default");
    assert_eq!(body["opens_at"], "2030-01-01T08:00:00Z");
    assert_eq!(body["starts_at"], body["opens_at"]);
    assert_eq!(body["duration_seconds"], 5400);
    assert_eq!(body["duration_minutes"], 90);
    assert_eq!(body["timing"], "fixed");
    assert_eq!(body["auto_start"], false);
    assert!(
        body["server_time"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );
    // PATCH changes the timing, checked the same way.
    let res = app
        .api(Method::PATCH, "/v1/exams/f", &t)
        .json(&json!({"closes_at": "2030-01-01T09:00:00Z"}))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["field"], "closes_at", "{body}");
    let res = app
        .api(Method::PATCH, "/v1/exams/f", &t)
        .json(&json!({"closes_at": "2030-01-01T10:00:00Z", "auto_start": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (&body["closes_at"], &body["auto_start"]),
        (&json!("2030-01-01T10:00:00Z"), &json!(true))
    );
}

#[tokio::test]
async fn a_draft_or_unknown_exam_takes_no_student_and_scheduled_is_a_waiting_room() {
    let app = spawn_app().await;
    let t = app.token("t1", Role::Teacher, &["w"]);
    let s1 = app.token("s1", Role::Student, &["w", "ghost"]);
    for exam in ["ghost", "w"] {
        if exam == "w" {
            create(&app, &t, json!({"id": "w", "title": "W"})).await;
        }
        let err = app
            .try_connect_as_is(&app.ws_url(exam), Some(&s1), &[])
            .await
            .err()
            .expect("refused before the upgrade");
        let tungstenite::Error::Http(res) = err else {
            panic!("an HTTP refusal: {err}");
        };
        assert_eq!(res.status(), 403);
        let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "exam_not_open", "{exam}");
    }
    set_phase(&app, &t, "w", "scheduled").await;
    let mut teacher = app
        .try_connect_as_is(&app.ws_url("w"), Some(&t), &[])
        .await
        .unwrap();
    let snapshot = teacher.snapshot().await;
    assert_eq!(snapshot["phase"], "scheduled");
    // The whole clock, as exam_update carries it: a dashboard opened now
    // has the times without asking.
    assert_eq!(snapshot["clock"]["phase"], "scheduled", "{snapshot}");
    assert!(snapshot["clock"].get("opens_at").is_some(), "{snapshot}");
    assert!(
        snapshot["version"].as_i64().is_some_and(|v| v >= 1),
        "{snapshot}"
    );
    let mut s = app
        .try_connect_as_is(&app.ws_url("w"), Some(&s1), &[])
        .await
        .unwrap();
    let welcome = s.next_of_type("welcome").await;
    assert_eq!(welcome["phase"], "scheduled");
    assert_eq!(welcome["deadline"], Value::Null);
    let ev = teacher.next_of_type("student").await;
    assert_eq!(
        (&ev["cause"], &ev["student"]["student_id"]),
        (&json!("connected"), &json!("s1"))
    );
    for msg in [
        json!({"type": "progress", "question": "q1", "answered": 1, "ref": "p"}),
        json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": "a"}),
        json!({"type": "submit", "ref": "s"}),
    ] {
        let r = msg["ref"].clone();
        s.send_json(msg).await;
        assert_eq!(
            s.next_json().await,
            json!({"type": "error", "code": "exam_not_started", "message": "the exam has not started yet", "ref": r})
        );
    }
    // Focus and heartbeats still count in the waiting room.
    s.send_json(json!({"type": "heartbeat", "ref": "h"})).await;
    s.expect_ack("h").await;
    // Opened: the student's clock starts, both sides are told.
    let (status, _) = set_phase(&app, &t, "w", "in_progress").await;
    assert_eq!(status, StatusCode::OK);
    let update = s.next_of_type("exam_update").await;
    assert_eq!(update["phase"], "in_progress");
    assert_eq!(update["cause"], "phase");
    assert_eq!(update["paused"], false);
    assert_eq!(update["deadline"], Value::Null, "untimed");
    assert!(update.get("seq").is_none(), "the student's form has no seq");
    let watched = teacher.next_of_type("exam_update").await;
    assert_eq!(watched["phase"], "in_progress");
    assert!(
        watched["seq"]
            .as_u64()
            .is_some_and(|n| n > ev["seq"].as_u64().unwrap())
    );
    assert_eq!(watched["clock"]["phase"], "in_progress");
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": "a"}))
        .await;
    s.expect_ack("a").await;
    // Ended by hand: work stops, the student is submitted as time_up.
    set_phase(&app, &t, "w", "ended").await;
    let update = s.next_of_type("exam_update").await;
    assert_eq!(update["phase"], "ended");
    let time_up = teacher
        .next_where("s1 time_up", |v| is_student_event(v, "s1", "time_up"))
        .await;
    assert_eq!(time_up["student"]["status"], "submitted");
    s.send_json(json!({"type": "answer", "id": "a2", "question": "q2", "value": 2, "ref": "late"}))
        .await;
    assert_eq!(
        s.next_of_type("error").await,
        json!({"type": "error", "code": "exam_ended", "message": "the exam is over for you: nothing more is taken", "ref": "late"})
    );
    let admin = app.token("root", Role::Admin, &[]);
    let answers = app
        .get_json("/v1/exams/w/students/s1/answers", &admin)
        .await;
    assert_eq!(
        answers["answers"].as_array().map(Vec::len),
        Some(1),
        "{answers}"
    );
}

async fn deadlines_follow_accommodations_pauses_and_end_with_time_up(db: Backend) {
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    let t = app.token("t1", Role::Teacher, &["clock"]);
    let opens = now_ms();
    // Bob has 3 s; Ada has an extra minute (an accommodation).
    let (status, body) = create(
        &app,
        &t,
        json!({"id": "clock", "title": "Clock", "phase": "in_progress", "opens_at": rfc3339(opens),
               "duration_seconds": 3,
               "roster": [{"student_id": "ada", "name": "Ada", "extra_minutes": 1},
                          {"student_id": "bob", "name": "Bob"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(ms(&body["opens_at"]), opens);
    let (mut teacher, _) = app.teacher("clock", "t1").await;
    let (mut ada, aw) = app.student("clock", "ada").await;
    let (mut bob, bw) = app.student("clock", "bob").await;
    assert_eq!(ms(&bw["deadline"]), opens + 3000, "{bw}");
    assert_eq!(ms(&aw["deadline"]), opens + 3000 + 60_000, "{aw}");
    assert_eq!(aw["student"]["extra_minutes"], 1);
    // A pause stops every clock; resuming adds the paused time back.
    set_phase(&app, &t, "clock", "paused").await;
    let paused = bob.next_of_type("exam_update").await;
    assert_eq!(paused["paused"], true);
    bob.send_json(json!({"type": "progress", "question": "q1", "answered": 1, "ref": "p"}))
        .await;
    assert_eq!(bob.next_of_type("error").await["code"], "exam_paused");
    tokio::time::sleep(Duration::from_millis(400)).await; // a pause of measurable length
    set_phase(&app, &t, "clock", "in_progress").await;
    let resumed = bob.next_of_type("exam_update").await;
    assert_eq!(resumed["paused"], false);
    let bob_deadline = ms(&resumed["deadline"]);
    assert!(
        bob_deadline >= opens + 3400,
        "the pause is added back: {resumed}"
    );
    let ada_resumed = ada
        .next_where("Ada resumed", |v| {
            v["type"] == "exam_update" && v["paused"] == false
        })
        .await;
    assert_eq!(ms(&ada_resumed["deadline"]) - bob_deadline, 60_000);
    bob.send_json(json!({"type": "progress", "question": "q1", "answered": 1, "ref": "p2"}))
        .await;
    bob.expect_ack("p2").await;
    // Bob's time runs out: the server submits for him, once.
    let up = bob.next_of_type("exam_update").await;
    assert_eq!(up["cause"], "time_up");
    assert!(now_ms() >= bob_deadline, "not before the deadline");
    let ev = teacher
        .next_where("bob time_up", |v| is_student_event(v, "bob", "time_up"))
        .await;
    assert_eq!(ev["student"]["status"], "submitted");
    assert_eq!(ms(&ev["student"]["submitted_at"]), bob_deadline);
    bob.send_json(json!({"type": "answer", "id": "b1", "question": "q1", "value": 1, "ref": "b"}))
        .await;
    assert_eq!(bob.next_of_type("error").await["code"], "exam_ended");
    // Ada still has her minute.
    ada.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": "a"}))
        .await;
    ada.expect_ack("a").await;
    // The report says how it ended, and the extra time granted.
    app.flushed().await;
    let report = app
        .api(Method::GET, "/v1/exams/clock/report.csv", &t)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let row = |id: &str| {
        report
            .lines()
            .find(|l| l.starts_with(&format!("{id},")))
            .unwrap_or_else(|| panic!("{id}: {report}"))
            .to_owned()
    };
    assert!(row("bob").ends_with(",0,time_up"), "{report}");
    assert!(row("ada").ends_with(",60,"), "{report}");
}

#[tokio::test]
async fn an_answer_that_arrived_before_the_deadline_is_stored_even_if_committed_after() {
    // Commits wait 3 s for a batch: the answer's lands after the deadline.
    let app = spawn_app_with(|s| {
        s.database.flush_interval = Duration::from_millis(3000);
        s.database.events_flush_interval = Duration::from_millis(3000);
        s.database.batch_max = 100_000;
    })
    .await;
    let t = app.token("t1", Role::Teacher, &["edge"]);
    create(
        &app,
        &t,
        json!({"id": "edge", "title": "Edge", "phase": "in_progress", "timing": "per_student", "duration_seconds": 2}),
    )
    .await;
    let (mut s, welcome) = app.student("edge", "s1").await;
    let deadline = ms(&welcome["deadline"]);
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": "B", "ref": "a"}))
        .await;
    let sent_at = now_ms();
    assert!(sent_at < deadline, "sent before the deadline");
    s.expect_ack("a").await;
    assert!(now_ms() > deadline, "acked after it: the commit came later");
    let admin = app.token("root", Role::Admin, &[]);
    let answers = app
        .get_json("/v1/exams/edge/students/s1/answers", &admin)
        .await;
    assert_eq!(answers["answers"][0]["value"], "B", "{answers}");
}

#[tokio::test]
async fn per_student_timing_starts_at_admission_with_the_multiplier() {
    let app = spawn_app().await;
    let t = app.token("t1", Role::Teacher, &["ps"]);
    create(
        &app,
        &t,
        json!({"id": "ps", "title": "PS", "phase": "in_progress", "timing": "per_student",
               "duration_seconds": 20,
               "roster": [{"student_id": "ada", "name": "Ada", "time_multiplier": 1.5},
                          {"student_id": "bob", "name": "Bob"}]}),
    )
    .await;
    let (_ada, aw) = app.student("ps", "ada").await;
    let (_bob, bw) = app.student("ps", "bob").await;
    let left = |w: &Value| ms(&w["deadline"]) - ms(&w["server_time"]);
    assert!((29_900..=30_000).contains(&left(&aw)), "30 s for Ada: {aw}");
    assert!((19_900..=20_000).contains(&left(&bw)), "20 s for Bob: {bw}");
    // An accommodation changed during the exam reaches the student at once.
    let res = app
        .api(Method::PATCH, "/v1/exams/ps/students/bob", &t)
        .json(&json!({"extra_minutes": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut bob = _bob;
    let update = bob.next_of_type("exam_update").await;
    assert_eq!(update["cause"], "accommodation");
    assert_eq!(update["extra_minutes"], 2);
    assert_eq!(ms(&update["deadline"]), ms(&bw["deadline"]) + 120_000);
}

#[tokio::test]
async fn an_exam_starts_and_ends_by_itself_with_nobody_acting() {
    let app = spawn_app_with(|s| s.exam.control_scan = Duration::from_millis(100)).await;
    let t = app.token("t1", Role::Teacher, &["auto"]);
    let opens = now_ms() + 1000;
    let (status, body) = create(
        &app,
        &t,
        json!({"id": "auto", "title": "Auto", "phase": "scheduled", "auto_start": true,
               "opens_at": rfc3339(opens), "closes_at": rfc3339(opens + 1500)}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // As is: the test helpers would open a scheduled exam themselves.
    let s1 = app.token("s1", Role::Student, &["auto"]);
    let mut s = app
        .try_connect_as_is(&app.ws_url("auto"), Some(&s1), &[])
        .await
        .unwrap();
    let welcome = s.next_of_type("welcome").await;
    assert_eq!(welcome["phase"], "scheduled");
    let started = s.next_of_type("exam_update").await;
    assert_eq!(
        (&started["phase"], &started["cause"]),
        (&json!("in_progress"), &json!("auto"))
    );
    assert!(now_ms() >= opens, "not before opens_at");
    let ended = s
        .next_where("ended", |v| {
            v["type"] == "exam_update" && v["phase"] == "ended"
        })
        .await;
    assert_eq!(ended["cause"], "auto");
    let got = app.get_json("/v1/exams/auto", &t).await;
    assert_eq!(got["phase"], "ended");
    assert!(got["ended_at"].is_string());
}

async fn the_clock_survives_a_restart_with_nobody_connected(db: Backend) {
    let Some(app) = spawn_app_on(db, |s| s.exam.control_scan = Duration::from_millis(100)).await
    else {
        return;
    };
    let t = app.token("t1", Role::Teacher, &["r"]);
    let closes = now_ms() + 2500;
    create(
        &app,
        &t,
        json!({"id": "r", "title": "R", "phase": "in_progress", "closes_at": rfc3339(closes)}),
    )
    .await;
    let (mut s, _) = app.student("r", "s1").await;
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": "a"}))
        .await;
    s.expect_ack("a").await;
    s.close().await;
    let url = app.db_url.clone();
    let _parts = app.stop().await;
    let app2 = spawn_app_on_url(Some(url), |s| {
        s.exam.control_scan = Duration::from_millis(100)
    })
    .await;
    let t2 = app2.token("t1", Role::Teacher, &["r"]);
    let mut ended = false;
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < until {
        let got = app2.get_json("/v1/exams/r", &t2).await;
        if got["phase"] == "ended" {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ended, "the restarted instance ended the exam at closes_at");
    assert!(now_ms() >= closes);
    let report = app2
        .api(Method::GET, "/v1/exams/r/report.csv", &t2)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let row = report
        .lines()
        .find(|l| l.starts_with("s1,"))
        .unwrap_or_default();
    assert!(
        row.contains(",submitted,"),
        "submitted at the end: {report}"
    );
    assert!(row.ends_with(",time_up"), "by the server: {report}");
}

#[tokio::test]
async fn in_a_cluster_a_change_made_on_one_instance_reaches_students_on_another() {
    let Some(redis) = crate::cluster::Redis::start() else {
        return;
    };
    let apps = crate::cluster::cluster(&redis, 2, |_| {}).await;
    let (a, b) = (&apps[0], &apps[1]);
    let t = b.token("t1", Role::Teacher, &["cx"]);
    create(
        b,
        &t,
        json!({"id": "cx", "title": "CX", "phase": "in_progress", "duration_seconds": 3600}),
    )
    .await;
    let (mut s, welcome) = a.student("cx", "s1").await;
    let (mut teacher, _) = b.teacher("cx", "t1").await;
    // An accommodation set on B: the student on A is told at once.
    let res = b
        .api(Method::PATCH, "/v1/exams/cx/students/s1", &t)
        .json(&json!({"extra_minutes": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let update = s.next_of_type("exam_update").await;
    assert_eq!(ms(&update["deadline"]), ms(&welcome["deadline"]) + 600_000);
    let ev = teacher
        .next_where("s1 timing", |v| is_student_event(v, "s1", "timing"))
        .await;
    assert_eq!(ev["student"]["extra_minutes"], 10);
    // An extension posted on B: the student on A gets their new deadline
    // and acknowledges it; B's answer says it was delivered.
    let before = ms(&update["deadline"]);
    let post = b
        .api(Method::POST, "/v1/exams/cx/actions", &t)
        .json(&json!({"id": "x1", "kind": "extend", "students": ["s1"], "minutes": 5}));
    let answer =
        tokio::spawn(async move { post.send().await.unwrap().json::<Value>().await.unwrap() });
    let extended = s
        .next_where("extend", |v| {
            v["type"] == "exam_update" && v["cause"] == "extend"
        })
        .await;
    assert_eq!(ms(&extended["deadline"]), before + 300_000);
    assert_eq!(extended["id"], "x1");
    s.send_json(json!({"type": "received", "id": "x1"})).await;
    let answer = answer.await.unwrap();
    assert_eq!(answer["students"][0]["student_id"], "s1", "{answer}");
    assert_eq!(answer["students"][0]["delivery"], "delivered", "{answer}");
    // A pause set on B stops the student on A.
    set_phase(b, &t, "cx", "paused").await;
    let update = s.next_of_type("exam_update").await;
    assert_eq!(
        (&update["phase"], &update["paused"]),
        (&json!("paused"), &json!(true))
    );
    s.send_json(json!({"type": "progress", "question": "q1", "answered": 1, "ref": "p"}))
        .await;
    assert_eq!(s.next_of_type("error").await["code"], "exam_paused");
    // Ended on B: the student on A is submitted exactly once.
    set_phase(b, &t, "cx", "ended").await;
    let ev = teacher
        .next_where("s1 time_up", |v| is_student_event(v, "s1", "time_up"))
        .await;
    assert_eq!(ev["student"]["status"], "submitted");
    s.send_json(json!({"type": "heartbeat", "ref": "h"})).await;
    s.expect_ack("h").await;
    teacher
        .send_json(json!({"type": "heartbeat", "ref": "th"}))
        .await;
    let mut more = 0;
    loop {
        let v = teacher.next_json().await;
        if v["ref"] == "th" {
            break;
        }
        if is_student_event(&v, "s1", "time_up") {
            more += 1;
        }
    }
    assert_eq!(more, 0, "time_up is recorded once in the cluster");
}

/// A deadline pushed past year 9999 (extra time on an exam that closes at
/// its end) is written as the last instant RFC 3339 has, and the exam's
/// room keeps working: it used to panic encoding the `welcome`.
#[tokio::test]
async fn a_deadline_past_year_9999_does_not_break_the_room() {
    let app = spawn_app().await;
    let t = app.token("t1", Role::Teacher, &["far"]);
    let (status, body) = create(
        &app,
        &t,
        json!({"id": "far", "title": "Far", "phase": "in_progress", "closes_at": "9999-12-31T23:00:00Z",
               "roster": [{"student_id": "s1", "name": "S", "extra_minutes": 10000}]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (mut s, welcome) = app.student("far", "s1").await;
    assert_eq!(welcome["deadline"], "9999-12-31T23:59:59.999Z");
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": "a"}))
        .await;
    s.expect_ack("a").await;
    let (_t, snapshot) = app.teacher("far", "t1").await;
    assert_eq!(
        snapshot["students"][0]["deadline"],
        "9999-12-31T23:59:59.999Z"
    );
}

#[tokio::test]
async fn a_clock_started_elsewhere_a_moment_before_is_the_one_that_counts() {
    let app = spawn_app().await;
    let t = app.token("t1", Role::Teacher, &["ps"]);
    let (status, exam) = create(
        &app,
        &t,
        json!({"id": "ps", "title": "PS", "phase": "in_progress", "timing": "per_student", "duration_seconds": 600}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{exam}");
    let (_teacher, _) = app.teacher("ps", "t1").await;
    // Another instance admitted s1 a minute ago and stored it; its
    // announcement has not reached this room (the room started before).
    let started = now_ms() - 60_000;
    let db = sqlx::SqlitePool::connect(&app.db_url).await.unwrap();
    sqlx::query(
        "INSERT INTO student_control (exam_id, student_id, started_at) VALUES ('ps', 's1', $1)",
    )
    .bind(started)
    .execute(&db)
    .await
    .unwrap();
    // Admitted here, the room guesses "now"; the stored start wins, and the
    // student is told the deadline it makes.
    let (mut s, welcome) = app.student("ps", "s1").await;
    let guessed = ms(&welcome["deadline"]);
    assert!(
        guessed > started + 600_000,
        "the room's own guess first: {welcome}"
    );
    let update = s
        .next_where("the corrected deadline", |v| v["type"] == "exam_update")
        .await;
    assert_eq!(ms(&update["deadline"]), started + 600_000, "{update}");
}

#[tokio::test]
async fn exams_from_before_exam_control_are_in_progress_after_the_upgrade() {
    // A database as a server of migration 0004 left it: the phases it
    // wrote were labels ('running' from the demo, 'scheduled' by default).
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/examwatch.db", dir.path().display());
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
    let pool = sqlx::SqlitePool::connect_with(options.create_if_missing(true))
        .await
        .unwrap();
    let mut before = sqlx::migrate!("migrations/sqlite");
    before.migrations = std::borrow::Cow::Owned(before.migrations[..4].to_vec());
    before.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO exams (id, title, phase, created_by, created_at) \
         VALUES ('old', 'Old', 'running', 't1', 0), ('lbl', 'Label', 'scheduled', 't1', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    // The new server migrates it; both exams keep taking students.
    let app = spawn_app_on_url(Some(url), |_| {}).await;
    let t = app.token("t1", Role::Teacher, &["old", "lbl"]);
    for exam in ["old", "lbl"] {
        let got = app.get_json(&format!("/v1/exams/{exam}"), &t).await;
        assert_eq!(got["phase"], "in_progress", "{got}");
        let s = app.token("s1", Role::Student, &[exam]);
        let mut c = app
            .try_connect_as_is(&app.ws_url(exam), Some(&s), &[])
            .await
            .expect("admitted as before");
        let welcome = c.next_of_type("welcome").await;
        assert_eq!(welcome["phase"], "in_progress", "{welcome}");
    }
}

/// Thirty students admitted at once: the room stores their starts in a
/// few transactions (each holds who was admitted while the previous one
/// was out), every one is stored, and a start another instance stored
/// first is kept and corrects that student's deadline.
async fn a_hall_admitted_at_once_has_every_start_stored_and_the_earlier_one_kept(db: Backend) {
    use sqlx::Row;
    let Some(app) = spawn_app_on(db, |_| {}).await else {
        return;
    };
    let t = app.token("t1", Role::Teacher, &["hall"]);
    let (status, exam) = create(
        &app,
        &t,
        json!({"id": "hall", "title": "Hall", "phase": "in_progress", "timing": "per_student", "duration_seconds": 600}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{exam}");
    let (_teacher, _) = app.teacher("hall", "t1").await;
    let pool = db_pool(&app).await;
    let started = now_ms() - 60_000;
    sqlx::query(
        "INSERT INTO student_control (exam_id, student_id, started_at) VALUES ('hall', 's7', $1)",
    )
    .bind(started)
    .execute(&pool)
    .await
    .unwrap();
    let joins = (0..30).map(|i| {
        let app = &app;
        async move { app.student("hall", &format!("s{i}")).await }
    });
    let mut students = futures_util::future::join_all(joins).await;
    let (s7, _) = &mut students[7];
    let update = s7
        .next_where("the corrected deadline", |v| v["type"] == "exam_update")
        .await;
    assert_eq!(ms(&update["deadline"]), started + 600_000, "{update}");
    // Each admission's write is out or queued behind the one out.
    let until = deadline();
    let rows = loop {
        let rows = sqlx::query(
            "SELECT student_id, started_at FROM student_control WHERE exam_id = 'hall' ORDER BY student_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if rows.len() == 30 || tokio::time::Instant::now() > until {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rows.len(), 30);
    for row in rows {
        let (sid, at): (String, Option<i64>) = (row.get(0), row.get(1));
        let at = at.unwrap_or_else(|| panic!("{sid}: no start stored"));
        if sid == "s7" {
            assert_eq!(at, started, "the earlier start is kept");
        } else {
            assert!(at > started, "{sid}: {at}");
        }
    }
}
