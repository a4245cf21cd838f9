//! Containers that are not tasks on attachable overlays (`docker run --network NET`
//! through a node's Engine API socket).
//!
//! The Engine API creates such a container on the node's dockerd without a network
//! (`none`: dockerd does not know the swarm's overlays), with the swarm network's
//! gateway as its resolver and a label ([`LABEL_ATTACH`]) naming the networks and
//! aliases it asked for. Everything after that is declared state: each executor pass
//! lists the running containers carrying the label ([`wanted`]) and, when that differs
//! from what the store holds for the node, declares the whole set to the managers; the
//! scheduler gives each attachment an address, and the node's declared state plumbs the
//! container as it does a task's sandbox (overlay endpoint, egress, DNS records, gossip).
//! A container that stops or goes is no longer listed, so its attachment and address go
//! at the next pass; a restarted agent finds its containers again the same way.

use std::collections::HashMap;

use bollard::{models::ContainerSummary, query_parameters::ListContainersOptions};
use serde::{Deserialize, Serialize};
use shoal_cluster::store::WantedAttachment;

/// The label on a container that asks for attachable overlays: JSON, a list of
/// [`AttachLabel`].
pub const LABEL_ATTACH: &str = "shoal.attach";

/// One network a container asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachLabel {
    /// The network's ID in the store.
    pub network: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// The label's value for `networks`.
pub fn label_value(networks: &[AttachLabel]) -> String {
    serde_json::to_string(networks).expect("plain data serializes")
}

/// What a running container carrying the label asks for; nothing when its label does
/// not parse.
fn asked(c: &ContainerSummary) -> Vec<WantedAttachment> {
    let (Some(id), Some(labels)) = (c.id.as_ref(), c.labels.as_ref()) else {
        return Vec::new();
    };
    let Some(networks) = labels
        .get(LABEL_ATTACH)
        .and_then(|v| serde_json::from_str::<Vec<AttachLabel>>(v).ok())
    else {
        return Vec::new();
    };
    let name = c
        .names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_owned())
        .unwrap_or_else(|| id.chars().take(12).collect());
    networks
        .into_iter()
        .map(|n| WantedAttachment {
            container_id: id.clone(),
            container_name: name.clone(),
            network_id: n.network,
            aliases: n.aliases,
        })
        .collect()
}

/// The attachments the node's running labelled containers ask for, sorted.
pub fn wanted(running: &[ContainerSummary]) -> Vec<WantedAttachment> {
    let mut out: Vec<WantedAttachment> = running.iter().flat_map(asked).collect();
    out.sort();
    out.dedup_by(|a, b| a.container_id == b.container_id && a.network_id == b.network_id);
    out
}

/// Lists the running containers carrying [`LABEL_ATTACH`].
pub async fn list_running(
    docker: &bollard::Docker,
) -> Result<Vec<ContainerSummary>, bollard::errors::Error> {
    docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![LABEL_ATTACH.to_string()],
            )])),
            ..Default::default()
        }))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str, name: &str, label: &str) -> ContainerSummary {
        ContainerSummary {
            id: Some(id.into()),
            names: Some(vec![format!("/{name}")]),
            labels: Some(HashMap::from([(
                LABEL_ATTACH.to_string(),
                label.to_string(),
            )])),
            ..Default::default()
        }
    }

    #[test]
    fn labelled_containers_ask_for_their_networks_and_bad_labels_for_nothing() {
        let label = label_value(&[
            AttachLabel {
                network: "net1".into(),
                aliases: vec!["db".into()],
            },
            AttachLabel {
                network: "net2".into(),
                aliases: vec![],
            },
        ]);
        let out = wanted(&[
            container("bbb", "c2", &label),
            container("aaa", "c1", &label),
            container("ccc", "c3", "not json"),
        ]);
        assert_eq!(
            out,
            vec![
                WantedAttachment {
                    container_id: "aaa".into(),
                    container_name: "c1".into(),
                    network_id: "net1".into(),
                    aliases: vec!["db".into()],
                },
                WantedAttachment {
                    container_id: "aaa".into(),
                    container_name: "c1".into(),
                    network_id: "net2".into(),
                    aliases: vec![],
                },
                WantedAttachment {
                    container_id: "bbb".into(),
                    container_name: "c2".into(),
                    network_id: "net1".into(),
                    aliases: vec!["db".into()],
                },
                WantedAttachment {
                    container_id: "bbb".into(),
                    container_name: "c2".into(),
                    network_id: "net2".into(),
                    aliases: vec![],
                },
            ]
        );
    }
}
