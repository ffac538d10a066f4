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
mod tests {
    use super::*;
    use crate::SequenceNumber;

    fn shard(id: &str, parents: &[&str], closed: bool) -> ShardInfo {
        ShardInfo {
            shard_id: id.into(),
            parent_shard_id: parents.first().map(|p| p.to_string()),
            adjacent_parent_shard_id: parents.get(1).map(|p| p.to_string()),
            ending_sequence_number: closed.then(|| "999".to_string()),
            hash_range: None,
        }
    }

    fn seq(n: u32) -> SequenceNumber {
        SequenceNumber::parse(&n.to_string()).expect("valid")
    }

    fn ids(starts: &[Start]) -> Vec<&str> {
        starts.iter().map(|s| s.shard_id.as_str()).collect()
    }

    fn at(starts: &[Start], id: &str) -> IteratorPosition {
        starts
            .iter()
            .find(|s| s.shard_id == id)
            .map(|s| s.position.clone())
            .expect("started")
    }

    // A split: A -> B, C. A merge: B + C -> D.
    fn split_then_merge(closed_b_c: bool) -> Vec<ShardInfo> {
        vec![
            shard("A", &[], true),
            shard("B", &["A"], closed_b_c),
            shard("C", &["A"], closed_b_c),
            shard("D", &["B", "C"], false),
        ]
    }

    #[test]
    fn parents_are_read_before_their_children_and_both_parents_before_a_merge() {
        let now = SystemTime::now();
        let (mut lineage, starts) =
            Lineage::new(split_then_merge(true), &HashMap::new(), StartPosition::TrimHorizon, now);
        assert_eq!(ids(&starts), ["A"]);
        let starts = lineage.finished("A", now);
        assert_eq!(ids(&starts), ["B", "C"]);
        assert_eq!(at(&starts, "B"), IteratorPosition::TrimHorizon);
        assert!(lineage.finished("B", now).is_empty(), "D also waits for C");
        let starts = lineage.finished("C", now);
        assert_eq!(ids(&starts), ["D"]);
        assert_eq!(at(&starts, "D"), IteratorPosition::TrimHorizon);
    }

    #[test]
    fn a_checkpoint_inside_an_aggregate_starts_at_the_aggregate_and_skips_what_it_covers() {
        let inside = SubSequence::new(seq(42), 3);
        let checkpoints = HashMap::from([
            ("A".to_string(), Checkpoint::SubSequence(inside.clone())),
            ("B".to_string(), Checkpoint::Sequence(seq(42))),
        ]);
        let mut listed = shard("A", &[], false);
        listed.hash_range = Some(HashRange { start: 0, end: 9 });
        let (_, starts) = Lineage::new(
            vec![listed, shard("B", &[], false)],
            &checkpoints,
            StartPosition::TrimHorizon,
            SystemTime::now(),
        );
        let a = starts.iter().find(|s| s.shard_id == "A").expect("A starts");
        assert_eq!(a.position, IteratorPosition::AtSequence(seq(42)));
        assert_eq!(a.fallback, IteratorPosition::AtSequence(seq(42)));
        assert_eq!(a.skip, Some(inside));
        assert_eq!(a.hash_range, Some(HashRange { start: 0, end: 9 }));
        let b = starts.iter().find(|s| s.shard_id == "B").expect("B starts");
        assert_eq!(b.position, IteratorPosition::AfterSequence(seq(42)));
        assert_eq!(b.skip, None);
    }

    #[test]
    fn finished_shards_are_not_read_again_and_checkpoints_resume() {
        let checkpoints = HashMap::from([
            ("A".to_string(), Checkpoint::ShardEnd),
            ("B".to_string(), Checkpoint::ShardEnd),
            ("C".to_string(), Checkpoint::Sequence(seq(42))),
        ]);
        let (lineage, starts) = Lineage::new(
            split_then_merge(true),
            &checkpoints,
            StartPosition::TrimHorizon,
            SystemTime::now(),
        );
        assert_eq!(ids(&starts), ["C"]);
        assert_eq!(at(&starts, "C"), IteratorPosition::AfterSequence(seq(42)));
        assert!(!lineage.is_pending("A"));
        assert!(lineage.is_pending("D"));
    }

    #[test]
    fn children_of_finished_parents_start_at_trim_horizon_even_under_latest() {
        let checkpoints = HashMap::from([("A".to_string(), Checkpoint::ShardEnd)]);
        let (_, starts) = Lineage::new(
            split_then_merge(false),
            &checkpoints,
            StartPosition::Latest,
            SystemTime::now(),
        );
        assert_eq!(ids(&starts), ["B", "C"]);
        assert_eq!(at(&starts, "B"), IteratorPosition::TrimHorizon);
    }

    #[test]
    fn a_closed_parent_with_unread_data_is_drained_before_its_children_under_latest() {
        let checkpoints = HashMap::from([("A".to_string(), Checkpoint::Sequence(seq(7)))]);
        let (mut lineage, starts) = Lineage::new(
            split_then_merge(false),
            &checkpoints,
            StartPosition::Latest,
            SystemTime::now(),
        );
        assert_eq!(ids(&starts), ["A"]);
        assert_eq!(at(&starts, "A"), IteratorPosition::AfterSequence(seq(7)));
        let starts = lineage.finished("A", SystemTime::now());
        assert_eq!(at(&starts, "B"), IteratorPosition::TrimHorizon);
    }

