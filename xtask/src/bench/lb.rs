//! `cargo xtask bench lb`: the ingress routing mesh against the other ways to reach a
//! task from outside, in one lab of two hosts.
//!
//! ```text
//!  client (192.168.77.100) ── wrk ──▶ h1 (192.168.77.11), no task          h2 (.12)
//!    mesh     h1:8080 ── XDP, VXLAN ────────────────────────────▶ t1 (10.255.0.21):8000
//!                                                       reply from h2 as h1:8080 (TC)
//!    direct   h2:8082 ────────────────────────────────────────────▶ h2's namespace
//!    iptables h1:8083 ── DNAT + SNAT (conntrack) ─────────────────▶ h2:8084
//!    haproxy  h1:8085 ── HAProxy (mode tcp) in h1 ────────────────▶ h2:8086
//! ```
//!
//! - HTTP requests/s and p99 latency with wrk from the client namespace, keep-alive and a
//!   new connection per request. Every server is a thread of this process (keep-alive
//!   unless asked to close), one per wrk connection, with its socket made in the task's
//!   or h2's namespace; each path has its own port, so leftover TIME_WAIT of one path
//!   never meets the next. [`ROUNDS`] rounds rotate the order of the paths; figures are
//!   medians, ratios the medians of each round's own ratios (the machine is shared).
//!   Targets: mesh >= 0.9x direct, >= 1.5x HAProxy, >= 1x iptables.
//! - Backend change to the first connection that obeys it: the declared LB file on h1
//!   swaps which of t1 and t2 is healthy (the other drains); a connect loop through the
//!   mesh times the first answer from the new one. Includes the agent seeing the file
//!   change (inotify, the standalone mode's source), its pipeline and the map writes:
//!   everything after the declared state changes. Targets: median <= 20 ms, max <=
//!   100 ms.
//! - 64-byte UDP packets per second through the mesh's XDP program (to a remote
//!   backend), through the kernel with iptables DNAT, and through an XDP program that only
//!   bounces frames (the ceiling), at equal offered load: `shoal-dataplane`'s example
//!   `mesh_pps_bench` (a live-frames XDP generator and an XDP sink in throwaway
//!   namespaces), [`PPS_RUNS`] runs, medians. Targets: mesh >= 3x iptables, >= 0.7x the
//!   ceiling.
//!
//! The lab's client sends with checksum offload off (on veth, XDP would otherwise
//! forward partial checksums); every path shares that.
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::{docker, Report};
use crate::{
    lab::{self, HostState, LabState, Layout},
    util::shoal_binary,
};

const TASKS: [(&str, &str); 2] = [("t1", "10.255.0.21"), ("t2", "10.255.0.22")];
const MESH_PORT: u16 = 8080;
/// The tasks' own httpd has port 80; the bench servers listen next to it.
const TARGET_PORT: u16 = 8000;
const DIRECT_PORT: u16 = 8082;
const IPTABLES_PORT: u16 = 8083;
const IPTABLES_BACKEND: u16 = 8084;
const HAPROXY_PORT: u16 = 8085;
const HAPROXY_BACKEND: u16 = 8086;
const ROUNDS: usize = 5;
const WRK_SECS: u32 = 2;
const WRK_CONNECTIONS: u32 = 32;
const CHANGES: usize = 10;
const PPS_RUNS: usize = 3;

pub(super) fn run() -> Result<ExitCode> {
    let mut report = Report {
        suite: "lb",
        ..Default::default()
    };
    let shoal = shoal_binary()?;
    let layout = Layout::new("benchlb")?;
    if !lab::leftovers(&layout).is_empty() {
        lab::down(&layout)?;
    }
    small_packets(&mut report)?;
    let state = lab::up(&layout, 2)?;
    let mut haproxy = None;
    let result = in_lab(&state, &shoal, &mut report, &mut haproxy);
    if let Some(mut h) = haproxy {
        let _ = h.kill();
        let _ = h.wait();
    }
    let down = lab::down(&layout);
    result?;
    down?;
    report.finish()
}

