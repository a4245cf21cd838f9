//! Services and tasks as the store keeps them (Swarm's model).
//!
//! A [`Service`] is the declared intent (`service create`); a [`Task`] is one slot of it
//! placed on one node: the scheduler on the leader creates tasks and sets their
//! *desired* state, the node's executor reports their *observed* [`TaskStatus`]. Tasks
//! that ended stay as history (`service ps`) until pruned.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::container::ContainerOptions;
use super::data_object::FileReference;
use crate::registry_auth::SealedCredentials;

/// A service: its spec plus what the managers allocated for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub spec: ServiceSpec,
    /// Milliseconds since the epoch, chosen by the proposer.
    #[serde(default)]
    pub created_ms: u64,
    #[serde(default)]
    pub updated_ms: u64,
    /// The virtual IPs the scheduler allocated (vip mode), one per network.
    #[serde(default)]
    pub endpoint: Endpoint,
    /// Raised by `service update --force`: tasks made for an older value are replaced.
    #[serde(default)]
    pub force_update: u64,
    /// `--with-registry-auth`: the credentials for the image's registry, sealed by the
    /// manager that took the request (see [`crate::registry_auth`]); only managers can
    /// open them, and the leader hands them to the nodes running this service's tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<SealedCredentials>,
    /// The spec before the latest `service update` (what `service rollback` returns to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<ServiceSpec>,
    /// A job's run (Swarm's `JobStatus`): every change of a job service starts a new
    /// iteration, whose tasks run to completion once. None for other modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_status: Option<JobStatus>,
    /// The rolling update (or rollback) in progress or last finished, as Swarm's
    /// `UpdateStatus`. Store state, so a new leader carries on where the old one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatus>,
    /// Store version at this object's last change (set by `apply`, ignored on input).
    #[serde(default)]
    pub version: u64,
}

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Unique among services.
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub image: String,
    /// Arguments after the image (the container's command).
    #[serde(default)]
    pub args: Vec<String>,
    /// `K=V` entries.
    #[serde(default)]
    pub env: Vec<String>,
    pub mode: ServiceMode,
    /// Network IDs the tasks join, in order (the first one carries the default route,
    /// after `ingress` when a port is published in ingress mode).
    #[serde(default)]
    pub networks: Vec<String>,
    /// `--network name=NET,alias=A`: extra names of the service on one of its networks
    /// (by network ID), answered by the embedded DNS there as the service's name is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub network_aliases: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// `node.role==manager`, `node.labels.zone!=a`, ...
    #[serde(default)]
    pub constraints: Vec<String>,
    /// `--replicas-max-per-node` (and, with the constraints, the rest of Swarm's
    /// `TaskTemplate.Placement`).
    #[serde(default, skip_serializing_if = "Placement::is_empty")]
    pub placement: Placement,
    /// None: the image's own health check, if any.
    #[serde(default)]
    pub healthcheck: Option<HealthCheck>,
    #[serde(default)]
    pub restart_condition: RestartCondition,
    /// `--restart-delay`: the wait after a task ends before its replacement is made;
    /// a task that keeps failing waits longer each time (see the scheduler).
    #[serde(default = "default_restart_delay_ms")]
    pub restart_delay_ms: u64,
    /// `--restart-max-attempts`: restarts allowed per slot (within the window); 0: no limit.
    #[serde(default)]
    pub restart_max_attempts: u64,
    /// `--restart-window`: the span in which attempts are counted; 0: unbounded.
    #[serde(default)]
    pub restart_window_ms: u64,
    /// `--stop-grace-period`: SIGTERM, then SIGKILL after this long.
    #[serde(default = "default_stop_grace_ms")]
    pub stop_grace_ms: u64,
    /// `--entrypoint`, `--user`, `--workdir`, `--hostname`, ...: how each task's
    /// container is made.
    #[serde(default)]
    pub container: ContainerOptions,
    /// `--secret`: the secrets each task gets as files (on a tmpfs of the node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileReference>,
    /// `--config`: the configs each task gets as files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileReference>,
    /// `--update-*`: how a changed spec reaches the tasks.
    #[serde(default)]
    pub update_config: UpdateConfig,
    /// `--rollback-*`: how a rollback reaches them.
    #[serde(default = "UpdateConfig::rollback_default")]
    pub rollback_config: UpdateConfig,
}

/// How the scheduler places a service's tasks beyond its constraints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// `--replicas-max-per-node`: at most this many live tasks of the service on one
    /// node (the rest stay pending); 0: no limit.
    #[serde(default)]
    pub max_replicas_per_node: u64,
    /// `--placement-pref spread=node.labels.X`: the descriptors (`node.labels.X`), in
    /// order. The scheduler spreads the tasks evenly over the values of the first (nodes
    /// without the label are one group), then of the next inside that group, then by
    /// task count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<String>,
}

/// What a spread descriptor may name: node labels (shoal reports no engine labels).
pub const SPREAD_LABEL_PREFIX: &str = "node.labels.";

impl Placement {
    pub fn is_empty(&self) -> bool {
        *self == Placement::default()
    }

