//! The ingress routing mesh, userspace side: declared [`LbState`] to the contents of the
//! mesh's eBPF maps ([`MeshPlan`]), the difference between two plans applied entry by
//! entry ([`MeshMaps::apply`]), the Maglev lookup table, adoption of pinned maps, and
//! the counters.
//!
//! Identities that must survive an agent restart live in the maps themselves: a
//! frontend (one published port) keeps its index and Maglev row as long as the port is
//! published, and a restarted agent reads them back ([`MeshMaps::read_plan`]) instead of
//! renumbering, so the flows in the pinned flow table stay valid.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use aya::maps::{Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray};
use shoal_common::mesh::{
    BackendKey, BackendValue, Config, Counter, FlowKey, FlowValue, Frontend, FrontendKey,
    RevPortKey, ADDRS_MAP, BACKENDS_MAP, BALANCE_MAGLEV, BALANCE_ROUND_ROBIN, CLOSING_MAP,
    CONFIG_MAP, FLOWS_MAP, FRONTENDS_MAP, FRONTEND_BYTES, FRONTEND_COUNTERS, FRONTEND_NEW_FLOWS,
    FRONTEND_PACKETS, FRONTEND_STATS_MAP, MAGLEV_MAP, MAGLEV_SIZE, MAX_FRONTENDS, MAX_MAGLEV_ROWS,
    MAX_SLOTS, MODE_HOST, MODE_INGRESS, OPENING_MAP, PROTO_TCP, REPLY_CLOSING_MAP, REPLY_MAP,
    REPLY_OPENING_MAP, REVPORT_MAP, SLOTS_MAP, STATE_DRAINING, STATE_HEALTHY, STATE_UNHEALTHY,
    STATS_MAP,
};

use super::state::{Backend, BackendState, Balance, LbState, Protocol, PublishMode};
use crate::overlay::state::OverlayState;

/// A plain-data map key or value as the eBPF programs see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Wire<T>(pub T);
// SAFETY: only instantiated with the #[repr(C)] integer-only types of shoal_common::mesh,
// which have no padding (checked by their layout test) and accept any bit pattern.
unsafe impl<T: Copy + 'static> aya::Pod for Wire<T> {}

/// An address as the maps hold it (wire order read natively).
pub fn addr(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// An address back from the maps.
pub fn ipv4(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a.to_ne_bytes())
}

/// A port as the maps hold it.
pub fn port(p: u16) -> u16 {
    u16::from_ne_bytes(p.to_be_bytes())
}

fn proto(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => shoal_common::mesh::PROTO_TCP,
        Protocol::Udp => shoal_common::mesh::PROTO_UDP,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("more than {MAX_FRONTENDS} published ports")]
    TooManyFrontends,
    #[error("more than {MAX_MAGLEV_ROWS} published ports in Maglev mode")]
    TooManyMaglev,
    #[error("published port {port}/{protocol}: more than {MAX_SLOTS} healthy backends")]
    TooManyBackends { port: u16, protocol: Protocol },
    #[error("zeroing a port's counters in {FRONTEND_STATS_MAP}: {0}")]
    Counters(std::io::Error),
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> MeshError {
    move |source| MeshError::Map { name, source }
}

/// What the mesh's maps must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshPlan {
    pub config: Option<Wire<Config>>,
    pub addrs: BTreeSet<u32>,
    pub frontends: BTreeMap<Wire<FrontendKey>, Wire<Frontend>>,
    /// Frontend index -> backends taking new flows, in slot order.
    pub slots: BTreeMap<u32, Vec<u32>>,
    /// Maglev row -> lookup table (MAGLEV_SIZE entries).
    pub maglev: BTreeMap<u32, Vec<u32>>,
    pub backends: BTreeMap<Wire<BackendKey>, Wire<BackendValue>>,
    pub revports: BTreeMap<Wire<RevPortKey>, u32>,
}

