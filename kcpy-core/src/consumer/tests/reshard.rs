//! Reshards: parents before children, shards found later, slots reused.

use super::*;

/// Watches the store while reading: per record, the parent's checkpoint as it
/// stood when the record was handed out.
async fn take_watching(
    consumer: &mut Consumer,
    n: usize,
    store: &TestStore,
    parent: &str,
) -> Vec<(u64, Option<Checkpoint>)> {
    let mut read = Vec::new();
    while read.len() < n {
        let record = consumer.next().await.expect("a record");
        read.push((number(&record), store.get(parent)));
    }
    read
}

#[tokio::test(start_paused = true)]
async fn children_are_read_only_after_their_parent_ended_and_its_end_was_checkpointed() {
    let api = FakeKinesis::with_lineage(vec![
        (
            "A",
            &[],
            true,
            vec![Step::Records(vec![1, 2]), Step::Records(vec![3]), Step::End],
        ),
        ("B", &["A"], false, vec![Step::Records(vec![10, 11])]),
        ("C", &["A"], false, vec![Step::Records(vec![20])]),
    ]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .build()
        .await
        .expect("build");
    assert_eq!(
        consumer.shard_ids().collect::<Vec<_>>(),
        ["A"],
        "children wait for their parent"
    );
    let read = take_watching(&mut consumer, 6, &store, "A").await;
    let (parent, children) = read.split_at(3);
    assert_eq!(parent.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3]);
    let mut child_numbers: Vec<u64> = children.iter().map(|(n, _)| *n).collect();
    child_numbers.sort();
    assert_eq!(child_numbers, [10, 11, 20]);
    assert!(
        children.iter().all(|(_, a)| *a == Some(Checkpoint::ShardEnd)),
        "no child record before the parent's end is durable: {children:?}"
    );
    let positions: Vec<(String, IteratorPosition)> = api
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::Iterator(shard, position) => Some((shard, position)),
            Call::Records(..) => None,
        })
        .collect();
    assert!(positions.contains(&("B".into(), IteratorPosition::TrimHorizon)));
    assert_quiet(&mut consumer).await;
    assert!(
        consumer.error().is_none(),
        "all shards closed is no reason to end: {:?}",
        consumer.error()
    );
}

