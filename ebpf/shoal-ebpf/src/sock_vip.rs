//! Service VIPs balanced at the socket: cgroup `sock_addr` programs (connect, sendmsg,
//! recvmsg, getpeername; the `4` hooks for AF_INET sockets, the `6` hooks for v4-mapped
//! addresses on dual-stack AF_INET6 sockets), attached to the cgroup v2 root so they see
//! every socket.
//!
//! A connect or unconnected send to `VIP:port` from a namespace that may use the VIP
//! gets the next healthy backend in turn (round-robin per connection or UDP flow) as its
//! destination, same port: the kernel then builds packets to the backend directly, so
//! nothing is translated per packet and nothing here ever cuts a connection. Replies of
//! unconnected UDP flows get the VIP back as their source at recvmsg; getpeername of a
//! translated socket says the VIP. Layouts and names: `shoal_common::vip`.
//!
//! Every program returns 1 (carry on): a lookup miss leaves the socket alone.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::SockAddrContext,
    EbpfContext,
};
use shoal_common::vip::{
    BackendKey, BackendState, Counter, Destination, FlowKey, NodePortKey, ScopeKey, VipValue,
    MAX_BACKENDS, MAX_FLOWS, MAX_NODEPORTS, MAX_REVERSE, MAX_SCOPES, MAX_VIPS,
};

#[map(name = "VIP_SERVICES")]
static VIPS: HashMap<u32, VipValue> = HashMap::with_max_entries(MAX_VIPS, NO_PREALLOC);
#[map(name = "VIP_BACKENDS")]
static BACKENDS: HashMap<BackendKey, u32> = HashMap::with_max_entries(MAX_BACKENDS, NO_PREALLOC);
#[map(name = "VIP_BACKEND_STATE")]
static BACKEND_STATE: HashMap<BackendKey, u32> =
    HashMap::with_max_entries(MAX_BACKENDS, NO_PREALLOC);
#[map(name = "VIP_SCOPES")]
static SCOPES: HashMap<ScopeKey, u32> = HashMap::with_max_entries(MAX_SCOPES, NO_PREALLOC);
#[map(name = "VIP_UDP_FLOWS")]
static FLOWS: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map(name = "VIP_REVERSE")]
static REVERSE: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(MAX_REVERSE, 0);
#[map(name = "VIP_NODEPORTS")]
static NODEPORTS: HashMap<NodePortKey, Destination> =
    HashMap::with_max_entries(MAX_NODEPORTS, NO_PREALLOC);
#[map(name = "VIP_NODEPORT_REVERSE")]
static NODEPORT_REVERSE: LruHashMap<FlowKey, Destination> =
    LruHashMap::with_max_entries(MAX_REVERSE, 0);
#[map(name = "VIP_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
#[map(name = "VIP_CONNECTS")]
static CONNECTS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(MAX_VIPS, NO_PREALLOC);

/// Maps written by userspace only grow as the declared state does: no preallocation.
const NO_PREALLOC: u32 = aya_ebpf::bindings::BPF_F_NO_PREALLOC;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const ALLOW: i32 = 1;

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = STATS.get_ptr_mut(counter.index()) {
        // SAFETY: per-CPU slot; only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

// Context fields are read and written one 4-byte access at a time, as the verifier
// wants; volatile keeps the compiler from merging or splitting them.
#[inline(always)]
fn user_ip4(ctx: &SockAddrContext) -> u32 {
    // SAFETY: the kernel hands a valid bpf_sock_addr; field access is rewritten by it.
    unsafe { core::ptr::read_volatile(&(*ctx.sock_addr).user_ip4) }
}

#[inline(always)]
fn set_user_ip4(ctx: &SockAddrContext, ip: u32) {
    // SAFETY: as above; these hooks may write user_ip4.
    unsafe { core::ptr::write_volatile(&mut (*ctx.sock_addr).user_ip4, ip) }
}

/// Which address field a program works on: `user_ip4` (AF_INET sockets) or the IPv4
/// part of a v4-mapped `user_ip6` (`::ffff:a.b.c.d` from dual-stack AF_INET6 sockets).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6Mapped,
}

