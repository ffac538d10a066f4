//! The task that keeps this process's leases: renews them, creates leases
//! for new shards, takes free and expired ones, and asks busier workers to
//! hand some over, following the [`plan`](super::plan).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::membership::Held;
use super::membership::{GroupEvent, Membership};
use super::plan::{children_of, has_leased_descendant, View};
use super::tally::{elsewhere, Tally};
use crate::config::Settings;
use crate::kinesis::ShardInfo;
use crate::lineage::parents_of;
use crate::signal::Fatal;
use crate::telemetry::StreamMetrics;
use crate::{CheckpointError, CheckpointKey, Lease};

/// What one worker saw of a lease, and since when it has not changed.
#[derive(Debug)]
struct Seen {
    owner: Option<String>,
    epoch: u64,
    heartbeat: u64,
    since: Instant,
}

/// The task that renews held leases, creates leases for new shards, takes
/// free and expired ones and asks busier workers to hand some over.
pub(crate) struct Coordinator {
    pub(crate) membership: Arc<Membership>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) cancel: CancellationToken,
    fatal: Fatal,
    seen: HashMap<String, Seen>,
    /// The handoff this worker asked for, and when.
    requested: Option<(String, Instant)>,
    /// Shards the store had leases for before this process listed them.
    asked: HashSet<String>,
    metrics: StreamMetrics,
    /// Shared with the coordinators of the consumer's other streams.
    tally: Arc<Tally>,
}

impl Coordinator {
    pub(crate) fn new(membership: Arc<Membership>, settings: Arc<Settings>, fatal: Fatal, tally: Arc<Tally>) -> Self {
        let metrics = StreamMetrics::new(&membership.stream_name);
        Self {
            membership,
            settings,
            cancel: fatal.token().clone(),
            fatal,
            seen: HashMap::new(),
            requested: None,
            asked: HashSet::new(),
            metrics,
            tally,
        }
    }

    pub(crate) async fn run(self) {
        let fatal = self.fatal.clone();
        if let Err(error) = crate::error::catch_panic("lease coordinator", self.serve()).await {
            fatal.report("lease coordinator", error);
        }
    }

