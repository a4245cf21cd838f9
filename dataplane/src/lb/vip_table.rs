//! What the VIP maps should hold ([`VipTable`], from declared state), what they hold
//! ([`VipRecord`]), and the map writes that take one to the other ([`plan`]): pure, so
//! the rules (only affected entries change; no moment where a lookup finds a hole) are
//! unit-tested without a kernel.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use super::state::{BackendState, EndpointMode, LbState, Protocol, PublishMode};
use crate::overlay::state::OverlayState;

/// The desired content of the VIP maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipTable {
    pub vips: BTreeMap<Ipv4Addr, VipSpec>,
    /// (namespace cookie, VNI): the namespace may use VIPs of the network.
    pub scopes: BTreeSet<(u64, u32)>,
    /// Published ports reached from the node itself: [`NodePort`] -> (the port's
    /// frontend in [`Self::vips`], target port).
    pub nodeports: BTreeMap<NodePort, (Ipv4Addr, u16)>,
}

/// A published port as a socket on the node names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodePort {
    /// Namespace cookie of the sockets (the node's own namespace).
    pub netns: u64,
    /// A node address, or 127.0.0.1.
    pub addr: Ipv4Addr,
    pub port: u16,
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
}

/// The frontend of a published port in the VIP maps: `0.<protocol>.<port>`, an address
/// no socket can name as a destination.
pub fn nodeport_frontend(protocol: u8, published: u16) -> Ipv4Addr {
    let [hi, lo] = published.to_be_bytes();
    Ipv4Addr::new(0, protocol, hi, lo)
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipSpec {
    /// VNI of the VIP's network.
    pub network: u32,
    /// Every declared backend: its address on the VIP's network and its state.
    pub backends: BTreeMap<Ipv4Addr, BackendState>,
}

impl VipTable {
    /// The table for a validated load-balancing state: every VIP of every service in vip
    /// mode with its backends' addresses on the VIP's network, and every (container
    /// namespace, network) attachment of `overlay` whose container's namespace cookie is
    /// in `cookies` (containers not running are left out).
    pub fn from_declared(
        lb: &LbState,
        overlay: &OverlayState,
        cookies: &HashMap<String, u64>,
    ) -> Self {
        let mut table = Self::default();
        for s in &lb.services {
            if s.endpoint_mode != EndpointMode::Vip {
                continue;
            }
            for v in &s.vips {
                let Some(net) = overlay.network(&v.network) else {
                    continue;
                };
                let mut backends = BTreeMap::new();
                for b in &s.backends {
                    if let Some(addr) = b.addresses.get(&v.network) {
                        // Two tasks with one address (should not happen): the healthier
                        // state wins.
                        let e = backends.entry(*addr).or_insert(b.state);
                        if rank(b.state) < rank(*e) {
                            *e = b.state;
                        }
                    }
                }
                table.vips.insert(
                    v.address,
                    VipSpec {
                        network: net.vni,
                        backends,
                    },
                );
            }
        }
        for e in &overlay.local_endpoints {
            if let (Some(cookie), Some(net)) =
                (cookies.get(&e.container), overlay.network(&e.network))
            {
                table.scopes.insert((*cookie, net.vni));
            }
        }
        table
    }

    /// Adds the published ports of `lb` as reached from the namespace `netns` (the
    /// node's own) on each of `node_addrs` and on 127.0.0.1: each port's frontend holds
    /// its backends' addresses on the ingress network (in host mode, only those on this
    /// node, that is whose node is one of `node_addrs`), balanced like a VIP.
    pub fn add_node_ports(&mut self, lb: &LbState, netns: u64, node_addrs: &[Ipv4Addr]) {
        let Some(ingress) = lb.ingress_network.as_deref() else {
            return;
        };
        let mut addrs: BTreeSet<Ipv4Addr> = node_addrs.iter().copied().collect();
        addrs.insert(Ipv4Addr::LOCALHOST);
        for s in &lb.services {
            for p in &s.ports {
                let protocol = match p.protocol {
                    Protocol::Tcp => 6,
                    Protocol::Udp => 17,
                };
                let frontend = nodeport_frontend(protocol, p.published);
                let mut backends = BTreeMap::new();
                for b in &s.backends {
                    if p.mode == PublishMode::Host && !node_addrs.contains(&b.node) {
                        continue;
                    }
                    if let Some(addr) = b.addresses.get(ingress) {
                        let e = backends.entry(*addr).or_insert(b.state);
                        if rank(b.state) < rank(*e) {
                            *e = b.state;
                        }
                    }
                }
                self.vips.insert(
                    frontend,
                    VipSpec {
                        network: 0,
                        backends,
                    },
                );
                for &addr in &addrs {
                    let key = NodePort {
                        netns,
                        addr,
                        port: p.published,
                        protocol,
                    };
                    self.nodeports.insert(key, (frontend, p.target));
                }
            }
        }
    }

    /// Adds the published ports (ingress mode) of services in VIP mode as reached from
    /// containers on the node, `cookies` naming their namespaces: a container's socket
    /// naming one of `node_addrs` and the published port goes to the service's VIP on a
    /// network the container is attached to (the first such VIP), that is to a healthy
    /// backend's address on that network, which the container reaches over its own
    /// network. Call after [`Self::from_declared`] (the VIPs must be in the table).
    /// Host-mode ports are left out: a VIP holds backends of every node.
    pub fn add_container_node_ports(
        &mut self,
        lb: &LbState,
        overlay: &OverlayState,
        cookies: &HashMap<String, u64>,
        node_addrs: &[Ipv4Addr],
    ) {
        for e in &overlay.local_endpoints {
            let Some(&netns) = cookies.get(&e.container) else {
                continue;
            };
            for s in &lb.services {
                if s.endpoint_mode != EndpointMode::Vip {
                    continue;
                }
                let Some(vip) = (s.vips.iter())
                    .find(|v| v.network == e.network && self.vips.contains_key(&v.address))
                else {
                    continue;
                };
                for p in s.ports.iter().filter(|p| p.mode == PublishMode::Ingress) {
                    let protocol = match p.protocol {
                        Protocol::Tcp => 6,
                        Protocol::Udp => 17,
                    };
                    for &addr in node_addrs {
                        let key = NodePort {
                            netns,
                            addr,
                            port: p.published,
                            protocol,
                        };
                        self.nodeports.entry(key).or_insert((vip.address, p.target));
                    }
                }
            }
        }
    }

    /// Healthy backends of a VIP, in address order.
    pub fn healthy(&self, vip: Ipv4Addr) -> Vec<Ipv4Addr> {
        self.vips
            .get(&vip)
            .map(|v| healthy(&v.backends).collect())
            .unwrap_or_default()
    }
}

fn rank(s: BackendState) -> u8 {
    match s {
        BackendState::Healthy => 0,
        BackendState::Draining => 1,
        BackendState::Unhealthy => 2,
    }
}

fn healthy(backends: &BTreeMap<Ipv4Addr, BackendState>) -> impl Iterator<Item = Ipv4Addr> + '_ {
    backends
        .iter()
        .filter(|(_, s)| **s == BackendState::Healthy)
        .map(|(a, _)| *a)
}