/// The IPv4 destination (or source, at recvmsg) the socket names, if any.
#[inline(always)]
fn address(ctx: &SockAddrContext, family: Family) -> Option<u32> {
    match family {
        Family::V4 => Some(user_ip4(ctx)),
        Family::V6Mapped => {
            // SAFETY: as above; user_ip6 is read one 4-byte word at a time.
            let (w0, w1, w2, w3) = unsafe {
                let a = &(*ctx.sock_addr).user_ip6;
                (
                    core::ptr::read_volatile(&a[0]),
                    core::ptr::read_volatile(&a[1]),
                    core::ptr::read_volatile(&a[2]),
                    core::ptr::read_volatile(&a[3]),
                )
            };
            (w0 == 0 && w1 == 0 && u32::from_be(w2) == 0x0000_ffff).then_some(w3)
        }
    }
}

#[inline(always)]
fn set_address(ctx: &SockAddrContext, family: Family, ip: u32) {
    match family {
        Family::V4 => set_user_ip4(ctx, ip),
        // SAFETY: as above; only the IPv4 word of the mapped address changes.
        Family::V6Mapped => unsafe {
            core::ptr::write_volatile(&mut (*ctx.sock_addr).user_ip6[3], ip)
        },
    }
}

#[inline(always)]
fn user_port(ctx: &SockAddrContext) -> u16 {
    // SAFETY: as above. The port is in network order in the low 16 bits.
    unsafe { core::ptr::read_volatile(&(*ctx.sock_addr).user_port) as u16 }
}

#[inline(always)]
fn set_user_port(ctx: &SockAddrContext, port: u16) {
    // SAFETY: as above; these hooks may write user_port (network order, low 16 bits).
    unsafe { core::ptr::write_volatile(&mut (*ctx.sock_addr).user_port, u32::from(port)) }
}

#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&(*ctx.sock_addr).protocol) }
}

#[inline(always)]
fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper only reads the context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The VIP's entry if `vip` is one and the socket's namespace may use it.
#[inline(always)]
fn vip_in_scope(ctx: &SockAddrContext, vip: u32) -> Option<*mut VipValue> {
    let value = VIPS.get_ptr_mut(&vip)?;
    // SAFETY: the helper only reads the context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let key = ScopeKey {
        netns,
        // SAFETY: value points into the map element, valid for this program run.
        network: unsafe { (*value).network },
        _pad: 0,
    };
    // SAFETY: read-only lookup, the value is not kept.
    unsafe { SCOPES.get(&key) }?;
    Some(value)
}

/// The next healthy backend of the VIP in turn.
#[inline(always)]
fn pick(vip: u32, value: *mut VipValue) -> Option<u32> {
    // SAFETY: value points into the map element, valid for this program run.
    let n = unsafe { (*value).count };
    if n == 0 {
        return None;
    }
    // The BPF target has no fetch-and-add before cpu v3, so the cursor is read and
    // written back: two connects at the same instant on two CPUs may get the same
    // backend, which only makes that turn of the round less even.
    // SAFETY: the cursor is a naturally aligned u64 inside the map element.
    let turn = unsafe {
        let cursor = core::ptr::addr_of_mut!((*value).cursor);
        let turn = core::ptr::read_volatile(cursor);
        core::ptr::write_volatile(cursor, turn.wrapping_add(1));
        turn
    };
    let key = BackendKey {
        vip,
        slot: (turn % u64::from(n)) as u32,
    };
    // SAFETY: read-only lookup, copied out.
    let backend = unsafe { BACKENDS.get(&key) }.copied()?;
    if let Some(n) = CONNECTS.get_ptr_mut(&vip) {
        // SAFETY: per-CPU value; only this CPU writes it while the program runs.
        unsafe { *n += 1 };
    }
    Some(backend)
}

#[inline(always)]
fn remember_reverse(socket: u64, backend: u32, port: u16, vip: u32) {
    let key = FlowKey {
        socket,
        addr: backend,
        port,
        _pad: 0,
    };
    if REVERSE.insert(&key, &vip, 0).is_err() {
        count(Counter::MapUpdateFailed);
    }
}

