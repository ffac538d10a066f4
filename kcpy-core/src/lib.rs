//! The core of kcpy: a consumer of Amazon Kinesis Data Streams that is a
//! [`futures::Stream`] of [`Record`]s, with checkpoints behind the
//! [`CheckpointStore`] trait.
//!
//! ```no_run
//! use futures::StreamExt;
//! use kcpy_core::{Consumer, StartPosition};
//!
//! # async fn run(client: aws_sdk_kinesis::Client, store: impl kcpy_core::CheckpointStore) -> Result<(), kcpy_core::Error> {
//! let mut consumer = Consumer::builder(client, "my-stream")
//!     .consumer_name("billing")
//!     .checkpoint_store(store)
//!     .start_position(StartPosition::TrimHorizon)
//!     .build()
//!     .await?;
//! while let Some(record) = consumer.next().await {
//!     println!("{} {:?}", record.partition_key, record.data);
//! }
//! // The stream ended: on shutdown, or on a fatal error.
//! consumer.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # At least once
//!
//! A shard's checkpoint only ever advances over records the caller has
//! processed. In [`CheckpointMode::Auto`] a record counts as processed when
//! the caller asks for the next item; in [`CheckpointMode::Manual`] when it is
//! passed to [`Checkpointer::checkpoint`]. After a crash, records processed
//! since the last written checkpoint are delivered again; none is skipped.
//!
//! Auto mode counts on you to finish with a record before asking for the
//! next. Stream combinators that read ahead (`chunks`, `ready_chunks`,
//! `buffered`, `for_each_concurrent`, `forward`) break that: records they
//! hold count as processed before you have them. For batches use
//! [`Consumer::next_batch`]; for concurrent work, [`CheckpointMode::Manual`].
//!
//! When results go to the database that holds the checkpoints, a store can
//! write the checkpoint inside the caller's transaction
//! ([`Checkpointer::prepare`], [`PendingCheckpoint`]; the PostgreSQL and
//! MySQL stores' `commit`): results and checkpoint commit together, and each
//! record is applied effectively once.
//!
//! # Consumer groups
//!
//! Processes with the same consumer name and a shared [`LeaseStore`]
//! ([`ConsumerBuilder::lease_store`]) split a stream's shards: each reads only
//! the shards it holds a lease for, takes over those of a process that stops
//! renewing, and hands leases over cooperatively when the group rebalances.
//! Checkpoint writes are fenced by the lease's epoch, so a process that lost
//! a lease cannot overwrite the progress of the one that took it over.

// The layout follows the data: `kinesis` is the transport, `read` the ways
// of reading a shard, `lineage` which shards to read when, `checkpoint` and
// `group` where progress and leases are kept, `consumer` what ties them
// together; `signal` is how background tasks reach the consumer, `telemetry`
// what it tells operators (metrics, lag, events).
mod checkpoint;
mod clock;
mod config;
mod consumer;
mod error;
mod group;
mod kinesis;
mod lineage;
mod read;
mod record;
mod retry;
mod sequence;
mod signal;
mod telemetry;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use checkpoint::{
    redact_password, Checkpoint, CheckpointError, CheckpointKey, CheckpointStore, Checkpointer, PendingCheckpoint,
    StartTime, SubSequence,
};
pub use config::{CheckpointMode, StartPosition};
pub use consumer::{Consumer, ConsumerBuilder, ShutdownHandle, StreamSpec};
pub use error::{BoxError, Error};
pub use group::{Lease, LeaseStore};
pub use read::FanOut;
pub use record::{Aggregate, MalformedAggregate, Record};
pub use sequence::{ParseSequenceNumberError, SequenceNumber, SequenceNumberErrorKind};
pub use telemetry::{ConsumerEvent, ShardLag, ShardState};

/// Re-exported so users need not depend on tokio-util to pass a token to
/// [`ConsumerBuilder::shutdown_token`].
pub use tokio_util::sync::CancellationToken;

/// Re-exported: the type of [`Record::partition_key`], a `&str` view of a
/// shared buffer.
pub use bytestring::ByteString;

/// Re-exported for implementing [`CheckpointStore`] without another dependency.
pub use async_trait::async_trait;
