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
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The node's member ID in the managers' Raft group, while it is a manager.
    #[serde(default)]
    pub raft_id: Option<u64>,
    /// Store version at this object's last change (set by `apply`, ignored on input).
    #[serde(default)]
    pub version: u64,
    /// The node's certificate and trust, as its heartbeats last said (`None`: not said
    /// yet). What a CA rotation waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<super::NodeTls>>,
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
