//! Resharding end to end on kinesis-mock: splits, merges and shard count
//! changes while a producer writes continuously. Every record is delivered,
//! per partition key in order, and no child shard is read before its parents
//! are finished.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use aws_sdk_kinesis::types::ScalingType;
use futures::StreamExt;
use kcpy::{Consumer, ConsumerBuilder, MemoryCheckpointStore, SqliteCheckpointStore, StartPosition};
use support::{assert_ordered_across_reshards, read_until, Producer, Put, TestStream};

const LIMIT: Duration = Duration::from_secs(180);

fn builder(stream: &TestStream) -> ConsumerBuilder {
    Consumer::builder(stream.client.clone(), &stream.name)
        .idle_interval(Duration::from_millis(100))
        .checkpoint_interval(Duration::from_millis(200))
        .shard_sync_interval(Duration::from_secs(2))
}

/// Reads `more` records beyond what `read` holds.
async fn read_more(consumer: &mut Consumer, read: &mut Vec<Put>, more: usize) {
    let target = read.len() + more;
    let next = read_until(consumer, LIMIT, |r| r.len() >= more).await;
    read.extend(next);
    assert!(read.len() >= target);
}

/// Stops the producer, marks every open shard, and reads until every marker
/// arrived: then nothing put can still be on its way.
async fn finish(stream: &TestStream, consumer: &mut Consumer, read: &mut Vec<Put>, producer: Producer) -> Vec<Put> {
    let puts = producer.stop().await;
    let markers = stream.put_marker_on_every_shard("end").await;
    let rest = read_until(consumer, LIMIT, |r| markers.iter().all(|m| r.contains(m))).await;
    read.extend(rest);
    read.retain(|r| !markers.contains(r));
    puts
}

