//! A snapshot of each shard's progress, for a health endpoint.

use crate::Checkpoint;

/// Where one shard stands, as [`Consumer::lag`](crate::Consumer::lag) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardLag {
    /// The stream of the shard.
    pub stream_name: String,
    /// The shard.
    pub shard_id: String,
    /// What the consumer is doing with it.
    pub state: ShardState,
    /// The place of the last record handed to you (`None` before the first).
    pub delivered: Option<Checkpoint>,
    /// The last checkpoint this consumer saved for it, or found at start
    /// (`None` without a checkpoint store, or before any).
    pub durable: Option<Checkpoint>,
    /// How far behind the shard's tip the latest batch read was, as Kinesis
    /// reported it; 0 at the tip.
    pub millis_behind_latest: Option<i64>,
}

/// What the consumer is doing with a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ShardState {
    /// Being read.
    Reading,
    /// Not read yet: a parent shard is not finished.
    WaitingForParents,
    /// Read to its end, and the end checkpointed; or, with
    /// [`StartPosition::Latest`](crate::StartPosition::Latest), closed before the
    /// consumer started and so not read.
    Finished,
    /// In a consumer group: another worker holds its lease (or no one does
    /// yet and this worker has not taken it).
    LeasedElsewhere,
}
