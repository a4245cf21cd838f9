//! The in-process part of `cargo xtask bench gossip`: clusters of 100 and 1,000 nodes on
//! the in-memory network, every packet sealed and opened as on the wire, default timings
//! (gossip every 200 ms), real time on a 2-thread runtime. Prints `BENCH gossip ...`
//! lines; the xtask turns them into ratios.
//!
//! Per size: the time for the whole cluster to converge from a cold start, the time for
//! one new endpoint to reach every node (p50/p99 over trials), the time for a crashed
//! node to leave every node's table (median and max over trials), and at 100 nodes the
//! longest blip (a node cut off, then back) that no node reacted to.
//!
//! `gossip_bench [SIZES...]` (default `100 1000`).
use std::time::Duration;

use tokio::time::Instant;

use shoal_gossip::{
    sim::{endpoint, gossip_addr, node_id, SimCluster, SEEDS},
    Timing,
};

fn figure(name: &str, value: f64, unit: &str) {
    println!("BENCH gossip {name} {value:.3} {unit}");
}

/// CPU seconds this process used so far (all threads).
fn cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value, and getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v
}

/// A small deterministic sequence of node indices (not seeds), distinct per trial.
fn pick(n: usize, trial: usize) -> usize {
    SEEDS + (trial * 7919 + 13) % (n - SEEDS)
}

/// Wall time a size may take to converge before it is reported as too heavy.
const CONVERGE_BUDGET: Duration = Duration::from_secs(600);

