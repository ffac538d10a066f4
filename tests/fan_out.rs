//! Enhanced fan-out end to end, against kinesis-mock (started by
//! `scripts/test`): SubscribeToShard over plain HTTP from the Rust SDK.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use kcpy::{Checkpoint, CheckpointKey, Consumer, ConsumerBuilder, Error, FanOut, MemoryCheckpointStore};
use support::{by_shard, counts, read_until, Put, TestStream};

const LIMIT: Duration = Duration::from_secs(120);

fn builder(stream: &TestStream, fan_out: FanOut) -> ConsumerBuilder {
    Consumer::builder(stream.client.clone(), &stream.name)
        .fan_out(fan_out)
        .checkpoint_interval(Duration::from_millis(200))
}

async fn read_through_markers(consumer: &mut Consumer, markers: &[Put]) -> Vec<Put> {
    let mut read = read_until(consumer, LIMIT, |read| {
        markers.iter().all(|m| read.iter().any(|r| r == m))
    })
    .await;
    read.retain(|r| !markers.contains(r));
    read
}

/// The stream's registered fan-out consumers, by name.
async fn registered(stream: &TestStream) -> Vec<(String, String)> {
    let arn = stream.arn().await;
    let listed = stream
        .client
        .list_stream_consumers()
        .stream_arn(arn)
        .send()
        .await
        .expect("ListStreamConsumers");
    listed
        .consumers
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.consumer_name, c.consumer_arn))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fan_out_every_record_of_four_shards_arrives_once_in_order_and_a_restart_resumes_after_the_checkpoint() {
    let stream = TestStream::create("efo-once", 4).await;
    let puts = stream.put_many("rec", 2000, 211).await;
    let markers = stream.put_marker_on_every_shard("end").await;
    let store = MemoryCheckpointStore::new();
    let mut consumer = builder(&stream, FanOut::register("efo-app"))
        .consumer_name("efo-app")
        .checkpoint_store(store.clone())
        .build()
        .await
        .expect("build");
    let read = read_through_markers(&mut consumer, &markers).await;
    assert_eq!(read.len(), puts.len(), "every record once, nothing more");
    let read_counts = counts(&read);
    assert!(puts.iter().all(|p| read_counts.get(p) == Some(&1)));
    assert_eq!(by_shard(&read), by_shard(&puts), "per shard, in order");
    // Asking for more marks the markers processed too.
    consumer.shutdown_handle().shutdown();
    assert!(futures::StreamExt::next(&mut consumer).await.is_none());
    assert!(consumer.error().is_none(), "{:?}", consumer.error());
    for marker in &markers {
        let key = CheckpointKey::new("efo-app", &stream.name, &marker.shard_id);
        assert_eq!(
            store.snapshot().get(&key),
            Some(&Checkpoint::Sequence(marker.sequence_number.clone())),
            "{}: checkpointed through its marker",
            marker.shard_id
        );
    }
    let before = registered(&stream).await;
    assert_eq!(before.len(), 1, "{before:?}");

    let later = stream.put_many("later", 400, 37).await;
    let markers = stream.put_marker_on_every_shard("end2").await;
    let mut again = builder(&stream, FanOut::register("efo-app"))
        .consumer_name("efo-app")
        .checkpoint_store(store.clone())
        .build()
        .await
        .expect("build again");
    let read = read_through_markers(&mut again, &markers).await;
    again.close().await.expect("clean stop");
    let expected: HashSet<&Put> = later.iter().collect();
    let got: HashSet<&Put> = read.iter().collect();
    assert_eq!(read.len(), later.len(), "nothing repeated from the first run");
    assert_eq!(got, expected, "exactly the records put after the checkpoint");
    assert_eq!(registered(&stream).await, before, "the registration was reused");
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fan_out_consumers_each_read_every_record_independently() {
    let stream = TestStream::create("efo-two", 2).await;
    let puts = stream.put_many("rec", 600, 53).await;
    let markers = stream.put_marker_on_every_shard("end").await;
    let mut a = builder(&stream, FanOut::register("efo-a"))
        .consumer_name("a")
        .build()
        .await
        .expect("build a");
    let mut b = builder(&stream, FanOut::register("efo-b"))
        .consumer_name("b")
        .build()
        .await
        .expect("build b");
    let (read_a, read_b) = tokio::join!(
        read_through_markers(&mut a, &markers),
        read_through_markers(&mut b, &markers)
    );
    for read in [&read_a, &read_b] {
        assert_eq!(read.len(), puts.len());
        assert_eq!(by_shard(read), by_shard(&puts));
    }
    a.close().await.expect("stop a");
    b.close().await.expect("stop b");
    assert_eq!(registered(&stream).await.len(), 2);
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_registered_for_this_run_only_is_deregistered_on_a_clean_stop() {
    let stream = TestStream::create("efo-dereg", 1).await;
    let mut consumer = builder(&stream, FanOut::register("efo-once").deregister_on_stop(true))
        .build()
        .await
        .expect("build");
    assert_eq!(registered(&stream).await.len(), 1);
    consumer.close().await.expect("clean stop");
    let left = registered(&stream).await;
    assert!(left.is_empty(), "{left:?}");
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_foreign_and_misnamed_fan_out_consumers_are_typed_errors_at_build() {
    let stream = TestStream::create("efo-bad", 1).await;
    let other = TestStream::create("efo-other", 1).await;
    let foreign = other
        .client
        .register_stream_consumer()
        .stream_arn(other.arn().await)
        .consumer_name("theirs")
        .send()
        .await
        .expect("register on the other stream")
        .consumer
        .expect("consumer")
        .consumer_arn;
    let unknown = format!("{}/consumer/nobody:1700000000", stream.arn().await);

    let cases = [
        (FanOut::arn(unknown), "unknown ARN"),
        (FanOut::arn(foreign), "another stream's consumer"),
    ];
    for (fan_out, what) in cases {
        let error = builder(&stream, fan_out).build().await.expect_err(what);
        assert!(matches!(error, Error::ConsumerNotFound { .. }), "{what}: {error:?}");
        assert!(!error.is_retryable(), "{what}");
    }
    let error = builder(&stream, FanOut::register("no spaces allowed"))
        .build()
        .await
        .expect_err("invalid name");
    assert!(matches!(error, Error::InvalidConfig { .. }), "{error:?}");
    assert!(registered(&stream).await.is_empty(), "nothing was registered");
    stream.delete().await;
    other.delete().await;
}
