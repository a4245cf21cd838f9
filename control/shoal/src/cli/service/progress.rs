//! `shoal service create/scale/update/rollback` without `--detach`: waiting for the
//! service to converge, printing each replica's progress as Docker does.
//!
//! A service has converged when its tasks all run its current spec and no update (or
//! rollback) is in progress, or when the update this command started says it finished;
//! one that paused ends the wait with its message. A job's wait ends when its run is
//! complete ("job complete", as Docker).

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use shoal_cluster::store::{Service, ServiceMode, Task, TaskState, UpdateState, UpdateStatus};

use super::{job, state, views::replicas};
use crate::{
    api::{client::Client, ServiceStateView},
    cli::CliError,
};

/// How long `create`/`scale`/`update`/`rollback` wait for the service to converge.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);
/// A task pending for lack of a node (or address) this long ends the wait with its reason.
const PENDING_GIVE_UP: Duration = Duration::from_secs(3);

/// One line per replica (per node for a global service): its task's state, as Docker's
/// progress shows it.
fn progress_lines(
    s: &Service,
    live: &[&Task],
    desired: u64,
    view: &ServiceStateView,
) -> Vec<String> {
    let bar = |state: TaskState| {
        let done = match state {
            TaskState::New => 1,
            TaskState::Pending => 2,
            TaskState::Assigned => 3,
            TaskState::Accepted | TaskState::Preparing => 5,
            TaskState::Ready => 6,
            TaskState::Starting => 7,
            TaskState::Running => 9,
            _ => 0,
        };
        let width = done * 50 / 9;
        format!("[{}>{}]", "=".repeat(width), " ".repeat(50 - width))
    };
    match s.spec.mode {
        ServiceMode::Replicated { .. } => (1..=desired)
            .map(|slot| {
                let state = live
                    .iter()
                    .find(|t| t.slot == slot)
                    .map_or(TaskState::New, |t| t.status.state);
                format!("{slot}/{desired}: {:<10} {}", state.as_str(), bar(state))
            })
            .collect(),
        ServiceMode::Global | ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob => live
            .iter()
            .map(|t| {
                let node = t
                    .node_id
                    .as_ref()
                    .map(|n| view.nodes.get(n).cloned().unwrap_or_else(|| n.clone()))
                    .unwrap_or_default();
                format!(
                    "{node}: {:<10} {}",
                    t.status.state.as_str(),
                    bar(t.status.state)
                )
            })
            .collect(),
    }
}

/// The task runs what the service asks now (a task made before tasks kept their spec
/// is taken to).
fn up_to_date(t: &Task, s: &Service) -> bool {
    t.force_update == s.force_update
        && t.spec
            .as_deref()
            .is_none_or(|spec| !spec.tasks_differ(&s.spec))
}

/// The service's update status if it started with this command (`since_ms`), not
/// one left from an earlier update.
fn fresh_status(s: &Service, since_ms: u64) -> Option<&UpdateStatus> {
    s.update_status
        .as_ref()
        .filter(|u| u.started_ms >= since_ms)
}

/// An error worth retrying while waiting (no leader or quorum for a moment).
fn transient(e: &CliError) -> bool {
    let text = e.to_string();
    text.contains("no quorum") || text.contains("not the leader") || text.contains("cannot reach")
}

