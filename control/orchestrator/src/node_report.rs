//! What the executor last saw of its node, handed to the rest of the agent in memory
//! (a watch value; the agent's metrics endpoint reads it): the node's tasks in the
//! store by service and state, and its gossip member's view. Written after each of
//! the executor's passes (at least every 200 ms), so a reader is never further behind.
use std::{collections::BTreeMap, sync::Arc};

use shoal_cluster::store::ClusterState;
use shoal_gossip::CounterSnapshot;
use tokio::sync::watch;

/// The node as its executor last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeReport {
    pub node_id: String,
    /// (service name, task state as `service ps` says it) -> tasks the store assigns to
    /// this node.
    pub tasks: BTreeMap<(String, &'static str), u64>,
    /// None while the node runs no gossip member.
    pub gossip: Option<GossipReport>,
}

/// The gossip member's view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GossipReport {
    /// Nodes the member sees live, itself included.
    pub live_members: usize,
    /// Endpoints in the table derived from every live member.
    pub table_entries: usize,
    pub counters: CounterSnapshot,
}

/// Where the executor publishes its [`NodeReport`].
pub type ReportSender = Arc<watch::Sender<Arc<NodeReport>>>;

/// A channel for [`NodeReport`]s, starting from an empty one.
pub fn channel() -> (ReportSender, watch::Receiver<Arc<NodeReport>>) {
    let (tx, rx) = watch::channel(Arc::default());
    (Arc::new(tx), rx)
}

/// The tasks of `state` assigned to node `me`, by service name and state. A task whose
/// service is gone is counted under its service ID.
pub fn tasks_by_state(state: &ClusterState, me: &str) -> BTreeMap<(String, &'static str), u64> {
    let mut out = BTreeMap::new();
    for task in state.tasks.values() {
        if task.node_id.as_deref() != Some(me) {
            continue;
        }
        let service = state
            .services
            .get(&task.service_id)
            .map_or_else(|| task.service_id.clone(), |s| s.spec.name.clone());
        *out.entry((service, task.status.state.as_str()))
            .or_insert(0) += 1;
    }
    out
}
