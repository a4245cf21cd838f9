//! Service VIPs on a real 3-host lab of plain agents (no `--declared-*` file): a cluster
//! made through the `shoal` CLI, overlay networks `web` and `db`, a service `web` of 4
//! `shoal/web:1` tasks over the 3 hosts on `web` (with a health check), a `client` task
//! on `web` on h2 and an `outsider` task on `db` on h3. Every node's agent computes its
//! VIP state from the cluster.
//!
//! From the client: 40 HTTP requests to web's VIP reach all 4 tasks; UDP through the VIP
//! (connected and unconnected sockets) reaches every task and replies come from the VIP;
//! ping to the VIP is answered. The task on `db` cannot use the VIP. A task whose health
//! check fails gets no new connections while a TCP connection held idle across the
//! change still works, and its replacement gets them; an agent restart keeps the VIPs
//! working while it is down and adopts the maps; the replacement of a killed client (a
//! new namespace) gets the VIP.
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use serde_json::Value;
use shoal_tests::{
    lab, privileged,
    swarm::{
        agent_pid, answered_by, hostnames, in_netns, netns_of, task_holding, Cli, Task, BOUND,
    },
    tables::{array, declared},
    wait_for, LabGuard,
};

const UDP_PORT: u16 = 9999;

/// The client's host (index): a worker, whose agent the test restarts.
const CLIENT_HOST: usize = 1;

