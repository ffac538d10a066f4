//! Per-key lanes through the Kinesis seam: failures, panics, shutdown with
//! handlers running, and refused configurations. Order per key and the
//! emulator's resharding are shown by the end-to-end tests.

use super::*;

fn manual(api: &Arc<FakeKinesis>, store: &Arc<TestStore>) -> ConsumerBuilder {
    builder(api)
        .checkpoint_store(Arc::clone(store))
        .checkpoint_mode(CheckpointMode::Manual)
}

/// The longest run 1..=n of handled records.
fn prefix(handled: &[u64]) -> u64 {
    (1..).take_while(|n| handled.contains(n)).last().unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn a_failing_handler_ends_the_consumer_and_no_checkpoint_passes_its_record() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records((1..=40).collect())])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = manual(&api, &store).build().await.expect("build");
    let handled = Mutex::new(Vec::new());
    let result = consumer
        .for_each_by_key(4, |record| {
            let handled = &handled;
            async move {
                let n = number(&record);
                // Record 7 fails last of what is running, so later records
                // of other lanes finish before it.
                tokio::time::sleep(Duration::from_millis(if n == 7 { 50 } else { n % 5 })).await;
                if n == 7 {
                    return Err(std::io::Error::other("the downstream service said no"));
                }
                handled.lock().expect("lock").push(n);
                Ok(())
            }
        })
        .await;
    let Err(Error::Handler {
        sequence_number,
        source,
        ..
    }) = result
    else {
        panic!("expected a handler error, got {result:?}");
    };
    assert_eq!(sequence_number, "7");
    assert_eq!(source.to_string(), "the downstream service said no");
    assert!(matches!(consumer.error(), Some(Error::Handler { .. })));
    let handled = handled.into_inner().expect("lock");
    assert!(handled.iter().any(|&n| n > 7), "other lanes ran on: {handled:?}");
    let expected = prefix(&handled);
    assert!(expected < 7);
    assert_eq!(
        store.get("shard-0"),
        (expected > 0).then(|| Checkpoint::Sequence(seq(expected))),
        "the checkpoint covers the contiguous run of handled records, which stops before 7"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_is_a_handler_error_with_its_message() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records((1..=5).collect())])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = manual(&api, &store).build().await.expect("build");
    let result = consumer
        .for_each_by_key(2, |record| async move {
            if number(&record) == 3 {
                panic!("record 3 is cursed");
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    let Err(Error::Handler {
        sequence_number,
        source,
        ..
    }) = result
    else {
        panic!("expected a handler error, got {result:?}");
    };
    assert_eq!(sequence_number, "3");
    assert_eq!(source.to_string(), "the handler panicked: record 3 is cursed");
    let saved = store.get("shard-0");
    assert!(
        saved.is_none() || matches!(&saved, Some(Checkpoint::Sequence(s)) if *s < seq(3)),
        "checkpoint {saved:?} passed the panicked record"
    );
}

#[tokio::test(start_paused = true)]
async fn on_shutdown_running_handlers_finish_and_their_checkpoints_are_written() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records((1..=100).collect())])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = manual(&api, &store).build().await.expect("build");
    let shutdown = consumer.shutdown_handle();
    let started = Mutex::new(0usize);
    let handled = Mutex::new(Vec::new());
    let result = consumer
        .for_each_by_key(8, |record| {
            let (started, handled, shutdown) = (&started, &handled, &shutdown);
            async move {
                let count = {
                    let mut started = started.lock().expect("lock");
                    *started += 1;
                    *started
                };
                if count == 20 {
                    shutdown.shutdown();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                handled.lock().expect("lock").push(number(&record));
                Ok::<_, std::io::Error>(())
            }
        })
        .await;
    assert!(result.is_ok(), "{result:?}");
    let handled = handled.into_inner().expect("lock");
    let started = started.into_inner().expect("lock");
    assert_eq!(
        handled.len(),
        started,
        "every started handler finished before the flush"
    );
    assert!(started < 100, "queued records were dropped, not started: {started}");
    let expected = prefix(&handled);
    assert!(expected > 0);
    assert_eq!(store.get("shard-0"), Some(Checkpoint::Sequence(seq(expected))));
}

#[tokio::test(start_paused = true)]
async fn handlers_past_the_shutdown_deadline_are_dropped_and_their_records_left_unchecked() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1, 2, 3])])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = manual(&api, &store)
        .shutdown_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("build");
    let shutdown = consumer.shutdown_handle();
    let result = consumer
        .for_each_by_key(4, |record| {
            let shutdown = &shutdown;
            async move {
                match number(&record) {
                    1 => {}
                    2 => {
                        shutdown.shutdown();
                        futures::future::pending::<()>().await;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
                Ok::<_, std::io::Error>(())
            }
        })
        .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        store.get("shard-0"),
        Some(Checkpoint::Sequence(seq(1))),
        "record 2 never finished, so 3 is not covered either"
    );
}

#[tokio::test(start_paused = true)]
async fn lanes_refuse_auto_mode_with_a_store_and_zero_lanes() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1])])]);
    let store = Arc::new(TestStore::default());
    let mut auto = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .build()
        .await
        .expect("build");
    let result = auto.for_each_by_key(4, |_| async { Ok::<_, std::io::Error>(()) }).await;
    assert!(matches!(result, Err(Error::InvalidConfig { .. })), "{result:?}");
    let mut manual = manual(&api, &store).build().await.expect("build");
    let result = manual
        .for_each_by_key(0, |_| async { Ok::<_, std::io::Error>(()) })
        .await;
    assert!(matches!(result, Err(Error::InvalidConfig { .. })), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn without_a_store_every_record_is_handled_once() {
    let api = FakeKinesis::new(vec![
        ("shard-0", vec![Step::Records((1..=30).collect())]),
        ("shard-1", vec![Step::Records((101..=130).collect())]),
    ]);
    let mut consumer = builder(&api).max_unacknowledged(5).build().await.expect("build");
    let shutdown = consumer.shutdown_handle();
    let handled = Mutex::new(Vec::new());
    let result = consumer
        .for_each_by_key(3, |record| {
            let (handled, shutdown) = (&handled, &shutdown);
            async move {
                tokio::time::sleep(Duration::from_millis(number(&record) % 7)).await;
                let mut handled = handled.lock().expect("lock");
                handled.push(number(&record));
                if handled.len() == 60 {
                    shutdown.shutdown();
                }
                Ok::<_, std::io::Error>(())
            }
        })
        .await;
    assert!(result.is_ok(), "{result:?}");
    let mut handled = handled.into_inner().expect("lock");
    handled.sort_unstable();
    let expected: Vec<u64> = (1..=30).chain(101..=130).collect();
    assert_eq!(handled, expected);
}
