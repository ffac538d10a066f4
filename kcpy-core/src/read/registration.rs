//! Which stream consumer enhanced fan-out reads through: the user's
//! [`FanOut`] choice, checked and resolved at `build` (registered if asked
//! and absent, reused if present, waited for until ACTIVE).

use std::sync::Arc;
use std::time::Duration;

use crate::config::Settings;
use crate::kinesis::{ApiError, ConsumerLookup, DynFanOut, StreamConsumer, StreamRef};
use crate::retry::retry_startup;
use crate::Error;

/// How long a new stream consumer may take to become ACTIVE.
const ACTIVATION_LIMIT: Duration = Duration::from_secs(300);

/// Reading with enhanced fan-out (SubscribeToShard) instead of polling; see
/// [`ConsumerBuilder::fan_out`](crate::ConsumerBuilder::fan_out).
///
/// Each fan-out consumer gets its own 2 MiB/s per shard, and records are
/// pushed as they arrive (about 70 ms after the put on AWS, against about
/// 200 ms or more for polling). AWS charges per consumer-shard hour and per
/// GB read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanOut {
    target: Target,
    deregister: bool,
    stall_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Register(String),
    Arn(String),
}

impl FanOut {
    /// Reads through the stream consumer called `name`, registering it
    /// (RegisterStreamConsumer) if the stream has none by that name, and
    /// reusing it if it has. `build` waits until it is ACTIVE.
    pub fn register(name: impl Into<String>) -> Self {
        Self::new(Target::Register(name.into()))
    }

    /// Reads through an existing stream consumer, by its ARN (as
    /// RegisterStreamConsumer or DescribeStreamConsumer give it).
    pub fn arn(consumer_arn: impl Into<String>) -> Self {
        Self::new(Target::Arn(consumer_arn.into()))
    }

    fn new(target: Target) -> Self {
        Self {
            target,
            deregister: false,
            stall_timeout: Duration::from_secs(35),
        }
    }

    /// Deregisters the stream consumer when the consumer stops cleanly, if
    /// `build` registered it (default: kept, as registering takes time and
    /// a restart reuses it). Never deregisters one it did not create.
    pub fn deregister_on_stop(mut self, deregister: bool) -> Self {
        self.deregister = deregister;
        self
    }

    /// How long a subscription may go without any event before it counts
    /// as dead and is replaced (default 35 s). AWS sends an event about
    /// every 5 s even on an idle shard.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    pub(crate) fn stall(&self) -> Duration {
        self.stall_timeout
    }

    /// Checks what needs no call to Kinesis.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        match &self.target {
            Target::Register(name) if !is_valid_consumer_name(name) => Err(Error::config(format!(
                "{name:?} is not a valid fan-out consumer name (1-128 of a-z A-Z 0-9 _ . -)"
            ))),
            Target::Arn(arn) if !is_consumer_arn(arn) => Err(Error::config(format!(
                "{arn:?} is not a stream consumer ARN (arn:aws:kinesis:REGION:ACCOUNT:stream/NAME/consumer/NAME:TIMESTAMP)"
            ))),
            _ if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.stall_timeout) => {
                Err(Error::config("the fan-out stall timeout must be between 1 s and 1 h"))
            }
            _ => Ok(()),
        }
    }

    fn configured(&self) -> &str {
        match &self.target {
            Target::Register(name) | Target::Arn(name) => name,
        }
    }
}

fn is_valid_consumer_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_consumer_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", _, "kinesis", _, _, resource] => {
            let mut pieces = resource.split('/');
            matches!(
                (pieces.next(), pieces.next(), pieces.next(), pieces.next(), pieces.next()),
                (Some("stream"), Some(stream), Some("consumer"), Some(consumer), None)
                    if !stream.is_empty() && !consumer.is_empty()
            )
        }
        _ => false,
    }
}

/// The stream consumer `build` resolved.
#[derive(Debug, Clone)]
pub(crate) struct Registered {
    pub(crate) arn: String,
    /// Created by this `build` and to be deregistered on a clean stop.
    pub(crate) deregister: bool,
}

