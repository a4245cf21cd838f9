//! XDP programs for the routing mesh's small-packet benchmark (`bench lb`), not for
//! nodes:
//! - `shoal_xdp_gen`: run with BPF_PROG_RUN in live-frames mode, it writes a 64-byte
//!   UDP frame from `BENCH_TEMPLATE` (its source port cycling over 256 flows) and sends
//!   it out with XDP_TX. Every header is written on every run: live frames recycle pages
//!   that keep what the path before wrote into them.
//! - `shoal_xdp_sink`: counts what arrives (`BENCH_SINK`, per CPU) and drops it.
//! - `shoal_xdp_bounce`: swaps the MACs and sends the frame back (the ceiling: the least
//!   an XDP program can do with a frame).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Length of the generated frame.
const FRAME: usize = 60;

#[map(name = "BENCH_TEMPLATE")]
static BENCH_TEMPLATE: Array<[u8; FRAME]> = Array::with_max_entries(1, 0);
#[map(name = "BENCH_SINK")]
static BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "BENCH_SEQ")]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn shoal_xdp_gen(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + FRAME > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let Some(t) = BENCH_TEMPLATE.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let n = match BENCH_SEQ.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        Some(p) => unsafe {
            let n = *p;
            *p = n.wrapping_add(1);
            n
        },
        None => 0,
    };
    // SAFETY: FRAME bytes at start were checked against data_end.
    let frame = unsafe { &mut *(start as *mut [u8; FRAME]) };
    *frame = *t;
    // Source port 40000 + (n % 256); the UDP checksum is 0 (none).
    let port = (40000u16 + (n & 0xff) as u16).to_be_bytes();
    frame[34] = port[0];
    frame[35] = port[1];
    xdp_action::XDP_TX
}

#[xdp]
pub fn shoal_xdp_sink(_ctx: XdpContext) -> u32 {
    if let Some(p) = BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *p += 1 };
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn shoal_xdp_bounce(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: 12 bytes checked against data_end.
    let eth = unsafe { &mut *(start as *mut [u8; 12]) };
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&eth[6..]);
    swapped[6..].copy_from_slice(&eth[..6]);
    *eth = swapped;
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