impl PartialOrd for Wire<FrontendKey> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Wire<FrontendKey> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.protocol, self.0.port).cmp(&(other.0.protocol, other.0.port))
    }
}
impl PartialOrd for Wire<BackendKey> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Wire<BackendKey> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}
impl PartialOrd for Wire<RevPortKey> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Wire<RevPortKey> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.addr, self.0.port, self.0.protocol).cmp(&(
            other.0.addr,
            other.0.port,
            other.0.protocol,
        ))
    }
}

/// This node's part in the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeMesh {
    /// Underlay address (VTEP).
    pub vtep: Ipv4Addr,
    /// Addresses published ports answer on.
    pub addresses: Vec<Ipv4Addr>,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
    /// Ifindex of the mesh veth's end inside the ingress namespace (0: none yet).
    pub netns_veth_ifindex: u32,
    /// Ifindex of the underlay interface.
    pub underlay_ifindex: u32,
    /// Send to remote backends with a redirect rather than XDP_TX (a veth underlay).
    pub tx_redirect: bool,
}

/// Computes the map contents for `state`. `previous` keeps frontend indices and
/// Maglev rows stable: a port published before keeps what it had.
pub fn plan(
    state: &LbState,
    overlay: &OverlayState,
    node: &NodeMesh,
    previous: &MeshPlan,
) -> Result<MeshPlan, MeshError> {
    let mut out = MeshPlan::default();
    let Some(ingress) = state
        .ingress_network
        .as_deref()
        .and_then(|n| overlay.network(n))
    else {
        return Ok(out);
    };
    out.config = Some(Wire(Config {
        enabled: 1,
        vtep: addr(node.vtep),
        vni: ingress.vni,
        vxlan_port: port(node.vxlan_port),
        flags: if node.tx_redirect {
            shoal_common::mesh::FLAG_TX_REDIRECT
        } else {
            0
        },
        netns_veth_ifindex: node.netns_veth_ifindex,
        underlay_ifindex: node.underlay_ifindex,
    }));
    out.addrs = node.addresses.iter().map(|a| addr(*a)).collect();

    let old: BTreeMap<(u8, u16), Frontend> = previous
        .frontends
        .iter()
        .map(|(k, v)| ((k.0.protocol, k.0.port), v.0))
        .collect();
    let mut used_ids: BTreeSet<u32> = BTreeSet::new();
    let mut used_rows: BTreeSet<u32> = BTreeSet::new();
    // Ports kept from before reserve their index first, so new ones never take it.
    for s in &state.services {
        for p in &s.ports {
            if let Some(f) = old.get(&(proto(p.protocol), port(p.published))) {
                used_ids.insert(f.id);
                if f.balance == BALANCE_MAGLEV && p.balance.unwrap_or(s.balance) == Balance::Maglev
                {
                    used_rows.insert(f.maglev_row);
                }
            }
        }
    }
    let ingress_id = ingress.id.as_str();
    for s in &state.services {
        for p in &s.ports {
            let key = FrontendKey {
                protocol: proto(p.protocol),
                pad: 0,
                port: port(p.published),
            };
            let before = old.get(&(key.protocol, key.port));
            let id = match before {
                Some(f) => f.id,
                None => {
                    let id = (0..MAX_FRONTENDS)
                        .find(|i| !used_ids.contains(i))
                        .ok_or(MeshError::TooManyFrontends)?;
                    used_ids.insert(id);
                    id
                }
            };
            let maglev = p.balance.unwrap_or(s.balance) == Balance::Maglev;
            let maglev_row = if maglev {
                match before {
                    Some(f) if f.balance == BALANCE_MAGLEV => f.maglev_row,
                    _ => {
                        let row = (0..MAX_MAGLEV_ROWS)
                            .find(|i| !used_rows.contains(i))
                            .ok_or(MeshError::TooManyMaglev)?;
                        used_rows.insert(row);
                        row
                    }
                }
            } else {
                0
            };
            // Backends this port reaches: all in ingress mode, this node's in host mode.
            let members: Vec<&Backend> = s
                .backends
                .iter()
                .filter(|b| p.mode == PublishMode::Ingress || b.node == node.vtep)
                .filter(|b| b.addresses.contains_key(ingress_id))
                .collect();
            let mut healthy: Vec<u32> = Vec::new();
            for b in &members {
                let a = addr(b.addresses[ingress_id]);
                out.backends.insert(
                    Wire(BackendKey {
                        frontend: id,
                        addr: a,
                    }),
                    Wire(BackendValue {
                        node: addr(b.node),
                        state: match b.state {
                            BackendState::Healthy => STATE_HEALTHY,
                            BackendState::Unhealthy => STATE_UNHEALTHY,
                            BackendState::Draining => STATE_DRAINING,
                        },
                    }),
                );
                out.revports.insert(
                    Wire(RevPortKey {
                        addr: a,
                        port: port(p.target),
                        protocol: key.protocol,
                        pad: 0,
                    }),
                    u32::from(port(p.published)),
                );
                if b.state == BackendState::Healthy {
                    healthy.push(a);
                }
            }
            // Declared order, so that round-robin follows it; Maglev sorts on its own.
            if healthy.len() > MAX_SLOTS as usize {
                return Err(MeshError::TooManyBackends {
                    port: p.published,
                    protocol: p.protocol,
                });
            }
            if maglev {
                out.maglev.insert(maglev_row, maglev_table(&healthy));
            }
            out.frontends.insert(
                Wire(key),
                Wire(Frontend {
                    id,
                    target_port: port(p.target),
                    mode: match p.mode {
                        PublishMode::Ingress => MODE_INGRESS,
                        PublishMode::Host => MODE_HOST,
                    },
                    balance: if maglev {
                        BALANCE_MAGLEV
                    } else {
                        BALANCE_ROUND_ROBIN
                    },
                    count: healthy.len() as u32,
                    maglev_row,
                }),
            );
            out.slots.insert(id, healthy);
        }
    }
    Ok(out)
}

