//! What a connection does with one client message before the room sees it:
//! the size limit, the student's message budget (`limits.messages_per_second`,
//! [`LazyBucket`]), the parse into a [`protocol::ClientMsg`], and the role's
//! rights. One function for both transports of a student — the socket's
//! text frames and the messages of `POST /v1/exams/{id}/me/messages`
//! ([`crate::sse::post`]) — so the same message gets the same verdict and
//! the same error code whichever way it came, and spends from the same
//! bucket (the room gives every connection of a student the student's one).

use crate::{
    app::AppState,
    auth::Role,
    protocol::{self, ErrorCode, Incoming, Label, ServerMsg},
    room::rate::LazyBucket,
};

/// The verdict on one client message.
pub(crate) enum Inbound {
    /// Over `limits.max_message_bytes`: the socket closes 1009.
    TooBig,
    /// Answered with `error {code}` at once; the room never sees it.
    Refused(Refusal),
    /// A `refresh`: the connection itself answers it (a socket does).
    Refresh { token: String, r#ref: Option<Label> },
    /// For the room.
    Room(Incoming),
}

/// A message refused before the room: what its `error` says.
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) r#ref: Option<Label>,
    pub(crate) retry_after_ms: Option<u64>,
}

impl Refusal {
    /// The `error` frame (counted in `examwatch_bad_messages_total` and the
    /// outgoing frames, as every refusal is).
    pub(crate) fn frame(&self, app: &AppState) -> axum::extract::ws::Utf8Bytes {
        app.metrics.bad_messages.increment(1);
        tracing::debug!(
            code = ?self.code,
            message = %crate::telemetry::clip(&self.message),
            "refused a client message"
        );
        let frame = ServerMsg::Error {
            code: self.code,
            message: self.message.as_str().into(),
            r#ref: self.r#ref.as_ref(),
            retry_after_ms: self.retry_after_ms,
        }
        .encode();
        app.metrics.messages_out(frame.as_str(), 1);
        frame
    }
}

/// Checks one client message of a connection with `role`, spending one
/// token of `limiter` for it (refused unread when none is left).
pub(crate) fn classify(app: &AppState, role: Role, limiter: &LazyBucket, text: &str) -> Inbound {
    let metrics = &app.metrics;
    if text.len() > app.settings.limits.max_message_bytes {
        metrics.messages_in("unread", 1);
        return Inbound::TooBig;
    }
    if let Err(refused) = limiter.allow(&app.settings.limits) {
        metrics.messages_in("unread", 1);
        return Inbound::Refused(Refusal {
            code: ErrorCode::RateLimited,
            message: refused.message(),
            r#ref: None,
            retry_after_ms: Some(refused.retry_after_ms()),
        });
    }
    let parsed = protocol::parse(text);
    metrics.messages_in(parsed.as_ref().map_or("invalid", |m| m.msg.kind()), 1);
    match parsed {
        Err(e) => Inbound::Refused(Refusal {
            code: e.code,
            message: e.message,
            r#ref: e.r#ref,
            retry_after_ms: None,
        }),
        Ok(incoming) if !incoming.msg.allowed_for(role) => Inbound::Refused(Refusal {
            code: ErrorCode::Forbidden,
            message: format!(
                "`{}` is not allowed for role {}",
                incoming.msg.kind(),
                role.as_str()
            ),
            r#ref: incoming.r#ref,
            retry_after_ms: None,
        }),
        Ok(Incoming {
            r#ref,
            msg: protocol::ClientMsg::Refresh { token },
        }) => Inbound::Refresh {
            token: token.0,
            r#ref,
        },
        Ok(incoming) => Inbound::Room(incoming),
    }
}
