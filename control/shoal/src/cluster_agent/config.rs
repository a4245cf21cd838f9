//! What the cluster role takes from the agent: its configuration
//! ([`ClusterAgentConfig`]), where the engine version comes from, and the links the
//! executor shares with the rest of the agent ([`NodeLinks`]).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use shoal_cluster::manager::Timings;
use shoal_dataplane::reconcile::ready::ReadinessWatch;
use shoal_orchestrator::{events::DockerEvents, pipeline::IntentSender};

/// Where the agent's Docker engine version comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineSource {
    /// Ask the node's dockerd at this socket.
    Docker(PathBuf),
    /// A fixed version (tests without dockerd).
    Fixed(String),
}

/// What the executor shares with the rest of the agent.
#[derive(Debug, Clone)]
pub struct NodeLinks {
    /// The agent's one dockerd event watch.
    pub events: DockerEvents,
    /// The declared-state pipeline's input.
    pub intent: Arc<IntentSender>,
    /// What the dataplane has made ready for each local container (a task's process
    /// starts once its network is); None: no dataplane follows `intent`.
    pub ready: Option<ReadinessWatch>,
    /// The resolver's address on the egress bridge: the nameserver of tasks with no
    /// network. None: they get dockerd's default.
    pub egress_dns: Option<Ipv4Addr>,
    /// Where the executor publishes its view of the node (the agent's metrics).
    pub report: Option<shoal_orchestrator::node_report::ReportSender>,
    /// The node's WireGuard public key, registered with the managers (encrypted
    /// overlay networks); None: no dataplane here to carry them.
    pub wireguard_key: Option<tokio::sync::watch::Receiver<String>>,
    /// Where gossip's verdicts on which nodes this one reaches go (the pipeline drains
    /// their backends); None: nowhere.
    pub reach: Option<shoal_gossip::ReachSender>,
}

impl NodeLinks {
    /// Links to nothing: no events, and a declared state nobody follows.
    pub fn detached() -> Self {
        Self {
            events: DockerEvents::none(),
            intent: Arc::new(tokio::sync::watch::channel(None).0),
            ready: None,
            egress_dns: None,
            report: None,
            wireguard_key: None,
            reach: None,
        }
    }
}

/// What the cluster role needs from the agent's configuration.
#[derive(Debug, Clone)]
pub struct ClusterAgentConfig {
    /// The agent's data directory; the cluster's files go in `cluster/` under it.
    pub data_dir: PathBuf,
    /// Where a manager listens unless `--listen-addr` says otherwise.
    pub listen: SocketAddr,
    /// The interface whose IPv4 is the default advertise address.
    pub underlay_interface: Option<String>,
    /// The default advertise address (the agent's `advertise_addr`), before the
    /// underlay interface's.
    pub advertise_addr: Option<IpAddr>,
    /// The VXLAN port unless `swarm init --data-path-port` says otherwise.
    pub data_path_port: u16,
    pub engine: EngineSource,
    /// The node's hostname; None: the host's (UTS namespace).
    pub hostname: Option<String>,
    /// The cluster's timings for `swarm init`/`join` (kept in the role's files);
    /// None: the defaults.
    pub timings: Option<Timings>,
    /// How the executor reaches the rest of the agent (its dockerd event watch, the
    /// declared-state pipeline); None: a watch of its own, and the declared state goes
    /// nowhere (tests of the cluster alone).
    pub node: Option<NodeLinks>,
    /// Where the executor's gossip member listens; None: no gossip.
    pub gossip_listen: Option<SocketAddr>,
    /// Why this agent must not init or join a swarm (its dataplane would not follow
    /// the cluster); None: it may.
    pub no_swarm: Option<String>,
    /// How the node's dataplane runs, for `shoal info` (e.g. "XDP native on eth0").
    pub dataplane: Option<String>,
    /// Where the executor mounts the tmpfs of tasks' secrets and configs; None: no
    /// tmpfs (tasks using them are rejected).
    pub task_files_dir: Option<PathBuf>,
}

impl ClusterAgentConfig {
    /// `<data_dir>/cluster`.
    pub fn cluster_dir(&self) -> PathBuf {
        self.data_dir.join("cluster")
    }

    pub(super) fn docker_socket(&self) -> Option<&Path> {
        match &self.engine {
            EngineSource::Docker(p) => Some(p),
            EngineSource::Fixed(_) => None,
        }
    }
}