/// What the maps hold, per VIP in slot order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipRecord {
    pub vips: BTreeMap<Ipv4Addr, AppliedVip>,
    pub scopes: BTreeSet<(u64, u32)>,
    /// Backend states of VIPs that have no VIP entry (left by an interrupted apply).
    pub stray_states: BTreeMap<(Ipv4Addr, Ipv4Addr), BackendState>,
    /// Backend slots beyond their VIP's count, or of no VIP.
    pub stray_slots: BTreeSet<(Ipv4Addr, u32)>,
    /// Published ports reached from the node itself, as [`VipTable::nodeports`].
    pub nodeports: BTreeMap<NodePort, (Ipv4Addr, u16)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedVip {
    pub network: u32,
    /// The VIP entry's backend count (what the programs pick among).
    pub count: u32,
    /// Slots `0..` as they hold addresses (normally `count` of them).
    pub slots: Vec<Ipv4Addr>,
    pub states: BTreeMap<Ipv4Addr, BackendState>,
}

/// One map write or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutState {
        vip: Ipv4Addr,
        addr: Ipv4Addr,
        state: BackendState,
    },
    DelState {
        vip: Ipv4Addr,
        addr: Ipv4Addr,
    },
    PutSlot {
        vip: Ipv4Addr,
        slot: u32,
        addr: Ipv4Addr,
    },
    DelSlot {
        vip: Ipv4Addr,
        slot: u32,
    },
    PutVip {
        vip: Ipv4Addr,
        network: u32,
        count: u32,
    },
    DelVip {
        vip: Ipv4Addr,
    },
    PutScope {
        netns: u64,
        network: u32,
    },
    DelScope {
        netns: u64,
        network: u32,
    },
}

