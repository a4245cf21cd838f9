//! The chaos lab: 5 hosts (h1-h3 managers, h4-h5 workers) with a published service on
//! every node and a second one reached by name from a task's container; and what the
//! scenarios do to it (kill, stop and start agents and dockerds, find the leader).
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::lab::{self, procs, HostState, LabState, Layout};

/// Hosts in the lab, and how many of them (the first ones) are managers.
pub const HOSTS: u32 = 5;
pub const MANAGERS: usize = 3;
/// The published service: a task on every node, its port published on every node.
pub const WEB: &str = "web";
pub const WEB_PORT: u16 = 8080;
/// The web image's keep-alive server (its port 8080), published on this port.
pub const KEEPALIVE_PORT: u16 = 8081;
/// The service the container load reaches by name (and VIP) from a `web` task.
pub const BACK: &str = "back";
pub const BACK_REPLICAS: usize = 2;
/// The host whose `web` task sends the container load: a worker that no scenario kills
/// or cuts (only `restart_all` restarts its agent).
pub const LOAD_HOST: &str = "h4";
/// Each agent serves its metrics on this port of its host's loopback (the `starved`
/// scenario reads the managers' Raft terms there).
pub const METRICS_PORT: u16 = 9393;
/// Bound for the lab to reach a state nobody disturbs (a loaded, shared machine).
pub const SETTLE: Duration = Duration::from_secs(90);

/// The lab, taken down when dropped.
pub struct Cluster {
    /// The command that runs it (`chaos`, `soak`): its lines and its logs' directory.
    pub name: &'static str,
    pub layout: Layout,
    pub state: LabState,
    pub shoal: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.keep_logs();
        if !lab::leftovers(&self.layout).is_empty() {
            if let Err(e) = lab::down(&self.layout) {
                eprintln!(
                    "{}: taking down lab {}: {e:#}",
                    self.name, self.layout.prefix
                );
            }
        }
    }
}

impl Cluster {
    /// Brings up the lab (prefix `x6` and this process's id), forms the swarm and
    /// deploys both services; returns once every node answers on the published port.
    pub fn up(shoal: &Path) -> Result<Cluster> {
        Self::up_as(shoal, "chaos", "x6")
    }

    /// [`Cluster::up`] for the command `name`, with its own lab prefix (`prefix` and
    /// this process's id).
    pub fn up_as(shoal: &Path, name: &'static str, prefix: &str) -> Result<Cluster> {
        let layout = Layout::new(&format!("{prefix}{}", std::process::id() % 1_000_000))?;
        println!("{name}: bringing up lab {} ({HOSTS} hosts)", layout.prefix);
        let state = lab::up(&layout, HOSTS)?;
        let cluster = Cluster {
            name,
            layout,
            state,
            shoal: shoal.to_owned(),
        };
        for h in &cluster.state.hosts {
            lab::agent::start(&cluster.state, h, shoal, &agent_args())?;
        }
        cluster.form()?;
        cluster.deploy()?;
        Ok(cluster)
    }

    fn form(&self) -> Result<()> {
        let h1 = self.state.hosts[0].address.to_string();
        let join = format!("{h1}:2377");
        self.shoal("h1", &["swarm", "init", "--advertise-addr", &h1])?;
        let manager = self.shoal("h1", &["swarm", "join-token", "-q", "manager"])?;
        let worker = self.shoal("h1", &["swarm", "join-token", "-q", "worker"])?;
        for (i, h) in self.state.hosts.iter().enumerate().skip(1) {
            let token = if i < MANAGERS { &manager } else { &worker };
            self.shoal(&h.name, &["swarm", "join", "--token", token.trim(), &join])?;
        }
        wait("every node Ready and 3 managers", SETTLE, || {
            let nodes = self.shoal("h1", &["node", "ls"])?;
            let ready = nodes.matches(" Ready ").count();
            let managers = nodes.matches("Leader").count() + nodes.matches("Reachable").count();
            if ready == HOSTS as usize && managers == MANAGERS {
                Ok(())
            } else {
                bail!("{nodes}")
            }
        })?;
        Ok(())
    }

