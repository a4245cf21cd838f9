//! The overlay on a real 3-host lab: containers started with `--network none` on every
//! host, attached by each host's agent from declared state, reach each other across
//! hosts; a second network is isolated from the first; a removed endpoint becomes
//! unreachable; `docker restart` is healed; an agent restart changes nothing; the last
//! endpoint leaving removes the network; a contradictory state is refused.
use std::{path::PathBuf, time::Duration};

use serde_json::{json, Value};
use shoal_tests::{lab, privileged, wait_for, write_atomic, LabGuard};

const WEB: &str = "10.0.9";
const DB: &str = "10.0.10";
const BOUND: Duration = Duration::from_secs(60);

struct Overlay<'a> {
    lab: &'a LabGuard,
    shoal: PathBuf,
}

fn web_ip(host: usize) -> String {
    format!("{WEB}.{}", 10 + host)
}
fn db_ip(host: usize) -> String {
    format!("{DB}.{}", 10 + host)
}

impl Overlay<'_> {
    fn host(&self, i: usize) -> &lab::HostState {
        &self.lab.state.hosts[i - 1]
    }

    fn declared_file(&self, i: usize) -> PathBuf {
        self.host(i).run_dir.join("declared-overlay.json")
    }

    fn status(&self, i: usize) -> Value {
        let path = self.host(i).run_dir.join("agent/overlay.json");
        std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Writes every host's declared state from the cluster-wide list of endpoints
    /// `(network, container, host, ip)`: local ones for the host, the rest remote.
    fn declare(&self, endpoints: &[(&str, String, usize, String)]) {
        for i in 1..=3 {
            let locals: Vec<Value> = endpoints
                .iter()
                .filter(|e| e.2 == i)
                .map(|(net, c, _, ip)| json!({"network": net, "container": c, "ip": ip}))
                .collect();
            let remotes: Vec<Value> = endpoints
                .iter()
                .filter(|e| e.2 != i)
                .map(|(net, _, h, ip)| {
                    json!({"network": net, "ip": ip, "vtep": self.host(*h).address.to_string()})
                })
                .collect();
            let state = json!({
                "networks": [
                    {"id": "web", "vni": 4097, "subnet": format!("{WEB}.0/24"), "gateway": format!("{WEB}.1")},
                    {"id": "db", "vni": 4098, "subnet": format!("{DB}.0/24"), "gateway": format!("{DB}.1")}
                ],
                "local_endpoints": locals,
                "remote_endpoints": remotes,
            });
            write_atomic(
                &self.declared_file(i),
                &serde_json::to_vec_pretty(&state).unwrap(),
            );
        }
    }

    fn start_agent(&self, i: usize) -> u32 {
        let h = self.host(i);
        let extra = vec![
            "--declared-state".to_string(),
            self.declared_file(i).display().to_string(),
        ];
        let status = lab::agent::start(&self.lab.state, h, &self.shoal, &extra)
            .unwrap_or_else(|e| panic!("start agent on {}: {e:#}", h.name));
        let status: Value = serde_json::from_str(&status).expect("agent.json");
        status["pid"].as_u64().expect("pid") as u32
    }

    /// `docker exec` in container `c` on host `i`; Ok(stdout) or Err(what it said).
    fn exec(&self, i: usize, c: &str, argv: &[&str]) -> Result<String, String> {
        self.lab.docker_exec(&self.host(i).name, c, argv)
    }

    fn ping(&self, i: usize, c: &str, ip: &str) -> Result<String, String> {
        self.exec(i, c, &["ping", "-c", "1", "-W", "2", ip])
    }

    fn wait_reachable(&self, i: usize, c: &str, ip: &str) {
        wait_for(&format!("{c} on h{i} reaches {ip}"), BOUND, || {
            self.ping(i, c, ip)
        });
    }

    fn wait_unreachable(&self, i: usize, c: &str, ip: &str) {
        wait_for(
            &format!("{c} on h{i} no longer reaches {ip}"),
            BOUND,
            || match self.ping(i, c, ip) {
                Ok(out) => Err(out),
                Err(_) => Ok(()),
            },
        );
    }

    /// Waits until host `i`'s agent has applied at least one more state than `after`.
    fn wait_applied(&self, i: usize, after: u64) -> Value {
        wait_for(
            &format!("h{i}'s agent applies the declared state"),
            BOUND,
            || {
                let s = self.status(i);
                match s["generation"].as_u64() {
                    Some(g) if g > after => Ok(s),
                    _ => Err(s.to_string()),
                }
            },
        )
    }
}

fn endpoints(hosts_with_web: &[usize]) -> Vec<(&'static str, String, usize, String)> {
    let mut v: Vec<_> = hosts_with_web
        .iter()
        .map(|&h| ("web", format!("a{h}"), h, web_ip(h)))
        .collect();
    for h in [1, 2] {
        v.push(("db", format!("b{h}"), h, db_ip(h)));
    }
    v
}

