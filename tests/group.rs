//! Consumer groups across processes: `kcpy tail --group` workers sharing a
//! 6-shard stream through PostgreSQL, MySQL (MariaDB) or DynamoDB (dynalite)
//! leases, with workers killed, paused, added and restarted.
#![cfg(all(feature = "postgres", feature = "dynamodb", feature = "mysql"))]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use kcpy::{Checkpoint, DynamoDbCheckpointStore, Lease, LeaseStore, MySqlCheckpointStore, PostgresCheckpointStore};
use support::{Producer, Put, TestStream};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

const SHARDS: i32 = 6;
const LEASE: Duration = Duration::from_millis(3000);
const RENEW: Duration = Duration::from_millis(500);
const DYNAMODB_TABLE: &str = "kcpy-group-tests";

#[derive(Debug, Clone, Copy)]
enum Backend {
    Postgres,
    MySql,
    DynamoDb,
}

impl Backend {
    fn store_url(self) -> String {
        match self {
            Backend::Postgres => support::postgres_url(),
            Backend::MySql => support::mysql_url(),
            Backend::DynamoDb => format!("dynamodb://{DYNAMODB_TABLE}"),
        }
    }

    /// The same store, opened by the test to watch the leases.
    async fn open(self) -> Arc<dyn LeaseStore> {
        match self {
            Backend::Postgres => Arc::new(
                PostgresCheckpointStore::connect(&support::postgres_url())
                    .await
                    .expect("PostgreSQL (scripts/services starts it)"),
            ),
            Backend::MySql => Arc::new(
                MySqlCheckpointStore::connect(&support::mysql_url())
                    .await
                    .expect("MariaDB (scripts/services starts it)"),
            ),
            Backend::DynamoDb => {
                let store = DynamoDbCheckpointStore::new(support::dynamodb_client(), DYNAMODB_TABLE);
                store.create_table().await.expect("dynalite (scripts/test starts it)");
                Arc::new(store)
            }
        }
    }
}

/// What every worker printed: (worker, record) in arrival order, and the
/// distinct records.
#[derive(Debug, Default)]
struct Delivered {
    all: Vec<(usize, Put)>,
    distinct: HashSet<Put>,
}

struct Worker {
    id: String,
    child: Child,
    /// Its log (stderr), as it arrives.
    log: watch::Receiver<String>,
}

/// Worker processes of one consumer group on one fresh stream.
struct Group {
    stream: TestStream,
    backend: Backend,
    consumer: String,
    store: Arc<dyn LeaseStore>,
    delivered: watch::Sender<Delivered>,
    workers: Vec<Worker>,
}

impl Group {
    async fn start(backend: Backend, workers: usize) -> Self {
        let stream = TestStream::create("group", SHARDS).await;
        let mut group = Self {
            consumer: support::unique_name("group"),
            stream,
            backend,
            store: backend.open().await,
            delivered: watch::Sender::new(Delivered::default()),
            workers: Vec::new(),
        };
        for _ in 0..workers {
            group.spawn();
        }
        group
    }

