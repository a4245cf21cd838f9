//! Port 2377 under a flood from outside the cluster, on a real 3-host lab: from the
//! lab's client namespace, 2,000 idle TCP connections (20 source addresses), 200 TLS
//! connections that finish their handshake without a certificate and say nothing (10
//! more addresses), and streams of 64 MiB junk frames, over TLS and raw. Meanwhile a
//! node joins, writes go on and every node keeps heartbeating: no node is marked Down
//! (their store records never change), and the leader's agent holds a bounded number of
//! connections. Prints the figures.
use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use shoal_tests::{
    manager_port::{self, cluster_dir, identity_in, stranger_config},
    privileged,
    swarm::{agent_pid, Cli, BOUND},
    wait_for, LabGuard,
};

/// How long the flood runs at full strength while the cluster is watched.
const WINDOW: Duration = Duration::from_secs(40);
const IDLE_TCP: usize = 2000;
const IDLE_TLS: usize = 200;
/// What port 2377 lets strangers (not the cluster's nodes) hold at once, in all.
const MAX_STRANGERS: u64 = 512;
const JUNK_FRAME: u32 = 64 << 20;

/// Counters the flood threads keep.
#[derive(Default)]
struct Figures {
    tcp_connects: AtomicU64,
    tcp_open_max: AtomicU64,
    tcp_open_now: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_refused: AtomicU64,
    tls_held_max: AtomicU64,
    junk_tls_frames: AtomicU64,
    junk_tls_bytes: AtomicU64,
    junk_tls_max_bytes: AtomicU64,
    junk_raw_frames: AtomicU64,
    junk_raw_bytes: AtomicU64,
}

fn max(a: &AtomicU64, v: u64) {
    a.fetch_max(v, Ordering::Relaxed);
}

/// A thread that runs `f` inside the network namespace at `ns`.
fn spawn_in(ns: &Path, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    let file = File::open(ns).unwrap_or_else(|e| panic!("open {}: {e}", ns.display()));
    thread::spawn(move || {
        // SAFETY: setns on this thread only; the file stays open across the call.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// Whether the peer closed `conn` (it is non-blocking). What it sent is read and
/// dropped (a TLS server's session tickets, its closing alert): these connections
/// never speak.
fn closed(mut conn: &TcpStream) -> bool {
    let mut b = [0u8; 4096];
    loop {
        match conn.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

/// Keeps `IDLE_TCP` connections open (as far as the manager lets them), from `sources`,
/// re-opening those it closes once a second.
fn idle_tcp(to: SocketAddr, sources: Vec<IpAddr>, stop: Arc<AtomicBool>, f: Arc<Figures>) {
    let mut slots: Vec<Option<TcpStream>> = (0..IDLE_TCP).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        let sweep = Instant::now();
        let mut open = 0;
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|c| !closed(c)) {
                open += 1;
                continue;
            }
            let source = sources[i % sources.len()];
            *slot = manager_port::tcp_from(Some(source), to, Duration::from_secs(3))
                .and_then(|c| c.set_nonblocking(true).map(|()| c))
                .ok();
            if slot.is_some() {
                f.tcp_connects.fetch_add(1, Ordering::Relaxed);
            }
        }
        f.tcp_open_now.store(open, Ordering::Relaxed);
        max(&f.tcp_open_max, open);
        if let Some(rest) = Duration::from_secs(1).checked_sub(sweep.elapsed()) {
            thread::sleep(rest);
        }
    }
}

/// Keeps `IDLE_TLS` connections that finished a handshake without a certificate and
/// say nothing, from `sources`.
fn idle_tls(
    to: SocketAddr,
    sources: Vec<IpAddr>,
    config: Arc<rustls::ClientConfig>,
    stop: Arc<AtomicBool>,
    f: Arc<Figures>,
) {
    let mut slots: Vec<Option<manager_port::Conn>> = (0..IDLE_TLS).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        let sweep = Instant::now();
        let mut held = 0;
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|c| !closed(&c.sock)) {
                held += 1;
                continue;
            }
            let source = sources[i % sources.len()];
            match manager_port::connect_from(Some(source), to, &config, Duration::from_secs(3)) {
                Ok(conn) => {
                    let _ = conn.sock.set_nonblocking(true);
                    f.tls_handshakes.fetch_add(1, Ordering::Relaxed);
                    *slot = Some(conn);
                }
                Err(_) => {
                    f.tls_refused.fetch_add(1, Ordering::Relaxed);
                    *slot = None;
                }
            }
        }
        max(&f.tls_held_max, held);
        if let Some(rest) = Duration::from_secs(1).checked_sub(sweep.elapsed()) {
            thread::sleep(rest);
        }
    }
}

