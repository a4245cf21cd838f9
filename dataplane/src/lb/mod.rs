//! The load-balancing dataplane: service virtual IPs (east-west) and the ingress routing
//! mesh (north-south), from declared node state into eBPF maps.
//!
//! - [`state`]: declared load-balancing state (services, VIPs, published ports,
//!   backends) and its checks against the node's overlay state.

pub mod state;
