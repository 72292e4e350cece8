//! Proctor actions, their deliveries, and raised hands in the database.
//!
//! An action is stored under the id its client chose (`actions`, primary
//! key `(exam_id, action_id)`): the first request claims the id with an
//! insert that does nothing on conflict, so of two concurrent retries one
//! applies and the other reads what it did. Its `result` is written once
//! applied, together with one `action_deliveries` row per student it sent
//! a frame to; those rows go from `pending` to `delivered` when the
//! student's client acknowledges the frame, on whichever instance holds
//! its socket, with a conditional update that exactly one writer wins.
//!
//! Hands live here so they survive a room's restart and are the same on
//! every instance: a room reads the open ones when it starts, and every
//! change also travels in a numbered event.

use std::collections::HashMap;

use sqlx::Row;

use super::{Store, StoreError};

/// An action as stored.
#[derive(Debug, Clone)]
pub struct StoredAction {
    pub action_id: String,
    pub kind: String,
    pub actor_sub: String,
    pub actor_name: String,
    pub actor_role: String,
    pub at: i64,
    /// The request body, canonical JSON.
    pub payload: String,
    /// The outcome, once applied.
    pub result: Option<String>,
}

/// What [`Store::claim_action`] found.
#[derive(Debug)]
pub enum Claim {
    /// The id was free: this caller applies the action.
    Claimed,
    /// The id was taken (a retry, or a reuse): what is stored under it.
    Existing(StoredAction),
}

/// One delivery's state, for the answer and the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub state: String,
    pub delivered_at: Option<i64>,
}

/// A frame still owed to a student (re-sent when they join).
#[derive(Debug, Clone)]
pub struct PendingRow {
    pub student_id: String,
    pub action_id: String,
    pub kind: String,
    pub frame: Option<String>,
}

/// A raised hand as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandRow {
    pub hand_id: String,
    pub student_id: String,
    pub text: Option<String>,
    pub raised_at: i64,
    pub lowered_at: Option<i64>,
}

const ACTION_COLUMNS: &str =
    "action_id, kind, actor_sub, actor_name, actor_role, at, payload, result";

fn action_from_row(r: &sqlx::any::AnyRow) -> Result<StoredAction, StoreError> {
    Ok(StoredAction {
        action_id: r.try_get(0)?,
        kind: r.try_get(1)?,
        actor_sub: r.try_get(2)?,
        actor_name: r.try_get(3)?,
        actor_role: r.try_get(4)?,
        at: r.try_get(5)?,
        payload: r.try_get(6)?,
        result: r.try_get(7)?,
    })
}

fn hand_from_row(r: &sqlx::any::AnyRow) -> Result<HandRow, StoreError> {
    Ok(HandRow {
        hand_id: r.try_get(0)?,
        student_id: r.try_get(1)?,
        text: r.try_get(2)?,
        raised_at: r.try_get(3)?,
        lowered_at: r.try_get(4)?,
    })
}

impl Store {
    /// Claims `a.action_id` for this exam, or returns what holds it.
    pub async fn claim_action(&self, exam_id: &str, a: &StoredAction) -> Result<Claim, StoreError> {
        let mut tx = self.write_tx().await?;
        let inserted = sqlx::query(
            "INSERT INTO actions (exam_id, action_id, kind, actor_sub, actor_name, actor_role, at, payload) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (exam_id, action_id) DO NOTHING",
        )
        .bind(exam_id)
        .bind(&a.action_id)
        .bind(&a.kind)
        .bind(&a.actor_sub)
        .bind(&a.actor_name)
        .bind(&a.actor_role)
        .bind(a.at)
        .bind(&a.payload)
        .execute(tx.conn())
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        if inserted {
            return Ok(Claim::Claimed);
        }
        match self.action(exam_id, &a.action_id).await? {
            Some(existing) => Ok(Claim::Existing(existing)),
            // Deleted in between: nothing deletes actions.
            None => Err(StoreError::NotFound),
        }
    }

