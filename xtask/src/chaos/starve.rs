//! `starved`: no fault, a starved machine. Busy loops (started here, stopped by PID at
//! the end) compete with the lab for the CPU for [`HOLD`], under the same load as every
//! scenario; the managers must keep their leader the whole time (no Raft term moves on
//! any manager) and no node may be marked anything but Ready.
//!
//! Before, on a shared 2-core machine at load average 14-22, the managers lost their
//! leader with no fault (Raft RPCs timed out, elections followed each other), live nodes
//! missed their heartbeat deadline and were marked Down, and their global tasks were
//! started again.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    cluster::{not_ready_rows, Cluster, MANAGERS},
    load::Fault,
};
use crate::bench::Report;

/// How long the machine is starved.
const HOLD: Duration = Duration::from_secs(300);
/// Busy loops started (the machine has 2 cores).
const BUSY: usize = 6;
/// How often the managers and the node list are read.
const POLL: Duration = Duration::from_secs(1);

/// The busy loops, stopped (by PID) when dropped.
struct Busy(Vec<Child>);

impl Busy {
    fn start(n: usize) -> Result<Busy> {
        let mut busy = Busy(Vec::new());
        for _ in 0..n {
            let child = Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting a busy loop")?;
            busy.0.push(child);
        }
        Ok(busy)
    }

    fn pids(&self) -> Vec<u32> {
        self.0.iter().map(Child::id).collect()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A manager's Raft term and the leader it knows (`None` for one that did not answer).
type Reading = Option<(u64, Option<u64>)>;

/// Each manager's [`Reading`].
fn terms(cluster: &Cluster) -> Vec<(String, Reading)> {
    cluster
        .state
        .hosts
        .iter()
        .take(MANAGERS)
        .map(|h| {
            let read = cluster
                .metrics(&h.name, &["shoal_raft_term", "shoal_raft_leader_id"])
                .ok();
            let seen = read.and_then(|v| v[0].map(|term| (term, v[1])));
            (h.name.clone(), seen)
        })
        .collect()
}

/// The scenario (see the module's comment).
pub fn starved(cluster: &mut Cluster, report: &mut Report) -> Result<Vec<Fault>> {
    let before = terms(cluster);
    let Some(start_term) = before.iter().filter_map(|(_, t)| t.map(|t| t.0)).max() else {
        bail!("no manager's Raft term could be read: {before:?}");
    };
    let busy = Busy::start(BUSY)?;
    println!(
        "chaos: starved: {BUSY} busy loops (PIDs {:?}) for {} s; Raft term {start_term} at the start",
        busy.pids(),
        HOLD.as_secs()
    );
    let started = Instant::now();
    let mut polls = 0u64;
    let mut loads = Vec::new();
    let mut max_term = start_term;
    let mut leader_changes = 0u64;
    let mut last_leader: Option<u64> = None;
    let mut no_leader_polls = 0u64;
    let mut unanswered = 0u64;
    let mut not_ready = 0u64;
    let mut seen = Vec::new();
    while started.elapsed() < HOLD {
        let tick = Instant::now();
        polls += 1;
        if let Some(l) = load_average() {
            loads.push(l);
        }
        for (host, t) in terms(cluster) {
            let Some((term, leader)) = t else {
                unanswered += 1;
                continue;
            };
            if term > max_term {
                seen.push(format!(
                    "{:.1} s: {host} in term {term} (was {max_term})",
                    started.elapsed().as_secs_f64()
                ));
                max_term = term;
            }
            match leader {
                None => no_leader_polls += 1,
                Some(l) => {
                    if last_leader.is_some_and(|last| last != l) {
                        leader_changes += 1;
                    }
                    last_leader = Some(l);
                }
            }
        }
        match cluster.leader() {
            Ok(leader) => match cluster.shoal(&leader, &["node", "ls"]) {
                Ok(nodes) => {
                    let bad = not_ready_rows(&nodes);
                    if !bad.is_empty() {
                        not_ready += 1;
                        seen.push(format!(
                            "{:.1} s: not Ready: {}",
                            started.elapsed().as_secs_f64(),
                            bad.join(" | ")
                        ));
                    }
                }
                Err(e) => seen.push(format!("`node ls` on {leader}: {e:#}")),
            },
            Err(e) => {
                no_leader_polls += 1;
                seen.push(format!("{:.1} s: {e:#}", started.elapsed().as_secs_f64()));
            }
        }
        if let Some(left) = POLL.checked_sub(tick.elapsed()) {
            std::thread::sleep(left);
        }
    }
    let held = started.elapsed().as_secs_f64();
    drop(busy);
    for s in seen.iter().take(20) {
        println!("chaos: starved: {s}");
    }
    loads.sort_by(f64::total_cmp);
    let load_median = loads.get(loads.len() / 2).copied().unwrap_or(0.0);
    let load_max = loads.last().copied().unwrap_or(0.0);
    println!(
        "chaos: starved: {polls} polls over {held:.0} s, load average median {load_median:.1} \
         max {load_max:.1}; Raft term {start_term} -> {max_term}, {leader_changes} leader \
         changes, {no_leader_polls} readings without a leader, {unanswered} unanswered \
         readings, {not_ready} polls with a node not Ready"
    );
    report.figure("starved_held", held, "s");
    report.figure("starved_polls", polls as f64, "polls");
    report.figure("starved_load_average_median", load_median, "load");
    report.figure("starved_load_average_max", load_max, "load");
    report.figure("starved_unanswered_readings", unanswered as f64, "readings");
    report.ratio(
        "starved_elections",
        (max_term - start_term) as f64,
        "<=",
        0.0,
    );
    report.ratio("starved_leader_changes", leader_changes as f64, "<=", 0.0);
    report.ratio(
        "starved_readings_without_leader",
        no_leader_polls as f64,
        "<=",
        0.0,
    );
    report.ratio("starved_polls_not_ready", not_ready as f64, "<=", 0.0);
    Ok(Vec::new())
}
