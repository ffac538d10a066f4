//! Reading a shard by polling: GetShardIterator, then GetRecords in a loop
//! within the shard's call budget.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::idle::IdleGrid;
use super::{Confirmed, Deliver, Listing, ReadShard, ShardEvent, ShardReader};
use crate::config::Settings;
use crate::kinesis::{within, ApiError, DynKinesis, FaultWatch, IteratorPosition, RecordsPage, ShardInfo, StreamRef};
use crate::lineage::Start;
use crate::retry::{retry_startup, Backoff};
use crate::telemetry::ShardMetrics;
use crate::{Error, SequenceNumber};

/// The polling reader: GetRecords, at most `max_get_records_per_second`
/// calls per shard.
pub(crate) struct PollingReader {
    api: DynKinesis,
    settings: Arc<Settings>,
    /// Iterators resolved by `prepare`, each used by the shard's first read;
    /// `None` for a shard that aged out since it was listed.
    prepared: Mutex<HashMap<String, Option<String>>>,
    /// Where idle shards' moments are counted from.
    epoch: Instant,
    /// The stream's place among the consumer's, for its shards' moments.
    stream_index: usize,
    /// Permits for first calls in flight.
    starting: Arc<Semaphore>,
}

impl PollingReader {
    pub(crate) fn new(api: DynKinesis, settings: Arc<Settings>, epoch: Instant, stream_index: usize) -> Self {
        Self {
            api,
            settings,
            prepared: Mutex::default(),
            epoch,
            stream_index,
            starting: Arc::new(Semaphore::new(FIRST_CALLS_IN_FLIGHT)),
        }
    }
}

#[async_trait]
impl ShardReader for PollingReader {
    async fn prepare(&self, stream: &StreamRef, starts: &[Start]) -> Result<(), Error> {
        let (api, settings) = (&self.api, &self.settings);
        // Owned starts: a stream of borrowed ones trips async_trait's
        // lifetimes (the closure is not general enough over them).
        let resolved: Vec<(String, Option<String>)> = futures::stream::iter(starts.to_vec())
            .map(|start| async move {
                let iterator = match retry_startup("GetShardIterator", stream, settings, || {
                    api.get_shard_iterator(stream, &start.shard_id, &start.position)
                })
                .await
                {
                    Ok(iterator) => Some(iterator),
                    // Aged out since the listing: the poller finds its end.
                    Err(Error::StreamNotFound { .. }) => None,
                    Err(error) => return Err(error),
                };
                Ok::<_, Error>((start.shard_id, iterator))
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        self.prepared.lock().unwrap_or_else(|p| p.into_inner()).extend(resolved);
        Ok(())
    }

    async fn read(&self, shard: ReadShard) -> Result<(), Error> {
        let iterator = self
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&*shard.shard_id)
            .flatten();
        let mut poller = Poller {
            api: Arc::clone(&self.api),
            stream: shard.stream,
            shard_id: shard.shard_id,
            settings: Arc::clone(&self.settings),
            position: shard.position,
            fallback: shard.fallback,
            iterator,
            idle: IdleGrid::new(self.epoch, &self.settings, shard.slot, self.stream_index),
            starting: Some(Arc::clone(&self.starting)),
            tx: shard.tx,
            cancel: shard.cancel,
            watch: FaultWatch::new(self.settings.credentials_timeout),
            metrics: shard.metrics,
        };
        poller.poll_loop().await
    }
}

/// Shards' first GetRecords calls in flight at once. The shards of a large
/// stream start as fast as their first calls come back rather than all at
/// once: each call in flight holds a connection of its own, which stays open
/// once idle (10,000 shards' first calls at once took 2,000 to 10,000
/// connections, and 80 to 240 MB).
const FIRST_CALLS_IN_FLIGHT: usize = 64;

/// What comes after asking for a new iterator.
enum Next {
    Iterator(String),
    /// The shard is gone (past retention): its end.
    End(Vec<ShardInfo>),
    /// Shutdown.
    Stop,
}

struct Poller {
    api: DynKinesis,
    stream: Arc<StreamRef>,
    shard_id: Arc<str>,
    settings: Arc<Settings>,
    /// Where the shard starts.
    position: IteratorPosition,
    /// Where to start again if the first iterator expires unused.
    fallback: IteratorPosition,
    /// An iterator for `position` resolved before the consumer was built.
    iterator: Option<String>,
    /// When to poll once caught up.
    idle: IdleGrid,
    /// Taken by the first call, which waits for a permit.
    starting: Option<Arc<Semaphore>>,
    tx: Deliver,
    cancel: CancellationToken,
    watch: FaultWatch,
    metrics: ShardMetrics,
}

impl Poller {
    /// Runs `fut` unless shutdown comes first.
    async fn until_cancelled<F: Future>(&self, fut: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => None,
            out = fut => Some(out),
        }
    }

