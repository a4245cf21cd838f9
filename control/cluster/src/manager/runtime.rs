//! One node's cluster runtime: its identity and client, its heartbeat loop, and — while it
//! is a manager — its Raft member, its listener and the leader's liveness monitor.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::persist::{self, Local};
use super::wire::{
    exchange, read_frame, write_frame, Client, Grant, HeartbeatAck, Reply, Request, Response,
    TlsTransport, WireError,
};
use super::{ClusterError, InitOptions, ManagerConfig, ManagerStatus, NodeInfo, Role, Timings};
use crate::pki::cert::random_bytes;
use crate::pki::{
    bootstrap_client_config, client_config, is_ca_pin_mismatch, join_server_config,
    manager_server_name, new_node_id, pinned_ca_from_chain, ClusterCa, IssueOptions,
    NodeCertificate, NodeCsr, NodeIdentity, PeerIdentity,
};
use crate::store::{
    ApplyResult, Availability, ClusterSpec, ClusterState, Command, MemberState, Network, Node,
    NodeStatus, RaftId, StoreConfig, StoreError, StoreNode,
};
use crate::token::{JoinToken, JoinTokens, TokenError};

/// Bound on a server-side TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The ingress network's VXLAN ID, as in Swarm.
const INGRESS_VNI: u32 = 4096;
/// A joining node whose clock differs from the manager's by more than this is warned.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

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

