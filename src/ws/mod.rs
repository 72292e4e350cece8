//! The WebSocket endpoint: the handshake checks ([`handshake`]: everything is refused before
//! the upgrade), then one task per connection that reads client frames,
//! writes what the room queued, pings, and closes with a documented code.
//!
//! One task, not a reader and a writer: it halves the per-connection cost,
//! and every write is raced against the connection's [`Kick`] and the
//! server's shutdown, so a peer that stops reading can never pin the task.
//!
//! Beside it: [`join`] (the session lease and what the room is told when
//! the connection joins) and [`lifetime`] (the token's end, `refresh`, and
//! the budget of refused messages).

use std::{sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{FutureExt, SinkExt};
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use crate::{
    app::AppState,
    auth::Role,
    client_ip::ClientAddr,
    protocol::{self, Seq},
    ratelimit::ConnectionSlot,
    revocations::TokenId,
    room::{
        CloseReason, ConnId, Kick, Outbox, RoomCmd, RoomHandle, close, queue::QueueRx,
        rate::LazyBucket,
    },
    store::{now_ms, writer::Record},
    telemetry,
};

/// The subprotocol accepted when a client offers it.
pub const SUBPROTOCOL: &str = "examwatch.v1";

/// Payload of the ping that answers a liveness probe.
const PROBE: &[u8] = b"examwatch-probe";

/// The most a socket's write buffer holds (tungstenite's
/// `max_write_buffer_size`): a frame larger than this cannot be written at
/// all ("Write buffer is full"), so large snapshots go in parts well below
/// it (room/snapshot.rs).
pub const MAX_WRITE_BUFFER: usize = 1024 * 1024;

/// Longest wait for a peer to answer our close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub(crate) mod answered;
pub(crate) mod deadlines;
pub mod handshake;
pub(crate) mod inbound;
mod join;
pub(crate) mod lifetime;
use deadlines::{Deadlines, Due};
pub use handshake::{WsParams, handshake};
pub(crate) use handshake::{
    check_origin, check_roster, connection_slot, refuse_connection, require_grant,
    retry_after_secs, verify_token,
};
use inbound::Inbound;
pub(crate) use lifetime::{BadBudget, Standing};

/// How a connection ended, for the close frame and the log line.
pub(crate) enum Ending {
    /// We close, with this code.
    Server(CloseReason),
    /// The client sent a close frame.
    Client { code: Option<u16>, reason: String },
    /// The transport went away without a close handshake.
    Dropped(String),
}

pub(crate) struct Connection {
    pub(crate) id: ConnId,
    pub(crate) exam_id: Arc<str>,
    pub(crate) name: Arc<str>,
    pub(crate) user: Arc<str>,
    /// Only what the connection needs of its token (the whole claims,
    /// with the list of granted exams, would be held for its whole life).
    pub(crate) role: Role,
    /// The client's address (the peer, or whom a trusted proxy forwarded for).
    pub(crate) client: ClientAddr,
    /// This connection's place in its IP's count (`limits.connections_per_ip`),
    /// given back when the connection (and so this field) is dropped.
    pub(crate) _slot: ConnectionSlot,
    /// What revocations look at (`sub`, `jti`, `iat`) in the token the
    /// connection was admitted with; a `refresh` replaces it.
    pub(crate) token: TokenId,
    /// The admitting token's `exp` (a ticket's: its token's), Unix seconds.
    pub(crate) exp: u64,
    pub(crate) user_agent: String,
    /// Formatted where it is written (a UUID's 16 bytes, not a 36-byte
    /// string on the heap for the connection's whole life).
    pub(crate) session_id: uuid::Uuid,
    /// How the handshake authenticated, for the `connected` log line.
    pub(crate) via: AuthVia,
    pub(crate) last_seq: Option<Seq>,
    pub(crate) previous_session: Option<String>,
    /// The handover token the connection presented (`?handover=`) for the
    /// HTTP session it names as `previous_session` (PROTOCOL.md 8.4). If it
    /// is that session's, the same client is moving: the session is taken
    /// over without a probe, here or on its instance. Boxed: rare, and the
    /// connection lives long.
    pub(crate) handover: Option<Box<uuid::Uuid>>,
    /// A student's HTTP session (PROTOCOL.md 8), not a socket.
    pub(crate) http: bool,
    pub(crate) app: AppState,
}

/// A connection that joined its room: what its loop works with.
pub(crate) struct Joined {
    /// What the room queues for it.
    pub(crate) rx: QueueRx,
    pub(crate) kick: Kick,
    pub(crate) room: RoomHandle,
    /// The message budget: the student's own, shared by all their
    /// connections, made on the first message.
    pub(crate) limiter: LazyBucket,
    /// Its token, and its entry in the registry of open connections
    /// (src/live.rs), dropped with it.
    pub(crate) standing: Standing,
}

impl Ending {
    /// Who ended it and with which code, for `examwatch_closes_total`
    /// (1005 and 1006 are what RFC 6455 reserves for "no code" and "no
    /// close frame").
    fn metric(&self) -> (crate::metrics::ClosedBy, u16) {
        use crate::metrics::ClosedBy;
        match self {
            Ending::Server(r) => (ClosedBy::Server, r.code),
            Ending::Client { code, .. } => (ClosedBy::Client, code.unwrap_or(1005)),
            Ending::Dropped(_) => (ClosedBy::Transport, 1006),
        }
    }
}

/// The credential a connection was admitted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthVia {
    /// `Authorization: Bearer` or `?access_token=`.
    Token,
    /// `?ticket=` (`POST /v1/tickets`).
    Ticket,
}

