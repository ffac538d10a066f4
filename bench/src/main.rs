//! `kcpy-bench MODE [ARGS]`: one measurement per run, printed as one JSON
//! object on stdout. `bench/run` drives it; see README "Performance".
//!
//! Modes:
//! - `consume ENDPOINT STREAM RECORDS`: read RECORDS records from TRIM_HORIZON
//!   (with checkpoint bookkeeping in the memory store); CPU per record, peak RSS.
//! - `latency ENDPOINT STREAM SAMPLES`: put a record every 100 ms on average, read it at
//!   5 GetRecords/s per shard; put-to-delivery latency.
//! - `consume-fanout ENDPOINT STREAM RECORDS`: as `consume`, through enhanced
//!   fan-out (SubscribeToShard) instead of polling.
//! - `latency-fanout ENDPOINT STREAM SAMPLES`: as `latency`, through enhanced
//!   fan-out; also the consumer's own delay per event, from the event's bytes
//!   reaching the SDK's HTTP body to its last record returned by `next()`.
//! - `idle ENDPOINT STREAM SECONDS`: an empty stream; CPU per empty poll and
//!   per shard-second.
//! - `idle-fanout ENDPOINT STREAM SECONDS`: the same through enhanced fan-out.
//! - `wakeups SECONDS`: four tasks waking from a 200 ms timer, 50 ms apart,
//!   and doing nothing else; the CPU a wakeup costs on this machine, the
//!   floor under an empty poll (which wakes twice).
//! - `shards ENDPOINT STREAM SECONDS`: a stream with many shards; RSS and CPU.
//! - `serve-canned PORT SHARDS`: answer ListShards, GetShardIterator and
//!   GetRecords with canned responses of 10,000 records, as fast as asked.
//! - `serve-canned-kpl PORT SHARDS`: the same with KPL aggregates, 100 user
//!   records of 100 bytes each, 100 aggregates per answer.
//! - `ceiling ENDPOINT SHARDS RECORDS`: read from `serve-canned` (or
//!   `serve-canned-kpl`); the consumer's own CPU per (user) record. Built
//!   with feature `count-allocations`, heap allocations per record instead.
//! - `serve-canned-idle PORT SHARDS`: the same with empty pages, every
//!   shard at its tip.
//! - `shards-canned ENDPOINT SHARDS SECONDS IDLE_MS`: SHARDS idle shards of
//!   `serve-canned-idle` in one process, polled every IDLE_MS; RSS and CPU.
//! - `checkpoints`: saves per second of the memory and SQLite stores.
//! - `lanes ENDPOINT LANES SECONDS`: one shard from `serve-canned` handled
//!   in per-key lanes, 5 ms per record; records per second.
//!
//! With `KCPY_BENCH_NO_CHECKPOINTS` set, `ceiling` runs without a checkpoint
//! store (and so without checkpoint bookkeeping).
//!
//! `KCPY_BENCH_CURRENT_THREAD` runs every mode on Tokio's current-thread
//! runtime instead of the multi-threaded one.
//!
//! `KCPY_BENCH_IDLE_GROUP=N` sets `idle_poll_group(N)` in every mode.
//!
//! With `KCPY_BENCH_METRICS` set, any mode runs with a Prometheus recorder
//! installed (in memory, not served), so that the consumer's metrics are
//! recorded as in production.

mod lanes;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_kinesis::config::http::HttpRequest;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region, RuntimeComponents, SharedHttpClient};
use aws_sdk_kinesis::primitives::Blob;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_types::body::SdkBody;
use futures::StreamExt;
use http_body_util::BodyExt;
use kcpy::{
    Checkpoint, CheckpointKey, CheckpointStore, Consumer, FanOut, MemoryCheckpointStore, SequenceNumber,
    SqliteCheckpointStore,
};
use serde_json::json;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

#[cfg(feature = "count-allocations")]
#[global_allocator]
static ALLOCATOR: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// Heap allocations so far, when counted (feature `count-allocations`).
fn allocations() -> Option<u64> {
    #[cfg(feature = "count-allocations")]
    return Some(ALLOCATOR.stats().allocations as u64);
    #[cfg(not(feature = "count-allocations"))]
    None
}

