//! SubscribeToShard's event stream read straight into [`Record`]s.
//!
//! The SDK's event receiver parses every record of an event into its own
//! types (a `String` per field, a `Vec` per payload, a `DateTime`), which
//! we would then copy: measured, that made fan-out cost more CPU per record
//! than polling. So, as with GetRecords pages, an interceptor takes the
//! successful response's body before the SDK reads it (the SDK's receiver
//! sees an empty stream), and its messages are decoded here with the SDK's
//! own frame decoder, each event's JSON parsed by [`parse_records`] with
//! borrowed strings and one payload buffer per event.
//!
//! [`Record`]: crate::Record

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_kinesis::config::interceptors::BeforeDeserializationInterceptorContextMut;
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::event_stream::Message;
use bytes::BytesMut;
use http_body_util::BodyExt;

use super::page::{parse_records, MAX_BODY};
use super::{sort_code, ApiError, StreamRef, Subscription, SubscriptionEvent};
use crate::error::BoxError;
use crate::{Error, SequenceNumber};

const OPERATION: &str = "SubscribeToShard";

/// A subscription's event stream, taken from the SDK.
pub(crate) type EventSlot = Arc<Mutex<Option<SdkBody>>>;

/// Takes a successful SubscribeToShard response body into an [`EventSlot`].
#[derive(Debug)]
pub(crate) struct CaptureEvents {
    pub(crate) slot: EventSlot,
}

impl Intercept for CaptureEvents {
    fn name(&self) -> &'static str {
        "kcpy::CaptureEvents"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let response = context.response_mut();
        // Errors keep the SDK's own parsing, and its error codes.
        if !response.status().is_success() {
            return Ok(());
        }
        let body = std::mem::replace(response.body_mut(), SdkBody::empty());
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(body);
        Ok(())
    }
}

/// An exception sent inside the event stream (ResourceInUse when another
/// subscription took over, InternalFailure…).
#[derive(Debug, thiserror::Error)]
#[error("{code} in the event stream: {message}")]
pub(crate) struct StreamException {
    pub(crate) code: String,
    pub(crate) message: String,
}

/// A live subscription read from its raw event stream.
pub(crate) struct EventStream {
    body: SdkBody,
    buffer: BytesMut,
    decoder: MessageFrameDecoder,
    shard_id: Arc<str>,
    stream: StreamRef,
    ended: bool,
}

impl EventStream {
    pub(crate) fn new(body: SdkBody, shard_id: Arc<str>, stream: StreamRef) -> Self {
        Self {
            body,
            buffer: BytesMut::new(),
            decoder: MessageFrameDecoder::new(),
            shard_id,
            stream,
            ended: false,
        }
    }

