//! KPL aggregates through the consumer: user records one by one, checkpoints
//! inside an aggregate, and the resume at one.

use super::*;
use crate::SubSequence;

fn data(record: &Record) -> String {
    String::from_utf8(record.data.to_vec()).expect("utf-8")
}

fn inside(n: u64, number: u64) -> Checkpoint {
    Checkpoint::SubSequence(SubSequence::new(seq(n), number))
}

#[tokio::test(start_paused = true)]
async fn in_auto_mode_a_checkpoint_after_a_user_record_keeps_the_place_inside_the_aggregate() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Records(vec![1]), Step::Aggregate(5, 4)])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .build()
        .await
        .expect("build");
    let read: Vec<String> = [
        consumer.next().await.expect("1"),
        consumer.next().await.expect("user 0"),
        consumer.next().await.expect("user 1"),
        consumer.next().await.expect("user 2"),
    ]
    .iter()
    .map(data)
    .collect();
    assert_eq!(read, ["data-1", "user-0", "user-1", "user-2"]);
    // User record 2 is in the caller's hands: 1 is the last processed.
    consumer.close().await.expect("close");
    assert_eq!(store.get("shard-0"), Some(inside(5, 1)));
}

#[tokio::test(start_paused = true)]
async fn a_restart_inside_an_aggregate_starts_at_it_and_skips_the_processed_user_records() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Aggregate(5, 4), Step::Records(vec![6])])]);
    let store = Arc::new(TestStore::default());
    store.saved.lock().expect("lock").insert("shard-0".into(), inside(5, 1));
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .build()
        .await
        .expect("build");
    let mut read = Vec::new();
    for _ in 0..3 {
        read.push(consumer.next().await.expect("record"));
    }
    assert_eq!(
        read.iter().map(data).collect::<Vec<_>>(),
        ["user-2", "user-3", "data-6"]
    );
    assert_eq!(read[0].sub_sequence_number, Some(2));
    assert_eq!(
        api.calls.lock().expect("lock")[0],
        Call::Iterator("shard-0".into(), IteratorPosition::AtSequence(seq(5)))
    );
    // Past the aggregate's last user record, the whole record is the checkpoint.
    consumer.close().await.expect("close");
    assert_eq!(store.get("shard-0"), Some(Checkpoint::Sequence(seq(5))));
}

#[tokio::test(start_paused = true)]
async fn manual_acks_of_user_records_move_the_watermark_inside_the_aggregate() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Aggregate(5, 4)])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .checkpoint_mode(CheckpointMode::Manual)
        .build()
        .await
        .expect("build");
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(consumer.next().await.expect("user record"));
    }
    let checkpointer = consumer.checkpointer();
    checkpointer.checkpoint(&users[1]).expect("ack");
    checkpointer.checkpoint(&users[0]).expect("ack");
    checkpointer.checkpoint(&users[3]).expect("ack");
    checkpointer.flush().await.expect("flush");
    assert_eq!(
        store.get("shard-0"),
        Some(inside(5, 1)),
        "the contiguous run: users 0 and 1"
    );
    checkpointer.checkpoint(&users[2]).expect("ack");
    checkpointer.flush().await.expect("flush");
    assert_eq!(
        store.get("shard-0"),
        Some(Checkpoint::Sequence(seq(5))),
        "all four: the whole record"
    );
    consumer.close().await.expect("close");
}

#[tokio::test(start_paused = true)]
async fn with_de_aggregation_off_an_aggregate_is_one_record_checkpointed_whole() {
    let api = FakeKinesis::new(vec![("shard-0", vec![Step::Aggregate(5, 4), Step::Records(vec![6])])]);
    let store = Arc::new(TestStore::default());
    let mut consumer = builder(&api)
        .checkpoint_store(Arc::clone(&store))
        .deaggregate(false)
        .build()
        .await
        .expect("build");
    let aggregate = consumer.next().await.expect("the aggregate");
    assert_eq!(aggregate.sub_sequence_number, None);
    assert!(aggregate.data.starts_with(&[0xF3, 0x89, 0x9A, 0xC2]));
    let next = consumer.next().await.expect("6");
    assert_eq!(next.sequence_number, seq(6));
    consumer.close().await.expect("close");
    assert_eq!(store.get("shard-0"), Some(Checkpoint::Sequence(seq(5))));
}
