//! What the consumer shows of itself: per-batch metrics, the lag snapshot
//! and the lifecycle events.

use tokio::sync::broadcast;

use super::part::Part;
use super::Consumer;
use crate::kinesis::Records;
use crate::telemetry::{ConsumerEvent, ShardLag};

impl Part {
    /// A batch of `slot`'s shard was taken to be handed out: counted whole,
    /// so the per-record path makes no metric call.
    pub(super) fn took(&mut self, slot: usize, records: &Records) {
        let entry = &self.slots[slot];
        entry.metrics.batch(records);
        self.durable.handed(&entry.id, entry.handed);
    }

    /// Where each shard of this stream stands, in id order.
    fn lag(&self) -> impl Iterator<Item = ShardLag> + '_ {
        self.lineage.states().map(|(shard, state)| {
            // The slot reading it, else one it was read in: a lease
            // taken again reads it in a new one.
            let slot = self
                .slots
                .iter()
                .filter(|slot| &*slot.id == shard)
                .min_by_key(|slot| slot.ended);
            let delivered = match slot {
                Some(slot) => slot.delivered.as_ref(),
                None => self.past.get(shard).and_then(Option::as_ref),
            };
            let behind = self.spawner.behind.get(shard);
            ShardLag {
                stream_name: self.stream.name.clone(),
                shard_id: shard.to_owned(),
                state,
                delivered: delivered.map(|at| at.checkpoint()),
                durable: self.durable.get(shard),
                millis_behind_latest: behind,
            }
        })
    }
}

impl Consumer {
    /// Where each shard stands: its state, the last record handed to you,
    /// the last checkpoint known durable and how far behind its tip the
    /// latest batch was. For a health endpoint; cheap enough to call on
    /// every request. Shards are listed by stream (in the order the streams
    /// were configured), then in id order.
    pub fn lag(&self) -> Vec<ShardLag> {
        self.parts.iter().flat_map(Part::lag).collect()
    }

    /// The consumer's lifecycle events from now on: shards started and
    /// finished, leases acquired, lost, requested and handed over. Each receiver gets
    /// every event sent after it subscribed; one more than 1,024 events
    /// behind misses the oldest (`RecvError::Lagged`). [`lag`](Self::lag)
    /// says where things stand when you subscribe.
    pub fn events(&self) -> broadcast::Receiver<ConsumerEvent> {
        // Every part sends to the same channel.
        self.parts[0].events.subscribe()
    }
}
