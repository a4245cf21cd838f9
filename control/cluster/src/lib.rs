//! shoal's cluster core, independent of the agent's I/O.
//!
//! Module map:
//! - [`pki`]: the cluster's root CA, node certificates (role inside), renewal.
//! - [`token`]: join tokens (`SWMTKN-1-<CA digest>-<secret>`), rotation, checking.
//! - [`store`]: the managers' Raft-replicated cluster state.
//! - [`ipam`]: the allocator of what the store records: network subnets from the
//!   address pools, VNIs, task addresses and VIPs, published ports.
//! - [`registry_auth`]: services' registry credentials, sealed for the store with a key
//!   only managers can derive.
//! - [`manager`]: the network layer on port 2377 (mutual TLS): `swarm init/join/leave`,
//!   Raft between managers, forwarding to the leader, heartbeats, node management,
//!   autolock.
//! - [`seal`]: a manager's data key and the key that wraps it (the unlock key with
//!   autolock): its store and keys sealed at rest.
//! - [`private_fs`]: owner-only files and directories for everything secret on disk.

pub mod ipam;
pub mod manager;
pub mod pki;
pub mod private_fs;
pub mod registry_auth;
pub mod seal;
pub mod store;
pub mod token;
