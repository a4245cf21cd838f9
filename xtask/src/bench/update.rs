//! `cargo xtask bench update`: how long a rolling update of a service takes, shoal
//! against Docker Swarm on the same machine in the same run, and whether requests
//! through shoal's routing mesh fail while it runs.
//!
//! A 2-host lab, as `bench services`: h1 runs a one-node shoal cluster (release agent),
//! h2 a one-node Docker Swarm on its own dockerd. Each round, on each system: `service
//! create --detach --replicas 10 -p 8080:80 shoal/web:1` and a wait until the 10 tasks
//! run (not timed); then, timed, `service update --detach --image shoal/web:2
//! --update-parallelism 2 --update-delay 0s` (stop-first, the default order; the default
//! 5 s monitor), with `service ps` polled every 100 ms until the 10 running tasks are
//! all made from the new image, then `service inspect` until `UpdateStatus.State` reads
//! `completed`. Both images are preloaded on every host (`lab up`), so no pull is timed.
//! Afterwards the round checks that every task was really replaced (`service ps` lists
//! 10 tasks of the old image with desired state Shutdown), then removes the service.
//! Rounds alternate between the systems; medians compared. A third system, Swarm with
//! the same service unpublished (`swarm_unpublished`), shows how much of Swarm's time
//! is its load balancer's withdrawal (it sleeps 2 s after it, per stop) and the IPVS
//! calls that fail on this kernel.
//!
//! - `shoal_s`, `swarm_s`: `service update` to converged (the figures compared);
//!   `swarm_unpublished_s` the same without a published port;
//! - `*_replaced_s`: to the 10th new task running (without the monitor wait);
//! - `*_batch_s`: median time a batch of 2 takes (from the update or the previous
//!   batch's 2nd task running to this batch's 2nd running, as the poll saw them);
//! - `shoal_stop_hold_ms`: median time from a task told to stop to its SIGTERM (the
//!   executor holding it until every node has withdrawn it), from the agent's log;
//! - `mesh_requests`, `mesh_failed`: during each of shoal's updates (from just before
//!   `service update` until converged), the lab client sends paced requests, a new
//!   connection each, to h1:8080 ([`super::mesh_load`]); the counts over every round.
//!   Each failure is printed with when it was sent and how many requests were answered
//!   since the previous one, and the round's line lists the dataplane counters that
//!   moved (`shoal dataplane stats`). Swarm gets no load: its routing mesh needs IPVS,
//!   which this kernel lacks. The agent's log is kept in `target/bench/`.
//!
//! Targets: shoal / Swarm <= 1.0; no failed request through the mesh.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    mesh_load::{self, LoadCounts, MeshLoad},
    services::{median, wait_clean},
    Report,
};
use crate::{
    lab::{self, LabState, Layout},
    util::target_dir,
};

const SERVICE: &str = "bench";
const REPLICAS: usize = 10;
const PARALLELISM: usize = 2;
const OLD_IMAGE: &str = "shoal/web:1";
const NEW_IMAGE: &str = "shoal/web:2";
const PUBLISHED: u16 = 8080;
const ROUNDS: usize = 3;
const LIMIT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(100);

pub(super) fn run() -> Result<ExitCode> {
    let mut report = Report {
        suite: "update",
        ..Default::default()
    };
    let shoal = super::release_shoal("update")?;
    let layout = Layout::new("bupd")?;
    if !lab::leftovers(&layout).is_empty() {
        lab::down(&layout)?;
    }
    let state = lab::up(&layout, 2)?;
    let result = measure(&state, &shoal, &mut report);
    // shoal's agent log, for what its stops and starts did (it goes with the lab).
    let kept = target_dir().join("bench").join("update-agent-h1.log");
    if std::fs::create_dir_all(target_dir().join("bench")).is_ok()
        && std::fs::copy(state.hosts[0].run_dir.join("agent.log"), &kept).is_ok()
    {
        println!("bench update: kept the agent's log at {}", kept.display());
    }
    let down = lab::down(&layout);
    result?;
    down?;
    report.finish()
}

/// One system under test: its CLI on its one node.
struct System {
    name: &'static str,
    cli: &'static str,
    host: &'static str,
    /// What `service create` needs besides the common flags.
    create_extra: &'static [&'static str],
    /// Whether the service publishes its port (ingress mode).
    publish: bool,
}

