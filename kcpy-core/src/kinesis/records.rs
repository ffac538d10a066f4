//! The records of one page (or fan-out event) on their way to the consumer.
//!
//! A [`Record`] takes about 200 bytes. Built up front, a 10,000-record page
//! wrote 2 MB of them that were read back once, with cold caches, when the
//! consumer handed them out, and kept that memory while the page waited in
//! the shard's channel. So a page read by kcpy stays as its shared buffers
//! and 24 bytes per record of where each record's parts end, and each
//! `Record` is built as the consumer takes it. Records that come already
//! built (the SDK's parse, KPL user records, tests) pass through as they
//! are.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use bytestring::ByteString;

use crate::{Aggregate, Record, SequenceNumber};

/// Records in shard order, handed out one at a time.
#[derive(Clone, Default)]
pub(crate) struct Records(Inner);

#[derive(Clone)]
enum Inner {
    // Boxed: records travel in each shard's channel, whose blocks hold 32
    // events each, allocated up front; inline, a page's parts made every
    // idle shard's channel five times bigger (40 MB more at 10,000 shards).
    Page(Box<Page>),
    Built(std::vec::IntoIter<Record>),
}

impl Default for Inner {
    fn default() -> Self {
        Inner::Built(Vec::new().into_iter())
    }
}

/// Where a record's parts end in its page's buffers, and its arrival.
#[derive(Clone, Copy)]
pub(super) struct End {
    pub(super) data: u32,
    pub(super) sequence: u32,
    pub(super) key: u32,
    /// Seconds since the epoch; NaN when the page gave none.
    pub(super) arrival: f64,
}

/// A page's buffers and its records' ends; `next` is the first record not
/// yet handed out.
#[derive(Clone)]
struct Page {
    payloads: Bytes,
    text: ByteString,
    ends: Vec<End>,
    next: usize,
    stream: Arc<str>,
    shard_id: Arc<str>,
    millis_behind_latest: Option<i64>,
    /// Some payload starts as a KPL aggregate: known from when the page was
    /// read, so a page without one is not looked through again.
    magic: bool,
}

/// What every KPL aggregate starts with.
pub(crate) const KPL_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

impl Page {
    /// Where record `index` starts in the payloads and in the text.
    fn starts(&self, index: usize) -> (usize, usize) {
        match index.checked_sub(1).map(|before| self.ends[before]) {
            Some(before) => (before.data as usize, before.key as usize),
            None => (0, 0),
        }
    }

    fn sequence_text(&self, index: usize) -> &str {
        let (_, text) = self.starts(index);
        &self.text[text..self.ends[index].sequence as usize]
    }

    fn record(&self, index: usize) -> Record {
        let end = self.ends[index];
        let (data, text) = self.starts(index);
        let sequence = &self.text[text..end.sequence as usize];
        Record {
            data: self.payloads.slice(data..end.data as usize),
            partition_key: self.text.slice_ref(&self.text[end.sequence as usize..end.key as usize]),
            // Checked when the page was made.
            sequence_number: SequenceNumber::checked_shared(self.text.slice_ref(sequence)),
            shard_id: Arc::clone(&self.shard_id),
            stream: Arc::clone(&self.stream),
            approximate_arrival_timestamp: Duration::try_from_secs_f64(end.arrival)
                .ok()
                .map(|since| SystemTime::UNIX_EPOCH + since),
            explicit_hash_key: None,
            millis_behind_latest: self.millis_behind_latest,
            sub_sequence_number: None,
            aggregate: Aggregate::Plain,
        }
    }
}

