//! The seam between the consumer and Kinesis: the three calls it makes, with
//! errors already sorted into what to do about them. The SDK client implements
//! it; unit tests script it to produce faults the emulator cannot.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;

use crate::direct::{Learn, RouteCell};
use crate::error::BoxError;
use crate::records::{parse_page, CapturePage, Slot};
use crate::{Error, Record, SequenceNumber};

/// The stream as configured, and its name for checkpoint keys.
#[derive(Debug, Clone)]
pub(crate) struct StreamRef {
    /// The name or ARN as the user gave it.
    pub(crate) configured: String,
    pub(crate) name: String,
    pub(crate) arn: Option<String>,
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
        })
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
    AfterSequence(SequenceNumber),
}

#[derive(Debug, Default)]
pub(crate) struct RecordsPage {
    pub(crate) records: Vec<Record>,
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

/// The real thing.
pub(crate) struct SdkKinesis {
    client: aws_sdk_kinesis::Client,
    /// How GetRecords calls go once the first one went through the SDK.
    route: RouteCell,
    /// Kinesis's clock as the direct calls see it.
    skew: Arc<crate::clock::Skew>,
    /// Whether to learn that route: not when the client has interceptors of
    /// its own, which must see every call.
    direct: bool,
}

impl SdkKinesis {
    /// The consumer retries failed calls itself, within each shard's call
    /// budget; retries inside the SDK would spend that budget behind its back.
    /// So the user's client is cloned once with the SDK's retries off.
    pub(crate) fn new(client: &aws_sdk_kinesis::Client) -> Self {
        let config = client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build();
        let direct = config.interceptors().next().is_none();
        Self {
            client: aws_sdk_kinesis::Client::from_conf(config),
            route: RouteCell::default(),
            skew: Arc::default(),
            direct,
        }
    }
}

#[async_trait]
impl KinesisApi for SdkKinesis {
    async fn list_shards(&self, stream: &StreamRef, next_token: Option<String>) -> Result<ShardPage, ApiError> {
        // With a NextToken, Kinesis rejects any stream identifier.
        let request = match next_token {
            Some(token) => self.client.list_shards().next_token(token),
            None => match &stream.arn {
                Some(arn) => self.client.list_shards().stream_arn(arn),
                None => self.client.list_shards().stream_name(&stream.name),
            }
            .max_results(1000),
        };
        let output = request.send().await.map_err(|e| classify(e, "ListShards", stream))?;
        let shards = output
            .shards
            .unwrap_or_default()
            .into_iter()
            .map(|shard| ShardInfo {
                ending_sequence_number: shard
                    .sequence_number_range
                    .and_then(|range| range.ending_sequence_number),
                shard_id: shard.shard_id,
                parent_shard_id: shard.parent_shard_id,
                adjacent_parent_shard_id: shard.adjacent_parent_shard_id,
            })
            .collect();
        Ok(ShardPage {
            shards,
            next_token: output.next_token,
        })
    }

    async fn get_shard_iterator(
        &self,
        stream: &StreamRef,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<String, ApiError> {
        let mut request = self.client.get_shard_iterator().shard_id(shard_id);
        request = match &stream.arn {
            Some(arn) => request.stream_arn(arn),
            None => request.stream_name(&stream.name),
        };
        request = match position {
            IteratorPosition::TrimHorizon => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
            IteratorPosition::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            IteratorPosition::AtTimestamp(at) => request
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from(*at)),
            IteratorPosition::AfterSequence(seq) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq.as_str()),
        };
        let output = request
            .send()
            .await
            .map_err(|e| classify(e, "GetShardIterator", stream))?;
        output.shard_iterator.ok_or_else(|| {
            ApiError::Fatal(Error::InvalidResponse {
                operation: "GetShardIterator",
                message: "no ShardIterator in the response".into(),
            })
        })
    }

