//! An Amazon DynamoDB [`CheckpointStore`] and [`LeaseStore`] for kcpy, the
//! coordination store the KCL uses too.
//!
//! One table holds an item per (consumer name, stream, shard): partition key
//! `group` (consumer name and stream, length-prefixed so no pair of names
//! can collide) and sort key `shard_id`, with the checkpoint as text and the
//! lease (`owner`, `epoch`, `heartbeat`, `handoff_to`, `parents`). Every
//! change is one conditional write: a lease change checks owner and epoch (or
//! the observed epoch and heartbeat), a checkpoint write also checks the
//! checkpoint it read, so concurrent writers never lose an update and a
//! fenced-out worker changes nothing. DynamoDB writes are durable on success.
//!
//! [`DynamoDbCheckpointStore::create_table`] creates the table (on-demand
//! capacity) when asked; it is never created implicitly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue, ScalarAttributeType,
    TableStatus,
};
use aws_sdk_dynamodb::Client;
use kcpy_core::{Checkpoint, CheckpointError, CheckpointKey, CheckpointStore, Lease, LeaseStore};

type Item = HashMap<String, AttributeValue>;

/// Checkpoints and leases in a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoDbCheckpointStore {
    client: Client,
    table: String,
}

/// The table holds something this crate cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SchemaError(String);

impl DynamoDbCheckpointStore {
    /// A store in `table`, which must exist (see [`create_table`](Self::create_table)).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table with on-demand capacity unless it exists, and waits
    /// until it is active. A table of that name with another key schema is
    /// refused with [`CheckpointError::Open`], never altered.
    pub async fn create_table(&self) -> Result<(), CheckpointError> {
        let open = |source: kcpy_core::BoxError| CheckpointError::Open {
            location: format!("dynamodb table {}", self.table),
            source,
        };
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute("group")?)
            .attribute_definitions(attribute("shard_id")?)
            .key_schema(key("group", KeyType::Hash)?)
            .key_schema(key("shard_id", KeyType::Range)?)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(error) if error.code() == Some("ResourceInUseException") => {}
            Err(error) => return Err(open(Arc::new(error.into_service_error()))),
        }
        for _ in 0..600 {
            let described = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| open(Arc::new(e.into_service_error())))?;
            let table = described
                .table
                .ok_or_else(|| open(Arc::new(SchemaError("DescribeTable returned no table".into()))))?;
            let keys: Vec<(String, String)> = table
                .key_schema()
                .iter()
                .map(|k| (k.attribute_name().to_owned(), k.key_type().as_str().to_owned()))
                .collect();
            let expected = [
                ("group".to_owned(), "HASH".to_owned()),
                ("shard_id".to_owned(), "RANGE".to_owned()),
            ];
            if keys != expected {
                return Err(open(Arc::new(SchemaError(format!(
                    "table {} has keys {keys:?}, expected {expected:?}",
                    self.table
                )))));
            }
            if table.table_status == Some(TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(open(Arc::new(SchemaError(format!(
            "table {} did not become active within a minute",
            self.table
        )))))
    }
}

fn attribute(name: &str) -> Result<AttributeDefinition, CheckpointError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| CheckpointError::backend(e, false))
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, CheckpointError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| CheckpointError::backend(e, false))
}

/// The partition key of a consumer name and stream.
fn group(consumer_name: &str, stream_name: &str) -> String {
    format!("{}:{consumer_name}:{stream_name}", consumer_name.len())
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

fn n(number: u64) -> AttributeValue {
    AttributeValue::N(number.to_string())
}

fn item_key(key: &CheckpointKey) -> Item {
    HashMap::from([
        ("group".to_owned(), s(&group(&key.consumer_name, &key.stream_name))),
        ("shard_id".to_owned(), s(&key.shard_id)),
    ])
}

fn is_condition_failure<E: ProvideErrorMetadata>(error: &SdkError<E>) -> bool {
    error.code() == Some("ConditionalCheckFailedException")
}

fn store_error<E>(error: SdkError<E>) -> CheckpointError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let transient = match &error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(service) => {
            service.raw().status().is_server_error()
                || matches!(
                    error.code(),
                    Some(
                        "ProvisionedThroughputExceededException"
                            | "RequestLimitExceeded"
                            | "ThrottlingException"
                            | "InternalServerError"
                            | "TransactionConflictException"
                            | "LimitExceededException"
                    )
                )
        }
        _ => false,
    };
    match error {
        SdkError::ServiceError(service) => CheckpointError::backend(service.into_err(), transient),
        other => CheckpointError::backend(other, transient),
    }
}

