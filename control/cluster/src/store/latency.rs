//! How long the Raft log's writes wait on the disk: a histogram of fsync times, for the
//! metrics (`shoal_raft_fsync_duration_seconds`). A slow disk stalls every commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (0.1 ms to 2.5 s).
const BOUNDS_MICROS: [u64; 13] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    2_500_000,
];

/// Counts of durations per bucket; shared by the log store that observes and the
/// member that reports.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// One per bound, then the overflow.
    counts: [AtomicU64; BOUNDS_MICROS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A copy of a [`LatencyHistogram`], cumulative as Prometheus wants it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// (upper bound in microseconds, observations at or under it), in bound order.
    pub buckets: Vec<(u64, u64)>,
    pub count: u64,
    pub sum_nanos: u64,
}

impl LatencyHistogram {
    pub fn observe(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MICROS
            .iter()
            .position(|&b| micros <= b)
            .unwrap_or(BOUNDS_MICROS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let mut cumulative = 0;
        let buckets = BOUNDS_MICROS
            .iter()
            .zip(&self.counts)
            .map(|(&bound, c)| {
                cumulative += c.load(Ordering::Relaxed);
                (bound, cumulative)
            })
            .collect();
        let count = cumulative + self.counts[BOUNDS_MICROS.len()].load(Ordering::Relaxed);
        LatencySnapshot {
            buckets,
            count,
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_overflow_counts() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(80));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (100, 2));
        assert_eq!(s.buckets[4], (2_500, 2));
        assert_eq!(s.buckets[5], (5_000, 3));
        assert_eq!(s.buckets.last(), Some(&(2_500_000, 3)));
        assert_eq!(s.sum_nanos, 80_000 + 100_000 + 3_000_000 + 10_000_000_000);
    }
}
