//! One task per shard: GetShardIterator, then GetRecords in a loop, handing
//! batches to the consumer through a bounded channel.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::{Backoff, Settings};
use crate::kinesis::{within, ApiError, DynKinesis, IteratorPosition, RecordsPage, ShardInfo, StreamRef};
use crate::{Error, Record, SequenceNumber};

/// What a poller hands to the consumer.
#[derive(Debug)]
pub(crate) enum ShardEvent {
    /// Records in shard order; never empty.
    Records(Vec<Record>),
    /// The shard is closed and every record of it was handed over; with the
    /// shards that continue it, as GetRecords reported them.
    End(Vec<ShardInfo>),
    /// The poller stopped; the consumer must stop too.
    Fatal(Error),
}

pub(crate) struct Poller {
    pub(crate) api: DynKinesis,
    pub(crate) stream: Arc<StreamRef>,
    pub(crate) shard_id: Arc<str>,
    pub(crate) settings: Arc<Settings>,
    /// Where the shard starts.
    pub(crate) position: IteratorPosition,
    /// Where to start again if the first iterator expires unused.
    pub(crate) fallback: IteratorPosition,
    /// An iterator for `position` resolved before the consumer was built.
    pub(crate) iterator: Option<String>,
    /// Added once, to the wait before the first idle poll, so that shards
    /// polled at the same interval do not all call at the same moment.
    pub(crate) phase: Duration,
    pub(crate) tx: mpsc::Sender<ShardEvent>,
    pub(crate) cancel: CancellationToken,
}

impl Poller {
    pub(crate) async fn run(mut self) {
        if let Err(error) = self.poll_loop().await {
            tracing::error!(error = %error, source = ?std::error::Error::source(&error), "shard poller stopped");
            let _ = self.until_cancelled(self.tx.send(ShardEvent::Fatal(error))).await;
        }
    }

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
                    Some(iterator) => iterator,
                    None => return Ok(()),
                },
            };
            if self.until_cancelled(sleep_until(next_call)).await.is_none() {
                return Ok(());
            }
            let started = Instant::now();
            next_call = started + spacing;
            let call = self.api.get_records(&self.stream, &self.shard_id, &iterator, limit);
            let Some(result) = self.until_cancelled(within(self.settings.request_timeout, call)).await else {
                return Ok(());
            };
            match result {
                Ok(page) => {
                    backoff.reset();
                    let count = page.records.len();
                    let behind = count >= limit as usize || page.millis_behind_latest.is_some_and(|ms| ms > 0);
                    let RecordsPage {
                        records,
                        next_iterator,
                        millis_behind_latest,
                        child_shards,
                    } = page;
                    if count > 0 {
                        let batch = records;
                        let newest = &batch[batch.len() - 1].sequence_number;
                        match &mut last {
                            Some(last) => last.assign(newest),
                            None => last = Some(newest.clone()),
                        }
                        tracing::trace!(count, millis_behind_latest, "fetched records");
                        match self.until_cancelled(self.tx.send(ShardEvent::Records(batch))).await {
                            Some(Ok(())) => {}
                            _ => return Ok(()),
                        }
                    }
                    match next_iterator {
                        Some(next) => self.iterator = Some(next),
                        None => {
                            tracing::info!("reached the end of the shard");
                            let end = ShardEvent::End(child_shards);
                            let _ = self.until_cancelled(self.tx.send(end)).await;
                            return Ok(());
                        }
                    }
                    if !behind {
                        let phase = std::mem::take(&mut self.phase);
                        next_call = next_call.max(started + self.settings.idle_interval + phase);
                    }
                }
                Err(ApiError::Throttled(source) | ApiError::Transient(source)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %source, attempt = backoff.attempts(), ?delay, "GetRecords failed; retrying");
                    // Iterators stay valid until they expire; retry the same one.
                    self.iterator = Some(iterator);
                    next_call = next_call.max(Instant::now() + delay);
                }
                Err(ApiError::ExpiredIterator) => {
                    tracing::info!(after = ?last, "shard iterator expired; renewing it");
                }
                Err(ApiError::Fatal(error)) => return Err(error),
            }
        }
    }

    /// A fresh iterator: right after `last` if anything was fetched, else at
    /// the start position (`first`) or its fallback. `None` on shutdown.
    async fn new_iterator(
        &mut self,
        last: Option<&SequenceNumber>,
        first: bool,
        backoff: &mut Backoff,
    ) -> Result<Option<String>, Error> {
        let position = match last {
            Some(seq) => IteratorPosition::AfterSequence(seq.clone()),
            None if first => self.position.clone(),
            None => self.fallback.clone(),
        };
        loop {
            let call = self.api.get_shard_iterator(&self.stream, &self.shard_id, &position);
            let Some(result) = self.until_cancelled(within(self.settings.request_timeout, call)).await else {
                return Ok(None);
            };
            match result {
                Ok(iterator) => return Ok(Some(iterator)),
                Err(ApiError::Fatal(error)) => return Err(error),
                Err(ApiError::Throttled(source) | ApiError::Transient(source)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %source, ?delay, "GetShardIterator failed; retrying");
                    if self.until_cancelled(sleep(delay)).await.is_none() {
                        return Ok(None);
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
