//! Service VIPs on a real 3-host lab: 4 `shoal/web:1` tasks over 3 hosts behind a VIP on
//! the user network `web`, every host's agent fed the same declared load-balancing state
//! and its own declared overlay state. From a container on `web`: 40 HTTP requests to
//! `VIP:80` reach all 4 tasks; UDP through the VIP (connected and unconnected sockets)
//! reaches every task and replies come from the VIP; ping to the VIP is answered. A
//! container on another network cannot use the VIP. A backend marked unhealthy gets no
//! new connections while a TCP connection held idle across the change still works; a bad
//! declared state is refused whole and the last good one stays in force; an agent
//! restart keeps the VIPs working and adopts the maps; a restarted container (a new
//! namespace) gets its VIPs back.
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
const VIP: &str = "10.0.9.100";
const UDP_PORT: u16 = 9999;

/// (container, host index 0..3, web address)
const TASKS: [(&str, usize, &str); 4] = [
    ("t1", 0, "10.0.9.21"),
    ("t2", 1, "10.0.9.22"),
    ("t3", 2, "10.0.9.23"),
    ("t4", 0, "10.0.9.24"),
];
/// The client on `web`, and a container on `db` only.
const CLIENT: (&str, usize, &str) = ("c1", 1, "10.0.9.11");
const OUTSIDER: (&str, usize, &str) = ("c2", 2, "10.0.10.11");

fn start_agent(
    lab: &LabGuard,
    h: &lab::HostState,
    shoal: &std::path::Path,
    extra: &[String],
) -> u32 {
    let status = lab::agent::start(&lab.state, h, shoal, extra)
        .unwrap_or_else(|e| panic!("start agent on {}: {e:#}", h.name));
    let status: Value = serde_json::from_str(&status).expect("agent.json");
    status["pid"].as_u64().expect("pid") as u32
}

fn overlay_state(lab: &LabGuard, host: usize) -> Value {
    let endpoints: Vec<(&str, &str, usize, &str)> = TASKS
        .iter()
        .chain([&CLIENT])
        .map(|(c, h, ip)| ("web", *c, *h, *ip))
        .chain([("db", OUTSIDER.0, OUTSIDER.1, OUTSIDER.2)])
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
            {"id": "web", "vni": 4097, "subnet": "10.0.9.0/24", "gateway": "10.0.9.1"},
            {"id": "db", "vni": 4098, "subnet": "10.0.10.0/24", "gateway": "10.0.10.1"}
        ],
        "local_endpoints": local,
        "remote_endpoints": remote,
    })
}

fn lb_state(lab: &LabGuard, states: [&str; 4]) -> Value {
    json!({
        "services": [{
            "id": "svc-web", "name": "web",
            "vips": [{"network": "web", "address": VIP}],
            "backends": TASKS.iter().zip(states).map(|((c, h, ip), state)| json!({
                "task": c, "node": lab.state.hosts[*h].address.to_string(),
                "addresses": {"web": ip}, "state": state
            })).collect::<Vec<_>>()
        }]
    })
}

struct Vips<'a> {
    lab: &'a LabGuard,
}

