//! The executor: on every node of a cluster, runs the tasks the managers placed here on
//! the node's dockerd and reports what they do.
//!
//! ```text
//!   leader ──node_state(since, applied)──▶ executor ──create/start/stop/remove──▶ dockerd
//!      ▲   ◀──withdrawn everywhere────────    │  (a sandbox `<container>.sandbox` holding
//!      │                                      │   the network namespace, then the task's
//!      └──────report_tasks────────────────────┘   container `<service>.<slot>.<task>` in
//!                                             │   it: --network container:<sandbox>,
//!                                             │   --init, task labels)
//!                                             └──▶ declared overlay/DNS/LB state
//!                                                  (node_state), published to the
//!                                                  agent's pipeline
//! ```
//! Each step: fetch the state when the store changed (telling the leader which store
//! version this node's dataplane follows), write the node's declared state, list the
//! task containers and sandboxes (by shoal's own labels: a container with only Swarm's
//! task labels is never touched, unless an older agent made it for a task the store
//! still gives this node, see [`legacy`]), start what should run, stop and remove what
//! should not (and containers of tasks that are no longer this node's: a node that
//! comes back after being Down cleans up), and report every state a task
//! reached that the store does not know yet. A running task's stop waits until every
//! node has withdrawn it from its load balancing and DNS ([`withdrawal`]). Steps run on
//! dockerd events, on a pull ending, on the dataplane applying more and on a short
//! tick. A task's process starts only once the dataplane has made its sandbox's network
//! ready ([`crate::sandbox`]). Task states follow Swarm:
//! assigned, preparing (the image is checked and, when the node lacks it, pulled; the
//! sandbox and its network), starting (created and started; health check pending),
//! running (started, healthy if it has a check), then complete, failed (exit code,
//! unhealthy, sandbox gone) or rejected (the pull failed: the registry's error; network
//! not ready in time).
//!
//! This file holds the executor and its loop; a step's parts are in `plan` (deciding
//! the actions from the store and the listing), `images` (image checks and pulls),
//! `config` (what a task's sandbox and container are made with, from its spec),
//! `containers` (listing task containers, carrying out the actions), `applied` (the
//! store version the node's dataplane follows), `withdrawal` (holding stops until every
//! node has withdrawn the task) and `cleanup` (removing every task container, for
//! `shoal agent cleanup`).

mod applied;
mod cleanup;
mod config;
mod containers;
mod images;
mod legacy;
mod plan;
mod task_files;
mod withdrawal;

pub use cleanup::remove_all_task_containers;
pub use containers::{
    LABEL_NODE_ID, LABEL_SERVICE_ID, LABEL_SERVICE_NAME, LABEL_SHOAL_TASK_ID, LABEL_SLOT,
    LABEL_TASK, LABEL_TASK_ID, LABEL_TASK_NAME,
};
pub use task_files::TaskFiles;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use bollard::models::ContainerSummaryStateEnum;
use shoal_cluster::{
    manager::{NodeClient, Withdrawal},
    registry_auth::RegistryCredentials,
    store::{ClusterState, TaskState, TaskStatusUpdate},
};
use shoal_dataplane::reconcile::{ready::ReadinessWatch, DeclaredNode};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use self::{
    applied::AppliedStore,
    config::NodeIdentity,
    containers::act_all,
    images::PullKey,
    plan::{plan, starting_networks, Plan},
    withdrawal::{Heard, HeldStops},
};
use crate::{
    docker::DockerClient,
    events::{DockerEvents, Watched},
    node_state,
    pipeline::IntentSender,
    sandbox::{self, image::SandboxImage},
};

/// How often the executor looks without an event.
const TICK: Duration = Duration::from_millis(200);
/// Events this close together make one pass.
const EVENT_COALESCE: Duration = Duration::from_millis(20);
/// Longest wait for the node's state from the managers before the pass goes on with
/// what it has.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the same set of attached containers waits before it is declared again
/// while the store does not show it.
const ATTACH_RESEND: Duration = Duration::from_secs(2);
/// Longest wait, before starting tasks, for gossip to tell of their running peers.
const PEER_WAIT: Duration = Duration::from_secs(5);

