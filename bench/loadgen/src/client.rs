//! One simulated client's connection, in either framing the load generator
//! speaks: examwatch's own (JSON text frames) or Socket.IO's (Engine.IO v4
//! packets over a raw WebSocket), so the same run can drive examwatch and
//! the Socket.IO peer in `bench/peers/socketio`.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use tokio::{io::AsyncWriteExt, net::TcpSocket};
use tokio_tungstenite::{
    WebSocketStream, client_async_with_config,
    tungstenite::{
        Message, client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig,
    },
};

/// The wire framing of the server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Framing {
    /// examwatch's protocol (and the Node `ws` peer, which mimics it).
    Examwatch,
    /// Socket.IO v4 over a WebSocket-only Engine.IO transport.
    Socketio,
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub server: SocketAddr,
    pub source: IpAddr,
    pub exam: &'a str,
    pub token: &'a str,
    /// Extra query (`last_seq=…` or `previous_session=…`), examwatch only.
    pub query: Option<String>,
    /// A small TCP receive buffer (4 KiB): for a teacher that never reads,
    /// so what the server sends it piles up in the server's queue, not in
    /// megabytes of loopback socket buffers, and the server's slow-consumer
    /// rule (close 4008) is what ends it.
    pub small_receive_buffer: bool,
}

/// An open connection that yields application text frames.
pub struct Link {
    ws: WebSocketStream<tokio::net::TcpStream>,
    framing: Framing,
    /// The server's close code, once its close frame has been read.
    close_code: Option<u16>,
}

