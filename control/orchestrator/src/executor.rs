//! The executor: on every node of a cluster, runs the tasks the managers placed here on
//! the node's dockerd and reports what they do.
//!
//! ```text
//!   leader ──node_state(since)──▶ executor ──create/start/stop/remove──▶ dockerd
//!      ▲                              │  (a sandbox `<container>.sandbox` holding the
//!      │                              │   network namespace, then the task's container
//!      └──────report_tasks────────────┘   `<service>.<slot>.<task>` in it: --network
//!                                     │   container:<sandbox>, --init, task labels)
//!                                     └──▶ declared overlay/DNS/LB state (node_state),
//!                                          published to the agent's pipeline
//! ```
//! Each step: fetch the state when the store changed, write the node's declared state,
//! list the task containers and sandboxes (one call each, by label), start what should
//! run, stop and remove what should not (and containers of tasks that are no longer
//! this node's: a node that comes back after being Down cleans up), and report every
//! state a task reached that the store does not know yet. Steps run on dockerd events,
//! on a pull ending and on a short tick. A task's process starts only once the dataplane
//! has made its sandbox's network ready ([`crate::sandbox`]). Task states follow Swarm:
//! assigned, preparing (the image is checked and, when the node lacks it, pulled; the
//! sandbox and its network), starting (created and started; health check pending),
//! running (started, healthy if it has a check), then complete, failed (exit code,
//! unhealthy, sandbox gone) or rejected (the pull failed: the registry's error; network
//! not ready in time).
//!
//! Pulls run beside the passes, one per image (and per service whose registry
//! credentials it needs, `--with-registry-auth`): a pass that finds an image missing
//! starts its pull and reports the tasks `preparing`; the pull's end wakes the next pass,
//! which starts the tasks or rejects them with the pull's error.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use shoal_dataplane::reconcile::{
    dns::EGRESS_LISTENER,
    ready::{ReadinessWatch, Wanted},
    DeclaredNode,
};

use bollard::{
    models::{ContainerCreateBody, ContainerSummaryStateEnum, HealthConfig, HostConfig},
    query_parameters::{
        CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
    },
};
use futures::{stream, StreamExt};
use shoal_cluster::{
    manager::NodeClient,
    registry_auth::RegistryCredentials,
    store::{ClusterState, Service, Task, TaskState, TaskStatus, TaskStatusUpdate},
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    docker::DockerClient,
    events::{DockerEvents, Watched},
    image::{self, ImageRef},
    node_state,
    pipeline::IntentSender,
    sandbox::{self, image::SandboxImage, LABEL_SANDBOX_TASK_ID},
    scheduler::now_ms,
};

/// Labels on every task container (Swarm's keys, so tools that know them work).
pub const LABEL_TASK: &str = "com.docker.swarm.task";
pub const LABEL_TASK_ID: &str = "com.docker.swarm.task.id";
pub const LABEL_TASK_NAME: &str = "com.docker.swarm.task.name";
pub const LABEL_SERVICE_ID: &str = "com.docker.swarm.service.id";
pub const LABEL_SERVICE_NAME: &str = "com.docker.swarm.service.name";
pub const LABEL_NODE_ID: &str = "com.docker.swarm.node.id";
pub const LABEL_SLOT: &str = "shoal.task.slot";

/// Removes every container any shoal executor made on this dockerd, running or not
/// (`shoal agent cleanup`): task containers, then sandboxes. Task containers are told
/// apart by [`LABEL_SLOT`], shoal's own label (Swarm's labels alone would also match a
/// Docker Swarm's tasks), sandboxes by [`LABEL_SANDBOX_TASK_ID`]. Returns each
/// container's name with what happened to it; Err if they could not be listed.
pub async fn remove_all_task_containers(
    docker: &DockerClient,
) -> Result<Vec<(String, Result<(), String>)>, String> {
    let api = docker.engine();
    let mut out = Vec::new();
    for (label, what) in [
        (LABEL_SLOT, "task containers"),
        (LABEL_SANDBOX_TASK_ID, "task sandboxes"),
    ] {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![label.to_string()],
            )])),
            ..Default::default()
        };
        let list = api
            .list_containers(Some(options))
            .await
            .map_err(|e| format!("listing the {what}: {e}"))?;
        for c in list {
            let Some(id) = c.id else { continue };
            let name = c
                .names
                .and_then(|n| n.into_iter().next())
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_else(|| id.clone());
            let removed = api
                .remove_container(
                    &id,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(|e| e.to_string());
            out.push((name, removed));
        }
    }
    Ok(out)
}

