//! A fast path for reading a page of records in the form Kinesis writes it.
//!
//! Profiling showed serde_json's scanning of strings (a byte at a time) to be
//! half of the consumer's CPU per record: a page is mostly long strings
//! (base64 payloads, 56-digit sequence numbers). Kinesis writes pages in one
//! form — these fields, no escapes in them — so this scanner reads that form
//! with `memchr` (SIMD) to find the end of each string, and declines
//! anything else (an escape, a field it does not know, child shards), which
//! then goes through serde_json: every page is read exactly as serde_json
//! reads it, and most pages are read faster.
//!
//! A body is read from the chunks it arrived in, as they are: gathering a
//! multi-MiB body into one buffer first was a tenth of the consumer's CPU
//! (a copy of every byte, into memory never touched before). The scanner
//! reads a page one unit at a time — its opening, a field, a record — and a
//! unit that runs past the end of a chunk is read again from a small buffer
//! holding its start and the next chunk's first bytes.
//!
//! The body is not checked as UTF-8 as a whole: the payloads (most of it)
//! are checked byte by byte by the base64 decoder, field names are matched
//! against ASCII, the few other strings are checked here (a failure is
//! declined, for serde_json to report), and what is kept as text — the
//! sequence numbers and partition keys, one buffer per page — is checked
//! once, as a whole, when the page's records are built.

use super::decimal::leading_decimal;
use super::page::Gathered;

/// Reads `body` if it is in the form Kinesis writes; `None` sends it to the
/// general parser (which also reports what is wrong with a broken page).
#[cfg(test)]
pub(super) fn scan(body: &[u8]) -> Option<Gathered> {
    scan_chunks(&[body])
}

/// What the next unit of a page is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The page's `{`.
    Open,
    /// A field of the page, up to the `,` or `}` after it.
    Field,
    /// A record, up to the `,` or `]` after it (and a `]`'s `,` or `}`).
    Record,
    /// Nothing but whitespace.
    Close,
}

/// What reading a unit gave.
enum Unit {
    /// Read in this many bytes; the next unit is this.
    Read(usize, Expect),
    /// The unit did not read: the window may end too early for it.
    Short,
    /// The page is not in Kinesis' form, however it goes on.
    Decline,
}

