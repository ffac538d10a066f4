//! KPL aggregated records: one Kinesis record holding many user records, as
//! the Kinesis Producer Library (and compatible aggregators) put them.
//!
//! The format: the magic bytes `F3 89 9A C2`, a protobuf `AggregatedRecord`,
//! and the 16-byte MD5 digest of the protobuf bytes. A record with the magic
//! bytes that fails the digest or the decoding is what it is — a plain
//! record — and is delivered whole, flagged, as KCL does.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
#[cfg(any(test, feature = "test-util"))]
use md5::{Digest, Md5};
use prost::Message;

use crate::kinesis::HashRange;
use crate::{Aggregate, MalformedAggregate, Record};

mod md5_lanes;

/// How many records [`intact`] looks at together.
pub(crate) const GROUP: usize = md5_lanes::LANES;

pub(crate) use crate::kinesis::KPL_MAGIC as MAGIC;
const DIGEST_LEN: usize = 16;

/// `AggregatedRecord` of the KPL's `messages.proto` (proto2; prost does not
/// enforce `required`, so a missing field reads as its default and is
/// judged below like any other value).
#[derive(Clone, PartialEq, Message)]
struct AggregatedRecord {
    // Read as bytes (the same wire format as a string) so that each key is
    // a view of the payload, checked as UTF-8 below.
    #[prost(bytes = "bytes", repeated, tag = "1")]
    partition_key_table: Vec<Bytes>,
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<UserRecord>,
}

/// `Record` of `messages.proto`. Its tags (field 4) are not kept: prost
/// skips them, like any field it does not know, after checking their framing.
#[derive(Clone, PartialEq, Message)]
struct UserRecord {
    #[prost(uint64, tag = "1")]
    partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "bytes", tag = "3")]
    data: Bytes,
}

/// What de-aggregating one Kinesis record found.
#[derive(Debug)]
pub(crate) enum Unpacked {
    /// Not an aggregate: deliver it as it is.
    Plain(Record),
    /// The magic bytes, but not a valid aggregate: deliver it whole, flagged.
    Malformed(Record),
    /// Its user records were appended to the output, in order; `outside`
    /// of them hash outside the shard.
    Users { records: usize, outside: usize },
}

/// Whether `data` starts with the KPL magic bytes.
pub(crate) fn is_aggregate(data: &[u8]) -> bool {
    data.starts_with(&MAGIC)
}

/// Which of `records` (the first [`GROUP`]) are aggregates whose MD5
/// digest matches their bytes: their digests are computed side by side.
pub(crate) fn intact(records: &[Record]) -> [bool; GROUP] {
    let mut bodies: [&[u8]; GROUP] = [&[]; GROUP];
    // Each aggregate's place in `records` and the digest it carries.
    let mut whose: [(usize, &[u8]); GROUP] = [(0, &[]); GROUP];
    let mut count = 0;
    for (at, record) in records.iter().enumerate().take(GROUP) {
        if let Some((body, carried)) = framing(&record.data) {
            bodies[count] = body;
            whose[count] = (at, carried);
            count += 1;
        }
    }
    let mut digests = [[0u8; DIGEST_LEN]; GROUP];
    md5_lanes::digests(&bodies[..count], &mut digests);
    let mut intact = [false; GROUP];
    for ((at, carried), digest) in whose.iter().zip(&digests).take(count) {
        intact[*at] = *carried == digest;
    }
    intact
}

/// An aggregate's protobuf bytes and the digest it carries, if it has the
/// magic bytes and room for both.
fn framing(data: &[u8]) -> Option<(&[u8], &[u8])> {
    if !is_aggregate(data) || data.len() < MAGIC.len() + DIGEST_LEN {
        return None;
    }
    Some((
        &data[MAGIC.len()..data.len() - DIGEST_LEN],
        &data[data.len() - DIGEST_LEN..],
    ))
}

/// [`unpack`] of one record, its digest checked on its own.
#[cfg(test)]
fn unpack_one(record: Record, range: Option<HashRange>, out: &mut Vec<Record>) -> Unpacked {
    let intact = intact(std::slice::from_ref(&record))[0];
    unpack(record, intact, range, out)
}

