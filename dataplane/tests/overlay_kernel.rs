//! `NetlinkKernel` against the real kernel, in throwaway namespaces.
//!
//! Every test makes its own namespaces, pinned under a temp directory named
//! `ovk<pid>-<test>`: a "host" namespace with an underlay interface `ul0`
//! (192.168.200.1/24; one end of a veth pair, this kernel has no dummy driver),
//! "container" namespaces, and the kernel's own `netns_dir`. A guard removes all of
//! them on drop, panics included. `ip`/`bridge` (through `nsenter`) only
//! cross-check what the kernel made.
//!
//! Needs root (network namespaces). Without root the tests say so and pass, unless
//! SHOAL_REQUIRE_ROOT=1 (set by `cargo xtask test`), where they fail.
use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    time::Instant,
};

use shoal_dataplane::overlay::{
    kernel::NetlinkKernel,
    model::{
        AttachmentSpec, KernelError, KernelState, NetworkObjects, NetworkSpec, Op, OverlayKernel,
        RemoteEntry,
    },
    netns,
    state::Mac,
};

const UNDERLAY: &str = "ul0";
const VTEP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 1);
const VTEP2: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const MTU: u32 = 1450;

fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("SHOAL_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{test}: needs root (network namespaces) and SHOAL_REQUIRE_ROOT=1");
    }
    eprintln!("{test}: skipped: needs root (network namespaces)");
    false
}

/// The throwaway namespaces of one test; all removed on drop.
struct Lab {
    dir: PathBuf,
    host: PathBuf,
    pins: Vec<PathBuf>,
}

impl Lab {
    fn new(test: &str) -> Lab {
        let dir = std::env::temp_dir().join(format!("ovk{}-{test}", std::process::id()));
        if dir.exists() {
            // A crashed earlier run with our PID: clean it first.
            clean_dir(&dir);
        }
        fs::create_dir_all(dir.join("netns")).unwrap();
        let host = dir.join("host");
        let mut lab = Lab {
            dir,
            host: host.clone(),
            pins: Vec::new(),
        };
        netns::create_pinned(&host).unwrap();
        lab.pins.push(host);
        lab.sh(
            &lab.host,
            &format!(
                "ip link add {UNDERLAY} type veth peer name {UNDERLAY}p && ip link set {UNDERLAY}p up && ip addr add {VTEP}/24 dev {UNDERLAY} \
                 && ip link set {UNDERLAY} up && ip link set lo up"
            ),
        );
        lab
    }

    fn netns_dir(&self) -> PathBuf {
        self.dir.join("netns")
    }

    fn kernel(&self) -> NetlinkKernel {
        NetlinkKernel::new(Some(self.host.clone()), self.netns_dir()).unwrap()
    }

    /// A namespace standing in for a container: (path, identity).
    fn container(&mut self, name: &str) -> (PathBuf, u64) {
        let path = self.dir.join(name);
        netns::create_pinned(&path).unwrap();
        self.pins.push(path.clone());
        let id = netns::identity(&path).unwrap();
        (path, id)
    }

    /// The host namespace holds no device of ours: lo, ul0 and its peer only.
    fn assert_host_has_only_the_underlay(&self) {
        let links = self.sh(&self.host, "ip -o link show");
        let names: Vec<&str> = links
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or(""))
            .collect();
        assert_eq!(names, ["lo", "ul0p", "ul0"], "{links}");
    }

    /// Nothing of ours is left in the host namespace: no device, no VXLAN socket.
    fn assert_host_clean(&self) {
        self.assert_host_has_only_the_underlay();
        let udp = self.sh(&self.host, "ss -uln");
        assert!(!udp.contains(":4789"), "{udp}");
    }

    /// A second host: a namespace holding the other end of the underlay veth, `ul0p`,
    /// with 192.168.200.2/24. Returns its path.
    fn second_host(&mut self) -> PathBuf {
        let path = self.dir.join("host2");
        netns::create_pinned(&path).unwrap();
        self.pins.push(path.clone());
        // `ip link set ... netns` takes a name under /run/netns or a PID: give it the
        // TID of a thread of ours that sits in the second host's namespace.
        std::thread::scope(|s| {
            let (tid_tx, tid_rx) = mpsc::channel();
            let (done_tx, done_rx) = mpsc::channel::<()>();
            let target = path.clone();
            s.spawn(move || {
                netns::in_netns_at(&target, move || {
                    // SAFETY: gettid has no preconditions.
                    tid_tx.send(unsafe { libc::gettid() }).unwrap();
                    let _ = done_rx.recv();
                })
                .unwrap()
            });
            let tid = tid_rx.recv().unwrap();
            self.sh(&self.host, &format!("ip link set {UNDERLAY}p netns {tid}"));
            drop(done_tx);
        });
        self.sh(
            &path,
            &format!(
                "ip addr add {VTEP2}/24 dev {UNDERLAY}p && ip link set {UNDERLAY}p up \
                 && ip link set lo up"
            ),
        );
        path
    }

    fn network_ns(&self, vni: u32) -> PathBuf {
        self.netns_dir().join(format!("vni-{vni}"))
    }

    /// Runs a shell command inside the namespace at `ns`; panics with its output on
    /// failure.
    fn sh(&self, ns: &Path, cmd: &str) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["sh", "-c", cmd])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{cmd:?} in {}: {}\n{text}",
            ns.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }
}

