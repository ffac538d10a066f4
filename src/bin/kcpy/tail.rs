//! `kcpy tail`: a stream's records, one per line.

use std::io::Write;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use futures::StreamExt;
use kcpy::{Consumer, Record, ShardState, StartPosition};

use crate::Context;
use kcpy::AnyStore;

/// How long to wait for a record before looking whether every shard is at
/// its tip.
const QUIET: Duration = Duration::from_secs(1);

/// Records between two looks at whether every shard is at its tip: on a
/// stream written to all the time, records keep coming after the tip.
const LOOK_EVERY: u64 = 100;

#[derive(Args)]
pub(crate) struct Tail {
    /// The stream's name or ARN.
    stream: String,
    /// Start at the oldest record kept (stops at the tip unless --follow).
    #[arg(long, group = "start")]
    trim_horizon: bool,
    /// Start at the tip, and follow (the default).
    #[arg(long, group = "start")]
    latest: bool,
    /// Start at the first record at or after TIME: RFC 3339
    /// (2026-12-04T10:00:00Z) or a time ago (-15m, -2h); stops at the tip
    /// unless --follow.
    #[arg(long, group = "start", value_name = "TIME", value_parser = parse_time, allow_hyphen_values = true)]
    at: Option<SystemTime>,
    /// Start at the record with this sequence number, on the shard --shard
    /// names (stops at the tip unless --follow).
    #[arg(long, group = "start", value_name = "SEQ", requires = "shard")]
    at_sequence: Option<kcpy::SequenceNumber>,
    /// Keep reading at the tip instead of stopping there.
    #[arg(long)]
    follow: bool,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    max: Option<u64>,
    /// Print only the records of this shard (every shard is still read; not
    /// with --store, which would checkpoint the others unprinted).
    #[arg(long, value_name = "ID", conflicts_with = "store")]
    shard: Option<String>,
    /// How each record is printed.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Keep checkpoints in this store (sqlite://, redis://, mysql://,
    /// postgres://, dynamodb://TABLE): the next run resumes after them.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// The consumer name the checkpoints are kept under.
    #[arg(long, default_value = "kcpy-tail")]
    consumer_name: String,
    /// Write checkpoints after this many records.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    checkpoint_every: u64,
    /// Read through enhanced fan-out, as this stream consumer (registered if missing).
    #[arg(long, value_name = "NAME")]
    fan_out: Option<String>,
    /// Join the consumer group whose leases are in --store.
    #[arg(long, requires = "store")]
    group: bool,
    /// This process's id in its group.
    #[arg(long, requires = "group")]
    worker_id: Option<String>,
    /// In a group: how long an unrenewed lease lasts, in milliseconds.
    #[arg(long, requires = "group", value_name = "MS")]
    lease_duration_ms: Option<u64>,
    /// In a group: how often leases are renewed, in milliseconds.
    #[arg(long, requires = "group", value_name = "MS")]
    lease_renew_ms: Option<u64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// A JSON object per record: shard, sequence number, partition key,
    /// arrival time and data (as UTF-8, lossy).
    Json,
    /// The data as it is, then a newline.
    Raw,
    /// The data in hex.
    Hex,
    /// The data in base64.
    Base64,
}

pub(crate) fn parse_time(text: &str) -> Result<SystemTime, String> {
    match text.strip_prefix('-') {
        Some(ago) => {
            let ago = humantime::parse_duration(ago).map_err(|e| format!("{text:?} is no time ago: {e}"))?;
            SystemTime::now()
                .checked_sub(ago)
                .ok_or_else(|| format!("{text:?} is before 1970"))
        }
        None => humantime::parse_rfc3339_weak(text).map_err(|e| format!("{text:?} is no RFC 3339 time: {e}")),
    }
}