impl Link {
    pub async fn connect(framing: Framing, to: &Target<'_>) -> anyhow::Result<Self> {
        let socket = match to.source {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(to.source, 0))?;
        if to.small_receive_buffer {
            // Before connecting, so the handshake offers a small window and
            // a small segment size: the server's send buffer grows with its
            // segment size, and loopback's 64 KiB segments would let it
            // absorb megabytes.
            socket.set_recv_buffer_size(4096)?;
            small_segments(&socket)?;
        }
        let tcp = socket.connect(to.server).await?;
        tcp.set_nodelay(true)?;
        let server = to.server;
        let url = match framing {
            Framing::Examwatch => {
                let q = to
                    .query
                    .as_deref()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                format!("ws://{server}/v1/exams/{}/ws{q}", to.exam)
            }
            Framing::Socketio => format!(
                "ws://{server}/socket.io/?EIO=4&transport=websocket&exam={}&access_token={}",
                to.exam, to.token
            ),
        };
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {}", to.token))?,
        );
        // Small buffers: 19,000 clients at tungstenite's default 128 KiB
        // read buffer would need 2.4 GB.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = client_async_with_config(req, tcp, Some(config)).await?;
        let mut link = Self {
            ws,
            framing,
            close_code: None,
        };
        if framing == Framing::Socketio {
            // Engine.IO open packet, then a Socket.IO CONNECT to "/".
            link.expect_raw(|t| t.starts_with('0')).await?;
            link.ws.send(Message::text("40")).await?;
            link.expect_raw(|t| t.starts_with("40")).await?;
        }
        Ok(link)
    }

    /// The next handshake frame, which `ok` must accept. An Engine.IO ping
    /// (`2`) may come first (socketioxide pings right after its open
    /// packet): it is answered (`3`) and the wait goes on.
    async fn expect_raw(&mut self, ok: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if ok(t.as_str()) => return Ok(()),
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2" => {
                    self.ws.send(Message::text("3")).await?;
                }
                other => anyhow::bail!("unexpected Socket.IO handshake frame: {other:?}"),
            }
        }
    }

    /// The next application text frame; `None` when the connection ends.
    /// Socket.IO pings are answered here and never returned.
    pub async fn next_text(&mut self) -> Option<String> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(t)) => match self.framing {
                    Framing::Examwatch => return Some(t.as_str().to_owned()),
                    Framing::Socketio if t.as_str() == "2" => {
                        self.ws.send(Message::text("3")).await.ok()?;
                    }
                    Framing::Socketio => return Some(t.as_str().to_owned()),
                },
                Ok(Message::Close(frame)) => {
                    self.close_code = frame.map(|f| f.code.into());
                    return None;
                }
                Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Waits for a message whose JSON `type` is `kind`; returns its text.
    /// For `snapshot`, waits for its last part (a large exam's snapshot
    /// comes in parts, docs/PROTOCOL.md 4.12) and returns that one.
    pub async fn wait_for(&mut self, kind: &str) -> anyhow::Result<String> {
        let needle = format!(r#""type":"{kind}""#);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.next_text()).await {
                Ok(Some(t)) if t.contains(&needle) && (kind != "snapshot" || last_part(&t)) => {
                    return Ok(t);
                }
                Ok(Some(_)) => {}
                Ok(None) => anyhow::bail!("connection closed before {kind}"),
                Err(_) => anyhow::bail!("no {kind} within 30 s"),
            }
        }
    }

    /// Whether the connection, now ended, ended the way an instance going
    /// away ends it: 1012 (a rolling restart's drain), 1001 (shutdown), or
    /// no close frame at all (the process died). Any other close (4008 slow
    /// consumer, 4401 expired token, …) is about this client, and a client
    /// that reconnected after it would hide the server's verdict.
    pub fn server_went_away(&self) -> bool {
        matches!(self.close_code, None | Some(1001) | Some(1012))
    }

    /// Sends the `progress` that carries event `k` and its intended time;
    /// with `ack`, with `"ref": k`, so the server acknowledges it.
    pub async fn send_progress(&mut self, k: u64, stamp: u64, ack: bool) -> anyhow::Result<()> {
        let body = if ack {
            format!(r#"{{"type":"progress","question":"{k}:{stamp}","answered":1,"ref":{k}}}"#)
        } else {
            format!(r#"{{"type":"progress","question":"{k}:{stamp}","answered":1}}"#)
        };
        let frame = match self.framing {
            Framing::Examwatch => body,
            Framing::Socketio => format!(r#"42["progress",{body}]"#),
        };
        self.ws.send(Message::text(frame)).await?;
        Ok(())
    }

    /// Drops the connection the way a lost network does: no close frame,
    /// just the TCP end (after whatever was already written).
    pub async fn drop_abruptly(mut self) {
        let _ = self.ws.get_mut().shutdown().await;
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Asks for TCP segments of at most 536 bytes (the IPv4 minimum) on a
/// socket that is not yet connected.
fn small_segments(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mss: libc::c_int = 536;
    // SAFETY: a valid, open descriptor (borrowed from `socket` for the call)
    // and a pointer to a `c_int` that outlives it, with its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw const mss).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `k` and its stamp from a `student` event with cause `progress`.
pub fn parse_progress(text: &str) -> Option<(u64, u64)> {
    if !text.contains(r#""cause":"progress""#) {
        return None;
    }
    let (k, stamp) = string_field(text, "current_question")?.split_once(':')?;
    Some((k.parse().ok()?, stamp.parse().ok()?))
}

/// The event number an `ack` acknowledges (its numeric `ref`), if it is one.
pub fn parse_ack(text: &str) -> Option<u64> {
    if !text.contains(r#""type":"ack""#) {
        return None;
    }
    number_field(text, "ref")
}

/// The first `"seq":N` of a message, if any.
pub fn parse_seq(text: &str) -> Option<u64> {
    number_field(text, "seq")
}

/// Whether a snapshot frame is its first part (or whole).
pub fn first_part(text: &str) -> bool {
    number_field(text, "part").is_none_or(|p| p == 1)
}

/// Whether a snapshot frame is its last part (or whole).
pub fn last_part(text: &str) -> bool {
    match (number_field(text, "part"), number_field(text, "parts")) {
        (Some(part), Some(parts)) => part >= parts,
        _ => true,
    }
}

/// The first `"name":N` of a message, if any. The server writes `seq`,
/// `part` and `parts` before any client-chosen text, and the quotes of a
/// name inside a string are escaped, so the first match is the field.
fn number_field(text: &str, name: &str) -> Option<u64> {
    let key = format!(r#""{name}":"#);
    let at = text.find(&key)? + key.len();
    let digits: &str = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// The value of the first string field `name` (no escapes expected).
pub fn string_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(r#""{name}":""#);
    let at = text.find(&key)? + key.len();
    let rest = &text[at..];
    Some(&rest[..rest.find('"')?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_events_carry_their_number_and_stamp() {
        let ev = r#"{"type":"student","seq":9,"student":{"student_id":"s","current_question":"42:1234"},"cause":"progress"}"#;
        assert_eq!(parse_progress(ev), Some((42, 1234)));
        assert_eq!(parse_seq(ev), Some(9));
        assert_eq!(parse_progress(r#"{"cause":"connected"}"#), None);
        let sio = format!(r#"42["student",{ev}]"#);
        assert_eq!(parse_progress(&sio), Some((42, 1234)));
    }

    #[test]
    fn acks_name_the_event_they_acknowledge() {
        assert_eq!(parse_ack(r#"{"type":"ack","ref":42}"#), Some(42));
        assert_eq!(parse_ack(r#"{"type":"ack","ref":"p-1"}"#), None);
        assert_eq!(parse_ack(r#"{"type":"error","ref":42}"#), None);
    }

    #[test]
    fn fields_are_found_or_not() {
        let w = r#"{"type":"welcome","session_id":"abc-1","last_seq":3}"#;
        assert_eq!(string_field(w, "session_id"), Some("abc-1"));
        assert_eq!(string_field(w, "nope"), None);
        assert_eq!(parse_seq(r#"{"type":"x"}"#), None);
    }

    #[test]
    fn snapshot_parts_are_told_apart() {
        let part = |p, n| {
            format!(
                r#"{{"type":"snapshot","seq":4,"exam_id":"e","part":{p},"parts":{n},"students":[]}}"#
            )
        };
        assert!(first_part(&part(1, 3)) && !last_part(&part(1, 3)));
        assert!(!first_part(&part(2, 3)) && !last_part(&part(2, 3)));
        assert!(!first_part(&part(3, 3)) && last_part(&part(3, 3)));
        assert!(first_part(&part(1, 1)) && last_part(&part(1, 1)));
        let unpaged = r#"{"type":"snapshot","seq":4,"students":[]}"#;
        assert!(first_part(unpaged) && last_part(unpaged));
        assert_eq!(parse_seq(&part(2, 3)), Some(4));
    }
}
