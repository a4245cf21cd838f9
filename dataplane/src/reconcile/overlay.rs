//! The overlay as the agent runs it: [`Reconciler`] (validate, plan against its record,
//! apply) fed from the declared node state, a resync every 30 s that re-reads the
//! kernel to repair drift, the networks present after each apply published for the
//! reconcilers that work inside them, the containers attached after each apply
//! published for the executor ([`super::ready`]), and `overlay.json`.
use std::{net::Ipv4Addr, path::PathBuf, sync::Arc, time::Duration};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    ready::{self, ReadinessSender},
    runner::{Cue, Reconcile},
    DeclaredNode, PresentNetwork,
};
use crate::overlay::{
    kernel::pin_path,
    model::{KernelState, OverlayKernel},
    plan::NodeParams,
    reconciler::{ReconcileError, Reconciler},
    state::OverlayState,
};

/// How often the kernel is re-read to repair drift.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// What `overlay.json` holds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct OverlayStatus {
    /// VNIs of the networks that exist on this node.
    pub networks: Vec<u32>,
    pub attachments: usize,
    pub remotes: usize,
    pub applied_ops: usize,
    /// The first of the latest apply's ops, described.
    pub changes: Vec<String>,
    pub absent_containers: Vec<String>,
    pub vanished_containers: Vec<String>,
    pub failed: Vec<String>,
    /// Why the latest declared state was refused (the last good one stays applied).
    pub refused: Option<String>,
    /// The VTEP the networks use and the interface it is on.
    pub vtep: Option<Ipv4Addr>,
    pub data_path_interface: Option<String>,
    /// Why the declared data-path address could not be followed.
    pub data_path_refused: Option<String>,
    pub elapsed_ms: f64,
}

impl super::runner::Report for OverlayStatus {
    fn failures(&self) -> usize {
        self.failed.len() + usize::from(self.data_path_refused.is_some())
    }
    fn refused(&self) -> bool {
        self.refused.is_some()
    }
}

/// Finds the interface holding an address and its MTU: where a `--data-path-addr`
/// sends the overlay from.
pub type InterfaceLookup = fn(Ipv4Addr) -> Result<(String, u32), String>;

/// The interface of this namespace that holds `addr`, and its MTU.
pub fn interface_of(addr: Ipv4Addr) -> Result<(String, u32), String> {
    let name = crate::iface::interface_with(addr)
        .map_err(|e| format!("reading this host's addresses: {e}"))?
        .ok_or_else(|| format!("no interface of this host holds {addr}"))?;
    let mtu = crate::iface::mtu(&name).map_err(|e| format!("reading the MTU of {name}: {e}"))?;
    Ok((name, mtu))
}

/// The overlay reconciler and what it publishes.
pub struct OverlayReconciler<K: OverlayKernel> {
    inner: Reconciler<K>,
    /// The agent's own underlay: the data path unless the swarm names another one.
    underlay: NodeParams,
    lookup: InterfaceLookup,
    netns_dir: PathBuf,
    present: watch::Sender<Arc<Vec<PresentNetwork>>>,
    /// Where the containers attached after each apply are told; None: nowhere.
    ready: Option<ReadinessSender>,
    status: OverlayStatus,
}

impl<K: OverlayKernel> OverlayReconciler<K> {
    /// Adopts what the kernel holds. `present` receives the networks present after each
    /// apply (only when they change).
    pub fn new(
        kernel: K,
        node: NodeParams,
        netns_dir: PathBuf,
        present: watch::Sender<Arc<Vec<PresentNetwork>>>,
    ) -> Result<Self, ReconcileError> {
        Ok(Self {
            underlay: node.clone(),
            inner: Reconciler::new(kernel, node)?,
            lookup: interface_of,
            netns_dir,
            present,
            ready: None,
            status: OverlayStatus::default(),
        })
    }

    /// Tells `ready` which containers are attached after each apply (the executor
    /// starts a task's process once its namespace is).
    pub fn with_readiness(mut self, ready: ReadinessSender) -> Self {
        self.ready = Some(ready);
        self
    }

