//! A server killed with SIGKILL while students stream answers loses nothing
//! it acknowledged: after a restart every acked answer and submission is
//! stored exactly once, and re-sending (what clients do) adds no duplicate.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use examwatch::auth::{Keys, Role};
use serde_json::{Value, json};

use crate::{helpers::*, on_both_databases};

on_both_databases!(acked_answers_and_submissions_survive_kill_9);

const STUDENTS: usize = 6;

fn keys(dir: &std::path::Path) -> Keys {
    let auth = examwatch::config::AuthSettings {
        jwt_secret: Some(examwatch::config::Secret::new(SECRET)),
        ..Default::default()
    };
    Keys::from_settings(&auth, dir).expect("keys")
}

fn token(keys: &Keys, sub: &str, role: Role) -> String {
    keys.mint(sub, sub, role, vec!["e1".into()], Duration::from_secs(600))
        .expect("token")
}

/// What one student saw acknowledged before the server died.
#[derive(Default)]
struct Acked {
    answers: HashMap<String, HashSet<String>>,
    submitted: HashSet<String>,
}

async fn acked_answers_and_submissions_survive_kill_9(db: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(db, dir.path()).await else {
        return;
    };
    let env = [
        ("EXAMWATCH__DATABASE__URL", url.as_str()),
        ("EXAMWATCH__AUTH__JWT_SECRET", SECRET),
        // Students stream as fast as acks come back: a rate limit must not
        // be what stops them (a refusal would fail the test, below).
        ("EXAMWATCH__LIMITS__MESSAGES_PER_SECOND", "1000000"),
    ];
    let mut server = ServerProcess::start(dir.path(), &env);
    let keys = keys(dir.path());
    let acked = Arc::new(Mutex::new(Acked::default()));
    let count = Arc::new(AtomicUsize::new(0));
    // A teacher watches live and remembers the newest seq it saw.
    let teacher_url = format!("ws://{}/v1/exams/e1/ws", server.addr);
    let mut watcher = connect_url(&teacher_url, &token(&keys, "t0", Role::Teacher)).await;
    watcher.next_of_type("snapshot").await;
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    let watching = tokio::spawn(async move {
        while let Next::Json(ev) = watcher.next().await {
            if let Some(seq) = ev["seq"].as_u64() {
                seen2.fetch_max(seq as usize, Ordering::Relaxed);
            }
        }
    });
    let mut tasks = Vec::new();
    for i in 0..STUDENTS {
        let student = format!("s{i}");
        let url = format!("ws://{}/v1/exams/e1/ws", server.addr);
        let mut c = connect_url(&url, &token(&keys, &student, Role::Student)).await;
        c.next_of_type("welcome").await;
        let (acked, count) = (acked.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            // Students 0 and 1 submit after 10 answers; the rest keep going.
            for k in 0.. {
                let id = format!("{student}-a{k}");
                let submit = i < 2 && k == 10;
                let (msg, r) = if submit {
                    (json!({"type": "submit", "ref": "submit"}), "submit".to_string())
                } else {
                    let msg = json!({"type": "answer", "id": id, "question": format!("q{}", k % 7), "value": {"k": k}, "ref": id});
                    (msg, id.clone())
                };
                if c.ws_send(msg).await.is_err() {
                    return;
                }
                // Only the kill may end a student: any reply but the exact
                // ack (an `error`, whatever its code) fails the test.
                let reply = match c.next().await {
                    Next::Json(reply) => reply,
                    Next::Closed(..) => return,
                };
                assert_eq!(reply, ack(r), "{student}: the reply to message {k}");
                let mut a = acked.lock().unwrap();
                if submit {
                    a.submitted.insert(student.clone());
                    return;
                }
                a.answers.entry(student.clone()).or_default().insert(id);
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Kill the server mid-stream, once plenty has been acknowledged.
    eventually("answers are being acked", || {
        count.load(Ordering::Relaxed) >= 120
    })
    .await;
    server.kill9();
    for t in tasks {
        tokio::time::timeout(WAIT * 2, t)
            .await
            .expect("student task ended")
            .unwrap();
    }
    tokio::time::timeout(WAIT * 2, watching)
        .await
        .expect("watcher ended")
        .unwrap();
    let seen = seen.load(Ordering::Relaxed) as u64;
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert_eq!(
        acked.submitted.len(),
        2,
        "both submissions were acked before the kill"
    );

    let server = ServerProcess::start(dir.path(), &env);
    let teacher = token(&keys, "t1", Role::Teacher);
    // Events the teacher saw may not have reached the log before the kill:
    // their seqs are never re-issued, and resuming from them is answered
    // with a snapshot, not a replay that would skip what was lost.
    let resume = format!("ws://{}/v1/exams/e1/ws?last_seq={seen}", server.addr);
    let mut back = connect_url(&resume, &teacher).await;
    let first = back.next_json().await;
    assert_eq!(first["type"], "snapshot", "{first}");
    assert!(
        first["seq"].as_u64().unwrap() > seen,
        "no seq is reused: {} <= {seen}",
        first["seq"]
    );
    let stored = |student: String| {
        let (addr, teacher) = (server.addr.clone(), teacher.clone());
        async move {
            let body: Value = reqwest::Client::new()
                .get(format!(
                    "http://{addr}/v1/exams/e1/students/{student}/answers"
                ))
                .bearer_auth(teacher)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["answers"].as_array().unwrap().clone()
        }
    };
    let ids_of = |rows: &[Value]| {
        rows.iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    for (student, ids) in &acked.answers {
        let rows = ids_of(&stored(student.clone()).await);
        let unique: HashSet<_> = rows.iter().cloned().collect();
        assert_eq!(unique.len(), rows.len(), "{student}: no duplicate rows");
        let missing: Vec<_> = ids.difference(&unique).collect();
        assert!(missing.is_empty(), "{student}: acked but lost: {missing:?}");
    }
    // Clients re-send everything not acked (here: everything, with another
    // question and value) after the restart: harmless, the first stays.
    for (student, ids) in &acked.answers {
        if acked.submitted.contains(student) {
            continue;
        }
        let url = format!("ws://{}/v1/exams/e1/ws", server.addr);
        let mut c = connect_url(&url, &token(&keys, student, Role::Student)).await;
        c.next_of_type("welcome").await;
        for id in ids {
            c.send_json(
                json!({"type": "answer", "id": id, "question": "q0", "value": 0, "ref": id}),
            )
            .await;
            c.expect_ack(id.as_str()).await;
        }
        let answers = stored(student.clone()).await;
        let rows = ids_of(&answers);
        let unique: HashSet<_> = rows.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            rows.len(),
            "{student}: re-sending added no row"
        );
        for id in ids {
            let k: u64 = id.rsplit_once("-a").unwrap().1.parse().unwrap();
            let row = answers.iter().find(|a| a["id"] == id.as_str()).unwrap();
            assert_eq!(
                (&row["question"], &row["value"]),
                (&json!(format!("q{}", k % 7)), &json!({"k": k})),
                "{student}: the re-sent {id} did not overwrite the first"
            );
        }
    }
    let csv = reqwest::Client::new()
        .get(format!("http://{}/v1/exams/e1/report.csv", server.addr))
        .bearer_auth(&teacher)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for student in &acked.submitted {
        let row = csv
            .lines()
            .find(|l| l.starts_with(&format!("{student},")))
            .unwrap();
        assert!(row.contains(",submitted,"), "{row}");
    }
    // A later, clean restart reloads a history with the crash's hole in it:
    // a resume from inside or before the hole is a snapshot, not a replay
    // that skips the lost events (and certainly not a crashed room).
    drop(back);
    let mut server = server;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status();
    assert!(server.child.wait().unwrap().success());
    let server = ServerProcess::start(dir.path(), &env);
    for last_seq in [seen.saturating_sub(3), 1] {
        let resume = format!("ws://{}/v1/exams/e1/ws?last_seq={last_seq}", server.addr);
        let mut t = connect_url(&resume, &teacher).await;
        let first = t.next_json().await;
        assert_eq!(first["type"], "snapshot", "last_seq={last_seq}: {first}");
    }
}
