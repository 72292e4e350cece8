//! `examwatch demo`: the whole product in one command.
//!
//! A newcomer should see a live exam without writing a client: this starts
//! the normal server (same settings, same code paths), creates one exam, and
//! runs N simulated students against it over real WebSockets. The exam
//! opens after a short waiting room (`--waiting`), where they wait like a
//! class does; once it runs they answer questions, pause long enough to
//! become idle, lose and regain focus, raise a hand now and then
//! (`--hands`), drop their connection and come back (some within the grace
//! period, some after), and now and then submit. The first of them, s001,
//! has a minute of extra time. They acknowledge what a proctor sends them
//! (`received`), so the dashboard shows each action delivered, and stop
//! when a teacher ends their exam or access. It prints the dashboard URL
//! with a ready teacher token, and a student page URL to join the exam by
//! hand.
//!
//! The simulated students are ordinary protocol clients (tokio-tungstenite)
//! that connect the way browsers do, with a fresh ticket from
//! `POST /v1/tickets` each time, so the demo doubles as a load source for the 300-student dashboard
//! measurement in the browser tests.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};
use tokio_util::sync::CancellationToken;

use crate::{
    App, Settings,
    auth::Role,
    control::{ExamClock, Phase, Timing},
    store::{StoreError, now_ms, queries::ExamRow},
};

/// Questions in the demo exam (the dashboard's progress bar total, read
/// from the exam's `settings.total_questions`).
pub const QUESTIONS: u32 = 5;

/// What `examwatch demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub students: usize,
    /// Mean time between two actions of one student.
    pub pace: Duration,
    pub exam: String,
    /// The waiting room before the exam opens by itself (zero: open now).
    pub waiting: Duration,
    /// How long it runs before it ends by itself at `closes_at`.
    pub length: Duration,
    /// Mean time between two raised hands of one simulated student (zero:
    /// they never raise one). A hand stays up until a proctor answers it.
    pub hands: Duration,
    /// The simulated students' random choices from this seed (the same
    /// run of actions every time, for tests); `None`: from the system.
    pub seed: Option<u64>,
}

/// What a simulated student asks when raising a hand (or nothing).
const HAND_TEXTS: &[&str] = &[
    "Is a calculator allowed?",
    "I think question 3 has a typo.",
    "May I have a sheet of scrap paper?",
    "",
];

/// Runs the server with the demo exam and its simulated students until
/// `shutdown` resolves.
pub async fn run(
    mut settings: Settings,
    opts: DemoOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Short timers, so that idle and disconnected students show up within
    // a minute of watching.
    settings.exam.idle_after = Duration::from_secs(15);
    settings.exam.disconnect_grace = Duration::from_secs(5);
    // Every simulated student connects from this host: the per-IP cap on
    // open connections must leave room for all of them and the watchers.
    let per_ip = &mut settings.limits.connections_per_ip;
    if *per_ip != 0 {
        *per_ip = (*per_ip).max(
            u32::try_from(opts.students)
                .unwrap_or(u32::MAX)
                .saturating_add(50),
        );
    }
    let app = App::build(settings).await?;
    let addr = app.local_addr()?;
    let state = app.state().clone();
    // The exam runs through its phases by itself: a waiting room, then
    // `in_progress` at `opens_at`, then `ended` at `closes_at` (students
    // with an accommodation a little later), so every part of the clock
    // shows on the dashboard and on the student page.
    let now = now_ms();
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let opens_at = now + ms(opts.waiting);
    let mut clock = ExamClock::new(
        Phase::Draft,
        Timing::Fixed,
        Some(opens_at),
        Some(opens_at.saturating_add(ms(opts.length).max(1000))),
        None,
        !opts.waiting.is_zero(),
    );
    let phases: &[Phase] = if opts.waiting.is_zero() {
        &[Phase::Scheduled, Phase::InProgress]
    } else {
        &[Phase::Scheduled]
    };
    for phase in phases {
        clock
            .set_phase(*phase, now)
            .context("the demo exam's phases")?;
    }
    let exam = ExamRow {
        id: opts.exam.clone(),
        title: "Demo exam".into(),
        clock: clock.clone(),
        version: 0,
        settings: json!({ "total_questions": QUESTIONS }).to_string(),
        created_by: "examwatch demo".into(),
        created_at: now,
        roster_size: 0,
    };
    match state.store.create_exam(&exam, &[]).await {
        Ok(()) => {}
        Err(StoreError::Conflict) => {
            // From an earlier run (maybe ended): this run's clock replaces it.
            let (_, version) = state
                .store
                .exam_clock(&opts.exam)
                .await?
                .context("the demo exam vanished")?;
            state.store.write_clock(&opts.exam, &clock, version).await?;
        }
        Err(e) => return Err(e).context("cannot create the demo exam"),
    }
    // The first simulated student has extra time (an accommodation).
    state
        .store
        .update_student_control(&opts.exam, "s001", |c| {
            c.clock.extra_minutes = 1;
            Ok::<(), StoreError>(())
        })
        .await??;
    let keys = state.keys.clone();
    let twelve_hours = Duration::from_secs(12 * 3600);
    let grant = || vec![opts.exam.clone()];
    let teacher = keys.mint(
        "demo-teacher",
        "Demo Teacher",
        Role::Teacher,
        grant(),
        twelve_hours,
    )?;
    let visitor = keys.mint(
        "visitor",
        "You (student page)",
        Role::Student,
        grant(),
        twelve_hours,
    )?;
    let stop = CancellationToken::new();
    for i in 0..opts.students {
        let token = keys.mint(
            &format!("s{:03}", i + 1),
            &student_name(i),
            Role::Student,
            grant(),
            twelve_hours,
        )?;
        let sim = Simulated {
            url: format!("ws://{addr}/v1/exams/{}/ws", opts.exam),
            addr,
            exam: opts.exam.clone(),
            token,
            pace: opts.pace,
            hands: opts.hands,
            rng: Rng::seeded(opts.seed, i as u64),
            stop: stop.clone(),
        };
        tokio::spawn(sim.run());
    }
    let links = links(addr, &opts, &teacher, &visitor);
    print!("{links}");
    repeat_on_enter(links);
    app.run(async move {
        shutdown.await;
        stop.cancel();
    })
    .await
}

