//! A connection's token over time: its `exp`, the `refresh` that replaces
//! it, and the deadline past which the connection ends.
//!
//! Every connection remembers the `exp` of the token it was admitted with
//! (a ticket's connection: the `exp` of the token the ticket was minted
//! from, carried with the ticket). At `exp + auth.expiry_grace` it gets
//! `error token_expired` and close 4401; the connection's loop holds one
//! timer for it, re-armed by an accepted `refresh`, so no message pays for
//! the check. A `refresh` token is verified exactly as a handshake's
//! (`ws::verify_token`: size limits, signature, algorithm, issuer,
//! audience, `nbf`, shape, revocations) and must be for the same subject and role and grant the
//! connection's exam; a revoked one ends the connection as a revocation
//! does. The display name stays the one the connection joined with: the
//! room knows the student by it, and a new name shows from the next
//! connection on.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use tokio::time::Instant;

use super::{Connection, Ending, guarded};
use crate::{
    app::AppState,
    auth::{Claims, Role},
    live::Listed,
    protocol::{ErrorCode, Label, ServerMsg},
    revocations::TokenId,
    room::{Kick, close},
};

/// The longest one arming of the expiry timer waits; a token valid for
/// longer re-arms it when it fires (tokio's timer wheel tops out at about
/// two years, and an `Instant` can overflow).
const MAX_ARM: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long from `now_ms` until a token with this `exp` (Unix seconds)
/// has outlived its grace; zero once it has.
pub(crate) fn until_expiry(exp: u64, grace: Duration, now_ms: i64) -> Duration {
    let end_ms = u128::from(exp) * 1000 + grace.as_millis();
    let now_ms = u128::try_from(now_ms).unwrap_or(0);
    let left = end_ms.saturating_sub(now_ms);
    Duration::from_millis(u64::try_from(left).unwrap_or(u64::MAX))
}

/// When to wake next for a token with this `exp`: at its end, or after
/// [`MAX_ARM`] to look again.
pub(crate) fn next_wake(exp: u64, grace: Duration) -> tokio::time::Instant {
    let left = until_expiry(exp, grace, crate::store::now_ms()).min(MAX_ARM);
    tokio::time::Instant::now() + left
}

/// Why a `refresh` was not taken.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// A revocation covers the new token: the connection ends (4403).
    Revoked,
    /// `error {code}`; the connection keeps its token.
    Error(ErrorCode, String),
}

/// How long past its `exp` a connection may run: `auth.expiry_grace`, but
/// never less than `auth.leeway` (a token the handshake admitted within the
/// leeway would otherwise be closed 4401 right after its welcome, and its
/// client would reconnect with it in a loop).
pub(crate) fn grace(auth: &crate::config::AuthSettings) -> std::time::Duration {
    auth.expiry_grace.max(auth.leeway)
}

/// Verifies a `refresh` token for a connection of `user` with `role` on
/// `exam_id`: its claims if the connection may take it.
pub(super) fn check(
    app: &AppState,
    token: &str,
    user: &str,
    role: Role,
    exam_id: &str,
) -> Result<Claims, Refused> {
    // Exactly a handshake's checks (size limits, signature and claims,
    // revocations), answered as the socket's error codes.
    let claims = super::verify_token(app, token).map_err(|e| match e.code {
        "token_revoked" => Refused::Revoked,
        "token_expired" => Refused::Error(
            ErrorCode::TokenExpired,
            format!("refresh refused: {}", e.message),
        ),
        _ => Refused::Error(
            ErrorCode::InvalidToken,
            format!("refresh refused: {}", e.message),
        ),
    })?;
    if claims.sub != user || claims.role != role || !claims.grants(exam_id) {
        return Err(Refused::Error(
            ErrorCode::Forbidden,
            format!(
                "refresh refused: the token must be for the same subject and role as this \
                 connection ({}) and grant exam {exam_id:?}",
                role.as_str()
            ),
        ));
    }
    Ok(claims)
}

