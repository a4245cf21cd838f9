//! The ingress routing mesh (XDP on the underlay, TC on the reply path) run with
//! BPF_PROG_TEST_RUN on crafted frames, against maps written from a declared LbState
//! by `lb::mesh` (so the userspace plan and the programs are tested together).
//!
//! The test runs in a network namespace of its own (unshared by its thread) holding a
//! veth pair `ul0`/`ul1` with this node's address and permanent neighbours, so that the
//! programs' FIB lookups have something real to find.
//!
//! Needs root. Without root the test says so and passes, unless SHOAL_REQUIRE_ROOT=1.
use std::{net::Ipv4Addr, process::Command};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::{IpNumber, Ipv4Header, PacketBuilder};
use shoal_common::mesh::{self as m, Counter as MC, FlowKey};
use shoal_dataplane::{
    guard::GuardPlan,
    lb::{
        mesh::{addr, plan, port, MeshMaps, MeshPlan, MeshStats, NodeMesh},
        state::LbState,
    },
    overlay::state::{Network, OverlayState},
    underlay::UnderlayProgram,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// The mesh redirects (even back out of the receiving interface), see xdp_mesh.rs.
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const VNI: u32 = 4096;

const NODE: [u8; 4] = [192, 168, 77, 11];
const PEER: [u8; 4] = [192, 168, 77, 12];
const CLIENT: [u8; 4] = [192, 168, 77, 100];
const OTHER: [u8; 4] = [192, 168, 77, 99];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
/// Backends on the ingress network.
const LOCAL: [u8; 4] = [10, 255, 0, 3];
const REMOTE: [u8; 4] = [10, 255, 0, 4];
const REMOTE2: [u8; 4] = [10, 255, 0, 5];

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn sh(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i != 0, "no interface {name}");
    i
}

/// A private namespace for this thread: ul0 (this node, NODE_MAC) <-> ul1, with
/// permanent neighbours for the peer node and the client.
fn private_netns() {
    // SAFETY: unshare affects only this thread's namespaces (CLONE_NEWNET).
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    sh(&["link", "set", "lo", "up"]);
    sh(&[
        "link",
        "add",
        "ul0",
        "address",
        "02:00:00:00:00:0b",
        "type",
        "veth",
        "peer",
        "name",
        "ul1",
    ]);
    sh(&["addr", "add", "192.168.77.11/24", "dev", "ul0"]);
    sh(&["link", "set", "ul0", "up"]);
    sh(&["link", "set", "ul1", "up"]);
    sh(&[
        "neigh",
        "replace",
        "192.168.77.12",
        "lladdr",
        "02:00:00:00:00:0c",
        "dev",
        "ul0",
        "nud",
        "permanent",
    ]);
    sh(&[
        "neigh",
        "replace",
        "192.168.77.100",
        "lladdr",
        "02:00:00:00:00:64",
        "dev",
        "ul0",
        "nud",
        "permanent",
    ]);
    // The kernel's FIB lookup for XDP/TC answers only where forwarding is on.
    std::fs::write("/proc/sys/net/ipv4/conf/ul0/forwarding", "1").expect("forwarding on ul0");
}

fn overlay() -> OverlayState {
    OverlayState {
        networks: vec![Network {
            id: "ingress".into(),
            vni: VNI,
            subnet: "10.255.0.0/16".parse().unwrap(),
            gateway: "10.255.0.1".parse().unwrap(),
            mtu: None,
            encrypted: false,
        }],
        ..Default::default()
    }
}

/// 8080/tcp -> the local backend only; 8081/tcp and 5353/udp -> the remote one only;
/// 8082/tcp -> local (healthy) and remote (draining); 8083/tcp Maglev (the default)
/// over the two remote ones; 8084/tcp: no backend. All but 8083 round-robin (said by
/// the service, or for 8082 by its port). States of the named tasks can be overridden.
fn lb_state(overrides: &[(&str, &str)]) -> LbState {
    let st = |task: &str| {
        overrides
            .iter()
            .find(|(t, _)| *t == task)
            .map(|(_, s)| *s)
            .unwrap_or("healthy")
    };
    let text = format!(
        r#"{{"ingress_network": "ingress", "services": [
          {{"id": "local", "name": "local", "balance": "round_robin",
            "ports": [{{"protocol": "tcp", "published": 8080, "target": 80}}],
            "backends": [{{"task": "l1", "node": "192.168.77.11", "addresses": {{"ingress": "10.255.0.3"}}, "state": "{}"}}]}},
          {{"id": "remote", "name": "remote", "balance": "round_robin",
            "ports": [{{"protocol": "tcp", "published": 8081, "target": 81}},
                      {{"protocol": "udp", "published": 5353, "target": 53}}],
            "backends": [{{"task": "r1", "node": "192.168.77.12", "addresses": {{"ingress": "10.255.0.4"}}, "state": "{}"}}]}},
          {{"id": "mixed", "name": "mixed",
            "ports": [{{"protocol": "tcp", "published": 8082, "target": 82, "balance": "round_robin"}}],
            "backends": [{{"task": "m1", "node": "192.168.77.11", "addresses": {{"ingress": "10.255.0.6"}}, "state": "{}"}},
                         {{"task": "m2", "node": "192.168.77.12", "addresses": {{"ingress": "10.255.0.7"}}, "state": "{}"}}]}},
          {{"id": "maglev", "name": "maglev",
            "ports": [{{"protocol": "tcp", "published": 8083, "target": 83}}],
            "backends": [{{"task": "g1", "node": "192.168.77.12", "addresses": {{"ingress": "10.255.0.4"}}}},
                         {{"task": "g2", "node": "192.168.77.12", "addresses": {{"ingress": "10.255.0.5"}}}}]}},
          {{"id": "empty", "name": "empty", "balance": "round_robin",
            "ports": [{{"protocol": "tcp", "published": 8084, "target": 84}}]}}
        ]}}"#,
        st("l1"),
        st("r1"),
        st("m1"),
        st("m2")
    );
    let s: LbState = serde_json::from_str(&text).unwrap();
    s.validate(&overlay()).unwrap();
    s
}

