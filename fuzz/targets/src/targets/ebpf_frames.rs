//! The eBPF programs that see frames: each input is one Ethernet frame, run with
//! BPF_PROG_TEST_RUN through the underlay's XDP program (guard and routing mesh), the
//! data path's XDP program, and the mesh's two TC programs. Loaded once per thread that
//! runs inputs (libFuzzer's one; the short run's test), in a network namespace of that
//! thread's own (a veth pair `ul0`/`ul1` holding the node's address and its neighbours,
//! as the kernel's FIB lookups need), with maps filled as on a node: the guard
//! enforcing one cluster VTEP, the mesh publishing 8080/tcp over a local and a remote
//! backend and 5353/udp over a remote one. Every verdict must be one the program may
//! give, and every frame that leaves must have a sane length. Needs root.

use std::net::Ipv4Addr;
use std::process::Command;

use aya::programs::{TestRun, TestRunOptions, TestRunResult};
use shoal_common::mesh as m;
use shoal_dataplane::guard::{GuardMaps, GuardPlan};
use shoal_dataplane::lb::mesh::{plan, MeshMaps, NodeMesh};
use shoal_dataplane::lb::state::LbState;
use shoal_dataplane::overlay::state::OverlayState;
use shoal_dataplane::underlay::UnderlayProgram;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// The shortest frame BPF_PROG_TEST_RUN takes (an Ethernet header).
const ETH_HLEN: usize = 14;
/// The longest frame run: an Ethernet frame at the underlay's MTU.
pub const MAX_FRAME: usize = 1514;
/// What a program may add to a frame: the mesh's VXLAN encapsulation (outer Ethernet,
/// IPv4, UDP and VXLAN headers).
const MAX_GROWTH: usize = 14 + 20 + 8 + 8;

struct Node {
    program: UnderlayProgram,
    // Held so the maps stay as written (the programs hold them too).
    _guard: GuardMaps,
    _mesh: MeshMaps,
    ul0: u32,
    ul1: u32,
}

thread_local! {
    // Per thread, as the network namespace is; libFuzzer runs every input on one, the
    // short run each target on a test thread of its own.
    static NODE: &'static Node = Box::leak(Box::new(load()));
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("an interface name");
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i != 0, "no interface {name}");
    i
}

/// This thread's own network namespace with ul0 (the node) <-> ul1 and permanent
/// neighbours for the peer node and the client; it goes when the thread does.
fn private_netns() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "ebpf_frames needs root (BPF_PROG_TEST_RUN and a network namespace)"
    );
    // SAFETY: unshare changes only this thread's network namespace, where the target
    // runs; every later `ip` is spawned from it.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    ip(&["link", "set", "lo", "up"]);
    ip(&[
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
    ip(&["addr", "add", "192.168.77.11/24", "dev", "ul0"]);
    ip(&["link", "set", "ul0", "up"]);
    ip(&["link", "set", "ul1", "up"]);
    for (addr, mac) in [
        ("192.168.77.12", "02:00:00:00:00:0c"),
        ("192.168.77.100", "02:00:00:00:00:64"),
    ] {
        ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            "ul0",
            "nud",
            "permanent",
        ]);
    }
    std::fs::write("/proc/sys/net/ipv4/conf/ul0/forwarding", "1").expect("forwarding on ul0");
}

