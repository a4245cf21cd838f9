//! The node's gossip member, run by the executor on every node of a cluster.
//!
//! It starts once the store (as fetched over mutual TLS) holds a gossip key and this
//! node's data-path address: it listens on the agent's `--gossip-listen` address,
//! advertises `<data-path address>:<gossip port>`, joins through the managers' data-path
//! addresses on the same port, and seals with the store's keys (the first one primary).
//! Each executor pass it follows the keys (rotation) and the networks' subnets, and
//! publishes exactly this node's running task containers' endpoints; every other node's
//! entries reach [`crate::node_state::compute_with`] through [`Member::settled_table`]
//! (once the table has caught up with the store after gossip started).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use serde::Serialize;
use shoal_cluster::store::{ClusterState, GossipKey, Role, Task};
use shoal_dataplane::overlay::state::Mac;
use shoal_gossip::CounterSnapshot;
use shoal_gossip::{ClusterKey, Endpoint, EndpointTable, Gossip, GossipConfig, Keyring};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// A failed start is tried again after this long.
const RETRY_START: Duration = Duration::from_secs(5);
/// Longest time a member that just started waits to agree with the store before its
/// table counts anyway (a few times gossip's detection bound of about 3 s).
const CATCH_UP: Duration = Duration::from_secs(10);

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

/// The node's gossip member (none until the store allows one).
pub struct Member {
    listen: Option<SocketAddr>,
    running: Option<Running>,
    failed_at: Option<Instant>,
    status_file: Option<PathBuf>,
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
    pub live_nodes: Vec<String>,
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
            failed_at: None,
            status_file: None,
        }
    }

    /// Writes the member's status ([`GossipStatus`]) to `path` after each pass.
    pub fn with_status_file(mut self, path: Option<PathBuf>) -> Member {
        self.status_file = path;
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
            let mut config = GossipConfig::new(me, cluster_id, advertise, vtep, ring.clone());
            config.listen = listen;
            config.seeds = seeds(state, listen.port());
            config.subnets = subnets.clone();
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
                live_nodes: r.gossip.live_nodes().await,
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

    /// Stops gossiping (peers withdraw this node after their detection bound).
    pub async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.gossip.shutdown().await;
        }
    }
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
/// here, with the MAC the overlay gives it (derived from the IP).
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
    fn store_keys_make_a_ring_primary_first() {
        assert_eq!(keyring(&[]).unwrap(), None);
        let ring = keyring(&[key(2, "bb"), key(1, "aa")]).unwrap().unwrap();
        assert_eq!(ring.primary().id, 2);
        assert_eq!(ring.ids(), vec![2, 1]);
        assert!(keyring(&[key(1, "zz")]).is_err());
        assert!(keyring(&[key(1, "aa"), key(1, "bb")]).is_err());
    }
}
