//! Irregularities (issue 14 item 8): every alert has an `alert_id`, a
//! `category` and a `state`; the new automatic alerts fire when they
//! should and stay quiet when they should not; many students dropping at
//! once is one `network_incident`; proctors file reports and resolve
//! alerts over REST, on any instance, and the report counts them.

use std::time::Duration;

use examwatch::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::{
    MaybeTlsStream,
    tungstenite::{client::IntoClientRequest, http::HeaderValue},
};

use crate::cluster::{Redis, cluster};
use crate::helpers::*;

/// Nothing folded: every alert is sent (folding is tests/api/limits.rs).
fn unfolded(s: &mut examwatch::Settings) {
    s.exam.alert_window = Duration::ZERO;
}

/// The next `alert` event for `student` (null for a room's alert).
async fn next_alert(t: &mut Client, student: Value) -> Value {
    t.next_where("an alert", |v| {
        v["type"] == "alert" && v["student_id"] == student
    })
    .await
}

/// Reads alerts about `student` until one of `kind`, returning those
/// before it: sent after something that would have raised them, a
/// sentinel proves they did not come.
async fn alerts_until(t: &mut Client, student: &str, kind: &str) -> Vec<String> {
    let mut before = Vec::new();
    loop {
        let a = next_alert(t, json!(student)).await;
        if a["kind"] == kind {
            return before;
        }
        before.push(a["kind"].as_str().unwrap_or_default().to_owned());
    }
}

fn assert_alert_shape(a: &Value, kind: &str, category: &str) {
    assert_eq!(a["kind"], kind, "{a}");
    assert_eq!(a["category"], category, "{a}");
    assert_eq!(a["state"], "open", "{a}");
    let id = a["alert_id"].as_str().expect("alert_id is a string");
    assert_eq!(id.len(), 36, "a UUID: {a}");
    assert!(
        a["seq"].as_u64().is_some() && a["count"].as_u64().is_some(),
        "{a}"
    );
}

/// A student connection from `ip` (any 127.0.0.0/8 address is this host)
/// with `user_agent`.
async fn student_from(app: &TestApp, exam: &str, sub: &str, ip: &str, user_agent: &str) -> Client {
    student_after(app, exam, sub, ip, user_agent, None).await.0
}

/// Like `student_from`, reconnecting after the session `previous` (if
/// given); also returns the `welcome`.
async fn student_after(
    app: &TestApp,
    exam: &str,
    sub: &str,
    ip: &str,
    user_agent: &str,
    previous: Option<&Value>,
) -> (Client, Value) {
    let mut url = app.ws_url(exam);
    if let Some(p) = previous {
        url = format!(
            "{url}?previous_session={}",
            p["session_id"].as_str().unwrap()
        );
    }
    let mut c = upgraded_from(app, &url, exam, sub, ip, user_agent).await;
    let welcome = c.next_of_type("welcome").await;
    (c, welcome)
}

/// A connection from `ip` with `user_agent`, upgraded, before any frame.
async fn attempt_from(app: &TestApp, exam: &str, sub: &str, ip: &str, user_agent: &str) -> Client {
    upgraded_from(app, &app.ws_url(exam), exam, sub, ip, user_agent).await
}

async fn upgraded_from(
    app: &TestApp,
    url: &str,
    exam: &str,
    sub: &str,
    ip: &str,
    user_agent: &str,
) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(app.addr).await.expect("connect");
    let mut req = url.into_client_request().unwrap();
    let token = app.token(sub, Role::Student, &[exam]);
    let h = req.headers_mut();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h.insert("user-agent", HeaderValue::from_str(user_agent).unwrap());
    let (ws, response) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("handshake in time")
    .expect("handshake accepted");
    Client { ws, response }
}