    /// Starts the next worker process; returns its index.
    fn spawn(&mut self) -> usize {
        let index = self.workers.len();
        let id = format!("worker-{index}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kcpy"))
            .args(["tail", &self.stream.name, "--trim-horizon", "--follow"])
            .args(["--store", &self.backend.store_url(), "--consumer-name", &self.consumer])
            .args(["--group", "--worker-id", &id, "--checkpoint-every", "10"])
            .args(["--lease-duration-ms", &LEASE.as_millis().to_string()])
            .args(["--lease-renew-ms", &RENEW.as_millis().to_string()])
            .args(["--endpoint", &support::endpoint()])
            .env("RUST_LOG", "kcpy=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn kcpy tail");
        let stdout = child.stdout.take().expect("piped stdout");
        let delivered = self.delivered.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let put = support::parse_json_line(&line);
                delivered.send_modify(|d| {
                    d.distinct.insert(put.clone());
                    d.all.push((index, put));
                });
            }
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let (log_tx, log) = watch::channel(String::new());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log_tx.send_modify(|log| {
                    log.push_str(&line);
                    log.push('\n');
                });
            }
        });
        self.workers.push(Worker { id, child, log });
        index
    }

    fn pid(&self, worker: usize) -> String {
        self.workers[worker].child.id().expect("running").to_string()
    }

    fn signal(&self, worker: usize, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid(worker)])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    async fn leases(&self) -> Vec<Lease> {
        self.store
            .list_leases(&self.consumer, &self.stream.name)
            .await
            .expect("list leases")
    }

    /// Polls the store (it has no notifications) until `done` holds.
    async fn wait_leases(&self, what: &str, done: impl Fn(&[Lease]) -> bool) -> Vec<Lease> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let leases = self.leases().await;
            if done(&leases) {
                return leases;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}: {}",
                describe(&leases)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the unfinished leases are spread within one of even over
    /// exactly the `workers` given, with no handoff pending.
    async fn wait_balanced(&self, workers: &[usize]) -> Vec<Lease> {
        let ids: Vec<&str> = workers.iter().map(|&w| self.workers[w].id.as_str()).collect();
        self.wait_leases(&format!("balanced over {ids:?}"), |leases| {
            let counts = owners(leases);
            let all_owned = leases
                .iter()
                .filter(|l| l.checkpoint != Some(Checkpoint::ShardEnd))
                .all(|l| l.owner.as_deref().is_some_and(|o| ids.contains(&o)));
            let per_worker: Vec<usize> = ids.iter().map(|id| counts.get(*id).copied().unwrap_or(0)).collect();
            let (min, max) = (per_worker.iter().min(), per_worker.iter().max());
            // No handoff asked for and not yet done: the spread is settled.
            let settled = leases.iter().all(|l| l.handoff_to.is_none());
            !leases.is_empty()
                && all_owned
                && settled
                && min.zip(max).is_some_and(|(min, max)| max - min <= 1 && *min > 0)
        })
        .await
    }

    async fn wait_delivered(&self, puts: &[Put]) {
        let mut delivered = self.delivered.subscribe();
        let wanted: HashSet<&Put> = puts.iter().collect();
        let outcome = tokio::time::timeout(
            Duration::from_secs(120),
            delivered.wait_for(|d| d.distinct.len() >= wanted.len() && wanted.iter().all(|p| d.distinct.contains(*p))),
        )
        .await;
        if outcome.is_err() {
            let d = self.delivered.borrow();
            let missing = wanted.iter().filter(|p| !d.distinct.contains(**p)).count();
            panic!(
                "{missing} of {} records were never delivered; leases: {}",
                puts.len(),
                describe(&self.leases().await)
            );
        }
    }

    /// Waits until `worker` delivered at least `count` records.
    async fn wait_worker_delivered(&self, worker: usize, count: usize) {
        let mut delivered = self.delivered.subscribe();
        tokio::time::timeout(
            Duration::from_secs(60),
            delivered.wait_for(|d| d.all.iter().filter(|(w, _)| *w == worker).count() >= count),
        )
        .await
        .unwrap_or_else(|_| panic!("worker {worker} delivered fewer than {count} records"))
        .expect("delivery watch");
    }

    fn all_delivered(&self) -> Vec<(usize, Put)> {
        self.delivered.borrow().all.clone()
    }

    /// Stops every worker gracefully and waits for them.
    async fn stop(mut self) {
        for worker in 0..self.workers.len() {
            if matches!(self.workers[worker].child.try_wait(), Ok(None)) {
                self.signal(worker, "INT");
            }
        }
        for worker in &mut self.workers {
            let _ = tokio::time::timeout(Duration::from_secs(30), worker.child.wait()).await;
        }
        self.stream.delete().await;
    }
}

/// Unfinished leases per owner.
fn owners(leases: &[Lease]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for lease in leases.iter().filter(|l| l.checkpoint != Some(Checkpoint::ShardEnd)) {
        if let Some(owner) = &lease.owner {
            *counts.entry(owner.clone()).or_default() += 1;
        }
    }
    counts
}

