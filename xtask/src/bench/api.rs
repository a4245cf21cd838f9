//! `cargo xtask bench api`: the docker CLI against shoal's Engine API and against a
//! Docker Swarm manager, the same command on the same machine in the same run.
//!
//! A 2-host lab, as `bench services`: h1 runs a one-node shoal cluster (release agent),
//! h2 a one-node Docker Swarm on its own dockerd. Each gets the same 50 services (`service
//! create --detach --replicas 0 shoal/web:1`: no task, so only the API's own work is
//! timed). Then, alternating between the two, `docker -H unix://SOCKET service ls` is run
//! and timed whole (process start to exit, as a user sees it), 20 times each; medians
//! compared.
//!
//! - `shoal_service_ls_ms`, `swarm_service_ls_ms`: median wall time of one `docker
//!   service ls` listing 50 services;
//!
//! Target: shoal / Swarm <= 1.0.
use std::{
    path::Path,
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use super::{services::median, Report};
use crate::lab::{self, Layout};

const SERVICES: usize = 50;
const RUNS: usize = 20;
/// The docker client both are driven with.
const DOCKER: &str = "/usr/local/bin/docker";

pub(super) fn run() -> Result<ExitCode> {
    let mut report = Report {
        suite: "api",
        ..Default::default()
    };
    let shoal = super::release_shoal("api")?;
    let layout = Layout::new("bapi")?;
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

/// `docker -H unix://SOCKET ARGS` from the root namespace with an empty client config;
/// its output, or why it failed.
pub(super) fn docker(socket: &Path, config: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(DOCKER)
        .env("DOCKER_CONFIG", config)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .output()
        .with_context(|| format!("running {DOCKER}"))?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn measure(state: &lab::LabState, shoal: &Path, report: &mut Report) -> Result<()> {
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
    let config = std::env::temp_dir().join(format!("{}-docker-config", state.prefix));
    std::fs::create_dir_all(&config)?;
    let shoal_socket = lab::agent::engine_api_socket(h1);
    let swarm_socket = Path::new(h2.docker_host.trim_start_matches("unix://")).to_owned();
    let systems = [("shoal", &shoal_socket), ("swarm", &swarm_socket)];
    for (name, socket) in systems {
        for i in 0..SERVICES {
            let service = format!("s{i}");
            docker(
                socket,
                &config,
                &[
                    "service",
                    "create",
                    "--detach",
                    "--no-resolve-image",
                    "--replicas",
                    "0",
                    "--name",
                    &service,
                    "shoal/web:1",
                ],
            )
            .with_context(|| format!("{name}: creating {service}"))?;
        }
        let listed = docker(socket, &config, &["service", "ls", "-q"])?;
        if listed.lines().count() != SERVICES {
            bail!(
                "{name}: service ls lists {} services, not {SERVICES}",
                listed.lines().count()
            );
        }
    }
    let (mut shoal_ms, mut swarm_ms) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        for (name, socket) in systems {
            let t0 = Instant::now();
            docker(socket, &config, &["service", "ls"])?;
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            match name {
                "shoal" => shoal_ms.push(ms),
                _ => swarm_ms.push(ms),
            }
        }
    }
    let _ = lab::exec_output(state, "h2", &["docker", "swarm", "leave", "--force"]);
    let _ = std::fs::remove_dir_all(&config);
    let (shoal, swarm) = (median(&mut shoal_ms), median(&mut swarm_ms));
    report.figure("shoal_service_ls_ms", shoal, "ms");
    report.figure("swarm_service_ls_ms", swarm, "ms");
    report.ratio("service_ls_50_shoal_vs_swarm", shoal / swarm, "<=", 1.0);
    Ok(())
}