    async fn serve(mut self) {
        let worker = self.membership.worker.clone();
        tracing::info!(%worker, "joining the consumer group");
        let cancel = self.cancel.clone();
        let membership = Arc::clone(&self.membership);
        let limit = self.settings.lease_duration;
        loop {
            // A round is not cut short by shutdown: a lease it takes is then
            // recorded, and given back by the shutdown's release.
            tokio::select! {
                biased;
                () = watchdog(&membership) => {}
                result = tokio::time::timeout(limit, self.round()) => {
                    if result.is_err() {
                        tracing::warn!(?limit, "lease round timed out; trying again");
                    }
                }
            }
            if cancel.is_cancelled() {
                return;
            }
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return,
                () = watchdog(&membership) => {}
                _ = tokio::time::sleep(self.settings.lease_renew_interval) => {}
                _ = self.membership.nudge.notified() => {}
            }
        }
    }

    async fn round(&mut self) {
        self.renew().await;
        if let Err(error) = self.balance().await {
            tracing::warn!(error = %error, "lease round failed; trying again");
        }
    }

    /// Renews every held lease (also those being handed over, so a slow
    /// handoff keeps them); a lease that cannot be confirmed within the lease
    /// duration counts as lost.
    async fn renew(&self) {
        let held: Vec<Lease> = self
            .membership
            .held()
            .leases
            .values()
            .map(|held| held.lease.clone())
            .collect();
        let store = &self.membership.store;
        let results: Vec<(Lease, Instant, Result<Lease, CheckpointError>)> = futures::stream::iter(held)
            .map(|lease| async move {
                // The lease is good for the lease duration from when the
                // renewal was sent, not from when its answer came.
                let sent = Instant::now();
                let result = store.renew_lease(&lease).await;
                (lease, sent, result)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (lease, sent, result) in results {
            let shard = lease.key.shard_id.as_str();
            match result {
                Ok(renewed) => {
                    if let Some(held) = self.membership.held().leases.get_mut(shard) {
                        if held.lease.epoch == renewed.epoch {
                            held.lease = renewed;
                            held.renewed = sent;
                        }
                    }
                }
                Err(CheckpointError::LeaseLost { .. }) => self.membership.lose(shard),
                Err(error) => {
                    tracing::warn!(shard, error = %error, "renewing a lease failed");
                    if !self.membership.is_valid(shard) {
                        self.membership.lose(shard);
                    }
                }
            }
        }
    }

    async fn balance(&mut self) -> Result<(), CheckpointError> {
        let tally = Arc::clone(&self.tally);
        // One stream's round at a time: each plans with the others' counts
        // as they stand after their rounds.
        let mut streams = tally.turn().await;
        let membership = Arc::clone(&self.membership);
        let store = &membership.store;
        let me = membership.worker.as_str();
        let known: HashMap<String, ShardInfo> = membership.known().clone();
        let mut listed_at = Instant::now();
        let mut leases = store
            .list_leases(&membership.consumer_name, &membership.stream_name)
            .await?;
        if self.create_missing(&known, &leases).await? {
            listed_at = Instant::now();
            leases = store
                .list_leases(&membership.consumer_name, &membership.stream_name)
                .await?;
        }
        let now = Instant::now();
        // Leases for shards this process has not listed: new children another
        // worker learned of first (or shards past retention). Ask once each.
        let mut unheard = false;
        for lease in leases.iter().filter(|l| !known.contains_key(&l.key.shard_id)) {
            unheard |= self.asked.insert(lease.key.shard_id.clone());
        }
        if unheard {
            membership.relist.notify_one();
        }
        let listed: HashSet<&str> = leases.iter().map(|l| l.key.shard_id.as_str()).collect();
        self.asked
            .retain(|shard| listed.contains(shard.as_str()) && !known.contains_key(shard));
        self.seen.retain(|shard, _| listed.contains(shard.as_str()));
        membership
            .held()
            .last_epoch
            .retain(|shard, _| listed.contains(shard.as_str()));
        for lease in &leases {
            let seen = self.seen.entry(lease.key.shard_id.clone()).or_insert_with(|| Seen {
                owner: None,
                epoch: u64::MAX,
                heartbeat: u64::MAX,
                since: now,
            });
            if (seen.owner.as_ref(), seen.epoch, seen.heartbeat) != (lease.owner.as_ref(), lease.epoch, lease.heartbeat)
            {
                *seen = Seen {
                    owner: lease.owner.clone(),
                    epoch: lease.epoch,
                    heartbeat: lease.heartbeat,
                    since: now,
                };
            }
        }
        let gone = membership.gone.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let view = View::new(&leases, &known, &gone, me);
        if known.values().any(|shard| view.awaits_unknown_parent(shard)) {
            membership.relist.notify_one();
        }

        // What the store says about leases this worker holds or was given.
        for lease in &leases {
            let shard = lease.key.shard_id.as_str();
            let held = membership
                .held()
                .leases
                .get(shard)
                .map(|h| (h.lease.epoch, h.releasing));
            match held {
                Some((epoch, _)) if !lease.is_owned_by(me) || lease.epoch != epoch => membership.lose(shard),
                Some((_, false)) => {
                    if let Some(to) = lease.handoff_to.as_deref().filter(|to| *to != me) {
                        if let Some(held) = membership.held().leases.get_mut(shard) {
                            held.releasing = true;
                        }
                        tracing::info!(shard, to, "handing a lease over");
                        membership.tell(GroupEvent::Release {
                            shard: Arc::from(shard),
                            to: to.to_owned(),
                        });
                    }
                }
                Some((_, true)) => {}
                None if lease.is_owned_by(me) => {
                    let stale = membership
                        .held()
                        .last_epoch
                        .get(shard)
                        .is_some_and(|&epoch| lease.epoch <= epoch);
                    if stale {
                        // Given up since: the listing predates the release.
                    } else if view.finished(lease) {
                        let _ = store.release_lease(lease, None).await;
                    } else if view.eligible(lease) && self.requested.as_ref().is_some_and(|(asked, _)| asked == shard) {
                        // Handed over to this worker, as it asked; the
                        // handoff itself was a change of owner, no older
                        // than the listing.
                        self.hold(lease.clone(), listed_at).await;
                    }
                    // Else it was held under this worker's name by another
                    // process: a predecessor, or a live process given the
                    // same worker id. It is taken like any other lease once
                    // it expires, never adopted while it is renewed.
                }
                None => {}
            }
        }
        if self.requested.as_ref().is_some_and(|(shard, at)| {
            membership.held().leases.contains_key(shard.as_str()) || at.elapsed() >= self.settings.lease_duration
        }) {
            self.requested = None;
        }

        let expired = |lease: &Lease| {
            self.seen
                .get(&lease.key.shard_id)
                .is_some_and(|seen| now.duration_since(seen.since) >= self.settings.lease_duration)
        };
        let (workers, unclaimed) = view.census(expired);
        self.metrics.group(workers, unclaimed);
        let others = elsewhere(&streams, &membership.stream_name);
        let plan = view.plan_with(expired, self.requested.is_some(), &others);
        let mut counted = view.tally(expired, false);
        for lease in plan.take {
            let sent = Instant::now();
            match store.take_lease(lease, me).await {
                Ok(taken) => {
                    tracing::info!(shard = %taken.key.shard_id, from = ?lease.owner, "lease taken");
                    if let Some(owner) = lease.owner.as_deref().filter(|_| !expired(lease)) {
                        counted.held.entry(owner.to_owned()).and_modify(|count| *count -= 1);
                    }
                    *counted.held.entry(me.to_owned()).or_default() += 1;
                    self.hold(taken, sent).await;
                }
                Err(CheckpointError::LeaseLost { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        if let Some(lease) = plan.steal {
            match store.request_handoff(lease, me).await {
                Ok(()) => {
                    tracing::info!(shard = %lease.key.shard_id, from = ?lease.owner, "asked for a lease");
                    self.requested = Some((lease.key.shard_id.clone(), Instant::now()));
                    membership.tell(GroupEvent::Requested {
                        shard: Arc::from(lease.key.shard_id.as_str()),
                        from: lease.owner.clone(),
                    });
                }
                Err(CheckpointError::LeaseLost { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        counted.asking = self.requested.is_some();
        streams.insert(membership.stream_name.clone(), counted);
        drop(streams);
        self.metrics.leases(membership.held().leases.len());
        if !self.settings.keep_finished_leases {
            for lease in leases.iter().filter(|lease| view.deletable(lease)) {
                match store.delete_lease(lease).await {
                    Ok(()) => tracing::info!(shard = %lease.key.shard_id, "deleted the lease of a finished shard"),
                    Err(CheckpointError::LeaseLost { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    }

    /// Creates the leases of known shards that have none, except shards with
    /// a descendant that has one: those were finished and their lease
    /// deleted (a new lease would read them again). Whether any was created.
    async fn create_missing(
        &self,
        known: &HashMap<String, ShardInfo>,
        leases: &[Lease],
    ) -> Result<bool, CheckpointError> {
        let membership = &self.membership;
        let leased: HashSet<&str> = leases.iter().map(|l| l.key.shard_id.as_str()).collect();
        let children = children_of(known);
        let mut missing: Vec<&ShardInfo> = known
            .values()
            .filter(|s| {
                !leased.contains(s.shard_id.as_str()) && !has_leased_descendant(&s.shard_id, &children, &leased)
            })
            .collect();
        missing.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        for shard in &missing {
            let key = CheckpointKey::new(&membership.consumer_name, &membership.stream_name, &shard.shard_id);
            membership.store.create_lease(&key, &parents_of(shard)).await?;
        }
        Ok(!missing.is_empty())
    }

    /// Records a lease the store confirmed at `confirmed` and tells the
    /// consumer; while shutting down, gives it back instead.
    async fn hold(&self, lease: Lease, confirmed: Instant) {
        let membership = &self.membership;
        let closing = {
            let mut held = membership.held();
            if !held.closing {
                held.last_epoch.insert(lease.key.shard_id.clone(), lease.epoch);
                held.leases.insert(
                    Arc::from(lease.key.shard_id.as_str()),
                    Held {
                        lease: lease.clone(),
                        renewed: confirmed,
                        releasing: false,
                    },
                );
            }
            held.closing
        };
        if closing {
            let _ = membership.store.release_lease(&lease, None).await;
        } else {
            membership.tell(GroupEvent::Acquired(lease));
        }
    }
}

/// Counts a lease lost once it went unconfirmed for the lease duration, even
/// while a round waits on a slow store: the consumer then stops the shard
/// before handing out another record. Never returns.
async fn watchdog(membership: &Membership) {
    loop {
        let deadline = membership
            .held()
            .leases
            .values()
            .map(|held| held.renewed + membership.lease_duration)
            .min();
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            // Nothing held: look again when the next round may have taken some.
            None => tokio::time::sleep(membership.lease_duration / 4).await,
        }
        let expired: Vec<Arc<str>> = membership
            .held()
            .leases
            .iter()
            .filter(|(_, held)| held.renewed.elapsed() >= membership.lease_duration)
            .map(|(shard, _)| Arc::clone(shard))
            .collect();
        for shard in expired {
            membership.lose(&shard);
        }
    }
}
