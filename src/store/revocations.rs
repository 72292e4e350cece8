//! The `revocations` table (what [`crate::revocations`] keeps in memory):
//! one row per entry, read whole at start-up and after a Redis
//! disconnection, pruned of expired rows whenever one is added.

use sqlx::Row;

use super::{Store, StoreError};
use crate::revocations::Revocation;

impl Store {
    /// Stores an entry, and deletes the entries that have ended.
    pub async fn insert_revocation(&self, r: &Revocation, now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM revocations WHERE expires_at <= $1")
            .bind(now_ms)
            .execute(tx.conn())
            .await?;
        sqlx::query(
            "INSERT INTO revocations (id, sub, jti, expires_at, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(r.id.as_str())
        .bind(r.sub.as_deref())
        .bind(r.jti.as_deref())
        .bind(r.until)
        .bind(r.created_at)
        .bind(r.created_by.as_str())
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }

    /// The entries that still last at `now_ms`.
    pub async fn live_revocations(&self, now_ms: i64) -> Result<Vec<Revocation>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, sub, jti, expires_at, created_at, created_by FROM revocations \
             WHERE expires_at > $1 ORDER BY expires_at, id",
        )
        .bind(now_ms)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Revocation {
                    id: r.try_get(0)?,
                    sub: r.try_get(1)?,
                    jti: r.try_get(2)?,
                    until: r.try_get(3)?,
                    created_at: r.try_get(4)?,
                    created_by: r.try_get(5)?,
                })
            })
            .collect()
    }
}