#[tokio::test]
async fn a_refused_second_device_is_not_the_previous_session() {
    let Some(redis) = Redis::start() else { return };
    let apps = cluster(&redis, 2, |s| {
        unfolded(s);
        s.exam.disconnect_grace = Duration::from_secs(30);
        s.exam.second_session = examwatch::config::SecondSession::Reject;
    })
    .await;
    let (a, b) = (&apps[0], &apps[1]);
    let (mut t, _) = a.teacher("e1", "t1").await;
    let (s, w) = student_after(a, "e1", "s1", "127.0.0.1", "Firefox/1", None).await;
    // A phone tries the same account on the other instance: refused.
    let mut phone = attempt_from(b, "e1", "s1", "127.0.0.9", "Phone/9").await;
    assert_eq!(phone.expect_close().await.0, Some(4009));
    // The laptop's network blinks; it comes back, through the other
    // instance: compared with itself, not with the refused phone.
    s.close().await;
    let (mut s, _) = student_after(b, "e1", "s1", "127.0.0.1", "Firefox/1", Some(&w)).await;
    s.send_json(json!({"type": "focus", "state": "fullscreen_exit"}))
        .await;
    assert_eq!(
        alerts_until(&mut t, "s1", "fullscreen_exit").await,
        ["second_session"],
        "only the refusal's own alert"
    );
}

#[tokio::test]
async fn fullscreen_exit_is_a_test_taker_alert_and_every_alert_has_id_category_state() {
    let app = spawn_app_with(unfolded).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    s.send_json(json!({"type": "focus", "state": "fullscreen_exit", "ref": 1}))
        .await;
    s.expect_ack(1).await;
    let ev = t
        .next_where("the student event", |v| {
            is_student_event(v, "s1", "fullscreen_exit")
        })
        .await;
    assert_eq!(ev["student"]["alerts"]["fullscreen_exit"], 1, "{ev}");
    assert_eq!(ev["student"]["focused"], true, "not a focus loss");
    let a = next_alert(&mut t, json!("s1")).await;
    assert_alert_shape(&a, "fullscreen_exit", "test_taker");
    s.send_json(json!({"type": "focus", "state": "lost"})).await;
    let b = next_alert(&mut t, json!("s1")).await;
    assert_alert_shape(&b, "focus_lost", "test_taker");
    assert_ne!(a["alert_id"], b["alert_id"], "unique");
    // An unknown focus state is still refused.
    s.send_json(json!({"type": "focus", "state": "asleep", "ref": 2}))
        .await;
    let e = s.next_of_type("error").await;
    assert_eq!(e["code"], "invalid_message");
}

#[tokio::test]
async fn a_session_from_another_ip_or_browser_is_alerted_and_the_same_one_is_not() {
    let app = spawn_app_with(|s| {
        unfolded(s);
        s.exam.disconnect_grace = Duration::from_secs(30);
    })
    .await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let s = student_from(&app, "e1", "s1", "127.0.0.1", "Firefox/1").await;
    drop(s);
    // Back from the same address and browser: a reconnect, nothing more.
    let mut s = student_from(&app, "e1", "s1", "127.0.0.1", "Firefox/1").await;
    s.send_json(json!({"type": "focus", "state": "fullscreen_exit"}))
        .await;
    assert_eq!(
        alerts_until(&mut t, "s1", "fullscreen_exit").await,
        Vec::<String>::new()
    );
    drop(s);
    // Another address: ip_changed only.
    let s = student_from(&app, "e1", "s1", "127.0.0.2", "Firefox/1").await;
    let a = next_alert(&mut t, json!("s1")).await;
    assert_alert_shape(&a, "ip_changed", "test_taker");
    // A takeover from another browser (the old socket still open).
    let _s2 = student_from(&app, "e1", "s1", "127.0.0.2", "Chrome/2").await;
    let kinds = alerts_until(&mut t, "s1", "device_changed").await;
    assert_eq!(kinds, ["second_session"], "the takeover's own alert first");
    drop(s);
}

