//! Starts the node's reconcilers (all in `shoal-dataplane`), each on a thread of its
//! own, following the pipeline's declared state: the overlay, service VIPs, the routing
//! mesh, the data path's guard, task egress, the WireGuard device (encrypted networks)
//! and the DNS listeners (egress first: the resolver listens on its
//! bridge for tasks with no network). Any of them failing to start stops the agent with the
//! reason: a node that cannot carry service traffic must not say it is up.
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use shoal_dataplane::{
    egress::{kernel::NetlinkEgress, EgressParams},
    iface,
    lb::{mesh_reply, vip},
    overlay::kernel::NetlinkKernel,
    overlay::plan::NodeParams,
    reconcile::{
        dns::{egress_listener, DnsReconciler, Resolver},
        egress::EgressReconciler,
        guard::{GuardNode, GuardReconciler, KernelGuard},
        mesh::{KernelMesh, MeshNode, MeshReconciler},
        overlay::OverlayReconciler,
        ready::{self, ReadinessWatch},
        runner::{self, ReconcileStats, Running},
        status::StatusFile,
        vip::VipReconciler,
        wireguard::{WireguardNode, WireguardReconciler},
        Declared,
    },
    sysctl::SysctlJournal,
    wireguard::key::NodeKey,
};
use shoal_dns::{
    forward::{ForwardConfig, Forwarder},
    handler::HandlerConfig,
    records::{DnsState, RecordTable, SharedTable},
    server::{RateLimit, ServerConfig},
    stats::DnsStats,
};
use tracing::{error, info, warn};

use crate::config::{AgentConfig, DnsConfig};

/// The running reconcilers. Dropping them stops their threads; what they made stays.
pub struct Dataplane {
    threads: Vec<Running>,
    reported_dead: Vec<bool>,
    /// What the reconcilers have made ready per local container (the executor waits on
    /// it before starting a task's process).
    ready: ReadinessWatch,
    /// What the resolver counts on every network (the agent's metrics).
    dns_stats: Arc<DnsStats>,
    /// The node's WireGuard public key (encrypted overlay networks), as it changes.
    wireguard_key: tokio::sync::watch::Receiver<String>,
}

