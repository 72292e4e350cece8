//! The accept loop: what stands between the listening socket and hyper.
//!
//! `axum::serve` accepts every connection and waits on it forever: no
//! deadline for the request head, no cap, and an accept error such as
//! `EMFILE` retried at once. Issue 11 found the consequences: 50 silent
//! connections, 50 half-sent headers and 20 idle keep-alives were all still
//! open after 48 s without a token, and 300 of them against a limit of 256
//! open files made `/healthz` and valid handshakes time out. This loop keeps
//! axum's router and adds what a public listener needs:
//!
//! - **A deadline for the request head** (`server.request_head_timeout`):
//!   hyper starts it whenever it waits for a request head, so it bounds a
//!   silent connection, a slow (slowloris) head, and an idle keep-alive
//!   connection waiting for its next request alike. An upgraded WebSocket is
//!   past it: its liveness is the ping/pong in `ws.rs`.
//! - **A total connection cap** (`server.max_connections`, by default the
//!   open-files limit less a reserve): the count lives in the connection's
//!   I/O object, so it follows a WebSocket through the upgrade and is given
//!   back when the socket closes. Past the cap a client gets a complete
//!   `503` with `Retry-After` (never an accept followed by a silent drop),
//!   written by a small bounded set of rejecters.
//! - **Accept errors that back off**: out of file descriptors, the loop
//!   sleeps (10 ms doubling to 1 s) instead of spinning, and logs at most
//!   one line a second with the count of errors since the last one.
//! - **TLS** (`server.tls.*`, [`crate::tls`]), when the listener has it: the
//!   handshake runs in the connection's own task, after the cap has counted
//!   it, and must finish within `server.request_head_timeout` (a client
//!   that never completes one is closed like a silent one); the request
//!   head then has its own deadline as above. A failed handshake is a debug
//!   line about that connection only. Over the cap, a rejecter completes
//!   the handshake (within [`REJECT_HANDSHAKE_TIMEOUT`]) and writes the
//!   same 503, so TLS clients are told to come back too.
//! - **Shards** (`server.shards`, [`crate::shard`]): with shards on, an
//!   accepted plain connection is not served here. A small task peeks at
//!   its first bytes once (under the request-head deadline; a peek does not
//!   consume them, so hyper reads the same head), takes the exam id from a
//!   `/v1/exams/{id}/…` request line, and moves the socket to that exam's
//!   shard (round robin for any other path, or a head not complete in the
//!   first peek), where it is registered with that shard's reactor and
//!   served as below. The accept loop never waits on a client. A TLS
//!   connection cannot be read before its handshake: it goes round robin,
//!   and the handshake runs on its shard (docs/DEPLOY.md, "Shards").

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::Service;

use crate::metrics::Metrics;
use crate::shard::{OnShard, Shards, route};
use crate::tls::{self, HandshakeFailure, Tls};

/// How one listener treats its connections.
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    /// Open connections (HTTP and upgraded WebSockets) at most.
    pub max_connections: usize,
    /// Deadline for a complete request head, and for the next one on an
    /// idle keep-alive connection.
    pub request_head_timeout: Duration,
    /// TLS on this listener, or plain HTTP (`None`).
    pub tls: Option<Arc<Tls>>,
}

/// How many over-the-cap clients may be in the middle of getting their
/// 503 at once; past that, a connection is closed without an answer (the
/// reserve of file descriptors is what is being protected).
const REJECTERS: usize = 64;

/// How long a rejecter waits for an over-the-cap client's TLS handshake
/// before closing without the 503 (it holds one of [`REJECTERS`] meanwhile).
pub const REJECT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// File descriptors kept out of the connection cap: the listeners, the
/// database and Redis connections, the rejecters, logs, and the runtime.
pub fn fd_reserve(database_connections: u32) -> usize {
    REJECTERS + 64 + database_connections as usize
}

/// Raises the soft open-files limit to the hard one and returns
/// `(soft, hard)` after that (unknown limits read as `usize::MAX`).
pub fn raise_open_files_limit() -> (usize, usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return (usize::MAX, usize::MAX);
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    let conv = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            usize::MAX
        } else {
            usize::try_from(v).unwrap_or(usize::MAX)
        }
    };
    (conv(lim.rlim_cur), conv(lim.rlim_max))
}

/// The answer past the cap: complete, so the client (or its load balancer)
/// knows to come back rather than seeing a reset.
const FULL_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 2\r\n\
connection: close\r\n\
content-length: 92\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"the server is at its connection limit\"}}\n";

/// How much of a request head the shard router peeks at: a request line
/// with its exam id and a token in the query fits (an id cut off by this
/// goes round robin).
const HEAD_PEEK: usize = 2048;

