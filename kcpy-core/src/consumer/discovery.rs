//! Finding the stream's shards: listing them at the start, and again while
//! reading, for shards that reshards create.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Settings;
use crate::kinesis::{DynKinesis, ShardInfo, StreamRef};
use crate::retry::retry_startup;
use crate::signal::{Fatal, Outbox};
use crate::Error;

/// The stream's shards, listed again.
#[derive(Debug)]
pub(super) struct Listing(pub(super) Vec<ShardInfo>);

/// Every shard of the stream, following ListShards pages.
pub(super) async fn list_shards(
    api: &DynKinesis,
    stream: &StreamRef,
    settings: &Settings,
) -> Result<Vec<ShardInfo>, Error> {
    let mut shards = Vec::new();
    let mut token = None;
    loop {
        let page = retry_startup("ListShards", stream, settings, || {
            api.list_shards(stream, token.clone())
        })
        .await?;
        shards.extend(page.shards);
        match page.next_token {
            Some(next) => token = Some(next),
            None => return Ok(shards),
        }
    }
}

/// Lists the shards again every `shard_sync_interval`, so shards created by a
/// reshard are found even if no shard end announced them; also at once when
/// `relist` is notified: a shard waits for a parent no listing has shown, or
/// the lease store names shards this process has not heard of.
pub(super) async fn sync_shards(
    api: DynKinesis,
    stream: Arc<StreamRef>,
    settings: Arc<Settings>,
    listed: Outbox<Listing>,
    fatal: Fatal,
    relist: Arc<Notify>,
) {
    let cancel = fatal.token().clone();
    let every = settings.shard_sync_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            () = relist.notified() => {}
        }
        match list_shards(&api, &stream, &settings).await {
            Ok(shards) => listed.send(Listing(shards)),
            Err(error) if error.is_retryable() => {
                tracing::warn!(error = %error, "shard sync failed; trying again later");
            }
            Err(error) => {
                fatal.report("shard sync", error);
                return;
            }
        }
    }
}
