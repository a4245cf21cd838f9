//! A task's network is in place when its first process runs: on 3 hosts, every replica
//! of a service whose command, as its very first action, resolves another service's
//! name and fetches a page through its VIP succeeds on its first try (each slot has
//! one task ever, no failure in `service ps`, and its log holds the answer of a `web`
//! task and the VIP the name resolved to), also on the host where the probes are the
//! network's first tasks (web runs elsewhere). The namespace is held by the task's sandbox:
//! killing a sandbox fails its task (its network is gone) and the replacement succeeds
//! at once too; `service rm` removes task containers and sandboxes alike. Egress is in
//! place too: every probe's first action checks its default route through the gateway
//! bridge, and every replica of a service with no network (whose sandbox gets only
//! egress) fetches a page from the lab's client, outside the cluster, at its first try.
use std::{collections::BTreeSet, net::Ipv4Addr};

use shoal_tests::{
    privileged,
    swarm::{answered_by, client_seen, hostnames, Cli, Task, BOUND},
    wait_for, LabGuard,
};

/// What every `probe` task runs first: check that its default route is egress's,
/// resolve `web`, fetch `/` by name (through the VIP), then stay up so its state and
/// log can be read. Any failure ends the task.
const PROBE: &str = "ip route | grep -q '^default via 172.18.0.1 dev egress0' && \
                     nslookup web && timeout 10 wget -qO- http://web/ && exec sleep 1000000";
/// What every `lone` task (no network) runs first: fetch a page from the lab's client
/// through egress, then stay up.
const LONE: &str = "timeout 10 wget -qO- http://192.168.77.100/ && exec sleep 1000000";

/// Containers on every host whose label `label` has `value` (running or not).
fn containers_labelled(guard: &LabGuard, label: &str, value: &str) -> Vec<String> {
    let filter = format!("label={label}={value}");
    let mut all = Vec::new();
    for h in &guard.state.hosts {
        let out = guard.exec_ok(
            &h.name,
            &[
                "docker",
                "ps",
                "-a",
                "--format",
                "{{.Names}}",
                "--filter",
                &filter,
            ],
        );
        all.extend(out.lines().map(|l| format!("{}:{l}", h.name)));
    }
    all
}

/// Checks that a probe task's log shows `web` resolved to its VIP and answered by one
/// of its tasks.
fn check_log(guard: &LabGuard, t: &Task, vip: Ipv4Addr, web: &BTreeSet<String>) {
    let log = wait_for(&format!("{} logged its answer", t.container), BOUND, || {
        let out = guard.exec(&t.node, &["docker", "logs", &t.container]);
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if answered_by(&log).is_some() {
            Ok(log)
        } else {
            Err(log)
        }
    });
    assert!(
        log.contains(&vip.to_string()),
        "{}: web did not resolve to its VIP {vip}: {log}",
        t.container
    );
    let by = answered_by(&log).expect("answer");
    assert!(
        web.contains(&by),
        "{}: answered by {by}, not a web task {web:?}: {log}",
        t.container
    );
}

#[test]
fn a_task_reaches_a_service_by_name_at_its_first_instruction() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('r', 3);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();

    cli.ok("h1", &["network", "create", "-d", "overlay", "front"]);
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "2",
            "--network",
            "front",
            // Not on h3: there the probes' sandboxes bring the network to the node,
            // with web's tasks elsewhere only as news from gossip.
            "--constraint",
            "node.hostname!=h3",
            "shoal/web:1",
        ],
    );
    let web = hostnames(&cli.wait_running("web", 2, |_| true));
    let vip = cli.vip("web", "front");

    let replicas = 6;
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "probe",
            "--replicas",
            &replicas.to_string(),
            "--network",
            "front",
            "shoal/web:1",
            "sh",
            "-c",
            PROBE,
        ],
    );
    let probes = wait_for("6 probe tasks running on the 3 hosts", BOUND, || {
        let tasks = cli.running("probe")?;
        let nodes: BTreeSet<&String> = tasks.iter().map(|t| &t.node).collect();
        if tasks.len() == replicas && nodes.len() == 3 {
            Ok(tasks)
        } else {
            Err(format!("{:#?}", cli.ps("probe")))
        }
    });
    for t in &probes {
        check_log(&guard, t, vip, &web);
    }
    let rows = cli.ps("probe").expect("service ps probe");
    assert_eq!(
        rows.len(),
        replicas,
        "one task per slot, none replaced: {rows:#?}"
    );
    assert!(
        rows.iter()
            .all(|r| r.current == "Running" && r.error.is_empty()),
        "{rows:#?}"
    );

    // A service with no network: its sandbox gets egress only, in place at its start.
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "lone",
            "--replicas",
            "3",
            "shoal/web:1",
            "sh",
            "-c",
            LONE,
        ],
    );
    let lone = wait_for("3 lone tasks running", BOUND, || {
        let tasks = cli.running("lone")?;
        if tasks.len() == 3 {
            Ok(tasks)
        } else {
            Err(format!("{:#?}", cli.ps("lone")))
        }
    });
    for t in &lone {
        let log = wait_for(&format!("{} logged its answer", t.container), BOUND, || {
            let out = guard.exec(&t.node, &["docker", "logs", &t.container]);
            let log = String::from_utf8_lossy(&out.stdout).into_owned();
            if client_seen(&log).is_some() {
                Ok(log)
            } else {
                Err(log)
            }
        });
        println!("{}: {log:?}", t.container);
    }
    let rows = cli.ps("lone").expect("service ps lone");
    assert!(
        rows.len() == 3
            && rows
                .iter()
                .all(|r| r.current == "Running" && r.error.is_empty()),
        "one task per slot, none failed: {rows:#?}"
    );

    // Each task's namespace is its sandbox's: killing one takes the task's network,
    // so the task fails and is replaced, and the replacement succeeds at once too.
    let victim = probes[0].clone();
    let sandbox = format!("{}.sandbox", victim.container);
    guard.exec_ok(&victim.node, &["docker", "kill", &sandbox]);
    let failed = wait_for("the task whose sandbox was killed fails", BOUND, || {
        let rows = cli.ps("probe")?;
        rows.iter()
            .find(|r| r.error.contains("network sandbox stopped"))
            .cloned()
            .ok_or_else(|| format!("{rows:#?}"))
    });
    println!("after killing {sandbox}: {failed:?}");
    let again = cli.wait_running("probe", replicas, |tasks| {
        !tasks.iter().any(|t| t.id == victim.id)
    });
    let replacement: Vec<&Task> = again.iter().filter(|t| !probes.contains(t)).collect();
    assert_eq!(replacement.len(), 1, "{again:#?}");
    check_log(&guard, replacement[0], vip, &web);
    let rows = cli.ps("probe").expect("service ps probe");
    assert_eq!(
        rows.iter().filter(|r| !r.error.is_empty()).count(),
        1,
        "only the killed sandbox's task failed: {rows:#?}"
    );

    // Removing the service removes every task container and every sandbox.
    cli.ok("h1", &["service", "rm", "probe"]);
    wait_for("probe's containers and sandboxes are gone", BOUND, || {
        let left: Vec<String> = [
            containers_labelled(&guard, "com.docker.swarm.service.name", "probe"),
            containers_labelled(&guard, "shoal.sandbox.service.name", "probe"),
        ]
        .concat();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    assert_eq!(
        containers_labelled(&guard, "shoal.sandbox.service.name", "web").len(),
        2,
        "web's sandboxes stay"
    );
}
