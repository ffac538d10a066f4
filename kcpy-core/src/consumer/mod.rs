//! The consumer: a `Stream` of records over every shard of a stream. This
//! file holds its public face and its `poll_next`; `builder` wires it up,
//! `shards` starts and stops the readers of shards, `discovery` lists the
//! stream, `startup` loads checkpoints, `shutdown` stops it.

mod builder;
mod discovery;
mod lanes;
mod observe;
mod shards;
mod shutdown;
mod startup;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures::stream::SelectAll;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tokio_util::task::AbortOnDropHandle;

pub use builder::ConsumerBuilder;
pub use shutdown::ShutdownHandle;

use self::discovery::Listing;
use self::shards::{Batch, ShardSlot, ShardStream, Spawner};
use self::shutdown::Phase;
use crate::checkpoint::{EndSaved, Position, Progress};
use crate::config::Settings;
use crate::group::{GroupEvent, Membership};
use crate::kinesis::{SdkKinesis, StreamRef};
use crate::lineage::Lineage;
use crate::read::ShardEvent;
use crate::signal::{Fatal, Outbox};
use crate::telemetry::{ConsumerEvent, Durable, Events, StreamMetrics};
#[cfg(doc)]
use crate::CheckpointMode;
use crate::{Checkpointer, Error, Record};

/// Reads every shard of a Kinesis stream as one [`Stream`] of [`Record`]s.
///
/// Records of one shard arrive in shard order; shards are interleaved. Across
/// a reshard, a shard is read only after its parents were read to their end,
/// so records of one partition key stay in order. Build one with
/// [`Consumer::builder`], read it with `next().await`, and check
/// [`Consumer::error`] once it ends: the stream ends only on shutdown or on a
/// fatal error, which is also logged.
///
/// In [`CheckpointMode::Auto`] (the default) a record counts as processed
/// when you ask for the next one; see the crate docs for what that means for
/// at-least-once delivery. **Do not put read-ahead combinators** (`chunks`,
/// `ready_chunks`, `buffered`, `for_each_concurrent`, `forward`) on a
/// consumer in auto mode: they ask for the next record before you have
/// processed the last, so a crash can lose what they held. Take batches
/// with [`Consumer::next_batch`], or use [`CheckpointMode::Manual`].
/// Dropping the consumer stops its readers at once and leaves the checkpoints of processed records to be saved in the background,
/// without waiting; prefer [`Consumer::close`] or a [`ShutdownHandle`] to
/// wait for that. Shutdown progresses while the consumer is polled (by
/// `next()` or `close()`).
#[must_use = "a Consumer does nothing unless polled"]
pub struct Consumer {
    shards: SelectAll<ShardStream>,
    current: Option<Batch>,
    slots: Vec<ShardSlot>,
    /// Slots whose processed position changed since the last hand-over.
    dirty: Vec<usize>,
    /// The slot of the record handed out last, while it is not yet processed.
    in_flight: Option<usize>,
    in_flight_at: Position,
    since_flush: u64,
    progress: Option<Arc<Progress>>,
    /// Auto mode with a store: positions are tracked per record.
    track: bool,
    writer: Option<JoinHandle<Result<(), Error>>>,
    /// The stop, asked for or forced by a fatal error from any task.
    fatal: Fatal,
    shutdown_signal: Pin<Box<WaitForCancellationFutureOwned>>,
    phase: Phase,
    /// The fatal error, once the consumer has stopped because of it.
    error: Option<Error>,
    lineage: Lineage,
    spawner: Spawner,
    /// News from the background tasks, each sent as that task's own event.
    control: mpsc::UnboundedReceiver<Control>,
    _sync: AbortOnDropHandle<()>,
    /// Asks the shard sync task for a listing now.
    relist: Arc<Notify>,
    /// With a lease store: the leases held, and the task that keeps them.
    membership: Option<Arc<Membership>>,
    _coordinator: Option<AbortOnDropHandle<()>>,
    settings: Arc<Settings>,
    stream: Arc<StreamRef>,
    events: Events,
    stream_metrics: StreamMetrics,
    durable: Durable,
    /// What lag() shows of shards whose slot was reused: the last
    /// delivered position.
    past: HashMap<Arc<str>, Option<Position>>,
}

/// News for the consumer from its background tasks, as each task sent it.
#[derive(Debug)]
enum Control {
    /// The checkpoint writer saved a shard's end: its children may start.
    EndSaved(EndSaved),
    /// The shard sync task listed the stream's shards again.
    Listed(Listing),
    /// The group's coordinator took, lost or was asked for a lease.
    Group(GroupEvent),
}

