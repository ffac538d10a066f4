//! A MySQL / MariaDB [`CheckpointStore`] and [`LeaseStore`] for kcpy, on sqlx.
//!
//! One InnoDB table, `kcpy_checkpoints`, keyed by (consumer name, stream,
//! shard) with binary collation (so `App` and `app` are different consumers),
//! holding each checkpoint as text and the shard's lease (owner, epoch,
//! heartbeat, handoff request, parents), as the PostgreSQL store does. Every
//! change locks its row, checks and writes in one InnoDB transaction, durable
//! on return with the default `innodb_flush_log_at_trx_commit = 1`. The table
//! is created on connect, and a table of the first version (checkpoints only)
//! is given the lease columns; a table of that name with another shape is
//! refused, never altered.
//!
//! [`MySqlCheckpointStore::commit`] writes a checkpoint inside a transaction
//! of the caller's, beside the caller's results, so that both commit or
//! neither does: records applied effectively once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kcpy_core::{BoxError, Checkpoint, CheckpointError, CheckpointKey, CheckpointStore, Lease, LeaseStore};
use sqlx::mysql::{MySqlDatabaseError, MySqlPoolOptions};
use sqlx::{MySql, MySqlPool, Transaction};

mod in_transaction;

const SCHEMA_COMMENT: &str = "kcpy checkpoints and leases v2";
const SCHEMA_COMMENT_V1: &str = "kcpy checkpoints v1";

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS kcpy_checkpoints (
    consumer_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    stream_name VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    shard_id VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    checkpoint VARCHAR(160) CHARACTER SET ascii COLLATE ascii_bin NULL,
    updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    owner VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    epoch BIGINT UNSIGNED NOT NULL DEFAULT 0,
    heartbeat BIGINT UNSIGNED NOT NULL DEFAULT 0,
    handoff_to VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    parents VARCHAR(1024) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    PRIMARY KEY (consumer_name, stream_name, shard_id)
) ENGINE = InnoDB COMMENT = 'kcpy checkpoints and leases v2'";

/// From the first version (checkpoints only) to the second: the checkpoint
/// may be missing (a lease not yet read), and the lease columns are added.
const MIGRATE_V1: &str = "ALTER TABLE kcpy_checkpoints
    MODIFY checkpoint VARCHAR(160) CHARACTER SET ascii COLLATE ascii_bin NULL,
    ADD COLUMN owner VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    ADD COLUMN epoch BIGINT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN heartbeat BIGINT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN handoff_to VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    ADD COLUMN parents VARCHAR(1024) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    COMMENT = 'kcpy checkpoints and leases v2'";

const COLUMNS_V1: [&str; 5] = ["consumer_name", "stream_name", "shard_id", "checkpoint", "updated_at"];
const COLUMNS: [&str; 10] = [
    "consumer_name",
    "stream_name",
    "shard_id",
    "checkpoint",
    "updated_at",
    "owner",
    "epoch",
    "heartbeat",
    "handoff_to",
    "parents",
];

/// A lease row, with the binary-collated columns read as text.
const LEASE_SELECT: &str = "SELECT CAST(shard_id AS CHAR CHARACTER SET utf8mb4),
    CAST(checkpoint AS CHAR CHARACTER SET utf8mb4), CAST(owner AS CHAR CHARACTER SET utf8mb4), epoch, heartbeat,
    CAST(handoff_to AS CHAR CHARACTER SET utf8mb4), CAST(parents AS CHAR CHARACTER SET utf8mb4)
    FROM kcpy_checkpoints";

type LeaseRow = (String, Option<String>, Option<String>, u64, u64, Option<String>, String);

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
            // A process frozen (GC, SIGSTOP, lost network) in the middle of
            // a transaction would hold its row lock, and block every other
            // worker's lease change, for good: the server drops a connection
            // silent for 10 s, which rolls its transaction back. Idle pooled
            // connections it drops are reopened on checkout.
            .after_connect(|connection, _| {
                Box::pin(async move {
                    sqlx::query("SET SESSION wait_timeout = 10, innodb_lock_wait_timeout = 10")
                        .execute(connection)
                        .await
                        .map(drop)
                })
            })
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
    if columns == COLUMNS_V1 && table_comment(pool).await.map_err(boxed)? == SCHEMA_COMMENT_V1 {
        // Another process may be migrating at the same moment; what counts
        // is the shape afterwards.
        if let Err(error) = sqlx::query(MIGRATE_V1).execute(pool).await {
            if table_columns(pool).await.map_err(boxed)? != COLUMNS {
                return Err(boxed(error));
            }
        }
    }
    let columns = table_columns(pool).await.map_err(boxed)?;
    if columns != COLUMNS {
        return Err(Arc::new(SchemaError(format!(
            "table kcpy_checkpoints has columns {columns:?}, expected {COLUMNS:?}"
        ))));
    }
    let comment = table_comment(pool).await.map_err(boxed)?;
    if comment != SCHEMA_COMMENT {
        return Err(Arc::new(SchemaError(format!(
            "table kcpy_checkpoints is {comment:?}, expected {SCHEMA_COMMENT:?}"
        ))));
    }
    Ok(())
}

