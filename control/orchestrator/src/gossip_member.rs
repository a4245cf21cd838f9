//! The node's gossip member, run by the executor on every node of a cluster.
//!
//! It starts once the store (as fetched over mutual TLS) holds a gossip key, this
//! node's data-path address and this run's signing key: the member makes an Ed25519 key
//! for each run ([`LocalIdentity`], memory only), the executor registers its public half
//! with the managers ([`Member::registration_due`]), and gossip starts when the fetched
//! state shows it. It listens on the agent's `--gossip-listen` address, advertises
//! `<data-path address>:<gossip port>`, joins through the managers' data-path addresses
//! on the same port, and seals with the store's keys (the first one primary). Each
//! executor pass it follows the keys (rotation), the members' signing keys (joins,
//! restarts, removals: [`trust_set`]) and the networks' subnets, and publishes exactly
//! this node's running task containers' endpoints; every other node's entries reach
//! [`crate::node_state::compute_with`] through [`Member::settled_table`] (once the table
//! has caught up with the store after gossip started).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use serde::Serialize;
use shoal_cluster::store::{ClusterState, GossipIdentity, GossipKey, Role, Task};
use shoal_dataplane::overlay::state::Mac;
use shoal_gossip::{
    ClusterKey, CounterSnapshot, Endpoint, EndpointTable, Gossip, GossipConfig, Keyring,
    LocalIdentity, PublicKey, TrustSet, TrustedNode,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// A failed start is tried again after this long.
const RETRY_START: Duration = Duration::from_secs(5);
/// Longest time a member that just started waits to agree with the store before its
/// table counts anyway (a few times gossip's detection bound of about 3 s).
const CATCH_UP: Duration = Duration::from_secs(10);
/// A registration the store does not show yet is sent again after this long.
const REGISTER_AGAIN: Duration = Duration::from_secs(2);

/// What this node gossips about one of its tasks: its health and slot as the executor
/// sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningTask {
    pub healthy: bool,
}

struct Running {
    gossip: Gossip,
    started: Instant,
    /// The table has agreed with the store once (or [`CATCH_UP`] has passed).
    caught_up: bool,
    advertise: SocketAddr,
    keys: Vec<GossipKey>,
    subnets: BTreeMap<String, IpNet>,
    published: BTreeMap<String, Endpoint>,
}

/// This run's signing key, for one gossip address.
struct Signing {
    identity: Arc<LocalIdentity>,
    /// What the store must show for this node before gossip starts.
    registration: GossipIdentity,
    /// When the executor last sent it to the managers.
    sent_at: Option<Instant>,
    /// The store shows it.
    registered: bool,
}

/// The node's gossip member (none until the store allows one).
pub struct Member {
    listen: Option<SocketAddr>,
    running: Option<Running>,
    signing: Option<Signing>,
    failed_at: Option<Instant>,
    status_file: Option<PathBuf>,
    /// The node's WireGuard public key, registered with each run's gossip key, and
    /// again whenever it changes (a rotation).
    wireguard: Option<watch::Receiver<String>>,
    /// Where each run's verdicts on which members this node reaches go.
    reach: Option<shoal_gossip::ReachSender>,
}

/// What `<data_dir>/gossip.json` shows: the member's addresses, keys (IDs only), the
/// nodes it sees live, its table's size and its counters (dropped packets and records).
#[derive(Debug, Serialize)]
pub struct GossipStatus {
    pub node_id: String,
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
    pub key_ids: Vec<u32>,
    pub primary_key: u32,
    /// This run's gossip generation and the public half of its signing key.
    pub generation: u64,
    pub signing_key: String,
    /// Members whose signed gossip is taken (this node included).
    pub trusted_nodes: usize,
    pub live_nodes: Vec<String>,
    /// Members this node's own probes do not reach now (their backends drain here).
    pub unreachable: Vec<String>,
    pub published: usize,
    pub table_entries: usize,
    pub counters: CounterSnapshot,
}

