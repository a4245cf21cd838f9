//! XDP program on a node's underlay interface.
//!
//! It parses Ethernet (with up to two VLAN tags), IPv4, IPv6 (with its extension
//! headers), TCP, UDP and ICMP and counts what it saw in a per-CPU array; VXLAN on the
//! data-path port goes to the data path's guard (`xdp_guard.rs`: only cluster VTEPs may
//! send it), then the ingress routing mesh (`xdp_mesh.rs`) takes the frames to published
//! ports on this node's addresses. Every other frame passes untouched.
//!
//! A second program of the object, `shoal_xdp_data_path`, runs the guard alone on the
//! data-path interface when the node's data-path address is on another interface.
//!
//! The object also holds the mesh's reply-path TC programs (`tc_mesh.rs`): they share
//! the mesh's maps.
#![no_std]
#![no_main]

mod tc_mesh;
mod xdp_guard;
mod xdp_mesh;

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_get_buff_len, macros::map, macros::xdp,
    maps::PerCpuArray, programs::XdpContext,
};
use shoal_common::underlay::{Counter, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS};

#[map(name = "UNDERLAY_STATS")]
static UNDERLAY_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;

/// A complete UDP header in the frame (of a first or only fragment), and what the IP
/// header said of it: what the guard and the mesh's reply recording look at.
pub struct Udp {
    /// Offset of the UDP header in the frame.
    pub offset: usize,
    /// The IPv4 source as on the wire, read natively; 0 over IPv6.
    pub src_v4: u32,
    pub ipv6: bool,
    /// The destination port as on the wire, read natively.
    pub dst_port: u16,
}

/// What the parser found: the counter of the deepest layer, and the UDP header if any.
struct Parsed {
    layer: Counter,
    udp: Option<Udp>,
}

impl Parsed {
    fn layer(layer: Counter) -> Self {
        Parsed { layer, udp: None }
    }
}

// `frags`: the program accepts multi-buffer frames (jumbo MTUs, GSO packets on veth);
// it parses only the headers, which are in the first buffer.
#[xdp(frags)]
pub fn shoal_xdp_underlay(ctx: XdpContext) -> u32 {
    count(Counter::Packets, 1);
    // SAFETY: ctx.ctx is the xdp_md the kernel passed in; the helper only reads it.
    count(Counter::Bytes, unsafe { bpf_xdp_get_buff_len(ctx.ctx) });
    // Parsing errors are counted, never acted on: only the guard drops (VXLAN from
    // outside the cluster) and the mesh (frames to its published ports).
    let parsed = classify::<true>(&ctx);
    match parsed {
        Ok(Parsed { layer, udp }) => {
            count(layer, 1);
            if let Some(verdict) = udp.and_then(|u| xdp_guard::vxlan(&ctx, &u)) {
                return verdict;
            }
        }
        Err(Malformed) => count(Counter::Malformed, 1),
    }
    xdp_mesh::process(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// The data path's guard on the data-path interface (the node's `--data-path-addr` on
/// another interface than the underlay): VXLAN from outside the cluster is dropped, a
/// meshed flow from a cluster VTEP recorded for its reply; nothing else is looked at
/// or counted.
#[xdp(frags)]
pub fn shoal_xdp_data_path(ctx: XdpContext) -> u32 {
    match classify::<false>(&ctx) {
        Ok(Parsed { udp: Some(u), .. }) => {
            xdp_guard::vxlan(&ctx, &u).unwrap_or(xdp_action::XDP_PASS)
        }
        _ => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
pub(crate) fn count(counter: Counter, n: u64) {
    if let Some(slot) = UNDERLAY_STATS.get_ptr_mut(counter.index()) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += n };
    }
}

/// A header that ends past `data_end` or contradicts itself.
struct Malformed;

/// Returns the `N` bytes at `offset`, or `Malformed` if the frame is shorter.
#[inline(always)]
fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<&[u8; N], Malformed> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return Err(Malformed);
    }
    // SAFETY: the range [start+offset, start+offset+N) was checked against data_end.
    Ok(unsafe { &*((start + offset) as *const [u8; N]) })
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Finds the deepest layer of the frame and returns the counter for it, with the UDP
/// header when there is one. `COUNTING`: also count `Vlan`, `Ipv4` and `Ipv6` on the
/// way (the underlay program; the data-path one counts no layers).
#[inline(always)]
fn classify<const COUNTING: bool>(ctx: &XdpContext) -> Result<Parsed, Malformed> {
    let eth = bytes_at::<ETH_HLEN>(ctx, 0)?;
    let mut ethertype = be16(eth, 12);
    let mut offset = ETH_HLEN;
    let mut tagged = false;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // A tag is TCI (2 bytes) then the inner ethertype (2 bytes).
        let tag = bytes_at::<4>(ctx, offset)?;
        ethertype = be16(tag, 2);
        offset += 4;
        tagged = true;
    }
    if COUNTING && tagged {
        count(Counter::Vlan, 1);
    }
    match ethertype {
        ETH_P_IP => ipv4::<COUNTING>(ctx, offset),
        ETH_P_IPV6 => ipv6::<COUNTING>(ctx, offset),
        ETH_P_ARP => Ok(Parsed::layer(Counter::Arp)),
        _ => Ok(Parsed::layer(Counter::OtherL3)),
    }
}

