//! The transport: the Kinesis calls the consumer makes, with errors already
//! sorted into what to do about them ([`ApiError`]). The SDK client
//! implements [`KinesisApi`] (`sdk`), sending GetRecords signed by hand once
//! it has learned how (`signed`); `page` turns a GetRecords answer into
//! records. Unit tests script the trait to produce faults the emulator
//! cannot.

mod decimal;
mod errors;
mod events;
mod page;
mod records;
mod scan;
mod sdk;
mod signed;
mod subscribe;

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

pub(crate) use errors::{sort_code, FaultWatch};
pub(crate) use records::{Records, KPL_MAGIC};
pub(crate) use sdk::SdkKinesis;

use crate::error::BoxError;
use crate::{Error, SequenceNumber};

/// The stream as configured, and its name for checkpoint keys.
#[derive(Debug, Clone)]
pub(crate) struct StreamRef {
    /// The name or ARN as the user gave it.
    pub(crate) configured: String,
    pub(crate) name: String,
    pub(crate) arn: Option<String>,
    /// The name as records carry it.
    pub(crate) label: Arc<str>,
}

impl StreamRef {
    pub(crate) fn parse(stream: &str) -> Result<Self, Error> {
        if stream.is_empty() {
            return Err(Error::config("the stream name must not be empty"));
        }
        if let Some(rest) = stream.strip_prefix("arn:") {
            // arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            let name = match parts.as_slice() {
                [_, "kinesis", _, _, resource] => resource.strip_prefix("stream/"),
                _ => None,
            };
            return match name {
                Some(name) if is_valid_stream_name(name) => Ok(Self {
                    configured: stream.to_owned(),
                    name: name.to_owned(),
                    arn: Some(stream.to_owned()),
                    label: Arc::from(name),
                }),
                _ => Err(Error::config(format!("{stream:?} is not a Kinesis stream ARN"))),
            };
        }
        if !is_valid_stream_name(stream) {
            return Err(Error::config(format!(
                "{stream:?} is not a valid stream name (1-128 of a-z A-Z 0-9 _ . -)"
            )));
        }
        Ok(Self {
            configured: stream.to_owned(),
            name: stream.to_owned(),
            arn: None,
            label: Arc::from(stream),
        })
    }

    /// A copy for one shard's reader, with a label of its own: records of
    /// different shards, read on different threads, then share no
    /// reference count.
    pub(crate) fn for_shard(&self) -> Self {
        Self {
            label: Arc::from(&*self.label),
            ..self.clone()
        }
    }
}

impl StreamRef {
    /// A stream (or stream consumer) known only by an ARN, for naming it in
    /// errors.
    pub(crate) fn unnamed(arn: &str) -> Self {
        Self {
            configured: arn.to_owned(),
            name: arn.to_owned(),
            arn: Some(arn.to_owned()),
            label: Arc::from(arn),
        }
    }
}

fn is_valid_stream_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// One shard as ListShards describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardInfo {
    pub(crate) shard_id: String,
    pub(crate) parent_shard_id: Option<String>,
    pub(crate) adjacent_parent_shard_id: Option<String>,
    /// Set once the shard is closed (by a split or merge).
    pub(crate) ending_sequence_number: Option<String>,
    /// The hash keys it holds; `None` when the answer did not say.
    pub(crate) hash_range: Option<HashRange>,
}

/// A shard's hash key range: 128-bit hash keys, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HashRange {
    pub(crate) start: u128,
    pub(crate) end: u128,
}

impl HashRange {
    /// From the decimal text Kinesis gives; `None` unless both ends are
    /// numbers in order.
    pub(crate) fn parse(start: &str, end: &str) -> Option<Self> {
        let (start, end) = (start.parse().ok()?, end.parse().ok()?);
        (start <= end).then_some(Self { start, end })
    }

    pub(crate) fn contains(&self, hash: u128) -> bool {
        (self.start..=self.end).contains(&hash)
    }

    /// Every hash key: a stream's only shard.
    pub(crate) fn is_everything(&self) -> bool {
        self.start == 0 && self.end == u128::MAX
    }
}

#[derive(Debug, Default)]
pub(crate) struct ShardPage {
    pub(crate) shards: Vec<ShardInfo>,
    pub(crate) next_token: Option<String>,
}

/// Where a shard iterator starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IteratorPosition {
    TrimHorizon,
    Latest,
    AtTimestamp(SystemTime),
    /// At the record itself: a checkpoint inside a KPL aggregate resumes at
    /// the aggregate, its processed user records skipped.
    AtSequence(SequenceNumber),
    AfterSequence(SequenceNumber),
}

