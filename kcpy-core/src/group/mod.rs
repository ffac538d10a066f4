//! Sharing a stream's shards between processes: the [`LeaseStore`] trait.
//!
//! Workers with the same consumer name on the same stream split its shards
//! through leases, one per shard. A lease names its owner and carries an
//! `epoch`, a fencing token raised whenever the owner changes: checkpoint
//! writes name the epoch they were made under, so a worker that lost a lease
//! (paused, partitioned, too slow to renew) cannot overwrite the checkpoint
//! of the worker that took it over.
//!
//! Expiry needs no synchronised clocks: a lease is expired for an observer
//! when its `heartbeat`, raised by every renewal, has not changed for the
//! lease duration on the observer's own clock (as in the KCL).

mod coordinator;
mod membership;
mod plan;
mod tally;
#[cfg(test)]
mod tests;

pub(crate) use coordinator::Coordinator;
pub(crate) use membership::{GroupEvent, Membership};
pub(crate) use tally::Tally;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{Checkpoint, CheckpointError, CheckpointKey};

/// One shard's lease as a [`LeaseStore`] holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// Consumer name, stream and shard.
    pub key: CheckpointKey,
    /// The shard's parents (after a split or merge), as listed when the lease
    /// was created: a lease is taken only once its parents are finished.
    pub parents: Vec<String>,
    /// The worker holding the lease; `None` when it is free.
    pub owner: Option<String>,
    /// The fencing token: raised by one on every change of owner (take,
    /// release, handoff), never on renewal.
    pub epoch: u64,
    /// Raised by one on every renewal and every change of owner.
    pub heartbeat: u64,
    /// A worker that asked the owner to hand the lease over.
    pub handoff_to: Option<String>,
    /// The shard's checkpoint.
    pub checkpoint: Option<Checkpoint>,
}

impl Lease {
    /// A free lease for `key` with no checkpoint, as [`LeaseStore::create_lease`] makes it.
    pub fn new(key: CheckpointKey, parents: Vec<String>) -> Self {
        Self {
            key,
            parents,
            owner: None,
            epoch: 0,
            heartbeat: 0,
            handoff_to: None,
            checkpoint: None,
        }
    }

    /// Whether `worker` owns this lease.
    pub fn is_owned_by(&self, worker: &str) -> bool {
        self.owner.as_deref() == Some(worker)
    }
}

/// Durable, shared storage for shard leases, keyed by [`CheckpointKey`].
///
/// A consumer given a lease store ([`ConsumerBuilder::lease_store`](crate::ConsumerBuilder::lease_store))
/// reads only the shards it holds leases for. Stores that hold leases also
/// hold the checkpoints, in the same record, so that a checkpoint write can be
/// checked against the lease in one atomic step. Run
/// [`test_util::lease_store_conformance`](crate::test_util) (feature
/// `test-util`) against an implementation to check the contract.
///
/// # Contract
///
/// Every method that changes a lease is conditional and atomic: it checks the
/// stored lease and writes in one step, and when the check fails it changes
/// nothing and returns [`CheckpointError::LeaseLost`].
///
/// - `create_lease` adds a free lease (epoch 0, heartbeat 0) unless one exists
///   for the key, and says whether it did; an existing lease is left as is.
/// - `list_leases` returns every lease of one consumer name on one stream.
/// - `take_lease` succeeds only if the stored lease still has the observed
///   `epoch` and `heartbeat`; it sets the owner, raises both by one and clears
///   `handoff_to`.
/// - `renew_lease` succeeds only if the stored lease has the held owner and
///   epoch; it raises the heartbeat by one and returns the stored lease.
/// - `request_handoff` succeeds only if the stored lease has the observed
///   owner and epoch; it sets `handoff_to`, nothing else.
/// - `release_lease` succeeds only if the stored lease has the held owner and
///   epoch; it sets the owner to `to` (a handoff) or none, raises epoch and
///   heartbeat by one and clears `handoff_to`.
/// - `save_leased` succeeds only if the stored lease has the held owner and
///   epoch; then it follows [`CheckpointStore::save`](crate::CheckpointStore::save)'s
///   contract (durable, never backwards: [`CheckpointError::Conflict`]).
///   Checkpoints written through either trait are the same checkpoints.
/// - `delete_lease` removes the lease only if the stored lease is free, has
///   the observed epoch and its checkpoint is
///   [`Checkpoint::ShardEnd`]; otherwise (also when there is no lease) it
///   returns [`CheckpointError::LeaseLost`].
/// - Transient failures are [`CheckpointError::Unavailable`].
#[async_trait]
pub trait LeaseStore: fmt::Debug + Send + Sync + 'static {
    /// Every lease of `consumer_name` on `stream_name`.
    async fn list_leases(&self, consumer_name: &str, stream_name: &str) -> Result<Vec<Lease>, CheckpointError>;

    /// Creates a free lease for `key` unless one exists; `true` if it did.
    async fn create_lease(&self, key: &CheckpointKey, parents: &[String]) -> Result<bool, CheckpointError>;

    /// Makes `owner` the owner of the lease as it was `observed`.
    async fn take_lease(&self, observed: &Lease, owner: &str) -> Result<Lease, CheckpointError>;

    /// Renews a `held` lease; returns it as stored now.
    async fn renew_lease(&self, held: &Lease) -> Result<Lease, CheckpointError>;

    /// Asks the owner of the `observed` lease to hand it to `to`.
    async fn request_handoff(&self, observed: &Lease, to: &str) -> Result<(), CheckpointError>;

    /// Gives up a `held` lease: to the worker `to`, or free for anyone.
    async fn release_lease(&self, held: &Lease, to: Option<&str>) -> Result<(), CheckpointError>;

    /// Saves the checkpoint of a `held` lease's shard, fenced by its epoch.
    async fn save_leased(&self, held: &Lease, checkpoint: &Checkpoint) -> Result<(), CheckpointError>;

    /// Removes the `observed` lease of a finished shard, free and at
    /// `SHARD_END`: the group deletes it once every child shard has a
    /// checkpoint of its own, or once the shard is past retention.
    async fn delete_lease(&self, observed: &Lease) -> Result<(), CheckpointError>;
}

macro_rules! forward_lease_store {
    ($ptr:ident) => {
        #[async_trait]
        impl<T: LeaseStore + ?Sized> LeaseStore for $ptr<T> {
            async fn list_leases(&self, consumer_name: &str, stream_name: &str) -> Result<Vec<Lease>, CheckpointError> {
                (**self).list_leases(consumer_name, stream_name).await
            }
            async fn create_lease(&self, key: &CheckpointKey, parents: &[String]) -> Result<bool, CheckpointError> {
                (**self).create_lease(key, parents).await
            }
            async fn take_lease(&self, observed: &Lease, owner: &str) -> Result<Lease, CheckpointError> {
                (**self).take_lease(observed, owner).await
            }
            async fn renew_lease(&self, held: &Lease) -> Result<Lease, CheckpointError> {
                (**self).renew_lease(held).await
            }
            async fn request_handoff(&self, observed: &Lease, to: &str) -> Result<(), CheckpointError> {
                (**self).request_handoff(observed, to).await
            }
            async fn release_lease(&self, held: &Lease, to: Option<&str>) -> Result<(), CheckpointError> {
                (**self).release_lease(held, to).await
            }
            async fn save_leased(&self, held: &Lease, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
                (**self).save_leased(held, checkpoint).await
            }
            async fn delete_lease(&self, observed: &Lease) -> Result<(), CheckpointError> {
                (**self).delete_lease(observed).await
            }
        }
    };
}

forward_lease_store!(Arc);
forward_lease_store!(Box);
