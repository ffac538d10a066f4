//! The `kcpy.Error` hierarchy, and how the consumer's errors map into it.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(kcpy, Error, PyException, "Any error of kcpy's consumer.");
create_exception!(kcpy, InvalidConfig, Error, "The consumer's options are not usable.");
create_exception!(
    kcpy,
    StreamNotFound,
    Error,
    "The stream (or one of its shards) does not exist."
);
create_exception!(
    kcpy,
    AccessDenied,
    Error,
    "The credentials in use may not read the stream."
);
create_exception!(
    kcpy,
    CredentialsError,
    Error,
    "No credentials could be had to read the stream; retrying later may succeed."
);
create_exception!(
    kcpy,
    KinesisError,
    Error,
    "Kinesis rejected a request in a way retrying cannot fix, or answered with data the consumer cannot read."
);
create_exception!(
    kcpy,
    Unavailable,
    Error,
    "Kinesis stayed unavailable while the consumer started; retrying later may succeed."
);
create_exception!(
    kcpy,
    CheckpointError,
    Error,
    "The checkpoint store failed, cannot be opened, or holds a checkpoint that must not be used (such as a float)."
);
create_exception!(
    kcpy,
    ShutdownTimedOut,
    Error,
    "Closing did not finish writing checkpoints in time; those records are delivered again."
);

/// Adds the exception classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("InvalidConfig", py.get_type::<InvalidConfig>())?;
    m.add("StreamNotFound", py.get_type::<StreamNotFound>())?;
    m.add("AccessDenied", py.get_type::<AccessDenied>())?;
    m.add("CredentialsError", py.get_type::<CredentialsError>())?;
    m.add("KinesisError", py.get_type::<KinesisError>())?;
    m.add("Unavailable", py.get_type::<Unavailable>())?;
    m.add("CheckpointError", py.get_type::<CheckpointError>())?;
    m.add("ShutdownTimedOut", py.get_type::<ShutdownTimedOut>())?;
    Ok(())
}

/// An error and its causes, as one message: Python shows one exception, and
/// the causes (what Kinesis or the database answered) are what users need.
pub(crate) fn message(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Some errors already show their source (the SDK's do): once is enough.
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The Python exception for a consumer error. Made lazily, so it can be made
/// without the GIL, on the runtime's threads.
pub(crate) fn to_py(error: &kcpy::Error) -> PyErr {
    let text = message(error);
    match error {
        kcpy::Error::InvalidConfig { .. } => InvalidConfig::new_err(text),
        kcpy::Error::StreamNotFound { .. } => StreamNotFound::new_err(text),
        kcpy::Error::AccessDenied { .. } => AccessDenied::new_err(text),
        kcpy::Error::Credentials { .. } => CredentialsError::new_err(text),
        kcpy::Error::Kinesis { .. }
        | kcpy::Error::Kms { .. }
        | kcpy::Error::InvalidResponse { .. }
        | kcpy::Error::ConsumerNotFound { .. } => KinesisError::new_err(text),
        kcpy::Error::Unavailable { .. } => Unavailable::new_err(text),
        kcpy::Error::Checkpoint(_) => CheckpointError::new_err(text),
        kcpy::Error::ShutdownTimedOut { .. } => ShutdownTimedOut::new_err(text),
        _ => Error::new_err(text),
    }
}

/// A checkpoint store that could not be opened.
pub(crate) fn store_to_py(error: &kcpy::CheckpointError) -> PyErr {
    CheckpointError::new_err(message(error))
}
