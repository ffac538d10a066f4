//! The consumer: a `Stream` of records over every shard of a stream.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::stream::SelectAll;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::config::{Backoff, Settings};
use crate::coordinator::{Coordinator, Membership};
use crate::kinesis::{ApiError, DynKinesis, FaultWatch, SdkKinesis, ShardInfo, StreamRef};
use crate::lineage::{Lineage, Start};
use crate::poller::{Poller, ShardEvent};
use crate::progress::{Gate, Progress, Writer};
use crate::StartPosition;
use crate::{
    Checkpoint, CheckpointKey, CheckpointMode, CheckpointStore, Checkpointer, Error, Lease, LeaseStore, Record,
    SequenceNumber, StartTime,
};

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
/// with [`Consumer::next_batch`], or use [`CheckpointMode::Manual`]. Dropping the consumer stops its pollers at once and
/// leaves the checkpoints of processed records to be saved in the background,
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
    in_flight_seq: SequenceNumber,
    since_flush: u64,
    progress: Option<Arc<Progress>>,
    /// Auto mode with a store: positions are tracked per record.
    track: bool,
    writer: Option<JoinHandle<Result<(), Error>>>,
    shutdown: CancellationToken,
    shutdown_signal: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Mirrors `shutdown` for the per-record check: reading a token's state
    /// takes a lock, an atomic load does not.
    stopping: Arc<AtomicBool>,
    phase: Phase,
    error: Option<Error>,
    lineage: Lineage,
    spawner: Spawner,
    /// Shard ends made durable, shard listings and fatal errors from the
    /// writer and the shard sync task.
    control: mpsc::UnboundedReceiver<Control>,
    _sync: AbortOnDropHandle<()>,
    /// Asks the shard sync task for a listing now.
    relist: Arc<Notify>,
    /// With a lease store: the leases held, and the task that keeps them.
    membership: Option<Arc<Membership>>,
    _coordinator: Option<AbortOnDropHandle<()>>,
    settings: Arc<Settings>,
    stream: Arc<StreamRef>,
}

/// News for the consumer from its background tasks.
#[derive(Debug)]
pub(crate) enum Control {
    /// The shard's end is checkpointed: its children may start.
    Finished(Arc<str>),
    /// The stream's shards, listed again.
    Shards(Vec<ShardInfo>),
    /// Something the consumer cannot go on after.
    Fatal(Error),
    /// This worker took (or was handed) the lease.
    Acquired(Lease),
    /// The shard's lease is gone: stop the shard now, drop what was fetched.
    Lost(Arc<str>),
    /// Another worker asked for the shard: stop it, save what was processed,
    /// then hand the lease to `to`.
    Release { shard: Arc<str>, to: String },
}

/// Starts a poller task per shard.
struct Spawner {
    /// Manual mode with a store: each shard's delivered, uncheckpointed
    /// records are capped at `max_unacknowledged`.
    gated: bool,
    api: DynKinesis,
    stream: Arc<StreamRef>,
    settings: Arc<Settings>,
    cancel: CancellationToken,
    span: tracing::Span,
}

impl Spawner {
    fn spawn(&self, slot: usize, start: Start, iterator: Option<String>) -> (ShardStream, ShardSlot) {
        let (tx, events) = mpsc::channel(self.settings.prefetch_batches);
        let shard_id: Arc<str> = start.shard_id.into();
        let cancel = self.cancel.child_token();
        let gone = Arc::new(AtomicBool::new(false));
        let poller = Poller {
            api: Arc::clone(&self.api),
            stream: Arc::clone(&self.stream),
            shard_id: Arc::clone(&shard_id),
            settings: Arc::clone(&self.settings),
            position: start.position,
            fallback: start.fallback,
            iterator,
            // Shard k's idle polls are shifted by frac(k × 0.618…) of the
            // idle interval (0.618… = 1/φ): whatever the number of shards,
            // they spread evenly over the interval rather than coming at once.
            phase: self
                .settings
                .idle_interval
                .mul_f64((slot as f64 * 0.618_033_988_749_895).fract()),
            tx,
            cancel: cancel.clone(),
            watch: FaultWatch::new(self.settings.credentials_timeout),
        };
        let span = tracing::info_span!(parent: &self.span, "shard", shard = %shard_id);
        let task = tokio::spawn(poller.run().instrument(span));
        let gate = self.gated.then(|| Gate::new(self.settings.max_unacknowledged));
        let stream = ShardStream {
            slot,
            events,
            gone: Arc::clone(&gone),
            gate: gate.clone(),
            _task: AbortOnDropHandle::new(task),
        };
        let slot = ShardSlot {
            gate,
            id: shard_id,
            processed: None,
            dirty: false,
            ended: false,
            cancel,
            gone,
        };
        (stream, slot)
    }
}

