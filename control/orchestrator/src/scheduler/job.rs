//! Jobs (`--mode replicated-job|global-job`), Swarm's way: tasks that run to completion.
//!
//! - Every change of a job service raises its `JobStatus.job_iteration` (the manager
//!   does, [`shoal_cluster::store::JobStatus`]); only tasks of the current iteration
//!   count. Tasks of older ones still meant to run are told to stop and stay as history.
//! - A task that exits 0 is Complete: its desired state becomes Complete and it is never
//!   run again (`--restart-condition any` means `on-failure` for a job). One that fails
//!   is replaced by the restart policy, in its slot (on its node for a global job);
//!   until then it keeps its place, as a running one does.
//! - Replicated job: slots `1..=total_completions`, each ending with one completed task;
//!   at most `max_concurrent` tasks run (or wait to restart) at once. Once every slot
//!   has completed, nothing more is made.
//! - Global job: one task per eligible node; a node that becomes eligible later (joins,
//!   or is made active again) gets one too, as Docker documents it.
//!
//! No rolling update: the update machinery ([`super::update`]) never sees a job.

use std::collections::BTreeSet;

use shoal_cluster::store::{Service, ServiceMode, Task, TaskState};

use super::{may_keep, may_take, Constraint, Planner};

/// The iteration a job service runs now.
pub fn iteration(service: &Service) -> u64 {
    service.job_status.map_or(0, |j| j.job_iteration)
}

/// What became of one task of the current iteration in this plan.
enum Outcome {
    /// Completed: its place is done.
    Completed,
    /// Runs, waits for a node or to be restarted: its place is taken.
    Holds,
    /// Told to stop: its place is free again (a replacement may be made now).
    Freed,
}

/// Looks at a live task of the current iteration: marks it done once it completed,
/// replaces it by the restart policy once it failed, places it if it has no node,
/// stops it if its node may not keep it.
fn settle(p: &mut Planner<'_>, t: &Task, service: &Service, constraints: &[Constraint]) -> Outcome {
    if t.status.state == TaskState::Complete {
        p.stop(t, TaskState::Complete);
        return Outcome::Completed;
    }
    if let Some(replace) = p.replace_ended(t, service) {
        if replace {
            p.stop(t, TaskState::Shutdown);
            return Outcome::Freed;
        }
        return Outcome::Holds;
    }
    match &t.node_id {
        None => {
            let placed = p.place(t.clone(), service, constraints);
            if placed != *t {
                p.changed.insert(placed.id.clone(), placed);
            }
            Outcome::Holds
        }
        Some(node) if !may_keep(p.state.nodes.get(node), constraints) => {
            p.stop(t, TaskState::Shutdown);
            Outcome::Freed
        }
        Some(_) => Outcome::Holds,
    }
}

/// Plans one job service's tasks.
pub(super) fn plan(
    p: &mut Planner<'_>,
    service: &Service,
    constraints: &[Constraint],
    new_id: &mut dyn FnMut() -> String,
) {
    let iteration = iteration(service);
    let tasks: Vec<&Task> = p.state.service_tasks(&service.id).collect();
    for t in &tasks {
        if t.job_iteration != Some(iteration) && t.desired_state == TaskState::Running {
            p.stop(t, TaskState::Shutdown);
        }
    }
    let mut completed = 0u64;
    let mut holding = 0u64;
    // Slots (nodes, for a global job) taken by a completed or live task.
    let mut taken_slots = BTreeSet::new();
    let mut taken_nodes = BTreeSet::new();
    // Places freed now by a restart: their replacement goes there first, carrying the
    // restart counters.
    let mut restarting = Vec::new();
    for t in tasks.iter().filter(|t| t.job_iteration == Some(iteration)) {
        let outcome = match t.desired_state {
            TaskState::Complete => Outcome::Completed,
            TaskState::Running => settle(p, t, service, constraints),
            _ => continue,
        };
        match outcome {
            Outcome::Completed => completed += 1,
            Outcome::Holds => holding += 1,
            Outcome::Freed => {
                if p.carry.contains_key(&super::update::group_of(t, service)) {
                    restarting.push(t.slot);
                }
                continue;
            }
        }
        taken_slots.insert(t.slot);
        if let Some(node) = &t.node_id {
            taken_nodes.insert(node.clone());
        }
    }
    match service.spec.mode {
        ServiceMode::ReplicatedJob {
            max_concurrent,
            total_completions,
        } => {
            let wanted = max_concurrent
                .saturating_sub(holding)
                .min(total_completions.saturating_sub(completed + holding));
            let free = restarting
                .into_iter()
                .chain(1..=total_completions)
                .filter(|slot| (1..=total_completions).contains(slot))
                .filter(|slot| taken_slots.insert(*slot));
            for slot in free.take(wanted as usize).collect::<Vec<_>>() {
                p.new_task(service, constraints, slot, None, new_id);
            }
        }
        ServiceMode::GlobalJob => {
            let nodes: Vec<String> = p
                .state
                .nodes
                .values()
                .filter(|n| may_take(n, constraints) && !taken_nodes.contains(&n.id))
                .map(|n| n.id.clone())
                .collect();
            for node in nodes {
                p.new_task(service, constraints, 0, Some(node), new_id);
            }
        }
        ServiceMode::Replicated { .. } | ServiceMode::Global => {}
    }
}

#[cfg(test)]
mod tests;
