//! Consumers in one process sharing a stream through a memory lease store.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use kcpy::{Consumer, ConsumerEvent, MemoryCheckpointStore, ShardState};
use support::{as_put, counts, Put, TestStream};

async fn member(stream: &TestStream, store: &MemoryCheckpointStore, worker: &str) -> Consumer {
    member_reading(stream, store, worker, None).await
}

/// A member, reading with enhanced fan-out through `fan_out` if given.
async fn member_reading(
    stream: &TestStream,
    store: &MemoryCheckpointStore,
    worker: &str,
    fan_out: Option<&str>,
) -> Consumer {
    let builder = Consumer::builder(support::client(), &stream.name);
    let builder = match fan_out {
        Some(name) => builder.fan_out(kcpy::FanOut::register(name)),
        None => builder,
    };
    builder
        .consumer_name("group")
        .lease_store(store.clone())
        .worker_id(worker)
        .lease_duration(Duration::from_secs(2))
        .lease_renew_interval(Duration::from_millis(300))
        .idle_interval(Duration::from_millis(100))
        .build()
        .await
        .expect("build")
}

fn distinct(read: &[(usize, Put)]) -> usize {
    read.iter().map(|(_, put)| put).collect::<HashSet<_>>().len()
}

fn owned(consumer: &Consumer) -> HashSet<String> {
    consumer.shard_ids().map(str::to_owned).collect()
}

