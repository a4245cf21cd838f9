//! The managers' Raft-replicated cluster store.
//!
//! ```text
//!  propose(Command) ──▶ leader's openraft ──append──▶ log.sealed (fsync) ──replicate──▶ peers
//!                               │                                      (Transport)
//!                     committed by a majority
//!                               ▼
//!                ClusterState::apply, on every manager, in log order
//! ```
//! - [`state`]: the state machine, plain data ([`ClusterState`], [`Command`]); deterministic.
//! - [`StoreNode`]: one manager's Raft member (openraft 0.9), its durable log, vote and
//!   snapshot in its storage directory (owner-only; the log and snapshot sealed with the
//!   manager's [`DataKey`]), and the API: `propose`, `read`, `read_stale`, `leader`,
//!   `add_manager`, `remove_manager`.
//! - [`transport`]: the message-based seam to the peers ([`Transport`]); [`MemNetwork`]
//!   runs many managers in one process with cuttable links.
//!
//! Writes and linearizable reads go through the leader; a follower answers
//! [`StoreError::NotLeader`] with the leader's ID so the caller can forward. Every call that
//! needs a quorum is bounded by [`StoreConfig::request_timeout`]: without a majority it
//! fails with [`StoreError::NoQuorum`] instead of hanging.
//!
//! Raft member IDs ([`RaftId`], `u64`) are not the cluster's node IDs (strings, in
//! certificates): a manager's [`state::Node::raft_id`] links the two, as in Swarm.

pub mod container;
pub mod data_object;
pub mod device;
mod flusher;
pub mod latency;
pub mod limits;
mod log;
pub(crate) use log::force_single_voter;
pub mod mount;
pub mod service;
mod sm;
pub mod state;
pub mod transport;

use std::collections::{BTreeMap, BTreeSet};
// `declare_raft_types!` names its default snapshot data type `Cursor<Vec<u8>>`.
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use tokio::sync::watch;

use crate::seal::DataKey;

pub use container::{
    sysctl_problem, ulimit_problem, ContainerOptions, DnsConfig, Ulimit, ULIMIT_NAMES,
};
pub use data_object::{DataObject, FileReference};
pub use device::{check_devices, Device, DEFAULT_DEVICE_PERMISSIONS};
pub use limits::{Limits, NANO_CPUS_PER_CPU};
pub use mount::{check_mounts, Mount, MountKind};
pub use service::{
    Endpoint, EndpointMode, FailureAction, HealthCheck, JobStatus, NetworkAttachment, Placement,
    PortBalance, PortConfig, Protocol, PublishMode, RestartCondition, Service, ServiceMode,
    ServiceSpec, Task, TaskState, TaskStatus, TaskStatusUpdate, UpdateConfig, UpdateOrder,
    UpdateState, UpdateStatus, VirtualIp, DEFAULT_RESTART_DELAY_MS, DEFAULT_STOP_GRACE_MS,
    SPREAD_LABEL_PREFIX,
};
pub use state::{
    attachment_name_ok, declared_attachments, new_attachment_count, ApplyResult, Availability,
    CaProgress, CaRotation, ClusterSpec, ClusterState, Command, ContainerAttachment,
    GossipIdentity, GossipKey, Network, Node, NodeResources, NodeStatus, NodeTls, ObjectKind,
    RegistryKey, Rejection, RemovedNode, Resealed, Role, StoredCa, UnlockKey, WantedAttachment,
    MAX_ALIASES, MAX_GOSSIP_KEYS, MAX_NODE_ATTACHMENTS,
};
pub use transport::{MemNetwork, RaftRequest, RaftResponse, Transport, TransportError};

/// A manager's member ID in the Raft group.
pub type RaftId = u64;

openraft::declare_raft_types!(
    /// Openraft's types for the cluster store.
    pub TypeConfig:
        D = Command,
        R = ApplyResult,
);

/// Pause before a read's leadership confirmation is asked again (see [`StoreNode::read`]).
const READ_RETRY: Duration = Duration::from_millis(50);

/// Timing and size knobs of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How often the leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time in this range starts an election.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Bound on every call that needs a quorum (propose, read, membership changes).
    pub request_timeout: Duration,
    /// A snapshot is taken (and the log purged) after this many entries. The log is held
    /// in memory (decoded) until a snapshot covers it, so this bounds a manager's memory
    /// under steady writes: at 5,000, the managers of an hour-long soak grew by about
    /// 8 MiB while their log never reached a snapshot (docs/soak.md); a snapshot is one
    /// copy of the state (a few hundred KB in that soak), cheap to take every 1,000.
    pub snapshot_every: u64,
}

