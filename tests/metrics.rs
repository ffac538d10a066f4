//! What the consumer tells its operators, on kinesis-mock: the metrics a
//! Prometheus recorder scrapes over HTTP, the lag snapshot and the lifecycle
//! events, through a split. One test: a process has one global recorder.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use kcpy::{Checkpoint, Consumer, ConsumerEvent, MemoryCheckpointStore, ShardState};
use metrics_exporter_prometheus::PrometheusBuilder;
use support::{read_until, TestStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `GET /metrics`, as Prometheus scrapes it.
async fn scrape(port: u16) -> String {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    socket.read_to_string(&mut response).await.expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// Per series of `name` (its label set, as printed), the value.
fn series(body: &str, name: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in body.lines().filter(|line| !line.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        // `{` right after the name: not another metric whose name starts so.
        let Some(labels) = key.strip_prefix(name).filter(|labels| labels.starts_with('{')) else {
            continue;
        };
        if let Ok(value) = value.parse() {
            out.insert(labels.to_owned(), value);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_lag_and_events_show_what_the_consumer_did_through_a_split() {
    let port = free_port();
    PrometheusBuilder::new()
        .with_http_listener(([127, 0, 0, 1], port))
        .install()
        .expect("the Prometheus recorder");
    let stream = TestStream::create("metrics", 2).await;
    let puts = stream.put_many("m", 300, 31).await;
    let mut consumer = Consumer::builder(stream.client.clone(), &stream.name)
        .idle_interval(Duration::from_millis(100))
        .checkpoint_interval(Duration::from_millis(200))
        .shard_sync_interval(Duration::from_secs(2))
        .checkpoint_store(MemoryCheckpointStore::new())
        .build()
        .await
        .expect("build");
    let mut events = consumer.events();
    let read = read_until(&mut consumer, LIMIT, |read| read.len() == puts.len()).await;
    assert_eq!(read.len(), puts.len());

    // A split: the parent is finished, its children start.
    let parent = stream.open_shards().await.remove(0);
    stream.split(&parent).await;
    let markers = stream.put_marker_on_every_shard("after").await;
    read_until(&mut consumer, LIMIT, |read| markers.iter().all(|m| read.contains(m))).await;
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(
        seen.contains(&ConsumerEvent::ShardFinished {
            stream_name: stream.name.clone(),
            shard_id: parent.shard_id.clone()
        }),
        "{seen:?}"
    );
    let children: Vec<String> = stream
        .shards()
        .await
        .into_iter()
        .filter(|s| s.parent_shard_id.as_deref() == Some(&parent.shard_id))
        .map(|s| s.shard_id)
        .collect();
    assert_eq!(children.len(), 2);
    for child in &children {
        assert!(
            seen.contains(&ConsumerEvent::ShardStarted {
                stream_name: stream.name.clone(),
                shard_id: child.clone()
            }),
            "{child} started: {seen:?}"
        );
    }

    // The snapshot: the parent finished and checkpointed at its end, each
    // open shard read up to its marker.
    let lag: HashMap<String, kcpy::ShardLag> = consumer.lag().into_iter().map(|s| (s.shard_id.clone(), s)).collect();
    assert_eq!(lag.len(), 4, "{lag:?}");
    assert_eq!(lag[&parent.shard_id].state, ShardState::Finished);
    assert_eq!(lag[&parent.shard_id].durable, Some(Checkpoint::ShardEnd));
    for marker in &markers {
        let shard = &lag[&marker.shard_id];
        assert_eq!(shard.state, ShardState::Reading);
        assert_eq!(
            shard.delivered,
            Some(Checkpoint::Sequence(marker.sequence_number.clone()))
        );
        assert_eq!(shard.millis_behind_latest, Some(0), "at the tip");
    }
    consumer.close().await.expect("close");

    let body = scrape(port).await;
    let ours = |series: HashMap<String, f64>| -> HashMap<String, f64> {
        series
            .into_iter()
            .filter(|(labels, _)| labels.contains(&format!("stream=\"{}\"", stream.name)))
            .collect()
    };
    let records = ours(series(&body, "RecordsProcessed"));
    assert_eq!(
        records.values().sum::<f64>() as usize,
        puts.len() + markers.len(),
        "every record counted once: {records:?}"
    );
    assert_eq!(
        records.len(),
        4,
        "the parent, its sibling and both children: {records:?}"
    );
    let bytes = ours(series(&body, "DataBytesProcessed"));
    let put_bytes: usize =
        puts.iter().map(|p| p.data.len()).sum::<usize>() + markers.iter().map(|m| m.data.len()).sum::<usize>();
    assert_eq!(bytes.values().sum::<f64>() as usize, put_bytes);
    let behind = ours(series(&body, "MillisBehindLatest"));
    assert!(!behind.is_empty() && behind.values().all(|ms| *ms >= 0.0), "{behind:?}");
    assert_eq!(ours(series(&body, "MaxMillisBehindLatest")).len(), 1);
    let calls = ours(series(&body, "GetRecords_Time_count"));
    assert!(calls.values().sum::<f64>() >= 4.0, "GetRecords calls timed: {calls:?}");
    let saves = ours(series(&body, "Checkpoint_Saves"));
    assert!(
        saves.values().sum::<f64>() >= 3.0,
        "checkpoint saves counted: {saves:?}"
    );
    // After close every record is covered but the one handed out last,
    // which close() does not count as processed.
    let uncovered = ours(series(&body, "CheckpointLag"));
    assert_eq!(uncovered.len(), 4, "{uncovered:?}");
    assert_eq!(
        uncovered.values().sum::<f64>(),
        1.0,
        "only the last record handed out is not checkpointed: {uncovered:?}"
    );
    stream.delete().await;
}
