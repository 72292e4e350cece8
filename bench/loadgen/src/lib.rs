//! The load generator behind `examwatch-loadgen` (and the CI smoke test,
//! `tests/api/loadgen.rs` in the server's crate).
//!
//! Its own crate, a workspace member beside the server (issue 17 item 9):
//! what only a load generator needs (hdrhistogram, the pacer, the
//! Socket.IO framing) is no dependency of the server. It takes one thing
//! from the server's crate, `examwatch::auth`, to mint the tokens its
//! clients present, so a token it makes is one the server accepts.
//!
//! Open loop: event `k` has an intended send time `start + k / rate`, fixed
//! before the run, and its latency is measured from that time — a slow
//! server cannot hide queueing by slowing the sender down. Each event is a
//! student `progress` whose `question` carries `k` and its intended time;
//! teachers see it in the `student` event and compare against the same
//! monotonic clock. Every teacher of an exam must see each of its events
//! exactly once: anything else is counted as lost or duplicated.
//!
//! Two optional disturbances: a reconnect storm (every client drops its TCP
//! connection at once and comes back, students naming their previous
//! session, teachers resuming from their last seq — no event may be lost),
//! and slow teachers that connect and never read.
//!
//! Several servers (instances behind one Redis): students go round-robin
//! over `Plan::servers` (student `s` of exam `g` to server `(g + s) % n`),
//! teachers over `Plan::teacher_servers` (teacher `t` of exam `g` to
//! `(g + t) % m`), so with one list of `n` instances a teacher shares an
//! instance with only `1/n` of its exam's students, as behind a load
//! balancer. When a server goes away (a rolling restart's 1012, 1001, or
//! no close at all), its clients move to the next server of their list and
//! resume there; `Report::moved` says how long that took. With
//! `Plan::acked`, students send each `progress` with a `ref` and re-send,
//! after such a move, the ones the server had not acknowledged (a frame
//! written while the instance stopped reading is otherwise lost on the
//! client's side of the close, not the server's).

mod client;
mod open;
mod report;
mod tasks;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::{sync::mpsc, task::JoinSet};

pub use client::{Framing, Link, Target, parse_progress};
pub use report::{Latency, Moved, Report, Storm};
use tasks::{Shared, Who, epoch, student, teacher};

use examwatch::auth::{Keys, Role};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `host:port` of the servers students connect to, round-robin (the
    /// first also gets the REST calls that open the exams). Not empty.
    pub servers: Vec<SocketAddr>,
    /// Teachers connect to these instead, round-robin by exam, when not
    /// empty (e.g. a second instance behind Redis).
    pub teacher_servers: Vec<SocketAddr>,
    pub framing: Framing,
    pub exams: usize,
    /// The first exam's number (a child process runs a slice of the exams).
    pub first_exam: usize,
    pub students: usize,
    pub teachers: usize,
    /// Total student events per second, across this plan's exams.
    pub rate: f64,
    pub duration: Duration,
    /// Local addresses to spread connections over (port limits).
    pub sources: Vec<IpAddr>,
    /// Exam id prefix (runs can share a server).
    pub prefix: String,
    /// Extra teachers in the first exam that never read a byte, connected
    /// with small TCP buffers (`Target::small_receive_buffer`).
    pub slow_teachers: usize,
    /// Drop and reconnect every client this long after sending starts.
    pub storm_after: Option<Duration>,
    /// Connections opened at once while connecting.
    pub connect_concurrency: usize,
    /// Students ask for an `ack` of every event and re-send the ones not
    /// acknowledged when they move to another server (module docs).
    pub acked: bool,
}

impl Plan {
    /// A small plan against `server`, to adjust with struct update syntax.
    pub fn new(server: SocketAddr) -> Self {
        Self {
            servers: vec![server],
            teacher_servers: Vec::new(),
            framing: Framing::Examwatch,
            exams: 10,
            first_exam: 0,
            students: 30,
            teachers: 1,
            rate: 1000.0,
            duration: Duration::from_secs(10),
            sources: vec![IpAddr::from([127, 0, 0, 1])],
            prefix: "load-".into(),
            slow_teachers: 0,
            storm_after: None,
            connect_concurrency: 32,
            acked: false,
        }
    }

