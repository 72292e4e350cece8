//! The harness's own promises: a wait ends at its deadline even while the
//! server keeps the socket busy (pings reset no timer), and says what it saw.

use std::time::Duration;

use super::*;

/// A server that pings every 50 ms, and a student on it.
async fn pinged_student() -> (TestApp, Client) {
    let app = spawn_app_with(|s| s.ws.ping_interval = Duration::from_millis(50)).await;
    let (s, _) = app.student("e1", "s1").await;
    (app, s)
}

#[tokio::test]
#[should_panic(expected = "timed out waiting for a `never_sent`; saw")]
async fn next_of_type_fails_at_its_deadline_while_the_server_keeps_pinging() {
    let (_app, mut s) = pinged_student().await;
    // Reading answers each ping, so the server never closes: only the
    // overall deadline (WAIT) can end this wait.
    s.next_of_type("never_sent").await;
}

#[tokio::test]
#[should_panic(expected = "timed out waiting for the close; saw")]
async fn expect_close_fails_at_its_deadline_while_the_server_keeps_pinging() {
    let (_app, mut s) = pinged_student().await;
    s.expect_close_within(Instant::now() + Duration::from_millis(400))
        .await;
}

#[tokio::test]
async fn a_timed_out_wait_names_the_frames_it_skipped() {
    let (app, mut s) = pinged_student().await;
    let (mut t, _) = app.teacher("e1", "t1").await;
    s.send_json(progress(1, 1)).await;
    let waited = tokio::spawn(async move {
        t.next_of_type_within("never_sent", Instant::now() + Duration::from_millis(400))
            .await
    })
    .await;
    let panic = waited.expect_err("the wait failed").into_panic();
    let message = panic
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(
        message.contains(r#""cause":"progress""#) && message.contains("(ping)"),
        "the skipped student event and pings are named: {message}"
    );
}
