//! Records as the consumer hands them out.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::SequenceNumber;

/// One Kinesis record, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Record {
    /// The payload, exactly as it was put.
    pub data: Bytes,
    /// The partition key it was put with.
    pub partition_key: String,
    /// Its sequence number within the shard.
    pub sequence_number: SequenceNumber,
    /// The shard it was read from.
    pub shard_id: Arc<str>,
    /// When Kinesis accepted it, as Kinesis reports it.
    pub approximate_arrival_timestamp: Option<SystemTime>,
    /// The explicit hash key, when one is known. GetRecords does not return it
    /// for plain records, so it is `None` for them.
    pub explicit_hash_key: Option<String>,
    /// How far behind the tip of its shard the batch holding this record was,
    /// in milliseconds, as GetRecords reported it.
    pub millis_behind_latest: Option<i64>,
}

impl Record {
    /// Decodes the payload as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }

    /// Builds a record by hand, e.g. to test code that processes records.
    pub fn new(
        shard_id: impl Into<Arc<str>>,
        sequence_number: SequenceNumber,
        partition_key: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Self {
        Self {
            data: data.into(),
            partition_key: partition_key.into(),
            sequence_number,
            shard_id: shard_id.into(),
            approximate_arrival_timestamp: None,
            explicit_hash_key: None,
            millis_behind_latest: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Order {
        id: u32,
        item: String,
    }

    #[test]
    fn json_decodes_the_payload_into_a_user_type() {
        let seq = SequenceNumber::parse("1").expect("valid");
        let record = Record::new("shardId-000000000000", seq, "k", &br#"{"id":7,"item":"tea"}"#[..]);
        let order: Order = record.json().expect("valid json");
        assert_eq!(
            order,
            Order {
                id: 7,
                item: "tea".into()
            }
        );
        let bad = Record::new("s", SequenceNumber::parse("2").expect("valid"), "k", &b"not json"[..]);
        assert!(bad.json::<Order>().is_err());
    }

    #[test]
    fn serde_round_trips_a_record() {
        let mut record = Record::new(
            "shardId-000000000001",
            SequenceNumber::parse("123").expect("valid"),
            "pk",
            &b"hi"[..],
        );
        record.millis_behind_latest = Some(0);
        record.approximate_arrival_timestamp = Some(SystemTime::UNIX_EPOCH);
        let json = serde_json::to_string(&record).expect("serialize");
        let back: Record = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, record);
    }
}
