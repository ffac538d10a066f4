//! Where the consumer keeps its place: the [`CheckpointStore`] trait.

mod in_transaction;
mod position;
mod tracker;
mod writer;

pub use in_transaction::PendingCheckpoint;
pub(crate) use position::Position;
pub use tracker::Checkpointer;
pub(crate) use tracker::StreamCheckpointer;
pub(crate) use tracker::{Gate, Progress};
pub(crate) use writer::{EndSaved, Writer};

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::error::BoxError;
use crate::{ParseSequenceNumberError, SequenceNumber};

/// Which checkpoint: one per consumer name, stream and shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct CheckpointKey {
    /// The consumer (application) name; consumers with different names keep
    /// separate checkpoints for the same stream.
    pub consumer_name: String,
    /// The stream name (never its ARN, so both spellings share checkpoints).
    pub stream_name: String,
    /// The shard id, e.g. `shardId-000000000000`.
    pub shard_id: String,
}

impl CheckpointKey {
    /// A key for one shard of one stream, as read by one consumer.
    pub fn new(consumer_name: impl Into<String>, stream_name: impl Into<String>, shard_id: impl Into<String>) -> Self {
        Self {
            consumer_name: consumer_name.into(),
            stream_name: stream_name.into(),
            shard_id: shard_id.into(),
        }
    }
}

impl fmt::Display for CheckpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.consumer_name, self.stream_name, self.shard_id)
    }
}

/// How far a consumer has processed a shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Checkpoint {
    /// Nothing of the shard processed yet; reading starts at the records
    /// that arrived at or after this time. This is how a
    /// [`StartPosition::Latest`](crate::StartPosition::Latest) start is kept:
    /// the consumer saves it when it first positions the shard, so a restart
    /// or a takeover before the first record resumes there, not at a later
    /// tip. Stored as `AT_TIMESTAMP:` and the milliseconds since the Unix
    /// epoch; it orders before every sequence number.
    AtTimestamp(StartTime),
    /// Every record up to and including this sequence number was processed
    /// (all user records of it, if it is a KPL aggregate).
    Sequence(SequenceNumber),
    /// Every record before a KPL aggregate, and its user records up to and
    /// including [`SubSequence::number`], were processed; the rest of it
    /// not yet. Stored as the sequence number, `:` and the sub-sequence
    /// number (`4959…:3`); it orders after every checkpoint of an earlier
    /// record and before the aggregate's own [`Checkpoint::Sequence`].
    SubSequence(SubSequence),
    /// Every record of the (closed) shard was processed. Stored as the text
    /// `SHARD_END`; it orders after every sequence number.
    ShardEnd,
}

impl Checkpoint {
    /// The text form stored by the bundled backends: the digits, the digits
    /// with `:` and a sub-sequence number, `SHARD_END`, or `AT_TIMESTAMP:` and
    /// milliseconds.
    pub fn as_str(&self) -> &str {
        match self {
            Checkpoint::AtTimestamp(at) => &at.text,
            Checkpoint::Sequence(seq) => seq.as_str(),
            Checkpoint::SubSequence(sub) => &sub.text,
            Checkpoint::ShardEnd => Self::SHARD_END,
        }
    }

    /// The sequence number of the last record it covers (whole or in part);
    /// `None` for [`Checkpoint::AtTimestamp`] and [`Checkpoint::ShardEnd`].
    pub fn sequence_number(&self) -> Option<&SequenceNumber> {
        match self {
            Checkpoint::Sequence(seq) => Some(seq),
            Checkpoint::SubSequence(sub) => Some(&sub.sequence),
            Checkpoint::AtTimestamp(_) | Checkpoint::ShardEnd => None,
        }
    }

    /// The text that marks a finished shard.
    pub const SHARD_END: &'static str = "SHARD_END";

    /// What the text of an [`AtTimestamp`](Checkpoint::AtTimestamp) checkpoint starts with.
    pub const AT_TIMESTAMP_PREFIX: &'static str = "AT_TIMESTAMP:";

    /// What separates the sequence number and the sub-sequence number in
    /// the text of a [`SubSequence`](Checkpoint::SubSequence) checkpoint.
    pub const SUB_SEQUENCE_SEPARATOR: char = ':';
}

