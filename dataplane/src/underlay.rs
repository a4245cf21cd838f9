//! The XDP program on a node's underlay interface (`ebpf/shoal-ebpf/src/xdp_underlay.rs`):
//! loading, attaching, and reading its per-CPU counters. The same object holds the data
//! path's guard (its maps: [`crate::guard`]; its program for a separate data-path
//! interface: [`DataPathProgram`]), the ingress routing mesh (its maps: `lb::mesh`) and
//! the mesh's reply-path TC programs.
use std::{fmt, path::Path};

use aya::{
    maps::{MapData, MapError, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        ProgramError, SchedClassifier, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use shoal_common::{
    mesh,
    underlay::{Counter, DATA_PATH_PROGRAM, GUARD_MAP, PROGRAM, STATS_MAP, VTEPS_MAP},
};
use tracing::{info, warn};

use crate::{
    guard::{GuardError, GuardMaps},
    lb::mesh::{MeshError, MeshMaps},
    objects,
};

/// Directory under the pin directory that holds the routing mesh's maps.
pub const MESH_PIN_DIR: &str = "mesh";
/// The pinned bpf link that keeps the program attached across agent restarts
/// (`<pin_dir>/underlay_xdp_link_native` or `..._generic`).
pub const LINK_PIN: &str = "underlay_xdp_link";
/// The pinned bpf links of the data-path program: `<pin_dir>/data_path_xdp_<mode>_<ifname>`.
pub const DATA_PATH_LINK_PREFIX: &str = "data_path_xdp_";

#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    #[error("loading the underlay eBPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("program {0} is missing from the eBPF object or is not XDP")]
    MissingProgram(&'static str),
    #[error("map {STATS_MAP} is missing from the eBPF object")]
    MissingMap,
    #[error("TC program {0} is missing from the eBPF object")]
    MissingTc(String),
    #[error("replacing the pinned map {path}, made by an older agent: {source}")]
    StalePin {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("creating the mesh pin directory {path}: {source}")]
    PinDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("underlay program: {0}")]
    Program(#[from] ProgramError),
    #[error("stats map {STATS_MAP}: {0}")]
    Map(#[from] MapError),
    #[error("attaching XDP to {interface}: native mode failed ({native}), generic mode failed ({generic})")]
    Attach {
        interface: String,
        native: Box<ProgramError>,
        generic: Box<ProgramError>,
    },
}

/// How the program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    /// Driver (native) XDP: runs before an skb exists.
    Native,
    /// Generic XDP: runs in the stack, on every driver.
    Generic,
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        })
    }
}

/// The underlay program, loaded into the kernel.
pub struct UnderlayProgram {
    ebpf: Ebpf,
}

impl UnderlayProgram {
    /// Loads the program with a private stats map (tests, one-off use).
    pub fn load() -> Result<Self, UnderlayError> {
        Self::load_with(&mut EbpfLoader::new())
    }

    /// Loads the program with its stats map pinned in `pin_dir` (which must be on bpffs).
    /// An existing pinned map is reused, so counters survive an agent restart.
    pub fn load_pinned(pin_dir: &Path) -> Result<Self, UnderlayError> {
        Self::load_pinned_with(pin_dir, mesh::DEFAULT_FLOWS)
    }

    /// As [`load_pinned`](Self::load_pinned), with the routing mesh's maps pinned under
    /// `<pin_dir>/mesh/` and its flow and reply tables holding `flows` entries, and the
    /// guard's maps under `<pin_dir>`. Pinned maps are reused (flows survive an agent
    /// restart); a pinned flow table keeps the size it was made with. A pinned counter
    /// map of another size than this object's (an older agent's) is replaced: its
    /// counters start again from zero.
    pub fn load_pinned_with(pin_dir: &Path, flows: u32) -> Result<Self, UnderlayError> {
        let mut loader = pinned_loader(pin_dir, flows)?;
        Self::load_with(&mut loader)
    }

    /// Loads with private maps and a flow table of `flows` entries (tests).
    pub fn load_with_flows(flows: u32) -> Result<Self, UnderlayError> {
        let mut loader = EbpfLoader::new();
        for map in mesh::FLOW_TABLES {
            loader.map_max_entries(map, flows);
        }
        Self::load_with(&mut loader)
    }

