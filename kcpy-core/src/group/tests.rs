//! The lease plan, pruning and fencing of the coordinator.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::membership::Held;
use super::plan::{children_of, has_leased_descendant, View};
use super::*;
use crate::config::Settings;
use crate::kinesis::ShardInfo;
use crate::signal::Outbox;

/// An outbox whose events a test reads.
fn outbox() -> (Outbox<GroupEvent>, mpsc::UnboundedReceiver<GroupEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Outbox::new(move |event| {
            let _ = tx.send(event);
        }),
        rx,
    )
}

fn lease(shard: &str, owner: Option<&str>, parents: &[&str]) -> Lease {
    let mut lease = Lease::new(
        CheckpointKey::new("app", "stream", shard),
        parents.iter().map(|p| p.to_string()).collect(),
    );
    lease.owner = owner.map(str::to_owned);
    lease
}

fn group(owners: &[Option<&str>]) -> Vec<Lease> {
    owners
        .iter()
        .enumerate()
        .map(|(n, owner)| lease(&format!("shard-{n}"), *owner, &[]))
        .collect()
}

/// Every shard of `leases` as listed, with the parents its lease names.
fn listed(leases: &[Lease]) -> HashMap<String, ShardInfo> {
    leases
        .iter()
        .map(|l| {
            let info = ShardInfo {
                shard_id: l.key.shard_id.clone(),
                parent_shard_id: l.parents.first().cloned(),
                adjacent_parent_shard_id: l.parents.get(1).cloned(),
                ending_sequence_number: None,
                hash_range: None,
            };
            (l.key.shard_id.clone(), info)
        })
        .collect()
}

/// No parent proven gone.
static NONE: std::sync::LazyLock<HashSet<String>> = std::sync::LazyLock::new(HashSet::new);

fn shards(plan: &[&Lease]) -> Vec<String> {
    let mut ids: Vec<String> = plan.iter().map(|l| l.key.shard_id.clone()).collect();
    ids.sort();
    ids
}

#[test]
fn a_lone_worker_takes_every_free_lease() {
    let leases = group(&[None; 6]);
    let known = listed(&leases);
    let plan = View::new(&leases, &known, &NONE, "w1").plan(|_| false, false);
    assert_eq!(plan.take.len(), 6);
    assert!(plan.steal.is_none());
}

#[test]
fn a_worker_takes_only_its_fair_share_of_free_leases() {
    let leases = group(&[Some("w2"), None, None, None, None, None]);
    let known = listed(&leases);
    let plan = View::new(&leases, &known, &NONE, "w1").plan(|_| false, false);
    assert_eq!(plan.take.len(), 3, "six leases, two live workers");
}

#[test]
fn expired_leases_are_taken_but_live_ones_are_not() {
    let leases = group(&[Some("dead"), Some("dead"), Some("w2"), Some("w2")]);
    let known = listed(&leases);
    let plan = View::new(&leases, &known, &NONE, "w1").plan(|l| l.owner.as_deref() == Some("dead"), false);
    assert_eq!(shards(&plan.take), ["shard-0", "shard-1"]);
}

#[test]
fn a_new_worker_asks_the_busiest_for_one_lease_at_a_time() {
    let leases = group(&[Some("w2"), Some("w2"), Some("w2"), Some("w2"), Some("w3"), Some("w3")]);
    let known = listed(&leases);
    let plan = View::new(&leases, &known, &NONE, "w1").plan(|_| false, false);
    assert!(plan.take.is_empty());
    assert_eq!(plan.steal.and_then(|l| l.owner.as_deref()), Some("w2"));
    let plan = View::new(&leases, &known, &NONE, "w1").plan(|_| false, true);
    assert!(plan.steal.is_none(), "one request at a time");
}

#[test]
fn shares_within_one_of_even_stay_put() {
    // 7 leases over 3 workers: 3, 2, 2 is balanced.
    let leases = group(&[
        Some("w2"),
        Some("w2"),
        Some("w2"),
        Some("w3"),
        Some("w3"),
        Some("w1"),
        Some("w1"),
    ]);
    let known = listed(&leases);
    for me in ["w1", "w2", "w3"] {
        let plan = View::new(&leases, &known, &NONE, me).plan(|_| false, false);
        assert!(
            plan.take.is_empty() && plan.steal.is_none(),
            "{me} must not move leases: {plan:?}"
        );
    }
}

