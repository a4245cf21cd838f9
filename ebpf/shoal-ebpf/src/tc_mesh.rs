//! The routing mesh's reply path, on the node of the task (direct server return).
//!
//! - `shoal_tc_mesh_from_overlay`, `vxlan0` ingress in the ingress network's namespace:
//!   a meshed frame carries, in its inner source MAC, the address the client connected
//!   to; the flow's reply key is recorded with it (`MESH_REPLY`).
//! - `shoal_tc_mesh_reply`, `br0` ingress there: a task's reply to such a flow gets
//!   that address and the published port as its source (checksums fixed, offloaded ones
//!   too) and is redirected into the mesh veth, out of the namespace.
//! - `shoal_tc_mesh_to_underlay`, the host end of the mesh veth: next hop from the
//!   kernel's FIB, out of the interface it names.
//!
//! So the task sees the client's address, and the client sees its reply come from the
//! address and port it connected to, whichever node that was.
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LOOKUP_OUTPUT, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR,
        TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect},
    macros::classifier,
    programs::TcContext,
};
use shoal_common::mesh::{Counter, FlowKey, RevPortKey, MESH_MAC_PREFIX, PROTO_TCP, PROTO_UDP};

use crate::xdp_mesh::{count, MESH_CONFIG, MESH_REPLY, MESH_REVPORT};

const ETH_HLEN: usize = 14;
const AF_INET: u8 = 2;

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
    eth: [u8; 14],
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
        eth,
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
pub fn shoal_tc_mesh_from_overlay(ctx: TcContext) -> i32 {
    let Some(p) = parse(&ctx) else {
        return TC_ACT_OK as i32;
    };
    if p.eth[6..8] != MESH_MAC_PREFIX {
        return TC_ACT_OK as i32;
    }
    let published_to = ne32(&p.eth, 8);
    let reply = FlowKey {
        src: p.key.dst,
        dst: p.key.src,
        src_port: p.key.dst_port,
        dst_port: p.key.src_port,
        protocol: p.key.protocol,
        pad: [0; 3],
    };
    // SAFETY: map values are plain data.
    if unsafe { MESH_REPLY.get(&reply) }.copied() != Some(published_to) {
        let _ = MESH_REPLY.insert(&reply, &published_to, 0);
        count(Counter::RepliesRecorded, 1);
    }
    TC_ACT_OK as i32
}

#[classifier]
pub fn shoal_tc_mesh_reply(ctx: TcContext) -> i32 {
    let Some(p) = parse(&ctx) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: map values are plain data.
    let Some(&published_to) = (unsafe { MESH_REPLY.get(&p.key) }) else {
        return TC_ACT_OK as i32;
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
    let Some(p) = parse(&ctx) else {
        return TC_ACT_SHOT as i32;
    };
    // SAFETY: an all-zero bpf_fib_lookup is a valid value.
    let mut f: FibParams = unsafe { core::mem::zeroed() };
    f.family = AF_INET;
    let Some(cfg) = MESH_CONFIG.get(0) else {
        return TC_ACT_SHOT as i32;
    };
    // The lookup is an output lookup bound to the underlay (its forwarding must be on).
    f.ifindex = cfg.underlay_ifindex;
    f.__bindgen_anon_1.tot_len = (ctx.len() as usize - ETH_HLEN) as u16;
    f.__bindgen_anon_3.ipv4_src = p.key.src;
    f.__bindgen_anon_4.ipv4_dst = p.key.dst;
    // SAFETY: f is a valid bpf_fib_lookup of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut f,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    if rc != 0 {
        count(Counter::RepliesDropped, 1);
        return TC_ACT_SHOT as i32;
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&f.dmac);
    macs[6..].copy_from_slice(&f.smac);
    if ctx.store(0, &macs, 0).is_err() {
        count(Counter::RepliesDropped, 1);
        return TC_ACT_SHOT as i32;
    }
    count(Counter::RepliesOut, 1);
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(f.ifindex, 0) as i32 }
}
