//! Property tests of the decoder ([`parse`], what the socket calls on every
//! text frame): whatever a client sends, it is either accepted as the
//! message it spelled or answered with an error code that PROTOCOL.md 3.2
//! documents, classified in the order 1.6 and 3.2 give (not an object:
//! `invalid_json`; a bad `ref`: `invalid_ref`; a bad `type`: `unknown_type`;
//! bad fields: `invalid_message`), and nothing panics or overflows the
//! stack.
//!
//! The default case count is proptest's (256, quick: a case is one small
//! decode); `PROPTEST_CASES` raises it, as `.ci/run` does for its proptest
//! pass. The fuzz target `fuzz/fuzz_targets/decode_client.rs` drives the
//! same function with coverage-guided bytes (docs/SECURITY.md).

use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;
use crate::auth::Role;

/// The `code` column of PROTOCOL.md 3.2's error table.
fn documented_codes() -> BTreeSet<String> {
    table_column(include_str!("../../docs/PROTOCOL.md"), "| `code` | Meaning")
}

/// The `type` column of PROTOCOL.md 2's table of client messages.
fn documented_client_types() -> BTreeSet<String> {
    table_column(
        include_str!("../../docs/PROTOCOL.md"),
        "| `type` | Fields | Sent by",
    )
}

/// The first column (each a `name` in backticks) of the Markdown table whose
/// header row starts with `header`; a cell naming two (`a`, `b`) gives both.
fn table_column(doc: &str, header: &str) -> BTreeSet<String> {
    let mut lines = doc.lines().skip_while(|l| !l.starts_with(header));
    assert!(
        lines.next().is_some(),
        "PROTOCOL.md has no table {header:?}"
    );
    let names: BTreeSet<String> = lines
        .skip(1) // |---|---|
        .take_while(|l| l.starts_with('|'))
        .flat_map(|row| {
            let cell = row.split('|').nth(1).unwrap_or_default();
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!names.is_empty(), "table {header:?} is empty");
    names
}

fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("an error code serializes as a string")
}

/// Every [`ErrorCode`]. Adding a variant breaks the match below until it is
/// listed here too, and `every_error_code_is_documented` then wants it in
/// PROTOCOL.md 3.2.
fn every_code() -> Vec<ErrorCode> {
    use ErrorCode::*;
    let all = vec![
        InvalidJson,
        UnknownType,
        InvalidMessage,
        InvalidRef,
        Forbidden,
        RateLimited,
        AlreadySubmitted,
        InvalidAnnouncement,
        NotStored,
        StorageBusy,
        ExamNotStarted,
        ExamEnded,
        ExamPaused,
        InvalidToken,
        TokenExpired,
        TokenRevoked,
        UnsupportedOnHttp,
    ];
    for code in &all {
        match code {
            InvalidJson | UnknownType | InvalidMessage | InvalidRef | Forbidden | RateLimited
            | AlreadySubmitted | InvalidAnnouncement | NotStored | StorageBusy | ExamNotStarted
            | ExamEnded | ExamPaused | InvalidToken | TokenExpired | TokenRevoked
            | UnsupportedOnHttp => {}
        }
    }
    all
}

#[test]
fn every_error_code_is_documented_and_every_documented_code_exists() {
    let in_code: BTreeSet<String> = every_code().into_iter().map(code_name).collect();
    assert_eq!(in_code, documented_codes(), "ErrorCode vs PROTOCOL.md 3.2");
}

#[test]
fn every_known_type_is_documented_and_every_documented_type_is_known() {
    let in_code: BTreeSet<String> = KNOWN_TYPES.iter().map(|t| (*t).to_owned()).collect();
    assert_eq!(
        in_code,
        documented_client_types(),
        "KNOWN_TYPES vs PROTOCOL.md 2"
    );
}

/// What PROTOCOL.md 1.6 calls a valid `ref` (or question / answer id).
fn label_ok(v: &Value) -> bool {
    match v {
        Value::String(s) => s.len() <= MAX_LABEL_LEN && !s.chars().any(char::is_control),
        Value::Number(n) => n.to_string().len() <= MAX_LABEL_LEN,
        _ => false,
    }
}

