//! The network layer that makes the cluster core a working cluster: port 2377.
//!
//! ```text
//!   joining node ──TLS (CA pinned by the token's digest, no client cert)──▶ any manager
//!        Join{token, CSR, NodeInfo}  ◀── certificate (role from the token), CA, node ID
//!   node ──mTLS (node cert)──▶ leader: Heartbeat (~1 s), Leave, Renew{CSR}
//!   manager ──mTLS (manager cert)──▶ manager: Raft RPCs, Execute, ReadState, admin calls
//! ```
//! - One listener per manager with [`crate::pki::join_server_config`]: a connection without
//!   a client certificate may only send `Join`; Raft RPCs, commands and admin calls need a
//!   manager certificate; heartbeats, `Leave` and `Renew` need any node certificate and only
//!   touch the caller's own node (the node ID comes from its certificate).
//! - Frames: a 4-byte big-endian length, then JSON; one response per request, several
//!   requests per connection (the clients keep idle connections).
//! - Writes and linearizable reads happen on the Raft leader: a follower answers "not the
//!   leader, try ADDR" and the caller follows (bounded by [`Timings::request_timeout`], then
//!   [`ClusterError::NoQuorum`]).
//! - Liveness: every node (managers too) heartbeats to the leader every
//!   [`Timings::heartbeat_interval`]; the leader marks a node Down after
//!   [`Timings::node_down_after`] without one, and Ready again on the next. The heartbeat's
//!   answer carries the node's role in the store: a node that was promoted gets a manager
//!   certificate, starts its Raft member and asks the leader to add it; a demoted one gets a
//!   worker certificate and stops its member. Certificates are renewed the same way once
//!   [`crate::pki::NodeIdentity::needs_renewal`] says so.
//!
//! The node's files in `data_dir` (a 0700 directory, every file 0600): `identity.json`
//! (certificate, CA, and the node key: a manager's sealed with its data key),
//! `ca-key.sealed` (managers only), `manager-key.json` (a manager's data key, wrapped;
//! see `keys`), `node.json` (addresses, node info, known managers, Raft ID, timings) and
//! `raft/` (the store, sealed). Leaving removes exactly these.
//!
//! Autolock (`swarm init --autolock`, [`Manager::set_autolock`]): the unlock key wraps
//! every manager's data key and is kept only in the store (sealed by those data keys)
//! and in memory. [`Manager::resume`] of such a manager fails with
//! [`ClusterError::Locked`] and starts nothing; [`Manager::unlock`] with the key starts
//! it.

pub mod fuzzing;
mod keys;
mod node_port;
mod persist;
mod runtime;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::ipam::IpamError;
pub use crate::pki::Role;
use crate::pki::{NodeCertificate, PkiError};
use crate::registry_auth::{RegistryCredentials, SealedCredentials};
use crate::seal::KeyEncryptionKey;
use crate::store::{ApplyResult, ClusterState, Command, Rejection, StoreError};
use crate::token::JoinToken;

pub use node_port::{NodePortHandler, NodePortStream, NODE_PORT};
use runtime::Runtime;
pub use runtime::{new_gossip_key, CaStatus};

/// The identity a node keeps in its cluster directory `dir`, a manager's node key opened
/// with the data key in its key file (so not while autolocked): for tools and tests that
/// speak to the managers as that node.
pub fn kept_identity(dir: &Path) -> Result<crate::pki::NodeIdentity, ClusterError> {
    let keys = match keys::load(dir)? {
        keys::OnDisk::Open(keys) => Some(keys),
        _ => None,
    };
    persist::load_identity(dir, keys.as_ref().map(|k| k.data_key()))
}

/// The port managers listen on, as in Swarm.
pub const DEFAULT_PORT: u16 = 2377;

/// A node's traffic counters, totals since its dataplane started; sent with its
/// heartbeats (see `runtime/traffic.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTraffic {
    /// Connections that entered the cluster at this node's published ports.
    pub mesh_new_flows: u64,
    /// Bytes the routing mesh sent on for them.
    pub mesh_bytes: u64,
    /// Connects to service VIPs from this node's tasks.
    pub vip_connects: u64,
}

