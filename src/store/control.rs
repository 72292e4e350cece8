//! Exam control in the database: the exam's clock (phase, timing, pauses)
//! and each student's control record. The database is the truth an
//! instance starts from; the events that announce a change carry the new
//! record and its version, so a room never needs to read it back.
//!
//! Changes are read-modify-write under optimistic concurrency: the row is
//! read, changed by the pure code in `control/`, and written back only if
//! its `version` is still the one read (else read again). No lock is held
//! across the computation and the same SQL runs on SQLite and PostgreSQL.
//! Columns with a single writer of their own (`started_at`, `finished`)
//! are set with conditional UPDATEs instead, which also makes exactly one
//! instance of a cluster win a deadline or an automatic phase change.

use std::collections::HashMap;

use sqlx::Row;

use super::{Store, StoreError};
use crate::control::{ExamClock, Finish, Phase, Span, StudentClock, StudentControl, Timing};

/// Rows per multi-row `student_control` INSERT (3 parameters each).
const START_ROWS: usize = 200;

/// Attempts of an optimistic update before giving up (each lost one means
/// another change landed in between).
const ATTEMPTS: usize = 8;

pub(super) const CLOCK_COLUMNS: &str = "phase, timing, opens_at, closes_at, duration_ms, auto_start, started_at, ended_at, pauses, version";

/// Reads the clock columns of an exam row, from `first` on.
pub(super) fn clock_from_row(
    r: &sqlx::any::AnyRow,
    first: usize,
) -> Result<(ExamClock, i64), StoreError> {
    let phase: String = r.try_get(first)?;
    let timing: String = r.try_get(first + 1)?;
    let pauses: String = r.try_get(first + 8)?;
    let auto_start: i64 = r.try_get(first + 5)?;
    let clock = ExamClock {
        phase: Phase::parse(&phase)
            .ok_or_else(|| StoreError::Corrupt(format!("exam phase {phase:?}")))?,
        timing: match timing.as_str() {
            "per_student" => Timing::PerStudent,
            _ => Timing::Fixed,
        },
        opens_at: r.try_get(first + 2)?,
        closes_at: r.try_get(first + 3)?,
        duration_ms: r.try_get(first + 4)?,
        auto_start: auto_start != 0,
        started_at: r.try_get(first + 6)?,
        ended_at: r.try_get(first + 7)?,
        pauses: parse_spans(&pauses)?,
    };
    Ok((clock, r.try_get(first + 9)?))
}

fn parse_spans(s: &str) -> Result<Vec<Span>, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("pauses: {e}")))
}

fn spans_json(spans: &[Span]) -> String {
    serde_json::to_string(spans).unwrap_or_else(|_| "[]".into())
}

pub fn timing_str(t: Timing) -> &'static str {
    match t {
        Timing::Fixed => "fixed",
        Timing::PerStudent => "per_student",
    }
}

/// The result of asking for a phase change.
#[derive(Debug)]
pub enum PhaseChange {
    /// Done: the new clock and its version.
    Changed(ExamClock, i64),
    /// Not a drawn transition from the current phase.
    Invalid { from: Phase },
    /// The phase was no longer the expected one (a timer lost the race).
    Skipped,
}

const STUDENT_COLUMNS: &str = "student_id, extra_minutes, time_multiplier, extension_ms, started_at, pauses, \
     finished, finished_at, denied, deny_reason, reset_at, version, applied_actions";

fn student_from_row(r: &sqlx::any::AnyRow) -> Result<(String, StudentControl), StoreError> {
    let extra: i64 = r.try_get(1)?;
    let pauses: String = r.try_get(5)?;
    let finished: Option<String> = r.try_get(6)?;
    let finished_at: Option<i64> = r.try_get(7)?;
    let denied: i64 = r.try_get(8)?;
    let control = StudentControl {
        clock: StudentClock {
            extra_minutes: u32::try_from(extra.max(0)).unwrap_or(u32::MAX),
            multiplier: r.try_get(2)?,
            extension_ms: r.try_get(3)?,
            started_at: r.try_get(4)?,
            pauses: parse_spans(&pauses)?,
        },
        finished: finished
            .as_deref()
            .and_then(Finish::parse)
            .map(|f| (f, finished_at.unwrap_or(0))),
        denied: denied != 0,
        deny_reason: r.try_get(9)?,
        reset_at: r.try_get(10)?,
        version: r.try_get(11)?,
        applied: r
            .try_get::<Option<String>, _>(12)?
            .and_then(|a| serde_json::from_str(&a).ok())
            .unwrap_or_default(),
    };
    Ok((r.try_get(0)?, control))
}

