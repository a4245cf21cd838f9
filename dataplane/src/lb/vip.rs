//! Service VIPs east-west: the cgroup `sock_addr` programs of
//! `ebpf/shoal-ebpf/src/sock_vip.rs` (load, attach at a cgroup v2 directory, pin), their
//! maps (written from a [`VipTable`] through the plan of [`super::vip_table`], read
//! back for adoption), their counters, and a namespace's cookie.
//!
//! Pins, all under one directory (the agent uses `<pin_dir>/vip`): every map by its name,
//! and the eight program links as `link_<program>`. A link pinned there keeps its program
//! attached while no agent runs, so VIPs keep working across an agent restart; the next
//! agent attaches its own programs first, then replaces the old pins (both sets use the
//! same pinned maps, and a socket translated once is not translated again).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSockAddr, ProgramError,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use shoal_common::vip::{
    BackendKey, BackendState as MapState, Counter, Destination, FlowKey, NodePortKey, ScopeKey,
    VipValue, BACKENDS_MAP, BACKEND_STATE_MAP, CONNECTS_MAP, FLOWS_MAP, MAPS, MAX_BACKENDS,
    MAX_FLOWS, MAX_NODEPORTS, MAX_REVERSE, MAX_SCOPES, MAX_VIPS, NODEPORTS_MAP, PROGRAMS,
    REVERSE_MAP, SCOPES_MAP, STATS_MAP, VIPS_MAP,
};

use super::state::BackendState;
use super::vip_table::{AppliedVip, MapOp, NodePort, VipRecord, VipTable};
use crate::{objects, overlay::netns};

/// Where cgroup v2 is mounted on a hybrid machine, and on a unified one.
pub const CGROUP2_CANDIDATES: [&str; 2] = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];

/// Sub-directory of the agent's pin directory holding the VIP maps and links.
pub const PIN_SUBDIR: &str = "vip";