impl AuthVia {
    fn as_str(self) -> &'static str {
        match self {
            AuthVia::Token => "token",
            AuthVia::Ticket => "ticket",
        }
    }
}

impl Connection {
    fn watcher(&self) -> bool {
        self.role.is_watcher()
    }

    /// The connection's life. Its future is the task's whole footprint
    /// while the connection idles, so it is kept lean: the connection is
    /// boxed (the task's outer layers keep their own copy of whatever they
    /// were given for the whole life of the task), the socket is owned here
    /// only, and the log lines run synchronously inside the span instead of
    /// wrapping the whole body in another future layer.
    ///
    /// A plain `fn` returning an `async move` block, not an `async fn`: an
    /// `async fn` keeps a second copy of its arguments (the socket, 368
    /// bytes) beside the one it works on (rust-lang/rust#62958), for the
    /// whole life of the connection.
    fn run(
        self: Box<Self>,
        socket: WebSocket,
        guard: TaskTrackerToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let mut socket = socket;
        async move {
            let _guard = &guard;
            let span = tracing::info_span!(
                "conn",
                conn_id = self.id,
                exam_id = %self.exam_id,
                user_id = %self.user,
                role = self.role.as_str(),
            );
            let started = Instant::now();
            span.in_scope(|| {
                self.opened(
                    socket
                        .protocol()
                        .and_then(|p| p.to_str().ok())
                        .unwrap_or("-"),
                )
            });
            let ending = self.serve(&mut socket).instrument(span.clone()).await;
            span.in_scope(|| self.closed(&ending, started));
        }
    }

    fn gauge(&self) -> &metrics::Gauge {
        if self.watcher() {
            &self.app.metrics.teachers_connected
        } else {
            &self.app.metrics.students_connected
        }
    }

    /// Counts and logs the connection, and records its session.
    /// `protocol`: the subprotocol, or the transport when it is no socket.
    pub(crate) fn opened(&self, protocol: &str) {
        self.gauge().increment(1);
        self.app
            .metrics
            .connections_open(self.role, self.http)
            .increment(1);
        self.app.metrics.connections_total.increment(1);
        tracing::info!(
            ip = %self.client, user_agent = %self.user_agent, auth = "ok",
            via = self.via.as_str(), session_id = %self.session_id,
            protocol,
            "connected"
        );
        self.app.writer.write(Record::SessionOpened {
            id: self.session_id.to_string(),
            exam_id: self.exam_id.clone(),
            user_id: self.user.to_string(),
            role: self.role.as_str(),
            at: now_ms(),
            ip: self.client.recorded(),
            user_agent: self.user_agent.clone(),
            instance_id: self.app.instance_id.clone(),
        });
    }

    pub(crate) fn closed(&self, ending: &Ending, started: Instant) {
        self.app.metrics.closed(ending.metric());
        self.gauge().decrement(1);
        self.app
            .metrics
            .connections_open(self.role, self.http)
            .decrement(1);
        let (code, reason, by) = match ending {
            Ending::Server(r) => (Some(r.code), r.reason.to_owned(), "server"),
            Ending::Client { code, reason } => (*code, reason.clone(), "client"),
            Ending::Dropped(e) => (None, e.clone(), "transport"),
        };
        self.app.writer.write(Record::SessionClosed {
            id: self.session_id.to_string(),
            at: now_ms(),
            code: code.map(i64::from),
            reason: format!("{by}: {reason}"),
        });
        tracing::info!(
            ip = %self.client, user_agent = %self.user_agent,
            close_code = code.map(i64::from).unwrap_or(-1),
            close_reason = %telemetry::clip(&reason),
            closed_by = by, duration_ms = started.elapsed().as_millis() as u64,
            "disconnected"
        );
    }

