//! The lab: several hosts on one machine, each a network namespace with its own mount
//! and UTS namespace and its own dockerd, on one underlay bridge, plus a client
//! namespace that is not a cluster node. Every later end-to-end test, demo and
//! benchmark runs on it.
//!
//! ```text
//!            netns <p>-ul: bridge br0 (192.168.77.0/24, no route anywhere else)
//!           /        |         \              \
//!   <p>-h1 eth0  <p>-h2 eth0  <p>-h3 eth0   <p>-cl eth0
//!   .11 dockerd  .12 dockerd  .13 dockerd   .100 client: registry :5000, upstream DNS
//!                                                 (outside.lab), web server ([`outside`])
//! ```
//!
//! The registry (`registry.rs`) holds the lab images; hosts pull from it. `lab up` also
//! loads the images into every dockerd unless asked not to (`--no-preload`), so that
//! tests that do not test pulling start at once.
//!
//! Nothing of a lab touches the machine's own interfaces: the underlay bridge lives in
//! its own namespace and has no uplink.
pub mod agent;
pub mod data_path;
pub mod layout;
pub mod outside;
pub mod procs;
pub mod registry;
pub mod tables;
mod teardown;

use std::{
    fs,
    path::Path,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use layout::{
    client_address, host_address, host_name, HOST_UNDERLAY_IF, MAX_HOSTS, UNDERLAY_PREFIX_LEN,
};
pub use layout::{HostState, LabState, Layout};
pub use registry::Registry;
pub use teardown::{down, leftovers};

use crate::{images, util::require_root};

/// Runs `ip` with `args`, failing with its stderr.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

pub(crate) fn run(program: &str, args: &[&str]) -> Result<()> {
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

/// Names of network namespaces that exist now.
pub(crate) fn netns_list() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// How `lab up` makes a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpOptions {
    pub hosts: u32,
    /// Load the lab images into every host's dockerd (they are in the registry either
    /// way); off, hosts have no image and pull what a task needs.
    pub preload: bool,
}

impl UpOptions {
    /// `hosts` hosts with the images preloaded.
    pub fn hosts(hosts: u32) -> Self {
        UpOptions {
            hosts,
            preload: true,
        }
    }
}

/// Brings up a lab of `hosts` hosts with the images preloaded (see [`up_with`]).
pub fn up(layout: &Layout, hosts: u32) -> Result<LabState> {
    up_with(layout, UpOptions::hosts(hosts))
}

/// Brings up a lab. A healthy lab with this prefix is an error; a half-made one (from a
/// crashed run) is cleaned first.
pub fn up_with(layout: &Layout, options: UpOptions) -> Result<LabState> {
    let hosts = options.hosts;
    require_root("lab up", "it creates network namespaces and runs dockerd")?;
    if hosts == 0 || hosts > MAX_HOSTS {
        bail!("--hosts must be between 1 and {MAX_HOSTS}, not {hosts}");
    }
    if let Some(state) = LabState::load(layout)? {
        if is_healthy(&state) {
            bail!(
                "lab {:?} is already up with {} hosts; run `cargo xtask lab down --prefix {}` first",
                layout.prefix,
                state.hosts.len(),
                layout.prefix
            );
        }
    }
    if !leftovers(layout).is_empty() {
        println!(
            "lab: cleaning what a earlier run of lab {:?} left",
            layout.prefix
        );
        down(layout)?;
    }
    let images = images::build_all(&images::image_dir())?;
    dataplane_prerequisites()?;
    let started = Instant::now();
    let preload = if options.preload {
        images.as_slice()
    } else {
        &[]
    };
    let result = build(layout, hosts, preload);
    match result {
        Ok(state) => {
            println!(
                "lab: {} up with {} hosts in {:.1} s",
                layout.prefix,
                hosts,
                started.elapsed().as_secs_f64()
            );
            Ok(state)
        }
        Err(e) => {
            eprintln!(
                "lab: bringing up {} failed, cleaning up: {e:#}",
                layout.prefix
            );
            if let Err(down_err) = down(layout) {
                eprintln!("lab: cleaning up also failed: {down_err:#}");
            }
            Err(e)
        }
    }
}

/// What every host needs from the machine: bpffs mounted where agents pin their maps
/// (hosts' mount namespaces are slaves of the machine's, so they see it).
fn dataplane_prerequisites() -> Result<()> {
    if !crate::util::is_bpffs(Path::new("/sys/fs/bpf")) {
        run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])?;
    }
    Ok(())
}