#[test]
fn children_are_taken_only_once_every_parent_is_finished() {
    let mut parent = lease("A", Some("w2"), &[]);
    let b = lease("B", None, &["A"]);
    let d = lease("D", None, &["B", "C"]);
    let mut c = lease("C", None, &["A"]);
    let leases = vec![parent.clone(), b.clone(), c.clone(), d.clone()];
    let known = listed(&leases);
    let plan = View::new(&leases, &known, &NONE, "w1").plan(|_| false, false);
    assert!(plan.take.is_empty(), "A is still read: {plan:?}");
    parent.checkpoint = Some(Checkpoint::ShardEnd);
    let leases = vec![parent.clone(), b.clone(), c.clone(), d.clone()];
    let plan = View::new(&leases, &known, &NONE, "w1").plan(|_| false, false);
    assert_eq!(shards(&plan.take), ["B", "C"]);
    c.checkpoint = Some(Checkpoint::ShardEnd);
    let leases = vec![parent, b, c, d];
    let plan = View::new(&leases, &known, &NONE, "w1").plan(|_| false, false);
    assert_eq!(shards(&plan.take), ["B"], "D waits for B too");
}

#[test]
fn a_listed_parent_without_a_lease_yet_blocks_its_child() {
    let leases = vec![lease("B", None, &["A"])];
    let known = listed(&[lease("A", None, &[]), lease("B", None, &["A"])]);
    assert!(View::new(&leases, &known, &NONE, "w1")
        .plan(|_| false, false)
        .take
        .is_empty());
}

#[test]
fn a_shard_past_retention_is_never_taken_and_no_longer_blocks_its_children() {
    // A was split into B and C, then aged out: its lease stays, unfinished.
    let leases = vec![
        lease("A", None, &[]),
        lease("B", None, &["A"]),
        lease("C", None, &["A"]),
    ];
    let known = listed(&leases[1..]);
    let gone = HashSet::from(["A".to_string()]);
    let plan = View::new(&leases, &known, &gone, "w1").plan(|_| false, false);
    assert_eq!(shards(&plan.take), ["B", "C"]);
}

#[test]
fn a_parent_no_listing_has_shown_yet_blocks_its_child_and_asks_for_a_listing() {
    // M, a merge of A and B, was announced by A's end before this worker
    // listed B: B is unknown, not gone.
    let mut a = lease("A", None, &[]);
    a.checkpoint = Some(Checkpoint::ShardEnd);
    let leases = vec![a, lease("M", None, &["A", "B"])];
    let known = listed(&leases);
    let view = View::new(&leases, &known, &NONE, "w1");
    assert!(view.plan(|_| false, false).take.is_empty(), "M waits for B");
    assert!(view.awaits_unknown_parent(&known["M"]));
}

/// A lease store the test never reaches.
#[derive(Debug)]
struct Unused;

#[async_trait::async_trait]
impl LeaseStore for Unused {
    async fn list_leases(&self, _: &str, _: &str) -> Result<Vec<Lease>, CheckpointError> {
        Ok(Vec::new())
    }
    async fn create_lease(&self, key: &CheckpointKey, _: &[String]) -> Result<bool, CheckpointError> {
        Err(CheckpointError::lease_lost(key))
    }
    async fn take_lease(&self, observed: &Lease, _: &str) -> Result<Lease, CheckpointError> {
        Err(CheckpointError::lease_lost(&observed.key))
    }
    async fn renew_lease(&self, held: &Lease) -> Result<Lease, CheckpointError> {
        Err(CheckpointError::lease_lost(&held.key))
    }
    async fn request_handoff(&self, observed: &Lease, _: &str) -> Result<(), CheckpointError> {
        Err(CheckpointError::lease_lost(&observed.key))
    }
    async fn release_lease(&self, held: &Lease, _: Option<&str>) -> Result<(), CheckpointError> {
        Err(CheckpointError::lease_lost(&held.key))
    }
    async fn save_leased(&self, held: &Lease, _: &Checkpoint) -> Result<(), CheckpointError> {
        Err(CheckpointError::lease_lost(&held.key))
    }
    async fn delete_lease(&self, observed: &Lease) -> Result<(), CheckpointError> {
        Err(CheckpointError::lease_lost(&observed.key))
    }
}

