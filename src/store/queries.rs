//! Every SQL statement examwatch runs, in one place, written once for both
//! databases.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Store, StoreError, writer::Record};
use crate::protocol::{Seq, StudentState};

/// Commits one batch of records in a single transaction.
pub(super) async fn write_batch(store: &Store, batch: &[Record]) -> Result<(), StoreError> {
    let mut tx = store.pool().begin().await?;
    for record in batch {
        match record {
            Record::Event {
                exam_id,
                seq,
                at,
                student_id,
                kind,
                payload,
            } => {
                sqlx::query(
                    "INSERT INTO events (exam_id, seq, at, student_id, kind, payload) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (exam_id, seq) DO NOTHING",
                )
                .bind(exam_id.as_ref())
                .bind(*seq)
                .bind(*at)
                .bind(student_id.as_deref())
                .bind(*kind)
                .bind(payload.as_str())
                .execute(&mut *tx)
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
                .execute(&mut *tx)
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
                .execute(&mut *tx)
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
                .execute(&mut *tx)
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
                .execute(&mut *tx)
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
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

/// What a room needs to pick up where the last one left off.
#[derive(Default)]
pub struct ExamState {
    pub last_seq: Seq,
    /// Each student's state as of their last `student` event.
    pub students: Vec<StudentState>,
    /// Questions with at least one stored answer, per student.
    pub answered: HashMap<String, HashSet<String>>,
    /// Submission time (unix ms) per student.
    pub submitted: HashMap<String, i64>,
    /// The newest events (oldest first), to serve `resume` after a restart.
    pub history: Vec<(Seq, String)>,
}

#[derive(Deserialize)]
struct StudentEvent {
    student: StudentState,
}

impl Store {
    /// Loads an exam's durable state for a room that is starting.
    pub async fn load_exam_state(
        &self,
        exam_id: &str,
        history: usize,
    ) -> Result<ExamState, StoreError> {
        let pool = self.pool();
        let last_seq: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM events WHERE exam_id = $1")
                .bind(exam_id)
                .fetch_one(pool)
                .await?;
        let mut state = ExamState {
            last_seq: last_seq.unwrap_or(0).max(0) as Seq,
            ..ExamState::default()
        };
        if state.last_seq == 0 {
            return Ok(state);
        }
        let rows = sqlx::query(
            "SELECT e.payload FROM events e \
             JOIN (SELECT student_id, MAX(seq) AS seq FROM events \
                   WHERE exam_id = $1 AND kind = 'student' GROUP BY student_id) m \
             ON e.student_id = m.student_id AND e.seq = m.seq \
             WHERE e.exam_id = $1",
        )
        .bind(exam_id)
        .fetch_all(pool)
        .await?;
        for row in rows {
            let payload: String = row.try_get(0)?;
            let ev: StudentEvent = serde_json::from_str(&payload)
                .map_err(|e| StoreError::Corrupt(format!("student event: {e}")))?;
            state.students.push(ev.student);
        }
        let rows =
            sqlx::query("SELECT DISTINCT student_id, question FROM answers WHERE exam_id = $1")
                .bind(exam_id)
                .fetch_all(pool)
                .await?;
        for row in rows {
            let (student, question): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            state.answered.entry(student).or_default().insert(question);
        }
        let rows =
            sqlx::query("SELECT student_id, submitted_at FROM submissions WHERE exam_id = $1")
                .bind(exam_id)
                .fetch_all(pool)
                .await?;
        for row in rows {
            state.submitted.insert(row.try_get(0)?, row.try_get(1)?);
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
