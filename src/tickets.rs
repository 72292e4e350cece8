//! Connection tickets: how a browser opens a WebSocket without putting its
//! long-lived JWT in the URL.
//!
//! `new WebSocket()` cannot set headers, so browsers used to send the token
//! as `?access_token=`, and every proxy that logs request lines (nginx's
//! error log does, whatever its access log format says) kept a token valid
//! for hours. Instead, the page sends its token in a header to
//! `POST /v1/tickets` and gets a ticket: 256 random bits (not a JWT, nothing
//! to decode), good for one exam, for `auth.ticket_ttl` (30 s), once. The
//! handshake redeems it (`?ticket=`) and the connection gets the claims the
//! token had, kept here with the ticket, never in the URL.
//!
//! Where tickets live: with Redis configured, in Redis (`PSETEX`, taken with
//! `GETDEL`), so a ticket minted on one instance is redeemed once on any
//! instance and never twice anywhere. Otherwise, and while Redis cannot be
//! reached, in this instance's memory: a map with an expiry per entry,
//! pruned as it goes and capped at `auth.ticket_capacity` (503 past it), so
//! minting tickets cannot grow memory without bound. Redemption looks in
//! memory first, then in Redis: a ticket is only ever in one of the two.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{
    auth::{Claims, TokenError},
    broker::RedisBroker,
    config::AuthSettings,
    http::ApiError,
    metrics::Metrics,
};

/// Random bytes in a ticket (256 bits; printed as 64 hex digits).
const TICKET_BYTES: usize = 32;

/// Why a ticket could not be minted or redeemed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    /// Unknown, already used, expired, or minted for another exam: one
    /// answer for all four, so a caller learns nothing by probing.
    #[error("invalid ticket: unknown, already used, expired or for another exam")]
    Invalid,
    /// The token the ticket came from has expired since.
    #[error("the token this ticket came from has expired")]
    TokenExpired,
    /// Too many unused tickets in memory, or no randomness, or Redis
    /// failed mid-redemption.
    #[error("tickets are unavailable right now; retry shortly")]
    Unavailable,
}

impl From<TicketError> for ApiError {
    fn from(e: TicketError) -> Self {
        match e {
            TicketError::Invalid => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_ticket", e.to_string())
            }
            TicketError::TokenExpired => ApiError::unauthorized(TokenError::Expired),
            TicketError::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tickets_unavailable",
                e.to_string(),
            ),
        }
    }
}

/// What a ticket stands for (its value in Redis, as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Grant {
    exam_id: String,
    claims: Claims,
}

/// A freshly minted ticket.
#[derive(Debug)]
pub struct Issued {
    pub ticket: String,
    /// Less than `auth.ticket_ttl` when the token expires sooner.
    pub expires_in: Duration,
}

pub struct Tickets {
    ttl: Duration,
    /// The token's own leeway: a ticket lives at most as long as its token
    /// would still be accepted.
    leeway: Duration,
    /// A std Mutex: no await happens while it is held, and every critical
    /// section is a map operation (or a prune, at most once per `ttl`).
    local: Mutex<Local>,
    shared: Option<Arc<RedisBroker>>,
    metrics: Arc<Metrics>,
}

