//! Token revocation: which tokens are refused before their `exp`, and the
//! live connections that must close when one is revoked.
//!
//! An entry (`POST /v1/revocations`, [`crate::api`]) names a `jti` (one
//! token), a `sub` (a subject's tokens), or both (that token, only if it is
//! that subject's), and lasts `until` a time at most [`MAX_LIFETIME`]
//! ahead: past it the entry is ignored, and pruned. A token's own `exp`
//! bounds how long it needs refusing, so an entry need not outlive the
//! longest token lifetime the identity provider issues.
//!
//! By `sub` alone, an entry covers the subject's tokens *issued up to the
//! revocation's second* (`iat` ≤ its creation, in Unix seconds): a token
//! the identity provider issues afterwards works again at once, which is
//! what an admin wants after "log this user out everywhere". A token
//! without `iat` cannot be placed in time and is covered while the entry
//! lasts.
//!
//! Where it lives: every entry is stored (the `revocations` table), and
//! every instance holds the live ones in memory ([`Revocations`]), indexed
//! by `jti` and by `sub`, so the check at every handshake, ticket and REST
//! call is a hash lookup and never a query. The set is loaded from the
//! database at start-up and kept current through the broker: the instance
//! that takes the `POST` applies it at once and publishes it on Redis's
//! cluster-wide revocations channel ([`crate::broker`]); each instance
//! applies what it receives (applying twice is harmless), and reloads the
//! whole set from the database after a Redis disconnection, when it may
//! have missed some.
//!
//! Applying an entry also closes this instance's live connections it
//! covers: every WebSocket and SSE stream registers ([`Revocations::register`],
//! into the instance's one registry of open connections, [`crate::live`],
//! which the drain reads too) with the token it currently speaks for (a
//! `refresh` replaces it), and gets `error token_revoked` then close 4403.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use serde::Serialize;

use crate::{
    auth::Claims,
    live::{Listed, Live},
    protocol::{ErrorCode, ServerMsg, Timestamp},
    room::{ConnId, Outbox, close},
};

/// The furthest ahead an entry's `until` may be: long enough to outlive
/// any token an exam-day identity provider issues, short enough that the
/// set cannot fill with forgotten entries.
pub const MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Longest `sub` or `jti` an entry may name (the token's own bounds).
pub const MAX_NAME_LEN: usize = 128;

/// One revocation, as stored and as `GET /v1/revocations` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Revocation {
    /// A UUID, unique in the cluster.
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// RFC 3339; the entry is ignored (and pruned) from then on.
    #[serde(serialize_with = "as_rfc3339")]
    #[schema(value_type = String)]
    pub until: i64,
    /// RFC 3339: when the entry was made. By `sub` alone, tokens issued
    /// (`iat`) in this second or before are covered.
    #[serde(serialize_with = "as_rfc3339")]
    #[schema(value_type = String)]
    pub created_at: i64,
    /// The admin who made it (their `sub`).
    pub created_by: String,
}

fn as_rfc3339<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    Timestamp::from_unix_ms(*ms).serialize(s)
}

/// What a revocation looks at in a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenId {
    pub sub: Arc<str>,
    pub jti: Option<Jti>,
    pub iat: Option<u64>,
}

/// A token's `jti`, kept for as long as its connection lives: 16 bytes
/// inline when it is a UUID in its canonical text (lower case, hyphens),
/// what identity providers mostly issue, instead of a 36-byte string on the
/// heap; any other text as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jti {
    Uuid(uuid::Uuid),
    Other(Arc<str>),
}

impl Jti {
    pub fn new(text: &str) -> Self {
        match uuid::Uuid::try_parse(text) {
            // Only the canonical form: its text must come back exactly.
            Ok(id)
                if *id
                    .hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer())
                    == *text =>
            {
                Jti::Uuid(id)
            }
            _ => Jti::Other(text.into()),
        }
    }

    /// Calls `f` with the `jti`'s text (a UUID's formatted on the stack).
    fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            Jti::Uuid(id) => f(id
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())),
            Jti::Other(text) => f(text),
        }
    }
}