#[tokio::test]
async fn a_room_that_restarted_still_knows_the_previous_session() {
    let app = spawn_app_with(|s| {
        unfolded(s);
        s.exam.room_linger = Duration::from_millis(50);
        s.exam.disconnect_grace = Duration::from_millis(20);
    })
    .await;
    app.open_exam("e1").await;
    let s = student_from(&app, "e1", "s1", "127.0.0.1", "Firefox/1").await;
    s.close().await;
    eventually("the room ends", || app.state.registry.is_empty()).await;
    app.flushed().await;
    // A new room, which never saw that session: the database tells.
    let (mut t, _) = app.teacher("e1", "t1").await;
    let mut s = student_from(&app, "e1", "s1", "127.0.0.1", "Chrome/2").await;
    let a = next_alert(&mut t, json!("s1")).await;
    assert_alert_shape(&a, "device_changed", "test_taker");
    s.send_json(json!({"type": "focus", "state": "fullscreen_exit"}))
        .await;
    assert_eq!(
        alerts_until(&mut t, "s1", "fullscreen_exit").await,
        Vec::<String>::new(),
        "the same address: no ip_changed"
    );
}

#[tokio::test]
async fn a_session_on_another_instance_is_compared_with_the_one_before() {
    let Some(redis) = Redis::start() else { return };
    let apps = cluster(&redis, 2, |s| {
        unfolded(s);
        s.exam.disconnect_grace = Duration::from_secs(30);
    })
    .await;
    let (a, b) = (&apps[0], &apps[1]);
    let (mut t, _) = a.teacher("e1", "t1").await;
    let (s, w) = student_after(a, "e1", "s1", "127.0.0.1", "Firefox/1", None).await;
    s.close().await;
    // Another browser from another address, on the other instance (whose
    // room never saw the first session): both alerts.
    let (mut s, w) = student_after(b, "e1", "s1", "127.0.0.2", "Chrome/2", Some(&w)).await;
    s.send_json(json!({"type": "focus", "state": "fullscreen_exit"}))
        .await;
    let mut kinds = alerts_until(&mut t, "s1", "fullscreen_exit").await;
    kinds.sort();
    assert_eq!(kinds, ["device_changed", "ip_changed"]);
    s.close().await;
    // The same client back on the first instance, whose room last saw
    // Firefox from 127.0.0.1: the latest session was this one, so nothing.
    let (mut s, _) = student_after(a, "e1", "s1", "127.0.0.2", "Chrome/2", Some(&w)).await;
    s.send_json(json!({"type": "focus", "state": "fullscreen_exit"}))
        .await;
    assert_eq!(
        alerts_until(&mut t, "s1", "fullscreen_exit").await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn answered_going_down_is_alerted_and_going_up_is_not() {
    let app = spawn_app_with(unfolded).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    for (q, answered) in [(1, 3), (2, 5), (3, 5), (4, 2)] {
        s.send_json(progress(q, answered)).await;
    }
    // Each alert follows the `student` event of its message: the first
    // alert at all comes after the fourth progress (3 -> 5 -> 5 raised none).
    let mut progressed = Vec::new();
    let a = loop {
        let v = t
            .next_where("progress or alert", |v| {
                v["type"] == "alert" || is_student_event(v, "s1", "progress")
            })
            .await;
        if v["type"] == "alert" {
            break v;
        }
        progressed.push(v["student"]["current_question"].clone());
    };
    assert_eq!(progressed, [json!(1), json!(2), json!(3), json!(4)]);
    assert_alert_shape(&a, "answered_decreased", "test_taker");
}

#[tokio::test]
async fn a_heartbeat_gap_while_progress_keeps_coming_is_alerted() {
    let gap = Duration::from_millis(300);
    let app = spawn_app_with(|s| {
        unfolded(s);
        s.alerts.heartbeat_gap = gap;
        s.exam.idle_after = Duration::from_secs(60);
    })
    .await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut beating, _) = app.student("e1", "beats").await;
    let (mut stopped, _) = app.student("e1", "stopped").await;
    let (mut never, _) = app.student("e1", "never").await;
    beating
        .send_json(json!({"type": "heartbeat", "ref": 0}))
        .await;
    stopped
        .send_json(json!({"type": "heartbeat", "ref": 0}))
        .await;
    beating.expect_ack(0).await;
    stopped.expect_ack(0).await;
    // Time passes (the condition itself, not a wait for an event): one
    // keeps beating, one stops, one never started.
    let until = tokio::time::Instant::now() + gap * 2;
    let mut n = 1;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(gap / 4).await;
        beating
            .send_json(json!({"type": "heartbeat", "ref": n}))
            .await;
        beating.expect_ack(n).await;
        n += 1;
    }
    for s in [&mut beating, &mut stopped, &mut never] {
        s.send_json(progress(1, 1)).await;
    }
    let a = next_alert(&mut t, json!("stopped")).await;
    assert_alert_shape(&a, "heartbeat_gap", "technical");
    // Once per gap: more progress, no second alert.
    stopped.send_json(progress(2, 2)).await;
    for (who, s) in [
        ("beats", &mut beating),
        ("never", &mut never),
        ("stopped", &mut stopped),
    ] {
        s.send_json(json!({"type": "focus", "state": "fullscreen_exit"}))
            .await;
        assert_eq!(
            alerts_until(&mut t, who, "fullscreen_exit").await,
            Vec::<String>::new(),
            "{who}"
        );
    }
}

