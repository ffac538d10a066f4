//! GetRecords without the SDK's per-call pipeline.
//!
//! A call through the SDK's orchestrator costs about half a millisecond of
//! CPU before any record is read (layered config, runtime plugins, a dozen
//! interceptors, endpoint and identity resolution, then signing), and an
//! idle consumer pays that five times a second per shard. So the first
//! GetRecords call goes through the SDK, and [`Learn`] reads off it what the
//! SDK decided: the connector of the client's own HTTP client (its TLS,
//! proxy and timeouts), the endpoint, the SigV4 region and service name,
//! headers, and the identity cache with its resolver. Later calls are built,
//! signed and sent by [`Route`] with those same parts.
//!
//! A client with interceptors of its own never takes this path, so that
//! they still see every call; nor does anything the SDK did not sign with
//! plain SigV4.

use std::sync::{Arc, OnceLock, Weak};
use std::time::SystemTime;

use aws_sdk_kinesis::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4::SigningParams;
use aws_smithy_runtime_api::client::auth::AuthSchemeId;
use aws_smithy_runtime_api::client::http::{HttpClient, HttpConnector, HttpConnectorSettings, SharedHttpConnector};
use aws_smithy_runtime_api::client::identity::{ResolveCachedIdentity, SharedIdentityResolver};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::GetIdentityResolver;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use aws_smithy_types::timeout::TimeoutConfig;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http_body_util::BodyExt;

use super::page::Chunks;
use super::{sort_code, ApiError, StreamRef};
use crate::clock::Skew;
use crate::error::BoxError;
use crate::Error;

/// The headers a learned request carries over; the signer adds the rest.
const CARRIED: [&str; 4] = ["content-type", "x-amz-target", "user-agent", "x-amz-user-agent"];

/// Where a [`Route`] is put once learned; shared by every shard's calls.
pub(crate) type RouteCell = Arc<OnceLock<Route>>;

/// How to make a GetRecords call, as the SDK made one.
pub(crate) struct Route {
    connector: SharedHttpConnector,
    components: RuntimeComponents,
    resolver: SharedIdentityResolver,
    uri: String,
    region: String,
    service: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    skew: Arc<Skew>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("uri", &self.uri)
            .field("region", &self.region)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// A reply other than 2xx, as Kinesis's JSON protocol describes it.
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status}: {}: {}", code.as_deref().unwrap_or("no error code"), message.as_deref().unwrap_or("no message"))]
pub(crate) struct ServiceError {
    pub(crate) status: u16,
    pub(crate) code: Option<String>,
    pub(crate) message: Option<String>,
}

impl ServiceError {
    fn parse(status: u16, error_type: Option<&str>, body: &[u8]) -> Self {
        // Separate fields, not serde aliases: a body may carry both
        // spellings, and aliases of one field make that a duplicate.
        #[derive(serde::Deserialize)]
        struct Body<'a> {
            #[serde(rename = "__type", borrow)]
            kind: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow)]
            code: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow)]
            message: Option<std::borrow::Cow<'a, str>>,
            #[serde(rename = "Message", borrow)]
            upper_message: Option<std::borrow::Cow<'a, str>>,
        }
        let parsed: Option<Body<'_>> = serde_json::from_slice(body).ok();
        let (kind, message) = parsed
            .map(|b| (b.kind.or(b.code), b.message.or(b.upper_message)))
            .unwrap_or_default();
        let code = error_type.or(kind.as_deref()).map(sanitize_code);
        Self {
            status,
            code,
            message: message.map(|m| m.into_owned()),
        }
    }
}

/// `aws.protocols#awsJson1_1` error codes may carry a namespace before `#`
/// and a URI after `:`; the code is what is between.
fn sanitize_code(raw: &str) -> String {
    let code = raw.split(':').next().unwrap_or(raw);
    code.rsplit('#').next().unwrap_or(code).trim().to_owned()
}