/// The node's executor.
pub struct Executor {
    client: NodeClient,
    docker: DockerClient,
    /// Where the node's declared state goes (the agent's pipeline).
    intent: Arc<IntentSender>,
    /// What the dataplane has made ready; None: no dataplane follows this executor
    /// (nothing would plumb a sandbox, so tasks start without waiting).
    ready: Option<ReadinessWatch>,
    /// The sandbox image this agent loads into dockerd, or why there is none.
    sandbox_image: Result<SandboxImage, String>,
    events: DockerEvents,
    state: Option<ClusterState>,
    /// Registry credentials of the services this node has tasks of (from the leader).
    registry_auth: std::collections::BTreeMap<String, RegistryCredentials>,
    /// The last state reported per task (not sent again until the store moves).
    sent: HashMap<String, TaskState>,
    /// This node's gossip member: publishes its running tasks, tells it others'.
    gossip: crate::gossip_member::Member,
    /// Pulls under way.
    pulling: HashSet<PullKey>,
    /// Pulls that failed, with the error, until a pass hands it to the waiting tasks.
    pull_failed: HashMap<PullKey, String>,
    /// Pulls that succeeded, until a pass finds their image.
    pulled: HashSet<PullKey>,
    /// Where pulls report their end (and wake the loop).
    pull_done_tx: mpsc::UnboundedSender<(PullKey, Result<(), String>)>,
    pull_done: mpsc::UnboundedReceiver<(PullKey, Result<(), String>)>,
    /// The resolver's address on the egress bridge (tasks with no network).
    egress_dns: Option<Ipv4Addr>,
    /// Which store version the node's dataplane follows.
    applied: AppliedStore,
    /// The declared version the reconcilers had all applied at the last fetch.
    reported: u64,
    /// What the leader last said of every node's dataplane.
    heard: Heard,
    /// Stops waiting for their task's withdrawal on every node.
    held: HeldStops,
    /// Containers made before shoal's own task label, and which of them were left alone.
    legacy: legacy::Legacy,
    /// Where each pass's view of the node goes (the agent's metrics); None: nowhere.
    report: Option<crate::node_report::ReportSender>,
    /// The tmpfs of tasks' secrets and configs; None: none could be mounted (tasks
    /// using them are rejected).
    task_files: Option<TaskFiles>,
    /// The attached containers last declared to the managers, and when.
    attachments_sent: Option<(
        Vec<shoal_cluster::store::WantedAttachment>,
        std::time::Instant,
    )>,
    /// The endpoints the last declared state left out for an address conflict, so the
    /// log says it once per change rather than at every pass.
    address_conflicts: std::collections::BTreeSet<(String, Ipv4Addr)>,
}

impl Executor {
    pub fn new(
        client: NodeClient,
        docker: DockerClient,
        events: DockerEvents,
        intent: Arc<IntentSender>,
    ) -> Executor {
        let (pull_done_tx, pull_done) = mpsc::unbounded_channel();
        Executor {
            client,
            docker,
            intent,
            ready: None,
            sandbox_image: sandbox::image::build(),
            events,
            state: None,
            registry_auth: Default::default(),
            sent: HashMap::new(),
            gossip: crate::gossip_member::Member::new(None),
            pulling: HashSet::new(),
            pull_failed: HashMap::new(),
            pulled: HashSet::new(),
            pull_done_tx,
            pull_done,
            egress_dns: None,
            applied: AppliedStore::default(),
            address_conflicts: Default::default(),
            reported: 0,
            // Nothing heard yet: every node counts as having applied nothing.
            heard: Heard {
                withdrawal: Some(Withdrawal::default()),
                at: std::time::Instant::now(),
            },
            held: HeldStops::default(),
            legacy: legacy::Legacy::default(),
            report: None,
            task_files: None,
            attachments_sent: None,
        }
    }

