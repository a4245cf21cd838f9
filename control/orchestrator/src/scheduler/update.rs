//! Rolling updates and rollbacks, Swarm's way: a task made from an older spec (or an
//! older `--force`) is *outdated*; outdated tasks are replaced `parallelism` at a time,
//! the next batch once the previous one runs and `delay` has passed; a task of the
//! update that fails counts against `max_failure_ratio`, past which the update pauses,
//! goes on, or rolls back (`failure_action`); the update completes once no outdated task
//! is left and the last new one has run for `monitor`.
//!
//! Everything the update knows is in the store: the service's `update_status` (set when
//! the spec changes), its `previous_spec`, and the tasks with their own spec and times.
//! [`step`] is a pure function of those and the time, so a new leader carries on an
//! update where the old one left it.
//!
//! Order: `stop-first` tells the old task to stop and makes its replacement once it has
//! stopped; `start-first` makes the replacement beside it and stops the old one once
//! the new one runs (healthy, when it has a check).

use std::collections::BTreeSet;

use shoal_cluster::store::{
    Availability, ClusterState, FailureAction, NodeStatus, Service, ServiceMode, Task, TaskState,
    UpdateConfig, UpdateOrder, UpdateState, UpdateStatus,
};

/// Where a task sits in its service: its slot, or its node for a global service.
pub type Group = (u64, String);

pub fn group_of(t: &Task, service: &Service) -> Group {
    if service.spec.mode.is_global() {
        (0, t.node_id.clone().unwrap_or_default())
    } else {
        (t.slot, String::new())
    }
}

/// Whether `t` was made from something other than what `service` now declares.
pub fn outdated(t: &Task, service: &Service) -> bool {
    t.force_update != service.force_update
        || t.spec
            .as_ref()
            .is_some_and(|s| s.tasks_differ(&service.spec))
}

/// What the update does in one plan.
#[derive(Debug, Default)]
pub struct UpdateStep {
    /// Outdated running tasks whose replacement starts now.
    pub replace: BTreeSet<String>,
    /// Groups whose new task must wait: their outdated task is still stopping.
    pub held: BTreeSet<Group>,
    /// The update's order (how `replace` is carried out).
    pub order: UpdateOrder,
    /// Groups that get a new task beside their running outdated one (start-first),
    /// filled in while the plan carries out `replace`.
    pub start_beside: BTreeSet<Group>,
    /// The service to store: a new `update_status`, or the specs swapped for a rollback.
    pub service: Option<Service>,
}

impl UpdateStep {
    /// Whether outdated tasks of a group stay beside a new task that does not run yet.
    pub fn keeps_old_beside_new(&self) -> bool {
        self.order == UpdateOrder::StartFirst
    }
}

fn config(service: &Service) -> (UpdateConfig, bool) {
    let rollback = service
        .update_status
        .as_ref()
        .is_some_and(|s| s.state.is_rollback());
    if rollback {
        (service.spec.rollback_config, true)
    } else {
        (service.spec.update_config, false)
    }
}

fn with_status(service: &Service, state: UpdateState, now_ms: u64, message: String) -> Service {
    let mut s = service.clone();
    let started_ms = service
        .update_status
        .as_ref()
        .map_or(now_ms, |u| u.started_ms);
    s.update_status = Some(UpdateStatus {
        state,
        started_ms,
        completed_ms: (!state.in_progress()).then_some(now_ms),
        message,
    });
    s
}

