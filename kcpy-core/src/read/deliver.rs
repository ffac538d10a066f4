//! What every reader's records pass through on their way to the consumer:
//! KPL de-aggregation, the KCL-compatible filter of aggregates routed to the
//! wrong shard, and the skip of user records that a mid-aggregate checkpoint
//! already covers. One place, whichever reader fetched them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::mpsc::{self, error::SendError};

use super::kpl::{self, Unpacked};
use super::ShardEvent;
use crate::checkpoint::SubSequence;
use crate::config::Settings;
use crate::kinesis::{HashRange, Records};

/// The most records handed over in one batch. A 1 MiB aggregate can hold
/// 250,000 tiny user records: they reach the consumer in parts, each waiting
/// for room in the shard's bounded channel, so memory stays bounded.
pub(crate) const MAX_BATCH: usize = 10_000;

/// The sending end of a shard's events, for its reader.
#[derive(Debug)]
pub(crate) struct Deliver {
    tx: mpsc::Sender<ShardEvent>,
    deaggregate: bool,
    drop_outside: bool,
    /// The shard's hash key range, when the listing gave it.
    range: Option<HashRange>,
    /// A checkpoint inside an aggregate: its user records up to this one
    /// were processed. Taken by the first records sent.
    skip: Mutex<Option<SubSequence>>,
    malformed: AtomicU64,
    outside: AtomicU64,
}

impl Deliver {
    pub(crate) fn new(
        tx: mpsc::Sender<ShardEvent>,
        settings: &Settings,
        range: Option<HashRange>,
        skip: Option<SubSequence>,
    ) -> Self {
        Self {
            tx,
            deaggregate: settings.deaggregate,
            drop_outside: settings.drop_aggregates_outside_shard,
            range,
            skip: Mutex::new(skip),
            malformed: AtomicU64::new(0),
            outside: AtomicU64::new(0),
        }
    }

    /// Hands `event` to the consumer, waiting while it is behind. Records
    /// are de-aggregated first, and handed over at most [`MAX_BATCH`] at a
    /// time; a batch left empty is not sent.
    pub(crate) async fn send(&self, event: ShardEvent) -> Result<(), SendError<ShardEvent>> {
        let mut records = match event {
            ShardEvent::Records(records) => records,
            end @ ShardEvent::End(_) => return self.tx.send(end).await,
        };
        let mut skip = self.skip.lock().unwrap_or_else(|p| p.into_inner()).take();
        if !self.deaggregate || !records.any_aggregate() {
            let sent = self.forward(records, &mut skip).await;
            self.keep(skip);
            return sent;
        }
        let mut out = Vec::with_capacity(records.len().min(MAX_BATCH));
        let (mut malformed, mut outside) = (0u64, 0u64);
        // Taken a few at a time, so that their aggregates' digests are
        // computed side by side.
        let mut group = Vec::with_capacity(kpl::GROUP);
        loop {
            group.extend(records.by_ref().take(kpl::GROUP));
            if group.is_empty() {
                break;
            }
            let intact = kpl::intact(&group);
            for (record, intact) in group.drain(..).zip(intact) {
                let before = out.len();
                match kpl::unpack(record, intact, self.range, &mut out) {
                    Unpacked::Plain(record) => out.push(record),
                    Unpacked::Malformed(record) => {
                        malformed += 1;
                        out.push(record);
                    }
                    Unpacked::Users { outside: 0, .. } => {}
                    Unpacked::Users { records, outside: some } => {
                        outside += some as u64;
                        if self.drop_outside {
                            if let Some(first) = out.get(before) {
                                tracing::warn!(
                                    sequence_number = %first.sequence_number,
                                    user_records = records,
                                    outside = some,
                                    "dropped an aggregate with user records outside this shard's hash key range"
                                );
                            }
                            out.truncate(before);
                        }
                    }
                }
                if out.len() >= MAX_BATCH {
                    let full = std::mem::replace(&mut out, Vec::with_capacity(MAX_BATCH));
                    self.forward(full.into(), &mut skip).await?;
                }
            }
        }
        if malformed > 0 {
            let total = self.malformed.fetch_add(malformed, Ordering::Relaxed) + malformed;
            tracing::warn!(
                malformed,
                total,
                "records with the KPL magic bytes are not valid aggregates; delivered whole"
            );
        }
        if outside > 0 {
            let total = self.outside.fetch_add(outside, Ordering::Relaxed) + outside;
            tracing::warn!(
                outside,
                total,
                dropped = self.drop_outside,
                "user records of aggregates hash outside this shard's hash key range"
            );
        }
        let sent = self.forward(out.into(), &mut skip).await;
        self.keep(skip);
        sent
    }

