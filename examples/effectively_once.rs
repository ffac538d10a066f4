//! Effectively once into a database: each batch of records is inserted into
//! a table, and the batch's checkpoint is written in the same transaction,
//! so a crash anywhere leaves the table and the checkpoint agreeing — every
//! record applied once, however often the process dies and restarts.
//!
//! ```text
//! KCPY_STREAM=my-stream KCPY_DATABASE_URL=postgres://app@db/app \
//!     cargo run --example effectively_once --features postgres,mysql
//! ```
//!
//! `KCPY_DATABASE_URL` may be `postgres://…` or `mysql://…` (MySQL or
//! MariaDB). Set `KCPY_WORKER` to a worker id to run several of these as a
//! consumer group (`KCPY_LEASE_MS` sets the lease). `KCPY_TABLE` names the
//! table (default `kcpy_example_records`); `KCPY_BATCH` caps a batch
//! (default 100); `KCPY_WORK_MS` makes each batch's work take that long,
//! with its transaction open, to watch what happens when a process freezes
//! or dies in the middle. It prints one JSON line per batch.

mod common;

use std::time::Duration;

use kcpy::{CheckpointError, CheckpointMode, Checkpointer, Consumer, MySqlCheckpointStore, PostgresCheckpointStore};
use kcpy::{Record, StartPosition};
use serde_json::json;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{MySqlPool, PgPool};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = env_or("KCPY_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let table = env_or("KCPY_TABLE", "kcpy_example_records");
    if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("KCPY_TABLE must be letters, digits and `_`, not {table:?}").into());
    }
    let batch_size: usize = env_or("KCPY_BATCH", "100").parse()?;
    let work = Duration::from_millis(env_or("KCPY_WORK_MS", "0").parse()?);
    let worker = std::env::var("KCPY_WORKER").ok();
    let lease: Option<u64> = std::env::var("KCPY_LEASE_MS").ok().map(|ms| ms.parse()).transpose()?;

    let database = Database::connect(&url, &table).await?;
    let mut builder = Consumer::builder(common::kinesis_client().await, common::stream_name()?)
        .consumer_name(env_or("KCPY_CONSUMER", "effectively-once-example"))
        .start_position(StartPosition::TrimHorizon)
        // Checkpoints are written only by the transactions below.
        .checkpoint_mode(CheckpointMode::Manual);
    builder = match (&database, &worker) {
        (Database::Postgres { store, .. }, None) => builder.checkpoint_store(store.clone()),
        (Database::Postgres { store, .. }, Some(id)) => builder.lease_store(store.clone()).worker_id(id),
        (Database::MySql { store, .. }, None) => builder.checkpoint_store(store.clone()),
        (Database::MySql { store, .. }, Some(id)) => builder.lease_store(store.clone()).worker_id(id),
    };
    if let Some(ms) = lease {
        builder = builder
            .lease_duration(Duration::from_millis(ms))
            .lease_renew_interval(Duration::from_millis(ms / 6));
    }
    let mut consumer = builder.build().await?;
    let checkpointer = consumer.checkpointer();
    let worker = worker.unwrap_or_default();
    println!("{}", json!({"event": "started", "worker": worker}));

    let shutdown = consumer.shutdown_handle();
    tokio::spawn(async move {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        shutdown.shutdown();
        Ok::<_, std::io::Error>(())
    });

    while let Some(batch) = consumer.next_batch(batch_size).await {
        let Some(last) = batch.last() else { continue };
        let report = json!({"shard": &*last.shard_id, "through": last.sequence_number.as_str(), "rows": batch.len()});
        let mut attempt = 0;
        loop {
            match database.apply(&batch, &worker, work, &checkpointer).await {
                Ok(()) => println!("{}", json!({"event": "committed", "batch": report})),
                // Another worker holds the shard now and applies its records;
                // the consumer stops handing out this shard's records.
                Err(kcpy::Error::Checkpoint(CheckpointError::LeaseLost { .. })) => {
                    println!("{}", json!({"event": "lease_lost", "batch": report}));
                }
                // Committed before: a commit whose answer was lost.
                Err(kcpy::Error::Checkpoint(CheckpointError::AlreadyCommitted { .. })) => {
                    println!("{}", json!({"event": "already_committed", "batch": report}));
                }
                // Rolled back: the same rows go in again in a new transaction.
                Err(error) if error.is_retryable() && attempt < 5 => {
                    attempt += 1;
                    println!(
                        "{}",
                        json!({"event": "retry", "batch": report, "error": error.to_string()})
                    );
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    continue;
                }
                Err(error) => {
                    // Not applied, not checkpointed: a restart delivers the
                    // batch again.
                    consumer.close().await.ok();
                    return Err(error.into());
                }
            }
            break;
        }
    }
    consumer.close().await?;
    Ok(())
}

