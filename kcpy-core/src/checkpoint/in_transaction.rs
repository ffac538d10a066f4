//! Checkpoints written by the caller's own database transaction, beside the
//! caller's results: what a store needs to write one under the same rules
//! as its own saves, and how the consumer hears that it was committed.

use std::sync::Arc;

use super::{Position, Progress};
use crate::config::CheckpointMode;
use crate::group::Membership;
use crate::{Checkpoint, CheckpointError, CheckpointKey, Checkpointer, Error, Record};

/// The checkpoint of a record (and of every record of its shard delivered
/// before it), to be written inside a transaction of the caller's.
///
/// Made by [`Checkpointer::prepare`]; a store with transactions writes it
/// (the PostgreSQL and MySQL stores' `checkpoint_in`), the caller commits,
/// then calls [`committed`](Self::committed). Their `commit` does all three.
///
/// # Contract (for stores)
///
/// In the caller's transaction, on the same row the store's own saves write:
/// lock the row (creating it if missing), pass what it holds to
/// [`check`](Self::check), and write [`checkpoint`](Self::checkpoint) only if
/// that succeeds. An error must leave the transaction to be rolled back, so
/// the caller's results are never committed without their checkpoint.
#[derive(Debug)]
#[must_use = "the consumer learns of the commit only from `committed()`"]
pub struct PendingCheckpoint {
    key: CheckpointKey,
    checkpoint: Checkpoint,
    position: Position,
    lease: Option<(String, u64)>,
    progress: Option<Arc<Progress>>,
}

impl PendingCheckpoint {
    /// A checkpoint of `key` to write in a transaction, outside any consumer:
    /// fenced by `lease` (owner, epoch) when given. For tests of stores.
    #[cfg(any(test, feature = "test-util"))]
    pub fn detached(key: CheckpointKey, record: &Record, lease: Option<(String, u64)>) -> Self {
        let position = Position::of(record);
        Self {
            key,
            checkpoint: position.checkpoint(),
            position,
            lease,
            progress: None,
        }
    }

    /// The row to write: consumer name, stream and shard.
    pub fn key(&self) -> &CheckpointKey {
        &self.key
    }

    /// What to write: the record's place in its shard.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// In a consumer group, the lease (owner, epoch) the write is fenced by.
    pub fn lease(&self) -> Option<(&str, u64)> {
        self.lease.as_ref().map(|(owner, epoch)| (owner.as_str(), *epoch))
    }

