//! `kcpy checkpoints list`: where a consumer stands, per shard.

use clap::Args;
use kcpy::aws_sdk_kinesis::types::ShardIteratorType;
use kcpy::{Checkpoint, CheckpointKey};

use crate::Context;
use kcpy::AnyStore;

#[derive(Args)]
pub(crate) struct List {
    /// The store the consumer keeps its checkpoints in.
    #[arg(long, value_name = "URL")]
    store: String,
    /// The consumer's name.
    #[arg(long)]
    consumer_name: String,
    /// The stream's name.
    #[arg(long)]
    stream: String,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

impl List {
    pub(crate) async fn run(self, context: &Context) -> Result<(), Box<dyn std::error::Error>> {
        let store = AnyStore::open(&self.store, &context.config).await?;
        let shards = context.shards(&self.stream).await?;
        let leases = store.leases(&self.consumer_name, &self.stream).await?;
        if !self.json {
            println!(
                "{:<24} {:<20} {:>8} {:>14}  checkpoint",
                "shard", "owner", "epoch", "behind (ms)"
            );
        }
        for shard in &shards {
            let id = shard.shard_id();
            let key = CheckpointKey::new(&self.consumer_name, &self.stream, id);
            let checkpoint = store.load(&key).await?;
            let lease = leases
                .as_ref()
                .and_then(|leases| leases.iter().find(|l| l.key.shard_id == id));
            let behind = self.behind(context, id, checkpoint.as_ref()).await;
            if self.json {
                let line = serde_json::json!({
                    "shard_id": id,
                    "checkpoint": checkpoint.as_ref().map(Checkpoint::as_str),
                    "owner": lease.and_then(|l| l.owner.as_deref()),
                    "epoch": lease.map(|l| l.epoch),
                    "millis_behind_latest": behind,
                });
                println!("{line}");
            } else {
                println!(
                    "{:<24} {:<20} {:>8} {:>14}  {}",
                    id,
                    lease.and_then(|l| l.owner.as_deref()).unwrap_or("-"),
                    lease.map_or("-".to_owned(), |l| l.epoch.to_string()),
                    behind.map_or("-".to_owned(), |ms| ms.to_string()),
                    checkpoint.as_ref().map_or("none", Checkpoint::as_str),
                );
            }
        }
        Ok(())
    }

    /// How far behind the shard's tip the record after `checkpoint` is, as
    /// one GetRecords call of one record says; `None` when unknown (no
    /// checkpoint, a finished shard, a start time).
    async fn behind(&self, context: &Context, shard: &str, checkpoint: Option<&Checkpoint>) -> Option<i64> {
        let (kind, sequence) = match checkpoint? {
            Checkpoint::Sequence(seq) => (ShardIteratorType::AfterSequenceNumber, seq),
            Checkpoint::SubSequence(sub) => (ShardIteratorType::AtSequenceNumber, sub.sequence()),
            _ => return None,
        };
        let iterator = context
            .kinesis
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(shard)
            .shard_iterator_type(kind)
            .starting_sequence_number(sequence.as_str())
            .send()
            .await
            .ok()?
            .shard_iterator?;
        let page = context
            .kinesis
            .get_records()
            .shard_iterator(iterator)
            .limit(1)
            .send()
            .await
            .ok()?;
        page.millis_behind_latest
    }
}
