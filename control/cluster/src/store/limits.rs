//! The limits of a service's task containers (Docker's `TaskTemplate.Resources.Limits`):
//! `--limit-cpu`, `--limit-memory`, `--limit-pids`, set on each container by the
//! executor. 0 is "no limit", as in Docker. The same type holds a service's
//! reservations (`--reserve-cpu`, `--reserve-memory`; `pids` unused), which the
//! scheduler counts against each node's capacity.

use serde::{Deserialize, Serialize};

/// CPUs are counted in billionths, as Docker's `NanoCPUs`.
pub const NANO_CPUS_PER_CPU: u64 = 1_000_000_000;

/// `--limit-*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// `--limit-cpu`, in billionths of a CPU (the container's CFS quota).
    #[serde(skip_serializing_if = "is_zero")]
    pub nano_cpus: u64,
    /// `--limit-memory`, in bytes.
    #[serde(skip_serializing_if = "is_zero")]
    pub memory_bytes: u64,
    /// `--limit-pids`: processes the container may have at once.
    #[serde(skip_serializing_if = "is_zero")]
    pub pids: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}
