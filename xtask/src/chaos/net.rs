//! Scenarios that cut the network: the leader partitioned from the two other managers
//! (nftables in the leader's namespace), and a host's underlay link down for 30 s (its
//! port on the lab's bridge, in the underlay namespace).
use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    cluster::{wait, Cluster, SETTLE},
    kill::{wait_withdrawn, HEAL_TARGET_SECS, VICTIM_WORKER},
    load::Fault,
};
use crate::bench::Report;

/// How long a partition holds.
const PARTITION_HOLD: Duration = Duration::from_secs(15);
/// How long a host's underlay stays cut.
const CUT_HOLD: Duration = Duration::from_secs(30);
/// The nftables table the partition adds in a host's namespace (and removes).
const TABLE: &str = "shoal_chaos_partition";

/// Runs `nft -f -` with `script` inside a host.
fn nft(cluster: &Cluster, host: &str, script: &str) -> Result<()> {
    let argv = vec!["nft".to_string(), "-f".into(), "-".into()];
    let mut child = crate::lab::exec_command(&cluster.state, host, &argv)?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft")?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{host}: nft failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The leader cut off from the two other managers (every packet between them dropped,
/// both ways, in the leader's namespace); the workers still reach everyone. The two must
/// elect a leader that accepts writes within the target; the old leader must not accept
/// one; once healed, it must follow the new leader.
pub fn partition(cluster: &mut Cluster, report: &mut Report) -> Result<Vec<Fault>> {
    let leader = cluster.wait_leader("partition")?;
    let others: Vec<String> = cluster
        .managers()
        .filter(|m| m.name != leader)
        .map(|m| m.name.clone())
        .collect();
    let addrs: Vec<String> = others
        .iter()
        .map(|o| cluster.host(o).map(|h| h.address.to_string()))
        .collect::<Result<_>>()?;
    let set = addrs.join(", ");
    nft(
        cluster,
        &leader,
        &format!(
            "table inet {TABLE} {{\n\
             chain input {{ type filter hook input priority -300; ip saddr {{ {set} }} drop; }}\n\
             chain output {{ type filter hook output priority -300; ip daddr {{ {set} }} drop; }}\n\
             }}\n"
        ),
    )?;
    let cut = Instant::now();
    println!(
        "chaos: partition: {leader} cut off from {}",
        others.join(" and ")
    );
    let result = partitioned(cluster, report, &leader, &others, cut);
    let healed = Instant::now();
    let removed = nft(cluster, &leader, &format!("delete table inet {TABLE}\n"));
    let faults = vec![Fault::until_now(&leader, cut)];
    result?;
    removed?;
    let rejoin = wait(
        &format!("{leader} follows the new leader after the heal"),
        SETTLE,
        || {
            let seen = cluster.leader_seen_by(&leader)?;
            if seen == leader {
                bail!("{leader} still names itself");
            }
            Ok(healed.elapsed().as_secs_f64())
        },
    )?;
    report.figure("partition_rejoin", rejoin, "s");
    Ok(faults)
}

fn partitioned(
    cluster: &Cluster,
    report: &mut Report,
    leader: &str,
    others: &[String],
    cut: Instant,
) -> Result<()> {
    let via = wait("a write accepted by the majority side", SETTLE, || {
        let mut seen = Vec::new();
        for o in others {
            match cluster.shoal(
                o,
                &["node", "update", "--label-add", "chaos=partition", "h4"],
            ) {
                Ok(_) => return Ok(o.clone()),
                Err(e) => seen.push(format!("{e:#}")),
            }
        }
        bail!("{}", seen.join("; "))
    })?;
    let majority = cut.elapsed().as_secs_f64();
    println!("chaos: partition: write accepted through {via} after {majority:.3} s");
    report.figure("partition_new_leader", majority, "s");
    report.ratio("partition_new_leader", majority, "<=", HEAL_TARGET_SECS);
    // The old leader, alone, must refuse writes.
    match cluster.shoal(
        leader,
        &["node", "update", "--label-add", "chaos=minority", "h4"],
    ) {
        Ok(out) => bail!("{leader}, cut off alone, accepted a write: {out}"),
        Err(e) => println!(
            "chaos: partition: {leader} refuses writes: {}",
            first_line(&e)
        ),
    }
    if cut.elapsed() < PARTITION_HOLD {
        std::thread::sleep(PARTITION_HOLD - cut.elapsed());
    }
    Ok(())
}

fn first_line(e: &anyhow::Error) -> String {
    format!("{e:#}").lines().next().unwrap_or("").to_owned()
}

/// Sets a host's port on the lab's bridge down or up (in the underlay namespace).
fn underlay_link(cluster: &Cluster, host: &str, state: &str) -> Result<()> {
    let out = Command::new("ip")
        .args([
            "-n",
            &cluster.state.underlay_netns,
            "link",
            "set",
            host,
            state,
        ])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "setting {host}'s underlay port {state}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A worker's underlay link down for [`CUT_HOLD`], then up: the other nodes must take its
/// endpoints out of their dataplane within the target, and it must come back on its own.
pub fn underlay_cut(cluster: &mut Cluster, report: &mut Report) -> Result<Vec<Fault>> {
    let victim = cluster.host(VICTIM_WORKER)?.clone();
    underlay_link(cluster, &victim.name, "down")?;
    let cut = Instant::now();
    let withdrawn = wait_withdrawn(cluster, &victim, cut);
    if cut.elapsed() < CUT_HOLD {
        std::thread::sleep(CUT_HOLD - cut.elapsed());
    }
    underlay_link(cluster, &victim.name, "up")?;
    let faults = vec![Fault::until_now(&victim.name, cut)];
    let restored = Instant::now();
    let withdrawn = withdrawn?;
    report.figure("underlay_cut_withdrawn", withdrawn, "s");
    report.ratio("underlay_cut_withdrawn", withdrawn, "<=", HEAL_TARGET_SECS);
    cluster.wait_all_ready(SETTLE)?;
    report.figure(
        "underlay_cut_ready_again",
        restored.elapsed().as_secs_f64(),
        "s",
    );
    Ok(faults)
}
