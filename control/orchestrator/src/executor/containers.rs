//! Task containers on dockerd: listing them and their sandboxes, reading a task's state
//! off its container, and carrying out a pass's actions.
//!
//! A start creates the task's sandbox (`<container>.sandbox`, holding the network
//! namespace); then starts it and waits until the dataplane has made its network ready
//! ([`crate::sandbox`]) while it creates the task's container `<service>.<slot>.<task>`
//! in it (`--network container:<sandbox>`, settings from `config`), which it starts
//! once both are done. A removal stops and removes the container, then its sandbox.

use std::{collections::HashMap, net::Ipv4Addr};

use bollard::{
    models::ContainerSummaryStateEnum,
    query_parameters::{
        CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
    },
};
use futures::{stream, StreamExt};
use shoal_cluster::store::{
    Service, Task, TaskState, TaskStatus, TaskStatusUpdate, DEFAULT_STOP_GRACE_MS,
};
use shoal_dataplane::reconcile::ready::{ReadinessWatch, Wanted};
use tracing::{debug, info, warn};

use super::{
    config::{self, NodeIdentity, Resolver},
    images::ImageCheck,
    plan::Action,
    withdrawal::Released,
    Executor,
};
use crate::{
    docker::DockerClient,
    sandbox::{self, LABEL_SANDBOX_TASK_ID},
    scheduler::now_ms,
};

/// shoal's own label on every task container it makes: the task's ID. Only containers
/// with it are the executor's to stop and remove (Swarm's labels below alone would also
/// match a Docker Swarm's tasks, or anyone's container that carries them).
pub const LABEL_SHOAL_TASK_ID: &str = "shoal.task.id";
/// Labels on every task container (Swarm's keys, so tools that know them work).
pub const LABEL_TASK: &str = "com.docker.swarm.task";
pub const LABEL_TASK_ID: &str = "com.docker.swarm.task.id";
pub const LABEL_TASK_NAME: &str = "com.docker.swarm.task.name";
pub const LABEL_SERVICE_ID: &str = "com.docker.swarm.service.id";
pub const LABEL_SERVICE_NAME: &str = "com.docker.swarm.service.name";
pub const LABEL_NODE_ID: &str = "com.docker.swarm.node.id";
/// shoal's too; agents before [`LABEL_SHOAL_TASK_ID`] put it on every task container
/// they made, which is how such a container is told apart ([`super::legacy`]).
pub const LABEL_SLOT: &str = "shoal.task.slot";

/// Containers created or removed at once.
const PARALLEL: usize = 32;

/// One task container as dockerd lists it.
#[derive(Debug, Clone)]
pub(super) struct Observed {
    pub(super) id: String,
    pub(super) task_id: String,
    pub(super) state: ContainerSummaryStateEnum,
    /// Docker's status line: `Up 3 seconds (healthy)`, `Exited (137) 2 seconds ago`.
    status: String,
}

impl Observed {
    /// A running container of task `task_id` (tests of what is decided from listings).
    #[cfg(test)]
    pub(super) fn running(id: &str, task_id: &str) -> Self {
        Self {
            id: id.into(),
            task_id: task_id.into(),
            state: ContainerSummaryStateEnum::RUNNING,
            status: "Up 3 seconds".into(),
        }
    }

    /// A container of task `task_id` made and never started.
    #[cfg(test)]
    pub(super) fn created(id: &str, task_id: &str) -> Self {
        Self {
            id: id.into(),
            task_id: task_id.into(),
            state: ContainerSummaryStateEnum::CREATED,
            status: "Created".into(),
        }
    }

