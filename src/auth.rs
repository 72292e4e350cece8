//! Who is connecting: JWT verification, the signing key, and the checks a
//! handshake must pass before a socket is upgraded.
//!
//! Algorithms are pinned to the one configured (HS256 by default, RS256 or
//! EdDSA with a public key), `exp` is required, and `iss`/`aud` are checked
//! when configured. A token is accepted from `Authorization: Bearer` or, for
//! browsers that cannot set headers on `new WebSocket()`, from the
//! `access_token` query parameter; [`redact_query`] keeps it out of logs.
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

/// File name of the generated HS256 secret inside `server.data_dir`.
pub const SECRET_FILE: &str = "jwt_secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Student,
    Teacher,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Teacher => "teacher",
            Role::Admin => "admin",
        }
    }
    /// Teachers and admins watch exams; students sit them.
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
    #[error("invalid token: {0}")]
    Invalid(&'static str),
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing_token",
            TokenError::Expired => "token_expired",
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
                ErrorKind::ImmatureSignature => TokenError::Invalid("token not yet valid"),
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

    /// Convenience for the CLI and tests: claims valid for `ttl` from now.
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

/// Replaces the value of `access_token` in a query string, for logging.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("access_token", _)) => "access_token=[redacted]".to_owned(),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
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
