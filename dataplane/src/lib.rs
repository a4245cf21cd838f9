//! shoal's node dataplane.
//!
//! Module map:
//! - [`underlay`]: the XDP program on the node's underlay interface: load, attach
//!   (native mode when the driver has it, generic otherwise), pin, read its counters.
//! - [`guard`]: the data path's guard: which sources VXLAN on the data-path port is
//!   accepted from (the cluster's VTEPs), in the underlay program's maps.
//! - [`bpffs`]: the bpf filesystem and the pin directory every map lives under.
//! - [`iface`]: an interface's address and MTU, asked of the kernel.
//! - [`lb`]: service VIPs and the ingress routing mesh from declared state.
//! - [`overlay`]: VXLAN overlay networks from declared node state (reconciler).
//! - [`egress`]: task egress: the gateway bridge, its NAT, each task's veth into it.
//! - [`reconcile`]: the reconcilers as the agent runs them: each follows the declared
//!   node state the agent publishes in memory, on a thread of its own.
//! - [`sysctl`]: the node's kernel parameters the agent changes, journaled with their
//!   previous values so cleanup can restore them.
//! - [`probe`]: checks of the host (`shoal agent --validate`): root, BTF, XDP, bpffs,
//!   cgroup v2, free ports.
//! - [`wireguard`]: encrypted overlay networks: the node's WireGuard identity and the
//!   userspace device (boringtun) their VXLAN traffic goes through.
//! - [`cleanup`]: removes what the agent made on the host (`shoal agent cleanup`).
//!
//! Every layer takes declared node state and makes the kernel match it; none decides
//! what should exist.

pub mod bpffs;
pub mod cleanup;
pub mod egress;
pub mod guard;
pub mod iface;
pub mod lb;
pub mod overlay;
pub mod probe;
pub mod reconcile;
pub mod sysctl;
pub mod underlay;
pub mod wireguard;

/// The compiled eBPF object holding every program in `ebpf/shoal-ebpf`
/// (one ELF per binary target, built by `build.rs`).
pub(crate) mod objects {
    /// Object file of the underlay XDP program.
    pub static UNDERLAY: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shoal-xdp-underlay"));
    /// Object file of the service VIP socket programs (cgroup sock_addr).
    pub static SOCK_VIP: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shoal-sock-vip"));
    /// Object file of the routing mesh's benchmark programs (generator, sink, bounce).
    pub static MESH_BENCH: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shoal-xdp-bench"));
}
