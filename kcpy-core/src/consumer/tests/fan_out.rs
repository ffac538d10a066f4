//! Enhanced fan-out through a scripted SubscribeToShard: what the emulator
//! never does (5-minute ends, takeovers, resets, stalls, ChildShards), with
//! the consumer's lineage and checkpoints around it.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::kinesis::{ConsumerLookup, FanOutApi, StreamConsumer, Subscription, SubscriptionEvent};
use crate::FanOut;

/// One step of a scripted subscription.
enum Ev {
    /// Records, the continuation (`None`: absent) and children.
    Event(Vec<u64>, Option<u64>, &'static [&'static str]),
    Fail(fn() -> ApiError),
    /// Kinesis ends the subscription (as after 5 minutes).
    Close,
    /// One record per event, for ever.
    Endless,
}

/// What one SubscribeToShard call answers.
enum Sub {
    Events(Vec<Ev>),
    Refuse(fn() -> ApiError),
}

#[derive(Default)]
struct FakeFanOut {
    subscriptions: Mutex<HashMap<String, VecDeque<Sub>>>,
    /// Per call: shard, position, when.
    calls: Mutex<Vec<(String, IteratorPosition, Instant)>>,
    /// Events handed to the consumer's reader so far.
    produced: Arc<AtomicUsize>,
}

impl FakeFanOut {
    fn new(scripts: Vec<(&str, Vec<Sub>)>) -> Arc<Self> {
        Arc::new(Self {
            subscriptions: Mutex::new(
                scripts
                    .into_iter()
                    .map(|(shard, subs)| (shard.to_owned(), subs.into()))
                    .collect(),
            ),
            ..Self::default()
        })
    }

    fn calls(&self, shard: &str) -> Vec<(IteratorPosition, Instant)> {
        self.calls
            .lock()
            .expect("lock")
            .iter()
            .filter(|(s, _, _)| s == shard)
            .map(|(_, position, at)| (position.clone(), *at))
            .collect()
    }
}

fn consumer_description() -> StreamConsumer {
    StreamConsumer {
        name: "efo".into(),
        arn: "arn:aws:kinesis:us-east-1:1:stream/test-stream/consumer/efo:1".into(),
        stream_arn: "arn:aws:kinesis:us-east-1:1:stream/test-stream".into(),
        active: true,
    }
}

fn in_use() -> ApiError {
    ApiError::Throttled(Arc::new(std::io::Error::other("ResourceInUseException")))
}

fn reset() -> ApiError {
    ApiError::Transient(Arc::new(std::io::Error::other("connection reset")))
}

fn not_found() -> ApiError {
    ApiError::Fatal(Error::StreamNotFound {
        stream: "test-stream".into(),
        source: Arc::new(std::io::Error::other("ResourceNotFoundException")),
    })
}

#[async_trait]
impl FanOutApi for FakeFanOut {
    async fn stream_arn(&self, _: &StreamRef) -> Result<String, ApiError> {
        Ok(consumer_description().stream_arn)
    }

    async fn describe_consumer(&self, _: ConsumerLookup<'_>) -> Result<StreamConsumer, ApiError> {
        Ok(consumer_description())
    }

    async fn register_consumer(&self, _: &str, _: &str) -> Result<StreamConsumer, ApiError> {
        Ok(consumer_description())
    }

    async fn deregister_consumer(&self, _: &str) -> Result<(), ApiError> {
        Ok(())
    }

    async fn subscribe(
        &self,
        _: &StreamRef,
        _: &str,
        shard_id: &Arc<str>,
        position: &IteratorPosition,
    ) -> Result<Box<dyn Subscription>, ApiError> {
        self.calls
            .lock()
            .expect("lock")
            .push((shard_id.to_string(), position.clone(), Instant::now()));
        let next = self
            .subscriptions
            .lock()
            .expect("lock")
            .get_mut(&**shard_id)
            .and_then(VecDeque::pop_front);
        match next {
            Some(Sub::Refuse(make)) => Err(make()),
            Some(Sub::Events(steps)) => Ok(Box::new(Scripted {
                steps: steps.into(),
                shard_id: Arc::clone(shard_id),
                produced: Arc::clone(&self.produced),
                endless: 1000,
            })),
            // Nothing scripted: a subscription that stays silent.
            None => Ok(Box::new(Scripted {
                steps: VecDeque::new(),
                shard_id: Arc::clone(shard_id),
                produced: Arc::clone(&self.produced),
                endless: 0,
            })),
        }
    }
}

struct Scripted {
    steps: VecDeque<Ev>,
    shard_id: Arc<str>,
    produced: Arc<AtomicUsize>,
    /// The next sequence number of an endless script.
    endless: u64,
}