    /// Where `--data-path-addr` addresses are looked up (tests fake the host).
    pub fn with_lookup(mut self, lookup: InterfaceLookup) -> Self {
        self.lookup = lookup;
        self
    }

    /// Follows the node's data-path address: its interface carries the overlay; none
    /// declared, the agent's underlay does. An address no interface holds is refused
    /// (the data path stays where it is) with the reason.
    fn follow_data_path(&mut self, addr: Option<Ipv4Addr>) -> Result<(), String> {
        let (vtep, interface, mtu) = match addr {
            None => (
                self.underlay.vtep,
                self.underlay.underlay_interface.clone(),
                self.underlay.underlay_mtu,
            ),
            Some(a) if a == self.inner.node().vtep => return Ok(()),
            Some(a) => {
                let (name, mtu) =
                    (self.lookup)(a).map_err(|e| format!("--data-path-addr {a}: {e}"))?;
                (a, name, mtu)
            }
        };
        self.inner.set_data_path(vtep, interface, mtu);
        Ok(())
    }

    pub fn applied(&self) -> &KernelState {
        self.inner.applied()
    }

    fn publish_present(&self) {
        let now = present_networks(
            self.inner.last_good(),
            self.inner.applied(),
            &self.netns_dir,
        );
        self.present.send_if_modified(|old| {
            let changed = **old != now;
            if changed {
                *old = Arc::new(now);
            }
            changed
        });
    }
}

impl<K: OverlayKernel + 'static> Reconcile for OverlayReconciler<K> {
    type Status = OverlayStatus;

    fn reconcile(
        &mut self,
        declared: Option<&DeclaredNode>,
        _present: &[PresentNetwork],
        cue: Cue,
    ) -> Option<OverlayStatus> {
        let declared = declared?;
        if let Some(port) = declared.data_path_port {
            self.inner.set_port(port);
        }
        let data_path = self.follow_data_path(declared.data_path_addr);
        if let Err(e) = &data_path {
            warn!(error = %e, "the overlay's data path stays where it is");
        }
        if cue == Cue::Timer {
            if let Err(e) = self.inner.resync() {
                warn!(error = %e, "re-reading the overlay from the kernel");
            }
        }
        // The ingress network stays on every node that publishes ports (the declared
        // state names it only then): the mesh's reply path lives in its namespace.
        let kept: Vec<String> = declared
            .lb
            .as_ref()
            .and_then(|lb| lb.ingress_network.clone())
            .into_iter()
            .collect();
        let status = &mut self.status;
        match self.inner.apply_keeping(&declared.overlay, &kept, |c| {
            declared.containers.get(c).cloned()
        }) {
            Ok(report) => {
                if report.applied > 0 || !report.failed.is_empty() {
                    info!(
                        ops = report.applied,
                        failed = report.failed.len(),
                        absent = report.absent_containers.len(),
                        ms = report.elapsed.as_secs_f64() * 1e3,
                        "overlay reconciled"
                    );
                }
                if let Some(tx) = &self.ready {
                    ready::publish(tx, |r| {
                        r.attached = report.attached;
                        if report.failed.is_empty() {
                            r.overlay_version = declared.version;
                        }
                    });
                }
                status.refused = None;
                status.applied_ops = report.applied;
                status.changes = report.changes;
                status.absent_containers = report.absent_containers;
                status.vanished_containers = report.vanished_containers;
                status.failed = report.failed;
                status.elapsed_ms = report.elapsed.as_secs_f64() * 1e3;
            }
            Err(e) => {
                warn!(error = %e, "overlay state refused");
                status.refused = Some(e.to_string());
            }
        }
        status.data_path_refused = data_path.err();
        status.vtep = Some(self.inner.node().vtep);
        status.data_path_interface = Some(self.inner.node().underlay_interface.clone());
        let applied = self.inner.applied();
        status.networks = applied.networks.keys().copied().collect();
        status.attachments = applied.networks.values().map(|n| n.attachments.len()).sum();
        status.remotes = applied.networks.values().map(|n| n.remotes.len()).sum();
        let status = status.clone();
        self.publish_present();
        Some(status)
    }

    fn period(&self) -> Duration {
        RESYNC_EVERY
    }
}

