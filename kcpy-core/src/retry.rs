//! Retrying: jittered exponential backoff, and the retry policy of the calls
//! `build` makes.

use std::future::Future;
use std::time::Duration;

use crate::config::Settings;
use crate::kinesis::{within, ApiError, StreamRef};
use crate::Error;

/// Jittered exponential backoff ("full jitter").
#[derive(Debug)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(settings: &Settings) -> Self {
        Self {
            base: settings.backoff_base,
            max: settings.backoff_max,
            attempt: 0,
        }
    }

    /// The delay before the next retry: random in `[ceiling/2, ceiling]`, where
    /// the ceiling doubles per attempt up to the maximum.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Runs a call `build` makes, retrying what passes up to `startup_retries`
/// times: the user is waiting, so a fault that lasts fails the build.
pub(crate) async fn retry_startup<T, F, Fut>(
    operation: &'static str,
    stream: &StreamRef,
    settings: &Settings,
    mut call: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let mut backoff = Backoff::new(settings);
    let mut skew_retried = false;
    loop {
        match within(settings.request_timeout, call()).await {
            Ok(value) => return Ok(value),
            // The refusal taught the client Kinesis's clock: one retry at once.
            Err(ApiError::ClockSkew(source)) if !std::mem::replace(&mut skew_retried, true) => {
                tracing::warn!(operation, error = %source, "a signature was refused for this machine's clock; retrying");
            }
            Err(ApiError::ClockSkew(source)) => {
                return Err(Error::AccessDenied {
                    stream: stream.configured.clone(),
                    source,
                });
            }
            Err(ApiError::Fatal(error)) => return Err(error),
            Err(ApiError::ExpiredIterator) => {
                return Err(Error::InvalidResponse {
                    operation,
                    message: "ExpiredIteratorException".into(),
                })
            }
            Err(ApiError::Credentials(source)) if backoff.attempts() >= settings.startup_retries => {
                return Err(Error::Credentials {
                    stream: stream.configured.clone(),
                    source,
                });
            }
            Err(ApiError::Throttled(source) | ApiError::Transient(source) | ApiError::Credentials(source)) => {
                if backoff.attempts() >= settings.startup_retries {
                    return Err(Error::Unavailable { operation, source });
                }
                let delay = backoff.next_delay();
                tracing::warn!(operation, error = %source, ?delay, "retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap_and_resets() {
        let settings = Settings {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..Settings::default()
        };
        let mut backoff = Backoff::new(&settings);
        let first = backoff.next_delay();
        assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
        for _ in 0..30 {
            let delay = backoff.next_delay();
            assert!(delay <= Duration::from_secs(1), "{delay:?}");
        }
        let late = backoff.next_delay();
        assert!(late >= Duration::from_millis(500), "{late:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
