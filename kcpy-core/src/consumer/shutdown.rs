//! Stopping: the shutdown handle, the closing phase that writes the last
//! checkpoints within the deadline, and what dropping the consumer does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::SelectAll;
use tokio_util::task::AbortOnDropHandle;

use super::part::Part;
use crate::signal::Fatal;
use crate::Error;

pub(super) enum Phase {
    Running,
    Closing(Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>),
    Done,
}

impl Part {
    pub(super) fn begin_closing(&mut self) {
        if !matches!(self.phase, Phase::Running) {
            return;
        }
        self.fatal.stop();
        if let Some(error) = self.fatal.error() {
            self.error.get_or_insert(error);
        }
        // Fetched but not handed out: dropped, and read again after a restart
        // because no checkpoint covers them.
        self.current = None;
        self.shards = SelectAll::new();
        self.in_flight = None;
        self.hand_over();
        let writer = self.writer.take().map(AbortOnDropHandle::new);
        let progress = self.progress.clone();
        let deadline = self.settings.shutdown_timeout;
        let reader = Arc::clone(&self.spawner.reader);
        let clean = self.error.is_none();
        self.phase = Phase::Closing(Box::pin(async move {
            let saved = match (writer, progress) {
                (Some(writer), Some(progress)) => {
                    progress.stop();
                    match tokio::time::timeout(deadline, writer).await {
                        Ok(Ok(result)) => result,
                        Ok(Err(join_error)) => Err(Error::Checkpoint(crate::CheckpointError::Backend {
                            source: Arc::new(join_error),
                        })),
                        Err(_) => Err(Error::ShutdownTimedOut { deadline }),
                    }
                }
                _ => Ok(()),
            };
            if clean && saved.is_ok() {
                let _ = tokio::time::timeout(deadline, reader.finish()).await;
            }
            saved
        }));
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if matches!(self.phase, Phase::Running) {
            self.fatal.stop();
            self.in_flight = None;
            self.hand_over();
            // The writer finishes saving in the background; nothing waits for it.
            if let Some(progress) = &self.progress {
                progress.stop();
            }
        }
    }
}

/// Stops a [`Consumer`](super::Consumer) from anywhere; cloneable.
///
/// After [`shutdown`](Self::shutdown) the consumer stops fetching, drops the
/// records it fetched but did not hand out (they are not checkpointed, so
/// they are read again next time), writes the checkpoints of processed
/// records, and its stream ends — within the shutdown deadline.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    pub(super) fatal: Fatal,
}

impl ShutdownHandle {
    /// Asks the consumer to stop.
    pub fn shutdown(&self) {
        self.fatal.stop();
    }

    /// Whether a shutdown was asked for (or a fatal error stopped the consumer).
    pub fn is_shutdown(&self) -> bool {
        self.fatal.token().is_cancelled()
    }
}
