//! The agent's cluster role: nothing, a manager or a worker, and the API requests that
//! use or change it.
//!
//! The role's files live in `<data_dir>/cluster/`; an agent that starts with that
//! directory present resumes the role it had. `swarm init`/`join` create the role,
//! `swarm leave` ends it (and its files), and the agent's shutdown shuts it down
//! cleanly so that the next start resumes it.

mod addresses;
mod autolock;
mod background;
mod ca;
mod config;
mod data_objects;
mod force_new_cluster;
mod info;
mod logs;
mod nodes;
mod reserved_ports;
mod service_update;
mod services;
mod store_restart;

pub use addresses::host_name;
use addresses::{data_path_address, engine_facts, interface_ip, listen_address, remote_address};
use background::{Background, SUPERVISE_EVERY};
pub use config::{ClusterAgentConfig, EngineSource, NodeLinks};
use nodes::manager_request;
pub use nodes::node_view;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use futures::future::BoxFuture;
use ipnet::Ipv4Net;
use shoal_cluster::{
    manager::{self, InitOptions, Joined, Manager, ManagerConfig, NodeInfo, Worker},
    pki,
    seal::KeyEncryptionKey,
    store::{self, ClusterState, Command},
};
use tokio::sync::Mutex;
use tracing::info;

use crate::api::{
    resolve_node, server::Backend, ApiError, ManagerStatus, NodeRole, NodeView, Reply, Request,
    Secret,
};
use shoal_orchestrator::docker::DockerClient;

/// Swarm's manager port.
pub const DEFAULT_CLUSTER_PORT: u16 = 2377;
/// Swarm's default address pool and subnet size.
pub const DEFAULT_ADDR_POOL: &str = "10.0.0.0/8";
pub const DEFAULT_SUBNET_PREFIX_LEN: u8 = 24;

/// How long the engine version may take to read.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(10);

const NOT_IN_SWARM: &str = "This node is not a swarm manager. Use \"shoal swarm init\" or \"shoal swarm join\" to connect this node to swarm and try again.";
const WORKER_NOT_MANAGER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";
const ALREADY_IN_SWARM: &str = "This node is already part of a swarm. Use \"shoal swarm leave\" to leave this swarm and join another one.";
/// Docker's words for a manager that restarted with autolock on and was not unlocked yet.
pub const SWARM_LOCKED: &str = "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"shoal swarm unlock\" to unlock it.";
const NOT_LOCKED: &str = "Error: swarm is not locked";

/// The handle the agent holds. Roles change under it: a worker can be promoted (then
/// [`Worker::manager`] is the manager) and a manager demoted ([`Manager::role`]).
enum Role {
    Manager(Manager),
    Worker(Worker),
    /// A manager restarted with autolock on: nothing of the cluster runs until `swarm
    /// unlock` gives the key (then it resumes with this config).
    Locked(ManagerConfig),
    /// A manager whose Raft store stopped, being started again ([`store_restart`]).
    Restarting(store_restart::Restart),
}

impl Role {
    /// The manager handle, if the node acts as a manager now.
    fn acting_manager(&self) -> Option<Manager> {
        match self {
            Role::Manager(m) if m.role() == pki::Role::Manager => Some(m.clone()),
            Role::Manager(_) | Role::Locked(_) | Role::Restarting(_) => None,
            Role::Worker(w) => w.manager(),
        }
    }

    /// The node's task link; None while locked.
    fn node_client(&self) -> Option<manager::NodeClient> {
        match self {
            Role::Manager(m) => Some(m.node_client()),
            Role::Worker(w) => Some(w.node_client()),
            Role::Locked(_) | Role::Restarting(_) => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Role::Locked(_) => return "locked",
            Role::Restarting(_) => return "restarting",
            _ => {}
        }
        match self.acting_manager() {
            Some(_) => "manager",
            None => "worker",
        }
    }
}

/// The agent's cluster role and the API requests about it.
pub struct ClusterAgent {
    config: ClusterAgentConfig,
    role: Mutex<Option<Role>>,
    background: std::sync::Mutex<Background>,
}