impl Connection {
    /// A `refresh`: the new token takes over the connection (acked), or
    /// the refusal to answer with (`None` when answered already). A revoked
    /// token ends the connection (4403).
    pub(super) async fn refresh(
        &self,
        socket: &mut WebSocket,
        kick: &Kick,
        token: &str,
        r#ref: Option<Label>,
        standing: &mut Standing,
    ) -> Result<Option<(ErrorCode, String, Option<Label>)>, Ending> {
        match check(&self.app, token, &self.user, self.role, &self.exam_id) {
            Ok(claims) => {
                standing.exp = claims.exp;
                standing.live.update(TokenId::of(&claims));
                // A revocation that came between the check and the update
                // scanned the old token: look again now that the new one
                // is what revocations see.
                if self.app.revocations.is_revoked(&claims) {
                    return self.revoked(socket, kick).await;
                }
                tracing::info!(exp = claims.exp, "token refreshed");
                let Some(r#ref) = r#ref else { return Ok(None) };
                let ack = ServerMsg::Ack { r#ref: &r#ref }.encode();
                self.app.metrics.messages_out(ack.as_str(), 1);
                guarded(kick, &self.app.shutdown, socket.send(Message::Text(ack))).await?;
                Ok(None)
            }
            Err(Refused::Revoked) => self.revoked(socket, kick).await,
            Err(Refused::Error(code, message)) => Ok(Some((code, message, r#ref))),
        }
    }

    /// A `refresh` brought a revoked token: `error token_revoked`, then
    /// close 4403 (the frame is best effort: the close follows anyway).
    async fn revoked<T>(&self, socket: &mut WebSocket, kick: &Kick) -> Result<T, Ending> {
        let frame = crate::revocations::revoked_frame();
        self.app.metrics.messages_out(frame.as_str(), 1);
        let _ = guarded(kick, &self.app.shutdown, socket.send(Message::Text(frame))).await;
        Err(Ending::Server(close::TOKEN_REVOKED))
    }

    /// The token's end passed without a `refresh`: `error token_expired`,
    /// then close 4401.
    pub(super) async fn expired(&self, socket: &mut WebSocket, kick: &Kick) -> Result<(), Ending> {
        let frame = ServerMsg::Error {
            code: ErrorCode::TokenExpired,
            message: "this connection's token has expired: reconnect with a new token".into(),
            r#ref: None,
            retry_after_ms: None,
        }
        .encode();
        self.app.metrics.messages_out(frame.as_str(), 1);
        guarded(kick, &self.app.shutdown, socket.send(Message::Text(frame))).await?;
        Err(Ending::Server(close::TOKEN_EXPIRED))
    }
}

/// What the loop keeps about its client's standing: the token it speaks
/// for (its `exp`, and its entry in the revocation set, which forgets the
/// connection when dropped), and its refused messages.
pub(crate) struct Standing {
    pub(crate) exp: u64,
    pub(crate) live: Listed,
    pub(crate) bad: BadBudget,
}

/// How a connection whose refused messages used up its budget closes:
/// 1007 for malformed data, 1008 for other misuse.
pub(crate) fn bad_close(code: ErrorCode) -> crate::room::CloseReason {
    if code.is_invalid_data() {
        close::INVALID_DATA
    } else {
        close::POLICY
    }
}

/// Counts rejected messages per window (`limits.bad_message_window`, a
/// minute): scattered mistakes over a long exam are forgiven, a burst of
/// them is not.
pub(crate) struct BadBudget {
    count: u32,
    window: Duration,
    window_start: Instant,
}

impl BadBudget {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            count: 0,
            window,
            window_start: Instant::now(),
        }
    }
    /// Records one rejected message; true once `max` is reached.
    pub(crate) fn spend(&mut self, max: u32) -> bool {
        if self.window_start.elapsed() > self.window {
            self.count = 0;
            self.window_start = Instant::now();
        }
        self.count += 1;
        self.count >= max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_is_never_shorter_than_the_leeway() {
        let mut auth = crate::config::AuthSettings {
            expiry_grace: Duration::from_secs(5),
            leeway: Duration::from_secs(30),
            ..Default::default()
        };
        assert_eq!(grace(&auth), Duration::from_secs(30));
        auth.expiry_grace = Duration::from_secs(60);
        assert_eq!(grace(&auth), Duration::from_secs(60));
    }

    #[test]
    fn the_deadline_is_exp_plus_grace() {
        let grace = Duration::from_secs(30);
        let exp = 1_800_000_000;
        let at = |ms: i64| until_expiry(exp, grace, ms);
        assert_eq!(at(1_800_000_000_000), grace);
        assert_eq!(at(1_800_000_029_500), Duration::from_millis(500));
        assert_eq!(at(1_800_000_030_000), Duration::ZERO);
        assert_eq!(at(1_900_000_000_000), Duration::ZERO, "long past");
        assert_eq!(at(-5), Duration::from_millis(1_800_000_030_000));
        // No overflow for a token that never expires in practice.
        assert!(until_expiry(u64::MAX, grace, 0) > MAX_ARM);
    }
}
