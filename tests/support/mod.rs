//! Shared pieces of the end-to-end tests: a client for the emulator started by
//! `scripts/test`, uniquely named streams, a producer and collectors.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod example;
pub mod fault_proxy;
pub mod kpl;
pub mod recording;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_kinesis::client::Waiters;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, Shard};
use aws_sdk_kinesis::Client;
use futures::StreamExt;
use kcpy::{Consumer, Record, SequenceNumber};

/// The emulator's endpoint, from `KCPY_KINESIS_ENDPOINT`.
pub fn endpoint() -> String {
    std::env::var("KCPY_KINESIS_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "KCPY_KINESIS_ENDPOINT is not set: run the tests with scripts/test, which starts kinesis-mock, \
             or start it with scripts/kinesis-mock start and export what it prints"
        )
    })
}

/// The Redis server for store tests (`KCPY_REDIS_URL`, else the local one).
pub fn redis_url() -> String {
    std::env::var("KCPY_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// The MySQL/MariaDB database for store tests (`KCPY_MYSQL_URL`, else the local one).
pub fn mysql_url() -> String {
    std::env::var("KCPY_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// The PostgreSQL database for store tests (`KCPY_POSTGRES_URL`, else the local one).
pub fn postgres_url() -> String {
    std::env::var("KCPY_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A client for dynalite, started by `scripts/test` (`KCPY_DYNAMODB_ENDPOINT`).
#[cfg(feature = "dynamodb")]
pub fn dynamodb_client() -> kcpy::aws_sdk_dynamodb::Client {
    use kcpy::aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    let endpoint = std::env::var("KCPY_DYNAMODB_ENDPOINT").unwrap_or_else(|_| {
        panic!("KCPY_DYNAMODB_ENDPOINT is not set: run the tests with scripts/test, which starts dynalite")
    });
    let config = kcpy::aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "kcpy-tests"))
        .build();
    kcpy::aws_sdk_dynamodb::Client::from_conf(config)
}

/// A record as `kcpy tail` prints it: one JSON object per line.
pub fn parse_json_line(line: &str) -> Put {
    let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line per record");
    let text = |field: &str| value[field].as_str().expect("string field").to_owned();
    Put {
        shard_id: text("shard_id"),
        sequence_number: text("sequence_number").parse().expect("valid"),
        partition_key: text("partition_key"),
        data: text("data"),
    }
}

pub fn client() -> Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .credentials_provider(Credentials::new("test", "test", None, None, "kcpy-tests"))
        .build();
    Client::from_conf(config)
}

/// A client for the emulator in `region`: the emulator keeps each region's
/// streams apart, as Kinesis does, so this stands in for another region or
/// account.
pub fn client_in(region: &'static str) -> Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .endpoint_url(endpoint())
        .credentials_provider(Credentials::new("test", "test", None, None, "kcpy-tests"))
        .build();
    Client::from_conf(config)
}

/// A stream name no other test (or test run) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// What a put wrote, as Kinesis acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Put {
    pub shard_id: String,
    pub sequence_number: SequenceNumber,
    pub partition_key: String,
    pub data: String,
}

pub struct TestStream {
    pub client: Client,
    pub name: String,
}

impl TestStream {
    pub async fn create(prefix: &str, shards: i32) -> Self {
        Self::create_with(client(), prefix, shards).await
    }

    pub async fn create_with(client: Client, prefix: &str, shards: i32) -> Self {
        let name = unique_name(prefix);
        client
            .create_stream()
            .stream_name(&name)
            .shard_count(shards)
            .send()
            .await
            .expect("CreateStream");
        client
            .wait_until_stream_exists()
            .stream_name(&name)
            .wait(Duration::from_secs(60))
            .await
            .expect("stream becomes active");
        Self { client, name }
    }

    /// The stream's ARN.
    pub async fn arn(&self) -> String {
        self.client
            .describe_stream_summary()
            .stream_name(&self.name)
            .send()
            .await
            .expect("DescribeStreamSummary")
            .stream_description_summary
            .expect("summary")
            .stream_arn
    }

    pub async fn delete(self) {
        let _ = self
            .client
            .delete_stream()
            .stream_name(&self.name)
            .enforce_consumer_deletion(true)
            .send()
            .await;
    }

    /// Puts `data` records with their partition keys, 500 per call, in order.
    pub async fn put(&self, records: &[(String, String)]) -> Vec<Put> {
        let mut puts = Vec::with_capacity(records.len());
        for chunk in records.chunks(500) {
            let entries = chunk
                .iter()
                .map(|(key, data)| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(key)
                        .data(Blob::new(data.as_bytes()))
                        .build()
                        .expect("entry")
                })
                .collect::<Vec<_>>();
            let output = self
                .client
                .put_records()
                .stream_name(&self.name)
                .set_records(Some(entries))
                .send()
                .await
                .expect("PutRecords");
            assert_eq!(output.failed_record_count, Some(0), "the emulator never throttles");
            for ((key, data), result) in chunk.iter().zip(output.records) {
                puts.push(Put {
                    shard_id: result.shard_id.expect("shard id"),
                    sequence_number: result.sequence_number.expect("sequence number").parse().expect("valid"),
                    partition_key: key.clone(),
                    data: data.clone(),
                });
            }
        }
        puts
    }

    /// `count` records over `keys` partition keys, with data `{tag}-{i}`.
    pub async fn put_many(&self, tag: &str, count: usize, keys: usize) -> Vec<Put> {
        let records: Vec<(String, String)> = (0..count)
            .map(|i| (format!("pk-{}", i % keys), format!("{tag}-{i}")))
            .collect();
        self.put(&records).await
    }

    /// Every shard, open or closed.
    pub async fn shards(&self) -> Vec<Shard> {
        let output = self
            .client
            .list_shards()
            .stream_name(&self.name)
            .send()
            .await
            .expect("ListShards");
        output.shards.unwrap_or_default()
    }

    pub async fn open_shards(&self) -> Vec<Shard> {
        let mut shards = self.shards().await;
        shards.retain(|s| {
            s.sequence_number_range
                .as_ref()
                .is_some_and(|r| r.ending_sequence_number.is_none())
        });
        shards
    }

    /// Waits until a reshard took effect: the stream is ACTIVE, `closed` are
    /// closed and `open` shards are open. The emulator applies reshards in the
    /// background, so this polls the listing.
    pub async fn wait_resharded(&self, closed: &[&str], open: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            self.client
                .wait_until_stream_exists()
                .stream_name(&self.name)
                .wait(Duration::from_secs(60))
                .await
                .expect("stream becomes active");
            let now_open = self.open_shards().await;
            if now_open.len() == open && now_open.iter().all(|s| !closed.contains(&s.shard_id.as_str())) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the reshard did not take effect"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Splits an open shard in the middle of its hash key range.
    pub async fn split(&self, shard: &Shard) {
        let open = self.open_shards().await.len() + 1;
        let range = shard.hash_key_range.as_ref().expect("hash key range");
        let start: u128 = range.starting_hash_key.parse().expect("hash key");
        let end: u128 = range.ending_hash_key.parse().expect("hash key");
        self.client
            .split_shard()
            .stream_name(&self.name)
            .shard_to_split(&shard.shard_id)
            .new_starting_hash_key((start + (end - start) / 2 + 1).to_string())
            .send()
            .await
            .expect("SplitShard");
        self.wait_resharded(&[&shard.shard_id], open).await;
    }

    /// One record on every open shard (by explicit hash key), tagged `marker`.
    pub async fn put_marker_on_every_shard(&self, marker: &str) -> Vec<Put> {
        let mut puts = Vec::new();
        for shard in self.open_shards().await {
            let start = shard.hash_key_range.expect("hash key range").starting_hash_key;
            let output = self
                .client
                .put_record()
                .stream_name(&self.name)
                .partition_key("marker")
                .explicit_hash_key(start)
                .data(Blob::new(marker.as_bytes()))
                .send()
                .await
                .expect("PutRecord");
            assert_eq!(output.shard_id, shard.shard_id, "explicit hash key routes to the shard");
            puts.push(Put {
                shard_id: output.shard_id,
                sequence_number: output.sequence_number.parse().expect("valid"),
                partition_key: "marker".into(),
                data: marker.into(),
            });
        }
        puts
    }
}

pub fn as_put(record: &Record) -> Put {
    Put {
        shard_id: record.shard_id.to_string(),
        sequence_number: record.sequence_number.clone(),
        partition_key: record.partition_key.to_string(),
        data: String::from_utf8(record.data.to_vec()).expect("utf-8 test data"),
    }
}

/// Reads until `done` holds for what was read, or fails after `limit`.
pub async fn read_until(consumer: &mut Consumer, limit: Duration, mut done: impl FnMut(&[Put]) -> bool) -> Vec<Put> {
    let mut read = Vec::new();
    let outcome = tokio::time::timeout(limit, async {
        while !done(&read) {
            match consumer.next().await {
                Some(record) => read.push(as_put(&record)),
                None => return false,
            }
        }
        true
    })
    .await;
    match outcome {
        Ok(true) => read,
        Ok(false) => panic!(
            "the consumer ended after {} records; error: {:?}",
            read.len(),
            consumer.error()
        ),
        Err(_) => panic!("timed out after {} records", read.len()),
    }
}

/// Per shard, the sequence numbers in the order they were read.
pub fn by_shard(puts: &[Put]) -> BTreeMap<String, Vec<SequenceNumber>> {
    let mut shards: BTreeMap<String, Vec<SequenceNumber>> = BTreeMap::new();
    for put in puts {
        shards
            .entry(put.shard_id.clone())
            .or_default()
            .push(put.sequence_number.clone());
    }
    shards
}

/// How often each record was read.
pub fn counts(puts: &[Put]) -> HashMap<&Put, usize> {
    let mut counts = HashMap::new();
    for put in puts {
        *counts.entry(put).or_default() += 1;
    }
    counts
}

/// Puts records continuously over `keys` partition keys until stopped; each
/// record's data is `key#n`, with n counting up per key.
pub struct Producer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Put>>,
}

impl Producer {
    pub fn start(stream: &TestStream, keys: usize) -> Self {
        Self::paced(stream, keys, 20, Duration::from_millis(10))
    }

    /// `batch` records every `every`.
    pub fn paced(stream: &TestStream, keys: usize, batch: usize, every: Duration) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let target = TestStream {
            client: stream.client.clone(),
            name: stream.name.clone(),
        };
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut counters = vec![0u64; keys];
            let mut puts = Vec::new();
            let mut next_key = 0;
            // A steady trickle, like a live stream.
            let mut pace = tokio::time::interval(every);
            while !flag.load(Ordering::Relaxed) {
                pace.tick().await;
                let batch: Vec<(String, String)> = (0..batch)
                    .map(|_| {
                        let key = next_key % keys;
                        next_key += 1;
                        counters[key] += 1;
                        (format!("key-{key}"), format!("key-{key}#{}", counters[key]))
                    })
                    .collect();
                puts.extend(target.put(&batch).await);
            }
            puts
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> Vec<Put> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("producer task")
    }
}