struct ShardSlot {
    /// Manual mode: what caps the shard's unacknowledged records.
    gate: Option<Arc<Gate>>,
    id: Arc<str>,
    processed: Option<SequenceNumber>,
    dirty: bool,
    /// Every record of the shard was handed out, or the shard was stopped.
    ended: bool,
    cancel: CancellationToken,
    /// Stopped: whatever its poller fetched is never handed out.
    gone: Arc<AtomicBool>,
}

struct Batch {
    slot: usize,
    records: std::vec::IntoIter<Record>,
    /// In a group: until when the lease, as last confirmed, lets these
    /// records be handed out; checked per record, as a paused process may
    /// wake in the middle of a batch.
    until: Option<tokio::time::Instant>,
}

enum Phase {
    Running,
    Closing(Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>),
    Done,
}

/// One shard's poller, as a stream of its events.
struct ShardStream {
    slot: usize,
    events: mpsc::Receiver<ShardEvent>,
    gone: Arc<AtomicBool>,
    gate: Option<Arc<Gate>>,
    _task: AbortOnDropHandle<()>,
}

impl Stream for ShardStream {
    type Item = (usize, ShardEvent);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.gone.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        if self.gate.as_ref().is_some_and(|gate| !gate.admits(cx)) {
            return Poll::Pending;
        }
        let slot = self.slot;
        self.events.poll_recv(cx).map(|event| event.map(|event| (slot, event)))
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
        ConsumerBuilder::with_api(Arc::new(SdkKinesis::new(&client)), stream.into())
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
            token: self.shutdown.clone(),
            stopping: Arc::clone(&self.stopping),
        }
    }

    /// A handle to mark records processed in [`CheckpointMode::Manual`].
    pub fn checkpointer(&self) -> Checkpointer {
        Checkpointer {
            progress: self.progress.clone(),
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
        while batch.len() < max && !self.stopping.load(Ordering::Relaxed) {
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
                Some(record) => batch.push(record),
                None => break,
            }
        }
        if self.in_flight.is_some() {
            if let Some(last) = batch.last() {
                self.in_flight_seq.assign(&last.sequence_number);
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
            Some(processed) => std::mem::swap(processed, &mut self.in_flight_seq),
            None => entry.processed = Some(self.in_flight_seq.clone()),
        }
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
        if self.dirty.is_empty() {
            return;
        }
        let slots = &mut self.slots;
        for &slot in &self.dirty {
            slots[slot].dirty = false;
        }
        progress.submit(self.dirty.drain(..).filter_map(|slot| {
            let entry = &slots[slot];
            entry.processed.as_ref().map(|seq| (&entry.id, seq))
        }));
    }

    /// Starts the shards the lineage says may start now.
    fn start(&mut self, starts: Vec<Start>) {
        for start in starts {
            if let (Some(at), Some(progress)) = (start.mark, &self.progress) {
                progress.mark_start(&Arc::from(start.shard_id.as_str()), at);
            }
            tracing::info!(parent: &self.spawner.span, shard = %start.shard_id, position = ?start.position, "starting shard");
            match self.free_slot() {
                Some(index) => {
                    let (stream, slot) = self.spawner.spawn(index, start, None);
                    self.shards.push(stream);
                    self.slots[index] = slot;
                }
                None => {
                    let (stream, slot) = self.spawner.spawn(self.slots.len(), start, None);
                    self.shards.push(stream);
                    self.slots.push(slot);
                }
            }
        }
    }

    /// A slot nothing refers to any more, for a new shard: shards come and go
    /// with reshards and lease moves, and the slots would otherwise only grow.
    /// A stopped or ended shard's stream yields nothing once `gone` is set.
    fn free_slot(&self) -> Option<usize> {
        let current = self.current.as_ref().map(|batch| batch.slot);
        self.slots.iter().enumerate().position(|(index, slot)| {
            slot.ended
                && slot.gone.load(Ordering::Acquire)
                && !slot.dirty
                && current != Some(index)
                && self.in_flight != Some(index)
        })
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::Finished(shard) => {
                tracing::info!(parent: &self.spawner.span, %shard, "shard finished");
                let starts = self.lineage.finished(&shard, SystemTime::now());
                self.start(starts);
            }
            Control::Shards(shards) => {
                if let Some(membership) = &self.membership {
                    membership.listed(&shards);
                }
                if let Some(progress) = &self.progress {
                    progress.listed(&shards.iter().map(|s| s.shard_id.as_str()).collect());
                }
                let starts = self.lineage.listed(shards, SystemTime::now());
                self.start(starts);
            }
            Control::Acquired(lease) => {
                let shard = lease.key.shard_id.as_str();
                tracing::info!(parent: &self.spawner.span, %shard, epoch = lease.epoch, "lease acquired");
                let (starts, skipped) =
                    self.lineage
                        .acquire(shard, &lease.parents, lease.checkpoint.as_ref(), SystemTime::now());
                self.start(starts);
                if let (true, Some(progress)) = (skipped, &self.progress) {
                    // Closed and skipped under LATEST: nothing to read here.
                    progress.end_shard(&Arc::from(shard));
                }
            }
            Control::Lost(shard) => {
                self.stop_shard(&shard);
                self.lineage.release(&shard);
                if let Some(progress) = &self.progress {
                    progress.forget(&shard);
                }
            }
            Control::Release { shard, to } => {
                // Processed positions first, so the handoff saves them.
                self.hand_over();
                self.stop_shard(&shard);
                self.lineage.release(&shard);
                if let Some(progress) = &self.progress {
                    progress.release(&shard, to);
                }
            }
            Control::Fatal(error) => {
                tracing::error!(parent: &self.spawner.span, error = %error, source = ?std::error::Error::source(&error), "consumer stopping");
                self.error.get_or_insert(error);
                self.begin_closing();
            }
        }
    }

    /// Stops reading `shard` at once: its poller ends, and records it fetched
    /// but did not hand out are dropped.
    fn stop_shard(&mut self, shard: &str) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if &*slot.id != shard || slot.ended {
                continue;
            }
            slot.ended = true;
            slot.gone.store(true, Ordering::Release);
            slot.cancel.cancel();
            if std::mem::take(&mut slot.dirty) {
                self.dirty.retain(|&dirty| dirty != index);
            }
            if self.current.as_ref().is_some_and(|batch| batch.slot == index) {
                self.current = None;
            }
            if self.in_flight == Some(index) {
                self.in_flight = None;
            }
        }
    }

    /// Every record of the shard in `slot` was handed out (and, since the
    /// caller asked for more, processed in auto mode).
    fn on_shard_end(&mut self, slot: usize, children: Vec<ShardInfo>) {
        let entry = &mut self.slots[slot];
        entry.ended = true;
        entry.gone.store(true, Ordering::Release);
        // Its end checkpoint supersedes the last sequence number.
        if std::mem::take(&mut entry.dirty) {
            self.dirty.retain(|&dirty| dirty != slot);
        }
        let shard = Arc::clone(&entry.id);
        tracing::debug!(parent: &self.spawner.span, %shard, children = children.len(), "reached the end of a shard");
        if let Some(membership) = &self.membership {
            membership.learn(&children);
        }
        let now = SystemTime::now();
        let starts = self.lineage.discover(children, now);
        self.start(starts);
        if self.lineage.awaits_unknown_parent() {
            // A merge child whose other parent appeared after the last listing.
            self.relist.notify_one();
        }
        match &self.progress {
            Some(progress) => progress.end_shard(&shard),
            None => {
                let starts = self.lineage.finished(&shard, now);
                self.start(starts);
            }
        }
    }

    fn begin_closing(&mut self) {
        if !matches!(self.phase, Phase::Running) {
            return;
        }
        self.shutdown.cancel();
        self.stopping.store(true, Ordering::Relaxed);
        // Fetched but not handed out: dropped, and read again after a restart
        // because no checkpoint covers them.
        self.current = None;
        self.shards = SelectAll::new();
        self.in_flight = None;
        self.hand_over();
        let writer = self.writer.take().map(AbortOnDropHandle::new);
        let progress = self.progress.clone();
        let deadline = self.settings.shutdown_timeout;
        self.phase = Phase::Closing(Box::pin(async move {
            let (Some(writer), Some(progress)) = (writer, progress) else {
                return Ok(());
            };
            progress.stop();
            match tokio::time::timeout(deadline, writer).await {
                Ok(Ok(result)) => result,
                Ok(Err(join_error)) => Err(Error::Checkpoint(crate::CheckpointError::Backend {
                    source: Arc::new(join_error),
                })),
                Err(_) => Err(Error::ShutdownTimedOut { deadline }),
            }
        }));
    }
}

