//! An HTTP client that records every request a Kinesis client sends, at the
//! last point before the wire, whichever way the request was made.

use std::sync::{Arc, Mutex};

use aws_sdk_kinesis::config::http::HttpRequest;
use aws_sdk_kinesis::config::{RuntimeComponents, SharedHttpClient};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};

/// One request as sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The operation, from `x-amz-target`.
    pub operation: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Sent {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Shared log of what a [`Recording`] client sent.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Sent>>>);

impl Log {
    /// How many clients and connectors still record into this log, besides
    /// the caller's handle.
    pub fn recorders(&self) -> usize {
        Arc::strong_count(&self.0) - 1
    }

    /// Whether nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.0.lock().expect("lock").is_empty()
    }

    pub fn of(&self, operation: &str) -> Vec<Sent> {
        let sent = self.0.lock().expect("lock");
        sent.iter().filter(|s| s.operation == operation).cloned().collect()
    }
}

/// The SDK's default HTTPS client, recording into a [`Log`].
#[derive(Debug)]
pub struct Recording {
    inner: SharedHttpClient,
    log: Log,
}

impl Recording {
    pub fn new(log: &Log) -> Self {
        Self {
            inner: aws_smithy_http_client::Builder::new()
                .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                .build_https(),
            log: log.clone(),
        }
    }
}

impl HttpClient for Recording {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(RecordingConnector {
            inner: self.inner.http_connector(settings, components),
            log: self.log.clone(),
        })
    }
}

#[derive(Debug)]
struct RecordingConnector {
    inner: SharedHttpConnector,
    log: Log,
}

impl HttpConnector for RecordingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        let operation = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-target"))
            .and_then(|(_, v)| v.rsplit('.').next())
            .unwrap_or_default()
            .to_owned();
        self.log.0.lock().expect("lock").push(Sent {
            operation,
            uri: request.uri().to_owned(),
            headers,
            body: request.body().bytes().unwrap_or_default().to_vec(),
        });
        self.inner.call(request)
    }
}
