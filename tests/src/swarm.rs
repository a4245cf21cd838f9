//! A cluster made through the `shoal` CLI on plain agents (no `--declared-*` file), and
//! what the lab tests ask of it: running tasks, a service's VIPs, a task container's
//! namespace, answers of the `shoal/web` image.
use std::{
    collections::BTreeSet, fs::File, net::Ipv4Addr, os::fd::AsRawFd, path::Path, thread,
    time::Duration,
};

use crate::{lab, wait_for, LabGuard};

/// Bound of the waits for the cluster to converge.
pub const BOUND: Duration = Duration::from_secs(90);

/// One running task of a service: its ID (its container's hostname is the first 12
/// characters), its node's name, and its container's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Task {
    pub id: String,
    pub node: String,
    pub container: String,
}

impl Task {
    pub fn hostname(&self) -> String {
        self.id.chars().take(12).collect()
    }

    /// The `<service>.<slot>` part of the container's name (`service ps`'s NAME).
    pub fn name(&self) -> &str {
        self.container
            .strip_suffix(&format!(".{}", self.id))
            .unwrap_or(&self.container)
    }

    /// Index of the task's host in the lab (h1 is 0).
    pub fn host_index(&self) -> usize {
        self.node
            .trim_start_matches('h')
            .parse::<usize>()
            .expect("host name")
            - 1
    }
}

/// One row of `service ps --no-trunc`: a task, running or not, or one its slot ran
/// before (history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsRow {
    pub id: String,
    /// `<service>.<slot>` (or `<service>.<node ID>` for a global task), without the
    /// `\_ ` that marks history.
    pub name: String,
    /// A task its slot ran before the current one.
    pub history: bool,
    pub image: String,
    pub node: String,
    pub desired: String,
    /// The first word of CURRENT STATE: `Running`, `Failed`, `Pending`, ...
    pub current: String,
    pub error: String,
    pub ports: String,
}

impl PsRow {
    /// The slot's current task, meant to run and running.
    pub fn running(&self) -> bool {
        !self.history && self.desired == "Running" && self.current == "Running"
    }
}

/// The hostnames of these tasks (what `shoal/web` answers with).
pub fn hostnames(tasks: &[Task]) -> BTreeSet<String> {
    tasks.iter().map(Task::hostname).collect()
}

/// The `host=` of one `shoal/web` answer.
pub fn answered_by(body: &str) -> Option<String> {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("host="))
        .map(str::to_string)
}

/// The `client=` of one `shoal/web` answer: the address the task saw.
pub fn client_seen(body: &str) -> Option<String> {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("client="))
        .map(str::to_string)
}

/// The `shoal` CLI run in the lab's hosts.
pub struct Cli<'a> {
    pub lab: &'a LabGuard,
}

