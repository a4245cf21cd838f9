//! `cargo xtask soak [--minutes N]`: churn for N minutes (default 60) on the chaos lab
//! (5 hosts, h1-h3 managers; [`crate::chaos::cluster`]) under the chaos load
//! ([`crate::chaos::load`]), with idle long-lived connections held all along
//! ([`idle`]); then every idle connection must answer from the same task, the steady
//! load must have lost no request, each agent's RSS and the data plane's fill must be
//! flat, and nothing may have leaked ([`sample`]). See docs/soak.md.
//!
//! Services beside the chaos lab's `web` (global, published 8080/8081) and `back`
//! (2 replicas, the container load's target):
//! - `idle`: 2 replicas placed on managers (never drained), never scaled or updated,
//!   its keep-alive server published on 8083: the idle connections' target;
//! - `churn`: published on 8084, scaled between 1 and 6 replicas, updated between
//!   `shoal/web:1` and `shoal/web:2`; and a worker ([`DRAINED`]) drained and made
//!   active again, which moves every task off it and back.
mod idle;
mod sample;

use std::{
    collections::BTreeMap,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::bench::Report;
use crate::chaos::{
    checks,
    cluster::{wait, Cluster, SETTLE},
    load::LoadSet,
};
use idle::{IdleSet, IDLE, IDLE_PORT};

/// The churned service and its published port.
const CHURN: &str = "churn";
const CHURN_PORT: u16 = 8084;
/// Its replica count before and after the churn.
const CHURN_REPLICAS: usize = 3;
/// The replica counts the churn's scales go through, in turn.
const SCALES: &[usize] = &[5, 1, 6, 2, 4, 3];
/// The worker drained and made active again.
const DRAINED: &str = "h5";
/// Between two churn acts.
const CHURN_STEP: Duration = Duration::from_secs(5);
/// Between two samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// Flat: the last third's mean at most this many times the first third's, plus a
/// slack (RSS in KiB; map fill in entries) for series that start near zero.
const FLAT_RATIO: f64 = 1.2;
const RSS_SLACK_KIB: f64 = 4096.0;
const FILL_SLACK: f64 = 32.0;
/// The LRU flow tables (entries stay until pushed out by new ones).
const LRU_SERIES: &[&str] = &[
    "mesh_closing_flows",
    "mesh_opening_flows",
    "mesh_reply_flows",
];

pub fn run(minutes: u64) -> Result<ExitCode> {
    crate::util::require_root("soak", "it runs a lab")?;
    if minutes < 3 {
        bail!("--minutes {minutes}: at least 3 (a sample each minute, three thirds to compare)");
    }
    let shoal = crate::util::shoal_binary()?;
    let mut report = Report {
        suite: "soak",
        ..Default::default()
    };
    let cluster = Cluster::up_as(&shoal, "soak", "x7")?;
    if let Err(e) = soak(&cluster, minutes, &mut report) {
        report.missed.push(format!("{e:#}"));
    }
    drop(cluster);
    let verdict = if report.missed.is_empty() {
        "PASS"
    } else {
        "FAIL"
    };
    println!("soak: {verdict}");
    for m in &report.missed {
        println!("soak: failed: {m}");
    }
    report.finish()
}

fn soak(cluster: &Cluster, minutes: u64, report: &mut Report) -> Result<()> {
    deploy(cluster)?;
    let settled = settle(cluster)?;
    println!("soak: settled in {:.1} s", settled.as_secs_f64());
    let leader = cluster.leader()?;
    let before = all_leaks(cluster, &leader)?;
    let vip = vip_of(cluster, &leader, IDLE)?;
    let idle = IdleSet::open(cluster, &vip)?;
    println!(
        "soak: {} idle connections open to {IDLE} (VIP {vip})",
        idle.len()
    );
    let loads = LoadSet::start(cluster, "soak")?;
    let mut series = Series::default();
    series.sample(cluster, report);
    let began = Instant::now();
    let length = Duration::from_secs(minutes * 60);
    let mut next_sample = began + SAMPLE_EVERY;
    let mut act = 0usize;
    let mut acts_failed = Vec::new();
    while began.elapsed() < length {
        if let Err(e) = churn_act(cluster, act) {
            println!("soak: churn act {act}: {e:#}");
            acts_failed.push(format!("act {act}: {e:#}"));
        }
        act += 1;
        if Instant::now() >= next_sample {
            series.sample(cluster, report);
            next_sample += SAMPLE_EVERY;
            println!(
                "soak: minute {}: {act} churn acts",
                began.elapsed().as_secs() / 60
            );
        }
        std::thread::sleep(CHURN_STEP);
    }
    report.figure("churn_acts", act as f64, "acts");
    report.figure("churn_acts_refused", acts_failed.len() as f64, "acts");
    // Back to where it began: every check of the chaos lab, and the soak's services.
    // What fails here is said and the rest is still measured.
    match reset(cluster).and_then(|_| settle(cluster)) {
        Ok(converged) => report.figure("converge", converged.as_secs_f64(), "s"),
        Err(e) => report
            .missed
            .push(format!("the lab did not settle after the churn: {e:#}")),
    }
    series.sample(cluster, report);

    let held = idle.len();
    let cut = idle.check(cluster);
    let (counts, container) = loads.stop(cluster);
    report.figure("idle_connections", held as f64, "connections");
    for c in &cut {
        println!("soak: idle connection: {c}");
    }
    report.ratio("idle_connections_cut", cut.len() as f64, "<=", 0.0);
    let mut failed = 0;
    for c in &counts {
        let prefix = format!("{}_{}", c.node, c.path);
        report.figure(&format!("{prefix}_sent"), c.sent as f64, "requests");
        report.figure(&format!("{prefix}_failed"), c.failed as f64, "requests");
        if c.failed > 0 {
            println!(
                "soak: {} {}: {} failed; first: {:?}",
                c.node, c.path, c.failed, c.failures
            );
        }
        failed += c.failed;
    }
    if let Err(e) = container {
        report.missed.push(format!("the container's load: {e:#}"));
    }
    report.ratio("steady_requests_failed", failed as f64, "<=", 0.0);
    series.judge(report);

    // Leaks, once the load has stopped and the lab settled again.
    if let Err(e) = settle(cluster) {
        report
            .missed
            .push(format!("the lab did not settle for the leak count: {e:#}"));
    }
    let after = wait("the leak count", SETTLE, || {
        all_leaks(cluster, &cluster.leader()?)
    })?;
    let mut leaked = Vec::new();
    for (host, b) in &before {
        let a = &after[host];
        for (name, (have, want)) in a.rows() {
            println!(
                "soak: {host} {name}: {have} (declared {want}; before the churn {:?})",
                b.rows()
                    .iter()
                    .find(|r| r.0 == name)
                    .map(|r| r.1)
                    .unwrap_or_default()
            );
        }
        leaked.extend(sample::compare(host, b, a));
    }
    for l in &leaked {
        println!("soak: leak: {l}");
    }
    report.ratio("leaks", leaked.len() as f64, "<=", 0.0);
    Ok(())
}

/// The soak's own services beside the chaos lab's.
fn deploy(cluster: &Cluster) -> Result<()> {
    let idle_port = format!("{IDLE_PORT}:8080");
    let churn_port = format!("{CHURN_PORT}:80");
    let churn_replicas = CHURN_REPLICAS.to_string();
    for args in [
        vec![
            "--name",
            IDLE,
            "--replicas",
            "2",
            "--constraint",
            "node.role==manager",
            "-p",
            &idle_port,
        ],
        vec![
            "--name",
            CHURN,
            "--replicas",
            &churn_replicas,
            "-p",
            &churn_port,
        ],
    ] {
        let mut argv = vec!["service", "create", "--detach", "--no-resolve-image"];
        argv.extend(args);
        argv.extend(["--network", "app", "shoal/web:1"]);
        cluster.shoal("h1", &argv)?;
    }
    Ok(())
}

/// Waits until every chaos check passes and the soak's services are at their counts
/// with their backends on every node.
fn settle(cluster: &Cluster) -> Result<Duration> {
    let started = Instant::now();
    checks::nothing_lost(cluster, SETTLE)?;
    wait("idle and churn settled", SETTLE, || {
        let leader = cluster.leader()?;
        for (service, want) in [(IDLE, 2), (CHURN, CHURN_REPLICAS)] {
            checks::service_at(cluster, &leader, service, want)?;
            checks::backends_everywhere(cluster, &leader, service)?;
        }
        // Between the two waits something may have moved again.
        checks::endpoints_everywhere(cluster)
    })?;
    Ok(started.elapsed())
}

/// A write through the first manager that accepts it (each tried once): the managers
/// forward to the leader, and one that lost it refuses.
fn write(cluster: &Cluster, args: &[&str]) -> Result<()> {
    let mut seen = Vec::new();
    for m in cluster.managers() {
        match cluster.shoal(&m.name, args) {
            Ok(_) => return Ok(()),
            Err(e) => seen.push(format!("{e:#}")),
        }
    }
    bail!("{}", seen.join("; "))
}

/// One churn act: scales most of the time, an update every 4th act, the drain or the
/// activation of [`DRAINED`] every 6th.
fn churn_act(cluster: &Cluster, act: usize) -> Result<()> {
    if act % 6 == 5 {
        let availability = if (act / 6).is_multiple_of(2) {
            "drain"
        } else {
            "active"
        };
        write(
            cluster,
            &["node", "update", "--availability", availability, DRAINED],
        )
    } else if act % 4 == 3 {
        let image = if (act / 4).is_multiple_of(2) {
            "shoal/web:2"
        } else {
            "shoal/web:1"
        };
        write(
            cluster,
            &[
                "service",
                "update",
                "-d",
                "--no-resolve-image",
                "--image",
                image,
                CHURN,
            ],
        )
    } else {
        let to = format!("{CHURN}={}", SCALES[act % SCALES.len()]);
        write(cluster, &["service", "scale", "-d", &to])
    }
}

/// The churn undone: `churn` at its count on `shoal/web:1`, [`DRAINED`] active (each
/// write retried until accepted, for at most [`SETTLE`]).
fn reset(cluster: &Cluster) -> Result<()> {
    let replicas = CHURN_REPLICAS.to_string();
    for args in [
        vec!["node", "update", "--availability", "active", DRAINED],
        vec![
            "service",
            "update",
            "-d",
            "--no-resolve-image",
            "--image",
            "shoal/web:1",
            "--replicas",
            &replicas,
            CHURN,
        ],
    ] {
        wait(&format!("`{}` accepted", args.join(" ")), SETTLE, || {
            write(cluster, &args)
        })?;
    }
    Ok(())
}

/// A service's VIP on `app` (without its prefix length).
fn vip_of(cluster: &Cluster, leader: &str, service: &str) -> Result<String> {
    let inspect: serde_json::Value =
        serde_json::from_str(&cluster.shoal(leader, &["service", "inspect", service])?)?;
    let vips = &inspect[0]["Endpoint"]["VirtualIPs"];
    vips.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["Addr"].as_str())
        .find(|a| !a.starts_with("10.255.") && !a.is_empty())
        .or_else(|| vips[0]["Addr"].as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_owned())
        .with_context(|| format!("no VIP in `service inspect {service}`: {vips}"))
}

