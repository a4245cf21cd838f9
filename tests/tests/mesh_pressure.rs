//! The routing mesh's flow tables under pressure, on a 2-host lab whose agents run with
//! `--lb-flows 1024`: a service `web` of 2 `shoal/web:1` tasks (one per host) publishes
//! 8080 -> 8080 (the image's keep-alive server) with the default balancing (Maglev), a
//! service `web-rr` the same on 8081 with `lb=roundrobin`; `service inspect` shows both,
//! and a wrong `lb=` value is refused with nothing created.
//!
//! Idle keep-alive connections are held through both ports and both hosts while, from
//! the lab's client namespace, 20,000 new connections (each a request and its answer)
//! go to the Maglev port and a 10-second SYN flood with spoofed sources (a raw socket
//! in that namespace) hits both ports on both hosts. Every new connection is answered,
//! every idle connection then still answers from the task it had, round-robin ones
//! included (those are cut if their entry is evicted, so this proves that the flood and
//! the churn evicted no live flow), and `dataplane stats` counts the flood, the tables'
//! sizes and no live flow evicted.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use shoal_tests::{
    lab, privileged,
    swarm::{in_netns, Cli, BOUND},
    wait_for, LabGuard,
};

/// New connections made while the idle ones are held.
const CHURN: usize = 20_000;
/// The client port of the first of them; the n-th uses the next n-th port.
const CHURN_FIRST_PORT: u16 = 10_000;
/// Threads making them.
const CHURN_THREADS: usize = 16;
/// How long the SYN flood lasts, and its pace.
const FLOOD_FOR: Duration = Duration::from_secs(10);
const FLOOD_PPS: u64 = 20_000;
/// Idle connections per host and port.
const IDLE_PER: usize = 3;
/// How long one answer may take on a loaded 2-core machine.
const ANSWER_BOUND: Duration = Duration::from_secs(30);

/// A kept-alive HTTP/1.1 connection to the image's keep-alive server.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    /// Connects from `from_port` when given (else a port the kernel picks).
    fn open(to: SocketAddrV4, from_port: Option<u16>) -> Result<Self, String> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .map_err(|e| format!("socket: {e}"))?;
        if let Some(port) = from_port {
            socket
                .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
                .map_err(|e| format!("bind port {port}: {e}"))?;
        }
        socket
            .connect_timeout(&SocketAddr::V4(to).into(), ANSWER_BOUND)
            .map_err(|e| format!("connect {to} from port {from_port:?}: {e}"))?;
        let s: TcpStream = socket.into();
        s.set_read_timeout(Some(ANSWER_BOUND)).ok();
        s.set_write_timeout(Some(ANSWER_BOUND)).ok();
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        Ok(Self {
            reader: BufReader::new(s),
            writer,
        })
    }

    /// One request; the answering task's hostname.
    fn ask(&mut self) -> Result<String, String> {
        self.writer
            .write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut length = None;
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| format!("read after {head:?}: {e}"))?;
            if n == 0 {
                return Err(format!("closed after {head:?}"));
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let length = length.ok_or_else(|| format!("no Content-Length: {head:?}"))?;
        let mut body = vec![0; length];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| format!("body: {e}"))?;
        let body = String::from_utf8_lossy(&body);
        body.split_whitespace()
            .next()
            .and_then(|h| h.strip_prefix("host="))
            .map(str::to_owned)
            .ok_or_else(|| format!("answer {head:?} {body:?}"))
    }

    /// Closes as a client does: FIN, then the server's end.
    fn close(mut self) -> Result<(), String> {
        self.writer
            .shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        let mut rest = Vec::new();
        self.reader
            .read_to_end(&mut rest)
            .map_err(|e| format!("waiting for the server's end: {e}"))?;
        Ok(())
    }
}

