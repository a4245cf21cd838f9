//! `disk_full`: a manager's disk runs out of space under load, a follower first, then
//! the leader. The manager's Raft directory (`<data dir>/cluster/raft`, where every
//! write of its store goes) is moved, while its agent is stopped, onto a small tmpfs
//! mounted in that host's own mount namespace (never the machine's disk); the agent
//! starts on it, a filler file takes every free block (ENOSPC), and writes go on
//! through the other managers for [`HOLD`]. The store stops on its failed write
//! (`shoal info`: `Swarm: error`); once the filler is gone the agent starts the manager
//! role again from its directory (ARCHITECTURE.md, "A Raft member that stops on its
//! own"), and it must follow the leader again and hold the same store as the others.
//! Then the directory goes back onto the disk ([`Tmpfs`], also when the scenario fails).
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{
    checks,
    cluster::{wait, Cluster, SETTLE},
    kill::HEAL_TARGET_SECS,
    load::Fault,
};
use crate::bench::Report;

/// How long the disk stays full.
const HOLD: Duration = Duration::from_secs(20);
/// Between two writes through the other managers while the disk is full.
const WRITE_EVERY: Duration = Duration::from_millis(500);
/// Room the tmpfs has beyond what the Raft directory holds when it is moved there.
const ROOM_MIB: u64 = 24;
/// A Raft directory larger than this is not moved to memory (the lab's is a few MiB).
const MAX_RAFT_MIB: u64 = 64;

/// The Raft directory of a host's agent, and where it waits while the tmpfs is mounted.
fn raft_dir(cluster: &Cluster, host: &str) -> Result<(String, String)> {
    let dir = cluster.host(host)?.run_dir.join("agent/cluster/raft");
    let dir = dir.display().to_string();
    Ok((dir.clone(), format!("{dir}.disk")))
}

/// A manager's Raft directory on a tmpfs of its own; dropped, the agent is stopped, the
/// directory copied back onto the disk, the tmpfs unmounted and the agent started
/// again, so the next scenario finds the lab as it was.
struct Tmpfs<'a> {
    cluster: &'a Cluster,
    host: String,
    dir: String,
    saved: String,
    size_mib: u64,
    /// The agent's restarts (to mount, and to unmount), for the load's figures.
    faults: Vec<Fault>,
    mounted: bool,
}