const SHOAL: System = System {
    name: "shoal",
    cli: "shoal",
    host: "h1",
    create_extra: &[],
    publish: true,
};

/// Swarm's tasks get an init process too, as shoal's do (same stop behaviour).
const SWARM: System = System {
    name: "swarm",
    cli: "docker",
    host: "h2",
    create_extra: &["--init"],
    publish: true,
};

/// Swarm with no published port: its stops skip the load balancer's withdrawal (and
/// the 2 s it waits after it), and the IPVS calls that fail on this kernel.
const SWARM_UNPUBLISHED: System = System {
    name: "swarm_unpublished",
    publish: false,
    ..SWARM
};

/// One row of `service ps --no-trunc`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PsRow {
    id: String,
    image: String,
    desired: String,
    /// The first word of CURRENT STATE (`Running`, `Shutdown`, ...).
    current: String,
}

impl PsRow {
    fn made_from(&self, image: &str) -> bool {
        // Docker may show the digest a tag was pinned to.
        self.image == image || self.image.starts_with(&format!("{image}@"))
    }

    fn running(&self) -> bool {
        self.desired == "Running" && self.current == "Running"
    }
}

/// `service ps --no-trunc` output cut at the header's column positions (cells may hold
/// spaces); both CLIs print the same columns.
fn parse_ps(out: &str) -> Result<Vec<PsRow>> {
    let mut lines = out.lines();
    let header = lines.next().context("`service ps` printed no header")?;
    let col = |name: &str| {
        header
            .find(name)
            .with_context(|| format!("no {name} column in {header:?}"))
    };
    let cols = [
        0,
        col("NAME")?,
        col("IMAGE")?,
        col("NODE")?,
        col("DESIRED STATE")?,
        col("CURRENT STATE")?,
        col("ERROR")?,
    ];
    Ok(lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cell = |i: usize| {
                let end = cols.get(i + 1).copied().unwrap_or(l.len()).min(l.len());
                l.get(cols[i].min(l.len())..end)
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            PsRow {
                id: cell(0),
                image: cell(2),
                desired: cell(4),
                current: cell(5).split_whitespace().next().unwrap_or("").into(),
            }
        })
        .collect())
}

/// What one round measured.
struct Round {
    /// When `service update` was issued.
    started: Instant,
    converged_s: f64,
    replaced_s: f64,
    batches_s: Vec<f64>,
    load: Option<LoadCounts>,
    /// How long each stop was held for its task's withdrawal (shoal's agent log).
    holds_ms: Vec<f64>,
    /// The dataplane counters that moved during the update (`shoal dataplane stats`).
    counters_moved: Vec<(String, u64)>,
}

