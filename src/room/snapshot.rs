//! A snapshot in parts: a large exam's students split over several
//! `snapshot` frames, each well under what a socket can write at once
//! (docs/PROTOCOL.md 4.12).
//!
//! One frame per snapshot worked until about 2,700 students with long names:
//! past [`crate::ws::MAX_WRITE_BUFFER`] (1 MiB) tungstenite refuses the
//! frame ("Write buffer is full"), the connection fails, and the dashboard
//! reconnects into the same failure forever. Raising the buffer would only
//! move the wall, and make every teacher's socket able to hold that much.
//!
//! Every part carries the whole header (`seq`, `exam_id`, `counts`) and
//! `part`/`parts`, so a client knows from the first frame how many follow.
//! That needs the split before the first part is written: each student's
//! encoded size is measured first (serialized into a byte counter, no
//! allocation), then each part is encoded into a buffer of its exact size.
//! Pure: no room, no socket, so its unit tests need neither.

use std::ops::Range;

use axum::extract::ws::Utf8Bytes;

use crate::protocol::{Counts, Seq, ServerMsg, StudentState};

/// The most bytes of one snapshot frame: a quarter of the write buffer, so
/// a part always fits beside whatever is still unwritten of the previous
/// one, and a browser parses each in a few milliseconds.
pub const PART_BYTES: usize = 256 * 1024;
const _: () = assert!(PART_BYTES * 4 <= crate::ws::MAX_WRITE_BUFFER);

/// The snapshot of `students` (already sorted) as frames of at most
/// `budget` bytes each: parts 1..=n in order, at least one (an exam without
/// students gets one part with none). Only a single student larger than
/// the budget could exceed it (the token's limits make one at most a few
/// KiB); it then travels alone.
pub fn encode(
    seq: Seq,
    exam_id: &str,
    students: &[&StudentState],
    counts: Counts,
    (clock, version): (&crate::control::ExamClock, i64),
    budget: usize,
) -> Vec<Utf8Bytes> {
    let server_time = crate::protocol::Timestamp::now();
    let frame = |part, parts, students| ServerMsg::Snapshot {
        seq,
        exam_id,
        part,
        parts,
        students,
        counts,
        phase: clock.phase,
        server_time,
        clock,
        version,
    };
    // The frame around the students, at its largest (10-digit numbers).
    let overhead = frame(u32::MAX, u32::MAX, &[]).encode().len();
    let pages = split(students, budget.saturating_sub(overhead));
    let parts = pages.len() as u32;
    pages
        .into_iter()
        .zip(1..)
        .map(|((range, bytes), part)| {
            frame(part, parts, &students[range]).encode_sized(overhead + bytes)
        })
        .collect()
}

/// Consecutive runs of students whose encodings (with the commas between
/// them) fit in `room` bytes, with those bytes; at least one run.
fn split(students: &[&StudentState], room: usize) -> Vec<(Range<usize>, usize)> {
    let mut pages = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, student) in students.iter().enumerate() {
        let size = encoded_len(student);
        if i == start {
            bytes = size;
        } else if bytes + 1 + size > room {
            pages.push((start..i, bytes));
            (start, bytes) = (i, size);
        } else {
            bytes += 1 + size;
        }
    }
    pages.push((start..students.len(), bytes));
    pages
}

/// The length of a student's JSON, counted without building it.
fn encoded_len(student: &StudentState) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Cannot fail (plain fields, an infallible writer); a failure would
    // only make the part's buffer grow.
    let _ = serde_json::to_writer(&mut count, student);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Status, Timestamp};

    fn student(i: usize, name_len: usize) -> StudentState {
        StudentState {
            connected: true,
            connections: 1,
            ..StudentState::fresh(
                format!("s{i:05}"),
                "n".repeat(name_len),
                Status::Active,
                Timestamp::now(),
            )
        }
    }

    fn decode(frames: &[Utf8Bytes]) -> Vec<serde_json::Value> {
        frames
            .iter()
            .map(|f| serde_json::from_str(f.as_str()).unwrap())
            .collect()
    }

    fn running() -> crate::control::ExamClock {
        crate::control::ExamClock::new(
            crate::control::Phase::InProgress,
            crate::control::Timing::Fixed,
            None,
            None,
            None,
            false,
        )
    }

    #[test]
    fn parts_stay_within_the_budget_and_together_hold_every_student_in_order() {
        let all: Vec<StudentState> = (0..1000).map(|i| student(i, i % 300)).collect();
        let refs: Vec<&StudentState> = all.iter().collect();
        let counts = Counts {
            active: 1000,
            ..Counts::default()
        };
        let budget = 16 * 1024;
        let frames = encode(7, "e1", &refs, counts, (&running(), 1), budget);
        assert!(frames.len() > 10, "{} parts", frames.len());
        assert!(frames.iter().all(|f| f.len() <= budget));
        let parts = decode(&frames);
        let mut ids = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p["type"], "snapshot");
            assert_eq!(p["seq"], 7);
            assert_eq!(p["exam_id"], "e1");
            assert_eq!(p["part"], i + 1);
            assert_eq!(p["parts"], frames.len());
            assert_eq!(p["counts"]["active"], 1000, "the whole exam's counts");
            for s in p["students"].as_array().unwrap() {
                ids.push(s["student_id"].as_str().unwrap().to_owned());
            }
        }
        let expected: Vec<String> = all.iter().map(|s| s.student_id.clone()).collect();
        assert_eq!(ids, expected);
        // Parts are filled: each one would have overflowed with the next student.
        for pair in frames.windows(2) {
            let next: serde_json::Value = serde_json::from_str(pair[1].as_str()).unwrap();
            let first = serde_json::to_string(&next["students"][0]).unwrap();
            assert!(pair[0].len() + 1 + first.len() > budget - 20);
        }
    }

    #[test]
    fn a_small_or_empty_exam_is_one_part_of_the_exact_size() {
        let one = [student(1, 10)];
        let refs: Vec<&StudentState> = one.iter().collect();
        for students in [&refs[..], &[]] {
            let frames = encode(
                3,
                "e1",
                students,
                Counts::default(),
                (&running(), 1),
                PART_BYTES,
            );
            assert_eq!(frames.len(), 1);
            let p = &decode(&frames)[0];
            assert_eq!(
                (p["part"].as_u64(), p["parts"].as_u64()),
                (Some(1), Some(1))
            );
            assert_eq!(p["students"].as_array().unwrap().len(), students.len());
        }
        let sizes: Vec<usize> = one.iter().map(encoded_len).collect();
        assert_eq!(sizes[0], serde_json::to_string(&one[0]).unwrap().len());
    }

    #[test]
    fn a_student_larger_than_the_budget_travels_alone() {
        let all = [student(0, 10), student(1, 5000), student(2, 10)];
        let refs: Vec<&StudentState> = all.iter().collect();
        let frames = encode(1, "e1", &refs, Counts::default(), (&running(), 1), 1024);
        let sizes: Vec<usize> = decode(&frames)
            .iter()
            .map(|p| p["students"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [1, 1, 1]);
    }
}
