//! In-process clusters on the [`MemoryNet`], for tests and `cargo xtask bench gossip`:
//! node `i` gossips at `10.0.<i/250>.<i%250+1>:7946`, has VTEP `192.168.<i/250>.<i%250+1>`
//! and endpoints in network `ov` (`10.128.0.0/9`). The first three nodes are the seeds.
//! Each node signs with a key of its own; the cluster keeps the trust set the managers
//! would hand out (every running node's key and generation) and gives it to every node.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use tokio::time::Instant;

use crate::{
    ClusterKey, Endpoint, EndpointTable, Gossip, GossipConfig, GossipError, Keyring, LocalIdentity,
    MemoryNet, Timing, TrustSet, TrustedNode, Wire,
};

pub const NETWORK: &str = "ov";
pub const SEEDS: usize = 3;

pub fn gossip_addr(i: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250 + 1) as u8)),
        crate::DEFAULT_PORT,
    )
}

pub fn vtep(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        192,
        168,
        (i / 250) as u8,
        (i % 250 + 1) as u8,
    ))
}

pub fn node_id(i: usize) -> String {
    format!("n{i:04}")
}

pub fn subnets() -> BTreeMap<String, IpNet> {
    [(NETWORK.to_string(), "10.128.0.0/9".parse().expect("subnet"))].into()
}

/// The `k`-th endpoint of node `i`.
pub fn endpoint(i: usize, k: usize) -> Endpoint {
    let n = (i * 64 + k + 2) as u32;
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + n);
    let o = ip.octets();
    Endpoint {
        network: NETWORK.into(),
        ip: IpAddr::V4(ip),
        mac: format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]),
        vtep: vtep(i),
        service: Some(format!("svc{}", k % 4)),
        task: Some(format!("svc{}.{}.{}", k % 4, i, k)),
        slot: Some(i as u64),
        healthy: true,
        aliases: Vec::new(),
    }
}

pub fn test_key() -> Keyring {
    Keyring::new(ClusterKey::new(1, [0x5a; 32]))
}

/// What the trust set says of node `i` signing with `identity`.
pub fn trusted(i: usize, identity: &LocalIdentity) -> TrustedNode {
    TrustedNode {
        generation: identity.generation(),
        addr: gossip_addr(i),
        key: identity.public_key(),
    }
}

/// Configuration of node `i` on `net`, signing with `identity`, taking gossip from
/// `trust` (which must name it).
pub fn config_with(
    i: usize,
    net: &MemoryNet,
    keyring: Keyring,
    timing: Timing,
    identity: Arc<LocalIdentity>,
    trust: TrustSet,
) -> GossipConfig {
    let mut c = GossipConfig::new(
        node_id(i),
        "sim-cluster",
        gossip_addr(i),
        vtep(i),
        keyring,
        identity,
    );
    c.trust = trust;
    c.listen = gossip_addr(i);
    c.seeds = (0..SEEDS).map(gossip_addr).collect();
    c.subnets = subnets();
    c.timing = timing;
    c.wire = Wire::Memory(net.clone());
    c
}

/// Configuration of node `i` on `net` with a fresh key, trusting only itself.
pub fn config(
    i: usize,
    net: &MemoryNet,
    keyring: Keyring,
    timing: Timing,
) -> Result<GossipConfig, GossipError> {
    let identity = Arc::new(LocalIdentity::generate()?);
    let mut trust = TrustSet::new();
    trust.insert(node_id(i), trusted(i, &identity));
    Ok(config_with(i, net, keyring, timing, identity, trust))
}

/// A cluster of in-process nodes. Killed nodes leave a `None`.
pub struct SimCluster {
    pub net: MemoryNet,
    pub nodes: Vec<Option<Gossip>>,
    pub timing: Timing,
    /// A wall-clock instant after which waits give up whatever the protocol time (for
    /// benchmarks in paused time, where protocol time can crawl).
    pub give_up_at: Option<std::time::Instant>,
    /// What the managers would hand out: every node's key and generation.
    pub trust: TrustSet,
    identities: Vec<Arc<LocalIdentity>>,
}