    async fn serve(&self, socket: &mut WebSocket) -> Ending {
        let lane = crate::metrics::SlowPath::of_socket(self.role);
        // Boxed here and below: a future's size is that of its largest
        // await point, and it lives for the connection's whole life. The
        // join (lease claim, database read) and the write and message
        // handlers only run briefly, so they live on the heap while they
        // do (with `run` below, the task's future went from 5.6 KB to 1.35 KB).
        let mut joined = match Box::pin(self.enter(lane)).await {
            Ok(joined) => joined,
            Err(reason) => {
                Box::pin(close_socket(socket, &reason)).await;
                return Ending::Server(reason);
            }
        };
        let ending = self
            .pump(
                socket,
                &joined.rx,
                &joined.kick,
                &joined.room,
                &joined.limiter,
                &mut joined.standing,
            )
            .await;
        // The room keeps the session lease through the grace period (marked
        // `/grace`) and releases it when the student is gone for good.
        let _ = Box::pin(joined.room.send(RoomCmd::Leave { conn: self.id })).await;
        match &ending {
            Ending::Server(reason) => Box::pin(close_socket(socket, reason)).await,
            // Let tungstenite flush its automatic close reply.
            Ending::Client { .. } => {
                let _ = Box::pin(tokio::time::timeout(CLOSE_WAIT, socket.recv())).await;
            }
            Ending::Dropped(_) => {}
        }
        ending
    }

    /// What every transport of a connection does before its loop: its
    /// queue, its one entry in the registry of open connections (src/live.rs:
    /// the drain, a rebalance and revocations read it), and the join
    /// (session lease, status, second session, grace, `welcome`). `Err`: the close code to end with.
    pub(crate) async fn enter(
        &self,
        lane: crate::metrics::SlowPath,
    ) -> Result<Joined, CloseReason> {
        let settings = &self.app.settings;
        let queue = if self.watcher() {
            settings.ws.teacher_queue
        } else {
            settings.ws.student_queue
        };
        let (tx, rx, kick) = crate::room::queue::queue(queue);
        let out = Outbox {
            tx,
            kick: kick.clone(),
            lane,
        };
        // Listed (src/live.rs) for a rolling restart's spread close, a
        // rebalance and revocations: from here on a revocation of its token
        // closes it (4403), and a drain that has begun kicks it (1012).
        let live = self.app.revocations.register(
            self.id,
            self.exam_id.clone(),
            self.watcher(),
            self.token.clone(),
            out.clone(),
        );
        let Some((room, limiter)) = self.join(out).await else {
            return Err(if self.app.shutdown.is_cancelled() {
                close::GOING_AWAY
            } else {
                close::TRY_AGAIN
            });
        };
        let standing = Standing {
            exp: self.exp,
            live,
            bad: BadBudget::new(self.app.settings.limits.bad_message_window),
        };
        Ok(Joined {
            rx,
            kick,
            room,
            limiter,
            standing,
        })
    }

    /// The connection's main loop; returns how it ended.
    ///
    /// One timer for every timed duty (pings, the token's end, the first
    /// message's deadline: [`Deadlines`]), and no branch for the server's
    /// shutdown: the drain kicks every listed connection before the
    /// shutdown token is cancelled, and one that registers later is kicked
    /// at once (src/live.rs). Each branch's future lives in this loop's
    /// future for the connection's whole life, so every one left out is
    /// memory every idle connection keeps.
    async fn pump(
        &self,
        socket: &mut WebSocket,
        rx: &QueueRx,
        kick: &Kick,
        room: &RoomHandle,
        limiter: &LazyBucket,
        standing: &mut Standing,
    ) -> Ending {
        let settings = &self.app.settings;
        let grace = lifetime::grace(&settings.auth);
        let mut deadlines = Deadlines::new(
            Instant::now(),
            settings.ws.ping_interval,
            lifetime::next_wake(standing.exp, grace),
            settings.limits.first_message_timeout,
        );
        let timer = tokio::time::sleep_until(deadlines.next());
        tokio::pin!(timer);
        loop {
            let wake = deadlines.next();
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            let step = tokio::select! {
                biased;
                // Frames already queued go before a kick is noticed, so a
                // `session_invalidated` reaches the socket it concerns; a
                // write that blocks still yields to the kick (see `guarded`).
                first = rx.recv() => Box::pin(self.write_batch(socket, first, rx, kick)).await,
                reason = kick.kicked() => Err(Ending::Server(reason)),
                // Before the read: a chatty client cannot hold off its
                // token's end.
                () = &mut timer => {
                    let due = deadlines.due(Instant::now());
                    Box::pin(self.on_due(due, socket, room, kick, limiter, standing, &mut deadlines))
                        .await
                }
                incoming = socket.recv() => {
                    Box::pin(self.on_frame(incoming, socket, room, kick, limiter, standing, &mut deadlines))
                        .await
                }
                _ = kick.probed() => {
                    let ping = Message::Ping(axum::body::Bytes::from_static(PROBE));
                    Box::pin(guarded(kick, &self.app.shutdown, socket.send(ping))).await
                }
            };
            if let Err(ending) = step {
                return ending;
            }
        }
    }

