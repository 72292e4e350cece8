//! The load generator behind `examwatch-loadgen` (and the CI smoke test).
//!
//! Open loop: event `k` has an intended send time `start + k / rate`, fixed
//! before the run, and its latency is measured from that time — a slow
//! server cannot hide queueing by slowing the sender down. Each event is a
//! student `progress` whose `question` carries `k`; teachers see it in the
//! `student` event and look up `k`'s intended time on the same monotonic
//! clock. Every teacher of an exam must see each of its events exactly once:
//! anything else is counted as lost or duplicated.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::{net::TcpSocket, sync::mpsc};
use tokio_tungstenite::{
    WebSocketStream, client_async,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

use crate::auth::{Keys, Role};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `host:port` of the server.
    pub server: SocketAddr,
    pub exams: usize,
    pub students: usize,
    pub teachers: usize,
    /// Total student events per second, across all exams.
    pub rate: f64,
    pub duration: Duration,
    /// Local addresses to spread connections over (port limits).
    pub sources: Vec<IpAddr>,
    /// Exam id prefix (runs can share a server).
    pub prefix: String,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub connections: usize,
    pub connect_seconds: f64,
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub offered_rate: f64,
    pub achieved_rate: f64,
    pub latency_us: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

type Ws = WebSocketStream<tokio::net::TcpStream>;

/// Runs the plan; `progress` is called about once a second.
pub async fn run(
    plan: &Plan,
    keys: &Keys,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Report> {
    let started_connecting = Instant::now();
    let ttl = plan.duration + Duration::from_secs(600);
    let mut next_source = 0usize;
    let mut source = || {
        let ip = plan.sources[next_source % plan.sources.len()];
        next_source += 1;
        ip
    };
    // Teachers first, so they see every event.
    let received = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut teacher_tasks = Vec::new();
    let total_events = (plan.rate * plan.duration.as_secs_f64()).ceil() as u64;
    for e in 0..plan.exams {
        for t in 0..plan.teachers {
            let exam = format!("{}{e}", plan.prefix);
            let token = keys.mint(
                &format!("lt{e}-{t}"),
                "load teacher",
                Role::Teacher,
                vec![exam.clone()],
                ttl,
            )?;
            let mut ws = connect(plan.server, source(), &exam, &token).await?;
            wait_for(&mut ws, "snapshot").await?;
            let received = received.clone();
            teacher_tasks.push(tokio::spawn(watch(
                ws,
                total_events,
                received,
                stop.clone(),
            )));
        }
    }
    let mut students = Vec::new();
    for e in 0..plan.exams {
        for s in 0..plan.students {
            let exam = format!("{}{e}", plan.prefix);
            let token = keys.mint(
                &format!("ls{e}-{s}"),
                "load student",
                Role::Student,
                vec![exam.clone()],
                ttl,
            )?;
            let mut ws = connect(plan.server, source(), &exam, &token).await?;
            wait_for(&mut ws, "welcome").await?;
            let (tx, rx) = mpsc::channel::<(u64, u64)>(1024);
            tokio::spawn(student(ws, rx));
            students.push(tx);
        }
    }
    let connections = plan.exams * (plan.teachers + plan.students);
    let connect_seconds = started_connecting.elapsed().as_secs_f64();
    progress(&format!(
        "{connections} connections in {connect_seconds:.1}s; sending {total_events} events at {}/s",
        plan.rate
    ));

    // Open loop: event k is due at start + k / rate, whatever the server does.
    let start = Instant::now();
    let n = students.len() as u64;
    let mut sent = 0u64;
    let mut last_report = Instant::now();
    for k in 0..total_events {
        let due = start + Duration::from_secs_f64(k as f64 / plan.rate);
        tokio::time::sleep_until(due.into()).await;
        // The intended time, not the actual one, is what latency counts from.
        let stamp = due.duration_since(epoch()).as_micros() as u64;
        // Spread over students so each student's own rate stays low.
        if students[(k % n) as usize].try_send((k, stamp)).is_ok() {
            sent += 1;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            progress(&format!(
                "sent {sent}/{total_events}, delivered {}",
                received.load(Ordering::Relaxed)
            ));
        }
    }
    let send_seconds = start.elapsed().as_secs_f64();
    // Let the tail arrive, then close the watchers and count.
    let expected = sent * plan.teachers as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(students);
    stop.cancel();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut delivered, mut duplicated) = (0u64, 0u64);
    for task in teacher_tasks {
        let (d, dup, h) = task.await?;
        delivered += d;
        duplicated += dup;
        hist.add(&h)?;
    }
    let lost = expected.saturating_sub(delivered);
    Ok(Report {
        connections,
        connect_seconds,
        sent,
        expected,
        delivered,
        lost,
        duplicated,
        offered_rate: plan.rate,
        achieved_rate: sent as f64 / send_seconds.max(f64::EPSILON),
        latency_us: Latency {
            p50: hist.value_at_quantile(0.5),
            p90: hist.value_at_quantile(0.9),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        },
    })
}

/// The clock events are stamped against (one per process).
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

async fn student(mut ws: Ws, mut rx: mpsc::Receiver<(u64, u64)>) {
    while let Some((k, stamp)) = rx.recv().await {
        let msg = format!(r#"{{"type":"progress","question":"{k}:{stamp}","answered":1}}"#);
        if ws.send(Message::text(msg)).await.is_err() {
            return;
        }
    }
    let _ = ws.close(None).await;
}

/// Counts one teacher's events until told to stop.
async fn watch(
    mut ws: Ws,
    total: u64,
    received: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) -> (u64, u64, Histogram<u64>) {
    let mut seen = vec![0u64; total.div_ceil(64) as usize + 1];
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let (mut delivered, mut duplicated) = (0u64, 0u64);
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = stop.cancelled() => break,
        };
        let Some(Ok(Message::Text(text))) = msg else {
            if msg.is_none() {
                break;
            }
            continue;
        };
        let Some((k, stamp)) = parse_progress(text.as_str()) else {
            continue;
        };
        let now = epoch().elapsed().as_micros() as u64;
        let (word, bit) = ((k / 64) as usize, 1u64 << (k % 64));
        if word < seen.len() && seen[word] & bit != 0 {
            duplicated += 1;
        } else {
            if word < seen.len() {
                seen[word] |= bit;
            }
            delivered += 1;
            let _ = hist.record(now.saturating_sub(stamp).max(1));
            received.fetch_add(1, Ordering::Relaxed);
        }
    }
    (delivered, duplicated, hist)
}