/// 64-bit FNV-1a with a seed: the same on every node and every build.
fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The Maglev lookup table (Eisenbud et al., NSDI 2016, section 3.4) of `backends`
/// (addresses as the maps hold them): each backend's preference list is a permutation
/// of the table's entries from two hashes of its address; backends take turns claiming
/// their next preferred free entry. Only the set of backends matters, not its order,
/// so every node computes the same table. Empty: all zeros (no backend).
pub fn maglev_table(backends: &[u32]) -> Vec<u32> {
    let m = MAGLEV_SIZE as u64;
    let mut table = vec![0u32; MAGLEV_SIZE as usize];
    let mut sorted: Vec<u32> = backends.to_vec();
    sorted.sort_by_key(|a| ipv4(*a));
    sorted.dedup();
    if sorted.is_empty() {
        return table;
    }
    let perm: Vec<(u64, u64)> = sorted
        .iter()
        .map(|a| {
            let b = ipv4(*a).octets();
            let offset = fnv(0, &b) % m;
            let skip = fnv(0x5bd1_e995, &b) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut filled = 0usize;
    'fill: loop {
        for (i, backend) in sorted.iter().enumerate() {
            let (offset, skip) = perm[i];
            let mut c = (offset + next[i] * skip) % m;
            while table[c as usize] != 0 {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            table[c as usize] = *backend;
            next[i] += 1;
            filled += 1;
            if filled == MAGLEV_SIZE as usize {
                break 'fill;
            }
        }
    }
    table
}

/// How many map entries an apply wrote and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub written: usize,
    pub removed: usize,
}

/// The mesh's maps, taken from the loaded underlay object or opened from their pins.
pub struct MeshMaps {
    config: Array<MapData, Wire<Config>>,
    addrs: HashMap<MapData, u32, u32>,
    frontends: HashMap<MapData, Wire<FrontendKey>, Wire<Frontend>>,
    slots: Array<MapData, u32>,
    maglev: Array<MapData, u32>,
    backends: HashMap<MapData, Wire<BackendKey>, Wire<BackendValue>>,
    revports: HashMap<MapData, Wire<RevPortKey>, u32>,
    flows: HashMap<MapData, Wire<FlowKey>, Wire<FlowValue>>,
    opening: HashMap<MapData, Wire<FlowKey>, Wire<FlowValue>>,
    closing: HashMap<MapData, Wire<FlowKey>, Wire<FlowValue>>,
    reply: HashMap<MapData, Wire<FlowKey>, u32>,
    reply_opening: HashMap<MapData, Wire<FlowKey>, u32>,
    reply_closing: HashMap<MapData, Wire<FlowKey>, u32>,
    stats: PerCpuArray<MapData, u64>,
    frontend_stats: PerCpuArray<MapData, u64>,
}

impl MeshMaps {
    /// Takes the maps out of a loaded object (the programs keep using them).
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MeshError> {
        Self::build(|name| ebpf.take_map(name).ok_or(MeshError::MissingMap(name)))
    }

    /// Opens the maps pinned under `dir` (`<pin_dir>/mesh`) by a running agent.
    pub fn open_pinned(dir: &Path) -> Result<Self, MeshError> {
        Self::build(|name| {
            let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
            Map::from_map_data(data).map_err(map_err(name))
        })
    }

    fn build(
        mut get: impl FnMut(&'static str) -> Result<Map, MeshError>,
    ) -> Result<Self, MeshError> {
        macro_rules! conv {
            ($name:expr) => {
                get($name)?.try_into().map_err(map_err($name))?
            };
        }
        Ok(Self {
            config: conv!(CONFIG_MAP),
            addrs: conv!(ADDRS_MAP),
            frontends: conv!(FRONTENDS_MAP),
            slots: conv!(SLOTS_MAP),
            maglev: conv!(MAGLEV_MAP),
            backends: conv!(BACKENDS_MAP),
            revports: conv!(REVPORT_MAP),
            flows: conv!(FLOWS_MAP),
            opening: conv!(OPENING_MAP),
            closing: conv!(CLOSING_MAP),
            reply: conv!(REPLY_MAP),
            reply_opening: conv!(REPLY_OPENING_MAP),
            reply_closing: conv!(REPLY_CLOSING_MAP),
            stats: conv!(STATS_MAP),
            frontend_stats: conv!(FRONTEND_STATS_MAP),
        })
    }

    /// Every published port's counters (this node's part), by port.
    pub fn port_counts(&self) -> Result<Vec<PortCounts>, MeshError> {
        let mut out = Vec::new();
        for kv in self.frontends.iter() {
            let (k, v) = kv.map_err(map_err(FRONTENDS_MAP))?;
            let read = |what: u32| -> Result<u64, MeshError> {
                let per_cpu = self
                    .frontend_stats
                    .get(&(v.0.id * FRONTEND_COUNTERS + what), 0)
                    .map_err(map_err(FRONTEND_STATS_MAP))?;
                Ok(per_cpu.iter().sum())
            };
            out.push(PortCounts {
                port: u16::from_be_bytes(k.0.port.to_ne_bytes()),
                protocol: if k.0.protocol == PROTO_TCP {
                    "tcp"
                } else {
                    "udp"
                },
                new_flows: read(FRONTEND_NEW_FLOWS)?,
                packets: read(FRONTEND_PACKETS)?,
                bytes: read(FRONTEND_BYTES)?,
            });
        }
        out.sort_by_key(|c| (c.port, c.protocol));
        Ok(out)
    }

    /// What the maps hold now, as a plan (adoption after a restart).
    pub fn read_plan(&self) -> Result<MeshPlan, MeshError> {
        let mut out = MeshPlan::default();
        let cfg = self.config.get(&0, 0).map_err(map_err(CONFIG_MAP))?;
        if cfg.0.enabled != 0 {
            out.config = Some(cfg);
        }
        for k in self.addrs.keys() {
            out.addrs.insert(k.map_err(map_err(ADDRS_MAP))?);
        }
        for kv in self.frontends.iter() {
            let (k, v) = kv.map_err(map_err(FRONTENDS_MAP))?;
            out.frontends.insert(k, v);
        }
        for v in out.frontends.values() {
            let f = v.0;
            let mut slots = Vec::new();
            for i in 0..f.count.min(MAX_SLOTS) {
                slots.push(
                    self.slots
                        .get(&(f.id * MAX_SLOTS + i), 0)
                        .map_err(map_err(SLOTS_MAP))?,
                );
            }
            out.slots.insert(f.id, slots);
            if f.balance == BALANCE_MAGLEV && f.maglev_row < MAX_MAGLEV_ROWS {
                let mut table = Vec::with_capacity(MAGLEV_SIZE as usize);
                for i in 0..MAGLEV_SIZE {
                    table.push(
                        self.maglev
                            .get(&(f.maglev_row * MAGLEV_SIZE + i), 0)
                            .map_err(map_err(MAGLEV_MAP))?,
                    );
                }
                out.maglev.insert(f.maglev_row, table);
            }
        }
        for kv in self.backends.iter() {
            let (k, v) = kv.map_err(map_err(BACKENDS_MAP))?;
            out.backends.insert(k, v);
        }
        for kv in self.revports.iter() {
            let (k, v) = kv.map_err(map_err(REVPORT_MAP))?;
            out.revports.insert(k, v);
        }
        Ok(out)
    }

    /// Makes the maps go from `old` (what they hold) to `new`, touching only entries
    /// that differ. Order keeps every intermediate state usable: backends exist before
    /// any slot names them, a frontend whose slot count shrinks is shrunk before its
    /// slots are rewritten, and removed backends go last.
    pub fn apply(&mut self, old: &MeshPlan, new: &MeshPlan) -> Result<ApplyReport, MeshError> {
        let mut r = ApplyReport::default();
        for (k, v) in &new.backends {
            if old.backends.get(k) != Some(v) {
                self.backends
                    .insert(k, v, 0)
                    .map_err(map_err(BACKENDS_MAP))?;
                r.written += 1;
            }
        }
        for (k, v) in &new.revports {
            if old.revports.get(k) != Some(v) {
                self.revports
                    .insert(k, v, 0)
                    .map_err(map_err(REVPORT_MAP))?;
                r.written += 1;
            }
        }
        for a in new.addrs.difference(&old.addrs) {
            self.addrs.insert(a, 1, 0).map_err(map_err(ADDRS_MAP))?;
            r.written += 1;
        }
        // A port given a frontend ID (new, or another port's before) counts from zero.
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| MeshError::Counters(e))?;
        for (k, v) in &new.frontends {
            if old.frontends.get(k).map(|o| o.0.id) != Some(v.0.id) {
                for what in [FRONTEND_NEW_FLOWS, FRONTEND_PACKETS, FRONTEND_BYTES] {
                    let zero = aya::maps::PerCpuValues::try_from(vec![0u64; nr_cpus])
                        .map_err(MeshError::Counters)?;
                    self.frontend_stats
                        .set(v.0.id * FRONTEND_COUNTERS + what, zero, 0)
                        .map_err(map_err(FRONTEND_STATS_MAP))?;
                }
            }
        }
        let old_by_id: BTreeMap<u32, Frontend> =
            old.frontends.values().map(|v| (v.0.id, v.0)).collect();
        // Shrinking frontends first.
        for (k, v) in &new.frontends {
            if let Some(o) = old_by_id.get(&v.0.id) {
                if v.0.count < o.count && old.frontends.get(k) != Some(v) {
                    self.frontends
                        .insert(k, v, 0)
                        .map_err(map_err(FRONTENDS_MAP))?;
                    r.written += 1;
                }
            }
        }
        let empty = Vec::new();
        for (id, slots) in &new.slots {
            let before = old.slots.get(id).unwrap_or(&empty);
            for (i, a) in slots.iter().enumerate() {
                if before.get(i) != Some(a) {
                    self.slots
                        .set(id * MAX_SLOTS + i as u32, a, 0)
                        .map_err(map_err(SLOTS_MAP))?;
                    r.written += 1;
                }
            }
        }
        for (row, table) in &new.maglev {
            let before = old.maglev.get(row).unwrap_or(&empty);
            for (i, a) in table.iter().enumerate() {
                if before.get(i) != Some(a) {
                    self.maglev
                        .set(row * MAGLEV_SIZE + i as u32, a, 0)
                        .map_err(map_err(MAGLEV_MAP))?;
                    r.written += 1;
                }
            }
        }
        for (k, v) in &new.frontends {
            let shrunk_already = old_by_id.get(&v.0.id).is_some_and(|o| v.0.count < o.count);
            if old.frontends.get(k) != Some(v) && !shrunk_already {
                self.frontends
                    .insert(k, v, 0)
                    .map_err(map_err(FRONTENDS_MAP))?;
                r.written += 1;
            }
        }
        if new.config != old.config {
            let cfg = new.config.unwrap_or(Wire(Config::default()));
            self.config.set(0, cfg, 0).map_err(map_err(CONFIG_MAP))?;
            r.written += 1;
        }
        // Removals.
        for k in old.frontends.keys() {
            if !new.frontends.contains_key(k) {
                remove(&mut self.frontends, k, FRONTENDS_MAP)?;
                r.removed += 1;
            }
        }
        for k in old.backends.keys() {
            if !new.backends.contains_key(k) {
                remove(&mut self.backends, k, BACKENDS_MAP)?;
                r.removed += 1;
            }
        }
        for k in old.revports.keys() {
            if !new.revports.contains_key(k) {
                remove(&mut self.revports, k, REVPORT_MAP)?;
                r.removed += 1;
            }
        }
        for a in old.addrs.difference(&new.addrs) {
            remove(&mut self.addrs, a, ADDRS_MAP)?;
            r.removed += 1;
        }
        Ok(r)
    }

    /// Entries in the live flow table now (walks it: costs one syscall per entry).
    pub fn flow_count(&self) -> usize {
        self.flows.keys().filter(|k| k.is_ok()).count()
    }

    /// Capacity of the live flow table.
    pub fn flow_capacity(&self) -> Result<u32, MeshError> {
        capacity(&self.flows, FLOWS_MAP)
    }

    /// Both flow tables' fill and the live flows evicted, from the counters `stats`
    /// (read just before: entries inserted after the read are not in the counters, so
    /// the figure errs towards none evicted).
    pub fn flow_tables(&self, stats: &MeshStats) -> Result<FlowTables, MeshError> {
        let live = self.flow_count() as u64;
        Ok(FlowTables {
            live,
            live_capacity: self.flow_capacity()?.into(),
            opening: self.opening.keys().filter(|k| k.is_ok()).count() as u64,
            opening_capacity: capacity(&self.opening, OPENING_MAP)?.into(),
            closing: self.closing.keys().filter(|k| k.is_ok()).count() as u64,
            closing_capacity: capacity(&self.closing, CLOSING_MAP)?.into(),
            live_evicted: stats
                .get(Counter::LiveInserted)
                .saturating_sub(stats.get(Counter::LiveClosed))
                .saturating_sub(live),
        })
    }

    /// Entries in the reply table (live connections) now.
    pub fn reply_count(&self) -> usize {
        self.reply.keys().filter(|k| k.is_ok()).count()
    }

    /// Entries in the reply tables of connections opening, and closing, now.
    pub fn reply_opening_closing_count(&self) -> (usize, usize) {
        (
            self.reply_opening.keys().filter(|k| k.is_ok()).count(),
            self.reply_closing.keys().filter(|k| k.is_ok()).count(),
        )
    }

    /// The live flow table's entry for a client flow (tests and diagnostics).
    pub fn flow(&self, key: FlowKey) -> Option<FlowValue> {
        self.flows.get(&Wire(key), 0).ok().map(|v| v.0)
    }

    /// The opening table's entry for a client flow (tests and diagnostics).
    pub fn opening_flow(&self, key: FlowKey) -> Option<FlowValue> {
        self.opening.get(&Wire(key), 0).ok().map(|v| v.0)
    }

    /// The closing table's entry for a client flow (tests and diagnostics).
    pub fn closing_flow(&self, key: FlowKey) -> Option<FlowValue> {
        self.closing.get(&Wire(key), 0).ok().map(|v| v.0)
    }

    /// Every flow and its backend.
    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        self.flows
            .iter()
            .filter_map(|kv| kv.ok())
            .map(|(k, v)| (k.0, v.0))
            .collect()
    }

    /// The counters, summed over CPUs.
    pub fn stats(&self) -> Result<MeshStats, MeshError> {
        let mut s = MeshStats::default();
        for c in Counter::ALL {
            let per_cpu = self.stats.get(&c.index(), 0).map_err(map_err(STATS_MAP))?;
            s.values[c.index() as usize] = per_cpu.iter().sum();
        }
        Ok(s)
    }
}