fn seq(n: &str) -> Option<Checkpoint> {
    Some(Checkpoint::Sequence(n.parse().expect("valid")))
}

#[test]
fn a_finished_lease_is_deletable_once_every_child_has_a_checkpoint() {
    let mut a = lease("A", None, &[]);
    a.checkpoint = Some(Checkpoint::ShardEnd);
    let mut b = lease("B", Some("w1"), &["A"]);
    let c = lease("C", Some("w2"), &["A"]);
    let known = listed(&[a.clone(), b.clone(), c.clone()]);
    let leases = vec![a.clone(), b.clone(), c.clone()];
    assert!(
        !View::new(&leases, &known, &NONE, "w1").deletable(&a),
        "C has no checkpoint yet"
    );
    b.checkpoint = seq("7");
    let mut c = c;
    c.checkpoint = Some(Checkpoint::ShardEnd);
    let leases = vec![a.clone(), b.clone(), c.clone()];
    let view = View::new(&leases, &known, &NONE, "w1");
    assert!(view.deletable(&a));
    assert!(!view.deletable(&b), "B is not finished");
    assert!(!view.deletable(&c), "C has no children");
    let mut held = a.clone();
    held.owner = Some("w3".into());
    assert!(!view.deletable(&held), "a held lease stays");
}

#[test]
fn a_finished_lease_past_retention_is_deletable() {
    let mut a = lease("A", None, &[]);
    a.checkpoint = Some(Checkpoint::ShardEnd);
    let leases = vec![a.clone(), lease("B", None, &["A"])];
    let known = listed(&leases[1..]);
    let gone = HashSet::from(["A".to_string()]);
    assert!(View::new(&leases, &known, &gone, "w1").deletable(&a));
}

#[test]
fn a_child_that_has_a_checkpoint_is_taken_though_its_parents_lease_was_deleted() {
    // A (listed) was finished, its children started, its lease deleted.
    let mut b = lease("B", Some("dead"), &["A"]);
    b.checkpoint = seq("9");
    let c = lease("C", Some("dead"), &["A"]);
    let leases = vec![b, c];
    let known = listed(&[lease("A", None, &[]), leases[0].clone(), leases[1].clone()]);
    let plan = View::new(&leases, &known, &NONE, "w1").plan(|_| true, false);
    assert_eq!(
        shards(&plan.take),
        ["B"],
        "C never started, so A's end is not proven to it"
    );
}

#[test]
fn a_shard_whose_descendant_has_a_lease_gets_none_again() {
    let shards = [
        lease("A", None, &[]),
        lease("B", None, &["A"]),
        lease("D", None, &["B", "C"]),
    ];
    let known = listed(&shards);
    let children = children_of(&known);
    assert!(has_leased_descendant("A", &children, &HashSet::from(["D"])));
    assert!(has_leased_descendant("B", &children, &HashSet::from(["D"])));
    assert!(!has_leased_descendant("D", &children, &HashSet::from(["D"])));
    assert!(!has_leased_descendant("A", &children, &HashSet::new()));
}

#[tokio::test]
async fn shards_missing_from_two_listings_in_a_row_are_forgotten_with_their_gone_parents() {
    let (control, _rx) = outbox();
    let store: Arc<dyn LeaseStore> = Arc::new(Unused);
    let membership = Membership::new(store, &Settings::default(), "s", control, Arc::default());
    let info = |shard: &str, parent: Option<&str>| ShardInfo {
        shard_id: shard.into(),
        parent_shard_id: parent.map(str::to_owned),
        adjacent_parent_shard_id: None,
        ending_sequence_number: None,
        hash_range: None,
    };
    membership.listed(&[info("B", Some("A")), info("C", Some("B"))]);
    assert!(membership.gone.lock().expect("lock").contains("A"));
    membership.listed(&[info("C", Some("B"))]);
    assert!(
        membership.known().contains_key("B"),
        "once could be a listing made early"
    );
    membership.listed(&[info("C", Some("B"))]);
    assert!(!membership.known().contains_key("B"), "twice: past retention");
    let gone = membership.gone.lock().expect("lock").clone();
    assert_eq!(
        gone,
        HashSet::from(["B".to_string()]),
        "A is named by no known shard any more"
    );
}

