//! The consumer and its pollers, driven through the Kinesis seam to produce
//! what the emulator cannot: throttling, 5xx, expired iterators, black holes
//! and fatal errors. Time is paused, so backoff and rate limits cost nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::time::Instant;

use super::*;
use crate::kinesis::{IteratorPosition, KinesisApi, RecordsPage, ShardPage};
use crate::CheckpointError;

#[derive(Debug)]
enum Step {
    Records(Vec<u64>),
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
            records,
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

#[tokio::test(start_paused = true)]
async fn throttling_and_server_errors_are_retried_without_losing_records() {
    let api = FakeKinesis::new(vec![(
        "shard-0",
        vec![
            Step::Records(vec![1, 2]),
            Step::Throttle,
            Step::ServerError,
            Step::Throttle,
            Step::Records(vec![3]),
            Step::End,
        ],
    )]);
    let mut consumer = builder(&api).build().await.expect("build");
    assert_eq!(take(&mut consumer, 3).await, vec![1, 2, 3]);
    assert_quiet(&mut consumer).await;
    assert!(consumer.error().is_none(), "{:?}", consumer.error());
    assert_eq!(
        api.record_calls("shard-0").len(),
        6,
        "each failed call was retried once"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_iterator_is_renewed_right_after_the_last_record_fetched() {
    let api = FakeKinesis::new(vec![(
        "shard-0",
        vec![
            Step::Records(vec![1, 2, 3]),
            Step::Expired,
            Step::Records(vec![4]),
            Step::End,
        ],
    )]);
    let mut consumer = builder(&api).build().await.expect("build");
    assert_eq!(take(&mut consumer, 4).await, vec![1, 2, 3, 4], "no gap, no repeat");
    assert_quiet(&mut consumer).await;
    let positions: Vec<IteratorPosition> = api
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::Iterator(_, position) => Some(position),
            Call::Records(..) => None,
        })
        .collect();
    assert_eq!(
        positions,
        vec![IteratorPosition::TrimHorizon, IteratorPosition::AfterSequence(seq(3))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_black_holed_call_times_out_and_the_shard_recovers() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Hang, Step::Records(vec![7]), Step::End])]);
    let mut consumer = builder(&api)
        .request_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("build");
    let started = Instant::now();
    assert_eq!(take(&mut consumer, 1).await, vec![7]);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the hung call was given its full timeout"
    );
    assert!(consumer.error().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_fatal_error_ends_the_stream_and_stays_retrievable_with_processed_records_checkpointed() {
    let api = FakeKinesis::new(vec![
        ("shard-0", vec![Step::Records(vec![1, 2]), Step::Fatal(access_denied)]),
        ("shard-1", vec![]),
    ]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .build()
        .await
        .expect("build");
    assert_eq!(drain(&mut consumer).await, vec![1, 2]);
    assert!(
        matches!(consumer.error(), Some(Error::AccessDenied { .. })),
        "{:?}",
        consumer.error()
    );
    assert_eq!(
        store.get("shard-0"),
        Some(Checkpoint::Sequence(seq(2))),
        "processed records keep their checkpoint"
    );
    assert!(matches!(consumer.close().await, Err(Error::AccessDenied { .. })));
    assert!(consumer.next().await.is_none(), "an ended stream stays ended");
}

#[tokio::test(start_paused = true)]
async fn no_shard_calls_get_records_more_than_five_times_a_second() {
    let steps = (0..30)
        .map(|i| Step::Records(vec![i * 2 + 1, i * 2 + 2]))
        .chain([Step::End])
        .collect();
    let api = FakeKinesis::new(vec![("shard-0", steps)]);
    // Full batches mean the shard is behind, so it re-polls as fast as allowed.
    let mut consumer = builder(&api).max_records_per_call(2).build().await.expect("build");
    assert_eq!(take(&mut consumer, 60).await.len(), 60);
    let calls = api.record_calls("shard-0");
    for pair in calls.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(200),
            "calls {:?} apart",
            pair[1] - pair[0]
        );
    }
    for window in calls.windows(6) {
        assert!(
            window[5] - window[0] >= Duration::from_secs(1),
            "six calls within a second"
        );
    }
    let total = calls[calls.len() - 1] - calls[0];
    assert!(
        total < Duration::from_millis(200 * 31 + 100),
        "a shard that is behind polls without idling: {total:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_shards_poll_at_spread_out_moments_not_all_at_once() {
    let shards = ["shard-0", "shard-1", "shard-2", "shard-3"];
    let api = FakeKinesis::new(shards.iter().map(|id| (*id, Vec::new())).collect());
    let mut consumer = builder(&api)
        .idle_interval(Duration::from_secs(1))
        .build()
        .await
        .expect("build");
    assert_quiet(&mut consumer).await;
    // Each shard keeps one phase within the idle interval from its second
    // poll on; no two phases are closer than a tenth of the interval.
    let mut phases: Vec<u128> = shards
        .iter()
        .map(|id| {
            let calls = api.record_calls(id);
            assert!(calls.len() > 100, "{id} kept polling");
            let phase = (calls[1] - calls[0]).as_millis() % 1000;
            for pair in calls[1..].windows(2) {
                assert_eq!(pair[1] - pair[0], Duration::from_secs(1), "{id} polls once a second");
            }
            phase
        })
        .collect();
    phases.sort_unstable();
    let gaps = phases
        .windows(2)
        .map(|p| p[1] - p[0])
        .chain([phases[0] + 1000 - phases[3]]);
    for gap in gaps {
        assert!(gap >= 100, "phases {phases:?} cluster");
    }
}

#[tokio::test(start_paused = true)]
async fn a_lower_call_budget_is_respected() {
    let steps = (0..6).map(|i| Step::Records(vec![i + 1])).chain([Step::End]).collect();
    let api = FakeKinesis::new(vec![("shard-0", steps)]);
    let mut consumer = builder(&api)
        .max_records_per_call(1)
        .max_get_records_per_second(2)
        .build()
        .await
        .expect("build");
    take(&mut consumer, 6).await;
    for pair in api.record_calls("shard-0").windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(500));
    }
}

