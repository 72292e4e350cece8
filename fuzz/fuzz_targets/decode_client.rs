//! Fuzzes the decoder the WebSocket uses for every client text frame
//! (`examwatch::protocol::parse`, called from `ws::Connection::on_text`):
//! whatever arrives must become either a typed message or an `error` with
//! one of the decoder's documented codes, and the reply the socket then
//! writes must encode. A panic, an abort (a stack overflow on deep nesting)
//! or a failed assertion here is a crash libFuzzer saves under
//! `fuzz/artifacts/decode_client/`.
//!
//! The socket only ever hands the decoder valid UTF-8 (a text frame that is
//! not closes with 1007 in the WebSocket layer), so other bytes are skipped.
#![no_main]

use examwatch::auth::Role;
use examwatch::protocol::{self, ErrorCode, Label, MAX_LABEL_LEN, ServerMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let decoded = protocol::parse(text);
    assert_eq!(decoded, protocol::parse(text), "decoding is deterministic");
    match decoded {
        Ok(incoming) => {
            if let Some(r#ref) = &incoming.r#ref {
                assert!(label_ok(r#ref), "an accepted ref is a valid label: {ref:?}");
            }
            // What the socket asks next; neither may panic.
            let _ = incoming.msg.kind();
            for role in [Role::Student, Role::Proctor, Role::Teacher, Role::Admin] {
                let _ = incoming.msg.allowed_for(role);
            }
        }
        Err(e) => {
            // The decoder's own refusals are the malformed-data codes
            // (PROTOCOL.md 3.2); the others come from the room or the socket.
            assert!(e.code.is_invalid_data(), "unexpected code {:?}", e.code);
            if matches!(e.code, ErrorCode::InvalidJson | ErrorCode::InvalidRef) {
                assert!(e.r#ref.is_none(), "{:?} never echoes a ref", e.code);
            }
            if let Some(r#ref) = &e.r#ref {
                assert!(label_ok(r#ref), "an echoed ref is a valid label: {ref:?}");
            }
            // The frame the socket writes back.
            let frame = ServerMsg::Error {
                code: e.code,
                message: e.message.as_str().into(),
                r#ref: e.r#ref.as_ref(),
            }
            .encode();
            let v: serde_json::Value =
                serde_json::from_str(frame.as_str()).expect("the error frame is JSON");
            assert_eq!(v["type"], "error");
            assert_eq!(
                v["code"],
                serde_json::to_value(e.code).expect("a code encodes")
            );
        }
    }
});

/// PROTOCOL.md 1.6: at most 64 bytes, no control characters.
fn label_ok(label: &Label) -> bool {
    match label {
        Label::Number(n) => n.to_string().len() <= MAX_LABEL_LEN,
        Label::Text(s) => s.len() <= MAX_LABEL_LEN && !s.chars().any(char::is_control),
    }
}
