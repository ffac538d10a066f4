//! When a caught-up shard polls again.
//!
//! Every wakeup of an idle process costs about as much CPU as the empty
//! poll it serves (bench/results/profile.md), so idle shards can poll in
//! groups (`idle_poll_group`): the shards of one group poll at the same
//! moments, one timer wakeup for all of them. The groups' moments are
//! spread over the interval, so that many shards never call all at once,
//! and kept: a shard that read records comes back to its group's moments.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Settings;

/// Added to the least call spacing where the idle interval is no longer
/// than it: a wakeup comes up to this late and the shard still keeps its
/// group's moments without calling sooner than its budget allows. Later, it
/// calls at the spacing and comes back by this much each poll; more slack
/// would lengthen every idle shard's period, and so its latency.
const SLACK: Duration = Duration::from_millis(1);

/// How far apart in the golden-ratio sequence the groups of two streams
/// start: more groups than a stream has.
const STREAM_STRIDE: usize = 1 << 20;

/// The moments one group of idle shards polls at: `origin + k × period`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleGrid {
    origin: Instant,
    period: Duration,
    spacing: Duration,
}

impl IdleGrid {
    /// The grid of the shard in `slot` of the `stream`th stream of a
    /// consumer built at `epoch`.
    pub(crate) fn new(epoch: Instant, settings: &Settings, slot: usize, stream: usize) -> Self {
        let spacing = settings.min_call_spacing();
        let period = settings.idle_interval.max(spacing + SLACK);
        let group = slot / settings.idle_poll_group.max(1);
        // Group k's moments are shifted by frac(k × 0.618…) of the period
        // (0.618… = 1/φ): whatever the number of groups, they spread evenly
        // over the period. Each stream's groups start elsewhere in that
        // sequence, so that the same slots of two streams do not coincide.
        let index = group.wrapping_add(stream.wrapping_mul(STREAM_STRIDE));
        let phase = period.mul_f64((index as f64 * 0.618_033_988_749_895).fract());
        Self {
            origin: epoch + phase,
            period,
            spacing,
        }
    }

    /// When a shard that called at `started` and came up empty (or caught
    /// up) calls next: its group's moment nearest to a period after
    /// `started`, but never sooner than the call budget allows.
    pub(crate) fn next(&self, started: Instant) -> Instant {
        let soonest = started + self.spacing;
        let target = started + self.period;
        let period = self.period.as_nanos().max(1);
        let Some(since) = target.checked_duration_since(self.origin) else {
            return soonest.max(self.origin);
        };
        let periods = (since.as_nanos() + period / 2) / period;
        let moment = u64::try_from(periods * period)
            .ok()
            .and_then(|nanos| self.origin.checked_add(Duration::from_nanos(nanos)))
            .unwrap_or(target);
        moment.max(soonest)
    }
}

/// Asserts that no two of `phases` (within `period`, on a circle) are
/// closer than a tenth of it.
#[cfg(test)]
pub(crate) fn assert_spread(mut phases: Vec<u128>, period: u128) {
    phases.sort_unstable();
    let wrap = phases.first().map(|first| first + period);
    let gaps = phases
        .windows(2)
        .map(|p| p[1] - p[0])
        .chain(wrap.zip(phases.last()).map(|(w, l)| w - l));
    for gap in gaps {
        assert!(gap >= period / 10, "phases {phases:?} cluster");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(idle_ms: u64, group: usize) -> Settings {
        Settings {
            idle_interval: Duration::from_millis(idle_ms),
            idle_poll_group: group,
            ..Settings::default()
        }
    }

    #[test]
    fn shards_of_one_group_poll_at_the_same_moments_whenever_their_last_call_was() {
        let epoch = Instant::now();
        let settings = settings(1000, 4);
        let grids: Vec<IdleGrid> = (0..4).map(|slot| IdleGrid::new(epoch, &settings, slot, 0)).collect();
        let next_group = IdleGrid::new(epoch, &settings, 4, 0);
        let other_stream = IdleGrid::new(epoch, &settings, 0, 1);
        for offset in [3, 250, 499, 501, 990] {
            let started = epoch + Duration::from_millis(offset);
            let moments: Vec<Instant> = grids.iter().map(|grid| grid.next(started)).collect();
            assert!(moments.iter().all(|m| *m == moments[0]), "{offset} ms: {moments:?}");
            assert_ne!(next_group.next(started), moments[0], "slot 4 is in the next group");
            assert_ne!(other_stream.next(started), moments[0], "another stream's slot 0");
        }
        // Calls a few microseconds apart, as tasks woken together make them.
        let moment = grids[0].next(epoch + Duration::from_secs(5));
        for (k, grid) in grids.iter().enumerate() {
            let started = moment + Duration::from_micros(40 * k as u64);
            assert_eq!(grid.next(started), moment + Duration::from_secs(1));
        }
    }

    #[test]
    fn a_caught_up_shard_polls_about_one_interval_later() {
        let epoch = Instant::now();
        let grid = IdleGrid::new(epoch, &settings(1000, 16), 0, 0);
        for offset in (0..3000).step_by(37) {
            let started = epoch + Duration::from_millis(offset);
            let wait = grid.next(started) - started;
            assert!(
                wait >= Duration::from_millis(500) && wait <= Duration::from_millis(1500),
                "after {offset} ms: {wait:?}"
            );
        }
    }

    #[test]
    fn groups_poll_at_moments_spread_over_the_interval() {
        let epoch = Instant::now();
        let settings = settings(1000, 2);
        let started = epoch + Duration::from_secs(10);
        let phases = (0..8)
            .step_by(2)
            .map(|slot| (IdleGrid::new(epoch, &settings, slot, 0).next(started) - epoch).as_millis() % 1000)
            .collect();
        assert_spread(phases, 1000);
    }

    #[test]
    fn an_idle_interval_shorter_than_the_budget_keeps_to_the_budget() {
        let epoch = Instant::now();
        // 5 calls a second: 204 ms apart at least, and a period of 205 ms.
        let grid = IdleGrid::new(epoch, &settings(50, 16), 0, 0);
        let mut called = grid.next(epoch);
        for late_us in [0, 900, 1500, 2500, 10_000, 0, 0] {
            let started = called + Duration::from_micros(late_us);
            let next = grid.next(started);
            assert!(next - started >= Duration::from_millis(204), "{:?}", next - started);
            called = next;
        }
        // Woken on time again, it comes back to its group's moments, by the
        // slack each call.
        let on_grid = |moment: Instant| (moment - grid.origin).as_nanos() % grid.period.as_nanos() == 0;
        assert!(!on_grid(called));
        for _ in 0..12 {
            called = grid.next(called);
        }
        assert!(on_grid(called));
    }

    #[test]
    fn the_longest_interval_and_a_process_up_for_years_do_not_overflow() {
        let epoch = Instant::now();
        let grid = IdleGrid::new(epoch, &settings(86_400_000, 16), 3, 0);
        let started = epoch + Duration::from_secs(5 * 365 * 86_400);
        assert!(grid.next(started) > started);
    }
}
