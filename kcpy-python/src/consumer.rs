//! `StreamConsumer`: the Python kcpy package's consumer, on kcpy's.
//!
//! The consumer sits behind a [`Peekable`]. Waiting for a record only peeks,
//! with the GIL released; taking it is one step that cannot wait, done with
//! the GIL held, right before the dict is handed to Python. So an
//! interrupted wait (Ctrl-C, a cancelled asyncio task) drops no record, and
//! in auto mode a record counts as processed exactly when Python asks for
//! the next one.

use std::future::Future;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures::stream::Peekable;
use futures::{FutureExt, StreamExt};
use kcpy::{Consumer, ShutdownHandle};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::errors::to_py;
use crate::options::{Arguments, Options};
use crate::record::Converter;

/// How often a blocking wait comes back to let Python handle signals.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

enum State {
    /// Built on first use, so that `async for` builds without blocking the
    /// event loop, as the Python package did its I/O in `__iter__`.
    Unbuilt(Box<Options>),
    /// Being built on a thread of its own. A cancelled wait leaves it here,
    /// so the next wait goes on with the same build (a second consumer would
    /// hold a group's leases for nothing).
    Building(Box<Options>, JoinHandle<PyResult<Consumer>>),
    Running(Box<Running>),
    /// Closed, its checkpoints written (or its error raised).
    Closed,
}

struct Running {
    consumer: Peekable<Consumer>,
    converter: Converter,
}

/// What `close` reaches without waiting for a read in progress: asking the
/// running consumer to stop ends that read, which then closes it.
#[derive(Default)]
struct Stop {
    /// Whether a stop was asked for, and the running consumer's handle.
    inner: std::sync::Mutex<(bool, Option<ShutdownHandle>)>,
}

impl Stop {
    fn ask(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.0 = true;
        if let Some(handle) = &inner.1 {
            handle.shutdown();
        }
    }

    /// Keeps the handle of a consumer just built, stopping it at once if a
    /// stop was asked for while it was being built.
    fn started(&self, consumer: &Consumer) {
        let handle = consumer.shutdown_handle();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.0 {
            handle.shutdown();
        }
        inner.1 = Some(handle);
    }
}

struct Shared {
    state: Mutex<State>,
    stop: Stop,
}

/// Whether the stream has a record to take.
enum Ready {
    Record,
    Ended,
}

impl State {
    /// Waits until a record can be taken, building the consumer first if
    /// need be. At the end of the stream, closes it: its error, if one ended
    /// it, is returned.
    async fn ready(&mut self, stop: &Stop) -> PyResult<Ready> {
        loop {
            match self {
                State::Unbuilt(options) => {
                    let building = Options::start((**options).clone(), runtime());
                    *self = State::Building(options.clone(), building);
                }
                State::Building(options, building) => {
                    match building.await {
                        Ok(Ok(consumer)) => {
                            stop.started(&consumer);
                            *self = State::Running(Box::new(Running {
                                consumer: consumer.peekable(),
                                converter: Converter::new(),
                            }));
                        }
                        // A failed build may succeed later (the stream may
                        // be created meanwhile): the next wait tries again.
                        Ok(Err(error)) => {
                            *self = State::Unbuilt(options.clone());
                            return Err(error);
                        }
                        Err(panicked) => {
                            *self = State::Unbuilt(options.clone());
                            return Err(crate::errors::Error::new_err(format!(
                                "starting the consumer failed: {panicked}"
                            )));
                        }
                    }
                }
                State::Running(running) => {
                    if std::pin::Pin::new(&mut running.consumer).peek().await.is_some() {
                        return Ok(Ready::Record);
                    }
                    let closed = running.consumer.get_mut().close().await;
                    *self = State::Closed;
                    closed.map_err(|e| to_py(&e))?;
                    return Ok(Ready::Ended);
                }
                State::Closed => return Ok(Ready::Ended),
            }
        }
    }

