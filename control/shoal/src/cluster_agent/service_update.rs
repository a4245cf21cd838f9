//! `service update` and `service rollback` on the manager: the service a request makes
//! of the stored one, its spec checked as `service create` checks a new one, with the
//! previous spec and the update status Swarm keeps for the scheduler's rolling update
//! (a job has none: every change of it starts a new iteration of its run).

use shoal_cluster::store::{
    ClusterState, JobStatus, ObjectKind, Service, ServiceMode, ServiceSpec, UpdateState,
    UpdateStatus,
};
use shoal_orchestrator::image::ImageRef;

use super::data_objects::change_references;
use super::services::{network_id, prepare_spec};
use crate::api::{ApiError, ServiceChanges};

/// `old` with `changes` made at `now`: the spec changed and checked; when its tasks
/// must change (or `--force`), the old spec kept as the previous one and an update
/// started; a rollback swaps the spec and the previous one. Nothing is written here.
pub(super) fn updated_service(
    state: &ClusterState,
    old: &Service,
    changes: &ServiceChanges,
    now: u64,
) -> Result<Service, ApiError> {
    let mut service = old.clone();
    service.updated_ms = now;
    if changes.rollback {
        if !changes.is_rollback_alone() {
            return Err(ApiError::new(
                "other flags may not be combined with --rollback",
            ));
        }
        let Some(previous) = old.previous_spec.clone() else {
            return Err(ApiError::new(format!(
                "service {} does not have a previous spec",
                old.spec.name
            )));
        };
        // Checked again: a network it names may be gone since.
        service.spec = prepare_spec(state, previous)?;
        service.previous_spec = Some(old.spec.clone());
        if service.spec.mode.is_job() {
            next_iteration(&mut service, now);
            return Ok(service);
        }
        service.update_status = Some(UpdateStatus {
            state: UpdateState::RollbackStarted,
            started_ms: now,
            completed_ms: None,
            message: "manually requested rollback".into(),
        });
        return Ok(service);
    }
    let spec = changed_spec(state, &old.spec, changes)?;
    with_spec(state, service, spec, changes.force, now)
}

/// `old` (already stamped `now`) running `spec` from now on: checked, a rolling update
/// started when its tasks change or `force` says so, a job run again.
pub(super) fn with_spec(
    state: &ClusterState,
    mut service: Service,
    spec: ServiceSpec,
    force: bool,
    now: u64,
) -> Result<Service, ApiError> {
    let old = service.clone();
    let spec = prepare_spec(state, spec)?;
    if force {
        service.force_update += 1;
    }
    if spec.mode.is_job() {
        // As Swarm: any update of a job runs it again.
        service.previous_spec = Some(old.spec.clone());
        service.spec = spec;
        next_iteration(&mut service, now);
        return Ok(service);
    }
    if force || spec.tasks_differ(&old.spec) {
        service.previous_spec = Some(old.spec.clone());
        service.update_status = Some(UpdateStatus {
            state: UpdateState::Updating,
            started_ms: now,
            completed_ms: None,
            message: "update in progress".into(),
        });
    }
    service.spec = spec;
    Ok(service)
}

/// Starts a new run of a job service (Swarm's `JobIteration`): the scheduler makes its
/// tasks again and stops those of the previous run still going.
pub(super) fn next_iteration(service: &mut Service, now: u64) {
    let status = service.job_status.get_or_insert_with(JobStatus::default);
    status.job_iteration += 1;
    status.last_execution_ms = now;
}