fn all_leaks(cluster: &Cluster, leader: &str) -> Result<BTreeMap<String, sample::Leaks>> {
    cluster
        .state
        .hosts
        .iter()
        .map(|h| Ok((h.name.clone(), sample::leaks(cluster, leader, &h.name)?)))
        .collect()
}

/// Each host's agent RSS and data-plane fill, one sample a minute.
#[derive(Default)]
struct Series {
    rss: BTreeMap<String, Vec<f64>>,
    fill: BTreeMap<(String, &'static str), Vec<f64>>,
}

impl Series {
    /// One sample of every host; a host that cannot be sampled is a failure (its
    /// series then lacks that minute).
    fn sample(&mut self, cluster: &Cluster, report: &mut Report) {
        for h in &cluster.state.hosts {
            let got = sample::agent_rss_kib(cluster, &h.name)
                .and_then(|rss| Ok((rss, sample::fill(cluster, &h.name)?)));
            let (rss, fill) = match got {
                Ok(v) => v,
                Err(e) => {
                    report
                        .missed
                        .push(format!("{}: a sample failed: {e:#}", h.name));
                    continue;
                }
            };
            self.rss.entry(h.name.clone()).or_default().push(rss as f64);
            for (name, v) in fill {
                self.fill
                    .entry((h.name.clone(), name))
                    .or_default()
                    .push(v as f64);
            }
        }
    }

