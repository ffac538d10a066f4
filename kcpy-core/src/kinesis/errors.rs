//! Sorting Kinesis's failures into what to do about them: retry, renew the
//! iterator, or stop.

use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};

use super::{ApiError, StreamRef};
use crate::error::BoxError;
use crate::Error;

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
