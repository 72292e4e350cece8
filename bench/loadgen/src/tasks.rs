//! The simulated clients: what each student and teacher task does during
//! a run, including dropping its connection in a storm and coming back the
//! way a real client must (students name their previous session, teachers
//! resume from their last seq).

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
    client::{self, Framing, Link, Target, parse_progress},
    report,
};

/// What every client task shares.
pub(super) struct Shared {
    pub(super) framing: Framing,
    /// Events delivered to teachers so far (for progress and the tail wait).
    pub(super) received: AtomicU64,
    pub(super) stop: CancellationToken,
    pub(super) storm: CancellationToken,
    pub(super) storm_at: OnceLock<Instant>,
    pub(super) back: AtomicU64,
    pub(super) last_back_us: AtomicU64,
    pub(super) snapshots: AtomicU64,
    pub(super) errors: AtomicU64,
}

impl Shared {
    pub(super) fn mark_back(&self) {
        let at = self.storm_at.get().map_or(0, |t| t.elapsed().as_micros());
        self.last_back_us.fetch_max(at as u64, Ordering::Relaxed);
        self.back.fetch_add(1, Ordering::Relaxed);
    }
}

/// Who a client is, so it can connect again after a storm.
#[derive(Clone)]
pub(super) struct Who {
    pub(super) server: SocketAddr,
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
            server: self.server,
            source: self.source,
            exam: &self.exam,
            token: &self.token,
            query,
            small_receive_buffer: self.slow,
        };
        Link::connect(sh.framing, &target).await
    }

    /// Connects again after a drop, retrying for up to 30 s; returns the
    /// link and, when `kind` is given, the first message of that type.
    pub(super) async fn reconnect(
        &self,
        sh: &Shared,
        query: String,
        kind: Option<&str>,
    ) -> Option<(Link, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut pause = Duration::from_millis(20);
        while Instant::now() < deadline && !sh.stop.is_cancelled() {
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

pub(super) async fn student(
    mut link: Link,
    who: Who,
    mut session: String,
    mut rx: mpsc::Receiver<(u64, u64)>,
    sh: Arc<Shared>,
) {
    let mut stormed = false;
    loop {
        tokio::select! {
            biased;
            _ = sh.storm.cancelled(), if !stormed => {
                stormed = true;
                link.drop_abruptly().await;
                let query = format!("previous_session={session}");
                let Some((back, welcome)) = who.reconnect(&sh, query, Some("welcome")).await else {
                    return;
                };
                session = client::string_field(&welcome, "session_id").unwrap_or("").to_owned();
                sh.mark_back();
                link = back;
            }
            ev = rx.recv() => match ev {
                Some((k, stamp)) => {
                    if link.send_progress(k, stamp).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            // Reading keeps pings answered; a closed socket ends the student.
            text = link.next_text() => if text.is_none() { return },
        }
    }
    link.close().await;
}

/// Counts one teacher's events until told to stop.
pub(super) async fn teacher(
    mut link: Link,
    who: Who,
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
                let Some((back, _)) = who.reconnect(&sh, query, None).await else {
                    break;
                };
                sh.mark_back();
                link = back;
                continue;
            }
            t = link.next_text() => match t {
                Some(t) => t,
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
