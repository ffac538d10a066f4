//! Reading a shard with enhanced fan-out: SubscribeToShard, its events
//! handed over as they come, and a new subscription whenever one ends (every
//! 5 minutes), fails, or stalls — always right after the last record handed
//! over, so nothing is skipped or read twice.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::{sleep_until, Instant};

use super::registration::{deregister, Registered};
use super::{until_cancelled, Confirmed, Listing, ReadShard, ShardEvent, ShardReader};
use crate::config::Settings;
use crate::kinesis::{
    within, ApiError, DynFanOut, DynKinesis, FaultWatch, IteratorPosition, Subscription, SubscriptionEvent,
};
use crate::lineage::Start;
use crate::retry::Backoff;
use crate::{Error, SequenceNumber};

/// Kinesis allows one SubscribeToShard per second per shard and consumer.
const SUBSCRIBE_SPACING: Duration = Duration::from_secs(1);

pub(crate) struct FanOutReader {
    pub(crate) api: DynFanOut,
    /// For the listing, which tells a shard's end from a missing consumer.
    pub(crate) kinesis: DynKinesis,
    pub(crate) settings: Arc<Settings>,
    pub(crate) consumer: Registered,
    /// No event for this long: the subscription is dead.
    pub(crate) stall: Duration,
}

/// What ended one subscription.
enum Ended {
    /// Renew it: after `delay` (zero for the regular end at 5 minutes).
    Renew(Duration),
    /// The shard's end was handed over, or reading was cancelled.
    Done,
}

struct Shard<'a> {
    reader: &'a FanOutReader,
    read: ReadShard,
    /// The last record handed over.
    last: Option<SequenceNumber>,
    /// Where Kinesis says the reading stands, past `last` on a quiet shard.
    continuation: Option<SequenceNumber>,
    watch: FaultWatch,
    backoff: Backoff,
}

#[async_trait]
impl ShardReader for FanOutReader {
    async fn prepare(&self, _: &crate::kinesis::StreamRef, _: &[Start]) -> Result<(), Error> {
        // Registration, resolved by `build`, is what could fail up front.
        Ok(())
    }

    async fn read(&self, read: ReadShard) -> Result<(), Error> {
        let mut shard = Shard {
            reader: self,
            watch: FaultWatch::new(self.settings.credentials_timeout),
            backoff: Backoff::new(&self.settings),
            read,
            last: None,
            continuation: None,
        };
        shard.run().await
    }

    async fn finish(&self) {
        if self.consumer.deregister {
            deregister(&self.api, &self.consumer).await;
        }
    }
}

