//! Enhanced fan-out through the SDK: describing and registering stream
//! consumers, and SubscribeToShard's event stream.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{
    ConsumerDescription, ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};

use super::errors::classify;
use super::page::{children_from_sdk, records_from_sdk};
use super::{
    ApiError, ConsumerLookup, FanOutApi, IteratorPosition, SdkKinesis, StreamConsumer, StreamRef, Subscription,
    SubscriptionEvent,
};
use crate::error::BoxError;
use crate::{Error, SequenceNumber};

const IN_USE: &str = "ResourceInUseException";

/// A failed fan-out call, sorted; `consumer` names the stream consumer for
/// a ResourceNotFound answer that is about it rather than the stream.
fn sort<E>(
    error: SdkError<E, HttpResponse>,
    operation: &'static str,
    stream: &StreamRef,
    consumer: Option<&str>,
) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = error.code().map(str::to_owned);
    match (code.as_deref(), consumer) {
        // An earlier subscription still held, or the consumer not ACTIVE yet.
        (Some(IN_USE), _) => ApiError::Throttled(Arc::new(error)),
        (Some("ResourceNotFoundException"), Some(consumer)) => ApiError::Fatal(Error::ConsumerNotFound {
            consumer: consumer.to_owned(),
            source: Arc::new(error),
        }),
        _ => classify(error, operation, stream),
    }
}

fn describe(consumer: ConsumerDescription) -> StreamConsumer {
    StreamConsumer {
        active: consumer.consumer_status == ConsumerStatus::Active,
        name: consumer.consumer_name,
        arn: consumer.consumer_arn,
        stream_arn: consumer.stream_arn,
    }
}

fn position(position: &IteratorPosition) -> Result<StartingPosition, ApiError> {
    let builder = match position {
        IteratorPosition::TrimHorizon => StartingPosition::builder().r#type(ShardIteratorType::TrimHorizon),
        IteratorPosition::Latest => StartingPosition::builder().r#type(ShardIteratorType::Latest),
        IteratorPosition::AtTimestamp(at) => StartingPosition::builder()
            .r#type(ShardIteratorType::AtTimestamp)
            .timestamp(DateTime::from(*at)),
        IteratorPosition::AfterSequence(seq) => StartingPosition::builder()
            .r#type(ShardIteratorType::AfterSequenceNumber)
            .sequence_number(seq.as_str()),
    };
    builder
        .build()
        .map_err(|e| ApiError::Fatal(Error::config(format!("starting position: {e}"))))
}

#[async_trait]
impl FanOutApi for SdkKinesis {
    async fn stream_arn(&self, stream: &StreamRef) -> Result<String, ApiError> {
        if let Some(arn) = &stream.arn {
            return Ok(arn.clone());
        }
        let output = self
            .client
            .describe_stream_summary()
            .stream_name(&stream.name)
            .send()
            .await
            .map_err(|e| classify(e, "DescribeStreamSummary", stream))?;
        output
            .stream_description_summary
            .map(|summary| summary.stream_arn)
            .ok_or_else(|| {
                ApiError::Fatal(Error::InvalidResponse {
                    operation: "DescribeStreamSummary",
                    message: "no StreamDescriptionSummary in the response".into(),
                })
            })
    }

    async fn describe_consumer(&self, lookup: ConsumerLookup<'_>) -> Result<StreamConsumer, ApiError> {
        let request = self.client.describe_stream_consumer();
        let (request, named, stream) = match lookup {
            ConsumerLookup::Arn(arn) => (request.consumer_arn(arn), arn, StreamRef::unnamed(arn)),
            ConsumerLookup::Name { stream_arn, name } => (
                request.stream_arn(stream_arn).consumer_name(name),
                name,
                StreamRef::unnamed(stream_arn),
            ),
        };
        let output = request
            .send()
            .await
            .map_err(|e| sort(e, "DescribeStreamConsumer", &stream, Some(named)))?;
        output.consumer_description.map(describe).ok_or_else(|| {
            ApiError::Fatal(Error::InvalidResponse {
                operation: "DescribeStreamConsumer",
                message: "no ConsumerDescription in the response".into(),
            })
        })
    }

