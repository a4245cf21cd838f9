//! What the data path's guard costs per VXLAN frame in the underlay XDP program: the
//! program run with BPF_PROG_TEST_RUN (`repeat` frames a run, the kernel's average per
//! frame) on a VXLAN datagram carrying a 64-byte frame, with the guard off, on with the
//! sender a cluster VTEP (passed), and on with a sender outside the cluster (dropped).
//! Prints `BENCH guard <variant> <ns> ns/frame`, the median of 7 runs each. Needs root.
use std::{collections::BTreeSet, net::Ipv4Addr, process::ExitCode, time::Duration};

use aya::programs::{TestRun, TestRunOptions};
use shoal_dataplane::{guard::GuardPlan, underlay::UnderlayProgram};

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 7;
const VTEP: [u8; 4] = [192, 168, 77, 12];
const OUTSIDER: [u8; 4] = [192, 168, 77, 100];

/// Ethernet, IPv4 (no checksum: XDP does not check it), UDP to 4789, VXLAN, and an
/// inner 64-byte frame.
fn vxlan_from(src: [u8; 4]) -> Vec<u8> {
    let inner = [0x5au8; 64];
    let udp_len = (8 + 8 + inner.len()) as u16;
    let ip_len = 20 + udp_len;
    let mut f = vec![2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&src);
    f.extend_from_slice(&[192, 168, 77, 11]);
    f.extend_from_slice(&50000u16.to_be_bytes());
    f.extend_from_slice(&4789u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x08, 0, 0, 0, 0, 0x10, 0x01, 0]);
    f.extend_from_slice(&inner);
    f
}

fn median_ns(program: &UnderlayProgram, frame: &[u8]) -> Result<f64, String> {
    let xdp = program.program().map_err(|e| e.to_string())?;
    let mut runs: Vec<Duration> = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let mut out = vec![0u8; frame.len() + 256];
        let r = xdp
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: REPEAT,
                ..TestRunOptions::new()
            })
            .map_err(|e| e.to_string())?;
        runs.push(r.duration);
    }
    runs.sort();
    Ok(runs[RUNS / 2].as_secs_f64() * 1e9)
}

fn run() -> Result<Vec<(&'static str, f64)>, String> {
    let mut program = UnderlayProgram::load().map_err(|e| e.to_string())?;
    let mut maps = program.take_guard_maps().map_err(|e| e.to_string())?;
    let from_vtep = vxlan_from(VTEP);
    let from_outside = vxlan_from(OUTSIDER);
    let mut out = vec![("off", median_ns(&program, &from_vtep)?)];
    // A cluster of 100 nodes.
    let vteps: BTreeSet<Ipv4Addr> = (0..100u8)
        .map(|i| Ipv4Addr::new(192, 168, 77, i.wrapping_add(12)))
        .filter(|a| a.octets() != OUTSIDER)
        .collect();
    let on = GuardPlan::enforce(4789, vteps).map_err(|e| e.to_string())?;
    maps.apply(&GuardPlan::default(), &on)
        .map_err(|e| e.to_string())?;
    out.push(("on_from_vtep", median_ns(&program, &from_vtep)?));
    out.push(("on_from_outside", median_ns(&program, &from_outside)?));
    Ok(out)
}

fn main() -> ExitCode {
    match run() {
        Ok(results) => {
            for (name, ns) in results {
                println!("BENCH guard {name} {ns:.1} ns/frame");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("guard_cost_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