impl Member {
    /// `listen`: where gossip listens (its port is every node's gossip port); None: the
    /// node runs without gossip and its declared state comes from the store alone.
    pub fn new(listen: Option<SocketAddr>) -> Member {
        Member {
            listen,
            running: None,
            signing: None,
            failed_at: None,
            status_file: None,
            wireguard: None,
            reach: None,
        }
    }

    /// Publishes on `reach` which members this node's own probes do not reach
    /// ([`shoal_gossip::reach`]), run after run.
    pub fn with_reachability(mut self, reach: Option<shoal_gossip::ReachSender>) -> Member {
        self.reach = reach;
        self
    }

    /// Writes the member's status ([`GossipStatus`]) to `path` after each pass.
    pub fn with_status_file(mut self, path: Option<PathBuf>) -> Member {
        self.status_file = path;
        self
    }

    /// Registers `key` (the node's WireGuard public key, 64 hex digits, as it changes)
    /// with the managers along with each run's gossip key, and again on each change.
    pub fn with_wireguard_key(mut self, key: Option<watch::Receiver<String>>) -> Member {
        self.wireguard = key;
        self
    }

    /// The current table of every live node's endpoints; None while gossip is not
    /// running.
    pub fn table(&self) -> Option<Arc<EndpointTable>> {
        self.running.as_ref().map(|r| r.gossip.table())
    }

    /// The table node `me`'s declared state follows: None while gossip is not running,
    /// and, once it started, until the table has caught up (it says what the store says
    /// runs, or [`CATCH_UP`] has passed); until then the store alone counts. A member
    /// that just started has heard from nobody: its empty table would withdraw every
    /// other node's endpoints and backends until the first gossip rounds (a restarted
    /// agent would cut the traffic to other nodes for that moment).
    pub fn settled_table(&mut self, state: &ClusterState, me: &str) -> Option<Arc<EndpointTable>> {
        let r = self.running.as_mut()?;
        let table = r.gossip.table();
        if !r.caught_up {
            let agrees = crate::node_state::compute_with(state, me, Some(&table))
                == crate::node_state::compute(state, me);
            if !agrees && r.started.elapsed() < CATCH_UP {
                return None;
            }
            info!(after = ?r.started.elapsed(), agrees, "gossip caught up: its table counts");
            r.caught_up = true;
        }
        Some(table)
    }

    /// Changes of the table; None while gossip is not running.
    pub fn watch(&self) -> Option<watch::Receiver<Arc<EndpointTable>>> {
        self.running.as_ref().map(|r| r.gossip.watch())
    }

    pub fn gossip(&self) -> Option<&Gossip> {
        self.running.as_ref().map(|r| &r.gossip)
    }

    /// This run's signing key for the managers, when the store does not show it yet and
    /// it was not sent in the last [`REGISTER_AGAIN`]: the executor sends it
    /// (`NodeClient::register_gossip`). Marked as sent.
    pub fn registration_due(&mut self) -> Option<GossipIdentity> {
        let s = self.signing.as_mut()?;
        if s.registered || s.sent_at.is_some_and(|at| at.elapsed() < REGISTER_AGAIN) {
            return None;
        }
        s.sent_at = Some(Instant::now());
        Some(s.registration.clone())
    }