fn load() -> Node {
    private_netns();
    let (ul0, ul1) = (ifindex("ul0"), ifindex("ul1"));
    let mut program = UnderlayProgram::load_with_flows(1024).expect("the underlay object");
    let mut guard = program.take_guard_maps().expect("the guard's maps");
    let vteps = [Ipv4Addr::from(crate::PEER)].into_iter().collect();
    let enforced = GuardPlan::enforce(crate::VXLAN_PORT, vteps).expect("a guard plan");
    guard
        .apply(&GuardPlan::default(), &enforced)
        .expect("the guard's maps written");
    let mut mesh = program.take_mesh_maps().expect("the mesh's maps");
    let overlay: OverlayState =
        serde_json::from_str(crate::OVERLAY_JSON).expect("the overlay state");
    let lb: LbState = serde_json::from_str(crate::LB_JSON).expect("the LB state");
    lb.validate(&overlay).expect("a valid LB state");
    let node = NodeMesh {
        vtep: Ipv4Addr::from(crate::NODE),
        addresses: vec![Ipv4Addr::from(crate::NODE)],
        vxlan_port: crate::VXLAN_PORT,
        netns_veth_ifindex: ul1,
        underlay_ifindex: ul0,
        tx_redirect: true,
    };
    let planned = plan(&lb, &overlay, &node, &Default::default()).expect("a mesh plan");
    mesh.apply(&Default::default(), &planned)
        .expect("the mesh's maps written");
    Node {
        program,
        _guard: guard,
        _mesh: mesh,
        ul0,
        ul1,
    }
}

/// Runs `frame` through `prog` with context `ctx`: (verdict, frame out).
fn run_program<P>(prog: &P, what: &str, frame: &[u8], ctx: &[u8]) -> (u32, usize)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + MAX_GROWTH + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(ctx),
            ..TestRunOptions::new()
        })
        .unwrap_or_else(|e| panic!("{what}: test run of a {}-byte frame: {e}", frame.len()));
    (r.return_value, r.data_size_out as usize)
}

/// BPF_PROG_TEST_RUN refuses an skb shorter than the network header its ethertype
/// names (an IPv4 frame under 34 bytes, IPv6 under 54): such frames are not run
/// through the TC programs (the kernel never hands them one either).
fn skb_runnable(frame: &[u8]) -> bool {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => frame.len() >= ETH_HLEN + 20,
        0x86dd => frame.len() >= ETH_HLEN + 40,
        _ => true,
    }
}

fn check(what: &str, verdict: u32, allowed: &[u32], frame: usize, out: usize) {
    assert!(
        allowed.contains(&verdict),
        "{what}: verdict {verdict} (allowed {allowed:?}) for a {frame}-byte frame"
    );
    assert!(
        (ETH_HLEN..=frame + MAX_GROWTH).contains(&out),
        "{what}: {out} bytes out of a {frame}-byte frame"
    );
}

/// One input, as libFuzzer hands it to the target: panics on a finding.
pub fn run(input: &[u8]) {
    let frame = &input[..input.len().min(MAX_FRAME)];
    if frame.len() < ETH_HLEN {
        return;
    }
    let node = NODE.with(|n| *n);
    // xdp_md: data_end at 4, ingress_ifindex at 12.
    let mut xdp_ctx = [0u8; 24];
    xdp_ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    xdp_ctx[12..16].copy_from_slice(&node.ul0.to_ne_bytes());
    let underlay = node.program.program().expect("the underlay program");
    let (v, out) = run_program(underlay, "underlay XDP", frame, &xdp_ctx);
    check(
        "underlay XDP",
        v,
        &[XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT],
        frame.len(),
        out,
    );
    let data_path = node
        .program
        .data_path_program()
        .expect("the data path program");
    let (v, out) = run_program(data_path, "data path XDP", frame, &xdp_ctx);
    check("data path XDP", v, &[XDP_DROP, XDP_PASS], frame.len(), out);
    if v == XDP_PASS {
        assert_eq!(
            out,
            frame.len(),
            "data path XDP: a passed frame changed length"
        );
    }
    if !skb_runnable(frame) {
        return;
    }
    // __sk_buff: ifindex at 40.
    let mut tc_ctx = [0u8; 44];
    tc_ctx[40..44].copy_from_slice(&node.ul1.to_ne_bytes());
    for name in [m::TC_REPLY, m::TC_TO_UNDERLAY] {
        let prog = node.program.tc_program(name).expect("a TC program");
        let (v, out) = run_program(prog, name, frame, &tc_ctx);
        check(
            name,
            v,
            &[TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT],
            frame.len(),
            out,
        );
    }
}
