//! The ingress routing mesh, north-south: IPv4 TCP/UDP to a published port on one of
//! this node's addresses is given a backend (flow table, round-robin or Maglev), its
//! destination translated to the backend's ingress-network address and target port,
//! and the frame VXLAN-encapsulated into the ingress network: towards the backend's
//! node with XDP_TX, or towards this node itself with XDP_PASS so that the kernel's
//! VXLAN socket delivers it into the ingress network's namespace.
//!
//! The inner source MAC carries the address the client connected to
//! (`MESH_MAC_PREFIX` + 4 bytes), so the task's node can send the reply from it
//! (`tc_mesh.rs`): that node records it in `MESH_REPLY` here, in XDP, from the VXLAN
//! datagram the data path's guard let through (`from_overlay`), or as it forwards to a
//! task of its own. Everything the mesh does not own is left alone (`None`).
use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LOOKUP_OUTPUT},
    helpers::generated::{
        bpf_fib_lookup, bpf_ktime_get_ns, bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_get_buff_len,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use shoal_common::mesh::{
    flow_hash, BackendKey, BackendValue, Config, Counter, FlowKey, FlowValue, Frontend,
    FrontendKey, NextHop, RevPortKey, BALANCE_MAGLEV, DEFAULT_FLOWS, ENCAP_LEN, FLAG_TX_REDIRECT,
    FLOW_CLOSING, FLOW_ESTABLISHED, FLOW_OPENING, FRONTEND_BYTES, FRONTEND_COUNTERS,
    FRONTEND_NEW_FLOWS, FRONTEND_PACKETS, MAGLEV_SIZE, MAX_ADDRS, MAX_BACKENDS, MAX_FRONTENDS,
    MAX_MAGLEV_ROWS, MAX_NEXTHOPS, MAX_REVPORTS, MAX_SLOTS, MESH_MAC_PREFIX, NEXTHOP_TTL_NS,
    PROTO_TCP, PROTO_UDP, STATE_DRAINING, STATE_UNHEALTHY,
};

mod flows;
mod forward;

use flows::{choose, forget, track, usable};
use forward::forward;

#[map(name = "MESH_ADDRS")]
pub static MESH_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_ADDRS, 0);
#[map(name = "MESH_FRONTENDS")]
pub static MESH_FRONTENDS: HashMap<FrontendKey, Frontend> =
    HashMap::with_max_entries(MAX_FRONTENDS, 0);
#[map(name = "MESH_SLOTS")]
pub static MESH_SLOTS: Array<u32> = Array::with_max_entries(MAX_FRONTENDS * MAX_SLOTS, 0);
#[map(name = "MESH_MAGLEV")]
pub static MESH_MAGLEV: Array<u32> = Array::with_max_entries(MAX_MAGLEV_ROWS * MAGLEV_SIZE, 0);
#[map(name = "MESH_BACKENDS")]
pub static MESH_BACKENDS: HashMap<BackendKey, BackendValue> =
    HashMap::with_max_entries(MAX_BACKENDS, 0);
#[map(name = "MESH_FLOWS")]
pub static MESH_FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_FLOWS, 0);
#[map(name = "MESH_OPENING")]
pub static MESH_OPENING: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_FLOWS, 0);
#[map(name = "MESH_CLOSING")]
pub static MESH_CLOSING: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_FLOWS, 0);
#[map(name = "MESH_RR")]
pub static MESH_RR: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_FRONTENDS, 0);
#[map(name = "MESH_CONFIG")]
pub static MESH_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map(name = "MESH_REPLY")]
pub static MESH_REPLY: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(DEFAULT_FLOWS, 0);
#[map(name = "MESH_REPLY_OPENING")]
pub static MESH_REPLY_OPENING: LruHashMap<FlowKey, u32> =
    LruHashMap::with_max_entries(DEFAULT_FLOWS, 0);
#[map(name = "MESH_REPLY_CLOSING")]
pub static MESH_REPLY_CLOSING: LruHashMap<FlowKey, u32> =
    LruHashMap::with_max_entries(DEFAULT_FLOWS, 0);
