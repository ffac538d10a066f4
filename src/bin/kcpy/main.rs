//! `kcpy`: tail a stream, describe it, and list a consumer's checkpoints.
//!
//! ```text
//! kcpy tail STREAM [--trim-horizon | --latest | --at TIME | --at-sequence SEQ] [--max N] [--follow]
//!                  [--format json|raw|hex|base64] [--shard ID]
//!                  [--store URL --consumer-name NAME] [--fan-out NAME]
//! kcpy streams describe STREAM
//! kcpy checkpoints list --store URL --consumer-name NAME --stream STREAM [--json]
//! kcpy checkpoints reset --store URL --consumer-name NAME --stream STREAM
//!       (--to-trim-horizon | --to-latest | --at TIME | --shard ID --to CHECKPOINT) [--force] [--yes]
//! ```
//!
//! `--endpoint` (or `KCPY_KINESIS_ENDPOINT`) points it at an emulator;
//! without it, the usual AWS credentials and region are used. Errors are
//! one line on stderr and a non-zero exit: 2 for bad arguments, 1 otherwise.

mod describe;
mod list;
mod reset;
mod tail;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kcpy::aws_config::{self, BehaviorVersion, Region};
use kcpy::aws_sdk_kinesis::config::Credentials;

#[derive(Parser)]
#[command(
    name = "kcpy",
    version,
    about = "Read Amazon Kinesis Data Streams and inspect kcpy consumers"
)]
struct Cli {
    /// The Kinesis endpoint, e.g. an emulator's (default: AWS, from the environment).
    #[arg(long, global = true, env = "KCPY_KINESIS_ENDPOINT")]
    endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a stream's records, one per line.
    Tail(tail::Tail),
    /// Streams.
    Streams {
        #[command(subcommand)]
        command: StreamsCommand,
    },
    /// A consumer's checkpoints.
    Checkpoints {
        #[command(subcommand)]
        command: CheckpointsCommand,
    },
}

#[derive(Subcommand)]
enum StreamsCommand {
    /// Its shards (hash ranges, parents, open or closed) and its enhanced fan-out consumers.
    Describe(describe::Describe),
}

#[derive(Subcommand)]
enum CheckpointsCommand {
    /// Per shard: the checkpoint, the lease's owner and epoch, how far behind the tip.
    List(list::List),
    /// Rewind or forward a consumer: what it will change is shown and asked first.
    Reset(reset::Reset),
}

/// What every subcommand needs: the AWS configuration and a Kinesis client.
pub(crate) struct Context {
    pub(crate) config: kcpy::aws_config::SdkConfig,
    pub(crate) kinesis: kcpy::aws_sdk_kinesis::Client,
}

impl Context {
    /// Every shard of `stream`, through every page of ListShards.
    pub(crate) async fn shards(
        &self,
        stream: &str,
    ) -> Result<Vec<kcpy::aws_sdk_kinesis::types::Shard>, Box<dyn std::error::Error>> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let request = match &token {
                Some(token) => self.kinesis.list_shards().next_token(token),
                None => self.kinesis.list_shards().stream_name(stream),
            };
            let page = request.send().await?;
            shards.extend(page.shards.unwrap_or_default());
            match page.next_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        Ok(shards)
    }
}

async fn context(endpoint: Option<&str>) -> Context {
    let mut config = aws_config::defaults(BehaviorVersion::latest());
    if let Some(endpoint) = endpoint {
        config = config
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "emulator"));
    }
    let config = config.load().await;
    let kinesis = kcpy::aws_sdk_kinesis::Client::new(&config);
    Context { config, kinesis }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "kcpy=warn".into()))
        .init();
    let cli = Cli::parse();
    let context = context(cli.endpoint.as_deref()).await;
    let result = match cli.command {
        Command::Tail(tail) => tail.run(&context).await,
        Command::Streams {
            command: StreamsCommand::Describe(describe),
        } => describe.run(&context).await,
        Command::Checkpoints {
            command: CheckpointsCommand::List(list),
        } => list.run(&context).await,
        Command::Checkpoints {
            command: CheckpointsCommand::Reset(reset),
        } => reset.run(&context).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the error and its causes.
            let mut line = format!("kcpy: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                // The SDK's errors repeat their causes in their own text.
                let cause_text = cause.to_string();
                if !line.contains(&cause_text) {
                    line.push_str(&format!(": {cause_text}"));
                }
                source = cause.source();
            }
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}
