//! `kcpy checkpoints reset`: rewind (or forward) a consumer, safely.

use std::io::{BufRead, Write};
use std::time::SystemTime;

use clap::{ArgGroup, Args};
use kcpy::{Checkpoint, CheckpointKey, StartTime};

use crate::stores::Store;
use crate::tail::parse_time;
use crate::Context;

#[derive(Args)]
#[command(group(ArgGroup::new("target").required(true)))]
pub(crate) struct Reset {
    /// The store the consumer keeps its checkpoints in.
    #[arg(long, value_name = "URL")]
    store: String,
    /// The consumer's name.
    #[arg(long)]
    consumer_name: String,
    /// The stream's name.
    #[arg(long)]
    stream: String,
    /// Every shard from its oldest record kept.
    #[arg(long, group = "target")]
    to_trim_horizon: bool,
    /// Every shard from its tip now: what was put before is skipped.
    #[arg(long, group = "target")]
    to_latest: bool,
    /// Every shard from the first record at or after TIME (RFC 3339, or -15m).
    #[arg(long, group = "target", value_name = "TIME", value_parser = parse_time, allow_hyphen_values = true)]
    at: Option<SystemTime>,
    /// One shard, to the checkpoint --to gives.
    #[arg(long, value_name = "ID", requires = "to")]
    shard: Option<String>,
    /// With --shard: resume after this checkpoint (a sequence number,
    /// SEQ:N inside a KPL aggregate, SHARD_END, or AT_TIMESTAMP:millis).
    #[arg(long, group = "target", value_name = "CHECKPOINT", requires = "shard")]
    to: Option<String>,
    /// Reset even shards whose lease a worker holds: it is fenced out, and
    /// the group takes the shard again at the new checkpoint.
    #[arg(long)]
    force: bool,
    /// Do not ask.
    #[arg(long)]
    yes: bool,
}

impl Reset {
    pub(crate) async fn run(self, context: &Context) -> Result<(), Box<dyn std::error::Error>> {
        let store = Store::open(&self.store, &context.config).await?;
        let target = match (&self.shard, &self.to) {
            (Some(_), Some(text)) => text
                .parse::<Checkpoint>()
                .map_err(|e| format!("--to {text:?} is no checkpoint: {e}"))?,
            _ if self.to_trim_horizon => Checkpoint::AtTimestamp(StartTime::new(SystemTime::UNIX_EPOCH)),
            _ if self.to_latest => Checkpoint::AtTimestamp(StartTime::new(SystemTime::now())),
            _ => Checkpoint::AtTimestamp(StartTime::new(self.at.ok_or("say where to reset to")?)),
        };
        let shards: Vec<String> = match &self.shard {
            Some(shard) => vec![shard.clone()],
            None => context
                .shards(&self.stream)
                .await?
                .into_iter()
                .map(|s| s.shard_id)
                .collect(),
        };
        // A live group would overwrite a reset: refuse unless told.
        let leases = store
            .leases(&self.consumer_name, &self.stream)
            .await?
            .unwrap_or_default();
        let held: Vec<String> = leases
            .iter()
            .filter(|lease| shards.contains(&lease.key.shard_id))
            .filter_map(|lease| {
                let owner = lease.owner.as_deref()?;
                Some(format!("{} by {owner} (epoch {})", lease.key.shard_id, lease.epoch))
            })
            .collect();
        if !held.is_empty() && !self.force {
            return Err(format!(
                "leases are held ({}): stop the group first, or pass --force to fence its workers out",
                held.join(", ")
            )
            .into());
        }
        let mut plan = Vec::new();
        for shard in &shards {
            let key = CheckpointKey::new(&self.consumer_name, &self.stream, shard);
            let now = store.load(&key).await?;
            println!(
                "{shard}: {} -> {target}",
                now.as_ref().map_or("none".to_owned(), |c| c.to_string())
            );
            plan.push(key);
        }
        if !self.yes && !confirm(plan.len())? {
            return Err("nothing changed".into());
        }
        for (done, key) in plan.iter().enumerate() {
            store
                .reset(key, Some(&target))
                .await
                .map_err(|e| format!("{done} of {} shards reset, then {}: {e}", plan.len(), key.shard_id))?;
        }
        println!(
            "reset {} checkpoints of {} on {}",
            plan.len(),
            self.consumer_name,
            self.stream
        );
        Ok(())
    }
}

/// Asks on stderr, answered on stdin.
fn confirm(shards: usize) -> Result<bool, Box<dyn std::error::Error>> {
    eprint!("reset {shards} checkpoints? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