/// Unpins every namespace pinned anywhere under `dir`, then removes it.
fn clean_dir(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => clean_dir(&path),
                Ok(_) => {
                    let _ = netns::remove_pinned(&path);
                }
                Err(_) => {}
            }
        }
    }
    let _ = fs::remove_dir_all(dir);
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &self.pins {
            let _ = netns::remove_pinned(p);
        }
        clean_dir(&self.dir);
    }
}

fn spec(vni: u32) -> NetworkSpec {
    NetworkSpec {
        vni,
        gateway: GATEWAY,
        prefix_len: 24,
        mtu: MTU,
        port: 4789,
        vtep: VTEP,
        underlay_interface: UNDERLAY.into(),
    }
}

/// Remote endpoint `i`: 10.0.<i/250>.<i%250 + 2> (the /16 of spec's /24 is fine: the
/// kernel does not check neighbours against subnets), on one of three VTEPs.
fn remote(i: u32) -> (Ipv4Addr, RemoteEntry) {
    let ip = Ipv4Addr::new(
        10,
        1 + (i / 62500) as u8,
        ((i / 250) % 250) as u8,
        (i % 250 + 2) as u8,
    );
    (
        ip,
        RemoteEntry {
            mac: Mac::from_ip(ip),
            vtep: Ipv4Addr::new(192, 168, 200, 10 + (i % 3) as u8),
        },
    )
}

fn attachment(container: &str, inode: u64, ip: Ipv4Addr) -> AttachmentSpec {
    AttachmentSpec {
        container: container.into(),
        netns_id: inode,
        ifname: "eth0".into(),
        ip,
        prefix_len: 24,
        mac: Mac::from_ip(ip),
        default_gateway: Some(GATEWAY),
        mtu: MTU,
    }
}

/// What the ops describe, as a `KernelState`.
fn model(ops: &[Op]) -> KernelState {
    let mut s = KernelState::default();
    for op in ops {
        match op {
            Op::CreateNetwork(spec) => {
                s.networks.insert(
                    spec.vni,
                    NetworkObjects {
                        spec: spec.clone(),
                        remotes: BTreeMap::new(),
                        attachments: BTreeMap::new(),
                    },
                );
            }
            Op::DeleteNetwork { vni } => {
                s.networks.remove(vni);
            }
            Op::AddRemote { vni, ip, entry } => {
                s.networks.get_mut(vni).unwrap().remotes.insert(*ip, *entry);
            }
            Op::DeleteRemote { vni, ip, .. } => {
                s.networks.get_mut(vni).unwrap().remotes.remove(ip);
            }
            Op::Attach {
                vni,
                veth_name,
                spec,
                ..
            } => {
                s.networks
                    .get_mut(vni)
                    .unwrap()
                    .attachments
                    .insert(veth_name.clone(), spec.clone());
            }
            Op::Detach { vni, veth_name } => {
                s.networks
                    .get_mut(vni)
                    .unwrap()
                    .attachments
                    .remove(veth_name);
            }
        }
    }
    s
}

/// The reconciler may move the kernel to a blocking thread.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<NetlinkKernel>();
};

fn apply_all(k: &mut NetlinkKernel, ops: &[Op]) {
    for op in ops {
        k.apply(op).unwrap_or_else(|e| panic!("{op:?}: {e}"));
    }
}

