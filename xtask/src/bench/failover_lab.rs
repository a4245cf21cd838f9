//! Manager failover in a 3-host lab, Docker Swarm and shoal in the same run, driven by
//! the same docker CLI (28.x, `api.rs`'s `docker`) with the same commands: against each host's dockerd for
//! Swarm, against each host's shoal agent's Engine API socket for shoal.
//!
//! For each: `swarm init` on h1, h2 and h3 joined with the manager token, all three
//! managers Reachable; then [`ROUNDS`] rounds of: the leader found (`node inspect self`
//! on each host), its process SIGKILLed (Swarm: the host's dockerd, which holds Swarm's
//! manager; shoal: the host's agent), and from that instant a `node update --label-add`
//! retried every 100 ms on another manager until it is accepted: a new leader took the
//! write. The killed process is then started again and the round ends when all three
//! managers are Reachable again.
//!
//! Figures: `swarm_failover_median`, `shoal_failover_median` (seconds), and their ratio.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use super::{services::median, Report};
use crate::{
    chaos::cluster::wait_every,
    lab::{self, procs, HostState, LabState, Layout},
};

/// Kills per system.
const ROUNDS: usize = 3;
/// How long a new leader or a rejoin may take before the run gives up (Swarm's own
/// election takes about 10 s).
const LIMIT: Duration = Duration::from_secs(120);

/// One system under test: how to reach a host's API, and how to kill and restart the
/// process that holds its manager.
trait System {
    fn name(&self) -> &'static str;
    fn socket(&self, host: &HostState) -> PathBuf;
    fn kill(&self, state: &LabState, host: &HostState) -> Result<()>;
    fn restart(&self, state: &LabState, host: usize) -> Result<()>;
}

struct Swarm<'a> {
    layout: &'a Layout,
}

impl System for Swarm<'_> {
    fn name(&self) -> &'static str {
        "swarm"
    }
    fn socket(&self, host: &HostState) -> PathBuf {
        PathBuf::from(host.docker_host.trim_start_matches("unix://"))
    }
    fn kill(&self, _: &LabState, host: &HostState) -> Result<()> {
        let pid = procs::read_pid_file(&self.layout.dockerd_pid_file(&host.name))
            .unwrap_or(host.dockerd_pid);
        kill_and_wait(pid, &format!("{}'s dockerd", host.name))
    }
    fn restart(&self, state: &LabState, host: usize) -> Result<()> {
        lab::restart_dockerd(self.layout, &state.hosts[host])?;
        Ok(())
    }
}

struct Shoal<'a> {
    binary: &'a Path,
}

impl System for Shoal<'_> {
    fn name(&self) -> &'static str {
        "shoal"
    }
    fn socket(&self, host: &HostState) -> PathBuf {
        lab::agent::engine_api_socket(host)
    }
    fn kill(&self, _: &LabState, host: &HostState) -> Result<()> {
        let status = lab::tables::read_json(&lab::agent::status_file(host));
        let pid = status["pid"]
            .as_u64()
            .with_context(|| format!("no pid in {}'s agent.json: {status}", host.name))?;
        kill_and_wait(pid as u32, &format!("{}'s agent", host.name))
    }
    fn restart(&self, state: &LabState, host: usize) -> Result<()> {
        lab::agent::start(state, &state.hosts[host], self.binary, &[])?;
        Ok(())
    }
}

fn kill_and_wait(pid: u32, what: &str) -> Result<()> {
    procs::signal(pid, libc::SIGKILL);
    if !procs::wait_gone(&[pid], Duration::from_secs(30)) {
        bail!("{what} ({pid}) survives SIGKILL");
    }
    Ok(())
}

/// `docker -H unix://SOCKET args...` with a configuration of its own; Ok(stdout,
/// trimmed).
fn docker(config: &Path, socket: &Path, args: &[&str]) -> Result<String> {
    Ok(super::api::docker(socket, config, args)?.trim().to_owned())
}

/// Polls `f` every 100 ms until it is Ok, for at most [`LIMIT`]; with how long it took.
fn poll<T>(what: &str, f: impl FnMut() -> Result<T>) -> Result<(T, Duration)> {
    let began = Instant::now();
    let v = wait_every(what, LIMIT, Duration::from_millis(100), f)?;
    Ok((v, began.elapsed()))
}

