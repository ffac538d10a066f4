//! Which shards to read, and when. A shard is read only once every parent it
//! has (one after a split, two after a merge) was read to its end and that end
//! was checkpointed, so records of a partition key stay in order across a
//! reshard. Pure bookkeeping: the consumer feeds it what it learns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::SystemTime;

use crate::config::StartPosition;
use crate::kinesis::{HashRange, IteratorPosition, ShardInfo};
use crate::{Checkpoint, ShardState, SubSequence};

/// A shard to start reading now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Start {
    pub(crate) shard_id: String,
    /// Where to read from.
    pub(crate) position: IteratorPosition,
    /// Where to renew an expired iterator if nothing was fetched yet.
    pub(crate) fallback: IteratorPosition,
    /// A start that a later run could not find again (LATEST, as of this
    /// process's start): save it as the shard's checkpoint before anything
    /// else, so a restart or takeover before the first record resumes here.
    pub(crate) mark: Option<SystemTime>,
    /// The shard's hash key range, when a listing gave it.
    pub(crate) hash_range: Option<HashRange>,
    /// A checkpoint inside a KPL aggregate: `position` is the aggregate
    /// itself, and its user records this covers are not delivered again.
    pub(crate) skip: Option<SubSequence>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not started: a parent is not finished yet.
    Waiting,
    Reading,
    /// Read to its end and checkpointed (or never to be read).
    Finished,
}

#[derive(Debug)]
struct Node {
    parents: Vec<String>,
    closed: bool,
    state: State,
    /// [`Checkpoint::Sequence`] or [`Checkpoint::SubSequence`].
    checkpoint: Option<Checkpoint>,
    hash_range: Option<HashRange>,
    /// A saved start ([`Checkpoint::AtTimestamp`]): nothing processed yet,
    /// reading starts there.
    started: Option<SystemTime>,
    /// Where a child without a checkpoint starts. TRIM_HORIZON — the child
    /// holds exactly what came after this shard — unless this shard was
    /// positioned by the configured start (AT_TIMESTAMP, or skipped under
    /// LATEST), which then carries over.
    child_start: IteratorPosition,
    /// Where the shard starts without a checkpoint or known parents: the
    /// configured start for shards listed at startup, TRIM_HORIZON for shards
    /// created later.
    root: IteratorPosition,
    /// This process may read the shard: always without leases, else while it
    /// holds the shard's lease.
    owned: bool,
}

#[derive(Debug)]
pub(crate) struct Lineage {
    nodes: BTreeMap<String, Node>,
    /// Parents named by a listed shard but missing from a whole listing:
    /// past retention, so they hold their children back no longer. A parent
    /// neither listed nor gone (a merge's other parent, named by ChildShards
    /// before a listing showed it) blocks its child until a listing says
    /// which it is.
    gone: HashSet<String>,
    /// Shards are read only while their lease is held.
    leased: bool,
    /// With [`StartPosition::Latest`]: this process's start, which shards
    /// positioned at LATEST save as their start.
    latest_at: Option<SystemTime>,
}

impl Lineage {
    /// The shards of a stream as ListShards gave them at startup, with their
    /// stored checkpoints; returns what to start reading at once.
    pub(crate) fn new(
        shards: Vec<ShardInfo>,
        checkpoints: &HashMap<String, Checkpoint>,
        start: StartPosition,
        now: SystemTime,
    ) -> (Self, Vec<Start>) {
        Self::build(shards, checkpoints, start, now, false)
    }

    /// As [`Lineage::new`], but a shard is read only once [`Lineage::acquire`]
    /// says its lease is held; so nothing starts yet.
    pub(crate) fn leased(
        shards: Vec<ShardInfo>,
        checkpoints: &HashMap<String, Checkpoint>,
        start: StartPosition,
        now: SystemTime,
    ) -> Self {
        Self::build(shards, checkpoints, start, now, true).0
    }

