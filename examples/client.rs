//! A tiny interactive client for trying examwatch by hand.
//!
//! ```text
//! cargo run --example client -- ws://127.0.0.1:8080/v1/exams/e1/ws "$TOKEN"
//! ```
//!
//! Every message from the server is printed as one JSON line. Each line you
//! type is sent as a text frame, e.g. `{"type":"progress","question":1,"answered":1,"ref":1}`.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(token)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: client <ws-url> <token>");
    };
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
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            msg = read.next() => match msg {
                Some(Ok(Message::Text(t))) => println!("{t}"),
                Some(Ok(Message::Close(f))) => {
                    eprintln!("closed by server: {f:?}");
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    eprintln!("error: {e}");
                    break;
                }
                None => break,
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
    Ok(())
}
