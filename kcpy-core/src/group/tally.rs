//! What a worker's coordinators of several streams tell each other, so that
//! the group balances the shards of every stream together: per stream, the
//! leases that need an owner and how many each worker holds, as last listed.
//! The coordinators take turns at their rounds, so each plans with the
//! others' latest counts and one handoff request at a time.

use std::collections::HashMap;

use tokio::sync::{Mutex, MutexGuard};

/// One stream's counts, as its coordinator last listed them.
#[derive(Debug, Default, Clone)]
pub(crate) struct StreamTally {
    /// Leases that may be held now (listed, unfinished, parents finished).
    pub(crate) eligible: usize,
    /// Live leases per owner.
    pub(crate) held: HashMap<String, usize>,
    /// This worker waits for a handoff it asked for on this stream.
    pub(crate) asking: bool,
}

/// The counts of every stream but one, summed.
#[derive(Debug, Default)]
pub(crate) struct Elsewhere {
    pub(crate) eligible: usize,
    pub(crate) held: HashMap<String, usize>,
    pub(crate) asking: bool,
}

/// Shared by the coordinators of one consumer, one entry per stream.
#[derive(Debug, Default)]
pub(crate) struct Tally(Mutex<HashMap<String, StreamTally>>);

impl Tally {
    /// Waits for this stream's turn: until the guard drops, the other
    /// streams' coordinators wait.
    pub(crate) async fn turn(&self) -> MutexGuard<'_, HashMap<String, StreamTally>> {
        self.0.lock().await
    }
}

/// The sum of every stream's counts except `stream`'s.
pub(crate) fn elsewhere(streams: &HashMap<String, StreamTally>, stream: &str) -> Elsewhere {
    let mut sum = Elsewhere::default();
    for (name, tally) in streams {
        if name == stream {
            continue;
        }
        sum.eligible += tally.eligible;
        sum.asking |= tally.asking;
        for (owner, count) in &tally.held {
            *sum.held.entry(owner.clone()).or_default() += count;
        }
    }
    sum
}
