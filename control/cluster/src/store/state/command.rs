//! The commands that change the state, why one is refused, and what applying one did.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    Availability, CaRotation, ClusterSpec, GossipIdentity, GossipKey, Network, Node, NodeStatus,
    NodeTls, ObjectKind, RegistryKey, Resealed, Role, UnlockKey,
};
use crate::pki::CaDigest;
use crate::store::service::{Service, Task, TaskStatusUpdate};

/// A change to the cluster state. Only these change it, and only through the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Add a node or replace it whole (same ID).
    UpsertNode {
        node: Node,
    },
    RemoveNode {
        id: String,
    },
    /// Revokes node `id`'s certificates (it was removed or left): every manager refuses
    /// them from now on, until `until_ms`. Entries whose `until_ms` is before `at_ms`
    /// are pruned on the way (no certificate of theirs can still be valid).
    RevokeNode {
        id: String,
        at_ms: u64,
        until_ms: u64,
    },
    SetAvailability {
        id: String,
        availability: Availability,
    },
    /// Promote or demote. The Raft membership change is separate (see `StoreNode`).
    SetRole {
        id: String,
        role: Role,
        raft_id: Option<u64>,
    },
    SetStatus {
        id: String,
        status: NodeStatus,
    },
    /// Node `id`'s gossip run signs with `gossip` from now on (the node registered it).
    SetNodeGossip {
        id: String,
        gossip: GossipIdentity,
    },
    /// `node update --label-add/--label-rm`: `remove` first, then `add`.
    UpdateNodeLabels {
        id: String,
        #[serde(default)]
        add: BTreeMap<String, String>,
        #[serde(default)]
        remove: Vec<String>,
    },
    /// `node update --rotate-wireguard-key`: node `id` makes a new WireGuard key (its
    /// rotation count goes up by one).
    RotateWireguardKey {
        id: String,
    },
    /// Add a network or replace it whole (same ID); names stay unique.
    UpsertNetwork {
        network: Network,
    },
    RemoveNetwork {
        id: String,
    },
    /// Legacy form of a whole service as JSON; applied only if `spec` parses as a
    /// [`Service`] with this ID.
    UpsertService {
        id: String,
        spec: serde_json::Value,
    },
    /// A new service (the ID and name must be unused, its networks must exist).
    CreateService {
        service: Box<Service>,
    },
    /// Replaces an existing service's spec and allocations (same ID).
    UpdateService {
        service: Box<Service>,
    },
    /// [`Command::UpdateService`] from a writer that read the service at `version`
    /// (the scheduler): refused if the service changed since, so it never overwrites
    /// an operator's update it had not seen.
    UpdateServiceIfUnchanged {
        service: Box<Service>,
        version: u64,
    },
    /// Removes the service; its tasks are told to go (desired state `remove`).
    RemoveService {
        id: String,
    },
    /// Adds or replaces tasks (the scheduler's changes, in one entry).
    PutTasks {
        tasks: Vec<Task>,
    },
    /// Deletes tasks; unknown IDs are skipped.
    RemoveTasks {
        ids: Vec<String>,
    },
    /// A node's executor reports what its tasks did. Updates for tasks not assigned to
    /// `node_id`, unknown tasks and backward moves are skipped.
    UpdateTaskStatus {
        node_id: String,
        updates: Vec<TaskStatusUpdate>,
    },
    /// Node `node_id`'s containers on attachable networks are `wanted` from now on:
    /// attachments it no longer wants are removed (their addresses free), new ones
    /// added with the IDs in `new_ids` (one per new entry, in order), kept ones keep
    /// their ID and address. Refused if a network is unknown or not attachable.
    SetNodeAttachments {
        node_id: String,
        wanted: Vec<super::WantedAttachment>,
        #[serde(default)]
        new_ids: Vec<String>,
    },
    /// The scheduler's addresses for attachments that had none (`(ID, address)`);
    /// attachments gone meanwhile, or that have one already, are skipped.
    SetAttachmentAddresses {
        addresses: Vec<(String, ipnet::Ipv4Net)>,
    },
    SetTokens {
        tokens: serde_json::Value,
    },
    SetCluster {
        cluster: ClusterSpec,
    },
    /// Replaces the gossip keys (first: the primary): 1 to
    /// [`MAX_GOSSIP_KEYS`](super::MAX_GOSSIP_KEYS) keys with distinct IDs and
    /// 64-hex-digit secrets.
    SetGossipKeys {
        keys: Vec<GossipKey>,
    },
    /// Autolock on with `unlock_key` (a new one rotates it), or off (`None`). The
    /// key must be 32 bytes in base64.
    SetAutolock {
        #[serde(default)]
        unlock_key: Option<UnlockKey>,
    },
    /// What a node's heartbeat says of its certificate and trust.
    SetNodeTls {
        id: String,
        tls: NodeTls,
    },
    /// `swarm ca --rotate`: the managers sign with `rotation.to` from now on, and nodes
    /// trust it beside the current root until [`Command::FinishCaRotation`]. Refused
    /// while another rotation runs, or when `rotation.from_pem` is not the current root.
    /// `registry_keys` (1 or 2, newest first) replace the credentials' keys, and the
    /// credentials in `resealed` are replaced where they are unchanged.
    StartCaRotation {
        rotation: Box<CaRotation>,
        registry_keys: Vec<RegistryKey>,
        #[serde(default)]
        resealed: Vec<Resealed>,
    },
    /// Every member holds a certificate of the rotation's new root (`to`): it becomes
    /// the root, and the join tokens (`tokens`) name it.
    FinishCaRotation {
        to: CaDigest,
        tokens: serde_json::Value,
    },
    /// A task (legacy form, the spec must parse as a [`Task`]), or a secret or config
    /// (the spec must parse as a [`DataObject`](crate::store::DataObject) with this
    /// ID and a name unused by another of its kind; an existing one keeps its data: only
    /// its labels may change, as in Swarm).
    UpsertObject {
        kind: ObjectKind,
        id: String,
        spec: serde_json::Value,
    },
    /// Removes a task, or a secret or config no service (nor a task still running)
    /// uses.
    RemoveObject {
        kind: ObjectKind,
        id: String,
    },
}

