//! The contract of checkpoints written in the caller's own transaction
//! ([`PendingCheckpoint`]), for stores that offer it.

use std::future::Future;

use super::{seq, unique_prefix};
use crate::{CheckpointError, CheckpointKey, CheckpointStore, LeaseStore, PendingCheckpoint, Record, SequenceNumber};

fn pending(key: &CheckpointKey, sequence: &str, lease: Option<(&str, u64)>) -> PendingCheckpoint {
    let record = Record::new(
        key.shard_id.as_str(),
        SequenceNumber::parse(sequence).expect("test sequence numbers are valid"),
        "k",
        &b""[..],
    );
    PendingCheckpoint::detached(
        key.clone(),
        &record,
        lease.map(|(owner, epoch)| (owner.to_owned(), epoch)),
    )
}

/// Checks a store's writes of checkpoints in a transaction: `commit` opens a
/// transaction, writes the pending checkpoint in it and commits; `roll_back`
/// does the same but rolls back. Each returns the write's result.
///
/// A committed write is what `load` returns; a rolled-back one leaves the
/// stored checkpoint as it was; a write never moves a checkpoint back or
/// writes one twice ([`CheckpointError::AlreadyCommitted`]); and a write
/// fenced by a lease the store no longer shows fails with
/// [`CheckpointError::LeaseLost`] and changes nothing.
pub async fn in_transaction_conformance<S, C, CF, R, RF>(store: &S, mut commit: C, mut roll_back: R)
where
    S: LeaseStore + CheckpointStore,
    C: FnMut(PendingCheckpoint) -> CF,
    CF: Future<Output = Result<(), CheckpointError>>,
    R: FnMut(PendingCheckpoint) -> RF,
    RF: Future<Output = Result<(), CheckpointError>>,
{
    let prefix = unique_prefix();
    let key = CheckpointKey::new(format!("{prefix}-tx"), "s", "shard-1");
    let load = |key: CheckpointKey| async move { store.load(&key).await.expect("load") };

    roll_back(pending(&key, "10", None))
        .await
        .expect("a write in a new row");
    assert_eq!(load(key.clone()).await, None, "rolled back: no checkpoint");
    commit(pending(&key, "10", None)).await.expect("a write in a new row");
    assert_eq!(load(key.clone()).await, Some(seq("10")));
    roll_back(pending(&key, "20", None)).await.expect("a write forward");
    assert_eq!(load(key.clone()).await, Some(seq("10")), "rolled back: as it was");
    commit(pending(&key, "20", None)).await.expect("a write forward");
    assert_eq!(load(key.clone()).await, Some(seq("20")));
    match commit(pending(&key, "20", None)).await {
        Err(CheckpointError::AlreadyCommitted { stored, .. }) => assert_eq!(stored, seq("20")),
        other => panic!("the same checkpoint twice: {other:?}"),
    }
    assert!(
        matches!(
            commit(pending(&key, "15", None)).await,
            Err(CheckpointError::Conflict { .. })
        ),
        "a write backwards"
    );
    assert_eq!(load(key.clone()).await, Some(seq("20")));

    // In a group: fenced by the lease's owner and epoch.
    let leased = CheckpointKey::new(format!("{prefix}-tx-lease"), "s", "shard-1");
    store.create_lease(&leased, &[]).await.expect("create");
    let free = store
        .list_leases(&leased.consumer_name, &leased.stream_name)
        .await
        .expect("list")
        .remove(0);
    let held = store.take_lease(&free, "worker-a").await.expect("take");
    let fence = Some(("worker-a", held.epoch));
    commit(pending(&leased, "30", fence))
        .await
        .expect("a write under the lease");
    assert_eq!(load(leased.clone()).await, Some(seq("30")));
    let renewed = store.renew_lease(&held).await.expect("renew");
    assert_eq!(renewed.checkpoint, Some(seq("30")), "the lease row holds it");
    let taken = store.take_lease(&renewed, "worker-b").await.expect("taken over");
    for lease in [fence, Some(("worker-b", held.epoch)), Some(("worker-a", taken.epoch))] {
        assert!(
            matches!(
                commit(pending(&leased, "40", lease)).await,
                Err(CheckpointError::LeaseLost { .. })
            ),
            "fenced by {lease:?} while worker-b holds epoch {}",
            taken.epoch
        );
    }
    assert_eq!(load(leased.clone()).await, Some(seq("30")), "nothing written");
    commit(pending(&leased, "40", Some(("worker-b", taken.epoch))))
        .await
        .expect("the new owner writes");
    let stored = store
        .list_leases(&leased.consumer_name, &leased.stream_name)
        .await
        .expect("list")
        .remove(0);
    assert_eq!(stored.checkpoint, Some(seq("40")));
    assert_eq!((stored.owner.as_deref(), stored.epoch), (Some("worker-b"), taken.epoch));
}