impl Tickets {
    pub fn new(
        auth: &AuthSettings,
        shared: Option<Arc<RedisBroker>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            ttl: auth.ticket_ttl,
            leeway: auth.leeway,
            local: Mutex::new(Local::new(auth.ticket_capacity, auth.ticket_ttl)),
            shared,
            metrics,
        }
    }

    /// Mints a ticket for `exam_id` carrying `claims` (already verified and
    /// authorized for that exam by the caller).
    pub async fn issue(&self, exam_id: &str, claims: &Claims) -> Result<Issued, TicketError> {
        let expires_in = self.lifetime(claims).ok_or(TicketError::TokenExpired)?;
        let ticket = random_ticket().ok_or(TicketError::Unavailable)?;
        let grant = Grant {
            exam_id: exam_id.to_owned(),
            claims: claims.clone(),
        };
        // Known to be away (the broker pings it every second): do not make
        // the page wait for a connection timeout.
        if let Some(redis) = self.shared.as_ref().filter(|r| r.healthy()) {
            let value = serde_json::to_string(&grant).map_err(|_| TicketError::Unavailable)?;
            match redis.put_ticket(&ticket, &value, expires_in).await {
                Ok(()) => {
                    self.metrics.tickets_issued.increment(1);
                    return Ok(Issued { ticket, expires_in });
                }
                // The write may have reached Redis before it failed (a
                // timeout): keeping the ticket in memory too could let it
                // be redeemed twice, once here and once through Redis. The
                // client takes a new ticket. Only a Redis already known to
                // be away (below) gets memory-only tickets.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot store a ticket in Redis");
                    return Err(TicketError::Unavailable);
                }
            }
        }
        let now = Instant::now();
        self.lock()
            .insert(ticket.clone(), grant, now + expires_in, now)?;
        self.metrics.tickets_issued.increment(1);
        Ok(Issued { ticket, expires_in })
    }

    /// Redeems a ticket for `exam_id`: its claims, once. The ticket is gone
    /// afterwards whatever the outcome (also when it was for another exam).
    pub async fn redeem(&self, ticket: &str, exam_id: &str) -> Result<Claims, TicketError> {
        let result = self.take(ticket).await.and_then(|grant| {
            if grant.exam_id != exam_id {
                return Err(TicketError::Invalid);
            }
            if self.lifetime(&grant.claims).is_none() {
                return Err(TicketError::TokenExpired);
            }
            Ok(grant.claims)
        });
        let counter = match result {
            Ok(_) => &self.metrics.tickets_redeemed,
            Err(_) => &self.metrics.tickets_refused,
        };
        counter.increment(1);
        result
    }

    async fn take(&self, ticket: &str) -> Result<Grant, TicketError> {
        // Not ours by its shape: no lookup, no Redis key built from it.
        if ticket.len() != TICKET_BYTES * 2 || !ticket.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TicketError::Invalid);
        }
        if let Some(grant) = self.lock().take(ticket, Instant::now())? {
            return Ok(grant);
        }
        let Some(redis) = &self.shared else {
            return Err(TicketError::Invalid);
        };
        if !redis.healthy() {
            return Err(TicketError::Unavailable);
        }
        match redis.take_ticket(ticket).await {
            Ok(Some(value)) => serde_json::from_str(&value).map_err(|_| TicketError::Invalid),
            Ok(None) => Err(TicketError::Invalid),
            Err(e) => {
                tracing::warn!(error = %e, "cannot redeem a ticket: Redis failed");
                Err(TicketError::Unavailable)
            }
        }
    }

    /// Whether this instance's memory holds `ticket`, unexpired (for tests
    /// and diagnostics; Redis-held tickets are not looked at).
    pub fn held_locally(&self, ticket: &str) -> bool {
        self.lock().live(ticket, Instant::now())
    }

    /// How long a ticket minted now for `claims` may live: `ticket_ttl`, or
    /// less if the token stops being accepted sooner; `None` if it has.
    fn lifetime(&self, claims: &Claims) -> Option<Duration> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let token_until_ms = u128::from(claims.exp) * 1000 + self.leeway.as_millis();
        let left = token_until_ms.checked_sub(now_ms).filter(|&ms| ms > 0)?;
        let left = Duration::from_millis(u64::try_from(left).unwrap_or(u64::MAX));
        Some(left.min(self.ttl))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        // A panic while holding it cannot leave the map half-updated in a
        // way that matters (each operation is one insert or remove).
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// 256 bits from the OS, as hex; `None` if the OS has no randomness to give.
fn random_ticket() -> Option<String> {
    let mut bytes = [0u8; TICKET_BYTES];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Tickets kept in this instance's memory. Takes the time as an argument,
/// so its rules are tested without sleeping.
struct Local {
    map: HashMap<String, Entry>,
    capacity: usize,
    /// Expired entries are dropped at the latest one `ttl` after the last
    /// prune (or at once when the map is full), so a ticket nobody redeems
    /// costs memory for at most about two `ttl`s.
    prune_every: Duration,
    next_prune: Option<Instant>,
}

struct Entry {
    grant: Grant,
    expires: Instant,
}

impl Local {
    fn new(capacity: usize, prune_every: Duration) -> Self {
        Self {
            map: HashMap::new(),
            capacity,
            prune_every,
            next_prune: None,
        }
    }

    fn insert(
        &mut self,
        ticket: String,
        grant: Grant,
        expires: Instant,
        now: Instant,
    ) -> Result<(), TicketError> {
        let due = self.next_prune.is_none_or(|at| now >= at);
        if due || self.map.len() >= self.capacity {
            self.map.retain(|_, e| e.expires > now);
            self.next_prune = Some(now + self.prune_every);
        }
        if self.map.len() >= self.capacity {
            return Err(TicketError::Unavailable);
        }
        self.map.insert(ticket, Entry { grant, expires });
        Ok(())
    }

    /// Removes the ticket: `Ok(Some)` if it was live, `Err(Invalid)` if it
    /// had expired, `Ok(None)` if this map never had it (look elsewhere).
    fn take(&mut self, ticket: &str, now: Instant) -> Result<Option<Grant>, TicketError> {
        match self.map.remove(ticket) {
            Some(e) if e.expires > now => Ok(Some(e.grant)),
            Some(_) => Err(TicketError::Invalid),
            None => Ok(None),
        }
    }

    fn live(&self, ticket: &str, now: Instant) -> bool {
        self.map.get(ticket).is_some_and(|e| e.expires > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn grant(exam: &str) -> Grant {
        Grant {
            exam_id: exam.into(),
            claims: Claims {
                sub: "s1".into(),
                name: "Ada".into(),
                role: Role::Student,
                exams: vec![exam.into()],
                exp: crate::auth::unix_now() + 600,
                iss: None,
                aud: None,
                jti: None,
                iat: None,
            },
        }
    }

    #[test]
    fn a_ticket_is_taken_once_and_not_after_its_expiry() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let mut local = Local::new(10, ttl);
        local.insert("a".into(), grant("e1"), t0 + ttl, t0).unwrap();
        local.insert("b".into(), grant("e1"), t0 + ttl, t0).unwrap();
        let got = local.take("a", t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(got.map(|g| g.exam_id).as_deref(), Some("e1"));
        assert!(local.take("a", t0).unwrap().is_none(), "used: gone");
        assert!(local.live("b", t0 + ttl - Duration::from_millis(1)));
        assert!(!local.live("b", t0 + ttl));
        assert_eq!(local.take("b", t0 + ttl).err(), Some(TicketError::Invalid));
    }

    #[test]
    fn memory_is_bounded_and_expired_tickets_make_room() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let mut local = Local::new(3, ttl);
        for t in ["a", "b", "c"] {
            local.insert(t.into(), grant("e1"), t0 + ttl, t0).unwrap();
        }
        let refused = local.insert("d".into(), grant("e1"), t0 + ttl, t0);
        assert_eq!(refused, Err(TicketError::Unavailable), "full");
        assert_eq!(local.map.len(), 3);
        // Once they have expired, the full map prunes them and takes more.
        let later = t0 + ttl;
        local
            .insert("d".into(), grant("e1"), later + ttl, later)
            .unwrap();
        assert_eq!(local.map.len(), 1);
    }

    #[test]
    fn expired_tickets_are_pruned_even_below_the_cap() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let mut local = Local::new(1000, ttl);
        for i in 0..100 {
            local
                .insert(format!("t{i}"), grant("e1"), t0 + ttl, t0)
                .unwrap();
        }
        let later = t0 + ttl * 2;
        local
            .insert("new".into(), grant("e1"), later + ttl, later)
            .unwrap();
        assert_eq!(local.map.len(), 1, "the hundred unused tickets are gone");
    }

    #[test]
    fn a_ticket_lives_no_longer_than_its_token() {
        let auth = AuthSettings {
            leeway: Duration::ZERO,
            ..AuthSettings::default()
        };
        let tickets = Tickets::new(&auth, None, Arc::default());
        let mut claims = grant("e1").claims;
        assert_eq!(tickets.lifetime(&claims), Some(auth.ticket_ttl));
        claims.exp = crate::auth::unix_now() + 5;
        let left = tickets.lifetime(&claims).unwrap();
        assert!(
            left <= Duration::from_secs(5) && left > Duration::from_secs(3),
            "{left:?}"
        );
        claims.exp = crate::auth::unix_now() - 1;
        assert_eq!(tickets.lifetime(&claims), None);
    }

    #[test]
    fn tickets_are_random_and_long() {
        let a = random_ticket().unwrap();
        let b = random_ticket().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
