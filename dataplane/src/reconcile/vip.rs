//! Service VIPs as the agent runs them: the declared LB state, checked against the
//! overlay state, becomes a [`VipTable`] (VIPs, their healthy backends, which container
//! namespaces may use which VIPs, the published ports the node's own sockets reach),
//! written to the socket programs' maps through [`VipKernel`] (only the difference:
//! [`crate::lb::vip_table::plan`]), and each VIP becomes an address on `lo` of its
//! network's namespace on this node. Every 10 s everything is checked again (a
//! network's namespace re-made by the overlay loses its VIP addresses).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io,
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
        state::{BackendState, LbState},
        vip::{self, VipProgram},
        vip_addr::{self, AddrChanges},
        vip_table::VipTable,
    },
    overlay::state::OverlayState,
};

/// How often everything is recomputed and the VIP addresses re-checked.
pub const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// How long a service may keep its previous backends while its new ones are not yet
/// reachable here ([`hold_previous`]); past it the declared state is applied as it is.
pub const HOLD_AT_MOST: Duration = Duration::from_secs(5);
/// How often a held state is looked at again (the overlay's apply also wakes it).
const HOLD_RECHECK: Duration = Duration::from_millis(100);

/// What the VIP reconciler changes in the kernel.
pub trait VipKernel {
    /// Makes the maps hold `table`; returns the map writes and deletes it took.
    fn apply(&mut self, table: &VipTable) -> Result<usize, String>;
    /// Makes the VIP addresses on `lo` of the namespace at `netns` exactly `addrs`.
    fn sync_addresses(
        &mut self,
        netns: &Path,
        addrs: &BTreeSet<Ipv4Addr>,
    ) -> io::Result<AddrChanges>;
    /// The cookie of the network namespace at `netns` (what the programs key on).
    fn netns_cookie(&mut self, netns: &Path) -> io::Result<u64>;
    /// The cookie of the node's own namespace.
    fn own_cookie(&mut self) -> io::Result<u64>;
    /// The node's addresses (published ports answer on them).
    fn node_addresses(&mut self) -> Vec<Ipv4Addr>;
}

/// The real kernel: the pinned socket programs and netlink.
impl VipKernel for VipProgram {
    fn apply(&mut self, table: &VipTable) -> Result<usize, String> {
        VipProgram::apply(self, table).map_err(|e| e.to_string())
    }
    fn sync_addresses(
        &mut self,
        netns: &Path,
        addrs: &BTreeSet<Ipv4Addr>,
    ) -> io::Result<AddrChanges> {
        vip_addr::sync_addresses(netns, addrs)
    }
    fn netns_cookie(&mut self, netns: &Path) -> io::Result<u64> {
        vip::netns_cookie(netns)
    }
    fn own_cookie(&mut self) -> io::Result<u64> {
        vip::current_netns_cookie()
    }
    fn node_addresses(&mut self) -> Vec<Ipv4Addr> {
        iface::node_addresses().unwrap_or_default()
    }
}

/// What `vip.json` holds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct VipStatus {
    pub vips: usize,
    pub healthy_backends: usize,
    /// (node address or 127.0.0.1, published port) pairs the node's own sockets reach.
    pub node_ports: usize,
    pub scopes: usize,
    /// Map writes and deletes of the last apply.
    pub map_writes: usize,
    /// Namespaces whose VIP addresses could not be set, or the maps, with why.
    pub failed: Vec<String>,
    /// Why the latest declared state was refused (the last good one stays applied).
    pub refused: Option<String>,
    pub elapsed_ms: f64,
}

impl super::runner::Report for VipStatus {
    fn failures(&self) -> usize {
        self.failed.len()
    }
    fn refused(&self) -> bool {
        self.refused.is_some()
    }
}

