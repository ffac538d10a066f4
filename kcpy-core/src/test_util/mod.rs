//! Conformance suites for [`CheckpointStore`] and [`LeaseStore`] implementations,
//! and [`kpl_aggregate`], which makes KPL aggregated records to put into a
//! test stream.
//!
//! Every bundled backend runs it; run it against your own:
//!
//! ```text
//! #[tokio::test]
//! async fn my_store_meets_the_checkpoint_store_contract() {
//!     let store = MyStore::connect(...).await.unwrap();
//!     kcpy_core::test_util::checkpoint_store_conformance(&store).await;
//! }
//! ```
//!
//! Keys are made unique per run, so a shared, long-lived store can be used.

mod transaction;

pub use transaction::in_transaction_conformance;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Checkpoint, CheckpointError, CheckpointKey, CheckpointStore, Lease, LeaseStore, SequenceNumber};

/// A KPL aggregated record of `users` — (partition key, data, explicit hash
/// key) each — as the Kinesis Producer Library puts it: the magic bytes, the
/// `AggregatedRecord` protobuf, its MD5 digest. For testing code that reads
/// aggregates (put it with any partition key; the consumer de-aggregates it).
pub fn kpl_aggregate(users: &[(&str, &[u8], Option<&str>)]) -> Vec<u8> {
    crate::read::kpl_aggregate(users)
}

fn seq(text: &str) -> Checkpoint {
    Checkpoint::Sequence(SequenceNumber::parse(text).expect("test sequence numbers are valid"))
}

fn unique_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("conformance-{}-{nanos}", std::process::id())
}