impl ClusterAgent {
    /// Resumes the role found in `<data_dir>/cluster/`, if there is one.
    pub async fn start(config: ClusterAgentConfig) -> Result<Arc<Self>, ApiError> {
        let role = resume(&config).await?;
        let agent = Arc::new(ClusterAgent {
            config,
            role: Mutex::new(role),
            background: std::sync::Mutex::new(Background::default()),
        });
        let weak = Arc::downgrade(&agent);
        tokio::spawn(async move {
            loop {
                match weak.upgrade() {
                    Some(agent) => agent.supervise().await,
                    None => return,
                }
                tokio::time::sleep(SUPERVISE_EVERY).await;
            }
        });
        Ok(agent)
    }

    /// The role's name, for logs: "manager", "worker" or "none".
    pub async fn role_name(&self) -> &'static str {
        match &*self.role.lock().await {
            Some(role) => role.name(),
            None => "none",
        }
    }

    /// Hands the node's traffic counters to its role, for the next heartbeat. Skipped
    /// while a request holds the role (the counters are totals: the next call makes up).
    pub async fn set_traffic(&self, traffic: manager::NodeTraffic) {
        if let Ok(role) = self.role.try_lock() {
            if let Some(client) = role.as_ref().and_then(Role::node_client) {
                client.set_traffic(traffic);
            }
        }
    }

    /// The manager this node acts as now, if it is one: the cluster page reads its copy
    /// of the store and follows its versions.
    pub async fn acting_manager(&self) -> Option<Manager> {
        self.role
            .lock()
            .await
            .as_ref()
            .and_then(Role::acting_manager)
    }

    /// The role's name and, on a node acting as a manager, its Raft member's status
    /// (the agent's metrics).
    pub async fn role_and_raft(&self) -> (&'static str, Option<shoal_cluster::store::StoreStatus>) {
        match &*self.role.lock().await {
            Some(role) => (
                role.name(),
                role.acting_manager().and_then(|m| m.store_status()),
            ),
            None => ("none", None),
        }
    }

    /// Shuts the role down, keeping its files (the next start resumes it).
    pub async fn shutdown(&self) {
        self.background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stop();
        store_restart::stop_role(self.role.lock().await.take()).await;
    }

    /// Why the role refuses the cluster's requests, when it is locked or restarting.
    fn unavailable(role: &Role) -> Option<ApiError> {
        match role {
            Role::Locked(_) => Some(ApiError::new(SWARM_LOCKED)),
            Role::Restarting(r) => Some(ApiError::new(r.message())),
            Role::Manager(_) | Role::Worker(_) => None,
        }
    }

    /// Refuses a swarm init or join when the agent's dataplane would not follow it.
    fn may_swarm(&self) -> Result<(), ApiError> {
        match &self.config.no_swarm {
            Some(why) => Err(ApiError::new(why.clone())),
            None => Ok(()),
        }
    }

    async fn handle_request(&self, request: Request) -> Result<Reply, ApiError> {
        let mut role = self.role.lock().await;
        match request {
            Request::SwarmInit {
                advertise_addr,
                listen_addr,
                data_path_addr,
                data_path_port,
                default_addr_pool,
                default_addr_pool_mask_length,
                autolock,
                force_new_cluster,
            } => {
                if force_new_cluster && role.is_some() {
                    let kept = [
                        ("--listen-addr", listen_addr.is_some()),
                        ("--data-path-addr", data_path_addr.is_some()),
                        ("--data-path-port", data_path_port.is_some()),
                        ("--default-addr-pool", !default_addr_pool.is_empty()),
                        (
                            "--default-addr-pool-mask-length",
                            default_addr_pool_mask_length.is_some(),
                        ),
                        ("--autolock", autolock),
                    ];
                    return self
                        .force_new_cluster(role.as_ref(), advertise_addr.as_deref(), &kept)
                        .await;
                }
                if role.is_some() {
                    return Err(ApiError::new(ALREADY_IN_SWARM));
                }
                self.may_swarm()?;
                let listen = listen_address(listen_addr.as_deref(), self.config.listen)?;
                let advertise = self.advertise_address(advertise_addr.as_deref(), listen)?;
                let data_path = data_path_address(data_path_addr.as_deref(), advertise.ip())?;
                let node = self.node_info(advertise.ip(), data_path).await?;
                let options = InitOptions {
                    default_addr_pools: if default_addr_pool.is_empty() {
                        vec![DEFAULT_ADDR_POOL.parse::<Ipv4Net>().expect("default pool")]
                    } else {
                        default_addr_pool
                    },
                    subnet_prefix_len: default_addr_pool_mask_length
                        .unwrap_or(DEFAULT_SUBNET_PREFIX_LEN),
                    data_path_port: data_path_port.unwrap_or(self.config.data_path_port),
                    autolock,
                };
                let manager = Manager::init_with(
                    self.manager_config(listen, advertise),
                    node,
                    options,
                    self.config.timings.clone().unwrap_or_default(),
                )
                .await
                .map_err(cluster_error)?;
                let token = manager
                    .join_token(pki::Role::Worker)
                    .await
                    .map_err(cluster_error)?;
                let unlock_key = match autolock {
                    true => manager.unlock_key().await.map_err(cluster_error)?,
                    false => None,
                };
                let node_id = manager.node_id().to_owned();
                info!(node_id, %advertise, %listen, autolock, "swarm initialized: this node is its first manager");
                *role = Some(Role::Manager(manager));
                Ok(Reply::SwarmInit {
                    node_id,
                    worker_token: Secret::new(token.expose_secret()),
                    manager_addr: advertise.to_string(),
                    unlock_key: unlock_key.map(|k| Secret::new(k.to_unlock_key())),
                })
            }
            Request::SwarmJoin {
                token,
                remote,
                advertise_addr,
                listen_addr,
                data_path_addr,
            } => {
                if role.is_some() {
                    return Err(ApiError::new(ALREADY_IN_SWARM));
                }
                self.may_swarm()?;
                let remote_addr = remote_address(&remote).await?;
                let listen = listen_address(listen_addr.as_deref(), self.config.listen)?;
                let advertise = self.advertise_address(advertise_addr.as_deref(), listen)?;
                let data_path = data_path_address(data_path_addr.as_deref(), advertise.ip())?;
                let node = self.node_info(advertise.ip(), data_path).await?;
                let joined = manager::join_with(
                    remote_addr,
                    token.expose(),
                    self.manager_config(listen, advertise),
                    node,
                    self.config.timings.clone().unwrap_or_default(),
                )
                .await
                .map_err(cluster_error)?;
                let warnings: Vec<String> = joined
                    .clock_skew()
                    .map(|skew| {
                        format!(
                            "this node's clock differs from the manager's by {:.0} s; keep the \
                             cluster's clocks synchronized (certificates and heartbeats depend on it)",
                            skew.as_secs_f64()
                        )
                    })
                    .into_iter()
                    .collect();
                let (node_id, joined_as) = match joined {
                    Joined::Manager(m) => {
                        let id = m.node_id().to_owned();
                        *role = Some(Role::Manager(m));
                        (id, NodeRole::Manager)
                    }
                    Joined::Worker(w) => {
                        let id = w.node_id().to_owned();
                        *role = Some(Role::Worker(w));
                        (id, NodeRole::Worker)
                    }
                };
                info!(node_id, role = %joined_as, manager = %remote_addr, "joined the swarm");
                Ok(Reply::SwarmJoin {
                    node_id,
                    role: joined_as,
                    warnings,
                })
            }
            Request::SwarmUnlock { key } => {
                let config = match &*role {
                    None => return Err(ApiError::new("This node is not part of a swarm")),
                    Some(Role::Locked(config)) => config.clone(),
                    Some(_) => return Err(ApiError::new(NOT_LOCKED)),
                };
                let key = KeyEncryptionKey::parse_unlock_key(key.expose())
                    .map_err(|e| ApiError::new(e.to_string()))?;
                let manager = Manager::unlock(config, &key).await.map_err(cluster_error)?;
                info!(
                    node_id = manager.node_id(),
                    "swarm unlocked: running as a manager"
                );
                *role = Some(Role::Manager(manager));
                Ok(Reply::SwarmUnlocked)
            }
            Request::SwarmLeave { force } => {
                if let Some(r @ (Role::Locked(_) | Role::Restarting(_))) = &*role {
                    // Docker lets a locked node leave with --force (its key may be lost);
                    // so is a manager whose store cannot start.
                    if !force {
                        return Err(Self::unavailable(r).expect("locked or restarting"));
                    }
                    manager::forget(&self.config.cluster_dir()).map_err(cluster_error)?;
                    info!(was = r.name(), "left the swarm");
                    *role = None;
                    return Ok(Reply::SwarmLeave);
                }
                let Some(current) = role.take() else {
                    return Err(ApiError::new("This node is not part of a swarm"));
                };
                let acting = current.acting_manager();
                if let (Some(m), false) = (&acting, force) {
                    let message = manager_leave_warning(m).await;
                    *role = Some(current);
                    return Err(ApiError::new(message));
                }
                self.background
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .stop();
                let was = current.name();
                let result = match (current, acting) {
                    (Role::Manager(m), _) => m.leave(force).await,
                    (Role::Worker(w), Some(m)) => {
                        drop(w);
                        m.leave(true).await
                    }
                    (Role::Worker(w), None) => w.leave().await,
                    // Handled above; the role on disk is taken back below.
                    (Role::Locked(_) | Role::Restarting(_), _) => {
                        Err(manager::ClusterError::Locked)
                    }
                };
                match result {
                    Ok(()) => {
                        info!(was, "left the swarm");
                        Ok(Reply::SwarmLeave)
                    }
                    Err(e) => {
                        // The handle is gone; what is left on disk is the role now.
                        *role = resume(&self.config).await.unwrap_or_else(|resume_error| {
                            tracing::warn!(error = %resume_error, "after a failed leave");
                            None
                        });
                        Err(cluster_error(e))
                    }
                }
            }
            Request::Info => Ok(Reply::Info(Box::new(
                info::info(
                    role.as_ref(),
                    self.config.dataplane.clone(),
                    self.config.node.as_ref().and_then(|l| l.events.link()),
                )
                .await,
            ))),
            Request::SwarmNetworks => {
                let client = match &*role {
                    Some(Role::Locked(_)) => return Err(ApiError::new(SWARM_LOCKED)),
                    Some(r) => r.node_client(),
                    None => return Err(ApiError::new(NOT_IN_SWARM)),
                };
                drop(role);
                let client = client.ok_or_else(|| ApiError::new(SWARM_LOCKED))?;
                let networks = client.networks().await.map_err(cluster_error)?;
                Ok(Reply::Networks { networks })
            }
            Request::LocalRole => {
                let (swarm, is_manager) = info::local_role(role.as_ref());
                Ok(Reply::LocalRole {
                    swarm: swarm.into(),
                    is_manager,
                })
            }
            other => {
                if let Some(e) = role.as_ref().and_then(Self::unavailable) {
                    return Err(e);
                }
                let manager = match &*role {
                    Some(r) => r
                        .acting_manager()
                        .ok_or_else(|| ApiError::new(WORKER_NOT_MANAGER))?,
                    None => return Err(ApiError::new(NOT_IN_SWARM)),
                };
                drop(role);
                if is_service_request(&other) {
                    let ports = reserved_ports::AgentPorts {
                        cluster: self.config.listen.port(),
                        gossip: self.config.gossip_listen.map(|g| g.port()),
                    };
                    return services::request(&manager, self.config.docker_socket(), ports, other)
                        .await;
                }
                if let Request::SwarmCa { rotate } = other {
                    return ca::request(&manager, rotate).await;
                }
                if matches!(
                    other,
                    Request::SwarmUpdate { .. } | Request::UnlockKey { .. }
                ) {
                    return autolock::request(&manager, other).await;
                }
                manager_request(&manager, other).await
            }
        }
    }

    fn manager_config(&self, listen: SocketAddr, advertise: SocketAddr) -> ManagerConfig {
        ManagerConfig {
            data_dir: self.config.cluster_dir(),
            listen,
            advertise,
        }
    }

    /// `--advertise-addr`: IP:PORT, IP (with the listen port) or an interface name;
    /// default: the listen IP if it is a specific one, else the agent's advertise
    /// address, else the underlay's IPv4.
    fn advertise_address(
        &self,
        given: Option<&str>,
        listen: SocketAddr,
    ) -> Result<SocketAddr, ApiError> {
        let port = listen.port();
        if let Some(text) = given {
            if let Ok(addr) = text.parse::<SocketAddr>() {
                return Ok(addr);
            }
            if let Ok(ip) = text.parse::<IpAddr>() {
                return Ok(SocketAddr::new(ip, port));
            }
            if let Some((iface, p)) = text.rsplit_once(':') {
                if let Ok(p) = p.parse::<u16>() {
                    return Ok(SocketAddr::new(interface_ip(iface)?.into(), p));
                }
            }
            return Ok(SocketAddr::new(interface_ip(text)?.into(), port));
        }
        if !listen.ip().is_unspecified() {
            return Ok(listen);
        }
        if let Some(ip) = self.config.advertise_addr {
            return Ok(SocketAddr::new(ip, port));
        }
        match &self.config.underlay_interface {
            Some(iface) => Ok(SocketAddr::new(interface_ip(iface)?.into(), port)),
            None => Err(ApiError::new(
                "could not choose an advertise address: pass --advertise-addr",
            )),
        }
    }

    /// This host's hostname, engine version and capacity, and address.
    async fn node_info(
        &self,
        addr: IpAddr,
        data_path_addr: Option<IpAddr>,
    ) -> Result<NodeInfo, ApiError> {
        let hostname = match &self.config.hostname {
            Some(h) => h.clone(),
            None => host_name()
                .map_err(|e| ApiError::new(format!("reading this host's hostname: {e}")))?,
        };
        let (engine_version, resources) = match &self.config.engine {
            EngineSource::Fixed(v) => (v.clone(), Default::default()),
            EngineSource::Docker(socket) => engine_facts(socket).await?,
        };
        Ok(NodeInfo {
            hostname,
            engine_version,
            resources,
            addr,
            data_path_addr,
            labels: BTreeMap::new(),
        })
    }
}

