//! Per-key lanes on the emulator: order per key under random handler delays
//! with many keys on one shard, across a reshard, and a process SIGKILLed
//! with a record running in every lane that, restarted, loses nothing, and
//! a shard handed to another member of a group while its records run.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcpy::{
    CheckpointKey, CheckpointMode, CheckpointStore, Consumer, ConsumerEvent, MemoryCheckpointStore,
    SqliteCheckpointStore, StartPosition,
};
use serde_json::Value;
use support::{Put, TestStream};
use tokio::io::{AsyncBufReadExt, BufReader};

/// `count` records over `keys` keys, data `key-k#n` with n counting per key
/// from `from[k]`.
fn counted(keys: usize, count: usize, from: &mut Vec<u64>) -> Vec<(String, String)> {
    from.resize(keys, 0);
    (0..count)
        .map(|i| {
            let key = i % keys;
            from[key] += 1;
            (format!("key-{key}"), format!("key-{key}#{}", from[key]))
        })
        .collect()
}

/// What the handlers saw, in the order they saw it.
#[derive(Default)]
struct Log {
    events: Mutex<Vec<(bool, Put)>>,
    running: Mutex<(usize, usize)>,
}

impl Log {
    fn start(&self, put: &Put) {
        self.events.lock().expect("log").push((true, put.clone()));
        let mut running = self.running.lock().expect("log");
        running.0 += 1;
        running.1 = running.1.max(running.0);
    }

    fn done(&self, put: &Put) {
        self.events.lock().expect("log").push((false, put.clone()));
        self.running.lock().expect("log").0 -= 1;
    }

    fn finished(&self) -> Vec<Put> {
        let events = self.events.lock().expect("log");
        events
            .iter()
            .filter(|(start, _)| !start)
            .map(|(_, put)| put.clone())
            .collect()
    }
}

/// Each key's records start in put order, each only after the one before
/// it finished.
fn assert_in_order_per_key(events: &[(bool, Put)]) {
    let mut last: HashMap<&str, (u64, bool)> = HashMap::new();
    for (start, put) in events {
        let n = support::counter(put);
        let key = put.partition_key.as_str();
        if *start {
            if let Some(&(previous, finished)) = last.get(key) {
                assert!(n > previous, "{key}: #{n} started after #{previous}");
                assert!(finished, "{key}: #{n} started while #{previous} was running");
            }
            last.insert(key, (n, false));
        } else {
            assert_eq!(last.get(key), Some(&(n, false)), "{key}: #{n} finished out of turn");
            last.insert(key, (n, true));
        }
    }
}

async fn consumer(stream: &TestStream) -> Consumer {
    Consumer::builder(stream.client.clone(), &stream.name)
        .checkpoint_store(MemoryCheckpointStore::new())
        .checkpoint_mode(CheckpointMode::Manual)
        .start_position(StartPosition::TrimHorizon)
        .idle_interval(Duration::from_millis(100))
        .build()
        .await
        .expect("consumer")
}

