//! Liveness: the leader's record of who heartbeats, the heartbeat handler (a node is
//! Ready again on its next heartbeat) and the monitor that marks silent nodes Down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::handlers::propose;
use super::traffic::TrafficBook;
use super::{lock, manager_addrs, manager_ids, pki_role, Core, Runtime};
use crate::manager::wire::{HeartbeatAck, Reply, Response, WireError};
use crate::manager::{NodeInfo, NodeTraffic};
use crate::store::{Command, MemberState, NodeStatus, NodeTls};

/// Longest engine version a heartbeat may record (Docker's are like `27.3.1`).
const MAX_ENGINE_VERSION: usize = 64;

/// The leader's view of who heartbeats.
#[derive(Default)]
pub(super) struct Liveness {
    /// The term the map below belongs to (cleared when leadership changes).
    pub(super) term: Option<u64>,
    pub(super) last_seen: HashMap<String, Instant>,
    /// Each node's traffic counters, turned into rates (cleared with `last_seen`).
    pub(super) traffic: TrafficBook,
}

impl Runtime {
    /// A heartbeat from `node_id` (a member: checked by the caller). It says the node is
    /// alive, and which engine it runs; a node's name and addresses are the store's
    /// (recorded at join), never what its heartbeats say.
    pub(super) async fn do_heartbeat(
        &self,
        core: &Core,
        node_id: &str,
        info: NodeInfo,
        tls: Option<NodeTls>,
        traffic: Option<NodeTraffic>,
    ) -> Reply {
        let state = core.store.read_stale();
        let node = state
            .nodes
            .get(node_id)
            .ok_or_else(|| WireError::UnknownNode {
                node: node_id.to_string(),
            })?;
        let rates = {
            let now = Instant::now();
            let mut lv = lock(&self.liveness);
            lv.last_seen.insert(node_id.to_string(), now);
            if let Some(t) = traffic {
                lv.traffic.record(node_id, t, now);
            }
            // Managers show every node's rates (their cluster page); workers need none.
            if node.role == crate::store::Role::Manager {
                lv.traffic.rates(now, self.timings.node_down_after)
            } else {
                Default::default()
            }
        };
        if node.status != NodeStatus::Ready {
            propose(
                core,
                Command::SetStatus {
                    id: node_id.to_string(),
                    status: NodeStatus::Ready,
                },
            )
            .await?;
        }
        let engine_changed = node.engine_version != info.engine_version
            && info.engine_version.len() <= MAX_ENGINE_VERSION;
        // A node's capacity is never negative; one that says so is not recorded.
        let resources_changed = node.resources != info.resources
            && info.resources.nano_cpus >= 0
            && info.resources.memory_bytes >= 0;
        // A write each time either changes, within the node's write budget (a node
        // flipping them on every heartbeat gets the budget's rate, and the next heartbeat
        // retries).
        if (engine_changed || resources_changed) && lock(&self.writes).take(node_id, Instant::now())
        {
            let mut updated = core
                .store
                .read_stale()
                .nodes
                .get(node_id)
                .cloned()
                .unwrap_or_else(|| node.clone());
            if engine_changed {
                updated.engine_version = info.engine_version;
            }
            if resources_changed {
                updated.resources = info.resources;
            }
            propose(core, Command::UpsertNode { node: updated }).await?;
        }
        // What a root CA rotation waits for: recorded at join, written when it changes (twice
        // per rotation), within the node's write budget like the engine version.
        if let Some(tls) = tls.filter(|t| node.tls.as_deref() != Some(t)) {
            if lock(&self.writes).take(node_id, Instant::now()) {
                propose(
                    core,
                    Command::SetNodeTls {
                        id: node_id.to_string(),
                        tls,
                    },
                )
                .await?;
            }
        }
        Ok(Response::Heartbeat(HeartbeatAck {
            role: pki_role(node.role),
            raft_id: node.raft_id,
            managers: manager_addrs(&state, core),
            manager_ids: manager_ids(&state),
            ca: Some(core.signers().target()),
            rates,
        }))
    }
}

/// On every manager; acts while it is the leader: marks nodes Down that stopped
/// heartbeating.
pub(super) async fn monitor_loop(rt: Arc<Runtime>, core: Arc<Core>) {
    let tick = (rt.timings.heartbeat_interval / 2).max(Duration::from_millis(20));
    loop {
        tokio::time::sleep(tick).await;
        let st = core.store.status();
        if st.state != MemberState::Leader {
            lock(&rt.liveness).term = None;
            continue;
        }
        let state = core.store.read_stale();
        let now = Instant::now();
        let mut down = Vec::new();
        {
            let mut lv = lock(&rt.liveness);
            if lv.term != Some(st.term) {
                // New leadership: everyone gets a full grace period from now.
                lv.term = Some(st.term);
                lv.last_seen.clear();
                lv.traffic.clear();
            }
            lv.last_seen.insert(rt.node_id.clone(), now);
            for node in state.nodes.values() {
                let seen = *lv.last_seen.entry(node.id.clone()).or_insert(now);
                if node.status != NodeStatus::Down
                    && now.duration_since(seen) > rt.timings.node_down_after
                {
                    down.push(node.id.clone());
                }
            }
            lv.last_seen.retain(|id, _| state.nodes.contains_key(id));
            lv.traffic.retain(|id| state.nodes.contains_key(id));
        }
        lock(&rt.writes).retain_members(&state);
        for id in down {
            tracing::info!(node = %id, "no heartbeat: node is Down");
            let _ = core
                .store
                .propose(Command::SetStatus {
                    id,
                    status: NodeStatus::Down,
                })
                .await;
        }
    }
}
