//! Opening the plan's exams before anyone connects: a student may only
//! join an exam a teacher created and opened, so the load generator
//! creates each one `in_progress` (or moves an existing one there) over
//! the REST API, as a teacher's tool would.
//!
//! Plain HTTP/1.1 over a TcpStream: one request per call, read to the end,
//! only the status line looked at (the load generator has no HTTP client).

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use examwatch::auth::{Keys, Role};

/// Answers within this, or the run stops with an error.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The status code of one request with a JSON body.
async fn request(server: SocketAddr, path: &str, token: &str, body: &str) -> anyhow::Result<u16> {
    let call = async {
        let mut stream = tokio::net::TcpStream::connect(server).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {server}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        let text = String::from_utf8_lossy(&answer);
        text.split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .context("no HTTP status line in the answer")
    };
    tokio::time::timeout(TIMEOUT, call)
        .await
        .context("the server did not answer in time")?
}

/// Creates `exam` in progress on `server`, or moves it there.
pub async fn open_exam(server: SocketAddr, keys: &Keys, exam: &str) -> anyhow::Result<()> {
    let token = keys.mint(
        "loadgen",
        "load generator",
        Role::Teacher,
        vec![exam.to_owned()],
        Duration::from_secs(600),
    )?;
    let body = serde_json::json!({"id": exam, "title": exam, "phase": "in_progress"}).to_string();
    match request(server, "/v1/exams", &token, &body).await? {
        201 => return Ok(()),
        409 => {}
        other => anyhow::bail!("creating exam {exam} answered HTTP {other}"),
    }
    // It exists: through the phases up to in_progress (409: already past).
    for phase in ["scheduled", "in_progress"] {
        let body = serde_json::json!({ "phase": phase }).to_string();
        let path = format!("/v1/exams/{exam}/phase");
        match request(server, &path, &token, &body).await? {
            200 | 409 => {}
            other => anyhow::bail!("opening exam {exam} answered HTTP {other}"),
        }
    }
    Ok(())
}
