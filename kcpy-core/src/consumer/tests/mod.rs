//! The consumer and its readers, driven through the Kinesis seam (a scripted
//! [`KinesisApi`]) to produce what the emulator cannot: throttling, 5xx,
//! expired iterators, black holes and fatal errors; and through the reader
//! seam (a scripted [`ShardReader`](crate::read::ShardReader)), to show that
//! lineage, checkpoints and shutdown hold for any reader. Time is paused, so
//! backoff and rate limits cost nothing.

mod checkpoints;
mod fan_out;
mod kpl;
mod lanes;
mod polling;
mod reshard;
mod seam;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::time::Instant;

use super::*;
use crate::kinesis::{
    ApiError, DynKinesis, IteratorPosition, KinesisApi, RecordsPage, ShardInfo, ShardPage, StreamRef,
};
use crate::{CancellationToken, SequenceNumber, StartPosition};
use crate::{Checkpoint, CheckpointError, CheckpointKey, CheckpointMode, CheckpointStore, ConsumerBuilder};

#[derive(Debug)]
enum Step {
    Records(Vec<u64>),
    /// One Kinesis record at this sequence number: a KPL aggregate of this
    /// many user records (data `user-0`, `user-1`, …).
    Aggregate(u64, usize),
    Throttle,
    ServerError,
    Expired,
    Hang,
    Fatal(fn() -> Error),
    /// The shard's end: it is closed in the listing from now on.
    End,
    /// A 2xx answer without records, next iterator or children, as a proxy's
    /// `{}` would parse.
    NoIterator,
}

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Iterator(String, IteratorPosition),
    Records(String, Instant),
}

#[derive(Default)]
struct FakeKinesis {
    listing: Mutex<Vec<ShardInfo>>,
    scripts: Mutex<HashMap<String, VecDeque<Step>>>,
    calls: Mutex<Vec<Call>>,
    list_failures: Mutex<u32>,
    /// Shards aged out of retention: GetShardIterator fails with
    /// ResourceNotFoundException, and they leave the listing.
    expiring: Mutex<Vec<String>>,
}

impl FakeKinesis {
    fn new(scripts: Vec<(&str, Vec<Step>)>) -> Arc<Self> {
        Self::with_lineage(
            scripts
                .into_iter()
                .map(|(id, steps)| (id, &[][..], false, steps))
                .collect(),
        )
    }

    /// Shards with their parents and whether they are closed; a closed shard's
    /// End step reports its children, as GetRecords does.
    fn with_lineage(shards: Vec<(&str, &[&str], bool, Vec<Step>)>) -> Arc<Self> {
        let listing = shards
            .iter()
            .map(|(id, parents, closed, _)| ShardInfo {
                shard_id: id.to_string(),
                parent_shard_id: parents.first().map(|p| p.to_string()),
                adjacent_parent_shard_id: parents.get(1).map(|p| p.to_string()),
                ending_sequence_number: closed.then(|| "999999".to_string()),
                hash_range: None,
            })
            .collect();
        Arc::new(Self {
            listing: Mutex::new(listing),
            scripts: Mutex::new(
                shards
                    .into_iter()
                    .map(|(id, _, _, steps)| (id.to_string(), steps.into()))
                    .collect(),
            ),
            ..Self::default()
        })
    }

    fn children_of(&self, shard: &str) -> Vec<ShardInfo> {
        let listing = self.listing.lock().expect("lock");
        let is_parent = |s: &ShardInfo| {
            s.parent_shard_id.as_deref() == Some(shard) || s.adjacent_parent_shard_id.as_deref() == Some(shard)
        };
        listing.iter().filter(|s| is_parent(s)).cloned().collect()
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("lock").clone()
    }

    fn record_calls(&self, shard: &str) -> Vec<Instant> {
        self.calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::Records(s, at) if s == shard => Some(at),
                _ => None,
            })
            .collect()
    }
}

fn transient() -> ApiError {
    ApiError::Transient(Arc::new(std::io::Error::other("503 Service Unavailable")))
}

fn access_denied() -> Error {
    Error::AccessDenied {
        stream: "s".into(),
        source: Arc::new(std::io::Error::other("AccessDeniedException")),
    }
}

#[async_trait]
impl KinesisApi for FakeKinesis {
    async fn list_shards(&self, _: &StreamRef, _: Option<String>) -> Result<ShardPage, ApiError> {
        let mut failures = self.list_failures.lock().expect("lock");
        if *failures > 0 {
            *failures -= 1;
            return Err(transient());
        }
        Ok(ShardPage {
            shards: self.listing.lock().expect("lock").clone(),
            next_token: None,
        })
    }

    async fn get_shard_iterator(
        &self,
        _: &StreamRef,
        shard: &str,
        position: &IteratorPosition,
    ) -> Result<String, ApiError> {
        self.calls
            .lock()
            .expect("lock")
            .push(Call::Iterator(shard.into(), position.clone()));
        if self.expiring.lock().expect("lock").iter().any(|s| s == shard) {
            self.listing.lock().expect("lock").retain(|s| s.shard_id != shard);
            return Err(ApiError::Fatal(Error::StreamNotFound {
                stream: "test-stream".into(),
                source: Arc::new(std::io::Error::other("ResourceNotFoundException")),
            }));
        }
        Ok(shard.to_owned())
    }

