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

/// Where the flow's entry goes after this frame (`entry` as found, in the table of
/// state `table`): UDP flows and TCP connections past their handshake in the live
/// table, connections opening (a SYN) in the opening one, closing (a FIN from the
/// client) in the closing one, none after a RST. An entry that already says so is not
/// written again.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn track(
    flow: &FlowKey,
    frontend: &Frontend,
    entry: Option<FlowValue>,
    table: u8,
    backend: u32,
    opens: bool,
    resets: bool,
    closes: bool,
) {
    if resets {
        // Nothing follows a reset: free the entry now.
        if entry.is_some() {
            forget(flow, table);
            count(Counter::FlowsEnded, 1);
        }
        return;
    }
    let state = if flow.protocol != PROTO_TCP {
        FLOW_ESTABLISHED
    } else if closes {
        FLOW_CLOSING
    } else if opens {
        // A SYN on a live connection's entry (its ports reused) keeps it live.
        if entry.is_some() && table == FLOW_ESTABLISHED {
            FLOW_ESTABLISHED
        } else {
            FLOW_OPENING
        }
    } else {
        match entry {
            // The handshake's last ACK (or any later segment): the connection is live.
            Some(_) if table == FLOW_OPENING => FLOW_ESTABLISHED,
            // Segments after the client's FIN (its last ACKs) stay where they are.
            Some(_) => table,
            // A connection found again (Maglev): live, it carries segments.
            None => FLOW_ESTABLISHED,
        }
    };
    let value = FlowValue {
        backend,
        frontend: frontend.id as u16,
        state,
        pad: 0,
    };
    if let Some(v) = entry {
        if v.backend == backend && table == state {
            return;
        }
        if table != state {
            forget(flow, table);
        }
    }
    let inserted = if state == FLOW_OPENING {
        MESH_OPENING.insert(flow, &value, 0)
    } else if state == FLOW_CLOSING {
        MESH_CLOSING.insert(flow, &value, 0)
    } else if entry.is_some() && table == FLOW_ESTABLISHED {
        MESH_FLOWS.insert(flow, &value, 0)
    } else {
        // Counted once per entry made, even when another CPU makes it at the same time
        // (the evictions are inferred from this count).
        match MESH_FLOWS.insert(flow, &value, BPF_NOEXIST) {
            Ok(()) => {
                count(Counter::LiveInserted, 1);
                Ok(())
            }
            Err(_) => MESH_FLOWS.insert(flow, &value, 0),
        }
    };
    if inserted.is_err() {
        count(Counter::FlowInsertFailed, 1);
    }
}

/// Removes the flow's entry from the table of state `table`.
#[inline(always)]
fn forget(flow: &FlowKey, table: u8) {
    if table == FLOW_ESTABLISHED {
        if MESH_FLOWS.remove(flow).is_ok() {
            count(Counter::LiveClosed, 1);
        }
    } else if table == FLOW_OPENING {
        let _ = MESH_OPENING.remove(flow);
    } else {
        let _ = MESH_CLOSING.remove(flow);
    }
}

/// The backend of the flow's entry `v` if it may still carry the flow.
#[inline(always)]
fn usable(v: &FlowValue, frontend: &Frontend, opens: bool) -> Option<Target> {
    let key = BackendKey {
        frontend: frontend.id,
        addr: v.backend,
    };
    // SAFETY: map values are plain data.
    let b = unsafe { MESH_BACKENDS.get(&key) }?;
    // A SYN on a draining backend's flow is a new connection reusing the ports (a
    // retransmitted SYN would find its backend healthy): it goes elsewhere.
    if b.state == STATE_UNHEALTHY || (opens && b.state == STATE_DRAINING) {
        return None;
    }
    Some(Target {
        backend: v.backend,
        node: b.node,
    })
}

/// A backend for a new flow.
#[inline(always)]
fn choose(flow: &FlowKey, frontend: &Frontend) -> Option<Target> {
    let backend = if frontend.balance == BALANCE_MAGLEV {
        if frontend.maglev_row >= shoal_common::mesh::MAX_MAGLEV_ROWS {
            return None;
        }
        let h = flow_hash(flow.src, flow.src_port, flow.dst_port, flow.protocol) % MAGLEV_SIZE;
        *MESH_MAGLEV.get(frontend.maglev_row * MAGLEV_SIZE + h)?
    } else {
        let count = frontend.count;
        if count == 0 || count > MAX_SLOTS || frontend.id >= MAX_FRONTENDS {
            return None;
        }
        let rr = MESH_RR.get_ptr_mut(frontend.id)?;
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        let n = unsafe {
            let n = *rr;
            *rr = n.wrapping_add(1);
            n
        };
        *MESH_SLOTS.get(frontend.id * MAX_SLOTS + n % count)?
    };
    if backend == 0 {
        return None;
    }
    let key = BackendKey {
        frontend: frontend.id,
        addr: backend,
    };
    // SAFETY: map values are plain data.
    let b = unsafe { MESH_BACKENDS.get(&key) }?;
    if b.state == STATE_UNHEALTHY {
        return None;
    }
    Some(Target {
        backend,
        node: b.node,
    })
}