    fn load_with(loader: &mut EbpfLoader<'_>) -> Result<Self, UnderlayError> {
        let mut ebpf = loader.load(objects::UNDERLAY)?;
        xdp_mut(&mut ebpf, PROGRAM)?.load()?;
        xdp_mut(&mut ebpf, DATA_PATH_PROGRAM)?.load()?;
        for name in [mesh::TC_REPLY, mesh::TC_TO_UNDERLAY] {
            tc_mut(&mut ebpf, name)?.load()?;
        }
        Ok(Self { ebpf })
    }

    /// The data path guard's maps, taken out of the object (the programs keep them). Once.
    pub fn take_guard_maps(&mut self) -> Result<GuardMaps, GuardError> {
        GuardMaps::take(&mut self.ebpf)
    }

    /// The loaded data-path XDP program (for BPF_PROG_TEST_RUN).
    pub fn data_path_program(&self) -> Result<&Xdp, UnderlayError> {
        self.ebpf
            .program(DATA_PATH_PROGRAM)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .ok_or(UnderlayError::MissingProgram(DATA_PATH_PROGRAM))
    }

    /// The routing mesh's maps, taken out of the object (the programs keep them). Once.
    pub fn take_mesh_maps(&mut self) -> Result<MeshMaps, MeshError> {
        MeshMaps::take(&mut self.ebpf)
    }

    /// One of the mesh's TC programs (`shoal_common::mesh::TC_*`), loaded.
    pub fn tc_program(&self, name: &str) -> Result<&SchedClassifier, UnderlayError> {
        self.ebpf
            .program(name)
            .and_then(|p| <&SchedClassifier>::try_from(p).ok())
            .ok_or(UnderlayError::MissingTc(name.to_owned()))
    }

    /// The same, to attach it.
    pub fn tc_program_mut(&mut self, name: &str) -> Result<&mut SchedClassifier, UnderlayError> {
        tc_mut(&mut self.ebpf, name)
    }

    /// The loaded XDP program (for BPF_PROG_TEST_RUN).
    pub fn program(&self) -> Result<&Xdp, UnderlayError> {
        self.ebpf
            .program(PROGRAM)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .ok_or(UnderlayError::MissingProgram(PROGRAM))
    }

    /// Attaches to `interface`, in native mode if the driver supports it, generic
    /// otherwise. The link lives as long as this value.
    pub fn attach(&mut self, interface: &str) -> Result<AttachedMode, UnderlayError> {
        attach_with_id(&mut self.ebpf, PROGRAM, interface).map(|(mode, _)| mode)
    }

    /// Attaches as [`attach`](Self::attach) does, but through a bpf link pinned at
    /// `<pin_dir>/`[`LINK_PIN`]`_<mode>`: the program stays attached when this process
    /// exits (the routing mesh keeps forwarding while an agent restarts), and the next
    /// agent swaps its own program in through the same link, atomically, without a
    /// moment detached. A pinned link that no longer works (its interface went away) is
    /// replaced. (The mode is in the pin's name: bpffs holds only pinned objects.)
    pub fn attach_pinned(
        &mut self,
        interface: &str,
        pin_dir: &Path,
    ) -> Result<AttachedMode, UnderlayError> {
        attach_pinned(&mut self.ebpf, PROGRAM, interface, |mode| {
            pin_dir.join(format!("{LINK_PIN}_{mode}"))
        })
    }

    /// Sums the counters over every CPU.
    pub fn stats(&self) -> Result<UnderlayStats, UnderlayError> {
        let map = self.ebpf.map(STATS_MAP).ok_or(UnderlayError::MissingMap)?;
        let array = PerCpuArray::<_, u64>::try_from(map)?;
        UnderlayStats::read(&array)
    }
}

/// The loader of the object with every map pinned where [`UnderlayProgram::load_pinned_with`]
/// says, stale counter pins removed first.
fn pinned_loader(pin_dir: &Path, flows: u32) -> Result<EbpfLoader<'static>, UnderlayError> {
    let mesh_dir = pin_dir.join(MESH_PIN_DIR);
    std::fs::create_dir_all(&mesh_dir).map_err(|source| UnderlayError::PinDir {
        path: mesh_dir.clone(),
        source,
    })?;
    replace_stale_pin(&pin_dir.join(STATS_MAP), Counter::COUNT)?;
    replace_stale_pin(
        &mesh_dir.join(mesh::STATS_MAP),
        shoal_common::mesh::Counter::COUNT,
    )?;
    // Older agents made room for fewer Maglev tables; the agent rewrites them all.
    replace_stale_pin(
        &mesh_dir.join(mesh::MAGLEV_MAP),
        shoal_common::mesh::MAX_MAGLEV_ROWS * shoal_common::mesh::MAGLEV_SIZE,
    )?;
    let mut loader = EbpfLoader::new();
    loader.map_pin_path(STATS_MAP, pin_dir.join(STATS_MAP));
    loader.map_pin_path(GUARD_MAP, pin_dir.join(GUARD_MAP));
    loader.map_pin_path(VTEPS_MAP, pin_dir.join(VTEPS_MAP));
    for name in mesh::MAPS {
        loader.map_pin_path(name, mesh_dir.join(name));
    }
    for map in mesh::FLOW_TABLES {
        loader.map_max_entries(map, flows);
    }
    Ok(loader)
}