/// `k` and its stamp from a `student` event with cause `progress`.
fn parse_progress(text: &str) -> Option<(u64, u64)> {
    if !text.contains(r#""cause":"progress""#) {
        return None;
    }
    let at = text.find(r#""current_question":""#)? + r#""current_question":""#.len();
    let rest = &text[at..];
    let end = rest.find('"')?;
    let (k, stamp) = rest[..end].split_once(':')?;
    Some((k.parse().ok()?, stamp.parse().ok()?))
}

async fn connect(
    server: SocketAddr,
    source: IpAddr,
    exam: &str,
    token: &str,
) -> anyhow::Result<Ws> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(server).await?;
    tcp.set_nodelay(true)?;
    let mut req = format!("ws://{server}/v1/exams/{exam}/ws").into_client_request()?;
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let (ws, _) = client_async(req, tcp).await?;
    Ok(ws)
}

async fn wait_for(ws: &mut Ws, kind: &str) -> anyhow::Result<()> {
    let needle = format!(r#""type":"{kind}""#);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains(&needle) => return Ok(()),
            Ok(Some(Ok(_))) => {}
            other => anyhow::bail!("no {kind}: {other:?}"),
        }
    }
    anyhow::bail!("no {kind} in time")
}

#[cfg(test)]
mod tests {
    #[test]
    fn progress_events_carry_their_number_and_stamp() {
        let ev = r#"{"type":"student","seq":9,"student":{"student_id":"s","current_question":"42:1234"},"cause":"progress"}"#;
        assert_eq!(super::parse_progress(ev), Some((42, 1234)));
        assert_eq!(super::parse_progress(r#"{"cause":"connected"}"#), None);
    }
}