    async fn get_records(
        &self,
        stream: &StreamRef,
        shard_id: &Arc<str>,
        iterator: &str,
        limit: i32,
    ) -> Result<RecordsPage, ApiError> {
        if let Some(route) = self.route.get() {
            let body = route.get_records(stream, iterator, limit).await?;
            return parse_page(&body, shard_id).map_err(ApiError::Fatal);
        }
        let slot = Slot::default();
        let mut request = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit)
            .customize()
            .interceptor(CapturePage {
                slot: Arc::clone(&slot),
            });
        if self.direct {
            request = request.interceptor(Learn {
                into: Arc::downgrade(&self.route),
                skew: Arc::clone(&self.skew),
            });
        }
        let output = request.send().await.map_err(|e| classify(e, "GetRecords", stream))?;
        let captured = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(body) = captured {
            return parse_page(&body.map_err(ApiError::Fatal)?, shard_id).map_err(ApiError::Fatal);
        }
        // Not captured (the interceptor did not run): the SDK parsed it.
        let records = output
            .records
            .into_iter()
            .map(|record| {
                let sequence_number = SequenceNumber::try_from(record.sequence_number).map_err(|e| {
                    ApiError::Fatal(Error::InvalidResponse {
                        operation: "GetRecords",
                        message: e.to_string(),
                    })
                })?;
                Ok(Record {
                    data: bytes::Bytes::from(record.data.into_inner()),
                    partition_key: record.partition_key.unwrap_or_default(),
                    sequence_number,
                    shard_id: Arc::clone(shard_id),
                    approximate_arrival_timestamp: record
                        .approximate_arrival_timestamp
                        .and_then(|at| SystemTime::try_from(at).ok()),
                    explicit_hash_key: None,
                    millis_behind_latest: output.millis_behind_latest,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let child_shards = output
            .child_shards
            .unwrap_or_default()
            .into_iter()
            .map(|child| {
                let mut parents = child.parent_shards.into_iter();
                ShardInfo {
                    shard_id: child.shard_id,
                    parent_shard_id: parents.next(),
                    adjacent_parent_shard_id: parents.next(),
                    ending_sequence_number: None,
                }
            })
            .collect();
        Ok(RecordsPage {
            records,
            next_iterator: output.next_shard_iterator,
            millis_behind_latest: output.millis_behind_latest,
            child_shards,
        })
    }
}

/// Sorts an SDK error into retry, renew or stop.
pub(crate) fn classify<E>(error: SdkError<E, HttpResponse>, operation: &'static str, stream: &StreamRef) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = error.code().map(str::to_owned);
    let server_fault = error.raw_response().is_some_and(|raw| raw.status().is_server_error());
    // The SDK signed at local time plus the skew it had learned, which is
    // not exposed; local time is near enough to tell minutes from seconds.
    let off = error
        .raw_response()
        .and_then(|raw| crate::clock::server_time(raw.headers().get("date")?))
        .map(|server| {
            let now = SystemTime::now();
            server.duration_since(now).unwrap_or_else(|behind| behind.duration())
        });
    let transport_fault = matches!(
        error,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
    );
    let credentials = is_credentials_error(&error);
    let source: BoxError = Arc::new(error);
    if credentials {
        return ApiError::Credentials(source);
    }
    if transport_fault {
        return ApiError::Transient(source);
    }
    sort_code(code.as_deref(), server_fault, off, source, operation, stream)
}

/// Whether `error` (or what caused it) is a failure to get credentials: the
/// SDK reports one as a dispatch failure, like a connection fault.
pub(crate) fn is_credentials_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        next = error.source();
    }
    false
}

/// The failures of one task that are retried only for a while: credential
/// failures until they have lasted `limit` without a success in between, a
/// clock-skew refusal once.
#[derive(Debug)]
pub(crate) struct FaultWatch {
    since: Option<tokio::time::Instant>,
    limit: std::time::Duration,
    skew_retried: bool,
}

impl FaultWatch {
    pub(crate) fn new(limit: std::time::Duration) -> Self {
        Self {
            since: None,
            limit,
            skew_retried: false,
        }
    }

