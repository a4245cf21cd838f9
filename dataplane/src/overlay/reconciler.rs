//! Makes the kernel match declared overlay state, applying only the difference.
//!
//! The reconciler keeps a record of what it applied (adopted from the kernel when it
//! starts, so a restarted agent changes nothing that works) and diffs each new
//! declared state against that record, not against a fresh read of the kernel: a
//! one-endpoint change then costs one endpoint's ops however large the table is.
//! [`Reconciler::resync`] re-reads the kernel, to heal changes made behind its back.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use super::{
    model::{KernelError, KernelState, Op, OverlayKernel},
    plan::{self, ContainerNetns, NodeParams},
    state::{OverlayState, StateError},
};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The declared state contradicts itself; nothing was applied.
    #[error("declared overlay state refused, the last good state stays: {0}")]
    Refused(#[from] StateError),
    #[error("reading the overlay state from the kernel: {0}")]
    Snapshot(#[source] KernelError),
}

/// How many op descriptions an [`ApplyReport`] keeps (the count is always whole).
pub const CHANGES_KEPT: usize = 16;

/// What one apply did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Ops that succeeded.
    pub applied: usize,
    /// The first [`CHANGES_KEPT`] of them, described: what a restart that should have
    /// adopted everything did instead, or what the latest change touched.
    pub changes: Vec<String>,
    /// Declared containers not running here (nothing to attach until they are).
    pub absent_containers: Vec<String>,
    /// Containers that vanished while being attached (left clean; retried next time).
    pub vanished_containers: Vec<String>,
    /// Ops that failed, with why.
    pub failed: Vec<String>,
    /// Containers whose every endpoint is attached after this apply, with their
    /// namespace identity ([`plan::attached`]).
    pub attached: BTreeMap<String, u64>,
    /// The whole apply: validation, planning against the record, kernel changes.
    pub elapsed: Duration,
    /// The part of `elapsed` spent changing the kernel.
    pub kernel_elapsed: Duration,
}

pub struct Reconciler<K: OverlayKernel> {
    kernel: K,
    node: NodeParams,
    applied: KernelState,
    last_good: Option<OverlayState>,
}

impl<K: OverlayKernel> Reconciler<K> {
    /// Adopts whatever overlay the kernel holds (from an earlier run of the agent).
    pub fn new(mut kernel: K, node: NodeParams) -> Result<Self, ReconcileError> {
        let applied = kernel.snapshot().map_err(ReconcileError::Snapshot)?;
        if !applied.networks.is_empty() {
            info!(
                networks = applied.networks.len(),
                "adopted overlay networks from the kernel"
            );
        }
        Ok(Self {
            kernel,
            node,
            applied,
            last_good: None,
        })
    }

    /// Applies `state`. A state that fails validation is refused whole and the kernel
    /// keeps the last good state. Containers are found through `netns_of`.
    pub fn apply(
        &mut self,
        state: &OverlayState,
        netns_of: impl FnMut(&str) -> Option<ContainerNetns>,
    ) -> Result<ApplyReport, ReconcileError> {
        self.apply_keeping(state, &[], netns_of)
    }

    /// [`Self::apply`], with the declared networks named in `kept` made on this node
    /// whether or not a running local container is attached to them
    /// ([`plan::desired_keeping`]).
    pub fn apply_keeping(
        &mut self,
        state: &OverlayState,
        kept: &[String],
        netns_of: impl FnMut(&str) -> Option<ContainerNetns>,
    ) -> Result<ApplyReport, ReconcileError> {
        state.validate()?;
        let started = Instant::now();
        let desired = plan::desired_keeping(state, &self.node, netns_of, kept);
        let ops = plan::diff(&desired, &self.applied);
        let mut report = ApplyReport {
            absent_containers: desired.absent_containers.clone(),
            ..Default::default()
        };
        for op in &ops {
            let t = Instant::now();
            let result = self.kernel.apply(op);
            report.kernel_elapsed += t.elapsed();
            match result {
                Ok(()) => {
                    plan::record(&mut self.applied, op);
                    report.applied += 1;
                    if report.changes.len() < CHANGES_KEPT {
                        report.changes.push(describe(op));
                    }
                }
                Err(KernelError::ContainerGone { container }) => {
                    debug!(%container, "container vanished while being attached");
                    report.vanished_containers.push(container);
                }
                Err(e) => {
                    warn!(op = %describe(op), error = %e, "overlay change failed");
                    report.failed.push(format!("{}: {e}", describe(op)));
                }
            }
        }
        if !report.failed.is_empty() {
            // What a failed op left is unknown: read the truth back.
            self.resync()?;
        }
        report.attached = plan::attached(&desired.kernel, &self.applied);
        self.last_good = Some(state.clone());
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// The node's VXLAN port from now on: networks made on another port are made again
    /// on this one at the next apply (the diff sees their devices differ).
    pub fn set_port(&mut self, port: u16) {
        if self.node.port != port {
            info!(
                from = self.node.port,
                to = port,
                "overlay VXLAN port changes"
            );
            self.node.port = port;
        }
    }

    /// What the node contributes to every network now.
    pub fn node(&self) -> &NodeParams {
        &self.node
    }

    /// The node's VTEP (address, interface, MTU) from now on: networks made on another
    /// one are made again at the next apply (their device specs differ). The port stays.
    pub fn set_data_path(&mut self, vtep: Ipv4Addr, interface: String, mtu: u32) {
        if self.node.vtep != vtep || self.node.underlay_interface != interface {
            info!(
                from = %self.node.vtep,
                to = %vtep,
                %interface,
                "overlay data path changes"
            );
        }
        self.node.vtep = vtep;
        self.node.underlay_interface = interface;
        self.node.underlay_mtu = mtu;
    }

    /// Re-reads the kernel, so the next apply repairs anything changed behind our back.
    pub fn resync(&mut self) -> Result<(), ReconcileError> {
        self.applied = self.kernel.snapshot().map_err(ReconcileError::Snapshot)?;
        Ok(())
    }

    /// The last state that was accepted.
    pub fn last_good(&self) -> Option<&OverlayState> {
        self.last_good.as_ref()
    }

    /// What the reconciler believes the kernel holds.
    pub fn applied(&self) -> &KernelState {
        &self.applied
    }

    pub fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }
}

