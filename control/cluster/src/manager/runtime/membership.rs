//! Membership changes, on the leader: a node leaving, promotions and demotions (with the
//! Raft membership change they need), removals, and a new manager joining the Raft group.

use super::handlers::{propose, read_linear, store_error};
use super::{fresh_raft_id, lock, Core, Runtime};
use crate::manager::wire::{Reply, Response, WireError};
use crate::manager::Role;
use crate::store::{ClusterState, Command, Node, NodeStatus, RaftId};

impl Runtime {
    pub(super) async fn do_leave(&self, core: &Core, node_id: &str) -> Reply {
        let state = read_linear(core).await?;
        let node = state
            .nodes
            .get(node_id)
            .ok_or_else(|| WireError::UnknownNode {
                node: node_id.to_string(),
            })?;
        let voters = core.store.status().voters;
        let voter = node.raft_id.filter(|id| voters.contains_key(id));
        if voter.is_some() && voters.len() <= 1 {
            return Err(WireError::LastManager);
        }
        {
            let mut lv = lock(&self.liveness);
            lv.left.insert(node_id.to_string());
            lv.last_seen.remove(node_id);
        }
        propose(
            core,
            Command::SetStatus {
                id: node_id.to_string(),
                status: NodeStatus::Down,
            },
        )
        .await?;
        if node.role == crate::store::Role::Manager {
            // Still listed as a manager (Unreachable), but out of the quorum.
            propose(
                core,
                Command::SetRole {
                    id: node_id.to_string(),
                    role: crate::store::Role::Manager,
                    raft_id: None,
                },
            )
            .await?;
            if let Some(id) = voter {
                core.store
                    .remove_manager(id)
                    .await
                    .map_err(|e| store_error(core, e))?;
            }
        }
        tracing::info!(node = %node_id, "node left");
        Ok(Response::Done)
    }

    pub(super) async fn do_promote(&self, core: &Core, node_id: &str) -> Reply {
        let state = read_linear(core).await?;
        node_to_change(&state, node_id, Role::Manager)?;
        propose(
            core,
            Command::SetRole {
                id: node_id.to_string(),
                role: crate::store::Role::Manager,
                raft_id: Some(fresh_raft_id(&state)),
            },
        )
        .await?;
        tracing::info!(node = %node_id, "node promoted");
        Ok(Response::Done)
    }

    pub(super) async fn do_demote(&self, core: &Core, node_id: &str) -> Reply {
        let state = read_linear(core).await?;
        let node = node_to_change(&state, node_id, Role::Worker)?;
        let managers = state
            .nodes
            .values()
            .filter(|n| n.role == crate::store::Role::Manager)
            .count();
        let voters = core.store.status().voters;
        let voter = node.raft_id.filter(|id| voters.contains_key(id));
        if managers <= 1 || (voter.is_some() && voters.len() <= 1) {
            return Err(WireError::LastManager);
        }
        // The membership change needs a majority of the managers that remain. Refuse up
        // front when they cannot give one, rather than wait out the change's timeout.
        if let Some(id) = voter {
            let remaining: Vec<RaftId> = voters.keys().copied().filter(|v| *v != id).collect();
            let ready = remaining
                .iter()
                .filter(|v| {
                    state.nodes.values().any(|n| {
                        n.raft_id == Some(**v) && n.status == crate::store::NodeStatus::Ready
                    })
                })
                .count();
            if ready * 2 <= remaining.len() {
                return Err(WireError::NoQuorum);
            }
        }
        // Out of the Raft group first, the role second. A node told it is a worker drops
        // its copy of the log; were it still a voter (the membership change not yet
        // committed), its vote would count for entries it no longer holds, and a leader
        // would see a follower's log go backwards. If the change fails here, nothing was
        // recorded and the demotion can simply be asked again.
        if let Some(id) = voter {
            core.store
                .remove_manager(id)
                .await
                .map_err(|e| store_error(core, e))?;
        }
        propose(
            core,
            Command::SetRole {
                id: node_id.to_string(),
                role: crate::store::Role::Worker,
                raft_id: None,
            },
        )
        .await?;
        tracing::info!(node = %node_id, "node demoted");
        Ok(Response::Done)
    }

    pub(super) async fn do_remove(
        &self,
        core: &Core,
        caller: &str,
        node_id: &str,
        force: bool,
    ) -> Reply {
        if node_id == caller || node_id == self.node_id {
            return Err(WireError::RemoveSelf);
        }
        let state = read_linear(core).await?;
        let node = state
            .nodes
            .get(node_id)
            .ok_or_else(|| WireError::UnknownNode {
                node: node_id.to_string(),
            })?;
        if node.status == NodeStatus::Ready && !force {
            return Err(WireError::NodeIsReady {
                node: node_id.to_string(),
            });
        }
        let voters = core.store.status().voters;
        let voter = node.raft_id.filter(|id| voters.contains_key(id));
        if node.role == crate::store::Role::Manager {
            if !force {
                return Err(WireError::NodeIsManager {
                    node: node_id.to_string(),
                });
            }
            if voter.is_some() && voters.len() <= 1 {
                return Err(WireError::LastManager);
            }
        }
        if let Some(id) = voter {
            core.store
                .remove_manager(id)
                .await
                .map_err(|e| store_error(core, e))?;
        }
        propose(
            core,
            Command::RemoveNode {
                id: node_id.to_string(),
            },
        )
        .await?;
        {
            let mut lv = lock(&self.liveness);
            lv.last_seen.remove(node_id);
            lv.left.insert(node_id.to_string());
        }
        tracing::info!(node = %node_id, "node removed");
        Ok(Response::Done)
    }

    pub(super) async fn do_manager_ready(
        &self,
        core: &Core,
        node_id: &str,
        advertise: String,
    ) -> Reply {
        let state = read_linear(core).await?;
        let node = state
            .nodes
            .get(node_id)
            .ok_or_else(|| WireError::UnknownNode {
                node: node_id.to_string(),
            })?;
        let (crate::store::Role::Manager, Some(raft_id)) = (node.role, node.raft_id) else {
            return Err(WireError::NotManager);
        };
        if node.advertise_addr != advertise {
            let mut updated = node.clone();
            updated.advertise_addr = advertise.clone();
            propose(core, Command::UpsertNode { node: updated }).await?;
        }
        if !core.store.status().voters.contains_key(&raft_id) {
            core.store
                .add_manager(raft_id, advertise)
                .await
                .map_err(|e| store_error(core, e))?;
            tracing::info!(node = %node_id, raft_id, "manager added to the Raft group");
        }
        Ok(Response::Done)
    }
}

/// The node a promotion or demotion to `to` applies to: it must exist and not hold
/// that role already.
fn node_to_change<'a>(
    state: &'a ClusterState,
    node_id: &str,
    to: Role,
) -> Result<&'a Node, WireError> {
    let node = state
        .nodes
        .get(node_id)
        .ok_or_else(|| WireError::UnknownNode {
            node: node_id.to_string(),
        })?;
    let already = match to {
        Role::Manager => node.role == crate::store::Role::Manager,
        Role::Worker => node.role == crate::store::Role::Worker,
    };
    if already {
        return Err(WireError::AlreadyRole {
            node: node_id.to_string(),
            role: to,
        });
    }
    Ok(node)
}
