//! Installing and removing the agent on a host (one lab host each):
//! - `shoal agent --validate` passes on a good config file and fails on a bad one with a
//!   line naming the key; the agent itself refuses to start with a config holding an
//!   unknown key or a bad value, naming the key;
//! - `shoal agent cleanup` leaves the host as it was before the agent started: an agent
//!   configured by a file alone (the underlay interface found from `advertise_addr`)
//!   forms a 1-node swarm and runs a task with a published port (so the overlay, the
//!   ingress namespace, the mesh's veth, route and sysctls, the XDP, TC and cgroup
//!   programs and their pins all exist), then leaves the swarm and stops; cleanup must
//!   bring back the host's links, addresses, routes, rules, qdiscs, eBPF attachments,
//!   namespaces, pins, sysctls, firewall rules, containers (the task's sandbox too) and
//!   images (the sandbox image the agent loaded), and free every eBPF
//!   program, link and map the agent pinned. Cleanup is refused while the agent runs and
//!   while the node is still in a swarm (and then removes nothing).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use shoal_tests::{
    client_http, lab, privileged,
    swarm::{Cli, BOUND},
    wait_for, LabGuard,
};

/// Where the test keeps the agent's files on host `h` (under the lab's run dir, which
/// `lab down` removes).
struct AgentFiles {
    config: PathBuf,
    data_dir: PathBuf,
    netns_dir: PathBuf,
    pin_dir: PathBuf,
    api_socket: PathBuf,
    engine_api_socket: PathBuf,
    docker_socket: String,
    log: PathBuf,
}

impl AgentFiles {
    fn of(h: &lab::HostState) -> Self {
        Self {
            config: h.run_dir.join("agent.toml"),
            data_dir: h.run_dir.join("agent"),
            netns_dir: h.run_dir.join("netns"),
            pin_dir: h.pin_dir.clone(),
            api_socket: lab::agent::api_socket(h),
            engine_api_socket: lab::agent::engine_api_socket(h),
            docker_socket: h.docker_host.trim_start_matches("unix://").to_owned(),
            log: h.run_dir.join("agent.log"),
        }
    }

    /// A config file with every path of this host and `extra` lines; no underlay
    /// interface (the agent finds it from `advertise_addr`).
    fn write_config(&self, h: &lab::HostState, extra: &str) {
        let text = format!(
            "advertise_addr = \"{}\"\npin_dir = \"{}\"\ndata_dir = \"{}\"\nnetns_dir = \"{}\"\n\
             api_socket = \"{}\"\nengine_api_socket = \"{}\"\ndocker_socket = \"{}\"\n{extra}",
            h.address,
            self.pin_dir.display(),
            self.data_dir.display(),
            self.netns_dir.display(),
            self.api_socket.display(),
            self.engine_api_socket.display(),
            self.docker_socket,
        );
        fs::write(&self.config, text).expect("writing the agent's config file");
    }

    /// `shoal agent cleanup` with this host's paths (and the config file's).
    fn cleanup_args(&self) -> Vec<String> {
        vec![
            "agent".into(),
            "cleanup".into(),
            "--config".into(),
            self.config.display().to_string(),
        ]
    }
}

/// `shoal ARGS` on h1: (success, stdout + stderr).
fn shoal(guard: &LabGuard, args: &[String]) -> (bool, String) {
    let mut argv = vec!["shoal"];
    argv.extend(args.iter().map(String::as_str));
    let out = guard.exec("h1", &argv);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Starts `shoal agent --config FILE` on h1 and waits for its status file.
fn start_agent(guard: &LabGuard, files: &AgentFiles) -> Child {
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let argv = vec![
        shoal.display().to_string(),
        "agent".into(),
        "--config".into(),
        files.config.display().to_string(),
    ];
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&files.log)
        .expect("agent log");
    let child = lab::exec_command(&guard.state, "h1", &argv)
        .expect("agent command")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("starting shoal agent");
    let status = files.data_dir.join("agent.json");
    wait_for("the agent's status file", Duration::from_secs(60), || {
        if status.exists() {
            Ok(())
        } else {
            Err(fs::read_to_string(&files.log).unwrap_or_default())
        }
    });
    child
}

