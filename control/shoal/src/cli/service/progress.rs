//! `shoal service create/scale/update` without `--detach`: waiting for the service to
//! converge, printing each replica's progress as Docker does.

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use shoal_cluster::store::{Service, ServiceMode, Task, TaskState};

use super::{state, views::replicas};
use crate::{
    api::{client::Client, ServiceStateView},
    cli::CliError,
};

/// How long `create`/`scale`/`update` wait for the service to converge.
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
        ServiceMode::Global => live
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
        for s in &view.services {
            let (running, desired) = replicas(s, &view.tasks);
            let live: Vec<&Task> = view
                .tasks
                .iter()
                .filter(|t| t.service_id == s.id && t.desired_state == TaskState::Running)
                .collect();
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
            let converged = running == desired
                && live.len() as u64 == desired
                && live.iter().all(|t| t.force_update == s.force_update)
                && (desired > 0 || matches!(s.spec.mode, ServiceMode::Replicated { .. }));
            all &= converged;
            lines.push(format!(
                "{}: overall progress: {running} out of {desired} tasks",
                s.spec.name
            ));
            lines.extend(progress_lines(s, &live, desired, &view));
        }
        let text = lines.join("\n");
        if text != last_line {
            let mut o = out.lock();
            let _ = writeln!(o, "{text}");
            let _ = o.flush();
            last_line = text;
        }
        if all && !view.services.is_empty() {
            return Ok("verify: Service converged\n".into());
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