fn capacity<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<u32, MeshError> {
    let info = IterableMap::map(map)
        .info()
        .map_err(|source| MeshError::Map { name, source })?;
    Ok(info.max_entries())
}

/// The flow tables under pressure: what they hold, what they can hold, and the live
/// flows pushed out of the full live table. Only TCP connections past their handshake
/// and UDP flows are live: SYN floods fill the opening table, closed connections the
/// closing one, and each pushes out only its own kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTables {
    pub live: u64,
    pub live_capacity: u64,
    pub opening: u64,
    pub opening_capacity: u64,
    pub closing: u64,
    pub closing_capacity: u64,
    /// Live flows evicted: entries inserted, minus those whose connection ended, minus
    /// those held (since the counters were last reset; an entry written by an older
    /// agent counts as never inserted, so the figure errs towards none evicted).
    pub live_evicted: u64,
}

fn remove<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<(), MeshError> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// One published port's counters in the mesh (this node's part), summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortCounts {
    pub port: u16,
    /// "tcp" or "udp".
    pub protocol: &'static str,
    /// TCP connections opened and UDP flows the port balanced.
    pub new_flows: u64,
    /// Frames forwarded, and their bytes (IP packets, before encapsulation).
    pub packets: u64,
    pub bytes: u64,
}