    fn build(
        shards: Vec<ShardInfo>,
        checkpoints: &HashMap<String, Checkpoint>,
        start: StartPosition,
        now: SystemTime,
        leased: bool,
    ) -> (Self, Vec<Start>) {
        // In a group a shard may be taken long after this process started,
        // or taken over from a worker that died before its first checkpoint:
        // LATEST then means this process's start, not the take.
        let latest = if leased {
            IteratorPosition::AtTimestamp(now)
        } else {
            IteratorPosition::Latest
        };
        let configured = match start {
            StartPosition::TrimHorizon => IteratorPosition::TrimHorizon,
            StartPosition::Latest => latest.clone(),
            StartPosition::AtTimestamp(at) => IteratorPosition::AtTimestamp(at),
        };
        let mut nodes = BTreeMap::new();
        for shard in shards {
            let (state, checkpoint, started) = match checkpoints.get(&shard.shard_id) {
                Some(Checkpoint::ShardEnd) => (State::Finished, None, None),
                Some(done @ (Checkpoint::Sequence(_) | Checkpoint::SubSequence(_))) => {
                    (State::Waiting, Some(done.clone()), None)
                }
                Some(Checkpoint::AtTimestamp(at)) => (State::Waiting, None, Some(at.time())),
                None => (State::Waiting, None, None),
            };
            nodes.insert(
                shard.shard_id.clone(),
                Node {
                    parents: parents_of(&shard),
                    closed: shard.ending_sequence_number.is_some(),
                    state,
                    checkpoint,
                    hash_range: shard.hash_range,
                    started,
                    child_start: IteratorPosition::TrimHorizon,
                    root: configured.clone(),
                    owned: !leased,
                },
            );
        }
        let mut lineage = Self {
            nodes,
            gone: HashSet::new(),
            leased,
            latest_at: (start == StartPosition::Latest).then_some(now),
        };
        lineage.mark_gone(None);
        // Under LATEST a closed shard holds nothing to read, unless a
        // checkpoint in its lineage says this consumer was reading it.
        if start == StartPosition::Latest {
            let skipped: Vec<String> = lineage
                .nodes
                .iter()
                .filter(|(id, node)| node.closed && node.state == State::Waiting && !lineage.has_progress(id))
                .map(|(id, _)| id.clone())
                .collect();
            for id in skipped {
                if let Some(node) = lineage.nodes.get_mut(&id) {
                    node.state = State::Finished;
                    node.child_start = latest.clone();
                }
            }
        }
        let starts = lineage.start_ready(now);
        (lineage, starts)
    }

