//! Who is connecting: JWT verification, the signing key, and the checks a
//! handshake must pass before a socket is upgraded.
//!
//! Algorithms are pinned to the one configured (HS256 by default, RS256 or
//! EdDSA with a public key), `exp` is required, `nbf` is enforced when
//! present, both within `auth.leeway`, and `iss`/`aud` are checked when
//! configured. A token is accepted from `Authorization: Bearer` or, for
//! browsers that cannot set headers on `new WebSocket()`, from the
//! `access_token` query parameter; [`redact_query`] keeps it (and `ticket`)
//! out of logs however the key is spelled, and any JWT-shaped value too.
//!
//! With HS256 and no configured secret, the server generates one on first
//! start and keeps it in `server.data_dir/jwt_secret` (mode 0600), so
//! restarts and `examwatch token` agree — never a well-known default.

use std::{
    io::Write,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::config::{AuthSettings, JwtAlgorithm};

mod rights;
pub use rights::Right;

/// File name of the generated HS256 secret inside `server.data_dir`.
pub const SECRET_FILE: &str = "jwt_secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Student,
    /// Invigilates: watches and deals with single students, but does not
    /// change the exam for everyone (see [`Role::may`]).
    Proctor,
    Teacher,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Proctor => "proctor",
            Role::Teacher => "teacher",
            Role::Admin => "admin",
        }
    }
    /// Proctors, teachers and admins watch exams; students sit them. What
    /// a watcher may do beyond watching is [`Role::may`].
    pub fn is_watcher(self) -> bool {
        !matches!(self, Role::Student)
    }
}

/// The token's claims, as issued by `examwatch token` or an external IdP.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub name: String,
    pub role: Role,
    /// Exams the token grants. Admins see every exam regardless.
    #[serde(default)]
    pub exams: Vec<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// A string or a list of strings, as RFC 7519 allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// The token's id: what a revocation by `jti` names
    /// ([`crate::revocations`]). `examwatch token` always sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// When the token was issued (Unix seconds): a revocation by `sub`
    /// covers the subject's tokens issued up to the revocation's second,
    /// so a token issued after it works. A token without `iat` is covered
    /// while the entry lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Claims {
    pub fn grants(&self, exam_id: &str) -> bool {
        self.role == Role::Admin || self.exams.iter().any(|e| e == exam_id)
    }
}

/// Why a token was refused. Every variant maps to HTTP 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("missing token: send `Authorization: Bearer <jwt>` or `?access_token=<jwt>`")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid: its `nbf` is in the future")]
    NotYetValid,
    #[error("invalid token: {0}")]
    Invalid(&'static str),
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing_token",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::Invalid(_) => "invalid_token",
        }
    }
}

/// Verification (and, when possible, signing) keys built from settings.
pub struct Keys {
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    algorithm: Algorithm,
    validation: Validation,
    /// First configured `iss`/`aud`, put into minted tokens.
    issuer: Option<String>,
    audience: Option<String>,
}