/// A node's traffic per second, from two of its heartbeats' counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficRates {
    pub mesh_flows_per_s: f64,
    pub mesh_bytes_per_s: f64,
    pub vip_connects_per_s: f64,
}

/// What a node says about itself when it joins and in every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub hostname: String,
    /// The version of the node's Docker engine (`ENGINE VERSION` in `node ls`).
    pub engine_version: String,
    /// The node's capacity, from its dockerd (zero when it has none to report).
    #[serde(default)]
    pub resources: crate::store::NodeResources,
    /// The node's advertise address.
    pub addr: IpAddr,
    /// `--data-path-addr`: where the node's overlay (VXLAN) and gossip traffic go,
    /// when it differs from the advertise address (another interface).
    #[serde(default)]
    pub data_path_addr: Option<IpAddr>,
    /// Engine labels (not the node labels of `node update --label-add`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Where a manager listens and how others reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// The node's cluster files (see the module docs).
    pub data_dir: PathBuf,
    /// Where the manager API listens, normally `0.0.0.0:2377`. Port 0 picks a free port
    /// (tests); the advertise port follows it when that is 0 too.
    pub listen: SocketAddr,
    /// `<advertise-addr>:2377`: what other managers and nodes dial.
    pub advertise: SocketAddr,
}

/// `swarm init`'s cluster-wide options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// `--default-addr-pool` (default `10.0.0.0/8`).
    pub default_addr_pools: Vec<Ipv4Net>,
    /// `--default-addr-pool-mask-length` (default 24).
    pub subnet_prefix_len: u8,
    /// `--data-path-port` (default 4789).
    pub data_path_port: u16,
    /// `--autolock`: the managers' data keys are wrapped by an unlock key that is on no
    /// disk; a restarted manager is locked until `swarm unlock` gives it back.
    pub autolock: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        let pools = crate::ipam::PoolConfig::default();
        InitOptions {
            default_addr_pools: pools.pools,
            subnet_prefix_len: pools.subnet_prefix_len,
            data_path_port: 4789,
            autolock: false,
        }
    }
}

/// The cluster's timings. Written to `data_dir` at init/join and read back on resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// How often every node heartbeats to the leader (Swarm: 5 s; here 1 s).
    pub heartbeat_interval: Duration,
    /// The leader marks a node Down after this long without a heartbeat.
    pub node_down_after: Duration,
    /// Raft: how often the leader sends heartbeats to the other managers.
    pub raft_heartbeat_interval: Duration,
    /// Raft: the election timeout range.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Bound on everything that needs the leader or a quorum.
    pub request_timeout: Duration,
    /// Validity of the node certificates this cluster issues.
    pub cert_validity: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        let store = crate::store::StoreConfig::default();
        Timings {
            heartbeat_interval: Duration::from_secs(1),
            node_down_after: Duration::from_secs(5),
            raft_heartbeat_interval: store.heartbeat_interval,
            election_timeout_min: store.election_timeout_min,
            election_timeout_max: store.election_timeout_max,
            request_timeout: store.request_timeout,
            cert_validity: crate::pki::DEFAULT_NODE_CERT_VALIDITY,
        }
    }
}

/// A manager's state in the Raft group, as `node ls` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerStatus {
    Leader,
    Reachable,
    Unreachable,
}

impl std::fmt::Display for ManagerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ManagerStatus::Leader => "Leader",
            ManagerStatus::Reachable => "Reachable",
            ManagerStatus::Unreachable => "Unreachable",
        })
    }
}

