//! What the CLI shows of a job (`--mode replicated-job|global-job`), after Docker's
//! CLI: `service ls`'s `2/5 (3/5 completed)`, and the wait of `create`/`update`/`scale`
//! until the job's run is complete. Only the tasks of the service's current iteration
//! count: earlier runs are history.

use shoal_cluster::store::{Service, ServiceMode, Task, TaskState};
use shoal_orchestrator::scheduler::job::iteration;

use crate::api::ServiceStateView;

/// The tasks of the run `s` is on now.
fn current<'a>(s: &'a Service, tasks: &'a [Task]) -> impl Iterator<Item = &'a Task> + 'a {
    let run = iteration(s);
    tasks
        .iter()
        .filter(move |t| t.service_id == s.id && t.job_iteration == Some(run))
}

/// Running, desired, completed and total task counts, as Swarm's `ServiceStatus` gives
/// them for a job: desired is `MaxConcurrent` for a replicated job, the tasks still to
/// complete for a global one.
pub(super) fn counts(s: &Service, tasks: &[Task]) -> (u64, u64, u64, u64) {
    let mut running = 0;
    let mut completed = 0;
    let mut to_complete = 0;
    for t in current(s, tasks) {
        if t.status.state == TaskState::Running {
            running += 1;
        }
        if t.status.state == TaskState::Complete {
            completed += 1;
        } else if t.desired_state == TaskState::Running {
            to_complete += 1;
        }
    }
    match s.spec.mode {
        ServiceMode::ReplicatedJob {
            max_concurrent,
            total_completions,
        } => (running, max_concurrent, completed, total_completions),
        _ => (running, to_complete, completed, to_complete + completed),
    }
}

/// `service ls`'s REPLICAS of a job: `running/desired (completed/total completed)`.
pub(super) fn replicas_text(s: &Service, tasks: &[Task]) -> String {
    let (running, desired, completed, total) = counts(s, tasks);
    format!("{running}/{desired} ({completed}/{total} completed)")
}

/// Progress of a job's run: the lines to print, and whether it is complete (every
/// completion of a replicated job; a task completed on every node a global job's run
/// has a task for).
pub(super) fn progress(s: &Service, view: &ServiceStateView) -> (Vec<String>, bool) {
    let (_, _, completed, total) = counts(s, &view.tasks);
    let mut tasks: Vec<&Task> = current(s, &view.tasks)
        .filter(|t| matches!(t.desired_state, TaskState::Running | TaskState::Complete))
        .collect();
    tasks.sort_by_key(|t| (t.slot, t.node_id.clone()));
    let active = tasks
        .iter()
        .filter(|t| !t.status.state.is_terminal())
        .count();
    let mut lines = vec![format!(
        "{}: job progress: {completed} out of {total} complete",
        s.spec.name
    )];
    if let ServiceMode::ReplicatedJob { max_concurrent, .. } = s.spec.mode {
        let at_once = max_concurrent.min(total.saturating_sub(completed));
        lines.push(format!("active tasks: {active} out of {at_once} tasks"));
    }
    for t in &tasks {
        let place = if t.slot > 0 {
            format!("{}/{total}", t.slot)
        } else {
            let node = t.node_id.clone().unwrap_or_default();
            view.nodes.get(&node).cloned().unwrap_or(node)
        };
        let what = t
            .status
            .err
            .clone()
            .unwrap_or_else(|| t.status.state.as_str().to_owned());
        lines.push(format!("{place}: {what}"));
    }
    let done = match s.spec.mode {
        ServiceMode::ReplicatedJob { .. } => completed >= total,
        _ => !tasks.is_empty() && completed == total,
    };
    (lines, done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_cluster::store::{JobStatus, TaskStatus};

    fn job(mode: ServiceMode, iteration: u64) -> Service {
        serde_json::from_value(serde_json::json!({
            "id": "j", "spec": {"name": "backup", "image": "i", "mode": mode},
            "job_status": JobStatus { job_iteration: iteration, last_execution_ms: 0 },
        }))
        .expect("a service")
    }

    fn task(slot: u64, run: u64, desired: TaskState, state: TaskState) -> Task {
        serde_json::from_value(serde_json::json!({
            "id": format!("t{slot}-{run}-{state}"), "service_id": "j", "slot": slot,
            "node_id": "n1", "desired_state": desired, "job_iteration": run,
            "status": TaskStatus { state, ..Default::default() },
        }))
        .expect("a task")
    }

    #[test]
    fn ls_counts_the_current_run_as_docker_shows_it() {
        let s = job(
            ServiceMode::ReplicatedJob {
                max_concurrent: 2,
                total_completions: 5,
            },
            1,
        );
        let tasks = vec![
            // The previous run: history, not counted.
            task(1, 0, TaskState::Complete, TaskState::Complete),
            task(2, 0, TaskState::Complete, TaskState::Complete),
            task(1, 1, TaskState::Complete, TaskState::Complete),
            task(2, 1, TaskState::Complete, TaskState::Complete),
            task(3, 1, TaskState::Complete, TaskState::Complete),
            task(4, 1, TaskState::Running, TaskState::Running),
            task(5, 1, TaskState::Running, TaskState::Running),
        ];
        assert_eq!(replicas_text(&s, &tasks), "2/2 (3/5 completed)");
        let view = ServiceStateView {
            services: vec![s.clone()],
            tasks: tasks.clone(),
            nodes: Default::default(),
            networks: vec![],
            now_ms: 0,
        };
        let (lines, done) = progress(&s, &view);
        assert!(!done);
        assert_eq!(lines[0], "backup: job progress: 3 out of 5 complete");
        assert_eq!(lines[1], "active tasks: 2 out of 2 tasks");
        assert_eq!(lines[6], "5/5: running");

        let g = job(ServiceMode::GlobalJob, 0);
        let tasks = vec![
            task(0, 0, TaskState::Complete, TaskState::Complete),
            task(0, 0, TaskState::Running, TaskState::Starting),
        ];
        assert_eq!(replicas_text(&g, &tasks), "0/1 (1/2 completed)");
    }
}
