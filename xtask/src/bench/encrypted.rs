//! `cargo xtask bench encrypted`: an encrypted overlay network against a plain one and
//! against the underlay, in one 2-host shoal cluster, in the same run.
//!
//! ```text
//!  h1: task of e (network enc, --opt encrypted) ── WireGuard (userspace) ──▶ h2: task of e
//!      task of p (network pln)                  ── VXLAN ───────────────▶     task of p
//!      host namespace                           ── underlay ─────────────▶     host
//! ```
//! Two global services (`e` on `enc`, `p` on `pln`), one task per host. iperf3 (one TCP
//! stream, 5 s) from h1's task to h2's on each network, and host to host, [`ROUNDS`]
//! rounds alternating between the three; medians compared. Target: encrypted >= 0.5x
//! plain overlay (Swarm's IPsec overlay is reported as low as 0.01x). Each round also
//! runs [`STREAMS`] parallel streams on the encrypted and the plain network (figures
//! only, no target): flows that the device's `wg-out` workers can share.
//!
//! Where the time goes: the CPU time the agents' WireGuard threads (`wg-out`, `wg-in`)
//! spent during the encrypted runs (from `/proc/<agent>/task/*/stat`), per packet they
//! handled (the devices' counters in `wireguard.json`), on both hosts. That includes
//! the kernel's work done inside the threads' system calls (a write into the TUN runs
//! the inner receive path; a send on the lab's veth underlay runs the receiving host's
//! delivery); `dataplane/examples/wireguard_cost_bench.rs` gives the encryption alone.
//!
//! The agents are a release build (as users run them; the kernel paths compared are
//! optimized too).
use std::{
    fs,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{iperf, iperf_streams, Report};
use crate::lab::{self, LabState, Layout};

const ROUNDS: usize = 3;
/// Parallel streams of the second figure: several flows spread over the `wg-out`
/// workers (one flow always stays on one).
const STREAMS: u32 = 4;
const LIMIT: Duration = Duration::from_secs(180);
const ENC_SUBNET: &str = "10.0.91.";
const PLN_SUBNET: &str = "10.0.92.";

pub(super) fn run() -> Result<ExitCode> {
    let mut report = Report {
        suite: "encrypted",
        ..Default::default()
    };
    let shoal = super::release_shoal("encrypted")?;
    let layout = Layout::new("benchenc")?;
    if !lab::leftovers(&layout).is_empty() {
        lab::down(&layout)?;
    }
    let state = lab::up(&layout, 2)?;
    let result = measure(&state, &shoal, &mut report);
    let down = lab::down(&layout);
    result?;
    down?;
    report.finish()
}

fn shoal(state: &LabState, host: &str, args: &[&str]) -> Result<String> {
    let mut argv = vec!["shoal"];
    argv.extend_from_slice(args);
    lab::exec_output(state, host, &argv)
}

fn wait<T>(what: &str, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if t0.elapsed() > LIMIT {
            bail!("{what}: not within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The PID of the task container of `service` on `host`, once one runs.
fn task_pid(state: &LabState, host: &str, service: &str) -> Result<String> {
    wait(&format!("a task of {service} running on {host}"), || {
        let names = lab::exec_output(state, host, &["docker", "ps", "--format", "{{.Names}}"])?;
        let Some(name) = names
            .lines()
            .find(|n| n.starts_with(&format!("{service}.")))
        else {
            return Ok(None);
        };
        let pid = lab::exec_output(
            state,
            host,
            &["docker", "inspect", "-f", "{{.State.Pid}}", name],
        )?;
        Ok((pid.trim() != "0").then(|| pid.trim().to_string()))
    })
}

/// The address in `prefix`* of the namespace of process `pid`.
fn address(pid: &str, prefix: &str) -> Result<String> {
    wait(
        &format!("process {pid} has an address in {prefix}*"),
        || {
            let out = std::process::Command::new("nsenter")
                .args(["-t", pid, "-n", "ip", "-4", "-o", "addr"])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok(text
                .split_whitespace()
                .filter_map(|w| w.split('/').next())
                .find(|a| a.starts_with(prefix))
                .map(str::to_string))
        },
    )
}

/// CPU time (ns) of the agent's threads named `name`, from /proc.
fn thread_cpu_ns(agent_pid: u32, name: &str) -> u64 {
    let tick_ns = 1e9 / 100.0; // USER_HZ
    let Ok(dir) = fs::read_dir(format!("/proc/{agent_pid}/task")) else {
        return 0;
    };
    let mut total = 0.0;
    for t in dir.flatten() {
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: utime is the 12th, stime the 13th.
        let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        total += ticks * tick_ns;
    }
    total as u64
}

/// The devices' packet counters on `host` (sent, received), from its `wireguard.json`.
fn wg_packets(state: &LabState, i: usize) -> (u64, u64) {
    let path = state.hosts[i].run_dir.join("agent/wireguard.json");
    let v: Value = fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let sum = |k: &str| {
        v["peers"]
            .as_array()
            .map(|p| p.iter().filter_map(|x| x[k].as_u64()).sum())
            .unwrap_or(0)
    };
    (sum("tx_packets"), sum("rx_packets"))
}

fn agent_pid(state: &LabState, i: usize) -> Result<u32> {
    let v: Value = serde_json::from_slice(&fs::read(lab::agent::status_file(&state.hosts[i]))?)?;
    v["pid"].as_u64().map(|p| p as u32).context("agent pid")
}

fn measure(state: &LabState, shoal_bin: &std::path::Path, report: &mut Report) -> Result<()> {
    for h in &state.hosts {
        lab::agent::start(state, h, shoal_bin, &[])?;
    }
    let addr1 = state.hosts[0].address.to_string();
    shoal(state, "h1", &["swarm", "init", "--advertise-addr", &addr1])?;
    let token = shoal(state, "h1", &["swarm", "join-token", "-q", "worker"])?;
    shoal(
        state,
        "h2",
        &[
            "swarm",
            "join",
            "--token",
            token.trim(),
            &format!("{addr1}:2377"),
        ],
    )?;
    wait("2 nodes Ready", || {
        Ok((shoal(state, "h1", &["node", "ls"])?
            .matches("Ready")
            .count()
            == 2)
            .then_some(()))
    })?;
    let enc_subnet = format!("{ENC_SUBNET}0/24");
    let pln_subnet = format!("{PLN_SUBNET}0/24");
    shoal(
        state,
        "h1",
        &[
            "network",
            "create",
            "--opt",
            "encrypted",
            "--subnet",
            &enc_subnet,
            "enc",
        ],
    )?;
    shoal(
        state,
        "h1",
        &["network", "create", "--subnet", &pln_subnet, "pln"],
    )?;
    for (name, net) in [("e", "enc"), ("p", "pln")] {
        shoal(
            state,
            "h1",
            &[
                "service",
                "create",
                "--detach",
                "--name",
                name,
                "--mode",
                "global",
                "--network",
                net,
                "shoal/web:1",
            ],
        )?;
    }
    let (e1, e2) = (task_pid(state, "h1", "e")?, task_pid(state, "h2", "e")?);
    let (p1, p2) = (task_pid(state, "h1", "p")?, task_pid(state, "h2", "p")?);
    let e2_addr = address(&e2, ENC_SUBNET)?;
    let p2_addr = address(&p2, PLN_SUBNET)?;
    for (pid, to) in [(&e1, &e2_addr), (&p1, &p2_addr)] {
        wait(&format!("{to} answers ping"), || {
            Ok(std::process::Command::new("nsenter")
                .args(["-t", pid, "-n", "ping", "-c", "1", "-W", "1", to])
                .output()?
                .status
                .success()
                .then_some(()))
        })?;
    }
    let (h1, h2) = (state.hosts[0].netns.clone(), state.hosts[1].netns.clone());
    let h2_addr = state.hosts[1].address.to_string();
    let agents = [agent_pid(state, 0)?, agent_pid(state, 1)?];
    let (mut enc, mut pln, mut und) = (Vec::new(), Vec::new(), Vec::new());
    let (mut enc_multi, mut pln_multi) = (Vec::new(), Vec::new());
    let mut cpu_out = 0u64;
    let mut cpu_in = 0u64;
    let mut packets_out = 0u64;
    let mut packets_in = 0u64;
    for round in 0..ROUNDS {
        let cpu = |name: &str| -> u64 { agents.iter().map(|p| thread_cpu_ns(*p, name)).sum() };
        let before = (
            cpu("wg-out"),
            cpu("wg-in"),
            wg_packets(state, 0),
            wg_packets(state, 1),
        );
        enc.push(iperf(
            &["nsenter", "-t", &e2, "-n"],
            &["nsenter", "-t", &e1, "-n"],
            &e2_addr,
        )?);
        let after = (
            cpu("wg-out"),
            cpu("wg-in"),
            wg_packets(state, 0),
            wg_packets(state, 1),
        );
        cpu_out += after.0 - before.0;
        cpu_in += after.1 - before.1;
        packets_out += (after.2 .0 - before.2 .0) + (after.3 .0 - before.3 .0);
        packets_in += (after.2 .1 - before.2 .1) + (after.3 .1 - before.3 .1);
        pln.push(iperf(
            &["nsenter", "-t", &p2, "-n"],
            &["nsenter", "-t", &p1, "-n"],
            &p2_addr,
        )?);
        enc_multi.push(iperf_streams(
            &["nsenter", "-t", &e2, "-n"],
            &["nsenter", "-t", &e1, "-n"],
            &e2_addr,
            STREAMS,
        )?);
        pln_multi.push(iperf_streams(
            &["nsenter", "-t", &p2, "-n"],
            &["nsenter", "-t", &p1, "-n"],
            &p2_addr,
            STREAMS,
        )?);
        und.push(iperf(
            &["ip", "netns", "exec", &h2],
            &["ip", "netns", "exec", &h1],
            &h2_addr,
        )?);
        println!(
            "bench encrypted: round {}: encrypted {:.2} plain {:.2} underlay {:.2} Gbit/s; \
             {STREAMS} streams: encrypted {:.2} plain {:.2} Gbit/s",
            round + 1,
            enc[round] / 1e9,
            pln[round] / 1e9,
            und[round] / 1e9,
            enc_multi[round] / 1e9,
            pln_multi[round] / 1e9
        );
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (e, p, u) = (med(&mut enc), med(&mut pln), med(&mut und));
    report.figure("encrypted_overlay", e / 1e9, "Gbit/s");
    report.figure("plain_overlay", p / 1e9, "Gbit/s");
    report.figure("underlay", u / 1e9, "Gbit/s");
    let (em, pm) = (med(&mut enc_multi), med(&mut pln_multi));
    report.figure("encrypted_overlay_4_streams", em / 1e9, "Gbit/s");
    report.figure("plain_overlay_4_streams", pm / 1e9, "Gbit/s");
    report.figure("enc_vs_plain_4_streams", em / pm, "ratio");
    report.figure(
        "wg_out_cpu_per_packet",
        cpu_out as f64 / packets_out.max(1) as f64,
        "ns",
    );
    report.figure(
        "wg_in_cpu_per_packet",
        cpu_in as f64 / packets_in.max(1) as f64,
        "ns",
    );
    report.figure("wg_packets_out", packets_out as f64, "packets");
    report.figure("wg_packets_in", packets_in as f64, "packets");
    report.figure("enc_vs_underlay", e / u, "ratio");
    report.ratio("enc_vs_plain", e / p, ">=", 0.5);
    Ok(())
}