impl Control {
    /// An outbox that brings a task's events to the consumer as `Control`.
    fn outbox<T: 'static>(tx: &mpsc::UnboundedSender<Control>, wrap: fn(T) -> Control) -> Outbox<T> {
        let tx = tx.clone();
        Outbox::new(move |event| {
            // The consumer is gone: nobody needs the news.
            let _ = tx.send(wrap(event));
        })
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("stream", &self.stream.configured)
            .field("consumer_name", &self.settings.consumer_name)
            .field("shards", &self.slots.len())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Starts configuring a consumer of `stream` (a name or an ARN).
    ///
    /// `client` is used as configured (credentials, region, endpoint, HTTP
    /// client), except that the consumer turns off the SDK's retries and
    /// retries within each shard's call budget itself. The first GetRecords
    /// call goes through the SDK; later ones are signed and sent with the
    /// connector, endpoint, signing scope and identity cache the SDK used for
    /// it, without the SDK's per-call pipeline. If `client` carries
    /// interceptors of its own, every call goes through the SDK instead, so
    /// that they see every call.
    pub fn builder(client: aws_sdk_kinesis::Client, stream: impl Into<String>) -> ConsumerBuilder {
        let sdk = Arc::new(SdkKinesis::new(&client));
        ConsumerBuilder::with_api(Arc::clone(&sdk) as _, stream.into()).with_fan_out_api(sdk)
    }

    /// The fatal error that ended the stream, if one did.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// The stream's name (also when it was configured by ARN).
    pub fn stream_name(&self) -> &str {
        &self.stream.name
    }

    /// The shards being read now (not those finished or waiting for their
    /// parents to finish).
    pub fn shard_ids(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().filter(|slot| !slot.ended).map(|slot| &*slot.id)
    }

    /// This process's id in its consumer group (see
    /// [`ConsumerBuilder::worker_id`]), when it has a lease store.
    pub fn worker_id(&self) -> Option<&str> {
        self.membership.as_ref().map(|m| m.worker.as_str())
    }

