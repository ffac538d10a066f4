//! What the consumer tells its operators: metrics through the [`metrics`]
//! facade (the application picks the exporter), a snapshot of each shard's
//! progress ([`ShardLag`]), and lifecycle events ([`ConsumerEvent`]).
//!
//! Metric names follow KCL's where they mean the same, so dashboards carry
//! over. Every series has the label `stream`; per-shard ones also `shard`.
//! Install the recorder before building the consumer: handles are taken
//! once per shard, and the per-record path makes no metric call (records are
//! counted per batch).
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `RecordsProcessed` | counter | stream, shard | records handed to the caller |
//! | `DataBytesProcessed` | counter | stream, shard | their payload bytes |
//! | `MillisBehindLatest` | gauge (ms) | stream, shard | how far behind its tip the shard's latest GetRecords answer (or fan-out event) was, empty ones included; 0 once the shard is finished or stopped |
//! | `MaxMillisBehindLatest` | gauge (ms) | stream | the largest `MillisBehindLatest` of the shards being read: the application's lag |
//! | `GetRecords.Time` | histogram (ms) | stream, shard | GetRecords call latency, failed calls included |
//! | `SubscribeToShard.Time` | histogram (ms) | stream, shard | time until a subscription answers |
//! | `Retries` | counter | stream, shard, operation, kind | calls retried: `kind` is `throttled`, `transient`, `credentials` or `clock_skew` |
//! | `IteratorRenewals` | counter | stream, shard | shard iterators renewed after they expired |
//! | `Subscriptions` | counter | stream, shard | enhanced fan-out subscriptions made (one per 5 minutes per shard when all is well) |
//! | `Checkpoint.Saves` | counter | stream | checkpoints saved |
//! | `Checkpoint.Failures` | counter | stream | failed save attempts (each retry counts) |
//! | `Checkpoint.Time` | histogram (ms) | stream | save latency |
//! | `CheckpointLag` | gauge (records) | stream, shard | records handed to the caller that no durable checkpoint covers yet: what a crash now would deliver again (updated per batch and per save) |
//! | `CurrentLeases` | gauge | stream | leases this worker holds |
//! | `TakenLeases` | counter | stream | leases this worker acquired |
//! | `LostLeases` | counter | stream | leases taken from this worker, or not renewed in time |
//! | `HandedOverLeases` | counter | stream | leases this worker gave to another on request |
//! | `NumWorkers` | gauge | stream | workers of the group holding an unexpired lease, this one included |
//! | `UnclaimedShards` | gauge | stream | shards that need a lease and have no live holder |

mod events;
mod lag;

pub use events::ConsumerEvent;
pub(crate) use events::Events;
pub use lag::{ShardLag, ShardState};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use crate::kinesis::ApiError;

/// Per shard, the last checkpoint known durable: loaded at start, taken
/// with a lease, or saved since. Shared by the writer and the consumer, with
/// the `CheckpointLag` of each shard read.
#[derive(Debug, Clone)]
pub(crate) struct Durable {
    stream: Arc<str>,
    checkpoints: Arc<Mutex<HashMap<Arc<str>, crate::Checkpoint>>>,
    lag: Arc<Mutex<HashMap<Arc<str>, Covered>>>,
}

/// Records of one shard's reading handed out, and how many of them a
/// durable checkpoint covers.
struct Covered {
    handed: u64,
    covered: u64,
    gauge: Gauge,
}

impl std::fmt::Debug for Covered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {}", self.covered, self.handed)
    }
}