impl Vips<'_> {
    fn host(&self, i: usize) -> &lab::HostState {
        &self.lab.state.hosts[i]
    }

    fn lb_file(&self, i: usize) -> PathBuf {
        self.host(i).run_dir.join("declared-lb.json")
    }

    fn status(&self, i: usize) -> Value {
        std::fs::read(self.host(i).run_dir.join("agent/vip.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    fn generation(&self, i: usize) -> u64 {
        self.status(i)["generation"].as_u64().unwrap_or(0)
    }

    /// Writes the LB state on every host and waits until each agent has applied a
    /// newer generation; returns the statuses.
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

    fn exec_in(&self, c: (&str, usize, &str), argv: &[&str]) -> Result<String, String> {
        self.lab.docker_exec(&self.host(c.1).name, c.0, argv)
    }

    fn http_vip(&self, c: (&str, usize, &str)) -> Result<String, String> {
        self.exec_in(
            c,
            &["timeout", "10", "wget", "-qO-", &format!("http://{VIP}/")],
        )
    }

    fn pid(&self, c: (&str, usize, &str)) -> u32 {
        self.lab
            .exec_ok(
                &self.host(c.1).name,
                &["docker", "inspect", "-f", "{{.State.Pid}}", c.0],
            )
            .parse()
            .expect("pid")
    }

    fn hostname(&self, c: (&str, usize, &str)) -> String {
        self.lab.exec_ok(
            &self.host(c.1).name,
            &["docker", "inspect", "-f", "{{.Config.Hostname}}", c.0],
        )
    }
}

/// Runs `f` on a thread inside the network namespace of process `pid`; sockets made
/// there stay in that namespace.
fn in_netns_of<T: Send>(pid: u32, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(format!("/proc/{pid}/ns/net")).expect("open netns");
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

/// UDP servers in the tasks' namespaces answering `<task> <payload>`.
struct UdpServers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl UdpServers {
    fn start(pids: &[(&'static str, u32)]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &(task, pid) in pids {
            let sock = in_netns_of(pid, || UdpSocket::bind(("0.0.0.0", UDP_PORT)).unwrap());
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let s = stop.clone();
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let reply = format!("{task} {}", String::from_utf8_lossy(&buf[..n]));
                        let _ = sock.send_to(reply.as_bytes(), from);
                    }
                }
            }));
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

fn udp_reply(sock: &UdpSocket, connected: bool, msg: &str) -> Result<(String, SocketAddr), String> {
    let vip: SocketAddr = format!("{VIP}:{UDP_PORT}").parse().unwrap();
    let sent = if connected {
        sock.send(msg.as_bytes())
    } else {
        sock.send_to(msg.as_bytes(), vip)
    };
    sent.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let (n, from) = sock.recv_from(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let (task, echoed) = text.split_once(' ').ok_or(text.clone())?;
    if echoed != msg {
        return Err(format!("echo {echoed:?} for {msg:?}"));
    }
    Ok((task.to_owned(), from))
}

#[test]
fn vip_balances_tcp_and_udp_answers_ping_and_is_scoped() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('v', 3);
    let v = Vips { lab: &guard };

    for c in TASKS.iter().chain([&CLIENT, &OUTSIDER]) {
        guard.exec_ok(
            &v.host(c.1).name,
            &[
                "docker",
                "run",
                "-d",
                "--init",
                "--network",
                "none",
                "--name",
                c.0,
                "shoal/web:1",
            ],
        );
    }
    let healthy = ["healthy"; 4];
    let mut agents = Vec::new();
    let mut extras = Vec::new();
    for i in 0..3 {
        let overlay = v.host(i).run_dir.join("declared-overlay.json");
        write_atomic(&overlay, overlay_state(&guard, i).to_string().as_bytes());
        write_atomic(
            &v.lb_file(i),
            lb_state(&guard, healthy).to_string().as_bytes(),
        );
        let extra: Vec<String> = vec![
            "--declared-state".to_string(),
            overlay.display().to_string(),
            "--declared-lb".to_string(),
            v.lb_file(i).display().to_string(),
        ];
        agents.push(start_agent(&guard, v.host(i), &shoal, &extra));
        extras.push(extra);
    }
    let names: Vec<String> = TASKS.iter().map(|t| v.hostname(*t)).collect();
    let task_of = |body: &str| {
        names
            .iter()
            .position(|n| body.contains(&format!("host={n} ")))
            .map(|i| TASKS[i].0)
    };

    // TCP: 40 requests from c1 reach all 4 tasks, on every host.
    wait_for("c1 gets an answer through the VIP", BOUND, || {
        v.http_vip(CLIENT)
    });
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let body = v.http_vip(CLIENT).expect("request to the VIP");
        seen.insert(task_of(&body).unwrap_or_else(|| panic!("unknown answer {body:?}")));
    }
    assert_eq!(seen, TASKS.iter().map(|t| t.0).collect::<BTreeSet<_>>());
    let status = v.status(CLIENT.1);
    assert_eq!(status["vips"], 1, "{status}");
    assert_eq!(status["healthy_backends"], 4, "{status}");
    assert!(status["refused"].is_null(), "{status}");

    // Ping to the VIP is answered.
    v.exec_in(CLIENT, &["ping", "-c", "1", "-W", "5", VIP])
        .expect("ping to the VIP");

    // UDP: a connected socket per flow, round-robin over every task; replies come from
    // the VIP for unconnected sockets too.
    let pids: Vec<(&'static str, u32)> = TASKS.iter().map(|t| (t.0, v.pid(*t))).collect();
    let _udp = UdpServers::start(&pids);
    let client_pid = v.pid(CLIENT);
    let vip_udp: SocketAddr = format!("{VIP}:{UDP_PORT}").parse().unwrap();
    let mut udp_seen = BTreeSet::new();
    for i in 0..8 {
        let sock = in_netns_of(client_pid, || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect(vip_udp).unwrap();
            s
        });
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        assert_eq!(
            sock.peer_addr().unwrap(),
            vip_udp,
            "getpeername says the VIP"
        );
        let (task, _) = udp_reply(&sock, true, &format!("c{i}")).expect("UDP reply");
        udp_seen.insert(task);
    }
    assert_eq!(udp_seen.len(), 4, "UDP flows over all tasks: {udp_seen:?}");
    let sock = in_netns_of(client_pid, || UdpSocket::bind("0.0.0.0:0").unwrap());
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let (first, from) = udp_reply(&sock, false, "u0").expect("unconnected UDP reply");
    assert_eq!(from, vip_udp, "the reply's source is the VIP");
    for i in 1..4 {
        let (task, from) = udp_reply(&sock, false, &format!("u{i}")).unwrap();
        assert_eq!(
            (task.as_str(), from),
            (first.as_str(), vip_udp),
            "one flow, one task"
        );
    }

    // A container on another network does not see the VIP.
    v.exec_in(OUTSIDER, &["ping", "-c", "1", "-W", "2", "10.0.10.1"])
        .expect("c2 reaches its own gateway");
    let out = v.http_vip(OUTSIDER);
    assert!(out.is_err(), "c2 on db reached the VIP of web: {out:?}");

    // An idle TCP connection made now is held across the backend changes.
    let mut held = in_netns_of(client_pid, || {
        TcpStream::connect_timeout(&format!("{VIP}:80").parse().unwrap(), BOUND)
    })
    .expect("held connection");
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    // t2 unhealthy: no new connection reaches it.
    let statuses = v.declare_lb(&lb_state(
        &guard,
        ["healthy", "unhealthy", "healthy", "healthy"],
    ));
    assert_eq!(statuses[CLIENT.1]["healthy_backends"], 3, "{:?}", statuses);
    let mut seen = BTreeSet::new();
    for _ in 0..24 {
        let body = v.http_vip(CLIENT).expect("request to the VIP");
        seen.insert(task_of(&body).expect("known task"));
    }
    assert_eq!(seen, BTreeSet::from(["t1", "t3", "t4"]));

    // A bad state (a backend on an unknown network) is refused whole: t2 stays out
    // even though the bad state marks it healthy.
    let mut bad = lb_state(&guard, healthy);
    bad["services"][0]["backends"][0]["addresses"]["nope"] = json!("10.9.9.9");
    let statuses = v.declare_lb(&bad);
    for s in &statuses {
        let why = s["refused"].as_str().unwrap_or_default();
        assert!(why.contains("unknown network \"nope\""), "{s}");
    }
    let mut seen = BTreeSet::new();
    for _ in 0..12 {
        seen.insert(task_of(&v.http_vip(CLIENT).unwrap()).unwrap());
    }
    assert!(
        !seen.contains("t2"),
        "the refused state was applied: {seen:?}"
    );

    // An agent restart (with the bad file still in place): VIPs keep working while no
    // agent runs (the links stay pinned), and the new agent adopts the maps, writes
    // nothing, and keeps the adopted state rather than the refused one.
    let h = CLIENT.1;
    lab::procs::signal(agents[h], libc::SIGTERM);
    assert!(
        lab::procs::wait_gone(&[agents[h]], BOUND),
        "agent on h{} did not stop",
        h + 1
    );
    let body = v
        .http_vip(CLIENT)
        .expect("the VIP works while the agent is down");
    assert_ne!(task_of(&body), Some("t2"), "{body}");
    let status_file = v.host(h).run_dir.join("agent/vip.json");
    let _ = std::fs::remove_file(&status_file);
    agents[h] = start_agent(&guard, v.host(h), &shoal, &extras[h]);
    let s = wait_for("the restarted agent reports", BOUND, || {
        let s = v.status(h);
        if s.is_null() {
            Err("no vip.json yet".into())
        } else {
            Ok(s)
        }
    });
    assert_eq!(s["map_writes"], 0, "a restarted agent adopts: {s}");
    assert!(s["refused"].is_string(), "{s}");
    let mut seen = BTreeSet::new();
    for _ in 0..12 {
        seen.insert(task_of(&v.http_vip(CLIENT).unwrap()).unwrap());
    }
    assert!(!seen.contains("t2"), "after the restart: {seen:?}");
    // A good state again: t2 is back.
    v.declare_lb(&lb_state(&guard, healthy));
    wait_for("t2 gets new connections again", BOUND, || {
        let body = v.http_vip(CLIENT)?;
        if task_of(&body) == Some("t2") {
            Ok(())
        } else {
            Err(body)
        }
    });

    // The held connection still works after all that.
    held.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    held.read_to_string(&mut reply)
        .expect("held connection answers");
    assert!(reply.contains("host="), "{reply}");
    let peer = held.peer_addr().unwrap();
    assert_eq!(
        peer.ip().to_string(),
        VIP,
        "getpeername of a TCP socket says the VIP"
    );

    // A restarted container has a new namespace (a new cookie): its scope follows.
    guard.exec_ok(
        &v.host(CLIENT.1).name,
        &["docker", "restart", "-t", "1", CLIENT.0],
    );
    let body = wait_for("the restarted client uses the VIP again", BOUND, || {
        v.http_vip(CLIENT)
    });
    assert!(task_of(&body).is_some(), "{body}");

    // The client host's counters, through the stats command.
    let out = std::process::Command::new(&shoal)
        .args(["dataplane", "stats", "--json", "--pin-dir"])
        .arg(&v.host(CLIENT.1).pin_dir)
        .output()
        .expect("shoal dataplane stats");
    assert!(out.status.success(), "{out:?}");
    let stats: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    for (name, at_least) in [
        ("vip_connect_tcp", 40),
        ("vip_connect_udp", 8),
        ("vip_udp_flow_new", 1),
        ("vip_recvmsg", 4),
        ("vip_services", 1),
    ] {
        assert!(
            stats[name].as_u64().unwrap_or(0) >= at_least,
            "{name} below {at_least}: {stats}"
        );
    }

    lab::down(&guard.layout).expect("lab down");
    assert_eq!(lab::leftovers(&guard.layout), Vec::<String>::new());
}