/// Runs every check of the [`CheckpointStore`] contract; panics on the first
/// violation, naming it.
pub async fn checkpoint_store_conformance(store: &dyn CheckpointStore) {
    let prefix = unique_prefix();
    let key = |shard: &str| CheckpointKey::new(format!("{prefix}-app"), format!("{prefix}-stream"), shard);

    // Unknown keys load as none.
    let fresh = key("shardId-000000000000");
    assert_eq!(
        store.load(&fresh).await.expect("load of an unknown key"),
        None,
        "an unknown key must load as None"
    );

    // What is saved is loaded back exactly, for every length Kinesis allows.
    for digits in 1..=SequenceNumber::MAX_DIGITS {
        let k = key(&format!("shardId-len-{digits}"));
        let text = format!("1{}", "7".repeat(digits - 1));
        let value = seq(&text);
        store
            .save(&k, &value)
            .await
            .unwrap_or_else(|e| panic!("save of {digits} digits: {e}"));
        assert_eq!(
            store.load(&k).await.expect("load"),
            Some(value),
            "{digits} digits must round-trip exactly"
        );
    }
    let realistic = seq("49590338271490256608559692538361571095921575989136588898");
    let k = key("shardId-realistic");
    store.save(&k, &realistic).await.expect("save");
    assert_eq!(store.load(&k).await.expect("load"), Some(realistic.clone()));

    // Forward moves succeed, including across lengths (numeric, not text, order).
    let k = key("shardId-forward");
    for value in [
        "9",
        "10",
        "99",
        "100",
        "49590338271490256608559692538361571095921575989136588898",
    ] {
        store
            .save(&k, &seq(value))
            .await
            .unwrap_or_else(|e| panic!("forward save to {value}: {e}"));
    }
    assert_eq!(store.load(&k).await.expect("load"), Some(realistic.clone()));

    // Saving the stored value again succeeds.
    store
        .save(&k, &realistic)
        .await
        .expect("re-saving the stored value must succeed");

    // Backwards moves fail with Conflict and change nothing.
    for lower in ["100", "49590338271490256608559692538361571095921575989136588897"] {
        match store.save(&k, &seq(lower)).await {
            Err(CheckpointError::Conflict {
                key: conflict_key,
                stored,
                attempted,
            }) => {
                assert_eq!(*conflict_key, k, "Conflict must name the key");
                assert_eq!(*stored, realistic, "Conflict must carry the stored value");
                assert_eq!(*attempted, seq(lower), "Conflict must carry the attempted value");
            }
            other => panic!("saving {lower} below the stored checkpoint must be a Conflict, got {other:?}"),
        }
    }
    assert_eq!(
        store.load(&k).await.expect("load"),
        Some(realistic.clone()),
        "a rejected save must change nothing"
    );

    // A saved start (AT_TIMESTAMP) round-trips, moves forward in time, and
    // orders before every sequence number, whatever its text length.
    let k_start = key("shardId-start");
    let at = |millis: u64| {
        Checkpoint::AtTimestamp(crate::StartTime::new(
            UNIX_EPOCH + std::time::Duration::from_millis(millis),
        ))
    };
    for millis in [999, 1_733_140_000_123, 1_733_140_000_124] {
        store
            .save(&k_start, &at(millis))
            .await
            .unwrap_or_else(|e| panic!("a start at {millis} ms: {e}"));
        assert_eq!(store.load(&k_start).await.expect("load"), Some(at(millis)));
    }
    assert!(
        matches!(
            store.save(&k_start, &at(1_000)).await,
            Err(CheckpointError::Conflict { .. })
        ),
        "an earlier start must be a Conflict"
    );
    store
        .save(&k_start, &seq("1"))
        .await
        .expect("a sequence number after a start");
    assert!(
        matches!(
            store.save(&k_start, &at(1_733_140_000_125)).await,
            Err(CheckpointError::Conflict { .. })
        ),
        "a start after a sequence number must be a Conflict"
    );
    assert_eq!(store.load(&k_start).await.expect("load"), Some(seq("1")));

    // Inside a KPL aggregate: a sub-sequence checkpoint round-trips, orders
    // after every earlier record (whatever the lengths) and before its
    // aggregate's whole record, and by number (not text) within it.
    let k_sub = key("shardId-sub-sequence");
    let sub = |seq: &str, number: u64| {
        Checkpoint::SubSequence(crate::SubSequence::new(
            SequenceNumber::parse(seq).expect("test sequence numbers are valid"),
            number,
        ))
    };
    store.save(&k_sub, &seq("99")).await.expect("save");
    for value in [
        sub("100", 0),
        sub("100", 9),
        sub("100", 10),
        sub("100", 123_456),
        seq("100"),
    ] {
        store
            .save(&k_sub, &value)
            .await
            .unwrap_or_else(|e| panic!("forward save to {value}: {e}"));
        assert_eq!(
            store.load(&k_sub).await.expect("load"),
            Some(value.clone()),
            "{value} round-trips"
        );
    }
    for lower in [sub("100", 123_457), sub("99", 5), seq("99")] {
        assert!(
            matches!(store.save(&k_sub, &lower).await, Err(CheckpointError::Conflict { .. })),
            "{lower} after the whole record 100 must be a Conflict"
        );
    }
    store
        .save(&k_sub, &sub("1000", 2))
        .await
        .expect("a part of a longer sequence number");
    assert!(
        matches!(
            store.save(&k_sub, &sub("1000", 1)).await,
            Err(CheckpointError::Conflict { .. })
        ),
        "an earlier part of the same aggregate must be a Conflict"
    );
    assert!(
        matches!(
            store.save(&k_sub, &sub("999", 7)).await,
            Err(CheckpointError::Conflict { .. })
        ),
        "a part of an earlier (shorter) aggregate must be a Conflict"
    );
    let long = sub(&"9".repeat(129), u64::MAX);
    store
        .save(&k_sub, &long)
        .await
        .expect("the longest sub-sequence checkpoint");
    assert_eq!(store.load(&k_sub).await.expect("load"), Some(long));

    // SHARD_END orders after every sequence number and is final.
    store
        .save(&k, &Checkpoint::ShardEnd)
        .await
        .expect("SHARD_END after a sequence number");
    assert_eq!(store.load(&k).await.expect("load"), Some(Checkpoint::ShardEnd));
    store
        .save(&k, &Checkpoint::ShardEnd)
        .await
        .expect("re-saving SHARD_END");
    assert!(
        matches!(
            store.save(&k, &seq(&"9".repeat(129))).await,
            Err(CheckpointError::Conflict { .. })
        ),
        "a sequence number after SHARD_END must be a Conflict"
    );
    assert_eq!(store.load(&k).await.expect("load"), Some(Checkpoint::ShardEnd));

    // Consumer name, stream and shard each separate keys.
    let base = CheckpointKey::new(format!("{prefix}-a"), format!("{prefix}-s"), "shardId-1");
    let variants = [
        CheckpointKey::new(format!("{prefix}-b"), format!("{prefix}-s"), "shardId-1"),
        CheckpointKey::new(format!("{prefix}-a"), format!("{prefix}-t"), "shardId-1"),
        CheckpointKey::new(format!("{prefix}-a"), format!("{prefix}-s"), "shardId-2"),
    ];
    store.save(&base, &seq("500")).await.expect("save");
    for variant in &variants {
        assert_eq!(
            store.load(variant).await.expect("load"),
            None,
            "{variant} must not see {base}"
        );
        store
            .save(variant, &seq("7"))
            .await
            .expect("a lower value under another key is no conflict");
    }
    assert_eq!(store.load(&base).await.expect("load"), Some(seq("500")));

    // Concurrent saves to one key leave the highest value.
    let k = key("shardId-concurrent");
    let values: Vec<Checkpoint> = (1..=32u32).map(|n| seq(&(n * 1000).to_string())).collect();
    let results = futures::future::join_all(values.iter().map(|v| store.save(&k, v))).await;
    for result in results {
        match result {
            Ok(()) | Err(CheckpointError::Conflict { .. }) => {}
            Err(other) => panic!("a concurrent save failed with {other:?}"),
        }
    }
    assert_eq!(
        store.load(&k).await.expect("load"),
        Some(seq("32000")),
        "concurrent saves must keep the highest"
    );
}

