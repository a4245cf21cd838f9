//! `docker run --network NET` on an attachable overlay, through a worker's Engine API
//! socket with the real `docker` CLI (the image's current client and Debian's 20.10):
//! the container gets an address in the network's subnet (by the time `docker run -d`
//! returns), reaches a service by name
//! (its VIP) and a task on another host by address, tasks resolve and reach it by its
//! name and its `--network-alias`; it stays attached across a restart of its node's
//! agent; `docker stop` detaches it and `docker start` attaches it again; `docker rm
//! -f` detaches it (its name no longer resolves, the declared state
//! of every node forgets it). An overlay created without `--attachable` is still
//! refused with Docker's 403.
use std::net::Ipv4Addr;

use shoal_tests::{
    docker_cli::{DockerCli, CURRENT, DEBIAN_2010},
    lab, privileged,
    swarm::{answered_by, wait_for_address, Cli, Task, BOUND},
    wait_for, LabGuard,
};

/// The container's one address starting with `prefix`, as it shows it; waits for it.
fn address_of(docker: &DockerCli, container: &str, prefix: &str) -> Ipv4Addr {
    wait_for_address(container, prefix, || {
        docker.exec(container, &["ip", "-4", "-o", "addr"])
    })
}

/// Waits until `wget http://<target>/` from `from` (a `docker exec`) is answered by
/// the host `expect`.
fn wait_answer(
    what: &str,
    expect: &str,
    from: impl Fn(&[&str]) -> Result<String, String>,
    target: &str,
) {
    let url = format!("http://{target}/");
    wait_for(what, BOUND, || {
        let body = from(&["timeout", "10", "wget", "-qO-", &url])?;
        match answered_by(&body) {
            Some(h) if h == expect => Ok(()),
            other => Err(format!("answered by {other:?}: {body}")),
        }
    });
}

/// What `nslookup NAME` in a task prints as the addresses of `name`; Err while it does
/// not resolve.
fn lookup(cli: &Cli, t: &Task, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let out = cli.exec_in(t, &["nslookup", name])?;
    let answer = out
        .split_once(&format!("Name:\t{name}"))
        .or_else(|| out.split_once(&format!("Name: {name}")))
        .ok_or(out.clone())?
        .1;
    let addrs: Vec<Ipv4Addr> = answer
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    if addrs.is_empty() {
        Err(out)
    } else {
        Ok(addrs)
    }
}

/// Whether host `h`'s declared DNS state names container `name`.
fn declared_names(h: &lab::HostState, name: &str) -> bool {
    let dir = lab::agent::declared_dir(h);
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .any(|text| {
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["containers"].as_array().cloned())
                .is_some_and(|cs| cs.iter().any(|c| c["name"] == name))
        })
}

