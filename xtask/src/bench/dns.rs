//! `cargo xtask bench dns`: the embedded resolver against dnsmasq and Docker's embedded
//! resolver, with dnsperf, in one lab of one host.
//!
//! ```text
//!  lab host h1 (its own dockerd)
//!   overlay network web (netns <run_dir>/netns/vni-4097)       bridge network benchnet
//!    br0 10.0.9.1 ── :53   shoal agent's resolver               web      (container)
//!                 └─ :5353 dnsmasq, same records                dclient  (container)
//!    client (container, --network none, 10.0.9.11)               └─ 127.0.0.11 (dockerd)
//! ```
//!
//! - dnsperf runs in the asking container's network namespace (`nsenter -t PID -n`), so
//!   shoal and dnsmasq are reached over the same veth and bridge; Docker's resolver is
//!   reached the way its containers reach it (127.0.0.11, DNAT inside the container).
//! - Saturated runs: [`CLIENTS`] sockets, [`IN_FLIGHT`] queries in flight, for
//!   [`SATURATED_SECS`]; the figure is dnsperf's queries per second, the median of
//!   [`ROUNDS`] rounds that take the three resolvers in turn (the machine is shared and
//!   has 2 cores, which dnsperf, the resolver and the kernel's packet path share).
//! - Latency: each resolver again at half of its own peak (`-Q`; `-q 1` gives
//!   nonsense), with `-v`, whose per-response latencies give the p99 (dnsperf 2.10
//!   prints only the mean and deviation); the median of [`ROUNDS`] rounds.
//! - Record change: the declared DNS file is rewritten (the VIP moves) and a query loop
//!   in the client's namespace times the first answer with the new VIP.
//!
//! The agent is a release build (built here): the resolver's speed is a release build's.
//! For the comparison its per-source rate limit is off (`--dns-rate-limit 0`): every
//! dnsperf socket has the client's address, and the limit would cap the run at 5,000
//! queries per second. Before that, the agent runs with its default settings and is
//! measured alone: saturated (the answered rate, which the limit caps, and the share
//! dnsperf saw dropped, the queries over the limit) and p99 at half the default limit, the load one container may send.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::{docker, Report};
use crate::lab::{self, HostState, LabState, Layout};

/// The overlay network and the names served on it.
const VNI: u32 = 4097;
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 1);
const CLIENT_IP: &str = "10.0.9.11";
const SERVICE: &str = "web";
/// The service's VIP before the record-change runs move it.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 100);
const TASKS: [&str; 4] = ["10.0.9.21", "10.0.9.22", "10.0.9.23", "10.0.9.24"];
const DNSMASQ_PORT: u16 = 5353;
/// Docker's embedded resolver, as its containers see it.
const DOCKER_RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// dnsperf's load: sockets, threads, queries in flight (the anchor figures' 100).
/// Two threads: one dnsperf thread tops out near 55,000 queries per second here, below
/// dnsmasq's peak, and would measure dnsperf rather than the resolvers.
const CLIENTS: u32 = 100;
const THREADS: u32 = 2;
const IN_FLIGHT: u32 = 100;
/// Rounds of runs per resolver, and each run's length; figures are medians of rounds.
/// Latency runs are short: `-v` prints a line per response.
const ROUNDS: usize = 3;
const SATURATED_SECS: u32 = 5;
const LATENCY_SECS: u32 = 3;
/// How long dnsperf waits for an answer before counting the query lost.
const QUERY_TIMEOUT_SECS: u32 = 2;
/// Record changes timed (the figure is their median).
const RECORD_CHANGES: usize = 7;
/// Bound on waits for something to come up or for a change to be seen.
const BOUND: Duration = Duration::from_secs(60);

pub(super) fn run() -> Result<ExitCode> {
    let mut report = Report {
        suite: "dns",
        ..Default::default()
    };
    let shoal = super::release_shoal("dns")?;
    let layout = Layout::new("benchdns")?;
    if !lab::leftovers(&layout).is_empty() {
        lab::down(&layout)?;
    }
    let state = lab::up(&layout, 1)?;
    let result = in_lab(&state, &shoal, &mut report);
    let down = lab::down(&layout);
    result?;
    down?;
    report.finish()
}

