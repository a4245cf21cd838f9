//! `swarm ca [--rotate]` on a manager: the swarm's root CA, starting a rotation, and how
//! far it has come (the CLI asks again until it is over).
use super::*;
use crate::api::{CaPendingNode, CaView};

pub(super) async fn request(manager: &Manager, rotate: bool) -> Result<Reply, ApiError> {
    let started = if rotate {
        let desired = manager.rotate_ca().await.map_err(cluster_error)?;
        info!(%desired, "root CA rotation started");
        true
    } else {
        false
    };
    let status = manager.ca_status().await.map_err(cluster_error)?;
    let p = status.progress;
    let root_digest = status.root.digest().to_string();
    Ok(Reply::SwarmCa(Box::new(CaView {
        root_pem: status.root.pem(),
        desired_digest: p
            .desired
            .map(|d| d.to_string())
            .unwrap_or_else(|| root_digest.clone()),
        root_digest,
        in_progress: p.in_progress,
        started,
        nodes: p.nodes,
        certs_rotated: p.certs_rotated,
        roots_rotated: p.roots_rotated,
        pending: p
            .pending
            .into_iter()
            .map(|(id, hostname, down)| CaPendingNode { id, hostname, down })
            .collect(),
    })))
}
