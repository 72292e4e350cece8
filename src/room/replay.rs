//! Whether a teacher's `resume` (or `?last_seq=`) can be answered from the
//! room's history, or needs a fresh snapshot (PROTOCOL.md 4.4): a plain
//! function of the history and the room's numbers, so every branch has a
//! unit test — including "the replay does not fit the teacher's queue",
//! which no socket-level test can reach (a queue only fills while its
//! connection is blocked writing, and then it reads no `resume`).
//!
//! Also whether a student's `resume` is `recovered` (PROTOCOL.md 4.5):
//! announcements are a sparse subset of the seqs, so "the oldest kept one"
//! does not say what was lost; the room keeps a floor instead (the newest
//! seq at or below which announcements may be gone) and this decides from
//! it.

use std::collections::VecDeque;

use crate::protocol::Seq;

/// How to answer a teacher who last saw `last_seq`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Resume {
    /// Nothing was missed.
    UpToDate,
    /// Send `history[start..]`: exactly the missed events.
    Replay { start: usize },
    /// Send a snapshot instead.
    Snapshot,
}

/// `history` holds the latest events in order; `seq` is the room's latest;
/// events before `epoch_floor` may be missing (an unclean end); `in_sync`
/// says the teacher received everything up to now; `free` is how many
/// frames its queue can still take.
pub(super) fn plan<T>(
    history: &VecDeque<(Seq, T)>,
    last_seq: Seq,
    seq: Seq,
    epoch_floor: Seq,
    in_sync: bool,
    free: usize,
) -> Resume {
    if last_seq == seq {
        return Resume::UpToDate;
    }
    // The replay must run without a hole from `last_seq + 1` to `seq` (a
    // history reloaded after a crash, or one the writer had not caught up
    // with, may not).
    let start = history.partition_point(|(s, _)| *s <= last_seq);
    let missed = history.len() - start;
    let contiguous = last_seq < seq
        && last_seq >= epoch_floor
        && history.get(start).is_some_and(|(s, _)| *s == last_seq + 1)
        && history.back().is_some_and(|(s, _)| *s == seq)
        && missed as u64 == seq - last_seq;
    if in_sync && contiguous && missed <= free {
        Resume::Replay { start }
    } else {
        Resume::Snapshot
    }
}

/// How to answer a student's `resume`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StudentResume {
    /// Everything the student missed is in the replay.
    pub recovered: bool,
    /// Replay `announcements[start..]`.
    pub start: usize,
}

/// `announcements` are the kept ones, in seq order; every announcement
/// after `floor` is among them (older ones may have fallen out, or never
/// been kept: an unclean end, a gap in the cluster's stream); `seq` is the
/// room's latest. A `last_seq` ahead of `seq` is a numbering the room never
/// issued (a server that lost its data): not recovered. Not recovered, the
/// student gets every kept announcement.
pub(super) fn plan_student<T>(
    announcements: &VecDeque<(Seq, T)>,
    last_seq: Seq,
    seq: Seq,
    floor: Seq,
) -> StudentResume {
    if last_seq >= floor && last_seq <= seq {
        StudentResume {
            recovered: true,
            start: announcements.partition_point(|(s, _)| *s <= last_seq),
        }
    } else {
        StudentResume {
            recovered: false,
            start: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recovered(start: usize) -> StudentResume {
        StudentResume {
            recovered: true,
            start,
        }
    }

    const LOST: StudentResume = StudentResume {
        recovered: false,
        start: 0,
    };

    #[test]
    fn a_student_who_missed_only_kept_announcements_is_recovered() {
        let kept: VecDeque<(Seq, ())> = [(3, ()), (7, ()), (9, ())].into();
        assert_eq!(plan_student(&kept, 5, 12, 2), recovered(1));
        // The floor itself: the announcement at it was seen, none is lost.
        assert_eq!(plan_student(&kept, 2, 12, 2), recovered(0));
    }

    #[test]
    fn a_student_with_nothing_missed_is_recovered_with_nothing() {
        let kept: VecDeque<(Seq, ())> = [(3, ()), (7, ())].into();
        assert_eq!(plan_student(&kept, 12, 12, 2), recovered(2));
        assert_eq!(
            plan_student(&VecDeque::<(Seq, ())>::new(), 0, 0, 0),
            recovered(0)
        );
    }

    #[test]
    fn a_student_from_below_the_floor_or_the_future_gets_every_kept_one() {
        let kept: VecDeque<(Seq, ())> = [(3, ()), (7, ())].into();
        assert_eq!(plan_student(&kept, 1, 12, 2), LOST);
        assert_eq!(plan_student(&kept, 13, 12, 0), LOST);
    }

    fn history(seqs: std::ops::RangeInclusive<Seq>) -> VecDeque<(Seq, ())> {
        seqs.map(|s| (s, ())).collect()
    }

    #[test]
    fn an_up_to_date_teacher_gets_nothing() {
        assert_eq!(
            plan(&history(1..=10), 10, 10, 0, true, 100),
            Resume::UpToDate
        );
    }

    #[test]
    fn the_missed_events_are_replayed_when_they_fit() {
        assert_eq!(
            plan(&history(1..=10), 7, 10, 0, true, 3),
            Resume::Replay { start: 7 }
        );
    }

    #[test]
    fn a_replay_larger_than_the_free_queue_is_a_snapshot() {
        assert_eq!(plan(&history(1..=10), 7, 10, 0, true, 2), Resume::Snapshot);
        assert_eq!(plan(&history(1..=10), 0, 10, 0, true, 9), Resume::Snapshot);
    }

    #[test]
    fn a_seq_older_than_the_history_is_a_snapshot() {
        assert_eq!(
            plan(&history(5..=10), 2, 10, 0, true, 100),
            Resume::Snapshot
        );
    }

    #[test]
    fn a_hole_in_the_history_is_a_snapshot() {
        let mut h = history(1..=10);
        h.retain(|(s, _)| *s != 8);
        assert_eq!(plan(&h, 6, 10, 0, true, 100), Resume::Snapshot);
    }

    #[test]
    fn before_an_unclean_end_or_from_the_future_is_a_snapshot() {
        assert_eq!(
            plan(&history(1..=10), 3, 10, 5, true, 100),
            Resume::Snapshot
        );
        assert_eq!(
            plan(&history(1..=10), 12, 10, 0, true, 100),
            Resume::Snapshot
        );
    }

    #[test]
    fn a_teacher_not_in_sync_gets_a_snapshot() {
        assert_eq!(
            plan(&history(1..=10), 7, 10, 0, false, 100),
            Resume::Snapshot
        );
    }
}
