//! The routing mesh's reply path, on the node of the task (direct server return).
//!
//! - `shoal_tc_mesh_reply`, `br0` ingress in the ingress network's namespace: a task's
//!   reply to a meshed flow gets the address the client connected to (recorded in
//!   `MESH_REPLY`, or `MESH_REPLY_OPENING`/`_CLOSING` while the connection opens or closes, by the
//!   underlay XDP program, `xdp_mesh.rs`) and the published port as
//!   its source (checksums fixed, offloaded ones too) and is redirected into the mesh
//!   veth, out of the namespace.
//! - `shoal_tc_mesh_to_underlay`, the host end of the mesh veth: out of the underlay,
//!   next hop and neighbour resolved by the kernel (`bpf_redirect_neigh`).
//!
//! So the task sees the client's address, and the client sees its reply come from the
//! address and port it connected to, whichever node that was.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};
use shoal_common::mesh::{Counter, FlowKey, RevPortKey, PROTO_TCP, PROTO_UDP};

use crate::xdp_mesh::{
    count, MESH_CONFIG, MESH_REPLY, MESH_REPLY_CLOSING, MESH_REPLY_OPENING, MESH_REVPORT,
};

const ETH_HLEN: usize = 14;
/// `skb->pkt_type` of a frame addressed to another host's MAC.
const PACKET_OTHERHOST: u32 = 3;

#[inline(always)]
fn ne32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline(always)]
fn ne16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

/// An IPv4 TCP/UDP packet's addresses, ports and header offsets.
struct Packet {
    key: FlowKey,
    l4: usize,
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    let eth: [u8; 14] = ctx.load(0).ok()?;
    if eth[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip: [u8; 20] = ctx.load(ETH_HLEN).ok()?;
    if ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
        return None;
    }
    let protocol = ip[9];
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return None;
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        return None;
    }
    let l4 = ETH_HLEN + ((ip[0] & 0x0f) as usize) * 4;
    let ports: [u8; 4] = ctx.load(l4).ok()?;
    Some(Packet {
        key: FlowKey {
            src: ne32(&ip, 12),
            dst: ne32(&ip, 16),
            src_port: ne16(&ports, 0),
            dst_port: ne16(&ports, 2),
            protocol,
            pad: [0; 3],
        },
        l4,
    })
}

#[classifier]
pub fn shoal_tc_mesh_reply(ctx: TcContext) -> i32 {
    let Some(p) = parse(&ctx) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: map values are plain data.
    // Live connections first, then those opening, then closing.
    let published_to = match unsafe { MESH_REPLY.get(&p.key) } {
        Some(&a) => a,
        // SAFETY (both): as above.
        None => match unsafe { MESH_REPLY_OPENING.get(&p.key) } {
            Some(&a) => a,
            None => match unsafe { MESH_REPLY_CLOSING.get(&p.key) } {
                Some(&a) => a,
                None => return TC_ACT_OK as i32,
            },
        },
    };
    match reply(&ctx, &p, published_to) {
        Some(ifindex) => {
            count(Counter::Replies, 1);
            // SAFETY: plain helper call.
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        None => {
            count(Counter::RepliesDropped, 1);
            TC_ACT_SHOT as i32
        }
    }
}

/// Rewrites the reply's source; returns the mesh veth to send it into.
#[inline(always)]
fn reply(ctx: &TcContext, p: &Packet, published_to: u32) -> Option<u32> {
    let cfg = MESH_CONFIG.get(0)?;
    if cfg.enabled == 0 || cfg.netns_veth_ifindex == 0 {
        return None;
    }
    let rk = RevPortKey {
        addr: p.key.src,
        port: p.key.src_port,
        protocol: p.key.protocol,
        pad: 0,
    };
    // SAFETY: map values are plain data.
    let published = unsafe { MESH_REVPORT.get(&rk) }.map(|v| *v as u16)?;
    let (check, mangled) = if p.key.protocol == PROTO_TCP {
        (p.l4 + 16, 0)
    } else {
        (p.l4 + 6, BPF_F_MARK_MANGLED_0 as u64)
    };
    ctx.store(ETH_HLEN + 12, &published_to, 0).ok()?;
    ctx.l3_csum_replace(ETH_HLEN + 10, p.key.src as u64, published_to as u64, 4)
        .ok()?;
    ctx.l4_csum_replace(
        check,
        p.key.src as u64,
        published_to as u64,
        BPF_F_PSEUDO_HDR as u64 | mangled | 4,
    )
    .ok()?;
    ctx.store(p.l4, &published, 0).ok()?;
    ctx.l4_csum_replace(check, p.key.src_port as u64, published as u64, mangled | 2)
        .ok()?;
    Some(cfg.netns_veth_ifindex)
}

#[classifier]
pub fn shoal_tc_mesh_to_underlay(ctx: TcContext) -> i32 {
    // Replies redirected here by `shoal_tc_mesh_reply` still carry the task's gateway
    // MAC as destination (PACKET_OTHERHOST on this end). Frames addressed to this end
    // itself, or broadcast (ARP), were routed by the ingress namespace to the host: the
    // replies to the node's own connections to published ports (and their ARP). The
    // host stack takes those.
    // SAFETY: reading a field of the skb the program runs on.
    if unsafe { (*ctx.skb.skb).pkt_type } != PACKET_OTHERHOST {
        return TC_ACT_OK as i32;
    }
    if parse(&ctx).is_none() {
        return TC_ACT_SHOT as i32;
    }
    let Some(cfg) = MESH_CONFIG.get(0) else {
        return TC_ACT_SHOT as i32;
    };
    if cfg.underlay_ifindex == 0 {
        count(Counter::RepliesDropped, 1);
        return TC_ACT_SHOT as i32;
    }
    count(Counter::RepliesOut, 1);
    // The kernel looks the next hop up (FIB, then neighbour, resolving it if needed:
    // the client may never have been answered from this node before) and sends the
    // reply out of the underlay.
    // SAFETY: a null params pointer asks the helper for its own FIB lookup.
    unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}
