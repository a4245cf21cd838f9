//! Request rates per node, for the cluster page. Each node's heartbeat carries its
//! counters (totals since its dataplane started: new flows through the routing mesh,
//! bytes, service VIP connects); the leader turns two samples of a node into rates per
//! second and sends every node's rates back in the heartbeat answers of managers, so any
//! manager can show them, about a heartbeat old. Kept in memory only: counters are not
//! the cluster's state, and writing them to the Raft log would cost an fsync a second.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::manager::{NodeTraffic, TrafficRates};

/// Samples closer together than this are not turned into a rate (a retried heartbeat).
const MIN_SPAN: Duration = Duration::from_millis(200);

/// The leader's samples of each node's counters.
#[derive(Default)]
pub(super) struct TrafficBook {
    by_node: HashMap<String, Sample>,
}

struct Sample {
    at: Instant,
    totals: NodeTraffic,
    rates: Option<TrafficRates>,
}

impl TrafficBook {
    /// Records `totals` from `node` at `now`.
    pub(super) fn record(&mut self, node: &str, totals: NodeTraffic, now: Instant) {
        let Some(prev) = self.by_node.get_mut(node) else {
            self.by_node.insert(
                node.to_owned(),
                Sample {
                    at: now,
                    totals,
                    rates: None,
                },
            );
            return;
        };
        let span = now.saturating_duration_since(prev.at);
        if span < MIN_SPAN {
            return;
        }
        let secs = span.as_secs_f64();
        let per_s = |now: u64, before: u64| {
            // A counter that went back was reset (the node's dataplane restarted):
            // what it counted since then is the best estimate.
            let delta = now.checked_sub(before).unwrap_or(now);
            delta as f64 / secs
        };
        prev.rates = Some(TrafficRates {
            mesh_flows_per_s: per_s(totals.mesh_new_flows, prev.totals.mesh_new_flows),
            mesh_bytes_per_s: per_s(totals.mesh_bytes, prev.totals.mesh_bytes),
            vip_connects_per_s: per_s(totals.vip_connects, prev.totals.vip_connects),
        });
        prev.at = now;
        prev.totals = totals;
    }

    /// Every node's latest rates, leaving out nodes silent for longer than `stale`.
    pub(super) fn rates(&self, now: Instant, stale: Duration) -> BTreeMap<String, TrafficRates> {
        self.by_node
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.at) <= stale)
            .filter_map(|(id, s)| Some((id.clone(), s.rates?)))
            .collect()
    }

    /// Forgets nodes `keep` says are gone.
    pub(super) fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.by_node.retain(|id, _| keep(id));
    }

    pub(super) fn clear(&mut self) {
        self.by_node.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(flows: u64, bytes: u64, vip: u64) -> NodeTraffic {
        NodeTraffic {
            mesh_new_flows: flows,
            mesh_bytes: bytes,
            vip_connects: vip,
        }
    }

    #[test]
    fn two_samples_make_a_rate_and_silent_nodes_drop_out() {
        let mut book = TrafficBook::default();
        let t0 = Instant::now();
        book.record("n1", totals(100, 1000, 5), t0);
        assert!(book.rates(t0, Duration::from_secs(5)).is_empty());
        // Too soon after the first: no rate yet.
        book.record("n1", totals(101, 1000, 5), t0 + Duration::from_millis(50));
        assert!(book.rates(t0, Duration::from_secs(5)).is_empty());
        book.record("n1", totals(120, 3000, 9), t0 + Duration::from_secs(2));
        let r = book.rates(t0 + Duration::from_secs(2), Duration::from_secs(5))["n1"];
        assert_eq!(r.mesh_flows_per_s, 10.0);
        assert_eq!(r.mesh_bytes_per_s, 1000.0);
        assert_eq!(r.vip_connects_per_s, 2.0);
        assert!(book
            .rates(t0 + Duration::from_secs(10), Duration::from_secs(5))
            .is_empty());
    }

    #[test]
    fn a_counter_that_went_back_counts_from_zero() {
        let mut book = TrafficBook::default();
        let t0 = Instant::now();
        book.record("n1", totals(500, 0, 0), t0);
        book.record("n1", totals(8, 0, 0), t0 + Duration::from_secs(1));
        let r = book.rates(t0 + Duration::from_secs(1), Duration::from_secs(5))["n1"];
        assert_eq!(r.mesh_flows_per_s, 8.0);
        book.retain(|id| id != "n1");
        assert!(book.rates(t0, Duration::from_secs(5)).is_empty());
    }
}
