//! Records as the consumer hands them out.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use bytestring::ByteString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::SequenceNumber;

/// One Kinesis record, or one user record of a KPL aggregate, with where it
/// came from.
///
/// The user records of one aggregate share its sequence number; a record's
/// place in its shard is (`sequence_number`, `sub_sequence_number`).
///
/// A record owns no memory of its own: its `data` is a view of one buffer
/// holding the decoded payloads of its whole page (a user record's, of its
/// aggregate's), and its partition key and sequence number are views of
/// another holding the page's text. Reading costs no allocation per record,
/// but keeping one record keeps its page's buffers in memory (up to 10 MiB),
/// so copy out what you keep long ([`SequenceNumber::detached`],
/// `Bytes::copy_from_slice`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Record {
    /// The payload, exactly as it was put.
    pub data: Bytes,
    /// The partition key it was put with. Like the sequence number, a view
    /// of the text of the record's page (it derefs to `&str`).
    pub partition_key: ByteString,
    /// Its sequence number within the shard.
    pub sequence_number: SequenceNumber,
    /// The shard it was read from.
    pub shard_id: Arc<str>,
    /// The name of the stream it was read from (empty in a record built by
    /// hand with [`Record::new`]).
    #[serde(default)]
    pub stream: Arc<str>,
    /// When Kinesis accepted it, as Kinesis reports it.
    pub approximate_arrival_timestamp: Option<SystemTime>,
    /// The explicit hash key, when one is known: a user record of a KPL
    /// aggregate carries its own when it was put with one. GetRecords does
    /// not return it for plain records, so it is `None` for them.
    pub explicit_hash_key: Option<String>,
    /// How far behind the tip of its shard the batch holding this record was,
    /// in milliseconds, as GetRecords reported it.
    pub millis_behind_latest: Option<i64>,
    /// A user record of a KPL aggregate: its place among the aggregate's
    /// user records, from 0. It shares the aggregate's sequence number,
    /// arrival time and lag. `None` for a record put as it is (and for every
    /// record with de-aggregation off).
    pub sub_sequence_number: Option<u64>,
    /// What KPL de-aggregation made of it.
    #[serde(default)]
    pub aggregate: Aggregate,
}

/// What KPL de-aggregation made of a record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Aggregate {
    /// Put as it is: not a KPL aggregate, or de-aggregation is off.
    #[default]
    Plain,
    /// One user record of a KPL aggregate; its
    /// [`sub_sequence_number`](Record::sub_sequence_number) is its place in it.
    Member {
        /// How many user records the aggregate holds.
        count: u64,
        /// Its hash key (the explicit one, else the MD5 digest of its
        /// partition key) lies outside the hash key range of the shard it was
        /// read from. A KPL producer whose shard map was stale puts such
        /// records again itself; other aggregators do not (see
        /// [`ConsumerBuilder::drop_aggregates_outside_shard`](crate::ConsumerBuilder::drop_aggregates_outside_shard)).
        outside_shard: bool,
    },
    /// Starts with the KPL magic bytes but is not a valid aggregate: delivered
    /// whole, exactly as it was put.
    Malformed(MalformedAggregate),
}

/// Why a record with the KPL magic bytes is not an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MalformedAggregate {
    /// Too short to hold the magic bytes and a digest.
    Truncated,
    /// The MD5 digest at its end does not match.
    Digest,
    /// The bytes are not an `AggregatedRecord` protobuf.
    Protobuf,
    /// A user record names a partition or explicit hash key the tables do
    /// not have.
    Index,
    /// The aggregate holds no user record.
    Empty,
}

impl Record {
    /// Decodes the payload as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }

    /// The sub-sequence number a checkpoint after this record keeps: its own
    /// inside an aggregate, `None` once it is a whole Kinesis record's end
    /// (a plain record, or an aggregate's last user record).
    pub(crate) fn open_sub_sequence(&self) -> Option<u64> {
        match (self.sub_sequence_number, self.aggregate) {
            (Some(number), Aggregate::Member { count, .. }) if number < count.saturating_sub(1) => Some(number),
            _ => None,
        }
    }

    /// The checkpoint that marks this record and everything before it
    /// processed (with a copy of the sequence number, sharing nothing with
    /// the record's page).
    pub fn checkpoint(&self) -> crate::Checkpoint {
        let sequence = self.sequence_number.detached();
        match self.open_sub_sequence() {
            Some(number) => crate::Checkpoint::SubSequence(crate::SubSequence::new(sequence, number)),
            None => crate::Checkpoint::Sequence(sequence),
        }
    }

    /// Builds a record by hand, e.g. to test code that processes records.
    pub fn new(
        shard_id: impl Into<Arc<str>>,
        sequence_number: SequenceNumber,
        partition_key: impl Into<ByteString>,
        data: impl Into<Bytes>,
    ) -> Self {
        Self {
            data: data.into(),
            partition_key: partition_key.into(),
            sequence_number,
            shard_id: shard_id.into(),
            stream: Arc::from(""),
            approximate_arrival_timestamp: None,
            explicit_hash_key: None,
            millis_behind_latest: None,
            sub_sequence_number: None,
            aggregate: Aggregate::Plain,
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
