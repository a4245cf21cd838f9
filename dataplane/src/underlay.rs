//! The XDP program on a node's underlay interface (`ebpf/shoal-ebpf/src/xdp_underlay.rs`):
//! loading, attaching, and reading its per-CPU counters.
use std::{fmt, path::Path};

use aya::{
    maps::{MapData, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use shoal_common::underlay::{Counter, PROGRAM, STATS_MAP};
use tracing::{info, warn};

use crate::objects;

#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    #[error("loading the underlay eBPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("program {PROGRAM} is missing from the eBPF object or is not XDP")]
    MissingProgram,
    #[error("map {STATS_MAP} is missing from the eBPF object")]
    MissingMap,
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
        Self::load_with(EbpfLoader::new())
    }

    /// Loads the program with its stats map pinned in `pin_dir` (which must be on bpffs).
    /// An existing pinned map is reused, so counters survive an agent restart.
    pub fn load_pinned(pin_dir: &Path) -> Result<Self, UnderlayError> {
        let mut loader = EbpfLoader::new();
        loader.map_pin_path(STATS_MAP, pin_dir.join(STATS_MAP));
        Self::load_with(loader)
    }

    fn load_with(mut loader: EbpfLoader<'_>) -> Result<Self, UnderlayError> {
        let mut ebpf = loader.load(objects::UNDERLAY)?;
        xdp_mut(&mut ebpf)?.load()?;
        Ok(Self { ebpf })
    }

    /// The loaded XDP program (for BPF_PROG_TEST_RUN).
    pub fn program(&self) -> Result<&Xdp, UnderlayError> {
        self.ebpf
            .program(PROGRAM)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .ok_or(UnderlayError::MissingProgram)
    }

    /// Attaches to `interface`, in native mode if the driver supports it, generic
    /// otherwise. The link lives as long as this value.
    pub fn attach(&mut self, interface: &str) -> Result<AttachedMode, UnderlayError> {
        let prog = xdp_mut(&mut self.ebpf)?;
        match prog.attach(interface, XdpMode::Driver) {
            Ok(_) => {
                info!(interface, mode = "native", "attached underlay XDP program");
                Ok(AttachedMode::Native)
            }
            Err(native) => {
                warn!(interface, error = %native, "native XDP unavailable, trying generic mode");
                match prog.attach(interface, XdpMode::Skb) {
                    Ok(_) => {
                        info!(interface, mode = "generic", "attached underlay XDP program");
                        Ok(AttachedMode::Generic)
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

    /// Sums the counters over every CPU.
    pub fn stats(&self) -> Result<UnderlayStats, UnderlayError> {
        let map = self.ebpf.map(STATS_MAP).ok_or(UnderlayError::MissingMap)?;
        let array = PerCpuArray::<_, u64>::try_from(map)?;
        UnderlayStats::read(&array)
    }
}

fn xdp_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, UnderlayError> {
    ebpf.program_mut(PROGRAM)
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .ok_or(UnderlayError::MissingProgram)
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
