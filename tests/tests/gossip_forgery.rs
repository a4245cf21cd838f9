//! A cluster member holding the gossip key cannot forge another node's gossip, on a real
//! 3-host lab. With what h3 (a worker) holds, the cluster key, and what any member may
//! read, every node's gossip generation and address, packets are made and sent from the
//! lab client to h1's and h2's UDP 7946:
//! - h2's record, at a version far ahead, saying h2 runs nothing (taken, it would drop
//!   h2's tasks from h1's tables and freeze h2's later updates there), signed with a key
//!   that is not h2's, correctly sealed for h1: h1 drops and counts it (`forged_record`);
//! - a heartbeat of a made-up newer generation of h2 (whose empty state would hide the
//!   real one): dropped and counted (`untrusted_heartbeat`);
//! - the packet sealed for h1, sent to h2 instead: h2 drops and counts it
//!   (`auth_failed`).
//!
//! Nothing else changes: h1 keeps h2's endpoints and backends, the tables agree, and a
//! scale-up after it reaches every table (h2's new task through h1's published port).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde_json::{json, Value};
use shoal_gossip::{
    craft::{self, About},
    ClusterKey, LocalIdentity,
};
use shoal_tests::{
    client_http, lab,
    manager_port::{self, cluster_dir, identity_in, node_config},
    privileged,
    swarm::{answered_by, hostnames, in_netns, Cli, BOUND},
    tables::{mentions, read_json, tables_agree},
    wait_for, LabGuard,
};

fn gossip_status(h: &lab::HostState) -> Value {
    read_json(&h.run_dir.join("agent").join("gossip.json"))
}

fn counter(h: &lab::HostState, name: &str) -> u64 {
    gossip_status(h)["counters"][name].as_u64().unwrap_or(0)
}

/// The whole store, as h1 (a manager) reads it over 2377 from the client namespace.
fn read_state(client_ns: &Path, manager: SocketAddr, h1: &lab::HostState) -> Value {
    let config: Arc<rustls::ClientConfig> = node_config(&identity_in(&cluster_dir(h1)));
    let answer = in_netns(client_ns, || {
        manager_port::call_once(manager, &config, &json!("read_state"))
    })
    .unwrap_or_else(|e| panic!("asking {manager}: {e}"));
    let mut answer = answer.unwrap_or_else(|e| panic!("read_state refused: {e}"));
    answer["state"].take()
}

/// The node of `state` whose hostname is `name`.
fn node<'a>(state: &'a Value, name: &str) -> &'a Value {
    state["nodes"]
        .as_object()
        .and_then(|nodes| nodes.values().find(|n| n["hostname"] == name))
        .unwrap_or_else(|| panic!("no node {name} in {}", state["nodes"]))
}