impl<'a> Tmpfs<'a> {
    fn mount(cluster: &'a Cluster, host: &str) -> Result<Tmpfs<'a>> {
        let (dir, saved) = raft_dir(cluster, host)?;
        let used_kib: u64 = cluster
            .exec(host, &["du", "-sk", &dir])?
            .split_whitespace()
            .next()
            .and_then(|k| k.parse().ok())
            .with_context(|| format!("{host}: the size of {dir}"))?;
        let used_mib = used_kib.div_ceil(1024);
        if used_mib > MAX_RAFT_MIB {
            bail!("{host}: {dir} holds {used_mib} MiB, more than the {MAX_RAFT_MIB} MiB moved to memory");
        }
        let size_mib = used_mib + ROOM_MIB;
        let stopped = Instant::now();
        cluster.stop_agent(host, libc::SIGTERM)?;
        let mut t = Tmpfs {
            cluster,
            host: host.to_owned(),
            dir,
            saved,
            size_mib,
            faults: Vec::new(),
            mounted: true,
        };
        // From here on, dropping `t` puts everything back (and starts the agent).
        let script = format!(
            "set -e; mv {d} {s}; mkdir -m 0700 {d}; \
             mount -t tmpfs -o size={size_mib}m,mode=0700 tmpfs {d}; cp -a {s}/. {d}/",
            d = t.dir,
            s = t.saved,
        );
        cluster.exec(host, &["sh", "-c", &script])?;
        cluster.start_agent(host)?;
        t.faults.push(Fault::until_now(host, stopped));
        println!(
            "chaos: disk_full: {host}'s Raft directory ({used_mib} MiB) on a {size_mib} MiB tmpfs"
        );
        Ok(t)
    }

    /// Fills the tmpfs with a filler file until ENOSPC, after checking that the
    /// directory is that small tmpfs; `dd` never writes more than its size, so even a
    /// directory that were not on it could not fill another disk.
    fn fill(&self) -> Result<()> {
        let kind = self
            .cluster
            .exec(&self.host, &["stat", "-f", "-c", "%T %b %S", &self.dir])?;
        let parts: Vec<&str> = kind.split_whitespace().collect();
        let bytes = match parts[..] {
            [_, blocks, size] => {
                blocks.parse::<u64>().unwrap_or(u64::MAX) * size.parse::<u64>().unwrap_or(1)
            }
            _ => u64::MAX,
        };
        if parts.first() != Some(&"tmpfs") || bytes > self.size_mib << 20 {
            bail!("{}: {} is not the small tmpfs: {kind}", self.host, self.dir);
        }
        let script = format!(
            "dd if=/dev/zero of={}/filler bs=1M count={} 2>&1; true",
            self.dir, self.size_mib
        );
        let said = self.cluster.exec(&self.host, &["sh", "-c", &script])?;
        if !said.contains("No space left") {
            bail!("{}: dd did not fill {}: {said}", self.host, self.dir);
        }
        Ok(())
    }

    fn free(&self) -> Result<()> {
        self.cluster
            .exec(&self.host, &["rm", "-f", &format!("{}/filler", self.dir)])
            .map(drop)
    }

    /// Stops the agent, puts its Raft directory back onto the disk, unmounts the
    /// tmpfs and starts the agent again.
    fn restore(&mut self) -> Result<()> {
        if !self.mounted {
            return Ok(());
        }
        let stopped = Instant::now();
        // The agent may be gone already (a failed start): nothing to stop then.
        if self
            .cluster
            .agent_pid(&self.host)
            .is_ok_and(crate::lab::procs::alive)
        {
            self.cluster.stop_agent(&self.host, libc::SIGTERM)?;
        }
        let script = format!(
            "set -e; rm -f {d}/filler; rm -rf {d}.back; mkdir -m 0700 {d}.back; \
             cp -a {d}/. {d}.back/; umount {d}; rmdir {d}; mv {d}.back {d}; rm -rf {s}",
            d = self.dir,
            s = self.saved,
        );
        self.cluster.exec(&self.host, &["sh", "-c", &script])?;
        self.mounted = false;
        self.cluster.start_agent(&self.host)?;
        self.faults.push(Fault::until_now(&self.host, stopped));
        Ok(())
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            eprintln!(
                "chaos: disk_full: putting {}'s Raft directory back: {e:#}",
                self.host
            );
        }
    }
}

/// What one step (one manager's disk full) measured.
struct Step {
    writes_ok: u64,
    writes_refused: u64,
    /// Seconds from the disk full to the store stopping (`Swarm: error`).
    stopped_after: Option<f64>,
    /// Seconds from the disk full to the first write accepted through another manager.
    first_write: Option<f64>,
}

/// The scenario (see the module's comment).
pub fn disk_full(cluster: &mut Cluster, report: &mut Report) -> Result<Vec<Fault>> {
    let mut faults = Vec::new();
    let leader = cluster.wait_leader("disk_full")?;
    let follower = cluster
        .managers()
        .map(|m| m.name.clone())
        .find(|m| *m != leader)
        .context("no follower")?;
    one_manager(cluster, report, "follower", &follower, &mut faults)?;
    checks::nothing_lost(cluster, SETTLE)?;
    let leader = cluster.wait_leader("disk_full, the leader's turn")?;
    one_manager(cluster, report, "leader", &leader, &mut faults)?;
    Ok(faults)
}

/// `host`'s disk full for [`HOLD`] while writes go through the other managers; then
/// room again, and `host` must follow the leader again with the same store.
fn one_manager(
    cluster: &Cluster,
    report: &mut Report,
    role: &str,
    host: &str,
    faults: &mut Vec<Fault>,
) -> Result<()> {
    let others: Vec<String> = cluster
        .managers()
        .map(|m| m.name.clone())
        .filter(|m| m != host)
        .collect();
    let mut tmpfs = Tmpfs::mount(cluster, host)?;
    let measured = full_then_room(cluster, report, role, host, &others, &tmpfs);
    let restored = tmpfs.restore();
    faults.append(&mut tmpfs.faults);
    drop(tmpfs);
    measured?;
    restored?;
    Ok(())
}

