//! A Redis [`CheckpointStore`] for kcpy.
//!
//! Checkpoints of one consumer name and stream live in one hash, field = shard
//! id, value = the checkpoint as text. A save runs as one Lua script, so the
//! "never backwards" check and the write are atomic. Connection, TLS
//! (`rediss://`, feature `tls`) and auth (`redis://user:password@host/db`) all
//! come from the URL; the connection reconnects on its own.
//!
//! # Durability
//!
//! A save is as durable as the server makes it: the store's contract (durable
//! once `save` returns) holds with `appendonly yes` and `appendfsync always`.
//! With other settings a server crash can lose the newest checkpoints, which
//! means records delivered again, never records skipped.
//!
//! Redis keeps checkpoints only: it is for consumers where one process reads
//! a stream (per consumer name), not for sharing a stream across processes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kcpy_core::{Checkpoint, CheckpointError, CheckpointKey, CheckpointStore};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisError, Script};

/// The prefix of every key this store writes, unless another is chosen.
pub const DEFAULT_PREFIX: &str = "kcpy:";

// Returns {1, ""} when written, {0, stored} when the save would move the
// checkpoint backwards, {-1, stored} when the stored value is not a
// checkpoint (it is then left alone).
const SAVE: &str = r"
local stored = redis.call('HGET', KEYS[1], ARGV[1])
local new = ARGV[2]
if not stored then
  redis.call('HSET', KEYS[1], ARGV[1], new)
  return {1, ''}
end
local function digits(s, most)
  if #s < 1 or #s > most or string.find(s, '^%d+$') == nil then return false end
  return #s == 1 or string.sub(s, 1, 1) ~= '0'
