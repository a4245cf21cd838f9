//! The server side: one request in, one answer out. Checks whether this member leads
//! and whether the caller may ask ([`needs`], then `authorize`), then hands the request
//! to its handler; the small ones are answered here.

use std::sync::Arc;
use std::time::Instant;

use super::authorize::{authorize, Unknown};
use super::reports::useful_updates;
use super::view::node_view;
use super::{lock, other, tokens_of, Core, Runtime};
use crate::manager::wire::{Reply, Request, Response, WireError};
use crate::manager::Role;
use crate::pki::PeerIdentity;
use crate::store::{
    ApplyResult, ClusterState, Command, GossipIdentity, Rejection, StoreError, TaskStatusUpdate,
};

/// What a request asks of its caller, and where it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Needs {
    /// The role the caller must hold, in its certificate and in the store.
    pub role: Role,
    /// Whether a caller this member's copy of the store does not know may pass.
    pub unknown: Unknown,
    /// Served by the leader only (the others answer "not the leader").
    pub leader: bool,
}

/// What `request` needs. (A `Join` comes with no certificate: its handler checks its
/// token before anything else.)
pub(crate) fn needs(request: &Request) -> Needs {
    let on_leader = |role| Needs {
        role,
        unknown: Unknown::Refuse,
        leader: true,
    };
    match request {
        Request::Raft(_) => Needs {
            role: Role::Manager,
            unknown: Unknown::Admit,
            leader: false,
        },
        Request::Join { .. }
        | Request::Execute(_)
        | Request::ReadState
        | Request::Promote { .. }
        | Request::Demote { .. }
        | Request::RemoveNode { .. }
        | Request::RotateToken { .. }
        | Request::RotateCa
        | Request::ManagerReady { .. } => on_leader(Role::Manager),
        Request::Heartbeat { .. }
        | Request::Leave
        | Request::Renew { .. }
        | Request::NodeState { .. }
        | Request::ReportTasks { .. }
        | Request::RegisterGossip { .. }
        | Request::SetAttachments { .. }
        | Request::Networks => on_leader(Role::Worker),
    }
}

