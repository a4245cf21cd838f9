//! `cargo xtask bench gossip_lab`: on the 3-host lab, the time from the start of a task's
//! container to the first request that reaches it through another host's published
//! port. In between: the executor sees the container run, reports it to the leader and
//! gossips its endpoints; every node's executor then writes its declared LB state (a
//! remote task counts once the store has it running and its node gossips it), and the
//! routing mesh picks it up.
//!
//! h1 runs the manager, h2 and h3 join; the agents are the debug `shoal` of `cargo
//! build`. A service `gl` with one replica publishes port 80. Each round, `service
//! update --force gl` replaces its task; the lab client asks every host's port 80 at
//! once, again and again (curl, 0.5 s timeout), until the new task has answered through each host; then
//! `service ps` names the new task's node and container, `docker inspect` its start time.
//! The figure of a round: the first answer through a host other than the task's, minus
//! the container's start. Figures only, no Swarm baseline: Swarm's routing mesh does not
//! work on this kernel (see `../shared/docs/anchors.md`).
use std::{
    collections::BTreeMap,
    process::{ExitCode, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use super::Report;
use crate::{
    lab::{self, LabState, Layout},
    util::shoal_binary,
};

const LIMIT: Duration = Duration::from_secs(120);
const ROUNDS: usize = 7;

pub(super) fn run() -> Result<ExitCode> {
    let mut report = Report {
        suite: "gossip_lab",
        ..Default::default()
    };
    let shoal = shoal_binary()?;
    let layout = Layout::new("bgsl")?;
    if !lab::leftovers(&layout).is_empty() {
        lab::down(&layout)?;
    }
    let state = lab::up(&layout, 3)?;
    let result = measure(&state, &shoal, &mut report);
    let down = lab::down(&layout);
    result?;
    down?;
    report.finish()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn shoal(state: &LabState, host: &str, args: &[&str]) -> Result<String> {
    let mut argv = vec!["shoal"];
    argv.extend_from_slice(args);
    lab::exec_output(state, host, &argv)
}

/// Asks every host in `addrs` at once (curl, 0.5 s timeout) and returns, per host, the
/// `host=` of the `shoal/web` answer and when it came, if one came.
fn ask_all(state: &LabState, addrs: &[&(String, String)]) -> Vec<Option<(String, f64)>> {
    let children: Vec<_> = addrs
        .iter()
        .map(|(_, addr)| {
            let argv: Vec<String> = [
                "curl",
                "-sS",
                "--max-time",
                "0.5",
                &format!("http://{addr}:80/"),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            lab::client_command(state, &argv).ok().and_then(|mut c| {
                c.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
            })
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child?.wait_with_output().ok()?;
            let at = unix_now();
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .find_map(|w| w.strip_prefix("host="))
                .map(|h| (h.to_string(), at))
        })
        .collect()
}

/// The running task of `gl`: (hostname, node, container).
fn running_task(state: &LabState) -> Result<Option<(String, String, String)>> {
    let out = shoal(state, "h1", &["service", "ps", "--no-trunc", "gl"])?;
    let mut lines = out.lines();
    let header = lines.next().context("service ps: no header")?;
    let col = |name: &str| {
        header
            .find(name)
            .with_context(|| format!("service ps: no {name} column"))
    };
    let (name, image, node, desired, current) = (
        col("NAME")?,
        col("IMAGE")?,
        col("NODE")?,
        col("DESIRED STATE")?,
        col("CURRENT STATE")?,
    );
    for l in lines {
        let cell = |from: usize, to: usize| {
            l.get(from.min(l.len())..to.min(l.len()))
                .unwrap_or("")
                .trim()
        };
        if l.contains("\\_")
            || cell(desired, current) != "Running"
            || !cell(current, l.len()).starts_with("Running")
        {
            continue;
        }
        let id = l.split_whitespace().next().unwrap_or("");
        return Ok(Some((
            id.chars().take(12).collect(),
            cell(node, desired).to_string(),
            format!("{}.{id}", cell(name, image)),
        )));
    }
    Ok(None)
}

fn wait<T>(what: &str, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if t0.elapsed() > LIMIT {
            bail!("{what}: not within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One round: (seconds from container start to the first answer through another host,
/// the task's node, the host that answered first).
fn round(state: &LabState, addrs: &[(String, String)]) -> Result<(f64, String, String)> {
    let (old, _, _) = wait("gl running", || running_task(state))?;
    shoal(state, "h1", &["service", "update", "--force", "-d", "gl"])?;
    // Every host's first answer from a task other than the old one.
    let mut first: BTreeMap<String, (f64, String)> = BTreeMap::new();
    let t0 = Instant::now();
    while first.len() < addrs.len() {
        if t0.elapsed() > LIMIT {
            bail!("the new task did not answer through every host within {LIMIT:?}: {first:?}");
        }
        let pending: Vec<&(String, String)> = addrs
            .iter()
            .filter(|(h, _)| !first.contains_key(h))
            .collect();
        for ((host, _), answer) in pending.iter().zip(ask_all(state, &pending)) {
            if let Some((by, at)) = answer.filter(|(by, _)| *by != old) {
                first.insert(host.clone(), (at, by));
            }
        }
    }
    let (new, node, container) = wait("the new gl task in service ps", || {
        Ok(running_task(state)?.filter(|(h, _, _)| *h != old))
    })?;
    for (host, (_, by)) in &first {
        if *by != new {
            bail!("{host} answered from {by}, neither the old task {old} nor the new {new}");
        }
    }
    let started = lab::exec_output(
        state,
        &node,
        &[
            "docker",
            "inspect",
            "-f",
            "{{.State.StartedAt}}",
            &container,
        ],
    )?;
    let started: f64 = lab::exec_output(state, &node, &["date", "-d", &started, "+%s.%N"])?
        .trim()
        .parse()
        .context("the container's start time")?;
    let (via, (at, _)) = first
        .iter()
        .filter(|(h, _)| **h != node)
        .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
        .context("no other host answered")?;
    Ok((at - started, node, via.clone()))
}

fn measure(state: &LabState, shoal_bin: &std::path::Path, report: &mut Report) -> Result<()> {
    for h in &state.hosts {
        lab::agent::start(state, h, shoal_bin, &[])?;
    }
    let addrs: Vec<(String, String)> = state
        .hosts
        .iter()
        .map(|h| (h.name.clone(), h.address.to_string()))
        .collect();
    shoal(
        state,
        "h1",
        &["swarm", "init", "--advertise-addr", &addrs[0].1],
    )?;
    let token = shoal(state, "h1", &["swarm", "join-token", "-q", "worker"])?;
    let manager = format!("{}:2377", addrs[0].1);
    for h in ["h2", "h3"] {
        shoal(
            state,
            h,
            &["swarm", "join", "--token", token.trim(), &manager],
        )?;
    }
    wait("3 nodes Ready", || {
        Ok((shoal(state, "h1", &["node", "ls"])?
            .matches("Ready")
            .count()
            == 3)
            .then_some(()))
    })?;
    shoal(
        state,
        "h1",
        &[
            "service",
            "create",
            "--name",
            "gl",
            "--replicas",
            "1",
            "-p",
            "80:80",
            "shoal/web:1",
        ],
    )?;
    let mut times = Vec::new();
    for i in 0..ROUNDS {
        let (t, node, via) = round(state, &addrs)?;
        println!(
            "bench gossip_lab: round {}: task on {node} answered through {via} {t:.2} s after \
             its container started",
            i + 1
        );
        times.push(t);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    report.figure("start_to_first_request_p50", times[times.len() / 2], "s");
    report.figure("start_to_first_request_max", times[times.len() - 1], "s");
    report.figure("start_to_first_request_min", times[0], "s");
    Ok(())
}
