//! The `shoal` command's library: the CLI's commands, the agent's local API (unix
//! socket, JSON lines) and the cluster role behind it. The daemon's wiring (`shoal
//! agent`) lives in the binary.

pub mod api;
pub mod cli;
pub mod cluster_agent;
pub mod engine_api;
pub mod filters;