    /// The next whole message, `None` at the stream's end.
    async fn next_message(&mut self) -> Result<Option<Message>, ApiError> {
        loop {
            // A message starts with its total length: wait for all of it in
            // a buffer sized once, rather than one regrown (and copied) per
            // chunk of a multi-megabyte event.
            if let Some(prefix) = self.buffer.get(..4) {
                let total = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
                if total > MAX_BODY {
                    return Err(invalid(format!("an event stream message of {total} bytes")));
                }
                if self.buffer.len() >= total {
                    return match self.decoder.decode_frame(&mut self.buffer) {
                        Ok(DecodedFrame::Complete(message)) => Ok(Some(message)),
                        Ok(DecodedFrame::Incomplete) => {
                            Err(invalid("an event stream message shorter than its prelude".into()))
                        }
                        Err(e) => Err(invalid(format!("undecodable event stream message: {e}"))),
                    };
                }
                self.buffer.reserve(total - self.buffer.len());
            }
            if self.ended {
                return match self.buffer.is_empty() {
                    true => Ok(None),
                    // Cut off mid-message: the connection broke.
                    false => Err(ApiError::Transient(Arc::new(StreamException {
                        code: "Truncated".into(),
                        message: "the event stream ended inside a message".into(),
                    }))),
                };
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buffer.extend_from_slice(data);
                    }
                }
                Some(Err(error)) => return Err(ApiError::Transient(Arc::from(error))),
                None => self.ended = true,
            }
        }
    }

    fn event(&self, message: &Message) -> Result<SubscriptionEvent, ApiError> {
        let parsed = parse_records(message.payload(), &self.stream.label, &self.shard_id).map_err(invalid)?;
        let continuation = match parsed.continuation.as_deref() {
            None | Some("") => None,
            Some(text) => {
                Some(SequenceNumber::parse(text).map_err(|e| invalid(format!("ContinuationSequenceNumber: {e}")))?)
            }
        };
        Ok(SubscriptionEvent {
            records: parsed.records,
            continuation,
            child_shards: parsed.child_shards,
            millis_behind_latest: parsed.millis_behind_latest,
        })
    }

    fn exception(&self, message: &Message, code_header: &str) -> ApiError {
        let code = header(message, code_header).unwrap_or("Unknown").to_owned();
        let text = serde_json::from_slice::<serde_json::Value>(message.payload())
            .ok()
            .and_then(|body| {
                let text = body.get("message").or_else(|| body.get("Message"))?;
                text.as_str().map(str::to_owned)
            })
            .or_else(|| header(message, ":error-message").map(str::to_owned))
            .unwrap_or_default();
        let source: BoxError = Arc::new(StreamException {
            code: code.clone(),
            message: text,
        });
        match code.as_str() {
            // Another subscription to this shard took over.
            "ResourceInUseException" => ApiError::Throttled(source),
            code => sort_code(Some(code), false, None, source, OPERATION, &self.stream),
        }
    }
}

#[async_trait]
impl Subscription for EventStream {
    async fn next_event(&mut self) -> Result<Option<SubscriptionEvent>, ApiError> {
        while let Some(message) = self.next_message().await? {
            match header(&message, ":message-type") {
                Some("event") if header(&message, ":event-type") == Some("SubscribeToShardEvent") => {
                    return self.event(&message).map(Some);
                }
                // initial-response, or a kind of event newer than this code.
                Some("event") => continue,
                Some("exception") => return Err(self.exception(&message, ":exception-type")),
                Some("error") => return Err(self.exception(&message, ":error-code")),
                other => return Err(invalid(format!("an event stream message of type {other:?}"))),
            }
        }
        Ok(None)
    }
}

fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|value| value.as_str())
}