/// What went wrong. One line each; never contains a token's secret or a key.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid join token (wrong, or rotated)")]
    BadToken,
    #[error("{0}")]
    MalformedToken(String),
    #[error("the manager's CA does not match the token")]
    CaMismatch,
    #[error("this node is not a manager")]
    NotManager,
    #[error("no quorum: a majority of managers is unreachable; the cluster cannot make changes until a majority is back")]
    NoQuorum,
    #[error("this node is already part of a cluster (leave it first)")]
    AlreadyInCluster,
    #[error("this node is not part of a cluster")]
    NotInCluster,
    #[error("refusing: this is the last manager of the cluster")]
    LastManager,
    #[error("node {0} is Ready: use --force to remove it")]
    NodeIsReady(String),
    #[error("node {0} is a manager: demote it first, or use --force")]
    NodeIsManager(String),
    #[error("a manager must use --force to leave (it weakens the managers' quorum; the last manager leaving ends the cluster)")]
    ManagerNeedsForce,
    #[error("this node is a manager: resume it as one")]
    IsManager,
    #[error("the current node cannot be removed: use `swarm leave` on it")]
    RemoveSelf,
    #[error("no such node: {0}")]
    UnknownNode(String),
    #[error("node {node} is already a {role}")]
    AlreadyRole { node: String, role: Role },
    #[error("refused by the cluster store: {0}")]
    Rejected(Rejection),
    #[error("not authorized: {0}")]
    Unauthorized(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error("cannot reach a manager: {0}")]
    Unreachable(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("cluster store: {0}")]
    Store(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A manager refused the request and said why in its own words (an error of its
    /// store, a request it cannot carry out): shown as it is.
    #[error("{0}")]
    Refused(String),
    #[error("local cluster files in {path}: {reason}")]
    Files { path: PathBuf, reason: String },
    #[error("default address pools: {0}")]
    AddressPools(IpamError),
    /// The manager's data key is wrapped by the unlock key (autolock) and this process
    /// was not given it yet: nothing runs until it is.
    #[error("this manager is locked: its swarm data is encrypted and needs the unlock key (swarm unlock)")]
    Locked,
    #[error("swarm could not be unlocked: invalid key provided")]
    BadUnlockKey,
    #[error("swarm is not locked")]
    NotLocked,
    #[error("cannot rotate because autolock is not turned on")]
    AutolockOff,
}

impl From<StoreError> for ClusterError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoQuorum { .. } | StoreError::NotLeader { .. } => ClusterError::NoQuorum,
            StoreError::LastManager => ClusterError::LastManager,
            e => ClusterError::Store(e.to_string()),
        }
    }
}

/// What `join` made of this node.
pub enum Joined {
    Manager(Manager),
    Worker(Worker),
}

impl Joined {
    /// How far this node's clock was from the manager's when it joined, when that was
    /// beyond the bound the cluster tolerates (certificates and heartbeats depend on
    /// synchronized clocks): the operator should be warned.
    pub fn clock_skew(&self) -> Option<Duration> {
        match self {
            Joined::Manager(m) => m.rt.join_clock_skew(),
            Joined::Worker(w) => w.rt.join_clock_skew(),
        }
    }

    pub fn node_id(&self) -> &str {
        match self {
            Joined::Manager(m) => m.node_id(),
            Joined::Worker(w) => w.node_id(),
        }
    }
}

/// The role recorded in `data_dir` (from the node's certificate), or `None` when the node
/// is in no cluster: tells the agent whether to [`Manager::resume`] or [`Worker::resume`].
pub fn local_role(data_dir: &Path) -> Result<Option<Role>, ClusterError> {
    persist::local_role(data_dir)
}

/// Removes the node's cluster files without running it: a locked manager leaving with
/// `--force` (its state cannot be opened; the other managers still list it until they
/// remove it).
pub fn forget(data_dir: &Path) -> Result<(), ClusterError> {
    persist::wipe(data_dir)
}

/// A running manager. Clones share it. Call [`Manager::shutdown`] (or `leave`) to stop it.
#[derive(Clone)]
pub struct Manager {
    rt: Arc<Runtime>,
}

/// A running worker (heartbeats, certificate renewal, and promotion when the managers
/// decide it: then [`Worker::manager`] gives the manager handle).
pub struct Worker {
    rt: Arc<Runtime>,
}

/// What a node's executor gets from the leader.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// The cluster state as far as nodes may see it: no tokens, secrets, configs or
    /// sealed registry credentials.
    pub state: ClusterState,
    /// Service ID -> its registry credentials, for the services this node has a live
    /// task of (and only those).
    #[serde(default)]
    pub registry_auth: BTreeMap<String, RegistryCredentials>,
}

