//! Sharing shards with other workers through a [`LeaseStore`]: which leases
//! this process holds, the task that renews, takes and balances them, and the
//! plan it follows.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::consumer::Control;
use crate::kinesis::ShardInfo;
use crate::lineage::parents_of;
use crate::{Checkpoint, CheckpointError, CheckpointKey, Lease, LeaseStore};

/// The leases this process holds, shared by the coordinator task, the
/// checkpoint writer and the consumer.
#[derive(Debug)]
pub(crate) struct Membership {
    pub(crate) store: Arc<dyn LeaseStore>,
    pub(crate) worker: String,
    consumer_name: String,
    stream_name: String,
    lease_duration: Duration,
    held: Mutex<Holdings>,
    /// Every shard this process has heard of, for creating their leases.
    known: Mutex<HashMap<String, ShardInfo>>,
    /// Wakes the coordinator early: shards appeared or one finished.
    pub(crate) nudge: Notify,
    /// Asks for the shards to be listed again: the store has leases for
    /// shards this process has not heard of, or a shard waits for a parent
    /// no listing has shown yet.
    pub(crate) relist: Arc<Notify>,
    /// Parents named by known shards but missing from a whole listing: past
    /// retention, so they no longer hold their children back.
    gone: Mutex<HashSet<String>>,
    /// Known shards missing from the last whole listings, and how many in a
    /// row: past two, the shard is past retention and forgotten.
    absent: Mutex<HashMap<String, u32>>,
    /// Tells the consumer, between two records, that a Lost or Release
    /// message waits for it.
    pub(crate) alert: Arc<AtomicBool>,
    control: mpsc::UnboundedSender<Control>,
}

/// The leases held, and what is remembered of those given up.
#[derive(Debug, Default)]
struct Holdings {
    leases: HashMap<Arc<str>, Held>,
    /// Per shard, the newest epoch this process held it under: a listing
    /// that still shows it as the owner at that epoch is stale (it released
    /// or lost the lease since), not a handoff to it.
    last_epoch: HashMap<String, u64>,
    /// Shutting down: leases taken now are given back at once.
    closing: bool,
}

#[derive(Debug)]
struct Held {
    lease: Lease,
    /// When the store last confirmed the lease.
    renewed: Instant,
    /// Being handed to another worker: no longer counted, not renewed.
    releasing: bool,
}