#[derive(Debug, Default)]
pub(crate) struct RecordsPage {
    pub(crate) records: Records,
    /// `None` once the shard is closed and fully read.
    pub(crate) next_iterator: Option<String>,
    pub(crate) millis_behind_latest: Option<i64>,
    /// At a shard's end: the shards that continue it.
    pub(crate) child_shards: Vec<ShardInfo>,
}

/// What a failed call means for the caller.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// Over a limit; back off and retry.
    Throttled(BoxError),
    /// A fault that passes (5xx, reset, timeout); back off and retry.
    Transient(BoxError),
    /// The shard iterator is too old; get a new one.
    ExpiredIterator,
    /// No credentials could be had (the provider failed): retried like a
    /// transient fault, but only for `credentials_timeout`.
    Credentials(BoxError),
    /// The signature was refused, and it was made at a time far from
    /// Kinesis's clock: retried once (the next call is signed at the time
    /// the refusal showed), then access is denied.
    ClockSkew(BoxError),
    /// Retrying cannot help; the consumer stops.
    Fatal(Error),
}

#[async_trait]
pub(crate) trait KinesisApi: Send + Sync + 'static {
    async fn list_shards(&self, stream: &StreamRef, next_token: Option<String>) -> Result<ShardPage, ApiError>;

    async fn get_shard_iterator(
        &self,
        stream: &StreamRef,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<String, ApiError>;

    /// Records of `shard_id`, in order.
    async fn get_records(
        &self,
        stream: &StreamRef,
        shard_id: &Arc<str>,
        iterator: &str,
        limit: i32,
    ) -> Result<RecordsPage, ApiError>;

    /// Why no call could ever succeed, known before any is made (a client
    /// without a region cannot sign): a configuration error, not an outage
    /// to retry.
    fn unusable(&self) -> Option<String> {
        None
    }
}

pub(crate) type DynKinesis = Arc<dyn KinesisApi>;

/// A Kinesis call took longer than `request_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request timed out")]
pub(crate) struct RequestTimedOut;

/// Runs a call within `limit`; running over it is a transient failure.
pub(crate) async fn within<T>(
    limit: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_elapsed| Err(ApiError::Transient(Arc::new(RequestTimedOut))))
}

/// One event of a SubscribeToShard subscription.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionEvent {
    pub(crate) records: Records,
    /// Where the shard's reading stands; `None` where Kinesis sent none (the
    /// SDK makes an absent one `""`): at the shard's end, with children.
    pub(crate) continuation: Option<SequenceNumber>,
    /// At the shard's end: the shards that continue it.
    pub(crate) child_shards: Vec<ShardInfo>,
    pub(crate) millis_behind_latest: Option<i64>,
}

/// A live subscription to one shard.
#[async_trait]
pub(crate) trait Subscription: Send {
    /// The next event; `Ok(None)` once Kinesis ended the subscription (it
    /// does after 5 minutes).
    async fn next_event(&mut self) -> Result<Option<SubscriptionEvent>, ApiError>;
}

/// A stream consumer registered for enhanced fan-out, as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamConsumer {
    pub(crate) name: String,
    pub(crate) arn: String,
    pub(crate) stream_arn: String,
    /// ACTIVE: subscriptions are accepted.
    pub(crate) active: bool,
}

/// Which stream consumer to describe.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ConsumerLookup<'a> {
    Arn(&'a str),
    Name { stream_arn: &'a str, name: &'a str },
}

/// The calls of enhanced fan-out. A missing stream consumer is
/// [`Error::ConsumerNotFound`]; a subscription refused because an earlier
/// one is still held (ResourceInUse) is [`ApiError::Throttled`].
#[async_trait]
pub(crate) trait FanOutApi: Send + Sync + 'static {
    /// The stream's ARN (DescribeStreamSummary), which registration needs.
    async fn stream_arn(&self, stream: &StreamRef) -> Result<String, ApiError>;

    async fn describe_consumer(&self, lookup: ConsumerLookup<'_>) -> Result<StreamConsumer, ApiError>;

    async fn register_consumer(&self, stream_arn: &str, name: &str) -> Result<StreamConsumer, ApiError>;

    async fn deregister_consumer(&self, consumer_arn: &str) -> Result<(), ApiError>;

    async fn subscribe(
        &self,
        stream: &StreamRef,
        consumer_arn: &str,
        shard_id: &Arc<str>,
        position: &IteratorPosition,
    ) -> Result<Box<dyn Subscription>, ApiError>;
}

pub(crate) type DynFanOut = Arc<dyn FanOutApi>;
