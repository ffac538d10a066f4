//! The task that saves checkpoints: what the tracker holds as pending, per
//! shard, fenced by the shard's lease in a group.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::tracker::{Command, Progress};
use crate::config::Settings;
use crate::group::Membership;
use crate::retry::Backoff;
use crate::signal::{Fatal, Outbox};
use crate::telemetry::{Durable, StreamMetrics};
use crate::{Checkpoint, CheckpointError, CheckpointKey, CheckpointStore, Error};

/// A shard's end is durably checkpointed: its children may start.
#[derive(Debug)]
pub(crate) struct EndSaved(pub(crate) Arc<str>);

/// The task that saves checkpoints.
pub(crate) struct Writer {
    pub(crate) store: Arc<dyn CheckpointStore>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) stream_name: String,
    /// Stopped by a store error past its retries.
    pub(crate) fatal: Fatal,
    pub(crate) ended: Outbox<EndSaved>,
    /// With a lease store: every save is fenced by the shard's lease.
    pub(crate) membership: Option<Arc<Membership>>,
    /// Told of every checkpoint saved, for the consumer's lag snapshot.
    pub(crate) durable: Durable,
    pub(crate) metrics: StreamMetrics,
}

/// How a save ended, short of an error.
#[derive(Debug, PartialEq, Eq)]
enum Saved {
    Yes,
    /// The shard's lease is held by another worker now: nothing was written.
    /// With the epoch of the lease the save was made under, if one was held.
    Fenced(Option<u64>),
    /// The caller's own transaction wrote a later checkpoint: nothing to do.
    Superseded,
}

impl Writer {
    pub(crate) async fn run(mut self) -> Result<(), Error> {
        let result = crate::error::catch_panic("checkpoint writer", self.serve())
            .await
            .and_then(|r| r);
        if let Err(error) = &result {
            self.fatal.report("checkpoint writer", error.clone());
        }
        result
    }

    async fn serve(&mut self) -> Result<(), Error> {
        let mut tick = tokio::time::interval(self.settings.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.progress.flush_due.store(true, Ordering::Release);
                    self.progress.waker.wake();
                    self.save_pending().await?;
                }
                command = self.commands.recv() => match command {
                    Some(Command::Flush(reply)) => {
                        let result = self.save_pending().await;
                        if let Some(reply) = reply {
                            let _ = reply.send(result.clone());
                        }
                        result?;
                    }
                    Some(Command::Release { shard, to }) => {
                        self.save_pending().await?;
                        if let Some(membership) = &self.membership {
                            membership.release(&shard, Some(&to)).await;
                        }
                    }
                    Some(Command::Stop) | None => {
                        let result = self.save_pending().await;
                        // Let other workers take over at once, not after expiry.
                        if let Some(membership) = &self.membership {
                            membership.release_all().await;
                        }
                        return result;
                    }
                },
            }
        }
    }

    async fn save_pending(&self) -> Result<(), Error> {
        let (pending, counts) = self.progress.take_pending();
        if pending.is_empty() {
            return Ok(());
        }
        let results: Vec<_> = futures::stream::iter(pending)
            .map(|(shard, checkpoint)| async move {
                let result = self.save(&shard, &checkpoint).await;
                (shard, checkpoint, result)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut first_error = None;
        let mut unsaved = Vec::new();
        for (shard, checkpoint, result) in results {
            match result {
                Ok(Saved::Yes) if checkpoint == Checkpoint::ShardEnd => {
                    // Its end covers every record of it.
                    self.durable.covered(&shard, Some(u64::MAX));
                    if let Some(membership) = &self.membership {
                        membership.release(&shard, None).await;
                    }
                    self.ended.send(EndSaved(shard));
                }
                Ok(Saved::Yes) => self.durable.covered(&shard, counts.get(&shard).copied()),
                Ok(Saved::Superseded) => {}
                Ok(Saved::Fenced(epoch)) => {
                    tracing::warn!(%shard, %checkpoint, "checkpoint rejected: the shard's lease was taken over");
                    // A lease taken again since the save began is a new
                    // tenure: neither it nor what was processed under it is
                    // dropped for the old one's refusal.
                    let current = match (&self.membership, epoch) {
                        (Some(membership), Some(epoch)) => !membership.lose_at(&shard, epoch),
                        _ => false,
                    };
                    if !current {
                        self.progress.forget(&shard);
                    }
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                    let count = counts.get(&shard).copied();
                    unsaved.push((shard, checkpoint, count));
                }
            }
        }
        self.progress.restore_pending(unsaved);
        first_error.map_or(Ok(()), Err)
    }

    async fn save(&self, shard: &str, checkpoint: &Checkpoint) -> Result<Saved, Error> {
        let key = CheckpointKey::new(&self.settings.consumer_name, &self.stream_name, shard);
        let lease = match &self.membership {
            Some(membership) => match membership.lease(shard) {
                Some(lease) => Some(lease),
                None => return Ok(Saved::Fenced(None)),
            },
            None => None,
        };
        let mut backoff = Backoff::new(&self.settings);
        loop {
            let started = std::time::Instant::now();
            let result = match (&lease, &self.membership) {
                (Some(lease), Some(membership)) => membership.store.save_leased(lease, checkpoint).await,
                _ => self.store.save(&key, checkpoint).await,
            };
            match result {
                Ok(()) => {
                    tracing::debug!(shard, %checkpoint, "checkpoint saved");
                    self.metrics.saved(started.elapsed());
                    self.durable.set(shard, checkpoint);
                    return Ok(Saved::Yes);
                }
                Err(CheckpointError::LeaseLost { .. }) => return Ok(Saved::Fenced(lease.as_ref().map(|l| l.epoch))),
                Err(CheckpointError::Conflict { stored, .. }) if self.progress.written_elsewhere(shard, &stored) => {
                    return Ok(Saved::Superseded)
                }
                Err(error) if error.is_retryable() && backoff.attempts() < self.settings.checkpoint_retries => {
                    self.metrics.save_failed();
                    let delay = backoff.next_delay();
                    tracing::warn!(shard, error = %error, ?delay, "checkpoint save failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    self.metrics.save_failed();
                    return Err(Error::Checkpoint(error));
                }
            }
        }
    }
}