/// Checks [`CheckpointStore::reset`]: it moves a checkpoint backwards and
/// forwards whatever is stored, removes it with `None`, and what it wrote is
/// then an ordinary checkpoint (saves move on from it, never back). Stores
/// with leases also run [`lease_store_conformance`], which checks that a
/// reset fences the holder out.
pub async fn reset_conformance(store: &dyn CheckpointStore) {
    let prefix = unique_prefix();
    let key = CheckpointKey::new(format!("{prefix}-app"), format!("{prefix}-stream"), "shardId-reset");
    store.save(&key, &seq("5000")).await.expect("save");
    store.reset(&key, Some(&seq("12"))).await.expect("a reset backwards");
    assert_eq!(
        store.load(&key).await.expect("load"),
        Some(seq("12")),
        "reset moves back"
    );
    store.save(&key, &seq("13")).await.expect("a save on from the reset");
    assert!(
        matches!(
            store.save(&key, &seq("11")).await,
            Err(CheckpointError::Conflict { .. })
        ),
        "after a reset the checkpoint still never moves back by save"
    );
    let start = Checkpoint::AtTimestamp(crate::StartTime::new(UNIX_EPOCH));
    store.reset(&key, Some(&start)).await.expect("a reset to a start time");
    assert_eq!(store.load(&key).await.expect("load"), Some(start));
    store
        .reset(&key, Some(&Checkpoint::ShardEnd))
        .await
        .expect("a reset forwards");
    assert_eq!(store.load(&key).await.expect("load"), Some(Checkpoint::ShardEnd));
    store.reset(&key, None).await.expect("a reset to nothing");
    assert_eq!(store.load(&key).await.expect("load"), None, "removed");
    let fresh = CheckpointKey::new(
        format!("{prefix}-app"),
        format!("{prefix}-stream"),
        "shardId-never-saved",
    );
    store
        .reset(&fresh, Some(&seq("7")))
        .await
        .expect("a reset of a key never saved");
    assert_eq!(store.load(&fresh).await.expect("load"), Some(seq("7")));
    store.reset(&fresh, None).await.expect("a reset to nothing");
    store.reset(&fresh, None).await.expect("a reset of nothing to nothing");
    assert_eq!(store.load(&fresh).await.expect("load"), None);
}

