//! Polling through faults: retries, renewals, time-outs and the call budget.

use super::*;

#[tokio::test(start_paused = true)]
async fn throttling_and_server_errors_are_retried_without_losing_records() {
    let api = FakeKinesis::new(vec![(
        "shard-0",
        vec![
            Step::Records(vec![1, 2]),
            Step::Throttle,
            Step::ServerError,
            Step::Throttle,
            Step::Records(vec![3]),
            Step::End,
        ],
    )]);
    let mut consumer = builder(&api).build().await.expect("build");
    assert_eq!(take(&mut consumer, 3).await, vec![1, 2, 3]);
    assert_quiet(&mut consumer).await;
    assert!(consumer.error().is_none(), "{:?}", consumer.error());
    assert_eq!(
        api.record_calls("shard-0").len(),
        6,
        "each failed call was retried once"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_iterator_is_renewed_right_after_the_last_record_fetched() {
    let api = FakeKinesis::new(vec![(
        "shard-0",
        vec![
            Step::Records(vec![1, 2, 3]),
            Step::Expired,
            Step::Records(vec![4]),
            Step::End,
        ],
    )]);
    let mut consumer = builder(&api).build().await.expect("build");
    assert_eq!(take(&mut consumer, 4).await, vec![1, 2, 3, 4], "no gap, no repeat");
    assert_quiet(&mut consumer).await;
    let positions: Vec<IteratorPosition> = api
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::Iterator(_, position) => Some(position),
            Call::Records(..) => None,
        })
        .collect();
    assert_eq!(
        positions,
        vec![IteratorPosition::TrimHorizon, IteratorPosition::AfterSequence(seq(3))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_black_holed_call_times_out_and_the_shard_recovers() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Hang, Step::Records(vec![7]), Step::End])]);
    let mut consumer = builder(&api)
        .request_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("build");
    let started = Instant::now();
    assert_eq!(take(&mut consumer, 1).await, vec![7]);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the hung call was given its full timeout"
    );
    assert!(consumer.error().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_fatal_error_ends_the_stream_and_stays_retrievable_with_processed_records_checkpointed() {
    let api = FakeKinesis::new(vec![
        ("shard-0", vec![Step::Records(vec![1, 2]), Step::Fatal(access_denied)]),
        ("shard-1", vec![]),
    ]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .build()
        .await
        .expect("build");
    assert_eq!(drain(&mut consumer).await, vec![1, 2]);
    assert!(
        matches!(consumer.error(), Some(Error::AccessDenied { .. })),
        "{:?}",
        consumer.error()
    );
    assert_eq!(
        store.get("shard-0"),
        Some(Checkpoint::Sequence(seq(2))),
        "processed records keep their checkpoint"
    );
    assert!(matches!(consumer.close().await, Err(Error::AccessDenied { .. })));
    assert!(consumer.next().await.is_none(), "an ended stream stays ended");
}

#[tokio::test(start_paused = true)]
async fn no_shard_calls_get_records_more_than_five_times_a_second() {
    let steps = (0..30)
        .map(|i| Step::Records(vec![i * 2 + 1, i * 2 + 2]))
        .chain([Step::End])
        .collect();
    let api = FakeKinesis::new(vec![("shard-0", steps)]);
    // Full batches mean the shard is behind, so it re-polls as fast as allowed.
    let mut consumer = builder(&api).max_records_per_call(2).build().await.expect("build");
    assert_eq!(take(&mut consumer, 60).await.len(), 60);
    let calls = api.record_calls("shard-0");
    for pair in calls.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(200),
            "calls {:?} apart",
            pair[1] - pair[0]
        );
    }
    for window in calls.windows(6) {
        assert!(
            window[5] - window[0] >= Duration::from_secs(1),
            "six calls within a second"
        );
    }
    let total = calls[calls.len() - 1] - calls[0];
    assert!(
        total < Duration::from_millis(200 * 31 + 100),
        "a shard that is behind polls without idling: {total:?}"
    );
}