    /// A handle that stops this consumer from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            fatal: self.fatal.clone(),
        }
    }

    /// A handle to mark records processed in [`CheckpointMode::Manual`].
    pub fn checkpointer(&self) -> Checkpointer {
        Checkpointer {
            progress: self.progress.clone(),
            membership: self.membership.clone(),
            consumer_name: Arc::from(self.settings.consumer_name.as_str()),
            stream_name: Arc::from(self.stream.name.as_str()),
        }
    }

    /// Marks `record` processed ([`CheckpointMode::Manual`]); see
    /// [`Checkpointer::checkpoint`].
    pub fn checkpoint(&self, record: &Record) -> Result<(), Error> {
        self.checkpointer().checkpoint(record)
    }

    /// The next records of one shard, at most `max` (and at least one): what
    /// was fetched and is ready, without waiting for more. `None` once the
    /// stream has ended.
    ///
    /// In [`CheckpointMode::Auto`] the whole batch counts as processed when
    /// you ask for the next item (by `next_batch` or `next`), as a single
    /// record does: this is the safe way to work on records in batches.
    /// Stream combinators that read ahead — `chunks`, `ready_chunks`,
    /// `buffered`, `for_each_concurrent`, `forward` — ask for the next record
    /// before you have processed the last, so in auto mode their records
    /// count as processed too early; use this, or [`CheckpointMode::Manual`].
    pub async fn next_batch(&mut self, max: usize) -> Option<Vec<Record>> {
        let first = self.next().await?;
        let mut batch = Vec::with_capacity(max.clamp(1, 1024));
        batch.push(first);
        // The rest comes from the batch `first` was taken from: one shard, in
        // order, so the last record's position covers all of them.
        while batch.len() < max && !self.fatal.is_stopping() {
            // A lease lost or asked for is acted on before another record.
            if self
                .membership
                .as_ref()
                .is_some_and(|m| m.alert.load(Ordering::Acquire))
            {
                break;
            }
            if !self.batch_deliverable() {
                break;
            }
            match self.current.as_mut().and_then(|current| current.records.next()) {
                Some(record) => {
                    if let Some(current) = &self.current {
                        self.slots[current.slot].hand_out(&record);
                    }
                    batch.push(record);
                }
                None => break,
            }
        }
        if self.in_flight.is_some() {
            if let Some(last) = batch.last() {
                self.in_flight_at.assign(last);
            }
        }
        Some(batch)
    }

    /// Stops the consumer and waits until the checkpoints of processed records
    /// are written (or the shutdown deadline passes). Records already fetched
    /// but not handed out are dropped; they are read again next time.
    ///
    /// The record returned last is *not* counted as processed by `close`:
    /// ask for the next item first (or checkpoint it in manual mode) if it was.
    /// Returns the fatal error that ended the stream, if any.
    pub async fn close(&mut self) -> Result<(), Error> {
        self.in_flight = None;
        self.begin_closing();
        // Closing hands out no records; this only drives the final flush.
        while self.next().await.is_some() {}
        self.error.clone().map_or(Ok(()), Err)
    }

    /// Whether the current batch's lease still lets its next record out: past
    /// the lease as last confirmed, the membership is asked again (renewals
    /// may have come since; if none did, the lease counts as lost and the
    /// shard is stopped, the rest of the batch dropped).
    fn batch_deliverable(&mut self) -> bool {
        let (Some(batch), Some(membership)) = (&mut self.current, &self.membership) else {
            return true;
        };
        let Some(until) = batch.until else {
            return true;
        };
        if tokio::time::Instant::now() < until {
            return true;
        }
        let shard = Arc::clone(&self.slots[batch.slot].id);
        if membership.may_deliver(&shard) {
            batch.until = Some(
                membership
                    .deliverable_until(&shard)
                    .unwrap_or_else(tokio::time::Instant::now),
            );
            return true;
        }
        self.stop_shard(&shard);
        false
    }

    fn mark_processed(&mut self, slot: usize) {
        let entry = &mut self.slots[slot];
        match &mut entry.processed {
            Some(processed) => std::mem::swap(processed, &mut self.in_flight_at),
            None => entry.processed = Some(self.in_flight_at.clone()),
        }
        // The record handed out last was this slot's.
        entry.processed_count = entry.handed;
        if !entry.dirty {
            entry.dirty = true;
            self.dirty.push(slot);
        }
        self.since_flush += 1;
    }

    /// Hands the processed positions to the checkpoint writer.
    fn hand_over(&mut self) {
        self.since_flush = 0;
        let Some(progress) = &self.progress else {
            return;
        };
        progress.flush_due.store(false, Ordering::Relaxed);
        // What each shard read has handed out, for CheckpointLag.
        for slot in self.slots.iter().filter(|slot| !slot.ended) {
            self.durable.handed(&slot.id, slot.handed);
        }
        if self.dirty.is_empty() {
            return;
        }
        let slots = &mut self.slots;
        for &slot in &self.dirty {
            slots[slot].dirty = false;
        }
        progress.submit(self.dirty.drain(..).filter_map(|slot| {
            let entry = &slots[slot];
            entry
                .processed
                .as_ref()
                .map(|at| (&entry.id, at, entry.processed_count))
        }));
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::EndSaved(EndSaved(shard)) => {
                tracing::info!(parent: &self.spawner.span, %shard, "shard finished");
                self.durable.set(&shard, &crate::Checkpoint::ShardEnd);
                self.events.send(ConsumerEvent::ShardFinished {
                    shard_id: shard.to_string(),
                });
                let starts = self.lineage.finished(&shard, SystemTime::now());
                self.start(starts);
            }
            Control::Listed(Listing(shards)) => {
                if let Some(membership) = &self.membership {
                    membership.listed(&shards);
                }
                if let Some(progress) = &self.progress {
                    progress.listed(&shards.iter().map(|s| s.shard_id.as_str()).collect());
                }
                let starts = self.lineage.listed(shards, SystemTime::now());
                self.start(starts);
            }
            Control::Group(GroupEvent::Acquired(lease)) => {
                let shard = lease.key.shard_id.as_str();
                tracing::info!(parent: &self.spawner.span, %shard, epoch = lease.epoch, "lease acquired");
                if let Some(checkpoint) = &lease.checkpoint {
                    self.durable.set(shard, checkpoint);
                }
                self.durable.restart(shard);
                self.stream_metrics.lease_taken();
                self.events.send(ConsumerEvent::LeaseAcquired {
                    shard_id: shard.to_owned(),
                    epoch: lease.epoch,
                });
                let (starts, skipped) =
                    self.lineage
                        .acquire(shard, &lease.parents, lease.checkpoint.as_ref(), SystemTime::now());
                self.start(starts);
                if let (true, Some(progress)) = (skipped, &self.progress) {
                    // Closed and skipped under LATEST: nothing to read here.
                    progress.end_shard(&Arc::from(shard));
                }
            }
            Control::Group(GroupEvent::Lost(shard)) => {
                self.stream_metrics.lease_lost();
                self.durable.forget(&shard);
                self.events.send(ConsumerEvent::LeaseLost {
                    shard_id: shard.to_string(),
                });
                self.stop_shard(&shard);
                self.lineage.release(&shard);
                if let Some(progress) = &self.progress {
                    progress.forget(&shard);
                }
            }
            Control::Group(GroupEvent::Requested { shard, from }) => {
                self.events.send(ConsumerEvent::LeaseRequested {
                    shard_id: shard.to_string(),
                    from,
                });
            }
            Control::Group(GroupEvent::Release { shard, to }) => {
                self.stream_metrics.lease_handed_over();
                self.durable.forget(&shard);
                self.events.send(ConsumerEvent::LeaseHandedOver {
                    shard_id: shard.to_string(),
                    to: to.clone(),
                });
                // Processed positions first, so the handoff saves them.
                self.hand_over();
                self.stop_shard(&shard);
                self.lineage.release(&shard);
                if let Some(progress) = &self.progress {
                    progress.release(&shard, to);
                }
            }
        }
    }
}