#[test]
fn containers_on_three_hosts_share_an_overlay() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('o', 3);
    let o = Overlay { lab: &guard, shoal };
    for i in 1..=3 {
        let h = &o.host(i).name;
        guard.exec_ok(
            h,
            &[
                "docker",
                "run",
                "-d",
                "--init",
                "--network",
                "none",
                "--name",
                &format!("a{i}"),
                "shoal/web:1",
            ],
        );
        if i <= 2 {
            guard.exec_ok(
                h,
                &[
                    "docker",
                    "run",
                    "-d",
                    "--init",
                    "--network",
                    "none",
                    "--name",
                    &format!("b{i}"),
                    "shoal/web:1",
                ],
            );
        }
    }
    o.declare(&endpoints(&[1, 2, 3]));
    let mut agents: Vec<u32> = (1..=3).map(|i| o.start_agent(i)).collect();

    // Across hosts, by IP: ping and HTTP; the answer shows the real client address.
    for (i, j) in [(1, 2), (1, 3), (2, 3), (3, 1)] {
        o.wait_reachable(i, &format!("a{i}"), &web_ip(j));
    }
    let body = o
        .exec(
            1,
            "a1",
            &["wget", "-qO-", &format!("http://{}/", web_ip(3))],
        )
        .expect("HTTP a1 -> a3");
    assert!(
        body.contains(&format!("client={}", web_ip(1))),
        "a3 must see a1's own address: {body:?}"
    );
    let eth0 = o
        .exec(2, "a2", &["ip", "-o", "link", "show", "eth0"])
        .expect("a2 eth0");
    assert!(
        eth0.contains("mtu 1450"),
        "overlay MTU = underlay 1500 - 50: {eth0}"
    );
    assert!(
        eth0.contains("02:42:0a:00:09:0c"),
        "MAC derived from the IP: {eth0}"
    );

    // The second network works and is isolated from the first.
    o.wait_reachable(1, "b1", &db_ip(2));
    o.wait_unreachable(1, "b1", &web_ip(2));
    o.wait_unreachable(1, "a1", &db_ip(2));

    // An agent restart changes nothing that works, and applies no op.
    lab::procs::signal(agents[0], libc::SIGTERM);
    assert!(
        lab::procs::wait_gone(&[agents[0]], BOUND),
        "agent on h1 did not stop"
    );
    o.ping(1, "a1", &web_ip(2))
        .expect("traffic flows while the agent is down");
    agents[0] = o.start_agent(1);
    let s = o.wait_applied(1, 0);
    assert_eq!(
        s["applied_ops"], 0,
        "a restarted agent must adopt, not redo: {s}"
    );
    o.ping(1, "a1", &web_ip(2))
        .expect("traffic flows after the agent restart");

    // docker restart: a new namespace, plumbed again.
    guard.exec_ok(&o.host(2).name, &["docker", "restart", "-t", "1", "a2"]);
    o.wait_reachable(1, "a1", &web_ip(2));
    o.wait_reachable(2, "a2", &web_ip(3));

    // A contradictory state is refused whole; the last good one stays.
    let before = o.status(1)["generation"].as_u64().unwrap_or(0);
    let mut bad = endpoints(&[1, 2, 3]);
    bad.push(("web", "b1".into(), 1, web_ip(2))); // a2's address, twice
    o.declare(&bad);
    let s = wait_for("h1 refuses the contradictory state", BOUND, || {
        let s = o.status(1);
        if s["generation"].as_u64().unwrap_or(0) > before && s["refused"].is_string() {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    assert!(
        s["refused"].as_str().unwrap().contains(&web_ip(2)),
        "refusal names the address: {s}"
    );
    o.ping(1, "a1", &web_ip(3))
        .expect("the last good state stays applied");

    // a3 leaves: unreachable from the others, and h3 (no endpoint left) drops the network.
    o.declare(&endpoints(&[1, 2]));
    o.wait_unreachable(1, "a1", &web_ip(3));
    let pin = o.host(3).run_dir.join("netns/vni-4097");
    wait_for("h3 removes the web network's namespace", BOUND, || {
        if pin.exists() {
            Err(format!(
                "{} still exists; status {}",
                pin.display(),
                o.status(3)
            ))
        } else {
            Ok(())
        }
    });
    o.ping(1, "a1", &web_ip(2))
        .expect("the others are untouched");

    for pid in agents {
        lab::procs::signal(pid, libc::SIGTERM);
    }
    lab::down(&guard.layout).expect("lab down");
    assert_eq!(lab::leftovers(&guard.layout), Vec::<String>::new());
}