/// CPU seconds (user + system) and peak RSS (MiB) of this process so far.
fn usage() -> (f64, f64) {
    use nix::sys::resource::{getrusage, UsageWho};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return (0.0, 0.0);
    };
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let cpu = seconds(usage.user_time()) + seconds(usage.system_time());
    (cpu, usage.max_rss() as f64 / 1024.0)
}

/// The process's minor page faults so far: memory faulted in, fresh or
/// given back to the kernel and taken again.
fn page_faults() -> i64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0, |usage| usage.minor_page_faults())
}

/// What a [`Watched`] client saw: requests sent, and how long each
/// GetRecords took from sending to the response's head.
#[derive(Debug, Default)]
struct Calls {
    sent: AtomicU64,
    get_records_ms: std::sync::Mutex<Vec<f64>>,
    /// When each data frame of a SubscribeToShard response body arrived.
    event_frames: Arc<std::sync::Mutex<Vec<Instant>>>,
}

/// Watches the HTTP requests a client sends, whichever way they are made.
#[derive(Debug)]
struct Watched {
    inner: SharedHttpClient,
    calls: Arc<Calls>,
}

impl HttpClient for Watched {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(WatchedConnector {
            inner: self.inner.http_connector(settings, components),
            calls: Arc::clone(&self.calls),
        })
    }
}

#[derive(Debug)]
struct WatchedConnector {
    inner: SharedHttpConnector,
    calls: Arc<Calls>,
}

impl HttpConnector for WatchedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        self.calls.sent.fetch_add(1, Ordering::Relaxed);
        let target = |name: &str| request.headers().get("x-amz-target").is_some_and(|t| t.ends_with(name));
        let (get_records, subscribe) = (target(".GetRecords"), target(".SubscribeToShard"));
        let response = self.inner.call(request);
        if subscribe {
            let frames = Arc::clone(&self.calls.event_frames);
            return HttpConnectorFuture::new(async move {
                let mut response = response.await?;
                let body = response.take_body().map_frame(move |frame| {
                    if frame.is_data() {
                        frames.lock().map(|mut v| v.push(Instant::now())).ok();
                    }
                    frame
                });
                *response.body_mut() = SdkBody::from_body_1_x(body);
                Ok(response)
            });
        }
        if !get_records {
            return response;
        }
        let calls = Arc::clone(&self.calls);
        HttpConnectorFuture::new(async move {
            let started = Instant::now();
            let response = response.await;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            calls.get_records_ms.lock().map(|mut v| v.push(ms)).ok();
            response
        })
    }
}

fn client(endpoint: &str, calls: Option<Arc<Calls>>) -> aws_sdk_kinesis::Client {
    let mut config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"));
    if let Some(calls) = calls {
        config = config.http_client(Watched {
            inner: aws_smithy_http_client::Builder::new()
                .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                .build_https(),
            calls,
        });
    }
    aws_sdk_kinesis::Client::from_conf(config.build())
}

/// Creates `stream` with `shards` shards unless it exists, and waits for it.
async fn ensure_stream(kinesis: &aws_sdk_kinesis::Client, stream: &str, shards: i32) -> Result<()> {
    use aws_sdk_kinesis::client::Waiters;
    if kinesis
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .is_err()
    {
        kinesis
            .create_stream()
            .stream_name(stream)
            .shard_count(shards)
            .send()
            .await?;
    }
    kinesis
        .wait_until_stream_exists()
        .stream_name(stream)
        .wait(Duration::from_secs(300))
        .await?;
    Ok(())
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T> {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("argument {i} ({what}) is missing or invalid").into())
}

/// A consumer's builder, with `KCPY_BENCH_IDLE_GROUP` applied.
fn builder(client: aws_sdk_kinesis::Client, stream: &str) -> kcpy::ConsumerBuilder {
    let builder = Consumer::builder(client, stream);
    match std::env::var("KCPY_BENCH_IDLE_GROUP").ok().and_then(|n| n.parse().ok()) {
        Some(group) => builder.idle_poll_group(group),
        None => builder,
    }
}

