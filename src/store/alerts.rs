//! The `alerts` table: every alert watchers were sent, with its state.
//!
//! Rows come from two places. An automatic alert is written by the batching
//! writer next to its event (the room hands it [`AlertRow::from_event`]
//! built from the very bytes watchers received), so the live path never
//! waits. A proctor's report is inserted by the API before it answers 201,
//! then gets its `seq` when its event is numbered. Both use one upsert
//! ([`insert`]), which only ever fills a missing seq.
//!
//! Resolution is one conditional UPDATE (`state = 'open'`), so of two
//! concurrent resolves on two instances exactly one wins and the other
//! reads the winner's resolution: idempotent without a lock.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Store, StoreError};
use crate::protocol::{AlertCategory, AlertKind, AlertState, Timestamp};

/// One alert as stored (and as the REST API shows it).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AlertRow {
    pub alert_id: String,
    #[serde(skip)]
    pub exam_id: String,
    /// The alert's event in the exam's stream; null only for a report
    /// whose event is not numbered yet.
    pub seq: Option<i64>,
    pub student_id: Option<String>,
    /// `focus_lost`, `idle`, `disconnected`, `second_session`,
    /// `fullscreen_exit`, `ip_changed`, `device_changed`,
    /// `answered_decreased`, `heartbeat_gap`, `network_incident`, `report`.
    pub kind: String,
    pub category: AlertCategory,
    pub state: AlertState,
    pub count: i64,
    /// `network_incident`: how many students dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub students: Option<i64>,
    /// `report`: the proctor's text and `sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// RFC 3339.
    #[schema(value_type = String)]
    pub at: Timestamp,
    /// Who resolved it, when and why; null while open.
    pub resolution: Option<Resolution>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Resolution {
    pub by: String,
    pub note: String,
    #[schema(value_type = String)]
    pub at: Timestamp,
}

/// The fields of an `alert` event that the table keeps.
#[derive(Deserialize)]
struct AlertEvent {
    alert_id: String,
    student_id: Option<String>,
    kind: AlertKind,
    category: AlertCategory,
    at: Timestamp,
    count: u32,
    students: Option<u32>,
    text: Option<String>,
    by: Option<String>,
}

impl AlertRow {
    /// The row for an `alert` event as encoded for watchers; `None` for
    /// anything else.
    pub fn from_event(exam_id: &str, seq: i64, payload: &str) -> Option<Self> {
        let ev: AlertEvent = serde_json::from_str(payload).ok()?;
        Some(Self {
            alert_id: ev.alert_id,
            exam_id: exam_id.to_owned(),
            seq: Some(seq),
            student_id: ev.student_id,
            kind: ev.kind.as_str().to_owned(),
            category: ev.category,
            state: AlertState::Open,
            count: i64::from(ev.count),
            students: ev.students.map(i64::from),
            text: ev.text,
            by: ev.by,
            at: ev.at,
            resolution: None,
        })
    }
}

/// Inserts an alert, or fills in the seq of one already there.
pub async fn insert<'c, E>(executor: E, row: &AlertRow) -> Result<(), StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO alerts (exam_id, alert_id, seq, student_id, kind, category, count, students, \
         text, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (exam_id, alert_id) DO UPDATE SET seq = COALESCE(alerts.seq, excluded.seq)",
    )
    .bind(row.exam_id.as_str())
    .bind(row.alert_id.as_str())
    .bind(row.seq)
    .bind(row.student_id.as_deref())
    .bind(row.kind.as_str())
    .bind(row.category.as_str())
    .bind(row.count)
    .bind(row.students)
    .bind(row.text.as_deref())
    .bind(row.by.as_deref())
    .bind(row.at.unix_ms())
    .execute(executor)
    .await?;
    Ok(())
}

/// What a resolve found.
#[derive(Debug)]
pub enum Resolved {
    /// This call resolved it.
    Now(AlertRow),
    /// It was resolved before (this is the first resolution).
    Already(AlertRow),
    NotFound,
}

const COLUMNS: &str = "SELECT alert_id, exam_id, seq, student_id, kind, category, state, count, \
     students, text, created_by, created_at, resolved_by, resolved_note, resolved_at FROM alerts";

fn row(r: sqlx::any::AnyRow) -> Result<AlertRow, StoreError> {
    let bad = |what: &str, v: &str| StoreError::Corrupt(format!("alert {what} {v:?}"));
    let category: String = r.try_get(5)?;
    let state: String = r.try_get(6)?;
    let resolved_by: Option<String> = r.try_get(12)?;
    let resolved_note: Option<String> = r.try_get(13)?;
    let resolved_at: Option<i64> = r.try_get(14)?;
    Ok(AlertRow {
        alert_id: r.try_get(0)?,
        exam_id: r.try_get(1)?,
        seq: r.try_get(2)?,
        student_id: r.try_get(3)?,
        kind: r.try_get(4)?,
        category: AlertCategory::parse(&category).ok_or_else(|| bad("category", &category))?,
        state: match state.as_str() {
            "open" => AlertState::Open,
            "resolved" => AlertState::Resolved,
            other => return Err(bad("state", other)),
        },
        count: r.try_get(7)?,
        students: r.try_get(8)?,
        text: r.try_get(9)?,
        by: r.try_get(10)?,
        at: Timestamp::from_unix_ms(r.try_get(11)?),
        resolution: match (resolved_by, resolved_at) {
            (Some(by), Some(at)) => Some(Resolution {
                by,
                note: resolved_note.unwrap_or_default(),
                at: Timestamp::from_unix_ms(at),
            }),
            _ => None,
        },
    })
}