impl Dataplane {
    /// Starts every reconciler, following `declared`.
    pub async fn start(config: &AgentConfig, declared: Declared) -> Result<Self> {
        let underlay = config.underlay_interface.clone();
        let vtep = iface::ipv4_address(&underlay)
            .with_context(|| format!("reading the address of {underlay}"))?
            .ok_or_else(|| anyhow!("the underlay interface {underlay} has no IPv4 address: the overlay needs one as its VTEP"))?;
        let node = NodeParams {
            vtep,
            underlay_interface: underlay.clone(),
            underlay_mtu: iface::mtu(&underlay)
                .with_context(|| format!("reading the MTU of {underlay}"))?,
            port: config.data_path_port,
        };
        let underlay_mtu = node.underlay_mtu;
        let wireguard_key_pair = NodeKey::load_or_create(&config.data_dir)
            .context("the node's WireGuard key (encrypted overlay networks)")?;
        let (public_key, wireguard_key) =
            tokio::sync::watch::channel(wireguard_key_pair.public_hex());
        let wireguard_node = WireguardNode {
            netns_dir: config.netns_dir.clone(),
            key: wireguard_key_pair,
            vtep,
            underlay_mtu,
            data_path_port: config.data_path_port,
            data_dir: config.data_dir.clone(),
            rotation_period: config.wireguard_key_rotation,
            public_key,
        };
        let (present_tx, present) = tokio::sync::watch::channel(Arc::default());
        let (ready_tx, ready) = ready::channel();
        let status_dir = config.data_dir.clone();

        let netns_dir = config.netns_dir.clone();
        let overlay_ready = ready_tx.clone();
        let overlay = runner::spawn(
            "overlay",
            move || {
                let kernel = NetlinkKernel::new(None, netns_dir.clone())
                    .map_err(|e| format!("opening netlink: {e}"))?;
                OverlayReconciler::new(kernel, node.clone(), netns_dir.clone(), present_tx.clone())
                    .map(|r| r.with_readiness(overlay_ready.clone()))
                    .map_err(|e| e.to_string())
            },
            declared.clone(),
            None,
            StatusFile::new(&status_dir, "overlay"),
        )
        .await
        .map_err(|e| anyhow!("the overlay: {e}"))?;
        info!(%vtep, port = config.data_path_port, "overlay reconciler started");

        let pin_dir = config.pin_dir.join(vip::PIN_SUBDIR);
        let cgroup = vip::cgroup2_root()?;
        let vip_ready = ready_tx.clone();
        let vip = runner::spawn(
            "vip",
            move || {
                let mut program = vip::VipProgram::load_pinned(&pin_dir).map_err(|e| {
                    format!("loading the VIP programs (maps in {}): {e}", pin_dir.display())
                })?;
                program.attach_pinned(&cgroup).map_err(|e| {
                    format!("attaching the VIP programs at {}: {e}", cgroup.display())
                })?;
                info!(cgroup = %cgroup.display(), pin_dir = %pin_dir.display(), adopted_vips = program.record().vips.len(), "VIP socket programs attached");
                Ok(VipReconciler::new(program).with_readiness(vip_ready.clone()))
            },
            declared.clone(),
            Some(present.clone()),
            StatusFile::new(&status_dir, "vip"),
        )
        .await
        .map_err(|e| anyhow!("service VIPs: {e}"))?;

        let mesh_node = MeshNode {
            vtep,
            vxlan_port: config.data_path_port,
            netns_dir: config.netns_dir.clone(),
            tx_redirect: mesh_reply::is_veth(&underlay),
        };
        let (pin_dir, flows) = (config.pin_dir.clone(), config.lb_flows);
        let guard_node = GuardNode {
            underlay: underlay.clone(),
            vxlan_port: config.data_path_port,
        };
        let guard_pins = pin_dir.clone();
        let guard = runner::spawn(
            "guard",
            move || {
                GuardReconciler::new(KernelGuard::open(&guard_pins, flows)?, guard_node.clone())
            },
            declared.clone(),
            None,
            StatusFile::new(&status_dir, "guard"),
        )
        .await
        .map_err(|e| anyhow!("the data path's guard: {e}"))?;
        // Every sysctl the node's dataplane changes is journaled here first, so
        // `shoal agent cleanup` can put it back.
        let sysctls = SysctlJournal::open(&config.data_dir)?;
        let egress_sysctls = sysctls.clone();
        let mesh_ready = ready_tx.clone();
        let mesh = runner::spawn(
            "lb-mesh",
            move || {
                let kernel = KernelMesh::open(&pin_dir, flows, &underlay, sysctls.clone())?;
                MeshReconciler::new(kernel, mesh_node.clone())
                    .map(|r| r.with_readiness(mesh_ready.clone()))
            },
            declared.clone(),
            Some(present.clone()),
            StatusFile::new(&status_dir, "lb"),
        )
        .await
        .map_err(|e| anyhow!("the routing mesh: {e}"))?;

        let egress_params = EgressParams::new(config.egress_subnet, underlay_mtu)
            .map_err(|e| anyhow!("--egress-subnet: {e}"))?;
        check_egress_subnet(&egress_params)?;
        let egress_ready = ready_tx.clone();
        let egress = runner::spawn(
            "egress",
            move || {
                EgressReconciler::new(NetlinkEgress::new(egress_sysctls.clone())?, egress_params)
                    .map(|r| r.with_readiness(egress_ready.clone()))
            },
            declared.clone(),
            None,
            StatusFile::new(&status_dir, "egress"),
        )
        .await
        .map_err(|e| anyhow!("task egress: {e}"))?;

        let wireguard = runner::spawn(
            "wireguard",
            move || Ok(WireguardReconciler::new(wireguard_node.clone())),
            declared.clone(),
            None,
            StatusFile::new(&status_dir, "wireguard"),
        )
        .await
        .map_err(|e| anyhow!("the WireGuard device: {e}"))?;

        let dns_config = config.dns.clone();
        let dns_stats = Arc::new(DnsStats::default());
        let resolver_stats = dns_stats.clone();
        let dns = runner::spawn(
            "dns",
            move || {
                let resolver = resolver(&dns_config, resolver_stats.clone())?;
                let table = resolver.table.clone();
                Ok(DnsReconciler::new(resolver, table)
                    .with_listener(egress_listener(egress_params.gateway))
                    .with_readiness(ready_tx.clone()))
            },
            declared,
            Some(present),
            StatusFile::new(&status_dir, "dns"),
        )
        .await
        .map_err(|e| anyhow!("the resolver: {e}"))?;

        Ok(Self {
            threads: vec![overlay, vip, guard, mesh, egress, wireguard, dns],
            reported_dead: vec![false; 7],
            ready,
            dns_stats,
            wireguard_key,
        })
    }