impl Stream for Consumer {
    type Item = Record;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Record>> {
        let this = self.get_mut();
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
                    this.phase = Phase::Done;
                    return Poll::Ready(None);
                }
                Phase::Done => return Poll::Ready(None),
            }
            if this.stopping.load(Ordering::Relaxed) {
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
                    if this.track {
                        this.in_flight_seq.assign(&record.sequence_number);
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
                Poll::Ready(Some((_, ShardEvent::Fatal(error)))) => {
                    this.error.get_or_insert(error);
                    this.begin_closing();
                }
                // No shard is being read right now: children may still come.
                Poll::Ready(None) | Poll::Pending => {
                    if let Some(progress) = &this.progress {
                        progress.waker.register(cx.waker());
                        if this.track && progress.flush_due.load(Ordering::Acquire) {
                            this.hand_over();
                        }
                    }
                    if this.shutdown_signal.as_mut().poll(cx).is_ready() {
                        this.begin_closing();
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if matches!(self.phase, Phase::Running) {
            self.shutdown.cancel();
            self.in_flight = None;
            self.hand_over();
            // The writer finishes saving in the background; nothing waits for it.
            if let Some(progress) = &self.progress {
                progress.stop();
            }
        }
    }
}

/// Stops a [`Consumer`] from anywhere; cloneable.
///
/// After [`shutdown`](Self::shutdown) the consumer stops fetching, drops the
/// records it fetched but did not hand out (they are not checkpointed, so
/// they are read again next time), writes the checkpoints of processed
/// records, and its stream ends — within the shutdown deadline.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    token: CancellationToken,
    stopping: Arc<AtomicBool>,
}

impl ShutdownHandle {
    /// Asks the consumer to stop.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.token.cancel();
    }

    /// Whether a shutdown was asked for (or a fatal error stopped the consumer).
    pub fn is_shutdown(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// Configures a [`Consumer`]; made by [`Consumer::builder`].
#[must_use]
pub struct ConsumerBuilder {
    api: DynKinesis,
    stream: String,
    store: Option<Arc<dyn CheckpointStore>>,
    leases: Option<Arc<dyn LeaseStore>>,
    shutdown: Option<CancellationToken>,
    settings: Settings,
}

impl std::fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("stream", &self.stream)
            .field("store", &self.store)
            .field("lease_store", &self.leases)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ConsumerBuilder {
    pub(crate) fn with_api(api: DynKinesis, stream: String) -> Self {
        Self {
            api,
            stream,
            store: None,
            leases: None,
            shutdown: None,
            settings: Settings::default(),
        }
    }

    /// The name checkpoints are kept under (default `kcpy`). Consumers with
    /// different names read the same stream independently.
    pub fn consumer_name(mut self, name: impl Into<String>) -> Self {
        self.settings.consumer_name = name.into();
        self
    }

    /// Where checkpoints are kept. Without a store nothing is checkpointed and
    /// every run starts at the start position. Replaces a
    /// [`lease_store`](Self::lease_store) set before.
    pub fn checkpoint_store(mut self, store: impl CheckpointStore) -> Self {
        self.store = Some(Arc::new(store));
        self.leases = None;
        self
    }

    /// Joins a consumer group: this process reads only the shards it holds a
    /// lease for in `store`, which also keeps the checkpoints (replacing a
    /// [`checkpoint_store`](Self::checkpoint_store) set before). Processes
    /// with the same consumer name and store split the stream's shards
    /// between them, and take over those of a process that stops.
    ///
    /// Without a lease store this process reads every shard.
    pub fn lease_store<S: LeaseStore + CheckpointStore>(mut self, store: S) -> Self {
        let store = Arc::new(store);
        self.store = Some(Arc::clone(&store) as Arc<dyn CheckpointStore>);
        self.leases = Some(store);
        self
    }

    /// This process's id in its consumer group; it must be unique among the
    /// group's live processes (default: host name, process id and a random
    /// suffix).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.settings.worker_id = id.into();
        self
    }

    /// How long a lease lasts without renewal (default 20 s): a stopped
    /// process's shards are taken over within this plus two renew intervals,
    /// and a process that cannot renew stops reading a shard after this long.
    pub fn lease_duration(mut self, duration: Duration) -> Self {
        self.settings.lease_duration = duration;
        self
    }

    /// How often leases are renewed and the group balanced (default 5 s; at
    /// most half the lease duration).
    pub fn lease_renew_interval(mut self, interval: Duration) -> Self {
        self.settings.lease_renew_interval = interval;
        self
    }

    /// Keep the leases of finished shards in the lease store (default: they
    /// are deleted once every child shard has a checkpoint of its own, or
    /// once the shard is past the stream's retention, as the KCL does).
    pub fn keep_finished_leases(mut self, keep: bool) -> Self {
        self.settings.keep_finished_leases = keep;
        self
    }

    /// Where shards without a checkpoint start (default
    /// [`StartPosition::TrimHorizon`]).
    pub fn start_position(mut self, position: StartPosition) -> Self {
        self.settings.start_position = position;
        self
    }

    /// When records count as processed (default [`CheckpointMode::Auto`]).
    pub fn checkpoint_mode(mut self, mode: CheckpointMode) -> Self {
        self.settings.checkpoint_mode = mode;
        self
    }

    /// Write checkpoints after this many processed records (default 1000).
    pub fn checkpoint_every(mut self, records: u64) -> Self {
        self.settings.checkpoint_every = records;
        self
    }

    /// Write checkpoints at least this often while records are processed
    /// (default 5 s).
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.settings.checkpoint_interval = interval;
        self
    }

    /// How often a failing checkpoint save is retried before the consumer
    /// stops with the error (default 5).
    pub fn checkpoint_retries(mut self, retries: u32) -> Self {
        self.settings.checkpoint_retries = retries;
        self
    }

    /// How long a shard waits before polling again once it has caught up with
    /// the tip (default 1 s).
    pub fn idle_interval(mut self, interval: Duration) -> Self {
        self.settings.idle_interval = interval;
        self
    }

    /// GetRecords calls per second per shard, 1 to 5 (default 5, Kinesis'
    /// limit). Every application reading a shard shares that limit: set this
    /// lower when others read the same stream.
    pub fn max_get_records_per_second(mut self, calls: u32) -> Self {
        self.settings.max_get_records_per_second = calls;
        self
    }

    /// Records asked for per GetRecords call, 1 to 10000 (default 10000).
    pub fn max_records_per_call(mut self, records: i32) -> Self {
        self.settings.max_records_per_call = records;
        self
    }

    /// Batches fetched ahead per shard (default 2). Per shard at most this
    /// many batches wait, plus the one being handed out and the one being
    /// fetched: memory is bounded by that, whatever the backlog.
    pub fn prefetch_batches(mut self, batches: usize) -> Self {
        self.settings.prefetch_batches = batches;
        self
    }

    /// In [`CheckpointMode::Manual`], the most records per shard that may be
    /// delivered and not yet covered by its checkpoint (default 100,000). A
    /// shard at this many hands out no further batch until acknowledgements
    /// bring it below: backpressure, so a record never acknowledged holds
    /// its shard back instead of growing memory without bound. A batch is
    /// handed out whole, so a shard may pass it by up to one batch.
    pub fn max_unacknowledged(mut self, records: usize) -> Self {
        self.settings.max_unacknowledged = records;
        self
    }

    /// How long credentials may keep failing to resolve (an assumed role
    /// denied, the metadata service down) before the stream ends with
    /// [`Error::Credentials`] (default 5 min). Until then such failures are
    /// retried like any transient fault; `build` gives up after its
    /// [`startup_retries`](Self::startup_retries).
    pub fn credentials_timeout(mut self, timeout: Duration) -> Self {
        self.settings.credentials_timeout = timeout;
        self
    }

    /// Time limit for one Kinesis call; a call over it is retried (default 20 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// First and largest delay between retries of a failed call (defaults
    /// 100 ms and 10 s); delays double per attempt, with jitter.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.backoff_base = base;
        self.settings.backoff_max = max;
        self
    }

    /// How often `build` retries a transiently failing call before giving up
    /// with [`Error::Unavailable`] (default 8).
    pub fn startup_retries(mut self, retries: u32) -> Self {
        self.settings.startup_retries = retries;
        self
    }

    /// How long shutdown may take to write the last checkpoints (default 10 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.settings.shutdown_timeout = timeout;
        self
    }

    /// How often the shards are listed again to find new ones (default 60 s).
    /// A shard's end announces its children at once; this catches the rest.
    pub fn shard_sync_interval(mut self, interval: Duration) -> Self {
        self.settings.shard_sync_interval = interval;
        self
    }

    /// A token whose cancellation shuts the consumer down, as
    /// [`ShutdownHandle::shutdown`] does.
    pub fn shutdown_token(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(token);
        self
    }

    /// Checks the configuration, finds the shards, loads their checkpoints and
    /// positions each shard, then starts reading.
    ///
    /// With [`StartPosition::Latest`], every record written after `build`
    /// returns is delivered.
    pub async fn build(self) -> Result<Consumer, Error> {
        self.settings.validate()?;
        let stream = Arc::new(StreamRef::parse(&self.stream)?);
        let settings = Arc::new(self.settings);
        let api = self.api;
        let store = self.store;
        let leases = self.leases;
        let span = tracing::info_span!("kcpy", stream = %stream.name, consumer = %settings.consumer_name);

        let shards = list_shards(&api, &stream, &settings).instrument(span.clone()).await?;
        let checkpoints = match &store {
            Some(store) => {
                load_checkpoints(store.as_ref(), &stream, &settings, &shards)
                    .instrument(span.clone())
                    .await?
            }
            None => HashMap::new(),
        };
        let known = leases.is_some().then(|| shards.clone());
        let (lineage, starts) = match leases {
            // Nothing starts before its lease is taken.
            Some(_) => (
                Lineage::leased(shards, &checkpoints, settings.start_position, SystemTime::now()),
                Vec::new(),
            ),
            None => Lineage::new(shards, &checkpoints, settings.start_position, SystemTime::now()),
        };
        // Starts at LATEST are saved before they are resolved: a restart, even
        // one before any record came, resumes at this start, not a later tip.
        if let Some(store) = &store {
            save_marks(store.as_ref(), &stream, &settings, &starts)
                .instrument(span.clone())
                .await?;
        }
        // Resolve the first iterators now: LATEST then means the tip as of
        // build() returning, and errors such as AccessDenied surface here.
        let mut resolved: Vec<(Start, Option<String>)> = futures::stream::iter(starts)
            .map(|start| {
                let (api, stream, settings) = (&api, &stream, &settings);
                async move {
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
                    Ok::<_, Error>((start, iterator))
                }
            })
            .buffer_unordered(16)
            .try_collect()
            .instrument(span.clone())
            .await?;
        resolved.sort_by(|a, b| a.0.shard_id.cmp(&b.0.shard_id));

        let shutdown = self.shutdown.map_or_else(CancellationToken::new, |t| t.child_token());
        let (control_tx, control) = mpsc::unbounded_channel();
        let relist = Arc::new(Notify::new());
        let membership = leases.map(|leases| {
            let membership = Membership::new(leases, &settings, &stream.name, control_tx.clone(), Arc::clone(&relist));
            membership.listed(known.as_deref().unwrap_or_default());
            membership
        });
        let (progress, writer) = match store {
            Some(store) => {
                let (progress, commands) = Progress::new(&settings, control_tx.clone());
                let writer = Writer {
                    store,
                    progress: Arc::clone(&progress),
                    commands,
                    settings: Arc::clone(&settings),
                    stream_name: stream.name.clone(),
                    cancel: shutdown.clone(),
                    membership: membership.clone(),
                };
                let task = tokio::spawn(writer.run().instrument(span.clone()));
                (Some(progress), Some(task))
            }
            None => (None, None),
        };
        let sync = tokio::spawn(
            {
                let control = control_tx.clone();
                let sync = sync_shards(
                    Arc::clone(&api),
                    Arc::clone(&stream),
                    Arc::clone(&settings),
                    control_tx,
                    shutdown.clone(),
                    Arc::clone(&relist),
                );
                async move {
                    if let Err(error) = crate::error::catch_panic("shard sync", sync).await {
                        let _ = control.send(Control::Fatal(error));
                    }
                }
            }
            .instrument(span.clone()),
        );

        let spawner = Spawner {
            gated: progress.is_some() && settings.checkpoint_mode == CheckpointMode::Manual,
            api,
            stream: Arc::clone(&stream),
            settings: Arc::clone(&settings),
            cancel: shutdown.clone(),
            span: span.clone(),
        };
        let mut slots = Vec::with_capacity(resolved.len());
        let mut streams = SelectAll::new();
        for (start, iterator) in resolved {
            let (stream, slot) = spawner.spawn(slots.len(), start, iterator);
            streams.push(stream);
            slots.push(slot);
        }
        let coordinator = membership.as_ref().map(|membership| {
            let coordinator = Coordinator::new(Arc::clone(membership), Arc::clone(&settings), shutdown.clone());
            AbortOnDropHandle::new(tokio::spawn(coordinator.run().instrument(span.clone())))
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let (token, flag) = (shutdown.clone(), Arc::clone(&stopping));
        tokio::spawn(async move {
            token.cancelled().await;
            flag.store(true, Ordering::Relaxed);
        });
        tracing::info!(parent: &span, shards = slots.len(), "consumer started");
        let track = progress.is_some() && settings.checkpoint_mode == CheckpointMode::Auto;
        Ok(Consumer {
            shards: streams,
            current: None,
            slots,
            dirty: Vec::new(),
            in_flight: None,
            in_flight_seq: SequenceNumber::parse("0").map_err(|e| Error::config(e.to_string()))?,
            since_flush: 0,
            progress,
            track,
            writer,
            shutdown_signal: Box::pin(shutdown.clone().cancelled_owned()),
            shutdown,
            stopping,
            phase: Phase::Running,
            error: None,
            lineage,
            spawner,
            control,
            _sync: AbortOnDropHandle::new(sync),
            relist,
            membership,
            _coordinator: coordinator,
            settings,
            stream,
        })
    }
}

/// Every shard of the stream, following ListShards pages.
async fn list_shards(api: &DynKinesis, stream: &StreamRef, settings: &Settings) -> Result<Vec<ShardInfo>, Error> {
    let mut shards = Vec::new();
    let mut token = None;
    loop {
        let page = retry_startup("ListShards", stream, settings, || {
            api.list_shards(stream, token.clone())
        })
        .await?;
        shards.extend(page.shards);
        match page.next_token {
            Some(next) => token = Some(next),
            None => return Ok(shards),
        }
    }
}

/// Lists the shards again every `shard_sync_interval`, so shards created by a
/// reshard are found even if no shard end announced them; also at once when
/// `relist` is notified: a shard waits for a parent no listing has shown, or
/// the lease store names shards this process has not heard of.
async fn sync_shards(
    api: DynKinesis,
    stream: Arc<StreamRef>,
    settings: Arc<Settings>,
    control: mpsc::UnboundedSender<Control>,
    cancel: CancellationToken,
    relist: Arc<Notify>,
) {
    let every = settings.shard_sync_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            () = relist.notified() => {}
        }
        match list_shards(&api, &stream, &settings).await {
            Ok(shards) => {
                if control.send(Control::Shards(shards)).is_err() {
                    return;
                }
            }
            Err(error) if error.is_retryable() => {
                tracing::warn!(error = %error, "shard sync failed; trying again later");
            }
            Err(error) => {
                let _ = control.send(Control::Fatal(error));
                return;
            }
        }
    }
}

