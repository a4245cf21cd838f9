//! `swarm init --force-new-cluster` on a manager: it becomes the only manager of its
//! swarm, with the state it holds (see `Manager::force_new_cluster`).

use super::{cluster_error, ClusterAgent, Role};
use crate::api::{ApiError, Reply, Secret};
use shoal_cluster::pki;

impl ClusterAgent {
    /// Forces the new cluster on this node's manager role. `kept`: the `swarm init`
    /// settings a forced cluster keeps as they are, and whether each was given (a given
    /// one is refused, naming it); `advertise_addr` may only name the current address.
    pub(super) async fn force_new_cluster(
        &self,
        role: Option<&Role>,
        advertise_addr: Option<&str>,
        kept: &[(&str, bool)],
    ) -> Result<Reply, ApiError> {
        if let Some(e) = role.and_then(Self::unavailable) {
            return Err(e);
        }
        let manager = match role {
            Some(Role::Manager(m)) if m.role() == pki::Role::Manager => m.clone(),
            _ => {
                return Err(ApiError::new(
                    "--force-new-cluster runs on a manager: this node is a worker",
                ))
            }
        };
        if let Some((flag, _)) = kept.iter().find(|(_, given)| *given) {
            return Err(ApiError::new(format!(
                "--force-new-cluster keeps this manager's settings: {flag} cannot be given with it"
            )));
        }
        let current = manager.advertise_addr();
        if let Some(a) = advertise_addr {
            let asked = self.advertise_address(Some(a), current)?;
            if asked.ip() != current.ip() {
                return Err(ApiError::new(format!(
                    "--force-new-cluster keeps this manager's address {current}: --advertise-addr {a} names another"
                )));
            }
        }
        manager.force_new_cluster().await.map_err(cluster_error)?;
        let token = manager
            .join_token(pki::Role::Worker)
            .await
            .map_err(cluster_error)?;
        let node_id = manager.node_id().to_owned();
        tracing::warn!(
            node_id,
            "forced a new cluster: this node is the swarm's only manager"
        );
        Ok(Reply::SwarmInit {
            node_id,
            worker_token: Secret::new(token.expose_secret()),
            manager_addr: current.to_string(),
            unlock_key: None,
        })
    }
}