impl SimCluster {
    /// Starts `n` nodes, seeds first.
    pub async fn start(n: usize, timing: Timing) -> Result<Self, GossipError> {
        let net = MemoryNet::new();
        let mut identities = Vec::with_capacity(n);
        let mut trust = TrustSet::new();
        for i in 0..n {
            let identity = Arc::new(LocalIdentity::generate()?);
            trust.insert(node_id(i), trusted(i, &identity));
            identities.push(identity);
        }
        let mut nodes = Vec::with_capacity(n);
        for (i, identity) in identities.iter().enumerate() {
            let c = config_with(
                i,
                &net,
                test_key(),
                timing.clone(),
                identity.clone(),
                trust.clone(),
            );
            nodes.push(Some(Gossip::start(c).await?));
        }
        Ok(SimCluster {
            net,
            nodes,
            timing,
            give_up_at: None,
            trust,
            identities,
        })
    }

    /// The key node `i` signs with now.
    pub fn identity(&self, i: usize) -> &Arc<LocalIdentity> {
        &self.identities[i]
    }

    pub fn node(&self, i: usize) -> &Gossip {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub fn live(&self) -> impl Iterator<Item = (usize, &Gossip)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.as_ref().map(|g| (i, g)))
    }

    /// Kills node `i` as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(g) = self.nodes[i].take() {
            g.kill();
        }
    }

    /// Restarts node `i` with its old configuration: a new generation and key, which
    /// every node is told of (as the managers would).
    pub async fn restart(&mut self, i: usize) -> Result<(), GossipError> {
        self.kill(i);
        let identity = Arc::new(LocalIdentity::generate()?);
        self.trust.insert(node_id(i), trusted(i, &identity));
        self.identities[i] = identity.clone();
        let c = config_with(
            i,
            &self.net,
            test_key(),
            self.timing.clone(),
            identity,
            self.trust.clone(),
        );
        self.nodes[i] = Some(Gossip::start(c).await?);
        for (_, g) in self.live() {
            g.set_trust(self.trust.clone());
        }
        Ok(())
    }

    /// Waits until `pred` holds on every running node's table (checked every 10 ms); the
    /// time it took, or the nodes where it still fails after `limit` (or `give_up_at`).
    pub async fn wait_all(
        &self,
        limit: Duration,
        pred: impl Fn(usize, &EndpointTable) -> bool,
    ) -> Result<Duration, Vec<usize>> {
        let start = Instant::now();
        loop {
            let failing: Vec<usize> = self
                .live()
                .filter(|(i, g)| !pred(*i, &g.table()))
                .map(|(i, _)| i)
                .collect();
            if failing.is_empty() {
                return Ok(start.elapsed());
            }
            let given_up = self
                .give_up_at
                .is_some_and(|t| std::time::Instant::now() > t);
            if start.elapsed() > limit || given_up {
                return Err(failing);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every running node sees every running node live with its endpoints
    /// (`per_node` each, as published by [`endpoint`]).
    pub async fn wait_converged(
        &self,
        per_node: usize,
        limit: Duration,
    ) -> Result<Duration, Vec<usize>> {
        let running: Vec<usize> = self.live().map(|(i, _)| i).collect();
        self.wait_all(limit, |_, t| {
            t.nodes().len() == running.len()
                && t.len() == running.len() * per_node
                && running.iter().all(|&j| {
                    (0..per_node)
                        .all(|k| t.get(&node_id(j), &format!("e{k}")) == Some(&endpoint(j, k)))
                })
        })
        .await
    }

    /// Publishes `per_node` endpoints on every running node.
    pub async fn publish_all(&self, per_node: usize) -> Result<(), GossipError> {
        for (i, g) in self.live() {
            for k in 0..per_node {
                g.publish(&format!("e{k}"), &endpoint(i, k)).await?;
            }
        }
        Ok(())
    }

    pub async fn shutdown(self) {
        for g in self.nodes.into_iter().flatten() {
            g.shutdown().await;
        }
    }
}
