//! The embedded DNS with real containers: a container whose resolv.conf points at its
//! network's gateway resolves service names, `tasks.<service>`, task and container
//! names, and upstream names (forwarded to a real dnsmasq on the underlay), with busybox
//! nslookup and wget; a record change is visible to the next query.
use std::time::Duration;

use serde_json::{json, Value};
use shoal_tests::{lab, privileged, wait_for, write_atomic, LabGuard};

const BOUND: Duration = Duration::from_secs(60);

/// Kills a process we started when the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dns_state(tasks: &[(&str, u32, &str)]) -> Value {
    json!({
        "services": [
            {"name": "server", "endpoint_mode": "dnsrr", "networks": ["web"],
             "tasks": tasks.iter().map(|(id, slot, ip)| json!({
                 "id": id, "slot": slot, "addresses": [{"network": "web", "ip": ip}]
             })).collect::<Vec<_>>()},
            {"name": "vipsvc", "vips": [{"network": "web", "ip": "10.0.9.100"}],
             "tasks": [{"id": "v1", "slot": 1, "addresses": [{"network": "web", "ip": "10.0.9.31"}]}]}
        ],
        "containers": [
            {"name": "c1", "addresses": [{"network": "web", "ip": "10.0.9.11"}],
             "aliases": [{"network": "web", "alias": "client"}]}
        ]
    })
}

#[test]
fn containers_resolve_services_tasks_and_upstream_names() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('d', 2);
    let (h1, h2) = (&guard.state.hosts[0], &guard.state.hosts[1]);

    // A real upstream on the underlay, with a zone of its own.
    let zone = h1.run_dir.join("upstream-hosts");
    // Both families, so busybox nslookup (A and AAAA) gets answers to both.
    std::fs::write(
        &zone,
        "10.99.99.99 www.upstream.test\nfd00::99 www.upstream.test\n",
    )
    .expect("zone file");
    let dnsmasq_argv: Vec<String> = [
        "dnsmasq",
        "--no-daemon",
        "--user=root",
        "--port=53",
        "--bind-interfaces",
        "--listen-address=192.168.77.100",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--addn-hosts={}", zone.display())])
    .collect();
    let _dnsmasq = Child(
        lab::client_command(&guard.state, &dnsmasq_argv)
            .expect("client command")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start dnsmasq"),
    );

    let containers = [
        (h1, "c1", "10.0.9.11"),
        (h1, "s1", "10.0.9.21"),
        (h2, "s2", "10.0.9.22"),
    ];
    for (h, name, _) in containers {
        guard.exec_ok(
            &h.name,
            &[
                "docker",
                "run",
                "-d",
                "--init",
                "--network",
                "none",
                "--dns",
                "10.0.9.1",
                "--dns-option",
                "ndots:0",
                "--name",
                name,
                "shoal/web:1",
            ],
        );
    }
    let tasks = [("s1task", 1, "10.0.9.21"), ("s2task", 2, "10.0.9.22")];
    for (i, h) in guard.state.hosts.iter().enumerate() {
        let other = &guard.state.hosts[1 - i];
        let local: Vec<Value> = containers
            .iter()
            .filter(|(ch, _, _)| ch.name == h.name)
            .map(|(_, c, ip)| json!({"network": "web", "container": c, "ip": ip}))
            .collect();
        let remote: Vec<Value> = containers
            .iter()
            .filter(|(ch, _, _)| ch.name != h.name)
            .map(
                |(_, _, ip)| json!({"network": "web", "ip": ip, "vtep": other.address.to_string()}),
            )
            .collect();
        let overlay = json!({
            "networks": [{"id": "web", "vni": 4097, "subnet": "10.0.9.0/24", "gateway": "10.0.9.1"}],
            "local_endpoints": local,
            "remote_endpoints": remote,
        });
        write_atomic(
            &h.run_dir.join("declared-overlay.json"),
            overlay.to_string().as_bytes(),
        );
        write_atomic(
            &h.run_dir.join("declared-dns.json"),
            dns_state(&tasks).to_string().as_bytes(),
        );
        let extra: Vec<String> = vec![
            "--declared-state".into(),
            h.run_dir
                .join("declared-overlay.json")
                .display()
                .to_string(),
            "--declared-dns".into(),
            h.run_dir.join("declared-dns.json").display().to_string(),
            "--dns-upstream".into(),
            "192.168.77.100:53".into(),
        ];
        lab::agent::start(&guard.state, h, &shoal, &extra)
            .unwrap_or_else(|e| panic!("start agent on {}: {e:#}", h.name));
    }

    let lookup = |name: &str| guard.docker_exec(&h1.name, "c1", &["nslookup", name]);
    let has_all = |name: &str, want: &[&str]| {
        let out = lookup(name)?;
        if want.iter().all(|ip| out.contains(ip)) {
            Ok(out)
        } else {
            Err(out)
        }
    };
    wait_for("c1 resolves `server` to both tasks (dnsrr)", BOUND, || {
        has_all("server", &["10.0.9.21", "10.0.9.22"])
    });
    has_all("tasks.server", &["10.0.9.21", "10.0.9.22"]).expect("tasks.server");
    has_all("vipsvc", &["10.0.9.100"]).expect("vip-mode service resolves to its VIP");
    has_all("server.1.s1task", &["10.0.9.21"]).expect("task name");
    has_all("client", &["10.0.9.11"]).expect("network alias");
    has_all("www.upstream.test", &["10.99.99.99"]).expect("upstream name, forwarded");
    assert!(
        lookup("nosuch.upstream.test").is_err(),
        "an unknown name must not resolve"
    );

    // wget by service name, across hosts: both tasks answer. (busybox 1.35 wget -T
    // segfaults, hence the timeout applet around it.)
    let mut hosts_seen = std::collections::BTreeSet::new();
    let s2_hostname = guard.exec_ok(
        &h2.name,
        &["docker", "inspect", "-f", "{{.Config.Hostname}}", "s2"],
    );
    wait_for("wget http://server/ reaches the task on h2", BOUND, || {
        let body = guard.docker_exec(
            &h1.name,
            "c1",
            &["timeout", "10", "wget", "-qO-", "http://server/"],
        )?;
        hosts_seen.insert(body.clone());
        if body.contains(&s2_hostname) {
            Ok(())
        } else {
            Err(format!("answers so far: {hosts_seen:?}"))
        }
    });

    // A record change is visible to the next query: s2's task goes away.
    for h in &guard.state.hosts {
        write_atomic(
            &h.run_dir.join("declared-dns.json"),
            dns_state(&tasks[..1]).to_string().as_bytes(),
        );
    }
    wait_for("tasks.server drops the removed task", BOUND, || {
        let out = lookup("tasks.server")?;
        if out.contains("10.0.9.21") && !out.contains("10.0.9.22") {
            Ok(())
        } else {
            Err(out)
        }
    });

    lab::down(&guard.layout).expect("lab down");
    assert_eq!(lab::leftovers(&guard.layout), Vec::<String>::new());
}