    /// Every shard of the stream, listed again; returns what can start now.
    pub(crate) fn listed(&mut self, shards: Vec<ShardInfo>, now: SystemTime) -> Vec<Start> {
        let listed: HashSet<String> = shards.iter().map(|s| s.shard_id.clone()).collect();
        let mut starts = self.discover(shards, now);
        // Finished shards the listing lacks are past retention: they become
        // gone parents, so what is kept stays as large as the listing.
        let aged: Vec<String> = self
            .nodes
            .iter()
            .filter(|(id, node)| node.state == State::Finished && !listed.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in aged {
            self.nodes.remove(&id);
            self.gone.insert(id);
        }
        let before = self.gone.len();
        self.mark_gone(Some(&listed));
        let added = self.gone.len() > before;
        let named: HashSet<&String> = self.nodes.values().flat_map(|node| &node.parents).collect();
        self.gone.retain(|parent| named.contains(parent));
        if added {
            starts.extend(self.start_ready(now));
        }
        starts
    }

    /// Parents named by known shards that are themselves unknown and not in
    /// the whole `listed` (when given, else the nodes are the listing): past
    /// retention.
    fn mark_gone(&mut self, listed: Option<&HashSet<String>>) {
        let absent: Vec<String> = self
            .nodes
            .values()
            .flat_map(|node| &node.parents)
            .filter(|parent| !self.nodes.contains_key(*parent) && listed.is_none_or(|l| !l.contains(*parent)))
            .cloned()
            .collect();
        self.gone.extend(absent);
    }

    /// Whether a shard waits for a parent no listing has shown yet: the
    /// shards should be listed again.
    pub(crate) fn awaits_unknown_parent(&self) -> bool {
        self.nodes.values().any(|node| {
            node.state == State::Waiting
                && node
                    .parents
                    .iter()
                    .any(|p| !self.nodes.contains_key(p) && !self.gone.contains(p))
        })
    }

    /// Shards announced by ChildShards at a shard's end (not a whole listing);
    /// returns what can start now.
    pub(crate) fn discover(&mut self, shards: Vec<ShardInfo>, now: SystemTime) -> Vec<Start> {
        let mut added = false;
        for shard in shards {
            if let Some(node) = self.nodes.get_mut(&shard.shard_id) {
                // Taken by lease before any listing showed it.
                node.hash_range = node.hash_range.or(shard.hash_range);
                continue;
            }
            added = true;
            self.nodes.insert(
                shard.shard_id.clone(),
                Node {
                    parents: parents_of(&shard),
                    closed: shard.ending_sequence_number.is_some(),
                    state: State::Waiting,
                    checkpoint: None,
                    hash_range: shard.hash_range,
                    started: None,
                    child_start: IteratorPosition::TrimHorizon,
                    // Created after build(): all of it is new, whatever the
                    // configured start.
                    root: IteratorPosition::TrimHorizon,
                    owned: !self.leased,
                },
            );
        }
        if !added {
            return Vec::new();
        }
        self.start_ready(now)
    }

    /// `shard` was read to its end and that end is checkpointed; returns the
    /// children that can start now.
    pub(crate) fn finished(&mut self, shard: &str, now: SystemTime) -> Vec<Start> {
        match self.nodes.get_mut(shard) {
            Some(node) => node.state = State::Finished,
            None => return Vec::new(),
        }
        self.start_ready(now)
    }

    /// This process now holds `shard`'s lease; `checkpoint` is the one the
    /// lease carries, and its parents are finished (the lease is taken only
    /// then). Returns what can start now, and whether the shard has nothing
    /// to read for this consumer (closed and skipped under LATEST), so its
    /// end should be checkpointed at once.
    pub(crate) fn acquire(
        &mut self,
        shard: &str,
        parents: &[String],
        checkpoint: Option<&Checkpoint>,
        now: SystemTime,
    ) -> (Vec<Start>, bool) {
        let node = self.nodes.entry(shard.to_owned()).or_insert_with(|| Node {
            parents: parents.to_vec(),
            closed: false,
            state: State::Waiting,
            checkpoint: None,
            hash_range: None,
            started: None,
            child_start: IteratorPosition::TrimHorizon,
            root: IteratorPosition::TrimHorizon,
            owned: false,
        });
        node.owned = true;
        // The lease's checkpoint is the one that counts, over anything
        // remembered from an earlier tenure: an operator may have reset it.
        let skipped = match checkpoint {
            Some(done @ (Checkpoint::Sequence(_) | Checkpoint::SubSequence(_))) => {
                node.checkpoint = Some(done.clone());
                node.state = State::Waiting;
                false
            }
            Some(Checkpoint::AtTimestamp(at)) => {
                node.checkpoint = None;
                node.started = Some(at.time());
                node.state = State::Waiting;
                false
            }
            Some(Checkpoint::ShardEnd) => {
                node.state = State::Finished;
                false
            }
            None => {
                node.checkpoint = None;
                node.started = None;
                node.state == State::Finished
            }
        };
        let parents = node.parents.clone();
        for parent in parents {
            match self.nodes.get_mut(&parent) {
                Some(parent) => parent.state = State::Finished,
                // The group judged it finished or gone when it let the lease go.
                None => {
                    self.gone.insert(parent);
                }
            }
        }
        (self.start_ready(now), skipped)
    }

    /// This process no longer holds `shard`'s lease.
    pub(crate) fn release(&mut self, shard: &str) {
        if let Some(node) = self.nodes.get_mut(shard) {
            node.owned = false;
            if node.state == State::Reading {
                node.state = State::Waiting;
            }
        }
    }

    /// Every known shard and what is being done with it, in id order.
    pub(crate) fn states(&self) -> impl Iterator<Item = (&str, ShardState)> {
        self.nodes.iter().map(|(id, node)| {
            let state = match node.state {
                State::Reading => ShardState::Reading,
                State::Finished => ShardState::Finished,
                State::Waiting if node.owned => ShardState::WaitingForParents,
                State::Waiting => ShardState::LeasedElsewhere,
            };
            (id.as_str(), state)
        })
    }

    /// Whether the shard is being read or waits to be.
    #[cfg(test)]
    fn is_pending(&self, shard: &str) -> bool {
        self.nodes.get(shard).is_some_and(|node| node.state != State::Finished)
    }

    /// Whether this shard or one of its known ancestors has a checkpoint.
    fn has_progress(&self, id: &str) -> bool {
        let mut stack = vec![id];
        let mut seen = 0;
        while let Some(id) = stack.pop() {
            seen += 1;
            if seen > self.nodes.len() {
                break;
            }
            if let Some(node) = self.nodes.get(id) {
                if node.checkpoint.is_some() || node.started.is_some() {
                    return true;
                }
                stack.extend(node.parents.iter().map(String::as_str));
            }
        }
        false
    }

    /// Starts every waiting, owned shard whose known parents are all finished.
    fn start_ready(&mut self, now: SystemTime) -> Vec<Start> {
        let ready: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, node)| {
                node.state == State::Waiting
                    && node.owned
                    && node.parents.iter().all(|p| match self.nodes.get(p) {
                        Some(parent) => parent.state == State::Finished,
                        None => self.gone.contains(p),
                    })
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut starts = Vec::with_capacity(ready.len());
        for id in ready {
            let inherited = self.inherited_start(&id);
            let Some(node) = self.nodes.get_mut(&id) else { continue };
            let mut skip = None;
            let position = match (&node.checkpoint, node.started, inherited) {
                (Some(Checkpoint::SubSequence(sub)), _, _) => {
                    skip = Some(sub.clone());
                    IteratorPosition::AtSequence(sub.sequence().clone())
                }
                (Some(done), _, _) => match done.sequence_number() {
                    Some(seq) => IteratorPosition::AfterSequence(seq.clone()),
                    None => node.root.clone(),
                },
                (None, Some(at), _) => IteratorPosition::AtTimestamp(at),
                (None, None, Some(inherited)) => inherited,
                (None, None, None) => node.root.clone(),
            };
            // LATEST, or this process's start standing in for it: a later
            // run could not find this start again, so it is saved.
            let mark = match (&node.checkpoint, node.started, &position) {
                (None, None, IteratorPosition::Latest) => self.latest_at,
                (None, None, IteratorPosition::AtTimestamp(at)) if Some(*at) == self.latest_at => Some(*at),
                _ => None,
            };
            if mark.is_some() {
                node.started = mark;
            }
            node.child_start = match &position {
                IteratorPosition::AtTimestamp(at) if node.checkpoint.is_none() => IteratorPosition::AtTimestamp(*at),
                _ => IteratorPosition::TrimHorizon,
            };
            node.state = State::Reading;
            // Renewing a never-used LATEST iterator at LATEST could skip
            // records written since; renew at the time it was resolved.
            let fallback = match &position {
                IteratorPosition::Latest => IteratorPosition::AtTimestamp(now),
                other => other.clone(),
            };
            starts.push(Start {
                shard_id: id,
                position,
                fallback,
                mark,
                hash_range: node.hash_range,
                skip,
            });
        }
        starts
    }

    /// The start a shard without a checkpoint inherits from its known parents:
    /// theirs when they all agree, else TRIM_HORIZON. `None` without parents.
    fn inherited_start(&self, id: &str) -> Option<IteratorPosition> {
        let node = self.nodes.get(id)?;
        let mut known = node.parents.iter().filter_map(|p| self.nodes.get(p));
        let first = known.next()?.child_start.clone();
        Some(if known.all(|parent| parent.child_start == first) {
            first
        } else {
            IteratorPosition::TrimHorizon
        })
    }
}

pub(crate) fn parents_of(shard: &ShardInfo) -> Vec<String> {
    shard
        .parent_shard_id
        .iter()
        .chain(&shard.adjacent_parent_shard_id)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
