//! Consume a stream with checkpoints in a SQLite file; run it again and it
//! resumes after the last checkpoint instead of starting over.
//!
//! ```text
//! KCPY_STREAM=my-stream KCPY_SQLITE=kcpy.db cargo run --example sqlite_resume
//! ```
//!
//! `KCPY_KINESIS_ENDPOINT` points the client at an emulator.

mod common;

use futures::StreamExt;
use kcpy::{Consumer, SqliteCheckpointStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("kcpy=info")
        .init();
    let stream = common::stream_name()?;
    let sqlite = std::env::var("KCPY_SQLITE").unwrap_or_else(|_| "kcpy.db".into());

    let client = common::kinesis_client().await;

    let mut consumer = Consumer::builder(client, stream)
        .consumer_name("sqlite-resume-example")
        .checkpoint_store(SqliteCheckpointStore::connect(&sqlite).await?)
        .idle_interval(std::time::Duration::from_millis(200))
        .build()
        .await?;

    while let Some(record) = consumer.next().await {
        println!(
            "{} {} {} {}",
            record.shard_id,
            record.sequence_number,
            record.partition_key,
            String::from_utf8_lossy(&record.data)
        );
    }
    // The stream only ends early on a fatal error: report it.
    consumer.close().await?;
    Ok(())
}
