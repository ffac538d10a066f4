//! The constructor's options, checked when they are given, and the consumer
//! they build.

use std::time::{Duration, UNIX_EPOCH};

use kcpy::aws_config::{self, BehaviorVersion, Region};
use kcpy::aws_sdk_kinesis::config::Credentials;
use kcpy::{AnyStore, Consumer, SqliteCheckpointStore, StartPosition};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDateTime, PyString};
use tokio::task::JoinHandle;

use crate::errors::{store_to_py, to_py, InvalidConfig};

/// Where checkpoints are kept.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    /// Not kept: every start reads from the start position.
    None,
    /// The Python kcpy package's SQLite file and table.
    PythonKcpy { path: String, table: String },
    /// The store a URL names (`sqlite://`, `redis://`, `postgres://`…).
    Url(String),
}

/// Everything the consumer is built from.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) stream_name: String,
    pub(crate) consumer_name: String,
    pub(crate) store: Store,
    pub(crate) start_position: StartPosition,
    pub(crate) group: bool,
    pub(crate) endpoint_url: Option<String>,
    pub(crate) region_name: Option<String>,
    pub(crate) credentials: Option<(String, String, Option<String>)>,
}

/// The arguments as Python passed them (see `StreamConsumer.__init__`).
pub(crate) struct Arguments<'py> {
    pub(crate) stream_name: String,
    pub(crate) consumer_name: Option<String>,
    pub(crate) checkpoint: bool,
    pub(crate) checkpoint_db_file_path: String,
    pub(crate) checkpoint_db_name: String,
    pub(crate) checkpoint_store: Option<String>,
    pub(crate) start_position: Option<Bound<'py, PyAny>>,
    pub(crate) group: bool,
    pub(crate) endpoint_url: Option<String>,
    pub(crate) region_name: Option<String>,
    pub(crate) aws_access_key_id: Option<String>,
    pub(crate) aws_secret_access_key: Option<String>,
    pub(crate) aws_session_token: Option<String>,
}

impl Options {
    /// Checks the arguments: wrong types are `TypeError`, unusable values
    /// `kcpy.InvalidConfig`, both before anything is opened.
    pub(crate) fn parse(args: Arguments<'_>) -> PyResult<Self> {
        if args.stream_name.is_empty() {
            return Err(InvalidConfig::new_err("stream_name must not be empty"));
        }
        let consumer_name = match args.consumer_name {
            Some(name) if name.is_empty() => return Err(InvalidConfig::new_err("consumer_name must not be empty")),
            Some(name) => name,
            // As the Python package did: a consumer of its own, whose
            // checkpoints no later run reuses.
            None => format!("consumer-{:08x}", fastrand::u32(..)),
        };
        let store = match (args.checkpoint_store, args.checkpoint) {
            (Some(url), _) if !url.contains("://") => {
                return Err(InvalidConfig::new_err(format!(
                    "checkpoint_store {url:?} is not a URL such as 'postgres://…' or 'sqlite://PATH'"
                )))
            }
            (Some(url), _) => Store::Url(url),
            (None, true) => Store::PythonKcpy {
                path: args.checkpoint_db_file_path,
                table: args.checkpoint_db_name,
            },
            (None, false) => Store::None,
        };
        if args.group && matches!(store, Store::None | Store::PythonKcpy { .. }) {
            return Err(InvalidConfig::new_err(
                "group=True needs checkpoint_store='postgres://…', 'mysql://…' or 'dynamodb://TABLE', which hold leases",
            ));
        }
        if let Some(endpoint) = &args.endpoint_url {
            if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                return Err(InvalidConfig::new_err(format!(
                    "endpoint_url {endpoint:?} is not an http:// or https:// URL"
                )));
            }
        }
        let start_position = match args.start_position {
            None => StartPosition::TrimHorizon,
            Some(position) => parse_start_position(&position)?,
        };
        let credentials = match (args.aws_access_key_id, args.aws_secret_access_key) {
            (Some(key), Some(secret)) => Some((key, secret, args.aws_session_token)),
            (None, None) if args.aws_session_token.is_none() => None,
            _ => {
                return Err(InvalidConfig::new_err(
                    "aws_access_key_id and aws_secret_access_key go together (with aws_session_token, optionally)",
                ))
            }
        };
        Ok(Self {
            stream_name: args.stream_name,
            consumer_name,
            store,
            start_position,
            group: args.group,
            endpoint_url: args.endpoint_url,
            region_name: args.region_name,
            credentials,
        })
    }

    /// Starts building the consumer: loads the AWS configuration (the usual
    /// environment and files, then what was passed), opens the checkpoint
    /// store and starts the consumer. The build goes on if the handle is
    /// dropped or its wait cancelled.
    pub(crate) fn start(self, runtime: &tokio::runtime::Runtime) -> JoinHandle<PyResult<Consumer>> {
        // On a thread of its own: the futures of the AWS SDK and the stores
        // are `Send` only at concrete lifetimes, which the compiler cannot
        // see through the futures awaiting them, so this one cannot be
        // awaited inside the `Send` futures Python's waits need.
        let handle = runtime.handle().clone();
        runtime.spawn_blocking(move || handle.block_on(self.build_here()))
    }

    async fn build_here(self) -> PyResult<Consumer> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = self.region_name {
            loader = loader.region(Region::new(region));
        }
        if let Some(endpoint) = self.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some((key, secret, token)) = self.credentials {
            loader = loader.credentials_provider(Credentials::new(key, secret, token, None, "kcpy"));
        }
        let config = loader.load().await;
        let client = kcpy::aws_sdk_kinesis::Client::new(&config);
        let mut builder = Consumer::builder(client, self.stream_name)
            .consumer_name(self.consumer_name)
            .start_position(self.start_position);
        builder = match self.store {
            Store::None => builder,
            Store::PythonKcpy { path, table } => builder.checkpoint_store(
                SqliteCheckpointStore::connect_python_kcpy(&path, &table)
                    .await
                    .map_err(|e| store_to_py(&e))?,
            ),
            Store::Url(url) => AnyStore::open(&url, &config)
                .await
                .map_err(|e| store_to_py(&e))?
                .configure(builder, self.group)
                .map_err(|e| InvalidConfig::new_err(e.to_string()))?,
        };
        builder.build().await.map_err(|e| to_py(&e))
    }
}

/// `'TRIM_HORIZON'`, `'LATEST'`, or a `datetime` (`AT_TIMESTAMP`).
fn parse_start_position(position: &Bound<'_, PyAny>) -> PyResult<StartPosition> {
    if let Ok(text) = position.cast::<PyString>() {
        return match text.to_cow()?.as_ref() {
            "TRIM_HORIZON" => Ok(StartPosition::TrimHorizon),
            "LATEST" => Ok(StartPosition::Latest),
            other => Err(InvalidConfig::new_err(format!(
                "start_position {other:?} is not 'TRIM_HORIZON', 'LATEST' or a datetime"
            ))),
        };
    }
    if position.is_instance_of::<PyDateTime>() {
        // `timestamp()` reads a naive datetime as local time, as Python does.
        let seconds: f64 = position.call_method0("timestamp")?.extract()?;
        let since = Duration::try_from_secs_f64(seconds)
            .map_err(|_| InvalidConfig::new_err("start_position must not be before 1970"))?;
        return Ok(StartPosition::AtTimestamp(UNIX_EPOCH + since));
    }
    Err(PyTypeError::new_err(format!(
        "start_position must be 'TRIM_HORIZON', 'LATEST' or a datetime, not {}",
        position.get_type().name()?
    )))
}
