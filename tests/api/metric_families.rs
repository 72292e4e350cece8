//! The standard metrics (issue 16 item 6), each family moved by the event
//! it counts: connections by role, messages in and out by type, refusals
//! by reason, closes by code, the fan-out and database histograms, the
//! broker's reconnects and publish latency, file descriptors against the
//! limit; and the Grafana dashboard names only families the server exports.

use examwatch::auth::Role;
use serde_json::{Value, json};

use crate::cluster::Redis;
use crate::helpers::*;

/// The labelled series `name{labels}` of this server, 0 if absent.
fn at(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> i64 {
    app.metric_where(name, labels)
}

async fn scrape(app: &TestApp) -> String {
    reqwest::get(app.admin("/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text")
}

#[tokio::test]
async fn connections_are_counted_by_role_and_messages_by_type() {
    let app = spawn_app().await;
    let (_t, _) = app.teacher("e1", "t1").await;
    let mut proctor = app
        .connect("e1", &app.token("p1", Role::Proctor, &["e1"]))
        .await;
    proctor.next_of_type("snapshot").await;
    let (mut s, _) = app.student("e1", "s1").await;
    let open = |role| at(&app, "examwatch_connections_open", &[("role", role)]);
    assert_eq!(
        (
            open("student"),
            open("teacher"),
            open("proctor"),
            open("admin")
        ),
        (1, 1, 1, 0)
    );
    assert_eq!(
        app.metric("examwatch_teachers_connected"),
        2,
        "watchers together"
    );

    let mut p = progress(1, 0);
    p["ref"] = json!("p");
    s.send_json(p).await;
    s.expect_ack("p").await;
    s.send_json(json!({"type": "answer", "id": "a1", "question": "q1", "value": 1, "ref": "a"}))
        .await;
    s.expect_ack("a").await;
    s.send_text("{not json").await;
    assert_eq!(s.next_of_type("error").await["code"], "invalid_json");
    let msgs_in = |ty| at(&app, "examwatch_messages_in_total", &[("type", ty)]);
    assert_eq!(
        (msgs_in("progress"), msgs_in("answer"), msgs_in("invalid")),
        (1, 1, 1)
    );
    let out = |ty| at(&app, "examwatch_messages_out_total", &[("type", ty)]);
    assert_eq!(out("welcome"), 1, "one student welcomed");
    assert!(out("snapshot") >= 2, "two watchers got snapshots");
    assert_eq!(out("ack"), 2, "two acks");
    assert_eq!(out("error"), 1, "one refusal");
    // A student event goes to both watchers.
    assert!(out("student") >= 2, "{}", app.metrics_text());

    s.close().await;
    eventually("the student's gauge drops", || {
        at(&app, "examwatch_connections_open", &[("role", "student")]) == 0
    })
    .await;
    assert_eq!(open("proctor"), 1);
}

#[tokio::test]
async fn closes_are_counted_by_code_and_by_who_closed() {
    let app = spawn_app().await;
    let closes = |by, code| {
        at(
            &app,
            "examwatch_closes_total",
            &[("by", by), ("code", code)],
        )
    };
    let (mut first, _) = app.student("e1", "s1").await;
    // The same student again: the first socket is taken over (4001).
    let (second, _) = app.student("e1", "s1").await;
    assert_eq!(first.expect_close().await.0, Some(4001));
    eventually("the takeover is counted", || closes("server", "4001") == 1).await;
    // A client close frame without a code, and a socket just dropped.
    second.close().await;
    eventually("the client's close is counted", || {
        closes("client", "1005") == 1
    })
    .await;
    let (s2, _) = app.student("e1", "s2").await;
    drop(s2);
    eventually("the drop is counted", || closes("transport", "1006") == 1).await;
    assert_eq!(
        app.metric("examwatch_closes_total"),
        3,
        "{}",
        app.metrics_text()
    );
}

#[tokio::test]
async fn handshakes_rejected_are_counted_by_transport_and_reason() {
    let app = spawn_app_with(|s| {
        s.limits.handshakes_per_subject = 1;
        s.limits.handshake_window = std::time::Duration::from_secs(60);
    })
    .await;
    let rejected = |transport, reason| {
        at(
            &app,
            "examwatch_handshakes_rejected_total",
            &[("transport", transport), ("reason", reason)],
        )
    };
    // A bad token.
    assert!(
        app.try_connect(&app.ws_url("e1"), Some("not-a-token"), &[])
            .await
            .is_err()
    );
    assert_eq!(rejected("websocket", "invalid_token"), 1);
    // Over the per-subject limit: the second handshake in the window.
    let token = app.token("s1", Role::Student, &["e1"]);
    let _s1 = app.connect("e1", &token).await;
    assert!(
        app.try_connect(&app.ws_url("e1"), Some(&token), &[])
            .await
            .is_err()
    );
    assert_eq!(rejected("websocket", "rate_limited"), 1);
    // A stream without a token, and a ticket asked for without one.
    let r = reqwest::get(app.http("/v1/exams/e1/events")).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = reqwest::Client::new()
        .post(app.http("/v1/tickets"))
        .json(&json!({"exam_id": "e1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(rejected("sse", "missing_token"), 1);
    assert_eq!(rejected("ticket", "missing_token"), 1);
    // The unlabelled total of old is the sum.
    assert_eq!(app.metric("examwatch_handshakes_rejected_total"), 4);
}

#[tokio::test]
async fn every_event_is_one_fanout_observation_and_batches_add_up() {
    let app = spawn_app().await;
    let (_t, _) = app.teacher("e1", "t1").await;
    let (mut s, _) = app.student("e1", "s1").await;
    for i in 1..=5 {
        let mut p = progress(i, i - 1);
        p["ref"] = json!(i);
        s.send_json(p).await;
        s.expect_ack(i).await;
    }
    app.flushed().await;
    eventually("every event fanned out is observed once", || {
        let text = app.metrics_text();
        let count = metric_in(&text, "examwatch_fanout_seconds_count").unwrap_or(-1);
        let events = metric_in(&text, "examwatch_events_total").unwrap_or(0);
        events >= 6 && count == events
    })
    .await;
    // Every record committed was in exactly one observed batch, and every
    // batch was one committed transaction here (nothing refused).
    eventually("batches add up to the records committed", || {
        let text = app.metrics_text();
        let get = |n| metric_in(&text, n).unwrap_or(-1);
        get("examwatch_db_committed_total") > 0
            && get("examwatch_db_batch_records_sum") == get("examwatch_db_committed_total")
            && get("examwatch_db_commit_seconds_count") == get("examwatch_db_batch_records_count")
    })
    .await;
    let text = scrape(&app).await;
    assert!(
        text.contains("examwatch_fanout_seconds_bucket{instance_id="),
        "a Prometheus histogram with buckets: {text}"
    );
}

#[tokio::test]
async fn file_descriptors_are_reported_against_the_limit() {
    let app = spawn_app().await;
    let (_s, _) = app.student("e1", "s1").await;
    let text = scrape(&app).await;
    let open = metric_in(&text, "process_open_fds").expect("process_open_fds");
    let max = metric_in(&text, "process_max_fds").expect("process_max_fds");
    assert!(open > 0 && open <= max, "open {open}, limit {max}");
}

#[tokio::test]
async fn broker_reconnects_and_publish_latency_are_counted() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let apps = crate::cluster::cluster(&redis, 1, |_| {}).await;
    let app = &apps[0];
    let (mut s, _) = app.student("e1", "s1").await;
    eventually("an event is published to Redis", || {
        app.metric("examwatch_broker_publish_seconds_count") > 0
    })
    .await;
    assert_eq!(app.metric("examwatch_broker_reconnects_total"), 0);
    redis.stop();
    eventually("the instance notices", || !app.state.broker.healthy()).await;
    redis.start_again();
    eventually("the instance reconnects", || {
        app.metric("examwatch_broker_reconnects_total") == 1
    })
    .await;
    // Published again once Redis is back.
    let before = app.metric("examwatch_broker_publish_seconds_count");
    let mut p = progress(1, 0);
    p["ref"] = json!("p");
    s.send_json(p).await;
    s.expect_ack("p").await;
    eventually("the next event is published and observed", || {
        app.metric("examwatch_broker_publish_seconds_count") > before
    })
    .await;
}

/// Every metric name in a PromQL expression (`examwatch_*`, `process_*`).
fn names_in(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("examwatch_") || w.starts_with("process_"))
        .collect()
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_grafana_dashboard_uses_only_exported_families() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/examwatch.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard"))
            .expect("the dashboard is valid JSON");
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(variables.iter().any(|v| v["name"] == "instance"));
    let app = spawn_app().await;
    let text = scrape(&app).await;
    let mut all = Vec::new();
    exprs(&dashboard["panels"], &mut all);
    exprs(&dashboard["templating"], &mut all);
    assert!(all.len() >= 12, "{all:?}");
    let mut used = 0;
    for expr in &all {
        if expr.contains("examwatch_") || expr.contains("process_") {
            assert!(
                expr.contains("instance_id"),
                "every query filters or groups by instance: {expr}"
            );
        }
        for name in names_in(expr) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    let base = name.strip_suffix(s)?;
                    text.contains(&format!("# TYPE {base} histogram\n"))
                        .then_some(base)
                })
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{name} (in {expr}) is not exported:\n{text}"
            );
            used += 1;
        }
    }
    assert!(used >= 20, "{used} metric references");
}

#[test]
fn the_metrics_table_lists_every_family_with_its_help() {
    let doc = include_str!("../../docs/PROTOCOL.md");
    let table = doc
        .split_once("### B.1 Metrics")
        .expect("docs/PROTOCOL.md has B.1 Metrics")
        .1;
    for (name, help) in examwatch::metrics::described() {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("{name} is not in the metrics table"));
        assert!(
            row.ends_with(&format!("| {} |", help.replace('|', "\\|"))),
            "{name}: the table's help differs from the server's: {row}"
        );
    }
}
