//! The data path's guard, userspace side: what its maps must hold ([`GuardPlan`]: the
//! data-path port and the cluster's VTEPs, or nothing enforced), written as a difference
//! from what they hold ([`GuardMaps::apply`]) in an order that never drops a VTEP's
//! datagram on the way, and read back after a restart. The programs are in
//! `ebpf/shoal-ebpf/src/xdp_guard.rs`.
use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use shoal_common::underlay::{GuardConfig, GUARD_MAP, MAX_VTEPS, VTEPS_MAP};

use crate::lb::mesh::{addr, ipv4, port, Wire};

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{count} VTEPs: the guard holds at most {MAX_VTEPS}")]
    TooManyVteps { count: usize },
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> GuardError {
    move |source| GuardError::Map { name, source }
}

/// What the guard's maps hold: VXLAN to `port` accepted only from `vteps`, or, with no
/// port, every source (the guard is off).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuardPlan {
    /// The data-path (VXLAN) port checked; None: nothing is checked.
    pub port: Option<u16>,
    pub vteps: BTreeSet<Ipv4Addr>,
}

impl GuardPlan {
    /// The guard on: VXLAN to `port` only from `vteps`.
    pub fn enforce(port: u16, vteps: BTreeSet<Ipv4Addr>) -> Result<Self, GuardError> {
        if vteps.len() > MAX_VTEPS as usize {
            return Err(GuardError::TooManyVteps { count: vteps.len() });
        }
        Ok(Self {
            port: Some(port),
            vteps,
        })
    }

    fn config(&self) -> GuardConfig {
        match self.port {
            Some(p) => GuardConfig {
                enforce: 1,
                port: port(p),
                pad: 0,
            },
            None => GuardConfig::default(),
        }
    }
}

/// How many map entries an apply wrote and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub written: usize,
    pub removed: usize,
}

/// The guard's maps, taken from a loaded underlay object or opened from their pins.
pub struct GuardMaps {
    config: Array<MapData, Wire<GuardConfig>>,
    vteps: HashMap<MapData, u32, u32>,
}

impl GuardMaps {
    /// Takes the maps out of a loaded object (its programs keep using them).
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, GuardError> {
        Self::build(|name| ebpf.take_map(name).ok_or(GuardError::MissingMap(name)))
    }

    /// Opens the maps an agent pinned under `pin_dir`.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, GuardError> {
        Self::build(|name| {
            let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
            Map::from_map_data(data).map_err(map_err(name))
        })
    }

    fn build(
        mut get: impl FnMut(&'static str) -> Result<Map, GuardError>,
    ) -> Result<Self, GuardError> {
        Ok(Self {
            config: get(GUARD_MAP)?.try_into().map_err(map_err(GUARD_MAP))?,
            vteps: get(VTEPS_MAP)?.try_into().map_err(map_err(VTEPS_MAP))?,
        })
    }

    /// What the maps hold now (adoption after a restart).
    pub fn read_plan(&self) -> Result<GuardPlan, GuardError> {
        let cfg = self.config.get(&0, 0).map_err(map_err(GUARD_MAP))?.0;
        let mut vteps = BTreeSet::new();
        for k in self.vteps.keys() {
            vteps.insert(ipv4(k.map_err(map_err(VTEPS_MAP))?));
        }
        Ok(GuardPlan {
            port: (cfg.enforce == 1).then(|| u16::from_be_bytes(cfg.port.to_ne_bytes())),
            vteps,
        })
    }

    /// How many VTEPs the map holds (walks it: one syscall per entry).
    pub fn vtep_count(&self) -> usize {
        self.vteps.keys().filter(|k| k.is_ok()).count()
    }

    /// Makes the maps go from `old` (what they hold) to `new`: VTEPs that join first,
    /// then the port (the guard turned on only once its VTEPs are in), then VTEPs that
    /// left. A datagram from a current VTEP is never dropped on the way.
    pub fn apply(&mut self, old: &GuardPlan, new: &GuardPlan) -> Result<ApplyReport, GuardError> {
        let mut r = ApplyReport::default();
        for v in new.vteps.difference(&old.vteps) {
            self.vteps
                .insert(addr(*v), 1, 0)
                .map_err(map_err(VTEPS_MAP))?;
            r.written += 1;
        }
        if old.config() != new.config() {
            self.config
                .set(0, Wire(new.config()), 0)
                .map_err(map_err(GUARD_MAP))?;
            r.written += 1;
        }
        for v in old.vteps.difference(&new.vteps) {
            match self.vteps.remove(&addr(*v)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_err(VTEPS_MAP)(e)),
            }
            r.removed += 1;
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_kept_in_wire_order_and_off_is_all_zero() {
        let plan = GuardPlan::enforce(4789, BTreeSet::new()).unwrap();
        assert_eq!(
            plan.config().port,
            u16::from_ne_bytes(4789u16.to_be_bytes())
        );
        assert_eq!(plan.config().enforce, 1);
        assert_eq!(GuardPlan::default().config(), GuardConfig::default());
    }

    #[test]
    fn more_vteps_than_the_map_holds_are_refused() {
        let many: BTreeSet<Ipv4Addr> = (0..=MAX_VTEPS).map(Ipv4Addr::from).collect();
        assert!(matches!(
            GuardPlan::enforce(4789, many),
            Err(GuardError::TooManyVteps { .. })
        ));
    }
}
