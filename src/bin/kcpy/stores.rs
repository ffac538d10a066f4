//! The checkpoint store a URL names, for the command-line tools.

use kcpy::{Checkpoint, CheckpointError, CheckpointKey, CheckpointStore, ConsumerBuilder, Lease, LeaseStore};

/// A store opened from a URL: with leases (a consumer group's), or not.
pub(crate) enum Store {
    Checkpoints(Box<dyn CheckpointStore>),
    Leases(Box<dyn LeaseAndCheckpoints>),
}

/// A store that holds both, as one object.
pub(crate) trait LeaseAndCheckpoints: LeaseStore + CheckpointStore {
    fn checkpoints(&self) -> &dyn CheckpointStore;
}

impl<T: LeaseStore + CheckpointStore> LeaseAndCheckpoints for T {
    fn checkpoints(&self) -> &dyn CheckpointStore {
        self
    }
}

impl Store {
    /// Opens the store `url` names by its scheme: `sqlite://`, and with the
    /// crate's features `redis://`/`rediss://`, `mysql://`,
    /// `postgres://` and `dynamodb://TABLE`.
    pub(crate) async fn open(
        url: &str,
        config: &kcpy::aws_config::SdkConfig,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let _ = config;
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            #[cfg(feature = "sqlite")]
            "sqlite" => Ok(Store::Checkpoints(Box::new(kcpy::SqliteCheckpointStore::connect(url).await?))),
            #[cfg(feature = "redis")]
            "redis" | "rediss" => Ok(Store::Checkpoints(Box::new(kcpy::RedisCheckpointStore::connect(url).await?))),
            #[cfg(feature = "mysql")]
            "mysql" => Ok(Store::Leases(Box::new(kcpy::MySqlCheckpointStore::connect(url).await?))),
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Ok(Store::Leases(Box::new(kcpy::PostgresCheckpointStore::connect(url).await?))),
            #[cfg(feature = "dynamodb")]
            "dynamodb" => {
                let table = url.trim_start_matches("dynamodb://");
                let mut dynamodb = kcpy::aws_sdk_dynamodb::config::Builder::from(config);
                if let Ok(endpoint) = std::env::var("KCPY_DYNAMODB_ENDPOINT") {
                    dynamodb = dynamodb.endpoint_url(endpoint);
                }
                let client = kcpy::aws_sdk_dynamodb::Client::from_conf(dynamodb.build());
                Ok(Store::Leases(Box::new(kcpy::DynamoDbCheckpointStore::new(client, table))))
            }
            _ => Err(format!(
                "no checkpoint store for {scheme:?} URLs in this build (features: sqlite, redis, mysql, postgres, dynamodb)"
            )
            .into()),
        }
    }

    /// `builder` keeping its checkpoints here; with `group`, as a member of
    /// the consumer group whose leases are here.
    pub(crate) fn configure(self, builder: ConsumerBuilder, group: bool) -> Result<ConsumerBuilder, String> {
        match (self, group) {
            (Store::Leases(store), true) => Ok(builder.lease_store(store)),
            (Store::Leases(store), false) => Ok(builder.checkpoint_store(store)),
            (Store::Checkpoints(store), false) => Ok(builder.checkpoint_store(store)),
            (Store::Checkpoints(_), true) => {
                Err("this store holds no leases; --group needs postgres://, mysql:// or dynamodb://".into())
            }
        }
    }

    pub(crate) async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        match self {
            Store::Checkpoints(store) => store.load(key).await,
            Store::Leases(store) => store.checkpoints().load(key).await,
        }
    }

    /// Writes `to` whatever is stored (ending the key's lease, if any).
    pub(crate) async fn reset(&self, key: &CheckpointKey, to: Option<&Checkpoint>) -> Result<(), CheckpointError> {
        match self {
            Store::Checkpoints(store) => store.reset(key, to).await,
            Store::Leases(store) => store.checkpoints().reset(key, to).await,
        }
    }

    /// The leases of `consumer_name` on `stream_name`, if the store holds leases.
    pub(crate) async fn leases(
        &self,
        consumer_name: &str,
        stream_name: &str,
    ) -> Result<Option<Vec<Lease>>, CheckpointError> {
        match self {
            Store::Checkpoints(_) => Ok(None),
            Store::Leases(store) => store.list_leases(consumer_name, stream_name).await.map(Some),
        }
    }
}
