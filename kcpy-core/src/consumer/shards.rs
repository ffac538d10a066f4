//! The shards being read: a reader task per shard, its slot in the consumer,
//! and starting and stopping them as the lineage and the group decide.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::part::Part;
use crate::checkpoint::{Gate, Position};
use crate::config::Settings;
use crate::kinesis::{Records, ShardInfo, StreamRef};
use crate::lineage::Start;
use crate::read::{Deliver, DynReader, ReadShard, ShardEvent};
use crate::signal::Fatal;
use crate::telemetry::{Behind, ConsumerEvent, ShardMetrics};
use crate::Record;

/// Starts a reader task per shard.
pub(super) struct Spawner {
    /// Manual mode with a store: each shard's delivered, uncheckpointed
    /// records are capped at `max_unacknowledged`.
    pub(super) gated: bool,
    pub(super) reader: DynReader,
    pub(super) stream: Arc<StreamRef>,
    /// The stream's name, as metrics label it.
    pub(super) stream_name: Arc<str>,
    /// Each shard's latest lag, as its reader last heard it.
    pub(super) behind: Arc<Behind>,
    pub(super) settings: Arc<Settings>,
    pub(super) fatal: Fatal,
    pub(super) span: tracing::Span,
}

impl Spawner {
    pub(super) fn spawn(&self, slot: usize, start: Start) -> (ShardStream, ShardSlot) {
        let (tx, events) = mpsc::channel(self.settings.prefetch_batches);
        let shard_id: Arc<str> = start.shard_id.into();
        let cancel = self.fatal.token().child_token();
        let gone = Arc::new(AtomicBool::new(false));
        let metrics = ShardMetrics::new(&self.stream_name, &shard_id, &self.behind);
        let read = ReadShard {
            stream: Arc::new(self.stream.for_shard()),
            shard_id: Arc::clone(&shard_id),
            position: start.position,
            fallback: start.fallback,
            latest_at: start.mark,
            slot,
            tx: Deliver::new(tx, &self.settings, start.hash_range, start.skip),
            cancel: cancel.clone(),
            metrics: metrics.clone(),
        };
        let span = tracing::info_span!(parent: &self.span, "shard", shard = %shard_id);
        let task = tokio::spawn(crate::read::run(Arc::clone(&self.reader), read, self.fatal.clone()).instrument(span));
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
            metrics,
            delivered: None,
            handed: 0,
            processed_count: 0,
            processed: None,
            dirty: false,
            ended: false,
            cancel,
            gone,
        };
        (stream, slot)
    }
}

pub(super) struct ShardSlot {
    /// Manual mode: what caps the shard's unacknowledged records.
    pub(super) gate: Option<Arc<Gate>>,
    pub(super) id: Arc<str>,
    pub(super) metrics: ShardMetrics,
    /// The last record handed out.
    pub(super) delivered: Option<Position>,
    /// Records handed out, and how many of them `processed` covers.
    pub(super) handed: u64,
    pub(super) processed_count: u64,
    pub(super) processed: Option<Box<Position>>,
    pub(super) dirty: bool,
    /// Every record of the shard was handed out, or the shard was stopped.
    pub(super) ended: bool,
    pub(super) cancel: CancellationToken,
    /// Stopped: whatever its reader fetched is never handed out.
    pub(super) gone: Arc<AtomicBool>,
}

impl ShardSlot {
    /// `record` of this shard goes to the caller.
    pub(super) fn hand_out(&mut self, record: &Record) {
        self.handed += 1;
        match &mut self.delivered {
            Some(delivered) => delivered.assign(record),
            None => self.delivered = Some(Position::of(record)),
        }
    }
}

pub(super) struct Batch {
    pub(super) slot: usize,
    pub(super) records: Records,
    /// In a group: until when the lease, as last confirmed, lets these
    /// records be handed out; checked per record, as a paused process may
    /// wake in the middle of a batch.
    pub(super) until: Option<tokio::time::Instant>,
}

/// One shard's reader, as a stream of its events.
pub(super) struct ShardStream {
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

impl Part {
    /// Starts the shards the lineage says may start now.
    pub(super) fn start(&mut self, starts: Vec<Start>) {
        for start in starts {
            if let (Some(at), Some(progress)) = (start.mark, &self.progress) {
                progress.mark_start(&Arc::from(start.shard_id.as_str()), at);
            }
            tracing::info!(parent: &self.spawner.span, shard = %start.shard_id, position = ?start.position, "starting shard");
            self.events.send(ConsumerEvent::ShardStarted {
                stream_name: self.spawner.stream.name.clone(),
                shard_id: start.shard_id.clone(),
            });
            match self.free_slot() {
                Some(index) => {
                    let (stream, slot) = self.spawner.spawn(index, start);
                    self.shards.push(stream);
                    let old = std::mem::replace(&mut self.slots[index], slot);
                    // What lag() shows of a shard no slot reads any more.
                    self.past.insert(Arc::clone(&old.id), old.delivered);
                }
                None => {
                    let (stream, slot) = self.spawner.spawn(self.slots.len(), start);
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

    /// Stops reading `shard` at once: its reader ends, and records it fetched
    /// but did not hand out are dropped.
    pub(super) fn stop_shard(&mut self, shard: &str) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if &*slot.id != shard || slot.ended {
                continue;
            }
            slot.ended = true;
            slot.gone.store(true, Ordering::Release);
            slot.cancel.cancel();
            slot.metrics.stopped();
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
    pub(super) fn on_shard_end(&mut self, slot: usize, children: Vec<ShardInfo>) {
        let entry = &mut self.slots[slot];
        entry.ended = true;
        entry.gone.store(true, Ordering::Release);
        entry.metrics.stopped();
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
                // Without a store the end needs no saving: finished now.
                self.events.send(ConsumerEvent::ShardFinished {
                    stream_name: self.stream.name.clone(),
                    shard_id: shard.to_string(),
                });
                let starts = self.lineage.finished(&shard, now);
                self.start(starts);
            }
        }
    }
}
