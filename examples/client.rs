//! A tiny interactive client for trying examwatch by hand.
//!
//! ```text
//! EXAMWATCH_TOKEN="$TOKEN" cargo run --example client -- ws://127.0.0.1:8080/v1/exams/e1/ws
//! ```
//!
//! The token comes from `EXAMWATCH_TOKEN`, or else from the first line of
//! standard input, never from the command line (where `ps`, shell history
//! and cargo's `Running …` line would show it). Every message from the
//! server is printed as one JSON line on stdout. Each line you type is sent
//! as a text frame, e.g. `{"type":"progress","question":1,"answered":1,"ref":1}`.
//! When the server closes the socket the client says why (the close code
//! and what it means) and exits at once; ctrl-d closes it from this side.

use std::process::ExitCode;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run());
    // Not `drop(runtime)`: it would wait for the blocking read of stdin,
    // i.e. for the user to press Enter after the server has gone.
    runtime.shutdown_background();
    code
}

async fn run() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next() else {
        eprintln!(
            "usage: EXAMWATCH_TOKEN=<jwt> client <ws-url>   (or the token as the first line of stdin)"
        );
        return ExitCode::from(2);
    };
    if args.next().is_some() {
        eprintln!(
            "error: pass the token in EXAMWATCH_TOKEN or as the first line of stdin, not on the command line"
        );
        return ExitCode::from(2);
    }
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let token = match std::env::var("EXAMWATCH_TOKEN") {
        Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => match stdin.next_line().await {
            Ok(Some(line)) if !line.trim().is_empty() => line.trim().to_owned(),
            _ => {
                eprintln!(
                    "error: no token: set EXAMWATCH_TOKEN or write it as the first line of stdin"
                );
                return ExitCode::from(2);
            }
        },
    };
    match session(&url, &token, stdin).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn session(
    url: &str,
    token: &str,
    mut stdin: tokio::io::Lines<BufReader<tokio::io::Stdin>>,
) -> anyhow::Result<()> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("examwatch.v1"),
    );
    let (ws, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            anyhow::bail!("refused: HTTP {} {body}", resp.status());
        }
        Err(e) => return Err(e.into()),
    };
    eprintln!("connected; type JSON messages, one per line (ctrl-d to quit)");
    let (mut write, mut read) = ws.split();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            msg = read.next() => match msg {
                Some(Ok(Message::Text(t))) => println!("{t}"),
                Some(Ok(Message::Close(frame))) => {
                    match frame {
                        Some(f) => {
                            let code = u16::from(f.code);
                            let meaning = examwatch::room::close::meaning(code);
                            eprintln!("closed by the server: {code} {:?} ({meaning})", f.reason.as_str());
                        }
                        None => eprintln!("closed by the server (no code)"),
                    }
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => anyhow::bail!("connection lost: {e}"),
                None => return Ok(()),
            },
            line = stdin.next_line(), if stdin_open => match line? {
                Some(line) if !line.trim().is_empty() => write.send(Message::text(line)).await?,
                Some(_) => {}
                None => {
                    // End of input: say goodbye, then wait for the server's close.
                    stdin_open = false;
                    write.send(Message::Close(None)).await?;
                }
            },
        }
    }
}