/// How often the executor looks without an event.
const TICK: Duration = Duration::from_millis(200);
/// Containers created or removed at once.
const PARALLEL: usize = 32;
/// Events this close together make one pass.
const EVENT_COALESCE: Duration = Duration::from_millis(20);
/// Longest wait for the node's state from the managers before the pass goes on with
/// what it has.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Grace for a task's process on shutdown before it is killed.
const STOP_GRACE_SECS: i32 = 5;
/// Longest wait, before starting tasks, for gossip to tell of their running peers.
const PEER_WAIT: Duration = Duration::from_secs(5);

/// Longest an image pull may take before its tasks are rejected (a registry that
/// stops answering mid-pull must not hold them in `preparing` for ever).
const PULL_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// One pull: the image as the service names it, and the service whose registry
/// credentials it uses (None: pulled without credentials).
type PullKey = (String, Option<String>);

/// One task container as dockerd lists it.
#[derive(Debug, Clone)]
struct Observed {
    id: String,
    task_id: String,
    state: ContainerSummaryStateEnum,
    /// Docker's status line: `Up 3 seconds (healthy)`, `Exited (137) 2 seconds ago`.
    status: String,
}

impl Observed {
    fn health(&self) -> Option<&'static str> {
        if self.status.contains("(unhealthy)") {
            Some("unhealthy")
        } else if self.status.contains("(healthy)") {
            Some("healthy")
        } else if self.status.contains("(health: starting)") {
            Some("starting")
        } else {
            None
        }
    }

    fn exit_code(&self) -> Option<i64> {
        let rest = self.status.strip_prefix("Exited (")?;
        rest.split(')').next()?.parse().ok()
    }
}

/// A task's sandbox as dockerd lists it.
#[derive(Debug, Clone)]
struct ObservedSandbox {
    id: String,
    task_id: String,
    running: bool,
}

