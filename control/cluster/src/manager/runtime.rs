//! One node's cluster runtime: its identity and client, its heartbeat loop, and — while it
//! is a manager — its Raft member, its listener and the leader's liveness monitor.
//!
//! This file holds the runtime's state ([`Runtime`], [`Core`]) and the helpers its parts
//! share; the parts, one job each:
//! - `lifecycle`: init, join, resume, leave and shutdown; starting and stopping the
//!   manager core and the node's tasks.
//! - `forward`: calls to the leader (followed across "not the leader" answers).
//! - `heartbeat`: the node's own loop: heartbeats, role changes, certificate renewal.
//! - `handlers`: the server side: what each request needs, and its dispatch.
//! - `authorize`: whether a caller may ask, from its certificate and the store.
//! - `view`: what a node may see of the state (its tasks' needs only).
//! - `reports`: task reports cut to what changes something; the nodes' write budgets.
//! - `admit`: joins and renewals (certificates issued by the leader).
//! - `membership`: leave, promote, demote, remove and manager-ready on the leader.
//! - `liveness`: heartbeats received and the leader's monitor that marks nodes Down.
//! - `applied`: the store version each node's dataplane follows, as the leader heard
//!   it, and the lowest over the Ready nodes (when a stopping task is withdrawn).
//! - `accept`: the listener's accept loop and per-connection serving.
//! - `autolock`: the manager's data key following the store's autolock setting, and
//!   turning autolock on, off, or rotating its key.
//! - `ca`: rotating the root CA: what the managers sign with, following the store; when
//!   a node renews to follow; the leader finishing a rotation.

mod accept;
mod admit;
mod applied;
mod authorize;
mod autolock;
mod ca;
mod dead_leader;
mod forward;
mod handlers;
mod heartbeat;
mod lifecycle;
mod liveness;
mod membership;
mod reports;
mod traffic;
mod view;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;

use super::keys::ManagerKeys;
use super::persist::{self, Local};
use super::wire::{Client, KnownManagers, WireError};
use super::{ClusterError, ManagerStatus, Role, Timings};
use crate::pki::cert::random_bytes;
use crate::pki::{client_config, join_server_config, CaTrust, IssueOptions, NodeIdentity};
use crate::registry_auth::RegistryKeyring;
use crate::seal::DataKey;
use crate::store::{ClusterState, NodeStatus, RaftId, StoreNode};
use crate::token::JoinTokens;

use accept::{Admission, ListenerLimits};
pub(crate) use accept::{MAX_JOIN_FRAME, MAX_NODE_FRAME};
pub(crate) use admit::{check_join_request, check_token};
use applied::AppliedVersions;
pub use ca::CaStatus;
pub(crate) use ca::{CaTarget, Signers};
pub(crate) use handlers::needs;
use liveness::Liveness;
pub(crate) use membership::promote_join_wait;
use reports::WriteBudget;

/// Bound on a server-side TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T: Clone>(m: &RwLock<T>) -> T {
    m.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(m: &RwLock<T>, value: T) {
    *m.write().unwrap_or_else(|p| p.into_inner()) = value;
}

fn store_role(role: Role) -> crate::store::Role {
    match role {
        Role::Manager => crate::store::Role::Manager,
        Role::Worker => crate::store::Role::Worker,
    }
}

