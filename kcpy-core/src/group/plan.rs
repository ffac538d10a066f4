//! The lease plan: which leases a worker may take, take over or delete in a
//! round, from the group's leases and the shards it knows. Pure functions.

use std::collections::{HashMap, HashSet};

use super::tally::{Elsewhere, StreamTally};
use crate::kinesis::ShardInfo;
use crate::lineage::parents_of;
use crate::{Checkpoint, Lease};

/// Per known shard, the known shards it is a parent of.
pub(super) fn children_of(known: &HashMap<String, ShardInfo>) -> HashMap<&str, Vec<&str>> {
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for shard in known.values() {
        for parent in [&shard.parent_shard_id, &shard.adjacent_parent_shard_id]
            .into_iter()
            .flatten()
        {
            children
                .entry(parent.as_str())
                .or_default()
                .push(shard.shard_id.as_str());
        }
    }
    children
}

/// Whether a child, grandchild, … of `shard` has a lease.
pub(super) fn has_leased_descendant(shard: &str, children: &HashMap<&str, Vec<&str>>, leased: &HashSet<&str>) -> bool {
    let mut todo: Vec<&str> = children.get(shard).cloned().unwrap_or_default();
    let mut visited: HashSet<&str> = HashSet::new();
    while let Some(next) = todo.pop() {
        if !visited.insert(next) {
            continue;
        }
        if leased.contains(next) {
            return true;
        }
        todo.extend(children.get(next).into_iter().flatten());
    }
    false
}

/// The leases of a group as one worker sees them in one round.
pub(super) struct View<'a> {
    by_shard: HashMap<&'a str, &'a Lease>,
    children: HashMap<&'a str, Vec<&'a str>>,
    known: &'a HashMap<String, ShardInfo>,
    gone: &'a HashSet<String>,
    me: &'a str,
}

/// What to do this round.
#[derive(Debug, Default)]
pub(super) struct Plan<'a> {
    pub(super) take: Vec<&'a Lease>,
    pub(super) steal: Option<&'a Lease>,
}

impl<'a> View<'a> {
    pub(super) fn new(
        leases: &'a [Lease],
        known: &'a HashMap<String, ShardInfo>,
        gone: &'a HashSet<String>,
        me: &'a str,
    ) -> Self {
        Self {
            by_shard: leases.iter().map(|l| (l.key.shard_id.as_str(), l)).collect(),
            children: children_of(known),
            known,
            gone,
            me,
        }
    }

    /// Whether `shard` names a parent that is neither known nor gone.
    pub(super) fn awaits_unknown_parent(&self, shard: &ShardInfo) -> bool {
        parents_of(shard)
            .iter()
            .any(|parent| !self.known.contains_key(parent) && !self.gone.contains(parent))
    }

    pub(super) fn finished(&self, lease: &Lease) -> bool {
        lease.checkpoint == Some(Checkpoint::ShardEnd)
    }

    /// A shard this worker has listed, not finished, whose parents are all
    /// finished: parents are read first. A parent missing from a whole
    /// listing is past retention: never read, and no longer holding its
    /// children back; a parent not listed yet holds them back until it is.
    pub(super) fn eligible(&self, lease: &Lease) -> bool {
        let Some(info) = self.known.get(&lease.key.shard_id) else {
            return false;
        };
        if self.finished(lease) {
            return false;
        }
        // A checkpoint is written only by a holder, and a lease is held only
        // once its parents were finished: their leases may be deleted since.
        if lease.checkpoint.is_some() {
            return true;
        }
        parents_of(info).iter().all(|parent| {
            if self.known.contains_key(parent) {
                self.by_shard.get(parent.as_str()).is_some_and(|p| self.finished(p))
            } else {
                self.gone.contains(parent)
            }
        })
    }

    /// Whether the lease of a finished, free shard may go: every child has
    /// a checkpoint of its own (so none needs it to start), or the shard is
    /// past retention.
    pub(super) fn deletable(&self, lease: &Lease) -> bool {
        if !self.finished(lease) || lease.owner.is_some() {
            return false;
        }
        let shard = lease.key.shard_id.as_str();
        if self.gone.contains(shard) {
            return true;
        }
        let children = self.children.get(shard).map(Vec::as_slice).unwrap_or_default();
        !children.is_empty()
            && children
                .iter()
                .all(|child| self.by_shard.get(child).is_some_and(|lease| lease.checkpoint.is_some()))
    }

