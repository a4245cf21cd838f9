//! Membership changes, on the leader: a node leaving, promotions and demotions (with the
//! Raft membership change they need), removals (and the revocation of the certificates of
//! nodes that left or were removed), and a new manager joining the Raft group.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::handlers::{propose, read_linear, store_error};
use super::{fresh_raft_id, lock, now_ms, Core, Runtime};
use crate::manager::wire::{Reply, Response, WireError};
use crate::manager::Role;
use crate::store::{ApplyResult, ClusterState, Command, Node, NodeStatus, RaftId};

impl Runtime {
    /// The command that revokes `node_id`'s certificates from now on: until every
    /// certificate it may have been issued has expired (with an hour to spare for
    /// clocks that differ).
    fn revoke(&self, node_id: &str) -> Command {
        let at_ms = now_ms();
        let validity = self.timings.cert_validity + Duration::from_secs(3600);
        Command::RevokeNode {
            id: node_id.to_string(),
            at_ms,
            until_ms: at_ms.saturating_add(validity.as_millis() as u64),
        }
    }

    pub(super) async fn do_leave(self: &Arc<Self>, core: &Core, node_id: &str) -> Reply {
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
        lock(&self.liveness).last_seen.remove(node_id);
        if node.role != crate::store::Role::Manager {
            // From now on its certificate counts for nothing, on every manager.
            propose(core, self.revoke(node_id)).await?;
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
            // Revoked once out of the Raft group: the others must still take its Raft
            // messages until then. When it was the leader, it is not any more, and the
            // revocation goes to the new one.
            match self.execute(self.revoke(node_id)).await {
                Ok(ApplyResult::Applied { .. }) => {}
                Ok(ApplyResult::Rejected { rejection, .. }) => {
                    return Err(WireError::Rejected { rejection })
                }
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(node = %node_id, "node left; its certificate is revoked");
        Ok(Response::Done)
    }

    /// Promotes a Ready node and answers only once it is a voter of the Raft group
    /// (it joins as a learner, receives the log, then votes: `do_manager_ready`), so a
    /// leader lost right after a promotion leaves a quorum among the others. A node that
    /// has not joined within [`promote_join_wait`] is made a worker again, and the
    /// promotion fails saying so.
    pub(super) async fn do_promote(&self, core: &Core, node_id: &str) -> Reply {
        let state = read_linear(core).await?;
        let node = node_to_change(&state, node_id, Role::Manager)?;
        if node.status != NodeStatus::Ready {
            return Err(WireError::Other {
                detail: format!(
                    "node {} is not Ready: only a node that heartbeats can be promoted (it must join the managers' Raft group for the promotion to count)",
                    node.hostname
                ),
            });
        }
        let hostname = node.hostname.clone();
        let raft_id = fresh_raft_id(&state);
        propose(
            core,
            Command::SetRole {
                id: node_id.to_string(),
                role: crate::store::Role::Manager,
                raft_id: Some(raft_id),
            },
        )
        .await?;
        let waited = promote_join_wait(self.timings.request_timeout);
        let deadline = Instant::now() + waited;
        let joined = || {
            core.store.status().voters.contains_key(&raft_id)
                && core.store.holds_membership(&BTreeSet::from([raft_id]))
        };
        while Instant::now() < deadline {
            if joined() {
                tracing::info!(node = %node_id, raft_id, "node promoted: a voter of the Raft group");
                return Ok(Response::Done);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Decided under the membership lock: a join in flight either completed (a
        // voter: the promotion stands) or will find the node a worker and refuse it.
        let _membership = self.membership.lock().await;
        // A voter stays one (taking it out again would be another membership change):
        // the promotion stands even if it has not caught up yet.
        if core.store.status().voters.contains_key(&raft_id) {
            tracing::info!(node = %node_id, raft_id, "node promoted: a voter of the Raft group");
            return Ok(Response::Done);
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
        tracing::warn!(node = %node_id, "promotion undone: the node did not join the Raft group in time");
        Err(WireError::Other {
            detail: format!(
                "node {hostname} did not join the managers' Raft group within {}s (can it reach the managers on their port?): it stays a worker",
                waited.as_secs()
            ),
        })
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
        // Out of the Raft group first (until then the others must take its Raft
        // messages), then revoked, then removed: at no moment is it listed, or a voter,
        // without its certificate counting, nor unlisted with it counting.
        if let Some(id) = voter {
            core.store
                .remove_manager(id)
                .await
                .map_err(|e| store_error(core, e))?;
        }
        propose(core, self.revoke(node_id)).await?;
        propose(
            core,
            Command::RemoveNode {
                id: node_id.to_string(),
            },
        )
        .await?;
        lock(&self.liveness).last_seen.remove(node_id);
        tracing::info!(node = %node_id, "node removed; its certificate is revoked");
        Ok(Response::Done)
    }

    pub(super) async fn do_manager_ready(
        &self,
        core: &Core,
        node_id: &str,
        advertise: String,
    ) -> Reply {
        // With a promotion that gave up waiting for this node: see `do_promote`.
        let _membership = self.membership.lock().await;
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

/// How long a promotion waits for the node to become a voter, given the cluster's request
/// timeout `t`: its next heartbeat (a second), a manager certificate, its Raft member
/// started, the log sent to it as a learner (`t` at most), the membership change
/// committed (`t` at most), with room for a loaded machine.
pub(crate) fn promote_join_wait(t: Duration) -> Duration {
    t * 3 + Duration::from_secs(2)
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