impl Membership {
    pub(crate) fn new(
        store: Arc<dyn LeaseStore>,
        settings: &Settings,
        stream_name: &str,
        control: mpsc::UnboundedSender<Control>,
        relist: Arc<Notify>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            worker: settings.worker_id.clone(),
            consumer_name: settings.consumer_name.clone(),
            stream_name: stream_name.to_owned(),
            lease_duration: settings.lease_duration,
            held: Mutex::new(Holdings::default()),
            known: Mutex::new(HashMap::new()),
            nudge: Notify::new(),
            relist,
            gone: Mutex::new(HashSet::new()),
            absent: Mutex::new(HashMap::new()),
            alert: Arc::new(AtomicBool::new(false)),
            control,
        })
    }

    fn held(&self) -> MutexGuard<'_, Holdings> {
        // Updates replace whole entries, so a poisoned map is still consistent.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn known(&self) -> MutexGuard<'_, HashMap<String, ShardInfo>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shards listed or announced; their leases are created on the next round.
    pub(crate) fn learn(&self, shards: &[ShardInfo]) {
        let mut known = self.known();
        let mut added = false;
        for shard in shards {
            if !known.contains_key(&shard.shard_id) {
                known.insert(shard.shard_id.clone(), shard.clone());
                added = true;
            }
        }
        drop(known);
        if added {
            self.nudge.notify_one();
        }
    }

    /// Every shard of the stream, as a whole listing shows it: parents it
    /// lacks are gone. Known shards it lacks twice in a row (once could be a
    /// child announced after the listing was made) are past retention and
    /// forgotten, and so are gone parents no known shard names any more.
    pub(crate) fn listed(&self, shards: &[ShardInfo]) {
        self.learn(shards);
        let listed: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
        let mut known = self.known();
        {
            let mut absent = self.absent.lock().unwrap_or_else(|p| p.into_inner());
            absent.retain(|shard, _| !listed.contains(shard.as_str()));
            for shard in known.keys().filter(|shard| !listed.contains(shard.as_str())) {
                *absent.entry(shard.clone()).or_default() += 1;
            }
            absent.retain(|shard, misses| {
                if *misses < 2 {
                    return true;
                }
                known.remove(shard);
                false
            });
        }
        let named: HashSet<String> = known.values().flat_map(parents_of).collect();
        let mut gone = self.gone.lock().unwrap_or_else(|p| p.into_inner());
        gone.extend(
            named
                .iter()
                .filter(|parent| !listed.contains(parent.as_str()) && !known.contains_key(*parent))
                .cloned(),
        );
        gone.retain(|parent| named.contains(parent));
    }

    /// The lease held for `shard`, to fence a checkpoint write with.
    pub(crate) fn lease(&self, shard: &str) -> Option<Lease> {
        self.held().leases.get(shard).map(|held| held.lease.clone())
    }

    /// Whether the lease for `shard` is held and was confirmed within the
    /// lease duration: past that, another worker may have taken it.
    pub(crate) fn is_valid(&self, shard: &str) -> bool {
        self.held()
            .leases
            .get(shard)
            .is_some_and(|held| held.renewed.elapsed() < self.lease_duration)
    }

    /// Until when records of `shard` may be handed out, as the lease was last
    /// confirmed; `None` if they may not be now.
    pub(crate) fn deliverable_until(&self, shard: &str) -> Option<Instant> {
        match self.held().leases.get(shard) {
            Some(held) if !held.releasing => Some(held.renewed + self.lease_duration),
            _ => None,
        }
    }

    /// Whether records of `shard` may be handed out now. A lease unconfirmed
    /// for the lease duration counts as lost from here on: another worker
    /// may hold it already.
    pub(crate) fn may_deliver(&self, shard: &str) -> bool {
        let held = self.held();
        match held.leases.get(shard) {
            Some(held) if held.releasing => false,
            Some(held) if held.renewed.elapsed() < self.lease_duration => true,
            Some(_) => {
                drop(held);
                self.lose(shard);
                false
            }
            None => false,
        }
    }

    /// Loses `shard`'s lease if it is still held at `epoch`; whether it was
    /// (a lease taken again since then is not).
    pub(crate) fn lose_at(&self, shard: &str, epoch: u64) -> bool {
        let held = self.held().leases.get(shard).map(|held| held.lease.epoch);
        match held {
            Some(held) if held == epoch => {
                self.lose(shard);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Forgets `shard`'s lease and tells the consumer to stop it at once.
    pub(crate) fn lose(&self, shard: &str) {
        let removed = self.held().leases.remove_entry(shard);
        if let Some((shard, _)) = removed {
            tracing::warn!(%shard, "lease lost; stopping the shard");
            self.tell(Control::Lost(shard));
        }
    }

    fn tell(&self, control: Control) {
        let _ = self.control.send(control);
        self.alert.store(true, Ordering::Release);
    }

    /// Gives up `shard`'s lease: to `to` (a handoff) or free for anyone.
    pub(crate) async fn release(&self, shard: &str, to: Option<&str>) {
        let removed = self.held().leases.remove(shard);
        let Some(held) = removed else { return };
        match self.store.release_lease(&held.lease, to).await {
            Ok(()) => tracing::info!(shard, to, "lease released"),
            Err(error) => tracing::warn!(shard, error = %error, "releasing a lease failed; it will expire"),
        }
        self.nudge.notify_one();
    }

    /// Releases every lease held, so other workers take over at once; leases
    /// taken from now on are given back at once.
    pub(crate) async fn release_all(&self) {
        let shards: Vec<Arc<str>> = {
            let mut held = self.held();
            held.closing = true;
            held.leases.keys().cloned().collect()
        };
        futures::stream::iter(shards)
            .for_each_concurrent(16, |shard| async move { self.release(&shard, None).await })
            .await;
    }
}

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
    seen: HashMap<String, Seen>,
    /// The handoff this worker asked for, and when.
    requested: Option<(String, Instant)>,
    /// Shards the store had leases for before this process listed them.
    asked: HashSet<String>,
}

impl Coordinator {
    pub(crate) fn new(membership: Arc<Membership>, settings: Arc<Settings>, cancel: CancellationToken) -> Self {
        Self {
            membership,
            settings,
            cancel,
            seen: HashMap::new(),
            requested: None,
            asked: HashSet::new(),
        }
    }

    pub(crate) async fn run(self) {
        let membership = Arc::clone(&self.membership);
        if let Err(error) = crate::error::catch_panic("lease coordinator", self.serve()).await {
            membership.tell(Control::Fatal(error));
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
                        membership.tell(Control::Release {
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

        let plan = view.plan(
            |lease| {
                self.seen
                    .get(&lease.key.shard_id)
                    .is_some_and(|seen| now.duration_since(seen.since) >= self.settings.lease_duration)
            },
            self.requested.is_some(),
        );
        for lease in plan.take {
            let sent = Instant::now();
            match store.take_lease(lease, me).await {
                Ok(taken) => {
                    tracing::info!(shard = %taken.key.shard_id, from = ?lease.owner, "lease taken");
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
                }
                Err(CheckpointError::LeaseLost { .. }) => {}
                Err(error) => return Err(error),
            }
        }
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
            membership.tell(Control::Acquired(lease));
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

/// Per known shard, the known shards it is a parent of.
fn children_of(known: &HashMap<String, ShardInfo>) -> HashMap<&str, Vec<&str>> {
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for shard in known.values() {
        for parent in [&shard.parent_shard_id, &shard.adjacent_parent_shard_id]
            .into_iter()
            .flatten()
        {
            children
                .entry(parent.as_str())
                .or_default()
                .push(shard.shard_id.as_str());
        }
    }
    children
}

/// Whether a child, grandchild, … of `shard` has a lease.
fn has_leased_descendant(shard: &str, children: &HashMap<&str, Vec<&str>>, leased: &HashSet<&str>) -> bool {
    let mut todo: Vec<&str> = children.get(shard).cloned().unwrap_or_default();
    let mut visited: HashSet<&str> = HashSet::new();
    while let Some(next) = todo.pop() {
        if !visited.insert(next) {
            continue;
        }
        if leased.contains(next) {
            return true;
        }
        todo.extend(children.get(next).into_iter().flatten());
    }
    false
}

/// The leases of a group as one worker sees them in one round.
struct View<'a> {
    by_shard: HashMap<&'a str, &'a Lease>,
    children: HashMap<&'a str, Vec<&'a str>>,
    known: &'a HashMap<String, ShardInfo>,
    gone: &'a HashSet<String>,
    me: &'a str,
}

/// What to do this round.
#[derive(Debug, Default)]
struct Plan<'a> {
    take: Vec<&'a Lease>,
    steal: Option<&'a Lease>,
}

impl<'a> View<'a> {
    fn new(leases: &'a [Lease], known: &'a HashMap<String, ShardInfo>, gone: &'a HashSet<String>, me: &'a str) -> Self {
        Self {
            by_shard: leases.iter().map(|l| (l.key.shard_id.as_str(), l)).collect(),
            children: children_of(known),
            known,
            gone,
            me,
        }
    }

    /// Whether `shard` names a parent that is neither known nor gone.
    fn awaits_unknown_parent(&self, shard: &ShardInfo) -> bool {
        parents_of(shard)
            .iter()
            .any(|parent| !self.known.contains_key(parent) && !self.gone.contains(parent))
    }

    fn finished(&self, lease: &Lease) -> bool {
        lease.checkpoint == Some(Checkpoint::ShardEnd)
    }

    /// A shard this worker has listed, not finished, whose parents are all
    /// finished: parents are read first. A parent missing from a whole
    /// listing is past retention: never read, and no longer holding its
    /// children back; a parent not listed yet holds them back until it is.
    fn eligible(&self, lease: &Lease) -> bool {
        let Some(info) = self.known.get(&lease.key.shard_id) else {
            return false;
        };
        if self.finished(lease) {
            return false;
        }
        // A checkpoint is written only by a holder, and a lease is held only
        // once its parents were finished: their leases may be deleted since.
        if lease.checkpoint.is_some() {
            return true;
        }
        parents_of(info).iter().all(|parent| {
            if self.known.contains_key(parent) {
                self.by_shard.get(parent.as_str()).is_some_and(|p| self.finished(p))
            } else {
                self.gone.contains(parent)
            }
        })
    }

    /// Whether the lease of a finished, free shard may go: every child has
    /// a checkpoint of its own (so none needs it to start), or the shard is
    /// past retention.
    fn deletable(&self, lease: &Lease) -> bool {
        if !self.finished(lease) || lease.owner.is_some() {
            return false;
        }
        let shard = lease.key.shard_id.as_str();
        if self.gone.contains(shard) {
            return true;
        }
        let children = self.children.get(shard).map(Vec::as_slice).unwrap_or_default();
        !children.is_empty()
            && children
                .iter()
                .all(|child| self.by_shard.get(child).is_some_and(|lease| lease.checkpoint.is_some()))
    }

    /// Takes free and expired eligible leases up to this worker's fair share;
    /// below it and with none free, asks the busiest worker for one lease if
    /// it holds at least two more than this one (hysteresis: shares settle
    /// within one of even and then stay put).
    fn plan(&self, expired: impl Fn(&Lease) -> bool, asked: bool) -> Plan<'a> {
        let me = self.me;
        let eligible: Vec<&'a Lease> = self.by_shard.values().copied().filter(|l| self.eligible(l)).collect();
        let live = |lease: &Lease| lease.owner.is_some() && !expired(lease);
        let mut counts: HashMap<&str, usize> = HashMap::from([(me, 0)]);
        for lease in eligible.iter().filter(|l| live(l)) {
            if let Some(owner) = lease.owner.as_deref() {
                *counts.entry(owner).or_default() += 1;
            }
        }
        let mine = counts[me];
        let target = eligible.len().div_ceil(counts.len());
        let mut plan = Plan::default();
        if mine >= target {
            return plan;
        }
        let mut free: Vec<&'a Lease> = eligible.iter().copied().filter(|l| !live(l)).collect();
        fastrand::shuffle(&mut free);
        // Never-owned and released leases before expired ones.
        free.sort_by_key(|l| l.owner.is_some());
        plan.take = free.into_iter().take(target - mine).collect();
        if !plan.take.is_empty() || asked {
            return plan;
        }
        let busiest = counts
            .iter()
            .filter(|(owner, _)| **owner != me)
            .max_by_key(|(owner, count)| (**count, std::cmp::Reverse(**owner)));
        if let Some((&owner, &count)) = busiest {
            if count >= mine + 2 {
                let mut theirs: Vec<&'a Lease> = eligible
                    .iter()
                    .copied()
                    .filter(|l| l.owner.as_deref() == Some(owner) && l.handoff_to.is_none() && live(l))
                    .collect();
                theirs.sort_by(|a, b| a.key.shard_id.cmp(&b.key.shard_id));
                plan.steal = theirs.pop();
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests;