fn invalid(message: String) -> ApiError {
    ApiError::Fatal(Error::InvalidResponse {
        operation: OPERATION,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, HeaderValue};
    use bytes::Bytes;

    fn message(kind: &'static str, type_header: &'static str, name: &'static str, payload: &str) -> Vec<u8> {
        let message = Message::new(Bytes::copy_from_slice(payload.as_bytes()))
            .add_header(Header::new(":message-type", HeaderValue::String(kind.into())))
            .add_header(Header::new(type_header, HeaderValue::String(name.into())));
        let mut out = Vec::new();
        write_message_to(&message, &mut out).expect("encode");
        out
    }

    fn event(payload: &str) -> Vec<u8> {
        message("event", ":event-type", "SubscribeToShardEvent", payload)
    }

    /// A stream of `bytes` delivered in chunks of `chunk` bytes.
    fn stream(bytes: Vec<u8>, chunk: usize) -> EventStream {
        let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = bytes
            .chunks(chunk)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
        EventStream::new(
            SdkBody::from_body_1_x(body),
            Arc::from("shardId-000000000000"),
            StreamRef::unnamed("s"),
        )
    }

    const TWO_RECORDS: &str = r#"{"Records":[
        {"SequenceNumber":"101","Data":"aGVsbG8=","PartitionKey":"a","ApproximateArrivalTimestamp":1.7E9},
        {"SequenceNumber":"102","Data":"d29ybGQ=","PartitionKey":"b"}],
        "ContinuationSequenceNumber":"102","MillisBehindLatest":7}"#;

    #[tokio::test]
    async fn events_split_across_chunks_parse_into_records_skipping_the_initial_response() {
        let mut bytes = message("event", ":event-type", "initial-response", "{}");
        bytes.extend(event(TWO_RECORDS));
        bytes.extend(event(
            r#"{"Records":[],"ContinuationSequenceNumber":"102","MillisBehindLatest":0}"#,
        ));
        for chunk in [1, 7, 4096] {
            let mut events = stream(bytes.clone(), chunk);
            let first = events.next_event().await.expect("event").expect("some");
            let records: Vec<crate::Record> = first.records.collect();
            let data: Vec<&[u8]> = records.iter().map(|r| &r.data[..]).collect();
            assert_eq!(data, [&b"hello"[..], b"world"], "chunks of {chunk}");
            assert_eq!(records[1].sequence_number.as_str(), "102");
            assert_eq!(records[0].millis_behind_latest, Some(7));
            assert!(records[0].approximate_arrival_timestamp.is_some());
            assert_eq!(first.continuation.as_ref().map(SequenceNumber::as_str), Some("102"));
            let quiet = events.next_event().await.expect("event").expect("some");
            assert!(quiet.records.is_empty());
            assert!(events.next_event().await.expect("the end").is_none());
        }
    }

    #[tokio::test]
    async fn a_shard_end_event_has_no_continuation_and_names_the_children() {
        let end = r#"{"Records":[],"ContinuationSequenceNumber":null,"MillisBehindLatest":0,
            "ChildShards":[{"ShardId":"shardId-000000000002","ParentShards":["shardId-000000000000"],
            "HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"1"}}]}"#;
        let mut events = stream(event(end), 64);
        let event = events.next_event().await.expect("event").expect("some");
        assert_eq!(event.continuation, None);
        assert_eq!(event.child_shards.len(), 1);
        assert_eq!(event.child_shards[0].shard_id, "shardId-000000000002");
        assert_eq!(
            event.child_shards[0].parent_shard_id.as_deref(),
            Some("shardId-000000000000")
        );
    }

    #[tokio::test]
    async fn exception_events_are_sorted_by_their_type() {
        let cases = [
            ("ResourceInUseException", "throttled"),
            ("InternalFailureException", "transient"),
            ("ResourceNotFoundException", "fatal"),
        ];
        for (code, expected) in cases {
            let mut events = stream(message("exception", ":exception-type", code, r#"{"message":"no"}"#), 16);
            let error = events.next_event().await.expect_err(code);
            let sorted = match &error {
                ApiError::Throttled(_) => "throttled",
                ApiError::Transient(_) => "transient",
                ApiError::Fatal(_) => "fatal",
                _ => "other",
            };
            assert_eq!(sorted, expected, "{code}: {error:?}");
        }
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_message_is_transient_and_a_corrupt_one_is_invalid() {
        let mut whole = event(TWO_RECORDS);
        whole.truncate(whole.len() - 5);
        let mut cut = stream(whole, 32);
        assert!(matches!(cut.next_event().await, Err(ApiError::Transient(_))));

        let mut corrupt = event(TWO_RECORDS);
        let middle = corrupt.len() / 2;
        corrupt[middle] ^= 0x20;
        let mut corrupt = stream(corrupt, 8);
        assert!(matches!(
            corrupt.next_event().await,
            Err(ApiError::Fatal(Error::InvalidResponse { .. }))
        ));
        // A length no Kinesis event has is refused before it is buffered.
        let mut huge = stream(u32::MAX.to_be_bytes().repeat(4), 16);
        assert!(matches!(
            huge.next_event().await,
            Err(ApiError::Fatal(Error::InvalidResponse { .. }))
        ));
        let mut bad_json = stream(event("{not json"), 8);
        assert!(matches!(
            bad_json.next_event().await,
            Err(ApiError::Fatal(Error::InvalidResponse { .. }))
        ));
    }
}
