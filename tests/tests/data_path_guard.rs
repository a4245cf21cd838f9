//! The data path's guard on a real 2-host lab, through the `shoal` CLI: the cluster's
//! overlay network `web` and a service `web` of 2 tasks (one per host) published on
//! 8080.
//!
//! - Every node's guard holds the cluster's VTEPs (`guard.json`, `shoal dataplane
//!   stats`), and the published port answers the client from both tasks on both hosts
//!   (the mesh's replies are recorded behind the guard).
//! - VXLAN datagrams from the lab client (outside the cluster) to a host's data-path port,
//!   carrying a frame with `web`'s VNI, reach no overlay: `web`'s bridge never learns
//!   their source MAC, and the host counts every one in `vxlan_dropped_not_cluster`.
//! - The same datagrams from the other node (a cluster VTEP) do reach the overlay (the
//!   bridge learns their MAC, `vxlan_from_cluster` counts them).
//! - Once h2 has left and been removed (`node rm`), h1's guard no longer holds h2's
//!   address and drops what h2 sends.
use std::{
    net::{SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
};

use serde_json::Value;
use shoal_tests::{
    client_http, lab, privileged,
    swarm::{answered_by, hostnames, in_netns, Cli, BOUND},
    tables::read_json,
    wait_for, LabGuard,
};

/// The source MAC of the frames sent from outside the cluster, and from a cluster node.
const OUTSIDE_MAC: [u8; 6] = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01];
const CLUSTER_MAC: [u8; 6] = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x02];
const MAC_AFTER_REMOVAL: [u8; 6] = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x03];
/// Datagrams sent each time.
const SENT: u64 = 20;

fn stats(guard: &LabGuard, host: &str) -> Result<Value, String> {
    let out = guard.shoal(host, &["dataplane", "stats", "--json"])?;
    serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
}

fn counter(v: &Value, name: &str) -> u64 {
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {v}"))
}

/// A VXLAN datagram with `vni` carrying an ARP request (a broadcast the network's bridge
/// floods, learning its source) from `mac`.
fn vxlan_arp(vni: u32, mac: [u8; 6]) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0];
    d.extend_from_slice(&vni.to_be_bytes()[1..]);
    d.push(0);
    d.extend_from_slice(&[0xff; 6]);
    d.extend_from_slice(&mac);
    d.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    d.extend_from_slice(&mac);
    d.extend_from_slice(&[10, 0, 1, 249]);
    d.extend_from_slice(&[0; 6]);
    d.extend_from_slice(&[10, 0, 1, 250]);
    d
}

/// Sends [`SENT`] copies of `datagram` to `to` from the namespace at `netns`.
fn send_from(netns: &Path, to: SocketAddrV4, datagram: &[u8]) {
    in_netns(netns, || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..SENT {
            sock.send_to(datagram, to).expect("send");
        }
    });
}

