//! Which shard a connection belongs to, read from the first bytes of its
//! request head before hyper sees it.
//!
//! Only the request line matters: `GET /v1/exams/{id}/ws?… HTTP/1.1`. The
//! exam id is the path segment after `/v1/exams/`, percent-decoded the way
//! axum's `Path` extractor decodes it, so the id hashed here is the id the
//! room registry is keyed by (a room started by a REST call or the broker
//! hashes the same string, [`shard_of`]). Anything else (no complete
//! segment in the bytes peeked, another path, an id that is not UTF-8)
//! has no exam: the caller picks round robin, and the router answers it as
//! it would have anyway.

use std::borrow::Cow;

/// The prefix of every path that names an exam.
const EXAMS: &[u8] = b"/v1/exams/";

/// The exam a request is about, from the start of its head; `None` when the
/// bytes do not hold a complete `/v1/exams/{id}` segment.
pub fn exam_of_head(head: &[u8]) -> Option<Cow<'_, str>> {
    let space = head.iter().position(|&b| b == b' ')?;
    let target = &head[space + 1..];
    let rest = target.strip_prefix(EXAMS)?;
    // The segment must be seen to end: a cut-off id would hash to the wrong
    // shard (a peek returns what has arrived, maybe half a line).
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#' | b' ' | b'\r' | b'\n'))?;
    let raw = &rest[..end];
    if raw.is_empty() {
        return None;
    }
    percent_decode(raw)
}

/// The shard (of `n`, at least 1) that serves `exam_id`: the same on every
/// call and in every process, so a test or an operator can compute it.
pub fn shard_of(exam_id: &str, n: usize) -> usize {
    (stable_hash(exam_id.as_bytes()) % n.max(1) as u64) as usize
}

/// FNV-1a, 64 bits: stable across processes and Rust versions (the std
/// hasher is neither), and cheap for ids of a few dozen bytes. Not keyed:
/// a client can pick ids that share a shard, which costs balance, nothing
/// else (every shard serves every exam correctly).
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `%XX` escapes decoded; `None` if the result is not UTF-8 (axum refuses
/// such a path). A `%` not followed by two hex digits stays as it is, as
/// axum's decoder leaves it.
fn percent_decode(raw: &[u8]) -> Option<Cow<'_, str>> {
    if !raw.contains(&b'%') {
        return std::str::from_utf8(raw).ok().map(Cow::Borrowed);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let escaped = (raw[i] == b'%')
            .then(|| Some((hex(*raw.get(i + 1)?)?, hex(*raw.get(i + 2)?)?)))
            .flatten();
        match escaped {
            Some((hi, lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exam(head: &str) -> Option<String> {
        exam_of_head(head.as_bytes()).map(Cow::into_owned)
    }

    #[test]
    fn the_exam_id_comes_from_every_exam_path() {
        for line in [
            "GET /v1/exams/e1/ws?access_token=abc HTTP/1.1\r\n",
            "GET /v1/exams/e1/events?last_seq=3 HTTP/1.1\r\n",
            "GET /v1/exams/e1/me/events HTTP/1.1\r\n",
            "POST /v1/exams/e1/me/received HTTP/1.1\r\n",
            "POST /v1/exams/e1/actions HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET /v1/exams/e1/students/s1 HTTP/1.1\r\n",
            "GET /v1/exams/e1 HTTP/1.1\r\n",
            "GET /v1/exams/e1?x=1 HTTP/1.1\r\n",
        ] {
            assert_eq!(exam(line).as_deref(), Some("e1"), "{line:?}");
        }
    }

    #[test]
    fn other_paths_and_cut_off_heads_have_no_exam() {
        for head in [
            "GET /healthz HTTP/1.1\r\n",
            "GET /v1/exams HTTP/1.1\r\n",
            "POST /v1/exams/ HTTP/1.1\r\n",
            "GET /v1/exams//ws HTTP/1.1\r\n",
            "GET /v1/tickets HTTP/1.1\r\n",
            "GET /dashboard/ HTTP/1.1\r\n",
            "GET http://host/v1/exams/e1/ws HTTP/1.1\r\n",
            // Half a line: the id may go on in the next packet.
            "GET /v1/exams/e1",
            "GET /v1/exa",
            "GET",
            "",
            "\u{16}\u{3}\u{1}binary (a TLS ClientHello)",
        ] {
            assert_eq!(exam(head), None, "{head:?}");
        }
    }

    #[test]
    fn encoded_ids_are_decoded_as_the_router_decodes_them() {
        assert_eq!(
            exam("GET /v1/exams/math%20101/ws HTTP/1.1").as_deref(),
            Some("math 101")
        );
        assert_eq!(
            exam("GET /v1/exams/%C3%A9t%c3%a9/ws HTTP/1.1").as_deref(),
            Some("été")
        );
        // A lone `%` stays; an escape that is not UTF-8 has no exam.
        assert_eq!(
            exam("GET /v1/exams/50%/ws HTTP/1.1").as_deref(),
            Some("50%")
        );
        assert_eq!(exam("GET /v1/exams/%ff/ws HTTP/1.1"), None);
        // The encoded and the plain spelling land on one shard.
        let a = exam("GET /v1/exams/a%2Db/ws HTTP/1.1").unwrap();
        assert_eq!(shard_of(&a, 7), shard_of("a-b", 7));
    }

    #[test]
    fn shards_are_stable_and_spread() {
        // Fixed values: the hash must not change between builds (a test
        // and an operator compute it from outside).
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(shard_of("e1", 1), 0);
        assert_eq!(shard_of("e1", 0), 0, "no division by zero");
        let mut per = [0usize; 4];
        for i in 0..400 {
            per[shard_of(&format!("exam-{i}"), 4)] += 1;
        }
        assert!(per.iter().all(|&n| n > 60), "{per:?}");
    }
}