async fn run(n: usize, clock: &str) -> anyhow::Result<()> {
    let wall = std::time::Instant::now();
    let cpu0 = cpu_seconds();
    let timing = Timing::default();
    let (spread_trials, dead_trials) = if n <= 100 { (20, 5) } else { (3, 2) };
    let limit = Duration::from_secs(if n <= 100 { 60 } else { 300 });
    eprintln!("gossip bench: starting {n} nodes");
    let start = Instant::now();
    let mut cluster = SimCluster::start(n, timing.clone()).await?;
    cluster.give_up_at = Some(wall + CONVERGE_BUDGET);
    cluster.publish_all(1).await?;
    // Progress every 2 s of protocol time: how far the slowest node is.
    let took = loop {
        match cluster.wait_converged(1, Duration::from_secs(2)).await {
            Ok(_) => break start.elapsed(),
            Err(behind) => {
                let least = cluster
                    .live()
                    .map(|(_, g)| g.table().len())
                    .min()
                    .unwrap_or(0);
                eprintln!(
                    "gossip bench: {:.0} s: {} of {n} nodes still behind, the furthest knows {least} endpoints ({:.0} s wall)",
                    start.elapsed().as_secs_f64(),
                    behind.len(),
                    wall.elapsed().as_secs_f64()
                );
                anyhow::ensure!(start.elapsed() < limit, "{n} nodes did not converge");
                if wall.elapsed() > CONVERGE_BUDGET {
                    // Too heavy for this machine: say how far it got and at what cost.
                    let protocol = start.elapsed().as_secs_f64();
                    let cpu = cpu_seconds() - cpu0;
                    eprintln!(
                        "gossip bench: {n} nodes{clock}: not converged within {CONVERGE_BUDGET:?} of wall \
                         time ({protocol:.0} s of protocol time, {cpu:.0} CPU s); no further figures"
                    );
                    figure(
                        &format!("unconverged_nodes_{n}{clock}"),
                        behind.len() as f64,
                        "nodes",
                    );
                    figure(
                        &format!("protocol_seconds_reached_{n}{clock}"),
                        protocol,
                        "s",
                    );
                    figure(
                        &format!("cpu_per_protocol_second_{n}{clock}"),
                        cpu / protocol.max(1e-3),
                        "s/s",
                    );
                    for g in cluster.nodes.drain(..).flatten() {
                        g.kill();
                    }
                    return Ok(());
                }
            }
        }
    };
    eprintln!("gossip bench: {n} nodes converged after {took:?}");
    cluster.give_up_at = None;
    figure(
        &format!("cold_converge_{n}{clock}"),
        took.as_secs_f64(),
        "s",
    );
    // Let heartbeat intervals settle before measuring failure detection.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut spread = Vec::new();
    for trial in 0..spread_trials {
        let i = pick(n, trial);
        let id = format!("b{trial}");
        let ep = endpoint(i, 10 + trial);
        let t0 = Instant::now();
        cluster.node(i).publish(&id, &ep).await?;
        let nid = node_id(i);
        cluster
            .wait_all(limit, |_, t| t.get(&nid, &id).is_some())
            .await
            .map_err(|nodes| anyhow::anyhow!("endpoint never reached {} nodes", nodes.len()))?;
        spread.push(t0.elapsed().as_secs_f64());
    }
    let spread = sorted(spread);
    eprintln!("gossip bench: {n} nodes, endpoint spread {spread:?}");
    figure(
        &format!("endpoint_spread_{n}{clock}_p50"),
        percentile(&spread, 0.5),
        "s",
    );
    figure(
        &format!("endpoint_spread_{n}{clock}_p99"),
        percentile(&spread, 0.99),
        "s",
    );

    let mut dead = Vec::new();
    for trial in 0..dead_trials {
        let i = pick(n, 1000 + trial);
        let nid = node_id(i);
        let t0 = Instant::now();
        cluster.kill(i);
        cluster
            .wait_all(limit, |_, t| !t.contains_node(&nid))
            .await
            .map_err(|nodes| anyhow::anyhow!("dead node still listed by {} nodes", nodes.len()))?;
        dead.push(t0.elapsed().as_secs_f64());
        // Back, so the cluster keeps its size; wait for it to be everywhere again.
        cluster.restart(i).await?;
        cluster.node(i).publish("e0", &endpoint(i, 0)).await?;
        cluster
            .wait_all(limit, |_, t| t.contains_node(&nid))
            .await
            .map_err(|nodes| anyhow::anyhow!("restarted node missing on {}", nodes.len()))?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let dead = sorted(dead);
    eprintln!("gossip bench: {n} nodes, dead node withdrawn after {dead:?}");
    figure(
        &format!("dead_withdrawn_{n}{clock}_median"),
        percentile(&dead, 0.5),
        "s",
    );
    figure(
        &format!("dead_withdrawn_{n}{clock}_max"),
        percentile(&dead, 1.0),
        "s",
    );

    if n <= 100 {
        // The longest blip no node reacts to, in 0.5 s steps.
        let mut tolerated = 0.0;
        for (step, blip_ms) in [500u64, 1000, 1500, 2000, 2500, 3000]
            .into_iter()
            .enumerate()
        {
            let i = pick(n, 2000 + step);
            let nid = node_id(i);
            tokio::time::sleep(Duration::from_secs(3)).await;
            cluster.net.isolate(gossip_addr(i));
            let t0 = Instant::now();
            let mut dropped = false;
            while t0.elapsed() < Duration::from_millis(blip_ms) + Duration::from_secs(3) {
                if t0.elapsed() >= Duration::from_millis(blip_ms) {
                    cluster.net.heal();
                }
                if cluster
                    .live()
                    .any(|(j, g)| j != i && !g.table().contains_node(&nid))
                {
                    dropped = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            cluster.net.heal();
            eprintln!(
                "gossip bench: {blip_ms} ms blip: {}",
                if dropped {
                    "node dropped"
                } else {
                    "no reaction"
                }
            );
            if dropped {
                // Wait for it to be back before going on.
                cluster
                    .wait_all(limit, |_, t| t.contains_node(&nid))
                    .await
                    .map_err(|nodes| anyhow::anyhow!("blipped node missing on {}", nodes.len()))?;
                break;
            }
            tolerated = blip_ms as f64 / 1000.0;
        }
        figure(&format!("blip_tolerated_{n}{clock}"), tolerated, "s");
    }
    let (delivered, lost) = cluster.net.stats();
    let dropped: u64 = cluster
        .live()
        .map(|(_, g)| g.counters().packets_dropped())
        .sum();
    eprintln!("gossip bench: {n} nodes: {delivered} datagrams delivered, {lost} lost (cuts, full queues), {dropped} dropped by receivers");
    figure(
        &format!("datagrams_per_node_s_{n}{clock}"),
        delivered as f64 / n as f64 / start.elapsed().as_secs_f64(),
        "datagrams/s",
    );
    let protocol = start.elapsed().as_secs_f64();
    let real = wall.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    eprintln!(
        "gossip bench: {n} nodes{clock}: {protocol:.1} s of protocol time took {real:.1} s of \
         wall time and {cpu:.1} CPU s"
    );
    figure(
        &format!("cpu_per_protocol_second_{n}{clock}"),
        cpu / protocol,
        "s/s",
    );
    cluster.shutdown().await;
    Ok(())
}

/// `gossip_bench [SIZE[v]...]`: a size alone runs in real time on two threads; with a `v`
/// suffix it runs in tokio's paused (virtual) time on one thread: timers fire when every
/// node is idle, so the figures are protocol time, as if every node had a CPU of its own
/// (the only way 1,000 nodes fit on this machine), and `wall_per_protocol_second` says
/// what that took.
fn main() -> anyhow::Result<()> {
    let mut sizes: Vec<(usize, bool)> = Vec::new();
    for arg in std::env::args().skip(1) {
        let (num, virt) = match arg.strip_suffix('v') {
            Some(num) => (num, true),
            None => (arg.as_str(), false),
        };
        sizes.push((num.parse()?, virt));
    }
    if sizes.is_empty() {
        sizes = vec![(100, false), (100, true), (300, true), (1000, true)];
    }
    for (n, virt) in sizes {
        anyhow::ensure!(n > SEEDS, "a cluster needs more than {SEEDS} nodes");
        let rt = if virt {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()?
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
        };
        rt.block_on(run(n, if virt { "_virtual" } else { "" }))?;
    }
    Ok(())
}
