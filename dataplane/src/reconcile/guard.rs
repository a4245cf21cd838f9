//! The data path's guard as the agent runs it: the declared cluster VTEPs (every node of
//! the swarm's data-path address) and the swarm's VXLAN port become the guard's maps
//! ([`GuardPlan`]), written as a difference from what they hold (adopted from a previous
//! agent at start). While the node's data-path address is on another interface than the
//! underlay, the guard's own XDP program runs there too, so VXLAN arriving on it is held
//! to the same rule (and a meshed flow's reply recorded); it is detached when the data
//! path comes back to the underlay. A failed attach is retried every [`RETRY_EVERY`].
//!
//! The standalone mode declares no cluster: the guard is off (every source accepted),
//! as it is on a node whose agent never followed a swarm.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;
use tracing::{info, warn};

use super::{
    runner::{Cue, Reconcile},
    DeclaredNode, PresentNetwork,
};
use crate::{
    guard::{ApplyReport, GuardMaps, GuardPlan},
    underlay::DataPathProgram,
};

/// How often a data-path attach that failed is tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(10);

/// What the guard reconciler changes in the kernel.
pub trait GuardKernel {
    /// What the maps hold.
    fn read_plan(&mut self) -> Result<GuardPlan, String>;
    /// Writes the difference between `old` and `new` to the maps.
    fn apply(&mut self, old: &GuardPlan, new: &GuardPlan) -> Result<ApplyReport, String>;
    /// The interface holding `addr`, if one does.
    fn interface_of(&mut self, addr: Ipv4Addr) -> Option<String>;
    /// Attaches the data-path program to `interface` (detaching it from any other);
    /// returns the XDP mode it runs in.
    fn attach_data_path(&mut self, interface: &str) -> Result<String, String>;
    /// Detaches the data-path program from every interface; returns which ones it left.
    fn detach_data_path(&mut self) -> Vec<String>;
}

/// The real kernel: the guard's maps pinned by the agent's underlay program, and the
/// data-path program, loaded when first needed.
pub struct KernelGuard {
    maps: GuardMaps,
    pin_dir: PathBuf,
    flows: u32,
    data_path: Option<DataPathProgram>,
}

impl KernelGuard {
    /// Opens the guard's maps that the agent's underlay program pinned in `pin_dir`.
    pub fn open(pin_dir: &Path, flows: u32) -> Result<Self, String> {
        let maps = GuardMaps::open_pinned(pin_dir)
            .map_err(|e| format!("opening the data path guard's maps: {e}"))?;
        Ok(Self {
            maps,
            pin_dir: pin_dir.to_owned(),
            flows,
            data_path: None,
        })
    }
}

impl GuardKernel for KernelGuard {
    fn read_plan(&mut self) -> Result<GuardPlan, String> {
        self.maps.read_plan().map_err(|e| e.to_string())
    }
    fn apply(&mut self, old: &GuardPlan, new: &GuardPlan) -> Result<ApplyReport, String> {
        self.maps.apply(old, new).map_err(|e| e.to_string())
    }
    fn interface_of(&mut self, addr: Ipv4Addr) -> Option<String> {
        crate::iface::interface_with(addr).ok().flatten()
    }
    fn attach_data_path(&mut self, interface: &str) -> Result<String, String> {
        let program = match &mut self.data_path {
            Some(p) => p,
            None => self.data_path.insert(
                DataPathProgram::load_pinned(&self.pin_dir, self.flows)
                    .map_err(|e| format!("loading the data-path program: {e}"))?,
            ),
        };
        program
            .attach_pinned(interface, &self.pin_dir)
            .map(|mode| mode.to_string())
            .map_err(|e| e.to_string())
    }
    fn detach_data_path(&mut self) -> Vec<String> {
        DataPathProgram::detach_pinned(&self.pin_dir, None)
    }
}

