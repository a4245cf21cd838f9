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
//! - Every datagram is sealed with the cluster key for the node it goes to ([`keys`],
//!   [`seal`]); outsiders', replayed, misdirected, stale and retired-key packets are
//!   dropped and counted ([`Counters`]).
//! - Each node's state is one record signed with a key of its own, whose public half
//!   the managers hand out ([`identity`], [`record`]); what a packet says about a node
//!   that node did not sign is left out before chitchat hears it ([`screen`]).
//! - Records are checked before they enter the table ([`endpoint`]).
//!
//! UDP only: chitchat reconciles whole states in UDP datagrams (scuttlebutt deltas), so
//! nothing needs memberlist's TCP push/pull on 7946; firewalls need UDP 7946 only.
mod admit;
pub mod craft;
pub mod endpoint;
pub mod fuzzing;
pub mod identity;
mod intake;
pub mod keys;
pub mod reach;
pub mod record;
mod screen;
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
    time::Duration,
};

use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use ipnet::IpNet;
use serde::Serialize;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    endpoint::{check, check_id, Deriver},
    record::{RecordBody, RECORD_KEY},
    transport::SecureTransport,
};
pub use crate::{
    endpoint::{Change, Endpoint, EndpointTable, TableEntry},
    identity::{LocalIdentity, PublicKey, TrustSet, TrustedNode},
    keys::{ClusterKey, Keyring},
    reach::{ProbeTiming, ReachSender, Unanswered, Unreachable},
    record::MAX_RECORD_LEN,
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
    /// This node's signing key and the generation it signs for; the trust set must name
    /// it, at `advertise`.
    pub identity: Arc<LocalIdentity>,
    /// The members whose gossip is taken (this node included).
    pub trust: TrustSet,
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
    /// This node's probes of every member ([`reach`]).
    pub probes: ProbeTiming,
    /// Where this node's verdicts on which members it reaches go; None: a channel of
    /// the member's own ([`Gossip::unreachable`]).
    pub reach: Option<ReachSender>,
    pub wire: Wire,
}

impl GossipConfig {
    /// A configuration with the defaults: listen on all addresses, port 7946, UDP, and a
    /// trust set holding only this node.
    pub fn new(
        node_id: impl Into<String>,
        cluster_id: impl Into<String>,
        advertise: SocketAddr,
        vtep: IpAddr,
        keyring: Keyring,
        identity: Arc<LocalIdentity>,
    ) -> Self {
        let node_id = node_id.into();
        let mut trust = TrustSet::new();
        trust.insert(
            node_id.clone(),
            TrustedNode {
                generation: identity.generation(),
                addr: advertise,
                key: identity.public_key(),
            },
        );
        GossipConfig {
            node_id,
            identity,
            trust,
            cluster_id: cluster_id.into(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), advertise.port()),
            advertise,
            seeds: Vec::new(),
            vtep,
            keyring,
            subnets: BTreeMap::new(),
            timing: Timing::default(),
            probes: ProbeTiming::default(),
            reach: None,
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
    OldVersion,
    UnknownKey,
    AuthFailed,
    Stale,
    Replayed,
    TooManySenders,
    UnknownSender,
    Shed,
    BadMessage,
    SendTooBig,
    SendUnknownPeer,
    UntrustedHeartbeat,
    UntrustedNode,
    BadDelta,
    ForgedRecord,
    BadRecord,
    ForeignClaim,
    UnknownNetwork,
    OutsideSubnet,
    AddressConflict,
    Unreachable,
    ReachableAgain,
}

const COUNTERS: usize = Counter::ReachableAgain as usize + 1;

#[derive(Default)]
pub struct Counters {
    values: [AtomicU64; COUNTERS],
}

/// A copy of the counters. Packets: `sent`/`received` (chitchat messages passed on);
/// dropped: `oversized`, `malformed` (garbage, truncated, not shoal's header),
/// `old_version` (the previous version's packets), `unknown_key` (a key ID not in the
/// ring: retired or foreign), `auth_failed` (wrong key, wrong cluster, sealed for another
/// node, tampered), `stale` (send time too far off), `replayed`, `too_many_senders`,
/// `unknown_sender` (a sender that is not a member), `shed` (from an address no member
/// gossips from, dropped unopened while the socket had a backlog: [`intake`]), `bad_message` (authentic but not
/// chitchat, or chitchat could not handle it safely: see `admit`); not sent:
/// `send_too_big`, `send_unknown_peer` (no member at that address).
/// Parts of messages left out before chitchat hears them: `untrusted_heartbeat` and
/// `untrusted_node` (a heartbeat or an update about a node, generation or address the
/// managers do not list), `bad_delta` (an update in a form shoal never sends: deletions,
/// other keys, garbage-collection or bare maximum versions), `forged_record` (a record
/// not signed by the node it is about). Records left out of the table: `bad_record`,
/// `foreign_claim` (a VTEP not its publisher's), `unknown_network`, `outside_subnet`,
/// `address_conflict`. This node's own probes ([`reach`]): `unreachable` (a member
/// judged unreachable from here), `reachable_again` (one answering again).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CounterSnapshot {
    pub sent: u64,
    pub received: u64,
    pub oversized: u64,
    pub malformed: u64,
    pub old_version: u64,
    pub unknown_key: u64,
    pub auth_failed: u64,
    pub stale: u64,
    pub replayed: u64,
    pub too_many_senders: u64,
    pub shed: u64,
    pub unknown_sender: u64,
    pub bad_message: u64,
    pub send_too_big: u64,
    pub send_unknown_peer: u64,
    pub untrusted_heartbeat: u64,
    pub untrusted_node: u64,
    pub bad_delta: u64,
    pub forged_record: u64,
    pub bad_record: u64,
    pub foreign_claim: u64,
    pub unknown_network: u64,
    pub outside_subnet: u64,
    pub address_conflict: u64,
    pub unreachable: u64,
    pub reachable_again: u64,
}

