//! Processed-record bookkeeping: what the consumer and its [`Checkpointer`]s
//! mark processed, per shard, until the writer saves it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Context;

use futures::task::AtomicWaker;
use tokio::sync::{mpsc, oneshot};

use super::Position;
use crate::config::{CheckpointMode, Settings};
use crate::group::Membership;
use crate::kinesis::Records;
use crate::signal::Fatal;
use crate::telemetry::Durable;
use crate::{Checkpoint, Error, Record};

pub(crate) enum Command {
    /// Save what is pending; answer when it is durable (or failed).
    Flush(Option<oneshot::Sender<Result<(), Error>>>),
    /// Save what is pending, then hand `shard`'s lease to the worker `to`.
    Release { shard: Arc<str>, to: String },
    /// Save what is pending, then stop.
    Stop,
}

/// State shared by the consumer, its [`Checkpointer`]s and the writer task.
#[derive(Debug)]
pub(crate) struct Progress {
    inner: Mutex<Inner>,
    commands: mpsc::UnboundedSender<Command>,
    /// Set by the writer every `checkpoint_interval`; the consumer then hands
    /// over its processed positions.
    pub(crate) flush_due: AtomicBool,
    /// Wakes an idle consumer when a flush is due.
    pub(crate) waker: AtomicWaker,
    /// Why checkpoints stopped being written, for [`Checkpointer`]'s errors.
    pub(super) fatal: Fatal,
    mode: CheckpointMode,
    every: u64,
    /// Told of checkpoints committed by the caller's transactions.
    durable: Durable,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per shard, the newest processed position not yet saved.
    pending: HashMap<Arc<str>, Checkpoint>,
    /// Per shard, how many of its records handed out `pending` covers.
    counts: HashMap<Arc<str>, u64>,
    /// Manual mode: per shard, delivered records awaiting acknowledgement.
    trackers: HashMap<Arc<str>, AckTracker>,
    /// Shards whose lease was given up: late acknowledgements of their
    /// records are ignored, not errors.
    dropped: HashSet<Arc<str>>,
    acked_since_flush: u64,
    /// Per shard, the newest checkpoint handed to the caller to write in a
    /// transaction of its own: the store may hold up to that without the
    /// writer having saved it.
    prepared: HashMap<Arc<str>, Checkpoint>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Flush(_) => "Flush",
            Command::Release { .. } => "Release",
            Command::Stop => "Stop",
        })
    }
}