#[tokio::test(start_paused = true)]
async fn a_throttled_shard_does_not_delay_the_others() {
    let throttled = (0..40).map(|_| Step::Throttle).chain([Step::End]).collect();
    let flowing = (1..=5).map(|n| Step::Records(vec![n])).chain([Step::End]).collect();
    let api = FakeKinesis::new(vec![("shard-a", throttled), ("shard-b", flowing)]);
    let mut consumer = builder(&api).build().await.expect("build");
    let started = Instant::now();
    let mut read = Vec::new();
    while read.len() < 5 {
        let record = consumer.next().await.expect("shard-b keeps flowing");
        read.push(record.sequence_number.clone());
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shard-b waited {:?}",
        started.elapsed()
    );
    let throttled_calls = api.record_calls("shard-a");
    assert!(throttled_calls.len() < 40, "shard-a is still backing off");
    assert_quiet(&mut consumer).await;
    assert_eq!(
        api.record_calls("shard-a").len(),
        41,
        "shard-a retried through its throttling to its end"
    );
}

#[tokio::test(start_paused = true)]
async fn in_auto_mode_a_record_is_checkpointed_only_once_the_next_is_asked_for() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2, 3])])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_every(1)
        .build()
        .await
        .expect("build");
    let first = consumer.next().await.expect("record 1");
    assert_eq!(first.sequence_number, seq(1));
    let second = consumer.next().await.expect("record 2");
    assert_eq!(second.sequence_number, seq(2));
    // Record 2 is in the caller's hands: close() must not count it.
    consumer.close().await.expect("close");
    assert_eq!(store.get("shard-0"), Some(Checkpoint::Sequence(seq(1))));
}

#[tokio::test(start_paused = true)]
async fn checkpoints_are_written_on_the_interval_while_the_consumer_waits() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2])])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_interval(Duration::from_secs(3))
        .build()
        .await
        .expect("build");
    consumer.next().await.expect("record 1");
    consumer.next().await.expect("record 2");
    // The caller now waits at the tip; asking marked record 2 processed.
    let waited = tokio::time::timeout(Duration::from_secs(7), consumer.next()).await;
    assert!(waited.is_err(), "no more records");
    assert_eq!(
        store.get("shard-0"),
        Some(Checkpoint::Sequence(seq(2))),
        "written by the interval, not at shutdown"
    );
    drop(consumer);
}