/// How far a consumer got inside one KPL aggregate: the user records up to
/// and including [`number`](Self::number) were processed, the rest of it
/// not yet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubSequence {
    sequence: SequenceNumber,
    number: u64,
    text: Box<str>,
}

impl fmt::Display for SubSequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl SubSequence {
    /// User records `0..=number` of the aggregate at `sequence`.
    pub fn new(sequence: SequenceNumber, number: u64) -> Self {
        let text = format!("{sequence}{}{number}", Checkpoint::SUB_SEQUENCE_SEPARATOR).into();
        Self { sequence, number, text }
    }

    /// The aggregate's sequence number.
    pub fn sequence(&self) -> &SequenceNumber {
        &self.sequence
    }

    /// The last processed user record's place in the aggregate, from 0.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// `digits:number`: a sequence number and a sub-sequence number of 1 to
    /// 20 digits, no leading zero, at most `u64::MAX`. `Ok(None)` without
    /// the separator.
    fn parse(text: &str) -> Result<Option<Self>, ParseSequenceNumberError> {
        let Some((sequence, number)) = text.split_once(Checkpoint::SUB_SEQUENCE_SEPARATOR) else {
            return Ok(None);
        };
        let sequence = SequenceNumber::parse(sequence)?;
        let canonical = (1..=20).contains(&number.len())
            && number.bytes().all(|b| b.is_ascii_digit())
            && (number == "0" || !number.starts_with('0'));
        match canonical.then(|| number.parse::<u64>().ok()).flatten() {
            Some(number) => Ok(Some(Self::new(sequence, number))),
            None => Err(ParseSequenceNumberError::sub_sequence(text)),
        }
    }
}

/// A moment where a shard starts being read, to the millisecond (Kinesis'
/// resolution for `AT_TIMESTAMP` iterators).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StartTime {
    millis: u64,
    text: Box<str>,
}

impl StartTime {
    /// `time`, rounded down to the millisecond (times before 1970 become 1970).
    pub fn new(time: SystemTime) -> Self {
        let millis = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        Self::from_millis(millis)
    }

    fn from_millis(millis: u64) -> Self {
        Self {
            millis,
            text: format!("{}{millis}", Checkpoint::AT_TIMESTAMP_PREFIX).into(),
        }
    }

    /// The moment.
    pub fn time(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.millis)
    }

    /// Milliseconds since the Unix epoch.
    pub fn millis(&self) -> u64 {
        self.millis
    }

    /// The stored form, `AT_TIMESTAMP:` and milliseconds: at most 20 digits,
    /// no leading zero.
    fn parse(text: &str) -> Option<Self> {
        let digits = text.strip_prefix(Checkpoint::AT_TIMESTAMP_PREFIX)?;
        let canonical = (1..=20).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        canonical.then(|| digits.parse().ok().map(Self::from_millis)).flatten()
    }
}

impl From<SequenceNumber> for Checkpoint {
    fn from(seq: SequenceNumber) -> Self {
        Checkpoint::Sequence(seq)
    }
}

impl FromStr for Checkpoint {
    type Err = ParseSequenceNumberError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == Self::SHARD_END {
            Ok(Checkpoint::ShardEnd)
        } else if let Some(at) = StartTime::parse(text) {
            Ok(Checkpoint::AtTimestamp(at))
        } else if let Some(sub) = SubSequence::parse(text)? {
            Ok(Checkpoint::SubSequence(sub))
        } else {
            SequenceNumber::parse(text).map(Checkpoint::Sequence)
        }
    }
}

impl Ord for Checkpoint {
    fn cmp(&self, other: &Self) -> Ordering {
        fn rank(checkpoint: &Checkpoint) -> u8 {
            match checkpoint {
                Checkpoint::AtTimestamp(_) => 0,
                Checkpoint::Sequence(_) | Checkpoint::SubSequence(_) => 1,
                Checkpoint::ShardEnd => 2,
            }
        }
        // Inside one aggregate: by sub-sequence number, the whole record
        // after every part of it.
        fn part(checkpoint: &Checkpoint) -> Option<u64> {
            match checkpoint {
                Checkpoint::SubSequence(sub) => Some(sub.number),
                _ => None,
            }
        }
        match (self, other) {
            (Checkpoint::AtTimestamp(a), Checkpoint::AtTimestamp(b)) => a.cmp(b),
            (
                Checkpoint::Sequence(_) | Checkpoint::SubSequence(_),
                Checkpoint::Sequence(_) | Checkpoint::SubSequence(_),
            ) => self
                .sequence_number()
                .cmp(&other.sequence_number())
                .then_with(|| match (part(self), part(other)) {
                    (Some(a), Some(b)) => a.cmp(&b),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                }),
            _ => rank(self).cmp(&rank(other)),
        }
    }
}