impl CounterSnapshot {
    /// Packets dropped for any reason.
    pub fn packets_dropped(&self) -> u64 {
        self.oversized
            + self.malformed
            + self.old_version
            + self.unknown_key
            + self.auth_failed
            + self.stale
            + self.replayed
            + self.too_many_senders
            + self.shed
            + self.unknown_sender
            + self.bad_message
    }

    /// Heartbeats and node updates left out before chitchat heard them.
    pub fn updates_refused(&self) -> u64 {
        self.untrusted_heartbeat + self.untrusted_node + self.bad_delta + self.forged_record
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
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        self.values[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

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
            old_version: v(Counter::OldVersion),
            unknown_key: v(Counter::UnknownKey),
            auth_failed: v(Counter::AuthFailed),
            stale: v(Counter::Stale),
            replayed: v(Counter::Replayed),
            too_many_senders: v(Counter::TooManySenders),
            shed: v(Counter::Shed),
            unknown_sender: v(Counter::UnknownSender),
            bad_message: v(Counter::BadMessage),
            send_too_big: v(Counter::SendTooBig),
            send_unknown_peer: v(Counter::SendUnknownPeer),
            untrusted_heartbeat: v(Counter::UntrustedHeartbeat),
            untrusted_node: v(Counter::UntrustedNode),
            bad_delta: v(Counter::BadDelta),
            forged_record: v(Counter::ForgedRecord),
            bad_record: v(Counter::BadRecord),
            foreign_claim: v(Counter::ForeignClaim),
            unknown_network: v(Counter::UnknownNetwork),
            outside_subnet: v(Counter::OutsideSubnet),
            address_conflict: v(Counter::AddressConflict),
            unreachable: v(Counter::Unreachable),
            reachable_again: v(Counter::ReachableAgain),
        }
    }
}

/// This node's endpoints as its record holds them, by ID.
type OwnEntries = BTreeMap<String, serde_json::Value>;

/// A running gossip member.
pub struct Gossip {
    handle: ChitchatHandle,
    node_id: String,
    cluster_id: String,
    vtep: IpAddr,
    identity: Arc<LocalIdentity>,
    keyring: Arc<RwLock<Keyring>>,
    counters: Arc<Counters>,
    subnets_tx: watch::Sender<Arc<BTreeMap<String, IpNet>>>,
    trust_tx: watch::Sender<Arc<TrustSet>>,
    table_rx: watch::Receiver<Arc<EndpointTable>>,
    reach: ReachSender,
    /// What this node publishes; each change is signed and set as a new record version.
    own: tokio::sync::Mutex<OwnEntries>,
    deriver: JoinHandle<()>,
}