    /// The node label key a spread descriptor names, or why it cannot be used.
    pub fn spread_label(descriptor: &str) -> Result<&str, String> {
        let prefix = descriptor.get(..SPREAD_LABEL_PREFIX.len());
        match prefix {
            Some(p) if p.eq_ignore_ascii_case(SPREAD_LABEL_PREFIX) => {
                let key = &descriptor[SPREAD_LABEL_PREFIX.len()..];
                if key.is_empty() {
                    Err(format!(
                        "invalid spread descriptor {descriptor:?}: a label key is required"
                    ))
                } else {
                    Ok(key)
                }
            }
            _ => Err(format!(
                "invalid spread descriptor {descriptor:?}: shoal spreads over node labels only \
                 ({SPREAD_LABEL_PREFIX}<key>)"
            )),
        }
    }
}

/// Swarm's default restart delay.
pub const DEFAULT_RESTART_DELAY_MS: u64 = 5_000;
/// Docker's default stop grace period.
pub const DEFAULT_STOP_GRACE_MS: u64 = 10_000;

fn default_restart_delay_ms() -> u64 {
    DEFAULT_RESTART_DELAY_MS
}

fn default_stop_grace_ms() -> u64 {
    DEFAULT_STOP_GRACE_MS
}

impl ServiceSpec {
    /// Whether tasks made from `self` must be replaced to run `other`: every field counts
    /// but the ones that only steer the service (replicas, update and rollback config).
    pub fn tasks_differ(&self, other: &ServiceSpec) -> bool {
        let strip = |s: &ServiceSpec| {
            let mut s = s.clone();
            s.mode = match s.mode {
                ServiceMode::Replicated { .. } => ServiceMode::Replicated { replicas: 0 },
                ServiceMode::ReplicatedJob { .. } => ServiceMode::ReplicatedJob {
                    max_concurrent: 0,
                    total_completions: 0,
                },
                m @ (ServiceMode::Global | ServiceMode::GlobalJob) => m,
            };
            s.update_config = UpdateConfig::default();
            s.rollback_config = UpdateConfig::default();
            s
        };
        strip(self) != strip(other)
    }
}

/// `--update-order`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

/// `--update-failure-action` (and `--rollback-failure-action`, where `rollback` is not
/// accepted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

/// Swarm's `UpdateConfig` / `RollbackConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks replaced at once; 0: all at once.
    pub parallelism: u64,
    /// Wait between batches.
    pub delay_ms: u64,
    pub order: UpdateOrder,
    pub failure_action: FailureAction,
    /// How long a new task is watched after it starts: failing within it counts
    /// against the update.
    pub monitor_ms: u64,
    /// Failures tolerated, as a fraction of the tasks updated, in millionths
    /// (Docker's float `MaxFailureRatio`, kept exact).
    pub max_failure_ratio_ppm: u32,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            order: UpdateOrder::StopFirst,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_ratio_ppm: 0,
        }
    }
}

impl UpdateConfig {
    /// Swarm's rollback defaults (the same as the update's).
    pub fn rollback_default() -> Self {
        UpdateConfig::default()
    }
}

/// Swarm's `UpdateStatus.State`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    /// Docker's word (`inspect`'s `UpdateStatus.State`).
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }

    /// The update (or rollback) still replaces tasks.
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }

    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            UpdateState::RollbackStarted
                | UpdateState::RollbackPaused
                | UpdateState::RollbackCompleted
        )
    }
}

/// Swarm's `UpdateStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started_ms: u64,
    #[serde(default)]
    pub completed_ms: Option<u64>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceMode {
    Replicated {
        replicas: u64,
    },
    Global,
    /// Tasks that run to completion: `total_completions` of them must exit 0, at most
    /// `max_concurrent` running at once.
    ReplicatedJob {
        max_concurrent: u64,
        total_completions: u64,
    },
    /// One task per eligible node, run to completion once.
    GlobalJob,
}

impl ServiceMode {
    /// A job: its tasks run to completion and are not restarted once they did.
    pub fn is_job(self) -> bool {
        matches!(
            self,
            ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob
        )
    }

    /// One task per node rather than numbered slots.
    pub fn is_global(self) -> bool {
        matches!(self, ServiceMode::Global | ServiceMode::GlobalJob)
    }
}

/// Swarm's `JobStatus`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Raised by every change of the service: tasks of an older iteration are stopped
    /// (or kept as history) and the new iteration's run from the start.
    pub job_iteration: u64,
    /// When the current iteration started (milliseconds since the epoch).
    pub last_execution_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    #[default]
    Vip,
    Dnsrr,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    #[default]
    Any,
    OnFailure,
    None,
}

/// A container health check (`--health-cmd` and friends). `test` is Docker's form:
/// `["CMD-SHELL", "cmd"]`, or `["NONE"]` for `--no-healthcheck`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub test: Vec<String>,
    #[serde(default)]
    pub interval_ms: u64,
    #[serde(default)]
    pub timeout_ms: u64,
    #[serde(default)]
    pub retries: u64,
    #[serde(default)]
    pub start_period_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    #[default]
    Ingress,
    Host,
}