/// One line for logs.
pub fn describe(op: &Op) -> String {
    match op {
        Op::CreateNetwork(s) => format!("create network vni {}", s.vni),
        Op::DeleteNetwork { vni } => format!("delete network vni {vni}"),
        Op::AddRemote { vni, ip, entry } => {
            format!(
                "add remote {ip} ({}) via {} on vni {vni}",
                entry.mac, entry.vtep
            )
        }
        Op::DeleteRemote { vni, ip, .. } => format!("delete remote {ip} on vni {vni}"),
        Op::Attach {
            vni,
            veth_name,
            spec,
            ..
        } => format!(
            "attach container {} as {} ({}) on vni {vni} via {veth_name}",
            spec.container, spec.ifname, spec.ip
        ),
        Op::Detach { vni, veth_name } => format!("detach {veth_name} on vni {vni}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::overlay::state::{LocalEndpoint, Network, RemoteEndpoint};

    /// An in-memory kernel: applies ops to a model; can be told that containers vanish
    /// or that an op fails.
    #[derive(Default)]
    struct FakeKernel {
        state: KernelState,
        gone: HashSet<String>,
        fail_remotes: bool,
        applied_ops: usize,
    }

    impl OverlayKernel for FakeKernel {
        fn snapshot(&mut self) -> Result<KernelState, KernelError> {
            Ok(self.state.clone())
        }
        fn apply(&mut self, op: &Op) -> Result<(), KernelError> {
            if let Op::Attach { spec, .. } = op {
                if self.gone.contains(&spec.container) {
                    return Err(KernelError::ContainerGone {
                        container: spec.container.clone(),
                    });
                }
            }
            if self.fail_remotes && matches!(op, Op::AddRemote { .. }) {
                return Err(KernelError::Netlink {
                    what: "add fdb".into(),
                    message: "injected".into(),
                });
            }
            self.applied_ops += 1;
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

    fn state() -> OverlayState {
        OverlayState {
            networks: vec![Network {
                id: "web".into(),
                vni: 4097,
                subnet: "10.0.9.0/24".parse().unwrap(),
                gateway: "10.0.9.1".parse().unwrap(),
                mtu: None,
                encrypted: false,
            }],
            local_endpoints: vec![LocalEndpoint {
                network: "web".into(),
                container: "c1".into(),
                ip: "10.0.9.2".parse().unwrap(),
                mac: None,
            }],
            remote_endpoints: vec![RemoteEndpoint {
                network: "web".into(),
                ip: "10.0.9.3".parse().unwrap(),
                mac: None,
                vtep: "192.168.77.12".parse().unwrap(),
            }],
        }
    }

    fn ns(_: &str) -> Option<ContainerNetns> {
        Some(ContainerNetns {
            path: "/proc/1/ns/net".into(),
            id: 7,
        })
    }

    #[test]
    fn refused_state_leaves_the_kernel_alone() {
        let mut r = Reconciler::new(FakeKernel::default(), node()).unwrap();
        r.apply(&state(), ns).unwrap();
        let before = r.kernel_mut().state.clone();
        let mut bad = state();
        bad.remote_endpoints[0].ip = "10.0.9.2".parse().unwrap(); // same IP as the local one
        let err = r.apply(&bad, ns).unwrap_err();
        assert!(err.to_string().contains("10.0.9.2"), "{err}");
        assert_eq!(r.kernel_mut().state, before);
        assert_eq!(r.last_good(), Some(&state()));
    }

    #[test]
    fn restarted_agent_adopts_and_changes_nothing() {
        let mut r = Reconciler::new(FakeKernel::default(), node()).unwrap();
        r.apply(&state(), ns).unwrap();
        let kernel = std::mem::take(r.kernel_mut());
        let ops_before = kernel.applied_ops;
        let mut r2 = Reconciler::new(kernel, node()).unwrap();
        let report = r2.apply(&state(), ns).unwrap();
        assert_eq!(report.applied, 0);
        assert_eq!(r2.kernel_mut().applied_ops, ops_before);
    }

    #[test]
    fn vanished_container_is_reported_and_retried() {
        let mut k = FakeKernel::default();
        k.gone.insert("c1".into());
        let mut r = Reconciler::new(k, node()).unwrap();
        let report = r.apply(&state(), ns).unwrap();
        assert_eq!(report.vanished_containers, vec!["c1".to_string()]);
        r.kernel_mut().gone.clear();
        let report = r.apply(&state(), ns).unwrap();
        assert_eq!(report.applied, 1, "the attach is retried: {report:?}");
    }

    #[test]
    fn failed_ops_are_reported_and_the_record_resynced() {
        let k = FakeKernel {
            fail_remotes: true,
            ..Default::default()
        };
        let mut r = Reconciler::new(k, node()).unwrap();
        let report = r.apply(&state(), ns).unwrap();
        assert_eq!(report.failed.len(), 1, "{report:?}");
        r.kernel_mut().fail_remotes = false;
        let report = r.apply(&state(), ns).unwrap();
        assert_eq!(
            report.applied, 1,
            "the failed remote is retried: {report:?}"
        );
    }
}