impl Default for StoreConfig {
    /// Docker's managers tick every 1 s and elect after 10 ticks. Here a follower that
    /// hears nothing elects after the leader's lease (the longest election timeout, 2 s)
    /// plus 1-2 s, so a dead leader is replaced within about 4 s.
    ///
    /// Openraft waits one heartbeat interval for an append's answer (the follower's fsync
    /// included) and for a read's leadership confirmation: at 200 ms, a starved 2-core
    /// machine or a busy disk made appends time out over and over, a new manager's log
    /// never caught up (a promote timed out) and reads answered "no quorum". 500 ms
    /// still sends a heartbeat at least every 750 ms (openraft ticks at 1.5 intervals),
    /// four within the shortest time a follower waits before it elects.
    fn default() -> Self {
        StoreConfig {
            heartbeat_interval: Duration::from_millis(500),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            request_timeout: Duration::from_secs(5),
            snapshot_every: 1000,
        }
    }
}

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Only the leader writes; forward to `leader` (unknown during an election or when no
    /// majority can elect one).
    #[error("{}", match .leader {
        Some(l) => format!("this manager is not the leader; the leader is manager {l}"),
        None => "this manager is not the leader and no leader is known (an election is under way, or a majority of managers is unreachable)".to_string(),
    })]
    NotLeader { leader: Option<RaftId> },
    /// A majority did not answer in time. A write may still be applied if they return.
    #[error("no quorum: a majority of managers did not confirm within {waited:?}; the cluster cannot make changes until a majority is reachable")]
    NoQuorum { waited: Duration },
    #[error("another manager membership change is in progress")]
    MembershipChangeInProgress,
    #[error("manager {id} is not a voting member")]
    NotAManager { id: RaftId },
    #[error("refusing to remove the last manager")]
    LastManager,
    #[error("the store is already initialized")]
    AlreadyInitialized,
    #[error("the store has stopped")]
    Stopped,
    #[error("the Raft store's disk: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// This manager's role in the Raft group right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Leader,
    Follower,
    Candidate,
    /// Receives the log but does not vote (a manager being added, or not a member).
    Learner,
    Stopped,
}

/// A snapshot of this manager's view of the Raft group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    pub id: RaftId,
    pub state: MemberState,
    pub term: u64,
    pub leader: Option<RaftId>,
    /// Voting members and their addresses.
    pub voters: BTreeMap<RaftId, String>,
    /// Non-voting members (being added).
    pub learners: BTreeSet<RaftId>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// The last log index covered by this member's snapshot.
    pub snapshot_index: Option<u64>,
    /// The log up to here has been purged (it is in the snapshot).
    pub purged_index: Option<u64>,
    /// On the leader: how long ago a majority last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// How long the log's writes (entries and votes) waited on the disk.
    pub fsync: latency::LatencySnapshot,
    /// Why the member stopped on its own: a storage error (a full or failing disk) or a
    /// panic of the Raft core. It stays stopped until started again from its directory.
    pub failure: Option<String>,
}

/// One manager's member of the replicated store. Cheap to clone; clones share the member.
#[derive(Clone)]
pub struct StoreNode {
    id: RaftId,
    raft: Raft<TypeConfig>,
    sm: Arc<sm::Shared>,
    config: StoreConfig,
    fsync: Arc<latency::LatencyHistogram>,
    /// The first fatal error a request met (a storage error, a panic of the Raft core):
    /// openraft's metrics do not always carry it (a panicked core sends none).
    failure: Arc<std::sync::Mutex<Option<String>>>,
    /// The leader whose append this member last accepted, and when.
    heard: Arc<std::sync::Mutex<Option<(RaftId, std::time::Instant)>>>,
}

impl std::fmt::Debug for StoreNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreNode").field("id", &self.id).finish()
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

impl StoreNode {
    /// Starts the member `id` with its state in `storage_dir` (created if missing; a
    /// restarted manager passes the same directory and `key` and keeps its log, vote and
    /// snapshot). The log and snapshot are sealed with `key`; plain ones an older agent
    /// left are sealed at start. A new, empty member waits to be made part of a group:
    /// [`StoreNode::initialize`] on the first manager, [`StoreNode::add_manager`] on the
    /// leader for the others.
    pub async fn start(
        id: RaftId,
        storage_dir: impl AsRef<Path>,
        key: &DataKey,
        transport: Arc<dyn Transport>,
    ) -> Result<StoreNode, StoreError> {
        Self::start_with(id, storage_dir, key, transport, StoreConfig::default()).await
    }