/// Serves `router` on `listener` until `stop` is cancelled, then lets every
/// open HTTP connection finish its request and returns once they are gone
/// (upgraded WebSockets are the app's own tasks, not waited for here).
/// With `shards` (not empty) the connections are served on them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    shards: Shards,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let rejecters = Arc::new(Semaphore::new(REJECTERS));
    let conns = TaskTracker::new();
    let mut errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => {
                errors.succeeded();
                conn
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                metrics.accept_errors.increment(1);
                let pause = errors.failed(&e);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = stop.cancelled() => break,
                }
            }
        };
        tune_accepted(&tcp);
        let Some(permit) = ConnPermit::take(&open, limits.max_connections) else {
            metrics.connections_refused_full.increment(1);
            if let Ok(slot) = rejecters.clone().try_acquire_owned() {
                let tls = limits.tls.clone();
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    match tls {
                        None => refuse_full(tcp).await,
                        Some(tls) => refuse_full_tls(&tls, tcp, peer, &metrics).await,
                    }
                    drop(slot);
                });
            }
            continue;
        };
        let router = router.clone();
        let timeout = limits.request_head_timeout;
        if !shards.is_empty() {
            let conn = Handoff {
                tcp,
                permit,
                peer,
                router,
                limits: limits.clone(),
                metrics: metrics.clone(),
                stop: stop.clone(),
            };
            match limits.tls {
                // The request line is inside the TLS stream.
                Some(_) => conn.hand_to(shards.round_robin(), &shards, &conns),
                None => {
                    let (shards, tracker) = (shards.clone(), conns.clone());
                    conns.spawn(async move {
                        if let Some(shard) = conn.pick_shard(&shards).await {
                            conn.hand_to(shard, &shards, &tracker);
                        }
                    });
                }
            }
            continue;
        }
        let io = Counted {
            io: tcp,
            _permit: permit,
            _on_shard: None,
        };
        match &limits.tls {
            None => conns.spawn(serve_connection(io, peer, router, timeout, stop.clone())),
            Some(tls) => conns.spawn(serve_tls_connection(
                tls.clone(),
                metrics.clone(),
                io,
                peer,
                router,
                timeout,
                stop.clone(),
            )),
        };
    }
    // Closed now, not once the open connections are done: a client trying
    // to connect from here on is refused (a rolling restart, src/drain.rs),
    // never queued by the kernel and then dropped.
    drop(listener);
    conns.close();
    conns.wait().await;
}

/// An accepted connection on its way to a shard: what serving it needs.
struct Handoff {
    tcp: TcpStream,
    permit: ConnPermit,
    peer: SocketAddr,
    router: Router,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl Handoff {
    /// The shard of the exam the request line names, round robin for
    /// another one; `None` (and the connection closed) if the client sent
    /// nothing within `server.request_head_timeout` (hyper would have closed
    /// it then too), closed first, or the server stops.
    ///
    /// One peek, never a loop: a peek returns the bytes already there again
    /// at once, so waiting for "more" would spin. A head split before its
    /// exam id arrives goes round robin; that costs locality, not service.
    async fn pick_shard(&self, shards: &Shards) -> Option<Option<usize>> {
        let mut head = [0u8; HEAD_PEEK];
        let peeked = tokio::select! {
            r = tokio::time::timeout(self.limits.request_head_timeout, self.tcp.peek(&mut head)) => r,
            _ = self.stop.cancelled() => return None,
        };
        match peeked {
            Ok(Ok(n)) if n > 0 => Some(match route::exam_of_head(&head[..n]) {
                Some(exam) => shards.for_exam(&exam),
                None => shards.round_robin(),
            }),
            Ok(Ok(_)) | Ok(Err(_)) => None,
            Err(_) => {
                tracing::debug!(peer = %self.peer, "no request head within server.request_head_timeout");
                None
            }
        }
    }

    /// Moves the socket to `shard`'s runtime and serves it there (on the
    /// current runtime if that shard is gone). The permit travels with it.
    fn hand_to(self, shard: Option<usize>, shards: &Shards, tracker: &TaskTracker) {
        let tcp = match self.tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, peer = %self.peer, "cannot move a connection to its shard");
                return;
            }
        };
        let on_shard = shards.clone();
        let Self {
            permit,
            peer,
            router,
            limits,
            metrics,
            stop,
            ..
        } = self;
        shards.spawn_on(shard, tracker, async move {
            // Registers the socket with this shard's reactor.
            let tcp = match TcpStream::from_std(tcp) {
                Ok(tcp) => tcp,
                Err(e) => {
                    tracing::debug!(error = %e, %peer, "cannot register a connection on its shard");
                    return;
                }
            };
            let io = Counted {
                io: tcp,
                _permit: permit,
                // Read on the thread that serves it; an upgraded socket
                // keeps it (hyper hands this I/O object to the WebSocket).
                _on_shard: on_shard.connection_here(),
            };
            let timeout = limits.request_head_timeout;
            match limits.tls {
                None => serve_connection(io, peer, router, timeout, stop).await,
                Some(tls) => {
                    serve_tls_connection(tls, metrics, io, peer, router, timeout, stop).await
                }
            }
        });
    }
}