#[async_trait]
impl Subscription for Scripted {
    async fn next_event(&mut self) -> Result<Option<SubscriptionEvent>, ApiError> {
        let event =
            |records: Vec<u64>, continuation: Option<u64>, children: &[&str], shard: &Arc<str>| SubscriptionEvent {
                records: records.iter().map(|&n| record(shard, n)).collect(),
                continuation: continuation.map(seq),
                child_shards: children
                    .iter()
                    .map(|child| ShardInfo {
                        shard_id: (*child).to_owned(),
                        parent_shard_id: Some(shard.to_string()),
                        adjacent_parent_shard_id: None,
                        ending_sequence_number: None,
                        hash_range: None,
                    })
                    .collect(),
                millis_behind_latest: Some(0),
            };
        let step = match self.steps.front() {
            Some(Ev::Endless) => {
                self.endless += 1;
                self.produced.fetch_add(1, Ordering::SeqCst);
                return Ok(Some(event(vec![self.endless], Some(self.endless), &[], &self.shard_id)));
            }
            Some(_) => self.steps.pop_front().expect("a step"),
            None => return futures::future::pending().await,
        };
        match step {
            Ev::Event(records, continuation, children) => {
                self.produced.fetch_add(1, Ordering::SeqCst);
                Ok(Some(event(records, continuation, children, &self.shard_id)))
            }
            Ev::Fail(make) => Err(make()),
            Ev::Close => Ok(None),
            Ev::Endless => unreachable!("handled above"),
        }
    }
}

async fn fan_out_consumer(
    api: &Arc<FakeKinesis>,
    fan_out: &Arc<FakeFanOut>,
    store: Option<&Arc<TestStore>>,
) -> Consumer {
    let mut builder = builder(api)
        .with_fan_out_api(Arc::clone(fan_out) as _)
        .fan_out(FanOut::register("efo"));
    if let Some(store) = store {
        builder = builder.checkpoint_store(Arc::clone(store));
    }
    builder.build().await.expect("build")
}

fn open(shards: &[&str]) -> Arc<FakeKinesis> {
    FakeKinesis::new(shards.iter().map(|s| (*s, Vec::new())).collect())
}

#[tokio::test(start_paused = true)]
async fn a_subscription_that_ends_is_renewed_right_after_the_last_record_a_second_later_at_most() {
    let api = open(&["A"]);
    let fan_out = FakeFanOut::new(vec![(
        "A",
        vec![
            Sub::Events(vec![Ev::Event(vec![1, 2], Some(2), &[]), Ev::Close]),
            Sub::Events(vec![Ev::Event(vec![3], Some(3), &[])]),
        ],
    )]);
    let mut consumer = fan_out_consumer(&api, &fan_out, None).await;
    assert_eq!(take(&mut consumer, 3).await, vec![1, 2, 3]);
    let calls = fan_out.calls("A");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].0, IteratorPosition::TrimHorizon);
    assert_eq!(calls[1].0, IteratorPosition::AfterSequence(seq(2)), "no gap, no repeat");
    assert!(
        calls[1].1 - calls[0].1 >= Duration::from_secs(1),
        "one subscription a second"
    );
}

#[tokio::test(start_paused = true)]
async fn a_subscription_still_held_elsewhere_is_retried_with_backoff_until_it_is_free() {
    let api = open(&["A"]);
    let fan_out = FakeFanOut::new(vec![(
        "A",
        vec![
            Sub::Refuse(in_use),
            Sub::Refuse(in_use),
            Sub::Refuse(in_use),
            Sub::Events(vec![Ev::Event(vec![1], Some(1), &[])]),
        ],
    )]);
    let mut consumer = fan_out_consumer(&api, &fan_out, None).await;
    assert_eq!(take(&mut consumer, 1).await, vec![1]);
    let calls = fan_out.calls("A");
    assert_eq!(calls.len(), 4);
    assert!(calls
        .iter()
        .all(|(position, _)| *position == IteratorPosition::TrimHorizon));
    assert!(calls.windows(2).all(|w| w[1].1 - w[0].1 >= Duration::from_secs(1)));
    assert!(consumer.error().is_none());
}