#[tokio::test(start_paused = true)]
async fn a_merged_child_waits_for_both_parents() {
    let api = FakeKinesis::with_lineage(vec![
        ("A", &[], true, vec![Step::Records(vec![1]), Step::End]),
        (
            "B",
            &[],
            true,
            vec![
                Step::Throttle,
                Step::Throttle,
                Step::Throttle,
                Step::Records(vec![2]),
                Step::End,
            ],
        ),
        ("M", &["A", "B"], false, vec![Step::Records(vec![3])]),
    ]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .build()
        .await
        .expect("build");
    let read = take_watching(&mut consumer, 3, &store, "B").await;
    assert_eq!(read.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        read[2].1,
        Some(Checkpoint::ShardEnd),
        "M starts only once B's end is checkpointed"
    );
    assert_eq!(store.get("A"), Some(Checkpoint::ShardEnd));
}

#[tokio::test(start_paused = true)]
async fn without_a_store_children_follow_their_parents_too() {
    let api = FakeKinesis::with_lineage(vec![
        ("A", &[], true, vec![Step::Records(vec![1, 2]), Step::End]),
        ("B", &["A"], false, vec![Step::Records(vec![3])]),
    ]);
    let mut consumer = builder(&api).build().await.expect("build");
    assert_eq!(take(&mut consumer, 3).await, [1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn in_manual_mode_a_shard_ends_only_once_every_record_is_acknowledged() {
    let api = FakeKinesis::with_lineage(vec![
        ("A", &[], true, vec![Step::Records(vec![1, 2]), Step::End]),
        ("B", &["A"], false, vec![Step::Records(vec![3])]),
    ]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_mode(CheckpointMode::Manual)
        .build()
        .await
        .expect("build");
    let first = consumer.next().await.expect("record 1");
    let second = consumer.next().await.expect("record 2");
    consumer.checkpoint(&second).expect("ack 2");
    // Record 1 is unacknowledged: A is not finished, so B must not start.
    let waited = tokio::time::timeout(Duration::from_secs(120), consumer.next()).await;
    assert!(waited.is_err(), "B started before A's records were all processed");
    assert_eq!(store.get("A"), None);
    consumer.checkpoint(&first).expect("ack 1");
    let third = consumer.next().await.expect("record 3 once A is done");
    assert_eq!(number(&third), 3);
    assert_eq!(store.get("A"), Some(Checkpoint::ShardEnd));
}

#[tokio::test(start_paused = true)]
async fn finished_shards_are_not_read_again_after_a_restart() {
    let api = FakeKinesis::with_lineage(vec![
        ("A", &[], true, vec![Step::Records(vec![1]), Step::End]),
        ("B", &["A"], false, vec![Step::Records(vec![2])]),
    ]);
    let store = Arc::new(TestStore::default());
    store
        .saved
        .lock()
        .expect("lock")
        .insert("A".into(), Checkpoint::ShardEnd);
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .start_position(StartPosition::Latest)
        .build()
        .await
        .expect("build");
    assert_eq!(take(&mut consumer, 1).await, [2], "B from its start, A not at all");
    assert!(api.record_calls("A").is_empty());
}

#[tokio::test(start_paused = true)]
async fn shards_found_by_the_periodic_listing_are_read_after_their_parent() {
    let api = FakeKinesis::new(vec![
        ("A", vec![Step::Records(vec![1]), Step::End]),
        ("B", vec![Step::Records(vec![2])]),
    ]);
    // B is not listed yet, and A's end names no children.
    let later = api.listing.lock().expect("lock").pop().expect("B");
    let mut consumer = builder(&api)
        .shard_sync_interval(Duration::from_secs(30))
        .build()
        .await
        .expect("build");
    assert_eq!(take(&mut consumer, 1).await, [1]);
    api.listing.lock().expect("lock").push(ShardInfo {
        parent_shard_id: Some("A".into()),
        ..later
    });
    let started = Instant::now();
    assert_eq!(take(&mut consumer, 1).await, [2]);
    assert!(
        started.elapsed() <= Duration::from_secs(31),
        "found by the next listing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deleted_stream_found_by_the_listing_ends_the_stream() {
    struct Gone(Arc<FakeKinesis>);
    #[async_trait]
    impl KinesisApi for Gone {
        async fn list_shards(&self, stream: &StreamRef, token: Option<String>) -> Result<ShardPage, ApiError> {
            if self.0.calls().len() > 1 {
                return Err(ApiError::Fatal(Error::StreamNotFound {
                    stream: "test-stream".into(),
                    source: Arc::new(std::io::Error::other("ResourceNotFoundException")),
                }));
            }
            self.0.list_shards(stream, token).await
        }
        async fn get_shard_iterator(&self, s: &StreamRef, id: &str, p: &IteratorPosition) -> Result<String, ApiError> {
            self.0.get_shard_iterator(s, id, p).await
        }
        async fn get_records(
            &self,
            s: &StreamRef,
            shard: &Arc<str>,
            it: &str,
            limit: i32,
        ) -> Result<RecordsPage, ApiError> {
            self.0.get_records(s, shard, it, limit).await
        }
    }
    let fake = FakeKinesis::new(vec![("A", vec![Step::Records(vec![1])])]);
    let api: DynKinesis = Arc::new(Gone(fake));
    let mut consumer = ConsumerBuilder::with_api(api, "test-stream".into())
        .shard_sync_interval(Duration::from_secs(5))
        .build()
        .await
        .expect("build");
    assert_eq!(drain(&mut consumer).await, [1]);
    assert!(matches!(consumer.error(), Some(Error::StreamNotFound { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_merge_child_waits_for_a_parent_that_appeared_after_the_last_listing() {
    // Listed at build: X and A, both open. Then X splits (B is one child) and
    // B merges with A into M; A's end names M before any listing shows B.
    let throttled_then = |steps: Vec<Step>| (0..8).map(|_| Step::Throttle).chain(steps).collect();
    let api = FakeKinesis::with_lineage(vec![
        (
            "X",
            &[],
            false,
            throttled_then(vec![Step::Records(vec![100]), Step::End]),
        ),
        ("A", &[], false, vec![Step::Records(vec![1]), Step::End]),
    ]);
    let later = |id: &str, parents: &[&str], steps: Vec<Step>| {
        api.scripts.lock().expect("lock").insert(id.to_string(), steps.into());
        ShardInfo {
            shard_id: id.into(),
            parent_shard_id: parents.first().map(|p| p.to_string()),
            adjacent_parent_shard_id: parents.get(1).map(|p| p.to_string()),
            ending_sequence_number: None,
            hash_range: None,
        }
    };
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .build()
        .await
        .expect("build");
    let b = later("B", &["X"], vec![Step::Records(vec![200]), Step::End]);
    let m = later("M", &["A", "B"], vec![Step::Records(vec![300])]);
    api.listing.lock().expect("lock").extend([b, m]);
    let read = tokio::time::timeout(Duration::from_secs(120), take(&mut consumer, 4))
        .await
        .expect("every shard is read");
    let at = |n: u64| read.iter().position(|&r| r == n).expect("read");
    assert!(at(100) < at(200), "B after its parent X: {read:?}");
    assert!(at(200) < at(300), "M after both its parents, B included: {read:?}");
    assert!(at(1) < at(300), "{read:?}");
}

#[tokio::test(start_paused = true)]
async fn the_slots_of_finished_shards_are_reused_so_reshards_do_not_grow_the_consumer() {
    let api = FakeKinesis::with_lineage(vec![
        ("A", &[], true, vec![Step::Records(vec![1]), Step::End]),
        ("B", &["A"], true, vec![Step::Records(vec![2]), Step::End]),
        ("C", &["B"], true, vec![Step::Records(vec![3]), Step::End]),
        ("D", &["C"], false, vec![Step::Records(vec![4])]),
    ]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .build()
        .await
        .expect("build");
    assert_eq!(take(&mut consumer, 4).await, [1, 2, 3, 4]);
    assert_eq!(consumer.shard_ids().collect::<Vec<_>>(), ["D"]);
    assert_eq!(
        consumer.parts[0].slots.len(),
        1,
        "each child took its finished parent's slot"
    );
}
