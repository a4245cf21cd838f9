//! Task egress as the agent runs it ([`crate::egress`]): the gateway bridge and its NAT
//! are made when the reconciler starts (before the DNS listener on the bridge's
//! address, which tasks with no network use), and every running task container of the
//! declared state gets its veth into the bridge. Every 30 s the bridge, the NAT chain
//! and the veths are read again to repair drift; attachments that failed are tried
//! again every 2 s.
//!
//! The task's default route is then egress's, so a reply leaves through its first
//! network (the ingress network, for a task behind a published port: the routing
//! mesh's reply path) only by policy routing. Replies from the task's address there
//! find it by their source (`overlay/kernel/attach.rs`); but a UDP server whose socket
//! is bound to no address has its source picked from the route, which is egress's. So
//! for every published UDP port of a task on the ingress network, UDP from the target
//! port goes to the first network's table too (rules this reconciler keeps).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use serde::Serialize;
use tracing::{info, warn};

use super::{
    ready::{self, ReadinessSender},
    runner::{Cue, Reconcile},
    DeclaredNode, PresentNetwork,
};
use crate::{
    egress::{
        kernel::{AttachError, EgressKernel, SysctlChange},
        nat,
        plan::{self, Attached},
        EgressParams, BRIDGE,
    },
    lb::state::Protocol,
    overlay::plan::ContainerNetns,
};

/// How often the bridge, the NAT and the veths are read again.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// How soon failed attachments are tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);

/// What `egress.json` holds.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct EgressStatus {
    pub bridge: String,
    pub subnet: String,
    pub gateway: Option<Ipv4Addr>,
    /// `table ip shoal`, chain `egress`.
    pub nat_chain: String,
    /// Address of each attached task container, by container name.
    pub attached: BTreeMap<String, Ipv4Addr>,
    /// Task containers that get no egress, with why.
    pub skipped: BTreeMap<String, String>,
    /// UDP ports whose traffic goes back through the container's first network (its
    /// published UDP ports' targets), by container name.
    pub udp_reply_ports: BTreeMap<String, BTreeSet<u16>>,
    pub failed: Vec<String>,
    /// Kernel settings this agent changed (what they were), for a cleanup to restore.
    pub sysctls_changed: Vec<SysctlChange>,
    pub applied_ops: usize,
    pub elapsed_ms: f64,
}

impl super::runner::Report for EgressStatus {
    fn failures(&self) -> usize {
        self.failed.len()
    }
    fn refused(&self) -> bool {
        false
    }
}

/// The egress reconciler.
pub struct EgressReconciler<K: EgressKernel> {
    kernel: K,
    params: EgressParams,
    attached: Attached,
    /// The UDP reply rules made in each attached task's namespace, by veth.
    udp_replies: BTreeMap<String, BTreeSet<u16>>,
    cursor: Ipv4Addr,
    sysctls: Vec<SysctlChange>,
    last_resync: Instant,
    /// Failures of the last pass (a retry is due soon).
    failing: bool,
    reported: Option<EgressStatus>,
    /// Where the attached containers are told; None: nowhere.
    ready: Option<ReadinessSender>,
}

impl<K: EgressKernel> EgressReconciler<K> {
    /// Makes the bridge and the NAT, and adopts the veths a previous agent made.
    pub fn new(mut kernel: K, params: EgressParams) -> Result<Self, String> {
        let sysctls = kernel
            .ensure_bridge(&params)
            .map_err(|e| format!("the egress bridge {BRIDGE}: {e}"))?;
        for c in &sysctls {
            info!(key = %c.key, was = %c.was, now = %c.now, "sysctl changed for task egress");
        }
        kernel.ensure_nat(&params)?;
        let attached = kernel
            .snapshot()
            .map_err(|e| format!("reading the egress veths: {e}"))?;
        let cursor = attached
            .values()
            .map(|a| a.ip)
            .filter(|ip| params.subnet.contains(ip))
            .max()
            .unwrap_or(params.gateway);
        info!(bridge = BRIDGE, subnet = %params.subnet, gateway = %params.gateway, adopted = attached.len(), "task egress ready");
        Ok(Self {
            kernel,
            params,
            attached,
            udp_replies: BTreeMap::new(),
            cursor,
            sysctls,
            last_resync: Instant::now(),
            failing: false,
            reported: None,
            ready: None,
        })
    }

