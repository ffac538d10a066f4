//! End-to-end tests against kinesis-mock (started by `scripts/test`).

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_kinesis::config::{BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents};
use aws_sdk_kinesis::primitives::{DateTime, DateTimeFormat};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_smithy_runtime_api::client::identity::Identity;

use futures::StreamExt;
use kcpy::{
    Checkpoint, CheckpointError, CheckpointKey, CheckpointStore, Consumer, ConsumerBuilder, Error,
    MemoryCheckpointStore, SqliteCheckpointStore, StartPosition,
};
use support::recording::{Log, Recording, Sent};
use support::{by_shard, counts, read_until, Put, TestStream};

const LIMIT: Duration = Duration::from_secs(120);

fn builder(stream: &TestStream) -> ConsumerBuilder {
    Consumer::builder(stream.client.clone(), &stream.name)
        .idle_interval(Duration::from_millis(100))
        .checkpoint_interval(Duration::from_millis(200))
}

/// Reads until every one of `markers` was read, so nothing can arrive after.
async fn read_through_markers(consumer: &mut Consumer, markers: &[Put]) -> Vec<Put> {
    let mut read = read_until(consumer, LIMIT, |read| {
        markers.iter().all(|m| read.iter().any(|r| r == m))
    })
    .await;
    read.retain(|r| !markers.contains(r));
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_of_four_shards_is_delivered_exactly_once_in_shard_order() {
    let stream = TestStream::create("exactly-once", 4).await;
    let puts = stream.put_many("rec", 3000, 257).await;
    let markers = stream.put_marker_on_every_shard("end").await;
    let store = MemoryCheckpointStore::new();
    let mut consumer = builder(&stream)
        .checkpoint_store(store.clone())
        .build()
        .await
        .expect("build");
    assert_eq!(consumer.shard_ids().count(), 4);

    let read = read_through_markers(&mut consumer, &markers).await;

    assert_eq!(read.len(), puts.len(), "every record once, nothing more");
    let read_counts = counts(&read);
    assert!(
        puts.iter().all(|p| read_counts.get(p) == Some(&1)),
        "each record delivered exactly once"
    );
    assert_eq!(
        by_shard(&read),
        by_shard(&puts),
        "per shard, in the order Kinesis stored them"
    );
    assert_eq!(by_shard(&read).len(), 4, "records came from all four shards");

    consumer.close().await.expect("clean shutdown");
    // Everything before each shard's marker was processed; the marker itself
    // was the last record handed out and is not counted by close().
    let checkpoints = store.snapshot();
    for (shard, seqs) in by_shard(&puts) {
        let key = CheckpointKey::new("kcpy", &stream.name, &shard);
        let stored = checkpoints.get(&key).cloned();
        let last = seqs.last().cloned().map(Checkpoint::Sequence);
        let marker = markers
            .iter()
            .find(|m| m.shard_id == shard)
            .map(|m| Checkpoint::Sequence(m.sequence_number.clone()));
        assert!(
            stored == last || stored == marker,
            "{shard}: checkpoint {stored:?} is its last processed record"
        );
    }
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_graceful_stop_resumes_without_loss_or_redelivery() {
    let stream = TestStream::create("resume", 4).await;
    let puts = stream.put_many("rec", 1200, 101).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("kcpy.db").display());

    let mut first = builder(&stream)
        .consumer_name("resume-test")
        .checkpoint_store(SqliteCheckpointStore::connect(&url).await.expect("sqlite"))
        .checkpoint_every(50)
        .build()
        .await
        .expect("build");
    let mut run1 = read_until(&mut first, LIMIT, |read| read.len() >= 500).await;
    let handle = first.shutdown_handle();
    handle.shutdown();
    // Asking for more after shutdown marks the last record processed, writes
    // the checkpoints and ends the stream.
    while let Some(record) = first.next().await {
        run1.push(support::as_put(&record));
    }
    assert!(first.error().is_none(), "graceful stop: {:?}", first.error());
    assert_eq!(run1.len(), 500, "nothing is handed out after shutdown");
    drop(first);

    let store = SqliteCheckpointStore::connect(&url).await.expect("reopen");
    for (shard, seqs) in by_shard(&run1) {
        let stored = store
            .load(&CheckpointKey::new("resume-test", &stream.name, &shard))
            .await
            .expect("load");
        assert_eq!(
            stored,
            seqs.last().cloned().map(Checkpoint::Sequence),
            "{shard}: checkpoint is the last processed record"
        );
    }

    let markers = stream.put_marker_on_every_shard("end").await;
    let mut second = builder(&stream)
        .consumer_name("resume-test")
        .checkpoint_store(store)
        .build()
        .await
        .expect("build again");
    let run2 = read_through_markers(&mut second, &markers).await;
    second.close().await.expect("clean shutdown");

    let seen1: HashSet<&Put> = run1.iter().collect();
    assert!(
        run2.iter().all(|p| !seen1.contains(p)),
        "nothing before the last checkpoint is delivered again"
    );
    let all: HashSet<&Put> = run1.iter().chain(&run2).collect();
    assert_eq!(all.len(), puts.len(), "nothing is lost");
    assert_eq!(run1.len() + run2.len(), puts.len(), "no record twice");
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_positions_begin_where_they_should() {
    let stream = TestStream::create("positions", 2).await;
    let early = stream.put_many("early", 40, 13).await;
    let boundary = SystemTime::now() + Duration::from_millis(2);
    while SystemTime::now() <= boundary {
        tokio::task::yield_now().await;
    }
    let middle = stream.put_many("middle", 40, 13).await;

    // TRIM_HORIZON: from the oldest record.
    let mut consumer = builder(&stream)
        .start_position(StartPosition::TrimHorizon)
        .build()
        .await
        .expect("build");
    let read = read_until(&mut consumer, LIMIT, |read| read.len() == 80).await;
    let expected: Vec<Put> = early.iter().chain(&middle).cloned().collect();
    assert_eq!(
        by_shard(&read),
        by_shard(&expected),
        "TRIM_HORIZON reads everything, in order"
    );
    consumer.close().await.expect("close");

    // AT_TIMESTAMP: from the first record that arrived at or after it.
    let mut consumer = builder(&stream)
        .start_position(StartPosition::AtTimestamp(boundary))
        .build()
        .await
        .expect("build");
    let read = read_until(&mut consumer, LIMIT, |read| read.len() == 40).await;
    assert_eq!(
        by_shard(&read),
        by_shard(&middle),
        "AT_TIMESTAMP skips exactly the earlier records"
    );
    consumer.close().await.expect("close");

    // LATEST: exactly what is written after build() returns.
    let mut consumer = builder(&stream)
        .start_position(StartPosition::Latest)
        .build()
        .await
        .expect("build");
    let late = stream.put_many("late", 40, 13).await;
    let markers = stream.put_marker_on_every_shard("end").await;
    let read = read_through_markers(&mut consumer, &markers).await;
    assert_eq!(
        by_shard(&read),
        by_shard(&late),
        "LATEST delivers every later record and nothing earlier"
    );
    consumer.close().await.expect("close");
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_positions_apply_only_to_shards_without_a_checkpoint() {
    let stream = TestStream::create("checkpoint-wins", 1).await;
    let puts = stream.put_many("rec", 30, 7).await;
    let store = MemoryCheckpointStore::new();
    let shard = puts[0].shard_id.clone();
    let key = CheckpointKey::new("kcpy", &stream.name, &shard);
    store
        .save(&key, &Checkpoint::Sequence(puts[9].sequence_number.clone()))
        .await
        .expect("seed");
    let mut consumer = builder(&stream)
        .checkpoint_store(store)
        .start_position(StartPosition::Latest)
        .build()
        .await
        .expect("build");
    let read = read_until(&mut consumer, LIMIT, |read| read.len() == 20).await;
    assert_eq!(
        read,
        puts[10..].to_vec(),
        "resumes right after the checkpoint, not at LATEST"
    );
    consumer.close().await.expect("close");
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_stream_is_a_stream_not_found_error() {
    let client = support::client();
    let name = support::unique_name("missing");
    let result = Consumer::builder(client, &name).build().await;
    match result {
        Err(error @ Error::StreamNotFound { .. }) => {
            assert!(!error.is_retryable());
            assert!(error.to_string().contains(&name), "{error}");
        }
        other => panic!("expected StreamNotFound, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_arn_reads_the_same_checkpoints_as_its_name() {
    let stream = TestStream::create("by-arn", 1).await;
    let puts = stream.put_many("rec", 10, 3).await;
    let summary = stream
        .client
        .describe_stream_summary()
        .stream_name(&stream.name)
        .send()
        .await
        .expect("DescribeStreamSummary");
    let arn = summary.stream_description_summary.expect("summary").stream_arn;
    let store = MemoryCheckpointStore::new();
    let mut consumer = Consumer::builder(stream.client.clone(), &arn)
        .idle_interval(Duration::from_millis(100))
        .checkpoint_store(store.clone())
        .build()
        .await
        .expect("build by ARN");
    assert_eq!(consumer.stream_name(), stream.name);
    let read = read_until(&mut consumer, LIMIT, |read| read.len() == 10).await;
    assert_eq!(read, puts);
    // Asking for the next record marks the tenth processed.
    assert!(futures::FutureExt::now_or_never(consumer.next()).flatten().is_none());
    consumer.close().await.expect("close");
    let key = CheckpointKey::new("kcpy", &stream.name, &puts[0].shard_id);
    assert_eq!(
        store.snapshot().get(&key),
        Some(&Checkpoint::Sequence(puts[9].sequence_number.clone()))
    );
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_checkpoints_in_sqlite_are_typed_errors_that_change_nothing() {
    let stream = TestStream::create("malformed", 1).await;
    let puts = stream.put_many("rec", 5, 2).await;
    let shard = puts[0].shard_id.clone();
    let too_long = "1".repeat(130);
    for bad in ["", "abc", "4.95e+55", too_long.as_str()] {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("kcpy.db").display());
        let store = SqliteCheckpointStore::connect(&url).await.expect("sqlite");
        sqlx::query("INSERT INTO kcpy_checkpoints VALUES (?1, ?2, ?3, ?4, 0)")
            .bind("kcpy")
            .bind(&stream.name)
            .bind(&shard)
            .bind(bad)
            .execute(store.pool())
            .await
            .expect("plant");
        let result = builder(&stream).checkpoint_store(store.clone()).build().await;
        match result {
            Err(Error::Checkpoint(CheckpointError::Malformed { key, value, .. })) => {
                assert_eq!(key.shard_id, shard);
                assert_eq!(value, bad.chars().take(160).collect::<String>());
            }
            other => panic!("{bad:?}: expected a Malformed checkpoint error, got {other:?}"),
        }
        let stored: String = sqlx::query_scalar("SELECT checkpoint FROM kcpy_checkpoints")
            .fetch_one(store.pool())
            .await
            .expect("read back");
        assert_eq!(stored, bad, "the bad value is left for a human to inspect");
    }
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqlite_path_that_cannot_be_opened_is_an_open_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let url = format!("sqlite://{}/kcpy.db", file.display());
    match SqliteCheckpointStore::connect(&url).await {
        Err(CheckpointError::Open { location, .. }) => assert_eq!(location, url),
        other => panic!("expected an Open error, got {other:?}"),
    }
    let not_sqlite = dir.path().join("garbage.db");
    std::fs::write(&not_sqlite, vec![0x42u8; 8192]).expect("write");
    assert!(matches!(
        SqliteCheckpointStore::connect(&not_sqlite.display().to_string()).await,
        Err(CheckpointError::Open { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_consumer_name_is_rejected_before_anything_is_read() {
    let stream = TestStream::create("empty-name", 1).await;
    let store = MemoryCheckpointStore::new();
    let result = builder(&stream)
        .consumer_name("")
        .checkpoint_store(store.clone())
        .build()
        .await;
    assert!(matches!(result, Err(Error::InvalidConfig { .. })), "{result:?}");
    assert!(store.snapshot().is_empty());
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_region_is_invalid_config_before_any_call_is_made() {
    let log = Log::default();
    let client = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(support::endpoint())
        .credentials_provider(credentials())
        .http_client(Recording::new(&log));
    let client = aws_sdk_kinesis::Client::from_conf(client.build());
    // Every call would fail to sign: not an outage to retry.
    let result = Consumer::builder(client, "any-stream").build().await;
    match result {
        Err(Error::InvalidConfig { message, .. }) => assert!(message.contains("region"), "{message}"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert!(log.is_empty(), "no call is made");
}

/// Counts the GetRecords calls that pass through the SDK's interceptors.
#[derive(Debug)]
struct CountGetRecords(Arc<AtomicUsize>);

impl Intercept for CountGetRecords {
    fn name(&self) -> &'static str {
        "CountGetRecords"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_kinesis::error::BoxError> {
        let target = context.request().headers().get("x-amz-target").unwrap_or_default();
        if target.ends_with(".GetRecords") {
            self.0.fetch_add(1, AtomicOrdering::SeqCst);
        }
        Ok(())
    }
}

const SESSION_TOKEN: &str = "session-token-of-the-test";

/// A client with session credentials whose every request lands in `log`.
fn recording_client(log: &Log, interceptor: Option<CountGetRecords>) -> aws_sdk_kinesis::Client {
    let mut config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(support::endpoint())
        .credentials_provider(credentials())
        .http_client(Recording::new(log));
    if let Some(interceptor) = interceptor {
        config = config.interceptor(interceptor);
    }
    aws_sdk_kinesis::Client::from_conf(config.build())
}

fn credentials() -> Credentials {
    Credentials::new(
        "AKIDKCPYTEST",
        "kcpy-test-secret",
        Some(SESSION_TOKEN.into()),
        None,
        "kcpy-tests",
    )
}

/// The `Authorization` header Kinesis computes for `sent`: SigV4 over the
/// headers it names as signed, its body and its `x-amz-date`.
fn expected_authorization(sent: &Sent) -> String {
    let authorization = sent.header("authorization").expect("an Authorization header");
    let signed: Vec<&str> = authorization
        .split("SignedHeaders=")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("SignedHeaders")
        .split(';')
        .collect();
    let amz_date = sent.header("x-amz-date").expect("x-amz-date");
    // 20261126T053000Z -> 2026-11-26T05:30:00Z
    let (d, t) = amz_date.split_at(8);
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}",
        &d[..4],
        &d[4..6],
        &d[6..],
        &t[1..3],
        &t[3..5],
        &t[5..]
    );
    let time =
        SystemTime::try_from(DateTime::from_str(&rfc3339, DateTimeFormat::DateTime).expect("date")).expect("time");
    let headers = sent
        .headers
        .iter()
        .filter(|(name, _)| signed.contains(&name.to_ascii_lowercase().as_str()))
        .map(|(n, v)| (n.as_str(), v.as_str()));
    let identity = Identity::from(credentials());
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("kinesis")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .expect("params")
        .into();
    let request =
        SignableRequest::new("POST", sent.uri.as_str(), headers, SignableBody::Bytes(&sent.body)).expect("request");
    let (instructions, _) = sign(request, &params).expect("signed").into_parts();
    let (headers, _) = instructions.into_parts();
    headers
        .into_iter()
        .find(|header| header.name() == "authorization")
        .map(|header| header.value().to_owned())
        .expect("an authorization header")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_records_calls_after_the_first_skip_the_sdk_pipeline_and_every_call_is_validly_signed() {
    let stream = TestStream::create("direct", 1).await;
    let mut puts = stream.put_many("rec", 300, 7).await;
    puts.sort();
    let log = Log::default();
    let mut consumer = Consumer::builder(recording_client(&log, None), &stream.name)
        .max_records_per_call(50)
        .idle_interval(Duration::from_millis(100))
        .build()
        .await
        .expect("build");
    let read = read_until(&mut consumer, LIMIT, |read| read.len() >= puts.len()).await;
    consumer.close().await.expect("close");
    assert_eq!(read, puts);

    let calls = log.of("GetRecords");
    assert!(calls.len() >= 6, "300 records at 50 a call: {} calls", calls.len());
    // The SDK's pipeline stamps each call with an invocation id.
    let through_sdk = calls
        .iter()
        .filter(|c| c.header("amz-sdk-invocation-id").is_some())
        .count();
    assert_eq!(through_sdk, 1, "only the first GetRecords goes through the SDK");
    for call in &calls {
        assert_eq!(call.header("x-amz-security-token"), Some(SESSION_TOKEN));
        assert_eq!(call.header("x-amz-target"), Some("Kinesis_20131202.GetRecords"));
        assert_eq!(
            call.header("authorization"),
            Some(expected_authorization(call).as_str())
        );
    }
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_consumer_lets_go_of_the_clients_http_connectors() {
    let stream = TestStream::create("released", 1).await;
    let puts = stream.put_many("rec", 100, 7).await;
    let log = Log::default();
    let mut consumer = Consumer::builder(recording_client(&log, None), &stream.name)
        .max_records_per_call(50)
        .build()
        .await
        .expect("build");
    read_until(&mut consumer, LIMIT, |read| read.len() >= puts.len()).await;
    assert!(
        log.of("GetRecords").len() >= 2,
        "GetRecords went direct after the first"
    );
    consumer.close().await.expect("close");
    drop(consumer);
    // The shard tasks end on their own, just after close: give them 5 s.
    let released = tokio::time::timeout(Duration::from_secs(5), async {
        while log.recorders() > 0 {
            tokio::task::yield_now().await;
        }
    });
    assert!(
        released.await.is_ok(),
        "{} clients or connectors outlived the consumer",
        log.recorders()
    );
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_an_interceptor_of_its_own_sees_every_get_records_call() {
    let stream = TestStream::create("intercepted", 1).await;
    let puts = stream.put_many("rec", 200, 7).await;
    let log = Log::default();
    let seen = Arc::new(AtomicUsize::new(0));
    let client = recording_client(&log, Some(CountGetRecords(Arc::clone(&seen))));
    let mut consumer = Consumer::builder(client, &stream.name)
        .max_records_per_call(50)
        .idle_interval(Duration::from_millis(100))
        .build()
        .await
        .expect("build");
    let read = read_until(&mut consumer, LIMIT, |read| read.len() >= puts.len()).await;
    consumer.close().await.expect("close");
    assert_eq!(read.len(), puts.len());

    let calls = log.of("GetRecords");
    assert!(calls.len() >= 4, "200 records at 50 a call: {} calls", calls.len());
    assert_eq!(seen.load(AtomicOrdering::SeqCst), calls.len());
    assert!(calls.iter().all(|c| c.header("amz-sdk-invocation-id").is_some()));
    stream.delete().await;
}
