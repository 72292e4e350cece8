//! The Rust peer: the exam-room server a Rust team would write with
//! socketioxide instead of examwatch, the twin of `../socketio/server.js`
//! (same port variable, same `/healthz`, same events and rooms), so the
//! unchanged load generator drives it with `--framing socketio`.
//!
//! One process alone uses socketioxide's in-memory adapter; with
//! `REDIS_URL` set, several processes share rooms through
//! socketioxide-redis (Redis pub/sub, RESP3). It speaks the subset the load
//! generator uses:
//!   websocket-only Engine.IO at `/socket.io/?EIO=4&transport=websocket
//!   &exam=EXAM&access_token=JWT` (role/sub read, not verified: this is a
//!   performance peer, not a security one);
//!   student -> `welcome`; student `progress` -> `student` event to the
//!   teachers (room `t:EXAM`, across instances through the adapter);
//!   teacher -> `snapshot` of this instance's students on join.
//!
//! Written the way socketioxide's own examples are: handlers generic over
//! the adapter, async message handlers, state in one process-wide map (the
//! Node peers keep theirs in a module-level `Map`).

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
    time::SystemTime,
};

use axum::{Json, Router, http::StatusCode, routing::get};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use socketioxide::{
    SocketIo, TransportType,
    adapter::Adapter,
    extract::{Data, SocketRef},
};
use socketioxide_redis::{RedisAdapter, RedisAdapterCtr, drivers::redis::redis_client as redis};

/// An exam as this instance knows it (local, like the Node peer's).
#[derive(Default)]
struct Room {
    /// Per exam and local to this instance (as in the Socket.IO peer).
    seq: u64,
    students: HashMap<String, StudentState>,
}

/// A std mutex: held to update a state and copy it out, never across an
/// await (the broadcast is awaited once the lock is released).
static ROOMS: LazyLock<Mutex<HashMap<String, Room>>> = LazyLock::new(Default::default);

#[derive(Clone, Serialize)]
struct StudentState {
    student_id: String,
    name: String,
    status: &'static str,
    current_question: Option<String>,
    answered: serde_json::Value,
    last_activity: String,
    connected: bool,
    focus_lost_count: u32,
    connections: u32,
}

#[derive(Serialize)]
struct StudentEvent {
    r#type: &'static str,
    seq: u64,
    student: StudentState,
    cause: &'static str,
}

#[derive(Serialize)]
struct Welcome<'a> {
    r#type: &'static str,
    session_id: String,
    server_time: String,
    exam_id: &'a str,
    student: &'a StudentState,
}

#[derive(Serialize)]
struct Snapshot<'a> {
    r#type: &'static str,
    seq: u64,
    exam_id: &'a str,
    students: Vec<&'a StudentState>,
}

#[derive(Deserialize)]
struct Progress {
    r#type: String,
    question: Option<String>,
    #[serde(default)]
    answered: serde_json::Value,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
}

#[derive(Deserialize)]
struct Handshake {
    exam: Option<String>,
    access_token: Option<String>,
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The token's payload, unverified; `None` if it does not decode.
fn claims(token: &str) -> Option<Claims> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<String, Room>> {
    // A poisoned map only means a handler panicked mid-update: keep serving.
    ROOMS.lock().unwrap_or_else(|e| e.into_inner())
}

async fn on_connect<A: Adapter>(s: SocketRef<A>) {
    let query = s.req_parts().uri.query().unwrap_or_default();
    let handshake: Option<Handshake> = serde_urlencoded::from_str(query).ok();
    let (exam, claims) = match handshake {
        Some(Handshake {
            exam: Some(exam),
            access_token: Some(token),
        }) if !exam.is_empty() => match claims(&token) {
            Some(c) => (exam, c),
            None => return drop(s.disconnect()),
        },
        _ => return drop(s.disconnect()),
    };
    let teachers = format!("t:{exam}");
    if claims.role == "teacher" || claims.role == "admin" {
        s.join(teachers);
        let rooms = lock();
        let room = rooms.get(&exam);
        let students: Vec<&StudentState> = room
            .map(|r| r.students.values().collect())
            .unwrap_or_default();
        let snapshot = Snapshot {
            r#type: "snapshot",
            seq: room.map_or(0, |r| r.seq),
            exam_id: &exam,
            students,
        };
        let _ = s.emit("snapshot", &snapshot);
        return;
    }
    let sid = claims.sub;
    let state = StudentState {
        student_id: sid.clone(),
        name: claims.name,
        status: "active",
        current_question: None,
        answered: 0.into(),
        last_activity: now(),
        connected: true,
        focus_lost_count: 0,
        connections: 1,
    };
    let event = {
        let mut rooms = lock();
        let room = rooms.entry(exam.clone()).or_default();
        room.seq += 1;
        room.students.insert(sid.clone(), state.clone());
        StudentEvent {
            r#type: "student",
            seq: room.seq,
            student: state.clone(),
            cause: "connected",
        }
    };
    // Handlers first: a client may send `progress` the moment it has its
    // `welcome`, and a message with no handler yet is dropped.
    let (e, id, to) = (exam.clone(), sid.clone(), teachers.clone());
    s.on(
        "progress",
        async move |s: SocketRef<A>, Data(msg): Data<Progress>| {
            if msg.r#type != "progress" {
                return;
            }
            let event = {
                let mut rooms = lock();
                let Some(room) = rooms.get_mut(&e) else {
                    return;
                };
                room.seq += 1;
                let seq = room.seq;
                let Some(state) = room.students.get_mut(&id) else {
                    return;
                };
                state.current_question = msg.question;
                state.answered = msg.answered;
                state.last_activity = now();
                StudentEvent {
                    r#type: "student",
                    seq,
                    student: state.clone(),
                    cause: "progress",
                }
            };
            let _ = s.to(to.clone()).emit("student", &event).await;
        },
    );
    let (e, id) = (exam.clone(), sid.clone());
    s.on_disconnect(async move || {
        if let Some(st) = lock().get_mut(&e).and_then(|r| r.students.get_mut(&id)) {
            st.connected = false;
        }
    });
    let welcome = Welcome {
        r#type: "welcome",
        session_id: s.id.to_string(),
        server_time: now(),
        exam_id: &exam,
        student: &state,
    };
    let _ = s.emit("welcome", &welcome);
    let _ = s.to(teachers).emit("student", &event).await;
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn not_found() -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": "not found"})),
    )
}

async fn serve<A: Adapter>(
    layer: socketioxide::layer::SocketIoLayer<A>,
    port: u16,
    adapter: &str,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("socketioxide peer listening on {port} ({adapter})");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p.parse().map_err(|e| format!("PORT={p}: {e}"))?,
        Err(_) => 9500,
    };
    let builder = SocketIo::builder().transports([TransportType::Websocket]);
    match std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
        None => {
            let (layer, io) = builder.build_layer();
            io.ns("/", on_connect);
            serve(layer, port, "in-memory adapter").await?;
        }
        Some(url) => {
            // The adapter's redis driver needs RESP3 (push messages).
            let url = if url.contains("protocol=") {
                url
            } else if url.contains('?') {
                format!("{url}&protocol=resp3")
            } else {
                format!("{url}?protocol=resp3")
            };
            let client = redis::Client::open(url)?;
            let adapter = RedisAdapterCtr::new_with_redis(&client).await?;
            let (layer, io) = builder
                .with_adapter::<RedisAdapter<_>>(adapter)
                .build_layer();
            io.ns("/", on_connect).await?;
            serve(layer, port, "redis adapter").await?;
        }
    }
    Ok(())
}