fn incident_settings(s: &mut examwatch::Settings) {
    unfolded(s);
    s.exam.disconnect_grace = Duration::from_millis(600);
    s.alerts.incident_window = Duration::from_secs(3);
    s.alerts.incident_min = 3;
    s.alerts.incident_share = 0.3;
}

#[tokio::test]
async fn four_of_five_dropping_at_once_is_one_network_incident() {
    let app = spawn_app_with(incident_settings).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let mut students = Vec::new();
    for i in 1..=5 {
        students.push(app.student("e1", &format!("s{i}")).await.0);
    }
    let stays = students.pop().expect("s5");
    drop(students); // s1-s4: sockets lost at once
    let mut incident = None;
    let mut disconnected = std::collections::HashSet::new();
    let mut other_alerts = Vec::new();
    while disconnected.len() < 4 {
        let v = t
            .next_where("alerts and disconnects", |v| {
                v["type"] == "alert" || v["cause"] == "disconnected"
            })
            .await;
        if v["type"] == "alert" && v["kind"] == "network_incident" {
            assert!(incident.is_none(), "one incident alert: {v}");
            incident = Some(v);
        } else if v["type"] == "alert" {
            other_alerts.push(v);
        } else {
            disconnected.insert(v["student"]["student_id"].as_str().unwrap().to_owned());
        }
    }
    let incident = incident.expect("a network_incident before the grace ended");
    assert_eq!(incident["student_id"], Value::Null);
    assert_alert_shape(&incident, "network_incident", "technical");
    let n = incident["students"].as_u64().unwrap();
    assert!((3..=4).contains(&n), "{incident}");
    // The students' own events flowed; their `disconnected` alerts did not
    // (a sentinel alert from the one left closes the window).
    let mut stays = stays;
    stays
        .send_json(json!({"type": "focus", "state": "fullscreen_exit"}))
        .await;
    loop {
        let v = t.next_of_type("alert").await;
        if v["kind"] == "fullscreen_exit" {
            break;
        }
        other_alerts.push(v);
    }
    assert!(
        other_alerts.is_empty(),
        "no per-student alerts: {other_alerts:?}"
    );
    // It is listed like any alert.
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    create_exam(&app, "e1", &teacher).await;
    let id = incident["alert_id"].as_str().unwrap();
    let listed = eventually_listed(&app, "e1", &teacher, id).await;
    assert_eq!(listed["kind"], "network_incident");
    assert_eq!(listed["students"], n);
}