/// The networks in `applied`, named from the declared state.
fn present_networks(
    state: Option<&OverlayState>,
    applied: &KernelState,
    netns_dir: &std::path::Path,
) -> Vec<PresentNetwork> {
    applied
        .networks
        .iter()
        .filter_map(|(vni, objects)| {
            let id = state?.networks.iter().find(|n| n.vni == *vni)?.id.clone();
            Some(PresentNetwork {
                id,
                vni: *vni,
                gateway: objects.spec.gateway,
                netns_path: pin_path(netns_dir, *vni),
                endpoints: (objects.attachments.values().map(|a| a.ip))
                    .chain(objects.remotes.keys().copied())
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::{
        model::{KernelError, Op},
        plan::{self, ContainerNetns},
        state::{LocalEndpoint, Network},
    };

    #[derive(Default)]
    struct FakeKernel {
        state: KernelState,
        snapshots: usize,
    }

    impl OverlayKernel for FakeKernel {
        fn snapshot(&mut self) -> Result<KernelState, KernelError> {
            self.snapshots += 1;
            Ok(self.state.clone())
        }
        fn apply(&mut self, op: &Op) -> Result<(), KernelError> {
            plan::record(&mut self.state, op);
            Ok(())
        }
    }

    fn node() -> NodeParams {
        NodeParams {
            vtep: "192.168.77.11".parse().unwrap(),
            underlay_interface: "eth0".into(),
            underlay_mtu: 1500,
            port: 4789,
        }
    }

    fn declared(with_container: bool) -> DeclaredNode {
        let mut d = DeclaredNode::default();
        d.overlay.networks.push(Network {
            id: "web".into(),
            vni: 4097,
            subnet: "10.0.9.0/24".parse().unwrap(),
            gateway: "10.0.9.1".parse().unwrap(),
            mtu: None,
            encrypted: false,
        });
        d.overlay.local_endpoints.push(LocalEndpoint {
            network: "web".into(),
            container: "c1".into(),
            ip: "10.0.9.2".parse().unwrap(),
            mac: None,
        });
        if with_container {
            d.containers.insert(
                "c1".into(),
                ContainerNetns {
                    path: "/proc/1/ns/net".into(),
                    id: 7,
                },
            );
        }
        d
    }

    #[test]
    fn a_container_is_attached_once_the_pipeline_has_its_namespace() {
        let (tx, mut present) = watch::channel(Arc::default());
        let (ready_tx, ready) = ready::channel();
        let mut r = OverlayReconciler::new(FakeKernel::default(), node(), "/run/x".into(), tx)
            .unwrap()
            .with_readiness(ready_tx);
        assert!(
            r.reconcile(None, &[], Cue::Start).is_none(),
            "nothing declared yet"
        );

        let s = r
            .reconcile(Some(&declared(false)), &[], Cue::Declared)
            .unwrap();
        assert_eq!(s.absent_containers, ["c1"]);
        assert_eq!(s.attachments, 0);
        assert!(
            !present.has_changed().unwrap(),
            "no network without a running endpoint"
        );
        assert!(ready.borrow().attached.is_empty());

        let mut d = declared(true);
        d.version = 4;
        let s = r.reconcile(Some(&d), &[], Cue::Declared).unwrap();
        assert_eq!(s.attachments, 1);
        assert_eq!(
            ready.borrow().attached,
            std::collections::BTreeMap::from([("c1".to_owned(), 7)]),
            "the executor learns c1's namespace is attached"
        );
        assert_eq!(ready.borrow().overlay_version, 4);
        assert!(s.absent_containers.is_empty());
        assert!(present.has_changed().unwrap());
        let nets = present.borrow_and_update().clone();
        assert_eq!(nets.len(), 1);
        assert_eq!(nets[0].netns_path, PathBuf::from("/run/x/vni-4097"));

        r.reconcile(Some(&declared(true)), &[], Cue::Declared)
            .unwrap();
        assert!(!present.has_changed().unwrap(), "same networks: no wake-up");
    }

    #[test]
    fn the_timer_resyncs_and_a_bad_state_keeps_the_good_one() {
        let (tx, _present) = watch::channel(Arc::default());
        let mut r =
            OverlayReconciler::new(FakeKernel::default(), node(), "/run/x".into(), tx).unwrap();
        r.reconcile(Some(&declared(true)), &[], Cue::Declared)
            .unwrap();
        let before = r.inner.kernel_mut().snapshots;
        r.reconcile(Some(&declared(true)), &[], Cue::Timer).unwrap();
        assert_eq!(r.inner.kernel_mut().snapshots, before + 1);

        let mut bad = declared(true);
        bad.overlay.local_endpoints[0].network = "nope".into();
        let s = r.reconcile(Some(&bad), &[], Cue::Declared).unwrap();
        assert!(s.refused.is_some());
        assert_eq!(s.attachments, 1, "the last good state stays");
    }

    #[test]
    fn networks_follow_the_cluster_vxlan_port() {
        let (tx, _present) = watch::channel(Arc::default());
        let mut r =
            OverlayReconciler::new(FakeKernel::default(), node(), "/run/x".into(), tx).unwrap();
        r.reconcile(Some(&declared(true)), &[], Cue::Declared)
            .unwrap();
        assert_eq!(r.applied().networks[&4097].spec.port, 4789);
        let mut d = declared(true);
        d.data_path_port = Some(7789);
        let s = r.reconcile(Some(&d), &[], Cue::Declared).unwrap();
        assert!(s.failed.is_empty(), "{s:?}");
        assert_eq!(
            r.applied().networks[&4097].spec.port,
            7789,
            "made again on the new port"
        );
        assert_eq!(s.attachments, 1);
    }

    #[test]
    fn the_network_follows_the_declared_data_path_address() {
        fn lookup(a: Ipv4Addr) -> Result<(String, u32), String> {
            match a.octets() {
                [192, 168, 78, _] => Ok(("eth1".into(), 9000)),
                _ => Err(format!("no interface of this host holds {a}")),
            }
        }
        let (tx, _present) = watch::channel(Arc::default());
        let mut r = OverlayReconciler::new(FakeKernel::default(), node(), "/run/x".into(), tx)
            .unwrap()
            .with_lookup(lookup);
        let spec = |r: &OverlayReconciler<FakeKernel>| r.applied().networks[&4097].spec.clone();

        let s = r
            .reconcile(Some(&declared(true)), &[], Cue::Declared)
            .unwrap();
        assert_eq!(s.data_path_interface.as_deref(), Some("eth0"));
        assert_eq!(spec(&r).vtep, node().vtep);

        let mut d = declared(true);
        d.data_path_addr = Some("192.168.78.11".parse().unwrap());
        let s = r.reconcile(Some(&d), &[], Cue::Declared).unwrap();
        assert_eq!(s.vtep, Some("192.168.78.11".parse().unwrap()));
        assert_eq!(s.data_path_interface.as_deref(), Some("eth1"));
        let made = spec(&r);
        assert_eq!(made.vtep, "192.168.78.11".parse::<Ipv4Addr>().unwrap());
        assert_eq!(made.underlay_interface, "eth1");
        assert_eq!(
            made.mtu,
            9000 - 50,
            "the MTU follows the data-path interface"
        );

        // An address no interface holds: refused, the data path stays.
        d.data_path_addr = Some("10.9.9.9".parse().unwrap());
        let s = r.reconcile(Some(&d), &[], Cue::Declared).unwrap();
        assert!(
            s.data_path_refused.as_deref().unwrap().contains("10.9.9.9"),
            "{s:?}"
        );
        assert_eq!(spec(&r).underlay_interface, "eth1");

        // None declared: back to the agent's underlay.
        let s = r
            .reconcile(Some(&declared(true)), &[], Cue::Declared)
            .unwrap();
        assert!(s.data_path_refused.is_none());
        assert_eq!(spec(&r).underlay_interface, "eth0");
    }
}