    /// The timer fired: does what [`Deadlines::due`] says is due.
    #[allow(clippy::too_many_arguments)]
    async fn on_due(
        &self,
        due: Option<Due>,
        socket: &mut WebSocket,
        room: &RoomHandle,
        kick: &Kick,
        limiter: &LazyBucket,
        standing: &mut Standing,
        deadlines: &mut Deadlines,
    ) -> Result<(), Ending> {
        let shutdown = &self.app.shutdown;
        match due {
            None => Ok(()),
            Some(Due::Expiry) => {
                let grace = lifetime::grace(&self.app.settings.auth);
                if lifetime::until_expiry(standing.exp, grace, now_ms()).is_zero() {
                    self.expired(socket, kick).await
                } else {
                    // Armed for at most a month: look again.
                    deadlines.set_expiry(lifetime::next_wake(standing.exp, grace));
                    Ok(())
                }
            }
            Some(Due::FirstMessage) => {
                // A message that came in time goes first: read what is
                // already there before closing.
                match socket.recv().now_or_never() {
                    Some(incoming) => {
                        Box::pin(
                            self.on_frame(
                                incoming, socket, room, kick, limiter, standing, deadlines,
                            ),
                        )
                        .await
                    }
                    None => Err(Ending::Server(close::FIRST_MESSAGE_TIMEOUT)),
                }
            }
            Some(Due::PingTimeout) => {
                self.app.metrics.ping_timeouts.increment(1);
                Err(Ending::Server(close::PING_TIMEOUT))
            }
            Some(Due::Ping) => {
                let ping = Message::Ping(Default::default());
                guarded(kick, shutdown, socket.send(ping)).await
            }
        }
    }

    /// A frame from the client (or the end of its stream).
    #[allow(clippy::too_many_arguments)]
    async fn on_frame(
        &self,
        incoming: Option<Result<Message, axum::Error>>,
        socket: &mut WebSocket,
        room: &RoomHandle,
        kick: &Kick,
        limiter: &LazyBucket,
        standing: &mut Standing,
        deadlines: &mut Deadlines,
    ) -> Result<(), Ending> {
        let msg = match incoming {
            None => {
                return Err(Ending::Dropped(
                    "connection closed without a close frame".into(),
                ));
            }
            Some(Err(e)) => return Err(read_error(e)),
            Some(Ok(msg)) => msg,
        };
        deadlines.heard(Instant::now());
        match msg {
            Message::Text(text) => {
                deadlines.spoke();
                let before = standing.exp;
                let step = self
                    .on_text(socket, text, room, kick, limiter, standing)
                    .await;
                if standing.exp != before {
                    let grace = lifetime::grace(&self.app.settings.auth);
                    deadlines.set_expiry(lifetime::next_wake(standing.exp, grace));
                }
                step
            }
            Message::Binary(_) => Err(Ending::Server(close::UNSUPPORTED)),
            Message::Pong(payload) if payload.as_ref() == PROBE => {
                let _ = room.send(RoomCmd::Alive { conn: self.id }).await;
                Ok(())
            }
            Message::Ping(_) | Message::Pong(_) => Ok(()),
            Message::Close(frame) => Err(Ending::Client {
                code: frame.as_ref().map(|f| f.code),
                // Client-chosen text headed for logs and the database: no
                // control characters.
                reason: frame
                    .map(|f| f.reason.chars().filter(|c| !c.is_control()).collect())
                    .unwrap_or_default(),
            }),
        }
    }

    /// Writes one queued frame and whatever else is already queued, then
    /// flushes once: one syscall for a burst instead of one per frame.
    async fn write_batch(
        &self,
        socket: &mut WebSocket,
        first: Utf8Bytes,
        rx: &QueueRx,
        kick: &Kick,
    ) -> Result<(), Ending> {
        let shutdown = &self.app.shutdown;
        guarded(kick, shutdown, socket.feed(Message::Text(first))).await?;
        for _ in 0..64 {
            match rx.try_recv() {
                Some(more) => guarded(kick, shutdown, socket.feed(Message::Text(more))).await?,
                None => break,
            }
        }
        guarded(kick, shutdown, socket.flush()).await
    }

