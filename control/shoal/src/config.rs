//! The agent's configuration: a TOML file and command-line flags, merged (flags win),
//! with defaults filled in and checked.
//!
//! The file and the flags share one type, [`Settings`] (`settings.rs`: parsing the
//! file, merging), whose fields are all optional; [`AgentConfig`] (`resolved.rs`) is
//! the result with every value decided. Both report a [`ConfigError`].

mod resolved;
mod settings;

pub use resolved::{
    AgentConfig, AgentPaths, DeclaredFiles, DnsConfig, WebListen, DEFAULT_DATA_DIR,
};
pub use settings::{Settings, DEFAULT_CONFIG_FILE};

use std::{io, net::Ipv4Addr, path::PathBuf};

/// A configuration the agent cannot run with. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error(
        "config file {}{}: {message}",
        path.display(),
        location.as_deref().unwrap_or("")
    )]
    Parse {
        path: PathBuf,
        /// ", line N, key `K`" when the parser knows where.
        location: Option<String>,
        message: String,
    },
    #[error("no underlay interface: this host has no IPv4 default route to take it from; set `underlay_interface` (or `advertise_addr`) in the config file, or pass --underlay-interface")]
    MissingUnderlayInterface,
    #[error("advertise_addr {addr}: no interface of this host holds that address")]
    AdvertiseAddrNotHere { addr: Ipv4Addr },
    #[error("advertise_addr {addr}: reading this host's interfaces: {error}")]
    Interfaces { addr: Ipv4Addr, error: io::Error },
    #[error("underlay_interface: invalid interface name {name:?}: {reason}")]
    InvalidInterface { name: String, reason: &'static str },
    #[error("{key} must not be empty")]
    EmptyPath { key: &'static str },
    #[error("engine_api_socket {} is docker_socket, the node's dockerd's own socket: name another path (--engine-api-socket)", path.display())]
    EngineSocketIsDockers { path: std::path::PathBuf },
    #[error("data_path_port must be between 1 and 65535")]
    BadPort,
    #[error("cluster_listen needs a port between 1 and 65535")]
    BadClusterPort,
    #[error("gossip_listen needs a port between 1 and 65535")]
    BadGossipPort,
    #[error(
        "declared_dns needs declared_state: the resolver listens on the overlay networks' gateways"
    )]
    DnsWithoutOverlay,
    #[error("declared_lb needs declared_state: backends are reached over the overlay networks")]
    LbWithoutOverlay,
    #[error("lb_flows must be at least 1")]
    BadLbFlows,
    #[error("metrics_addr needs a port between 1 and 65535")]
    BadMetricsPort,
    #[error("egress_subnet: {reason}")]
    BadEgressSubnet { reason: String },
}