    async fn register_consumer(&self, stream_arn: &str, name: &str) -> Result<StreamConsumer, ApiError> {
        let sent = self
            .client
            .register_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(name)
            .send()
            .await;
        let output = match sent {
            Ok(output) => output,
            // Registered meanwhile (by another process of the group).
            Err(error) if error.code() == Some(IN_USE) => {
                return self.describe_consumer(ConsumerLookup::Name { stream_arn, name }).await;
            }
            Err(error) => {
                return Err(sort(
                    error,
                    "RegisterStreamConsumer",
                    &StreamRef::unnamed(stream_arn),
                    None,
                ))
            }
        };
        let consumer = output.consumer.ok_or_else(|| {
            ApiError::Fatal(Error::InvalidResponse {
                operation: "RegisterStreamConsumer",
                message: "no Consumer in the response".into(),
            })
        })?;
        Ok(StreamConsumer {
            active: consumer.consumer_status == ConsumerStatus::Active,
            name: consumer.consumer_name,
            arn: consumer.consumer_arn,
            stream_arn: stream_arn.to_owned(),
        })
    }

    async fn deregister_consumer(&self, consumer_arn: &str) -> Result<(), ApiError> {
        self.client
            .deregister_stream_consumer()
            .consumer_arn(consumer_arn)
            .send()
            .await
            .map_err(|e| {
                sort(
                    e,
                    "DeregisterStreamConsumer",
                    &StreamRef::unnamed(consumer_arn),
                    Some(consumer_arn),
                )
            })?;
        Ok(())
    }

    async fn subscribe(
        &self,
        stream: &StreamRef,
        consumer_arn: &str,
        shard_id: &Arc<str>,
        at: &IteratorPosition,
    ) -> Result<Box<dyn Subscription>, ApiError> {
        let output = self
            .client
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(&**shard_id)
            .starting_position(position(at)?)
            .send()
            .await
            .map_err(|e| sort(e, "SubscribeToShard", stream, None))?;
        Ok(Box::new(SdkSubscription {
            events: output,
            shard_id: Arc::clone(shard_id),
            stream: stream.clone(),
        }))
    }
}

struct SdkSubscription {
    /// Holds the event stream (its receiver type is not exported).
    events: aws_sdk_kinesis::operation::subscribe_to_shard::SubscribeToShardOutput,
    shard_id: Arc<str>,
    stream: StreamRef,
}

#[async_trait]
impl Subscription for SdkSubscription {
    async fn next_event(&mut self) -> Result<Option<SubscriptionEvent>, ApiError> {
        loop {
            let event = match self.events.event_stream.recv().await {
                Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))) => event,
                // A kind of event newer than this SDK: nothing to read in it.
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(None),
                Err(error) => return Err(sort_stream_error(error, &self.stream)),
            };
            let millis = event.millis_behind_latest;
            let records = records_from_sdk("SubscribeToShard", event.records, &self.shard_id, Some(millis))
                .map_err(ApiError::Fatal)?;
            let continuation = match event.continuation_sequence_number.as_str() {
                "" => None,
                text => Some(SequenceNumber::parse(text).map_err(|e| {
                    ApiError::Fatal(Error::InvalidResponse {
                        operation: "SubscribeToShard",
                        message: format!("ContinuationSequenceNumber: {e}"),
                    })
                })?),
            };
            return Ok(Some(SubscriptionEvent {
                records,
                continuation,
                child_shards: children_from_sdk(event.child_shards.unwrap_or_default()),
            }));
        }
    }
}

/// An error inside the event stream: an exception event (ResourceInUse when
/// another subscription took over, InternalFailure…) or the connection's end.
fn sort_stream_error(
    error: SdkError<SubscribeToShardEventStreamError, aws_smithy_types::event_stream::RawMessage>,
    stream: &StreamRef,
) -> ApiError {
    // Exception events carry their type in a header the error metadata
    // does not copy: the variant is what tells them apart.
    let code = match &error {
        SdkError::ServiceError(context) => Some(exception_code(context.err())),
        _ => None,
    };
    let transport = matches!(
        error,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
    );
    let source: BoxError = Arc::new(error);
    if transport {
        return ApiError::Transient(source);
    }
    match code.as_deref() {
        Some(IN_USE) => ApiError::Throttled(source),
        code => super::sort_code(code, false, None, source, "SubscribeToShard", stream),
    }
}

fn exception_code(error: &SubscribeToShardEventStreamError) -> String {
    use SubscribeToShardEventStreamError as E;
    let code = match error {
        E::ResourceNotFoundException(_) => "ResourceNotFoundException",
        E::ResourceInUseException(_) => IN_USE,
        E::KmsDisabledException(_) => "KMSDisabledException",
        E::KmsInvalidStateException(_) => "KMSInvalidStateException",
        E::KmsAccessDeniedException(_) => "KMSAccessDeniedException",
        E::KmsNotFoundException(_) => "KMSNotFoundException",
        E::KmsOptInRequired(_) => "KMSOptInRequired",
        E::KmsThrottlingException(_) => "KMSThrottlingException",
        E::InternalFailureException(_) => "InternalFailureException",
        other => other.code().unwrap_or("Unknown"),
    };
    code.to_owned()
}