    /// What the reconcilers have made ready per local container.
    pub fn readiness(&self) -> ReadinessWatch {
        self.ready.clone()
    }

    /// Each reconciler's name and what its runner counts.
    pub fn reconcile_stats(&self) -> Vec<(&'static str, Arc<ReconcileStats>)> {
        self.threads.iter().map(|t| (t.name(), t.stats())).collect()
    }

    /// The node's WireGuard public key (64 hex digits), as it changes (rotations).
    pub fn wireguard_public_key(&self) -> tokio::sync::watch::Receiver<String> {
        self.wireguard_key.clone()
    }

    /// What the resolver counts.
    pub fn dns_stats(&self) -> Arc<DnsStats> {
        self.dns_stats.clone()
    }

    /// Logs, once each, reconcilers whose thread has ended: their part of the dataplane
    /// no longer follows the declared state. (A reconcile that panics does not end it:
    /// the runner builds the reconciler again, see `runner::spawn`.)
    pub fn check_alive(&mut self) {
        for (i, t) in self.threads.iter().enumerate() {
            if !t.is_alive() && !self.reported_dead[i] {
                self.reported_dead[i] = true;
                error!(
                    reconciler = t.name(),
                    "a reconciler's thread has ended; restart the agent"
                );
            }
        }
    }

    /// Stops every thread (what they made stays: traffic keeps flowing).
    pub fn stop(self) {
        for t in self.threads {
            t.stop();
        }
    }
}

/// Refuses an egress subnet that holds one of the host's own addresses (the egress
/// bridge's, from a previous agent, are not counted as the host's): the host would
/// route it to the tasks.
fn check_egress_subnet(params: &EgressParams) -> Result<()> {
    let clash = iface::node_addresses()
        .context("reading the host's addresses")?
        .into_iter()
        .find(|a| params.subnet.contains(a));
    match clash {
        Some(a) => bail!(
            "the egress subnet {} holds this host's address {a}: choose another with --egress-subnet",
            params.subnet
        ),
        None => Ok(()),
    }
}

/// The resolver's listeners, table and forwarder.
fn resolver(config: &DnsConfig, stats: Arc<DnsStats>) -> Result<Resolver, String> {
    let forward = match &config.upstreams {
        Some(upstreams) => ForwardConfig::new(upstreams.clone()),
        None => ForwardConfig::from_system().unwrap_or_else(|e| {
            // Names in the cluster still resolve; others get SERVFAIL until configured.
            warn!(error = %e, "no upstream resolver from /etc/resolv.conf; names outside the cluster will not resolve (set --dns-upstream)");
            ForwardConfig::new(Vec::new())
        }),
    };
    info!(upstreams = ?forward.upstreams, "DNS forwarding configured");
    let server_config = ServerConfig {
        handler: HandlerConfig {
            ttl: config.ttl_secs,
            ..HandlerConfig::default()
        },
        rate_limit: config.rate_limit.map(|qps| RateLimit {
            per_second: f64::from(qps),
            burst: f64::from(qps) * 2.0,
        }),
        ..ServerConfig::default()
    };
    let empty = RecordTable::build(&DnsState::default()).map_err(|e| e.to_string())?;
    Ok(Resolver {
        table: Arc::new(SharedTable::new(empty)),
        forwarder: Forwarder::new(forward),
        config: server_config,
        stats,
    })
}