#[test]
fn a_key_holder_cannot_forge_another_nodes_gossip() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('n', 3);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();
    let hosts = &guard.state.hosts;
    let (h1, h2) = (&hosts[0], &hosts[1]);
    let manager: SocketAddr = format!("{}:2377", h1.address).parse().unwrap();
    let client_ns = PathBuf::from("/run/netns").join(&guard.state.client.netns);

    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "fweb",
            "--replicas",
            "3",
            "-p",
            "80:80",
            "shoal/web:1",
        ],
    );
    cli.wait_running("fweb", 3, |t| {
        t.iter().map(|t| &t.node).collect::<BTreeSet<_>>().len() == 3
    });
    wait_for("tables agree", BOUND, || tables_agree(&guard));
    wait_for("every node gossips with the other two", BOUND, || {
        let live: Vec<usize> = hosts
            .iter()
            .map(|h| {
                gossip_status(h)["live_nodes"]
                    .as_array()
                    .map_or(0, Vec::len)
            })
            .collect();
        if live == [3, 3, 3] {
            Ok(())
        } else {
            Err(format!("live nodes per host: {live:?}"))
        }
    });
    // The declared tables agree before the kernel's FDB has caught up with them: wait
    // until h1's VXLAN device holds an entry for each of h2's endpoints, so that the
    // snapshot compared after the forgery is a settled one.
    let h2_before = wait_for("h1 holds h2's task in every table", BOUND, || {
        let m = mentions(&guard, h1, h2.address);
        let count = |what: &str| m.iter().filter(|l| l.contains(what)).count();
        let (fdb, endpoints, backends) = (
            count(": fdb "),
            count("remote endpoint "),
            count(" backend "),
        );
        if backends > 0 && endpoints > 0 && fdb == endpoints {
            Ok(m)
        } else {
            Err(format!(
                "{fdb} FDB entries, {endpoints} remote endpoints, {backends} backends: {m:#?}"
            ))
        }
    });

    // What h3 holds (the cluster key) and what any member reads (generations, addresses).
    let state = read_state(&client_ns, manager, h1);
    let cluster_id = state["cluster"]["id"]
        .as_str()
        .expect("cluster ID")
        .to_owned();
    let primary = &state["gossip_keys"][0];
    let key = ClusterKey::parse(&format!(
        "{}:{}",
        primary["id"],
        primary["secret"].as_str().expect("secret")
    ))
    .expect("the store's gossip key");
    let id_of = |name: &str| node(&state, name)["id"].as_str().unwrap().to_owned();
    let (h1_id, h2_id, h3_id) = (id_of("h1"), id_of("h2"), id_of("h3"));
    let h2_gossip = &node(&state, "h2")["gossip"];
    let victim = About {
        node_id: h2_id.clone(),
        generation: h2_gossip["generation"].as_u64().expect("h2's generation"),
        addr: h2_gossip["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("h2's gossip address"),
    };
    assert_eq!(
        gossip_status(h2)["generation"].as_u64(),
        Some(victim.generation),
        "the store lists the generation h2 runs"
    );

    // h2's record, signed by a key that is not h2's, far ahead, with nothing in it.
    let thief = LocalIdentity::generate_for(victim.generation).unwrap();
    let version = 1_000_000;
    let forged = craft::signed_record(
        &thief,
        &cluster_id,
        &victim,
        version,
        IpAddr::V4(h2.address),
        &BTreeMap::new(),
    )
    .unwrap();
    let for_h1 = craft::seal(
        &key,
        &cluster_id,
        &h3_id,
        &h1_id,
        &craft::record_update(&victim, &forged, version),
    )
    .unwrap();
    let ghost = About {
        generation: victim.generation + 1,
        ..victim.clone()
    };
    let ghost_heartbeat = craft::seal(
        &key,
        &cluster_id,
        &h3_id,
        &h1_id,
        &craft::heartbeat(&cluster_id, &ghost, 1_000_000),
    )
    .unwrap();
    let before = (
        counter(h1, "forged_record"),
        counter(h1, "untrusted_heartbeat"),
        counter(h2, "auth_failed"),
    );
    in_netns(&client_ns, || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket in the client namespace");
        for (packet, to) in [
            (&for_h1, h1.address),
            (&ghost_heartbeat, h1.address),
            // Sealed for h1, replayed to h2.
            (&for_h1, h2.address),
        ] {
            s.send_to(packet, (to, 7946)).expect("sending");
        }
    });
    let counted = wait_for("h1 and h2 count the forged packets", BOUND, || {
        let now = (
            counter(h1, "forged_record"),
            counter(h1, "untrusted_heartbeat"),
            counter(h2, "auth_failed"),
        );
        if now.0 > before.0 && now.1 > before.1 && now.2 > before.2 {
            Ok(now)
        } else {
            Err(format!(
                "(forged_record, untrusted_heartbeat, auth_failed) {before:?} -> {now:?}; \
                 h1: {}",
                gossip_status(h1)["counters"]
            ))
        }
    });
    assert_eq!(
        (
            counted.0 - before.0,
            counted.1 - before.1,
            counted.2 - before.2
        ),
        (1, 1, 1),
        "each forged packet counted once"
    );
    println!(
        "forged packets dropped and counted: h1 {} / h2 auth_failed {}",
        gossip_status(h1)["counters"],
        counted.2
    );

    // Nothing changed: h1 still lists h2 live and keeps its endpoints and backends.
    assert_eq!(
        gossip_status(h1)["live_nodes"].as_array().map(Vec::len),
        Some(3)
    );
    let h2_after = mentions(&guard, h1, h2.address);
    assert_eq!(h2_after, h2_before, "h1's tables about h2 changed");
    tables_agree(&guard).expect("tables unchanged by the forgery");

    // Convergence goes on: 3 more tasks reach every table, h2's new one included (its
    // updates were not frozen behind the forged version).
    cli.ok("h1", &["service", "scale", "fweb=6"]);
    let tasks = cli.wait_running("fweb", 6, |t| {
        t.iter().filter(|t| t.node == "h2").count() >= 2
    });
    wait_for("tables agree after the scale-up", BOUND, || {
        tables_agree(&guard)
    });
    let all = hostnames(&tasks);
    let url = format!("http://{}:80/", h1.address);
    let mut seen = BTreeSet::new();
    wait_for("h1's published port reaching all 6 tasks", BOUND, || {
        let body = client_http(&guard, &url)?;
        seen.insert(answered_by(&body).ok_or(body)?);
        if seen == all {
            Ok(())
        } else {
            Err(format!("{seen:?} of {all:?}"))
        }
    });
    let c = gossip_status(h1)["counters"].clone();
    assert_eq!(
        c["forged_record"].as_u64(),
        Some(counted.0),
        "no genuine record was refused: {c}"
    );

    lab::down(&guard.layout).expect("lab down");
    assert_eq!(lab::leftovers(&guard.layout), Vec::<String>::new());
}