/// The VIP reconciler.
pub struct VipReconciler<K: VipKernel> {
    kernel: K,
    intake: Intake<(LbState, OverlayState)>,
    /// Namespace identity -> cookie, so a namespace is entered once.
    cookies: HashMap<u64, u64>,
    /// The last LB state taken, to log a change once.
    logged: Option<LbState>,
    /// Where the containers the maps scope are told; None: nowhere.
    ready: Option<ReadinessSender>,
    /// The backends last written to the maps (after [`reachable_only`] and
    /// [`hold_previous`]).
    last_applied: Option<LbState>,
    /// Since when some service keeps previous backends ([`hold_previous`]).
    holding: Option<Instant>,
    /// [`HOLD_AT_MOST`], shorter in tests.
    hold_at_most: Duration,
}

impl<K: VipKernel> VipReconciler<K> {
    pub fn new(kernel: K) -> Self {
        Self {
            kernel,
            intake: Intake::default(),
            cookies: HashMap::new(),
            logged: None,
            ready: None,
            last_applied: None,
            holding: None,
            hold_at_most: HOLD_AT_MOST,
        }
    }

    /// Tells `ready` which containers' namespaces the maps scope after each apply (the
    /// executor starts a task's process once its namespace is).
    pub fn with_readiness(mut self, ready: ReadinessSender) -> Self {
        self.ready = Some(ready);
        self
    }

    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// The cookie of every declared container that runs, by container name.
    fn container_cookies(&mut self, declared: &DeclaredNode) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        let mut live = BTreeSet::new();
        for (name, netns) in &declared.containers {
            live.insert(netns.id);
            let cookie = match self.cookies.get(&netns.id) {
                Some(k) => *k,
                None => match self.kernel.netns_cookie(&netns.path) {
                    Ok(k) => {
                        self.cookies.insert(netns.id, k);
                        k
                    }
                    Err(e) => {
                        warn!(container = %name, error = %e, "reading a container's namespace cookie");
                        continue;
                    }
                },
            };
            out.insert(name.clone(), cookie);
        }
        self.cookies.retain(|id, _| live.contains(id));
        out
    }
}

/// The table `lb` and `overlay` declare, for containers with these cookies, on a node
/// with these addresses and its own namespace's cookie.
pub fn desired_table(
    lb: &LbState,
    overlay: &OverlayState,
    cookies: &HashMap<String, u64>,
    own_cookie: Option<u64>,
    node_addrs: &[Ipv4Addr],
) -> VipTable {
    let mut table = VipTable::from_declared(lb, overlay, cookies);
    // Published ports from the node itself (its own namespace's sockets) and from its
    // containers.
    if let Some(own) = own_cookie {
        table.add_node_ports(lb, own, node_addrs);
    }
    table.add_container_node_ports(lb, overlay, cookies, node_addrs);
    table
}

/// `lb` with every healthy backend this node cannot reach yet made draining (no new
/// connection from here, none cut): one whose address on a network present here is not
/// among that network's endpoints in the kernel. The overlay and the VIP maps are
/// applied by two threads; a backend the maps offered before the overlay had its
/// neighbour and forwarding entries would take connections whose packets are lost (a
/// task that just started elsewhere, found by a connect() here a moment too early).
/// The overlay's next apply changes the present networks, and the VIPs follow.
pub fn reachable_only(lb: &LbState, present: &[PresentNetwork]) -> LbState {
    let mut out = lb.clone();
    for service in &mut out.services {
        for b in &mut service.backends {
            if b.state != BackendState::Healthy {
                continue;
            }
            if !reachable(b, present) {
                b.state = BackendState::Draining;
            }
        }
    }
    out
}

