//! A Server-Sent Events client for tests: reads the `text/event-stream`
//! body chunk by chunk (reqwest, no extra feature) and splits it into
//! blocks at blank lines, keeping the exact lines so tests can assert them.

use reqwest::{StatusCode, header::HeaderMap};
use serde_json::Value;
use tokio::time::Instant;

use super::{Seen, TestApp, WAIT, deadline};

/// One open stream.
pub struct SseClient {
    pub headers: HeaderMap,
    resp: reqwest::Response,
    /// Received text not yet split into blocks.
    pending: String,
    seen: Seen,
}

/// One event, its lines exactly as sent.
#[derive(Debug)]
pub struct SseEvent {
    /// `id: …` (if any), `event: …`, `data: …`, in that order.
    pub lines: Vec<String>,
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

impl SseEvent {
    /// Checks the event's shape: an optional `id: <seq>`, `event: <type>`
    /// and one `data:` line holding JSON whose `type` is the event's name
    /// and whose `seq` is its id.
    fn parse(lines: Vec<String>) -> SseEvent {
        let mut it = lines.iter().map(String::as_str).peekable();
        let id = it.next_if(|l| l.starts_with("id: ")).map(|l| {
            l["id: ".len()..]
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("id is a seq ({e}): {lines:?}"))
        });
        let event = it
            .next()
            .and_then(|l| l.strip_prefix("event: "))
            .unwrap_or_else(|| panic!("an `event:` line: {lines:?}"))
            .to_owned();
        let data = it
            .next()
            .and_then(|l| l.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("a `data:` line: {lines:?}"));
        let data: Value =
            serde_json::from_str(data).unwrap_or_else(|e| panic!("data is JSON ({e}): {lines:?}"));
        assert!(it.next().is_none(), "nothing after `data:`: {lines:?}");
        assert_eq!(data["type"], event.as_str(), "event = type: {lines:?}");
        assert_eq!(data["seq"].as_u64(), id, "id = seq: {lines:?}");
        SseEvent {
            lines,
            id,
            event,
            data,
        }
    }
}

impl TestApp {
    pub fn events_url(&self, exam: &str) -> String {
        self.http(&format!("/v1/exams/{exam}/events"))
    }

    /// `GET url` with an optional bearer token and extra headers.
    pub async fn sse_get(
        &self,
        url: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        sse_get_at(url, bearer, headers).await
    }

    /// The exam's stream, opened with a bearer token; must be a 200.
    pub async fn sse(&self, exam: &str, token: &str) -> SseClient {
        self.open_exam(exam).await; // before the stream starts its room
        SseClient::open(self.sse_get(&self.events_url(exam), Some(token), &[]).await).await
    }
}

/// `GET url` on any server.
pub async fn sse_get_at(
    url: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    tokio::time::timeout(WAIT, req.send())
        .await
        .expect("the stream's head arrived in time")
        .expect("request sent")
}

impl SseClient {
    /// Wraps an answer that must be a 200 event stream.
    pub async fn open(resp: reqwest::Response) -> SseClient {
        let status = resp.status();
        if status != StatusCode::OK {
            let body = resp.text().await.unwrap_or_default();
            panic!("the stream was refused: {status} {body}");
        }
        SseClient {
            headers: resp.headers().clone(),
            resp,
            pending: String::new(),
            seen: Seen::default(),
        }
    }