#[cgroup_sock_addr(connect4)]
pub fn shoal_vip_connect4(ctx: SockAddrContext) -> i32 {
    connect(&ctx, Family::V4)
}

/// Dual-stack sockets connecting to `::ffff:VIP`.
#[cgroup_sock_addr(connect6)]
pub fn shoal_vip_connect6(ctx: SockAddrContext) -> i32 {
    connect(&ctx, Family::V6Mapped)
}

#[inline(always)]
fn connect(ctx: &SockAddrContext, family: Family) -> i32 {
    let proto = protocol(ctx);
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return ALLOW;
    }
    let Some(vip) = address(ctx, family) else {
        return ALLOW;
    };
    let Some(value) = vip_in_scope(ctx, vip) else {
        connect_nodeport(ctx, family, vip, proto);
        return ALLOW;
    };
    let Some(backend) = pick(vip, value) else {
        count(Counter::NoBackend);
        return ALLOW;
    };
    set_address(ctx, family, backend);
    remember_reverse(socket_cookie(ctx), backend, user_port(ctx), vip);
    count(if proto == IPPROTO_TCP {
        Counter::ConnectTcp
    } else {
        Counter::ConnectUdp
    });
    ALLOW
}

/// The published port's frontend if `addr:port` is one of this node's addresses (or
/// 127.0.0.1) and a published port, for a socket of a namespace the agent serves.
#[inline(always)]
fn nodeport(ctx: &SockAddrContext, addr: u32, port: u16, proto: u32) -> Option<Destination> {
    let key = NodePortKey {
        // SAFETY: the helper only reads the context.
        netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        addr,
        port,
        protocol: proto as u8,
        _pad: 0,
    };
    // SAFETY: read-only lookup, copied out.
    unsafe { NODEPORTS.get(&key) }.copied()
}

#[inline(always)]
fn remember_nodeport(socket: u64, backend: u32, target: u16, addr: u32, port: u16) {
    let key = FlowKey {
        socket,
        addr: backend,
        port: target,
        _pad: 0,
    };
    let value = Destination {
        addr,
        port,
        _pad: 0,
    };
    if NODEPORT_REVERSE.insert(&key, &value, 0).is_err() {
        count(Counter::MapUpdateFailed);
    }
}

/// A connect to a published port on the node: the next healthy backend of the port
/// (its ingress-network address) and the target port.
#[inline(always)]
fn connect_nodeport(ctx: &SockAddrContext, family: Family, addr: u32, proto: u32) {
    let port = user_port(ctx);
    let Some(np) = nodeport(ctx, addr, port, proto) else {
        return;
    };
    let Some(value) = VIPS.get_ptr_mut(&np.addr) else {
        return;
    };
    let Some(backend) = pick(np.addr, value) else {
        count(Counter::NoBackend);
        return;
    };
    set_address(ctx, family, backend);
    set_user_port(ctx, np.port);
    remember_nodeport(socket_cookie(ctx), backend, np.port, addr, port);
    count(if proto == IPPROTO_TCP {
        Counter::ConnectTcp
    } else {
        Counter::ConnectUdp
    });
}

/// An unconnected UDP send to a published port on the node: the flow's backend while
/// it is declared and not unhealthy, else the next healthy one; target port.
#[inline(always)]
fn sendmsg_nodeport(ctx: &SockAddrContext, family: Family, addr: u32) {
    let port = user_port(ctx);
    let Some(np) = nodeport(ctx, addr, port, IPPROTO_UDP) else {
        return;
    };
    let Some(value) = VIPS.get_ptr_mut(&np.addr) else {
        return;
    };
    let socket = socket_cookie(ctx);
    let flow = FlowKey {
        socket,
        addr: np.addr,
        port,
        _pad: 0,
    };
    // SAFETY: read-only lookups, copied out.
    if let Some(backend) = unsafe { FLOWS.get(&flow) }.copied() {
        let key = BackendKey {
            vip: np.addr,
            slot: backend,
        };
        let state = unsafe { BACKEND_STATE.get(&key) }.copied();
        if state.is_some_and(|s| s != BackendState::Unhealthy as u32) {
            set_address(ctx, family, backend);
            set_user_port(ctx, np.port);
            remember_nodeport(socket, backend, np.port, addr, port);
            count(Counter::Sendmsg);
            return;
        }
    }
    let Some(backend) = pick(np.addr, value) else {
        count(Counter::NoBackend);
        return;
    };
    if FLOWS.insert(&flow, &backend, 0).is_err() {
        count(Counter::MapUpdateFailed);
    }
    remember_nodeport(socket, backend, np.port, addr, port);
    set_address(ctx, family, backend);
    set_user_port(ctx, np.port);
    count(Counter::UdpFlowNew);
    count(Counter::Sendmsg);
}

