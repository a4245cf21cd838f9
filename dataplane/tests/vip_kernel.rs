//! The VIP socket programs against the real kernel (cgroup sock_addr programs do not run
//! under BPF_PROG_TEST_RUN): each test pins throwaway network namespaces under a temp
//! directory, puts backend addresses on their `lo`, runs servers there, attaches the
//! programs at the cgroup v2 root (they translate only sockets of namespaces in their
//! scope map, so nothing else on the machine is touched) and checks which backend
//! accepted each connection or datagram.
//!
//! Needs root. Without root the tests say so and pass, unless SHOAL_REQUIRE_ROOT=1.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use shoal_common::vip::Counter;
use shoal_dataplane::{
    bpffs,
    lb::{
        state::BackendState,
        vip::{self, VipProgram, VipStats},
        vip_addr,
        vip_table::{nodeport_frontend, NodePort, VipSpec, VipTable},
    },
    overlay::netns,
};

const NET: u32 = 4097;
const OTHER_NET: u32 = 4098;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PORT: u16 = 8080;
const BACKENDS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 77, 0, 3),
    Ipv4Addr::new(10, 77, 0, 4),
    Ipv4Addr::new(10, 77, 0, 5),
    Ipv4Addr::new(10, 77, 0, 6),
];

fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("SHOAL_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{test}: needs root and SHOAL_REQUIRE_ROOT=1");
    }
    eprintln!("{test}: skipped: needs root (namespaces, cgroup eBPF)");
    false
}

/// Throwaway namespaces, removed on drop.
struct Lab {
    dir: PathBuf,
    pins: Vec<PathBuf>,
}

impl Lab {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vipk{}-{test}", std::process::id()));
        if dir.exists() {
            clean(&dir);
        }
        fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            pins: Vec::new(),
        }
    }

    /// A namespace with `lo` up holding `addrs` as /32s.
    fn netns(&mut self, name: &str, addrs: &[Ipv4Addr]) -> PathBuf {
        let path = self.dir.join(name);
        netns::create_pinned(&path).unwrap();
        self.pins.push(path.clone());
        let out = Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["ip", "link", "set", "lo", "up"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        vip_addr::sync_addresses(&path, &addrs.iter().copied().collect()).unwrap();
        path
    }
}