/// The demo's links, in a block framed by rules so they stand out of
/// whatever else the terminal shows.
fn links(addr: SocketAddr, opts: &DemoOptions, teacher: &str, visitor: &str) -> String {
    let exam = &opts.exam;
    let rule = "─".repeat(72);
    let hands = if opts.hands.is_zero() {
        "the students raise no hands".to_owned()
    } else {
        format!(
            "each student raises a hand about every {}",
            humantime::format_duration(opts.hands)
        )
    };
    format!(
        "{rule}\n\
         examwatch demo: exam {exam:?} with {} simulated students\n\
         it opens in {} and runs for {} (s001 has a minute extra)\n\
         {hands}\n\
         \n  dashboard:    http://{addr}/dashboard/?exam={exam}#token={teacher}\
         \n  student page: http://{addr}/demo/student?exam={exam}#token={visitor}\n\
         \nPress Enter to show these links again; ctrl-c stops the demo.\n\
         {rule}\n",
        opts.students,
        humantime::format_duration(opts.waiting),
        humantime::format_duration(opts.length),
    )
}

/// Prints the links again each time a line is read from stdin (Enter in a
/// terminal). A plain thread: a blocking read of stdin must not hold up
/// the runtime, and the process exits without waiting for it.
fn repeat_on_enter(links: String) {
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        for line in std::io::stdin().lock().lines() {
            if line.is_err() {
                return;
            }
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(links.as_bytes());
            let _ = out.flush();
        }
    });
}

const FIRST: &[&str] = &[
    "Ada",
    "Alan",
    "Grace",
    "Edsger",
    "Barbara",
    "Donald",
    "Margaret",
    "Ken",
    "Frances",
    "Dennis",
    "Radia",
    "John",
    "Hedy",
    "Tim",
    "Katherine",
    "Niklaus",
    "Annie",
    "Linus",
    "Sophie",
    "Guido",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Turing",
    "Hopper",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Hamilton",
    "Thompson",
    "Allen",
    "Ritchie",
    "Perlman",
    "Backus",
    "Lamarr",
    "Berners-Lee",
    "Johnson",
    "Wirth",
    "Easley",
    "Torvalds",
    "Wilson",
    "van Rossum",
];

fn student_name(i: usize) -> String {
    let first = FIRST[i % FIRST.len()];
    let last = LAST[(i / FIRST.len() + i * 7) % LAST.len()];
    format!("{first} {last}")
}

/// xorshift64*: plenty for jittering a demo, and no extra dependency.
struct Rng(u64);