/// The map changes that take `applied` to `desired`, in an order that never lets a
/// program find a count pointing past the filled slots, and the record afterwards.
///
/// Per VIP, healthy backends keep their slots; a backend that stops being healthy is
/// replaced by the last slot's backend (one slot written), new ones are appended, then
/// the count is written (the moment the change takes effect), then slots past the new
/// count are deleted. States are written before the slots change and deleted after.
pub fn plan(applied: &VipRecord, desired: &VipTable) -> (Vec<MapOp>, VipRecord) {
    let mut ops = Vec::new();
    let mut next = VipRecord {
        scopes: desired.scopes.clone(),
        ..VipRecord::default()
    };
    for &(netns, network) in desired.scopes.difference(&applied.scopes) {
        ops.push(MapOp::PutScope { netns, network });
    }
    for (&vip, want) in &desired.vips {
        let empty = AppliedVip::default();
        let have = applied.vips.get(&vip);
        let old = have.unwrap_or(&empty);
        for (&addr, &state) in &want.backends {
            if old.states.get(&addr) != Some(&state) {
                ops.push(MapOp::PutState { vip, addr, state });
            }
        }
        let wanted: BTreeSet<Ipv4Addr> = healthy(&want.backends).collect();
        // The usable slots: at most `count` of them.
        let mut slots: Vec<Ipv4Addr> = old.slots.iter().take(old.count as usize).copied().collect();
        let mut seen = BTreeSet::new();
        let mut i = 0;
        while i < slots.len() {
            if wanted.contains(&slots[i]) && seen.insert(slots[i]) {
                i += 1;
            } else {
                slots.swap_remove(i);
            }
        }
        for addr in &wanted {
            if !seen.contains(addr) {
                slots.push(*addr);
            }
        }
        for (slot, addr) in slots.iter().enumerate() {
            if old.slots.get(slot) != Some(addr) {
                ops.push(MapOp::PutSlot {
                    vip,
                    slot: slot as u32,
                    addr: *addr,
                });
            }
        }
        let count = slots.len() as u32;
        if have.is_none_or(|h| h.count != count || h.network != want.network) {
            ops.push(MapOp::PutVip {
                vip,
                network: want.network,
                count,
            });
        }
        for slot in slots.len()..old.slots.len() {
            ops.push(MapOp::DelSlot {
                vip,
                slot: slot as u32,
            });
        }
        for addr in old.states.keys() {
            if !want.backends.contains_key(addr) {
                ops.push(MapOp::DelState { vip, addr: *addr });
            }
        }
        next.vips.insert(
            vip,
            AppliedVip {
                network: want.network,
                count,
                slots,
                states: want.backends.clone(),
            },
        );
    }
    for (&vip, old) in &applied.vips {
        if desired.vips.contains_key(&vip) {
            continue;
        }
        ops.push(MapOp::DelVip { vip });
        for slot in 0..old.slots.len() {
            ops.push(MapOp::DelSlot {
                vip,
                slot: slot as u32,
            });
        }
        for addr in old.states.keys() {
            ops.push(MapOp::DelState { vip, addr: *addr });
        }
    }
    for &(vip, slot) in &applied.stray_slots {
        let reused = next
            .vips
            .get(&vip)
            .is_some_and(|v| (slot as usize) < v.slots.len());
        if !reused {
            ops.push(MapOp::DelSlot { vip, slot });
        }
    }
    for &(vip, addr) in applied.stray_states.keys() {
        let reused = next
            .vips
            .get(&vip)
            .is_some_and(|v| v.states.contains_key(&addr));
        if !reused {
            ops.push(MapOp::DelState { vip, addr });
        }
    }
    for &(netns, network) in applied.scopes.difference(&desired.scopes) {
        ops.push(MapOp::DelScope { netns, network });
    }
    (ops, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn table(backends: &[(&str, BackendState)]) -> VipTable {
        let mut t = VipTable::default();
        t.vips.insert(
            ip("10.0.1.2"),
            VipSpec {
                network: 4097,
                backends: backends.iter().map(|(a, s)| (ip(a), *s)).collect(),
            },
        );
        t.scopes.insert((7, 4097));
        t
    }

    use BackendState::{Draining, Healthy, Unhealthy};

    const FOUR: [(&str, BackendState); 4] = [
        ("10.0.1.3", Healthy),
        ("10.0.1.4", Healthy),
        ("10.0.1.5", Healthy),
        ("10.0.1.6", Healthy),
    ];

    /// Applies ops to a model of the maps, checking after every op that each slot
    /// below the count is filled with a healthy backend of the old or new state.
    fn check_apply(applied: &VipRecord, desired: &VipTable) -> (usize, VipRecord) {
        let (ops, next) = plan(applied, desired);
        let vip = ip("10.0.1.2");
        let mut slots: BTreeMap<u32, Ipv4Addr> = applied
            .vips
            .get(&vip)
            .map(|v| {
                v.slots
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (i as u32, *a))
                    .collect()
            })
            .unwrap_or_default();
        let mut count = applied.vips.get(&vip).map(|v| v.count);
        let allowed: BTreeSet<Ipv4Addr> = applied
            .vips
            .get(&vip)
            .map(|v| v.slots.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(desired.healthy(vip))
            .collect();
        for op in &ops {
            match *op {
                MapOp::PutSlot { slot, addr, .. } => {
                    slots.insert(slot, addr);
                }
                MapOp::DelSlot { slot, .. } => {
                    slots.remove(&slot);
                }
                MapOp::PutVip { count: c, .. } => count = Some(c),
                MapOp::DelVip { .. } => count = None,
                _ => {}
            }
            if let Some(c) = count {
                for s in 0..c {
                    let a = slots
                        .get(&s)
                        .unwrap_or_else(|| panic!("hole at {s} after {op:?}"));
                    assert!(allowed.contains(a), "{a} in slot {s} after {op:?}");
                }
            }
        }
        let final_slots: Vec<Ipv4Addr> = slots.values().copied().collect();
        let want: BTreeSet<Ipv4Addr> = desired.healthy(vip).into_iter().collect();
        assert_eq!(
            final_slots.iter().copied().collect::<BTreeSet<_>>(),
            want,
            "final slots"
        );
        assert_eq!(final_slots.len(), want.len(), "no duplicates");
        (ops.len(), next)
    }

    #[test]
    fn a_new_vip_is_written_whole_and_then_nothing_changes() {
        let t = table(&FOUR);
        let (n, rec) = check_apply(&VipRecord::default(), &t);
        // scope + 4 states + 4 slots + vip
        assert_eq!(n, 10);
        let (ops, again) = plan(&rec, &t);
        assert!(ops.is_empty(), "{ops:?}");
        assert_eq!(again, rec);
    }

    #[test]
    fn one_backend_changing_touches_only_its_entries() {
        let (_, rec) = check_apply(&VipRecord::default(), &table(&FOUR));
        let mut one_down = FOUR;
        one_down[1].1 = Unhealthy;
        let (ops, _) = plan(&rec, &table(&one_down));
        // state, slot 1 := last, count, delete last slot
        assert_eq!(ops.len(), 4, "{ops:?}");
        let (_, rec2) = check_apply(&rec, &table(&one_down));
        // Draining it instead of unhealthy: only its state changes.
        let mut draining = FOUR;
        draining[1].1 = Draining;
        let (ops, _) = plan(&rec2, &table(&draining));
        assert_eq!(
            ops,
            vec![MapOp::PutState {
                vip: ip("10.0.1.2"),
                addr: ip("10.0.1.4"),
                state: Draining
            }]
        );
        // Back to healthy: state, appended slot, count.
        let (n, _) = check_apply(&rec2, &table(&FOUR));
        assert_eq!(n, 3);
    }

    #[test]
    fn removing_the_last_healthy_backend_leaves_count_zero() {
        let (_, rec) = check_apply(&VipRecord::default(), &table(&FOUR[..1]));
        let (_, rec) = check_apply(&rec, &table(&[("10.0.1.3", Unhealthy)]));
        assert_eq!(rec.vips[&ip("10.0.1.2")].count, 0);
        let (n, rec) = check_apply(&rec, &table(&FOUR));
        assert_eq!(rec.vips[&ip("10.0.1.2")].count, 4);
        assert_eq!(n, 1 + 3 + 4 + 1);
    }

    #[test]
    fn removed_vip_and_scope_are_deleted() {
        let (_, rec) = check_apply(&VipRecord::default(), &table(&FOUR));
        let (ops, next) = plan(&rec, &VipTable::default());
        assert_eq!(ops.len(), 1 + 4 + 4 + 1);
        assert_eq!(
            ops[0],
            MapOp::DelVip {
                vip: ip("10.0.1.2")
            }
        );
        assert_eq!(next, VipRecord::default());
    }

    #[test]
    fn strays_from_an_interrupted_apply_are_removed() {
        let (_, mut rec) = check_apply(&VipRecord::default(), &table(&FOUR));
        rec.stray_slots.insert((ip("10.0.1.2"), 9));
        rec.stray_states
            .insert((ip("10.9.9.9"), ip("10.9.9.10")), Healthy);
        let (ops, next) = plan(&rec, &table(&FOUR));
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(next.stray_slots.is_empty() && next.stray_states.is_empty());
    }

    #[test]
    fn table_from_declared_state_scopes_attached_containers_only() {
        let overlay: OverlayState = serde_json::from_str(
            r#"{"networks": [
                 {"id": "web", "vni": 4097, "subnet": "10.0.1.0/24", "gateway": "10.0.1.1"},
                 {"id": "db", "vni": 4098, "subnet": "10.0.2.0/24", "gateway": "10.0.2.1"}],
               "local_endpoints": [
                 {"network": "web", "container": "c1", "ip": "10.0.1.10"},
                 {"network": "db", "container": "c2", "ip": "10.0.2.10"},
                 {"network": "web", "container": "gone", "ip": "10.0.1.11"}]}"#,
        )
        .unwrap();
        let lb: LbState = serde_json::from_str(
            r#"{"services": [{"id": "s1", "name": "web",
                 "vips": [{"network": "web", "address": "10.0.1.2"}],
                 "backends": [
                   {"task": "t1", "node": "192.168.77.11", "addresses": {"web": "10.0.1.3"}},
                   {"task": "t2", "node": "192.168.77.12", "addresses": {"web": "10.0.1.4"},
                    "state": "draining"}]}]}"#,
        )
        .unwrap();
        lb.validate(&overlay).unwrap();
        let cookies = HashMap::from([("c1".to_string(), 11u64), ("c2".to_string(), 22)]);
        let t = VipTable::from_declared(&lb, &overlay, &cookies);
        assert_eq!(
            t.scopes,
            BTreeSet::from([(11, 4097), (22, 4098)]),
            "c2 is on db only; the container not running has no cookie"
        );
        assert_eq!(t.healthy(ip("10.0.1.2")), vec![ip("10.0.1.3")]);
        assert_eq!(t.vips[&ip("10.0.1.2")].network, 4097);
        assert_eq!(t.vips[&ip("10.0.1.2")].backends[&ip("10.0.1.4")], Draining);
    }

    #[test]
    fn node_ports_hold_ingress_backends_host_mode_only_local_ones() {
        let lb: LbState = serde_json::from_str(
            r#"{"ingress_network": "ingress", "services": [
                 {"id": "s1", "name": "web",
                  "ports": [{"protocol": "tcp", "published": 8080, "target": 80},
                            {"protocol": "udp", "published": 5454, "target": 9998, "mode": "host"}],
                  "backends": [
                   {"task": "t1", "node": "192.168.77.11", "addresses": {"ingress": "10.255.0.3"}},
                   {"task": "t2", "node": "192.168.77.12", "addresses": {"ingress": "10.255.0.4"},
                    "state": "unhealthy"}]}]}"#,
        )
        .unwrap();
        let mut t = VipTable::default();
        t.add_node_ports(&lb, 7, &[ip("192.168.77.12")]);
        let tcp = nodeport_frontend(6, 8080);
        assert_eq!(tcp, ip("0.6.31.144"));
        assert_eq!(
            t.vips[&tcp].backends,
            BTreeMap::from([(ip("10.255.0.3"), Healthy), (ip("10.255.0.4"), Unhealthy)])
        );
        // Host mode on 192.168.77.12: only t2, the local one.
        let udp = nodeport_frontend(17, 5454);
        assert_eq!(
            t.vips[&udp].backends,
            BTreeMap::from([(ip("10.255.0.4"), Unhealthy)])
        );
        assert_eq!(t.vips[&tcp].network, 0, "no namespace may use it as a VIP");
        let keys: Vec<_> = t
            .nodeports
            .iter()
            .map(|(k, v)| (k.addr, k.port, k.protocol, *v))
            .collect();
        assert_eq!(
            keys,
            vec![
                (ip("127.0.0.1"), 5454, 17, (udp, 9998)),
                (ip("127.0.0.1"), 8080, 6, (tcp, 80)),
                (ip("192.168.77.12"), 5454, 17, (udp, 9998)),
                (ip("192.168.77.12"), 8080, 6, (tcp, 80)),
            ]
        );
        assert!(t.nodeports.keys().all(|k| k.netns == 7));
        assert!(t.healthy(udp).is_empty());
    }

    #[test]
    fn containers_reach_node_ports_through_a_vip_on_their_network() {
        let overlay: OverlayState = serde_json::from_str(
            r#"{"networks": [
                 {"id": "ingress", "vni": 4096, "subnet": "10.255.0.0/16", "gateway": "10.255.0.1"},
                 {"id": "web", "vni": 4097, "subnet": "10.0.1.0/24", "gateway": "10.0.1.1"},
                 {"id": "db", "vni": 4098, "subnet": "10.0.2.0/24", "gateway": "10.0.2.1"}],
               "local_endpoints": [
                 {"network": "web", "container": "c1", "ip": "10.0.1.10"},
                 {"network": "db", "container": "c2", "ip": "10.0.2.10"}]}"#,
        )
        .unwrap();
        let lb: LbState = serde_json::from_str(
            r#"{"ingress_network": "ingress", "services": [
                 {"id": "s1", "name": "web",
                  "vips": [{"network": "web", "address": "10.0.1.2"}],
                  "ports": [{"protocol": "tcp", "published": 8080, "target": 80},
                            {"protocol": "udp", "published": 5454, "target": 9998, "mode": "host"}],
                  "backends": [
                   {"task": "t1", "node": "192.168.77.11",
                    "addresses": {"web": "10.0.1.3", "ingress": "10.255.0.3"}}]}]}"#,
        )
        .unwrap();
        let cookies = HashMap::from([("c1".to_string(), 11u64), ("c2".to_string(), 12)]);
        let mut t = VipTable::from_declared(&lb, &overlay, &cookies);
        t.add_container_node_ports(&lb, &overlay, &cookies, &[ip("192.168.77.11")]);
        // c1 (on web) reaches 8080 through the web VIP; c2 shares no network with the
        // service; the host-mode port is left out.
        let keys: Vec<_> = t
            .nodeports
            .iter()
            .map(|(k, v)| (k.netns, k.addr, k.port, *v))
            .collect();
        assert_eq!(
            keys,
            vec![(11, ip("192.168.77.11"), 8080, (ip("10.0.1.2"), 80))]
        );
    }
}
