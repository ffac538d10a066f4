//! What `build` reads and writes in the checkpoint store before reading
//! starts: every shard's checkpoint, and the starts a later run could not
//! find again.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};

use crate::config::Settings;
use crate::kinesis::{ShardInfo, StreamRef};
use crate::lineage::Start;
use crate::retry::Backoff;
use crate::{Checkpoint, CheckpointKey, CheckpointStore, Error, StartTime};

/// The stored checkpoint of every shard that has one.
pub(super) async fn load_checkpoints(
    store: &dyn CheckpointStore,
    stream: &StreamRef,
    settings: &Settings,
    shards: &[ShardInfo],
) -> Result<HashMap<String, Checkpoint>, Error> {
    futures::stream::iter(shards)
        .map(|shard| async move {
            let key = CheckpointKey::new(&settings.consumer_name, &stream.name, &shard.shard_id);
            let checkpoint = load_checkpoint(store, &key, settings).await?;
            Ok::<_, Error>(checkpoint.map(|c| (shard.shard_id.clone(), c)))
        })
        .buffer_unordered(16)
        .try_filter_map(|entry| async move { Ok(entry) })
        .try_collect()
        .await
}

async fn load_checkpoint(
    store: &dyn CheckpointStore,
    key: &CheckpointKey,
    settings: &Settings,
) -> Result<Option<Checkpoint>, Error> {
    let mut backoff = Backoff::new(settings);
    loop {
        match crate::error::catch_panic("checkpoint load", store.load(key)).await? {
            Ok(checkpoint) => return Ok(checkpoint),
            Err(error) if error.is_retryable() && backoff.attempts() < settings.checkpoint_retries => {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => return Err(Error::Checkpoint(error)),
        }
    }
}

/// Saves the start of every shard in `starts` that a later run could not find
/// again.
pub(super) async fn save_marks(
    store: &dyn CheckpointStore,
    stream: &StreamRef,
    settings: &Settings,
    starts: &[Start],
) -> Result<(), Error> {
    futures::stream::iter(starts.iter().filter_map(|start| Some((start, start.mark?))))
        .map(|(start, at)| async move {
            let key = CheckpointKey::new(&settings.consumer_name, &stream.name, &start.shard_id);
            let mark = Checkpoint::AtTimestamp(StartTime::new(at));
            let mut backoff = Backoff::new(settings);
            loop {
                match crate::error::catch_panic("checkpoint save", store.save(&key, &mark)).await? {
                    Ok(()) => return Ok(()),
                    Err(error) if error.is_retryable() && backoff.attempts() < settings.checkpoint_retries => {
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(error) => return Err(Error::Checkpoint(error)),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await
}