    fn total_events(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).ceil() as u64
    }
}

/// Clients connected and waiting to send.
pub struct Connected {
    plan: Plan,
    shared: Arc<Shared>,
    teachers: Vec<tokio::task::JoinHandle<(u64, u64, Histogram<u64>)>>,
    students: Vec<mpsc::Sender<(u64, u64)>>,
    slow: Vec<Link>,
    connections: usize,
    connect_seconds: f64,
}

/// Opens every connection of the plan: teachers first, so they see every
/// event, then the slow teachers, then the students.
pub async fn connect(plan: &Plan, keys: &Keys) -> anyhow::Result<Connected> {
    anyhow::ensure!(
        plan.storm_after.is_none() || plan.framing == Framing::Examwatch,
        "a reconnect storm needs examwatch's resume"
    );
    anyhow::ensure!(!plan.sources.is_empty(), "no source address");
    let started = Instant::now();
    anyhow::ensure!(!plan.servers.is_empty(), "no server address");
    let shared = Arc::new(Shared::new(plan.framing, plan.acked));
    let ttl = plan.duration + Duration::from_secs(3600);
    if plan.framing == Framing::Examwatch {
        for e in 0..plan.exams {
            let exam = format!("{}{}", plan.prefix, plan.first_exam + e);
            open::open_exam(plan.servers[0], keys, &exam).await?;
        }
    }
    let mut n = 0usize;
    let students_on: Arc<[SocketAddr]> = plan.servers.clone().into();
    let teachers_on: Arc<[SocketAddr]> = if plan.teacher_servers.is_empty() {
        students_on.clone()
    } else {
        plan.teacher_servers.clone().into()
    };
    let mut who = |e: usize, id: String, role: Role, k: usize| -> anyhow::Result<Who> {
        let exam = format!("{}{}", plan.prefix, plan.first_exam + e);
        let name = if role == Role::Student {
            "load student"
        } else {
            "load teacher"
        };
        let token = keys.mint(&id, name, role, vec![exam.clone()], ttl)?;
        n += 1;
        let servers = if role == Role::Student {
            students_on.clone()
        } else {
            teachers_on.clone()
        };
        Ok(Who {
            at: (plan.first_exam + e + k) % servers.len(),
            servers,
            source: plan.sources[n % plan.sources.len()],
            exam,
            token,
            slow: false,
        })
    };
    let total = plan.total_events();
    let mut clients = Clients::default();
    let mut opening = JoinSet::new();
    // Teachers, then slow teachers, then students: each group fully open
    // before the next, a bounded number of handshakes at a time.
    for group in 0..3 {
        let mut whos = Vec::new();
        for e in 0..plan.exams {
            let g = plan.first_exam + e;
            match group {
                0 => {
                    for t in 0..plan.teachers {
                        whos.push(who(e, format!("lt{g}-{t}"), Role::Teacher, t)?);
                    }
                }
                1 if e == 0 => {
                    for t in 0..plan.slow_teachers {
                        let slow = who(e, format!("slow{g}-{t}"), Role::Teacher, t)?;
                        whos.push(Who { slow: true, ..slow });
                    }
                }
                2 => {
                    for s in 0..plan.students {
                        whos.push(who(e, format!("ls{g}-{s}"), Role::Student, s)?);
                    }
                }
                _ => {}
            }
        }
        let kind = if group == 2 { "welcome" } else { "snapshot" };
        for w in whos {
            if opening.len() >= plan.connect_concurrency.max(1) {
                clients.collect(&mut opening, &shared, total).await?;
            }
            let sh = shared.clone();
            opening.spawn(async move {
                let (link, first) = w.first_connect(&sh, kind).await?;
                anyhow::Ok((group, w, link, first))
            });
        }
        while !opening.is_empty() {
            clients.collect(&mut opening, &shared, total).await?;
        }
    }
    let Clients {
        teachers,
        slow,
        students,
    } = clients;
    Ok(Connected {
        connections: teachers.len() + slow.len() + students.len(),
        plan: plan.clone(),
        shared,
        teachers,
        students,
        slow,
        connect_seconds: started.elapsed().as_secs_f64(),
    })
}

