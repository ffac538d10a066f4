//! "Memory is bounded": a consumer reading a large backlog holds at most its
//! prefetched batches, whatever the backlog. Measured with a counting
//! allocator against an endpoint that answers like Kinesis with an endless
//! backlog (the emulator is too slow to hold one this large).

use std::alloc::System;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use bytes::Bytes;
use cap::Cap;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kcpy::Consumer;
use tokio::net::TcpListener;

/// Counts this test binary's heap: live bytes and the peak.
#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

const RECORD_BYTES: usize = 10 * 1024;
const PER_CALL: usize = 100;
const TOTAL: usize = 2_000;
const MIB: usize = 1024 * 1024;

/// Answers ListShards, GetShardIterator and GetRecords for one shard whose
/// backlog never ends: every GetRecords gives `PER_CALL` records of
/// `RECORD_BYTES` and says the shard is behind.
async fn endless_backlog() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let served = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&served);
    tokio::spawn(async move {
        let data = Arc::new(aws_smithy_types::base64::encode(vec![7u8; RECORD_BYTES]));
        while let Ok((socket, _)) = listener.accept().await {
            let (data, counter) = (Arc::clone(&data), Arc::clone(&counter));
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| answer(request, Arc::clone(&data), Arc::clone(&counter)));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    (endpoint, served)
}

async fn answer(
    request: Request<Incoming>,
    data: Arc<String>,
    served: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let reply = if target.ends_with(".ListShards") {
        serde_json::json!({"Shards": [{
            "ShardId": "shardId-000000000000",
            "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "340282366920938463463374607431768211455"},
            "SequenceNumberRange": {"StartingSequenceNumber": "1"}
        }]})
        .to_string()
    } else if target.ends_with(".GetShardIterator") {
        serde_json::json!({"ShardIterator": "at-0"}).to_string()
    } else {
        let at: u64 = json["ShardIterator"]
            .as_str()
            .and_then(|it| it.strip_prefix("at-"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        served.fetch_add(1, Ordering::Relaxed);
        // One allocation per answer: the server's own heap counts too.
        let mut reply = String::with_capacity(PER_CALL * (data.len() + 128) + 128);
        reply.push_str(r#"{"Records":["#);
        for i in 0..PER_CALL as u64 {
            if i > 0 {
                reply.push(',');
            }
            reply.push_str(r#"{"Data":""#);
            reply.push_str(&data);
            reply.push_str(&format!(
                r#"","PartitionKey":"k","SequenceNumber":"{}","ApproximateArrivalTimestamp":1.8E9}}"#,
                1_000_000 + at + i
            ));
        }
        reply.push_str(&format!(
            r#"],"NextShardIterator":"at-{}","MillisBehindLatest":60000}}"#,
            at + PER_CALL as u64
        ));
        reply
    };
    let mut response = Response::new(Full::new(Bytes::from(reply)));
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_behind_a_large_backlog_holds_only_its_prefetched_batches() {
    let (endpoint, served) = endless_backlog().await;
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "memory-test"))
        .build();
    let mut consumer = Consumer::builder(aws_sdk_kinesis::Client::from_conf(config), "backlog")
        .max_records_per_call(PER_CALL as i32)
        .build()
        .await
        .expect("build");
    // The peak cannot be reset: one reached before this point only makes
    // the check stricter.
    let baseline = ALLOCATOR.allocated();

    // The caller is slower than the fetching (5 ms of work a record, 0.5 s
    // a batch, while a shard may be fetched 5 times a second): an unbounded
    // read-ahead would pile up about 3 batches a second.
    let mut checksum = 0u64;
    for _ in 0..TOTAL {
        let record = consumer.next().await.expect("a record");
        checksum = record
            .data
            .iter()
            .fold(checksum, |sum, b| sum.wrapping_mul(31).wrapping_add(u64::from(*b)));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let peak = ALLOCATOR.max_allocated().saturating_sub(baseline);
    consumer.close().await.expect("close");
    assert_ne!(checksum, 0);

    let consumed = TOTAL * RECORD_BYTES;
    let batch = PER_CALL * RECORD_BYTES;
    assert!(served.load(Ordering::Relaxed) >= (TOTAL / PER_CALL) as u64);
    // Two prefetched batches, the one being handed out and the one being
    // fetched, some held both as a response body and as records (the JSON
    // and base64 are a third larger), and the answer the server is making:
    // about 6 batches, under 16 always. Without the bound (prefetch_batches
    // 1000) the peak is past 40 batches here.
    assert!(
        peak < 16 * batch,
        "peak heap growth {:.1} MiB while reading {:.1} MiB in batches of {:.1} MiB",
        peak as f64 / MIB as f64,
        consumed as f64 / MIB as f64,
        batch as f64 / MIB as f64
    );
    println!(
        "peak heap growth {:.1} MiB while reading {:.1} MiB in batches of {:.1} MiB",
        peak as f64 / MIB as f64,
        consumed as f64 / MIB as f64,
        batch as f64 / MIB as f64
    );
}