impl Tail {
    pub(crate) async fn run(self, context: &Context) -> Result<(), Box<dyn std::error::Error>> {
        let (start, stops) = match (self.trim_horizon, self.at, &self.at_sequence) {
            (true, _, _) => (StartPosition::TrimHorizon, !self.follow),
            (false, Some(at), _) => (StartPosition::AtTimestamp(at), !self.follow),
            (false, None, Some(sequence)) => {
                let shard = self.shard.as_deref().unwrap_or_default();
                (
                    StartPosition::AtTimestamp(arrival(context, &self.stream, shard, sequence).await?),
                    !self.follow,
                )
            }
            (false, None, None) => (StartPosition::Latest, false),
        };
        let mut builder = Consumer::builder(context.kinesis.clone(), &self.stream)
            .consumer_name(&self.consumer_name)
            .start_position(start)
            .checkpoint_every(self.checkpoint_every)
            .idle_interval(Duration::from_millis(200));
        if let Some(name) = &self.fan_out {
            builder = builder.fan_out(kcpy::FanOut::register(name));
        }
        if let Some(id) = &self.worker_id {
            builder = builder.worker_id(id);
        }
        if let Some(ms) = self.lease_duration_ms {
            builder = builder.lease_duration(Duration::from_millis(ms));
        }
        if let Some(ms) = self.lease_renew_ms {
            builder = builder.lease_renew_interval(Duration::from_millis(ms));
        }
        if let Some(url) = &self.store {
            builder = AnyStore::open(url, &context.config)
                .await?
                .configure(builder, self.group)?;
        }
        let mut consumer = builder.build().await?;
        let shutdown = consumer.shutdown_handle();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                shutdown.shutdown();
            }
        });
        let mut out = std::io::stdout().lock();
        let mut printed = 0u64;
        let mut progress = Progress::new();
        let mut read = 0u64;
        let mut tip = Tip::new();
        while self.max.is_none_or(|max| printed < max) {
            let record = match tokio::time::timeout(QUIET, consumer.next()).await {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(_) if stops && tip.reached(&consumer) => break,
                Err(_) => {
                    progress.show(&consumer);
                    continue;
                }
            };
            tip.delivered(&record);
            read += 1;
            if stops && read % LOOK_EVERY == 0 && tip.reached(&consumer) {
                // Caught up: this record came after what there was when
                // tail started; it is neither printed nor checkpointed.
                break;
            }
            progress.record(&consumer);
            if self.shard.as_deref().is_some_and(|shard| shard != &*record.shard_id) {
                continue;
            }
            // Started at the record's arrival time, to the millisecond:
            // records of that millisecond before it are not asked for.
            if self.at_sequence.as_ref().is_some_and(|at| record.sequence_number < *at) {
                continue;
            }
            print(&mut out, &record, self.format)?;
            printed += 1;
        }
        // Stopped at --max: the last record handed out was printed, so ask
        // once more, without waiting, that its checkpoint be written too.
        if self.max.is_some_and(|max| printed == max) {
            let _ = tokio::time::timeout(Duration::ZERO, consumer.next()).await;
        }
        progress.finish();
        consumer.close().await?;
        Ok(())
    }
}

/// A line on stderr while catching up: records read, their rate, how far
/// behind the slowest shard is. Only when stderr is a terminal and stdout
/// is not (records printed to the terminal show progress themselves).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    read: u64,
    started: std::time::Instant,
}