    async fn on_text(
        &self,
        socket: &mut WebSocket,
        text: Utf8Bytes,
        room: &RoomHandle,
        kick: &Kick,
        limiter: &LazyBucket,
        standing: &mut Standing,
    ) -> Result<(), Ending> {
        let received = std::time::Instant::now();
        let refusal = match inbound::classify(&self.app, self.role, limiter, text.as_str()) {
            Inbound::TooBig => return Err(Ending::Server(close::TOO_BIG)),
            Inbound::Refused(refusal) => refusal,
            Inbound::Refresh { token, r#ref } => {
                match self.refresh(socket, kick, &token, r#ref, standing).await? {
                    None => return Ok(()),
                    Some((code, message, r#ref)) => inbound::Refusal {
                        code,
                        message,
                        r#ref,
                        retry_after_ms: None,
                    },
                }
            }
            Inbound::Room(incoming) => {
                return match room.send(self.message(received, incoming)).await {
                    Ok(()) => Ok(()),
                    Err(_) => Err(Ending::Server(close::GOING_AWAY)),
                };
            }
        };
        let exhausted = standing
            .bad
            .spend(self.app.settings.limits.max_bad_messages);
        let frame = refusal.frame(&self.app);
        guarded(kick, &self.app.shutdown, socket.send(Message::Text(frame))).await?;
        if exhausted {
            return Err(Ending::Server(lifetime::bad_close(refusal.code)));
        }
        Ok(())
    }

    /// The room command for a message of this connection.
    pub(crate) fn message(
        &self,
        received: std::time::Instant,
        incoming: protocol::Incoming,
    ) -> RoomCmd {
        RoomCmd::Message {
            received,
            conn: self.id,
            r#ref: incoming.r#ref,
            msg: incoming.msg,
            user: self.user.clone(),
            from: self.name.clone(),
        }
    }
}

/// Runs a socket write unless the connection is kicked or the server stops
/// first: a peer that does not read cannot hold the task.
async fn guarded<F>(
    kick: &Kick,
    shutdown: &tokio_util::sync::CancellationToken,
    write: F,
) -> Result<(), Ending>
where
    F: Future<Output = Result<(), axum::Error>>,
{
    tokio::select! {
        biased;
        r = write => r.map_err(|e| Ending::Dropped(format!("write failed: {e}"))),
        reason = kick.kicked() => Err(Ending::Server(reason)),
        _ = shutdown.cancelled() => Err(Ending::Server(close::GOING_AWAY)),
    }
}

/// Maps a read error to how the connection ends: oversized frames get 1009,
/// text that is not UTF-8 gets 1007, a transport failure is just a drop.
fn read_error(e: axum::Error) -> Ending {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Ending::Server(close::TOO_BIG),
        Some(tungstenite::Error::Utf8(_)) => Ending::Server(close::NOT_UTF8),
        Some(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => Ending::Dropped("connection reset without a close frame".into()),
        Some(tungstenite::Error::Protocol(p)) => {
            tracing::debug!(error = %p, "protocol violation");
            Ending::Server(close::PROTOCOL)
        }
        _ => Ending::Dropped(format!("read failed: {inner}")),
    }
}

/// Sends our close frame and waits (bounded) for the peer's reply.
async fn close_socket(socket: &mut WebSocket, reason: &CloseReason) {
    let frame = Message::Close(Some(CloseFrame {
        code: reason.code,
        reason: reason.reason.into(),
    }));
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if socket.send(frame).await.is_ok() {
            while let Some(Ok(_)) = socket.recv().await {}
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use super::*;

    /// The size of what `f` returns, without calling it (nor building its
    /// arguments: a socket cannot be had without a real upgrade).
    fn output_size<A, B, C, R>(_: &impl FnOnce(A, B, C) -> R) -> usize {
        size_of::<R>()
    }

    /// The connection's future is what an idle connection's task keeps for
    /// its whole life (its socket is inline in it): every branch of the
    /// loop and every local that lives across an await counts, so a new
    /// one that grows it fails here rather than in `bench/` 10,000 times.
    /// (1,216 bytes in a debug build when written; a release build's is
    /// smaller.)
    #[test]
    fn the_connection_future_stays_small() {
        let run = output_size(&Connection::run);
        let socket = size_of::<WebSocket>();
        println!("Connection::run future: {run} bytes (socket {socket} of it)");
        assert!(run <= 1_280, "the connection's future grew to {run} bytes");
    }
}
