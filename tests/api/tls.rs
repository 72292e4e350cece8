//! wss without a proxy (issue 16 item 1): with `server.tls.cert` and
//! `server.tls.key` the public listener speaks only TLS. Each test makes a
//! CA and a server certificate for 127.0.0.1 and localhost with rcgen, and
//! talks to the server with a rustls client that verifies it against that
//! CA: real protocol messages over wss, REST over HTTPS, refusals of
//! clients that do not trust it or speak something else, the accept loop's
//! deadline and cap, and certificate reloads that drop nothing.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use examwatch::{Settings, auth::Role};
use futures_util::{SinkExt, StreamExt};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

use crate::helpers::*;

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("no names");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("examwatch test CA {name}"),
        );
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost: (cert PEM, key PEM, cert DER).
    fn server(&self, serial: u64) -> (String, String, CertificateDer<'static>) {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("valid names");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "examwatch test server");
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    /// A client that trusts this CA only, offering `versions`.
    fn client_with(&self, versions: &[&'static rustls::SupportedProtocolVersion]) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("CA certificate");
        let mut config = ClientConfig::builder_with_provider(examwatch::tls::provider())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    fn client(&self) -> TlsConnector {
        self.client_with(rustls::DEFAULT_VERSIONS)
    }
}

/// The server's two files, in a folder of the test's.
struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        Self {
            _dir: dir,
            cert,
            key,
        }
    }

    /// Replaces both files, each in one step (written aside, renamed in),
    /// as a certificate tool does.
    fn write(&self, cert_pem: &str, key_pem: &str) {
        for (path, text) in [(&self.cert, cert_pem), (&self.key, key_pem)] {
            let aside = path.with_extension("new");
            std::fs::write(&aside, text).expect("write aside");
            std::fs::rename(&aside, path).expect("rename in");
        }
    }

    fn configure(&self, s: &mut Settings) {
        s.server.tls.cert = Some(self.cert.clone());
        s.server.tls.key = Some(self.key.clone());
    }
}

/// A server with TLS, its CA's files written, and the CA's server DER.
async fn tls_app(
    ca: &Ca,
    configure: impl FnOnce(&mut Settings),
) -> (TestApp, Files, CertificateDer<'static>) {
    let files = Files::new();
    let (cert, key, der) = ca.server(1);
    files.write(&cert, &key);
    let app = spawn_app_with(|s| {
        files.configure(s);
        configure(s);
    })
    .await;
    (app, files, der)
}

/// A TLS connection to `addr` as `name` (an IP or `localhost`).
async fn tls_connect(
    addr: SocketAddr,
    client: &TlsConnector,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let server = ServerName::try_from(name.to_owned()).expect("server name");
    tokio::time::timeout(WAIT, async {
        let tcp = TcpStream::connect(addr).await?;
        client.connect(server, tcp).await
    })
    .await
    .expect("TLS handshake timed out")
}

/// The certificate a new connection to `addr` is shown.
async fn served_certificate(addr: SocketAddr, client: &TlsConnector) -> CertificateDer<'static> {
    let stream = tls_connect(addr, client, "127.0.0.1")
        .await
        .expect("handshake");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate")[0]
        .clone()
}

/// One HTTP/1.1 request over HTTPS (`Connection: close`): status and body.
async fn https(
    addr: SocketAddr,
    client: &TlsConnector,
    request: (&str, &str),
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let (method, path) = request;
    let mut stream = tls_connect(addr, client, "localhost")
        .await
        .expect("handshake");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\n{auth}content-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Creates `exam` in progress over HTTPS.
async fn open_exam_tls(app: &TestApp, client: &TlsConnector, exam: &str) {
    let admin = app.token("test-admin", Role::Admin, &[]);
    let (status, body) = https(
        app.addr,
        client,
        ("POST", "/v1/exams"),
        Some(&admin),
        Some(json!({"id": exam, "title": "Algebra", "phase": "in_progress"})),
    )
    .await;
    assert_eq!(status, 201, "exam created over HTTPS: {body}");
}

/// A WebSocket over TLS.
struct Wss {
    ws: WebSocketStream<TlsStream<TcpStream>>,
}

impl Wss {
    async fn connect(addr: SocketAddr, client: &TlsConnector, exam: &str, token: &str) -> Self {
        let stream = tls_connect(addr, client, "127.0.0.1")
            .await
            .expect("handshake");
        let mut req = format!("wss://{addr}/v1/exams/{exam}/ws")
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, stream))
            .await
            .expect("upgrade in time")
            .expect("upgrade accepted");
        Self { ws }
    }

    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// The next message for which `wanted` holds (pings skipped).
    async fn next_where(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = deadline();
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
            match frame {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                    if wanted(&v) {
                        return v;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected {what}, got {other:?}"),
            }
        }
    }

    async fn next_of_type(&mut self, ty: &str) -> Value {
        self.next_where(ty, |v| v["type"] == ty).await
    }
}

