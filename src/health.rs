//! The upgrade-aware readiness check: proof that a client could open a
//! WebSocket here now, not merely that the process answers HTTP.
//!
//! Every `server.ws_probe_interval` a task off the request path connects to
//! this server's own public listener (its bound port, on loopback), sends
//! a WebSocket upgrade request to the clients' path, pings, and waits for
//! the pong, all within `server.ws_probe_timeout`. `/readyz` only reads the
//! last result and its age ([`Health::state`]): a failed check, or none
//! recent enough (the task is stuck), makes it 503.
//!
//! What the check goes through is what a client's handshake goes through:
//! the accept loop (its connection cap and request-head deadline, and TLS
//! with `server.tls.*`: see [`Connector`]), hyper's HTTP/1 upgrade,
//! the router with its layers, axum's `WebSocketUpgrade` and tungstenite
//! with the server's frame settings. It stops where a client's
//! authentication would begin: the probe is not a student or a teacher,
//! so [`intercept`] answers it before the handshake handler (no token is
//! read, no room joined, no session recorded, no metric of connections
//! touched). It proves itself with a random secret made at start-up, sent
//! in the `x-examwatch-probe` header and never logged; a request without
//! it (or with another value) goes on to the normal handshake.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::{FromRequestParts, Request, State, ws::Message},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, http::HeaderValue};
use tokio_util::sync::CancellationToken;

use crate::app::AppState;

/// The header carrying the probe's secret.
pub const PROBE_HEADER: &str = "x-examwatch-probe";

/// The path the probe opens: the clients' socket path, for an exam id no
/// handshake would ever need (the interception happens before the exam is
/// looked at).
pub const PROBE_PATH: &str = "/v1/exams/_probe/ws";

/// The ping's payload, echoed in the pong.
const PING: &[u8] = b"examwatch-readiness";

/// How the probe reaches the listener: plain TCP, or with in-process TLS
/// (`server.tls.*`) a TLS handshake that trusts exactly the certificate
/// served now ([`crate::tls::Tls::loopback_connector`]), then the same
/// WebSocket exchange over the TLS stream (tungstenite's `client_async`
/// takes any `AsyncRead + AsyncWrite`).
#[derive(Clone, Default)]
pub enum Connector {
    #[default]
    Plain,
    Tls(tokio_rustls::TlsConnector),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connector::Plain => "Plain",
            Connector::Tls(_) => "Tls",
        })
    }
}

/// The last results of the check, for `/readyz`.
pub struct Health {
    /// The probe's credential: 128 random bits as hex, never logged.
    secret: String,
    last: Mutex<Last>,
    started: Instant,
    interval: Duration,
    timeout: Duration,
}

#[derive(Default)]
struct Last {
    /// When the last check ended and how (its round trip, or why it failed).
    result: Option<(Instant, Result<Duration, String>)>,
}

/// What readiness reports of the check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ProbeState {
    /// `server.ws_probe_interval` is 0.
    Off,
    /// Just started: the first check has not finished yet.
    Pending,
    Ok {
        age_ms: u64,
        rtt_ms: u64,
    },
    Failing {
        age_ms: u64,
        error: String,
    },
    /// No check finished recently: the task is stuck or gone.
    Stale {
        age_ms: u64,
    },
}

impl ProbeState {
    /// The word `/readyz` gives as a reason, when this makes it 503.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            ProbeState::Failing { .. } => Some("websocket_probe_failing"),
            ProbeState::Stale { .. } => Some("websocket_probe_stale"),
            _ => None,
        }
    }
}

impl Health {
    pub fn new(settings: &crate::config::ServerSettings) -> Self {
        let mut bytes = [0u8; 16];
        // No randomness from the OS: the secret is still unguessable enough
        // from the clock and the process id, and it guards only a probe.
        if getrandom::fill(&mut bytes).is_err() {
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
                ^ u128::from(std::process::id());
            bytes = seed.to_le_bytes();
        }
        Self {
            secret: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            last: Mutex::default(),
            started: Instant::now(),
            interval: settings.ws_probe_interval,
            timeout: settings.ws_probe_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Last> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request carries the probe's secret.
    fn is_probe(&self, headers: &axum::http::HeaderMap) -> bool {
        headers
            .get(PROBE_HEADER)
            .is_some_and(|v| v.as_bytes() == self.secret.as_bytes())
    }

    /// The check as of `now`. A result older than two intervals and a
    /// timeout is stale: the next check should have ended by then.
    pub fn state(&self, now: Instant) -> ProbeState {
        if self.interval.is_zero() {
            return ProbeState::Off;
        }
        let fresh_for = self.interval * 2 + self.timeout;
        let last = self.lock();
        let Some((at, result)) = &last.result else {
            let waited = now.saturating_duration_since(self.started);
            return if waited <= fresh_for {
                ProbeState::Pending
            } else {
                ProbeState::Stale {
                    age_ms: waited.as_millis() as u64,
                }
            };
        };
        let age = now.saturating_duration_since(*at);
        let age_ms = age.as_millis() as u64;
        if age > fresh_for {
            return ProbeState::Stale { age_ms };
        }
        match result {
            Ok(rtt) => ProbeState::Ok {
                age_ms,
                rtt_ms: rtt.as_millis() as u64,
            },
            Err(e) => ProbeState::Failing {
                age_ms,
                error: e.clone(),
            },
        }
    }

    fn record(&self, result: Result<Duration, String>) {
        let was_ok = matches!(self.lock().result, Some((_, Ok(_))) | None);
        match (&result, was_ok) {
            // Not an error of the server's own: a warning, once per failure.
            (Err(e), true) => {
                tracing::warn!(error = %e, "readiness: the WebSocket loopback check failed; /readyz is 503")
            }
            (Ok(_), false) => tracing::info!("readiness: the WebSocket loopback check works again"),
            _ => {}
        }
        self.lock().result = Some((Instant::now(), result));
    }
}

/// Checks every `server.ws_probe_interval` until `stop`; the first at once.
pub async fn run(
    app: AppState,
    listener: SocketAddr,
    connector: Connector,
    stop: CancellationToken,
) {
    let health = app.health.clone();
    if health.interval.is_zero() {
        return;
    }
    let target = loopback(listener);
    let mut every = tokio::time::interval(health.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.cancelled() => return,
        }
        let started = Instant::now();
        let checked =
            tokio::time::timeout(health.timeout, connector.open(target, &health.secret)).await;
        let result = match checked {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "no pong within server.ws_probe_timeout ({} ms)",
                health.timeout.as_millis()
            )),
        };
        if stop.is_cancelled() {
            return; // shutting down: the listener went first
        }
        health.record(result);
    }
}