    /// The next record as a dict, if one is ready now. The record is taken
    /// only once its dict is made, so a failed conversion loses nothing.
    fn take<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let State::Running(running) = self else {
            return Ok(None);
        };
        // Polling may start shards or a shutdown, which need the runtime.
        let _runtime = runtime().enter();
        let Running { consumer, converter } = &mut **running;
        let dict = match std::pin::Pin::new(&mut *consumer).peek().now_or_never() {
            Some(Some(record)) => converter.dict(py, record)?,
            _ => return Ok(None),
        };
        let _taken = consumer.next().now_or_never();
        Ok(Some(dict))
    }

    /// Closes the consumer, writing the checkpoints of processed records.
    async fn close(&mut self) -> PyResult<()> {
        match std::mem::replace(self, State::Closed) {
            State::Running(mut running) => running.consumer.get_mut().close().await.map_err(|e| to_py(&e)),
            // Its build's errors were never asked for; its leases are let go.
            State::Building(_, building) => match building.await {
                Ok(Ok(mut consumer)) => consumer.close().await.map_err(|e| to_py(&e)),
                _ => Ok(()),
            },
            State::Unbuilt(_) | State::Closed => Ok(()),
        }
    }

    /// Closes in the background what `self` was reading, leaving it closed.
    fn close_in_background(&mut self) -> Option<JoinHandle<()>> {
        let mut state = std::mem::replace(self, State::Closed);
        match &mut state {
            // Its Python objects are let go here, where the GIL is held.
            State::Running(running) => running.converter = Converter::new(),
            State::Building(..) => {}
            State::Unbuilt(_) | State::Closed => return None,
        }
        Some(runtime().spawn(async move {
            let _ = state.close().await;
        }))
    }
}

/// Reads every shard of a stream, following resharding, and hands out its
/// records as dicts.
#[pyclass(module = "kcpy._kcpy", subclass)]
pub(crate) struct StreamConsumer {
    shared: Arc<Shared>,
    consumer_name: String,
}

fn busy() -> PyErr {
    PyRuntimeError::new_err("this StreamConsumer is already being read by another call")
}

fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Runs `future` to its end with the GIL released, coming back every
/// [`SIGNAL_CHECK`] so that Python can raise `KeyboardInterrupt`. An
/// interrupt drops the future and is returned as the error.
fn wait<F: Future + Send>(py: Python<'_>, future: F) -> PyResult<F::Output>
where
    F::Output: Send,
{
    let mut future = Box::pin(future);
    loop {
        let step = py.detach(|| runtime().block_on(async { tokio::time::timeout(SIGNAL_CHECK, &mut future).await }));
        match step {
            Ok(output) => return Ok(output),
            Err(_) => py.check_signals()?,
        }
    }
}

#[pymethods]
impl StreamConsumer {
    #[new]
    #[pyo3(text_signature = "(stream_name, consumer_name=None, checkpoint=False, \
        checkpoint_db_file_path='kcpy_checkpoint.db', checkpoint_db_name='kcpy', *, checkpoint_store=None, \
        start_position=None, group=False, endpoint_url=None, region_name=None, aws_access_key_id=None, \
        aws_secret_access_key=None, aws_session_token=None)")]
    #[pyo3(signature = (
        stream_name,
        consumer_name = None,
        checkpoint = None,
        checkpoint_db_file_path = "kcpy_checkpoint.db".to_owned(),
        checkpoint_db_name = "kcpy".to_owned(),
        *,
        checkpoint_store = None,
        start_position = None,
        group = false,
        endpoint_url = None,
        region_name = None,
        aws_access_key_id = None,
        aws_secret_access_key = None,
        aws_session_token = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        stream_name: String,
        consumer_name: Option<String>,
        checkpoint: Option<&Bound<'_, PyAny>>,
        checkpoint_db_file_path: String,
        checkpoint_db_name: String,
        checkpoint_store: Option<String>,
        start_position: Option<Bound<'_, PyAny>>,
        group: bool,
        endpoint_url: Option<String>,
        region_name: Option<String>,
        aws_access_key_id: Option<String>,
        aws_secret_access_key: Option<String>,
        aws_session_token: Option<String>,
    ) -> PyResult<Self> {
        let options = Options::parse(Arguments {
            stream_name,
            consumer_name,
            // Any truthy value, as the Python package's `if checkpoint:`.
            checkpoint: checkpoint.map(|value| value.is_truthy()).transpose()?.unwrap_or(false),
            checkpoint_db_file_path,
            checkpoint_db_name,
            checkpoint_store,
            start_position,
            group,
            endpoint_url,
            region_name,
            aws_access_key_id,
            aws_secret_access_key,
            aws_session_token,
        })?;
        Ok(Self {
            consumer_name: options.consumer_name.clone(),
            shared: Arc::new(Shared {
                state: Mutex::new(State::Unbuilt(Box::new(options))),
                stop: Stop::default(),
            }),
        })
    }

    /// The consumer's name (generated when none was given).
    #[getter]
    fn consumer_name(&self) -> &str {
        &self.consumer_name
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let shared = &*self.shared;
        let mut state = shared.state.try_lock().map_err(|_| busy())?;
        loop {
            if let Some(record) = state.take(py)? {
                return Ok(Some(record));
            }
            match wait(py, state.ready(&shared.stop)) {
                Ok(Ok(Ready::Record)) => {}
                Ok(Ok(Ready::Ended)) => return Ok(None),
                Ok(Err(error)) => return Err(error),
                Err(interrupt) => {
                    // Ctrl-C: stop gracefully, writing the checkpoints of
                    // what was processed, then let the interrupt go on.
                    // A second Ctrl-C abandons the close.
                    if let Ok(Err(error)) = wait(py, state.close()) {
                        error.print(py);
                    }
                    return Err(interrupt);
                }
            }
        }
    }

    /// The next record as a dict if one is ready now, else `None`.
    /// (A cancelled wait may hold the consumer a moment longer: that is
    /// "not ready" too, and the next wait queues behind it.)
    fn _take<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        match self.shared.state.try_lock() {
            Ok(mut state) => state.take(py),
            Err(_) => Ok(None),
        }
    }

    /// An awaitable: `True` once a record can be taken, `False` once the
    /// stream has ended (it is then closed).
    fn _ready<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let shared = Arc::clone(&self.shared);
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let mut state = shared.state.lock().await;
            Ok(matches!(state.ready(&shared.stop).await?, Ready::Record))
        })
    }

    /// An awaitable that closes the consumer (see `close`).
    fn _aclose<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let shared = Arc::clone(&self.shared);
        shared.stop.ask();
        pyo3_async_runtimes::tokio::future_into_py(py, async move { shared.state.lock().await.close().await })
    }

    /// Stops reading and waits until the checkpoints of the records processed
    /// are written. The record handed out last is not counted as processed
    /// (it is delivered again next time) unless the next one was asked for.
    /// A read in progress in another thread or task ends, with no record.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.shared.stop.ask();
        let mut state = wait(py, self.shared.state.lock())?;
        wait(py, state.close())?
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<()> {
        self.close(py)
    }
}

impl Drop for StreamConsumer {
    fn drop(&mut self) {
        // Dropped unclosed: still write what was processed. A read still in
        // progress (an abandoned asyncio task) ends and closes it itself.
        self.shared.stop.ask();
        let Ok(mut state) = self.shared.state.try_lock() else {
            return;
        };
        if let Some(closing) = state.close_in_background() {
            if tokio::runtime::Handle::try_current().is_err() {
                // Closing needs the runtime, not the GIL: other threads run.
                Python::attach(|py| py.detach(|| drop(runtime().block_on(closing))));
            }
        }
    }
}
