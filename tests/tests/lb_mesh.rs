//! The ingress routing mesh on a real 3-host lab of plain agents (no `--declared-*`
//! file): a cluster made through the `shoal` CLI, an overlay network `web`, a service
//! `web` of 4 `shoal/web:1` tasks over the 3 hosts on `web` (with a health check),
//! published 8080 -> 80 (TCP) and 5353 -> 9999 (UDP) in ingress mode; a service
//! `hostmode` with one task on h3 publishing 5454 -> 9998 (UDP) in host mode; a `client`
//! task on `web` only, on h2. Every node's agent computes its LB state from the cluster.
//!
//! From the client namespace: 40 requests to each host's address reach all 4 tasks
//! (Maglev, the default balancing, spreads clients' ports over them),
//! and every task saw the client's address; UDP through the published port is answered
//! from the address and port the client sent to; the host-mode port answers only on h3.
//! A task whose health check fails gets no new connections and its replacement gets
//! them, while a TCP connection held idle across that change and an agent restart still
//! works after them; while an agent is down, requests through its node are still
//! answered, and the restarted agent adopts its maps.
//! From each host itself, its own address and 127.0.0.1 reach all 4 tasks over TCP and
//! UDP (the tasks see the host's address), and the host-mode port only on h3; from the
//! client task on h2 (on `web`, where the service has its VIP), h2's address does too.
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    path::{Path, PathBuf},
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
        agent_pid, answered_by, client_seen, hostnames, in_netns, netns_of, task_holding, Cli,
        Task, BOUND,
    },
    tables::{array, declared},
    wait_for, LabGuard,
};

/// The host (index) of the client task and of the agent the test restarts: a worker.
const VIA: usize = 1;

/// The held connection's client port: below the client's ephemeral range (32768 on).
const HELD_CLIENT_PORT: u16 = 20999;

