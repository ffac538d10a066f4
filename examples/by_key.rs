//! A hot shard handled by many keys at once: records go to `KCPY_LANES`
//! ordered lanes by partition key, so each key's records are handled in
//! order while different keys run concurrently. Each handler here awaits
//! `KCPY_WORK_MS` (standing in for a call to another service), then prints
//! the record as a JSON line. Checkpoints (SQLite) cover only records whose
//! handler finished, and only as a contiguous run per shard.
//!
//! ```text
//! KCPY_STREAM=my-stream KCPY_LANES=16 cargo run --example by_key
//! ```

mod common;

use std::time::Duration;

use kcpy::{CheckpointMode, Consumer, SqliteCheckpointStore, StartPosition};
use serde_json::json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let lanes: usize = env_or("KCPY_LANES", "8").parse()?;
    let work = Duration::from_millis(env_or("KCPY_WORK_MS", "5").parse()?);
    let store = SqliteCheckpointStore::connect(&env_or("KCPY_CHECKPOINTS", "sqlite://by-key.db")).await?;
    let mut consumer = Consumer::builder(common::kinesis_client().await, common::stream_name()?)
        .consumer_name(env_or("KCPY_CONSUMER", "by-key-example"))
        .checkpoint_store(store)
        .start_position(StartPosition::TrimHorizon)
        // The lanes mark each record processed when its handler finishes.
        .checkpoint_mode(CheckpointMode::Manual)
        // At most this many records per shard are fetched but not yet handled.
        .max_unacknowledged(1_000)
        .checkpoint_interval(Duration::from_millis(
            env_or("KCPY_CHECKPOINT_INTERVAL_MS", "5000").parse()?,
        ))
        .build()
        .await?;

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
    println!("{}", json!({"event": "started", "lanes": lanes}));

    consumer
        .for_each_by_key(lanes, |record| async move {
            let line = json!({
                "shard": &*record.shard_id,
                "sequence_number": record.sequence_number.as_str(),
                "partition_key": record.partition_key,
                "data": String::from_utf8_lossy(&record.data),
            });
            println!("{}", json!({"event": "start", "record": line}));
            tokio::time::sleep(work).await;
            println!("{}", json!({"event": "done", "record": line}));
            Ok::<_, BoxError>(())
        })
        .await?;
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}