#[tokio::test]
async fn a_refusal_under_an_old_epoch_does_not_drop_the_lease_taken_again_since() {
    let (control, mut told) = outbox();
    let store: Arc<dyn LeaseStore> = Arc::new(Unused);
    let membership = Membership::new(store, &Settings::default(), "s", control, Arc::default());
    let mut taken = lease("A", Some("w1"), &[]);
    taken.epoch = 5;
    membership.held().leases.insert(
        Arc::from("A"),
        Held {
            lease: taken,
            renewed: Instant::now(),
            releasing: false,
        },
    );
    assert!(!membership.lose_at("A", 3), "epoch 3 was an earlier tenure");
    assert!(membership.lease("A").is_some(), "the lease at epoch 5 is kept");
    assert!(told.try_recv().is_err(), "the shard is not stopped");
    assert!(membership.lose_at("A", 5));
    assert!(membership.lease("A").is_none());
    assert!(matches!(told.try_recv(), Ok(GroupEvent::Lost(shard)) if &*shard == "A"));
}

#[test]
fn shards_this_worker_has_not_listed_are_left_to_those_that_have() {
    let leases = group(&[None, None]);
    let known = listed(&leases[..1]);
    let plan = View::new(&leases, &known, &NONE, "w1").plan(|_| false, false);
    assert_eq!(shards(&plan.take), ["shard-0"]);
}

/// The other streams' counts: `held` leases per worker, `eligible` in all.
fn other_streams(eligible: usize, held: &[(&str, usize)], asking: bool) -> super::tally::Elsewhere {
    super::tally::Elsewhere {
        eligible,
        held: held.iter().map(|(owner, count)| (owner.to_string(), *count)).collect(),
        asking,
    }
}

#[test]
fn a_worker_counts_the_leases_it_holds_on_other_streams_towards_its_share() {
    // This stream: w2 holds one, one is free. Alone it would be w1's share.
    let leases = group(&[Some("w2"), None]);
    let known = listed(&leases);
    let view = View::new(&leases, &known, &NONE, "w1");
    assert_eq!(view.plan(|_| false, false).take.len(), 1);
    // w1 already holds both leases of another stream: four in all, two
    // workers, and w1 has its two.
    let plan = view.plan_with(|_| false, false, &other_streams(2, &[("w1", 2)], false));
    assert!(plan.take.is_empty() && plan.steal.is_none(), "{plan:?}");
    // w2's view of the same: it is owed the free one.
    let view = View::new(&leases, &known, &NONE, "w2");
    let plan = view.plan_with(|_| false, false, &other_streams(2, &[("w1", 2)], false));
    assert_eq!(shards(&plan.take), ["shard-1"]);
}

#[test]
fn a_worker_with_nothing_asks_for_a_lease_on_a_stream_where_it_holds_none_to_balance_the_group() {
    // Three streams of one shard each, all held by w2: w1 asks for one,
    // though on this stream alone one lease each way would be even.
    let leases = group(&[Some("w2")]);
    let known = listed(&leases);
    let view = View::new(&leases, &known, &NONE, "w1");
    assert!(
        view.plan(|_| false, false).steal.is_none(),
        "one stream alone: nothing to even out"
    );
    let plan = view.plan_with(|_| false, false, &other_streams(2, &[("w2", 2)], false));
    assert_eq!(plan.steal.map(|l| l.key.shard_id.as_str()), Some("shard-0"));
    // A request pending on another stream: one at a time, across streams too.
    let plan = view.plan_with(|_| false, false, &other_streams(2, &[("w2", 2)], true));
    assert!(plan.steal.is_none());
}

#[test]
fn a_stream_tally_counts_eligible_leases_and_live_holders() {
    let leases = group(&[Some("w1"), Some("w2"), Some("dead"), None]);
    let known = listed(&leases);
    let tally = View::new(&leases, &known, &NONE, "w1").tally(|l| l.owner.as_deref() == Some("dead"), true);
    assert_eq!(tally.eligible, 4);
    assert_eq!(tally.held, HashMap::from([("w1".to_owned(), 1), ("w2".to_owned(), 1)]));
    assert!(tally.asking);
}
