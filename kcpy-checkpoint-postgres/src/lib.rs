//! A PostgreSQL [`CheckpointStore`] and [`LeaseStore`] for kcpy, on sqlx.
//!
//! One table, `kcpy_checkpoints`, keyed by (consumer name, stream, shard),
//! holds each shard's checkpoint as text and its lease (owner, epoch,
//! heartbeat, handoff request, parents). Every lease change is one
//! conditional `UPDATE`; a checkpoint write locks its row, checks the lease
//! and the order, and writes in one transaction, so a fenced-out worker
//! changes nothing. Writes are durable on return with the default
//! `synchronous_commit = on`. The table is created on connect; a table of that
//! name with another shape is refused, never altered.
//!
//! [`PostgresCheckpointStore::commit`] writes a checkpoint inside a
//! transaction of the caller's, beside the caller's results, so that both
//! commit or neither does: records applied effectively once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kcpy_core::{
    BoxError, Checkpoint, CheckpointError, CheckpointKey, CheckpointStore, Checkpointer, Lease, LeaseStore,
    PendingCheckpoint, Record,
};
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};

const SCHEMA_COMMENT: &str = "kcpy checkpoints and leases v1";

const CREATE_TABLE: &str = r#"CREATE TABLE IF NOT EXISTS kcpy_checkpoints (
    consumer_name TEXT COLLATE "C" NOT NULL,
    stream_name TEXT COLLATE "C" NOT NULL,
    shard_id TEXT COLLATE "C" NOT NULL,
    checkpoint TEXT,
    owner TEXT,
    epoch BIGINT NOT NULL DEFAULT 0,
    heartbeat BIGINT NOT NULL DEFAULT 0,
    handoff_to TEXT,
    parents TEXT[] NOT NULL DEFAULT '{}',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_name, stream_name, shard_id)
)"#;

const COLUMNS: [&str; 10] = [
    "consumer_name",
    "stream_name",
    "shard_id",
    "checkpoint",
    "owner",
    "epoch",
    "heartbeat",
    "handoff_to",
    "parents",
    "updated_at",
];

const LEASE_COLUMNS: &str =
    "consumer_name, stream_name, shard_id, checkpoint, owner, epoch, heartbeat, handoff_to, parents";

const WHERE_KEY: &str = "consumer_name = $1 AND stream_name = $2 AND shard_id = $3";

/// Checkpoints and leases in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresCheckpointStore {
    pool: PgPool,
}

