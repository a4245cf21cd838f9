//! The underlay XDP program run with BPF_PROG_TEST_RUN on crafted packets.
//!
//! One table of fixtures for the parser and its counters, one for the data path's
//! guard (VXLAN accepted only from cluster VTEPs), run on the underlay program and on
//! the data-path one. In each table: description, input frame, expected verdict, expected output
//! frame, and the counters the frame must move. Packet-path work adds rows here: every
//! new case the parser or a rewrite has to get right is one more fixture.
//!
//! Needs root (BPF_PROG_TEST_RUN). Without root the test says so and passes, unless
//! SHOAL_REQUIRE_ROOT=1 (set by `cargo xtask test`), where it fails.
use std::net::Ipv4Addr;

use aya::programs::{TestRun, TestRunOptions};
use etherparse::{IpNumber, Ipv4Header, PacketBuilder, VlanId};
use shoal_common::underlay::Counter;
use shoal_dataplane::{guard::GuardPlan, underlay::UnderlayProgram};

const XDP_PASS: u32 = 2;
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const V4_A: [u8; 4] = [192, 168, 77, 11];
const V4_B: [u8; 4] = [192, 168, 77, 12];
const V6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa];
const V6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb];
const ETH_HLEN: usize = 14;

struct Fixture {
    description: &'static str,
    input: Vec<u8>,
    verdict: u32,
    /// `None`: the frame must leave exactly as it came in.
    output: Option<Vec<u8>>,
    /// Counters this frame must move, besides `packets` (+1) and `bytes` (+len),
    /// which every frame moves. Every counter not named must stay put.
    counters: &'static [Counter],
}

fn fixture(description: &'static str, input: Vec<u8>, counters: &'static [Counter]) -> Fixture {
    Fixture {
        description,
        input,
        verdict: XDP_PASS,
        output: None,
        counters,
    }
}

fn build(builder: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    builder(&mut out);
    out
}

fn v4_udp() -> Vec<u8> {
    build(|out| {
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 64)
            .udp(40000, 4789)
            .write(out, b"hello")
            .expect("build IPv4/UDP")
    })
}

fn v4_tcp() -> Vec<u8> {
    build(|out| {
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B, 64)
            .tcp(40000, 80, 1, 64240)
            .syn()
            .write(out, &[])
            .expect("build IPv4/TCP")
    })
}

fn v6_udp() -> Vec<u8> {
    build(|out| {
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(V6_A, V6_B, 64)
            .udp(40000, 53)
            .write(out, b"query")
            .expect("build IPv6/UDP")
    })
}

fn v6_tcp() -> Vec<u8> {
    build(|out| {
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(V6_A, V6_B, 64)
            .tcp(40000, 443, 7, 64240)
            .syn()
            .write(out, &[])
            .expect("build IPv6/TCP")
    })
}

/// Inserts an IPv6 extension header at the front of the chain of an untagged
/// IPv6 frame, fixing the fixed header's next header and payload length.
fn with_v6_ext(mut frame: Vec<u8>, ext_type: u8, mut ext: Vec<u8>) -> Vec<u8> {
    let ip = ETH_HLEN;
    ext[0] = frame[ip + 6];
    frame[ip + 6] = ext_type;
    let payload_len = u16::from_be_bytes([frame[ip + 4], frame[ip + 5]]) + ext.len() as u16;
    frame[ip + 4..ip + 6].copy_from_slice(&payload_len.to_be_bytes());
    frame.splice(ip + 40..ip + 40, ext);
    frame
}

/// An 8-byte options header (hop-by-hop or destination options) holding one PadN.
fn options_ext() -> Vec<u8> {
    vec![0, 0, 1, 4, 0, 0, 0, 0]
}

fn fragment_ext(offset_units: u16, more: bool) -> Vec<u8> {
    let field = (offset_units << 3) | u16::from(more);
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&field.to_be_bytes());
    ext.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    ext
}

fn v4_fragment(offset_units: u16) -> Vec<u8> {
    let mut frame = v4_udp();
    let ip = ETH_HLEN;
    frame[ip + 6..ip + 8].copy_from_slice(&(offset_units & 0x1fff).to_be_bytes());
    frame
}

