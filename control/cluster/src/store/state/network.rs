//! Network objects (overlay networks, the `ingress` network).

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// One network object (overlay networks, the `ingress` network).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    /// Unique among networks.
    pub name: String,
    /// `overlay` for now.
    pub driver: String,
    /// The network's subnet, as allocated from the pools (`10.0.1.0/24`); none only
    /// if `swarm init` found no subnet for ingress.
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    /// The gateway, an address of `subnet` (`10.0.1.1`).
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
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