/// serde_json's recursion limit: a value nested this deep (the frame's
/// object counting as one) is refused wherever it sits.
const DEPTH_LIMIT: usize = 128;

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// What the documents predict for a JSON value sent as a frame.
#[derive(Debug, PartialEq)]
enum Predicted {
    Code(ErrorCode),
    /// Accepted or `invalid_message`, depending on the fields (the
    /// valid-message properties pin which).
    KnownType,
    /// Nested past [`DEPTH_LIMIT`]: refused, with the code of the pass
    /// that met it (`invalid_json` in `type`/`ref`, else `invalid_message`
    /// or the code of `type`).
    TooDeep,
}

fn predicted(v: &Value) -> Predicted {
    let Value::Object(m) = v else {
        return Predicted::Code(ErrorCode::InvalidJson);
    };
    if depth(v) >= DEPTH_LIMIT {
        return Predicted::TooDeep;
    }
    match m.get("ref") {
        None | Some(Value::Null) => {}
        Some(r) if label_ok(r) => {}
        Some(_) => return Predicted::Code(ErrorCode::InvalidRef),
    }
    match m.get("type") {
        Some(Value::String(t)) if KNOWN_TYPES.contains(&t.as_str()) => Predicted::KnownType,
        _ => Predicted::Code(ErrorCode::UnknownType),
    }
}

/// Checks one decode against the contract; returns the outcome for more.
fn check(text: &str) -> Result<Incoming, ParseError> {
    let out = parse(text);
    match &out {
        Ok(incoming) => {
            let label_ok = |l: &Label| label_ok(&serde_json::to_value(l).expect("a label"));
            assert!(incoming.r#ref.as_ref().is_none_or(label_ok), "{text:?}");
            assert!(KNOWN_TYPES.contains(&incoming.msg.kind()));
            for role in [Role::Student, Role::Proctor, Role::Teacher, Role::Admin] {
                let _ = incoming.msg.allowed_for(role);
            }
        }
        Err(e) => {
            assert!(
                documented_codes().contains(&code_name(e.code)),
                "{:?} is not in PROTOCOL.md 3.2 (input {text:?})",
                e.code
            );
            // The decoder's refusals are the malformed-data ones (1.7: they
            // close with 1007 once the budget is spent).
            assert!(e.code.is_invalid_data(), "{:?} for {text:?}", e.code);
            if matches!(e.code, ErrorCode::InvalidJson | ErrorCode::InvalidRef) {
                assert_eq!(e.r#ref, None, "3.2: {:?} echoes no ref", e.code);
            }
            // The frame the socket writes back encodes and names the code.
            let frame = ServerMsg::Error {
                code: e.code,
                message: e.message.as_str().into(),
                r#ref: e.r#ref.as_ref(),
                retry_after_ms: None,
            }
            .encode();
            let v: Value = serde_json::from_str(frame.as_str()).expect("the error is JSON");
            assert_eq!(v["code"], Value::String(code_name(e.code)));
        }
    }
    out
}

/// Checks a JSON value sent as a frame, against [`predicted`] too.
fn check_value(v: &Value) -> Result<Incoming, ParseError> {
    let text = v.to_string();
    let out = check(&text);
    // What the server reads back is serde_json's reading of the text, which
    // may differ from `v` in a float's last bit (no `float_roundtrip`).
    let sent = v;
    let reread: Value = serde_json::from_str(&text).unwrap_or_else(|_| v.clone());
    let v = &reread;
    match (predicted(v), &out) {
        (Predicted::Code(code), Err(e)) => assert_eq!(e.code, code, "{text}"),
        (Predicted::Code(code), Ok(_)) => panic!("{text} was accepted; the docs say {code:?}"),
        (Predicted::KnownType, Err(e)) => assert_eq!(e.code, ErrorCode::InvalidMessage, "{text}"),
        (Predicted::KnownType, Ok(m)) => assert_eq!(Some(m.msg.kind()), v["type"].as_str()),
        (Predicted::TooDeep, out) => assert!(out.is_err(), "{text}"),
    }
    // A valid ref is echoed in the error for the codes that echo one.
    if let (Err(e), Some(r)) = (&out, sent.get("ref"))
        && matches!(e.code, ErrorCode::UnknownType | ErrorCode::InvalidMessage)
        && !r.is_null()
    {
        let echoed = e
            .r#ref
            .as_ref()
            .map(|l| serde_json::to_value(l).expect("a label"));
        // serde_json's one reading of the ref as sent (a float may move by
        // its last bit, and reading it again may move it again).
        let r = serde_json::from_str::<Value>(&r.to_string()).unwrap_or_else(|_| r.clone());
        assert_eq!(echoed, Some(r), "{text}");
    }
    out
}

// ---- generators ----

/// Text of every kind a client might send: ASCII, any Unicode scalar,
/// control characters, quotes and backslashes.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_-]{0,12}",
        any::<String>(),
        "[\\x00-\\x1f\"\\\\\u{7f}\u{2028}\u{fffd}\u{1f600}]{0,8}",
        (1usize..200).prop_map(|n| "é".repeat(n)),
    ]
}