/// Splits `record` into its user records, appended to `out`, if it is a KPL
/// aggregate; `intact` says whether its digest matched ([`intact`]).
/// `range` is the hash key range of the shard it was read from, when
/// known: user records whose hash key lies outside it are flagged.
pub(crate) fn unpack(record: Record, intact: bool, range: Option<HashRange>, out: &mut Vec<Record>) -> Unpacked {
    if !is_aggregate(&record.data) {
        return Unpacked::Plain(record);
    }
    match decode(&record.data, intact) {
        Ok(aggregate) => users(record, aggregate, range, out),
        Err(why) => Unpacked::Malformed(flag(record, why)),
    }
}

fn flag(mut record: Record, why: MalformedAggregate) -> Record {
    record.aggregate = Aggregate::Malformed(why);
    record
}

fn decode(data: &Bytes, intact: bool) -> Result<AggregatedRecord, MalformedAggregate> {
    if data.len() < MAGIC.len() + DIGEST_LEN {
        return Err(MalformedAggregate::Truncated);
    }
    if !intact {
        return Err(MalformedAggregate::Digest);
    }
    // Decoding from `Bytes` makes each user record's data a view of the
    // Kinesis record's payload, not a copy.
    let body = data.slice(MAGIC.len()..data.len() - DIGEST_LEN);
    let aggregate = AggregatedRecord::decode(body).map_err(|_| MalformedAggregate::Protobuf)?;
    if aggregate.records.is_empty() {
        return Err(MalformedAggregate::Empty);
    }
    Ok(aggregate)
}

fn users(parent: Record, aggregate: AggregatedRecord, range: Option<HashRange>, out: &mut Vec<Record>) -> Unpacked {
    let AggregatedRecord {
        partition_key_table,
        mut explicit_hash_key_table,
        records,
    } = aggregate;
    // A protobuf string is UTF-8, or the aggregate is not one.
    if partition_key_table.iter().any(|key| std::str::from_utf8(key).is_err()) {
        return Unpacked::Malformed(flag(parent, MalformedAggregate::Protobuf));
    }
    // Uses left of each hash key table entry: the last one takes the key
    // instead of a copy. Every index is checked before anything is handed
    // out.
    let mut hash_key_uses = vec![0u32; explicit_hash_key_table.len()];
    for user in &records {
        let key = usize::try_from(user.partition_key_index).ok();
        if key.is_none_or(|at| at >= partition_key_table.len()) {
            return Unpacked::Malformed(flag(parent, MalformedAggregate::Index));
        }
        if let Some(index) = user.explicit_hash_key_index {
            let Some(uses) = usize::try_from(index).ok().and_then(|at| hash_key_uses.get_mut(at)) else {
                return Unpacked::Malformed(flag(parent, MalformedAggregate::Index));
            };
            *uses += 1;
        }
    }
    // Whether each table entry hashes outside the shard: once per key, not
    // per user record; not at all when the shard holds every hash key.
    let range = range.filter(|range| !range.is_everything());
    let outside_key: Vec<bool> = match range {
        Some(range) => {
            // The keys' digests (their hash keys) side by side, as the
            // aggregates' own.
            let mut outside = Vec::with_capacity(partition_key_table.len());
            let mut digests = [[0u8; DIGEST_LEN]; GROUP];
            for keys in partition_key_table.chunks(GROUP) {
                let bytes: [&[u8]; GROUP] = std::array::from_fn(|at| keys.get(at).map_or(&[][..], |key| &key[..]));
                md5_lanes::digests(&bytes[..keys.len()], &mut digests);
                outside.extend(
                    digests[..keys.len()]
                        .iter()
                        .map(|digest| !range.contains(u128::from_be_bytes(*digest))),
                );
            }
            outside
        }
        None => Vec::new(),
    };
    let outside_explicit: Vec<bool> = explicit_hash_key_table
        .iter()
        // A hash key that is no number cannot be placed: not counted outside.
        .map(|key| range.is_some_and(|range| key.parse::<u128>().is_ok_and(|hash| !range.contains(hash))))
        .collect();
    let count = records.len();
    let mut outside = 0;
    out.reserve(count);
    for (number, user) in (0u64..).zip(records) {
        // Every index was checked above.
        let key = user.partition_key_index as usize;
        // A view of the aggregate's bytes, checked as UTF-8 above.
        let partition_key = partition_key_table
            .get(key)
            .and_then(|key| ByteString::try_from(key.clone()).ok())
            .unwrap_or_default();
        let (explicit_hash_key, is_outside) = match user.explicit_hash_key_index {
            Some(index) => {
                let at = index as usize;
                let hash_key = take_or_copy(&mut explicit_hash_key_table, &mut hash_key_uses, at);
                (Some(hash_key), outside_explicit.get(at).copied().unwrap_or(false))
            }
            None => (None, outside_key.get(key).copied().unwrap_or(false)),
        };
        outside += usize::from(is_outside);
        out.push(Record {
            data: user.data,
            partition_key,
            sequence_number: parent.sequence_number.clone(),
            shard_id: Arc::clone(&parent.shard_id),
            stream: Arc::clone(&parent.stream),
            approximate_arrival_timestamp: parent.approximate_arrival_timestamp,
            explicit_hash_key,
            millis_behind_latest: parent.millis_behind_latest,
            sub_sequence_number: Some(number),
            aggregate: Aggregate::Member {
                count: count as u64,
                outside_shard: is_outside,
            },
        });
    }
    Unpacked::Users {
        records: count,
        outside,
    }
}

