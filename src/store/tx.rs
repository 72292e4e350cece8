//! Write transactions whose outcome the server can trust.
//!
//! Every write the store makes (the batching writer, exam creation, roster
//! replacement) runs in a [`WriteTx`]: a pooled connection on which we issue
//! `BEGIN` and `COMMIT` ourselves, and which is *discarded* (closed, never
//! returned to the pool) unless its `COMMIT` succeeded.
//!
//! Why not `pool.begin()`: sqlx tracks a transaction depth per connection and
//! trusts it. When SQLite hits a full disk it may roll the transaction back
//! on its own; the `ROLLBACK` sqlx then queues fails ("no transaction is
//! active"), the depth stays at 1, and the connection goes back to the pool
//! out of step with SQLite. The next `begin()` on it issues a `SAVEPOINT`
//! instead of `BEGIN`, its "commit" is only a `RELEASE`, and answers were
//! acknowledged that no `COMMIT` ever made durable, while the connection
//! held the write lock ("database is locked" for everyone else). Seen in the
//! disk-full attack on issue 11: 28 of 28 answers acked after the fault were
//! missing from the file.
//!
//! Here a `COMMIT` that returned success is a real `COMMIT` on a connection
//! that never failed before it: the only condition under which the writer
//! acknowledges a record. Any error, or dropping the guard unfinished (a
//! cancelled future), closes the connection; SQLite and PostgreSQL both roll
//! back an open transaction when its connection closes, and the pool opens a
//! fresh connection for the retry.

use sqlx::{Any, AnyConnection, pool::PoolConnection};

use super::{Backend, Store, StoreError};

/// One write transaction; see the module documentation.
pub struct WriteTx {
    /// `None` only after `commit` succeeded (the connection went back to the
    /// pool) or while being taken apart in `Drop`.
    conn: Option<PoolConnection<Any>>,
}

impl Store {
    /// Starts a write transaction. On SQLite `BEGIN IMMEDIATE` takes the
    /// write lock up front, so a concurrent writer waits in `busy_timeout`
    /// instead of failing at its first write with `SQLITE_BUSY`.
    pub async fn write_tx(&self) -> Result<WriteTx, StoreError> {
        let conn = self.pool().acquire().await?;
        let mut tx = WriteTx { conn: Some(conn) };
        let begin = match self.backend() {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        // Through `query`, not `execute(&str)`: sqlx's `Any` driver caches
        // a prepared statement only when the query carries arguments (none
        // here), so a bare string was parsed and planned again by SQLite
        // for every transaction (docs/bench/cpu.md, round 3).
        sqlx::query(begin).execute(tx.conn()).await?;
        Ok(tx)
    }
}

impl WriteTx {
    /// The connection, for statements inside the transaction.
    pub fn conn(&mut self) -> &mut AnyConnection {
        self.conn
            .as_deref_mut()
            .expect("a WriteTx holds its connection until commit or drop")
    }

    /// Commits. Only on success does the connection return to the pool; on
    /// failure it is closed (see `Drop`), whatever state the database left
    /// the transaction in.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        // A cached statement, as `BEGIN` (see `write_tx`).
        sqlx::query("COMMIT").execute(self.conn()).await?;
        // Committed: give the healthy connection back to the pool.
        drop(self.conn.take());
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            // Not committed (an error, or a cancelled future): never reuse
            // a connection whose transaction state we cannot vouch for.
            conn.close_on_drop();
        }
    }
}
