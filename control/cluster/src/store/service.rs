//! Services and tasks as the store keeps them (Swarm's model).
//!
//! A [`Service`] is the declared intent (`service create`); a [`Task`] is one slot of it
//! placed on one node: the scheduler on the leader creates tasks and sets their
//! *desired* state, the node's executor reports their *observed* [`TaskStatus`]. Tasks
//! that ended stay as history (`service ps`) until pruned.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

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
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// `node.role==manager`, `node.labels.zone!=a`, ...
    #[serde(default)]
    pub constraints: Vec<String>,
    /// None: the image's own health check, if any.
    #[serde(default)]
    pub healthcheck: Option<HealthCheck>,
    #[serde(default)]
    pub restart_condition: RestartCondition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceMode {
    Replicated { replicas: u64 },
    Global,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    pub protocol: Protocol,
    pub target: u16,
    pub published: u16,
    #[serde(default)]
    pub mode: PublishMode,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