    /// Sends `records` without those `skip` covers; `skip` stays while every
    /// record so far was covered by it (an aggregate that spans batches).
    async fn forward(&self, mut records: Records, skip: &mut Option<SubSequence>) -> Result<(), SendError<ShardEvent>> {
        if let Some(covering) = skip.take() {
            let all = records.drop_covered(|r| {
                r.sequence_number == *covering.sequence()
                    && r.sub_sequence_number.is_some_and(|n| n <= covering.number())
            });
            if all {
                *skip = Some(covering);
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        self.tx.send(ShardEvent::Records(records)).await
    }

    /// What is left of the skip applies to the next records sent.
    fn keep(&self, skip: Option<SubSequence>) {
        if skip.is_some() {
            *self.skip.lock().unwrap_or_else(|p| p.into_inner()) = skip;
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{Record, SequenceNumber};

    /// A KPL aggregate whose user records' data are their partition keys.
    fn aggregate(seq: &str, keys: &[&str]) -> Record {
        let users: Vec<(&str, &[u8], Option<&str>)> = keys.iter().map(|k| (*k, k.as_bytes(), None)).collect();
        let data = crate::test_util::kpl_aggregate(&users);
        Record::new("shard", SequenceNumber::parse(seq).expect("valid"), "agg", data)
    }

    fn plain(seq: &str) -> Record {
        Record::new(
            "shard",
            SequenceNumber::parse(seq).expect("valid"),
            "k",
            Bytes::from_static(b"x"),
        )
    }

    fn batch(records: Vec<Record>) -> ShardEvent {
        ShardEvent::Records(records.into())
    }

    fn deliver(
        settings: &Settings,
        range: Option<HashRange>,
        skip: Option<SubSequence>,
    ) -> (Deliver, mpsc::Receiver<ShardEvent>) {
        let (tx, rx) = mpsc::channel(8);
        (Deliver::new(tx, settings, range, skip), rx)
    }

    fn sent(rx: &mut mpsc::Receiver<ShardEvent>) -> Vec<(String, Option<u64>)> {
        match rx.try_recv() {
            Ok(ShardEvent::Records(records)) => records
                .map(|r| (r.partition_key.to_string(), r.sub_sequence_number))
                .collect(),
            other => panic!("expected records, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn aggregates_become_user_records_between_plain_ones() {
        let (tx, mut rx) = deliver(&Settings::default(), None, None);
        tx.send(batch(vec![plain("1"), aggregate("2", &["a", "b"]), plain("3")]))
            .await
            .expect("send");
        assert_eq!(
            sent(&mut rx),
            [
                ("k".into(), None),
                ("a".into(), Some(0)),
                ("b".into(), Some(1)),
                ("k".into(), None)
            ]
        );
    }

    #[tokio::test]
    async fn with_de_aggregation_off_an_aggregate_is_one_record() {
        let settings = Settings {
            deaggregate: false,
            ..Settings::default()
        };
        let (tx, mut rx) = deliver(&settings, None, None);
        tx.send(batch(vec![aggregate("2", &["a", "b"])])).await.expect("send");
        assert_eq!(sent(&mut rx), [("agg".into(), None)]);
    }

    #[tokio::test]
    async fn a_mid_aggregate_checkpoint_skips_exactly_the_user_records_it_covers_once() {
        let seq = SequenceNumber::parse("2").expect("valid");
        let (tx, mut rx) = deliver(&Settings::default(), None, Some(SubSequence::new(seq, 1)));
        tx.send(batch(vec![aggregate("2", &["a", "b", "c", "d"]), plain("3")]))
            .await
            .expect("send");
        assert_eq!(
            sent(&mut rx),
            [("c".into(), Some(2)), ("d".into(), Some(3)), ("k".into(), None)]
        );
        // Only the first batch after the start is the aggregate resumed in.
        tx.send(batch(vec![aggregate("4", &["a", "b"])])).await.expect("send");
        assert_eq!(sent(&mut rx), [("a".into(), Some(0)), ("b".into(), Some(1))]);
    }

    #[tokio::test]
    async fn a_huge_aggregate_reaches_the_consumer_in_bounded_batches_and_a_skip_spans_them() {
        let users: Vec<(&str, &[u8], Option<&str>)> = (0..25_000).map(|_| ("k", &b""[..], None)).collect();
        let huge = Record::new(
            "shard",
            SequenceNumber::parse("2").expect("valid"),
            "agg",
            crate::test_util::kpl_aggregate(&users),
        );
        let skip = SubSequence::new(SequenceNumber::parse("2").expect("valid"), 15_000);
        let (tx, mut rx) = mpsc::channel(8);
        let deliver = Deliver::new(tx, &Settings::default(), None, Some(skip));
        let sending = tokio::spawn(async move { deliver.send(batch(vec![huge, plain("3")])).await });
        let mut batches = Vec::new();
        while let Some(ShardEvent::Records(records)) = rx.recv().await {
            batches.push(records);
        }
        sending.await.expect("joined").expect("sent");
        assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= MAX_BATCH));
        let numbers: Vec<Option<u64>> = batches.into_iter().flatten().map(|r| r.sub_sequence_number).collect();
        assert_eq!(
            numbers.len(),
            25_000 - 15_001 + 1,
            "users 15,001 to 24,999 and the plain record"
        );
        assert_eq!(
            numbers[0],
            Some(15_001),
            "nothing the checkpoint covers, nothing after it skipped"
        );
        assert_eq!(numbers[numbers.len() - 2], Some(24_999));
        assert_eq!(numbers[numbers.len() - 1], None);
    }

    #[tokio::test]
    async fn a_batch_left_empty_is_not_sent() {
        let seq = SequenceNumber::parse("2").expect("valid");
        let (tx, mut rx) = deliver(&Settings::default(), None, Some(SubSequence::new(seq, 0)));
        tx.send(batch(vec![aggregate("2", &["a"])])).await.expect("send");
        assert!(rx.try_recv().is_err(), "nothing left to deliver");
    }

    #[tokio::test]
    async fn aggregates_outside_the_shard_are_delivered_flagged_unless_the_kcl_filter_drops_them_whole() {
        let inside = kpl::partition_key_hash("in");
        let range = Some(HashRange {
            start: inside,
            end: inside,
        });
        let (tx, mut rx) = deliver(&Settings::default(), range, None);
        tx.send(batch(vec![aggregate("2", &["in", "out"])]))
            .await
            .expect("send");
        let Ok(ShardEvent::Records(records)) = rx.try_recv() else {
            panic!("records")
        };
        let outside = kpl::outside_flags(&records.collect::<Vec<_>>());
        assert_eq!(outside, [false, true]);

        let settings = Settings {
            drop_aggregates_outside_shard: true,
            ..Settings::default()
        };
        let (tx, mut rx) = deliver(&settings, range, None);
        tx.send(batch(vec![
            aggregate("2", &["in", "out"]),
            aggregate("3", &["in"]),
            plain("4"),
        ]))
        .await
        .expect("send");
        assert_eq!(sent(&mut rx), [("in".into(), Some(0)), ("k".into(), None)]);
        assert_eq!(tx.outside.load(Ordering::Relaxed), 1);
    }
}
