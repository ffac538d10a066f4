//! Checkpoints: when records count as processed, store failures, shutdown.

use super::*;

#[tokio::test(start_paused = true)]
async fn in_auto_mode_a_record_is_checkpointed_only_once_the_next_is_asked_for() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2, 3])])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_every(1)
        .build()
        .await
        .expect("build");
    let first = consumer.next().await.expect("record 1");
    assert_eq!(first.sequence_number, seq(1));
    let second = consumer.next().await.expect("record 2");
    assert_eq!(second.sequence_number, seq(2));
    // Record 2 is in the caller's hands: close() must not count it.
    consumer.close().await.expect("close");
    assert_eq!(store.get("shard-0"), Some(Checkpoint::Sequence(seq(1))));
}

#[tokio::test(start_paused = true)]
async fn checkpoints_are_written_on_the_interval_while_the_consumer_waits() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2])])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_interval(Duration::from_secs(3))
        .build()
        .await
        .expect("build");
    consumer.next().await.expect("record 1");
    consumer.next().await.expect("record 2");
    // The caller now waits at the tip; asking marked record 2 processed.
    let waited = tokio::time::timeout(Duration::from_secs(7), consumer.next()).await;
    assert!(waited.is_err(), "no more records");
    assert_eq!(
        store.get("shard-0"),
        Some(Checkpoint::Sequence(seq(2))),
        "written by the interval, not at shutdown"
    );
    drop(consumer);
}

#[tokio::test(start_paused = true)]
async fn manual_acks_out_of_order_commit_only_the_contiguous_prefix() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2, 3, 4, 5])])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_mode(CheckpointMode::Manual)
        .build()
        .await
        .expect("build");
    let mut records = Vec::new();
    for _ in 0..5 {
        records.push(consumer.next().await.expect("record"));
    }
    let checkpointer = consumer.checkpointer();
    let elsewhere = checkpointer.clone();
    elsewhere.checkpoint(&records[1]).expect("ack 2");
    elsewhere.checkpoint(&records[2]).expect("ack 3");
    checkpointer.flush().await.expect("flush");
    assert_eq!(
        store.get("shard-0"),
        None,
        "record 1 is unprocessed, so nothing may be committed"
    );
    consumer.checkpoint(&records[0]).expect("ack 1");
    checkpointer.flush().await.expect("flush");
    assert_eq!(store.get("shard-0"), Some(Checkpoint::Sequence(seq(3))));
    consumer.checkpoint(&records[4]).expect("ack 5");
    let stranger = crate::Record::new("shard-0", seq(99), "k", &b"x"[..]);
    assert!(matches!(
        checkpointer.checkpoint(&stranger),
        Err(Error::UnknownRecord { .. })
    ));
    consumer.close().await.expect("close");
    assert_eq!(
        store.get("shard-0"),
        Some(Checkpoint::Sequence(seq(3))),
        "record 4 was never processed"
    );
    assert!(
        matches!(checkpointer.checkpoint(&records[3]), Err(Error::Closed)),
        "after close nothing marked could be written"
    );
    assert!(matches!(checkpointer.flush().await, Err(Error::Closed)));
}

#[tokio::test(start_paused = true)]
async fn checkpoint_in_auto_mode_is_a_configuration_error() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1])])]);
    let mut consumer = builder(&api)
        .checkpoint_store(TestStore::default())
        .build()
        .await
        .expect("build");
    let record = consumer.next().await.expect("record");
    assert!(matches!(consumer.checkpoint(&record), Err(Error::InvalidConfig { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_store_that_keeps_failing_ends_the_stream_with_its_error() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2, 3])])]);
    let store = Arc::new(TestStore::default());
    let unavailable = || CheckpointError::Unavailable {
        source: Arc::new(std::io::Error::other("database is locked")),
    };
    store
        .failures
        .lock()
        .expect("lock")
        .extend((0..10).map(|_| unavailable()));
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_every(1)
        .checkpoint_retries(3)
        .build()
        .await
        .expect("build");
    let read = drain(&mut consumer).await;
    assert!(read.len() <= 3);
    match consumer.error() {
        Some(error @ Error::Checkpoint(CheckpointError::Unavailable { .. })) => {
            assert!(error.is_retryable())
        }
        other => panic!("expected the store's error, got {other:?}"),
    }
    assert_eq!(*store.saves.lock().expect("lock"), 4, "one try and three retries");
    assert_eq!(store.get("shard-0"), None, "nothing was claimed saved");
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_that_would_move_backwards_is_fatal_at_once() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2])])]);
    let store = Arc::new(TestStore::default());
    let key = CheckpointKey::new("kcpy", "test-stream", "shard-0");
    store
        .failures
        .lock()
        .expect("lock")
        .push_back(CheckpointError::conflict(
            &key,
            Checkpoint::Sequence(seq(50)),
            Checkpoint::Sequence(seq(1)),
        ));
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_every(1)
        .build()
        .await
        .expect("build");
    drain(&mut consumer).await;
    assert!(matches!(
        consumer.error(),
        Some(Error::Checkpoint(CheckpointError::Conflict { .. }))
    ));
    assert_eq!(*store.saves.lock().expect("lock"), 1, "a conflict is not retried");
}