    /// Prints every series with its slope; a series that is not flat fails.
    fn judge(&self, report: &mut Report) {
        let series = self
            .rss
            .iter()
            .map(|(h, ys)| (format!("{h}_agent_rss"), ys, "KiB", RSS_SLACK_KIB))
            .chain(
                self.fill
                    .iter()
                    .map(|((h, name), ys)| (format!("{h}_{name}"), ys, "entries", FILL_SLACK)),
            );
        for (name, ys, unit, slack) in series {
            let text: Vec<String> = ys.iter().map(|y| format!("{y:.0}")).collect();
            println!("soak: {name} ({unit}, each minute): {}", text.join(" "));
            report.figure(
                &format!("{name}_slope"),
                sample::slope_per_hour(ys),
                &format!("{unit}/h"),
            );
            // LRU tables keep closed flows until pushed out: they grow to their capacity
            // by design, so they are printed, not judged.
            // A manager's Raft log rises to the snapshot interval and falls at each
            // snapshot: printed to show it is bounded, not judged by its thirds.
            if LRU_SERIES.iter().any(|l| name.ends_with(l)) || name.ends_with(sample::RAFT_LOG) {
                continue;
            }
            match sample::flat(ys, FLAT_RATIO, slack) {
                Ok((first, last, ok)) => {
                    report.figure(&format!("{name}_first_third"), first, unit);
                    report.figure(&format!("{name}_last_third"), last, unit);
                    if !ok {
                        report.missed.push(format!(
                            "{name} is not flat: last third {last:.0} {unit}, first third \
                             {first:.0} (at most {FLAT_RATIO} x + {slack})"
                        ));
                    }
                }
                Err(e) => report.missed.push(format!("{name}: {e:#}")),
            }
        }
    }
}
