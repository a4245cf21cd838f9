//! Sending a flow's frame to its backend: the destination translated, the frame
//! VXLAN-encapsulated, the next hop found (FIB lookup, cached) and the frame sent out
//! (XDP_TX or a redirect) or passed to this node's own VXLAN socket.

use super::*;

/// Translates the destination, encapsulates and sends the frame on its way.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn forward(
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
pub(super) fn next_hop(
    ctx: &XdpContext,
    cfg: &Config,
    node: u32,
    inner_len: usize,
) -> Option<NextHop> {
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
pub(super) fn rewrite(
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
