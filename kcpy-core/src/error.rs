//! The consumer's error type.

use std::sync::Arc;
use std::time::Duration;

use crate::CheckpointError;

/// A boxed, shareable error source.
pub type BoxError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why the consumer could not start, or why its stream ended early.
///
/// Transient faults (throttling, 5xx, connection resets, expired iterators)
/// are retried inside the consumer and never surface here once it runs.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration given to the builder is not usable.
    #[error("invalid consumer configuration: {message}")]
    InvalidConfig {
        /// What is wrong.
        message: String,
    },
    /// The stream (or one of its shards) does not exist.
    #[error("stream {stream:?} was not found")]
    StreamNotFound {
        /// The stream name or ARN as configured.
        stream: String,
        /// What Kinesis answered.
        #[source]
        source: BoxError,
    },
    /// The enhanced fan-out consumer (see
    /// [`ConsumerBuilder::fan_out`](crate::ConsumerBuilder::fan_out)) does
    /// not exist, was deleted, or belongs to another stream.
    #[error("enhanced fan-out consumer {consumer:?} was not found")]
    ConsumerNotFound {
        /// The consumer's name or ARN as configured.
        consumer: String,
        /// What Kinesis answered, or why it does not fit the stream.
        #[source]
        source: BoxError,
    },
    /// The credentials in use may not read the stream.
    #[error("access to stream {stream:?} was denied")]
    AccessDenied {
        /// The stream name or ARN as configured.
        stream: String,
        /// What Kinesis answered.
        #[source]
        source: BoxError,
    },
    /// No credentials could be had for the stream: the credentials provider
    /// (an assumed role, the instance metadata service…) kept failing for
    /// `credentials_timeout`. Retrying later may succeed.
    #[error("no credentials could be had to read stream {stream:?}")]
    Credentials {
        /// The stream name or ARN as configured.
        stream: String,
        /// The provider's last error.
        #[source]
        source: BoxError,
    },
    /// The stream is encrypted and its KMS key cannot be used.
    #[error("the KMS key of stream {stream:?} cannot be used")]
    Kms {
        /// The stream name or ARN as configured.
        stream: String,
        /// What Kinesis answered.
        #[source]
        source: BoxError,
    },
    /// Kinesis rejected a request in a way retrying cannot fix.
    #[error("Kinesis rejected {operation} for stream {stream:?}")]
    Kinesis {
        /// The API operation, e.g. `GetShardIterator`.
        operation: &'static str,
        /// The stream name or ARN as configured.
        stream: String,
        /// What Kinesis answered.
        #[source]
        source: BoxError,
    },
    /// Kinesis kept failing with transient errors while the consumer was
    /// starting. Retrying later may succeed.
    #[error("Kinesis stayed unavailable for {operation} while the consumer started")]
    Unavailable {
        /// The API operation, e.g. `ListShards`.
        operation: &'static str,
        /// The last error seen.
        #[source]
        source: BoxError,
    },
    /// Kinesis returned data the consumer cannot interpret.
    #[error("Kinesis returned an invalid response to {operation}: {message}")]
    InvalidResponse {
        /// The API operation.
        operation: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The checkpoint store failed and retrying did not help, or it holds
    /// something the consumer must not overwrite.
    #[error("checkpoint store failed")]
    Checkpoint(#[from] CheckpointError),
    /// A record passed to [`Checkpointer::checkpoint`](crate::Checkpointer::checkpoint)
    /// was not delivered by this consumer, or its shard is no longer read.
    #[error("record {sequence_number} of shard {shard_id} was not delivered by this consumer")]
    UnknownRecord {
        /// The record's shard.
        shard_id: String,
        /// The record's sequence number.
        sequence_number: String,
    },
    /// The handler given to
    /// [`Consumer::for_each_by_key`](crate::Consumer::for_each_by_key)
    /// returned an error or panicked on a record. That record's checkpoint,
    /// and its shard's beyond it, were not written: after a restart the
    /// record is delivered again.
    #[error("the handler failed on record {sequence_number} of shard {shard_id}")]
    Handler {
        /// The record's shard.
        shard_id: String,
        /// The record's sequence number.
        sequence_number: String,
        /// What the handler returned, or its panic.
        #[source]
        source: BoxError,
    },
    /// The consumer has stopped, so the call cannot be carried out.
    #[error("the consumer has stopped")]
    Closed,
    /// A task of the consumer panicked — in code of a checkpoint or lease
    /// store, say. The consumer stops rather than go on without that task.
    #[error("the consumer's {task} panicked: {message}")]
    Panicked {
        /// Which task: `shard reader`, `checkpoint writer`, `lease
        /// coordinator`, `shard sync` or `checkpoint load`.
        task: &'static str,
        /// The panic's message, when it had one.
        message: String,
    },
    /// Shutdown did not finish flushing checkpoints within its deadline. The
    /// records whose checkpoints were not written will be delivered again.
    #[error("shutdown did not finish within {deadline:?}; some checkpoints were not written")]
    ShutdownTimedOut {
        /// The configured deadline.
        deadline: Duration,
    },
}

impl Error {
    /// Whether the same operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::ShutdownTimedOut { .. } | Error::Credentials { .. } => true,
            Error::Checkpoint(e) => e.is_retryable(),
            _ => false,
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::InvalidConfig {
            message: message.into(),
        }
    }
}

/// A panic's message, when it had one.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|m| (*m).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Runs `future`, turning a panic inside it into [`Error::Panicked`]: a
/// background task that panics must end the stream, not vanish.
pub(crate) async fn catch_panic<F: std::future::Future>(task: &'static str, future: F) -> Result<F::Output, Error> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| {
            let message = panic_message(&*payload);
            tracing::error!(task, %message, "a consumer task panicked");
            Error::Panicked { task, message }
        })
}