/// Makes the lab; loads `preload` into every host's dockerd.
fn build(layout: &Layout, hosts: u32, preload: &[images::LabImage]) -> Result<LabState> {
    fs::create_dir_all(layout.run_dir())?;
    fs::create_dir_all(layout.data_dir())?;
    let ul = layout.underlay_netns();
    ip(&["netns", "add", &ul])?;
    ip(&["-n", &ul, "link", "set", "lo", "up"])?;
    ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &ul, "link", "set", "br0", "up"])?;

    let mut client = layout::ClientState {
        netns: layout.client_netns(),
        address: client_address(),
        dns: None,
        http: None,
    };
    add_underlay_port(layout, &client.netns, "cl", &client.address.to_string())?;
    // The client stands for a machine on a wire: its veth would otherwise hand over
    // segments with offloaded (partial) checksums, which the routing mesh's XDP forwards
    // as they are to another host, where they are dropped. A NIC never sends those.
    run(
        "ip",
        &[
            "netns",
            "exec",
            &client.netns,
            "ethtool",
            "-K",
            HOST_UNDERLAY_IF,
            "tx",
            "off",
        ],
    )?;
    let (dns, http) = outside::start(layout, &client)?;
    client.dns = Some(dns);
    client.http = Some(http);

    let registry = registry::start(
        layout,
        &client.netns,
        client.address,
        registry::REGISTRY_PORT,
        None,
    )?;

    let mut host_states = Vec::new();
    for i in 1..=hosts {
        let name = host_name(i);
        let netns = layout.netns(&name);
        add_underlay_port(layout, &netns, &name, &host_address(i).to_string())?;
        host_states.push(start_host(layout, &name, &netns, i)?);
    }
    for h in &host_states {
        wait_dockerd(layout, h)?;
        images::load_into(&h.docker_host, preload)?;
    }
    let state = LabState {
        prefix: layout.prefix.clone(),
        underlay_netns: ul,
        underlay_subnet: layout::underlay_subnet(),
        hosts: host_states,
        client,
        registry: registry.host(),
    };
    state.save(layout)?;
    Ok(state)
}

/// Creates namespace `netns` and connects it to the underlay bridge: `eth0` inside it
/// with `address`, its peer `port` on the bridge.
fn add_underlay_port(layout: &Layout, netns: &str, port: &str, address: &str) -> Result<()> {
    let ul = layout.underlay_netns();
    ip(&["netns", "add", netns])?;
    // Both ends are created straight in their namespaces: no lab name ever appears
    // among the machine's own interfaces.
    ip(&[
        "link",
        "add",
        HOST_UNDERLAY_IF,
        "netns",
        netns,
        "type",
        "veth",
        "peer",
        "name",
        port,
        "netns",
        &ul,
    ])?;
    ip(&["-n", &ul, "link", "set", port, "master", "br0", "up"])?;
    // A veth drops frames that the XDP program on its peer sends back (the routing
    // mesh's redirects) unless it has GRO or an XDP program of its own.
    run(
        "ip",
        &["netns", "exec", &ul, "ethtool", "-K", port, "gro", "on"],
    )?;
    let cidr = format!("{address}/{UNDERLAY_PREFIX_LEN}");
    ip(&["-n", netns, "addr", "add", &cidr, "dev", HOST_UNDERLAY_IF])?;
    ip(&["-n", netns, "link", "set", HOST_UNDERLAY_IF, "up"])?;
    ip(&["-n", netns, "link", "set", "lo", "up"])?;
    Ok(())
}

fn start_host(layout: &Layout, name: &str, netns: &str, index: u32) -> Result<HostState> {
    let dir = layout.host_run_dir(name);
    let etc_docker = dir.join("etc-docker");
    fs::create_dir_all(&etc_docker)?;
    // /etc/docker must exist to be bound over; the package normally ships it.
    fs::create_dir_all("/etc/docker")?;
    let holder = procs::spawn_holder(
        &Path::new("/run/netns").join(netns),
        name,
        &etc_docker,
        &layout.holder_name(name),
    )?;
    fs::write(layout.holder_pid_file(name), holder.to_string())?;

    let dockerd = start_dockerd(layout, name, holder)?;
    Ok(HostState {
        name: name.to_owned(),
        netns: netns.to_owned(),
        underlay_interface: HOST_UNDERLAY_IF.to_owned(),
        address: host_address(index),
        docker_host: format!("unix://{}", layout.docker_socket(name).display()),
        holder_pid: holder,
        dockerd_pid: dockerd,
        pin_dir: layout.pin_dir(name),
        run_dir: dir,
    })
}

