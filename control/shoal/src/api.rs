//! The agent's local API: what `shoal swarm|node` asks the agent on this host, over a
//! unix socket with owner-only permissions.
//!
//! Wire format: JSON lines. The client writes one [`Request`] as one line; the agent
//! answers with one [`Response`] line (`{"ok":{...}}` or `{"error":{"message":...}}`).
//! A connection may carry several requests, one after the other.
//!
//! - [`server`]: binding the socket (0600, stale socket replaced) and serving a
//!   [`server::Backend`].
//! - [`client`]: the CLI's blocking client.
//! - `service_changes`: what `service update` asks to change ([`ServiceChanges`]).
//! - `container_changes`: a service's container settings, read and checked alike by
//!   the CLI and the manager, and their update flags ([`ContainerChanges`]).
//! - [`resolve_node`]: node references (ID, unique ID prefix, hostname), shared by
//!   every backend.

pub mod client;
mod container_changes;
pub mod server;
mod service_changes;

use std::{collections::BTreeMap, fmt};

pub use container_changes::{
    check_alias, check_container_options, effective_capabilities, normalize_capability, parse_host,
    parse_sysctl, parse_ulimit, ContainerChanges,
};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
pub use service_changes::{
    HealthChanges, RestartChanges, ServiceChanges, UpdateConfigChanges, MAX_FAILURE_RATIO_PPM,
};
pub use shoal_cluster::registry_auth::RegistryCredentials;
pub use shoal_cluster::store::{Availability, NodeResources, NodeStatus};
use shoal_cluster::store::{DataObject, Network, ObjectKind, Service, ServiceSpec, Task};

/// Default path of the agent's API socket.
pub const DEFAULT_API_SOCKET: &str = "/run/shoal/shoal.sock";

/// Longest request or response line accepted (a `node ls` of a big cluster fits).
pub const MAX_LINE: usize = 16 << 20;

/// A string that must not reach logs: a join token or an unlock key. Serialized as
/// itself; `Debug` and `Display` show only that it is there.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }

    /// The secret itself: for the join call and the `join-token` output only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A node's role, as the CLI names it (`join-token worker|manager`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Worker,
    Manager,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Worker => "worker",
            NodeRole::Manager => "manager",
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the managers think of a manager's Raft membership (`node ls` MANAGER STATUS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagerStatus {
    Leader,
    Reachable,
    Unreachable,
}

impl ManagerStatus {
    /// As `node ls` shows it.
    pub fn title(self) -> &'static str {
        match self {
            ManagerStatus::Leader => "Leader",
            ManagerStatus::Reachable => "Reachable",
            ManagerStatus::Unreachable => "Unreachable",
        }
    }
}

