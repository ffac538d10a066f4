//! How background tasks reach the consumer. Each task names the events it
//! sends and is handed an [`Outbox`] for them; the consumer decides how they
//! arrive. Fatal errors, from whichever task, take one path: [`Fatal`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::Error;

/// Where a task sends its events of type `T`.
pub(crate) struct Outbox<T>(Arc<dyn Fn(T) + Send + Sync>);

impl<T> Outbox<T> {
    pub(crate) fn new(deliver: impl Fn(T) + Send + Sync + 'static) -> Self {
        Self(Arc::new(deliver))
    }

    pub(crate) fn send(&self, event: T) {
        (self.0)(event);
    }
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> std::fmt::Debug for Outbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbox")
    }
}

/// The consumer's stop: asked for by the user or forced by a fatal error,
/// which is kept (the first one) for [`Consumer::error`](crate::Consumer::error).
#[derive(Debug, Clone)]
pub(crate) struct Fatal {
    error: Arc<Mutex<Option<Error>>>,
    token: CancellationToken,
    /// Mirrors `token` for the per-record check: reading a token's state
    /// takes a lock, an atomic load does not.
    stopping: Arc<AtomicBool>,
}

impl Fatal {
    pub(crate) fn new(token: CancellationToken) -> Self {
        let stopping = Arc::new(AtomicBool::new(false));
        let (watched, flag) = (token.clone(), Arc::clone(&stopping));
        // A parent token (the user's) cancels this one without telling us.
        tokio::spawn(async move {
            watched.cancelled().await;
            flag.store(true, Ordering::Relaxed);
        });
        Self {
            error: Arc::default(),
            token,
            stopping,
        }
    }

    /// Stops the consumer because of `error` (the first one reported wins).
    pub(crate) fn report(&self, task: &'static str, error: Error) {
        tracing::error!(task, error = %error, source = ?std::error::Error::source(&error), "consumer stopping");
        self.error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(error);
        self.stop();
    }

    /// Stops the consumer without an error.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.token.cancel();
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The error that stopped the consumer, if one did.
    pub(crate) fn error(&self) -> Option<Error> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_fatal_error_is_kept_and_stops_the_consumer() {
        let fatal = Fatal::new(CancellationToken::new());
        assert!(!fatal.is_stopping());
        fatal.report("test", Error::Closed);
        fatal.report("test", Error::config("later"));
        assert!(fatal.is_stopping() && fatal.token().is_cancelled());
        assert!(matches!(fatal.error(), Some(Error::Closed)));
    }
}