/// Reads `t`'s stream until `n` different students were seen connected.
async fn sees_connected(t: &mut Client, n: usize) {
    let mut seen = std::collections::HashSet::new();
    while seen.len() < n {
        let v = t
            .next_where("students joining", |v| {
                v["type"] == "student" && v["student"]["connected"] == true
            })
            .await;
        seen.insert(v["student"]["student_id"].to_string());
    }
}

#[tokio::test]
async fn students_of_two_instances_dropping_at_once_are_one_network_incident() {
    let Some(redis) = Redis::start() else { return };
    let apps = cluster(&redis, 2, incident_settings).await;
    let (a, b) = (&apps[0], &apps[1]);
    let (mut ta, _) = a.teacher("e1", "t1").await;
    let (mut tb, _) = b.teacher("e1", "t2").await;
    // Three students on each; two of each drop. Neither instance alone
    // has `incident_min` (3) drops: only the cluster's count makes it one.
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for i in 1..=3 {
        on_a.push(a.student("e1", &format!("a{i}")).await.0);
        on_b.push(b.student("e1", &format!("b{i}")).await.0);
    }
    sees_connected(&mut ta, 6).await;
    sees_connected(&mut tb, 6).await;
    let mut stays = on_a.pop().expect("a3");
    let _stays_b = on_b.pop().expect("b3");
    drop(on_a);
    drop(on_b);
    // Every alert until past every grace (the four `disconnected` student
    // events), then until a sentinel alert from a student who stayed.
    let mut alerts = [Vec::new(), Vec::new()];
    for (t, alerts) in [&mut ta, &mut tb].into_iter().zip(alerts.iter_mut()) {
        let mut gone = std::collections::HashSet::new();
        while gone.len() < 4 {
            let v = t
                .next_where("alerts and disconnects", |v| {
                    v["type"] == "alert" || v["cause"] == "disconnected"
                })
                .await;
            if v["type"] == "alert" {
                alerts.push(v);
            } else {
                gone.insert(v["student"]["student_id"].to_string());
            }
        }
    }
    stays
        .send_json(json!({"type": "focus", "state": "fullscreen_exit"}))
        .await;
    let mut incidents = Vec::new();
    for (t, mut alerts) in [&mut ta, &mut tb].into_iter().zip(alerts) {
        loop {
            let v = t.next_of_type("alert").await;
            if v["kind"] == "fullscreen_exit" {
                break;
            }
            alerts.push(v);
        }
        let kinds: Vec<_> = alerts.iter().map(|v| v["kind"].clone()).collect();
        assert_eq!(kinds, [json!("network_incident")], "{alerts:?}");
        incidents.push(alerts.remove(0));
    }
    assert_eq!(
        incidents[0]["alert_id"], incidents[1]["alert_id"],
        "one alert"
    );
    // Counted when the incident was recognised: the third or fourth drop.
    let n = incidents[0]["students"].as_u64().unwrap_or(0);
    assert!((3..=4).contains(&n), "{:?}", incidents[0]);
    assert_alert_shape(&incidents[0], "network_incident", "technical");
}

#[tokio::test]
async fn a_second_incident_soon_after_the_first_is_reported_in_a_cluster() {
    let Some(redis) = Redis::start() else { return };
    let window = Duration::from_secs(1);
    let apps = cluster(&redis, 2, |s| {
        incident_settings(s);
        s.exam.disconnect_grace = Duration::from_millis(300);
        s.alerts.incident_window = window;
    })
    .await;
    let (a, b) = (&apps[0], &apps[1]);
    let (mut t, _) = a.teacher("e1", "t1").await;
    let mut waves = [Vec::new(), Vec::new()];
    for i in 1..=6 {
        let app = if i % 2 == 0 { a } else { b };
        waves[(i - 1) / 3].push(app.student("e1", &format!("w{i}")).await.0);
    }
    let mut stays = a.student("e1", "stay").await.0;
    sees_connected(&mut t, 7).await;
    let [first, second] = waves;
    // Three of seven drop (on both instances): one incident...
    drop(first);
    let one = t
        .next_where("the first incident", |v| v["kind"] == "network_incident")
        .await;
    // ...then, a little more than a window after it (so it is over), three
    // more: a new incident, with its own alert (the first one's claim in
    // Redis must not outlive it).
    tokio::time::sleep(window + Duration::from_millis(300)).await;
    drop(second);
    let two = t
        .next_where("the second incident", |v| v["kind"] == "network_incident")
        .await;
    assert_ne!(one["alert_id"], two["alert_id"]);
    stays
        .send_json(json!({"type": "focus", "state": "fullscreen_exit"}))
        .await;
    let mut later = Vec::new();
    loop {
        let v = t.next_of_type("alert").await;
        if v["kind"] == "fullscreen_exit" {
            break;
        }
        later.push(v["kind"].clone());
    }
    assert!(
        !later.contains(&json!("network_incident")),
        "one alert each: {later:?}"
    );
}

