//! Effectively once into PostgreSQL and MariaDB: `examples/effectively_once`
//! inserts each batch of records into a table with no unique key and commits
//! the batch's checkpoint in the same transaction. Killed at seeded points,
//! or frozen past its lease in a group, it still leaves every record in the
//! table exactly once — an assertion at-least-once delivery cannot pass.
//!
#![cfg(all(feature = "postgres", feature = "mysql"))]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kcpy::{
    Checkpoint, CheckpointError, CheckpointKey, CheckpointMode, CheckpointStore, Consumer, MySqlCheckpointStore,
    PostgresCheckpointStore, StartPosition,
};
use serde_json::Value;
use sqlx::{MySqlPool, PgPool};
use support::{Put, TestStream};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The tests that freeze a process take turns: a second one frozen at the
/// same time would only slow the first's takeover.
static FREEZING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq)]
enum Backend {
    Postgres,
    MySql,
}

/// The database the example writes to, opened by the test to look.
enum Db {
    Postgres(PgPool),
    MySql(MySqlPool),
}

impl Backend {
    fn url(self) -> String {
        match self {
            Backend::Postgres => support::postgres_url(),
            Backend::MySql => support::mysql_url(),
        }
    }

    async fn open(self) -> Db {
        match self {
            Backend::Postgres => Db::Postgres(PgPool::connect(&self.url()).await.expect("PostgreSQL")),
            Backend::MySql => Db::MySql(MySqlPool::connect(&self.url()).await.expect("MariaDB")),
        }
    }
}

impl Db {
    /// Every committed row of `table`: (shard, sequence number) → how often.
    async fn rows(&self, table: &str) -> BTreeMap<(String, String), usize> {
        let query = format!("SELECT shard_id, sequence_number FROM {table}");
        let rows: Vec<(String, String)> = match self {
            Db::Postgres(pool) => sqlx::query_as(&query).fetch_all(pool).await,
            Db::MySql(pool) => sqlx::query_as(&query).fetch_all(pool).await,
        }
        // The example creates the table once it has connected.
        .unwrap_or_default();
        let mut counts = BTreeMap::new();
        for row in rows {
            *counts.entry(row).or_default() += 1;
        }
        counts
    }

    async fn committed(&self, table: &str) -> usize {
        self.rows(table).await.values().sum()
    }

    /// Whether a transaction of `worker`'s is open with rows inserted and not
    /// committed.
    async fn holds_uncommitted_rows(&self, table: &str, worker: &str) -> bool {
        match self {
            // Its connections are named after it in the URL.
            Db::Postgres(pool) => {
                let open: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1
                     AND state = 'idle in transaction' AND backend_xid IS NOT NULL",
                )
                .bind(worker)
                .fetch_one(pool)
                .await
                .expect("pg_stat_activity");
                open > 0
            }
            // InnoDB shows rows not committed to a dirty read.
            Db::MySql(pool) => {
                let count = |level: &'static str| {
                    let query = format!("SELECT count(*) FROM {table} WHERE worker = ?");
                    async move {
                        let mut connection = pool.acquire().await.expect("MariaDB");
                        sqlx::query(&format!("SET SESSION TRANSACTION ISOLATION LEVEL {level}"))
                            .execute(&mut *connection)
                            .await
                            .expect("isolation level");
                        let count: i64 = sqlx::query_scalar(&query)
                            .bind(worker)
                            .fetch_one(&mut *connection)
                            .await
                            .expect("count");
                        connection.detach();
                        count
                    }
                };
                count("READ UNCOMMITTED").await > count("READ COMMITTED").await
            }
        }
    }

    /// Whether the consumer's checkpoint rows can be locked now: no
    /// transaction is in the middle of writing one.
    async fn checkpoint_rows_free(&self, consumer: &str) -> bool {
        let sql = "SELECT shard_id FROM kcpy_checkpoints WHERE consumer_name = {} FOR UPDATE NOWAIT";
        match self {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await.expect("begin");
                let free = sqlx::query(&sql.replace("{}", "$1"))
                    .bind(consumer)
                    .fetch_all(&mut *tx)
                    .await
                    .is_ok();
                tx.rollback().await.ok();
                free
            }
            Db::MySql(pool) => {
                let mut tx = pool.begin().await.expect("begin");
                let free = sqlx::query(&sql.replace("{}", "?"))
                    .bind(consumer)
                    .fetch_all(&mut *tx)
                    .await
                    .is_ok();
                tx.rollback().await.ok();
                free
            }
        }
    }

    async fn drop_table(&self, table: &str) {
        let query = format!("DROP TABLE IF EXISTS {table}");
        match self {
            Db::Postgres(pool) => sqlx::query(&query).execute(pool).await.map(drop),
            Db::MySql(pool) => sqlx::query(&query).execute(pool).await.map(drop),
        }
        .expect("drop table");
    }
}