    /// Publishes each pass's view of the node (tasks by state, gossip) on `report`.
    pub fn with_report(mut self, report: Option<crate::node_report::ReportSender>) -> Executor {
        self.report = report;
        self
    }

    /// Mounts the tmpfs of tasks' secrets and configs at `dir` (see [`TaskFiles`]).
    pub fn with_task_files(mut self, dir: Option<PathBuf>) -> Executor {
        self.task_files = dir.and_then(|d| match TaskFiles::mount(&d) {
            Ok(files) => Some(files),
            Err(e) => {
                warn!(dir = %d.display(), error = %e, "cannot mount the tmpfs of tasks' secrets and configs; tasks using them will be rejected");
                None
            }
        });
        self
    }

    /// Starts tasks' processes only once `ready` says their sandbox's network is.
    pub fn with_readiness(mut self, ready: Option<ReadinessWatch>) -> Executor {
        self.ready = ready;
        self
    }

    /// Gives tasks with no network `dns` (the resolver on the egress bridge) as their
    /// nameserver.
    pub fn with_egress_dns(mut self, dns: Option<Ipv4Addr>) -> Executor {
        self.egress_dns = dns;
        self
    }

    /// Runs gossip on `listen` (see [`crate::gossip_member`]), its status in `status`.
    pub fn with_gossip(
        mut self,
        listen: Option<std::net::SocketAddr>,
        status: Option<PathBuf>,
        wireguard_key: Option<tokio::sync::watch::Receiver<String>>,
        reach: Option<shoal_gossip::ReachSender>,
    ) -> Executor {
        self.gossip = crate::gossip_member::Member::new(listen)
            .with_status_file(status)
            .with_wireguard_key(wireguard_key)
            .with_reachability(reach);
        self
    }

