//! Prometheus metrics on a real 3-host lab: every agent runs with `--metrics-addr` on
//! its lab address, and a real Prometheus server (Debian's `prometheus`, run in the lab
//! client's namespace with its own config and storage, ended by PID) scrapes them all.
//! Through Prometheus' HTTP API the test finds: the routing mesh's new flows per node
//! grow by exactly the requests sent to that node's published port (one new connection
//! each), and so their sum by every request sent, and so do the published port's own
//! counters (the service's, `shoal_mesh_port_*`); the tasks each node reports by state
//! match `service ps`; the managers' Raft and every node's gossip are there. Each
//! agent's `/metrics` passes `promtool check metrics`. It prints the figures: metric
//! families, the time one scrape takes, and the requests counted.
use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use shoal_tests::{
    lab, privileged,
    swarm::{answered_by, Cli, BOUND},
    wait_for, LabGuard,
};

const METRICS_PORT: u16 = 9323;
const PORT: u16 = 8080;
/// Requests sent to each node's published port, each on a new connection.
const REQUESTS_PER_NODE: u64 = 40;
/// The counted requests' client ports, one each, below the kernel's ephemeral range.
/// A port used again towards another node's address could meet the same task, which
/// still holds the earlier connection in TIME_WAIT (the task sees the client's address,
/// whichever node it came through): its SYN is answered with a stale ACK, the client
/// resets and retries, and the mesh rightly counts a second flow for one request.
const FIRST_CLIENT_PORT: u16 = 20_000;
/// Where Prometheus answers, inside the lab client's namespace.
const PROMETHEUS: &str = "127.0.0.1:9090";