/// Measures one system's failovers on the lab; the seconds of each round.
fn failovers(state: &LabState, system: &dyn System, config: &Path) -> Result<Vec<f64>> {
    let name = system.name();
    let on = |state: &LabState, i: usize, args: &[&str]| {
        docker(config, &system.socket(&state.hosts[i]), args)
    };
    let addr = state.hosts[0].address.to_string();
    on(state, 0, &["swarm", "init", "--advertise-addr", &addr])?;
    let token = on(state, 0, &["swarm", "join-token", "-q", "manager"])?;
    for i in 1..state.hosts.len() {
        let own = state.hosts[i].address.to_string();
        let join = [
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &own,
            &format!("{addr}:2377"),
        ];
        poll(&format!("{name}: h{} joins", i + 1), || on(state, i, &join))?;
    }
    let all_reachable = |state: &LabState| {
        poll(&format!("{name}: three managers reachable"), || {
            let ls = (0..state.hosts.len())
                .find_map(|i| on(state, i, &["node", "ls", "--format", "{{.ManagerStatus}}"]).ok())
                .ok_or_else(|| anyhow!("no manager answers"))?;
            let up = ls
                .lines()
                .filter(|l| matches!(l.trim(), "Leader" | "Reachable"))
                .count();
            if up == 3 {
                Ok(())
            } else {
                bail!("node ls: {ls:?}")
            }
        })
    };
    all_reachable(state)?;
    let mut took = Vec::new();
    for round in 1..=ROUNDS {
        let (leader, _) = poll(&format!("{name}: the leader"), || {
            (0..state.hosts.len())
                .find(|&i| {
                    on(
                        state,
                        i,
                        &["node", "inspect", "self", "-f", "{{.ManagerStatus.Leader}}"],
                    )
                    .is_ok_and(|o| o == "true")
                })
                .ok_or_else(|| anyhow!("no host says it leads"))
        })?;
        let asked = (leader + 1) % state.hosts.len();
        let node_id = on(state, asked, &["info", "-f", "{{.Swarm.NodeID}}"])?;
        system.kill(state, &state.hosts[leader])?;
        let label = format!("failover={round}");
        let (_, t) = poll(&format!("{name}: a write after the leader's kill"), || {
            on(
                state,
                asked,
                &["node", "update", "--label-add", &label, &node_id],
            )
        })?;
        println!(
            "bench cluster: {name} round {round}: h{}'s {} killed, a write accepted through h{} after {:.2} s",
            leader + 1,
            if name == "swarm" { "dockerd" } else { "agent" },
            asked + 1,
            t.as_secs_f64()
        );
        took.push(t.as_secs_f64());
        system.restart(state, leader)?;
        all_reachable(state)?;
    }
    Ok(took)
}

/// Both systems' failovers on one lab; figures and the ratio into `report`.
pub(super) fn measure(report: &mut Report) -> Result<()> {
    let shoal = super::release_shoal("failover_lab")?;
    let layout = Layout::new("bfail")?;
    if !lab::leftovers(&layout).is_empty() {
        lab::down(&layout)?;
    }
    let state = lab::up(&layout, 3)?;
    let config = layout.run_dir().join("docker-config");
    let result = (|| -> Result<(f64, f64)> {
        std::fs::create_dir_all(&config)?;
        let mut swarm = failovers(&state, &Swarm { layout: &layout }, &config)?;
        for i in 0..state.hosts.len() {
            let socket = Swarm { layout: &layout }.socket(&state.hosts[i]);
            docker(&config, &socket, &["swarm", "leave", "--force"])?;
        }
        for i in 0..state.hosts.len() {
            lab::agent::start(&state, &state.hosts[i], &shoal, &[])?;
        }
        let mut ours = failovers(&state, &Shoal { binary: &shoal }, &config)?;
        Ok((median(&mut swarm), median(&mut ours)))
    })();
    let down = lab::down(&layout);
    let (swarm, ours) = result?;
    down?;
    report.figure("swarm_failover_median", swarm, "s");
    report.figure("shoal_failover_median", ours, "s");
    report.ratio("failover_vs_swarm", ours / swarm, "<=", 0.5);
    Ok(())
}