    /// For stores: whether the write may go ahead, given what the locked row
    /// holds (its checkpoint text, and its lease's owner and epoch).
    ///
    /// Fails with [`CheckpointError::LeaseLost`] when the write is fenced by
    /// a lease the row no longer shows, [`CheckpointError::AlreadyCommitted`]
    /// when the row holds this checkpoint already,
    /// [`CheckpointError::Conflict`] when it holds a later one, and
    /// [`CheckpointError::Malformed`] when it holds no checkpoint at all.
    pub fn check(&self, stored: Option<&str>, owner: Option<&str>, epoch: u64) -> Result<(), CheckpointError> {
        if let Some((held, held_epoch)) = &self.lease {
            if owner != Some(held.as_str()) || epoch != *held_epoch {
                return Err(CheckpointError::lease_lost(&self.key));
            }
        }
        let stored = stored
            .map(|text| CheckpointError::parse_stored(&self.key, text))
            .transpose()?;
        match stored {
            Some(stored) if stored == self.checkpoint => Err(CheckpointError::AlreadyCommitted {
                key: Box::new(self.key.clone()),
                stored,
            }),
            Some(stored) if stored > self.checkpoint => {
                Err(CheckpointError::conflict(&self.key, stored, self.checkpoint.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Tells the consumer the transaction committed: the record and every
    /// record of its shard delivered before it count as processed and
    /// checkpointed, so the consumer neither writes their checkpoint again
    /// nor waits for them (at a shard's end, or at its limit of records not
    /// yet processed).
    ///
    /// Call it only after the commit succeeded; also after a
    /// [`CheckpointError::AlreadyCommitted`], whose records were committed
    /// before.
    pub fn committed(self) {
        if let Some(progress) = &self.progress {
            progress.committed_elsewhere(&Arc::from(self.key.shard_id.as_str()), &self.position);
        }
    }
}

impl Checkpointer {
    /// Prepares `record`'s checkpoint to be written in a database transaction
    /// of yours, beside your results ([`CheckpointMode::Manual`]): the
    /// PostgreSQL and MySQL stores' `commit` and `checkpoint_in` take it.
    ///
    /// The checkpoint covers `record` and every record of its shard
    /// delivered before it, as a batch's last record does.
    ///
    /// Fails with [`Error::InvalidConfig`] without a checkpoint store or in
    /// [`CheckpointMode::Auto`], with [`Error::UnknownRecord`] for a record
    /// this consumer did not deliver, with a
    /// [`CheckpointError::LeaseLost`] when its shard's lease is no longer
    /// held, and with [`Error::Closed`] (or the fatal error) once the
    /// consumer has stopped.
    pub fn prepare(&self, record: &Record) -> Result<PendingCheckpoint, Error> {
        let stream = self.stream_of(record)?;
        let Some(progress) = &stream.progress else {
            return Err(Error::config(
                "writing checkpoints in a transaction needs a checkpoint store on the consumer (the same database), to resume from them",
            ));
        };
        if progress.mode() != CheckpointMode::Manual {
            return Err(Error::config(
                "writing checkpoints in a transaction needs CheckpointMode::Manual: in Auto mode the consumer checkpoints on its own",
            ));
        }
        if progress.is_closed() {
            return Err(progress.fatal().unwrap_or(Error::Closed));
        }
        let key = CheckpointKey::new(&*stream.consumer_name, &*stream.stream_name, &*record.shard_id);
        let position = Position::of(record);
        if !progress.is_delivered(&record.shard_id, &position) {
            if progress.is_dropped(&record.shard_id) {
                return Err(Error::Checkpoint(CheckpointError::lease_lost(&key)));
            }
            return Err(Error::UnknownRecord {
                shard_id: record.shard_id.to_string(),
                sequence_number: record.sequence_number.to_string(),
            });
        }
        let lease = match &stream.membership {
            Some(membership) => Some(lease_of(membership, &key)?),
            None => None,
        };
        let checkpoint = position.checkpoint();
        progress.prepared(&record.shard_id, &checkpoint);
        Ok(PendingCheckpoint {
            key,
            checkpoint,
            position,
            lease,
            progress: Some(Arc::clone(progress)),
        })
    }
}

fn lease_of(membership: &Membership, key: &CheckpointKey) -> Result<(String, u64), Error> {
    membership
        .lease(&key.shard_id)
        .and_then(|lease| lease.owner.map(|owner| (owner, lease.epoch)))
        .ok_or_else(|| Error::Checkpoint(CheckpointError::lease_lost(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(seq: &str, lease: Option<(&str, u64)>) -> PendingCheckpoint {
        let record = Record::new(
            "shardId-0",
            crate::SequenceNumber::parse(seq).expect("valid"),
            "k",
            &b""[..],
        );
        PendingCheckpoint::detached(
            CheckpointKey::new("app", "stream", "shardId-0"),
            &record,
            lease.map(|(owner, epoch)| (owner.to_owned(), epoch)),
        )
    }

    #[test]
    fn a_write_goes_ahead_only_past_what_the_row_holds() {
        let write = pending("20", None);
        assert!(write.check(None, None, 0).is_ok());
        assert!(write.check(Some("10"), None, 0).is_ok());
        assert!(write.check(Some("AT_TIMESTAMP:5"), None, 0).is_ok());
        assert!(matches!(
            write.check(Some("20"), None, 0),
            Err(CheckpointError::AlreadyCommitted { stored, .. }) if stored.as_str() == "20"
        ));
        assert!(matches!(
            write.check(Some("30"), None, 0),
            Err(CheckpointError::Conflict { .. })
        ));
        assert!(matches!(
            write.check(Some("SHARD_END"), None, 0),
            Err(CheckpointError::Conflict { .. })
        ));
        assert!(matches!(
            write.check(Some("1.5e20"), None, 0),
            Err(CheckpointError::Malformed { .. })
        ));
    }

    #[test]
    fn a_fenced_write_needs_the_row_to_show_its_lease() {
        let write = pending("20", Some(("worker-a", 3)));
        assert!(write.check(Some("10"), Some("worker-a"), 3).is_ok());
        for (owner, epoch) in [(Some("worker-b"), 4), (Some("worker-a"), 4), (None, 4), (None, 3)] {
            assert!(
                matches!(
                    write.check(Some("10"), owner, epoch),
                    Err(CheckpointError::LeaseLost { .. })
                ),
                "{owner:?} {epoch}"
            );
        }
    }
}