impl PartialOrd for Checkpoint {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checkpoint store failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The save would move the checkpoint backwards. Another consumer with the
    /// same name is probably writing to the same key.
    #[error("checkpoint {key} would move backwards from {stored} to {attempted}")]
    Conflict {
        /// The key written to.
        key: Box<CheckpointKey>,
        /// What the store holds.
        stored: Box<Checkpoint>,
        /// What the save tried to write.
        attempted: Box<Checkpoint>,
    },
    /// A checkpoint written in the caller's transaction
    /// ([`PendingCheckpoint`]) is what the store holds already: the records
    /// up to it were committed before, by a transaction whose outcome the
    /// caller did not learn, say. The transaction must roll back, so their
    /// results are not applied twice.
    #[error("checkpoint {key} is at {stored} already: its records were committed before")]
    AlreadyCommitted {
        /// The key written to.
        key: Box<CheckpointKey>,
        /// What the store holds.
        stored: Checkpoint,
    },
    /// The lease is no longer held as the caller knew it: another worker took
    /// it over (or it was released). Nothing was written.
    #[error("lease {key} is held by another worker now")]
    LeaseLost {
        /// The lease's key.
        key: Box<CheckpointKey>,
    },
    /// The stored value is not a checkpoint; the store refuses to guess.
    #[error("stored checkpoint {key} is malformed: {value:?}")]
    Malformed {
        /// The key read.
        key: Box<CheckpointKey>,
        /// The stored text (cut to 160 characters).
        value: String,
        /// Why it is not a checkpoint.
        #[source]
        source: ParseSequenceNumberError,
    },
    /// The store could not be opened or set up (bad path or URL, no
    /// permission, a schema it cannot use).
    #[error("checkpoint store at {location} cannot be opened")]
    Open {
        /// The path or URL, without credentials.
        location: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// The store is temporarily unusable (busy, locked, unreachable).
    /// Retrying may succeed.
    #[error("checkpoint store is unavailable")]
    Unavailable {
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// The store does not offer this operation.
    #[error("this checkpoint store cannot {operation}")]
    Unsupported {
        /// What was asked, e.g. `reset a checkpoint`.
        operation: &'static str,
    },
    /// The store failed in a way retrying will not fix.
    #[error("checkpoint store failed")]
    Backend {
        /// What went wrong.
        #[source]
        source: BoxError,
    },
}

impl CheckpointError {
    /// Whether the same call may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CheckpointError::Unavailable { .. })
    }

    /// Wraps a backend's own error: [`CheckpointError::Unavailable`] when
    /// `retryable`, else [`CheckpointError::Backend`].
    pub fn backend(error: impl std::error::Error + Send + Sync + 'static, retryable: bool) -> Self {
        let source = Arc::new(error);
        if retryable {
            CheckpointError::Unavailable { source }
        } else {
            CheckpointError::Backend { source }
        }
    }

    /// A [`CheckpointError::Malformed`] for a stored text that does not parse.
    pub fn malformed(key: &CheckpointKey, value: &str, source: ParseSequenceNumberError) -> Self {
        CheckpointError::Malformed {
            key: Box::new(key.clone()),
            value: value.chars().take(160).collect(),
            source,
        }
    }

    /// A [`CheckpointError::Conflict`]: `attempted` is below `stored`.
    pub fn conflict(key: &CheckpointKey, stored: Checkpoint, attempted: Checkpoint) -> Self {
        CheckpointError::Conflict {
            key: Box::new(key.clone()),
            stored: Box::new(stored),
            attempted: Box::new(attempted),
        }
    }

    /// A [`CheckpointError::Open`] for the store at `url`, with a password in
    /// the URL shown as `***`.
    pub fn open(url: &str, source: BoxError) -> Self {
        CheckpointError::Open {
            location: redact_password(url),
            source,
        }
    }

    /// A [`CheckpointError::LeaseLost`] for `key`.
    pub fn lease_lost(key: &CheckpointKey) -> Self {
        CheckpointError::LeaseLost {
            key: Box::new(key.clone()),
        }
    }

    /// For stores: whether `to` must be written where `stored` is held for
    /// `key`. `Ok(false)` when it is stored already, a
    /// [`CheckpointError::Conflict`] when it would move the checkpoint back.
    pub fn check_forward(key: &CheckpointKey, stored: Option<&Checkpoint>, to: &Checkpoint) -> Result<bool, Self> {
        match stored {
            Some(stored) if stored > to => Err(Self::conflict(key, stored.clone(), to.clone())),
            Some(stored) => Ok(stored != to),
            None => Ok(true),
        }
    }

    /// Parses a stored text into a [`Checkpoint`], or a `Malformed` error.
    pub fn parse_stored(key: &CheckpointKey, value: &str) -> Result<Checkpoint, Self> {
        value.parse().map_err(|source| Self::malformed(key, value, source))
    }
}

/// `url` with every password in it shown as `***`: for messages and logs
/// about a store. Covers the forms sqlx and redis accept: user-info
/// (`scheme://user:secret@host`, `redis://:secret@host`) and query
/// parameters naming a password (`?password=secret`, `sslpassword=…`).
pub fn redact_password(url: &str) -> String {
    let (head, query) = match url.find('?') {
        Some(at) => (&url[..at], Some(&url[at + 1..])),
        None => (url, None),
    };
    let mut out = match (head.find("://"), head.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => match head[scheme + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &head[..scheme + 3], &head[at..]),
            None => head.to_owned(),
        },
        _ => head.to_owned(),
    };
    if let Some(query) = query {
        out.push('?');
        let (query, fragment) = match query.find('#') {
            Some(at) => (&query[..at], Some(&query[at..])),
            None => (query, None),
        };
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if is_password_parameter(name) => {
                    out.push_str(name);
                    out.push_str("=***");
                }
                _ => out.push_str(pair),
            }
        }
        out.extend(fragment);
    }
    out
}

