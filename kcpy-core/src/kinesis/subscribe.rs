//! Enhanced fan-out through the SDK: describing and registering stream
//! consumers, and subscribing (the event stream is read by
//! [`events`](super::events)).

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{ConsumerDescription, ConsumerStatus, ShardIteratorType, StartingPosition};

use super::errors::classify;
use super::events::{CaptureEvents, EventSlot, EventStream};
use super::{
    ApiError, ConsumerLookup, FanOutApi, IteratorPosition, SdkKinesis, StreamConsumer, StreamRef, Subscription,
};
use crate::Error;

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
        IteratorPosition::AtSequence(seq) => StartingPosition::builder()
            .r#type(ShardIteratorType::AtSequenceNumber)
            .sequence_number(seq.as_str()),
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
        let slot = EventSlot::default();
        self.client
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(&**shard_id)
            .starting_position(position(at)?)
            .customize()
            .interceptor(CaptureEvents {
                slot: Arc::clone(&slot),
            })
            .send()
            .await
            .map_err(|e| sort(e, "SubscribeToShard", stream, None))?;
        let body = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        let body = body.ok_or_else(|| {
            ApiError::Fatal(Error::InvalidResponse {
                operation: "SubscribeToShard",
                message: "a successful answer without an event stream".into(),
            })
        })?;
        Ok(Box::new(EventStream::new(body, Arc::clone(shard_id), stream.clone())))
    }
}