/// Writes one junk frame that says 64 MiB on `out` until the other end stops taking it;
/// returns the bytes it took.
fn junk_frame(out: &mut impl Write) -> u64 {
    let chunk = vec![0x5au8; 64 << 10];
    let mut sent = 0u64;
    if out.write_all(&JUNK_FRAME.to_be_bytes()).is_err() {
        return 0;
    }
    while sent < u64::from(JUNK_FRAME) {
        match out.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => sent += n as u64,
        }
        let _ = out.flush();
    }
    sent
}

/// A stream of 64 MiB junk frames over TLS without a certificate, from `source`.
fn junk_tls(
    to: SocketAddr,
    source: IpAddr,
    config: Arc<rustls::ClientConfig>,
    stop: Arc<AtomicBool>,
    f: Arc<Figures>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut conn) =
            manager_port::connect_from(Some(source), to, &config, Duration::from_secs(3))
        else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let sent = junk_frame(&mut conn);
        f.junk_tls_frames.fetch_add(1, Ordering::Relaxed);
        f.junk_tls_bytes.fetch_add(sent, Ordering::Relaxed);
        max(&f.junk_tls_max_bytes, sent);
        // The manager's last word, if any, is not an answer.
        let mut b = [0u8; 64];
        let _ = conn.read(&mut b);
    }
}

/// The same, straight on TCP (no TLS at all), from `source`.
fn junk_raw(to: SocketAddr, source: IpAddr, stop: Arc<AtomicBool>, f: Arc<Figures>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut conn) = manager_port::tcp_from(Some(source), to, Duration::from_secs(3)) else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
        let sent = junk_frame(&mut conn);
        f.junk_raw_frames.fetch_add(1, Ordering::Relaxed);
        f.junk_raw_bytes.fetch_add(sent, Ordering::Relaxed);
    }
}

/// The agent's resident memory (KiB) and open files.
fn agent_use(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (rss, fds)
}

/// The store version of node `name`'s record: it moves when its status does.
/// Waits until `h`'s agent started gossip, which it does once the store shows the
/// gossip key it registered: that write changes its node's record, after which nothing
/// but a status change should.
fn wait_gossip_registered(h: &shoal_tests::lab::HostState) {
    wait_for(&format!("{}'s gossip started", h.name), BOUND, || {
        let log = std::fs::read_to_string(h.run_dir.join("agent.log")).unwrap_or_default();
        log.contains("gossip started")
            .then_some(())
            .ok_or_else(|| "no \"gossip started\" in its agent log yet".to_string())
    });
}

fn node_version(cli: &Cli, name: &str) -> String {
    cli.ok(
        "h1",
        &["node", "inspect", "--format", "{{.Version.Index}}", name],
    )
    .trim()
    .to_owned()
}

fn write_latency(cli: &Cli, i: usize) -> Result<Duration, String> {
    let started = Instant::now();
    cli.run(
        "h1",
        &["node", "update", "--label-add", &format!("flood={i}"), "h1"],
    )
    .map(|_| started.elapsed())
}