/// One request to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    SwarmInit {
        /// IP, IP:PORT or interface name; default: the underlay interface's IPv4 and
        /// the listen port.
        #[serde(default)]
        advertise_addr: Option<String>,
        /// ADDR[:PORT]; default: the agent's `cluster_listen` (0.0.0.0:2377).
        #[serde(default)]
        listen_addr: Option<String>,
        /// IPv4 or interface name of the node's VXLAN traffic; default: the advertise
        /// address.
        #[serde(default)]
        data_path_addr: Option<String>,
        #[serde(default)]
        data_path_port: Option<u16>,
        #[serde(default)]
        default_addr_pool: Vec<Ipv4Net>,
        #[serde(default)]
        default_addr_pool_mask_length: Option<u8>,
        /// `--autolock`: managers are locked after a restart until `swarm unlock`.
        #[serde(default)]
        autolock: bool,
        /// `--force-new-cluster`: on a manager, make it the only manager of its swarm,
        /// with all the state it holds (a swarm that lost its majority for good).
        #[serde(default)]
        force_new_cluster: bool,
    },
    SwarmJoin {
        token: Secret,
        /// The manager, ADDR[:PORT] (default port 2377).
        remote: String,
        #[serde(default)]
        advertise_addr: Option<String>,
        #[serde(default)]
        listen_addr: Option<String>,
        #[serde(default)]
        data_path_addr: Option<String>,
    },
    JoinToken {
        role: NodeRole,
        #[serde(default)]
        rotate: bool,
    },
    SwarmLeave {
        #[serde(default)]
        force: bool,
    },
    /// `swarm update`: `autolock` Some turns it on or off (None changes nothing).
    SwarmUpdate {
        #[serde(default)]
        autolock: Option<bool>,
    },
    /// `swarm unlock`: the unlock key of a locked manager.
    SwarmUnlock {
        key: Secret,
    },
    /// `swarm unlock-key [--rotate]`.
    UnlockKey {
        #[serde(default)]
        rotate: bool,
    },
    /// `swarm ca [--rotate]`: the root CA and how far a rotation is; `rotate` starts one.
    SwarmCa {
        #[serde(default)]
        rotate: bool,
    },
    /// `shoal info`: this node's view of the swarm and its dataplane.
    Info,
    /// This node's place in the swarm (inactive, locked or active; manager or not),
    /// known without reading the cluster's state: what the Engine API checks on every
    /// request.
    LocalRole,
    NodeLs,
    NodeInspect {
        nodes: Vec<String>,
    },
    NodeRm {
        nodes: Vec<String>,
        #[serde(default)]
        force: bool,
    },
    NodePromote {
        nodes: Vec<String>,
    },
    NodeDemote {
        nodes: Vec<String>,
    },
    NodeUpdate {
        node: String,
        #[serde(default)]
        availability: Option<Availability>,
        #[serde(default)]
        label_add: BTreeMap<String, String>,
        #[serde(default)]
        label_rm: Vec<String>,
        /// `--rotate-wireguard-key`: the node makes a new WireGuard key.
        #[serde(default)]
        rotate_wireguard_key: bool,
    },
    /// `service create`: `spec.networks` holds network names or IDs as given. The
    /// manager pins the image's tag to its digest unless `no_resolve_image`.
    ServiceCreate {
        spec: Box<ServiceSpec>,
        #[serde(default)]
        no_resolve_image: bool,
        /// `--with-registry-auth`: the user's credentials for the image's registry.
        #[serde(default)]
        registry_auth: Option<Box<RegistryCredentials>>,
    },
    /// What `service ls|ps|inspect` and the progress display read: the services named
    /// (all when empty), their tasks, and the nodes and networks they refer to.
    ServiceState {
        #[serde(default)]
        services: Vec<String>,
    },
    ServiceScale {
        scales: Vec<(String, u64)>,
    },
    ServiceRm {
        services: Vec<String>,
    },
    /// `service update` and `service rollback`: the changes to make (see
    /// [`ServiceChanges`]). A new image is pinned to its digest unless
    /// `no_resolve_image`; `registry_auth` replaces the service's credentials (None keeps
    /// them).
    ServiceUpdate {
        service: String,
        changes: Box<ServiceChanges>,
        #[serde(default)]
        no_resolve_image: bool,
        #[serde(default)]
        registry_auth: Option<Box<RegistryCredentials>>,
    },
    /// The Engine API's service update: the whole new spec, as Docker sends it, applied
    /// only if the service is still at `version` (a compare-and-set: an update made
    /// from a stale read is refused). `force_update` above the service's replaces every
    /// task; an image is pinned as with [`Request::ServiceUpdate`].
    ServiceSetSpec {
        service: String,
        spec: Box<ServiceSpec>,
        version: u64,
        #[serde(default)]
        force_update: u64,
        /// The spec was read from Docker's `ServiceSpec`, which has no field for
        /// shoal's own settings (`--privileged`, `--device`): the service keeps its.
        /// False (`stack deploy`): the spec is the whole truth.
        #[serde(default)]
        keep_shoal_fields: bool,
        #[serde(default)]
        no_resolve_image: bool,
        #[serde(default)]
        registry_auth: Option<Box<RegistryCredentials>>,
    },
    /// `service logs`: `service` is a service's name or ID, or a task's ID.
    ServiceLogs {
        service: String,
        #[serde(default)]
        tail: Option<String>,
        /// Only lines since this Unix time.
        #[serde(default)]
        since: Option<i64>,
        #[serde(default)]
        no_task_ids: bool,
        #[serde(default)]
        no_trunc: bool,
        #[serde(default)]
        raw: bool,
        /// `-f`: the answer is a stream of [`Reply::ServiceLogs`], one per batch of
        /// lines, until the client hangs up ([`server::Backend::stream`]).
        #[serde(default)]
        follow: bool,
    },
    NetworkCreate {
        name: String,
        #[serde(default)]
        driver: Option<String>,
        #[serde(default)]
        subnet: Option<Ipv4Net>,
        #[serde(default)]
        gateway: Option<std::net::Ipv4Addr>,
        #[serde(default)]
        attachable: bool,
        #[serde(default)]
        options: BTreeMap<String, String>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
    NetworkLs,
    /// The swarm's networks, asked of the leader: on workers too (the Engine API
    /// resolves `docker run --network NET` with them).
    SwarmNetworks,
    NetworkInspect {
        networks: Vec<String>,
    },
    NetworkRm {
        networks: Vec<String>,
    },
    /// `secret create` / `config create` (`kind`: secret or config); the data in base64.
    ObjectCreate {
        kind: ObjectKind,
        name: String,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        data_base64: Secret,
    },
    /// `secret ls|inspect` / `config ls|inspect`: the ones named (all when empty).
    /// A secret's data is never in the reply.
    ObjectState {
        kind: ObjectKind,
        #[serde(default)]
        objects: Vec<String>,
    },
    /// `secret rm` / `config rm` (refused while a service uses one).
    ObjectRm {
        kind: ObjectKind,
        objects: Vec<String>,
    },
    /// The Engine API's secret or config update (and `stack deploy`'s of the stack's
    /// own): only the labels change (as in Swarm), and only from the version the client
    /// read (else "update out of sequence"). Data sent (base64) must be the stored data
    /// ("only updates to Labels are allowed"); unchanged labels change nothing.
    ObjectSetLabels {
        kind: ObjectKind,
        object: String,
        version: u64,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_base64: Option<Secret>,
    },
}

