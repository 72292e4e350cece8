//! A student's session stream, `GET /v1/exams/{id}/me/events?transport=http`
//! (docs/PROTOCOL.md 8): the server-to-client half of the HTTP transport.
//!
//! Unlike the listener stream of [`super::student`], this stream IS a
//! connection of the student: it is a [`crate::ws::Connection`] with
//! another loop. Everything before the loop is the socket's own code
//! ([`Connection::enter`]: queue, its one entry in the registry of open
//! connections that the drain, a rebalance and revocations read, and the
//! join with its session lease, status, grace, second session and
//! `previous_session`), and so is everything after it (`Leave`, which
//! starts the grace period; the `disconnected` log line, the session row,
//! the gauges and `examwatch_closes_total`). What differs is only how
//! frames travel: each frame the room queues is one event (`event:` its
//! type, `data:` its JSON, `id:` the highest seq delivered, [`super::ids`]),
//! and the client's messages come by `POST me/messages` ([`super::messages`]),
//! whose answers the loop hands back to their POST ([`super::sessions`]).
//!
//! Every ending a socket closes with a code sends an `event: close` with
//! that code first (`data: {"code":1012,"reason":"service restart"}`), so
//! a client reacts as it would to the socket's close. An HTTP session
//! cannot answer a liveness probe: a new connection naming it as its
//! `previous_session` waits `exam.probe_timeout` and takes over as a
//! reconnect (4.3) — unless it presents the stream's handover token
//! ([`HANDOVER_HEADER`], 8.4), which only the client holding the stream
//! has: then it takes over at once (the client library moving back to
//! the socket).

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::Response,
};
use std::sync::atomic::Ordering;

use tokio::{sync::mpsc, time::Instant};
use tracing::Instrument;

use super::{Opening, event, ids::EventIds, sessions::HttpSession};
use crate::{
    app::AppState,
    auth::Claims,
    http::ApiError,
    protocol::{ClientMsg, Incoming, Seq},
    ratelimit::ConnectionSlot,
    room::{CloseReason, RoomCmd, close},
    ws::{
        AuthVia, Connection, Ending, Joined,
        deadlines::{Deadlines, Due},
        lifetime,
    },
};

/// Frames taken from the room's queue per hand-off to the body.
const BATCH: usize = 64;

/// Longest wait to hand the final `close` event to a body that is not
/// being read: the stream ends anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What the session query adds to the listener stream's.
pub(crate) struct SessionQuery {
    pub(crate) previous_session: Option<String>,
    pub(crate) last_event_id: Option<Seq>,
    pub(crate) via_ticket: bool,
    /// The handover token of the HTTP session `previous_session` names.
    pub(crate) handover: Option<String>,
}

/// The session stream's response header with its handover token
/// (PROTOCOL.md 8.4): a new connection of this client that presents it
/// (`?handover=`) beside `?previous_session=` takes the session over at
/// once. Only the client that opened the stream sees it: the `session_id`
/// may be shared (a student's tabs keep it in common storage), this not.
pub const HANDOVER_HEADER: &str = "x-examwatch-handover";

/// Opens a session stream for an admitted student (the checks of
/// [`Opening::admit`] and the roster passed): the database backlog check
/// of a socket's handshake, the resume point, then the stream's task.
pub(crate) fn open(
    app: &AppState,
    opening: &Opening<'_>,
    headers: &HeaderMap,
    exam_id: &str,
    claims: Claims,
    slot: ConnectionSlot,
    query: SessionQuery,
) -> Response {
    if app.writer.over_limit() {
        return opening.refuse(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_backlog",
            "too many records are waiting for the database; retry shortly",
        ));
    }
    let resume = match super::last_event_id(headers, query.last_event_id) {
        Ok(r) => r,
        Err(e) => return opening.refuse(e),
    };
    let user: Arc<str> = claims.sub.as_str().into();
    let conn = Box::new(Connection {
        id: app.next_conn_id(),
        exam_id: exam_id.into(),
        name: claims.name.as_str().into(),
        token: crate::revocations::TokenId::with_sub(&claims, user.clone()),
        user,
        role: claims.role,
        client: opening.client,
        _slot: slot,
        exp: claims.exp,
        user_agent: opening.user_agent.clone(),
        session_id: uuid::Uuid::new_v4(),
        via: if query.via_ticket {
            AuthVia::Ticket
        } else {
            AuthVia::Token
        },
        last_seq: None,
        handover: super::sessions::handover_token(query.handover.as_deref()),
        previous_session: query.previous_session.filter(|s| s.len() <= 64),
        http: true,
        app: app.clone(),
    });
    let (body_tx, body_rx) = mpsc::channel(2);
    let token = uuid::Uuid::new_v4();
    let session = Session {
        conn,
        resume,
        handover: token,
    };
    // On the tracker, like every connection: shutdown waits for it.
    app.tracker.spawn(session.run(body_tx));
    let mut res = super::response(body_rx);
    if let Ok(value) = HeaderValue::from_str(&token.to_string()) {
        res.headers_mut().insert(HANDOVER_HEADER, value);
    }
    res
}