fn node() -> NodeMesh {
    NodeMesh {
        vtep: Ipv4Addr::from(NODE),
        addresses: vec![Ipv4Addr::from(NODE)],
        vxlan_port: 4789,
        netns_veth_ifindex: 42,
        underlay_ifindex: ifindex("ul0"),
        tx_redirect: true,
    }
}

fn tcp(dst: [u8; 4], sport: u16, dport: u16, flags: &str, payload: &[u8]) -> Vec<u8> {
    tcp_from(CLIENT, dst, sport, dport, flags, payload)
}

fn tcp_from(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: &str,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64240);
    let b = match flags {
        "syn" => b.syn(),
        "ack" => b.ack(1),
        "rst" => b.rst().ack(1),
        "fin" => b.fin().ack(1),
        _ => b,
    };
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn udp(dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(CLIENT, dst, 64)
        .udp(sport, dport)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// The frame a task's namespace receives: `input` with the destination translated.
fn inner(input: &[u8], backend: [u8; 4], target: u16, published_to: [u8; 4]) -> Vec<u8> {
    let mut f = input.to_vec();
    let ihl = (f[14] & 0x0f) as usize * 4;
    let l4 = 14 + ihl;
    f[14 + 16..14 + 20].copy_from_slice(&backend);
    f[l4 + 2..l4 + 4].copy_from_slice(&target.to_be_bytes());
    // Recompute both checksums from scratch (independently of the program's
    // incremental updates).
    f[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let ip = Ipv4Header::from_slice(&f[14..]).unwrap().0;
    f[14 + 10..14 + 12].copy_from_slice(&ip.calc_header_checksum().to_be_bytes());
    let total = u16::from_be_bytes([f[16], f[17]]) as usize;
    let seg = &f[l4..14 + total];
    let (check_at, proto) = if f[14 + 9] == 6 { (16, 6u8) } else { (6, 17u8) };
    let had_udp_sum = proto == 17 && u16::from_be_bytes([seg[6], seg[7]]) != 0;
    let mut seg = seg.to_vec();
    seg[check_at..check_at + 2].copy_from_slice(&[0, 0]);
    let mut sum = 0u32;
    for w in [
        u16::from_be_bytes([f[26], f[27]]),
        u16::from_be_bytes([f[28], f[29]]),
        u16::from_be_bytes([backend[0], backend[1]]),
        u16::from_be_bytes([backend[2], backend[3]]),
        proto as u16,
        seg.len() as u16,
    ] {
        sum += w as u32;
    }
    for c in seg.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut check = !(sum as u16);
    if proto == 17 && check == 0 {
        check = 0xffff;
    }
    if proto == 6 || had_udp_sum {
        f[l4 + check_at..l4 + check_at + 2].copy_from_slice(&check.to_be_bytes());
    }
    f[..6].copy_from_slice(&[0x02, 0x42, backend[0], backend[1], backend[2], backend[3]]);
    f[6..12].copy_from_slice(&[
        m::MESH_MAC_PREFIX[0],
        m::MESH_MAC_PREFIX[1],
        published_to[0],
        published_to[1],
        published_to[2],
        published_to[3],
    ]);
    f
}

/// `inner` in VXLAN: outer Ethernet, IPv4 (DF, TTL 64, checksum), UDP (port from the
/// flow hash, checksum 0), VXLAN (VNI).
fn encap(
    inner: &[u8],
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    flow: (u32, u16, u16, u8),
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&macs.0);
    out.extend_from_slice(&macs.1);
    out.extend_from_slice(&[0x08, 0x00]);
    let mut ip =
        Ipv4Header::new((8 + 8 + inner.len()) as u16, 64, IpNumber::UDP, src, dst).unwrap();
    ip.dont_fragment = true;
    ip.identification = 0;
    ip.header_checksum = ip.calc_header_checksum();
    out.extend_from_slice(&ip.to_bytes());
    let sport = 0xc000u16 | (m::flow_hash(flow.0, flow.1, flow.2, flow.3) as u16 & 0x3fff);
    out.extend_from_slice(&sport.to_be_bytes());
    out.extend_from_slice(&4789u16.to_be_bytes());
    out.extend_from_slice(&((8 + 8 + inner.len()) as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    let v = VNI.to_be_bytes();
    out.extend_from_slice(&[0x08, 0, 0, 0, v[1], v[2], v[3], 0]);
    out.extend_from_slice(inner);
    out
}

fn flow_of(frame: &[u8]) -> (u32, u16, u16, u8) {
    let ihl = (frame[14] & 0x0f) as usize * 4;
    let l4 = 14 + ihl;
    (
        u32::from_ne_bytes(frame[26..30].try_into().unwrap()),
        u16::from_ne_bytes([frame[l4], frame[l4 + 1]]),
        u16::from_ne_bytes([frame[l4 + 2], frame[l4 + 3]]),
        frame[23],
    )
}

fn local_out(input: &[u8], backend: [u8; 4], target: u16) -> Vec<u8> {
    encap(
        &inner(input, backend, target, NODE),
        (NODE_MAC, CLIENT_MAC),
        CLIENT,
        NODE,
        flow_of(input),
    )
}

fn remote_out(input: &[u8], backend: [u8; 4], target: u16) -> Vec<u8> {
    encap(
        &inner(input, backend, target, NODE),
        (PEER_MAC, NODE_MAC),
        NODE,
        PEER,
        flow_of(input),
    )
}

struct Row {
    description: &'static str,
    input: Vec<u8>,
    verdict: u32,
    /// None: leaves exactly as it came.
    output: Option<Vec<u8>>,
    /// Mesh counters that must move by one (every other one stays, `mesh_bytes`
    /// aside, which moves by the frame length when a frame is forwarded).
    counters: &'static [MC],
}

fn row(
    description: &'static str,
    input: Vec<u8>,
    verdict: u32,
    output: Option<Vec<u8>>,
    counters: &'static [MC],
) -> Row {
    Row {
        description,
        input,
        verdict,
        output,
        counters,
    }
}

struct Harness {
    program: UnderlayProgram,
    maps: MeshMaps,
    applied: MeshPlan,
    ul0: u32,
    ul1: u32,
}

impl Harness {
    fn new(flows: u32) -> Self {
        let mut program = UnderlayProgram::load_with_flows(flows).expect("load");
        let mut maps = program.take_mesh_maps().expect("mesh maps");
        let applied = plan(&lb_state(&[]), &overlay(), &node(), &MeshPlan::default()).unwrap();
        maps.apply(&MeshPlan::default(), &applied).expect("apply");
        Self {
            program,
            maps,
            applied,
            ul0: ifindex("ul0"),
            ul1: ifindex("ul1"),
        }
    }

    fn set_state(&mut self, overrides: &[(&str, &str)]) -> usize {
        let next = plan(&lb_state(overrides), &overlay(), &node(), &self.applied).unwrap();
        let r = self.maps.apply(&self.applied, &next).expect("apply");
        self.applied = next;
        r.written + r.removed
    }

    fn xdp(&self, input: &[u8]) -> (u32, Vec<u8>) {
        let xdp = self.program.program().unwrap();
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(input.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&self.ul0.to_ne_bytes());
        let mut out = vec![0u8; input.len() + 256];
        let r = xdp
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::new()
            })
            .expect("xdp test run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn tc(&self, name: &str, input: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        let prog = self.program.tc_program(name).unwrap();
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; input.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::new()
            })
            .expect("tc test run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn stats(&self) -> MeshStats {
        self.maps.stats().unwrap()
    }
}

fn check_counters(
    failures: &mut Vec<String>,
    what: &str,
    delta: &MeshStats,
    expected: &[MC],
    bytes: u64,
) {
    for (c, v) in delta.iter() {
        let want = if c == MC::Bytes {
            bytes
        } else {
            expected.iter().filter(|e| **e == c).count() as u64
        };
        if v != want {
            failures.push(format!(
                "{what}: counter {} moved by {v} (expected {want})",
                c.name()
            ));
        }
    }
}

fn run_rows(h: &Harness, rows: Vec<Row>, failures: &mut Vec<String>) {
    for r in rows {
        let before = h.stats();
        let (verdict, out) = h.xdp(&r.input);
        let delta = h.stats().since(&before);
        if verdict != r.verdict {
            failures.push(format!(
                "{}: verdict {verdict} (expected {})",
                r.description, r.verdict
            ));
        }
        let expected = r.output.as_ref().unwrap_or(&r.input);
        if r.verdict != XDP_DROP && &out != expected {
            failures.push(format!(
                "{}: output differs\n  got      {:02x?}\n  expected {:02x?}",
                r.description, out, expected
            ));
        }
        let forwarded = r.counters.contains(&MC::Local) || r.counters.contains(&MC::Remote);
        let bytes = if forwarded { r.input.len() as u64 } else { 0 };
        check_counters(failures, r.description, &delta, r.counters, bytes);
    }
}

/// True as root; otherwise says the test is skipped, or fails under
/// SHOAL_REQUIRE_ROOT=1 (`cargo xtask test`), which forbids skipping.
fn root_or_skip() -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("SHOAL_REQUIRE_ROOT").as_deref() != Ok("1"),
        "BPF_PROG_TEST_RUN needs root and SHOAL_REQUIRE_ROOT=1 forbids skipping"
    );
    eprintln!("skipped: BPF_PROG_TEST_RUN needs root");
    false
}

