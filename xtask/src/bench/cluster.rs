//! `cargo xtask bench cluster`: manager failover and the store's write latency, measured
//! in-process by `control/cluster/examples/failover_bench.rs` (release build): three
//! managers on 127.0.0.1 with real mutual TLS and the default timings the agent ships
//! (Raft heartbeats every 500 ms, election timeout 1–2 s). This part has no lab: its
//! figures are the cluster core's, without the CLI, the agent or network namespaces.
//!
//! - `failover_median` / `failover_max`: from the abrupt stop of the leader (its tasks
//!   aborted and its Raft member stopped, the in-process stand-in for SIGKILL) to a new
//!   leader having applied a write, over several rounds (the stopped manager is resumed
//!   between rounds).
//! - `extra_leader_changes`: leader changes seen by any one manager beyond the one each
//!   stop forces, from the stop until the resumed manager is back and the group settled
//!   (flapping).
//! - `write_{leader,follower}_{p50,p99}`: 500 sequential one-label updates on the leader,
//!   then through a follower (forwarded to the leader).
//!
//! - then, in a 3-host lab with real dockerd and agents (`failover_lab.rs`):
//!   `swarm_failover_median` and `shoal_failover_median`, a write accepted by a new
//!   leader after the leader's process is SIGKILLed, the same docker CLI commands
//!   driving both. That is the baseline (measured here, in this run): the target is
//!   half of Swarm's time, without flapping.
use std::process::{ExitCode, Stdio};

use anyhow::{bail, Context, Result};

use super::Report;

pub(super) fn run() -> Result<ExitCode> {
    let mut report = Report {
        suite: "cluster",
        ..Default::default()
    };
    println!("bench cluster: building and running the in-process failover benchmark (release)");
    let out = crate::util::cargo()
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "shoal-cluster",
            "--example",
            "failover_bench",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running the failover benchmark")?;
    if !out.status.success() {
        bail!("the failover benchmark failed");
    }
    let mut median = None;
    let mut extra = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let ["BENCH", "cluster", name, value, unit] = parts.as_slice() {
            let value: f64 = value
                .parse()
                .with_context(|| format!("figure in {line:?}"))?;
            report.figure(name, value, unit);
            match *name {
                "failover_median" => median = Some(value),
                "extra_leader_changes" => extra = Some(value),
                _ => {}
            }
        }
    }
    let (Some(_), Some(extra)) = (median, extra) else {
        bail!("the failover benchmark printed no failover figures");
    };
    report.ratio("extra_leader_changes", extra, "<=", 0.0);
    super::failover_lab::measure(&mut report)?;
    report.finish()
}