impl Rng {
    fn seeded(fixed: Option<u64>, salt: u64) -> Self {
        let seed = fixed.unwrap_or_else(|| {
            let mut seed = [0u8; 8];
            // No randomness available: a fixed seed still makes a fine demo.
            let _ = getrandom::fill(&mut seed);
            u64::from_le_bytes(seed)
        });
        Self((seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Uniform in `[lo, hi)` of `base`, e.g. `jitter(pace, 0.5, 1.5)`.
    fn jitter(&mut self, base: Duration, lo: f64, hi: f64) -> Duration {
        let f = lo + (hi - lo) * (self.below(1_000_000) as f64 / 1_000_000.0);
        base.mul_f64(f)
    }
}

/// What a simulated student does next.
enum Step {
    /// Keep going on this connection after waiting this long.
    Continue(Duration),
    /// Focus lost: come back (`focus gained`) after this long, still
    /// reading frames meanwhile (a `terminated` is acknowledged at once).
    Away(Duration),
    /// Drop the connection, come back after this long.
    Drop(Duration),
    /// Submitted: stay connected, do nothing more.
    Done,
}

/// One simulated student: connects, acts at random, reconnects after drops
/// with `previous_session`, like a real exam client.
struct Simulated {
    url: String,
    addr: SocketAddr,
    exam: String,
    token: String,
    pace: Duration,
    hands: Duration,
    rng: Rng,
    stop: CancellationToken,
}

/// What woke a simulated student up.
enum Wake {
    /// Time for its next action.
    Act,
    /// Time to raise a hand.
    Hand,
    /// A frame from the server, or the end of the connection.
    Frame(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
}

/// The exam as the server last described it to a simulated student.
struct Seen {
    /// Answers are taken: `in_progress` and not paused.
    running: bool,
    /// Nothing more to do: submitted, or time up.
    done: bool,
    /// A teacher ended their exam or their access: never come back.
    stopped: bool,
}

impl Seen {
    fn from_welcome(welcome: &Value) -> Self {
        Self {
            running: welcome["phase"] == "in_progress" && welcome["paused"] != true,
            done: welcome["student"]["status"] == "submitted"
                || matches!(welcome["phase"].as_str(), Some("ended" | "grading")),
            stopped: false,
        }
    }

    /// Applies a frame; returns the `received` to send for it, if it
    /// carries an action's id (docs/PROTOCOL.md 2).
    fn apply(&mut self, frame: &Value) -> Option<Value> {
        match frame["type"].as_str()? {
            "exam_update" => {
                self.running = frame["phase"] == "in_progress" && frame["paused"] != true;
                if frame["cause"] == "time_up"
                    || matches!(frame["phase"].as_str(), Some("ended" | "grading"))
                {
                    self.done = true;
                }
            }
            "terminated" => self.stopped = true,
            "session_invalidated" if frame["reason"] == "access_revoked" => self.stopped = true,
            "message" | "session_invalidated" => {}
            _ => return None,
        }
        let id = frame["id"].as_str()?;
        Some(json!({"type": "received", "id": id}))
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Simulated {
    async fn run(mut self) {
        // Spread the joins over the first seconds, like a class arriving.
        let mut wait = self.rng.jitter(Duration::from_secs(3), 0.0, 1.0);
        let mut session: Option<String> = None;
        let mut answered = [false; QUESTIONS as usize];
        let mut k = 0u64;
        let mut hand_due = self.next_hand();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return,
            }
            let Some((mut ws, welcome)) = self.connect(session.as_deref()).await else {
                wait = self.rng.jitter(Duration::from_secs(2), 0.5, 1.5);
                continue;
            };
            session = welcome["session_id"].as_str().map(str::to_owned);
            let mut seen = Seen::from_welcome(&welcome);
            let mut away = false;
            let mut next = self.rng.jitter(self.pace, 0.2, 1.0);
            wait = loop {
                let due = tokio::time::Instant::now() + next;
                // Reading while waiting answers the server's pings.
                let wake = tokio::select! {
                    _ = tokio::time::sleep_until(due) => Wake::Act,
                    _ = sleep_until_some(hand_due) => Wake::Hand,
                    msg = ws.next() => Wake::Frame(msg),
                    _ = self.stop.cancelled() => return,
                };
                match wake {
                    Wake::Frame(Some(Ok(msg))) => {
                        next = due.saturating_duration_since(tokio::time::Instant::now());
                        let Message::Text(text) = msg else { continue };
                        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                            continue;
                        };
                        if let Some(ack) = seen.apply(&frame) {
                            // Acknowledged, so the proctor sees it delivered.
                            if ws.send(Message::text(ack.to_string())).await.is_err() {
                                break Duration::from_secs(1);
                            }
                        }
                        continue;
                    }
                    // Closed: after a `terminate` or `deny` (close 4003)
                    // for good, else back after a moment.
                    Wake::Frame(_) if seen.stopped => return,
                    Wake::Frame(_) => break Duration::from_secs(1),
                    Wake::Hand => {
                        hand_due = self.next_hand();
                        if !seen.running || seen.done {
                            continue;
                        }
                        let text = HAND_TEXTS[self.rng.below(HAND_TEXTS.len() as u64) as usize];
                        let hand = if text.is_empty() {
                            json!({"type": "raise_hand"})
                        } else {
                            json!({"type": "raise_hand", "text": text})
                        };
                        if ws.send(Message::text(hand.to_string())).await.is_err() {
                            break Duration::from_secs(1);
                        }
                        next = due.saturating_duration_since(tokio::time::Instant::now());
                        continue;
                    }
                    Wake::Act if away => {
                        away = false;
                        let back = json!({"type": "focus", "state": "gained"});
                        if ws.send(Message::text(back.to_string())).await.is_err() {
                            break Duration::from_secs(1);
                        }
                        next = self.rng.jitter(self.pace, 0.5, 1.5);
                        continue;
                    }
                    Wake::Act => {}
                }
                if seen.done || seen.stopped {
                    next = Duration::from_secs(3600);
                    continue;
                }
                if !seen.running {
                    // The waiting room or a pause: nothing is taken; a
                    // heartbeat now and then, like the client library.
                    if ws
                        .send(Message::text(json!({"type": "heartbeat"}).to_string()))
                        .await
                        .is_err()
                    {
                        break Duration::from_secs(1);
                    }
                    next = self.rng.jitter(self.pace, 0.5, 1.5);
                    continue;
                }
                k += 1;
                match self.act(&mut ws, &mut answered, k).await {
                    Ok(Step::Continue(d)) => next = d,
                    Ok(Step::Away(d)) => {
                        away = true;
                        next = d;
                    }
                    Ok(Step::Drop(d)) => {
                        let _ = ws.close(None).await;
                        break d;
                    }
                    Ok(Step::Done) => seen.done = true,
                    Err(_) => break Duration::from_secs(1),
                }
            };
        }
    }

    /// When this student next raises a hand (None: never).
    fn next_hand(&mut self) -> Option<tokio::time::Instant> {
        (!self.hands.is_zero())
            .then(|| tokio::time::Instant::now() + self.rng.jitter(self.hands, 0.5, 1.5))
    }

    async fn connect(&self, previous: Option<&str>) -> Option<(Socket, Value)> {
        // Like the student page: a fresh ticket per attempt, so the demo
        // exercises the path browsers take; the bearer header if none came.
        let ticket = self.ticket().await;
        let mut query: Vec<String> = ticket.iter().map(|t| format!("ticket={t}")).collect();
        query.extend(previous.map(|id| format!("previous_session={id}")));
        let url = if query.is_empty() {
            self.url.clone()
        } else {
            format!("{}?{}", self.url, query.join("&"))
        };
        let mut req = url.into_client_request().ok()?;
        if ticket.is_none() {
            let bearer = HeaderValue::from_str(&format!("Bearer {}", self.token)).ok()?;
            req.headers_mut().insert("authorization", bearer);
        }
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.ok()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
            if let Ok(Message::Text(text)) = msg {
                let v: Value = serde_json::from_str(text.as_str()).ok()?;
                if v["type"] == "welcome" {
                    return Some((ws, v));
                }
            }
        }
    }

    /// `POST /v1/tickets` with the token in the header, over a plain
    /// one-shot HTTP/1.1 connection (the demo needs no HTTP client crate).
    async fn ticket(&self) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = json!({ "exam_id": self.exam }).to_string();
        let request = format!(
            "POST /v1/tickets HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            self.token,
            body.len()
        );
        let exchange = async {
            let mut tcp = tokio::net::TcpStream::connect(self.addr).await.ok()?;
            tcp.write_all(request.as_bytes()).await.ok()?;
            let mut response = Vec::new();
            tcp.read_to_end(&mut response).await.ok()?;
            Some(response)
        };
        let response = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .ok()??;
        let text = std::str::from_utf8(&response).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        let v: Value = serde_json::from_str(body).ok()?;
        v["ticket"].as_str().map(str::to_owned)
    }

    /// One random action, weighted like a real class: mostly answering.
    async fn act(
        &mut self,
        ws: &mut Socket,
        answered: &mut [bool; QUESTIONS as usize],
        k: u64,
    ) -> Result<Step, tokio_tungstenite::tungstenite::Error> {
        let pace = self.rng.jitter(self.pace, 0.5, 1.5);
        let roll = self.rng.below(100);
        let send = |v: Value| Message::text(v.to_string());
        if roll < 60 {
            let q = self.rng.below(u64::from(QUESTIONS)) as usize;
            answered[q] = true;
            let question = format!("q{}", q + 1);
            let count = answered.iter().filter(|a| **a).count();
            ws.send(send(
                json!({"type": "progress", "question": question, "answered": count}),
            ))
            .await?;
            let id = format!("a{k}-{}", self.rng.next() % 1_000_000);
            let value = ["A", "B", "C"][self.rng.below(3) as usize];
            ws.send(send(json!({"type": "answer", "id": id, "question": question, "value": value, "ref": id})))
                .await?;
            return Ok(Step::Continue(pace));
        }
        if roll < 72 {
            ws.send(send(json!({"type": "focus", "state": "lost"})))
                .await?;
            return Ok(Step::Away(self.rng.jitter(
                Duration::from_secs(3),
                0.3,
                1.0,
            )));
        }
        if roll < 80 {
            // A long pause: the server marks the student idle (15 s).
            return Ok(Step::Continue(Duration::from_secs(16 + self.rng.below(10))));
        }
        if roll < 86 {
            // Wi-Fi trouble: back within the 5 s grace, or after it.
            return Ok(Step::Drop(self.rng.jitter(
                Duration::from_secs(8),
                0.2,
                1.2,
            )));
        }
        if roll < 88 && answered.iter().all(|a| *a) {
            ws.send(send(json!({"type": "submit", "ref": "submit"})))
                .await?;
            return Ok(Step::Done);
        }
        ws.send(send(json!({"type": "heartbeat"}))).await?;
        Ok(Step::Continue(pace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range_and_names_vary() {
        let mut rng = Rng::seeded(None, 7);
        for _ in 0..1000 {
            let d = rng.jitter(Duration::from_secs(2), 0.5, 1.5);
            assert!(
                d >= Duration::from_secs(1) && d < Duration::from_secs(3),
                "{d:?}"
            );
        }
        // A fixed seed gives the same choices every time, per student.
        let run = |seed, salt| {
            let mut rng = Rng::seeded(Some(seed), salt);
            (0..8).map(|_| rng.below(100)).collect::<Vec<_>>()
        };
        assert_eq!(run(3, 1), run(3, 1));
        assert_ne!(run(3, 1), run(3, 2), "students differ");
        assert_ne!(run(3, 1), run(4, 1), "seeds differ");
        let names: std::collections::HashSet<_> = (0..300).map(student_name).collect();
        assert!(names.len() > 250, "{} distinct names", names.len());
    }

    #[test]
    fn a_simulated_student_follows_the_exam_and_acknowledges_actions() {
        let welcome = json!({"type": "welcome", "phase": "scheduled", "paused": false,
                             "student": {"status": "active"}});
        let mut seen = Seen::from_welcome(&welcome);
        assert!(
            !seen.running && !seen.done,
            "the waiting room takes nothing"
        );
        let start = json!({"type": "exam_update", "phase": "in_progress", "paused": false, "cause": "phase"});
        assert_eq!(seen.apply(&start), None, "no id, nothing to acknowledge");
        assert!(seen.running);
        let pause = json!({"type": "exam_update", "phase": "in_progress", "paused": true, "cause": "pause", "id": "p1"});
        assert_eq!(
            seen.apply(&pause),
            Some(json!({"type": "received", "id": "p1"}))
        );
        assert!(!seen.running, "paused");
        let message = json!({"type": "message", "id": "m1", "text": "hi", "from": "T", "at": "x"});
        assert_eq!(
            seen.apply(&message),
            Some(json!({"type": "received", "id": "m1"}))
        );
        let announcement = json!({"type": "announcement", "seq": 3, "text": "hi"});
        assert_eq!(seen.apply(&announcement), None);
        let time_up = json!({"type": "exam_update", "phase": "in_progress", "paused": false, "cause": "time_up"});
        seen.apply(&time_up);
        assert!(seen.done && !seen.stopped, "time up: done, not stopped");
        let denied = json!({"type": "session_invalidated", "reason": "access_revoked", "id": "d1"});
        assert_eq!(
            seen.apply(&denied),
            Some(json!({"type": "received", "id": "d1"}))
        );
        assert!(seen.stopped, "denied: never come back");
        let mut other = Seen::from_welcome(&welcome);
        other.apply(&json!({"type": "terminated", "id": "t1", "reason": "r"}));
        assert!(other.stopped, "terminated: never come back");
    }
}
