//! The simulated clients: what each student and teacher task does during
//! a run, including losing its connection and coming back the way a real
//! client must (students name their previous session, teachers resume
//! from their last seq). A connection is lost two ways: in a storm (the
//! client drops it, and comes back to the same server), or when the
//! server goes away (a rolling restart's 1012, a shutdown's 1001, a dead
//! process): then the client goes to the next server of its list, the way
//! a load balancer would send it to another instance.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    client::{self, Framing, Link, Target, parse_ack, parse_progress},
    report,
};

/// What every client task shares.
pub(super) struct Shared {
    pub(super) framing: Framing,
    /// Students send `progress` with a `ref` and re-send what was not
    /// acknowledged after a reconnect (`Plan::acked`).
    pub(super) acked: bool,
    /// Events delivered to teachers so far (for progress and the tail wait).
    pub(super) received: AtomicU64,
    pub(super) stop: CancellationToken,
    pub(super) storm: CancellationToken,
    pub(super) storm_at: OnceLock<Instant>,
    pub(super) back: AtomicU64,
    pub(super) last_back_us: AtomicU64,
    pub(super) snapshots: AtomicU64,
    pub(super) errors: AtomicU64,
    /// First connections tried again after a refusal (`Who::first_connect`).
    pub(super) retries: AtomicU64,
    /// Clients whose server went away, and their way back.
    pub(super) moves: Moves,
}

/// Clients whose server closed them 1012/1001 or died, and came back on
/// another (or the same, restarted) instance.
#[derive(Default)]
pub(super) struct Moves {
    pub(super) clients: AtomicU64,
    pub(super) back: AtomicU64,
    /// When the first of them lost its connection.
    pub(super) first_at: OnceLock<Instant>,
    /// From `first_at` until the last one was back.
    pub(super) last_back_us: AtomicU64,
    /// The longest any one client was away.
    pub(super) max_away_us: AtomicU64,
    /// Events students re-sent after such a move (not acknowledged before it).
    pub(super) resent: AtomicU64,
}

impl Moves {
    /// A client lost its connection to a server that went away; returns when.
    fn gone(&self) -> Instant {
        let now = Instant::now();
        let _ = self.first_at.set(now);
        self.clients.fetch_add(1, Ordering::Relaxed);
        now
    }

    /// That client is back (welcomed, or resumed).
    fn back(&self, since: Instant) {
        let away = since.elapsed().as_micros() as u64;
        self.max_away_us.fetch_max(away, Ordering::Relaxed);
        let first = self.first_at.get().map_or(0, |t| t.elapsed().as_micros());
        self.last_back_us.fetch_max(first as u64, Ordering::Relaxed);
        self.back.fetch_add(1, Ordering::Relaxed);
    }
}

impl Shared {
    pub(super) fn new(framing: Framing, acked: bool) -> Self {
        Self {
            framing,
            acked,
            received: AtomicU64::new(0),
            stop: CancellationToken::new(),
            storm: CancellationToken::new(),
            storm_at: OnceLock::new(),
            back: AtomicU64::new(0),
            last_back_us: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            moves: Moves::default(),
        }
    }

    pub(super) fn mark_back(&self) {
        let at = self.storm_at.get().map_or(0, |t| t.elapsed().as_micros());
        self.last_back_us.fetch_max(at as u64, Ordering::Relaxed);
        self.back.fetch_add(1, Ordering::Relaxed);
    }
}

/// Who a client is, so it can connect again after a storm or a move.
#[derive(Clone)]
pub(super) struct Who {
    /// The servers this client may use ("the load balancer's" list), and
    /// the one it uses now.
    pub(super) servers: Arc<[SocketAddr]>,
    pub(super) at: usize,
    pub(super) source: IpAddr,
    pub(super) exam: String,
    pub(super) token: String,
    /// A slow teacher's: connects with a small receive buffer (see
    /// [`Target::small_receive_buffer`]).
    pub(super) slow: bool,
}

impl Who {
    pub(super) async fn connect(&self, sh: &Shared, query: Option<String>) -> anyhow::Result<Link> {
        let target = Target {
            server: self.servers[self.at % self.servers.len()],
            source: self.source,
            exam: &self.exam,
            token: &self.token,
            query,
            small_receive_buffer: self.slow,
        };
        Link::connect(sh.framing, &target).await
    }