/// The managers' advertise addresses in `state`.
fn manager_addrs(state: &ClusterState) -> Vec<String> {
    state
        .nodes
        .values()
        .filter(|n| n.role == crate::store::Role::Manager && n.raft_id.is_some())
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

fn store_config(t: &Timings) -> StoreConfig {
    StoreConfig {
        heartbeat_interval: t.raft_heartbeat_interval,
        election_timeout_min: t.election_timeout_min,
        election_timeout_max: t.election_timeout_max,
        request_timeout: t.request_timeout,
        ..StoreConfig::default()
    }
}

/// The leader's view of who heartbeats.
#[derive(Default)]
struct Liveness {
    /// The term the map below belongs to (cleared when leadership changes).
    term: Option<u64>,
    last_seen: HashMap<String, Instant>,
    /// Nodes that left: their late heartbeats are ignored.
    left: HashSet<String>,
}

/// What runs while the node is a manager.
pub(crate) struct Core {
    store: StoreNode,
    raft_id: RaftId,
    ca: ClusterCa,
    server_config: RwLock<Arc<rustls::ServerConfig>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Core {
    pub(crate) fn store_node(&self) -> &StoreNode {
        &self.store
    }

    /// The leader's advertise address, as this member knows it.
    fn leader_addr(&self) -> Option<String> {
        let st = self.store.status();
        st.leader.and_then(|l| st.voters.get(&l).cloned())
    }
}

enum Target {
    Local,
    Remote(String),
}

pub(crate) struct Runtime {
    dir: PathBuf,
    node_id: String,
    cluster_id: String,
    timings: Timings,
    identity: RwLock<NodeIdentity>,
    client: RwLock<Arc<Client>>,
    core: RwLock<Option<Arc<Core>>>,
    local: Mutex<Local>,
    liveness: Mutex<Liveness>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    transition: tokio::sync::Mutex<()>,
    join_requests: AtomicU64,
    /// How far this node's clock was from the manager's when it joined, if beyond
    /// MAX_CLOCK_SKEW (the operator is warned).
    join_clock_skew: Mutex<Option<Duration>>,
}

impl Runtime {
    fn new(dir: &Path, identity: NodeIdentity, local: Local) -> Result<Arc<Runtime>, ClusterError> {
        let client = Arc::new(Client::new(client_config(&identity, identity.ca())?));
        Ok(Arc::new(Runtime {
            dir: dir.to_path_buf(),
            node_id: identity.node_id().to_string(),
            cluster_id: identity.cluster_id().to_string(),
            timings: local.timings.clone(),
            identity: RwLock::new(identity),
            client: RwLock::new(client),
            core: RwLock::new(None),
            local: Mutex::new(local),
            liveness: Mutex::new(Liveness::default()),
            tasks: Mutex::new(Vec::new()),
            transition: tokio::sync::Mutex::new(()),
            join_requests: AtomicU64::new(0),
            join_clock_skew: Mutex::new(None),
        }))
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
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

    fn update_local(&self, f: impl FnOnce(&mut Local)) -> Result<(), ClusterError> {
        let local = {
            let mut local = lock(&self.local);
            f(&mut local);
            local.clone()
        };
        persist::save_local(&self.dir, &local)
    }

    fn set_identity(&self, identity: NodeIdentity) -> Result<(), ClusterError> {
        persist::save_identity(&self.dir, &identity)?;
        let client = Arc::new(Client::new(client_config(&identity, identity.ca())?));
        if let Some(core) = self.core() {
            let config = Arc::new(join_server_config(&identity, identity.ca())?);
            write(&core.server_config, config);
        }
        write(&self.identity, identity);
        let old = std::mem::replace(
            &mut *self.client.write().unwrap_or_else(|p| p.into_inner()),
            client,
        );
        old.clear();
        Ok(())
    }

    // ---- starting and stopping ----

    pub(crate) async fn init(
        config: ManagerConfig,
        node: NodeInfo,
        options: InitOptions,
        timings: Timings,
    ) -> Result<Arc<Runtime>, ClusterError> {
        let dir = config.data_dir.clone();
        if persist::in_cluster(&dir) {
            return Err(ClusterError::AlreadyInCluster);
        }
        persist::ensure_dir(&dir)?;
        let listener = TcpListener::bind(config.listen).await?;
        let listen = listener.local_addr()?;
        let advertise = with_port(config.advertise, listen.port());

        let cluster_id = new_node_id();
        let ca = ClusterCa::new(&cluster_id)?;
        let node_id = new_node_id();
        let (key, csr) = NodeIdentity::generate_key_and_csr(&node_id)?;
        let cert = ca.issue(
            &csr,
            &node_id,
            Role::Manager,
            &issue_options(&timings, Role::Manager, Some(advertise)),
        )?;
        let identity = NodeIdentity::new(key, cert, ca.certificate().clone())?;
        let raft_id = fresh_raft_id(&ClusterState::default());
        let local = Local {
            listen,
            advertise,
            info: node.clone(),
            managers: vec![advertise.to_string()],
            raft_id: Some(raft_id),
            timings,
        };
        let _ = std::fs::remove_dir_all(persist::raft_dir(&dir));
        persist::save_ca_key(&dir, &ca.key_pem_secret())?;
        persist::save_local(&dir, &local)?;

        let rt = Runtime::new(&dir, identity.clone(), local)?;
        let setup = async {
            let tokens = JoinTokens::generate(ca.digest());
            let core = rt
                .start_core(raft_id, ca, listener, Some(advertise))
                .await?;
            let deadline = Instant::now() + rt.timings.request_timeout;
            while !core.store.is_leader() {
                if Instant::now() > deadline {
                    return Err(ClusterError::NoQuorum);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let pools: Vec<String> = options
                .default_addr_pools
                .iter()
                .map(|p| p.to_string())
                .collect();
            let ingress = options
                .default_addr_pools
                .iter()
                .find_map(|p| p.subnets(options.subnet_prefix_len).ok()?.next());
            let commands = [
                Command::SetCluster {
                    cluster: ClusterSpec {
                        id: cluster_id.clone(),
                        default_addr_pools: pools,
                        subnet_prefix_len: options.subnet_prefix_len,
                        data_path_port: options.data_path_port,
                    },
                },
                Command::SetTokens {
                    tokens: serde_json::to_value(&tokens)
                        .map_err(|e| ClusterError::Protocol(e.to_string()))?,
                },
                Command::SetGossipKeys {
                    keys: vec![new_gossip_key(1)?],
                },
                Command::UpsertNode {
                    node: Node {
                        id: node_id.clone(),
                        hostname: node.hostname.clone(),
                        role: crate::store::Role::Manager,
                        availability: Availability::Active,
                        status: NodeStatus::Ready,
                        advertise_addr: advertise.to_string(),
                        data_path_addr: None,
                        engine_version: node.engine_version.clone(),
                        labels: BTreeMap::new(),
                        raft_id: Some(raft_id),
                        version: 0,
                    },
                },
                Command::UpsertNetwork {
                    network: Network {
                        id: new_node_id(),
                        name: "ingress".to_string(),
                        driver: "overlay".to_string(),
                        subnet: ingress.map(|n| n.to_string()),
                        gateway: ingress
                            .and_then(|n| n.hosts().next())
                            .map(|g| g.to_string()),
                        vni: Some(INGRESS_VNI),
                        ingress: true,
                        attachable: false,
                        internal: false,
                        encrypted: false,
                        labels: BTreeMap::new(),
                        options: BTreeMap::new(),
                        version: 0,
                    },
                },
            ];
            for command in commands {
                if let ApplyResult::Rejected { rejection, .. } = core.store.propose(command).await?
                {
                    return Err(ClusterError::Rejected(rejection));
                }
            }
            persist::save_identity(&dir, &identity)?;
            Ok(())
        };
        match setup.await {
            Ok(()) => {
                rt.start_node_tasks();
                tracing::info!(node = %rt.node_id, cluster = %rt.cluster_id, %advertise, "cluster initialized");
                Ok(rt)
            }
            Err(e) => {
                rt.shutdown().await;
                let _ = persist::wipe(&dir);
                Err(e)
            }
        }
    }

    pub(crate) async fn resume(
        dir: &Path,
        config: Option<&ManagerConfig>,
    ) -> Result<Arc<Runtime>, ClusterError> {
        let identity = persist::load_identity(dir)?;
        let mut local = persist::load_local(dir)?;
        match (config.is_some(), identity.role()) {
            (true, Role::Worker) => return Err(ClusterError::NotManager),
            (false, Role::Manager) => return Err(ClusterError::IsManager),
            _ => {}
        }
        if let Some(c) = config {
            if c.listen.port() != 0 {
                local.listen = c.listen;
            }
            if c.advertise.port() != 0 {
                local.advertise = c.advertise;
            }
        }
        let rt = Runtime::new(dir, identity.clone(), local.clone())?;
        if identity.role() == Role::Manager {
            let listener = TcpListener::bind(local.listen).await?;
            let listen = listener.local_addr()?;
            rt.update_local(|l| {
                l.listen = listen;
                l.advertise = with_port(l.advertise, listen.port());
            })?;
            let ca = persist::load_ca(dir, &identity)?;
            let raft_id = local.raft_id.ok_or_else(|| ClusterError::Files {
                path: dir.to_path_buf(),
                reason: "a manager without a Raft ID".into(),
            })?;
            rt.start_core(raft_id, ca, listener, None).await?;
        }
        rt.start_node_tasks();
        Ok(rt)
    }

    pub(crate) async fn join(
        manager: SocketAddr,
        token_text: &str,
        config: ManagerConfig,
        node: NodeInfo,
        timings: Timings,
    ) -> Result<Arc<Runtime>, ClusterError> {
        let dir = config.data_dir.clone();
        if persist::in_cluster(&dir) {
            return Err(ClusterError::AlreadyInCluster);
        }
        let token = JoinToken::parse(token_text)
            .map_err(|e| ClusterError::MalformedToken(e.to_string()))?;
        persist::ensure_dir(&dir)?;
        // Bound now, so that a manager tells the others where it really listens.
        let listener = TcpListener::bind(config.listen).await?;
        let listen = listener.local_addr()?;
        let advertise = with_port(config.advertise, listen.port());

        // The CA is pinned by the token's digest before anything is sent.
        let tls_config = bootstrap_client_config(token.ca_digest())?;
        let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(manager))
            .await
            .map_err(|_| ClusterError::Unreachable(format!("{manager}: connect timed out")))?
            .map_err(|e| ClusterError::Unreachable(format!("{manager}: {e}")))?;
        let connect = TlsConnector::from(Arc::new(tls_config)).connect(manager_server_name(), tcp);
        let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
            Err(_) => {
                return Err(ClusterError::Unreachable(format!(
                    "{manager}: TLS handshake timed out"
                )))
            }
            Ok(Err(e)) if is_ca_pin_mismatch(&e) => return Err(ClusterError::CaMismatch),
            Ok(Err(e)) => return Err(ClusterError::Tls(format!("{manager}: {e}"))),
            Ok(Ok(tls)) => tls,
        };
        let ca = pinned_ca_from_chain(
            tls.get_ref().1.peer_certificates().unwrap_or_default(),
            token.ca_digest(),
        )
        .ok_or(ClusterError::CaMismatch)?;

        let (key, csr) = NodeIdentity::generate_key_and_csr(&new_node_id())?;
        let request = Request::Join {
            token: token.expose_secret(),
            csr_pem: csr.pem(),
            node: node.clone(),
            advertise: advertise.to_string(),
        };
        let body =
            serde_json::to_vec(&request).map_err(|e| ClusterError::Protocol(e.to_string()))?;
        drop(request);
        let reply = exchange(&mut tls, &body)
            .await
            .map_err(|e| ClusterError::Unreachable(format!("{manager}: {e}")))?;
        drop(tls);
        let grant = match reply {
            Ok(Response::Granted(g)) => g,
            Ok(_) => return Err(ClusterError::Protocol("unexpected answer to join".into())),
            Err(e) => return Err(e.into()),
        };
        let skew = now_ms().abs_diff(grant.server_time_ms);
        let excessive_skew =
            (Duration::from_millis(skew) > MAX_CLOCK_SKEW).then(|| Duration::from_millis(skew));
        if excessive_skew.is_some() {
            tracing::warn!(
                skew_ms = skew,
                "this node's clock differs from the manager's; keep the cluster's clocks synchronized"
            );
        }
        let identity = NodeIdentity::new(key, NodeCertificate::from_pem(&grant.cert_pem)?, ca)?;
        if identity.node_id() != grant.node_id {
            return Err(ClusterError::Protocol(
                "the certificate is not for the node ID granted".into(),
            ));
        }
        let role = identity.role();
        let mut managers = vec![manager.to_string()];
        for m in grant.managers {
            if !managers.contains(&m) && m != advertise.to_string() {
                managers.push(m);
            }
        }
        let local = Local {
            listen: if role == Role::Manager {
                listen
            } else {
                config.listen
            },
            advertise: if role == Role::Manager {
                advertise
            } else {
                config.advertise
            },
            info: node,
            managers,
            raft_id: grant.raft_id,
            timings,
        };
        let _ = std::fs::remove_dir_all(persist::raft_dir(&dir));
        persist::save_local(&dir, &local)?;
        let rt = Runtime::new(&dir, identity.clone(), local)?;
        *lock(&rt.join_clock_skew) = excessive_skew;
        let setup = async {
            if role == Role::Manager {
                let key = grant.ca_key_pem.as_deref().ok_or_else(|| {
                    ClusterError::Protocol("a manager grant without the CA key".into())
                })?;
                persist::save_ca_key(&dir, key)?;
                let ca = ClusterCa::from_pem(&identity.ca().pem(), key)?;
                let raft_id = grant.raft_id.ok_or_else(|| {
                    ClusterError::Protocol("a manager grant without a Raft ID".into())
                })?;
                rt.start_core(raft_id, ca, listener, None).await?;
                rt.announce_manager().await?;
            } else {
                drop(listener);
            }
            persist::save_identity(&dir, &identity)
        };
        match setup.await {
            Ok(()) => {
                rt.start_node_tasks();
                tracing::info!(node = %rt.node_id, %role, "joined the cluster");
                Ok(rt)
            }
            Err(e) => {
                rt.shutdown().await;
                let _ = persist::wipe(&dir);
                Err(e)
            }
        }
    }

    /// Starts the Raft member, the listener and the liveness monitor.
    async fn start_core(
        self: &Arc<Self>,
        raft_id: RaftId,
        ca: ClusterCa,
        listener: TcpListener,
        initialize: Option<SocketAddr>,
    ) -> Result<Arc<Core>, ClusterError> {
        let transport = Arc::new(TlsTransport {
            rt: Arc::downgrade(self),
        });
        let store = StoreNode::start_with(
            raft_id,
            persist::raft_dir(&self.dir),
            transport,
            store_config(&self.timings),
        )
        .await?;
        if let Some(advertise) = initialize {
            if let Err(e) = store.initialize([(raft_id, advertise.to_string())]).await {
                let _ = store.shutdown().await;
                return Err(e.into());
            }
        }
        let identity = self.identity();
        let server_config = Arc::new(join_server_config(&identity, identity.ca())?);
        let core = Arc::new(Core {
            store,
            raft_id,
            ca,
            server_config: RwLock::new(server_config),
            tasks: Mutex::new(Vec::new()),
        });
        write(&self.core, Some(core.clone()));
        let accept = tokio::spawn(accept_loop(self.clone(), core.clone(), listener));
        let monitor = tokio::spawn(monitor_loop(self.clone(), core.clone()));
        lock(&core.tasks).extend([accept, monitor]);
        Ok(core)
    }

    async fn stop_core(&self) {
        let core = self.core.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(core) = core {
            for task in lock(&core.tasks).drain(..) {
                task.abort();
            }
            let _ = core.store.shutdown().await;
        }
    }

    fn start_node_tasks(self: &Arc<Self>) {
        let rt = self.clone();
        let heartbeat = tokio::spawn(async move {
            loop {
                rt.heartbeat_once().await;
                tokio::time::sleep(rt.timings.heartbeat_interval).await;
            }
        });
        lock(&self.tasks).push(heartbeat);
    }

    fn stop_node_tasks(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }

    pub(crate) async fn shutdown(&self) {
        self.stop_node_tasks();
        let _guard = self.transition.lock().await;
        self.stop_node_tasks();
        self.stop_core().await;
    }

    pub(crate) async fn leave(self: &Arc<Self>, force: bool) -> Result<(), ClusterError> {
        let core = self.core();
        if core.is_some() && !force {
            return Err(ClusterError::ManagerNeedsForce);
        }
        self.stop_node_tasks();
        let _guard = self.transition.lock().await;
        self.stop_node_tasks();
        let last = core.as_ref().is_some_and(|c| {
            let st = c.store.status();
            st.voters.len() <= 1 && st.voters.contains_key(&c.raft_id)
        });
        if !last {
            if let Err(e) = self.call_leader(Request::Leave).await {
                tracing::warn!(error = %e, "could not tell the managers that this node leaves");
            }
        }
        self.stop_core().await;
        persist::wipe(&self.dir)?;
        tracing::info!(node = %self.node_id, ended_cluster = last, "left the cluster");
        Ok(())
    }

    // ---- calls to the leader ----

    fn leader_target(&self, rotation: usize) -> Option<Target> {
        let own = lock(&self.local).advertise.to_string();
        if let Some(core) = self.core() {
            if core.store.is_leader() {
                return Some(Target::Local);
            }
            if let Some(addr) = core.leader_addr().filter(|a| *a != own) {
                return Some(Target::Remote(addr));
            }
        }
        let local = lock(&self.local);
        let candidates: Vec<&String> = local.managers.iter().filter(|m| **m != own).collect();
        if candidates.is_empty() {
            return None;
        }
        Some(Target::Remote(
            candidates[rotation % candidates.len()].clone(),
        ))
    }

    /// Sends `request` to the leader (or handles it here when this is the leader),
    /// following "not the leader" answers, for up to the request timeout.
    pub(crate) async fn call_leader(
        self: &Arc<Self>,
        request: Request,
    ) -> Result<Response, ClusterError> {
        let deadline = Instant::now() + self.timings.request_timeout;
        let mut hint: Option<String> = None;
        let mut rotation = 0usize;
        let mut unreachable: Option<String> = None;
        loop {
            let target = match hint.take() {
                Some(addr) => Some(Target::Remote(addr)),
                None => self.leader_target(rotation),
            };
            let reply = match target {
                Some(Target::Local) => {
                    self.handle(Some(self.identity().peer_identity()), request.clone())
                        .await
                }
                Some(Target::Remote(addr)) => match self.client().call(&addr, &request).await {
                    Ok(reply) => reply,
                    Err(e) => {
                        unreachable = Some(format!("{addr}: {e}"));
                        rotation += 1;
                        Err(WireError::NotLeader { leader: None })
                    }
                },
                None => Err(WireError::NotLeader { leader: None }),
            };
            match reply {
                Ok(response) => return Ok(response),
                Err(WireError::NotLeader { leader }) => {
                    if Instant::now() >= deadline {
                        return Err(match (unreachable, self.core().is_some()) {
                            (Some(u), false) => ClusterError::Unreachable(u),
                            _ => ClusterError::NoQuorum,
                        });
                    }
                    if leader.is_none() {
                        rotation += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    hint = leader;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(crate) async fn read_state(self: &Arc<Self>) -> Result<ClusterState, ClusterError> {
        match self.call_leader(Request::ReadState).await? {
            Response::State(s) => Ok(*s),
            _ => Err(ClusterError::Protocol("unexpected answer to read".into())),
        }
    }

    pub(crate) async fn execute(
        self: &Arc<Self>,
        command: Command,
    ) -> Result<ApplyResult, ClusterError> {
        match self.call_leader(Request::Execute(command)).await? {
            Response::Applied(r) => Ok(r),
            _ => Err(ClusterError::Protocol(
                "unexpected answer to execute".into(),
            )),
        }
    }

    async fn call_done(self: &Arc<Self>, request: Request) -> Result<(), ClusterError> {
        match self.call_leader(request).await? {
            Response::Done => Ok(()),
            _ => Err(ClusterError::Protocol("unexpected answer".into())),
        }
    }

    pub(crate) async fn rotate_token(
        self: &Arc<Self>,
        role: Role,
    ) -> Result<JoinToken, ClusterError> {
        match self.call_leader(Request::RotateToken { role }).await? {
            Response::Token(t) => Ok(t),
            _ => Err(ClusterError::Protocol("unexpected answer to rotate".into())),
        }
    }

    pub(crate) async fn promote(self: &Arc<Self>, node_id: &str) -> Result<(), ClusterError> {
        self.call_done(Request::Promote {
            node_id: node_id.to_string(),
        })
        .await
    }

    pub(crate) async fn demote(self: &Arc<Self>, node_id: &str) -> Result<(), ClusterError> {
        self.call_done(Request::Demote {
            node_id: node_id.to_string(),
        })
        .await
    }

    pub(crate) async fn remove_node(
        self: &Arc<Self>,
        node_id: &str,
        force: bool,
    ) -> Result<(), ClusterError> {
        if node_id == self.node_id {
            let last = self.core().is_some_and(|c| {
                let st = c.store.status();
                st.voters.len() <= 1 && st.voters.contains_key(&c.raft_id)
            });
            return Err(if last {
                ClusterError::LastManager
            } else {
                ClusterError::RemoveSelf
            });
        }
        self.call_done(Request::RemoveNode {
            node_id: node_id.to_string(),
            force,
        })
        .await
    }

    /// Asks the leader to add this (new) manager to the Raft group, retrying for a while.
    async fn announce_manager(self: &Arc<Self>) -> Result<(), ClusterError> {
        let advertise = lock(&self.local).advertise.to_string();
        let deadline = Instant::now() + 3 * self.timings.request_timeout;
        loop {
            match self
                .call_done(Request::ManagerReady {
                    advertise: advertise.clone(),
                })
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "adding this manager to the Raft group; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
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

    /// The state this node's executor works from (see [`node_view`]); `None` when the
    /// store is still at `since`.
    pub(crate) async fn node_state(
        self: &Arc<Self>,
        since: u64,
    ) -> Result<Option<ClusterState>, ClusterError> {
        match self.call_leader(Request::NodeState { since }).await? {
            Response::NodeState(s) => Ok(s.map(|s| *s)),
            _ => Err(ClusterError::Protocol(
                "unexpected answer to node_state".into(),
            )),
        }
    }

    pub(crate) async fn report_tasks(
        self: &Arc<Self>,
        updates: Vec<crate::store::TaskStatusUpdate>,
    ) -> Result<(), ClusterError> {
        self.call_done(Request::ReportTasks { updates }).await
    }

    // ---- the node's own loop ----

    async fn heartbeat_once(self: &Arc<Self>) {
        let info = lock(&self.local).info.clone();
        let call = self.call_leader(Request::Heartbeat { node: info });
        match tokio::time::timeout(2 * self.timings.request_timeout, call).await {
            Ok(Ok(Response::Heartbeat(ack))) => {
                let own = lock(&self.local).advertise.to_string();
                let managers: Vec<String> = ack
                    .managers
                    .iter()
                    .filter(|m| **m != own)
                    .cloned()
                    .collect();
                let changed = managers != lock(&self.local).managers;
                if !managers.is_empty() && changed {
                    let _ = self.update_local(|l| l.managers = managers);
                }
                self.reconcile_role(&ack).await;
            }
            Ok(Ok(_)) => tracing::debug!("unexpected answer to a heartbeat"),
            Ok(Err(e)) => tracing::debug!(error = %e, "heartbeat failed"),
            Err(_) => tracing::debug!("heartbeat timed out"),
        }
        if self.identity().needs_renewal(SystemTime::now()) {
            let _guard = self.transition.lock().await;
            match self.renew().await {
                Ok(_) => tracing::info!("node certificate renewed"),
                Err(e) => tracing::warn!(error = %e, "certificate renewal failed; will retry"),
            }
        }
    }

    /// Follows the role the store gives this node (promotion, demotion).
    async fn reconcile_role(self: &Arc<Self>, ack: &HeartbeatAck) {
        let _guard = self.transition.lock().await;
        let core = self.core();
        let result = match (ack.role, core) {
            (Role::Manager, None) => self.become_manager(ack.raft_id).await,
            (Role::Worker, Some(_)) => self.become_worker().await,
            (Role::Worker, None) if self.identity().role() == Role::Manager => {
                self.renew().await.map(|_| ())
            }
            (Role::Manager, Some(core)) => {
                let st = core.store.status();
                if !st.voters.contains_key(&core.raft_id) && !st.learners.contains(&core.raft_id) {
                    // Joined or promoted, but not in the group yet: ask again.
                    self.announce_manager().await
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, role = %ack.role, "could not take the role the managers gave this node");
        }
    }

    async fn renew(self: &Arc<Self>) -> Result<Grant, ClusterError> {
        let (key, csr) = NodeIdentity::generate_key_and_csr(&self.node_id)?;
        let grant = match self
            .call_leader(Request::Renew { csr_pem: csr.pem() })
            .await?
        {
            Response::Granted(g) => g,
            _ => return Err(ClusterError::Protocol("unexpected answer to renew".into())),
        };
        let identity = NodeIdentity::new(
            key,
            NodeCertificate::from_pem(&grant.cert_pem)?,
            self.identity().ca().clone(),
        )?;
        if let Some(key) = &grant.ca_key_pem {
            persist::save_ca_key(&self.dir, key)?;
        }
        self.set_identity(identity)?;
        Ok(grant)
    }

    async fn become_manager(self: &Arc<Self>, raft_id: Option<RaftId>) -> Result<(), ClusterError> {
        let raft_id =
            raft_id.ok_or_else(|| ClusterError::Protocol("promoted without a Raft ID".into()))?;
        let grant = self.renew().await?;
        let key = grant
            .ca_key_pem
            .ok_or_else(|| ClusterError::Protocol("a manager grant without the CA key".into()))?;
        let ca = ClusterCa::from_pem(&self.identity().ca().pem(), &key)?;
        let _ = std::fs::remove_dir_all(persist::raft_dir(&self.dir));
        let listen = lock(&self.local).listen;
        let listener = TcpListener::bind(listen).await?;
        let listen = listener.local_addr()?;
        self.update_local(|l| {
            l.listen = listen;
            l.advertise = with_port(l.advertise, listen.port());
            l.raft_id = Some(raft_id);
        })?;
        self.start_core(raft_id, ca, listener, None).await?;
        tracing::info!(node = %self.node_id, "promoted: running as a manager");
        self.announce_manager().await
    }

    async fn become_worker(self: &Arc<Self>) -> Result<(), ClusterError> {
        self.stop_core().await;
        let _ = std::fs::remove_dir_all(persist::raft_dir(&self.dir));
        persist::remove_ca_key(&self.dir);
        self.update_local(|l| l.raft_id = None)?;
        tracing::info!(node = %self.node_id, "demoted: running as a worker");
        self.renew().await.map(|_| ())
    }

    // ---- the server side ----

    /// Answers one request. `peer` is the caller's verified certificate (`None`: a joining
    /// node). Boxed: handlers call the leader, which may be this node.
    pub(crate) fn handle<'a>(
        self: &'a Arc<Self>,
        peer: Option<PeerIdentity>,
        request: Request,
    ) -> crate::store::transport::BoxFuture<'a, Reply> {
        Box::pin(async move {
            let Some(core) = self.core() else {
                return Err(WireError::NotManager);
            };
            let name = request.name();
            if let Request::Join {
                token,
                csr_pem,
                node,
                advertise,
            } = request
            {
                return self.do_join(&core, token, csr_pem, node, advertise).await;
            }
            let Some(peer) = peer else {
                return Err(WireError::Unauthorized {
                    detail: format!("{name} needs a node certificate of this cluster"),
                });
            };
            let need = |role: Role| {
                peer.authorize(role).map_err(|e| WireError::Unauthorized {
                    detail: e.to_string(),
                })
            };
            let leader_only = || {
                if core.store.is_leader() {
                    Ok(())
                } else {
                    Err(WireError::NotLeader {
                        leader: core.leader_addr(),
                    })
                }
            };
            match request {
                Request::Join { .. } => unreachable!("handled above"),
                Request::Raft(r) => {
                    need(Role::Manager)?;
                    Ok(Response::Raft(core.store.handle_rpc(r).await))
                }
                Request::Execute(command) => {
                    need(Role::Manager)?;
                    leader_only()?;
                    core.store
                        .propose(command)
                        .await
                        .map(Response::Applied)
                        .map_err(|e| store_error(&core, e))
                }
                Request::ReadState => {
                    need(Role::Manager)?;
                    leader_only()?;
                    core.store
                        .read()
                        .await
                        .map(|s| Response::State(Box::new(s)))
                        .map_err(|e| store_error(&core, e))
                }
                Request::Promote { node_id } => {
                    need(Role::Manager)?;
                    leader_only()?;
                    self.do_promote(&core, &node_id).await
                }
                Request::Demote { node_id } => {
                    need(Role::Manager)?;
                    leader_only()?;
                    self.do_demote(&core, &node_id).await
                }
                Request::RemoveNode { node_id, force } => {
                    need(Role::Manager)?;
                    leader_only()?;
                    self.do_remove(&core, peer.node_id(), &node_id, force).await
                }
                Request::RotateToken { role } => {
                    need(Role::Manager)?;
                    leader_only()?;
                    let state = read_linear(&core).await?;
                    let mut tokens = tokens_of(&state).map_err(other)?;
                    let token = tokens.rotate(role).clone();
                    propose(
                        &core,
                        Command::SetTokens {
                            tokens: serde_json::to_value(&tokens).map_err(other)?,
                        },
                    )
                    .await?;
                    tracing::info!(%role, "join token rotated");
                    Ok(Response::Token(token))
                }
                Request::ManagerReady { advertise } => {
                    need(Role::Manager)?;
                    leader_only()?;
                    self.do_manager_ready(&core, peer.node_id(), advertise)
                        .await
                }
                Request::Heartbeat { node } => {
                    need(Role::Worker)?;
                    leader_only()?;
                    self.do_heartbeat(&core, peer.node_id(), node).await
                }
                Request::Leave => {
                    need(Role::Worker)?;
                    leader_only()?;
                    self.do_leave(&core, peer.node_id()).await
                }
                Request::Renew { csr_pem } => {
                    need(Role::Worker)?;
                    self.do_renew(&core, peer.node_id(), &csr_pem).await
                }
                Request::NodeState { since } => {
                    need(Role::Worker)?;
                    leader_only()?;
                    let state = core.store.read_stale();
                    if state.version == since {
                        return Ok(Response::NodeState(None));
                    }
                    Ok(Response::NodeState(Some(Box::new(node_view(state)))))
                }
                Request::ReportTasks { updates } => {
                    need(Role::Worker)?;
                    leader_only()?;
                    propose(
                        &core,
                        Command::UpdateTaskStatus {
                            node_id: peer.node_id().to_string(),
                            updates,
                        },
                    )
                    .await?;
                    Ok(Response::Done)
                }
            }
        })
    }

    fn grant(
        &self,
        core: &Core,
        node_id: &str,
        cert: NodeCertificate,
        role: Role,
        raft_id: Option<RaftId>,
        state: &ClusterState,
    ) -> Grant {
        Grant {
            node_id: node_id.to_string(),
            cert_pem: cert.pem(),
            ca_pem: core.ca.cert_pem(),
            ca_key_pem: (role == Role::Manager).then(|| core.ca.key_pem_secret()),
            raft_id,
            managers: manager_addrs(state),
            server_time_ms: now_ms(),
        }
    }

    async fn do_join(
        self: &Arc<Self>,
        core: &Core,
        token: String,
        csr_pem: String,
        info: NodeInfo,
        advertise: String,
    ) -> Reply {
        self.join_requests.fetch_add(1, Ordering::Relaxed);
        let state = self.read_state().await.map_err(WireError::from)?;
        let tokens = tokens_of(&state).map_err(other)?;
        let role = tokens.check(&token, None).map_err(|e| match e {
            TokenError::WrongCluster => WireError::CaMismatch,
            TokenError::Invalid | TokenError::WrongRole { .. } => WireError::BadToken,
            e => WireError::MalformedToken {
                detail: e.to_string(),
            },
        });
        drop(token);
        let role = match role {
            Ok(role) => role,
            Err(e) => {
                tracing::info!(hostname = %info.hostname, "join refused: invalid token");
                return Err(e);
            }
        };
        let csr = NodeCsr::from_pem(&csr_pem).map_err(other)?;
        let addr: SocketAddr = advertise
            .parse()
            .map_err(|_| other(format!("bad advertise address {advertise:?}")))?;
        let node_id = new_node_id();
        let raft_id = (role == Role::Manager).then(|| fresh_raft_id(&state));
        let cert = core
            .ca
            .issue(
                &csr,
                &node_id,
                role,
                &issue_options(&self.timings, role, Some(addr)),
            )
            .map_err(other)?;
        let node = Node {
            id: node_id.clone(),
            hostname: info.hostname.clone(),
            role: store_role(role),
            availability: Availability::Active,
            status: NodeStatus::Ready,
            advertise_addr: advertise,
            data_path_addr: None,
            engine_version: info.engine_version.clone(),
            labels: BTreeMap::new(),
            raft_id,
            version: 0,
        };
        let applied = self
            .execute(Command::UpsertNode { node })
            .await
            .map_err(WireError::from)?;
        if let ApplyResult::Rejected { rejection, .. } = applied {
            return Err(WireError::Rejected { rejection });
        }
        tracing::info!(node = %node_id, hostname = %info.hostname, %role, "node joined");
        Ok(Response::Granted(
            self.grant(core, &node_id, cert, role, raft_id, &state),
        ))
    }

    async fn do_renew(self: &Arc<Self>, core: &Core, node_id: &str, csr_pem: &str) -> Reply {
        let state = self.read_state().await.map_err(WireError::from)?;
        let node = state
            .nodes
            .get(node_id)
            .ok_or_else(|| WireError::UnknownNode {
                node: node_id.to_string(),
            })?;
        let role = pki_role(node.role);
        let csr = NodeCsr::from_pem(csr_pem).map_err(other)?;
        let addr = node.advertise_addr.parse().ok();
        let cert = core
            .ca
            .issue(
                &csr,
                node_id,
                role,
                &issue_options(&self.timings, role, addr),
            )
            .map_err(other)?;
        Ok(Response::Granted(self.grant(
            core,
            node_id,
            cert,
            role,
            node.raft_id,
            &state,
        )))
    }

    async fn do_heartbeat(&self, core: &Core, node_id: &str, info: NodeInfo) -> Reply {
        if lock(&self.liveness).left.contains(node_id) {
            return Err(WireError::NotInCluster);
        }
        let state = core.store.read_stale();
        let node = state
            .nodes
            .get(node_id)
            .ok_or_else(|| WireError::UnknownNode {
                node: node_id.to_string(),
            })?;
        lock(&self.liveness)
            .last_seen
            .insert(node_id.to_string(), Instant::now());
        if node.status != NodeStatus::Ready {
            propose(
                core,
                Command::SetStatus {
                    id: node_id.to_string(),
                    status: NodeStatus::Ready,
                },
            )
            .await?;
        }
        if node.engine_version != info.engine_version || node.hostname != info.hostname {
            let mut updated = core
                .store
                .read_stale()
                .nodes
                .get(node_id)
                .cloned()
                .unwrap_or_else(|| node.clone());
            updated.engine_version = info.engine_version;
            updated.hostname = info.hostname;
            propose(core, Command::UpsertNode { node: updated }).await?;
        }
        Ok(Response::Heartbeat(HeartbeatAck {
            role: pki_role(node.role),
            raft_id: node.raft_id,
            managers: manager_addrs(&state),
        }))
    }

    async fn do_leave(&self, core: &Core, node_id: &str) -> Reply {
        let state = read_linear(core).await?;
        let node = state
            .nodes
            .get(node_id)
            .ok_or_else(|| WireError::UnknownNode {
                node: node_id.to_string(),
            })?;
        let voters = core.store.status().voters;
        let voter = node.raft_id.filter(|id| voters.contains_key(id));
        if voter.is_some() && voters.len() <= 1 {
            return Err(WireError::LastManager);
        }
        {
            let mut lv = lock(&self.liveness);
            lv.left.insert(node_id.to_string());
            lv.last_seen.remove(node_id);
        }
        propose(
            core,
            Command::SetStatus {
                id: node_id.to_string(),
                status: NodeStatus::Down,
            },
        )
        .await?;
        if node.role == crate::store::Role::Manager {
            // Still listed as a manager (Unreachable), but out of the quorum.
            propose(
                core,
                Command::SetRole {
                    id: node_id.to_string(),
                    role: crate::store::Role::Manager,
                    raft_id: None,
                },
            )
            .await?;
            if let Some(id) = voter {
                core.store
                    .remove_manager(id)
                    .await
                    .map_err(|e| store_error(core, e))?;
            }
        }
        tracing::info!(node = %node_id, "node left");
        Ok(Response::Done)
    }

    async fn do_promote(&self, core: &Core, node_id: &str) -> Reply {
        let state = read_linear(core).await?;
        node_to_change(&state, node_id, Role::Manager)?;
        propose(
            core,
            Command::SetRole {
                id: node_id.to_string(),
                role: crate::store::Role::Manager,
                raft_id: Some(fresh_raft_id(&state)),
            },
        )
        .await?;
        tracing::info!(node = %node_id, "node promoted");
        Ok(Response::Done)
    }

    async fn do_demote(&self, core: &Core, node_id: &str) -> Reply {
        let state = read_linear(core).await?;
        let node = node_to_change(&state, node_id, Role::Worker)?;
        let managers = state
            .nodes
            .values()
            .filter(|n| n.role == crate::store::Role::Manager)
            .count();
        let voters = core.store.status().voters;
        let voter = node.raft_id.filter(|id| voters.contains_key(id));
        if managers <= 1 || (voter.is_some() && voters.len() <= 1) {
            return Err(WireError::LastManager);
        }
        // The membership change needs a majority of the managers that remain. Refuse up
        // front when they cannot give one, rather than record the new role and then fail
        // half-way (the role change would still complete once the majority returned).
        if let Some(id) = voter {
            let remaining: Vec<RaftId> = voters.keys().copied().filter(|v| *v != id).collect();
            let ready = remaining
                .iter()
                .filter(|v| {
                    state.nodes.values().any(|n| {
                        n.raft_id == Some(**v) && n.status == crate::store::NodeStatus::Ready
                    })
                })
                .count();
            if ready * 2 <= remaining.len() {
                return Err(WireError::NoQuorum);
            }
        }
        propose(
            core,
            Command::SetRole {
                id: node_id.to_string(),
                role: crate::store::Role::Worker,
                raft_id: None,
            },
        )
        .await?;
        if let Some(id) = voter {
            if let Err(e) = core.store.remove_manager(id).await {
                // Put the role back: the node is still a voter.
                let _ = core
                    .store
                    .propose(Command::SetRole {
                        id: node_id.to_string(),
                        role: crate::store::Role::Manager,
                        raft_id: Some(id),
                    })
                    .await;
                return Err(store_error(core, e));
            }
        }
        tracing::info!(node = %node_id, "node demoted");
        Ok(Response::Done)
    }

    async fn do_remove(&self, core: &Core, caller: &str, node_id: &str, force: bool) -> Reply {
        if node_id == caller || node_id == self.node_id {
            return Err(WireError::RemoveSelf);
        }
        let state = read_linear(core).await?;
        let node = state
            .nodes
            .get(node_id)
            .ok_or_else(|| WireError::UnknownNode {
                node: node_id.to_string(),
            })?;
        if node.status == NodeStatus::Ready && !force {
            return Err(WireError::NodeIsReady {
                node: node_id.to_string(),
            });
        }
        let voters = core.store.status().voters;
        let voter = node.raft_id.filter(|id| voters.contains_key(id));
        if node.role == crate::store::Role::Manager {
            if !force {
                return Err(WireError::NodeIsManager {
                    node: node_id.to_string(),
                });
            }
            if voter.is_some() && voters.len() <= 1 {
                return Err(WireError::LastManager);
            }
        }
        if let Some(id) = voter {
            core.store
                .remove_manager(id)
                .await
                .map_err(|e| store_error(core, e))?;
        }
        propose(
            core,
            Command::RemoveNode {
                id: node_id.to_string(),
            },
        )
        .await?;
        {
            let mut lv = lock(&self.liveness);
            lv.last_seen.remove(node_id);
            lv.left.insert(node_id.to_string());
        }
        tracing::info!(node = %node_id, "node removed");
        Ok(Response::Done)
    }

    async fn do_manager_ready(&self, core: &Core, node_id: &str, advertise: String) -> Reply {
        let state = read_linear(core).await?;
        let node = state
            .nodes
            .get(node_id)
            .ok_or_else(|| WireError::UnknownNode {
                node: node_id.to_string(),
            })?;
        let (crate::store::Role::Manager, Some(raft_id)) = (node.role, node.raft_id) else {
            return Err(WireError::NotManager);
        };
        if node.advertise_addr != advertise {
            let mut updated = node.clone();
            updated.advertise_addr = advertise.clone();
            propose(core, Command::UpsertNode { node: updated }).await?;
        }
        if !core.store.status().voters.contains_key(&raft_id) {
            core.store
                .add_manager(raft_id, advertise)
                .await
                .map_err(|e| store_error(core, e))?;
            tracing::info!(node = %node_id, raft_id, "manager added to the Raft group");
        }
        Ok(Response::Done)
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

/// What any node may see of the state: everything but tokens, secrets and configs.
fn node_view(mut state: ClusterState) -> ClusterState {
    state.tokens = None;
    state.secrets.clear();
    state.configs.clear();
    state
}

fn store_error(core: &Core, e: StoreError) -> WireError {
    match e {
        StoreError::NotLeader { leader } => WireError::NotLeader {
            leader: leader.and_then(|l| core.store.status().voters.get(&l).cloned()),
        },
        StoreError::NoQuorum { .. } => WireError::NoQuorum,
        StoreError::LastManager => WireError::LastManager,
        e => other(e),
    }
}

async fn read_linear(core: &Core) -> Result<ClusterState, WireError> {
    core.store.read().await.map_err(|e| store_error(core, e))
}

async fn propose(core: &Core, command: Command) -> Result<u64, WireError> {
    match core.store.propose(command).await {
        Ok(ApplyResult::Applied { version }) => Ok(version),
        Ok(ApplyResult::Rejected { rejection, .. }) => Err(WireError::Rejected { rejection }),
        Err(e) => Err(store_error(core, e)),
    }
}

async fn accept_loop(rt: Arc<Runtime>, core: Arc<Core>, listener: TcpListener) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let config = read(&core.server_config);
                    conns.spawn(serve_conn(rt.clone(), config, tcp));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_conn(rt: Arc<Runtime>, config: Arc<rustls::ServerConfig>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let accept = TlsAcceptor::from(config).accept(tcp);
    let Ok(Ok(mut tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await else {
        return;
    };
    let peer = PeerIdentity::from_peer_certificates(tls.get_ref().1.peer_certificates())
        .ok()
        .filter(|p| p.cluster_id() == rt.cluster_id);
    loop {
        let frame = match read_frame(&mut tls).await {
            Ok(Some(frame)) => frame,
            _ => return,
        };
        let reply: Reply = match serde_json::from_slice::<Request>(&frame) {
            Ok(request) => rt.handle(peer.clone(), request).await,
            Err(e) => Err(other(format!("bad request: {e}"))),
        };
        let Ok(body) = serde_json::to_vec(&reply) else {
            return;
        };
        if write_frame(&mut tls, &body).await.is_err() {
            return;
        }
    }
}

/// On every manager; acts while it is the leader: marks nodes Down that stopped
/// heartbeating.
async fn monitor_loop(rt: Arc<Runtime>, core: Arc<Core>) {
    let tick = (rt.timings.heartbeat_interval / 2).max(Duration::from_millis(20));
    loop {
        tokio::time::sleep(tick).await;
        let st = core.store.status();
        if st.state != MemberState::Leader {
            lock(&rt.liveness).term = None;
            continue;
        }
        let state = core.store.read_stale();
        let now = Instant::now();
        let mut down = Vec::new();
        {
            let mut lv = lock(&rt.liveness);
            if lv.term != Some(st.term) {
                // New leadership: everyone gets a full grace period from now.
                lv.term = Some(st.term);
                lv.last_seen.clear();
            }
            lv.last_seen.insert(rt.node_id.clone(), now);
            for node in state.nodes.values() {
                let seen = *lv.last_seen.entry(node.id.clone()).or_insert(now);
                if node.status != NodeStatus::Down
                    && now.duration_since(seen) > rt.timings.node_down_after
                {
                    down.push(node.id.clone());
                }
            }
            lv.last_seen.retain(|id, _| state.nodes.contains_key(id));
        }
        for id in down {
            tracing::info!(node = %id, "no heartbeat: node is Down");
            let _ = core
                .store
                .propose(Command::SetStatus {
                    id,
                    status: NodeStatus::Down,
                })
                .await;
        }
    }
}

/// The node a promotion or demotion to `to` applies to: it must exist and not hold
/// that role already.
fn node_to_change<'a>(
    state: &'a ClusterState,
    node_id: &str,
    to: Role,
) -> Result<&'a Node, WireError> {
    let node = state
        .nodes
        .get(node_id)
        .ok_or_else(|| WireError::UnknownNode {
            node: node_id.to_string(),
        })?;
    let already = match to {
        Role::Manager => node.role == crate::store::Role::Manager,
        Role::Worker => node.role == crate::store::Role::Worker,
    };
    if already {
        return Err(WireError::AlreadyRole {
            node: node_id.to_string(),
            role: to,
        });
    }
    Ok(node)
}
