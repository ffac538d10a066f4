//! A SQLite [`CheckpointStore`] for kcpy, on sqlx.
//!
//! One table, `kcpy_checkpoints`, keyed by (consumer name, stream, shard),
//! holding each checkpoint as text. The schema is created or migrated on
//! connect; the database runs in WAL mode with `synchronous = FULL`, so a
//! save that returned survives a crash of the process or the machine.
//!
//! [`SqliteCheckpointStore::connect_python_kcpy`] keeps them in the table of
//! the Python kcpy package instead, so that its checkpoint files carry over.

mod schema;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use kcpy_core::{Checkpoint, CheckpointError, CheckpointKey, CheckpointStore};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use schema::{Layout, MigrateError, SchemaError, Statements};

/// Checkpoints in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteCheckpointStore {
    pool: SqlitePool,
    sql: Arc<Statements>,
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

    /// Opens (creating if missing) the SQLite file at `path` and keeps
    /// checkpoints in its table `table` the way the Python kcpy package (0.1.x)
    /// lays it out: `consumer_name`, `stream_name`, `shard_id` and `seq_no`,
    /// all text. That package's `StreamConsumer(..., checkpoint=True)` uses
    /// the file `kcpy_checkpoint.db` and the table `kcpy`.
    ///
    /// The table is created if missing; an existing one keeps its rows, so
    /// its positions carry over, and gains a unique index on the key. A row
    /// that package wrote as a float (its updates did) is
    /// [`CheckpointError::Malformed`], never used; a `NULL` (its reset) is no
    /// checkpoint. Two rows for one key are refused as an `Open` error.
    pub async fn connect_python_kcpy(path: &str, table: &str) -> Result<Self, CheckpointError> {
        let options = SqliteConnectOptions::new().filename(path).create_if_missing(true);
        let layout = Layout::PythonKcpy {
            table: table.to_owned(),
        };
        Self::open(options, path, layout).await
    }

    /// Opens the database with `options` (journal mode, synchronous and busy
    /// timeout are set by this crate); `location` names it in errors.
    pub async fn connect_with(options: SqliteConnectOptions, location: &str) -> Result<Self, CheckpointError> {
        Self::open(options, location, Layout::Own).await
    }

    async fn open(options: SqliteConnectOptions, location: &str, layout: Layout) -> Result<Self, CheckpointError> {
        let shape_error = |message: String| CheckpointError::Open {
            location: location.to_owned(),
            source: Arc::new(SchemaError(message)),
        };
        layout.check().map_err(shape_error)?;
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
        layout.migrate(&pool).await.map_err(|e| match e {
            MigrateError::Sql(e) => open_error(location, e),
            MigrateError::Shape(message) => shape_error(message),
        })?;
        Ok(Self {
            pool,
            sql: Arc::new(layout.statements()),
        })
    }

    /// The underlying pool, e.g. to close it.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
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
        let row = sqlx::query(&self.sql.load)
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
        let text: String = match row.try_get::<Option<String>, _>(0) {
            Ok(Some(text)) => text,
            Ok(None) => return Ok(None),
            Err(_) => {
                let raw: Option<Vec<u8>> = row.try_get(0).ok();
                String::from_utf8_lossy(&raw.unwrap_or_default()).into_owned()
            }
        };
        CheckpointError::parse_stored(key, &text).map(Some)
    }

    async fn save(&self, key: &CheckpointKey, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let mut save = sqlx::query(&self.sql.save)
            .bind(&key.consumer_name)
            .bind(&key.stream_name)
            .bind(&key.shard_id)
            .bind(checkpoint.as_str());
        if self.sql.timed {
            save = save.bind(now_ms());
        }
        let done = save.execute(&self.pool).await.map_err(store_error)?;
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
            Some(to) => {
                let reset = sqlx::query(&self.sql.reset)
                    .bind(&key.consumer_name)
                    .bind(&key.stream_name)
                    .bind(&key.shard_id)
                    .bind(to.as_str());
                if self.sql.timed {
                    reset.bind(now_ms())
                } else {
                    reset
                }
            }
            None => sqlx::query(&self.sql.delete)
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
        let load = store.sql.load.clone();
        let read_raw = |key: CheckpointKey| {
            let (pool, load) = (pool.clone(), load.clone());
            async move {
                sqlx::query_scalar(&load)
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

    /// Python kcpy 0.1.7's own statements, as its `Checkpoint` class runs them.
    mod python_kcpy {
        pub(super) const CREATE: &str =
            "CREATE TABLE IF NOT EXISTS kcpy(consumer_name text, stream_name text, shard_id text, seq_no text)";

        pub(super) fn insert(shard: &str, seq_no: &str) -> String {
            format!(
                "INSERT INTO kcpy (consumer_name, stream_name, shard_id, seq_no) VALUES ('app', 'orders', '{shard}', '{seq_no}')"
            )
        }

        pub(super) fn update(shard: &str, seq_no: &str) -> String {
            format!("UPDATE kcpy SET seq_no = {seq_no} WHERE consumer_name = 'app' AND stream_name = 'orders' AND shard_id = '{shard}'")
        }

        pub(super) fn reset(shard: &str) -> String {
            format!("UPDATE kcpy SET seq_no = NULL WHERE consumer_name = 'app' AND stream_name = 'orders' AND shard_id = '{shard}'")
        }
    }

    async fn python_kcpy_file() -> (tempfile::TempDir, String, SqlitePool) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kcpy_checkpoint.db").to_string_lossy().into_owned();
        let options = SqliteConnectOptions::new().filename(&path).create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.expect("create");
        sqlx::query(python_kcpy::CREATE)
            .execute(&pool)
            .await
            .expect("create table");
        (dir, path, pool)
    }

    #[tokio::test]
    async fn the_python_kcpy_table_meets_the_checkpoint_store_contract() {
        let (_dir, path, pool) = python_kcpy_file().await;
        let store = SqliteCheckpointStore::connect_python_kcpy(&path, "kcpy")
            .await
            .expect("open");
        kcpy_core::test_util::checkpoint_store_conformance(&store).await;
        kcpy_core::test_util::reset_conformance(&store).await;
        let plant = |key: CheckpointKey, value: String| {
            let pool = pool.clone();
            async move {
                sqlx::query("INSERT INTO kcpy VALUES (?1, ?2, ?3, ?4)")
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
                sqlx::query_scalar(
                    "SELECT seq_no FROM kcpy WHERE consumer_name = ?1 AND stream_name = ?2 AND shard_id = ?3",
                )
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
    async fn a_python_kcpy_file_keeps_its_positions_and_reports_the_floats_it_wrote() {
        let (_dir, path, pool) = python_kcpy_file().await;
        let first = "49590338271490256608559692538361571095921575989136588898";
        let later = "49590338271490256608559692540925702759324208523137515618";
        // Its first save of a shard quotes the number; every later one does not,
        // and SQLite turns a 56-digit literal into a float.
        for statement in [
            python_kcpy::insert("shardId-000000000000", first),
            python_kcpy::insert("shardId-000000000001", first),
            python_kcpy::update("shardId-000000000001", later),
            python_kcpy::insert("shardId-000000000002", first),
            python_kcpy::reset("shardId-000000000002"),
        ] {
            sqlx::query(&statement)
                .execute(&pool)
                .await
                .expect("Python kcpy's statement");
        }
        let corrupted: String = sqlx::query_scalar("SELECT seq_no FROM kcpy WHERE shard_id = 'shardId-000000000001'")
            .fetch_one(&pool)
            .await
            .expect("read");
        assert!(corrupted.contains('e'), "the package stored {corrupted}");

        let store = SqliteCheckpointStore::connect_python_kcpy(&path, "kcpy")
            .await
            .expect("open");
        let key = |shard: &str| CheckpointKey::new("app", "orders", shard);
        assert_eq!(
            store.load(&key("shardId-000000000000")).await.expect("load"),
            Some(Checkpoint::Sequence(first.parse().expect("valid"))),
            "a position it saved once carries over exactly"
        );
        assert!(matches!(
            store.load(&key("shardId-000000000001")).await,
            Err(CheckpointError::Malformed { .. })
        ));
        let newer = Checkpoint::Sequence(later.parse().expect("valid"));
        assert!(matches!(
            store.save(&key("shardId-000000000001"), &newer).await,
            Err(CheckpointError::Malformed { .. })
        ));
        assert_eq!(
            store.load(&key("shardId-000000000002")).await.expect("load"),
            None,
            "its reset is no checkpoint"
        );
        store
            .save(&key("shardId-000000000002"), &newer)
            .await
            .expect("save over a reset");
        store.save(&key("shardId-000000000000"), &newer).await.expect("advance");

        // The package still reads what this store wrote, exactly.
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT shard_id, seq_no FROM kcpy ORDER BY shard_id")
            .fetch_all(&pool)
            .await
            .expect("read");
        assert_eq!(
            rows,
            [
                ("shardId-000000000000".to_owned(), later.to_owned()),
                ("shardId-000000000001".to_owned(), corrupted),
                ("shardId-000000000002".to_owned(), later.to_owned()),
            ]
        );
    }

    #[tokio::test]
    async fn a_python_kcpy_table_with_two_rows_for_one_key_is_refused() {
        let (_dir, path, pool) = python_kcpy_file().await;
        for _ in 0..2 {
            sqlx::query(&python_kcpy::insert("shardId-000000000000", "1"))
                .execute(&pool)
                .await
                .expect("insert");
        }
        match SqliteCheckpointStore::connect_python_kcpy(&path, "kcpy").await {
            Err(CheckpointError::Open { source, .. }) => assert!(source.to_string().contains("more than one row")),
            other => panic!("expected an Open error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_table_name_that_is_not_an_identifier_is_refused_before_any_sql() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.db").to_string_lossy().into_owned();
        for bad in ["", "1kcpy", "kcpy; DROP TABLE x", "my-table"] {
            match SqliteCheckpointStore::connect_python_kcpy(&path, bad).await {
                Err(CheckpointError::Open { source, .. }) => assert!(source.to_string().contains("table name")),
                other => panic!("{bad:?}: expected an Open error, got {other:?}"),
            }
        }
        let store = SqliteCheckpointStore::connect_python_kcpy(&path, "my_checkpoints")
            .await
            .expect("a new table");
        kcpy_core::test_util::checkpoint_store_conformance(&store).await;
    }
}
