//! shoal's control side as a library: the parts of the control plane that are plain logic.

pub mod api;
pub mod cli;
pub mod cluster_agent;
pub mod docker;
pub mod executor;
pub mod gossip_keys;
pub mod gossip_member;
pub mod ipam;
pub mod node_state;
pub mod scheduler;