/// [`scan`] over a body in `chunks`, in order, without joining them.
pub(super) fn scan_chunks(chunks: &[&[u8]]) -> Option<Gathered> {
    let mut page = Gathered::for_body(chunks.iter().map(|chunk| chunk.len()).sum());
    let mut expect = Expect::Open;
    // A unit that crossed a chunk's end: its bytes so far, and how many of
    // them came from chunks before the current one.
    let mut carry: Vec<u8> = Vec::new();
    let mut carried = 0;
    let (mut chunk, mut at) = (0, 0);
    while expect != Expect::Close {
        while chunks.get(chunk).is_some_and(|c| at == c.len()) {
            (chunk, at) = (chunk + 1, 0);
        }
        let current = *chunks.get(chunk)?;
        if carry.is_empty() {
            match unit(&current[at..], expect, &mut page) {
                Unit::Read(used, next) => (at, expect) = (at + used, next),
                Unit::Short if chunk + 1 < chunks.len() => {
                    carry.extend_from_slice(&current[at..]);
                    (carried, chunk, at) = (carry.len(), chunk + 1, 0);
                }
                Unit::Short | Unit::Decline => return None,
            }
        } else {
            // Doubling what is carried, so a long unit is read again only a
            // few times.
            let take = (current.len() - at).min(carry.len().max(4096));
            carry.extend_from_slice(&current[at..at + take]);
            let last = chunk + 1 == chunks.len() && at + take == current.len();
            match unit(&carry, expect, &mut page) {
                // A unit read in more bytes than it needed would have read
                // before; `carried` bytes were already in an earlier chunk.
                Unit::Read(used, next) if used >= carried => {
                    (at, expect) = (at + take - (carry.len() - used), next);
                    carry.clear();
                }
                Unit::Short if !last => {
                    at += take;
                    if at == current.len() {
                        (carried, chunk, at) = (carry.len(), chunk + 1, 0);
                    }
                }
                Unit::Read(..) | Unit::Short | Unit::Decline => return None,
            }
        }
    }
    let mut rest = chunks.get(chunk..).unwrap_or_default().iter();
    let first = rest.next().map_or(&[][..], |c| &c[at.min(c.len())..]);
    let only_space = |bytes: &[u8]| bytes.iter().all(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'));
    if !only_space(first) || !rest.all(|c| only_space(c)) {
        return None;
    }
    // The page's text, checked once for control characters (not allowed
    // unescaped in a JSON string; digits are none); for UTF-8, as it is built.
    page.finish_text()
}

/// Reads the unit `expect` at the start of `window`.
fn unit(window: &[u8], expect: Expect, page: &mut Gathered) -> Unit {
    let mut scan = Scan { bytes: window, at: 0 };
    let next = match expect {
        Expect::Open => open(&mut scan),
        Expect::Field => field(&mut scan, page),
        Expect::Record => match record(&mut scan, page) {
            Some(Ok(next)) => Some(next),
            Some(Err(())) => return Unit::Decline,
            None => None,
        },
        Expect::Close => Some(Expect::Close),
    };
    match next {
        Some(next) => Unit::Read(scan.at, next),
        None => Unit::Short,
    }
}

fn open(scan: &mut Scan<'_>) -> Option<Expect> {
    scan.eat(b'{')?;
    if scan.peek()? == b'}' {
        scan.at += 1;
        return Some(Expect::Close);
    }
    Some(Expect::Field)
}

/// After a member of the page: the next unit.
fn after_field(scan: &mut Scan<'_>) -> Option<Expect> {
    Some(match scan.next_in(b'}')? {
        true => Expect::Field,
        false => Expect::Close,
    })
}

fn field(scan: &mut Scan<'_>, page: &mut Gathered) -> Option<Expect> {
    let field = scan.string()?;
    scan.eat(b':')?;
    // Byte patterns compile to length and byte checks, not calls. What a
    // field sets, it sets again if the unit is read again.
    match field {
        b"Records" => {
            if !scan.null()? {
                scan.eat(b'[')?;
                if scan.peek()? != b']' {
                    return Some(Expect::Record);
                }
                scan.at += 1;
            }
        }
        b"NextShardIterator" => page.next_iterator = scan.text_or_null()?.map(str::to_owned),
        b"ContinuationSequenceNumber" => page.continuation = scan.text_or_null()?.map(str::to_owned),
        b"MillisBehindLatest" => {
            page.millis_behind_latest = match scan.null()? {
                true => None,
                false => Some(std::str::from_utf8(scan.number()?).ok()?.parse().ok()?),
            }
        }
        // Children come once per shard, at its end: the general
        // parser reads them.
        b"ChildShards" => {
            if !scan.null()? {
                scan.eat(b'[')?;
                scan.eat(b']')?;
            }
        }
        _ => return None,
    }
    after_field(scan)
}

/// Whether `rest` starts with the field name `name` and its closing quote:
/// a comparison of known length, inlined rather than a call to `memcmp`.
fn named<const N: usize>(rest: &[u8], name: &'static [u8; N]) -> Option<&'static [u8]> {
    let start: &[u8; N] = rest.get(..N)?.try_into().ok()?;
    (start == name && rest.get(N) == Some(&b'"')).then_some(name)
}

/// The name of a record's field, guessed from its first letter and checked:
/// most names are matched without looking for their end.
fn record_field(rest: &[u8]) -> Option<&'static [u8]> {
    match *rest.first()? {
        b'S' => named(rest, b"SequenceNumber"),
        b'A' => named(rest, b"ApproximateArrivalTimestamp"),
        b'D' => named(rest, b"Data"),
        b'P' => named(rest, b"PartitionKey"),
        b'E' => named(rest, b"EncryptionType"),
        _ => None,
    }
}

/// One record and what follows it; `Err` if its payload is not base64 (or
/// the page too big), which no more bytes would change.
fn record(scan: &mut Scan<'_>, page: &mut Gathered) -> Option<Result<Expect, ()>> {
    scan.eat(b'{')?;
    let (mut sequence, mut data, mut key, mut arrival) = (None, None, None, None);
    loop {
        let field = scan.name(record_field)?;
        scan.eat(b':')?;
        match field {
            b"SequenceNumber" => sequence = Some(scan.string()?),
            // An escape in a payload fails its decoding: declined.
            b"Data" => data = Some(scan.unescaped()?),
            b"PartitionKey" => key = Some(scan.string()?),
            b"ApproximateArrivalTimestamp" => {
                arrival = match scan.null()? {
                    true => None,
                    false => Some(scan.decimal()?),
                }
            }
            b"EncryptionType" => {
                if !scan.null()? {
                    scan.skipped()?;
                }
            }
            _ => return None,
        }
        if !scan.next_in(b'}')? {
            break;
        }
    }
    let next = match scan.next_in(b']')? {
        true => Expect::Record,
        false => after_field(scan)?,
    };
    // Only once the unit is whole: a unit read again must not add twice.
    Some(page.push(sequence?, arrival, data?, key?).map(|()| next).map_err(drop))
}

struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn skip_whitespace(&mut self) {
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
        {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// After a member: `true` at a comma (another follows), `false` at
    /// `close`.
    fn next_in(&mut self, close: u8) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.at += 1;
                Some(true)
            }
            b if b == close => {
                self.at += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// A field name: the one `guess` gives for its first byte when it is
    /// that, else any string without escapes.
    fn name(&mut self, guess: fn(&[u8]) -> Option<&'static [u8]>) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        if let Some(name) = guess(&self.bytes[self.at..]) {
            self.at += name.len() + 1;
            return Some(name);
        }
        self.at -= 1;
        self.string()
    }

    /// A string without escapes, as its bytes.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let rest = &self.bytes[self.at..];
        let end = memchr::memchr2(b'"', b'\\', rest)?;
        if rest[end] != b'"' {
            return None;
        }
        self.at += end + 1;
        Some(&rest[..end])
    }

    /// A string up to the next quote, for a reader that declines any escape
    /// (a backslash) itself.
    fn unescaped(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let rest = &self.bytes[self.at..];
        let end = memchr::memchr(b'"', rest)?;
        self.at += end + 1;
        Some(&rest[..end])
    }

    /// A string without escapes or control characters, as serde_json
    /// skips one (without checking it as UTF-8).
    fn skipped(&mut self) -> Option<&'a [u8]> {
        let bytes = self.string()?;
        (!bytes.iter().any(|b| *b < 0x20)).then_some(bytes)
    }

    /// A string without escapes, checked as JSON text: UTF-8, no control
    /// character.
    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.skipped()?).ok()
    }

    /// `null` (consumed): `true`; anything else (left): `false`.
    fn null(&mut self) -> Option<bool> {
        if self.peek()? != b'n' {
            return Some(false);
        }
        let end = self.at + 4;
        (self.bytes.get(self.at..end)? == b"null").then(|| {
            self.at = end;
            true
        })
    }

    fn text_or_null(&mut self) -> Option<Option<&'a str>> {
        match self.null()? {
            true => Some(None),
            false => self.text().map(Some),
        }
    }

    /// A number, as `str::parse::<f64>` reads it; most in one pass. The
    /// forms [`number`](Self::number) declines are declined here too.
    fn decimal(&mut self) -> Option<f64> {
        self.skip_whitespace();
        if let Some((value, len)) = leading_decimal(&self.bytes[self.at..]) {
            self.at += len;
            return Some(value);
        }
        std::str::from_utf8(self.number()?).ok()?.parse().ok()
    }

    /// The text of a JSON number, roughly checked: Rust's parsers take a
    /// few forms JSON does not (`+1`, `1.`, `.5`), which are declined here.
    fn number(&mut self) -> Option<&'a [u8]> {
        self.skip_whitespace();
        let start = self.at;
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        {
            self.at += 1;
        }
        let number = &self.bytes[start..self.at];
        let first = *number.first()?;
        let last = *number.last()?;
        let second = number.get(1).copied();
        let leads = first.is_ascii_digit() || (first == b'-' && second.is_some_and(|b| b.is_ascii_digit()));
        (leads && last.is_ascii_digit()).then_some(number)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::super::page::{gather, parse_records};
    use super::*;

    fn both(body: &str) -> (Option<Gathered>, Result<Gathered, String>) {
        (scan(body.as_bytes()), gather(body.as_bytes()))
    }

    fn records(body: &str) -> Vec<crate::Record> {
        parse_records(body.as_bytes(), &Arc::from("s"), &Arc::from("shardId-0"))
            .expect("parses")
            .records
            .collect()
    }

    const KINESIS: &str = r#"{"Records":[{"SequenceNumber":"49590338271490256608559692538361571095921575989136588898","ApproximateArrivalTimestamp":1.795643499676E9,"Data":"aGVsbG8=","PartitionKey":"a","EncryptionType":"KMS"},{"SequenceNumber":"49590338271490256608559692538361571095921575989136588899","ApproximateArrivalTimestamp":1795643500,"Data":"","PartitionKey":"b/é"}],"NextShardIterator":"AAAA/+=","MillisBehindLatest":12,"ChildShards":[]}"#;

    #[test]
    fn a_page_as_kinesis_writes_it_is_scanned_and_reads_as_serde_json_reads_it() {
        let (fast, general) = both(KINESIS);
        let fast = fast.expect("the scanner reads Kinesis' form");
        let general = general.expect("serde_json reads it");
        assert_eq!(fast.next_iterator.as_deref(), Some("AAAA/+="));
        assert_eq!(fast.millis_behind_latest, Some(12));
        assert_eq!(fast.next_iterator, general.next_iterator);
        let build = |g: Gathered| {
            g.build(&Arc::from("s"), &Arc::from("shardId-0"))
                .expect("builds")
                .records
                .collect::<Vec<_>>()
        };
        let (fast, general) = (build(fast), build(general));
        assert_eq!(fast, general);
        assert_eq!(&fast[0].data[..], b"hello");
        assert_eq!(fast[1].partition_key, "b/é");
    }

    /// What a scan read, comparable.
    type Read = (Vec<crate::Record>, Option<String>, Option<i64>);

    fn read(gathered: Option<Gathered>) -> Option<Read> {
        gathered.map(|g| {
            let (next, behind) = (g.next_iterator.clone(), g.millis_behind_latest);
            let records = g.build(&Arc::from("s"), &Arc::from("shardId-0")).expect("builds");
            (records.records.collect(), next, behind)
        })
    }

    /// `body` cut at `cuts` (positions in it, any order).
    fn pieces<'b>(body: &'b [u8], cuts: &[usize]) -> Vec<&'b [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut start = 0;
        let mut pieces = Vec::new();
        for cut in cuts.into_iter().chain([body.len()]) {
            pieces.push(&body[start..cut]);
            start = cut;
        }
        pieces
    }

    const SPACED: &str = " {\n \"Records\" : [ { \"SequenceNumber\" : \"7\" , \"Data\" : \"YQ==\" , \"PartitionKey\" : \"k\" , \"ApproximateArrivalTimestamp\" : 1.5E9 } , {\"SequenceNumber\":\"8\",\"Data\":\"\",\"PartitionKey\":\"l\"} ] ,\n\t\"NextShardIterator\" : \"AB\" , \"MillisBehindLatest\" : 1234 , \"ChildShards\" : null } \n";

    #[test]
    fn a_page_cut_into_chunks_anywhere_reads_as_the_whole_page() {
        for body in [KINESIS, SPACED, "{}", r#"{"Records":[]}"#] {
            let body = body.as_bytes();
            let whole = read(scan(body));
            assert!(whole.is_some(), "{}", String::from_utf8_lossy(body));
            for cut in 0..=body.len() {
                assert_eq!(read(scan_chunks(&pieces(body, &[cut]))), whole, "cut at {cut}");
                for second in (cut..=body.len()).step_by(7) {
                    assert_eq!(
                        read(scan_chunks(&pieces(body, &[cut, second]))),
                        whole,
                        "cut at {cut}, {second}"
                    );
                }
            }
            for size in 1..9 {
                let chunks: Vec<&[u8]> = body.chunks(size).collect();
                assert_eq!(read(scan_chunks(&chunks)), whole, "chunks of {size}");
            }
        }
    }

    #[test]
    fn a_page_the_scanner_declines_is_declined_in_chunks_too() {
        let declined = [
            r#"{"Records":[{"SequenceNumber":"1","Data":"YQ==","PartitionKey":"b\"c"}]}"#,
            r#"{"Records":[{"SequenceNumber":"1","Data":"Y!==","PartitionKey":"k"}]}"#,
            r#"{"Records":[],"ChildShards":[{"ShardId":"shardId-1"}]}"#,
            r#"{"Records":[{"SequenceNumber":"1","Data":"YQ==","PartitionKey":"k"}"#,
            r#"{"Records":[{"SequenceNumber":"1","Data":"YQ==","PartitionKey":"k"}]}}"#,
            r#"{"Records":[],"MillisBehindLatest":12"#,
            r#"{"Records":[],"MillisBehindLatest":1.}"#,
            "{",
        ];
        for body in declined {
            let body = body.as_bytes();
            assert!(scan(body).is_none());
            for cut in 0..=body.len() {
                assert!(
                    scan_chunks(&pieces(body, &[cut])).is_none(),
                    "{} cut at {cut}",
                    String::from_utf8_lossy(body)
                );
            }
            let chunks: Vec<&[u8]> = body.chunks(1).collect();
            assert!(scan_chunks(&chunks).is_none());
        }
        assert!(scan_chunks(&[]).is_none());
    }

    #[test]
    fn what_the_scanner_declines_goes_to_serde_json_and_reads_the_same() {
        let declined = [
            // An escape in a key, then in the iterator.
            r#"{"Records":[{"SequenceNumber":"1","Data":"YQ==","PartitionKey":"b\"c"}]}"#,
            r#"{"Records":[],"NextShardIterator":"a\/b"}"#,
            // A field it does not know, in a record and in the page.
            r#"{"Records":[{"SequenceNumber":"1","Data":"YQ==","PartitionKey":"k","Future":1}]}"#,
            r#"{"Records":[],"Future":{"a":[1]}}"#,
            // Children.
            r#"{"Records":[],"ChildShards":[{"ShardId":"shardId-1","ParentShards":["shardId-0"]}]}"#,
            // An escape in a payload (it fails to decode as it stands).
            r#"{"Records":[{"SequenceNumber":"1","Data":"YQ\u003d\u003d","PartitionKey":"k"}]}"#,
            // A name that starts as a known one.
            r#"{"Records":[{"SequenceNumber":"1","Data":"YQ==","Datax":1,"PartitionKey":"k"}]}"#,
        ];
        for body in declined {
            let (fast, general) = both(body);
            assert!(fast.is_none(), "{body}");
            assert!(general.is_ok(), "{body}");
        }
        assert_eq!(records(declined[0])[0].partition_key, "b\"c");
        assert_eq!(&records(declined[5])[0].data[..], b"a");
    }

    #[test]
    fn text_that_is_not_utf8_is_an_invalid_page_whichever_path_reads_it() {
        // A partition key is checked with the page's text, as records are
        // built from what the scanner gathered.
        let key = b"{\"Records\":[{\"SequenceNumber\":\"1\",\"Data\":\"YQ==\",\"PartitionKey\":\"k\xff\"}]}";
        let error = parse_records(key, &Arc::from("s"), &Arc::from("shardId-0")).err();
        assert!(error.as_deref().is_some_and(|e| e.contains("UTF-8")), "{error:?}");
        // The other strings are checked by the scanner, which declines them.
        let bodies: [&[u8]; 2] = [
            b"{\"Records\":[{\"SequenceNumber\":\"1\",\"Data\":\"YQ\xff=\",\"PartitionKey\":\"k\"}]}",
            b"{\"Records\":[],\"NextShardIterator\":\"a\xc3\"}",
        ];
        for body in bodies {
            let shown = String::from_utf8_lossy(body);
            assert!(scan(body).is_none(), "{shown}");
            assert!(
                parse_records(body, &Arc::from("s"), &Arc::from("shardId-0")).is_err(),
                "{shown}"
            );
        }
        // A field no record keeps is skipped as serde_json skips it: its
        // bytes unchecked, but no control character in it.
        let skipped = b"{\"Records\":[{\"SequenceNumber\":\"1\",\"Data\":\"YQ==\",\"PartitionKey\":\"k\",\"EncryptionType\":\"\xe2\x82\"}]}";
        let general = gather(skipped).expect("serde_json skips it");
        let build = |g: Gathered| {
            g.build(&Arc::from("s"), &Arc::from("shardId-0"))
                .expect("builds")
                .records
                .collect::<Vec<_>>()
        };
        assert_eq!(build(scan(skipped).expect("scanned")), build(general));
        let control =
            br#"{"Records":[{"SequenceNumber":"1","Data":"YQ==","PartitionKey":"k","EncryptionType":"K	MS"}]}"#;
        assert!(scan(control).is_none());
        assert!(gather(control).is_err());
    }

    #[test]
    fn whitespace_and_nulls_are_read_by_the_scanner() {
        let body = " {\n \"Records\" : [ { \"SequenceNumber\" : \"7\" , \"Data\" : \"YQ==\" , \"PartitionKey\" : \"k\" , \"ApproximateArrivalTimestamp\" : null } ] ,\n\t\"NextShardIterator\" : null , \"MillisBehindLatest\" : null , \"ChildShards\" : null } \n";
        let fast = scan(body.as_bytes()).expect("scanned");
        assert_eq!(fast.next_iterator, None);
        assert_eq!(records(body)[0].sequence_number.as_str(), "7");
        assert!(scan(br#"{"Records":null}"#).is_some());
        assert!(scan(b"{}").is_some());
    }

    #[test]
    fn broken_pages_are_declined_and_reported_by_the_general_parser() {
        for body in [
            "",
            "{",
            r#"{"Records":[{"SequenceNumber":"1","Data":"YQ==","PartitionKey":"k"}"#,
            r#"{"Records":[{"SequenceNumber":"1","Data":"YQ==","PartitionKey":"k"}]}}"#,
            r#"{"Records":[{"SequenceNumber":"1","PartitionKey":"k"}]}"#,
            r#"{"Records":[],"MillisBehindLatest":+1}"#,
            r#"{"Records":[],"MillisBehindLatest":1.}"#,
            r#"{"Records":[{"SequenceNumber":"1","Data":"YQ==","PartitionKey":"k	tab"}]}"#,
        ] {
            let (fast, general) = both(body);
            assert!(fast.is_none(), "{body:?}");
            assert!(general.is_err(), "{body:?}");
        }
        // Bad base64 and a bad sequence number fail the same either way.
        for body in [
            r#"{"Records":[{"SequenceNumber":"1","Data":"Y!==","PartitionKey":"k"}]}"#,
            r#"{"Records":[{"SequenceNumber":"01","Data":"YQ==","PartitionKey":"k"}]}"#,
        ] {
            assert!(
                parse_records(body.as_bytes(), &Arc::from("s"), &Arc::from("shardId-0")).is_err(),
                "{body}"
            );
        }
    }

    fn json_string(text: &str) -> String {
        serde_json::to_string(text).expect("a string serialises")
    }

    #[test]
    fn numbers_json_does_not_allow_are_declined_by_the_scanner() {
        for text in ["1.", ".5", "+1", "1e", "1.5e+"] {
            assert_eq!(
                Scan {
                    bytes: text.as_bytes(),
                    at: 0
                }
                .decimal(),
                None,
                "{text}"
            );
        }
        assert_eq!(Scan { bytes: b"-1.5", at: 0 }.decimal(), Some(-1.5));
    }

    proptest! {
        #[test]
        fn any_page_reads_the_same_through_the_scanner_as_through_serde_json(
            records in proptest::collection::vec(
                (
                    "[1-9][0-9]{0,60}",
                    proptest::collection::vec(any::<u8>(), 0..40),
                    "[a-zA-Z0-9 é\"\\\\/\u{1}-]{0,12}",
                    proptest::option::of(1_000_000_000u32..2_000_000_000),
                    0..6usize,
                    any::<bool>(),
                ),
                0..8,
            ),
            space in "[ \n\t]{0,2}",
            iterator in proptest::option::of("[A-Za-z0-9+/=]{1,30}"),
            behind in proptest::option::of(0i64..100_000),
            cuts in proptest::collection::vec(any::<usize>(), 0..4),
        ) {
            let mut body = format!("{{{space}\"Records\"{space}:{space}[");
            for (i, (sequence, data, key, arrival, order, encrypted)) in records.iter().enumerate() {
                let mut fields = vec![
                    format!("\"SequenceNumber\":{}", json_string(sequence)),
                    format!("\"Data\":\"{}\"", base64_simd::STANDARD.encode_to_string(data)),
                    format!("\"PartitionKey\":{}", json_string(key)),
                ];
                if let Some(at) = arrival {
                    fields.push(format!("\"ApproximateArrivalTimestamp\":{at}.{order}25"));
                }
                if *encrypted {
                    fields.push("\"EncryptionType\":\"KMS\"".into());
                }
                let turn = order % fields.len();
                fields.rotate_left(turn);
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&format!("{{{space}{}{space}}}", fields.join(&format!("{space},{space}"))));
            }
            body.push(']');
            if let Some(iterator) = &iterator {
                body.push_str(&format!(",\"NextShardIterator\":\"{iterator}\""));
            }
            if let Some(behind) = behind {
                body.push_str(&format!(",{space}\"MillisBehindLatest\":{behind}"));
            }
            body.push('}');
            let general = gather(body.as_bytes()).expect("serde_json reads every page made here");
            let build = |g: Gathered| g.build(&Arc::from("s"), &Arc::from("shardId-0")).expect("builds");
            let fast = scan(body.as_bytes());
            let chunked = read(scan_chunks(&pieces(body.as_bytes(), &cuts)));
            prop_assert_eq!(&chunked, &read(scan(body.as_bytes())), "{} cut at {:?}", body, cuts);
            let escaped = records.iter().any(|(_, _, key, ..)| key.contains(['"', '\\', '\u{1}']));
            prop_assert_eq!(fast.is_some(), !escaped, "{}", body);
            if let Some(fast) = fast {
                let (fast, general) = (build(fast), build(general));
                prop_assert_eq!(fast.records.clone().collect::<Vec<_>>(), general.records.clone().collect::<Vec<_>>());
                prop_assert_eq!(fast.next_iterator, general.next_iterator);
                prop_assert_eq!(fast.millis_behind_latest, general.millis_behind_latest);
            }
        }
    }
}
