//! Gossip on a real 3-host lab, through the `shoal` CLI only:
//! - every node of the cluster gossips on UDP 7946 with the cluster key it got from the
//!   managers (its `gossip.json` lists the 3 nodes live);
//! - garbage sent to 7946 from outside the cluster (the lab client) is dropped and
//!   counted, and nothing else changes;
//! - a host whose agent and dockerd die: gossip withdraws its endpoints and backends from
//!   the other hosts' declared files and VXLAN FDBs within [`WITHDRAW_BOUND`] (the
//!   managers' Down comes later), and requests through the remaining hosts stop failing;
//! - it comes back: every host's tables agree again.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use shoal_tests::{
    client_http, lab, privileged,
    tables::{mentions, read_json, tables_agree},
    wait_for, within_figure, LabGuard,
};

const BOUND: Duration = Duration::from_secs(90);
/// A dead host's entries must be gone from the others within this (gossip's detection is
/// about 2-3 s; the executor's pass and the drivers' file poll add under a second).
const WITHDRAW_BOUND: Duration = Duration::from_secs(10);

fn shoal_ok(lab: &LabGuard, h: &str, args: &[&str]) -> String {
    lab.shoal(h, args)
        .unwrap_or_else(|e| panic!("{h}: shoal {} failed: {e}", args.join(" ")))
}

fn gossip_status(h: &lab::HostState) -> serde_json::Value {
    read_json(&h.run_dir.join("agent").join("gossip.json"))
}

fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"][name].as_u64().unwrap_or(0)
}

/// `(running task hostname, node)` of a service, from `service ps`.
fn running(lab: &LabGuard, service: &str) -> Result<Vec<(String, String)>, String> {
    let out = lab.shoal("h1", &["service", "ps", "--no-trunc", service])?;
    let mut lines = out.lines();
    let header = lines.next().ok_or("no header")?;
    let col = |name: &str| header.find(name).ok_or(format!("no {name} column"));
    let (node, desired, current) = (col("NODE")?, col("DESIRED STATE")?, col("CURRENT STATE")?);
    let mut tasks = Vec::new();
    for l in lines {
        let cell = |from: usize, to: usize| l.get(from..to.min(l.len())).unwrap_or("").trim();
        if cell(desired, current) != "Running"
            || !cell(current, l.len()).starts_with("Running")
            || l.contains("\\_")
        {
            continue;
        }
        let id = l.split_whitespace().next().unwrap_or("");
        tasks.push((
            id.chars().take(12).collect(),
            cell(node, desired).to_string(),
        ));
    }
    tasks.sort();
    Ok(tasks)
}

/// The `host=` of one `shoal/web` answer.
fn answered_by(body: &str) -> Option<String> {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("host="))
        .map(str::to_string)
}

fn start_agent(lab: &LabGuard, shoal: &std::path::Path, i: usize) {
    let h = &lab.state.hosts[i];
    lab::agent::start(&lab.state, h, shoal, &[])
        .unwrap_or_else(|e| panic!("start agent on {}: {e:#}", h.name));
}

fn live_nodes(h: &lab::HostState) -> Result<usize, String> {
    let s = gossip_status(h);
    match s["live_nodes"].as_array() {
        Some(a) => Ok(a.len()),
        None => Err(format!("{}: no gossip status yet: {s}", h.name)),
    }
}

