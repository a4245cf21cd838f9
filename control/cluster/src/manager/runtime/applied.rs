//! The leader's record of which store version each node's dataplane follows whole, as
//! the nodes say with every state fetch, and what it gives: the lowest such version over
//! the nodes that carry traffic ([`Withdrawal`]). A node's executor holds the stop of a
//! task until that has passed the task's withdrawal (no node sends it new connections).
//!
//! In memory only (no Raft log write per fetch), and started afresh with each term: a
//! node that has not said yet counts as 0 (wait for it), and a node Down in the store
//! does not count (it carries no traffic, and cannot say).

use std::collections::{BTreeMap, HashMap};

use crate::manager::Withdrawal;
use crate::store::{ClusterState, NodeStatus};

/// What the nodes last said, for one leadership term.
#[derive(Default)]
pub(super) struct AppliedVersions {
    term: Option<u64>,
    by_node: HashMap<String, u64>,
}

impl AppliedVersions {
    /// Records that `node`'s dataplane follows store version `applied` (in `term`), and
    /// answers with how far the withdrawals have come in `state`.
    pub(super) fn report(
        &mut self,
        term: u64,
        node: &str,
        applied: u64,
        state: &ClusterState,
    ) -> Withdrawal {
        if self.term != Some(term) {
            // Another leader may have heard newer (or older) news meanwhile.
            self.term = Some(term);
            self.by_node.clear();
        }
        self.by_node.insert(node.to_owned(), applied);
        self.by_node.retain(|id, _| state.nodes.contains_key(id));
        withdrawal(state, &self.by_node)
    }
}

/// The lowest store version the Ready nodes of `state` follow (`applied`; one that has
/// not said counts 0), and the Ready nodes behind `state`'s version. With no Ready node,
/// nothing can carry a withdrawn task's traffic: the whole of `state` counts.
pub(super) fn withdrawal(state: &ClusterState, applied: &HashMap<String, u64>) -> Withdrawal {
    let ready: BTreeMap<String, u64> = state
        .nodes
        .values()
        .filter(|n| n.status == NodeStatus::Ready)
        .map(|n| (n.id.clone(), applied.get(&n.id).copied().unwrap_or(0)))
        .collect();
    Withdrawal {
        withdrawn_everywhere_version: ready.values().copied().min().unwrap_or(state.version),
        behind: ready
            .into_iter()
            .filter(|(_, v)| *v < state.version)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Node, Role};

    fn state(nodes: &[(&str, NodeStatus)]) -> ClusterState {
        let mut s = ClusterState {
            version: 50,
            ..Default::default()
        };
        for (id, status) in nodes {
            s.nodes.insert(
                (*id).into(),
                Node {
                    id: (*id).into(),
                    hostname: (*id).into(),
                    role: Role::Worker,
                    availability: Default::default(),
                    status: *status,
                    advertise_addr: "10.0.0.1:2377".into(),
                    data_path_addr: None,
                    engine_version: String::new(),
                    resources: Default::default(),
                    labels: Default::default(),
                    raft_id: None,
                    gossip: None,
                    version: 1,
                    tls: None,
                    wireguard_rotation: 0,
                },
            );
        }
        s
    }

    #[test]
    fn the_lowest_of_the_ready_nodes_counts_and_one_that_never_said_is_zero() {
        let s = state(&[
            ("n1", NodeStatus::Ready),
            ("n2", NodeStatus::Ready),
            ("n3", NodeStatus::Ready),
        ]);
        let said = HashMap::from([("n1".to_owned(), 50), ("n2".to_owned(), 42)]);
        let w = withdrawal(&s, &said);
        assert_eq!(w.withdrawn_everywhere_version, 0, "n3 has not said: wait");
        assert_eq!(
            w.behind,
            BTreeMap::from([("n2".to_owned(), 42), ("n3".to_owned(), 0)])
        );
        let said = HashMap::from([
            ("n1".to_owned(), 50),
            ("n2".to_owned(), 42),
            ("n3".to_owned(), 47),
        ]);
        assert_eq!(withdrawal(&s, &said).withdrawn_everywhere_version, 42);
    }

    #[test]
    fn down_nodes_do_not_count() {
        let s = state(&[
            ("n1", NodeStatus::Ready),
            ("n2", NodeStatus::Down),
            ("n3", NodeStatus::Unknown),
        ]);
        let said = HashMap::from([("n1".to_owned(), 48), ("n2".to_owned(), 3)]);
        let w = withdrawal(&s, &said);
        assert_eq!(w.withdrawn_everywhere_version, 48);
        assert_eq!(w.behind, BTreeMap::from([("n1".to_owned(), 48)]));

        let none = state(&[("n2", NodeStatus::Down)]);
        assert_eq!(
            withdrawal(&none, &said).withdrawn_everywhere_version,
            50,
            "no node carries traffic: everything is withdrawn"
        );
    }

    #[test]
    fn the_record_keeps_the_latest_word_per_node_and_starts_afresh_each_term() {
        let s = state(&[("n1", NodeStatus::Ready), ("n2", NodeStatus::Ready)]);
        let mut record = AppliedVersions::default();
        let mut say = |node: &str, applied: u64| {
            record
                .report(3, node, applied, &s)
                .withdrawn_everywhere_version
        };
        assert_eq!(say("n1", 50), 0);
        assert_eq!(say("n2", 49), 49);
        // An agent restarted: its dataplane follows nothing yet.
        assert_eq!(say("n2", 0), 0);
        assert_eq!(say("n2", 50), 50);
        // A new term: what n2 said before may no longer hold.
        let w = record.report(4, "n1", 50, &s);
        assert_eq!(w.withdrawn_everywhere_version, 0);
        assert_eq!(w.behind, BTreeMap::from([("n2".to_owned(), 0)]));
        // A node removed from the store is forgotten.
        let alone = state(&[("n1", NodeStatus::Ready)]);
        record.report(4, "n1", 50, &alone);
        assert!(!record.by_node.contains_key("n2"));
    }
}
