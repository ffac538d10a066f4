//! `lanes ENDPOINT LANES SECONDS`: one shard's backlog (from `serve-canned`)
//! handled by `for_each_by_key` with a handler that awaits 5 ms per record,
//! for about SECONDS; records per second against the ideal of
//! `lanes × 1000 / handler ms`.
//!
//! The handler awaits a stand-in service that answers each call 5 ms after
//! it was made, timed by a thread of its own: `tokio::time::sleep` counts in
//! whole milliseconds and rounds up, so a 5 ms sleep takes about 6.2 ms, and
//! the figure would measure tokio's timer, not the lanes.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use kcpy::{CheckpointMode, Consumer, MemoryCheckpointStore};
use serde_json::json;

use crate::{client, Result};

/// What one handler call stands in for: a call to another service.
const WORK: Duration = Duration::from_millis(5);

/// A call to the service: when to answer, and where.
struct Due(Instant, oneshot::Sender<()>);

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// Starts the service; it stops when the sender is dropped.
fn service() -> mpsc::Sender<Due> {
    let (calls, incoming) = mpsc::channel::<Due>();
    std::thread::spawn(move || {
        let mut waiting = BinaryHeap::new();
        loop {
            let now = Instant::now();
            while waiting.peek().is_some_and(|Reverse(Due(at, _))| *at <= now) {
                if let Some(Reverse(Due(_, answer))) = waiting.pop() {
                    // The caller gave up: nothing to answer.
                    let _ = answer.send(());
                }
            }
            let next = match waiting.peek() {
                Some(Reverse(Due(at, _))) => incoming.recv_timeout(at.saturating_duration_since(now)),
                None => incoming.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match next {
                Ok(call) => waiting.push(Reverse(call)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    });
    calls
}

pub(crate) async fn lanes(endpoint: &str, lanes: usize, seconds: f64) -> Result<serde_json::Value> {
    let mut consumer = Consumer::builder(client(endpoint, None), "canned")
        .checkpoint_store(MemoryCheckpointStore::new())
        .checkpoint_mode(CheckpointMode::Manual)
        .build()
        .await?;
    if consumer.shard_ids().count() != 1 {
        return Err("the lanes benchmark reads one shard: start serve-canned with SHARDS 1".into());
    }
    let ideal_per_s = lanes as f64 * 1000.0 / WORK.as_millis() as f64;
    // Enough records for SECONDS at the ideal rate, after a quarter as many
    // to warm up (connections, the first pages, every lane busy).
    let measured = (ideal_per_s * seconds).ceil() as u64;
    let warm_up = measured / 4;
    let shutdown = consumer.shutdown_handle();
    let calls = service();
    let handled = Cell::new(0u64);
    let handler_time = Cell::new(Duration::ZERO);
    let started: Cell<Option<Instant>> = Cell::new(None);
    let elapsed: Cell<Option<Duration>> = Cell::new(None);
    consumer
        .for_each_by_key(lanes, |_record| {
            let (shutdown, handled, handler_time, started, elapsed) =
                (&shutdown, &handled, &handler_time, &started, &elapsed);
            let (answer, answered) = oneshot::channel();
            let begun = Instant::now();
            let called = calls.send(Due(begun + WORK, answer));
            async move {
                called.map_err(|_| "the service stopped")?;
                answered.await.map_err(|_| "the service stopped")?;
                let done = handled.get() + 1;
                handled.set(done);
                if done == warm_up {
                    started.set(Some(Instant::now()));
                } else if done > warm_up {
                    handler_time.set(handler_time.get() + begun.elapsed());
                }
                if done == warm_up + measured {
                    elapsed.set(started.get().map(|s| s.elapsed()));
                    shutdown.shutdown();
                }
                Ok::<_, &str>(())
            }
        })
        .await?;
    let wall = elapsed
        .get()
        .ok_or("the consumer stopped before the records were handled")?;
    let records_per_s = measured as f64 / wall.as_secs_f64();
    let handler_ms = handler_time.get().as_secs_f64() * 1e3 / measured as f64;
    Ok(json!({
        "lanes": lanes,
        "records": measured,
        "wall_s": wall.as_secs_f64(),
        "records_per_s": records_per_s,
        "of_ideal": records_per_s / ideal_per_s,
        "handler_ms_mean": handler_ms,
        "of_ideal_at_the_measured_handler_time": records_per_s / (lanes as f64 * 1000.0 / handler_ms),
    }))
}