/// How the routing mesh picks a backend for a new flow to a published port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortBalance {
    /// Maglev consistent hashing of the client's address and port: every node picks the
    /// same backend, with or without a flow entry, so a connection whose entry the
    /// flow table evicted still reaches its backend.
    #[default]
    Maglev,
    /// The next backend in turn (Swarm's IPVS default): a connection whose flow entry
    /// is evicted is cut at its next segment.
    Roundrobin,
}

impl PortBalance {
    /// The word of `-p ...,lb=WORD` and of `service inspect`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortBalance::Maglev => "maglev",
            PortBalance::Roundrobin => "roundrobin",
        }
    }

    pub fn parse(word: &str) -> Result<Self, String> {
        match word {
            "maglev" => Ok(PortBalance::Maglev),
            "roundrobin" => Ok(PortBalance::Roundrobin),
            other => Err(format!(
                "load balancing {other:?} is not roundrobin or maglev"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    pub protocol: Protocol,
    pub target: u16,
    pub published: u16,
    #[serde(default)]
    pub mode: PublishMode,
    /// How the routing mesh balances this port; none: Maglev (the default), or on an
    /// Engine API update that does not say, what the port had before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<PortBalance>,
}

impl PortConfig {
    /// How the routing mesh balances this port.
    pub fn balance(&self) -> PortBalance {
        self.balance.unwrap_or_default()
    }
}

/// Addresses the managers gave a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(default)]
    pub virtual_ips: Vec<VirtualIp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualIp {
    pub network_id: String,
    /// The VIP with its network's prefix length: `10.0.1.2/24`.
    pub addr: Ipv4Net,
}

/// A task's states in Swarm's order: a task only moves forward.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    #[default]
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Ready,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Remove,
    Orphaned,
}

impl TaskState {
    /// The task ended (its container is gone or will not run again).
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    /// Docker's word (`service ps`): lowercase, as in `Running 5 seconds ago`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node (or the scheduler, before a node has it) observed about a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    /// Milliseconds since the epoch when this state was reached.
    #[serde(default)]
    pub timestamp_ms: u64,
    /// Short description (`starting`, `no suitable node (...)`).
    #[serde(default)]
    pub message: String,
    /// Why the task failed or was rejected.
    #[serde(default)]
    pub err: Option<String>,
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i64>,
}

/// A task's address on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    pub network_id: String,
    /// The task's address with its network's prefix length: `10.0.1.5/24`.
    pub addr: Ipv4Net,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub service_id: String,
    /// 1.. for replicated services; 0 for global ones (one per node).
    pub slot: u64,
    #[serde(default)]
    pub node_id: Option<String>,
    /// Running, Shutdown (keep as history) or Remove (delete once stopped).
    pub desired_state: TaskState,
    #[serde(default)]
    pub status: TaskStatus,
    /// Attachments in order (ingress first when the service publishes in ingress mode).
    #[serde(default)]
    pub networks: Vec<NetworkAttachment>,
    /// The service's `force_update` this task was made for.
    #[serde(default)]
    pub force_update: u64,
    /// The service spec this task was made from: it runs that, whatever the service
    /// says later, until it is replaced (None: made before tasks kept their spec; the
    /// service's current one applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Box<ServiceSpec>>,
    /// The job iteration this task belongs to (None: not a job's task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_iteration: Option<u64>,
    /// Restarts of this task's slot (node, for a global service) counted toward
    /// `--restart-max-attempts`, this one included, since `restart_window_start_ms`.
    #[serde(default)]
    pub restarts: u64,
    #[serde(default)]
    pub restart_window_start_ms: u64,
    /// Tasks of this slot that failed one after another right before this one: the
    /// restart delay doubles with each (a crash loop backs off).
    #[serde(default)]
    pub failures_in_a_row: u32,
    #[serde(default)]
    pub created_ms: u64,
    /// Store version at this object's last change (set by `apply`, ignored on input).
    #[serde(default)]
    pub version: u64,
}

impl Task {
    /// The container's name on its node: `<service>.<slot>.<task ID>`, or
    /// `<service>.<node ID>.<task ID>` for a global service (as Swarm names them).
    pub fn container_name(&self, service_name: &str) -> String {
        if self.slot == 0 {
            format!(
                "{service_name}.{}.{}",
                self.node_id.as_deref().unwrap_or("none"),
                self.id
            )
        } else {
            format!("{service_name}.{}.{}", self.slot, self.id)
        }
    }

    /// The task's name in `service ps`: `<service>.<slot>` (global: `<service>.<node>`).
    pub fn display_name(&self, service_name: &str) -> String {
        if self.slot == 0 {
            format!(
                "{service_name}.{}",
                self.node_id.as_deref().unwrap_or("none")
            )
        } else {
            format!("{service_name}.{}", self.slot)
        }
    }
}

/// One status report from a node's executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatusUpdate {
    pub task_id: String,
    pub status: TaskStatus,
}