    /// [`StoreNode::start`] with explicit timings.
    pub async fn start_with(
        id: RaftId,
        storage_dir: impl AsRef<Path>,
        key: &DataKey,
        transport: Arc<dyn Transport>,
        config: StoreConfig,
    ) -> Result<StoreNode, StoreError> {
        let dir = storage_dir.as_ref();
        let storage = |e: std::io::Error| StoreError::Storage(format!("{}: {e}", dir.display()));
        let log = log::LogStore::open(dir, key).map_err(storage)?;
        let fsync = log.fsync_latency();
        let sm = sm::StateMachineStore::open(dir, key).map_err(storage)?;
        let raft_config = Config {
            cluster_name: "shoal".to_string(),
            heartbeat_interval: ms(config.heartbeat_interval),
            election_timeout_min: ms(config.election_timeout_min),
            election_timeout_max: ms(config.election_timeout_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: 100,
            ..Config::default()
        }
        .validate()
        .map_err(|e| StoreError::Raft(format!("config: {e}")))?;
        let shared = sm.shared.clone();
        let network = transport::NetworkFactory { transport };
        let raft = Raft::new(id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        Ok(StoreNode {
            id,
            raft,
            sm: shared,
            config,
            fsync,
            failure: Default::default(),
            heard: Default::default(),
        })
    }

    /// The error of a stopped Raft core, noted as the member's failure unless it was
    /// stopped on purpose.
    fn fatal(&self, e: openraft::error::Fatal<RaftId>) -> StoreError {
        let error = fatal_error(&e);
        if !matches!(e, openraft::error::Fatal::Stopped) {
            let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
            failure.get_or_insert_with(|| error.to_string());
        }
        error
    }

    fn write_error(&self, e: RaftError<RaftId, ClientWriteError<RaftId, BasicNode>>) -> StoreError {
        match e {
            RaftError::Fatal(e) => self.fatal(e),
            RaftError::APIError(e) => api_write_error(e),
        }
    }

    /// This member's ID.
    pub fn id(&self) -> RaftId {
        self.id
    }

    /// Creates the group with `members` (ID -> address) as its voters; run once, on one
    /// manager (`swarm init`: just itself). Refused if this member already has a log.
    pub async fn initialize(
        &self,
        members: impl IntoIterator<Item = (RaftId, String)>,
    ) -> Result<(), StoreError> {
        let members: BTreeMap<RaftId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode { addr }))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Err(StoreError::AlreadyInitialized)
            }
            Err(RaftError::APIError(e)) => Err(StoreError::Raft(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(self.fatal(e)),
        }
    }

