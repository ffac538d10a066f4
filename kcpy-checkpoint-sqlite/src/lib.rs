//! A SQLite [`CheckpointStore`] for kcpy, on sqlx.
//!
//! One table, `kcpy_checkpoints`, keyed by (consumer name, stream, shard),
//! holding each checkpoint as text. The schema is created or migrated on
//! connect; the database runs in WAL mode with `synchronous = FULL`, so a
//! save that returned survives a crash of the process or the machine.

use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use kcpy_core::{Checkpoint, CheckpointError, CheckpointKey, CheckpointStore};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

/// The schema version this crate writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const CREATE_TABLE: &str = "CREATE TABLE kcpy_checkpoints (
    consumer_name TEXT NOT NULL,
    stream_name TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer_name, stream_name, shard_id)
) WITHOUT ROWID";

const COLUMNS: [&str; 5] = [
    "consumer_name",
    "stream_name",
    "shard_id",
    "checkpoint",
    "updated_at_ms",
];

// One statement, so the ordering check and the write are atomic. A row is only
// replaced when the stored text is a well-formed checkpoint (a malformed one is
// reported, never overwritten) and the new one does not order below it.
static SAVE: LazyLock<String> = LazyLock::new(|| {
    let (stored, new) = ("kcpy_checkpoints.checkpoint", "excluded.checkpoint");
    format!(
        "INSERT INTO kcpy_checkpoints
    (consumer_name, stream_name, shard_id, checkpoint, updated_at_ms)
    VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (consumer_name, stream_name, shard_id) DO UPDATE
    SET checkpoint = excluded.checkpoint, updated_at_ms = excluded.updated_at_ms
    WHERE {} AND {} >= {}",
        well_formed(stored),
        order_key(new),
        order_key(stored)
    )
});

/// Whether the text in `column` is a checkpoint: `SHARD_END`, a start, a
/// sequence number, or one with a sub-sequence number.
fn well_formed(column: &str) -> String {
    let start = format!("{column} GLOB 'AT_TIMESTAMP:*'");
    let whole = format!("(NOT {start} AND instr({column}, ':') = 0)");
    let part = format!("(NOT {start} AND instr({column}, ':') > 0)");
    // At most u64::MAX: among 20 digits, text order is numeric order.
    let tail = tail(column);
    format!(
        "({column} = 'SHARD_END'
           OR ({whole} AND {})
           OR ({part} AND {} AND {} AND (length({tail}) < 20 OR {tail} <= '18446744073709551615'))
           OR ({start} AND {} AND (length({column}) < 33 OR substr({column}, 14) <= '18446744073709551615')))",
        digits(column, 129),
        digits(&head(column), 129),
        digits(&tail, 20),
        digits(&format!("substr({column}, 14)"), 20),
    )
}

/// Canonical digits: 1 to `most`, no leading zero.
fn digits(text: &str, most: u32) -> String {
    format!("(length({text}) BETWEEN 1 AND {most} AND {text} NOT GLOB '*[^0-9]*' AND ({text} = '0' OR {text} NOT GLOB '0*'))")
}

/// A sub-sequence checkpoint's sequence number (the whole text otherwise).
fn head(column: &str) -> String {
    format!(
        "(CASE WHEN {column} GLOB 'AT_TIMESTAMP:*' OR instr({column}, ':') = 0 THEN {column} \
         ELSE substr({column}, 1, instr({column}, ':') - 1) END)"
    )
}

/// A sub-sequence checkpoint's sub-sequence number ('' otherwise).
fn tail(column: &str) -> String {
    format!(
        "(CASE WHEN {column} GLOB 'AT_TIMESTAMP:*' OR instr({column}, ':') = 0 THEN '' \
         ELSE substr({column}, instr({column}, ':') + 1) END)"
    )
}

/// A row value in checkpoint order: AT_TIMESTAMP starts first (their common
/// prefix makes length-then-text their order in time), SHARD_END last, else
/// by sequence number (length, then digits); inside one aggregate by
/// sub-sequence number, the whole record after every part of it.
fn order_key(column: &str) -> String {
    let (head, tail) = (head(column), tail(column));
    format!(
        "({column} = 'SHARD_END', {column} NOT GLOB 'AT_TIMESTAMP:*', length({head}), {head}, \
         {tail} = '', length({tail}), {tail})"
    )
}

const RESET: &str = "INSERT INTO kcpy_checkpoints
    (consumer_name, stream_name, shard_id, checkpoint, updated_at_ms)
    VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (consumer_name, stream_name, shard_id) DO UPDATE
    SET checkpoint = excluded.checkpoint, updated_at_ms = excluded.updated_at_ms";

const DELETE: &str = "DELETE FROM kcpy_checkpoints WHERE consumer_name = ?1 AND stream_name = ?2 AND shard_id = ?3";