    /// Tells `ready` which containers are attached after each pass (a task's process
    /// starts once its default route is there).
    pub fn with_readiness(mut self, ready: ReadinessSender) -> Self {
        self.ready = Some(ready);
        self
    }

    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// Reads the kernel again and repairs the bridge and the NAT.
    fn resync(&mut self, failed: &mut Vec<String>) {
        self.last_resync = Instant::now();
        match self.kernel.ensure_bridge(&self.params) {
            Ok(changed) => {
                for c in changed {
                    warn!(key = %c.key, was = %c.was, now = %c.now, "a sysctl task egress needs was changed back; set it again");
                    if !self.sysctls.iter().any(|s| s.key == c.key) {
                        self.sysctls.push(c);
                    }
                }
            }
            Err(e) => failed.push(format!("bridge: {e}")),
        }
        if let Err(e) = self.kernel.ensure_nat(&self.params) {
            failed.push(format!("nat: {e}"));
        }
        match self.kernel.snapshot() {
            Ok(a) => self.attached = a,
            Err(e) => failed.push(format!("reading the veths: {e}")),
        }
        // Checked again in every namespace.
        self.udp_replies.clear();
    }

    /// Makes each attached task's UDP reply rules match `wanted_ports`.
    fn sync_udp_replies(
        &mut self,
        wanted: &BTreeMap<String, ContainerNetns>,
        wanted_ports: &BTreeMap<String, BTreeSet<u16>>,
        failed: &mut Vec<String>,
    ) -> usize {
        let attached = &self.attached;
        self.udp_replies
            .retain(|veth, _| attached.contains_key(veth));
        let mut ops = 0;
        for (veth, a) in &self.attached {
            let ports = wanted_ports.get(&a.container).cloned().unwrap_or_default();
            if self.udp_replies.get(veth) == Some(&ports) {
                continue;
            }
            let Some(ns) = wanted.get(&a.container).filter(|ns| ns.id == a.netns_id) else {
                continue;
            };
            ops += 1;
            match self.kernel.sync_udp_reply_ports(&ns.path, ns.id, &ports) {
                Ok(()) => {
                    if !ports.is_empty() {
                        info!(container = %a.container, ?ports, "UDP replies go back through the first network");
                    }
                    self.udp_replies.insert(veth.clone(), ports);
                }
                Err(AttachError::ContainerGone) => {}
                Err(AttachError::Failed(e)) => {
                    warn!(container = %a.container, error = %e, "UDP reply rules; trying again");
                    failed.push(e);
                }
            }
        }
        ops
    }

    /// The target ports of the published UDP ports of each local task whose first
    /// network is the ingress network (the mesh's replies leave through it), by
    /// container name.
    fn udp_reply_ports(declared: &DeclaredNode) -> BTreeMap<String, BTreeSet<u16>> {
        let mut out: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
        let Some(lb) = &declared.lb else {
            return out;
        };
        let Some(ingress) = &lb.ingress_network else {
            return out;
        };
        // Each container's first endpoint (the network whose table the rules name).
        let mut first: BTreeMap<&str, &crate::overlay::state::LocalEndpoint> = BTreeMap::new();
        for e in &declared.overlay.local_endpoints {
            first.entry(e.container.as_str()).or_insert(e);
        }
        let on_ingress: BTreeMap<Ipv4Addr, &str> = (first.iter())
            .filter(|(_, e)| &e.network == ingress)
            .map(|(c, e)| (e.ip, *c))
            .collect();
        for s in &lb.services {
            let udp: BTreeSet<u16> = (s.ports.iter())
                .filter(|p| p.protocol == Protocol::Udp)
                .map(|p| p.target)
                .collect();
            if udp.is_empty() {
                continue;
            }
            for b in &s.backends {
                let container = b.addresses.get(ingress).and_then(|ip| on_ingress.get(ip));
                if let Some(c) = container {
                    out.entry((*c).to_owned()).or_default().extend(&udp);
                }
            }
        }
        out
    }