#[tokio::test]
async fn one_drop_alone_is_the_normal_disconnected_alert() {
    let app = spawn_app_with(incident_settings).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let mut students = Vec::new();
    for i in 1..=5 {
        students.push(app.student("e1", &format!("s{i}")).await.0);
    }
    drop(students.remove(0));
    t.next_where("s1 disconnected", |v| {
        is_student_event(v, "s1", "disconnected")
    })
    .await;
    let a = next_alert(&mut t, json!("s1")).await;
    assert_alert_shape(&a, "disconnected", "technical");
    // No incident alert came first (it would be a null-student alert).
    students[0]
        .send_json(json!({"type": "focus", "state": "fullscreen_exit"}))
        .await;
    let next = t.next_of_type("alert").await;
    assert_eq!(next["kind"], "fullscreen_exit", "{next}");
}

async fn create_exam(app: &TestApp, id: &str, teacher: &str) {
    let r = app
        .api(Method::POST, "/v1/exams", teacher)
        .json(&json!({"id": id, "title": "Exam"}))
        .send()
        .await
        .unwrap();
    assert!(
        [StatusCode::CREATED, StatusCode::CONFLICT].contains(&r.status()),
        "{}",
        r.status()
    );
}

/// The alert `id` as `GET /alerts` lists it, once the writer stored it.
async fn eventually_listed(app: &TestApp, exam: &str, token: &str, id: &str) -> Value {
    let give_up = deadline();
    loop {
        let list = app
            .get_json(&format!("/v1/exams/{exam}/alerts"), token)
            .await;
        if let Some(a) = list["alerts"]
            .as_array()
            .and_then(|l| l.iter().find(|a| a["alert_id"] == id))
        {
            return a.clone();
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "{id} never listed: {list}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post(app: &TestApp, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let r = app
        .api(Method::POST, path, token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn reports_are_pushed_resolved_once_and_listed(db: Backend) {
    let Some(app) = spawn_app_on(db, unfolded).await else {
        return;
    };
    let teacher = app.token("t1", Role::Teacher, &["e1"]);
    let proctor = app.token("p1", Role::Proctor, &["e1"]);
    let student = app.token("s1", Role::Student, &["e1"]);
    create_exam(&app, "e1", &teacher).await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;

    // A report about s1, pushed to watchers and answered with the alert.
    let body =
        json!({"student_id": "s1", "category": "environment", "text": "Fire alarm\nin room B"});
    let (status, filed) = post(&app, "/v1/exams/e1/irregularities", &proctor, body).await;
    assert_eq!(status, StatusCode::CREATED, "{filed}");
    assert_eq!(filed["kind"], "report");
    assert_eq!(filed["state"], "open");
    assert_eq!(filed["by"], "p1");
    assert_eq!(filed["resolution"], Value::Null);
    let pushed = next_alert(&mut t, json!("s1")).await;
    assert_alert_shape(&pushed, "report", "environment");
    assert_eq!(pushed["alert_id"], filed["alert_id"]);
    assert_eq!(pushed["seq"], filed["seq"], "numbered in the exam's stream");
    assert_eq!(pushed["text"], "Fire alarm\nin room B");
    assert_eq!(pushed["by"], "p1");
    let report_id = filed["alert_id"].as_str().unwrap().to_owned();

    // An automatic alert, resolvable the same way.
    s.send_json(json!({"type": "focus", "state": "fullscreen_exit"}))
        .await;
    let auto = next_alert(&mut t, json!("s1")).await;
    let auto_id = auto["alert_id"].as_str().unwrap().to_owned();

    // Resolve the report: an `alert_resolved` event; twice: same answer, no event.
    let path = format!("/v1/exams/e1/alerts/{report_id}/resolve");
    let (status, first) = post(&app, &path, &proctor, json!({"note": "drill"})).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["state"], "resolved");
    assert_eq!(first["resolution"]["by"], "p1");
    assert_eq!(first["resolution"]["note"], "drill");
    let ev = t.next_of_type("alert_resolved").await;
    assert_eq!(ev["alert_id"], report_id.as_str());
    assert_eq!(
        (ev["by"].as_str(), ev["note"].as_str()),
        (Some("p1"), Some("drill"))
    );
    assert!(ev["seq"].as_u64().unwrap() > pushed["seq"].as_u64().unwrap());
    let (status, again) = post(&app, &path, &teacher, json!({"note": "other"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again["resolution"], first["resolution"],
        "the first resolution stays"
    );
    let auto_path = format!("/v1/exams/e1/alerts/{auto_id}/resolve");
    let (status, _) = post(&app, &auto_path, &teacher, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let ev = t.next_of_type("alert_resolved").await;
    assert_eq!(
        ev["alert_id"],
        auto_id.as_str(),
        "not a second event for the report"
    );

    // Listing, with the state filter; newest first.
    let all = app.get_json("/v1/exams/e1/alerts", &proctor).await;
    let ids: Vec<&str> = all["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [auto_id.as_str(), report_id.as_str()], "{all}");
    let room_wide = json!({"category": "technical", "text": "projector"});
    let (status, _) = post(&app, "/v1/exams/e1/irregularities", &proctor, room_wide).await;
    assert_eq!(status, StatusCode::CREATED);
    let open = app
        .get_json("/v1/exams/e1/alerts?state=open", &proctor)
        .await;
    let open = open["alerts"].as_array().unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["student_id"], Value::Null);
    assert_eq!(open[0]["category"], "technical");
    let resolved = app
        .get_json("/v1/exams/e1/alerts?state=resolved&limit=1", &proctor)
        .await;
    assert_eq!(
        resolved["alerts"].as_array().unwrap().len(),
        1,
        "bounded by limit"
    );

    // Bad input, rights, unknown alerts.
    for (body, field) in [
        (json!({"category": "weather", "text": "x"}), "category"),
        (json!({"category": "technical", "text": ""}), "text"),
        (json!({"category": "technical", "text": "a\u{7}b"}), "text"),
        (
            json!({"category": "technical", "text": "x".repeat(2001)}),
            "text",
        ),
    ] {
        let (status, err) = post(&app, "/v1/exams/e1/irregularities", &proctor, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(field),
            "{err}"
        );
    }
    let r = app
        .api(Method::GET, "/v1/exams/e1/alerts?state=maybe", &proctor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .api(Method::GET, "/v1/exams/e1/alerts?limit=1001", &proctor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = post(
        &app,
        "/v1/exams/e1/irregularities",
        &student,
        json!({"category": "technical", "text": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = post(&app, &path, &student, json!({"note": "x"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let r = app
        .api(Method::GET, "/v1/exams/e1/alerts", &student)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (status, err) = post(
        &app,
        "/v1/exams/e1/alerts/no-such-alert/resolve",
        &proctor,
        json!({"note": ""}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert_eq!(err["error"]["code"], "not_found");
    let (status, _) = post(
        &app,
        "/v1/exams/ghost/irregularities",
        &app.token("a", Role::Admin, &[]),
        json!({"category": "technical", "text": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // In the timeline and the report.
    app.flushed().await;
    let timeline = app.timeline("e1", &teacher, 100).await;
    let resolutions = timeline
        .iter()
        .filter(|e| e["type"] == "alert_resolved")
        .count();
    assert_eq!(resolutions, 2, "one per resolved alert");
    assert!(
        timeline
            .iter()
            .any(|e| e["type"] == "alert" && e["kind"] == "report")
    );
    let csv = app
        .api(Method::GET, "/v1/exams/e1/report.csv", &teacher)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(
        &header[8..11],
        [
            "alerts_environment",
            "alerts_test_taker",
            "alerts_technical"
        ]
    );
    let s1: Vec<&str> = csv
        .lines()
        .find(|l| l.starts_with("s1,"))
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(&s1[8..], ["1", "1", "0", "0", ""], "{csv}");
}

#[tokio::test]
async fn reports_are_pushed_resolved_once_and_listed_sqlite() {
    reports_are_pushed_resolved_once_and_listed(Backend::Sqlite).await;
}

#[tokio::test]
async fn reports_are_pushed_resolved_once_and_listed_postgres() {
    reports_are_pushed_resolved_once_and_listed(Backend::Postgres).await;
}

#[tokio::test]
async fn a_report_filed_on_one_instance_reaches_and_resolves_on_another() {
    let Some(redis) = Redis::start() else { return };
    let apps = cluster(&redis, 2, unfolded).await;
    let (a, b) = (&apps[0], &apps[1]);
    let teacher = a.token("t1", Role::Teacher, &["e1"]);
    create_exam(a, "e1", &teacher).await;
    let (mut watcher, _) = a.teacher("e1", "t1").await;
    let body = json!({"category": "test_taker", "text": "phone on the desk", "student_id": "s9"});
    let (status, filed) = post(
        b,
        "/v1/exams/e1/irregularities",
        &b.token("p1", Role::Proctor, &["e1"]),
        body,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{filed}");
    let pushed = next_alert(&mut watcher, json!("s9")).await;
    assert_alert_shape(&pushed, "report", "test_taker");
    assert_eq!(pushed["alert_id"], filed["alert_id"]);
    let id = filed["alert_id"].as_str().unwrap();
    let path = format!("/v1/exams/e1/alerts/{id}/resolve");
    let (status, done) = post(
        a,
        &path,
        &a.token("p2", Role::Proctor, &["e1"]),
        json!({"note": "seen"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let ev = watcher.next_of_type("alert_resolved").await;
    assert_eq!(ev["alert_id"], id);
    assert_eq!(ev["by"], "p2");
    // The row got the seq the cluster gave the event.
    let listed = eventually_listed(b, "e1", &teacher, id).await;
    assert_eq!(listed["state"], "resolved");
    let give_up = deadline();
    loop {
        let l = eventually_listed(a, "e1", &teacher, id).await;
        if l["seq"] == pushed["seq"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "seq never stored: {l} vs {pushed}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_document_lists_the_alert_routes() {
    let app = spawn_app().await;
    let doc: Value = reqwest::get(app.http("/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (path, method, codes) in [
        (
            "/v1/exams/{id}/irregularities",
            "post",
            &["201", "403", "404", "422"][..],
        ),
        (
            "/v1/exams/{id}/alerts/{alert_id}/resolve",
            "post",
            &["200", "403", "404", "422"],
        ),
        (
            "/v1/exams/{id}/alerts",
            "get",
            &["200", "403", "404", "422"],
        ),
    ] {
        let responses = &doc["paths"][path][method]["responses"];
        for code in codes {
            assert!(
                responses.get(*code).is_some(),
                "{method} {path} {code}: {responses}"
            );
        }
    }
    let category = &doc["components"]["schemas"]["AlertCategory"]["enum"];
    assert_eq!(*category, json!(["environment", "test_taker", "technical"]));
}
