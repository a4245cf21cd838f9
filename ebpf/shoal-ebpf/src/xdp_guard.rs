//! The data path's guard: VXLAN carries no authentication, so a datagram to the
//! data-path port with a network's VNI puts its frame into that overlay, and a meshed
//! frame in it would plant a reply entry (`tc_mesh.rs` sends the reply from the address
//! it names). While the agent enforces it (`UNDERLAY_GUARD`), a UDP datagram to the
//! data-path port passes only if its outer IPv4 source is a current cluster VTEP
//! (`UNDERLAY_VTEPS`, kept by the agent from the cluster's nodes); any other is dropped
//! and counted, IPv6 ones too (no VTEP is IPv6).
//!
//! What passes is then the mesh's to look at: a meshed frame in the ingress network's
//! VNI is recorded for its reply (`xdp_mesh::from_overlay`). Only here is the outer
//! header seen: once the kernel has decapsulated the frame, nothing tells who sent it.
use aya_ebpf::{
    bindings::xdp_action,
    macros::map,
    maps::{Array, HashMap},
    programs::XdpContext,
};
use shoal_common::underlay::{Counter, GuardConfig, MAX_VTEPS};

use crate::{count, xdp_mesh, Udp};

#[map(name = "UNDERLAY_GUARD")]
static UNDERLAY_GUARD: Array<GuardConfig> = Array::with_max_entries(1, 0);
#[map(name = "UNDERLAY_VTEPS")]
static UNDERLAY_VTEPS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_VTEPS, 0);

/// The verdict on a UDP datagram: Some when it is VXLAN for this node (dropped from
/// outside the cluster, passed to the kernel's VXLAN socket otherwise), None when it is
/// not the guard's (the caller goes on).
#[inline(always)]
pub fn vxlan(ctx: &XdpContext, udp: &Udp) -> Option<u32> {
    let enforced = UNDERLAY_GUARD
        .get(0)
        .is_some_and(|g| g.enforce == 1 && g.port == udp.dst_port);
    if enforced {
        // SAFETY: map values are plain data.
        let known = !udp.ipv6 && unsafe { UNDERLAY_VTEPS.get(&udp.src_v4) }.is_some();
        if !known {
            count(Counter::VxlanDropped, 1);
            return Some(xdp_action::XDP_DROP);
        }
        count(Counter::VxlanFromCluster, 1);
    }
    if !udp.ipv6 && xdp_mesh::from_overlay(ctx, udp.offset, udp.dst_port) {
        return Some(xdp_action::XDP_PASS);
    }
    enforced.then_some(xdp_action::XDP_PASS)
}
