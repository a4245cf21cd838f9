//! The `shoal` command's library: the CLI's commands, the agent's local API (unix
//! socket, JSON lines) and the cluster role behind it, the Docker Engine API, and the
//! list filters the CLI and the Engine API share. The daemon's wiring (`shoal agent`)
//! lives in the binary.

pub mod api;
pub mod cli;
pub mod cluster_agent;
pub mod engine_api;
pub mod filters;
pub mod service_logs;
