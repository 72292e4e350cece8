//! TLS in-process: HTTPS and wss on the public listener without a proxy.
//!
//! With `server.tls.cert` and `server.tls.key` set, [`Tls::from_settings`]
//! loads the pair and the accept loop (`accept.rs`) runs every accepted
//! connection through a rustls handshake before hyper sees it, under the
//! same connection cap and request-head deadline as plain HTTP. Without
//! them the listener stays plain, for a proxy that terminates TLS.
//!
//! Choices, and why:
//! - **One crypto provider, `ring`, named explicitly.** Every config is
//!   built with `builder_with_provider(ring)`, so nothing depends on which
//!   provider some other crate's feature flags would make the default; it
//!   is also installed as the process default once ([`provider`]), so any
//!   later `ServerConfig::builder()` finds the same one.
//! - **TLS 1.2 and 1.3 only** (rustls has nothing older), **ALPN
//!   `http/1.1`** (the server speaks HTTP/1.1 and WebSocket upgrades only).
//! - **Stateless session tickets** (ring's rotating ticketer), so a hall of
//!   students reconnecting at once resumes instead of paying a full
//!   handshake each.
//! - **Reload without dropping anything.** A reload (SIGHUP, or a change
//!   of either file's modification time, size or inode, checked every
//!   `server.tls.reload_interval`) builds a whole new rustls config and
//!   swaps it in; each handshake takes the config current when it starts.
//!   Open connections keep the one they were made with. A new config also
//!   means new session-ticket keys and an empty session cache, so a client
//!   cannot resume its way past a replaced certificate (a rotation after a
//!   key leak must reach every new connection). A pair that does not load
//!   is an error in the log and the old config stays.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, TlsSettings};

/// The one crypto provider: `ring`, installed as the process default the
/// first time it is asked for (if nothing was installed before).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let ring = Arc::new(rustls::crypto::ring::default_provider());
            // Err: a default is already installed (by an embedding program
            // or a test). Ours does not depend on it: every config below
            // names `ring` itself.
            let _ = CryptoProvider::install_default((*ring).clone());
            ring
        })
        .clone()
}

/// Why a certificate pair did not load. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {key} = {}: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} = {} holds no PEM certificate{detail}", path.display())]
    NoCertificate {
        key: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{key} = {} holds no PEM private key ({detail})", path.display())]
    NoKey {
        key: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("cannot make the TLS configuration: {0}")]
    Config(rustls::Error),
    #[error(
        "server.tls.key = {} does not fit server.tls.cert = {}: {detail}",
        key.display(),
        cert.display()
    )]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
}