/// Exam e1 opened, teacher t1 and student s1 on it over wss: both
/// sockets, the teacher's snapshot and the student's welcome.
async fn teacher_and_student(app: &TestApp, client: &TlsConnector) -> (Wss, Wss, Value, Value) {
    open_exam_tls(app, client, "e1").await;
    let teacher_token = app.token("t1", Role::Teacher, &["e1"]);
    let mut teacher = Wss::connect(app.addr, client, "e1", &teacher_token).await;
    let snapshot = teacher.next_of_type("snapshot").await;
    let student_token = app.token("s1", Role::Student, &["e1"]);
    let mut student = Wss::connect(app.addr, client, "e1", &student_token).await;
    let welcome = student.next_of_type("welcome").await;
    (teacher, student, snapshot, welcome)
}

/// A student's progress is acknowledged and the teacher sees it.
async fn progress_reaches_the_teacher(student: &mut Wss, teacher: &mut Wss, answered: u32) {
    student
        .send(json!({"type": "progress", "question": format!("q{answered}"), "answered": answered, "ref": answered}))
        .await;
    let ack = student
        .next_where("the ack", |v| v["ref"] == answered)
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    teacher
        .next_where("the student's progress", |v| {
            v["type"] == "student"
                && v["cause"] == "progress"
                && v["student"]["answered"] == answered
        })
        .await;
}

#[tokio::test]
async fn wss_carries_the_protocol_and_https_serves_rest() {
    let ca = Ca::new("one");
    let (app, _files, _) = tls_app(&ca, |_| {}).await;
    let client = ca.client();
    let (status, body) = https(app.addr, &client, ("GET", "/healthz"), None, None).await;
    assert_eq!(status, 200, "{body}");
    let (mut teacher, mut student, snapshot, welcome) = teacher_and_student(&app, &client).await;
    assert_eq!(snapshot["exam_id"], "e1");
    assert_eq!(welcome["exam_id"], "e1");
    teacher
        .next_where("s1 connected", |v| is_student_event(v, "s1", "connected"))
        .await;
    progress_reaches_the_teacher(&mut student, &mut teacher, 1).await;

    // What was negotiated: ALPN http/1.1, and TLS 1.3 when offered.
    let stream = tls_connect(app.addr, &client, "127.0.0.1").await.unwrap();
    let conn = stream.get_ref().1;
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // TLS 1.2 is served too.
    let tls12 = ca.client_with(&[&rustls::version::TLS12]);
    let stream = tls_connect(app.addr, &tls12, "127.0.0.1").await.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    // The operators' listener stays plain HTTP.
    let ready = reqwest::get(app.admin("/readyz"))
        .await
        .expect("plain admin");
    assert!(ready.status().is_success(), "{}", ready.status());
}

/// With shards, TLS connections are spread round robin (the path is inside
/// the TLS stream) and served on the shard threads: the protocol works the
/// same across them.
#[tokio::test]
async fn with_shards_wss_sockets_are_served_on_the_shard_threads() {
    let ca = Ca::new("one");
    let (app, _files, _) = tls_app(&ca, |s| {
        s.server.shards = examwatch::config::ShardCount::Count(2);
    })
    .await;
    let client = ca.client();
    let (mut teacher, mut student, _, _) = teacher_and_student(&app, &client).await;
    progress_reaches_the_teacher(&mut student, &mut teacher, 1).await;
    let on = |i: &str| app.metric_where("examwatch_shard_connections", &[("shard", i)]);
    eventually("the two sockets counted on the shards", || {
        on("0") + on("1") == 2
    })
    .await;
    assert_eq!(
        app.metric_where("examwatch_shard_rooms", &[]),
        1,
        "the room is on a shard"
    );
}