fn fixtures() -> Vec<Fixture> {
    use Counter::*;
    let mut v4_options = Vec::new();
    {
        let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, V4_A, V4_B).expect("ipv4 header");
        // NOP NOP NOP EOL: IHL 6.
        ip.options = [1u8, 1, 1, 0][..].try_into().expect("options");
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .tcp(1, 2, 3, 4)
            .write(&mut v4_options, &[])
            .expect("build IPv4 with options");
    }
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&MAC_A);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&MAC_A);
    arp.extend_from_slice(&V4_A);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&V4_B);

    let mut lldp = v4_udp();
    lldp[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());

    let mut gre = v4_udp();
    gre[ETH_HLEN + 9] = 47;

    let mut many_exts = v6_udp();
    for _ in 0..9 {
        many_exts = with_v6_ext(many_exts, 60, options_ext());
    }

    let mut no_next = v6_udp();
    no_next[ETH_HLEN + 6] = 59;

    let mut ihl3 = v4_udp();
    ihl3[ETH_HLEN] = 0x43;

    let mut v6_in_v4 = v6_udp();
    v6_in_v4[12..14].copy_from_slice(&0x0800u16.to_be_bytes());

    let mut ext_overrun = with_v6_ext(v6_udp(), 0, options_ext());
    ext_overrun[ETH_HLEN + 40 + 1] = 200; // claims 1608 bytes of options

    let mut tcp_bad_offset = v4_tcp();
    tcp_bad_offset[ETH_HLEN + 20 + 12] = 0x40;

    let mut vlan_cut = v4_udp()[..12].to_vec();
    vlan_cut.extend_from_slice(&[0x81, 0x00, 0x00]);

    let mut v6_only_eth = v6_udp()[..ETH_HLEN].to_vec();
    v6_only_eth.extend_from_slice(&[0x60, 0, 0]);

    let mut garbage_v4 = v4_udp()[..ETH_HLEN].to_vec();
    garbage_v4.extend_from_slice(&[0xff; 46]);

    // Fixed pseudo-random bytes: same garbage on every run.
    let mut seed = 0x9e37_79b9u32;
    let noise: Vec<u8> = (0..60)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as u8
        })
        .collect();
    assert!(
        ![0x0800, 0x86dd, 0x0806, 0x8100, 0x88a8]
            .contains(&u16::from_be_bytes([noise[12], noise[13]])),
        "the noise seed gives a parsed ethertype; the fixture below expects other_l3"
    );

    vec![
        fixture("IPv4 UDP (VXLAN port)", v4_udp(), &[Ipv4, Udp]),
        fixture(
            "jumbo IPv4 UDP (9000 bytes, more than a page: a multi-buffer frame)",
            build(|out| {
                PacketBuilder::ethernet2(MAC_A, MAC_B)
                    .ipv4(V4_A, V4_B, 64)
                    .udp(40000, 4789)
                    .write(out, &[0x5a; 9000 - 14 - 20 - 8])
                    .expect("build jumbo")
            }),
            &[Ipv4, Udp],
        ),
        fixture("IPv4 TCP SYN", v4_tcp(), &[Ipv4, Tcp]),
        fixture(
            "IPv4 ICMP echo request",
            build(|out| {
                PacketBuilder::ethernet2(MAC_A, MAC_B)
                    .ipv4(V4_A, V4_B, 64)
                    .icmpv4_echo_request(1, 1)
                    .write(out, b"ping")
                    .expect("build ICMP")
            }),
            &[Ipv4, Icmp],
        ),
        fixture("IPv4 with options (IHL 6) TCP", v4_options, &[Ipv4, Tcp]),
        fixture(
            "IPv4 first fragment (offset 0, MF) is parsed to L4",
            {
                let mut f = v4_udp();
                f[ETH_HLEN + 6] = 0x20;
                f
            },
            &[Ipv4, Udp],
        ),
        fixture(
            "IPv4 non-first fragment",
            v4_fragment(185),
            &[Ipv4, Fragment],
        ),
        fixture("IPv4 GRE: another protocol", gre, &[Ipv4, OtherL4]),
        fixture("IPv6 UDP", v6_udp(), &[Ipv6, Udp]),
        fixture("IPv6 TCP SYN", v6_tcp(), &[Ipv6, Tcp]),
        fixture(
            "IPv6 ICMPv6 echo request",
            build(|out| {
                PacketBuilder::ethernet2(MAC_A, MAC_B)
                    .ipv6(V6_A, V6_B, 64)
                    .icmpv6_echo_request(1, 1)
                    .write(out, b"ping")
                    .expect("build ICMPv6")
            }),
            &[Ipv6, Icmpv6],
        ),
        fixture(
            "IPv6 hop-by-hop + destination options + UDP",
            with_v6_ext(with_v6_ext(v6_udp(), 60, options_ext()), 0, options_ext()),
            &[Ipv6, Udp],
        ),
        fixture(
            "IPv6 routing + first fragment + TCP",
            with_v6_ext(
                with_v6_ext(v6_tcp(), 44, fragment_ext(0, true)),
                43,
                vec![0, 0, 4, 0, 0, 0, 0, 0],
            ),
            &[Ipv6, Tcp],
        ),
        fixture(
            "IPv6 authentication header + UDP",
            with_v6_ext(v6_udp(), 51, vec![0, 1, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 1]),
            &[Ipv6, Udp],
        ),
        fixture(
            "IPv6 non-first fragment",
            with_v6_ext(v6_udp(), 44, fragment_ext(100, false)),
            &[Ipv6, Fragment],
        ),
        fixture("IPv6 no next header", no_next, &[Ipv6, OtherL4]),
        fixture(
            "IPv6 with 9 extension headers: more than the parser follows",
            many_exts,
            &[Ipv6, OtherL4],
        ),
        fixture(
            "802.1Q tagged IPv4 UDP",
            build(|out| {
                PacketBuilder::ethernet2(MAC_A, MAC_B)
                    .single_vlan(VlanId::try_new(10).expect("vlan id"))
                    .ipv4(V4_A, V4_B, 64)
                    .udp(1, 2)
                    .write(out, &[])
                    .expect("build VLAN")
            }),
            &[Vlan, Ipv4, Udp],
        ),
        fixture(
            "QinQ (two tags) IPv6 TCP",
            build(|out| {
                PacketBuilder::ethernet2(MAC_A, MAC_B)
                    .double_vlan(
                        VlanId::try_new(100).expect("vlan id"),
                        VlanId::try_new(200).expect("vlan id"),
                    )
                    .ipv6(V6_A, V6_B, 64)
                    .tcp(1, 2, 3, 4)
                    .write(out, &[])
                    .expect("build QinQ")
            }),
            &[Vlan, Ipv6, Tcp],
        ),
        fixture("ARP request", arp, &[Arp]),
        fixture("LLDP: another ethertype", lldp, &[OtherL3]),
        fixture(
            "truncated: IPv4 header cut at 10 bytes",
            v4_udp()[..ETH_HLEN + 10].to_vec(),
            &[Malformed],
        ),
        fixture(
            "truncated: TCP header cut at 12 bytes",
            v4_tcp()[..ETH_HLEN + 20 + 12].to_vec(),
            &[Ipv4, Malformed],
        ),
        fixture(
            "truncated: IPv6 UDP header cut at 4 bytes",
            v6_udp()[..ETH_HLEN + 40 + 4].to_vec(),
            &[Ipv6, Malformed],
        ),
        fixture(
            "truncated: IPv6 header with only 3 bytes",
            v6_only_eth,
            &[Malformed],
        ),
        fixture("truncated: VLAN tag cut in half", vlan_cut, &[Malformed]),
        fixture(
            "truncated: IPv6 extension header longer than the frame",
            ext_overrun,
            &[Ipv6, Malformed],
        ),
        fixture("IPv4 IHL 3 (below the minimum 5)", ihl3, &[Malformed]),
        fixture(
            "IPv4 ethertype carrying an IPv6 header",
            v6_in_v4,
            &[Malformed],
        ),
        fixture(
            "TCP data offset 4 (below the minimum 5)",
            tcp_bad_offset,
            &[Ipv4, Malformed],
        ),
        fixture(
            "garbage: IPv4 ethertype then 0xff bytes",
            garbage_v4,
            &[Malformed],
        ),
        fixture("garbage: 60 pseudo-random bytes", noise, &[OtherL3]),
    ]
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn underlay_xdp_fixture_table() {
    if !is_root() {
        assert!(
            std::env::var("SHOAL_REQUIRE_ROOT").as_deref() != Ok("1"),
            "BPF_PROG_TEST_RUN needs root and SHOAL_REQUIRE_ROOT=1 forbids skipping"
        );
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root");
        return;
    }
    let program = UnderlayProgram::load().expect("load the underlay XDP program");
    let xdp = program.program().expect("underlay program");
    let mut failures = Vec::new();
    for f in fixtures() {
        let before = program.stats().expect("read stats");
        let mut out = vec![0u8; f.input.len() + 256];
        let result = xdp.test_run(TestRunOptions {
            data_in: Some(&f.input),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        });
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: test run failed: {e}", f.description));
                continue;
            }
        };
        let delta = program.stats().expect("read stats").since(&before);
        if result.return_value != f.verdict {
            failures.push(format!(
                "{}: verdict {} (expected {})",
                f.description, result.return_value, f.verdict
            ));
        }
        out.truncate(result.data_size_out as usize);
        let expected_out = f.output.as_ref().unwrap_or(&f.input);
        if &out != expected_out {
            failures.push(format!(
                "{}: output frame differs\n  got      {:02x?}\n  expected {:02x?}",
                f.description, out, expected_out
            ));
        }
        for (counter, value) in delta.iter() {
            let expected = match counter {
                Counter::Packets => 1,
                Counter::Bytes => f.input.len() as u64,
                c if f.counters.contains(&c) => 1,
                _ => 0,
            };
            if value != expected {
                failures.push(format!(
                    "{}: counter {} moved by {value} (expected {expected})",
                    f.description,
                    counter.name()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The cluster VTEP of the guard fixtures (the other node); `V4_A` is not one.
const VTEP: [u8; 4] = [192, 168, 77, 12];

/// A UDP datagram from `src` to `V4_B`:`dport`, 8 bytes of VXLAN header and a frame.
fn vxlan_from(src: [u8; 4], dport: u16) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0, 0, 0x10, 0x01, 0];
    payload.extend_from_slice(&v4_tcp());
    build(|out| {
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(src, V4_B, 64)
            .udp(50000, dport)
            .write(out, &payload)
            .expect("build VXLAN")
    })
}

/// One guard fixture: the frame, its verdict, and the counters it must move besides
/// `packets` and `bytes` (which only the underlay program counts).
struct GuardRow {
    description: &'static str,
    input: Vec<u8>,
    verdict: u32,
    counters: &'static [Counter],
}

fn guard_row(
    description: &'static str,
    input: Vec<u8>,
    verdict: u32,
    counters: &'static [Counter],
) -> GuardRow {
    GuardRow {
        description,
        input,
        verdict,
        counters,
    }
}

/// Runs `rows` through `xdp`; `layers`: the program counts packets, bytes and layers
/// (the underlay one), or only the guard's counters (the data-path one).
fn run_guard_rows(
    program: &UnderlayProgram,
    xdp: &aya::programs::Xdp,
    layers: bool,
    rows: Vec<GuardRow>,
    failures: &mut Vec<String>,
) {
    for r in rows {
        let before = program.stats().expect("read stats");
        let mut out = vec![0u8; r.input.len() + 256];
        let result = match xdp.test_run(TestRunOptions {
            data_in: Some(&r.input),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        }) {
            Ok(result) => result,
            Err(e) => {
                failures.push(format!("{}: test run failed: {e}", r.description));
                continue;
            }
        };
        if result.return_value != r.verdict {
            failures.push(format!(
                "{}: verdict {} (expected {})",
                r.description, result.return_value, r.verdict
            ));
        }
        out.truncate(result.data_size_out as usize);
        if r.verdict == XDP_PASS && out != r.input {
            failures.push(format!("{}: a passed frame was changed", r.description));
        }
        let delta = program.stats().expect("read stats").since(&before);
        for (counter, value) in delta.iter() {
            let expected = match counter {
                Counter::Packets if layers => 1,
                Counter::Bytes if layers => r.input.len() as u64,
                c if r.counters.contains(&c)
                    && (layers
                        || matches!(c, Counter::VxlanFromCluster | Counter::VxlanDropped)) =>
                {
                    1
                }
                _ => 0,
            };
            if value != expected {
                failures.push(format!(
                    "{} ({}): counter {} moved by {value} (expected {expected})",
                    r.description,
                    if layers { "underlay" } else { "data path" },
                    counter.name()
                ));
            }
        }
    }
}

/// The data path's guard: with the cluster's VTEPs written, VXLAN on the data-path port
/// from any other source is dropped and counted (on the underlay and on a separate
/// data-path interface alike), whatever its encapsulation; everything else passes; a
/// VTEP removed from the cluster is refused from then on; off, nothing is checked.
#[test]
fn data_path_guard_fixture_table() {
    use Counter::*;
    const XDP_DROP: u32 = 1;
    if !is_root() {
        assert!(
            std::env::var("SHOAL_REQUIRE_ROOT").as_deref() != Ok("1"),
            "BPF_PROG_TEST_RUN needs root and SHOAL_REQUIRE_ROOT=1 forbids skipping"
        );
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root");
        return;
    }
    let mut program = UnderlayProgram::load().expect("load the underlay XDP program");
    let mut maps = program.take_guard_maps().expect("guard maps");
    let cluster =
        GuardPlan::enforce(4789, [Ipv4Addr::from(VTEP)].into_iter().collect()).expect("plan");
    maps.apply(&GuardPlan::default(), &cluster).expect("apply");
    assert_eq!(maps.read_plan().expect("read back"), cluster);

    let rows = || {
        let mut tagged = build(|out| {
            PacketBuilder::ethernet2(MAC_A, MAC_B)
                .single_vlan(VlanId::try_new(10).expect("vlan id"))
                .ipv4(V4_A, V4_B, 64)
                .udp(50000, 4789)
                .write(out, &[0x08, 0, 0, 0, 0, 0x10, 0x01, 0])
                .expect("build tagged VXLAN")
        });
        tagged.extend_from_slice(&v4_tcp());
        let mut with_options = Vec::new();
        {
            let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, V4_A, V4_B).expect("ipv4 header");
            ip.options = [1u8, 1, 1, 0][..].try_into().expect("options");
            PacketBuilder::ethernet2(MAC_A, MAC_B)
                .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
                .udp(50000, 4789)
                .write(&mut with_options, &[0x08, 0, 0, 0, 0, 0x10, 0x01, 0])
                .expect("build VXLAN with IP options");
        }
        let mut first_fragment = vxlan_from(V4_A, 4789);
        first_fragment[ETH_HLEN + 6] = 0x20;
        let mut later_fragment = vxlan_from(V4_A, 4789);
        later_fragment[ETH_HLEN + 6..ETH_HLEN + 8].copy_from_slice(&185u16.to_be_bytes());
        let v6_vxlan = build(|out| {
            PacketBuilder::ethernet2(MAC_A, MAC_B)
                .ipv6(V6_A, V6_B, 64)
                .udp(50000, 4789)
                .write(out, &[0x08, 0, 0, 0, 0, 0x10, 0x01, 0])
                .expect("build IPv6 VXLAN")
        });
        let from_vxlan_port = build(|out| {
            PacketBuilder::ethernet2(MAC_A, MAC_B)
                .ipv4(V4_A, V4_B, 64)
                .udp(4789, 53)
                .write(out, b"query")
                .expect("build UDP from 4789")
        });
        let tcp_4789 = build(|out| {
            PacketBuilder::ethernet2(MAC_A, MAC_B)
                .ipv4(V4_A, V4_B, 64)
                .tcp(40000, 4789, 1, 64240)
                .syn()
                .write(out, &[])
                .expect("build TCP to 4789")
        });
        vec![
            guard_row(
                "VXLAN from a cluster VTEP: passed",
                vxlan_from(VTEP, 4789),
                XDP_PASS,
                &[Ipv4, Udp, VxlanFromCluster],
            ),
            guard_row(
                "VXLAN from outside the cluster: dropped",
                vxlan_from(V4_A, 4789),
                XDP_DROP,
                &[Ipv4, Udp, VxlanDropped],
            ),
            guard_row(
                "802.1Q tagged VXLAN from outside: dropped",
                tagged,
                XDP_DROP,
                &[Vlan, Ipv4, Udp, VxlanDropped],
            ),
            guard_row(
                "VXLAN in IPv4 with options from outside: dropped",
                with_options,
                XDP_DROP,
                &[Ipv4, Udp, VxlanDropped],
            ),
            guard_row(
                "first fragment of VXLAN from outside: dropped (the rest cannot be reassembled)",
                first_fragment,
                XDP_DROP,
                &[Ipv4, Udp, VxlanDropped],
            ),
            guard_row(
                "later fragment: no ports, passed (nothing to reassemble it with)",
                later_fragment,
                XDP_PASS,
                &[Ipv4, Fragment],
            ),
            guard_row(
                "VXLAN over IPv6 (no VTEP is IPv6): dropped",
                v6_vxlan,
                XDP_DROP,
                &[Ipv6, Udp, VxlanDropped],
            ),
            guard_row(
                "UDP from outside to another port: passed",
                vxlan_from(V4_A, 4790),
                XDP_PASS,
                &[Ipv4, Udp],
            ),
            guard_row(
                "UDP from outside with source port 4789: passed",
                from_vxlan_port,
                XDP_PASS,
                &[Ipv4, Udp],
            ),
            guard_row(
                "TCP to 4789 from outside: not VXLAN, passed",
                tcp_4789,
                XDP_PASS,
                &[Ipv4, Tcp],
            ),
        ]
    };
    let mut failures = Vec::new();
    let underlay = program.program().expect("underlay program");
    let data_path = program.data_path_program().expect("data-path program");
    run_guard_rows(&program, underlay, true, rows(), &mut failures);
    run_guard_rows(&program, data_path, false, rows(), &mut failures);

    // The VTEP's node removed, another one joined: its datagrams are refused now.
    let removed =
        GuardPlan::enforce(4789, [Ipv4Addr::from(V4_A)].into_iter().collect()).expect("plan");
    let r = maps.apply(&cluster, &removed).expect("apply");
    assert_eq!((r.written, r.removed), (1, 1));
    run_guard_rows(
        &program,
        underlay,
        true,
        vec![
            guard_row(
                "VXLAN from a removed node's VTEP: dropped",
                vxlan_from(VTEP, 4789),
                XDP_DROP,
                &[Ipv4, Udp, VxlanDropped],
            ),
            guard_row(
                "VXLAN from the node that joined: passed",
                vxlan_from(V4_A, 4789),
                XDP_PASS,
                &[Ipv4, Udp, VxlanFromCluster],
            ),
        ],
        &mut failures,
    );

    // Another data-path port (`swarm init --data-path-port`): that one is checked.
    let moved = GuardPlan::enforce(4790, removed.vteps.clone()).expect("plan");
    maps.apply(&removed, &moved).expect("apply");
    run_guard_rows(
        &program,
        underlay,
        true,
        vec![
            guard_row(
                "the swarm's port moved: VXLAN from outside to it is dropped",
                vxlan_from(VTEP, 4790),
                XDP_DROP,
                &[Ipv4, Udp, VxlanDropped],
            ),
            guard_row(
                "the swarm's port moved: 4789 is an ordinary port",
                vxlan_from(VTEP, 4789),
                XDP_PASS,
                &[Ipv4, Udp],
            ),
        ],
        &mut failures,
    );

    // Off (the standalone mode): nothing is checked.
    maps.apply(&moved, &GuardPlan::default()).expect("apply");
    assert_eq!(maps.vtep_count(), 0);
    run_guard_rows(
        &program,
        underlay,
        true,
        vec![guard_row(
            "guard off: VXLAN from anywhere passes, uncounted",
            vxlan_from(V4_A, 4790),
            XDP_PASS,
            &[Ipv4, Udp],
        )],
        &mut failures,
    );
    assert!(
        failures.is_empty(),
        "{} fixture failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
