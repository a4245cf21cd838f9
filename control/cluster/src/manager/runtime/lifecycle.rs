//! Starting and stopping: `swarm init`, `join` and resume after a restart; the manager
//! core (Raft member, listener, liveness monitor) and the node's heartbeat task; shutdown
//! and `leave`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use super::accept::accept_loop;
use super::autolock::autolock_loop;
use super::ca::{ca_loop, Signers};
use super::dead_leader::dead_leader_loop;
use super::liveness::monitor_loop;
use super::{
    fresh_raft_id, issue_options, lock, new_gossip_key, now_ms, with_port, write, Core, Runtime,
    HANDSHAKE_TIMEOUT,
};
use crate::ipam::{Networks, PoolConfig};
use crate::manager::keys::{self, OnDisk};
use crate::manager::persist::{self, Local};
use crate::manager::wire::{exchange, join_deadline, Request, Response, TlsTransport};
use crate::manager::{ClusterError, InitOptions, ManagerConfig, NodeInfo, Role, Timings};
use crate::pki::{
    bootstrap_client_config, is_ca_pin_mismatch, join_server_config, manager_server_name,
    new_node_id, pinned_ca_from_chain, ClusterCa, NodeCertificate, NodeIdentity,
};
use crate::seal::KeyEncryptionKey;
use crate::store::{
    ApplyResult, Availability, ClusterSpec, ClusterState, Command, Network, Node, NodeStatus,
    RaftId, StoreConfig, StoreNode, UnlockKey,
};
use crate::token::{JoinToken, JoinTokens};

/// A joining node whose clock differs from the manager's by more than this is warned.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

fn store_config(t: &Timings) -> StoreConfig {
    StoreConfig {
        heartbeat_interval: t.raft_heartbeat_interval,
        election_timeout_min: t.election_timeout_min,
        election_timeout_max: t.election_timeout_max,
        request_timeout: t.request_timeout,
        ..StoreConfig::default()
    }
}

impl Runtime {
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
        // The pools are checked before anything is made.
        let ingress = Networks::new(PoolConfig {
            pools: options.default_addr_pools.clone(),
            subnet_prefix_len: options.subnet_prefix_len,
        })
        .and_then(|mut networks| networks.allocate_ingress())
        .map_err(ClusterError::AddressPools)?;
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
        // With autolock the unlock key wraps the data key from the start: no KEK is
        // ever on disk.
        let unlock_key = options.autolock.then(KeyEncryptionKey::generate);
        let manager_keys = keys::create(&dir, unlock_key.as_ref())?;
        let data_key = manager_keys.data_key().clone();
        persist::save_ca(&dir, &ca, &data_key)?;
        persist::save_local(&dir, &local)?;

