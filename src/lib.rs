//! kcpy: consume Amazon Kinesis Data Streams as a Rust [`futures::Stream`],
//! with checkpoints kept where you choose.
//!
//! This crate gathers the pieces: the consumer from `kcpy-core`, the bundled
//! checkpoint stores (features `memory` and `sqlite`, on by default; `redis`,
//! `mysql`, and for consumer groups across machines `postgres` and
//! `dynamodb`, off by default), and the AWS crates needed to make a client.
//!
//! ```no_run
//! use futures::StreamExt;
//! use kcpy::{Consumer, SqliteCheckpointStore, StartPosition};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = kcpy::aws_config::load_from_env().await;
//! let client = kcpy::aws_sdk_kinesis::Client::new(&config);
//! let mut consumer = Consumer::builder(client, "my-stream")
//!     .consumer_name("billing")
//!     .checkpoint_store(SqliteCheckpointStore::connect("sqlite://kcpy.db").await?)
//!     .start_position(StartPosition::TrimHorizon)
//!     .build()
//!     .await?;
//! while let Some(record) = consumer.next().await {
//!     println!("{record:?}");
//! }
//! consumer.close().await?;
//! # Ok(())
//! # }
//! ```

pub use kcpy_core::*;

mod store_url;
pub use store_url::{AnyStore, LeaseAndCheckpoints, NoLeases};

#[cfg(feature = "dynamodb")]
pub use kcpy_checkpoint_dynamodb::DynamoDbCheckpointStore;
#[cfg(feature = "memory")]
pub use kcpy_checkpoint_memory::MemoryCheckpointStore;
#[cfg(feature = "mysql")]
pub use kcpy_checkpoint_mysql::MySqlCheckpointStore;
#[cfg(feature = "postgres")]
pub use kcpy_checkpoint_postgres::PostgresCheckpointStore;
#[cfg(feature = "redis")]
pub use kcpy_checkpoint_redis::RedisCheckpointStore;
#[cfg(feature = "sqlite")]
pub use kcpy_checkpoint_sqlite::SqliteCheckpointStore;

pub use aws_config;
#[cfg(feature = "dynamodb")]
pub use aws_sdk_dynamodb;
pub use aws_sdk_kinesis;