    /// The running task containers of `declared`.
    fn wanted(declared: &DeclaredNode) -> BTreeMap<String, ContainerNetns> {
        declared
            .task_containers
            .iter()
            .filter_map(|c| Some((c.clone(), declared.containers.get(c)?.clone())))
            .collect()
    }
}

impl<K: EgressKernel + 'static> Reconcile for EgressReconciler<K> {
    type Status = EgressStatus;

    fn reconcile(
        &mut self,
        declared: Option<&DeclaredNode>,
        _present: &[PresentNetwork],
        cue: Cue,
    ) -> Option<EgressStatus> {
        let started = Instant::now();
        let mut failed = Vec::new();
        if cue == Cue::Timer && self.last_resync.elapsed() >= RESYNC_EVERY {
            self.resync(&mut failed);
        }
        let mut ops = 0;
        let mut skipped = BTreeMap::new();
        let mut udp_reply_ports = BTreeMap::new();
        if let Some(declared) = declared {
            let wanted = Self::wanted(declared);
            let plan = plan::plan(&self.params, &self.attached, &wanted, &mut self.cursor);
            skipped = plan.skipped;
            for veth in plan.detach {
                ops += 1;
                match self.kernel.detach(&veth) {
                    Ok(()) => {
                        if let Some(a) = self.attached.remove(&veth) {
                            info!(container = %a.container, ip = %a.ip, veth, "egress detached");
                        }
                    }
                    Err(e) => failed.push(e),
                }
            }
            for n in plan.attach {
                ops += 1;
                match self
                    .kernel
                    .attach(&self.params, &n.veth, &n.attachment, &n.netns_path)
                {
                    Ok(()) => {
                        info!(container = %n.attachment.container, ip = %n.attachment.ip, veth = %n.veth, "egress attached");
                        // A namespace just attached holds no rule of ours.
                        self.udp_replies.insert(n.veth.clone(), BTreeSet::new());
                        self.attached.insert(n.veth, n.attachment);
                    }
                    // It stopped: the next state without it (or with its new
                    // namespace) settles it.
                    Err(AttachError::ContainerGone) => {}
                    Err(AttachError::Failed(e)) => {
                        warn!(error = %e, "attaching a task to egress; trying again");
                        failed.push(e);
                    }
                }
            }
            let ports = Self::udp_reply_ports(declared);
            ops += self.sync_udp_replies(&wanted, &ports, &mut failed);
            udp_reply_ports = ports;
        }
        self.failing = !failed.is_empty();
        if let Some(tx) = &self.ready {
            let attached = (self.attached.values())
                .map(|a| (a.container.clone(), a.netns_id))
                .collect();
            ready::publish(tx, |r| r.egress_attached = attached);
        }
        let status = EgressStatus {
            bridge: BRIDGE.into(),
            subnet: self.params.subnet.to_string(),
            gateway: Some(self.params.gateway),
            nat_chain: format!("table ip {} chain {}", nat::TABLE, nat::CHAIN),
            attached: (self.attached.values())
                .map(|a| (a.container.clone(), a.ip))
                .collect(),
            skipped,
            udp_reply_ports,
            failed,
            sysctls_changed: self.sysctls.clone(),
            applied_ops: ops,
            elapsed_ms: 0.0,
        };
        // What the node holds, without what this pass did: compared with the last.
        let held = EgressStatus {
            applied_ops: 0,
            ..status.clone()
        };
        let news = cue == Cue::Start || ops > 0 || self.reported.as_ref() != Some(&held);
        self.reported = Some(held);
        news.then(|| EgressStatus {
            elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
            ..status
        })
    }

    fn period(&self) -> Duration {
        if self.failing {
            RETRY_EVERY
        } else {
            RESYNC_EVERY
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::egress::plan::Attachment;

    /// Records what it is asked to hold.
    #[derive(Default)]
    struct FakeKernel {
        veths: Attached,
        bridge_made: usize,
        nat_applied: usize,
        /// Containers whose attachment fails once.
        fail_once: Vec<String>,
        gone: Vec<String>,
        /// UDP reply ports by namespace.
        udp: BTreeMap<u64, BTreeSet<u16>>,
    }

    impl EgressKernel for FakeKernel {
        fn ensure_bridge(&mut self, _: &EgressParams) -> Result<Vec<SysctlChange>, String> {
            self.bridge_made += 1;
            Ok(if self.bridge_made == 1 {
                vec![SysctlChange {
                    key: "net.ipv4.ip_forward".into(),
                    was: "0".into(),
                    now: "1".into(),
                }]
            } else {
                Vec::new()
            })
        }
        fn ensure_nat(&mut self, _: &EgressParams) -> Result<(), String> {
            self.nat_applied += 1;
            Ok(())
        }
        fn snapshot(&mut self) -> Result<Attached, String> {
            Ok(self.veths.clone())
        }
        fn attach(
            &mut self,
            _: &EgressParams,
            veth: &str,
            a: &Attachment,
            _: &Path,
        ) -> Result<(), AttachError> {
            if self.gone.contains(&a.container) {
                return Err(AttachError::ContainerGone);
            }
            if let Some(i) = self.fail_once.iter().position(|c| *c == a.container) {
                self.fail_once.remove(i);
                return Err(AttachError::Failed("busy".into()));
            }
            self.veths.insert(veth.into(), a.clone());
            Ok(())
        }
        fn detach(&mut self, veth: &str) -> Result<(), String> {
            self.veths.remove(veth);
            Ok(())
        }
        fn sync_udp_reply_ports(
            &mut self,
            _: &Path,
            netns_id: u64,
            ports: &BTreeSet<u16>,
        ) -> Result<(), AttachError> {
            self.udp.insert(netns_id, ports.clone());
            Ok(())
        }
    }

    fn params() -> EgressParams {
        EgressParams::new("172.18.0.0/16".parse().unwrap(), 1500).unwrap()
    }

    fn declared(tasks: &[(&str, u64)]) -> DeclaredNode {
        let mut d = DeclaredNode::default();
        for (name, ns) in tasks {
            d.task_containers.insert((*name).into());
            if *ns != 0 {
                d.containers.insert(
                    (*name).into(),
                    ContainerNetns {
                        path: format!("/proc/{ns}/ns/net").into(),
                        id: *ns,
                    },
                );
            }
        }
        d
    }

    #[test]
    fn running_tasks_are_attached_and_stopped_ones_detached() {
        let (ready_tx, ready) = ready::channel();
        let mut r = EgressReconciler::new(FakeKernel::default(), params())
            .unwrap()
            .with_readiness(ready_tx);
        let s = r.reconcile(None, &[], Cue::Start).unwrap();
        assert_eq!(s.sysctls_changed.len(), 1);
        assert!(s.attached.is_empty());

        // "b" is declared but does not run yet.
        let s = r
            .reconcile(Some(&declared(&[("a", 7), ("b", 0)])), &[], Cue::Declared)
            .unwrap();
        assert_eq!(
            s.attached,
            BTreeMap::from([("a".to_string(), Ipv4Addr::new(172, 18, 0, 2))])
        );
        assert_eq!(r.kernel().veths["shgw7"].container, "a");
        assert_eq!(
            ready.borrow().egress_attached,
            BTreeMap::from([("a".to_string(), 7)]),
            "the executor learns which namespace has its default route"
        );
        // Nothing new: nothing to report.
        assert!(r
            .reconcile(Some(&declared(&[("a", 7), ("b", 0)])), &[], Cue::Declared)
            .is_none());

        let s = r
            .reconcile(Some(&declared(&[("b", 9)])), &[], Cue::Declared)
            .unwrap();
        assert_eq!(
            s.attached,
            BTreeMap::from([("b".to_string(), Ipv4Addr::new(172, 18, 0, 3))])
        );
        assert!(!r.kernel().veths.contains_key("shgw7"));
        assert_eq!(
            ready.borrow().egress_attached,
            BTreeMap::from([("b".to_string(), 9)])
        );
    }

    #[test]
    fn published_udp_targets_of_tasks_first_on_ingress_get_reply_rules() {
        use crate::{
            lb::state::{Backend, BackendState, LbState, PublishMode, PublishedPort, Service},
            overlay::state::LocalEndpoint,
        };
        let ip = |s: &str| -> Ipv4Addr { s.parse().unwrap() };
        let mut d = declared(&[("a", 7), ("b", 8), ("c", 9)]);
        for (container, network, addr) in [
            ("a", "ingress", "10.255.0.5"),
            ("a", "web", "10.0.9.5"),
            // b is on ingress, but not first: its first network's table is web's.
            ("b", "web", "10.0.9.6"),
            ("b", "ingress", "10.255.0.6"),
            ("c", "web", "10.0.9.7"),
        ] {
            d.overlay.local_endpoints.push(LocalEndpoint {
                network: network.into(),
                container: container.into(),
                ip: ip(addr),
                mac: None,
            });
        }
        let port = |protocol, target| PublishedPort {
            protocol,
            published: 5353,
            target,
            mode: PublishMode::Ingress,
            balance: None,
        };
        let backend = |addr: &str| Backend {
            task: addr.into(),
            node: ip("192.168.77.11"),
            addresses: [("ingress".to_string(), ip(addr))].into(),
            state: BackendState::Healthy,
        };
        d.lb = Some(LbState {
            ingress_network: Some("ingress".into()),
            services: vec![Service {
                id: "s".into(),
                name: "dns".into(),
                endpoint_mode: Default::default(),
                balance: Default::default(),
                vips: Vec::new(),
                ports: vec![port(Protocol::Udp, 53), port(Protocol::Tcp, 80)],
                backends: vec![backend("10.255.0.5"), backend("10.255.0.6")],
            }],
        });
        let mut r = EgressReconciler::new(FakeKernel::default(), params()).unwrap();
        let s = r.reconcile(Some(&d), &[], Cue::Declared).unwrap();
        assert_eq!(
            s.udp_reply_ports,
            BTreeMap::from([("a".to_string(), BTreeSet::from([53]))])
        );
        assert_eq!(r.kernel().udp.get(&7), Some(&BTreeSet::from([53])));
        assert_eq!(
            r.kernel().udp.get(&8),
            None,
            "b's rules were never asked for"
        );

        // The port is no longer published: a's rule goes.
        d.lb.as_mut().unwrap().services[0].ports.clear();
        let s = r.reconcile(Some(&d), &[], Cue::Declared).unwrap();
        assert!(s.udp_reply_ports.is_empty());
        assert_eq!(r.kernel().udp.get(&7), Some(&BTreeSet::new()));
    }

    #[test]
    fn a_failed_attachment_is_retried_soon_and_a_new_agent_adopts_the_veths() {
        let kernel = FakeKernel {
            fail_once: vec!["a".into()],
            gone: vec!["c".into()],
            ..Default::default()
        };
        let mut r = EgressReconciler::new(kernel, params()).unwrap();
        let d = declared(&[("a", 7), ("c", 8)]);
        let s = r.reconcile(Some(&d), &[], Cue::Declared).unwrap();
        assert_eq!(s.failed.len(), 1, "{s:?}");
        assert_eq!(r.period(), RETRY_EVERY);
        let s = r.reconcile(Some(&d), &[], Cue::Timer).unwrap();
        assert!(s.failed.is_empty(), "{s:?}");
        assert_eq!(s.attached.len(), 1);
        assert_eq!(r.period(), RESYNC_EVERY);
        let a_ip = s.attached["a"];

        // The next agent finds the veth and keeps its address.
        let veths = r.kernel().veths.clone();
        let mut next = EgressReconciler::new(
            FakeKernel {
                veths,
                ..Default::default()
            },
            params(),
        )
        .unwrap();
        let s = next
            .reconcile(Some(&declared(&[("a", 7), ("d", 10)])), &[], Cue::Declared)
            .unwrap();
        assert_eq!(s.attached["a"], a_ip);
        // After the highest address in use: those just freed are not given first.
        assert_eq!(
            s.attached["d"],
            Ipv4Addr::from(u32::from(a_ip) + 1),
            "{s:?}"
        );
        // d attached, and a's UDP reply rules checked in its namespace (once).
        assert_eq!(s.applied_ops, 2);
        assert!(next
            .reconcile(Some(&declared(&[("a", 7), ("d", 10)])), &[], Cue::Declared)
            .is_none());
    }
}