impl Gossip {
    /// Binds the gossip socket, joins through the seeds and starts deriving the table.
    pub async fn start(config: GossipConfig) -> Result<Gossip, GossipError> {
        let bad = |why: String| GossipError::BadConfig(why);
        if config.node_id.is_empty() || config.node_id.len() > seal::MAX_NODE_ID {
            return Err(bad(format!("node ID {:?}", config.node_id)));
        }
        if config.cluster_id.is_empty() {
            return Err(bad("empty cluster ID".into()));
        }
        let own_entry = TrustedNode {
            generation: config.identity.generation(),
            addr: config.advertise,
            key: config.identity.public_key(),
        };
        if config.trust.get(&config.node_id) != Some(&own_entry) {
            return Err(bad(format!(
                "the trust set does not name this node as it signs ({own_entry:?}): {:?}",
                config.trust.get(&config.node_id)
            )));
        }
        let t = &config.timing;
        if t.gossip_interval.is_zero()
            || t.phi_threshold.is_nan()
            || t.phi_threshold <= 0.0
            || t.sampling_window == 0
        {
            return Err(bad(format!("timing {t:?}")));
        }
        let p = &config.probes;
        if p.interval.is_zero() || p.deadline.is_zero() || p.lost_after < p.deadline {
            return Err(bad(format!("probe timing {p:?}")));
        }
        let keyring = Arc::new(RwLock::new(config.keyring.clone()));
        let counters = Arc::new(Counters::default());
        let reach = config
            .reach
            .clone()
            .unwrap_or_else(|| Arc::new(watch::channel(Arc::default()).0));
        let (trust_tx, mut trust_rx) = watch::channel(Arc::new(config.trust.clone()));
        let transport = SecureTransport {
            wire: config.wire.clone(),
            cluster_id: config.cluster_id.clone(),
            node_id: config.node_id.clone(),
            keyring: keyring.clone(),
            trust: trust_rx.clone(),
            counters: counters.clone(),
            max_age: t.max_packet_age,
            probes: config.probes.clone(),
            reach: reach.clone(),
        };
        // A restarted node is a new generation (and a new key): peers drop the old one's
        // state once the managers list the new one.
        let chitchat_id = ChitchatId::new(
            config.node_id.clone(),
            config.identity.generation(),
            config.advertise,
        );
        // The first record (no endpoints yet) is the state's first key: version 1.
        let first = record::sign(
            &config.identity,
            &config.cluster_id,
            (&chitchat_id).into(),
            1,
            &RecordBody {
                vtep: config.vtep,
                endpoints: BTreeMap::new(),
            },
        )?;
        let chitchat_config = ChitchatConfig {
            chitchat_id,
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
            vec![(RECORD_KEY.to_string(), first)],
            &transport,
        )
        .await
        .map_err(|e| GossipError::Start(format!("{e:#}")))?;

        let (subnets_tx, mut subnets_rx) = watch::channel(Arc::new(config.subnets.clone()));
        let mut live_rx = handle.chitchat().lock().await.live_nodes_watcher();
        let (table_tx, table_rx) = watch::channel(Arc::new(EndpointTable::default()));
        let deriver_counters = counters.clone();
        let cluster_id = config.cluster_id.clone();
        let deriver = tokio::spawn(async move {
            let mut deriver = Deriver::new(cluster_id);
            loop {
                let subnets = subnets_rx.borrow_and_update().clone();
                let trust = trust_rx.borrow_and_update().clone();
                // Derived under the watch's read lock: no copy of every node's state.
                let table = deriver.derive(
                    &live_rx.borrow_and_update(),
                    &subnets,
                    &trust,
                    &deriver_counters,
                );
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
                    r = trust_rx.changed() => if r.is_err() { return },
                }
            }
        });
        Ok(Gossip {
            handle,
            node_id: config.node_id,
            cluster_id: config.cluster_id,
            vtep: config.vtep,
            identity: config.identity,
            keyring,
            counters,
            subnets_tx,
            trust_tx,
            table_rx,
            reach,
            own: tokio::sync::Mutex::new(BTreeMap::new()),
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

    /// This node's generation (the one its key signs for).
    pub fn generation(&self) -> u64 {
        self.handle.chitchat_id().generation_id
    }

    fn check(&self, id: &str, ep: &Endpoint) -> Result<(), GossipError> {
        check_id(id)?;
        check(ep, Some(self.vtep), &self.subnets_tx.borrow())
            .map_err(|(_, why)| GossipError::BadEndpoint(format!("{id}: {why}")))
    }

    /// Makes `entries` this node's record: signed for the next version of its state and
    /// set. Nothing changes when they are what it holds already, or when the record
    /// would be too big (the error says so).
    async fn write_record(
        &self,
        own: &mut OwnEntries,
        entries: OwnEntries,
    ) -> Result<(), GossipError> {
        if *own == entries {
            return Ok(());
        }
        let body = RecordBody {
            vtep: self.vtep,
            endpoints: entries,
        };
        self.handle
            .with_chitchat(|c| {
                let id = c.self_chitchat_id().clone();
                let state = c.self_node_state();
                let value = record::sign(
                    &self.identity,
                    &self.cluster_id,
                    (&id).into(),
                    state.max_version() + 1,
                    &body,
                )?;
                // `set` gives the value exactly that version: the state's next.
                state.set(RECORD_KEY, value);
                Ok::<(), GossipError>(())
            })
            .await?;
        *own = body.endpoints;
        Ok(())
    }

    fn entry(ep: &Endpoint) -> serde_json::Value {
        serde_json::to_value(ep).expect("an endpoint serializes")
    }

    /// Publishes (or updates) one of this node's endpoints. Refused, with nothing
    /// changed, if the record would be refused by its receivers.
    pub async fn publish(&self, id: &str, ep: &Endpoint) -> Result<(), GossipError> {
        self.check(id, ep)?;
        let mut own = self.own.lock().await;
        let mut entries = own.clone();
        entries.insert(id.to_string(), Self::entry(ep));
        self.write_record(&mut own, entries).await
    }

    /// Withdraws one of this node's endpoints; false if it was not published.
    pub async fn withdraw(&self, id: &str) -> bool {
        let mut own = self.own.lock().await;
        let mut entries = own.clone();
        if entries.remove(id).is_none() {
            return false;
        }
        // A smaller record always fits where the larger one did.
        self.write_record(&mut own, entries).await.is_ok()
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
        let entries: OwnEntries = endpoints
            .iter()
            .map(|(id, ep)| (id.clone(), Self::entry(ep)))
            .collect();
        let mut own = self.own.lock().await;
        self.write_record(&mut own, entries).await
    }

    /// Puts an entry into this node's record as is, bypassing every check: only for
    /// tests of what receivers do with records a faulty or hostile node signs.
    #[doc(hidden)]
    pub async fn set_raw_entry_for_tests(
        &self,
        id: &str,
        entry: serde_json::Value,
    ) -> Result<(), GossipError> {
        let mut own = self.own.lock().await;
        let mut entries = own.clone();
        entries.insert(id.to_string(), entry);
        self.write_record(&mut own, entries).await
    }

    /// This node's published endpoints.
    pub async fn own_endpoints(&self) -> BTreeMap<String, Endpoint> {
        self.own
            .lock()
            .await
            .iter()
            .filter_map(|(id, v)| Some((id.clone(), serde_json::from_value(v.clone()).ok()?)))
            .collect()
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

    /// Replaces the members whose gossip is taken (the managers' list changed: a node
    /// joined, restarted or was removed). Takes effect on the next packet, and every
    /// record is checked again.
    pub fn set_trust(&self, trust: TrustSet) {
        self.trust_tx.send_if_modified(|current| {
            if **current != trust {
                *current = Arc::new(trust);
                true
            } else {
                false
            }
        });
    }

    pub fn trust(&self) -> Arc<TrustSet> {
        self.trust_tx.borrow().clone()
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

    /// The members this node's own probes do not reach now ([`reach`]), by node ID.
    pub fn unreachable(&self) -> Arc<Unreachable> {
        self.reach.borrow().clone()
    }

    /// A receiver that sees every change of [`Gossip::unreachable`].
    pub fn watch_unreachable(&self) -> watch::Receiver<Arc<Unreachable>> {
        self.reach.subscribe()
    }

    /// Nodes chitchat currently considers live (this one included), in the generation
    /// the trust set names.
    pub async fn live_nodes(&self) -> Vec<String> {
        let trust = self.trust();
        self.handle
            .with_chitchat(|c| {
                c.live_nodes()
                    .filter(|id| trust.trusts(id).is_some())
                    .map(|id| id.node_id.to_string())
                    .collect()
            })
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