    /// Starts, follows or restarts gossip to match `state`, and publishes this node's
    /// endpoints for `tasks` (task ID -> what the executor sees of its container).
    pub async fn sync(
        &mut self,
        state: &ClusterState,
        me: &str,
        tasks: &HashMap<String, RunningTask>,
    ) {
        let Some(listen) = self.listen else {
            return;
        };
        let Some(vtep) = data_path_ip(state, me) else {
            return;
        };
        let ring = match keyring(&state.gossip_keys) {
            Ok(Some(k)) => k,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "the store's gossip keys are unusable; gossip stays as it is");
                return;
            }
        };
        let advertise = SocketAddr::new(vtep, listen.port());
        if self
            .running
            .as_ref()
            .is_some_and(|r| r.advertise != advertise)
        {
            if let Some(r) = self.running.take() {
                info!(old = %r.advertise, new = %advertise, "this node's data-path address changed: gossip restarts");
                r.gossip.shutdown().await;
            }
        }
        // One signing key per run of gossip at one address; the store must show it before
        // gossip starts (no peer would take this node's records otherwise).
        if self
            .signing
            .as_ref()
            .is_none_or(|s| s.registration.addr != advertise)
        {
            match LocalIdentity::generate() {
                Ok(identity) => {
                    self.signing = Some(Signing {
                        registration: GossipIdentity {
                            key: identity.public_key().to_hex(),
                            generation: identity.generation(),
                            addr: advertise,
                            wireguard: self.wireguard.as_ref().map(|k| k.borrow().clone()),
                        },
                        identity: Arc::new(identity),
                        sent_at: None,
                        registered: false,
                    });
                }
                Err(e) => {
                    warn!(error = %e, "no gossip signing key; gossip waits");
                    return;
                }
            }
        }
        let Some(signing) = self.signing.as_mut() else {
            return;
        };
        // A new WireGuard key (rotated): registered with this run's gossip key, which
        // stays (gossip goes on); the store shows it once the managers took it.
        let wireguard = self.wireguard.as_ref().map(|k| k.borrow().clone());
        if signing.registration.wireguard != wireguard {
            info!(key = ?wireguard, "the node's WireGuard key changed: registering it");
            signing.registration.wireguard = wireguard;
            signing.sent_at = None;
        }
        signing.registered =
            state.nodes.get(me).and_then(|n| n.gossip.as_deref()) == Some(&signing.registration);
        if !signing.registered && self.running.is_none() {
            return;
        }
        let identity = signing.identity.clone();
        let trust = trust_set(state);
        let subnets = subnets(state);
        if self.running.is_none() {
            if self.failed_at.is_some_and(|at| at.elapsed() < RETRY_START) {
                return;
            }
            let cluster_id = state
                .cluster
                .as_ref()
                .map(|c| c.id.clone())
                .unwrap_or_default();
            let mut config = GossipConfig::new(
                me,
                cluster_id,
                advertise,
                vtep,
                ring.clone(),
                identity.clone(),
            );
            config.trust = trust.clone();
            config.listen = listen;
            config.seeds = seeds(state, listen.port());
            config.subnets = subnets.clone();
            config.reach = self.reach.clone();
            match Gossip::start(config).await {
                Ok(gossip) => {
                    info!(%listen, %advertise, seeds = ?seeds(state, listen.port()), "gossip started");
                    self.failed_at = None;
                    self.running = Some(Running {
                        gossip,
                        started: Instant::now(),
                        caught_up: false,
                        advertise,
                        keys: state.gossip_keys.clone(),
                        subnets: subnets.clone(),
                        published: BTreeMap::new(),
                    });
                }
                Err(e) => {
                    warn!(error = %e, %listen, "gossip could not start; retrying");
                    self.failed_at = Some(Instant::now());
                    return;
                }
            }
        }
        let Some(r) = self.running.as_mut() else {
            return;
        };
        if r.keys != state.gossip_keys {
            info!(keys = ?ring.ids(), primary = ring.primary().id, "gossip keys changed");
            r.gossip.set_keyring(ring);
            r.keys = state.gossip_keys.clone();
        }
        if r.subnets != subnets {
            r.gossip.set_subnets(subnets.clone());
            r.subnets = subnets;
        }
        if *r.gossip.trust() != trust {
            info!(members = trust.len(), "gossip members' keys changed");
            r.gossip.set_trust(trust);
        }
        let own = own_endpoints(state, me, vtep, tasks);
        if own != r.published {
            match r.gossip.set_endpoints(&own).await {
                Ok(()) => r.published = own,
                Err(e) => warn!(error = %e, "this node's endpoints were not published"),
            }
        }
        if let Some(path) = &self.status_file {
            let ring = r.gossip.keyring();
            let status = GossipStatus {
                node_id: me.to_owned(),
                listen,
                advertise: r.advertise,
                key_ids: ring.ids(),
                primary_key: ring.primary().id,
                generation: r.gossip.generation(),
                signing_key: identity.public_key().to_hex(),
                trusted_nodes: r.gossip.trust().len(),
                live_nodes: r.gossip.live_nodes().await,
                unreachable: r.gossip.unreachable().keys().cloned().collect(),
                published: r.published.len(),
                table_entries: r.gossip.table().len(),
                counters: r.gossip.counters(),
            };
            if let Err(e) = crate::node_state::write_if_changed(path, &status) {
                debug!(error = %e, path = %path.display(), "writing the gossip status");
            }
        }
    }

    /// The member's view for the node's report; None while gossip is not running.
    pub async fn report(&self) -> Option<crate::node_report::GossipReport> {
        let r = self.running.as_ref()?;
        Some(crate::node_report::GossipReport {
            live_members: r.gossip.live_nodes().await.len(),
            table_entries: r.gossip.table().len(),
            counters: r.gossip.counters(),
        })
    }

    /// Stops gossiping (peers withdraw this node after their detection bound). A later
    /// start makes a new key.
    pub async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.gossip.shutdown().await;
        }
        self.signing = None;
    }
}