fn main() -> Result<()> {
    // Tokio's multi-threaded runtime, as `#[tokio::main]` makes it, unless
    // KCPY_BENCH_CURRENT_THREAD is set.
    let runtime = if std::env::var_os("KCPY_BENCH_CURRENT_THREAD").is_some() {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()?
    };
    runtime.block_on(run())
}

async fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The consumer's metrics recorded by a real recorder, kept in memory as
    // Prometheus would scrape them: what recording costs per record.
    if std::env::var_os("KCPY_BENCH_METRICS").is_some() {
        metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    }
    let mode = args.first().map(String::as_str).unwrap_or_default();
    let result = match mode {
        "consume" | "consume-fanout" => {
            consume(
                &arg::<String>(&args, 1, "endpoint")?,
                &arg::<String>(&args, 2, "stream")?,
                arg(&args, 3, "records")?,
                mode == "consume-fanout",
            )
            .await?
        }
        "latency" | "latency-fanout" => {
            latency(
                &arg::<String>(&args, 1, "endpoint")?,
                &arg::<String>(&args, 2, "stream")?,
                arg(&args, 3, "samples")?,
                mode == "latency-fanout",
            )
            .await?
        }
        "idle" | "idle-fanout" => {
            idle(
                &arg::<String>(&args, 1, "endpoint")?,
                &arg::<String>(&args, 2, "stream")?,
                arg(&args, 3, "seconds")?,
                mode == "idle-fanout",
            )
            .await?
        }
        "shards" => {
            shards(
                &arg::<String>(&args, 1, "endpoint")?,
                &arg::<String>(&args, 2, "stream")?,
                arg(&args, 3, "seconds")?,
            )
            .await?
        }
        "serve-canned" => return serve_canned(arg(&args, 1, "port")?, arg(&args, 2, "shards")?, Canned::Plain).await,
        "serve-canned-kpl" => return serve_canned(arg(&args, 1, "port")?, arg(&args, 2, "shards")?, Canned::Kpl).await,
        "serve-canned-idle" => {
            return serve_canned(arg(&args, 1, "port")?, arg(&args, 2, "shards")?, Canned::Empty).await
        }
        "shards-canned" => {
            shards_canned(
                &arg::<String>(&args, 1, "endpoint")?,
                arg(&args, 2, "shards")?,
                arg(&args, 3, "seconds")?,
                arg(&args, 4, "idle_ms")?,
            )
            .await?
        }
        "ceiling" => {
            ceiling(
                &arg::<String>(&args, 1, "endpoint")?,
                arg(&args, 2, "shards")?,
                arg(&args, 3, "records")?,
            )
            .await?
        }
        "checkpoints" => checkpoints().await?,
        "lanes" => {
            lanes::lanes(
                &arg::<String>(&args, 1, "endpoint")?,
                arg(&args, 2, "lanes")?,
                arg(&args, 3, "seconds")?,
            )
            .await?
        }
        "wakeups" => wakeups(arg(&args, 1, "seconds")?).await?,
        other => return Err(format!("unknown mode {other:?}; see the source's header").into()),
    };
    println!("{result}");
    Ok(())
}

/// A fan-out consumer name unique to this run, so that a run never waits for
/// the subscription an earlier run left behind.
fn fan_out() -> FanOut {
    FanOut::register(format!("bench-{}-{}", std::process::id(), fastrand::u32(..))).deregister_on_stop(true)
}

async fn consume(endpoint: &str, stream: &str, records: u64, fan_out_mode: bool) -> Result<serde_json::Value> {
    let started = Instant::now();
    let mut builder = builder(client(endpoint, None), stream)
        .checkpoint_store(MemoryCheckpointStore::new())
        .idle_interval(Duration::from_millis(200));
    if fan_out_mode {
        builder = builder.fan_out(fan_out());
    }
    let mut consumer = builder.build().await?;
    let (cpu_startup, _) = usage();
    let mut read = 0u64;
    let mut bytes = 0usize;
    while read < records {
        let Some(record) = consumer.next().await else {
            return Err(format!("the consumer stopped after {read} records: {:?}", consumer.error()).into());
        };
        bytes += record.data.len();
        read += 1;
    }
    let (cpu, rss) = usage();
    consumer.close().await?;
    Ok(json!({
        "records": read,
        "bytes": bytes,
        "wall_s": started.elapsed().as_secs_f64(),
        "cpu_s": cpu,
        "cpu_us_per_record": cpu * 1e6 / read as f64,
        "cpu_s_startup": cpu_startup,
        "cpu_us_per_record_after_startup": (cpu - cpu_startup) * 1e6 / read as f64,
        "peak_rss_mb": rss,
        "minor_page_faults": page_faults(),
    }))
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default()
}