    /// `result` with such a failure made transient, or fatal once it is
    /// past its allowance.
    pub(crate) fn sort<T>(&mut self, result: Result<T, ApiError>, stream: &StreamRef) -> Result<T, ApiError> {
        match result {
            Err(ApiError::Credentials(source)) => {
                let since = *self.since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= self.limit {
                    Err(ApiError::Fatal(Error::Credentials {
                        stream: stream.configured.clone(),
                        source,
                    }))
                } else {
                    Err(ApiError::Transient(source))
                }
            }
            Err(ApiError::ClockSkew(source)) => {
                if std::mem::replace(&mut self.skew_retried, true) {
                    Err(ApiError::Fatal(Error::AccessDenied {
                        stream: stream.configured.clone(),
                        source,
                    }))
                } else {
                    tracing::warn!(error = %source, "a signature was refused for this machine's clock; signing at Kinesis's time and retrying");
                    Err(ApiError::Transient(source))
                }
            }
            Ok(value) => {
                self.since = None;
                self.skew_retried = false;
                Ok(value)
            }
            other => other,
        }
    }
}

/// Sorts an error reply from Kinesis, by its error code, into retry, renew
/// or stop; `off` is how far the call's signing time was from the server's
/// clock, where the reply showed it.
pub(crate) fn sort_code(
    code: Option<&str>,
    server_fault: bool,
    off: Option<std::time::Duration>,
    source: BoxError,
    operation: &'static str,
    stream: &StreamRef,
) -> ApiError {
    if crate::clock::is_skew_refusal(code, off) {
        return ApiError::ClockSkew(source);
    }
    let stream = stream.configured.clone();
    match code {
        Some("ExpiredIteratorException") => ApiError::ExpiredIterator,
        Some(
            "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "KMSThrottlingException"
            | "ThrottlingException"
            | "Throttling"
            | "RequestLimitExceeded",
        ) => ApiError::Throttled(source),
        Some("ResourceNotFoundException") => ApiError::Fatal(Error::StreamNotFound { stream, source }),
        Some("AccessDeniedException" | "UnrecognizedClientException" | "InvalidSignatureException") => {
            ApiError::Fatal(Error::AccessDenied { stream, source })
        }
        Some(
            "KMSDisabledException"
            | "KMSInvalidStateException"
            | "KMSAccessDeniedException"
            | "KMSNotFoundException"
            | "KMSOptInRequired",
        ) => ApiError::Fatal(Error::Kms { stream, source }),
        Some("InternalFailure" | "InternalFailureException" | "ServiceUnavailable" | "ServiceUnavailableException") => {
            ApiError::Transient(source)
        }
        _ if server_fault => ApiError::Transient(source),
        _ => ApiError::Fatal(Error::Kinesis {
            operation,
            stream,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use aws_credential_types::provider::error::CredentialsError;
    use aws_sdk_kinesis::operation::get_records::GetRecordsError;
    use aws_smithy_runtime_api::client::result::ConnectorError;

    use super::*;

    #[test]
    fn a_credentials_failure_dispatched_by_the_sdk_is_told_apart_from_a_connection_fault() {
        let stream = StreamRef::parse("s").expect("valid");
        let denied = ConnectorError::other(Box::new(CredentialsError::provider_error("AssumeRole denied")), None);
        let error: SdkError<GetRecordsError, HttpResponse> = SdkError::dispatch_failure(denied);
        assert!(matches!(
            classify(error, "GetRecords", &stream),
            ApiError::Credentials(_)
        ));
        let reset = ConnectorError::io(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        let error: SdkError<GetRecordsError, HttpResponse> = SdkError::dispatch_failure(reset);
        assert!(matches!(classify(error, "GetRecords", &stream), ApiError::Transient(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn credential_failures_are_transient_until_they_have_lasted_the_limit() {
        let stream = StreamRef::parse("s").expect("valid");
        let mut watch = FaultWatch::new(std::time::Duration::from_secs(60));
        let failed = || Err::<(), _>(ApiError::Credentials(Arc::new(std::io::Error::other("denied"))));
        assert!(matches!(watch.sort(failed(), &stream), Err(ApiError::Transient(_))));
        tokio::time::advance(std::time::Duration::from_secs(59)).await;
        assert!(matches!(watch.sort(failed(), &stream), Err(ApiError::Transient(_))));
        assert!(watch.sort(Ok(()), &stream).is_ok(), "a success resets the clock");
        tokio::time::advance(std::time::Duration::from_secs(59)).await;
        assert!(matches!(watch.sort(failed(), &stream), Err(ApiError::Transient(_))));
        tokio::time::advance(std::time::Duration::from_secs(61)).await;
        assert!(matches!(
            watch.sort(failed(), &stream),
            Err(ApiError::Fatal(Error::Credentials { .. }))
        ));
    }

    #[test]
    fn a_clock_skew_refusal_is_retried_once_then_denies_access_until_a_success() {
        let stream = StreamRef::parse("s").expect("valid");
        let mut watch = FaultWatch::new(std::time::Duration::from_secs(60));
        let refused = || {
            Err::<(), _>(ApiError::ClockSkew(Arc::new(std::io::Error::other(
                "Signature expired",
            ))))
        };
        assert!(matches!(watch.sort(refused(), &stream), Err(ApiError::Transient(_))));
        assert!(matches!(
            watch.sort(refused(), &stream),
            Err(ApiError::Fatal(Error::AccessDenied { .. }))
        ));
        let mut watch = FaultWatch::new(std::time::Duration::from_secs(60));
        assert!(matches!(watch.sort(refused(), &stream), Err(ApiError::Transient(_))));
        assert!(watch.sort(Ok(()), &stream).is_ok());
        assert!(
            matches!(watch.sort(refused(), &stream), Err(ApiError::Transient(_))),
            "a success in between allows another retry"
        );
    }

    #[test]
    fn a_refused_signature_is_a_clock_problem_only_when_the_signing_time_was_far_off() {
        let stream = StreamRef::parse("s").expect("valid");
        let source = || -> BoxError { Arc::new(std::io::Error::other("refused")) };
        let far = Some(std::time::Duration::from_secs(600));
        let near = Some(std::time::Duration::from_secs(1));
        let code = Some("InvalidSignatureException");
        assert!(matches!(
            sort_code(code, false, far, source(), "GetRecords", &stream),
            ApiError::ClockSkew(_)
        ));
        assert!(matches!(
            sort_code(code, false, near, source(), "GetRecords", &stream),
            ApiError::Fatal(Error::AccessDenied { .. })
        ));
        assert!(matches!(
            sort_code(code, false, None, source(), "GetRecords", &stream),
            ApiError::Fatal(Error::AccessDenied { .. })
        ));
    }
}
