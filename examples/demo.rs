//! The demo behind `scripts/demo`: makes a 4-shard stream (once), puts a few
//! records, then consumes everything not yet checkpointed, printing each
//! record. Run it again and it resumes: only the records put since are shown.

mod common;

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kcpy::aws_sdk_kinesis::client::Waiters;
use kcpy::aws_sdk_kinesis::primitives::{Blob, DateTime, DateTimeFormat};
use kcpy::aws_sdk_kinesis::types::PutRecordsRequestEntry;
use kcpy::aws_sdk_kinesis::Client;
use kcpy::{Consumer, Record, SqliteCheckpointStore, StartPosition};

const NAMES: [&str; 8] = [
    "Jessica Walter",
    "Jason Bateman",
    "Portia de Rossi",
    "Will Arnett",
    "Michael Cera",
    "Alia Shawkat",
    "Tony Hale",
    "David Cross",
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("kcpy=warn").init();
    let stream = common::stream_name().unwrap_or_else(|_| "kcpy-demo".into());
    let sqlite = std::env::var("KCPY_SQLITE").unwrap_or_else(|_| "sqlite://kcpy-demo.db".into());
    let client = common::kinesis_client().await;

    ensure_stream(&client, &stream).await?;
    let put = produce(&client, &stream).await?;
    println!("put {put} records on {stream}; consuming everything not yet checkpointed:\n");

    let mut consumer = Consumer::builder(client, &stream)
        .consumer_name("demo")
        .checkpoint_store(SqliteCheckpointStore::connect(&sqlite).await?)
        .start_position(StartPosition::TrimHorizon)
        .idle_interval(Duration::from_millis(200))
        .build()
        .await?;

    let mut shown = 0;
    // Caught up once nothing new arrives for two seconds; asking for the next
    // record marks the one before it processed, so every shown record is
    // checkpointed when the consumer closes.
    while let Ok(Some(record)) = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
        print_record(&record);
        shown += 1;
    }
    consumer.close().await?;
    println!("\nshowed {shown} records; checkpoints are in {sqlite}. Run the demo again: it resumes after them.");
    Ok(())
}

async fn ensure_stream(client: &Client, stream: &str) -> Result<(), Box<dyn std::error::Error>> {
    let exists = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .is_ok();
    if !exists {
        client.create_stream().stream_name(stream).shard_count(4).send().await?;
        println!("created stream {stream} with 4 shards");
    }
    client
        .wait_until_stream_exists()
        .stream_name(stream)
        .wait(Duration::from_secs(60))
        .await?;
    Ok(())
}

async fn produce(client: &Client, stream: &str) -> Result<usize, Box<dyn std::error::Error>> {
    let at = DateTime::from(SystemTime::now()).fmt(DateTimeFormat::DateTime)?;
    let entries = NAMES
        .iter()
        .map(|name| {
            PutRecordsRequestEntry::builder()
                .partition_key(*name)
                .data(Blob::new(format!("{name} (put at {at})")))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let count = entries.len();
    client
        .put_records()
        .stream_name(stream)
        .set_records(Some(entries))
        .send()
        .await?;
    Ok(count)
}

/// Prints a record the way Python kcpy's README shows one.
fn print_record(record: &Record) {
    let arrived = record
        .approximate_arrival_timestamp
        .and_then(|at| DateTime::from(at).fmt(DateTimeFormat::DateTime).ok())
        .unwrap_or_default();
    println!("{{");
    println!("    'ShardId': '{}',", record.shard_id);
    println!("    'ApproximateArrivalTimestamp': '{arrived}',");
    println!("    'Data': b'{}',", String::from_utf8_lossy(&record.data));
    println!("    'PartitionKey': '{}',", record.partition_key);
    println!("    'SequenceNumber': '{}'", record.sequence_number);
    println!("}}");
}