/// What `guard.json` holds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct GuardStatus {
    /// Whether VXLAN is checked (a cluster is declared).
    pub enforced: bool,
    /// The data-path port checked.
    pub port: Option<u16>,
    /// The VTEPs VXLAN is accepted from.
    pub vteps: Vec<Ipv4Addr>,
    /// Map entries written and removed by the last apply.
    pub written: usize,
    pub removed: usize,
    /// The interface the guard's data-path program runs on besides the underlay, and
    /// its XDP mode.
    pub data_path_interface: Option<String>,
    pub data_path_xdp_mode: Option<String>,
    /// Why the last apply or attach failed.
    pub error: Option<String>,
    pub elapsed_ms: f64,
}

impl super::runner::Report for GuardStatus {
    fn failures(&self) -> usize {
        usize::from(self.error.is_some())
    }
    fn refused(&self) -> bool {
        false
    }
}

/// This node's fixed part in the guard.
#[derive(Clone, Debug)]
pub struct GuardNode {
    /// The underlay interface (its own XDP program holds the guard).
    pub underlay: String,
    /// The agent's VXLAN port, unless the declared state names the swarm's.
    pub vxlan_port: u16,
}

/// The guard reconciler.
pub struct GuardReconciler<K: GuardKernel> {
    kernel: K,
    node: GuardNode,
    /// What the maps hold.
    applied: GuardPlan,
    /// The interface the data-path program is attached to, and its mode.
    data_path: Option<(String, String)>,
    /// The interface an attach failed on, when, and why.
    failed_attach: Option<(String, Instant, String)>,
    error: Option<String>,
    /// Whether leftover data-path links of an earlier agent were looked for.
    swept: bool,
}

impl<K: GuardKernel> GuardReconciler<K> {
    /// Adopts what the maps hold.
    pub fn new(mut kernel: K, node: GuardNode) -> Result<Self, String> {
        let applied = kernel
            .read_plan()
            .map_err(|e| format!("reading back the data path guard's maps: {e}"))?;
        info!(
            enforced = applied.port.is_some(),
            vteps = applied.vteps.len(),
            "data path guard maps adopted"
        );
        Ok(Self {
            kernel,
            node,
            applied,
            data_path: None,
            failed_attach: None,
            error: None,
            swept: false,
        })
    }

    pub fn applied(&self) -> &GuardPlan {
        &self.applied
    }

    /// The plan for `d`: the cluster's VTEPs on the swarm's port, or off.
    fn plan(&self, d: &DeclaredNode) -> Result<GuardPlan, String> {
        match &d.cluster_vteps {
            Some(vteps) => GuardPlan::enforce(
                d.data_path_port.unwrap_or(self.node.vxlan_port),
                vteps.clone(),
            )
            .map_err(|e| e.to_string()),
            None => Ok(GuardPlan::default()),
        }
    }

    /// The interface besides the underlay that the data-path program must run on.
    fn wanted_interface(&mut self, d: &DeclaredNode) -> Result<Option<String>, String> {
        let Some(addr) = d.data_path_addr else {
            return Ok(None);
        };
        match self.kernel.interface_of(addr) {
            Some(i) if i == self.node.underlay => Ok(None),
            Some(i) => Ok(Some(i)),
            None => Err(format!(
                "no interface of this host holds the data-path address {addr}"
            )),
        }
    }

    /// Attaches or detaches the data-path program as `want` says; true if that changed
    /// anything or failed.
    fn follow_data_path(&mut self, want: Option<String>) -> bool {
        let current = self.data_path.as_ref().map(|(i, _)| i.clone());
        if want == current && self.swept {
            return false;
        }
        self.swept = true;
        let Some(interface) = want else {
            let left = self.kernel.detach_data_path();
            let changed = self.data_path.take().is_some() || !left.is_empty();
            self.failed_attach = None;
            return changed;
        };
        if let Some((i, at, _)) = &self.failed_attach {
            if *i == interface && at.elapsed() < RETRY_EVERY {
                return false;
            }
        }
        match self.kernel.attach_data_path(&interface) {
            Ok(mode) => {
                info!(
                    interface,
                    mode, "data path guard runs on the data-path interface"
                );
                self.data_path = Some((interface, mode));
                self.failed_attach = None;
            }
            Err(e) => {
                warn!(interface, error = %e, "attaching the data path guard to the data-path interface");
                self.data_path = None;
                self.failed_attach = Some((interface, Instant::now(), e));
            }
        }
        true
    }

