//! Placement: which node a new task goes to (spread by task count, placement
//! preferences, reservations against capacity, `--replicas-max-per-node`, nodes where
//! the service failed last), whether a node may take or keep a task, and Swarm's words
//! for why no node can.

use std::collections::BTreeMap;

use shoal_cluster::store::{
    Availability, ClusterState, NetworkAttachment, Node, NodeStatus, Placement, Service, Task,
    TaskState, TaskStatus,
};
use tracing::debug;

use super::constraint::{meets, Constraint};
use super::{effective_networks, Planner};

/// Why nodes cannot take a new task of a service, Swarm's way (`full`: the node holds
/// the service's `--replicas-max-per-node` already).
pub(super) fn no_node_reason(
    state: &ClusterState,
    constraints: &[Constraint],
    fits: impl Fn(&Node) -> bool,
    full: impl Fn(&Node) -> bool,
) -> String {
    let mut unavailable = 0;
    let mut unmet = 0;
    let mut short = 0;
    let mut at_max = 0;
    for n in state.nodes.values() {
        if n.status != NodeStatus::Ready || n.availability != Availability::Active {
            unavailable += 1;
        } else if !meets(n, constraints) {
            unmet += 1;
        } else if !fits(n) {
            short += 1;
        } else if full(n) {
            at_max += 1;
        }
    }
    let plural = |k: usize| if k == 1 { "node" } else { "nodes" };
    let mut parts = Vec::new();
    if short > 0 {
        parts.push(format!(
            "insufficient resources on {short} {}",
            plural(short)
        ));
    }
    if at_max > 0 {
        // Swarm's words, without a count.
        parts.push("max replicas per node limit exceed".to_string());
    }
    if unmet > 0 {
        parts.push(format!(
            "scheduling constraints not satisfied on {unmet} {}",
            plural(unmet)
        ));
    }
    if unavailable > 0 {
        parts.push(format!(
            "{unavailable} {} not available for new tasks",
            plural(unavailable)
        ));
    }
    if parts.is_empty() {
        "no suitable node (no nodes)".to_string()
    } else {
        format!("no suitable node ({})", parts.join("; "))
    }
}

/// Whether a node may keep a task it runs (pause keeps, drain and Down do not).
pub(super) fn may_keep(node: Option<&Node>, constraints: &[Constraint]) -> bool {
    node.is_some_and(|n| {
        n.status == NodeStatus::Ready
            && n.availability != Availability::Drain
            && meets(n, constraints)
    })
}

/// Whether a node may take a new task.
pub(super) fn may_take(node: &Node, constraints: &[Constraint]) -> bool {
    node.status == NodeStatus::Ready
        && node.availability == Availability::Active
        && meets(node, constraints)
}

/// What a task reserves (NanoCPUs, bytes): its own spec's reservations, else its
/// service's.
pub(super) fn reservation_of(task: &Task, service: Option<&Service>) -> (u64, u64) {
    let r = task
        .spec
        .as_deref()
        .or(service.map(|s| &s.spec))
        .map(|spec| spec.container.reservations)
        .unwrap_or_default();
    (r.nano_cpus, r.memory_bytes)
}

