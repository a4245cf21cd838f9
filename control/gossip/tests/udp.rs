//! Gossip on real UDP over loopback, in real time: a small cluster, a crash, a restart,
//! hostile datagrams from a plain socket and a node with the wrong key.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use shoal_gossip::{
    sim::{endpoint, node_id, subnets, test_key, vtep},
    ClusterKey, Endpoint, EndpointTable, Gossip, GossipConfig, Keyring, LocalIdentity, TrustSet,
    TrustedNode,
};

const LIMIT: Duration = Duration::from_secs(30);

/// Free UDP ports on 127.0.0.1, found by binding port 0 (held until all are known).
fn free_ports(n: usize) -> Vec<u16> {
    let socks: Vec<_> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    socks
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// Node `i`'s entry in the trust set, signing with `identity`.
fn trusted(i: usize, ports: &[u16], identity: &LocalIdentity) -> TrustedNode {
    TrustedNode {
        generation: identity.generation(),
        addr: addr(ports[i]),
        key: identity.public_key(),
    }
}

fn config(
    i: usize,
    ports: &[u16],
    keyring: Keyring,
    identity: Arc<LocalIdentity>,
    trust: &TrustSet,
) -> GossipConfig {
    let mut c = GossipConfig::new(
        node_id(i),
        "udp-cluster",
        addr(ports[i]),
        vtep(i),
        keyring,
        identity,
    );
    c.trust = trust.clone();
    c.listen = addr(ports[i]);
    c.seeds = ports.iter().take(2).map(|p| addr(*p)).collect();
    c.subnets = subnets();
    c
}

async fn wait_all(
    nodes: &[Option<Gossip>],
    pred: impl Fn(usize, &EndpointTable) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let failing: Vec<usize> = nodes
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.as_ref().map(|g| (i, g)))
            .filter(|(i, g)| !pred(*i, &g.table()))
            .map(|(i, _)| i)
            .collect();
        if failing.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < LIMIT,
            "nodes {failing:?} never got there; node 0 sees {:?}",
            nodes[0].as_ref().map(|g| g.table())
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_cluster_spreads_withdraws_and_drops_hostile_packets() {
    let n = 6;
    let ports = free_ports(n + 1);
    let identities: Vec<Arc<LocalIdentity>> = (0..n)
        .map(|_| Arc::new(LocalIdentity::generate().unwrap()))
        .collect();
    let mut trust = TrustSet::new();
    for (i, identity) in identities.iter().enumerate() {
        trust.insert(node_id(i), trusted(i, &ports, identity));
    }
    let mut nodes: Vec<Option<Gossip>> = Vec::new();
    for (i, identity) in identities.iter().enumerate() {
        let g = Gossip::start(config(i, &ports, test_key(), identity.clone(), &trust))
            .await
            .unwrap();
        g.publish("e0", &endpoint(i, 0)).await.unwrap();
        nodes.push(Some(g));
    }
    let took = wait_all(&nodes, |_, t| t.len() == n).await;
    println!("{n} nodes on UDP converged in {took:?}");

    // One new endpoint reaches everyone.
    let ep: Endpoint = endpoint(3, 1);
    nodes[3].as_ref().unwrap().publish("e1", &ep).await.unwrap();
    let took = wait_all(&nodes, |_, t| t.get(&node_id(3), "e1") == Some(&ep)).await;
    println!("one endpoint reached every node in {took:?}");

    // Hostile datagrams at node 1 from a plain socket: garbage, a truncated header, a
    // well-formed header under an unknown key, a full-size datagram of zeros, a packet of
    // the previous version.
    let target = addr(ports[1]);
    let before = nodes[1].as_ref().unwrap().counters();
    let table = nodes[1].as_ref().unwrap().table();
    let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    raw.send_to(b"hello there, gossip", target).await.unwrap();
    raw.send_to(b"SHG2\x00\x00", target).await.unwrap();
    let mut unknown_key = b"SHG2\x00\x00\x00\x63".to_vec();
    unknown_key.extend_from_slice(&[0u8; 64]);
    raw.send_to(&unknown_key, target).await.unwrap();
    raw.send_to(&vec![0u8; 65_507], target).await.unwrap();
    let mut old = b"SHG1\x00\x00\x00\x01".to_vec();
    old.extend_from_slice(&[0u8; 64]);
    raw.send_to(&old, target).await.unwrap();
    let deadline = Instant::now() + LIMIT;
    loop {
        let c = nodes[1].as_ref().unwrap().counters();
        if c.malformed - before.malformed == 3
            && c.unknown_key - before.unknown_key == 1
            && c.old_version - before.old_version == 1
        {
            break;
        }
        assert!(Instant::now() < deadline, "counters: {c:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*nodes[1].as_ref().unwrap().table(), *table);

    // A node with the wrong key: its packets fail authentication, it never gets in.
    let outsider_ring = Keyring::new(ClusterKey::new(1, [0x99; 32]));
    let outsider_identity = Arc::new(LocalIdentity::generate().unwrap());
    let mut outsider_trust = trust.clone();
    outsider_trust.insert("outsider", trusted(n, &ports, &outsider_identity));
    let mut oc = config(n, &ports, outsider_ring, outsider_identity, &outsider_trust);
    oc.node_id = "outsider".into();
    let outsider = Gossip::start(oc).await.unwrap();
    let deadline = Instant::now() + LIMIT;
    while nodes
        .iter()
        .flatten()
        .map(|g| g.counters().auth_failed)
        .sum::<u64>()
        == 0
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for g in nodes.iter().flatten() {
        assert!(!g.table().contains_node("outsider"));
    }
    outsider.shutdown().await;

    // Node 4 crashes: gone from every table within 5 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    nodes[4].take().unwrap().kill();
    let took = wait_all(&nodes, |_, t| !t.contains_node(&node_id(4))).await;
    println!("crashed node withdrawn everywhere after {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        nodes[0].as_ref().unwrap().table().len() == n,
        "n-1 nodes, node 3 has 2"
    );

    // It comes back with a new generation and key, which the others are told of (as the
    // managers would): everyone converges again.
    let identity = Arc::new(LocalIdentity::generate().unwrap());
    trust.insert(node_id(4), trusted(4, &ports, &identity));
    let g = Gossip::start(config(4, &ports, test_key(), identity, &trust))
        .await
        .unwrap();
    g.publish("e0", &endpoint(4, 0)).await.unwrap();
    for other in nodes.iter().flatten() {
        other.set_trust(trust.clone());
    }
    nodes[4] = Some(g);
    let took = wait_all(&nodes, |_, t| t.len() == n + 1 && t.nodes().len() == n).await;
    println!("restarted node back everywhere after {took:?}");

    for g in nodes.into_iter().flatten() {
        g.shutdown().await;
    }
}

#[tokio::test]
async fn port_in_use_is_a_clear_error() {
    let ports = free_ports(1);
    let _held = std::net::UdpSocket::bind(addr(ports[0])).unwrap();
    let identity = Arc::new(LocalIdentity::generate().unwrap());
    let mut trust = TrustSet::new();
    trust.insert(node_id(0), trusted(0, &ports, &identity));
    let err = Gossip::start(config(0, &ports, test_key(), identity, &trust))
        .await
        .err()
        .expect("the port is taken");
    assert!(
        err.to_string().contains("binding the gossip socket"),
        "{err}"
    );
}