#[tokio::test(start_paused = true)]
async fn errors_and_resets_mid_stream_resubscribe_after_the_last_record_without_loss() {
    let api = open(&["A"]);
    let fan_out = FakeFanOut::new(vec![(
        "A",
        vec![
            Sub::Events(vec![Ev::Event(vec![1], Some(1), &[]), Ev::Fail(reset)]),
            Sub::Events(vec![Ev::Event(vec![2, 3], Some(3), &[]), Ev::Fail(in_use)]),
            Sub::Events(vec![Ev::Event(vec![4], Some(4), &[])]),
        ],
    )]);
    let mut consumer = fan_out_consumer(&api, &fan_out, None).await;
    assert_eq!(take(&mut consumer, 4).await, vec![1, 2, 3, 4]);
    let positions: Vec<_> = fan_out.calls("A").into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        positions,
        vec![
            IteratorPosition::TrimHorizon,
            IteratorPosition::AfterSequence(seq(1)),
            IteratorPosition::AfterSequence(seq(3)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_subscription_is_replaced_after_the_stall_timeout() {
    let api = open(&["A"]);
    // The first subscription sends one event, then nothing at all.
    let fan_out = FakeFanOut::new(vec![(
        "A",
        vec![
            Sub::Events(vec![Ev::Event(vec![1], Some(1), &[])]),
            Sub::Events(vec![Ev::Event(vec![2], Some(2), &[])]),
        ],
    )]);
    let mut consumer = fan_out_consumer(&api, &fan_out, None).await;
    assert_eq!(take(&mut consumer, 2).await, vec![1, 2]);
    let calls = fan_out.calls("A");
    assert_eq!(calls[1].0, IteratorPosition::AfterSequence(seq(1)));
    let gap = calls[1].1 - calls[0].1;
    assert!(
        gap >= Duration::from_secs(35) && gap < Duration::from_secs(40),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn child_shards_in_the_last_event_end_the_shard_and_its_children_start_after_its_end_is_saved() {
    let api = FakeKinesis::with_lineage(vec![("A", &[], true, Vec::new()), ("B", &["A"], false, Vec::new())]);
    let fan_out = FakeFanOut::new(vec![
        (
            "A",
            vec![Sub::Events(vec![
                Ev::Event(vec![1], Some(1), &[]),
                Ev::Event(vec![2], None, &["B"]),
            ])],
        ),
        ("B", vec![Sub::Events(vec![Ev::Event(vec![3], Some(3), &[])])]),
    ]);
    let store = Arc::new(TestStore::default());
    let mut consumer = fan_out_consumer(&api, &fan_out, Some(&store)).await;
    assert_eq!(take(&mut consumer, 3).await, vec![1, 2, 3]);
    assert_eq!(store.get("A"), Some(Checkpoint::ShardEnd));
    assert_eq!(fan_out.calls("A").len(), 1, "a shard end is not resubscribed");
    assert_eq!(fan_out.calls("B")[0].0, IteratorPosition::TrimHorizon);
}

#[tokio::test(start_paused = true)]
async fn an_event_without_a_continuation_or_children_is_no_shard_end() {
    let api = open(&["A"]);
    let fan_out = FakeFanOut::new(vec![(
        "A",
        vec![
            Sub::Events(vec![Ev::Event(vec![1], None, &[])]),
            Sub::Events(vec![Ev::Event(vec![2], Some(2), &[])]),
        ],
    )]);
    let store = Arc::new(TestStore::default());
    let mut consumer = fan_out_consumer(&api, &fan_out, Some(&store)).await;
    assert_eq!(take(&mut consumer, 2).await, vec![1, 2]);
    assert_eq!(fan_out.calls("A")[1].0, IteratorPosition::AfterSequence(seq(1)));
    consumer.shutdown_handle().shutdown();
    assert!(consumer.next().await.is_none());
    assert_eq!(store.get("A"), Some(Checkpoint::Sequence(seq(2))), "not ended");
}

#[tokio::test(start_paused = true)]
async fn a_slow_caller_holds_back_the_subscription_instead_of_buffering_it() {
    let api = open(&["A"]);
    let fan_out = FakeFanOut::new(vec![("A", vec![Sub::Events(vec![Ev::Endless])])]);
    let mut consumer = builder(&api)
        .with_fan_out_api(Arc::clone(&fan_out) as _)
        .fan_out(FanOut::register("efo"))
        .prefetch_batches(2)
        .build()
        .await
        .expect("build");
    assert_eq!(take(&mut consumer, 1).await, vec![1001]);
    // The caller is busy for ten minutes; the subscription waits for it.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let produced = fan_out.produced.load(Ordering::SeqCst);
    assert!(produced <= 4, "{produced} events pulled for a caller that took one");
    assert_eq!(
        take(&mut consumer, 3).await,
        vec![1002, 1003, 1004],
        "and nothing was lost"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fan_out_consumer_deleted_while_its_shard_is_open_ends_the_stream_with_consumer_not_found() {
    let api = open(&["A"]);
    let fan_out = FakeFanOut::new(vec![("A", vec![Sub::Refuse(not_found)])]);
    let mut consumer = fan_out_consumer(&api, &fan_out, None).await;
    assert!(drain(&mut consumer).await.is_empty());
    assert!(
        matches!(consumer.error(), Some(Error::ConsumerNotFound { .. })),
        "{:?}",
        consumer.error()
    );
}