/// Numbers at and beyond every width the decoder reads into.
fn any_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        Just(json!(u32::MAX)),
        Just(json!(u64::from(u32::MAX) + 1)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(-0.0)),
        Just(json!(1.5)),
        Just(json!(1e300)),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any_number(),
        any_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Field names: the ones messages have, and others (which are ignored).
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "type", "ref", "question", "answered", "id", "value", "state", "last_seq", "text",
        ])
        .prop_map(str::to_owned),
        1 => any_text(),
    ]
}

/// A valid `ref`/`question`/`id`: a short string without control
/// characters, or an integer.
fn label() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[^\\p{Cc}]{0,16}".prop_filter_map("at most 64 bytes", |s| {
            (s.len() <= MAX_LABEL_LEN).then_some(Value::String(s))
        }),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
    ]
}

/// A valid message of every type, with or without a `ref`, as a JSON object.
fn valid_message() -> impl Strategy<Value = Value> {
    let body = prop_oneof![
        (label(), any::<u32>())
            .prop_map(|(q, a)| json!({"type":"progress","question":q,"answered":a})),
        prop::sample::select(vec!["active", "idle"])
            .prop_map(|s| json!({"type":"activity","state":s})),
        prop::sample::select(vec!["lost", "gained", "fullscreen_exit"])
            .prop_map(|s| json!({"type":"focus","state":s})),
        Just(json!({"type":"heartbeat"})),
        Just(json!({"type":"submit"})),
        any::<u64>().prop_map(|n| json!({"type":"resume","last_seq":n})),
        any_text().prop_map(|t| json!({"type":"announce","text":t})),
        (label(), label(), any_json())
            .prop_map(|(id, q, v)| json!({"type":"answer","id":id,"question":q,"value":v})),
        "[a-zA-Z0-9_-]{1,64}".prop_map(|id| json!({"type":"received","id":id})),
        prop::option::of("[^\\p{Cc}]{0,40}").prop_map(|t| json!({"type":"raise_hand","text":t})),
    ];
    (body, prop::option::of(label())).prop_map(|(mut m, r)| {
        if let Some(r) = r {
            m["ref"] = r;
        }
        m
    })
}

/// One change that may break a valid message.
#[derive(Debug, Clone)]
enum Mutation {
    Remove(String),
    Set(String, Value),
    /// The value of this field nested `depth` arrays deep.
    Nest(String, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        field_name().prop_map(Mutation::Remove),
        (field_name(), any_json()).prop_map(|(k, v)| Mutation::Set(k, v)),
        (field_name(), 1usize..300).prop_map(|(k, d)| Mutation::Nest(k, d)),
    ]
}

fn mutate(mut v: Value, mutations: &[Mutation]) -> Value {
    let Some(m) = v.as_object_mut() else {
        return v;
    };
    for mutation in mutations {
        match mutation {
            Mutation::Remove(k) => {
                m.remove(k);
            }
            Mutation::Set(k, x) => {
                m.insert(k.clone(), x.clone());
            }
            Mutation::Nest(k, depth) => {
                let mut x = m.remove(k).unwrap_or(Value::Null);
                for _ in 0..*depth {
                    x = Value::Array(vec![x]);
                }
                m.insert(k.clone(), x);
            }
        }
    }
    v
}

/// Replaces one number literal in `text` with one no integer type holds.
fn with_huge_number(text: &str, pick: usize, huge: &str) -> String {
    let starts: Vec<usize> = text
        .char_indices()
        .filter(|&(i, c)| {
            c.is_ascii_digit() && (i == 0 || !text.as_bytes()[i - 1].is_ascii_alphanumeric())
        })
        .map(|(i, _)| i)
        .collect();
    let Some(&start) = starts.get(pick % starts.len().max(1)) else {
        return text.to_owned();
    };
    let end = text[start..]
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .map_or(text.len(), |n| start + n);
    format!("{}{huge}{}", &text[..start], &text[end..])
}

