//! The ingress routing mesh on a real 3-host lab: 4 `shoal/web:1` tasks over 3 hosts on
//! the ingress network, published 8080 -> 80 (TCP), 5353 -> 9999 (UDP) in ingress mode
//! and 5454 -> 9998 (UDP) in host mode on h3 only; every agent fed the same declared
//! LB state and its own declared overlay state.
//!
//! From the client namespace: 40 requests to each host's address reach all 4 tasks,
//! and every task saw the client's address; UDP through the published port is answered
//! from the address and port the client sent to; the host-mode port answers only on h3.
//! A backend marked unhealthy gets no new connections while a TCP connection held idle
//! across the changes, an agent restart and a refused bad state still works after them;
//! while an agent is down, requests through its node are still answered.
//! From each host itself, its own address and 127.0.0.1 reach all 4 tasks over TCP and
//! UDP (the tasks see the host's address), and the host-mode port only on h3; from a
//! container on h2 (on a user network with the service's VIP), h2's address does too.
use std::{
    collections::BTreeSet,
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use serde_json::{json, Value};
use shoal_tests::{lab, privileged, wait_for, write_atomic, LabGuard};

const BOUND: Duration = Duration::from_secs(60);
const CLIENT_IP: &str = "192.168.77.100";

/// (container, host index 0..3, ingress address)
const TASKS: [(&str, usize, &str); 4] = [
    ("t1", 0, "10.255.0.21"),
    ("t2", 1, "10.255.0.22"),
    ("t3", 2, "10.255.0.23"),
    ("t4", 0, "10.255.0.24"),
];

/// The tasks' addresses on the user network `web` (the service's VIP is there too).
const WEB: [&str; 4] = ["10.0.9.21", "10.0.9.22", "10.0.9.23", "10.0.9.24"];
const WEB_VIP: &str = "10.0.9.100";
/// A container on `web` only, on h2.
const CLIENT_C: (&str, usize, &str) = ("c1", 1, "10.0.9.11");

fn overlay_state(lab: &LabGuard, host: usize) -> Value {
    // Tasks: ingress first (their default route, which the mesh's replies take).
    let endpoints: Vec<(&str, &str, usize, &str)> = TASKS
        .iter()
        .zip(WEB)
        .flat_map(|((c, h, ip), web)| [("ingress", *c, *h, *ip), ("web", *c, *h, web)])
        .chain([("web", CLIENT_C.0, CLIENT_C.1, CLIENT_C.2)])
        .collect();
    let local: Vec<Value> = endpoints
        .iter()
        .filter(|e| e.2 == host)
        .map(|(net, c, _, ip)| json!({"network": net, "container": c, "ip": ip}))
        .collect();
    let remote: Vec<Value> = endpoints
        .iter()
        .filter(|e| e.2 != host)
        .map(|(net, _, h, ip)| {
            json!({"network": net, "ip": ip, "vtep": lab.state.hosts[*h].address.to_string()})
        })
        .collect();
    json!({
        "networks": [
            {"id": "ingress", "vni": 4096, "subnet": "10.255.0.0/16", "gateway": "10.255.0.1"},
            {"id": "web", "vni": 4097, "subnet": "10.0.9.0/24", "gateway": "10.0.9.1"}
        ],
        "local_endpoints": local,
        "remote_endpoints": remote,
    })
}

fn lb_state(lab: &LabGuard, states: [&str; 4]) -> Value {
    let backend = |(c, h, ip): &(&str, usize, &str), state: &str| {
        let i = TASKS.iter().position(|t| t.0 == *c).unwrap();
        json!({
            "task": c, "node": lab.state.hosts[*h].address.to_string(),
            "addresses": {"ingress": ip, "web": WEB[i]}, "state": state
        })
    };
    json!({
        "ingress_network": "ingress",
        "services": [
            {
                "id": "svc-web", "name": "web",
                "vips": [{"network": "web", "address": WEB_VIP}],
                "ports": [
                    {"protocol": "tcp", "published": 8080, "target": 80},
                    {"protocol": "udp", "published": 5353, "target": 9999}
                ],
                "backends": TASKS.iter().zip(states).map(|(t, s)| backend(t, s)).collect::<Vec<_>>()
            },
            {
                "id": "svc-hostmode", "name": "hostmode",
                "ports": [{"protocol": "udp", "published": 5454, "target": 9998, "mode": "host"}],
                "backends": [backend(&TASKS[2], "healthy")]
            }
        ]
    })
}

struct Mesh<'a> {
    lab: &'a LabGuard,
}