/// One step of `service`'s update (or rollback) at `now_ms`. A job has none: each of
/// its changes starts a new iteration instead ([`super::job`]).
pub fn step(state: &ClusterState, service: &Service, now_ms: u64) -> UpdateStep {
    if service.spec.mode.is_job() {
        return UpdateStep::default();
    }
    let (cfg, rollback) = config(service);
    let mut out = UpdateStep {
        order: cfg.order,
        ..Default::default()
    };
    let status = service.update_status.as_ref();
    let node_alive = |t: &Task| {
        t.node_id
            .as_ref()
            .and_then(|n| state.nodes.get(n))
            .is_some_and(|n| n.status != NodeStatus::Down)
    };
    let tasks: Vec<&Task> = state.service_tasks(&service.id).collect();
    let live = |t: &&&Task| t.desired_state == TaskState::Running;
    let started_ms = status.map_or(0, |s| s.started_ms);
    let of_update = |t: &Task| !outdated(t, service) && t.created_ms >= started_ms;

    // Groups that already have a task made from the current spec.
    let fresh_groups: BTreeSet<Group> = tasks
        .iter()
        .filter(live)
        .filter(|t| !outdated(t, service))
        .map(|t| group_of(t, service))
        .collect();
    let stopping_old: Vec<&Task> = tasks
        .iter()
        .filter(|t| {
            t.desired_state > TaskState::Running
                && !t.status.state.is_terminal()
                && outdated(t, service)
                && node_alive(t)
        })
        .copied()
        .collect();
    if cfg.order == UpdateOrder::StopFirst {
        out.held = stopping_old
            .iter()
            .map(|t| group_of(t, service))
            .filter(|g| !fresh_groups.contains(g))
            .collect();
    }
    let starting = tasks
        .iter()
        .filter(live)
        .filter(|t| of_update(t) && t.status.state < TaskState::Running)
        .count();
    // Groups with no live task get one in this very plan: they count as starting.
    let live_groups: BTreeSet<Group> = tasks
        .iter()
        .filter(live)
        .map(|t| group_of(t, service))
        .collect();
    let to_fill = match service.spec.mode {
        ServiceMode::Replicated { replicas } => (1..=replicas)
            .filter(|slot| !live_groups.contains(&(*slot, String::new())))
            .count(),
        ServiceMode::Global | ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob => state
            .nodes
            .values()
            .filter(|n| {
                n.status == NodeStatus::Ready
                    && n.availability == Availability::Active
                    && !live_groups.contains(&(0, n.id.clone()))
            })
            .count(),
    };
    let in_flight = starting
        + to_fill
        + match cfg.order {
            UpdateOrder::StopFirst => out.held.len(),
            UpdateOrder::StartFirst => 0,
        };
    let last_running = tasks
        .iter()
        .filter(live)
        .filter(|t| of_update(t) && t.status.state == TaskState::Running)
        .map(|t| t.status.timestamp_ms)
        .max();
    let candidates: Vec<&Task> = {
        let mut c: Vec<&Task> = tasks
            .iter()
            .filter(live)
            .filter(|t| outdated(t, service) && !fresh_groups.contains(&group_of(t, service)))
            .copied()
            .collect();
        c.sort_by_key(|t| (group_of(t, service), t.created_ms, t.id.clone()));
        c
    };

    if status.is_some_and(|s| s.state.in_progress()) {
        let mut failed: Vec<&Task> = tasks
            .iter()
            .filter(|t| {
                of_update(t) && matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
            })
            .copied()
            .collect();
        failed.sort_by_key(|t| (t.status.timestamp_ms, t.id.clone()));
        let total = tasks.iter().filter(|t| of_update(t)).count() as u64;
        let over = !failed.is_empty()
            && (failed.len() as u64) * 1_000_000 > u64::from(cfg.max_failure_ratio_ppm) * total;
        if over && cfg.failure_action != FailureAction::Continue {
            let culprit = &failed.last().expect("a failed task").id;
            let what = if rollback { "rollback" } else { "update" };
            let rolls_back = !rollback
                && cfg.failure_action == FailureAction::Rollback
                && service.previous_spec.is_some();
            out.service = Some(if rolls_back {
                let mut s = service.clone();
                let previous = s.previous_spec.take().expect("checked");
                s.previous_spec = Some(std::mem::replace(&mut s.spec, previous));
                s.update_status = Some(UpdateStatus {
                    state: UpdateState::RollbackStarted,
                    started_ms: now_ms,
                    completed_ms: None,
                    message: format!(
                        "update rolled back due to failure or early termination of task {culprit}"
                    ),
                });
                s
            } else {
                let paused = if rollback {
                    UpdateState::RollbackPaused
                } else {
                    UpdateState::Paused
                };
                with_status(
                    service,
                    paused,
                    now_ms,
                    format!("{what} paused due to failure or early termination of task {culprit}"),
                )
            });
            return out;
        }
        let monitored = last_running.is_none_or(|r| now_ms >= r.saturating_add(cfg.monitor_ms));
        if candidates.is_empty() && in_flight == 0 && monitored {
            let (state, message) = if rollback {
                (UpdateState::RollbackCompleted, "rollback completed")
            } else {
                (UpdateState::Completed, "update completed")
            };
            out.service = Some(with_status(service, state, now_ms, message.into()));
            return out;
        }
    }
    if status.is_some_and(|s| matches!(s.state, UpdateState::Paused | UpdateState::RollbackPaused))
    {
        return out;
    }
    if in_flight > 0 || last_running.is_some_and(|r| now_ms < r.saturating_add(cfg.delay_ms)) {
        return out;
    }
    let n = match cfg.parallelism {
        0 => candidates.len(),
        p => p as usize,
    };
    out.replace = candidates.iter().take(n).map(|t| t.id.clone()).collect();
    out
}