enum Action {
    Start {
        task: Box<Task>,
        service: Box<Service>,
        /// The container's nameserver: its first network's gateway, or the resolver
        /// on the egress bridge for a task with no network.
        dns: Option<Ipv4Addr>,
        /// Where that resolver listens: the first network's name, or the egress
        /// listener's ([`EGRESS_LISTENER`]); the task's start waits for it to serve.
        dns_network: Option<String>,
    },
    /// Stop and remove the task's container, then its sandbox. A task that has not
    /// ended is reported shut down, or failed with `failed`.
    Remove {
        container: String,
        sandbox: Option<String>,
        task: Option<Box<Task>>,
        failed: Option<String>,
    },
    /// Remove a sandbox whose task has no container and will not start one now.
    RemoveSandbox { sandbox: String },
}

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
        }
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
    ) -> Executor {
        self.gossip = crate::gossip_member::Member::new(listen).with_status_file(status);
        self
    }

    /// Runs until dropped (the agent aborts it when the node leaves the cluster).
    pub async fn run(mut self) {
        let mut events = self.events.subscribe();
        // On a manager, the local store applying a change is the cue; workers poll.
        let mut versions = self.client.subscribe();
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
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = store_changed => {}
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

    /// One pass: fetch, declare, converge, report.
    pub async fn step(&mut self) {
        let began = std::time::Instant::now();
        let since = self.state.as_ref().map_or(0, |s| s.version);
        // Bounded: a pooled connection that went stale in a partition would otherwise
        // hold the pass until TCP's retransmission backoff fires (tens of seconds after
        // the heal); the fetch is a read, so giving up on it is safe.
        match tokio::time::timeout(FETCH_TIMEOUT, self.client.node_state(since)).await {
            Ok(Ok(Some(view))) => {
                self.state = Some(view.state);
                self.registry_auth = view.registry_auth;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "cannot fetch this node's tasks from the managers");
            }
            Err(_) => debug!("fetching this node's tasks timed out; retrying"),
        }
        let Some(state) = self.state.clone() else {
            return;
        };
        let me = self.client.node_id().to_string();
        self.declare(&state, &me);
        let (observed, sandboxes) = match self.list().await {
            Ok(o) => o,
            Err(e) => {
                debug!(error = %e, "listing task containers");
                return;
            }
        };
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
        let mut updates: Vec<TaskStatusUpdate> = Vec::new();
        let mut actions = Vec::new();
        let by_task: HashMap<&str, &Observed> =
            observed.iter().map(|o| (o.task_id.as_str(), o)).collect();

        let sandbox_of: HashMap<&str, &ObservedSandbox> =
            sandboxes.iter().map(|s| (s.task_id.as_str(), s)).collect();

        // Containers that should not be here, and running ones whose sandbox (their
        // network) is gone.
        for o in &observed {
            let task = state.tasks.get(&o.task_id);
            let ours = task.is_some_and(|t| t.node_id.as_deref() == Some(me.as_str()));
            let keep = ours && task.is_some_and(|t| t.desired_state == TaskState::Running);
            let sandbox = sandbox_of.get(o.task_id.as_str());
            let network_lost = o.state == ContainerSummaryStateEnum::RUNNING
                && !sandbox.is_some_and(|s| s.running);
            if !keep || network_lost {
                actions.push(Action::Remove {
                    container: o.id.clone(),
                    sandbox: sandbox.map(|s| s.id.clone()),
                    task: task.filter(|_| ours).cloned().map(Box::new),
                    failed: (keep && network_lost)
                        .then(|| "task: its network sandbox stopped".to_owned()),
                });
            }
        }
        // Tasks that should run here.
        for t in state.tasks.values() {
            if t.node_id.as_deref() != Some(me.as_str()) {
                continue;
            }
            if t.desired_state != TaskState::Running {
                // Told to stop before it ever had a container here: it is shut down.
                if !t.status.state.is_terminal() && !by_task.contains_key(t.id.as_str()) {
                    updates.push(update(t, TaskState::Shutdown, "shutdown", None));
                }
                continue;
            }
            let Some(service) = state.services.get(&t.service_id) else {
                continue;
            };
            match by_task.get(t.id.as_str()) {
                None => {
                    if t.status.state.is_terminal() {
                        continue;
                    }
                    // Up to preparing: not started yet (a pull may be under way).
                    if t.status.state < TaskState::Starting {
                        let (dns, dns_network) = match t.networks.first() {
                            Some(a) => {
                                let first = state.networks.get(&a.network_id);
                                (first.and_then(|n| n.gateway), first.map(|n| n.name.clone()))
                            }
                            None => (
                                self.egress_dns,
                                self.egress_dns.map(|_| EGRESS_LISTENER.to_owned()),
                            ),
                        };
                        actions.push(Action::Start {
                            task: Box::new(t.clone()),
                            service: Box::new(service.clone()),
                            dns,
                            dns_network,
                        });
                    } else if t.status.state >= TaskState::Starting {
                        updates.push(update(
                            t,
                            TaskState::Failed,
                            "failed",
                            Some("task: the container is gone".into()),
                        ));
                    }
                }
                Some(o) => {
                    if let Some(u) = observe(t, o) {
                        updates.push(u);
                    }
                }
            }
        }

        // Sandboxes left without a task container (a start cut short, a container
        // removed behind the executor's back), except those a start makes again now.
        let starting: HashSet<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { task, .. } => Some(task.id.as_str()),
                _ => None,
            })
            .collect();
        let leftover: Vec<Action> = sandboxes
            .iter()
            .filter(|s| {
                !by_task.contains_key(s.task_id.as_str()) && !starting.contains(s.task_id.as_str())
            })
            .map(|s| Action::RemoveSandbox {
                sandbox: s.id.clone(),
            })
            .collect();
        actions.extend(leftover);

        // What a task starting now should find: the peers the store has running on its
        // networks, in the declared state its start waits to see applied.
        let starting_networks: BTreeSet<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { task, .. } => Some(task.networks.iter()),
                _ => None,
            })
            .flatten()
            .map(|a| a.network_id.clone())
            .collect();
        if !starting_networks.is_empty() {
            self.hear_peers(&state, &me, &starting_networks).await;
        }
        let version = self.intent.borrow().as_ref().map_or(0, |d| d.version);

        let prepared = began.elapsed();
        let count = actions.len();
        // One image check (and pull) per image, not per task; the sandbox image once.
        let mut images: HashMap<PullKey, ImageCheck> = HashMap::new();
        let mut sandbox_image: Result<(), String> = Ok(());
        if actions.iter().any(|a| matches!(a, Action::Start { .. })) {
            sandbox_image = match &self.sandbox_image {
                Ok(image) => sandbox::ensure_image(&self.docker, image).await,
                Err(e) => Err(e.clone()),
            };
        }
        for a in &actions {
            if let Action::Start { service, .. } = a {
                let key = self.pull_key(service);
                if let std::collections::hash_map::Entry::Vacant(slot) = images.entry(key) {
                    let check = self.prepare_image(slot.key()).await;
                    slot.insert(check);
                }
            }
        }
        // A pull that ended before this pass was looked at by it if a task needed it; a
        // later pass must not take a pruned image for one dockerd lost after a pull.
        self.pulled.clear();
        let images: HashMap<String, ImageCheck> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { service, .. } => {
                    let key = self.pull_key(service);
                    let check = images.get(&key)?.clone();
                    Some((service.id.clone(), check))
                }
                Action::Remove { .. } | Action::RemoveSandbox { .. } => None,
            })
            .collect();
        let prepared_start = Prepared {
            images,
            sandbox_image,
            ready: self.ready.clone(),
            version,
        };
        let docker = self.docker.clone();
        let node = me.clone();
        let prepared_start = &prepared_start;
        let results: Vec<Vec<TaskStatusUpdate>> = stream::iter(actions)
            .map(|a| act(&docker, &node, prepared_start, a))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        updates.extend(results.into_iter().flatten());
        if count > 0 {
            debug!(
                actions = count,
                prepare_ms = prepared.as_millis() as u64,
                total_ms = began.elapsed().as_millis() as u64,
                version = state.version,
                "executor pass"
            );
        }

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
    /// changed, one version on from the last.
    fn declare(&mut self, state: &ClusterState, me: &str) {
        let table = self.gossip.settled_table(state, me);
        let mut declared: DeclaredNode =
            node_state::compute_with(state, me, table.as_deref()).into();
        self.intent.send_if_modified(|old| {
            let last = old.as_ref().map_or(0, |d| d.version);
            declared.version = last;
            if old.as_deref() == Some(&declared) {
                return false;
            }
            declared.version = last + 1;
            *old = Some(Arc::new(declared));
            true
        });
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

    /// Which pull a service's image needs: with its credentials when it has some.
    fn pull_key(&self, service: &Service) -> PullKey {
        let with = self
            .registry_auth
            .contains_key(&service.id)
            .then(|| service.id.clone());
        (service.spec.image.clone(), with)
    }

    /// Whether the image of `key` is here; if it is missing, starts its pull (once).
    /// A pull that failed since the last pass gives its error, once.
    async fn prepare_image(&mut self, key: &PullKey) -> ImageCheck {
        let (reference, with) = key;
        let image = match ImageRef::parse(reference) {
            Ok(i) => i,
            Err(e) => return ImageCheck::Failed(e),
        };
        if let Some(err) = self.pull_failed.remove(key) {
            return ImageCheck::Failed(err);
        }
        if self.pulling.contains(key) {
            return ImageCheck::Pulling;
        }
        // dockerd takes the reference as the service gives it (`name:tag@digest` too).
        let found = self.docker.engine().inspect_image(reference).await;
        let just_pulled = self.pulled.remove(key);
        match found {
            Ok(i) => ImageCheck::Present {
                healthcheck: i
                    .config
                    .and_then(|c| c.healthcheck)
                    .and_then(|h| h.test)
                    .is_some_and(|t| t.first().map(String::as_str) != Some("NONE")),
            },
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) if just_pulled => {
                // Pulling again would loop for ever.
                ImageCheck::Failed(format!(
                    "pulled {reference}, but dockerd does not find it under that name"
                ))
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                let creds = with
                    .as_ref()
                    .and_then(|s| self.registry_auth.get(s))
                    .cloned();
                info!(%image, credentials = creds.is_some(), "pulling an image");
                self.pulling.insert(key.clone());
                let docker = self.docker.clone();
                let done = self.pull_done_tx.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let pulled = tokio::time::timeout(
                        PULL_TIMEOUT,
                        image::pull(&docker, &image, creds.as_ref()),
                    )
                    .await
                    .unwrap_or_else(|_| Err(format!("no end within {} s", PULL_TIMEOUT.as_secs())))
                    // The registry's words, with the image they are about.
                    .map_err(|e| format!("pulling {image}: {e}"));
                    // The executor may be gone (the node left): nothing to tell then.
                    let _ = done.send((key, pulled));
                });
                ImageCheck::Pulling
            }
            Err(other) => ImageCheck::Failed(format!("checking image {reference}: {other}")),
        }
    }

    /// A pull ended: its failure waits for the next pass to reject the tasks with it.
    fn pull_ended(&mut self, key: PullKey, result: Result<(), String>) {
        self.pulling.remove(&key);
        match result {
            Ok(()) => {
                info!(image = %key.0, "image pulled");
                self.pulled.insert(key);
            }
            Err(err) => {
                warn!(image = %key.0, %err, "image pull failed");
                self.pull_failed.insert(key, err);
            }
        }
    }

    /// The task containers and the sandboxes on this node.
    async fn list(&self) -> Result<(Vec<Observed>, Vec<ObservedSandbox>), bollard::errors::Error> {
        let labelled = |label: &str| ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![label.to_string()],
            )])),
            ..Default::default()
        };
        let api = self.docker.engine();
        let tasks = api.list_containers(Some(labelled(LABEL_TASK_ID))).await?;
        let sandboxes = api
            .list_containers(Some(labelled(LABEL_SANDBOX_TASK_ID)))
            .await?;
        let tasks = tasks
            .into_iter()
            .filter_map(|c| {
                let task_id = c.labels.as_ref()?.get(LABEL_TASK_ID)?.clone();
                Some(Observed {
                    id: c.id?,
                    task_id,
                    state: c.state.unwrap_or(ContainerSummaryStateEnum::EMPTY),
                    status: c.status.unwrap_or_default(),
                })
            })
            .collect();
        let sandboxes = sandboxes
            .into_iter()
            .filter_map(|c| {
                let task_id = c.labels.as_ref()?.get(LABEL_SANDBOX_TASK_ID)?.clone();
                Some(ObservedSandbox {
                    id: c.id?,
                    task_id,
                    running: c.state == Some(ContainerSummaryStateEnum::RUNNING),
                })
            })
            .collect();
        Ok((tasks, sandboxes))
    }
}

