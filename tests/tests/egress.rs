//! Task egress on a 2-host lab of plain agents: a cluster made through the `shoal` CLI,
//! an overlay network `web`, a service `onnet` on `web` publishing 8080 -> 80 with its
//! task on h1, and a service `lone` with no network and its task on h2. Outside the
//! cluster, the lab's client namespace runs the upstream DNS (serving `outside.lab`) and
//! a web server that answers with the address a request came from.
//!
//! Each task fetches a page from the client by address and by name (resolved through
//! the embedded resolver's forwarding: the overlay gateway for `onnet`, the gateway
//! bridge's address for `lone`), and the client sees the task's node's address as the
//! source. `onnet` still answers through the published port on both hosts, with the
//! client's address kept (its replies go back through the ingress network). After h2's
//! agent restarts, it adopts `lone`'s veth (same address) and `lone` still gets out.
use std::net::Ipv4Addr;

use serde_json::Value;
use shoal_tests::{
    client_http, lab, privileged,
    swarm::{agent_pid, client_seen, Cli, Task, BOUND},
    wait_for, LabGuard,
};

fn egress_status(h: &lab::HostState) -> Value {
    std::fs::read(h.run_dir.join("agent/egress.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// What egress attaches for `t`: its sandbox, whose namespace the task's container
/// joins.
fn sandbox(t: &Task) -> String {
    format!("{}.sandbox", t.container)
}

/// The address egress gave `t`, as its node's `egress.json` says.
fn egress_address(lab: &LabGuard, t: &Task) -> Result<Ipv4Addr, String> {
    let status = egress_status(&lab.state.hosts[t.host_index()]);
    status["attached"][&sandbox(t)]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or(format!("{} not attached: {status}", sandbox(t)))
}

/// `wget` of `url` in the task; Ok(the client address the web server saw).
fn fetch(cli: &Cli, t: &Task, url: &str) -> Result<String, String> {
    // busybox 1.35's wget -T segfaults: the timeout applet bounds it.
    let body = cli.exec_in(t, &["timeout", "10", "wget", "-qO-", url])?;
    client_seen(&body).ok_or(format!("not an answer of the lab's web server: {body}"))
}

/// Waits until `t` reaches the client by address and by name, seen from its node's
/// address.
fn gets_out(cli: &Cli, t: &Task, node: Ipv4Addr) {
    for url in [
        "http://192.168.77.100/".to_string(),
        format!("http://{}/", lab::outside::NAME),
    ] {
        wait_for(&format!("{} fetches {url}", t.container), BOUND, || {
            let seen = fetch(cli, t, &url)?;
            if seen == node.to_string() {
                println!("{} fetched {url}: the client saw {seen}", t.container);
                Ok(())
            } else {
                Err(format!("the client saw {seen}, not {node}"))
            }
        });
    }
}

#[test]
fn tasks_reach_the_outside_through_their_node() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('e', 2);
    let (h1, h2) = (&guard.state.hosts[0], &guard.state.hosts[1]);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();
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
            "service",
            "create",
            "--name",
            "onnet",
            "--detach",
            "--network",
            "web",
            "--publish",
            "8080:80",
            "--constraint",
            "node.hostname==h1",
            "shoal/web:1",
        ],
    );
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "lone",
            "--detach",
            "--constraint",
            "node.hostname==h2",
            "shoal/web:1",
        ],
    );
    let onnet = cli.wait_running("onnet", 1, |_| true).remove(0);
    let lone = cli.wait_running("lone", 1, |_| true).remove(0);

    // Each task has an address on the gateway bridge; the lone task has nothing else.
    let lone_ip = wait_for("lone attached to egress", BOUND, || {
        egress_address(&guard, &lone)
    });
    let onnet_ip = wait_for("onnet attached to egress", BOUND, || {
        egress_address(&guard, &onnet)
    });
    for ip in [lone_ip, onnet_ip] {
        assert_eq!(ip.octets()[..2], [172, 18], "{ip} is not in 172.18.0.0/16");
    }
    assert_eq!(cli.address(&lone, "172.18."), lone_ip);
    println!("egress addresses: onnet {onnet_ip}, lone {lone_ip}");
    let routes = cli.exec_in(&lone, &["ip", "route"]).expect("lone's routes");
    assert!(
        routes.contains("default via 172.18.0.1 dev egress0"),
        "{routes}"
    );
    let resolv = cli
        .exec_in(&lone, &["cat", "/etc/resolv.conf"])
        .expect("lone's resolv.conf");
    assert!(resolv.contains("nameserver 172.18.0.1"), "{resolv}");

    gets_out(&cli, &onnet, h1.address);
    gets_out(&cli, &lone, h2.address);
    for t in [&onnet, &lone] {
        let out = cli
            .exec_in(t, &["nslookup", lab::outside::NAME])
            .expect("nslookup outside.lab");
        assert!(out.contains("192.168.77.100"), "{}: {out}", t.container);
    }

    // The published port still answers on both hosts, replies back through ingress,
    // with the client's own address kept.
    for h in [h1, h2] {
        let body = wait_for(&format!("8080 on {}", h.name), BOUND, || {
            client_http(&guard, &format!("http://{}:8080/", h.address))
        });
        assert_eq!(
            client_seen(&body).as_deref(),
            Some("192.168.77.100"),
            "through {}: {body}",
            h.name
        );
    }

    // h2's agent restarts: it adopts the veth it made, and egress keeps working.
    lab::procs::signal(agent_pid(h2), libc::SIGTERM);
    wait_for("h2's agent stopped", BOUND, || {
        if h2.run_dir.join("agent/agent.json").exists() {
            Err("agent.json still there".into())
        } else {
            Ok(())
        }
    });
    cli.start_agent(&shoal, 1, &[]);
    wait_for("h2's new agent reports egress", BOUND, || {
        let status = egress_status(h2);
        match status["attached"][&sandbox(&lone)].as_str() {
            Some(a) if a == lone_ip.to_string() => Ok(()),
            _ => Err(format!("{status}")),
        }
    });
    gets_out(&cli, &lone, h2.address);
    let veths = guard.exec_ok("h2", &["ip", "-o", "link", "show", "type", "veth"]);
    assert_eq!(
        veths.lines().filter(|l| l.contains("shgw")).count(),
        1,
        "one egress veth on h2: {veths}"
    );
}
