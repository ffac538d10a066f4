//! Lineage: which shards start when, through splits, merges, leases and
//! saved starts.

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
    let (mut lineage, starts) = Lineage::new(split_then_merge(true), &HashMap::new(), StartPosition::TrimHorizon, now);
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