/// Stored texts that are not checkpoints: a float (as Python kcpy once
/// wrote), junk, too many digits, a leading zero, whitespace, nothing, and
/// start markers without a proper time, and sub-sequence numbers that are
/// not canonical.
pub const MALFORMED_VALUES: [&str; 16] = [
    "",
    "abc",
    "4.95e+55",
    "1111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111",
    "007",
    " 42",
    "SHARD_END ",
    "AT_TIMESTAMP:",
    "AT_TIMESTAMP:0123",
    "AT_TIMESTAMP:12x",
    "12:",
    ":3",
    "12:03",
    "12:3:4",
    "12:18446744073709551616",
    "AT_TIMESTAMP:99999999999999999999",
];

/// Checks that a stored value which is not a checkpoint loads as
/// [`CheckpointError::Malformed`] and is never overwritten by a save.
///
/// `plant` writes a raw text for a key the way the backend stores values;
/// `read_raw` reads the raw text back.
pub async fn malformed_value_conformance<P, PF, R, RF>(store: &dyn CheckpointStore, mut plant: P, mut read_raw: R)
where
    P: FnMut(CheckpointKey, String) -> PF,
    PF: std::future::Future<Output = ()>,
    R: FnMut(CheckpointKey) -> RF,
    RF: std::future::Future<Output = String>,
{
    let prefix = unique_prefix();
    let good = seq(&format!("9{}", "0".repeat(60)));
    for (n, bad) in MALFORMED_VALUES.into_iter().enumerate() {
        let key = CheckpointKey::new(
            format!("{prefix}-app"),
            format!("{prefix}-stream"),
            format!("shard-{n}"),
        );
        plant(key.clone(), bad.to_owned()).await;
        match store.load(&key).await {
            Err(CheckpointError::Malformed { key: reported, .. }) => assert_eq!(*reported, key),
            other => panic!("{bad:?} must load as Malformed, got {other:?}"),
        }
        assert!(
            matches!(store.save(&key, &good).await, Err(CheckpointError::Malformed { .. })),
            "a save over {bad:?} must fail as Malformed"
        );
        assert_eq!(read_raw(key).await, bad, "a malformed value must be left as it was");
    }
}

fn assert_lost<T: std::fmt::Debug>(result: Result<T, CheckpointError>, what: &str) {
    match result {
        Err(CheckpointError::LeaseLost { .. }) => {}
        other => panic!("{what} must fail with LeaseLost, got {other:?}"),
    }
}

