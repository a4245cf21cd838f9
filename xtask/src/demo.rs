//! `cargo xtask demo`: README's main job. Sets up what is missing, builds, brings up a
//! 3-host lab and shows, honestly, what shoal runs today:
//! - every host has its own dockerd with the lab images (one image ID everywhere);
//! - a `shoal/web:1` container answers on each host, reached from the client namespace;
//! - the shoal agent runs on each host with the underlay XDP program attached, and its
//!   counters show the client's traffic.
//!
//! The lab stays up afterwards; `cargo xtask lab down` removes it.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{
    lab::{self, LabState, Layout},
    setup,
    util::shoal_binary,
};

/// Port the demo's containers are published on (through each host's docker-proxy).
pub const DEMO_PORT: u16 = 8080;

pub fn run() -> Result<()> {
    setup::ensure(false)?;
    println!("demo: building shoal");
    let status = crate::util::cargo().arg("build").status()?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let layout = Layout::new(lab::layout::DEFAULT_PREFIX)?;
    if !lab::leftovers(&layout).is_empty() {
        println!("demo: taking down the previous demo lab");
        lab::down(&layout)?;
    }
    let state = lab::up(&layout, 3)?;
    print!("{}", lab::describe(&state));

    let shoal = shoal_binary()?;
    for h in &state.hosts {
        let status: serde_json::Value =
            serde_json::from_str(&lab::agent::start(&state, h, &shoal, &[])?)?;
        println!(
            "demo: {}: shoal agent up, underlay XDP attached to {} in {} mode",
            h.name, status["underlay_interface"], status["xdp_mode"]
        );
    }
    form_cluster(&state)?;
    for h in &state.hosts {
        let id = capture(
            &state,
            &h.name,
            &["docker", "image", "inspect", "-f", "{{.Id}}", "shoal/web:1"],
        )?;
        let hostname = capture(
            &state,
            &h.name,
            &["docker", "run", "--rm", "shoal/web:1", "hostname"],
        )?;
        println!(
            "demo: {}: shoal/web:1 is {id}; `docker run --rm shoal/web:1 hostname` -> {hostname}",
            h.name
        );
        run_in(
            &state,
            &h.name,
            &["docker", "network", "create", "--driver", "bridge", "demo"],
        )?;
        let port = format!("{DEMO_PORT}:80");
        run_in(
            &state,
            &h.name,
            &[
                "docker",
                "run",
                "-d",
                "--init",
                "--name",
                "web",
                "--network",
                "demo",
                "-p",
                &port,
                "shoal/web:1",
            ],
        )?;
    }
    for h in &state.hosts {
        let url = format!("http://{}:{DEMO_PORT}/", h.address);
        let answer = wait_http(&state, &url)?;
        println!("demo: client -> {url} answered: {answer}");
    }
    for h in &state.hosts {
        let stats = Command::new(&shoal)
            .args(["dataplane", "stats", "--pin-dir"])
            .arg(&h.pin_dir)
            .output()?;
        println!(
            "demo: {} underlay XDP counters: {}",
            h.name,
            String::from_utf8_lossy(&stats.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!(
        "\ndemo: the lab stays up. Try:\n  cargo xtask lab exec h1 -- shoal node ls\n  cargo xtask lab exec h1 -- docker ps\n  cargo xtask lab client -- curl -s http://{}:{DEMO_PORT}/\n  cargo xtask lab down\n\
         Not there yet: services (`shoal service create`), the routing mesh and service VIPs,\n\
         gossip. The overlay and the embedded DNS run when given declared state (see README).\n\
         Each container above is published by its own host's docker-proxy, which hides the\n\
         client's address (client= shows the docker bridge gateway): that is what the\n\
         routing mesh will fix.",
        state.hosts[0].address
    );
    Ok(())
}

/// `shoal swarm init` on h1, the other hosts join as workers, then `node ls`.
fn form_cluster(state: &LabState) -> Result<()> {
    let h1 = &state.hosts[0];
    let manager = format!("{}:2377", h1.address);
    let init = capture(
        state,
        &h1.name,
        &[
            "shoal",
            "swarm",
            "init",
            "--advertise-addr",
            &h1.address.to_string(),
        ],
    )?;
    println!("demo: h1$ shoal swarm init\n{init}");
    let token = capture(
        state,
        &h1.name,
        &["shoal", "swarm", "join-token", "-q", "worker"],
    )?;
    for h in &state.hosts[1..] {
        let joined = capture(
            state,
            &h.name,
            &["shoal", "swarm", "join", "--token", &token, &manager],
        )?;
        println!("demo: {}$ shoal swarm join ... {manager}\n{joined}", h.name);
    }
    // Joins are recorded at once; wait (bounded) until every node reports Ready.
    let start = Instant::now();
    loop {
        let nodes = capture(state, &h1.name, &["shoal", "node", "ls"])?;
        if nodes.matches("Ready").count() == state.hosts.len()
            || start.elapsed() > Duration::from_secs(30)
        {
            println!("demo: h1$ shoal node ls\n{nodes}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn run_in(state: &LabState, host: &str, argv: &[&str]) -> Result<()> {
    capture(state, host, argv).map(|_| ())
}

fn capture(state: &LabState, host: &str, argv: &[&str]) -> Result<String> {
    lab::exec_output(state, host, argv)
}

/// Fetches `url` from the client namespace until it answers (a container just started
/// may need a moment), for at most 30 s.
fn wait_http(state: &LabState, url: &str) -> Result<String> {
    let start = Instant::now();
    loop {
        let argv = ["curl", "-sS", "--max-time", "5", url].map(String::from);
        let out = lab::client_command(state, &argv)?
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "{url} did not answer the client within 30 s: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