    pub(super) fn health(&self) -> Option<&'static str> {
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
pub(super) struct ObservedSandbox {
    pub(super) id: String,
    pub(super) task_id: String,
    pub(super) running: bool,
}

/// What dockerd lists of the executor's containers on this node.
pub(super) struct Listing {
    /// Task containers with shoal's own label.
    pub(super) tasks: Vec<Observed>,
    /// Task containers an agent made before that label (Swarm's task labels and shoal's
    /// slot label only): adopted only as [`super::legacy`] says.
    pub(super) legacy: Vec<Observed>,
    pub(super) sandboxes: Vec<ObservedSandbox>,
}

impl Executor {
    /// The task containers and the sandboxes on this node.
    pub(super) async fn list(&self) -> Result<Listing, bollard::errors::Error> {
        let labelled = |label: &str| ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![label.to_string()],
            )])),
            ..Default::default()
        };
        let api = self.docker.engine();
        let tasks = api
            .list_containers(Some(labelled(LABEL_SHOAL_TASK_ID)))
            .await?;
        let slotted = api.list_containers(Some(labelled(LABEL_SLOT))).await?;
        let sandboxes = api
            .list_containers(Some(labelled(LABEL_SANDBOX_TASK_ID)))
            .await?;
        let observed = |c: bollard::models::ContainerSummary, label: &str| {
            let task_id = c.labels.as_ref()?.get(label)?.clone();
            Some(Observed {
                id: c.id?,
                task_id,
                state: c.state.unwrap_or(ContainerSummaryStateEnum::EMPTY),
                status: c.status.unwrap_or_default(),
            })
        };
        let legacy = slotted
            .into_iter()
            .filter(|c| {
                c.labels
                    .as_ref()
                    .is_some_and(|l| !l.contains_key(LABEL_SHOAL_TASK_ID))
            })
            .filter_map(|c| observed(c, LABEL_TASK_ID))
            .collect();
        let tasks = tasks
            .into_iter()
            .filter_map(|c| observed(c, LABEL_SHOAL_TASK_ID))
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
        Ok(Listing {
            tasks,
            legacy,
            sandboxes,
        })
    }
}

