//! The shortest useful consumer: every record of a stream, checkpoints in
//! memory (so each run starts over; see `sqlite_resume` to keep them).
//!
//! ```text
//! KCPY_STREAM=my-stream cargo run --example quickstart
//! ```

mod common;

use futures::StreamExt;
use kcpy::{Consumer, MemoryCheckpointStore, StartPosition};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = common::kinesis_client().await;
    let mut consumer = Consumer::builder(client, common::stream_name()?)
        .consumer_name("quickstart")
        .checkpoint_store(MemoryCheckpointStore::new())
        .start_position(StartPosition::TrimHorizon)
        .build()
        .await?;

    while let Some(record) = consumer.next().await {
        println!(
            "{} {} {}",
            record.shard_id,
            record.partition_key,
            String::from_utf8_lossy(&record.data)
        );
    }
    // The stream ends only on shutdown or a fatal error; say which.
    if let Some(error) = consumer.error() {
        eprintln!("stopped: {error}");
        return Err(error.clone().into());
    }
    Ok(())
}