impl Keys {
    /// Builds keys from settings; generates the HS256 secret file if needed.
    pub fn from_settings(auth: &AuthSettings, data_dir: &Path) -> anyhow::Result<Self> {
        let (algorithm, decoding, encoding) = match auth.algorithm {
            JwtAlgorithm::HS256 => {
                let secret = match &auth.jwt_secret {
                    Some(s) => s.expose().to_owned(),
                    None => load_or_create_secret(data_dir)?,
                };
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(secret.as_bytes()),
                    Some(EncodingKey::from_secret(secret.as_bytes())),
                )
            }
            alg @ (JwtAlgorithm::RS256 | JwtAlgorithm::EdDSA) => {
                let pem = match (&auth.public_key, &auth.public_key_file) {
                    (Some(pem), _) => pem.clone().into_bytes(),
                    (None, Some(file)) => std::fs::read(file).with_context(|| {
                        format!("auth.public_key_file: cannot read {}", file.display())
                    })?,
                    (None, None) => anyhow::bail!("auth.public_key is required for {alg:?}"),
                };
                let private = match &auth.private_key_file {
                    Some(file) => Some(std::fs::read(file).with_context(|| {
                        format!("auth.private_key_file: cannot read {}", file.display())
                    })?),
                    None => None,
                };
                if alg == JwtAlgorithm::RS256 {
                    let dec = DecodingKey::from_rsa_pem(&pem).context("auth.public_key")?;
                    let enc = private
                        .map(|p| EncodingKey::from_rsa_pem(&p))
                        .transpose()
                        .context("auth.private_key_file")?;
                    (Algorithm::RS256, dec, enc)
                } else {
                    let dec = DecodingKey::from_ed_pem(&pem).context("auth.public_key")?;
                    let enc = private
                        .map(|p| EncodingKey::from_ed_pem(&p))
                        .transpose()
                        .context("auth.private_key_file")?;
                    (Algorithm::EdDSA, dec, enc)
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = auth.leeway.as_secs();
        // Off by default in jsonwebtoken: a token minted for tomorrow's exam
        // would work today. Checked only when the token carries `nbf`.
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if auth.issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&auth.issuer);
            required.push("iss");
        }
        if auth.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&auth.audience);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            decoding,
            encoding,
            algorithm,
            validation,
            issuer: auth.issuer.first().cloned(),
            audience: auth.audience.first().cloned(),
        })
    }

    /// Verifies signature, algorithm, expiry, issuer, audience and shape.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::Invalid("bad signature"),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenError::Invalid("algorithm not accepted")
                }
                ErrorKind::InvalidIssuer => TokenError::Invalid("issuer not accepted"),
                ErrorKind::InvalidAudience => TokenError::Invalid("audience not accepted"),
                ErrorKind::MissingRequiredClaim(_) => TokenError::Invalid("missing required claim"),
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::Json(_) | ErrorKind::InvalidClaimFormat(_) => {
                    TokenError::Invalid("claims do not match the expected shape")
                }
                _ => TokenError::Invalid("malformed token"),
            })?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > 128 {
            return Err(TokenError::Invalid("`sub` must be 1 to 128 characters"));
        }
        if claims.name.len() > 200 {
            return Err(TokenError::Invalid("`name` is longer than 200 characters"));
        }
        if claims
            .jti
            .as_deref()
            .is_some_and(|j| j.is_empty() || j.len() > 128 || j.chars().any(char::is_control))
        {
            return Err(TokenError::Invalid(
                "`jti` must be 1 to 128 characters, without control characters",
            ));
        }
        if claims
            .sub
            .chars()
            .chain(claims.name.chars())
            .any(char::is_control)
        {
            return Err(TokenError::Invalid(
                "`sub` and `name` may not contain control characters",
            ));
        }
        Ok(claims)
    }

    /// Signs claims with the configured key (what `examwatch token` prints).
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let key = self
            .encoding
            .as_ref()
            .context("no signing key: with RS256/EdDSA set auth.private_key_file to mint tokens")?;
        Ok(jsonwebtoken::encode(
            &Header::new(self.algorithm),
            claims,
            key,
        )?)
    }

    /// Convenience for the CLI and tests: claims valid for `ttl` from now,
    /// with a fresh random `jti` and `iat` = now (what revocations match).
    pub fn mint(
        &self,
        sub: &str,
        name: &str,
        role: Role,
        exams: Vec<String>,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        self.sign(&Claims {
            sub: sub.into(),
            name: name.into(),
            role,
            exams,
            exp: unix_now() + ttl.as_secs(),
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(Audience::One),
            jti: Some(uuid::Uuid::new_v4().to_string()),
            iat: Some(unix_now()),
        })
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads `data_dir/jwt_secret`, or creates it (0600) with 32 random bytes.
/// Where the server keeps the HS256 secret it generated (`server.data_dir`).
pub fn secret_file(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join(SECRET_FILE)
}

fn load_or_create_secret(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().to_owned()),
        Ok(_) => anyhow::bail!("{} is too short to be a secret", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data folder {}", data_dir.display()))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Write a private temp file, then link it into place: the link either
    // creates the complete file or fails because another process won the
    // race, so nobody ever reads a half-written secret.
    let tmp = data_dir.join(format!(".{SECRET_FILE}.{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(secret.as_bytes())?;
    file.sync_all()?;
    drop(file);
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::warn!(
                path = %path.display(),
                "no auth.jwt_secret configured: generated a random one and saved it (mode 0600); \
                 `examwatch token` and restarts use the same file"
            );
            Ok(secret)
        }
        // Another process won the race: use its secret.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().to_owned())
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// The bearer token from the `Authorization` header, else `access_token`.
pub fn extract_token<'a>(
    authorization: Option<&'a str>,
    access_token: Option<&'a str>,
) -> Option<&'a str> {
    authorization
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .or(access_token.filter(|t| !t.is_empty()))
}

/// Query parameters whose value is a credential: the token, and the
/// single-use connection ticket.
/// `handover`: an HTTP session's handover token (docs/PROTOCOL.md 8.4).
const SECRET_PARAMS: [&str; 3] = ["access_token", "ticket", "handover"];

/// The query string as it may be logged: the value of every credential
/// parameter replaced by `[redacted]`, its key compared *after* decoding
/// (the query parser decodes `access%5Ftoken` and `%61ccess_token` to
/// `access_token`, so they authenticate), and any other pair holding
/// something shaped like a JWT redacted as well, whatever its key.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = form_decode(raw_key);
            if SECRET_PARAMS.contains(&key.as_ref()) {
                format!("{raw_key}=[redacted]")
            } else if looks_like_jwt(&key) {
                "[redacted]".to_owned()
            } else if looks_like_jwt(&form_decode(raw_value)) {
                format!("{raw_key}=[redacted]")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Free text headed for a log (a refusal's reason, a path segment) with
/// every JWT-shaped run replaced by `[redacted]`.
pub fn redact_jwts(text: &str) -> std::borrow::Cow<'_, str> {
    if !looks_like_jwt(text) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(is_jwt_char) {
        out.push_str(&rest[..start]);
        let run = &rest[start..];
        let end = run.find(|c| !is_jwt_char(c)).unwrap_or(run.len());
        if jwt_run(&run[..end]) {
            out.push_str("[redacted]");
        } else {
            out.push_str(&run[..end]);
        }
        rest = &run[end..];
    }
    out.push_str(rest);
    out.into()
}

fn is_jwt_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Does `text` contain a run shaped like a JWS in compact form: base64url
/// segments joined by dots, at least two of them non-trivial? Deliberately
/// loose (a false positive only hides a harmless value from a log line).
fn looks_like_jwt(text: &str) -> bool {
    text.split(|c| !is_jwt_char(c)).any(jwt_run)
}

fn jwt_run(run: &str) -> bool {
    let mut segments = run.split('.');
    let (Some(a), Some(b), Some(_)) = (segments.next(), segments.next(), segments.next()) else {
        return false;
    };
    run.len() >= 16 && a.len() >= 4 && b.len() >= 4
}

/// `application/x-www-form-urlencoded` decoding, as the query parser does
/// it: `+` is a space, `%XX` a byte, anything else (a stray `%`) itself.
fn form_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return s.into();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |j: usize| {
            bytes
                .get(j)
                .and_then(|b| char::from(*b).to_digit(16))
                .map(|d| d as u8)
        };
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

/// Is `origin` allowed? An empty allow-list accepts any origin. A missing
/// header is accepted: browsers always send `Origin` on a WebSocket
/// handshake (that is what this check guards against: another site's page
/// opening a socket with the user's token), while native exam apps and
/// tools send none and are authenticated by their token alone.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match origin {
        Some(o) => allowed.iter().any(|a| a.trim_end_matches('/') == o),
        None => true,
    }
}