impl Durable {
    pub(crate) fn new(stream: &str) -> Self {
        Self {
            stream: Arc::from(stream),
            checkpoints: Arc::default(),
            lag: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, crate::Checkpoint>> {
        self.checkpoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lag_of<T>(&self, shard: &str, change: impl FnOnce(&mut Covered) -> T) -> T {
        let mut map = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up before it is made: this runs for every shard at every
        // checkpoint flush, and a key or gauge made each time would allocate.
        if !map.contains_key(shard) {
            let gauge =
                metrics::gauge!(name::CHECKPOINT_LAG, "stream" => self.stream.to_string(), "shard" => shard.to_owned());
            map.insert(
                Arc::from(shard),
                Covered {
                    handed: 0,
                    covered: 0,
                    gauge,
                },
            );
        }
        let mut fresh = Covered {
            handed: 0,
            covered: 0,
            gauge: Gauge::noop(),
        };
        let entry = map.get_mut(shard).unwrap_or(&mut fresh);
        let out = change(entry);
        entry.gauge.set(entry.handed.saturating_sub(entry.covered) as f64);
        out
    }

    /// `handed` records of the shard handed out so far (in this reading of it).
    pub(crate) fn handed(&self, shard: &str, handed: u64) {
        self.lag_of(shard, |entry| entry.handed = handed);
    }

    /// The shard is no longer read here: nothing of it waits any more.
    pub(crate) fn forget(&self, shard: &str) {
        self.lag_of(shard, |entry| entry.covered = entry.handed);
    }

    /// A save made durable what covers `count` records handed out.
    pub(crate) fn covered(&self, shard: &str, count: Option<u64>) {
        if let Some(count) = count {
            self.lag_of(shard, |entry| entry.covered = entry.covered.max(count));
        }
    }

    /// The shard is read anew (a lease taken): its counts start again.
    pub(crate) fn restart(&self, shard: &str) {
        self.lag_of(shard, |entry| {
            entry.handed = 0;
            entry.covered = 0;
        });
    }

    /// The store now holds `checkpoint` (saved, loaded, carried by a lease,
    /// or reset by an operator: it may move back).
    pub(crate) fn set(&self, shard: &str, checkpoint: &crate::Checkpoint) {
        let mut map = self.lock();
        match map.get_mut(shard) {
            Some(known) => *known = checkpoint.clone(),
            None => {
                map.insert(Arc::from(shard), checkpoint.clone());
            }
        }
    }

    pub(crate) fn get(&self, shard: &str) -> Option<crate::Checkpoint> {
        self.lock().get(shard).cloned()
    }
}

/// Metric names, as documented above.
pub(crate) mod name {
    pub(crate) const RECORDS: &str = "RecordsProcessed";
    pub(crate) const BYTES: &str = "DataBytesProcessed";
    pub(crate) const BEHIND: &str = "MillisBehindLatest";
    pub(crate) const MAX_BEHIND: &str = "MaxMillisBehindLatest";
    pub(crate) const GET_RECORDS_TIME: &str = "GetRecords.Time";
    pub(crate) const SUBSCRIBE_TIME: &str = "SubscribeToShard.Time";
    pub(crate) const RETRIES: &str = "Retries";
    pub(crate) const RENEWALS: &str = "IteratorRenewals";
    pub(crate) const SUBSCRIPTIONS: &str = "Subscriptions";
    pub(crate) const SAVES: &str = "Checkpoint.Saves";
    pub(crate) const SAVE_FAILURES: &str = "Checkpoint.Failures";
    pub(crate) const SAVE_TIME: &str = "Checkpoint.Time";
    pub(crate) const CHECKPOINT_LAG: &str = "CheckpointLag";
    pub(crate) const CURRENT_LEASES: &str = "CurrentLeases";
    pub(crate) const TAKEN_LEASES: &str = "TakenLeases";
    pub(crate) const LOST_LEASES: &str = "LostLeases";
    pub(crate) const HANDED_OVER: &str = "HandedOverLeases";
    pub(crate) const WORKERS: &str = "NumWorkers";
    pub(crate) const UNCLAIMED: &str = "UnclaimedShards";
}

/// Per shard being read, its latest `MillisBehindLatest`: for the stream's
/// maximum.
#[derive(Debug, Default)]
pub(crate) struct Behind(Mutex<HashMap<Arc<str>, i64>>);

impl Behind {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, i64>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `ms` for `shard` (or forgets it, with `None`); the new maximum.
    fn update(&self, shard: &Arc<str>, ms: Option<i64>) -> i64 {
        let mut map = self.lock();
        match ms {
            Some(ms) => {
                map.insert(Arc::clone(shard), ms);
            }
            None => {
                map.remove(shard);
            }
        }
        map.values().copied().max().unwrap_or(0)
    }

    /// `shard`'s latest, if it reported one.
    pub(crate) fn get(&self, shard: &str) -> Option<i64> {
        self.lock().get(shard).copied()
    }
}

/// One shard's handles, taken when its reading starts.
#[derive(Clone)]
pub(crate) struct ShardMetrics {
    stream: Arc<str>,
    shard: Arc<str>,
    records: Counter,
    bytes: Counter,
    behind: Gauge,
    max_behind: Gauge,
    all_behind: Arc<Behind>,
    get_records: Histogram,
}

impl std::fmt::Debug for ShardMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardMetrics")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

impl ShardMetrics {
    pub(crate) fn new(stream: &Arc<str>, shard: &Arc<str>, all_behind: &Arc<Behind>) -> Self {
        let labels = [("stream", stream.to_string()), ("shard", shard.to_string())];
        Self {
            stream: Arc::clone(stream),
            shard: Arc::clone(shard),
            records: metrics::counter!(name::RECORDS, &labels),
            bytes: metrics::counter!(name::BYTES, &labels),
            behind: metrics::gauge!(name::BEHIND, &labels),
            max_behind: metrics::gauge!(name::MAX_BEHIND, "stream" => stream.to_string()),
            all_behind: Arc::clone(all_behind),
            get_records: metrics::histogram!(name::GET_RECORDS_TIME, &labels),
        }
    }

    /// A batch handed to the consumer: counted as a whole.
    pub(crate) fn batch(&self, records: &crate::kinesis::Records) {
        self.records.increment(records.len() as u64);
        self.bytes.increment(records.data_len() as u64);
    }

    /// What a GetRecords answer or fan-out event said of the shard's lag,
    /// records or not.
    pub(crate) fn behind(&self, ms: Option<i64>) {
        if let Some(ms) = ms {
            self.behind.set(ms as f64);
            self.max_behind
                .set(self.all_behind.update(&self.shard, Some(ms)) as f64);
        }
    }

    /// The shard is no longer read here (finished, stopped, its lease
    /// gone): it no longer counts towards the stream's lag.
    pub(crate) fn stopped(&self) {
        self.behind.set(0.0);
        self.max_behind.set(self.all_behind.update(&self.shard, None) as f64);
    }

    fn labels(&self) -> [(&'static str, String); 2] {
        [("stream", self.stream.to_string()), ("shard", self.shard.to_string())]
    }

    /// A call failed: retried (counted by operation and kind), or an
    /// expired iterator renewed. Fatal errors end the stream and are not
    /// counted here.
    pub(crate) fn failed(&self, operation: &'static str, error: &ApiError) {
        let kind = match error {
            ApiError::Throttled(_) => "throttled",
            ApiError::Transient(_) => "transient",
            ApiError::Credentials(_) => "credentials",
            ApiError::ClockSkew(_) => "clock_skew",
            ApiError::ExpiredIterator => {
                metrics::counter!(name::RENEWALS, &self.labels()).increment(1);
                return;
            }
            ApiError::Fatal(_) => return,
        };
        let [stream, shard] = self.labels();
        let labels = [
            stream,
            shard,
            ("operation", operation.to_owned()),
            ("kind", kind.to_owned()),
        ];
        metrics::counter!(name::RETRIES, &labels).increment(1);
    }

    pub(crate) fn subscribed(&self) {
        metrics::counter!(name::SUBSCRIPTIONS, &self.labels()).increment(1);
    }

    /// How long a GetRecords call took.
    pub(crate) fn get_records(&self, took: Duration) {
        self.get_records.record(took.as_secs_f64() * 1e3);
    }

    /// How long a subscription took to answer.
    pub(crate) fn subscribe(&self, took: Duration) {
        metrics::histogram!(name::SUBSCRIBE_TIME, &self.labels()).record(took.as_secs_f64() * 1e3);
    }
}

/// Stream-wide series.
pub(crate) struct StreamMetrics {
    stream: String,
}

impl StreamMetrics {
    pub(crate) fn new(stream: &str) -> Self {
        Self {
            stream: stream.to_owned(),
        }
    }

    fn labels(&self) -> [(&'static str, String); 1] {
        [("stream", self.stream.clone())]
    }

    pub(crate) fn saved(&self, took: Duration) {
        metrics::counter!(name::SAVES, &self.labels()).increment(1);
        metrics::histogram!(name::SAVE_TIME, &self.labels()).record(took.as_secs_f64() * 1e3);
    }

    pub(crate) fn save_failed(&self) {
        metrics::counter!(name::SAVE_FAILURES, &self.labels()).increment(1);
    }

    pub(crate) fn leases(&self, held: usize) {
        metrics::gauge!(name::CURRENT_LEASES, &self.labels()).set(held as f64);
    }

    pub(crate) fn lease_taken(&self) {
        metrics::counter!(name::TAKEN_LEASES, &self.labels()).increment(1);
    }

    pub(crate) fn lease_lost(&self) {
        metrics::counter!(name::LOST_LEASES, &self.labels()).increment(1);
    }

    pub(crate) fn lease_handed_over(&self) {
        metrics::counter!(name::HANDED_OVER, &self.labels()).increment(1);
    }

    pub(crate) fn group(&self, workers: usize, unclaimed: usize) {
        metrics::gauge!(name::WORKERS, &self.labels()).set(workers as f64);
        metrics::gauge!(name::UNCLAIMED, &self.labels()).set(unclaimed as f64);
    }
}
