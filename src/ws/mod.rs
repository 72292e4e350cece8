//! The WebSocket endpoint: the handshake checks ([`handshake`]: everything is refused before
//! the upgrade), then one task per connection that reads client frames,
//! writes what the room queued, pings, and closes with a documented code.
//!
//! One task, not a reader and a writer: it halves the per-connection cost,
//! and every write is raced against the connection's [`Kick`] and the
//! server's shutdown, so a peer that stops reading can never pin the task.

use std::{pin::Pin, sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use tokio::{
    sync::oneshot,
    time::{Instant, MissedTickBehavior},
};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use crate::{
    app::AppState,
    auth::Role,
    client_ip::ClientAddr,
    protocol::{self, ErrorCode, Label, Seq, ServerMsg},
    ratelimit::ConnectionSlot,
    revocations::{LiveGuard, TokenId},
    room::{
        CloseReason, ConnId, Kick, Outbox, RoomCmd, RoomHandle, StudentId, StudentJoin, close,
        queue::QueueRx, rate::RateBucket,
    },
    store::{now_ms, writer::Record},
    telemetry,
};
use crate::{broker::Broker, config::SecondSession, room::ClusterJoin};

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

pub mod handshake;
pub(crate) mod lifetime;
pub use handshake::{WsParams, handshake};
pub(crate) use handshake::{
    check_origin, check_roster, connection_slot, refuse_connection, require_grant,
    retry_after_secs, verify_token,
};

/// How a connection ended, for the close frame and the log line.
enum Ending {
    /// We close, with this code.
    Server(CloseReason),
    /// The client sent a close frame.
    Client { code: Option<u16>, reason: String },
    /// The transport went away without a close handshake.
    Dropped(String),
}

struct Connection {
    id: ConnId,
    exam_id: Arc<str>,
    name: Arc<str>,
    user: Arc<str>,
    /// Only what the connection needs of its token (the whole claims,
    /// with the list of granted exams, would be held for its whole life).
    role: Role,
    /// The client's address (the peer, or whom a trusted proxy forwarded for).
    client: ClientAddr,
    /// This connection's place in its IP's count (`limits.connections_per_ip`),
    /// given back when the connection (and so this field) is dropped.
    _slot: ConnectionSlot,
    /// What revocations look at (`sub`, `jti`, `iat`) in the token the
    /// connection was admitted with; a `refresh` replaces it.
    token: TokenId,
    /// The admitting token's `exp` (a ticket's: its token's), Unix seconds.
    exp: u64,
    user_agent: String,
    session_id: String,
    /// How the handshake authenticated, for the `connected` log line.
    via: AuthVia,
    last_seq: Option<Seq>,
    previous_session: Option<String>,
    app: AppState,
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
enum AuthVia {
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
            span.in_scope(|| self.opened(&socket));
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

    fn opened(&self, socket: &WebSocket) {
        self.gauge().increment(1);
        self.app.metrics.connections_open(self.role).increment(1);
        self.app.metrics.connections_total.increment(1);
        tracing::info!(
            ip = %self.client, user_agent = %self.user_agent, auth = "ok",
            via = self.via.as_str(), session_id = %self.session_id,
            protocol = socket.protocol().and_then(|p| p.to_str().ok()).unwrap_or("-"),
            "connected"
        );
        self.app.writer.write(Record::SessionOpened {
            id: self.session_id.clone(),
            exam_id: self.exam_id.clone(),
            user_id: self.user.to_string(),
            role: self.role.as_str(),
            at: now_ms(),
            ip: self.client.recorded(),
            user_agent: self.user_agent.clone(),
            instance_id: self.app.instance_id.clone(),
        });
    }

    fn closed(&self, ending: &Ending, started: Instant) {
        self.app.metrics.closed(ending.metric());
        self.gauge().decrement(1);
        self.app.metrics.connections_open(self.role).decrement(1);
        let (code, reason, by) = match ending {
            Ending::Server(r) => (Some(r.code), r.reason.to_owned(), "server"),
            Ending::Client { code, reason } => (*code, reason.clone(), "client"),
            Ending::Dropped(e) => (None, e.clone(), "transport"),
        };
        self.app.writer.write(Record::SessionClosed {
            id: self.session_id.clone(),
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
        let settings = &self.app.settings;
        let queue = if self.watcher() {
            settings.ws.teacher_queue
        } else {
            settings.ws.student_queue
        };
        let (tx, rx, kick) = crate::room::queue::queue(queue);
        // Listed for a rolling restart's spread close (src/drain.rs).
        let _listed = self
            .app
            .drain
            .register(self.id, &self.exam_id, self.watcher(), &kick);
        let out = Outbox {
            tx,
            kick: kick.clone(),
            lane: crate::metrics::SlowPath::of_socket(self.role),
        };
        let for_revocations = out.clone();
        // Boxed here and below: a future's size is that of its largest
        // await point, and it lives for the connection's whole life. The
        // join (lease claim, database read) and the write and message
        // handlers only run briefly, so they live on the heap while they
        // do (with `run` below, the task's future went from 5.6 KB to 1.35 KB).
        let Some((room, limiter)) = Box::pin(self.join(out)).await else {
            let reason = if self.app.shutdown.is_cancelled() {
                close::GOING_AWAY
            } else {
                close::TRY_AGAIN
            };
            Box::pin(close_socket(socket, &reason)).await;
            return Ending::Server(reason);
        };
        // From here on a revocation of its token closes it (4403).
        let live = self
            .app
            .revocations
            .register(self.id, self.token.clone(), for_revocations);
        let mut standing = Standing {
            exp: self.exp,
            live,
            bad: BadBudget::new(self.app.settings.limits.bad_message_window),
        };
        let ending = self
            .pump(socket, &rx, &kick, &room, &limiter, &mut standing)
            .await;
        // The room keeps the session lease through the grace period (marked
        // `/grace`) and releases it when the student is gone for good.
        let _ = Box::pin(room.send(RoomCmd::Leave { conn: self.id })).await;
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

    /// Takes the student's cluster-wide session lease and says how the room
    /// should treat a session held on another instance.
    async fn claim_session(&self) -> ClusterJoin {
        let Broker::Redis(redis) = &self.app.broker else {
            return ClusterJoin::Alone;
        };
        if self.watcher() {
            return ClusterJoin::Alone;
        }
        let ttl = self.app.settings.exam.lease_ttl;
        let holder = redis.holder(&self.session_id);
        let (exam, student) = (&self.exam_id, &self.user);
        let previous = match redis.claim_lease(exam, student, &holder, ttl, false).await {
            Ok(None) => return ClusterJoin::Alone,
            Ok(Some(p)) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the session lease; admitting");
                return ClusterJoin::Alone;
            }
        };
        let (instance, session) = previous.split_once('/').unwrap_or((&previous, ""));
        if instance == self.app.instance_id.as_ref() {
            // Held here: the local room applies the policy (and its lease
            // renewal names whichever session wins).
            return ClusterJoin::Alone;
        }
        let (session, in_grace) = match session.strip_suffix("/grace") {
            Some(s) => (s, true),
            None => (session, false),
        };
        let same_client = in_grace || self.previous_session.as_deref() == Some(session);
        let state = redis
            .instance_state(instance)
            .await
            .unwrap_or(crate::broker::redis::InstanceState::Alive);
        let alive = state == crate::broker::redis::InstanceState::Alive;
        let policy = self.app.settings.exam.second_session;
        if alive && !same_client && policy == SecondSession::Reject {
            // A `reset_session` lifts the block once: this connection takes over.
            let reset = self.app.store.consume_reset(exam, student).await;
            if !reset.unwrap_or(false) {
                return ClusterJoin::RejectedElsewhere;
            }
        }
        let _ = redis.claim_lease(exam, student, &holder, ttl, true).await;
        if state != crate::broker::redis::InstanceState::Gone {
            // The other instance closes its socket (or ends its grace
            // period) for this student, without an event of its own; a
            // draining one too, so a socket it has not closed yet does not
            // run beside this one until the drain reaches it.
            let _ = redis.send_kick(exam, student).await;
        }
        if alive && !same_client {
            ClusterJoin::TookOverElsewhere
        } else {
            // The same client back (it named its session, or its old socket
            // was already gone), or its instance died: a reconnect.
            ClusterJoin::Alone
        }
    }

    /// The student's answered questions, stored through any instance: from
    /// Redis (rooms record each committed answer there before its ack), so
    /// a reconnect storm costs no database query per student; from the
    /// database only when Redis has no state for the exam or cannot answer.
    async fn answered(
        &self,
        redis: &crate::broker::RedisBroker,
    ) -> Option<std::collections::HashSet<String>> {
        let shared = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            redis.answered(&self.exam_id, &self.user),
        )
        .await;
        if let Ok(Ok(Some(answered))) = shared {
            return Some(answered);
        }
        self.app
            .store
            .answered_questions(&self.exam_id, &self.user)
            .await
            .ok()
    }

    /// Where the student's previous admitted session came from, on
    /// whichever instance it was (`ip_changed`, `device_changed`:
    /// room/signals.rs); the room records this one once it is admitted.
    async fn previous_client(
        &self,
        redis: &crate::broker::RedisBroker,
    ) -> Option<crate::room::signals::Client> {
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            redis.client_of(&self.exam_id, &self.user),
        )
        .await;
        match read {
            Ok(Ok(before)) => before.map(|b| crate::room::signals::Client::decode(&b)),
            _ => None,
        }
    }

    /// The student's control record if it changed within the last seconds
    /// (Redis notes every change, `broker::redis::CONTROL_NOTE`): read from
    /// the database, so a change made on another instance a moment ago
    /// holds from the welcome on, even before its event reaches the room.
    async fn recent_control(
        &self,
        redis: &crate::broker::RedisBroker,
    ) -> Option<Box<crate::control::StudentControl>> {
        let wait = std::time::Duration::from_secs(2);
        let changed = tokio::time::timeout(wait, redis.control_changed(&self.exam_id, &self.user));
        if !matches!(changed.await, Ok(Ok(true))) {
            return None;
        }
        let read = self.app.store.student_control(&self.exam_id, &self.user);
        match tokio::time::timeout(wait, read).await {
            Ok(Ok(control)) => control.map(Box::new),
            _ => None, // the event still brings it
        }
    }

    /// Joins the room, retrying if it ended just as we looked it up. Also
    /// returns the message-rate bucket to use: a student's comes from the
    /// room (shared by all their connections), a teacher's is its own.
    async fn join(&self, out: Outbox) -> Option<(RoomHandle, Arc<RateBucket>)> {
        let cluster = self.claim_session().await;
        let (answered, previous_client, control) = match (&self.app.broker, self.watcher()) {
            (Broker::Redis(redis), false) => tokio::join!(
                self.answered(redis),
                self.previous_client(redis),
                self.recent_control(redis)
            ),
            _ => (None, None, None),
        };
        let fresh = || Arc::new(RateBucket::new(&self.app.settings.limits));
        if self.watcher() {
            let registry = &self.app.registry;
            let joined = registry.join_watcher(&self.exam_id, self.id, &out, self.last_seq);
            let Some(room) = joined.await else {
                if !self.app.shutdown.is_cancelled() {
                    tracing::error!("could not join the exam room");
                }
                return None;
            };
            return Some((room, fresh()));
        }
        for _ in 0..8 {
            if self.app.shutdown.is_cancelled() {
                return None;
            }
            let room = self.app.registry.get_or_start(&self.exam_id);
            let (reply, joined) = oneshot::channel();
            let cmd = RoomCmd::JoinStudent(Box::new(StudentJoin {
                conn: self.id,
                who: StudentId {
                    id: self.user.to_string(),
                    name: self.name.to_string(),
                },
                session_id: self.session_id.clone(),
                previous_session: self.previous_session.clone(),
                peer_ip: Some(self.client.ip.to_string()),
                user_agent: Some(self.user_agent.clone()),
                previous_client: previous_client.clone(),
                cluster,
                answered: answered.clone(),
                exam_clock: self.app.rosters.exam_clock(&self.exam_id),
                control: control.clone(),
                out: out.clone(),
                rate: fresh(),
                reply,
            }));
            if room.send(cmd).await.is_ok()
                && let Ok(rate) = joined.await
            {
                return Some((room, rate));
            }
        }
        tracing::error!("could not join the exam room");
        None
    }

    /// The connection's main loop; returns how it ended.
    async fn pump(
        &self,
        socket: &mut WebSocket,
        rx: &QueueRx,
        kick: &Kick,
        room: &RoomHandle,
        limiter: &RateBucket,
        standing: &mut Standing,
    ) -> Ending {
        let settings = &self.app.settings;
        let shutdown = self.app.shutdown.clone();
        // One timer for the token's end (exp + grace), re-armed by a
        // `refresh`: no message pays for the check.
        let grace = lifetime::grace(&settings.auth);
        let expiry = tokio::time::sleep_until(lifetime::next_wake(standing.exp, grace));
        tokio::pin!(expiry);
        let mut armed_for = standing.exp;
        let interval = settings.ws.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        // A ping went out (at an earlier tick, so an interval ago or more)
        // since the client's last frame. A connection is dead when a ping
        // stayed unanswered, not merely when the client was silent: while
        // the queue is never empty (a large snapshot to a slow link) the
        // loop writes and sends no ping, and a client never asked owes no
        // pong. A flag, not an `Instant`: the connection keeps it all its life.
        let mut pinged = false;
        // Boxed, and dropped at the first message: only a connection that
        // has not spoken yet pays for the timer.
        let first_timeout = settings.limits.first_message_timeout;
        let mut first_message =
            (!first_timeout.is_zero()).then(|| Box::pin(tokio::time::sleep(first_timeout)));
        loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Err(Ending::Server(close::GOING_AWAY)),
                // Frames already queued go before a kick is noticed, so a
                // `session_invalidated` reaches the socket it concerns; a
                // write that blocks still yields to the kick (see `guarded`).
                first = rx.recv() => Box::pin(self.write_batch(socket, first, rx, kick)).await,
                reason = kick.kicked() => Err(Ending::Server(reason)),
                () = &mut expiry => {
                    if lifetime::until_expiry(standing.exp, grace, now_ms()).is_zero() {
                        Box::pin(self.expired(socket, kick)).await
                    } else {
                        // Armed for at most a month: look again.
                        expiry.as_mut().reset(lifetime::next_wake(standing.exp, grace));
                        Ok(())
                    }
                }
                incoming = socket.recv() => match incoming {
                    None => Err(Ending::Dropped("connection closed without a close frame".into())),
                    Some(Err(e)) => Err(read_error(e)),
                    Some(Ok(msg)) => {
                        last_seen = Instant::now();
                        pinged = false;
                        match msg {
                            Message::Text(text) => {
                                first_message = None;
                                let step = Box::pin(
                                    self.on_text(socket, text, room, kick, limiter, standing),
                                )
                                .await;
                                if standing.exp != armed_for {
                                    armed_for = standing.exp;
                                    expiry.as_mut().reset(lifetime::next_wake(standing.exp, grace));
                                }
                                step
                            }
                            Message::Binary(_) => Err(Ending::Server(close::UNSUPPORTED)),
                            Message::Pong(payload) if payload.as_ref() == PROBE => {
                                let _ = Box::pin(room.send(RoomCmd::Alive { conn: self.id })).await;
                                Ok(())
                            }
                            Message::Ping(_) | Message::Pong(_) => Ok(()),
                            Message::Close(frame) => Err(Ending::Client {
                                code: frame.as_ref().map(|f| f.code),
                                // Client-chosen text headed for logs and the
                                // database: no control characters.
                                reason: frame
                                    .map(|f| f.reason.chars().filter(|c| !c.is_control()).collect())
                                    .unwrap_or_default(),
                            }),
                        }
                    }
                },
                // After the read: a message that came in time goes first.
                () = expires(&mut first_message) => Err(Ending::Server(close::FIRST_MESSAGE_TIMEOUT)),
                _ = kick.probed() => {
                    let ping = Message::Ping(axum::body::Bytes::from_static(PROBE));
                    Box::pin(guarded(kick, &shutdown, socket.send(ping))).await
                }
                _ = ping.tick() => {
                    if pinged && last_seen.elapsed() > interval * 2 {
                        self.app.metrics.ping_timeouts.increment(1);
                        Err(Ending::Server(close::PING_TIMEOUT))
                    } else {
                        pinged = true;
                        let ping = Message::Ping(Default::default());
                        Box::pin(guarded(kick, &shutdown, socket.send(ping))).await
                    }
                }
            };
            if let Err(ending) = step {
                return ending;
            }
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
        limiter: &RateBucket,
        standing: &mut Standing,
    ) -> Result<(), Ending> {
        let received = std::time::Instant::now();
        let metrics = &self.app.metrics;
        let limits = &self.app.settings.limits;
        if text.len() > limits.max_message_bytes {
            metrics.messages_in("unread", 1);
            return Err(Ending::Server(close::TOO_BIG));
        }
        let refused: (ErrorCode, String, Option<Label>, Option<u64>) =
            if let Err(refused) = limiter.allow() {
                metrics.messages_in("unread", 1);
                (
                    ErrorCode::RateLimited,
                    refused.message(),
                    None,
                    Some(refused.retry_after_ms()),
                )
            } else {
                let parsed = protocol::parse(text.as_str());
                let kind = parsed.as_ref().map_or("invalid", |m| m.msg.kind());
                metrics.messages_in(kind, 1);
                match parsed {
                    Err(e) => (e.code, e.message, e.r#ref, None),
                    Ok(incoming) if !incoming.msg.allowed_for(self.role) => (
                        ErrorCode::Forbidden,
                        format!(
                            "`{}` is not allowed for role {}",
                            incoming.msg.kind(),
                            self.role.as_str()
                        ),
                        incoming.r#ref,
                        None,
                    ),
                    Ok(protocol::Incoming {
                        r#ref,
                        msg: protocol::ClientMsg::Refresh { token },
                    }) => match self
                        .refresh(socket, kick, &token.0, r#ref, standing)
                        .await?
                    {
                        None => return Ok(()),
                        Some((code, message, r#ref)) => (code, message, r#ref, None),
                    },
                    Ok(incoming) => {
                        let cmd = RoomCmd::Message {
                            received,
                            conn: self.id,
                            r#ref: incoming.r#ref,
                            msg: incoming.msg,
                            user: self.user.clone(),
                            from: self.name.clone(),
                        };
                        return match room.send(cmd).await {
                            Ok(()) => Ok(()),
                            Err(_) => Err(Ending::Server(close::GOING_AWAY)),
                        };
                    }
                }
            };
        let (code, message, r#ref, retry_after_ms) = refused;
        metrics.bad_messages.increment(1);
        let exhausted = standing.bad.spend(limits.max_bad_messages);
        tracing::debug!(code = ?code, message = %telemetry::clip(&message), "refused a client message");
        let frame = ServerMsg::Error {
            code,
            message: message.into(),
            r#ref: r#ref.as_ref(),
            retry_after_ms,
        }
        .encode();
        metrics.messages_out(frame.as_str(), 1);
        guarded(kick, &self.app.shutdown, socket.send(Message::Text(frame))).await?;
        if exhausted {
            return Err(Ending::Server(if code.is_invalid_data() {
                close::INVALID_DATA
            } else {
                close::POLICY
            }));
        }
        Ok(())
    }
}

/// Completes when the timer (if any) fires; never without one.
async fn expires(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

impl Connection {
    /// The token's end passed without a `refresh`: `error token_expired`,
    /// then close 4401.
    /// A `refresh`: the new token takes over the connection (acked), or
    /// the refusal to answer with (`None` when answered already). A revoked
    /// token ends the connection (4403).
    async fn refresh(
        &self,
        socket: &mut WebSocket,
        kick: &Kick,
        token: &str,
        r#ref: Option<Label>,
        standing: &mut Standing,
    ) -> Result<Option<(ErrorCode, String, Option<Label>)>, Ending> {
        match lifetime::check(&self.app, token, &self.user, self.role, &self.exam_id) {
            Ok(claims) => {
                standing.exp = claims.exp;
                standing.live.update(TokenId::of(&claims));
                // A revocation that came between the check and the update
                // scanned the old token: look again now that the new one
                // is what revocations see.
                if self.app.revocations.is_revoked(&claims) {
                    let frame = crate::revocations::revoked_frame();
                    let _ =
                        guarded(kick, &self.app.shutdown, socket.send(Message::Text(frame))).await;
                    return Err(Ending::Server(close::TOKEN_REVOKED));
                }
                tracing::info!(exp = claims.exp, "token refreshed");
                let Some(r#ref) = r#ref else { return Ok(None) };
                let ack = ServerMsg::Ack { r#ref: &r#ref }.encode();
                guarded(kick, &self.app.shutdown, socket.send(Message::Text(ack))).await?;
                Ok(None)
            }
            Err(lifetime::Refused::Revoked) => {
                let frame = crate::revocations::revoked_frame();
                let _ = guarded(kick, &self.app.shutdown, socket.send(Message::Text(frame))).await;
                Err(Ending::Server(close::TOKEN_REVOKED))
            }
            Err(lifetime::Refused::Error(code, message)) => Ok(Some((code, message, r#ref))),
        }
    }

    async fn expired(&self, socket: &mut WebSocket, kick: &Kick) -> Result<(), Ending> {
        let frame = ServerMsg::Error {
            code: ErrorCode::TokenExpired,
            message: "this connection's token has expired: reconnect with a new token".into(),
            r#ref: None,
            retry_after_ms: None,
        }
        .encode();
        guarded(kick, &self.app.shutdown, socket.send(Message::Text(frame))).await?;
        Err(Ending::Server(close::TOKEN_EXPIRED))
    }
}

/// What the loop keeps about its client's standing: the token it speaks
/// for (its `exp`, and its entry in the revocation set, which forgets the
/// connection when dropped), and its refused messages.
struct Standing {
    exp: u64,
    live: LiveGuard,
    bad: BadBudget,
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

/// Counts rejected messages per window (`limits.bad_message_window`, a
/// minute): scattered mistakes over a long exam are forgiven, a burst of
/// them is not.
struct BadBudget {
    count: u32,
    window: Duration,
    window_start: Instant,
}

impl BadBudget {
    fn new(window: Duration) -> Self {
        Self {
            count: 0,
            window,
            window_start: Instant::now(),
        }
    }
    /// Records one rejected message; true once `max` is reached.
    fn spend(&mut self, max: u32) -> bool {
        if self.window_start.elapsed() > self.window {
            self.count = 0;
            self.window_start = Instant::now();
        }
        self.count += 1;
        self.count >= max
    }
}