#[tokio::test(start_paused = true)]
async fn manual_acks_out_of_order_commit_only_the_contiguous_prefix() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2, 3, 4, 5])])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_mode(CheckpointMode::Manual)
        .build()
        .await
        .expect("build");
    let mut records = Vec::new();
    for _ in 0..5 {
        records.push(consumer.next().await.expect("record"));
    }
    let checkpointer = consumer.checkpointer();
    let elsewhere = checkpointer.clone();
    elsewhere.checkpoint(&records[1]).expect("ack 2");
    elsewhere.checkpoint(&records[2]).expect("ack 3");
    checkpointer.flush().await.expect("flush");
    assert_eq!(
        store.get("shard-0"),
        None,
        "record 1 is unprocessed, so nothing may be committed"
    );
    consumer.checkpoint(&records[0]).expect("ack 1");
    checkpointer.flush().await.expect("flush");
    assert_eq!(store.get("shard-0"), Some(Checkpoint::Sequence(seq(3))));
    consumer.checkpoint(&records[4]).expect("ack 5");
    let stranger = crate::Record::new("shard-0", seq(99), "k", &b"x"[..]);
    assert!(matches!(
        checkpointer.checkpoint(&stranger),
        Err(Error::UnknownRecord { .. })
    ));
    consumer.close().await.expect("close");
    assert_eq!(
        store.get("shard-0"),
        Some(Checkpoint::Sequence(seq(3))),
        "record 4 was never processed"
    );
    assert!(
        matches!(checkpointer.checkpoint(&records[3]), Err(Error::Closed)),
        "after close nothing marked could be written"
    );
    assert!(matches!(checkpointer.flush().await, Err(Error::Closed)));
}

#[tokio::test(start_paused = true)]
async fn checkpoint_in_auto_mode_is_a_configuration_error() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1])])]);
    let mut consumer = builder(&api)
        .checkpoint_store(TestStore::default())
        .build()
        .await
        .expect("build");
    let record = consumer.next().await.expect("record");
    assert!(matches!(consumer.checkpoint(&record), Err(Error::InvalidConfig { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_store_that_keeps_failing_ends_the_stream_with_its_error() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2, 3])])]);
    let store = Arc::new(TestStore::default());
    let unavailable = || CheckpointError::Unavailable {
        source: Arc::new(std::io::Error::other("database is locked")),
    };
    store
        .failures
        .lock()
        .expect("lock")
        .extend((0..10).map(|_| unavailable()));
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_every(1)
        .checkpoint_retries(3)
        .build()
        .await
        .expect("build");
    let read = drain(&mut consumer).await;
    assert!(read.len() <= 3);
    match consumer.error() {
        Some(error @ Error::Checkpoint(CheckpointError::Unavailable { .. })) => {
            assert!(error.is_retryable())
        }
        other => panic!("expected the store's error, got {other:?}"),
    }
    assert_eq!(*store.saves.lock().expect("lock"), 4, "one try and three retries");
    assert_eq!(store.get("shard-0"), None, "nothing was claimed saved");
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_that_would_move_backwards_is_fatal_at_once() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2])])]);
    let store = Arc::new(TestStore::default());
    let key = CheckpointKey::new("kcpy", "test-stream", "shard-0");
    store
        .failures
        .lock()
        .expect("lock")
        .push_back(CheckpointError::conflict(
            &key,
            Checkpoint::Sequence(seq(50)),
            Checkpoint::Sequence(seq(1)),
        ));
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_every(1)
        .build()
        .await
        .expect("build");
    drain(&mut consumer).await;
    assert!(matches!(
        consumer.error(),
        Some(Error::Checkpoint(CheckpointError::Conflict { .. }))
    ));
    assert_eq!(*store.saves.lock().expect("lock"), 1, "a conflict is not retried");
}

