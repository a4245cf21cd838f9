//! shoal's gossip layer: who runs which endpoint, spread peer to peer.
//!
//! Every node runs one [`Gossip`]: it joins through the managers' addresses (seeds),
//! publishes only its own endpoints (network, IP, MAC, VTEP, service, task, slot,
//! health, aliases) as versioned keys in its chitchat state, and derives from all live
//! nodes' states an [`EndpointTable`], watched through [`Gossip::watch`]. The agent
//! turns that table into remote overlay endpoints, LB backends and DNS records.
//!
//! - Failure detection is chitchat's phi-accrual detector: a node that stops gossiping
//!   leaves every table once its silence exceeds `phi_threshold` times its mean
//!   heartbeat interval ([`Timing`]); shorter silences do nothing.
//! - Every datagram is sealed with the cluster key ([`keys`], [`seal`]); outsiders',
//!   replayed, stale and retired-key packets are dropped and counted ([`Counters`]).
//! - Records are checked before they enter the table ([`endpoint`]).
//!
//! UDP only: chitchat reconciles whole states in UDP datagrams (scuttlebutt deltas), so
//! nothing needs memberlist's TCP push/pull on 7946; firewalls need UDP 7946 only.
mod admit;
pub mod endpoint;
pub mod fuzzing;
pub mod keys;
pub mod seal;
pub mod sim;
mod transport;
pub mod wire;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use ipnet::IpNet;
use serde::Serialize;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    endpoint::{check, check_id, Deriver, EP_PREFIX, VTEP_KEY},
    transport::SecureTransport,
};
pub use crate::{
    endpoint::{Change, Endpoint, EndpointTable, TableEntry},
    keys::{ClusterKey, Keyring},
    wire::{MemoryNet, Wire},
};

/// Swarm's gossip port, shoal's default.
pub const DEFAULT_PORT: u16 = 7946;

#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("bad cluster key: {0}")]
    BadKey(String),
    #[error("bad endpoint: {0}")]
    BadEndpoint(String),
    #[error("bad gossip configuration: {0}")]
    BadConfig(String),
    #[error("no randomness: {0}")]
    Random(String),
    #[error("gossip could not start: {0}")]
    Start(String),
}

/// Gossip timings. The defaults: gossip every 200 ms (Swarm's memberlist interval); a
/// peer is dead once its silence exceeds `phi_threshold` (16) times the mean interval
/// between the heartbeats heard from it (heartbeats reach a node through several peers,
/// so that mean is below the gossip interval). Measured at 100 nodes: a crashed node
/// leaves every table after 3.0-3.2 s; a node cut off for 1.5 s is dropped nowhere.
#[derive(Clone, Debug)]
pub struct Timing {
    pub gossip_interval: Duration,
    pub phi_threshold: f64,
    /// Heartbeat intervals remembered per peer for the mean.
    pub sampling_window: usize,
    /// Intervals longer than this (a blip) are not averaged in.
    pub max_interval: Duration,
    /// How long a dead node's state is kept, so that it comes back whole after a
    /// partition.
    pub dead_node_grace: Duration,
    /// Withdrawn endpoints' tombstones are kept this long.
    pub tombstone_grace: Duration,
    /// Packets sent further from now than this (either way) are dropped.
    pub max_packet_age: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            gossip_interval: Duration::from_millis(200),
            phi_threshold: 16.0,
            sampling_window: 100,
            max_interval: Duration::from_secs(2),
            dead_node_grace: Duration::from_secs(3600),
            tombstone_grace: Duration::from_secs(3600),
            max_packet_age: Duration::from_secs(60),
        }
    }
}

/// What a node needs to join.
#[derive(Clone)]
pub struct GossipConfig {
    /// This node's ID in the cluster (the ID in its certificate).
    pub node_id: String,
    pub cluster_id: String,
    /// Where to listen (default `0.0.0.0:7946`).
    pub listen: SocketAddr,
    /// The address peers reach this node at (its underlay address, port 7946).
    pub advertise: SocketAddr,
    /// The managers' gossip addresses.
    pub seeds: Vec<SocketAddr>,
    /// This node's VTEP: every endpoint it publishes carries it.
    pub vtep: IpAddr,
    pub keyring: Keyring,
    /// Network name -> subnet: endpoints outside their network's subnet are refused.
    pub subnets: BTreeMap<String, IpNet>,
    pub timing: Timing,
    pub wire: Wire,
}