/// Runs every check of the [`LeaseStore`] contract, and that checkpoints
/// written through it are those of the [`CheckpointStore`]; panics on the
/// first violation, naming it.
pub async fn lease_store_conformance<S: LeaseStore + CheckpointStore>(store: &S) {
    let prefix = unique_prefix();
    let (app, stream) = (format!("{prefix}-app"), format!("{prefix}-stream"));
    let key = |shard: &str| CheckpointKey::new(&app, &stream, shard);
    let find = |leases: &[Lease], shard: &str| {
        leases
            .iter()
            .find(|l| l.key.shard_id == shard)
            .cloned()
            .unwrap_or_else(|| panic!("lease {shard} must be listed"))
    };

    // A fresh group has no leases; create adds free ones, once.
    assert!(
        store.list_leases(&app, &stream).await.expect("list").is_empty(),
        "a new group has no leases"
    );
    let parents = vec!["shardId-p1".to_owned(), "shardId-p2".to_owned()];
    assert!(
        store.create_lease(&key("shardId-a"), &parents).await.expect("create"),
        "create must add a lease"
    );
    assert!(store.create_lease(&key("shardId-b"), &[]).await.expect("create"));
    assert!(
        !store.create_lease(&key("shardId-a"), &[]).await.expect("create again"),
        "create must not replace"
    );
    let leases = store.list_leases(&app, &stream).await.expect("list");
    assert_eq!(leases.len(), 2, "both leases are listed: {leases:?}");
    let a = find(&leases, "shardId-a");
    assert_eq!(a.key, key("shardId-a"));
    assert_eq!(a.parents, parents, "parents must round-trip");
    assert_eq!(
        (a.owner.as_deref(), a.epoch, a.heartbeat, a.checkpoint.as_ref()),
        (None, 0, 0, None),
        "a new lease is free"
    );
    assert_eq!(a.handoff_to, None);

    // Taking: one winner among concurrent takers of the same observation.
    let takers = ["worker-1", "worker-2", "worker-3", "worker-4"];
    let results = futures::future::join_all(takers.iter().map(|w| store.take_lease(&a, w))).await;
    let winners: Vec<Lease> = results
        .into_iter()
        .filter_map(|result| match result {
            Ok(lease) => Some(lease),
            Err(CheckpointError::LeaseLost { .. }) => None,
            Err(other) => panic!("a concurrent take failed with {other:?}"),
        })
        .collect();
    assert_eq!(winners.len(), 1, "exactly one concurrent take must win: {winners:?}");
    let held = winners[0].clone();
    let owner = held.owner.clone().expect("a taken lease has an owner");
    assert_eq!(
        (held.epoch, held.heartbeat),
        (1, 1),
        "take raises epoch and heartbeat by one"
    );
    assert_eq!(
        find(&store.list_leases(&app, &stream).await.expect("list"), "shardId-a"),
        held,
        "take returns the stored lease"
    );
    assert_lost(
        store.take_lease(&a, "worker-9").await,
        "a take from a stale observation",
    );

    // Renewing raises the heartbeat only; fenced by owner and epoch.
    let renewed = store.renew_lease(&held).await.expect("renew");
    assert_eq!(
        (renewed.epoch, renewed.heartbeat, renewed.owner.as_deref()),
        (1, 2, Some(owner.as_str()))
    );
    let renewed = store
        .renew_lease(&held)
        .await
        .expect("renewing with an older heartbeat");
    assert_eq!(renewed.heartbeat, 3);
    let mut impostor = held.clone();
    impostor.owner = Some("worker-9".into());
    assert_lost(store.renew_lease(&impostor).await, "a renew by another owner");

    // Leased checkpoints: fenced, never backwards, shared with CheckpointStore.
    let (low, high) = (
        seq("41"),
        seq("49590338271490256608559692538361571095921575989136588898"),
    );
    store.save_leased(&held, &low).await.expect("save under the lease");
    assert_eq!(
        store.load(&key("shardId-a")).await.expect("load"),
        Some(low.clone()),
        "load sees leased saves"
    );
    // A place inside a KPL aggregate, as a lease carries it.
    let inside = Checkpoint::SubSequence(crate::SubSequence::new(SequenceNumber::parse("42").expect("valid"), 3));
    store
        .save_leased(&held, &inside)
        .await
        .expect("a sub-sequence checkpoint under the lease");
    assert_eq!(
        find(&store.list_leases(&app, &stream).await.expect("list"), "shardId-a").checkpoint,
        Some(inside.clone()),
        "the lease carries the sub-sequence checkpoint"
    );
    store.save_leased(&held, &high).await.expect("save forward");
    for lower in [&low, &inside] {
        assert!(
            matches!(
                store.save_leased(&held, lower).await,
                Err(CheckpointError::Conflict { .. })
            ),
            "a leased save backwards ({lower}) must be a Conflict"
        );
    }
    assert_lost(
        store.save_leased(&impostor, &Checkpoint::ShardEnd).await,
        "a save by another owner",
    );
    assert_eq!(
        find(&store.list_leases(&app, &stream).await.expect("list"), "shardId-a").checkpoint,
        Some(high.clone())
    );

    // An operator's reset fences the holder out and frees the lease, at
    // the checkpoint it wrote.
    let reset_key = key("shardId-reset");
    assert!(store.create_lease(&reset_key, &[]).await.expect("create"));
    let free = find(&store.list_leases(&app, &stream).await.expect("list"), "shardId-reset");
    let holding = store.take_lease(&free, "worker-1").await.expect("take");
    store.save_leased(&holding, &high).await.expect("save under the lease");
    store.reset(&reset_key, Some(&low)).await.expect("reset");
    assert_lost(
        store.save_leased(&holding, &high).await,
        "a save by the holder of a reset lease",
    );
    assert_lost(store.renew_lease(&holding).await, "a renew of a reset lease");
    let after = find(&store.list_leases(&app, &stream).await.expect("list"), "shardId-reset");
    assert_eq!(after.owner, None, "a reset lease has no owner");
    assert!(after.epoch > holding.epoch, "a reset raises the epoch");
    assert_eq!(
        after.checkpoint,
        Some(low.clone()),
        "the lease carries the reset checkpoint"
    );
    let retaken = store
        .take_lease(&after, "worker-2")
        .await
        .expect("a reset lease is free to take");
    store
        .save_leased(&retaken, &high)
        .await
        .expect("its new holder saves on");

    // Taking over an expired lease fences the old owner out of everything.
    let observed = find(&store.list_leases(&app, &stream).await.expect("list"), "shardId-a");
    let taken = store.take_lease(&observed, "worker-9").await.expect("take over");
    assert_eq!((taken.epoch, taken.heartbeat), (2, 4));
    assert_eq!(
        taken.checkpoint,
        Some(high.clone()),
        "a taken lease keeps its checkpoint"
    );
    assert_lost(
        store.save_leased(&held, &Checkpoint::ShardEnd).await,
        "a save by the old owner",
    );
    assert_lost(store.renew_lease(&held).await, "a renew by the old owner");
    assert_lost(store.release_lease(&held, None).await, "a release by the old owner");
    assert_lost(
        store.request_handoff(&held, "worker-1").await,
        "a handoff request on a stale observation",
    );
    assert_eq!(
        store.load(&key("shardId-a")).await.expect("load"),
        Some(high.clone()),
        "fenced saves change nothing"
    );

    // Cooperative handoff: request, then release to the requester.
    store
        .request_handoff(&taken, "worker-1")
        .await
        .expect("request a handoff");
    let requested = find(&store.list_leases(&app, &stream).await.expect("list"), "shardId-a");
    assert_eq!(requested.handoff_to.as_deref(), Some("worker-1"));
    assert_eq!(
        (requested.epoch, requested.heartbeat, requested.owner.as_deref()),
        (2, 4, Some("worker-9")),
        "a request changes nothing else"
    );
    store
        .release_lease(&requested, Some("worker-1"))
        .await
        .expect("hand over");
    let handed = find(&store.list_leases(&app, &stream).await.expect("list"), "shardId-a");
    assert_eq!(
        (handed.owner.as_deref(), handed.epoch, handed.heartbeat),
        (Some("worker-1"), 3, 5)
    );
    assert_eq!(handed.handoff_to, None, "a handoff clears the request");
    assert_lost(
        store.save_leased(&taken, &Checkpoint::ShardEnd).await,
        "a save after handing over",
    );
    store
        .save_leased(&handed, &Checkpoint::ShardEnd)
        .await
        .expect("the new owner saves");

    // Releasing frees the lease for anyone.
    store.release_lease(&handed, None).await.expect("release");
    let free = find(&store.list_leases(&app, &stream).await.expect("list"), "shardId-a");
    assert_eq!(
        (free.owner.as_deref(), free.epoch, free.checkpoint.as_ref()),
        (None, 4, Some(&Checkpoint::ShardEnd))
    );
    assert_lost(
        store.save_leased(&handed, &Checkpoint::ShardEnd).await,
        "a save after releasing",
    );
    let again = store.take_lease(&free, "worker-2").await.expect("take a free lease");
    assert_eq!(again.epoch, 5);

    // Deleting: only a free lease at SHARD_END, as observed.
    assert_lost(store.delete_lease(&again).await, "deleting a held lease");
    store.release_lease(&again, None).await.expect("release");
    assert_lost(store.delete_lease(&again).await, "deleting from a stale observation");
    let finished = find(&store.list_leases(&app, &stream).await.expect("list"), "shardId-a");
    let b = find(&store.list_leases(&app, &stream).await.expect("list"), "shardId-b");
    assert_lost(store.delete_lease(&b).await, "deleting an unfinished lease");
    store.delete_lease(&finished).await.expect("delete a finished lease");
    let leases = store.list_leases(&app, &stream).await.expect("list");
    assert!(
        leases.iter().all(|l| l.key.shard_id != "shardId-a"),
        "a deleted lease is no longer listed: {leases:?}"
    );
    assert_eq!(
        store.load(&key("shardId-a")).await.expect("load"),
        None,
        "its checkpoint went with it"
    );
    assert_lost(store.delete_lease(&finished).await, "deleting a deleted lease");

    // The other lease was untouched; groups are separate.
    let b = find(&store.list_leases(&app, &stream).await.expect("list"), "shardId-b");
    assert_eq!((b.owner.as_deref(), b.epoch, b.heartbeat), (None, 0, 0));
    assert!(
        store
            .list_leases(&format!("{prefix}-other"), &stream)
            .await
            .expect("list")
            .is_empty(),
        "consumer names separate groups"
    );
    assert!(
        store
            .list_leases(&app, &format!("{prefix}-other"))
            .await
            .expect("list")
            .is_empty(),
        "streams separate groups"
    );

    // Checkpoints saved without a lease are those the leases carry.
    store.save(&key("shardId-b"), &low).await.expect("save without a lease");
    let b = find(&store.list_leases(&app, &stream).await.expect("list"), "shardId-b");
    assert_eq!(b.checkpoint, Some(low), "a lease carries its shard's checkpoint");
}