fn full_then_room(
    cluster: &Cluster,
    report: &mut Report,
    role: &str,
    host: &str,
    others: &[String],
    tmpfs: &Tmpfs,
) -> Result<()> {
    // The agent was just started on the tmpfs: it follows the leader before the fill.
    cluster.wait_all_ready(SETTLE)?;
    wait(&format!("{host} follows the leader"), SETTLE, || {
        cluster.leader_seen_by(host)
    })?;
    tmpfs.fill()?;
    let full = Instant::now();
    println!("chaos: disk_full: {role} {host}'s Raft directory is full");
    let mut step = Step {
        writes_ok: 0,
        writes_refused: 0,
        stopped_after: None,
        first_write: None,
    };
    let mut refusals = Vec::new();
    let mut n = 0u64;
    while full.elapsed() < HOLD {
        let tick = Instant::now();
        n += 1;
        let via = &others[n as usize % others.len()];
        let label = format!("chaos=disk-full-{role}-{n}");
        match cluster.shoal(via, &["node", "update", "--label-add", &label, "h4"]) {
            Ok(_) => {
                step.writes_ok += 1;
                step.first_write.get_or_insert(full.elapsed().as_secs_f64());
            }
            Err(e) => {
                step.writes_refused += 1;
                if refusals.len() < 3 {
                    refusals.push(format!(
                        "{:.1} s via {via}: {}",
                        full.elapsed().as_secs_f64(),
                        format!("{e:#}").lines().next().unwrap_or("")
                    ));
                }
            }
        }
        if step.stopped_after.is_none() {
            if let Ok(info) = cluster.shoal(host, &["info"]) {
                if info.contains("Swarm: error") {
                    step.stopped_after = Some(full.elapsed().as_secs_f64());
                    let why = info
                        .lines()
                        .find(|l| l.contains("No space") || l.contains("stopped"))
                        .unwrap_or("")
                        .trim()
                        .to_owned();
                    println!(
                        "chaos: disk_full: {host}'s store stopped after {:.1} s: {why}",
                        full.elapsed().as_secs_f64()
                    );
                }
            }
        }
        if let Some(left) = WRITE_EVERY.checked_sub(tick.elapsed()) {
            std::thread::sleep(left);
        }
    }
    tmpfs.free()?;
    let room = Instant::now();
    for r in &refusals {
        println!("chaos: disk_full: write refused {r}");
    }
    println!(
        "chaos: disk_full: {role} {host} full {:.1} s: {} writes accepted through {}, {} refused",
        full.elapsed().as_secs_f64(),
        step.writes_ok,
        others.join(" and "),
        step.writes_refused
    );
    // Back: the role started again from its directory, following the leader.
    let back = wait(
        &format!("{host} a manager following the leader again"),
        SETTLE,
        || {
            let info = cluster.shoal(host, &["info"])?;
            if !info.contains("Swarm: active") || !info.contains("Is Manager: true") {
                bail!("{info}");
            }
            // Its own view names a leader (itself, elected again, is as good).
            cluster.leader_seen_by(host)?;
            Ok(room.elapsed().as_secs_f64())
        },
    )?;
    println!("chaos: disk_full: {host} follows the leader {back:.1} s after the room came back");
    let p = format!("disk_full_{role}");
    report.figure(
        &format!("{p}_writes_accepted"),
        step.writes_ok as f64,
        "writes",
    );
    report.figure(
        &format!("{p}_writes_refused"),
        step.writes_refused as f64,
        "writes",
    );
    report.figure(&format!("{p}_following_again"), back, "s");
    let Some(stopped) = step.stopped_after else {
        bail!("{host}'s store never said it stopped (`Swarm: error`) while its disk was full");
    };
    report.figure(&format!("{p}_store_stopped"), stopped, "s");
    let Some(first) = step.first_write else {
        bail!(
            "no write was accepted through {} while {host}'s disk was full",
            others.join(" or ")
        );
    };
    report.figure(&format!("{p}_first_write"), first, "s");
    if role == "follower" {
        // The two others keep their quorum: no write through them is refused.
        report.ratio(
            &format!("{p}_writes_refused"),
            step.writes_refused as f64,
            "<=",
            0.0,
        );
    } else {
        report.ratio(&format!("{p}_first_write"), first, "<=", HEAL_TARGET_SECS);
    }
    checks::nothing_lost(cluster, SETTLE)?;
    Ok(())
}