impl PortCounts {
    /// Every published port's counters, from the maps pinned under `dir`
    /// (`<pin_dir>/mesh`), by port.
    pub fn read_pinned(dir: &Path) -> Result<Vec<PortCounts>, MeshError> {
        MeshMaps::open_pinned(dir)?.port_counts()
    }
}

/// The mesh's counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshStats {
    values: [u64; Counter::COUNT as usize],
}

impl MeshStats {
    /// Reads the counters pinned under `dir` (`<pin_dir>/mesh`).
    pub fn read_pinned(dir: &Path) -> Result<Self, MeshError> {
        let data = MapData::from_pin(dir.join(STATS_MAP)).map_err(map_err(STATS_MAP))?;
        let map = Map::PerCpuArray(data);
        let array = PerCpuArray::<_, u64>::try_from(&map).map_err(map_err(STATS_MAP))?;
        let mut s = Self::default();
        for c in Counter::ALL {
            let per_cpu = array.get(&c.index(), 0).map_err(map_err(STATS_MAP))?;
            s.values[c.index() as usize] = per_cpu.iter().sum();
        }
        Ok(s)
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.values[c.index() as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().map(|&c| (c, self.get(c)))
    }

    /// Counter-by-counter `self - earlier`.
    pub fn since(&self, earlier: &MeshStats) -> MeshStats {
        let mut out = *self;
        for (o, e) in out.values.iter_mut().zip(earlier.values.iter()) {
            *o = o.saturating_sub(*e);
        }
        out
    }
}

#[cfg(test)]
mod tests;