impl Progress {
    pub(crate) fn new(
        settings: &Settings,
        fatal: Fatal,
        durable: Durable,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Command>) {
        let (commands, rx) = mpsc::unbounded_channel();
        let progress = Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            commands,
            flush_due: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            fatal,
            mode: settings.checkpoint_mode,
            every: settings.checkpoint_every,
            durable,
        });
        (progress, rx)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in
        // a way that matters more than stopping would, so keep going.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn mode(&self) -> CheckpointMode {
        self.mode
    }

    /// Auto mode: hands over processed positions, each with how many of
    /// the shard's records handed out it covers, and asks for a save.
    pub(crate) fn submit<'a>(&self, positions: impl Iterator<Item = (&'a Arc<str>, &'a Position, u64)>) {
        let mut inner = self.lock();
        for (shard, position, count) in positions {
            inner.advance(shard, position.checkpoint());
            inner.count(shard, count);
        }
        drop(inner);
        let _ = self.commands.send(Command::Flush(None));
    }

    /// `shard` starts at `at`, a start a later run could not find again:
    /// saved as its checkpoint until a record's supersedes it.
    pub(crate) fn mark_start(&self, shard: &Arc<str>, at: std::time::SystemTime) {
        self.lock()
            .advance(shard, Checkpoint::AtTimestamp(crate::StartTime::new(at)));
        let _ = self.commands.send(Command::Flush(None));
    }

    /// Every record of `shard` was handed out. In auto mode they are all
    /// processed now; in manual mode once each is acknowledged. Then the
    /// shard's end is checkpointed and the consumer told.
    pub(crate) fn end_shard(&self, shard: &Arc<str>) {
        let mut inner = self.lock();
        let done = match self.mode {
            CheckpointMode::Manual => match inner.trackers.get_mut(shard) {
                Some(tracker) => {
                    tracker.ended = true;
                    tracker.entries.is_empty()
                }
                None => true,
            },
            _ => true,
        };
        if done {
            inner.advance(shard, Checkpoint::ShardEnd);
            drop(inner);
            let _ = self.commands.send(Command::Flush(None));
        }
    }

    /// The shard's lease is gone: nothing of it is saved any more.
    pub(crate) fn forget(&self, shard: &Arc<str>) {
        let mut inner = self.lock();
        inner.pending.remove(shard);
        inner.counts.remove(shard);
        inner.trackers.remove(shard);
        inner.prepared.remove(shard);
        inner.dropped.insert(Arc::clone(shard));
    }

    /// Forgets given-up shards the stream no longer lists (past retention),
    /// so the set does not grow with every shard ever given up.
    pub(crate) fn listed(&self, shards: &HashSet<&str>) {
        self.lock().dropped.retain(|shard| shards.contains(&**shard));
    }

    /// Saves what is pending, then hands `shard`'s lease to `to`.
    pub(crate) fn release(&self, shard: &Arc<str>, to: String) {
        let mut inner = self.lock();
        inner.trackers.remove(shard);
        inner.dropped.insert(Arc::clone(shard));
        drop(inner);
        let _ = self.commands.send(Command::Release {
            shard: Arc::clone(shard),
            to,
        });
    }

    /// Manual mode: records of `shard` that were delivered, in order, counted
    /// against the shard's `gate` until the checkpoint covers them.
    pub(crate) fn register(&self, shard: &Arc<str>, records: &Records, gate: &Arc<Gate>) {
        let mut inner = self.lock();
        inner.dropped.remove(shard);
        let tracker = inner.trackers.entry(Arc::clone(shard)).or_default();
        tracker.entries.extend(
            records
                .places()
                .map(|(sequence, sub)| (Position::at(sequence, sub), false)),
        );
        gate.delivered(records.len());
        tracker.gate = Some(Arc::clone(gate));
    }

    fn acknowledge(&self, record: &Record) -> Result<(), Error> {
        self.acknowledge_at(&record.shard_id, &Position::of(record))
    }

    /// Manual mode: marks the record of `shard` at `position` processed.
    pub(crate) fn acknowledge_at(&self, shard: &Arc<str>, position: &Position) -> Result<(), Error> {
        let mut inner = self.lock();
        let unknown = || Error::UnknownRecord {
            shard_id: shard.to_string(),
            sequence_number: position.sequence_text().to_owned(),
        };
        if inner.dropped.contains(shard) && !inner.trackers.contains_key(shard) {
            return Ok(());
        }
        let tracker = inner.trackers.get_mut(shard).ok_or_else(unknown)?;
        let Some((watermark, newly)) = tracker.ack(position).ok_or_else(unknown)? else {
            return Ok(());
        };
        let shard_done = tracker.ended && tracker.entries.is_empty();
        tracker.covered += newly;
        let covered = tracker.covered;
        inner.advance(shard, watermark.checkpoint());
        inner.count(shard, covered);
        inner.acked_since_flush += newly;
        if shard_done {
            inner.advance(shard, Checkpoint::ShardEnd);
        }
        if shard_done || inner.acked_since_flush >= self.every {
            inner.acked_since_flush = 0;
            drop(inner);
            let _ = self.commands.send(Command::Flush(None));
        }
        Ok(())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }

    /// Manual mode: whether `position` of `shard` was delivered and its
    /// shard is still read.
    pub(crate) fn is_delivered(&self, shard: &Arc<str>, position: &Position) -> bool {
        self.lock()
            .trackers
            .get(shard)
            .is_some_and(|tracker| tracker.knows(position))
    }

    /// Whether `shard`'s lease was given up.
    pub(crate) fn is_dropped(&self, shard: &Arc<str>) -> bool {
        self.lock().dropped.contains(shard)
    }

    /// `checkpoint` of `shard` is about to be written by the caller's own
    /// transaction.
    pub(crate) fn prepared(&self, shard: &Arc<str>, checkpoint: &Checkpoint) {
        let mut inner = self.lock();
        match inner.prepared.get_mut(shard) {
            Some(known) if *known >= *checkpoint => {}
            Some(known) => *known = checkpoint.clone(),
            None => {
                inner.prepared.insert(Arc::clone(shard), checkpoint.clone());
            }
        }
    }

    /// Whether the store may hold `stored` for `shard` because the caller's
    /// transaction wrote it: then a save of an older checkpoint is
    /// superseded, not a conflict.
    pub(crate) fn written_elsewhere(&self, shard: &str, stored: &Checkpoint) -> bool {
        self.lock()
            .prepared
            .get(shard)
            .is_some_and(|prepared| stored <= prepared)
    }

    /// The caller's transaction committed the checkpoint of `position`: it
    /// and every record of `shard` delivered before it are processed and
    /// durable.
    pub(crate) fn committed_elsewhere(&self, shard: &Arc<str>, position: &Position) {
        let mut inner = self.lock();
        let Some(tracker) = inner.trackers.get_mut(shard) else {
            // Its lease is gone: the next owner reads the store.
            return;
        };
        let moved = tracker.ack_through(position);
        let shard_done = moved.is_some() && tracker.ended && tracker.entries.is_empty();
        if let Some((watermark, newly)) = moved {
            tracker.covered += newly;
            let covered = tracker.covered;
            let checkpoint = position.checkpoint();
            if watermark <= *position {
                // What the commit wrote is all there is to save.
                if inner.pending.get(shard).is_some_and(|pending| *pending <= checkpoint) {
                    inner.pending.remove(shard);
                }
                self.durable.set(shard, &checkpoint);
                self.durable.covered(shard, Some(covered));
            } else {
                // Records after it were acknowledged one by one.
                inner.advance(shard, watermark.checkpoint());
                inner.count(shard, covered);
            }
        }
        if shard_done {
            inner.advance(shard, Checkpoint::ShardEnd);
            drop(inner);
            let _ = self.commands.send(Command::Flush(None));
        }
    }

    /// What is pending, with how many records handed out each covers.
    pub(super) fn take_pending(&self) -> (HashMap<Arc<str>, Checkpoint>, HashMap<Arc<str>, u64>) {
        let mut inner = self.lock();
        inner.acked_since_flush = 0;
        (std::mem::take(&mut inner.pending), std::mem::take(&mut inner.counts))
    }

    /// Puts back positions that were not saved, unless newer ones arrived.
    pub(super) fn restore_pending(&self, unsaved: Vec<(Arc<str>, Checkpoint, Option<u64>)>) {
        let mut inner = self.lock();
        for (shard, checkpoint, count) in unsaved {
            inner.advance(&shard, checkpoint);
            if let Some(count) = count {
                inner.count(&shard, count);
            }
        }
    }

    pub(crate) fn fatal(&self) -> Option<Error> {
        self.fatal.error()
    }

    pub(crate) fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }
}