fn describe(leases: &[Lease]) -> String {
    leases
        .iter()
        .map(|l| {
            format!(
                "{}={}@{}{}",
                l.key.shard_id,
                l.owner.as_deref().unwrap_or("-"),
                l.epoch,
                if l.checkpoint == Some(Checkpoint::ShardEnd) {
                    " (finished)"
                } else {
                    ""
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per shard, the records in the order they arrived (from any worker) must
/// have strictly rising sequence numbers: one reader at a time, and nothing
/// read again.
fn assert_one_reader_at_a_time_and_no_replay(delivered: &[(usize, Put)]) {
    let mut last: BTreeMap<&str, (usize, &Put)> = BTreeMap::new();
    for (worker, put) in delivered {
        if let Some((previous_worker, previous)) = last.insert(&put.shard_id, (*worker, put)) {
            assert!(
                put.sequence_number > previous.sequence_number,
                "{}: worker {worker} delivered {} after worker {previous_worker} delivered {}",
                put.shard_id,
                put.sequence_number,
                previous.sequence_number
            );
        }
    }
}

fn slow_producer(stream: &TestStream) -> Producer {
    Producer::paced(stream, 16, 10, Duration::from_millis(100))
}

async fn workers_share_the_shards_one_owner_at_a_time(backend: Backend) {
    let group = Group::start(backend, 3).await;
    let puts = group.stream.put_many("rec", 600, 50).await;
    let leases = group.wait_balanced(&[0, 1, 2]).await;
    group.wait_delivered(&puts).await;
    assert_eq!(
        leases.len(),
        SHARDS as usize,
        "one lease per shard: {}",
        describe(&leases)
    );
    let counts = owners(&leases);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [2, 2, 2], "{counts:?}");
    let delivered = group.all_delivered();
    assert_one_reader_at_a_time_and_no_replay(&delivered);
    assert_eq!(delivered.len(), puts.len(), "each record delivered once");
    group.stop().await;
}

async fn a_killed_workers_shards_are_taken_over_within_the_bound(backend: Backend) {
    let mut group = Group::start(backend, 3).await;
    let producer = slow_producer(&group.stream);
    group.wait_balanced(&[0, 1, 2]).await;
    group.wait_worker_delivered(0, 20).await;
    group.workers[0].child.start_kill().expect("SIGKILL");
    let killed = Instant::now();
    group
        .wait_leases("the killed worker's leases are taken", |leases| {
            leases
                .iter()
                .all(|l| l.owner.as_deref().is_some_and(|o| o != "worker-0"))
        })
        .await;
    let took = killed.elapsed();
    eprintln!("{backend:?}: the killed worker's shards were taken over after {took:?}");
    // Expiry needs the lease duration unchanged, seen on rounds RENEW apart;
    // allow two more rounds and the store's round trips on a loaded machine.
    let bound = LEASE + RENEW * 2;
    assert!(
        took <= bound + Duration::from_secs(3),
        "takeover took {took:?}, bound {bound:?}"
    );
    group.wait_balanced(&[1, 2]).await;
    let puts = producer.stop().await;
    group.wait_delivered(&puts).await;
    group.stop().await;
}

async fn a_paused_worker_is_fenced_out_and_stops_its_lost_shards(backend: Backend) {
    let group = Group::start(backend, 3).await;
    let producer = slow_producer(&group.stream);
    let before = group.wait_balanced(&[0, 1, 2]).await;
    let lost: Vec<String> = before
        .iter()
        .filter(|l| l.owner.as_deref() == Some("worker-0"))
        .map(|l| l.key.shard_id.clone())
        .collect();
    // Records of each of its shards after the snapshot: it holds them now.
    let mark = group.delivered.borrow().all.len();
    let mut delivered = group.delivered.subscribe();
    let holds = delivered.wait_for(|d| {
        lost.iter()
            .all(|shard| d.all[mark..].iter().any(|(w, p)| *w == 0 && &p.shard_id == shard))
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(60), holds).await.is_ok(),
        "worker-0 never read {lost:?}"
    );
    drop(delivered);
    group.signal(0, "STOP");
    let after = group
        .wait_leases("the paused worker's leases are taken", |leases| {
            leases
                .iter()
                .all(|l| l.owner.as_deref().is_some_and(|o| o != "worker-0"))
        })
        .await;
    let taken_at = group.all_delivered().len();
    group.signal(0, "CONT");
    // Its next renewal or checkpoint write is refused: it stops those shards.
    let mut log = group.workers[0].log.clone();
    let reported = tokio::time::timeout(
        Duration::from_secs(30),
        log.wait_for(|log| lost.iter().all(|s| log.contains(s.as_str()))),
    )
    .await
    .is_ok();
    assert!(
        reported,
        "worker-0 never reported losing {lost:?}: {}",
        group.workers[0].log.borrow().as_str()
    );
    let log_text = group.workers[0].log.borrow().clone();
    assert!(log_text.contains("lease lost"), "{log_text}");
    let puts = producer.stop().await;
    group.wait_delivered(&puts).await;
    // Nothing it wrote after waking went back past the new owners' progress:
    // stores refuse a backwards checkpoint, so each is at least where the
    // new owner found it.
    let end = group.leases().await;
    for lease in &after {
        let now = end.iter().find(|l| l.key == lease.key).expect("lease");
        assert!(now.checkpoint >= lease.checkpoint, "{}", lease.key);
        assert!(now.epoch >= lease.epoch, "{}", lease.key);
    }
    assert!(taken_at > 0);
    group.stop().await;
}

async fn a_joining_worker_gets_its_share_and_nothing_is_replayed(backend: Backend) {
    let mut group = Group::start(backend, 2).await;
    let producer = slow_producer(&group.stream);
    group.wait_balanced(&[0, 1]).await;
    group.wait_worker_delivered(1, 20).await;
    group.spawn();
    group.wait_balanced(&[0, 1, 2]).await;
    group.wait_worker_delivered(2, 10).await;
    let puts = producer.stop().await;
    group.wait_delivered(&puts).await;
    assert_one_reader_at_a_time_and_no_replay(&group.all_delivered());
    group.stop().await;
}

async fn a_rolling_restart_loses_nothing(backend: Backend) {
    let mut group = Group::start(backend, 3).await;
    let producer = slow_producer(&group.stream);
    group.wait_balanced(&[0, 1, 2]).await;
    let mut live = vec![0, 1, 2];
    for old in 0..3 {
        group.wait_worker_delivered(live[live.len() - 1], 5).await;
        group.signal(old, "INT");
        let status = tokio::time::timeout(Duration::from_secs(30), group.workers[old].child.wait())
            .await
            .expect("a worker stops within 30 s of SIGINT")
            .expect("wait");
        assert!(status.success(), "worker {old} exited with {status}");
        let new = group.spawn();
        live.retain(|&w| w != old);
        live.push(new);
        group.wait_balanced(&live).await;
    }
    let puts = producer.stop().await;
    group.wait_delivered(&puts).await;
    group.stop().await;
}

async fn parents_are_read_before_children_across_workers_and_finished_leases_are_deleted(backend: Backend) {
    let group = Group::start(backend, 2).await;
    let producer = slow_producer(&group.stream);
    group.wait_balanced(&[0, 1]).await;
    group.wait_worker_delivered(0, 20).await;
    let parent = group.stream.open_shards().await.remove(0);
    group.stream.split(&parent).await;
    let shards = group.stream.shards().await;
    let children: Vec<String> = shards
        .iter()
        .filter(|s| s.parent_shard_id.as_deref() == Some(parent.shard_id.as_str()))
        .map(|s| s.shard_id.clone())
        .collect();
    assert_eq!(children.len(), 2);
    let mut delivered = group.delivered.subscribe();
    tokio::time::timeout(
        Duration::from_secs(90),
        delivered.wait_for(|d| children.iter().all(|c| d.distinct.iter().any(|p| &p.shard_id == c))),
    )
    .await
    .unwrap_or_else(|_| panic!("the children {children:?} were never read"))
    .expect("delivery watch");
    drop(delivered);

    // Both children have checkpoints: the finished parent's lease goes, and
    // a worker that joins afterwards neither recreates nor reads it again.
    group
        .wait_leases("the finished parent's lease is deleted", |leases| {
            leases.iter().all(|l| l.key.shard_id != parent.shard_id)
        })
        .await;
    let mut group = group;
    let joined = group.spawn();
    group.wait_balanced(&[0, 1, joined]).await;
    let puts = producer.stop().await;
    group.wait_delivered(&puts).await;
    assert!(
        group.leases().await.iter().all(|l| l.key.shard_id != parent.shard_id),
        "the parent's lease was not created again"
    );
    assert_one_reader_at_a_time_and_no_replay(&group.all_delivered());
    let merged: Vec<Put> = group.all_delivered().into_iter().map(|(_, put)| put).collect();
    support::assert_ordered_across_reshards(&merged, &shards);
    group.stop().await;
}

macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Postgres).await;
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::MySql).await;
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::DynamoDb).await;
                }
            )*
        }
    };
}

on_every_backend!(
    workers_share_the_shards_one_owner_at_a_time,
    a_killed_workers_shards_are_taken_over_within_the_bound,
    a_paused_worker_is_fenced_out_and_stops_its_lost_shards,
    a_joining_worker_gets_its_share_and_nothing_is_replayed,
    a_rolling_restart_loses_nothing,
    parents_are_read_before_children_across_workers_and_finished_leases_are_deleted,
);