        let rt = Runtime::new(&dir, identity.clone(), local, Some(manager_keys))?;
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
            let autolock = unlock_key.as_ref().map(|k| Command::SetAutolock {
                unlock_key: Some(UnlockKey { key: k.encode() }),
            });
            let commands = [
                Command::SetCluster {
                    cluster: ClusterSpec {
                        id: cluster_id.clone(),
                        default_addr_pools: options.default_addr_pools.clone(),
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
                        data_path_addr: node.data_path_addr,
                        engine_version: node.engine_version.clone(),
                        resources: node.resources,
                        labels: BTreeMap::new(),
                        raft_id: Some(raft_id),
                        gossip: None,
                        version: 0,
                        tls: None,
                        wireguard_rotation: 0,
                    },
                },
                Command::UpsertNetwork {
                    network: Network {
                        id: new_node_id(),
                        name: "ingress".to_string(),
                        driver: "overlay".to_string(),
                        subnet: Some(ingress.subnet),
                        gateway: Some(ingress.gateway),
                        vni: Some(ingress.vni),
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
            for command in commands.into_iter().chain(autolock) {
                if let ApplyResult::Rejected { rejection, .. } = core.store.propose(command).await?
                {
                    return Err(ClusterError::Rejected(rejection));
                }
            }
            persist::save_identity(&dir, &identity, Some(&data_key))?;
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

    /// Restarts the node from `dir`. A manager whose data key is wrapped by the unlock
    /// key (autolock) needs `unlock_key`: without it, [`ClusterError::Locked`] and nothing
    /// starts; with a wrong one, [`ClusterError::BadUnlockKey`] and nothing changes. A
    /// manager of an older agent (no key file, its store in the clear) gets a data key
    /// now, and its store and keys are sealed as they are opened.
    pub(crate) async fn resume(
        dir: &Path,
        config: Option<&ManagerConfig>,
        unlock_key: Option<&KeyEncryptionKey>,
    ) -> Result<Arc<Runtime>, ClusterError> {
        let role = persist::local_role(dir)?.ok_or(ClusterError::NotInCluster)?;
        match (config.is_some(), role) {
            (true, Role::Worker) => return Err(ClusterError::NotManager),
            (false, Role::Manager) => return Err(ClusterError::IsManager),
            _ => {}
        }
        // Narrows what an older agent left readable before anything is read.
        persist::ensure_dir(dir)?;
        let manager_keys = if role == Role::Manager {
            Some(match (keys::load(dir)?, unlock_key) {
                (OnDisk::Locked, None) => return Err(ClusterError::Locked),
                (OnDisk::Locked, Some(key)) => keys::unlock(dir, key)?,
                (_, Some(_)) => return Err(ClusterError::NotLocked),
                (OnDisk::Open(k), None) => k,
                (OnDisk::Missing, None) => keys::create(dir, None)?,
            })
        } else {
            if unlock_key.is_some() {
                return Err(ClusterError::NotLocked);
            }
            // Left by a demotion interrupted after the worker's identity was saved.
            keys::remove(dir)?;
            None
        };
        let data_key = manager_keys.as_ref().map(|k| k.data_key().clone());
        let identity = persist::load_identity(dir, data_key.as_ref())?;
        let mut local = persist::load_local(dir)?;
        if let Some(c) = config {
            if c.listen.port() != 0 {
                local.listen = c.listen;
            }
            if c.advertise.port() != 0 {
                local.advertise = c.advertise;
            }
        }
        let rt = Runtime::new(dir, identity.clone(), local.clone(), manager_keys)?;
        if let Some(data_key) = data_key {
            let listener = TcpListener::bind(local.listen).await?;
            let listen = listener.local_addr()?;
            rt.update_local(|l| {
                l.listen = listen;
                l.advertise = with_port(l.advertise, listen.port());
            })?;
            let ca = persist::load_ca(dir, &identity, &data_key)?;
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
        // The root the token names; during a rotation the grant adds the next one,
        // which this root vouches for.
        let pinned = pinned_ca_from_chain(
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
        // Bounded: the agent holds its role while joining.
        let reply = exchange(&mut tls, &body, join_deadline(timings.request_timeout))
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
        let trust = grant.trust()?;
        if trust.root() != &pinned {
            return Err(ClusterError::CaMismatch);
        }
        let identity =
            NodeIdentity::with_trust(key, NodeCertificate::from_pem(&grant.cert_pem)?, trust)?;
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
        let rt = Runtime::new(&dir, identity.clone(), local, None)?;
        rt.known_managers.set(&grant.manager_ids);
        *lock(&rt.join_clock_skew) = excessive_skew;
        let setup = async {
            if role == Role::Manager {
                let key = grant.ca_key_pem.as_deref().ok_or_else(|| {
                    ClusterError::Protocol("a manager grant without the CA key".into())
                })?;
                // A local KEK until the store says whether autolock is on (then the
                // data key is rewrapped under the cluster's unlock key).
                let manager_keys = keys::create(&dir, None)?;
                let ca = ClusterCa::from_pem(&identity.ca().pem(), key)?;
                persist::save_ca(&dir, &ca, manager_keys.data_key())?;
                *lock(&rt.keys) = Some(manager_keys);
                let raft_id = grant.raft_id.ok_or_else(|| {
                    ClusterError::Protocol("a manager grant without a Raft ID".into())
                })?;
                rt.start_core(raft_id, ca, listener, None).await?;
                rt.announce_manager().await?;
            } else {
                drop(listener);
            }
            persist::save_identity(&dir, &identity, rt.data_key().as_ref())
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
    pub(super) async fn start_core(
        self: &Arc<Self>,
        raft_id: RaftId,
        ca: ClusterCa,
        listener: TcpListener,
        initialize: Option<SocketAddr>,
    ) -> Result<Arc<Core>, ClusterError> {
        let transport = Arc::new(TlsTransport {
            rt: Arc::downgrade(self),
        });
        let data_key = self.require_data_key()?;
        let store = StoreNode::start_with(
            raft_id,
            persist::raft_dir(&self.dir),
            &data_key,
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
        let server_config = Arc::new(join_server_config(&identity, identity.trust())?);
        let core = Arc::new(Core {
            store,
            raft_id,
            signers: RwLock::new(Arc::new(Signers::new(ca))),
            server_config: RwLock::new(server_config),
            server_trust: RwLock::new(Arc::new(identity.trust().clone())),
            tasks: Mutex::new(Vec::new()),
        });
        write(&self.core, Some(core.clone()));
        let store = Arc::downgrade(&core);
        self.known_managers.follow_store(Some(Box::new(move |id| {
            store.upgrade().and_then(|core| {
                core.store.read_stale_with(|state| {
                    if state.removed_nodes.contains_key(id) {
                        return Some(false);
                    }
                    state
                        .nodes
                        .get(id)
                        .map(|n| n.role == crate::store::Role::Manager)
                })
            })
        })));
        let accept = tokio::spawn(accept_loop(
            self.clone(),
            core.clone(),
            listener,
            self.admission.clone(),
        ));
        let monitor = tokio::spawn(monitor_loop(self.clone(), core.clone()));
        let dead_leader = tokio::spawn(dead_leader_loop(core.clone()));
        let autolock = tokio::spawn(autolock_loop(self.clone(), core.clone()));
        let ca = tokio::spawn(ca_loop(self.clone(), core.clone()));
        lock(&core.tasks).extend([accept, monitor, dead_leader, autolock, ca]);
        Ok(core)
    }

    pub(super) async fn stop_core(&self) {
        let core = self.core.write().unwrap_or_else(|p| p.into_inner()).take();
        self.known_managers.follow_store(None);
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
                if !rt.heartbeat_once().await {
                    tokio::time::sleep(rt.timings.heartbeat_interval).await;
                }
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

    /// `swarm init --force-new-cluster`: this manager's Raft member restarts as the only
    /// voter of its group, keeping the whole state it holds (nodes, services, secrets,
    /// tokens, the CA); the other managers stay in the node list, no longer voters, to
    /// be demoted and removed or joined again. For a cluster that lost its majority
    /// for good. Returns once this member leads the new group.
    pub(crate) async fn force_new_cluster(self: &Arc<Self>) -> Result<(), ClusterError> {
        let _guard = self.transition.lock().await;
        let core = self.core().ok_or(ClusterError::NotManager)?;
        let raft_id = core.raft_id;
        // A manager demoted a moment ago may still run its member: out of the group's
        // membership as it knows it, it is not a manager to force anything with.
        if !core.store.status().voters.contains_key(&raft_id) {
            return Err(ClusterError::NotManager);
        }
        drop(core);
        let data_key = self.require_data_key()?;
        let advertise = self.local().advertise;
        self.stop_core().await;
        let raft_dir = persist::raft_dir(&self.dir);
        let forced =
            crate::store::force_single_voter(&raft_dir, &data_key, raft_id, advertise.to_string())
                .map_err(|e| ClusterError::Files {
                    path: raft_dir.clone(),
                    reason: format!("forcing a new cluster: {e}"),
                })?;
        self.update_local(|l| l.managers = vec![advertise.to_string()])?;
        // The old listener goes with the aborted accept loop; its port may take a
        // moment to be free again.
        let listen = self.local().listen;
        let deadline = Instant::now() + self.timings.request_timeout;
        let listener = loop {
            match TcpListener::bind(listen).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(%listen, error = %e, "rebinding after the forced restart");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let ca = persist::load_ca(&self.dir, &self.identity(), &data_key)?;
        let core = self.start_core(raft_id, ca, listener, None).await?;
        let deadline = Instant::now() + self.timings.request_timeout * 3;
        while !core.store.is_leader() {
            if Instant::now() > deadline {
                return Err(ClusterError::NoQuorum);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(node = %self.node_id, membership_entry = %forced, "forced a new cluster: this manager is the only voter; the other managers must be demoted and removed, or join again");
        Ok(())
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
}
