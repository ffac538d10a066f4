//! The checkpoint store a URL names, for the command line and the Python
//! package.

use std::sync::Arc;

use kcpy_core::{Checkpoint, CheckpointError, CheckpointKey, CheckpointStore, ConsumerBuilder, Lease, LeaseStore};

/// A store opened from a URL by [`AnyStore::open`]: with leases (a consumer
/// group's), or not.
#[non_exhaustive]
pub enum AnyStore {
    /// A store of checkpoints only (`sqlite://`, `redis://`).
    Checkpoints(Box<dyn CheckpointStore>),
    /// A store of checkpoints and consumer-group leases (`mysql://`,
    /// `postgres://`, `dynamodb://`).
    Leases(Box<dyn LeaseAndCheckpoints>),
}

/// A store that holds both checkpoints and leases, as one object.
pub trait LeaseAndCheckpoints: LeaseStore + CheckpointStore {
    /// The same store, as its checkpoints.
    fn checkpoints(&self) -> &dyn CheckpointStore;
}

/// A URL whose scheme names no store of this build.
#[derive(Debug, thiserror::Error)]
#[error("no checkpoint store for {0:?} URLs in this build (features: sqlite, redis, mysql, postgres, dynamodb)")]
struct UnknownScheme(String);

/// `--group` asked of a store that holds no leases.
#[derive(Debug, thiserror::Error)]
#[error("this store holds no leases; a consumer group needs postgres://, mysql:// or dynamodb://")]
pub struct NoLeases;

impl<T: LeaseStore + CheckpointStore> LeaseAndCheckpoints for T {
    fn checkpoints(&self) -> &dyn CheckpointStore {
        self
    }
}

impl AnyStore {
    /// Opens the store `url` names by its scheme: `sqlite://`, and with the
    /// crate's features `redis://`/`rediss://`, `mysql://`,
    /// `postgres://` and `dynamodb://TABLE` (a DynamoDB client made from
    /// `config`, at `KCPY_DYNAMODB_ENDPOINT` when that is set). A scheme
    /// this build has no store for is an [`CheckpointError::Open`] error.
    pub async fn open(url: &str, config: &aws_config::SdkConfig) -> Result<Self, CheckpointError> {
        let _ = config;
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            #[cfg(feature = "sqlite")]
            "sqlite" => Ok(AnyStore::Checkpoints(Box::new(
                crate::SqliteCheckpointStore::connect(url).await?,
            ))),
            #[cfg(feature = "redis")]
            "redis" | "rediss" => Ok(AnyStore::Checkpoints(Box::new(
                crate::RedisCheckpointStore::connect(url).await?,
            ))),
            #[cfg(feature = "mysql")]
            "mysql" => Ok(AnyStore::Leases(Box::new(
                crate::MySqlCheckpointStore::connect(url).await?,
            ))),
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Ok(AnyStore::Leases(Box::new(
                crate::PostgresCheckpointStore::connect(url).await?,
            ))),
            #[cfg(feature = "dynamodb")]
            "dynamodb" => {
                let table = url.trim_start_matches("dynamodb://");
                let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(config);
                if let Ok(endpoint) = std::env::var("KCPY_DYNAMODB_ENDPOINT") {
                    dynamodb = dynamodb.endpoint_url(endpoint);
                }
                let client = aws_sdk_dynamodb::Client::from_conf(dynamodb.build());
                Ok(AnyStore::Leases(Box::new(crate::DynamoDbCheckpointStore::new(
                    client, table,
                ))))
            }
            _ => Err(CheckpointError::open(url, Arc::new(UnknownScheme(scheme.to_owned())))),
        }
    }

    /// `builder` keeping its checkpoints here; with `group`, as a member of
    /// the consumer group whose leases are here.
    pub fn configure(self, builder: ConsumerBuilder, group: bool) -> Result<ConsumerBuilder, NoLeases> {
        match (self, group) {
            (AnyStore::Leases(store), true) => Ok(builder.lease_store(store)),
            (AnyStore::Leases(store), false) => Ok(builder.checkpoint_store(store)),
            (AnyStore::Checkpoints(store), false) => Ok(builder.checkpoint_store(store)),
            (AnyStore::Checkpoints(_), true) => Err(NoLeases),
        }
    }

    /// The checkpoint stored for `key`.
    pub async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        match self {
            AnyStore::Checkpoints(store) => store.load(key).await,
            AnyStore::Leases(store) => store.checkpoints().load(key).await,
        }
    }

    /// Writes `to` whatever is stored (ending the key's lease, if any).
    pub async fn reset(&self, key: &CheckpointKey, to: Option<&Checkpoint>) -> Result<(), CheckpointError> {
        match self {
            AnyStore::Checkpoints(store) => store.reset(key, to).await,
            AnyStore::Leases(store) => store.checkpoints().reset(key, to).await,
        }
    }

    /// The leases of `consumer_name` on `stream_name`, if the store holds leases.
    pub async fn leases(&self, consumer_name: &str, stream_name: &str) -> Result<Option<Vec<Lease>>, CheckpointError> {
        match self {
            AnyStore::Checkpoints(_) => Ok(None),
            AnyStore::Leases(store) => store.list_leases(consumer_name, stream_name).await.map(Some),
        }
    }
}