/// How far the nodes' dataplanes have followed the store, as the leader last heard from
/// them (in its memory, not in the store).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdrawal {
    /// The lowest store version every Ready node says its dataplane follows whole (a node
    /// that has not said counts 0; Down nodes do not count): a task whose desired state
    /// left Running at or before this version gets no new connection on any node.
    pub withdrawn_everywhere_version: u64,
    /// The Ready nodes whose dataplane is behind the leader's store, with the version it
    /// follows (0: not said yet).
    #[serde(default)]
    pub behind: BTreeMap<String, u64>,
}

/// What a node's executor fetches from the leader.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFetch {
    /// The state, `None` when the store is still at the version the fetch named.
    pub view: Option<NodeView>,
    /// `None`: the leader does not keep it (a version from before it did).
    pub withdrawal: Option<Withdrawal>,
}

/// A node's link to the managers for running its tasks: what it must run, and reports
/// of what its tasks did. Works the same on managers and workers.
#[derive(Clone)]
pub struct NodeClient {
    rt: Arc<Runtime>,
}

impl NodeClient {
    pub fn node_id(&self) -> &str {
        self.rt.node_id()
    }

    /// The node's traffic counters now: the next heartbeat carries them.
    pub fn set_traffic(&self, traffic: NodeTraffic) {
        self.rt.set_traffic(traffic);
    }

    /// The cluster state as far as nodes may see it and this node's registry
    /// credentials ([`NodeView`]), from the leader; `None` when it is still at version
    /// `since`.
    pub async fn node_state(&self, since: u64) -> Result<Option<NodeView>, ClusterError> {
        Ok(self.rt.node_state(since, None).await?.view)
    }

    /// [`NodeClient::node_state`] for the executor: tells the leader the store version
    /// this node's dataplane follows whole (`applied`), and brings back how far every
    /// node's has come ([`Withdrawal`]).
    pub async fn fetch(&self, since: u64, applied: u64) -> Result<NodeFetch, ClusterError> {
        self.rt.node_state(since, Some(applied)).await
    }

    /// On a manager: the store version its copy has applied, as it changes (a cue to
    /// fetch the state again). `None` on a worker.
    pub fn subscribe(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.rt.core().map(|c| c.store_node().subscribe())
    }

    /// Serves the node port ([`NODE_PORT`]) on `listener`: requests from the cluster's
    /// managers only (mutual TLS), each answered by `handler`. Runs until dropped.
    pub async fn serve_node_port(
        &self,
        listener: tokio::net::TcpListener,
        handler: NodePortHandler,
    ) {
        node_port::serve(self.rt.clone(), listener, handler).await
    }

    /// Reports this node's task states to the leader.
    pub async fn report_tasks(
        &self,
        updates: Vec<crate::store::TaskStatusUpdate>,
    ) -> Result<(), ClusterError> {
        self.rt.report_tasks(updates).await
    }

    /// Registers `gossip` as the key this node's gossip run signs with (the managers take
    /// it for this node only; every node gets it with the state).
    pub async fn register_gossip(
        &self,
        gossip: crate::store::GossipIdentity,
    ) -> Result<(), ClusterError> {
        self.rt.register_gossip(gossip).await
    }

    /// Declares this node's containers on attachable networks (the whole set): the
    /// managers keep one attachment per container and network, with an address.
    pub async fn set_attachments(
        &self,
        wanted: Vec<crate::store::WantedAttachment>,
    ) -> Result<(), ClusterError> {
        self.rt.set_attachments(wanted).await
    }

    /// The swarm's networks, from the leader (any node may ask).
    pub async fn networks(&self) -> Result<Vec<crate::store::Network>, ClusterError> {
        self.rt.networks().await
    }
}

impl Manager {
    /// This node's task link.
    pub fn node_client(&self) -> NodeClient {
        NodeClient {
            rt: self.rt.clone(),
        }
    }

    /// Asks node `node_id` at `addr` (its node port) with `body`, presenting this
    /// manager's certificate; fails past `deadline`.
    pub async fn call_node(
        &self,
        node_id: &str,
        addr: SocketAddr,
        body: &[u8],
        deadline: Duration,
    ) -> Result<Vec<u8>, ClusterError> {
        node_port::call(&self.rt, node_id, addr, body, deadline).await
    }

