//! Where a record sits in its shard, as the checkpoint bookkeeping keeps it:
//! cheap to update per record, turned into a [`Checkpoint`] per batch.

use std::cmp::Ordering;

use crate::{Checkpoint, Record, SequenceNumber, SubSequence};

/// A record's place: its sequence number and, inside a KPL aggregate before
/// its last user record, its sub-sequence number.
///
/// The digits are copied in, not shared: a record's sequence number is a
/// view of its page's text, and a position outlives its record (the last
/// one delivered of an idle shard, say), which would keep the page in
/// memory.
#[derive(Clone)]
pub(crate) struct Position {
    len: u8,
    digits: [u8; SequenceNumber::MAX_DIGITS],
    /// `None`: the whole Kinesis record.
    sub: Option<u64>,
}

impl Position {
    pub(crate) fn of(record: &Record) -> Self {
        let mut position = Self {
            len: 0,
            digits: [0; SequenceNumber::MAX_DIGITS],
            sub: None,
        };
        position.assign(record);
        position
    }

    /// The place of a record with the sequence number `digits` (checked
    /// ones) where a checkpoint after it keeps `sub`.
    pub(crate) fn at(digits: &str, sub: Option<u64>) -> Self {
        let mut position = Self {
            len: 0,
            digits: [0; SequenceNumber::MAX_DIGITS],
            sub: None,
        };
        position.set(digits, sub);
        position
    }

    /// Becomes `record`'s position.
    pub(crate) fn assign(&mut self, record: &Record) {
        self.set(record.sequence_number.as_str(), record.open_sub_sequence());
    }

    fn set(&mut self, digits: &str, sub: Option<u64>) {
        let digits = digits.as_bytes();
        // A SequenceNumber has at most MAX_DIGITS digits.
        let len = digits.len().min(SequenceNumber::MAX_DIGITS);
        self.digits[..len].copy_from_slice(&digits[..len]);
        self.len = len as u8;
        self.sub = sub;
    }

    fn digits(&self) -> &[u8] {
        &self.digits[..usize::from(self.len)]
    }

    /// The sequence number's digits.
    pub(crate) fn sequence_text(&self) -> &str {
        // Copied from a SequenceNumber: ASCII digits.
        std::str::from_utf8(self.digits()).unwrap_or_default()
    }

    pub(crate) fn checkpoint(&self) -> Checkpoint {
        let sequence = SequenceNumber::copied(self.sequence_text());
        match self.sub {
            Some(number) => Checkpoint::SubSequence(SubSequence::new(sequence, number)),
            None => Checkpoint::Sequence(sequence),
        }
    }
}

impl std::fmt::Debug for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Position")
            .field("sequence", &self.sequence_text())
            .field("sub", &self.sub)
            .finish()
    }
}

impl PartialEq for Position {
    fn eq(&self, other: &Self) -> bool {
        self.digits() == other.digits() && self.sub == other.sub
    }
}

impl Eq for Position {}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.len, self.digits())
            .cmp(&(other.len, other.digits()))
            .then_with(|| match (self.sub, other.sub) {
                (Some(a), Some(b)) => a.cmp(&b),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            })
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Aggregate;

    fn user(seq: &str, number: u64, count: u64) -> Record {
        let mut record = Record::new("s", SequenceNumber::parse(seq).expect("valid"), "k", &b""[..]);
        record.sub_sequence_number = Some(number);
        record.aggregate = Aggregate::Member {
            count,
            outside_shard: false,
        };
        record
    }

    #[test]
    fn a_user_record_before_an_aggregates_last_keeps_its_sub_sequence_and_the_last_covers_the_whole() {
        let first = Position::of(&user("7", 0, 3));
        let last = Position::of(&user("7", 2, 3));
        assert_eq!(first.checkpoint().as_str(), "7:0");
        assert_eq!(last.checkpoint().as_str(), "7");
        assert!(first < last);
        assert!(Position::of(&user("6", 2, 3)) < first);
        assert_eq!(first.checkpoint() < last.checkpoint(), first < last);
    }

    #[test]
    fn assign_takes_the_other_records_place() {
        let mut position = Position::of(&user("7", 0, 3));
        position.assign(&user("123", 1, 3));
        assert_eq!(position, Position::of(&user("123", 1, 3)));
        position.assign(&user("9", 2, 3));
        assert_eq!(
            position,
            Position::of(&user("9", 2, 3)),
            "a shorter number leaves nothing behind"
        );
        assert_eq!(position.checkpoint().as_str(), "9");
    }

    #[test]
    fn positions_order_by_length_then_digits_up_to_129_digits() {
        let long = "9".repeat(129);
        let longest = Position::of(&user(&long, 0, 2));
        assert_eq!(longest.sequence_text(), long);
        assert!(Position::of(&user("99", 1, 2)) < Position::of(&user("100", 0, 2)));
        assert!(Position::of(&user(&"9".repeat(128), 1, 2)) < longest);
    }
}
