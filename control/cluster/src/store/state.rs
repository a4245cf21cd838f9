//! The cluster state machine: plain data and the commands that change it.
//!
//! Everything here is deterministic: [`ClusterState::apply`] looks only at the state and
//! the command (no clock, no randomness, no I/O), so every manager that applies the same
//! log reaches the same state. Times, IDs and secrets are chosen by the proposer and
//! travel inside the command.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// Service specs by service ID (opaque until services exist).
    pub services: BTreeMap<String, serde_json::Value>,
    /// The join tokens (opaque here: the `token` module's type, serialized).
    pub tokens: Option<serde_json::Value>,
    /// Cluster-wide settings (set once by `swarm init`).
    #[serde(default)]
    pub cluster: Option<ClusterSpec>,
    /// Tasks, secrets and configs by ID, as opaque specs until their features exist
    /// (they change only through the log, like everything else here).
    #[serde(default)]
    pub tasks: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub secrets: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub configs: BTreeMap<String, serde_json::Value>,
}

/// Kinds of objects kept as opaque specs (see [`ClusterState::objects`]).
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
    /// The objects of one kind, by ID.
    pub fn objects(&self, kind: ObjectKind) -> &BTreeMap<String, serde_json::Value> {
        match kind {
            ObjectKind::Task => &self.tasks,
            ObjectKind::Secret => &self.secrets,
            ObjectKind::Config => &self.configs,
        }
    }

    fn objects_mut(&mut self, kind: ObjectKind) -> &mut BTreeMap<String, serde_json::Value> {
        match kind {
            ObjectKind::Task => &mut self.tasks,
            ObjectKind::Secret => &mut self.secrets,
            ObjectKind::Config => &mut self.configs,
        }
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
    UpsertService {
        id: String,
        spec: serde_json::Value,
    },
    RemoveService {
        id: String,
    },
    SetTokens {
        tokens: serde_json::Value,
    },
    SetCluster {
        cluster: ClusterSpec,
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
                if self.networks.contains_key(id) {
                    Ok(())
                } else {
                    Err(Rejection::UnknownNetwork { id: id.clone() })
                }
            }
            Command::UpsertService { id, .. } => nonempty("service ID", id),
            Command::RemoveService { id } => {
                if self.services.contains_key(id) {
                    Ok(())
                } else {
                    Err(Rejection::UnknownService { id: id.clone() })
                }
            }
            Command::SetTokens { .. } => Ok(()),
            Command::SetCluster { cluster } => nonempty("cluster ID", &cluster.id),
            Command::UpsertObject { kind, id, .. } => nonempty(&format!("{kind} ID"), id),
            Command::RemoveObject { kind, id } => {
                if self.objects(*kind).contains_key(id) {
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
            Command::UpsertService { id, spec } => {
                self.services.insert(id.clone(), spec.clone());
            }
            Command::RemoveService { id } => {
                self.services.remove(id);
            }
            Command::SetTokens { tokens } => self.tokens = Some(tokens.clone()),
            Command::SetCluster { cluster } => self.cluster = Some(cluster.clone()),
            Command::UpsertObject { kind, id, spec } => {
                self.objects_mut(*kind).insert(id.clone(), spec.clone());
            }
            Command::RemoveObject { kind, id } => {
                self.objects_mut(*kind).remove(id);
            }
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
            assert!(r.into_result().is_ok());
            assert_eq!(s.objects(kind)[id]["id"], id);
        }
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
        s.apply(&Command::UpsertService {
            id: "svc".into(),
            spec: serde_json::json!({"name": "web", "replicas": 3}),
        });
        assert_eq!(s.services["svc"]["replicas"], 3);
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