impl PostgresCheckpointStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`; the
    /// database must exist) and creates the table if it is missing.
    pub async fn connect(url: &str) -> Result<Self, CheckpointError> {
        let open = |source: BoxError| CheckpointError::open(url, source);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            // A process frozen (GC, SIGSTOP, lost network) in the middle of
            // a transaction would hold its row lock, and block every other
            // worker's lease change, for good: the server ends a session
            // idle in a transaction for 10 s, which rolls it back.
            .after_connect(|connection, _| {
                Box::pin(async move {
                    sqlx::query("SET idle_in_transaction_session_timeout = '10s'")
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
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Writes the checkpoint of `record` (and of every record of its shard
    /// delivered before it) in `tx`, a transaction you opened on this
    /// store's database holding your results, and commits it: your results
    /// and the checkpoint are durable together or not at all, and the
    /// consumer resumes after them. Needs [`CheckpointMode::Manual`].
    ///
    /// The write follows the store's rules: never backwards, and in a
    /// consumer group only while this worker holds the shard's lease. On an
    /// error the transaction is rolled back, your results with it:
    /// - [`CheckpointError::LeaseLost`]: another worker holds the shard now
    ///   and applies its records; go on with the next records.
    /// - [`CheckpointError::AlreadyCommitted`]: these records were committed
    ///   before (a commit whose answer was lost, say); go on.
    /// - otherwise ([`kcpy_core::Error::is_retryable`] tells), the records
    ///   are not applied: try them again in a new transaction, or stop; a
    ///   restart delivers them again.
    ///
    /// [`CheckpointMode::Manual`]: kcpy_core::CheckpointMode::Manual
    pub async fn commit(
        &self,
        mut tx: Transaction<'_, Postgres>,
        checkpointer: &Checkpointer,
        record: &Record,
    ) -> Result<(), kcpy_core::Error> {
        let pending = checkpointer.prepare(record)?;
        if let Err(error) = self.checkpoint_in(&mut tx, &pending).await {
            // Its answer does not matter: unfinished, it rolls back anyway.
            let _ = tx.rollback().await;
            if matches!(error, CheckpointError::AlreadyCommitted { .. }) {
                pending.committed();
            }
            return Err(error.into());
        }
        tx.commit().await.map_err(store_error)?;
        pending.committed();
        Ok(())
    }

    /// Writes `pending` in `tx`, your transaction on this store's database,
    /// without committing: commit it yourself, then call
    /// [`PendingCheckpoint::committed`]. [`commit`](Self::commit) does all
    /// of it; this is for code that commits elsewhere.
    ///
    /// This locks the checkpoint's row until `tx` ends, and tells the
    /// server to end `tx` if it stays idle for 10 s, so that a process
    /// frozen before its commit cannot hold up the consumer group: commit
    /// soon after.
    pub async fn checkpoint_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        pending: &PendingCheckpoint,
    ) -> Result<(), CheckpointError> {
        let key = pending.key();
        sqlx::query("SET LOCAL idle_in_transaction_session_timeout = '10s'")
            .execute(&mut **tx)
            .await
            .map_err(store_error)?;
        let row = match Self::lock_row(tx, key).await? {
            Some(row) => row,
            None => {
                sqlx::query(
                    "INSERT INTO kcpy_checkpoints (consumer_name, stream_name, shard_id) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                )
                .bind(&key.consumer_name)
                .bind(&key.stream_name)
                .bind(&key.shard_id)
                .execute(&mut **tx)
                .await
                .map_err(store_error)?;
                Self::lock_row(tx, key).await?.ok_or_else(|| {
                    CheckpointError::backend(SchemaError(format!("the row of {key} vanished during a save")), true)
                })?
            }
        };
        let (stored, owner, epoch) = row;
        pending.check(
            stored.as_deref(),
            owner.as_deref(),
            u64::try_from(epoch).unwrap_or_default(),
        )?;
        sqlx::query(&format!(
            "UPDATE kcpy_checkpoints SET checkpoint = $4, updated_at = now() WHERE {WHERE_KEY}"
        ))
        .bind(&key.consumer_name)
        .bind(&key.stream_name)
        .bind(&key.shard_id)
        .bind(pending.checkpoint().as_str())
        .execute(&mut **tx)
        .await
        .map_err(store_error)
        .map(drop)
    }
}

/// The database holds something this crate cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SchemaError(String);

fn boxed(error: sqlx::Error) -> BoxError {
    Arc::new(error)
}

async fn prepare(pool: &PgPool) -> Result<(), BoxError> {
    if table_columns(pool).await.map_err(boxed)?.is_empty() {
        match create_table(pool).await {
            Ok(()) => {}
            // Another process created it at the same moment.
            Err(error) if sql_state(&error).as_deref() == Some(UNIQUE_VIOLATION) => {}
            Err(error) => return Err(boxed(error)),
        }
    }
    let columns = table_columns(pool).await.map_err(boxed)?;
    if columns != COLUMNS {
        return Err(Arc::new(SchemaError(format!(
            "table kcpy_checkpoints has columns {columns:?}, expected {COLUMNS:?}"
        ))));
    }
    let comment: Option<String> =
        sqlx::query_scalar("SELECT obj_description('kcpy_checkpoints'::regclass, 'pg_class')")
            .fetch_one(pool)
            .await
            .map_err(boxed)?;
    if comment.as_deref() != Some(SCHEMA_COMMENT) {
        return Err(Arc::new(SchemaError(format!(
            "table kcpy_checkpoints is {comment:?}, expected {SCHEMA_COMMENT:?}"
        ))));
    }
    Ok(())
}

async fn create_table(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(CREATE_TABLE).execute(&mut *tx).await?;
    sqlx::query(&format!("COMMENT ON TABLE kcpy_checkpoints IS '{SCHEMA_COMMENT}'"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

async fn table_columns(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = 'kcpy_checkpoints' ORDER BY ordinal_position",
    )
    .fetch_all(pool)
    .await
}

const UNIQUE_VIOLATION: &str = "23505";

fn sql_state(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

fn store_error(error: sqlx::Error) -> CheckpointError {
    // Serialization failure, deadlock, too many connections, shutdown,
    // connection failures, a session the server ended for idling in a
    // transaction (a process frozen mid-write; it was rolled back, and a
    // new connection works): worth another try.
    let transient = sql_state(&error).is_some_and(|state| {
        matches!(
            state.as_str(),
            "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03" | "25P03" | "57P05"
        ) || state.starts_with("08")
    }) || matches!(
        error,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed
    );
    CheckpointError::backend(error, transient)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn lease_from_row(row: &PgRow) -> Result<Lease, CheckpointError> {
    let get_text = |column: &str| row.try_get::<String, _>(column).map_err(store_error);
    let key = CheckpointKey::new(
        get_text("consumer_name")?,
        get_text("stream_name")?,
        get_text("shard_id")?,
    );
    let parents: Vec<String> = row.try_get("parents").map_err(store_error)?;
    let checkpoint: Option<String> = row.try_get("checkpoint").map_err(store_error)?;
    let mut lease = Lease::new(key, parents);
    lease.checkpoint = checkpoint
        .map(|text| CheckpointError::parse_stored(&lease.key, &text))
        .transpose()?;
    lease.owner = row.try_get("owner").map_err(store_error)?;
    lease.handoff_to = row.try_get("handoff_to").map_err(store_error)?;
    let epoch: i64 = row.try_get("epoch").map_err(store_error)?;
    let heartbeat: i64 = row.try_get("heartbeat").map_err(store_error)?;
    lease.epoch = u64::try_from(epoch).unwrap_or_default();
    lease.heartbeat = u64::try_from(heartbeat).unwrap_or_default();
    Ok(lease)
}

impl PostgresCheckpointStore {
    /// Locks the key's row; `None` if there is none.
    async fn lock_row(
        tx: &mut Transaction<'_, Postgres>,
        key: &CheckpointKey,
    ) -> Result<Option<(Option<String>, Option<String>, i64)>, CheckpointError> {
        sqlx::query_as(&format!(
            "SELECT checkpoint, owner, epoch FROM kcpy_checkpoints WHERE {WHERE_KEY} FOR UPDATE"
        ))
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
        mut tx: Transaction<'_, Postgres>,
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
        sqlx::query(&format!(
            "UPDATE kcpy_checkpoints SET checkpoint = $4, updated_at = now() WHERE {WHERE_KEY}"
        ))
        .bind(&key.consumer_name)
        .bind(&key.stream_name)
        .bind(&key.shard_id)
        .bind(checkpoint.as_str())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)
    }

    /// Runs a conditional lease `UPDATE … RETURNING`; no row means the
    /// condition failed.
    async fn update_lease(
        &self,
        sql: &str,
        key: &CheckpointKey,
        binds: LeaseBinds<'_>,
    ) -> Result<Lease, CheckpointError> {
        let mut query = sqlx::query(sql)
            .bind(&key.consumer_name)
            .bind(&key.stream_name)
            .bind(&key.shard_id);
        for text in binds.texts {
            query = query.bind(text);
        }
        for number in binds.numbers {
            query = query.bind(number);
        }
        match query.fetch_optional(&self.pool).await.map_err(store_error)? {
            Some(row) => lease_from_row(&row),
            None => Err(CheckpointError::lease_lost(key)),
        }
    }
}

/// Parameters after the key: texts ($4, …) then numbers.
struct LeaseBinds<'a> {
    texts: Vec<Option<&'a str>>,
    numbers: Vec<i64>,
}

#[async_trait]
impl CheckpointStore for PostgresCheckpointStore {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        let stored: Option<Option<String>> =
            sqlx::query_scalar(&format!("SELECT checkpoint FROM kcpy_checkpoints WHERE {WHERE_KEY}"))
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
        let inserted = sqlx::query(
            "INSERT INTO kcpy_checkpoints (consumer_name, stream_name, shard_id, checkpoint) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(&key.consumer_name)
        .bind(&key.stream_name)
        .bind(&key.shard_id)
        .bind(checkpoint.as_str())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        if inserted.rows_affected() == 1 {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let Some((stored, _, _)) = Self::lock_row(&mut tx, key).await? else {
            return Err(CheckpointError::backend(
                SchemaError(format!("the row of {key} vanished during a save")),
                true,
            ));
        };
        Self::advance(tx, key, stored, checkpoint).await
    }

    async fn reset(&self, key: &CheckpointKey, to: Option<&Checkpoint>) -> Result<(), CheckpointError> {
        // The lease ends with it: no owner, a higher epoch.
        let query = match to {
            Some(to) => sqlx::query(
                "INSERT INTO kcpy_checkpoints (consumer_name, stream_name, shard_id, checkpoint) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (consumer_name, stream_name, shard_id) DO UPDATE SET checkpoint = excluded.checkpoint,
                 owner = NULL, handoff_to = NULL, epoch = kcpy_checkpoints.epoch + 1,
                 heartbeat = kcpy_checkpoints.heartbeat + 1, updated_at = now()",
            )
            .bind(&key.consumer_name)
            .bind(&key.stream_name)
            .bind(&key.shard_id)
            .bind(to.as_str()),
            None => sqlx::query(
                "UPDATE kcpy_checkpoints SET checkpoint = NULL, owner = NULL, handoff_to = NULL, epoch = epoch + 1,
                 heartbeat = heartbeat + 1, updated_at = now() WHERE consumer_name = $1 AND stream_name = $2 AND shard_id = $3",
            )
            .bind(&key.consumer_name)
            .bind(&key.stream_name)
            .bind(&key.shard_id),
        };
        query.execute(&self.pool).await.map_err(store_error).map(drop)
    }
}

#[async_trait]
impl LeaseStore for PostgresCheckpointStore {
    async fn list_leases(&self, consumer_name: &str, stream_name: &str) -> Result<Vec<Lease>, CheckpointError> {
        let rows = sqlx::query(&format!(
            "SELECT {LEASE_COLUMNS} FROM kcpy_checkpoints WHERE consumer_name = $1 AND stream_name = $2 ORDER BY shard_id"
        ))
        .bind(consumer_name)
        .bind(stream_name)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(lease_from_row).collect()
    }

    async fn create_lease(&self, key: &CheckpointKey, parents: &[String]) -> Result<bool, CheckpointError> {
        let inserted = sqlx::query(
            "INSERT INTO kcpy_checkpoints (consumer_name, stream_name, shard_id, parents) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(&key.consumer_name)
        .bind(&key.stream_name)
        .bind(&key.shard_id)
        .bind(parents)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn take_lease(&self, observed: &Lease, owner: &str) -> Result<Lease, CheckpointError> {
        let sql = format!(
            "UPDATE kcpy_checkpoints SET owner = $4, epoch = epoch + 1, heartbeat = heartbeat + 1, handoff_to = NULL,
             updated_at = now() WHERE {WHERE_KEY} AND epoch = $5 AND heartbeat = $6 RETURNING {LEASE_COLUMNS}"
        );
        let binds = LeaseBinds {
            texts: vec![Some(owner)],
            numbers: vec![to_i64(observed.epoch), to_i64(observed.heartbeat)],
        };
        self.update_lease(&sql, &observed.key, binds).await
    }

    async fn renew_lease(&self, held: &Lease) -> Result<Lease, CheckpointError> {
        let sql = format!(
            "UPDATE kcpy_checkpoints SET heartbeat = heartbeat + 1, updated_at = now()
             WHERE {WHERE_KEY} AND owner = $4 AND epoch = $5 RETURNING {LEASE_COLUMNS}"
        );
        let binds = LeaseBinds {
            texts: vec![held.owner.as_deref()],
            numbers: vec![to_i64(held.epoch)],
        };
        self.update_lease(&sql, &held.key, binds).await
    }

    async fn request_handoff(&self, observed: &Lease, to: &str) -> Result<(), CheckpointError> {
        let sql = format!(
            "UPDATE kcpy_checkpoints SET handoff_to = $4, updated_at = now()
             WHERE {WHERE_KEY} AND owner = $5 AND epoch = $6 RETURNING {LEASE_COLUMNS}"
        );
        let binds = LeaseBinds {
            texts: vec![Some(to), observed.owner.as_deref()],
            numbers: vec![to_i64(observed.epoch)],
        };
        self.update_lease(&sql, &observed.key, binds).await.map(drop)
    }

    async fn release_lease(&self, held: &Lease, to: Option<&str>) -> Result<(), CheckpointError> {
        let sql = format!(
            "UPDATE kcpy_checkpoints SET owner = $4, epoch = epoch + 1, heartbeat = heartbeat + 1, handoff_to = NULL,
             updated_at = now() WHERE {WHERE_KEY} AND owner = $5 AND epoch = $6 RETURNING {LEASE_COLUMNS}"
        );
        let binds = LeaseBinds {
            texts: vec![to, held.owner.as_deref()],
            numbers: vec![to_i64(held.epoch)],
        };
        self.update_lease(&sql, &held.key, binds).await.map(drop)
    }

    async fn save_leased(&self, held: &Lease, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let key = &held.key;
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        match Self::lock_row(&mut tx, key).await? {
            Some((stored, owner, epoch)) if owner.is_some() && owner == held.owner && epoch == to_i64(held.epoch) => {
                Self::advance(tx, key, stored, checkpoint).await
            }
            _ => Err(CheckpointError::lease_lost(key)),
        }
    }

    async fn delete_lease(&self, observed: &Lease) -> Result<(), CheckpointError> {
        let key = &observed.key;
        let deleted = sqlx::query(&format!(
            "DELETE FROM kcpy_checkpoints WHERE {WHERE_KEY} AND owner IS NULL AND epoch = $4 AND checkpoint = $5"
        ))
        .bind(&key.consumer_name)
        .bind(&key.stream_name)
        .bind(&key.shard_id)
        .bind(to_i64(observed.epoch))
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

    fn url() -> String {
        std::env::var("KCPY_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    async fn store() -> PostgresCheckpointStore {
        PostgresCheckpointStore::connect(&url())
            .await
            .expect("PostgreSQL at KCPY_POSTGRES_URL (scripts/services starts it)")
    }

    #[tokio::test]
    async fn postgres_store_meets_the_checkpoint_store_contract() {
        kcpy_core::test_util::checkpoint_store_conformance(&store().await).await;
        kcpy_core::test_util::reset_conformance(&store().await).await;
    }

    #[tokio::test]
    async fn postgres_store_meets_the_lease_store_contract() {
        kcpy_core::test_util::lease_store_conformance(&store().await).await;
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
                "SELECT 1 FROM kcpy_checkpoints WHERE consumer_name = $1 AND stream_name = $2 AND shard_id = $3 FOR UPDATE",
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
        let read_pool = pool.clone();
        kcpy_core::test_util::malformed_value_conformance(
            &store,
            move |key, value| {
                let pool = pool.clone();
                async move {
                    sqlx::query(
                        "INSERT INTO kcpy_checkpoints (consumer_name, stream_name, shard_id, checkpoint) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&key.consumer_name)
                    .bind(&key.stream_name)
                    .bind(&key.shard_id)
                    .bind(value)
                    .execute(&pool)
                    .await
                    .expect("plant");
                }
            },
            move |key| {
                let pool = read_pool.clone();
                async move {
                    sqlx::query_scalar(&format!("SELECT checkpoint FROM kcpy_checkpoints WHERE {WHERE_KEY}"))
                        .bind(&key.consumer_name)
                        .bind(&key.stream_name)
                        .bind(&key.shard_id)
                        .fetch_one(&pool)
                        .await
                        .expect("read back")
                }
            },
        )
        .await;
    }

    #[tokio::test]
    async fn a_foreign_table_of_the_same_name_is_refused_and_left_alone() {
        let admin = store().await;
        let schema = format!("kcpy_foreign_{}", std::process::id());
        let pool = admin.pool();
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(pool)
            .await
            .expect("schema");
        sqlx::query(&format!("CREATE TABLE {schema}.kcpy_checkpoints (id INT PRIMARY KEY)"))
            .execute(pool)
            .await
            .expect("foreign table");
        let url = format!("{}?options=-c%20search_path%3D{schema}", url());
        let result = PostgresCheckpointStore::connect(&url).await;
        let columns: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'kcpy_checkpoints'",
        )
        .bind(&schema)
        .fetch_one(pool)
        .await
        .expect("count");
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(pool)
            .await
            .expect("drop");
        assert!(matches!(result, Err(CheckpointError::Open { .. })), "{result:?}");
        assert_eq!(columns, 1, "the foreign table must be left as it was");
    }

    /// A server that takes TLS connections only (`scripts/postgres-tls`,
    /// started by `scripts/test`), with its self-signed certificate.
    fn tls_server() -> (String, String) {
        let var = |name: &str| {
            std::env::var(name)
                .unwrap_or_else(|_| panic!("{name} is not set: run scripts/test, or scripts/postgres-tls start"))
        };
        (var("KCPY_POSTGRES_TLS_URL"), var("KCPY_POSTGRES_TLS_CA"))
    }

    #[tokio::test]
    async fn a_server_that_requires_tls_is_reached_over_tls_and_its_certificate_checked() {
        let (url, ca) = tls_server();
        for mode in [
            "sslmode=require".to_string(),
            format!("sslmode=verify-full&sslrootcert={ca}"),
        ] {
            let store = PostgresCheckpointStore::connect(&format!("{url}?{mode}"))
                .await
                .unwrap_or_else(|e| panic!("{mode}: {e:?}"));
            let encrypted: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(store.pool())
                .await
                .expect("query");
            assert!(encrypted, "{mode}: the connection is encrypted");
            kcpy_core::test_util::checkpoint_store_conformance(&store).await;
        }
        // Plaintext is refused by that server, and an unknown certificate by us.
        for mode in ["sslmode=disable", "sslmode=verify-full"] {
            let result = PostgresCheckpointStore::connect(&format!("{url}?{mode}")).await;
            assert!(
                matches!(result, Err(CheckpointError::Open { .. })),
                "{mode}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_open_error_without_the_password() {
        for (url, shown) in [
            ("postgres://kcpy:secret@127.0.0.1:1/test", "kcpy:***@127.0.0.1:1"),
            ("postgres://kcpy@127.0.0.1:1/test?password=secret", "?password=***"),
        ] {
            match PostgresCheckpointStore::connect(url).await {
                Err(error @ CheckpointError::Open { .. }) => {
                    let text = format!("{error} {error:?}");
                    assert!(text.contains(shown), "{text}");
                    assert!(!text.contains("secret"), "{text}");
                }
                other => panic!("expected an Open error, got {other:?}"),
            }
        }
    }
}