impl GossipConfig {
    /// A configuration with the defaults: listen on all addresses, port 7946, UDP.
    pub fn new(
        node_id: impl Into<String>,
        cluster_id: impl Into<String>,
        advertise: SocketAddr,
        vtep: IpAddr,
        keyring: Keyring,
    ) -> Self {
        GossipConfig {
            node_id: node_id.into(),
            cluster_id: cluster_id.into(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), advertise.port()),
            advertise,
            seeds: Vec::new(),
            vtep,
            keyring,
            subnets: BTreeMap::new(),
            timing: Timing::default(),
            wire: Wire::Udp,
        }
    }
}

/// Counters of everything dropped, readable at any time through [`Gossip::counters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    Sent,
    Received,
    Oversized,
    Malformed,
    UnknownKey,
    AuthFailed,
    Stale,
    Replayed,
    TooManySenders,
    BadMessage,
    SendTooBig,
    BadRecord,
    ForeignClaim,
    UnknownNetwork,
    OutsideSubnet,
    AddressConflict,
}

const COUNTERS: usize = Counter::AddressConflict as usize + 1;

#[derive(Default)]
pub struct Counters {
    values: [AtomicU64; COUNTERS],
}

/// A copy of the counters. Packets: `sent`/`received` (chitchat messages passed on);
/// dropped: `oversized`, `malformed` (garbage, truncated, not shoal's header), `unknown_key`
/// (a key ID not in the ring: retired or foreign), `auth_failed` (wrong key, wrong
/// cluster, tampered), `stale` (send time too far off), `replayed`, `too_many_senders`,
/// `bad_message` (authentic but not chitchat, or chitchat
/// could not handle it safely: see `admit`), `send_too_big` (not sent). Records left
/// out of the table: `bad_record`, `foreign_claim` (a VTEP not its publisher's),
/// `unknown_network`, `outside_subnet`, `address_conflict`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CounterSnapshot {
    pub sent: u64,
    pub received: u64,
    pub oversized: u64,
    pub malformed: u64,
    pub unknown_key: u64,
    pub auth_failed: u64,
    pub stale: u64,
    pub replayed: u64,
    pub too_many_senders: u64,
    pub bad_message: u64,
    pub send_too_big: u64,
    pub bad_record: u64,
    pub foreign_claim: u64,
    pub unknown_network: u64,
    pub outside_subnet: u64,
    pub address_conflict: u64,
}

impl CounterSnapshot {
    /// Packets dropped for any reason.
    pub fn packets_dropped(&self) -> u64 {
        self.oversized
            + self.malformed
            + self.unknown_key
            + self.auth_failed
            + self.stale
            + self.replayed
            + self.too_many_senders
            + self.bad_message
    }

    /// Records left out of the table for any reason.
    pub fn records_refused(&self) -> u64 {
        self.bad_record
            + self.foreign_claim
            + self.unknown_network
            + self.outside_subnet
            + self.address_conflict
    }
}

impl Counters {
    pub(crate) fn bump(&self, counter: Counter) -> u64 {
        self.values[counter as usize].fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        let v = |c: Counter| self.values[c as usize].load(Ordering::Relaxed);
        CounterSnapshot {
            sent: v(Counter::Sent),
            received: v(Counter::Received),
            oversized: v(Counter::Oversized),
            malformed: v(Counter::Malformed),
            unknown_key: v(Counter::UnknownKey),
            auth_failed: v(Counter::AuthFailed),
            stale: v(Counter::Stale),
            replayed: v(Counter::Replayed),
            too_many_senders: v(Counter::TooManySenders),
            bad_message: v(Counter::BadMessage),
            send_too_big: v(Counter::SendTooBig),
            bad_record: v(Counter::BadRecord),
            foreign_claim: v(Counter::ForeignClaim),
            unknown_network: v(Counter::UnknownNetwork),
            outside_subnet: v(Counter::OutsideSubnet),
            address_conflict: v(Counter::AddressConflict),
        }
    }
}

