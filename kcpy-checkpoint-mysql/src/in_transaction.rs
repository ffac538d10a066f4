//! Checkpoints written inside the caller's own transaction, beside the
//! caller's results.

use kcpy_core::{CheckpointError, Checkpointer, PendingCheckpoint, Record};
use sqlx::{MySql, Transaction};

use crate::{error_number, store_error, MySqlCheckpointStore, SchemaError, DUPLICATE_KEY, WHERE_KEY};

impl MySqlCheckpointStore {
    /// Writes the checkpoint of `record` (and of every record of its shard
    /// delivered before it) in `tx`, an InnoDB transaction you opened on this
    /// store's database holding your results, and commits it: your results
    /// and the checkpoint are durable together or not at all, and the
    /// consumer resumes after them. Needs [`CheckpointMode::Manual`].
    ///
    /// The write follows the store's rules: never backwards, and in a
    /// consumer group only while this worker holds the shard's lease. On an
    /// error the transaction is rolled back, your results with it:
    /// - [`CheckpointError::LeaseLost`]: another worker holds the shard now
    ///   and applies its records; go on with the next records.
    /// - [`CheckpointError::AlreadyCommitted`]: these records were committed
    ///   before (a commit whose answer was lost, say); go on.
    /// - otherwise ([`kcpy_core::Error::is_retryable`] tells), the records
    ///   are not applied: try them again in a new transaction, or stop; a
    ///   restart delivers them again.
    ///
    /// [`CheckpointMode::Manual`]: kcpy_core::CheckpointMode::Manual
    pub async fn commit(
        &self,
        mut tx: Transaction<'_, MySql>,
        checkpointer: &Checkpointer,
        record: &Record,
    ) -> Result<(), kcpy_core::Error> {
        let pending = checkpointer.prepare(record)?;
        if let Err(error) = self.checkpoint_in(&mut tx, &pending).await {
            // Its answer does not matter: unfinished, it rolls back anyway.
            let _ = tx.rollback().await;
            if matches!(error, CheckpointError::AlreadyCommitted { .. }) {
                pending.committed();
            }
            return Err(error.into());
        }
        tx.commit().await.map_err(store_error)?;
        pending.committed();
        Ok(())
    }

    /// Writes `pending` in `tx`, your transaction on this store's database,
    /// without committing: commit it yourself, then call
    /// [`PendingCheckpoint::committed`]. [`commit`](Self::commit) does all
    /// of it; this is for code that commits elsewhere.
    ///
    /// This locks the checkpoint's row until `tx` ends: commit soon after,
    /// and give your connections a `wait_timeout` (this store's own use
    /// 10 s), so that a process frozen before its commit holds up the
    /// consumer group's lease changes only that long.
    pub async fn checkpoint_in(
        &self,
        tx: &mut Transaction<'_, MySql>,
        pending: &PendingCheckpoint,
    ) -> Result<(), CheckpointError> {
        let key = pending.key();
        // Lock an existing row first: an insert meeting it would take a
        // shared lock and then deadlock with a concurrent save over the
        // upgrade.
        let row = match Self::lock_row(tx, key).await? {
            Some(row) => row,
            None => {
                let inserted =
                    sqlx::query("INSERT INTO kcpy_checkpoints (consumer_name, stream_name, shard_id) VALUES (?, ?, ?)")
                        .bind(&key.consumer_name)
                        .bind(&key.stream_name)
                        .bind(&key.shard_id)
                        .execute(&mut **tx)
                        .await;
                match inserted {
                    Ok(_) => {}
                    Err(error) if error_number(&error) == Some(DUPLICATE_KEY) => {}
                    Err(error) => return Err(store_error(error)),
                }
                Self::lock_row(tx, key).await?.ok_or_else(|| {
                    CheckpointError::backend(SchemaError(format!("the row of {key} vanished during a save")), true)
                })?
            }
        };
        let (_, stored, owner, epoch, ..) = row;
        pending.check(stored.as_deref(), owner.as_deref(), epoch)?;
        sqlx::query(&format!("UPDATE kcpy_checkpoints SET checkpoint = ? WHERE {WHERE_KEY}"))
            .bind(pending.checkpoint().as_str())
            .bind(&key.consumer_name)
            .bind(&key.stream_name)
            .bind(&key.shard_id)
            .execute(&mut **tx)
            .await
            .map_err(store_error)
            .map(drop)
    }
}