impl Request {
    /// Whether the answer is a stream of replies ([`server::Backend::stream`]) rather
    /// than one.
    pub fn streams(&self) -> bool {
        matches!(self, Request::ServiceLogs { follow: true, .. })
    }

    /// The request's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::SwarmInit { .. } => "swarm init",
            Request::SwarmJoin { .. } => "swarm join",
            Request::JoinToken { .. } => "swarm join-token",
            Request::SwarmLeave { .. } => "swarm leave",
            Request::SwarmUpdate { .. } => "swarm update",
            Request::SwarmUnlock { .. } => "swarm unlock",
            Request::UnlockKey { .. } => "swarm unlock-key",
            Request::SwarmCa { .. } => "swarm ca",
            Request::Info => "info",
            Request::LocalRole => "local role",
            Request::NodeLs => "node ls",
            Request::NodeInspect { .. } => "node inspect",
            Request::NodeRm { .. } => "node rm",
            Request::NodePromote { .. } => "node promote",
            Request::NodeDemote { .. } => "node demote",
            Request::NodeUpdate { .. } => "node update",
            Request::ServiceCreate { .. } => "service create",
            Request::ServiceState { .. } => "service state",
            Request::ServiceScale { .. } => "service scale",
            Request::ServiceRm { .. } => "service rm",
            Request::ServiceUpdate { .. } => "service update",
            Request::ServiceSetSpec { .. } => "service update (Engine API)",
            Request::ServiceLogs { .. } => "service logs",
            Request::NetworkCreate { .. } => "network create",
            Request::NetworkLs => "network ls",
            Request::SwarmNetworks => "swarm networks (Engine API)",
            Request::NetworkInspect { .. } => "network inspect",
            Request::NetworkRm { .. } => "network rm",
            Request::ObjectCreate { kind, .. } => match kind {
                ObjectKind::Config => "config create",
                _ => "secret create",
            },
            Request::ObjectState { kind, .. } => match kind {
                ObjectKind::Config => "config ls",
                _ => "secret ls",
            },
            Request::ObjectRm { kind, .. } => match kind {
                ObjectKind::Config => "config rm",
                _ => "secret rm",
            },
            Request::ObjectSetLabels { kind, .. } => match kind {
                ObjectKind::Config => "config update (Engine API)",
                _ => "secret update (Engine API)",
            },
        }
    }
}