impl TokenId {
    pub fn new(sub: Arc<str>, jti: Option<&str>, iat: Option<u64>) -> Self {
        Self {
            sub,
            jti: jti.map(Jti::new),
            iat,
        }
    }

    pub fn of(claims: &Claims) -> Self {
        Self::with_sub(claims, claims.sub.as_str().into())
    }

    /// The claims' id around a `sub` the caller already holds (a
    /// connection's user id is the same string: one allocation, not two).
    pub fn with_sub(claims: &Claims, sub: Arc<str>) -> Self {
        debug_assert_eq!(*sub, *claims.sub);
        Self::new(sub, claims.jti.as_deref(), claims.iat)
    }

    /// Calls `f` with the id borrowed.
    fn with_ref<R>(&self, f: impl FnOnce(TokenRef<'_>) -> R) -> R {
        let (sub, iat) = (&*self.sub, self.iat);
        match &self.jti {
            Some(jti) => jti.with_str(|jti| {
                f(TokenRef {
                    sub,
                    jti: Some(jti),
                    iat,
                })
            }),
            None => f(TokenRef {
                sub,
                jti: None,
                iat,
            }),
        }
    }
}

/// [`TokenId`] borrowed, for a check that keeps nothing: the check at
/// every handshake allocates no copy of the token's ids.
#[derive(Debug, Clone, Copy)]
struct TokenRef<'a> {
    sub: &'a str,
    jti: Option<&'a str>,
    iat: Option<u64>,
}

impl<'a> TokenRef<'a> {
    fn of(claims: &'a Claims) -> Self {
        Self {
            sub: &claims.sub,
            jti: claims.jti.as_deref(),
            iat: claims.iat,
        }
    }
}

impl Revocation {
    /// Does this entry refuse `token` at `now_ms`?
    pub fn covers(&self, token: &TokenId, now_ms: i64) -> bool {
        token.with_ref(|token| self.covers_ref(token, now_ms))
    }

    fn covers_ref(&self, token: TokenRef<'_>, now_ms: i64) -> bool {
        if self.until <= now_ms {
            return false;
        }
        if let Some(sub) = &self.sub
            && sub.as_str() != token.sub
        {
            return false;
        }
        match &self.jti {
            Some(jti) => token.jti == Some(jti.as_str()),
            // By subject: tokens issued up to the revocation's second.
            None => token
                .iat
                .is_none_or(|iat| i64::try_from(iat).unwrap_or(i64::MAX) <= self.created_at / 1000),
        }
    }

    /// The entry's JSON for the broker (every field, unlike the listing's
    /// optional ones, so it parses back the same).
    pub fn to_wire(&self) -> String {
        serde_json::json!({
            "id": self.id, "sub": self.sub, "jti": self.jti,
            "until": self.until, "created_at": self.created_at, "created_by": self.created_by,
        })
        .to_string()
    }

    pub fn from_wire(text: &str) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Wire {
            id: String,
            sub: Option<String>,
            jti: Option<String>,
            until: i64,
            created_at: i64,
            created_by: String,
        }
        let w: Wire = serde_json::from_str(text).ok()?;
        (w.sub.is_some() || w.jti.is_some()).then_some(Self {
            id: w.id,
            sub: w.sub,
            jti: w.jti,
            until: w.until,
            created_at: w.created_at,
            created_by: w.created_by,
        })
    }
}

/// The live entries, indexed for the handshake's lookup.
#[derive(Default)]
struct Index {
    by_id: HashMap<String, Arc<Revocation>>,
    /// Entries naming a `jti` (with or without a `sub`).
    by_jti: HashMap<String, Vec<Arc<Revocation>>>,
    /// Entries naming only a `sub`.
    by_sub: HashMap<String, Vec<Arc<Revocation>>>,
}

impl Index {
    fn insert(&mut self, entry: Arc<Revocation>) -> bool {
        if self.by_id.contains_key(&entry.id) {
            return false;
        }
        match (&entry.jti, &entry.sub) {
            (Some(jti), _) => self
                .by_jti
                .entry(jti.clone())
                .or_default()
                .push(entry.clone()),
            (None, Some(sub)) => self
                .by_sub
                .entry(sub.clone())
                .or_default()
                .push(entry.clone()),
            (None, None) => return false,
        }
        self.by_id.insert(entry.id.clone(), entry);
        true
    }