async fn latency(endpoint: &str, stream: &str, samples: usize, fan_out_mode: bool) -> Result<serde_json::Value> {
    let calls = Arc::new(Calls::default());
    let kinesis = client(endpoint, Some(Arc::clone(&calls)));
    ensure_stream(&kinesis, stream, 4).await?;
    let mut builder = builder(kinesis.clone(), stream)
        .start_position(kcpy::StartPosition::Latest)
        .idle_interval(Duration::from_millis(200));
    if fan_out_mode {
        builder = builder.fan_out(fan_out());
    }
    let mut consumer = builder.build().await?;
    let target = stream.to_owned();
    let producer = tokio::spawn(async move {
        let mut put_ms = Vec::with_capacity(samples);
        for i in 0..samples {
            // About 30 puts a second (one per 17 to 50 ms), at random moments
            // against the polls: a run's 900 samples put its p50 within a few
            // ms of the true one (with 300, its standard error was 6 ms).
            let next = Instant::now() + Duration::from_millis(fastrand::u64(17..=50));
            let put = kinesis
                .put_record()
                .stream_name(&target)
                .partition_key(format!("k{i}"))
                .data(Blob::new(now_micros().to_string()));
            let started = Instant::now();
            let _ = put.send().await;
            put_ms.push(started.elapsed().as_secs_f64() * 1e3);
            tokio::time::sleep_until(next.into()).await;
        }
        put_ms
    });
    let mut latencies = Vec::with_capacity(samples);
    // Per event frame (by arrival), when its last record was handed over.
    let mut handed: std::collections::BTreeMap<Instant, Instant> = Default::default();
    while latencies.len() < samples {
        let record = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await?
            .ok_or("ended")?;
        let now = Instant::now();
        let put_at: u128 = std::str::from_utf8(&record.data)?.parse()?;
        latencies.push((now_micros().saturating_sub(put_at)) as f64 / 1000.0);
        // Events come a second apart, so a record belongs to the latest
        // frame that arrived before it was handed over.
        let frame = calls
            .event_frames
            .lock()
            .ok()
            .and_then(|frames| frames.iter().rev().find(|at| **at <= now).copied());
        if let Some(frame) = frame {
            handed.insert(frame, now);
        }
    }
    consumer.close().await?;
    let put_ms = producer.await?;
    let get_ms = calls.get_records_ms.lock().map(|v| v.clone()).unwrap_or_default();
    let added_ms: Vec<f64> = handed
        .iter()
        .map(|(frame, last)| last.duration_since(*frame).as_secs_f64() * 1e3)
        .collect();
    Ok(json!({
        "samples": samples,
        "p50": quantile(&latencies, 0.5),
        "p99": quantile(&latencies, 0.99),
        "max": quantile(&latencies, 1.0),
        "events": added_ms.len(),
        "added_ms_per_event_p50": quantile(&added_ms, 0.5),
        "added_ms_per_event_p99": quantile(&added_ms, 0.99),
        // The emulator's own share: PutRecord and GetRecords round trips.
        "put_record_ms_p50": quantile(&put_ms, 0.5),
        "get_records_ms_p50": quantile(&get_ms, 0.5),
        "get_records_calls": get_ms.len(),
    }))
}

/// The `q` quantile of `values` (0 when empty).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(at).copied().unwrap_or_default()
}