impl Progress {
    fn new() -> Self {
        use std::io::IsTerminal;
        let bar = (std::io::stderr().is_terminal() && !std::io::stdout().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Self {
            bar,
            read: 0,
            started: std::time::Instant::now(),
        }
    }

    fn record(&mut self, consumer: &Consumer) {
        self.read += 1;
        if self.read % 1000 == 0 {
            self.show(consumer);
        }
    }

    fn show(&self, consumer: &Consumer) {
        let Some(bar) = &self.bar else { return };
        let behind = consumer
            .lag()
            .iter()
            .filter_map(|s| s.millis_behind_latest)
            .max()
            .unwrap_or(0);
        let rate = self.read as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!(
            "{} records, {rate:.0}/s, behind by {}",
            self.read,
            humantime::format_duration(Duration::from_millis(behind.max(0) as u64))
        ));
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// When the record at `sequence` of `shard` arrived: where reading it
/// starts, with what came before it in that millisecond skipped.
async fn arrival(
    context: &Context,
    stream: &str,
    shard: &str,
    sequence: &kcpy::SequenceNumber,
) -> Result<SystemTime, Box<dyn std::error::Error>> {
    use kcpy::aws_sdk_kinesis::types::ShardIteratorType;
    let iterator = context
        .kinesis
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
        .starting_sequence_number(sequence.as_str())
        .send()
        .await?
        .shard_iterator
        .ok_or("GetShardIterator gave no iterator")?;
    let page = context
        .kinesis
        .get_records()
        .shard_iterator(iterator)
        .limit(1)
        .send()
        .await?;
    let record = page
        .records
        .first()
        .ok_or_else(|| format!("{shard} has no record at {sequence}"))?;
    let at = record
        .approximate_arrival_timestamp
        .ok_or("the record has no arrival time")?;
    Ok(SystemTime::try_from(at)?)
}

/// Whether every shard has been read up to where it stood when `tail`
/// started.
struct Tip {
    started: SystemTime,
    since: std::time::Instant,
    /// Per shard: when it last handed out a record, and whether one put
    /// after the start came.
    shards: std::collections::HashMap<String, (std::time::Instant, bool)>,
}

impl Tip {
    fn new() -> Self {
        Self {
            started: SystemTime::now(),
            since: std::time::Instant::now(),
            shards: std::collections::HashMap::new(),
        }
    }

    fn delivered(&mut self, record: &Record) {
        let after = record
            .approximate_arrival_timestamp
            .is_some_and(|at| at >= self.started);
        let entry = self
            .shards
            .entry(record.shard_id.to_string())
            .or_insert((std::time::Instant::now(), false));
        *entry = (std::time::Instant::now(), entry.1 || after);
    }

    /// Some shard is read, and each shard read has handed out a record put
    /// after the start, or is at its tip (its latest answer said so) with
    /// nothing handed out for a while (so nothing fetched waits).
    fn reached(&self, consumer: &Consumer) -> bool {
        let lag = consumer.lag();
        let mut reading = lag.iter().filter(|shard| shard.state == ShardState::Reading).peekable();
        reading.peek().is_some()
            && reading.all(|shard| match self.shards.get(&shard.shard_id) {
                Some((_, true)) => true,
                Some((last, false)) => shard.millis_behind_latest == Some(0) && last.elapsed() >= QUIET,
                None => shard.millis_behind_latest == Some(0) && self.since.elapsed() >= QUIET,
            })
    }
}

fn print(out: &mut impl Write, record: &Record, format: Format) -> std::io::Result<()> {
    match format {
        Format::Json => {
            let mut line = serde_json::json!({
                "shard_id": &*record.shard_id,
                "sequence_number": record.sequence_number.as_str(),
                "partition_key": record.partition_key,
                "data": String::from_utf8_lossy(&record.data),
            });
            if let Some(number) = record.sub_sequence_number {
                line["sub_sequence_number"] = number.into();
            }
            if let Some(at) = record.approximate_arrival_timestamp {
                line["approximate_arrival_timestamp"] = humantime::format_rfc3339_millis(at).to_string().into();
            }
            writeln!(out, "{line}")?;
        }
        Format::Raw => {
            out.write_all(&record.data)?;
            out.write_all(b"\n")?;
        }
        Format::Hex => {
            for byte in record.data.iter() {
                write!(out, "{byte:02x}")?;
            }
            out.write_all(b"\n")?;
        }
        Format::Base64 => writeln!(out, "{}", base64_simd::STANDARD.encode_to_string(&record.data))?,
    }
    out.flush()
}
