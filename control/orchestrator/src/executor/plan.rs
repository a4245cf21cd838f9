//! Deciding a pass's work: the store's tasks for this node against the task containers
//! and sandboxes dockerd lists, giving the actions to carry out and the task states the
//! listing shows.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
};

use bollard::models::ContainerSummaryStateEnum;
use shoal_cluster::store::{ClusterState, Service, Task, TaskState, TaskStatusUpdate};
use shoal_dataplane::reconcile::dns::EGRESS_LISTENER;

use super::{
    containers::{observe, update, Observed, ObservedSandbox},
    withdrawal::Released,
};

/// One thing a pass does on dockerd.
pub(super) enum Action {
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
        /// The container runs with its network: it may get connections, so its stop
        /// waits for its task's withdrawal ([`super::withdrawal`]).
        serving: bool,
        /// Set when the stop was held for the withdrawal and now goes ahead.
        released: Option<Released>,
    },
    /// Remove a sandbox whose task has no container and will not start one now.
    RemoveSandbox { sandbox: String },
}

/// What a pass decided.
pub(super) struct Plan {
    pub actions: Vec<Action>,
    /// Task states known without acting: read off the listing, or a container's lack.
    pub updates: Vec<TaskStatusUpdate>,
}

/// Decides the pass for node `me`: remove the containers that should not be here (and
/// running ones whose sandbox, their network, is gone), start the tasks that should run
/// here, remove sandboxes left without a task container. `egress_dns` is the nameserver
/// of tasks with no network.
pub(super) fn plan(
    state: &ClusterState,
    me: &str,
    egress_dns: Option<Ipv4Addr>,
    observed: &[Observed],
    sandboxes: &[ObservedSandbox],
) -> Plan {
    let mut updates: Vec<TaskStatusUpdate> = Vec::new();
    let mut actions = Vec::new();
    let by_task: HashMap<&str, &Observed> =
        observed.iter().map(|o| (o.task_id.as_str(), o)).collect();

    let sandbox_of: HashMap<&str, &ObservedSandbox> =
        sandboxes.iter().map(|s| (s.task_id.as_str(), s)).collect();

    // Containers that should not be here, and running ones whose sandbox (their
    // network) is gone.
    for o in observed {
        let task = state.tasks.get(&o.task_id);
        let ours = task.is_some_and(|t| t.node_id.as_deref() == Some(me));
        // A job's completed task keeps its container (its logs) until it is pruned.
        let keep = ours
            && task.is_some_and(|t| {
                matches!(t.desired_state, TaskState::Running | TaskState::Complete)
            });
        let sandbox = sandbox_of.get(o.task_id.as_str());
        let network_lost =
            o.state == ContainerSummaryStateEnum::RUNNING && !sandbox.is_some_and(|s| s.running);
        if !keep || network_lost {
            actions.push(Action::Remove {
                container: o.id.clone(),
                sandbox: sandbox.map(|s| s.id.clone()),
                task: task.filter(|_| ours).cloned().map(Box::new),
                failed: (keep && network_lost)
                    .then(|| "task: its network sandbox stopped".to_owned()),
                serving: o.state == ContainerSummaryStateEnum::RUNNING && !network_lost,
                released: None,
            });
        }
    }
    // Tasks that should run here.
    for t in state.tasks.values() {
        if t.node_id.as_deref() != Some(me) {
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
                        None => (egress_dns, egress_dns.map(|_| EGRESS_LISTENER.to_owned())),
                    };
                    // The task runs the spec it was made from, whatever the service
                    // says now (a rolling update replaces it when they differ).
                    let mut service = service.clone();
                    if let Some(spec) = &t.spec {
                        service.spec = (**spec).clone();
                    }
                    actions.push(Action::Start {
                        task: Box::new(t.clone()),
                        service: Box::new(service),
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
            Some(o) if o.state == ContainerSummaryStateEnum::CREATED => {
                // Created and never started: a start cut short between the two (the
                // agent stopped, or the executor was started again with the manager
                // role, in between). A pass creates and starts in one go, so nothing
                // would ever start it and the task would stay assigned for good:
                // removed with its sandbox, the task starts afresh on the next pass.
                actions.push(Action::Remove {
                    container: o.id.clone(),
                    sandbox: sandbox_of.get(t.id.as_str()).map(|s| s.id.clone()),
                    task: None,
                    failed: None,
                    serving: false,
                    released: None,
                });
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
    Plan { actions, updates }
}

/// The networks of the tasks `actions` start.
pub(super) fn starting_networks(actions: &[Action]) -> BTreeSet<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Start { task, .. } => Some(task.networks.iter()),
            _ => None,
        })
        .flatten()
        .map(|a| a.network_id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use shoal_cluster::store::{Service, TaskStatus};

    use super::*;

    fn assigned(id: &str, node: &str) -> Task {
        Task {
            id: id.into(),
            service_id: "s1".into(),
            slot: 1,
            node_id: Some(node.into()),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Assigned,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_container_created_but_never_started_is_removed_so_the_task_starts_again() {
        let mut state = ClusterState::default();
        let service: Service = serde_json::from_value(serde_json::json!({
            "id": "s1",
            "spec": {"name": "web", "image": "shoal/web:1", "mode": "global"},
        }))
        .unwrap();
        state.services.insert("s1".into(), service);
        state.tasks.insert("t1".into(), assigned("t1", "me"));
        let mut created = Observed::running("c1", "t1");
        created.state = ContainerSummaryStateEnum::CREATED;
        let sandboxes = [ObservedSandbox {
            id: "sb1".into(),
            task_id: "t1".into(),
            running: true,
        }];
        let p = plan(&state, "me", None, &[created], &sandboxes);
        assert!(p.updates.is_empty());
        let [Action::Remove {
            container,
            sandbox,
            task: None,
            failed: None,
            serving: false,
            ..
        }] = p.actions.as_slice()
        else {
            panic!("expected one removal of the created container");
        };
        assert_eq!(container, "c1");
        assert_eq!(sandbox.as_deref(), Some("sb1"));
        // Once it is gone, the next pass starts the task.
        let p = plan(&state, "me", None, &[], &[]);
        assert!(matches!(p.actions.as_slice(), [Action::Start { task, .. }] if task.id == "t1"));
    }
}
