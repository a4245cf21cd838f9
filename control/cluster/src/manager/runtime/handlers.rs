//! The server side: one request in, one answer out. Checks the caller's certificate and
//! whether this member leads, then hands the request to its handler; the small ones are
//! answered here.

use std::sync::Arc;

use super::{other, tokens_of, Core, Runtime};
use crate::manager::wire::{Reply, Request, Response, WireError};
use crate::manager::Role;
use crate::pki::PeerIdentity;
use crate::store::{ApplyResult, ClusterState, Command, StoreError};

impl Runtime {
    /// Answers one request. `peer` is the caller's verified certificate (`None`: a joining
    /// node). Boxed: handlers call the leader, which may be this node.
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
            let need = |role: Role| {
                peer.authorize(role).map_err(|e| WireError::Unauthorized {
                    detail: e.to_string(),
                })
            };
            let leader_only = || {
                if core.store.is_leader() {
                    Ok(())
                } else {
                    Err(WireError::NotLeader {
                        leader: core.leader_addr(),
                    })
                }
            };
            match request {
                Request::Join { .. } => unreachable!("handled above"),
                Request::Raft(r) => {
                    need(Role::Manager)?;
                    Ok(Response::Raft(core.store.handle_rpc(r).await))
                }
                Request::Execute(command) => {
                    need(Role::Manager)?;
                    leader_only()?;
                    core.store
                        .propose(command)
                        .await
                        .map(Response::Applied)
                        .map_err(|e| store_error(&core, e))
                }
                Request::ReadState => {
                    need(Role::Manager)?;
                    leader_only()?;
                    core.store
                        .read()
                        .await
                        .map(|s| Response::State(Box::new(s)))
                        .map_err(|e| store_error(&core, e))
                }
                Request::Promote { node_id } => {
                    need(Role::Manager)?;
                    leader_only()?;
                    self.do_promote(&core, &node_id).await
                }
                Request::Demote { node_id } => {
                    need(Role::Manager)?;
                    leader_only()?;
                    self.do_demote(&core, &node_id).await
                }
                Request::RemoveNode { node_id, force } => {
                    need(Role::Manager)?;
                    leader_only()?;
                    self.do_remove(&core, peer.node_id(), &node_id, force).await
                }
                Request::RotateToken { role } => {
                    need(Role::Manager)?;
                    leader_only()?;
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
                    need(Role::Manager)?;
                    leader_only()?;
                    self.do_manager_ready(&core, peer.node_id(), advertise)
                        .await
                }
                Request::Heartbeat { node } => {
                    need(Role::Worker)?;
                    leader_only()?;
                    self.do_heartbeat(&core, peer.node_id(), node).await
                }
                Request::Leave => {
                    need(Role::Worker)?;
                    leader_only()?;
                    self.do_leave(&core, peer.node_id()).await
                }
                Request::Renew { csr_pem } => {
                    need(Role::Worker)?;
                    self.do_renew(&core, peer.node_id(), &csr_pem).await
                }
                Request::NodeState { since } => {
                    need(Role::Worker)?;
                    leader_only()?;
                    let state = core.store.read_stale();
                    if state.version == since {
                        return Ok(Response::NodeState(None));
                    }
                    Ok(Response::NodeState(Some(Box::new(node_view(state)))))
                }
                Request::ReportTasks { updates } => {
                    need(Role::Worker)?;
                    leader_only()?;
                    propose(
                        &core,
                        Command::UpdateTaskStatus {
                            node_id: peer.node_id().to_string(),
                            updates,
                        },
                    )
                    .await?;
                    Ok(Response::Done)
                }
            }
        })
    }
}

/// What any node may see of the state: everything but tokens, secrets and configs.
pub(super) fn node_view(mut state: ClusterState) -> ClusterState {
    state.tokens = None;
    state.secrets.clear();
    state.configs.clear();
    state
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