#[tokio::test(start_paused = true)]
async fn build_retries_transient_failures_then_gives_up_with_unavailable() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1])])]);
    *api.list_failures.lock().expect("lock") = 2;
    let mut consumer = builder(&api).build().await.expect("two failures are retried");
    assert_eq!(consumer.next().await.map(|r| r.sequence_number), Some(seq(1)));

    *api.list_failures.lock().expect("lock") = 100;
    match builder(&api).startup_retries(3).build().await {
        Err(
            error @ Error::Unavailable {
                operation: "ListShards",
                ..
            },
        ) => assert!(error.is_retryable()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_idle_ends_the_stream_and_flushes() {
    let api = FakeKinesis::new(vec![
        ("shard-0", vec![Step::Records(vec![1, 2])]),
        ("shard-1", vec![Step::Hang]),
    ]);
    let store = Arc::new(TestStore::default());
    let token = CancellationToken::new();
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .shutdown_token(token.clone())
        .build()
        .await
        .expect("build");
    consumer.next().await.expect("record 1");
    consumer.next().await.expect("record 2");
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        token.cancel();
    });
    assert!(consumer.next().await.is_none(), "the stream ends on shutdown");
    stopper.await.expect("stopper");
    assert!(consumer.error().is_none());
    assert_eq!(store.get("shard-0"), Some(Checkpoint::Sequence(seq(2))));
}

#[tokio::test(start_paused = true)]
async fn a_hung_store_cannot_stall_shutdown_past_its_deadline() {
    #[derive(Debug)]
    struct HungStore;
    #[async_trait]
    impl CheckpointStore for HungStore {
        async fn load(&self, _: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
            Ok(None)
        }
        async fn save(&self, _: &CheckpointKey, _: &Checkpoint) -> Result<(), CheckpointError> {
            futures::future::pending().await
        }
    }
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2])])]);
    let mut consumer = builder(&api)
        .checkpoint_store(HungStore)
        .shutdown_timeout(Duration::from_secs(3))
        .build()
        .await
        .expect("build");
    consumer.next().await.expect("record 1");
    consumer.next().await.expect("record 2");
    consumer.shutdown_handle().shutdown();
    let started = Instant::now();
    assert!(consumer.next().await.is_none());
    assert!(started.elapsed() <= Duration::from_secs(3));
    assert!(matches!(consumer.error(), Some(Error::ShutdownTimedOut { .. })));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_consumer_with_a_hung_call_returns_at_once() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Hang])]);
    let consumer = builder(&api).build().await.expect("build");
    drop(consumer);
    // The reader task was aborted: its Arc to the fake is gone.
    tokio::task::yield_now().await;
    assert_eq!(Arc::strong_count(&api), 1);
}

#[tokio::test(start_paused = true)]
async fn bad_stream_names_and_arns_are_configuration_errors() {
    let api = FakeKinesis::new(vec![]);
    for stream in [
        "",
        "has space",
        "arn:aws:s3:::bucket",
        "arn:aws:kinesis:us-east-1:123:table/x",
    ] {
        let result = ConsumerBuilder::with_api(Arc::clone(&api) as DynKinesis, stream.into())
            .build()
            .await;
        assert!(
            matches!(result, Err(Error::InvalidConfig { .. })),
            "{stream:?}: {result:?}"
        );
    }
    let arn = "arn:aws:kinesis:us-east-1:123456789012:stream/orders";
    let consumer = ConsumerBuilder::with_api(Arc::clone(&api) as DynKinesis, arn.into())
        .build()
        .await
        .expect("an ARN");
    assert_eq!(consumer.stream_name(), "orders");
}

/// A store whose code panics: on load, or on every save.
#[derive(Debug)]
struct PanickingStore {
    on_load: bool,
}

#[async_trait]
impl CheckpointStore for PanickingStore {
    async fn load(&self, _: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        assert!(!self.on_load, "a store bug on load");
        Ok(None)
    }