async fn table_comment(pool: &MySqlPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CAST(table_comment AS CHAR) FROM information_schema.tables
         WHERE table_schema = DATABASE() AND table_name = 'kcpy_checkpoints'",
    )
    .fetch_one(pool)
    .await
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
        let stored: Option<Option<String>> = sqlx::query_scalar(&format!(
            "SELECT {CHECKPOINT_TEXT} FROM kcpy_checkpoints WHERE {WHERE_KEY}"
        ))
        .bind(&key.consumer_name)
        .bind(&key.stream_name)
        .bind(&key.shard_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        stored
            .flatten()
            .map(|text| CheckpointError::parse_stored(key, &text))
            .transpose()
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
        let row = Self::lock_row(&mut tx, key).await?;
        Self::advance(tx, key, row.and_then(|row| row.1), checkpoint).await
    }

    async fn reset(&self, key: &CheckpointKey, to: Option<&Checkpoint>) -> Result<(), CheckpointError> {
        // The lease ends with it: no owner, a higher epoch.
        let query = match to {
            Some(to) => sqlx::query(
                "INSERT INTO kcpy_checkpoints (consumer_name, stream_name, shard_id, checkpoint) VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE checkpoint = VALUES(checkpoint), owner = NULL, handoff_to = NULL,
                 epoch = epoch + 1, heartbeat = heartbeat + 1",
            )
            .bind(&key.consumer_name)
            .bind(&key.stream_name)
            .bind(&key.shard_id)
            .bind(to.as_str()),
            None => sqlx::query(
                "UPDATE kcpy_checkpoints SET checkpoint = NULL, owner = NULL, handoff_to = NULL, epoch = epoch + 1,
                 heartbeat = heartbeat + 1 WHERE consumer_name = ? AND stream_name = ? AND shard_id = ?",
            )
            .bind(&key.consumer_name)
            .bind(&key.stream_name)
            .bind(&key.shard_id),
        };
        query.execute(&self.pool).await.map_err(store_error).map(drop)
    }
}

impl MySqlCheckpointStore {
    /// Locks the key's row; `None` if there is none.
    async fn lock_row(
        tx: &mut Transaction<'_, MySql>,
        key: &CheckpointKey,
    ) -> Result<Option<LeaseRow>, CheckpointError> {
        sqlx::query_as(&format!("{LEASE_SELECT} WHERE {WHERE_KEY} FOR UPDATE"))
            .bind(&key.consumer_name)
            .bind(&key.stream_name)
            .bind(&key.shard_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(store_error)
    }

    /// Writes `checkpoint` over the locked row's `stored` text unless that
    /// would move it backwards; then commits.
    async fn advance(
        mut tx: Transaction<'_, MySql>,
        key: &CheckpointKey,
        stored: Option<String>,
        checkpoint: &Checkpoint,
    ) -> Result<(), CheckpointError> {
        let stored = stored
            .map(|text| CheckpointError::parse_stored(key, &text))
            .transpose()?;
        if !CheckpointError::check_forward(key, stored.as_ref(), checkpoint)? {
            return Ok(());
        }
        sqlx::query(&format!("UPDATE kcpy_checkpoints SET checkpoint = ? WHERE {WHERE_KEY}"))
            .bind(checkpoint.as_str())
            .bind(&key.consumer_name)
            .bind(&key.stream_name)
            .bind(&key.shard_id)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)
    }

    /// Locks the lease's row, lets `allowed` check it, writes `change` and
    /// returns the lease as stored now. A failed check changes nothing.
    async fn change_lease(
        &self,
        key: &CheckpointKey,
        allowed: impl FnOnce(&Lease) -> bool,
        change: impl FnOnce(&mut Lease),
    ) -> Result<Lease, CheckpointError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let row = Self::lock_row(&mut tx, key)
            .await?
            .ok_or_else(|| CheckpointError::lease_lost(key))?;
        let mut lease = lease_from_row(&key.consumer_name, &key.stream_name, row)?;
        if !allowed(&lease) {
            return Err(CheckpointError::lease_lost(key));
        }
        change(&mut lease);
        sqlx::query(&format!(
            "UPDATE kcpy_checkpoints SET owner = ?, epoch = ?, heartbeat = ?, handoff_to = ? WHERE {WHERE_KEY}"
        ))
        .bind(&lease.owner)
        .bind(lease.epoch)
        .bind(lease.heartbeat)
        .bind(&lease.handoff_to)
        .bind(&key.consumer_name)
        .bind(&key.stream_name)
        .bind(&key.shard_id)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(lease)
    }
}