/// A process this run started, killed by its PID when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_lab(state: &LabState, shoal: &Path, report: &mut Report) -> Result<()> {
    let h = &state.hosts[0];
    let client_pid = start_client(state, h)?;
    let gateway = SocketAddr::from((GATEWAY, 53));
    let queries = h.run_dir.join("dnsperf-queries.txt");
    fs::write(&queries, format!("{SERVICE} A\n"))?;

    // The agent as installed: its default settings, the rate limit included.
    let agent = start_agent(state, h, shoal, &[])?;
    let mut probe = Prober::in_netns_of(&client_pid)?;
    probe.wait_for(gateway, "shoal's resolver", |a| a == [VIP])?;
    default_settings(&client_pid, gateway, &queries, report)?;
    lab::procs::end(&[agent], Duration::from_secs(30));

    // The comparison: the limit off, since every dnsperf socket has one address.
    start_agent(state, h, shoal, &["--dns-rate-limit".into(), "0".into()])?;
    let dclient_pid = start_docker_side(state, h)?;
    let _dnsmasq = start_dnsmasq(state, h)?;

    let dnsmasq = SocketAddr::from((GATEWAY, DNSMASQ_PORT));
    let docker_resolver = SocketAddr::from((DOCKER_RESOLVER, 53));
    probe.wait_for(gateway, "shoal's resolver", |a| a == [VIP])?;
    probe.wait_for(dnsmasq, "dnsmasq", |a| a == [VIP])?;
    let mut docker_probe = Prober::in_netns_of(&dclient_pid)?;
    // Docker's resolver needs the iptables binary for the DNAT rules it puts inside
    // each container (docker.io depends on it).
    docker_probe.wait_for(
        docker_resolver,
        "Docker's resolver (is iptables installed?)",
        |a| !a.is_empty(),
    )?;

    let targets = [
        ("shoal", client_pid.as_str(), gateway),
        ("dnsmasq", client_pid.as_str(), dnsmasq),
        ("docker", dclient_pid.as_str(), docker_resolver),
    ];

    // Rounds, each resolver in turn, so that a burst of other work on the machine
    // falls on all three rather than on one; each figure is the median of its rounds.
    let mut qps = [Vec::new(), Vec::new(), Vec::new()];
    let mut lost = [0.0f64; 3];
    for _ in 0..ROUNDS {
        for (k, (_, pid, server)) in targets.iter().enumerate() {
            let run = dnsperf(pid, *server, &queries, SATURATED_SECS, None)?;
            qps[k].push(run.qps);
            lost[k] = lost[k].max(run.lost_pct);
        }
    }
    let peak = qps.map(median);
    for (k, (name, _, _)) in targets.iter().enumerate() {
        report.figure(&format!("{name}_qps"), peak[k], "qps");
        report.figure(&format!("{name}_lost_worst_round"), lost[k], "%");
    }
    // Latency at half of each resolver's own peak.
    let mut p99 = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (k, (name, pid, server)) in targets.iter().enumerate() {
            let rate = (peak[k] / 2.0).max(1.0) as u64;
            let run = dnsperf(pid, *server, &queries, LATENCY_SECS, Some(rate))?;
            p99[k].push(
                run.p99_ms
                    .with_context(|| format!("{name}: dnsperf -v gave no latencies"))?,
            );
        }
    }
    let p99 = p99.map(median);
    for (k, (name, _, _)) in targets.iter().enumerate() {
        report.figure(&format!("{name}_p99_half_load"), p99[k], "ms");
    }
    let (shoal_qps, dnsmasq_qps, docker_qps) = (peak[0], peak[1], peak[2]);
    report.ratio("shoal_vs_docker_qps", shoal_qps / docker_qps, ">=", 2.0);
    report.ratio("shoal_vs_dnsmasq_qps", shoal_qps / dnsmasq_qps, ">=", 1.0);
    report.ratio("shoal_p99_half_load_ms", p99[0], "<=", 1.0);
    // The same against the baseline of this run: a machine busy enough to move the
    // absolute figure moves dnsmasq's too.
    report.ratio("shoal_vs_dnsmasq_p99_half_load", p99[0] / p99[1], "<=", 1.0);

    record_change(h, &mut probe, gateway, report)
}