/// Keeps, in `reach` (the declared `lb` after [`reachable_only`]), the backends a service
/// had healthy in `last` (what the maps held) when the declared state would leave it no
/// healthy backend here only because its new ones are not reachable from this node yet;
/// returns the names of the services held.
///
/// Without it, the one moment of an update where a service's only healthy task is a new
/// one on another node (the old one just told to drain, the overlay here not yet holding
/// the new task's entries) would refuse every connect from this node to the VIP. Holding
/// is safe because the node does not acknowledge the declared version while it holds: the
/// task told to drain is not stopped until every node has applied that version (see
/// [`super::ready::Readiness::applied_version`]), and the overlay's next apply releases
/// the hold.
pub fn hold_previous(
    lb: &LbState,
    reach: &mut LbState,
    last: &LbState,
    present: &[PresentNetwork],
) -> Vec<String> {
    let mut held = Vec::new();
    for service in &mut reach.services {
        let healthy = |s: &crate::lb::state::Service| {
            s.backends.iter().any(|b| b.state == BackendState::Healthy)
        };
        if healthy(service) {
            continue;
        }
        let declared_healthy = lb
            .services
            .iter()
            .find(|s| s.id == service.id)
            .is_some_and(healthy);
        let Some(before) = last.services.iter().find(|s| s.id == service.id) else {
            continue;
        };
        if !declared_healthy {
            continue;
        }
        let mut kept = false;
        for b in &mut service.backends {
            let was_healthy = before
                .backends
                .iter()
                .any(|o| o.task == b.task && o.state == BackendState::Healthy);
            if was_healthy && b.state == BackendState::Draining && reachable(b, present) {
                b.state = BackendState::Healthy;
                kept = true;
            }
        }
        if kept {
            held.push(service.name.clone());
        }
    }
    held
}

/// Makes healthy again, in `reach`, the declared healthy backends of a service left with
/// none there that [`hold_previous`] could not hold (the ones it had are gone from the
/// declared state, not told to drain); returns the names of those services.
///
/// A service's backends on a node withdrawn by gossip leave the declared state in the
/// same version that brings another node's back; the overlay and the VIP maps apply it on
/// two threads, and the maps, applied first, found the newcomer unreachable and nothing
/// to hold: the VIP had no backend for the 20 ms until the overlay's apply, and a connect
/// was refused (`leader_kill`, one in 1,500 by-name requests). A connect to a backend a
/// moment from reachable is answered once its entries are there (its SYN is sent
/// again); one to a VIP with no backend is refused at once. Offering is bounded and
/// unacknowledged as a hold is.
pub fn offer_unreachable(lb: &LbState, reach: &mut LbState) -> Vec<String> {
    let mut offered = Vec::new();
    for service in &mut reach.services {
        if service
            .backends
            .iter()
            .any(|b| b.state == BackendState::Healthy)
        {
            continue;
        }
        let Some(declared) = lb.services.iter().find(|s| s.id == service.id) else {
            continue;
        };
        let mut any = false;
        for b in &mut service.backends {
            let declared_healthy = declared
                .backends
                .iter()
                .any(|d| d.task == b.task && d.state == BackendState::Healthy);
            if b.state == BackendState::Draining && declared_healthy {
                b.state = BackendState::Healthy;
                any = true;
            }
        }
        if any {
            offered.push(service.name.clone());
        }
    }
    offered
}

/// Whether every address of `b` on a network present here is among that network's
/// endpoints in the kernel (a network not present here constrains nothing).
fn reachable(b: &crate::lb::state::Backend, present: &[PresentNetwork]) -> bool {
    !b.addresses.iter().any(|(network, ip)| {
        present
            .iter()
            .find(|p| &p.id == network)
            .is_some_and(|p| !p.endpoints.contains(ip))
    })
}

/// The containers of `overlay` whose namespace cookie is in `cookies` (so the table
/// just written scopes them), with their namespace identity.
fn scoped_containers(
    declared: &DeclaredNode,
    overlay: &OverlayState,
    cookies: &HashMap<String, u64>,
) -> BTreeMap<String, u64> {
    overlay
        .local_endpoints
        .iter()
        .filter(|e| cookies.contains_key(&e.container))
        .filter_map(|e| {
            Some((
                e.container.clone(),
                declared.containers.get(&e.container)?.id,
            ))
        })
        .collect()
}

