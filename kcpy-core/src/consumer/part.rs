//! One stream's part of a consumer: its shards, lineage, checkpoint writer
//! and group membership, and the `poll_record` that hands out its records.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures::stream::SelectAll;
use futures::StreamExt;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tokio_util::task::AbortOnDropHandle;

use super::discovery::Listing;
use super::shards::{Batch, ShardSlot, ShardStream, Spawner};
use super::shutdown::Phase;
use crate::checkpoint::{EndSaved, Position, Progress, StreamCheckpointer};
use crate::config::Settings;
use crate::group::{GroupEvent, Membership};
use crate::kinesis::StreamRef;
use crate::lineage::Lineage;
use crate::read::ShardEvent;
use crate::signal::{Fatal, Outbox};
use crate::telemetry::{ConsumerEvent, Durable, Events, StreamMetrics};
use crate::{Error, Record};

/// What a [`Consumer`](super::Consumer) reads of one stream.
pub(super) struct Part {
    pub(super) shards: SelectAll<ShardStream>,
    pub(super) current: Option<Batch>,
    pub(super) slots: Vec<ShardSlot>,
    /// Slots whose processed position changed since the last hand-over.
    pub(super) dirty: Vec<usize>,
    /// The slot of the record handed out last, while it is not yet processed.
    pub(super) in_flight: Option<usize>,
    /// Boxed, as is each slot's processed position: marking a record
    /// processed swaps the two pointers, not the two positions' 130 bytes.
    pub(super) in_flight_at: Box<Position>,
    pub(super) since_flush: u64,
    pub(super) progress: Option<Arc<Progress>>,
    /// Auto mode with a store: positions are tracked per record.
    pub(super) track: bool,
    pub(super) writer: Option<JoinHandle<Result<(), Error>>>,
    /// The stop, asked for or forced by a fatal error from any task.
    pub(super) fatal: Fatal,
    pub(super) shutdown_signal: Pin<Box<WaitForCancellationFutureOwned>>,
    pub(super) phase: Phase,
    /// The fatal error, once the consumer has stopped because of it.
    pub(super) error: Option<Error>,
    pub(super) lineage: Lineage,
    pub(super) spawner: Spawner,
    /// News from the background tasks, each sent as that task's own event.
    pub(super) control: mpsc::UnboundedReceiver<Control>,
    pub(super) _sync: AbortOnDropHandle<()>,
    /// Asks the shard sync task for a listing now.
    pub(super) relist: Arc<Notify>,
    /// With a lease store: the leases held, and the task that keeps them.
    pub(super) membership: Option<Arc<Membership>>,
    pub(super) _coordinator: Option<AbortOnDropHandle<()>>,
    pub(super) settings: Arc<Settings>,
    pub(super) stream: Arc<StreamRef>,
    pub(super) events: Events,
    pub(super) stream_metrics: StreamMetrics,
    pub(super) durable: Durable,
    /// What lag() shows of shards whose slot was reused: the last
    /// delivered position.
    pub(super) past: HashMap<Arc<str>, Option<Position>>,
}

/// News for the consumer from its background tasks, as each task sent it.
#[derive(Debug)]
pub(super) enum Control {
    /// The checkpoint writer saved a shard's end: its children may start.
    EndSaved(EndSaved),
    /// The shard sync task listed the stream's shards again.
    Listed(Listing),
    /// The group's coordinator took, lost or was asked for a lease.
    Group(GroupEvent),
}

impl Control {
    /// An outbox that brings a task's events to the consumer as `Control`.
    pub(super) fn outbox<T: 'static>(tx: &mpsc::UnboundedSender<Control>, wrap: fn(T) -> Control) -> Outbox<T> {
        let tx = tx.clone();
        Outbox::new(move |event| {
            // The consumer is gone: nobody needs the news.
            let _ = tx.send(wrap(event));
        })
    }
}

impl Part {
    pub(super) fn checkpointer(&self) -> StreamCheckpointer {
        StreamCheckpointer {
            progress: self.progress.clone(),
            membership: self.membership.clone(),
            consumer_name: Arc::from(self.settings.consumer_name.as_str()),
            stream_name: Arc::from(self.stream.name.as_str()),
        }
    }

    /// Asking for the next record means the one handed out last was
    /// processed (auto mode).
    pub(super) fn settle(&mut self) {
        if let Some(slot) = self.in_flight.take() {
            self.mark_processed(slot);
        }
    }

    /// Adds to `batch` the next records of the batch its last record came
    /// from, up to `max` in all: one shard, in order, so the last record's
    /// position covers all of them.
    pub(super) fn continue_batch(&mut self, batch: &mut Vec<Record>, max: usize) {
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
    }

    /// Whether the current batch's lease still lets its next record out: past
    /// the lease as last confirmed, the membership is asked again (renewals
    /// may have come since; if none did, the lease counts as lost and the
    /// shard is stopped, the rest of the batch dropped).
    pub(super) fn batch_deliverable(&mut self) -> bool {
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
            None => entry.processed = Some(Box::new(Position::clone(&self.in_flight_at))),
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
    pub(super) fn hand_over(&mut self) {
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
                .map(|at| (&entry.id, &**at, entry.processed_count))
        }));
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::EndSaved(EndSaved(shard)) => {
                tracing::info!(parent: &self.spawner.span, %shard, "shard finished");
                self.durable.set(&shard, &crate::Checkpoint::ShardEnd);
                self.events.send(ConsumerEvent::ShardFinished {
                    stream_name: self.stream.name.clone(),
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
                    stream_name: self.stream.name.clone(),
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
                    stream_name: self.stream.name.clone(),
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
                    stream_name: self.stream.name.clone(),
                    shard_id: shard.to_string(),
                    from,
                });
            }
            Control::Group(GroupEvent::Release { shard, to }) => {
                self.stream_metrics.lease_handed_over();
                self.durable.forget(&shard);
                self.events.send(ConsumerEvent::LeaseHandedOver {
                    stream_name: self.stream.name.clone(),
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

impl Part {
    /// The next record. With `hold`, a stop asked for (or forced by a fatal
    /// error) ends the records without closing: the caller finishes what it
    /// holds first, then closes.
    pub(super) fn poll_record(&mut self, cx: &mut Context<'_>, hold: bool) -> Poll<Option<Record>> {
        let this = self;
        this.settle();
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
                    this.current = Some(Batch { slot, records, until });
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
