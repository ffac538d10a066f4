//! One consumer reading several streams: every record names its stream,
//! each stream resumes from its own checkpoints (the same ones a consumer of
//! that stream alone keeps), follows its own reshards, and a group balances
//! the shards of every stream together.

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use kcpy::{
    CheckpointMode, Consumer, ConsumerBuilder, ConsumerEvent, Error, MemoryCheckpointStore, Record, ShardState,
    SqliteCheckpointStore, StartPosition, StreamSpec,
};
use support::{as_put, Put, TestStream};

const LIMIT: Duration = Duration::from_secs(120);

fn builder(first: &TestStream, more: &[&TestStream]) -> ConsumerBuilder {
    let mut builder = Consumer::builder(first.client.clone(), &first.name)
        .consumer_name("multi")
        .checkpoint_mode(CheckpointMode::Manual)
        .idle_interval(Duration::from_millis(100))
        .checkpoint_interval(Duration::from_millis(200));
    for stream in more {
        builder = builder.add_stream(stream.name.as_str());
    }
    builder
}

/// A record as read, with the stream it says it came from.
type Read = (String, Put);

/// Reads (checkpointing each record) until `done` holds for what was read.
async fn read_until(consumer: &mut Consumer, mut done: impl FnMut(&[Read]) -> bool) -> Vec<Read> {
    let mut read = Vec::new();
    let outcome = tokio::time::timeout(LIMIT, async {
        while !done(&read) {
            let Some(record) = consumer.next().await else {
                return false;
            };
            consumer.checkpoint(&record).expect("checkpoint");
            read.push(named(&record));
        }
        true
    })
    .await;
    match outcome {
        Ok(true) => read,
        Ok(false) => panic!("ended after {} records: {:?}", read.len(), consumer.error()),
        Err(_) => panic!("timed out after {} records", read.len()),
    }
}

fn named(record: &Record) -> Read {
    (record.stream.to_string(), as_put(record))
}

/// What was put into `stream`, as records read from it would be named.
fn puts_of(stream: &TestStream, puts: Vec<Put>) -> Vec<Read> {
    puts.into_iter().map(|put| (stream.name.clone(), put)).collect()
}

fn set(reads: &[Read]) -> BTreeSet<Read> {
    reads.iter().cloned().collect()
}

