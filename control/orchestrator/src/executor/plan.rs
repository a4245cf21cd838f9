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
        /// The task's sandbox dockerd lists (a start cut short): the start removes it
        /// and makes a new one.
        leftover_sandbox: Option<String>,
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
        // Made and never started by a start that did not finish (the agent stopped
        // while the task waited for its network; passes do not overlap, so none is
        // under way now): removed with its sandbox, the task not reported, so a later
        // pass starts it afresh.
        let abandoned = keep
            && o.state == ContainerSummaryStateEnum::CREATED
            && task.is_some_and(|t| t.status.state < TaskState::Starting);
        if abandoned {
            actions.push(Action::Remove {
                container: o.id.clone(),
                sandbox: sandbox.map(|s| s.id.clone()),
                task: None,
                failed: None,
                serving: false,
                released: None,
            });
            continue;
        }
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
                        leftover_sandbox: sandbox_of.get(t.id.as_str()).map(|s| s.id.clone()),
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
    use shoal_cluster::store::{Service, Task, TaskStatus};

    use super::*;

    fn state(task_state: TaskState) -> ClusterState {
        let mut s = ClusterState::default();
        let service: Service = serde_json::from_value(serde_json::json!({
            "id": "s1",
            "spec": {"name": "web", "image": "busybox", "mode": {"replicated": {"replicas": 1}}},
        }))
        .unwrap();
        s.services.insert("s1".into(), service);
        s.tasks.insert(
            "t1".into(),
            Task {
                id: "t1".into(),
                service_id: "s1".into(),
                node_id: Some("n1".into()),
                desired_state: TaskState::Running,
                status: TaskStatus {
                    state: task_state,
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        s
    }

    fn removed(p: &Plan) -> Vec<(&str, Option<&str>, bool)> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove {
                    container,
                    sandbox,
                    task,
                    ..
                } => Some((container.as_str(), sandbox.as_deref(), task.is_some())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_container_a_cut_short_start_made_is_removed_and_the_task_started_again() {
        let created = [Observed::created("c1", "t1")];
        let sandbox = [ObservedSandbox {
            id: "sb1".into(),
            task_id: "t1".into(),
            running: true,
        }];
        // Cut short while assigned (a store restart stopped the executor) or preparing.
        let p = plan(&state(TaskState::Assigned), "n1", None, &created, &sandbox);
        assert_eq!(removed(&p), [("c1", Some("sb1"), false)]);
        assert_eq!(p.actions.len(), 1, "removed once: {:?}", p.actions.len());
        let p = plan(&state(TaskState::Preparing), "n1", None, &created, &sandbox);
        assert_eq!(
            removed(&p),
            [("c1", Some("sb1"), false)],
            "removed with its sandbox, the task not reported"
        );
        assert!(p.updates.is_empty());
        let again = plan(&state(TaskState::Preparing), "n1", None, &[], &[]);
        assert!(
            matches!(
                again.actions.as_slice(),
                [Action::Start {
                    leftover_sandbox: None,
                    ..
                }]
            ),
            "with its container gone the task starts"
        );
        // Left as it was: a container whose start was reported (and failed).
        let p = plan(&state(TaskState::Starting), "n1", None, &created, &sandbox);
        assert!(removed(&p).is_empty());
    }

    #[test]
    fn a_start_removes_only_a_sandbox_dockerd_lists_for_its_task() {
        let sandbox = [ObservedSandbox {
            id: "sb1".into(),
            task_id: "t1".into(),
            running: false,
        }];
        let p = plan(&state(TaskState::Assigned), "n1", None, &[], &sandbox);
        match p.actions.as_slice() {
            [Action::Start {
                leftover_sandbox, ..
            }] => assert_eq!(leftover_sandbox.as_deref(), Some("sb1")),
            _ => panic!("one start expected"),
        }
        let p = plan(&state(TaskState::Assigned), "n1", None, &[], &[]);
        assert!(matches!(
            p.actions.as_slice(),
            [Action::Start {
                leftover_sandbox: None,
                ..
            }]
        ));
    }
}