type Opening = JoinSet<anyhow::Result<(u8, Who, Link, String)>>;

/// The clients opened so far, by kind.
#[derive(Default)]
struct Clients {
    teachers: Vec<tokio::task::JoinHandle<(u64, u64, Histogram<u64>)>>,
    slow: Vec<Link>,
    students: Vec<mpsc::Sender<(u64, u64)>>,
}

impl Clients {
    /// Takes one opened connection and starts its client task.
    async fn collect(
        &mut self,
        opening: &mut Opening,
        sh: &Arc<Shared>,
        total: u64,
    ) -> anyhow::Result<()> {
        let Some(joined) = opening.join_next().await else {
            return Ok(());
        };
        let (group, who, link, first) = joined??;
        match group {
            0 => {
                let seq = client::parse_seq(&first).unwrap_or(0);
                let task = teacher(link, who, seq, total, sh.clone());
                self.teachers.push(tokio::spawn(task));
            }
            1 => self.slow.push(link),
            _ => {
                let session = client::string_field(&first, "session_id").unwrap_or("");
                let (tx, rx) = mpsc::channel(4096);
                tokio::spawn(student(link, who, session.to_owned(), rx, sh.clone()));
                self.students.push(tx);
            }
        }
        Ok(())
    }
}

/// Connects, then sends: the whole run in one call.
pub async fn run(plan: &Plan, keys: &Keys, progress: impl FnMut(&str)) -> anyhow::Result<Report> {
    connect(plan, keys).await?.send(progress).await
}