proptest! {
    /// Any text at all (the socket hands over only valid UTF-8).
    #[test]
    fn any_text_is_decoded_or_refused_with_a_documented_code(text in any_text()) {
        check(&text).ok();
    }

    /// Any bytes, as the socket would see them once made valid UTF-8.
    #[test]
    fn any_bytes_are_decoded_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check(&String::from_utf8_lossy(&bytes)).ok();
    }

    /// Any JSON value, with the code the documents predict.
    #[test]
    fn any_json_gets_the_documented_code(v in any_json()) {
        check_value(&v).ok();
    }

    /// An object with a known type and arbitrary other fields.
    #[test]
    fn known_types_with_arbitrary_fields(
        kind in prop::sample::select(KNOWN_TYPES.to_vec()),
        fields in prop::collection::vec((field_name(), any_json()), 0..5),
    ) {
        let mut m: Map<String, Value> = fields.into_iter().collect();
        m.insert("type".into(), Value::String(kind.into()));
        check_value(&Value::Object(m)).ok();
    }

    /// Every valid message is accepted, as exactly what it says.
    #[test]
    fn valid_messages_are_accepted_as_sent(v in valid_message()) {
        let m = check_value(&v).map_err(|e| TestCaseError::fail(format!("{v}: {e:?}")))?;
    // As serde_json reads it (a float may move by its last bit).
    let v: Value = serde_json::from_str(&v.to_string()).expect("valid JSON");
        let label = |l: &Label| serde_json::to_value(l).expect("a label");
        prop_assert_eq!(m.r#ref.as_ref().map(label), v.get("ref").cloned());
        match m.msg {
            ClientMsg::Progress { question, answered } => {
                prop_assert_eq!(label(&question), v["question"].clone());
                prop_assert_eq!(Some(u64::from(answered)), v["answered"].as_u64());
            }
            ClientMsg::Answer { id, question, value } => {
                prop_assert_eq!(label(&id), v["id"].clone());
                prop_assert_eq!(label(&question), v["question"].clone());
                prop_assert_eq!(value, v["value"].clone());
            }
            ClientMsg::Resume { last_seq } => prop_assert_eq!(Some(last_seq), v["last_seq"].as_u64()),
            ClientMsg::Announce { text } => prop_assert_eq!(Some(text.as_str()), v["text"].as_str()),
            ClientMsg::Received { id } => prop_assert_eq!(Some(id.as_str()), v["id"].as_str()),
            ClientMsg::RaiseHand { text } => prop_assert_eq!(text.as_deref(), v["text"].as_str()),
            _ => {}
        }
    }

    /// Valid messages with fields removed, retyped, nested or added.
    #[test]
    fn near_valid_messages_get_the_documented_code(
        v in valid_message(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        check_value(&mutate(v, &mutations)).ok();
    }

    /// Valid messages whose text has a number too large for any integer,
    /// or is cut short, or has a character spliced in.
    #[test]
    fn near_valid_text_is_decoded_or_refused(
        v in valid_message(),
        pick in any::<usize>(),
        huge in prop::sample::select(vec![
            "4294967296", "18446744073709551616", "1e400", "-1e400", "-0",
            "123456789012345678901234567890123456789012345678901234567890123456789",
        ]),
        cut in any::<prop::sample::Index>(),
        splice in any::<char>(),
    ) {
        let text = v.to_string();
        check(&with_huge_number(&text, pick, huge)).ok();
        let at = cut.index(text.len() + 1);
        if let (Some(head), Some(tail)) = (text.get(..at), text.get(at..)) {
            check(head).ok();
            check(&format!("{head}{splice}{tail}")).ok();
        }
    }
}

/// Deeper than serde_json's recursion limit (128), in every place a value
/// can sit, up to the 16 KiB a frame may hold: refused, never a stack
/// overflow (which would abort the whole server, not just the connection).
#[test]
fn deep_nesting_anywhere_is_refused_without_overflowing_the_stack() {
    let n = 8000; // 16,000 bytes of brackets: within the frame limit
    let deep = format!("{}{}", "[".repeat(n), "]".repeat(n));
    let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(n / 3), "}".repeat(n / 3));
    for nested in [&deep, &deep_obj] {
        for text in [
            nested.clone(),
            format!(r#"{{"type":"heartbeat","x":{nested}}}"#),
            format!(r#"{{"type":"heartbeat","ref":{nested}}}"#),
            format!(r#"{{"type":{nested}}}"#),
            format!(r#"{{"type":"answer","id":"a","question":1,"value":{nested}}}"#),
            format!(r#"{{"type":"progress","question":{nested},"answered":1}}"#),
        ] {
            assert!(check(&text).is_err(), "{}", &text[..60]);
        }
    }
    // Which code: the first pass reads `type` and `ref` (too deep there is
    // not JSON it can read), the second the message's fields; an unknown
    // type is refused before its fields are read.
    let code = |text: String| parse(&text).map(|m| m.msg.kind()).map_err(|e| e.code);
    for (text, expected) in [
        (
            format!(r#"{{"type":"heartbeat","ref":{deep}}}"#),
            ErrorCode::InvalidJson,
        ),
        (format!(r#"{{"type":{deep}}}"#), ErrorCode::InvalidJson),
        (
            format!(r#"{{"type":"heartbeat","x":{deep}}}"#),
            ErrorCode::InvalidMessage,
        ),
        (
            format!(r#"{{"type":"answer","id":"a","question":1,"value":{deep}}}"#),
            ErrorCode::InvalidMessage,
        ),
        (
            format!(r#"{{"type":"dance","x":{deep}}}"#),
            ErrorCode::UnknownType,
        ),
    ] {
        assert_eq!(code(text.clone()), Err(expected), "{}", &text[..40]);
    }
    // The limit, exactly: the frame's object and 126 arrays inside pass.
    let nested = |n: usize| {
        format!(
            r#"{{"type":"heartbeat","x":{}{}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    assert!(check(&nested(DEPTH_LIMIT - 2)).is_ok());
    assert!(check(&nested(DEPTH_LIMIT - 1)).is_err());
    let v: Value = serde_json::from_str(&nested(DEPTH_LIMIT - 2)).expect("within the limit");
    assert_eq!(
        depth(&v),
        DEPTH_LIMIT - 1,
        "`depth` counts as serde_json does"
    );
    // Within the limit, a deep answer value is an answer like any other.
    let ok = format!(
        r#"{{"type":"answer","id":"a","question":1,"value":{}{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    assert!(matches!(check(&ok).map(|m| m.msg.kind()), Ok("answer")));
}

#[test]
fn huge_numbers_are_refused_where_a_width_is_required() {
    for (text, code) in [
        (
            r#"{"type":"progress","question":1,"answered":4294967296}"#,
            ErrorCode::InvalidMessage,
        ),
        (
            r#"{"type":"resume","last_seq":18446744073709551616}"#,
            ErrorCode::InvalidMessage,
        ),
        (
            r#"{"type":"resume","last_seq":-1}"#,
            ErrorCode::InvalidMessage,
        ),
        (
            r#"{"type":"heartbeat","ref":1e400}"#,
            ErrorCode::InvalidJson,
        ),
    ] {
        assert_eq!(check(text).map_err(|e| e.code).err(), Some(code), "{text}");
    }
    // An integer too wide for u64 is read as a float (1.6: numbers may be
    // re-formatted); as a `ref` it is then short enough.
    let long = "123456789012345678901234567890123456789012345678901234567890123456789";
    let m = check(&format!(r#"{{"type":"heartbeat","ref":{long}}}"#));
    assert!(matches!(m.map(|m| m.r#ref), Ok(Some(Label::Number(_)))));
    // The widest integers that fit are taken as they are.
    let m = check(r#"{"type":"progress","question":18446744073709551615,"answered":4294967295}"#);
    assert!(matches!(
        m.map(|m| m.msg),
        Ok(ClientMsg::Progress {
            answered: u32::MAX,
            ..
        })
    ));
}

#[test]
fn the_table_reader_reads_the_tables() {
    let codes = documented_codes();
    assert!(
        codes.contains("invalid_json") && codes.contains("exam_paused"),
        "{codes:?}"
    );
    let types = documented_client_types();
    assert!(
        types.contains("progress") && types.contains("announce"),
        "{types:?}"
    );
    assert!(!codes.contains("progress") && !types.contains("invalid_json"));
}
