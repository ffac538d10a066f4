//! A MySQL / MariaDB [`CheckpointStore`] for kcpy, on sqlx.
//!
//! One InnoDB table, `kcpy_checkpoints`, keyed by (consumer name, stream,
//! shard) with binary collation (so `App` and `app` are different consumers),
//! holding each checkpoint as text. The table is created on connect; a table
//! of that name with another shape is refused, never altered. A save commits
//! an InnoDB transaction, durable on return with the default
//! `innodb_flush_log_at_trx_commit = 1`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kcpy_core::{BoxError, Checkpoint, CheckpointError, CheckpointKey, CheckpointStore};
use sqlx::mysql::{MySqlDatabaseError, MySqlPoolOptions};
use sqlx::MySqlPool;

const SCHEMA_COMMENT: &str = "kcpy checkpoints v1";

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS kcpy_checkpoints (
    consumer_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    stream_name VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    shard_id VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    checkpoint VARCHAR(160) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (consumer_name, stream_name, shard_id)
) ENGINE = InnoDB COMMENT = 'kcpy checkpoints v1'";

const COLUMNS: [&str; 5] = ["consumer_name", "stream_name", "shard_id", "checkpoint", "updated_at"];

// The column is ASCII with binary collation, which the driver reports as
// bytes; read it as text.
const CHECKPOINT_TEXT: &str = "CAST(checkpoint AS CHAR CHARACTER SET utf8mb4)";

const WHERE_KEY: &str = "consumer_name = ? AND stream_name = ? AND shard_id = ?";

/// Checkpoints in a MySQL or MariaDB database.
#[derive(Debug, Clone)]
pub struct MySqlCheckpointStore {
    pool: MySqlPool,
}

impl MySqlCheckpointStore {
    /// Connects to `url` (`mysql://user:password@host:port/database`; the
    /// database must exist) and creates the table if it is missing.
    pub async fn connect(url: &str) -> Result<Self, CheckpointError> {
        let open = |source: BoxError| CheckpointError::open(url, source);
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| open(boxed(e)))?;
        prepare(&pool).await.map_err(open)?;
        Ok(Self { pool })
    }

    /// The underlying pool, e.g. to close it.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }
}

/// The database holds something this crate cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SchemaError(String);

fn boxed(error: sqlx::Error) -> BoxError {
    Arc::new(error)
}

async fn prepare(pool: &MySqlPool) -> Result<(), BoxError> {
    let database: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(pool)
        .await
        .map_err(boxed)?;
    if database.is_none() {
        return Err(Arc::new(SchemaError("the URL names no database".into())));
    }
    let columns = table_columns(pool).await.map_err(boxed)?;
    if columns.is_empty() {
        sqlx::query(CREATE_TABLE).execute(pool).await.map_err(boxed)?;
    }
    let columns = table_columns(pool).await.map_err(boxed)?;
    if columns != COLUMNS {
        return Err(Arc::new(SchemaError(format!(
            "table kcpy_checkpoints has columns {columns:?}, expected {COLUMNS:?}"
        ))));
    }
    let comment: String = sqlx::query_scalar(
        "SELECT table_comment FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'kcpy_checkpoints'",
    )
    .fetch_one(pool)
    .await
    .map_err(boxed)?;
    if comment != SCHEMA_COMMENT {
        return Err(Arc::new(SchemaError(format!(
            "table kcpy_checkpoints is {comment:?}, expected {SCHEMA_COMMENT:?}"
        ))));
    }
    Ok(())
}

async fn table_columns(pool: &MySqlPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CAST(column_name AS CHAR) FROM information_schema.columns
         WHERE table_schema = DATABASE() AND table_name = 'kcpy_checkpoints' ORDER BY ordinal_position",
    )
    .fetch_all(pool)
    .await
}

/// MySQL error numbers.
const DUPLICATE_KEY: u16 = 1062;
const LOCK_WAIT_TIMEOUT: u16 = 1205;
const DEADLOCK: u16 = 1213;

fn error_number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db.try_downcast_ref::<MySqlDatabaseError>().map(|e| e.number()),
        _ => None,
    }
}

fn store_error(error: sqlx::Error) -> CheckpointError {
    let transient = matches!(error_number(&error), Some(LOCK_WAIT_TIMEOUT | DEADLOCK))
        || matches!(
            error,
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed
        );
    CheckpointError::backend(error, transient)
}

#[async_trait]
impl CheckpointStore for MySqlCheckpointStore {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        let stored: Option<String> = sqlx::query_scalar(&format!(
            "SELECT {CHECKPOINT_TEXT} FROM kcpy_checkpoints WHERE {WHERE_KEY}"
        ))
        .bind(&key.consumer_name)
        .bind(&key.stream_name)
        .bind(&key.shard_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        stored.map(|text| CheckpointError::parse_stored(key, &text)).transpose()
    }

