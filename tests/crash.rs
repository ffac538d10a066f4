//! A consumer process killed with SIGKILL, then restarted: nothing is lost,
//! and only records after the last durable checkpoint are delivered again.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use std::future::Future;

use kcpy::{Checkpoint, CheckpointKey, CheckpointStore, SequenceNumber, SqliteCheckpointStore};
use support::{assert_ordered_across_reshards, by_shard, Producer, Put, TestStream};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

fn spawn(stream: &str, store: &str) -> (Child, Lines<BufReader<ChildStdout>>) {
    spawn_with(stream, store, &[])
}

fn spawn_with(stream: &str, store: &str, extra: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kcpy"))
        .args([
            "tail",
            stream,
            "--trim-horizon",
            "--follow",
            "--store",
            store,
            "--consumer-name",
            "crash-test",
            "--checkpoint-every",
            "37",
        ])
        .args(["--endpoint", &support::endpoint()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn kcpy tail");
    let stdout = child.stdout.take().expect("piped stdout");
    (child, BufReader::new(stdout).lines())
}

async fn read_lines(lines: &mut Lines<BufReader<ChildStdout>>, mut done: impl FnMut(&[Put]) -> bool) -> Vec<Put> {
    let mut read = Vec::new();
    tokio::time::timeout(Duration::from_secs(180), async {
        while !done(&read) {
            let line = lines
                .next_line()
                .await
                .expect("read stdout")
                .expect("the consumer exited early");
            read.push(support::parse_json_line(&line));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {} records", read.len()));
    read
}

/// Runs a consumer process against `store`, kills it with SIGKILL mid-stream
/// and restarts it; `open` opens the same store from the test.
async fn crash_and_restart<S: CheckpointStore>(store: &str, open: impl Future<Output = S>) {
    crash_and_restart_with(store, open, &[]).await;
}

async fn crash_and_restart_with<S: CheckpointStore>(store: &str, open: impl Future<Output = S>, extra: &[&str]) {
    let stream = TestStream::create("crash", 4).await;
    let puts = stream.put_many("rec", 2000, 211).await;

    let (mut child, mut lines) = spawn_with(&stream.name, store, extra);
    let mut run1 = read_lines(&mut lines, |read| read.len() >= 700).await;
    // Kill it once a checkpoint is durable, so the restart has one to honour.
    let store_handle = open.await;
    let keys: Vec<CheckpointKey> = by_shard(&puts)
        .keys()
        .map(|shard| CheckpointKey::new("crash-test", &stream.name, shard))
        .collect();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            for key in &keys {
                if store_handle.load(key).await.expect("load").is_some() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a checkpoint becomes durable");
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reap");
    // Whatever it printed before dying was delivered too.
    while let Ok(Some(line)) = lines.next_line().await {
        run1.push(support::parse_json_line(&line));
    }

    let delivered1 = by_shard(&run1);
    let mut checkpoints: BTreeMap<String, Option<SequenceNumber>> = BTreeMap::new();
    for shard in by_shard(&puts).keys() {
        let key = CheckpointKey::new("crash-test", &stream.name, shard);
        let stored = match store_handle.load(&key).await.expect("load") {
            Some(Checkpoint::Sequence(seq)) => Some(seq),
            None => None,
            Some(other) => panic!("unexpected checkpoint {other:?}"),
        };
        if let Some(seq) = &stored {
            let last = delivered1
                .get(shard)
                .and_then(|s| s.last())
                .expect("a checkpoint implies deliveries");
            assert!(
                seq <= last,
                "{shard}: checkpoint {seq} is past the last delivered record {last}"
            );
        }
        checkpoints.insert(shard.clone(), stored);
    }
    assert!(
        checkpoints.values().any(Option::is_some),
        "some checkpoints were durable before the kill"
    );

    let markers = stream.put_marker_on_every_shard("end").await;
    let (mut child, mut lines) = spawn_with(&stream.name, store, extra);
    let mut run2 = read_lines(&mut lines, |read| markers.iter().all(|m| read.contains(m))).await;
    child.start_kill().expect("stop the second run");
    run2.retain(|r| !markers.contains(r));

    let all: HashSet<&Put> = run1.iter().chain(&run2).collect();
    assert!(
        puts.iter().all(|p| all.contains(p)),
        "every record is delivered at least once"
    );
    for (shard, seqs) in by_shard(&run2) {
        let after = checkpoints[&shard].clone();
        let expected: Vec<SequenceNumber> = by_shard(&puts)[&shard]
            .iter()
            .filter(|seq| after.as_ref().is_none_or(|c| *seq > c))
            .cloned()
            .collect();
        assert_eq!(
            seqs, expected,
            "{shard}: the restart resumes right after its checkpoint, in order"
        );
    }
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_with_sigkill_loses_nothing_and_redelivers_only_after_its_sqlite_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("kcpy.db").display());
    crash_and_restart(&url, async {
        SqliteCheckpointStore::connect(&url).await.expect("open sqlite")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_consumer_killed_with_sigkill_loses_nothing_and_resumes_after_its_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("kcpy.db").display());
    crash_and_restart_with(
        &url,
        async { SqliteCheckpointStore::connect(&url).await.expect("open sqlite") },
        &["--fan-out", "crash-efo"],
    )
    .await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_with_sigkill_loses_nothing_with_redis_checkpoints() {
    let url = support::redis_url();
    crash_and_restart(&url, async {
        kcpy::RedisCheckpointStore::connect(&url).await.expect("open redis")
    })
    .await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_with_sigkill_loses_nothing_with_mysql_checkpoints() {
    let url = support::mysql_url();
    crash_and_restart(&url, async {
        kcpy::MySqlCheckpointStore::connect(&url).await.expect("open mysql")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_during_a_reshard_loses_nothing_after_a_restart() {
    let stream = TestStream::create("crash-reshard", 2).await;
    let producer = Producer::start(&stream, 48);
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = format!("sqlite://{}", dir.path().join("kcpy.db").display());

    let (mut child, mut lines) = spawn(&stream.name, &sqlite);
    let mut run1 = read_lines(&mut lines, |read| read.len() >= 300).await;
    let parent = stream.open_shards().await.remove(0);
    stream.split(&parent).await;
    let more = read_lines(&mut lines, |read| read.len() >= 150).await;
    run1.extend(more);
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reap");
    while let Ok(Some(line)) = lines.next_line().await {
        run1.push(support::parse_json_line(&line));
    }

    let (mut child, mut lines) = spawn(&stream.name, &sqlite);
    let puts = producer.stop().await;
    let markers = stream.put_marker_on_every_shard("end").await;
    let mut run2 = read_lines(&mut lines, |read| markers.iter().all(|m| read.contains(m))).await;
    child.start_kill().expect("stop the second run");
    run2.retain(|r| !markers.contains(r));

    let shards = stream.shards().await;
    assert_ordered_across_reshards(&run1, &shards);
    assert_ordered_across_reshards(&run2, &shards);
    let all: HashSet<&Put> = run1.iter().chain(&run2).collect();
    let missing = puts.iter().filter(|p| !all.contains(p)).count();
    assert_eq!(missing, 0, "{missing} records were lost across the crash");
    let children: Vec<&str> = shards
        .iter()
        .filter(|s| s.parent_shard_id.as_deref() == Some(&parent.shard_id))
        .map(|s| s.shard_id.as_str())
        .collect();
    assert!(
        children.iter().all(|c| all.iter().any(|r| r.shard_id == *c)),
        "both children were read"
    );
    stream.delete().await;
}

/// Per shard, the stored checkpoint.
async fn checkpoints_of(
    store: &SqliteCheckpointStore,
    stream: &str,
    shards: impl Iterator<Item = &String>,
) -> BTreeMap<String, Option<SequenceNumber>> {
    let mut checkpoints = BTreeMap::new();
    for shard in shards {
        let key = CheckpointKey::new("crash-test", stream, shard);
        let stored = match store.load(&key).await.expect("load") {
            Some(Checkpoint::Sequence(seq)) => Some(seq),
            None => None,
            Some(other) => panic!("unexpected checkpoint {other:?}"),
        };
        checkpoints.insert(shard.clone(), stored);
    }
    checkpoints
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_at_seeded_random_points_lose_nothing() {
    // Reproduce a failure with KCPY_CRASH_SEED=<the seed it printed>.
    let seed: u64 = std::env::var("KCPY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_125);
    let mut rng = fastrand::Rng::with_seed(seed);
    let stream = TestStream::create("kills", 4).await;
    let puts = stream.put_many("rec", 3000, 173).await;
    let per_shard = by_shard(&puts);
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("kcpy.db").display());
    let store = SqliteCheckpointStore::connect(&url).await.expect("sqlite");

    let mut delivered: HashSet<Put> = HashSet::new();
    for kill in 0..10 {
        let before = checkpoints_of(&store, &stream.name, per_shard.keys()).await;
        let (mut child, mut lines) = spawn(&stream.name, &url);
        let at = rng.usize(1..=250);
        let mut run = read_lines(&mut lines, |read| read.len() >= at).await;
        child.start_kill().expect("SIGKILL");
        child.wait().await.expect("reap");
        while let Ok(Some(line)) = lines.next_line().await {
            run.push(support::parse_json_line(&line));
        }
        // Each run starts right after the checkpoints left by the one before.
        for (shard, seqs) in by_shard(&run) {
            let all = &per_shard[&shard];
            let expected_first = match &before[&shard] {
                Some(checkpoint) => all.iter().find(|seq| *seq > checkpoint),
                None => all.first(),
            };
            assert_eq!(
                seqs.first(),
                expected_first,
                "seed {seed}, run {kill}, {shard}: resumes right after its checkpoint"
            );
            let position = all.iter().position(|s| Some(s) == seqs.first()).expect("a put record");
            assert_eq!(
                seqs,
                all[position..position + seqs.len()],
                "seed {seed}, run {kill}, {shard}: in order"
            );
        }
        delivered.extend(run);
    }

    let markers = stream.put_marker_on_every_shard("end").await;
    let (mut child, mut lines) = spawn(&stream.name, &url);
    let last = read_lines(&mut lines, |read| markers.iter().all(|m| read.contains(m))).await;
    child.start_kill().expect("stop the last run");
    delivered.extend(last);
    let missing = puts.iter().filter(|p| !delivered.contains(p)).count();
    assert_eq!(missing, 0, "seed {seed}: records lost across ten kills");
    stream.delete().await;
}