fn pki_role(role: crate::store::Role) -> Role {
    match role {
        crate::store::Role::Manager => Role::Manager,
        crate::store::Role::Worker => Role::Worker,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn other(e: impl std::fmt::Display) -> WireError {
    WireError::Other {
        detail: e.to_string(),
    }
}

/// The join tokens kept in the state.
pub(crate) fn tokens_of(state: &ClusterState) -> Result<JoinTokens, String> {
    let value = state
        .tokens
        .as_ref()
        .ok_or_else(|| "the cluster has no join tokens".to_string())?;
    serde_json::from_value(value.clone()).map_err(|e| format!("join tokens in the store: {e}"))
}

/// The managers' node IDs in `state` (those a node may talk to as managers).
fn manager_ids(state: &ClusterState) -> Vec<String> {
    state
        .nodes
        .values()
        .filter(|n| n.role == crate::store::Role::Manager && n.raft_id.is_some())
        .filter(|n| !state.removed_nodes.contains_key(&n.id))
        .map(|n| n.id.clone())
        .collect()
}

/// The advertise addresses of the managers in `state` that are voters of the Raft group
/// (`core`'s view): where nodes send their calls. A node being promoted is a manager in
/// the store before it serves anything; naming it would send calls to an address that
/// hangs or refuses until it has joined.
fn manager_addrs(state: &ClusterState, core: &Core) -> Vec<String> {
    let voters = core.store.status().voters;
    state
        .nodes
        .values()
        .filter(|n| n.role == crate::store::Role::Manager)
        .filter(|n| n.raft_id.is_some_and(|id| voters.contains_key(&id)))
        .map(|n| n.advertise_addr.clone())
        .collect()
}

fn fresh_raft_id(state: &ClusterState) -> RaftId {
    let used: HashSet<RaftId> = state.nodes.values().filter_map(|n| n.raft_id).collect();
    loop {
        // 53 bits: exact in any JSON reader.
        let id = u64::from_be_bytes(random_bytes::<8>()) >> 11;
        if id != 0 && !used.contains(&id) {
            return id;
        }
    }
}

fn with_port(addr: SocketAddr, port: u16) -> SocketAddr {
    if addr.port() == 0 {
        SocketAddr::new(addr.ip(), port)
    } else {
        addr
    }
}

fn issue_options(timings: &Timings, role: Role, advertise: Option<SocketAddr>) -> IssueOptions {
    let mut opts = IssueOptions::with_validity(timings.cert_validity);
    if role == Role::Manager {
        opts.ip_addresses = advertise
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
            .into_iter()
            .collect();
    }
    opts
}

/// What runs while the node is a manager.
pub(crate) struct Core {
    store: StoreNode,
    raft_id: RaftId,
    /// The CAs this manager signs with, following the store (`ca`).
    signers: RwLock<Arc<Signers>>,
    server_config: RwLock<Arc<rustls::ServerConfig>>,
    /// The roots the listener trusts now (its config's): a connection whose peer's
    /// certificate no root of these signed any more is closed.
    server_trust: RwLock<Arc<CaTrust>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Core {
    pub(crate) fn store_node(&self) -> &StoreNode {
        &self.store
    }

    pub(crate) fn signers(&self) -> Arc<Signers> {
        read(&self.signers)
    }

    fn set_signers(&self, signers: Signers) {
        write(&self.signers, Arc::new(signers));
    }

    /// The keys of services' registry credentials, as this member's store has them.
    pub(crate) fn registry_keys(&self) -> RegistryKeyring {
        let signers = self.signers();
        self.store
            .read_stale_with(|s| RegistryKeyring::new(&s.registry_keys, &signers.root))
    }

    fn set_server(&self, identity: &NodeIdentity) -> Result<(), ClusterError> {
        let config = Arc::new(join_server_config(identity, identity.trust())?);
        write(&self.server_config, config);
        write(&self.server_trust, Arc::new(identity.trust().clone()));
        Ok(())
    }

    /// The leader's advertise address, as this member knows it.
    fn leader_addr(&self) -> Option<String> {
        let st = self.store.status();
        st.leader.and_then(|l| st.voters.get(&l).cloned())
    }
}

pub(crate) struct Runtime {
    dir: PathBuf,
    node_id: String,
    cluster_id: String,
    timings: Timings,
    identity: RwLock<NodeIdentity>,
    /// The managers this node's client talks to (from the leader's answers).
    known_managers: Arc<KnownManagers>,
    client: RwLock<Arc<Client>>,
    core: RwLock<Option<Arc<Core>>>,
    /// The data key (and the KEK wrapping it) while the node is a manager.
    keys: Mutex<Option<ManagerKeys>>,
    local: Mutex<Local>,
    liveness: Mutex<Liveness>,
    /// This node's traffic counters, for its next heartbeat.
    traffic_out: Mutex<Option<crate::manager::NodeTraffic>>,
    /// Every node's rates, as the leader's last heartbeat answer said (managers).
    rates_in: Mutex<std::collections::BTreeMap<String, crate::manager::TrafficRates>>,
    /// The store version each node's dataplane follows (while this node leads).
    applied: Mutex<AppliedVersions>,
    /// The store writes each node may still cause (while this node leads).
    writes: Mutex<WriteBudget>,
    /// The bounds on port 2377's connections (while this node is a manager).
    admission: Arc<Admission>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    transition: tokio::sync::Mutex<()>,
    /// On the leader: a promotion's final decision and a new manager's join to the Raft
    /// group, one at a time (see `membership.rs`).
    membership: tokio::sync::Mutex<()>,
    join_requests: AtomicU64,
    /// How far this node's clock was from the manager's when it joined, if beyond
    /// MAX_CLOCK_SKEW (the operator is warned).
    join_clock_skew: Mutex<Option<Duration>>,
}

impl Runtime {
    fn new(
        dir: &Path,
        identity: NodeIdentity,
        local: Local,
        keys: Option<ManagerKeys>,
    ) -> Result<Arc<Runtime>, ClusterError> {
        let known_managers = Arc::new(KnownManagers::default());
        let client = Arc::new(Client::new(
            client_config(&identity, identity.trust())?,
            known_managers.clone(),
        ));
        Ok(Arc::new(Runtime {
            known_managers,
            dir: dir.to_path_buf(),
            node_id: identity.node_id().to_string(),
            cluster_id: identity.cluster_id().to_string(),
            timings: local.timings.clone(),
            identity: RwLock::new(identity),
            client: RwLock::new(client),
            core: RwLock::new(None),
            keys: Mutex::new(keys),
            local: Mutex::new(local),
            liveness: Mutex::new(Liveness::default()),
            traffic_out: Mutex::new(None),
            rates_in: Mutex::new(Default::default()),
            applied: Mutex::new(AppliedVersions::default()),
            writes: Mutex::new(WriteBudget::default()),
            admission: Admission::new(ListenerLimits::default()),
            tasks: Mutex::new(Vec::new()),
            transition: tokio::sync::Mutex::new(()),
            membership: tokio::sync::Mutex::new(()),
            join_requests: AtomicU64::new(0),
            join_clock_skew: Mutex::new(None),
        }))
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
    }

    pub(crate) fn set_traffic(&self, traffic: crate::manager::NodeTraffic) {
        *lock(&self.traffic_out) = Some(traffic);
    }

    pub(crate) fn traffic_rates(
        &self,
    ) -> std::collections::BTreeMap<String, crate::manager::TrafficRates> {
        lock(&self.rates_in).clone()
    }

    pub(crate) fn role(&self) -> Role {
        self.identity().role()
    }

    /// The clock difference with the manager at join time, when it exceeded the bound.
    pub(crate) fn join_clock_skew(&self) -> Option<Duration> {
        *lock(&self.join_clock_skew)
    }

    pub(crate) fn identity(&self) -> NodeIdentity {
        read(&self.identity)
    }

    /// The managers this node takes requests from and talks to.
    pub(crate) fn known_managers(&self) -> &KnownManagers {
        &self.known_managers
    }

    pub(crate) fn client(&self) -> Arc<Client> {
        read(&self.client)
    }

    pub(crate) fn core(&self) -> Option<Arc<Core>> {
        read(&self.core)
    }

    pub(crate) fn local(&self) -> Local {
        lock(&self.local).clone()
    }

    pub(crate) fn join_requests(&self) -> u64 {
        self.join_requests.load(Ordering::Relaxed)
    }

    pub(crate) fn require_manager(&self) -> Result<Arc<Core>, ClusterError> {
        self.core().ok_or(ClusterError::NotManager)
    }

    pub(crate) fn update_local(&self, f: impl FnOnce(&mut Local)) -> Result<(), ClusterError> {
        let local = {
            let mut local = lock(&self.local);
            f(&mut local);
            local.clone()
        };
        persist::save_local(&self.dir, &local)
    }

    /// The manager's data key; `None` on a worker.
    pub(crate) fn data_key(&self) -> Option<DataKey> {
        lock(&self.keys).as_ref().map(|k| k.data_key().clone())
    }

    /// The manager's data key, which a manager's work needs.
    fn require_data_key(&self) -> Result<DataKey, ClusterError> {
        self.data_key().ok_or_else(|| ClusterError::Files {
            path: self.dir.clone(),
            reason: "a manager without its data key".into(),
        })
    }

    fn set_identity(&self, identity: NodeIdentity) -> Result<(), ClusterError> {
        persist::save_identity(&self.dir, &identity, self.data_key().as_ref())?;
        if identity.role() == Role::Worker && self.core().is_none() {
            // Demoted, and the worker's identity is saved: the data key has nothing left
            // to open.
            super::keys::remove(&self.dir)?;
            *lock(&self.keys) = None;
        }
        let client = Arc::new(Client::new(
            client_config(&identity, identity.trust())?,
            self.known_managers.clone(),
        ));
        if let Some(core) = self.core() {
            core.set_server(&identity)?;
        }
        write(&self.identity, identity);
        let old = std::mem::replace(
            &mut *self.client.write().unwrap_or_else(|p| p.into_inner()),
            client,
        );
        old.clear();
        Ok(())
    }

    pub(crate) fn manager_status(&self, state: &ClusterState) -> BTreeMap<String, ManagerStatus> {
        let Some(core) = self.core() else {
            return BTreeMap::new();
        };
        let st = core.store.status();
        state
            .nodes
            .values()
            .filter(|n| n.role == crate::store::Role::Manager)
            .map(|n| {
                let status = match n.raft_id {
                    Some(id) if st.leader == Some(id) && st.voters.contains_key(&id) => {
                        ManagerStatus::Leader
                    }
                    Some(id) if st.voters.contains_key(&id) && n.status == NodeStatus::Ready => {
                        ManagerStatus::Reachable
                    }
                    _ => ManagerStatus::Unreachable,
                };
                (n.id.clone(), status)
            })
            .collect()
    }

    pub(crate) fn store_status(&self) -> Option<crate::store::StoreStatus> {
        Some(self.core()?.store.status())
    }

    pub(crate) fn leader_node_id(&self) -> Option<String> {
        let core = self.core()?;
        let leader = core.store.leader()?;
        core.store
            .read_stale()
            .nodes
            .values()
            .find(|n| n.raft_id == Some(leader))
            .map(|n| n.id.clone())
    }
}

/// A fresh random gossip cluster key named `id`, made now.
pub fn new_gossip_key(id: u32) -> Result<crate::store::GossipKey, ClusterError> {
    use ring::rand::SecureRandom;
    let mut secret = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| ClusterError::Protocol("no randomness for the gossip key".into()))?;
    Ok(crate::store::GossipKey {
        id,
        secret: secret.iter().map(|b| format!("{b:02x}")).collect(),
        created_ms: now_ms(),
    })
}