    fn deploy(&self) -> Result<()> {
        self.shoal("h1", &["network", "create", "-d", "overlay", "app"])?;
        let port = format!("{WEB_PORT}:80");
        let keepalive = format!("{KEEPALIVE_PORT}:8080");
        let replicas = BACK_REPLICAS.to_string();
        self.shoal(
            "h1",
            &[
                "service",
                "create",
                "--detach",
                "--no-resolve-image",
                "--name",
                WEB,
                "--mode",
                "global",
                "-p",
                &port,
                "-p",
                &keepalive,
                "--network",
                "app",
                "shoal/web:1",
            ],
        )?;
        self.shoal(
            "h1",
            &[
                "service",
                "create",
                "--detach",
                "--no-resolve-image",
                "--name",
                BACK,
                "--replicas",
                &replicas,
                "--network",
                "app",
                "shoal/web:1",
            ],
        )?;
        wait("both services at their replica count", SETTLE, || {
            super::checks::replicas(self)
        })?;
        let container = wait("the web task's container on the load host", SETTLE, || {
            self.load_container()
        })?;
        wait(
            "the back service answering by name in the load container",
            SETTLE,
            || {
                let body = self.exec(
                    LOAD_HOST,
                    &[
                        "docker",
                        "exec",
                        &container,
                        "wget",
                        "-q",
                        "-O",
                        "-",
                        &format!("http://{BACK}/"),
                    ],
                )?;
                if body.contains("host=") {
                    Ok(())
                } else {
                    bail!("{body}")
                }
            },
        )?;
        Ok(())
    }

    /// The `web` task's container on [`LOAD_HOST`] (the container load runs there).
    pub fn load_container(&self) -> Result<String> {
        let id = self.exec(
            LOAD_HOST,
            &[
                "docker",
                "ps",
                "-q",
                "--filter",
                &format!("label=com.docker.swarm.service.name={WEB}"),
            ],
        )?;
        match id.lines().collect::<Vec<_>>()[..] {
            [one] => Ok(one.to_owned()),
            _ => bail!("{WEB}'s containers on {LOAD_HOST}: {id:?}"),
        }
    }

    /// Copies every host's agent and dockerd log to `<target>/chaos/` (the lab's own
    /// copies go with the lab).
    fn keep_logs(&self) {
        let dir = crate::util::target_dir().join(self.name);
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        for h in &self.state.hosts {
            for log in ["agent.log", "dockerd.log"] {
                let _ = std::fs::copy(h.run_dir.join(log), dir.join(format!("{}-{log}", h.name)));
            }
        }
        println!(
            "{}: the hosts' logs are kept in {}",
            self.name,
            dir.display()
        );
    }

    /// The leader, waiting (up to [`SETTLE`]) while the managers have none; says so
    /// when it had to wait.
    pub fn wait_leader(&self, why: &str) -> Result<String> {
        let asked = Instant::now();
        let leader = wait("a leader", SETTLE, || self.leader())?;
        if asked.elapsed() > Duration::from_secs(1) {
            println!(
                "{}: {why}: no manager named a leader for {:.3} s before {leader} did",
                self.name,
                asked.elapsed().as_secs_f64()
            );
        }
        Ok(leader)
    }

    /// Runs `argv` in a host: its stdout, or an error with its stderr.
    pub fn exec(&self, host: &str, argv: &[&str]) -> Result<String> {
        lab::exec_output(&self.state, host, argv)
    }

    /// Runs the `shoal` CLI in a host.
    pub fn shoal(&self, host: &str, args: &[&str]) -> Result<String> {
        let mut argv = vec!["shoal"];
        argv.extend_from_slice(args);
        self.exec(host, &argv)
    }

    pub fn host(&self, name: &str) -> Result<&HostState> {
        self.state.host(name)
    }

    pub fn managers(&self) -> impl Iterator<Item = &HostState> {
        self.state.hosts.iter().take(MANAGERS)
    }