    /// Like [`Self::call_node`], for a node that answers with frames as they come
    /// (`service logs -f`); each must come within `idle` of the last.
    pub async fn call_node_stream(
        &self,
        node_id: &str,
        addr: SocketAddr,
        body: &[u8],
        idle: Duration,
    ) -> Result<NodePortStream, ClusterError> {
        node_port::call_stream(&self.rt, node_id, addr, body, idle).await
    }

    /// This manager's own copy of the state (possibly stale; never waits). `None` if it
    /// no longer runs as a manager.
    pub fn local_state(&self) -> Option<ClusterState> {
        self.rt.core().map(|c| c.store_node().read_stale())
    }

    /// Seals registry credentials for service `service_id`, for the store (see
    /// [`crate::registry_auth`]).
    pub fn seal_registry_auth(
        &self,
        service_id: &str,
        creds: &RegistryCredentials,
    ) -> Result<SealedCredentials, ClusterError> {
        let core = self.rt.require_manager()?;
        core.registry_keys()
            .seal(service_id, creds)
            .map_err(|e| ClusterError::Protocol(format!("sealing registry credentials: {e}")))
    }

    /// Opens registry credentials sealed for service `service_id` (a manager resolving
    /// a service's new image with the credentials it already has).
    pub fn open_registry_auth(
        &self,
        service_id: &str,
        sealed: &SealedCredentials,
    ) -> Result<RegistryCredentials, ClusterError> {
        let core = self.rt.require_manager()?;
        core.registry_keys()
            .open(service_id, sealed)
            .map_err(|e| ClusterError::Protocol(format!("registry credentials: {e}")))
    }

    /// Whether this manager is the Raft leader now (no quorum check).
    pub fn is_leader(&self) -> bool {
        self.rt.core().is_some_and(|c| c.store_node().is_leader())
    }

    /// The store version this manager has applied, as it changes.
    pub fn subscribe(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.rt.core().map(|c| c.store_node().subscribe())
    }

    /// `swarm init`: a new cluster with this node as its only manager; see the module docs.
    pub async fn init(
        config: ManagerConfig,
        node: NodeInfo,
        options: InitOptions,
    ) -> Result<Manager, ClusterError> {
        Self::init_with(config, node, options, Timings::default()).await
    }

    /// [`Manager::init`] with explicit timings (kept in `data_dir` for resume).
    pub async fn init_with(
        config: ManagerConfig,
        node: NodeInfo,
        options: InitOptions,
        timings: Timings,
    ) -> Result<Manager, ClusterError> {
        let rt = Runtime::init(config, node, options, timings).await?;
        Ok(Manager { rt })
    }

    /// Restart: load from `config.data_dir` and serve again (the member rejoins its Raft
    /// group). Ports 0 in `config` mean "as before". An autolocked manager fails with
    /// [`ClusterError::Locked`], having started nothing: see [`Manager::unlock`].
    pub async fn resume(config: ManagerConfig) -> Result<Manager, ClusterError> {
        let rt = Runtime::resume(&config.data_dir, Some(&config), None).await?;
        Ok(Manager { rt })
    }

    /// [`Manager::resume`] of a locked manager with the cluster's unlock key
    /// (`swarm unlock`). A wrong key is [`ClusterError::BadUnlockKey`] and changes
    /// nothing; a manager that is not locked is [`ClusterError::NotLocked`].
    pub async fn unlock(
        config: ManagerConfig,
        unlock_key: &KeyEncryptionKey,
    ) -> Result<Manager, ClusterError> {
        let rt = Runtime::resume(&config.data_dir, Some(&config), Some(unlock_key)).await?;
        Ok(Manager { rt })
    }

    /// `swarm init --force-new-cluster`: this manager becomes the only voter of its
    /// Raft group, with all the state it holds; see the runtime's `force_new_cluster`.
    /// Returns once it leads and accepts writes.
    pub async fn force_new_cluster(&self) -> Result<(), ClusterError> {
        self.rt.force_new_cluster().await
    }