/// The TLS handshake, under the request-head deadline, then HTTP over it.
async fn serve_tls_connection(
    tls: Arc<Tls>,
    metrics: Arc<Metrics>,
    io: Counted,
    peer: SocketAddr,
    router: Router,
    head_timeout: Duration,
    stop: CancellationToken,
) {
    let handshake = tokio::time::timeout(head_timeout, tls.acceptor().accept(io));
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return tls::handshake_failed(&metrics, peer, HandshakeFailure::of(&e), &e),
            Err(_) => {
                let why = "no complete handshake within server.request_head_timeout";
                return tls::handshake_failed(&metrics, peer, HandshakeFailure::Timeout, &why);
            }
        },
        _ = stop.cancelled() => return,
    };
    serve_connection(stream, peer, router, head_timeout, stop).await;
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    head_timeout: Duration,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move { Ok::<_, Infallible>(router.call(req).await.unwrap_or_else(|e| match e {})) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, %peer, "HTTP connection ended with an error");
            }
            return;
        }
        _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, %peer, "HTTP connection ended with an error");
    }
}

/// Every accepted socket sends without Nagle's algorithm. With it, a small
/// frame written while the previous one is still unacknowledged waits for
/// that ACK, and a client that delays its ACKs (Linux: up to 40 ms) stalls
/// the next event by that much: the load benchmark saw p99.9 at 43 ms, and
/// p99 at 40 ms in busy runs, from exactly this (docs/BENCHMARKS.md). Live
/// events are small and latency-bound; the writes are already batched.
fn tune_accepted(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted socket");
    }
}

/// Writes the 503, stops sending, and reads what the client sent (for at
/// most a second) so closing does not reset the connection before the
/// client has read the answer.
async fn refuse_full<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        io.write_all(FULL_RESPONSE).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 1024];
        while io.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// [`refuse_full`] on a TLS listener: the handshake first, so the client
/// reads a 503 rather than a TLS error.
async fn refuse_full_tls(tls: &Tls, tcp: TcpStream, peer: SocketAddr, metrics: &Metrics) {
    let handshake = tokio::time::timeout(REJECT_HANDSHAKE_TIMEOUT, tls.acceptor().accept(tcp));
    match handshake.await {
        Ok(Ok(stream)) => refuse_full(stream).await,
        Ok(Err(e)) => tls::handshake_failed(metrics, peer, HandshakeFailure::of(&e), &e),
        Err(_) => {
            let why = "over the connection cap, no complete handshake in time for the 503";
            tls::handshake_failed(metrics, peer, HandshakeFailure::Timeout, &why)
        }
    }
}

/// Errors about one connection that is already gone: nothing to back off
/// from.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Backoff and log throttling for accept errors.
#[derive(Default)]
struct AcceptErrors {
    pause: Option<Duration>,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn succeeded(&mut self) {
        self.pause = None;
    }

    /// Logs (at most once a second) and returns how long to pause.
    fn failed(&mut self, e: &io::Error) -> Duration {
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            tracing::error!(error = %e, suppressed = self.unlogged, "cannot accept connections (out of file descriptors?); backing off");
            self.last_log = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        let pause = self.pause.map_or(Self::FIRST, |p| (p * 2).min(Self::MAX));
        self.pause = Some(pause);
        pause
    }
}

/// One place under the connection cap, given back on drop.
struct ConnPermit(Arc<AtomicUsize>);

impl ConnPermit {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| ConnPermit(open.clone()))
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A TCP stream that holds its place under the cap for as long as it
/// lives, through a WebSocket upgrade (hyper moves the I/O object into the
/// upgraded stream).
struct Counted {
    io: TcpStream,
    _permit: ConnPermit,
    /// `examwatch_shard_connections` of the shard it is served on.
    _on_shard: Option<OnShard>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_send_without_nagle() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr);
        let ((accepted, _), _client) = tokio::try_join!(listener.accept(), client).unwrap();
        assert!(
            !accepted.nodelay().unwrap(),
            "the kernel's default has Nagle on"
        );
        tune_accepted(&accepted);
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn the_503_says_its_length_right() {
        let text = std::str::from_utf8(FULL_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
    }

    #[test]
    fn permits_stop_at_the_cap_and_come_back() {
        let open = Arc::new(AtomicUsize::new(0));
        let a = ConnPermit::take(&open, 2).unwrap();
        let _b = ConnPermit::take(&open, 2).unwrap();
        assert!(ConnPermit::take(&open, 2).is_none());
        drop(a);
        assert!(ConnPermit::take(&open, 2).is_some());
    }

    #[test]
    fn accept_errors_back_off_and_log_sparingly() {
        let mut errors = AcceptErrors::default();
        let e = io::Error::from_raw_os_error(24); // EMFILE
        let pauses: Vec<_> = (0..10).map(|_| errors.failed(&e)).collect();
        assert_eq!(pauses[0], AcceptErrors::FIRST);
        assert_eq!(pauses[1], AcceptErrors::FIRST * 2);
        assert_eq!(*pauses.last().unwrap(), AcceptErrors::MAX);
        assert_eq!(
            errors.unlogged, 9,
            "one line for ten errors within a second"
        );
        errors.succeeded();
        assert_eq!(errors.failed(&e), AcceptErrors::FIRST);
    }
}