impl Store {
    /// An exam's alerts, newest first, at most `limit`.
    pub async fn alerts(
        &self,
        exam_id: &str,
        state: Option<AlertState>,
        limit: i64,
    ) -> Result<Vec<AlertRow>, StoreError> {
        let rows = match state {
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{COLUMNS} WHERE exam_id = $1 ORDER BY created_at DESC, seq DESC LIMIT $2"
                )))
                .bind(exam_id)
                .bind(limit)
                .fetch_all(self.pool())
                .await?
            }
            Some(s) => {
                let s = match s {
                    AlertState::Open => "open",
                    AlertState::Resolved => "resolved",
                };
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{COLUMNS} WHERE exam_id = $1 AND state = $2 \
                     ORDER BY created_at DESC, seq DESC LIMIT $3"
                )))
                .bind(exam_id)
                .bind(s)
                .bind(limit)
                .fetch_all(self.pool())
                .await?
            }
        };
        rows.into_iter().map(row).collect()
    }

    pub async fn alert(
        &self,
        exam_id: &str,
        alert_id: &str,
    ) -> Result<Option<AlertRow>, StoreError> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{COLUMNS} WHERE exam_id = $1 AND alert_id = $2"
        )))
        .bind(exam_id)
        .bind(alert_id)
        .fetch_optional(self.pool())
        .await?;
        r.map(row).transpose()
    }

    /// One student's alerts, oldest first (the record for disputes).
    pub async fn student_alerts(
        &self,
        exam_id: &str,
        student_id: &str,
    ) -> Result<Vec<AlertRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{COLUMNS} WHERE exam_id = $1 AND student_id = $2 ORDER BY created_at, seq"
        )))
        .bind(exam_id)
        .bind(student_id)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(row).collect()
    }

    /// Inserts a report's row (before its event is numbered).
    pub async fn insert_alert(&self, row: &AlertRow) -> Result<(), StoreError> {
        insert(self.pool(), row).await
    }

    /// Resolves an open alert; a resolved one keeps its first resolution.
    pub async fn resolve_alert(
        &self,
        exam_id: &str,
        alert_id: &str,
        by: &str,
        note: &str,
        at: Timestamp,
    ) -> Result<Resolved, StoreError> {
        let done = sqlx::query(
            "UPDATE alerts SET state = 'resolved', resolved_by = $3, resolved_note = $4, \
             resolved_at = $5 WHERE exam_id = $1 AND alert_id = $2 AND state = 'open'",
        )
        .bind(exam_id)
        .bind(alert_id)
        .bind(by)
        .bind(note)
        .bind(at.unix_ms())
        .execute(self.pool())
        .await?;
        let Some(found) = self.alert(exam_id, alert_id).await? else {
            return Ok(Resolved::NotFound);
        };
        Ok(if done.rows_affected() > 0 {
            Resolved::Now(found)
        } else if found.state == AlertState::Open {
            // Written by the batching writer between the update and this
            // read: not resolved yet, so not "already" either; the caller
            // tries again.
            Resolved::NotFound
        } else {
            Resolved::Already(found)
        })
    }

    /// Alerts raised per student and category (`report.csv`): for the
    /// folding kinds the highest `count` (folded repeats included), for
    /// reports their number.
    pub async fn alert_categories(
        &self,
        exam_id: &str,
    ) -> Result<HashMap<String, [i64; 3]>, StoreError> {
        let rows = sqlx::query(
            "SELECT student_id, kind, category, COUNT(*), MAX(count) FROM alerts \
             WHERE exam_id = $1 AND student_id IS NOT NULL GROUP BY student_id, kind, category",
        )
        .bind(exam_id)
        .fetch_all(self.pool())
        .await?;
        let mut out: HashMap<String, [i64; 3]> = HashMap::new();
        for r in rows {
            let student: String = r.try_get(0)?;
            let kind: String = r.try_get(1)?;
            let category: String = r.try_get(2)?;
            let rows: i64 = r.try_get(3)?;
            let highest: i64 = r.try_get(4)?;
            let i = match AlertCategory::parse(&category) {
                Some(AlertCategory::Environment) => 0,
                Some(AlertCategory::TestTaker) => 1,
                Some(AlertCategory::Technical) => 2,
                None => continue,
            };
            out.entry(student).or_default()[i] += if kind == "report" {
                rows
            } else {
                highest.max(rows)
            };
        }
        Ok(out)
    }
}