    /// Forgets the entries that ended (in place: an entry added meanwhile
    /// under the same lock is never lost).
    fn retain_live(&mut self, now_ms: i64) {
        self.by_id.retain(|_, e| e.until > now_ms);
        for map in [&mut self.by_jti, &mut self.by_sub] {
            map.retain(|_, entries| {
                entries.retain(|e| e.until > now_ms);
                !entries.is_empty()
            });
        }
    }

    fn covering(&self, token: TokenRef<'_>, now_ms: i64) -> bool {
        let by_jti = token
            .jti
            .and_then(|j| self.by_jti.get(j))
            .into_iter()
            .flatten();
        let by_sub = self.by_sub.get(token.sub).into_iter().flatten();
        by_jti.chain(by_sub).any(|e| e.covers_ref(token, now_ms))
    }
}

/// This instance's revocation set, and the open connections it closes
/// (see the module doc).
pub struct Revocations {
    /// A std RwLock: read at every handshake, written only by a revocation
    /// or a prune; no await while held.
    index: RwLock<Index>,
    /// The registry of open connections, shared with the drain
    /// ([`crate::live`]): a connection's register/update/drop, and a
    /// revocation's scan, are each one short critical section under its
    /// std Mutex.
    live: Arc<Live>,
}

impl Revocations {
    /// An empty set over the instance's registry of open connections.
    pub fn new(live: Arc<Live>) -> Self {
        Self {
            index: RwLock::default(),
            live,
        }
    }

    /// Adds the stored `entries` to the set (start-up, or a reload after
    /// Redis was away) and closes the live connections any of them covers.
    /// A merge, not a replacement: entries are only ever added (or end), so
    /// one applied from the broker while the reload's query ran is kept.
    pub fn load(&self, entries: Vec<Revocation>, now_ms: i64) {
        {
            let mut index = self.index_mut();
            for e in entries.into_iter().filter(|e| e.until > now_ms) {
                index.insert(Arc::new(e));
            }
            index.retain_live(now_ms);
        }
        self.close_covered(now_ms);
    }

    /// Adds an entry (if new) and closes the live connections it covers;
    /// how many it closed. Idempotent: the instance that took the `POST`
    /// and the broker's echo both apply it.
    pub fn apply(&self, entry: Revocation, now_ms: i64) -> usize {
        if entry.until <= now_ms {
            return 0;
        }
        let entry = Arc::new(entry);
        {
            let mut index = self.index_mut();
            index.insert(entry.clone());
            // Every instance applies every entry (the broker's echo
            // included), so each forgets the ended ones here.
            index.retain_live(now_ms);
        }
        // Not under the index lock: a connection registering meanwhile
        // checks the index after it is in `live` (see `register`).
        let live = self.live.lock();
        let mut closed = 0;
        for conn in live.open.values() {
            if entry.covers(&conn.token, now_ms) {
                revoke(&conn.out);
                closed += 1;
            }
        }
        closed
    }

    /// Is this token refused now?
    pub fn is_revoked(&self, claims: &Claims) -> bool {
        self.is_revoked_ref(TokenRef::of(claims), crate::store::now_ms())
    }

    fn is_revoked_id(&self, token: &TokenId, now_ms: i64) -> bool {
        token.with_ref(|token| self.is_revoked_ref(token, now_ms))
    }

    fn is_revoked_ref(&self, token: TokenRef<'_>, now_ms: i64) -> bool {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        !index.by_id.is_empty() && index.covering(token, now_ms)
    }