#[inline(always)]
fn ipv4<const COUNTING: bool>(ctx: &XdpContext, offset: usize) -> Result<Parsed, Malformed> {
    let ip = bytes_at::<20>(ctx, offset)?;
    let version = ip[0] >> 4;
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if version != 4 || ihl < 20 {
        return Err(Malformed);
    }
    // Options, if any, must be in the frame too.
    if ctx.data() + offset + ihl > ctx.data_end() {
        return Err(Malformed);
    }
    if COUNTING {
        count(Counter::Ipv4, 1);
    }
    let fragment_offset = be16(ip, 6) & 0x1fff;
    if fragment_offset != 0 {
        return Ok(Parsed::layer(Counter::Fragment));
    }
    let src = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
    l4(ctx, ip[9], offset + ihl, src, false)
}

#[inline(always)]
fn ipv6<const COUNTING: bool>(ctx: &XdpContext, offset: usize) -> Result<Parsed, Malformed> {
    let ip = bytes_at::<40>(ctx, offset)?;
    if ip[0] >> 4 != 6 {
        return Err(Malformed);
    }
    if COUNTING {
        count(Counter::Ipv6, 1);
    }
    let mut next = ip[6];
    // Bounded to keep the verifier's view of `offset` small: each step adds at most 2 KiB.
    let mut offset = (offset + 40) & 0xffff;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let ext = bytes_at::<2>(ctx, offset)?;
                next = ext[0];
                offset = (offset + (ext[1] as usize + 1) * 8) & 0xffff;
            }
            IPPROTO_AH => {
                let ext = bytes_at::<2>(ctx, offset)?;
                next = ext[0];
                offset = (offset + (ext[1] as usize + 2) * 4) & 0xffff;
            }
            IPPROTO_FRAGMENT => {
                let ext = bytes_at::<8>(ctx, offset)?;
                if be16(ext, 2) >> 3 != 0 {
                    return Ok(Parsed::layer(Counter::Fragment));
                }
                next = ext[0];
                offset = (offset + 8) & 0xffff;
            }
            _ => return l4(ctx, next, offset, 0, true),
        }
    }
    // Still in the extension headers after MAX_IPV6_EXT_HEADERS of them.
    Ok(Parsed::layer(Counter::OtherL4))
}

#[inline(always)]
fn l4(
    ctx: &XdpContext,
    protocol: u8,
    offset: usize,
    src_v4: u32,
    ipv6: bool,
) -> Result<Parsed, Malformed> {
    let layer = match protocol {
        IPPROTO_TCP => {
            let tcp = bytes_at::<20>(ctx, offset)?;
            // Data offset below 5 words cannot hold the fixed header.
            if (tcp[12] >> 4) < 5 {
                return Err(Malformed);
            }
            Counter::Tcp
        }
        IPPROTO_UDP => {
            let udp = bytes_at::<8>(ctx, offset)?;
            return Ok(Parsed {
                layer: Counter::Udp,
                udp: Some(Udp {
                    offset,
                    src_v4,
                    ipv6,
                    dst_port: u16::from_ne_bytes([udp[2], udp[3]]),
                }),
            });
        }
        IPPROTO_ICMP => bytes_at::<4>(ctx, offset).map(|_| Counter::Icmp)?,
        IPPROTO_ICMPV6 => bytes_at::<4>(ctx, offset).map(|_| Counter::Icmpv6)?,
        _ => Counter::OtherL4,
    };
    Ok(Parsed::layer(layer))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