#[tokio::test(start_paused = true)]
async fn build_retries_transient_failures_then_gives_up_with_unavailable() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1])])]);
    *api.list_failures.lock().expect("lock") = 2;
    let mut consumer = builder(&api).build().await.expect("two failures are retried");
    assert_eq!(consumer.next().await.map(|r| r.sequence_number), Some(seq(1)));

    *api.list_failures.lock().expect("lock") = 100;
    match builder(&api).startup_retries(3).build().await {
        Err(
            error @ Error::Unavailable {
                operation: "ListShards",
                ..
            },
        ) => assert!(error.is_retryable()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_idle_ends_the_stream_and_flushes() {
    let api = FakeKinesis::new(vec![
        ("shard-0", vec![Step::Records(vec![1, 2])]),
        ("shard-1", vec![Step::Hang]),
    ]);
    let store = Arc::new(TestStore::default());
    let token = CancellationToken::new();
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .shutdown_token(token.clone())
        .build()
        .await
        .expect("build");
    consumer.next().await.expect("record 1");
    consumer.next().await.expect("record 2");
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        token.cancel();
    });
    assert!(consumer.next().await.is_none(), "the stream ends on shutdown");
    stopper.await.expect("stopper");
    assert!(consumer.error().is_none());
    assert_eq!(store.get("shard-0"), Some(Checkpoint::Sequence(seq(2))));
}

#[tokio::test(start_paused = true)]
async fn a_hung_store_cannot_stall_shutdown_past_its_deadline() {
    #[derive(Debug)]
    struct HungStore;
    #[async_trait]
    impl CheckpointStore for HungStore {
        async fn load(&self, _: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
            Ok(None)
        }
        async fn save(&self, _: &CheckpointKey, _: &Checkpoint) -> Result<(), CheckpointError> {
            futures::future::pending().await
        }
    }
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2])])]);
    let mut consumer = builder(&api)
        .checkpoint_store(HungStore)
        .shutdown_timeout(Duration::from_secs(3))
        .build()
        .await
        .expect("build");
    consumer.next().await.expect("record 1");
    consumer.next().await.expect("record 2");
    consumer.shutdown_handle().shutdown();
    let started = Instant::now();
    assert!(consumer.next().await.is_none());
    assert!(started.elapsed() <= Duration::from_secs(3));
    assert!(matches!(consumer.error(), Some(Error::ShutdownTimedOut { .. })));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_consumer_with_a_hung_call_returns_at_once() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Hang])]);
    let consumer = builder(&api).build().await.expect("build");
    drop(consumer);
    // The poller task was aborted: its Arc to the fake is gone.
    tokio::task::yield_now().await;
    assert_eq!(Arc::strong_count(&api), 1);
}

#[tokio::test(start_paused = true)]
async fn bad_stream_names_and_arns_are_configuration_errors() {
    let api = FakeKinesis::new(vec![]);
    for stream in [
        "",
        "has space",
        "arn:aws:s3:::bucket",
        "arn:aws:kinesis:us-east-1:123:table/x",
    ] {
        let result = ConsumerBuilder::with_api(Arc::clone(&api) as DynKinesis, stream.into())
            .build()
            .await;
        assert!(
            matches!(result, Err(Error::InvalidConfig { .. })),
            "{stream:?}: {result:?}"
        );
    }
    let arn = "arn:aws:kinesis:us-east-1:123456789012:stream/orders";
    let consumer = ConsumerBuilder::with_api(Arc::clone(&api) as DynKinesis, arn.into())
        .build()
        .await
        .expect("an ARN");
    assert_eq!(consumer.stream_name(), "orders");
}

/// Watches the store while reading: per record, the parent's checkpoint as it
/// stood when the record was handed out.
async fn take_watching(
    consumer: &mut Consumer,
    n: usize,
    store: &TestStore,
    parent: &str,
) -> Vec<(u64, Option<Checkpoint>)> {
    let mut read = Vec::new();
    while read.len() < n {
        let record = consumer.next().await.expect("a record");
        read.push((number(&record), store.get(parent)));
    }
    read
}

