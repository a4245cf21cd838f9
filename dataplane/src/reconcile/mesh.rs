//! The ingress routing mesh as the agent runs it: the declared LB state, checked
//! against the overlay state, becomes the mesh's map contents ([`plan`]: frontends,
//! backends, Maglev rows, stable across changes), written through [`MeshKernel`] as a
//! diff against what the maps hold (adopted from a previous agent at start); and the
//! reply path (a veth out of the ingress network's namespace with its TC programs) is
//! made when that namespace appears or is made again, retried every 2 s when it fails.
//! Every 5 s the backends' nodes get their neighbour entries refreshed. After an apply
//! that took the declared state whole, it says which declared version the maps hold
//! ([`ready`]).
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;
use tracing::{info, warn};

use super::{
    intake::Intake,
    ready::{self, ReadinessSender},
    runner::{Cue, Reconcile},
    DeclaredNode, PresentNetwork,
};
use crate::{
    iface,
    lb::{
        mesh::{self, plan, ApplyReport, MeshMaps, MeshPlan, NodeMesh},
        mesh_reply::{self, ReplyPath},
        state::LbState,
    },
    overlay::{kernel::pin_path, netns, state::OverlayState},
    sysctl::SysctlJournal,
    underlay::UnderlayProgram,
};

/// How often a reply path that could not be made is tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);
/// How often the backends' nodes get their neighbour entries refreshed.
pub const NUDGE_EVERY: Duration = Duration::from_secs(5);

/// What the mesh reconciler changes in the kernel.
pub trait MeshKernel {
    /// Writes the difference between `old` and `new` to the maps.
    fn apply(&mut self, old: &MeshPlan, new: &MeshPlan) -> Result<ApplyReport, String>;
    /// What the maps hold.
    fn read_plan(&mut self) -> Result<MeshPlan, String>;
    /// Makes the reply path of the ingress network `vni` (subnet `subnet`) whose
    /// namespace is pinned at `netns`.
    fn ensure_reply_path(
        &mut self,
        netns: &Path,
        vni: u32,
        subnet: &str,
    ) -> Result<ReplyPath, String>;
    /// The inode of the namespace pinned at `netns` (another one: it was made again).
    fn netns_inode(&mut self, netns: &Path) -> Option<u64>;
    /// Refreshes the neighbour entries towards these nodes (a datagram to their VXLAN
    /// port).
    fn nudge(&mut self, nodes: &[Ipv4Addr], vxlan_port: u16);
    /// The node's addresses (published ports answer on them).
    fn node_addresses(&mut self) -> Vec<Ipv4Addr>;
}

/// The real kernel: this agent's copy of the underlay object (its maps pinned, shared
/// with the attached XDP program; its TC programs make the reply path), and netlink.
/// The node's sysctls change through the agent's journal.
pub struct KernelMesh {
    program: UnderlayProgram,
    maps: MeshMaps,
    underlay: String,
    sysctls: SysctlJournal,
}

impl KernelMesh {
    /// Loads the mesh's maps (adopting pinned ones) and turns forwarding on where the
    /// mesh needs it.
    pub fn open(
        pin_dir: &Path,
        flows: u32,
        underlay: &str,
        sysctls: SysctlJournal,
    ) -> Result<Self, String> {
        let mut program = UnderlayProgram::load_pinned_with(pin_dir, flows)
            .map_err(|e| format!("loading the routing mesh's programs: {e}"))?;
        let maps = program
            .take_mesh_maps()
            .map_err(|e| format!("opening the routing mesh's maps: {e}"))?;
        mesh_reply::enable_forwarding(underlay, &sysctls)
            .map_err(|e| format!("the routing mesh needs forwarding on the underlay: {e}"))?;
        Ok(Self {
            program,
            maps,
            underlay: underlay.to_owned(),
            sysctls,
        })
    }
}

impl MeshKernel for KernelMesh {
    fn apply(&mut self, old: &MeshPlan, new: &MeshPlan) -> Result<ApplyReport, String> {
        self.maps.apply(old, new).map_err(|e| e.to_string())
    }
    fn read_plan(&mut self) -> Result<MeshPlan, String> {
        self.maps.read_plan().map_err(|e| e.to_string())
    }
    fn ensure_reply_path(
        &mut self,
        netns: &Path,
        vni: u32,
        subnet: &str,
    ) -> Result<ReplyPath, String> {
        let r = mesh_reply::ensure(&mut self.program, netns, vni, &self.underlay)
            .map_err(|e| e.to_string())?;
        mesh_reply::ensure_node_path(netns, vni, subnet, &self.underlay, &self.sysctls)
            .map_err(|e| e.to_string())?;
        Ok(r)
    }
    fn netns_inode(&mut self, path: &Path) -> Option<u64> {
        netns::inode(path).ok()
    }
    fn nudge(&mut self, nodes: &[Ipv4Addr], vxlan_port: u16) {
        mesh_reply::nudge_neighbours(nodes, vxlan_port);
    }
    fn node_addresses(&mut self) -> Vec<Ipv4Addr> {
        iface::node_addresses().unwrap_or_default()
    }
}