/// `shoal dataplane stats --json` of a host: the pinned counters by name.
fn dataplane_counters(state: &LabState, sys: &System) -> Result<BTreeMap<String, u64>> {
    let out = cli(state, sys, &["dataplane", "stats", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("dataplane stats JSON")?;
    Ok(v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default())
}

/// The counters that grew from `before` to `after`, by how much.
fn grown(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.checked_sub(before.get(k).copied().unwrap_or(0))?;
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// What a round of shoal watches besides the update: the mesh, and the agent's log.
struct Watch<'a> {
    netns: &'a Path,
    to: SocketAddr,
    agent_log: &'a Path,
}

/// Told to stop to SIGTERM, per stop, from the executor's lines in `log`: the hold for
/// the task's withdrawal on every node (`executor/withdrawal.rs`).
fn stop_holds_ms(log: &str) -> Vec<f64> {
    let field = |line: &str, name: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    log.lines()
        .filter_map(|l| {
            if l.contains("task withdrawn on every node; stopping it") {
                Some(field(l, "told_to_withdrawn_ms")? + field(l, "withdrawn_to_sigterm_ms")?)
            } else if l.contains("not withdrawn on every node in time") {
                field(l, "told_to_sigterm_ms")
            } else {
                None
            }
        })
        .collect()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// What `path` gained past byte `from`.
fn read_from(path: &Path, from: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default()).into_owned()
}

fn cli(state: &LabState, sys: &System, args: &[&str]) -> Result<String> {
    let argv: Vec<&str> = std::iter::once(sys.cli)
        .chain(args.iter().copied())
        .collect();
    lab::exec_output(state, sys.host, &argv)
}

fn ps(state: &LabState, sys: &System) -> Result<Vec<PsRow>> {
    parse_ps(&cli(state, sys, &["service", "ps", "--no-trunc", SERVICE])?)
}

/// Polls `service ps` until `ok` holds for its rows; returns them.
fn wait_ps(
    state: &LabState,
    sys: &System,
    what: &str,
    ok: impl Fn(&[PsRow]) -> bool,
) -> Result<Vec<PsRow>> {
    let start = Instant::now();
    loop {
        let rows = ps(state, sys).unwrap_or_default();
        if ok(&rows) {
            return Ok(rows);
        }
        if start.elapsed() > LIMIT {
            bail!(
                "{}: {what}: not within {LIMIT:?}; last rows: {rows:#?}",
                sys.name
            );
        }
        std::thread::sleep(POLL);
    }
}

/// `service update` to converged: when it was issued, seconds to converged and to the
/// 10th new task running, and the batch times the poll saw.
fn timed_update(state: &LabState, sys: &System) -> Result<(Instant, f64, f64, Vec<f64>)> {
    let parallelism = PARALLELISM.to_string();
    let t0 = Instant::now();
    cli(
        state,
        sys,
        &[
            "service",
            "update",
            "--detach",
            "--no-resolve-image",
            "--image",
            NEW_IMAGE,
            "--update-parallelism",
            &parallelism,
            "--update-delay",
            "0s",
            SERVICE,
        ],
    )
    .with_context(|| format!("{}: service update", sys.name))?;
    // When the n-th batch's last task was first seen running.
    let mut batch_done: Vec<Option<f64>> = vec![None; REPLICAS.div_ceil(PARALLELISM)];
    let mut replaced = None;
    loop {
        let rows = ps(state, sys).unwrap_or_default();
        let at = t0.elapsed().as_secs_f64();
        let running: Vec<&PsRow> = rows.iter().filter(|r| r.running()).collect();
        let new_running = running.iter().filter(|r| r.made_from(NEW_IMAGE)).count();
        for (i, done) in batch_done.iter_mut().enumerate() {
            if done.is_none() && new_running >= ((i + 1) * PARALLELISM).min(REPLICAS) {
                *done = Some(at);
            }
        }
        if running.len() == REPLICAS && new_running == REPLICAS {
            replaced.get_or_insert(at);
            let status = cli(
                state,
                sys,
                &[
                    "service",
                    "inspect",
                    "--format",
                    "{{.UpdateStatus.State}}",
                    SERVICE,
                ],
            )
            .unwrap_or_default();
            if status == "completed" {
                break;
            }
        }
        if t0.elapsed() > LIMIT {
            bail!(
                "{}: the update did not converge within {LIMIT:?}; last rows: {rows:#?}",
                sys.name
            );
        }
        std::thread::sleep(POLL);
    }
    let converged = t0.elapsed().as_secs_f64();
    let done: Vec<f64> = batch_done.into_iter().flatten().collect();
    let batches = done
        .iter()
        .scan(0.0, |previous, t| {
            let d = t - *previous;
            *previous = *t;
            Some(d)
        })
        .collect();
    Ok((
        t0,
        converged,
        replaced.expect("set before converging"),
        batches,
    ))
}

/// Fails unless `service ps` lists every replica's old task as shut down and 10 new
/// ones running, all with different IDs: the update replaced every task.
fn check_replaced(state: &LabState, sys: &System) -> Result<()> {
    let rows = ps(state, sys)?;
    let old: Vec<&PsRow> = rows
        .iter()
        .filter(|r| r.made_from(OLD_IMAGE) && r.desired == "Shutdown")
        .collect();
    let new: Vec<&PsRow> = rows
        .iter()
        .filter(|r| r.made_from(NEW_IMAGE) && r.running())
        .collect();
    let mut ids: Vec<&str> = old.iter().chain(&new).map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    if old.len() != REPLICAS || new.len() != REPLICAS || ids.len() != 2 * REPLICAS {
        bail!(
            "{}: expected {REPLICAS} shut down tasks of {OLD_IMAGE} and {REPLICAS} running of \
             {NEW_IMAGE}, found {} and {}: {rows:#?}",
            sys.name,
            old.len(),
            new.len()
        );
    }
    Ok(())
}

/// One round on one system; with `watch`, requests go through the published port while
/// the update runs, and the agent's log tells how long its stops were held.
fn round(state: &LabState, sys: &System, watch: Option<&Watch>) -> Result<Round> {
    let replicas = REPLICAS.to_string();
    let published = format!("{PUBLISHED}:80");
    let mut create = vec!["service", "create", "--detach", "--no-resolve-image"];
    create.extend_from_slice(sys.create_extra);
    create.extend_from_slice(&["--name", SERVICE, "--replicas", &replicas]);
    if sys.publish {
        create.extend_from_slice(&["-p", &published]);
    }
    create.push(OLD_IMAGE);
    cli(state, sys, &create).with_context(|| format!("{}: service create", sys.name))?;
    wait_ps(state, sys, "10 tasks of the old image running", |rows| {
        rows.iter()
            .filter(|r| r.running() && r.made_from(OLD_IMAGE))
            .count()
            == REPLICAS
    })?;
    let mesh = match watch {
        Some(w) => {
            mesh_load::wait_answer(w.netns, w.to, LIMIT)
                .with_context(|| format!("{}: the published port before the update", sys.name))?;
            Some(MeshLoad::start(w.netns, w.to))
        }
        None => None,
    };
    let log_from = watch.map(|w| file_len(w.agent_log));
    let counters_before = match watch {
        Some(_) => Some(dataplane_counters(state, sys)?),
        None => None,
    };
    let timed = timed_update(state, sys);
    let counts = mesh.map(MeshLoad::stop).transpose()?;
    let (started, converged_s, replaced_s, batches_s) = timed?;
    let holds_ms = match (watch, log_from) {
        (Some(w), Some(from)) => stop_holds_ms(&read_from(w.agent_log, from)),
        _ => Vec::new(),
    };
    let counters_moved = match counters_before {
        Some(before) => grown(&before, &dataplane_counters(state, sys)?),
        None => Vec::new(),
    };
    check_replaced(state, sys)?;
    cli(state, sys, &["service", "rm", SERVICE])?;
    wait_clean(state, sys.host, SERVICE)?;
    Ok(Round {
        started,
        converged_s,
        replaced_s,
        batches_s,
        load: counts,
        holds_ms,
        counters_moved,
    })
}

fn describe(sys: &System, i: usize, r: &Round) -> String {
    let batches: Vec<String> = r.batches_s.iter().map(|b| format!("{b:.2}")).collect();
    let mut line = format!(
        "bench update: round {} {} converged {:.2} s, 10 new running at {:.2} s, batches [{}] s",
        i + 1,
        sys.name,
        r.converged_s,
        r.replaced_s,
        batches.join(" ")
    );
    if !r.holds_ms.is_empty() {
        let holds: Vec<String> = r.holds_ms.iter().map(|h| format!("{h:.0}")).collect();
        line += &format!("; stops held [{}] ms", holds.join(" "));
    }
    if !r.counters_moved.is_empty() {
        let moved: Vec<String> = (r.counters_moved.iter())
            .map(|(k, d)| format!("{k} +{d}"))
            .collect();
        line += &format!("; dataplane counters {}", moved.join(", "));
    }
    if let Some(c) = &r.load {
        line += &format!(
            "; mesh {} requests, {} failed, answers by version {:?}",
            c.requests, c.failed, c.answered_by_version
        );
        for (sent, what, answered) in &c.failures {
            let at = sent.saturating_duration_since(r.started).as_secs_f64();
            line += &format!(
                "\n  failed: sent at {at:.2} s: {what} ({answered} answered since the previous failure)"
            );
        }
    }
    line
}

fn measure(state: &LabState, shoal: &Path, report: &mut Report) -> Result<()> {
    let (h1, h2) = (&state.hosts[0], &state.hosts[1]);
    lab::agent::start(state, h1, shoal, &[])?;
    let addr = h1.address.to_string();
    cli(state, &SHOAL, &["swarm", "init", "--advertise-addr", &addr])?;
    let addr = h2.address.to_string();
    cli(state, &SWARM, &["swarm", "init", "--advertise-addr", &addr])?;
    let client_ns = PathBuf::from("/run/netns").join(&state.client.netns);
    let agent_log = h1.run_dir.join("agent.log");
    let watch = Watch {
        netns: &client_ns,
        to: SocketAddr::new(h1.address.into(), PUBLISHED),
        agent_log: &agent_log,
    };
    let (mut shoal_rounds, mut swarm_rounds, mut unpublished_rounds) =
        (Vec::new(), Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let r = round(state, &SHOAL, Some(&watch))?;
        println!("{}", describe(&SHOAL, i, &r));
        shoal_rounds.push(r);
        let r = round(state, &SWARM, None)?;
        println!("{}", describe(&SWARM, i, &r));
        swarm_rounds.push(r);
        let r = round(state, &SWARM_UNPUBLISHED, None)?;
        println!("{}", describe(&SWARM_UNPUBLISHED, i, &r));
        unpublished_rounds.push(r);
    }
    let _ = cli(state, &SWARM, &["swarm", "leave", "--force"]);

    let med = |rounds: &[Round], f: fn(&Round) -> f64| {
        median(&mut rounds.iter().map(f).collect::<Vec<_>>())
    };
    let batch = |rounds: &[Round]| {
        median(
            &mut rounds
                .iter()
                .flat_map(|r| r.batches_s.clone())
                .collect::<Vec<_>>(),
        )
    };
    let (shoal_s, swarm_s) = (
        med(&shoal_rounds, |r| r.converged_s),
        med(&swarm_rounds, |r| r.converged_s),
    );
    report.figure("shoal_s", shoal_s, "s");
    report.figure("swarm_s", swarm_s, "s");
    report.figure(
        "shoal_replaced_s",
        med(&shoal_rounds, |r| r.replaced_s),
        "s",
    );
    report.figure(
        "swarm_replaced_s",
        med(&swarm_rounds, |r| r.replaced_s),
        "s",
    );
    report.figure("shoal_batch_s", batch(&shoal_rounds), "s");
    report.figure("swarm_batch_s", batch(&swarm_rounds), "s");
    report.figure(
        "swarm_unpublished_s",
        med(&unpublished_rounds, |r| r.converged_s),
        "s",
    );
    report.figure("swarm_unpublished_batch_s", batch(&unpublished_rounds), "s");
    let mut holds: Vec<f64> = shoal_rounds
        .iter()
        .flat_map(|r| r.holds_ms.clone())
        .collect();
    if !holds.is_empty() {
        report.figure("shoal_stop_hold_ms", median(&mut holds), "ms");
    }
    let (requests, failed) = shoal_rounds
        .iter()
        .filter_map(|r| r.load.as_ref())
        .fold((0, 0), |(n, f), c| (n + c.requests, f + c.failed));
    report.figure("mesh_requests", requests as f64, "requests");
    report.figure("mesh_failed", failed as f64, "requests");
    report.ratio("shoal_vs_swarm", shoal_s / swarm_s, "<=", 1.0);
    report.ratio("mesh_failed_requests", failed as f64, "<=", 0.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_rows_are_cut_at_the_header_columns() {
        let out = r"ID    NAME          IMAGE         NODE  DESIRED STATE  CURRENT STATE            ERROR  PORTS
a1    bench.1       shoal/web:2   h1    Running        Running 2 seconds ago
b2     \_ bench.1   shoal/web:1   h1    Shutdown       Shutdown 3 seconds ago
";
        let rows = parse_ps(out).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].running() && rows[0].made_from(NEW_IMAGE));
        assert!(!rows[1].running() && rows[1].made_from(OLD_IMAGE));
        assert_eq!(rows[1].desired, "Shutdown");
        assert_eq!(rows[1].id, "b2");
        assert!(parse_ps("").is_err());
    }

    #[test]
    fn stop_holds_come_from_the_executors_lines() {
        let log = "\
2026-12-05T10:00:00Z  INFO shoal_orchestrator::executor::containers: task withdrawn on every node; stopping it task=\"t1\" container=\"c1\" told_to_withdrawn_ms=40 withdrawn_to_sigterm_ms=3
2026-12-05T10:00:01Z  INFO shoal_orchestrator::executor: something else told_to_withdrawn_ms=9 withdrawn_to_sigterm_ms=9
2026-12-05T10:00:10Z  INFO shoal_orchestrator::executor::containers: task not withdrawn on every node in time; stopping it anyway task=\"t2\" container=\"c2\" told_to_sigterm_ms=10002
";
        assert_eq!(stop_holds_ms(log), vec![43.0, 10002.0]);
    }
}
