//! `kcpy streams describe`: a stream's shards and its fan-out consumers.

use clap::Args;

use crate::Context;

#[derive(Args)]
pub(crate) struct Describe {
    /// The stream's name.
    stream: String,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl Describe {
    pub(crate) async fn run(self, context: &Context) -> Result<(), Box<dyn std::error::Error>> {
        let summary = context
            .kinesis
            .describe_stream_summary()
            .stream_name(&self.stream)
            .send()
            .await?;
        let summary = summary.stream_description_summary();
        let arn = summary.map(|s| s.stream_arn().to_owned()).unwrap_or_default();
        let status = summary
            .map(|s| s.stream_status().as_str().to_owned())
            .unwrap_or_default();
        let shards = context.shards(&self.stream).await?;
        let consumers = context
            .kinesis
            .list_stream_consumers()
            .stream_arn(&arn)
            .send()
            .await
            .map(|out| out.consumers.unwrap_or_default())
            .map_err(|e| format!("ListStreamConsumers: {e}"))?;
        let rows: Vec<serde_json::Value> = shards
            .iter()
            .map(|shard| {
                let range = shard.hash_key_range();
                let parents: Vec<&str> = shard
                    .parent_shard_id()
                    .into_iter()
                    .chain(shard.adjacent_parent_shard_id())
                    .collect();
                let closed = shard
                    .sequence_number_range()
                    .is_some_and(|r| r.ending_sequence_number().is_some());
                serde_json::json!({
                    "shard_id": shard.shard_id(),
                    "state": if closed { "closed" } else { "open" },
                    "parents": parents,
                    "starting_hash_key": range.map(|r| r.starting_hash_key()),
                    "ending_hash_key": range.map(|r| r.ending_hash_key()),
                })
            })
            .collect();
        let consumers: Vec<serde_json::Value> = consumers
            .iter()
            .map(|c| serde_json::json!({"name": c.consumer_name(), "status": c.consumer_status().as_str(), "arn": c.consumer_arn()}))
            .collect();
        if self.json {
            let out = serde_json::json!({"stream": self.stream, "arn": arn, "status": status, "shards": rows, "consumers": consumers});
            println!("{out}");
            return Ok(());
        }
        println!("{} ({status}) {arn}", self.stream);
        println!("{:<24} {:<7} {:<50} hash keys", "shard", "state", "parents");
        for row in &rows {
            let parents: Vec<&str> = row["parents"]
                .as_array()
                .map(|p| p.iter().filter_map(|p| p.as_str()).collect())
                .unwrap_or_default();
            println!(
                "{:<24} {:<7} {:<50} {}–{}",
                row["shard_id"].as_str().unwrap_or_default(),
                row["state"].as_str().unwrap_or_default(),
                if parents.is_empty() {
                    "-".to_owned()
                } else {
                    parents.join(",")
                },
                row["starting_hash_key"].as_str().unwrap_or("?"),
                row["ending_hash_key"].as_str().unwrap_or("?"),
            );
        }
        if consumers.is_empty() {
            println!("no enhanced fan-out consumers");
        }
        for consumer in &consumers {
            println!(
                "fan-out consumer {} ({})",
                consumer["name"].as_str().unwrap_or_default(),
                consumer["status"].as_str().unwrap_or_default()
            );
        }
        Ok(())
    }
}