/// The stored checkpoint of every shard that has one.
async fn load_checkpoints(
    store: &dyn CheckpointStore,
    stream: &StreamRef,
    settings: &Settings,
    shards: &[ShardInfo],
) -> Result<HashMap<String, Checkpoint>, Error> {
    futures::stream::iter(shards)
        .map(|shard| async move {
            let key = CheckpointKey::new(&settings.consumer_name, &stream.name, &shard.shard_id);
            let checkpoint = load_checkpoint(store, &key, settings).await?;
            Ok::<_, Error>(checkpoint.map(|c| (shard.shard_id.clone(), c)))
        })
        .buffer_unordered(16)
        .try_filter_map(|entry| async move { Ok(entry) })
        .try_collect()
        .await
}

async fn load_checkpoint(
    store: &dyn CheckpointStore,
    key: &CheckpointKey,
    settings: &Settings,
) -> Result<Option<Checkpoint>, Error> {
    let mut backoff = Backoff::new(settings);
    loop {
        match crate::error::catch_panic("checkpoint load", store.load(key)).await? {
            Ok(checkpoint) => return Ok(checkpoint),
            Err(error) if error.is_retryable() && backoff.attempts() < settings.checkpoint_retries => {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => return Err(Error::Checkpoint(error)),
        }
    }
}

/// Saves the start of every shard in `starts` that a later run could not find
/// again.
async fn save_marks(
    store: &dyn CheckpointStore,
    stream: &StreamRef,
    settings: &Settings,
    starts: &[Start],
) -> Result<(), Error> {
    futures::stream::iter(starts.iter().filter_map(|start| Some((start, start.mark?))))
        .map(|(start, at)| async move {
            let key = CheckpointKey::new(&settings.consumer_name, &stream.name, &start.shard_id);
            let mark = Checkpoint::AtTimestamp(StartTime::new(at));
            let mut backoff = Backoff::new(settings);
            loop {
                match crate::error::catch_panic("checkpoint save", store.save(&key, &mark)).await? {
                    Ok(()) => return Ok(()),
                    Err(error) if error.is_retryable() && backoff.attempts() < settings.checkpoint_retries => {
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(error) => return Err(Error::Checkpoint(error)),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await
}

async fn retry_startup<T, F, Fut>(
    operation: &'static str,
    stream: &StreamRef,
    settings: &Settings,
    mut call: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let mut backoff = Backoff::new(settings);
    let mut skew_retried = false;
    loop {
        match crate::kinesis::within(settings.request_timeout, call()).await {
            Ok(value) => return Ok(value),
            // The refusal taught the client Kinesis's clock: one retry at once.
            Err(ApiError::ClockSkew(source)) if !std::mem::replace(&mut skew_retried, true) => {
                tracing::warn!(operation, error = %source, "a signature was refused for this machine's clock; retrying");
            }
            Err(ApiError::ClockSkew(source)) => {
                return Err(Error::AccessDenied {
                    stream: stream.configured.clone(),
                    source,
                });
            }
            Err(ApiError::Fatal(error)) => return Err(error),
            Err(ApiError::ExpiredIterator) => {
                return Err(Error::InvalidResponse {
                    operation,
                    message: "ExpiredIteratorException".into(),
                })
            }
            Err(ApiError::Credentials(source)) if backoff.attempts() >= settings.startup_retries => {
                return Err(Error::Credentials {
                    stream: stream.configured.clone(),
                    source,
                });
            }
            Err(ApiError::Throttled(source) | ApiError::Transient(source) | ApiError::Credentials(source)) => {
                if backoff.attempts() >= settings.startup_retries {
                    return Err(Error::Unavailable { operation, source });
                }
                let delay = backoff.next_delay();
                tracing::warn!(operation, error = %source, ?delay, "retrying");
                tokio::time::sleep(delay).await;
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
