//! Every SQL statement examwatch runs, in one place, written once for both
//! databases.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Store, StoreError, writer::Record};
use crate::protocol::{Seq, StudentState};

/// Commits one batch of records in a single transaction.
pub(super) async fn write_batch(
    store: &Store,
    batch: &[Record],
    stats: &crate::metrics::DbMetrics,
) -> Result<(), StoreError> {
    let mut tx = store.write_tx().await?;
    let mut events: Vec<&Record> = Vec::new();
    for record in batch {
        // Events (the bulk) go in multi-row INSERTs: one statement, one
        // round trip to the database thread, for up to EVENT_ROWS rows.
        if matches!(record, Record::Event { .. }) {
            events.push(record);
            if events.len() == EVENT_ROWS {
                insert_events(store.backend(), &mut tx, &events, stats).await?;
                events.clear();
            }
            continue;
        }
        if !events.is_empty() {
            insert_events(store.backend(), &mut tx, &events, stats).await?;
            events.clear();
        }
        match record {
            Record::Event { .. } => {}
            Record::SeqReserved {
                exam_id, reserved, ..
            } => {
                sqlx::query(
                    "INSERT INTO exam_seq (exam_id, reserved) VALUES ($1, $2) \
                     ON CONFLICT (exam_id) DO UPDATE SET reserved = excluded.reserved",
                )
                .bind(exam_id.as_ref())
                .bind(*reserved)
                .execute(tx.conn())
                .await?;
            }
            Record::SessionOpened {
                id,
                exam_id,
                user_id,
                role,
                at,
                ip,
                user_agent,
                instance_id,
            } => {
                sqlx::query(
                    "INSERT INTO sessions (id, exam_id, user_id, role, connected_at, ip, user_agent, instance_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
                )
                .bind(id.as_str())
                .bind(exam_id.as_ref())
                .bind(user_id.as_str())
                .bind(*role)
                .bind(*at)
                .bind(ip.as_str())
                .bind(user_agent.as_str())
                .bind(instance_id.as_ref())
                .execute(tx.conn())
                .await?;
            }
            Record::SessionClosed {
                id,
                at,
                code,
                reason,
            } => {
                sqlx::query(
                    "UPDATE sessions SET disconnected_at = $2, close_code = $3, close_reason = $4 \
                     WHERE id = $1",
                )
                .bind(id.as_str())
                .bind(*at)
                .bind(*code)
                .bind(reason.as_str())
                .execute(tx.conn())
                .await?;
            }
            Record::TeacherAction {
                exam_id,
                actor_id,
                action,
                payload,
                at,
            } => {
                sqlx::query(
                    "INSERT INTO teacher_actions (exam_id, actor_id, action, payload, at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(exam_id.as_ref())
                .bind(actor_id.as_str())
                .bind(*action)
                .bind(payload.as_str())
                .bind(*at)
                .execute(tx.conn())
                .await?;
            }
            Record::Answer {
                exam_id,
                student_id,
                answer_id,
                question,
                value,
                at,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO answers (exam_id, student_id, answer_id, question, value, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (exam_id, student_id, answer_id) DO NOTHING",
                )
                .bind(exam_id.as_ref())
                .bind(student_id.as_ref())
                .bind(answer_id.as_str())
                .bind(question.as_str())
                .bind(value.as_str())
                .bind(*at)
                .execute(tx.conn())
                .await?;
            }
            Record::Submission {
                exam_id,
                student_id,
                at,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO submissions (exam_id, student_id, submitted_at) \
                     VALUES ($1, $2, $3) ON CONFLICT (exam_id, student_id) DO NOTHING",
                )
                .bind(exam_id.as_ref())
                .bind(student_id.as_ref())
                .bind(*at)
                .execute(tx.conn())
                .await?;
            }
            Record::Alert(row) => super::alerts::insert(tx.conn(), row).await?,
        }
    }
    if !events.is_empty() {
        insert_events(store.backend(), &mut tx, &events, stats).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Rows per multi-row event INSERT (6 parameters each).
const EVENT_ROWS: usize = 100;

/// The multi-row event INSERT for `rows` rows. SQLite gets anonymous `?`
/// placeholders: sqlx looks up each numbered one by name, and SQLite finds a
/// name by a linear scan, so 600 `$N` cost 180,000 comparisons per statement
/// (7.7 % of the server's CPU at 20k events/s, by `perf`). PostgreSQL only
/// speaks `$N`, and looks them up by number. The full-size statement (most
/// batches under load) is built once per backend.
fn event_insert_sql(backend: super::Backend, rows: usize) -> String {
    static FULL: [std::sync::OnceLock<String>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    let build = || {
        let mut sql = String::from(
            "INSERT INTO events (exam_id, seq, at, student_id, kind, payload) VALUES ",
        );
        push_values(&mut sql, backend, rows, 6);
        sql.push_str(" ON CONFLICT (exam_id, seq) DO NOTHING");
        sql
    };
    if rows == EVENT_ROWS {
        let slot = &FULL[usize::from(backend == super::Backend::Postgres)];
        slot.get_or_init(build).clone()
    } else {
        build()
    }
}

/// Appends the placeholders of a multi-row `VALUES` list of `rows` rows
/// of `cols` parameters each: anonymous `?` for SQLite, `$N` for
/// PostgreSQL (see [`event_insert_sql`] for why).
pub(super) fn push_values(sql: &mut String, backend: super::Backend, rows: usize, cols: usize) {
    use std::fmt::Write as _;
    for i in 0..rows {
        sql.push_str(if i > 0 { ",(" } else { "(" });
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            if backend == super::Backend::Sqlite {
                sql.push('?');
            } else {
                let _ = write!(sql, "${}", i * cols + c + 1);
            }
        }
        sql.push(')');
    }
}

async fn insert_events(
    backend: super::Backend,
    tx: &mut super::tx::WriteTx,
    events: &[&Record],
    stats: &crate::metrics::DbMetrics,
) -> Result<(), StoreError> {
    let sql = event_insert_sql(backend, events.len());
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for record in events {
        if let Record::Event {
            exam_id,
            seq,
            at,
            student_id,
            kind,
            payload,
        } = record
        {
            query = query
                .bind(exam_id.as_ref())
                .bind(*seq)
                .bind(*at)
                .bind(student_id.as_deref())
                .bind(*kind)
                .bind(payload.as_str());
        }
    }
    let done = query.execute(tx.conn()).await?;
    let collided = events.len() as u64 - done.rows_affected().min(events.len() as u64);
    if collided > 0 {
        // Only a re-issued seq can collide; seq reservation is there to
        // make this impossible, so it must be loud.
        stats.collisions.increment(collided);
        tracing::error!(collided, "events whose seq was already in the log");
    }
    Ok(())
}

/// What a room needs to pick up where the last one left off.
#[derive(Default)]
pub struct ExamState {
    pub last_seq: Seq,
    /// The seq reservation left by the previous room (0 if none). Above
    /// `last_seq` means that room did not end cleanly: seqs up to here may
    /// have reached teachers without reaching the log.
    pub reserved: Seq,
    /// Each student's state as of their last `student` event.
    pub students: Vec<StudentState>,
    /// Questions with at least one stored answer, per student.
    pub answered: HashMap<String, HashSet<String>>,
    /// Submission time (unix ms) per student.
    pub submitted: HashMap<String, i64>,
    /// Every student with a session in the exam, with their roster name
    /// if they are on its roster. Read only when the log keeps no
    /// `student` events: a student who connected but stored nothing is
    /// known from their session alone.
    pub seen: HashMap<String, Option<String>>,
    /// The newest events (oldest first), to serve `resume` after a restart.
    pub history: Vec<(Seq, String)>,
}

#[derive(Deserialize)]
struct StudentEvent {
    student: StudentState,
}

impl Store {
    /// Loads an exam's durable state for a room that is starting.
    /// `logged`: whether the event log holds every event (`events.persist`);
    /// if not, an exam with no event in its log may still have answers and
    /// submissions, so they are read anyway.
    pub async fn load_exam_state(
        &self,
        exam_id: &str,
        history: usize,
        logged: bool,
    ) -> Result<ExamState, StoreError> {
        let pool = self.pool();
        let last_seq: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM events WHERE exam_id = $1")
                .bind(exam_id)
                .fetch_one(pool)
                .await?;
        let reserved: Option<i64> =
            sqlx::query_scalar("SELECT reserved FROM exam_seq WHERE exam_id = $1")
                .bind(exam_id)
                .fetch_optional(pool)
                .await?;
        let mut state = ExamState {
            last_seq: last_seq.unwrap_or(0).max(0) as Seq,
            reserved: reserved.unwrap_or(0).max(0) as Seq,
            ..ExamState::default()
        };
        if state.last_seq == 0 && logged {
            return Ok(state);
        }
        state.students = self.student_states(exam_id).await?;
        state.answered = self.answered_by_student(exam_id).await?;
        state.submitted = self.submissions(exam_id).await?;
        if !logged {
            let rows = sqlx::query(
                "SELECT DISTINCT s.user_id, r.name FROM sessions s \
                 LEFT JOIN roster r ON r.exam_id = s.exam_id AND r.student_id = s.user_id \
                 WHERE s.exam_id = $1 AND s.role = 'student'",
            )
            .bind(exam_id)
            .fetch_all(pool)
            .await?;
            for row in rows {
                let (id, name): (String, Option<String>) = (row.try_get(0)?, row.try_get(1)?);
                state.seen.insert(id, name);
            }
        }
        let rows = sqlx::query(
            "SELECT seq, payload FROM events WHERE exam_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(exam_id)
        .bind(history as i64)
        .fetch_all(pool)
        .await?;
        for row in rows.into_iter().rev() {
            let seq: i64 = row.try_get(0)?;
            state.history.push((seq as Seq, row.try_get(1)?));
        }
        Ok(state)
    }

    /// Events after `after_seq`, oldest first, at most `limit`.
    pub async fn timeline(
        &self,
        exam_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, payload FROM events WHERE exam_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(exam_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// One student's stored answers, oldest first.
    pub async fn answers(
        &self,
        exam_id: &str,
        student_id: &str,
    ) -> Result<Vec<StoredAnswer>, StoreError> {
        let rows = sqlx::query(
            "SELECT answer_id, question, value, updated_at FROM answers \
             WHERE exam_id = $1 AND student_id = $2 ORDER BY updated_at, answer_id",
        )
        .bind(exam_id)
        .bind(student_id)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| {
                let value: String = r.try_get(2)?;
                Ok(StoredAnswer {
                    id: r.try_get(0)?,
                    question: r.try_get(1)?,
                    value: serde_json::from_str(&value)
                        .map_err(|e| StoreError::Corrupt(format!("answer value: {e}")))?,
                    updated_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Every session of an exam, ordered per user by connect time.
    pub async fn sessions(&self, exam_id: &str) -> Result<Vec<SessionSpan>, StoreError> {
        let rows = sqlx::query(
            "SELECT user_id, connected_at, disconnected_at FROM sessions \
             WHERE exam_id = $1 AND role = 'student' ORDER BY user_id, connected_at",
        )
        .bind(exam_id)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(SessionSpan {
                    user_id: r.try_get(0)?,
                    connected_at: r.try_get(1)?,
                    disconnected_at: r.try_get(2)?,
                })
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StoredAnswer {
    /// The client-generated answer id.
    pub id: String,
    pub question: String,
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    /// Unix milliseconds.
    pub updated_at: i64,
}

pub struct SessionSpan {
    pub user_id: String,
    pub connected_at: i64,
    pub disconnected_at: Option<i64>,
}

/// An exam's roster: student id → (name, allowed). Empty = no roster.
pub type Roster = HashMap<String, (String, bool)>;

impl Store {
    /// The roster of an exam (empty if the exam has none or does not exist).
    pub async fn roster(&self, exam_id: &str) -> Result<Roster, StoreError> {
        let rows = sqlx::query("SELECT student_id, name, allowed FROM roster WHERE exam_id = $1")
            .bind(exam_id)
            .fetch_all(self.pool())
            .await?;
        rows.into_iter()
            .map(|r| {
                let allowed: i64 = r.try_get(2)?;
                Ok((r.try_get(0)?, (r.try_get(1)?, allowed != 0)))
            })
            .collect()
    }
}

/// An exam as stored.
pub struct ExamRow {
    pub id: String,
    pub title: String,
    pub settings: String,
    pub created_by: String,
    pub created_at: i64,
    pub roster_size: i64,
    /// The phase and timing model.
    pub clock: crate::control::ExamClock,
    pub version: i64,
}

const EXAM_COLUMNS: &str = "SELECT id, title, settings, created_by, created_at, \
     (SELECT COUNT(*) FROM roster r WHERE r.exam_id = exams.id) AS roster_size, \
     phase, timing, opens_at, closes_at, duration_ms, auto_start, started_at, ended_at, pauses, version FROM exams";

fn exam_row(r: sqlx::any::AnyRow) -> Result<ExamRow, StoreError> {
    let (clock, version) = super::control::clock_from_row(&r, 6)?;
    Ok(ExamRow {
        id: r.try_get(0)?,
        title: r.try_get(1)?,
        settings: r.try_get(2)?,
        created_by: r.try_get(3)?,
        created_at: r.try_get(4)?,
        roster_size: r.try_get(5)?,
        clock,
        version,
    })
}

impl Store {
    /// Creates an exam with its roster; `Conflict` if the id is taken.
    pub async fn create_exam(
        &self,
        exam: &ExamRow,
        roster: &[(String, String, bool)],
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let inserted = sqlx::query(
            "INSERT INTO exams (id, title, phase, starts_at, duration_secs, settings, created_by, created_at, \
             timing, opens_at, closes_at, duration_ms, auto_start, started_at, pauses) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, '[]') ON CONFLICT (id) DO NOTHING",
        )
        .bind(exam.id.as_str())
        .bind(exam.title.as_str())
        .bind(exam.clock.phase.as_str())
        .bind(exam.clock.opens_at)
        .bind(exam.clock.duration_ms.map(|ms| ms / 1000))
        .bind(exam.settings.as_str())
        .bind(exam.created_by.as_str())
        .bind(exam.created_at)
        .bind(super::control::timing_str(exam.clock.timing))
        .bind(exam.clock.opens_at)
        .bind(exam.clock.closes_at)
        .bind(exam.clock.duration_ms)
        .bind(i64::from(exam.clock.auto_start))
        .bind(exam.clock.started_at)
        .execute(tx.conn())
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict);
        }
        insert_roster(&mut tx, &exam.id, roster).await?;
        record_action(
            &mut tx,
            &exam.id,
            &exam.created_by,
            "create_exam",
            roster.len(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn exam(&self, id: &str) -> Result<Option<ExamRow>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!("{EXAM_COLUMNS} WHERE id = $1"));
        match sqlx::query(sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?
        {
            Some(r) => Ok(Some(exam_row(r)?)),
            None => Ok(None),
        }
    }

    /// All exams, newest first.
    pub async fn exams(&self) -> Result<Vec<ExamRow>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!("{EXAM_COLUMNS} ORDER BY created_at DESC, id"));
        let rows = sqlx::query(sql).fetch_all(self.pool()).await?;
        rows.into_iter().map(exam_row).collect()
    }

    /// Replaces an exam's roster; `NotFound` if the exam does not exist.
    pub async fn replace_roster(
        &self,
        exam_id: &str,
        actor: &str,
        roster: &[(String, String, bool)],
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        // Write first, read second: on SQLite a transaction that read before
        // its first write fails at once with SQLITE_BUSY (no busy wait) if
        // the event writer committed in between; one that starts by writing
        // waits for the lock like any other writer.
        sqlx::query("DELETE FROM roster WHERE exam_id = $1")
            .bind(exam_id)
            .execute(tx.conn())
            .await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM exams WHERE id = $1")
            .bind(exam_id)
            .fetch_optional(tx.conn())
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        insert_roster(&mut tx, exam_id, roster).await?;
        record_action(&mut tx, exam_id, actor, "replace_roster", roster.len()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every student's questions with a stored answer, in one query: what
    /// a burst of joins reads when Redis cannot say (`ws::answered`).
    pub async fn answered_sets(
        &self,
        exam_id: &str,
    ) -> Result<HashMap<String, HashSet<String>>, StoreError> {
        self.answered_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.answered_by_student(exam_id).await
    }

    async fn answered_by_student(
        &self,
        exam_id: &str,
    ) -> Result<HashMap<String, HashSet<String>>, StoreError> {
        let rows =
            sqlx::query("SELECT DISTINCT student_id, question FROM answers WHERE exam_id = $1")
                .bind(exam_id)
                .fetch_all(self.pool())
                .await?;
        let mut answered: HashMap<String, HashSet<String>> = HashMap::new();
        for row in rows {
            let (student, question): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            answered.entry(student).or_default().insert(question);
        }
        Ok(answered)
    }

    /// Whether the exam exists: created through the API, or seen live (an
    /// event in its log, or a student's session: with `events.persist =
    /// false` the log may hold nothing of an exam that was sat). A teacher's
    /// session alone does not count: a socket on a mistyped exam id must
    /// not turn REST's 404 into an empty 200.
    pub async fn exam_known(&self, exam_id: &str) -> Result<bool, StoreError> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT id FROM exams WHERE id = $1 \
             UNION ALL SELECT exam_id FROM events WHERE exam_id = $1 \
             UNION ALL SELECT exam_id FROM sessions WHERE exam_id = $1 AND role = 'student' LIMIT 1",
        )
        .bind(exam_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(found.is_some())
    }

    /// Each student's last known state, from their latest `student` event.
    pub async fn student_states(&self, exam_id: &str) -> Result<Vec<StudentState>, StoreError> {
        let rows = sqlx::query(
            "SELECT e.payload FROM events e \
             JOIN (SELECT student_id, MAX(seq) AS seq FROM events \
                   WHERE exam_id = $1 AND kind = 'student' GROUP BY student_id) m \
             ON e.student_id = m.student_id AND e.seq = m.seq \
             WHERE e.exam_id = $1 ORDER BY e.student_id",
        )
        .bind(exam_id)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|row| {
                let payload: String = row.try_get(0)?;
                serde_json::from_str::<StudentEvent>(&payload)
                    .map(|e| e.student)
                    .map_err(|e| StoreError::Corrupt(format!("student event: {e}")))
            })
            .collect()
    }

    /// Submission times (unix ms) per student.
    pub async fn submissions(&self, exam_id: &str) -> Result<HashMap<String, i64>, StoreError> {
        let rows =
            sqlx::query("SELECT student_id, submitted_at FROM submissions WHERE exam_id = $1")
                .bind(exam_id)
                .fetch_all(self.pool())
                .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Distinct answered questions per student.
    pub async fn answered_counts(&self, exam_id: &str) -> Result<HashMap<String, i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT student_id, COUNT(DISTINCT question) FROM answers WHERE exam_id = $1 GROUP BY student_id",
        )
        .bind(exam_id)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}

async fn insert_roster(
    tx: &mut super::tx::WriteTx,
    exam_id: &str,
    roster: &[(String, String, bool)],
) -> Result<(), StoreError> {
    for (student_id, name, allowed) in roster {
        sqlx::query(
            "INSERT INTO roster (exam_id, student_id, name, allowed) VALUES ($1, $2, $3, $4)",
        )
        .bind(exam_id)
        .bind(student_id.as_str())
        .bind(name.as_str())
        .bind(i64::from(*allowed))
        .execute(tx.conn())
        .await?;
    }
    Ok(())
}

async fn record_action(
    tx: &mut super::tx::WriteTx,
    exam_id: &str,
    actor: &str,
    action: &str,
    roster_size: usize,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO teacher_actions (exam_id, actor_id, action, payload, at) VALUES ($1, $2, $3, $4, $5)")
        .bind(exam_id)
        .bind(actor)
        .bind(action)
        .bind(serde_json::json!({ "roster_size": roster_size }).to_string())
        .bind(super::now_ms())
        .execute(tx.conn())
        .await?;
    Ok(())
}