impl Route {
    /// What the SDK's signed request shows, or `None` where it is not a plain
    /// SigV4 GetRecords call over the SDK's own HTTP client.
    fn learn(request: &HttpRequest, components: &RuntimeComponents, cfg: &ConfigBag, skew: &Arc<Skew>) -> Option<Self> {
        let headers = request.headers();
        if !headers.get("x-amz-target")?.ends_with(".GetRecords") {
            return None;
        }
        // AWS4-HMAC-SHA256 Credential=KEY/DATE/REGION/SERVICE/aws4_request, ...
        let credential = headers
            .get("authorization")?
            .strip_prefix("AWS4-HMAC-SHA256 Credential=")?;
        let scope: Vec<&str> = credential.split(',').next()?.split('/').collect();
        let [_, _, region, service, "aws4_request"] = scope.as_slice() else {
            return None;
        };
        let carried = CARRIED
            .iter()
            .filter_map(|name| {
                let value = HeaderValue::from_str(headers.get(*name)?).ok()?;
                Some((HeaderName::from_static(name), value))
            })
            .collect();
        let resolver = components.identity_resolver(AuthSchemeId::new("sigv4"))?;
        let mut settings = HttpConnectorSettings::builder();
        if let Some(timeouts) = cfg.load::<TimeoutConfig>() {
            settings.set_connect_timeout(timeouts.connect_timeout());
            settings.set_read_timeout(timeouts.read_timeout());
        }
        let connector = components.http_client()?.http_connector(&settings.build(), components);
        Some(Self {
            connector,
            components: components.clone(),
            resolver,
            uri: request.uri().to_owned(),
            region: (*region).to_owned(),
            service: (*service).to_owned(),
            headers: carried,
            skew: Arc::clone(skew),
        })
    }

    /// One GetRecords call: the response body of a success, or the error.
    pub(crate) async fn get_records(&self, stream: &StreamRef, iterator: &str, limit: i32) -> Result<Chunks, ApiError> {
        #[derive(serde::Serialize)]
        struct Input<'a> {
            #[serde(rename = "ShardIterator")]
            shard_iterator: &'a str,
            #[serde(rename = "Limit")]
            limit: i32,
        }
        let body = serde_json::to_vec(&Input {
            shard_iterator: iterator,
            limit,
        })
        .map_err(|e| unusable("serialised", e))?;
        let mut request = http::Request::builder().method("POST").uri(self.uri.as_str());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let mut request = request
            .header(CONTENT_LENGTH, body.len())
            .body(())
            .map_err(|e| unusable("built", e))?;
        let signed_at = self.sign(&mut request, &body).await?;
        let request = HttpRequest::try_from(request.map(|()| SdkBody::from(body))).map_err(|e| unusable("built", e))?;

        let sent = self.now();
        let response = self
            .connector
            .call(request)
            .await
            .map_err(|e| ApiError::Transient(Arc::new(e)))?;
        let date = response.headers().get("date");
        self.skew.measure(date, sent, self.now());
        // Off by what this call was signed with: another shard's answer may
        // have moved the shared skew while this call was on its way.
        let off = date.and_then(crate::clock::server_time).map(|server| {
            server
                .duration_since(signed_at)
                .unwrap_or_else(|behind| behind.duration())
        });
        let status = response.status().as_u16();
        let error_type = response.headers().get("x-amzn-errortype").map(str::to_owned);
        let mut body = response.into_body();
        let mut chunks = Chunks::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::Transient(Arc::<dyn std::error::Error + Send + Sync>::from(e)))?;
            if let Ok(data) = frame.into_data() {
                chunks.push(data).map_err(ApiError::Fatal)?;
            }
        }
        if (200..300).contains(&status) {
            return Ok(chunks);
        }
        let error = ServiceError::parse(status, error_type.as_deref(), &chunks.joined());
        let code = error.code.clone();
        Err(sort_code(
            code.as_deref(),
            status >= 500,
            off,
            Arc::new(error),
            "GetRecords",
            stream,
        ))
    }

    /// Signs as the SDK signs Kinesis calls (SigV4 in headers, no payload
    /// hash header), with an identity from the SDK's own cache.
    /// Returns the time it signed at.
    async fn sign(&self, request: &mut http::Request<()>, body: &[u8]) -> Result<SystemTime, ApiError> {
        let identity = self
            .components
            .identity_cache()
            .resolve_cached_identity(self.resolver.clone(), &self.components, &ConfigBag::base())
            .await
            .map_err(|e| ApiError::Credentials(BoxError::from(e)))?;
        let time = self.skew.apply(self.now());
        let params = SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(&self.service)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| unusable("signed", e))?
            .into();
        let headers = request
            .headers()
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        let signable = SignableRequest::new("POST", self.uri.as_str(), headers, SignableBody::Bytes(body))
            .map_err(|e| unusable("signed", e))?;
        let (instructions, _signature) = sign(signable, &params).map_err(|e| unusable("signed", e))?.into_parts();
        instructions.apply_to_request_http1x(request);
        Ok(time)
    }
}

