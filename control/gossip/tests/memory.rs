//! Gossip on the in-memory network, in tokio's paused time: timers fire as soon as every
//! task is idle, so these seconds of protocol time run fast and do not depend on the
//! machine's load. Peer choice is still random (chitchat's), so bounds are generous.
use std::time::Duration;

use std::{collections::BTreeMap, sync::Arc};

use shoal_gossip::{
    craft::{self, About},
    sim::{self, endpoint, gossip_addr, node_id, SimCluster},
    ClusterKey, Gossip, Keyring, LocalIdentity, Timing,
};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(30);

async fn converged(n: usize, per_node: usize) -> SimCluster {
    let cluster = SimCluster::start(n, Timing::default()).await.unwrap();
    cluster.publish_all(per_node).await.unwrap();
    let took = cluster
        .wait_converged(per_node, LIMIT)
        .await
        .unwrap_or_else(|nodes| panic!("nodes {nodes:?} did not converge"));
    println!("{n} nodes converged in {took:?}");
    cluster
}

#[tokio::test(start_paused = true)]
async fn endpoints_reach_every_node_and_withdrawals_follow() {
    let cluster = converged(12, 2).await;
    // A new endpoint on node 7 reaches everyone, with every field intact.
    let mut ep = endpoint(7, 9);
    ep.aliases = vec!["db".into()];
    cluster.node(7).publish("e9", &ep).await.unwrap();
    cluster
        .wait_all(LIMIT, |_, t| t.get(&node_id(7), "e9") == Some(&ep))
        .await
        .unwrap();
    // An update (health) and a withdrawal reach everyone too.
    ep.healthy = false;
    cluster.node(7).publish("e9", &ep).await.unwrap();
    cluster
        .wait_all(LIMIT, |_, t| {
            t.get(&node_id(7), "e9").map(|e| e.healthy) == Some(false)
        })
        .await
        .unwrap();
    assert!(cluster.node(7).withdraw("e9").await);
    assert!(!cluster.node(7).withdraw("e9").await);
    cluster
        .wait_all(LIMIT, |_, t| {
            t.get(&node_id(7), "e9").is_none() && t.len() == 24
        })
        .await
        .unwrap();
    // The table's views: remote endpoints and a service's endpoints.
    let t = cluster.node(0).table();
    assert_eq!(t.remote(&node_id(0)).count(), 22);
    assert_eq!(t.service("svc0").count(), 12);
    // Nothing was dropped on the way.
    for (_, g) in cluster.live() {
        let c = g.counters();
        assert_eq!(c.packets_dropped(), 0, "{c:?}");
        assert_eq!(c.records_refused(), 0, "{c:?}");
    }
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn set_endpoints_replaces_the_whole_set_or_nothing() {
    let cluster = converged(4, 1).await;
    let g = cluster.node(2);
    let mut set = std::collections::BTreeMap::new();
    set.insert("a".to_string(), endpoint(2, 10));
    set.insert("b".to_string(), endpoint(2, 11));
    g.set_endpoints(&set).await.unwrap();
    assert_eq!(g.own_endpoints().await, set);
    // One bad record (another node's VTEP) refuses the whole set.
    let mut bad = set.clone();
    bad.insert("c".to_string(), endpoint(3, 12));
    bad.remove("a");
    let err = g.set_endpoints(&bad).await.unwrap_err();
    assert!(err.to_string().contains("VTEP"), "{err}");
    assert_eq!(g.own_endpoints().await, set);
    // Outside its subnet, unknown network, bad ID: refused by publish too.
    let mut outside = endpoint(2, 13);
    outside.ip = "10.0.0.9".parse().unwrap();
    assert!(g.publish("x", &outside).await.is_err());
    let mut unknown = endpoint(2, 13);
    unknown.network = "nope".into();
    assert!(g.publish("x", &unknown).await.is_err());
    assert!(g.publish("bad id", &endpoint(2, 13)).await.is_err());
    assert_eq!(g.own_endpoints().await, set);
    cluster
        .wait_all(LIMIT, |_, t| {
            t.get(&node_id(2), "a").is_some()
                && t.get(&node_id(2), "b").is_some()
                && t.get(&node_id(2), "e0").is_none()
        })
        .await
        .unwrap();
    cluster.shutdown().await;
}

/// Time until no running node but `dead` itself lists `dead` any more.
async fn withdrawn(cluster: &SimCluster, dead: usize) -> Duration {
    cluster
        .wait_all(LIMIT, |i, t| i == dead || !t.contains_node(&node_id(dead)))
        .await
        .unwrap_or_else(|nodes| panic!("nodes {nodes:?} still list node {dead}"))
}

#[tokio::test(start_paused = true)]
async fn dead_node_is_withdrawn_within_the_bound_and_blips_do_not_flap() {
    let n = 30;
    let mut cluster = converged(n, 1).await;
    // Let heartbeat intervals settle.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // A 1 s blip of node 11: no node's table ever loses it.
    let victim = 11;
    let blip = Duration::from_secs(1);
    cluster.net.isolate(gossip_addr(victim));
    let start = Instant::now();
    let mut lost_by = Vec::new();
    while start.elapsed() < blip + Duration::from_secs(3) {
        if start.elapsed() >= blip {
            cluster.net.heal();
        }
        for (i, g) in cluster.live() {
            if !g.table().contains_node(&node_id(victim)) && !lost_by.contains(&i) {
                lost_by.push(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        lost_by.is_empty(),
        "a 1 s blip made nodes {lost_by:?} drop node {victim}"
    );

    // A crash: gone from every table within 5 s.
    let dead = 17;
    cluster.kill(dead);
    let took = withdrawn(&cluster, dead).await;
    println!("dead node withdrawn everywhere after {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // Its endpoints went with it, nobody else's did.
    cluster
        .wait_all(LIMIT, |_, t| t.len() == n - 1)
        .await
        .unwrap();

    // It restarts (new generation) and is back everywhere, its endpoint republished.
    cluster.restart(dead).await.unwrap();
    cluster
        .node(dead)
        .publish("e0", &endpoint(dead, 0))
        .await
        .unwrap();
    cluster.wait_converged(1, LIMIT).await.unwrap();
    // Its old generation, dead in every node's chitchat state for a while, is no longer
    // offered to anyone: nothing is refused while gossip goes on.
    let before: Vec<u64> = cluster
        .live()
        .map(|(_, g)| g.counters().updates_refused())
        .collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after: Vec<u64> = cluster
        .live()
        .map(|(_, g)| g.counters().updates_refused())
        .collect();
    assert_eq!(after, before, "refusals after a restart");
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn lossy_network_does_not_flap() {
    let n = 20;
    let cluster = converged(n, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // 20% of all datagrams lost for 30 s: no node ever drops another.
    cluster.net.set_loss(200_000, 0x5eed);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        for (i, g) in cluster.live() {
            let t = g.table();
            assert_eq!(
                t.nodes().len(),
                n,
                "after {:?} of 20% loss node {i} sees only {:?}",
                start.elapsed(),
                t.nodes().keys().collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, lost) = cluster.net.stats();
    assert!(lost > 1000, "loss was applied: {lost}");
    cluster.net.set_loss(0, 0);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn partition_heals_without_operator_action() {
    let n = 12;
    let cluster = converged(n, 1).await;
    // Seeds 0..3 on one side with 3..6, the rest (6..12) alone on the other.
    let a: Vec<_> = (0..6).map(gossip_addr).collect();
    let b: Vec<_> = (6..n).map(gossip_addr).collect();
    cluster.net.partition(&a, &b);
    // Each side withdraws the other's endpoints...
    cluster
        .wait_all(LIMIT, |i, t| {
            let same_side = |j: usize| (i < 6) == (j < 6);
            (0..n).all(|j| t.contains_node(&node_id(j)) == same_side(j))
        })
        .await
        .unwrap();
    // ...and keeps changing on its own: a new endpoint on the seedless side.
    cluster
        .node(9)
        .publish("late", &endpoint(9, 5))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    cluster.net.heal();
    let took = cluster
        .wait_all(LIMIT, |_, t| {
            t.nodes().len() == n && t.len() == n + 1 && t.get(&node_id(9), "late").is_some()
        })
        .await
        .unwrap_or_else(|nodes| panic!("nodes {nodes:?} did not converge after the heal"));
    println!("converged {took:?} after the partition healed");
    // Everyone holds the same table.
    let first = cluster.node(0).table();
    for (_, g) in cluster.live() {
        assert_eq!(*g.table(), *first);
    }
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn outsiders_and_retired_keys_are_dropped_and_counted() {
    let cluster = converged(5, 1).await;
    // A node with another key, pointed at the seeds (and knowing the members, which are
    // no secret): never gets in, never learns anything.
    let outsider_ring = Keyring::new(ClusterKey::new(1, [0x11; 32]));
    let mut config = sim::config(40, &cluster.net, outsider_ring, Timing::default()).unwrap();
    for (id, n) in cluster.trust.iter() {
        config.trust.insert(id, *n);
    }
    let outsider = Gossip::start(config).await.unwrap();
    outsider.publish("e0", &endpoint(40, 0)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let auth_failed: u64 = cluster.live().map(|(_, g)| g.counters().auth_failed).sum();
    assert!(auth_failed > 0);
    for (_, g) in cluster.live() {
        assert!(!g.table().contains_node(&node_id(40)));
    }
    assert_eq!(outsider.table().nodes().len(), 1, "it sees only itself");
    outsider.kill();

    // Rotation in three steps, with gossip going on: add the new key everywhere, make it
    // primary everywhere, retire the old one.
    let old = sim::test_key().primary().clone();
    let new = ClusterKey::new(2, [0x77; 32]);
    for (_, g) in cluster.live() {
        g.set_keyring(Keyring::with_others(old.clone(), vec![new.clone()]).unwrap());
    }
    for (_, g) in cluster.live() {
        g.set_keyring(Keyring::with_others(new.clone(), vec![old.clone()]).unwrap());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (_, g) in cluster.live() {
        g.set_keyring(Keyring::new(new.clone()));
    }
    let before: Vec<_> = cluster.live().map(|(_, g)| g.counters()).collect();
    cluster
        .node(3)
        .publish("e1", &endpoint(3, 1))
        .await
        .unwrap();
    cluster
        .wait_all(LIMIT, |_, t| t.get(&node_id(3), "e1").is_some())
        .await
        .unwrap();
    for ((_, g), b) in cluster.live().zip(&before) {
        let c = g.counters();
        assert_eq!(
            c.auth_failed, b.auth_failed,
            "no packet failed during rotation"
        );
        assert_eq!(c.unknown_key, b.unknown_key);
    }
    // A node still on the retired key is now an outsider: its packets are counted as
    // under an unknown key, and it drops out of every table.
    cluster.node(4).set_keyring(Keyring::new(old.clone()));
    let took = withdrawn(&cluster, 4).await;
    println!("node on a retired key dropped out after {took:?}");
    let unknown: u64 = cluster.live().map(|(_, g)| g.counters().unknown_key).sum();
    assert!(unknown > 0);
    // Given the new key again, it is back.
    cluster.node(4).set_keyring(Keyring::new(new));
    cluster
        .wait_all(LIMIT, |_, t| t.contains_node(&node_id(4)))
        .await
        .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn bad_packets_are_dropped_counted_and_disturb_nothing() {
    let cluster = converged(4, 1).await;
    let target = gossip_addr(1);
    cluster.net.record(target);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let captured = cluster.net.recorded(target);
    assert!(!captured.is_empty());
    let base = cluster.node(1).counters();
    let table = cluster.node(1).table();

    let from = gossip_addr(2);
    // Replayed: every packet already delivered, sent again.
    for (src, bytes) in &captured {
        cluster.net.inject(*src, target, bytes.clone());
    }
    // Garbage, truncated, oversized, tampered.
    cluster
        .net
        .inject(from, target, b"\x00\x01garbage".to_vec());
    let (_, one) = &captured[0];
    cluster.net.inject(from, target, one[..20].to_vec());
    cluster.net.inject(from, target, vec![0u8; 70_000]);
    let mut tampered = one.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x80;
    cluster.net.inject(from, target, tampered);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let c = cluster.node(1).counters();
    assert_eq!(c.replayed - base.replayed, captured.len() as u64, "{c:?}");
    assert_eq!(c.malformed - base.malformed, 2, "{c:?}");
    assert_eq!(c.oversized - base.oversized, 1, "{c:?}");
    assert_eq!(c.auth_failed - base.auth_failed, 1, "{c:?}");
    // Nothing else moved: the table is the same and gossip goes on.
    assert_eq!(*cluster.node(1).table(), *table);
    cluster
        .node(2)
        .publish("e7", &endpoint(2, 7))
        .await
        .unwrap();
    cluster
        .wait_all(LIMIT, |_, t| t.get(&node_id(2), "e7").is_some())
        .await
        .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn bad_records_are_left_out_counted_once_and_disturb_nothing() {
    let n = 5;
    let cluster = converged(n, 1).await;
    let liar = cluster.node(3);
    // Claims node 1's VTEP (to draw its traffic), an address outside the network, an
    // unknown network, a record that is not one, and node 2's endpoint address.
    let mut foreign = endpoint(3, 20);
    foreign.vtep = sim::vtep(1);
    let mut outside = endpoint(3, 21);
    outside.ip = "10.0.0.77".parse().unwrap();
    let mut unknown = endpoint(3, 22);
    unknown.network = "elsewhere".into();
    let stolen = {
        let mut e = endpoint(3, 23);
        e.ip = endpoint(2, 0).ip;
        e
    };
    let json = |e: &shoal_gossip::Endpoint| serde_json::to_value(e).unwrap();
    for (id, entry) in [
        ("foreign", json(&foreign)),
        ("outside", json(&outside)),
        ("unknown", json(&unknown)),
        ("junk", serde_json::Value::String("{not json".into())),
        ("stolen", json(&stolen)),
    ] {
        liar.set_raw_entry_for_tests(id, entry).await.unwrap();
    }
    // A good record published alongside still gets through.
    liar.publish("good", &endpoint(3, 24)).await.unwrap();
    cluster
        .wait_all(LIMIT, |_, t| t.get(&node_id(3), "good").is_some())
        .await
        .unwrap();
    // Publish once more so every receiver re-checks node 3's records: still counted once.
    liar.publish("good2", &endpoint(3, 25)).await.unwrap();
    cluster
        .wait_all(LIMIT, |_, t| t.get(&node_id(3), "good2").is_some())
        .await
        .unwrap();
    for (i, g) in cluster.live() {
        let t = g.table();
        for id in ["foreign", "outside", "unknown", "junk", "stolen"] {
            assert!(t.get(&node_id(3), id).is_none(), "node {i} took {id}");
        }
        // Node 2's endpoint was claimed by two nodes: left out (never given to the liar).
        assert!(t.get(&node_id(2), "e0").is_none());
        // Everything else is there: n endpoints minus node 2's, plus good and good2.
        assert_eq!(t.len(), n - 1 + 2, "node {i}");
        let c = g.counters();
        assert_eq!(
            (
                c.foreign_claim,
                c.outside_subnet,
                c.unknown_network,
                c.bad_record
            ),
            (1, 1, 1, 1),
            "node {i}: {c:?}"
        );
        assert!(c.address_conflict >= 1);
    }
    // The liar withdraws the stolen address: node 2's endpoint comes back everywhere.
    assert!(liar.withdraw("stolen").await);
    cluster
        .wait_all(LIMIT, |_, t| {
            t.get(&node_id(2), "e0") == Some(&endpoint(2, 0))
        })
        .await
        .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn subnet_changes_recheck_every_record() {
    let cluster = converged(3, 1).await;
    let mut narrowed = sim::subnets();
    narrowed.insert(sim::NETWORK.into(), "10.200.0.0/16".parse().unwrap());
    cluster.node(0).set_subnets(narrowed);
    cluster
        .wait_all(LIMIT, |i, t| i != 0 || t.is_empty())
        .await
        .unwrap();
    assert_eq!(cluster.node(0).counters().outside_subnet, 3);
    cluster.node(0).set_subnets(sim::subnets());
    cluster.wait_converged(1, LIMIT).await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test]
async fn bad_configuration_is_refused() {
    let net = shoal_gossip::MemoryNet::new();
    let config = || sim::config(0, &net, sim::test_key(), Timing::default()).unwrap();
    let mut c = config();
    c.node_id = String::new();
    assert!(Gossip::start(c).await.is_err());
    let mut c = config();
    c.timing.gossip_interval = Duration::ZERO;
    assert!(Gossip::start(c).await.is_err());
    let mut c = config();
    c.listen.set_port(0);
    assert!(
        Gossip::start(c).await.is_err(),
        "the in-memory network needs a port"
    );
    // The trust set must name this node as it signs: its generation, address and key.
    let mut c = config();
    c.trust = shoal_gossip::TrustSet::new();
    let err = Gossip::start(c).await.err().expect("no trust in itself");
    assert!(err.to_string().contains("trust set"), "{err}");
    let mut c = config();
    c.identity = Arc::new(LocalIdentity::generate().unwrap());
    assert!(Gossip::start(c).await.is_err(), "another key");
    // One address, one node.
    let first = Gossip::start(config()).await.unwrap();
    assert!(Gossip::start(config()).await.is_err());
    first.shutdown().await;
}

/// What node 3, a key holder, can make up about node 1.
fn about(cluster: &SimCluster, i: usize) -> About {
    let t = cluster.trust.get(&node_id(i)).expect("a member");
    About {
        node_id: node_id(i),
        generation: t.generation,
        addr: t.addr,
    }
}

/// `message` sealed by node 3 (a member, holding the cluster key) for node 0, delivered.
fn inject_from_3_to_0(cluster: &SimCluster, message: &[u8]) {
    let packet = craft::seal(
        sim::test_key().primary(),
        "sim-cluster",
        &node_id(3),
        &node_id(0),
        message,
    )
    .unwrap();
    cluster.net.inject(gossip_addr(3), gossip_addr(0), packet);
}

#[tokio::test(start_paused = true)]
async fn a_key_holder_cannot_forge_another_nodes_state() {
    let cluster = converged(4, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = about(&cluster, 1);
    let before = cluster.node(0).counters();
    let table = cluster.node(0).table();
    let thief = LocalIdentity::generate_for(victim.generation).unwrap();

    // Node 1's record, signed by the thief, far ahead in version: it would take node 2's
    // address and freeze node 1's real updates if it were taken.
    let mut lies = BTreeMap::new();
    let mut stolen = endpoint(1, 30);
    stolen.ip = endpoint(2, 0).ip;
    lies.insert("e0".to_string(), stolen);
    let forged = craft::signed_record(
        &thief,
        "sim-cluster",
        &victim,
        1_000_000,
        sim::vtep(1),
        &lies,
    )
    .unwrap();
    inject_from_3_to_0(&cluster, &craft::record_update(&victim, &forged, 1_000_000));
    // Node 1's real record replayed under another version, and node 1's record deleted.
    let genuine = craft::signed_record(
        cluster.identity(1),
        "sim-cluster",
        &victim,
        2,
        sim::vtep(1),
        &lies,
    )
    .unwrap();
    inject_from_3_to_0(&cluster, &craft::record_update(&victim, &genuine, 999));
    inject_from_3_to_0(&cluster, &craft::deletion(&victim, "node", 1_000_001));
    // A made-up newer generation of node 1 (its empty state would hide the real one), in
    // a heartbeat and in an update signed by the thief.
    let ghost = About {
        generation: victim.generation + 1,
        ..victim.clone()
    };
    inject_from_3_to_0(&cluster, &craft::heartbeat("sim-cluster", &ghost, 50));
    let ghost_record =
        craft::signed_record(&thief, "sim-cluster", &ghost, 1, sim::vtep(1), &lies).unwrap();
    inject_from_3_to_0(&cluster, &craft::record_update(&ghost, &ghost_record, 1));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let c = cluster.node(0).counters();
    assert_eq!(c.forged_record - before.forged_record, 2, "{c:?}");
    assert_eq!(c.bad_delta - before.bad_delta, 1, "{c:?}");
    assert_eq!(
        c.untrusted_heartbeat - before.untrusted_heartbeat,
        1,
        "{c:?}"
    );
    assert_eq!(c.untrusted_node - before.untrusted_node, 1, "{c:?}");
    assert_eq!(c.packets_dropped(), before.packets_dropped(), "{c:?}");
    // Nothing changed: the same table, node 1 listed once with its own endpoint.
    assert_eq!(*cluster.node(0).table(), *table);
    assert_eq!(
        cluster.node(0).table().get(&node_id(1), "e0"),
        Some(&endpoint(1, 0))
    );
    // Node 1's real updates still reach node 0 (its versions were not pushed ahead).
    cluster
        .node(1)
        .publish("e5", &endpoint(1, 5))
        .await
        .unwrap();
    cluster
        .wait_all(LIMIT, |_, t| {
            t.get(&node_id(1), "e5") == Some(&endpoint(1, 5))
        })
        .await
        .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn packets_replayed_to_another_node_are_dropped_and_counted() {
    let cluster = converged(4, 1).await;
    let (first, second) = (gossip_addr(1), gossip_addr(2));
    cluster.net.record(first);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let captured = cluster.net.recorded(first);
    assert!(!captured.is_empty());
    let before = cluster.node(2).counters();
    let table = cluster.node(2).table();
    // Every packet sealed for node 1, replayed to node 2 from its original sender.
    for (src, bytes) in &captured {
        cluster.net.inject(*src, second, bytes.clone());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = cluster.node(2).counters();
    assert_eq!(
        c.auth_failed - before.auth_failed,
        captured.len() as u64,
        "{c:?}"
    );
    assert_eq!(c.replayed, before.replayed, "{c:?}");
    assert_eq!(*cluster.node(2).table(), *table);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_removed_node_leaves_every_table_though_it_keeps_gossiping() {
    let n = 5;
    let cluster = converged(n, 1).await;
    // The managers remove node 4: its key leaves the trust set everyone is given. It
    // still runs, with the cluster key.
    let mut trust = cluster.trust.clone();
    trust.remove(&node_id(4));
    for (i, g) in cluster.live() {
        if i != 4 {
            g.set_trust(trust.clone());
        }
    }
    cluster
        .wait_all(LIMIT, |i, t| i == 4 || !t.contains_node(&node_id(4)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, g) in cluster.live().filter(|(i, _)| *i != 4) {
        let t = g.table();
        assert!(!t.contains_node(&node_id(4)), "node {i}");
        assert_eq!(t.len(), n - 1, "node {i}");
        assert!(!g.live_nodes().await.contains(&node_id(4)), "node {i}");
    }
    let dropped: u64 = cluster
        .live()
        .filter(|(i, _)| *i != 4)
        .map(|(_, g)| g.counters().unknown_sender)
        .sum();
    assert!(dropped > 0, "node 4's packets are counted");
    cluster.shutdown().await;
}

/// Node `i`'s verdicts: the members its own probes do not reach.
fn unreachable_from(cluster: &SimCluster, i: usize) -> Vec<String> {
    cluster.node(i).unreachable().keys().cloned().collect()
}

#[tokio::test(start_paused = true)]
async fn a_member_cut_off_from_one_node_only_is_unreachable_there_and_alive_everywhere() {
    let n = 5;
    let cluster = converged(n, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // No verdict while every link works.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(10) {
        for (i, _) in cluster.live() {
            assert!(unreachable_from(&cluster, i).is_empty(), "node {i}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nodes 0 and 1 cut off from each other; 2, 3 and 4 still reach both.
    cluster.net.partition(&[gossip_addr(0)], &[gossip_addr(1)]);
    let cut = Instant::now();
    let mut seen = None;
    while cut.elapsed() < Duration::from_secs(10) {
        let zero = unreachable_from(&cluster, 0);
        let one = unreachable_from(&cluster, 1);
        if zero == [node_id(1)] && one == [node_id(0)] {
            seen = Some(cut.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = seen.unwrap_or_else(|| {
        panic!(
            "not judged: 0 sees {:?}, 1 sees {:?}",
            unreachable_from(&cluster, 0),
            unreachable_from(&cluster, 1)
        )
    });
    println!("a cut link judged from both ends after {took:?}");
    assert!(
        // ProbeTiming's defaults: 600 ms after the newest answered probe was sent (200 ms
        // or less before the cut), on a round (every 200 ms).
        took >= Duration::from_millis(400) && took <= Duration::from_millis(1000),
        "{took:?}"
    );
    assert_eq!(
        cluster.node(0).unreachable()[&node_id(1)],
        shoal_gossip::Unanswered {
            addr: gossip_addr(1).ip(),
            lost: false
        },
        "with its gossip address (a node's data-path address in shoal)"
    );
    // Gossip still has each alive through the others, for 10 s: only the verdicts of
    // the two ends changed.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(10) {
        for (i, g) in cluster.live() {
            assert_eq!(g.table().nodes().len(), n, "node {i}");
            if i > 1 {
                assert!(unreachable_from(&cluster, i).is_empty(), "node {i}");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.node(0).counters().unreachable, 1);
    // Silent for over 3 s by now: its flows are given up too.
    assert!(cluster.node(0).unreachable()[&node_id(1)].lost);
    assert!(cluster.node(1).unreachable()[&node_id(0)].lost);
    // Healed: reachable again with the first answer.
    cluster.net.heal();
    let healed = Instant::now();
    while !(unreachable_from(&cluster, 0).is_empty() && unreachable_from(&cluster, 1).is_empty()) {
        assert!(healed.elapsed() < Duration::from_secs(2), "not back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("reachable again after {:?}", healed.elapsed());
    let c = cluster.node(0).counters();
    assert_eq!((c.unreachable, c.reachable_again), (1, 1));
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_strangers_flood_is_shed_unopened_and_members_stay_reachable() {
    let cluster = converged(4, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let target = gossip_addr(1);
    // An address no member gossips from; each burst fills most of the socket's queue
    // at once, so the node finds a backlog when it next reads.
    let stranger: std::net::SocketAddr = "192.0.2.99:7946".parse().unwrap();
    const BURST: u64 = 200;
    let base = cluster.node(1).counters();
    let flood = Instant::now();
    let mut bursts = 0;
    while flood.elapsed() < Duration::from_secs(5) {
        for k in 0..BURST {
            cluster
                .net
                .inject(stranger, target, format!("garbage {k}").into_bytes());
        }
        bursts += 1;
        for (i, _) in cluster.live() {
            assert!(unreachable_from(&cluster, i).is_empty(), "node {i}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = cluster.node(1).counters();
    let (shed, malformed) = (c.shed - base.shed, c.malformed - base.malformed);
    println!("{bursts} bursts of {BURST}: {shed} shed unopened, {malformed} opened as malformed");
    // Every one accounted for: shed while a backlog waited, opened (and refused as
    // garbage) once it was gone.
    assert_eq!(shed + malformed, bursts * BURST, "{c:?}");
    assert!(shed >= bursts * (BURST - 64), "{c:?}");
    assert_eq!(c.unreachable, 0, "{c:?}");
    // Members' gossip went on meanwhile.
    cluster
        .node(2)
        .publish("e9", &endpoint(2, 9))
        .await
        .unwrap();
    cluster
        .wait_all(LIMIT, |_, t| t.get(&node_id(2), "e9").is_some())
        .await
        .unwrap();
    cluster.shutdown().await;
}