/// TLS for one listener: the rustls config and the certificate it serves.
pub struct Tls {
    /// The config new handshakes get, and the certificate it serves (for
    /// the readiness check's connector, which trusts exactly that one). A
    /// std lock: held for one Arc clone, never across an await.
    current: RwLock<(Arc<ServerConfig>, Arc<CertifiedKey>)>,
    cert: PathBuf,
    key: PathBuf,
    reload_interval: Duration,
    /// The files as they were when last loaded (or tried), so a poll
    /// reloads only on a change and a bad file is reported once.
    seen: Mutex<Stamps>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// `None` without `server.tls.cert`; else the loaded pair, or a start-up
    /// error naming the setting (missing, unreadable, not PEM, mismatched).
    pub fn from_settings(settings: &TlsSettings) -> Result<Option<Arc<Self>>, ConfigError> {
        let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
            return Ok(None);
        };
        let seen = Stamps::of(cert, key);
        let served = build_config(cert, key).map_err(|e| ConfigError::Invalid {
            key: match &e {
                TlsError::Read { key, .. }
                | TlsError::NoCertificate { key, .. }
                | TlsError::NoKey { key, .. } => key,
                TlsError::Rejected { .. } | TlsError::Config(_) => "server.tls.key",
            },
            problem: format!("cannot be used: {e}"),
        })?;
        Ok(Some(Arc::new(Self {
            current: RwLock::new(served),
            cert: cert.clone(),
            key: key.clone(),
            reload_interval: settings.reload_interval,
            seen: Mutex::new(seen),
        })))
    }

    /// What runs the handshake of a connection accepted now: the current
    /// config.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().0)
    }

    fn current(&self) -> (Arc<ServerConfig>, Arc<CertifiedKey>) {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A client connector for the readiness check (`health.rs`), which
    /// connects to this listener on loopback: it trusts exactly the
    /// certificate served now (whatever names it carries, so no CA and no
    /// `127.0.0.1` in the certificate are needed), and still checks that
    /// the server holds its key (the handshake's signature).
    pub fn loopback_connector(self: &Arc<Self>) -> Result<tokio_rustls::TlsConnector, TlsError> {
        let provider = provider();
        let verifier = Arc::new(ServedOnly {
            tls: self.clone(),
            provider: provider.clone(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }

    /// Loads the files again and, if they make a valid pair, serves it to
    /// every new handshake; otherwise keeps the current one.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = Stamps::of(&self.cert, &self.key);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
        let served = build_config(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = served;
        Ok(())
    }

    /// Did either file change since it was last loaded (or tried)?
    fn changed(&self) -> bool {
        let now = Stamps::of(&self.cert, &self.key);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) != now
    }

    /// Starts the reloader: on SIGHUP, and when a poll every
    /// `reload_interval` sees a file change, until `stop`. The SIGHUP
    /// handler is installed before this returns.
    pub fn spawn_reloader(self: &Arc<Self>, stop: CancellationToken) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup())?;
        let tls = self.clone();
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(tls.reload_interval);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll.tick().await; // the first tick is immediate
            loop {
                let why = tokio::select! {
                    _ = stop.cancelled() => return,
                    Some(()) = hangup.recv() => "SIGHUP",
                    _ = poll.tick() => {
                        if !tls.changed() {
                            continue;
                        }
                        "file changed"
                    }
                };
                match tls.reload() {
                    Ok(()) => tracing::info!(
                        cause = why,
                        cert = %tls.cert.display(),
                        "TLS certificate reloaded: new handshakes use it"
                    ),
                    Err(e) => tracing::error!(
                        cause = why,
                        error = %e,
                        "cannot reload the TLS certificate: keeping the previous one"
                    ),
                }
            }
        });
        Ok(())
    }
}

/// One config's certificate, whatever the client asks for (SNI is not
/// used: one listener, one name set).
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A complete server config for the pair in `cert` and `key`, and the pair.
fn build_config(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<ServerConfig>, Arc<CertifiedKey>), TlsError> {
    let provider = provider();
    let pair = load_pair(cert, key, &provider)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OneCert(pair.clone())));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Config)?;
    Ok((Arc::new(config), pair))
}

/// The readiness check's certificate verifier: the end-entity certificate
/// must be the one this instance serves now (byte for byte); the
/// handshake signatures are checked as any client checks them.
struct ServedOnly {
    tls: Arc<Tls>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for ServedOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServedOnly")
    }
}

impl rustls::client::danger::ServerCertVerifier for ServedOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let (_, pair) = self.tls.current();
        match pair.end_entity_cert() {
            Ok(served) if served.as_ref() == end_entity.as_ref() => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Reads a certificate chain and its key and checks that they match.
fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |setting: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            key: setting,
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read("server.tls.cert", cert)?;
    let key_pem = read("server.tls.key", key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate {
            key: "server.tls.cert",
            path: cert.to_owned(),
            detail: format!(" ({e})"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            key: "server.tls.cert",
            path: cert.to_owned(),
            detail: String::new(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        key: "server.tls.key",
        path: key.to_owned(),
        detail: e.to_string(),
    })?;
    let rejected = |e: rustls::Error| TlsError::Rejected {
        cert: cert.to_owned(),
        key: key.to_owned(),
        detail: e.to_string(),
    };
    let pair = CertifiedKey::from_der(chain, private, provider).map_err(rejected)?;
    // `from_der` lets a key whose public half it cannot tell through;
    // refuse that too rather than fail every handshake later.
    pair.keys_match().map_err(rejected)?;
    Ok(Arc::new(pair))
}

/// What identifies a version of a file cheaply: modification time, size,
/// inode (a renamed-in file or a Kubernetes secret's swapped symlink
/// changes it even within one mtime tick). `None`: unreadable now.
type Stamp = Option<(SystemTime, u64, u64, u64)>;

#[derive(Debug, PartialEq, Eq)]
struct Stamps([Stamp; 2]);

impl Stamps {
    fn of(cert: &Path, key: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        let stamp = |p: &Path| {
            std::fs::metadata(p).ok().map(|m| {
                (
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.len(),
                    m.ino(),
                    m.dev(),
                )
            })
        };
        Self([stamp(cert), stamp(key)])
    }
}

/// How a TLS handshake on the public listener ended without a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not complete within `server.request_head_timeout`.
    Timeout,
    /// The peer went away mid-handshake.
    Closed,
    /// Refused by rustls: no common version or cipher suite (TLS 1.1 or
    /// older), not TLS at all (plain HTTP), a bad message, an untrusting
    /// client's alert.
    Protocol,
}

impl HandshakeFailure {
    /// A short, stable name (a log field, and a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Protocol => "protocol",
        }
    }

    /// Sorts a handshake's I/O error.
    pub fn of(e: &std::io::Error) -> Self {
        let is_rustls = e
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        if is_rustls || e.kind() == std::io::ErrorKind::InvalidData {
            Self::Protocol
        } else {
            Self::Closed
        }
    }
}