    /// The cluster's unlock key, `None` while autolock is off (`swarm unlock-key`).
    pub async fn unlock_key(&self) -> Result<Option<KeyEncryptionKey>, ClusterError> {
        self.rt.require_manager()?;
        self.rt.unlock_key().await
    }

    /// Turns autolock on (a new unlock key, unless it is on already) or off. Returns the
    /// new unlock key when this call turned autolock on (as Docker prints it only
    /// then), once this manager's data key follows.
    pub async fn set_autolock(&self, on: bool) -> Result<Option<KeyEncryptionKey>, ClusterError> {
        self.rt.require_manager()?;
        self.rt.set_autolock(on).await
    }

    /// A new unlock key (`swarm unlock-key --rotate`); refused while autolock is off.
    /// Returns once this manager's data key is wrapped by it; every other manager
    /// rewraps its own as it applies the change.
    pub async fn rotate_unlock_key(&self) -> Result<KeyEncryptionKey, ClusterError> {
        self.rt.require_manager()?;
        self.rt.rotate_unlock_key().await
    }

    pub fn node_id(&self) -> &str {
        self.rt.node_id()
    }

    /// This node's current role (a manager can be demoted by the cluster).
    pub fn role(&self) -> Role {
        self.rt.role()
    }

    /// This node's current certificate (it changes on renewal, promotion, demotion).
    pub fn certificate(&self) -> NodeCertificate {
        self.rt.identity().certificate().clone()
    }

    /// The address the API is bound to (with the real port when 0 was asked for).
    pub fn listen_addr(&self) -> SocketAddr {
        self.rt.local().listen
    }

    /// The address other nodes dial.
    pub fn advertise_addr(&self) -> SocketAddr {
        self.rt.local().advertise
    }

    /// The cluster state, linearizable (read through the leader).
    pub async fn state(&self) -> Result<ClusterState, ClusterError> {
        self.rt.require_manager()?;
        self.rt.read_state().await
    }

    /// Proposes `command` (on the leader, forwarded there over mTLS if needed). A refused
    /// command is `Ok(ApplyResult::Rejected)`, as in the store.
    pub async fn execute(&self, command: Command) -> Result<ApplyResult, ClusterError> {
        self.rt.require_manager()?;
        self.rt.execute(command).await
    }

    pub async fn join_token(&self, role: Role) -> Result<JoinToken, ClusterError> {
        let state = self.state().await?;
        Ok(runtime::tokens_of(&state)
            .map_err(ClusterError::Protocol)?
            .get(role)
            .clone())
    }

    /// A new token for `role`; the old one is refused for new joins from now on.
    pub async fn rotate_token(&self, role: Role) -> Result<JoinToken, ClusterError> {
        self.rt.require_manager()?;
        self.rt.rotate_token(role).await
    }

    /// `swarm ca --rotate`: a new root CA, cross-signed by the current one. Returns the
    /// new root's digest once the rotation started; every node follows it on its next
    /// heartbeats, and the leader makes it the root once every member holds a
    /// certificate it signed ([`Manager::ca_status`] tells how far it is). Refused
    /// while a rotation runs.
    pub async fn rotate_ca(&self) -> Result<crate::pki::CaDigest, ClusterError> {
        self.rt.rotate_ca().await
    }

    /// The cluster's root CA now and how far a rotation has come (from the leader).
    pub async fn ca_status(&self) -> Result<CaStatus, ClusterError> {
        self.rt.ca_status().await
    }

    /// The manager status of every manager node in `state`, as this manager sees it:
    /// the Raft leader, Reachable (a voter whose heartbeats arrive), or Unreachable.
    pub fn manager_status(&self, state: &ClusterState) -> BTreeMap<String, ManagerStatus> {
        self.rt.manager_status(state)
    }

    /// This manager's Raft member as it sees itself (term, leader, log and applied
    /// indexes); None while it runs no store member (demoted, or not started).
    pub fn store_status(&self) -> Option<crate::store::StoreStatus> {
        self.rt.store_status()
    }

    /// Every node's traffic per second, as the leader last told this manager (about a
    /// heartbeat old; empty until it has two samples of a node).
    pub fn traffic_rates(&self) -> BTreeMap<String, TrafficRates> {
        self.rt.traffic_rates()
    }