/// The per-key counter of a producer record.
pub fn counter(put: &Put) -> u64 {
    put.data
        .rsplit('#')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("producer data")
}

/// Checks one run's deliveries across a reshard: per partition key in order
/// without repeats, and no record of a child shard before the last record of
/// any of its parents.
pub fn assert_ordered_across_reshards(delivered: &[Put], shards: &[Shard]) {
    let mut last_per_key: HashMap<&str, u64> = HashMap::new();
    for put in delivered {
        let n = counter(put);
        if let Some(previous) = last_per_key.insert(&put.partition_key, n) {
            assert!(n > previous, "{}: #{n} delivered after #{previous}", put.partition_key);
        }
    }
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, put) in delivered.iter().enumerate() {
        first.entry(&put.shard_id).or_insert(i);
        last.insert(&put.shard_id, i);
    }
    for shard in shards {
        let parents = shard.parent_shard_id.iter().chain(&shard.adjacent_parent_shard_id);
        for parent in parents {
            if let (Some(&child_first), Some(&parent_last)) =
                (first.get(shard.shard_id.as_str()), last.get(parent.as_str()))
            {
                assert!(
                    parent_last < child_first,
                    "{} delivered a record (#{child_first}) before its parent {parent} finished (#{parent_last})",
                    shard.shard_id
                );
            }
        }
    }
}
