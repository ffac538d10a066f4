//! Faults the emulator cannot make, injected by a proxy between the SDK and
//! kinesis-mock: throttling, expired iterators, 5xx, connection resets, black
//! holes, a restarted emulator, fatal errors, failing checkpoint stores. In
//! each, no record is lost and no checkpoint passes an unprocessed record.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use kcpy::{
    Checkpoint, CheckpointError, CheckpointKey, CheckpointStore, Consumer, ConsumerBuilder, Error,
    MemoryCheckpointStore, SqliteCheckpointStore,
};
use support::fault_proxy::{Fault, FaultProxy, Rule};
use support::{by_shard, counts, read_until, Put, TestStream};

const LIMIT: Duration = Duration::from_secs(180);
const SHARD_0: &str = "shardId-000000000000";

fn builder(proxy: &FaultProxy, stream: &TestStream) -> ConsumerBuilder {
    Consumer::builder(proxy.client(), &stream.name)
        .idle_interval(Duration::from_millis(100))
        .checkpoint_interval(Duration::from_millis(200))
        .backoff(Duration::from_millis(100), Duration::from_secs(2))
        .request_timeout(Duration::from_secs(3))
        .startup_retries(20)
}

async fn proxy_for_emulator(seed: u64) -> FaultProxy {
    FaultProxy::start(&support::endpoint(), seed).await
}

async fn read_through_markers(consumer: &mut Consumer, stream: &TestStream) -> Vec<Put> {
    let markers = stream.put_marker_on_every_shard("end").await;
    let mut read = read_until(consumer, LIMIT, |r| markers.iter().all(|m| r.contains(m))).await;
    read.retain(|r| !markers.contains(r));
    read
}

/// Reads everything through the proxy with batches of `limit` records, then
/// closes the consumer cleanly.
async fn consume_all(proxy: &FaultProxy, stream: &TestStream, limit: i32) -> Vec<Put> {
    let mut consumer = builder(proxy, stream)
        .max_records_per_call(limit)
        .build()
        .await
        .expect("build");
    let read = read_through_markers(&mut consumer, stream).await;
    consumer.close().await.expect("close");
    read
}

fn assert_exactly_once_in_order(read: &[Put], puts: &[Put]) {
    let seen = counts(read);
    let missing = puts.iter().filter(|p| !seen.contains_key(p)).count();
    let repeated = seen.values().filter(|n| **n > 1).count();
    assert_eq!((missing, repeated), (0, 0), "records missing and records repeated");
    assert_eq!(read.len(), puts.len());
    assert_eq!(by_shard(read), by_shard(puts), "per shard in order");
}