/// What `lb.json` holds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct MeshStatus {
    /// Published ports in the maps.
    pub frontends: usize,
    /// Backend entries (one per backend and published port it serves).
    pub backends: usize,
    /// Map entries written and removed by the last apply.
    pub written: usize,
    pub removed: usize,
    /// Why the latest declared state was refused (the last good one stays applied).
    pub refused: Option<String>,
    /// "ready", "waiting for the ingress network", "no ingress network declared" or why
    /// it failed.
    pub reply_path: String,
    pub elapsed_ms: f64,
    /// The maps could not be written (`refused` says why): a failure, not a refusal of
    /// the declared state.
    #[serde(skip)]
    pub apply_failed: bool,
}

impl super::runner::Report for MeshStatus {
    fn failures(&self) -> usize {
        usize::from(self.apply_failed)
    }
    fn refused(&self) -> bool {
        self.refused.is_some() && !self.apply_failed
    }
}

/// This node's fixed part in the mesh.
#[derive(Clone, Debug)]
pub struct MeshNode {
    pub vtep: Ipv4Addr,
    /// The agent's VXLAN port, unless the declared state names the cluster's.
    pub vxlan_port: u16,
    pub netns_dir: PathBuf,
    /// The underlay is a veth: remote backends are reached with a redirect.
    pub tx_redirect: bool,
}

/// The mesh reconciler.
pub struct MeshReconciler<K: MeshKernel> {
    kernel: K,
    node: MeshNode,
    /// The agent's underlay address: the VTEP unless the swarm names a data-path one.
    underlay_vtep: Ipv4Addr,
    /// What the maps hold.
    applied: MeshPlan,
    intake: Intake<(LbState, OverlayState)>,
    reply: Option<ReplyPath>,
    reply_error: Option<String>,
    /// When the reply path was last tried, and the namespace's inode it found then.
    last_attempt: Option<(Instant, Option<u64>)>,
    last_nudge: Option<Instant>,
    /// Where the declared version the maps hold is told; None: nowhere.
    ready: Option<ReadinessSender>,
}

impl<K: MeshKernel> MeshReconciler<K> {
    /// Adopts what the maps hold.
    pub fn new(mut kernel: K, node: MeshNode) -> Result<Self, String> {
        let applied = kernel
            .read_plan()
            .map_err(|e| format!("reading back the routing mesh's maps: {e}"))?;
        info!(
            frontends = applied.frontends.len(),
            backends = applied.backends.len(),
            "routing mesh maps adopted"
        );
        Ok(Self {
            kernel,
            underlay_vtep: node.vtep,
            node,
            applied,
            intake: Intake::default(),
            reply: None,
            reply_error: None,
            last_attempt: None,
            last_nudge: None,
            ready: None,
        })
    }

    /// Tells `ready` which declared version the maps hold after each apply that took it
    /// whole (the executor holds a task's stop until every node's mesh has withdrawn it).
    pub fn with_readiness(mut self, ready: ReadinessSender) -> Self {
        self.ready = Some(ready);
        self
    }

    pub fn applied(&self) -> &MeshPlan {
        &self.applied
    }