fn lease_from_row(consumer_name: &str, stream_name: &str, row: LeaseRow) -> Result<Lease, CheckpointError> {
    let (shard_id, checkpoint, owner, epoch, heartbeat, handoff_to, parents) = row;
    let parents = parents
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let mut lease = Lease::new(CheckpointKey::new(consumer_name, stream_name, shard_id), parents);
    lease.checkpoint = checkpoint
        .map(|text| CheckpointError::parse_stored(&lease.key, &text))
        .transpose()?;
    lease.owner = owner;
    lease.epoch = epoch;
    lease.heartbeat = heartbeat;
    lease.handoff_to = handoff_to;
    Ok(lease)
}

/// Whether the stored lease still has `held`'s owner and epoch.
fn still_held(stored: &Lease, held: &Lease) -> bool {
    stored.owner.is_some() && stored.owner == held.owner && stored.epoch == held.epoch
}

#[async_trait]
impl LeaseStore for MySqlCheckpointStore {
    async fn list_leases(&self, consumer_name: &str, stream_name: &str) -> Result<Vec<Lease>, CheckpointError> {
        let rows: Vec<LeaseRow> = sqlx::query_as(&format!(
            "{LEASE_SELECT} WHERE consumer_name = ? AND stream_name = ? ORDER BY shard_id"
        ))
        .bind(consumer_name)
        .bind(stream_name)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.into_iter()
            .map(|row| lease_from_row(consumer_name, stream_name, row))
            .collect()
    }

