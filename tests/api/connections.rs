//! No client can hold the listener without a token: silent, half-sent and
//! idle keep-alive connections are closed after `server.request_head_timeout`;
//! past `server.max_connections` a client gets a complete 503 with
//! `Retry-After`; and running out of file descriptors makes the accept loop
//! back off and log sparingly instead of spinning, while valid clients are
//! served again as soon as descriptors are free.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite;

use crate::helpers::*;

/// Reads until the server closes the connection; panics at `deadline`.
async fn closed_by_server(mut tcp: TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: still open after {WAIT:?}");
}

/// One raw HTTP/1.1 request on a new connection; the whole answer.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("send request");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read the answer");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn silent_half_sent_and_idle_keepalive_connections_are_closed() {
    let app = spawn_app_with(|s| {
        s.server.request_head_timeout = Duration::from_millis(300);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(("silent", TcpStream::connect(app.addr).await.unwrap()));
    }
    for _ in 0..10 {
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nuser-agent: slow")
            .await
            .unwrap();
        held.push(("half-sent headers", tcp));
    }
    for _ in 0..5 {
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "the keep-alive request was served"
        );
        held.push(("idle keep-alive", tcp));
    }
    // While they are held, a valid client is served.
    assert!(
        raw_get(app.addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    for (what, tcp) in held {
        closed_by_server(tcp, what).await;
    }
    // And a valid client is served as ever.
    assert!(
        raw_get(app.addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let (_s, welcome) = app.student("e1", "s1").await;
    assert_eq!(welcome["type"], "welcome");
}

#[tokio::test]
async fn past_the_connection_cap_clients_get_503_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.server.max_connections = 4;
        s.server.request_head_timeout = Duration::from_secs(30);
    })
    .await;
    // Two silent connections and two WebSockets (the count follows a
    // connection through its upgrade) fill the cap.
    let _silent = [
        TcpStream::connect(app.addr).await.unwrap(),
        TcpStream::connect(app.addr).await.unwrap(),
    ];
    let (s1, _) = app.student("e1", "s1").await;
    let (_s2, _) = app.student("e1", "s2").await;
    let answer = raw_get(app.addr, "/healthz").await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a complete answer");
    assert!(head.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(head.to_lowercase().contains("retry-after: 2"), "{head}");
    let body: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"]["code"], "too_many_connections");
    assert!(app.metric("examwatch_connections_refused_full_total") >= 1);
    // A WebSocket handshake past the cap is refused the same way.
    let token = app.token("s3", examwatch::auth::Role::Student, &["e1"]);
    match app.try_connect(&app.ws_url("e1"), Some(&token), &[]).await {
        Err(tungstenite::Error::Http(res)) => assert_eq!(res.status(), 503),
        Err(e) => panic!("refused with a 503, not {e}"),
        Ok(_) => panic!("no socket past the cap"),
    }
    // One student leaves: its place is given back, and clients are served.
    s1.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = raw_get(app.addr, "/healthz").await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a place never came back: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server under an open-files limit of 128 (soft and hard); `None`
/// (a notice; a failure under CI) without a working `prlimit`.
fn server_with_few_files(dir: &std::path::Path, env: &[(&str, &str)]) -> Option<ServerProcess> {
    let works = std::process::Command::new("prlimit")
        .args(["--nofile=128:128", "--", "true"])
        .status();
    if !works.as_ref().is_ok_and(|s| s.success()) {
        missing(
            Prerequisite::Prlimit,
            &format!("prlimit --nofile=128:128 does not run: {works:?}"),
        );
        return None;
    }
    let plain = examwatch_command(dir);
    let mut cmd = std::process::Command::new("prlimit");
    cmd.args(["--nofile=128:128", "--"])
        .arg(plain.get_program())
        .current_dir(dir);
    for (k, v) in plain.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("EXAMWATCH__AUTH__JWT_SECRET", SECRET);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Some(ServerProcess::spawn(cmd))
}

async fn metrics_of(server: &ServerProcess) -> String {
    reqwest::get(format!("http://{}/metrics", server.admin_addr))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text")
}

#[tokio::test]
async fn the_default_cap_stays_below_the_open_files_limit() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = server_with_few_files(dir.path(), &[]) else {
        return;
    };
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..150 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("every connection gets an answer")
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.starts_with("HTTP/1.1 503") {
            refused += 1;
        } else {
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            held.push(tcp); // keep-alive: holds its place
        }
    }
    assert!(refused > 0, "the cap was reached");
    let text = metrics_of(&server).await;
    assert_eq!(
        metric_in(&text, "examwatch_accept_errors_total"),
        Some(0),
        "{text}"
    );
}

#[tokio::test]
async fn out_of_file_descriptors_the_listener_backs_off_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // A cap above what the limit allows: accepts will fail with EMFILE.
    let Some(server) = server_with_few_files(
        dir.path(),
        &[("EXAMWATCH__SERVER__MAX_CONNECTIONS", "1000")],
    ) else {
        return;
    };
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Hold them for a while: a spinning loop would log thousands of lines.
    let started = std::time::Instant::now();
    let mut accept_errors = Vec::new();
    while started.elapsed() < Duration::from_secs(2) {
        while let Ok(line) = server._logs.try_recv() {
            if line.contains("cannot accept connections") {
                accept_errors.push(line);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!accept_errors.is_empty(), "the descriptors ran out");
    assert!(
        accept_errors.len() <= 4,
        "at most one line a second: {accept_errors:#?}"
    );
    drop(held);
    // With descriptors free again, valid clients are served.
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let served = tokio::time::timeout(Duration::from_secs(1), raw_get(addr, "/healthz")).await;
        if served.is_ok_and(|a| a.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never served again");
    }
    let text = metrics_of(&server).await;
    assert!(
        metric_in(&text, "examwatch_accept_errors_total").is_some_and(|n| n > 0),
        "{text}"
    );
}

#[tokio::test]
async fn a_trickled_body_cannot_hold_a_connection() {
    let app = spawn_app_with(|s| {
        s.server.request_timeout = Duration::from_millis(300);
    })
    .await;
    // POST /v1/tickets reads its body before it can look at a token.
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(
        b"POST /v1/tickets HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("the server ends the request")
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").expect("a complete answer");
    assert!(head.starts_with("HTTP/1.1 408"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"]["code"], "request_timeout");
}