fn is_password_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("password") || matches!(name.as_str(), "pass" | "pwd" | "passwd")
}

/// Durable storage for checkpoints, keyed by [`CheckpointKey`].
///
/// Used as `Arc<dyn CheckpointStore>`; implement it to keep checkpoints
/// anywhere. Run [`test_util::checkpoint_store_conformance`](crate::test_util)
/// (feature `test-util`) against an implementation to check the contract.
///
/// # Contract
///
/// - `load` of a key never saved returns `Ok(None)`.
/// - `load` returns exactly what the last successful `save` of that key wrote
///   (all 1 to 129 digits of a sequence number, a sub-sequence number inside
///   a KPL aggregate, a start time, or [`Checkpoint::ShardEnd`]): keeping
///   [`Checkpoint::as_str`] and parsing it back does that.
/// - A stored value that is not a checkpoint is reported as
///   [`CheckpointError::Malformed`], never guessed at or replaced silently.
/// - When `save` returns `Ok`, the checkpoint is durable: a process that
///   crashes right after still finds it on the next `load`.
/// - A checkpoint never moves backwards: a `save` of a value lower than the
///   stored one fails with [`CheckpointError::Conflict`] and changes nothing;
///   saving the stored value again succeeds. Order is that of [`Checkpoint`].
///   The check and the write are one atomic step.
/// - Keys are independent: consumer name, stream and shard each separate them.
/// - Transient failures are [`CheckpointError::Unavailable`]; the consumer
///   retries those with backoff and treats every other error as fatal.
#[async_trait]
pub trait CheckpointStore: fmt::Debug + Send + Sync + 'static {
    /// The stored checkpoint for `key`, if any.
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError>;

    /// Stores `checkpoint` for `key`, durably, unless it would move backwards.
    async fn save(&self, key: &CheckpointKey, checkpoint: &Checkpoint) -> Result<(), CheckpointError>;

    /// An operator's rewind (or fast-forward), never the consumer's: writes
    /// `to` for `key` whatever is stored — backwards too — or, with `None`,
    /// removes the key's checkpoint. In a store that holds leases it also
    /// ends the key's lease (no owner, no handoff, a higher epoch), so that a
    /// worker still holding it is fenced out: its next renewal or save fails
    /// with [`CheckpointError::LeaseLost`], and the shard is taken again at
    /// `to`. A consumer without leases that is still running may overwrite it;
    /// stop those first. Durable on return, like `save`.
    ///
    /// The default is [`CheckpointError::Unsupported`]; every bundled store
    /// implements it.
    async fn reset(&self, key: &CheckpointKey, to: Option<&Checkpoint>) -> Result<(), CheckpointError> {
        let _ = (key, to);
        Err(CheckpointError::Unsupported {
            operation: "reset a checkpoint",
        })
    }
}

