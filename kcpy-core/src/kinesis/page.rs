//! GetRecords responses (and SubscribeToShard events, which hold the same
//! JSON) read straight into [`Record`]s.
//!
//! Profiling showed the SDK's generic JSON deserialisation of GetRecords —
//! a `String` or `Vec` per field of every record, then our copy into a
//! `Record` — to be most of the consumer's CPU. So a page is parsed here,
//! with borrowed strings, and every payload of the page is base64-decoded
//! into one shared buffer, sliced per record. The page comes either from
//! [`signed`](super::signed), or, when a call goes through the SDK, from an
//! interceptor that captures a successful response body before the SDK
//! parses it (the SDK then sees an empty page).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use aws_sdk_kinesis::config::interceptors::BeforeDeserializationInterceptorContextMut;
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_types::body::SdkBody;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use http_body::{Body, Frame, SizeHint};
use serde::Deserialize;

use super::records::{End, Records, KPL_MAGIC};
use super::{HashRange, RecordsPage, ShardInfo};
use crate::{Aggregate, Error, Record, SequenceNumber};

/// The most a body buffer is sized to up front from its `Content-Length`: a
/// GetRecords response holds at most 10 MiB of data, about 14 MiB as base64
/// in JSON; a larger claim grows the buffer only as bytes arrive.
pub(crate) const MAX_PRESIZE: usize = 16 << 20;

/// The most a GetRecords response body may hold: 10 MiB of data is about
/// 14 MiB as base64 in JSON, so anything past this is not Kinesis talking,
/// and reading on would let a broken endpoint or proxy exhaust memory.
pub(crate) const MAX_BODY: usize = 32 << 20;

/// Appends a chunk of a GetRecords body, refusing to grow past [`MAX_BODY`].
pub(crate) fn append_capped(buffer: &mut BytesMut, data: &[u8]) -> Result<(), Error> {
    if buffer.len() + data.len() > MAX_BODY {
        return Err(invalid(format!("the response body is over {} MiB", MAX_BODY >> 20)));
    }
    buffer.extend_from_slice(data);
    Ok(())
}

/// What the SDK parses in place of a captured page.
const EMPTY_PAGE: &[u8] = b"{\"Records\":[]}";

/// One call's captured body, or why it was not read to its end.
pub(crate) type Slot = Arc<Mutex<Option<Result<Bytes, Error>>>>;

/// Takes a successful GetRecords response body into a [`Slot`].
#[derive(Debug)]
pub(crate) struct CapturePage {
    pub(crate) slot: Slot,
}

impl Intercept for CapturePage {
    fn name(&self) -> &'static str {
        "kcpy::CapturePage"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let response = context.response_mut();
        // Errors keep the SDK's own parsing, and its error codes.
        if !response.status().is_success() {
            return Ok(());
        }
        let length = response
            .headers()
            .get("content-length")
            .and_then(|len| len.parse::<usize>().ok())
            .unwrap_or(0);
        let inner = std::mem::replace(response.body_mut(), SdkBody::taken());
        *response.body_mut() = SdkBody::from_body_1_x(Tee {
            inner,
            buffer: BytesMut::with_capacity(length.min(MAX_PRESIZE)),
            slot: Arc::clone(&self.slot),
            state: TeeState::Reading,
        });
        Ok(())
    }
}

enum TeeState {
    Reading,
    Captured,
    Done,
}

/// Reads the real body into a buffer, hands it to the slot at its end, and
/// yields [`EMPTY_PAGE`] in its place.
struct Tee {
    inner: SdkBody,
    buffer: BytesMut,
    slot: Slot,
    state: TeeState,
}

