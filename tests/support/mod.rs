//! Shared pieces of the end-to-end tests: a client for the emulator started by
//! `scripts/test`, uniquely named streams, a producer and collectors.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_kinesis::client::Waiters;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
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

pub fn client() -> Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
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
        let client = client();
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

    /// One record on every shard (by explicit hash key), tagged `marker`.
    pub async fn put_marker_on_every_shard(&self, marker: &str) -> Vec<Put> {
        let shards = self
            .client
            .list_shards()
            .stream_name(&self.name)
            .send()
            .await
            .expect("ListShards");
        let mut puts = Vec::new();
        for shard in shards.shards.unwrap_or_default() {
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
        partition_key: record.partition_key.clone(),
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
