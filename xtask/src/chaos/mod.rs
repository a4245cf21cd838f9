//! `cargo xtask chaos [--scenario NAME]...`: scripted faults on a 5-host lab (h1-h3
//! managers, h4-h5 workers) under constant load, each scenario checking afterwards that
//! nothing was lost. See docs/chaos.md.
//!
//! - [`cluster`]: the lab, its services, and the acts the scenarios are made of.
//! - [`load`]: the load every scenario runs under (client to every node's published
//!   port, new connection and keep-alive; a task's container to the other service by name).
//! - [`checks`]: nothing lost (stores, replica counts, every task's endpoint on every node).
//! - [`kill`]: `leader_kill`, `worker_kill`, `restart_all`.
//! - [`promote`]: `promote_kill`, a manager made by `node promote`, then the leader killed.
//! - [`net`]: `partition`, `underlay_cut`.
//! - [`starve`]: `starved`, no fault but busy loops competing with the lab for the CPU.
//! - [`disk`]: `disk_full`, a manager's Raft directory out of space (a follower's,
//!   then the leader's).
//! - [`flood`]: `flood`, the embedded DNS and every node's gossip port flooded.
//!
//! Every figure is printed as `BENCH chaos <scenario>_<figure> <value> <unit>`, every
//! target as a `RATIO` line (the bench format; `target/bench/chaos.json` holds them all).
//! A missed target or a failed check fails the scenario and the command (non-zero).
pub(crate) mod checks;
pub(crate) mod cluster;
mod disk;
mod flood;
mod kill;
pub(crate) mod load;
mod net;
mod promote;
mod starve;

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::bench::Report;
use cluster::{Cluster, SETTLE};
use load::{Fault, LoadSet};

type Scenario = fn(&mut Cluster, &mut Report) -> Result<Vec<Fault>>;

/// The scenarios in the order they run.
const SCENARIOS: &[(&str, Scenario, &str)] = &[
    (
        "leader_kill",
        kill::leader_kill,
        "SIGKILL the leader's agent, 10 times; a new leader accepts writes, the killed one rejoins",
    ),
    (
        "promote_kill",
        promote::promote_kill,
        "promote a worker and SIGKILL the leader's agent right after, 20 times; a new leader accepts writes within 5 s",
    ),
    (
        "worker_kill",
        kill::worker_kill,
        "SIGKILL a worker's agent and its dockerd, then start both again",
    ),
    (
        "restart_all",
        kill::restart_all,
        "restart every agent one by one",
    ),
    (
        "starved",
        starve::starved,
        "no fault, busy loops starving the machine for 5 min; the managers keep their leader, every node stays Ready",
    ),
    (
        "partition",
        net::partition,
        "cut the leader off from the two other managers for 15 s, then heal",
    ),
    (
        "underlay_cut",
        net::underlay_cut,
        "a worker's underlay link down for 30 s, then up",
    ),
    (
        "disk_full",
        disk::disk_full,
        "a follower's Raft directory out of space for 20 s, then the leader's; both come back and catch up",
    ),
    (
        "flood",
        flood::flood,
        "DNS queries (half malformed) and forged, garbage and replayed gossip datagrams flooded for 15 s",
    ),
];

/// Load before the fault and after the checks pass: the paths are seen working on both
/// sides of it.
const LOAD_AROUND: Duration = Duration::from_secs(3);

/// The agents' log filter in a chaos run, unless RUST_LOG says otherwise.
const CHAOS_LOG: &str =
    "info,openraft=warn,shoal_orchestrator::executor=debug,shoal_orchestrator::scheduler=debug";

pub fn run(names: &[String]) -> Result<ExitCode> {
    crate::util::require_root("chaos", "it runs a lab")?;
    let chosen = choose(names)?;
    let shoal = crate::util::shoal_binary()?;
    // The agents' logs are kept (`<target>/chaos/`): with each executor pass and each
    // scheduling decision in them, a task that does not come back can be followed.
    // Set before any thread starts; the lab's agents inherit it.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", CHAOS_LOG);
    }
    let mut report = Report {
        suite: "chaos",
        ..Default::default()
    };
    let mut cluster = Cluster::up(&shoal)?;
    let mut verdicts = Vec::new();
    for (name, scenario, what) in chosen {
        println!("chaos: {name}: {what}");
        let before = report.missed.len();
        if let Err(e) = run_one(&mut cluster, name, scenario, &mut report) {
            report.missed.push(format!("{name}: {e:#}"));
        }
        let failed: Vec<String> = report.missed[before..].to_vec();
        let verdict = if failed.is_empty() { "PASS" } else { "FAIL" };
        println!("chaos: {name}: {verdict}");
        for f in &failed {
            println!("chaos: {name}: failed: {f}");
        }
        verdicts.push(format!("{name} {verdict}"));
    }
    drop(cluster);
    println!("chaos: {}", verdicts.join(", "));
    report.finish()
}