/// Removes the array pinned at `path` if it does not hold `entries` entries: a pinned
/// map is reused as it is, and the programs of a newer object would find no slot for
/// the counters (or Maglev tables) it added. Counters start again from zero; Maglev
/// tables are written again by the agent.
fn replace_stale_pin(path: &Path, entries: u32) -> Result<(), UnderlayError> {
    let Ok(pinned) = MapData::from_pin(path) else {
        return Ok(());
    };
    let size = pinned.info().map(|i| i.max_entries()).unwrap_or(entries);
    if size == entries {
        return Ok(());
    }
    warn!(path = %path.display(), size, entries, "a pinned array of another size (an older agent's): replaced, it starts empty");
    std::fs::remove_file(path).map_err(|source| UnderlayError::StalePin {
        path: path.to_owned(),
        source,
    })
}

fn attach_with_id(
    ebpf: &mut Ebpf,
    program: &'static str,
    interface: &str,
) -> Result<(AttachedMode, aya::programs::xdp::XdpLinkId), UnderlayError> {
    let prog = xdp_mut(ebpf, program)?;
    match prog.attach(interface, XdpMode::Driver) {
        Ok(id) => {
            info!(interface, program, mode = "native", "attached XDP program");
            Ok((AttachedMode::Native, id))
        }
        Err(native) => {
            warn!(interface, program, error = %native, "native XDP unavailable, trying generic mode");
            match prog.attach(interface, XdpMode::Skb) {
                Ok(id) => {
                    info!(interface, program, mode = "generic", "attached XDP program");
                    Ok((AttachedMode::Generic, id))
                }
                Err(generic) => Err(UnderlayError::Attach {
                    interface: interface.to_owned(),
                    native: Box::new(native),
                    generic: Box::new(generic),
                }),
            }
        }
    }
}

