//! Where a record sits in its shard, as the checkpoint bookkeeping keeps it:
//! cheap to update per record, turned into a [`Checkpoint`] per batch.

use std::cmp::Ordering;

use crate::{Checkpoint, Record, SequenceNumber, SubSequence};

/// A record's place: its sequence number and, inside a KPL aggregate before
/// its last user record, its sub-sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    sequence: SequenceNumber,
    /// `None`: the whole Kinesis record.
    sub: Option<u64>,
}

impl Position {
    pub(crate) fn of(record: &Record) -> Self {
        Self {
            sequence: record.sequence_number.clone(),
            sub: record.open_sub_sequence(),
        }
    }

    /// Becomes `record`'s position, reusing this one's allocation.
    pub(crate) fn assign(&mut self, record: &Record) {
        self.sequence.assign(&record.sequence_number);
        self.sub = record.open_sub_sequence();
    }

    pub(crate) fn sequence(&self) -> &SequenceNumber {
        &self.sequence
    }

    pub(crate) fn checkpoint(&self) -> Checkpoint {
        match self.sub {
            Some(number) => Checkpoint::SubSequence(SubSequence::new(self.sequence.clone(), number)),
            None => Checkpoint::Sequence(self.sequence.clone()),
        }
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sequence
            .cmp(&other.sequence)
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
    }
}
