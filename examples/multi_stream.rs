//! Several streams read as one: every record says which stream it came from,
//! and each stream keeps its own checkpoints (SQLite) under the same consumer
//! name, so a stream moved in here from a consumer of its own resumes where
//! that one stopped.
//!
//! ```text
//! KCPY_STREAMS=orders,refunds KCPY_SQLITE=kcpy.db cargo run --example multi_stream
//! ```
//!
//! `KCPY_KINESIS_ENDPOINT` points the client at an emulator.

mod common;

use futures::StreamExt;
use kcpy::{Consumer, SqliteCheckpointStore, StreamSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("kcpy=info")
        .init();
    // KCPY_STREAMS names the streams; KCPY_STREAM alone reads one.
    let names = match std::env::var("KCPY_STREAMS") {
        Ok(names) => names,
        Err(_) => common::stream_name().map_err(|_| "set KCPY_STREAMS to the streams to read: a,b,c")?,
    };
    let mut names = names.split(',').map(str::trim).filter(|name| !name.is_empty());
    let first = names.next().ok_or("KCPY_STREAMS names no stream")?;
    let sqlite = std::env::var("KCPY_SQLITE").unwrap_or_else(|_| "kcpy.db".into());

    let client = common::kinesis_client().await;
    let mut builder = Consumer::builder(client, first)
        .consumer_name(std::env::var("KCPY_CONSUMER").unwrap_or_else(|_| "multi-stream-example".into()))
        .checkpoint_store(SqliteCheckpointStore::connect(&sqlite).await?)
        .idle_interval(std::time::Duration::from_millis(200));
    for name in names {
        // A StreamSpec may also carry a client of its own (another account
        // or region) and a start position.
        builder = builder.add_stream(StreamSpec::new(name));
    }
    let mut consumer = builder.build().await?;

    while let Some(record) = consumer.next().await {
        println!(
            "{} {} {} {} {}",
            record.stream,
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
