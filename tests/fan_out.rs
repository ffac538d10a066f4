//! Enhanced fan-out end to end, against kinesis-mock (started by
//! `scripts/test`): SubscribeToShard over plain HTTP from the Rust SDK.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use kcpy::{Checkpoint, CheckpointKey, Consumer, ConsumerBuilder, Error, FanOut, MemoryCheckpointStore};
use support::fault_proxy::{Fault, FaultProxy, Rule};
use support::{assert_ordered_across_reshards, by_shard, counts, read_until, Put, TestStream};

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

// What the emulator never sends on a subscription, forged by the fault proxy
// after the subscription's first event: a shard end with children, an
// exception event, silence.

fn through(proxy: &FaultProxy, stream: &TestStream, fan_out: FanOut) -> ConsumerBuilder {
    Consumer::builder(proxy.client(), &stream.name)
        .fan_out(fan_out)
        .checkpoint_interval(Duration::from_millis(200))
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
}

fn subscriptions(proxy: &FaultProxy, shard: &str) -> usize {
    proxy
        .calls()
        .iter()
        .filter(|c| c.operation == "SubscribeToShard" && c.shard.as_deref() == Some(shard))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_end_through_fan_out_saves_the_parents_end_and_reads_its_children_after_it() {
    let stream = TestStream::create("efo-end", 1).await;
    // Per key counters across the split, for assert_ordered_across_reshards.
    let records = |range: std::ops::Range<usize>| -> Vec<(String, String)> {
        range.map(|i| (format!("pk-{}", i % 17), format!("rec#{i}"))).collect()
    };
    let before = stream.put(&records(0..120)).await;
    let parent = stream.open_shards().await.remove(0);
    stream.split(&parent).await;
    let children: Vec<(String, Vec<String>)> = stream
        .open_shards()
        .await
        .into_iter()
        .map(|s| (s.shard_id, vec![parent.shard_id.clone()]))
        .collect();
    assert_eq!(children.len(), 2);
    let after = stream.put(&records(120..320)).await;
    let markers = stream.put_marker_on_every_shard("end").await;

    let proxy = FaultProxy::start(&support::endpoint(), 13).await;
    proxy.add(
        Rule::new(Fault::EndShard(children))
            .on("SubscribeToShard")
            .shard(&parent.shard_id),
    );
    let store = MemoryCheckpointStore::new();
    let mut consumer = through(&proxy, &stream, FanOut::register("efo-end"))
        .consumer_name("efo-end")
        .checkpoint_store(store.clone())
        .build()
        .await
        .expect("build");
    let read = read_through_markers(&mut consumer, &markers).await;
    consumer.close().await.expect("clean stop");

    let puts: Vec<Put> = before.iter().chain(&after).cloned().collect();
    assert_eq!(read.len(), puts.len(), "every record once, nothing more");
    assert_eq!(by_shard(&read), by_shard(&puts), "per shard, in order");
    assert_ordered_across_reshards(&read, &stream.shards().await);
    assert_eq!(
        subscriptions(&proxy, &parent.shard_id),
        1,
        "the forged end ended the parent"
    );
    let key = CheckpointKey::new("efo-end", &stream.name, &parent.shard_id);
    assert_eq!(store.snapshot().get(&key), Some(&Checkpoint::ShardEnd));
    stream.delete().await;
}

/// Reads a one-shard stream through `fault` on its first subscription: the
/// records put before, while and after it arrive exactly once, in order,
/// through a second subscription.
async fn resubscribes_through(fault: Fault, fan_out: FanOut) {
    let stream = TestStream::create("efo-fault", 1).await;
    let shard = stream.open_shards().await.remove(0).shard_id;
    let mut puts = stream.put_many("before", 150, 19).await;
    let proxy = FaultProxy::start(&support::endpoint(), 7).await;
    proxy.add(Rule::new(fault.clone()).on("SubscribeToShard").times(1));
    let mut consumer = through(&proxy, &stream, fan_out).build().await.expect("build");
    let mut read = read_until(&mut consumer, LIMIT, |r| r.len() >= puts.len()).await;
    puts.extend(stream.put_many("during", 150, 19).await);
    let markers = stream.put_marker_on_every_shard("end").await;
    read.extend(read_through_markers(&mut consumer, &markers).await);
    read.retain(|r| !markers.contains(r));
    consumer.close().await.expect("clean stop");

    assert_eq!(proxy.injected(&fault), 1);
    assert!(subscriptions(&proxy, &shard) >= 2, "{fault:?}: subscribed again");
    assert_eq!(read.len(), puts.len(), "{fault:?}: nothing lost, nothing repeated");
    assert_eq!(by_shard(&read), by_shard(&puts), "{fault:?}: in order");
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_taken_over_mid_stream_resubscribes_after_the_last_record_without_loss_or_repeat() {
    resubscribes_through(
        Fault::StreamException("ResourceInUseException"),
        FanOut::register("efo-takeover"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_failure_event_mid_stream_resubscribes_without_loss_or_repeat() {
    resubscribes_through(
        Fault::StreamException("InternalFailureException"),
        FanOut::register("efo-failure"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscription_is_given_up_by_the_watchdog_and_resubscribed_without_loss_or_repeat() {
    resubscribes_through(
        Fault::Stall,
        FanOut::register("efo-stall").stall_timeout(Duration::from_secs(2)),
    )
    .await;
}