/// SIGTERM, then waits for the agent to exit.
fn stop_agent(mut child: Child) {
    lab::procs::signal(child.id(), libc::SIGTERM);
    let start = Instant::now();
    loop {
        if child.try_wait().expect("waiting for the agent").is_some() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the agent did not stop within 60 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cmd` run in h1, its stdout; "" when the tool fails (a missing table, a dir).
fn output(guard: &LabGuard, cmd: &str) -> String {
    let out = guard.exec("h1", &["sh", "-c", cmd]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the host looks like, by aspect: everything the agent may change in its
/// namespaces, its pin directory and its dockerd.
fn host_state(guard: &LabGuard, files: &AgentFiles) -> BTreeMap<&'static str, String> {
    let run_dir = guard.state.hosts[0].run_dir.display().to_string();
    let strip_counters = |text: String| {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.find(" [") {
                Some(i) if l.starts_with(':') => l[..i].to_owned(),
                _ => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    BTreeMap::from([
        ("links", output(guard, "ip -o -d link show")),
        ("addresses", output(guard, "ip -o addr show")),
        (
            "routes",
            output(guard, "ip route show table all; ip -6 route show table all"),
        ),
        ("rules", output(guard, "ip rule show; ip -6 rule show")),
        ("qdiscs", output(guard, "tc qdisc show")),
        (
            "filters",
            // Not /sys/class/net: the lab host's /sys may show another namespace.
            output(
                guard,
                "for d in $(ip -o link show | cut -d: -f2 | cut -d@ -f1); do \
                 tc filter show dev $d ingress; tc filter show dev $d egress; done",
            ),
        ),
        ("bpf attachments", output(guard, "bpftool net show")),
        (
            "namespace pins",
            output(guard, &format!("findmnt -rn -t nsfs -o TARGET | grep '^{run_dir}/' | sort")),
        ),
        ("netns dir", output(guard, &format!("ls -a {}", files.netns_dir.display()))),
        ("pin dir", output(guard, &format!("find {} | sort", files.pin_dir.display()))),
        (
            "sysctls",
            output(guard, "grep -rs . /proc/sys/net/ipv4/conf /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf | sort"),
        ),
        ("iptables", strip_counters(output(guard, "iptables-save"))),
        ("nftables", output(guard, "nft list ruleset")),
        ("containers", output(guard, "docker ps -a --format '{{.ID}} {{.Names}}'")),
        (
            "images",
            output(guard, "docker images --format '{{.Repository}}:{{.Tag}} {{.ID}}' | sort"),
        ),
    ])
}

/// IDs of eBPF objects of one kind (`prog`, `link`, `map`) in the kernel; with `pinned_in`,
/// only those pinned under that directory.
fn bpf_ids(guard: &LabGuard, kind: &str, pinned_in: Option<&Path>) -> BTreeSet<u64> {
    let text = output(guard, &format!("bpftool -j -f {kind} show"));
    let list: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|o| match pinned_in {
            None => true,
            Some(dir) => o["pinned"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p.as_str().is_some_and(|p| Path::new(p).starts_with(dir))),
        })
        .filter_map(|o| o["id"].as_u64())
        .collect()
}

/// The IDs of the programs attached in h1's namespace (XDP and TC), from `bpftool net`.
fn attached_prog_ids(guard: &LabGuard) -> BTreeSet<u64> {
    let text = output(guard, "bpftool -j net show");
    let mut ids = BTreeSet::new();
    fn walk(v: &Value, ids: &mut BTreeSet<u64>) {
        match v {
            Value::Object(m) => {
                if let Some(id) = m.get("id").and_then(Value::as_u64) {
                    ids.insert(id);
                }
                m.values().for_each(|v| walk(v, ids));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, ids)),
            _ => {}
        }
    }
    walk(
        &serde_json::from_str(&text).unwrap_or(Value::Null),
        &mut ids,
    );
    ids
}

/// The aspects in which `now` differs from `before`, each with both versions.
fn differences(
    before: &BTreeMap<&'static str, String>,
    now: &BTreeMap<&'static str, String>,
) -> Vec<String> {
    before
        .iter()
        .filter(|(k, v)| now.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}:\n--- before\n{v}\n--- now\n{}", now[k]))
        .collect()
}

fn sysctl(guard: &LabGuard, key: &str) -> String {
    output(guard, &format!("cat /proc/sys/{key}"))
        .trim()
        .to_owned()
}

#[test]
fn validate_and_bad_configs() {
    if !privileged() {
        return;
    }
    let guard = LabGuard::up('i', 1);
    let h = guard.state.hosts[0].clone();
    let files = AgentFiles::of(&h);

    // A good file: every check passes, the underlay found from advertise_addr.
    files.write_config(&h, "");
    let validate = ["agent", "--validate", "--config"]
        .iter()
        .map(|s| s.to_string())
        .chain([files.config.display().to_string()])
        .collect::<Vec<_>>();
    let (ok, out) = shoal(&guard, &validate);
    assert!(ok, "--validate on a good config failed:\n{out}");
    assert!(!out.contains("problem:"), "{out}");
    assert!(
        out.contains(&format!(
            "underlay_interface={} (holds advertise_addr {})",
            h.underlay_interface, h.address
        )),
        "{out}"
    );
    for found in [
        "running as root",
        "kernel BTF",
        "programs load",
        "cgroup v2",
        "dockerd",
    ] {
        assert!(out.contains(found), "no {found:?} line:\n{out}");
    }

    // A flag overrides the file, and an unreachable dockerd is a problem of its own line.
    let mut args = validate.clone();
    args.extend(["--docker-socket".into(), "/nonexistent/docker.sock".into()]);
    let (ok, out) = shoal(&guard, &args);
    assert!(!ok, "--validate with no dockerd passed:\n{out}");
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem:")).collect();
    assert_eq!(problems.len(), 1, "{out}");
    assert!(problems[0].contains("dockerd is not reachable"), "{out}");
    assert!(out.contains("shoal: 1 problem found"), "{out}");

    // A port in use is a problem.
    let argv: Vec<String> = ["busybox", "nc", "-l", "-p", "2377"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut holder = lab::exec_command(&guard.state, "h1", &argv)
        .expect("nc command")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting busybox nc");
    wait_for("nc listening on 2377", BOUND, || {
        let ss = output(&guard, "ss -ltn");
        if ss.contains(":2377 ") {
            Ok(())
        } else {
            Err(ss)
        }
    });
    let (ok, out) = shoal(&guard, &validate);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!ok, "--validate with 2377 taken passed:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("problem:") && l.contains("2377/tcp")),
        "{out}"
    );

    // An unknown key: --validate names it, and the agent does not start.
    files.write_config(&h, "underlay_iface = \"eth0\"\n");
    let (ok, out) = shoal(&guard, &validate);
    assert!(!ok, "--validate accepted an unknown key:\n{out}");
    assert!(
        out.lines().any(|l| l.starts_with("problem:")
            && l.contains("key `underlay_iface`")
            && l.contains("unknown field")),
        "{out}"
    );
    for (extra, key) in [
        ("underlay_iface = \"eth0\"\n", "underlay_iface"),
        ("data_path_port = 70000\n", "data_path_port"),
        ("lb_flows = 0\n", "lb_flows"),
    ] {
        files.write_config(&h, extra);
        let started = Instant::now();
        let (ok, out) = shoal(
            &guard,
            &[
                "agent".into(),
                "--config".into(),
                files.config.display().to_string(),
            ],
        );
        assert!(!ok, "the agent started with {extra:?}:\n{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "not one line for {extra:?}:\n{out}");
        assert!(lines[0].contains(key), "{key} not named: {out}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "refusing took {:?}",
            started.elapsed()
        );
        assert!(
            !files.data_dir.join("agent.json").exists(),
            "an agent with a bad config wrote its status file"
        );
    }
    // A config file named but missing is an error; nothing starts.
    let (ok, out) = shoal(
        &guard,
        &[
            "agent".into(),
            "--config".into(),
            "/nonexistent/agent.toml".into(),
        ],
    );
    assert!(!ok && out.contains("/nonexistent/agent.toml"), "{out}");
}

#[test]
fn cleanup_leaves_the_host_as_it_was() {
    if !privileged() {
        return;
    }
    let guard = LabGuard::up('j', 1);
    let h = guard.state.hosts[0].clone();
    let files = AgentFiles::of(&h);
    files.write_config(&h, "");
    let underlay = &h.underlay_interface;
    let forwarding = format!("net/ipv4/conf/{underlay}/forwarding");
    let rp_filter = format!("net/ipv4/conf/{underlay}/rp_filter");
    // Values the agent changes, so their restoring shows.
    guard.exec_ok(
        "h1",
        &[
            "sh",
            "-c",
            &format!("echo 0 > /proc/sys/{forwarding}; echo 0 > /proc/sys/{rp_filter}"),
        ],
    );
    // A fresh host's IPv6 link-local address is tentative for a moment (duplicate
    // address detection): its settling is no change of the agent's.
    wait_for("no tentative address", BOUND, || {
        let tentative = output(&guard, "ip -6 addr show tentative");
        if tentative.trim().is_empty() {
            Ok(())
        } else {
            Err(tentative)
        }
    });
    let before = host_state(&guard, &files);

    let agent = start_agent(&guard, &files);
    let cli = Cli { lab: &guard };
    cli.ok("h1", &["swarm", "init"]);
    let info = cli.ok("h1", &["info", "--format", "{{.Swarm.NodeAddr}}"]);
    assert_eq!(
        info.trim(),
        h.address.to_string(),
        "advertise_addr from the config file"
    );
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "-p",
            "8080:80",
            "shoal/web:1",
        ],
    );
    let url = format!("http://{}:8080/", h.address);
    wait_for("the published port answers", BOUND, || {
        client_http(&guard, &url)
    });
    wait_for("the mesh's reply path and sysctls", BOUND, || {
        let (f, r) = (sysctl(&guard, &forwarding), sysctl(&guard, &rp_filter));
        if f == "1" && r == "2" {
            Ok(())
        } else {
            Err(format!("forwarding={f} rp_filter={r}"))
        }
    });
    let running = host_state(&guard, &files);
    for aspect in [
        "links",
        "routes",
        "bpf attachments",
        "namespace pins",
        "pin dir",
        "sysctls",
        "containers",
        "images",
    ] {
        assert_ne!(
            before[aspect], running[aspect],
            "{aspect}: the agent changed nothing"
        );
    }
    let journal =
        fs::read_to_string(files.data_dir.join("sysctl-restore.json")).expect("the sysctl journal");
    assert!(
        journal.contains(&forwarding) && journal.contains(&rp_filter),
        "{journal}"
    );
    // What the agent made in the kernel, to be freed by cleanup.
    let links = bpf_ids(&guard, "link", Some(&files.pin_dir));
    let maps = bpf_ids(&guard, "map", Some(&files.pin_dir));
    let progs = attached_prog_ids(&guard);
    assert!(links.len() >= 2, "pinned links: {links:?}");
    assert!(
        !maps.is_empty() && !progs.is_empty(),
        "maps {maps:?} progs {progs:?}"
    );

    // Refused while the agent runs.
    let (ok, out) = shoal(&guard, &files.cleanup_args());
    assert!(!ok && out.contains("the agent is running"), "{out}");

    // Refused while the node is in a swarm, and then nothing is removed.
    stop_agent(agent);
    let (ok, out) = shoal(&guard, &files.cleanup_args());
    assert!(
        !ok && out.contains("still in a swarm (as a manager)"),
        "{out}"
    );
    let stopped = host_state(&guard, &files);
    for aspect in [
        "namespace pins",
        "pin dir",
        "sysctls",
        "containers",
        "images",
    ] {
        assert_eq!(
            running[aspect], stopped[aspect],
            "{aspect} changed by a refused cleanup"
        );
    }

    // Leave the swarm, stop, clean up: the host is as it was.
    let agent = start_agent(&guard, &files);
    cli.ok("h1", &["swarm", "leave", "--force"]);
    stop_agent(agent);
    let started = Instant::now();
    let (ok, out) = shoal(&guard, &files.cleanup_args());
    let took = started.elapsed();
    assert!(ok, "cleanup failed:\n{out}");
    println!("cleanup took {:.2} s:\n{out}", took.as_secs_f64());
    assert!(out.contains("restored sysctl"), "{out}");
    assert!(out.contains("removed container web.1."), "{out}");
    assert!(
        out.contains(".sandbox"),
        "the task's sandbox is removed too: {out}"
    );
    assert!(out.contains("removed the sandbox image"), "{out}");
    let after = wait_for("the host as it was", Duration::from_secs(30), || {
        let now = host_state(&guard, &files);
        let diff = differences(&before, &now);
        if diff.is_empty() {
            Ok(now)
        } else {
            Err(diff.join("\n"))
        }
    });
    assert_eq!(after, before);
    wait_for(
        "the agent's eBPF objects freed",
        Duration::from_secs(30),
        || {
            let (l, m, p) = (
                bpf_ids(&guard, "link", None),
                bpf_ids(&guard, "map", None),
                bpf_ids(&guard, "prog", None),
            );
            let left = (
                links.intersection(&l).collect::<Vec<_>>(),
                maps.intersection(&m).collect::<Vec<_>>(),
                progs.intersection(&p).collect::<Vec<_>>(),
            );
            if left.0.is_empty() && left.1.is_empty() && left.2.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "links {:?} maps {:?} programs {:?} still there",
                    left.0, left.1, left.2
                ))
            }
        },
    );
    assert!(
        !files.data_dir.exists(),
        "the data dir is left: {:?}",
        fs::read_dir(&files.data_dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    // A second cleanup finds nothing to do and succeeds.
    let (ok, out) = shoal(&guard, &files.cleanup_args());
    assert!(ok, "a second cleanup failed:\n{out}");
}