impl Connected {
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Sends the plan's events open-loop, waits for the tail, and counts.
    pub async fn send(self, mut progress: impl FnMut(&str)) -> anyhow::Result<Report> {
        let Connected {
            plan,
            shared: sh,
            teachers,
            students,
            slow,
            connections,
            connect_seconds,
        } = self;
        let total = plan.total_events();
        progress(&format!(
            "{connections} connections in {connect_seconds:.1}s; sending {total} events at {}/s",
            plan.rate
        ));
        let start = Instant::now();
        let storm_at = plan.storm_after.map(|d| start + d);
        let clients = (teachers.len() + students.len()) as u64;
        let sent = Arc::new(AtomicU64::new(0));
        let pacer = {
            let (sh, sent, rate) = (sh.clone(), sent.clone(), plan.rate);
            std::thread::Builder::new()
                .name("loadgen-pacer".into())
                .spawn(move || pace(students, total, rate, start, storm_at, &sh, &sent))?
        };
        let mut storm_told = false;
        while !pacer.is_finished() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if sh.storm.is_cancelled() && !std::mem::replace(&mut storm_told, true) {
                progress("storm: every client drops its connection now");
            }
            progress(&format!(
                "sent {}/{total}, delivered {}",
                sent.load(Ordering::Relaxed),
                sh.received.load(Ordering::Relaxed)
            ));
        }
        if pacer.join().is_err() {
            anyhow::bail!("the pacer thread panicked");
        }
        let sent = sent.load(Ordering::Relaxed);
        let send_seconds = start.elapsed().as_secs_f64();
        // Let the tail arrive (and stormed clients come back), then count.
        let expected = sent * plan.teachers as u64;
        let storm_done = |sh: &Shared| {
            !sh.storm.is_cancelled()
                || sh.back.load(Ordering::Relaxed) + sh.errors.load(Ordering::Relaxed) >= clients
        };
        // Clients whose server went away: back, or given up on.
        let moves_done = |sh: &Shared| {
            let m = &sh.moves;
            m.back.load(Ordering::Relaxed) + sh.errors.load(Ordering::Relaxed)
                >= m.clients.load(Ordering::Relaxed)
        };
        let tail_from = Instant::now();
        let tail = |sh: &Shared| {
            let moved = sh.moves.clients.load(Ordering::Relaxed) > 0;
            Duration::from_secs(if storm_at.is_some() || moved { 35 } else { 5 })
        };
        while (sh.received.load(Ordering::Relaxed) < expected
            || !storm_done(&sh)
            || !moves_done(&sh))
            && tail_from.elapsed() < tail(&sh)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sh.stop.cancel();
        let mut hist = report::new_histogram();
        let (mut delivered, mut duplicated) = (0u64, 0u64);
        for task in teachers {
            let (d, dup, h) = task.await?;
            delivered += d;
            duplicated += dup;
            hist.add(&h)?;
        }
        for link in slow {
            link.close().await;
        }
        let storm = storm_at.map(|_| Storm {
            clients: if sh.storm.is_cancelled() { clients } else { 0 },
            back: sh.back.load(Ordering::Relaxed),
            all_back_seconds: sh.last_back_us.load(Ordering::Relaxed) as f64 / 1e6,
            snapshots: sh.snapshots.load(Ordering::Relaxed),
        });
        let m = &sh.moves;
        let moved = (m.clients.load(Ordering::Relaxed) > 0).then(|| Moved {
            clients: m.clients.load(Ordering::Relaxed),
            back: m.back.load(Ordering::Relaxed),
            all_back_seconds: m.last_back_us.load(Ordering::Relaxed) as f64 / 1e6,
            max_away_seconds: m.max_away_us.load(Ordering::Relaxed) as f64 / 1e6,
            resent: m.resent.load(Ordering::Relaxed),
        });
        Ok(Report {
            connections,
            connect_errors: sh.errors.load(Ordering::Relaxed),
            connect_seconds,
            sent,
            expected,
            delivered,
            lost: expected.saturating_sub(delivered),
            duplicated,
            offered_rate: plan.rate,
            achieved_rate: sent as f64 / send_seconds.max(f64::EPSILON),
            latency_us: Latency::of(&hist),
            resyncs: sh.snapshots.load(Ordering::Relaxed),
            connect_retries: sh.retries.load(Ordering::Relaxed),
            storm,
            moved,
            histogram: report::buckets(&hist),
        })
    }
}

/// The least time between two wake-ups of the pacer (see [`pace`]).
const PACE_QUANTUM: Duration = Duration::from_micros(200);

/// Releases the events at their intended times, on its own OS thread: the
/// runtime's timer has a 1 ms granularity, so an event paced by it left up
/// to a millisecond late, and that lateness, which is the generator's and
/// not the server's, counted as latency. `std::thread::sleep` wakes within
/// tens of microseconds. Whatever is due by then goes out together; nothing
/// goes out early. Ends by dropping the student senders, which ends their
/// tasks.
///
/// A wake-up costs the generator a `nanosleep` and a cross-thread wake of its
/// runtime, about 0.35 of a core at 20k events/s when every event had its
/// own; so wake-ups are at least [`PACE_QUANTUM`] apart, and an event due
/// sooner than that after the last one waits for the next wake-up: at most
/// that much late, and the lateness counts against the server.
fn pace(
    students: Vec<mpsc::Sender<(u64, u64)>>,
    total: u64,
    rate: f64,
    start: Instant,
    storm_at: Option<Instant>,
    sh: &Shared,
    sent: &AtomicU64,
) {
    let n = students.len() as u64;
    let mut earliest_wake = start;
    for k in 0..total {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due.max(earliest_wake) - now);
            earliest_wake = Instant::now() + PACE_QUANTUM;
        }
        if storm_at.is_some_and(|t| due >= t) && !sh.storm.is_cancelled() {
            let _ = sh.storm_at.set(Instant::now());
            sh.storm.cancel();
        }
        // The intended time, not the actual one, is what latency counts from.
        let stamp = due.duration_since(epoch()).as_micros() as u64;
        if n > 0 && students[(k % n) as usize].try_send((k, stamp)).is_ok() {
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}