struct Session {
    conn: Box<Connection>,
    /// `Last-Event-ID`: the stream starts with the socket's resume from it.
    resume: Option<Seq>,
    /// Sent in [`HANDOVER_HEADER`].
    handover: uuid::Uuid,
}

impl Session {
    async fn run(self, body: mpsc::Sender<Bytes>) {
        let conn = &self.conn;
        let span = tracing::info_span!(
            "conn",
            conn_id = conn.id,
            exam_id = %conn.exam_id,
            user_id = %conn.user,
            role = conn.role.as_str(),
            transport = "http",
        );
        let started = Instant::now();
        span.in_scope(|| conn.opened("http"));
        let ending = self.serve(&body).instrument(span.clone()).await;
        span.in_scope(|| conn.closed(&ending, started));
    }

    async fn serve(&self, body: &mpsc::Sender<Bytes>) -> Ending {
        let conn = &self.conn;
        let app = &conn.app;
        let mut ids = EventIds::new(self.resume);
        let joined = match Box::pin(conn.enter(crate::metrics::SlowPath::SseStudent)).await {
            Ok(joined) => joined,
            Err(reason) => return close_with(body, &ids, reason).await,
        };
        let session = Arc::new(HttpSession {
            exam: conn.exam_id.clone(),
            student: conn.user.clone(),
            conn: conn.id,
            room: joined.room.clone(),
            user: conn.user.clone(),
            name: conn.name.clone(),
            limiter: joined.limiter.clone(),
            kick: joined.kick.clone(),
            bad: std::sync::Mutex::new(crate::ws::BadBudget::new(
                app.settings.limits.bad_message_window,
            )),
            replies: Default::default(),
            handover: self.handover,
            spoke: Default::default(),
        });
        let _listed = app
            .http_sessions
            .insert(conn.session_id.to_string(), session.clone());
        if let Some(last_seq) = self.resume {
            // Exactly a socket's `resume` as its first message: `resumed`,
            // the replay and the owed action frames, after the welcome.
            let resume = Incoming {
                r#ref: None,
                msg: ClientMsg::Resume { last_seq },
            };
            let cmd = conn.message(std::time::Instant::now(), resume);
            let _ = joined.room.send(cmd).await;
        }
        let ending = self.pump(body, &joined, &session, &mut ids).await;
        // As a socket's end: the room starts the grace period.
        let _ = Box::pin(joined.room.send(RoomCmd::Leave { conn: conn.id })).await;
        match ending {
            Ending::Server(reason) => close_with(body, &ids, reason).await,
            other => other,
        }
    }