fn text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn number(item: &Item, name: &str) -> u64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .unwrap_or_default()
}

fn stored_checkpoint(key: &CheckpointKey, item: &Item) -> Result<Option<Checkpoint>, CheckpointError> {
    match item.get("checkpoint") {
        None => Ok(None),
        Some(AttributeValue::S(stored)) => CheckpointError::parse_stored(key, stored).map(Some),
        // Shown as DynamoDB's type and value, which never parses as a checkpoint.
        Some(other) => match CheckpointError::parse_stored(key, &format!("{other:?}")) {
            Err(malformed) => Err(malformed),
            Ok(_) => Err(CheckpointError::backend(
                SchemaError(format!("{key}: a checkpoint that is not text")),
                false,
            )),
        },
    }
}

fn lease_from_item(consumer_name: &str, stream_name: &str, item: &Item) -> Result<Lease, CheckpointError> {
    let shard = text(item, "shard_id").unwrap_or_default();
    let key = CheckpointKey::new(consumer_name, stream_name, shard);
    let parents = item
        .get("parents")
        .and_then(|v| v.as_l().ok())
        .map(|list| list.iter().filter_map(|p| p.as_s().ok().cloned()).collect())
        .unwrap_or_default();
    let mut lease = Lease::new(key, parents);
    lease.checkpoint = stored_checkpoint(&lease.key, item)?;
    lease.owner = text(item, "owner").map(str::to_owned);
    lease.handoff_to = text(item, "handoff_to").map(str::to_owned);
    lease.epoch = number(item, "epoch");
    lease.heartbeat = number(item, "heartbeat");
    Ok(lease)
}

impl DynamoDbCheckpointStore {
    async fn get(&self, key: &CheckpointKey) -> Result<Option<Item>, CheckpointError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(item_key(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        Ok(output.item)
    }

    /// Read, check, conditional write, until no other writer came between.
    /// `lease` fences the write by owner and epoch.
    async fn advance(
        &self,
        key: &CheckpointKey,
        checkpoint: &Checkpoint,
        lease: Option<&Lease>,
    ) -> Result<(), CheckpointError> {
        loop {
            let item = self.get(key).await?;
            if let Some(lease) = lease {
                let held = item.as_ref().is_some_and(|item| {
                    lease.owner.is_some()
                        && text(item, "owner") == lease.owner.as_deref()
                        && number(item, "epoch") == lease.epoch
                });
                if !held {
                    return Err(CheckpointError::lease_lost(key));
                }
            }
            let stored = match &item {
                Some(item) => stored_checkpoint(key, item)?,
                None => None,
            };
            if !CheckpointError::check_forward(key, stored.as_ref(), checkpoint)? {
                return Ok(());
            }
            let mut update = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(item_key(key)))
                .update_expression(
                    "SET #cp = :cp, consumer_name = :consumer, stream_name = :stream, \
                     epoch = if_not_exists(epoch, :zero), heartbeat = if_not_exists(heartbeat, :zero)",
                )
                .expression_attribute_names("#cp", "checkpoint")
                .expression_attribute_values(":cp", s(checkpoint.as_str()))
                .expression_attribute_values(":consumer", s(&key.consumer_name))
                .expression_attribute_values(":stream", s(&key.stream_name))
                .expression_attribute_values(":zero", n(0));
            // The value exactly as read, not as re-rendered: a stored form
            // that parses but is spelt otherwise would never match, and the
            // loop would spin.
            let raw = item.as_ref().and_then(|item| item.get("checkpoint")).cloned();
            let mut condition = match (&stored, raw) {
                (Some(_), Some(raw)) => {
                    update = update.expression_attribute_values(":stored", raw);
                    "#cp = :stored".to_owned()
                }
                _ => "attribute_not_exists(#cp)".to_owned(),
            };
            if let Some(lease) = lease {
                condition.push_str(" AND #owner = :owner AND epoch = :epoch");
                update = update
                    .expression_attribute_names("#owner", "owner")
                    .expression_attribute_values(":owner", s(lease.owner.as_deref().unwrap_or_default()))
                    .expression_attribute_values(":epoch", n(lease.epoch));
            }
            match update.condition_expression(condition).send().await {
                Ok(_) => return Ok(()),
                // Someone wrote in between: read again.
                Err(error) if is_condition_failure(&error) => {}
                Err(error) => return Err(store_error(error)),
            }
        }
    }