/// Finds (or registers) the stream consumer and waits until it is ACTIVE.
pub(crate) async fn resolve(
    api: &DynFanOut,
    stream: &StreamRef,
    fan_out: &FanOut,
    settings: &Settings,
) -> Result<Registered, Error> {
    let stream_arn = retry_startup("DescribeStreamSummary", stream, settings, || api.stream_arn(stream)).await?;
    let (consumer, created) = match &fan_out.target {
        Target::Arn(arn) => {
            let consumer = retry_startup("DescribeStreamConsumer", stream, settings, || {
                api.describe_consumer(ConsumerLookup::Arn(arn))
            })
            .await?;
            if consumer.stream_arn != stream_arn {
                return Err(Error::ConsumerNotFound {
                    consumer: arn.clone(),
                    source: Arc::new(std::io::Error::other(format!(
                        "it belongs to stream {}, not {stream_arn}",
                        consumer.stream_arn
                    ))),
                });
            }
            (consumer, false)
        }
        Target::Register(name) => {
            let found = retry_startup("DescribeStreamConsumer", stream, settings, || {
                api.describe_consumer(ConsumerLookup::Name {
                    stream_arn: &stream_arn,
                    name,
                })
            })
            .await;
            match found {
                Ok(consumer) => {
                    tracing::info!(consumer = %consumer.arn, "reusing the registered fan-out consumer");
                    (consumer, false)
                }
                Err(Error::ConsumerNotFound { .. }) => {
                    let consumer = retry_startup("RegisterStreamConsumer", stream, settings, || {
                        api.register_consumer(&stream_arn, name)
                    })
                    .await?;
                    tracing::info!(consumer = %consumer.arn, "registered a fan-out consumer");
                    (consumer, true)
                }
                Err(error) => return Err(error),
            }
        }
    };
    let consumer = wait_active(api, stream, consumer, settings)
        .await
        .map_err(|error| match error {
            Error::ConsumerNotFound { source, .. } => Error::ConsumerNotFound {
                consumer: fan_out.configured().to_owned(),
                source,
            },
            other => other,
        })?;
    Ok(Registered {
        arn: consumer.arn,
        deregister: created && fan_out.deregister,
    })
}

async fn wait_active(
    api: &DynFanOut,
    stream: &StreamRef,
    mut consumer: StreamConsumer,
    settings: &Settings,
) -> Result<StreamConsumer, Error> {
    let deadline = tokio::time::Instant::now() + ACTIVATION_LIMIT;
    while !consumer.active {
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Unavailable {
                operation: "DescribeStreamConsumer",
                source: Arc::new(std::io::Error::other(format!(
                    "{} did not become ACTIVE within {ACTIVATION_LIMIT:?}",
                    consumer.arn
                ))),
            });
        }
        // Registration takes seconds on AWS; the emulator can be instant.
        tokio::time::sleep(Duration::from_millis(500)).await;
        consumer = retry_startup("DescribeStreamConsumer", stream, settings, || {
            api.describe_consumer(ConsumerLookup::Arn(&consumer.arn))
        })
        .await?;
    }
    Ok(consumer)
}

/// Deregisters a consumer `build` registered; a failure only costs money, so
/// it is logged, not returned.
pub(crate) async fn deregister(api: &DynFanOut, registered: &Registered) {
    match api.deregister_consumer(&registered.arn).await {
        Ok(()) => tracing::info!(consumer = %registered.arn, "deregistered the fan-out consumer"),
        Err(ApiError::Fatal(Error::ConsumerNotFound { .. })) => {}
        Err(error) => tracing::warn!(consumer = %registered.arn, ?error, "deregistering the fan-out consumer failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_consumer_names_arns_and_timeouts_are_configuration_errors() {
        for bad in [
            FanOut::register(""),
            FanOut::register("has space"),
            FanOut::register("x".repeat(129)),
            FanOut::arn("arn:aws:kinesis:us-east-1:1:stream/s"),
            FanOut::arn("not-an-arn"),
            FanOut::register("ok").stall_timeout(Duration::ZERO),
        ] {
            assert!(matches!(bad.validate(), Err(Error::InvalidConfig { .. })), "{bad:?}");
        }
        for good in [
            FanOut::register("billing-v2.efo"),
            FanOut::arn("arn:aws:kinesis:us-east-1:123456789012:stream/s/consumer/c:1700000000"),
        ] {
            assert!(good.validate().is_ok(), "{good:?}");
        }
    }
}