/// Exam ids are short and URL-safe so they can key rooms, logs and channels.
pub fn valid_exam_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn settings() -> AuthSettings {
        AuthSettings {
            jwt_secret: Some(Secret::new("x".repeat(40))),
            ..AuthSettings::default()
        }
    }

    #[test]
    fn round_trip_and_expiry_is_distinct() {
        let keys = Keys::from_settings(&settings(), Path::new("/nonexistent")).unwrap();
        let t = keys
            .mint(
                "s1",
                "Ada",
                Role::Student,
                vec!["e1".into()],
                Duration::from_secs(60),
            )
            .unwrap();
        let c = keys.verify(&t).unwrap();
        assert_eq!(c.sub, "s1");
        assert!(c.grants("e1") && !c.grants("e2"));
        let mut old = c.clone();
        old.exp = unix_now() - 3600;
        assert_eq!(
            keys.verify(&keys.sign(&old).unwrap()).unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn proctor_is_a_watcher_spelled_proctor_in_tokens() {
        let keys = Keys::from_settings(&settings(), Path::new("/nonexistent")).unwrap();
        let t = keys
            .mint(
                "p1",
                "P",
                Role::Proctor,
                vec!["e1".into()],
                Duration::from_secs(60),
            )
            .unwrap();
        let c = keys.verify(&t).unwrap();
        assert_eq!(c.role, Role::Proctor);
        assert_eq!(Role::Proctor.as_str(), "proctor");
        assert_eq!(serde_json::to_value(Role::Proctor).unwrap(), "proctor");
        assert!(Role::Proctor.is_watcher());
        // A proctor's grant is its list, like a teacher's (only admins see all).
        assert!(c.grants("e1") && !c.grants("e2"));
    }

    #[test]
    fn minted_tokens_carry_the_configured_issuer_and_audience() {
        let mut s = settings();
        s.issuer = vec!["https://idp.example".into()];
        s.audience = vec!["examwatch".into(), "other".into()];
        let keys = Keys::from_settings(&s, Path::new("/nonexistent")).unwrap();
        let t = keys
            .mint("t", "T", Role::Teacher, vec![], Duration::from_secs(60))
            .unwrap();
        assert!(keys.verify(&t).is_ok());
        // An IdP's list-valued `aud` is accepted too.
        let mut c = keys.verify(&t).unwrap();
        c.aud = Some(Audience::Many(vec!["x".into(), "other".into()]));
        assert!(keys.verify(&keys.sign(&c).unwrap()).is_ok());
        c.aud = Some(Audience::Many(vec!["x".into()]));
        assert_eq!(
            keys.verify(&keys.sign(&c).unwrap()).unwrap_err(),
            TokenError::Invalid("audience not accepted")
        );
    }

    #[test]
    fn generated_secret_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings();
        s.jwt_secret = None;
        let a = Keys::from_settings(&s, dir.path()).unwrap();
        let b = Keys::from_settings(&s, dir.path()).unwrap();
        let t = a
            .mint("t", "T", Role::Teacher, vec![], Duration::from_secs(60))
            .unwrap();
        assert!(b.verify(&t).is_ok(), "second load uses the same secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn token_sources_and_redaction() {
        assert_eq!(extract_token(Some("Bearer abc"), Some("q")), Some("abc"));
        assert_eq!(extract_token(None, Some("q")), Some("q"));
        assert_eq!(extract_token(Some("Basic x"), None), None);
        assert_eq!(
            redact_query("last_seq=3&access_token=eyJ.x.y"),
            "last_seq=3&access_token=[redacted]"
        );
    }

    #[test]
    fn redaction_decodes_keys_and_catches_jwts_by_value() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzMSJ9.c2lnbmF0dXJl";
        for key in [
            "access_token",
            "access%5Ftoken",
            "%61ccess_token",
            "%61%63%63%65%73%73%5f%74%6f%6b%65%6e",
            "ticket",
            "tick%65t",
            "handover",
            "hand%6Fver",
        ] {
            assert_eq!(
                redact_query(&format!("last_seq=1&{key}=opaque-secret&x=2")),
                format!("last_seq=1&{key}=[redacted]&x=2")
            );
        }
        // By value, whatever the key; and a JWT in a key (`%3D` is `=`).
        assert_eq!(
            redact_query(&format!("previous_session={jwt}")),
            "previous_session=[redacted]"
        );
        assert_eq!(redact_query(&format!("x=%65{}", &jwt[1..])), "x=[redacted]");
        assert_eq!(
            redact_query(&format!("access_token%3D{jwt}&last_seq=2")),
            "[redacted]&last_seq=2"
        );
        // Ordinary values are kept.
        let plain = "last_seq=12&previous_session=9b2f6d3a-1e7c-4a85-8f40-c3d5e6a7b812&v=1.2.3";
        assert_eq!(redact_query(plain), plain);
        assert_eq!(
            redact_jwts(&format!("origin \"{jwt}\" is not allowed")),
            "origin \"[redacted]\" is not allowed"
        );
        assert_eq!(redact_jwts("no token here"), "no token here");
        assert_eq!(form_decode("a%2"), "a%2");
        assert_eq!(form_decode("a+b%20c%zz"), "a b c%zz");
    }

    #[test]
    fn nbf_is_enforced_within_the_leeway() {
        let keys = Keys::from_settings(&settings(), Path::new("/nonexistent")).unwrap();
        let sign = |nbf: u64| {
            let claims = serde_json::json!({
                "sub": "s1", "role": "student", "exp": unix_now() + 3600, "nbf": nbf,
            });
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret("x".repeat(40).as_bytes()),
            )
            .unwrap()
        };
        assert_eq!(
            keys.verify(&sign(unix_now() + 86_400)).unwrap_err(),
            TokenError::NotYetValid
        );
        assert_eq!(TokenError::NotYetValid.code(), "token_not_yet_valid");
        // Within the default 30 s leeway, and in the past: accepted.
        assert!(keys.verify(&sign(unix_now() + 20)).is_ok());
        assert!(keys.verify(&sign(unix_now() - 60)).is_ok());
    }

    #[test]
    fn origins_and_exam_ids() {
        let allowed = vec!["https://a.example".to_owned()];
        assert!(origin_allowed(&allowed, Some("https://a.example")));
        assert!(!origin_allowed(&allowed, Some("https://evil.example")));
        assert!(
            origin_allowed(&allowed, None),
            "native clients send no Origin"
        );
        assert!(origin_allowed(&[], Some("https://any")));
        assert!(valid_exam_id("math-2026.final_1"));
        assert!(!valid_exam_id("a/b") && !valid_exam_id("") && !valid_exam_id(&"x".repeat(65)));
    }
}