#[tokio::test(start_paused = true)]
async fn children_are_read_only_after_their_parent_ended_and_its_end_was_checkpointed() {
    let api = FakeKinesis::with_lineage(vec![
        (
            "A",
            &[],
            true,
            vec![Step::Records(vec![1, 2]), Step::Records(vec![3]), Step::End],
        ),
        ("B", &["A"], false, vec![Step::Records(vec![10, 11])]),
        ("C", &["A"], false, vec![Step::Records(vec![20])]),
    ]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .build()
        .await
        .expect("build");
    assert_eq!(
        consumer.shard_ids().collect::<Vec<_>>(),
        ["A"],
        "children wait for their parent"
    );
    let read = take_watching(&mut consumer, 6, &store, "A").await;
    let (parent, children) = read.split_at(3);
    assert_eq!(parent.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3]);
    let mut child_numbers: Vec<u64> = children.iter().map(|(n, _)| *n).collect();
    child_numbers.sort();
    assert_eq!(child_numbers, [10, 11, 20]);
    assert!(
        children.iter().all(|(_, a)| *a == Some(Checkpoint::ShardEnd)),
        "no child record before the parent's end is durable: {children:?}"
    );
    let positions: Vec<(String, IteratorPosition)> = api
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::Iterator(shard, position) => Some((shard, position)),
            Call::Records(..) => None,
        })
        .collect();
    assert!(positions.contains(&("B".into(), IteratorPosition::TrimHorizon)));
    assert_quiet(&mut consumer).await;
    assert!(
        consumer.error().is_none(),
        "all shards closed is no reason to end: {:?}",
        consumer.error()
    );
}