/// A task status update for `t`: `state`, with `message` and `err`.
pub(super) fn update(
    t: &Task,
    state: TaskState,
    message: &str,
    err: Option<String>,
) -> TaskStatusUpdate {
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
pub(super) fn observe(t: &Task, o: &Observed) -> Option<TaskStatusUpdate> {
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

/// What every start of one pass shares: the image checks, whether the sandbox image is
/// loaded, and the dataplane's readiness.
pub(super) struct Prepared {
    /// The node the tasks start on (their hostname templates may name it).
    pub(super) node: NodeIdentity,
    /// By service ID.
    pub(super) images: HashMap<String, ImageCheck>,
    pub(super) sandbox_image: Result<(), String>,
    pub(super) ready: Option<ReadinessWatch>,
    /// The declared state's version that holds the tasks' peers.
    pub(super) version: u64,
    /// By task ID: the bind mounts of its secrets' and configs' files, or why they
    /// could not be written (the task is rejected).
    pub(super) files: HashMap<String, Result<Vec<bollard::models::Mount>, String>>,
}

/// Carries out `actions`, [`PARALLEL`] at a time; returns the task states they reached.
pub(super) async fn act_all(
    docker: &DockerClient,
    prepared: &Prepared,
    actions: Vec<Action>,
) -> Vec<TaskStatusUpdate> {
    let results: Vec<Vec<TaskStatusUpdate>> = stream::iter(actions)
        .map(|a| act(docker, prepared, a))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    results.into_iter().flatten().collect()
}

/// Does one action; returns the task states it reached.
async fn act(docker: &DockerClient, prepared: &Prepared, action: Action) -> Vec<TaskStatusUpdate> {
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
            released,
            ..
        } => {
            let api = docker.engine();
            // `--stop-grace-period` of the task's own spec: SIGTERM, then SIGKILL after it.
            let grace_ms = task
                .as_ref()
                .and_then(|t| t.spec.as_ref())
                .map_or(DEFAULT_STOP_GRACE_MS, |s| s.stop_grace_ms);
            let grace_secs = i32::try_from(grace_ms.div_ceil(1000)).unwrap_or(i32::MAX);
            if let Some(r) = released {
                log_release(task.as_deref(), &container, r);
            }
            let _ = api
                .stop_container(
                    &container,
                    Some(StopContainerOptions {
                        t: Some(grace_secs),
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
            leftover_sandbox,
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
                leftover_sandbox,
            };
            let files = prepared
                .files
                .get(&task.id)
                .cloned()
                .unwrap_or_else(|| Ok(Vec::new()));
            start(
                docker,
                &prepared.node,
                &task,
                &service,
                network,
                image,
                files,
            )
            .await
        }
    }
}

/// Says, as a held stop's SIGTERM goes out, how long the task took to be withdrawn on
/// every node after it was told to stop, and how long from then to the SIGTERM.
fn log_release(task: Option<&Task>, container: &str, r: Released) {
    let now = std::time::Instant::now();
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    // None (not recorded): a container whose task the store no longer gives this node.
    let task = task.map(|t| t.id.as_str());
    match r.withdrawn {
        Some(w) => info!(
            task,
            container,
            told_to_withdrawn_ms = ms(w.saturating_duration_since(r.told)),
            withdrawn_to_sigterm_ms = ms(now.saturating_duration_since(w)),
            "task withdrawn on every node; stopping it"
        ),
        None => info!(
            task,
            container,
            told_to_sigterm_ms = ms(now.saturating_duration_since(r.told)),
            "task not withdrawn on every node in time; stopping it anyway"
        ),
    }
}

/// What a start needs for the task's network.
struct Network {
    /// The resolver in the task's resolv.conf.
    dns: Option<Ipv4Addr>,
    /// Where that resolver listens (a network's name or
    /// [`EGRESS_LISTENER`](shoal_dataplane::reconcile::dns::EGRESS_LISTENER)).
    dns_network: Option<String>,
    /// Whether the sandbox image is loaded, or why not.
    sandbox_image: Result<(), String>,
    ready: Option<ReadinessWatch>,
    /// The declared state's version the dataplane must have applied first.
    version: u64,
    /// A sandbox of the task's that dockerd listed (a start cut short): removed first.
    leftover_sandbox: Option<String>,
}

async fn start(
    docker: &DockerClient,
    node: &NodeIdentity,
    t: &Task,
    service: &Service,
    network: Network,
    image: ImageCheck,
    files: Result<Vec<bollard::models::Mount>, String>,
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
    let mounts = match files {
        Ok(m) => m,
        Err(err) => {
            warn!(task = %t.id, %err, "task rejected");
            out.push(update(t, TaskState::Rejected, "rejected", Some(err)));
            return out;
        }
    };
    let name = t.container_name(&spec.name);
    let t0 = std::time::Instant::now();
    let sandbox = match create_sandbox(docker, t, service, &name, node, &network).await {
        Ok(s) => s,
        Err(err) => {
            warn!(task = %t.id, %err, "task rejected");
            out.push(update(t, TaskState::Rejected, "rejected", Some(err)));
            return out;
        }
    };
    let t_sandbox = t0.elapsed();
    // The task's container is made while its sandbox starts and the dataplane plumbs
    // it (dockerd needs the sandbox to exist, not to run, to make a container that
    // joins it); it starts only once the network is ready.
    let body = config::task_container(t, service, &name, &node.id, &sandbox.1, mounts);
    let create = async {
        let created = api
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await;
        (created, t0.elapsed())
    };
    let ready = async {
        let r = ready_sandbox(docker, t, &sandbox.0, &sandbox.1, network).await;
        (r, t0.elapsed())
    };
    let ((ready, t_ready), (created, t_created)) = tokio::join!(ready, create);
    let id = match (ready, created) {
        (Ok(_), Ok(r)) => r.id,
        (Err(err), created) => {
            // The sandbox is removed already; the container made for it goes too.
            if let Ok(r) = created {
                remove_unstarted(docker, &r.id).await;
            }
            warn!(task = %t.id, %err, "task rejected");
            out.push(update(t, TaskState::Rejected, "rejected", Some(err)));
            return out;
        }
        (Ok(_), Err(e)) => {
            if let Err(e) = sandbox::remove(docker, &sandbox.1).await {
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
    // Where the start's time went (from the start of this action; docs/benchmarks.md).
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    info!(
        task = %t.id,
        container = %name,
        sandbox_created_ms = ms(t_sandbox),
        network_ready_ms = ms(t_ready),
        container_created_ms = ms(t_created),
        started_ms = ms(t0.elapsed()),
        "task started"
    );
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

/// Creates the task's sandbox (not started): its spec and its ID.
async fn create_sandbox(
    docker: &DockerClient,
    t: &Task,
    service: &Service,
    container: &str,
    node: &NodeIdentity,
    network: &Network,
) -> Result<(sandbox::Spec, String), String> {
    network.sandbox_image.clone()?;
    let resolver = Resolver {
        addr: network.dns,
        on_overlay: !t.networks.is_empty(),
    };
    let spec = config::sandbox_spec(t, service, container, node, resolver)?;
    let id = sandbox::create(docker, &spec, network.leftover_sandbox.as_deref()).await?;
    Ok((spec, id))
}

/// Removes a task container that was made but never started.
async fn remove_unstarted(docker: &DockerClient, id: &str) {
    let removed = docker
        .engine()
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    if let Err(e) = removed {
        debug!(container = id, error = %e, "removing the container of a task whose network was not ready");
    }
}

/// Starts the created sandbox `id` and, when something plumbs it, waits until its
/// network is ready; a sandbox that does not start, or whose network is not ready in
/// time, is removed again.
async fn ready_sandbox(
    docker: &DockerClient,
    t: &Task,
    spec: &sandbox::Spec,
    id: &str,
    network: Network,
) -> Result<sandbox::Started, String> {
    let started = sandbox::start(docker, spec, id).await?;
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
