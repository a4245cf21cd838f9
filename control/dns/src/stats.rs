//! What the resolver counts: queries by transport, what became of them (answered here,
//! forwarded, dropped and why) and how long answering took, as a histogram. One
//! [`DnsStats`] is shared by every network a node serves; the agent reads it in memory
//! (its metrics endpoint), the socket loops only add to it (relaxed atomics: each
//! counter is exact, a reader may see one a moment ahead of another).
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Upper bounds (seconds) of the answer-latency buckets: from a cached local answer
/// (tens of microseconds) to a forward that waited for its upstream's timeout.
pub const LATENCY_BOUNDS_SECONDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A histogram of durations with fixed bounds, safe to add to from many tasks.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `counts[i]`: observations in bucket i alone (not cumulative); the last one is
    /// above every bound.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

/// A copy of a [`Histogram`], cumulative as Prometheus wants it.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations at or under it), in bound order.
    pub buckets: Vec<(f64, u64)>,
    /// Every observation (the `+Inf` bucket).
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let above = self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count: cumulative + above,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Why a query got no answer from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Dropped {
    /// Over the source's rate limit (UDP).
    RateLimited,
    /// Over the forwards in flight allowed per network or per source (UDP).
    ForwardLimit,
    /// Not a query the resolver answers (garbage, a response, a truncated header).
    Invalid,
}

impl Dropped {
    pub const ALL: [Dropped; 3] = [
        Dropped::RateLimited,
        Dropped::ForwardLimit,
        Dropped::Invalid,
    ];

    /// Stable lower-case name (a metric label value).
    pub const fn name(self) -> &'static str {
        match self {
            Dropped::RateLimited => "rate_limited",
            Dropped::ForwardLimit => "forward_limit",
            Dropped::Invalid => "invalid",
        }
    }
}

/// The resolver's counters, shared by all its networks.
#[derive(Debug)]
pub struct DnsStats {
    queries_udp: AtomicU64,
    queries_tcp: AtomicU64,
    answered_local: AtomicU64,
    forwarded: AtomicU64,
    dropped: [AtomicU64; Dropped::ALL.len()],
    /// From a query's arrival to its answer being handed to the socket, local answers
    /// and forwarded ones alike.
    latency: Histogram,
}

/// A copy of [`DnsStats`].
#[derive(Clone, Debug, PartialEq)]
pub struct DnsStatsSnapshot {
    pub queries_udp: u64,
    pub queries_tcp: u64,
    pub answered_local: u64,
    pub forwarded: u64,
    /// Per [`Dropped`], in [`Dropped::ALL`] order.
    pub dropped: Vec<(Dropped, u64)>,
    pub latency: HistogramSnapshot,
}

impl Default for DnsStats {
    fn default() -> Self {
        DnsStats {
            queries_udp: AtomicU64::new(0),
            queries_tcp: AtomicU64::new(0),
            answered_local: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            dropped: Default::default(),
            latency: Histogram::new(&LATENCY_BOUNDS_SECONDS),
        }
    }
}

impl DnsStats {
    pub(crate) fn query(&self, over_tcp: bool) {
        let c = if over_tcp {
            &self.queries_tcp
        } else {
            &self.queries_udp
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn answered_local(&self, took: Duration) {
        self.answered_local.fetch_add(1, Ordering::Relaxed);
        self.latency.observe(took);
    }

    pub(crate) fn forwarded(&self, took: Duration) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        self.latency.observe(took);
    }

    pub(crate) fn dropped(&self, why: Dropped) {
        self.dropped[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> DnsStatsSnapshot {
        DnsStatsSnapshot {
            queries_udp: self.queries_udp.load(Ordering::Relaxed),
            queries_tcp: self.queries_tcp.load(Ordering::Relaxed),
            answered_local: self.answered_local.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: Dropped::ALL
                .iter()
                .map(|&d| (d, self.dropped[d as usize].load(Ordering::Relaxed)))
                .collect(),
            latency: self.latency.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        static BOUNDS: [f64; 3] = [0.001, 0.01, 0.1];
        let h = Histogram::new(&BOUNDS);
        for ms in [0, 1, 5, 10, 50, 2_000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.001, 2), (0.01, 4), (0.1, 5)]);
        assert_eq!(s.count, 6);
        assert!((s.sum_seconds - 2.066).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn stats_count_by_kind() {
        let stats = DnsStats::default();
        stats.query(false);
        stats.query(false);
        stats.query(true);
        stats.answered_local(Duration::from_micros(50));
        stats.forwarded(Duration::from_millis(3));
        stats.dropped(Dropped::Invalid);
        let s = stats.snapshot();
        assert_eq!((s.queries_udp, s.queries_tcp), (2, 1));
        assert_eq!((s.answered_local, s.forwarded), (1, 1));
        assert_eq!(
            s.dropped,
            vec![
                (Dropped::RateLimited, 0),
                (Dropped::ForwardLimit, 0),
                (Dropped::Invalid, 1)
            ]
        );
        assert_eq!(s.latency.count, 2);
        assert_eq!(s.latency.buckets[0], (0.0001, 1));
    }
}