#[tokio::test(start_paused = true)]
async fn a_merged_child_waits_for_both_parents() {
    let api = FakeKinesis::with_lineage(vec![
        ("A", &[], true, vec![Step::Records(vec![1]), Step::End]),
        (
            "B",
            &[],
            true,
            vec![
                Step::Throttle,
                Step::Throttle,
                Step::Throttle,
                Step::Records(vec![2]),
                Step::End,
            ],
        ),
        ("M", &["A", "B"], false, vec![Step::Records(vec![3])]),
    ]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .build()
        .await
        .expect("build");
    let read = take_watching(&mut consumer, 3, &store, "B").await;
    assert_eq!(read.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        read[2].1,
        Some(Checkpoint::ShardEnd),
        "M starts only once B's end is checkpointed"
    );
    assert_eq!(store.get("A"), Some(Checkpoint::ShardEnd));
}

#[tokio::test(start_paused = true)]
async fn without_a_store_children_follow_their_parents_too() {
    let api = FakeKinesis::with_lineage(vec![
        ("A", &[], true, vec![Step::Records(vec![1, 2]), Step::End]),
        ("B", &["A"], false, vec![Step::Records(vec![3])]),
    ]);
    let mut consumer = builder(&api).build().await.expect("build");
    assert_eq!(take(&mut consumer, 3).await, [1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn in_manual_mode_a_shard_ends_only_once_every_record_is_acknowledged() {
    let api = FakeKinesis::with_lineage(vec![
        ("A", &[], true, vec![Step::Records(vec![1, 2]), Step::End]),
        ("B", &["A"], false, vec![Step::Records(vec![3])]),
    ]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_mode(CheckpointMode::Manual)
        .build()
        .await
        .expect("build");
    let first = consumer.next().await.expect("record 1");
    let second = consumer.next().await.expect("record 2");
    consumer.checkpoint(&second).expect("ack 2");
    // Record 1 is unacknowledged: A is not finished, so B must not start.
    let waited = tokio::time::timeout(Duration::from_secs(120), consumer.next()).await;
    assert!(waited.is_err(), "B started before A's records were all processed");
    assert_eq!(store.get("A"), None);
    consumer.checkpoint(&first).expect("ack 1");
    let third = consumer.next().await.expect("record 3 once A is done");
    assert_eq!(number(&third), 3);
    assert_eq!(store.get("A"), Some(Checkpoint::ShardEnd));
}

#[tokio::test(start_paused = true)]
async fn finished_shards_are_not_read_again_after_a_restart() {
    let api = FakeKinesis::with_lineage(vec![
        ("A", &[], true, vec![Step::Records(vec![1]), Step::End]),
        ("B", &["A"], false, vec![Step::Records(vec![2])]),
    ]);
    let store = Arc::new(TestStore::default());
    store
        .saved
        .lock()
        .expect("lock")
        .insert("A".into(), Checkpoint::ShardEnd);
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .start_position(StartPosition::Latest)
        .build()
        .await
        .expect("build");
    assert_eq!(take(&mut consumer, 1).await, [2], "B from its start, A not at all");
    assert!(api.record_calls("A").is_empty());
}

#[tokio::test(start_paused = true)]
async fn shards_found_by_the_periodic_listing_are_read_after_their_parent() {
    let api = FakeKinesis::new(vec![
        ("A", vec![Step::Records(vec![1]), Step::End]),
        ("B", vec![Step::Records(vec![2])]),
    ]);
    // B is not listed yet, and A's end names no children.
    let later = api.listing.lock().expect("lock").pop().expect("B");
    let mut consumer = builder(&api)
        .shard_sync_interval(Duration::from_secs(30))
        .build()
        .await
        .expect("build");
    assert_eq!(take(&mut consumer, 1).await, [1]);
    api.listing.lock().expect("lock").push(ShardInfo {
        parent_shard_id: Some("A".into()),
        ..later
    });
    let started = Instant::now();
    assert_eq!(take(&mut consumer, 1).await, [2]);
    assert!(
        started.elapsed() <= Duration::from_secs(31),
        "found by the next listing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deleted_stream_found_by_the_listing_ends_the_stream() {
    struct Gone(Arc<FakeKinesis>);
    #[async_trait]
    impl KinesisApi for Gone {
        async fn list_shards(&self, stream: &StreamRef, token: Option<String>) -> Result<ShardPage, ApiError> {
            if self.0.calls().len() > 1 {
                return Err(ApiError::Fatal(Error::StreamNotFound {
                    stream: "test-stream".into(),
                    source: Arc::new(std::io::Error::other("ResourceNotFoundException")),
                }));
            }
            self.0.list_shards(stream, token).await
        }
        async fn get_shard_iterator(&self, s: &StreamRef, id: &str, p: &IteratorPosition) -> Result<String, ApiError> {
            self.0.get_shard_iterator(s, id, p).await
        }
        async fn get_records(
            &self,
            s: &StreamRef,
            shard: &Arc<str>,
            it: &str,
            limit: i32,
        ) -> Result<RecordsPage, ApiError> {
            self.0.get_records(s, shard, it, limit).await
        }
    }
    let fake = FakeKinesis::new(vec![("A", vec![Step::Records(vec![1])])]);
    let api: DynKinesis = Arc::new(Gone(fake));
    let mut consumer = ConsumerBuilder::with_api(api, "test-stream".into())
        .shard_sync_interval(Duration::from_secs(5))
        .build()
        .await
        .expect("build");
    assert_eq!(drain(&mut consumer).await, [1]);
    assert!(matches!(consumer.error(), Some(Error::StreamNotFound { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_success_without_an_iterator_does_not_end_an_open_shard() {
    let api = FakeKinesis::new(vec![(
        "shard-0",
        vec![
            Step::Records(vec![1]),
            Step::NoIterator,
            Step::Records(vec![2]),
            Step::NoIterator,
            Step::Records(vec![3]),
        ],
    )]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_every(1)
        .build()
        .await
        .expect("build");
    assert_eq!(take(&mut consumer, 3).await, [1, 2, 3], "the shard is read on");
    assert_eq!(consumer.shard_ids().collect::<Vec<_>>(), ["shard-0"]);
    consumer.close().await.expect("close");
    assert_eq!(
        store.get("shard-0"),
        Some(Checkpoint::Sequence(seq(2))),
        "no SHARD_END for an open shard"
    );
    let renewed: Vec<IteratorPosition> = api
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::Iterator(_, position) => Some(position),
            Call::Records(..) => None,
        })
        .collect();
    assert_eq!(
        renewed,
        [
            IteratorPosition::TrimHorizon,
            IteratorPosition::AfterSequence(seq(1)),
            IteratorPosition::AfterSequence(seq(2))
        ],
        "renewed right after the last record, so nothing is skipped or repeated"
    );
}

#[tokio::test(start_paused = true)]
async fn a_shard_aged_out_of_retention_ends_alone_and_its_children_start() {
    let api = FakeKinesis::with_lineage(vec![
        ("A", &[], true, vec![Step::Records(vec![1])]),
        ("B", &["A"], false, vec![Step::Records(vec![10])]),
        ("C", &[], false, vec![Step::Records(vec![20]), Step::Records(vec![21])]),
    ]);
    api.expiring.lock().expect("lock").push("A".into());
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .build()
        .await
        .expect("a shard aging out is no reason to fail the build");
    let mut read = take(&mut consumer, 3).await;
    read.sort();
    assert_eq!(read, [10, 20, 21], "A holds nothing any more; B and C are read");
    assert!(consumer.error().is_none(), "{:?}", consumer.error());
    assert_eq!(store.get("A"), Some(Checkpoint::ShardEnd));
}

/// A store whose code panics: on load, or on every save.
#[derive(Debug)]
struct PanickingStore {
    on_load: bool,
}

#[async_trait]
impl CheckpointStore for PanickingStore {
    async fn load(&self, _: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        assert!(!self.on_load, "a store bug on load");
        Ok(None)
    }

    async fn save(&self, _: &CheckpointKey, _: &Checkpoint) -> Result<(), CheckpointError> {
        panic!("a store bug on save");
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_store_ends_the_stream_with_an_error_instead_of_vanishing() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2, 3])])]);
    let mut consumer = builder(&api)
        .checkpoint_store(PanickingStore { on_load: false })
        .checkpoint_every(1)
        .build()
        .await
        .expect("build");
    let read = tokio::time::timeout(Duration::from_secs(60), drain(&mut consumer))
        .await
        .expect("the stream ends");
    assert!(read.len() <= 3, "{read:?}");
    match consumer.error() {
        Some(Error::Panicked { task, message }) => {
            assert_eq!(*task, "checkpoint writer");
            assert!(message.contains("a store bug on save"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!consumer.error().is_some_and(Error::is_retryable));
}

#[tokio::test(start_paused = true)]
async fn a_store_panicking_while_build_loads_checkpoints_fails_the_build() {
    let api = FakeKinesis::new(vec![("shard-0", vec![])]);
    let built = builder(&api)
        .checkpoint_store(PanickingStore { on_load: true })
        .build()
        .await;
    assert!(
        matches!(
            built,
            Err(Error::Panicked {
                task: "checkpoint load",
                ..
            })
        ),
        "{built:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_merge_child_waits_for_a_parent_that_appeared_after_the_last_listing() {
    // Listed at build: X and A, both open. Then X splits (B is one child) and
    // B merges with A into M; A's end names M before any listing shows B.
    let throttled_then = |steps: Vec<Step>| (0..8).map(|_| Step::Throttle).chain(steps).collect();
    let api = FakeKinesis::with_lineage(vec![
        (
            "X",
            &[],
            false,
            throttled_then(vec![Step::Records(vec![100]), Step::End]),
        ),
        ("A", &[], false, vec![Step::Records(vec![1]), Step::End]),
    ]);
    let later = |id: &str, parents: &[&str], steps: Vec<Step>| {
        api.scripts.lock().expect("lock").insert(id.to_string(), steps.into());
        ShardInfo {
            shard_id: id.into(),
            parent_shard_id: parents.first().map(|p| p.to_string()),
            adjacent_parent_shard_id: parents.get(1).map(|p| p.to_string()),
            ending_sequence_number: None,
        }
    };
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .build()
        .await
        .expect("build");
    let b = later("B", &["X"], vec![Step::Records(vec![200]), Step::End]);
    let m = later("M", &["A", "B"], vec![Step::Records(vec![300])]);
    api.listing.lock().expect("lock").extend([b, m]);
    let read = tokio::time::timeout(Duration::from_secs(120), take(&mut consumer, 4))
        .await
        .expect("every shard is read");
    let at = |n: u64| read.iter().position(|&r| r == n).expect("read");
    assert!(at(100) < at(200), "B after its parent X: {read:?}");
    assert!(at(200) < at(300), "M after both its parents, B included: {read:?}");
    assert!(at(1) < at(300), "{read:?}");
}

#[tokio::test(start_paused = true)]
async fn in_manual_mode_a_shard_stops_handing_out_records_at_the_unacknowledged_cap() {
    let api = FakeKinesis::new(vec![(
        "shard-0",
        vec![
            Step::Records(vec![1, 2]),
            Step::Records(vec![3, 4]),
            Step::Records(vec![5, 6]),
        ],
    )]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_mode(CheckpointMode::Manual)
        .max_unacknowledged(2)
        .build()
        .await
        .expect("build");
    let first = consumer.next().await.expect("record 1");
    let second = consumer.next().await.expect("record 2");
    consumer.checkpoint(&second).expect("ack 2");
    // Record 1 is unacknowledged, so two records are outstanding: no more.
    assert_quiet(&mut consumer).await;
    consumer.checkpoint(&first).expect("ack 1");
    assert_eq!(
        take(&mut consumer, 2).await,
        [3, 4],
        "acknowledgements let the shard go on"
    );
    assert_quiet(&mut consumer).await;
}

#[tokio::test(start_paused = true)]
async fn in_auto_mode_a_batch_is_checkpointed_only_once_the_next_is_asked_for() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2, 3, 4, 5])])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_every(1)
        .checkpoint_interval(Duration::from_secs(1))
        .build()
        .await
        .expect("build");
    let batch = consumer.next_batch(3).await.expect("a batch");
    assert_eq!(batch.iter().map(number).collect::<Vec<_>>(), [1, 2, 3]);
    // Checkpoint intervals pass while the caller works on the batch.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(store.get("shard-0"), None, "nothing of a batch in the caller's hands");
    let rest = consumer.next_batch(100).await.expect("the rest of the page");
    assert_eq!(rest.iter().map(number).collect::<Vec<_>>(), [4, 5]);
    consumer.close().await.expect("close");
    assert_eq!(
        store.get("shard-0"),
        Some(Checkpoint::Sequence(seq(3))),
        "asking for the next batch made the first one processed, and only it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_latest_start_is_saved_at_build_so_a_restart_before_any_record_resumes_there() {
    let api = FakeKinesis::new(vec![("shard-0", vec![]), ("shard-1", vec![])]);
    let store = Arc::new(TestStore::default());
    let first = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .start_position(StartPosition::Latest)
        .build()
        .await
        .expect("build");
    let saved = |shard: &str| match store.get(shard) {
        Some(Checkpoint::AtTimestamp(at)) => at.time(),
        other => panic!("{shard}: {other:?}"),
    };
    let marked = (saved("shard-0"), saved("shard-1"));
    assert_eq!(marked.0, marked.1);
    // A crash before any record arrived.
    drop(first);
    tokio::time::sleep(Duration::from_secs(600)).await;
    let second = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .start_position(StartPosition::Latest)
        .build()
        .await
        .expect("build");
    let restarted: Vec<IteratorPosition> = api
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::Iterator(_, position) => Some(position),
            Call::Records(..) => None,
        })
        .skip(2)
        .take(2)
        .collect();
    assert_eq!(
        restarted,
        [
            IteratorPosition::AtTimestamp(marked.0),
            IteratorPosition::AtTimestamp(marked.0)
        ],
        "the saved start, not the tip ten minutes later"
    );
    drop(second);
}

#[tokio::test(start_paused = true)]
async fn the_slots_of_finished_shards_are_reused_so_reshards_do_not_grow_the_consumer() {
    let api = FakeKinesis::with_lineage(vec![
        ("A", &[], true, vec![Step::Records(vec![1]), Step::End]),
        ("B", &["A"], true, vec![Step::Records(vec![2]), Step::End]),
        ("C", &["B"], true, vec![Step::Records(vec![3]), Step::End]),
        ("D", &["C"], false, vec![Step::Records(vec![4])]),
    ]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .build()
        .await
        .expect("build");
    assert_eq!(take(&mut consumer, 4).await, [1, 2, 3, 4]);
    assert_eq!(consumer.shard_ids().collect::<Vec<_>>(), ["D"]);
    assert_eq!(consumer.slots.len(), 1, "each child took its finished parent's slot");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_consumer_saves_the_processed_records_checkpoints_in_the_background() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2, 3, 4, 5])])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        // Nothing falls due while reading: only the drop can save.
        .checkpoint_interval(Duration::from_secs(3600))
        .checkpoint_every(1000)
        .build()
        .await
        .expect("build");
    assert_eq!(take(&mut consumer, 3).await, [1, 2, 3]);
    assert_eq!(store.get("shard-0"), None);
    drop(consumer);
    let saved = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let told = store.saved_now.notified();
            if store.get("shard-0").is_some() {
                break;
            }
            told.await;
        }
    })
    .await;
    assert!(saved.is_ok(), "no checkpoint was saved after the drop");
    assert_eq!(
        store.get("shard-0"),
        Some(Checkpoint::Sequence(seq(2))),
        "records 1 and 2 were processed; 3, handed out last, was not"
    );
}