/// Each shard's idle moments within the second, from its second poll on
/// (its first is at build), checking that it polls once a second.
fn idle_phases(api: &FakeKinesis, shards: &[&str]) -> Vec<u128> {
    shards
        .iter()
        .map(|id| {
            let calls = api.record_calls(id);
            assert!(calls.len() > 100, "{id} kept polling");
            for pair in calls[1..].windows(2) {
                assert_eq!(pair[1] - pair[0], Duration::from_secs(1), "{id} polls once a second");
            }
            (calls[1] - calls[0]).as_millis() % 1000
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn idle_shards_of_one_group_poll_at_the_same_moments_once_an_interval() {
    let shards = ["shard-0", "shard-1", "shard-2", "shard-3"];
    let api = FakeKinesis::new(shards.iter().map(|id| (*id, Vec::new())).collect());
    let mut consumer = builder(&api)
        .idle_interval(Duration::from_secs(1))
        .idle_poll_group(4)
        .build()
        .await
        .expect("build");
    assert_quiet(&mut consumer).await;
    let calls: Vec<_> = shards.iter().map(|id| api.record_calls(id)).collect();
    for (id, shard_calls) in shards.iter().zip(&calls) {
        assert_eq!(shard_calls, &calls[0], "{id} polls when shard-0 does");
    }
    idle_phases(&api, &shards);
}

#[tokio::test(start_paused = true)]
async fn idle_shards_poll_at_spread_out_moments_by_default_not_all_at_once() {
    let shards = ["shard-0", "shard-1", "shard-2", "shard-3"];
    let api = FakeKinesis::new(shards.iter().map(|id| (*id, Vec::new())).collect());
    let mut consumer = builder(&api)
        .idle_interval(Duration::from_secs(1))
        .build()
        .await
        .expect("build");
    assert_quiet(&mut consumer).await;
    // No two shards' moments are closer than a tenth of the interval.
    crate::read::assert_spread(idle_phases(&api, &shards), 1000);
}

#[tokio::test(start_paused = true)]
async fn a_shard_that_read_records_polls_with_its_group_once_caught_up() {
    let api = FakeKinesis::new(vec![
        ("shard-0", vec![Step::Records(vec![1]), Step::Records(vec![2])]),
        ("shard-1", Vec::new()),
    ]);
    // Full pages of one record: shard-0 is behind for two calls, made at
    // the call spacing, off its group's moments.
    let mut consumer = builder(&api)
        .idle_interval(Duration::from_secs(1))
        .idle_poll_group(2)
        .max_records_per_call(1)
        .build()
        .await
        .expect("build");
    assert_eq!(take(&mut consumer, 2).await.len(), 2);
    assert_quiet(&mut consumer).await;
    let (busy, idle) = (api.record_calls("shard-0"), api.record_calls("shard-1"));
    assert_eq!(busy[1] - busy[0], Duration::from_millis(204), "shard-0 was behind");
    // Its last calls are at the idle shard's moments.
    let tail = |calls: &[Instant]| calls[calls.len() - 50..].to_vec();
    assert_eq!(tail(&busy), tail(&idle));
}

#[tokio::test(start_paused = true)]
async fn a_lower_call_budget_is_respected() {
    let steps = (0..6).map(|i| Step::Records(vec![i + 1])).chain([Step::End]).collect();
    let api = FakeKinesis::new(vec![("shard-0", steps)]);
    let mut consumer = builder(&api)
        .max_records_per_call(1)
        .max_get_records_per_second(2)
        .build()
        .await
        .expect("build");
    take(&mut consumer, 6).await;
    for pair in api.record_calls("shard-0").windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(500));
    }
}

#[tokio::test(start_paused = true)]
async fn a_throttled_shard_does_not_delay_the_others() {
    let throttled = (0..40).map(|_| Step::Throttle).chain([Step::End]).collect();
    let flowing = (1..=5).map(|n| Step::Records(vec![n])).chain([Step::End]).collect();
    let api = FakeKinesis::new(vec![("shard-a", throttled), ("shard-b", flowing)]);
    let mut consumer = builder(&api).build().await.expect("build");
    let started = Instant::now();
    let mut read = Vec::new();
    while read.len() < 5 {
        let record = consumer.next().await.expect("shard-b keeps flowing");
        read.push(record.sequence_number.clone());
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shard-b waited {:?}",
        started.elapsed()
    );
    let throttled_calls = api.record_calls("shard-a");
    assert!(throttled_calls.len() < 40, "shard-a is still backing off");
    assert_quiet(&mut consumer).await;
    assert_eq!(
        api.record_calls("shard-a").len(),
        41,
        "shard-a retried through its throttling to its end"
    );
}

#[tokio::test(start_paused = true)]
async fn a_success_without_an_iterator_does_not_end_an_open_shard() {
    let api = FakeKinesis::new(vec![(
        "shard-0",
        vec![
            Step::Records(vec![1]),
            Step::NoIterator,
            Step::Records(vec![2]),
            Step::NoIterator,
            Step::Records(vec![3]),
        ],
    )]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_every(1)
        .build()
        .await
        .expect("build");
    assert_eq!(take(&mut consumer, 3).await, [1, 2, 3], "the shard is read on");
    assert_eq!(consumer.shard_ids().collect::<Vec<_>>(), ["shard-0"]);
    consumer.close().await.expect("close");
    assert_eq!(
        store.get("shard-0"),
        Some(Checkpoint::Sequence(seq(2))),
        "no SHARD_END for an open shard"
    );
    let renewed: Vec<IteratorPosition> = api
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::Iterator(_, position) => Some(position),
            Call::Records(..) => None,
        })
        .collect();
    assert_eq!(
        renewed,
        [
            IteratorPosition::TrimHorizon,
            IteratorPosition::AfterSequence(seq(1)),
            IteratorPosition::AfterSequence(seq(2))
        ],
        "renewed right after the last record, so nothing is skipped or repeated"
    );
}