#[test]
fn mesh_fixture_table() {
    if !root_or_skip() {
        return;
    }
    // The whole test runs on this thread, inside its own namespace.
    std::thread::spawn(fixture_table_in_netns)
        .join()
        .expect("fixture thread");
}

fn fixture_table_in_netns() {
    use MC::*;
    private_netns();
    let mut h = Harness::new(1024);
    let mut failures = Vec::new();

    let syn_local = tcp(NODE, 40000, 8080, "syn", &[]);
    let ack_local = tcp(NODE, 40000, 8080, "ack", b"GET / HTTP/1.0\r\n\r\n");
    let fin_local = tcp(NODE, 40000, 8080, "fin", &[]);
    let rst_local = tcp(NODE, 40000, 8080, "rst", &[]);
    let syn_remote = tcp(NODE, 40001, 8081, "syn", &[]);
    let udp_remote = udp(NODE, 40002, 5353, b"query");
    let mut udp_nosum = udp(NODE, 40003, 5353, b"no checksum");
    udp_nosum[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let mut options = Vec::new();
    {
        let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT, NODE).unwrap();
        ip.options = [1u8, 1, 1, 0][..].try_into().unwrap();
        PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .tcp(40004, 8080, 5, 64240)
            .syn()
            .write(&mut options, &[])
            .unwrap();
    }
    let mut first_fragment = udp(NODE, 40005, 5353, b"fragment");
    first_fragment[14 + 6] = 0x20;
    first_fragment[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let c = Ipv4Header::from_slice(&first_fragment[14..])
        .unwrap()
        .0
        .calc_header_checksum();
    first_fragment[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    let mut later_fragment = first_fragment.clone();
    later_fragment[14 + 6..14 + 8].copy_from_slice(&185u16.to_be_bytes());
    let mut too_long = syn_local.clone();
    too_long[16..18].copy_from_slice(&1400u16.to_be_bytes());
    let icmp_error = {
        // Port unreachable about a datagram this node sent to the client.
        let mut quoted = Vec::new();
        PacketBuilder::ipv4(NODE, CLIENT, 64)
            .udp(8080, 40000)
            .write(&mut quoted, &[])
            .unwrap();
        let mut out = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
            .ipv4(CLIENT, NODE, 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut out, &quoted)
            .unwrap();
        out
    };

    let rows = vec![
        row(
            "TCP SYN to a published port, local backend: encapsulated to this node, passed, its reply recorded",
            syn_local.clone(),
            XDP_PASS,
            Some(local_out(&syn_local, LOCAL, 80)),
            &[Local, NewFlows, RepliesRecorded],
        ),
        row(
            "same flow, SYN retransmitted: same backend from the opening table",
            syn_local.clone(),
            XDP_PASS,
            Some(local_out(&syn_local, LOCAL, 80)),
            &[Local],
        ),
        row(
            "same flow, the handshake's ACK with data: same backend, the flow (and its reply) moves to the live table",
            ack_local.clone(),
            XDP_PASS,
            Some(local_out(&ack_local, LOCAL, 80)),
            &[Local, LiveInserted, RepliesRecorded],
        ),
        row(
            "same flow, data segment: same backend from the live table",
            ack_local.clone(),
            XDP_PASS,
            Some(local_out(&ack_local, LOCAL, 80)),
            &[Local],
        ),
        row(
            "same flow, FIN from the client: forwarded, the flow (and its reply) leaves the live table for the closing one",
            fin_local.clone(),
            XDP_PASS,
            Some(local_out(&fin_local, LOCAL, 80)),
            &[Local, LiveClosed, RepliesRecorded],
        ),
        row(
            "same flow, its last ACK after the FIN: same backend from the closing table",
            ack_local.clone(),
            XDP_PASS,
            Some(local_out(&ack_local, LOCAL, 80)),
            &[Local],
        ),
        row(
            "TCP SYN, remote backend: encapsulated to its node, next hop from the FIB, XDP_REDIRECT",
            syn_remote.clone(),
            XDP_REDIRECT,
            Some(remote_out(&syn_remote, REMOTE, 81)),
            &[Remote, NewFlows],
        ),
        row(
            "UDP with checksum, remote backend: a live flow at once",
            udp_remote.clone(),
            XDP_REDIRECT,
            Some(remote_out(&udp_remote, REMOTE, 53)),
            &[Remote, NewFlows, LiveInserted],
        ),
        row(
            "UDP without checksum (0 stays 0)",
            udp_nosum.clone(),
            XDP_REDIRECT,
            Some(remote_out(&udp_nosum, REMOTE, 53)),
            &[Remote, NewFlows, LiveInserted],
        ),
        row(
            "IPv4 with options (IHL 6) to a published port",
            options.clone(),
            XDP_PASS,
            Some(local_out(&options, LOCAL, 80)),
            &[Local, NewFlows, RepliesRecorded],
        ),
        row(
            "not for us: another address, published port",
            tcp(OTHER, 40000, 8080, "syn", &[]),
            XDP_PASS,
            None,
            &[],
        ),
        row(
            "not for us: our address, unpublished port",
            tcp(NODE, 40000, 9999, "syn", &[]),
            XDP_PASS,
            None,
            &[],
        ),
        row(
            "not for us: UDP to an unpublished port (VXLAN)",
            udp(NODE, 40000, 4789, b"vxlan"),
            XDP_PASS,
            None,
            &[],
        ),
        row(
            "ICMP error to our address passes to the kernel",
            icmp_error,
            XDP_PASS,
            None,
            &[],
        ),
        row(
            "first fragment to a published port: dropped and counted",
            first_fragment,
            XDP_DROP,
            None,
            &[DropFragment],
        ),
        row(
            "later fragment: ports unknown, passed untouched",
            later_fragment,
            XDP_PASS,
            None,
            &[],
        ),
        row(
            "truncated: TCP header cut at 12 bytes",
            tcp(NODE, 40000, 8080, "syn", &[])[..14 + 20 + 12].to_vec(),
            XDP_DROP,
            None,
            &[DropMalformed],
        ),
        row(
            "garbage: IPv4 total length beyond the frame",
            too_long,
            XDP_DROP,
            None,
            &[DropMalformed],
        ),
        row(
            "TCP data segment without a flow (round-robin): dropped, counted as a miss",
            tcp(NODE, 41000, 8080, "ack", b"x"),
            XDP_DROP,
            None,
            &[FlowMisses, DropNoFlow],
        ),
        row(
            "TCP RST without a flow (round-robin): dropped, counted as a miss",
            tcp(NODE, 41001, 8080, "rst", &[]),
            XDP_DROP,
            None,
            &[FlowMisses, DropNoFlow],
        ),
        row(
            "published port without backends: dropped",
            tcp(NODE, 40000, 8084, "syn", &[]),
            XDP_DROP,
            None,
            &[DropNoBackend],
        ),
        row(
            "TCP RST on a flow: forwarded, the flow is freed",
            rst_local.clone(),
            XDP_PASS,
            Some(local_out(&rst_local, LOCAL, 80)),
            &[Local, FlowsEnded],
        ),
    ];
    run_rows(&h, rows, &mut failures);
    let key = |src_port: u16, dst_port: u16, protocol: u8| FlowKey {
        src: u32::from_ne_bytes(CLIENT),
        dst: u32::from_ne_bytes(NODE),
        src_port: port(src_port),
        dst_port: port(dst_port),
        protocol,
        pad: [0; 3],
    };
    if h.maps.flow(key(40000, 8080, 6)).is_some() {
        failures.push("the RST left its flow in the table".into());
    }

    // Maglev: the backend is the table's entry for the flow's hash, the same on every
    // node; the flow then stays on it.
    let table = shoal_dataplane::lb::mesh::maglev_table(&[
        u32::from_ne_bytes(REMOTE),
        u32::from_ne_bytes(REMOTE2),
    ]);
    for sport in 42000..42016u16 {
        let syn = tcp(NODE, sport, 8083, "syn", &[]);
        let h32 = m::flow_hash(u32::from_ne_bytes(CLIENT), port(sport), port(8083), 6);
        let want = table[(h32 % m::MAGLEV_SIZE) as usize].to_ne_bytes();
        let (v, out) = h.xdp(&syn);
        if v != XDP_REDIRECT || out != remote_out(&syn, want, 83) {
            failures.push(format!(
                "maglev flow from port {sport}: verdict {v}, wrong backend or frame"
            ));
        }
    }
    // Maglev also takes a mid-stream segment without a flow (a flow moved here from
    // another node by an external balancer) to the same backend, and holds it live.
    {
        let ack = tcp(NODE, 42100, 8083, "ack", b"moved");
        let want = maglev_backend(CLIENT, 42100);
        run_rows(
            &h,
            vec![row(
                "Maglev: a mid-stream segment without a flow goes to the table's backend, never dropped",
                ack.clone(),
                XDP_REDIRECT,
                Some(remote_out(&ack, want, 83)),
                &[Remote, FlowMisses, LiveInserted],
            )],
            &mut failures,
        );
    }

    // Backend changes: only affected entries are written; draining keeps flows,
    // unhealthy moves UDP and drops TCP mid-stream.
    let syn_mixed = tcp(NODE, 43000, 8082, "syn", &[]);
    let (_, first) = h.xdp(&syn_mixed);
    let is_local = |out: &[u8]| out.len() > 34 && out[30..34] == NODE;
    let first_is_local = is_local(&first);
    let (held_backend, held_target_is_local) = if first_is_local {
        (LOCAL, true)
    } else {
        (REMOTE, false)
    };
    let _ = held_backend;
    // A second flow on the same backend, to be reopened (same ports) once it drains.
    let mut reopened = None;
    for sport in 43100..43110u16 {
        let (_, out) = h.xdp(&tcp(NODE, sport, 8082, "syn", &[]));
        if is_local(&out) == held_target_is_local {
            reopened = Some(sport);
            break;
        }
    }
    let reopened = reopened.expect("round-robin reaches both backends");
    let drained = if held_target_is_local { "m1" } else { "m2" };
    let written = h.set_state(&[(drained, "draining")]);
    if written == 0 || written > 4 {
        failures.push(format!(
            "draining one backend wrote {written} entries (expected 1 to 4)"
        ));
    }
    let ack_mixed = tcp(NODE, 43000, 8082, "ack", b"still here");
    let (v, out) = h.xdp(&ack_mixed);
    let still_same = is_local(&out) == held_target_is_local;
    if v == XDP_DROP || !still_same {
        failures.push(format!(
            "draining: the held flow moved or was dropped (verdict {v})"
        ));
    }
    for sport in 43001..43005u16 {
        let (v, out) = h.xdp(&tcp(NODE, sport, 8082, "syn", &[]));
        let went_local = is_local(&out);
        if v == XDP_DROP || went_local == held_target_is_local {
            failures.push(format!(
                "draining: new flow from {sport} went to the draining backend"
            ));
        }
    }
    let before = h.stats();
    let (v, out) = h.xdp(&tcp(NODE, reopened, 8082, "syn", &[]));
    if v == XDP_DROP
        || is_local(&out) == held_target_is_local
        || h.stats().since(&before).get(Rechosen) != 1
    {
        failures.push(format!(
            "draining: a new connection reusing a drained flow's ports went to it (verdict {v})"
        ));
    }
    h.set_state(&[(drained, "unhealthy")]);
    let before = h.stats();
    let (v, _) = h.xdp(&ack_mixed);
    if v != XDP_DROP || h.stats().since(&before).get(DropNoFlow) != 1 {
        failures.push(format!(
            "unhealthy: mid-stream TCP to it was not dropped (verdict {v})"
        ));
    }
    // The dropped segment freed the flow; a new SYN with the same ports is a new flow
    // and is given the other backend.
    let before = h.stats();
    let (v, out) = h.xdp(&syn_mixed);
    if v == XDP_DROP
        || is_local(&out) == held_target_is_local
        || h.stats().since(&before).get(NewFlows) != 1
    {
        failures.push(format!(
            "unhealthy: a SYN on its flow was not re-chosen (verdict {v})"
        ));
    }
    // r1 is the only backend of 5353: unhealthy, the UDP flow has nowhere to go; healthy
    // again, the flow (still in the table) goes back to it.
    h.set_state(&[("r1", "unhealthy")]);
    let before = h.stats();
    let (v, _) = h.xdp(&udp_remote);
    let d = h.stats().since(&before);
    if v != XDP_DROP || d.get(DropNoBackend) != 1 {
        failures.push(format!(
            "UDP flow with its only backend unhealthy: verdict {v}"
        ));
    }
    h.set_state(&[]);
    let before = h.stats();
    let (v, out) = h.xdp(&udp_remote);
    let d = h.stats().since(&before);
    if v != XDP_REDIRECT || out != remote_out(&udp_remote, REMOTE, 53) || d.get(Remote) != 1 {
        failures.push(format!(
            "UDP flow after its backend is healthy again: verdict {v}"
        ));
    }

    // Reply path on the task's node: a meshed frame in VXLAN from the node the client
    // reached (a cluster VTEP) records the flow with that node's address; the task's
    // reply then leaves from that address and the published port, out of the underlay
    // towards the client. The same frame from outside the cluster is dropped by the
    // data path's guard and records nothing, so the reply goes out untouched.
    let mut guard = h.program.take_guard_maps().expect("guard maps");
    let cluster = GuardPlan::enforce(
        4789,
        [Ipv4Addr::from(NODE), Ipv4Addr::from(PEER)]
            .into_iter()
            .collect(),
    )
    .unwrap();
    guard.apply(&GuardPlan::default(), &cluster).unwrap();
    let meshed = |from: [u8; 4], sport: u16, vni: u32| {
        let syn = tcp(PEER, sport, 8080, "syn", &[]);
        let mut f = encap(
            &inner(&syn, LOCAL, 80, PEER),
            (NODE_MAC, PEER_MAC),
            from,
            NODE,
            flow_of(&syn),
        );
        f[14 + 20 + 8 + 4..14 + 20 + 8 + 7].copy_from_slice(&vni.to_be_bytes()[1..]);
        f
    };
    let reply_to = |sport: u16| {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([0x02, 0x42, 10, 255, 0, 3], [0x02, 0, 0, 0, 0, 1])
            .ipv4(LOCAL, CLIENT, 64)
            .tcp(80, sport, 7, 64240)
            .syn()
            .ack(1001)
            .write(&mut out, &[])
            .unwrap();
        out
    };
    run_rows(
        &h,
        vec![
            row(
                "meshed frame in VXLAN from a cluster VTEP: passed to the kernel, reply recorded",
                meshed(PEER, 40100, VNI),
                XDP_PASS,
                None,
                &[RepliesRecorded],
            ),
            row(
                "the same frame again: passed, nothing new to record",
                meshed(PEER, 40100, VNI),
                XDP_PASS,
                None,
                &[],
            ),
            row(
                "meshed frame from a cluster VTEP in another network's VNI: passed, not recorded",
                meshed(PEER, 40101, VNI + 1),
                XDP_PASS,
                None,
                &[],
            ),
            row(
                "meshed frame in VXLAN from outside the cluster: dropped, not recorded",
                meshed(OTHER, 40102, VNI),
                XDP_DROP,
                None,
                &[],
            ),
        ],
        &mut failures,
    );
    for (sport, what) in [
        (40101, "from another VNI"),
        (40102, "from outside the cluster"),
    ] {
        let (v, out) = h.tc(m::TC_REPLY, &reply_to(sport), h.ul1);
        if v != TC_ACT_OK || out != reply_to(sport) {
            failures.push(format!(
                "reply to a flow {what}: rewritten (verdict {v}), so a planted entry was used"
            ));
        }
    }
    {
        let (v, out) = h.tc(m::TC_REPLY, &reply_to(40100), h.ul1);
        let mut expected = Vec::new();
        PacketBuilder::ethernet2([0x02, 0x42, 10, 255, 0, 3], [0x02, 0, 0, 0, 0, 1])
            .ipv4(PEER, CLIENT, 64)
            .tcp(8080, 40100, 7, 64240)
            .syn()
            .ack(1001)
            .write(&mut expected, &[])
            .unwrap();
        if v != TC_ACT_REDIRECT || out != expected {
            failures.push(format!(
                "reply to a flow meshed by the peer: verdict {v}\n  got      {out:02x?}\n  expected {expected:02x?}"
            ));
        }
    }
    // The local flow of the IPv4-options row (its SYN) was recorded by XDP as it
    // forwarded it (the first rows' flow ended with a RST, which freed its entry).
    let reply = {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([0x02, 0x42, 10, 255, 0, 3], [0x02, 0, 0, 0, 0, 1])
            .ipv4(LOCAL, CLIENT, 64)
            .tcp(80, 40004, 7, 64240)
            .syn()
            .ack(1001)
            .write(&mut out, &[])
            .unwrap();
        out
    };
    let (v, out) = h.tc(m::TC_REPLY, &reply, h.ul1);
    let mut expected = reply.clone();
    {
        // Source = the address and port the client connected to; checksums computed
        // from scratch by etherparse.
        let mut b = Vec::new();
        PacketBuilder::ethernet2([0x02, 0x42, 10, 255, 0, 3], [0x02, 0, 0, 0, 0, 1])
            .ipv4(NODE, CLIENT, 64)
            .tcp(8080, 40004, 7, 64240)
            .syn()
            .ack(1001)
            .write(&mut b, &[])
            .unwrap();
        expected.copy_from_slice(&b);
    }
    if v != TC_ACT_REDIRECT || out != expected {
        failures.push(format!(
            "reply: verdict {v}\n  got      {out:02x?}\n  expected {expected:02x?}"
        ));
    }
    // The host end hands the reply to the kernel for the next hop (bpf_redirect_neigh
    // fills the MACs when it sends, after the test run): unchanged here, redirected.
    let (v, out2) = h.tc(m::TC_TO_UNDERLAY, &out, h.ul1);
    if v != TC_ACT_REDIRECT || out2 != expected {
        failures.push(format!(
            "to_underlay: verdict {v}\n  got      {out2:02x?}\n  expected {expected:02x?}"
        ));
    }
    let (v, out) = h.tc(m::TC_REPLY, &tcp(OTHER, 1, 2, "syn", &[]), h.ul1);
    if v != TC_ACT_OK || out != tcp(OTHER, 1, 2, "syn", &[]) {
        failures.push(format!(
            "reply: an unrelated frame was touched (verdict {v})"
        ));
    }
    let mut not_ip = tcp(OTHER, 1, 2, "syn", &[]);
    not_ip[12..14].copy_from_slice(&[0x08, 0x06]);
    let (v, _) = h.tc(m::TC_TO_UNDERLAY, &not_ip, h.ul1);
    if v != TC_ACT_SHOT {
        failures.push(format!(
            "to_underlay: only IPv4 TCP/UDP replies leave (verdict {v})"
        ));
    }
    // Broadcast (ARP from the ingress namespace for the host end's address): the
    // host stack answers it; so it takes frames routed to the host end's own MAC (the
    // replies to the node's own connections to published ports).
    let mut arp = not_ip.clone();
    arp[0..6].copy_from_slice(&[0xff; 6]);
    let (v, out) = h.tc(m::TC_TO_UNDERLAY, &arp, h.ul1);
    if v != TC_ACT_OK || out != arp {
        failures.push(format!(
            "to_underlay: a broadcast frame goes to the host stack untouched (verdict {v})"
        ));
    }
    let _ = addr;

    assert!(
        failures.is_empty(),
        "{} fixture failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The backend Maglev gives a client's flow to 8083 (two remote backends).
fn maglev_backend(src: [u8; 4], sport: u16) -> [u8; 4] {
    let table = shoal_dataplane::lb::mesh::maglev_table(&[
        u32::from_ne_bytes(REMOTE),
        u32::from_ne_bytes(REMOTE2),
    ]);
    let h32 = m::flow_hash(u32::from_ne_bytes(src), port(sport), port(8083), 6);
    table[(h32 % m::MAGLEV_SIZE) as usize].to_ne_bytes()
}

fn client_key(src: [u8; 4], src_port: u16, dst_port: u16) -> FlowKey {
    FlowKey {
        src: u32::from_ne_bytes(src),
        dst: u32::from_ne_bytes(NODE),
        src_port: port(src_port),
        dst_port: port(dst_port),
        protocol: 6,
        pad: [0; 3],
    }
}

/// Binds the calling thread to one CPU: the kernel's LRU keeps free entries per CPU,
/// and a thread that moved would see evictions in a table that is not full.
fn one_cpu() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity on this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Flow tables under pressure (16 entries each): a SYN flood with spoofed sources and
/// closed connections never push out a live flow; live flows pushed out by other live
/// flows are counted, and in Maglev mode still reach their backend (every byte
/// checked), while round-robin drops them.
#[test]
fn mesh_flows_under_pressure() {
    if !root_or_skip() {
        return;
    }
    std::thread::spawn(pressure_in_netns)
        .join()
        .expect("pressure thread");
}

fn pressure_in_netns() {
    use MC::*;
    private_netns();
    one_cpu();
    let h = Harness::new(16);
    let mut failures = Vec::new();
    let start = h.stats();
    // Opens a connection (SYN, then the handshake's ACK) and checks both frames.
    let establish = |failures: &mut Vec<String>, sport: u16, dport: u16| {
        for flags in ["syn", "ack"] {
            let f = tcp(NODE, sport, dport, flags, &[]);
            let (v, out) = h.xdp(&f);
            let want = if dport == 8083 {
                (
                    XDP_REDIRECT,
                    remote_out(&f, maglev_backend(CLIENT, sport), 83),
                )
            } else {
                (XDP_PASS, local_out(&f, LOCAL, 80))
            };
            if (v, &out) != (want.0, &want.1) {
                failures.push(format!("{flags} of {sport}->{dport}: verdict {v}"));
            }
        }
    };
    // Live connections: 4 to the Maglev port (50000..50004), one to a round-robin one
    // (50100).
    for sport in 50000..50004u16 {
        establish(&mut failures, sport, 8083);
    }
    establish(&mut failures, 50100, 8080);
    let live_a = client_key(CLIENT, 50000, 8083);
    let live_b = client_key(CLIENT, 50100, 8080);
    for (k, what) in [(live_a, "Maglev"), (live_b, "round-robin")] {
        match h.maps.flow(k) {
            Some(v) if v.state == m::FLOW_ESTABLISHED => {}
            other => failures.push(format!("{what}: established flow's entry {other:?}")),
        }
        if h.maps.opening_flow(k).is_some() {
            failures.push(format!(
                "{what}: established flow left in the opening table"
            ));
        }
    }

    // A SYN flood with spoofed sources to both ports: forwarded (syncookies are the
    // task's business), held only in the opening table.
    let before = h.stats();
    let mut flood = 0u64;
    for i in 0..1000u32 {
        let src = [10, 77, (i >> 8) as u8, i as u8];
        let sport = 1024 + (i % 60000) as u16;
        for dport in [8083, 8080] {
            let f = tcp_from(src, NODE, sport, dport, "syn", &[]);
            let (v, _) = h.xdp(&f);
            if v == XDP_DROP {
                failures.push(format!("flood SYN from {src:?} to {dport} dropped"));
            }
            flood += 1;
        }
    }
    let d = h.stats().since(&before);
    for (c, want) in [
        (NewFlows, flood),
        (LiveInserted, 0),
        (LiveClosed, 0),
        (FlowMisses, 0),
        (FlowInsertFailed, 0),
    ] {
        if d.get(c) != want {
            failures.push(format!(
                "SYN flood: {} moved by {} (expected {want})",
                c.name(),
                d.get(c)
            ));
        }
    }
    let t = h.maps.flow_tables(&h.stats()).unwrap();
    if h.maps.flow(live_a).is_none() || h.maps.flow(live_b).is_none() || t.live_evicted != 0 {
        failures.push(format!(
            "SYN flood pushed out live flows: {t:?}, Maglev entry {:?}, round-robin entry {:?}",
            h.maps.flow(live_a),
            h.maps.flow(live_b)
        ));
    }
    if t.opening > 16
        || t.opening_capacity != 16
        || t.closing_capacity != 16
        || t.live_capacity != 16
    {
        failures.push(format!("tables after the flood: {t:?}"));
    }
    // The round-robin connection still answers through its entry.
    let data_b = tcp(NODE, 50100, 8080, "ack", b"after the flood");
    run_rows(
        &h,
        vec![row(
            "round-robin: a live connection's segment after a SYN flood finds its entry",
            data_b.clone(),
            XDP_PASS,
            Some(local_out(&data_b, LOCAL, 80)),
            &[Local],
        )],
        &mut failures,
    );

    // Its reply entry (live) outlived the flood's (opening) ones: the task's answer
    // leaves from the address and port the client used, every byte checked.
    {
        let reply = |src: [u8; 4], sport: u16| {
            let mut out = Vec::new();
            PacketBuilder::ethernet2([0x02, 0x42, 10, 255, 0, 3], [0x02, 0, 0, 0, 0, 1])
                .ipv4(src, CLIENT, 64)
                .tcp(sport, 50100, 7, 64240)
                .ack(1001)
                .write(&mut out, b"answer after the flood")
                .unwrap();
            out
        };
        let (v, out) = h.tc(m::TC_REPLY, &reply(LOCAL, 80), h.ul1);
        if v != TC_ACT_REDIRECT || out != reply(NODE, 8080) {
            failures.push(format!(
                "reply of a live connection after a SYN flood: verdict {v}\n  got      {out:02x?}\n  expected {:02x?}",
                reply(NODE, 8080)
            ));
        }
    }

    // Closed connections go first: 7 more live connections (12 in all; the kernel's LRU
    // starts evicting in batches before a small table is quite full), 4 of them close
    // (FIN from the client) and leave the live table for the closing one, 4 new ones
    // take their room; nothing live is pushed out.
    for sport in 51000..51007u16 {
        establish(&mut failures, sport, 8080);
    }
    for sport in 51000..51004u16 {
        let fin = tcp(NODE, sport, 8080, "fin", &[]);
        let (v, out) = h.xdp(&fin);
        if v != XDP_PASS || out != local_out(&fin, LOCAL, 80) {
            failures.push(format!("FIN of {sport}: verdict {v}"));
        }
        match h.maps.closing_flow(client_key(CLIENT, sport, 8080)) {
            Some(v) if v.state == m::FLOW_CLOSING => {}
            other => failures.push(format!("closed flow {sport}: closing entry {other:?}")),
        }
        if h.maps.flow(client_key(CLIENT, sport, 8080)).is_some() {
            failures.push(format!("closed flow {sport} still in the live table"));
        }
    }
    // A SYN flood does not push closing connections out before their last ACKs.
    for i in 0..200u32 {
        let f = tcp_from(
            [10, 78, 0, i as u8],
            NODE,
            2000 + i as u16,
            8080,
            "syn",
            &[],
        );
        h.xdp(&f);
    }
    for sport in 51000..51004u16 {
        if h.maps
            .closing_flow(client_key(CLIENT, sport, 8080))
            .is_none()
        {
            failures.push(format!("a SYN flood pushed out closing flow {sport}"));
        }
    }
    if h.maps.flow_count() != 8 {
        failures.push(format!(
            "live flows after 4 of 12 closed: {} (expected 8)",
            h.maps.flow_count()
        ));
    }
    for sport in 52000..52004u16 {
        establish(&mut failures, sport, 8080);
    }
    let t = h.maps.flow_tables(&h.stats()).unwrap();
    let kept: Vec<u16> = (50000..50004u16)
        .chain([50100])
        .chain(51004..51007)
        .chain(52000..52004)
        .filter(|p| {
            let dport = if *p < 50100 { 8083 } else { 8080 };
            h.maps.flow(client_key(CLIENT, *p, dport)).is_none()
        })
        .collect();
    if !kept.is_empty() || t.live_evicted != 0 || t.live != 12 {
        failures.push(format!(
            "closed flows did not go first: live flows {kept:?} pushed out, {t:?}"
        ));
    }

    // Live flows do push out live flows (the table is full): 200 more. Evictions are
    // counted; the Maglev connection's next segment reaches its backend all the same
    // (every byte checked), the round-robin one's is dropped.
    for sport in 53000..53200u16 {
        establish(&mut failures, sport, 8080);
    }
    // The kernel's LRU is approximate (a recently used entry gets a second chance):
    // which entries went is its choice, that some did is not.
    let evicted = |ports: Vec<u16>, dport: u16| {
        ports
            .into_iter()
            .find(|p| h.maps.flow(client_key(CLIENT, *p, dport)).is_none())
    };
    let gone_maglev = evicted((50000..50004u16).collect(), 8083);
    let gone_rr = evicted(
        [50100]
            .into_iter()
            .chain(51004..51007)
            .chain(52000..52004)
            .collect(),
        8080,
    );
    let (Some(gone_maglev), Some(gone_rr)) = (gone_maglev, gone_rr) else {
        panic!(
            "200 new live flows in a table of 16 evicted no earlier flow (Maglev {gone_maglev:?}, round-robin {gone_rr:?}); failures so far: {failures:?}"
        );
    };
    let t = h.maps.flow_tables(&h.stats()).unwrap();
    let s = h.stats().since(&start);
    let expected_evicted = s.get(LiveInserted) - s.get(LiveClosed) - t.live;
    if t.live_evicted != expected_evicted || t.live_evicted < 150 {
        failures.push(format!(
            "evictions: {t:?}, expected {expected_evicted} (at least 150)"
        ));
    }
    let data_a = tcp(NODE, gone_maglev, 8083, "ack", b"evicted, still here");
    let data_b = tcp(NODE, gone_rr, 8080, "ack", b"evicted");
    run_rows(
        &h,
        vec![
            row(
                "Maglev: an evicted live flow's segment goes to the same backend and is held again",
                data_a.clone(),
                XDP_REDIRECT,
                Some(remote_out(&data_a, maglev_backend(CLIENT, gone_maglev), 83)),
                &[Remote, FlowMisses, LiveInserted],
            ),
            row(
                "Maglev: the flow's next segment finds its entry again",
                data_a.clone(),
                XDP_REDIRECT,
                Some(remote_out(&data_a, maglev_backend(CLIENT, gone_maglev), 83)),
                &[Remote],
            ),
            row(
                "round-robin: an evicted live flow's segment is dropped",
                data_b.clone(),
                XDP_DROP,
                None,
                &[FlowMisses, DropNoFlow],
            ),
        ],
        &mut failures,
    );
    assert!(
        failures.is_empty(),
        "{} failures under pressure:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A full flow table evicts the least recently used flow: new flows still go through.
#[test]
fn mesh_flow_table_full() {
    if !root_or_skip() {
        return;
    }
    std::thread::spawn(|| {
        private_netns();
        let h = Harness::new(16);
        let before = h.stats();
        for sport in 0..200u16 {
            for flags in ["syn", "ack"] {
                let f = tcp(NODE, 30000 + sport, 8080, flags, &[]);
                let (v, out) = h.xdp(&f);
                assert_eq!(v, XDP_PASS, "flow {sport} {flags}");
                assert_eq!(out, local_out(&f, LOCAL, 80), "flow {sport} {flags}");
            }
        }
        let d = h.stats().since(&before);
        assert_eq!(d.get(MC::NewFlows), 200);
        assert_eq!(d.get(MC::LiveInserted), 200);
        // The port's own counters: every new flow and frame, and their bytes.
        let port = h
            .maps
            .port_counts()
            .unwrap()
            .into_iter()
            .find(|c| c.port == 8080 && c.protocol == "tcp")
            .expect("8080/tcp counted");
        assert_eq!((port.new_flows, port.packets), (200, 400), "{port:?}");
        assert_eq!(port.bytes, d.get(MC::Bytes), "{port:?}");
        assert_eq!(d.get(MC::FlowInsertFailed), 0);
        let n = h.maps.flow_count();
        assert!(n <= 16 + 4, "{n} flows in a table of 16");
        assert_eq!(h.maps.flow_capacity().unwrap(), 16);
    })
    .join()
    .expect("flow table thread");
}
