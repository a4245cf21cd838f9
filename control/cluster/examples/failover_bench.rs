//! `cargo xtask bench cluster` runs this (release): three managers in this process on
//! 127.0.0.1, real mutual TLS on ephemeral ports, the default [`Timings`] (what the agent
//! ships: Raft heartbeats every 200 ms, election timeout 1–2 s), and prints
//! `BENCH cluster <name> <value> <unit>` lines.
//!
//! - Failover, [`ROUNDS`] times: the leader is stopped abruptly ([`Manager::shutdown`]:
//!   its tasks are aborted and its Raft member stopped, nothing is handed over; the
//!   in-process stand-in for SIGKILL), and the clock runs until a survivor that knows it is
//!   the new leader has applied a write. Survivors' views of the leader are sampled every
//!   few milliseconds from the stop until the stopped manager has been resumed and the
//!   group has settled again; every change of leader beyond the one the stop forces is
//!   counted as flapping (`extra_leader_changes`).
//! - Write latency: [`WRITES`] sequential `execute`s of a one-label update on the leader,
//!   then as many through a follower (which forwards them to the leader over mTLS).
//!
//! What to expect: openraft 0.9 makes a follower that knows a committed leader wait for
//! the leader lease (= the election timeout's maximum, 2 s) plus a random election timeout
//! (1–2 s) before it campaigns, so a new leader takes 3–4 s, not 1–2 s.
//!
//! Everything lives in a temporary directory, removed at the end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_cluster::manager::{
    join_with, InitOptions, Joined, Manager, ManagerConfig, ManagerStatus, NodeInfo, Role, Timings,
};
use shoal_cluster::store::{ApplyResult, Command};

/// Leader stops timed (the figures are their median and maximum).
const ROUNDS: usize = 7;
/// Sequential writes timed, on the leader and through a follower.
const WRITES: usize = 500;
/// Bound on anything that should happen soon.
const BOUND: Duration = Duration::from_secs(60);
/// How long the views are still watched once a round's new leader has written, and once
/// the stopped manager is back: more than an election timeout, so a second election
/// would be seen.
const SETTLE: Duration = Duration::from_secs(3);

type Res<T> = Result<T, String>;

struct TempBase(PathBuf);

impl Drop for TempBase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn info(hostname: &str) -> NodeInfo {
    NodeInfo {
        hostname: hostname.to_string(),
        engine_version: "bench".to_string(),
        resources: Default::default(),
        addr: "127.0.0.1".parse().unwrap(),
        data_path_addr: None,
        labels: BTreeMap::new(),
    }
}

fn config(base: &TempBase, name: &str) -> ManagerConfig {
    ManagerConfig {
        data_dir: base.0.join(name),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: "127.0.0.1:0".parse().unwrap(),
    }
}

fn label(node: &str, value: usize) -> Command {
    Command::UpdateNodeLabels {
        id: node.to_string(),
        add: BTreeMap::from([("bench".to_string(), value.to_string())]),
        remove: vec![],
    }
}