/// One run of the example process, and what it printed.
struct Worker {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Worker {
    fn start(envs: &[(&str, String)]) -> Self {
        let mut child = Command::new(support::example::example("effectively_once"))
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env("KCPY_KINESIS_ENDPOINT", support::endpoint())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start examples/effectively_once");
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let seen = Arc::clone(&events);
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let event = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a JSON line: {line}"));
                seen.lock().expect("events").push(event);
            }
        });
        Worker { child, events, reader }
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        let events = self.events.lock().expect("events");
        events.iter().filter(|e| e["event"] == kind).cloned().collect()
    }

    fn last_event(&self) -> Option<String> {
        let events = self.events.lock().expect("events");
        events.last().and_then(|e| e["event"].as_str()).map(str::to_owned)
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// SIGKILL, and what it printed up to then.
    async fn kill(mut self) -> Self {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("wait");
        (&mut self.reader).await.ok();
        self
    }

    /// SIGTERM: the example stops gracefully and must exit cleanly.
    async fn stop(mut self) {
        self.signal("TERM");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the worker stops within 30 s of SIGTERM")
            .expect("wait");
        assert!(status.success(), "the worker exited with {status}");
    }
}

/// Waits for `done`, polling every 10 ms, up to `limit`.
async fn until<F: std::future::Future<Output = bool>>(limit: Duration, what: &str, mut done: impl FnMut() -> F) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The table holds every put record exactly once, and nothing else.
async fn assert_exactly_once(db: &Db, table: &str, puts: &[Put]) {
    let rows = db.rows(table).await;
    let repeated: Vec<_> = rows.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "records applied more than once: {repeated:?}");
    let expected: HashSet<(String, String)> = puts
        .iter()
        .map(|p| (p.shard_id.clone(), p.sequence_number.to_string()))
        .collect();
    let applied: HashSet<(String, String)> = rows.into_keys().collect();
    let missing: Vec<_> = expected.difference(&applied).collect();
    assert!(
        missing.is_empty(),
        "{} records never applied: {missing:?}",
        missing.len()
    );
    let unknown: Vec<_> = applied.difference(&expected).collect();
    assert!(unknown.is_empty(), "rows of records never put: {unknown:?}");
}

/// A 2-shard stream, one shard split half way through the puts: 300 records.
async fn resharded_stream(prefix: &str) -> (TestStream, Vec<Put>) {
    let stream = TestStream::create(prefix, 2).await;
    let mut puts = stream.put_many("before", 150, 24).await;
    let first = stream.open_shards().await.remove(0);
    stream.split(&first).await;
    puts.extend(stream.put_many("after", 150, 24).await);
    (stream, puts)
}

