//! A conformance suite for [`CheckpointStore`] implementations.
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

use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Checkpoint, CheckpointError, CheckpointKey, CheckpointStore, SequenceNumber};

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
                assert_eq!(stored, realistic, "Conflict must carry the stored value");
                assert_eq!(attempted, seq(lower), "Conflict must carry the attempted value");
            }
            other => panic!("saving {lower} below the stored checkpoint must be a Conflict, got {other:?}"),
        }
    }
    assert_eq!(
        store.load(&k).await.expect("load"),
        Some(realistic.clone()),
        "a rejected save must change nothing"
    );

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

/// Stored texts that are not checkpoints: a float (as Python kcpy once
/// wrote), junk, too many digits, a leading zero, whitespace, nothing.
pub const MALFORMED_VALUES: [&str; 7] = [
    "",
    "abc",
    "4.95e+55",
    "1111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111",
    "007",
    " 42",
    "SHARD_END ",
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