impl Records {
    /// A page's records, each sequence number checked now, so a bad one
    /// refuses the whole page before any of its records is handed out.
    pub(super) fn page(
        payloads: Bytes,
        text: ByteString,
        ends: Vec<End>,
        stream: &Arc<str>,
        shard_id: &Arc<str>,
        millis_behind_latest: Option<i64>,
        magic: bool,
    ) -> Result<Self, String> {
        let page = Page {
            magic,
            payloads,
            text,
            ends,
            next: 0,
            stream: Arc::clone(stream),
            shard_id: Arc::clone(shard_id),
            millis_behind_latest,
        };
        for index in 0..page.ends.len() {
            SequenceNumber::check(page.sequence_text(index)).map_err(|e| e.to_string())?;
        }
        Ok(Self(Inner::Page(Box::new(page))))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sequence number of the last record, in memory of its own (it is
    /// kept past the page).
    pub(crate) fn newest_detached(&self) -> Option<SequenceNumber> {
        match &self.0 {
            Inner::Page(page) => page
                .ends
                .len()
                .checked_sub(1)
                .filter(|last| *last >= page.next)
                .map(|last| SequenceNumber::copied(page.sequence_text(last))),
            Inner::Built(records) => records.as_slice().last().map(|r| r.sequence_number.detached()),
        }
    }

    /// The payload bytes of the records not yet handed out.
    pub(crate) fn data_len(&self) -> usize {
        match &self.0 {
            Inner::Page(page) => page.payloads.len() - page.starts(page.next).0,
            Inner::Built(records) => records.as_slice().iter().map(|r| r.data.len()).sum(),
        }
    }

    /// Whether a record not yet handed out is a KPL aggregate, by its first
    /// bytes.
    pub(crate) fn any_aggregate(&self) -> bool {
        let aggregate = |data: &[u8]| data.starts_with(&KPL_MAGIC);
        match &self.0 {
            Inner::Page(page) => {
                page.magic
                    && (page.next..page.ends.len()).any(|index| {
                        let (start, _) = page.starts(index);
                        aggregate(&page.payloads[start..page.ends[index].data as usize])
                    })
            }
            Inner::Built(records) => records.as_slice().iter().any(|r| aggregate(&r.data)),
        }
    }

    /// Each record's sequence number and the sub-sequence number a
    /// checkpoint after it keeps, in order, without handing them out.
    pub(crate) fn places(&self) -> Box<dyn Iterator<Item = (&str, Option<u64>)> + '_> {
        match &self.0 {
            Inner::Page(page) => Box::new((page.next..page.ends.len()).map(|index| (page.sequence_text(index), None))),
            Inner::Built(records) => Box::new(
                records
                    .as_slice()
                    .iter()
                    .map(|r| (r.sequence_number.as_str(), r.open_sub_sequence())),
            ),
        }
    }

    /// Drops the leading records for which `covered` holds; true when that
    /// was all of them.
    pub(crate) fn drop_covered(&mut self, mut covered: impl FnMut(&Record) -> bool) -> bool {
        match &mut self.0 {
            Inner::Page(page) => {
                while page.next < page.ends.len() && covered(&page.record(page.next)) {
                    page.next += 1;
                }
                page.next == page.ends.len()
            }
            Inner::Built(records) => {
                let count = records.as_slice().iter().take_while(|r| covered(r)).count();
                if count > 0 {
                    records.nth(count - 1);
                }
                records.as_slice().is_empty()
            }
        }
    }
}

impl From<Vec<Record>> for Records {
    fn from(records: Vec<Record>) -> Self {
        Self(Inner::Built(records.into_iter()))
    }
}

impl FromIterator<Record> for Records {
    fn from_iter<I: IntoIterator<Item = Record>>(records: I) -> Self {
        Vec::from_iter(records).into()
    }
}

impl Iterator for Records {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        match &mut self.0 {
            Inner::Page(page) => {
                let index = page.next;
                (index < page.ends.len()).then(|| {
                    page.next += 1;
                    page.record(index)
                })
            }
            Inner::Built(records) => records.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = match &self.0 {
            Inner::Page(page) => page.ends.len() - page.next,
            Inner::Built(records) => records.len(),
        };
        (len, Some(len))
    }
}

impl ExactSizeIterator for Records {}

// A shard's channel holds events of this size in every slot.
const _: () = assert!(std::mem::size_of::<Records>() <= 32);

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::super::page::parse_records;
    use super::*;