#[map(name = "MESH_REVPORT")]
pub static MESH_REVPORT: HashMap<RevPortKey, u32> = HashMap::with_max_entries(MAX_REVPORTS, 0);
#[map(name = "MESH_NEXTHOP")]
pub static MESH_NEXTHOP: LruHashMap<u32, NextHop> = LruHashMap::with_max_entries(MAX_NEXTHOPS, 0);
#[map(name = "MESH_STATS")]
pub static MESH_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
#[map(name = "MESH_FRONTEND_STATS")]
pub static MESH_FRONTEND_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(MAX_FRONTENDS * FRONTEND_COUNTERS, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const AF_INET: u8 = 2;
const BPF_NOEXIST: u64 = 1;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

#[inline(always)]
pub fn count(counter: Counter, n: u64) {
    if let Some(slot) = MESH_STATS.get_ptr_mut(counter.index()) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += n };
    }
}

/// Adds `n` to counter `what` (`FRONTEND_*`) of frontend `id`.
#[inline(always)]
fn count_frontend(id: u32, what: u32, n: u64) {
    if let Some(slot) = MESH_FRONTEND_STATS.get_ptr_mut(id * FRONTEND_COUNTERS + what) {
        // SAFETY: per-CPU slot; only this CPU writes it while the program runs.
        unsafe { *slot += n };
    }
}

#[inline(always)]
fn ptr_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<*mut [u8; N]> {
    let start = ctx.data();
    if start + offset + N > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut [u8; N])
}

#[inline(always)]
fn ne32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline(always)]
fn ne16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
pub fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// RFC 1624 incremental update of a checksum for one 16-bit word (all values as read
/// natively from wire bytes).
#[inline(always)]
pub fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

#[inline(always)]
pub fn csum_replace4(check: u16, old: u32, new: u32) -> u16 {
    let c = csum_replace2(check, old as u16, new as u16);
    csum_replace2(c, (old >> 16) as u16, (new >> 16) as u16)
}

/// What was decided for the frame; the rewrite follows.
struct Target {
    backend: u32,
    node: u32,
}

/// Runs the mesh on a frame. `None`: not the mesh's (the caller passes it untouched).
#[inline(always)]
pub fn process(ctx: &XdpContext) -> Option<u32> {
    let cfg = MESH_CONFIG.get(0)?;
    if cfg.enabled == 0 {
        return None;
    }
    let eth = ptr_at::<ETH_HLEN>(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { &*eth };
    if u16::from_be_bytes([eth[12], eth[13]]) != ETH_P_IP {
        return None;
    }
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ptr_at::<20>(ctx, ETH_HLEN)? };
    if ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
        return None;
    }
    let dst = ne32(ip, 16);
    // SAFETY: map values are plain data.
    unsafe { MESH_ADDRS.get(&dst) }?;
    let protocol = ip[9];
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return None;
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x1fff != 0 {
        // A later fragment: its ports are in the first one. Not ours to judge.
        return None;
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let l4 = ETH_HLEN + ihl;
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { &*ptr_at::<4>(ctx, l4)? };
    let key = FrontendKey {
        protocol,
        pad: 0,
        port: ne16(ports, 2),
    };
    // SAFETY: map values are plain data.
    let frontend = *unsafe { MESH_FRONTENDS.get(&key) }?;
    // From here on the frame is the mesh's: it is forwarded or dropped, never passed.
    Some(mesh(ctx, cfg, frontend, dst, protocol, frag, ihl))
}

/// A VXLAN datagram (UDP header at `udp_offset`, destination port `dst_port`) that the
/// data path's guard let through: if it is on the mesh's VXLAN port, a meshed frame in
/// it (the ingress network's VNI, the marker in its inner source MAC) has its flow's
/// reply recorded with the address the client connected to. Returns whether the
/// datagram was on the mesh's VXLAN port (then it is the kernel's VXLAN socket's).
#[inline(always)]
pub fn from_overlay(ctx: &XdpContext, udp_offset: usize, dst_port: u16) -> bool {
    let Some(cfg) = MESH_CONFIG.get(0) else {
        return false;
    };
    if cfg.enabled == 0 || dst_port != cfg.vxlan_port {
        return false;
    }
    // Outer Ethernet, two VLAN tags and IPv4 with options end before 256 bytes: the
    // mask only tells the verifier so.
    let _ = record_from_vxlan(ctx, udp_offset & 0xff, cfg);
    true
}