    /// (Re)makes the reply path when the ingress network's namespace is new to us.
    /// Returns whether the ifindex the maps must hold changed.
    fn ensure_reply_path(&mut self, present: &[PresentNetwork]) -> bool {
        let Some((lb, overlay)) = self.intake.current() else {
            return false;
        };
        let Some(net) = lb
            .ingress_network
            .as_deref()
            .and_then(|n| overlay.network(n))
        else {
            self.reply_error = Some("no ingress network declared".into());
            return self.reply.take().is_some();
        };
        let vni = net.vni;
        let subnet = net.subnet.to_string();
        let path = pin_path(&self.node.netns_dir, vni);
        if !present.iter().any(|p| p.vni == vni) {
            let changed = self.reply.take().is_some();
            self.reply_error = Some("waiting for the ingress network".into());
            return changed;
        }
        let inode = self.kernel.netns_inode(&path);
        if let Some(r) = &self.reply {
            if Some(r.netns_inode) == inode {
                return false;
            }
        }
        // A failed attempt is retried every few seconds, not on every wake-up; at once
        // when the namespace is another one than the attempt found (made again, or
        // there now where it was being removed): a task of the new one may be answering
        // the mesh's flows already, and its replies leave only by this path.
        if self.reply.is_none() && self.reply_error.is_some() {
            if let Some((at, seen)) = self.last_attempt {
                if at.elapsed() < RETRY_EVERY && seen == inode {
                    return false;
                }
            }
        }
        self.last_attempt = Some((Instant::now(), inode));
        let before = self.reply.as_ref().map(|r| r.netns_ifindex);
        match self.kernel.ensure_reply_path(&path, vni, &subnet) {
            Ok(r) => {
                info!(netns = %path.display(), host_veth = %r.host_veth, "routing mesh reply path ready");
                self.reply = Some(r);
                self.reply_error = None;
            }
            Err(e) => {
                warn!(error = %e, "routing mesh reply path");
                self.reply = None;
                self.reply_error = Some(e);
            }
        }
        before != self.reply.as_ref().map(|r| r.netns_ifindex)
    }

    fn apply(&mut self) -> MeshStatus {
        let start = Instant::now();
        let mut status = MeshStatus {
            refused: self.intake.refused().map(str::to_owned),
            reply_path: self.reply_error.clone().unwrap_or_else(|| "ready".into()),
            ..Default::default()
        };
        if let Some((lb, overlay)) = self.intake.current() {
            let node = NodeMesh {
                vtep: self.node.vtep,
                addresses: self.kernel.node_addresses(),
                vxlan_port: self.node.vxlan_port,
                netns_veth_ifindex: self.reply.as_ref().map_or(0, |r| r.netns_ifindex),
                underlay_ifindex: self.reply.as_ref().map_or(0, |r| r.underlay_ifindex),
                tx_redirect: self.node.tx_redirect,
            };
            match plan(lb, overlay, &node, &self.applied) {
                Ok(next) => match self.kernel.apply(&self.applied, &next) {
                    Ok(r) => {
                        status.written = r.written;
                        status.removed = r.removed;
                        self.applied = next;
                    }
                    Err(e) => {
                        warn!(error = %e, "applying the routing mesh's maps");
                        status.refused = Some(format!("applying the maps: {e}"));
                        status.apply_failed = true;
                        // What an interrupted apply left is unknown: read it back.
                        if let Ok(now) = self.kernel.read_plan() {
                            self.applied = now;
                        }
                    }
                },
                Err(e) => {
                    warn!(error = %e, "declared LB state refused");
                    status.refused = Some(e.to_string());
                }
            }
        }
        status.frontends = self.applied.frontends.len();
        status.backends = self.applied.backends.len();
        status.elapsed_ms = start.elapsed().as_secs_f64() * 1e3;
        if status.written > 0 || status.removed > 0 {
            info!(
                frontends = status.frontends,
                written = status.written,
                removed = status.removed,
                "routing mesh applied"
            );
        }
        status
    }

    fn nudge_if_due(&mut self) {
        if self.last_nudge.is_some_and(|t| t.elapsed() < NUDGE_EVERY) {
            return;
        }
        self.last_nudge = Some(Instant::now());
        let mut nodes: Vec<Ipv4Addr> = self
            .applied
            .backends
            .values()
            .map(|b| mesh::ipv4(b.0.node))
            .filter(|n| *n != self.node.vtep)
            .collect();
        nodes.sort();
        nodes.dedup();
        self.kernel.nudge(&nodes, self.node.vxlan_port);
    }
}

