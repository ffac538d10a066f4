//! Settings, with their defaults in one place.

use std::time::{Duration, SystemTime};

/// Where to start reading a shard that has no checkpoint yet. Shards with a
/// checkpoint always resume right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartPosition {
    /// The oldest record still retained.
    #[default]
    TrimHorizon,
    /// The tip of each shard as of [`ConsumerBuilder::build`](crate::ConsumerBuilder::build)
    /// returning: every record written after that is delivered.
    Latest,
    /// The first record that arrived at or after this time.
    AtTimestamp(SystemTime),
}

/// When checkpoints advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CheckpointMode {
    /// A record counts as processed once the caller asks for the next item;
    /// checkpoints are written in batches and at shutdown.
    #[default]
    Auto,
    /// Only records passed to [`Checkpointer::checkpoint`](crate::Checkpointer::checkpoint)
    /// count as processed; per shard, the checkpoint advances over the
    /// contiguous run of processed records.
    Manual,
}

/// The longest any time setting may be.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// The most batches a shard may fetch ahead.
const MAX_PREFETCH_BATCHES: usize = 1000;

/// Tuning shared by the shard readers, the checkpoint writer and shutdown.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) consumer_name: String,
    pub(crate) start_position: StartPosition,
    pub(crate) checkpoint_mode: CheckpointMode,
    pub(crate) checkpoint_every: u64,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) checkpoint_retries: u32,
    pub(crate) idle_interval: Duration,
    /// Idle shards that poll at the same moments, sharing one wakeup.
    pub(crate) idle_poll_group: usize,
    pub(crate) max_get_records_per_second: u32,
    pub(crate) max_records_per_call: i32,
    pub(crate) prefetch_batches: usize,
    pub(crate) max_unacknowledged: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) credentials_timeout: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) startup_retries: u32,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) shard_sync_interval: Duration,
    /// This process in a consumer group (with a lease store).
    pub(crate) worker_id: String,
    pub(crate) lease_duration: Duration,
    pub(crate) lease_renew_interval: Duration,
    /// Keep the leases of finished shards instead of deleting them.
    pub(crate) keep_finished_leases: bool,
    /// Split KPL aggregates into their user records.
    pub(crate) deaggregate: bool,
    /// Drop aggregates with user records outside the shard (KCL's rule).
    pub(crate) drop_aggregates_outside_shard: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            consumer_name: "kcpy".into(),
            start_position: StartPosition::TrimHorizon,
            checkpoint_mode: CheckpointMode::Auto,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(5),
            checkpoint_retries: 5,
            idle_interval: Duration::from_secs(1),
            idle_poll_group: 1,
            max_get_records_per_second: 5,
            max_records_per_call: 10_000,
            prefetch_batches: 2,
            max_unacknowledged: 100_000,
            request_timeout: Duration::from_secs(20),
            credentials_timeout: Duration::from_secs(300),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            startup_retries: 8,
            shutdown_timeout: Duration::from_secs(10),
            shard_sync_interval: Duration::from_secs(60),
            worker_id: default_worker_id(),
            lease_duration: Duration::from_secs(20),
            lease_renew_interval: Duration::from_secs(5),
            keep_finished_leases: false,
            deaggregate: true,
            drop_aggregates_outside_shard: false,
        }
    }
}