/// Checkpoints in `store` never pass what was delivered.
async fn assert_checkpoints_within(store: &dyn CheckpointStore, stream: &str, consumer: &str, read: &[Put]) {
    for (shard, seqs) in by_shard(read) {
        let key = CheckpointKey::new(consumer, stream, &shard);
        if let Some(Checkpoint::Sequence(seq)) = store.load(&key).await.expect("load") {
            assert!(
                seqs.contains(&seq),
                "{shard}: checkpoint {seq} is not a delivered record"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_shard_backs_off_alone_and_no_shard_exceeds_five_calls_a_second() {
    let stream = TestStream::create("throttle", 4).await;
    let puts = stream.put_many("rec", 4000, 199).await;
    let proxy = proxy_for_emulator(1).await;
    proxy.add(
        Rule::new(Fault::Kinesis("ProvisionedThroughputExceededException"))
            .on("GetRecords")
            .shard(SHARD_0)
            .probability(0.3),
    );
    // Small batches keep every shard behind, polling as fast as allowed.
    let read = consume_all(&proxy, &stream, 50).await;

    assert_exactly_once_in_order(&read, &puts);
    let throttled = proxy.injected(&Fault::Kinesis("ProvisionedThroughputExceededException"));
    assert!(throttled > 0, "the throttle was exercised");
    for shard in by_shard(&puts).keys() {
        let times = proxy.get_records_times(shard);
        for window in times.windows(6) {
            assert!(
                window[5] - window[0] >= Duration::from_millis(995),
                "{shard}: six GetRecords within a second"
            );
        }
        if shard != SHARD_0 {
            // Shard 0's backoff never held these up.
            let longest = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
            assert!(
                longest < Duration::from_secs(2),
                "{shard} paused {longest:?} between calls"
            );
        }
    }
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_iterator_mid_stream_resumes_after_the_last_record_without_gaps_or_repeats() {
    let stream = TestStream::create("expired", 2).await;
    let puts = stream.put_many("rec", 1500, 97).await;
    let proxy = proxy_for_emulator(2).await;
    proxy.add(
        Rule::new(Fault::Kinesis("ExpiredIteratorException"))
            .on("GetRecords")
            .shard(SHARD_0)
            .after(3)
            .times(1),
    );
    let read = consume_all(&proxy, &stream, 100).await;

    assert_exactly_once_in_order(&read, &puts);
    assert_eq!(proxy.injected(&Fault::Kinesis("ExpiredIteratorException")), 1);
    let renewals: Vec<serde_json::Value> = proxy
        .calls()
        .into_iter()
        .filter(|c| c.operation == "GetShardIterator" && c.shard.as_deref() == Some(SHARD_0))
        .filter_map(|c| c.request)
        .collect();
    assert_eq!(renewals.len(), 2, "one iterator at start, one renewal");
    assert_eq!(renewals[1]["ShardIteratorType"], "AFTER_SEQUENCE_NUMBER");
    let renewed_after = renewals[1]["StartingSequenceNumber"]
        .as_str()
        .expect("a sequence number");
    let shard0: Vec<&Put> = puts.iter().filter(|p| p.shard_id == SHARD_0).collect();
    assert_eq!(
        renewed_after,
        shard0[299].sequence_number.as_str(),
        "right after the 3 batches of 100 read"
    );
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_connection_resets_on_a_fifth_of_calls_lose_nothing() {
    let stream = TestStream::create("flaky", 4).await;
    let puts = stream.put_many("rec", 3000, 151).await;
    let proxy = proxy_for_emulator(3).await;
    for fault in [Fault::Status(500), Fault::Status(503), Fault::Reset] {
        proxy.add(Rule::new(fault).probability(0.072));
    }
    let read = consume_all(&proxy, &stream, 50).await;

    assert_exactly_once_in_order(&read, &puts);
    for fault in [Fault::Status(500), Fault::Status(503), Fault::Reset] {
        assert!(proxy.injected(&fault) > 0, "{fault:?} was exercised");
    }
    let share = proxy.calls().iter().filter(|c| c.fault.is_some()).count() as f64 / proxy.calls().len() as f64;
    assert!(
        (0.1..0.35).contains(&share),
        "about a fifth of all calls failed: {share}"
    );
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_throttling_answers_and_slow_calls_are_retried_without_loss() {
    let stream = TestStream::create("slow", 2).await;
    let puts = stream.put_many("rec", 1000, 61).await;
    let proxy = proxy_for_emulator(7).await;
    let faults = [
        Fault::Kinesis("KMSThrottlingException"),
        Fault::Kinesis("LimitExceededException"),
        Fault::Latency(Duration::from_millis(300)),
    ];
    for fault in &faults {
        proxy.add(Rule::new(fault.clone()).on("GetRecords").probability(0.15));
    }
    let read = consume_all(&proxy, &stream, 50).await;

    assert_exactly_once_in_order(&read, &puts);
    for fault in &faults {
        assert!(proxy.injected(fault) > 0, "{fault:?} was exercised");
    }
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_call_times_out_and_a_shutdown_meanwhile_meets_its_deadline() {
    let stream = TestStream::create("black-hole", 2).await;
    let puts = stream.put_many("rec", 600, 31).await;
    let proxy = proxy_for_emulator(4).await;
    proxy.add(
        Rule::new(Fault::BlackHole)
            .on("GetRecords")
            .shard(SHARD_0)
            .after(1)
            .times(1),
    );
    let mut consumer = builder(&proxy, &stream)
        .max_records_per_call(100)
        .request_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("build");
    let read = read_through_markers(&mut consumer, &stream).await;
    assert_exactly_once_in_order(&read, &puts);
    assert_eq!(proxy.injected(&Fault::BlackHole), 1);

    // Now every GetRecords disappears; shutdown must not wait for them.
    proxy.add(Rule::new(Fault::BlackHole).on("GetRecords"));
    let blackholed = proxy.injected(&Fault::BlackHole);
    proxy
        .until(|calls| calls.iter().filter(|c| c.fault == Some(Fault::BlackHole)).count() >= blackholed + 2)
        .await;
    let deadline = Duration::from_secs(3);
    let started = Instant::now();
    consumer.shutdown_handle().shutdown();
    assert!(consumer.next().await.is_none());
    assert!(started.elapsed() < deadline, "shutdown took {:?}", started.elapsed());
    assert!(consumer.error().is_none(), "{:?}", consumer.error());
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_and_kms_errors_end_the_stream_with_typed_errors_and_intact_checkpoints() {
    for (code, expect_kms) in [("AccessDeniedException", false), ("KMSAccessDeniedException", true)] {
        let stream = TestStream::create("denied", 2).await;
        stream.put_many("rec", 400, 17).await;
        let proxy = proxy_for_emulator(5).await;
        proxy.add(Rule::new(Fault::Kinesis(code)).on("GetRecords").shard(SHARD_0).after(2));
        let store = MemoryCheckpointStore::new();
        let mut consumer = builder(&proxy, &stream)
            .max_records_per_call(50)
            .checkpoint_store(store.clone())
            .checkpoint_every(10)
            .build()
            .await
            .expect("build");
        let mut read = Vec::new();
        while let Some(record) = consumer.next().await {
            read.push(support::as_put(&record));
        }
        match (consumer.error(), expect_kms) {
            (Some(Error::AccessDenied { .. }), false) | (Some(Error::Kms { .. }), true) => {}
            (other, _) => panic!("{code}: expected a typed fatal error, got {other:?}"),
        }
        assert!(!consumer.error().is_some_and(Error::is_retryable));
        assert!(
            read.iter().filter(|r| r.shard_id == SHARD_0).count() >= 100,
            "shard 0 delivered before failing"
        );
        assert_checkpoints_within(&store, &stream.name, "kcpy", &read).await;
        stream.delete().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_minutes_off_from_kinesis_costs_one_refused_call_and_loses_nothing() {
    let stream = TestStream::create("skew", 2).await;
    let mut puts = stream.put_many("before", 100, 13).await;
    let proxy = proxy_for_emulator(8).await;
    proxy.set_clock_ahead(Duration::from_secs(10 * 60));
    let mut consumer = builder(&proxy, &stream).build().await.expect("build");
    let mut read = read_through_markers(&mut consumer, &stream).await;
    let refused = proxy.injected(&Fault::SignatureExpired);
    assert!(
        (1..=2).contains(&refused),
        "the first call is refused and teaches the SDK Kinesis's clock; the direct calls learn it from the SDK's first GetRecords answer: {refused} refused"
    );

    // The clock jumps again: the direct calls meet the refusal themselves.
    proxy.set_clock_ahead(Duration::from_secs(40 * 60));
    puts.extend(stream.put_many("after", 100, 17).await);
    read.extend(read_through_markers(&mut consumer, &stream).await);
    assert!(
        proxy.injected(&Fault::SignatureExpired) > refused,
        "calls were refused after the jump"
    );
    assert!(consumer.error().is_none(), "{:?}", consumer.error());
    consumer.close().await.expect("close");
    assert_exactly_once_in_order(&read, &puts);
    stream.delete().await;
}

/// Fails the first `failures` saves with a transient error.
#[derive(Debug)]
struct FlakyStore {
    inner: MemoryCheckpointStore,
    failures: AtomicU32,
}

#[async_trait]
impl CheckpointStore for FlakyStore {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        self.inner.load(key).await
    }

    async fn save(&self, key: &CheckpointKey, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(CheckpointError::Unavailable {
                source: Arc::new(std::io::Error::other("injected store failure")),
            });
        }
        self.inner.save(key, checkpoint).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_store_that_fails_a_few_times_is_retried_and_loses_nothing() {
    let stream = TestStream::create("flaky-store", 2).await;
    let puts = stream.put_many("rec", 500, 23).await;
    let store = Arc::new(FlakyStore {
        inner: MemoryCheckpointStore::new(),
        failures: AtomicU32::new(4),
    });
    let mut consumer = Consumer::builder(support::client(), &stream.name)
        .idle_interval(Duration::from_millis(100))
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_every(50)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .checkpoint_retries(5)
        .build()
        .await
        .expect("build");
    let markers = stream.put_marker_on_every_shard("end").await;
    let mut read = read_until(&mut consumer, LIMIT, |r| markers.iter().all(|m| r.contains(m))).await;
    consumer
        .close()
        .await
        .expect("failures within the retries are not an error");
    assert_checkpoints_within(store.as_ref(), &stream.name, "kcpy", &read).await;
    read.retain(|r| !markers.contains(r));
    assert_exactly_once_in_order(&read, &puts);
    assert_eq!(
        store.failures.load(Ordering::SeqCst),
        0,
        "every injected failure was hit"
    );
    stream.delete().await;
}

/// Counts saves under way, so a test can wait until one is blocked.
#[derive(Debug)]
struct Observed<S> {
    inner: S,
    saving: AtomicU32,
}

#[async_trait]
impl<S: CheckpointStore> CheckpointStore for Observed<S> {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        self.inner.load(key).await
    }

    async fn save(&self, key: &CheckpointKey, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        self.saving.fetch_add(1, Ordering::SeqCst);
        let result = self.inner.save(key, checkpoint).await;
        self.saving.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

/// Holds an exclusive lock on a SQLite file from another process until dropped.
struct LockedByAnotherProcess(tokio::process::Child);

impl LockedByAnotherProcess {
    async fn lock(path: &std::path::Path) -> Self {
        use tokio::io::AsyncBufReadExt;
        let script = "import sqlite3, sys\n\
                      c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                      c.execute('BEGIN EXCLUSIVE')\n\
                      print('locked', flush=True)\n\
                      sys.stdin.read()\n";
        let mut child = tokio::process::Command::new("python3")
            .args(["-c", script, &path.display().to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 holds the lock");
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::io::BufReader::new(stdout)
            .lines()
            .next_line()
            .await
            .expect("read");
        assert_eq!(line.as_deref(), Some("locked"));
        Self(child)
    }

    async fn release(mut self) {
        drop(self.0.stdin.take());
        self.0.wait().await.expect("the locker exits");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqlite_file_locked_by_another_process_is_waited_for_then_a_typed_error() {
    let stream = TestStream::create("locked", 1).await;
    let puts = stream.put_many("rec", 200, 11).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kcpy.db");
    let url = format!("sqlite://{}", path.display());
    let store = SqliteCheckpointStore::connect(&url).await.expect("sqlite");
    let build = |store: Arc<Observed<SqliteCheckpointStore>>| {
        Consumer::builder(support::client(), &stream.name)
            .idle_interval(Duration::from_millis(100))
            .checkpoint_store(store)
            .checkpoint_every(20)
            .checkpoint_retries(1)
            .backoff(Duration::from_millis(50), Duration::from_millis(100))
            .build()
    };

    // Locked briefly: saves wait for the lock and go through.
    let observed = Arc::new(Observed {
        inner: store.clone(),
        saving: AtomicU32::new(0),
    });
    let mut consumer = build(Arc::clone(&observed)).await.expect("build");
    let first = read_until(&mut consumer, LIMIT, |r| r.len() >= 50).await;
    let lock = LockedByAnotherProcess::lock(&path).await;
    let more = read_until(&mut consumer, LIMIT, |r| r.len() >= 50).await;
    while observed.saving.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    lock.release().await;
    consumer.close().await.expect("a brief lock is waited out");
    let read: Vec<Put> = first.into_iter().chain(more).collect();
    assert_checkpoints_within(&store, &stream.name, "kcpy", &read).await;
    let key = CheckpointKey::new("kcpy", &stream.name, &puts[0].shard_id);
    let before = store.load(&key).await.expect("load");
    assert_eq!(
        before,
        Some(Checkpoint::Sequence(read[98].sequence_number.clone())),
        "the last processed record"
    );

    // Locked for good: retried, then a typed error; the stored checkpoint stays.
    let lock = LockedByAnotherProcess::lock(&path).await;
    let mut consumer = build(observed).await.expect("build while locked: reads still work");
    let mut again = Vec::new();
    while let Some(record) = consumer.next().await {
        again.push(support::as_put(&record));
    }
    match consumer.error() {
        Some(error @ Error::Checkpoint(CheckpointError::Unavailable { .. })) => assert!(error.is_retryable()),
        other => panic!("expected the store's Unavailable error, got {other:?}"),
    }
    lock.release().await;
    assert_eq!(
        store.load(&key).await.expect("load"),
        before,
        "nothing was written past the lock"
    );
    assert_eq!(
        again.first(),
        Some(&puts[99]),
        "the next run resumed after the checkpoint"
    );
    stream.delete().await;
}

/// Stops the emulator started in `.0` when dropped, also when a test fails.
struct StopEmulator(std::path::PathBuf);

impl Drop for StopEmulator {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kinesis-mock");
        let _ = std::process::Command::new(script).arg("stop").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_emulator_is_ridden_through() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("mock");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kinesis-mock");
    let start = || async {
        let out = tokio::process::Command::new(script)
            .args(["start", &state.display().to_string()])
            .env("KCPY_PERSIST", "1")
            .output()
            .await
            .expect("start kinesis-mock");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8(out.stdout).expect("utf-8");
        line.trim().trim_start_matches("KCPY_KINESIS_ENDPOINT=").to_owned()
    };
    let stop = || async {
        let status = tokio::process::Command::new(script)
            .args(["stop", &state.display().to_string()])
            .status()
            .await
            .expect("stop kinesis-mock");
        assert!(status.success());
    };

    let endpoint = start().await;
    let _stop_on_panic = StopEmulator(state.clone());
    let proxy = FaultProxy::start(&endpoint, 6).await;
    let stream = TestStream::create_with(proxy.client(), "restart", 2).await;
    let before = stream.put_many("before", 600, 29).await;
    // The emulator writes its state every second; wait until this is in it.
    let persisted = state.join("data").join("kinesis-data.json");
    let written = std::time::SystemTime::now();
    while std::fs::metadata(&persisted)
        .and_then(|m| m.modified())
        .map_or(true, |m| m <= written)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut consumer = Consumer::builder(proxy.client(), &stream.name)
        .idle_interval(Duration::from_millis(100))
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .request_timeout(Duration::from_secs(3))
        .max_records_per_call(100)
        .build()
        .await
        .expect("build");
    let mut read = read_until(&mut consumer, LIMIT, |r| r.len() >= 200).await;
    stop().await;
    let down = proxy.calls().len();
    // The consumer keeps asking while the emulator is down.
    let pending = tokio::spawn(async move {
        let next = consumer.next().await;
        (consumer, next)
    });
    proxy.until(|calls| calls.len() >= down + 3).await;
    let endpoint = start().await;
    proxy.set_upstream(&endpoint);
    let (mut consumer, next) = pending.await.expect("reader");
    read.push(support::as_put(&next.expect("a record after the restart")));
    let after = stream.put_many("after", 300, 29).await;
    read.extend(read_through_markers(&mut consumer, &stream).await);
    consumer.close().await.expect("close");
    stop().await;

    let seen: HashSet<&Put> = read.iter().collect();
    let all: Vec<&Put> = before.iter().chain(&after).collect();
    let missing = all.iter().filter(|p| !seen.contains(*p)).count();
    assert_eq!(missing, 0, "nothing lost across the emulator restart");
    let mut per_shard: HashMap<&str, Vec<&Put>> = HashMap::new();
    for put in &read {
        per_shard.entry(&put.shard_id).or_default().push(put);
    }
    for (shard, puts) in per_shard {
        let mut deduped = puts.clone();
        deduped.dedup();
        assert!(
            deduped.windows(2).all(|w| w[0].sequence_number <= w[1].sequence_number),
            "{shard}: in order"
        );
    }
}

/// Credentials that work until `failing` is set, then fail as a denied
/// AssumeRole would. They expire at once, so every call asks for them.
#[derive(Debug)]
struct Revocable {
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl aws_credential_types::provider::ProvideCredentials for Revocable {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        use aws_credential_types::provider::{error::CredentialsError, future};
        if self.failing.load(Ordering::SeqCst) {
            return future::ProvideCredentials::ready(Err(CredentialsError::provider_error("AssumeRole denied")));
        }
        let expiry = std::time::SystemTime::now() + Duration::from_secs(1);
        future::ProvideCredentials::ready(Ok(aws_credential_types::Credentials::new(
            "test",
            "test",
            None,
            Some(expiry),
            "revocable",
        )))
    }
}

fn revocable_client(failing: &Arc<std::sync::atomic::AtomicBool>) -> kcpy::aws_sdk_kinesis::Client {
    let config = kcpy::aws_sdk_kinesis::Config::builder()
        .behavior_version(kcpy::aws_sdk_kinesis::config::BehaviorVersion::latest())
        .region(kcpy::aws_sdk_kinesis::config::Region::new("us-east-1"))
        .endpoint_url(support::endpoint())
        .credentials_provider(Revocable {
            failing: Arc::clone(failing),
        })
        .build();
    kcpy::aws_sdk_kinesis::Client::from_conf(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_that_keep_failing_end_the_stream_with_a_typed_error_after_the_timeout() {
    let stream = TestStream::create("creds", 1).await;
    let puts = stream.put_many("rec", 20, 5).await;
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let timeout = Duration::from_secs(2);
    let mut consumer = Consumer::builder(revocable_client(&failing), &stream.name)
        .idle_interval(Duration::from_millis(100))
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .credentials_timeout(timeout)
        .build()
        .await
        .expect("build");
    let read = read_until(&mut consumer, LIMIT, |r| r.len() >= puts.len()).await;
    assert_eq!(read.len(), puts.len());
    failing.store(true, Ordering::SeqCst);
    let revoked = Instant::now();
    let ended = tokio::time::timeout(LIMIT, consumer.next())
        .await
        .expect("the stream ends");
    assert!(ended.is_none(), "nothing more to read");
    assert!(
        revoked.elapsed() >= timeout,
        "failures were retried for the timeout first"
    );
    match consumer.error() {
        Some(error @ Error::Credentials { .. }) => assert!(error.is_retryable()),
        other => panic!("expected Error::Credentials, got {other:?}"),
    }

    // From the start, build() gives up after its startup retries.
    let built = Consumer::builder(revocable_client(&failing), &stream.name)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .startup_retries(2)
        .build()
        .await;
    assert!(matches!(built, Err(Error::Credentials { .. })), "{built:?}");
    stream.delete().await;
}