    async fn save(&self, _: &CheckpointKey, _: &Checkpoint) -> Result<(), CheckpointError> {
        panic!("a store bug on save");
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_store_ends_the_stream_with_an_error_instead_of_vanishing() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2, 3])])]);
    let mut consumer = builder(&api)
        .checkpoint_store(PanickingStore { on_load: false })
        .checkpoint_every(1)
        .build()
        .await
        .expect("build");
    let read = tokio::time::timeout(Duration::from_secs(60), drain(&mut consumer))
        .await
        .expect("the stream ends");
    assert!(read.len() <= 3, "{read:?}");
    match consumer.error() {
        Some(Error::Panicked { task, message }) => {
            assert_eq!(*task, "checkpoint writer");
            assert!(message.contains("a store bug on save"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!consumer.error().is_some_and(Error::is_retryable));
}

#[tokio::test(start_paused = true)]
async fn a_store_panicking_while_build_loads_checkpoints_fails_the_build() {
    let api = FakeKinesis::new(vec![("shard-0", vec![])]);
    let built = builder(&api)
        .checkpoint_store(PanickingStore { on_load: true })
        .build()
        .await;
    assert!(
        matches!(
            built,
            Err(Error::Panicked {
                task: "checkpoint load",
                ..
            })
        ),
        "{built:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn in_manual_mode_a_shard_stops_handing_out_records_at_the_unacknowledged_cap() {
    let api = FakeKinesis::new(vec![(
        "shard-0",
        vec![
            Step::Records(vec![1, 2]),
            Step::Records(vec![3, 4]),
            Step::Records(vec![5, 6]),
        ],
    )]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_mode(CheckpointMode::Manual)
        .max_unacknowledged(2)
        .build()
        .await
        .expect("build");
    let first = consumer.next().await.expect("record 1");
    let second = consumer.next().await.expect("record 2");
    consumer.checkpoint(&second).expect("ack 2");
    // Record 1 is unacknowledged, so two records are outstanding: no more.
    assert_quiet(&mut consumer).await;
    consumer.checkpoint(&first).expect("ack 1");
    assert_eq!(
        take(&mut consumer, 2).await,
        [3, 4],
        "acknowledgements let the shard go on"
    );
    assert_quiet(&mut consumer).await;
}

#[tokio::test(start_paused = true)]
async fn in_auto_mode_a_batch_is_checkpointed_only_once_the_next_is_asked_for() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2, 3, 4, 5])])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_every(1)
        .checkpoint_interval(Duration::from_secs(1))
        .build()
        .await
        .expect("build");
    let batch = consumer.next_batch(3).await.expect("a batch");
    assert_eq!(batch.iter().map(number).collect::<Vec<_>>(), [1, 2, 3]);
    // Checkpoint intervals pass while the caller works on the batch.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(store.get("shard-0"), None, "nothing of a batch in the caller's hands");
    let rest = consumer.next_batch(100).await.expect("the rest of the page");
    assert_eq!(rest.iter().map(number).collect::<Vec<_>>(), [4, 5]);
    consumer.close().await.expect("close");
    assert_eq!(
        store.get("shard-0"),
        Some(Checkpoint::Sequence(seq(3))),
        "asking for the next batch made the first one processed, and only it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_latest_start_is_saved_at_build_so_a_restart_before_any_record_resumes_there() {
    let api = FakeKinesis::new(vec![("shard-0", vec![]), ("shard-1", vec![])]);
    let store = Arc::new(TestStore::default());
    let first = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .start_position(StartPosition::Latest)
        .build()
        .await
        .expect("build");
    let saved = |shard: &str| match store.get(shard) {
        Some(Checkpoint::AtTimestamp(at)) => at.time(),
        other => panic!("{shard}: {other:?}"),
    };
    let marked = (saved("shard-0"), saved("shard-1"));
    assert_eq!(marked.0, marked.1);
    // A crash before any record arrived.
    drop(first);
    tokio::time::sleep(Duration::from_secs(600)).await;
    let second = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .start_position(StartPosition::Latest)
        .build()
        .await
        .expect("build");
    let restarted: Vec<IteratorPosition> = api
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::Iterator(_, position) => Some(position),
            Call::Records(..) => None,
        })
        .skip(2)
        .take(2)
        .collect();
    assert_eq!(
        restarted,
        [
            IteratorPosition::AtTimestamp(marked.0),
            IteratorPosition::AtTimestamp(marked.0)
        ],
        "the saved start, not the tip ten minutes later"
    );
    drop(second);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_consumer_saves_the_processed_records_checkpoints_in_the_background() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2, 3, 4, 5])])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        // Nothing falls due while reading: only the drop can save.
        .checkpoint_interval(Duration::from_secs(3600))
        .checkpoint_every(1000)
        .build()
        .await
        .expect("build");
    assert_eq!(take(&mut consumer, 3).await, [1, 2, 3]);
    assert_eq!(store.get("shard-0"), None);
    drop(consumer);
    let saved = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let told = store.saved_now.notified();
            if store.get("shard-0").is_some() {
                break;
            }
            told.await;
        }
    })
    .await;
    assert!(saved.is_ok(), "no checkpoint was saved after the drop");
    assert_eq!(
        store.get("shard-0"),
        Some(Checkpoint::Sequence(seq(2))),
        "records 1 and 2 were processed; 3, handed out last, was not"
    );
}