/// 64-byte UDP through the mesh, iptables and a bounce (see the module docs).
fn small_packets(report: &mut Report) -> Result<()> {
    let mut runs: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for _ in 0..PPS_RUNS {
        let out = crate::util::cargo()
            .args([
                "run",
                "--quiet",
                "--release",
                "-p",
                "shoal-dataplane",
                "--example",
                "mesh_pps_bench",
            ])
            .stderr(Stdio::inherit())
            .output()
            .context("running the small-packet benchmark")?;
        if !out.status.success() {
            bail!("the small-packet benchmark failed");
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let ["BENCH", "lb", name, value, "pps"] =
                line.split_whitespace().collect::<Vec<_>>().as_slice()
            {
                println!("bench lb: {name} {value} pps");
                runs.entry(name.to_string()).or_default().push(
                    value
                        .parse()
                        .with_context(|| format!("figure in {line:?}"))?,
                );
            }
        }
    }
    let get = |name: &str| -> Result<f64> {
        runs.get(name)
            .map(|v| median(v.clone()))
            .with_context(|| format!("the small-packet benchmark printed no {name}"))
    };
    let (mesh, ipt, bounce) = (
        get("udp64_mesh")?,
        get("udp64_iptables")?,
        get("udp64_bounce")?,
    );
    report.figure("udp64_mesh", mesh, "pps");
    report.figure("udp64_iptables", ipt, "pps");
    report.figure("udp64_bounce_ceiling", bounce, "pps");
    report.ratio("udp64_mesh_vs_iptables", mesh / ipt, ">=", 3.0);
    report.ratio("udp64_mesh_vs_ceiling", mesh / bounce, ">=", 0.7);
    Ok(())
}

fn ingress_node(state: &LabState) -> &HostState {
    &state.hosts[0]
}

fn task_node(state: &LabState) -> &HostState {
    &state.hosts[1]
}