/// The asking container: no network of Docker's, resolv.conf at the gateway; the agent
/// plumbs it into the overlay. Returns its PID.
fn start_client(state: &LabState, h: &HostState) -> Result<String> {
    docker(
        state,
        &h.name,
        &[
            "run",
            "-d",
            "--init",
            "--network",
            "none",
            "--dns",
            &GATEWAY.to_string(),
            "--name",
            "client",
            "shoal/web:1",
        ],
    )?;
    docker(
        state,
        &h.name,
        &["inspect", "-f", "{{.State.Pid}}", "client"],
    )
}

fn dns_state(vip: Ipv4Addr) -> Value {
    json!({
        "services": [{
            "name": SERVICE,
            "vips": [{"network": "web", "ip": vip.to_string()}],
            "tasks": TASKS.iter().enumerate().map(|(i, ip)| json!({
                "id": format!("task{}", i + 1),
                "slot": i + 1,
                "addresses": [{"network": "web", "ip": ip}],
            })).collect::<Vec<_>>(),
        }],
    })
}

fn dns_file(h: &HostState) -> PathBuf {
    h.run_dir.join("declared-dns.json")
}

/// Writes the declared DNS state so that a reader never sees half of it.
fn write_dns_state(h: &HostState, vip: Ipv4Addr) -> Result<()> {
    let tmp = h.run_dir.join("declared-dns.json.tmp");
    fs::write(&tmp, dns_state(vip).to_string())?;
    fs::rename(&tmp, dns_file(h))?;
    Ok(())
}

/// The agent with its default settings, alone: [`ROUNDS`] saturated runs and
/// [`ROUNDS`] runs at half the default limit, medians.
fn default_settings(
    client_pid: &str,
    gateway: SocketAddr,
    queries: &Path,
    report: &mut Report,
) -> Result<()> {
    let (mut qps, mut lost, mut p99) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let run = dnsperf(client_pid, gateway, queries, SATURATED_SECS, None)?;
        qps.push(run.qps);
        lost.push(run.lost_pct);
    }
    for _ in 0..ROUNDS {
        let run = dnsperf(
            client_pid,
            gateway,
            queries,
            LATENCY_SECS,
            Some(DEFAULT_RATE_LIMIT / 2),
        )?;
        p99.push(
            run.p99_ms
                .context("default settings: dnsperf -v gave no latencies")?,
        );
    }
    report.figure("shoal_default_settings_answered_qps", median(qps), "qps");
    report.figure("shoal_default_settings_lost", median(lost), "%");
    let p99 = median(p99);
    report.figure("shoal_default_settings_p99_half_limit", p99, "ms");
    report.ratio("shoal_default_settings_p99_half_limit_ms", p99, "<=", 1.0);
    Ok(())
}

/// The agent's default per-source limit (queries per second), which the saturated runs
/// with default settings should be capped near.
const DEFAULT_RATE_LIMIT: u64 = 5_000;

/// Starts the agent with `extra` after the bench's own arguments; returns its PID.
fn start_agent(state: &LabState, h: &HostState, shoal: &Path, extra: &[String]) -> Result<u32> {
    let overlay = json!({
        "networks": [{"id": "web", "vni": VNI, "subnet": "10.0.9.0/24", "gateway": GATEWAY.to_string()}],
        "local_endpoints": [{"network": "web", "container": "client", "ip": CLIENT_IP}],
        "remote_endpoints": [],
    });
    let overlay_file = h.run_dir.join("declared-overlay.json");
    fs::write(&overlay_file, overlay.to_string())?;
    write_dns_state(h, VIP)?;
    let args: Vec<String> = vec![
        "--declared-state".into(),
        overlay_file.display().to_string(),
        "--declared-dns".into(),
        dns_file(h).display().to_string(),
        // Only for names outside the cluster, which the benchmark does not ask.
        "--dns-upstream".into(),
        "192.168.77.100:53".into(),
    ]
    .into_iter()
    .chain(extra.iter().cloned())
    .collect();
    let status: Value = serde_json::from_str(&lab::agent::start(state, h, shoal, &args)?)?;
    status["pid"]
        .as_u64()
        .map(|p| p as u32)
        .with_context(|| format!("no pid in the agent's agent.json: {status}"))
}