    /// Takes free and expired eligible leases up to this worker's fair share;
    /// below it and with none free, asks the busiest worker for one lease if
    /// it holds at least two more than this one (hysteresis: shares settle
    /// within one of even and then stay put).
    /// Workers holding a live lease (this one always counted) and shards
    /// that need a lease and have no live holder.
    pub(super) fn census(&self, expired: impl Fn(&Lease) -> bool) -> (usize, usize) {
        let mut workers: HashSet<&str> = HashSet::from([self.me]);
        let mut unclaimed = 0;
        for lease in self.by_shard.values().filter(|l| self.eligible(l)) {
            match lease.owner.as_deref() {
                Some(owner) if !expired(lease) => {
                    workers.insert(owner);
                }
                _ => unclaimed += 1,
            }
        }
        (workers.len(), unclaimed)
    }

    /// This stream's counts, for the plans of the group's other streams.
    pub(super) fn tally(&self, expired: impl Fn(&Lease) -> bool, asking: bool) -> StreamTally {
        let mut tally = StreamTally {
            asking,
            ..StreamTally::default()
        };
        for lease in self.by_shard.values().filter(|l| self.eligible(l)) {
            tally.eligible += 1;
            if let Some(owner) = lease.owner.as_deref().filter(|_| !expired(lease)) {
                *tally.held.entry(owner.to_owned()).or_default() += 1;
            }
        }
        tally
    }

    #[cfg(test)]
    pub(super) fn plan(&self, expired: impl Fn(&Lease) -> bool, asked: bool) -> Plan<'a> {
        self.plan_with(expired, asked, &Elsewhere::default())
    }

    /// The plan for this stream, with the shares counted over every stream
    /// the group reads: this one's leases and `elsewhere`, the others'.
    pub(super) fn plan_with(&self, expired: impl Fn(&Lease) -> bool, asked: bool, elsewhere: &Elsewhere) -> Plan<'a> {
        let me = self.me;
        let asked = asked || elsewhere.asking;
        let eligible: Vec<&'a Lease> = self.by_shard.values().copied().filter(|l| self.eligible(l)).collect();
        let live = |lease: &Lease| lease.owner.is_some() && !expired(lease);
        let mut counts: HashMap<&str, usize> = HashMap::from([(me, 0)]);
        for lease in eligible.iter().filter(|l| live(l)) {
            if let Some(owner) = lease.owner.as_deref() {
                *counts.entry(owner).or_default() += 1;
            }
        }
        for (owner, count) in &elsewhere.held {
            *counts.entry(owner.as_str()).or_default() += count;
        }
        let mine = counts[me];
        let target = (eligible.len() + elsewhere.eligible).div_ceil(counts.len());
        let mut plan = Plan::default();
        if mine >= target {
            return plan;
        }
        let mut free: Vec<&'a Lease> = eligible.iter().copied().filter(|l| !live(l)).collect();
        fastrand::shuffle(&mut free);
        // Never-owned and released leases before expired ones.
        free.sort_by_key(|l| l.owner.is_some());
        plan.take = free.into_iter().take(target - mine).collect();
        if !plan.take.is_empty() || asked {
            return plan;
        }
        let busiest = counts
            .iter()
            .filter(|(owner, _)| **owner != me)
            .max_by_key(|(owner, count)| (**count, std::cmp::Reverse(**owner)));
        if let Some((&owner, &count)) = busiest {
            if count >= mine + 2 {
                let mut theirs: Vec<&'a Lease> = eligible
                    .iter()
                    .copied()
                    .filter(|l| l.owner.as_deref() == Some(owner) && l.handoff_to.is_none() && live(l))
                    .collect();
                theirs.sort_by(|a, b| a.key.shard_id.cmp(&b.key.shard_id));
                plan.steal = theirs.pop();
            }
        }
        plan
    }
}
