//! Bringing a watcher up to date: a `resume` from a `last_seq` (replay,
//! or a snapshot when the gap cannot be replayed: room/replay.rs decides),
//! and snapshots, in parts for a large exam (PROTOCOL.md 4.12).

use axum::extract::ws::Utf8Bytes;

use super::Room;
use crate::metrics::SlowPath;
use crate::protocol::Seq;
use crate::room::{
    ConnId,
    students::{self},
};

impl Room {
    /// Replays the events after `last_seq` from history, in order. Sends a
    /// fresh snapshot instead when the history no longer reaches back that
    /// far, when the client claims a seq this room never issued, when the
    /// replay would not fit in the connection's queue, or when live events
    /// were already delivered on this connection since its last sync (the
    /// replay would then arrive out of order or twice).
    pub(super) fn resume_teacher(&mut self, conn: ConnId, last_seq: Seq) {
        let Some(teacher) = self.teachers.get(&conn) else {
            return;
        };
        let out = teacher.out.clone();
        let in_sync = teacher.synced_at == self.seq;
        let plan = crate::room::replay::plan(
            &self.history,
            last_seq,
            self.seq,
            self.epoch_floor,
            in_sync,
            out.tx.capacity(),
        );
        let start = match plan {
            crate::room::replay::Resume::UpToDate => return,
            crate::room::replay::Resume::Snapshot => {
                self.ctx.metrics.resume_snapshots.increment(1);
                return self.send_snapshot(conn);
            }
            crate::room::replay::Resume::Replay { start } => start,
        };
        self.ctx.metrics.resume_replays.increment(1);
        for (_, bytes) in self.history.range(start..) {
            if !self.push_as(&out, bytes.clone(), SlowPath::Replay) {
                break;
            }
        }
    }

    pub(super) fn send_snapshot(&mut self, conn: ConnId) {
        if self.teachers.contains_key(&conn) {
            let parts = self.snapshot_parts();
            self.send_parts(conn, &parts);
        }
    }

    /// The room's state as snapshot frames: one for a small exam, several
    /// of at most `PART_BYTES` for a large one (room/snapshot.rs). Encoded
    /// once, whoever receives them.
    pub(super) fn snapshot_parts(&self) -> Vec<Utf8Bytes> {
        let started = std::time::Instant::now();
        let mut students: Vec<_> = self.students.values().map(|s| &s.state).collect();
        students.sort_unstable_by(|a, b| a.student_id.cmp(&b.student_id));
        let counts = students::count(students.iter().copied());
        let parts = crate::room::snapshot::encode(
            self.seq,
            &self.exam_id,
            &students,
            counts,
            (&self.control.exam, self.control.version),
            crate::room::snapshot::PART_BYTES,
        );
        tracing::debug!(
            students = students.len(),
            parts = parts.len(),
            bytes = parts.iter().map(|p| p.len()).sum::<usize>(),
            micros = started.elapsed().as_micros() as u64,
            "snapshot encoded"
        );
        parts
    }

    /// Queues every part of a snapshot for one teacher, in this one step of
    /// the room, so no event can come between its parts (each takes a slot
    /// of the queue; `ws.teacher_queue` is far above what any exam needs).
    /// A queue that cannot take them all is a slow consumer: kicked (4008).
    pub(super) fn send_parts(&mut self, conn: ConnId, parts: &[Utf8Bytes]) {
        let Some(teacher) = self.teachers.get_mut(&conn) else {
            return;
        };
        teacher.synced_at = self.seq;
        let out = teacher.out.clone();
        for part in parts {
            if !self.push_as(&out, part.clone(), SlowPath::Snapshot) {
                break;
            }
        }
    }
}