/// Docker's side: a user-defined bridge network with the container `web` and an asking
/// container `dclient`. Returns dclient's PID.
fn start_docker_side(state: &LabState, h: &HostState) -> Result<String> {
    docker(
        state,
        &h.name,
        &[
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            "172.30.9.0/24",
            "benchnet",
        ],
    )?;
    for name in [SERVICE, "dclient"] {
        docker(
            state,
            &h.name,
            &[
                "run",
                "-d",
                "--init",
                "--network",
                "benchnet",
                "--name",
                name,
                "shoal/web:1",
            ],
        )?;
    }
    docker(
        state,
        &h.name,
        &["inspect", "-f", "{{.State.Pid}}", "dclient"],
    )
}

/// dnsmasq serving the same record (`web` -> the VIP) in the overlay network's
/// namespace, on the gateway address, port 5353: the same path as shoal's resolver.
fn start_dnsmasq(state: &LabState, h: &HostState) -> Result<Killed> {
    let hosts = h.run_dir.join("dnsmasq-hosts");
    fs::write(&hosts, format!("{VIP} {SERVICE}\n"))?;
    let pin = h.run_dir.join("netns").join(format!("vni-{VNI}"));
    // The agent pins the namespace once the client is attached; wait for it.
    let start = Instant::now();
    while !pin.exists() {
        if start.elapsed() > BOUND {
            bail!("the agent did not pin {} within {BOUND:?}", pin.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let argv: Vec<String> = [
        "nsenter".to_string(),
        format!("--net={}", pin.display()),
        "dnsmasq".into(),
        "--no-daemon".into(),
        "--user=root".into(),
        format!("--port={DNSMASQ_PORT}"),
        format!("--listen-address={GATEWAY}"),
        "--bind-interfaces".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--conf-file=/dev/null".into(),
        "--pid-file=".into(),
        "--log-facility=-".into(),
        // Same TTL as the agent's default, so answers are alike.
        "--local-ttl=5".into(),
        format!("--addn-hosts={}", hosts.display()),
    ]
    .into();
    let log = fs::File::create(h.run_dir.join("dnsmasq.log"))?;
    let child = lab::exec_command(state, &h.name, &argv)?
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting dnsmasq")?;
    Ok(Killed(child))
}

/// What one dnsperf run measured.
struct PerfRun {
    qps: f64,
    lost_pct: f64,
    /// From the per-response latencies of a verbose run.
    p99_ms: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs dnsperf in the network namespace of `pid` against `server`: saturated when
/// `rate` is None, otherwise at `rate` queries per second with per-response latencies.
fn dnsperf(
    pid: &str,
    server: SocketAddr,
    queries: &Path,
    secs: u32,
    rate: Option<u64>,
) -> Result<PerfRun> {
    let mut cmd = Command::new("nsenter");
    cmd.args(["-t", pid, "-n", "dnsperf", "-s"])
        .arg(server.ip().to_string())
        .arg("-p")
        .arg(server.port().to_string())
        .arg("-d")
        .arg(queries)
        .args(["-c", &CLIENTS.to_string()])
        .args(["-T", &THREADS.to_string()])
        .args(["-q", &IN_FLIGHT.to_string()])
        .args(["-l", &secs.to_string()])
        .args(["-t", &QUERY_TIMEOUT_SECS.to_string()]);
    if let Some(rate) = rate {
        cmd.args(["-Q", &rate.to_string(), "-v"]);
    }
    let shown = format!("{cmd:?}").replace('"', "");
    println!("bench dns: {shown}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running dnsperf (is dnsperf installed? run `cargo xtask setup`)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "dnsperf failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout.lines().rev().take(10).collect::<Vec<_>>().join("\n")
        );
    }
    let field = |label: &str| -> Option<f64> {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let qps = field("Queries per second:").context("dnsperf printed no queries per second")?;
    let sent = field("Queries sent:").unwrap_or(0.0);
    let lost = field("Queries lost:").unwrap_or(0.0);
    let lost_pct = if sent > 0.0 { 100.0 * lost / sent } else { 0.0 };
    let p99_ms = rate.and_then(|_| p99_of(&stdout));
    let mut summary = format!("bench dns:   {qps:.0} qps, {lost_pct:.3}% lost");
    if let Some(p) = p99_ms {
        summary += &format!(", p99 {p:.3} ms");
    }
    println!("{summary}");
    Ok(PerfRun {
        qps,
        lost_pct,
        p99_ms,
    })
}

/// The 99th percentile, in ms, of dnsperf -v's response lines (`> NOERROR web A
/// 0.000211`); a timed-out query (`> T web A`) counts as the timeout.
fn p99_of(verbose: &str) -> Option<f64> {
    let mut latencies: Vec<f64> = verbose
        .lines()
        .filter_map(|l| l.strip_prefix("> "))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            match fields.as_slice() {
                ["T", ..] => Some(f64::from(QUERY_TIMEOUT_SECS)),
                [_, .., last] => last.parse::<f64>().ok(),
                _ => None,
            }
        })
        .collect();
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let rank = ((latencies.len() as f64) * 0.99).ceil() as usize;
    Some(latencies[rank.clamp(1, latencies.len()) - 1] * 1e3)
}

/// Time from rewriting the declared DNS file to the first answer with the new record,
/// several times (the VIP moves each time), spread in time.
///
/// The agent sees the file change through inotify (the standalone mode's source) and
/// hands it to the DNS reconciler through its in-memory pipeline, which swaps the
/// record table whole: the figure is that path plus one query.
fn record_change(
    h: &HostState,
    probe: &mut Prober,
    server: SocketAddr,
    report: &mut Report,
) -> Result<()> {
    let mut times = Vec::new();
    for i in 0..RECORD_CHANGES {
        // Spread in time, so no change lands in step with another.
        std::thread::sleep(Duration::from_millis(100 + (i as u64 * 137) % 500));
        let vip = Ipv4Addr::new(10, 0, 9, 101 + i as u8);
        let tmp = h.run_dir.join("declared-dns.json.tmp");
        fs::write(&tmp, dns_state(vip).to_string())?;
        let start = Instant::now();
        fs::rename(&tmp, dns_file(h))?;
        loop {
            if let Ok(answer) = probe.query_a(server, SERVICE, Duration::from_millis(200)) {
                if answer == [vip] {
                    break;
                }
            }
            if start.elapsed() > Duration::from_secs(10) {
                report
                    .missed
                    .push(format!("record change to {vip} not answered within 10 s"));
                println!("bench dns: the VIP moved to {vip} but no answer said so within 10 s");
                return Ok(());
            }
        }
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "bench dns: record change to answer, each (ms): {}",
        times
            .iter()
            .map(|t| format!("{t:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let max = times.iter().copied().fold(0.0, f64::max);
    times.sort_by(|a, b| a.total_cmp(b));
    report.figure("record_change_to_answer", times[times.len() / 2], "ms");
    report.figure("record_change_to_answer_max", max, "ms");
    Ok(())
}

/// A UDP socket made inside a container's network namespace, for single A queries.
struct Prober {
    socket: UdpSocket,
    next_id: u16,
}

impl Prober {
    /// The socket is made on a thread that enters `/proc/PID/ns/net`; a socket stays in
    /// the namespace it was made in, and the thread (with its namespace) then ends.
    fn in_netns_of(pid: &str) -> Result<Self> {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let socket = std::thread::spawn(move || -> Result<UdpSocket> {
            let ns =
                fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: setns on an open namespace fd; it changes only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("entering {}", path.display()));
            }
            Ok(UdpSocket::bind("0.0.0.0:0")?)
        })
        .join()
        .map_err(|_| anyhow!("the namespace thread panicked"))??;
        Ok(Self {
            socket,
            next_id: std::process::id() as u16,
        })
    }

    /// One A query for `name`; the addresses of the answer (empty for NODATA).
    fn query_a(
        &mut self,
        server: SocketAddr,
        name: &str,
        timeout: Duration,
    ) -> Result<Vec<Ipv4Addr>> {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        self.socket.send_to(&a_query(id, name), server)?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 1500];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no answer from {server} within {timeout:?}");
            }
            self.socket.set_read_timeout(Some(left))?;
            let Ok((n, from)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            // Late answers to earlier queries are skipped.
            if from != server || n < 12 || u16::from_be_bytes([buf[0], buf[1]]) != id {
                continue;
            }
            return a_records(&buf[..n]).with_context(|| format!("answer from {server}"));
        }
    }

    /// Queries until `ok` holds for the answer, within [`BOUND`].
    fn wait_for(
        &mut self,
        server: SocketAddr,
        what: &str,
        ok: impl Fn(&[Ipv4Addr]) -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            let seen = match self.query_a(server, SERVICE, Duration::from_millis(500)) {
                Ok(a) if ok(&a) => return Ok(()),
                Ok(a) => format!("answer {a:?}"),
                Err(e) => format!("{e:#}"),
            };
            if start.elapsed() > BOUND {
                bail!("{what} ({server}) did not answer {SERVICE} within {BOUND:?}; last: {seen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A recursive query for `name` A, class IN, no EDNS.
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The A records in the answer section of a response; an error for a failed rcode or a
/// malformed message.
fn a_records(msg: &[u8]) -> Result<Vec<Ipv4Addr>> {
    let byte = |i: usize| msg.get(i).copied().context("truncated message");
    let word =
        |i: usize| -> Result<usize> { Ok(usize::from(byte(i)?) << 8 | usize::from(byte(i + 1)?)) };
    if byte(2)? & 0x80 == 0 {
        bail!("not a response");
    }
    let rcode = byte(3)? & 0x0f;
    if rcode != 0 {
        bail!("rcode {rcode}");
    }
    let skip_name = |mut i: usize| -> Result<usize> {
        loop {
            let len = byte(i)?;
            if len & 0xc0 == 0xc0 {
                return Ok(i + 2);
            }
            if len == 0 {
                return Ok(i + 1);
            }
            i += 1 + usize::from(len);
        }
    };
    let (questions, answers) = (word(4)?, word(6)?);
    let mut i = 12;
    for _ in 0..questions {
        i = skip_name(i)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        i = skip_name(i)?;
        let (rtype, len) = (word(i)?, word(i + 8)?);
        i += 10;
        if rtype == 1 && len == 4 {
            out.push(Ipv4Addr::new(
                byte(i)?,
                byte(i + 1)?,
                byte(i + 2)?,
                byte(i + 3)?,
            ));
        }
        i += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_answer_round_trip() {
        let q = a_query(0x1234, "web");
        assert_eq!(
            q,
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x00\x00\x01\x00\x01"
        );
        // The query turned into a response with two A answers (compressed names).
        let mut r = q.clone();
        r[2] = 0x81;
        r[3] = 0x80;
        r[7] = 2;
        for last in [100u8, 101] {
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 9, last]);
        }
        assert_eq!(
            a_records(&r).unwrap(),
            [Ipv4Addr::new(10, 0, 9, 100), Ipv4Addr::new(10, 0, 9, 101)]
        );
        r[3] = 0x83;
        assert!(a_records(&r).is_err(), "NXDOMAIN is an error");
        assert!(a_records(&r[..20]).is_err());
    }

    #[test]
    fn p99_from_verbose_lines() {
        let mut text = String::from("[Status] Sending\n");
        for i in 1..=200 {
            text += &format!("> NOERROR web A {:.6}\n", f64::from(i) / 1e6);
        }
        let p99 = p99_of(&text).unwrap();
        assert!((p99 - 0.198).abs() < 1e-9, "{p99}");
        text += "> T web A\n> T web A\n> T web A\n";
        let p99 = p99_of(&text).unwrap();
        assert!(
            (p99 - f64::from(QUERY_TIMEOUT_SECS) * 1e3).abs() < 1e-9,
            "{p99}"
        );
        assert_eq!(p99_of("no lines"), None);
    }
}