impl Inner {
    fn count(&mut self, shard: &Arc<str>, count: u64) {
        let known = self.counts.entry(Arc::clone(shard)).or_default();
        *known = (*known).max(count);
    }

    /// Moves a shard's pending checkpoint forward, never back.
    fn advance(&mut self, shard: &Arc<str>, to: Checkpoint) {
        match self.pending.get_mut(shard) {
            Some(pending) if *pending >= to => {}
            Some(pending) => *pending = to,
            None => {
                self.pending.insert(Arc::clone(shard), to);
            }
        }
    }
}

/// Manual mode, per shard: how many delivered records the checkpoint does
/// not cover yet. At `max_unacknowledged` the shard hands over no further
/// batch until acknowledgements bring it below, so one record never
/// acknowledged cannot make the bookkeeping (or the caller's backlog) grow
/// without bound.
#[derive(Debug)]
pub(crate) struct Gate {
    outstanding: AtomicUsize,
    cap: usize,
    waker: AtomicWaker,
}

impl Gate {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            outstanding: AtomicUsize::new(0),
            cap,
            waker: AtomicWaker::new(),
        })
    }

    /// Whether the shard may hand over another batch; if not, `cx` is woken
    /// once it may.
    pub(crate) fn admits(&self, cx: &Context<'_>) -> bool {
        if self.outstanding.load(Ordering::Acquire) < self.cap {
            return true;
        }
        self.waker.register(cx.waker());
        self.outstanding.load(Ordering::Acquire) < self.cap
    }

    fn delivered(&self, records: usize) {
        self.outstanding.fetch_add(records, Ordering::AcqRel);
    }

    fn committed(&self, records: usize) {
        let before = self.outstanding.fetch_sub(records, Ordering::AcqRel);
        if before >= self.cap && before - records < self.cap {
            self.waker.wake();
        }
    }
}