#[test]
fn gossip_withdraws_a_dead_host_and_drops_outsiders() {
    if !privileged() {
        return;
    }
    let shoal_bin = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('g', 3);
    for i in 0..3 {
        start_agent(&guard, &shoal_bin, i);
    }
    let lab = &guard;
    let addr = |i: usize| guard.state.hosts[i].address;
    let manager = format!("{}:2377", addr(0));
    shoal_ok(
        lab,
        "h1",
        &["swarm", "init", "--advertise-addr", &addr(0).to_string()],
    );
    let token = shoal_ok(lab, "h1", &["swarm", "join-token", "-q", "worker"])
        .trim()
        .to_owned();
    shoal_ok(lab, "h2", &["swarm", "join", "--token", &token, &manager]);
    shoal_ok(lab, "h3", &["swarm", "join", "--token", &token, &manager]);

    // Every node gossips and sees the other two, under the managers' key.
    let began = Instant::now();
    for h in &guard.state.hosts {
        wait_for(
            &format!("{}: gossip sees 3 nodes", h.name),
            BOUND,
            || match live_nodes(h)? {
                3 => Ok(()),
                n => Err(format!("{n} live: {}", gossip_status(h))),
            },
        );
        let s = gossip_status(h);
        assert_eq!(
            s["primary_key"], 1,
            "{}: the key swarm init made: {s}",
            h.name
        );
        assert_eq!(s["advertise"], format!("{}:7946", h.address), "{s}");
    }
    println!(
        "gossip: 3 nodes see each other {:.1} s after the joins",
        began.elapsed().as_secs_f64()
    );
    // docs/benchmarks.md, "Lab test tests/tests/gossip_lab.rs".
    within_figure(
        "3 nodes live in gossip after the joins",
        began.elapsed(),
        Duration::from_secs_f64(0.8),
    );

    let created = shoal_ok(
        lab,
        "h1",
        &[
            "service",
            "create",
            "--name",
            "gweb",
            "--replicas",
            "3",
            "-p",
            "80:80",
            "shoal/web:1",
        ],
    );
    assert!(created.contains("verify: Service converged"), "{created}");
    let tasks = wait_for("3 gweb tasks on 3 hosts", BOUND, || {
        let t = running(lab, "gweb")?;
        let nodes: BTreeSet<&String> = t.iter().map(|(_, n)| n).collect();
        if t.len() == 3 && nodes.len() == 3 {
            Ok(t)
        } else {
            Err(format!("{t:?}"))
        }
    });
    wait_for("tables agree", BOUND, || tables_agree(lab));
    let all: BTreeSet<String> = tasks.iter().map(|(h, _)| h.clone()).collect();
    let url1 = format!("http://{}:80/", addr(0));
    let mut seen = BTreeSet::new();
    wait_for("h1's published port reaching all 3 tasks", BOUND, || {
        let body = client_http(lab, &url1)?;
        seen.insert(answered_by(&body).ok_or(body)?);
        if seen == all {
            Ok(())
        } else {
            Err(format!("{seen:?} of {all:?}"))
        }
    });

    // Outsiders: garbage, a truncated-looking header and an oversized datagram from the
    // lab client to h1's 7946 are dropped and counted; h1 keeps its peers and tables.
    let h1 = &guard.state.hosts[0];
    let dropped = |s: &serde_json::Value| {
        [
            "oversized",
            "malformed",
            "unknown_key",
            "auth_failed",
            "stale",
            "replayed",
        ]
        .iter()
        .map(|c| counter(s, c))
        .sum::<u64>()
    };
    let before = dropped(&gossip_status(h1));
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for i in range(20):\n    s.sendto(b'garbage %d' % i, ('{a}', 7946))\n\
         s.sendto(bytes(60) , ('{a}', 7946))\n\
         s.sendto(b'x' * 9000, ('{a}', 7946))\n",
        a = addr(0)
    );
    let out = lab.client(&["python3", "-c", &script]);
    assert!(
        out.status.success(),
        "sending garbage: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counted = wait_for("h1 counts the outsider's 22 packets", BOUND, || {
        let s = gossip_status(h1);
        let n = dropped(&s) - before;
        if n >= 22 {
            Ok(s)
        } else {
            Err(format!("{n} counted: {s}"))
        }
    });
    println!(
        "outsider's packets dropped and counted: {}",
        counted["counters"]
    );
    assert_eq!(live_nodes(h1), Ok(3), "h1 kept its peers");
    tables_agree(lab).expect("tables unchanged by the garbage");

    // h3 dies (agent and dockerd): gossip withdraws its entries within the bound.
    let h3 = guard.state.hosts[2].clone();
    let h3_task = tasks
        .iter()
        .find(|(_, n)| n == "h3")
        .map(|(t, _)| t.clone())
        .expect("a task on h3");
    for h in &guard.state.hosts[..2] {
        let m = mentions(lab, h, h3.address);
        assert!(
            m.iter().any(|x| x.contains(": fdb ")) && m.iter().any(|x| x.contains(" backend ")),
            "{}: FDB entries and backends towards h3 before it dies: {m:#?}",
            h.name
        );
    }
    let agent = read_json(&lab::agent::status_file(&h3))["pid"]
        .as_u64()
        .expect("h3's agent pid") as u32;
    lab::procs::signal(agent, libc::SIGKILL);
    let dockerd =
        lab::procs::read_pid_file(&guard.layout.dockerd_pid_file("h3")).unwrap_or(h3.dockerd_pid);
    lab::procs::signal(dockerd, libc::SIGKILL);
    let killed = Instant::now();
    assert!(
        lab::procs::wait_gone(&[agent, dockerd], BOUND),
        "h3 did not die"
    );
    for h in &guard.state.hosts[..2] {
        wait_for(
            &format!("{}: h3's entries withdrawn", h.name),
            WITHDRAW_BOUND,
            || match mentions(lab, h, h3.address) {
                m if m.is_empty() => Ok(()),
                m => Err(format!("{m:#?}")),
            },
        );
    }
    let withdrawn = killed.elapsed();
    let nodes_then = shoal_ok(lab, "h1", &["node", "ls"]);
    // Requests through the remaining hosts no longer fail or reach h3's task.
    for i in 0..2 {
        let url = format!("http://{}:80/", addr(i));
        for k in 0..20 {
            let r = client_http(lab, &url);
            let by = r.as_ref().ok().and_then(|b| answered_by(b));
            assert!(
                by.as_ref().is_some_and(|b| *b != h3_task),
                "{url}: request {k} after h3's withdrawal: {r:?}"
            );
        }
    }
    println!(
        "h3 died: its entries left h1's and h2's declared files and FDBs after {:.1} s \
         (node ls then:\n{nodes_then})",
        withdrawn.as_secs_f64()
    );
    within_figure(
        "a dead node's entries gone from the others",
        withdrawn,
        Duration::from_secs_f64(2.4),
    );

    // It comes back: gossip sees it again and the tables agree.
    lab::restart_dockerd(&guard.layout, &h3).expect("restart h3's dockerd");
    wait_for("h3's dockerd answering again", BOUND, || {
        let out = lab.exec("h3", &["docker", "version", "-f", "{{.Server.Version}}"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    start_agent(lab, &shoal_bin, 2);
    let back = Instant::now();
    wait_for("h1's gossip sees h3 again", BOUND, || {
        match live_nodes(h1)? {
            3 => Ok(()),
            n => Err(format!("{n} live")),
        }
    });
    wait_for("tables agree after h3 returned", BOUND, || {
        tables_agree(lab)
    });
    println!(
        "h3 returned: live in gossip and tables agreeing after {:.1} s",
        back.elapsed().as_secs_f64()
    );
    within_figure(
        "a returned node live and tables agreeing",
        back.elapsed(),
        Duration::from_secs_f64(0.8),
    );
}
