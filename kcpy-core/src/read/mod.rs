//! The seam for reading a shard: a [`ShardReader`] reads one shard from a
//! start position until its end, sending [`ShardEvent`]s. Polling
//! (GetRecords) is one reader; everything the consumer does with what is
//! read — lineage, checkpoints, leases, shutdown — is the same for any.

mod polling;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub(crate) use polling::PollingReader;

use crate::kinesis::{IteratorPosition, ShardInfo, StreamRef};
use crate::lineage::Start;
use crate::signal::Fatal;
use crate::{Error, Record};

/// What a reader hands to the consumer, in shard order.
#[derive(Debug)]
pub(crate) enum ShardEvent {
    /// Records in shard order; never empty.
    Records(Vec<Record>),
    /// The shard is closed and every record of it was handed over; with the
    /// shards that continue it, as Kinesis reported them.
    End(Vec<ShardInfo>),
}

/// One shard for a reader to read.
#[derive(Debug)]
pub(crate) struct ReadShard {
    pub(crate) stream: Arc<StreamRef>,
    pub(crate) shard_id: Arc<str>,
    /// Where the shard starts.
    pub(crate) position: IteratorPosition,
    /// Where to start again if nothing was read from `position` yet and it
    /// has to be given up (an iterator expired unused).
    pub(crate) fallback: IteratorPosition,
    /// The shard's place among those this consumer reads, for spreading
    /// their calls over time.
    pub(crate) slot: usize,
    /// Bounded: a reader waits while the consumer is behind.
    pub(crate) tx: mpsc::Sender<ShardEvent>,
    /// Stop reading: shutdown, or the shard was stopped.
    pub(crate) cancel: CancellationToken,
}

/// A way of reading shards.
///
/// A reader retries what passes (throttling, 5xx, resets, expired positions)
/// itself and returns only errors retrying cannot mend; it returns `Ok` at
/// the shard's end (after sending [`ShardEvent::End`]) or once `cancel` is
/// cancelled. It never sends a record twice or skips one: after any fault it
/// resumes right after the last record it sent.
#[async_trait]
pub(crate) trait ShardReader: Send + Sync + 'static {
    /// Called by `build` for the shards that start then, so that errors such
    /// as access denied surface from `build`, and LATEST means the tip as of
    /// `build` returning.
    async fn prepare(&self, stream: &StreamRef, starts: &[Start]) -> Result<(), Error>;

    /// Reads one shard until its end, `cancel`, or a fatal error.
    async fn read(&self, shard: ReadShard) -> Result<(), Error>;
}

pub(crate) type DynReader = Arc<dyn ShardReader>;

/// Reads `shard` with `reader` as a task of its own: a fatal error or a
/// panic stops the consumer, by the one path fatal errors take.
pub(crate) async fn run(reader: DynReader, shard: ReadShard, fatal: Fatal) {
    let cancel = shard.cancel.clone();
    let read = reader.read(shard);
    match crate::error::catch_panic("shard reader", read).await {
        Ok(Ok(())) => {}
        // Stopped meanwhile: what failed no longer matters.
        Ok(Err(_)) if cancel.is_cancelled() => {}
        Ok(Err(error)) | Err(error) => fatal.report("shard reader", error),
    }
}