fn choose(names: &[String]) -> Result<Vec<(&'static str, Scenario, &'static str)>> {
    if names.is_empty() {
        return Ok(SCENARIOS.to_vec());
    }
    let mut out = Vec::new();
    for n in names {
        let Some(s) = SCENARIOS.iter().find(|(name, _, _)| name == n) else {
            bail!("unknown scenario {n:?}; scenarios: {}", built());
        };
        if !out.iter().any(|(name, _, _)| name == n) {
            out.push(*s);
        }
    }
    Ok(out)
}

fn built() -> String {
    SCENARIOS
        .iter()
        .map(|(n, _, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One scenario under load, then the checks, then the load's figures.
fn run_one(
    cluster: &mut Cluster,
    name: &str,
    scenario: Scenario,
    report: &mut Report,
) -> Result<()> {
    // Each scenario starts from a settled lab, whatever the one before left.
    checks::nothing_lost(cluster, SETTLE)
        .map_err(|e| anyhow::anyhow!("the lab is not settled before the scenario: {e:#}"))?;
    let loads = LoadSet::start(cluster, name)?;
    std::thread::sleep(LOAD_AROUND);
    let began = Instant::now();
    let faults = scenario(cluster, report);
    let ended = Instant::now();
    if let Err(e) = &faults {
        println!("chaos: {name}: the scenario failed: {e:#}");
        if let Ok(leader) = cluster.leader() {
            for service in [cluster::WEB, cluster::BACK] {
                if let Ok(ps) = cluster.shoal(&leader, &["service", "ps", service]) {
                    println!("chaos: {name}: `service ps {service}` on {leader}:\n{ps}");
                }
            }
        }
    }
    // Whatever the scenario saw, the lab must come back on its own.
    let converged = checks::nothing_lost(cluster, SETTLE);
    if converged.is_ok() {
        std::thread::sleep(LOAD_AROUND);
    }
    let (counts, container) = loads.stop(cluster);
    if let Err(e) = container {
        report
            .missed
            .push(format!("{name}: the container's load: {e:#}"));
    }
    let no_faults = Vec::new();
    let fault_list = faults.as_ref().unwrap_or(&no_faults);
    let mut up_failed = 0;
    let mut last_failure: Option<Instant> = None;
    for c in &counts {
        let prefix = format!("{name}_{}_{}", c.node, c.path);
        report.figure(&format!("{prefix}_sent"), c.sent as f64, "requests");
        report.figure(&format!("{prefix}_failed"), c.failed as f64, "requests");
        let through_up = c.failed_through_up_nodes(fault_list);
        up_failed += through_up;
        if c.failed > 0 {
            println!(
                "chaos: {name}: {} {}: {} failed ({through_up} while its node was up); first: {:?}",
                c.node, c.path, c.failed, c.failures
            );
        }
        last_failure = last_failure.max(c.last_failure());
    }
    // Time to heal: from the fault's start to the last failed request of any path (0
    // when none failed).
    let heal = last_failure
        .filter(|t| *t >= began)
        .map(|t| t.duration_since(began).as_secs_f64())
        .unwrap_or(0.0);
    report.figure(&format!("{name}_heal"), heal, "s");
    report.figure(
        &format!("{name}_fault"),
        ended.duration_since(began).as_secs_f64(),
        "s",
    );
    report.ratio(
        &format!("{name}_failed_through_up_nodes"),
        up_failed as f64,
        "<=",
        0.0,
    );
    faults?;
    let converged = converged?;
    report.figure(&format!("{name}_converge"), converged.as_secs_f64(), "s");
    Ok(())
}