fn assert_all_delivered_once(read: &[Put], puts: &[Put]) {
    let seen: HashSet<&Put> = read.iter().collect();
    assert_eq!(seen.len(), read.len(), "no record twice in a clean run");
    let missing = puts.iter().filter(|p| !seen.contains(p)).count();
    assert_eq!(missing, 0, "{missing} of {} records were never delivered", puts.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_during_consumption_loses_nothing_and_keeps_key_order() {
    let stream = TestStream::create("split", 2).await;
    let producer = Producer::start(&stream, 48);
    let mut consumer = builder(&stream)
        .checkpoint_store(MemoryCheckpointStore::new())
        .build()
        .await
        .expect("build");
    let mut read = Vec::new();
    read_more(&mut consumer, &mut read, 300).await;

    let parent = stream.open_shards().await.remove(0);
    stream.split(&parent).await;
    read_more(&mut consumer, &mut read, 400).await;

    let puts = finish(&stream, &mut consumer, &mut read, producer).await;
    let shards = stream.shards().await;
    assert_eq!(shards.len(), 4, "one parent, two children, one untouched");
    let children: Vec<_> = shards
        .iter()
        .filter(|s| s.parent_shard_id.as_deref() == Some(&parent.shard_id))
        .collect();
    assert_eq!(children.len(), 2);
    assert!(
        children.iter().all(|c| read.iter().any(|r| r.shard_id == c.shard_id)),
        "both children were read"
    );
    assert_all_delivered_once(&read, &puts);
    assert_ordered_across_reshards(&read, &shards);
    consumer.close().await.expect("close");
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_during_consumption_reads_both_parents_before_the_child() {
    let stream = TestStream::create("merge", 2).await;
    let producer = Producer::start(&stream, 48);
    let mut consumer = builder(&stream)
        .checkpoint_store(MemoryCheckpointStore::new())
        .build()
        .await
        .expect("build");
    let mut read = Vec::new();
    read_more(&mut consumer, &mut read, 300).await;

    let open = stream.open_shards().await;
    stream
        .client
        .merge_shards()
        .stream_name(&stream.name)
        .shard_to_merge(&open[0].shard_id)
        .adjacent_shard_to_merge(&open[1].shard_id)
        .send()
        .await
        .expect("MergeShards");
    stream.wait_resharded(&[&open[0].shard_id, &open[1].shard_id], 1).await;
    read_more(&mut consumer, &mut read, 400).await;

    let puts = finish(&stream, &mut consumer, &mut read, producer).await;
    let shards = stream.shards().await;
    let merged = shards
        .iter()
        .find(|s| s.adjacent_parent_shard_id.is_some())
        .expect("a merged shard");
    assert!(
        read.iter().any(|r| r.shard_id == merged.shard_id),
        "the merged shard was read"
    );
    assert_all_delivered_once(&read, &puts);
    assert_ordered_across_reshards(&read, &shards);
    consumer.close().await.expect("close");
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_shard_count_two_to_four_to_two_loses_nothing() {
    let stream = TestStream::create("scale", 2).await;
    let producer = Producer::start(&stream, 64);
    let mut consumer = builder(&stream)
        .checkpoint_store(MemoryCheckpointStore::new())
        .build()
        .await
        .expect("build");
    let mut read = Vec::new();
    read_more(&mut consumer, &mut read, 300).await;

    for target in [4, 2] {
        stream
            .client
            .update_shard_count()
            .stream_name(&stream.name)
            .target_shard_count(target)
            .scaling_type(ScalingType::UniformScaling)
            .send()
            .await
            .expect("UpdateShardCount");
        stream.wait_resharded(&[], target as usize).await;
        read_more(&mut consumer, &mut read, 400).await;
    }

    let puts = finish(&stream, &mut consumer, &mut read, producer).await;
    let shards = stream.shards().await;
    assert_all_delivered_once(&read, &puts);
    assert_ordered_across_reshards(&read, &shards);
    let open: Vec<String> = stream.open_shards().await.into_iter().map(|s| s.shard_id).collect();
    assert!(
        open.iter().all(|id| read.iter().any(|r| &r.shard_id == id)),
        "the final shards were read"
    );
    consumer.close().await.expect("close");
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_reshard_with_latest_reads_the_children_from_their_start() {
    let stream = TestStream::create("latest-restart", 2).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("kcpy.db").display());
    let latest = |stream: &TestStream| {
        builder(stream)
            .start_position(StartPosition::Latest)
            .consumer_name("latest")
    };

    let mut first = latest(&stream)
        .checkpoint_store(SqliteCheckpointStore::connect(&url).await.expect("sqlite"))
        .build()
        .await
        .expect("build");
    let producer = Producer::start(&stream, 48);
    // Stop at the first record: the other shard has nothing processed, so
    // only its saved start keeps the restart from beginning at a later tip.
    let mut run1 = read_until(&mut first, LIMIT, |r| !r.is_empty()).await;
    first.shutdown_handle().shutdown();
    while let Some(record) = first.next().await {
        run1.push(support::as_put(&record));
    }
    assert!(first.error().is_none(), "{:?}", first.error());
    drop(first);

    // While no consumer runs: a split, and records on both sides of it.
    let parent = stream.open_shards().await.remove(0);
    stream.split(&parent).await;
    let puts = producer.stop().await;
    let shards = stream.shards().await;
    let children: Vec<String> = shards
        .iter()
        .filter(|s| s.parent_shard_id.as_deref() == Some(&parent.shard_id))
        .map(|s| s.shard_id.clone())
        .collect();
    assert!(
        puts.iter().any(|p| children.contains(&p.shard_id)),
        "records were put on the children while the consumer was down"
    );

    let mut second = latest(&stream)
        .checkpoint_store(SqliteCheckpointStore::connect(&url).await.expect("sqlite"))
        .build()
        .await
        .expect("build again");
    let markers = stream.put_marker_on_every_shard("end").await;
    let mut run2 = read_until(&mut second, LIMIT, |r| markers.iter().all(|m| r.contains(m))).await;
    run2.retain(|r| !markers.contains(r));
    second.close().await.expect("close");

    assert_ordered_across_reshards(&run2, &shards);
    let seen1: HashSet<&Put> = run1.iter().collect();
    assert!(
        run2.iter().all(|p| !seen1.contains(p)),
        "a graceful stop re-delivers nothing"
    );
    let all: HashSet<&Put> = run1.iter().chain(&run2).collect();
    let missing: Vec<&Put> = puts.iter().filter(|p| !all.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "LATEST must not skip what was put while down: {} missing",
        missing.len()
    );
    for child in &children {
        let first_put = puts
            .iter()
            .find(|p| &p.shard_id == child)
            .expect("a record on the child");
        let first_read = run2.iter().find(|p| &p.shard_id == child);
        assert_eq!(
            first_read,
            Some(first_put),
            "{child} is read from its start, not at LATEST"
        );
    }
    stream.delete().await;
}