    /// Proposes `command`. On the leader: returns once it is committed by a majority and
    /// applied here, with what applying did (a refused command is `Ok(Rejected)`). On a
    /// follower: [`StoreError::NotLeader`] at once. Without a majority:
    /// [`StoreError::NoQuorum`] after [`StoreConfig::request_timeout`].
    pub async fn propose(&self, command: Command) -> Result<ApplyResult, StoreError> {
        let waited = self.config.request_timeout;
        match tokio::time::timeout(waited, self.raft.client_write(command)).await {
            Err(_) => Err(StoreError::NoQuorum { waited }),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(e)) => Err(self.write_error(e)),
        }
    }

    /// A linearizable read: confirms with a majority that this member is still the leader,
    /// waits until everything committed before the read is applied, then returns the state.
    /// Followers answer [`StoreError::NotLeader`].
    ///
    /// Openraft gives each confirmation one heartbeat interval (200 ms) to hear from a
    /// majority; a follower slow to answer once (a starved machine, a slow fsync) is not a
    /// lost majority, so a confirmation that fails is asked again until
    /// [`StoreConfig::request_timeout`], and only then is it [`StoreError::NoQuorum`].
    pub async fn read(&self) -> Result<ClusterState, StoreError> {
        let waited = self.config.request_timeout;
        let confirmed = async {
            loop {
                match self.raft.ensure_linearizable().await {
                    Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                        tokio::time::sleep(READ_RETRY).await;
                    }
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(waited, confirmed).await {
            Err(_) => Err(StoreError::NoQuorum { waited }),
            Ok(Ok(_)) => Ok(self.read_stale()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(StoreError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(StoreError::NoQuorum { waited })
            }
            Ok(Err(RaftError::Fatal(e))) => Err(self.fatal(e)),
        }
    }

    /// This member's own copy of the state, as far as it has applied the log. Possibly
    /// stale (a follower behind, a leader cut off from the others); never waits.
    pub fn read_stale(&self) -> ClusterState {
        self.sm.read().state.clone()
    }

    /// `f` of this member's own copy of the state (as [`StoreNode::read_stale`], without
    /// copying all of it): for checks made on every request, such as whether a caller is
    /// still a member.
    pub fn read_stale_with<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        f(&self.sm.read().state)
    }

    /// The store version this member has applied, updated as entries are applied.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.sm.subscribe()
    }

    /// The leader as this member knows it.
    pub fn leader(&self) -> Option<RaftId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Whether this member leads and a majority acknowledged it within the followers'
    /// lease (the longest election timeout). A leader cut off from its majority keeps
    /// believing it leads (openraft never steps it down), while the majority elects
    /// another after the lease: past it, work that must reach the real leader (a node's
    /// heartbeat, a write, its view of the state) is better sent elsewhere. A leader
    /// that has not heard a majority yet (just elected by one) counts as leading.
    pub fn leads_a_majority(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let lease = self.config.election_timeout_max.as_millis();
        m.state == ServerState::Leader
            && m.millis_since_quorum_ack
                .is_none_or(|ms| u128::from(ms) <= lease)
    }

    /// Resolves once this member names a leader other than `leader` (a new one elected,
    /// or none while an election runs); at once if it already does.
    pub async fn leader_other_than(&self, leader: Option<RaftId>) {
        let mut metrics = self.raft.metrics();
        if metrics
            .wait_for(|m| m.current_leader != leader)
            .await
            .is_err()
        {
            // Raft stopped: its leader will not change any more.
            std::future::pending::<()>().await;
        }
    }

    /// The leader whose append (a heartbeat included) this member last accepted, and how
    /// long ago; `None` before the first.
    pub fn last_heard(&self) -> Option<(RaftId, Duration)> {
        let heard = *self.heard.lock().unwrap_or_else(|p| p.into_inner());
        heard.map(|(leader, at)| (leader, at.elapsed()))
    }

    /// The followers' lease on their leader: they grant no vote while they heard it
    /// within this (openraft takes it from the longest election timeout).
    pub fn leader_lease(&self) -> Duration {
        self.config.election_timeout_max
    }

    /// Stands for election now, without waiting for the election timer.
    pub async fn elect(&self) -> Result<(), StoreError> {
        self.raft.trigger().elect().await.map_err(|e| self.fatal(e))
    }

    /// Whether this member believes it is the leader (no quorum check; see `read`).
    pub fn is_leader(&self) -> bool {
        self.status().state == MemberState::Leader
    }

    /// This member's view of the group.
    pub fn status(&self) -> StoreStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeMap<RaftId, String> = membership
            .voter_ids()
            .map(|id| {
                let addr = membership
                    .get_node(&id)
                    .map(|n| n.addr.clone())
                    .unwrap_or_default();
                (id, addr)
            })
            .collect();
        let learners = membership.learner_ids().collect();
        let state = match (m.running_state.is_ok(), m.state) {
            (false, _) | (_, ServerState::Shutdown) => MemberState::Stopped,
            (_, ServerState::Leader) => MemberState::Leader,
            (_, ServerState::Follower) => MemberState::Follower,
            (_, ServerState::Candidate) => MemberState::Candidate,
            (_, ServerState::Learner) => MemberState::Learner,
        };
        StoreStatus {
            id: self.id,
            state,
            term: m.current_term,
            leader: m.current_leader,
            voters,
            learners,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            fsync: self.fsync.snapshot(),
            failure: match &m.running_state {
                Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
                Err(e) => Some(fatal_error(e).to_string()),
            }
            .or_else(|| {
                self.failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
            }),
        }
    }

    /// On the leader: whether every member in `ids` holds the current membership's log
    /// entry (the leader's replication view; false on a member that is not the leader).
    /// A member that holds it can lead under that membership; see [`Self::add_manager`].
    pub fn holds_membership(&self, ids: &BTreeSet<RaftId>) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let Some(index) = m.membership_config.log_id().map(|l| l.index) else {
            return false;
        };
        let Some(replication) = &m.replication else {
            return false;
        };
        ids.iter().all(|id| {
            *id == self.id
                || replication
                    .get(id)
                    .and_then(|matched| matched.map(|l| l.index))
                    .is_some_and(|matched| matched >= index)
        })
    }

    /// Waits (polling, up to `waited`) until every member in `ids` holds the current
    /// membership's entry; false if they do not by then.
    async fn wait_membership_held(&self, ids: &BTreeSet<RaftId>, waited: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + waited;
        loop {
            if self.holds_membership(ids) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// On the leader: adds manager `id` (reachable at `addr`) as a voter. It first joins as
    /// a learner and receives the log; it votes once the membership change is committed,
    /// and this answers once it also holds the final membership entry. Without that wait,
    /// a leader lost at once can leave the others with nothing but the joint
    /// configuration, whose old half (the previous voters) has lost its majority: no
    /// election could ever succeed (growing 1 -> 2 -> 3 managers by promotion did this).
    pub async fn add_manager(&self, id: RaftId, addr: String) -> Result<(), StoreError> {
        let waited = self.config.request_timeout;
        let node = BasicNode { addr };
        match tokio::time::timeout(waited, self.raft.add_learner(id, node, true)).await {
            Err(_) => return Err(StoreError::NoQuorum { waited }),
            Ok(Err(e)) => return Err(self.write_error(e)),
            Ok(Ok(_)) => {}
        }
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        match tokio::time::timeout(waited, self.raft.change_membership(change, false)).await {
            Err(_) => return Err(StoreError::NoQuorum { waited }),
            Ok(Err(e)) => return Err(self.write_error(e)),
            Ok(Ok(_)) => {}
        }
        if self
            .wait_membership_held(&BTreeSet::from([id]), waited)
            .await
        {
            Ok(())
        } else {
            Err(StoreError::NoQuorum { waited })
        }
    }

    /// On the leader: removes manager `id` from the voters and from the group (demotion
    /// and `node rm` of a manager). Removing the last voter is refused.
    pub async fn remove_manager(&self, id: RaftId) -> Result<(), StoreError> {
        if !self.is_leader() {
            return Err(StoreError::NotLeader {
                leader: self.leader(),
            });
        }
        let voters = self.status().voters;
        if !voters.contains_key(&id) {
            return Err(StoreError::NotAManager { id });
        }
        if voters.len() == 1 {
            return Err(StoreError::LastManager);
        }
        let waited = self.config.request_timeout;
        let change = ChangeMembers::RemoveVoters(BTreeSet::from([id]));
        match tokio::time::timeout(waited, self.raft.change_membership(change, false)).await {
            Err(_) => Err(StoreError::NoQuorum { waited }),
            Ok(Err(e)) => Err(self.write_error(e)),
            // Committed: a majority of the smaller membership holds its entry, so any
            // majority of survivors includes one that can lead under it.
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Answers a Raft request from a peer (the server side of a [`Transport`]).
    pub async fn handle_rpc(&self, request: RaftRequest) -> RaftResponse {
        match request {
            RaftRequest::AppendEntries(r) => {
                let from = r.vote.leader_id().voted_for();
                let answer = self.raft.append_entries(r).await;
                if let (Some(from), Ok(a)) = (from, &answer) {
                    if !matches!(a, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
                        *self.heard.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((from, std::time::Instant::now()));
                    }
                }
                RaftResponse::AppendEntries(answer)
            }
            RaftRequest::Vote(r) => RaftResponse::Vote(self.raft.vote(r).await),
            RaftRequest::InstallSnapshot(r) => {
                RaftResponse::InstallSnapshot(self.raft.install_snapshot(r).await)
            }
        }
    }

    /// Takes a snapshot now (and lets the log before it be purged).
    pub async fn snapshot(&self) -> Result<(), StoreError> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| self.fatal(e))
    }

    /// Stops this member. Its storage directory can be reopened with `start`.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| StoreError::Raft(format!("shutdown: {e}")))
    }
}

fn fatal_error(e: &openraft::error::Fatal<RaftId>) -> StoreError {
    match e {
        openraft::error::Fatal::StorageError(e) => StoreError::Storage(e.to_string()),
        openraft::error::Fatal::Panicked => StoreError::Raft("raft core panicked".to_string()),
        openraft::error::Fatal::Stopped => StoreError::Stopped,
    }
}

fn api_write_error(e: ClientWriteError<RaftId, BasicNode>) -> StoreError {
    match e {
        ClientWriteError::ForwardToLeader(f) => StoreError::NotLeader {
            leader: f.leader_id,
        },
        ClientWriteError::ChangeMembershipError(e) => match e {
            openraft::error::ChangeMembershipError::InProgress(_) => {
                StoreError::MembershipChangeInProgress
            }
            openraft::error::ChangeMembershipError::EmptyMembership(_) => StoreError::LastManager,
            openraft::error::ChangeMembershipError::LearnerNotFound(l) => {
                StoreError::NotAManager { id: l.node_id }
            }
        },
    }
}
