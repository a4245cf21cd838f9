//! `cargo xtask bench services`: how long a service takes to converge, shoal against
//! Docker Swarm on the same machine in the same run.
//!
//! A 2-host lab: h1 runs a one-node shoal cluster (`shoal agent`, `swarm init`), h2 a
//! one-node Docker Swarm on its own dockerd (`docker swarm init`; Swarm's scheduler and
//! executor work on this kernel, only its routing mesh does not). On each, the same
//! steps, timed the same way: the command with `--detach`, then `service ls` polled
//! every 100 ms until REPLICAS reads N/N.
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
use crate::{
    lab::{self, LabState, Layout},
    util::{cargo, target_dir},
};

const LIMIT: Duration = Duration::from_secs(300);

pub(super) fn run() -> Result<ExitCode> {
    let mut report = Report {
        suite: "services",
        ..Default::default()
    };
    let shoal = release_shoal()?;
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

/// Builds the agent in release mode (Docker's daemon is an optimized build too) and
/// returns its path.
fn release_shoal() -> Result<std::path::PathBuf> {
    println!("bench services: building shoal (release)");
    let status = cargo()
        .args(["build", "--release", "-p", "shoal-control", "--bin", "shoal"])
        .status()
        .context("running cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release of shoal failed");
    }
    Ok(target_dir().join("release/shoal"))
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

fn measure(state: &LabState, shoal: &std::path::Path, report: &mut Report) -> Result<()> {
    let h1 = &state.hosts[0];
    let h2 = &state.hosts[1];
    let run = |host: &str, argv: &[&str]| lab::exec_output(state, host, argv);

    // shoal, one node.
    lab::agent::start(state, h1, shoal, &[])?;
    let addr = h1.address.to_string();
    run("h1", &["shoal", "swarm", "init", "--advertise-addr", &addr])?;
    let shoal_ls = || run("h1", &["shoal", "service", "ls"]);
    let shoal_create = timed(
        "shoal create 30",
        30,
        || {
            run(
                "h1",
                &[
                    "shoal",
                    "service",
                    "create",
                    "--detach",
                    "--name",
                    "bench",
                    "--replicas",
                    "30",
                    "shoal/web:1",
                ],
            )
        },
        shoal_ls,
    )?;
    let shoal_scale = timed(
        "shoal scale 60",
        60,
        || run("h1", &["shoal", "service", "scale", "--detach", "bench=60"]),
        shoal_ls,
    )?;
    run("h1", &["shoal", "service", "rm", "bench"])?;

    // Docker Swarm, one node, the same steps.
    let addr = h2.address.to_string();
    run(
        "h2",
        &["docker", "swarm", "init", "--advertise-addr", &addr],
    )?;
    let swarm_ls = || run("h2", &["docker", "service", "ls"]);
    let swarm_create = timed(
        "swarm create 30",
        30,
        || {
            run(
                "h2",
                &[
                    "docker",
                    "service",
                    "create",
                    "--detach",
                    "--no-resolve-image",
                    "--name",
                    "bench",
                    "--replicas",
                    "30",
                    "shoal/web:1",
                ],
            )
        },
        swarm_ls,
    )?;
    let swarm_scale = timed(
        "swarm scale 60",
        60,
        || {
            run(
                "h2",
                &["docker", "service", "scale", "--detach", "bench=60"],
            )
        },
        swarm_ls,
    )?;
    let _ = run("h2", &["docker", "service", "rm", "bench"]);
    let _ = run("h2", &["docker", "swarm", "leave", "--force"]);

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
