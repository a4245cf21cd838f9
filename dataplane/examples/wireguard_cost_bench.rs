//! What the encrypted overlay's userspace part costs per packet, without the kernel:
//! boringtun's `encapsulate` and `decapsulate` (ChaCha20-Poly1305, counters, the replay
//! window) of one VXLAN datagram of an encrypted network at full MTU (1440 bytes: the
//! TUN's MTU on a 1500-byte underlay) and of a small one (128 bytes), between two
//! sessions made by a real handshake. Prints `BENCH wireguard <what> <ns> ns/packet`,
//! the median of 7 runs of 200,000 packets each. Needs nothing but a CPU.
use std::time::Instant;

use boringtun::noise::{Tunn, TunnResult};
use shoal_dataplane::wireguard::key::NodeKey;

const PACKETS: usize = 200_000;
const RUNS: usize = 7;

fn pair() -> (Tunn, Tunn) {
    let (a, b) = (
        NodeKey::generate().expect("key"),
        NodeKey::generate().expect("key"),
    );
    let mut ta = Tunn::new(a.secret().clone(), b.public(), None, None, 1, None);
    let mut tb = Tunn::new(b.secret().clone(), a.public(), None, None, 2, None);
    let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
    // Handshake: a initiates, b answers, a confirms with a keepalive.
    let init = match ta.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        other => panic!("no initiation: {other:?}"),
    };
    let resp = match tb.decapsulate(None, &init, &mut out) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        other => panic!("no response: {other:?}"),
    };
    let keepalive = match ta.decapsulate(None, &resp, &mut buf) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        other => panic!("no keepalive: {other:?}"),
    };
    let _ = tb.decapsulate(None, &keepalive, &mut out);
    (ta, tb)
}

/// An IPv4 packet of `len` bytes (what the TUN hands the device).
fn packet(len: usize) -> Vec<u8> {
    let mut p = vec![0x5au8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[12..16].copy_from_slice(&[192, 168, 77, 11]);
    p[16..20].copy_from_slice(&[192, 168, 77, 12]);
    p
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    for len in [1440usize, 128] {
        let (mut ta, mut tb) = pair();
        let p = packet(len);
        let (mut sealed, mut opened) = (vec![0u8; 2048], vec![0u8; 2048]);
        let (mut enc, mut dec) = (Vec::new(), Vec::new());
        let mut datagrams = Vec::with_capacity(PACKETS);
        for _ in 0..RUNS {
            datagrams.clear();
            let t = Instant::now();
            for _ in 0..PACKETS {
                match ta.encapsulate(&p, &mut sealed) {
                    TunnResult::WriteToNetwork(d) => datagrams.push(d.len()),
                    other => panic!("encapsulate: {other:?}"),
                }
            }
            enc.push(t.elapsed().as_nanos() as f64 / PACKETS as f64);
            // Decrypt fresh datagrams (a replay would be refused): seal them again, one
            // at a time, and time only the opening.
            let mut spent = 0u128;
            for _ in 0..PACKETS {
                let d = match ta.encapsulate(&p, &mut sealed) {
                    TunnResult::WriteToNetwork(d) => d.len(),
                    other => panic!("encapsulate: {other:?}"),
                };
                let t = Instant::now();
                match tb.decapsulate(None, &sealed[..d], &mut opened) {
                    TunnResult::WriteToTunnelV4(..) => {}
                    other => panic!("decapsulate: {other:?}"),
                }
                spent += t.elapsed().as_nanos();
            }
            dec.push(spent as f64 / PACKETS as f64);
        }
        println!(
            "BENCH wireguard encapsulate_{len}B {:.0} ns/packet",
            median(enc)
        );
        println!(
            "BENCH wireguard decapsulate_{len}B {:.0} ns/packet",
            median(dec)
        );
    }
}