    async fn poll_loop(&mut self) -> Result<(), Error> {
        let limit = self.settings.max_records_per_call;
        let spacing = self.settings.min_call_spacing();
        let mut backoff = Backoff::new(&self.settings);
        // The last sequence number handed to the consumer: an expired iterator
        // is renewed right after it, so nothing is skipped or read twice.
        let mut last: Option<SequenceNumber> = None;
        let mut next_call = Instant::now();
        let mut first = self.iterator.is_none();
        loop {
            let iterator = match self.iterator.take() {
                Some(iterator) => iterator,
                None => match self
                    .new_iterator(last.as_ref(), std::mem::take(&mut first), &mut backoff)
                    .await?
                {
                    Next::Iterator(iterator) => iterator,
                    Next::End(children) => return self.end(children).await,
                    Next::Stop => return Ok(()),
                },
            };
            if self.until_cancelled(sleep_until(next_call)).await.is_none() {
                return Ok(());
            }
            let permit = match self.starting.take() {
                Some(starting) => match self.until_cancelled(starting.acquire_owned()).await {
                    Some(permit) => permit.ok(),
                    None => return Ok(()),
                },
                None => None,
            };
            let started = Instant::now();
            next_call = started + spacing;
            let call = self.api.get_records(&self.stream, &self.shard_id, &iterator, limit);
            let Some(result) = self.until_cancelled(within(self.settings.request_timeout, call)).await else {
                return Ok(());
            };
            drop(permit);
            self.metrics.get_records(started.elapsed());
            let sorted = self.watch.sort(result, &self.stream);
            if let Err(error) = &sorted {
                self.metrics.failed("GetRecords", error);
            }
            match sorted {
                Ok(page) => {
                    backoff.reset();
                    self.metrics.behind(page.millis_behind_latest);
                    let count = page.records.len();
                    let behind = count >= limit as usize || page.millis_behind_latest.is_some_and(|ms| ms > 0);
                    let RecordsPage {
                        records,
                        next_iterator,
                        millis_behind_latest,
                        child_shards,
                    } = page;
                    if let Some(newest) = records.newest_detached() {
                        last = Some(newest);
                        tracing::trace!(count, millis_behind_latest, "fetched records");
                        match self.until_cancelled(self.tx.send(ShardEvent::Records(records))).await {
                            Some(Ok(())) => {}
                            _ => return Ok(()),
                        }
                    }
                    match next_iterator {
                        Some(next) => self.iterator = Some(next),
                        // Kinesis names the children at a shard's end.
                        None if !child_shards.is_empty() => return self.end(child_shards).await,
                        // A 2xx body without an iterator or children is no
                        // proof of a shard end (a proxy's `{}`, a truncated
                        // body): only the listing can say the shard is closed.
                        None => match self.confirm_end(&mut backoff).await? {
                            Confirmed::Ended(children) => return self.end(children).await,
                            Confirmed::Cancelled => return Ok(()),
                            Confirmed::Open => {
                                let delay = backoff.next_delay();
                                tracing::warn!(
                                    ?delay,
                                    "GetRecords gave no next iterator for an open shard; renewing it"
                                );
                                next_call = next_call.max(Instant::now() + delay);
                                continue;
                            }
                        },
                    }
                    if !behind {
                        next_call = next_call.max(self.idle.next(started));
                    }
                }
                Err(
                    ApiError::Throttled(source)
                    | ApiError::Transient(source)
                    | ApiError::Credentials(source)
                    | ApiError::ClockSkew(source),
                ) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %source, attempt = backoff.attempts(), ?delay, "GetRecords failed; retrying");
                    // Iterators stay valid until they expire; retry the same one.
                    self.iterator = Some(iterator);
                    next_call = next_call.max(Instant::now() + delay);
                }
                Err(ApiError::ExpiredIterator) => {
                    tracing::info!(after = ?last, "shard iterator expired; renewing it");
                }
                Err(ApiError::Fatal(Error::StreamNotFound { .. })) => match self.confirm_end(&mut backoff).await? {
                    Confirmed::Ended(children) => return self.end(children).await,
                    Confirmed::Cancelled => return Ok(()),
                    Confirmed::Open => {
                        let delay = backoff.next_delay();
                        tracing::warn!(
                            ?delay,
                            "GetRecords found no shard, yet the shard is listed open; retrying"
                        );
                        next_call = next_call.max(Instant::now() + delay);
                    }
                },
                Err(ApiError::Fatal(error)) => return Err(error),
            }
        }
    }

    /// Hands over the shard's end, with the shards that continue it.
    async fn end(&self, children: Vec<ShardInfo>) -> Result<(), Error> {
        tracing::info!(children = children.len(), "reached the end of the shard");
        let _ = self.until_cancelled(self.tx.send(ShardEvent::End(children))).await;
        Ok(())
    }

    async fn confirm_end(&mut self, backoff: &mut Backoff) -> Result<Confirmed, Error> {
        let listing = Listing {
            api: &self.api,
            stream: &self.stream,
            shard_id: &self.shard_id,
            settings: &self.settings,
            cancel: &self.cancel,
        };
        listing.confirm_end(&mut self.watch, backoff).await
    }

    /// A fresh iterator: right after `last` if anything was fetched, else at
    /// the start position (`first`) or its fallback.
    async fn new_iterator(
        &mut self,
        last: Option<&SequenceNumber>,
        first: bool,
        backoff: &mut Backoff,
    ) -> Result<Next, Error> {
        let position = match last {
            Some(seq) => IteratorPosition::AfterSequence(seq.clone()),
            None if first => self.position.clone(),
            None => self.fallback.clone(),
        };
        loop {
            let call = self.api.get_shard_iterator(&self.stream, &self.shard_id, &position);
            let Some(result) = self.until_cancelled(within(self.settings.request_timeout, call)).await else {
                return Ok(Next::Stop);
            };
            let sorted = self.watch.sort(result, &self.stream);
            if let Err(error) = &sorted {
                self.metrics.failed("GetShardIterator", error);
            }
            match sorted {
                Ok(iterator) => return Ok(Next::Iterator(iterator)),
                // One shard past retention is that shard's end, not the
                // stream's: only a stream missing from the listing is fatal.
                Err(ApiError::Fatal(Error::StreamNotFound { .. })) => match self.confirm_end(backoff).await? {
                    Confirmed::Ended(children) => return Ok(Next::End(children)),
                    Confirmed::Cancelled => return Ok(Next::Stop),
                    Confirmed::Open => {
                        let delay = backoff.next_delay();
                        tracing::warn!(
                            ?delay,
                            "GetShardIterator found no shard, yet it is listed open; retrying"
                        );
                        if self.until_cancelled(sleep(delay)).await.is_none() {
                            return Ok(Next::Stop);
                        }
                    }
                },
                Err(ApiError::Fatal(error)) => return Err(error),
                Err(
                    ApiError::Throttled(source)
                    | ApiError::Transient(source)
                    | ApiError::Credentials(source)
                    | ApiError::ClockSkew(source),
                ) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %source, ?delay, "GetShardIterator failed; retrying");
                    if self.until_cancelled(sleep(delay)).await.is_none() {
                        return Ok(Next::Stop);
                    }
                }
                Err(ApiError::ExpiredIterator) => {
                    return Err(Error::InvalidResponse {
                        operation: "GetShardIterator",
                        message: "ExpiredIteratorException".into(),
                    })
                }
            }
        }
    }
}