async fn idle(endpoint: &str, stream: &str, seconds: u64, fan_out_mode: bool) -> Result<serde_json::Value> {
    ensure_stream(&client(endpoint, None), stream, 4).await?;
    let calls = Arc::new(Calls::default());
    let mut builder =
        builder(client(endpoint, Some(Arc::clone(&calls))), stream).idle_interval(Duration::from_millis(200));
    if fan_out_mode {
        builder = builder.fan_out(fan_out());
    }
    let mut consumer = builder.build().await?;
    let (cpu_before, _) = usage();
    let calls_before = calls.sent.load(Ordering::Relaxed);
    let waited = tokio::time::timeout(Duration::from_secs(seconds), consumer.next()).await;
    if let Ok(record) = waited {
        return Err(format!("the stream was meant to be empty, got {record:?}").into());
    }
    let (cpu_after, rss) = usage();
    let polls = calls.sent.load(Ordering::Relaxed) - calls_before;
    let events = calls.event_frames.lock().map(|v| v.len()).unwrap_or_default();
    consumer.close().await?;
    Ok(json!({
        "seconds": seconds,
        "empty_polls": polls,
        "events": events,
        "cpu_ms_per_shard_second": (cpu_after - cpu_before) * 1e3 / (4 * seconds) as f64,
        "cpu_ms": (cpu_after - cpu_before) * 1e3,
        "ms_per_empty_poll": (cpu_after - cpu_before) * 1e3 / polls.max(1) as f64,
        "peak_rss_mb": rss,
    }))
}

async fn shards(endpoint: &str, stream: &str, seconds: u64) -> Result<serde_json::Value> {
    ensure_stream(&client(endpoint, None), stream, 1000).await?;
    let calls = Arc::new(Calls::default());
    let started = Instant::now();
    let mut consumer = builder(client(endpoint, Some(Arc::clone(&calls))), stream)
        .build()
        .await?;
    let shards = consumer.shard_ids().count();
    let built = started.elapsed().as_secs_f64();
    let (_, rss_built) = usage();
    let half = Duration::from_secs(seconds / 2);
    let _ = tokio::time::timeout(half, consumer.next()).await;
    let (cpu_half, rss_half) = usage();
    let calls_half = calls.sent.load(Ordering::Relaxed);
    let _ = tokio::time::timeout(half, consumer.next()).await;
    let (cpu, rss) = usage();
    let polls = calls.sent.load(Ordering::Relaxed) - calls_half;
    consumer.close().await?;
    Ok(json!({
        "shards": shards,
        "empty_polls_second_half": polls,
        "ms_per_empty_poll": (cpu - cpu_half) * 1e3 / polls.max(1) as f64,
        "build_s": built,
        "peak_rss_mb_after_build": rss_built,
        "peak_rss_mb_at_half": rss_half,
        "peak_rss_mb": rss,
        "cpu_s": cpu,
        "cpu_s_second_half": cpu - cpu_half,
    }))
}

/// `shards` idle shards of the canned server (`serve-canned-idle`) in one
/// process, each polled every `idle_ms`: peak RSS and CPU.
async fn shards_canned(endpoint: &str, shards: usize, seconds: u64, idle_ms: u64) -> Result<serde_json::Value> {
    let calls = Arc::new(Calls::default());
    let started = Instant::now();
    let mut consumer = builder(client(endpoint, Some(Arc::clone(&calls))), "canned")
        .idle_interval(Duration::from_millis(idle_ms))
        .build()
        .await?;
    if consumer.shard_ids().count() != shards {
        return Err("the canned server lists another number of shards".into());
    }
    let built = started.elapsed().as_secs_f64();
    let (_, rss_built) = usage();
    let half = Duration::from_secs(seconds / 2);
    if tokio::time::timeout(half, consumer.next()).await.is_ok() {
        return Err("an idle shard delivered a record, or the consumer stopped".into());
    }
    let (cpu_half, rss_half) = usage();
    let calls_half = calls.sent.load(Ordering::Relaxed);
    let _ = tokio::time::timeout(half, consumer.next()).await;
    let (cpu, rss) = usage();
    let polls = calls.sent.load(Ordering::Relaxed) - calls_half;
    consumer.close().await?;
    let second_half = cpu - cpu_half;
    Ok(json!({
        "shards": shards,
        "idle_ms": idle_ms,
        "empty_polls_second_half": polls,
        "ms_per_empty_poll": second_half * 1e3 / polls.max(1) as f64,
        "build_s": built,
        "peak_rss_mb_after_build": rss_built,
        "peak_rss_mb_at_half": rss_half,
        "peak_rss_mb": rss,
        "cpu_s_second_half": second_half,
        "cpu_ms_per_shard_second": second_half * 1e3 / (shards as f64 * half.as_secs_f64()),
    }))
}