#[test]
fn docker_run_attaches_a_container_to_an_attachable_overlay() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('4', 3);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();
    let on = |i: usize| DockerCli::on(&guard, i);
    let (d1, d2) = (on(0), on(1));

    d1.ok(&["network", "create", "-d", "overlay", "--attachable", "ov"]);
    d1.ok(&["network", "create", "-d", "overlay", "plain"]);
    let subnet = d1
        .ok(&[
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
            "ov",
        ])
        .trim()
        .to_owned();
    let prefix = subnet
        .rsplit_once('.')
        .map(|(p, _)| format!("{p}."))
        .unwrap_or_else(|| panic!("ov's subnet: {subnet:?}"));
    d1.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--network",
        "ov",
        "--replicas",
        "2",
        "--constraint",
        "node.hostname!=h2",
        "shoal/web:1",
    ]);
    let tasks = cli.wait_running("web", 2, |ts| ts.iter().all(|t| t.node != "h2"));
    let vip = cli.vip("web", "ov");

    // Not attachable: Docker's own refusal, on a worker too.
    let err = d2.err(&["run", "-d", "--network", "plain", "shoal/web:1"]);
    assert!(
        err.contains(
            "Could not attach to network plain: rpc error: code = PermissionDenied \
             desc = network plain not manually attachable"
        ),
        "{err}"
    );

    let began = std::time::Instant::now();
    let c1_id = d2.ok(&[
        "run",
        "-d",
        "--name",
        "c1",
        "--network",
        "ov",
        "--network-alias",
        "toolbox",
        "shoal/web:1",
    ]);
    let c1_host: String = c1_id.chars().take(12).collect();
    // `docker run -d` answers once the container is on its network, as Swarm's does.
    let now = d2
        .exec("c1", &["ip", "-4", "-o", "addr"])
        .expect("c1's addresses");
    assert!(
        now.contains(&format!("inet {prefix}")),
        "c1 has no address in {subnet} when docker run returns: {now}"
    );
    let c1_addr = address_of(&d2, "c1", &prefix);
    println!(
        "c1 attached at {c1_addr} in {subnet} after {:.1} s",
        began.elapsed().as_secs_f64()
    );
    let c1_exec = |argv: &[&str]| d2.exec("c1", argv);

    // c1 reaches the service by name (its VIP) and each task by address, across hosts.
    let resolv = c1_exec(&["cat", "/etc/resolv.conf"]).expect("c1's resolv.conf");
    assert!(resolv.contains("nameserver"), "{resolv}");
    wait_for("c1 resolves web to its VIP", BOUND, || {
        let out = c1_exec(&["nslookup", "web"])?;
        if out.contains(&vip.to_string()) {
            Ok(())
        } else {
            Err(out)
        }
    });
    for t in &tasks {
        let addr = cli.address(t, &prefix);
        wait_answer(
            &format!("c1 reaches task {} on {} at {addr}", t.name(), t.node),
            &t.hostname(),
            c1_exec,
            &addr.to_string(),
        );
    }

    let mut through_vip = std::collections::BTreeSet::new();
    wait_for(
        "web answers c1 through its VIP from both tasks",
        BOUND,
        || {
            let body = c1_exec(&["timeout", "10", "wget", "-qO-", "http://web/"])?;
            match answered_by(&body) {
                Some(h) if tasks.iter().any(|t| t.hostname() == h) => {
                    through_vip.insert(h);
                }
                other => return Err(format!("answered by {other:?}: {body}")),
            }
            if through_vip.len() == tasks.len() {
                Ok(())
            } else {
                Err(format!("only {through_vip:?} so far"))
            }
        },
    );

    // Tasks on other hosts resolve and reach c1 by its name and its alias.
    for t in &tasks {
        for name in ["c1", "toolbox"] {
            wait_for(
                &format!("{} resolves {name}", t.name()),
                BOUND,
                || match lookup(&cli, t, name)? {
                    a if a == vec![c1_addr] => Ok(()),
                    a => Err(format!("{a:?}")),
                },
            );
        }
        wait_answer(
            &format!("{} on {} reaches c1 by name", t.name(), t.node),
            &c1_host,
            |argv| cli.exec_in(t, argv),
            "c1",
        );
    }

    // The 20.10 client's `docker run --network` attaches too.
    let c2 = d2.ok_with(
        DEBIAN_2010,
        &[
            "run",
            "-d",
            "--name",
            "c2",
            "--network",
            "ov",
            "shoal/web:1",
        ],
    );
    let c2_addr = address_of(&d2, "c2", &prefix);
    assert_ne!(c2_addr, c1_addr);
    wait_answer(
        "a task reaches c2 (made by the 20.10 client) by name",
        &c2.chars().take(12).collect::<String>(),
        |argv| cli.exec_in(&tasks[0], argv),
        "c2",
    );
    d2.ok_with(DEBIAN_2010, &["rm", "-f", "c2"]);

    // h2's agent restarts while c1 runs: c1 stays attached, at the same address.
    guard.stop_agent(1, libc::SIGTERM);
    cli.start_agent(&shoal, 1, &[]);
    let restarted = std::time::Instant::now();
    assert_eq!(address_of(&d2, "c1", &prefix), c1_addr);
    wait_answer(
        "a task reaches c1 after h2's agent restarted",
        &c1_host,
        |argv| cli.exec_in(&tasks[0], argv),
        "c1",
    );
    wait_for("c1 reaches web after h2's agent restarted", BOUND, || {
        let body = c1_exec(&["timeout", "10", "wget", "-qO-", "http://web/"])?;
        match answered_by(&body) {
            Some(h) if tasks.iter().any(|t| t.hostname() == h) => Ok(()),
            other => Err(format!("answered by {other:?}: {body}")),
        }
    });
    assert_eq!(
        lookup(&cli, &tasks[0], "c1").expect("c1 resolves after the restart"),
        vec![c1_addr]
    );
    println!(
        "c1 attached through h2's agent restart (checked {:.1} s after)",
        restarted.elapsed().as_secs_f64()
    );

    // Stopped, it is detached (its name goes); started again, it is attached again in
    // its new namespace.
    d2.ok(&["stop", "c1"]);
    wait_for("c1 stops resolving once stopped", BOUND, || {
        match lookup(&cli, &tasks[0], "c1") {
            Ok(a) => Err(format!("still {a:?}")),
            Err(_) => Ok(()),
        }
    });
    d2.ok(&["start", "c1"]);
    let now = d2
        .exec("c1", &["ip", "-4", "-o", "addr"])
        .expect("c1's addresses");
    assert!(
        now.contains(&format!("inet {prefix}")),
        "c1 has no address in {subnet} when docker start returns: {now}"
    );
    let c1_again = address_of(&d2, "c1", &prefix);
    wait_answer(
        "a task reaches c1 by name once it started again",
        &c1_host,
        |argv| cli.exec_in(&tasks[0], argv),
        "c1",
    );
    println!("c1 attached again at {c1_again} after docker start");

    // `docker rm -f` detaches: the name goes from every node's DNS and declared state.
    let removed = std::time::Instant::now();
    d2.ok(&["rm", "-f", "c1"]);
    for t in &tasks {
        wait_for(
            &format!("{} no longer resolves c1", t.name()),
            BOUND,
            || match lookup(&cli, t, "c1") {
                Ok(a) => Err(format!("still {a:?}")),
                Err(_) => Ok(()),
            },
        );
    }
    wait_for("no node declares c1", BOUND, || {
        let still: Vec<&str> = guard
            .state
            .hosts
            .iter()
            .filter(|h| declared_names(h, "c1"))
            .map(|h| h.name.as_str())
            .collect();
        if still.is_empty() {
            Ok(())
        } else {
            Err(format!("declared on {still:?}"))
        }
    });
    println!(
        "c1 detached {:.1} s after docker rm -f",
        removed.elapsed().as_secs_f64()
    );
    // Nothing holds the network any more: it goes.
    d1.ok(&["service", "rm", "web"]);
    wait_for("ov removed", BOUND, || {
        let (ok, out, err) = d1.run_with(CURRENT, &["network", "rm", "ov"]);
        if ok {
            Ok(())
        } else {
            Err(format!("{err}{out}"))
        }
    });
}