/// Reads from every member until `done` holds, checking it after each record
/// and every 50 ms (leases move between records).
/// `read` gets each record with the index of the member that delivered it.
async fn drive(
    members: &mut [&mut Consumer],
    read: &mut Vec<(usize, Put)>,
    mut done: impl FnMut(&[&mut Consumer], &[(usize, Put)]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while !done(members, read) {
        let next = futures::future::select_all(members.iter_mut().map(|m| m.next()));
        tokio::select! {
            (record, member, _) = next => read.push((member, as_put(&record.expect("a member ended")))),
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(deadline) => panic!("timed out after {} records", read.len()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_split_the_shards_hand_them_over_without_replay_and_take_over_on_close() {
    split_hand_over_and_take_over(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_reading_with_fan_out_split_the_shards_hand_them_over_without_replay_and_take_over_on_close() {
    split_hand_over_and_take_over(Some("group-efo")).await;
}

async fn split_hand_over_and_take_over(fan_out: Option<&str>) {
    let stream = TestStream::create("group", 4).await;
    let mut puts = stream.put_many("rec", 400, 97).await;
    let store = MemoryCheckpointStore::new();
    let mut a = member_reading(&stream, &store, "a", fan_out).await;
    let mut b = member_reading(&stream, &store, "b", fan_out).await;
    let (mut a_events, mut b_events) = (a.events(), b.events());
    let mut read = Vec::new();
    drive(&mut [&mut a, &mut b], &mut read, |m, read| {
        read.len() >= 400 && owned(m[0]).len() == 2 && owned(m[1]).len() == 2
    })
    .await;
    assert!(owned(&a).is_disjoint(&owned(&b)), "each shard has one owner");
    // What each member did, as its events tell and its lag snapshot shows.
    let mut handed = Vec::new();
    let mut requested = Vec::new();
    for (member, events, theirs) in [(&a, &mut a_events, &b), (&b, &mut b_events, &a)] {
        let mut now = HashSet::new();
        while let Ok(event) = events.try_recv() {
            match &event {
                ConsumerEvent::LeaseHandedOver { shard_id, to, .. } => handed.push((shard_id.clone(), to.clone())),
                ConsumerEvent::LeaseRequested { shard_id, .. } => requested.push(shard_id.clone()),
                _ => {}
            }
            match event {
                ConsumerEvent::LeaseAcquired { shard_id, .. } => {
                    now.insert(shard_id);
                }
                ConsumerEvent::LeaseHandedOver { shard_id, .. } | ConsumerEvent::LeaseLost { shard_id, .. } => {
                    now.remove(&shard_id);
                }
                _ => {}
            }
        }
        assert_eq!(
            now,
            owned(member),
            "what it acquired and did not give up (or lose) is what it holds"
        );
        for shard in member.lag() {
            let expected = if owned(member).contains(&shard.shard_id) {
                ShardState::Reading
            } else {
                assert!(owned(theirs).contains(&shard.shard_id));
                ShardState::LeasedElsewhere
            };
            assert_eq!(shard.state, expected, "{}", shard.shard_id);
        }
    }
    // Every handover answered a request the other member made (the group
    // rebalanced), and only those.
    for (shard, to) in &handed {
        assert!(
            requested.contains(shard),
            "{shard} handed to {to} unasked: {requested:?}"
        );
    }
    puts.extend(stream.put_many("mid", 200, 97).await);
    drive(&mut [&mut a, &mut b], &mut read, |_, read| distinct(read) >= puts.len()).await;

    // close() does not count the record returned last as processed.
    let b_last = read
        .iter()
        .rev()
        .find(|(member, _)| *member == 1)
        .map(|(_, put)| put.clone());
    b.close().await.expect("close");
    puts.extend(stream.put_many("more", 200, 97).await);
    drive(&mut [&mut a], &mut read, |m, read| {
        distinct(read) >= puts.len() && owned(m[0]).len() == 4
    })
    .await;
    let read: Vec<Put> = read.into_iter().map(|(_, put)| put).collect();
    let seen = counts(&read);
    for put in &puts {
        let times = if Some(put) == b_last.as_ref() { 1..=2 } else { 1..=1 };
        assert!(
            seen.get(put).is_some_and(|n| times.contains(n)),
            "{put:?} was delivered {:?} times; handoffs replay nothing",
            seen.get(put)
        );
    }
    a.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_lease_is_taken_over_stops_the_shard_and_never_writes_its_checkpoint_again() {
    use kcpy::{CheckpointKey, CheckpointStore, LeaseStore};

    let stream = TestStream::create("group-fenced", 1).await;
    let puts = stream.put_many("rec", 300, 7).await;
    let store = MemoryCheckpointStore::new();
    let mut a = Consumer::builder(support::client(), &stream.name)
        .consumer_name("group")
        .lease_store(store.clone())
        .worker_id("a")
        .lease_duration(Duration::from_secs(2))
        .lease_renew_interval(Duration::from_millis(300))
        .idle_interval(Duration::from_millis(100))
        .checkpoint_every(10)
        .max_records_per_call(50)
        .build()
        .await
        .expect("build");
    let shard = puts[0].shard_id.clone();
    let key = CheckpointKey::new("group", &stream.name, &shard);
    let mut read = Vec::new();
    drive(&mut [&mut a], &mut read, |_, read| read.len() >= 100).await;
    // Another worker takes the lease over (as after A was paused past it).
    let lease = store
        .list_leases("group", &stream.name)
        .await
        .expect("list")
        .into_iter()
        .next()
        .expect("a lease");
    assert!(lease.is_owned_by("a"), "{lease:?}");
    let taken = store.take_lease(&lease, "intruder").await.expect("take over");
    let at_takeover = store.load(&key).await.expect("load");

    // A notices on its next renewal and stops the shard; what it had fetched
    // is dropped.
    drive(&mut [&mut a], &mut read, |m, _| owned(m[0]).is_empty()).await;
    let delivered_by_a = read.len();
    stream.put_many("after", 50, 7).await;
    let more = tokio::time::timeout(Duration::from_secs(1), a.next()).await;
    assert!(more.is_err(), "a stopped shard delivers nothing more: {more:?}");
    assert!(delivered_by_a < puts.len(), "A was stopped before it read everything");

    a.close().await.expect("close");
    assert_eq!(
        store.load(&key).await.expect("load"),
        at_takeover,
        "A's later saves were fenced out"
    );
    let now = store.list_leases("group", &stream.name).await.expect("list");
    assert_eq!(now[0].owner.as_deref(), Some("intruder"));
    assert_eq!(now[0].epoch, taken.epoch, "A neither took it back nor released it");
}

/// A store that can be cut off: every call fails as unavailable while `down`.
#[derive(Debug, Clone)]
struct Severable {
    inner: MemoryCheckpointStore,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Severable {
    fn check(&self) -> Result<(), kcpy::CheckpointError> {
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(kcpy::CheckpointError::backend(std::fmt::Error, true));
        }
        Ok(())
    }
}

#[kcpy::async_trait]
impl kcpy::CheckpointStore for Severable {
    async fn load(&self, key: &kcpy::CheckpointKey) -> Result<Option<kcpy::Checkpoint>, kcpy::CheckpointError> {
        self.check()?;
        self.inner.load(key).await
    }
    async fn save(
        &self,
        key: &kcpy::CheckpointKey,
        checkpoint: &kcpy::Checkpoint,
    ) -> Result<(), kcpy::CheckpointError> {
        self.check()?;
        self.inner.save(key, checkpoint).await
    }
}

#[kcpy::async_trait]
impl kcpy::LeaseStore for Severable {
    async fn list_leases(&self, consumer: &str, stream: &str) -> Result<Vec<kcpy::Lease>, kcpy::CheckpointError> {
        self.check()?;
        self.inner.list_leases(consumer, stream).await
    }
    async fn create_lease(&self, key: &kcpy::CheckpointKey, parents: &[String]) -> Result<bool, kcpy::CheckpointError> {
        self.check()?;
        self.inner.create_lease(key, parents).await
    }
    async fn take_lease(&self, observed: &kcpy::Lease, owner: &str) -> Result<kcpy::Lease, kcpy::CheckpointError> {
        self.check()?;
        self.inner.take_lease(observed, owner).await
    }
    async fn renew_lease(&self, held: &kcpy::Lease) -> Result<kcpy::Lease, kcpy::CheckpointError> {
        self.check()?;
        self.inner.renew_lease(held).await
    }
    async fn request_handoff(&self, observed: &kcpy::Lease, to: &str) -> Result<(), kcpy::CheckpointError> {
        self.check()?;
        self.inner.request_handoff(observed, to).await
    }
    async fn release_lease(&self, held: &kcpy::Lease, to: Option<&str>) -> Result<(), kcpy::CheckpointError> {
        self.check()?;
        self.inner.release_lease(held, to).await
    }
    async fn save_leased(
        &self,
        held: &kcpy::Lease,
        checkpoint: &kcpy::Checkpoint,
    ) -> Result<(), kcpy::CheckpointError> {
        self.check()?;
        self.inner.save_leased(held, checkpoint).await
    }
    async fn delete_lease(&self, observed: &kcpy::Lease) -> Result<(), kcpy::CheckpointError> {
        self.check()?;
        self.inner.delete_lease(observed).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_from_the_store_stops_its_shards_within_the_lease_and_others_take_over() {
    let stream = TestStream::create("group-cut", 4).await;
    let mut puts = stream.put_many("rec", 200, 97).await;
    let store = MemoryCheckpointStore::new();
    let cut = Severable {
        inner: store.clone(),
        down: Default::default(),
    };
    let lease = Duration::from_secs(2);
    let renew = Duration::from_millis(300);
    let mut a = Consumer::builder(support::client(), &stream.name)
        .consumer_name("group")
        .lease_store(cut.clone())
        .worker_id("a")
        .lease_duration(lease)
        .lease_renew_interval(renew)
        .idle_interval(Duration::from_millis(100))
        // No save falls due while it is cut off, so the outage alone is tested.
        .checkpoint_interval(Duration::from_secs(600))
        .build()
        .await
        .expect("build");
    let mut b = member(&stream, &store, "b").await;
    let mut read = Vec::new();
    drive(&mut [&mut a, &mut b], &mut read, |m, read| {
        distinct(read) >= 200 && owned(m[0]).len() == 2 && owned(m[1]).len() == 2
    })
    .await;

    cut.down.store(true, std::sync::atomic::Ordering::Relaxed);
    let severed = tokio::time::Instant::now();
    drive(&mut [&mut a, &mut b], &mut read, |m, _| owned(m[0]).is_empty()).await;
    let stopped = severed.elapsed();
    assert!(
        stopped <= lease + renew + Duration::from_millis(500),
        "a cut-off member stopped its shards after {stopped:?} (lease {lease:?})"
    );
    drive(&mut [&mut a, &mut b], &mut read, |m, _| owned(m[1]).len() == 4).await;
    puts.extend(stream.put_many("during", 100, 97).await);
    drive(&mut [&mut a, &mut b], &mut read, |_, read| distinct(read) >= puts.len()).await;

    // Back online, it rejoins and gets its share again; nothing was lost.
    cut.down.store(false, std::sync::atomic::Ordering::Relaxed);
    drive(&mut [&mut a, &mut b], &mut read, |m, _| {
        owned(m[0]).len() == 2 && owned(m[1]).len() == 2
    })
    .await;
    puts.extend(stream.put_many("after", 100, 97).await);
    drive(&mut [&mut a, &mut b], &mut read, |_, read| distinct(read) >= puts.len()).await;
    a.close().await.expect("close a");
    b.close().await.expect("close b");
}

/// The heartbeats and epochs of the group's leases, summed.
fn beats_and_epochs(store: &MemoryCheckpointStore, stream: &TestStream) -> (u64, u64) {
    let leases = futures::FutureExt::now_or_never(kcpy::LeaseStore::list_leases(store, "group", &stream.name))
        .expect("the memory store answers at once")
        .expect("list");
    leases
        .iter()
        .fold((0, 0), |(beats, epochs), l| (beats + l.heartbeat, epochs + l.epoch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_the_same_worker_id_adopts_no_live_lease_and_takes_them_once_they_expire() {
    let stream = TestStream::create("group-twin", 2).await;
    let mut puts = stream.put_many("rec", 60, 13).await;
    let store = MemoryCheckpointStore::new();
    let mut a = member(&stream, &store, "same").await;
    let mut read = Vec::new();
    drive(&mut [&mut a], &mut read, |m, _| owned(m[0]).len() == 2).await;

    let mut twin = member(&stream, &store, "same").await;
    let (beats, epochs) = beats_and_epochs(&store, &stream);
    // Five renewal rounds of `a` (each raises both heartbeats), with the
    // twin balancing all the while.
    drive(&mut [&mut a, &mut twin], &mut read, |_, _| {
        beats_and_epochs(&store, &stream).0 >= beats + 10
    })
    .await;
    assert!(
        owned(&twin).is_empty(),
        "the twin adopted live leases: {:?}",
        owned(&twin)
    );
    assert_eq!(beats_and_epochs(&store, &stream).1, epochs, "no lease changed hands");
    assert!(read.iter().all(|(member, _)| *member == 0), "only `a` delivered");

    // `a` dies without releasing: once its leases expire, the twin takes them.
    drop(a);
    puts.extend(stream.put_many("after", 40, 7).await);
    let mut read_by_twin = Vec::new();
    drive(&mut [&mut twin], &mut read_by_twin, |_, r| {
        distinct(r) + distinct(&read) >= puts.len() && puts.iter().all(|p| r.iter().chain(&read).any(|(_, q)| q == p))
    })
    .await;
    assert_eq!(owned(&twin).len(), 2);
    twin.close().await.expect("close");
    stream.delete().await;
}

/// A frozen process (GC pause, SIGSTOP, VM freeze) wakes up in the middle of
/// a batch. The freeze is the fault here: the test thread blocks, and with
/// it every task of this single-threaded runtime, the lease watchdog too.
#[tokio::test]
async fn a_process_frozen_past_its_lease_mid_batch_hands_out_no_further_record_of_it() {
    let stream = TestStream::create("group-frozen", 1).await;
    stream.put_many("rec", 50, 7).await;
    let store = MemoryCheckpointStore::new();
    let mut a = member(&stream, &store, "a").await;
    a.next().await.expect("a record");
    std::thread::sleep(Duration::from_millis(2500));
    let after_waking = futures::FutureExt::now_or_never(a.next());
    assert!(
        !matches!(after_waking, Some(Some(_))),
        "a record was handed out after the lease had run out unrenewed"
    );
    stream.delete().await;
}
