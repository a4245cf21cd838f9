//! What every scenario checks once its fault is over: nothing was lost.
//!
//! - The store is identical on every manager: `service inspect`, `network inspect` and
//!   `node inspect` of everything the lab made, byte for byte, on each manager.
//! - Every service is at its replica count (`service ls`: `web` 5/5, `back` 2/2).
//! - Every task's endpoint is on every node: each host's load-balancing state (what its
//!   agent programs into the mesh and VIP maps, dumped as `lb.json`) has exactly the
//!   services' running tasks as healthy backends, and each host's overlay tables hold
//!   exactly the other hosts' endpoints ([`crate::lab::tables::tables_agree`]).
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use super::cluster::{wait, Cluster, BACK, BACK_REPLICAS, HOSTS, WEB};
use crate::lab::tables::{array, declared, tables_agree};

/// Waits until nothing is lost (every check passes at once); how long that took, or an
/// error naming the check that still failed and what it saw.
pub fn nothing_lost(cluster: &Cluster, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    wait("nothing lost", limit, || {
        replicas(cluster)?;
        stores_agree(cluster)?;
        endpoints_everywhere(cluster)
    })?;
    Ok(started.elapsed())
}

/// `web` at one task per node and `back` at its replica count, as the leader says.
pub fn replicas(cluster: &Cluster) -> Result<()> {
    let leader = cluster.leader()?;
    for (service, want) in [(WEB, HOSTS as usize), (BACK, BACK_REPLICAS)] {
        service_at(cluster, &leader, service, want)?;
    }
    Ok(())
}

/// `service ls` on `leader` shows `service` at `want`/`want` tasks running.
pub fn service_at(cluster: &Cluster, leader: &str, service: &str, want: usize) -> Result<()> {
    let ls = cluster.shoal(leader, &["service", "ls"])?;
    let want = format!("{want}/{want}");
    let ok = ls.lines().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.get(1) == Some(&service) && words.contains(&want.as_str())
    });
    if !ok {
        // Where each task is and what it is doing: which node's task is missing, and
        // whether the managers made it.
        let ps = cluster
            .shoal(leader, &["service", "ps", service])
            .unwrap_or_else(|e| format!("service ps: {e:#}"));
        bail!("{service} is not at {want} on {leader}:\n{ls}\n{ps}");
    }
    Ok(())
}

/// What a manager's store says about everything the lab made.
fn store_view(cluster: &Cluster, manager: &str) -> Result<String> {
    let mut nodes = vec!["node", "inspect"];
    let names: Vec<String> = cluster.state.hosts.iter().map(|h| h.name.clone()).collect();
    nodes.extend(names.iter().map(String::as_str));
    Ok([
        cluster.shoal(manager, &["service", "inspect", WEB, BACK])?,
        cluster.shoal(manager, &["network", "inspect", "app"])?,
        cluster.shoal(manager, &nodes)?,
    ]
    .join("\n"))
}

/// Every manager's store says the same.
pub fn stores_agree(cluster: &Cluster) -> Result<()> {
    let mut first: Option<(String, String)> = None;
    for m in cluster.managers() {
        let view = store_view(cluster, &m.name)?;
        match &first {
            None => first = Some((m.name.clone(), view)),
            Some((name, seen)) if *seen != view => {
                let diff = seen
                    .lines()
                    .zip(view.lines())
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("{name}: {a:?}, {}: {b:?}", m.name))
                    .unwrap_or_else(|| "one view is longer".into());
                bail!("the stores of {name} and {} differ: {diff}", m.name);
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The running tasks of a service, by ID, as the leader says.
pub fn running_tasks(cluster: &Cluster, leader: &str, service: &str) -> Result<BTreeSet<String>> {
    let out = cluster.shoal(
        leader,
        &[
            "service",
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            "desired-state=running",
            service,
        ],
    )?;
    Ok(out.lines().map(|l| l.trim().to_owned()).collect())
}

/// Every host's declared load-balancing state has every running task of both services
/// as a healthy backend (and nothing else), and the overlay tables agree.
pub fn endpoints_everywhere(cluster: &Cluster) -> Result<()> {
    let leader = cluster.leader()?;
    for service in [WEB, BACK] {
        backends_everywhere(cluster, &leader, service)?;
    }
    tables_agree(&cluster.state).map_err(anyhow::Error::msg)
}

/// Every host's declared load-balancing state has exactly `service`'s running tasks (as
/// `leader` says) as healthy backends.
pub fn backends_everywhere(cluster: &Cluster, leader: &str, service: &str) -> Result<()> {
    let tasks = running_tasks(cluster, leader, service)?;
    for h in &cluster.state.hosts {
        let lb = declared(h, "lb.json");
        let Some(s) = array(&lb, "services")
            .into_iter()
            .find(|s| s["name"] == service)
        else {
            bail!("{}: no {service} in its load-balancing state", h.name);
        };
        let backends = array(s, "backends");
        let have: BTreeSet<String> = backends
            .iter()
            .filter_map(|b| b["task"].as_str().map(str::to_owned))
            .collect();
        if have != tasks {
            bail!(
                "{}: {service}'s backends are {have:?}, its running tasks {tasks:?}",
                h.name
            );
        }
        if let Some(b) = backends.iter().find(|b| b["state"] != "healthy") {
            bail!("{}: {service} backend not healthy: {b}", h.name);
        }
    }
    Ok(())
}