fn summary(latencies: &mut [Duration]) -> String {
    latencies.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    match latencies {
        [] => "none".into(),
        l => format!(
            "n={} min={:.0} ms median={:.0} ms max={:.0} ms",
            l.len(),
            ms(&l[0]),
            ms(&l[l.len() / 2]),
            ms(&l[l.len() - 1])
        ),
    }
}

#[test]
fn a_flood_of_idle_connections_and_junk_frames_leaves_the_cluster_working() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('f', 3);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    let hosts = &guard.state.hosts;
    let h1 = hosts[0].address.to_string();
    let manager: SocketAddr = format!("{h1}:2377").parse().unwrap();
    cli.ok("h1", &["swarm", "init", "--advertise-addr", &h1]);
    let token = cli.ok("h1", &["swarm", "join-token", "-q", "worker"]);
    let token = token.trim().to_owned();
    cli.ok(
        "h2",
        &["swarm", "join", "--token", &token, &manager.to_string()],
    );
    wait_for("2 nodes Ready", BOUND, || {
        let rows = cli.run("h1", &["node", "ls"])?;
        (rows.matches("Ready").count() == 2)
            .then_some(())
            .ok_or(rows)
    });

    wait_gossip_registered(&hosts[1]);

    let agent = agent_pid(&hosts[0]);
    let (rss_before, fds_before) = agent_use(agent);
    let mut before: Vec<Duration> = (0..5)
        .map(|i| write_latency(&cli, i).expect("a write before the flood"))
        .collect();
    let h2_version = node_version(&cli, "h2");

    // The client namespace gets the flood's source addresses (the lab's underlay is its
    // own; they go with the namespace).
    let client_ns = PathBuf::from("/run/netns").join(&guard.state.client.netns);
    let source = |last: u8| IpAddr::V4(Ipv4Addr::new(192, 168, 77, last));
    for last in 150..=181 {
        let out = std::process::Command::new("ip")
            .args([
                "-n",
                &guard.state.client.netns,
                "addr",
                "add",
                &format!("{}/24", source(last)),
                "dev",
                "eth0",
            ])
            .output()
            .expect("ip addr add");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let digest = identity_in(&cluster_dir(&hosts[0])).ca().digest();
    let stranger = stranger_config(&digest);
    let stop = Arc::new(AtomicBool::new(false));
    let figures = Arc::new(Figures::default());
    let mut threads = Vec::new();
    {
        let (stop, f) = (stop.clone(), figures.clone());
        let sources = (150..170).map(source).collect();
        threads.push(spawn_in(&client_ns, move || {
            idle_tcp(manager, sources, stop, f)
        }));
    }
    {
        let (stop, f, config) = (stop.clone(), figures.clone(), stranger.clone());
        let sources = (170..180).map(source).collect();
        threads.push(spawn_in(&client_ns, move || {
            idle_tls(manager, sources, config, stop, f)
        }));
    }
    {
        let (stop, f, config) = (stop.clone(), figures.clone(), stranger.clone());
        threads.push(spawn_in(&client_ns, move || {
            junk_tls(manager, source(180), config, stop, f)
        }));
    }
    {
        let (stop, f) = (stop.clone(), figures.clone());
        threads.push(spawn_in(&client_ns, move || {
            junk_raw(manager, source(181), stop, f)
        }));
    }
    wait_for("the flood holds its connections", BOUND, || {
        let open = figures.tcp_connects.load(Ordering::Relaxed);
        (open >= IDLE_TCP as u64)
            .then_some(())
            .ok_or(format!("{open} connections made"))
    });

    // While it runs: a node joins, writes go on, nobody goes Down.
    let flood_start = Instant::now();
    let join_started = Instant::now();
    let joined = cli.ok(
        "h3",
        &["swarm", "join", "--token", &token, &manager.to_string()],
    );
    let join_took = join_started.elapsed();
    assert!(joined.contains("joined a swarm as a worker"), "{joined}");
    wait_for("h3 Ready", BOUND, || {
        let rows = cli.run("h1", &["node", "ls"])?;
        (rows.matches("Ready").count() == 3)
            .then_some(())
            .ok_or(rows)
    });
    wait_gossip_registered(&hosts[2]);
    let h3_version = node_version(&cli, "h3");
    let mut during = Vec::new();
    let mut failed_writes = Vec::new();
    let mut peak = (0u64, 0u64);
    let mut samples = 0;
    let mut i = 100;
    while flood_start.elapsed() < WINDOW {
        match write_latency(&cli, i) {
            Ok(d) => during.push(d),
            Err(e) => failed_writes.push(e),
        }
        i += 1;
        let rows = cli.ok("h1", &["node", "ls"]);
        samples += 1;
        assert!(
            !rows.contains("Down"),
            "a node is Down during the flood:\n{rows}"
        );
        let (rss, fds) = agent_use(agent);
        peak = (peak.0.max(rss), peak.1.max(fds));
    }
    let rows = cli.ok("h1", &["node", "ls"]);
    assert_eq!(rows.matches("Ready").count(), 3, "{rows}");
    let h2_after = node_version(&cli, "h2");
    let h3_after = node_version(&cli, "h3");
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("flood thread");
    }
    let (rss_after, fds_after) = agent_use(agent);

    let f = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!("FLOOD on {manager} for {:?}:", flood_start.elapsed());
    eprintln!(
        "  idle TCP: {} connections made from 20 addresses; open at once (client's view): max {}, at the end {}",
        f(&figures.tcp_connects),
        f(&figures.tcp_open_max),
        f(&figures.tcp_open_now)
    );
    eprintln!(
        "  idle TLS without a certificate: {} handshakes done, {} refused, at most {} held at once",
        f(&figures.tls_handshakes),
        f(&figures.tls_refused),
        f(&figures.tls_held_max)
    );
    eprintln!(
        "  64 MiB junk frames over TLS: {} frames, {} bytes taken in all, at most {} per frame",
        f(&figures.junk_tls_frames),
        f(&figures.junk_tls_bytes),
        f(&figures.junk_tls_max_bytes)
    );
    eprintln!(
        "  64 MiB junk frames on raw TCP: {} frames, {} bytes taken in all",
        f(&figures.junk_raw_frames),
        f(&figures.junk_raw_bytes)
    );
    eprintln!("  join of h3 during the flood: {join_took:?}");
    eprintln!("  writes before: {}", summary(&mut before));
    eprintln!(
        "  writes during: {}, failed: {}",
        summary(&mut during),
        failed_writes.len()
    );
    eprintln!("  node ls samples during the flood: {samples}, none with a node Down");
    eprintln!(
        "  leader's agent: RSS {rss_before} KiB before, {} KiB peak, {rss_after} KiB after; open files {fds_before} before, {} peak, {fds_after} after",
        peak.0, peak.1
    );

    assert!(failed_writes.is_empty(), "writes failed: {failed_writes:?}");
    assert!(during.len() >= 5, "too few writes during the flood");
    assert_eq!(
        h2_after, h2_version,
        "h2's record changed during the flood (Down?)"
    );
    assert_eq!(
        h3_after, h3_version,
        "h3's record changed during the flood (Down?)"
    );
    assert!(
        peak.1 <= fds_before + MAX_STRANGERS + 64,
        "the leader's agent held {} files (from {fds_before})",
        peak.1
    );
    assert!(
        f(&figures.junk_tls_max_bytes) < u64::from(JUNK_FRAME) / 4,
        "a junk frame was taken in far: the manager read it"
    );
    shoal_tests::lab::down(&guard.layout).expect("lab down");
    assert_eq!(
        shoal_tests::lab::leftovers(&guard.layout),
        Vec::<String>::new()
    );
}