    /// Runs until dropped (the agent aborts it when the node leaves the cluster).
    pub async fn run(mut self) {
        let mut events = self.events.subscribe();
        // On a manager, the local store applying a change is the cue; workers poll.
        let mut versions = self.client.subscribe();
        let mut readiness = self.ready.clone();
        loop {
            self.step().await;
            let mut table = self.gossip.watch();
            let gossip_changed = async {
                match table.as_mut() {
                    Some(t) => {
                        if t.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let store_changed = async {
                match versions.as_mut() {
                    Some(v) => {
                        if v.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            // The dataplane applying more is news for the leader (a task elsewhere may
            // be waiting for this node to withdraw it).
            let reported = self.reported;
            let applied_moved = async {
                let moved = match readiness.as_mut() {
                    Some(r) => r.wait_for(|x| x.applied_version() > reported).await.is_ok(),
                    None => false,
                };
                if !moved {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = store_changed => {}
                () = applied_moved => {}
                () = gossip_changed => {}
                done = self.pull_done.recv() => {
                    if let Some((key, result)) = done {
                        self.pull_ended(key, result);
                    }
                }
                update = events.next() => {
                    if let Watched::Lost(e) = update {
                        debug!(error = %e, "dockerd events lost; retrying");
                    }
                    // One pass for a burst of events (dozens of containers starting).
                    tokio::time::sleep(EVENT_COALESCE).await;
                    events.drain();
                }
            }
        }
    }

    /// One pass: fetch, declare, decide, prepare, act, report.
    pub async fn step(&mut self) {
        let began = std::time::Instant::now();
        self.fetch().await;
        let fetched = began.elapsed();
        let Some(state) = self.state.clone() else {
            return;
        };
        let me = self.client.node_id().to_string();
        self.declare(&state, &me);
        let listed_at = std::time::Instant::now();
        let listing = match self.list().await {
            Ok(o) => o,
            Err(e) => {
                debug!(error = %e, "listing task containers");
                return;
            }
        };
        let list_ms = listed_at.elapsed().as_millis() as u64;
        self.declare_attachments(&state, &me).await;
        let sandboxes = listing.sandboxes;
        let mut observed = listing.tasks;
        observed.extend(self.legacy.adopt(&state, &me, listing.legacy));
        let running: HashMap<String, crate::gossip_member::RunningTask> = observed
            .iter()
            .filter(|o| o.state == ContainerSummaryStateEnum::RUNNING)
            .map(|o| {
                let healthy = o.health().is_none_or(|h| h == "healthy");
                (
                    o.task_id.clone(),
                    crate::gossip_member::RunningTask { healthy },
                )
            })
            .collect();
        self.gossip.sync(&state, &me, &running).await;
        if let Some(report) = &self.report {
            let next = crate::node_report::NodeReport {
                node_id: me.clone(),
                tasks: crate::node_report::tasks_by_state(&state, &me),
                gossip: self.gossip.report().await,
            };
            report.send_if_modified(|r| {
                let changed = **r != next;
                if changed {
                    *r = Arc::new(next);
                }
                changed
            });
        }
        if let Some(identity) = self.gossip.registration_due() {
            // Gossip starts once the store shows this run's key (a later fetch).
            match tokio::time::timeout(FETCH_TIMEOUT, self.client.register_gossip(identity)).await {
                Ok(Ok(())) => debug!("gossip signing key registered"),
                Ok(Err(e)) => warn!(error = %e, "registering the gossip signing key; retrying"),
                Err(_) => warn!("registering the gossip signing key timed out; retrying"),
            }
        }
        let Plan {
            mut actions,
            mut updates,
        } = plan(&state, &me, self.egress_dns, &observed, &sandboxes);
        self.held.hold(
            &mut actions,
            state.version,
            &self.heard,
            std::time::Instant::now(),
        );

        // What a task starting now should find: the peers the store has running on its
        // networks, in the declared state its start waits to see applied.
        let starting_networks = starting_networks(&actions);
        if !starting_networks.is_empty() {
            self.hear_peers(&state, &me, &starting_networks).await;
        }
        let version = self.intent.borrow().as_ref().map_or(0, |d| d.version);

        let prepared = began.elapsed();
        let count = actions.len();
        let node = NodeIdentity {
            hostname: state
                .nodes
                .get(&me)
                .map(|n| n.hostname.clone())
                .unwrap_or_default(),
            id: me.clone(),
        };
        let prepared_start = self.prepare_starts(&actions, version, node).await;
        // The files of tasks with no container here (ended and removed) go; the ones
        // starting now, or whose container is still here, stay.
        let mut keep: HashSet<String> = observed.iter().map(|o| o.task_id.clone()).collect();
        keep.extend(prepared_start.files.keys().cloned());
        updates.extend(act_all(&self.docker, &prepared_start, actions).await);
        if let Some(files) = &self.task_files {
            files.sweep(&keep.iter().map(String::as_str).collect());
        }
        if count > 0 {
            debug!(
                fetch_ms = fetched.as_millis() as u64,
                list_ms,
                actions = count,
                prepare_ms = prepared.as_millis() as u64,
                total_ms = began.elapsed().as_millis() as u64,
                version = state.version,
                "executor pass"
            );
        }
        self.report(&state, updates).await;
    }

    /// Declares to the managers the node's running containers that asked for attachable
    /// overlays ([`crate::attach`]), when that differs from what the store holds for
    /// the node: at most once per [`ATTACH_RESEND`] for the same set (the store may
    /// just not have caught up), at once for a new one.
    async fn declare_attachments(&mut self, state: &ClusterState, me: &str) {
        let running = match crate::attach::list_running(self.docker.engine()).await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "listing attached containers");
                return;
            }
        };
        let wanted = crate::attach::wanted(&running);
        if shoal_cluster::store::declared_attachments(state, me) == wanted {
            self.attachments_sent = None;
            return;
        }
        let now = std::time::Instant::now();
        if self
            .attachments_sent
            .as_ref()
            .is_some_and(|(sent, at)| *sent == wanted && now.duration_since(*at) < ATTACH_RESEND)
        {
            return;
        }
        self.attachments_sent = Some((wanted.clone(), now));
        match tokio::time::timeout(FETCH_TIMEOUT, self.client.set_attachments(wanted)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "declaring attached containers to the managers"),
            Err(_) => debug!("declaring attached containers timed out; retrying"),
        }
    }

    /// Fetches the node's state (and its services' registry credentials) from the
    /// managers, if the store moved since the state this executor has; tells them which
    /// store version this node's dataplane follows, and hears how far every node's has
    /// come.
    async fn fetch(&mut self) {
        let since = self.state.as_ref().map_or(0, |s| s.version);
        let readiness = self.ready.as_ref().map(|r| r.borrow().clone());
        self.reported = readiness.as_ref().map_or(0, |r| r.applied_version());
        let applied = self.applied.store_version(readiness.as_ref());
        // Bounded: a pooled connection that went stale in a partition would otherwise
        // hold the pass until TCP's retransmission backoff fires (tens of seconds after
        // the heal); the fetch is a read, so giving up on it is safe.
        match tokio::time::timeout(FETCH_TIMEOUT, self.client.fetch(since, applied)).await {
            Ok(Ok(fetched)) => {
                self.heard = Heard {
                    withdrawal: fetched.withdrawal,
                    at: std::time::Instant::now(),
                };
                if let Some(view) = fetched.view {
                    self.state = Some(view.state);
                    self.registry_auth = view.registry_auth;
                }
            }
            Ok(Err(e)) => {
                debug!(error = %e, "cannot fetch this node's tasks from the managers");
            }
            Err(_) => debug!("fetching this node's tasks timed out; retrying"),
        }
    }

    /// Reports to the managers the states in `updates` that move a task forward from
    /// `state`, the latest per task, each once.
    async fn report(&mut self, state: &ClusterState, mut updates: Vec<TaskStatusUpdate>) {
        // Only what moves a task forward in the store, once.
        updates.retain(|u| {
            let known = state.tasks.get(&u.task_id).map(|t| t.status.state);
            known.is_some_and(|k| u.status.state > k)
                && self.sent.get(&u.task_id) != Some(&u.status.state)
        });
        // Keep the latest state per task.
        let mut last: HashMap<String, TaskStatusUpdate> = HashMap::new();
        for u in updates {
            match last.get(&u.task_id) {
                Some(prev) if prev.status.state >= u.status.state => {}
                _ => {
                    last.insert(u.task_id.clone(), u);
                }
            }
        }
        if last.is_empty() {
            return;
        }
        let updates: Vec<TaskStatusUpdate> = last.into_values().collect();
        match self.client.report_tasks(updates.clone()).await {
            Ok(()) => {
                for u in updates {
                    self.sent.insert(u.task_id, u.status.state);
                }
                let live: HashSet<&String> = state.tasks.keys().collect();
                self.sent.retain(|id, _| live.contains(id));
            }
            Err(e) => warn!(error = %e, "reporting task states to the managers"),
        }
    }

    /// Publishes the node's declared state for `state` (and the gossip table) if it
    /// changed, one version on from the last; either way, the declared version in force
    /// now stands for `state`'s store version.
    fn declare(&mut self, state: &ClusterState, me: &str) {
        let table = self.gossip.settled_table(state, me);
        let mut computed = node_state::compute_with(state, me, table.as_deref());
        let conflicts = std::mem::take(&mut computed.address_conflicts);
        if conflicts != self.address_conflicts {
            for (network, ip) in conflicts.difference(&self.address_conflicts) {
                warn!(
                    network,
                    %ip,
                    "two endpoints claim one address: the newest task's kept"
                );
            }
            self.address_conflicts = conflicts;
        }
        let mut declared: DeclaredNode = computed.into();
        self.intent.send_if_modified(|old| {
            let last = old.as_ref().map_or(0, |d| d.version);
            declared.version = last;
            // The same state from a newer store version wakes no reconciler.
            declared.store_version = old.as_ref().map_or(0, |d| d.store_version);
            if old.as_deref() == Some(&declared) {
                return false;
            }
            declared.version = last + 1;
            declared.store_version = state.version;
            *old = Some(Arc::new(declared));
            true
        });
        let version = self.intent.borrow().as_ref().map_or(0, |d| d.version);
        self.applied.computed(version, state.version);
    }

    /// Waits (at most [`PEER_WAIT`]) until gossip has told this node of every task the
    /// store has running on `networks`, publishing the declared state as the news comes
    /// in, so a task started next finds its peers. A peer still unheard of after the
    /// wait is most likely on a failing node (the managers mark it down): the tasks
    /// start without it.
    async fn hear_peers(&mut self, state: &ClusterState, me: &str, networks: &BTreeSet<String>) {
        let Some(mut news) = self.gossip.watch() else {
            return;
        };
        news.borrow_and_update();
        let deadline = tokio::time::Instant::now() + PEER_WAIT;
        loop {
            // None: gossip has not caught up yet, and the store alone counts.
            let Some(table) = self.gossip.settled_table(state, me) else {
                return;
            };
            let unheard = node_state::unheard_peers(state, me, networks, &table);
            if unheard.is_empty() {
                return;
            }
            match tokio::time::timeout_at(deadline, news.changed()).await {
                Ok(Ok(())) => {
                    news.borrow_and_update();
                    self.declare(state, me);
                }
                Ok(Err(_)) => return,
                Err(_) => {
                    debug!(?unheard, "starting tasks before gossip told of these peers");
                    return;
                }
            }
        }
    }
}

/// Where the executor writes and how it reaches dockerd.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub docker_socket: PathBuf,
    /// The agent's dockerd event watch.
    pub events: DockerEvents,
    /// Where the node's declared state goes (the agent's pipeline).
    pub intent: Arc<IntentSender>,
    /// What the dataplane has made ready (tasks' processes wait for their network);
    /// None: no dataplane follows the declared state.
    pub ready: Option<ReadinessWatch>,
    /// Where gossip listens; None: no gossip (declared state from the store alone).
    pub gossip_listen: Option<std::net::SocketAddr>,
    /// Where the gossip member's status goes (`<data_dir>/gossip.json`).
    pub gossip_status: Option<PathBuf>,
    /// The node's WireGuard public key, registered with the gossip key (encrypted
    /// overlay networks), as it changes (rotations); None: the node takes part in none.
    pub wireguard_key: Option<tokio::sync::watch::Receiver<String>>,
    /// Where gossip's verdicts on which nodes this one reaches go (the pipeline drains
    /// their backends here); None: nowhere.
    pub reach: Option<shoal_gossip::ReachSender>,
    /// The resolver's address on the egress bridge: tasks with no network use it.
    pub egress_dns: Option<Ipv4Addr>,
    /// Where each pass's view of the node goes (the agent's metrics).
    pub report: Option<crate::node_report::ReportSender>,
    /// Where the tmpfs of tasks' secrets and configs is mounted; None: no tmpfs (tasks
    /// using secrets or configs are rejected).
    pub task_files_dir: Option<PathBuf>,
}

/// Connects to dockerd (retrying) and runs the executor for `client`'s node.
pub async fn run(client: NodeClient, config: ExecutorConfig) {
    let docker = loop {
        match DockerClient::connect(&config.docker_socket).await {
            Ok(d) => break d,
            Err(e) => {
                warn!(error = %e, "the task executor needs dockerd; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    Executor::new(client, docker, config.events, config.intent)
        .with_readiness(config.ready)
        .with_gossip(
            config.gossip_listen,
            config.gossip_status,
            config.wireguard_key,
            config.reach,
        )
        .with_egress_dns(config.egress_dns)
        .with_report(config.report)
        .with_task_files(config.task_files_dir)
        .run()
        .await
}