/// Unconnected UDP sends (the hook runs only for sends that name a destination).
#[cgroup_sock_addr(sendmsg4)]
pub fn shoal_vip_sendmsg4(ctx: SockAddrContext) -> i32 {
    sendmsg(&ctx, Family::V4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn shoal_vip_sendmsg6(ctx: SockAddrContext) -> i32 {
    sendmsg(&ctx, Family::V6Mapped)
}

#[inline(always)]
fn sendmsg(ctx: &SockAddrContext, family: Family) -> i32 {
    let Some(vip) = address(ctx, family) else {
        return ALLOW;
    };
    let Some(value) = vip_in_scope(ctx, vip) else {
        sendmsg_nodeport(ctx, family, vip);
        return ALLOW;
    };
    let socket = socket_cookie(ctx);
    let port = user_port(ctx);
    let flow = FlowKey {
        socket,
        addr: vip,
        port,
        _pad: 0,
    };
    // A flow keeps its backend while that backend is declared and not unhealthy.
    // SAFETY: read-only lookups, copied out.
    if let Some(backend) = unsafe { FLOWS.get(&flow) }.copied() {
        let state = unsafe { BACKEND_STATE.get(&BackendKey { vip, slot: backend }) }.copied();
        if state.is_some_and(|s| s != BackendState::Unhealthy as u32) {
            set_address(ctx, family, backend);
            count(Counter::Sendmsg);
            return ALLOW;
        }
    }
    let Some(backend) = pick(vip, value) else {
        count(Counter::NoBackend);
        return ALLOW;
    };
    if FLOWS.insert(&flow, &backend, 0).is_err() {
        count(Counter::MapUpdateFailed);
    }
    remember_reverse(socket, backend, port, vip);
    set_address(ctx, family, backend);
    count(Counter::UdpFlowNew);
    count(Counter::Sendmsg);
    ALLOW
}

/// The source of a reply from a backend to a translated socket becomes the VIP again.
#[cgroup_sock_addr(recvmsg4)]
pub fn shoal_vip_recvmsg4(ctx: SockAddrContext) -> i32 {
    if reverse(&ctx, Family::V4) {
        count(Counter::Recvmsg);
    }
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn shoal_vip_recvmsg6(ctx: SockAddrContext) -> i32 {
    if reverse(&ctx, Family::V6Mapped) {
        count(Counter::Recvmsg);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn shoal_vip_getpeername4(ctx: SockAddrContext) -> i32 {
    if reverse(&ctx, Family::V4) {
        count(Counter::Getpeername);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn shoal_vip_getpeername6(ctx: SockAddrContext) -> i32 {
    if reverse(&ctx, Family::V6Mapped) {
        count(Counter::Getpeername);
    }
    ALLOW
}

/// Rewrites the address to the VIP (or the node address and published port) if this
/// socket was translated towards it.
#[inline(always)]
fn reverse(ctx: &SockAddrContext, family: Family) -> bool {
    let Some(addr) = address(ctx, family) else {
        return false;
    };
    let key = FlowKey {
        socket: socket_cookie(ctx),
        addr,
        port: user_port(ctx),
        _pad: 0,
    };
    // SAFETY: read-only lookups, copied out.
    if let Some(vip) = unsafe { REVERSE.get(&key) }.copied() {
        set_address(ctx, family, vip);
        return true;
    }
    match unsafe { NODEPORT_REVERSE.get(&key) }.copied() {
        Some(d) => {
            set_address(ctx, family, d.addr);
            set_user_port(ctx, d.port);
            true
        }
        None => false,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