impl Shard<'_> {
    /// Where the next subscription starts: right after the last record
    /// handed over; on a shard quiet since the start, after the position
    /// Kinesis reported; else where the shard starts (LATEST as of the
    /// moment it was saved, when it was: a later LATEST would skip records).
    fn position(&self) -> IteratorPosition {
        match (&self.last, &self.continuation) {
            (Some(seq), _) | (None, Some(seq)) => IteratorPosition::AfterSequence(seq.clone()),
            (None, None) => match (&self.read.position, self.read.latest_at) {
                (IteratorPosition::Latest, Some(at)) => IteratorPosition::AtTimestamp(at),
                (position, _) => position.clone(),
            },
        }
    }

    async fn run(&mut self) -> Result<(), Error> {
        let mut next = Instant::now();
        loop {
            if until_cancelled(&self.read.cancel, sleep_until(next)).await.is_none() {
                return Ok(());
            }
            next = Instant::now() + SUBSCRIBE_SPACING;
            let position = self.position();
            let subscribed = Instant::now();
            let call = self.reader.api.subscribe(
                &self.read.stream,
                &self.reader.consumer.arn,
                &self.read.shard_id,
                &position,
            );
            let Some(result) =
                until_cancelled(&self.read.cancel, within(self.reader.settings.request_timeout, call)).await
            else {
                return Ok(());
            };
            let ended = match self.watch.sort(result, &self.read.stream) {
                Ok(subscription) => {
                    tracing::debug!(?position, "subscribed");
                    self.read.metrics.subscribe(subscribed.elapsed());
                    self.read.metrics.subscribed();
                    self.drain(subscription).await?
                }
                Err(error) => self.failed(error, "SubscribeToShard").await?,
            };
            match ended {
                Ended::Done => return Ok(()),
                Ended::Renew(delay) => next = next.max(Instant::now() + delay),
            }
        }
    }

    /// Hands over a subscription's events until it ends.
    async fn drain(&mut self, mut subscription: Box<dyn Subscription>) -> Result<Ended, Error> {
        loop {
            let event = tokio::time::timeout(self.reader.stall, subscription.next_event());
            let Some(event) = until_cancelled(&self.read.cancel, event).await else {
                return Ok(Ended::Done);
            };
            match event {
                Err(_stalled) => {
                    tracing::warn!(stall = ?self.reader.stall, "no event from the subscription; subscribing again");
                    return Ok(Ended::Renew(Duration::ZERO));
                }
                // The regular end, after 5 minutes.
                Ok(Ok(None)) => {
                    tracing::debug!("subscription ended; subscribing again");
                    return Ok(Ended::Renew(Duration::ZERO));
                }
                Ok(Ok(Some(event))) => {
                    self.backoff.reset();
                    let _ = self.watch.sort(Ok(()), &self.read.stream);
                    if let Some(ended) = self.hand_over(event).await {
                        return Ok(ended);
                    }
                }
                Ok(Err(error)) => {
                    return match self.watch.sort::<()>(Err(error), &self.read.stream) {
                        Err(error) => self.failed(error, "SubscribeToShard event").await,
                        Ok(()) => Ok(Ended::Renew(Duration::ZERO)),
                    };
                }
            }
        }
    }

    /// Hands over one event's records (and the shard's end, if it is one);
    /// `Some` when the subscription is done with.
    async fn hand_over(&mut self, event: SubscriptionEvent) -> Option<Ended> {
        let SubscriptionEvent {
            records,
            continuation,
            child_shards,
            millis_behind_latest,
        } = event;
        self.read.metrics.behind(millis_behind_latest);
        if let Some(newest) = records.newest_detached() {
            match until_cancelled(&self.read.cancel, self.read.tx.send(ShardEvent::Records(records))).await {
                Some(Ok(())) => self.last = Some(newest),
                // Cancelled, or the consumer dropped the shard.
                _ => return Some(Ended::Done),
            }
        }
        match continuation {
            Some(continuation) => {
                self.continuation = Some(continuation);
                None
            }
            // The shard's end: Kinesis names its children.
            None if !child_shards.is_empty() => {
                tracing::info!(children = child_shards.len(), "reached the end of the shard");
                let _ = until_cancelled(&self.read.cancel, self.read.tx.send(ShardEvent::End(child_shards))).await;
                Some(Ended::Done)
            }
            // Neither a position nor children: not a shard end (the KCL
            // refuses such an event too); subscribe again from the last one.
            None => {
                let delay = self.backoff.next_delay();
                tracing::warn!(?delay, "an event without a continuation or children; subscribing again");
                Some(Ended::Renew(delay))
            }
        }
    }

    /// What to do after a failed subscription or event.
    async fn failed(&mut self, error: ApiError, operation: &'static str) -> Result<Ended, Error> {
        self.read.metrics.failed(operation, &error);
        match error {
            ApiError::Throttled(source)
            | ApiError::Transient(source)
            | ApiError::Credentials(source)
            | ApiError::ClockSkew(source) => {
                let delay = self.backoff.next_delay();
                tracing::warn!(operation, error = %source, attempt = self.backoff.attempts(), ?delay, "subscription failed; subscribing again");
                Ok(Ended::Renew(delay))
            }
            ApiError::ExpiredIterator => Ok(Ended::Renew(Duration::ZERO)),
            // The shard past retention (its end), or the consumer gone.
            ApiError::Fatal(Error::StreamNotFound { source, .. }) => {
                let listing = Listing {
                    api: &self.reader.kinesis,
                    stream: &self.read.stream,
                    shard_id: &self.read.shard_id,
                    settings: &self.reader.settings,
                    cancel: &self.read.cancel,
                };
                match listing.confirm_end(&mut self.watch, &mut self.backoff).await? {
                    Confirmed::Ended(children) => {
                        let _ = until_cancelled(&self.read.cancel, self.read.tx.send(ShardEvent::End(children))).await;
                        Ok(Ended::Done)
                    }
                    Confirmed::Cancelled => Ok(Ended::Done),
                    Confirmed::Open => Err(Error::ConsumerNotFound {
                        consumer: self.reader.consumer.arn.clone(),
                        source,
                    }),
                }
            }
            ApiError::Fatal(error) => Err(error),
        }
    }
}
