//! shoal's developer tasks as a library, so the lab tests in `tests/` drive the same
//! lab code as `cargo xtask lab`.
//!
//! Module map:
//! - [`setup`]: installs what a fresh machine lacks.
//! - [`images`]: builds the lab's Docker images without a registry or a dockerd.
//! - [`lab`]: the multi-host lab (namespaces, per-host dockerd, teardown).
//! - [`bench`]: benchmarks against a baseline in the same run.
//! - [`chaos`]: scripted faults on a 5-host lab under load, nothing lost.
//! - [`soak`]: churn for N minutes with idle connections held; nothing leaks.
//! - [`load`]: HTTP load generators (lab tests and chaos).
//! - [`fuzz`]: the cargo-fuzz targets, built and run.
//! - [`demo`]: README's main job.
//! - [`testrun`]: README's test command.
//! - [`util`]: root check, bpffs check, workspace paths.

pub mod bench;
pub mod chaos;
pub mod demo;
pub mod fuzz;
pub mod images;
pub mod lab;
pub mod load;
pub mod setup;
pub mod soak;
pub mod testrun;
pub mod util;
