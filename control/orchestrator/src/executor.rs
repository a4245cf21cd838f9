//! The executor: on every node of a cluster, runs the tasks the managers placed here on
//! the node's dockerd and reports what they do.
//!
//! ```text
//!   leader ──node_state(since)──▶ executor ──create/start/stop/remove──▶ dockerd
//!      ▲                              │  (containers `<service>.<slot>.<task>`,
//!      └──────report_tasks────────────┘   --network none, --init, task labels)
//!                                     └──▶ declared overlay/DNS/LB state (node_state),
//!                                          published to the agent's pipeline
//! ```
//! Each step: fetch the state when the store changed, write the node's declared state,
//! list the task containers (one call, by label), start what should run, stop and
//! remove what should not (and containers of tasks that are no longer this node's: a
//! node that comes back after being Down cleans up), and report every state a task
//! reached that the store does not know yet. Steps run on dockerd events, on a pull
//! ending and on a short tick. Task states follow Swarm: assigned, preparing (the image
//! is checked and, when the node lacks it, pulled), starting (created and started;
//! health check pending), running (started, healthy if it has a check), then complete,
//! failed (exit code, unhealthy) or rejected (the pull failed: the registry's error).
//!
//! Pulls run beside the passes, one per image (and per service whose registry
//! credentials it needs, `--with-registry-auth`): a pass that finds an image missing
//! starts its pull and reports the tasks `preparing`; the pull's end wakes the next pass,
//! which starts the tasks or rejects them with the pull's error.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use shoal_dataplane::reconcile::DeclaredNode;

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
/// (`shoal agent cleanup`). They are told apart by [`LABEL_SLOT`], shoal's own label:
/// Swarm's labels alone would also match a Docker Swarm's tasks. Returns each
/// container's name with what happened to it; Err if they could not be listed.
pub async fn remove_all_task_containers(
    docker: &DockerClient,
) -> Result<Vec<(String, Result<(), String>)>, String> {
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![LABEL_SLOT.to_string()],
        )])),
        ..Default::default()
    };
    let api = docker.engine();
    let list = api
        .list_containers(Some(options))
        .await
        .map_err(|e| format!("listing the task containers: {e}"))?;
    let mut out = Vec::new();
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

enum Action {
    Start {
        task: Box<Task>,
        service: Box<Service>,
        /// The container's nameserver: its first network's gateway, or the resolver
        /// on the egress bridge for a task with no network.
        dns: Option<Ipv4Addr>,
    },
    /// Stop and remove; `report` says whether the task should be reported shut down.
    Remove {
        container: String,
        task: Option<Box<Task>>,
    },
}

/// The node's executor.
pub struct Executor {
    client: NodeClient,
    docker: DockerClient,
    /// Where the node's declared state goes (the agent's pipeline).
    intent: Arc<IntentSender>,
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
        let table = self.gossip.settled_table(&state, &me);
        let declared: DeclaredNode = node_state::compute_with(&state, &me, table.as_deref()).into();
        self.intent.send_if_modified(|old| {
            if old.as_deref() == Some(&declared) {
                return false;
            }
            *old = Some(Arc::new(declared));
            true
        });
        let observed = match self.list().await {
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

        // Containers that should not be here.
        for o in &observed {
            let task = state.tasks.get(&o.task_id);
            let ours = task.is_some_and(|t| t.node_id.as_deref() == Some(me.as_str()));
            let keep = ours && task.is_some_and(|t| t.desired_state == TaskState::Running);
            if !keep {
                actions.push(Action::Remove {
                    container: o.id.clone(),
                    task: task.filter(|_| ours).cloned().map(Box::new),
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
                        let dns = match t.networks.first() {
                            Some(a) => state.networks.get(&a.network_id).and_then(|n| n.gateway),
                            None => self.egress_dns,
                        };
                        actions.push(Action::Start {
                            task: Box::new(t.clone()),
                            service: Box::new(service.clone()),
                            dns,
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

        let prepared = began.elapsed();
        let count = actions.len();
        // One image check (and pull) per image, not per task.
        let mut images: HashMap<PullKey, ImageCheck> = HashMap::new();
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
                Action::Remove { .. } => None,
            })
            .collect();
        let docker = self.docker.clone();
        let node = me.clone();
        let images = &images;
        let results: Vec<Vec<TaskStatusUpdate>> = stream::iter(actions)
            .map(|a| act(&docker, &node, images, a))
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

    async fn list(&self) -> Result<Vec<Observed>, bollard::errors::Error> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![LABEL_TASK_ID.to_string()],
            )])),
            ..Default::default()
        };
        let list = self.docker.engine().list_containers(Some(options)).await?;
        Ok(list
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
            .collect())
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

/// Does one action; returns the task states it reached.
async fn act(
    docker: &DockerClient,
    node: &str,
    images: &HashMap<String, ImageCheck>,
    action: Action,
) -> Vec<TaskStatusUpdate> {
    match action {
        Action::Remove { container, task } => {
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
            match task {
                Some(t) if !t.status.state.is_terminal() => {
                    vec![update(&t, TaskState::Shutdown, "shutdown", None)]
                }
                _ => Vec::new(),
            }
        }
        Action::Start { task, service, dns } => {
            let image = images
                .get(&service.id)
                .cloned()
                .unwrap_or_else(|| ImageCheck::Failed("the image was not checked".into()));
            start(docker, node, &task, &service, dns, image).await
        }
    }
}

async fn start(
    docker: &DockerClient,
    node: &str,
    t: &Task,
    service: &Service,
    dns: Option<Ipv4Addr>,
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
    let dns = dns.map(|g| vec![g.to_string()]);
    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        labels: Some(labels),
        healthcheck,
        hostname: Some(t.id.chars().take(12).collect()),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            init: Some(true),
            dns,
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

/// Where the executor writes and how it reaches dockerd.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub docker_socket: PathBuf,
    /// The agent's dockerd event watch.
    pub events: DockerEvents,
    /// Where the node's declared state goes (the agent's pipeline).
    pub intent: Arc<IntentSender>,
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
        .with_gossip(config.gossip_listen, config.gossip_status)
        .with_egress_dns(config.egress_dns)
        .run()
        .await
}
