//! `cargo xtask bench pull`: how long a service whose image no node has takes to run,
//! shoal against Docker Swarm, both pulling from the lab registry in the same run.
//!
//! A 6-host lab without preloaded images (`lab up --no-preload`): h1 to h3 form a shoal
//! cluster (`shoal agent`, release build; `swarm init` on h1, h2 and h3 join), h4 to h6
//! a Docker Swarm on their own dockerds (`docker swarm init` on h4, h5 and h6 join). On
//! each, the same steps, timed the same way: `service create --detach --replicas 10
//! <registry>/shoal/web:1` (the manager pins the tag to its digest, each node pulls it),
//! then `service ls` polled every 100 ms until REPLICAS reads 10/10; then `service rm`,
//! a wait until the containers are gone, and the image removed from the three nodes
//! (`docker image prune -a`), so every round starts with nodes that lack it. Three
//! rounds, alternating between the two; medians compared.
//!
//! Target: shoal / Swarm <= 1.0 (`RATIO pull shoal_vs_swarm_create`).
use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{services::median, Report};
use crate::lab::{self, LabState, Layout};

const LIMIT: Duration = Duration::from_secs(300);
const ROUNDS: usize = 3;
const REPLICAS: u32 = 10;
const SERVICE: &str = "pull";

pub(super) fn run() -> Result<ExitCode> {
    let mut report = Report {
        suite: "pull",
        ..Default::default()
    };
    let shoal = super::release_shoal("pull")?;
    let layout = Layout::new("bpull")?;
    if !lab::leftovers(&layout).is_empty() {
        lab::down(&layout)?;
    }
    let state = lab::up_with(
        &layout,
        lab::UpOptions {
            hosts: 6,
            preload: false,
        },
    )?;
    let result = measure(&state, &shoal, &mut report);
    let down = lab::down(&layout);
    result?;
    down?;
    report.finish()
}

/// One system under test: its CLI and its three nodes (the first is the manager).
struct System<'a> {
    name: &'static str,
    cli: &'static str,
    hosts: [&'a str; 3],
}

fn exec(state: &LabState, host: &str, argv: &[&str]) -> Result<String> {
    lab::exec_output(state, host, argv)
}

/// `swarm init` on the first host and `swarm join` of the two others (shoal's CLI and
/// Docker's take the same arguments); waits until the manager lists 3 Ready nodes.
fn form(state: &LabState, sys: &System) -> Result<()> {
    let manager = state.host(sys.hosts[0])?.address.to_string();
    exec(
        state,
        sys.hosts[0],
        &[sys.cli, "swarm", "init", "--advertise-addr", &manager],
    )?;
    let token = exec(
        state,
        sys.hosts[0],
        &[sys.cli, "swarm", "join-token", "-q", "worker"],
    )?;
    let remote = format!("{manager}:2377");
    for h in &sys.hosts[1..] {
        let addr = state.host(h)?.address.to_string();
        exec(
            state,
            h,
            &[
                sys.cli,
                "swarm",
                "join",
                "--token",
                token.trim(),
                "--advertise-addr",
                &addr,
                &remote,
            ],
        )?;
    }
    let start = Instant::now();
    loop {
        let nodes = exec(state, sys.hosts[0], &[sys.cli, "node", "ls"]).unwrap_or_default();
        if nodes.matches("Ready").count() == 3 {
            return Ok(());
        }
        if start.elapsed() > LIMIT {
            bail!("{}: not 3 Ready nodes within {LIMIT:?}:\n{nodes}", sys.name);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Fails unless none of the system's nodes has an image.
fn check_no_images(state: &LabState, sys: &System) -> Result<()> {
    for h in sys.hosts {
        let images = exec(state, h, &["docker", "images", "-q"])?;
        if !images.is_empty() {
            bail!("{h} has images before the {} round: {images}", sys.name);
        }
    }
    Ok(())
}

/// One round: create to 10/10 from nodes without the image (timed), then removal of
/// the service, its containers and the image.
fn round(state: &LabState, sys: &System, image: &str, extra: &[&str]) -> Result<f64> {
    check_no_images(state, sys)?;
    let manager = sys.hosts[0];
    let replicas = REPLICAS.to_string();
    let mut create = vec![sys.cli, "service", "create", "--detach"];
    create.extend_from_slice(extra);
    create.extend_from_slice(&["--name", SERVICE, "--replicas", &replicas, image]);
    let want = format!("{REPLICAS}/{REPLICAS}");
    let t0 = Instant::now();
    exec(state, manager, &create).with_context(|| format!("{}: service create", sys.name))?;
    loop {
        let ls = exec(state, manager, &[sys.cli, "service", "ls"]).unwrap_or_default();
        let converged = ls.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.contains(&SERVICE) && words.contains(&want.as_str())
        });
        if converged {
            break;
        }
        if t0.elapsed() > LIMIT {
            bail!(
                "{}: not {want} within {LIMIT:?}; last `service ls`:\n{ls}",
                sys.name
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = t0.elapsed().as_secs_f64();
    exec(state, manager, &[sys.cli, "service", "rm", SERVICE])?;
    for h in sys.hosts {
        wait_clean(state, h)?;
        exec(state, h, &["docker", "image", "prune", "-a", "-f"])?;
    }
    Ok(took)
}

/// Waits until `host` has no container of the benchmark's service left.
fn wait_clean(state: &LabState, host: &str) -> Result<()> {
    let t0 = Instant::now();
    let filter = format!("label=com.docker.swarm.service.name={SERVICE}");
    loop {
        let left =
            exec(state, host, &["docker", "ps", "-aq", "--filter", &filter]).unwrap_or_default();
        if left.is_empty() {
            return Ok(());
        }
        if t0.elapsed() > LIMIT {
            bail!("{host}: the benchmark's containers are still there after {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn measure(state: &LabState, shoal: &std::path::Path, report: &mut Report) -> Result<()> {
    let shoal_sys = System {
        name: "shoal",
        cli: "shoal",
        hosts: ["h1", "h2", "h3"],
    };
    let swarm_sys = System {
        name: "swarm",
        cli: "docker",
        hosts: ["h4", "h5", "h6"],
    };
    for h in shoal_sys.hosts {
        lab::agent::start(state, state.host(h)?, shoal, &[])?;
    }
    form(state, &shoal_sys)?;
    form(state, &swarm_sys)?;
    let image = format!("{}/shoal/web:1", state.registry);
    let (mut shoal_times, mut swarm_times) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let s = round(state, &shoal_sys, &image, &[])?;
        println!("bench pull: round {} shoal {s:.2} s", i + 1);
        shoal_times.push(s);
        // Swarm's tasks get an init process too, as shoal's do (same stop behaviour).
        let w = round(state, &swarm_sys, &image, &["--init"])?;
        println!("bench pull: round {} swarm {w:.2} s", i + 1);
        swarm_times.push(w);
    }
    for h in swarm_sys.hosts {
        let _ = exec(state, h, &["docker", "swarm", "leave", "--force"]);
    }
    let (s, w) = (median(&mut shoal_times), median(&mut swarm_times));
    report.figure("shoal_create_10_pulled_3_nodes", s, "s");
    report.figure("swarm_create_10_pulled_3_nodes", w, "s");
    report.ratio("shoal_vs_swarm_create", s / w, "<=", 1.0);
    Ok(())
}