/// Handles records with a pseudo-random delay of up to 4 ms until `expected`
/// records finished, then stops the consumer.
async fn handle_until(consumer: &mut Consumer, lanes: usize, log: &Log, expected: usize) {
    let shutdown = consumer.shutdown_handle();
    let result = tokio::time::timeout(
        Duration::from_secs(120),
        consumer.for_each_by_key(lanes, |record| {
            let shutdown = &shutdown;
            async move {
                let put = support::as_put(&record);
                log.start(&put);
                let delay = support::counter(&put).wrapping_mul(2_654_435_761) % 5;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                log.done(&put);
                if log.finished().len() >= expected {
                    shutdown.shutdown();
                }
                Ok::<_, std::io::Error>(())
            }
        }),
    )
    .await
    .expect("every record is handled within two minutes");
    result.expect("the consumer stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_on_one_shard_run_concurrently_and_each_key_stays_in_order() {
    let stream = TestStream::create("lanes-order", 1).await;
    let puts = stream.put(&counted(40, 600, &mut Vec::new())).await;
    let mut consumer = consumer(&stream).await;
    let log = Log::default();
    handle_until(&mut consumer, 8, &log, puts.len()).await;
    let events = log.events.lock().expect("log").clone();
    assert_in_order_per_key(&events);
    let finished: HashSet<Put> = log.finished().into_iter().collect();
    assert_eq!(finished, puts.iter().cloned().collect::<HashSet<_>>());
    let most = log.running.lock().expect("log").1;
    assert!(most > 1, "the lanes never ran two records at once");
    assert!(most <= 8, "more records ran at once ({most}) than there are lanes");
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_reshard_a_child_shard_starts_only_after_its_parent_finished() {
    let stream = TestStream::create("lanes-reshard", 1).await;
    let mut counters = Vec::new();
    let mut puts = stream.put(&counted(20, 200, &mut counters)).await;
    let parent = stream.open_shards().await.remove(0);
    stream.split(&parent).await;
    stream.wait_resharded(&[&parent.shard_id], 2).await;
    puts.extend(stream.put(&counted(20, 200, &mut counters)).await);
    let mut consumer = consumer(&stream).await;
    let log = Log::default();
    handle_until(&mut consumer, 8, &log, puts.len()).await;
    let events = log.events.lock().expect("log").clone();
    assert_in_order_per_key(&events);
    let last_parent_done = events
        .iter()
        .rposition(|(start, put)| !start && put.shard_id == parent.shard_id)
        .expect("the parent's records");
    let first_child_start = events
        .iter()
        .position(|(start, put)| *start && put.shard_id != parent.shard_id)
        .expect("the children's records");
    assert!(
        last_parent_done < first_child_start,
        "a child's record started (#{first_child_start}) before the parent's last finished (#{last_parent_done})"
    );
    let finished: HashSet<Put> = log.finished().into_iter().collect();
    assert_eq!(finished, puts.iter().cloned().collect::<HashSet<_>>());
    stream.delete().await;
}

/// One run of `examples/by_key`: its stdout events, read as they come.
async fn run_example(
    stream: &TestStream,
    db: &str,
    lanes: usize,
    mut until: impl FnMut(&[Value]) -> bool,
    kill: bool,
) -> Vec<Value> {
    let mut child = tokio::process::Command::new(support::example::example("by_key"))
        .env("KCPY_KINESIS_ENDPOINT", support::endpoint())
        .env("KCPY_STREAM", &stream.name)
        .env("KCPY_CHECKPOINTS", db)
        .env("KCPY_LANES", lanes.to_string())
        .env("KCPY_WORK_MS", "200")
        .env("KCPY_CHECKPOINT_INTERVAL_MS", "100")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start examples/by_key");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut events = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("stdout") {
            events.push(serde_json::from_str::<Value>(&line).unwrap_or_else(|_| panic!("not JSON: {line}")));
            if until(&events) {
                return;
            }
        }
        panic!("the example exited early: {events:?}");
    })
    .await;
    read.expect("the example reached the point within two minutes");
    if kill {
        child.start_kill().expect("SIGKILL");
    } else {
        let pid = child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }
    let status = child.wait().await.expect("wait");
    assert!(kill || status.success(), "the example exited with {status}");
    events
}

fn finished_puts(events: &[Value]) -> Vec<Put> {
    events
        .iter()
        .filter(|e| e["event"] == "done")
        .map(|e| {
            let r = &e["record"];
            Put {
                shard_id: r["shard"].as_str().expect("shard").to_owned(),
                sequence_number: kcpy::SequenceNumber::parse(r["sequence_number"].as_str().expect("seq"))
                    .expect("sequence number"),
                partition_key: r["partition_key"].as_str().expect("key").to_owned(),
                data: r["data"].as_str().expect("data").to_owned(),
            }
        })
        .collect()
}

