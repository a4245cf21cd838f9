//! The cluster state machine: plain data and the commands that change it.
//!
//! Everything here is deterministic: [`ClusterState::apply`] looks only at the state and
//! the command (no clock, no randomness, no I/O), so every manager that applies the same
//! log reaches the same state. Times, IDs and secrets are chosen by the proposer and
//! travel inside the command.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::service::{Service, Task, TaskState, TaskStatusUpdate};

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

/// Whether the scheduler may place tasks on a node (`node update --availability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Active,
    Pause,
    Drain,
}

/// What the managers last concluded about a node's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    #[default]
    Unknown,
    Ready,
    Down,
}

/// One node of the cluster, manager or worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The cluster-wide node ID (the one in the node's certificate).
    pub id: String,
    pub hostname: String,
    pub role: Role,
    #[serde(default)]
    pub availability: Availability,
    #[serde(default)]
    pub status: NodeStatus,
    /// Address other nodes reach this one at (control traffic, port 2377 on managers).
    pub advertise_addr: String,
    /// Address for data traffic (VXLAN), when it differs from `advertise_addr`.
    #[serde(default)]
    pub data_path_addr: Option<String>,
    /// The version of the node's Docker engine.
    #[serde(default)]
    pub engine_version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The node's member ID in the managers' Raft group, while it is a manager.
    #[serde(default)]
    pub raft_id: Option<u64>,
    /// Store version at this object's last change (set by `apply`, ignored on input).
    #[serde(default)]
    pub version: u64,
}

/// One network object (overlay networks, the `ingress` network).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    /// Unique among networks.
    pub name: String,
    /// `overlay` for now.
    pub driver: String,
    /// The network's subnet (CIDR), as allocated from the pools.
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    /// The VXLAN network identifier.
    #[serde(default)]
    pub vni: Option<u32>,
    #[serde(default)]
    pub ingress: bool,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub encrypted: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Store version at this object's last change (set by `apply`, ignored on input).
    #[serde(default)]
    pub version: u64,
}

/// Cluster-wide settings chosen at `swarm init` (`--default-addr-pool`,
/// `--default-addr-pool-mask-length`, `--data-path-port`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    /// The cluster ID (the `O=` of every certificate).
    pub id: String,
    /// Pools overlay subnets are allocated from (CIDRs).
    #[serde(default)]
    pub default_addr_pools: Vec<String>,
    /// The prefix length of each subnet taken from the pools.
    #[serde(default)]
    pub subnet_prefix_len: u8,
    /// The UDP port of VXLAN traffic.
    #[serde(default)]
    pub data_path_port: u16,
}

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
    /// Secrets and configs by ID, as opaque specs until their features exist (they
    /// change only through the log, like everything else here).
    #[serde(default)]
    pub secrets: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub configs: BTreeMap<String, serde_json::Value>,
    /// The gossip cluster keys, newest (the one nodes seal with) first, then the ones
    /// still accepted. Nodes receive them with their state over mutual TLS.
    #[serde(default)]
    pub gossip_keys: Vec<GossipKey>,
}

/// Most gossip keys kept at once (the primary, the previous and one more).
pub const MAX_GOSSIP_KEYS: usize = 3;

