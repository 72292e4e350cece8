//! The README's examples are what the code does (issue 13 item 8): one
//! question-id style throughout, every client message in it is accepted by
//! examwatch's own parser, and its Try-it session, replayed on a real
//! server, prints what the README says it prints (an elided `…` matches
//! anything, timestamps and session ids match any string).

use std::time::Duration;

use examwatch::{
    auth::Role,
    protocol::{self, ErrorCode},
};
use serde_json::Value;

use crate::helpers::*;

const README: &str = include_str!("../../README.md");

/// The README's fenced code blocks, each as its lines.
fn fenced_blocks() -> Vec<Vec<&'static str>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in README.lines() {
        if line.trim_start().starts_with("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some(Vec::new()),
            }
        } else if let Some(block) = current.as_mut() {
            block.push(line);
        }
    }
    assert!(
        current.is_none(),
        "every code fence in the README is closed"
    );
    blocks
}

/// Every JSON message in the README: the lines of code blocks and the
/// inline code spans (which never cross a line in it) that start with
/// `{"type":`.
fn messages() -> Vec<&'static str> {
    let mut found = Vec::new();
    let mut in_fence = false;
    for line in README.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if in_fence {
            found.push(line.trim());
        } else {
            found.extend(line.split('`').skip(1).step_by(2));
        }
    }
    found.retain(|m| m.starts_with("{\"type\":"));
    found
}

/// A README line as a JSON pattern: `…` elisions inside objects dropped,
/// `{…}` an object that matches any object.
fn pattern(line: &str) -> Value {
    let cleaned = line
        .replace("{…}", "{}")
        .replace("{…,", "{")
        .replace(",…}", "}")
        .replace(",…,", ",");
    serde_json::from_str(&cleaned)
        .unwrap_or_else(|e| panic!("README example is not JSON once `…` is elided ({e}): {line}"))
}

/// Fields whose value differs on every run: any string matches.
const VARYING: &[&str] = &["at", "server_time", "session_id"];

/// Does `actual` have everything `pattern` shows?
fn matches(pattern: &Value, actual: &Value) -> bool {
    match (pattern, actual) {
        (Value::String(s), _) if s == "…" => true,
        (Value::Object(p), Value::Object(a)) => p.iter().all(|(k, pv)| {
            a.get(k).is_some_and(|av| {
                if VARYING.contains(&k.as_str()) {
                    av.is_string()
                } else {
                    matches(pv, av)
                }
            })
        }),
        (Value::Array(p), Value::Array(a)) => {
            p.len() == a.len() && p.iter().zip(a).all(|(p, a)| matches(p, a))
        }
        (p, a) => p == a,
    }
}

/// Is this README line a message a client sends (examwatch's parser takes
/// it), or one the server sends (a type the parser does not know)? Any
/// other parse error is a broken example. (Elided lines are the server's:
/// they are parsed with their `…` dropped.)
fn is_client_message(line: &str) -> bool {
    let text = if line.contains('…') {
        pattern(line).to_string()
    } else {
        line.to_owned()
    };
    match protocol::parse(&text) {
        Ok(_) => true,
        Err(e) if e.code == ErrorCode::UnknownType => false,
        Err(e) => panic!("README example is refused by examwatch ({e:?}): {line}"),
    }
}