impl Stream for Consumer {
    type Item = Record;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Record>> {
        self.get_mut().poll_record(cx, false)
    }
}

impl Consumer {
    /// The next record. With `hold`, a stop asked for (or forced by a fatal
    /// error) ends the records without closing: the caller finishes what it
    /// holds first, then closes.
    fn poll_record(&mut self, cx: &mut Context<'_>, hold: bool) -> Poll<Option<Record>> {
        let this = self;
        // Asking for the next record means the previous one was processed.
        if let Some(slot) = this.in_flight.take() {
            this.mark_processed(slot);
        }
        loop {
            match &mut this.phase {
                Phase::Running => {}
                Phase::Closing(closing) => {
                    let result = std::task::ready!(closing.as_mut().poll(cx));
                    if let Err(error) = result {
                        tracing::error!(error = %error, "consumer stopped with an error");
                        this.error.get_or_insert(error);
                    }
                    if let Some(error) = this.fatal.error() {
                        this.error.get_or_insert(error);
                    }
                    this.phase = Phase::Done;
                    return Poll::Ready(None);
                }
                Phase::Done => return Poll::Ready(None),
            }
            if this.fatal.is_stopping() {
                if hold && matches!(this.phase, Phase::Running) {
                    return Poll::Ready(None);
                }
                this.begin_closing();
                continue;
            }
            // A lease lost or asked for: act before the next record. A plain
            // load per record; the swap only when there is news.
            if this
                .membership
                .as_ref()
                .is_some_and(|m| m.alert.load(Ordering::Acquire) && m.alert.swap(false, Ordering::AcqRel))
            {
                while let Poll::Ready(Some(control)) = this.control.poll_recv(cx) {
                    this.on_control(control);
                }
                continue;
            }
            if this.track
                && (this.since_flush >= this.settings.checkpoint_every
                    || this
                        .progress
                        .as_ref()
                        .is_some_and(|p| p.flush_due.load(Ordering::Relaxed)))
            {
                this.hand_over();
            }
            if !this.batch_deliverable() {
                continue;
            }
            if let Some(batch) = &mut this.current {
                if let Some(record) = batch.records.next() {
                    this.slots[batch.slot].hand_out(&record);
                    if this.track {
                        this.in_flight_at.assign(&record);
                        this.in_flight = Some(batch.slot);
                    }
                    return Poll::Ready(Some(record));
                }
                this.current = None;
            }
            // Between batches: news of finished and new shards.
            while let Poll::Ready(Some(control)) = this.control.poll_recv(cx) {
                this.on_control(control);
            }
            if !matches!(this.phase, Phase::Running) {
                continue;
            }
            match this.shards.poll_next_unpin(cx) {
                Poll::Ready(Some((slot, ShardEvent::Records(records)))) => {
                    if let Some(membership) = &this.membership {
                        // Paused past the lease (or asked to hand it over):
                        // these may be another worker's records by now. A
                        // dropped batch stops the shard, so nothing it
                        // fetched later (its end above all) counts as read.
                        if !membership.may_deliver(&this.slots[slot].id) {
                            let shard = Arc::clone(&this.slots[slot].id);
                            this.stop_shard(&shard);
                            continue;
                        }
                    }
                    if let (Some(progress), Some(gate)) = (&this.progress, &this.slots[slot].gate) {
                        progress.register(&this.slots[slot].id, &records, gate);
                    }
                    this.took(slot, &records);
                    let until = this.membership.as_ref().map(|m| {
                        m.deliverable_until(&this.slots[slot].id)
                            .unwrap_or_else(tokio::time::Instant::now)
                    });
                    this.current = Some(Batch {
                        slot,
                        records: records.into_iter(),
                        until,
                    });
                }
                Poll::Ready(Some((slot, ShardEvent::End(children)))) => this.on_shard_end(slot, children),
                // No shard is being read right now: children may still come.
                Poll::Ready(None) | Poll::Pending => {
                    if let Some(progress) = &this.progress {
                        progress.waker.register(cx.waker());
                        if this.track && progress.flush_due.load(Ordering::Acquire) {
                            this.hand_over();
                        }
                    }
                    if this.shutdown_signal.as_mut().poll(cx).is_ready() {
                        if hold {
                            return Poll::Ready(None);
                        }
                        this.begin_closing();
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

// The consumer must stay usable from spawned tasks and with `StreamExt::next`.
const _: fn() = || {
    fn unpin_send<T: Unpin + Send>() {}
    unpin_send::<Consumer>();
};

#[cfg(test)]
mod tests;