#[tokio::test]
async fn clients_that_do_not_trust_it_or_do_not_speak_tls_1_2_are_refused() {
    let ca = Ca::new("one");
    let (app, _files, _) = tls_app(&ca, |_| {}).await;
    let client = ca.client();
    let (mut teacher, mut student, _, _) = teacher_and_student(&app, &client).await;

    // A client trusting another CA rejects the server's certificate.
    let stranger = Ca::new("other").client();
    let err = tls_connect(app.addr, &stranger, "127.0.0.1")
        .await
        .expect_err("an untrusted certificate is refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // A TLS 1.1 ClientHello (no supported_versions extension) gets a
    // protocol_version alert, never a ServerHello.
    let answer = raw_exchange(app.addr, &tls11_client_hello()).await;
    assert!(!answer.is_empty(), "an alert, not a silent close");
    assert_eq!(answer[0], 0x15, "an alert record: {answer:02x?}");
    assert_eq!(answer.get(6), Some(&70), "protocol_version: {answer:02x?}");

    // Plain HTTP to the TLS port gets no HTTP answer, and is closed.
    let answer = raw_exchange(app.addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(!answer.starts_with(b"HTTP/"), "{answer:02x?}");

    // Each is counted by reason: the untrusting client's alert, TLS 1.1 and
    // plain HTTP are rustls refusals.
    let failed = "examwatch_tls_handshake_failures_total";
    eventually("three protocol failures counted", || {
        app.metric_where(failed, &[("reason", "protocol")]) == 3
    })
    .await;
    assert_eq!(app.metric_where(failed, &[("reason", "timeout")]), 0);

    // None of that disturbed the open connections.
    progress_reaches_the_teacher(&mut student, &mut teacher, 1).await;
}

/// Sends `bytes` on a new TCP connection and reads until the server closes.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(bytes).await.expect("send");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server closes the connection");
    answer
}

/// A ClientHello offering TLS 1.1 only, as an old client sends it.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // two CBC suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    // signature_algorithms (ecdsa_secp256r1_sha256, rsa_pkcs1_sha256), so
    // the version is what the server refuses.
    body.extend_from_slice(&[
        0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01,
    ]);
    let mut handshake = vec![0x01, 0x00, 0x00, body.len() as u8];
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x02, 0x00, handshake.len() as u8];
    record.extend(handshake);
    record
}

