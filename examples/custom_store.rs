//! Keep checkpoints anywhere by implementing `CheckpointStore`. This one
//! writes a JSON file per key with write-to-temp-then-rename, so a save that
//! returned is durable and a crash never leaves a torn file.
//!
//! ```text
//! KCPY_STREAM=my-stream cargo run --example custom_store
//! ```

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use kcpy::async_trait;
use kcpy::{Checkpoint, CheckpointError, CheckpointKey, CheckpointStore, Consumer};
use tokio::sync::Mutex;

/// One file per (consumer, stream, shard) under a directory.
#[derive(Debug)]
struct FileStore {
    dir: PathBuf,
    // Serialises read-compare-write so a checkpoint never moves backwards.
    write: Mutex<()>,
}

impl FileStore {
    fn path(&self, key: &CheckpointKey) -> PathBuf {
        let name = format!("{}__{}__{}", key.consumer_name, key.stream_name, key.shard_id);
        self.dir.join(name.replace(['/', '\\'], "_"))
    }
}

fn unavailable(error: std::io::Error) -> CheckpointError {
    CheckpointError::Unavailable {
        source: Arc::new(error),
    }
}

#[async_trait]
impl CheckpointStore for FileStore {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        match tokio::fs::read_to_string(self.path(key)).await {
            Ok(text) => CheckpointError::parse_stored(key, text.trim()).map(Some),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn save(&self, key: &CheckpointKey, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let _guard = self.write.lock().await;
        if let Some(stored) = self.load(key).await? {
            if stored > *checkpoint {
                return Err(CheckpointError::conflict(key, stored, checkpoint.clone()));
            }
        }
        let path = self.path(key);
        let temp = path.with_extension("tmp");
        let file = async {
            tokio::fs::write(&temp, checkpoint.as_str()).await?;
            tokio::fs::File::open(&temp).await?.sync_all().await?;
            tokio::fs::rename(&temp, &path).await?;
            tokio::fs::File::open(&self.dir).await?.sync_all().await
        };
        file.await.map_err(unavailable)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from("custom-store-checkpoints");
    tokio::fs::create_dir_all(&dir).await?;
    let store = FileStore {
        dir,
        write: Mutex::new(()),
    };

    let client = common::kinesis_client().await;
    let mut consumer = Consumer::builder(client, common::stream_name()?)
        .consumer_name("custom-store")
        .checkpoint_store(store)
        .build()
        .await?;
    while let Some(record) = consumer.next().await {
        println!("{} {}", record.shard_id, String::from_utf8_lossy(&record.data));
    }
    consumer.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // A third-party store checks itself against the same contract the bundled
    // backends meet.
    #[tokio::test]
    async fn the_file_store_meets_the_checkpoint_store_contract() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FileStore {
            dir: dir.path().to_owned(),
            write: Mutex::new(()),
        };
        kcpy::test_util::checkpoint_store_conformance(&store).await;
    }
}