    /// The first connection, up to its first message of type `kind`. A
    /// refusal (1013 "try again later" while an exam's state loads under a
    /// join storm, a 503, a reset) is tried again after a backoff, as a real
    /// client does, up to 8 times; each retry is counted.
    pub(super) async fn first_connect(
        &self,
        sh: &Shared,
        kind: &str,
    ) -> anyhow::Result<(Link, String)> {
        let mut pause = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            let attempt = async {
                let mut link = self.connect(sh, None).await?;
                let first = link.wait_for(kind).await?;
                anyhow::Ok((link, first))
            };
            match attempt.await {
                Ok(done) => return Ok(done),
                Err(e) if tries >= 8 => return Err(e),
                Err(_) => {}
            }
            tries += 1;
            sh.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Connects again after a drop, retrying for up to 30 s; returns the
    /// link and, when `kind` is given, the first message of that type.
    /// With `rotate`, every attempt goes to the next server of the list
    /// (the one it was on went away; a list of one is retried in place).
    pub(super) async fn reconnect(
        &mut self,
        sh: &Shared,
        query: String,
        kind: Option<&str>,
        rotate: bool,
    ) -> Option<(Link, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut pause = Duration::from_millis(20);
        while Instant::now() < deadline && !sh.stop.is_cancelled() {
            if rotate {
                self.at = (self.at + 1) % self.servers.len();
            }
            if let Ok(mut link) = self.connect(sh, Some(query.clone())).await {
                match kind {
                    // A resuming teacher gets its replay, or nothing yet.
                    None => return Some((link, String::new())),
                    Some(kind) => {
                        if let Ok(first) = link.wait_for(kind).await {
                            return Some((link, first));
                        }
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
        sh.errors.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The clock events are stamped against (one per process).
static EPOCH: OnceLock<Instant> = OnceLock::new();

pub(super) fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// One student: sends what the pacer hands it, and comes back after a
/// storm (same server) or when its server goes away (the next one). With
/// `Shared::acked` it keeps the events the server has not acknowledged and
/// re-sends them on its new connection, the way the client library's outbox
/// does, and does not leave before they are acknowledged.
pub(super) async fn student(
    mut link: Link,
    mut who: Who,
    mut session: String,
    mut rx: mpsc::Receiver<(u64, u64)>,
    sh: Arc<Shared>,
) {
    let mut stormed = false;
    let mut pending: Vec<(u64, u64)> = Vec::new();
    let mut done = false;
    while !(done && pending.is_empty()) {
        let lost = tokio::select! {
            biased;
            _ = sh.stop.cancelled() => break,
            _ = sh.storm.cancelled(), if !stormed => {
                stormed = true;
                link.drop_abruptly().await;
                let query = format!("previous_session={session}");
                let Some((back, welcome)) = who.reconnect(&sh, query, Some("welcome"), false).await else {
                    return;
                };
                session = client::string_field(&welcome, "session_id").unwrap_or("").to_owned();
                sh.mark_back();
                link = back;
                false
            }
            ev = rx.recv(), if !done => match ev {
                Some((k, stamp)) => {
                    if sh.acked {
                        pending.push((k, stamp));
                    }
                    link.send_progress(k, stamp, sh.acked).await.is_err()
                }
                None => {
                    done = true;
                    false
                }
            },
            // Reading keeps pings answered and takes the acks.
            text = link.next_text() => match text {
                Some(t) => {
                    if let Some(k) = parse_ack(&t) {
                        pending.retain(|(p, _)| *p != k);
                    }
                    false
                }
                None if link.server_went_away() => true,
                // Closed for a reason of its own (4008, 4401, …): it ends.
                None => return,
            },
        };
        if lost {
            // The server went away (or the write failed, which is the same
            // thing seen from this side): to the next one.
            let since = sh.moves.gone();
            let query = format!("previous_session={session}");
            let Some((back, welcome)) = who.reconnect(&sh, query, Some("welcome"), true).await
            else {
                return;
            };
            session = client::string_field(&welcome, "session_id")
                .unwrap_or("")
                .to_owned();
            link = back;
            sh.moves.back(since);
            for &(k, stamp) in &pending {
                sh.moves.resent.fetch_add(1, Ordering::Relaxed);
                if link.send_progress(k, stamp, true).await.is_err() {
                    break;
                }
            }
        }
    }
    link.close().await;
}

/// Counts one teacher's events until told to stop; comes back after a
/// storm (same server) or when its server goes away (the next one), with
/// `last_seq`, so the server replays what it missed.
pub(super) async fn teacher(
    mut link: Link,
    mut who: Who,
    mut last_seq: u64,
    total: u64,
    sh: Arc<Shared>,
) -> (u64, u64, Histogram<u64>) {
    let mut seen = vec![0u64; total.div_ceil(64) as usize + 1];
    let mut hist = report::new_histogram();
    let (mut delivered, mut duplicated) = (0u64, 0u64);
    let mut stormed = false;
    loop {
        let text = tokio::select! {
            biased;
            _ = sh.stop.cancelled() => break,
            _ = sh.storm.cancelled(), if !stormed => {
                stormed = true;
                link.drop_abruptly().await;
                let query = format!("last_seq={last_seq}");
                let Some((back, _)) = who.reconnect(&sh, query, None, false).await else {
                    break;
                };
                sh.mark_back();
                link = back;
                continue;
            }
            t = link.next_text() => match t {
                Some(t) => t,
                None if link.server_went_away() => {
                    let since = sh.moves.gone();
                    let query = format!("last_seq={last_seq}");
                    let Some((back, _)) = who.reconnect(&sh, query, None, true).await else {
                        break;
                    };
                    sh.moves.back(since);
                    link = back;
                    continue;
                }
                None => break,
            },
        };
        if text.contains(r#""type":"snapshot""#) && client::first_part(&text) {
            // A snapshot after the first: the server re-synchronised this
            // teacher instead of sending the events in between (counted
            // once, not once per part).
            sh.snapshots.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(seq) = client::parse_seq(&text) {
            last_seq = last_seq.max(seq);
        }
        let Some((k, stamp)) = parse_progress(&text) else {
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
            sh.received.fetch_add(1, Ordering::Relaxed);
        }
    }
    (delivered, duplicated, hist)
}