/// Reads until every record of `expected` was read; nothing else may come.
async fn read_exactly(consumer: &mut Consumer, expected: &[Read]) -> Vec<Read> {
    let want = set(expected);
    let read = read_until(consumer, |read| want.iter().all(|r| read.contains(r))).await;
    assert_eq!(read.len(), expected.len(), "each record once, nothing else");
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_streams_are_read_as_one_each_record_naming_its_stream_and_each_resumes_from_its_own_checkpoints() {
    let a = TestStream::create("multi-a", 2).await;
    let b = TestStream::create("multi-b", 1).await;
    let c = TestStream::create("multi-c", 3).await;
    let mut expected = puts_of(&a, a.put_many("a", 60, 7).await);
    expected.extend(puts_of(&b, b.put_many("b", 40, 5).await));
    expected.extend(puts_of(&c, c.put_many("c", 50, 11).await));
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("multi.db").display());

    let store = SqliteCheckpointStore::connect(&url).await.expect("sqlite");
    let mut consumer = builder(&a, &[&b, &c])
        .checkpoint_store(store)
        .build()
        .await
        .expect("build");
    assert_eq!(consumer.stream_names().collect::<Vec<_>>(), [&a.name, &b.name, &c.name]);
    read_exactly(&mut consumer, &expected).await;
    // Every stream's shards, each under its stream's name.
    let lag = consumer.lag();
    for (stream, shards) in [(&a, 2), (&b, 1), (&c, 3)] {
        assert_eq!(lag.iter().filter(|s| s.stream_name == stream.name).count(), shards);
    }
    consumer.close().await.expect("clean close");

    let mut more = puts_of(&a, a.put_many("a2", 10, 3).await);
    more.extend(puts_of(&c, c.put_many("c2", 10, 3).await));
    let store = SqliteCheckpointStore::connect(&url).await.expect("reopen");
    let mut consumer = builder(&a, &[&b, &c])
        .checkpoint_store(store)
        .build()
        .await
        .expect("rebuild");
    read_exactly(&mut consumer, &more).await;
    consumer.close().await.expect("clean close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_checkpoints_are_the_same_whether_it_is_read_alone_or_with_other_streams() {
    let a = TestStream::create("alone-a", 2).await;
    let b = TestStream::create("alone-b", 1).await;
    let store = MemoryCheckpointStore::new();

    // A alone.
    let first = puts_of(&a, a.put_many("a", 20, 5).await);
    let mut alone = builder(&a, &[])
        .checkpoint_store(store.clone())
        .build()
        .await
        .expect("build");
    read_exactly(&mut alone, &first).await;
    alone.close().await.expect("clean close");

    // B and A together, A second: A goes on after its checkpoints.
    let mut expected = puts_of(&a, a.put_many("a2", 5, 5).await);
    expected.extend(puts_of(&b, b.put_many("b", 15, 5).await));
    let mut together = builder(&b, &[&a])
        .checkpoint_store(store.clone())
        .build()
        .await
        .expect("build");
    read_exactly(&mut together, &expected).await;
    together.close().await.expect("clean close");

    // Each alone again: nothing is read twice.
    for stream in [&a, &b] {
        let next = puts_of(stream, stream.put_many("last", 3, 3).await);
        let mut alone = builder(stream, &[])
            .checkpoint_store(store.clone())
            .build()
            .await
            .expect("build");
        read_exactly(&mut alone, &next).await;
        alone.close().await.expect("clean close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_of_one_stream_is_followed_while_the_other_is_read() {
    let a = TestStream::create("reshard-a", 1).await;
    let b = TestStream::create("reshard-b", 1).await;
    let mut expected = puts_of(&a, a.put_many("a", 30, 5).await);
    expected.extend(puts_of(&b, b.put_many("b", 30, 5).await));
    let mut consumer = builder(&a, &[&b])
        .checkpoint_store(MemoryCheckpointStore::new())
        .shard_sync_interval(Duration::from_millis(500))
        .build()
        .await
        .expect("build");
    let mut events = consumer.events();
    read_exactly(&mut consumer, &expected).await;

    let parent = a.open_shards().await.remove(0);
    a.split(&parent).await;
    a.wait_resharded(&[&parent.shard_id], 2).await;
    let mut after = puts_of(&a, a.put_marker_on_every_shard("after").await);
    after.extend(puts_of(&b, b.put_many("b2", 10, 5).await));
    let read = read_exactly(&mut consumer, &after).await;
    let children: HashSet<String> = a.open_shards().await.into_iter().map(|s| s.shard_id).collect();
    for (stream, put) in &read {
        if stream == &a.name {
            assert!(
                children.contains(&put.shard_id),
                "after the split, A is read from its children"
            );
        }
    }

    let lag = consumer.lag();
    let state = |stream: &TestStream, shard: &str| {
        lag.iter()
            .find(|s| s.stream_name == stream.name && s.shard_id == shard)
            .map(|s| s.state)
    };
    assert_eq!(state(&a, &parent.shard_id), Some(ShardState::Finished));
    assert_eq!(
        state(&b, &parent.shard_id),
        Some(ShardState::Reading),
        "B's shard of the same id reads on"
    );
    let mut finished = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let ConsumerEvent::ShardFinished { stream_name, shard_id } = event {
            finished.push((stream_name, shard_id));
        }
    }
    assert_eq!(finished, [(a.name.clone(), parent.shard_id.clone())]);
    consumer.close().await.expect("clean close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_ends_the_consumer_with_an_error_naming_it_after_saving_the_others_checkpoints() {
    let a = TestStream::create("deleted-a", 1).await;
    let b = TestStream::create("deleted-b", 1).await;
    let (a_name, b_name) = (a.name.clone(), b.name.clone());
    let mut expected = puts_of(&a, a.put_many("a", 10, 5).await);
    expected.extend(puts_of(&b, b.put_many("b", 10, 5).await));
    let store = MemoryCheckpointStore::new();
    let mut consumer = Consumer::builder(a.client.clone(), &a.name)
        .add_stream(StreamSpec::new(&b.name).start_position(StartPosition::TrimHorizon))
        .consumer_name("multi")
        .checkpoint_mode(CheckpointMode::Manual)
        .idle_interval(Duration::from_millis(100))
        .shard_sync_interval(Duration::from_millis(300))
        .checkpoint_store(store.clone())
        .build()
        .await
        .expect("build");
    read_exactly(&mut consumer, &expected).await;

    a.delete().await;
    let ended = tokio::time::timeout(LIMIT, async {
        if let Some(record) = consumer.next().await {
            panic!("nothing more was put, yet {record:?} came");
        }
    })
    .await;
    assert!(ended.is_ok(), "the consumer ends once a stream is gone");
    match consumer.error() {
        Some(Error::StreamNotFound { stream, .. }) => assert_eq!(stream, &a_name),
        other => panic!("expected StreamNotFound for {a_name}, got {other:?}"),
    }
    // B's processed records were checkpointed on the way out.
    let checkpoints = store.snapshot();
    let b_checkpoint = checkpoints
        .iter()
        .find(|(key, _)| key.consumer_name == "multi" && key.stream_name == b_name)
        .map(|(_, checkpoint)| checkpoint.clone());
    let last_b = expected
        .iter()
        .filter(|(stream, _)| stream == &b_name)
        .map(|(_, put)| put.sequence_number.clone())
        .max();
    assert_eq!(
        b_checkpoint.and_then(|c| c.sequence_number().cloned()),
        last_b,
        "{checkpoints:?}"
    );
}

#[tokio::test]
async fn two_streams_of_the_same_name_are_refused() {
    let a = TestStream::create("twice", 1).await;
    match builder(&a, &[&a]).build().await {
        Err(error @ Error::InvalidConfig { .. }) => assert!(error.to_string().contains(&a.name), "{error}"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

/// A group member reading both streams.
async fn member(a: &TestStream, b: &TestStream, store: &MemoryCheckpointStore, worker: &str) -> Consumer {
    Consumer::builder(a.client.clone(), &a.name)
        .add_stream(b.name.as_str())
        .consumer_name("multi-group")
        .lease_store(store.clone())
        .worker_id(worker)
        .lease_duration(Duration::from_secs(2))
        .lease_renew_interval(Duration::from_millis(300))
        .idle_interval(Duration::from_millis(100))
        .build()
        .await
        .expect("build")
}

/// The (stream, shard) pairs a member reads now.
fn held(consumer: &Consumer) -> BTreeSet<(String, String)> {
    consumer
        .lag()
        .into_iter()
        .filter(|s| s.state == ShardState::Reading)
        .map(|s| (s.stream_name, s.shard_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_two_balances_the_shards_of_two_streams_together_and_reads_each_record_once() {
    // Four shards: three in A, one in B. Balanced per stream, one worker
    // would keep B's shard and two of A's; balanced together, two each.
    let a = TestStream::create("group-a", 3).await;
    let b = TestStream::create("group-b", 1).await;
    let store = MemoryCheckpointStore::new();
    let mut first = member(&a, &b, &store, "w1").await;
    let mut second = member(&a, &b, &store, "w2").await;

    let mut read: Vec<(usize, Read)> = Vec::new();
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let (one, two) = (held(&first), held(&second));
        if one.len() == 2 && two.len() == 2 && one.is_disjoint(&two) {
            break;
        }
        tokio::select! {
            record = first.next() => read.push((0, named(&record.expect("w1 ended")))),
            record = second.next() => read.push((1, named(&record.expect("w2 ended")))),
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(deadline) => panic!("not balanced: {:?} / {:?}", held(&first), held(&second)),
        }
    }
    let all: BTreeSet<(String, String)> = held(&first).union(&held(&second)).cloned().collect();
    assert_eq!(all.len(), 4, "every shard of both streams is read: {all:?}");

    // Records put now are each read once, by the member holding the shard.
    let mut expected = puts_of(&a, a.put_many("a", 60, 13).await);
    expected.extend(puts_of(&b, b.put_many("b", 20, 7).await));
    let want = set(&expected);
    read.clear();
    while !want.iter().all(|r| read.iter().any(|(_, got)| got == r)) {
        tokio::select! {
            record = first.next() => read.push((0, named(&record.expect("w1 ended")))),
            record = second.next() => read.push((1, named(&record.expect("w2 ended")))),
            _ = tokio::time::sleep_until(deadline) => panic!("timed out after {} records", read.len()),
        }
    }
    let mut times: HashMap<&Read, usize> = HashMap::new();
    for (_, record) in &read {
        *times.entry(record).or_default() += 1;
    }
    assert!(times.values().all(|&n| n == 1), "each record once");
    for (member, (stream, put)) in &read {
        let holder = if *member == 0 { held(&first) } else { held(&second) };
        assert!(
            holder.contains(&(stream.clone(), put.shard_id.clone())),
            "{stream}/{} read by its holder",
            put.shard_id
        );
    }
    first.close().await.expect("close");
    second.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_another_region_is_read_by_its_arn_through_the_client_given_for_it() {
    let here = TestStream::create("here", 1).await;
    let there = TestStream::create_with(support::client_in("eu-west-1"), "there", 2).await;
    let mut expected = puts_of(&here, here.put_many("here", 20, 4).await);
    expected.extend(puts_of(&there, there.put_many("there", 30, 6).await));

    // The builder's client does not see the other region's stream.
    let refused = Consumer::builder(here.client.clone(), &here.name)
        .add_stream(there.name.as_str())
        .startup_retries(0)
        .build()
        .await;
    match refused {
        Err(Error::StreamNotFound { stream, .. }) => assert_eq!(stream, there.name),
        other => panic!("expected StreamNotFound for {}, got {other:?}", there.name),
    }

    // Given by its ARN; its records still name it by its name.
    let arn = there
        .client
        .describe_stream_summary()
        .stream_name(&there.name)
        .send()
        .await
        .expect("DescribeStreamSummary")
        .stream_description_summary
        .expect("summary")
        .stream_arn;
    assert!(arn.starts_with("arn:aws:kinesis:eu-west-1:"), "{arn}");
    let store = MemoryCheckpointStore::new();
    let mut consumer = Consumer::builder(here.client.clone(), &here.name)
        .add_stream(StreamSpec::new(arn).client(there.client.clone()))
        .consumer_name("multi")
        .checkpoint_mode(CheckpointMode::Manual)
        .idle_interval(Duration::from_millis(100))
        .checkpoint_store(store.clone())
        .build()
        .await
        .expect("build");
    read_exactly(&mut consumer, &expected).await;
    consumer.close().await.expect("clean close");
    let checkpointed: HashSet<String> = store
        .snapshot()
        .iter()
        .filter(|(key, _)| key.consumer_name == "multi")
        .map(|(key, _)| key.stream_name.clone())
        .collect();
    assert_eq!(checkpointed, HashSet::from([here.name.clone(), there.name.clone()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_keep_each_keys_order_within_each_stream_and_checkpoint_every_stream() {
    let a = TestStream::create("lanes-a", 1).await;
    let b = TestStream::create("lanes-b", 2).await;
    // The same keys in both streams: a key's order is its stream's.
    let records = |stream: &str| -> Vec<(String, String)> {
        (0..120)
            .map(|i| (format!("key-{}", i % 6), format!("{stream}-key-{}#{}", i % 6, i / 6)))
            .collect()
    };
    let mut expected = puts_of(&a, a.put(&records("a")).await);
    expected.extend(puts_of(&b, b.put(&records("b")).await));
    let store = MemoryCheckpointStore::new();
    let mut consumer = builder(&a, &[&b])
        .checkpoint_store(store.clone())
        .build()
        .await
        .expect("build");
    let shutdown = consumer.shutdown_handle();
    let started = std::sync::Mutex::new(Vec::<Read>::new());
    let finished = std::sync::Mutex::new(BTreeSet::<Read>::new());
    tokio::time::timeout(
        LIMIT,
        consumer.for_each_by_key(8, |record| {
            let (started, finished, shutdown, total) = (&started, &finished, &shutdown, expected.len());
            async move {
                let read = named(&record);
                started.lock().expect("log").push(read.clone());
                let delay = support::counter(&read.1).wrapping_mul(2_654_435_761) % 4;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let mut finished = finished.lock().expect("log");
                finished.insert(read);
                if finished.len() >= total {
                    shutdown.shutdown();
                }
                Ok::<_, std::io::Error>(())
            }
        }),
    )
    .await
    .expect("every record is handled within the limit")
    .expect("the consumer stops cleanly");

    assert_eq!(finished.into_inner().expect("log"), set(&expected));
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    for (stream, put) in started.into_inner().expect("log") {
        let n = support::counter(&put);
        if let Some(previous) = last.insert((stream.clone(), put.partition_key.clone()), n) {
            assert!(
                n > previous,
                "{stream} {}: #{n} started after #{previous}",
                put.partition_key
            );
        }
    }
    // Each shard of each stream checkpointed at its last record.
    let checkpoints = store.snapshot();
    for (stream, put) in &expected {
        let newest = expected
            .iter()
            .filter(|(s, p)| s == stream && p.shard_id == put.shard_id)
            .map(|(_, p)| p.sequence_number.clone())
            .max();
        let saved = checkpoints
            .iter()
            .find(|(key, _)| key.stream_name == *stream && key.shard_id == put.shard_id)
            .and_then(|(_, checkpoint)| checkpoint.sequence_number().cloned());
        assert_eq!(saved, newest, "{stream} {}", put.shard_id);
    }
}
