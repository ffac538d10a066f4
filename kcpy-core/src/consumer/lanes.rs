//! Per-key lanes: records handed to a handler concurrently, one lane per
//! hash of the partition key, so each key's records stay in order while
//! different keys run side by side. Progress is acknowledged through the
//! manual-mode watermark, which only moves over a shard's contiguous run of
//! finished records, whatever order the lanes finish in.

use std::collections::VecDeque;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use super::Consumer;
use crate::checkpoint::Position;
use crate::config::CheckpointMode;
use crate::error::panic_message;
use crate::{Error, Record};

/// Where a record handed to a lane sits, to acknowledge it once handled.
struct Handed {
    lane: usize,
    /// The consumer's part (stream) it came from.
    part: usize,
    shard: Arc<str>,
    position: Position,
}

/// How one handler call ended.
type Outcome = Result<(), crate::BoxError>;

/// The handler panicked: what it said.
#[derive(Debug)]
struct Panicked(String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the handler panicked: {}", self.0)
    }
}

impl std::error::Error for Panicked {}

/// What the loop waits for.
enum Step {
    Finished(Handed, Outcome),
    Record(Record),
    /// The consumer stops: asked to, or by a fatal error.
    Stopping,
}

impl Consumer {
    /// Hands every record to `handler` in `lanes` ordered lanes until the
    /// consumer stops, then closes it; resolves to the error that ended it.
    ///
    /// A record's lane is a hash of its partition key: records of one key
    /// reach the handler one at a time, in shard order (across reshards too,
    /// as a child shard is read only once its parent's records are all
    /// handled), while records of other keys run concurrently, up to `lanes`
    /// at once. Like
    /// [`for_each_concurrent`](futures::StreamExt::for_each_concurrent),
    /// the handlers run in the calling task and may borrow from it; spawn
    /// inside the handler for CPU-heavy work.
    ///
    /// With a checkpoint store this needs [`CheckpointMode::Manual`]: each
    /// record counts as processed when its handler resolves to `Ok`, and a
    /// shard's checkpoint moves over the contiguous run of processed records
    /// only, so delivery stays at least once whatever order lanes finish in.
    /// Records fetched but not yet handled — queued in lanes or running —
    /// are at most [`max_unacknowledged`](super::ConsumerBuilder::max_unacknowledged)
    /// per shard; when lanes are busy, reading waits.
    ///
    /// A handler that returns an error or panics ends the consumer with
    /// [`Error::Handler`]: no new records are started, the running ones
    /// finish, and the checkpoints of processed records before the failed one
    /// are written; the failed record and every record after it in its shard
    /// are delivered again after a restart. Retry inside the handler if a
    /// failure is transient.
    ///
    /// On shutdown (a [`ShutdownHandle`](super::ShutdownHandle), the
    /// shutdown token or a fatal error), queued records are dropped and
    /// running handlers get the shutdown timeout to finish; then the
    /// checkpoints are flushed. When a lease is lost or handed over, that
    /// shard's queued records are dropped and its running handlers' results
    /// no longer move its checkpoint: the new owner reads them again.
    pub async fn for_each_by_key<F, Fut, E>(&mut self, lanes: usize, mut handler: F) -> Result<(), Error>
    where
        F: FnMut(Record) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if lanes == 0 {
            return Err(Error::config("for_each_by_key needs at least one lane"));
        }
        if self
            .parts
            .iter()
            .filter_map(|part| part.progress.as_ref())
            .any(|p| p.mode() != CheckpointMode::Manual)
        {
            return Err(Error::config(
                "for_each_by_key needs CheckpointMode::Manual: it checkpoints each record once its handler has finished",
            ));
        }
        let run = |handed: Handed, future: Fut| async move {
            let outcome = match AssertUnwindSafe(future).catch_unwind().await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(crate::BoxError::from(error.into())),
                Err(payload) => Err(Arc::new(Panicked(panic_message(&*payload))) as crate::BoxError),
            };
            (handed, outcome)
        };
        let mut queues: Vec<VecDeque<(Record, usize, Position)>> = (0..lanes).map(|_| VecDeque::new()).collect();
        let mut busy = vec![false; lanes];
        let mut queued = 0usize;
        // Without a store no gate holds reading back: the lanes cap it.
        let cap = self.parts[0].settings.max_unacknowledged;
        let stored = self.parts[0].progress.is_some();
        let mut running = FuturesUnordered::new();
        let mut failure: Option<Error> = None;
        loop {
            for lane in 0..lanes {
                if busy[lane] {
                    continue;
                }
                while let Some((record, part, position)) = queues[lane].pop_front() {
                    queued -= 1;
                    if !self.still_held(part, &record.shard_id, &position) {
                        continue;
                    }
                    busy[lane] = true;
                    let handed = Handed {
                        lane,
                        part,
                        shard: Arc::clone(&record.shard_id),
                        position,
                    };
                    running.push(run(handed, handler(record)));
                    break;
                }
            }
            let pull = stored || queued < cap;
            let step = std::future::poll_fn(|cx| {
                if let Poll::Ready(Some((handed, outcome))) = running.poll_next_unpin(cx) {
                    return Poll::Ready(Step::Finished(handed, outcome));
                }
                if pull {
                    if let Poll::Ready(next) = self.poll_record(cx, true) {
                        return Poll::Ready(next.map_or(Step::Stopping, Step::Record));
                    }
                }
                Poll::Pending
            })
            .await;
            match step {
                Step::Finished(handed, outcome) => {
                    busy[handed.lane] = false;
                    if let Err(error) = self.finished(handed, outcome) {
                        failure = Some(error);
                        break;
                    }
                }
                Step::Record(record) => {
                    let position = Position::of(&record);
                    let part = self.last.unwrap_or(0);
                    queues[lane_of(&record.partition_key, lanes)].push_back((record, part, position));
                    queued += 1;
                }
                Step::Stopping => break,
            }
        }
        // Queued records are dropped unhandled: no checkpoint covers them.
        drop(queues);
        self.parts[0].fatal.stop();
        let deadline = tokio::time::Instant::now() + self.parts[0].settings.shutdown_timeout;
        // Moved in as `&mut`, not borrowed as `&`: the future stays Send
        // with a Consumer that is Send but not Sync.
        let (this, running_now, failed) = (&mut *self, &mut running, &mut failure);
        let drained = tokio::time::timeout_at(deadline, async move {
            while let Some((handed, outcome)) = running_now.next().await {
                if let Err(error) = this.finished(handed, outcome) {
                    failed.get_or_insert(error);
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                running = running.len(),
                "handlers still running at the shutdown deadline; their records are delivered again"
            );
        }
        drop(running);
        if let Some(error) = &failure {
            tracing::error!(error = %error, source = ?std::error::Error::source(error), "a handler failed");
            self.parts[0].error.get_or_insert(error.clone());
        }
        let closed = self.close().await;
        match failure {
            Some(error) => Err(error),
            None => closed,
        }
    }

    /// Whether `shard` is still this consumer's to read, so a queued record
    /// of it may start: not after its lease was lost or handed over.
    fn still_held(&self, part: usize, shard: &Arc<str>, position: &Position) -> bool {
        let part = &self.parts[part];
        let tracked = part
            .progress
            .as_ref()
            .is_none_or(|progress| progress.is_delivered(shard, position));
        let leased = part.membership.as_ref().is_none_or(|m| m.may_deliver(shard));
        tracked && leased
    }

    /// Acknowledges a handled record; the handler's failure as the error
    /// that ends the consumer.
    fn finished(&self, handed: Handed, outcome: Outcome) -> Result<(), Error> {
        match outcome {
            Ok(()) => match &self.parts[handed.part].progress {
                Some(progress) => match progress.acknowledge_at(&handed.shard, &handed.position) {
                    // Its lease went while it ran: the new owner reads it again.
                    Err(Error::UnknownRecord { .. }) => Ok(()),
                    other => other,
                },
                None => Ok(()),
            },
            Err(source) => Err(Error::Handler {
                shard_id: handed.shard.to_string(),
                sequence_number: handed.position.sequence_text().to_owned(),
                source,
            }),
        }
    }
}

/// The lane of a partition key: the same key always gets the same lane.
fn lane_of(partition_key: &str, lanes: usize) -> usize {
    // SipHash with fixed keys: stable for the life of the process, which is
    // all the order per key needs.
    let mut hasher = std::hash::DefaultHasher::new();
    partition_key.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_gets_the_same_lane_and_keys_spread_over_every_lane() {
        let lanes = 8;
        let mut used = vec![0usize; lanes];
        for key in 0..1_000 {
            let key = format!("key-{key}");
            let lane = lane_of(&key, lanes);
            assert_eq!(lane, lane_of(&key, lanes));
            used[lane] += 1;
        }
        assert!(used.iter().all(|&n| n > 60), "uneven lanes: {used:?}");
    }
}