/// A running gossip member.
pub struct Gossip {
    handle: ChitchatHandle,
    node_id: String,
    vtep: IpAddr,
    keyring: Arc<RwLock<Keyring>>,
    counters: Arc<Counters>,
    subnets_tx: watch::Sender<Arc<BTreeMap<String, IpNet>>>,
    table_rx: watch::Receiver<Arc<EndpointTable>>,
    deriver: JoinHandle<()>,
}

impl Gossip {
    /// Binds the gossip socket, joins through the seeds and starts deriving the table.
    pub async fn start(config: GossipConfig) -> Result<Gossip, GossipError> {
        let bad = |why: String| GossipError::BadConfig(why);
        if config.node_id.is_empty() || config.node_id.len() > 128 {
            return Err(bad(format!("node ID {:?}", config.node_id)));
        }
        if config.cluster_id.is_empty() {
            return Err(bad("empty cluster ID".into()));
        }
        let t = &config.timing;
        if t.gossip_interval.is_zero()
            || t.phi_threshold.is_nan()
            || t.phi_threshold <= 0.0
            || t.sampling_window == 0
        {
            return Err(bad(format!("timing {t:?}")));
        }
        let keyring = Arc::new(RwLock::new(config.keyring.clone()));
        let counters = Arc::new(Counters::default());
        let transport = SecureTransport {
            wire: config.wire.clone(),
            cluster_id: config.cluster_id.clone(),
            keyring: keyring.clone(),
            counters: counters.clone(),
            max_age: t.max_packet_age,
        };
        // A restarted node is a new generation: peers drop the old one's state.
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(config.node_id.clone(), generation, config.advertise),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: t.gossip_interval,
            listen_addr: config.listen,
            seed_nodes: config
                .seeds
                .iter()
                .filter(|s| **s != config.advertise)
                .map(|s| s.to_string())
                .collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: t.phi_threshold,
                sampling_window_size: t.sampling_window,
                max_interval: t.max_interval,
                initial_interval: t.gossip_interval,
                dead_node_grace_period: t.dead_node_grace,
            },
            marked_for_deletion_grace_period: t.tombstone_grace,
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let handle = spawn_chitchat(
            chitchat_config,
            vec![(VTEP_KEY.to_string(), config.vtep.to_string())],
            &transport,
        )
        .await
        .map_err(|e| GossipError::Start(format!("{e:#}")))?;