/// Every failed TLS handshake goes through here: logged at debug only
/// (scanners and clients with old TLS stacks must not fill the log, and
/// one failure concerns that connection alone).
/// Counted in `examwatch_tls_handshake_failures_total{reason}`.
pub fn handshake_failed(
    metrics: &crate::metrics::Metrics,
    peer: SocketAddr,
    reason: HandshakeFailure,
    error: &dyn fmt::Display,
) {
    metrics.tls_handshake_failed(reason);
    tracing::debug!(%peer, reason = reason.as_str(), %error, "TLS handshake failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn settings(cert: &Path, key: &Path) -> TlsSettings {
        TlsSettings {
            cert: Some(cert.to_owned()),
            key: Some(key.to_owned()),
            ..Default::default()
        }
    }

    fn start_error(s: &TlsSettings) -> String {
        Tls::from_settings(s).unwrap_err().to_string()
    }

    #[test]
    fn no_files_no_tls() {
        assert!(
            Tls::from_settings(&TlsSettings::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_files_are_start_up_errors_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let (_, other_key) = pair(dir.path(), "b");
        let missing = dir.path().join("missing.pem");
        let err = start_error(&settings(&missing, &key));
        assert!(
            err.contains("server.tls.cert") && err.contains("missing.pem"),
            "{err}"
        );
        let err = start_error(&settings(&cert, &missing));
        assert!(
            err.contains("server.tls.key") && err.contains("missing.pem"),
            "{err}"
        );
        // A key in the certificate's place, and the other way round.
        let err = start_error(&settings(&key, &key));
        assert!(
            err.contains("server.tls.cert") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = start_error(&settings(&cert, &cert));
        assert!(
            err.contains("server.tls.key") && err.contains("no PEM private key"),
            "{err}"
        );
        let err = start_error(&settings(&cert, &other_key));
        assert!(err.contains("does not fit"), "{err}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
        let err = start_error(&settings(&garbage, &key));
        assert!(err.contains("server.tls.cert"), "{err}");
        assert!(
            Tls::from_settings(&settings(&cert, &key))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_bad_reload_keeps_the_old_pair_and_a_change_is_seen_once() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let tls = Tls::from_settings(&settings(&cert, &key)).unwrap().unwrap();
        let before = tls.current().0;
        assert!(!tls.changed());
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(tls.changed());
        assert!(matches!(tls.reload(), Err(TlsError::NoCertificate { .. })));
        assert!(
            Arc::ptr_eq(&tls.current().0, &before),
            "the old config stays"
        );
        assert!(
            !tls.changed(),
            "a failed file is not retried until it changes"
        );
        let (new_cert, new_key) = pair(dir.path(), "b");
        std::fs::rename(&new_cert, &cert).unwrap();
        std::fs::rename(&new_key, &key).unwrap();
        assert!(tls.changed());
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&tls.current().0, &before), "a new config");
    }

    #[test]
    fn failures_are_sorted() {
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(HandshakeFailure::of(&eof), HandshakeFailure::Closed);
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered),
        );
        assert_eq!(HandshakeFailure::of(&refused), HandshakeFailure::Protocol);
    }
}
