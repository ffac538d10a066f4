//! `kcpy checkpoints reset`: rewind (or forward) a consumer, safely.

use std::io::{BufRead, Write};
use std::time::SystemTime;

use clap::{ArgGroup, Args};
use kcpy::{Checkpoint, CheckpointKey, StartTime};

use crate::tail::parse_time;
use crate::Context;
use kcpy::AnyStore;

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
        let store = AnyStore::open(&self.store, &context.config).await?;
        let target = match (&self.shard, &self.to) {
            (Some(_), Some(text)) => text
                .parse::<Checkpoint>()
                .map_err(|e| format!("--to {text:?} is no checkpoint: {e}"))?,
            _ if self.to_trim_horizon => Checkpoint::AtTimestamp(StartTime::new(SystemTime::UNIX_EPOCH)),
            _ if self.to_latest => Checkpoint::AtTimestamp(StartTime::new(SystemTime::now())),
            _ => Checkpoint::AtTimestamp(StartTime::new(self.at.ok_or("say where to reset to")?)),
        };
        // Per shard, what it becomes. The whole stream: the shards without a
        // listed parent start at the target; the others lose their
        // checkpoint, so that they wait for their parents and start where
        // those end (a reset child would be read beside its parent).
        let changes: Vec<(String, Option<Checkpoint>)> = match &self.shard {
            Some(shard) => vec![(shard.clone(), Some(target.clone()))],
            None => {
                let listed = context.shards(&self.stream).await?;
                let ids: Vec<&str> = listed.iter().map(|s| s.shard_id()).collect();
                listed
                    .iter()
                    .map(|shard| {
                        let parents = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()];
                        let root = !parents.into_iter().flatten().any(|p| ids.contains(&p));
                        (shard.shard_id().to_owned(), root.then(|| target.clone()))
                    })
                    .collect()
            }
        };
        // A live group would overwrite a reset: refuse unless told. A lease
        // with an owner counts, expired or not: telling would take a wait.
        let leases = store
            .leases(&self.consumer_name, &self.stream)
            .await?
            .unwrap_or_default();
        let held: Vec<String> = leases
            .iter()
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
        for (shard, to) in changes {
            let key = CheckpointKey::new(&self.consumer_name, &self.stream, &shard);
            let now = store.load(&key).await?;
            println!(
                "{shard}: {} -> {}",
                now.as_ref().map_or("none".to_owned(), |c| c.to_string()),
                to.as_ref()
                    .map_or("none (after its parents, where they end)".to_owned(), |c| c.to_string())
            );
            plan.push((key, to));
        }
        if !self.yes && !confirm(plan.len())? {
            return Err("nothing changed".into());
        }
        // Shard by shard: a failure part-way says how far it got, and the
        // same command can be run again.
        for (done, (key, to)) in plan.iter().enumerate() {
            store.reset(key, to.as_ref()).await.map_err(|e| {
                format!(
                    "{done} of {} shards reset, then {} failed (run it again): {e}",
                    plan.len(),
                    key.shard_id
                )
            })?;
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
