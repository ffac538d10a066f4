//! The SDK client as the consumer's [`KinesisApi`]: ListShards and
//! GetShardIterator through the SDK, GetRecords through it once and then
//! signed and sent directly (see [`signed`](super::signed)).

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;

use super::errors::classify;
use super::page::{children_from_sdk, parse_body, parse_page, records_from_sdk, CapturePage, Slot};
use super::signed::{Learn, RouteCell};
use super::{ApiError, HashRange, IteratorPosition, KinesisApi, RecordsPage, ShardInfo, ShardPage, StreamRef};
use crate::Error;

/// The real thing.
pub(crate) struct SdkKinesis {
    pub(super) client: aws_sdk_kinesis::Client,
    /// How GetRecords calls go once the first one went through the SDK.
    route: RouteCell,
    /// Kinesis's clock as the direct calls see it.
    skew: Arc<crate::clock::Skew>,
    /// Whether to learn that route: not when the client has interceptors of
    /// its own, which must see every call.
    direct: bool,
}

impl SdkKinesis {
    /// The consumer retries failed calls itself, within each shard's call
    /// budget; retries inside the SDK would spend that budget behind its back.
    /// So the user's client is cloned once with the SDK's retries off.
    pub(crate) fn new(client: &aws_sdk_kinesis::Client) -> Self {
        let config = client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build();
        let direct = config.interceptors().next().is_none();
        Self {
            client: aws_sdk_kinesis::Client::from_conf(config),
            route: RouteCell::default(),
            skew: Arc::default(),
            direct,
        }
    }
}

#[async_trait]
impl KinesisApi for SdkKinesis {
    fn unusable(&self) -> Option<String> {
        self.client.config().region().is_none().then(|| {
            "the Kinesis client has no region: set one in its config (or AWS_REGION, or the AWS config file)".to_owned()
        })
    }

    async fn list_shards(&self, stream: &StreamRef, next_token: Option<String>) -> Result<ShardPage, ApiError> {
        // With a NextToken, Kinesis rejects any stream identifier.
        let request = match next_token {
            Some(token) => self.client.list_shards().next_token(token),
            None => match &stream.arn {
                Some(arn) => self.client.list_shards().stream_arn(arn),
                None => self.client.list_shards().stream_name(&stream.name),
            }
            .max_results(1000),
        };
        let output = request.send().await.map_err(|e| classify(e, "ListShards", stream))?;
        let shards = output
            .shards
            .unwrap_or_default()
            .into_iter()
            .map(|shard| ShardInfo {
                ending_sequence_number: shard
                    .sequence_number_range
                    .and_then(|range| range.ending_sequence_number),
                hash_range: shard
                    .hash_key_range
                    .and_then(|range| HashRange::parse(&range.starting_hash_key, &range.ending_hash_key)),
                shard_id: shard.shard_id,
                parent_shard_id: shard.parent_shard_id,
                adjacent_parent_shard_id: shard.adjacent_parent_shard_id,
            })
            .collect();
        Ok(ShardPage {
            shards,
            next_token: output.next_token,
        })
    }

    async fn get_shard_iterator(
        &self,
        stream: &StreamRef,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<String, ApiError> {
        let mut request = self.client.get_shard_iterator().shard_id(shard_id);
        request = match &stream.arn {
            Some(arn) => request.stream_arn(arn),
            None => request.stream_name(&stream.name),
        };
        request = match position {
            IteratorPosition::TrimHorizon => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
            IteratorPosition::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            IteratorPosition::AtTimestamp(at) => request
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from(*at)),
            IteratorPosition::AtSequence(seq) => request
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(seq.as_str()),
            IteratorPosition::AfterSequence(seq) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq.as_str()),
        };
        let output = request
            .send()
            .await
            .map_err(|e| classify(e, "GetShardIterator", stream))?;
        output.shard_iterator.ok_or_else(|| {
            ApiError::Fatal(Error::InvalidResponse {
                operation: "GetShardIterator",
                message: "no ShardIterator in the response".into(),
            })
        })
    }

    async fn get_records(
        &self,
        stream: &StreamRef,
        shard_id: &Arc<str>,
        iterator: &str,
        limit: i32,
    ) -> Result<RecordsPage, ApiError> {
        if let Some(route) = self.route.get() {
            let body = route.get_records(stream, iterator, limit).await?;
            return parse_body(&body, &stream.label, shard_id).map_err(ApiError::Fatal);
        }
        let slot = Slot::default();
        let mut request = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit)
            .customize()
            .interceptor(CapturePage {
                slot: Arc::clone(&slot),
            });
        if self.direct {
            request = request.interceptor(Learn {
                into: Arc::downgrade(&self.route),
                skew: Arc::clone(&self.skew),
            });
        }
        let output = request.send().await.map_err(|e| classify(e, "GetRecords", stream))?;
        let captured = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(body) = captured {
            return parse_page(&body.map_err(ApiError::Fatal)?, &stream.label, shard_id).map_err(ApiError::Fatal);
        }
        // Not captured (the interceptor did not run): the SDK parsed it.
        let records = records_from_sdk(
            "GetRecords",
            output.records,
            &stream.label,
            shard_id,
            output.millis_behind_latest,
        )
        .map_err(ApiError::Fatal)?;
        let child_shards = children_from_sdk(output.child_shards.unwrap_or_default());
        Ok(RecordsPage {
            records: records.into(),
            next_iterator: output.next_shard_iterator,
            millis_behind_latest: output.millis_behind_latest,
            child_shards,
        })
    }
}