/// Why a command was refused. A refused command changes nothing, not even the version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    #[error("no node with ID {id}")]
    UnknownNode { id: String },
    #[error("no network with ID {id}")]
    UnknownNetwork { id: String },
    #[error("no service with ID {id}")]
    UnknownService { id: String },
    #[error("no {kind} with ID {id}")]
    UnknownObject { kind: ObjectKind, id: String },
    #[error("a network named {name:?} already exists (ID {existing_id})")]
    DuplicateNetworkName { name: String, existing_id: String },
    #[error("invalid {what}: {detail}")]
    Invalid { what: String, detail: String },
    #[error("a service named {name:?} already exists (ID {existing_id})")]
    DuplicateServiceName { name: String, existing_id: String },
    #[error("network {network} is in use by service {service}")]
    NetworkInUse { network: String, service: String },
    #[error("network {network} has active endpoints (container {container} on node {node})")]
    NetworkHasEndpoints {
        network: String,
        container: String,
        node: String,
    },
    #[error("{kind} {name} is in use by the following service: {service}")]
    ObjectInUse {
        kind: ObjectKind,
        name: String,
        service: String,
    },
    #[error("a {kind} named {name:?} already exists (ID {existing_id})")]
    DuplicateObjectName {
        kind: ObjectKind,
        name: String,
        existing_id: String,
    },
    #[error("service {id} changed since version {version}")]
    StaleService { id: String, version: u64 },
    #[error("port {port}/{protocol} is already published by service {service}")]
    PortInUse {
        port: u16,
        protocol: String,
        service: String,
    },
}

/// What applying one log entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ApplyResult {
    /// The command was accepted; the state is now at `version`.
    Applied { version: u64 },
    /// The command was refused; the state (still at `version`) is unchanged.
    Rejected { version: u64, rejection: Rejection },
}

impl ApplyResult {
    /// The store version after this entry.
    pub fn version(&self) -> u64 {
        match self {
            ApplyResult::Applied { version } | ApplyResult::Rejected { version, .. } => *version,
        }
    }

    /// `Ok(version)` if applied, the rejection otherwise.
    pub fn into_result(self) -> Result<u64, Rejection> {
        match self {
            ApplyResult::Applied { version } => Ok(version),
            ApplyResult::Rejected { rejection, .. } => Err(rejection),
        }
    }
}