    /// The live entries, soonest to end first.
    pub fn list(&self, now_ms: i64) -> Vec<Revocation> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Revocation> = index
            .by_id
            .values()
            .filter(|e| e.until > now_ms)
            .map(|e| (**e).clone())
            .collect();
        out.sort_by(|a, b| (a.until, &a.id).cmp(&(b.until, &b.id)));
        out
    }

    /// Drops expired entries from memory, in place under one lock.
    pub fn prune(&self, now_ms: i64) {
        self.index_mut().retain_live(now_ms);
    }

    /// Lists an open connection (a socket or an event stream) in the
    /// instance's registry ([`crate::live`]), with its exam and role for the
    /// drain and its token for revocations, until the guard drops. A token
    /// revoked between the handshake's check and now is closed at once (so
    /// no revocation slips between the two: [`Self::apply`] adds to the
    /// index before it scans the registry, this lists before it checks).
    pub fn register(
        &self,
        conn: ConnId,
        exam: Arc<str>,
        watcher: bool,
        token: TokenId,
        out: Outbox,
    ) -> Listed {
        let listed = self
            .live
            .insert(conn, exam, watcher, token.clone(), out.clone());
        // Not under the registry's lock (the index's is taken after it
        // elsewhere).
        if self.is_revoked_id(&token, crate::store::now_ms()) {
            revoke(&out);
        }
        listed
    }

    /// How many connections are registered (tests, diagnostics).
    pub fn live_connections(&self) -> usize {
        self.live.open()
    }

    fn close_covered(&self, now_ms: i64) {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        if index.by_id.is_empty() {
            return;
        }
        for conn in self.live.lock().open.values() {
            if conn.token.with_ref(|token| index.covering(token, now_ms)) {
                revoke(&conn.out);
            }
        }
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        // Each write replaces or extends the index whole: a panic while
        // holding it cannot leave a half-updated entry.
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The one check every handshake, ticket and REST call makes: 403
/// `token_revoked` while a revocation covers the token.
pub fn check(app: &crate::app::AppState, claims: &Claims) -> Result<(), crate::http::ApiError> {
    if app.revocations.is_revoked(claims) {
        Err(crate::http::ApiError::forbidden(
            "token_revoked",
            "this token has been revoked; sign in again for a new one",
        ))
    } else {
        Ok(())
    }
}

/// `error token_revoked` (queued first: the connection writes queued frames
/// before it notices the kick), then close 4403.
fn revoke(out: &Outbox) {
    let _ = out.tx.try_send(revoked_frame());
    out.kick.kick(close::TOKEN_REVOKED);
}

/// The frame a revoked connection gets before its close.
pub fn revoked_frame() -> axum::extract::ws::Utf8Bytes {
    ServerMsg::Error {
        code: ErrorCode::TokenRevoked,
        message: "this connection's token was revoked".into(),
        r#ref: None,
        retry_after_ms: None,
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, sub: Option<&str>, jti: Option<&str>, created_at: i64) -> Revocation {
        Revocation {
            id: id.into(),
            sub: sub.map(Into::into),
            jti: jti.map(Into::into),
            until: created_at + 60_000,
            created_at,
            created_by: "admin".into(),
        }
    }

    fn token(sub: &str, jti: Option<&str>, iat: Option<u64>) -> TokenId {
        TokenId::new(sub.into(), jti, iat)
    }

    #[test]
    fn by_subject_covers_tokens_issued_up_to_its_second() {
        let t0 = 1_800_000_000_500; // ms; its second is 1_800_000_000
        let e = entry("r1", Some("s1"), None, t0);
        assert!(e.covers(&token("s1", None, Some(1_800_000_000)), t0));
        assert!(e.covers(&token("s1", Some("j"), Some(1_700_000_000)), t0));
        assert!(
            !e.covers(&token("s1", None, Some(1_800_000_001)), t0),
            "issued after"
        );
        assert!(e.covers(&token("s1", None, None), t0), "no iat: covered");
        assert!(!e.covers(&token("s2", None, None), t0), "another subject");
        assert!(
            !e.covers(&token("s1", None, None), e.until),
            "expired entry"
        );
    }

    #[test]
    fn by_jti_covers_that_token_and_a_sub_narrows_it() {
        let t0 = 1_800_000_000_000;
        let e = entry("r1", None, Some("j1"), t0);
        assert!(e.covers(&token("anyone", Some("j1"), Some(u64::MAX)), t0));
        assert!(!e.covers(&token("anyone", Some("j2"), None), t0));
        assert!(!e.covers(&token("anyone", None, None), t0));
        let both = entry("r2", Some("s1"), Some("j1"), t0);
        assert!(both.covers(&token("s1", Some("j1"), None), t0));
        assert!(!both.covers(&token("s2", Some("j1"), None), t0));
    }

    #[test]
    fn the_set_looks_up_by_jti_and_sub_and_forgets_expired_entries() {
        let set = Revocations::new(Arc::default());
        let t0 = 1_800_000_000_000;
        set.apply(entry("r1", Some("s1"), None, t0), t0);
        set.apply(entry("r2", None, Some("j9"), t0), t0);
        set.apply(entry("r2", None, Some("j9"), t0), t0); // the broker's echo
        assert_eq!(set.list(t0).len(), 2);
        assert!(set.is_revoked_id(&token("s1", Some("x"), Some(1)), t0));
        assert!(set.is_revoked_id(&token("s7", Some("j9"), Some(1)), t0));
        assert!(!set.is_revoked_id(&token("s7", Some("j8"), Some(1)), t0));
        let later = t0 + 60_000;
        assert!(!set.is_revoked_id(&token("s1", None, None), later));
        assert!(set.list(later).is_empty());
        set.prune(later);
        assert!(set.index.read().unwrap().by_id.is_empty());
    }

    #[test]
    fn a_reload_adds_to_the_set_and_never_forgets_an_entry_applied_meanwhile() {
        let set = Revocations::new(Arc::default());
        let t0 = 1_800_000_000_000;
        // Applied from the broker while the reload's query ran: the rows
        // read do not have it yet.
        set.apply(entry("r1", Some("s1"), None, t0), t0);
        set.load(vec![entry("r2", None, Some("j2"), t0)], t0);
        assert!(set.is_revoked_id(&token("s1", None, None), t0), "kept");
        assert!(
            set.is_revoked_id(&token("s9", Some("j2"), None), t0),
            "loaded"
        );
        // An ended entry in memory is dropped by the next apply or load.
        let mut short = entry("r3", Some("s3"), None, t0);
        short.until = t0 + 1_000;
        set.apply(short, t0);
        set.apply(entry("r4", Some("s4"), None, t0 + 2_000), t0 + 2_000);
        let ids: Vec<String> = set.list(t0).into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["r1", "r2", "r4"], "r3 ended and was forgotten");
    }

    #[test]
    fn a_uuid_jti_is_kept_inline_and_still_matches_its_text() {
        let uuid = "0b6f3c8e-5a43-4d0e-9f51-2b3c4d5e6f70";
        assert!(matches!(Jti::new(uuid), Jti::Uuid(_)));
        // Not canonical: kept as it came, so it matches only its own text.
        let upper = uuid.to_uppercase();
        assert!(matches!(Jti::new(&upper), Jti::Other(_)));
        assert!(matches!(Jti::new("not-a-uuid"), Jti::Other(_)));
        let t0 = 1_800_000_000_000;
        let by_uuid = entry("r1", None, Some(uuid), t0);
        assert!(by_uuid.covers(&token("s1", Some(uuid), None), t0));
        assert!(!by_uuid.covers(&token("s1", Some(&upper), None), t0));
        let by_upper = entry("r2", None, Some(&upper), t0);
        assert!(by_upper.covers(&token("s1", Some(&upper), None), t0));
        assert!(!by_upper.covers(&token("s1", Some(uuid), None), t0));
        let set = Revocations::new(Arc::default());
        set.apply(by_uuid, t0);
        assert!(set.is_revoked_id(&token("s9", Some(uuid), None), t0));
        assert!(std::mem::size_of::<TokenId>() <= 56);
    }

    #[test]
    fn wire_form_round_trips() {
        let e = entry("r1", Some("s1"), Some("j"), 5);
        assert_eq!(Revocation::from_wire(&e.to_wire()), Some(e));
        assert_eq!(Revocation::from_wire(r#"{"id":"x"}"#), None);
    }
}