#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("loading the VIP socket programs: {0}")]
    Load(#[from] EbpfError),
    #[error("program {0} is missing from the VIP object or is not a cgroup sock_addr program")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the VIP object")]
    MissingMap(&'static str),
    #[error("VIP program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("VIP map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("no cgroup v2 hierarchy is mounted (looked at {})", CGROUP2_CANDIDATES.join(", "))]
    NoCgroup2,
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> VipError {
    move |source| VipError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> VipError {
    move |source| VipError::Program { name, source }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> VipError {
    let what = what.into();
    move |source| VipError::Io { what, source }
}

/// Plain-data wrapper so the shared `#[repr(C)]` types can be map keys and values.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct P<T>(T);
// SAFETY: each is #[repr(C)] of fixed-width integers with no implicit padding
// (checked by shoal-common's size tests) and valid for any bit pattern.
unsafe impl aya::Pod for P<VipValue> {}
// SAFETY: as above.
unsafe impl aya::Pod for P<BackendKey> {}
// SAFETY: as above.
unsafe impl aya::Pod for P<ScopeKey> {}
// SAFETY: as above.
unsafe impl aya::Pod for P<FlowKey> {}
// SAFETY: as above.
unsafe impl aya::Pod for P<NodePortKey> {}
// SAFETY: as above.
unsafe impl aya::Pod for P<Destination> {}

fn nodeport_key(k: &NodePort) -> P<NodePortKey> {
    P(NodePortKey {
        netns: k.netns,
        addr: ip_key(k.addr),
        port: k.port.to_be(),
        protocol: k.protocol,
        _pad: 0,
    })
}

/// An IPv4 address as the kernel holds it in `user_ip4` (network order).
pub fn ip_key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn ip_of(key: u32) -> Ipv4Addr {
    Ipv4Addr::from(key.to_ne_bytes())
}

fn map_state(s: BackendState) -> MapState {
    match s {
        BackendState::Healthy => MapState::Healthy,
        BackendState::Draining => MapState::Draining,
        BackendState::Unhealthy => MapState::Unhealthy,
    }
}

fn declared_state(s: MapState) -> BackendState {
    match s {
        MapState::Healthy => BackendState::Healthy,
        MapState::Draining => BackendState::Draining,
        MapState::Unhealthy => BackendState::Unhealthy,
    }
}

/// The maps the userspace side writes and reads.
struct Maps {
    vips: HashMap<MapData, u32, P<VipValue>>,
    backends: HashMap<MapData, P<BackendKey>, u32>,
    states: HashMap<MapData, P<BackendKey>, u32>,
    scopes: HashMap<MapData, P<ScopeKey>, u32>,
    flows: HashMap<MapData, P<FlowKey>, u32>,
    reverse: HashMap<MapData, P<FlowKey>, u32>,
    stats: PerCpuArray<MapData, u64>,
    nodeports: HashMap<MapData, P<NodePortKey>, P<Destination>>,
    connects: PerCpuHashMap<MapData, u32, u64>,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, VipError> {
    ebpf.take_map(name).ok_or(VipError::MissingMap(name))
}

fn pinned(dir: &Path, name: &'static str) -> Result<Map, VipError> {
    let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

impl Maps {
    /// Creates the VIP's connect count (zero) unless it has one.
    fn ensure_connects(&mut self, vip: u32) -> Result<(), VipError> {
        if self.connects.get(&vip, 0).is_ok() {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| VipError::Io {
            what: what.to_string(),
            source,
        })?;
        let zero = PerCpuValues::try_from(vec![0u64; cpus]).map_err(|source| VipError::Io {
            what: "zeroing a VIP's connect count".into(),
            source,
        })?;
        self.connects
            .insert(vip, zero, 0)
            .map_err(map_err(CONNECTS_MAP))
    }

    /// Every VIP's connects and new UDP flows (this node's), summed over CPUs.
    fn connects(&self) -> Result<Vec<(Ipv4Addr, u64)>, VipError> {
        let mut out = Vec::new();
        for kv in self.connects.iter() {
            let (vip, per_cpu) = kv.map_err(map_err(CONNECTS_MAP))?;
            out.push((ip_of(vip), per_cpu.iter().sum()));
        }
        out.sort();
        Ok(out)
    }

    /// Opens the maps pinned in `dir` (for readers other than the agent).
    fn from_pins(dir: &Path) -> Result<Self, VipError> {
        Ok(Self {
            vips: HashMap::try_from(pinned(dir, VIPS_MAP)?).map_err(map_err(VIPS_MAP))?,
            backends: HashMap::try_from(pinned(dir, BACKENDS_MAP)?)
                .map_err(map_err(BACKENDS_MAP))?,
            states: HashMap::try_from(pinned(dir, BACKEND_STATE_MAP)?)
                .map_err(map_err(BACKEND_STATE_MAP))?,
            scopes: HashMap::try_from(pinned(dir, SCOPES_MAP)?).map_err(map_err(SCOPES_MAP))?,
            flows: HashMap::try_from(pinned(dir, FLOWS_MAP)?).map_err(map_err(FLOWS_MAP))?,
            reverse: HashMap::try_from(pinned(dir, REVERSE_MAP)?).map_err(map_err(REVERSE_MAP))?,
            stats: PerCpuArray::try_from(pinned(dir, STATS_MAP)?).map_err(map_err(STATS_MAP))?,
            nodeports: HashMap::try_from(pinned(dir, NODEPORTS_MAP)?)
                .map_err(map_err(NODEPORTS_MAP))?,
            connects: PerCpuHashMap::try_from(pinned(dir, CONNECTS_MAP)?)
                .map_err(map_err(CONNECTS_MAP))?,
        })
    }

    fn take(ebpf: &mut Ebpf) -> Result<Self, VipError> {
        Ok(Self {
            vips: HashMap::try_from(take(ebpf, VIPS_MAP)?).map_err(map_err(VIPS_MAP))?,
            backends: HashMap::try_from(take(ebpf, BACKENDS_MAP)?)
                .map_err(map_err(BACKENDS_MAP))?,
            states: HashMap::try_from(take(ebpf, BACKEND_STATE_MAP)?)
                .map_err(map_err(BACKEND_STATE_MAP))?,
            scopes: HashMap::try_from(take(ebpf, SCOPES_MAP)?).map_err(map_err(SCOPES_MAP))?,
            flows: HashMap::try_from(take(ebpf, FLOWS_MAP)?).map_err(map_err(FLOWS_MAP))?,
            reverse: HashMap::try_from(take(ebpf, REVERSE_MAP)?).map_err(map_err(REVERSE_MAP))?,
            stats: PerCpuArray::try_from(take(ebpf, STATS_MAP)?).map_err(map_err(STATS_MAP))?,
            nodeports: HashMap::try_from(take(ebpf, NODEPORTS_MAP)?)
                .map_err(map_err(NODEPORTS_MAP))?,
            connects: PerCpuHashMap::try_from(take(ebpf, CONNECTS_MAP)?)
                .map_err(map_err(CONNECTS_MAP))?,
        })
    }
}

/// The VIP programs, loaded, with their maps.
pub struct VipProgram {
    ebpf: Ebpf,
    maps: Maps,
    /// What the maps hold, as this side wrote (or, at adoption, read) it.
    record: VipRecord,
    pin_dir: Option<PathBuf>,
}

impl VipProgram {
    /// Loads the programs with private maps (tests, one-off use). Nothing is attached.
    pub fn load() -> Result<Self, VipError> {
        Self::load_with(EbpfLoader::new(), None)
    }

    /// Loads the programs with every map pinned in `dir` (created here; it must be on
    /// bpffs). Maps already pinned there are reused and read back, so a restarted agent
    /// adopts what the last one wrote.
    pub fn load_pinned(dir: &Path) -> Result<Self, VipError> {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut loader = EbpfLoader::new();
        for name in MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
        Self::load_with(loader, Some(dir.to_owned()))
    }

    fn load_with(mut loader: EbpfLoader<'_>, pin_dir: Option<PathBuf>) -> Result<Self, VipError> {
        let mut ebpf = loader.load(objects::SOCK_VIP)?;
        let maps = Maps::take(&mut ebpf)?;
        for name in PROGRAMS {
            prog_mut(&mut ebpf, name)?.load().map_err(prog_err(name))?;
        }
        let mut this = Self {
            ebpf,
            maps,
            record: VipRecord::default(),
            pin_dir,
        };
        this.record = this.read_back()?;
        // VIPs adopted from an agent that kept no per-VIP count get theirs now.
        let vips: Vec<u32> = this.record.vips.keys().map(|v| ip_key(*v)).collect();
        for vip in vips {
            this.maps.ensure_connects(vip)?;
        }
        Ok(this)
    }

    /// Attaches every program to the cgroup v2 directory `cgroup` (its whole subtree,
    /// alongside other programs). The links live as long as this value.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), VipError> {
        let dir =
            fs::File::open(cgroup).map_err(io_err(format!("opening {}", cgroup.display())))?;
        for name in PROGRAMS {
            // Links on a cgroup always run alongside others; the kernel takes no flags
            // for them, which is what `Single` passes.
            prog_mut(&mut self.ebpf, name)?
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(prog_err(name))?;
        }
        Ok(())
    }

    /// Attaches every program to `cgroup` and pins the links in the pin directory,
    /// replacing links pinned there by an earlier agent (after the new ones are in
    /// place, so there is no moment without translation). The programs stay attached
    /// after this value is dropped, as long as the pins exist.
    pub fn attach_pinned(&mut self, cgroup: &Path) -> Result<(), VipError> {
        let pin_dir = self
            .pin_dir
            .clone()
            .ok_or_else(|| io_err("pinning links")(io::Error::other("the maps are not pinned")))?;
        let dir =
            fs::File::open(cgroup).map_err(io_err(format!("opening {}", cgroup.display())))?;
        for name in PROGRAMS {
            let prog = prog_mut(&mut self.ebpf, name)?;
            let id = prog
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(prog_err(name))?;
            let link = prog.take_link(id).map_err(prog_err(name))?;
            let link = FdLink::try_from(link).map_err(|e| VipError::Io {
                what: format!("taking the link of {name}"),
                source: io::Error::other(e.to_string()),
            })?;
            let path = link_pin(&pin_dir, name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("removing {}", path.display()))(e)),
            }
            link.pin(&path).map_err(|e| VipError::Io {
                what: format!("pinning {}", path.display()),
                source: io::Error::other(e.to_string()),
            })?;
        }
        Ok(())
    }

    /// Removes the pinned links (the programs detach once nothing else holds them).
    pub fn unpin_links(dir: &Path) -> Result<(), VipError> {
        for name in PROGRAMS {
            let path = link_pin(dir, name);
            if path.exists() {
                let link = PinnedLink::from_pin(&path).map_err(|e| VipError::Io {
                    what: format!("opening {}", path.display()),
                    source: io::Error::other(e.to_string()),
                })?;
                link.unpin()
                    .map_err(io_err(format!("unpinning {}", path.display())))?;
            }
        }
        Ok(())
    }

    /// What the maps hold, as recorded.
    pub fn record(&self) -> &VipRecord {
        &self.record
    }

    /// Makes the maps hold `desired`, changing only the entries that differ from what
    /// they hold now. Returns how many map writes and deletes it took.
    pub fn apply(&mut self, desired: &VipTable) -> Result<usize, VipError> {
        let (ops, mut next) = super::vip_table::plan(&self.record, desired);
        // Node ports leave before their frontends and arrive after them.
        let mut writes = ops.len();
        let stale: Vec<NodePort> = (self.record.nodeports.keys())
            .filter(|k| !desired.nodeports.contains_key(k))
            .copied()
            .collect();
        for k in &stale {
            remove(&mut self.maps.nodeports, &nodeport_key(k), NODEPORTS_MAP)?;
            self.record.nodeports.remove(k);
            writes += 1;
        }
        for op in &ops {
            self.apply_op(op)?;
        }
        for (k, &(frontend, target)) in &desired.nodeports {
            if self.record.nodeports.get(k) == Some(&(frontend, target)) {
                continue;
            }
            let value = P(Destination {
                addr: ip_key(frontend),
                port: target.to_be(),
                _pad: 0,
            });
            self.maps
                .nodeports
                .insert(nodeport_key(k), value, 0)
                .map_err(map_err(NODEPORTS_MAP))?;
            writes += 1;
        }
        next.nodeports = desired.nodeports.clone();
        self.record = next;
        Ok(writes)
    }

    fn apply_op(&mut self, op: &MapOp) -> Result<(), VipError> {
        let m = &mut self.maps;
        match *op {
            MapOp::PutState { vip, addr, state } => m
                .states
                .insert(
                    P(BackendKey {
                        vip: ip_key(vip),
                        slot: ip_key(addr),
                    }),
                    map_state(state) as u32,
                    0,
                )
                .map_err(map_err(BACKEND_STATE_MAP)),
            MapOp::DelState { vip, addr } => remove(
                &mut m.states,
                &P(BackendKey {
                    vip: ip_key(vip),
                    slot: ip_key(addr),
                }),
                BACKEND_STATE_MAP,
            ),
            MapOp::PutSlot { vip, slot, addr } => m
                .backends
                .insert(
                    P(BackendKey {
                        vip: ip_key(vip),
                        slot,
                    }),
                    ip_key(addr),
                    0,
                )
                .map_err(map_err(BACKENDS_MAP)),
            MapOp::DelSlot { vip, slot } => remove(
                &mut m.backends,
                &P(BackendKey {
                    vip: ip_key(vip),
                    slot,
                }),
                BACKENDS_MAP,
            ),
            MapOp::PutVip {
                vip,
                network,
                count,
            } => {
                // Keep the round-robin cursor where the programs left it.
                let cursor = m.vips.get(&ip_key(vip), 0).map(|v| v.0.cursor).unwrap_or(0);
                m.ensure_connects(ip_key(vip))?;
                m.vips
                    .insert(
                        ip_key(vip),
                        P(VipValue {
                            network,
                            count,
                            cursor,
                        }),
                        0,
                    )
                    .map_err(map_err(VIPS_MAP))
            }
            MapOp::DelVip { vip } => {
                remove(&mut m.vips, &ip_key(vip), VIPS_MAP)?;
                match m.connects.remove(&ip_key(vip)) {
                    Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                    Err(MapError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(map_err(CONNECTS_MAP)(e)),
                }
            }
            MapOp::PutScope { netns, network } => m
                .scopes
                .insert(
                    P(ScopeKey {
                        netns,
                        network,
                        _pad: 0,
                    }),
                    1,
                    0,
                )
                .map_err(map_err(SCOPES_MAP)),
            MapOp::DelScope { netns, network } => remove(
                &mut m.scopes,
                &P(ScopeKey {
                    netns,
                    network,
                    _pad: 0,
                }),
                SCOPES_MAP,
            ),
        }
    }

    /// Reads what the maps hold (adoption).
    fn read_back(&self) -> Result<VipRecord, VipError> {
        let m = &self.maps;
        let mut record = VipRecord::default();
        for item in m.vips.iter() {
            let (vip, value) = item.map_err(map_err(VIPS_MAP))?;
            let mut slots = Vec::new();
            for slot in 0..value.0.count {
                match m.backends.get(&P(BackendKey { vip, slot }), 0) {
                    Ok(addr) => slots.push(ip_of(addr)),
                    // A hole: record what is there so the plan rewrites the rest.
                    Err(MapError::KeyNotFound) => break,
                    Err(e) => return Err(map_err(BACKENDS_MAP)(e)),
                }
            }
            record.vips.insert(
                ip_of(vip),
                AppliedVip {
                    network: value.0.network,
                    count: value.0.count,
                    slots,
                    states: BTreeMap::new(),
                },
            );
        }
        for item in m.states.iter() {
            let (key, state) = item.map_err(map_err(BACKEND_STATE_MAP))?;
            let vip = ip_of(key.0.vip);
            let state = MapState::from_u32(state).unwrap_or(MapState::Unhealthy);
            record
                .stray_states
                .insert((vip, ip_of(key.0.slot)), declared_state(state));
            if let Some(v) = record.vips.get_mut(&vip) {
                v.states.insert(ip_of(key.0.slot), declared_state(state));
                record.stray_states.remove(&(vip, ip_of(key.0.slot)));
            }
        }
        // Slots beyond a VIP's count (an interrupted shrink) are strays too.
        for key in m.backends.keys() {
            let key = key.map_err(map_err(BACKENDS_MAP))?.0;
            let vip = ip_of(key.vip);
            let used = record
                .vips
                .get(&vip)
                .is_some_and(|v| (key.slot as usize) < v.slots.len());
            if !used {
                record.stray_slots.insert((vip, key.slot));
            }
        }
        for key in m.scopes.keys() {
            let key = key.map_err(map_err(SCOPES_MAP))?.0;
            record.scopes.insert((key.netns, key.network));
        }
        for item in m.nodeports.iter() {
            let (key, value) = item.map_err(map_err(NODEPORTS_MAP))?;
            record.nodeports.insert(
                NodePort {
                    netns: key.0.netns,
                    addr: ip_of(key.0.addr),
                    port: u16::from_be(key.0.port),
                    protocol: key.0.protocol,
                },
                (ip_of(value.0.addr), u16::from_be(value.0.port)),
            );
        }
        Ok(record)
    }

    /// Sums the counters over CPUs.
    pub fn stats(&self) -> Result<VipStats, VipError> {
        VipStats::read(&self.maps.stats)
    }

    /// Every VIP's connects and new UDP flows on this node (a VIP is one service's
    /// address on one network), summed over CPUs, by VIP.
    pub fn connects(&self) -> Result<Vec<(Ipv4Addr, u64)>, VipError> {
        self.maps.connects()
    }

    /// How full each map is.
    pub fn usage(&self) -> Result<VipUsage, VipError> {
        VipUsage::read(&self.maps)
    }
}

fn remove<K: aya::Pod>(
    map: &mut HashMap<MapData, K, impl aya::Pod>,
    key: &K,
    name: &'static str,
) -> Result<(), VipError> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}

fn prog_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, VipError> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut CgroupSockAddr>::try_from(p).ok())
        .ok_or(VipError::MissingProgram(name))
}

fn link_pin(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("link_{program}"))
}