#[tokio::test]
async fn a_connection_that_never_completes_a_handshake_is_closed_at_the_head_deadline() {
    let ca = Ca::new("one");
    let head_timeout = Duration::from_millis(300);
    let (app, _files, _) = tls_app(&ca, |s| s.server.request_head_timeout = head_timeout).await;
    // Silent, and half a ClientHello: both closed once the deadline passes.
    let started = Instant::now();
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let mut half = TcpStream::connect(app.addr).await.unwrap();
    half.write_all(&tls11_client_hello()[..20]).await.unwrap();
    for conn in [&mut silent, &mut half] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(WAIT, conn.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "closed by the server within the wait");
        assert!(buf.is_empty(), "nothing sent before closing: {buf:02x?}");
    }
    assert!(
        started.elapsed() >= head_timeout,
        "not before the deadline: {:?}",
        started.elapsed()
    );
    let failed = "examwatch_tls_handshake_failures_total";
    eventually("both counted as timeouts", || {
        app.metric_where(failed, &[("reason", "timeout")]) == 2
    })
    .await;
    // The listener serves the next client as usual.
    let (status, _) = https(app.addr, &ca.client(), ("GET", "/healthz"), None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn over_the_connection_cap_a_tls_client_reads_the_503() {
    let ca = Ca::new("one");
    let (app, _files, _) = tls_app(&ca, |s| s.server.max_connections = 1).await;
    let client = ca.client();
    // The one place is held by an open TLS connection (counted through the
    // handshake, as a WebSocket is through its upgrade).
    let _held = tls_connect(app.addr, &client, "127.0.0.1").await.unwrap();
    let mut stream = tls_connect(app.addr, &client, "localhost")
        .await
        .expect("the handshake completes over the cap");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 2"), "{text}");
    assert!(text.contains("too_many_connections"), "{text}");
}

#[tokio::test]
async fn a_changed_certificate_is_served_to_new_connections_and_open_ones_keep_going() {
    let first = Ca::new("first");
    let (app, files, first_der) = tls_app(&first, |s| {
        s.server.tls.reload_interval = Duration::from_millis(50);
    })
    .await;
    let client = first.client();
    assert_eq!(served_certificate(app.addr, &client).await, first_der);
    let (mut teacher, mut student, _, _) = teacher_and_student(&app, &client).await;

    // A renewal from another CA, with another serial.
    let second = Ca::new("second");
    let (cert, key, second_der) = second.server(2);
    files.write(&cert, &key);
    let renewed = second.client();
    let deadline = deadline();
    loop {
        if let Ok(stream) = tls_connect(app.addr, &renewed, "127.0.0.1").await {
            let served = &stream
                .get_ref()
                .1
                .peer_certificates()
                .expect("a certificate")[0];
            assert_eq!(*served, second_der, "the renewed certificate");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tls_connect(app.addr, &client, "127.0.0.1").await.is_err(),
        "new handshakes no longer get the old certificate"
    );
    // The connections opened before the reload keep going.
    progress_reaches_the_teacher(&mut student, &mut teacher, 1).await;
    let (status, _) = https(app.addr, &renewed, ("GET", "/healthz"), None, None).await;
    assert_eq!(status, 200);
}

/// The real binary with TLS, on 127.0.0.1:0, and its logs.
struct TlsProcess {
    server: ServerProcess,
    addr: SocketAddr,
}

impl TlsProcess {
    fn start(dir: &Path, files: &Files) -> Self {
        let mut cmd = examwatch_command(dir);
        cmd.env("EXAMWATCH__AUTH__JWT_SECRET", SECRET)
            .env("EXAMWATCH__SERVER__TLS__CERT", &files.cert)
            .env("EXAMWATCH__SERVER__TLS__KEY", &files.key)
            // Only SIGHUP reloads here.
            .env("EXAMWATCH__SERVER__TLS__RELOAD_INTERVAL", "1h")
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("start examwatch");
        let logs = lines_of(child.stderr.take().expect("piped stderr"));
        let line = wait_for_line(&logs, "listening on https://");
        let addr: SocketAddr = line
            .split("listening on https://")
            .nth(1)
            .and_then(|rest| {
                rest.split(|c: char| c.is_whitespace() || c == '"')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("an address in {line}"));
        Self {
            server: ServerProcess {
                child,
                addr: addr.to_string(),
                admin_addr: String::new(),
                _logs: logs,
            },
            addr,
        }
    }

    fn hangup(&self) {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &self.server.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    fn wait_for_log(&self, needle: &str) -> String {
        wait_for_line(&self.server._logs, needle)
    }
}

/// The first line containing `needle`, within twice [`WAIT`].
fn wait_for_line(logs: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT * 2;
    let mut seen = Seen::default();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = logs
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no log line with {needle:?} ({e}); saw {seen}"));
        if line.contains(needle) {
            return line;
        }
        seen.push(line);
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::new("first");
    let files = Files::new();
    let (cert, key, first_der) = first.server(1);
    files.write(&cert, &key);
    let server = TlsProcess::start(dir.path(), &files);
    let client = first.client();
    let keys = examwatch::auth::Keys::from_settings(
        &examwatch::config::AuthSettings {
            jwt_secret: Some(examwatch::config::Secret::new(SECRET)),
            ..Default::default()
        },
        dir.path(),
    )
    .unwrap();
    let token = |sub: &str, role| {
        keys.mint(sub, sub, role, vec!["e1".into()], Duration::from_secs(600))
            .unwrap()
    };
    let admin = token("admin", Role::Admin);
    let (status, body) = https(
        server.addr,
        &client,
        ("POST", "/v1/exams"),
        Some(&admin),
        Some(json!({"id": "e1", "title": "Algebra", "phase": "in_progress"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let mut teacher = Wss::connect(server.addr, &client, "e1", &token("t1", Role::Teacher)).await;
    teacher.next_of_type("snapshot").await;
    let mut student = Wss::connect(server.addr, &client, "e1", &token("s1", Role::Student)).await;
    student.next_of_type("welcome").await;

    // A broken file: the error is logged, the old certificate stays.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
    server.hangup();
    let line = server.wait_for_log("cannot reload the TLS certificate");
    assert!(line.contains("server.tls.cert"), "{line}");
    assert_eq!(served_certificate(server.addr, &client).await, first_der);

    // A good renewal: served from the next handshake on.
    let second = Ca::new("second");
    let (cert, key, second_der) = second.server(2);
    files.write(&cert, &key);
    server.hangup();
    server.wait_for_log("TLS certificate reloaded");
    let renewed = second.client();
    assert_eq!(served_certificate(server.addr, &renewed).await, second_der);
    progress_reaches_the_teacher(&mut student, &mut teacher, 1).await;
}

#[test]
fn a_certificate_that_does_not_load_stops_the_start_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new();
    let ca = Ca::new("one");
    let (cert, _, _) = ca.server(1);
    let (_, other_key, _) = ca.server(2);
    let run = |cert: &Path, key: &Path| {
        examwatch_command(dir.path())
            .env("EXAMWATCH__AUTH__JWT_SECRET", SECRET)
            .env("EXAMWATCH__SERVER__TLS__CERT", cert)
            .env("EXAMWATCH__SERVER__TLS__KEY", key)
            .output()
            .expect("run examwatch")
    };
    // Missing.
    let out = run(&files.cert, &files.key);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.tls.cert") && err.contains("cert.pem"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // A key that is not the certificate's.
    files.write(&cert, &other_key);
    let out = run(&files.cert, &files.key);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not fit"), "{err}");
}

/// The readiness check (`/readyz`'s `websocket`) speaks TLS to a TLS
/// listener and trusts exactly the certificate served, so it stays ready
/// across a reload to a certificate of another CA (a plain probe, or one
/// pinned to the first certificate, would fail here).
#[tokio::test]
async fn the_readiness_check_opens_a_wss_socket_and_follows_a_reload() {
    let first = Ca::new("first");
    let (app, files, _) = tls_app(&first, |s| {
        s.server.tls.reload_interval = Duration::from_millis(50);
        s.server.ws_probe_interval = Duration::from_millis(100);
        s.server.ws_probe_timeout = Duration::from_millis(1000);
    })
    .await;
    let http = reqwest::Client::new();
    let readyz = async || -> (u16, Value) {
        let r = http.get(app.admin("/readyz")).send().await.expect("admin");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    };
    let until = deadline();
    loop {
        let (status, body) = readyz().await;
        if status == 200 && body["websocket"]["state"] == "ok" {
            break;
        }
        assert!(
            Instant::now() < until,
            "never ready over TLS: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let second = Ca::new("second");
    let (cert, key, der) = second.server(2);
    files.write(&cert, &key);
    let client = second.client();
    while tls_connect(app.addr, &client, "127.0.0.1").await.is_err() {
        assert!(
            Instant::now() < until,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served_certificate(app.addr, &client).await, der);
    let reloaded = Instant::now();
    loop {
        let (status, body) = readyz().await;
        let fresh = body["websocket"]["age_ms"]
            .as_u64()
            .is_some_and(|age| u128::from(age) < reloaded.elapsed().as_millis());
        if fresh {
            assert_eq!(status, 200, "a check after the reload: {body}");
            assert_eq!(body["websocket"]["state"], "ok", "{body}");
            break;
        }
        assert!(Instant::now() < until, "no check after the reload: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