const LOAD: &str =
    "SELECT checkpoint FROM kcpy_checkpoints WHERE consumer_name = ?1 AND stream_name = ?2 AND shard_id = ?3";

/// Checkpoints in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteCheckpointStore {
    pool: SqlitePool,
}

impl SqliteCheckpointStore {
    /// Opens (creating if missing) the database at `url` — `sqlite://kcpy.db`,
    /// `sqlite::memory:`, or a plain file path — and prepares its schema.
    pub async fn connect(url: &str) -> Result<Self, CheckpointError> {
        let options = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url).map_err(|e| open_error(url, e))?
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        Self::connect_with(options.create_if_missing(true), url).await
    }

    /// Opens the database with `options` (journal mode, synchronous and busy
    /// timeout are set by this crate); `location` names it in errors.
    pub async fn connect_with(options: SqliteConnectOptions, location: &str) -> Result<Self, CheckpointError> {
        // sqlx names `sqlite::memory:` `file:sqlx-in-memory-<n>` (shared cache).
        let in_memory = {
            let name = options.get_filename().to_string_lossy();
            name.is_empty()
                || name.contains(":memory:")
                || name.starts_with("file:sqlx-in-memory-")
                || location.contains("mode=memory")
        };
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        // Each in-memory connection would be a database of its own.
        let max_connections = if in_memory { 1 } else { 4 };
        let mut pool = SqlitePoolOptions::new();
        if in_memory {
            // The one connection is the database: sqlx's default idle timeout
            // (10 min) and lifetime (30 min) would replace it with an empty one.
            pool = pool.idle_timeout(None).max_lifetime(None);
        }
        let pool = pool
            .max_connections(max_connections)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| open_error(location, e))?;
        migrate(&pool).await.map_err(|e| match e {
            MigrateError::Sql(e) => open_error(location, e),
            MigrateError::Shape(message) => CheckpointError::Open {
                location: location.to_owned(),
                source: Arc::new(SchemaError(message)),
            },
        })?;
        Ok(Self { pool })
    }

    /// The underlying pool, e.g. to close it.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// The database holds a `kcpy_checkpoints` table this crate cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SchemaError(String);

enum MigrateError {
    Sql(sqlx::Error),
    Shape(String),
}

impl From<sqlx::Error> for MigrateError {
    fn from(e: sqlx::Error) -> Self {
        MigrateError::Sql(e)
    }
}

async fn migrate(pool: &SqlitePool) -> Result<(), MigrateError> {
    let mut tx = pool.begin().await?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&mut *tx).await?;
    let columns: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info('kcpy_checkpoints') ORDER BY cid")
            .fetch_all(&mut *tx)
            .await?;
    match version {
        0 if columns.is_empty() => {
            sqlx::query(CREATE_TABLE).execute(&mut *tx).await?;
            sqlx::query(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                .execute(&mut *tx)
                .await?;
        }
        SCHEMA_VERSION if columns == COLUMNS => {}
        SCHEMA_VERSION | 0 => {
            return Err(MigrateError::Shape(format!(
                "table kcpy_checkpoints has columns {columns:?}, expected {COLUMNS:?}"
            )))
        }
        newer => {
            return Err(MigrateError::Shape(format!(
                "schema version {newer} is newer than this kcpy-checkpoint-sqlite understands ({SCHEMA_VERSION})"
            )))
        }
    }
    tx.commit().await?;
    Ok(())
}

fn open_error(location: &str, error: sqlx::Error) -> CheckpointError {
    CheckpointError::Open {
        location: location.to_owned(),
        source: Arc::new(error),
    }
}