/// The MACs `web`'s bridge on `host` has learned.
fn learned(guard: &LabGuard, host: &lab::HostState, vni: u32) -> String {
    let netns = host.run_dir.join(format!("netns/vni-{vni}"));
    guard.exec_ok(
        &host.name,
        &[
            "nsenter",
            &format!("--net={}", netns.display()),
            "bridge",
            "fdb",
            "show",
            "br",
            "br0",
        ],
    )
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

fn guard_status(h: &lab::HostState) -> Value {
    read_json(&h.run_dir.join("agent/guard.json"))
}

/// Waits until `host` has counted `n` more of `name` than in `before`.
fn wait_counted(guard: &LabGuard, host: &str, name: &str, before: &Value, n: u64) -> Value {
    wait_for(&format!("{host} counts {n} more {name}"), BOUND, || {
        let now = stats(guard, host)?;
        let moved = counter(&now, name) - counter(before, name);
        if moved >= n {
            Ok(now)
        } else {
            Err(format!("{name} +{moved}: {now}"))
        }
    })
}

#[test]
fn vxlan_from_outside_the_cluster_reaches_no_overlay_and_is_counted() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('q', 2);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();
    let hosts = &guard.state.hosts;
    let vteps: Vec<String> = hosts.iter().map(|h| h.address.to_string()).collect();

    for h in hosts {
        wait_for(
            &format!("{}: the guard holds both VTEPs", h.name),
            BOUND,
            || {
                let s = guard_status(h);
                let listed: Vec<&str> = s["vteps"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if s["enforced"] == true && s["port"] == 4789 && listed == vteps {
                    Ok(())
                } else {
                    Err(s.to_string())
                }
            },
        );
        let s = stats(&guard, &h.name).expect("stats");
        assert_eq!(counter(&s, "guard_enforced"), 1, "{}: {s}", h.name);
        assert_eq!(counter(&s, "guard_vteps"), 2, "{}: {s}", h.name);
    }

    cli.ok(
        "h1",
        &["network", "create", "--subnet", "10.0.1.0/24", "web"],
    );
    let inspect = cli.ok(
        "h1",
        &["network", "inspect", "--format", "{{json .Options}}", "web"],
    );
    let options: Value = serde_json::from_str(inspect.trim()).expect("network options");
    let vni: u32 = options["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("web's VNI in {options}"));
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--detach",
            "--replicas",
            "2",
            "--network",
            "web",
            "-p",
            "8080:80",
            "shoal/web:1",
        ],
    );
    let tasks = cli.wait_running("web", 2, |t| {
        t.iter()
            .map(|x| &x.node)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 2
    });
    let all = hostnames(&tasks);
    // Cluster traffic flows: the mesh reaches both tasks from both hosts, across the
    // overlay and back from the address the client used.
    for h in hosts {
        let url = format!("http://{}:8080/", h.address);
        let mut seen = std::collections::BTreeSet::new();
        wait_for(&format!("both tasks through {}", h.name), BOUND, || {
            let body = client_http(&guard, &url)?;
            seen.insert(answered_by(&body).ok_or(format!("unknown answer {body:?}"))?);
            if seen == all {
                Ok(())
            } else {
                Err(format!("answered so far by {seen:?} of {all:?}"))
            }
        });
    }

    // From outside the cluster, to each host's data-path port: dropped and counted.
    let client_netns = PathBuf::from(format!("/run/netns/{}", guard.state.client.netns));
    for h in hosts {
        let before = stats(&guard, &h.name).expect("stats");
        send_from(
            &client_netns,
            SocketAddrV4::new(h.address, 4789),
            &vxlan_arp(vni, OUTSIDE_MAC),
        );
        wait_counted(&guard, &h.name, "vxlan_dropped_not_cluster", &before, SENT);
        // Every datagram was dropped before the kernel saw it: none can still arrive.
        let fdb = learned(&guard, h, vni);
        assert!(
            !fdb.contains(&mac_text(OUTSIDE_MAC)),
            "{}: a frame from outside the cluster reached web's bridge:\n{fdb}",
            h.name
        );
    }

    // From the other node (a cluster VTEP): into the overlay.
    let (h1, h2) = (&hosts[0], &hosts[1]);
    let h2_netns = PathBuf::from(format!("/proc/{}/ns/net", h2.holder_pid));
    let before = stats(&guard, "h1").expect("stats");
    send_from(
        &h2_netns,
        SocketAddrV4::new(h1.address, 4789),
        &vxlan_arp(vni, CLUSTER_MAC),
    );
    wait_counted(&guard, "h1", "vxlan_from_cluster", &before, SENT);
    wait_for(
        "h1's web bridge learns the cluster node's frame",
        BOUND,
        || {
            let fdb = learned(&guard, h1, vni);
            if fdb.contains(&mac_text(CLUSTER_MAC)) {
                Ok(())
            } else {
                Err(fdb)
            }
        },
    );
    let after = stats(&guard, "h1").expect("stats");
    assert_eq!(
        counter(&after, "vxlan_dropped_not_cluster"),
        counter(&before, "vxlan_dropped_not_cluster"),
        "a cluster node's datagrams were dropped: {after}"
    );

    // h2 leaves and is removed: h1 no longer takes VXLAN from it.
    cli.ok("h1", &["service", "rm", "web"]);
    cli.ok("h2", &["swarm", "leave"]);
    wait_for("h2 is Down", BOUND, || {
        let nodes = cli.run("h1", &["node", "ls"])?;
        if nodes
            .lines()
            .any(|l| l.contains("h2") && l.contains("Down"))
        {
            Ok(())
        } else {
            Err(nodes)
        }
    });
    cli.ok("h1", &["node", "rm", "h2"]);
    let h1_vtep = h1.address.to_string();
    wait_for("h1's guard drops h2's VTEP", BOUND, || {
        let s = guard_status(h1);
        if s["vteps"] == serde_json::json!([h1_vtep]) {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    let before = stats(&guard, "h1").expect("stats");
    send_from(
        &h2_netns,
        SocketAddrV4::new(h1.address, 4789),
        &vxlan_arp(vni, MAC_AFTER_REMOVAL),
    );
    wait_counted(&guard, "h1", "vxlan_dropped_not_cluster", &before, SENT);
}