impl<K: MeshKernel + 'static> Reconcile for MeshReconciler<K> {
    type Status = MeshStatus;

    fn reconcile(
        &mut self,
        declared: Option<&DeclaredNode>,
        present: &[PresentNetwork],
        cue: Cue,
    ) -> Option<MeshStatus> {
        let mut due = false;
        if let Some(port) = declared.and_then(|d| d.data_path_port) {
            if port != self.node.vxlan_port {
                info!(
                    from = self.node.vxlan_port,
                    to = port,
                    "routing mesh VXLAN port changes"
                );
                self.node.vxlan_port = port;
                due = true;
            }
        }
        // The VTEP: the node's data-path address when the swarm names one (frames to
        // remote tasks leave from it, through whichever interface the FIB says), else
        // the agent's underlay address.
        let vtep = declared
            .and_then(|d| d.data_path_addr)
            .unwrap_or(self.underlay_vtep);
        if vtep != self.node.vtep {
            info!(from = %self.node.vtep, to = %vtep, "routing mesh VTEP changes");
            self.node.vtep = vtep;
            due = true;
        }
        if matches!(cue, Cue::Start | Cue::Declared) {
            if let Some(d) = declared {
                if let Some(lb) = &d.lb {
                    let checked = lb
                        .validate(&d.overlay)
                        .map(|()| (lb.clone(), d.overlay.clone()))
                        .map_err(|e| format!("declared LB state refused: {e}"));
                    self.intake.offer(checked);
                    due = true;
                }
            }
        }
        let error_before = self.reply_error.clone();
        let reply_changed = self.ensure_reply_path(present) || error_before != self.reply_error;
        let status = (due || reply_changed).then(|| self.apply());
        // The maps hold the declared state whole only when it was taken and written;
        // a refused one leaves the last good one in force, and its version stays.
        let taken = status.as_ref().is_some_and(|s| s.refused.is_none());
        if let (Some(tx), Some(d), true) = (&self.ready, declared, taken) {
            if d.lb.is_some() {
                ready::publish(tx, |r| r.mesh_version = d.version);
            }
        }
        self.nudge_if_due();
        status
    }

    fn period(&self) -> Duration {
        Duration::from_secs(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        lb::state::{
            Backend, BackendState, Balance, EndpointMode, Protocol, PublishMode, PublishedPort,
            Service,
        },
        overlay::state::Network,
    };

    #[derive(Default)]
    struct FakeKernel {
        maps: MeshPlan,
        reply_attempts: usize,
        reply_fails: bool,
        inode: u64,
        nudged: Vec<(Vec<Ipv4Addr>, u16)>,
    }

    impl MeshKernel for FakeKernel {
        fn apply(&mut self, _old: &MeshPlan, new: &MeshPlan) -> Result<ApplyReport, String> {
            self.maps = new.clone();
            Ok(ApplyReport {
                written: new.frontends.len() + new.backends.len(),
                removed: 0,
            })
        }
        fn read_plan(&mut self) -> Result<MeshPlan, String> {
            Ok(self.maps.clone())
        }
        fn ensure_reply_path(
            &mut self,
            netns: &Path,
            _vni: u32,
            _subnet: &str,
        ) -> Result<ReplyPath, String> {
            self.reply_attempts += 1;
            if self.reply_fails {
                return Err("no veth".into());
            }
            Ok(ReplyPath {
                netns_path: netns.to_owned(),
                netns_inode: self.inode,
                host_veth: "shm4096".into(),
                netns_ifindex: 7 + self.inode as u32,
                underlay_ifindex: 2,
            })
        }
        fn netns_inode(&mut self, _netns: &Path) -> Option<u64> {
            Some(self.inode)
        }
        fn nudge(&mut self, nodes: &[Ipv4Addr], vxlan_port: u16) {
            self.nudged.push((nodes.to_vec(), vxlan_port));
        }
        fn node_addresses(&mut self) -> Vec<Ipv4Addr> {
            vec![ip("192.168.77.11")]
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn node() -> MeshNode {
        MeshNode {
            vtep: ip("192.168.77.11"),
            vxlan_port: 4789,
            netns_dir: "/run/x".into(),
            tx_redirect: false,
        }
    }

    fn declared(published: u16) -> DeclaredNode {
        let mut d = DeclaredNode::default();
        d.overlay.networks.push(Network {
            id: "ingress".into(),
            vni: 4096,
            subnet: "10.255.0.0/16".parse().unwrap(),
            gateway: ip("10.255.0.1"),
            mtu: None,
            encrypted: false,
        });
        d.lb = Some(LbState {
            ingress_network: Some("ingress".into()),
            services: vec![Service {
                id: "s1".into(),
                name: "web".into(),
                endpoint_mode: EndpointMode::Vip,
                balance: Balance::default(),
                vips: Vec::new(),
                ports: vec![PublishedPort {
                    protocol: Protocol::Tcp,
                    published,
                    target: 80,
                    mode: PublishMode::Ingress,
                    balance: None,
                }],
                backends: vec![Backend {
                    task: "t1".into(),
                    node: ip("192.168.77.12"),
                    addresses: [("ingress".to_string(), ip("10.255.0.21"))].into(),
                    state: BackendState::Healthy,
                }],
            }],
        });
        d
    }

    fn present() -> Vec<PresentNetwork> {
        vec![PresentNetwork {
            id: "ingress".into(),
            vni: 4096,
            gateway: ip("10.255.0.1"),
            netns_path: "/run/x/vni-4096".into(),
            endpoints: Default::default(),
        }]
    }

    #[test]
    fn the_reply_path_waits_for_the_ingress_namespace_then_the_maps_follow_each_change() {
        let mut r = MeshReconciler::new(FakeKernel::default(), node()).unwrap();
        let s = r
            .reconcile(Some(&declared(8080)), &[], Cue::Declared)
            .unwrap();
        assert_eq!(s.reply_path, "waiting for the ingress network");
        assert_eq!(s.frontends, 1);

        let s = r
            .reconcile(Some(&declared(8080)), &present(), Cue::Present)
            .unwrap();
        assert_eq!(s.reply_path, "ready");
        assert_eq!(r.kernel.reply_attempts, 1);
        assert_eq!(
            r.kernel.nudged.last().unwrap(),
            &(vec![ip("192.168.77.12")], 4789)
        );

        // Nothing new: nothing applied, no status.
        assert!(r
            .reconcile(Some(&declared(8080)), &present(), Cue::Timer)
            .is_none());

        let s = r
            .reconcile(Some(&declared(9090)), &present(), Cue::Declared)
            .unwrap();
        assert_eq!(s.frontends, 1);
        let port = r.applied().frontends.keys().next().unwrap().0.port;
        assert_eq!(u16::from_be_bytes(port.to_ne_bytes()), 9090);

        // The namespace made again: the reply path is made again.
        r.kernel.inode = 1;
        let s = r
            .reconcile(Some(&declared(9090)), &present(), Cue::Timer)
            .unwrap();
        assert_eq!(s.reply_path, "ready");
        assert_eq!(r.kernel.reply_attempts, 2);
    }

    #[test]
    fn a_failed_reply_path_is_retried_later_and_a_bad_state_keeps_the_good_one() {
        let kernel = FakeKernel {
            reply_fails: true,
            ..Default::default()
        };
        let mut r = MeshReconciler::new(kernel, node()).unwrap();
        let s = r
            .reconcile(Some(&declared(8080)), &present(), Cue::Declared)
            .unwrap();
        assert_eq!(s.reply_path, "no veth");
        r.reconcile(Some(&declared(8080)), &present(), Cue::Timer);
        assert_eq!(
            r.kernel.reply_attempts, 1,
            "not retried before {RETRY_EVERY:?}"
        );
        // The namespace made again (its pin was gone at the failed attempt): retried at
        // once.
        r.kernel.inode = 7;
        r.reconcile(Some(&declared(8080)), &present(), Cue::Present);
        assert_eq!(
            r.kernel.reply_attempts, 2,
            "a new namespace is tried at once"
        );
        r.reconcile(Some(&declared(8080)), &present(), Cue::Timer);
        assert_eq!(r.kernel.reply_attempts, 2);

        let mut bad = declared(9090);
        bad.lb.as_mut().unwrap().ingress_network = Some("nowhere".into());
        let s = r.reconcile(Some(&bad), &present(), Cue::Declared).unwrap();
        assert!(s.refused.is_some());
        let port = r.applied().frontends.keys().next().unwrap().0.port;
        assert_eq!(u16::from_be_bytes(port.to_ne_bytes()), 8080);
    }

    #[test]
    fn the_declared_version_is_told_once_the_maps_hold_it_whole() {
        let (ready_tx, ready) = ready::channel();
        let mut r = MeshReconciler::new(FakeKernel::default(), node())
            .unwrap()
            .with_readiness(ready_tx);
        let mut d = declared(8080);
        d.version = 5;
        r.reconcile(Some(&d), &present(), Cue::Declared).unwrap();
        assert_eq!(ready.borrow().mesh_version, 5);

        let mut bad = declared(9090);
        bad.version = 6;
        bad.lb.as_mut().unwrap().ingress_network = Some("nowhere".into());
        r.reconcile(Some(&bad), &present(), Cue::Declared).unwrap();
        assert_eq!(
            ready.borrow().mesh_version,
            5,
            "a refused state is not in force: the maps still hold version 5"
        );

        let mut good = declared(9090);
        good.version = 7;
        r.reconcile(Some(&good), &present(), Cue::Declared).unwrap();
        assert_eq!(ready.borrow().mesh_version, 7);
    }

    #[test]
    fn the_cluster_vxlan_port_replaces_the_agents() {
        let mut r = MeshReconciler::new(FakeKernel::default(), node()).unwrap();
        let mut d = declared(8080);
        d.data_path_port = Some(7789);
        r.reconcile(Some(&d), &present(), Cue::Declared).unwrap();
        let config = r.applied().config.unwrap().0;
        assert_eq!(config.vxlan_port, crate::lb::mesh::port(7789));
        assert_eq!(r.kernel.nudged.last().unwrap().1, 7789);
    }
}