impl Cli<'_> {
    pub fn run(&self, h: &str, args: &[&str]) -> Result<String, String> {
        self.lab.shoal(h, args)
    }

    pub fn ok(&self, h: &str, args: &[&str]) -> String {
        self.run(h, args)
            .unwrap_or_else(|e| panic!("{h}: shoal {} failed: {e}", args.join(" ")))
    }

    /// Runs a command that must fail; returns what it said.
    pub fn err(&self, h: &str, args: &[&str]) -> String {
        match self.run(h, args) {
            Ok(out) => panic!("{h}: shoal {} should fail; printed: {out}", args.join(" ")),
            Err(e) => e,
        }
    }

    /// Starts a plain agent (no `--declared-*` file) on every host, with `extra` flags.
    pub fn start_agents(&self, shoal: &Path, extra: &[String]) {
        for i in 0..self.lab.state.hosts.len() {
            self.start_agent(shoal, i, extra);
        }
    }

    /// Starts a plain agent on host `i`; returns its PID.
    pub fn start_agent(&self, shoal: &Path, i: usize, extra: &[String]) -> u32 {
        let h = &self.lab.state.hosts[i];
        let status = lab::agent::start(&self.lab.state, h, shoal, extra)
            .unwrap_or_else(|e| panic!("start agent on {}: {e:#}", h.name));
        let status: serde_json::Value = serde_json::from_str(&status).expect("agent.json");
        status["pid"].as_u64().expect("agent pid") as u32
    }

    /// `swarm init` on h1 and `swarm join` of every other host as a worker; waits until
    /// every node is Ready.
    pub fn form_cluster(&self) {
        self.form_cluster_with(&[])
    }

    /// [`Self::form_cluster`] with `extra` flags to every init and join.
    pub fn form_cluster_with(&self, extra: &[&str]) {
        let hosts = &self.lab.state.hosts;
        let h1 = hosts[0].address.to_string();
        let manager = format!("{h1}:2377");
        let mut init = vec!["swarm", "init", "--advertise-addr", &h1];
        init.extend_from_slice(extra);
        self.ok("h1", &init);
        let token = self
            .ok("h1", &["swarm", "join-token", "-q", "worker"])
            .trim()
            .to_owned();
        for h in &hosts[1..] {
            let mut join = vec!["swarm", "join", "--token", &token];
            join.extend_from_slice(extra);
            join.push(&manager);
            self.ok(&h.name, &join);
        }
        wait_for(&format!("{} nodes Ready", hosts.len()), BOUND, || {
            let nodes = self.run("h1", &["node", "ls"])?;
            if nodes.matches("Ready").count() == hosts.len() {
                Ok(())
            } else {
                Err(nodes)
            }
        });
    }

    /// The service's `service ps` rows, history too, cut at the header's column
    /// positions (cells may hold spaces, so splitting at white space would not do).
    pub fn ps(&self, service: &str) -> Result<Vec<PsRow>, String> {
        let out = self.run("h1", &["service", "ps", "--no-trunc", service])?;
        let mut lines = out.lines();
        let header = lines.next().ok_or("no header")?;
        let col = |name: &str| header.find(name).ok_or(format!("no {name} column"));
        let cols = [
            0,
            col("NAME")?,
            col("IMAGE")?,
            col("NODE")?,
            col("DESIRED STATE")?,
            col("CURRENT STATE")?,
            col("ERROR")?,
            col("PORTS")?,
        ];
        Ok(lines
            .map(|l| {
                let cell = |i: usize| {
                    let end = cols.get(i + 1).copied().unwrap_or(l.len()).min(l.len());
                    l.get(cols[i].min(l.len())..end)
                        .unwrap_or("")
                        .trim()
                        .to_string()
                };
                let name = cell(1);
                PsRow {
                    id: cell(0),
                    history: name.starts_with("\\_"),
                    name: name.trim_start_matches("\\_").trim().to_string(),
                    image: cell(2),
                    node: cell(3),
                    desired: cell(4),
                    current: cell(5).split_whitespace().next().unwrap_or("").to_string(),
                    error: cell(6),
                    ports: cell(7),
                }
            })
            .collect())
    }

    /// Waits until `ok` holds for the service's `service ps` rows; returns them.
    pub fn wait_ps(&self, service: &str, what: &str, ok: impl Fn(&[PsRow]) -> bool) -> Vec<PsRow> {
        wait_for(what, BOUND, || {
            let rows = self.ps(service)?;
            if ok(&rows) {
                Ok(rows)
            } else {
                Err(format!("{rows:#?}"))
            }
        })
    }

    /// The service's running tasks (from [`Self::ps`]).
    pub fn running(&self, service: &str) -> Result<Vec<Task>, String> {
        let mut tasks: Vec<Task> = self
            .ps(service)?
            .into_iter()
            .filter(PsRow::running)
            .map(|r| Task {
                container: format!("{}.{}", r.name, r.id),
                id: r.id,
                node: r.node,
            })
            .collect();
        tasks.sort();
        Ok(tasks)
    }

    /// Waits until the service has `n` running tasks and `ok` accepts them.
    pub fn wait_running(&self, service: &str, n: usize, ok: impl Fn(&[Task]) -> bool) -> Vec<Task> {
        wait_for(&format!("{n} running {service} tasks"), BOUND, || {
            let tasks = self.running(service)?;
            if tasks.len() == n && ok(&tasks) {
                Ok(tasks)
            } else {
                Err(format!("{tasks:#?}"))
            }
        })
    }

    /// The service's VIP on `network`, as `service inspect` says.
    pub fn vip(&self, service: &str, network: &str) -> Ipv4Addr {
        self.vips(service)
            .into_iter()
            .find(|(n, _)| n == network)
            .unwrap_or_else(|| panic!("{service} has no VIP on {network}"))
            .1
    }

    /// The service's VIPs (network name, address), as `service inspect` says.
    pub fn vips(&self, service: &str) -> Vec<(String, Ipv4Addr)> {
        let out = self.ok(
            "h1",
            &[
                "service",
                "inspect",
                "--format",
                "{{json .Endpoint.VirtualIPs}}",
                service,
            ],
        );
        let vips: Vec<serde_json::Value> = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{service}'s VIPs: {e}: {out}"));
        vips.iter()
            .map(|v| {
                let addr = v["Addr"].as_str().expect("VIP address");
                let addr = addr
                    .split('/')
                    .next()
                    .unwrap()
                    .parse()
                    .expect("an IPv4 VIP");
                (v["NetworkName"].as_str().unwrap_or("").to_string(), addr)
            })
            .collect()
    }

    /// The task container's PID (in the machine's PID namespace).
    pub fn pid(&self, t: &Task) -> u32 {
        self.lab
            .exec_ok(
                &t.node,
                &["docker", "inspect", "-f", "{{.State.Pid}}", &t.container],
            )
            .parse()
            .expect("pid")
    }

    /// The task's address on the network whose addresses start with `prefix` (e.g.
    /// "10.0.9."), as its container shows it; waits until it has one.
    pub fn address(&self, t: &Task, prefix: &str) -> Ipv4Addr {
        wait_for_address(&t.container, prefix, || {
            self.lab
                .docker_exec(&t.node, &t.container, &["ip", "-4", "-o", "addr"])
        })
    }

    /// `docker exec` in the task's container; Ok(output) or Err(output).
    pub fn exec_in(&self, t: &Task, argv: &[&str]) -> Result<String, String> {
        self.lab.docker_exec(&t.node, &t.container, argv)
    }
}