/// What the agent answers to a request that worked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    SwarmInit {
        node_id: String,
        /// The worker join token.
        worker_token: Secret,
        /// Where joining nodes reach this manager, ADDR:PORT.
        manager_addr: String,
        /// The unlock key, with `--autolock`.
        #[serde(default)]
        unlock_key: Option<Secret>,
    },
    SwarmJoin {
        node_id: String,
        role: NodeRole,
        /// Things the operator should know (a clock far from the manager's).
        #[serde(default)]
        warnings: Vec<String>,
    },
    JoinToken {
        role: NodeRole,
        token: Secret,
        manager_addr: String,
        rotated: bool,
    },
    SwarmLeave,
    /// `swarm update`: the unlock key when autolock is (now) on.
    SwarmUpdated {
        #[serde(default)]
        unlock_key: Option<Secret>,
    },
    SwarmUnlocked,
    UnlockKey {
        key: Secret,
        rotated: bool,
    },
    SwarmCa(Box<CaView>),
    Info(Box<InfoView>),
    LocalRole {
        /// As [`InfoView::swarm`].
        swarm: String,
        is_manager: bool,
    },
    /// `node ls` and `node inspect`.
    Nodes {
        /// This node's ID.
        self_id: String,
        nodes: Vec<NodeView>,
        /// Things the operator should know (an even number of managers).
        #[serde(default)]
        warnings: Vec<String>,
    },
    /// `node rm|promote|demote|update`: the references as given, in order, each done.
    NodesChanged {
        nodes: Vec<String>,
    },
    ServiceCreated {
        id: String,
        #[serde(default)]
        warnings: Vec<String>,
    },
    ServiceState(Box<ServiceStateView>),
    /// `service scale|rm|update`: the references as given, in order, each done.
    ServicesChanged {
        services: Vec<String>,
        /// Things the operator should know (an image that could not be pinned).
        #[serde(default)]
        warnings: Vec<String>,
    },
    /// `service logs`: the lines (merged by time unless following), each with whose it
    /// is, and what could not be read.
    ServiceLogs {
        records: Vec<crate::service_logs::LogRecord>,
        #[serde(default)]
        warnings: Vec<String>,
    },
    NetworkCreated {
        id: String,
    },
    Networks {
        networks: Vec<Network>,
    },
    NetworksChanged {
        networks: Vec<String>,
    },
    ObjectCreated {
        id: String,
    },
    /// Secrets (their data left out) or configs.
    Objects {
        objects: Vec<DataObject>,
    },
    /// `secret rm` / `config rm`: the references as given, in order, each done.
    ObjectsChanged {
        objects: Vec<String>,
    },
}

/// `swarm ca`: the swarm's root CA, and how far a rotation to a new one has come.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaView {
    /// The root CA certificate every node trusts now (PEM): the old one until a
    /// rotation finished.
    pub root_pem: String,
    /// Its digest, `sha256:<hex>`.
    pub root_digest: String,
    /// The root a rotation moves to (the current root when none runs).
    pub desired_digest: String,
    /// Whether a rotation runs (certificates of the new root being issued).
    pub in_progress: bool,
    /// This request started the rotation.
    #[serde(default)]
    pub started: bool,
    /// The swarm's members.
    pub nodes: usize,
    /// Members whose certificate the desired root signed.
    pub certs_rotated: usize,
    /// Members that trust the desired root, and it alone.
    pub roots_rotated: usize,
    /// Members not there yet.
    #[serde(default)]
    pub pending: Vec<CaPendingNode>,
}

impl CaView {
    /// Every member holds a certificate of the desired root and trusts it alone.
    pub fn converged(&self) -> bool {
        !self.in_progress
            && self.root_digest == self.desired_digest
            && self.certs_rotated == self.nodes
            && self.roots_rotated == self.nodes
    }
}

/// A member a rotation still waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaPendingNode {
    pub id: String,
    pub hostname: String,
    /// The managers marked it Down: it follows only once it is back (or removed).
    pub down: bool,
}