    /// A conditional lease update returning the new item; a failed condition
    /// means the lease changed.
    async fn update_lease(
        &self,
        key: &CheckpointKey,
        expression: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Lease, CheckpointError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(item_key(key)))
            .update_expression(expression)
            .condition_expression(condition)
            .expression_attribute_names("#owner", "owner")
            .return_values(ReturnValue::AllNew);
        for (name, value) in values {
            update = update.expression_attribute_values(name, value);
        }
        match update.send().await {
            Ok(output) => lease_from_item(
                &key.consumer_name,
                &key.stream_name,
                &output.attributes.unwrap_or_default(),
            ),
            Err(error) if is_condition_failure(&error) => Err(CheckpointError::lease_lost(key)),
            Err(error) => Err(store_error::<UpdateItemError>(error)),
        }
    }
}

#[async_trait]
impl CheckpointStore for DynamoDbCheckpointStore {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        match self.get(key).await? {
            Some(item) => stored_checkpoint(key, &item),
            None => Ok(None),
        }
    }

    async fn save(&self, key: &CheckpointKey, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        self.advance(key, checkpoint, None).await
    }

    async fn reset(&self, key: &CheckpointKey, to: Option<&Checkpoint>) -> Result<(), CheckpointError> {
        // The lease ends with it: no owner, a higher epoch.
        let (set, remove) = match to {
            Some(_) => ("SET #cp = :cp, ", "REMOVE #owner, handoff_to"),
            None => ("SET ", "REMOVE #owner, handoff_to, #cp"),
        };
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(item_key(key)))
            .update_expression(format!(
                "{set}consumer_name = :consumer, stream_name = :stream, \
                 epoch = if_not_exists(epoch, :zero) + :one, heartbeat = if_not_exists(heartbeat, :zero) + :one {remove}"
            ))
            .expression_attribute_names("#cp", "checkpoint")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":consumer", s(&key.consumer_name))
            .expression_attribute_values(":stream", s(&key.stream_name))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1));
        if let Some(to) = to {
            update = update.expression_attribute_values(":cp", s(to.as_str()));
        }
        update.send().await.map_err(store_error::<UpdateItemError>).map(drop)
    }
}