fn mesh_status(h: &lab::HostState) -> Value {
    std::fs::read(h.run_dir.join("agent/lb.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn mesh_stats(lab: &LabGuard, h: &lab::HostState, shoal: &Path) -> Value {
    let pin = h.pin_dir.display().to_string();
    let text = lab.exec_ok(
        &h.name,
        &[
            &shoal.display().to_string(),
            "dataplane",
            "stats",
            "--json",
            "--pin-dir",
            &pin,
        ],
    );
    serde_json::from_str(&text).expect("stats JSON")
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
}

fn checksum(words: impl Iterator<Item = u16>) -> u16 {
    let mut sum: u32 = words.map(u32::from).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn be_words(b: &[u8]) -> impl Iterator<Item = u16> + '_ {
    b.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
}

/// An IPv4 TCP SYN from `src:sport` to `dst:dport`, checksums right.
fn syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(be_words(&p[..20]));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[32] = 0x50;
    p[33] = 0x02;
    p[34..36].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&p[20..40]);
    let tcp_sum = checksum(be_words(&pseudo));
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// Sends spoofed SYNs (sources in 198.18.0.0/15, ports at random) to every target in
/// turn for `FLOOD_FOR` at `FLOOD_PPS`, from a raw socket of the calling thread's
/// namespace. Returns how many were sent.
fn flood(targets: &[SocketAddrV4]) -> u64 {
    // SAFETY: plain socket call; IPPROTO_RAW implies IP_HDRINCL.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let began = Instant::now();
    let mut sent = 0u64;
    while began.elapsed() < FLOOD_FOR {
        let due = (began.elapsed().as_secs_f64() * FLOOD_PPS as f64) as u64;
        while sent < due {
            let r = next();
            let src = Ipv4Addr::new(198, 18 + (r & 1) as u8, (r >> 8) as u8, (r >> 16) as u8);
            let sport = 1024 + ((r >> 24) as u16 % 64000);
            let to = targets[(sent % targets.len() as u64) as usize];
            let frame = syn(src, sport, *to.ip(), to.port(), (r >> 32) as u32);
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(to.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: valid buffer and address of the sizes given.
            let n = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            assert_eq!(
                n,
                frame.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
            sent += 1;
        }
        thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    sent
}

#[test]
fn live_flows_survive_churn_and_a_syn_flood() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('2', 2);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &["--lb-flows".into(), "1024".into()]);
    cli.form_cluster();

    // A balancing the mesh does not have: refused, nothing created.
    let err = cli.err(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "bad",
            "--detach",
            "-p",
            "published=8090,target=8080,lb=leastconn",
            "shoal/web:1",
        ],
    );
    assert!(
        err.contains("\"leastconn\" is not roundrobin or maglev"),
        "{err}"
    );
    assert!(cli.run("h1", &["service", "inspect", "bad"]).is_err());

    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--detach",
            "--replicas",
            "2",
            "-p",
            "8080:8080",
            "shoal/web:1",
        ],
    );
    // Its own tasks: a task behind two published ports with the same target port
    // answers from one of them only (MESH_REVPORT).
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "web-rr",
            "--detach",
            "--replicas",
            "2",
            "-p",
            "published=8081,target=8080,lb=roundrobin",
            "shoal/web:1",
        ],
    );
    cli.wait_running("web", 2, |t| t[0].node != t[1].node);
    cli.wait_running("web-rr", 2, |t| t[0].node != t[1].node);
    let inspect: Value =
        serde_json::from_str(&cli.ok("h1", &["service", "inspect", "web", "web-rr"]))
            .expect("inspect");
    let balance: BTreeMap<u64, String> = inspect
        .as_array()
        .expect("services")
        .iter()
        .flat_map(|s| {
            s["Spec"]["EndpointSpec"]["Ports"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|p| {
            (
                p["PublishedPort"].as_u64().unwrap_or(0),
                p["Balance"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        balance,
        BTreeMap::from([(8080, "maglev".into()), (8081, "roundrobin".into())]),
        "{inspect}"
    );
    let pretty = cli.ok("h1", &["service", "inspect", "--pretty", "web-rr"]);
    assert!(pretty.contains("Balance = roundrobin"), "{pretty}");
    for h in &guard.state.hosts {
        wait_for(&format!("{}: mesh ready", h.name), BOUND, || {
            let s = mesh_status(h);
            if s["reply_path"] == "ready" && s["frontends"].as_u64() == Some(2) {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        });
    }
    // The client's veth hands over segments with offloaded (partial) checksums, which
    // XDP on the hosts' veths would forward as they are: a NIC on a wire never does.
    let out = guard.client(&["ethtool", "-K", "eth0", "tx", "off"]);
    assert!(out.status.success(), "{out:?}");
    let client_ns = PathBuf::from("/run/netns").join(&guard.state.client.netns);
    // Every connection here has a client port of its own: the idle ones 61000 and up,
    // churn connection n the port CHURN_FIRST_PORT + n (never reused, so never in
    // TIME_WAIT). A task sees the client's address and port whichever node the
    // connection came through, so one client port open through h1 and h2 at once to the
    // same task would be one 4-tuple there: the kernel's own port choice does that,
    // since it picks ports per destination address.
    let port_range = |range: &str| {
        in_netns(&client_ns, || {
            std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", range)
        })
        .expect("client port range")
    };
    port_range("61000 61999");
    let hosts: Vec<Ipv4Addr> = guard.state.hosts.iter().map(|h| h.address).collect();

    // Idle connections through both ports and both hosts, each answered once.
    let mut idle: Vec<(SocketAddrV4, Conn, String)> = Vec::new();
    for &h in &hosts {
        for port in [8080, 8081] {
            for _ in 0..IDLE_PER {
                let to = SocketAddrV4::new(h, port);
                let (conn, task) = wait_for(&format!("an idle connection to {to}"), BOUND, || {
                    let mut c = in_netns(&client_ns, || Conn::open(to, None)).map_err(|e| {
                        let stats: Vec<BTreeMap<String, Value>> = guard
                            .state
                            .hosts
                            .iter()
                            .map(|h| {
                                let s = mesh_stats(&guard, h, &shoal);
                                s.as_object()
                                    .into_iter()
                                    .flatten()
                                    .filter(|(k, _)| k.starts_with("mesh_"))
                                    .map(|(k, v)| (k.clone(), v.clone()))
                                    .collect()
                            })
                            .collect();
                        format!("{e}; the mesh's counters: {stats:?}")
                    })?;
                    let task = c.ask()?;
                    Ok::<_, String>((c, task))
                });
                idle.push((to, conn, task));
            }
        }
    }
    let before: Vec<Value> = guard
        .state
        .hosts
        .iter()
        .map(|h| mesh_stats(&guard, h, &shoal))
        .collect();

    // The churn and the flood, at the same time.
    let began = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let churn: Vec<_> = (0..CHURN_THREADS)
        .map(|_| {
            let (done, failures, failed, stop) =
                (done.clone(), failures.clone(), failed.clone(), stop.clone());
            let ns = client_ns.clone();
            let hosts = hosts.clone();
            thread::spawn(move || {
                in_netns(&ns, || loop {
                    let n = done.fetch_add(1, Ordering::Relaxed);
                    if n >= CHURN || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let to = SocketAddrV4::new(hosts[n % hosts.len()], 8080);
                    let from_port = CHURN_FIRST_PORT + n as u16;
                    let r = Conn::open(to, Some(from_port)).and_then(|mut c| {
                        c.ask()?;
                        c.close()
                    });
                    if let Err(e) = r {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut f = failures.lock().unwrap();
                        if f.len() < 8 {
                            f.push(format!(
                                "{:.1} s port {from_port} -> {to}: {e}",
                                began.elapsed().as_secs_f64()
                            ));
                        }
                    }
                })
            })
        })
        .collect();
    let flood_targets: Vec<SocketAddrV4> = hosts
        .iter()
        .flat_map(|h| [SocketAddrV4::new(*h, 8080), SocketAddrV4::new(*h, 8081)])
        .collect();
    let ns = client_ns.clone();
    let flooder = thread::spawn(move || in_netns(&ns, || flood(&flood_targets)));
    let flooded = flooder.join().expect("flood thread");
    let flood_took = began.elapsed();
    // The churn has its bound: 20,000 connections, each a few forks in a task.
    let churn_bound = Duration::from_secs(600);
    while churn.iter().any(|t| !t.is_finished()) {
        if began.elapsed() > churn_bound {
            stop.store(true, Ordering::Relaxed);
        }
        thread::sleep(Duration::from_millis(200));
    }
    for t in churn {
        t.join().expect("churn thread");
    }
    let churn_took = began.elapsed();
    let made = done.load(Ordering::Relaxed).min(CHURN);
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "SYN flood: {flooded} SYNs in {:.1} s; churn: {made} connections in {:.1} s, {failed} failed",
        flood_took.as_secs_f64(),
        churn_took.as_secs_f64()
    );
    // The mesh's counters, printed before anything is checked so that a failure below
    // shows them.
    let mut new_flows = 0;
    let mut after = Vec::new();
    for (h, b) in guard.state.hosts.iter().zip(&before) {
        let s = mesh_stats(&guard, h, &shoal);
        println!(
            "{}: new flows {}, live {} of {}, opening {} of {}, closing {} of {}, live evicted {}, misses {}",
            h.name,
            counter(&s, "mesh_new_flows") - counter(b, "mesh_new_flows"),
            counter(&s, "mesh_flows"),
            counter(&s, "mesh_flow_capacity"),
            counter(&s, "mesh_opening_flows"),
            counter(&s, "mesh_opening_capacity"),
            counter(&s, "mesh_closing_flows"),
            counter(&s, "mesh_closing_capacity"),
            counter(&s, "mesh_flows_evicted"),
            counter(&s, "mesh_flow_misses"),
        );
        new_flows += counter(&s, "mesh_new_flows") - counter(b, "mesh_new_flows");
        after.push(s);
    }
    assert!(
        made == CHURN && !stop.load(Ordering::Relaxed),
        "only {made} of {CHURN} connections made in {churn_bound:?}"
    );
    assert_eq!(
        failed,
        0,
        "connections failed under the flood: {:#?}",
        failures.lock().unwrap()
    );
    assert!(
        flooded >= FLOOD_PPS * FLOOD_FOR.as_secs() * 9 / 10,
        "the flood sent only {flooded} SYNs"
    );

    // Every idle connection still answers, from the task it had.
    for (to, conn, task) in &mut idle {
        let again = conn.ask().unwrap_or_else(|e| {
            panic!("idle connection to {to} after the churn and the flood: {e}")
        });
        assert_eq!(
            &again, task,
            "idle connection to {to} moved to another task"
        );
    }

    // The counters: the flood and the churn went through the mesh, the tables are the
    // size asked for, and no live flow was evicted.
    for (h, s) in guard.state.hosts.iter().zip(&after) {
        assert_eq!(counter(s, "mesh_flow_capacity"), 1024, "{s}");
        assert_eq!(counter(s, "mesh_opening_capacity"), 1024, "{s}");
        assert_eq!(counter(s, "mesh_closing_capacity"), 1024, "{s}");
        assert_eq!(counter(s, "mesh_flows_evicted"), 0, "{}: {s}", h.name);
        assert_eq!(counter(s, "mesh_flow_insert_failed"), 0, "{s}");
    }
    // The flood reached the mesh in volume (some of its frames are lost before XDP on
    // a loaded machine: the veth's queue), turning the opening tables over many times.
    let flood_flows = new_flows.saturating_sub(CHURN as u64);
    println!("flood SYNs given a backend: {flood_flows} of {flooded} sent");
    assert!(
        flood_flows >= flooded / 2 && flood_flows >= 100 * 1024,
        "new flows {new_flows} for {flooded} flood SYNs and {CHURN} connections"
    );
    for (_, conn, _) in idle {
        conn.close().expect("idle connection closes");
    }

    lab::down(&guard.layout).expect("lab down");
    assert_eq!(lab::leftovers(&guard.layout), Vec::<String>::new());
}