/// The mounted cgroup v2 hierarchy to attach at.
pub fn cgroup2_root() -> Result<PathBuf, VipError> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    for candidate in CGROUP2_CANDIDATES {
        let Ok(c) = std::ffi::CString::new(candidate) else {
            continue;
        };
        // SAFETY: statfs writes into the zeroed struct we own; c is a valid C string.
        let is_cgroup2 = unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
        };
        if is_cgroup2 {
            return Ok(PathBuf::from(candidate));
        }
    }
    Err(VipError::NoCgroup2)
}

/// `SO_NETNS_COOKIE` from linux/socket.h.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie the programs see for sockets of the network namespace at `path`
/// (`bpf_get_netns_cookie`): asked of a socket made inside it.
pub fn netns_cookie(path: &Path) -> io::Result<u64> {
    netns::in_netns_at(path, current_netns_cookie)?
}

/// The calling thread's network namespace cookie.
pub fn current_netns_cookie() -> io::Result<u64> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The VIP programs' counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    values: [u64; Counter::COUNT as usize],
}

impl VipStats {
    /// Reads the counters pinned in `dir` (`<pin_dir>/vip`) by a running or stopped
    /// agent. `Ok(None)` if no agent ever pinned them there.
    pub fn read_pinned(dir: &Path) -> Result<Option<Self>, VipError> {
        let path = dir.join(STATS_MAP);
        if !path.exists() {
            return Ok(None);
        }
        let data = MapData::from_pin(&path).map_err(map_err(STATS_MAP))?;
        let array =
            PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(data)).map_err(map_err(STATS_MAP))?;
        Self::read(&array).map(Some)
    }

    fn read(array: &PerCpuArray<MapData, u64>) -> Result<Self, VipError> {
        let mut stats = Self::default();
        for c in Counter::ALL {
            let per_cpu = array.get(&c.index(), 0).map_err(map_err(STATS_MAP))?;
            stats.values[c.index() as usize] = per_cpu.iter().sum();
        }
        Ok(stats)
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter.index() as usize]
    }

    /// Every counter with its value, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().map(|&c| (c, self.get(c)))
    }
}