impl Planner<'_> {
    fn failures_on(&self, service: &str, node: &str) -> usize {
        self.state
            .service_tasks(service)
            .filter(|t| {
                t.node_id.as_deref() == Some(node)
                    && matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
            })
            .count()
    }

    /// Whether `node`'s capacity, less what its live tasks reserve, holds a task of
    /// `service`'s reservations. A node that has not reported its capacity holds none.
    pub(super) fn fits(&self, node: &Node, service: &Service) -> bool {
        let want = &service.spec.container.reservations;
        if want.is_empty() {
            return true;
        }
        let (cpus, memory) = self.reserved.get(&node.id).copied().unwrap_or_default();
        let free =
            |capacity: i64, used: u64| u64::try_from(capacity).unwrap_or(0).saturating_sub(used);
        want.nano_cpus <= free(node.resources.nano_cpus, cpus)
            && want.memory_bytes <= free(node.resources.memory_bytes, memory)
    }

    /// Whether `node` already runs `--replicas-max-per-node` live tasks of `service`.
    pub(super) fn full(&self, node: &Node, service: &Service) -> bool {
        let max = service.spec.placement.max_replicas_per_node;
        max > 0
            && self
                .per_service_node
                .get(&(service.id.clone(), node.id.clone()))
                .copied()
                .unwrap_or(0)
                >= max as usize
    }

    /// Live tasks of `service` on `node`.
    fn tasks_on(&self, service: &Service, node: &Node) -> usize {
        self.per_service_node
            .get(&(service.id.clone(), node.id.clone()))
            .copied()
            .unwrap_or(0)
    }

    /// Spread: the placement preferences first (the group of the first label's value
    /// holding the fewest tasks of this service among the nodes that may take one,
    /// nodes without the label being one group, then the same with the next label
    /// inside it), then fewest tasks of this service, then fewest overall; repeat
    /// failers last.
    fn pick_node(&self, service: &Service, constraints: &[Constraint]) -> Option<String> {
        let mut group: Vec<&Node> = self
            .state
            .nodes
            .values()
            .filter(|n| may_take(n, constraints) && self.fits(n, service) && !self.full(n, service))
            .collect();
        for descriptor in &service.spec.placement.preferences {
            let Ok(key) = Placement::spread_label(descriptor) else {
                continue;
            };
            let value = |n: &Node| n.labels.get(key).cloned();
            let mut counts: BTreeMap<Option<String>, usize> = BTreeMap::new();
            for n in &group {
                *counts.entry(value(n)).or_default() += self.tasks_on(service, n);
            }
            let Some(fewest) = counts
                .iter()
                .min_by_key(|(v, c)| (**c, (*v).clone()))
                .map(|(v, _)| v.clone())
            else {
                break;
            };
            group.retain(|n| value(n) == fewest);
        }
        group
            .into_iter()
            .min_by_key(|n| {
                (
                    self.failures_on(&service.id, &n.id) >= 2,
                    self.per_service_node
                        .get(&(service.id.clone(), n.id.clone()))
                        .copied()
                        .unwrap_or(0),
                    self.per_node.get(&n.id).copied().unwrap_or(0),
                    n.hostname.clone(),
                    n.id.clone(),
                )
            })
            .map(|n| n.id.clone())
    }

    /// Gives `task` a node (unless it has one) and its addresses; leaves it pending
    /// with the reason when it cannot.
    pub(super) fn place(
        &mut self,
        mut task: Task,
        service: &Service,
        constraints: &[Constraint],
    ) -> Task {
        if task.networks.is_empty() {
            let mut attachments = Vec::new();
            for net in effective_networks(self.state, service) {
                match self.addresses.allocate(&net) {
                    Ok(addr) => attachments.push(NetworkAttachment {
                        network_id: net,
                        addr,
                    }),
                    Err(e) => {
                        debug!(task = %task.id, network = %net, error = %e, "no address");
                        let name = self
                            .state
                            .networks
                            .get(&net)
                            .map(|n| n.name.clone())
                            .unwrap_or(net);
                        let err = format!("no address left on network {name}");
                        if task.status.state != TaskState::Pending
                            || task.status.err.as_deref() != Some(err.as_str())
                        {
                            task.status = TaskStatus {
                                state: TaskState::Pending,
                                timestamp_ms: self.now_ms,
                                message: "pending task scheduling".into(),
                                err: Some(err),
                                ..Default::default()
                            };
                        }
                        return task;
                    }
                }
            }
            task.networks = attachments;
        }
        if task.node_id.is_none() {
            task.node_id = self.pick_node(service, constraints);
        }
        match &task.node_id {
            Some(node) => {
                let (cpus, memory) = reservation_of(&task, Some(service));
                let r = self.reserved.entry(node.clone()).or_default();
                r.0 = r.0.saturating_add(cpus);
                r.1 = r.1.saturating_add(memory);
                *self.per_node.entry(node.clone()).or_default() += 1;
                *self
                    .per_service_node
                    .entry((service.id.clone(), node.clone()))
                    .or_default() += 1;
                task.status = TaskStatus {
                    state: TaskState::Assigned,
                    timestamp_ms: self.now_ms,
                    message: "scheduler assigned task to node".into(),
                    ..Default::default()
                };
            }
            None => {
                let reason = no_node_reason(
                    self.state,
                    constraints,
                    |n| self.fits(n, service),
                    |n| self.full(n, service),
                );
                if task.status.state != TaskState::Pending
                    || task.status.err.as_deref() != Some(reason.as_str())
                {
                    task.status = TaskStatus {
                        state: TaskState::Pending,
                        timestamp_ms: self.now_ms,
                        message: "pending task scheduling".into(),
                        err: Some(reason),
                        ..Default::default()
                    };
                }
            }
        }
        task
    }
}
