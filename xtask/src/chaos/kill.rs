//! Scenarios that kill or restart processes: the leader's agent (SIGKILL, 10 rounds), a
//! worker's agent and its dockerd (SIGKILL), every agent restarted one by one.
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{
    checks,
    cluster::{wait, Cluster, SETTLE},
    load::Fault,
};
use crate::{
    bench::Report,
    lab::{tables, HostState},
};

/// Rounds of the leader's kill.
const LEADER_ROUNDS: usize = 10;
/// The target: a new leader accepts writes within this long of the kill, and a
/// dead host's endpoints are gone from every other node's dataplane within it.
pub const HEAL_TARGET_SECS: f64 = 5.0;
/// The worker killed (and the one whose underlay is cut).
pub const VICTIM_WORKER: &str = "h5";

/// SIGKILL the leader's agent, [`LEADER_ROUNDS`] times: each time a write through another
/// manager must be accepted within the target, and the killed agent, started again,
/// rejoins as a manager.
pub fn leader_kill(cluster: &mut Cluster, report: &mut Report) -> Result<Vec<Fault>> {
    let mut faults = Vec::new();
    let mut writes = Vec::new();
    let mut rejoins = Vec::new();
    for round in 1..=LEADER_ROUNDS {
        let leader = cluster.wait_leader(&format!("leader_kill round {round}"))?;
        let survivors: Vec<String> = cluster
            .managers()
            .map(|m| m.name.clone())
            .filter(|m| *m != leader)
            .collect();
        let killed = Instant::now();
        cluster.stop_agent(&leader, libc::SIGKILL)?;
        let label = format!("chaos=leader-kill-{round}");
        let accepted = cluster.first_write(
            &format!("round {round}: a write accepted with {leader} killed"),
            &label,
            &survivors,
            killed,
        );
        // The killed agent starts again whatever the survivors did.
        let restarted = Instant::now();
        cluster.start_agent(&leader)?;
        faults.push(Fault::until_now(&leader, killed));
        let (via, write) = accepted?;
        let new_leader = wait("the new leader's name", SETTLE, || {
            cluster.leader_seen_by(&via)
        })?;
        cluster.wait_all_ready(SETTLE)?;
        wait(
            &format!("round {round}: {leader} names the leader again"),
            SETTLE,
            || cluster.leader_seen_by(&leader),
        )?;
        let rejoin = restarted.elapsed().as_secs_f64();
        println!(
            "chaos: leader_kill round {round}: killed {leader}'s agent; write accepted through \
             {via} after {write:.3} s (new leader {new_leader}); {leader} back after {rejoin:.3} s"
        );
        writes.push(write);
        rejoins.push(rejoin);
    }
    writes.sort_by(f64::total_cmp);
    rejoins.sort_by(f64::total_cmp);
    report.figure(
        "leader_kill_new_leader_median",
        writes[writes.len() / 2],
        "s",
    );
    let max = writes[writes.len() - 1];
    report.figure("leader_kill_new_leader_max", max, "s");
    report.figure("leader_kill_rejoin_max", rejoins[rejoins.len() - 1], "s");
    report.ratio("leader_kill_new_leader_max", max, "<=", HEAL_TARGET_SECS);
    Ok(faults)
}

/// SIGKILL a worker's agent and its dockerd; the other nodes must take its endpoints out
/// of their dataplane within the target; then both start again.
pub fn worker_kill(cluster: &mut Cluster, report: &mut Report) -> Result<Vec<Fault>> {
    let victim = cluster.host(VICTIM_WORKER)?.clone();
    let killed = Instant::now();
    cluster.stop_agent(&victim.name, libc::SIGKILL)?;
    cluster.kill_dockerd(&victim.name)?;
    let withdrawn = wait_withdrawn(cluster, &victim, killed);
    // The worker stays dead a while under load, then comes back (whatever the others
    // saw).
    let down = Duration::from_secs(10);
    if killed.elapsed() < down {
        std::thread::sleep(down - killed.elapsed());
    }
    let back = Instant::now();
    cluster.restart_dockerd(&victim.name)?;
    cluster.start_agent(&victim.name)?;
    let faults = vec![Fault::until_now(&victim.name, killed)];
    let withdrawn = withdrawn?;
    report.figure("worker_kill_withdrawn", withdrawn, "s");
    report.ratio("worker_kill_withdrawn", withdrawn, "<=", HEAL_TARGET_SECS);
    cluster.wait_all_ready(SETTLE)?;
    report.figure("worker_kill_ready_again", back.elapsed().as_secs_f64(), "s");
    Ok(faults)
}

/// Every agent stopped (SIGTERM) and started again, one host after the other, each once
/// the previous restart has converged.
pub fn restart_all(cluster: &mut Cluster, report: &mut Report) -> Result<Vec<Fault>> {
    let mut faults = Vec::new();
    let names: Vec<String> = cluster.state.hosts.iter().map(|h| h.name.clone()).collect();
    for name in names {
        let stopped = Instant::now();
        cluster.stop_agent(&name, libc::SIGTERM)?;
        cluster.start_agent(&name)?;
        let down = stopped.elapsed().as_secs_f64();
        faults.push(Fault::until_now(&name, stopped));
        let back = Instant::now();
        cluster.wait_all_ready(SETTLE)?;
        checks::nothing_lost(cluster, SETTLE)?;
        let converged = back.elapsed().as_secs_f64();
        println!(
            "chaos: restart_all: {name}'s agent down {down:.3} s, converged {converged:.3} s later"
        );
        report.figure(&format!("restart_all_{name}_down"), down, "s");
        report.figure(&format!("restart_all_{name}_converge"), converged, "s");
    }
    Ok(faults)
}

/// Waits until no host but `victim` has a backend on `victim` in its load-balancing
/// state; the seconds since `since`.
pub fn wait_withdrawn(cluster: &Cluster, victim: &HostState, since: Instant) -> Result<f64> {
    wait(
        &format!("{}'s endpoints gone from every other node", victim.name),
        SETTLE,
        || {
            let node = victim.address.to_string();
            for h in cluster.state.hosts.iter().filter(|h| h.name != victim.name) {
                let lb = tables::declared(h, "lb.json");
                for s in tables::array(&lb, "services") {
                    if let Some(b) = tables::array(s, "backends")
                        .into_iter()
                        .find(|b| b["node"] == node.as_str())
                    {
                        bail!("{}: {} backend {b}", h.name, s["name"]);
                    }
                }
            }
            Ok(since.elapsed().as_secs_f64())
        },
    )
}