    /// Takes over a claim that was never finished (claimed at `claimed_at`):
    /// true for exactly one caller, who then applies the action.
    pub async fn take_over_action(
        &self,
        exam_id: &str,
        action_id: &str,
        claimed_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let taken = sqlx::query(
            "UPDATE actions SET at = $1 WHERE exam_id = $2 AND action_id = $3 AND result IS NULL AND at = $4",
        )
        .bind(now)
        .bind(exam_id)
        .bind(action_id)
        .bind(claimed_at)
        .execute(tx.conn())
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(taken)
    }

    /// Gives up a claim whose action could not be applied (a retry may).
    pub async fn release_action(&self, exam_id: &str, action_id: &str) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM actions WHERE exam_id = $1 AND action_id = $2 AND result IS NULL")
            .bind(exam_id)
            .bind(action_id)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn action(
        &self,
        exam_id: &str,
        action_id: &str,
    ) -> Result<Option<StoredAction>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {ACTION_COLUMNS} FROM actions WHERE exam_id = $1 AND action_id = $2"
        ));
        let row = sqlx::query(sql)
            .bind(exam_id)
            .bind(action_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(action_from_row).transpose()
    }

    /// The newest `limit` applied actions of an exam, newest first.
    pub async fn actions(
        &self,
        exam_id: &str,
        limit: u32,
    ) -> Result<Vec<StoredAction>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {ACTION_COLUMNS} FROM actions WHERE exam_id = $1 AND result IS NOT NULL \
             ORDER BY at DESC, action_id DESC LIMIT $2"
        ));
        let rows = sqlx::query(sql)
            .bind(exam_id)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(action_from_row).collect()
    }

    /// Records an applied action's outcome and its deliveries (student,
    /// frame: `None` for an `exam_update`), in one transaction.
    pub async fn finish_action(
        &self,
        exam_id: &str,
        action_id: &str,
        kind: &str,
        at: i64,
        result: &str,
        deliveries: &[(String, Option<String>)],
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        for (student, frame) in deliveries {
            sqlx::query(
                "INSERT INTO action_deliveries (exam_id, action_id, student_id, kind, frame, at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (exam_id, action_id, student_id) DO NOTHING",
            )
            .bind(exam_id)
            .bind(action_id)
            .bind(student)
            .bind(kind)
            .bind(frame.as_deref())
            .bind(at)
            .execute(tx.conn())
            .await?;
        }
        sqlx::query("UPDATE actions SET result = $1 WHERE exam_id = $2 AND action_id = $3")
            .bind(result)
            .bind(exam_id)
            .bind(action_id)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Each student's delivery of one action.
    pub async fn deliveries(
        &self,
        exam_id: &str,
        action_id: &str,
    ) -> Result<HashMap<String, DeliveryRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT student_id, state, delivered_at FROM action_deliveries \
             WHERE exam_id = $1 AND action_id = $2",
        )
        .bind(exam_id)
        .bind(action_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(keyed_delivery).collect()
    }

    /// Marks a delivery acknowledged; true for the one caller that did.
    pub async fn mark_delivered(
        &self,
        exam_id: &str,
        action_id: &str,
        student_id: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE action_deliveries SET state = 'delivered', delivered_at = $1 \
             WHERE exam_id = $2 AND action_id = $3 AND student_id = $4 AND state = 'pending'",
        )
        .bind(at)
        .bind(exam_id)
        .bind(action_id)
        .bind(student_id)
        .execute(tx.conn())
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(done == 1)
    }

    /// An `allow`: undelivered `deny`/`terminate` frames of this student
    /// will never be wanted (they would throw the readmitted student out).
    pub async fn supersede_removals(
        &self,
        exam_id: &str,
        student_id: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE action_deliveries SET state = 'superseded' WHERE exam_id = $1 AND student_id = $2 \
             AND state = 'pending' AND kind IN ('deny', 'terminate')",
        )
        .bind(exam_id)
        .bind(student_id)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every frame still owed to a student of this exam, oldest first.
    pub async fn pending_deliveries(&self, exam_id: &str) -> Result<Vec<PendingRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT student_id, action_id, kind, frame FROM action_deliveries \
             WHERE exam_id = $1 AND state = 'pending' ORDER BY at, action_id",
        )
        .bind(exam_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PendingRow {
                    student_id: r.try_get(0)?,
                    action_id: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    frame: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Every student the exam knows of: on its roster, with a control
    /// record, or who ever connected (`"all": true`).
    pub async fn exam_students(&self, exam_id: &str) -> Result<Vec<String>, StoreError> {
        let ids = sqlx::query_scalar(
            "SELECT student_id FROM roster WHERE exam_id = $1 \
             UNION SELECT student_id FROM student_control WHERE exam_id = $1 \
             UNION SELECT user_id FROM sessions WHERE exam_id = $1 AND role = 'student' \
             ORDER BY 1",
        )
        .bind(exam_id)
        .fetch_all(self.pool())
        .await?;
        Ok(ids)
    }

    /// Sets `allowed` of a roster entry, if the student is on the roster.
    pub async fn set_roster_allowed(
        &self,
        exam_id: &str,
        student_id: &str,
        allowed: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE roster SET allowed = $1 WHERE exam_id = $2 AND student_id = $3")
            .bind(i64::from(allowed))
            .bind(exam_id)
            .bind(student_id)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Uses up a `reset_session` of this student: true for the one caller
    /// that found it set (it admits one connection past the block).
    pub async fn consume_reset(&self, exam_id: &str, student_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE student_control SET reset_at = NULL \
             WHERE exam_id = $1 AND student_id = $2 AND reset_at IS NOT NULL",
        )
        .bind(exam_id)
        .bind(student_id)
        .execute(tx.conn())
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(done == 1)
    }

    pub async fn insert_hand(&self, exam_id: &str, hand: &HandRow) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO hands (exam_id, hand_id, student_id, text, raised_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (exam_id, hand_id) DO NOTHING",
        )
        .bind(exam_id)
        .bind(&hand.hand_id)
        .bind(&hand.student_id)
        .bind(hand.text.as_deref())
        .bind(hand.raised_at)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The exam's raised hands not yet lowered.
    pub async fn open_hands(&self, exam_id: &str) -> Result<Vec<HandRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT hand_id, student_id, text, raised_at, lowered_at FROM hands \
             WHERE exam_id = $1 AND lowered_at IS NULL ORDER BY raised_at",
        )
        .bind(exam_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(hand_from_row).collect()
    }

    pub async fn hand(&self, exam_id: &str, hand_id: &str) -> Result<Option<HandRow>, StoreError> {
        let row = sqlx::query(
            "SELECT hand_id, student_id, text, raised_at, lowered_at FROM hands \
             WHERE exam_id = $1 AND hand_id = $2",
        )
        .bind(exam_id)
        .bind(hand_id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(hand_from_row).transpose()
    }

    /// Every hand this student raised, oldest first.
    pub async fn student_hands(
        &self,
        exam_id: &str,
        student_id: &str,
    ) -> Result<Vec<HandRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT hand_id, student_id, text, raised_at, lowered_at FROM hands \
             WHERE exam_id = $1 AND student_id = $2 ORDER BY raised_at, hand_id",
        )
        .bind(exam_id)
        .bind(student_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(hand_from_row).collect()
    }

    /// This student's delivery of every action that sent them a frame,
    /// by action id.
    pub async fn student_deliveries(
        &self,
        exam_id: &str,
        student_id: &str,
    ) -> Result<HashMap<String, DeliveryRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT action_id, state, delivered_at FROM action_deliveries \
             WHERE exam_id = $1 AND student_id = $2",
        )
        .bind(exam_id)
        .bind(student_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(keyed_delivery).collect()
    }

    /// Lowers a hand; true for the one caller that did.
    pub async fn lower_hand(
        &self,
        exam_id: &str,
        hand_id: &str,
        by: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE hands SET lowered_at = $1, lowered_by = $2 \
             WHERE exam_id = $3 AND hand_id = $4 AND lowered_at IS NULL",
        )
        .bind(at)
        .bind(by)
        .bind(exam_id)
        .bind(hand_id)
        .execute(tx.conn())
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(done == 1)
    }
}

/// A delivery row keyed by its first column (a student or an action id).
fn keyed_delivery(r: &sqlx::any::AnyRow) -> Result<(String, DeliveryRow), StoreError> {
    Ok((
        r.try_get(0)?,
        DeliveryRow {
            state: r.try_get(1)?,
            delivered_at: r.try_get(2)?,
        },
    ))
}
