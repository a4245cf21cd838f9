//! The routing mesh's small-packet benchmark (`cargo xtask bench lb`, through
//! `examples/mesh_pps_bench.rs`): 64-byte UDP frames to a published port, forwarded by
//! (a) the mesh's XDP program to a remote backend, (b) the kernel with an iptables DNAT
//! rule, (c) an XDP program that only swaps MACs and bounces the frame (the ceiling).
//!
//! ```text
//!  netns <p>-g                              netns <p>-n ("the node", 192.168.77.11)
//!  g0: generator (BPF_PROG_RUN live frames,  n0: variant under test; frames leave again
//!      XDP_TX out of g0) + sink (XDP,            towards "the backend's node" .12, whose
//!      counts and drops)      ◀════ veth ════▶  neighbour entry is g0's MAC
//! ```
//!
//! Offered load is the same for every variant (the same number of frames, generated as
//! fast as one core can); the figure is what reaches the sink per second.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};

use super::{
    mesh::{plan, MeshPlan, NodeMesh},
    state::{Backend, LbState, Protocol, PublishMode, PublishedPort, Service},
};
use crate::{
    overlay::{
        netns,
        state::{Network, OverlayState},
    },
    underlay::UnderlayProgram,
};

/// Frames per variant.
pub const FRAMES: u32 = 3_000_000;
const BATCH: u32 = 64;

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mac_of(ns: &str, dev: &str) -> Result<[u8; 6], String> {
    let out = sh(&["ip", "-n", ns, "-o", "link", "show", "dev", dev])?;
    let text = out
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .ok_or_else(|| format!("no MAC for {dev}: {out}"))?;
    let mut mac = [0u8; 6];
    for (i, b) in text.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(b, 16).map_err(|e| e.to_string())?;
    }
    Ok(mac)
}

/// The two namespaces; deleted on drop.
struct Netns {
    g: String,
    n: String,
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.g]);
        let _ = sh(&["ip", "netns", "del", &self.n]);
    }
}

fn path(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T, String> + Send) -> Result<T, String> {
    netns::in_netns_at(&path(ns), f).map_err(|e| format!("entering {ns}: {e}"))?
}