async fn write(m: &Manager, node: &str, value: usize) -> Res<()> {
    match m.execute(label(node, value)).await {
        Ok(ApplyResult::Applied { .. }) => Ok(()),
        Ok(other) => Err(format!("refused: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The running managers, by slot; `None` while one is stopped.
type Slots = Arc<Mutex<Vec<Option<Manager>>>>;

fn running(slots: &Slots) -> Vec<Manager> {
    slots.lock().unwrap().iter().flatten().cloned().collect()
}

/// Waits until all three managers agree: one Leader, two Reachable. Returns the leader's
/// slot.
async fn settled(slots: &Slots) -> Res<usize> {
    let start = Instant::now();
    let mut seen = String::new();
    while start.elapsed() < BOUND {
        let ms = running(slots);
        if ms.len() == 3 {
            if let Ok(state) = ms[0].state().await {
                let st = ms[0].manager_status(&state);
                let leaders: Vec<&String> = st
                    .iter()
                    .filter(|(_, s)| **s == ManagerStatus::Leader)
                    .map(|(id, _)| id)
                    .collect();
                let agreed = ms
                    .iter()
                    .all(|m| m.leader().as_ref() == leaders.first().copied());
                if leaders.len() == 1
                    && st.len() == 3
                    && agreed
                    && st.values().all(|s| *s != ManagerStatus::Unreachable)
                {
                    let slots = slots.lock().unwrap();
                    return slots
                        .iter()
                        .position(|m| m.as_ref().is_some_and(|m| m.node_id() == leaders[0]))
                        .ok_or_else(|| "the leader is not one of ours".to_string());
                }
                seen = format!("{st:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!(
        "the managers did not settle within {BOUND:?}: {seen}"
    ))
}

/// Samples every running manager's view of the leader; counts, per manager, how often
/// it changes from one known leader to another (a manager that was down starts counting
/// from the first leader it knows).
struct Watch {
    changes: Arc<Mutex<BTreeMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    fn start(slots: Slots) -> Watch {
        let changes = Arc::new(Mutex::new(BTreeMap::new()));
        let counted = changes.clone();
        let task = tokio::spawn(async move {
            let mut last: BTreeMap<String, String> = BTreeMap::new();
            loop {
                for m in running(&slots) {
                    if let Some(l) = m.leader() {
                        let me = m.node_id().to_string();
                        if let Some(prev) = last.insert(me.clone(), l.clone()) {
                            if prev != l {
                                *counted.lock().unwrap().entry(me).or_insert(0) += 1;
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Watch { changes, task }
    }

    /// The most changes any one manager saw.
    fn stop(self) -> usize {
        self.task.abort();
        let changes = self.changes.lock().unwrap();
        changes.values().copied().max().unwrap_or(0)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

async fn bench(base: &TempBase) -> Res<()> {
    let timings = Timings::default();
    eprintln!(
        "bench cluster: 3 managers in-process on 127.0.0.1 (mTLS), election timeout {:?}..{:?}, raft heartbeat {:?}",
        timings.election_timeout_min, timings.election_timeout_max, timings.raft_heartbeat_interval
    );
    let names = ["m1", "m2", "m3"];
    let m1 = Manager::init_with(
        config(base, names[0]),
        info(names[0]),
        InitOptions::default(),
        timings.clone(),
    )
    .await
    .map_err(|e| format!("init: {e}"))?;
    let token = m1
        .join_token(Role::Manager)
        .await
        .map_err(|e| e.to_string())?;
    let mut managers = vec![m1.clone()];
    for name in &names[1..] {
        match join_with(
            m1.advertise_addr(),
            &token.expose_secret(),
            config(base, name),
            info(name),
            timings.clone(),
        )
        .await
        .map_err(|e| format!("join {name}: {e}"))?
        {
            Joined::Manager(m) => managers.push(m),
            Joined::Worker(_) => return Err(format!("{name} joined as a worker")),
        }
    }
    let target = m1.node_id().to_string();
    let slots: Slots = Arc::new(Mutex::new(managers.into_iter().map(Some).collect()));

    let mut failovers = Vec::new();
    let mut extra_changes = 0usize;
    for round in 0..ROUNDS {
        let leader_slot = settled(&slots).await?;
        let watch = Watch::start(slots.clone());
        // Let the watch see everyone's current leader first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stopped = slots.lock().unwrap()[leader_slot].take().unwrap();
        let stopped_id = stopped.node_id().to_string();
        let resume_config = ManagerConfig {
            data_dir: config(base, names[leader_slot]).data_dir,
            listen: stopped.listen_addr(),
            advertise: stopped.advertise_addr(),
        };
        let t0 = Instant::now();
        stopped.shutdown().await;
        let shutdown_took = t0.elapsed();
        let mut known: Option<Duration> = None;
        // Until a survivor knows it leads and has applied a write.
        let took = loop {
            if t0.elapsed() > BOUND {
                return Err(format!("round {round}: no new leader within {BOUND:?}"));
            }
            let leader = running(&slots)
                .into_iter()
                .find(|m| m.leader().as_deref() == Some(m.node_id()) && m.node_id() != stopped_id);
            if leader.is_some() && known.is_none() {
                known = Some(t0.elapsed());
            }
            match leader {
                Some(m) if write(&m, &target, round).await.is_ok() => break t0.elapsed(),
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        };
        eprintln!(
            "bench cluster: round {}: {} stopped (in {:.3} s), a new leader known after {:.3} s, wrote after {:.3} s",
            round + 1,
            names[leader_slot],
            shutdown_took.as_secs_f64(),
            known.unwrap_or_default().as_secs_f64(),
            took.as_secs_f64()
        );
        failovers.push(took.as_secs_f64());
        tokio::time::sleep(SETTLE).await;
        let back = Manager::resume(resume_config)
            .await
            .map_err(|e| format!("resume {}: {e}", names[leader_slot]))?;
        slots.lock().unwrap()[leader_slot] = Some(back);
        settled(&slots).await?;
        tokio::time::sleep(SETTLE).await;
        let changes = watch.stop();
        if changes != 1 {
            eprintln!(
                "bench cluster: round {}: a manager saw {changes} leader changes",
                round + 1
            );
        }
        extra_changes += changes.saturating_sub(1);
    }
    let failovers = sorted(failovers);
    println!(
        "BENCH cluster failover_median {:.3} s",
        percentile(&failovers, 0.5)
    );
    println!(
        "BENCH cluster failover_max {:.3} s",
        failovers[failovers.len() - 1]
    );
    println!("BENCH cluster failover_rounds {ROUNDS} count");
    println!("BENCH cluster extra_leader_changes {extra_changes} count");

    let leader_slot = settled(&slots).await?;
    let ms = slots.lock().unwrap().clone();
    let leader = ms[leader_slot].clone().unwrap();
    let follower = ms
        .iter()
        .enumerate()
        .find(|(i, _)| *i != leader_slot)
        .and_then(|(_, m)| m.clone())
        .unwrap();
    for (via, m) in [("leader", &leader), ("follower", &follower)] {
        // Warm up the connections first.
        for i in 0..20 {
            write(m, &target, i).await?;
        }
        let mut lat = Vec::with_capacity(WRITES);
        for i in 0..WRITES {
            let t = Instant::now();
            write(m, &target, i).await?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let lat = sorted(lat);
        println!(
            "BENCH cluster write_{via}_p50 {:.3} ms",
            percentile(&lat, 0.5)
        );
        println!(
            "BENCH cluster write_{via}_p99 {:.3} ms",
            percentile(&lat, 0.99)
        );
    }

    for m in running(&slots) {
        m.shutdown().await;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> std::process::ExitCode {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let base = TempBase(std::env::temp_dir().join(format!(
        "shoal-failover-bench-{}-{nanos}",
        std::process::id()
    )));
    std::fs::create_dir_all(&base.0).expect("a temporary directory");
    let result = bench(&base).await;
    drop(base);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench cluster: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