/// Delivered records of one shard, in order, and which were acknowledged.
#[derive(Debug, Default)]
struct AckTracker {
    entries: VecDeque<(Position, bool)>,
    committed: Option<Position>,
    /// How many records the watermark has moved over.
    covered: u64,
    /// Every record of the shard was delivered.
    ended: bool,
    gate: Option<Arc<Gate>>,
}

impl AckTracker {
    /// Marks `seq` processed. `None` if it was never delivered; otherwise the
    /// new end of the contiguous processed prefix (if it moved) and how many
    /// records it moved over.
    fn ack(&mut self, seq: &Position) -> Option<Option<(Position, u64)>> {
        if self.committed.as_ref().is_some_and(|done| seq <= done) {
            return Some(None);
        }
        let at = self.entries.binary_search_by(|(s, _)| s.cmp(seq)).ok()?;
        self.entries[at].1 = true;
        Some(self.pop_processed())
    }

    /// Whether `seq` was delivered (processed or not).
    fn knows(&self, seq: &Position) -> bool {
        self.committed.as_ref().is_some_and(|done| seq <= done)
            || self.entries.binary_search_by(|(s, _)| s.cmp(seq)).is_ok()
    }

    /// Marks `seq` and every record delivered before it processed; the new
    /// end of the contiguous processed prefix, if it moved.
    fn ack_through(&mut self, seq: &Position) -> Option<(Position, u64)> {
        for (delivered, acked) in self.entries.iter_mut() {
            if &*delivered > seq {
                break;
            }
            *acked = true;
        }
        self.pop_processed()
    }

    fn pop_processed(&mut self) -> Option<(Position, u64)> {
        let mut moved = 0;
        while self.entries.front().is_some_and(|(_, acked)| *acked) {
            if let Some((seq, _)) = self.entries.pop_front() {
                self.committed = Some(seq);
                moved += 1;
            }
        }
        if moved == 0 {
            return None;
        }
        if let Some(gate) = &self.gate {
            gate.committed(moved as usize);
        }
        self.committed.clone().map(|committed| (committed, moved))
    }
}

/// Marks records processed from anywhere: a cloneable handle for
/// [`CheckpointMode::Manual`].
///
/// Per shard the checkpoint advances over the contiguous run of processed
/// records only, so acknowledging out of order never skips a record.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    /// One per stream the consumer reads, in the order they were added.
    pub(crate) streams: Arc<[StreamCheckpointer]>,
}

/// What a [`Checkpointer`] needs of one stream.
#[derive(Debug)]
pub(crate) struct StreamCheckpointer {
    pub(crate) progress: Option<Arc<Progress>>,
    /// With a lease store: writes in the caller's transactions are fenced
    /// by the shard's lease.
    pub(crate) membership: Option<Arc<Membership>>,
    pub(crate) consumer_name: Arc<str>,
    pub(crate) stream_name: Arc<str>,
}

impl Checkpointer {
    /// The stream `record` came from. A consumer of one stream takes every
    /// record as its own (records built by hand name no stream).
    pub(crate) fn stream_of(&self, record: &Record) -> Result<&StreamCheckpointer, Error> {
        match &*self.streams {
            [only] => Ok(only),
            streams => streams
                .iter()
                .find(|stream| *stream.stream_name == *record.stream)
                .ok_or_else(|| Error::UnknownRecord {
                    shard_id: record.shard_id.to_string(),
                    sequence_number: record.sequence_number.to_string(),
                }),
        }
    }

