//! What the soak measures on every host: each minute the agent's RSS and the data
//! plane's fill (flow tables, VIP backends, FDB entries), and, before and after the
//! churn, what could leak (containers, network namespaces, veths, FDB entries, VIP
//! backend entries), each compared with what the declared state says should exist.
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use crate::chaos::cluster::Cluster;
use crate::lab::tables::{array, declared};

/// The data plane's fill figures sampled each minute, by their `shoal dataplane stats`
/// names (`fdb` is the kernel's: entries with a remote VTEP on the overlay networks'
/// VXLAN devices).
pub const FILL: &[&str] = &[
    "mesh_flows",
    "mesh_opening_flows",
    "mesh_closing_flows",
    "mesh_reply_flows",
    "vip_backends",
    "vip_backend_slots",
    "vip_reverse",
    "vip_udp_flows",
    "fdb",
];

/// The fill name of a manager's Raft log entries not purged yet.
pub const RAFT_LOG: &str = "raft_log_entries";

/// A host's agent's resident memory, KiB.
pub fn agent_rss_kib(cluster: &Cluster, host: &str) -> Result<u64> {
    let pid = cluster.agent_pid(host)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("{host}'s agent ({pid})"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS for {host}'s agent ({pid})"))
}

/// A host's data-plane fill, by [`FILL`] name.
pub fn fill(cluster: &Cluster, host: &str) -> Result<BTreeMap<&'static str, u64>> {
    let stats: serde_json::Value =
        serde_json::from_str(&cluster.shoal(host, &["dataplane", "stats", "--json"])?)
            .with_context(|| format!("{host}: `shoal dataplane stats --json`"))?;
    let mut out = BTreeMap::new();
    for name in FILL {
        let v = if *name == "fdb" {
            fdb_entries(cluster, host)?
        } else {
            stats[*name].as_u64().unwrap_or(0)
        };
        out.insert(*name, v);
    }
    // A manager's Raft log, held in memory until a snapshot purges it (workers have none).
    if let Some(Some(n)) = cluster.metrics(host, &["shoal_raft_log_entries"])?.first() {
        out.insert(RAFT_LOG, *n);
    }
    Ok(out)
}

/// FDB entries with a remote VTEP (`dst`) on the host's VXLAN devices, which live in
/// the overlay networks' own namespaces (`<run dir>/netns/vni-N`), not the host's.
fn fdb_entries(cluster: &Cluster, host: &str) -> Result<u64> {
    count_in_agent_namespaces(cluster, host, "vni-", &["bridge", "fdb", "show"], |l| {
        l.contains(" dst ")
    })
}

/// The lines `argv` prints, kept by `keep`, summed over the agent's own network
/// namespaces (`<run dir>/netns/*`) whose names start with `prefix`.
fn count_in_agent_namespaces(
    cluster: &Cluster,
    host: &str,
    prefix: &str,
    argv: &[&str],
    keep: impl Fn(&str) -> bool,
) -> Result<u64> {
    let dir = cluster.host(host)?.run_dir.join("netns");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let net = format!("--net={}", e.path().display());
        let mut command = vec!["nsenter", net.as_str()];
        command.extend_from_slice(argv);
        let out = match cluster.exec(host, &command) {
            Ok(out) => out,
            // Removed between the listing and the look (the network's last task on
            // this host ended): it holds nothing now.
            Err(_) if !e.path().exists() => continue,
            Err(err) => return Err(err),
        };
        n += out.lines().filter(|l| keep(l)).count() as u64;
    }
    Ok(n)
}

/// The label on a task's own container (`LABEL_SHOAL_TASK_ID` in the executor).
const TASK_LABEL: &str = "label=shoal.task.id";
/// The label on a task's sandbox, the container that holds its network namespace (the
/// task's container joins it): `LABEL_SANDBOX_TASK_ID` in the executor.
const SANDBOX_LABEL: &str = "label=shoal.sandbox.task.id";