/// Runs the three variants; returns (name, packets per second) for each.
pub fn run(prefix: &str) -> Result<Vec<(&'static str, f64)>, String> {
    let ns = Netns {
        g: format!("{prefix}-g"),
        n: format!("{prefix}-n"),
    };
    sh(&["ip", "netns", "add", &ns.g])?;
    sh(&["ip", "netns", "add", &ns.n])?;
    sh(&[
        "ip", "-n", &ns.g, "link", "add", "g0", "type", "veth", "peer", "name", "n0", "netns",
        &ns.n,
    ])?;
    sh(&[
        "ip",
        "-n",
        &ns.g,
        "addr",
        "add",
        "192.168.77.100/24",
        "dev",
        "g0",
    ])?;
    sh(&[
        "ip",
        "-n",
        &ns.n,
        "addr",
        "add",
        "192.168.77.11/24",
        "dev",
        "n0",
    ])?;
    for (n, d) in [(&ns.g, "g0"), (&ns.n, "n0"), (&ns.g, "lo"), (&ns.n, "lo")] {
        sh(&["ip", "-n", n, "link", "set", d, "up"])?;
    }
    let g_mac = mac_of(&ns.g, "g0")?;
    let n_mac = mac_of(&ns.n, "n0")?;
    let g_mac_text = g_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    sh(&[
        "ip",
        "-n",
        &ns.n,
        "neigh",
        "replace",
        "192.168.77.12",
        "lladdr",
        &g_mac_text,
        "dev",
        "n0",
        "nud",
        "permanent",
    ])?;
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.n,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ])?;

    // Generator and sink, in g.
    let mut bench = Ebpf::load(crate::objects::MESH_BENCH).map_err(|e| e.to_string())?;
    for p in ["shoal_xdp_gen", "shoal_xdp_sink", "shoal_xdp_bounce"] {
        xdp(&mut bench, p)?
            .load()
            .map_err(|e| format!("{p}: {e}"))?;
    }
    let mut template = [0u8; 60];
    template[..6].copy_from_slice(&n_mac);
    template[6..12].copy_from_slice(&g_mac);
    template[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len: u16 = 60 - 14;
    let mut ip = [
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 192, 168, 77, 100, 192, 168, 77, 11,
    ];
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    let sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    template[14..34].copy_from_slice(&ip);
    template[34..36].copy_from_slice(&40000u16.to_be_bytes());
    template[36..38].copy_from_slice(&5353u16.to_be_bytes());
    template[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    {
        let mut t: Array<_, [u8; 60]> = Array::try_from(
            bench
                .map_mut("BENCH_TEMPLATE")
                .ok_or("no BENCH_TEMPLATE map")?,
        )
        .map_err(|e| e.to_string())?;
        t.set(0, template, 0).map_err(|e| e.to_string())?;
    }
    let g0 = in_ns(&ns.g, || {
        let _ = xdp(&mut bench, "shoal_xdp_sink")?
            .attach("g0", XdpMode::Driver)
            .map_err(|e| format!("attaching the sink: {e}"))?;
        ifindex("g0")
    })?;

    let mut results = Vec::new();

    // (a) the mesh: udp 5353 -> a backend on "node" .12.
    {
        let overlay = OverlayState {
            networks: vec![Network {
                id: "ingress".into(),
                vni: 4096,
                subnet: "10.255.0.0/16".parse().map_err(|e| format!("{e}"))?,
                gateway: Ipv4Addr::new(10, 255, 0, 1),
                mtu: None,
                encrypted: false,
            }],
            ..Default::default()
        };
        let lb = LbState {
            ingress_network: Some("ingress".into()),
            services: vec![Service {
                id: "s".into(),
                name: "s".into(),
                endpoint_mode: Default::default(),
                balance: Default::default(),
                vips: Vec::new(),
                ports: vec![PublishedPort {
                    protocol: Protocol::Udp,
                    published: 5353,
                    target: 53,
                    mode: PublishMode::Ingress,
                    balance: None,
                }],
                backends: vec![Backend {
                    task: "t".into(),
                    node: Ipv4Addr::new(192, 168, 77, 12),
                    addresses: [("ingress".to_string(), Ipv4Addr::new(10, 255, 0, 21))].into(),
                    state: Default::default(),
                }],
            }],
        };
        let mut program = UnderlayProgram::load_with_flows(4096).map_err(|e| e.to_string())?;
        let mut maps = program.take_mesh_maps().map_err(|e| e.to_string())?;
        let underlay_ifindex = in_ns(&ns.n, || ifindex("n0"))?;
        let node = NodeMesh {
            vtep: Ipv4Addr::new(192, 168, 77, 11),
            addresses: vec![Ipv4Addr::new(192, 168, 77, 11)],
            vxlan_port: 4789,
            netns_veth_ifindex: 0,
            underlay_ifindex,
            // The peer (g0) has an XDP program: XDP_TX reaches it, as on a NIC.
            tx_redirect: false,
        };
        let p = plan(&lb, &overlay, &node, &MeshPlan::default()).map_err(|e| e.to_string())?;
        maps.apply(&MeshPlan::default(), &p)
            .map_err(|e| e.to_string())?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns.n,
            "sysctl",
            "-qw",
            "net.ipv4.conf.n0.forwarding=1",
        ])?;
        in_ns(&ns.n, || {
            program.attach("n0").map(|_| ()).map_err(|e| e.to_string())
        })?;
        results.push(("mesh", measure(&mut bench, &ns.g, g0)?));
        drop(program);
    }

    // (b) the kernel with iptables DNAT (GRO on n0, so it receives XDP_TX'd frames).
    sh(&[
        "ip", "netns", "exec", &ns.n, "ethtool", "-K", "n0", "gro", "on",
    ])?;
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.n,
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-p",
        "udp",
        "-d",
        "192.168.77.11",
        "--dport",
        "5353",
        "-j",
        "DNAT",
        "--to-destination",
        "192.168.77.12:53",
    ])?;
    results.push(("iptables", measure(&mut bench, &ns.g, g0)?));

    // (c) the ceiling: bounce.
    in_ns(&ns.n, || {
        let _ = xdp(&mut bench, "shoal_xdp_bounce")?
            .attach("n0", XdpMode::Driver)
            .map_err(|e| format!("attaching bounce: {e}"))?;
        Ok(())
    })?;
    results.push(("bounce", measure(&mut bench, &ns.g, g0)?));
    drop(bench);
    drop(ns);
    Ok(results)
}

/// Ifindex of `name` in the calling thread's namespace.
fn ifindex(name: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: c is a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(format!("no interface {name}")),
        i => Ok(i),
    }
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, String> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .ok_or_else(|| format!("no XDP program {name}"))
}

fn sink_count(ebpf: &Ebpf) -> Result<u64, String> {
    let map = ebpf.map("BENCH_SINK").ok_or("no BENCH_SINK map")?;
    let a = PerCpuArray::<_, u64>::try_from(map).map_err(|e| e.to_string())?;
    Ok(a.get(&0, 0).map_err(|e| e.to_string())?.iter().sum())
}

/// Sends [`FRAMES`] frames from g0 and returns what reached the sink per second.
fn measure(bench: &mut Ebpf, g: &str, g0: u32) -> Result<f64, String> {
    let before = sink_count(bench)?;
    let gen = xdp(bench, "shoal_xdp_gen")?;
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&60u32.to_ne_bytes());
    ctx[12..16].copy_from_slice(&g0.to_ne_bytes());
    let data = [0u8; 60];
    let start = Instant::now();
    in_ns(g, || {
        gen.test_run(TestRunOptions {
            data_in: Some(&data),
            ctx_in: Some(&ctx),
            repeat: FRAMES,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..TestRunOptions::new()
        })
        .map(|_| ())
        .map_err(|e| format!("live frames: {e}"))
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    // What is still in flight lands within a moment.
    let mut last = sink_count(bench)?;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = sink_count(bench)?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok((last - before) as f64 / elapsed)
}