impl Settings {
    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        use crate::Error;
        let name = &self.consumer_name;
        if name.trim().is_empty() {
            return Err(Error::config("the consumer name must not be empty"));
        }
        if name.len() > 255 || name.chars().any(char::is_control) {
            return Err(Error::config(
                "the consumer name must be at most 255 bytes without control characters",
            ));
        }
        if !(1..=5).contains(&self.max_get_records_per_second) {
            return Err(Error::config(
                "max_get_records_per_second must be 1 to 5 (Kinesis allows 5 per shard)",
            ));
        }
        if !(1..=10_000).contains(&self.max_records_per_call) {
            return Err(Error::config("max_records_per_call must be 1 to 10000"));
        }
        if !(1..=MAX_PREFETCH_BATCHES).contains(&self.prefetch_batches) {
            return Err(Error::config(format!(
                "prefetch_batches must be 1 to {MAX_PREFETCH_BATCHES} (each batch can hold 10 MiB)"
            )));
        }
        if self.idle_poll_group == 0 {
            return Err(Error::config("idle_poll_group must be at least 1"));
        }
        if self.max_unacknowledged == 0 {
            return Err(Error::config("max_unacknowledged must be at least 1"));
        }
        if self.checkpoint_every == 0 {
            return Err(Error::config("checkpoint_every must be at least 1"));
        }
        for (what, value) in [
            ("checkpoint_interval", self.checkpoint_interval),
            ("request_timeout", self.request_timeout),
            ("backoff_base", self.backoff_base),
            ("shutdown_timeout", self.shutdown_timeout),
            ("shard_sync_interval", self.shard_sync_interval),
            ("lease_renew_interval", self.lease_renew_interval),
        ] {
            if value.is_zero() {
                return Err(Error::config(format!("{what} must be more than zero")));
            }
        }
        // Timers cannot be set past the end of time, and no setting here
        // means anything at more than a day.
        for (what, value) in [
            ("checkpoint_interval", self.checkpoint_interval),
            ("idle_interval", self.idle_interval),
            ("request_timeout", self.request_timeout),
            ("credentials_timeout", self.credentials_timeout),
            ("backoff_base", self.backoff_base),
            ("backoff_max", self.backoff_max),
            ("shutdown_timeout", self.shutdown_timeout),
            ("shard_sync_interval", self.shard_sync_interval),
            ("lease_duration", self.lease_duration),
            ("lease_renew_interval", self.lease_renew_interval),
        ] {
            if value > MAX_DURATION {
                return Err(Error::config(format!("{what} must be at most one day, not {value:?}")));
            }
        }
        if self.lease_renew_interval.saturating_mul(2) > self.lease_duration {
            return Err(Error::config(
                "lease_duration must be at least twice lease_renew_interval, so one failed renewal does not lose a lease",
            ));
        }
        let worker = &self.worker_id;
        if worker.trim().is_empty() || worker.len() > 255 || worker.chars().any(char::is_control) {
            return Err(Error::config(
                "the worker id must be 1 to 255 bytes without control characters",
            ));
        }
        if self.backoff_max < self.backoff_base {
            return Err(Error::config("backoff_max must not be below backoff_base"));
        }
        Ok(())
    }

    /// The least time between two GetRecords calls on one shard, with a 2 %
    /// margin: calls spaced exactly can arrive closer after network jitter,
    /// and Kinesis counts them as they arrive.
    pub(crate) fn min_call_spacing(&self) -> Duration {
        Duration::from_secs(1) / self.max_get_records_per_second * 51 / 50
    }
}

/// Host name, process id and a random suffix: unique per process, readable
/// in the lease store.
fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_past_what_timers_and_channels_can_take_are_rejected_by_name() {
        let cases = [
            (
                "checkpoint_interval",
                Settings {
                    checkpoint_interval: Duration::MAX,
                    ..Settings::default()
                },
            ),
            (
                "prefetch_batches",
                Settings {
                    prefetch_batches: usize::MAX,
                    ..Settings::default()
                },
            ),
            (
                "shard_sync_interval",
                Settings {
                    shard_sync_interval: Duration::from_secs(u64::MAX),
                    ..Settings::default()
                },
            ),
        ];
        for (name, settings) in cases {
            match settings.validate() {
                Err(crate::Error::InvalidConfig { message }) => assert!(message.contains(name), "{message}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn defaults_are_valid_and_bad_values_are_rejected() {
        assert!(Settings::default().validate().is_ok());
        let bad = [
            Settings {
                consumer_name: String::new(),
                ..Settings::default()
            },
            Settings {
                consumer_name: "  ".into(),
                ..Settings::default()
            },
            Settings {
                max_get_records_per_second: 6,
                ..Settings::default()
            },
            Settings {
                idle_poll_group: 0,
                ..Settings::default()
            },
            Settings {
                max_records_per_call: 10_001,
                ..Settings::default()
            },
            Settings {
                prefetch_batches: 0,
                ..Settings::default()
            },
            Settings {
                checkpoint_every: 0,
                ..Settings::default()
            },
            Settings {
                lease_duration: Duration::from_secs(5),
                lease_renew_interval: Duration::from_secs(3),
                ..Settings::default()
            },
            Settings {
                worker_id: String::new(),
                ..Settings::default()
            },
            Settings {
                checkpoint_interval: Duration::MAX,
                ..Settings::default()
            },
            Settings {
                idle_interval: Duration::MAX,
                ..Settings::default()
            },
            Settings {
                prefetch_batches: usize::MAX,
                ..Settings::default()
            },
            Settings {
                lease_duration: Duration::MAX,
                ..Settings::default()
            },
        ];
        for settings in bad {
            assert!(
                matches!(settings.validate(), Err(crate::Error::InvalidConfig { .. })),
                "{settings:?}"
            );
        }
    }
}
