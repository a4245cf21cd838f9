//! `cargo xtask bench vip`: service VIPs balanced at the socket, in one lab of two hosts.
//!
//! ```text
//!  h1: client c1 (10.0.9.11)            h2: tasks t1 (10.0.9.21), t2 (10.0.9.22)
//!      wrk in c1's namespace ── overlay (VXLAN) ──▶ HTTP servers in t1's and t2's
//!                                                    namespaces (this process)
//!  VIP 10.0.9.100 on network web, one backend: t1
//! ```
//!
//! - Requests per second, container -> VIP against container -> task address, with wrk
//!   from c1's namespace (`nsenter -t PID -n`), both to the same task (t1) on the other
//!   host, so the only difference is how the destination was chosen. Two loads: HTTP
//!   keep-alive (the backend is chosen once per connection, so this shows that nothing
//!   is done per packet) and a new connection per request (`Connection: close`: every
//!   request runs the connect hook; the server closes first, so TIME_WAIT stays on its
//!   side and never holds up the client's next SYN). Each path's figure is the median
//!   of [`ROUNDS`] runs of its own, alternating with the other's. The ratio comes from
//!   [`CONCURRENT_ROUNDS`] runs of both paths at the same time, half the connections
//!   each (the machine is shared and busy: run one after the other, the two paths see
//!   different background load, which moved single ratios by +-10% while the path has
//!   no per-packet work at all); it is the median of those runs' VIP/direct ratios.
//!   Target: VIP >= 0.95x direct for both loads.
//! - The same against the kernel's own alternative: a second VIP ([`KERNEL_VIP`]) that
//!   iptables DNATs to t1 in c1's namespace (the `nat` table's OUTPUT chain, conntrack on
//!   every packet: kube-proxy's iptables mode for a local client; Swarm's IPVS is not in
//!   this kernel). Figures from the same alternating rounds, the ratio from runs of both
//!   at the same time as above. Target: VIP >= 1x the iptables VIP for both loads.
//! - Backend change to the first connection that obeys it: the declared LB file is
//!   rewritten (the VIP's backend moves between t1 and t2), and a connect loop in c1's
//!   namespace times the first answer from the new backend; median and max of
//!   [`CHANGES`] changes. This includes the agent seeing the file change (inotify, the
//!   standalone mode's source), its pipeline and the map writes (those alone are
//!   reported from the agent's `vip.json`). Targets: median <= 20 ms, max <= 100 ms.
//!
//! The servers are threads of this process (the task's name as body, keep-alive unless
//! the request says close; one thread per wrk connection) with sockets made in the
//! tasks' namespaces: busybox httpd forks per connection and would measure fork, not
//! the path.
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
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

const VIP: &str = "10.0.9.100";
/// The VIP that iptables DNAT serves (no service of shoal's has it).
const KERNEL_VIP: &str = "10.0.9.101";
const PORT: u16 = 8081;
const CLIENT: (&str, usize, &str) = ("c1", 0, "10.0.9.11");
const TASKS: [(&str, usize, &str); 2] = [("t1", 1, "10.0.9.21"), ("t2", 1, "10.0.9.22")];
const ROUNDS: usize = 5;
const CONCURRENT_ROUNDS: usize = 6;
const WRK_SECS: u32 = 3;
const WRK_CONNECTIONS: u32 = 32;
const CHANGES: usize = 10;
/// Threads per HTTP server.
const SERVER_THREADS: usize = WRK_CONNECTIONS as usize;

pub(super) fn run() -> Result<ExitCode> {
    let mut report = Report {
        suite: "vip",
        ..Default::default()
    };
    let shoal = shoal_binary()?;
    let layout = Layout::new("benchvip")?;
    if !lab::leftovers(&layout).is_empty() {
        lab::down(&layout)?;
    }
    let state = lab::up(&layout, 2)?;
    let result = in_lab(&state, &shoal, &mut report);
    let down = lab::down(&layout);
    result?;
    down?;
    report.finish()
}

