//! A consumer that serves its metrics to Prometheus while it reads, and logs
//! where every shard stands once a minute.
//!
//! ```text
//! KCPY_STREAM=my-stream cargo run --example prometheus
//! curl -s http://127.0.0.1:9464/metrics | grep -E 'RecordsProcessed|MillisBehindLatest'
//! ```
//!
//! `KCPY_METRICS_ADDR` moves the listener (default `127.0.0.1:9464`).

mod common;

use std::time::Duration;

use futures::StreamExt;
use kcpy::{Consumer, MemoryCheckpointStore, StartPosition};
use metrics_exporter_prometheus::PrometheusBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: std::net::SocketAddr = std::env::var("KCPY_METRICS_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:9464".into())
        .parse()?;
    // Before the consumer is built: it takes its metric handles then.
    PrometheusBuilder::new().with_http_listener(addr).install()?;

    let client = common::kinesis_client().await;
    let mut consumer = Consumer::builder(client, common::stream_name()?)
        .consumer_name("prometheus-example")
        .checkpoint_store(MemoryCheckpointStore::new())
        .start_position(StartPosition::TrimHorizon)
        .build()
        .await?;
    println!("metrics at http://{addr}/metrics");

    let mut report = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            record = consumer.next() => match record {
                Some(record) => println!("{} {}", record.shard_id, String::from_utf8_lossy(&record.data)),
                None => break,
            },
            _ = report.tick() => {
                for shard in consumer.lag() {
                    println!(
                        "{} {:?}: delivered {:?}, durable {:?}, {:?} ms behind",
                        shard.shard_id, shard.state, shard.delivered, shard.durable, shard.millis_behind_latest
                    );
                }
            }
        }
    }
    consumer.close().await?;
    Ok(())
}
