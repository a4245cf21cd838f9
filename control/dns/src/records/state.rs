//! The declared DNS state ([`DnsState`]), as the control plane hands it over, and the
//! reasons a state is refused ([`DnsStateError`]).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Everything the resolver needs to know about a node's view of the cluster.
///
/// JSON, unknown fields refused:
///
/// ```json
/// {
///   "services": [
///     { "name": "web", "stack": "app", "endpoint_mode": "vip",
///       "vips": [{ "network": "front", "ip": "10.0.1.2" }],
///       "tasks": [
///         { "id": "k3l9x0", "slot": 1, "healthy": true,
///           "addresses": [{ "network": "front", "ip": "10.0.1.5" }] }
///       ] },
///     { "name": "db", "endpoint_mode": "dnsrr", "networks": ["back"], "tasks": [] }
///   ],
///   "containers": [
///     { "name": "debug", "addresses": [{ "network": "front", "ip": "10.0.1.9" }],
///       "aliases": [{ "network": "front", "alias": "toolbox" }] }
///   ]
/// }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsState {
    #[serde(default)]
    pub services: Vec<Service>,
    /// Attachable containers that are not tasks of a service.
    #[serde(default)]
    pub containers: Vec<Container>,
}

/// A service: its VIPs (vip mode) and its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The service's name; with `stack`, the short name (the full name is `<stack>_<name>`).
    pub name: String,
    #[serde(default)]
    pub stack: Option<String>,
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// One VIP per network the service is on (vip mode only).
    #[serde(default)]
    pub vips: Vec<NetAddr>,
    /// Networks the service is attached to, beyond those its VIPs and task addresses
    /// name. It lets a dnsrr service with no task running stay known (NODATA, not
    /// NXDOMAIN). In vip mode every network listed must have a VIP.
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub tasks: Vec<Task>,
    /// Extra names of the service on one of its networks (`--network
    /// name=NET,alias=A`): each answers there as the service's name does (and
    /// `tasks.<alias>` as `tasks.<service>`). Names come first: an alias that is a
    /// service's, task's or slot's name on that network is not added there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<NetAlias>,
}

/// How a service's name resolves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// `<service>` answers with the VIP on the asker's network.
    #[default]
    Vip,
    /// `<service>` answers with the addresses of the healthy tasks (DNS round robin).
    Dnsrr,
}

/// A task of a service (a running container).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub id: String,
    /// The replica slot; `None` for the tasks of a global service.
    #[serde(default)]
    pub slot: Option<u32>,
    /// Unhealthy tasks keep their task names but leave `<service>` (dnsrr) and
    /// `tasks.<service>`.
    #[serde(default = "default_true")]
    pub healthy: bool,
    /// The task's own resolvers (`service create --dns`): names it asks that are not
    /// the cluster's go to these instead of the node's upstreams, as Swarm's embedded
    /// DNS does with a container's DNS servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    pub addresses: Vec<NetAddr>,
}

fn default_true() -> bool {
    true
}

/// An attachable container that is not a task (`docker run --network <overlay>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub name: String,
    pub addresses: Vec<NetAddr>,
    #[serde(default)]
    pub aliases: Vec<NetAlias>,
}

/// An address on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetAddr {
    pub network: String,
    pub ip: IpAddr,
}

/// A container's extra name on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetAlias {
    pub network: String,
    pub alias: String,
}

/// Why a declared state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsStateError {
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("invalid network name {0:?}: must be 1-255 printable characters without spaces")]
    InvalidNetwork(String),
    #[error("service {0:?} is declared twice")]
    DuplicateService(String),
    #[error("task ID {0:?} is declared twice")]
    DuplicateTask(String),
    #[error("service {service:?}: {reason}")]
    Service { service: String, reason: String },
    #[error("container {container:?}: {reason}")]
    Container { container: String, reason: String },
    #[error("name {name:?} on network {network:?} is claimed by both {first} and {second}")]
    NameConflict {
        name: String,
        network: String,
        first: String,
        second: String,
    },
    #[error("address {ip} on network {network:?} is claimed by both {first} and {second}")]
    AddressConflict {
        ip: IpAddr,
        network: String,
        first: String,
        second: String,
    },
    #[error("{owner}: address {ip} cannot be a container's or service's address")]
    InvalidAddress { owner: String, ip: IpAddr },
}
