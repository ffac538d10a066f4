//! The leases this process holds, shared by the coordinator task, the
//! checkpoint writer and the consumer; and what it tells the consumer about
//! them ([`GroupEvent`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Settings;
use crate::kinesis::ShardInfo;
use crate::lineage::parents_of;
use crate::signal::Outbox;
use crate::{Lease, LeaseStore};

/// What the group asks of the consumer.
#[derive(Debug)]
pub(crate) enum GroupEvent {
    /// This worker took (or was handed) the lease.
    Acquired(Lease),
    /// The shard's lease is gone: stop the shard now, drop what was fetched.
    Lost(Arc<str>),
    /// Another worker asked for the shard: stop it, save what was processed,
    /// then hand the lease to `to`.
    Release { shard: Arc<str>, to: String },
    /// This worker asked `from` to hand the shard over, to balance the group.
    Requested { shard: Arc<str>, from: Option<String> },
}

/// The leases this process holds, shared by the coordinator task, the
/// checkpoint writer and the consumer.
#[derive(Debug)]
pub(crate) struct Membership {
    pub(crate) store: Arc<dyn LeaseStore>,
    pub(crate) worker: String,
    pub(super) consumer_name: String,
    pub(super) stream_name: String,
    pub(super) lease_duration: Duration,
    pub(super) held: Mutex<Holdings>,
    /// Every shard this process has heard of, for creating their leases.
    pub(super) known: Mutex<HashMap<String, ShardInfo>>,
    /// Wakes the coordinator early: shards appeared or one finished.
    pub(crate) nudge: Notify,
    /// Asks for the shards to be listed again: the store has leases for
    /// shards this process has not heard of, or a shard waits for a parent
    /// no listing has shown yet.
    pub(crate) relist: Arc<Notify>,
    /// Parents named by known shards but missing from a whole listing: past
    /// retention, so they no longer hold their children back.
    pub(super) gone: Mutex<HashSet<String>>,
    /// Known shards missing from the last whole listings, and how many in a
    /// row: past two, the shard is past retention and forgotten.
    pub(super) absent: Mutex<HashMap<String, u32>>,
    /// Tells the consumer, between two records, that a Lost or Release
    /// message waits for it.
    pub(crate) alert: Arc<AtomicBool>,
    pub(super) events: Outbox<GroupEvent>,
}

/// The leases held, and what is remembered of those given up.
#[derive(Debug, Default)]
pub(super) struct Holdings {
    pub(super) leases: HashMap<Arc<str>, Held>,
    /// Per shard, the newest epoch this process held it under: a listing
    /// that still shows it as the owner at that epoch is stale (it released
    /// or lost the lease since), not a handoff to it.
    pub(super) last_epoch: HashMap<String, u64>,
    /// Shutting down: leases taken now are given back at once.
    pub(super) closing: bool,
}

#[derive(Debug)]
pub(super) struct Held {
    pub(super) lease: Lease,
    /// When the store last confirmed the lease.
    pub(super) renewed: Instant,
    /// Being handed to another worker: no longer counted, not renewed.
    pub(super) releasing: bool,
}

impl Membership {
    pub(crate) fn new(
        store: Arc<dyn LeaseStore>,
        settings: &Settings,
        stream_name: &str,
        events: Outbox<GroupEvent>,
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
            events,
        })
    }

    pub(super) fn held(&self) -> MutexGuard<'_, Holdings> {
        // Updates replace whole entries, so a poisoned map is still consistent.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn known(&self) -> MutexGuard<'_, HashMap<String, ShardInfo>> {
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
            self.tell(GroupEvent::Lost(shard));
        }
    }

    pub(super) fn tell(&self, event: GroupEvent) {
        self.events.send(event);
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