/// How many records are running now, by the events so far.
fn running(events: &[Value]) -> i64 {
    events
        .iter()
        .map(|e| match e["event"].as_str() {
            Some("start") => 1,
            Some("done") => -1,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_with_a_record_running_in_every_lane_loses_nothing_on_restart() {
    let stream = TestStream::create("lanes-kill", 1).await;
    let puts = stream.put(&counted(64, 320, &mut Vec::new())).await;
    let dir = std::env::temp_dir().join(support::unique_name("lanes-kill"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = format!("sqlite://{}", dir.join("checkpoints.db").display());
    let lanes = 8;
    // Killed once a checkpoint is stored and every lane has a record running.
    let checkpointed = Arc::new(AtomicBool::new(false));
    let watch = tokio::spawn({
        let (db, checkpointed) = (db.clone(), Arc::clone(&checkpointed));
        let key = CheckpointKey::new("by-key-example", stream.name.clone(), puts[0].shard_id.clone());
        async move {
            let store = SqliteCheckpointStore::connect(&db).await.expect("open the checkpoints");
            // The example writes no event of its flushes: the database tells.
            while store.load(&key).await.expect("read the checkpoint").is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            checkpointed.store(true, Ordering::SeqCst);
        }
    });
    let first = run_example(
        &stream,
        &db,
        lanes,
        |events| checkpointed.load(Ordering::SeqCst) && running(events) == lanes as i64,
        true,
    )
    .await;
    watch.await.expect("the watcher");
    let before = finished_puts(&first);
    let killed_running = running(&first);
    assert_eq!(killed_running, lanes as i64);
    let mut all: HashSet<Put> = before.iter().cloned().collect();
    let expected: HashSet<Put> = puts.iter().cloned().collect();
    let second = run_example(
        &stream,
        &db,
        lanes,
        |events| {
            let done = finished_puts(events);
            expected.iter().all(|p| all.contains(p) || done.contains(p))
        },
        false,
    )
    .await;
    let after = finished_puts(&second);
    all.extend(after.iter().cloned());
    assert_eq!(all, expected, "every record was handled in one run or the other");
    // The restart resumed from the checkpoint, not from the start.
    assert!(
        after.len() < puts.len(),
        "the restart handled all {} again",
        after.len()
    );
    std::fs::remove_dir_all(&dir).ok();
    stream.delete().await;
}

/// What both members of a group handled, in the order they did: the member,
/// whether the record started (or finished), the record.
type GroupLog = Arc<Mutex<Vec<(char, bool, Put)>>>;

/// A group member handling records in 8 lanes, 100 ms each, until stopped.
async fn lanes_member(
    stream: &TestStream,
    store: &MemoryCheckpointStore,
    worker: char,
    log: &GroupLog,
) -> (
    kcpy::ShutdownHandle,
    tokio::sync::broadcast::Receiver<ConsumerEvent>,
    tokio::task::JoinHandle<()>,
) {
    let mut consumer = Consumer::builder(stream.client.clone(), &stream.name)
        .consumer_name("lanes-group")
        .lease_store(store.clone())
        .worker_id(worker.to_string())
        .checkpoint_mode(CheckpointMode::Manual)
        .start_position(StartPosition::TrimHorizon)
        .lease_duration(Duration::from_secs(2))
        .lease_renew_interval(Duration::from_millis(300))
        .idle_interval(Duration::from_millis(100))
        .build()
        .await
        .expect("consumer");
    let (shutdown, events) = (consumer.shutdown_handle(), consumer.events());
    let log = Arc::clone(log);
    let run = tokio::spawn(async move {
        consumer
            .for_each_by_key(8, |record| {
                let log = Arc::clone(&log);
                async move {
                    let put = support::as_put(&record);
                    log.lock().expect("log").push((worker, true, put.clone()));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    log.lock().expect("log").push((worker, false, put));
                    Ok::<_, std::io::Error>(())
                }
            })
            .await
            .expect("the member stops cleanly");
    });
    (shutdown, events, run)
}

/// Waits until `done` holds of the log, checked every 20 ms (no event tells).
async fn wait_log(log: &GroupLog, what: &str, done: impl Fn(&[(char, bool, Put)]) -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(120), async {
        while !done(&log.lock().expect("log")) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_handed_over_with_records_running_starts_none_of_them_again_at_its_old_owner() {
    let stream = TestStream::create("lanes-group", 2).await;
    let puts = stream.put(&counted(40, 400, &mut Vec::new())).await;
    let expected: HashSet<Put> = puts.iter().cloned().collect();
    let store = MemoryCheckpointStore::new();
    let log = GroupLog::default();
    let (a_stop, mut a_events, a_run) = lanes_member(&stream, &store, 'a', &log).await;
    // B joins once A has records of both shards running.
    wait_log(&log, "A runs records of both shards", |log| {
        log.iter()
            .map(|(_, _, put)| &put.shard_id)
            .collect::<HashSet<_>>()
            .len()
            == 2
    })
    .await;
    let (b_stop, _, b_run) = lanes_member(&stream, &store, 'b', &log).await;
    wait_log(&log, "every record is handled", |log| {
        let finished: HashSet<&Put> = log.iter().filter(|(_, start, _)| !start).map(|(_, _, p)| p).collect();
        expected.iter().all(|put| finished.contains(put))
    })
    .await;
    a_stop.shutdown();
    b_stop.shutdown();
    a_run.await.expect("member a");
    b_run.await.expect("member b");

    let mut handed = Vec::new();
    while let Ok(event) = a_events.try_recv() {
        if let ConsumerEvent::LeaseHandedOver { shard_id, .. } = event {
            handed.push(shard_id);
        }
    }
    assert_eq!(handed.len(), 1, "A handed one shard of two to B: {handed:?}");
    let log = log.lock().expect("log").clone();
    let shard = &handed[0];
    let b_first = log
        .iter()
        .position(|(worker, start, put)| *worker == 'b' && *start && &put.shard_id == shard)
        .expect("B handled the shard handed to it");
    let a_late: Vec<&Put> = log[b_first..]
        .iter()
        .filter(|(worker, start, put)| *worker == 'a' && *start && &put.shard_id == shard)
        .map(|(_, _, put)| put)
        .collect();
    assert!(
        a_late.is_empty(),
        "A started records of {shard} after B took it over: {a_late:?}"
    );
    assert!(
        log[..b_first]
            .iter()
            .filter(|(worker, _, put)| *worker == 'a' && &put.shard_id == shard)
            .count()
            > 0,
        "A had handled records of {shard} before the handover"
    );
    for worker in ['a', 'b'] {
        let own: Vec<(bool, Put)> = log
            .iter()
            .filter(|(w, _, _)| *w == worker)
            .map(|(_, start, put)| (*start, put.clone()))
            .collect();
        assert_in_order_per_key(&own);
    }
    stream.delete().await;
}