impl Runtime {
    /// Answers one request. `peer` is the caller's verified certificate (`None`: a joining
    /// node). Before anything else, the caller is checked against this member's copy of
    /// the store (`authorize`): a certificate alone does not make a member. Boxed:
    /// handlers call the leader, which may be this node.
    pub(crate) fn handle<'a>(
        self: &'a Arc<Self>,
        peer: Option<PeerIdentity>,
        request: Request,
    ) -> crate::store::transport::BoxFuture<'a, Reply> {
        Box::pin(async move {
            let Some(core) = self.core() else {
                return Err(WireError::NotManager);
            };
            let name = request.name();
            if let Request::Join {
                token,
                csr_pem,
                node,
                advertise,
            } = request
            {
                return self.do_join(&core, token, csr_pem, node, advertise).await;
            }
            let Some(peer) = peer else {
                return Err(WireError::Unauthorized {
                    detail: format!("{name} needs a node certificate of this cluster"),
                });
            };
            let needs = needs(&request);
            if needs.leader && !core.store.leads_a_majority() {
                // A leader that lost its majority names no leader: the caller then asks
                // the other managers, one of which knows the new one once it is elected
                // (naming itself would send the caller straight back here).
                return Err(WireError::NotLeader {
                    leader: if core.store.is_leader() {
                        None
                    } else {
                        core.leader_addr()
                    },
                });
            }
            core.store
                .read_stale_with(|state| authorize(state, &peer, needs.role, needs.unknown))?;
            match request {
                Request::Join { .. } => unreachable!("handled above"),
                Request::Raft(r) => Ok(Response::Raft(core.store.handle_rpc(r).await)),
                Request::Execute(command) => core
                    .store
                    .propose(command)
                    .await
                    .map(Response::Applied)
                    .map_err(|e| store_error(&core, e)),
                Request::ReadState => core
                    .store
                    .read()
                    .await
                    .map(|s| Response::State(Box::new(s)))
                    .map_err(|e| store_error(&core, e)),
                Request::Promote { node_id } => self.do_promote(&core, &node_id).await,
                Request::Demote { node_id } => self.do_demote(&core, &node_id).await,
                Request::RemoveNode { node_id, force } => {
                    self.do_remove(&core, peer.node_id(), &node_id, force).await
                }
                Request::RotateToken { role } => {
                    let state = read_linear(&core).await?;
                    let mut tokens = tokens_of(&state).map_err(other)?;
                    let token = tokens.rotate(role).clone();
                    propose(
                        &core,
                        Command::SetTokens {
                            tokens: serde_json::to_value(&tokens).map_err(other)?,
                        },
                    )
                    .await?;
                    tracing::info!(%role, "join token rotated");
                    Ok(Response::Token(token))
                }
                Request::ManagerReady { advertise } => {
                    self.do_manager_ready(&core, peer.node_id(), advertise)
                        .await
                }
                Request::RotateCa => self.do_rotate_ca(&core).await,
                Request::Heartbeat { node, tls, traffic } => {
                    self.do_heartbeat(&core, peer.node_id(), node, tls, traffic)
                        .await
                }
                Request::Leave => self.do_leave(&core, peer.node_id()).await,
                Request::Renew { csr_pem } => self.do_renew(&core, peer.node_id(), &csr_pem).await,
                Request::NodeState { since, applied } => {
                    let state = core.store.read_stale();
                    let withdrawal = applied.map(|v| {
                        let term = core.store.status().term;
                        lock(&self.applied).report(term, peer.node_id(), v, &state)
                    });
                    let view = (state.version != since).then(|| {
                        let keys = core.registry_keys();
                        Box::new(node_view(state, peer.node_id(), &keys))
                    });
                    Ok(match withdrawal {
                        Some(withdrawal) => Response::NodeStateWithdrawal { view, withdrawal },
                        None => Response::NodeState(view),
                    })
                }
                Request::ReportTasks { updates } => {
                    self.do_report_tasks(&core, peer.node_id(), updates).await
                }
                Request::RegisterGossip { gossip } => {
                    self.do_register_gossip(&core, peer.node_id(), gossip).await
                }
                Request::SetAttachments { wanted } => {
                    self.do_set_attachments(&core, peer.node_id(), wanted).await
                }
                Request::Networks => {
                    Ok(Response::Networks(core.store.read_stale_with(|state| {
                        state.networks.values().cloned().collect()
                    })))
                }
            }
        })
    }

    /// A node's task report: only what changes its own tasks is written, within its
    /// write budget (see `reports`).
    async fn do_report_tasks(
        &self,
        core: &Core,
        node_id: &str,
        updates: Vec<TaskStatusUpdate>,
    ) -> Reply {
        let updates = core
            .store
            .read_stale_with(|state| useful_updates(state, node_id, updates));
        if updates.is_empty() {
            return Ok(Response::Done);
        }
        if !lock(&self.writes).take(node_id, Instant::now()) {
            return Err(WireError::Busy {
                detail: format!("node {node_id} reports task states too often; retry"),
            });
        }
        propose(
            core,
            Command::UpdateTaskStatus {
                node_id: node_id.to_string(),
                updates,
            },
        )
        .await?;
        Ok(Response::Done)
    }
}

impl Runtime {
    /// A node registers the key its gossip run signs with: for its own node only (the
    /// certificate says which), at its own data-path address, written only when it
    /// changed and within the node's write budget.
    async fn do_register_gossip(
        &self,
        core: &Core,
        node_id: &str,
        gossip: GossipIdentity,
    ) -> Reply {
        let known = core.store.read_stale_with(|state| {
            state
                .nodes
                .get(node_id)
                .map(|n| (n.gossip.as_deref() == Some(&gossip), gossip.fault(n)))
        });
        match known {
            None => {
                return Err(WireError::UnknownNode {
                    node: node_id.to_string(),
                })
            }
            Some((_, Some(detail))) => {
                return Err(WireError::Rejected {
                    rejection: Rejection::Invalid {
                        what: "gossip identity".into(),
                        detail,
                    },
                })
            }
            Some((true, None)) => return Ok(Response::Done),
            Some((false, None)) => {}
        }
        if !lock(&self.writes).take(node_id, Instant::now()) {
            return Err(WireError::Busy {
                detail: format!("node {node_id} registers gossip keys too often; retry"),
            });
        }
        propose(
            core,
            Command::SetNodeGossip {
                id: node_id.to_string(),
                gossip,
            },
        )
        .await?;
        tracing::info!(node = %node_id, "gossip key registered");
        Ok(Response::Done)
    }
}

impl Runtime {
    /// A node's containers on attachable networks, whole: written only when they differ
    /// from what the store has for it, within the node's write budget; the new ones get
    /// IDs here (the scheduler gives them addresses).
    async fn do_set_attachments(
        &self,
        core: &Core,
        node_id: &str,
        mut wanted: Vec<crate::store::WantedAttachment>,
    ) -> Reply {
        let new = core.store.read_stale_with(|state| {
            usable_attachments(state, &mut wanted);
            (crate::store::declared_attachments(state, node_id) != wanted)
                .then(|| crate::store::new_attachment_count(state, node_id, &wanted))
        });
        let Some(new) = new else {
            return Ok(Response::Done);
        };
        if !lock(&self.writes).take(node_id, Instant::now()) {
            return Err(WireError::Busy {
                detail: format!("node {node_id} changes its attachments too often; retry"),
            });
        }
        propose(
            core,
            Command::SetNodeAttachments {
                node_id: node_id.to_string(),
                wanted,
                new_ids: (0..new).map(|_| crate::pki::new_node_id()).collect(),
            },
        )
        .await?;
        Ok(Response::Done)
    }
}