impl Mesh<'_> {
    fn host(&self, i: usize) -> &lab::HostState {
        &self.lab.state.hosts[i]
    }

    fn lb_file(&self, i: usize) -> PathBuf {
        self.host(i).run_dir.join("declared-lb.json")
    }

    fn status(&self, i: usize) -> Value {
        std::fs::read(self.host(i).run_dir.join("agent/lb.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    fn generation(&self, i: usize) -> u64 {
        self.status(i)["generation"].as_u64().unwrap_or(0)
    }

    /// Writes the LB state on every host and waits until each agent applied it.
    fn declare_lb(&self, state: &Value) -> Vec<Value> {
        let before: Vec<u64> = (0..3).map(|i| self.generation(i)).collect();
        for i in 0..3 {
            write_atomic(&self.lb_file(i), state.to_string().as_bytes());
        }
        (0..3)
            .map(|i| {
                wait_for(&format!("h{} applies the LB state", i + 1), BOUND, || {
                    let s = self.status(i);
                    if s["generation"].as_u64().unwrap_or(0) > before[i] {
                        Ok(s)
                    } else {
                        Err(s.to_string())
                    }
                })
            })
            .collect()
    }

    fn pid(&self, t: (&str, usize, &str)) -> u32 {
        self.lab
            .exec_ok(
                &self.host(t.1).name,
                &["docker", "inspect", "-f", "{{.State.Pid}}", t.0],
            )
            .parse()
            .expect("pid")
    }

    fn hostname(&self, t: (&str, usize, &str)) -> String {
        self.lab.exec_ok(
            &self.host(t.1).name,
            &["docker", "inspect", "-f", "{{.Config.Hostname}}", t.0],
        )
    }

    fn http(&self, host: usize) -> Result<String, String> {
        let url = format!("http://{}:8080/", self.host(host).address);
        let out = self.lab.client(&["curl", "-sS", "--max-time", "5", &url]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    fn client_netns(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.lab.state.client.netns)
    }

    fn mesh_stats(&self, i: usize, shoal: &std::path::Path) -> Value {
        let pin = self.host(i).pin_dir.display().to_string();
        let text = self.lab.exec_ok(
            &self.host(i).name,
            &[
                &shoal.display().to_string(),
                "dataplane",
                "stats",
                "--json",
                "--pin-dir",
                &pin,
            ],
        );
        serde_json::from_str(&text).expect("stats JSON")
    }
}

/// Runs `f` on a thread inside the network namespace at `path`.
fn in_netns<T: Send>(path: &std::path::Path, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(path).expect("open netns");
    thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this short-lived thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// UDP servers in the tasks' namespaces answering `<task> <peer address> <payload>`.
struct UdpServers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl UdpServers {
    fn start(pids: &[(&'static str, u32)], ports: &[u16]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &(task, pid) in pids {
            for &port in ports {
                let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
                let sock = in_netns(&path, || UdpSocket::bind(("0.0.0.0", port)).unwrap());
                sock.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let s = stop.clone();
                threads.push(thread::spawn(move || {
                    let mut buf = [0u8; 512];
                    while !s.load(Ordering::Relaxed) {
                        if let Ok((n, from)) = sock.recv_from(&mut buf) {
                            let reply = format!(
                                "{task} {} {}",
                                from.ip(),
                                String::from_utf8_lossy(&buf[..n])
                            );
                            let _ = sock.send_to(reply.as_bytes(), from);
                        }
                    }
                }));
            }
        }
        Self { stop, threads }
    }
}

impl Drop for UdpServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sends `msg` to `to` from a fresh socket in the client namespace; Ok((task, peer the
/// task saw, address the reply came from)).
fn udp_ask(
    netns: &std::path::Path,
    to: SocketAddr,
    msg: &str,
) -> Result<(String, String, SocketAddr), String> {
    let sock = in_netns(netns, || UdpSocket::bind("0.0.0.0:0").unwrap());
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send_to(msg.as_bytes(), to)
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let (n, from) = sock.recv_from(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let mut parts = text.splitn(3, ' ');
    let (task, peer, echoed) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    if echoed != msg {
        return Err(format!("echo {echoed:?} for {msg:?}"));
    }
    Ok((task, peer, from))
}

/// The task whose namespace holds an established TCP connection from the client's
/// `port` (read from /proc/<pid>/net/tcp{,6}, which show the process's namespace;
/// httpd's socket is IPv6, so the client is a v4-mapped address there).
fn task_holding(pids: &[(&'static str, u32)], port: u16) -> Option<&'static str> {
    let client = u32::from_ne_bytes(CLIENT_IP.parse::<std::net::Ipv4Addr>().unwrap().octets());
    let remote = format!("{client:08X}:{port:04X}");
    pids.iter().find_map(|&(task, pid)| {
        ["tcp", "tcp6"].iter().find_map(|file| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).ok()?;
            text.lines()
                .skip(1)
                .any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.get(2).is_some_and(|r| r.ends_with(&remote)) && cols.get(3) == Some(&"01")
                })
                .then_some(task)
        })
    })
}

#[test]
fn mesh_reaches_every_task_from_every_host_with_the_client_address() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('m', 3);
    let m = Mesh { lab: &guard };

    for t in TASKS.iter().chain([&CLIENT_C]) {
        guard.exec_ok(
            &m.host(t.1).name,
            &[
                "docker",
                "run",
                "-d",
                "--init",
                "--network",
                "none",
                "--name",
                t.0,
                "shoal/web:1",
            ],
        );
    }
    let healthy = ["healthy"; 4];
    let start_agent = |i: usize| {
        let overlay = m.host(i).run_dir.join("declared-overlay.json");
        let extra = vec![
            "--declared-state".to_string(),
            overlay.display().to_string(),
            "--declared-lb".to_string(),
            m.lb_file(i).display().to_string(),
        ];
        lab::agent::start(&guard.state, m.host(i), &shoal, &extra)
            .unwrap_or_else(|e| panic!("start agent on h{}: {e:#}", i + 1))
    };
    for i in 0..3 {
        let overlay = m.host(i).run_dir.join("declared-overlay.json");
        write_atomic(&overlay, overlay_state(&guard, i).to_string().as_bytes());
        write_atomic(
            &m.lb_file(i),
            lb_state(&guard, healthy).to_string().as_bytes(),
        );
        start_agent(i);
    }
    for i in 0..3 {
        wait_for(&format!("h{}: reply path ready", i + 1), BOUND, || {
            let s = m.status(i);
            if s["reply_path"] == "ready" && s["frontends"].as_u64().unwrap_or(0) > 0 {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        });
    }
    // The client's veth hands over segments with offloaded (partial) checksums, which
    // XDP on the hosts' veths would forward as they are: a NIC on a wire never does.
    let out = guard.client(&["ethtool", "-K", "eth0", "tx", "off"]);
    assert!(out.status.success(), "{out:?}");

    let names: Vec<String> = TASKS.iter().map(|t| m.hostname(*t)).collect();
    let task_of = |body: &str| {
        names
            .iter()
            .position(|n| body.contains(&format!("host={n} ")))
            .map(|i| TASKS[i].0)
    };

    // TCP: 40 requests to each host's address reach all 4 tasks, which see the client.
    for h in 0..3 {
        wait_for(&format!("an answer through h{}", h + 1), BOUND, || {
            m.http(h)
        });
        let mut seen = BTreeSet::new();
        for _ in 0..40 {
            let body = m
                .http(h)
                .unwrap_or_else(|e| panic!("request via h{}: {e}", h + 1));
            assert!(
                body.contains(&format!("client={CLIENT_IP}")),
                "the task did not see the client's address: {body:?}"
            );
            seen.insert(task_of(&body).unwrap_or_else(|| panic!("unknown answer {body:?}")));
        }
        assert_eq!(
            seen,
            TASKS.iter().map(|t| t.0).collect::<BTreeSet<_>>(),
            "via h{}",
            h + 1
        );
    }

    // UDP through the published port: answered from the address and port asked.
    let pids: Vec<(&'static str, u32)> = TASKS.iter().map(|t| (t.0, m.pid(*t))).collect();
    let _udp = UdpServers::start(&pids, &[9999, 9998]);
    let client_ns = m.client_netns();
    let mut udp_seen = BTreeSet::new();
    for h in 0..3 {
        let to: SocketAddr = format!("{}:5353", m.host(h).address).parse().unwrap();
        for i in 0..8 {
            let (task, peer, from) = wait_for("UDP answer", BOUND, || {
                udp_ask(&client_ns, to, &format!("m{h}{i}"))
            });
            assert_eq!(from, to, "the reply comes from where the client sent");
            assert_eq!(peer, CLIENT_IP, "the task saw the client");
            udp_seen.insert(task);
        }
    }
    assert_eq!(udp_seen.len(), 4, "UDP flows over all tasks: {udp_seen:?}");

    // Host mode: 5454 answers on h3 (its task), not on h1 or h2.
    let to: SocketAddr = format!("{}:5454", m.host(2).address).parse().unwrap();
    let (task, _, from) = wait_for("host-mode answer on h3", BOUND, || {
        udp_ask(&client_ns, to, "hm")
    });
    assert_eq!((task.as_str(), from), ("t3", to));
    for h in 0..2 {
        let to: SocketAddr = format!("{}:5454", m.host(h).address).parse().unwrap();
        let r = udp_ask(&client_ns, to, "hm");
        assert!(r.is_err(), "host-mode port answered on h{}: {r:?}", h + 1);
    }

    // From the node itself: its own address and 127.0.0.1 reach every task (local and
    // remote), which see the node's address; UDP replies come from what was asked.
    for h in 0..3 {
        let host = m.host(h).clone();
        let node = host.address.to_string();
        for addr in [node.as_str(), "127.0.0.1"] {
            let url = format!("http://{addr}:8080/");
            let ask = || {
                let out = guard.exec(&host.name, &["curl", "-sS", "--max-time", "5", &url]);
                if out.status.success() {
                    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
                }
            };
            wait_for(&format!("{url} from {}", host.name), BOUND, ask);
            let mut seen = BTreeSet::new();
            for _ in 0..12 {
                let body = ask().unwrap_or_else(|e| panic!("{url} from {}: {e}", host.name));
                assert!(
                    body.ends_with(&format!("client={node}")),
                    "from {}: the task should see the node's address: {body:?}",
                    host.name
                );
                seen.insert(task_of(&body).unwrap_or_else(|| panic!("unknown answer {body:?}")));
            }
            assert_eq!(
                seen,
                TASKS.iter().map(|t| t.0).collect::<BTreeSet<_>>(),
                "{url} from {}",
                host.name
            );
        }
        let vip_status: Value = serde_json::from_slice(
            &std::fs::read(host.run_dir.join("agent/vip.json")).expect("vip.json"),
        )
        .expect("vip.json is JSON");
        // 3 published ports on the node's address and on 127.0.0.1, and the 2 in
        // ingress mode from each container on `web` here; the VIP on `web`.
        let containers = TASKS.iter().chain([&CLIENT_C]).filter(|t| t.1 == h).count();
        assert_eq!(vip_status["node_ports"], 6 + 2 * containers, "{vip_status}");
        assert_eq!(vip_status["vips"], 1, "{vip_status}");
        let host_ns = PathBuf::from("/run/netns").join(&host.netns);
        let mut seen = BTreeSet::new();
        for (i, addr) in [host.address, std::net::Ipv4Addr::LOCALHOST]
            .iter()
            .cycle()
            .take(8)
            .enumerate()
        {
            let to = SocketAddr::from((*addr, 5353));
            let (task, peer, from) = wait_for("UDP answer from the node", BOUND, || {
                udp_ask(&host_ns, to, &format!("n{h}{i}"))
            });
            assert_eq!(from, to, "the reply comes from where the node sent");
            assert_eq!(peer, node, "the task saw the node's address");
            seen.insert(task);
        }
        assert_eq!(
            seen.len(),
            4,
            "UDP from {} over all tasks: {seen:?}",
            host.name
        );
        // Host mode from the node: only h3 has the task.
        let to = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 5454));
        if h == 2 {
            let (task, _, from) = wait_for("host-mode answer from h3 itself", BOUND, || {
                udp_ask(&host_ns, to, "hm")
            });
            assert_eq!((task.as_str(), from), ("t3", to));
        } else {
            let r = udp_ask(&host_ns, to, "hm");
            assert!(
                r.is_err(),
                "host-mode port answered on h{} itself: {r:?}",
                h + 1
            );
        }
    }

    // From a container on h2 (on `web` only): h2's address and a published port reach
    // every task (through the service's VIP on `web`), which see the container.
    let h2 = m.host(1).clone();
    let url = format!("http://{}:8080/", h2.address);
    let ask = || {
        let out = guard.exec(
            &h2.name,
            &[
                "docker", "exec", CLIENT_C.0, "timeout", "10", "wget", "-qO-", &url,
            ],
        );
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    };
    wait_for(&format!("{url} from container {}", CLIENT_C.0), BOUND, ask);
    let mut seen = BTreeSet::new();
    for _ in 0..12 {
        let body = ask().unwrap_or_else(|e| panic!("{url} from {}: {e}", CLIENT_C.0));
        assert!(
            body.ends_with(&format!("client={}", CLIENT_C.2)),
            "the task should see the container: {body:?}"
        );
        seen.insert(task_of(&body).unwrap_or_else(|| panic!("unknown answer {body:?}")));
    }
    assert_eq!(
        seen,
        TASKS.iter().map(|t| t.0).collect::<BTreeSet<_>>(),
        "{url} from container {}",
        CLIENT_C.0
    );
    let c_ns = PathBuf::from(format!("/proc/{}/ns/net", m.pid(CLIENT_C)));
    let to = SocketAddr::from((h2.address, 5353));
    let mut seen = BTreeSet::new();
    for i in 0..8 {
        let (task, peer, from) = wait_for("UDP answer from the container", BOUND, || {
            udp_ask(&c_ns, to, &format!("c{i}"))
        });
        assert_eq!(from, to, "the reply comes from where the container sent");
        assert_eq!(peer, CLIENT_C.2, "the task saw the container");
        seen.insert(task);
    }
    assert_eq!(
        seen.len(),
        4,
        "UDP from the container over all tasks: {seen:?}"
    );

    // An idle TCP connection made now through h2 is held across everything below.
    let via: SocketAddr = format!("{}:8080", m.host(1).address).parse().unwrap();
    let mut held =
        in_netns(&client_ns, || TcpStream::connect_timeout(&via, BOUND)).expect("held connection");
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let held_port = held.local_addr().unwrap().port();
    let held_task = wait_for("the held connection's task", BOUND, || {
        task_holding(&pids, held_port).ok_or("not found".to_string())
    });
    // Another task is made unhealthy.
    let sick = if held_task == "t2" { 2 } else { 1 };
    let mut states = healthy;
    states[sick] = "unhealthy";
    let statuses = m.declare_lb(&lb_state(&guard, states));
    for s in &statuses {
        assert!(s["refused"].is_null(), "{s}");
    }
    for h in 0..3 {
        for _ in 0..24 {
            let body = m.http(h).expect("request after the change");
            assert_ne!(task_of(&body), Some(TASKS[sick].0), "via h{}", h + 1);
        }
    }

    // A bad state (a backend on an unknown network) is refused whole and the last good
    // one stays: the sick task stays out although the bad state calls it healthy.
    let mut bad = lb_state(&guard, healthy);
    bad["services"][0]["backends"][0]["addresses"]["nope"] = json!("10.9.9.9");
    for s in m.declare_lb(&bad) {
        let why = s["refused"].as_str().unwrap_or_default();
        assert!(why.contains("unknown network \"nope\""), "{s}");
    }
    for _ in 0..12 {
        let body = m.http(0).expect("request after the refusal");
        assert_ne!(task_of(&body), Some(TASKS[sick].0));
    }

    // The agent of the node the held connection entered restarts: nothing is dropped.
    let agent: Value =
        serde_json::from_str(&std::fs::read_to_string(lab::agent::status_file(m.host(1))).unwrap())
            .unwrap();
    let pid = agent["pid"].as_u64().expect("agent pid") as i32;
    // SAFETY: ends the agent this test started, by its PID.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_for("h2's agent stops", BOUND, || {
        // The agent is this process's child: reap it (a zombie still has /proc/PID).
        let mut st = 0;
        // SAFETY: WNOHANG waitpid on a PID this test started.
        let reaped = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } == pid;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'));
        if reaped || zombie || stat.is_empty() {
            Ok(())
        } else {
            Err("running".into())
        }
    });
    // While it is down, the mesh keeps working through h2 (XDP through its pinned link,
    // the reply path's filters, the pinned maps).
    for _ in 0..8 {
        let body = m
            .http(1)
            .expect("request through h2 while its agent is down");
        assert!(body.contains(&format!("client={CLIENT_IP}")), "{body}");
    }
    let gen_before = m.generation(1);
    start_agent(1);
    wait_for("h2's restarted agent applies", BOUND, || {
        let s = m.status(1);
        if s["generation"].as_u64().unwrap_or(0) != gen_before && s["reply_path"] == "ready" {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    let s = m.status(1);
    assert!(
        s["written"].as_u64().unwrap_or(99) <= 2,
        "a restarted agent adopts its maps instead of rewriting them: {s}"
    );
    for _ in 0..8 {
        m.http(1)
            .expect("request through h2 after its agent restarted");
    }

    // The held connection still works after all that.
    held.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    held.read_to_string(&mut reply)
        .expect("held connection answers");
    assert!(reply.contains(&format!("client={CLIENT_IP}")), "{reply}");
    assert_eq!(task_of(&reply), Some(held_task), "{reply}");

    // The counters saw it all.
    let stats = m.mesh_stats(1, &shoal);
    assert!(stats["mesh_remote"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(stats["mesh_local"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(
        stats["mesh_replies_out"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    assert!(
        stats["mesh_flow_capacity"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );

    lab::down(&guard.layout).expect("lab down");
    assert_eq!(lab::leftovers(&guard.layout), Vec::<String>::new());
}
