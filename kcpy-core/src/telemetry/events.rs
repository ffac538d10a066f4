//! Lifecycle events a caller can watch without parsing logs.

use tokio::sync::broadcast;

/// Something that happened to the consumer's shards or leases, from
/// [`Consumer::events`](crate::Consumer::events).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerEvent {
    /// Reading of a shard started (or started again, after a lease came back).
    ShardStarted {
        /// The shard's stream.
        stream_name: String,
        /// The shard.
        shard_id: String,
    },
    /// A shard was read to its end and its end checkpointed; its children
    /// may start.
    ShardFinished {
        /// The shard's stream.
        stream_name: String,
        /// The shard.
        shard_id: String,
    },
    /// This worker took a shard's lease.
    LeaseAcquired {
        /// The shard's stream.
        stream_name: String,
        /// The shard.
        shard_id: String,
        /// The lease's epoch: it grows with every change of holder.
        epoch: u64,
    },
    /// This worker lost a shard's lease: taken over, or not renewed in time.
    /// Nothing more of the shard is delivered, and no later checkpoint of
    /// it is saved by this worker.
    LeaseLost {
        /// The shard's stream.
        stream_name: String,
        /// The shard.
        shard_id: String,
    },
    /// The group rebalances: this worker, holding fewer leases than its
    /// share, asked the worker holding most for one of them. It comes as
    /// [`LeaseAcquired`](Self::LeaseAcquired) once handed over.
    LeaseRequested {
        /// The shard's stream.
        stream_name: String,
        /// The shard.
        shard_id: String,
        /// The worker asked.
        from: Option<String>,
    },
    /// This worker handed a shard's lease to another that asked for it, to
    /// balance the group; its processed records were checkpointed first.
    LeaseHandedOver {
        /// The shard's stream.
        stream_name: String,
        /// The shard.
        shard_id: String,
        /// The worker it went to.
        to: String,
    },
}

/// The sending side; a send without receivers is not an error.
#[derive(Debug, Clone)]
pub(crate) struct Events(broadcast::Sender<ConsumerEvent>);

impl Events {
    /// Room for this many events per receiver; a receiver further behind
    /// misses the oldest (and is told so by `RecvError::Lagged`).
    const CAPACITY: usize = 1024;

    pub(crate) fn new() -> Self {
        Self(broadcast::channel(Self::CAPACITY).0)
    }

    pub(crate) fn send(&self, event: ConsumerEvent) {
        let _ = self.0.send(event);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ConsumerEvent> {
        self.0.subscribe()
    }
}
