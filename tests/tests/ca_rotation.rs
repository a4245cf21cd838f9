//! `shoal swarm ca --rotate` on a real 4-host lab (three managers and a worker) while a
//! published service is under load: every node ends with a certificate of the new root
//! (read from the identity its agent keeps) and trusts it alone, keeping its node ID;
//! no request to the service fails, no node is marked Down and no node logs a failed
//! handshake during the rotation; afterwards a certificate of the old root is refused
//! by the managers (though its node is still a member), the old join token no longer
//! works and the new one does.
use std::{
    net::{SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::json;
use shoal_cluster::pki::{client_config, CaCertificate, CaTrust};
use shoal_tests::{
    load::Loads,
    manager_port::{self, cluster_dir, identity_in},
    privileged,
    swarm::{in_netns, Cli, BOUND},
    wait_for, LabGuard,
};

const PORT: u16 = 8080;
const KEEPALIVE_PORT: u16 = 8081;

/// Each host's agent log from byte `from` on.
fn logs_since(guard: &LabGuard, from: &[u64]) -> Vec<(String, String)> {
    guard
        .state
        .hosts
        .iter()
        .zip(from)
        .map(|(h, from)| {
            let log = std::fs::read(h.run_dir.join("agent.log")).unwrap_or_default();
            let tail = log.get(*from as usize..).unwrap_or_default();
            (h.name.clone(), String::from_utf8_lossy(tail).into_owned())
        })
        .collect()
}

fn log_sizes(guard: &LabGuard) -> Vec<u64> {
    guard
        .state
        .hosts
        .iter()
        .map(|h| {
            std::fs::metadata(h.run_dir.join("agent.log"))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .collect()
}

/// `node ls -q` IDs with their hostnames, as h1 sees them.
fn node_ids(cli: &Cli) -> Vec<String> {
    let mut ids: Vec<String> = cli
        .ok(
            "h1",
            &[
                "node",
                "ls",
                "--format",
                "{{.ID}} {{.Hostname}} {{.Status}}",
            ],
        )
        .lines()
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_root_ca_rotation_reissues_every_certificate_with_no_failed_request() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('y', 4);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    let hosts = &guard.state.hosts;
    let h1 = hosts[0].address.to_string();
    let manager: SocketAddr = format!("{h1}:2377").parse().unwrap();
    let client_ns = PathBuf::from("/run/netns").join(&guard.state.client.netns);
    cli.ok("h1", &["swarm", "init", "--advertise-addr", &h1]);
    let manager_token = cli.ok("h1", &["swarm", "join-token", "-q", "manager"]);
    let old_worker_token = cli
        .ok("h1", &["swarm", "join-token", "-q", "worker"])
        .trim()
        .to_owned();
    for (h, token) in [
        ("h2", manager_token.trim()),
        ("h3", manager_token.trim()),
        ("h4", &old_worker_token),
    ] {
        cli.ok(
            h,
            &["swarm", "join", "--token", token, &manager.to_string()],
        );
    }
    wait_for("4 nodes Ready, 3 of them managers", BOUND, || {
        let rows = cli.run("h1", &["node", "ls"])?;
        (rows.matches("Ready").count() == 4
            && rows.matches("Leader").count() + rows.matches("Reachable").count() == 3)
            .then_some(())
            .ok_or(rows)
    });
    let old_root = CaCertificate::from_pem(&cli.ok("h1", &["swarm", "ca"])).expect("swarm ca");

    let made = cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "4",
            "-p",
            &format!("{PORT}:80"),
            "-p",
            &format!("{KEEPALIVE_PORT}:8080"),
            "shoal/web:1",
        ],
    );
    assert!(made.contains("verify: Service converged"), "{made}");
    let ids_before = node_ids(&cli);
    // h2's certificate as it is now: a manager's, of the old root.
    let h2_before = identity_in(&cluster_dir(&hosts[1]));
    assert_eq!(h2_before.issuer(), &old_root);

    let mut loads = Loads::default();
    let published: Vec<SocketAddrV4> = hosts
        .iter()
        .map(|h| SocketAddrV4::new(h.address, PORT))
        .collect();
    let kept: Vec<SocketAddrV4> = hosts
        .iter()
        .flat_map(|h| [SocketAddrV4::new(h.address, KEEPALIVE_PORT); 2])
        .collect();
    loads.http(
        "client -> published port on every node",
        client_ns.clone(),
        published,
    );
    loads.http_keepalive(
        "client -> published port on every node, keep-alive",
        client_ns.clone(),
        kept,
    );
    // Some load before the rotation starts.
    std::thread::sleep(Duration::from_secs(2));

    let logs_at = log_sizes(&guard);
    let started = Instant::now();
    let (rotated, took, down_seen) = std::thread::scope(|s| {
        let rotation = s.spawn(|| {
            let out = cli.run("h1", &["swarm", "ca", "--rotate"]);
            (out, started.elapsed())
        });
        // Every node stays Ready meanwhile.
        let mut down_seen = Vec::new();
        while !rotation.is_finished() {
            if let Ok(rows) = cli.run("h1", &["node", "ls"]) {
                if rows.contains("Down") {
                    down_seen.push(rows);
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let (out, took) = rotation.join().expect("rotation thread");
        (out, took, down_seen)
    });
    let printed = rotated.unwrap_or_else(|e| panic!("swarm ca --rotate failed: {e}"));
    println!(
        "swarm ca --rotate took {:.1} s; its output:\n{printed}",
        took.as_secs_f64()
    );
    assert!(
        down_seen.is_empty(),
        "a node was Down during the rotation: {down_seen:#?}"
    );
    assert!(
        printed.contains("desired root digest: sha256:"),
        "{printed}"
    );
    assert!(printed.contains("rotated TLS certificates:"), "{printed}");
    assert!(printed.contains("4/4 nodes"), "{printed}");
    let pem_at = printed
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no root CA printed: {printed}"));
    let new_root = CaCertificate::from_pem(&printed[pem_at..]).expect("the new root");
    assert_ne!(new_root, old_root);
    assert!(
        printed.contains(&new_root.digest().to_string()),
        "{printed}"
    );

    // Every node: a certificate of the new root, trusting it alone, the same node ID.
    for h in hosts {
        let identity = identity_in(&cluster_dir(h));
        assert_eq!(identity.issuer(), &new_root, "{}'s certificate", h.name);
        assert_eq!(
            identity.trust().digests(),
            (new_root.digest(), None),
            "{}'s trust",
            h.name
        );
    }
    assert_eq!(
        node_ids(&cli),
        ids_before,
        "node IDs, roles and status kept"
    );
    for h in ["h2", "h3"] {
        let root = CaCertificate::from_pem(&cli.ok(h, &["swarm", "ca"])).unwrap();
        assert_eq!(root, new_root, "{h}'s swarm ca");
    }
    // No connection between members failed meanwhile.
    for (host, log) in logs_since(&guard, &logs_at) {
        for bad in [
            "TLS handshake",
            "no heartbeat: node is Down",
            "renewal failed",
        ] {
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(bad)).collect();
            assert!(lines.is_empty(), "{host}: {bad}: {lines:#?}");
        }
    }

    // The old root's certificate of a node that is still a member: refused.
    let new_trust = CaTrust::new(new_root.clone());
    let old_cert = std::sync::Arc::new(client_config(&h2_before, &new_trust).unwrap());
    let refused = in_netns(&client_ns, || {
        manager_port::call_once(manager, &old_cert, &json!("read_state"))
    });
    println!("old-root certificate asking h1: {refused:?}");
    assert!(
        refused.is_err(),
        "an old-root certificate was answered: {refused:?}"
    );
    let h2_now = identity_in(&cluster_dir(&hosts[1]));
    let new_cert = manager_port::node_config(&h2_now);
    let answered = in_netns(&client_ns, || {
        manager_port::call_once(manager, &new_cert, &json!({"node_state": {"since": 0}}))
    });
    let answered = answered.unwrap_or_else(|e| panic!("h2's new certificate: {e}"));
    assert!(manager_port::refusal(&answered).is_none(), "{answered:?}");

    // The service answered all along, and still does.
    std::thread::sleep(Duration::from_secs(2));
    let report = loads.stop_expecting_no_failure("root CA rotation");
    println!(
        "requests during the rotation and around it: {} sent, {} failed",
        report.sent, report.failed
    );

    // The old token names the old root: refused. The new one joins under the new root.
    cli.ok("h4", &["swarm", "leave"]);
    let refused = cli.err(
        "h4",
        &[
            "swarm",
            "join",
            "--token",
            &old_worker_token,
            &manager.to_string(),
        ],
    );
    assert!(refused.contains("does not match the token"), "{refused}");
    let new_token = cli
        .ok("h1", &["swarm", "join-token", "-q", "worker"])
        .trim()
        .to_owned();
    assert_ne!(new_token, old_worker_token);
    cli.ok(
        "h4",
        &["swarm", "join", "--token", &new_token, &manager.to_string()],
    );
    let h4 = identity_in(&cluster_dir(&hosts[3]));
    assert_eq!(h4.issuer(), &new_root);
    wait_for("the rejoined h4 Ready", BOUND, || {
        let rows = cli.run("h1", &["node", "ls"])?;
        (rows.matches("Ready").count() == 4)
            .then_some(())
            .ok_or(rows)
    });
}
