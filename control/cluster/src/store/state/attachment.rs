//! Containers that are not tasks, attached to attachable overlays (`docker run
//! --network NET` on a node's Engine API socket).
//!
//! A node declares the whole set of its attachments ([`WantedAttachment`]: container,
//! network, aliases) from what its dockerd runs; the managers keep one
//! [`ContainerAttachment`] per node, container and network, and the scheduler gives each
//! one an address from the network's pool (the one allocator, `ipam`). The attachment
//! then flows to the node's declared state as a task's attachment does (local endpoint,
//! remote endpoints elsewhere, DNS records) and is gone from the store, its address
//! free again, once the node no longer declares it.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The most attachments one node may declare.
pub const MAX_NODE_ATTACHMENTS: usize = 1024;
/// The most aliases one attachment may carry.
pub const MAX_ALIASES: usize = 64;

/// One container's attachment to one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerAttachment {
    /// Chosen by the proposer.
    pub id: String,
    pub node_id: String,
    /// The container's ID on its node's dockerd.
    pub container_id: String,
    /// Its name there (without Docker's leading `/`): its DNS name on the network.
    pub container_name: String,
    pub network_id: String,
    /// `--network-alias`: more names on that network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Its address with the network's prefix length; None until the scheduler gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<Ipv4Net>,
    /// Store version at this object's last change (set by `apply`).
    #[serde(default)]
    pub version: u64,
}

/// What a node asks for: one container on one network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WantedAttachment {
    pub container_id: String,
    pub container_name: String,
    pub network_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl ContainerAttachment {
    /// What this attachment was asked as.
    pub fn wanted(&self) -> WantedAttachment {
        WantedAttachment {
            container_id: self.container_id.clone(),
            container_name: self.container_name.clone(),
            network_id: self.network_id.clone(),
            aliases: self.aliases.clone(),
        }
    }
}

/// Whether `name` can be a container's or alias's DNS name: 1 to 255 characters,
/// letters, digits, `_`, `-` and `.` (Docker's container names, and what aliases use).
pub fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Why `wanted` cannot be node `node_id`'s attachments (`new_ids`: one per new one).
pub(super) fn check_wanted(
    state: &super::ClusterState,
    node_id: &str,
    wanted: &[WantedAttachment],
    new_ids: &[String],
) -> Result<(), super::Rejection> {
    let invalid = |detail: String| super::Rejection::Invalid {
        what: "container attachment".into(),
        detail,
    };
    if wanted.len() > MAX_NODE_ATTACHMENTS {
        return Err(invalid(format!(
            "{} attachments; a node may have at most {MAX_NODE_ATTACHMENTS}",
            wanted.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for w in wanted {
        if w.container_id.is_empty() || w.container_id.len() > 128 {
            return Err(invalid(format!("container ID {:?}", w.container_id)));
        }
        if !name_ok(&w.container_name) {
            return Err(invalid(format!("container name {:?}", w.container_name)));
        }
        if w.aliases.len() > MAX_ALIASES {
            return Err(invalid(format!(
                "container {}: {} aliases, at most {MAX_ALIASES}",
                w.container_name,
                w.aliases.len()
            )));
        }
        if let Some(bad) = w.aliases.iter().find(|a| !name_ok(a)) {
            return Err(invalid(format!("alias {bad:?}")));
        }
        if !seen.insert((&w.container_id, &w.network_id)) {
            return Err(invalid(format!(
                "container {} is on network {} twice",
                w.container_name, w.network_id
            )));
        }
        let Some(n) = state.networks.get(&w.network_id) else {
            return Err(super::Rejection::UnknownNetwork {
                id: w.network_id.clone(),
            });
        };
        if !n.attachable || n.ingress || n.subnet.is_none() {
            return Err(invalid(format!(
                "network {} not manually attachable",
                n.name
            )));
        }
    }
    let existing = existing(&state.attachments, node_id);
    let new = wanted
        .iter()
        .filter(|w| !existing.contains_key(&(w.container_id.as_str(), w.network_id.as_str())))
        .count();
    if new_ids.len() != new || new_ids.iter().any(|id| id.is_empty()) {
        return Err(invalid(format!(
            "{} new attachments need as many IDs, {} given",
            new,
            new_ids.len()
        )));
    }
    if let Some(id) = new_ids
        .iter()
        .find(|id| state.attachments.contains_key(*id))
    {
        return Err(invalid(format!("attachment ID {id} is taken")));
    }
    Ok(())
}

/// Node `node_id`'s attachments by (container, network): their IDs.
fn existing<'a>(
    attachments: &'a std::collections::BTreeMap<String, ContainerAttachment>,
    node_id: &str,
) -> std::collections::BTreeMap<(&'a str, &'a str), &'a str> {
    attachments
        .values()
        .filter(|a| a.node_id == node_id)
        .map(|a| {
            (
                (a.container_id.as_str(), a.network_id.as_str()),
                a.id.as_str(),
            )
        })
        .collect()
}

/// Makes node `node_id`'s attachments `wanted` (checked by [`check_wanted`]).
pub(super) fn set_wanted(
    attachments: &mut std::collections::BTreeMap<String, ContainerAttachment>,
    node_id: &str,
    wanted: &[WantedAttachment],
    new_ids: &[String],
    version: u64,
) {
    let existing: std::collections::BTreeMap<(String, String), String> =
        existing(attachments, node_id)
            .into_iter()
            .map(|((c, n), id)| ((c.to_owned(), n.to_owned()), id.to_owned()))
            .collect();
    let mut keep = std::collections::BTreeSet::new();
    let mut ids = new_ids.iter();
    for w in wanted {
        match existing.get(&(w.container_id.clone(), w.network_id.clone())) {
            Some(id) => {
                keep.insert(id.clone());
                if let Some(a) = attachments.get_mut(id) {
                    if a.container_name != w.container_name || a.aliases != w.aliases {
                        a.container_name = w.container_name.clone();
                        a.aliases = w.aliases.clone();
                        a.version = version;
                    }
                }
            }
            None => {
                let Some(id) = ids.next() else {
                    continue;
                };
                keep.insert(id.clone());
                attachments.insert(
                    id.clone(),
                    ContainerAttachment {
                        id: id.clone(),
                        node_id: node_id.to_owned(),
                        container_id: w.container_id.clone(),
                        container_name: w.container_name.clone(),
                        network_id: w.network_id.clone(),
                        aliases: w.aliases.clone(),
                        addr: None,
                        version,
                    },
                );
            }
        }
    }
    attachments.retain(|id, a| a.node_id != node_id || keep.contains(id));
}

/// The IDs a [`super::Command::SetNodeAttachments`] of `wanted` needs: how many of them
/// are new for node `node_id` in `state`.
pub fn new_attachment_count(
    state: &super::ClusterState,
    node_id: &str,
    wanted: &[WantedAttachment],
) -> usize {
    let existing = existing(&state.attachments, node_id);
    wanted
        .iter()
        .filter(|w| !existing.contains_key(&(w.container_id.as_str(), w.network_id.as_str())))
        .count()
}

/// Node `node_id`'s attachments in `state` as it declared them, sorted.
pub fn declared(state: &super::ClusterState, node_id: &str) -> Vec<WantedAttachment> {
    let mut out: Vec<WantedAttachment> = state
        .attachments
        .values()
        .filter(|a| a.node_id == node_id)
        .map(ContainerAttachment::wanted)
        .collect();
    out.sort();
    out
}
