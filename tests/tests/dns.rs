//! The embedded DNS with real containers on a 2-host lab of plain agents (no
//! `--declared-*` file): a cluster made through the `shoal` CLI, an overlay network
//! `web`, a dnsrr service `server` with a task on each host, a vip-mode service `vipsvc`
//! and a `client` task on h1. Every node's agent computes its DNS state from the
//! cluster; task containers' resolv.conf points at their network's gateway.
//!
//! From the client, with busybox nslookup and wget: `server` resolves to both tasks and
//! `tasks.server` lists them, `vipsvc` resolves to its VIP, a task's name
//! (`server.<slot>.<task ID>`, also its container's name) and `server.<slot>` to its
//! address, upstream names are forwarded to the lab's dnsmasq (outside the cluster), an unknown
//! name does not resolve, `wget http://server/` reaches the task on the other host; a
//! scale down is visible to the next query.
use std::{collections::BTreeSet, net::Ipv4Addr};

use shoal_tests::{
    lab, privileged,
    swarm::{answered_by, Cli, Task, BOUND},
    wait_for, LabGuard,
};

/// The IPv4 addresses in the answer section of a busybox nslookup (after the server's
/// own lines, each answer starts with `Name:`).
fn answers(out: &str) -> BTreeSet<Ipv4Addr> {
    out.split("Name:")
        .skip(1)
        .flat_map(|a| a.split_whitespace())
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
fn containers_resolve_services_tasks_and_upstream_names() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('d', 2);

    let cli = Cli { lab: &guard };
    // The lab's agents forward to its upstream (dnsmasq in the client namespace).
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
    // Spread: one task per host.
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "server",
            "--detach",
            "--replicas",
            "2",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            "web",
            "shoal/web:1",
        ],
    );
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "vipsvc",
            "--detach",
            "--network",
            "web",
            "shoal/web:1",
        ],
    );
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "client",
            "--detach",
            "--network",
            "web",
            "--constraint",
            "node.hostname==h1",
            "shoal/web:1",
        ],
    );
    let servers = cli.wait_running("server", 2, |t| t[0].node != t[1].node);
    cli.wait_running("vipsvc", 1, |_| true);
    let client = cli.wait_running("client", 1, |_| true).remove(0);
    let ips: Vec<Ipv4Addr> = servers.iter().map(|t| cli.address(t, "10.0.9.")).collect();
    let vip = cli.vip("vipsvc", "web");

    let lookup = |name: &str| cli.exec_in(&client, &["nslookup", name]);
    let resolves_to = |name: &str, want: &[Ipv4Addr]| {
        let out = lookup(name)?;
        let got = answers(&out);
        if got == want.iter().copied().collect() {
            Ok(out)
        } else {
            Err(format!("want {want:?}, got {got:?}: {out}"))
        }
    };
    wait_for(
        "the client resolves `server` to both tasks (dnsrr)",
        BOUND,
        || resolves_to("server", &ips),
    );
    resolves_to("tasks.server", &ips).expect("tasks.server");
    resolves_to("vipsvc", &[vip]).expect("a vip-mode service resolves to its VIP");
    let s0: &Task = &servers[0];
    resolves_to(&s0.container, &[ips[0]]).expect("a task's name (its container's)");
    resolves_to(s0.name(), &[ips[0]]).expect("service.slot");
    resolves_to(lab::outside::NAME, &[guard.state.client.address])
        .expect("an upstream name, forwarded");
    assert!(
        lookup("nosuch.outside.lab").is_err(),
        "an unknown name must not resolve"
    );

    // wget by service name, across hosts: the task on h2 answers. (busybox 1.35 wget -T
    // segfaults, hence the timeout applet around it.)
    let remote = servers
        .iter()
        .find(|t| t.node != client.node)
        .expect("a server task on the other host");
    let mut seen = BTreeSet::new();
    wait_for(
        &format!("wget http://server/ reaches the task on {}", remote.node),
        BOUND,
        || {
            let body = cli.exec_in(
                &client,
                &["timeout", "10", "wget", "-qO-", "http://server/"],
            )?;
            let by = answered_by(&body).ok_or(format!("not a shoal/web answer: {body}"))?;
            seen.insert(by.clone());
            if by == remote.hostname() {
                Ok(())
            } else {
                Err(format!("answers so far: {seen:?}"))
            }
        },
    );

    // A change is visible to the next query: a scale down removes a task.
    cli.ok("h1", &["service", "scale", "server=1"]);
    let left = cli.wait_running("server", 1, |_| true).remove(0);
    let kept = ips[servers
        .iter()
        .position(|t| *t == left)
        .expect("a task kept")];
    wait_for("tasks.server drops the removed task", BOUND, || {
        resolves_to("tasks.server", &[kept])
    });
    resolves_to("server", &[kept]).expect("server after the scale down");
    println!(
        "dns: server (dnsrr) {ips:?}, vipsvc {vip}, {} -> {}, after the scale down {kept}",
        s0.container, ips[0]
    );

    lab::down(&guard.layout).expect("lab down");
    assert_eq!(lab::leftovers(&guard.layout), Vec::<String>::new());
}