/// A process that froze after locking a lease's row, its transaction still
/// open, holds up other workers' lease changes only until the server ends
/// that transaction: `take_lease` through `store` keeps failing with
/// retryable errors for a while (at least 5 s), then succeeds within 30 s.
///
/// `lock_row` opens a transaction on a connection of its own, locks the row
/// of the key it is given (`SELECT … FOR UPDATE`) and returns the open
/// transaction, which is held until the check ends.
pub async fn frozen_transaction_conformance<S, L, LF, T>(store: &S, lock_row: L)
where
    S: LeaseStore,
    L: FnOnce(CheckpointKey) -> LF,
    LF: std::future::Future<Output = T>,
{
    let prefix = unique_prefix();
    let key = CheckpointKey::new(format!("{prefix}-frozen"), "s", "shard-1");
    store.create_lease(&key, &[]).await.expect("create");
    let lease = store
        .list_leases(&key.consumer_name, &key.stream_name)
        .await
        .expect("list")
        .remove(0);
    let frozen = lock_row(key).await;
    let started = std::time::Instant::now();
    let taken = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match store.take_lease(&lease, "w").await {
                Ok(taken) => return taken,
                Err(error) if error.is_retryable() => {}
                Err(error) => panic!("{error:?}"),
            }
        }
    })
    .await
    .expect("the lock is given up within 30 s");
    assert!(taken.is_owned_by("w"));
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(5),
        "the lock did hold for a while"
    );
    drop(frozen);
}
