//! The requests only a manager answers (nodes, join tokens, and the services and
//! networks it hands to `services`), and how nodes are shown.
use super::*;

/// Requests only a manager answers.
pub(super) async fn manager_request(
    manager: &Manager,
    request: Request,
) -> Result<Reply, ApiError> {
    match request {
        Request::JoinToken { role, rotate } => {
            let pki_role = match role {
                NodeRole::Worker => pki::Role::Worker,
                NodeRole::Manager => pki::Role::Manager,
            };
            let token = if rotate {
                let t = manager
                    .rotate_token(pki_role)
                    .await
                    .map_err(cluster_error)?;
                info!(role = %role, "join token rotated");
                t
            } else {
                manager.join_token(pki_role).await.map_err(cluster_error)?
            };
            let state = manager.state().await.map_err(cluster_error)?;
            let manager_addr = state
                .nodes
                .get(manager.node_id())
                .map(|n| n.advertise_addr.clone())
                .unwrap_or_default();
            Ok(Reply::JoinToken {
                role,
                token: Secret::new(token.expose_secret()),
                manager_addr,
                rotated: rotate,
            })
        }
        Request::NodeLs => {
            let state = manager.state().await.map_err(cluster_error)?;
            Ok(nodes_reply(
                manager,
                &state,
                state.nodes.keys().cloned().collect(),
            ))
        }
        Request::NodeInspect { nodes } => {
            let state = manager.state().await.map_err(cluster_error)?;
            let ids = nodes
                .iter()
                .map(|r| resolve(manager, &state, r))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(nodes_reply(manager, &state, ids))
        }
        Request::NodeRm { nodes, force } => {
            each_node(manager, &nodes, |id| async move {
                manager.remove_node(&id, force).await.map_err(cluster_error)
            })
            .await
        }
        Request::NodePromote { nodes } => {
            each_node(manager, &nodes, |id| async move {
                manager.promote(&id).await.map_err(cluster_error)
            })
            .await
        }
        Request::NodeDemote { nodes } => {
            each_node(manager, &nodes, |id| async move {
                manager.demote(&id).await.map_err(cluster_error)
            })
            .await
        }
        Request::NodeUpdate {
            node,
            availability,
            label_add,
            label_rm,
            rotate_wireguard_key,
        } => {
            let state = manager.state().await.map_err(cluster_error)?;
            let id = resolve(manager, &state, &node)?;
            if let Some(availability) = availability {
                execute(
                    manager,
                    Command::SetAvailability {
                        id: id.clone(),
                        availability,
                    },
                )
                .await?;
            }
            if !label_add.is_empty() || !label_rm.is_empty() {
                execute(
                    manager,
                    Command::UpdateNodeLabels {
                        id: id.clone(),
                        add: label_add,
                        remove: label_rm,
                    },
                )
                .await?;
            }
            if rotate_wireguard_key {
                execute(manager, Command::RotateWireguardKey { id }).await?;
            }
            Ok(Reply::NodesChanged { nodes: vec![node] })
        }
        Request::SwarmInit { .. } | Request::SwarmJoin { .. } | Request::SwarmLeave { .. } => Err(
            ApiError::new("internal error: a swarm request reached the node handler"),
        ),
        other => Err(ApiError::new(format!(
            "internal error: {} reached the node handler",
            other.name()
        ))),
    }
}

/// Resolves every reference first (nothing changes if one is unknown), then does `f` to
/// each node in order; on a failure, says which were done.
pub(super) async fn each_node<'a, F, Fut>(
    manager: &'a Manager,
    references: &[String],
    f: F,
) -> Result<Reply, ApiError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), ApiError>> + 'a,
{
    let state = manager.state().await.map_err(cluster_error)?;
    let ids = references
        .iter()
        .map(|r| resolve(manager, &state, r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut done = Vec::new();
    for (reference, id) in references.iter().zip(ids) {
        if let Err(e) = f(id).await {
            let message = if done.is_empty() {
                format!("node {reference}: {e}")
            } else {
                format!(
                    "node {reference}: {e} (done before it: {})",
                    done.join(", ")
                )
            };
            return Err(ApiError::new(message));
        }
        done.push(reference.clone());
    }
    Ok(Reply::NodesChanged { nodes: done })
}

pub(super) async fn execute(manager: &Manager, command: Command) -> Result<(), ApiError> {
    manager
        .execute(command)
        .await
        .map_err(cluster_error)?
        .into_result()
        .map(|_| ())
        .map_err(|rejection| ApiError::new(rejection.to_string()))
}

/// A node reference (`self`, ID, hostname, unique ID prefix) to its ID.
pub(super) fn resolve(
    manager: &Manager,
    state: &ClusterState,
    reference: &str,
) -> Result<String, ApiError> {
    if reference == "self" {
        return Ok(manager.node_id().to_owned());
    }
    resolve_node(
        state
            .nodes
            .values()
            .map(|n| (n.id.as_str(), n.hostname.as_str())),
        reference,
    )
}

/// `node ls`/`node inspect`: the nodes with these IDs, as the CLI shows them.
pub(super) fn nodes_reply(manager: &Manager, state: &ClusterState, ids: Vec<String>) -> Reply {
    let statuses = manager.manager_status(state);
    let nodes = ids
        .iter()
        .filter_map(|id| state.nodes.get(id))
        .map(|n| node_view(n, statuses.get(&n.id).map(manager_status)))
        .collect();
    let managers = state
        .nodes
        .values()
        .filter(|n| n.role == store::Role::Manager)
        .count();
    let mut warnings = Vec::new();
    if managers > 1 && managers % 2 == 0 {
        warnings.push(format!(
            "the swarm has {managers} managers: an even number tolerates no more failures than {} managers and is likelier to lose quorum in a partition; promote or demote one",
            managers - 1
        ));
    }
    Reply::Nodes {
        self_id: manager.node_id().to_owned(),
        nodes,
        warnings,
    }
}

pub(super) fn manager_status(status: &manager::ManagerStatus) -> ManagerStatus {
    match status {
        manager::ManagerStatus::Leader => ManagerStatus::Leader,
        manager::ManagerStatus::Reachable => ManagerStatus::Reachable,
        manager::ManagerStatus::Unreachable => ManagerStatus::Unreachable,
    }
}

/// A stored node as the CLI shows it.
pub fn node_view(n: &store::Node, manager_status: Option<ManagerStatus>) -> NodeView {
    NodeView {
        id: n.id.clone(),
        hostname: n.hostname.clone(),
        role: match n.role {
            store::Role::Manager => NodeRole::Manager,
            store::Role::Worker => NodeRole::Worker,
        },
        availability: n.availability,
        status: n.status,
        manager_status: match n.role {
            store::Role::Manager => manager_status,
            store::Role::Worker => None,
        },
        engine_version: n.engine_version.clone(),
        resources: n.resources,
        addr: n.advertise_addr.clone(),
        labels: n.labels.clone(),
        version: n.version,
    }
}