/// Starts host `name`'s dockerd inside the namespaces of its holder `holder`, as a
/// daemon in its own session (teardown ends it by PID), and records its PID. Also used
/// by tests that stop a host's dockerd and bring it back.
pub fn start_dockerd(layout: &Layout, name: &str, holder: u32) -> Result<u32> {
    let dir = layout.host_run_dir(name);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("dockerd.log"))?;
    let mut cmd = Command::new("dockerd");
    cmd.arg("--data-root")
        .arg(layout.data_dir().join(name))
        .arg("--exec-root")
        .arg(dir.join("x"))
        .arg("--host")
        .arg(format!("unix://{}", layout.docker_socket(name).display()))
        .arg("--pidfile")
        .arg(dir.join("dockerd.pidfile"))
        .args([
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--exec-opt",
            "native.cgroupdriver=cgroupfs",
        ])
        // The lab's registries speak plain HTTP, in the client namespace.
        .arg("--insecure-registry")
        .arg(layout::underlay_subnet())
        // Containers without a nameserver of their own ask the lab's upstream.
        .arg("--dns")
        .arg(client_address().to_string())
        .arg(format!("--cgroup-parent=/{}", layout.cgroup_parent(name)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    procs::enter_namespaces_of(&mut cmd, holder, true)?;
    let child = cmd
        .spawn()
        .context("starting dockerd (is docker.io installed? run `cargo xtask setup`)")?;
    let pid = child.id();
    fs::write(layout.dockerd_pid_file(name), pid.to_string())?;
    // The child is a daemon in its own session; teardown ends it by PID.
    drop(child);
    Ok(pid)
}

/// Starts a host's dockerd again after it was killed (tests of a host that dies and
/// comes back), and returns once it answers.
///
/// A dockerd killed with SIGKILL leaves its containerd to die on its own a little later.
/// A new dockerd that starts while that containerd still runs finds it through
/// `containerd.pid`, adopts it, and then waits on a socket that is going away: seen as a
/// dockerd that never answers on a loaded machine. So the old containerd is waited for
/// (and killed if it lingers: the lab's dockerd started it) before the new dockerd starts.
pub fn restart_dockerd(layout: &Layout, host: &HostState) -> Result<u32> {
    // The old dockerd must be gone and reaped: dockerd refuses to start while the PID in
    // its pidfile still has a /proc entry, and a zombie has one.
    let old_dockerd =
        procs::read_pid_file(&layout.dockerd_pid_file(&host.name)).unwrap_or(host.dockerd_pid);
    if !procs::wait_gone(&[old_dockerd], Duration::from_secs(30)) {
        bail!(
            "the old dockerd of {} ({old_dockerd}) is still running",
            host.name
        );
    }
    let containerd_pid_file = layout
        .host_run_dir(&host.name)
        .join("x/containerd/containerd.pid");
    if let Some(old) = procs::read_pid_file(&containerd_pid_file) {
        if procs::alive(old) && !procs::wait_gone(&[old], Duration::from_secs(10)) {
            procs::signal(old, libc::SIGKILL);
            if !procs::wait_gone(&[old], Duration::from_secs(30)) {
                bail!(
                    "the old containerd of {} ({old}) does not go away",
                    host.name
                );
            }
        }
    }
    let pid = start_dockerd(layout, &host.name, host.holder_pid)?;
    let restarted = HostState {
        dockerd_pid: pid,
        ..host.clone()
    };
    wait_dockerd(layout, &restarted)?;
    Ok(pid)
}

/// Waits until the host's dockerd answers; fails with the end of its log if it dies or
/// takes longer than a minute (a noisy machine may be slow, a broken one won't start).
fn wait_dockerd(layout: &Layout, host: &HostState) -> Result<()> {
    let start = Instant::now();
    loop {
        let out = Command::new("docker")
            .args([
                "-H",
                &host.docker_host,
                "version",
                "--format",
                "{{.Server.Version}}",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        let dead = !procs::alive(host.dockerd_pid);
        if dead || start.elapsed() > Duration::from_secs(60) {
            let log = fs::read_to_string(host.run_dir.join("dockerd.log")).unwrap_or_default();
            let tail: Vec<_> = log.lines().rev().take(15).collect();
            bail!(
                "dockerd of {} ({}) {} ; last log lines:\n{}",
                host.name,
                layout.prefix,
                if dead {
                    "exited"
                } else {
                    "did not answer within 60 s"
                },
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A lab is healthy when every host's holder and dockerd still run.
pub fn is_healthy(state: &LabState) -> bool {
    let netns = netns_list();
    state.hosts.iter().all(|h| {
        procs::alive(h.holder_pid) && procs::alive(h.dockerd_pid) && netns.contains(&h.netns)
    }) && netns.contains(&state.client.netns)
}

/// Loads the state of a running lab, or says there is none.
pub fn require_state(layout: &Layout) -> Result<LabState> {
    LabState::load(layout)?.with_context(|| {
        format!(
            "no lab with prefix {:?} is up (run `cargo xtask lab up`)",
            layout.prefix
        )
    })
}

/// Runs `argv` inside a host's namespaces with DOCKER_HOST pointing at its dockerd and
/// the `shoal` CLI pointed at the host's agent (SHOAL_API_SOCKET, SHOAL_PIN_DIR,
/// SHOAL_STATUS_DIR).
pub fn exec_command(state: &LabState, host: &str, argv: &[String]) -> Result<Command> {
    let h = state.host(host)?;
    let (program, args) = argv
        .split_first()
        .context("lab exec needs a command after `--`")?;
    // The workspace's debug build first in PATH, so `shoal` inside a host is this tree's.
    let path = std::env::var("PATH").unwrap_or_default();
    let bin = crate::util::target_dir().join("debug");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("PATH", format!("{}:{path}", bin.display()))
        .env("DOCKER_HOST", &h.docker_host)
        .env("SHOAL_LAB_HOST", &h.name)
        .env("SHOAL_PIN_DIR", &h.pin_dir)
        .env("SHOAL_STATUS_DIR", h.run_dir.join("agent"))
        .env("SHOAL_API_SOCKET", agent::api_socket(h));
    procs::enter_namespaces_of(&mut cmd, h.holder_pid, false)?;
    Ok(cmd)
}

/// Runs `argv` inside a host to completion; its trimmed stdout, or an error with its
/// stderr.
pub fn exec_output(state: &LabState, host: &str, argv: &[&str]) -> Result<String> {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let out = exec_command(state, host, &argv)?
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "{host}: `{}` failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs `argv` in the client namespace.
pub fn client_command(state: &LabState, argv: &[String]) -> Result<Command> {
    if argv.is_empty() {
        bail!("lab client needs a command after `--`");
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &state.client.netns]).args(argv);
    Ok(cmd)
}

/// Runs a command to completion and returns its status (inherits stdio).
pub fn status_of(mut cmd: Command) -> Result<ExitStatus> {
    cmd.status().context("running the command")
}

/// Human-readable summary of a lab (what `lab status` prints).
pub fn describe(state: &LabState) -> String {
    let mut s = format!(
        "lab {}: underlay {} in netns {}\n",
        state.prefix, state.underlay_subnet, state.underlay_netns
    );
    s += &format!(
        "  {:<4} {:<15} {:<12} DOCKER_HOST\n",
        "HOST", "ADDRESS", "NETNS"
    );
    for h in &state.hosts {
        s += &format!(
            "  {:<4} {:<15} {:<12} {}\n",
            h.name,
            h.address.to_string(),
            h.netns,
            h.docker_host
        );
    }
    s += &format!(
        "  {:<4} {:<15} {:<12} (not a cluster node)\n",
        "cl",
        state.client.address.to_string(),
        state.client.netns
    );
    s += &format!(
        "  registry {} (images {}/shoal/web:1, :2)\n",
        state.registry, state.registry
    );
    if let (Some(dns), Some(http)) = (state.client.dns, state.client.http) {
        s += &format!(
            "       upstream DNS {dns} ({}), web server http://{http}/\n",
            outside::NAME
        );
    }
    s
}