/// One gossip cluster key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKey {
    /// Names the key on the wire.
    pub id: u32,
    /// 32 bytes as 64 hex digits.
    pub secret: String,
    /// When the leader made it (ms since the epoch): the rotation timer's reference.
    pub created_ms: u64,
}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(
            f,
            "GossipKey {{ id: {}, created_ms: {}, secret: <redacted> }}",
            self.id, self.created_ms
        )
    }
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

    /// The tasks of service `id`.
    pub fn service_tasks<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.values().filter(move |t| t.service_id == id)
    }
}

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
    /// `node update --label-add/--label-rm`: `remove` first, then `add`.
    UpdateNodeLabels {
        id: String,
        #[serde(default)]
        add: BTreeMap<String, String>,
        #[serde(default)]
        remove: Vec<String>,
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
    SetTokens {
        tokens: serde_json::Value,
    },
    SetCluster {
        cluster: ClusterSpec,
    },
    /// Replaces the gossip keys (first: the primary): 1 to [`MAX_GOSSIP_KEYS`] keys with
    /// distinct IDs and 64-hex-digit secrets.
    SetGossipKeys {
        keys: Vec<GossipKey>,
    },
    UpsertObject {
        kind: ObjectKind,
        id: String,
        spec: serde_json::Value,
    },
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

impl ClusterState {
    /// Applies one command. Deterministic; a refusal leaves the state untouched.
    pub fn apply(&mut self, command: &Command) -> ApplyResult {
        match self.check(command) {
            Ok(()) => {
                self.version += 1;
                self.change(command);
                ApplyResult::Applied {
                    version: self.version,
                }
            }
            Err(rejection) => ApplyResult::Rejected {
                version: self.version,
                rejection,
            },
        }
    }

    /// Whether `command` may be applied, without changing anything.
    fn check(&self, command: &Command) -> Result<(), Rejection> {
        let node = |id: &String| {
            if self.nodes.contains_key(id) {
                Ok(())
            } else {
                Err(Rejection::UnknownNode { id: id.clone() })
            }
        };
        let nonempty = |what: &str, value: &str| {
            if value.is_empty() {
                Err(Rejection::Invalid {
                    what: what.to_string(),
                    detail: "must not be empty".to_string(),
                })
            } else {
                Ok(())
            }
        };
        match command {
            Command::UpsertNode { node } => nonempty("node ID", &node.id),
            Command::RemoveNode { id }
            | Command::SetAvailability { id, .. }
            | Command::SetRole { id, .. }
            | Command::SetStatus { id, .. }
            | Command::UpdateNodeLabels { id, .. } => node(id),
            Command::UpsertNetwork { network } => {
                nonempty("network ID", &network.id)?;
                nonempty("network name", &network.name)?;
                match self
                    .networks
                    .values()
                    .find(|n| n.name == network.name && n.id != network.id)
                {
                    Some(other) => Err(Rejection::DuplicateNetworkName {
                        name: network.name.clone(),
                        existing_id: other.id.clone(),
                    }),
                    None => Ok(()),
                }
            }
            Command::RemoveNetwork { id } => {
                if !self.networks.contains_key(id) {
                    return Err(Rejection::UnknownNetwork { id: id.clone() });
                }
                match self
                    .services
                    .values()
                    .find(|s| s.spec.networks.contains(id))
                {
                    Some(s) => Err(Rejection::NetworkInUse {
                        network: self.networks[id].name.clone(),
                        service: s.spec.name.clone(),
                    }),
                    None => Ok(()),
                }
            }
            Command::UpsertService { id, spec } => {
                nonempty("service ID", id)?;
                match serde_json::from_value::<Service>(spec.clone()) {
                    Ok(s) if s.id == *id => self.check_service(&s),
                    Ok(_) => Err(Rejection::Invalid {
                        what: "service".into(),
                        detail: "the spec's ID differs from the command's".into(),
                    }),
                    Err(e) => Err(Rejection::Invalid {
                        what: "service".into(),
                        detail: e.to_string(),
                    }),
                }
            }
            Command::CreateService { service } => {
                if self.services.contains_key(&service.id) {
                    return Err(Rejection::Invalid {
                        what: "service ID".into(),
                        detail: format!("{} is already used", service.id),
                    });
                }
                self.check_service(service)
            }
            Command::UpdateService { service } => {
                if !self.services.contains_key(&service.id) {
                    return Err(Rejection::UnknownService {
                        id: service.id.clone(),
                    });
                }
                self.check_service(service)
            }
            Command::PutTasks { tasks } => {
                for t in tasks {
                    nonempty("task ID", &t.id)?;
                    nonempty("task's service ID", &t.service_id)?;
                }
                Ok(())
            }
            Command::RemoveTasks { .. } | Command::UpdateTaskStatus { .. } => Ok(()),
            Command::RemoveService { id } => {
                if self.services.contains_key(id) {
                    Ok(())
                } else {
                    Err(Rejection::UnknownService { id: id.clone() })
                }
            }
            Command::SetTokens { .. } => Ok(()),
            Command::SetCluster { cluster } => nonempty("cluster ID", &cluster.id),
            Command::SetGossipKeys { keys } => {
                let invalid = |detail: &str| Rejection::Invalid {
                    what: "gossip keys".into(),
                    detail: detail.into(),
                };
                if keys.is_empty() || keys.len() > MAX_GOSSIP_KEYS {
                    return Err(invalid(&format!(
                        "1 to {MAX_GOSSIP_KEYS} keys, got {}",
                        keys.len()
                    )));
                }
                let mut ids: Vec<u32> = keys.iter().map(|k| k.id).collect();
                ids.sort_unstable();
                if ids.windows(2).any(|w| w[0] == w[1]) {
                    return Err(invalid("two keys share one ID"));
                }
                if keys.iter().any(|k| {
                    k.secret.len() != 64 || !k.secret.bytes().all(|b| b.is_ascii_hexdigit())
                }) {
                    return Err(invalid("a secret is not 64 hex digits"));
                }
                Ok(())
            }
            Command::UpsertObject { kind, id, spec } => {
                nonempty(&format!("{kind} ID"), id)?;
                if *kind == ObjectKind::Task {
                    match serde_json::from_value::<Task>(spec.clone()) {
                        Ok(t) if t.id == *id => Ok(()),
                        Ok(_) => Err(Rejection::Invalid {
                            what: "task".into(),
                            detail: "the spec's ID differs from the command's".into(),
                        }),
                        Err(e) => Err(Rejection::Invalid {
                            what: "task".into(),
                            detail: e.to_string(),
                        }),
                    }
                } else {
                    Ok(())
                }
            }
            Command::RemoveObject { kind, id } => {
                if self.has_object(*kind, id) {
                    Ok(())
                } else {
                    Err(Rejection::UnknownObject {
                        kind: *kind,
                        id: id.clone(),
                    })
                }
            }
        }
    }

    /// A service spec that may be stored: a name, unique; an image; existing networks;
    /// published ports not used by another service.
    fn check_service(&self, s: &Service) -> Result<(), Rejection> {
        let invalid = |what: &str, detail: String| {
            Err(Rejection::Invalid {
                what: what.to_string(),
                detail,
            })
        };
        if s.id.is_empty() {
            return invalid("service ID", "must not be empty".into());
        }
        if s.spec.name.is_empty() {
            return invalid("service name", "must not be empty".into());
        }
        if s.spec.image.is_empty() {
            return invalid("image", "must not be empty".into());
        }
        if let Some(other) = self
            .services
            .values()
            .find(|o| o.spec.name == s.spec.name && o.id != s.id)
        {
            return Err(Rejection::DuplicateServiceName {
                name: s.spec.name.clone(),
                existing_id: other.id.clone(),
            });
        }
        for n in &s.spec.networks {
            if !self.networks.contains_key(n) {
                return Err(Rejection::UnknownNetwork { id: n.clone() });
            }
        }
        for p in &s.spec.ports {
            if p.published == 0 || p.target == 0 {
                return invalid(
                    "port",
                    "published and target ports must be 1..=65535".into(),
                );
            }
            let clash = self.services.values().filter(|o| o.id != s.id).find(|o| {
                o.spec
                    .ports
                    .iter()
                    .any(|q| q.published == p.published && q.protocol == p.protocol)
            });
            if let Some(o) = clash {
                return Err(Rejection::PortInUse {
                    port: p.published,
                    protocol: format!("{:?}", p.protocol).to_lowercase(),
                    service: o.spec.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Makes the change; `check` has passed and `self.version` is the new version.
    fn change(&mut self, command: &Command) {
        let version = self.version;
        let mut touch = |id: &String, f: &mut dyn FnMut(&mut Node)| {
            if let Some(node) = self.nodes.get_mut(id) {
                f(node);
                node.version = version;
            }
        };
        match command {
            Command::UpsertNode { node } => {
                let mut node = node.clone();
                node.version = version;
                self.nodes.insert(node.id.clone(), node);
            }
            Command::RemoveNode { id } => {
                self.nodes.remove(id);
            }
            Command::SetAvailability { id, availability } => {
                touch(id, &mut |n| n.availability = *availability)
            }
            Command::SetRole { id, role, raft_id } => touch(id, &mut |n| {
                n.role = *role;
                n.raft_id = *raft_id;
            }),
            Command::SetStatus { id, status } => touch(id, &mut |n| n.status = *status),
            Command::UpdateNodeLabels { id, add, remove } => touch(id, &mut |n| {
                for key in remove {
                    n.labels.remove(key);
                }
                n.labels
                    .extend(add.iter().map(|(k, v)| (k.clone(), v.clone())));
            }),
            Command::UpsertNetwork { network } => {
                let mut network = network.clone();
                network.version = version;
                self.networks.insert(network.id.clone(), network);
            }
            Command::RemoveNetwork { id } => {
                self.networks.remove(id);
            }
            Command::UpsertService { spec, .. } => {
                if let Ok(mut service) = serde_json::from_value::<Service>(spec.clone()) {
                    service.version = version;
                    self.services.insert(service.id.clone(), service);
                }
            }
            Command::CreateService { service } | Command::UpdateService { service } => {
                let mut service = (**service).clone();
                service.version = version;
                self.services.insert(service.id.clone(), service);
            }
            Command::RemoveService { id } => {
                self.services.remove(id);
                for t in self.tasks.values_mut() {
                    if t.service_id == *id && t.desired_state < TaskState::Remove {
                        t.desired_state = TaskState::Remove;
                        t.version = version;
                    }
                }
            }
            Command::PutTasks { tasks } => {
                for t in tasks {
                    let mut t = t.clone();
                    t.version = version;
                    self.tasks.insert(t.id.clone(), t);
                }
            }
            Command::RemoveTasks { ids } => {
                for id in ids {
                    self.tasks.remove(id);
                }
            }
            Command::UpdateTaskStatus { node_id, updates } => {
                for u in updates {
                    if let Some(t) = self.tasks.get_mut(&u.task_id) {
                        if t.node_id.as_deref() == Some(node_id.as_str())
                            && u.status.state >= t.status.state
                        {
                            t.status = u.status.clone();
                            t.version = version;
                        }
                    }
                }
            }
            Command::SetTokens { tokens } => self.tokens = Some(tokens.clone()),
            Command::SetCluster { cluster } => self.cluster = Some(cluster.clone()),
            Command::SetGossipKeys { keys } => self.gossip_keys = keys.clone(),
            Command::UpsertObject { kind, id, spec } => match kind {
                ObjectKind::Task => {
                    if let Ok(mut t) = serde_json::from_value::<Task>(spec.clone()) {
                        t.version = version;
                        self.tasks.insert(id.clone(), t);
                    }
                }
                ObjectKind::Secret => {
                    self.secrets.insert(id.clone(), spec.clone());
                }
                ObjectKind::Config => {
                    self.configs.insert(id.clone(), spec.clone());
                }
            },
            Command::RemoveObject { kind, id } => match kind {
                ObjectKind::Task => {
                    self.tasks.remove(id);
                }
                ObjectKind::Secret => {
                    self.secrets.remove(id);
                }
                ObjectKind::Config => {
                    self.configs.remove(id);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, role: Role) -> Node {
        Node {
            id: id.to_string(),
            hostname: format!("host-{id}"),
            role,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            advertise_addr: "192.168.77.11:2377".to_string(),
            data_path_addr: None,
            engine_version: "27.0.1".to_string(),
            labels: BTreeMap::new(),
            raft_id: None,
            version: 0,
        }
    }

    fn network(id: &str, name: &str) -> Network {
        Network {
            id: id.to_string(),
            name: name.to_string(),
            driver: "overlay".to_string(),
            subnet: Some("10.0.0.0/24".to_string()),
            gateway: Some("10.0.0.1".to_string()),
            vni: Some(4096),
            ingress: false,
            attachable: false,
            internal: false,
            encrypted: false,
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
            version: 0,
        }
    }

    fn sample_service(id: &str, name: &str) -> Service {
        use super::super::service::*;
        Service {
            id: id.into(),
            spec: ServiceSpec {
                name: name.into(),
                labels: BTreeMap::new(),
                image: "shoal/web:1".into(),
                args: vec![],
                env: vec![],
                mode: ServiceMode::Replicated { replicas: 3 },
                networks: vec![],
                ports: vec![],
                endpoint_mode: EndpointMode::Vip,
                constraints: vec![],
                healthcheck: None,
                restart_condition: RestartCondition::Any,
            },
            created_ms: 0,
            updated_ms: 0,
            endpoint: Endpoint::default(),
            force_update: 0,
            version: 0,
        }
    }

    fn sample_task(id: &str) -> Task {
        Task {
            id: id.into(),
            service_id: "svc".into(),
            slot: 1,
            node_id: Some("n1".into()),
            desired_state: TaskState::Running,
            status: Default::default(),
            networks: vec![],
            force_update: 0,
            created_ms: 0,
            version: 0,
        }
    }

    #[test]
    fn services_keep_names_and_ports_unique_and_tasks_follow_their_service() {
        use super::super::service::*;
        let mut s = ClusterState::default();
        s.apply(&Command::UpsertNode {
            node: node("n1", Role::Worker),
        });
        s.apply(&Command::UpsertNetwork {
            network: network("net", "front"),
        });
        let mut web = sample_service("a", "web");
        web.spec.networks = vec!["net".into()];
        web.spec.ports = vec![PortConfig {
            protocol: Protocol::Tcp,
            target: 80,
            published: 8080,
            mode: PublishMode::Ingress,
        }];
        assert!(s
            .apply(&Command::CreateService {
                service: Box::new(web.clone())
            })
            .into_result()
            .is_ok());
        let before = s.clone();
        let dup = sample_service("b", "web");
        assert!(matches!(
            s.apply(&Command::CreateService {
                service: Box::new(dup)
            })
            .into_result(),
            Err(Rejection::DuplicateServiceName { .. })
        ));
        let mut clash = sample_service("c", "other");
        clash.spec.ports = web.spec.ports.clone();
        assert!(matches!(
            s.apply(&Command::CreateService {
                service: Box::new(clash)
            })
            .into_result(),
            Err(Rejection::PortInUse { port: 8080, .. })
        ));
        let mut nonet = sample_service("d", "nonet");
        nonet.spec.networks = vec!["nope".into()];
        assert!(matches!(
            s.apply(&Command::CreateService {
                service: Box::new(nonet)
            })
            .into_result(),
            Err(Rejection::UnknownNetwork { .. })
        ));
        assert!(matches!(
            s.apply(&Command::RemoveNetwork { id: "net".into() })
                .into_result(),
            Err(Rejection::NetworkInUse { .. })
        ));
        assert_eq!(s, before, "refusals change nothing");

        let mut t1 = sample_task("t1");
        t1.service_id = "a".into();
        let mut t2 = sample_task("t2");
        t2.service_id = "a".into();
        t2.node_id = Some("n2".into());
        s.apply(&Command::PutTasks {
            tasks: vec![t1, t2],
        });
        let running = TaskStatus {
            state: TaskState::Running,
            ..Default::default()
        };
        s.apply(&Command::UpdateTaskStatus {
            node_id: "n1".into(),
            updates: vec![
                TaskStatusUpdate {
                    task_id: "t1".into(),
                    status: running.clone(),
                },
                TaskStatusUpdate {
                    task_id: "t2".into(),
                    status: running.clone(),
                },
            ],
        });
        assert_eq!(s.tasks["t1"].status.state, TaskState::Running);
        assert_eq!(
            s.tasks["t2"].status.state,
            TaskState::New,
            "a node reports only its own tasks"
        );
        s.apply(&Command::UpdateTaskStatus {
            node_id: "n1".into(),
            updates: vec![TaskStatusUpdate {
                task_id: "t1".into(),
                status: TaskStatus {
                    state: TaskState::Starting,
                    ..Default::default()
                },
            }],
        });
        assert_eq!(
            s.tasks["t1"].status.state,
            TaskState::Running,
            "no going back"
        );
        s.apply(&Command::RemoveService { id: "a".into() });
        assert!(s.services.is_empty());
        assert!(s
            .tasks
            .values()
            .all(|t| t.desired_state == TaskState::Remove));
        s.apply(&Command::RemoveTasks {
            ids: vec!["t1".into(), "zz".into()],
        });
        assert_eq!(s.tasks.len(), 1);
        // A snapshot from before services had a shape still loads (opaque entries drop).
        let old: ClusterState = serde_json::from_str(
            r#"{"version":3,"nodes":{},"networks":{},"services":{"x":{"n":1}},"tokens":null,"tasks":{"t":{"id":"t"}}}"#,
        )
        .expect("old state");
        assert!(old.services.is_empty() && old.tasks.is_empty());
    }

    #[test]
    fn accepted_commands_raise_the_version_and_stamp_objects() {
        let mut s = ClusterState::default();
        let r = s.apply(&Command::UpsertNode {
            node: node("n1", Role::Manager),
        });
        assert_eq!(r, ApplyResult::Applied { version: 1 });
        assert_eq!(s.nodes["n1"].version, 1);
        let r = s.apply(&Command::SetAvailability {
            id: "n1".into(),
            availability: Availability::Drain,
        });
        assert_eq!(r.version(), 2);
        assert_eq!(s.nodes["n1"].availability, Availability::Drain);
        assert_eq!(s.nodes["n1"].version, 2);
        assert_eq!(s.version, 2);
    }

    #[test]
    fn unknown_objects_are_refused_and_nothing_changes() {
        let mut s = ClusterState::default();
        s.apply(&Command::UpsertNode {
            node: node("n1", Role::Worker),
        });
        let before = s.clone();
        for (cmd, want) in [
            (
                Command::RemoveNode { id: "nope".into() },
                Rejection::UnknownNode { id: "nope".into() },
            ),
            (
                Command::SetRole {
                    id: "nope".into(),
                    role: Role::Manager,
                    raft_id: Some(2),
                },
                Rejection::UnknownNode { id: "nope".into() },
            ),
            (
                Command::SetStatus {
                    id: "nope".into(),
                    status: NodeStatus::Down,
                },
                Rejection::UnknownNode { id: "nope".into() },
            ),
            (
                Command::RemoveNetwork { id: "x".into() },
                Rejection::UnknownNetwork { id: "x".into() },
            ),
            (
                Command::RemoveService { id: "s".into() },
                Rejection::UnknownService { id: "s".into() },
            ),
        ] {
            let r = s.apply(&cmd);
            assert_eq!(
                r,
                ApplyResult::Rejected {
                    version: 1,
                    rejection: want
                },
                "{cmd:?}"
            );
        }
        assert_eq!(s, before);
    }

    #[test]
    fn network_names_stay_unique_but_a_network_can_be_replaced() {
        let mut s = ClusterState::default();
        assert!(s
            .apply(&Command::UpsertNetwork {
                network: network("a", "ingress")
            })
            .into_result()
            .is_ok());
        let r = s.apply(&Command::UpsertNetwork {
            network: network("b", "ingress"),
        });
        assert_eq!(
            r.into_result(),
            Err(Rejection::DuplicateNetworkName {
                name: "ingress".into(),
                existing_id: "a".into()
            })
        );
        let mut changed = network("a", "ingress");
        changed.vni = Some(4097);
        assert_eq!(
            s.apply(&Command::UpsertNetwork { network: changed })
                .into_result(),
            Ok(2)
        );
        assert_eq!(s.networks["a"].vni, Some(4097));
        assert_eq!(
            s.apply(&Command::RemoveNetwork { id: "a".into() })
                .into_result(),
            Ok(3)
        );
        assert!(s.networks.is_empty());
    }

    #[test]
    fn tasks_secrets_and_configs_are_kept_by_kind() {
        let mut s = ClusterState::default();
        for (kind, id) in [
            (ObjectKind::Task, "t1"),
            (ObjectKind::Secret, "db-password"),
            (ObjectKind::Config, "nginx-conf"),
        ] {
            let r = s.apply(&Command::UpsertObject {
                kind,
                id: id.into(),
                spec: serde_json::json!({"id": id}),
            });
            if kind == ObjectKind::Task {
                assert!(r.into_result().is_err(), "a task needs a task's shape");
                assert!(!s.has_object(kind, id));
            } else {
                assert!(r.into_result().is_ok());
                assert!(s.has_object(kind, id));
            }
        }
        // A task must have a task's shape.
        let task = sample_task("t1");
        assert!(s
            .apply(&Command::UpsertObject {
                kind: ObjectKind::Task,
                id: "t1".into(),
                spec: serde_json::to_value(&task).unwrap(),
            })
            .into_result()
            .is_ok());
        assert_eq!((s.tasks.len(), s.secrets.len(), s.configs.len()), (1, 1, 1));
        let before = s.clone();
        let r = s.apply(&Command::RemoveObject {
            kind: ObjectKind::Secret,
            id: "t1".into(),
        });
        assert_eq!(
            r.into_result(),
            Err(Rejection::UnknownObject {
                kind: ObjectKind::Secret,
                id: "t1".into()
            }),
            "a task's ID is not a secret's"
        );
        assert_eq!(s, before, "a refused command changes nothing");
        assert!(s
            .apply(&Command::UpsertObject {
                kind: ObjectKind::Config,
                id: String::new(),
                spec: serde_json::Value::Null
            })
            .into_result()
            .is_err());
        s.apply(&Command::RemoveObject {
            kind: ObjectKind::Task,
            id: "t1".into(),
        });
        assert!(s.tasks.is_empty());
        // Older states (without these fields) still load.
        let old: ClusterState = serde_json::from_str(
            r#"{"version":3,"nodes":{},"networks":{},"services":{},"tokens":null}"#,
        )
        .expect("old state");
        assert!(old.secrets.is_empty());
    }

    #[test]
    fn roles_labels_services_and_tokens() {
        let mut s = ClusterState::default();
        s.apply(&Command::UpsertNode {
            node: node("n2", Role::Worker),
        });
        s.apply(&Command::SetRole {
            id: "n2".into(),
            role: Role::Manager,
            raft_id: Some(7),
        });
        assert_eq!(s.nodes["n2"].role, Role::Manager);
        assert_eq!(s.nodes["n2"].raft_id, Some(7));
        s.apply(&Command::UpdateNodeLabels {
            id: "n2".into(),
            add: BTreeMap::from([("zone".into(), "a".into()), ("ssd".into(), "1".into())]),
            remove: vec![],
        });
        s.apply(&Command::UpdateNodeLabels {
            id: "n2".into(),
            add: BTreeMap::from([("zone".into(), "b".into())]),
            remove: vec!["ssd".into()],
        });
        assert_eq!(
            s.nodes["n2"].labels,
            BTreeMap::from([("zone".into(), "b".into())])
        );
        s.apply(&Command::CreateService {
            service: Box::new(sample_service("svc", "web")),
        });
        assert_eq!(s.services["svc"].spec.name, "web");
        s.apply(&Command::SetTokens {
            tokens: serde_json::json!({"worker": "w", "manager": "m"}),
        });
        assert_eq!(s.tokens.as_ref().unwrap()["worker"], "w");
        assert_eq!(
            s.apply(&Command::RemoveNode { id: "n2".into() })
                .into_result(),
            Ok(7)
        );
        assert!(s.nodes.is_empty());
        assert_eq!(s.version, 7);
    }

    #[test]
    fn same_commands_same_state_and_commands_round_trip_through_json() {
        let cmds = vec![
            Command::UpsertNode {
                node: node("n1", Role::Manager),
            },
            Command::UpsertNetwork {
                network: network("net", "front"),
            },
            Command::RemoveNode { id: "zz".into() },
            Command::SetStatus {
                id: "n1".into(),
                status: NodeStatus::Down,
            },
        ];
        let wire: Vec<Command> =
            serde_json::from_str(&serde_json::to_string(&cmds).unwrap()).unwrap();
        assert_eq!(wire, cmds);
        let (mut a, mut b) = (ClusterState::default(), ClusterState::default());
        let ra: Vec<_> = cmds.iter().map(|c| a.apply(c)).collect();
        let rb: Vec<_> = wire.iter().map(|c| b.apply(c)).collect();
        assert_eq!(ra, rb);
        assert_eq!(a, b);
        assert_eq!(a.version, 3);
        let back: ClusterState = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
    }
}