/// Translates the destination, encapsulates and sends the frame on its way.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    cfg: &Config,
    frontend: &Frontend,
    flow: &FlowKey,
    target: Target,
    inner_len: usize,
    l4: usize,
    flags: u8,
) -> u32 {
    let protocol = flow.protocol;
    let local = target.node == cfg.vtep;
    // Next hop first, so a frame that cannot go anywhere is not rewritten for nothing.
    let mut macs = [0u8; 12];
    if local {
        let Some(eth) = ptr_at::<14>(ctx, 0) else {
            return drop(Counter::DropMalformed);
        };
        // SAFETY: bounds checked by ptr_at.
        let eth = unsafe { &*eth };
        // Outer: to this node (the frame's own destination MAC), from the client's MAC.
        macs.copy_from_slice(&eth[..12]);
    } else {
        let Some(hop) = next_hop(ctx, cfg, target.node, inner_len) else {
            return drop(Counter::DropNoRoute);
        };
        macs = hop.macs;
        let ifindex = hop.ifindex;
        return match rewrite(
            ctx, cfg, frontend, flow, &target, inner_len, l4, protocol, &macs, local,
        ) {
            Ok(()) => {
                count(Counter::Remote, 1);
                count(Counter::Bytes, inner_len as u64);
                count_frontend(frontend.id, FRONTEND_PACKETS, 1);
                count_frontend(frontend.id, FRONTEND_BYTES, inner_len as u64);
                // XDP_TX back out of the receiving interface, unless the agent asked for
                // a redirect: on a veth underlay a redirect flushes the receiving end,
                // which XDP_TX does not for a peer without an XDP program of its own
                // (GRO only), leaving frames stuck in its ring.
                if ifindex == ctx.ingress_ifindex() as u32 && cfg.flags & FLAG_TX_REDIRECT == 0 {
                    xdp_action::XDP_TX
                } else {
                    // SAFETY: plain helper call.
                    unsafe { bpf_redirect(ifindex, 0) as u32 }
                }
            }
            Err(c) => drop(c),
        };
    }
    match rewrite(
        ctx, cfg, frontend, flow, &target, inner_len, l4, protocol, &macs, local,
    ) {
        Ok(()) => {
            // The task's reply leaves from the address the client connected to.
            record_reply(
                &FlowKey {
                    src: target.backend,
                    dst: flow.src,
                    src_port: frontend.target_port,
                    dst_port: flow.src_port,
                    protocol,
                    pad: [0; 3],
                },
                flow.dst,
                flags,
            );
            count(Counter::Local, 1);
            count(Counter::Bytes, inner_len as u64);
            count_frontend(frontend.id, FRONTEND_PACKETS, 1);
            count_frontend(frontend.id, FRONTEND_BYTES, inner_len as u64);
            xdp_action::XDP_PASS
        }
        Err(c) => drop(c),
    }
}

