//! Stop cleanly on Ctrl-C: the consumer stops fetching, writes the
//! checkpoints of every record processed so far, and its stream ends.
//!
//! ```text
//! KCPY_STREAM=my-stream cargo run --example graceful_shutdown
//! ```

mod common;

use std::time::Duration;

use futures::StreamExt;
use kcpy::{Consumer, SqliteCheckpointStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = common::kinesis_client().await;
    let mut consumer = Consumer::builder(client, common::stream_name()?)
        .consumer_name("graceful-shutdown")
        .checkpoint_store(SqliteCheckpointStore::connect("sqlite://graceful-shutdown.db").await?)
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .await?;

    let shutdown = consumer.shutdown_handle();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("Ctrl-C: finishing up");
            shutdown.shutdown();
        }
    });

    let mut processed = 0u64;
    // Asking for the next record marks the previous one processed, so the
    // checkpoint written at shutdown covers every record handled here.
    while let Some(record) = consumer.next().await {
        processed += 1;
        println!("{} {}", record.sequence_number, String::from_utf8_lossy(&record.data));
    }
    eprintln!("processed {processed} records");
    match consumer.error() {
        None => Ok(()),
        Some(error) => Err(error.clone().into()),
    }
}