/// Waits until each service converges, printing progress; an error when one cannot.
pub(super) fn wait_converged(
    client: &Client,
    services: &[String],
    since_ms: u64,
) -> Result<String, CliError> {
    let start = Instant::now();
    let mut pending_since: Option<Instant> = None;
    let mut last_line = String::new();
    let out = std::io::stdout();
    loop {
        // A manager busy with an election answers again shortly: retry until the bound.
        let view = match state(client, services.to_vec()) {
            Ok(v) => v,
            Err(e) if start.elapsed() < CONVERGE_TIMEOUT && transient(&e) => {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut lines = Vec::new();
        let mut all = true;
        let mut pending_err = None;
        let mut rolled_back = Vec::new();
        for s in &view.services {
            let (_, desired) = replicas(s, &view.tasks);
            let live: Vec<&Task> = view
                .tasks
                .iter()
                .filter(|t| t.service_id == s.id && t.desired_state == TaskState::Running)
                .collect();
            let current: Vec<&Task> = live.iter().copied().filter(|t| up_to_date(t, s)).collect();
            let running = current
                .iter()
                .filter(|t| t.status.state == TaskState::Running)
                .count() as u64;
            if let Some(t) = view.tasks.iter().find(|t| {
                t.service_id == s.id
                    && t.created_ms >= since_ms
                    && t.status.state == TaskState::Rejected
            }) {
                return Err(CliError::Output(format!(
                    "service {} cannot converge: task {} was rejected: {}",
                    s.spec.name,
                    t.display_name(&s.spec.name),
                    t.status.err.clone().unwrap_or_default()
                )));
            }
            if let Some(t) = live.iter().find(|t| t.status.state == TaskState::Pending) {
                pending_err = Some(format!(
                    "service {} cannot converge: task {} is pending: {}",
                    s.spec.name,
                    t.display_name(&s.spec.name),
                    t.status.err.clone().unwrap_or_default()
                ));
            }
            if s.spec.mode.is_job() {
                let (job_lines, complete) = job::progress(s, &view);
                lines.extend(job_lines);
                all &= complete;
                continue;
            }
            let fresh = fresh_status(s, since_ms);
            match fresh.map(|u| u.state) {
                Some(UpdateState::Paused) => {
                    return Err(CliError::Output(format!(
                        "service update paused: {}",
                        fresh.map_or("", |u| u.message.as_str())
                    )));
                }
                Some(UpdateState::RollbackPaused) => {
                    return Err(CliError::Output(format!(
                        "service rollback paused: {}",
                        fresh.map_or("", |u| u.message.as_str())
                    )));
                }
                _ => {}
            }
            let all_current = current.len() == live.len() && live.len() as u64 == desired;
            let in_progress = s
                .update_status
                .as_ref()
                .is_some_and(|u| u.state.in_progress());
            // The update says it is done (tasks it let fail included, as Docker ends then).
            let finished = all_current
                && fresh.is_some_and(|u| {
                    matches!(
                        u.state,
                        UpdateState::Completed | UpdateState::RollbackCompleted
                    )
                });
            let converged = finished
                || (all_current
                    && running == desired
                    && !in_progress
                    && (desired > 0 || matches!(s.spec.mode, ServiceMode::Replicated { .. })));
            all &= converged;
            let rollback = fresh.filter(|u| u.state.is_rollback());
            if let Some(u) = rollback.filter(|u| u.state == UpdateState::RollbackStarted) {
                lines.push(format!("rollback: {}", u.message));
            }
            if let Some(u) = rollback.filter(|u| u.state == UpdateState::RollbackCompleted) {
                rolled_back.push(format!("rollback: {}\n", u.message));
            }
            lines.push(format!(
                "{}: overall progress: {}{running} out of {desired} tasks",
                s.spec.name,
                if rollback.is_some() {
                    "rolling back update: "
                } else {
                    ""
                }
            ));
            lines.extend(progress_lines(s, &current, desired, &view));
        }
        let text = lines.join("\n");
        if text != last_line {
            let mut o = out.lock();
            let _ = writeln!(o, "{text}");
            let _ = o.flush();
            last_line = text;
        }
        if all && !view.services.is_empty() {
            if view.services.iter().all(|s| s.spec.mode.is_job()) {
                return Ok("job complete\n".into());
            }
            return Ok(format!(
                "verify: Service converged\n{}",
                rolled_back.concat()
            ));
        }
        match (pending_err, pending_since) {
            (Some(e), Some(t)) if t.elapsed() > PENDING_GIVE_UP => {
                return Err(CliError::Output(e));
            }
            (Some(_), None) => pending_since = Some(Instant::now()),
            (None, _) => pending_since = None,
            _ => {}
        }
        if start.elapsed() > CONVERGE_TIMEOUT {
            return Err(CliError::Output(format!(
                "the service did not converge within {} s (see `shoal service ps`)",
                CONVERGE_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