impl Body for Tee {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        loop {
            match self.state {
                TeeState::Reading => match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let this = &mut *self;
                            if let Err(error) = append_capped(&mut this.buffer, data) {
                                this.buffer = BytesMut::new();
                                *this.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(error));
                                this.state = TeeState::Captured;
                            }
                        }
                    }
                    Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                    None => {
                        let body = std::mem::take(&mut self.buffer).freeze();
                        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Ok(body));
                        self.state = TeeState::Captured;
                    }
                },
                TeeState::Captured => {
                    self.state = TeeState::Done;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(EMPTY_PAGE)))));
                }
                TeeState::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, TeeState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawPage<'a> {
    // Absent and null both mean none.
    #[serde(borrow, default)]
    records: Option<Vec<RawRecord<'a>>>,
    next_shard_iterator: Option<String>,
    continuation_sequence_number: Option<String>,
    millis_behind_latest: Option<i64>,
    #[serde(default)]
    child_shards: Option<Vec<RawChild>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRecord<'a> {
    #[serde(borrow)]
    sequence_number: std::borrow::Cow<'a, str>,
    approximate_arrival_timestamp: Option<f64>,
    #[serde(borrow)]
    data: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    partition_key: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawChild {
    shard_id: String,
    #[serde(default)]
    parent_shards: Option<VecDeque<String>>,
    #[serde(default)]
    hash_key_range: Option<RawHashKeyRange>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawHashKeyRange {
    starting_hash_key: String,
    ending_hash_key: String,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidResponse {
        operation: "GetRecords",
        message: message.into(),
    }
}

/// A response body as it arrived: the chunks the connection read, not
/// joined (the scanner reads them as they are).
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Chunks {
    /// Adds the next chunk, refusing to grow past [`MAX_BODY`].
    pub(crate) fn push(&mut self, data: Bytes) -> Result<(), Error> {
        if self.len + data.len() > MAX_BODY {
            return Err(invalid(format!("the response body is over {} MiB", MAX_BODY >> 20)));
        }
        self.len += data.len();
        if !data.is_empty() {
            self.chunks.push(data);
        }
        Ok(())
    }

    /// The body in one piece: a copy, unless it came in one chunk.
    pub(crate) fn joined(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.chunks.as_slice() {
            [] => std::borrow::Cow::Borrowed(&[]),
            [one] => std::borrow::Cow::Borrowed(one),
            chunks => std::borrow::Cow::Owned(chunks.concat()),
        }
    }
}

/// Parses a captured GetRecords body into records of `shard_id` of `stream`.
pub(crate) fn parse_page(body: &[u8], stream: &Arc<str>, shard_id: &Arc<str>) -> Result<RecordsPage, Error> {
    page_of(parse_records(body, stream, shard_id))
}

/// [`parse_page`] for a body in chunks.
pub(crate) fn parse_body(body: &Chunks, stream: &Arc<str>, shard_id: &Arc<str>) -> Result<RecordsPage, Error> {
    let chunks: Vec<&[u8]> = body.chunks.iter().map(|chunk| &chunk[..]).collect();
    let gathered = match super::scan::scan_chunks(&chunks) {
        Some(gathered) => Ok(gathered),
        None => gather(&body.joined()),
    };
    page_of(gathered.and_then(|gathered| gathered.build(stream, shard_id)))
}

fn page_of(parsed: Result<Parsed, String>) -> Result<RecordsPage, Error> {
    let parsed = parsed.map_err(invalid)?;
    Ok(RecordsPage {
        records: parsed.records,
        next_iterator: parsed.next_iterator,
        millis_behind_latest: parsed.millis_behind_latest,
        child_shards: parsed.child_shards,
    })
}

/// A body of records as Kinesis sends it, parsed.
pub(crate) struct Parsed {
    pub(crate) records: Records,
    /// GetRecords: the next iterator, absent at a closed shard's end.
    pub(crate) next_iterator: Option<String>,
    /// SubscribeToShard: where the subscription stands, absent (or empty)
    /// at a closed shard's end.
    pub(crate) continuation: Option<String>,
    pub(crate) millis_behind_latest: Option<i64>,
    pub(crate) child_shards: Vec<ShardInfo>,
}

/// Parses a GetRecords body or a SubscribeToShardEvent payload into records
/// of `shard_id` of `stream`; the error says what is wrong with it.
pub(crate) fn parse_records(body: &[u8], stream: &Arc<str>, shard_id: &Arc<str>) -> Result<Parsed, String> {
    let gathered = match super::scan::scan_chunks(&[body]) {
        Some(gathered) => gathered,
        None => gather(body)?,
    };
    gathered.build(stream, shard_id)
}

/// The general path: any JSON serde_json reads (it checks every string it
/// reads is UTF-8). The scanner's tests compare with it.
pub(super) fn gather(body: &[u8]) -> Result<Gathered, String> {
    let raw: RawPage<'_> = serde_json::from_slice(body).map_err(|e| format!("unreadable JSON: {e}"))?;
    let mut page = Gathered::for_body(body.len());
    for record in raw.records.unwrap_or_default() {
        page.push(
            record.sequence_number.as_bytes(),
            record.approximate_arrival_timestamp,
            record.data.as_bytes(),
            record.partition_key.as_bytes(),
        )?;
    }
    page.next_iterator = raw.next_shard_iterator;
    page.continuation = raw.continuation_sequence_number;
    page.millis_behind_latest = raw.millis_behind_latest;
    page.child_shards = raw
        .child_shards
        .unwrap_or_default()
        .into_iter()
        .map(|child| {
            let mut parents = child.parent_shards.unwrap_or_default();
            ShardInfo {
                shard_id: child.shard_id,
                parent_shard_id: parents.pop_front(),
                adjacent_parent_shard_id: parents.pop_front(),
                ending_sequence_number: None,
                hash_range: child
                    .hash_key_range
                    .and_then(|range| HashRange::parse(&range.starting_hash_key, &range.ending_hash_key)),
            }
        })
        .collect();
    Ok(page.finish())
}

/// A page read but not yet made into records: every payload decoded into
/// one buffer, every sequence number and partition key one after the other
/// in one text buffer (checked as UTF-8 once, as a whole), and where each
/// record's parts end.
#[derive(Default)]
pub(super) struct Gathered {
    payloads: Vec<u8>,
    text: Vec<u8>,
    ends: Vec<End>,
    /// Some payload starts as a KPL aggregate.
    magic: bool,
    pub(super) next_iterator: Option<String>,
    pub(super) continuation: Option<String>,
    pub(super) millis_behind_latest: Option<i64>,
    pub(super) child_shards: Vec<ShardInfo>,
}

impl Gathered {
    /// Room for what a body of `len` bytes can hold: its payloads decode to
    /// at most 3/4 of it; [`finish`](Self::finish) gives back the rest.
    pub(super) fn for_body(len: usize) -> Self {
        Self {
            payloads: Vec::with_capacity(len / 4 * 3),
            text: Vec::with_capacity(len / 2),
            ..Self::default()
        }
    }

    pub(super) fn push(
        &mut self,
        sequence: &[u8],
        arrival: Option<f64>,
        data: &[u8],
        key: &[u8],
    ) -> Result<(), String> {
        let start = self.payloads.len();
        base64_simd::STANDARD
            .decode_append(data, &mut self.payloads)
            .map_err(|e| format!("record {} has bad base64 data: {e}", String::from_utf8_lossy(sequence)))?;
        // While the payload is in cache: a later look would read it cold.
        self.magic |= self.payloads.get(start..start + KPL_MAGIC.len()) == Some(&KPL_MAGIC[..]);
        self.text.extend_from_slice(sequence);
        let sequence_end = self.text.len();
        self.text.extend_from_slice(key);
        // Bodies are capped far below 4 GiB; the check keeps a bigger one an
        // error, not a wrapped offset.
        let offset = |at: usize| u32::try_from(at).map_err(|_| "the page is over 4 GiB".to_owned());
        self.ends.push(End {
            data: offset(self.payloads.len())?,
            sequence: offset(sequence_end)?,
            key: offset(self.text.len())?,
            arrival: arrival.unwrap_or(f64::NAN),
        });
        Ok(())
    }

    /// Gives back the room not used (shrinking in place: no copy).
    pub(super) fn finish(mut self) -> Self {
        self.payloads.shrink_to_fit();
        self.text.shrink_to_fit();
        self
    }

    /// [`finish`](Self::finish) for the scanner, which read the text raw:
    /// `None` if it holds a control character (JSON allows none unescaped).
    pub(super) fn finish_text(self) -> Option<Self> {
        // Without stopping early: a vector loop.
        let control = self.text.iter().fold(false, |any, b| any | (*b < 0x20));
        (!control).then(|| self.finish())
    }

    pub(super) fn build(self, stream: &Arc<str>, shard_id: &Arc<str>) -> Result<Parsed, String> {
        let text = ByteString::try_from(self.text)
            .map_err(|e| format!("a sequence number or partition key is not UTF-8: {e}"))?;
        let millis_behind_latest = self.millis_behind_latest;
        let records = Records::page(
            Bytes::from(self.payloads),
            text,
            self.ends,
            stream,
            shard_id,
            millis_behind_latest,
            self.magic,
        )?;
        Ok(Parsed {
            records,
            next_iterator: self.next_iterator,
            continuation: self.continuation,
            millis_behind_latest,
            child_shards: self.child_shards,
        })
    }
}

/// Records as the SDK parsed them (GetRecords without a captured body),
/// built as [`parse_page`] builds them.
pub(crate) fn records_from_sdk(
    operation: &'static str,
    records: Vec<aws_sdk_kinesis::types::Record>,
    stream: &Arc<str>,
    shard_id: &Arc<str>,
    millis_behind_latest: Option<i64>,
) -> Result<Vec<Record>, Error> {
    records
        .into_iter()
        .map(|record| {
            let sequence_number =
                SequenceNumber::try_from(record.sequence_number).map_err(|e| Error::InvalidResponse {
                    operation,
                    message: e.to_string(),
                })?;
            Ok(Record {
                data: Bytes::from(record.data.into_inner()),
                partition_key: ByteString::from(record.partition_key.unwrap_or_default()),
                sequence_number,
                shard_id: Arc::clone(shard_id),
                stream: Arc::clone(stream),
                approximate_arrival_timestamp: record
                    .approximate_arrival_timestamp
                    .and_then(|at| SystemTime::try_from(at).ok()),
                explicit_hash_key: None,
                millis_behind_latest,
                sub_sequence_number: None,
                aggregate: Aggregate::Plain,
            })
        })
        .collect()
}

/// The shards that continue a closed one, as the SDK parsed them.
pub(crate) fn children_from_sdk(children: Vec<aws_sdk_kinesis::types::ChildShard>) -> Vec<ShardInfo> {
    children
        .into_iter()
        .map(|child| {
            let mut parents = child.parent_shards.into_iter();
            ShardInfo {
                shard_id: child.shard_id,
                parent_shard_id: parents.next(),
                adjacent_parent_shard_id: parents.next(),
                ending_sequence_number: None,
                hash_range: child
                    .hash_key_range
                    .and_then(|range| HashRange::parse(&range.starting_hash_key, &range.ending_hash_key)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn shard() -> Arc<str> {
        Arc::from("shardId-000000000001")
    }

    #[test]
    fn a_page_parses_into_records_sharing_one_payload_buffer() {
        let body = br#"{"Records":[
            {"SequenceNumber":"49590338271490256608559692538361571095921575989136588898","ApproximateArrivalTimestamp":1.7e9,"Data":"aGVsbG8=","PartitionKey":"a"},
            {"SequenceNumber":"49590338271490256608559692538361571095921575989136588899","Data":"","PartitionKey":"b\"c","EncryptionType":"NONE"}
        ],"NextShardIterator":"next","MillisBehindLatest":12}"#;
        let page = parse_page(body, &Arc::from("s"), &shard()).expect("parses");
        let records: Vec<Record> = page.records.collect();
        assert_eq!(records.len(), 2);
        assert_eq!(&records[0].data[..], b"hello");
        assert_eq!(records[0].partition_key, "a");
        assert_eq!(records[1].partition_key, "b\"c", "escaped keys are unescaped");
        assert!(records[1].data.is_empty());
        assert_eq!(
            records[0].approximate_arrival_timestamp,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(records[1].millis_behind_latest, Some(12));
        assert_eq!(page.next_iterator.as_deref(), Some("next"));
        assert!(page.child_shards.is_empty());
        assert_eq!(
            records[1].sequence_number.as_str(),
            "49590338271490256608559692538361571095921575989136588899"
        );
    }

    #[test]
    fn a_pages_sequence_numbers_and_partition_keys_are_views_of_one_text_buffer() {
        let body = br#"{"Records":[
            {"SequenceNumber":"1","Data":"YQ==","PartitionKey":"key-1"},
            {"SequenceNumber":"22","Data":"Yg==","PartitionKey":"key-22"},
            {"SequenceNumber":"333","Data":"Yw==","PartitionKey":"key-333"}
        ],"NextShardIterator":"next"}"#;
        let records: Vec<Record> = parse_page(body, &Arc::from("s"), &shard())
            .expect("parses")
            .records
            .collect();
        let first = records[0].sequence_number.as_str().as_ptr();
        let texts: Vec<(&str, &str)> = records
            .iter()
            .map(|r| (r.sequence_number.as_str(), &*r.partition_key))
            .collect();
        assert_eq!(texts, [("1", "key-1"), ("22", "key-22"), ("333", "key-333")]);
        // One after the other in one buffer, not a string each.
        let span = 1 + 5 + 2 + 6 + 3 + 7;
        for record in &records {
            for text in [record.sequence_number.as_str(), &*record.partition_key] {
                let offset = text.as_ptr() as usize - first as usize;
                assert!(offset + text.len() <= span, "{text} lies outside the page's text");
            }
        }
        let detached = records[2].sequence_number.detached();
        assert_eq!(detached, records[2].sequence_number);
        assert_ne!(detached.as_str().as_ptr(), records[2].sequence_number.as_str().as_ptr());
    }

    #[test]
    fn a_closed_shard_reports_its_children_and_no_iterator() {
        let body = br#"{"Records":null,"NextShardIterator":null,"MillisBehindLatest":0,"ChildShards":[
            {"ShardId":"shardId-000000000003","ParentShards":["shardId-000000000001","shardId-000000000002"],"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"1"}}
        ]}"#;
        let page = parse_page(body, &Arc::from("s"), &shard()).expect("parses");
        assert_eq!(page.next_iterator, None);
        let child = &page.child_shards[0];
        assert_eq!(child.shard_id, "shardId-000000000003");
        assert_eq!(child.parent_shard_id.as_deref(), Some("shardId-000000000001"));
        assert_eq!(child.adjacent_parent_shard_id.as_deref(), Some("shardId-000000000002"));
    }

    #[tokio::test]
    async fn a_captured_body_over_the_cap_is_an_invalid_response_not_a_huge_buffer() {
        use http_body_util::BodyExt;
        let slot = Slot::default();
        let chunk = Bytes::from(vec![b' '; 1 << 20]);
        let chunks = (0..MAX_BODY / chunk.len() + 2).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone())));
        let inner = SdkBody::from_body_1_x(http_body_util::StreamBody::new(futures::stream::iter(chunks)));
        let tee = Tee {
            inner,
            buffer: BytesMut::new(),
            slot: Arc::clone(&slot),
            state: TeeState::Reading,
        };
        let seen = tee.collect().await.expect("the SDK gets a body").to_bytes();
        assert_eq!(&seen[..], EMPTY_PAGE);
        let captured = slot.lock().expect("lock").take();
        assert!(
            matches!(captured, Some(Err(Error::InvalidResponse { .. }))),
            "{captured:?}"
        );
    }

    #[test]
    fn bodies_grow_up_to_the_cap_and_no_further() {
        let mut buffer = BytesMut::new();
        append_capped(&mut buffer, &vec![0; MAX_BODY - 1]).expect("under the cap");
        append_capped(&mut buffer, b"x").expect("at the cap");
        assert!(append_capped(&mut buffer, b"y").is_err());
        assert_eq!(buffer.len(), MAX_BODY);
        // A body kept as its chunks is capped alike.
        let mut chunks = Chunks::default();
        chunks.push(Bytes::from(vec![0; MAX_BODY - 1])).expect("under the cap");
        chunks.push(Bytes::from_static(b"x")).expect("at the cap");
        let over = chunks.push(Bytes::from_static(b"y"));
        assert!(matches!(over, Err(Error::InvalidResponse { .. })), "{over:?}");
        assert_eq!(chunks.joined().len(), MAX_BODY);
    }

    #[test]
    fn a_body_in_chunks_parses_as_the_same_body_in_one_piece() {
        let body: &[u8] = br#"{"Records":[{"SequenceNumber":"1","Data":"YQ==","PartitionKey":"k"},{"SequenceNumber":"2","Data":"Yg==","PartitionKey":"l"}],"NextShardIterator":"AB","MillisBehindLatest":3}"#;
        let children: &[u8] = br#"{"Records":[],"MillisBehindLatest":0,"ChildShards":[{"ShardId":"shardId-1","ParentShards":["shardId-0"],"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"9"}}]}"#;
        for body in [body, children] {
            let whole = parse_page(body, &Arc::from("s"), &shard()).expect("parses");
            for cut in 0..=body.len() {
                let mut chunks = Chunks::default();
                for piece in [&body[..cut], &body[cut..]] {
                    chunks.push(Bytes::copy_from_slice(piece)).expect("small");
                }
                let page = parse_body(&chunks, &Arc::from("s"), &shard()).expect("parses in chunks");
                assert_eq!(
                    page.records.collect::<Vec<_>>(),
                    whole.records.clone().collect::<Vec<_>>()
                );
                assert_eq!(page.next_iterator, whole.next_iterator);
                assert_eq!(page.millis_behind_latest, whole.millis_behind_latest);
                assert_eq!(page.child_shards.len(), whole.child_shards.len());
            }
        }
        let mut broken = Chunks::default();
        for piece in [&b"{\"Records\":[{"[..], b"}"] {
            broken.push(Bytes::from_static(piece)).expect("small");
        }
        let error = parse_body(&broken, &Arc::from("s"), &shard()).err();
        assert!(matches!(error, Some(Error::InvalidResponse { .. })), "{error:?}");
    }

    #[test]
    fn bad_pages_are_invalid_responses_not_panics() {
        for body in [
            &b"not json"[..],
            br#"{"Records":[{"SequenceNumber":"1.5e3","Data":"","PartitionKey":"a"}]}"#,
            br#"{"Records":[{"SequenceNumber":"1","Data":"%%%","PartitionKey":"a"}]}"#,
            br#"{"Records":[{"Data":"","PartitionKey":"a"}]}"#,
        ] {
            assert!(
                matches!(
                    parse_page(body, &Arc::from("s"), &shard()),
                    Err(Error::InvalidResponse { .. })
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