impl Backend for ClusterAgent {
    fn handle(&self, request: Request) -> BoxFuture<'_, Result<Reply, ApiError>> {
        Box::pin(self.handle_request(request))
    }

    fn stream(
        &self,
        request: Request,
    ) -> BoxFuture<'_, Result<crate::api::server::ReplyStream, ApiError>> {
        Box::pin(self.stream_request(request))
    }
}

/// Resumes the role whose files are in `<data_dir>/cluster/`, if any.
async fn resume(config: &ClusterAgentConfig) -> Result<Option<Role>, ApiError> {
    let dir = config.cluster_dir();
    if !dir.exists() {
        return Ok(None);
    }
    let context = |e: manager::ClusterError| {
        ApiError::new(format!(
            "resuming the cluster role from {}: {e}",
            dir.display()
        ))
    };
    let role = match manager::local_role(&dir).map_err(context)? {
        None => return Ok(None),
        Some(pki::Role::Manager) => {
            // Ports 0: the addresses it had.
            let manager_config = ManagerConfig {
                data_dir: dir.clone(),
                listen: SocketAddr::new(config.listen.ip(), 0),
                advertise: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            };
            match Manager::resume(manager_config.clone()).await {
                Ok(m) => {
                    info!(node_id = m.node_id(), "resumed the cluster role: manager");
                    Role::Manager(m)
                }
                Err(manager::ClusterError::Locked) => {
                    tracing::warn!("this manager is locked (autolock): nothing of the swarm runs until `shoal swarm unlock` gives the unlock key");
                    Role::Locked(manager_config)
                }
                Err(e) => return Err(context(e)),
            }
        }
        Some(pki::Role::Worker) => {
            let w = Worker::resume(&dir).await.map_err(context)?;
            info!(node_id = w.node_id(), "resumed the cluster role: worker");
            Role::Worker(w)
        }
    };
    Ok(Some(role))
}

