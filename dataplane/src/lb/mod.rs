//! The load-balancing dataplane: service virtual IPs (east-west) and the ingress routing
//! mesh (north-south), from declared node state into eBPF maps.
//!
//! - [`state`]: declared load-balancing state (services, VIPs, published ports,
//!   backends) and its checks against the node's overlay state.
//! - [`vip`], [`vip_table`], [`vip_addr`]: service VIPs balanced at the socket (cgroup
//!   sock_addr programs), the plan that writes their maps, the VIPs' own addresses.
//! - [`mesh`]: the ingress routing mesh's maps from declared state (diff updates,
//!   Maglev table, adoption of pinned maps, counters); [`mesh_reply`]: its reply path
//!   (veth out of the ingress namespace, TC programs); [`mesh_bench`]: its
//!   small-packet benchmark.

pub mod mesh;
pub mod mesh_bench;
pub mod mesh_reply;
pub mod state;
pub mod vip;
pub mod vip_addr;
pub mod vip_table;
