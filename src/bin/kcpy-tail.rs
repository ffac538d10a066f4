//! `kcpy-tail`: print a stream's records as JSON lines, one per record,
//! optionally checkpointed so the next run resumes.
//!
//! ```text
//! kcpy-tail STREAM [--store URL] [--consumer-name NAME] [--start trim-horizon|latest]
//!                  [--checkpoint-every N] [--endpoint URL]
//! ```
//!
//! The store is picked by the URL's scheme: `sqlite://`, and with the crate's
//! features `redis` and `mysql`, `redis://` / `rediss://` and `mysql://`.
//!
//! `--endpoint` (or `KCPY_KINESIS_ENDPOINT`) points it at an emulator; without
//! one it uses the usual AWS credentials and region.

use std::io::Write;
use std::process::ExitCode;

use futures::StreamExt;
use kcpy::aws_config::{self, BehaviorVersion, Region};
use kcpy::aws_sdk_kinesis::config::Credentials;
use kcpy::{Consumer, ConsumerBuilder, StartPosition};

const USAGE: &str = "usage: kcpy-tail STREAM [--store URL] [--consumer-name NAME] \
                     [--start trim-horizon|latest] [--checkpoint-every N] [--endpoint URL]";

struct Args {
    stream: String,
    store: Option<String>,
    consumer_name: String,
    start: StartPosition,
    checkpoint_every: u64,
    endpoint: Option<String>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        stream: String::new(),
        store: None,
        consumer_name: "kcpy-tail".into(),
        start: StartPosition::TrimHorizon,
        checkpoint_every: 1000,
        endpoint: std::env::var("KCPY_KINESIS_ENDPOINT").ok(),
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--store" => parsed.store = Some(value()?),
            "--consumer-name" => parsed.consumer_name = value()?,
            "--endpoint" => parsed.endpoint = Some(value()?),
            "--checkpoint-every" => {
                parsed.checkpoint_every = value()?.parse().map_err(|_| "--checkpoint-every needs a number")?
            }
            "--start" => {
                parsed.start = match value()?.as_str() {
                    "trim-horizon" => StartPosition::TrimHorizon,
                    "latest" => StartPosition::Latest,
                    other => return Err(format!("unknown start position {other:?}")),
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            stream if parsed.stream.is_empty() => parsed.stream = stream.to_owned(),
            extra => return Err(format!("unexpected argument {extra:?}")),
        }
    }
    if parsed.stream.is_empty() {
        return Err(USAGE.into());
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "kcpy=warn".into()))
        .init();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kcpy-tail: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = aws_config::defaults(BehaviorVersion::latest());
    if let Some(endpoint) = &args.endpoint {
        config = config
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "emulator"));
    }
    let client = kcpy::aws_sdk_kinesis::Client::new(&config.load().await);
    let mut builder = Consumer::builder(client, &args.stream)
        .consumer_name(&args.consumer_name)
        .start_position(args.start)
        .checkpoint_every(args.checkpoint_every)
        .idle_interval(std::time::Duration::from_millis(200));
    if let Some(url) = &args.store {
        builder = with_store(builder, url).await?;
    }
    let mut consumer = builder.build().await?;
    let shutdown = consumer.shutdown_handle();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            shutdown.shutdown();
        }
    });

    let mut out = std::io::stdout().lock();
    while let Some(record) = consumer.next().await {
        let line = serde_json::json!({
            "shard_id": &*record.shard_id,
            "sequence_number": record.sequence_number.as_str(),
            "partition_key": record.partition_key,
            "data": String::from_utf8_lossy(&record.data),
        });
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    consumer.close().await?;
    Ok(())
}

/// The checkpoint store named by `url`'s scheme.
async fn with_store(builder: ConsumerBuilder, url: &str) -> Result<ConsumerBuilder, Box<dyn std::error::Error>> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(builder.checkpoint_store(kcpy::SqliteCheckpointStore::connect(url).await?)),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(builder.checkpoint_store(kcpy::RedisCheckpointStore::connect(url).await?)),
        #[cfg(feature = "mysql")]
        "mysql" => Ok(builder.checkpoint_store(kcpy::MySqlCheckpointStore::connect(url).await?)),
        _ => Err(
            format!("no checkpoint store for {scheme:?} URLs in this build (features: sqlite, redis, mysql)").into(),
        ),
    }
}