#[inline(always)]
fn record_from_vxlan(ctx: &XdpContext, udp_offset: usize, cfg: &Config) -> Option<()> {
    // SAFETY (every dereference below): bounds checked by ptr_at.
    let vxlan = unsafe { &*ptr_at::<8>(ctx, udp_offset + 8)? };
    // The I flag: a VNI is present.
    if vxlan[0] & 0x08 == 0 || u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]) != cfg.vni {
        return None;
    }
    let inner = udp_offset + 16;
    let eth = unsafe { &*ptr_at::<ETH_HLEN>(ctx, inner)? };
    if eth[6..8] != MESH_MAC_PREFIX || u16::from_be_bytes([eth[12], eth[13]]) != ETH_P_IP {
        return None;
    }
    let ip = unsafe { &*ptr_at::<20>(ctx, inner + ETH_HLEN)? };
    if ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
        return None;
    }
    let protocol = ip[9];
    if (protocol != PROTO_TCP && protocol != PROTO_UDP)
        || u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0
    {
        return None;
    }
    let l4 = inner + ETH_HLEN + ((ip[0] & 0x0f) as usize) * 4;
    let ports = unsafe { &*ptr_at::<4>(ctx, l4)? };
    let flags = if protocol == PROTO_TCP {
        let tcp = unsafe { &*ptr_at::<14>(ctx, l4)? };
        tcp[13]
    } else {
        0
    };
    record_reply(
        &FlowKey {
            src: ne32(ip, 16),
            dst: ne32(ip, 12),
            src_port: ne16(ports, 2),
            dst_port: ne16(ports, 0),
            protocol,
            pad: [0; 3],
        },
        ne32(eth, 8),
        flags,
    );
    Some(())
}

/// Records that the reply `reply` (source = the backend) must leave from `published_to`,
/// `flags` being the TCP flags of the client's segment (0 for UDP). As the flow tables
/// do: a connection opening (SYN) in `MESH_REPLY_OPENING`, closing (FIN) in
/// `MESH_REPLY_CLOSING`, a live one in `MESH_REPLY`, none after a RST; an entry that
/// already says so is not written again.
#[inline(always)]
fn record_reply(reply: &FlowKey, published_to: u32, flags: u8) {
    // SAFETY (map reads): map values are plain data.
    let live = unsafe { MESH_REPLY.get(reply) }.copied();
    if reply.protocol == PROTO_TCP {
        if flags & TCP_RST != 0 {
            let _ = MESH_REPLY.remove(reply);
            let _ = MESH_REPLY_OPENING.remove(reply);
            let _ = MESH_REPLY_CLOSING.remove(reply);
            return;
        }
        if flags & TCP_FIN != 0 {
            if unsafe { MESH_REPLY_CLOSING.get(reply) }.copied() == Some(published_to) {
                return;
            }
            if live.is_some() {
                let _ = MESH_REPLY.remove(reply);
            }
            let _ = MESH_REPLY_OPENING.remove(reply);
            let _ = MESH_REPLY_CLOSING.insert(reply, &published_to, 0);
            count(Counter::RepliesRecorded, 1);
            return;
        }
        if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            if unsafe { MESH_REPLY_OPENING.get(reply) }.copied() == Some(published_to)
                && live.is_none()
            {
                return;
            }
            // A SYN reusing a live entry's ports: a new connection.
            if live.is_some() {
                let _ = MESH_REPLY.remove(reply);
            }
            let _ = MESH_REPLY_OPENING.insert(reply, &published_to, 0);
            count(Counter::RepliesRecorded, 1);
            return;
        }
        if live == Some(published_to) {
            return;
        }
        // The client's last ACKs after its FIN: the entry stays where it is.
        if unsafe { MESH_REPLY_CLOSING.get(reply) }.copied() == Some(published_to) {
            return;
        }
        let _ = MESH_REPLY_OPENING.remove(reply);
    } else if live == Some(published_to) {
        return;
    }
    let _ = MESH_REPLY.insert(reply, &published_to, 0);
    count(Counter::RepliesRecorded, 1);
}