#[async_trait]
impl<T: CheckpointStore + ?Sized> CheckpointStore for Arc<T> {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        (**self).load(key).await
    }

    async fn save(&self, key: &CheckpointKey, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        (**self).save(key, checkpoint).await
    }

    async fn reset(&self, key: &CheckpointKey, to: Option<&Checkpoint>) -> Result<(), CheckpointError> {
        (**self).reset(key, to).await
    }
}

#[async_trait]
impl<T: CheckpointStore + ?Sized> CheckpointStore for Box<T> {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
        (**self).load(key).await
    }

    async fn save(&self, key: &CheckpointKey, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        (**self).save(key, checkpoint).await
    }

    async fn reset(&self, key: &CheckpointKey, to: Option<&Checkpoint>) -> Result<(), CheckpointError> {
        (**self).reset(key, to).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn start_times_round_trip_and_order_before_every_sequence_number() {
        let at = super::StartTime::new(SystemTime::UNIX_EPOCH + Duration::from_millis(1_733_140_000_123));
        let marker = Checkpoint::AtTimestamp(at.clone());
        assert_eq!(marker.as_str(), "AT_TIMESTAMP:1733140000123");
        assert_eq!(marker.as_str().parse::<Checkpoint>().expect("parses"), marker);
        assert_eq!(
            at.time(),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_733_140_000_123)
        );
        let later = Checkpoint::AtTimestamp(super::StartTime::new(at.time() + Duration::from_secs(1)));
        assert!(marker < later);
        assert!(later < Checkpoint::Sequence(SequenceNumber::parse("0").expect("valid")));
        assert!(later < Checkpoint::ShardEnd);
        for bad in [
            "AT_TIMESTAMP:",
            "AT_TIMESTAMP:01",
            "AT_TIMESTAMP:1.5",
            "AT_TIMESTAMP:-1",
            "AT_TIMESTAMP:123456789012345678901",
            "at_timestamp:1",
            "AT_TIMESTAMP:99999999999999999999",
        ] {
            assert!(bad.parse::<Checkpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_form_of_password_in_a_store_url_is_redacted() {
        for (url, shown) in [
            (
                "postgres://kcpy:s3cret@db:5432/test",
                "postgres://kcpy:***@db:5432/test",
            ),
            ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
            (
                "postgres://kcpy@db/test?password=s3cret&sslmode=require",
                "postgres://kcpy@db/test?password=***&sslmode=require",
            ),
            (
                "mysql://db/test?user=kcpy&Password=s3cret",
                "mysql://db/test?user=kcpy&Password=***",
            ),
            (
                "postgres://u:p%40ss@db/test?sslpassword=s3cret#frag",
                "postgres://u:***@db/test?sslpassword=***#frag",
            ),
            ("sqlite://kcpy.db?mode=rwc", "sqlite://kcpy.db?mode=rwc"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
        ] {
            let redacted = redact_password(url);
            assert_eq!(redacted, shown);
            assert!(!redacted.contains("s3cret") && !redacted.contains("p%40ss"));
        }
    }

    use super::*;

    #[test]
    fn sub_sequence_checkpoints_round_trip_and_order_inside_their_aggregate() {
        let seq = |n: &str| SequenceNumber::parse(n).expect("valid");
        let part = |n: &str, number| Checkpoint::SubSequence(SubSequence::new(seq(n), number));
        let whole = |n: &str| Checkpoint::Sequence(seq(n));
        assert_eq!(part("123", 4).as_str(), "123:4");
        assert_eq!("123:4".parse::<Checkpoint>().expect("parses"), part("123", 4));
        let max = format!("{}:{}", "9".repeat(129), u64::MAX);
        assert_eq!(max.parse::<Checkpoint>().expect("parses").as_str(), max);
        let ordered = [
            whole("99"),
            part("100", 0),
            part("100", 9),
            part("100", 10),
            whole("100"),
            part("1000", 0),
            whole("1000"),
            Checkpoint::ShardEnd,
        ];
        for pair in ordered.windows(2) {
            assert!(pair[0] < pair[1], "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(part("100", 3).sequence_number(), Some(&seq("100")));
        for bad in [
            "12:",
            ":3",
            "12:03",
            "12:-1",
            "12:3:4",
            "12:18446744073709551616",
            "012:3",
            "12: 3",
        ] {
            assert!(bad.parse::<Checkpoint>().is_err(), "{bad}");
        }
        assert_eq!(
            "12:03".parse::<Checkpoint>().map_err(|e| e.kind().clone()),
            Err(crate::SequenceNumberErrorKind::SubSequence)
        );
    }

    #[test]
    fn shard_end_orders_after_every_sequence_number() {
        let max = Checkpoint::Sequence(SequenceNumber::parse(&"9".repeat(129)).expect("valid"));
        assert!(max < Checkpoint::ShardEnd);
        assert_eq!("SHARD_END".parse::<Checkpoint>().expect("valid"), Checkpoint::ShardEnd);
        assert_eq!(Checkpoint::ShardEnd.to_string(), "SHARD_END");
    }

    #[test]
    fn parse_stored_reports_malformed_values_with_the_key() {
        let key = CheckpointKey::new("app", "stream", "shardId-000000000000");
        for bad in ["", "abc", "4.95e+55", &"1".repeat(130)] {
            match CheckpointError::parse_stored(&key, bad) {
                Err(CheckpointError::Malformed { key: k, .. }) => assert_eq!(*k, key),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn checkpoints_only_move_forward() {
        let key = CheckpointKey::new("app", "stream", "shard");
        let seq = |n: &str| Checkpoint::Sequence(SequenceNumber::parse(n).expect("valid"));
        assert_eq!(CheckpointError::check_forward(&key, None, &seq("5")).ok(), Some(true));
        assert_eq!(
            CheckpointError::check_forward(&key, Some(&seq("5")), &seq("10")).ok(),
            Some(true)
        );
        assert_eq!(
            CheckpointError::check_forward(&key, Some(&seq("5")), &seq("5")).ok(),
            Some(false)
        );
        assert!(matches!(
            CheckpointError::check_forward(&key, Some(&Checkpoint::ShardEnd), &seq("5")),
            Err(CheckpointError::Conflict { .. })
        ));
    }

    #[test]
    fn open_errors_hide_passwords_only() {
        let location = |url: &str| match CheckpointError::open(url, Arc::new(std::fmt::Error)) {
            CheckpointError::Open { location, .. } => location,
            other => panic!("{other:?}"),
        };
        assert_eq!(location("redis://u:p@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(location("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(location("redis://:p@h"), "redis://:***@h");
        assert_eq!(location("postgres://u@h/db"), "postgres://u@h/db");
    }

    fn assert_object_safe(_: &dyn CheckpointStore) {}

    #[test]
    fn the_trait_is_object_safe_and_forwards_through_arc_and_box() {
        #[derive(Debug)]
        struct Nothing;
        #[async_trait]
        impl CheckpointStore for Nothing {
            async fn load(&self, _: &CheckpointKey) -> Result<Option<Checkpoint>, CheckpointError> {
                Ok(None)
            }
            async fn save(&self, _: &CheckpointKey, _: &Checkpoint) -> Result<(), CheckpointError> {
                Ok(())
            }
        }
        let shared: Arc<dyn CheckpointStore> = Arc::new(Nothing);
        assert_object_safe(&shared);
        assert_object_safe(&Box::new(Nothing));
    }
}