/// A Prometheus server in the lab client's namespace; ended by PID on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    fn start(lab: &LabGuard) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("{}-prometheus", lab.layout.prefix));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: shoal\n    static_configs:\n",
        );
        for h in &lab.state.hosts {
            config.push_str(&format!(
                "      - targets: ['{}:{METRICS_PORT}']\n        labels: {{host: {}}}\n",
                h.address, h.name
            ));
        }
        fs::write(dir.join("prometheus.yml"), config).expect("prometheus.yml");
        let log = fs::File::create(dir.join("prometheus.log")).expect("prometheus.log");
        let argv: Vec<String> = vec![
            "prometheus".into(),
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={PROMETHEUS}"),
        ];
        // `ip netns exec` execs the command: the child's PID is Prometheus'.
        let child = lab::client_command(&lab.state, &argv)
            .expect("client command")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian's `prometheus`; cargo xtask setup installs it)");
        let p = Prometheus { child, dir };
        wait_for("prometheus ready", BOUND, || {
            get(lab, &format!("http://{PROMETHEUS}/-/ready"))
                .map_err(|e| format!("{e}; log: {}", p.log_tail()))
        });
        p
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let pid = self.child.id();
        lab::procs::signal(pid, libc::SIGTERM);
        if !lab::procs::wait_gone(&[pid], Duration::from_secs(30)) {
            lab::procs::signal(pid, libc::SIGKILL);
            let _ = self.child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `curl` from the lab client: the body, or what went wrong.
fn get(lab: &LabGuard, url: &str) -> Result<String, String> {
    let out = lab.client(&["curl", "-sSf", "--max-time", "5", url]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// One sample of an instant query: its labels and value.
type Sample = (BTreeMap<String, String>, f64);

/// An instant query through Prometheus' HTTP API.
fn query(lab: &LabGuard, promql: &str) -> Result<Vec<Sample>, String> {
    let out = lab.client(&[
        "curl",
        "-sSf",
        "--max-time",
        "5",
        "-G",
        &format!("http://{PROMETHEUS}/api/v1/query"),
        "--data-urlencode",
        &format!("query={promql}"),
    ]);
    if !out.status.success() {
        return Err(format!(
            "{promql}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{promql}: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("{promql}: {v}"));
    }
    let result = v["data"]["result"]
        .as_array()
        .ok_or_else(|| format!("{promql}: no result in {v}"))?;
    result
        .iter()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let value = r["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .ok_or_else(|| format!("{promql}: bad value in {r}"))?;
            Ok((labels, value))
        })
        .collect()
}

/// `promql`'s value per `host` label.
fn by_host(lab: &LabGuard, promql: &str) -> Result<BTreeMap<String, f64>, String> {
    Ok(query(lab, promql)?
        .into_iter()
        .map(|(l, v)| (l.get("host").cloned().unwrap_or_default(), v))
        .collect())
}

/// Every routing-mesh series Prometheus holds now, by host and labels.
fn mesh_counters(lab: &LabGuard) -> BTreeMap<String, f64> {
    query(lab, "{__name__=~\"shoal_mesh_.*\"}")
        .expect("mesh series")
        .into_iter()
        .map(|(l, v)| {
            let name: Vec<String> = l
                .iter()
                .filter(|(k, _)| *k != "job" && *k != "instance")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            (name.join(","), v)
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Waits until Prometheus holds a sample of `metric` from every host scraped after
/// `after` (unix seconds); returns the values per host.
/// `promql` by host, for the hosts in `scraped` (a host with no series counts 0).
fn vip_sums(
    lab: &LabGuard,
    promql: &str,
    scraped: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let sums = by_host(lab, promql).expect("VIP connects");
    scraped
        .keys()
        .map(|h| (h.clone(), sums.get(h).copied().unwrap_or(0.0)))
        .collect()
}

fn fresh(lab: &LabGuard, metric: &str, after: f64) -> BTreeMap<String, f64> {
    let hosts = lab.state.hosts.len();
    wait_for(&format!("{metric} scraped from every host"), BOUND, || {
        let stamps = by_host(lab, &format!("timestamp({metric})"))?;
        if stamps.len() != hosts || stamps.values().any(|t| *t <= after) {
            return Err(format!("scrape times {stamps:?}, want after {after}"));
        }
        let values = by_host(lab, metric)?;
        if values.len() == hosts {
            Ok(values)
        } else {
            Err(format!("{values:?}"))
        }
    })
}

#[test]
fn prometheus_scrapes_every_agent_and_counts_every_request() {
    if !privileged() {
        return;
    }
    let began = Instant::now();
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('z', 3);
    let cli = Cli { lab: &guard };
    for (i, h) in guard.state.hosts.iter().enumerate() {
        cli.start_agent(
            &shoal,
            i,
            &[format!("--metrics-addr={}:{METRICS_PORT}", h.address)],
        );
    }
    cli.form_cluster();

    // The endpoint itself: /metrics, nothing else.
    let h1 = guard.state.hosts[0].address;
    let wrong = guard.client(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{h1}:{METRICS_PORT}/"),
    ]);
    assert_eq!(String::from_utf8_lossy(&wrong.stdout), "404");

    let prometheus = Prometheus::start(&guard);

    cli.ok(
        "h1",
        &["network", "create", "--subnet", "10.0.30.0/24", "app"],
    );
    let made = cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--network",
            "app",
            "-p",
            &format!("{PORT}:80"),
            "shoal/web:1",
        ],
    );
    assert!(made.contains("verify: Service converged"), "{made}");
    wait_for("web answers on every node's published port", BOUND, || {
        for h in &guard.state.hosts {
            shoal_tests::client_http(&guard, &format!("http://{}:{PORT}/", h.address))
                .map_err(|e| format!("{}: {e}", h.name))?;
        }
        Ok(())
    });
    wait_for("every agent scraped", BOUND, || {
        let up = by_host(&guard, "up{job=\"shoal\"}")?;
        if up.len() == 3 && up.values().all(|v| *v == 1.0) {
            Ok(())
        } else {
            Err(format!("up: {up:?}; {}", prometheus.log_tail()))
        }
    });

    // Requests through the routing mesh, each on a new connection, counted where they
    // entered the cluster.
    let before = fresh(&guard, "shoal_mesh_new_flows_total", unix_now());
    let per_port = format!("shoal_mesh_port_new_flows_total{{port=\"{PORT}\",protocol=\"tcp\"}}");
    let port_before = fresh(&guard, &per_port, unix_now());
    let mesh_before = mesh_counters(&guard);
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    let mut local_port = FIRST_CLIENT_PORT;
    for h in &guard.state.hosts {
        for _ in 0..REQUESTS_PER_NODE {
            let out = guard.client(&[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--local-port",
                &local_port.to_string(),
                &format!("http://{}:{PORT}/", h.address),
            ]);
            local_port += 1;
            let body = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && answered_by(&body).is_some(),
                "request to {}: {body} {}",
                h.name,
                String::from_utf8_lossy(&out.stderr)
            );
            *sent.entry(h.name.clone()).or_default() += 1;
        }
    }
    let sent_at = unix_now();
    let after = fresh(&guard, "shoal_mesh_new_flows_total", sent_at);
    let counted: BTreeMap<String, u64> = after
        .iter()
        .map(|(h, v)| (h.clone(), (v - before[h]) as u64))
        .collect();
    let total_sent: u64 = sent.values().sum();
    let sum_before = before.values().sum::<f64>();
    let sum = query(&guard, "sum(shoal_mesh_new_flows_total)").expect("sum")[0].1;
    println!(
        "requests sent per node {sent:?} ({total_sent} in all); new flows counted per node {counted:?}, their sum {} (Prometheus' sum {sum}, {sum_before} before)",
        counted.values().sum::<u64>()
    );
    if counted != sent {
        let mesh_after = mesh_counters(&guard);
        let moved: Vec<_> = mesh_after
            .iter()
            .filter(|(k, v)| mesh_before.get(*k) != Some(*v))
            .map(|(k, v)| (k, mesh_before.get(k).copied().unwrap_or(0.0), *v))
            .collect();
        panic!("new flows per node {counted:?} against requests sent {sent:?}; the mesh's counters that moved: {moved:#?}");
    }
    assert_eq!(sum - sum_before, total_sent as f64);
    // The same requests by published port (the service's own count), node by node.
    let port_after = fresh(&guard, &per_port, sent_at);
    let port_counted: BTreeMap<String, u64> = port_after
        .iter()
        .map(|(h, v)| (h.clone(), (v - port_before[h]) as u64))
        .collect();
    println!("requests counted for port {PORT}/tcp per node: {port_counted:?}");
    assert_eq!(
        port_counted, sent,
        "per-port new flows against requests sent"
    );
    let port_bytes = by_host(
        &guard,
        &format!("shoal_mesh_port_bytes_total{{port=\"{PORT}\",protocol=\"tcp\"}}"),
    )
    .expect("port bytes");
    assert!(
        port_bytes.len() == 3 && port_bytes.values().all(|b| *b > 0.0),
        "{port_bytes:?}"
    );

    // Tasks by state: what each node reports against `service ps`.
    wait_for("tasks by state match service ps", BOUND, || {
        let mut ps: BTreeMap<(String, String), f64> = BTreeMap::new();
        for row in cli.ps("web")? {
            *ps.entry((row.node, row.current.to_lowercase()))
                .or_default() += 1.0;
        }
        let reported: BTreeMap<(String, String), f64> =
            query(&guard, "shoal_tasks{service=\"web\"} > 0")?
                .into_iter()
                .map(|(l, v)| ((l["host"].clone(), l["state"].clone()), v))
                .collect();
        if reported == ps {
            println!("tasks by node and state: {reported:?}");
            Ok(())
        } else {
            Err(format!("metrics {reported:?}, service ps {ps:?}"))
        }
    });

    // The embedded DNS: names asked from a task are counted on its node, with their
    // answer latency.
    let task = cli.running("web").expect("web tasks").remove(0);
    let dns_before = fresh(&guard, "shoal_dns_local_answers_total", unix_now());
    const LOOKUPS: u64 = 5;
    for _ in 0..LOOKUPS {
        cli.exec_in(&task, &["nslookup", "web"])
            .unwrap_or_else(|e| panic!("nslookup web in {}: {e}", task.container));
    }
    let dns_after = fresh(&guard, "shoal_dns_local_answers_total", unix_now());
    let answered = dns_after[&task.node] - dns_before[&task.node];
    let latency = by_host(&guard, "shoal_dns_response_duration_seconds_count").expect("latency");
    println!(
        "{LOOKUPS} lookups of `web` on {}: {answered} local answers counted (busybox asks A and AAAA); answers timed per node {latency:?}",
        task.node
    );
    assert!(
        answered >= LOOKUPS as f64,
        "{dns_before:?} -> {dns_after:?}"
    );
    assert!(latency[&task.node] >= answered, "{latency:?}");

    // Requests to the service's VIP (by its name) from the task: counted per VIP on the
    // task's node, where the socket programs balanced them. Each request is a TCP
    // connect; name resolution adds UDP connects to the VIP (getaddrinfo's source
    // address selection), which the programs balance and count too: the per-VIP count
    // must equal every balanced connect and UDP flow the node counted.
    let per_vip = "sum by (host) (shoal_vip_service_connects_total)";
    let balanced =
        "sum by (host) (shoal_vip_connects_total) + sum by (host) (shoal_vip_udp_new_flows_total)";
    let tcp = "sum by (host) (shoal_vip_connects_total{protocol=\"tcp\"})";
    let scraped = fresh(&guard, "shoal_vip_service_connects_total", unix_now());
    let at = |promql: &str| vip_sums(&guard, promql, &scraped);
    let (vip_before, balanced_before, tcp_before) = (at(per_vip), at(balanced), at(tcp));
    const VIP_REQUESTS: u64 = 6;
    for _ in 0..VIP_REQUESTS {
        cli.exec_in(&task, &["timeout", "10", "wget", "-O-", "http://web/"])
            .unwrap_or_else(|e| panic!("wget http://web/ in {}: {e}", task.container));
    }
    fresh(&guard, "shoal_vip_service_connects_total", unix_now());
    let delta =
        |before: &BTreeMap<String, f64>, promql: &str| at(promql)[&task.node] - before[&task.node];
    let (vip_counted, balanced_counted, tcp_counted) = (
        delta(&vip_before, per_vip),
        delta(&balanced_before, balanced),
        delta(&tcp_before, tcp),
    );
    println!(
        "{VIP_REQUESTS} requests to http://web/ from a task on {}: {tcp_counted} TCP connects, {vip_counted} connects counted for its VIPs ({balanced_counted} balanced on the node)",
        task.node
    );
    assert_eq!(tcp_counted, VIP_REQUESTS as f64);
    assert_eq!(vip_counted, balanced_counted);

    // The cluster's parts: one Raft leader (h1, the only manager), every node's gossip
    // sees the three.
    wait_for("raft and gossip in the metrics", BOUND, || {
        let leaders = by_host(&guard, "shoal_raft_state{state=\"leader\"} == 1")?;
        let members = by_host(&guard, "shoal_gossip_members")?;
        let term = by_host(&guard, "shoal_raft_term")?;
        // Every entry the service changes appended was fsynced and timed.
        let fsyncs = by_host(&guard, "shoal_raft_fsync_duration_seconds_count")?;
        let ok = leaders.keys().collect::<Vec<_>>() == ["h1"]
            && members.len() == 3
            && members.values().all(|m| *m == 3.0)
            && term.get("h1").is_some_and(|t| *t >= 1.0)
            && fsyncs.keys().collect::<Vec<_>>() == ["h1"]
            && fsyncs["h1"] >= 1.0;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "leaders {leaders:?}, gossip members {members:?}, terms {term:?}, fsyncs {fsyncs:?}"
            ))
        }
    });
    let fsync_mean = by_host(
        &guard,
        "shoal_raft_fsync_duration_seconds_sum / shoal_raft_fsync_duration_seconds_count",
    )
    .expect("fsync mean");
    println!(
        "FIGURE metrics raft_fsync_mean {:?} s",
        fsync_mean.get("h1")
    );

    // Every agent's exposition is clean, as promtool sees it; and what a scrape costs.
    let mut families = BTreeMap::new();
    let mut took = Vec::new();
    for h in &guard.state.hosts {
        let url = format!("http://{}:{METRICS_PORT}/metrics", h.address);
        let check = guard.client(&[
            "sh",
            "-c",
            &format!("curl -sSf --max-time 5 {url} | promtool check metrics"),
        ]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        assert!(
            check.status.success() && said.trim().is_empty(),
            "{}: promtool check metrics: {said}",
            h.name
        );
        let text = get(&guard, &url).expect("metrics");
        families.insert(
            h.name.clone(),
            text.lines().filter(|l| l.starts_with("# TYPE ")).count(),
        );
        for _ in 0..10 {
            let out = guard.client(&[
                "curl",
                "-sSf",
                "-o",
                "/dev/null",
                "-w",
                "%{time_total}",
                &url,
            ]);
            took.push(
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<f64>()
                    .expect("curl time"),
            );
        }
    }
    took.sort_by(f64::total_cmp);
    let scrape = by_host(&guard, "scrape_duration_seconds{job=\"shoal\"}").expect("scrape");
    println!(
        "metric families per node {families:?}; /metrics from the client: median {:.1} ms, max {:.1} ms over {} scrapes; Prometheus' last scrape_duration_seconds {scrape:?}",
        took[took.len() / 2] * 1e3,
        took[took.len() - 1] * 1e3,
        took.len()
    );
    drop(prometheus);
    println!("lab test took {:.1} s", began.elapsed().as_secs_f64());
}