#[inline(always)]
fn drop(counter: Counter) -> u32 {
    count(counter, 1);
    xdp_action::XDP_DROP
}

#[inline(always)]
fn mesh(
    ctx: &XdpContext,
    cfg: &Config,
    frontend: Frontend,
    dst: u32,
    protocol: u8,
    frag: u16,
    ihl: usize,
) -> u32 {
    if frag & 0x2000 != 0 {
        return drop(Counter::DropFragment);
    }
    let l4 = ETH_HLEN + ihl;
    let (flags, l4_len) = if protocol == PROTO_TCP {
        let Some(tcp) = ptr_at::<20>(ctx, l4) else {
            return drop(Counter::DropMalformed);
        };
        // SAFETY: bounds checked by ptr_at.
        let tcp = unsafe { &*tcp };
        if tcp[12] >> 4 < 5 {
            return drop(Counter::DropMalformed);
        }
        (tcp[13], 20usize)
    } else {
        if ptr_at::<8>(ctx, l4).is_none() {
            return drop(Counter::DropMalformed);
        }
        (0u8, 8usize)
    };
    let Some(ip) = ptr_at::<20>(ctx, ETH_HLEN) else {
        return drop(Counter::DropMalformed);
    };
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    // SAFETY: plain helper call on our context.
    let buff_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if total < ihl + l4_len || ETH_HLEN + total > buff_len {
        return drop(Counter::DropMalformed);
    }
    let src = ne32(ip, 12);
    let Some(ports) = ptr_at::<4>(ctx, l4) else {
        return drop(Counter::DropMalformed);
    };
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { &*ports };
    let flow = FlowKey {
        src,
        dst,
        src_port: ne16(ports, 0),
        dst_port: ne16(ports, 2),
        protocol,
        pad: [0; 3],
    };
    let tcp = protocol == PROTO_TCP;
    // A SYN alone opens a connection; a RST ends it; a FIN from the client closes it.
    let opens = tcp && (flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN;
    let resets = tcp && flags & TCP_RST != 0;
    let closes = tcp && !resets && flags & TCP_FIN != 0;
    let maglev = frontend.balance == BALANCE_MAGLEV;
    // Live flows first (most frames), then the connections opening, then closing.
    // `table`: the state of the table the entry was found in.
    // SAFETY (map reads here and below): map values are plain data.
    let (entry, table) = match unsafe { MESH_FLOWS.get(&flow) } {
        Some(v) => (Some(*v), FLOW_ESTABLISHED),
        None if !tcp => (None, FLOW_ESTABLISHED),
        None => match unsafe { MESH_OPENING.get(&flow) } {
            Some(v) => (Some(*v), FLOW_OPENING),
            None => (unsafe { MESH_CLOSING.get(&flow) }.copied(), FLOW_CLOSING),
        },
    };
    let target = match entry.and_then(|v| usable(&v, &frontend, opens)) {
        Some(t) => t,
        None => {
            if entry.is_none() && tcp && !opens {
                count(Counter::FlowMisses, 1);
            }
            if !opens && tcp && !maglev {
                if entry.is_some() {
                    forget(&flow, table);
                }
                return drop(Counter::DropNoFlow);
            }
            let Some(t) = choose(&flow, &frontend) else {
                return drop(Counter::DropNoBackend);
            };
            if entry.is_some() {
                count(Counter::Rechosen, 1);
            } else if opens || !tcp {
                count(Counter::NewFlows, 1);
                count_frontend(frontend.id, FRONTEND_NEW_FLOWS, 1);
            }
            t
        }
    };
    track(
        &flow,
        &frontend,
        entry,
        table,
        target.backend,
        opens,
        resets,
        closes,
    );
    forward(ctx, cfg, &frontend, &flow, target, buff_len, l4, flags)
}