/// The listener's port on loopback (a wildcard bind is reached there).
fn loopback(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

impl Connector {
    /// One check: connect, upgrade, ping, pong, close.
    async fn open(&self, target: SocketAddr, secret: &str) -> Result<(), String> {
        let tcp = tokio::net::TcpStream::connect(target)
            .await
            .map_err(|e| format!("cannot connect to {target}: {e}"))?;
        match self {
            Connector::Plain => exchange(tcp, &format!("ws://{target}{PROBE_PATH}"), secret).await,
            Connector::Tls(tls) => {
                let name = rustls::pki_types::ServerName::from(target.ip());
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                exchange(stream, &format!("wss://{target}{PROBE_PATH}"), secret).await
            }
        }
    }
}

/// The WebSocket part of a check, over any stream.
async fn exchange<S>(stream: S, url: &str, secret: &str) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("bad probe request: {e}"))?;
    let value = HeaderValue::from_str(secret).map_err(|e| format!("bad probe secret: {e}"))?;
    req.headers_mut().insert(PROBE_HEADER, value);
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(res) => format!("upgrade refused: HTTP {}", res.status()),
            e => format!("upgrade failed: {e}"),
        })?;
    ws.send(tungstenite::Message::Ping(PING.into()))
        .await
        .map_err(|e| format!("cannot ping: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(tungstenite::Message::Pong(p))) if p.as_ref() == PING => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("no pong: {e}")),
            None => return Err("closed before the pong".into()),
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// A router layer: answers the probe's upgrade (and nothing else) before
/// the handshake handler; every other request goes on untouched.
pub async fn intercept(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if !app.health.is_probe(req.headers()) || req.uri().path() != PROBE_PATH {
        return next.run(req).await;
    }
    let (mut parts, _) = req.into_parts();
    let upgrade =
        match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &app).await {
            Ok(u) => u,
            Err(e) => return e.into_response(),
        };
    let stop = app.shutdown.clone();
    let limit = app.settings.server.ws_probe_timeout;
    upgrade
        .max_message_size(1024)
        .on_upgrade(move |mut socket| async move {
            // tungstenite answers the ping itself while we read; the probe
            // closes after its pong. Bounded, and gone at shutdown.
            let _ = tokio::time::timeout(limit, async {
                loop {
                    tokio::select! {
                        msg = socket.recv() => match msg {
                            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                            Some(Ok(_)) => {}
                        },
                        _ = stop.cancelled() => break,
                    }
                }
            })
            .await;
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(interval_ms: u64) -> Health {
        let s = crate::config::ServerSettings {
            ws_probe_interval: Duration::from_millis(interval_ms),
            ws_probe_timeout: Duration::from_millis(100),
            ..Default::default()
        };
        Health::new(&s)
    }

    #[test]
    fn pending_then_ok_then_failing_then_stale() {
        let h = health(1000);
        let t0 = h.started;
        assert_eq!(h.state(t0), ProbeState::Pending);
        assert!(matches!(
            h.state(t0 + Duration::from_secs(3)),
            ProbeState::Stale { .. }
        ));
        h.record(Ok(Duration::from_millis(3)));
        let now = Instant::now();
        assert!(
            matches!(h.state(now), ProbeState::Ok { rtt_ms: 3, .. }),
            "{:?}",
            h.state(now)
        );
        h.record(Err("upgrade refused: HTTP 503".into()));
        let failing = h.state(Instant::now());
        assert_eq!(failing.reason(), Some("websocket_probe_failing"));
        let later = Instant::now() + Duration::from_millis(2200);
        assert_eq!(h.state(later).reason(), Some("websocket_probe_stale"));
    }

    #[test]
    fn off_when_the_interval_is_zero_and_the_secret_is_checked() {
        let h = health(0);
        assert_eq!(h.state(Instant::now()), ProbeState::Off);
        let mut headers = axum::http::HeaderMap::new();
        assert!(!h.is_probe(&headers));
        headers.insert(PROBE_HEADER, HeaderValue::from_static("guess"));
        assert!(!h.is_probe(&headers));
        headers.insert(PROBE_HEADER, HeaderValue::from_str(&h.secret).unwrap());
        assert!(h.is_probe(&headers));
        assert_eq!(h.secret.len(), 32);
    }

    #[test]
    fn a_wildcard_bind_is_probed_on_loopback() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(loopback(any), "127.0.0.1:8080".parse().unwrap());
        let v6: SocketAddr = "[::]:8080".parse().unwrap();
        assert_eq!(loopback(v6), "[::1]:8080".parse().unwrap());
    }
}