    /// The leader's hostname, as `node ls` on `asked` (a manager) says.
    pub fn leader_seen_by(&self, asked: &str) -> Result<String> {
        let nodes = self.shoal(asked, &["node", "ls"])?;
        nodes
            .lines()
            .find(|l| l.contains("Leader"))
            .and_then(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with('h') && self.state.host(w).is_ok())
            })
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no leader in `node ls` on {asked}:\n{nodes}"))
    }

    /// The leader, as the first manager that answers says.
    pub fn leader(&self) -> Result<String> {
        let mut seen = Vec::new();
        for m in self.managers() {
            match self.leader_seen_by(&m.name) {
                Ok(l) => return Ok(l),
                Err(e) => seen.push(format!("{e:#}")),
            }
        }
        bail!("no manager names a leader: {}", seen.join("; "))
    }

    /// The values of a host's agent metrics named in `names` (with no labels), in that
    /// order (`None` for one it has no sample of).
    pub fn metrics(&self, host: &str, names: &[&str]) -> Result<Vec<Option<u64>>> {
        let url = format!("http://127.0.0.1:{METRICS_PORT}/metrics");
        let text = self.exec(host, &["curl", "-sS", "--max-time", "5", &url])?;
        Ok(names
            .iter()
            .map(|name| {
                text.lines().find_map(|l| {
                    let (key, value) = l.split_once(' ')?;
                    (key == *name).then(|| value.trim().parse::<f64>().ok().map(|v| v as u64))?
                })
            })
            .collect())
    }

    /// The PID of a host's agent, from its status file.
    pub fn agent_pid(&self, host: &str) -> Result<u32> {
        let h = self.host(host)?;
        let status = lab::tables::read_json(&lab::agent::status_file(h));
        status["pid"]
            .as_u64()
            .map(|p| p as u32)
            .with_context(|| format!("no pid in {}'s agent.json: {status}", host))
    }

    /// Sends `sig` to a host's agent and waits until it is gone.
    pub fn stop_agent(&self, host: &str, sig: libc::c_int) -> Result<()> {
        let pid = self.agent_pid(host)?;
        procs::signal(pid, sig);
        if !procs::wait_gone(&[pid], Duration::from_secs(60)) {
            bail!("{host}'s agent ({pid}) did not stop within 60 s");
        }
        Ok(())
    }

    /// Starts a host's agent again; returns once it has attached its programs.
    pub fn start_agent(&self, host: &str) -> Result<()> {
        lab::agent::start(&self.state, self.host(host)?, &self.shoal, &agent_args()).map(|_| ())
    }

    /// SIGKILLs a host's dockerd (its containerd then goes on its own).
    pub fn kill_dockerd(&self, host: &str) -> Result<()> {
        let h = self.host(host)?;
        let pid =
            procs::read_pid_file(&self.layout.dockerd_pid_file(host)).unwrap_or(h.dockerd_pid);
        procs::signal(pid, libc::SIGKILL);
        if !procs::wait_gone(&[pid], Duration::from_secs(30)) {
            bail!("{host}'s dockerd ({pid}) did not die within 30 s");
        }
        Ok(())
    }

    /// Starts a host's dockerd again (after [`Cluster::kill_dockerd`]) and records its
    /// new PID in the lab's state.
    pub fn restart_dockerd(&mut self, host: &str) -> Result<()> {
        let h = self.host(host)?.clone();
        let pid = lab::restart_dockerd(&self.layout, &h)?;
        if let Some(h) = self.state.hosts.iter_mut().find(|h| h.name == host) {
            h.dockerd_pid = pid;
        }
        self.state.save(&self.layout)
    }

    /// Retries one write (`node update --label-add LABEL h4`) through each host of `via`
    /// in turn until one accepts it, for at most a minute: a new leader took it. Which
    /// host did, and the seconds since `since` (the fault).
    pub fn first_write(
        &self,
        what: &str,
        label: &str,
        via: &[String],
        since: Instant,
    ) -> Result<(String, f64)> {
        wait(what, Duration::from_secs(60), || {
            let mut seen = Vec::new();
            for s in via {
                match self.shoal(s, &["node", "update", "--label-add", label, "h4"]) {
                    Ok(_) => return Ok((s.clone(), since.elapsed().as_secs_f64())),
                    Err(e) => seen.push(format!("{e:#}")),
                }
            }
            bail!("{}", seen.join("; "))
        })
    }

    /// Waits until `node ls` on a manager that answers shows every node Ready and the
    /// three managers with a leader.
    pub fn wait_all_ready(&self, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        wait("every node Ready, 3 managers with a leader", limit, || {
            let leader = self.leader()?;
            let nodes = self.shoal(&leader, &["node", "ls"])?;
            let ready = nodes.matches(" Ready ").count();
            let managers = nodes.matches("Leader").count() + nodes.matches("Reachable").count();
            if ready == HOSTS as usize && managers == MANAGERS {
                Ok(())
            } else {
                bail!("{nodes}")
            }
        })?;
        Ok(started.elapsed())
    }
}

/// What every agent of the lab is started with besides the lab's own arguments.
fn agent_args() -> Vec<String> {
    vec![
        "--metrics-addr".to_owned(),
        format!("127.0.0.1:{METRICS_PORT}"),
    ]
}

/// Polls `probe` every 200 ms until it is Ok, for at most `limit`; the error names
/// `what` and what the probe saw last.
pub fn wait<T>(what: &str, limit: Duration, probe: impl FnMut() -> Result<T>) -> Result<T> {
    wait_every(what, limit, Duration::from_millis(200), probe)
}

/// [`wait`], polling every `every`.
pub fn wait_every<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<T>,
) -> Result<T> {
    let started = Instant::now();
    loop {
        match probe() {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() > limit => {
                bail!("{what}: not within {limit:?}; last seen: {e:#}")
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// The rows of `shoal node ls` output (`nodes`) whose node is not Ready.
pub fn not_ready_rows(nodes: &str) -> Vec<&str> {
    nodes
        .lines()
        .skip(1)
        .filter(|l| !l.contains(" Ready "))
        .collect()
}
