//! Durable records through sqlx: SQLite by default, PostgreSQL in
//! production, one code path.
//!
//! The `Any` driver runs the same SQL on both: times are unix milliseconds
//! (BIGINT), JSON is TEXT, placeholders are `$1…`, and upserts use
//! `ON CONFLICT … DO NOTHING`, which both understand. Only the migrations
//! differ (`migrations/sqlite`, `migrations/postgres`).
//!
//! Reads happen off the live path (room start-up, the REST API, the
//! handshake's roster check). Writes from the live path go through the
//! batching [`writer`], so a slow database never delays a teacher's screen.

pub mod actions;
pub mod alerts;
pub mod control;
pub mod queries;
pub mod record;
pub mod revocations;
pub mod tx;
pub mod writer;

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    AnyPool, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::Migrator,
};

use crate::config::DatabaseSettings;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error("already exists")]
    Conflict,
    #[error("not found")]
    NotFound,
}

impl StoreError {
    /// The database refused the data itself (SQLSTATE class 22 or 23, or a
    /// constraint): retrying the same record can never succeed. Anything
    /// else (unreachable, timeouts, shutdown, serialization) is worth a retry.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(e)) => {
                if !matches!(e.kind(), sqlx::error::ErrorKind::Other) {
                    return true;
                }
                let Some(code) = e.code() else { return false };
                if e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some()
                {
                    code.starts_with("22") || code.starts_with("23")
                } else {
                    // SQLite's extended result codes are numbers whose low
                    // byte is the primary code: TOOBIG (18), CONSTRAINT (19),
                    // MISMATCH (20), RANGE (25) are about the data. Reading
                    // them as SQLSTATEs was wrong: SQLITE_IOERR_RDLOCK is 2314.
                    code.parse::<i32>()
                        .is_ok_and(|c| matches!(c & 0xff, 18 | 19 | 20 | 25))
                }
            }
            StoreError::Db(sqlx::Error::Encode(_)) => true,
            _ => false,
        }
    }
}

/// A cheap-to-clone handle to the database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// `answered_sets` queries run, for tests (a reconnect storm in
    /// cluster mode must not be one query per student).
    answered_reads: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Store {
    /// How many `answered_sets` queries this handle (and its clones) ran.
    pub fn answered_reads(&self) -> u64 {
        self.answered_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Connects (creating a SQLite file and its folder if needed) and
    /// applies the migrations.
    pub async fn open(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let store = Self::connect(settings).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without migrating.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if settings.url.starts_with("sqlite:") {
            (Backend::Sqlite, sqlite_url(&settings.url)?)
        } else {
            (Backend::Postgres, settings.url.clone())
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; FULL sync
                        // makes every acknowledged commit survive a crash.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            backend,
            answered_reads: Default::default(),
        })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// Proves the database takes writes: one row of `write_probe`
    /// rewritten in a real transaction. Run at start-up, so a read-only
    /// file, folder or server stops the server with the reason instead of
    /// letting it report ready while every record fails.
    pub async fn check_writable(&self, instance_id: &str) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO write_probe (instance_id, at) VALUES ($1, $2) \
             ON CONFLICT (instance_id) DO UPDATE SET at = excluded.at",
        )
        .bind(instance_id)
        .bind(now_ms())
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// True if the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// Turns `sqlite://path` into a URL that creates the file, and creates the
/// folder it lives in.
fn sqlite_url(url: &str) -> Result<String, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && !path.is_empty()
        && let Some(dir) = Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Corrupt(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
    }
    let mut query = query.to_owned();
    if !query.contains("mode=") {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str("mode=rwc");
    }
    Ok(format!("sqlite://{path}?{query}"))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_create_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.db");
        let url = sqlite_url(&format!("sqlite://{}", path.display())).unwrap();
        assert!(url.ends_with("x.db?mode=rwc"), "{url}");
        assert!(dir.path().join("sub").is_dir());
        assert_eq!(
            sqlite_url("sqlite://a.db?mode=ro").unwrap(),
            "sqlite://a.db?mode=ro"
        );
    }
}