fn in_lab(state: &LabState, shoal: &Path, report: &mut Report) -> Result<()> {
    for c in TASKS.iter().chain([&CLIENT]) {
        docker(
            state,
            &state.hosts[c.1].name,
            &[
                "run",
                "-d",
                "--init",
                "--network",
                "none",
                "--name",
                c.0,
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
    let pid = |c: (&str, usize, &str)| -> Result<String> {
        docker(
            state,
            &state.hosts[c.1].name,
            &["inspect", "-f", "{{.State.Pid}}", c.0],
        )
    };
    let client = pid(CLIENT)?;
    let _servers = Servers::start(&[(pid(TASKS[0])?, TASKS[0].0), (pid(TASKS[1])?, TASKS[1].0)])?;
    let vip_addr: SocketAddr = format!("{VIP}:{PORT}").parse()?;
    let direct_addr: SocketAddr = format!("{}:{PORT}", TASKS[0].2).parse()?;
    let kernel_addr: SocketAddr = format!("{KERNEL_VIP}:{PORT}").parse()?;
    iptables_vip(&client, kernel_addr, direct_addr)?;
    // Every path answers before anything is measured.
    let start = Instant::now();
    loop {
        let vip = ask(&client, vip_addr);
        let direct = ask(&client, direct_addr);
        let kernel = ask(&client, kernel_addr);
        match (&vip, &direct, &kernel) {
            (Ok(v), Ok(_), Ok(k)) if v == "t1" && k == "t1" => break,
            _ if start.elapsed() > Duration::from_secs(60) => {
                bail!(
                    "the VIP, the task and the iptables VIP did not answer within 60 s: \
                     {vip:?} {direct:?} {kernel:?}"
                )
            }
            _ => thread::sleep(Duration::from_millis(200)),
        }
    }

    let paths = [
        ("vip", vip_addr, "container_to_vip"),
        ("direct", direct_addr, "container_to_task"),
        ("iptables", kernel_addr, "container_to_iptables_vip"),
    ];
    for (load, close) in [("keepalive", false), ("new_connection", true)] {
        let mut rps_of: [Vec<f64>; 3] = Default::default();
        for round in 0..ROUNDS {
            // Rotate which path goes first.
            for k in 0..paths.len() {
                let i = (round + k) % paths.len();
                let rps = wrk(&client, paths[i].1, close)?;
                println!("bench vip: {load} {} {rps:.0} requests/s", paths[i].0);
                rps_of[i].push(rps);
            }
        }
        for (i, rps) in rps_of.into_iter().enumerate() {
            report.figure(&format!("{load}_{}", paths[i].2), median(rps), "requests/s");
        }
        // The ratios: the VIP and one other path at once, half the connections each, so
        // whatever else the shared machine does at that moment weighs on both alike.
        for (other, target) in [(1, 0.95), (2, 1.0)] {
            let mut ratios = Vec::new();
            for _ in 0..CONCURRENT_ROUNDS {
                let half = WRK_CONNECTIONS / 2;
                let v = wrk_start(&client, vip_addr, close, 1, half)?;
                let o = wrk_start(&client, paths[other].1, close, 1, half)?;
                let (v, o) = (wrk_finish(v)?, wrk_finish(o)?);
                println!(
                    "bench vip: {load} side by side: vip {v:.0}, {} {o:.0} requests/s",
                    paths[other].0
                );
                ratios.push(v / o);
            }
            report.ratio(
                &format!("{load}_vip_vs_{}", paths[other].0),
                median(ratios),
                ">=",
                target,
            );
        }
    }

    // Backend change to the first connection that obeys it.
    let mut times = Vec::new();
    let mut apply_ms = Vec::new();
    for i in 0..CHANGES {
        let to = if i % 2 == 0 { "t2" } else { "t1" };
        let before = vip_status(&state.hosts[0])["generation"]
            .as_u64()
            .unwrap_or(0);
        let t0 = Instant::now();
        write_atomic(&lb_file(&state.hosts[0]), &lb_state(state, to))?;
        loop {
            if ask(&client, vip_addr).ok().as_deref() == Some(to) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("the VIP did not move to {to} within 30 s");
            }
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        println!(
            "bench vip: backend change {i} to {to}: first obeying connection after {ms:.1} ms"
        );
        times.push(ms);
        let status = vip_status(&state.hosts[0]);
        if status["generation"].as_u64().unwrap_or(0) > before {
            if let Some(e) = status["elapsed_ms"].as_f64() {
                apply_ms.push(e);
            }
        }
    }
    let max = times.iter().copied().fold(0.0, f64::max);
    let mid = median(times);
    report.figure("backend_change_to_connection_median", mid, "ms");
    report.figure("backend_change_to_connection_max", max, "ms");
    if !apply_ms.is_empty() {
        report.figure("backend_change_apply_median", median(apply_ms), "ms");
    }
    report.ratio("backend_change_to_connection_median_ms", mid, "<=", 20.0);
    report.ratio("backend_change_to_connection_max_ms", max, "<=", 100.0);
    Ok(())
}

fn lb_file(h: &HostState) -> PathBuf {
    h.run_dir.join("declared-lb.json")
}

fn vip_status(h: &HostState) -> Value {
    fs::read(h.run_dir.join("agent/vip.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn write_atomic(path: &Path, value: &Value) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec(value)?)?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn overlay_state(state: &LabState, host: usize) -> Value {
    let all = TASKS.iter().chain([&CLIENT]);
    let local: Vec<Value> = all
        .clone()
        .filter(|c| c.1 == host)
        .map(|(c, _, ip)| json!({"network": "web", "container": c, "ip": ip}))
        .collect();
    let remote: Vec<Value> = all
        .filter(|c| c.1 != host)
        .map(|(_, h, ip)| {
            json!({"network": "web", "ip": ip, "vtep": state.hosts[*h].address.to_string()})
        })
        .collect();
    json!({
        "networks": [{"id": "web", "vni": 4097, "subnet": "10.0.9.0/24", "gateway": "10.0.9.1"}],
        "local_endpoints": local,
        "remote_endpoints": remote,
    })
}

/// The VIP with `backend` as its only healthy backend (the other task draining, so it
/// keeps what it has and gets nothing new).
fn lb_state(state: &LabState, backend: &str) -> Value {
    json!({
        "services": [{
            "id": "svc-bench", "name": "bench",
            "vips": [{"network": "web", "address": VIP}],
            "backends": TASKS.iter().map(|(c, h, ip)| json!({
                "task": c, "node": state.hosts[*h].address.to_string(),
                "addresses": {"web": ip},
                "state": if *c == backend { "healthy" } else { "draining" }
            })).collect::<Vec<_>>()
        }]
    })
}

/// Runs `f` on a thread inside the network namespace of process `pid`.
fn in_netns_of<T: Send + 'static>(
    pid: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    thread::spawn(move || -> Result<T> {
        let ns = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: setns on an open namespace fd; it changes only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("entering {}", path.display()));
        }
        Ok(f()?)
    })
    .join()
    .map_err(|_| anyhow!("the namespace thread panicked"))?
}

/// HTTP servers on 0.0.0.0:PORT in the tasks' namespaces; stopped and joined on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    /// [`SERVER_THREADS`] threads per server, each accepting and serving one connection
    /// at a time (as many as wrk has connections, so keep-alive never waits).
    fn start(servers: &[(String, &'static str)]) -> Result<Self> {
        let mut this = Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for (pid, name) in servers {
            let listener = in_netns_of(pid, || TcpListener::bind(("0.0.0.0", PORT)))?;
            // accept() gives up after this, so the threads see `stop`.
            let timeout = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            // SAFETY: setsockopt reads a timeval of the given size from a live value.
            let rc = unsafe {
                libc::setsockopt(
                    listener.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &timeout as *const libc::timeval as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
            }
            let listener = Arc::new(listener);
            for _ in 0..SERVER_THREADS {
                let (listener, stop, name) = (listener.clone(), this.stop.clone(), *name);
                this.threads.push(thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((conn, _)) = listener.accept() {
                            handle(conn, name, &stop);
                        }
                    }
                }));
            }
        }
        Ok(this)
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
fn handle(mut conn: TcpStream, name: &str, stop: &AtomicBool) {
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
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

/// The kernel's own VIP in the namespace of `pid`: connections to `vip` DNATed to
/// `backend` by iptables (the rule goes with the namespace when the lab comes down).
fn iptables_vip(pid: &str, vip: SocketAddr, backend: SocketAddr) -> Result<()> {
    let out = Command::new("nsenter")
        .args([
            "-t", pid, "-n", "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
        ])
        .args(["-d", &format!("{}/32", vip.ip())])
        .args(["--dport", &vip.port().to_string()])
        .args(["-j", "DNAT", "--to-destination", &backend.to_string()])
        .output()
        .context("running iptables (run `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!(
            "iptables DNAT for {vip}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One request on a new connection from the namespace of `pid`; the server's name.
fn ask(pid: &str, to: SocketAddr) -> Result<String> {
    let mut conn = in_netns_of(pid, move || {
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

/// wrk from the namespace of `pid`; requests per second.
fn wrk(pid: &str, to: SocketAddr, close: bool) -> Result<f64> {
    wrk_finish(wrk_start(pid, to, close, 2, WRK_CONNECTIONS)?)
}

fn wrk_start(
    pid: &str,
    to: SocketAddr,
    close: bool,
    threads: u32,
    connections: u32,
) -> Result<std::process::Child> {
    let mut cmd = Command::new("nsenter");
    cmd.args(["-t", pid, "-n", "wrk", "-t", &threads.to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-d", &format!("{WRK_SECS}s")]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://{to}/"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running wrk (is wrk installed? run `cargo xtask setup`)")
}

fn wrk_finish(child: std::process::Child) -> Result<f64> {
    let out = child.wait_with_output().context("waiting for wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout
        );
    }
    if let Some(errors) = stdout.lines().find(|l| l.contains("Socket errors")) {
        println!("bench vip:   wrk: {}", errors.trim());
    }
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk printed no Requests/sec: {stdout}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