    async fn get_records(
        &self,
        _: &StreamRef,
        shard_id: &Arc<str>,
        iterator: &str,
        _limit: i32,
    ) -> Result<RecordsPage, ApiError> {
        let shard = iterator.to_owned();
        self.calls
            .lock()
            .expect("lock")
            .push(Call::Records(shard.clone(), Instant::now()));
        let step = self
            .scripts
            .lock()
            .expect("lock")
            .get_mut(&shard)
            .and_then(VecDeque::pop_front);
        let page = |records: Vec<Record>, next: Option<String>| RecordsPage {
            records: records.into(),
            next_iterator: next,
            millis_behind_latest: Some(0),
            child_shards: Vec::new(),
        };
        match step {
            None => Ok(page(Vec::new(), Some(shard))),
            Some(Step::Records(seqs)) => Ok(page(
                seqs.into_iter().map(|n| record(shard_id, n)).collect(),
                Some(shard),
            )),
            Some(Step::Aggregate(n, users)) => {
                let data: Vec<String> = (0..users).map(|u| format!("user-{u}")).collect();
                let users: Vec<(&str, &[u8], Option<&str>)> = data.iter().map(|d| ("pk", d.as_bytes(), None)).collect();
                let aggregate = Record::new(
                    Arc::clone(shard_id),
                    seq(n),
                    "pk",
                    crate::test_util::kpl_aggregate(&users),
                );
                Ok(page(vec![aggregate], Some(shard)))
            }
            Some(Step::Throttle) => Err(ApiError::Throttled(Arc::new(std::io::Error::other("throttled")))),
            Some(Step::ServerError) => Err(transient()),
            Some(Step::Expired) => Err(ApiError::ExpiredIterator),
            Some(Step::Hang) => futures::future::pending().await,
            Some(Step::Fatal(make)) => Err(ApiError::Fatal(make())),
            Some(Step::End) => {
                for listed in self.listing.lock().expect("lock").iter_mut() {
                    if listed.shard_id == shard {
                        listed.ending_sequence_number.get_or_insert_with(|| "999999".into());
                    }
                }
                Ok(RecordsPage {
                    child_shards: self.children_of(&shard),
                    ..page(Vec::new(), None)
                })
            }
            Some(Step::NoIterator) => Ok(page(Vec::new(), None)),
        }
    }
}

fn record(shard_id: &Arc<str>, n: u64) -> Record {
    let mut record = Record::new(Arc::clone(shard_id), seq(n), format!("pk-{n}"), format!("data-{n}"));
    record.millis_behind_latest = Some(0);
    record
}

fn seq(n: u64) -> SequenceNumber {
    SequenceNumber::parse(&n.to_string()).expect("valid")
}

/// A store that keeps checkpoints in a map and fails as told.
#[derive(Debug, Default)]
struct TestStore {
    saved: Mutex<HashMap<String, Checkpoint>>,
    failures: Mutex<VecDeque<CheckpointError>>,
    saves: Mutex<u32>,
    /// Told after every successful save.
    saved_now: tokio::sync::Notify,
}

impl TestStore {
    fn get(&self, shard: &str) -> Option<Checkpoint> {
        self.saved.lock().expect("lock").get(shard).cloned()
    }
}

#[async_trait]
impl CheckpointStore for TestStore {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        Ok(self.saved.lock().expect("lock").get(&key.shard_id).cloned())
    }

    async fn save(&self, key: &CheckpointKey, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        *self.saves.lock().expect("lock") += 1;
        if let Some(error) = self.failures.lock().expect("lock").pop_front() {
            return Err(error);
        }
        self.saved
            .lock()
            .expect("lock")
            .insert(key.shard_id.clone(), checkpoint.clone());
        self.saved_now.notify_waiters();
        Ok(())
    }
}

fn builder(api: &Arc<FakeKinesis>) -> ConsumerBuilder {
    ConsumerBuilder::with_api(Arc::clone(api) as DynKinesis, "test-stream".into())
        .idle_interval(Duration::from_millis(100))
}

fn number(record: &Record) -> u64 {
    record.sequence_number.as_str().parse().expect("numeric")
}

/// Reads until the stream ends (a fatal error or shutdown).
async fn drain(consumer: &mut Consumer) -> Vec<u64> {
    let mut read = Vec::new();
    while let Some(record) = consumer.next().await {
        read.push(number(&record));
    }
    read
}

/// Reads exactly `n` records.
async fn take(consumer: &mut Consumer, n: usize) -> Vec<u64> {
    let mut read = Vec::new();
    while read.len() < n {
        match consumer.next().await {
            Some(record) => read.push(number(&record)),
            None => panic!("ended after {read:?}: {:?}", consumer.error()),
        }
    }
    read
}

/// Nothing more arrives and the stream does not end, for ten virtual minutes.
async fn assert_quiet(consumer: &mut Consumer) {
    let next = tokio::time::timeout(Duration::from_secs(600), consumer.next()).await;
    assert!(
        next.is_err(),
        "expected nothing, got {next:?} (error: {:?})",
        consumer.error()
    );
}