    fn status(&self, report: ApplyReport, started: Instant) -> GuardStatus {
        GuardStatus {
            enforced: self.applied.port.is_some(),
            port: self.applied.port,
            vteps: self.applied.vteps.iter().copied().collect(),
            written: report.written,
            removed: report.removed,
            data_path_interface: self.data_path.as_ref().map(|(i, _)| i.clone()),
            data_path_xdp_mode: self.data_path.as_ref().map(|(_, m)| m.clone()),
            error: self
                .error
                .clone()
                .or_else(|| self.failed_attach.as_ref().map(|(_, _, e)| e.clone())),
            elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
        }
    }
}

impl<K: GuardKernel + 'static> Reconcile for GuardReconciler<K> {
    type Status = GuardStatus;

    fn reconcile(
        &mut self,
        declared: Option<&DeclaredNode>,
        _present: &[PresentNetwork],
        cue: Cue,
    ) -> Option<GuardStatus> {
        // Nothing declared yet: what a previous agent left stays in force.
        let d = declared?;
        let started = Instant::now();
        let mut report = ApplyReport::default();
        let error_before = self.error.take();
        let mut changed = cue == Cue::Start;
        match self.plan(d) {
            Ok(next) if next != self.applied => match self.kernel.apply(&self.applied, &next) {
                Ok(r) => {
                    info!(
                        enforced = next.port.is_some(),
                        port = next.port,
                        vteps = next.vteps.len(),
                        written = r.written,
                        removed = r.removed,
                        "data path guard applied"
                    );
                    report = r;
                    self.applied = next;
                    changed = true;
                }
                Err(e) => {
                    warn!(error = %e, "applying the data path guard's maps");
                    self.error = Some(format!("applying the maps: {e}"));
                    // What an interrupted apply left is unknown: read it back.
                    if let Ok(now) = self.kernel.read_plan() {
                        self.applied = now;
                    }
                }
            },
            Ok(_) => {}
            Err(e) => self.error = Some(e),
        }
        let attach_error_before = self.failed_attach.as_ref().map(|(_, _, e)| e.clone());
        match self.wanted_interface(d) {
            Ok(want) => changed |= self.follow_data_path(want),
            Err(e) => self.error = Some(e),
        }
        let attach_error = self.failed_attach.as_ref().map(|(_, _, e)| e.clone());
        changed |= self.error != error_before || attach_error != attach_error_before;
        changed.then(|| self.status(report, started))
    }

    fn period(&self) -> Duration {
        RETRY_EVERY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct FakeKernel {
        maps: GuardPlan,
        applies: usize,
        interfaces: Vec<(Ipv4Addr, String)>,
        attached: Option<String>,
        attach_fails: bool,
        attempts: usize,
    }

    impl GuardKernel for FakeKernel {
        fn read_plan(&mut self) -> Result<GuardPlan, String> {
            Ok(self.maps.clone())
        }
        fn apply(&mut self, _old: &GuardPlan, new: &GuardPlan) -> Result<ApplyReport, String> {
            self.applies += 1;
            self.maps = new.clone();
            Ok(ApplyReport {
                written: new.vteps.len(),
                removed: 0,
            })
        }
        fn interface_of(&mut self, addr: Ipv4Addr) -> Option<String> {
            self.interfaces
                .iter()
                .find(|(a, _)| *a == addr)
                .map(|(_, i)| i.clone())
        }
        fn attach_data_path(&mut self, interface: &str) -> Result<String, String> {
            self.attempts += 1;
            if self.attach_fails {
                return Err("no XDP here".into());
            }
            self.attached = Some(interface.to_owned());
            Ok("native".into())
        }
        fn detach_data_path(&mut self) -> Vec<String> {
            self.attached.take().into_iter().collect()
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn node() -> GuardNode {
        GuardNode {
            underlay: "eth0".into(),
            vxlan_port: 4789,
        }
    }

    fn cluster(vteps: &[&str]) -> DeclaredNode {
        DeclaredNode {
            cluster_vteps: Some(vteps.iter().map(|v| ip(v)).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn the_cluster_vteps_are_enforced_and_follow_joins_and_removals() {
        let mut r = GuardReconciler::new(FakeKernel::default(), node()).unwrap();
        assert!(
            r.reconcile(None, &[], Cue::Start).is_none(),
            "nothing declared: nothing changes"
        );
        let s = r
            .reconcile(
                Some(&cluster(&["192.168.77.11", "192.168.77.12"])),
                &[],
                Cue::Declared,
            )
            .unwrap();
        assert!(s.enforced);
        assert_eq!(s.port, Some(4789));
        assert_eq!(s.vteps, vec![ip("192.168.77.11"), ip("192.168.77.12")]);

        // A node joins, then another is removed.
        let three = cluster(&["192.168.77.11", "192.168.77.12", "192.168.77.13"]);
        r.reconcile(Some(&three), &[], Cue::Declared).unwrap();
        assert_eq!(r.kernel.maps.vteps.len(), 3);
        let two = cluster(&["192.168.77.11", "192.168.77.13"]);
        r.reconcile(Some(&two), &[], Cue::Declared).unwrap();
        assert_eq!(
            r.kernel.maps.vteps,
            [ip("192.168.77.11"), ip("192.168.77.13")]
                .into_iter()
                .collect()
        );

        // The same state again: no write, no status.
        let applies = r.kernel.applies;
        assert!(r.reconcile(Some(&two), &[], Cue::Timer).is_none());
        assert_eq!(r.kernel.applies, applies);
    }

    #[test]
    fn the_swarm_port_replaces_the_agents_and_the_standalone_mode_turns_it_off() {
        let mut r = GuardReconciler::new(FakeKernel::default(), node()).unwrap();
        let mut d = cluster(&["192.168.77.11"]);
        d.data_path_port = Some(4790);
        r.reconcile(Some(&d), &[], Cue::Declared).unwrap();
        assert_eq!(r.kernel.maps.port, Some(4790));

        let standalone = DeclaredNode::default();
        let s = r.reconcile(Some(&standalone), &[], Cue::Declared).unwrap();
        assert!(!s.enforced);
        assert_eq!(r.kernel.maps, GuardPlan::default());
    }

    #[test]
    fn a_separate_data_path_interface_gets_the_guard_and_loses_it_when_the_path_moves_back() {
        let kernel = FakeKernel {
            interfaces: vec![
                (ip("192.168.77.11"), "eth0".into()),
                (ip("192.168.78.11"), "eth1".into()),
            ],
            ..Default::default()
        };
        let mut r = GuardReconciler::new(kernel, node()).unwrap();
        let mut d = cluster(&["192.168.78.11"]);
        d.data_path_addr = Some(ip("192.168.78.11"));
        let s = r.reconcile(Some(&d), &[], Cue::Declared).unwrap();
        assert_eq!(s.data_path_interface.as_deref(), Some("eth1"));
        assert_eq!(r.kernel.attached.as_deref(), Some("eth1"));

        // On the underlay: no second program.
        d.data_path_addr = Some(ip("192.168.77.11"));
        let s = r.reconcile(Some(&d), &[], Cue::Declared).unwrap();
        assert_eq!(s.data_path_interface, None);
        assert_eq!(r.kernel.attached, None);

        // An address no interface holds is reported, and nothing is attached.
        d.data_path_addr = Some(ip("10.9.9.9"));
        let s = r.reconcile(Some(&d), &[], Cue::Declared).unwrap();
        assert!(s.error.unwrap().contains("10.9.9.9"));
    }

    #[test]
    fn a_failed_attach_is_retried_later_not_on_every_wake_up() {
        let kernel = FakeKernel {
            interfaces: vec![(ip("192.168.78.11"), "eth1".into())],
            attach_fails: true,
            ..Default::default()
        };
        let mut r = GuardReconciler::new(kernel, node()).unwrap();
        let mut d = cluster(&["192.168.78.11"]);
        d.data_path_addr = Some(ip("192.168.78.11"));
        let s = r.reconcile(Some(&d), &[], Cue::Declared).unwrap();
        assert_eq!(s.error.as_deref(), Some("no XDP here"));
        r.reconcile(Some(&d), &[], Cue::Timer);
        assert_eq!(r.kernel.attempts, 1, "not retried before {RETRY_EVERY:?}");
    }
}