impl Route {
    fn now(&self) -> SystemTime {
        now(&self.components)
    }
}

fn now(components: &RuntimeComponents) -> SystemTime {
    components
        .time_source()
        .map_or_else(SystemTime::now, |source| source.now())
}

/// A request that could not be made from what was learned: retrying the
/// same cannot help.
fn unusable(what: &str, error: impl std::fmt::Display) -> ApiError {
    ApiError::Fatal(Error::config(format!(
        "a GetRecords request could not be {what}: {error}"
    )))
}

/// Learns a [`Route`] from the SDK's GetRecords request as it is sent, and
/// the clock skew from its answer.
#[derive(Debug)]
pub(crate) struct Learn {
    /// Weak: the route keeps the call's runtime components, which hold this
    /// interceptor; a strong reference would make a cycle that outlives the
    /// consumer, with its HTTP connections.
    pub(crate) into: Weak<OnceLock<Route>>,
    pub(crate) skew: Arc<Skew>,
}

/// When the learnt request was sent, for measuring the skew.
#[derive(Debug, Clone, Copy)]
struct SentAt(SystemTime);

impl Storable for SentAt {
    type Storer = StoreReplace<Self>;
}

impl Intercept for Learn {
    fn name(&self) -> &'static str {
        "kcpy::Learn"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_kinesis::error::BoxError> {
        let Some(into) = self.into.upgrade() else {
            return Ok(());
        };
        if into.get().is_none() {
            if let Some(route) = Route::learn(context.request(), runtime_components, cfg, &self.skew) {
                tracing::debug!(?route, "GetRecords calls go direct from now on");
                let _ = into.set(route);
            }
        }
        cfg.interceptor_state().store_put(SentAt(now(runtime_components)));
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_kinesis::error::BoxError> {
        if let Some(SentAt(sent)) = cfg.load::<SentAt>().copied() {
            let date = context.response().headers().get("date");
            self.skew.measure(date, sent, now(runtime_components));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_lose_their_namespace_and_uri() {
        assert_eq!(
            sanitize_code("com.amazonaws.kinesis.v20131202#ExpiredIteratorException"),
            "ExpiredIteratorException"
        );
        assert_eq!(
            sanitize_code("ValidationException:http://internal.amazon.com/coral/"),
            "ValidationException"
        );
        assert_eq!(sanitize_code("InternalFailure"), "InternalFailure");
    }

    #[test]
    fn an_error_reply_gives_its_code_from_the_header_before_the_body() {
        let body = br#"{"__type":"LimitExceededException","message":"slow down"}"#;
        let error = ServiceError::parse(400, Some("ProvisionedThroughputExceededException"), body);
        assert_eq!(error.code.as_deref(), Some("ProvisionedThroughputExceededException"));
        assert_eq!(error.message.as_deref(), Some("slow down"));

        let error = ServiceError::parse(400, None, body);
        assert_eq!(error.code.as_deref(), Some("LimitExceededException"));
    }

    #[test]
    fn an_error_reply_with_both_spellings_of_code_and_message_is_still_read() {
        let body = br#"{"__type":"ExpiredIteratorException","code":"ExpiredIteratorException","message":"old","Message":"old"}"#;
        let error = ServiceError::parse(400, None, body);
        assert_eq!(error.code.as_deref(), Some("ExpiredIteratorException"));
        assert_eq!(error.message.as_deref(), Some("old"));

        let error = ServiceError::parse(400, None, br#"{"code":"AccessDeniedException","Message":"no"}"#);
        assert_eq!(error.code.as_deref(), Some("AccessDeniedException"));
        assert_eq!(error.message.as_deref(), Some("no"));
    }

    #[test]
    fn an_error_reply_that_is_not_json_has_no_code() {
        let error = ServiceError::parse(502, None, b"<html>Bad Gateway</html>");
        assert_eq!(error.code, None);
        assert_eq!(error.to_string(), "HTTP 502: no error code: no message");
    }
}
