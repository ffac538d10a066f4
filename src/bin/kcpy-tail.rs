//! `kcpy-tail`: print a stream's records as JSON lines, one per record,
//! optionally checkpointed so the next run resumes.
//!
//! ```text
//! kcpy-tail STREAM [--store URL] [--consumer-name NAME] [--start trim-horizon|latest]
//!                  [--checkpoint-every N] [--endpoint URL] [--fan-out NAME]
//!                  [--group [--worker-id ID] [--lease-duration-ms N] [--lease-renew-ms N]]
//! ```
//!
//! `--fan-out NAME` reads with enhanced fan-out through the stream consumer
//! NAME, registering it if the stream has none by that name.
//!
//! The store is picked by the URL's scheme: `sqlite://`, and with the crate's
//! features `redis`, `mysql`, `postgres` and `dynamodb`, `redis://` /
//! `rediss://`, `mysql://`, `postgres://` and `dynamodb://TABLE`.
//!
//! `--group` joins a consumer group: processes with the same consumer name and
//! store split the stream's shards (PostgreSQL, MySQL and DynamoDB stores).
//!
//! `--endpoint` (or `KCPY_KINESIS_ENDPOINT`) points it at an emulator, and
//! `KCPY_DYNAMODB_ENDPOINT` at a local DynamoDB; without them it uses the
//! usual AWS credentials and region.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use kcpy::aws_config::{self, BehaviorVersion, Region};
use kcpy::aws_sdk_kinesis::config::Credentials;
use kcpy::{Consumer, ConsumerBuilder, StartPosition};

const USAGE: &str = "usage: kcpy-tail STREAM [--store URL] [--consumer-name NAME] \
                     [--start trim-horizon|latest] [--checkpoint-every N] [--endpoint URL] [--fan-out NAME] \
                     [--group [--worker-id ID] [--lease-duration-ms N] [--lease-renew-ms N]]";

struct Args {
    stream: String,
    store: Option<String>,
    consumer_name: String,
    start: StartPosition,
    checkpoint_every: u64,
    endpoint: Option<String>,
    fan_out: Option<String>,
    group: bool,
    worker_id: Option<String>,
    lease_duration: Option<Duration>,
    lease_renew: Option<Duration>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        stream: String::new(),
        store: None,
        consumer_name: "kcpy-tail".into(),
        start: StartPosition::TrimHorizon,
        checkpoint_every: 1000,
        endpoint: std::env::var("KCPY_KINESIS_ENDPOINT").ok(),
        fan_out: None,
        group: false,
        worker_id: None,
        lease_duration: None,
        lease_renew: None,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--store" => parsed.store = Some(value()?),
            "--consumer-name" => parsed.consumer_name = value()?,
            "--endpoint" => parsed.endpoint = Some(value()?),
            "--group" => parsed.group = true,
            "--fan-out" => parsed.fan_out = Some(value()?),
            "--worker-id" => parsed.worker_id = Some(value()?),
            "--lease-duration-ms" => parsed.lease_duration = Some(millis(&arg, &value()?)?),
            "--lease-renew-ms" => parsed.lease_renew = Some(millis(&arg, &value()?)?),
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
    if parsed.group && parsed.store.is_none() {
        return Err("--group needs a --store that holds leases (postgres://, mysql:// or dynamodb://)".into());
    }
    Ok(parsed)
}

fn millis(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("{flag} needs a number of milliseconds"))
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
    let config = config.load().await;
    let client = kcpy::aws_sdk_kinesis::Client::new(&config);
    let mut builder = Consumer::builder(client, &args.stream)
        .consumer_name(&args.consumer_name)
        .start_position(args.start)
        .checkpoint_every(args.checkpoint_every)
        .idle_interval(Duration::from_millis(200));
    if let Some(name) = &args.fan_out {
        builder = builder.fan_out(kcpy::FanOut::register(name));
    }
    if let Some(id) = &args.worker_id {
        builder = builder.worker_id(id);
    }
    if let Some(duration) = args.lease_duration {
        builder = builder.lease_duration(duration);
    }
    if let Some(interval) = args.lease_renew {
        builder = builder.lease_renew_interval(interval);
    }
    if let Some(url) = &args.store {
        builder = with_store(builder, url, args.group, &config).await?;
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
        let mut line = serde_json::json!({
            "shard_id": &*record.shard_id,
            "sequence_number": record.sequence_number.as_str(),
            "partition_key": record.partition_key,
            "data": String::from_utf8_lossy(&record.data),
        });
        // A user record of a KPL aggregate: its place in it.
        if let Some(number) = record.sub_sequence_number {
            line["sub_sequence_number"] = number.into();
        }
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    consumer.close().await?;
    Ok(())
}

/// The checkpoint store named by `url`'s scheme; with `group`, as the lease
/// store of a consumer group.
async fn with_store(
    builder: ConsumerBuilder,
    url: &str,
    group: bool,
    config: &kcpy::aws_config::SdkConfig,
) -> Result<ConsumerBuilder, Box<dyn std::error::Error>> {
    let _ = config;
    let scheme = url.split(':').next().unwrap_or_default();
    match (scheme, group) {
        #[cfg(feature = "mysql")]
        ("mysql", group) => {
            let store = kcpy::MySqlCheckpointStore::connect(url).await?;
            Ok(if group {
                builder.lease_store(store)
            } else {
                builder.checkpoint_store(store)
            })
        }
        #[cfg(feature = "postgres")]
        ("postgres" | "postgresql", group) => {
            let store = kcpy::PostgresCheckpointStore::connect(url).await?;
            Ok(if group {
                builder.lease_store(store)
            } else {
                builder.checkpoint_store(store)
            })
        }
        #[cfg(feature = "dynamodb")]
        ("dynamodb", group) => {
            let table = url.trim_start_matches("dynamodb://");
            let mut dynamodb = kcpy::aws_sdk_dynamodb::config::Builder::from(config);
            if let Ok(endpoint) = std::env::var("KCPY_DYNAMODB_ENDPOINT") {
                dynamodb = dynamodb.endpoint_url(endpoint);
            }
            let store =
                kcpy::DynamoDbCheckpointStore::new(kcpy::aws_sdk_dynamodb::Client::from_conf(dynamodb.build()), table);
            Ok(if group {
                builder.lease_store(store)
            } else {
                builder.checkpoint_store(store)
            })
        }
        (_, true) => {
            Err(format!("{scheme:?} stores hold no leases; --group needs postgres://, mysql:// or dynamodb://").into())
        }
        (scheme, false) => plain_store(builder, url, scheme).await,
    }
}

async fn plain_store(
    builder: ConsumerBuilder,
    url: &str,
    scheme: &str,
) -> Result<ConsumerBuilder, Box<dyn std::error::Error>> {
    match scheme {
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(builder.checkpoint_store(kcpy::SqliteCheckpointStore::connect(url).await?)),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(builder.checkpoint_store(kcpy::RedisCheckpointStore::connect(url).await?)),
        _ => Err(
            format!("no checkpoint store for {scheme:?} URLs in this build (features: sqlite, redis, mysql, postgres, dynamodb)")
                .into(),
        ),
    }
}