impl<K: VipKernel + 'static> Reconcile for VipReconciler<K> {
    type Status = VipStatus;

    fn reconcile(
        &mut self,
        declared: Option<&DeclaredNode>,
        present: &[PresentNetwork],
        _cue: Cue,
    ) -> Option<VipStatus> {
        let declared = declared?;
        let lb = declared.lb.as_ref()?;
        let started = Instant::now();
        let checked = lb
            .validate(&declared.overlay)
            .map(|()| (lb.clone(), declared.overlay.clone()))
            .map_err(|e| format!("declared load-balancing state refused: {e}"));
        self.intake.offer(checked);
        let mut status = VipStatus {
            refused: self.intake.refused().map(str::to_owned),
            ..Default::default()
        };
        let Some((lb, overlay)) = self.intake.current().cloned() else {
            return Some(status);
        };
        if self.logged.as_ref() != Some(&lb) {
            info!(
                services = lb.services.len(),
                "declared load-balancing state taken"
            );
            self.logged = Some(lb.clone());
        }
        let cookies = self.container_cookies(declared);
        let own = match self.kernel.own_cookie() {
            Ok(k) => Some(k),
            Err(e) => {
                warn!(error = %e, "reading the node's namespace cookie");
                None
            }
        };
        let node_addrs = self.kernel.node_addresses();
        let mut reach = reachable_only(&lb, present);
        let mut held = match &self.last_applied {
            Some(last) => hold_previous(&lb, &mut reach, last, present),
            None => Vec::new(),
        };
        held.extend(offer_unreachable(&lb, &mut reach));
        let held = if held.is_empty() {
            self.holding = None;
            false
        } else {
            // Bounded per spell of holding, not per version: a stream of new versions
            // cannot keep a stale backend forever.
            let since = *self.holding.get_or_insert_with(|| {
                info!(services = ?held, "new backends not reachable here yet: previous ones kept, or else the new ones offered");
                Instant::now()
            });
            if since.elapsed() < self.hold_at_most {
                true
            } else {
                warn!(services = ?held, after = ?self.hold_at_most, "new backends still not reachable here: declared state applied as it is");
                reach = reachable_only(&lb, present);
                false
            }
        };
        let table = desired_table(&reach, &overlay, &cookies, own, &node_addrs);
        match self.kernel.apply(&table) {
            Ok(n) => {
                if n > 0 {
                    info!(
                        map_writes = n,
                        vips = table.vips.len(),
                        scopes = table.scopes.len(),
                        "service VIPs applied"
                    );
                }
                status.map_writes = n;
                self.last_applied = Some(reach);
                if let Some(tx) = &self.ready {
                    let scoped = scoped_containers(declared, &overlay, &cookies);
                    // A held state is not the declared one: not acknowledged yet.
                    let taken = status.refused.is_none() && !held;
                    ready::publish(tx, |r| {
                        r.vip_scoped = scoped;
                        if taken {
                            r.vip_version = declared.version;
                        }
                    });
                }
            }
            Err(e) => {
                warn!(error = %e, "writing the VIP maps");
                status.failed.push(format!("maps: {e}"));
            }
        }
        let addresses: Vec<(PathBuf, BTreeSet<Ipv4Addr>)> = present
            .iter()
            .map(|n| (n.netns_path.clone(), vip::vip_addresses(&table, n.vni)))
            .collect();
        for (netns, addrs) in &addresses {
            match self.kernel.sync_addresses(netns, addrs) {
                Ok(c) if !c.added.is_empty() || !c.removed.is_empty() => {
                    info!(netns = %netns.display(), added = ?c.added, removed = ?c.removed, "VIP addresses")
                }
                Ok(_) => {}
                Err(e) => status.failed.push(format!("{}: {e}", netns.display())),
            }
        }
        // Published ports' frontends (network 0) are counted as node ports, not VIPs.
        let vips: Vec<_> = (table.vips.iter())
            .filter(|(_, spec)| spec.network != 0)
            .map(|(vip, _)| *vip)
            .collect();
        status.vips = vips.len();
        status.healthy_backends = vips.iter().map(|v| table.healthy(*v).len()).sum();
        status.node_ports = table.nodeports.len();
        status.scopes = table.scopes.len();
        status.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        Some(status)
    }

    fn period(&self) -> Duration {
        if self
            .holding
            .is_some_and(|since| since.elapsed() < self.hold_at_most)
        {
            HOLD_RECHECK
        } else {
            RESYNC_EVERY
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        lb::state::{Backend, BackendState, Balance, EndpointMode, Service, Vip},
        overlay::{
            plan::ContainerNetns,
            state::{LocalEndpoint, Network},
        },
    };

    /// Records what it is asked to hold.
    #[derive(Default)]
    struct FakeKernel {
        table: Option<VipTable>,
        applies: usize,
        addresses: HashMap<PathBuf, BTreeSet<Ipv4Addr>>,
        cookie_reads: usize,
    }

    impl VipKernel for FakeKernel {
        fn apply(&mut self, table: &VipTable) -> Result<usize, String> {
            self.applies += 1;
            self.table = Some(table.clone());
            Ok(1)
        }
        fn sync_addresses(
            &mut self,
            netns: &Path,
            addrs: &BTreeSet<Ipv4Addr>,
        ) -> io::Result<AddrChanges> {
            self.addresses.insert(netns.to_owned(), addrs.clone());
            Ok(AddrChanges::default())
        }
        fn netns_cookie(&mut self, netns: &Path) -> io::Result<u64> {
            self.cookie_reads += 1;
            Ok(netns.as_os_str().len() as u64)
        }
        fn own_cookie(&mut self) -> io::Result<u64> {
            Ok(1)
        }
        fn node_addresses(&mut self) -> Vec<Ipv4Addr> {
            vec!["192.168.77.11".parse().unwrap()]
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn declared(backends: &[(&str, &str, BackendState)]) -> DeclaredNode {
        let mut d = DeclaredNode::default();
        d.overlay.networks.push(Network {
            id: "web".into(),
            vni: 4097,
            subnet: "10.0.9.0/24".parse().unwrap(),
            gateway: ip("10.0.9.1"),
            mtu: None,
            encrypted: false,
        });
        d.overlay.local_endpoints.push(LocalEndpoint {
            network: "web".into(),
            container: "c1".into(),
            ip: ip("10.0.9.11"),
            mac: None,
        });
        d.containers.insert(
            "c1".into(),
            ContainerNetns {
                path: "/proc/10/ns/net".into(),
                id: 10,
            },
        );
        d.lb = Some(LbState {
            ingress_network: None,
            services: vec![Service {
                id: "s1".into(),
                name: "web".into(),
                endpoint_mode: EndpointMode::Vip,
                balance: Balance::default(),
                vips: vec![Vip {
                    network: "web".into(),
                    address: ip("10.0.9.100"),
                }],
                ports: Vec::new(),
                backends: backends
                    .iter()
                    .map(|(task, addr, state)| Backend {
                        task: (*task).into(),
                        node: ip("192.168.77.12"),
                        addresses: [("web".to_string(), ip(addr))].into(),
                        state: *state,
                    })
                    .collect(),
            }],
        });
        d
    }

    fn present() -> Vec<PresentNetwork> {
        vec![PresentNetwork {
            id: "web".into(),
            vni: 4097,
            gateway: ip("10.0.9.1"),
            netns_path: "/run/x/vni-4097".into(),
            endpoints: ["10.0.9.11", "10.0.9.21", "10.0.9.22"]
                .into_iter()
                .map(ip)
                .collect(),
        }]
    }

    #[test]
    fn a_backend_the_overlay_has_not_reached_yet_gets_no_new_connection() {
        let mut r = VipReconciler::new(FakeKernel::default());
        let d = declared(&[
            ("t1", "10.0.9.21", BackendState::Healthy),
            ("t3", "10.0.9.23", BackendState::Healthy),
        ]);
        let s = r.reconcile(Some(&d), &present(), Cue::Declared).unwrap();
        assert_eq!(s.healthy_backends, 1, "t3 has no overlay entry here yet");
        let table = r.kernel().table.clone().unwrap();
        assert_eq!(table.healthy(ip("10.0.9.100")), [ip("10.0.9.21")]);
        // The overlay's apply brings it: the VIPs follow the present networks.
        let mut now = present();
        now[0].endpoints.insert(ip("10.0.9.23"));
        let s = r.reconcile(Some(&d), &now, Cue::Present).unwrap();
        assert_eq!(s.healthy_backends, 2);
    }

    #[test]
    fn healthy_backends_scopes_and_vip_addresses_follow_the_declared_state() {
        let (ready_tx, ready) = ready::channel();
        let mut r = VipReconciler::new(FakeKernel::default()).with_readiness(ready_tx);
        assert!(r.reconcile(None, &[], Cue::Start).is_none());
        let mut d = declared(&[
            ("t1", "10.0.9.21", BackendState::Healthy),
            ("t2", "10.0.9.22", BackendState::Draining),
        ]);
        d.version = 6;
        let s = r.reconcile(Some(&d), &present(), Cue::Declared).unwrap();
        assert_eq!((s.vips, s.healthy_backends, s.scopes), (1, 1, 1));
        assert_eq!(
            ready.borrow().vip_scoped,
            BTreeMap::from([("c1".to_owned(), 10)]),
            "the executor learns c1's namespace is scoped"
        );
        assert_eq!(ready.borrow().vip_version, 6);
        let table = r.kernel().table.clone().unwrap();
        assert_eq!(table.healthy(ip("10.0.9.100")), [ip("10.0.9.21")]);
        assert!(
            table.scopes.contains(&(15, 4097)),
            "c1's cookie may use web's VIPs"
        );
        assert_eq!(
            r.kernel().addresses[Path::new("/run/x/vni-4097")],
            BTreeSet::from([ip("10.0.9.100")])
        );

        // A second pass reads no cookie again.
        r.reconcile(Some(&d), &present(), Cue::Timer).unwrap();
        assert_eq!(r.kernel().cookie_reads, 1);
    }

    #[test]
    fn a_bad_state_is_refused_whole_and_the_last_good_one_stays() {
        let mut r = VipReconciler::new(FakeKernel::default());
        let good = declared(&[("t1", "10.0.9.21", BackendState::Healthy)]);
        r.reconcile(Some(&good), &present(), Cue::Declared).unwrap();
        let mut bad = declared(&[("t2", "10.0.9.22", BackendState::Healthy)]);
        bad.lb.as_mut().unwrap().services[0].vips[0].network = "nowhere".into();
        let s = r.reconcile(Some(&bad), &present(), Cue::Declared).unwrap();
        assert!(s.refused.as_deref().unwrap().contains("refused"), "{s:?}");
        let table = r.kernel().table.clone().unwrap();
        assert_eq!(table.healthy(ip("10.0.9.100")), [ip("10.0.9.21")]);
    }

    #[test]
    fn no_load_balancing_declared_leaves_the_maps_alone() {
        let mut r = VipReconciler::new(FakeKernel::default());
        let mut d = declared(&[]);
        d.lb = None;
        assert!(r.reconcile(Some(&d), &present(), Cue::Declared).is_none());
        assert_eq!(r.kernel().applies, 0);
    }

    #[test]
    fn the_last_healthy_backend_stays_until_its_successor_is_reachable_here() {
        let (ready_tx, ready) = ready::channel();
        let mut r = VipReconciler::new(FakeKernel::default()).with_readiness(ready_tx);
        let mut d = declared(&[("t1", "10.0.9.21", BackendState::Healthy)]);
        d.version = 6;
        r.reconcile(Some(&d), &present(), Cue::Declared).unwrap();
        // An update: t1 told to drain, its successor t3 healthy on a node whose entries
        // the overlay here does not hold yet.
        let mut d = declared(&[
            ("t1", "10.0.9.21", BackendState::Draining),
            ("t3", "10.0.9.23", BackendState::Healthy),
        ]);
        d.version = 7;
        r.reconcile(Some(&d), &present(), Cue::Declared).unwrap();
        let table = r.kernel().table.clone().unwrap();
        assert_eq!(
            table.healthy(ip("10.0.9.100")),
            [ip("10.0.9.21")],
            "connects keep a backend"
        );
        assert_eq!(
            ready.borrow().vip_version,
            6,
            "version 7 is not acknowledged while held"
        );
        assert_eq!(r.period(), HOLD_RECHECK);
        // The overlay's apply brings t3: the declared state is applied and acknowledged.
        let mut now = present();
        now[0].endpoints.insert(ip("10.0.9.23"));
        r.reconcile(Some(&d), &now, Cue::Present).unwrap();
        let table = r.kernel().table.clone().unwrap();
        assert_eq!(table.healthy(ip("10.0.9.100")), [ip("10.0.9.23")]);
        assert_eq!(ready.borrow().vip_version, 7);
        assert_eq!(r.period(), RESYNC_EVERY);
    }

    #[test]
    fn a_service_whose_old_backends_left_is_offered_its_new_ones_before_they_are_reachable() {
        let (ready_tx, ready) = ready::channel();
        let mut r = VipReconciler::new(FakeKernel::default()).with_readiness(ready_tx);
        let mut d = declared(&[("t1", "10.0.9.21", BackendState::Healthy)]);
        d.version = 6;
        r.reconcile(Some(&d), &present(), Cue::Declared).unwrap();
        // t1's node withdrawn (gossip), t3's back, in one version: t1 is gone from the
        // declared state, not draining, and the overlay here does not hold t3 yet.
        let mut d = declared(&[("t3", "10.0.9.23", BackendState::Healthy)]);
        d.version = 7;
        r.reconcile(Some(&d), &present(), Cue::Declared).unwrap();
        let table = r.kernel().table.clone().unwrap();
        assert_eq!(
            table.healthy(ip("10.0.9.100")),
            [ip("10.0.9.23")],
            "a VIP with a backend a moment away, not none"
        );
        assert_eq!(
            ready.borrow().vip_version,
            6,
            "not acknowledged while offered"
        );
        // The overlay's apply brings t3: acknowledged.
        let mut now = present();
        now[0].endpoints.insert(ip("10.0.9.23"));
        r.reconcile(Some(&d), &now, Cue::Present).unwrap();
        assert_eq!(
            r.kernel().table.clone().unwrap().healthy(ip("10.0.9.100")),
            [ip("10.0.9.23")]
        );
        assert_eq!(ready.borrow().vip_version, 7);
        assert_eq!(r.period(), RESYNC_EVERY);
    }

    #[test]
    fn a_hold_ends_after_its_bound_and_a_service_told_to_drain_whole_is_not_held() {
        let (ready_tx, ready) = ready::channel();
        let mut r = VipReconciler::new(FakeKernel::default()).with_readiness(ready_tx);
        r.hold_at_most = Duration::ZERO;
        let d = declared(&[("t1", "10.0.9.21", BackendState::Healthy)]);
        r.reconcile(Some(&d), &present(), Cue::Declared).unwrap();
        let mut d = declared(&[
            ("t1", "10.0.9.21", BackendState::Draining),
            ("t3", "10.0.9.23", BackendState::Healthy),
        ]);
        d.version = 7;
        r.reconcile(Some(&d), &present(), Cue::Declared).unwrap();
        let table = r.kernel().table.clone().unwrap();
        assert!(table.healthy(ip("10.0.9.100")).is_empty(), "bound passed");
        assert_eq!(ready.borrow().vip_version, 7);

        // Every backend draining as declared (a scale to 0, a service removed): nothing
        // to wait for, nothing held.
        let mut r = VipReconciler::new(FakeKernel::default());
        let d = declared(&[("t1", "10.0.9.21", BackendState::Healthy)]);
        r.reconcile(Some(&d), &present(), Cue::Declared).unwrap();
        let d = declared(&[("t1", "10.0.9.21", BackendState::Draining)]);
        r.reconcile(Some(&d), &present(), Cue::Declared).unwrap();
        let table = r.kernel().table.clone().unwrap();
        assert!(table.healthy(ip("10.0.9.100")).is_empty());
        assert_eq!(r.period(), RESYNC_EVERY);
    }
}
