//! The node's reconcilers as the agent runs them, all of one shape.
//!
//! ```text
//!  agent pipeline ──watch: Option<Arc<DeclaredNode>>──┬─▶ overlay ──watch: present networks──┐
//!  (store + gossip + local containers,                ├─▶ service VIPs   ◀─────────────────────┤
//!   or the standalone files)                          ├─▶ routing mesh   ◀─────────────────────┤
//!                                                     └─▶ DNS listeners and records ◀──────────┘
//! ```
//! Each reconciler runs on a thread of its own ([`runner`]): it wakes when the declared
//! state (or the set of networks present on the node) changes, or on its own timer,
//! validates the state whole, plans the difference from what it applied (pure, tested
//! against a fake kernel), applies it, keeps the last good state when a new one is
//! refused ([`intake`]), and reports through the one status writer ([`status`]). No
//! reconciler reads a file: the state reaches the kernel as soon as it is computed.
//! The overlay, VIP and DNS reconcilers also say what they made ready for each local
//! container ([`ready`]): the executor starts a task's process only once its network is.
//! They and the mesh say which declared version they applied whole: the executor tells
//! the leader which store version the node's traffic follows, and stops a task only
//! once every node's does past the task's withdrawal.

pub mod dns;
pub mod egress;
pub mod guard;
pub mod intake;
pub mod mesh;
pub mod overlay;
pub mod ready;
pub mod runner;
pub mod status;
pub mod vip;
pub mod wireguard;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
};

use shoal_dns::records::DnsState;
use tokio::sync::watch;

use crate::{
    lb::state::LbState,
    overlay::{plan::ContainerNetns, state::OverlayState},
};

/// One node's declared dataplane state, as the agent's pipeline publishes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeclaredNode {
    /// Networks present here and their local and remote endpoints.
    pub overlay: OverlayState,
    /// Names to serve; None: no DNS is declared (the records stay as they are).
    pub dns: Option<DnsState>,
    /// Services' VIPs, published ports and backends; None: no load balancing is
    /// declared (the maps keep what they hold).
    pub lb: Option<LbState>,
    /// The VXLAN port every node of the cluster uses (`swarm init --data-path-port`);
    /// None: the agent's own (`--data-path-port`, standalone mode).
    pub data_path_port: Option<u16>,
    /// This node's data-path address (`swarm init/join --data-path-addr`): the overlay's
    /// VTEP, on the interface that holds it. None: the agent's underlay address.
    pub data_path_addr: Option<Ipv4Addr>,
    /// The data-path addresses of every node of the cluster: the only sources VXLAN on
    /// the data-path port is accepted from (the data path's guard). None: no cluster
    /// (the standalone mode), nothing is checked.
    pub cluster_vteps: Option<BTreeSet<Ipv4Addr>>,
    /// The WireGuard public key (64 hex digits) of every other node of the cluster that
    /// registered one, by data-path address: the only peers encrypted networks' traffic
    /// is exchanged with. None: no cluster (the standalone mode), no device runs.
    pub wireguard_peers: Option<BTreeMap<Ipv4Addr, String>>,
    /// How many new WireGuard keys the cluster asked this node for (`node update
    /// --rotate-wireguard-key`): the node makes one each time it passes the count it
    /// handled. 0 in the standalone mode.
    pub wireguard_rotation: u64,
    /// The containers holding the namespaces of this node's tasks (their sandboxes), by
    /// name, whether or not they are on a network: each one that runs gets egress (the
    /// gateway bridge). Empty in the standalone mode, which runs no tasks.
    pub task_containers: BTreeSet<String>,
    /// The network namespace of every local endpoint's container and task container
    /// that runs now, by container name (resolved by the agent; a container missing
    /// here is not running, and is attached once it is).
    pub containers: BTreeMap<String, ContainerNetns>,
    /// The source's count of its changes (the executor's; 0 for the standalone files):
    /// reconcilers say which version they applied ([`ready`]), so the source knows when
    /// a change of its own has reached the kernel.
    pub version: u64,
    /// The cluster store version this state was computed from (0 for the standalone
    /// files): once the reconcilers have applied `version`, the node's traffic follows
    /// the store as of this version.
    pub store_version: u64,
}

impl DeclaredNode {
    /// Every container the state names: local endpoints' and tasks'.
    pub fn container_names(&self) -> BTreeSet<&str> {
        let mut names: BTreeSet<&str> = (self.overlay.local_endpoints.iter())
            .map(|e| e.container.as_str())
            .collect();
        names.extend(self.task_containers.iter().map(String::as_str));
        names
    }
}

/// What the reconcilers follow: None until a first state is known (then nothing is
/// changed: what a previous agent made stays).
pub type Declared = watch::Receiver<Option<Arc<DeclaredNode>>>;

/// An overlay network that exists on this node now: where its namespace is pinned, the
/// gateway address its bridge holds (where the node's DNS listens for it), and the
/// endpoints (local and remote) this node can reach on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresentNetwork {
    pub id: String,
    pub vni: u32,
    pub gateway: Ipv4Addr,
    pub netns_path: PathBuf,
    /// Addresses of the endpoints the overlay has in place: a VIP backend that is not
    /// among them yet gets no new connection from here (its packets would find no
    /// neighbour entry and be lost).
    pub endpoints: std::collections::BTreeSet<Ipv4Addr>,
}

impl PresentNetwork {
    /// Whether `other` is this network in the same place (namespace and gateway), its
    /// endpoints aside: what a listener on it depends on.
    pub fn same_place(&self, other: &PresentNetwork) -> bool {
        (&self.id, self.vni, self.gateway, &self.netns_path)
            == (&other.id, other.vni, other.gateway, &other.netns_path)
    }
}

/// The networks present after the overlay's latest apply.
pub type Present = watch::Receiver<Arc<Vec<PresentNetwork>>>;