fn update(t: &Task, state: TaskState, message: &str, err: Option<String>) -> TaskStatusUpdate {
    TaskStatusUpdate {
        task_id: t.id.clone(),
        status: TaskStatus {
            state,
            timestamp_ms: now_ms(),
            message: message.to_string(),
            err,
            container_id: t.status.container_id.clone(),
            exit_code: None,
        },
    }
}

/// What a listed container says about its task.
fn observe(t: &Task, o: &Observed) -> Option<TaskStatusUpdate> {
    let mut u = match o.state {
        ContainerSummaryStateEnum::RUNNING => match o.health() {
            Some("unhealthy") => update(
                t,
                TaskState::Failed,
                "failed",
                Some("task: container unhealthy".into()),
            ),
            Some("starting") => update(t, TaskState::Starting, "starting", None),
            _ => update(t, TaskState::Running, "started", None),
        },
        ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD => {
            let code = o.exit_code();
            let mut u = match code {
                Some(0) => update(t, TaskState::Complete, "finished", None),
                Some(c) => update(
                    t,
                    TaskState::Failed,
                    "failed",
                    Some(format!("task: non-zero exit ({c})")),
                ),
                None => update(
                    t,
                    TaskState::Failed,
                    "failed",
                    Some("task: the container died".into()),
                ),
            };
            u.status.exit_code = code;
            u
        }
        _ => return None,
    };
    u.status.container_id = Some(o.id.clone());
    Some(u)
}