/// Attaches `program` to `interface` through a bpf link pinned at `link_path(mode)`,
/// taking over a link pinned there before (see [`UnderlayProgram::attach_pinned`]).
fn attach_pinned(
    ebpf: &mut Ebpf,
    program: &'static str,
    interface: &str,
    link_path: impl Fn(AttachedMode) -> std::path::PathBuf,
) -> Result<AttachedMode, UnderlayError> {
    for mode in [AttachedMode::Native, AttachedMode::Generic] {
        let path = link_path(mode);
        let Ok(pinned) = PinnedLink::from_pin(&path) else {
            continue;
        };
        let fd: FdLink = pinned.into();
        let adopted = XdpLink::try_from(fd)
            .map_err(|e| e.to_string())
            .and_then(|link| {
                xdp_mut(ebpf, program)
                    .map_err(|e| e.to_string())?
                    .attach_to_link(link)
                    .map_err(|e| e.to_string())
            });
        match adopted {
            Ok(id) => {
                // The link stays pinned; this process only lets go of its handle.
                drop(xdp_mut(ebpf, program)?.take_link(id)?);
                info!(interface, program, %mode, "took over the pinned XDP link");
                return Ok(mode);
            }
            Err(e) => {
                warn!(interface, program, error = %e, "the pinned XDP link is stale; attaching anew");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let (mode, id) = attach_with_id(ebpf, program, interface)?;
    let link = xdp_mut(ebpf, program)?.take_link(id)?;
    let path = link_path(mode);
    let pinned = FdLink::try_from(link)
        .map_err(|e| e.to_string())
        .and_then(|fd| fd.pin(&path).map_err(|e| e.to_string()));
    match pinned {
        Ok(_) => Ok(mode),
        Err(e) => {
            // The failed attempt consumed (and so detached) the link: attach again,
            // unpinned; it detaches when the agent stops.
            warn!(interface, program, error = %e, "could not pin the XDP link");
            attach_with_id(ebpf, program, interface).map(|(mode, _)| mode)
        }
    }
}

fn tc_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier, UnderlayError> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .ok_or(UnderlayError::MissingTc(name.to_owned()))
}

fn xdp_mut<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut Xdp, UnderlayError> {
    ebpf.program_mut(program)
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .ok_or(UnderlayError::MissingProgram(program))
}

/// The data path's guard on a data-path interface of its own (the node's
/// `--data-path-addr` on another interface than the underlay): the object loaded with
/// the same pinned maps as the underlay program, and only its `shoal_xdp_data_path`
/// program, attached through a link pinned at
/// `<pin_dir>/`[`DATA_PATH_LINK_PREFIX`]`<mode>_<interface>` (it stays attached when the
/// agent stops; the next one takes it over).
pub struct DataPathProgram {
    ebpf: Ebpf,
}

impl DataPathProgram {
    /// Loads the object with the maps pinned under `pin_dir` (see
    /// [`UnderlayProgram::load_pinned_with`]).
    pub fn load_pinned(pin_dir: &Path, flows: u32) -> Result<Self, UnderlayError> {
        let mut ebpf = pinned_loader(pin_dir, flows)?.load(objects::UNDERLAY)?;
        xdp_mut(&mut ebpf, DATA_PATH_PROGRAM)?.load()?;
        Ok(Self { ebpf })
    }

    /// Attaches to `interface` through its pinned link, and detaches the program from
    /// every other interface it was pinned on.
    pub fn attach_pinned(
        &mut self,
        interface: &str,
        pin_dir: &Path,
    ) -> Result<AttachedMode, UnderlayError> {
        Self::detach_pinned(pin_dir, Some(interface));
        attach_pinned(&mut self.ebpf, DATA_PATH_PROGRAM, interface, |mode| {
            pin_dir.join(format!("{DATA_PATH_LINK_PREFIX}{mode}_{interface}"))
        })
    }

    /// Unpins (so detaches) the data-path program's links under `pin_dir`, but the one
    /// on `keep`. Returns the interfaces it was detached from.
    pub fn detach_pinned(pin_dir: &Path, keep: Option<&str>) -> Vec<String> {
        let mut detached = Vec::new();
        let Ok(entries) = std::fs::read_dir(pin_dir) else {
            return detached;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name
                .to_str()
                .and_then(|n| n.strip_prefix(DATA_PATH_LINK_PREFIX))
            else {
                continue;
            };
            let interface = rest.split_once('_').map_or(rest, |(_, i)| i);
            if Some(interface) == keep {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    info!(interface, "data-path XDP program detached");
                    detached.push(interface.to_owned());
                }
                Err(e) => {
                    warn!(path = %entry.path().display(), error = %e, "unpinning a data-path XDP link")
                }
            }
        }
        detached
    }
}

/// The counters of the underlay program, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnderlayStats {
    values: [u64; Counter::COUNT as usize],
}

impl UnderlayStats {
    /// Reads the stats map pinned under `pin_dir` by a running agent.
    pub fn read_pinned(pin_dir: &Path) -> Result<Self, UnderlayError> {
        let data = MapData::from_pin(pin_dir.join(STATS_MAP))?;
        let map = aya::maps::Map::PerCpuArray(data);
        let array = PerCpuArray::<_, u64>::try_from(&map)?;
        Self::read(&array)
    }

    fn read<T: std::borrow::Borrow<MapData>>(
        array: &PerCpuArray<T, u64>,
    ) -> Result<Self, UnderlayError> {
        let mut stats = Self::default();
        for counter in Counter::ALL {
            let per_cpu = array.get(&counter.index(), 0)?;
            stats.values[counter.index() as usize] = per_cpu.iter().sum();
        }
        Ok(stats)
    }

    /// Value of one counter.
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter.index() as usize]
    }

    /// Every counter with its name, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().map(|&c| (c, self.get(c)))
    }

    /// Counter-by-counter difference `self - earlier` (counters only grow).
    pub fn since(&self, earlier: &UnderlayStats) -> UnderlayStats {
        let mut out = *self;
        for (o, e) in out.values.iter_mut().zip(earlier.values.iter()) {
            *o = o.saturating_sub(*e);
        }
        out
    }
}