        let (subnets_tx, mut subnets_rx) = watch::channel(Arc::new(config.subnets.clone()));
        let mut live_rx = handle.chitchat().lock().await.live_nodes_watcher();
        let (table_tx, table_rx) = watch::channel(Arc::new(EndpointTable::default()));
        let deriver_counters = counters.clone();
        let deriver = tokio::spawn(async move {
            let mut deriver = Deriver::default();
            loop {
                let subnets = subnets_rx.borrow_and_update().clone();
                // Derived under the watch's read lock: no copy of every node's state.
                let table =
                    deriver.derive(&live_rx.borrow_and_update(), &subnets, &deriver_counters);
                table_tx.send_if_modified(|current| {
                    if **current != table {
                        *current = Arc::new(table);
                        true
                    } else {
                        false
                    }
                });
                tokio::select! {
                    r = live_rx.changed() => if r.is_err() { return },
                    r = subnets_rx.changed() => {
                        if r.is_err() { return }
                        deriver.invalidate();
                    }
                }
            }
        });
        Ok(Gossip {
            handle,
            node_id: config.node_id,
            vtep: config.vtep,
            keyring,
            counters,
            subnets_tx,
            table_rx,
            deriver,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The socket address gossip listens on.
    pub fn advertise_addr(&self) -> SocketAddr {
        self.handle.chitchat_id().gossip_advertise_addr
    }

    fn check(&self, id: &str, ep: &Endpoint) -> Result<(), GossipError> {
        check_id(id)?;
        check(ep, Some(self.vtep), &self.subnets_tx.borrow())
            .map_err(|(_, why)| GossipError::BadEndpoint(format!("{id}: {why}")))
    }

    /// Publishes (or updates) one of this node's endpoints. Refused, with nothing
    /// changed, if the record would be refused by its receivers.
    pub async fn publish(&self, id: &str, ep: &Endpoint) -> Result<(), GossipError> {
        self.check(id, ep)?;
        let value = serde_json::to_string(ep).expect("an endpoint serializes");
        let key = format!("{EP_PREFIX}{id}");
        self.handle
            .with_chitchat(|c| c.self_node_state().set(&key, &value))
            .await;
        Ok(())
    }

    /// Withdraws one of this node's endpoints; false if it was not published.
    pub async fn withdraw(&self, id: &str) -> bool {
        let key = format!("{EP_PREFIX}{id}");
        self.handle
            .with_chitchat(|c| {
                let state = c.self_node_state();
                let present = state.get(&key).is_some();
                if present {
                    state.delete(&key);
                }
                present
            })
            .await
    }

    /// Makes this node's published endpoints exactly `endpoints` (ID -> record): the
    /// form the agent uses after each reconcile. Checked whole first: one bad record
    /// refuses the whole set and nothing changes.
    pub async fn set_endpoints(
        &self,
        endpoints: &BTreeMap<String, Endpoint>,
    ) -> Result<(), GossipError> {
        for (id, ep) in endpoints {
            self.check(id, ep)?;
        }
        let values: Vec<(String, String)> = endpoints
            .iter()
            .map(|(id, ep)| {
                (
                    format!("{EP_PREFIX}{id}"),
                    serde_json::to_string(ep).expect("an endpoint serializes"),
                )
            })
            .collect();
        self.handle
            .with_chitchat(|c| {
                let state = c.self_node_state();
                let stale: Vec<String> = state
                    .iter_prefix(EP_PREFIX)
                    .map(|(k, _)| k.to_string())
                    .filter(|k| !values.iter().any(|(key, _)| key == k))
                    .collect();
                for key in stale {
                    state.delete(&key);
                }
                for (key, value) in &values {
                    state.set(key, value);
                }
            })
            .await;
        Ok(())
    }

    /// Writes a key of this node's state as is, bypassing every check: only for tests of
    /// what receivers do with records a faulty or hostile node publishes.
    #[doc(hidden)]
    pub async fn set_raw_for_tests(&self, key: &str, value: &str) {
        self.handle
            .with_chitchat(|c| c.self_node_state().set(key, value))
            .await;
    }

    /// This node's published endpoints.
    pub async fn own_endpoints(&self) -> BTreeMap<String, Endpoint> {
        self.handle
            .with_chitchat(|c| {
                c.self_node_state()
                    .iter_prefix(EP_PREFIX)
                    .filter_map(|(k, v)| {
                        Some((
                            k[EP_PREFIX.len()..].to_string(),
                            serde_json::from_str(&v.value).ok()?,
                        ))
                    })
                    .collect()
            })
            .await
    }

    /// The current table.
    pub fn table(&self) -> Arc<EndpointTable> {
        self.table_rx.borrow().clone()
    }

    /// A receiver that sees every new table (`changed().await`, then `borrow()`; use
    /// [`EndpointTable::diff`] against the previous one for the changes).
    pub fn watch(&self) -> watch::Receiver<Arc<EndpointTable>> {
        self.table_rx.clone()
    }

    /// Replaces the network -> subnet table; every record is checked again.
    pub fn set_subnets(&self, subnets: BTreeMap<String, IpNet>) {
        self.subnets_tx.send_replace(Arc::new(subnets));
    }

    /// Replaces the key ring (rotation: see [`keys`]). Takes effect on the next packet.
    pub fn set_keyring(&self, keyring: Keyring) {
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = keyring;
    }

    pub fn keyring(&self) -> Keyring {
        self.keyring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    /// Nodes chitchat currently considers live (this one included).
    pub async fn live_nodes(&self) -> Vec<String> {
        self.handle
            .with_chitchat(|c| c.live_nodes().map(|id| id.node_id.to_string()).collect())
            .await
    }

    /// Leaves: stops gossiping (peers see the node die after the detection bound).
    pub async fn shutdown(self) {
        self.deriver.abort();
        let _ = self.handle.shutdown().await;
    }

    /// Stops at once, as a crash would (for tests and benchmarks).
    pub fn kill(self) {
        self.deriver.abort();
        self.handle.abort();
    }
}