fn in_lab(
    state: &LabState,
    shoal: &Path,
    report: &mut Report,
    haproxy: &mut Option<Child>,
) -> Result<()> {
    let (h1, h2) = (ingress_node(state), task_node(state));
    for (c, _) in TASKS {
        docker(
            state,
            &h2.name,
            &[
                "run",
                "-d",
                "--init",
                "--network",
                "none",
                "--name",
                c,
                "shoal/web:1",
            ],
        )?;
    }
    for (i, h) in state.hosts.iter().enumerate() {
        let overlay = h.run_dir.join("declared-overlay.json");
        write_atomic(&overlay, &overlay_state(state, i))?;
        write_atomic(&lb_file(h), &lb_state(state, "t1"))?;
        lab::agent::start(
            state,
            h,
            shoal,
            &[
                "--declared-state".into(),
                overlay.display().to_string(),
                "--declared-lb".into(),
                lb_file(h).display().to_string(),
            ],
        )?;
    }
    let client_ns = PathBuf::from("/run/netns").join(&state.client.netns);
    run_ok(
        "ip",
        &[
            "netns",
            "exec",
            &state.client.netns,
            "ethtool",
            "-K",
            "eth0",
            "tx",
            "off",
        ],
    )?;
    let pid = |c: &str| -> Result<u32> {
        docker(state, &h2.name, &["inspect", "-f", "{{.State.Pid}}", c])?
            .trim()
            .parse()
            .context("container pid")
    };
    let ns_of = |pid: u32| PathBuf::from(format!("/proc/{pid}/ns/net"));
    let h2_ns = ns_of(h2.holder_pid);
    let mut servers = Servers::default();
    for (c, _) in TASKS {
        servers.start(&ns_of(pid(c)?), TARGET_PORT, c)?;
    }
    for port in [DIRECT_PORT, IPTABLES_BACKEND, HAPROXY_BACKEND] {
        servers.start(&h2_ns, port, "h2")?;
    }

    // iptables DNAT + SNAT on h1, as Swarm builds its ingress minus IPVS.
    let ipt = |args: &[&str]| -> Result<()> {
        let mut argv = vec!["netns", "exec", &h1.netns, "iptables"];
        argv.extend_from_slice(args);
        run_ok("ip", &argv)
    };
    let to = format!("{}:{IPTABLES_BACKEND}", h2.address);
    let dport = IPTABLES_PORT.to_string();
    let h1_addr = h1.address.to_string();
    ipt(&[
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-p",
        "tcp",
        "-d",
        &h1_addr,
        "--dport",
        &dport,
        "-j",
        "DNAT",
        "--to-destination",
        &to,
    ])?;
    ipt(&[
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-p",
        "tcp",
        "-d",
        &h2.address.to_string(),
        "--dport",
        &IPTABLES_BACKEND.to_string(),
        "-j",
        "MASQUERADE",
    ])?;
    // HAProxy in h1's namespace.
    let cfg = h1.run_dir.join("haproxy.cfg");
    fs::write(
        &cfg,
        format!(
            "global\n  maxconn 4000\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
             timeout client 60s\n  timeout server 60s\nlisten bench\n  bind {}:{HAPROXY_PORT}\n  \
             server h2 {}:{HAPROXY_BACKEND}\n",
            h1.address, h2.address
        ),
    )?;
    *haproxy = Some(
        Command::new("ip")
            .args(["netns", "exec", &h1.netns, "haproxy", "-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(h1.run_dir.join("haproxy.log"))?)
            .spawn()
            .context("starting haproxy (run `cargo xtask setup`)")?,
    );

    let paths: [(&str, SocketAddr); 4] = [
        ("mesh", format!("{}:{MESH_PORT}", h1.address).parse()?),
        ("direct", format!("{}:{DIRECT_PORT}", h2.address).parse()?),
        (
            "iptables",
            format!("{}:{IPTABLES_PORT}", h1.address).parse()?,
        ),
        ("haproxy", format!("{}:{HAPROXY_PORT}", h1.address).parse()?),
    ];
    for (name, addr) in paths {
        let start = Instant::now();
        while let Err(e) = ask(&client_ns, addr) {
            if start.elapsed() > Duration::from_secs(60) {
                let log = fs::read_to_string(h1.run_dir.join("haproxy.log")).unwrap_or_default();
                bail!("{name} ({addr}) did not answer within 60 s: {e:#} (haproxy: {log})");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    for (load, close) in [("keepalive", false), ("new_connection", true)] {
        let mut rps: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        let mut p99: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        for round in 0..ROUNDS {
            for k in 0..paths.len() {
                let i = (k + round) % paths.len();
                let (name, addr) = paths[i];
                let (r, p) = wrk(&state.client.netns, addr, close)?;
                println!("bench lb: {load} {name} {r:.0} requests/s, p99 {p:.2} ms");
                rps[i].push(r);
                p99[i].push(p);
            }
        }
        for (i, (name, _)) in paths.iter().enumerate() {
            report.figure(
                &format!("{load}_{name}"),
                median(rps[i].clone()),
                "requests/s",
            );
            report.figure(&format!("{load}_{name}_p99"), median(p99[i].clone()), "ms");
        }
        let paired =
            |j: usize| -> f64 { median((0..ROUNDS).map(|r| rps[0][r] / rps[j][r]).collect()) };
        report.ratio(&format!("{load}_mesh_vs_direct"), paired(1), ">=", 0.9);
        report.ratio(&format!("{load}_mesh_vs_iptables"), paired(2), ">=", 1.0);
        report.ratio(&format!("{load}_mesh_vs_haproxy"), paired(3), ">=", 1.5);
    }

    // Backend change to the first connection that obeys it.
    let mesh = paths[0].1;
    let mut times = Vec::new();
    for i in 0..CHANGES {
        let to = if i % 2 == 0 { "t2" } else { "t1" };
        let t0 = Instant::now();
        write_atomic(&lb_file(h1), &lb_state(state, to))?;
        loop {
            if ask(&client_ns, mesh).ok().as_deref() == Some(to) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("the mesh did not move to {to} within 30 s");
            }
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        println!("bench lb: backend change {i} to {to}: first obeying connection after {ms:.1} ms");
        times.push(ms);
    }
    let max = times.iter().copied().fold(0.0, f64::max);
    let mid = median(times);
    report.figure("backend_change_to_connection_median", mid, "ms");
    report.figure("backend_change_to_connection_max", max, "ms");
    let status: Value = fs::read(h1.run_dir.join("agent/lb.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    if let Some(e) = status["elapsed_ms"].as_f64() {
        report.figure("backend_change_apply", e, "ms");
    }
    report.ratio("backend_change_to_connection_median_ms", mid, "<=", 20.0);
    report.ratio("backend_change_to_connection_max_ms", max, "<=", 100.0);
    drop(servers);
    Ok(())
}

fn run_ok(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn lb_file(h: &HostState) -> PathBuf {
    h.run_dir.join("declared-lb.json")
}

fn write_atomic(path: &Path, value: &Value) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec(value)?)?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn overlay_state(state: &LabState, host: usize) -> Value {
    let h2 = task_node(state).address.to_string();
    let (local, remote): (Vec<Value>, Vec<Value>) = if host == 1 {
        (
            TASKS
                .iter()
                .map(|(c, ip)| json!({"network": "ingress", "container": c, "ip": ip}))
                .collect(),
            Vec::new(),
        )
    } else {
        (
            Vec::new(),
            TASKS
                .iter()
                .map(|(_, ip)| json!({"network": "ingress", "ip": ip, "vtep": h2}))
                .collect(),
        )
    };
    json!({
        "networks": [{"id": "ingress", "vni": 4096, "subnet": "10.255.0.0/16", "gateway": "10.255.0.1"}],
        "local_endpoints": local,
        "remote_endpoints": remote,
    })
}

/// 8080 -> 80 with `healthy` the only healthy backend (the other draining).
fn lb_state(state: &LabState, healthy: &str) -> Value {
    let node = task_node(state).address.to_string();
    json!({
        "ingress_network": "ingress",
        "services": [{
            "id": "svc-bench", "name": "bench",
            "ports": [{"protocol": "tcp", "published": MESH_PORT, "target": TARGET_PORT}],
            "backends": TASKS.iter().map(|(c, ip)| json!({
                "task": c, "node": node, "addresses": {"ingress": ip},
                "state": if *c == healthy { "healthy" } else { "draining" }
            })).collect::<Vec<_>>()
        }]
    })
}

/// Runs `f` on a thread inside the network namespace at `ns`.
fn in_netns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let path = ns.to_owned();
    thread::spawn(move || -> Result<T> {
        let fd = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: setns on an open namespace fd; it changes only this thread.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("entering {}", path.display()));
        }
        Ok(f()?)
    })
    .join()
    .map_err(|_| anyhow!("the namespace thread panicked"))?
}

/// HTTP servers answering their name; stopped and joined on drop.
#[derive(Default)]
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    /// A server on 0.0.0.0:`port` in `ns`, one thread per wrk connection (plus one).
    fn start(&mut self, ns: &Path, port: u16, name: &'static str) -> Result<()> {
        let listener = in_netns(ns, move || {
            let l = TcpListener::bind(("0.0.0.0", port))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        let listener = Arc::new(listener);
        for _ in 0..=WRK_CONNECTIONS {
            let (listener, stop) = (listener.clone(), self.stop.clone());
            self.threads.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => serve(conn, name, &stop),
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            }));
        }
        Ok(())
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

/// Answers requests on one connection until it closes or asks to.
fn serve(mut conn: TcpStream, name: &str, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let n = match conn.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let request = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            let close = request.contains("connection: close") || request.contains("http/1.0");
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{name}",
                name.len(),
                if close { "close" } else { "keep-alive" }
            );
            if conn.write_all(response.as_bytes()).is_err() || close {
                return;
            }
        }
    }
}