    /// The current Raft leader's node ID, as this manager knows it.
    pub fn leader(&self) -> Option<String> {
        self.rt.leader_node_id()
    }

    /// Makes a Ready worker a manager. Returns once the node is a voter of the Raft group
    /// (it takes its manager certificate and joins on its next heartbeat); a node that
    /// does not join in time is made a worker again and the promotion fails.
    pub async fn promote(&self, node_id: &str) -> Result<(), ClusterError> {
        self.rt.require_manager()?;
        self.rt.promote(node_id).await
    }

    /// Makes a manager a worker (removed from the Raft group first). The last manager
    /// cannot be demoted.
    pub async fn demote(&self, node_id: &str) -> Result<(), ClusterError> {
        self.rt.require_manager()?;
        self.rt.demote(node_id).await
    }

    /// `node rm`: a Ready node needs `force`; a manager needs `force` (it is taken out of
    /// the Raft group); the last manager and the current node are refused.
    pub async fn remove_node(&self, node_id: &str, force: bool) -> Result<(), ClusterError> {
        self.rt.require_manager()?;
        self.rt.remove_node(node_id, force).await
    }

    /// `swarm leave`: a manager needs `force`; it is taken out of the Raft group (the last
    /// manager leaving ends the cluster). Removes the local cluster files.
    pub async fn leave(self, force: bool) -> Result<(), ClusterError> {
        self.rt.leave(force).await
    }

    /// How many `Join` requests this manager has received (a join whose token names another
    /// cluster's CA never gets this far).
    pub fn join_requests(&self) -> u64 {
        self.rt.join_requests()
    }

    /// Stops serving, heartbeating and the Raft member; the files stay for `resume`.
    pub async fn shutdown(self) {
        self.rt.shutdown().await
    }
}

impl Worker {
    /// This node's task link.
    pub fn node_client(&self) -> NodeClient {
        NodeClient {
            rt: self.rt.clone(),
        }
    }

    /// Restart a worker from `data_dir`.
    pub async fn resume(data_dir: &Path) -> Result<Worker, ClusterError> {
        let rt = Runtime::resume(data_dir, None, None).await?;
        Ok(Worker { rt })
    }

    pub fn node_id(&self) -> &str {
        self.rt.node_id()
    }

    /// This node's current role (it changes when the managers promote it).
    pub fn role(&self) -> Role {
        self.rt.role()
    }

    /// This node's current certificate (it changes on renewal, promotion, demotion).
    pub fn certificate(&self) -> NodeCertificate {
        self.rt.identity().certificate().clone()
    }

    /// The manager handle of this node once it has been promoted and runs as a manager.
    pub fn manager(&self) -> Option<Manager> {
        self.rt.core().map(|_| Manager {
            rt: self.rt.clone(),
        })
    }

    /// `swarm leave`: tells the leader (the node shows Down, still listed) and removes the
    /// local cluster files. Refused with [`ClusterError::ManagerNeedsForce`] if the node
    /// has been promoted meanwhile.
    pub async fn leave(self) -> Result<(), ClusterError> {
        self.rt.leave(false).await
    }

    /// Stops heartbeating (the managers will mark the node Down); files stay.
    pub async fn shutdown(self) {
        self.rt.shutdown().await
    }
}

/// `swarm join --token T MANAGER:2377`; see the module docs.
pub async fn join(
    manager: SocketAddr,
    token: &str,
    config: ManagerConfig,
    node: NodeInfo,
) -> Result<Joined, ClusterError> {
    join_with(manager, token, config, node, Timings::default()).await
}

/// [`join`] with explicit timings (kept in `data_dir` for resume).
pub async fn join_with(
    manager: SocketAddr,
    token: &str,
    config: ManagerConfig,
    node: NodeInfo,
    timings: Timings,
) -> Result<Joined, ClusterError> {
    let rt = Runtime::join(manager, token, config, node, timings).await?;
    Ok(if rt.core().is_some() {
        Joined::Manager(Manager { rt })
    } else {
        Joined::Worker(Worker { rt })
    })
}
