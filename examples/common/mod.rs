//! What every example needs: a Kinesis client.

use kcpy::aws_config::{self, BehaviorVersion, Region};
use kcpy::aws_sdk_kinesis::config::Credentials;
use kcpy::aws_sdk_kinesis::Client;

/// A client for real AWS (credentials and region from the environment), or
/// for an emulator when `KCPY_KINESIS_ENDPOINT` is set.
pub(crate) async fn kinesis_client() -> Client {
    let mut config = aws_config::defaults(BehaviorVersion::latest());
    if let Ok(endpoint) = std::env::var("KCPY_KINESIS_ENDPOINT") {
        config = config
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "emulator"));
    }
    Client::new(&config.load().await)
}

/// The stream named by `KCPY_STREAM`.
pub(crate) fn stream_name() -> Result<String, String> {
    std::env::var("KCPY_STREAM").map_err(|_| "set KCPY_STREAM to the stream to read".to_owned())
}