/// How many of this process's sockets live in the network namespace `inode` (a socket
/// keeps its namespace alive).
fn our_sockets_in(inode: u64) -> usize {
    const SIOCGSKNS: libc::c_ulong = 0x894c;
    let mut n = 0;
    for e in fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Some(fd) = e.file_name().to_str().and_then(|f| f.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: SIOCGSKNS returns a new fd for the socket's namespace, or -1.
        let ns = unsafe { libc::ioctl(fd, SIOCGSKNS as _) };
        if ns < 0 {
            continue;
        }
        // SAFETY: `ns` is a new fd we own.
        let ns = unsafe { OwnedFd::from_raw_fd(ns) };
        if netns::inode_of(&ns).unwrap() == inode {
            n += 1;
        }
    }
    n
}

fn lines_with(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn network_remotes_attachment_lifecycle() {
    if !root_or_skip("network_remotes_attachment_lifecycle") {
        return;
    }
    let mut lab = Lab::new("life");
    let (c1, c1_inode) = lab.container("c1");
    let mut k = lab.kernel();
    let vni = 42;
    let cid = "c".repeat(64);
    let mut ops = vec![Op::CreateNetwork(spec(vni))];
    let remotes: Vec<_> = (0..3).map(remote).collect();
    for (ip, entry) in &remotes {
        ops.push(Op::AddRemote {
            vni,
            ip: *ip,
            entry: *entry,
        });
    }
    let a = attachment(&cid, c1_inode, Ipv4Addr::new(10, 0, 0, 2));
    ops.push(Op::Attach {
        vni,
        veth_name: "ve00000001".into(),
        spec: a.clone(),
        netns_path: c1.clone(),
    });
    apply_all(&mut k, &ops);
    let want = model(&ops);
    assert_eq!(k.snapshot().unwrap(), want);

    // Cross-check with iproute2.
    let net = lab.network_ns(vni);
    let fdb = lab.sh(&net, "bridge fdb show dev vxlan0");
    assert_eq!(lines_with(&fdb, " dst "), 3, "{fdb}");
    for (_, e) in &remotes {
        assert!(
            fdb.lines()
                .any(|l| l.starts_with(&format!("{} dst {} ", e.mac, e.vtep))
                    && l.ends_with(" self permanent")),
            "{fdb}"
        );
    }
    let neigh = lab.sh(&net, "ip neigh show dev vxlan0");
    assert_eq!(neigh.lines().count(), 3, "{neigh}");
    for (ip, e) in &remotes {
        assert!(
            neigh
                .lines()
                .any(|l| l.trim() == format!("{ip} lladdr {} PERMANENT", e.mac)),
            "{neigh}"
        );
    }
    let vx = lab.sh(&net, "ip -d link show vxlan0");
    for needle in [
        "mtu 1450",
        "master br0",
        "state UNKNOWN",
        "vxlan id 42 local 192.168.200.1",
        "dstport 4789",
        "nolearning",
        "proxy",
    ] {
        assert!(vx.contains(needle), "{needle:?} missing in {vx}");
    }
    let br = lab.sh(&net, "ip -o -4 addr show dev br0; ip -o link show br0");
    assert!(br.contains("inet 10.0.0.1/24"), "{br}");
    assert!(br.contains("mtu 1450") && br.contains("UP"), "{br}");
    // The VXLAN device's UDP socket lives in the host namespace, its underlay is ul0.
    let udp = lab.sh(&lab.host, "ss -uln");
    assert!(udp.contains(":4789"), "{udp}");
    lab.assert_host_has_only_the_underlay();
    let veth = lab.sh(&net, "ip -o link show ve00000001");
    assert!(
        veth.contains("master br0") && veth.contains("mtu 1450"),
        "{veth}"
    );
    let eth0 = lab.sh(
        &c1,
        "ip -o link show eth0; ip -o -4 addr show dev eth0; ip route show table 100; ip rule; ip -o link show lo",
    );
    // The first network is the way back for traffic from its address (policy routing):
    // the main table's default route is egress's.
    for needle in [
        "link/ether 02:42:0a:00:00:02",
        "mtu 1450",
        "inet 10.0.0.2/24",
        "default via 10.0.0.1 dev eth0",
        "1000:\tfrom all lookup main suppress_prefixlength 0",
        "1001:\tfrom 10.0.0.2 lookup 100",
        "LOWER_UP",
    ] {
        assert!(eth0.contains(needle), "{needle:?} missing in {eth0}");
    }
    let main = lab.sh(&c1, "ip route show default");
    assert!(main.trim().is_empty(), "{main}");
    assert_eq!(
        lab.sh(&c1, "ip -o link show").lines().count(),
        2,
        "lo and eth0 only"
    );

    // The same ops again: no error, no change.
    let entries = "bridge fdb show dev vxlan0; ip neigh show dev vxlan0";
    let before = lab.sh(&net, entries);
    apply_all(&mut k, &ops[1..4]); // the remotes
    assert_eq!(lab.sh(&net, entries), before);
    let everything = "ip -o link show; ip -o addr show; ip route show table all; ip rule";
    let container_before = lab.sh(&c1, everything);
    apply_all(&mut k, &ops[4..]); // the attachment: complete already, left alone
    assert_eq!(lab.sh(&c1, everything), container_before);
    assert_eq!(k.snapshot().unwrap(), want);
    // No socket of ours stayed in the container's namespace.
    assert_eq!(our_sockets_in(c1_inode), 0);

    // A second kernel on the same directory (a restarted agent) reads the same state.
    {
        let mut k2 = lab.kernel();
        assert_eq!(k2.snapshot().unwrap(), want);
    }

    // Delete one remote: only its two entries go.
    let (gone_ip, gone_entry) = remotes[1];
    let del = Op::DeleteRemote {
        vni,
        ip: gone_ip,
        entry: gone_entry,
    };
    k.apply(&del).unwrap();
    k.apply(&del).unwrap(); // gone already is fine
    ops.push(del);
    assert_eq!(k.snapshot().unwrap(), model(&ops));
    let fdb = lab.sh(&net, "bridge fdb show dev vxlan0");
    assert_eq!(lines_with(&fdb, " dst "), 2, "{fdb}");
    assert!(!fdb.contains(&gone_entry.mac.to_string()), "{fdb}");
    let neigh = lab.sh(&net, "ip neigh show dev vxlan0");
    assert_eq!(neigh.lines().count(), 2, "{neigh}");
    assert!(!neigh.contains(&format!("{gone_ip} ")), "{neigh}");

    // Detach: the pair is gone, the container keeps only lo.
    let detach = Op::Detach {
        vni,
        veth_name: "ve00000001".into(),
    };
    k.apply(&detach).unwrap();
    k.apply(&detach).unwrap();
    ops.push(detach);
    assert_eq!(k.snapshot().unwrap(), model(&ops));
    assert_eq!(lab.sh(&c1, "ip -o link show").lines().count(), 1);

    // Attach again, then delete the network: pin gone, container's end gone, nothing
    // left in the host namespace.
    apply_all(
        &mut k,
        &[Op::Attach {
            vni,
            veth_name: "ve00000001".into(),
            spec: a,
            netns_path: c1.clone(),
        }],
    );
    assert_eq!(lab.sh(&c1, "ip -o link show").lines().count(), 2);
    let net_inode = netns::inode(&net).unwrap();
    assert!(
        our_sockets_in(net_inode) > 0,
        "the check sees the cached connection"
    );
    k.apply(&Op::DeleteNetwork { vni }).unwrap();
    // Nothing of ours holds the namespace: it is really gone.
    assert_eq!(our_sockets_in(net_inode), 0);
    k.apply(&Op::DeleteNetwork { vni }).unwrap();
    assert!(!net.exists());
    assert_eq!(k.snapshot().unwrap(), KernelState::default());
    assert_eq!(lab.sh(&c1, "ip -o link show").lines().count(), 1);
    lab.assert_host_clean();
    // Ops on a network that is not there.
    assert!(matches!(
        k.apply(&Op::AddRemote {
            vni,
            ip: gone_ip,
            entry: gone_entry
        }),
        Err(KernelError::NoSuchNetwork { vni: 42 })
    ));
}

#[test]
fn recreate_network_with_same_vni_and_other_parameters() {
    if !root_or_skip("recreate_network_with_same_vni_and_other_parameters") {
        return;
    }
    let lab = Lab::new("recreate");
    let mut k = lab.kernel();
    let vni = 7;
    let (ip, entry) = remote(0);
    let mut ops = vec![
        Op::CreateNetwork(spec(vni)),
        Op::AddRemote { vni, ip, entry },
    ];
    apply_all(&mut k, &ops);
    // Delete and make again at once: the VNI is free immediately.
    k.apply(&Op::DeleteNetwork { vni }).unwrap();
    k.apply(&Op::CreateNetwork(spec(vni))).unwrap();
    // CreateNetwork over an existing one replaces it (the planner's "parameters
    // changed" case, and a half-made earlier attempt).
    let changed = NetworkSpec {
        mtu: 1400,
        port: 4790,
        gateway: Ipv4Addr::new(10, 9, 0, 1),
        prefix_len: 16,
        ..spec(vni)
    };
    ops = vec![Op::CreateNetwork(changed.clone())];
    apply_all(&mut k, &ops);
    assert_eq!(k.snapshot().unwrap(), model(&ops));
    // Two networks side by side.
    ops.push(Op::CreateNetwork(NetworkSpec {
        gateway: Ipv4Addr::new(10, 10, 0, 1),
        ..spec(8)
    }));
    apply_all(&mut k, &ops[1..]);
    assert_eq!(k.snapshot().unwrap(), model(&ops));
    // A missing underlay interface fails and leaves nothing behind.
    let bad = NetworkSpec {
        underlay_interface: "nosuch0".into(),
        ..spec(9)
    };
    let err = k.apply(&Op::CreateNetwork(bad)).unwrap_err();
    assert!(err.to_string().contains("nosuch0"), "{err}");
    assert!(!lab.network_ns(9).exists());
    assert_eq!(k.snapshot().unwrap(), model(&ops));
    lab.assert_host_has_only_the_underlay();
}

#[test]
fn two_containers_on_one_node_ping_through_the_bridge() {
    if !root_or_skip("two_containers_on_one_node_ping_through_the_bridge") {
        return;
    }
    let mut lab = Lab::new("ping");
    let (c1, i1) = lab.container("c1");
    let (c2, i2) = lab.container("c2");
    let mut k = lab.kernel();
    let vni = 100;
    let ops = vec![
        Op::CreateNetwork(spec(vni)),
        Op::Attach {
            vni,
            veth_name: "vea".into(),
            spec: attachment("alpha", i1, Ipv4Addr::new(10, 0, 0, 2)),
            netns_path: c1.clone(),
        },
        Op::Attach {
            vni,
            veth_name: "veb".into(),
            spec: AttachmentSpec {
                default_gateway: None,
                ..attachment("beta", i2, Ipv4Addr::new(10, 0, 0, 3))
            },
            netns_path: c2.clone(),
        },
    ];
    apply_all(&mut k, &ops);
    assert_eq!(k.snapshot().unwrap(), model(&ops));
    lab.sh(&c1, "ping -c 2 -W 2 -i 0.2 10.0.0.3");
    lab.sh(&c2, "ping -c 2 -W 2 -i 0.2 10.0.0.2");
    // The gateway (the bridge's address) answers too.
    lab.sh(&c1, "ping -c 1 -W 2 10.0.0.1");
    let no_route = lab.sh(&c2, "ip route show default");
    assert!(no_route.trim().is_empty(), "{no_route}");
    // The gateway's MAC is the bridge's own, whatever ports come and go: a bridge
    // that took its lowest port's address would change it under c1 when that port
    // leaves.
    let gateway_mac = "02:42:0a:00:00:01";
    let bridge_mac = |lab: &Lab| {
        // (/sys shows the test's own namespace, not the network's: ask ip.)
        let line = lab.sh(&lab.network_ns(vni), "ip -br link show br0");
        line.split_whitespace().nth(2).unwrap_or("").to_owned()
    };
    assert_eq!(bridge_mac(&lab), gateway_mac);
    apply_all(
        &mut k,
        &[Op::Detach {
            vni,
            veth_name: "veb".into(),
        }],
    );
    assert_eq!(bridge_mac(&lab), gateway_mac, "after a port left");
    lab.sh(&c1, "ping -c 1 -W 2 10.0.0.1");
    let neigh = lab.sh(&c1, "ip neigh show 10.0.0.1");
    assert!(neigh.contains(gateway_mac), "{neigh}");
}

#[test]
fn five_thousand_remotes() {
    if !root_or_skip("five_thousand_remotes") {
        return;
    }
    // SHOAL_OVK_REMOTES=10000 for the benchmark's size.
    let n: u32 = std::env::var("SHOAL_OVK_REMOTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let lab = Lab::new("many");
    let mut k = lab.kernel();
    let vni = 4242;
    let mut ops = vec![Op::CreateNetwork(spec(vni))];
    apply_all(&mut k, &ops);
    let adds: Vec<Op> = (0..n)
        .map(|i| {
            let (ip, entry) = remote(i);
            Op::AddRemote { vni, ip, entry }
        })
        .collect();
    let t = Instant::now();
    apply_all(&mut k, &adds);
    let add_time = t.elapsed();
    ops.extend(adds);
    let want = model(&ops);
    let t = Instant::now();
    let got = k.snapshot().unwrap();
    let snap_time = t.elapsed();
    assert_eq!(got.networks[&vni].remotes.len(), n as usize);
    assert!(got == want, "snapshot differs from the model");
    // Once more, on a fresh kernel (no cached connection).
    let t = Instant::now();
    let fresh = lab.kernel().snapshot().unwrap();
    let fresh_time = t.elapsed();
    assert!(fresh == want);
    // One change on top.
    let (ip, entry) = remote(17);
    let moved = RemoteEntry {
        vtep: Ipv4Addr::new(192, 168, 200, 99),
        ..entry
    };
    let t = Instant::now();
    k.apply(&Op::AddRemote {
        vni,
        ip,
        entry: moved,
    })
    .unwrap();
    let one_time = t.elapsed();
    ops.push(Op::AddRemote {
        vni,
        ip,
        entry: moved,
    });
    assert!(k.snapshot().unwrap() == model(&ops));

    let net = lab.network_ns(vni);
    let fdb = lab.sh(&net, "bridge fdb show dev vxlan0");
    assert_eq!(lines_with(&fdb, " dst "), n as usize);
    assert_eq!(lines_with(&fdb, " self permanent"), n as usize);
    assert_eq!(lines_with(&fdb, "dst 192.168.200.99 "), 1);
    let neigh = lab.sh(&net, "ip neigh show dev vxlan0");
    assert_eq!(lines_with(&neigh, "PERMANENT"), n as usize);
    assert_eq!(neigh.lines().count(), n as usize);
    println!(
        "{n} remotes: adds {add_time:?} ({:?}/op), snapshot {snap_time:?}, snapshot by a fresh kernel {fresh_time:?}, one more change {one_time:?}",
        add_time / n
    );
    // Generous bounds (debug build, shared machine); the figures above are the point.
    assert!(
        add_time / n < std::time::Duration::from_millis(1),
        "{add_time:?}"
    );
    assert!(
        snap_time < std::time::Duration::from_secs(1),
        "{snap_time:?}"
    );
}

#[test]
fn attach_to_a_gone_or_other_container_leaves_nothing() {
    if !root_or_skip("attach_to_a_gone_or_other_container_leaves_nothing") {
        return;
    }
    let mut lab = Lab::new("gone");
    let (c1, i1) = lab.container("c1");
    let mut k = lab.kernel();
    let vni = 5;
    k.apply(&Op::CreateNetwork(spec(vni))).unwrap();
    let net = lab.network_ns(vni);
    let attach = |spec: AttachmentSpec, path: &Path| Op::Attach {
        vni,
        veth_name: "vex".into(),
        spec,
        netns_path: path.to_owned(),
    };
    let a = attachment("x", i1, Ipv4Addr::new(10, 0, 0, 5));

    // Wrong inode: a restarted container (new namespace) is not the one planned for.
    let wrong = AttachmentSpec {
        netns_id: i1 + 1,
        ..a.clone()
    };
    assert!(matches!(
        k.apply(&attach(wrong, &c1)),
        Err(KernelError::ContainerGone { container }) if container == "x"
    ));
    // A path that is not there.
    assert!(matches!(
        k.apply(&attach(a.clone(), &lab.dir.join("nosuch"))),
        Err(KernelError::ContainerGone { .. })
    ));
    // The namespace was removed: the pin path is gone.
    netns::remove_pinned(&c1).unwrap();
    assert!(matches!(
        k.apply(&attach(a.clone(), &c1)),
        Err(KernelError::ContainerGone { .. })
    ));
    let links = lab.sh(&net, "ip -o link show type veth");
    assert!(links.trim().is_empty(), "{links}");

    // A container whose interface name is taken: the op fails midway (after the pair
    // exists) and leaves no veth.
    let (c2, i2) = lab.container("c2");
    lab.sh(&c2, "ip link add eth0 type veth peer name eth0p");
    let err = k
        .apply(&attach(
            AttachmentSpec {
                netns_id: i2,
                ..a.clone()
            },
            &c2,
        ))
        .unwrap_err();
    assert!(!matches!(err, KernelError::ContainerGone { .. }), "{err}");
    let links = lab.sh(&net, "ip -o link show type veth");
    assert!(links.trim().is_empty(), "{links}");
    assert_eq!(
        lab.sh(&c2, "ip -o link show").lines().count(),
        3,
        "lo and the squatting pair only"
    );
    // Too long a container string is refused up front.
    let long = AttachmentSpec {
        container: "y".repeat(300),
        netns_id: i2,
        ..a
    };
    assert!(k.apply(&attach(long, &c2)).is_err());
    assert!(lab.sh(&net, "ip -o link show type veth").trim().is_empty());
    assert_eq!(
        k.snapshot().unwrap(),
        model(&[Op::CreateNetwork(spec(vni))])
    );
}

#[test]
fn half_made_state_is_reported_so_the_planner_redoes_it() {
    if !root_or_skip("half_made_state_is_reported_so_the_planner_redoes_it") {
        return;
    }
    let mut lab = Lab::new("half");
    let (c1, i1) = lab.container("c1");
    let mut k = lab.kernel();
    let vni = 11;
    let (ip0, e0) = remote(0);
    let (ip1, e1) = remote(1);
    let a = attachment("z", i1, Ipv4Addr::new(10, 0, 0, 9));
    let ops = vec![
        Op::CreateNetwork(spec(vni)),
        Op::AddRemote {
            vni,
            ip: ip0,
            entry: e0,
        },
        Op::AddRemote {
            vni,
            ip: ip1,
            entry: e1,
        },
        Op::Attach {
            vni,
            veth_name: "vez".into(),
            spec: a.clone(),
            netns_path: c1.clone(),
        },
    ];
    apply_all(&mut k, &ops);
    let want = model(&ops);
    let net = lab.network_ns(vni);

    // A neighbour entry whose FDB entry is missing: reported with VTEP 0.0.0.0.
    lab.sh(&net, &format!("bridge fdb del {} dev vxlan0 self", e1.mac));
    let got = k.snapshot().unwrap();
    assert_eq!(
        got.networks[&vni].remotes[&ip1],
        RemoteEntry {
            mac: e1.mac,
            vtep: Ipv4Addr::UNSPECIFIED
        }
    );
    // The planner's answer (delete what is reported, add what is wanted) repairs it.
    k.apply(&Op::DeleteRemote {
        vni,
        ip: ip1,
        entry: got.networks[&vni].remotes[&ip1],
    })
    .unwrap();
    k.apply(&Op::AddRemote {
        vni,
        ip: ip1,
        entry: e1,
    })
    .unwrap();
    assert_eq!(k.snapshot().unwrap(), want);

    // An FDB entry without its neighbour entry is not a remote.
    lab.sh(&net, &format!("ip neigh del {ip1} dev vxlan0"));
    assert!(!k.snapshot().unwrap().networks[&vni]
        .remotes
        .contains_key(&ip1));
    k.apply(&Op::AddRemote {
        vni,
        ip: ip1,
        entry: e1,
    })
    .unwrap();
    assert_eq!(k.snapshot().unwrap(), want);

    // A veth without its record (a crash before the alias was written).
    lab.sh(&net, "ip link set vez alias ''");
    let got = k.snapshot().unwrap();
    assert_eq!(got.networks[&vni].attachments["vez"].mtu, 0);
    assert_ne!(got.networks[&vni].attachments["vez"], a);
    // A veth with its record but taken off the bridge.
    apply_all(&mut k, &ops[3..]);
    assert_eq!(k.snapshot().unwrap(), want);
    lab.sh(&net, "ip link set vez nomaster");
    let got = k.snapshot().unwrap();
    assert_eq!(
        got.networks[&vni].attachments["vez"],
        AttachmentSpec {
            mtu: 0,
            ..a.clone()
        }
    );
    apply_all(&mut k, &ops[3..]);
    assert_eq!(k.snapshot().unwrap(), want);

    // vxlan0 with learning on: the network is reported as needing a rebuild.
    lab.sh(&net, "ip link set vxlan0 type vxlan learning");
    let got = k.snapshot().unwrap();
    assert_eq!(
        got.networks[&vni].spec,
        NetworkSpec {
            mtu: 0,
            ..spec(vni)
        }
    );
    assert!(got.networks[&vni].remotes.is_empty());
    assert!(got.networks[&vni].attachments.is_empty());
    // vxlan0 gone altogether.
    lab.sh(&net, "ip link del vxlan0");
    let got = k.snapshot().unwrap();
    assert_eq!(got.networks[&vni].spec.mtu, 0);
    // Rebuild as the planner would: the same ops again from CreateNetwork.
    apply_all(&mut k, &ops);
    assert_eq!(k.snapshot().unwrap(), want);

    // A pin file that is not a namespace (crash between creating the file and
    // mounting): reported, and CreateNetwork makes the network over it.
    let stray = lab.network_ns(12);
    fs::write(&stray, b"").unwrap();
    let got = k.snapshot().unwrap();
    assert_eq!(got.networks[&12].spec.mtu, 0);
    assert_eq!(got.networks[&12].spec.vni, 12);
    let ops12 = [Op::CreateNetwork(NetworkSpec {
        gateway: Ipv4Addr::new(10, 12, 0, 1),
        ..spec(12)
    })];
    apply_all(&mut k, &ops12);
    let mut want2 = want.clone();
    want2.networks.extend(model(&ops12).networks);
    assert_eq!(k.snapshot().unwrap(), want2);
    // And DeleteNetwork removes a stray pin too.
    k.apply(&Op::DeleteNetwork { vni: 12 }).unwrap();
    fs::write(&stray, b"").unwrap();
    k.apply(&Op::DeleteNetwork { vni: 12 }).unwrap();
    assert!(!stray.exists());
    // Files that are not canonical pins are not networks.
    fs::write(lab.netns_dir().join("vni-012"), b"").unwrap();
    fs::write(lab.netns_dir().join("other"), b"").unwrap();
    assert_eq!(k.snapshot().unwrap(), want);
}

#[test]
fn containers_on_two_hosts_ping_across_vxlan() {
    if !root_or_skip("containers_on_two_hosts_ping_across_vxlan") {
        return;
    }
    let mut lab = Lab::new("xhost");
    let host2 = lab.second_host();
    let (c1, i1) = lab.container("c1");
    let (c2, i2) = lab.container("c2");
    let dir2 = lab.dir.join("netns2");
    let mut k1 = lab.kernel();
    let mut k2 = NetlinkKernel::new(Some(host2.clone()), dir2).unwrap();
    let vni = 300;
    let (ip1, ip2) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
    let a1 = attachment("one", i1, ip1);
    let a2 = attachment("two", i2, ip2);
    apply_all(
        &mut k1,
        &[
            Op::CreateNetwork(spec(vni)),
            Op::Attach {
                vni,
                veth_name: "ve1".into(),
                spec: a1.clone(),
                netns_path: c1.clone(),
            },
        ],
    );
    apply_all(
        &mut k2,
        &[
            Op::CreateNetwork(NetworkSpec {
                vtep: VTEP2,
                underlay_interface: format!("{UNDERLAY}p"),
                ..spec(vni)
            }),
            Op::Attach {
                vni,
                veth_name: "ve2".into(),
                spec: a2.clone(),
                netns_path: c2.clone(),
            },
        ],
    );
    // No remote entries yet: the other side is unreachable (ARP never crosses).
    let out = Command::new("nsenter")
        .arg(format!("--net={}", c1.display()))
        .args(["ping", "-c", "1", "-W", "1", &ip2.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());

    k1.apply(&Op::AddRemote {
        vni,
        ip: ip2,
        entry: RemoteEntry {
            mac: a2.mac,
            vtep: VTEP2,
        },
    })
    .unwrap();
    k2.apply(&Op::AddRemote {
        vni,
        ip: ip1,
        entry: RemoteEntry {
            mac: a1.mac,
            vtep: VTEP,
        },
    })
    .unwrap();
    lab.sh(&c1, &format!("ping -c 2 -W 2 -i 0.2 {ip2}"));
    lab.sh(&c2, &format!("ping -c 2 -W 2 -i 0.2 {ip1}"));
    // The frames went through the underlay as VXLAN.
    let stats = lab.sh(&lab.host, &format!("ip -s -o link show {UNDERLAY}"));
    assert!(!stats.contains("RX: bytes packets errors dropped missed mcast\\    0"));
    let arp = lab.sh(&c1, "ip neigh show dev eth0");
    assert!(arp.contains(&a2.mac.to_string()), "{arp}");
}