/// Entry `at` of `table`: moved out at its last use, copied before.
fn take_or_copy(table: &mut [String], uses: &mut [u32], at: usize) -> String {
    match (table.get_mut(at), uses.get_mut(at)) {
        (Some(entry), Some(left)) => {
            *left = left.saturating_sub(1);
            if *left == 0 {
                std::mem::take(entry)
            } else {
                entry.clone()
            }
        }
        _ => String::new(),
    }
}

/// Frames protobuf bytes as the KPL does: the magic bytes, the bytes, their
/// MD5 digest.
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(Md5::digest(body).as_slice());
    out
}

/// A KPL aggregated record of `users` (partition key, data, explicit hash
/// key), each key kept once in its table as the KPL does.
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn aggregate(users: &[(&str, &[u8], Option<&str>)]) -> Vec<u8> {
    fn index(table: &mut Vec<String>, key: &str) -> u64 {
        let at = table.iter().position(|k| k == key).unwrap_or_else(|| {
            table.push(key.to_owned());
            table.len() - 1
        });
        at as u64
    }
    fn key_index(table: &mut Vec<Bytes>, key: &str) -> u64 {
        let at = table.iter().position(|k| k == key.as_bytes()).unwrap_or_else(|| {
            table.push(Bytes::copy_from_slice(key.as_bytes()));
            table.len() - 1
        });
        at as u64
    }
    let mut message = AggregatedRecord::default();
    for (key, data, hash_key) in users {
        let partition_key_index = key_index(&mut message.partition_key_table, key);
        let explicit_hash_key_index = hash_key.map(|hash_key| index(&mut message.explicit_hash_key_table, hash_key));
        message.records.push(UserRecord {
            partition_key_index,
            explicit_hash_key_index,
            data: Bytes::copy_from_slice(data),
        });
    }
    framed(&message.encode_to_vec())
}

/// The hash key Kinesis routes a partition key by: the MD5 digest of its
/// UTF-8 bytes, as an unsigned big-endian 128-bit number.
#[cfg(test)]
pub(crate) fn partition_key_hash(key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(key.as_bytes()).into())
}