#[async_trait]
impl LeaseStore for DynamoDbCheckpointStore {
    async fn list_leases(&self, consumer_name: &str, stream_name: &str) -> Result<Vec<Lease>, CheckpointError> {
        let mut leases = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#group = :group")
                .expression_attribute_names("#group", "group")
                .expression_attribute_values(":group", s(&group(consumer_name, stream_name)))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(store_error)?;
            for item in page.items() {
                leases.push(lease_from_item(consumer_name, stream_name, item)?);
            }
            match page.last_evaluated_key {
                Some(next) if !next.is_empty() => start = Some(next),
                _ => return Ok(leases),
            }
        }
    }

    async fn create_lease(&self, key: &CheckpointKey, parents: &[String]) -> Result<bool, CheckpointError> {
        let mut item = item_key(key);
        item.insert("consumer_name".into(), s(&key.consumer_name));
        item.insert("stream_name".into(), s(&key.stream_name));
        item.insert("epoch".into(), n(0));
        item.insert("heartbeat".into(), n(0));
        item.insert(
            "parents".into(),
            AttributeValue::L(parents.iter().map(|p| s(p)).collect()),
        );
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(shard_id)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(error) if is_condition_failure(&error) => Ok(false),
            Err(error) => Err(store_error(error)),
        }
    }

    async fn take_lease(&self, observed: &Lease, owner: &str) -> Result<Lease, CheckpointError> {
        self.update_lease(
            &observed.key,
            "SET #owner = :owner, epoch = epoch + :one, heartbeat = heartbeat + :one REMOVE handoff_to",
            "epoch = :epoch AND heartbeat = :heartbeat",
            vec![
                (":owner", s(owner)),
                (":one", n(1)),
                (":epoch", n(observed.epoch)),
                (":heartbeat", n(observed.heartbeat)),
            ],
        )
        .await
    }

    async fn renew_lease(&self, held: &Lease) -> Result<Lease, CheckpointError> {
        self.update_lease(
            &held.key,
            "SET heartbeat = heartbeat + :one",
            "#owner = :owner AND epoch = :epoch",
            vec![
                (":owner", s(held.owner.as_deref().unwrap_or_default())),
                (":one", n(1)),
                (":epoch", n(held.epoch)),
            ],
        )
        .await
    }

    async fn request_handoff(&self, observed: &Lease, to: &str) -> Result<(), CheckpointError> {
        self.update_lease(
            &observed.key,
            "SET handoff_to = :to",
            "#owner = :owner AND epoch = :epoch",
            vec![
                (":to", s(to)),
                (":owner", s(observed.owner.as_deref().unwrap_or_default())),
                (":epoch", n(observed.epoch)),
            ],
        )
        .await
        .map(drop)
    }

    async fn release_lease(&self, held: &Lease, to: Option<&str>) -> Result<(), CheckpointError> {
        let owner = s(held.owner.as_deref().unwrap_or_default());
        let result = match to {
            Some(to) => {
                self.update_lease(
                    &held.key,
                    "SET #owner = :to, epoch = epoch + :one, heartbeat = heartbeat + :one REMOVE handoff_to",
                    "#owner = :owner AND epoch = :epoch",
                    vec![
                        (":to", s(to)),
                        (":owner", owner),
                        (":one", n(1)),
                        (":epoch", n(held.epoch)),
                    ],
                )
                .await
            }
            None => {
                self.update_lease(
                    &held.key,
                    "SET epoch = epoch + :one, heartbeat = heartbeat + :one REMOVE #owner, handoff_to",
                    "#owner = :owner AND epoch = :epoch",
                    vec![(":owner", owner), (":one", n(1)), (":epoch", n(held.epoch))],
                )
                .await
            }
        };
        result.map(drop)
    }

    async fn save_leased(&self, held: &Lease, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        self.advance(&held.key, checkpoint, Some(held)).await
    }

    async fn delete_lease(&self, observed: &Lease) -> Result<(), CheckpointError> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(item_key(&observed.key)))
            .condition_expression("attribute_not_exists(#owner) AND epoch = :epoch AND #cp = :end")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#cp", "checkpoint")
            .expression_attribute_values(":epoch", n(observed.epoch))
            .expression_attribute_values(":end", s(&Checkpoint::ShardEnd.to_string()))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => Err(CheckpointError::lease_lost(&observed.key)),
            Err(error) => Err(store_error::<DeleteItemError>(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};

    /// dynalite, started by the test scripts (`KCPY_DYNAMODB_ENDPOINT`).
    fn client() -> Client {
        let endpoint = std::env::var("KCPY_DYNAMODB_ENDPOINT").unwrap_or_else(|_| {
            panic!("KCPY_DYNAMODB_ENDPOINT is not set: run the tests with scripts/test, which starts dynalite")
        });
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new("test", "test", None, None, "kcpy-tests"))
            .build();
        Client::from_conf(config)
    }

    async fn store() -> DynamoDbCheckpointStore {
        let store = DynamoDbCheckpointStore::new(client(), "kcpy-conformance");
        store.create_table().await.expect("create the table");
        store
    }

    #[tokio::test]
    async fn dynamodb_store_meets_the_checkpoint_store_contract() {
        kcpy_core::test_util::checkpoint_store_conformance(&store().await).await;
        kcpy_core::test_util::reset_conformance(&store().await).await;
    }

    #[tokio::test]
    async fn dynamodb_store_meets_the_lease_store_contract() {
        kcpy_core::test_util::lease_store_conformance(&store().await).await;
    }

    #[tokio::test]
    async fn malformed_stored_values_are_reported_and_never_overwritten() {
        let store = store().await;
        let (planter, reader) = (store.clone(), store.clone());
        kcpy_core::test_util::malformed_value_conformance(
            &store,
            move |key, value| {
                let store = planter.clone();
                async move {
                    let mut item = item_key(&key);
                    item.insert("checkpoint".into(), s(&value));
                    store
                        .client
                        .put_item()
                        .table_name(&store.table)
                        .set_item(Some(item))
                        .send()
                        .await
                        .expect("plant");
                }
            },
            move |key| {
                let store = reader.clone();
                async move {
                    let item = store.get(&key).await.expect("read").expect("an item");
                    text(&item, "checkpoint").expect("text").to_owned()
                }
            },
        )
        .await;
    }

    #[test]
    fn group_keys_cannot_collide() {
        assert_ne!(group("a:b", "c"), group("a", "b:c"));
    }

    #[tokio::test]
    async fn a_table_with_another_key_schema_is_refused() {
        let client = client();
        let table = format!("kcpy-foreign-{}", std::process::id());
        client
            .create_table()
            .table_name(&table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute("id").expect("attribute"))
            .key_schema(key("id", KeyType::Hash).expect("key"))
            .send()
            .await
            .expect("create a foreign table");
        let result = DynamoDbCheckpointStore::new(client.clone(), &table)
            .create_table()
            .await;
        let _ = client.delete_table().table_name(&table).send().await;
        assert!(matches!(result, Err(CheckpointError::Open { .. })), "{result:?}");
    }
}
