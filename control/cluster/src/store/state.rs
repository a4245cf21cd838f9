//! The cluster state machine: plain data and the commands that change it.
//!
//! Everything here is deterministic: [`ClusterState::apply`] looks only at the state and
//! the command (no clock, no randomness, no I/O), so every manager that applies the same
//! log reaches the same state. Times, IDs and secrets are chosen by the proposer and
//! travel inside the command.
//!
//! This file holds [`ClusterState`] itself, its queries and the kinds of its opaque
//! objects ([`ObjectKind`]); the rest, one kind each:
//! - `node`: nodes (role, availability, liveness status).
//! - `network`: network objects.
//! - `cluster`: cluster-wide settings, the gossip keys and the autolock unlock key.
//! - `removed`: the nodes whose certificates no longer count (removed, or left).
//! - `attachment`: containers that are not tasks on attachable networks.
//! - `ca`: the root CA a rotation made current, a rotation under way, and each node's
//!   certificate and trust as its heartbeats say.
//! - `command`: the commands, why one is refused, and what applying one did.
//! - `apply`: applying a command (the checks, then the change).

mod apply;
mod attachment;
mod ca;
mod cluster;
mod command;
mod network;
mod node;
mod removed;

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::data_object::DataObject;
use super::service::{Service, Task};

pub use attachment::{
    declared as declared_attachments, name_ok as attachment_name_ok, new_attachment_count,
    ContainerAttachment, WantedAttachment, MAX_ALIASES, MAX_NODE_ATTACHMENTS,
};
pub use ca::{CaProgress, CaRotation, NodeTls, Resealed, StoredCa};
pub use cluster::{ClusterSpec, GossipKey, RegistryKey, UnlockKey, MAX_GOSSIP_KEYS};
pub use command::{ApplyResult, Command, Rejection};
pub use network::Network;
pub use node::{Availability, GossipIdentity, Node, NodeResources, NodeStatus, Role};
pub use removed::RemovedNode;

/// The whole replicated cluster state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Raised by one for every accepted command; never goes down.
    pub version: u64,
    pub nodes: BTreeMap<String, Node>,
    pub networks: BTreeMap<String, Network>,
    /// Services by ID.
    #[serde(default, deserialize_with = "lenient_map")]
    pub services: BTreeMap<String, Service>,
    /// The join tokens (opaque here: the `token` module's type, serialized).
    pub tokens: Option<serde_json::Value>,
    /// Cluster-wide settings (set once by `swarm init`).
    #[serde(default)]
    pub cluster: Option<ClusterSpec>,
    /// Tasks by ID (current ones and the history `service ps` shows).
    #[serde(default, deserialize_with = "lenient_map")]
    pub tasks: BTreeMap<String, Task>,
    /// Containers that are not tasks attached to attachable networks, by attachment ID
    /// (see [`ContainerAttachment`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attachments: BTreeMap<String, ContainerAttachment>,
    /// Secrets and configs by ID (see [`DataObject`]). A node's view holds only the
    /// ones its live tasks use.
    #[serde(default, deserialize_with = "lenient_map")]
    pub secrets: BTreeMap<String, DataObject>,
    #[serde(default, deserialize_with = "lenient_map")]
    pub configs: BTreeMap<String, DataObject>,
    /// The gossip cluster keys, newest (the one nodes seal with) first, then the ones
    /// still accepted. Nodes receive them with their state over mutual TLS.
    #[serde(default)]
    pub gossip_keys: Vec<GossipKey>,
    /// The unlock key while autolock is on (managers only: never in a node's view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock_key: Option<UnlockKey>,
    /// The version at which autolock was last turned on or off or its key rotated (0:
    /// never): the managers rewrap their data keys to follow it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub autolock_version: u64,
    /// The version at which the swarm's own settings last changed (cluster settings,
    /// join tokens, autolock, the root CA): the swarm object's version, which an update
    /// of it must name (the Engine API's `Version.Index` of `/swarm`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub swarm_version: u64,
    /// Nodes removed from the cluster (`node rm`) or that left it (`swarm leave`), by
    /// node ID: their certificates are refused by every manager until they expire. In
    /// the store, so every manager refuses them, after a restart or a change of leader
    /// too.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub removed_nodes: BTreeMap<String, RemovedNode>,
    /// The root CA, with its key, once a rotation finished (`None`: the root made at
    /// `swarm init`, which every manager keeps in its own files). Managers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_ca: Option<StoredCa>,
    /// A rotation of the root CA under way (`swarm ca --rotate`). Managers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_rotation: Option<CaRotation>,
    /// The keys of services' registry credentials, newest (the one that seals) first,
    /// once a CA rotation took them off the CA key; empty: the key derived from the root
    /// CA's (see [`crate::registry_auth`]). Managers only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_keys: Vec<RegistryKey>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Reads a map of typed objects, dropping entries that do not parse: states written
/// before services and tasks had a shape kept them as opaque JSON.
fn lenient_map<'de, D, T>(d: D) -> Result<BTreeMap<String, T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|(k, v)| serde_json::from_value(v).ok().map(|t| (k, t)))
        .collect())
}

/// Kinds of objects kept as opaque specs (see [`ClusterState::objects`]). `Task` is
/// the legacy way to write a task (its spec must parse as a [`Task`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Task,
    Secret,
    Config,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Task => "task",
            ObjectKind::Secret => "secret",
            ObjectKind::Config => "config",
        })
    }
}

impl ClusterState {
    /// Whether an object of `kind` with `id` exists.
    pub fn has_object(&self, kind: ObjectKind, id: &str) -> bool {
        match kind {
            ObjectKind::Task => self.tasks.contains_key(id),
            ObjectKind::Secret => self.secrets.contains_key(id),
            ObjectKind::Config => self.configs.contains_key(id),
        }
    }

    /// The service named `name`.
    pub fn service_by_name(&self, name: &str) -> Option<&Service> {
        self.services.values().find(|s| s.spec.name == name)
    }

    /// The secrets (`ObjectKind::Secret`) or configs (`ObjectKind::Config`).
    pub fn data_objects(&self, kind: ObjectKind) -> &BTreeMap<String, DataObject> {
        match kind {
            ObjectKind::Config => &self.configs,
            ObjectKind::Secret | ObjectKind::Task => &self.secrets,
        }
    }

    /// The tasks of service `id`.
    pub fn service_tasks<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.values().filter(move |t| t.service_id == id)
    }
}

#[cfg(test)]
mod tests;