/// Which of `records` are flagged as hashing outside their shard.
#[cfg(test)]
pub(crate) fn outside_flags<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<bool> {
    records
        .into_iter()
        .map(|r| {
            matches!(
                r.aggregate,
                Aggregate::Member {
                    outside_shard: true,
                    ..
                }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SequenceNumber;

    /// Made by the Python `aws-kinesis-agg` 1.2.3 aggregator: `pk1` → `hello`
    /// (no explicit hash key), `pk2` → `world` with explicit hash key `12345`.
    const FROM_PYTHON: &str = "f3899ac20a03706b310a03706b32120531323334351a0908001a0568656c6c6f\
                               1a0b080110001a05776f726c642d4b507cdeecd4c2e172334553fbb420";

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex"))
            .collect()
    }

    fn kinesis_record(data: Vec<u8>) -> Record {
        let mut record = Record::new(
            "shardId-000000000000",
            SequenceNumber::parse("49590338271490256608559692538361571095921575989136588898").expect("valid"),
            "aggregate-key",
            data,
        );
        record.millis_behind_latest = Some(42);
        record.approximate_arrival_timestamp = Some(std::time::SystemTime::UNIX_EPOCH);
        record
    }

    fn users_of(record: Record, range: Option<HashRange>) -> Vec<Record> {
        let mut out = Vec::new();
        match unpack_one(record, range, &mut out) {
            Unpacked::Users { records, .. } => assert_eq!(records, out.len()),
            other => panic!("not de-aggregated: {other:?}"),
        }
        out
    }

    fn malformed_as(data: Vec<u8>, why: MalformedAggregate) {
        let parent = kinesis_record(data);
        match unpack_one(parent.clone(), None, &mut Vec::new()) {
            Unpacked::Malformed(record) => {
                assert_eq!(record.aggregate, Aggregate::Malformed(why));
                assert_eq!(record.data, parent.data, "delivered whole, as it was put");
                assert_eq!(record.sub_sequence_number, None);
            }
            other => panic!("expected {why:?}, got {other:?}"),
        }
    }

    #[test]
    fn an_aggregate_from_the_python_aggregator_becomes_its_user_records_in_order() {
        let users = users_of(kinesis_record(hex(FROM_PYTHON)), None);
        assert_eq!(users.len(), 2);
        assert_eq!(
            (
                &*users[0].partition_key,
                &users[0].data[..],
                users[0].explicit_hash_key.as_deref()
            ),
            ("pk1", &b"hello"[..], None)
        );
        assert_eq!(
            (
                &*users[1].partition_key,
                &users[1].data[..],
                users[1].explicit_hash_key.as_deref()
            ),
            ("pk2", &b"world"[..], Some("12345"))
        );
        for (number, user) in (0u64..).zip(&users) {
            assert_eq!(user.sub_sequence_number, Some(number));
            assert_eq!(
                user.sequence_number.as_str(),
                "49590338271490256608559692538361571095921575989136588898"
            );
            assert_eq!(user.millis_behind_latest, Some(42));
            assert_eq!(
                user.approximate_arrival_timestamp,
                Some(std::time::SystemTime::UNIX_EPOCH)
            );
            assert_eq!(
                user.aggregate,
                Aggregate::Member {
                    count: 2,
                    outside_shard: false
                }
            );
        }
        assert_eq!(
            users[0].checkpoint().as_str(),
            "49590338271490256608559692538361571095921575989136588898:0"
        );
        assert_eq!(
            users[1].checkpoint().as_str(),
            "49590338271490256608559692538361571095921575989136588898"
        );
    }

    #[test]
    fn user_records_share_the_payload_and_their_keys_instead_of_copying_them() {
        let parent = kinesis_record(aggregate(&[("a", &[7; 100], None), ("b", &[8; 100], None)]));
        let range = parent.data.as_ptr_range();
        for user in users_of(parent.clone(), None) {
            assert!(
                range.contains(&user.data.as_ptr()),
                "a view of the Kinesis record's bytes"
            );
            assert!(range.contains(&user.partition_key.as_ptr()), "the partition key too");
        }
    }

    #[test]
    fn a_plain_record_passes_untouched() {
        let plain = kinesis_record(b"{\"id\":1}".to_vec());
        match unpack_one(plain.clone(), None, &mut Vec::new()) {
            Unpacked::Plain(record) => assert_eq!(record, plain),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn records_with_the_magic_bytes_that_are_not_aggregates_are_delivered_whole_and_flagged() {
        let good = aggregate(&[("a", b"x", None)]);
        let mut corrupt_digest = good.clone();
        let last = corrupt_digest.len() - 1;
        corrupt_digest[last] ^= 1;
        malformed_as(corrupt_digest, MalformedAggregate::Digest);
        malformed_as(MAGIC.to_vec(), MalformedAggregate::Truncated);
        malformed_as(
            [&MAGIC[..], b"plain text after the magic"].concat(),
            MalformedAggregate::Digest,
        );
        // Truncated protobuf with a correct digest: a length prefix past the end.
        malformed_as(framed(&[0x1a, 0x10, 0x08]), MalformedAggregate::Protobuf);
        malformed_as(framed(&[]), MalformedAggregate::Empty);
        let out_of_table = AggregatedRecord {
            partition_key_table: vec!["a".into()],
            explicit_hash_key_table: vec![],
            records: vec![UserRecord {
                partition_key_index: 3,
                explicit_hash_key_index: None,
                data: Bytes::from_static(b"x"),
            }],
        };
        malformed_as(framed(&out_of_table.encode_to_vec()), MalformedAggregate::Index);
        let hash_key_out_of_table = AggregatedRecord {
            partition_key_table: vec!["a".into()],
            explicit_hash_key_table: vec![],
            records: vec![UserRecord {
                partition_key_index: 0,
                explicit_hash_key_index: Some(0),
                data: Bytes::from_static(b"x"),
            }],
        };
        malformed_as(
            framed(&hash_key_out_of_table.encode_to_vec()),
            MalformedAggregate::Index,
        );
        // A partition key is a protobuf string: UTF-8, or no aggregate.
        let key_not_utf8 = AggregatedRecord {
            partition_key_table: vec![Bytes::from_static(b"\xff\xfe")],
            explicit_hash_key_table: vec![],
            records: vec![UserRecord {
                partition_key_index: 0,
                explicit_hash_key_index: None,
                data: Bytes::from_static(b"x"),
            }],
        };
        malformed_as(framed(&key_not_utf8.encode_to_vec()), MalformedAggregate::Protobuf);
    }

    /// `Record` with its tags and a field this crate has never heard of.
    #[derive(Clone, PartialEq, Message)]
    struct TaggedUser {
        #[prost(uint64, tag = "1")]
        partition_key_index: u64,
        #[prost(bytes = "vec", tag = "3")]
        data: Vec<u8>,
        #[prost(message, repeated, tag = "4")]
        tags: Vec<Tag>,
        #[prost(string, tag = "99")]
        future: String,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Tag {
        #[prost(string, tag = "1")]
        key: String,
        #[prost(string, optional, tag = "2")]
        value: Option<String>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Extended {
        #[prost(string, repeated, tag = "1")]
        partition_key_table: Vec<String>,
        #[prost(message, repeated, tag = "3")]
        records: Vec<TaggedUser>,
        #[prost(uint32, tag = "7")]
        unknown: u32,
    }

    #[test]
    fn tags_and_unknown_fields_are_skipped() {
        let message = Extended {
            partition_key_table: vec!["k".into()],
            records: vec![TaggedUser {
                partition_key_index: 0,
                data: b"payload".to_vec(),
                tags: vec![Tag {
                    key: "source".into(),
                    value: Some("test".into()),
                }],
                future: "ignored".into(),
            }],
            unknown: 9,
        };
        let users = users_of(kinesis_record(framed(&message.encode_to_vec())), None);
        assert_eq!(users.len(), 1);
        assert_eq!(&users[0].data[..], b"payload");
        assert_eq!(users[0].partition_key, "k");
    }

    #[test]
    fn empty_and_large_user_records_come_out_exactly() {
        let large = vec![0xAB; 900 * 1024];
        let users = users_of(
            kinesis_record(aggregate(&[("a", b"", None), ("b", &large, None), ("a", b"", None)])),
            None,
        );
        assert_eq!(
            users.iter().map(|u| u.data.len()).collect::<Vec<_>>(),
            [0, large.len(), 0]
        );
        assert_eq!(users[1].data, large);
        assert_eq!(users[2].partition_key, "a");
    }

    #[test]
    fn user_records_hashing_outside_the_shard_are_flagged_and_counted() {
        let key_hash = partition_key_hash("inside");
        let range = HashRange {
            start: key_hash,
            end: key_hash,
        };
        let inside_explicit = key_hash.to_string();
        let mut records = Vec::new();
        let unpacked = unpack_one(
            kinesis_record(aggregate(&[
                ("inside", b"1", None),
                ("elsewhere", b"2", None),
                ("elsewhere", b"3", Some(&inside_explicit)),
                ("inside", b"4", Some("0")),
            ])),
            Some(range),
            &mut records,
        );
        let Unpacked::Users { outside, .. } = unpacked else {
            panic!("{unpacked:?}")
        };
        assert_eq!(outside, 2);
        let flags = outside_flags(&records);
        assert_eq!(
            flags,
            [false, true, false, true],
            "the explicit hash key decides when there is one"
        );
    }

    #[test]
    fn many_distinct_keys_are_each_placed_against_the_shard_by_their_own_hash() {
        // Keys hashed side by side, in groups and a remainder.
        let keys: Vec<String> = (0..21).map(|k| format!("key-{k}")).collect();
        let users: Vec<(&str, &[u8], Option<&str>)> = keys.iter().map(|k| (k.as_str(), &b"x"[..], None)).collect();
        let range = HashRange {
            start: 0,
            end: u128::MAX / 2,
        };
        let mut records = Vec::new();
        let unpacked = unpack_one(kinesis_record(aggregate(&users)), Some(range), &mut records);
        let expected: Vec<bool> = keys.iter().map(|k| !range.contains(partition_key_hash(k))).collect();
        assert!(expected.contains(&true) && expected.contains(&false), "{expected:?}");
        let flags = outside_flags(&records);
        assert_eq!(flags, expected);
        let Unpacked::Users { outside, .. } = unpacked else {
            panic!("{unpacked:?}")
        };
        assert_eq!(outside, expected.iter().filter(|o| **o).count());
    }

    #[test]
    fn a_group_of_records_has_each_aggregate_digest_judged_on_its_own() {
        let good = aggregate(&[("a", b"1", None)]);
        let mut bad = aggregate(&[("b", b"2", None)]);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let group: Vec<Record> = [
            good.clone(),
            b"plain".to_vec(),
            bad,
            good.clone(),
            MAGIC.to_vec(),
            good.clone(),
            good.clone(),
            good,
        ]
        .into_iter()
        .map(kinesis_record)
        .collect();
        assert_eq!(intact(&group), [true, false, false, true, false, true, true, true]);
        assert_eq!(
            intact(&group[..3]),
            [true, false, false, false, false, false, false, false]
        );
    }

    #[test]
    fn the_partition_key_hash_is_the_md5_digest_as_a_big_endian_number() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(partition_key_hash(""), 0xd41d8cd98f00b204e9800998ecf8427e);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Whatever user records go in, de-aggregation gives them back:
            /// same data, keys, hash keys, order.
            #[test]
            fn aggregating_then_de_aggregating_gives_the_user_records_back(
                users in proptest::collection::vec(
                    ("[a-z]{1,8}", proptest::collection::vec(any::<u8>(), 0..64), proptest::option::of("[0-9]{1,38}")),
                    1..40,
                )
            ) {
                let borrowed: Vec<(&str, &[u8], Option<&str>)> = users
                    .iter()
                    .map(|(key, data, hash_key)| (key.as_str(), data.as_slice(), hash_key.as_deref()))
                    .collect();
                let out = users_of(kinesis_record(aggregate(&borrowed)), None);
                prop_assert_eq!(out.len(), users.len());
                for (number, (user, (key, data, hash_key))) in (0u64..).zip(out.iter().zip(&users)) {
                    prop_assert_eq!(&user.partition_key, key);
                    prop_assert_eq!(&user.data[..], &data[..]);
                    prop_assert_eq!(&user.explicit_hash_key, hash_key);
                    prop_assert_eq!(user.sub_sequence_number, Some(number));
                }
            }

            /// Whatever bytes follow the magic, unpacking never panics and
            /// never loses the record.
            #[test]
            fn any_bytes_after_the_magic_are_delivered(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
                let data = [&MAGIC[..], &tail].concat();
                let mut out = Vec::new();
                match unpack_one(kinesis_record(data.clone()), None, &mut out) {
                    Unpacked::Malformed(record) => prop_assert_eq!(&record.data[..], &data[..]),
                    Unpacked::Users { records, .. } => prop_assert!(records > 0 && records == out.len()),
                    Unpacked::Plain(_) => prop_assert!(false, "the magic bytes were seen"),
                }
            }
        }
    }
}