#[test]
fn the_readme_uses_one_question_id_style() {
    // The style the README uses: `"q1"` strings, never bare numbers.
    let mut checked = 0;
    for line in messages() {
        let v = pattern(line);
        let mut ids = Vec::new();
        collect_question_ids(&v, &mut ids);
        for id in ids {
            let ok = id
                .as_str()
                .and_then(|s| s.strip_prefix('q'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            assert!(ok, "question id {id} is not in the \"q1\" style: {line}");
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "the README's question ids were found ({checked})"
    );
}

fn collect_question_ids(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "question" || k == "current_question" {
                    out.push(v.clone());
                } else {
                    collect_question_ids(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_question_ids(v, out)),
        _ => {}
    }
}

#[test]
fn every_readme_message_is_json_and_every_client_message_parses() {
    let all = messages();
    assert!(all.len() >= 10, "the README's messages were found: {all:?}");
    let client: Vec<_> = all.iter().filter(|l| is_client_message(l)).collect();
    // progress, focus, answer, announce.
    assert!(client.len() >= 4, "client messages found: {client:?}");
    for line in all {
        pattern(line);
    }
}

/// The lines after the command of the code block whose first line runs
/// the example client with `token_var`.
fn session_block(token_var: &str) -> Vec<&'static str> {
    let block = fenced_blocks()
        .into_iter()
        .find(|b| {
            b.first()
                .is_some_and(|l| l.contains("--example client") && l.contains(token_var))
        })
        .unwrap_or_else(|| panic!("the README runs the example client with {token_var}"));
    block[1..].to_vec()
}

/// The block after "The teacher's terminal shows".
fn teacher_events_block() -> Vec<&'static str> {
    let after = README
        .find("The teacher's terminal shows")
        .expect("the README shows the teacher's terminal");
    let rest = &README[after..];
    let start = rest.find("```").expect("a code block follows");
    let body = &rest[start..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    let end = body.find("```").expect("the block ends");
    body[..end].lines().collect()
}

fn inline_message(starting: &str) -> &'static str {
    messages()
        .into_iter()
        .find(|m| m.starts_with(starting))
        .unwrap_or_else(|| panic!("the README has an inline {starting}"))
}

async fn expect_shown(c: &mut Client, line: &str, who: &str) {
    let actual = c.next_json().await;
    assert!(
        matches(&pattern(line), &actual),
        "README shows {who} receiving\n  {line}\nbut the server sent\n  {actual}"
    );
}

#[tokio::test]
async fn the_readme_session_prints_what_the_readme_says() {
    let app = spawn_app_with(|s| {
        // The README's 10 seconds are not part of what is replayed here.
        s.exam.idle_after = Duration::from_secs(120);
    })
    .await;
    let mint = |sub: &str, name: &str, role| {
        app.keys
            .mint(
                sub,
                name,
                role,
                vec!["e1".to_string()],
                Duration::from_secs(600),
            )
            .expect("mint token")
    };
    let teacher_token = mint("t1", "Ms Lovelace", Role::Teacher);
    let student_token = mint("s1", "Ada", Role::Student);

    // The teacher's terminal: the snapshot first.
    let mut teacher = app.connect("e1", &teacher_token).await;
    for line in session_block("$TEACHER") {
        expect_shown(&mut teacher, line, "the teacher").await;
    }
    // The student's terminal: what it receives, and what it types.
    let mut student = app.connect("e1", &student_token).await;
    for line in session_block("$STUDENT") {
        if is_client_message(line) {
            student.send_text(line).await;
        } else {
            expect_shown(&mut student, line, "the student").await;
        }
    }
    // Meanwhile, in the teacher's terminal.
    for line in teacher_events_block() {
        expect_shown(&mut teacher, line, "the teacher").await;
    }

    // The answer example is acked, and so is the same answer re-sent.
    let answer = inline_message("{\"type\":\"answer\"");
    let r = pattern(answer)["ref"].clone();
    student.send_text(answer).await;
    student.expect_ack(r.clone()).await;
    student.send_text(answer).await;
    student.expect_ack(r).await;
    // The announcement typed in the teacher's terminal reaches the student.
    let announce = inline_message("{\"type\":\"announce\"");
    teacher.send_text(announce).await;
    let got = student.next_of_type("announcement").await;
    assert_eq!(got["text"], pattern(announce)["text"]);

    // The README's action: its curl body, posted as the teacher; the
    // student receives what the README shows, and acknowledging it as the
    // README says makes the delivery `delivered`.
    let body = README
        .lines()
        .filter(|l| l.contains("/v1/exams/e1/actions") || l.contains("\"kind\":"))
        .find_map(|l| l.split_once("-d '").map(|(_, b)| b.trim_end_matches('\'')))
        .expect("the README posts an action with curl");
    let body: Value = serde_json::from_str(body).expect("the action's body is JSON");
    let res = app
        .api(
            reqwest::Method::POST,
            "/v1/exams/e1/actions",
            &teacher_token,
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let shown = inline_message("{\"type\":\"message\"");
    expect_shown(&mut student, shown, "the student").await;
    let received = inline_message("{\"type\":\"received\"");
    student.send_text(received).await;
    let id = body["id"].clone();
    let delivery = teacher
        .next_where("the delivery", |v| {
            v["type"] == "delivery" && v["action_id"] == id
        })
        .await;
    assert_eq!(delivery["state"], "delivered");
    assert_eq!(delivery["student_id"], "s1");
}
