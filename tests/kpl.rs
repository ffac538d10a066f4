//! KPL aggregated records, made by the Python `aws-kinesis-agg` aggregator
//! and put into kinesis-mock: de-aggregation, checkpoints inside an
//! aggregate, malformed aggregates and user records outside their shard.

mod support;

use std::time::Duration;

use futures::StreamExt;
use kcpy::{
    Aggregate, Checkpoint, CheckpointKey, CheckpointMode, CheckpointStore, Consumer, ConsumerBuilder,
    MalformedAggregate, MemoryCheckpointStore, Record, SqliteCheckpointStore,
};
use md5::{Digest, Md5};
use support::kpl::{aggregate, User, UserPut};
use support::TestStream;

const LIMIT: Duration = Duration::from_secs(120);

fn builder(stream: &TestStream) -> ConsumerBuilder {
    Consumer::builder(stream.client.clone(), &stream.name)
        .idle_interval(Duration::from_millis(100))
        .checkpoint_interval(Duration::from_millis(200))
}

/// Reads records until `done` holds for them.
async fn read(consumer: &mut Consumer, mut done: impl FnMut(&[Record]) -> bool) -> Vec<Record> {
    let mut read = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while !done(&read) {
            match consumer.next().await {
                Some(record) => read.push(record),
                None => panic!(
                    "the consumer ended after {} records: {:?}",
                    read.len(),
                    consumer.error()
                ),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {} records", read.len()));
    read
}

/// Each shard's hash key range, from the listing.
async fn hash_ranges(stream: &TestStream) -> std::collections::HashMap<String, (u128, u128)> {
    stream
        .shards()
        .await
        .into_iter()
        .map(|shard| {
            let range = shard.hash_key_range.expect("hash key range");
            let parse = |text: &str| text.parse::<u128>().expect("a 128-bit hash key");
            (
                shard.shard_id,
                (parse(&range.starting_hash_key), parse(&range.ending_hash_key)),
            )
        })
        .collect()
}

/// Where Kinesis routes a key: the explicit hash key, else the MD5 digest of
/// the partition key as a big-endian number.
fn hash_of(partition_key: &str, explicit_hash_key: Option<&str>) -> u128 {
    match explicit_hash_key {
        Some(hash_key) => hash_key.parse().expect("a decimal hash key"),
        None => u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into()),
    }
}

fn users(aggregates: usize, per: usize, tag: &str) -> Vec<Vec<User>> {
    (0..aggregates)
        .map(|a| {
            (0..per)
                .map(|u| {
                    User::new(
                        format!("pk-{}", (a * per + u) % 7),
                        format!("{tag}-{a}-{u}").into_bytes(),
                    )
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_records_made_by_the_python_aggregator_come_out_exactly_and_in_order() {
    let stream = TestStream::create("kpl-exact", 2).await;
    let mut made = users(3, 50, "many-keys");
    // Explicit hash keys, some shared, spread over the whole 128-bit range.
    made.push(
        (0..30u128)
            .map(|n| {
                User::new(format!("ehk-{n}"), format!("ehk-{n}").into_bytes())
                    .with_hash_key((u128::MAX / 30 * (n % 10)).to_string())
            })
            .collect(),
    );
    // Empty user records around a large one, and a lone user record.
    made.push(vec![
        User::new("edge", Vec::new()),
        User::new("edge", vec![b'L'; 600 * 1024]),
        User::new("edge-2", Vec::new()),
    ]);
    made.push(vec![User::new("alone", b"just one".to_vec())]);
    let aggregates = aggregate(&made);
    let mut expected = stream.put_aggregates(&aggregates[..3], None).await;
    let plain = stream.put(&[("plain".into(), "between aggregates".into())]).await;
    expected.extend(stream.put_aggregates(&aggregates[3..], None).await);
    let markers = stream.put_marker_on_every_shard("end").await;

    let mut consumer = builder(&stream).build().await.expect("build");
    let records = read(&mut consumer, |read| {
        markers.iter().all(|m| {
            read.iter()
                .any(|r| r.sequence_number == m.sequence_number && *r.shard_id == *m.shard_id)
        })
    })
    .await;
    consumer.close().await.expect("close");

    let (user_records, others): (Vec<&Record>, Vec<&Record>) =
        records.iter().partition(|r| r.sub_sequence_number.is_some());
    let mut delivered: Vec<UserPut> = user_records.iter().map(|r| UserPut::of(r)).collect();
    // Per shard in order: the shard's sequence, then the place in the aggregate.
    delivered.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    expected.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    assert_eq!(delivered, expected, "every user record, exactly once, in order");
    let ranges = hash_ranges(&stream).await;
    for record in &user_records {
        let Aggregate::Member { count, outside_shard } = record.aggregate else {
            panic!("{record:?}")
        };
        let size = made
            .iter()
            .find(|users| users.iter().any(|u| u.data == record.data))
            .map(Vec::len);
        assert_eq!(Some(count as usize), size);
        // An aggregate goes where its first user record hashes; the others
        // may hash to the other shard, and are flagged so.
        let (start, end) = ranges[&*record.shard_id];
        let hash = hash_of(&record.partition_key, record.explicit_hash_key.as_deref());
        assert_eq!(outside_shard, !(start..=end).contains(&hash), "{record:?}");
    }
    assert_eq!(others.len(), 1 + markers.len(), "the plain records, whole");
    assert!(others.iter().all(|r| r.aggregate == Aggregate::Plain));
    assert!(
        others.iter().any(|r| r.sequence_number == plain[0].sequence_number
            && *r.shard_id == plain[0].shard_id
            && &r.data[..] == b"between aggregates"),
        "the plain record between aggregates, as it was put"
    );
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_inside_an_aggregate_resumes_after_its_last_processed_user_record() {
    let stream = TestStream::create("kpl-resume", 1).await;
    let puts = stream.put_aggregates(&aggregate(&users(3, 10, "resume")), None).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("kpl.db").display());
    let store = SqliteCheckpointStore::connect(&url).await.expect("sqlite");
    let key = CheckpointKey::new("kcpy", &stream.name, &puts[0].shard_id);

    // The first aggregate and 4 of the second's 10 user records processed.
    let mut first = builder(&stream)
        .checkpoint_store(store.clone())
        .checkpoint_mode(CheckpointMode::Manual)
        .build()
        .await
        .expect("build");
    let records = read(&mut first, |read| read.len() == 14).await;
    for record in &records {
        first.checkpoint(record).expect("checkpoint");
    }
    first.checkpointer().flush().await.expect("flush");
    first.close().await.expect("close");
    let stored = store.load(&key).await.expect("load");
    assert_eq!(stored, Some(records[13].checkpoint()));
    assert_eq!(
        stored.map(|c| c.to_string()),
        Some(format!("{}:3", puts[13].sequence_number)),
        "the place inside the aggregate, as text"
    );

    // The restart goes on with the fifth user record: nothing again, nothing skipped.
    let mut second = builder(&stream)
        .checkpoint_store(store.clone())
        .build()
        .await
        .expect("build");
    let rest = read(&mut second, |read| read.len() == 16).await;
    assert_eq!(
        rest.iter().map(UserPut::of).collect::<Vec<_>>(),
        puts[14..],
        "the rest of the second aggregate and the third"
    );
    // Asking for one more marks the last processed; none is there.
    assert!(tokio::time::timeout(Duration::from_millis(500), second.next())
        .await
        .is_err());
    second.close().await.expect("close");
    assert_eq!(
        store.load(&key).await.expect("load"),
        Some(Checkpoint::Sequence(puts[29].sequence_number.clone())),
        "a finished aggregate is checkpointed whole"
    );

    // After a whole aggregate, the next start is after it.
    let plain = stream.put(&[("after".into(), "after the aggregates".into())]).await;
    let mut third = builder(&stream).checkpoint_store(store).build().await.expect("build");
    let next = read(&mut third, |read| !read.is_empty()).await;
    assert_eq!(next[0].sequence_number, plain[0].sequence_number);
    assert_eq!(next[0].sub_sequence_number, None);
    third.close().await.expect("close");
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_records_outside_the_shard_are_delivered_and_flagged_unless_the_kcl_filter_drops_the_aggregate() {
    let stream = TestStream::create("kpl-range", 2).await;
    let ranges = hash_ranges(&stream).await;
    let mut shards: Vec<(&String, &(u128, u128))> = ranges.iter().collect();
    shards.sort();
    let (target, &(start, end)) = shards[0];
    // Partition keys hashing into the target shard and into the other one.
    let key_in = |inside: bool| {
        (0..)
            .map(|n| format!("key-{inside}-{n}"))
            .find(|key| (start..=end).contains(&hash_of(key, None)) == inside)
            .expect("a key")
    };
    let (inside, outside) = (key_in(true), key_in(false));
    let made = aggregate(&[vec![
        User::new(&inside, b"in-1".to_vec()),
        User::new(&outside, b"out-1".to_vec()),
        User::new(&inside, b"in-2".to_vec()),
    ]]);
    // Routed into the target shard by an explicit hash key, as a KPL with a
    // stale shard map would.
    let puts = stream.put_aggregates(&made, Some(&start.to_string())).await;
    assert_eq!(&puts[0].shard_id, target);
    let after = stream.put_marker_on_every_shard("after").await;
    let marker = after
        .iter()
        .find(|m| &m.shard_id == target)
        .expect("a marker on the target shard");

    let read_target = |consumer: Consumer| async move {
        let mut consumer = consumer;
        let records = read(&mut consumer, |read| {
            read.iter().any(|r| r.sequence_number == marker.sequence_number)
        })
        .await;
        consumer.close().await.expect("close");
        records
            .into_iter()
            .filter(|r| &*r.shard_id == target)
            .map(|r| (String::from_utf8(r.data.to_vec()).expect("utf-8"), r.aggregate))
            .collect::<Vec<_>>()
    };
    let flagged = |outside_shard| Aggregate::Member {
        count: 3,
        outside_shard,
    };
    let by_default = read_target(builder(&stream).build().await.expect("build")).await;
    assert_eq!(
        by_default,
        [
            ("in-1".into(), flagged(false)),
            ("out-1".into(), flagged(true)),
            ("in-2".into(), flagged(false)),
            ("after".into(), Aggregate::Plain),
        ],
        "every user record delivered, the one outside flagged"
    );
    let filtered = read_target(
        builder(&stream)
            .consumer_name("kcl-filter")
            .drop_aggregates_outside_shard(true)
            .build()
            .await
            .expect("build"),
    )
    .await;
    assert_eq!(
        filtered,
        [("after".into(), Aggregate::Plain)],
        "the whole aggregate dropped"
    );
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_aggregates_are_delivered_whole_and_flagged_and_de_aggregation_can_be_turned_off() {
    let stream = TestStream::create("kpl-malformed", 1).await;
    let made = aggregate(&users(1, 5, "whole"));
    let mut corrupt = made[0].data.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let mut broken = made.clone();
    broken[0].data = corrupt.clone();
    stream.put_aggregates(&broken, None).await;
    stream.put_aggregates(&made, None).await;

    let mut consumer = builder(&stream).build().await.expect("build");
    let records = read(&mut consumer, |read| read.len() == 6).await;
    consumer.close().await.expect("close");
    assert_eq!(&records[0].data[..], &corrupt[..], "as it was put");
    assert_eq!(records[0].aggregate, Aggregate::Malformed(MalformedAggregate::Digest));
    assert_eq!(records[0].sub_sequence_number, None);
    assert!(records[1..].iter().all(|r| r.sub_sequence_number.is_some()));

    let mut off = builder(&stream)
        .consumer_name("whole-records")
        .checkpoint_store(MemoryCheckpointStore::new())
        .deaggregate(false)
        .build()
        .await
        .expect("build");
    let records = read(&mut off, |read| read.len() == 2).await;
    off.close().await.expect("close");
    assert_eq!(
        &records[1].data[..],
        &made[0].data[..],
        "the aggregate as the one record it was put as"
    );
    assert!(records
        .iter()
        .all(|r| r.aggregate == Aggregate::Plain && r.sub_sequence_number.is_none()));
    stream.delete().await;
}

/// A user record as `kcpy tail` printed it.
fn parse_line(line: &str) -> (String, kcpy::SequenceNumber, Option<u64>, String) {
    let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line per record");
    (
        value["shard_id"].as_str().expect("shard").to_owned(),
        value["sequence_number"]
            .as_str()
            .expect("sequence")
            .parse()
            .expect("valid"),
        value["sub_sequence_number"].as_u64(),
        value["data"].as_str().expect("data").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_inside_aggregates_loses_nothing_and_repeats_nothing_before_the_durable_checkpoint() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let seed: u64 = std::env::var("KCPY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(14);
    let mut rng = fastrand::Rng::with_seed(seed);
    let stream = TestStream::create("kpl-crash", 2).await;
    // 23 user records per aggregate: the checkpoints every 37 records fall
    // inside aggregates.
    let puts = stream.put_aggregates(&aggregate(&users(40, 23, "crash")), None).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("crash.db").display());
    let store = SqliteCheckpointStore::connect(&url).await.expect("sqlite");
    let shards: std::collections::BTreeSet<String> = puts.iter().map(|p| p.shard_id.clone()).collect();
    let order = |shard: &str| -> Vec<(kcpy::SequenceNumber, u64, String)> {
        puts.iter()
            .filter(|p| p.shard_id == shard)
            .map(|p| {
                (
                    p.sequence_number.clone(),
                    p.sub_sequence_number,
                    String::from_utf8(p.data.clone()).expect("utf-8"),
                )
            })
            .collect()
    };

    let mut seen = std::collections::HashSet::new();
    let mut kills = 0;
    loop {
        // Where each shard must resume: right after its durable checkpoint.
        let mut resume = std::collections::BTreeMap::new();
        for shard in &shards {
            let stored = store
                .load(&CheckpointKey::new("kpl-crash", &stream.name, shard))
                .await
                .expect("load");
            let shard_order = order(shard);
            let next = match &stored {
                None => 0,
                Some(checkpoint) => {
                    let at = shard_order
                        .iter()
                        .position(|(seq, sub, _)| {
                            let last = sub + 1 == shard_order.iter().filter(|(s, _, _)| s == seq).count() as u64;
                            let text = if last { seq.to_string() } else { format!("{seq}:{sub}") };
                            text == checkpoint.to_string()
                        })
                        .expect("the checkpoint names a delivered user record");
                    at + 1
                }
            };
            resume.insert(shard.clone(), (next, shard_order));
        }
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kcpy"))
            .args([
                "tail",
                &stream.name,
                "--trim-horizon",
                "--follow",
                "--store",
                &url,
                "--consumer-name",
                "kpl-crash",
                "--checkpoint-every",
                "37",
            ])
            .args(["--endpoint", &support::endpoint()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn kcpy tail");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let kill_after = if kills < 4 { Some(rng.usize(40..400)) } else { None };
        let mut first: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        let mut printed = 0;
        let all = puts.len();
        tokio::time::timeout(LIMIT, async {
            loop {
                if kill_after.is_some_and(|n| printed >= n) || (kill_after.is_none() && seen.len() == all) {
                    break;
                }
                let line = lines.next_line().await.expect("stdout").expect("kcpy tail exited early");
                let (shard, _, sub, data) = parse_line(&line);
                assert!(sub.is_some(), "every record is a user record");
                first.entry(shard).or_insert_with(|| data.clone());
                seen.insert(data);
                printed += 1;
            }
        })
        .await
        .unwrap_or_else(|_| {
            let missing: Vec<&str> = puts
                .iter()
                .map(|p| std::str::from_utf8(&p.data).expect("utf-8"))
                .filter(|data| !seen.contains(*data))
                .take(5)
                .collect();
            panic!(
                "run {kills} (seed {seed}) printed {printed} records, {} of {all} seen in all; first missing: {missing:?}",
                seen.len()
            )
        });
        child.start_kill().expect("SIGKILL");
        child.wait().await.expect("reap");
        // Whatever it printed before dying was delivered too.
        while let Ok(Some(line)) = lines.next_line().await {
            let (shard, _, _, data) = parse_line(&line);
            first.entry(shard).or_insert_with(|| data.clone());
            seen.insert(data);
        }
        for (shard, data) in &first {
            let (next, shard_order) = &resume[shard];
            assert_eq!(
                Some(data),
                shard_order.get(*next).map(|(_, _, data)| data),
                "{shard} resumes right after its durable checkpoint (kill {kills}, seed {seed})"
            );
        }
        if kill_after.is_none() {
            break;
        }
        kills += 1;
    }
    assert_eq!(seen.len(), puts.len(), "every user record delivered at least once");
    stream.delete().await;
}
