//! Through the reader seam: a scripted reader in place of polling, to show
//! that what the consumer does with what is read holds for any reader.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::lineage::Start;
use crate::read::{ReadShard, ShardEvent, ShardReader};

enum Scripted {
    Records(Vec<u64>),
    End(&'static [&'static str]),
    Fail(fn() -> Error),
}

/// A shard started: where, and the checkpoints stored at that moment.
type Started = (String, IteratorPosition, HashMap<String, Checkpoint>);

/// Plays a script per shard, then waits to be cancelled.
#[derive(Default)]
struct ScriptedReader {
    scripts: Mutex<HashMap<String, VecDeque<Scripted>>>,
    /// Per shard started: where, and the checkpoints stored at that moment.
    started: Mutex<Vec<Started>>,
    store: Option<Arc<TestStore>>,
    /// Reads that ended, returned or dropped (an aborted task).
    stopped: Arc<(AtomicUsize, tokio::sync::Notify)>,
}

/// Counts a read as stopped however it ends.
struct Stopped(Arc<(AtomicUsize, tokio::sync::Notify)>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0 .0.fetch_add(1, Ordering::SeqCst);
        self.0 .1.notify_waiters();
    }
}

impl ScriptedReader {
    /// Waits until `n` reads have stopped (an aborted task stops once the
    /// runtime drops it); a minute of virtual time at most.
    async fn stopped(&self, n: usize) -> usize {
        let wait = async {
            loop {
                let notified = self.stopped.1.notified();
                if self.stopped.0.load(Ordering::SeqCst) >= n {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(60), wait).await;
        self.stopped.0.load(Ordering::SeqCst)
    }
}

impl ScriptedReader {
    fn new(store: Option<&Arc<TestStore>>, scripts: Vec<(&str, Vec<Scripted>)>) -> Arc<Self> {
        Arc::new(Self {
            scripts: Mutex::new(
                scripts
                    .into_iter()
                    .map(|(shard, steps)| (shard.to_owned(), steps.into()))
                    .collect(),
            ),
            store: store.cloned(),
            ..Self::default()
        })
    }

    fn started(&self) -> Vec<Started> {
        self.started.lock().expect("lock").clone()
    }
}

#[async_trait]
impl ShardReader for ScriptedReader {
    async fn prepare(&self, _: &StreamRef, _: &[Start]) -> Result<(), Error> {
        Ok(())
    }

    async fn read(&self, shard: ReadShard) -> Result<(), Error> {
        let _stopped = Stopped(Arc::clone(&self.stopped));
        let saved = self
            .store
            .as_ref()
            .map(|store| store.saved.lock().expect("lock").clone())
            .unwrap_or_default();
        self.started
            .lock()
            .expect("lock")
            .push((shard.shard_id.to_string(), shard.position.clone(), saved));
        let script = self
            .scripts
            .lock()
            .expect("lock")
            .remove(&*shard.shard_id)
            .unwrap_or_default();
        for step in script {
            match step {
                Scripted::Records(numbers) => {
                    let records = numbers.iter().map(|&n| record(&shard.shard_id, n)).collect();
                    if shard.tx.send(ShardEvent::Records(records)).await.is_err() {
                        return Ok(());
                    }
                }
                Scripted::End(children) => {
                    let children = children
                        .iter()
                        .map(|child| ShardInfo {
                            shard_id: (*child).to_owned(),
                            parent_shard_id: Some(shard.shard_id.to_string()),
                            adjacent_parent_shard_id: None,
                            ending_sequence_number: None,
                            hash_range: None,
                        })
                        .collect();
                    let _ = shard.tx.send(ShardEvent::End(children)).await;
                    return Ok(());
                }
                Scripted::Fail(make) => return Err(make()),
            }
        }
        shard.cancel.cancelled().await;
        Ok(())
    }
}

/// A listing for the consumer; the scripted reader does the reading.
fn listing(shards: Vec<(&str, &[&str], bool)>) -> Arc<FakeKinesis> {
    FakeKinesis::with_lineage(
        shards
            .into_iter()
            .map(|(id, parents, closed)| (id, parents, closed, Vec::new()))
            .collect(),
    )
}

#[tokio::test(start_paused = true)]
async fn with_any_reader_a_child_starts_only_once_its_parents_end_is_checkpointed() {
    let api = listing(vec![("A", &[], true), ("B", &["A"], false)]);
    let store = Arc::new(TestStore::default());
    let reader = ScriptedReader::new(
        Some(&store),
        vec![
            ("A", vec![Scripted::Records(vec![1, 2]), Scripted::End(&["B"])]),
            ("B", vec![Scripted::Records(vec![3, 4])]),
        ],
    );
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .reader(Arc::clone(&reader) as _)
        .build()
        .await
        .expect("build");
    assert_eq!(take(&mut consumer, 4).await, vec![1, 2, 3, 4]);
    let started = reader.started();
    assert_eq!(started.len(), 2, "{started:?}");
    let (shard, position, saved_then) = &started[1];
    assert_eq!((shard.as_str(), position), ("B", &IteratorPosition::TrimHorizon));
    assert_eq!(
        saved_then.get("A"),
        Some(&Checkpoint::ShardEnd),
        "the child started only after its parent's end was durable"
    );
    consumer.shutdown_handle().shutdown();
    assert!(consumer.next().await.is_none());
    assert_eq!(store.get("B"), Some(Checkpoint::Sequence(seq(4))));
}

#[tokio::test(start_paused = true)]
async fn with_any_reader_a_restart_resumes_right_after_the_checkpoint() {
    let api = listing(vec![("A", &[], false)]);
    let store = Arc::new(TestStore::default());
    store
        .saved
        .lock()
        .expect("lock")
        .insert("A".into(), Checkpoint::Sequence(seq(7)));
    let reader = ScriptedReader::new(None, vec![("A", vec![Scripted::Records(vec![8])])]);
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .reader(Arc::clone(&reader) as _)
        .build()
        .await
        .expect("build");
    assert_eq!(take(&mut consumer, 1).await, vec![8]);
    assert_eq!(reader.started()[0].1, IteratorPosition::AfterSequence(seq(7)));
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_fails_ends_the_stream_with_its_error_and_only_delivered_records_are_checkpointed() {
    let api = listing(vec![("A", &[], false), ("B", &[], false)]);
    let store = Arc::new(TestStore::default());
    let reader = ScriptedReader::new(
        None,
        vec![("A", vec![Scripted::Records(vec![1, 2]), Scripted::Fail(access_denied)])],
    );
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .reader(Arc::clone(&reader) as _)
        .build()
        .await
        .expect("build");
    let read = drain(&mut consumer).await;
    assert!(
        matches!(consumer.error(), Some(Error::AccessDenied { .. })),
        "{:?}",
        consumer.error()
    );
    let expected = read.last().map(|&n| Checkpoint::Sequence(seq(n)));
    assert_eq!(store.get("A"), expected, "delivered {read:?}");
    assert_eq!(reader.stopped(2).await, 2, "the other reader was stopped too");
    assert!(matches!(consumer.close().await, Err(Error::AccessDenied { .. })));
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_every_reader_and_saves_what_was_processed() {
    let api = listing(vec![("A", &[], false), ("B", &[], false)]);
    let store = Arc::new(TestStore::default());
    let reader = ScriptedReader::new(
        None,
        vec![
            ("A", vec![Scripted::Records(vec![1, 2, 3])]),
            ("B", vec![Scripted::Records(vec![10])]),
        ],
    );
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .reader(Arc::clone(&reader) as _)
        .build()
        .await
        .expect("build");
    let mut read = take(&mut consumer, 4).await;
    read.sort_unstable();
    assert_eq!(read, vec![1, 2, 3, 10]);
    consumer.shutdown_handle().shutdown();
    assert!(consumer.next().await.is_none());
    assert!(consumer.error().is_none(), "{:?}", consumer.error());
    assert_eq!(reader.stopped(2).await, 2);
    assert_eq!(store.get("A"), Some(Checkpoint::Sequence(seq(3))));
    assert_eq!(store.get("B"), Some(Checkpoint::Sequence(seq(10))));
}