/// `shoal info`: what `docker info` says of the swarm, and the node's dataplane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoView {
    /// "active", "inactive" or "locked".
    pub swarm: String,
    /// The rest of the swarm part exists only while the node is in a swarm.
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub is_manager: bool,
    #[serde(default)]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub managers: Option<usize>,
    #[serde(default)]
    pub nodes: Option<usize>,
    #[serde(default)]
    pub data_path_port: Option<u16>,
    #[serde(default)]
    pub default_addr_pools: Vec<Ipv4Net>,
    #[serde(default)]
    pub subnet_size: Option<u8>,
    /// The swarm object's version (its settings' last change), on managers.
    #[serde(default)]
    pub swarm_version: Option<u64>,
    /// The address other nodes reach this one at.
    #[serde(default)]
    pub node_addr: Option<String>,
    /// Where the managers listen, ADDR:PORT.
    #[serde(default)]
    pub manager_addrs: Vec<String>,
    /// Why the cluster's state could not be read (the node is in a swarm but cut off).
    #[serde(default)]
    pub error: Option<String>,
    /// How the node's dataplane runs (e.g. "XDP native on eth0"); None: no agent
    /// dataplane (tests of the cluster alone).
    #[serde(default)]
    pub dataplane: Option<String>,
    /// Whether the agent reaches the node's dockerd ("reachable", or since when and why
    /// not); None: the agent has no dockerd (tests of the cluster alone).
    #[serde(default)]
    pub engine: Option<String>,
    /// The agent's version.
    pub version: String,
}

/// Services with their tasks, for the CLI to lay out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStateView {
    pub services: Vec<Service>,
    pub tasks: Vec<Task>,
    /// Node ID -> hostname.
    pub nodes: BTreeMap<String, String>,
    pub networks: Vec<Network>,
    /// The manager's clock (ms since the epoch), for ages.
    pub now_ms: u64,
}

/// One node, as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    pub role: NodeRole,
    pub availability: Availability,
    pub status: NodeStatus,
    /// Managers only.
    #[serde(default)]
    pub manager_status: Option<ManagerStatus>,
    pub engine_version: String,
    /// The node's capacity, as its dockerd reports it (zero: not reported).
    #[serde(default)]
    pub resources: NodeResources,
    /// The node's control address (ADDR:PORT).
    pub addr: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Store version at the node's last change.
    #[serde(default)]
    pub version: u64,
}

/// A refusal or failure, as one line for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub message: String,
}

impl ApiError {
    pub fn new(message: impl Into<String>) -> Self {
        let message: String = message.into();
        ApiError {
            message: message.replace('\n', " "),
        }
    }
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error(ApiError),
}

impl From<Result<Reply, ApiError>> for Response {
    fn from(result: Result<Reply, ApiError>) -> Self {
        match result {
            Ok(reply) => Response::Ok(reply),
            Err(e) => Response::Error(e),
        }
    }
}

/// The ID of the node `reference` names among `nodes` (ID, hostname pairs), as Docker
/// resolves them: an exact ID, else an exact hostname, else a unique ID prefix. A
/// hostname or prefix that fits several nodes is an error naming them.
pub fn resolve_node<'a, I>(nodes: I, reference: &str) -> Result<String, ApiError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    if reference.is_empty() {
        return Err(ApiError::new("node reference must not be empty"));
    }
    let nodes: Vec<(&str, &str)> = nodes.into_iter().collect();
    if let Some((id, _)) = nodes.iter().find(|(id, _)| *id == reference) {
        return Ok((*id).to_owned());
    }
    let ambiguous = |what: &str, ids: Vec<&str>| {
        ApiError::new(format!(
            "node {reference} is ambiguous: {what} of {} nodes ({})",
            ids.len(),
            ids.join(", ")
        ))
    };
    let by_name: Vec<&str> = nodes
        .iter()
        .filter(|(_, host)| *host == reference)
        .map(|(id, _)| *id)
        .collect();
    match by_name.as_slice() {
        [id] => return Ok((*id).to_owned()),
        [] => {}
        _ => return Err(ambiguous("the hostname", by_name)),
    }
    let by_prefix: Vec<&str> = nodes
        .iter()
        .filter(|(id, _)| id.starts_with(reference))
        .map(|(id, _)| *id)
        .collect();
    match by_prefix.as_slice() {
        [id] => Ok((*id).to_owned()),
        [] => Err(ApiError::new(format!("node {reference} not found"))),
        _ => Err(ambiguous("an ID prefix", by_prefix)),
    }
}