/// What an idle poll cannot cost less than: four tasks that only wake from
/// a 200 ms timer at moments 50 ms apart, as four idle pollers do, and
/// nothing else. (An empty poll wakes twice: for its timer and its response.)
async fn wakeups(seconds: u64) -> Result<serde_json::Value> {
    let rounds = seconds * 5;
    let (before, _) = usage();
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..4u64)
        .map(|k| {
            tokio::spawn(async move {
                for round in 1..=rounds {
                    let at = start + Duration::from_millis(200 * round + 50 * k);
                    tokio::time::sleep_until(at).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    let (after, _) = usage();
    let wakeups = rounds * 4;
    Ok(json!({
        "wakeups": wakeups,
        "cpu_ms": (after - before) * 1e3,
        "ms_per_wakeup": (after - before) * 1e3 / wakeups as f64,
    }))
}

/// What a canned GetRecords answer holds.
#[derive(Clone, Copy, PartialEq)]
enum Canned {
    /// 10,000 records of 100 bytes.
    Plain,
    /// 100 KPL aggregates of 100 user records of 100 bytes each.
    Kpl,
    /// Nothing: every shard is at its tip.
    Empty,
}

/// A canned Kinesis that answers every GetRecords call with `kind`'s page.
async fn serve_canned(port: u16, shards: usize, kind: Canned) -> Result<()> {
    use http_body_util::Full;
    use hyper::body::Bytes;

    // Sequence numbers must grow from batch to batch (checkpoints never move
    // back), so each response gets a fresh 31-digit prefix, spliced into a
    // body serialised once.
    const MARK: &str = "PREFIXPREFIXPREFIXPREFIXPREFIXP";
    let aggregates = (0..100u64).map(|a| {
        let keys: Vec<String> = (0..100)
            .map(|u| format!("partition-key-{}", (a * 100 + u) % 1000))
            .collect();
        let users: Vec<(&str, &[u8], Option<&str>)> =
            keys.iter().map(|k| (k.as_str(), &[b'A'; 100][..], None)).collect();
        json!({
            "Data": base64_simd::STANDARD.encode_to_string(kcpy::test_util::kpl_aggregate(&users)),
            "PartitionKey": keys[0],
            "SequenceNumber": format!("{MARK}{:025}", a + 1),
            "ApproximateArrivalTimestamp": 1_795_643_499.676,
        })
    });
    let plain = (0..10_000u64).map(|i| {
        json!({
            "Data": "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQQ==",
            "PartitionKey": format!("partition-key-{}", i % 1000),
            "SequenceNumber": format!("{MARK}{:025}", i + 1),
            "ApproximateArrivalTimestamp": 1_795_643_499.676,
        })
    });
    let records: Vec<serde_json::Value> = match kind {
        Canned::Plain => plain.collect(),
        Canned::Kpl => aggregates.collect(),
        Canned::Empty => Vec::new(),
    };
    // The hash key space split evenly, as Kinesis splits it: every user
    // record's partition key is placed against its shard's range (one MD5
    // per key), as on any stream of more than one shard.
    let width = u128::MAX / shards as u128;
    let hash_range = |i: usize| {
        let start = width * i as u128;
        let end = if i + 1 == shards { u128::MAX } else { start + width - 1 };
        json!({"StartingHashKey": start.to_string(), "EndingHashKey": end.to_string()})
    };
    let behind = if kind == Canned::Empty { 0 } else { 1000 };
    let template =
        json!({"Records": records, "NextShardIterator": "canned-iterator", "MillisBehindLatest": behind}).to_string();
    let segments: Arc<Vec<String>> = Arc::new(template.split(MARK).map(str::to_owned).collect());
    let batches = Arc::new(AtomicU64::new(1_000_000_000));
    let shard_list: Vec<serde_json::Value> = (0..shards)
        .map(|i| {
            json!({
                "ShardId": format!("shardId-{i:012}"),
                "HashKeyRange": hash_range(i),
                "SequenceNumberRange": {"StartingSequenceNumber": "1"},
            })
        })
        .collect();
    let list_shards = Bytes::from(json!({"Shards": shard_list}).to_string());
    let iterator = Bytes::from(json!({"ShardIterator": "canned-iterator"}).to_string());

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (socket, _) = listener.accept().await?;
        let (segments, batches) = (Arc::clone(&segments), Arc::clone(&batches));
        let (list_shards, iterator) = (list_shards.clone(), iterator.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let target = request
                    .headers()
                    .get("x-amz-target")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = if target.ends_with("GetRecords") {
                    let prefix = format!("4968{:027}", batches.fetch_add(1, Ordering::Relaxed));
                    Bytes::from(segments.join(prefix.as_str()))
                } else if target.ends_with("ListShards") {
                    list_shards.clone()
                } else {
                    iterator.clone()
                };
                async move {
                    let mut response = hyper::Response::new(Full::new(body));
                    response.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                .await;
        });
    }
}

async fn ceiling(endpoint: &str, shards: usize, records: u64) -> Result<serde_json::Value> {
    let mut builder = builder(client(endpoint, None), "canned");
    // Without a store the consumer keeps no checkpoint bookkeeping: the
    // difference is what checkpointing costs per record.
    if std::env::var_os("KCPY_BENCH_NO_CHECKPOINTS").is_none() {
        builder = builder.checkpoint_store(MemoryCheckpointStore::new());
    }
    let mut consumer = builder.build().await?;
    if consumer.shard_ids().count() != shards {
        return Err("the canned server lists another number of shards".into());
    }
    // Warm up (connections, first batches), then measure.
    for _ in 0..100_000 {
        if consumer.next().await.is_none() {
            return Err(format!("the consumer stopped: {:?}", consumer.error()).into());
        }
    }
    let (cpu_before, _) = usage();
    let allocations_before = allocations();
    let started = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..records {
        bytes += consumer.next().await.ok_or("ended")?.data.len();
    }
    let (cpu_after, rss) = usage();
    let cpu = cpu_after - cpu_before;
    if let (Some(before), Some(after)) = (allocations_before, allocations()) {
        // A counting build measures allocations only; its CPU is not the figure.
        return Ok(json!({
            "records": records,
            "allocations_per_record": (after - before) as f64 / records as f64,
        }));
    }
    Ok(json!({
        "records": records,
        "bytes": bytes,
        "wall_s": started.elapsed().as_secs_f64(),
        "cpu_s": cpu,
        "cpu_us_per_record": cpu * 1e6 / records as f64,
        "records_per_s_per_core": records as f64 / cpu,
        "peak_rss_mb": rss,
    }))
}

async fn save_rate(store: &dyn CheckpointStore, saves: u64) -> Result<f64> {
    let key = CheckpointKey::new("bench", "stream", "shardId-000000000000");
    let started = Instant::now();
    for i in 1..=saves {
        let seq = SequenceNumber::parse(&format!("4968056431792599511221138597909{i:025}"))?;
        store.save(&key, &Checkpoint::Sequence(seq)).await?;
    }
    Ok(saves as f64 / started.elapsed().as_secs_f64())
}

async fn checkpoints() -> Result<serde_json::Value> {
    let memory = save_rate(&MemoryCheckpointStore::new(), 200_000).await?;
    let dir = tempfile::tempdir()?;
    let sqlite = SqliteCheckpointStore::connect(&format!("sqlite://{}", dir.path().join("bench.db").display())).await?;
    let sqlite = save_rate(&sqlite, 2_000).await?;
    // The consumer writes one save per shard per batch of `checkpoint_every`
    // (default 1000) processed records.
    let batch = 1000.0;
    Ok(json!({
        "memory_saves_per_s": memory,
        "sqlite_saves_per_s": sqlite,
        "memory_records_per_s_with_batching": memory * batch,
        "sqlite_records_per_s_with_batching": sqlite * batch,
        "batch_records": batch,
    }))
}
