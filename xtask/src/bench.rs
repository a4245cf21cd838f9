//! `cargo xtask bench SUITE`: benchmarks that compare shoal with a baseline in the same
//! run. Each figure is printed as `BENCH <suite> <name> <value> <unit>`, each comparison
//! as `RATIO <suite> <name> <value> <op> <target>`, and the run writes
//! `target/bench/<suite>.json`. A missed target is reported (and the command exits
//! non-zero), never hidden.
//!
//! Suites: `overlay` (here), `dns` (`bench/dns.rs`), `cluster` (`bench/cluster.rs`),
//! `gossip` (`bench/gossip.rs`), `gossip_lab` (`bench/gossip_lab.rs`), `vip` (`bench/vip.rs`),
//! `lb` (`bench/lb.rs`), `services` (`bench/services.rs`), `update` (`bench/update.rs`), `pull`
//! (`bench/pull.rs`) and `encrypted` (`bench/encrypted.rs`).
mod api;
mod cluster;
mod dns;
mod encrypted;
mod failover_lab;
mod gossip;
mod gossip_lab;
mod lb;
mod mesh_load;
mod pull;
mod services;
mod update;
mod vip;

use std::{
    fs,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    lab::{self, LabState, Layout},
    util::{cargo, shoal_binary, target_dir},
};

/// Builds the agent in release mode and returns its path: a suite that measures speed
/// measures the build users run (Docker's daemon, the baselines' servers and the
/// kernel are optimized builds too). Says so under `suite`'s name.
pub(crate) fn release_shoal(suite: &str) -> Result<std::path::PathBuf> {
    println!("bench {suite}: building shoal (release)");
    let status = cargo()
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "shoal",
            "--bin",
            "shoal",
        ])
        .status()
        .context("running cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release of shoal failed");
    }
    Ok(target_dir().join("release/shoal"))
}

/// A suite's figures and targets (also `cargo xtask chaos`'s report).
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) suite: &'static str,
    pub(crate) figures: Vec<Value>,
    pub(crate) ratios: Vec<Value>,
    /// Targets missed and checks failed, each in one line.
    pub(crate) missed: Vec<String>,
}

impl Report {
    pub(crate) fn figure(&mut self, name: &str, value: f64, unit: &str) {
        println!("BENCH {} {name} {value:.3} {unit}", self.suite);
        self.figures
            .push(json!({"name": name, "value": value, "unit": unit}));
    }

    pub(crate) fn ratio(&mut self, name: &str, value: f64, op: &str, target: f64) {
        println!("RATIO {} {name} {value:.3} {op} {target}", self.suite);
        let met = match op {
            ">=" => value >= target,
            "<=" => value <= target,
            _ => false,
        };
        if !met {
            self.missed.push(format!("{name} {value:.3} {op} {target}"));
        }
        self.ratios
            .push(json!({"name": name, "value": value, "op": op, "target": target, "met": met}));
    }

