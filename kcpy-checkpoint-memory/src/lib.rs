//! An in-memory [`CheckpointStore`] for kcpy: checkpoints last as long as the
//! process (tests, one-off runs, or a store shared by consumers in one process).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kcpy_core::{Checkpoint, CheckpointError, CheckpointKey, CheckpointStore};

/// Checkpoints in a map. Clones share the same map.
///
/// "Durable" here means visible to every later `load` in this process; nothing
/// survives a restart.
#[derive(Debug, Clone, Default)]
pub struct MemoryCheckpointStore {
    checkpoints: Arc<Mutex<HashMap<CheckpointKey, Checkpoint>>>,
}

impl MemoryCheckpointStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every checkpoint held, e.g. to inspect in tests.
    pub fn snapshot(&self) -> HashMap<CheckpointKey, Checkpoint> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CheckpointKey, Checkpoint>> {
        // Every update is a single insert, so a poisoned map is still consistent.
        self.checkpoints.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl CheckpointStore for MemoryCheckpointStore {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        Ok(self.lock().get(key).cloned())
    }

    async fn save(&self, key: &CheckpointKey, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let mut checkpoints = self.lock();
        match checkpoints.get_mut(key) {
            Some(stored) if *stored > *checkpoint => {
                Err(CheckpointError::conflict(key, stored.clone(), checkpoint.clone()))
            }
            Some(stored) => {
                stored.clone_from(checkpoint);
                Ok(())
            }
            None => {
                checkpoints.insert(key.clone(), checkpoint.clone());
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_meets_the_checkpoint_store_contract() {
        kcpy_core::test_util::checkpoint_store_conformance(&MemoryCheckpointStore::new()).await;
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