/// One request on a new connection from the namespace at `ns`; the server's name.
fn ask(ns: &Path, to: SocketAddr) -> Result<String> {
    let mut conn = in_netns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(2))
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    reply
        .split("\r\n\r\n")
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no body in {reply:?}"))
}

/// wrk from the namespace `netns` (a name under /run/netns); (requests/s, p99 ms).
fn wrk(netns: &str, to: SocketAddr, close: bool) -> Result<(f64, f64)> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "wrk", "--latency", "-t", "2"])
        .args(["-c", &WRK_CONNECTIONS.to_string()])
        .args(["-d", &format!("{WRK_SECS}s")]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://{to}/"));
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running wrk (run `cargo xtask setup`)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout
        );
    }
    if let Some(errors) = stdout.lines().find(|l| l.contains("Socket errors")) {
        println!("bench lb:   wrk: {}", errors.trim());
    }
    let rps = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk printed no Requests/sec: {stdout}"))?;
    let p99 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| latency_ms(v.trim()))
        .with_context(|| format!("wrk printed no 99% latency: {stdout}"))?;
    Ok((rps, p99))
}

/// wrk's "1.23ms" / "850.00us" / "1.02s" in milliseconds.
fn latency_ms(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|x| x * scale)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_latencies_parse() {
        assert_eq!(super::latency_ms("850.00us"), Some(0.85));
        assert_eq!(super::latency_ms("1.50ms"), Some(1.5));
        assert_eq!(super::latency_ms("2.00s"), Some(2000.0));
        assert_eq!(super::latency_ms("fast"), None);
    }
}