/// Every VIP's connects and new UDP flows from the maps pinned in `dir`, by VIP;
/// `Ok(None)` if none are pinned.
pub fn connects_pinned(dir: &Path) -> Result<Option<Vec<(Ipv4Addr, u64)>>, VipError> {
    if !dir.join(CONNECTS_MAP).exists() {
        return Ok(None);
    }
    Maps::from_pins(dir)?.connects().map(Some)
}

/// Entries in use and capacity of each VIP map (map pressure).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipUsage {
    /// (name, entries, capacity), in a fixed order.
    pub maps: Vec<(&'static str, u64, u64)>,
}

impl VipUsage {
    /// Reads the fill levels of the maps pinned in `dir`; `Ok(None)` if none are.
    pub fn read_pinned(dir: &Path) -> Result<Option<Self>, VipError> {
        if !dir.join(VIPS_MAP).exists() {
            return Ok(None);
        }
        Self::read(&Maps::from_pins(dir)?).map(Some)
    }

    fn read(m: &Maps) -> Result<Self, VipError> {
        let counts = [
            m.vips.keys().count(),
            m.backends.keys().count(),
            m.states.keys().count(),
            m.scopes.keys().count(),
            m.flows.keys().count(),
            m.reverse.keys().count(),
            m.nodeports.keys().count(),
        ];
        Ok(Self {
            maps: CAPACITIES
                .iter()
                .zip(counts)
                .map(|((name, cap), n)| (*name, n as u64, u64::from(*cap)))
                .collect(),
        })
    }
}