    /// Hands the room's frames, heartbeats and the token's end to the body
    /// until the stream must end. One timer for every timed duty, as on a
    /// socket ([`Deadlines`]): the heartbeat (the socket's ping: a write is
    /// all the liveness check a stream has, so a written one counts as
    /// heard), the token's end, and `limits.first_message_timeout` (met by
    /// the first POST that brings a message).
    async fn pump(
        &self,
        body: &mpsc::Sender<Bytes>,
        joined: &Joined,
        session: &HttpSession,
        ids: &mut EventIds,
    ) -> Ending {
        let app = &self.conn.app;
        let shutdown = app.shutdown.clone();
        // A session stream cannot `refresh`: its token's end is its end.
        let exp = joined.standing.exp;
        let grace = lifetime::grace(&app.settings.auth);
        let mut deadlines = Deadlines::new(
            Instant::now(),
            app.settings.sse.heartbeat,
            lifetime::next_wake(exp, grace),
            app.settings.limits.first_message_timeout,
        );
        let timer = tokio::time::sleep_until(deadlines.next());
        tokio::pin!(timer);
        loop {
            let wake = deadlines.next();
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            let chunk = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ending::Server(close::GOING_AWAY),
                // Queued frames go before a kick is noticed, as on a socket:
                // a `session_invalidated` reaches the stream it concerns.
                first = joined.rx.recv() => self.batch(first, joined, session, ids),
                reason = joined.kick.kicked() => return Ending::Server(reason),
                _ = body.closed() => {
                    return Ending::Dropped("the event stream was closed".into());
                }
                () = &mut timer => {
                    let now = Instant::now();
                    match deadlines.due(now) {
                        None => continue,
                        Some(Due::Expiry) => {
                            if !lifetime::until_expiry(exp, grace, crate::store::now_ms()).is_zero() {
                                deadlines.set_expiry(lifetime::next_wake(exp, grace));
                                continue;
                            }
                            let mut buf = Vec::new();
                            let frame = super::expired_frame();
                            app.metrics.messages_out(frame.as_str(), 1);
                            event::append_with_id(&mut buf, ids.current(), Some("error"), frame.as_str());
                            let _ = self.hand_off(body, joined, buf.into()).await;
                            return Ending::Server(close::TOKEN_EXPIRED);
                        }
                        Some(Due::FirstMessage) => {
                            if !session.spoke.load(Ordering::Acquire) {
                                return Ending::Server(close::FIRST_MESSAGE_TIMEOUT);
                            }
                            deadlines.spoke();
                            continue;
                        }
                        Some(Due::Ping | Due::PingTimeout) => {
                            deadlines.heard(now);
                            Bytes::from_static(event::HEARTBEAT)
                        }
                    }
                }
            };
            if chunk.is_empty() {
                continue; // only answers to POSTs
            }
            if let Err(ending) = self.hand_off(body, joined, chunk).await {
                return ending;
            }
        }
    }

    /// `first` and whatever else is queued already, as one chunk of
    /// events; the answers among them go to their POSTs instead.
    fn batch(
        &self,
        first: axum::extract::ws::Utf8Bytes,
        joined: &Joined,
        session: &HttpSession,
        ids: &mut EventIds,
    ) -> Bytes {
        let mut buf = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(frame) = next.take() {
            if let Some(frame) = session.replies.route(frame) {
                let json = frame.as_str();
                let head = event::head(json);
                let kind = head.kind.as_deref().unwrap_or("message");
                let id = ids.on_frame(kind, json);
                event::append_with_id(&mut buf, id, head.kind.as_deref(), json);
            }
            taken += 1;
            if taken < BATCH {
                next = joined.rx.try_recv();
            }
        }
        buf.into()
    }

    /// Gives one chunk to the body, unless the room kicks this stream or
    /// the server stops first: a client that does not read cannot hold
    /// the task.
    async fn hand_off(
        &self,
        body: &mpsc::Sender<Bytes>,
        joined: &Joined,
        chunk: Bytes,
    ) -> Result<(), Ending> {
        tokio::select! {
            biased;
            r = body.send(chunk) => {
                r.map_err(|_| Ending::Dropped("the event stream was closed".into()))
            }
            reason = joined.kick.kicked() => Err(Ending::Server(reason)),
            _ = self.conn.app.shutdown.cancelled() => Err(Ending::Server(close::GOING_AWAY)),
        }
    }
}

/// Sends the `close` event of `reason` (best effort, bounded: the stream
/// ends anyway) and says the stream ended with it.
async fn close_with(body: &mpsc::Sender<Bytes>, ids: &EventIds, reason: CloseReason) -> Ending {
    let mut buf = Vec::new();
    let data = serde_json::json!({ "code": reason.code, "reason": reason.reason }).to_string();
    event::append_with_id(&mut buf, ids.current(), Some("close"), &data);
    let _ = tokio::time::timeout(CLOSE_WAIT, body.send(buf.into())).await;
    Ending::Server(reason)
}