/// The variable's name in a `K=V` entry.
fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// `spec` with `changes` made, in Docker's order (labels and environment: add, then
/// remove; ports and networks: remove, then add); networks to add are resolved to IDs.
fn changed_spec(
    state: &ClusterState,
    spec: &ServiceSpec,
    changes: &ServiceChanges,
) -> Result<ServiceSpec, ApiError> {
    let mut spec = spec.clone();
    if let Some(image) = &changes.image {
        if image.trim().is_empty() {
            return Err(ApiError::new("the image must not be empty"));
        }
        ImageRef::parse(image).map_err(ApiError::new)?;
        spec.image = image.clone();
    }
    if let Some(replicas) = changes.replicas {
        // Docker's `service update --replicas` changes a replicated service only (a
        // replicated job takes `service scale`).
        if !matches!(spec.mode, ServiceMode::Replicated { .. }) {
            return Err(ApiError::new(
                "replicas can only be used with replicated mode",
            ));
        }
        spec.mode = ServiceMode::Replicated { replicas };
    }
    if let Some(args) = &changes.args {
        spec.args = args.clone();
    }
    for entry in &changes.env_add {
        if entry.is_empty() || entry.starts_with('=') {
            return Err(ApiError::new(format!(
                "invalid environment variable {entry:?}: expected K=V"
            )));
        }
        match spec.env.iter_mut().find(|e| env_key(e) == env_key(entry)) {
            Some(e) => e.clone_from(entry),
            None => spec.env.push(entry.clone()),
        }
    }
    spec.env
        .retain(|e| !changes.env_rm.iter().any(|k| env_key(k) == env_key(e)));
    spec.labels.extend(changes.label_add.clone());
    for key in &changes.label_rm {
        spec.labels.remove(key);
    }
    spec.ports.retain(|p| {
        !changes.publish_rm.iter().any(|rm| {
            rm.protocol == p.protocol
                && if rm.published == 0 {
                    rm.target == p.published || rm.target == p.target
                } else {
                    rm.published == p.published && rm.target == p.target
                }
        })
    });
    for port in &changes.publish_add {
        // A port published again with other settings (its target, mode, balancing)
        // replaces the one it had.
        let same = |p: &shoal_cluster::store::PortConfig| {
            p.protocol == port.protocol
                && if port.published == 0 {
                    p == port
                } else {
                    p.published == port.published
                }
        };
        match spec.ports.iter_mut().find(|p| same(p)) {
            Some(p) => *p = *port,
            None => spec.ports.push(*port),
        }
    }
    change_references(
        state,
        &mut spec,
        ObjectKind::Secret,
        &changes.secret_add,
        &changes.secret_rm,
    )?;
    change_references(
        state,
        &mut spec,
        ObjectKind::Config,
        &changes.config_add,
        &changes.config_rm,
    )?;
    for reference in &changes.network_rm {
        let id = network_id(state, reference)?;
        spec.networks.retain(|n| *n != id);
        spec.network_aliases.remove(&id);
    }
    for reference in &changes.network_add {
        let id = network_id(state, reference)?;
        if spec.networks.contains(&id) {
            return Err(ApiError::new(format!(
                "service is already attached to network {reference}"
            )));
        }
        spec.networks.push(id);
    }
    for (reference, aliases) in &changes.network_aliases {
        let id = network_id(state, reference)?;
        if !changes
            .network_add
            .iter()
            .any(|r| network_id(state, r).ok().as_ref() == Some(&id))
        {
            return Err(ApiError::new(format!(
                "network alias {}: network {reference} is not among --network-add",
                aliases.join(", ")
            )));
        }
        spec.network_aliases
            .entry(id)
            .or_default()
            .extend(aliases.iter().cloned());
    }
    changes.container.apply(&mut spec.container);
    for c in &changes.constraint_add {
        if !spec.constraints.contains(c) {
            spec.constraints.push(c.clone());
        }
    }
    spec.constraints
        .retain(|c| !changes.constraint_rm.contains(c));
    // Docker's order: the ones named removed, then the ones added appended.
    let prefs = &mut spec.placement.preferences;
    prefs.retain(|d| !changes.placement_pref_rm.contains(d));
    prefs.extend(changes.placement_pref_add.iter().cloned());
    if let Some(max) = changes.max_replicas_per_node {
        spec.placement.max_replicas_per_node = max;
    }
    if let Some(mode) = changes.endpoint_mode {
        spec.endpoint_mode = mode;
    }
    spec.healthcheck = changes
        .health
        .apply(spec.healthcheck.take())
        .map_err(ApiError::new)?;
    changes.restart.apply(&mut spec);
    spec.stop_grace_ms = changes.stop_grace_ms.unwrap_or(spec.stop_grace_ms);
    changes
        .update_config
        .apply(&mut spec.update_config, "update")
        .map_err(ApiError::new)?;
    changes
        .rollback_config
        .apply(&mut spec.rollback_config, "rollback")
        .map_err(ApiError::new)?;
    Ok(spec)
}

#[cfg(test)]
mod tests;