    async fn save(&self, key: &CheckpointKey, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        // A new key is one plain INSERT; only an existing row needs the
        // locked read-compare-write (locking an existing row takes no gap
        // lock, so concurrent savers queue instead of deadlocking).
        let inserted = sqlx::query(
            "INSERT INTO kcpy_checkpoints (consumer_name, stream_name, shard_id, checkpoint) VALUES (?, ?, ?, ?)",
        )
        .bind(&key.consumer_name)
        .bind(&key.stream_name)
        .bind(&key.shard_id)
        .bind(checkpoint.as_str())
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => return Ok(()),
            Err(error) if error_number(&error) == Some(DUPLICATE_KEY) => {}
            Err(error) => return Err(store_error(error)),
        }
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let stored: String = sqlx::query_scalar(&format!(
            "SELECT {CHECKPOINT_TEXT} FROM kcpy_checkpoints WHERE {WHERE_KEY} FOR UPDATE"
        ))
        .bind(&key.consumer_name)
        .bind(&key.stream_name)
        .bind(&key.shard_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
        let stored = CheckpointError::parse_stored(key, &stored)?;
        if stored > *checkpoint {
            return Err(CheckpointError::conflict(key, stored, checkpoint.clone()));
        }
        if stored < *checkpoint {
            sqlx::query(&format!("UPDATE kcpy_checkpoints SET checkpoint = ? WHERE {WHERE_KEY}"))
                .bind(checkpoint.as_str())
                .bind(&key.consumer_name)
                .bind(&key.stream_name)
                .bind(&key.shard_id)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> String {
        std::env::var("KCPY_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
    }

    async fn store() -> MySqlCheckpointStore {
        MySqlCheckpointStore::connect(&url())
            .await
            .expect("connect to MariaDB/MySQL")
    }

    #[tokio::test]
    async fn mysql_store_meets_the_checkpoint_store_contract() {
        kcpy_core::test_util::checkpoint_store_conformance(&store().await).await;
    }

    #[tokio::test]
    async fn consumer_names_are_case_sensitive() {
        let store = store().await;
        let unique = format!("case-{}-{:?}", std::process::id(), std::time::SystemTime::now());
        let upper = CheckpointKey::new(format!("App-{unique}"), "s", "shard");
        let lower = CheckpointKey::new(format!("app-{unique}"), "s", "shard");
        store.save(&upper, &"5".parse().expect("valid")).await.expect("save");
        assert_eq!(store.load(&lower).await.expect("load"), None);
    }

    #[tokio::test]
    async fn malformed_stored_values_are_reported_and_never_overwritten() {
        let store = store().await;
        let pool = store.pool().clone();
        let plant = |key: CheckpointKey, value: String| {
            let pool = pool.clone();
            async move {
                sqlx::query(
                    "INSERT INTO kcpy_checkpoints (consumer_name, stream_name, shard_id, checkpoint) VALUES (?, ?, ?, ?)",
                )
                .bind(&key.consumer_name)
                .bind(&key.stream_name)
                .bind(&key.shard_id)
                .bind(value)
                .execute(&pool)
                .await
                .expect("plant");
            }
        };
        let read_raw = |key: CheckpointKey| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar(&format!(
                    "SELECT {CHECKPOINT_TEXT} FROM kcpy_checkpoints WHERE {WHERE_KEY}"
                ))
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

    /// A scratch database: its URL, and the admin pool that drops it.
    struct Scratch {
        admin: MySqlPool,
        name: String,
        url: String,
    }

    impl Scratch {
        async fn create(name: &str) -> Self {
            let admin = MySqlPool::connect(&url()).await.expect("connect");
            let name = format!("kcpy_{name}_{}", std::process::id());
            for statement in [
                format!("DROP DATABASE IF EXISTS {name}"),
                format!("CREATE DATABASE {name}"),
            ] {
                sqlx::query(&statement).execute(&admin).await.expect("scratch database");
            }
            let base = url();
            let at = base.rfind('/').expect("a database in the URL");
            let url = format!("{}/{name}", &base[..at]);
            Self { admin, name, url }
        }

        async fn drop(self) {
            sqlx::query(&format!("DROP DATABASE {}", self.name))
                .execute(&self.admin)
                .await
                .expect("drop");
        }
    }

    #[tokio::test]
    async fn a_foreign_table_of_the_same_name_is_refused_and_left_alone() {
        let scratch = Scratch::create("foreign").await;
        let url = scratch.url.clone();
        let foreign = MySqlPool::connect(&url).await.expect("connect");
        sqlx::query("CREATE TABLE kcpy_checkpoints (id INT PRIMARY KEY, value DOUBLE)")
            .execute(&foreign)
            .await
            .expect("create");
        match MySqlCheckpointStore::connect(&url).await {
            Err(CheckpointError::Open { source, .. }) => assert!(source.to_string().contains("columns"), "{source}"),
            other => panic!("expected an Open error, got {other:?}"),
        }
        let columns = table_columns(&foreign).await.expect("columns");
        assert_eq!(columns, ["id", "value"]);
        foreign.close().await;
        scratch.drop().await;
    }

    #[tokio::test]
    async fn a_fresh_database_gets_the_table_on_connect() {
        let scratch = Scratch::create("fresh").await;
        let url = scratch.url.clone();
        let store = MySqlCheckpointStore::connect(&url).await.expect("connect");
        assert_eq!(table_columns(store.pool()).await.expect("columns"), COLUMNS);
        let again = MySqlCheckpointStore::connect(&url).await.expect("connect again");
        again.pool().close().await;
        store.pool().close().await;
        scratch.drop().await;
    }

    #[tokio::test]
    async fn wrong_credentials_are_an_open_error_without_the_password() {
        let base = url();
        let host = base.split('@').nth(1).unwrap_or("127.0.0.1:3306/test");
        let bad = format!("mysql://kcpy_nobody:s3cret@{host}");
        match MySqlCheckpointStore::connect(&bad).await {
            Err(CheckpointError::Open { location, .. }) => assert!(!location.contains("s3cret"), "{location}"),
            other => panic!("expected an Open error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_open_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let result = MySqlCheckpointStore::connect(&format!("mysql://root@127.0.0.1:{port}/test")).await;
        assert!(matches!(result, Err(CheckpointError::Open { .. })), "{result:?}");
    }

    #[tokio::test]
    async fn a_url_without_a_database_is_an_open_error() {
        let base = url();
        let at = base.rfind('/').expect("a database in the URL");
        let result = MySqlCheckpointStore::connect(&base[..at]).await;
        assert!(matches!(result, Err(CheckpointError::Open { .. })), "{result:?}");
    }
}