/// The next hop towards `node`: from the cache while fresh, else from the kernel's FIB
/// (and cached). None: no route or no resolved neighbour.
#[inline(always)]
fn next_hop(ctx: &XdpContext, cfg: &Config, node: u32, inner_len: usize) -> Option<NextHop> {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: map values are plain data.
    if let Some(h) = unsafe { MESH_NEXTHOP.get(&node) } {
        if now.wrapping_sub(h.at_ns) < NEXTHOP_TTL_NS {
            return Some(*h);
        }
    }
    // SAFETY: an all-zero bpf_fib_lookup is a valid value.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_1.tot_len = (inner_len + ENCAP_LEN - ETH_HLEN) as u16;
    p.__bindgen_anon_3.ipv4_src = cfg.vtep;
    p.__bindgen_anon_4.ipv4_dst = node;
    // SAFETY: p is a valid bpf_fib_lookup of the size passed.
    let mut rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    if rc != 0 {
        // An output lookup is bound to the receiving interface: a node whose data path
        // (`--data-path-addr`) is on another interface is only found by a forwarding
        // lookup, as a routed frame would be (forwarding is on where the mesh runs).
        // SAFETY: an all-zero bpf_fib_lookup is a valid value.
        p = unsafe { core::mem::zeroed() };
        p.family = AF_INET;
        p.ifindex = ctx.ingress_ifindex() as u32;
        p.__bindgen_anon_1.tot_len = (inner_len + ENCAP_LEN - ETH_HLEN) as u16;
        p.__bindgen_anon_3.ipv4_src = cfg.vtep;
        p.__bindgen_anon_4.ipv4_dst = node;
        // SAFETY: as above.
        rc = unsafe {
            bpf_fib_lookup(
                ctx.ctx as *mut _,
                &mut p,
                core::mem::size_of::<FibParams>() as i32,
                0,
            )
        };
    }
    if rc != 0 {
        let _ = MESH_NEXTHOP.remove(&node);
        return None;
    }
    let mut hop = NextHop {
        macs: [0; 12],
        ifindex: p.ifindex,
        at_ns: now,
    };
    hop.macs[..6].copy_from_slice(&p.dmac);
    hop.macs[6..].copy_from_slice(&p.smac);
    let _ = MESH_NEXTHOP.insert(&node, &hop, 0);
    Some(hop)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    cfg: &Config,
    frontend: &Frontend,
    flow: &FlowKey,
    target: &Target,
    inner_len: usize,
    l4: usize,
    protocol: u8,
    macs: &[u8; 12],
    local: bool,
) -> Result<(), Counter> {
    // Inner headers: destination address and port, checksums, MACs.
    let ip = ptr_at::<20>(ctx, ETH_HLEN).ok_or(Counter::DropMalformed)?;
    // SAFETY: bounds checked by ptr_at; nothing else aliases the packet here.
    let ip = unsafe { &mut *ip };
    let old_check = ne16(ip, 10);
    ip[16..20].copy_from_slice(&target.backend.to_ne_bytes());
    ip[10..12].copy_from_slice(&csum_replace4(old_check, flow.dst, target.backend).to_ne_bytes());
    if protocol == PROTO_TCP {
        let tcp = ptr_at::<20>(ctx, l4).ok_or(Counter::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at.
        let tcp = unsafe { &mut *tcp };
        let mut c = ne16(tcp, 16);
        c = csum_replace4(c, flow.dst, target.backend);
        c = csum_replace2(c, flow.dst_port, frontend.target_port);
        tcp[2..4].copy_from_slice(&frontend.target_port.to_ne_bytes());
        tcp[16..18].copy_from_slice(&c.to_ne_bytes());
    } else {
        let udp = ptr_at::<8>(ctx, l4).ok_or(Counter::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at.
        let udp = unsafe { &mut *udp };
        let mut c = ne16(udp, 6);
        if c != 0 {
            c = csum_replace4(c, flow.dst, target.backend);
            c = csum_replace2(c, flow.dst_port, frontend.target_port);
            if c == 0 {
                c = 0xffff;
            }
        }
        udp[2..4].copy_from_slice(&frontend.target_port.to_ne_bytes());
        udp[6..8].copy_from_slice(&c.to_ne_bytes());
    }
    let eth = ptr_at::<12>(ctx, 0).ok_or(Counter::DropMalformed)?;
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { &mut *eth };
    let b = target.backend.to_ne_bytes();
    let d = flow.dst.to_ne_bytes();
    *eth = [
        0x02,
        0x42,
        b[0],
        b[1],
        b[2],
        b[3],
        MESH_MAC_PREFIX[0],
        MESH_MAC_PREFIX[1],
        d[0],
        d[1],
        d[2],
        d[3],
    ];

    // Outer headers.
    // SAFETY: plain helper call on our context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(ENCAP_LEN as i32)) } != 0 {
        return Err(Counter::DropEncap);
    }
    let out = ptr_at::<ENCAP_LEN>(ctx, 0).ok_or(Counter::DropEncap)?;
    // SAFETY: bounds checked by ptr_at.
    let out = unsafe { &mut *out };
    let (outer_src, outer_dst) = if local {
        (flow.src, cfg.vtep)
    } else {
        (cfg.vtep, target.node)
    };
    out[..12].copy_from_slice(macs);
    out[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    let ip_len = (inner_len + ENCAP_LEN - ETH_HLEN) as u16;
    let s = outer_src.to_ne_bytes();
    let t = outer_dst.to_ne_bytes();
    let l = ip_len.to_be_bytes();
    let mut hdr = [
        0x45, 0, l[0], l[1], 0, 0, 0x40, 0, 64, 17, 0, 0, s[0], s[1], s[2], s[3], t[0], t[1], t[2],
        t[3],
    ];
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u16::from_ne_bytes([hdr[i], hdr[i + 1]]) as u32;
        i += 2;
    }
    let check = (!fold(sum)).to_ne_bytes();
    hdr[10] = check[0];
    hdr[11] = check[1];
    out[14..34].copy_from_slice(&hdr);
    // UDP source port from the flow, so that the underlay can spread flows.
    let sport =
        0xc000u16 | (flow_hash(flow.src, flow.src_port, flow.dst_port, protocol) as u16 & 0x3fff);
    let udp_len = (ip_len - 20).to_be_bytes();
    let sp = sport.to_be_bytes();
    let dp = cfg.vxlan_port.to_ne_bytes();
    out[34..42].copy_from_slice(&[sp[0], sp[1], dp[0], dp[1], udp_len[0], udp_len[1], 0, 0]);
    let v = cfg.vni.to_be_bytes();
    out[42..50].copy_from_slice(&[0x08, 0, 0, 0, v[1], v[2], v[3], 0]);
    Ok(())
}