async fn killed_at_ten_seeded_points(backend: Backend, seed: u64) {
    let seed = std::env::var("KCPY_TEST_SEED").map_or(seed, |s| s.parse().expect("KCPY_TEST_SEED"));
    let mut rng = fastrand::Rng::with_seed(seed);
    let (stream, puts) = resharded_stream("eo-kill").await;
    let table = support::unique_name("eo_kill").replace('-', "_");
    let db = backend.open().await;
    let envs = [
        ("KCPY_STREAM", stream.name.clone()),
        ("KCPY_DATABASE_URL", backend.url()),
        ("KCPY_TABLE", table.clone()),
        ("KCPY_CONSUMER", support::unique_name("eo-kill")),
        ("KCPY_BATCH", "10".to_owned()),
        // Transactions stay open a while, so that kills land inside them.
        ("KCPY_WORK_MS", "25".to_owned()),
    ];

    let mut inside_a_transaction = 0;
    for point in 0..10 {
        let worker = Worker::start(&envs);
        // Past this point's share of the records, somewhere in a batch.
        let threshold = db.committed(&table).await + 1 + rng.usize(0..puts.len() / 12);
        let (db, table) = (&db, &table);
        until(
            Duration::from_secs(120),
            "the worker commits more rows",
            move || async move { db.committed(table).await >= threshold },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..40))).await;
        let worker = worker.kill().await;
        if worker.last_event().as_deref() == Some("working") {
            inside_a_transaction += 1;
        }
        let committed = db.committed(table).await;
        eprintln!("seed {seed}: kill {point} after {committed} rows");
        assert!(
            committed < puts.len(),
            "seed {seed}: all done before kill {point}; the test needs more records"
        );
    }
    assert!(
        inside_a_transaction >= 3,
        "seed {seed}: only {inside_a_transaction} of 10 kills landed in an open transaction"
    );

    let worker = Worker::start(&envs);
    let (db_ref, table_ref, total) = (&db, &table, puts.len());
    until(
        Duration::from_secs(120),
        "every record is applied",
        move || async move { db_ref.rows(table_ref).await.len() >= total },
    )
    .await;
    worker.stop().await;
    assert_exactly_once(&db, &table, &puts).await;
    db.drop_table(&table).await;
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_and_checkpoints_killed_at_ten_points_hold_every_record_exactly_once() {
    killed_at_ten_seeded_points(Backend::Postgres, 17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_rows_and_checkpoints_killed_at_ten_points_hold_every_record_exactly_once() {
    killed_at_ten_seeded_points(Backend::MySql, 29).await;
}

async fn frozen_past_its_lease(backend: Backend) {
    let _turn = FREEZING.lock().await;
    let stream = TestStream::create("eo-freeze", 2).await;
    let puts = stream.put_many("r", 200, 24).await;
    let table = support::unique_name("eo_freeze").replace('-', "_");
    let consumer = support::unique_name("eo-freeze");
    let db = backend.open().await;
    let url = |worker: &str| match backend {
        Backend::Postgres => format!("{}?application_name={worker}", backend.url()),
        Backend::MySql => backend.url(),
    };
    let envs = |worker: &str, work_ms: u64| {
        vec![
            ("KCPY_STREAM", stream.name.clone()),
            ("KCPY_DATABASE_URL", url(worker)),
            ("KCPY_TABLE", table.clone()),
            ("KCPY_CONSUMER", consumer.clone()),
            ("KCPY_WORKER", worker.to_owned()),
            ("KCPY_LEASE_MS", "3000".to_owned()),
            ("KCPY_BATCH", "10".to_owned()),
            ("KCPY_WORK_MS", work_ms.to_string()),
        ]
    };
    // a works slowly, so that it is frozen with a transaction open; b joins
    // once a holds shards, else b, fast, could apply everything alone.
    let a = Worker::start(&envs("worker-a", 400));
    let a_ref = &a;
    until(
        Duration::from_secs(60),
        "worker-a works on a batch",
        move || async move { !a_ref.events("working").is_empty() },
    )
    .await;
    let b = Worker::start(&envs("worker-b", 0));

    let frozen_shard = loop {
        let a = &a;
        until(
            Duration::from_secs(60),
            "worker-a is in the middle of a batch",
            move || async move { a.last_event().as_deref() == Some("working") },
        )
        .await;
        a.signal("STOP");
        // Frozen with its rows inserted, before its checkpoint is written.
        if db.checkpoint_rows_free(&consumer).await && db.holds_uncommitted_rows(&table, "worker-a").await {
            let working = a.events("working");
            break working.last().expect("a working event")["shard"].clone();
        }
        a.signal("CONT");
        until(Duration::from_secs(10), "worker-a moves on", move || async move {
            a.last_event().as_deref() != Some("working")
        })
        .await;
    };

    let (db_ref, table_ref, total) = (&db, &table, puts.len());
    until(
        Duration::from_secs(120),
        "worker-b applies every record",
        move || async move { db_ref.rows(table_ref).await.len() >= total },
    )
    .await;
    assert!(
        db.holds_uncommitted_rows(&table, "worker-a").await,
        "worker-a's transaction is still open"
    );
    a.signal("CONT");
    let a_ref = &a;
    until(Duration::from_secs(30), "worker-a's commit fails", move || async move {
        !a_ref.events("lease_lost").is_empty()
    })
    .await;
    let lost = a.events("lease_lost");
    assert_eq!(lost[0]["batch"]["shard"], frozen_shard, "the frozen batch is refused");
    assert!(
        b.events("committed")
            .iter()
            .any(|e| e["batch"]["shard"] == frozen_shard),
        "worker-b took over the frozen shard"
    );
    a.stop().await;
    b.stop().await;
    assert_exactly_once(&db, &table, &puts).await;

    // worker-b's checkpoints stand: each shard's last record.
    let store: Arc<dyn CheckpointStore> = match backend {
        Backend::Postgres => Arc::new(PostgresCheckpointStore::connect(&backend.url()).await.expect("store")),
        Backend::MySql => Arc::new(MySqlCheckpointStore::connect(&backend.url()).await.expect("store")),
    };
    for (shard, sequences) in support::by_shard(&puts) {
        let key = CheckpointKey::new(&consumer, &stream.name, &shard);
        let stored = store.load(&key).await.expect("load");
        let last = sequences.into_iter().max().expect("records");
        assert_eq!(stored, Some(Checkpoint::Sequence(last)), "checkpoint of {shard}");
    }
    db.drop_table(&table).await;
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_worker_frozen_past_its_lease_cannot_commit_its_open_transaction() {
    frozen_past_its_lease(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_worker_frozen_past_its_lease_cannot_commit_its_open_transaction() {
    frozen_past_its_lease(Backend::MySql).await;
}

/// In-process: a checkpoint the consumer was asked to write in its own
/// batches is older than one committed in a transaction since; the
/// consumer's write is superseded, never moves the checkpoint back, and a
/// new consumer resumes after the committed one.
#[tokio::test]
async fn the_consumers_own_writes_never_move_a_committed_checkpoint_back() {
    let stream = TestStream::create("eo-own", 1).await;
    let puts = stream.put_many("r", 20, 4).await;
    let store = PostgresCheckpointStore::connect(&support::postgres_url())
        .await
        .expect("PostgreSQL");
    let name = support::unique_name("eo-own");
    let consumer = |store: PostgresCheckpointStore| {
        Consumer::builder(support::client(), &stream.name)
            .consumer_name(&name)
            .checkpoint_store(store)
            .checkpoint_mode(CheckpointMode::Manual)
            // Only close flushes the consumer's own writes.
            .checkpoint_interval(Duration::from_secs(3600))
            .checkpoint_every(1_000_000)
            .start_position(StartPosition::TrimHorizon)
            .build()
    };
    let mut first = consumer(store.clone()).await.expect("build");
    let mut records = Vec::new();
    while records.len() < puts.len() {
        records.extend(first.next_batch(100).await.expect("records"));
    }
    let checkpointer = first.checkpointer();
    for record in &records[..=4] {
        checkpointer.checkpoint(record).expect("checkpoint");
    }
    let tx = store.pool().begin().await.expect("begin");
    store.commit(tx, &checkpointer, &records[14]).await.expect("commit");
    // Older than what the transaction wrote: refused before it is written.
    let tx = store.pool().begin().await.expect("begin");
    let older = store.commit(tx, &checkpointer, &records[9]).await;
    assert!(
        matches!(older, Err(kcpy::Error::Checkpoint(CheckpointError::Conflict { .. }))),
        "{older:?}"
    );
    first.close().await.expect("close flushes without a conflict");

    let key = CheckpointKey::new(&name, &stream.name, &*records[14].shard_id);
    let stored = store.load(&key).await.expect("load");
    assert_eq!(stored, Some(Checkpoint::Sequence(records[14].sequence_number.clone())));

    let mut second = consumer(store).await.expect("build");
    let next = second.next().await.expect("a record");
    assert_eq!(
        next.sequence_number, records[15].sequence_number,
        "resumes after the commit"
    );
    second.close().await.expect("close");
    stream.delete().await;
}

/// The consumer's store, with each save held until the test lets it go.
#[derive(Debug)]
struct Gated {
    inner: PostgresCheckpointStore,
    entered: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Semaphore>,
}

#[async_trait::async_trait]
impl CheckpointStore for Gated {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        self.inner.load(key).await
    }

    async fn save(&self, key: &CheckpointKey, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        self.entered.notify_one();
        self.release.acquire().await.expect("gate open").forget();
        self.inner.save(key, checkpoint).await
    }
}

/// In-process: the consumer's own save of an older checkpoint is already on
/// its way when a transaction commits a later one; the save finds the later
/// one stored and stands down — no conflict, no error, nothing moved back.
#[tokio::test]
async fn a_save_overtaken_by_a_committed_transaction_is_superseded_not_a_conflict() {
    let stream = TestStream::create("eo-race", 1).await;
    let puts = stream.put_many("r", 20, 4).await;
    let store = PostgresCheckpointStore::connect(&support::postgres_url())
        .await
        .expect("PostgreSQL");
    let name = support::unique_name("eo-race");
    let entered = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let mut consumer = Consumer::builder(support::client(), &stream.name)
        .consumer_name(&name)
        .checkpoint_store(Gated {
            inner: store.clone(),
            entered: Arc::clone(&entered),
            release: Arc::clone(&release),
        })
        .checkpoint_mode(CheckpointMode::Manual)
        .start_position(StartPosition::TrimHorizon)
        .build()
        .await
        .expect("build");
    let mut records = Vec::new();
    while records.len() < puts.len() {
        records.extend(consumer.next_batch(100).await.expect("records"));
    }
    let checkpointer = consumer.checkpointer();
    for record in &records[..=4] {
        checkpointer.checkpoint(record).expect("checkpoint");
    }
    let flushing = checkpointer.clone();
    let flush = tokio::spawn(async move { flushing.flush().await });
    entered.notified().await;

    let tx = store.pool().begin().await.expect("begin");
    store.commit(tx, &checkpointer, &records[14]).await.expect("commit");
    release.add_permits(1000);
    flush
        .await
        .expect("flush task")
        .expect("the overtaken save is not an error");
    assert!(consumer.error().is_none(), "{:?}", consumer.error());

    let key = CheckpointKey::new(&name, &stream.name, &*records[14].shard_id);
    let stored = store.load(&key).await.expect("load");
    assert_eq!(stored, Some(Checkpoint::Sequence(records[14].sequence_number.clone())));
    consumer.close().await.expect("close");
    stream.delete().await;
}