    #[test]
    fn a_fresh_latest_consumer_skips_closed_shards_and_starts_open_ones_at_latest() {
        let now = SystemTime::now();
        let (_, starts) = Lineage::new(split_then_merge(false), &HashMap::new(), StartPosition::Latest, now);
        assert_eq!(ids(&starts), ["B", "C"]);
        assert_eq!(at(&starts, "B"), IteratorPosition::Latest);
        assert_eq!(starts[0].fallback, IteratorPosition::AtTimestamp(now));
    }

    #[test]
    fn at_timestamp_carries_over_to_children_without_checkpoints() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        let (mut lineage, starts) = Lineage::new(
            split_then_merge(true),
            &HashMap::new(),
            StartPosition::AtTimestamp(t),
            t,
        );
        assert_eq!(at(&starts, "A"), IteratorPosition::AtTimestamp(t));
        let starts = lineage.finished("A", t);
        assert_eq!(at(&starts, "B"), IteratorPosition::AtTimestamp(t));
    }

    #[test]
    fn parents_missing_from_the_listing_do_not_block_their_children() {
        let (_, starts) = Lineage::new(
            vec![shard("B", &["gone"], false), shard("C", &["gone"], false)],
            &HashMap::new(),
            StartPosition::TrimHorizon,
            SystemTime::now(),
        );
        assert_eq!(ids(&starts), ["B", "C"]);
    }

    #[test]
    fn with_leases_only_held_shards_start_at_the_checkpoint_their_lease_carries() {
        let now = SystemTime::now();
        let mut lineage = Lineage::leased(split_then_merge(false), &HashMap::new(), StartPosition::Latest, now);
        assert!(lineage.finished("A", now).is_empty(), "B and C are not held");
        let (starts, skipped) = lineage.acquire("B", &[], Some(&Checkpoint::Sequence(seq(9))), now);
        assert_eq!(ids(&starts), ["B"]);
        assert_eq!(at(&starts, "B"), IteratorPosition::AfterSequence(seq(9)));
        assert!(!skipped);
        lineage.release("B");
        let (starts, _) = lineage.acquire("B", &[], Some(&Checkpoint::Sequence(seq(20))), now);
        assert_eq!(
            at(&starts, "B"),
            IteratorPosition::AfterSequence(seq(20)),
            "a lease taken again resumes where its last owner stopped"
        );
        let (starts, _) = lineage.acquire("C", &[], None, now);
        assert_eq!(
            at(&starts, "C"),
            IteratorPosition::AtTimestamp(now),
            "in a group, LATEST is this process's start, whenever the lease is taken"
        );
    }

    #[test]
    fn a_held_child_starts_because_its_lease_says_its_parents_finished_elsewhere() {
        let now = SystemTime::now();
        let mut lineage = Lineage::leased(split_then_merge(true), &HashMap::new(), StartPosition::TrimHorizon, now);
        let (starts, _) = lineage.acquire("D", &["B".into(), "C".into()], None, now);
        assert_eq!(ids(&starts), ["D"], "another worker read B and C");
        assert_eq!(at(&starts, "D"), IteratorPosition::TrimHorizon);
    }

    #[test]
    fn a_held_shard_skipped_under_latest_is_reported_for_an_end_checkpoint() {
        let now = SystemTime::now();
        let mut lineage = Lineage::leased(split_then_merge(false), &HashMap::new(), StartPosition::Latest, now);
        let (starts, skipped) = lineage.acquire("A", &[], None, now);
        assert!(starts.is_empty());
        assert!(
            skipped,
            "a closed shard with nothing read holds nothing for a LATEST consumer"
        );
    }

    #[test]
    fn shards_found_later_wait_for_their_parents_and_start_at_trim_horizon() {
        let now = SystemTime::now();
        let (mut lineage, starts) = Lineage::new(
            vec![shard("A", &[], false)],
            &HashMap::new(),
            StartPosition::Latest,
            now,
        );
        assert_eq!(at(&starts, "A"), IteratorPosition::Latest);
        let children = vec![shard("B", &["A"], false), shard("C", &["A"], false)];
        assert!(
            lineage.discover(children.clone(), now).is_empty(),
            "A is still being read"
        );
        assert!(
            lineage.discover(children, now).is_empty(),
            "known shards are not added twice"
        );
        let starts = lineage.finished("A", now);
        assert_eq!(ids(&starts), ["B", "C"]);
        assert_eq!(at(&starts, "C"), IteratorPosition::TrimHorizon);
        assert!(lineage.finished("A", now).is_empty(), "children start once");
    }

    #[test]
    fn a_merge_child_announced_before_its_other_parent_was_listed_waits_for_it() {
        let now = SystemTime::now();
        // Only A is listed at startup; B appeared since. A's end names the
        // merge child M of A and B.
        let (mut lineage, starts) = Lineage::new(
            vec![shard("A", &[], true)],
            &HashMap::new(),
            StartPosition::TrimHorizon,
            now,
        );
        assert_eq!(ids(&starts), ["A"]);
        assert!(lineage.discover(vec![shard("M", &["A", "B"], false)], now).is_empty());
        assert!(lineage.finished("A", now).is_empty(), "B is unknown, not finished");
        assert!(lineage.awaits_unknown_parent(), "a listing is needed");
        let listing = vec![
            shard("A", &[], true),
            shard("B", &[], true),
            shard("M", &["A", "B"], false),
        ];
        let starts = lineage.listed(listing, now);
        assert_eq!(ids(&starts), ["B"], "B is read first");
        assert!(!lineage.awaits_unknown_parent());
        assert_eq!(ids(&lineage.finished("B", now)), ["M"]);
    }

    #[test]
    fn a_parent_missing_from_a_later_listing_is_gone_and_releases_its_child() {
        let now = SystemTime::now();
        let (mut lineage, _) = Lineage::new(
            vec![shard("A", &[], true)],
            &HashMap::new(),
            StartPosition::TrimHorizon,
            now,
        );
        lineage.discover(vec![shard("M", &["A", "X"], false)], now);
        assert!(lineage.finished("A", now).is_empty());
        let starts = lineage.listed(vec![shard("A", &[], true), shard("M", &["A", "X"], false)], now);
        assert_eq!(ids(&starts), ["M"], "X is past retention");
    }

    #[test]
    fn finished_shards_past_retention_are_forgotten_and_still_do_not_block_their_children() {
        let now = SystemTime::now();
        let (mut lineage, _) = Lineage::new(split_then_merge(true), &HashMap::new(), StartPosition::TrimHorizon, now);
        lineage.finished("A", now);
        // A aged out of the listing; B and C are still being read.
        lineage.listed(split_then_merge(true).split_off(1), now);
        assert!(
            !lineage.nodes.contains_key("A"),
            "a finished shard past retention is forgotten"
        );
        assert!(lineage.gone.contains("A"), "and counts as gone for B and C");
        lineage.finished("B", now);
        let starts = lineage.finished("C", now);
        assert_eq!(ids(&starts), ["D"]);
        // B and C age out too: only D is kept, and nothing names A any more.
        lineage.listed(vec![shard("D", &["B", "C"], false)], now);
        assert_eq!(lineage.nodes.keys().collect::<Vec<_>>(), ["D"]);
        assert_eq!(lineage.gone, HashSet::from(["B".to_string(), "C".to_string()]));
        assert!(lineage.is_pending("D"), "D is still being read");
    }

    #[test]
    fn a_latest_start_is_marked_for_saving_and_a_saved_one_resumes_there() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        let (_, starts) = Lineage::new(split_then_merge(false), &HashMap::new(), StartPosition::Latest, now);
        assert!(starts.iter().all(|s| s.mark == Some(now)), "{starts:?}");
        let saved = HashMap::from([
            ("B".to_string(), Checkpoint::AtTimestamp(crate::StartTime::new(now))),
            ("C".to_string(), Checkpoint::Sequence(seq(5))),
        ]);
        let later = now + std::time::Duration::from_secs(60);
        let (_, starts) = Lineage::new(split_then_merge(false), &saved, StartPosition::Latest, later);
        assert_eq!(
            at(&starts, "B"),
            IteratorPosition::AtTimestamp(now),
            "not the later tip"
        );
        assert_eq!(at(&starts, "C"), IteratorPosition::AfterSequence(seq(5)));
        assert!(
            starts.iter().all(|s| s.mark.is_none()),
            "nothing new to save: {starts:?}"
        );
    }

    #[test]
    fn a_closed_shard_with_a_saved_start_is_read_not_skipped_under_latest() {
        let now = SystemTime::now();
        let saved = HashMap::from([("A".to_string(), Checkpoint::AtTimestamp(crate::StartTime::new(now)))]);
        let (_, starts) = Lineage::new(split_then_merge(false), &saved, StartPosition::Latest, now);
        assert_eq!(ids(&starts), ["A"], "A was being read when the last run stopped");
    }

    #[test]
    fn a_taken_lease_with_a_saved_start_resumes_there_in_a_group() {
        let first = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        let taker_start = first + std::time::Duration::from_secs(300);
        let mut lineage = Lineage::leased(
            split_then_merge(false),
            &HashMap::new(),
            StartPosition::Latest,
            taker_start,
        );
        let marker = Checkpoint::AtTimestamp(crate::StartTime::new(first));
        let (starts, _) = lineage.acquire("B", &[], Some(&marker), taker_start);
        assert_eq!(
            at(&starts, "B"),
            IteratorPosition::AtTimestamp(first),
            "the first worker's start, not the taker's"
        );
        let (starts, _) = lineage.acquire("C", &[], None, taker_start);
        assert_eq!(starts[0].mark, Some(taker_start), "a fresh start is saved");
    }
}