    pub(crate) fn finish(self) -> Result<ExitCode> {
        let dir = target_dir().join("bench");
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.json", self.suite));
        fs::write(
            &path,
            serde_json::to_vec_pretty(&json!({
                "suite": self.suite,
                "figures": self.figures,
                "ratios": self.ratios,
                "missed": self.missed,
            }))?,
        )?;
        println!("bench: wrote {}", path.display());
        if self.missed.is_empty() {
            Ok(ExitCode::SUCCESS)
        } else {
            println!("bench: missed targets: {}", self.missed.join("; "));
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn run(suite: &str) -> Result<ExitCode> {
    crate::util::require_root("bench", "it runs labs and eBPF programs")?;
    match suite {
        "overlay" => overlay(),
        "dns" => dns::run(),
        "cluster" => cluster::run(),
        "gossip" => gossip::run(),
        "gossip_lab" => gossip_lab::run(),
        "vip" => vip::run(),
        "lb" => lb::run(),
        "services" => services::run(),
        "pull" => pull::run(),
        "update" => update::run(),
        "api" => api::run(),
        "encrypted" => encrypted::run(),
        other => bail!(
            "unknown benchmark suite {other:?}; suites: overlay, dns, cluster, gossip, gossip_lab, vip, services, update, lb, pull, api, encrypted"
        ),
    }
}

fn overlay() -> Result<ExitCode> {
    let mut report = Report {
        suite: "overlay",
        ..Default::default()
    };
    reconcile_cost(&mut report)?;
    throughput(&mut report)?;
    report.finish()
}

/// Reconcile cost, measured by the dataplane's own example in throwaway namespaces.
fn reconcile_cost(report: &mut Report) -> Result<()> {
    let out = cargo()
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "shoal-dataplane",
            "--example",
            "overlay_reconcile_bench",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running the reconcile benchmark")?;
    if !out.status.success() {
        bail!("the reconcile benchmark failed");
    }
    let mut change_10k = None;
    let mut kernel_10k = None;
    let mut kernel_100 = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let ["BENCH", "overlay", name, value, unit] = parts.as_slice() {
            let value: f64 = value
                .parse()
                .with_context(|| format!("figure in {line:?}"))?;
            report.figure(name, value, unit);
            match *name {
                "change_1_of_10000" => change_10k = Some(value),
                "change_1_of_10000_kernel" => kernel_10k = Some(value),
                "change_1_of_100_kernel" => kernel_100 = Some(value),
                _ => {}
            }
        }
    }
    let (Some(whole), Some(big), Some(small)) = (change_10k, kernel_10k, kernel_100) else {
        bail!("the reconcile benchmark printed no change figures");
    };
    // "A few milliseconds and does not grow with the table": the whole apply within a
    // few ms, and the kernel work of a one-endpoint change the same at 10,000 as at 100.
    // (Validating and diffing the whole declared state is linear in memory; the kernel
    // work is what must not grow.)
    report.ratio("change_1_of_10000_ms", whole, "<=", 5.0);
    report.ratio(
        "change_kernel_cost_10000_vs_100",
        big / small.max(1e-3),
        "<=",
        2.0,
    );
    Ok(())
}

/// iperf3 between two containers over the overlay, against the same between the two
/// hosts over the underlay, in one lab.
fn throughput(report: &mut Report) -> Result<()> {
    let shoal = shoal_binary()?;
    let layout = Layout::new("bench")?;
    if !lab::leftovers(&layout).is_empty() {
        lab::down(&layout)?;
    }
    let state = lab::up(&layout, 2)?;
    let result = throughput_in(&state, &shoal, report);
    let down = lab::down(&layout);
    result?;
    down
}

fn throughput_in(state: &LabState, shoal: &std::path::Path, report: &mut Report) -> Result<()> {
    let addr = |i: usize| format!("10.0.9.{}", 10 + i);
    for (i, h) in state.hosts.iter().enumerate() {
        let i = i + 1;
        docker(
            state,
            &h.name,
            &[
                "run",
                "-d",
                "--init",
                "--network",
                "none",
                "--name",
                &format!("a{i}"),
                "shoal/web:1",
            ],
        )?;
        let other = 3 - i;
        let declared = json!({
            "networks": [{"id": "web", "vni": 4097, "subnet": "10.0.9.0/24", "gateway": "10.0.9.1"}],
            "local_endpoints": [{"network": "web", "container": format!("a{i}"), "ip": addr(i)}],
            "remote_endpoints": [{"network": "web", "ip": addr(other), "vtep": state.hosts[other - 1].address.to_string()}],
        });
        let file = h.run_dir.join("declared-overlay.json");
        fs::write(&file, serde_json::to_vec(&declared)?)?;
        lab::agent::start(
            state,
            h,
            shoal,
            &["--declared-state".into(), file.display().to_string()],
        )?;
    }
    let pid = |i: usize| -> Result<String> {
        docker(
            state,
            &state.hosts[i - 1].name,
            &["inspect", "-f", "{{.State.Pid}}", &format!("a{i}")],
        )
    };
    let (p1, p2) = (pid(1)?, pid(2)?);
    // Wait for the overlay path, with a bound.
    let start = Instant::now();
    while !Command::new("nsenter")
        .args(["-t", &p1, "-n", "ping", "-c", "1", "-W", "1", &addr(2)])
        .stdout(Stdio::null())
        .status()?
        .success()
    {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("containers did not reach each other over the overlay within 60 s");
        }
    }
    let mut overlay = Vec::new();
    let mut underlay = Vec::new();
    let h1 = state.hosts[0].netns.clone();
    let h2 = state.hosts[1].netns.clone();
    let h2_addr = state.hosts[1].address.to_string();
    for _ in 0..3 {
        overlay.push(iperf(
            &["nsenter", "-t", &p2, "-n"],
            &["nsenter", "-t", &p1, "-n"],
            &addr(2),
        )?);
        underlay.push(iperf(
            &["ip", "netns", "exec", &h2],
            &["ip", "netns", "exec", &h1],
            &h2_addr,
        )?);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (o, u) = (med(&mut overlay), med(&mut underlay));
    report.figure("container_to_container_overlay", o / 1e9, "Gbit/s");
    report.figure("host_to_host_underlay", u / 1e9, "Gbit/s");
    report.ratio("overlay_vs_underlay_throughput", o / u, ">=", 0.9);
    Ok(())
}

fn docker(state: &LabState, host: &str, args: &[&str]) -> Result<String> {
    let mut argv = vec!["docker"];
    argv.extend_from_slice(args);
    lab::exec_output(state, host, &argv)
}

/// One 5-second iperf3 TCP run; returns received bits per second.
fn iperf(server_prefix: &[&str], client_prefix: &[&str], server_addr: &str) -> Result<f64> {
    iperf_streams(server_prefix, client_prefix, server_addr, 1)
}

/// [`iperf`] with `streams` parallel TCP streams (`-P`); their sum.
fn iperf_streams(
    server_prefix: &[&str],
    client_prefix: &[&str],
    server_addr: &str,
    streams: u32,
) -> Result<f64> {
    let streams = streams.to_string();
    let mut server = Command::new(server_prefix[0])
        .args(&server_prefix[1..])
        .args(["iperf3", "-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    let mut result = None;
    let mut last_error = String::new();
    let start = Instant::now();
    // The server needs a moment to listen: retry the client, bounded.
    while start.elapsed() < Duration::from_secs(20) {
        let out = Command::new(client_prefix[0])
            .args(&client_prefix[1..])
            .args(["iperf3", "-c", server_addr, "-p", "5201", "-t", "5", "-J"])
            .args(["-P", &streams])
            .output()
            .context("running iperf3 -c")?;
        // iperf3 3.12 with -J may exit 0 with {"error": "unable to connect ..."} while
        // the server is still starting: only a figure counts as success.
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        result = v["end"]["sum_received"]["bits_per_second"].as_f64();
        if result.is_some() {
            break;
        }
        last_error = format!(
            "{} {}",
            v["error"].as_str().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = server.kill();
    let _ = server.wait();
    result.with_context(|| format!("iperf3 to {server_addr} gave no result: {last_error}"))
}
