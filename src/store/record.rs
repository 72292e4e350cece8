//! One student's record for disputes (`GET /v1/exams/{id}/students/{sid}`):
//! the reads that gather their sessions, last stored state, answer count
//! and their own page of the event log.
//!
//! Off the live path, like every read here. The per-student event page
//! filters the exam's rows by `student_id`: there is deliberately no
//! `(exam_id, student_id, seq)` index (migration 0003 dropped it, because
//! it cost every event write a scattered page), so the read walks the
//! exam's events in seq order through the primary key and stops after
//! `limit` matches. A dispute read is rare; an event write is not.

use sqlx::Row;

use super::{Store, StoreError};
use crate::protocol::StudentState;

/// One WebSocket session of a student, as the server recorded it.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub session_id: String,
    pub opened_at: i64,
    /// `None` while open (or if the instance died before closing it).
    pub closed_at: Option<i64>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub instance_id: String,
    pub close_code: Option<i64>,
    pub close_reason: Option<String>,
}

impl Store {
    /// A student's sessions of one exam, oldest first.
    pub async fn student_sessions(
        &self,
        exam_id: &str,
        student_id: &str,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, connected_at, disconnected_at, ip, user_agent, instance_id, close_code, close_reason \
             FROM sessions WHERE exam_id = $1 AND user_id = $2 AND role = 'student' \
             ORDER BY connected_at, id",
        )
        .bind(exam_id)
        .bind(student_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionRow {
                    session_id: r.try_get(0)?,
                    opened_at: r.try_get(1)?,
                    closed_at: r.try_get(2)?,
                    ip: r.try_get(3)?,
                    user_agent: r.try_get(4)?,
                    instance_id: r.try_get(5)?,
                    close_code: r.try_get(6)?,
                    close_reason: r.try_get(7)?,
                })
            })
            .collect()
    }

    /// The peer IP and user agent of the student's latest session of the
    /// exam other than `except` (the one joining now), on any instance.
    pub async fn previous_client(
        &self,
        exam_id: &str,
        student_id: &str,
        except: &str,
    ) -> Result<Option<crate::room::signals::Client>, StoreError> {
        let row = sqlx::query(
            "SELECT ip, user_agent FROM sessions \
             WHERE exam_id = $1 AND user_id = $2 AND role = 'student' AND id <> $3 \
             ORDER BY connected_at DESC, id DESC LIMIT 1",
        )
        .bind(exam_id)
        .bind(student_id)
        .bind(except)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let ip: Option<String> = row.try_get(0)?;
        let user_agent: Option<String> = row.try_get(1)?;
        // Sessions record the peer as `ip:port`.
        let ip = ip.map(|a| match a.parse::<std::net::SocketAddr>() {
            Ok(addr) => addr.ip().to_string(),
            Err(_) => a,
        });
        Ok(Some(crate::room::signals::Client {
            ip: ip.filter(|v| !v.is_empty()),
            user_agent: user_agent.filter(|v| !v.is_empty()),
        }))
    }

    /// The student's state as of their latest `student` event, if any.
    pub async fn last_student_state(
        &self,
        exam_id: &str,
        student_id: &str,
    ) -> Result<Option<StudentState>, StoreError> {
        let payload: Option<String> = sqlx::query_scalar(
            "SELECT payload FROM events WHERE exam_id = $1 AND student_id = $2 AND kind = 'student' \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(exam_id)
        .bind(student_id)
        .fetch_optional(self.pool())
        .await?;
        #[derive(serde::Deserialize)]
        struct Event {
            student: StudentState,
        }
        payload
            .map(|p| {
                serde_json::from_str::<Event>(&p)
                    .map(|e| e.student)
                    .map_err(|e| StoreError::Corrupt(format!("student event: {e}")))
            })
            .transpose()
    }

    /// Distinct questions with a stored answer of this student.
    pub async fn answered_count(&self, exam_id: &str, student_id: &str) -> Result<i64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT question) FROM answers WHERE exam_id = $1 AND student_id = $2",
        )
        .bind(exam_id)
        .bind(student_id)
        .fetch_one(self.pool())
        .await?;
        Ok(n)
    }

    /// The student's events (`events.student_id`) after `after_seq`,
    /// oldest first, at most `limit`.
    pub async fn student_timeline(
        &self,
        exam_id: &str,
        student_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, payload FROM events WHERE exam_id = $1 AND seq > $2 AND student_id = $3 \
             ORDER BY seq LIMIT $4",
        )
        .bind(exam_id)
        .bind(after_seq)
        .bind(student_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Whether anything of this student was ever stored in this exam
    /// (an event, a session, a control record or a roster entry).
    pub async fn student_known(&self, exam_id: &str, student_id: &str) -> Result<bool, StoreError> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT student_id FROM roster WHERE exam_id = $1 AND student_id = $2 \
             UNION ALL SELECT student_id FROM student_control WHERE exam_id = $1 AND student_id = $2 \
             UNION ALL SELECT user_id FROM sessions WHERE exam_id = $1 AND user_id = $2 AND role = 'student' \
             LIMIT 1",
        )
        .bind(exam_id)
        .bind(student_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(found.is_some())
    }
}