const CAPACITIES: [(&str, u32); 7] = [
    (VIPS_MAP, MAX_VIPS),
    (BACKENDS_MAP, MAX_BACKENDS),
    (BACKEND_STATE_MAP, MAX_BACKENDS),
    (SCOPES_MAP, MAX_SCOPES),
    (FLOWS_MAP, MAX_FLOWS),
    (REVERSE_MAP, MAX_REVERSE),
    (NODEPORTS_MAP, MAX_NODEPORTS),
];

/// A set of VIP addresses one network's namespace should answer for, for callers that
/// only need the addresses.
pub fn vip_addresses(table: &VipTable, network: u32) -> BTreeSet<Ipv4Addr> {
    table
        .vips
        .iter()
        .filter(|(_, v)| v.network == network)
        .map(|(a, _)| *a)
        .collect()
}

/// `(name, value)` rows for `shoal dataplane stats`: the VIP programs' counters, then
/// each map's entries and capacity (`vip_<map>` and `vip_<map>_capacity`), read from
/// the maps pinned in `dir` (`<pin_dir>/vip`). Empty when none are pinned there.
pub fn stats_rows(dir: &Path) -> Result<Vec<(&'static str, u64)>, VipError> {
    let Some(stats) = VipStats::read_pinned(dir)? else {
        return Ok(Vec::new());
    };
    let mut rows: Vec<(&'static str, u64)> = stats.iter().map(|(c, v)| (c.name(), v)).collect();
    if let Some(usage) = VipUsage::read_pinned(dir)? {
        for (name, entries, capacity) in usage.maps {
            let (label, cap_label) = usage_labels(name);
            rows.push((label, entries));
            rows.push((cap_label, capacity));
        }
    }
    Ok(rows)
}

fn usage_labels(map: &str) -> (&'static str, &'static str) {
    match map {
        VIPS_MAP => ("vip_services", "vip_services_capacity"),
        BACKENDS_MAP => ("vip_backend_slots", "vip_backend_slots_capacity"),
        BACKEND_STATE_MAP => ("vip_backends", "vip_backends_capacity"),
        SCOPES_MAP => ("vip_scopes", "vip_scopes_capacity"),
        FLOWS_MAP => ("vip_udp_flows", "vip_udp_flows_capacity"),
        _ => ("vip_reverse", "vip_reverse_capacity"),
    }
}