/// Where a task's image stands on this node.
#[derive(Debug, Clone)]
enum ImageCheck {
    /// Here; `healthcheck`: the image declares a health check of its own.
    Present { healthcheck: bool },
    /// Being pulled: the task waits in `preparing`.
    Pulling,
    /// It cannot be had: the task is rejected with this (the registry's words for a
    /// failed pull).
    Failed(String),
}

/// What every start of one pass shares: the image checks, whether the sandbox image is
/// loaded, and the dataplane's readiness.
struct Prepared {
    /// By service ID.
    images: HashMap<String, ImageCheck>,
    sandbox_image: Result<(), String>,
    ready: Option<ReadinessWatch>,
    /// The declared state's version that holds the tasks' peers.
    version: u64,
}

/// Does one action; returns the task states it reached.
async fn act(
    docker: &DockerClient,
    node: &str,
    prepared: &Prepared,
    action: Action,
) -> Vec<TaskStatusUpdate> {
    match action {
        Action::RemoveSandbox { sandbox } => {
            if let Err(e) = sandbox::remove(docker, &sandbox).await {
                debug!(error = %e, "removing a sandbox left without its task");
            }
            Vec::new()
        }
        Action::Remove {
            container,
            sandbox,
            task,
            failed,
        } => {
            let api = docker.engine();
            let _ = api
                .stop_container(
                    &container,
                    Some(StopContainerOptions {
                        t: Some(STOP_GRACE_SECS),
                        signal: None,
                    }),
                )
                .await;
            if let Err(e) = api
                .remove_container(
                    &container,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await
            {
                debug!(container, error = %e, "removing a task container");
            }
            if let Some(s) = sandbox {
                if let Err(e) = sandbox::remove(docker, &s).await {
                    debug!(error = %e, "removing a task's sandbox");
                }
            }
            match (task, failed) {
                (Some(t), Some(err)) if !t.status.state.is_terminal() => {
                    warn!(task = %t.id, %err, "task failed");
                    let mut u = update(&t, TaskState::Failed, "failed", Some(err));
                    u.status.container_id = Some(container);
                    vec![u]
                }
                (Some(t), None) if !t.status.state.is_terminal() => {
                    vec![update(&t, TaskState::Shutdown, "shutdown", None)]
                }
                _ => Vec::new(),
            }
        }
        Action::Start {
            task,
            service,
            dns,
            dns_network,
        } => {
            let image = prepared
                .images
                .get(&service.id)
                .cloned()
                .unwrap_or_else(|| ImageCheck::Failed("the image was not checked".into()));
            let network = Network {
                dns,
                dns_network,
                sandbox_image: prepared.sandbox_image.clone(),
                ready: prepared.ready.clone(),
                version: prepared.version,
            };
            start(docker, node, &task, &service, network, image).await
        }
    }
}

/// What a start needs for the task's network.
struct Network {
    /// The resolver in the task's resolv.conf.
    dns: Option<Ipv4Addr>,
    /// Where that resolver listens (a network's name or [`EGRESS_LISTENER`]).
    dns_network: Option<String>,
    /// Whether the sandbox image is loaded, or why not.
    sandbox_image: Result<(), String>,
    ready: Option<ReadinessWatch>,
    /// The declared state's version the dataplane must have applied first.
    version: u64,
}

async fn start(
    docker: &DockerClient,
    node: &str,
    t: &Task,
    service: &Service,
    network: Network,
    image: ImageCheck,
) -> Vec<TaskStatusUpdate> {
    let api = docker.engine();
    let spec = &service.spec;
    let mut out = vec![update(t, TaskState::Preparing, "preparing", None)];
    let image_healthcheck = match image {
        ImageCheck::Present { healthcheck } => healthcheck,
        ImageCheck::Pulling => return out,
        ImageCheck::Failed(err) => {
            warn!(task = %t.id, %err, "task rejected");
            out.push(update(t, TaskState::Rejected, "rejected", Some(err)));
            return out;
        }
    };
    let name = t.container_name(&spec.name);
    let sandbox = match start_sandbox(docker, t, service, &name, network).await {
        Ok(s) => s,
        Err(err) => {
            warn!(task = %t.id, %err, "task rejected");
            out.push(update(t, TaskState::Rejected, "rejected", Some(err)));
            return out;
        }
    };
    let labels = HashMap::from([
        (LABEL_TASK.to_string(), String::new()),
        (LABEL_TASK_ID.to_string(), t.id.clone()),
        (LABEL_TASK_NAME.to_string(), name.clone()),
        (LABEL_SERVICE_ID.to_string(), service.id.clone()),
        (LABEL_SERVICE_NAME.to_string(), spec.name.clone()),
        (LABEL_NODE_ID.to_string(), node.to_string()),
        (LABEL_SLOT.to_string(), t.slot.to_string()),
    ]);
    let ns = |ms: u64| (ms > 0).then(|| (ms as i64).saturating_mul(1_000_000));
    let healthcheck = spec.healthcheck.as_ref().map(|h| HealthConfig {
        test: Some(h.test.clone()),
        interval: ns(h.interval_ms),
        timeout: ns(h.timeout_ms),
        retries: (h.retries > 0).then_some(h.retries as i64),
        start_period: ns(h.start_period_ms),
        start_interval: None,
    });
    // Hostname and resolv.conf come from the sandbox (Docker refuses them on a
    // container that joins another's namespace).
    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        labels: Some(labels),
        healthcheck,
        host_config: Some(HostConfig {
            network_mode: Some(format!("container:{}", sandbox.id)),
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = api
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body,
        )
        .await;
    let id = match created {
        Ok(r) => r.id,
        Err(e) => {
            if let Err(e) = sandbox::remove(docker, &sandbox.id).await {
                debug!(error = %e, "removing the sandbox of a task that could not be created");
            }
            out.push(update(
                t,
                TaskState::Rejected,
                "rejected",
                Some(format!("creating container {name}: {e}")),
            ));
            return out;
        }
    };
    let mut starting = update(t, TaskState::Starting, "starting", None);
    starting.status.container_id = Some(id.clone());
    out.push(starting);
    if let Err(e) = api.start_container(&id, None).await {
        let mut failed = update(
            t,
            TaskState::Failed,
            "failed",
            Some(format!("starting container failed: {e}")),
        );
        failed.status.container_id = Some(id);
        out.push(failed);
        return out;
    }
    info!(task = %t.id, container = %name, "task started");
    if spec
        .healthcheck
        .as_ref()
        .is_none_or(|h| h.test.first().map(String::as_str) == Some("NONE"))
    {
        // No health check of its own: may the image have one? The next listing says.
        let mut running = update(t, TaskState::Running, "started", None);
        running.status.container_id = Some(id);
        if spec.healthcheck.is_some() || !image_healthcheck {
            out.push(running);
        }
    }
    out
}

/// Makes the task's sandbox and, when something plumbs it, waits until its network is
/// ready; a sandbox whose network is not ready in time is removed again.
async fn start_sandbox(
    docker: &DockerClient,
    t: &Task,
    service: &Service,
    container: &str,
    network: Network,
) -> Result<sandbox::Started, String> {
    network.sandbox_image?;
    let spec = sandbox::Spec {
        name: sandbox::name(container),
        task_id: t.id.clone(),
        service_name: service.spec.name.clone(),
        hostname: t.id.chars().take(12).collect(),
        dns: network.dns,
    };
    let started = sandbox::start(docker, &spec).await?;
    let Some(mut ready) = network.ready else {
        return Ok(started);
    };
    let wanted = Wanted {
        container: spec.name.clone(),
        netns_id: started.netns_id,
        on_overlay: !t.networks.is_empty(),
        dns_network: network.dns_network,
        version: network.version,
    };
    let waited = std::time::Instant::now();
    match sandbox::wait_ready(&mut ready, &wanted).await {
        Ok(()) => {
            debug!(task = %t.id, ms = waited.elapsed().as_millis() as u64, "task's network ready");
            Ok(started)
        }
        Err(e) => {
            if let Err(e) = sandbox::remove(docker, &started.id).await {
                debug!(error = %e, "removing a sandbox whose network was not ready");
            }
            Err(format!("task: {e}"))
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
    /// The resolver's address on the egress bridge: tasks with no network use it.
    pub egress_dns: Option<Ipv4Addr>,
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
        .with_gossip(config.gossip_listen, config.gossip_status)
        .with_egress_dns(config.egress_dns)
        .run()
        .await
}