/// The results table and the checkpoint store, in one database.
enum Database {
    Postgres {
        store: PostgresCheckpointStore,
        pool: PgPool,
        insert: String,
    },
    MySql {
        store: MySqlCheckpointStore,
        pool: MySqlPool,
        insert: String,
    },
}

impl Database {
    async fn connect(url: &str, table: &str) -> Result<Self, BoxError> {
        // Deliberately no unique key on (shard, sequence number): only the
        // transactions keep duplicates out.
        if url.starts_with("postgres") {
            let pool = PgPoolOptions::new().max_connections(2).connect(url).await?;
            // Two workers starting together would both try to create it.
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(table)
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (id BIGSERIAL PRIMARY KEY, shard_id TEXT NOT NULL,
                 sequence_number TEXT NOT NULL, sub_sequence_number BIGINT, partition_key TEXT NOT NULL,
                 data BYTEA NOT NULL, worker TEXT NOT NULL)"
            ))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            let insert = format!(
                "INSERT INTO {table} (shard_id, sequence_number, sub_sequence_number, partition_key, data, worker)
                 VALUES ($1, $2, $3, $4, $5, $6)"
            );
            let store = PostgresCheckpointStore::connect(url).await?;
            Ok(Database::Postgres { store, pool, insert })
        } else if url.starts_with("mysql") || url.starts_with("mariadb") {
            let pool = MySqlPoolOptions::new().max_connections(2).connect(url).await?;
            sqlx::query(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY,
                 shard_id VARCHAR(128) NOT NULL, sequence_number VARCHAR(130) NOT NULL, sub_sequence_number BIGINT,
                 partition_key VARCHAR(256) NOT NULL, data LONGBLOB NOT NULL, worker VARCHAR(128) NOT NULL)
                 ENGINE = InnoDB"
            ))
            .execute(&pool)
            .await?;
            let insert = format!(
                "INSERT INTO {table} (shard_id, sequence_number, sub_sequence_number, partition_key, data, worker)
                 VALUES (?, ?, ?, ?, ?, ?)"
            );
            let store = MySqlCheckpointStore::connect(url).await?;
            Ok(Database::MySql { store, pool, insert })
        } else {
            Err(format!("KCPY_DATABASE_URL must be a postgres:// or mysql:// URL, not {url:?}").into())
        }
    }

    /// Inserts `batch` (one shard's records, in order) and commits it with
    /// its last record's checkpoint, in one transaction.
    async fn apply(
        &self,
        batch: &[Record],
        worker: &str,
        work: Duration,
        checkpointer: &Checkpointer,
    ) -> Result<(), kcpy::Error> {
        let Some(last) = batch.last() else { return Ok(()) };
        let failed = |e: sqlx::Error| kcpy::Error::Checkpoint(CheckpointError::backend(e, true));
        match self {
            Database::Postgres { store, pool, insert } => {
                let mut tx = pool.begin().await.map_err(failed)?;
                for record in batch {
                    sqlx::query(insert)
                        .bind(&*record.shard_id)
                        .bind(record.sequence_number.as_str())
                        .bind(record.sub_sequence_number.map(|n| n as i64))
                        .bind(&record.partition_key[..])
                        .bind(&record.data[..])
                        .bind(worker)
                        .execute(&mut *tx)
                        .await
                        .map_err(failed)?;
                }
                pause(batch, work).await;
                store.commit(tx, checkpointer, last).await
            }
            Database::MySql { store, pool, insert } => {
                let mut tx = pool.begin().await.map_err(failed)?;
                for record in batch {
                    sqlx::query(insert)
                        .bind(&*record.shard_id)
                        .bind(record.sequence_number.as_str())
                        .bind(record.sub_sequence_number.map(|n| n as i64))
                        .bind(&record.partition_key[..])
                        .bind(&record.data[..])
                        .bind(worker)
                        .execute(&mut *tx)
                        .await
                        .map_err(failed)?;
                }
                pause(batch, work).await;
                store.commit(tx, checkpointer, last).await
            }
        }
    }
}

/// The rest of the batch's work, done with its transaction open.
async fn pause(batch: &[Record], work: Duration) {
    if !work.is_zero() {
        let shard = batch.first().map(|r| &*r.shard_id);
        println!("{}", json!({"event": "working", "shard": shard, "rows": batch.len()}));
        tokio::time::sleep(work).await;
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}