end
local start = 'AT_TIMESTAMP:'
local function is_start(s) return string.sub(s, 1, #start) == start end
-- A sequence number, or one, ':' and a sub-sequence number (inside a KPL
-- aggregate): the parts, the second nil for a whole record.
local function split(s)
  local at = string.find(s, ':', 1, true)
  if not at then return s, nil end
  return string.sub(s, 1, at - 1), string.sub(s, at + 1)
end
local function valid(s)
  if s == 'SHARD_END' then return true end
  if is_start(s) then
    local millis = string.sub(s, #start + 1)
    return digits(millis, 20) and (#millis < 20 or millis <= '18446744073709551615')
  end
  local seq, sub = split(s)
  -- At most 2^64 - 1: among 20 digits, text order is numeric order (Lua's
-- string comparison follows the server's collation, which orders digits as
-- ASCII does in every locale Redis runs in).
  return digits(seq, 129) and (sub == nil or (digits(sub, 20) and (#sub < 20 or sub <= '18446744073709551615')))
end
if not valid(stored) then return {-1, stored} end
-- Starts first, SHARD_END last; within a kind by length, then by text;
-- inside one aggregate by sub-sequence number, the whole record last.
local function rank(s)
  if s == 'SHARD_END' then return 2 end
  if is_start(s) then return 0 end
  return 1
end
local function numeric_below(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function below(a, b)
  if a == b then return false end
  if rank(a) ~= rank(b) then return rank(a) < rank(b) end
  if rank(a) ~= 1 then return numeric_below(a, b) end
  local seq_a, sub_a = split(a)
  local seq_b, sub_b = split(b)
  if seq_a ~= seq_b then return numeric_below(seq_a, seq_b) end
  if sub_a == nil then return false end
  if sub_b == nil then return true end
  return numeric_below(sub_a, sub_b)
end
if below(new, stored) then return {0, stored} end
redis.call('HSET', KEYS[1], ARGV[1], new)
return {1, ''}
";

/// Checkpoints in Redis.
#[derive(Clone)]
pub struct RedisCheckpointStore {
    connection: ConnectionManager,
    prefix: String,
    save: Script,
    location: String,
}

impl std::fmt::Debug for RedisCheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCheckpointStore")
            .field("location", &self.location)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisCheckpointStore {
    /// Connects to `url` (`redis://[user:password@]host[:port][/db]`, or
    /// `rediss://` with feature `tls`), with keys under [`DEFAULT_PREFIX`].
    pub async fn connect(url: &str) -> Result<Self, CheckpointError> {
        Self::connect_with_prefix(url, DEFAULT_PREFIX).await
    }

    /// Connects to `url`, with every key starting with `prefix`.
    pub async fn connect_with_prefix(url: &str, prefix: impl Into<String>) -> Result<Self, CheckpointError> {
        let open = |error: RedisError| CheckpointError::open(url, Arc::new(error));
        let client = redis::Client::open(url).map_err(open)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(2);
        let mut connection = ConnectionManager::new_with_config(client, config).await.map_err(open)?;
        // Fails here, not on the first save, for wrong credentials or database.
        let _: String = redis::cmd("PING").query_async(&mut connection).await.map_err(open)?;
        Ok(Self {
            connection,
            prefix: prefix.into(),
            save: Script::new(SAVE),
            location: kcpy_core::redact_password(url),
        })
    }

    /// The hash holding every shard's checkpoint for one consumer and stream.
    /// The consumer name is length-prefixed so no two keys can collide.
    fn hash_key(&self, key: &CheckpointKey) -> String {
        format!(
            "{}checkpoints:{}:{}:{}",
            self.prefix,
            key.consumer_name.len(),
            key.consumer_name,
            key.stream_name
        )
    }
}

/// The stored data has a shape this store does not write.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ShapeError(String);

fn store_error(error: RedisError, key: &str) -> CheckpointError {
    if error.code() == Some("WRONGTYPE") {
        return CheckpointError::Backend {
            source: Arc::new(ShapeError(format!("key {key:?} holds a value that is not a hash"))),
        };
    }
    let transient = error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.code(),
            Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY")
        );
    CheckpointError::backend(error, transient)
}

#[async_trait]
impl CheckpointStore for RedisCheckpointStore {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        let hash = self.hash_key(key);
        let mut connection = self.connection.clone();
        let stored: Option<String> = connection
            .hget(&hash, &key.shard_id)
            .await
            .map_err(|e| store_error(e, &hash))?;
        stored.map(|text| CheckpointError::parse_stored(key, &text)).transpose()
    }

    async fn save(&self, key: &CheckpointKey, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let hash = self.hash_key(key);
        let mut connection = self.connection.clone();
        let (status, stored): (i64, String) = self
            .save
            .key(&hash)
            .arg(&key.shard_id)
            .arg(checkpoint.as_str())
            .invoke_async(&mut connection)
            .await
            .map_err(|e| store_error(e, &hash))?;
        match status {
            1 => Ok(()),
            0 => Err(CheckpointError::conflict(
                key,
                CheckpointError::parse_stored(key, &stored)?,
                checkpoint.clone(),
            )),
            _ => Err(CheckpointError::parse_stored(key, &stored)
                .err()
                .unwrap_or_else(|| CheckpointError::Backend {
                    source: Arc::new(ShapeError(format!("the save script rejected {stored:?}"))),
                })),
        }
    }

    async fn reset(&self, key: &CheckpointKey, to: Option<&Checkpoint>) -> Result<(), CheckpointError> {
        let hash = self.hash_key(key);
        let mut connection = self.connection.clone();
        let result: Result<(), RedisError> = match to {
            Some(to) => connection.hset(&hash, &key.shard_id, to.as_str()).await,
            None => connection.hdel(&hash, &key.shard_id).await,
        };
        result.map_err(|e| store_error(e, &hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> String {
        std::env::var("KCPY_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
    }

    fn unique_prefix() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        format!("kcpy-test-{}-{nanos}:", std::process::id())
    }

    #[tokio::test]
    async fn redis_store_meets_the_checkpoint_store_contract() {
        let store = RedisCheckpointStore::connect_with_prefix(&url(), unique_prefix())
            .await
            .expect("connect");
        kcpy_core::test_util::checkpoint_store_conformance(&store).await;
        kcpy_core::test_util::reset_conformance(&store).await;
    }

    #[tokio::test]
    async fn prefixes_keep_stores_apart_and_keys_cannot_collide() {
        let a = RedisCheckpointStore::connect_with_prefix(&url(), unique_prefix())
            .await
            .expect("connect");
        let b = RedisCheckpointStore::connect_with_prefix(&url(), unique_prefix() + "other:")
            .await
            .expect("connect");
        let key = CheckpointKey::new("app", "stream", "shardId-000000000000");
        a.save(&key, &"5".parse().expect("valid")).await.expect("save");
        assert_eq!(b.load(&key).await.expect("load"), None);
        // "a:b" + "c" and "a" + "b:c" must be different keys.
        let left = CheckpointKey::new("a:b", "c", "s");
        let right = CheckpointKey::new("a", "b:c", "s");
        a.save(&left, &"9".parse().expect("valid")).await.expect("save");
        assert_eq!(a.load(&right).await.expect("load"), None);
    }

    #[tokio::test]
    async fn malformed_stored_values_are_reported_and_never_overwritten() {
        let store = RedisCheckpointStore::connect_with_prefix(&url(), unique_prefix())
            .await
            .expect("connect");
        let plant = |key: CheckpointKey, value: String| {
            let (mut raw, hash) = (store.connection.clone(), store.hash_key(&key));
            async move {
                let _: () = raw.hset(hash, &key.shard_id, value).await.expect("plant");
            }
        };
        let read_raw = |key: CheckpointKey| {
            let (mut raw, hash) = (store.connection.clone(), store.hash_key(&key));
            async move { raw.hget(hash, &key.shard_id).await.expect("read back") }
        };
        kcpy_core::test_util::malformed_value_conformance(&store, plant, read_raw).await;
    }

    #[tokio::test]
    async fn a_key_of_another_type_is_a_typed_error() {
        let store = RedisCheckpointStore::connect_with_prefix(&url(), unique_prefix())
            .await
            .expect("connect");
        let key = CheckpointKey::new("app", "stream", "shard");
        let mut raw = store.connection.clone();
        let _: () = raw
            .set(store.hash_key(&key), "a string, not a hash")
            .await
            .expect("plant");
        match store.load(&key).await {
            Err(CheckpointError::Backend { source }) => assert!(source.to_string().contains("not a hash")),
            other => panic!("expected a Backend error, got {other:?}"),
        }
        assert!(matches!(
            store.save(&key, &"1".parse().expect("valid")).await,
            Err(CheckpointError::Backend { .. })
        ));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_open_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        // Nothing listens there any more.
        match RedisCheckpointStore::connect(&format!("redis://127.0.0.1:{port}")).await {
            Err(CheckpointError::Open { location, .. }) => assert!(location.contains(&port.to_string())),
            other => panic!("expected an Open error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn wrong_credentials_are_an_open_error_without_the_password() {
        let url = "redis://nobody:s3cret@127.0.0.1:6379/0";
        match RedisCheckpointStore::connect(url).await {
            Err(CheckpointError::Open { location, .. }) => {
                assert!(!location.contains("s3cret"), "{location}");
                assert!(location.contains("nobody"));
            }
            other => panic!("expected an Open error, got {other:?}"),
        }
    }
}
