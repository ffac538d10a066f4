//! The consumer: a `Stream` of records over every shard of one or more
//! streams. This file holds its public face and its `poll_next`, which takes
//! records from each stream's [`part`] in turn; `builder` wires it up,
//! `part` hands out one stream's records, `shards` starts and stops the
//! readers of shards, `discovery` lists a stream, `startup` loads
//! checkpoints, `shutdown` stops it.

mod builder;
mod discovery;
mod lanes;
mod observe;
mod part;
mod shards;
mod shutdown;
mod startup;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};

pub use builder::{ConsumerBuilder, StreamSpec};
pub use shutdown::ShutdownHandle;

use self::part::Part;
use crate::kinesis::SdkKinesis;
#[cfg(doc)]
use crate::CheckpointMode;
use crate::{Checkpointer, Error, Record};

/// Reads every shard of a Kinesis stream — or of several streams — as one
/// [`Stream`] of [`Record`]s.
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
///
/// A consumer of several streams ([`ConsumerBuilder::add_stream`]) reads
/// each with its own shards, lineage and start position, and every record
/// names its [`stream`](Record::stream). A fatal error of one stream (it was
/// deleted, access to it was denied) stops the whole consumer, as one of a
/// single stream stops: the checkpoints of every stream's processed records
/// are written, and [`Consumer::error`] names the stream.
#[must_use = "a Consumer does nothing unless polled"]
pub struct Consumer {
    /// One per stream, in the order they were configured; they share one
    /// stop ([`ShutdownHandle`]) and one stream of events.
    parts: Vec<Part>,
    /// The part asked first for the next record: parts take turns, so a
    /// stream with a backlog does not starve the others.
    turn: usize,
    /// The part of the record handed out last.
    last: Option<usize>,
    checkpointer: Checkpointer,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field(
                "streams",
                &self.parts.iter().map(|p| &p.stream.configured).collect::<Vec<_>>(),
            )
            .field("consumer_name", &self.first().settings.consumer_name)
            .field("shards", &self.parts.iter().map(|p| p.slots.len()).sum::<usize>())
            .field("error", &self.error())
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

    fn new(parts: Vec<Part>) -> Self {
        debug_assert!(!parts.is_empty());
        let checkpointer = Checkpointer {
            streams: parts.iter().map(Part::checkpointer).collect(),
        };
        Self {
            parts,
            turn: 0,
            last: None,
            checkpointer,
        }
    }

    fn first(&self) -> &Part {
        &self.parts[0]
    }

    /// The fatal error that ended the stream, if one did.
    pub fn error(&self) -> Option<&Error> {
        self.parts.iter().find_map(|part| part.error.as_ref())
    }

    /// The stream's name (also when it was configured by ARN); with several
    /// streams, the first one's (see [`stream_names`](Self::stream_names)).
    pub fn stream_name(&self) -> &str {
        &self.first().stream.name
    }

    /// The names of the streams read, in the order they were configured.
    pub fn stream_names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().map(|part| part.stream.name.as_str())
    }

    /// The shards being read now (not those finished or waiting for their
    /// parents to finish), of every stream.
    pub fn shard_ids(&self) -> impl Iterator<Item = &str> {
        self.parts
            .iter()
            .flat_map(|part| part.slots.iter().filter(|slot| !slot.ended).map(|slot| &*slot.id))
    }

    /// This process's id in its consumer group (see
    /// [`ConsumerBuilder::worker_id`]), when it has a lease store.
    pub fn worker_id(&self) -> Option<&str> {
        self.first().membership.as_ref().map(|m| m.worker.as_str())
    }

    /// A handle that stops this consumer from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            fatal: self.first().fatal.clone(),
        }
    }

    /// A handle to mark records processed in [`CheckpointMode::Manual`].
    pub fn checkpointer(&self) -> Checkpointer {
        self.checkpointer.clone()
    }

    /// Marks `record` processed ([`CheckpointMode::Manual`]); see
    /// [`Checkpointer::checkpoint`].
    pub fn checkpoint(&self, record: &Record) -> Result<(), Error> {
        self.checkpointer.checkpoint(record)
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
        if let Some(last) = self.last {
            self.parts[last].continue_batch(&mut batch, max);
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
        self.last = None;
        for part in &mut self.parts {
            part.in_flight = None;
            part.begin_closing();
        }
        // Closing hands out no records; this only drives the final flush.
        while self.next().await.is_some() {}
        self.error().cloned().map_or(Ok(()), Err)
    }

    /// The next record, from the parts in turn. With `hold`, a stop asked
    /// for (or forced by a fatal error) ends the records without closing:
    /// the caller finishes what it holds first, then closes.
    fn poll_record(&mut self, cx: &mut Context<'_>, hold: bool) -> Poll<Option<Record>> {
        if let Some(last) = self.last.take() {
            self.parts[last].settle();
        }
        if let [only] = self.parts.as_mut_slice() {
            let next = only.poll_record(cx, hold);
            if matches!(next, Poll::Ready(Some(_))) {
                self.last = Some(0);
            }
            return next;
        }
        let count = self.parts.len();
        let mut ended = 0;
        for step in 0..count {
            let index = (self.turn + step) % count;
            match self.parts[index].poll_record(cx, hold) {
                Poll::Ready(Some(record)) => {
                    self.last = Some(index);
                    self.turn = (index + 1) % count;
                    return Poll::Ready(Some(record));
                }
                Poll::Ready(None) => ended += 1,
                Poll::Pending => {}
            }
        }
        if ended == count {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

impl Stream for Consumer {
    type Item = Record;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Record>> {
        self.get_mut().poll_record(cx, false)
    }
}

// The consumer must stay usable from spawned tasks and with `StreamExt::next`.
const _: fn() = || {
    fn unpin_send<T: Unpin + Send>() {}
    unpin_send::<Consumer>();
};

#[cfg(test)]
mod tests;