fn is_service_request(r: &Request) -> bool {
    matches!(
        r,
        Request::ServiceCreate { .. }
            | Request::ServiceState { .. }
            | Request::ServiceScale { .. }
            | Request::ServiceRm { .. }
            | Request::ServiceUpdate { .. }
            | Request::ServiceSetSpec { .. }
            | Request::ServiceLogs { .. }
            | Request::NetworkCreate { .. }
            | Request::NetworkLs
            | Request::NetworkInspect { .. }
            | Request::NetworkRm { .. }
            | Request::ObjectCreate { .. }
            | Request::ObjectState { .. }
            | Request::ObjectRm { .. }
            | Request::ObjectSetLabels { .. }
    )
}

/// Docker's refusal of a manager's `swarm leave` without `--force`.
async fn manager_leave_warning(manager: &Manager) -> String {
    let managers = manager.state().await.ok().map(|s| {
        s.nodes
            .values()
            .filter(|n| n.role == store::Role::Manager)
            .count()
    });
    match managers {
        Some(n) if n > 1 => format!(
            "You are attempting to leave the swarm on a node that is participating as a manager. Removing this node leaves {} managers out of {n}. Without a Raft quorum your swarm will be inaccessible. Use `--force` to suppress this message.",
            n - 1
        ),
        _ => "You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message.".to_owned(),
    }
}

fn cluster_error(e: manager::ClusterError) -> ApiError {
    ApiError::new(e.to_string())
}