    /// The next block (its lines, comments included), or `None` when the
    /// body ended cleanly. Panics at `deadline` or on a broken body.
    pub async fn next_block_within(&mut self, deadline: Instant) -> Option<Vec<String>> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                self.seen.push(block.clone());
                return Some(block.trim_end().lines().map(String::from).collect());
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .unwrap_or_else(|_| panic!("no complete block within {WAIT:?}; seen {}", self.seen))
                .unwrap_or_else(|e| panic!("the stream broke ({e}); seen {}", self.seen));
            match chunk {
                Some(bytes) => self
                    .pending
                    .push_str(std::str::from_utf8(&bytes).expect("the stream is UTF-8")),
                None => {
                    assert!(
                        self.pending.is_empty(),
                        "the stream ended inside a block: {:?}",
                        self.pending
                    );
                    return None;
                }
            }
        }
    }

    pub async fn next_block(&mut self) -> Option<Vec<String>> {
        self.next_block_within(deadline()).await
    }

    /// The next block that is not a heartbeat comment, by `deadline`;
    /// panics if the stream ends.
    async fn next_data_block(&mut self, deadline: Instant) -> Vec<String> {
        loop {
            let block = self
                .next_block_within(deadline)
                .await
                .unwrap_or_else(|| panic!("the stream ended; seen {}", self.seen));
            if block != [": ping"] {
                return block;
            }
        }
    }

    /// The next event, skipping heartbeat comments; panics if the stream ends.
    pub async fn next_event(&mut self) -> SseEvent {
        SseEvent::parse(self.next_data_block(deadline()).await)
    }

    /// The next event named `event`, skipping others.
    pub async fn next_event_named(&mut self, event: &str) -> SseEvent {
        let deadline = deadline();
        loop {
            let ev = SseEvent::parse(self.next_data_block(deadline).await);
            if ev.event == event {
                return ev;
            }
        }
    }

    /// Reads (skipping events and comments) until the body ends cleanly.
    pub async fn expect_end(&mut self) {
        let deadline = deadline();
        while self.next_block_within(deadline).await.is_some() {}
    }
}

/// One event of a student's stream (`GET .../me/events`): its `id:` is an
/// action frame's `id`, not a seq.
#[derive(Debug)]
pub struct StudentEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

impl StudentEvent {
    /// Checks the shape: an optional `id: <action id>` that is the frame's
    /// own `id`, `event: <type>` that is its `type`, one `data:` line.
    fn parse(lines: Vec<String>) -> StudentEvent {
        let mut it = lines.iter().map(String::as_str).peekable();
        let id = it
            .next_if(|l| l.starts_with("id: "))
            .map(|l| l["id: ".len()..].to_owned());
        let event = it
            .next()
            .and_then(|l| l.strip_prefix("event: "))
            .unwrap_or_else(|| panic!("an `event:` line: {lines:?}"))
            .to_owned();
        let data = it
            .next()
            .and_then(|l| l.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("a `data:` line: {lines:?}"));
        let data: Value =
            serde_json::from_str(data).unwrap_or_else(|e| panic!("data is JSON ({e}): {lines:?}"));
        assert!(it.next().is_none(), "nothing after `data:`: {lines:?}");
        assert_eq!(data["type"], event.as_str(), "event = type: {lines:?}");
        assert_eq!(
            data["id"].as_str(),
            id.as_deref(),
            "id = the frame's id: {lines:?}"
        );
        StudentEvent { id, event, data }
    }
}

impl TestApp {
    pub fn me_events_url(&self, exam: &str) -> String {
        self.http(&format!("/v1/exams/{exam}/me/events"))
    }

    /// Student `sub`'s own stream of `exam` (which must be open); a 200.
    pub async fn student_sse(&self, exam: &str, sub: &str) -> SseClient {
        let token = self.token(sub, super::Role::Student, &[exam]);
        SseClient::open(
            self.sse_get(&self.me_events_url(exam), Some(&token), &[])
                .await,
        )
        .await
    }
}

impl SseClient {
    /// The next event of a student's stream, skipping heartbeats; panics
    /// if the stream ends.
    pub async fn next_student_event(&mut self) -> StudentEvent {
        StudentEvent::parse(self.next_data_block(deadline()).await)
    }

    /// The next student event named `event`, skipping others.
    pub async fn next_student_event_named(&mut self, event: &str) -> StudentEvent {
        let deadline = deadline();
        loop {
            let ev = StudentEvent::parse(self.next_data_block(deadline).await);
            if ev.event == event {
                return ev;
            }
        }
    }
}