fn store_error(error: sqlx::Error) -> CheckpointError {
    let transient = match &error {
        sqlx::Error::Database(db) => {
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with extended codes.
            let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or_default();
            matches!(code & 0xff, 5 | 6)
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        _ => false,
    };
    CheckpointError::backend(error, transient)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[async_trait]
impl CheckpointStore for SqliteCheckpointStore {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        let row = sqlx::query(LOAD)
            .bind(&key.consumer_name)
            .bind(&key.stream_name)
            .bind(&key.shard_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        // A value of another type (someone wrote a number) is malformed too.
        let text: String = match row.try_get::<String, _>(0) {
            Ok(text) => text,
            Err(_) => {
                let raw: Option<Vec<u8>> = row.try_get(0).ok();
                String::from_utf8_lossy(&raw.unwrap_or_default()).into_owned()
            }
        };
        CheckpointError::parse_stored(key, &text).map(Some)
    }

    async fn save(&self, key: &CheckpointKey, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let done = sqlx::query(&SAVE)
            .bind(&key.consumer_name)
            .bind(&key.stream_name)
            .bind(&key.shard_id)
            .bind(checkpoint.as_str())
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        if done.rows_affected() > 0 {
            return Ok(());
        }
        match self.load(key).await? {
            Some(stored) => Err(CheckpointError::conflict(key, stored, checkpoint.clone())),
            None => Err(CheckpointError::Backend {
                source: Arc::new(SchemaError(format!("the save of {key} changed no row"))),
            }),
        }
    }

    async fn reset(&self, key: &CheckpointKey, to: Option<&Checkpoint>) -> Result<(), CheckpointError> {
        let query = match to {
            Some(to) => sqlx::query(RESET)
                .bind(&key.consumer_name)
                .bind(&key.stream_name)
                .bind(&key.shard_id)
                .bind(to.as_str())
                .bind(now_ms()),
            None => sqlx::query(DELETE)
                .bind(&key.consumer_name)
                .bind(&key.stream_name)
                .bind(&key.shard_id),
        };
        query.execute(&self.pool).await.map_err(store_error).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn file_store() -> (tempfile::TempDir, String, SqliteCheckpointStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("checkpoints.db").to_string_lossy().into_owned();
        let store = SqliteCheckpointStore::connect(&format!("sqlite://{path}"))
            .await
            .expect("connect");
        (dir, path, store)
    }

    #[tokio::test]
    async fn sqlite_file_store_meets_the_checkpoint_store_contract() {
        let (_dir, _path, store) = file_store().await;
        kcpy_core::test_util::checkpoint_store_conformance(&store).await;
        kcpy_core::test_util::reset_conformance(&store).await;
    }

    #[tokio::test]
    async fn an_in_memory_database_is_never_reaped_with_its_connection() {
        let store = SqliteCheckpointStore::connect("sqlite::memory:").await.expect("open");
        let options = store.pool().options();
        assert_eq!(options.get_idle_timeout(), None, "an idle connection is not closed");
        assert_eq!(options.get_max_lifetime(), None, "nor an old one replaced");
        let file = tempfile::tempdir().expect("a temporary directory");
        let store = SqliteCheckpointStore::connect(file.path().join("c.db").to_str().expect("utf-8"))
            .await
            .expect("open");
        assert!(
            store.pool().options().get_max_lifetime().is_some(),
            "files keep the defaults"
        );
    }

    #[tokio::test]
    async fn sqlite_memory_store_meets_the_checkpoint_store_contract() {
        let store = SqliteCheckpointStore::connect("sqlite::memory:")
            .await
            .expect("connect");
        kcpy_core::test_util::checkpoint_store_conformance(&store).await;
    }

    #[tokio::test]
    async fn checkpoints_survive_reopening_the_file() {
        let (_dir, path, store) = file_store().await;
        let key = CheckpointKey::new("app", "stream", "shardId-000000000003");
        let value = Checkpoint::Sequence(
            "49590338271490256608559692538361571095921575989136588898"
                .parse()
                .expect("valid"),
        );
        store.save(&key, &value).await.expect("save");
        store.pool().close().await;
        let reopened = SqliteCheckpointStore::connect(&path)
            .await
            .expect("reopen by plain path");
        assert_eq!(reopened.load(&key).await.expect("load"), Some(value));
    }

    #[tokio::test]
    async fn malformed_stored_values_are_reported_and_never_overwritten() {
        let (_dir, _path, store) = file_store().await;
        let pool = store.pool().clone();
        let plant = |key: CheckpointKey, value: String| {
            let pool = pool.clone();
            async move {
                sqlx::query("INSERT INTO kcpy_checkpoints VALUES (?1, ?2, ?3, ?4, 0)")
                    .bind(&key.consumer_name)
                    .bind(&key.stream_name)
                    .bind(&key.shard_id)
                    .bind(value)
                    .execute(&pool)
                    .await
                    .expect("plant a bad value");
            }
        };
        let read_raw = |key: CheckpointKey| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar(LOAD)
                    .bind(&key.consumer_name)
                    .bind(&key.stream_name)
                    .bind(&key.shard_id)
                    .fetch_one(&pool)
                    .await
                    .expect("read back")
            }
        };
        kcpy_core::test_util::malformed_value_conformance(&store, plant, read_raw).await;
    }

    #[tokio::test]
    async fn a_path_that_cannot_be_opened_is_an_open_error() {
        let result = SqliteCheckpointStore::connect("sqlite:///nonexistent-dir/kcpy/checkpoints.db").await;
        match result {
            Err(CheckpointError::Open { location, .. }) => {
                assert!(location.contains("nonexistent-dir"))
            }
            other => panic!("expected an Open error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_foreign_table_of_the_same_name_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("foreign.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = SqlitePool::connect(&url).await.expect("create");
        sqlx::query("CREATE TABLE kcpy_checkpoints (id INTEGER PRIMARY KEY, value REAL)")
            .execute(&pool)
            .await
            .expect("create foreign table");
        pool.close().await;
        match SqliteCheckpointStore::connect(&url).await {
            Err(CheckpointError::Open { source, .. }) => {
                assert!(source.to_string().contains("columns"))
            }
            other => panic!("expected an Open error, got {other:?}"),
        }
    }
}