/// Keeps of `wanted` what the store would take (sorted): entries on attachable networks
/// that exist, valid names, each container once per network, within the bounds. The
/// rest (a network removed since the container was made, an alias Docker took that no
/// resolver would) is left out, so it does not hold up the node's other containers.
fn usable_attachments(state: &ClusterState, wanted: &mut Vec<crate::store::WantedAttachment>) {
    use crate::store::{attachment_name_ok, MAX_ALIASES, MAX_NODE_ATTACHMENTS};
    wanted.retain(|w| {
        !w.container_id.is_empty()
            && w.container_id.len() <= 128
            && attachment_name_ok(&w.container_name)
            && state
                .networks
                .get(&w.network_id)
                .is_some_and(|n| n.attachable && !n.ingress && n.subnet.is_some())
    });
    for w in wanted.iter_mut() {
        w.aliases.retain(|a| attachment_name_ok(a));
        w.aliases.truncate(MAX_ALIASES);
    }
    wanted.sort();
    wanted.dedup_by(|a, b| a.container_id == b.container_id && a.network_id == b.network_id);
    wanted.truncate(MAX_NODE_ATTACHMENTS);
}

pub(super) fn store_error(core: &Core, e: StoreError) -> WireError {
    match e {
        StoreError::NotLeader { leader } => WireError::NotLeader {
            leader: leader.and_then(|l| core.store.status().voters.get(&l).cloned()),
        },
        StoreError::NoQuorum { .. } => WireError::NoQuorum,
        StoreError::LastManager => WireError::LastManager,
        e => other(e),
    }
}

pub(super) async fn read_linear(core: &Core) -> Result<ClusterState, WireError> {
    core.store.read().await.map_err(|e| store_error(core, e))
}

pub(super) async fn propose(core: &Core, command: Command) -> Result<u64, WireError> {
    match core.store.propose(command).await {
        Ok(ApplyResult::Applied { version }) => Ok(version),
        Ok(ApplyResult::Rejected { rejection, .. }) => Err(WireError::Rejected { rejection }),
        Err(e) => Err(store_error(core, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_but_raft_is_served_by_the_leader_to_members_of_its_role() {
        assert_eq!(
            needs(&Request::Raft(crate::store::RaftRequest::Vote(
                openraft::raft::VoteRequest::new(openraft::Vote::new(1, 1), None)
            ))),
            Needs {
                role: Role::Manager,
                unknown: Unknown::Admit,
                leader: false
            }
        );
        for request in [
            Request::ReadState,
            Request::Execute(Command::RemoveNode { id: "n".into() }),
            Request::Promote {
                node_id: "n".into(),
            },
            Request::Demote {
                node_id: "n".into(),
            },
            Request::RemoveNode {
                node_id: "n".into(),
                force: true,
            },
            Request::RotateToken { role: Role::Worker },
            Request::RotateCa,
            Request::ManagerReady {
                advertise: String::new(),
            },
        ] {
            assert_eq!(
                needs(&request),
                Needs {
                    role: Role::Manager,
                    unknown: Unknown::Refuse,
                    leader: true
                },
                "{}",
                request.name()
            );
        }
        for request in [
            Request::Heartbeat {
                node: crate::manager::NodeInfo {
                    hostname: "h".into(),
                    engine_version: String::new(),
                    resources: Default::default(),
                    addr: "10.0.0.1".parse().unwrap(),
                    data_path_addr: None,
                    labels: Default::default(),
                },
                tls: None,
                traffic: None,
            },
            Request::Leave,
            Request::Renew {
                csr_pem: String::new(),
            },
            Request::NodeState {
                since: 0,
                applied: None,
            },
            Request::ReportTasks { updates: vec![] },
            Request::SetAttachments { wanted: vec![] },
            Request::Networks,
            Request::RegisterGossip {
                gossip: GossipIdentity {
                    key: "ab".repeat(32),
                    generation: 1,
                    addr: "10.0.0.1:7946".parse().unwrap(),
                    wireguard: None,
                },
            },
        ] {
            assert_eq!(
                needs(&request),
                Needs {
                    role: Role::Worker,
                    unknown: Unknown::Refuse,
                    leader: true
                },
                "{}",
                request.name()
            );
        }
    }
}
