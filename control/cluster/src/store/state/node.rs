//! Nodes: their role, availability and liveness status as the managers record them.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

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

/// A node's capacity, as its dockerd reports it (`docker info`: NCPU, MemTotal).
/// Zero when the node has not said (a node that predates the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeResources {
    /// CPUs in units of 10^-9 CPU (Docker's NanoCPUs).
    #[serde(default)]
    pub nano_cpus: i64,
    #[serde(default)]
    pub memory_bytes: i64,
}

impl NodeResources {
    /// Whether the node has not reported its capacity (both zero).
    pub fn is_unreported(&self) -> bool {
        *self == NodeResources::default()
    }
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
    /// Address other nodes reach this one at, `IP:PORT` (control traffic, port 2377 on
    /// managers).
    pub advertise_addr: String,
    /// Address for data traffic (VXLAN), when it differs from `advertise_addr`'s IP.
    #[serde(default)]
    pub data_path_addr: Option<IpAddr>,
    /// The version of the node's Docker engine.
    #[serde(default)]
    pub engine_version: String,
    /// What the node's dockerd has to give tasks, as the node last reported it (left
    /// out of the stored form while unreported).
    #[serde(default, skip_serializing_if = "NodeResources::is_unreported")]
    pub resources: NodeResources,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The node's member ID in the managers' Raft group, while it is a manager.
    #[serde(default)]
    pub raft_id: Option<u64>,
    /// The key the node's gossip records are signed with, for its current gossip run
    /// (registered by the node itself, over mutual TLS). Every node takes gossip about
    /// this node only as this says; a node that never registered is not heard.
    /// (Boxed: every node and every node command carry the field, few nodes change it.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip: Option<Box<GossipIdentity>>,
    /// Store version at this object's last change (set by `apply`, ignored on input).
    #[serde(default)]
    pub version: u64,
    /// The node's certificate and trust, as its heartbeats last said (`None`: not said
    /// yet). What a CA rotation waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<super::NodeTls>>,
    /// How many times `node update --rotate-wireguard-key` asked this node for a new
    /// WireGuard key: the node makes one each time this passes the count it handled.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wireguard_rotation: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Node {
    /// The address of the node's data traffic (VXLAN, gossip): `data_path_addr`, else the
    /// IP of `advertise_addr` (which may also be a bare IP).
    pub fn data_path_ip(&self) -> Option<IpAddr> {
        self.data_path_addr.or_else(|| {
            let text = &self.advertise_addr;
            text.parse::<SocketAddr>()
                .map(|a| a.ip())
                .or_else(|_| text.parse::<IpAddr>())
                .ok()
        })
    }
}

/// What a node's gossip run signs with, as the node registered it: every other node
/// takes a record about it only if that key signed it, for that generation at that
/// address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipIdentity {
    /// Ed25519 public key, 64 hex digits.
    pub key: String,
    /// The gossip generation (the run's start, microseconds since the epoch).
    pub generation: u64,
    /// The address it gossips at: the node's data-path address and the gossip port.
    pub addr: SocketAddr,
    /// The node's WireGuard public key (X25519, 64 hex digits): encrypted overlay
    /// networks' traffic is exchanged only with nodes whose key the store holds, and
    /// only under that key. Registered with the gossip key (same node, same mutual
    /// TLS); its private half never leaves the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<String>,
}

impl GossipIdentity {
    /// Why `self` cannot be node `node`'s, if it cannot: the key must be 64 hex digits,
    /// the generation nonzero, the address the node's data-path address.
    pub fn fault(&self, node: &Node) -> Option<String> {
        if self.key.len() != 64 || !self.key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some("the key is not 64 hex digits".into());
        }
        if self.generation == 0 {
            return Some("generation 0".into());
        }
        if let Some(k) = &self.wireguard {
            if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some("the WireGuard key is not 64 hex digits".into());
            }
        }
        if self.addr.port() == 0 {
            return Some("port 0".into());
        }
        match node.data_path_ip() {
            Some(ip) if ip == self.addr.ip() => None,
            other => Some(format!(
                "address {} is not the node's data-path address ({})",
                self.addr,
                other.map_or("none".to_string(), |ip| ip.to_string())
            )),
        }
    }
}