    /// Marks `record` processed. Its checkpoint is written with the next batch
    /// (every `checkpoint_every` records or `checkpoint_interval`), at
    /// shutdown, or by [`flush`](Self::flush).
    ///
    /// Without a checkpoint store this does nothing. It fails with
    /// [`Error::InvalidConfig`] in [`CheckpointMode::Auto`] (where asking for
    /// the next record does this), with [`Error::UnknownRecord`] for a record
    /// this consumer did not deliver, and with [`Error::Closed`] (or the
    /// fatal error) once the consumer has stopped writing checkpoints.
    pub fn checkpoint(&self, record: &Record) -> Result<(), Error> {
        let Some(progress) = &self.stream_of(record)?.progress else {
            return Ok(());
        };
        if progress.mode() != CheckpointMode::Manual {
            return Err(Error::config(
                "checkpoint() needs CheckpointMode::Manual; in Auto mode asking for the next record marks the last one processed",
            ));
        }
        // The writer is gone: nothing marked now would ever be written.
        if progress.commands.is_closed() {
            return Err(progress.fatal().unwrap_or(Error::Closed));
        }
        progress.acknowledge(record)
    }

    /// Writes every checkpoint marked so far (of every stream) and waits
    /// until it is durable.
    pub async fn flush(&self) -> Result<(), Error> {
        for stream in self.streams.iter() {
            stream.flush().await?;
        }
        Ok(())
    }
}

impl StreamCheckpointer {
    async fn flush(&self) -> Result<(), Error> {
        let Some(progress) = &self.progress else {
            return Ok(());
        };
        let (reply, answer) = oneshot::channel();
        if progress.commands.send(Command::Flush(Some(reply))).is_err() {
            return Err(progress.fatal().unwrap_or(Error::Closed));
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(progress.fatal().unwrap_or(Error::Closed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: u32) -> Position {
        let seq = crate::SequenceNumber::parse(&n.to_string()).expect("valid");
        Position::of(&Record::new("s", seq, "k", &b""[..]))
    }

    #[test]
    fn out_of_order_acks_commit_only_the_contiguous_prefix() {
        let mut tracker = AckTracker::default();
        tracker.entries.extend((1..=5).map(|n| (seq(n), false)));
        assert_eq!(tracker.ack(&seq(2)), Some(None));
        assert_eq!(tracker.ack(&seq(3)), Some(None));
        assert_eq!(tracker.ack(&seq(1)), Some(Some((seq(3), 3))));
        assert_eq!(tracker.ack(&seq(5)), Some(None));
        assert_eq!(tracker.ack(&seq(4)), Some(Some((seq(5), 2))));
        assert!(tracker.entries.is_empty());
    }

    #[test]
    fn acks_of_committed_records_are_idempotent_and_unknown_ones_rejected() {
        let mut tracker = AckTracker::default();
        tracker.entries.extend([(seq(10), false), (seq(20), false)]);
        assert_eq!(tracker.ack(&seq(10)), Some(Some((seq(10), 1))));
        assert_eq!(tracker.ack(&seq(10)), Some(None));
        assert_eq!(tracker.ack(&seq(15)), None);
        assert_eq!(tracker.ack(&seq(30)), None);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Whatever the order of acknowledgements, the watermark is the
            /// end of the longest run of acknowledged records from the start.
            #[test]
            fn the_watermark_is_the_contiguous_acknowledged_prefix(
                order in (1usize..60).prop_flat_map(|n| Just((1..=n as u32).collect::<Vec<_>>()).prop_shuffle())
            ) {
                let mut tracker = AckTracker::default();
                tracker.entries.extend((1..=order.len() as u32).map(|n| (seq(n), false)));
                let mut acked = std::collections::BTreeSet::new();
                let mut committed = 0u32;
                for n in order {
                    acked.insert(n);
                    let prefix = (1..).take_while(|k| acked.contains(k)).last().unwrap_or(0);
                    let moved = tracker.ack(&seq(n)).expect("a delivered record");
                    if prefix > committed {
                        prop_assert_eq!(moved, Some((seq(prefix), u64::from(prefix - committed))));
                        committed = prefix;
                    } else {
                        prop_assert_eq!(moved, None);
                    }
                }
                prop_assert!(tracker.entries.is_empty());
            }
        }
    }
}