/// Waits until `ip -4 -o addr` in `container` (as `addrs` runs it) shows exactly one
/// address starting with `prefix` (e.g. "10.0.9."), and returns it.
pub fn wait_for_address(
    container: &str,
    prefix: &str,
    addrs: impl Fn() -> Result<String, String>,
) -> Ipv4Addr {
    wait_for(
        &format!("{container} has an address in {prefix}*"),
        BOUND,
        || {
            let out = addrs()?;
            let found: Vec<Ipv4Addr> = out
                .split_whitespace()
                .filter_map(|w| w.split('/').next())
                .filter(|a| a.starts_with(prefix))
                .filter_map(|a| a.parse().ok())
                .collect();
            match found[..] {
                [a] => Ok(a),
                _ => Err(out),
            }
        },
    )
}

/// The PID of the host's agent, from its status file.
pub fn agent_pid(h: &lab::HostState) -> u32 {
    let status = crate::tables::read_json(&lab::agent::status_file(h));
    status["pid"].as_u64().expect("agent pid in agent.json") as u32
}

/// Runs `f` on a thread inside the network namespace at `path` (e.g.
/// `/proc/<pid>/ns/net`); sockets made there stay in that namespace.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this short-lived thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// The namespace of process `pid`.
pub fn netns_of(pid: u32) -> std::path::PathBuf {
    format!("/proc/{pid}/ns/net").into()
}

/// The task (of `tasks`, with their PIDs) whose namespace holds an established TCP
/// connection from `peer` (read from /proc/<pid>/net/tcp{,6}, which show the process's
/// namespace; httpd's socket is IPv6, so the peer is a v4-mapped address there).
pub fn task_holding(tasks: &[(Task, u32)], peer: std::net::SocketAddrV4) -> Option<Task> {
    let ip = u32::from_ne_bytes(peer.ip().octets());
    let remote = format!("{ip:08X}:{:04X}", peer.port());
    tasks.iter().find_map(|(task, pid)| {
        ["tcp", "tcp6"].iter().find_map(|file| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).ok()?;
            text.lines()
                .skip(1)
                .any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.get(2).is_some_and(|r| r.ends_with(&remote)) && cols.get(3) == Some(&"01")
                })
                .then(|| task.clone())
        })
    })
}