/// Docker's network-namespace files on a host that hold a namespace: mounted in
/// dockerd's mount namespace. Docker removes a sandbox's namespace by unmounting it at
/// once and deleting the empty file in a collection pass a minute later, so the empty
/// files in between hold nothing and are left out.
fn docker_namespaces(run_dir: &std::path::Path) -> Result<Vec<String>> {
    let dir = run_dir.join("x").join("netns");
    let pid = std::fs::read_to_string(run_dir.join("dockerd.pid"))
        .with_context(|| format!("{}: dockerd.pid", run_dir.display()))?;
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", pid.trim()))
        .with_context(|| format!("dockerd {}'s mounts", pid.trim()))?;
    let prefix = format!("{}/", dir.display());
    let mut names: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter_map(|point| point.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// veth devices in the agent's own network namespaces (`<run dir>/netns/*`: the
/// overlay networks' and the ingress namespace).
fn agent_namespace_veths(cluster: &Cluster, host: &str) -> Result<u64> {
    let argv = ["ip", "-o", "link", "show", "type", "veth"];
    count_in_agent_namespaces(cluster, host, "", &argv, |l| !l.trim().is_empty())
}

/// What could leak on one host, each beside what the declared state says should be
/// there; the differences must stay what they were before the churn. Every task has
/// two containers: its sandbox (its network namespace) and its own, which joins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaks {
    /// Running task containers, and the tasks the leader has running on this node.
    pub running: (u64, u64),
    /// Task containers of any state, and the tasks of any state the store keeps for
    /// this node (a container no task accounts for is leaked).
    pub containers: (u64, u64),
    /// Sandboxes of any state, and the tasks of any state the store keeps for this node.
    pub sandboxes: (u64, u64),
    /// Docker's network namespaces (files mounted in dockerd's mount namespace), and
    /// running sandboxes.
    pub netns: (u64, u64),
    /// veth devices in the host's and the agent's namespaces, and veth devices inside
    /// running sandboxes.
    pub veth: (u64, u64),
    /// FDB entries with a remote VTEP, and remote endpoints in the agent's declared
    /// overlay state.
    pub fdb: (u64, u64),
    /// Entries of the VIP backend map, and backends in the declared load-balancing state.
    pub vip_backends: (u64, u64),
    /// Docker's network-namespace files no running container uses, by name: what a
    /// grown `netns` is made of.
    pub stray_netns: Vec<String>,
}

impl Leaks {
    /// Every measure as (name, have, declared).
    pub fn rows(&self) -> [(&'static str, (u64, u64)); 7] {
        [
            ("running", self.running),
            ("containers", self.containers),
            ("sandboxes", self.sandboxes),
            ("netns", self.netns),
            ("veth", self.veth),
            ("fdb", self.fdb),
            ("vip_backends", self.vip_backends),
        ]
    }
}

/// One host's [`Leaks`], with the leader's task list.
pub fn leaks(cluster: &Cluster, leader: &str, host: &str) -> Result<Leaks> {
    let task_count = |filter: &[&str]| -> Result<u64> {
        let mut argv = vec!["node", "ps", "-q", "--no-trunc"];
        argv.extend_from_slice(filter);
        argv.push(host);
        Ok(cluster
            .shoal(leader, &argv)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count() as u64)
    };
    let all_tasks = task_count(&[])?;
    let running_tasks = task_count(&["--filter", "desired-state=running"])?;
    let lines = |argv: &[&str]| -> Result<Vec<String>> {
        Ok(cluster
            .exec(host, argv)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    };
    let count = |argv: &[&str]| -> Result<u64> { Ok(lines(argv)?.len() as u64) };
    let running = count(&["docker", "ps", "-q", "--filter", TASK_LABEL])?;
    let containers = count(&["docker", "ps", "-aq", "--filter", TASK_LABEL])?;
    let sandboxes = count(&["docker", "ps", "-aq", "--filter", SANDBOX_LABEL])?;
    let running_sandboxes = count(&["docker", "ps", "-q", "--filter", SANDBOX_LABEL])?;
    let h = cluster.host(host)?;
    let netns_files = docker_namespaces(&h.run_dir)?;
    let in_use = lines(&[
        "sh",
        "-c",
        "for c in $(docker ps -q); do \
           docker inspect -f '{{.NetworkSettings.SandboxKey}}' $c; \
         done",
    ])?;
    let stray_netns = netns_files
        .iter()
        .filter(|name| !in_use.iter().any(|key| key.ends_with(&format!("/{name}"))))
        .cloned()
        .collect();
    // A sandbox's veths have their peers in the host's namespace (the egress bridge)
    // or in the agent's overlay namespaces (`<run dir>/netns/*`): count both sides.
    let veth = count(&["ip", "-o", "link", "show", "type", "veth"])?
        + agent_namespace_veths(cluster, host)?;
    let inside = count(&[
        "sh",
        "-c",
        "for c in $(docker ps -q --filter label=shoal.sandbox.task.id); do \
           p=$(docker inspect -f '{{.State.Pid}}' $c); \
           nsenter -t $p -n ip -o link show type veth; \
         done",
    ])?;
    let overlay = declared(h, "overlay.json");
    let remote = array(&overlay, "remote_endpoints").len() as u64;
    let lb = declared(h, "lb.json");
    let backends: u64 = array(&lb, "services")
        .into_iter()
        .map(|s| array(s, "backends").len() as u64)
        .sum();
    let f = fill(cluster, host)?;
    Ok(Leaks {
        running: (running, running_tasks),
        containers: (containers, all_tasks),
        sandboxes: (sandboxes, all_tasks),
        netns: (netns_files.len() as u64, running_sandboxes),
        veth: (veth, inside),
        fdb: (f["fdb"], remote),
        vip_backends: (f["vip_backends"], backends),
        stray_netns,
    })
}

/// Compares a host's leak measures after the churn with those before: `running` must
/// equal its tasks, `containers` and `sandboxes` must not exceed them, and for the
/// others, what exists beyond what is declared must not have grown. One line per
/// failed measure.
pub fn compare(host: &str, before: &Leaks, after: &Leaks) -> Vec<String> {
    let mut bad = Vec::new();
    let (have, want) = after.running;
    if have != want {
        bad.push(format!(
            "{host}: {have} task containers running, {want} tasks running on it"
        ));
    }
    for (name, (have, want)) in [
        ("task containers", after.containers),
        ("sandboxes", after.sandboxes),
    ] {
        if have > want {
            bad.push(format!(
                "{host}: {have} {name}, the store has {want} tasks for it"
            ));
        }
    }
    for ((name, (b_have, b_want)), (_, (a_have, a_want))) in
        before.rows().into_iter().zip(after.rows()).skip(3)
    {
        let extra_before = b_have as i64 - b_want as i64;
        let extra_after = a_have as i64 - a_want as i64;
        if extra_after > extra_before {
            let strays = if name == "netns" {
                format!(" (used by no running container: {:?})", after.stray_netns)
            } else {
                String::new()
            };
            bad.push(format!(
                "{host}: {name}: {a_have} for {a_want} declared after the churn, \
                 {b_have} for {b_want} before{strays}"
            ));
        }
    }
    bad
}

/// The least-squares slope of `ys` sampled once a minute, per hour.
pub fn slope_per_hour(ys: &[f64]) -> f64 {
    let n = ys.len() as f64;
    if ys.len() < 2 {
        return 0.0;
    }
    let mx = (n - 1.0) / 2.0;
    let my = ys.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        let dx = i as f64 - mx;
        num += dx * (y - my);
        den += dx * dx;
    }
    num / den * 60.0
}

/// Flat: the mean of the series' last third is at most `ratio` times the mean of its
/// first third plus `slack` (the thirds of at least one sample each). The means, or an
/// error with too few samples.
pub fn flat(ys: &[f64], ratio: f64, slack: f64) -> Result<(f64, f64, bool)> {
    if ys.len() < 3 {
        bail!("{} samples, at least 3 needed", ys.len());
    }
    let third = ys.len() / 3;
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let first = mean(&ys[..third]);
    let last = mean(&ys[ys.len() - third..]);
    Ok((first, last, last <= first * ratio + slack))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaks(fdb: (u64, u64), running: (u64, u64)) -> Leaks {
        Leaks {
            running,
            containers: (3, 5),
            sandboxes: (3, 5),
            netns: (3, 3),
            veth: (6, 6),
            fdb,
            vip_backends: (9, 9),
            stray_netns: Vec::new(),
        }
    }

    #[test]
    fn a_measure_beyond_its_declared_count_is_a_leak() {
        let before = leaks((4, 4), (3, 3));
        assert!(compare("h1", &before, &leaks((7, 7), (4, 4))).is_empty());
        let bad = compare("h1", &before, &leaks((8, 7), (4, 4)));
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].contains("fdb"), "{bad:?}");
        let bad = compare("h1", &before, &leaks((4, 4), (4, 3)));
        assert!(bad[0].contains("4 task containers running"), "{bad:?}");
        let mut more_sandboxes = leaks((4, 4), (3, 3));
        more_sandboxes.sandboxes = (6, 5);
        let bad = compare("h1", &before, &more_sandboxes);
        assert_eq!(bad, ["h1: 6 sandboxes, the store has 5 tasks for it"]);
        let mut stray = leaks((4, 4), (3, 3));
        stray.netns = (5, 3);
        stray.stray_netns = vec!["1a2b".into(), "3c4d".into()];
        let bad = compare("h1", &before, &stray);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].contains(r#"["1a2b", "3c4d"]"#), "{bad:?}");
    }

    #[test]
    fn slope_and_flatness() {
        assert_eq!(slope_per_hour(&[1.0, 1.0, 1.0]), 0.0);
        assert!((slope_per_hour(&[0.0, 1.0, 2.0, 3.0]) - 60.0).abs() < 1e-9);
        let (a, b, ok) = flat(&[10.0, 10.0, 11.0, 12.0, 12.0, 12.0], 1.1, 0.0).unwrap();
        assert_eq!((a, b), (10.0, 12.0));
        assert!(!ok);
        assert!(
            flat(&[10.0, 10.0, 11.0, 12.0, 12.0, 12.0], 1.1, 1.0)
                .unwrap()
                .2
        );
        assert!(flat(&[1.0, 2.0], 1.0, 0.0).is_err());
    }
}