    fn page() -> Records {
        let body = br#"{"Records":[
            {"SequenceNumber":"7","Data":"YQ==","PartitionKey":"k1"},
            {"SequenceNumber":"80","ApproximateArrivalTimestamp":1.7e9,"Data":"YmI=","PartitionKey":"k2"},
            {"SequenceNumber":"900","Data":"Y2Nj","PartitionKey":"k3"}
        ],"NextShardIterator":"next","MillisBehindLatest":5}"#;
        parse_records(body, &Arc::from("s"), &Arc::from("shardId-0"))
            .expect("parses")
            .records
    }

    #[test]
    fn a_page_knows_whether_a_record_not_yet_taken_starts_as_a_kpl_aggregate() {
        // The second payload is the KPL magic and an "x".
        let body = br#"{"Records":[
            {"SequenceNumber":"7","Data":"YQ==","PartitionKey":"k1"},
            {"SequenceNumber":"8","Data":"84mawng=","PartitionKey":"k2"},
            {"SequenceNumber":"9","Data":"YQ==","PartitionKey":"k3"}
        ]}"#;
        let mut records = parse_records(body, &Arc::from("s"), &Arc::from("shardId-0"))
            .expect("parses")
            .records;
        assert!(records.any_aggregate());
        records.next();
        assert!(records.any_aggregate());
        let aggregate = records.next().expect("a record");
        assert_eq!(&aggregate.data[..4], &KPL_MAGIC[..]);
        assert!(!records.any_aggregate(), "a record handed out is not looked at again");
        let built: Records = vec![aggregate].into();
        assert!(built.any_aggregate());
    }

    #[test]
    fn a_pages_records_are_built_as_they_are_taken_and_what_is_left_is_counted() {
        let mut records = page();
        assert_eq!((records.len(), records.data_len()), (3, 6));
        let first = records.next().expect("a record");
        assert_eq!((first.sequence_number.as_str(), &*first.partition_key), ("7", "k1"));
        assert_eq!(&first.data[..], b"a");
        assert_eq!(first.approximate_arrival_timestamp, None);
        assert_eq!(first.millis_behind_latest, Some(5));
        assert_eq!((&*first.stream, &*first.shard_id), ("s", "shardId-0"));
        assert_eq!((records.len(), records.data_len()), (2, 5));
        let places: Vec<(&str, Option<u64>)> = records.places().collect();
        assert_eq!(places, [("80", None), ("900", None)]);
        assert!(!records.any_aggregate(), "no payload starts as an aggregate");
        assert_eq!(
            records.newest_detached().map(|s| s.into_string()).as_deref(),
            Some("900")
        );
        let rest: Vec<Record> = records.by_ref().collect();
        assert_eq!(&rest[1].data[..], b"ccc");
        assert!(rest[0].approximate_arrival_timestamp.is_some());
        assert!(records.is_empty());
        assert_eq!((records.data_len(), records.newest_detached()), (0, None));
    }

    #[test]
    fn records_built_before_and_records_of_a_page_answer_alike() {
        let built: Records = page().collect::<Vec<_>>().into();
        for records in [page(), built] {
            let mut records = records;
            let places: Vec<(String, Option<u64>)> = records.places().map(|(s, sub)| (s.to_owned(), sub)).collect();
            assert_eq!(places.len(), 3);
            assert_eq!(records.data_len(), 6);
            assert!(!records.drop_covered(|r| r.sequence_number.as_str() == "7"));
            assert_eq!(records.len(), 2, "the covered record is dropped");
            assert!(records.drop_covered(|_| true), "all of them covered");
            assert!(records.is_empty());
        }
    }
}
