//! The seam for reading a shard: a [`ShardReader`] reads one shard from a
//! start position until its end, sending [`ShardEvent`]s. Polling
//! (GetRecords) is one reader; everything the consumer does with what is
//! read — lineage, checkpoints, leases, shutdown — is the same for any.

mod allocator;
mod deliver;
mod fan_out;
mod idle;
mod kpl;
mod polling;
mod registration;

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

pub(crate) use allocator::hint as hint_allocator;
pub(crate) use deliver::Deliver;
pub(crate) use fan_out::FanOutReader;
#[cfg(test)]
pub(crate) use idle::assert_spread;
#[cfg(any(test, feature = "test-util"))]
pub(crate) use kpl::aggregate as kpl_aggregate;
pub(crate) use polling::PollingReader;
pub(crate) use registration::resolve;
pub use registration::FanOut;

use crate::config::Settings;
use crate::kinesis::{within, ApiError, DynKinesis, FaultWatch, IteratorPosition, Records, ShardInfo, StreamRef};
use crate::lineage::Start;
use crate::retry::Backoff;
use crate::signal::Fatal;
use crate::telemetry::ShardMetrics;
use crate::Error;

/// What a reader hands to the consumer, in shard order.
#[derive(Debug)]
pub(crate) enum ShardEvent {
    /// Records in shard order; never empty.
    Records(Records),
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
    /// With `position` LATEST: the moment it was saved as the shard's start,
    /// which a reader that positions itself later must start from instead.
    pub(crate) latest_at: Option<SystemTime>,
    /// The shard's place among those this consumer reads, for spreading
    /// their calls over time.
    pub(crate) slot: usize,
    /// Where the records go, de-aggregated. Bounded: a reader waits while
    /// the consumer is behind.
    pub(crate) tx: Deliver,
    /// Stop reading: shutdown, or the shard was stopped.
    pub(crate) cancel: CancellationToken,
    /// The shard's metric handles.
    pub(crate) metrics: ShardMetrics,
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

    /// After a clean stop, once the last checkpoints are written.
    async fn finish(&self) {}
}

pub(crate) type DynReader = Arc<dyn ShardReader>;

/// What the listing says of a shard that seemed to end.
pub(crate) enum Confirmed {
    /// Closed, or no longer listed: its end, with the children listed.
    Ended(Vec<ShardInfo>),
    /// Still open: keep reading.
    Open,
    Cancelled,
}

/// Asks the stream's listing about one shard, for any reader.
pub(crate) struct Listing<'a> {
    pub(crate) api: &'a DynKinesis,
    pub(crate) stream: &'a StreamRef,
    pub(crate) shard_id: &'a str,
    pub(crate) settings: &'a Settings,
    pub(crate) cancel: &'a CancellationToken,
}

impl Listing<'_> {
    /// Whether the stream's listing shows this shard closed (or gone: past
    /// retention), with its children as listed. A stream that is itself gone
    /// is the fatal error it always was.
    pub(crate) async fn confirm_end(&self, watch: &mut FaultWatch, backoff: &mut Backoff) -> Result<Confirmed, Error> {
        let mut shards = Vec::new();
        let mut token = None;
        loop {
            let call = self.api.list_shards(self.stream, token.clone());
            let Some(result) = until_cancelled(self.cancel, within(self.settings.request_timeout, call)).await else {
                return Ok(Confirmed::Cancelled);
            };
            match watch.sort(result, self.stream) {
                Ok(page) => {
                    shards.extend(page.shards);
                    match page.next_token {
                        Some(next) => token = Some(next),
                        None => break,
                    }
                }
                Err(ApiError::Fatal(error)) => return Err(error),
                Err(
                    ApiError::Throttled(source)
                    | ApiError::Transient(source)
                    | ApiError::Credentials(source)
                    | ApiError::ClockSkew(source),
                ) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %source, ?delay, "ListShards failed; retrying");
                    if until_cancelled(self.cancel, sleep(delay)).await.is_none() {
                        return Ok(Confirmed::Cancelled);
                    }
                }
                Err(ApiError::ExpiredIterator) => {
                    return Err(Error::InvalidResponse {
                        operation: "ListShards",
                        message: "ExpiredIteratorException".into(),
                    })
                }
            }
        }
        let own = self.shard_id;
        let open = shards
            .iter()
            .any(|shard| shard.shard_id == own && shard.ending_sequence_number.is_none());
        if open {
            return Ok(Confirmed::Open);
        }
        let children = shards
            .into_iter()
            .filter(|shard| crate::lineage::parents_of(shard).iter().any(|parent| parent == own))
            .collect();
        Ok(Confirmed::Ended(children))
    }
}

/// Runs `fut` unless `cancel` comes first.
pub(crate) async fn until_cancelled<F: Future>(cancel: &CancellationToken, fut: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        out = fut => Some(out),
    }
}

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
