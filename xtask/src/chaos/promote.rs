//! `promote_kill`: a manager made by `node promote`, and the leader SIGKILLed right after
//! the promote returns (issue 20's "Done means"). `node promote` must answer only once the
//! node is a voter that holds the final membership: answered earlier, a leader lost at
//! once left the other two with no quorum for good.
//!
//! The lab starts with h1, h2 and h3 managers (h2 and h3 joined as managers). The
//! scenario demotes h2 and h3, then promotes h2: two managers, the second from a promote.
//! Each round promotes the one of h1-h3 that is a worker (the third manager, from a
//! promote), SIGKILLs the leader's agent as soon as the promote returns, and retries a
//! write through the two others until one is accepted (the target: within 5 s of the
//! kill). Then the killed agent starts again, follows the new leader, and is demoted:
//! two managers again, and the next round promotes it. After the last round the worker
//! among h1-h3 is promoted again, so the lab ends with the three managers it began with.
use std::time::Instant;

use anyhow::{anyhow, bail, Result};

use super::{
    cluster::{wait, Cluster, MANAGERS, SETTLE},
    kill::HEAL_TARGET_SECS,
    load::Fault,
};
use crate::bench::Report;

/// Rounds: the 20.
const ROUNDS: usize = 20;

/// One node's row of `node ls`: its hostname, whether it is Ready, its manager status
/// (`Leader`, `Reachable`, `Unreachable`, or empty for a worker).
struct Row {
    host: String,
    ready: bool,
    manager: Option<String>,
}

/// The rows of `node ls` on `asked`.
fn node_ls(cluster: &Cluster, asked: &str) -> Result<Vec<Row>> {
    let out = cluster.shoal(asked, &["node", "ls"])?;
    let mut rows = Vec::new();
    for line in out.lines().skip(1) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(host) = words.iter().find(|w| cluster.state.host(w).is_ok()) else {
            continue;
        };
        rows.push(Row {
            host: (*host).to_owned(),
            ready: words.contains(&"Ready"),
            manager: words
                .iter()
                .find(|w| matches!(**w, "Leader" | "Reachable" | "Unreachable"))
                .map(|w| (*w).to_owned()),
        });
    }
    Ok(rows)
}

/// The leader and the managers (sorted), as the first of h1-h3 that answers `node ls`
/// sees them, once every node is Ready, `want` managers are listed, all of them Leader
/// or Reachable.
fn settled(cluster: &Cluster, want: usize) -> Result<(String, Vec<String>)> {
    let mut seen = Vec::new();
    for m in cluster.state.hosts.iter().take(MANAGERS) {
        let rows = match node_ls(cluster, &m.name) {
            Ok(rows) => rows,
            Err(e) => {
                seen.push(format!("{}: {e:#}", m.name));
                continue;
            }
        };
        let mut managers: Vec<String> = rows
            .iter()
            .filter(|r| r.manager.is_some())
            .map(|r| r.host.clone())
            .collect();
        managers.sort();
        let leader = rows
            .iter()
            .find(|r| r.manager.as_deref() == Some("Leader"))
            .map(|r| r.host.clone());
        let all_ready = rows.len() == cluster.state.hosts.len() && rows.iter().all(|r| r.ready);
        let all_answer = rows
            .iter()
            .filter(|r| r.manager.is_some())
            .all(|r| r.manager.as_deref() != Some("Unreachable"));
        match leader {
            Some(leader) if all_ready && all_answer && managers.len() == want => {
                return Ok((leader, managers))
            }
            _ => seen.push(format!(
                "{}: {} nodes, {} Ready, managers {managers:?}, leader {leader:?}",
                m.name,
                rows.len(),
                rows.iter().filter(|r| r.ready).count()
            )),
        }
    }
    bail!("{}", seen.join("; "))
}

/// Waits (up to [`SETTLE`]) for [`settled`] with `want` managers.
fn wait_settled(cluster: &Cluster, want: usize, why: &str) -> Result<(String, Vec<String>)> {
    wait(
        &format!("{why}: every node Ready, {want} managers answering, a leader"),
        SETTLE,
        || settled(cluster, want),
    )
}

/// `node promote`/`node demote` of `node` through `via`.
fn set_role(cluster: &Cluster, via: &str, verb: &str, node: &str) -> Result<()> {
    cluster
        .shoal(via, &["node", verb, node])
        .map(|_| ())
        .map_err(|e| anyhow!("`node {verb} {node}` through {via}: {e:#}"))
}

