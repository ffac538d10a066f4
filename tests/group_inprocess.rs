//! Consumers in one process sharing a stream through a memory lease store.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use kcpy::{Consumer, MemoryCheckpointStore};
use support::{as_put, counts, Put, TestStream};

async fn member(stream: &TestStream, store: &MemoryCheckpointStore, worker: &str) -> Consumer {
    Consumer::builder(support::client(), &stream.name)
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
    let stream = TestStream::create("group", 4).await;
    let mut puts = stream.put_many("rec", 400, 97).await;
    let store = MemoryCheckpointStore::new();
    let mut a = member(&stream, &store, "a").await;
    let mut b = member(&stream, &store, "b").await;
    let mut read = Vec::new();
    drive(&mut [&mut a, &mut b], &mut read, |m, read| {
        read.len() >= 400 && owned(m[0]).len() == 2 && owned(m[1]).len() == 2
    })
    .await;
    assert!(owned(&a).is_disjoint(&owned(&b)), "each shard has one owner");
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
