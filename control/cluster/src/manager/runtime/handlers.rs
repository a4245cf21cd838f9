//! The server side: one request in, one answer out. Checks the caller's certificate and
//! whether this member leads, then hands the request to its handler; the small ones are
//! answered here.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{lock, other, tokens_of, Core, Runtime};
use crate::manager::wire::{Reply, Request, Response, WireError};
use crate::manager::{NodeView, Role};
use crate::pki::PeerIdentity;
use crate::registry_auth::RegistryAuthKey;
use crate::store::{ApplyResult, ClusterState, Command, StoreError, TaskState};

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
                Request::NodeState { since, applied } => {
                    need(Role::Worker)?;
                    leader_only()?;
                    let state = core.store.read_stale();
                    let withdrawal = applied.map(|v| {
                        let term = core.store.status().term;
                        lock(&self.applied).report(term, peer.node_id(), v, &state)
                    });
                    let view = (state.version != since).then(|| {
                        let key = RegistryAuthKey::derive(core.ca());
                        Box::new(node_view(state, peer.node_id(), &key))
                    });
                    Ok(match withdrawal {
                        Some(withdrawal) => Response::NodeStateWithdrawal { view, withdrawal },
                        None => Response::NodeState(view),
                    })
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

/// What node `node_id` may see: the state without tokens, the unlock key, secrets,
/// configs and sealed registry credentials, and the credentials (opened) of the services it has a live task
/// of. Credentials that do not open are left out (logged): the node's pull then fails
/// with the registry's answer, which says what is wrong.
pub(super) fn node_view(mut state: ClusterState, node_id: &str, key: &RegistryAuthKey) -> NodeView {
    state.tokens = None;
    state.unlock_key = None;
    state.secrets.clear();
    state.configs.clear();
    let mut registry_auth = BTreeMap::new();
    for service in state.services.values_mut() {
        let Some(sealed) = service.registry_auth.take() else {
            continue;
        };
        let has_task = state.tasks.values().any(|t| {
            t.service_id == service.id
                && t.node_id.as_deref() == Some(node_id)
                && t.desired_state == TaskState::Running
                && !t.status.state.is_terminal()
        });
        if !has_task {
            continue;
        }
        match key.open(&service.id, &sealed) {
            Ok(creds) => {
                registry_auth.insert(service.id.clone(), creds);
            }
            Err(e) => {
                tracing::warn!(service = %service.spec.name, error = %e, "registry credentials")
            }
        }
    }
    NodeView {
        state,
        registry_auth,
    }
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
    use crate::registry_auth::RegistryCredentials;
    use crate::store::{Service, ServiceMode, ServiceSpec, Task, TaskStatus};

    fn service(id: &str, key: &RegistryAuthKey) -> Service {
        let creds = RegistryCredentials {
            server_address: "r:5000".into(),
            username: format!("user-{id}"),
            password: "pw".into(),
        };
        Service {
            id: id.into(),
            spec: ServiceSpec {
                name: id.into(),
                labels: Default::default(),
                image: "r:5000/app:1".into(),
                args: vec![],
                env: vec![],
                mode: ServiceMode::Replicated { replicas: 1 },
                networks: vec![],
                ports: vec![],
                endpoint_mode: Default::default(),
                constraints: vec![],
                healthcheck: None,
                restart_condition: Default::default(),
                restart_delay_ms: crate::store::DEFAULT_RESTART_DELAY_MS,
                restart_max_attempts: 0,
                restart_window_ms: 0,
                stop_grace_ms: crate::store::DEFAULT_STOP_GRACE_MS,
                container: Default::default(),
                network_aliases: Default::default(),
                update_config: Default::default(),
                rollback_config: Default::default(),
            },
            created_ms: 0,
            updated_ms: 0,
            endpoint: Default::default(),
            force_update: 0,
            registry_auth: Some(key.seal(id, &creds).unwrap()),
            previous_spec: None,
            update_status: None,
            job_status: None,
            version: 0,
        }
    }

    fn task(id: &str, service: &str, node: &str, state: TaskState) -> Task {
        Task {
            id: id.into(),
            service_id: service.into(),
            slot: 1,
            node_id: Some(node.into()),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state,
                ..Default::default()
            },
            networks: vec![],
            force_update: 0,
            spec: None,
            restarts: 0,
            restart_window_start_ms: 0,
            failures_in_a_row: 0,
            job_iteration: None,
            created_ms: 0,
            version: 0,
        }
    }

    #[test]
    fn credentials_go_only_to_nodes_with_a_live_task_and_never_sealed() {
        let key = RegistryAuthKey::from_secret(b"ca", "c1");
        let mut state = ClusterState::default();
        for id in ["s1", "s2"] {
            state.services.insert(id.into(), service(id, &key));
        }
        state
            .tasks
            .insert("t1".into(), task("t1", "s1", "n1", TaskState::Preparing));
        state
            .tasks
            .insert("t2".into(), task("t2", "s2", "n1", TaskState::Rejected));
        state
            .tasks
            .insert("t3".into(), task("t3", "s2", "n2", TaskState::Running));

        let n1 = node_view(state.clone(), "n1", &key);
        assert_eq!(n1.registry_auth.keys().collect::<Vec<_>>(), ["s1"]);
        assert_eq!(n1.registry_auth["s1"].username, "user-s1");
        assert!(n1
            .state
            .services
            .values()
            .all(|s| s.registry_auth.is_none()));

        let n2 = node_view(state.clone(), "n2", &key);
        assert_eq!(n2.registry_auth.keys().collect::<Vec<_>>(), ["s2"]);

        assert!(node_view(state.clone(), "n3", &key)
            .registry_auth
            .is_empty());
        // Another cluster's key opens nothing (and hands nothing).
        let other = RegistryAuthKey::from_secret(b"other", "c1");
        assert!(node_view(state, "n1", &other).registry_auth.is_empty());
    }
}