fn vip_status(h: &lab::HostState) -> Value {
    std::fs::read(h.run_dir.join("agent/vip.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// `wget http://VIP/` in the task's container.
fn http_vip(cli: &Cli, from: &Task, vip: Ipv4Addr) -> Result<String, String> {
    cli.exec_in(
        from,
        &["timeout", "10", "wget", "-qO-", &format!("http://{vip}/")],
    )
}

/// Sends requests from `from` to the VIP until every hostname in `want` has answered;
/// every answer must come from one of them.
fn reach_all(cli: &Cli, what: &str, from: &Task, vip: Ipv4Addr, want: &BTreeSet<String>) {
    let mut seen = BTreeSet::new();
    wait_for(what, BOUND, || {
        let body = http_vip(cli, from, vip)?;
        let host = answered_by(&body).ok_or(format!("not a shoal/web answer: {body}"))?;
        assert!(
            want.contains(&host),
            "{what}: answered by {host}, not one of {want:?}"
        );
        seen.insert(host);
        if &seen == want {
            Ok(())
        } else {
            Err(format!("answered so far by {seen:?} of {want:?}"))
        }
    });
}

/// UDP servers in the tasks' namespaces answering `<task hostname> <payload>`.
struct UdpServers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl UdpServers {
    fn start(tasks: &[(Task, u32)]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (task, pid) in tasks {
            let sock = in_netns(&netns_of(*pid), || {
                UdpSocket::bind(("0.0.0.0", UDP_PORT)).unwrap()
            });
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let s = stop.clone();
            let name = task.hostname();
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let reply = format!("{name} {}", String::from_utf8_lossy(&buf[..n]));
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

fn udp_reply(
    sock: &UdpSocket,
    vip: SocketAddr,
    connected: bool,
    msg: &str,
) -> Result<(String, SocketAddr), String> {
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
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();
    let host = |i: usize| &guard.state.hosts[i];

    cli.ok(
        "h1",
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.0.9.0/24",
            "web",
        ],
    );
    cli.ok(
        "h1",
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.0.10.0/24",
            "db",
        ],
    );
    // A task whose /tmp/sick exists fails its health check (in about a second).
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--detach",
            "--replicas",
            "4",
            "--network",
            "web",
            "--health-cmd",
            "test ! -f /tmp/sick",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            "shoal/web:1",
        ],
    );
    // The client in dnsrr mode: web's is then the only VIP on the client's host.
    let on_client_host = format!("node.hostname=={}", host(CLIENT_HOST).name);
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "client",
            "--detach",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            "web",
            "--constraint",
            &on_client_host,
            "shoal/web:1",
        ],
    );
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "outsider",
            "--detach",
            "--network",
            "db",
            "--constraint",
            "node.hostname==h3",
            "shoal/web:1",
        ],
    );
    let web = cli.wait_running("web", 4, |t| {
        t.iter().map(|x| &x.node).collect::<BTreeSet<_>>().len() == 3
    });
    let client = cli.wait_running("client", 1, |_| true).remove(0);
    let outsider = cli.wait_running("outsider", 1, |_| true).remove(0);
    let vip = cli.vip("web", "web");
    assert!(vip.to_string().starts_with("10.0.9."), "web's VIP {vip}");
    println!("web: VIP {vip}, tasks {web:#?}");

    // TCP: 40 requests from the client reach all 4 tasks, on every host.
    reach_all(
        &cli,
        "the client reaching all 4 web tasks through the VIP",
        &client,
        vip,
        &hostnames(&web),
    );
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let body = http_vip(&cli, &client, vip).expect("request to the VIP");
        seen.insert(answered_by(&body).unwrap_or_else(|| panic!("unknown answer {body:?}")));
    }
    assert_eq!(seen, hostnames(&web), "40 requests through the VIP");
    let status = wait_for("the client host's VIP status", BOUND, || {
        let s = vip_status(host(CLIENT_HOST));
        if s["healthy_backends"] == 4 {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    assert_eq!(status["vips"], 1, "{status}");
    assert!(status["refused"].is_null(), "{status}");

    // Ping to the VIP is answered.
    cli.exec_in(&client, &["ping", "-c", "1", "-W", "5", &vip.to_string()])
        .expect("ping to the VIP");

    // UDP: a connected socket per flow, round-robin over every task; replies come from
    // the VIP for unconnected sockets too.
    let pids: Vec<(Task, u32)> = web.iter().map(|t| (t.clone(), cli.pid(t))).collect();
    let _udp = UdpServers::start(&pids);
    let client_ns = netns_of(cli.pid(&client));
    let vip_udp = SocketAddr::from((vip, UDP_PORT));
    let mut udp_seen = BTreeSet::new();
    for i in 0..8 {
        let sock = in_netns(&client_ns, || {
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
        let (task, _) = udp_reply(&sock, vip_udp, true, &format!("c{i}")).expect("UDP reply");
        udp_seen.insert(task);
    }
    assert_eq!(udp_seen, hostnames(&web), "UDP flows over all tasks");
    let sock = in_netns(&client_ns, || UdpSocket::bind("0.0.0.0:0").unwrap());
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let (first, from) = udp_reply(&sock, vip_udp, false, "u0").expect("unconnected UDP reply");
    assert_eq!(from, vip_udp, "the reply's source is the VIP");
    for i in 1..4 {
        let (task, from) = udp_reply(&sock, vip_udp, false, &format!("u{i}")).unwrap();
        assert_eq!(
            (task.as_str(), from),
            (first.as_str(), vip_udp),
            "one flow, one task"
        );
    }

    // A task on another network does not see the VIP.
    cli.exec_in(&outsider, &["ping", "-c", "1", "-W", "5", "10.0.10.1"])
        .expect("the outsider reaches its own gateway");
    let out = http_vip(&cli, &outsider, vip);
    assert!(
        out.is_err(),
        "the outsider on db reached the VIP of web: {out:?}"
    );

    // An idle TCP connection made now is held across the changes below.
    let mut held = in_netns(&client_ns, || {
        TcpStream::connect_timeout(&SocketAddr::from((vip, 80)), BOUND)
    })
    .expect("held connection");
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let SocketAddr::V4(held_from) = held.local_addr().unwrap() else {
        panic!("an IPv4 connection")
    };
    let held_task = wait_for("the held connection's task", BOUND, || {
        task_holding(&pids, held_from).ok_or(format!("no task holds {held_from}"))
    });

    // Another task fails its health check: no new connection reaches it, and every
    // request is answered.
    let sick = web
        .iter()
        .find(|t| **t != held_task)
        .expect("a task other than the held one")
        .clone();
    cli.exec_in(&sick, &["touch", "/tmp/sick"])
        .expect("mark a task sick");
    wait_for("the sick task failing", BOUND, || {
        let running = cli.running("web")?;
        if running.contains(&sick) {
            Err(format!("still running: {running:#?}"))
        } else {
            Ok(())
        }
    });
    wait_for(
        "the failed task out of the client host's declared backends",
        BOUND,
        || {
            let lb = declared(host(CLIENT_HOST), "lb.json");
            let backends: Vec<String> = array(&lb, "services")
                .into_iter()
                .filter(|s| s["name"] == "web")
                .flat_map(|s| array(s, "backends"))
                .filter_map(|b| b["task"].as_str().map(str::to_string))
                .collect();
            if backends.contains(&sick.id) {
                Err(format!("backends {backends:?}"))
            } else {
                Ok(())
            }
        },
    );
    wait_for(
        "24 requests in a row through the VIP answered, none by the failed task",
        BOUND,
        || {
            for k in 0..24 {
                let body = http_vip(&cli, &client, vip).map_err(|e| format!("request {k}: {e}"))?;
                if answered_by(&body) == Some(sick.hostname()) {
                    return Err(format!("request {k} reached the failed task: {body}"));
                }
            }
            Ok(())
        },
    );
    let web = cli.wait_running("web", 4, |t| !t.contains(&sick));
    reach_all(
        &cli,
        "the client reaching the 4 tasks, the replacement included",
        &client,
        vip,
        &hostnames(&web),
    );

    // An agent restart: VIPs keep working while no agent runs (the links stay pinned),
    // and the new agent adopts the maps: it writes nothing.
    let h = host(CLIENT_HOST);
    let agent = agent_pid(h);
    lab::procs::signal(agent, libc::SIGTERM);
    assert!(
        lab::procs::wait_gone(&[agent], BOUND),
        "the agent on {} did not stop",
        h.name
    );
    let body = http_vip(&cli, &client, vip).expect("the VIP works while the agent is down");
    assert!(
        hostnames(&web).contains(&answered_by(&body).unwrap_or_default()),
        "{body}"
    );
    let _ = std::fs::remove_file(h.run_dir.join("agent/vip.json"));
    cli.start_agent(&shoal, CLIENT_HOST, &[]);
    let s = wait_for("the restarted agent reports its VIPs", BOUND, || {
        let s = vip_status(h);
        if s["healthy_backends"] == 4 {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    assert_eq!(s["map_writes"], 0, "a restarted agent adopts: {s}");
    reach_all(
        &cli,
        "the client reaching the 4 tasks after its agent restarted",
        &client,
        vip,
        &hostnames(&web),
    );

    // The held connection still works after all that, with its task.
    held.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    held.read_to_string(&mut reply)
        .expect("held connection answers");
    assert_eq!(
        answered_by(&reply),
        Some(held_task.hostname()),
        "the held connection's task: {reply}"
    );
    assert_eq!(
        held.peer_addr().unwrap().ip(),
        std::net::IpAddr::V4(vip),
        "getpeername of a TCP socket says the VIP"
    );

    // The client's container is killed: its replacement (a new container, a new
    // namespace, a new cookie) gets the VIP, and the dead one's scope goes.
    guard.exec_ok(&client.node, &["docker", "kill", &client.container]);
    let replacement = cli
        .wait_running("client", 1, |t| t[0].id != client.id)
        .remove(0);
    let body = wait_for("the client's replacement uses the VIP", BOUND, || {
        http_vip(&cli, &replacement, vip)
    });
    assert!(
        hostnames(&web).contains(&answered_by(&body).unwrap_or_default()),
        "{body}"
    );
    wait_for(
        "one scope per container on the client's host, the dead client's gone",
        BOUND,
        || {
            let s = vip_status(h);
            let local = array(&declared(h, "overlay.json"), "local_endpoints").len();
            if s["scopes"] == local {
                Ok(())
            } else {
                Err(format!("{local} local endpoints; {s}"))
            }
        },
    );

    // The client host's counters, through the stats command.
    let out = std::process::Command::new(&shoal)
        .args(["dataplane", "stats", "--json", "--pin-dir"])
        .arg(&h.pin_dir)
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