/// What the handshake needs to know of an exam: its phase (`None`: no
/// such exam) and the students denied access, with the reason.
#[derive(Debug, Default)]
pub struct Gate {
    pub phase: Option<Phase>,
    /// The exam's clock and version, handed to the room with each join so
    /// a room that started before the exam existed (or heard of a change
    /// late) is brought up to date before the student's `welcome`.
    pub clock: Option<(ExamClock, i64)>,
    pub denied: HashMap<String, String>,
}

impl Store {
    pub async fn exam_gate(&self, exam_id: &str) -> Result<Gate, StoreError> {
        let clock = self.exam_clock(exam_id).await?;
        let rows = sqlx::query(
            "SELECT student_id, deny_reason FROM student_control WHERE exam_id = $1 AND denied = 1",
        )
        .bind(exam_id)
        .fetch_all(self.pool())
        .await?;
        let denied = rows
            .iter()
            .map(|r| {
                let reason: Option<String> = r.try_get(1)?;
                Ok((
                    r.try_get(0)?,
                    reason.unwrap_or_else(|| "access_revoked".into()),
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Gate {
            phase: clock.as_ref().map(|(c, _)| c.phase),
            clock,
            denied,
        })
    }

    /// Exams whose clock needs a room running: an automatic start before
    /// `horizon`, or an exam in progress with a timing (an end, deadlines).
    pub async fn exams_with_running_clocks(&self, horizon: i64) -> Result<Vec<String>, StoreError> {
        let ids = sqlx::query_scalar(
            "SELECT id FROM exams WHERE \
             (phase = 'scheduled' AND auto_start = 1 AND opens_at IS NOT NULL AND opens_at <= $1) \
             OR (phase = 'in_progress' AND (closes_at IS NOT NULL OR duration_ms IS NOT NULL))",
        )
        .bind(horizon)
        .fetch_all(self.pool())
        .await?;
        Ok(ids)
    }

    /// The exam's clock and its version; `None` if there is no such exam.
    pub async fn exam_clock(&self, exam_id: &str) -> Result<Option<(ExamClock, i64)>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {CLOCK_COLUMNS} FROM exams WHERE id = $1"));
        match sqlx::query(sql)
            .bind(exam_id)
            .fetch_optional(self.pool())
            .await?
        {
            Some(r) => Ok(Some(clock_from_row(&r, 0)?)),
            None => Ok(None),
        }
    }

    /// Moves the exam to `to` at `now`. With `expect`, only from that phase
    /// (an automatic change: whoever finds it changed lost the race).
    pub async fn change_phase(
        &self,
        exam_id: &str,
        to: Phase,
        expect: Option<Phase>,
        now: i64,
    ) -> Result<PhaseChange, StoreError> {
        for _ in 0..ATTEMPTS {
            let (mut clock, version) = self
                .exam_clock(exam_id)
                .await?
                .ok_or(StoreError::NotFound)?;
            if expect.is_some_and(|p| p != clock.phase) {
                return Ok(PhaseChange::Skipped);
            }
            let from = clock.phase;
            if clock.set_phase(to, now).is_err() {
                return Ok(PhaseChange::Invalid { from });
            }
            if self.write_clock(exam_id, &clock, version).await? {
                return Ok(PhaseChange::Changed(clock, version + 1));
            }
        }
        Err(StoreError::Db(sqlx::Error::PoolTimedOut))
    }

    /// Writes a changed clock if the row is still at `version`.
    pub async fn write_clock(
        &self,
        exam_id: &str,
        clock: &ExamClock,
        version: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE exams SET phase = $1, timing = $2, opens_at = $3, closes_at = $4, duration_ms = $5, \
             auto_start = $6, started_at = $7, ended_at = $8, pauses = $9, version = version + 1, \
             starts_at = $3, duration_secs = $10 WHERE id = $11 AND version = $12",
        )
        .bind(clock.phase.as_str())
        .bind(timing_str(clock.timing))
        .bind(clock.opens_at)
        .bind(clock.closes_at)
        .bind(clock.duration_ms)
        .bind(i64::from(clock.auto_start))
        .bind(clock.started_at)
        .bind(clock.ended_at)
        .bind(spans_json(&clock.pauses))
        .bind(clock.duration_ms.map(|ms| ms / 1000))
        .bind(exam_id)
        .bind(version)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every student control record of an exam.
    pub async fn student_controls(
        &self,
        exam_id: &str,
    ) -> Result<HashMap<String, StudentControl>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {STUDENT_COLUMNS} FROM student_control WHERE exam_id = $1"
        ));
        let rows = sqlx::query(sql)
            .bind(exam_id)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(student_from_row).collect()
    }

    pub async fn student_control(
        &self,
        exam_id: &str,
        student_id: &str,
    ) -> Result<Option<StudentControl>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {STUDENT_COLUMNS} FROM student_control WHERE exam_id = $1 AND student_id = $2"
        ));
        let row = sqlx::query(sql)
            .bind(exam_id)
            .bind(student_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref()
            .map(student_from_row)
            .transpose()
            .map(|r| r.map(|(_, c)| c))
    }

    /// Changes one student's record with `change` (which may refuse with
    /// its own error) and writes it back; creates the row if there is none.
    /// Returns the record as written, with its new version.
    pub async fn update_student_control<E>(
        &self,
        exam_id: &str,
        student_id: &str,
        mut change: impl FnMut(&mut StudentControl) -> Result<(), E>,
    ) -> Result<Result<StudentControl, E>, StoreError> {
        for _ in 0..ATTEMPTS {
            let current = self.student_control(exam_id, student_id).await?;
            let existed = current.is_some();
            let mut control = current.unwrap_or_default();
            let version = control.version;
            if let Err(e) = change(&mut control) {
                return Ok(Err(e));
            }
            control.version = version + 1;
            if self
                .write_student_control(exam_id, student_id, &control, existed.then_some(version))
                .await?
            {
                return Ok(Ok(control));
            }
        }
        Err(StoreError::Db(sqlx::Error::PoolTimedOut))
    }

    /// Like [`Self::update_student_control`] for the proctor action
    /// `action_id`: the change is made at most once per student, however
    /// often the action is retried. Returns the record and whether this
    /// call changed it (false: the action had already, and nothing is
    /// written).
    pub async fn apply_student_action<E>(
        &self,
        exam_id: &str,
        student_id: &str,
        action_id: &str,
        mut change: impl FnMut(&mut StudentControl) -> Result<(), E>,
    ) -> Result<Result<(StudentControl, bool), E>, StoreError> {
        /// Why the change was not made.
        enum Not<E> {
            /// The action had changed this record already: nothing written.
            Again(Box<StudentControl>),
            Refused(E),
        }
        // Checked in the same versioned read-change-write as the change,
        // so two appliers of one id (a retry that took over an abandoned
        // claim, store/actions.rs) still change each student once.
        let written = self
            .update_student_control(exam_id, student_id, |c| {
                if c.has_applied(action_id) {
                    return Err(Not::Again(Box::new(c.clone())));
                }
                change(c).map_err(Not::Refused)?;
                c.mark_applied(action_id);
                Ok(())
            })
            .await?;
        Ok(match written {
            Ok(c) => Ok((c, true)),
            Err(Not::Again(c)) => Ok((*c, false)),
            Err(Not::Refused(e)) => Err(e),
        })
    }

    /// Inserts (`expected` None) or updates at `expected` version; false if
    /// another change won.
    async fn write_student_control(
        &self,
        exam_id: &str,
        student_id: &str,
        c: &StudentControl,
        expected: Option<i64>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let (finished, finished_at) = match c.finished {
            Some((f, at)) => (Some(f.as_str()), Some(at)),
            None => (None, None),
        };
        let sql = match expected {
            None => {
                "INSERT INTO student_control (extra_minutes, time_multiplier, extension_ms, started_at, pauses, \
                 finished, finished_at, denied, deny_reason, reset_at, version, applied_actions, exam_id, student_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (exam_id, student_id) DO NOTHING"
            }
            Some(_) => {
                "UPDATE student_control SET extra_minutes = $1, time_multiplier = $2, extension_ms = $3, \
                 started_at = COALESCE(started_at, $4), pauses = $5, finished = COALESCE(finished, $6), \
                 finished_at = COALESCE(finished_at, $7), denied = $8, deny_reason = $9, reset_at = $10, \
                 version = $11, applied_actions = $12 WHERE exam_id = $13 AND student_id = $14 AND version = $15"
            }
        };
        let mut query = sqlx::query(sql)
            .bind(i64::from(c.clock.extra_minutes))
            .bind(c.clock.multiplier)
            .bind(c.clock.extension_ms)
            .bind(c.clock.started_at)
            .bind(spans_json(&c.clock.pauses))
            .bind(finished)
            .bind(finished_at)
            .bind(i64::from(c.denied))
            .bind(c.deny_reason.as_deref())
            .bind(c.reset_at)
            .bind(c.version)
            .bind(
                (!c.applied.is_empty())
                    .then(|| serde_json::to_string(&c.applied).unwrap_or_default()),
            )
            .bind(exam_id)
            .bind(student_id);
        if let Some(version) = expected {
            query = query.bind(version);
        }
        let done = query.execute(tx.conn()).await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the instant each student's clock started, unless it already
    /// had (the first writer's instant stays); returns the stored instant
    /// of each, in one transaction (a room admits a hall at once: one
    /// commit for the students gathered while the previous one was out,
    /// not one each). A student named twice keeps the first instant.
    pub async fn mark_started(
        &self,
        exam_id: &str,
        starts: &[(std::sync::Arc<str>, i64)],
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let mut seen = std::collections::HashSet::new();
        let starts: Vec<&(std::sync::Arc<str>, i64)> = starts
            .iter()
            .filter(|(s, _)| seen.insert(s.clone()))
            .collect();
        let mut stored = Vec::with_capacity(starts.len());
        if starts.is_empty() {
            return Ok(stored);
        }
        let mut tx = self.write_tx().await?;
        for chunk in starts.chunks(START_ROWS) {
            let mut sql = String::from(
                "INSERT INTO student_control (exam_id, student_id, started_at) VALUES ",
            );
            super::queries::push_values(&mut sql, self.backend(), chunk.len(), 3);
            sql.push_str(
                " ON CONFLICT (exam_id, student_id) DO UPDATE SET started_at = COALESCE(student_control.started_at, excluded.started_at) \
                 RETURNING student_id, started_at",
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (student, at) in chunk {
                query = query.bind(exam_id).bind(student.as_ref()).bind(*at);
            }
            for row in query.fetch_all(tx.conn()).await? {
                let student: String = row.try_get(0)?;
                let at: Option<i64> = row.try_get(1)?;
                let asked = || chunk.iter().find(|(s, _)| **s == *student).map(|(_, a)| *a);
                if let Some(at) = at.or_else(asked) {
                    stored.push((student, at));
                }
            }
        }
        tx.commit().await?;
        Ok(stored)
    }

    /// Ends a student's exam as `finish` at `at`, once: true for the one
    /// caller (of every instance) that did it. The submission is stored
    /// with it, so the answers stop there, durably. A `time_up` for a
    /// student who already submitted does nothing (they keep `submitted`).
    pub async fn finish_student(
        &self,
        exam_id: &str,
        student_id: &str,
        finish: Finish,
        at: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let submitted = sqlx::query(
            "INSERT INTO submissions (exam_id, student_id, submitted_at) VALUES ($1, $2, $3) \
             ON CONFLICT (exam_id, student_id) DO NOTHING",
        )
        .bind(exam_id)
        .bind(student_id)
        .bind(at)
        .execute(tx.conn())
        .await?
        .rows_affected()
            == 1;
        if !submitted && finish == Finish::TimeUp {
            tx.commit().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO student_control (exam_id, student_id) VALUES ($1, $2) \
             ON CONFLICT (exam_id, student_id) DO NOTHING",
        )
        .bind(exam_id)
        .bind(student_id)
        .execute(tx.conn())
        .await?;
        let won = sqlx::query(
            "UPDATE student_control SET finished = $1, finished_at = $2, version = version + 1 \
             WHERE exam_id = $3 AND student_id = $4 AND finished IS NULL",
        )
        .bind(finish.as_str())
        .bind(at)
        .bind(exam_id)
        .bind(student_id)
        .execute(tx.conn())
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(won)
    }
}