    async fn create_lease(&self, key: &CheckpointKey, parents: &[String]) -> Result<bool, CheckpointError> {
        let inserted = sqlx::query(
            "INSERT IGNORE INTO kcpy_checkpoints (consumer_name, stream_name, shard_id, parents) VALUES (?, ?, ?, ?)",
        )
        .bind(&key.consumer_name)
        .bind(&key.stream_name)
        .bind(&key.shard_id)
        .bind(parents.join(","))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn take_lease(&self, observed: &Lease, owner: &str) -> Result<Lease, CheckpointError> {
        self.change_lease(
            &observed.key,
            |stored| stored.epoch == observed.epoch && stored.heartbeat == observed.heartbeat,
            |lease| {
                lease.owner = Some(owner.to_owned());
                lease.epoch += 1;
                lease.heartbeat += 1;
                lease.handoff_to = None;
            },
        )
        .await
    }

    async fn renew_lease(&self, held: &Lease) -> Result<Lease, CheckpointError> {
        self.change_lease(
            &held.key,
            |stored| still_held(stored, held),
            |lease| lease.heartbeat += 1,
        )
        .await
    }

    async fn request_handoff(&self, observed: &Lease, to: &str) -> Result<(), CheckpointError> {
        self.change_lease(
            &observed.key,
            |stored| still_held(stored, observed),
            |lease| lease.handoff_to = Some(to.to_owned()),
        )
        .await
        .map(drop)
    }

    async fn release_lease(&self, held: &Lease, to: Option<&str>) -> Result<(), CheckpointError> {
        self.change_lease(
            &held.key,
            |stored| still_held(stored, held),
            |lease| {
                lease.owner = to.map(str::to_owned);
                lease.epoch += 1;
                lease.heartbeat += 1;
                lease.handoff_to = None;
            },
        )
        .await
        .map(drop)
    }

    async fn save_leased(&self, held: &Lease, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let key = &held.key;
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let row = Self::lock_row(&mut tx, key)
            .await?
            .ok_or_else(|| CheckpointError::lease_lost(key))?;
        let stored_checkpoint = row.1.clone();
        let stored = lease_from_row(&key.consumer_name, &key.stream_name, row)?;
        if !still_held(&stored, held) {
            return Err(CheckpointError::lease_lost(key));
        }
        Self::advance(tx, key, stored_checkpoint, checkpoint).await
    }

    async fn delete_lease(&self, observed: &Lease) -> Result<(), CheckpointError> {
        let key = &observed.key;
        let deleted = sqlx::query(&format!(
            "DELETE FROM kcpy_checkpoints WHERE {WHERE_KEY} AND owner IS NULL AND epoch = ? AND checkpoint = ?"
        ))
        .bind(&key.consumer_name)
        .bind(&key.stream_name)
        .bind(&key.shard_id)
        .bind(observed.epoch)
        .bind(Checkpoint::ShardEnd.to_string())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        if deleted.rows_affected() == 0 {
            return Err(CheckpointError::lease_lost(key));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kcpy_core::PendingCheckpoint;

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
        kcpy_core::test_util::reset_conformance(&store().await).await;
    }

    #[tokio::test]
    async fn mysql_store_meets_the_lease_store_contract() {
        kcpy_core::test_util::lease_store_conformance(&store().await).await;
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
    async fn checkpoints_written_in_the_callers_transaction_commit_and_roll_back_with_it() {
        let store = store().await;
        let pool = store.pool().clone();
        let write = |pending: PendingCheckpoint, commit: bool| {
            let (store, pool) = (&store, pool.clone());
            async move {
                let mut tx = pool.begin().await.map_err(store_error)?;
                store.checkpoint_in(&mut tx, &pending).await?;
                if commit {
                    tx.commit().await.map_err(store_error)
                } else {
                    tx.rollback().await.map_err(store_error)
                }
            }
        };
        kcpy_core::test_util::in_transaction_conformance(
            &store,
            |pending| write(pending, true),
            |pending| write(pending, false),
        )
        .await;
    }

    #[tokio::test]
    async fn a_transaction_left_open_by_a_frozen_process_blocks_lease_changes_only_briefly() {
        let frozen = store().await;
        let lock_row = |key: CheckpointKey| async move {
            let mut tx = frozen.pool().begin().await.expect("begin");
            sqlx::query(
                "SELECT 1 FROM kcpy_checkpoints WHERE consumer_name = ? AND stream_name = ? AND shard_id = ? FOR UPDATE",
            )
            .bind(&key.consumer_name)
            .bind(&key.stream_name)
            .bind(&key.shard_id)
            .execute(&mut *tx)
            .await
            .expect("lock the row");
            tx
        };
        kcpy_core::test_util::frozen_transaction_conformance(&store().await, lock_row).await;
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
    async fn a_checkpoints_only_table_gains_the_lease_columns_and_keeps_its_checkpoints() {
        let scratch = Scratch::create("v1").await;
        let v1 = MySqlPool::connect(&scratch.url).await.expect("connect");
        sqlx::query(
            "CREATE TABLE kcpy_checkpoints (
                consumer_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
                stream_name VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
                shard_id VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
                checkpoint VARCHAR(160) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
                PRIMARY KEY (consumer_name, stream_name, shard_id)
            ) ENGINE = InnoDB COMMENT = 'kcpy checkpoints v1'",
        )
        .execute(&v1)
        .await
        .expect("a first-version table");
        sqlx::query("INSERT INTO kcpy_checkpoints (consumer_name, stream_name, shard_id, checkpoint) VALUES ('app', 's', 'shard-1', '42')")
            .execute(&v1)
            .await
            .expect("a checkpoint");
        v1.close().await;

        let store = MySqlCheckpointStore::connect(&scratch.url)
            .await
            .expect("connect migrates");
        assert_eq!(table_columns(store.pool()).await.expect("columns"), COLUMNS);
        let key = CheckpointKey::new("app", "s", "shard-1");
        assert_eq!(
            store.load(&key).await.expect("load"),
            Some("42".parse().expect("valid"))
        );
        let leases = store.list_leases("app", "s").await.expect("list");
        assert_eq!(leases.len(), 1);
        assert_eq!(
            (leases[0].owner.as_deref(), leases[0].epoch),
            (None, 0),
            "the row is a free lease"
        );
        let held = store.take_lease(&leases[0], "w").await.expect("take");
        store
            .save_leased(&held, &"43".parse().expect("valid"))
            .await
            .expect("save under the lease");
        store.pool().close().await;
        scratch.drop().await;
    }

    #[tokio::test]
    async fn wrong_credentials_are_an_open_error_without_the_password() {
        let base = url();
        let host = base.split('@').nth(1).unwrap_or("127.0.0.1:3306/test");
        let host = host.split('?').next().unwrap_or(host);
        for bad in [
            format!("mysql://kcpy_nobody:s3cret@{host}"),
            format!("mysql://kcpy_nobody@{host}?password=s3cret"),
        ] {
            match MySqlCheckpointStore::connect(&bad).await {
                Err(error @ CheckpointError::Open { .. }) => {
                    let text = format!("{error} {error:?}");
                    assert!(!text.contains("s3cret"), "{text}");
                }
                other => panic!("expected an Open error for {bad}, got {other:?}"),
            }
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