/// The scenario (see the module's comment).
pub fn promote_kill(cluster: &mut Cluster, report: &mut Report) -> Result<Vec<Fault>> {
    // The starting shape: h1 and a manager made by `node promote`.
    let (leader, managers) = wait_settled(cluster, MANAGERS, "promote_kill start")?;
    for m in managers.iter().filter(|m| **m != leader) {
        set_role(cluster, &leader, "demote", m)?;
    }
    let (leader, _) = wait_settled(cluster, 1, "promote_kill: the others demoted")?;
    let second = cluster
        .state
        .hosts
        .iter()
        .take(MANAGERS)
        .map(|h| h.name.clone())
        .find(|h| *h != leader)
        .ok_or_else(|| anyhow!("no second host among the first {MANAGERS}"))?;
    set_role(cluster, &leader, "promote", &second)?;
    wait_settled(cluster, 2, "promote_kill: the second manager promoted")?;

    let mut faults = Vec::new();
    let mut writes = Vec::new();
    let mut promotes = Vec::new();
    let mut restores = Vec::new();
    let mut failed_rounds = Vec::new();
    for round in 1..=ROUNDS {
        let (leader, managers) = wait_settled(cluster, 2, &format!("round {round}"))?;
        let worker = cluster
            .state
            .hosts
            .iter()
            .take(MANAGERS)
            .map(|h| h.name.clone())
            .find(|h| !managers.contains(h))
            .ok_or_else(|| anyhow!("round {round}: no worker among the first {MANAGERS}"))?;
        let asked = Instant::now();
        set_role(cluster, &leader, "promote", &worker)?;
        let promote = asked.elapsed().as_secs_f64();
        let killed = Instant::now();
        cluster.stop_agent(&leader, libc::SIGKILL)?;
        let survivors: Vec<String> = managers
            .iter()
            .filter(|m| **m != leader)
            .cloned()
            .chain([worker.clone()])
            .collect();
        let label = format!("chaos=promote-kill-{round}");
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
        let (via, write) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // No new leader within a minute: the round failed, and the lab may not
                // come back; stop here.
                println!("chaos: promote_kill round {round}: {e:#}");
                bail!("round {round}: promoted {worker}, killed {leader}: {e:#}");
            }
        };
        let verdict = if write <= HEAL_TARGET_SECS {
            "pass"
        } else {
            failed_rounds.push(round);
            "FAIL"
        };
        println!(
            "chaos: promote_kill round {round}: promoted {worker} in {promote:.3} s, killed \
             {leader}'s agent; write accepted through {via} after {write:.3} s; {verdict}"
        );
        // Back to two managers: the killed one, once it follows, is demoted. A demotion
        // refused for want of a quorum (a starved machine) is asked again, and each
        // refusal said.
        wait_settled(cluster, MANAGERS, &format!("round {round}: {leader} back"))?;
        let mut refusals = 0;
        wait(&format!("round {round}: {leader} demoted"), SETTLE, || {
            let (now_leader, _) = settled(cluster, MANAGERS)?;
            set_role(cluster, &now_leader, "demote", &leader).inspect_err(|e| {
                refusals += 1;
                println!("chaos: promote_kill round {round}: {e:#}");
            })
        })?;
        let (new_leader, _) =
            wait_settled(cluster, 2, &format!("round {round}: {leader} demoted"))?;
        let restore = restarted.elapsed().as_secs_f64();
        println!(
            "chaos: promote_kill round {round}: {leader} back and demoted in {restore:.3} s \
             ({refusals} demotions refused); leader {new_leader}"
        );
        report.figure(
            &format!("promote_kill_round{round}_demote_refusals"),
            refusals as f64,
            "refusals",
        );
        report.figure(&format!("promote_kill_round{round}_promote"), promote, "s");
        report.figure(&format!("promote_kill_round{round}_new_leader"), write, "s");
        writes.push(write);
        promotes.push(promote);
        restores.push(restore);
    }
    // Back to the lab's shape: h1-h3 managers.
    let (leader, managers) = wait_settled(cluster, 2, "promote_kill end")?;
    if let Some(worker) = cluster
        .state
        .hosts
        .iter()
        .take(MANAGERS)
        .map(|h| h.name.clone())
        .find(|h| !managers.contains(h))
    {
        set_role(cluster, &leader, "promote", &worker)?;
    }
    wait_settled(cluster, MANAGERS, "promote_kill: three managers again")?;

    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (write_median, write_max) = median(&mut writes);
    let (promote_median, promote_max) = median(&mut promotes);
    let (_, restore_max) = median(&mut restores);
    report.figure("promote_kill_new_leader_median", write_median, "s");
    report.figure("promote_kill_new_leader_max", write_max, "s");
    report.figure("promote_kill_promote_median", promote_median, "s");
    report.figure("promote_kill_promote_max", promote_max, "s");
    report.figure("promote_kill_restore_max", restore_max, "s");
    report.ratio(
        "promote_kill_rounds_passed",
        (ROUNDS - failed_rounds.len()) as f64,
        ">=",
        ROUNDS as f64,
    );
    report.ratio(
        "promote_kill_new_leader_max",
        write_max,
        "<=",
        HEAL_TARGET_SECS,
    );
    if !failed_rounds.is_empty() {
        println!(
            "chaos: promote_kill: rounds {failed_rounds:?}: no write accepted within \
             {HEAL_TARGET_SECS} s of the kill"
        );
    }
    Ok(faults)
}
