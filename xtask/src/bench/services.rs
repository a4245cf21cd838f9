//! `cargo xtask bench services`: how long a service takes to converge, shoal against
//! Docker Swarm on the same machine in the same run.
//!
//! A 2-host lab: h1 runs a one-node shoal cluster (`shoal agent`, `swarm init`), h2 a
//! one-node Docker Swarm on its own dockerd (`docker swarm init`; Swarm's scheduler and
//! executor work on this kernel, only its routing mesh does not). On each, the same
//! steps, timed the same way: the command with `--detach`, then `service ls` polled
//! every 100 ms until REPLICAS reads N/N; then `service rm` and a wait until the
//! containers are gone. Three rounds, alternating between the two; medians compared.
//!
//! - `create_30`: `service create --replicas 30 shoal/web:1` to 30/30 running;
//! - `scale_60`: `service scale S=60` to 60/60 running.
//!
//! Targets: shoal / Swarm <= 1.0 for both. The agent is a release build (built here).
use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::Report;
use crate::lab::{self, LabState, Layout};

const LIMIT: Duration = Duration::from_secs(300);

pub(super) fn run() -> Result<ExitCode> {
    let mut report = Report {
        suite: "services",
        ..Default::default()
    };
    let shoal = super::release_shoal("services")?;
    let layout = Layout::new("bsvc")?;
    if !lab::leftovers(&layout).is_empty() {
        lab::down(&layout)?;
    }
    let state = lab::up(&layout, 2)?;
    let result = measure(&state, &shoal, &mut report);
    let down = lab::down(&layout);
    result?;
    down?;
    report.finish()
}

/// Polls `ls` (the output of `service ls`) until the service's REPLICAS is `n/n`.
fn wait_replicas(what: &str, n: u32, mut ls: impl FnMut() -> Result<String>) -> Result<Duration> {
    let start = Instant::now();
    let want = format!("{n}/{n}");
    loop {
        let out = ls().unwrap_or_default();
        if out
            .lines()
            .any(|l| l.contains(" bench ") && l.split_whitespace().any(|w| w == want))
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > LIMIT {
            bail!("{what}: not {want} within {LIMIT:?}; last `service ls`:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn timed(
    what: &str,
    n: u32,
    start: impl FnOnce() -> Result<String>,
    ls: impl FnMut() -> Result<String>,
) -> Result<f64> {
    let t0 = Instant::now();
    start().with_context(|| format!("{what}: starting"))?;
    wait_replicas(what, n, ls)?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Waits until `host` has no container of the service `service` left.
pub(super) fn wait_clean(state: &LabState, host: &str, service: &str) -> Result<()> {
    let t0 = Instant::now();
    let filter = format!("label=com.docker.swarm.service.name={service}");
    loop {
        let left = lab::exec_output(state, host, &["docker", "ps", "-aq", "--filter", &filter])
            .unwrap_or_default();
        if left.is_empty() {
            return Ok(());
        }
        if t0.elapsed() > LIMIT {
            bail!("{host}: the containers of {service} are still there after {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(super) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// One round on one system: (create to 30/30, scale to 60/60), then removal.
fn round(state: &LabState, host: &str, cli: &[&str], create_extra: &[&str]) -> Result<(f64, f64)> {
    let run = |argv: &[&str]| {
        let full: Vec<&str> = cli.iter().chain(argv.iter()).copied().collect();
        lab::exec_output(state, host, &full)
    };
    let ls = || run(&["service", "ls"]);
    let mut create = vec!["service", "create", "--detach"];
    create.extend_from_slice(create_extra);
    create.extend_from_slice(&["--name", "bench", "--replicas", "30", "shoal/web:1"]);
    let what = format!("{} on {host}", cli[0]);
    let created = timed(&format!("{what}: create 30"), 30, || run(&create), ls)?;
    let scaled = timed(
        &format!("{what}: scale to 60"),
        60,
        || run(&["service", "scale", "--detach", "bench=60"]),
        ls,
    )?;
    run(&["service", "rm", "bench"])?;
    wait_clean(state, host, "bench")?;
    Ok((created, scaled))
}

/// Rounds alternate between the two systems, so both see the shared machine's load
/// alike; the medians are compared.
const ROUNDS: usize = 3;

fn measure(state: &LabState, shoal: &std::path::Path, report: &mut Report) -> Result<()> {
    let (h1, h2) = (&state.hosts[0], &state.hosts[1]);
    lab::agent::start(state, h1, shoal, &[])?;
    let addr = h1.address.to_string();
    lab::exec_output(
        state,
        "h1",
        &["shoal", "swarm", "init", "--advertise-addr", &addr],
    )?;
    let addr = h2.address.to_string();
    lab::exec_output(
        state,
        "h2",
        &["docker", "swarm", "init", "--advertise-addr", &addr],
    )?;
    let (mut sc, mut ss, mut wc, mut ws) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let (c, s) = round(state, "h1", &["shoal"], &["--no-resolve-image"])?;
        println!(
            "bench services: round {} shoal create {c:.2} s, scale {s:.2} s",
            i + 1
        );
        sc.push(c);
        ss.push(s);
        // Swarm's tasks get an init process too, as shoal's do (same stop behaviour).
        let (c, s) = round(state, "h2", &["docker"], &["--no-resolve-image", "--init"])?;
        println!(
            "bench services: round {} swarm create {c:.2} s, scale {s:.2} s",
            i + 1
        );
        wc.push(c);
        ws.push(s);
    }
    let _ = lab::exec_output(state, "h2", &["docker", "swarm", "leave", "--force"]);
    let (shoal_create, shoal_scale) = (median(&mut sc), median(&mut ss));
    let (swarm_create, swarm_scale) = (median(&mut wc), median(&mut ws));
    report.figure("shoal_create_30", shoal_create, "s");
    report.figure("swarm_create_30", swarm_create, "s");
    report.figure("shoal_scale_30_to_60", shoal_scale, "s");
    report.figure("swarm_scale_30_to_60", swarm_scale, "s");
    report.ratio(
        "create_30_shoal_vs_swarm",
        shoal_create / swarm_create,
        "<=",
        1.0,
    );
    report.ratio(
        "scale_60_shoal_vs_swarm",
        shoal_scale / swarm_scale,
        "<=",
        1.0,
    );
    Ok(())
}