fn mesh_status(h: &lab::HostState) -> Value {
    std::fs::read(h.run_dir.join("agent/lb.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// `curl` from the lab's client namespace to `host:8080`.
fn http(lab: &LabGuard, host: &lab::HostState) -> Result<String, String> {
    let url = format!("http://{}:8080/", host.address);
    let out = lab.client(&["curl", "-sS", "--max-time", "5", &url]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn mesh_stats(lab: &LabGuard, h: &lab::HostState, shoal: &Path) -> Value {
    let pin = h.pin_dir.display().to_string();
    let text = lab.exec_ok(
        &h.name,
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

/// UDP servers in the tasks' namespaces, on the given port each, answering
/// `<task hostname> <peer address> <payload>`.
struct UdpServers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl UdpServers {
    fn start(servers: &[(&Task, u32, u16)]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &(task, pid, port) in servers {
            let sock = in_netns(&netns_of(pid), || {
                UdpSocket::bind(("0.0.0.0", port)).unwrap()
            });
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let s = stop.clone();
            let name = task.hostname();
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let reply = format!(
                            "{name} {} {}",
                            from.ip(),
                            String::from_utf8_lossy(&buf[..n])
                        );
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

/// Sends `msg` to `to` from a fresh socket in the namespace `netns`; Ok((task hostname,
/// peer the task saw, address the reply came from)).
fn udp_ask(
    netns: &Path,
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

/// Runs `ask` until every task of `want` has answered, then `n` more times: every
/// answer must come from one of `want`, which saw `seen_as`, and the `n` must reach them
/// all.
fn reach_all(
    what: &str,
    want: &BTreeSet<String>,
    seen_as: &str,
    n: usize,
    ask: impl Fn() -> Result<String, String>,
) {
    let check = |body: &str| -> String {
        assert_eq!(
            client_seen(body).as_deref(),
            Some(seen_as),
            "{what}: the task should see {seen_as}: {body:?}"
        );
        let by = answered_by(body).unwrap_or_else(|| panic!("{what}: unknown answer {body:?}"));
        assert!(
            want.contains(&by),
            "{what}: answered by {by}, not one of {want:?}"
        );
        by
    };
    let mut seen = BTreeSet::new();
    wait_for(what, BOUND, || {
        seen.insert(check(&ask()?));
        if &seen == want {
            Ok(())
        } else {
            Err(format!("answered so far by {seen:?} of {want:?}"))
        }
    });
    let mut seen = BTreeSet::new();
    for k in 0..n {
        let body = ask().unwrap_or_else(|e| panic!("{what}: request {k}: {e}"));
        seen.insert(check(&body));
    }
    assert_eq!(&seen, want, "{what}: {n} requests");
}

#[test]
fn mesh_reaches_every_task_from_every_host_with_the_client_address() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('m', 3);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();
    let host = |i: usize| &guard.state.hosts[i];
    let client_ip = lab::layout::client_address().to_string();

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
            "-p",
            "8080:80",
            "-p",
            "5353:9999/udp",
            "--health-cmd",
            "test ! -f /tmp/sick",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            "shoal/web:1",
        ],
    );
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "hostmode",
            "--detach",
            "-p",
            "mode=host,target=9998,published=5454,protocol=udp",
            "--constraint",
            "node.hostname==h3",
            "shoal/web:1",
        ],
    );
    let on_via = format!("node.hostname=={}", host(VIA).name);
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
            &on_via,
            "shoal/web:1",
        ],
    );
    let web = cli.wait_running("web", 4, |t| {
        t.iter().map(|x| &x.node).collect::<BTreeSet<_>>().len() == 3
    });
    let hostmode = cli.wait_running("hostmode", 1, |_| true).remove(0);
    let client_c = cli.wait_running("client", 1, |_| true).remove(0);
    let client_c_ip = cli.address(&client_c, "10.0.9.").to_string();
    let all = hostnames(&web);
    for h in &guard.state.hosts {
        wait_for(&format!("{}: reply path ready", h.name), BOUND, || {
            let s = mesh_status(h);
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

    // TCP: 40 requests to each host's address reach all 4 tasks, which see the client.
    for h in &guard.state.hosts {
        reach_all(
            &format!("the client through {}", h.name),
            &all,
            &client_ip,
            40,
            || http(&guard, h),
        );
    }

    // UDP through the published port: answered from the address and port asked.
    let mut servers: Vec<(&Task, u32, u16)> = web.iter().map(|t| (t, cli.pid(t), 9999)).collect();
    servers.push((&hostmode, cli.pid(&hostmode), 9998));
    let _udp = UdpServers::start(&servers);
    let client_ns = PathBuf::from("/run/netns").join(&guard.state.client.netns);
    let mut udp_seen = BTreeSet::new();
    for (i, h) in guard.state.hosts.iter().enumerate() {
        let to = SocketAddr::from((h.address, 5353));
        for k in 0..8 {
            let (task, peer, from) = wait_for("UDP answer", BOUND, || {
                udp_ask(&client_ns, to, &format!("m{i}{k}"))
            });
            assert_eq!(from, to, "the reply comes from where the client sent");
            assert_eq!(peer, client_ip, "the task saw the client");
            udp_seen.insert(task);
        }
    }
    assert_eq!(udp_seen, all, "UDP flows over all tasks");

    // Host mode: 5454 answers on h3 (its task), not on h1 or h2.
    let to = SocketAddr::from((host(2).address, 5454));
    let (task, _, from) = wait_for("host-mode answer on h3", BOUND, || {
        udp_ask(&client_ns, to, "hm")
    });
    assert_eq!((task, from), (hostmode.hostname(), to));
    for h in &guard.state.hosts[..2] {
        let to = SocketAddr::from((h.address, 5454));
        let r = udp_ask(&client_ns, to, "hm");
        assert!(r.is_err(), "host-mode port answered on {}: {r:?}", h.name);
    }

    // From the node itself: its own address and 127.0.0.1 reach every task (local and
    // remote), which see the node's address; UDP replies come from what was asked.
    let vip_services: Vec<(String, Ipv4Addr)> = ["web", "hostmode", "client"]
        .iter()
        .flat_map(|s| cli.vips(s))
        .collect();
    let web_vip_nets: BTreeSet<String> = cli.vips("web").into_iter().map(|(n, _)| n).collect();
    for h in &guard.state.hosts {
        let node = h.address.to_string();
        for addr in [node.as_str(), "127.0.0.1"] {
            let url = format!("http://{addr}:8080/");
            reach_all(&format!("{url} from {}", h.name), &all, &node, 12, || {
                let out = guard.exec(&h.name, &["curl", "-sS", "--max-time", "5", &url]);
                if out.status.success() {
                    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
                }
            });
        }
        // 3 published ports on the node's address and on 127.0.0.1, and the 2 in ingress
        // mode from each container here on a network where web has a VIP (every
        // container here: web's tasks, the client, hostmode's task on ingress); the VIPs
        // of the networks here.
        let overlay = declared(h, "overlay.json");
        let containers: BTreeSet<&str> = array(&overlay, "local_endpoints")
            .into_iter()
            .filter(|e| web_vip_nets.contains(e["network"].as_str().unwrap_or("")))
            .filter_map(|e| e["container"].as_str())
            .collect();
        let nets: BTreeSet<&str> = array(&overlay, "networks")
            .into_iter()
            .filter_map(|n| n["id"].as_str())
            .collect();
        let vips = vip_services
            .iter()
            .filter(|(n, _)| nets.contains(n.as_str()))
            .count();
        let vip_status = std::fs::read(h.run_dir.join("agent/vip.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or(Value::Null);
        assert_eq!(
            vip_status["node_ports"],
            6 + 2 * containers.len(),
            "{}: containers {containers:?}: {vip_status}",
            h.name
        );
        assert_eq!(vip_status["vips"], vips, "{}: {vip_status}", h.name);
        let host_ns = PathBuf::from("/run/netns").join(&h.netns);
        let mut seen = BTreeSet::new();
        for (i, addr) in [h.address, Ipv4Addr::LOCALHOST]
            .iter()
            .cycle()
            .take(8)
            .enumerate()
        {
            let to = SocketAddr::from((*addr, 5353));
            let (task, peer, from) = wait_for("UDP answer from the node", BOUND, || {
                udp_ask(&host_ns, to, &format!("n{}{i}", h.name))
            });
            assert_eq!(from, to, "the reply comes from where the node sent");
            assert_eq!(peer, node, "the task saw the node's address");
            seen.insert(task);
        }
        assert_eq!(seen, all, "UDP from {} over all tasks", h.name);
        // Host mode from the node: only h3 has the task.
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, 5454));
        if h.name == hostmode.node {
            let (task, _, from) = wait_for("host-mode answer from h3 itself", BOUND, || {
                udp_ask(&host_ns, to, "hm")
            });
            assert_eq!((task, from), (hostmode.hostname(), to));
        } else {
            let r = udp_ask(&host_ns, to, "hm");
            assert!(
                r.is_err(),
                "host-mode port answered on {} itself: {r:?}",
                h.name
            );
        }
    }

    // From the client task on h2 (on `web` only): h2's address and a published port
    // reach every task (through the service's VIP on `web`), which see the container.
    let via = host(VIA);
    let url = format!("http://{}:8080/", via.address);
    reach_all(
        &format!("{url} from the client task"),
        &all,
        &client_c_ip,
        12,
        || cli.exec_in(&client_c, &["timeout", "10", "wget", "-qO-", &url]),
    );
    let c_ns = netns_of(cli.pid(&client_c));
    let to = SocketAddr::from((via.address, 5353));
    let mut seen = BTreeSet::new();
    for i in 0..8 {
        let (task, peer, from) = wait_for("UDP answer from the client task", BOUND, || {
            udp_ask(&c_ns, to, &format!("c{i}"))
        });
        assert_eq!(from, to, "the reply comes from where the container sent");
        assert_eq!(peer, client_c_ip, "the task saw the container");
        seen.insert(task);
    }
    assert_eq!(seen, all, "UDP from the client task over all tasks");

    // An idle TCP connection made now through h2 is held across everything below. Its
    // client port is one no other connection of the client takes (below the ephemeral
    // range): a task sees the client's own address and port whichever node a connection
    // came through, so a later request through another node from the same port, sent to
    // the same task, would meet the held connection there (one 4-tuple at the task).
    let mut held = in_netns(&client_ns, || {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.bind(&SocketAddr::from(([0, 0, 0, 0], HELD_CLIENT_PORT)).into())?;
        socket.connect_timeout(&SocketAddr::from((via.address, 8080)).into(), BOUND)?;
        Ok::<TcpStream, std::io::Error>(socket.into())
    })
    .expect("held connection");
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let held_from = SocketAddrV4::new(
        lab::layout::client_address(),
        held.local_addr().unwrap().port(),
    );
    let pids: Vec<(Task, u32)> = web.iter().map(|t| (t.clone(), cli.pid(t))).collect();
    let held_task = wait_for("the held connection's task", BOUND, || {
        task_holding(&pids, held_from).ok_or(format!("no task holds {held_from}"))
    });

    // Another task fails its health check: no new connection reaches it through any
    // host, and every request is answered.
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
    for h in &guard.state.hosts {
        wait_for(
            &format!(
                "24 requests in a row through {} answered, none by the failed task",
                h.name
            ),
            BOUND,
            || {
                for k in 0..24 {
                    let body = http(&guard, h).map_err(|e| format!("request {k}: {e}"))?;
                    if answered_by(&body) == Some(sick.hostname()) {
                        return Err(format!("request {k} reached the failed task: {body}"));
                    }
                }
                Ok(())
            },
        );
    }

    // Its replacement gets connections through every host.
    let web = cli.wait_running("web", 4, |t| !t.contains(&sick));
    let all = hostnames(&web);
    for h in &guard.state.hosts {
        reach_all(
            &format!("the client through {}, the replacement included", h.name),
            &all,
            &client_ip,
            40,
            || http(&guard, h),
        );
    }

    // The agent of the node the held connection entered restarts: nothing is dropped.
    let agent = agent_pid(via);
    lab::procs::signal(agent, libc::SIGTERM);
    assert!(
        lab::procs::wait_gone(&[agent], BOUND),
        "{}'s agent did not stop",
        via.name
    );
    // While it is down, the mesh keeps working through h2 (XDP through its pinned link,
    // the reply path's filters, the pinned maps).
    for k in 0..8 {
        let body = http(&guard, via).unwrap_or_else(|e| {
            panic!(
                "request {k} through {} while its agent is down: {e}",
                via.name
            )
        });
        assert_eq!(client_seen(&body), Some(client_ip.clone()), "{body}");
    }
    let _ = std::fs::remove_file(via.run_dir.join("agent/lb.json"));
    cli.start_agent(&shoal, VIA, &[]);
    let s = wait_for(
        &format!("{}'s restarted agent applies", via.name),
        BOUND,
        || {
            let s = mesh_status(via);
            if s["reply_path"] == "ready" {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        },
    );
    assert!(
        s["written"].as_u64().unwrap_or(99) <= 2,
        "a restarted agent adopts its maps instead of rewriting them: {s}"
    );
    reach_all(
        &format!("the client through {} after its agent restarted", via.name),
        &all,
        &client_ip,
        40,
        || http(&guard, via),
    );

    // The held connection still works after all that, with its task.
    held.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    held.read_to_string(&mut reply)
        .expect("held connection answers");
    assert_eq!(client_seen(&reply), Some(client_ip.clone()), "{reply}");
    assert_eq!(answered_by(&reply), Some(held_task.hostname()), "{reply}");

    // The counters saw it all.
    let stats = mesh_stats(&guard, via, &shoal);
    for name in [
        "mesh_remote",
        "mesh_local",
        "mesh_replies_out",
        "mesh_flow_capacity",
    ] {
        assert!(stats[name].as_u64().unwrap_or(0) > 0, "{name}: {stats}");
    }

    lab::down(&guard.layout).expect("lab down");
    assert_eq!(lab::leftovers(&guard.layout), Vec::<String>::new());
}
