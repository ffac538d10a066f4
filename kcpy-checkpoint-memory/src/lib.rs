//! An in-memory [`CheckpointStore`] and [`LeaseStore`] for kcpy: checkpoints
//! and leases last as long as the process (tests, one-off runs, or consumers
//! in one process sharing a stream's shards).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kcpy_core::{Checkpoint, CheckpointError, CheckpointKey, CheckpointStore, Lease, LeaseStore};

/// Checkpoints and leases in a map. Clones share the same map.
///
/// "Durable" here means visible to every later `load` in this process; nothing
/// survives a restart.
#[derive(Debug, Clone, Default)]
pub struct MemoryCheckpointStore {
    /// One entry per key: a lease, whose checkpoint is the key's checkpoint.
    entries: Arc<Mutex<HashMap<CheckpointKey, Lease>>>,
}

impl MemoryCheckpointStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every checkpoint held, e.g. to inspect in tests.
    pub fn snapshot(&self) -> HashMap<CheckpointKey, Checkpoint> {
        self.lock()
            .iter()
            .filter_map(|(key, lease)| lease.checkpoint.clone().map(|c| (key.clone(), c)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CheckpointKey, Lease>> {
        // Every update checks, then writes whole fields, so a poisoned map is
        // still consistent.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `change` on the stored lease if it has `held`'s owner and epoch.
    fn if_held<T>(
        &self,
        held: &Lease,
        change: impl FnOnce(&mut Lease) -> Result<T, CheckpointError>,
    ) -> Result<T, CheckpointError> {
        let mut entries = self.lock();
        match entries.get_mut(&held.key) {
            Some(stored) if stored.owner.is_some() && stored.owner == held.owner && stored.epoch == held.epoch => {
                change(stored)
            }
            _ => Err(CheckpointError::lease_lost(&held.key)),
        }
    }
}

fn advance(key: &CheckpointKey, stored: &mut Option<Checkpoint>, to: &Checkpoint) -> Result<(), CheckpointError> {
    if CheckpointError::check_forward(key, stored.as_ref(), to)? {
        *stored = Some(to.clone());
    }
    Ok(())
}

#[async_trait]
impl CheckpointStore for MemoryCheckpointStore {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        Ok(self.lock().get(key).and_then(|lease| lease.checkpoint.clone()))
    }

    async fn save(&self, key: &CheckpointKey, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let mut entries = self.lock();
        let entry = entries
            .entry(key.clone())
            .or_insert_with(|| Lease::new(key.clone(), Vec::new()));
        advance(key, &mut entry.checkpoint, checkpoint)
    }

    async fn reset(&self, key: &CheckpointKey, to: Option<&Checkpoint>) -> Result<(), CheckpointError> {
        let mut entries = self.lock();
        let entry = entries
            .entry(key.clone())
            .or_insert_with(|| Lease::new(key.clone(), Vec::new()));
        entry.checkpoint = to.cloned();
        // Ends the lease, if one is held: its holder is fenced out.
        entry.owner = None;
        entry.handoff_to = None;
        entry.epoch += 1;
        entry.heartbeat += 1;
        Ok(())
    }
}

#[async_trait]
impl LeaseStore for MemoryCheckpointStore {
    async fn list_leases(&self, consumer_name: &str, stream_name: &str) -> Result<Vec<Lease>, CheckpointError> {
        let mut leases: Vec<Lease> = self
            .lock()
            .values()
            .filter(|lease| lease.key.consumer_name == consumer_name && lease.key.stream_name == stream_name)
            .cloned()
            .collect();
        leases.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(leases)
    }

    async fn create_lease(&self, key: &CheckpointKey, parents: &[String]) -> Result<bool, CheckpointError> {
        let mut entries = self.lock();
        if entries.contains_key(key) {
            return Ok(false);
        }
        entries.insert(key.clone(), Lease::new(key.clone(), parents.to_vec()));
        Ok(true)
    }

    async fn take_lease(&self, observed: &Lease, owner: &str) -> Result<Lease, CheckpointError> {
        let mut entries = self.lock();
        match entries.get_mut(&observed.key) {
            Some(stored) if stored.epoch == observed.epoch && stored.heartbeat == observed.heartbeat => {
                stored.owner = Some(owner.to_owned());
                stored.epoch += 1;
                stored.heartbeat += 1;
                stored.handoff_to = None;
                Ok(stored.clone())
            }
            _ => Err(CheckpointError::lease_lost(&observed.key)),
        }
    }

    async fn renew_lease(&self, held: &Lease) -> Result<Lease, CheckpointError> {
        self.if_held(held, |stored| {
            stored.heartbeat += 1;
            Ok(stored.clone())
        })
    }

    async fn request_handoff(&self, observed: &Lease, to: &str) -> Result<(), CheckpointError> {
        self.if_held(observed, |stored| {
            stored.handoff_to = Some(to.to_owned());
            Ok(())
        })
    }

    async fn release_lease(&self, held: &Lease, to: Option<&str>) -> Result<(), CheckpointError> {
        self.if_held(held, |stored| {
            stored.owner = to.map(str::to_owned);
            stored.epoch += 1;
            stored.heartbeat += 1;
            stored.handoff_to = None;
            Ok(())
        })
    }

    async fn save_leased(&self, held: &Lease, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        self.if_held(held, |stored| advance(&held.key, &mut stored.checkpoint, checkpoint))
    }

    async fn delete_lease(&self, observed: &Lease) -> Result<(), CheckpointError> {
        let mut entries = self.lock();
        match entries.get(&observed.key) {
            Some(stored)
                if stored.owner.is_none()
                    && stored.epoch == observed.epoch
                    && stored.checkpoint == Some(Checkpoint::ShardEnd) =>
            {
                entries.remove(&observed.key);
                Ok(())
            }
            _ => Err(CheckpointError::lease_lost(&observed.key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_meets_the_checkpoint_store_contract() {
        kcpy_core::test_util::checkpoint_store_conformance(&MemoryCheckpointStore::new()).await;
        kcpy_core::test_util::reset_conformance(&MemoryCheckpointStore::new()).await;
    }

    #[tokio::test]
    async fn memory_store_meets_the_lease_store_contract() {
        kcpy_core::test_util::lease_store_conformance(&MemoryCheckpointStore::new()).await;
    }

    #[tokio::test]
    async fn clones_share_their_checkpoints() {
        let store = MemoryCheckpointStore::new();
        let key = CheckpointKey::new("app", "stream", "shardId-000000000000");
        let seq = Checkpoint::Sequence("42".parse().expect("valid"));
        store.clone().save(&key, &seq).await.expect("save");
        assert_eq!(store.load(&key).await.expect("load"), Some(seq));
        assert_eq!(store.snapshot().len(), 1);
    }
}