#[tokio::test(start_paused = true)]
async fn a_shard_aged_out_of_retention_ends_alone_and_its_children_start() {
    let api = FakeKinesis::with_lineage(vec![
        ("A", &[], true, vec![Step::Records(vec![1])]),
        ("B", &["A"], false, vec![Step::Records(vec![10])]),
        ("C", &[], false, vec![Step::Records(vec![20]), Step::Records(vec![21])]),
    ]);
    api.expiring.lock().expect("lock").push("A".into());
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .build()
        .await
        .expect("a shard aging out is no reason to fail the build");
    let mut read = take(&mut consumer, 3).await;
    read.sort();
    assert_eq!(read, [10, 20, 21], "A holds nothing any more; B and C are read");
    assert!(consumer.error().is_none(), "{:?}", consumer.error());
    assert_eq!(store.get("A"), Some(Checkpoint::ShardEnd));
}

#[tokio::test(start_paused = true)]
async fn a_large_stream_makes_at_most_64_first_calls_at_once() {
    let ids: Vec<String> = (0..100).map(|i| format!("shard-{i}")).collect();
    let api = FakeKinesis::new(ids.iter().map(|id| (id.as_str(), vec![Step::Hang])).collect());
    let mut consumer = builder(&api)
        .request_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("build");
    let record_calls = || api.calls().iter().filter(|c| matches!(c, Call::Records(..))).count();
    // Every first call hangs: 64 are in flight, the others wait for them.
    let _ = tokio::time::timeout(Duration::from_secs(1), consumer.next()).await;
    assert_eq!(record_calls(), 64);
    // Once the hanging calls time out, the other shards make theirs.
    let _ = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await;
    for id in &ids {
        assert!(!api.record_calls(id).is_empty(), "{id} called");
    }
    assert!(consumer.error().is_none(), "{:?}", consumer.error());
}