fn clean(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = netns::remove_pinned(&e.path());
        }
    }
    let _ = fs::remove_dir_all(dir);
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &self.pins {
            let _ = netns::remove_pinned(p);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// TCP servers on every backend address (in `ns`), answering each connection with the
/// address it was accepted on; UDP servers echoing `<their address> <payload>`.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &Path, addrs: &[Ipv4Addr]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &addr in addrs {
            let (tcp, udp) = netns::in_netns_at(ns, || {
                (
                    TcpListener::bind((addr, PORT)).unwrap(),
                    UdpSocket::bind((addr, PORT)).unwrap(),
                )
            })
            .unwrap();
            tcp.set_nonblocking(true).unwrap();
            udp.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let s = stop.clone();
            threads.push(thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((mut c, _)) => {
                            let _ = c.write_all(addr.to_string().as_bytes());
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
            let s = stop.clone();
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = udp.recv_from(&mut buf) {
                        let reply = format!("{addr} {}", String::from_utf8_lossy(&buf[..n]));
                        let _ = udp.send_to(reply.as_bytes(), from);
                    }
                }
            }));
        }
        Self { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn table(states: &[BackendState], scopes: &[(u64, u32)]) -> VipTable {
    let mut t = VipTable::default();
    t.vips.insert(
        VIP,
        VipSpec {
            network: NET,
            backends: BACKENDS
                .iter()
                .copied()
                .zip(states.iter().copied())
                .collect(),
        },
    );
    t.scopes = scopes.iter().copied().collect();
    t
}

const ALL_HEALTHY: [BackendState; 4] = [BackendState::Healthy; 4];

/// Connects to VIP:PORT from a socket made in `ns`; returns the backend that answered
/// and what getpeername said.
fn tcp_via(ns: &Path) -> std::io::Result<(Ipv4Addr, SocketAddr)> {
    let mut s = netns::in_netns_at(ns, || {
        TcpStream::connect_timeout(&SocketAddr::from((VIP, PORT)), Duration::from_secs(2))
    })??;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let peer = s.peer_addr()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok((answer.parse().expect("server sends its address"), peer))
}

fn udp_socket(ns: &Path) -> UdpSocket {
    let s = netns::in_netns_at(ns, || UdpSocket::bind("0.0.0.0:0").unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// Sends `msg` to VIP:PORT and returns (backend that answered, source of the reply).
fn udp_ask(s: &UdpSocket, msg: &str) -> (Ipv4Addr, SocketAddr) {
    s.send_to(msg.as_bytes(), (VIP, PORT)).unwrap();
    let mut buf = [0u8; 512];
    let (n, from) = s.recv_from(&mut buf).expect("a reply");
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let (backend, echoed) = text.split_once(' ').unwrap();
    assert_eq!(echoed, msg);
    (backend.parse().unwrap(), from)
}

fn loaded(test: &str) -> Option<VipProgram> {
    if !root_or_skip(test) {
        return None;
    }
    let mut p = VipProgram::load().expect("load");
    p.attach(&vip::cgroup2_root().unwrap()).expect("attach");
    Some(p)
}

#[test]
fn tcp_round_robin_getpeername_and_scoping() {
    let Some(mut prog) = loaded("tcp_round_robin_getpeername_and_scoping") else {
        return;
    };
    let mut lab = Lab::new("tcp");
    let mut addrs = BACKENDS.to_vec();
    addrs.push(VIP);
    let client = lab.netns("client", &addrs);
    let other = lab.netns("other", &addrs);
    let outside = lab.netns("outside", &BACKENDS);
    let _servers = Servers::start(&client, &BACKENDS);
    let _other_servers = Servers::start(&other, &BACKENDS);
    let _outside_servers = Servers::start(&outside, &BACKENDS);
    let cookie = vip::netns_cookie(&client).unwrap();
    let other_cookie = vip::netns_cookie(&other).unwrap();
    assert_ne!(cookie, other_cookie);
    // `other` is attached to another network only; `outside` to none.
    prog.apply(&table(
        &ALL_HEALTHY,
        &[(cookie, NET), (other_cookie, OTHER_NET)],
    ))
    .unwrap();
    let before = prog.stats().unwrap();
    let vip_before = prog.connects().unwrap();

    let mut seen: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for _ in 0..8 {
        let (backend, peer) = tcp_via(&client).unwrap();
        assert_eq!(
            peer,
            SocketAddr::from((VIP, PORT)),
            "getpeername says the VIP"
        );
        *seen.entry(backend).or_default() += 1;
    }
    assert_eq!(
        seen,
        BACKENDS.iter().map(|b| (*b, 2)).collect::<BTreeMap<_, _>>(),
        "round-robin over the 4 backends"
    );
    let after = prog.stats().unwrap();
    assert_eq!(
        after.get(Counter::ConnectTcp) - before.get(Counter::ConnectTcp),
        8
    );
    // The VIP's own count (its service's), beside the node's.
    let of = |counts: &[(Ipv4Addr, u64)]| {
        counts
            .iter()
            .find(|(v, _)| *v == VIP)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    assert_eq!(of(&prog.connects().unwrap()) - of(&vip_before), 8);
    assert!(after.get(Counter::Getpeername) - before.get(Counter::Getpeername) >= 8);

    // Out of scope: the VIP is not translated. In `other` it is a local address with
    // nothing listening (refused); in `outside` it is not even routable.
    let e = tcp_via(&other).expect_err("other network's namespace must not reach the VIP");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    assert!(
        tcp_via(&outside).is_err(),
        "unscoped namespace reached the VIP"
    );

    // Attaching `other` to the VIP's network makes it work there.
    prog.apply(&table(
        &ALL_HEALTHY,
        &[
            (cookie, NET),
            (other_cookie, OTHER_NET),
            (other_cookie, NET),
        ],
    ))
    .unwrap();
    let (backend, _) = tcp_via(&other).unwrap();
    assert!(BACKENDS.contains(&backend));
}

#[test]
fn dual_stack_sockets_use_the_vip_through_v4_mapped_addresses() {
    let Some(mut prog) = loaded("dual_stack_sockets_use_the_vip_through_v4_mapped_addresses")
    else {
        return;
    };
    let mut lab = Lab::new("v6m");
    let mut addrs = BACKENDS.to_vec();
    addrs.push(VIP);
    let client = lab.netns("client", &addrs);
    let _servers = Servers::start(&client, &BACKENDS);
    let cookie = vip::netns_cookie(&client).unwrap();
    prog.apply(&table(&ALL_HEALTHY, &[(cookie, NET)])).unwrap();
    let mapped = SocketAddr::from((VIP.to_ipv6_mapped(), PORT));

    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let mut s = netns::in_netns_at(&client, || {
            TcpStream::connect_timeout(&mapped, Duration::from_secs(2))
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            s.peer_addr().unwrap(),
            mapped,
            "getpeername says ::ffff:VIP"
        );
        let mut answer = String::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_to_string(&mut answer).unwrap();
        seen.insert(answer.parse::<Ipv4Addr>().unwrap());
    }
    assert_eq!(seen.len(), 4, "{seen:?}");

    let u = netns::in_netns_at(&client, || UdpSocket::bind("[::]:0").unwrap()).unwrap();
    u.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    u.send_to(b"six", mapped).unwrap();
    let mut buf = [0u8; 512];
    let (n, from) = u.recv_from(&mut buf).unwrap();
    assert_eq!(from, mapped, "the reply's source is ::ffff:VIP");
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with(" six"));
}

#[test]
fn unhealthy_and_draining_backends_get_no_new_connections() {
    let Some(mut prog) = loaded("unhealthy_and_draining_backends_get_no_new_connections") else {
        return;
    };
    let mut lab = Lab::new("health");
    let mut addrs = BACKENDS.to_vec();
    addrs.push(VIP);
    let client = lab.netns("client", &addrs);
    let _servers = Servers::start(&client, &BACKENDS);
    let cookie = vip::netns_cookie(&client).unwrap();
    prog.apply(&table(&ALL_HEALTHY, &[(cookie, NET)])).unwrap();

    // A connection made now is held across the changes.
    let mut held = netns::in_netns_at(&client, || TcpStream::connect((VIP, PORT)))
        .unwrap()
        .unwrap();
    use BackendState::*;
    let writes = prog
        .apply(&table(
            &[Healthy, Unhealthy, Draining, Healthy],
            &[(cookie, NET)],
        ))
        .unwrap();
    assert!(writes <= 6, "{writes} map writes for two backend changes");
    let mut seen = BTreeSet::new();
    for _ in 0..12 {
        seen.insert(tcp_via(&client).unwrap().0);
    }
    assert_eq!(seen, BTreeSet::from([BACKENDS[0], BACKENDS[3]]));
    let mut answer = String::new();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    held.read_to_string(&mut answer).unwrap();
    assert!(
        answer.parse::<Ipv4Addr>().is_ok(),
        "held connection still answered"
    );

    // No healthy backend: the connect reaches the VIP itself, which refuses it.
    let before = prog.stats().unwrap().get(Counter::NoBackend);
    prog.apply(&table(
        &[Unhealthy, Unhealthy, Draining, Unhealthy],
        &[(cookie, NET)],
    ))
    .unwrap();
    let e = tcp_via(&client).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    assert_eq!(prog.stats().unwrap().get(Counter::NoBackend) - before, 1);
}

#[test]
fn udp_flows_reply_from_the_vip_and_follow_health() {
    let Some(mut prog) = loaded("udp_flows_reply_from_the_vip_and_follow_health") else {
        return;
    };
    let mut lab = Lab::new("udp");
    let mut addrs = BACKENDS.to_vec();
    addrs.push(VIP);
    let client = lab.netns("client", &addrs);
    let _servers = Servers::start(&client, &BACKENDS);
    let cookie = vip::netns_cookie(&client).unwrap();
    prog.apply(&table(&ALL_HEALTHY, &[(cookie, NET)])).unwrap();

    // One socket is one flow: every datagram goes to the same backend, and every reply
    // comes from the VIP.
    let a = udp_socket(&client);
    let (first, from) = udp_ask(&a, "a1");
    assert_eq!(
        from,
        SocketAddr::from((VIP, PORT)),
        "reply source is the VIP"
    );
    for i in 0..5 {
        let (b, from) = udp_ask(&a, &format!("a{i}"));
        assert_eq!(b, first, "a flow stays on its backend");
        assert_eq!(from, SocketAddr::from((VIP, PORT)));
    }
    // New sockets are new flows, round-robin.
    let mut seen = BTreeSet::from([first]);
    let mut sockets = Vec::new();
    for i in 0..3 {
        let s = udp_socket(&client);
        seen.insert(udp_ask(&s, &format!("n{i}")).0);
        sockets.push(s);
    }
    assert_eq!(seen.len(), 4, "4 flows over 4 backends: {seen:?}");

    // Draining keeps the flow; unhealthy moves it.
    use BackendState::*;
    let idx = BACKENDS.iter().position(|b| *b == first).unwrap();
    let mut states = ALL_HEALTHY;
    states[idx] = Draining;
    prog.apply(&table(&states, &[(cookie, NET)])).unwrap();
    assert_eq!(udp_ask(&a, "drain").0, first);
    states[idx] = Unhealthy;
    prog.apply(&table(&states, &[(cookie, NET)])).unwrap();
    let moved = udp_ask(&a, "moved");
    assert_ne!(moved.0, first, "an unhealthy backend loses its flows");
    assert_eq!(moved.1, SocketAddr::from((VIP, PORT)));

    // A connected UDP socket: translated at connect, getpeername says the VIP.
    let c = udp_socket(&client);
    c.connect((VIP, PORT)).unwrap();
    assert_eq!(c.peer_addr().unwrap(), SocketAddr::from((VIP, PORT)));
    c.send(b"hello").unwrap();
    let mut buf = [0u8; 512];
    let n = c.recv(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(text.ends_with(" hello"), "{text}");
    let stats = prog.stats().unwrap();
    assert!(stats.get(Counter::Recvmsg) >= 11, "{stats:?}");
    assert!(stats.get(Counter::UdpFlowNew) >= 5, "{stats:?}");
    assert_eq!(stats.get(Counter::ConnectUdp), 1);
}

#[test]
fn pinned_maps_and_links_are_adopted_and_keep_working_without_an_agent() {
    if !root_or_skip("pinned_maps_and_links_are_adopted_and_keep_working_without_an_agent") {
        return;
    }
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/shoal-vipk-{}", std::process::id()));
    struct Unpin(PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = VipProgram::unpin_links(&self.0);
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _unpin = Unpin(pin_dir.clone());
    bpffs::prepare_pin_dir(&pin_dir).unwrap();
    let mut lab = Lab::new("pins");
    let mut addrs = BACKENDS.to_vec();
    addrs.push(VIP);
    let client = lab.netns("client", &addrs);
    let _servers = Servers::start(&client, &BACKENDS);
    let cookie = vip::netns_cookie(&client).unwrap();
    let cgroup = vip::cgroup2_root().unwrap();
    let desired = table(&ALL_HEALTHY, &[(cookie, NET)]);

    let mut first = VipProgram::load_pinned(&pin_dir).unwrap();
    assert_eq!(first.apply(&desired).unwrap(), 10);
    first.attach_pinned(&cgroup).unwrap();
    drop(first);
    // No program value exists now; the pinned links keep translating.
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        seen.insert(tcp_via(&client).unwrap().0);
    }
    assert_eq!(seen.len(), 4);

    // A new agent adopts: it reads back exactly what was written and has nothing to do.
    let mut second = VipProgram::load_pinned(&pin_dir).unwrap();
    assert_eq!(second.apply(&desired).unwrap(), 0, "{:?}", second.record());
    second.attach_pinned(&cgroup).unwrap();
    assert!(tcp_via(&client).is_ok());
    let stats = VipStats::read_pinned(&pin_dir).unwrap().unwrap();
    assert!(stats.get(Counter::ConnectTcp) >= 5, "{stats:?}");
    let usage = vip::VipUsage::read_pinned(&pin_dir).unwrap().unwrap();
    let counts: HashMap<_, _> = usage.maps.iter().map(|(n, c, _)| (*n, *c)).collect();
    assert_eq!(counts[shoal_common::vip::VIPS_MAP], 1);
    assert_eq!(counts[shoal_common::vip::BACKENDS_MAP], 4);
    let rows = vip::stats_rows(&pin_dir).unwrap();
    assert!(
        rows.iter().any(|(n, v)| *n == "vip_connect_tcp" && *v >= 5),
        "{rows:?}"
    );
    assert!(rows.contains(&("vip_services", 1)), "{rows:?}");
    assert!(
        rows.contains(&("vip_udp_flows_capacity", 65_536)),
        "{rows:?}"
    );
    drop(second);

    // Without the pins nothing translates any more.
    VipProgram::unpin_links(&pin_dir).unwrap();
    let e = tcp_via(&client).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}

/// Published ports from the node itself: a socket of the node's namespace naming one of
/// its addresses (or 127.0.0.1) and a published port gets a backend and the target port;
/// getpeername and a UDP reply's source say what the socket named. Other namespaces are
/// left alone.
#[test]
fn node_ports_reach_backends_from_the_node_itself() {
    let Some(mut prog) = loaded("node_ports_reach_backends_from_the_node_itself") else {
        return;
    };
    const NODE: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
    const PUBLISHED: u16 = 9080;
    let mut lab = Lab::new("nodeport");
    let mut addrs = BACKENDS.to_vec();
    addrs.push(NODE);
    let node = lab.netns("node", &addrs);
    let other = lab.netns("other", &addrs);
    let _servers = Servers::start(&node, &BACKENDS);
    let _other_servers = Servers::start(&other, &BACKENDS);
    let cookie = vip::netns_cookie(&node).unwrap();
    let mut t = VipTable::default();
    for protocol in [6u8, 17] {
        let frontend = nodeport_frontend(protocol, PUBLISHED);
        t.vips.insert(
            frontend,
            VipSpec {
                network: 0,
                backends: BACKENDS
                    .iter()
                    .map(|b| (*b, BackendState::Healthy))
                    .collect(),
            },
        );
        for addr in [NODE, Ipv4Addr::LOCALHOST] {
            let key = NodePort {
                netns: cookie,
                addr,
                port: PUBLISHED,
                protocol,
            };
            t.nodeports.insert(key, (frontend, PORT));
        }
    }
    prog.apply(&t).unwrap();
    let usage = prog.usage().unwrap();
    assert!(
        usage
            .maps
            .iter()
            .any(|(name, n, _)| *name == "VIP_NODEPORTS" && *n == 4),
        "{usage:?}"
    );

    let tcp = |ns: &Path, addr: Ipv4Addr| -> std::io::Result<(Ipv4Addr, SocketAddr)> {
        let to = SocketAddr::from((addr, PUBLISHED));
        let mut s = netns::in_netns_at(ns, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(2))
        })??;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let peer = s.peer_addr()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok((answer.parse().expect("server sends its address"), peer))
    };
    for addr in [NODE, Ipv4Addr::LOCALHOST] {
        let mut seen: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
        for _ in 0..8 {
            let (backend, peer) = tcp(&node, addr).unwrap();
            assert_eq!(peer, SocketAddr::from((addr, PUBLISHED)), "getpeername");
            *seen.entry(backend).or_default() += 1;
        }
        assert_eq!(
            seen,
            BACKENDS.iter().map(|b| (*b, 2)).collect::<BTreeMap<_, _>>(),
            "round-robin over the 4 backends through {addr}"
        );
    }
    let e = tcp(&other, NODE).expect_err("another namespace is not translated");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");

    // UDP: one socket is one flow; replies come from what the socket named.
    let s = udp_socket(&node);
    let mut first = None;
    for i in 0..4 {
        let msg = format!("m{i}");
        s.send_to(msg.as_bytes(), (NODE, PUBLISHED)).unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = s.recv_from(&mut buf).expect("a reply");
        assert_eq!(from, SocketAddr::from((NODE, PUBLISHED)), "reply source");
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        let (backend, echoed) = text.split_once(' ').unwrap();
        assert_eq!(echoed, msg);
        let backend: Ipv4Addr = backend.parse().unwrap();
        assert_eq!(
            *first.get_or_insert(backend),
            backend,
            "a flow keeps its backend"
        );
    }
    // Unhealthy: gone from the round, the flow moves; removed: nothing translated.
    let gone = first.unwrap();
    let mut t2 = t.clone();
    for spec in t2.vips.values_mut() {
        spec.backends.insert(gone, BackendState::Unhealthy);
    }
    prog.apply(&t2).unwrap();
    for _ in 0..6 {
        let (backend, _) = tcp(&node, NODE).unwrap();
        assert_ne!(
            backend, gone,
            "an unhealthy backend gets no new connections"
        );
    }
    prog.apply(&VipTable::default()).unwrap();
    let e = tcp(&node, Ipv4Addr::LOCALHOST).expect_err("no published port any more");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}
