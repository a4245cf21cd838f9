//! Calls to the leader: each one is sent to the leader (or handled here when this node
//! leads), following "not the leader" answers for up to the request timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, Runtime};
use crate::manager::wire::{Request, Response, WireError};
use crate::manager::{ClusterError, NodeFetch, Role};
use crate::store::{ApplyResult, ClusterState, Command};
use crate::token::JoinToken;

enum Target {
    Local,
    Remote(String),
}

impl Runtime {
    fn leader_target(&self, rotation: usize) -> Option<Target> {
        let own = lock(&self.local).advertise.to_string();
        if let Some(core) = self.core() {
            if core.store.is_leader() {
                return Some(Target::Local);
            }
            if let Some(addr) = core.leader_addr().filter(|a| *a != own) {
                return Some(Target::Remote(addr));
            }
        }
        let local = lock(&self.local);
        let candidates: Vec<&String> = local.managers.iter().filter(|m| **m != own).collect();
        if candidates.is_empty() {
            return None;
        }
        Some(Target::Remote(
            candidates[rotation % candidates.len()].clone(),
        ))
    }

    /// Sends `request` to the leader (or handles it here when this is the leader),
    /// following "not the leader" answers, for up to the request timeout.
    pub(crate) async fn call_leader(
        self: &Arc<Self>,
        request: Request,
    ) -> Result<Response, ClusterError> {
        let deadline = Instant::now() + self.timings.request_timeout;
        let mut hint: Option<String> = None;
        let mut rotation = 0usize;
        let mut unreachable: Option<String> = None;
        let mut replaced = false;
        loop {
            let target = match hint.take() {
                Some(addr) => Some(Target::Remote(addr)),
                None => self.leader_target(rotation),
            };
            let reply = match target {
                Some(Target::Local) => {
                    self.handle(Some(self.identity().peer_identity()), request.clone())
                        .await
                }
                Some(Target::Remote(addr)) => {
                    let client = self.client();
                    let call = client.call(
                        &addr,
                        &request,
                        request.deadline(self.timings.request_timeout),
                    );
                    // On a manager, a call to a leader that this node's Raft sees replaced
                    // is given up: a leader cut off from the majority (alive, so the
                    // connection hangs rather than fails) would otherwise hold the call
                    // for the whole request timeout after the new leader is elected.
                    let answered = match self.core() {
                        Some(core) => {
                            let seen = core.store.leader();
                            tokio::select! {
                                r = call => Some(r),
                                () = core.store.leader_other_than(seen) => None,
                            }
                        }
                        None => Some(call.await),
                    };
                    match answered {
                        Some(Ok(reply)) => reply,
                        Some(Err(e)) => {
                            unreachable = Some(format!("{addr}: {e}"));
                            rotation += 1;
                            Err(WireError::NotLeader { leader: None })
                        }
                        None => {
                            tracing::debug!(%addr, "the leader changed: asking again");
                            replaced = true;
                            Err(WireError::NotLeader { leader: None })
                        }
                    }
                }
                None => Err(WireError::NotLeader { leader: None }),
            };
            match reply {
                Ok(response) => return Ok(response),
                Err(WireError::NotLeader { leader }) => {
                    if Instant::now() >= deadline {
                        return Err(match (unreachable, self.core().is_some()) {
                            (Some(u), false) => ClusterError::Unreachable(u),
                            _ => ClusterError::NoQuorum,
                        });
                    }
                    if std::mem::take(&mut replaced) {
                        // Straight to the leader this node names now.
                    } else if leader.is_none() {
                        rotation += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    hint = leader;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(crate) async fn read_state(self: &Arc<Self>) -> Result<ClusterState, ClusterError> {
        match self.call_leader(Request::ReadState).await? {
            Response::State(s) => Ok(*s),
            _ => Err(ClusterError::Protocol("unexpected answer to read".into())),
        }
    }

    pub(crate) async fn execute(
        self: &Arc<Self>,
        command: Command,
    ) -> Result<ApplyResult, ClusterError> {
        match self.call_leader(Request::Execute(command)).await? {
            Response::Applied(r) => Ok(r),
            _ => Err(ClusterError::Protocol(
                "unexpected answer to execute".into(),
            )),
        }
    }

    async fn call_done(self: &Arc<Self>, request: Request) -> Result<(), ClusterError> {
        match self.call_leader(request).await? {
            Response::Done => Ok(()),
            _ => Err(ClusterError::Protocol("unexpected answer".into())),
        }
    }

    pub(crate) async fn rotate_token(
        self: &Arc<Self>,
        role: Role,
    ) -> Result<JoinToken, ClusterError> {
        match self.call_leader(Request::RotateToken { role }).await? {
            Response::Token(t) => Ok(t),
            _ => Err(ClusterError::Protocol("unexpected answer to rotate".into())),
        }
    }

    pub(crate) async fn promote(self: &Arc<Self>, node_id: &str) -> Result<(), ClusterError> {
        self.call_done(Request::Promote {
            node_id: node_id.to_string(),
        })
        .await
    }

    pub(crate) async fn demote(self: &Arc<Self>, node_id: &str) -> Result<(), ClusterError> {
        self.call_done(Request::Demote {
            node_id: node_id.to_string(),
        })
        .await
    }

    pub(crate) async fn remove_node(
        self: &Arc<Self>,
        node_id: &str,
        force: bool,
    ) -> Result<(), ClusterError> {
        if node_id == self.node_id {
            let last = self.core().is_some_and(|c| {
                let st = c.store.status();
                st.voters.len() <= 1 && st.voters.contains_key(&c.raft_id)
            });
            return Err(if last {
                ClusterError::LastManager
            } else {
                ClusterError::RemoveSelf
            });
        }
        self.call_done(Request::RemoveNode {
            node_id: node_id.to_string(),
            force,
        })
        .await
    }

    /// Asks the leader to add this (new) manager to the Raft group, retrying for a while.
    pub(super) async fn announce_manager(self: &Arc<Self>) -> Result<(), ClusterError> {
        let advertise = lock(&self.local).advertise.to_string();
        let deadline = Instant::now() + 3 * self.timings.request_timeout;
        loop {
            match self
                .call_done(Request::ManagerReady {
                    advertise: advertise.clone(),
                })
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "adding this manager to the Raft group; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The state this node's executor works from (see
    /// [`node_view`](super::handlers::node_view)); no view when the store is still at
    /// `since`. With `applied`, tells the leader the store version this node's
    /// dataplane follows and brings back how far every node's has come.
    pub(crate) async fn node_state(
        self: &Arc<Self>,
        since: u64,
        applied: Option<u64>,
    ) -> Result<NodeFetch, ClusterError> {
        match self
            .call_leader(Request::NodeState { since, applied })
            .await?
        {
            Response::NodeState(s) => Ok(NodeFetch {
                view: s.map(|s| *s),
                withdrawal: None,
            }),
            Response::NodeStateWithdrawal { view, withdrawal } => Ok(NodeFetch {
                view: view.map(|s| *s),
                withdrawal: Some(withdrawal),
            }),
            _ => Err(ClusterError::Protocol(
                "unexpected answer to node_state".into(),
            )),
        }
    }

    pub(crate) async fn report_tasks(
        self: &Arc<Self>,
        updates: Vec<crate::store::TaskStatusUpdate>,
    ) -> Result<(), ClusterError> {
        self.call_done(Request::ReportTasks { updates }).await
    }

    /// Registers the key this node's gossip run signs with.
    pub(crate) async fn register_gossip(
        self: &Arc<Self>,
        gossip: crate::store::GossipIdentity,
    ) -> Result<(), ClusterError> {
        self.call_done(Request::RegisterGossip { gossip }).await
    }

    /// Declares this node's containers on attachable networks, whole.
    pub(crate) async fn set_attachments(
        self: &Arc<Self>,
        wanted: Vec<crate::store::WantedAttachment>,
    ) -> Result<(), ClusterError> {
        self.call_done(Request::SetAttachments { wanted }).await
    }

    /// The swarm's networks, from the leader.
    pub(crate) async fn networks(
        self: &Arc<Self>,
    ) -> Result<Vec<crate::store::Network>, ClusterError> {
        match self.call_leader(Request::Networks).await? {
            Response::Networks(n) => Ok(n),
            _ => Err(ClusterError::Protocol(
                "unexpected answer to networks".into(),
            )),
        }
    }
}
