//! One worker of a consumer group: start it on several machines (or in
//! several terminals) and they split the stream's shards through leases in
//! PostgreSQL, take over the shards of a worker that stops, and hand shards
//! over when one joins.
//!
//! ```text
//! KCPY_STREAM=my-stream KCPY_POSTGRES_URL=postgres://app@db/app \
//!     cargo run --example group --features postgres
//! ```

mod common;

use futures::StreamExt;
use kcpy::{Consumer, PostgresCheckpointStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("KCPY_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let client = common::kinesis_client().await;
    let mut consumer = Consumer::builder(client, common::stream_name()?)
        // Every worker of the group uses the same name and the same store.
        .consumer_name("group-example")
        .lease_store(PostgresCheckpointStore::connect(&url).await?)
        .build()
        .await?;
    let worker = consumer.worker_id().unwrap_or_default().to_owned();
    eprintln!("worker {worker} joined; Ctrl-C hands its shards to the others");

    let shutdown = consumer.shutdown_handle();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            shutdown.shutdown();
        }
    });
    while let Some(record) = consumer.next().await {
        println!("{worker} {} {}", record.shard_id, record.sequence_number);
    }
    // Saves the checkpoints, then releases the leases: the others take over at once.
    consumer.close().await?;
    Ok(())
}
