//! Consume a stream with checkpoints in a SQLite file; run it again and it
//! resumes after the last checkpoint instead of starting over.
//!
//! ```text
//! KCPY_STREAM=my-stream KCPY_SQLITE=kcpy.db cargo run --example sqlite_resume
//! ```
//!
//! Each record is printed as one JSON line. `KCPY_KINESIS_ENDPOINT` points the
//! client at an emulator; `KCPY_CHECKPOINT_EVERY` sets the batch size.

mod common;

use futures::StreamExt;
use kcpy::{Consumer, SqliteCheckpointStore};
use std::io::Write;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("kcpy=info")
        .init();
    let stream = common::stream_name()?;
    let sqlite = std::env::var("KCPY_SQLITE").unwrap_or_else(|_| "kcpy.db".into());
    let every = std::env::var("KCPY_CHECKPOINT_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);

    let client = common::kinesis_client().await;

    let mut consumer = Consumer::builder(client, stream)
        .consumer_name("sqlite-resume-example")
        .checkpoint_store(SqliteCheckpointStore::connect(&sqlite).await?)
        .checkpoint_every(every)
        .idle_interval(std::time::Duration::from_millis(200))
        .build()
        .await?;

    let mut out = std::io::stdout();
    while let Some(record) = consumer.next().await {
        let line = serde_json::json!({
            "shard_id": &*record.shard_id,
            "sequence_number": record.sequence_number.as_str(),
            "partition_key": record.partition_key,
            "data": String::from_utf8_lossy(&record.data),
        });
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    // The stream only ends early on a fatal error: report it.
    consumer.close().await?;
    Ok(())
}