/// The members whose gossip this node takes: every node of `state` with a registered
/// signing key that fits it (at its data-path address). A node removed from the store
/// leaves it, and every node's table with it.
pub fn trust_set(state: &ClusterState) -> TrustSet {
    let mut trust = TrustSet::new();
    for node in state.nodes.values() {
        let Some(g) = &node.gossip else {
            continue;
        };
        if let Some(why) = g.fault(node) {
            debug!(node = %node.id, %why, "a gossip key that does not fit its node; left out");
            continue;
        }
        match PublicKey::parse_hex(&g.key) {
            Ok(key) => trust.insert(
                node.id.clone(),
                TrustedNode {
                    generation: g.generation,
                    addr: g.addr,
                    key,
                },
            ),
            Err(e) => debug!(node = %node.id, error = %e, "unreadable gossip key; left out"),
        }
    }
    trust
}

/// The store's keys as a ring (first: primary); None when there is none yet.
pub fn keyring(keys: &[GossipKey]) -> Result<Option<Keyring>, shoal_gossip::GossipError> {
    let mut parsed = keys
        .iter()
        .map(|k| ClusterKey::parse(&format!("{}:{}", k.id, k.secret)));
    let Some(primary) = parsed.next().transpose()? else {
        return Ok(None);
    };
    let others = parsed.collect::<Result<Vec<_>, _>>()?;
    Keyring::with_others(primary, others).map(Some)
}

/// A node's data-path address: `data_path_addr`, else its advertise address's IP.
pub fn data_path_ip(state: &ClusterState, node_id: &str) -> Option<IpAddr> {
    state.nodes.get(node_id)?.data_path_ip()
}

