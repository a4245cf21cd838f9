//! `swarm init/join --data-path-addr eth1` on a lab whose hosts have a second underlay
//! (eth1, 192.168.78.0/24, a bridge of its own that the client is not on): management
//! traffic stays on eth0 (the advertise addresses), the overlay's VXLAN goes over eth1.
//!
//! An address the host does not hold is refused and leaves the node out of any swarm.
//! Every node's overlay uses its eth1 address as VTEP (overlay.json), a task on h2
//! reaches every task of a 3-replica service through its VIP while h2's eth1 carries
//! the frames (its counters grow; the peers' VTEPs are reachable over eth1 only), and
//! the service's published port answers the client on every node's eth0 address, from
//! every task: the routing mesh takes the client's frame on eth0 and sends it to the
//! task's node over eth1, where the data path's guard (run on eth1 too) lets it in from
//! a cluster VTEP and records it for the reply.
use std::collections::BTreeSet;

use serde_json::Value;
use shoal_tests::{
    client_http, lab, privileged,
    swarm::{answered_by, hostnames, Cli, Task, BOUND},
    wait_for, LabGuard,
};

fn overlay_status(h: &lab::HostState) -> Value {
    std::fs::read(h.run_dir.join("agent/overlay.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// Packets sent out of `ifname` in host `h`, as the kernel counts them.
fn tx_packets(guard: &LabGuard, h: &str, ifname: &str) -> u64 {
    let out = guard.exec_ok(h, &["ip", "-j", "-s", "link", "show", ifname]);
    let v: Value = serde_json::from_str(&out).expect("ip -j output");
    v[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tx counter for {ifname} in {out}"))
}

/// Asks `ask` until every task of `want` has answered.
fn reach_all(what: &str, want: &BTreeSet<String>, ask: impl Fn() -> Result<String, String>) {
    let mut seen = BTreeSet::new();
    wait_for(what, BOUND, || {
        let body = ask()?;
        let by = answered_by(&body).ok_or(format!("unknown answer {body:?}"))?;
        assert!(
            want.contains(&by),
            "{what}: answered by {by}, not one of {want:?}"
        );
        seen.insert(by);
        if &seen == want {
            Ok(())
        } else {
            Err(format!("answered so far by {seen:?} of {want:?}"))
        }
    });
}

#[test]
fn the_overlay_goes_over_the_data_path_interface() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('p', 3);
    lab::data_path::add(&guard.state).expect("second underlay");
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);

    let e = cli
        .run("h1", &["swarm", "init", "--data-path-addr", "10.9.9.9"])
        .unwrap_err();
    assert!(e.contains("no interface of this host holds"), "{e}");
    let info = cli.ok("h1", &["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    assert_eq!(info.trim(), "inactive", "a refused init joins nothing");

    cli.form_cluster_with(&["--data-path-addr", "eth1"]);
    for (i, h) in guard.state.hosts.iter().enumerate() {
        let want = lab::data_path::data_path_address(i as u32 + 1).to_string();
        wait_for(&format!("{}: overlay VTEP on eth1", h.name), BOUND, || {
            let s = overlay_status(h);
            if s["vtep"] == want.as_str() && s["data_path_interface"] == "eth1" {
                Ok(())
            } else {
                Err(s.to_string())
            }
        });
    }
    // The data path's guard runs on eth1 too (VXLAN arrives there), and takes every
    // node's eth1 address as a VTEP.
    let vteps: Vec<String> = (1..=guard.state.hosts.len() as u32)
        .map(|i| lab::data_path::data_path_address(i).to_string())
        .collect();
    for h in &guard.state.hosts {
        wait_for(&format!("{}: the guard on eth1", h.name), BOUND, || {
            let s = shoal_tests::tables::read_json(&h.run_dir.join("agent/guard.json"));
            let listed: Vec<&str> = s["vteps"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if s["data_path_interface"] == "eth1" && s["enforced"] == true && listed == vteps {
                Ok(())
            } else {
                Err(s.to_string())
            }
        });
    }

    cli.ok(
        "h1",
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.0.7.0/24",
            "back",
        ],
    );
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--detach",
            "--replicas",
            "3",
            "--network",
            "back",
            "-p",
            "8080:80",
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
            "back",
            "--constraint",
            "node.hostname==h2",
            "shoal/web:1",
        ],
    );
    let web = cli.wait_running("web", 3, |t| {
        t.iter().map(|x| &x.node).collect::<BTreeSet<_>>().len() == 3
    });
    let all = hostnames(&web);
    let client: Task = cli.wait_running("client", 1, |_| true).remove(0);
    let vip = cli.vip("web", "back");

    // Through the overlay: the two tasks not on h2 are reached over h2's eth1.
    let before = tx_packets(&guard, "h2", "eth1");
    reach_all("the client task through web's VIP", &all, || {
        cli.exec_in(
            &client,
            &["timeout", "10", "wget", "-qO-", &format!("http://{vip}/")],
        )
    });
    let sent = tx_packets(&guard, "h2", "eth1") - before;
    assert!(
        sent >= 4,
        "h2's eth1 sent {sent} packets while its task talked to tasks on h1 and h3"
    );

    // The routing mesh: the client (on eth0's network only) reaches every task through
    // every node's advertise address.
    for h in &guard.state.hosts {
        let url = format!("http://{}:8080/", h.address);
        reach_all(&format!("the client through {}", h.name), &all, || {
            client_http(&guard, &url)
        });
    }
}