/// The managers' gossip addresses: their data-path addresses, port `port`.
pub fn seeds(state: &ClusterState, port: u16) -> Vec<SocketAddr> {
    state
        .nodes
        .values()
        .filter(|n| n.role == Role::Manager)
        .filter_map(|n| data_path_ip(state, &n.id))
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Every network with a subnet, by name: records outside their subnet are refused.
pub fn subnets(state: &ClusterState) -> BTreeMap<String, IpNet> {
    state
        .networks
        .values()
        .filter_map(|n| Some((n.name.clone(), n.subnet?.into())))
        .collect()
}

/// The endpoint ID of a task on a network: `<task ID>/<network name>`.
pub fn endpoint_id(task: &str, network: &str) -> String {
    format!("{task}/{network}")
}

/// This node's endpoints: every attachment of each task in `tasks` the store places
/// here, and every container of this node the store has attached to a network (the
/// node declares only running ones), with the MAC the overlay gives it (derived from
/// the IP). An attached container's endpoint carries its attachment's ID as `task`.
pub fn own_endpoints(
    state: &ClusterState,
    me: &str,
    vtep: IpAddr,
    tasks: &HashMap<String, RunningTask>,
) -> BTreeMap<String, Endpoint> {
    let mut out = BTreeMap::new();
    for (id, running) in tasks {
        let Some(t) = state.tasks.get(id) else {
            continue;
        };
        if t.node_id.as_deref() != Some(me) {
            continue;
        }
        let service = state
            .services
            .get(&t.service_id)
            .map(|s| s.spec.name.clone());
        for (network, ip) in attachments(state, t) {
            out.insert(
                endpoint_id(&t.id, &network),
                Endpoint {
                    network,
                    ip: ip.into(),
                    mac: Mac::from_ip(ip).to_string(),
                    vtep,
                    service: service.clone(),
                    task: Some(t.id.clone()),
                    slot: (t.slot > 0).then_some(t.slot),
                    healthy: running.healthy,
                    aliases: Vec::new(),
                },
            );
        }
    }
    for a in state.attachments.values().filter(|a| a.node_id == me) {
        let (Some(addr), Some(network)) = (a.addr, state.networks.get(&a.network_id)) else {
            continue;
        };
        let ip = addr.addr();
        out.insert(
            endpoint_id(&a.id, &network.name),
            Endpoint {
                network: network.name.clone(),
                ip: ip.into(),
                mac: Mac::from_ip(ip).to_string(),
                vtep,
                service: None,
                task: Some(a.id.clone()),
                slot: None,
                healthy: true,
                aliases: Vec::new(),
            },
        );
    }
    out
}

fn attachments(state: &ClusterState, t: &Task) -> Vec<(String, std::net::Ipv4Addr)> {
    t.networks
        .iter()
        .filter_map(|a| {
            Some((
                state.networks.get(&a.network_id)?.name.clone(),
                a.addr.addr(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32, byte: &str) -> GossipKey {
        GossipKey {
            id,
            secret: byte.repeat(32),
            created_ms: 0,
        }
    }

    #[test]
    fn members_are_trusted_as_they_registered_and_leave_when_removed() {
        use shoal_cluster::store::{Availability, Command, Node, NodeStatus};
        let node = |id: &str, ip: &str| Node {
            id: id.into(),
            hostname: id.into(),
            role: Role::Worker,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            advertise_addr: format!("{ip}:2377"),
            data_path_addr: None,
            engine_version: String::new(),
            resources: Default::default(),
            labels: Default::default(),
            raft_id: None,
            gossip: None,
            version: 0,
            tls: None,
            wireguard_rotation: 0,
        };
        let mut s = ClusterState::default();
        for (id, ip) in [("n1", "10.0.0.1"), ("n2", "10.0.0.2"), ("n3", "10.0.0.3")] {
            s.apply(&Command::UpsertNode { node: node(id, ip) });
        }
        let key = LocalIdentity::generate().unwrap().public_key();
        let register = |s: &mut ClusterState, id: &str, ip: &str| {
            let r = s.apply(&Command::SetNodeGossip {
                id: id.into(),
                gossip: GossipIdentity {
                    key: key.to_hex(),
                    generation: 9,
                    addr: format!("{ip}:7946").parse().unwrap(),
                    wireguard: None,
                },
            });
            assert!(r.into_result().is_ok());
        };
        register(&mut s, "n1", "10.0.0.1");
        register(&mut s, "n2", "10.0.0.2");
        // n3 never registered; n2 moved to another address since it registered.
        let mut moved = s.nodes["n2"].clone();
        moved.data_path_addr = Some("10.0.1.2".parse().unwrap());
        s.apply(&Command::UpsertNode { node: moved });
        let trust = trust_set(&s);
        assert_eq!(trust.len(), 1, "{trust:?}");
        let n1 = trust.get("n1").unwrap();
        assert_eq!((n1.generation, n1.key), (9, key));
        assert_eq!(n1.addr, "10.0.0.1:7946".parse().unwrap());
        // Removed: gone from the trust set.
        s.apply(&Command::RemoveNode { id: "n1".into() });
        assert!(trust_set(&s).is_empty());
    }

    #[test]
    fn store_keys_make_a_ring_primary_first() {
        assert_eq!(keyring(&[]).unwrap(), None);
        let ring = keyring(&[key(2, "bb"), key(1, "aa")]).unwrap().unwrap();
        assert_eq!(ring.primary().id, 2);
        assert_eq!(ring.ids(), vec![2, 1]);
        assert!(keyring(&[key(1, "zz")]).is_err());
        assert!(keyring(&[key(1, "aa"), key(1, "bb")]).is_err());
    }
}
