//! The manager's answers to `service ...` and `network ...` requests: checks first
//! (nothing is written when one fails), then one store command per object.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use shoal_cluster::{
    ipam::{NetworkAddressing, Networks, PublishedPorts},
    manager::Manager,
    store::{
        ClusterState, Command, JobStatus, Network, ObjectKind, Placement, PublishMode, Service,
        ServiceMode, ServiceSpec, UpdateConfig,
    },
};
use tracing::info;

use super::{
    cluster_error,
    data_objects::resolve_references,
    nodes::execute,
    reserved_ports::{AgentPorts, ReservedPorts},
    service_update::{next_iteration, updated_service, with_spec},
};
use crate::api::{
    check_alias, check_container_options, ApiError, Reply, Request, ServiceStateView,
};
use crate::service_logs::PrefixStyle;
use shoal_cluster::registry_auth::RegistryCredentials;
use shoal_orchestrator::{
    docker::DockerClient,
    image::{self, ImageRef},
    scheduler::{new_id, now_ms, Constraint},
};

/// Docker's driver option for an encrypted overlay network (`--opt encrypted`).
const ENCRYPTED_OPTION: &str = "encrypted";

/// Longest wait for the registry's answer when pinning an image to its digest.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// `image` pinned to the digest its tag points at now (`name:tag@sha256:...`), asked of
/// the registry through this manager's dockerd, so every node runs the same bytes. When
/// that fails, Swarm's way: a warning, and the image as given (each node then pulls the
/// tag on its own).
async fn pin_image(
    docker_socket: Option<&Path>,
    image: &str,
    creds: Option<&RegistryCredentials>,
    warnings: &mut Vec<String>,
) -> String {
    let reference = match ImageRef::parse(image) {
        Ok(r) if r.digest.is_none() => r,
        // Already pinned (or refused earlier).
        _ => return image.to_owned(),
    };
    let resolved = match docker_socket {
        None => Err("this manager has no dockerd to ask".to_owned()),
        Some(socket) => match DockerClient::connect(socket).await {
            Err(e) => Err(e.to_string()),
            Ok(docker) => tokio::time::timeout(
                RESOLVE_TIMEOUT,
                image::resolve_digest(&docker, &reference, creds),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", RESOLVE_TIMEOUT.as_secs()))),
        },
    };
    match resolved {
        Ok(digest) => reference.pinned(&digest),
        Err(why) => {
            warnings.push(format!(
                "image {image} could not be accessed on a registry to record its digest ({why}). Each node will access {image} independently, possibly leading to different nodes running different versions of the image."
            ));
            image.to_owned()
        }
    }
}

/// An object reference to its ID, Docker's way: exact ID, exact name, unique ID prefix.
pub(super) fn resolve<'a>(
    kind: &str,
    objects: impl Iterator<Item = (&'a str, &'a str)>,
    reference: &str,
) -> Result<String, ApiError> {
    if reference.is_empty() {
        return Err(ApiError::new(format!("{kind} reference must not be empty")));
    }
    let all: Vec<(&str, &str)> = objects.collect();
    if let Some((id, _)) = all.iter().find(|(id, _)| *id == reference) {
        return Ok((*id).to_string());
    }
    if let Some((id, _)) = all.iter().find(|(_, name)| *name == reference) {
        return Ok((*id).to_string());
    }
    let prefixed: Vec<&str> = all
        .iter()
        .filter(|(id, _)| id.starts_with(reference))
        .map(|(id, _)| *id)
        .collect();
    match prefixed.as_slice() {
        [id] => Ok((*id).to_string()),
        [] => Err(ApiError::new(format!("{kind} {reference} not found"))),
        _ => Err(ApiError::new(format!(
            "{kind} {reference} is ambiguous ({} matches)",
            prefixed.len()
        ))),
    }
}

fn service_id(state: &ClusterState, reference: &str) -> Result<String, ApiError> {
    resolve(
        "service",
        state
            .services
            .values()
            .map(|s| (s.id.as_str(), s.spec.name.as_str())),
        reference,
    )
}

pub(super) fn network_id(state: &ClusterState, reference: &str) -> Result<String, ApiError> {
    resolve(
        "network",
        state
            .networks
            .values()
            .map(|n| (n.id.as_str(), n.name.as_str())),
        reference,
    )
}

/// Docker's rule for object names.
pub(super) fn check_name(kind: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(format!(
            "invalid {kind} name {name:?}: 1 to 63 characters of [a-zA-Z0-9_.-], starting with a letter or digit"
        )))
    }
}

/// Checks a spec from the CLI and resolves its networks; chooses free published ports.
pub(super) fn prepare_spec(
    state: &ClusterState,
    mut spec: ServiceSpec,
) -> Result<ServiceSpec, ApiError> {
    check_name("service", &spec.name)?;
    // Docker's service names: no dots (task names are `<service>.<slot>`), and `-`/`_`
    // only between letters and digits.
    let n = &spec.name;
    if n.contains('.') || n.ends_with(['-', '_']) {
        return Err(ApiError::new(format!(
            "invalid service name {n:?}: letters, digits, and - or _ between them"
        )));
    }
    if spec.image.trim().is_empty() {
        return Err(ApiError::new("an image is required"));
    }
    ImageRef::parse(&spec.image).map_err(ApiError::new)?;
    // A job has no rolling update: every change runs it again (Swarm refuses these too).
    if spec.mode.is_job()
        && (spec.update_config != UpdateConfig::default()
            || spec.rollback_config != UpdateConfig::rollback_default())
    {
        return Err(ApiError::new(
            "update and rollback configuration is not supported for jobs",
        ));
    }
    for c in &spec.constraints {
        Constraint::parse(c).map_err(ApiError::new)?;
    }
    for d in &spec.placement.preferences {
        Placement::spread_label(d).map_err(ApiError::new)?;
    }
    if spec.placement.max_replicas_per_node > 0 && spec.mode.is_global() {
        return Err(ApiError::new(
            "replicas-max-per-node can only be used with replicated mode",
        ));
    }
    let mut networks = Vec::new();
    for reference in &spec.networks {
        let id = network_id(state, reference)?;
        if state.networks[&id].ingress {
            return Err(ApiError::new(
                "a service cannot be attached to the ingress network explicitly: publish a port instead",
            ));
        }
        if !networks.contains(&id) {
            networks.push(id);
        }
    }
    spec.networks = networks;
    resolve_references(state, ObjectKind::Secret, &mut spec.secrets)?;
    resolve_references(state, ObjectKind::Config, &mut spec.configs)?;
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (reference, names) in &spec.network_aliases {
        let id = network_id(state, reference)?;
        if !spec.networks.contains(&id) {
            return Err(ApiError::new(format!(
                "network alias {}: the service is not on network {reference}",
                names.join(", ")
            )));
        }
        let list = aliases.entry(id).or_default();
        for name in names {
            check_alias(name).map_err(ApiError::new)?;
            if !list.contains(name) {
                list.push(name.clone());
            }
        }
    }
    aliases.retain(|_, names| !names.is_empty());
    spec.network_aliases = aliases;
    check_container_options(&spec.container).map_err(ApiError::new)?;
    if spec.ports.iter().any(|p| p.mode == PublishMode::Ingress)
        && !state.networks.values().any(|n| n.ingress)
    {
        return Err(ApiError::new(
            "the cluster has no ingress network: ports can only be published in host mode",
        ));
    }
    let mut ports = PublishedPorts::from_state(state);
    // The ports given first, so that the ones chosen avoid them all.
    for p in spec.ports.iter().filter(|p| p.published != 0) {
        ports.claim(p.protocol, p.published);
    }
    let mut mine: BTreeSet<(u16, String)> = BTreeSet::new();
    for p in &mut spec.ports {
        if p.target == 0 {
            return Err(ApiError::new(
                "invalid port: the target port must be 1-65535",
            ));
        }
        let proto = format!("{:?}", p.protocol);
        if p.published == 0 {
            p.published = ports
                .allocate(p.protocol)
                .map_err(|e| ApiError::new(e.to_string()))?;
        }
        if !mine.insert((p.published, proto.clone())) {
            return Err(ApiError::new(format!(
                "port {}/{} is published twice",
                p.published,
                proto.to_lowercase()
            )));
        }
    }
    Ok(spec)
}

/// Answers one service or network request (the manager side).
/// How long `network rm` waits for the tasks of removed services to stop: their stop
/// grace period (10 s by default) and then some.
const NETWORK_RM_WAITS_AT_MOST: std::time::Duration = std::time::Duration::from_secs(30);

pub(super) async fn request(
    manager: &Manager,
    docker_socket: Option<&Path>,
    agent_ports: AgentPorts,
    request: Request,
) -> Result<Reply, ApiError> {
    let state = manager.state().await.map_err(cluster_error)?;
    let reserved = ReservedPorts::new(&state, agent_ports);
    match request {
        Request::ServiceCreate {
            spec,
            no_resolve_image,
            registry_auth,
        } => {
            let mut spec = prepare_spec(&state, *spec)?;
            reserved.check(&spec)?;
            let now = now_ms();
            let mut warnings = Vec::new();
            if !no_resolve_image {
                spec.image = pin_image(
                    docker_socket,
                    &spec.image,
                    registry_auth.as_deref(),
                    &mut warnings,
                )
                .await;
            }
            let id = new_id();
            let registry_auth = registry_auth
                .map(|c| manager.seal_registry_auth(&id, &c))
                .transpose()
                .map_err(cluster_error)?;
            if let ServiceMode::Replicated { replicas } = spec.mode {
                if replicas > 0 && state.nodes.is_empty() {
                    warnings.push("the cluster has no nodes to run tasks on".to_string());
                }
            }
            let spec_is_job = spec.mode.is_job();
            let service = Service {
                id: id.clone(),
                spec,
                created_ms: now,
                updated_ms: now,
                endpoint: Default::default(),
                force_update: 0,
                registry_auth,
                previous_spec: None,
                update_status: None,
                job_status: spec_is_job.then_some(JobStatus {
                    job_iteration: 0,
                    last_execution_ms: now,
                }),
                version: 0,
            };
            info!(service = %service.spec.name, %id, "service created");
            execute(
                manager,
                Command::CreateService {
                    service: Box::new(service),
                },
            )
            .await?;
            Ok(Reply::ServiceCreated { id, warnings })
        }
        Request::ServiceState { services } => {
            let ids: Vec<String> = if services.is_empty() {
                state.services.keys().cloned().collect()
            } else {
                services
                    .iter()
                    .map(|r| service_id(&state, r))
                    .collect::<Result<_, _>>()?
            };
            let wanted: BTreeSet<&String> = ids.iter().collect();
            Ok(Reply::ServiceState(Box::new(ServiceStateView {
                // Sealed credentials stay with the managers.
                services: ids
                    .iter()
                    .filter_map(|id| state.services.get(id).cloned())
                    .map(|mut s| {
                        s.registry_auth = None;
                        s
                    })
                    .collect(),
                tasks: state
                    .tasks
                    .values()
                    .filter(|t| wanted.contains(&t.service_id))
                    .cloned()
                    .collect(),
                nodes: state
                    .nodes
                    .values()
                    .map(|n| (n.id.clone(), n.hostname.clone()))
                    .collect(),
                networks: state.networks.values().cloned().collect(),
                now_ms: now_ms(),
            })))
        }
        Request::ServiceScale { scales } => {
            let mut changes = Vec::new();
            for (reference, replicas) in &scales {
                let id = service_id(&state, reference)?;
                let mut s = state.services[&id].clone();
                let now = now_ms();
                match &mut s.spec.mode {
                    ServiceMode::Replicated { replicas: r } => *r = *replicas,
                    // Swarm's scale of a job: as many completions, in a new run.
                    ServiceMode::ReplicatedJob {
                        total_completions, ..
                    } => {
                        *total_completions = *replicas;
                        s.previous_spec = Some(state.services[&id].spec.clone());
                        next_iteration(&mut s, now);
                    }
                    ServiceMode::Global | ServiceMode::GlobalJob => {
                        return Err(ApiError::new(format!(
                            "{reference}: scale can only be used with replicated or replicated-job mode"
                        )));
                    }
                }
                s.updated_ms = now;
                changes.push((reference.clone(), s));
            }
            let mut done = Vec::new();
            for (reference, s) in changes {
                execute(
                    manager,
                    Command::UpdateService {
                        service: Box::new(s),
                    },
                )
                .await?;
                done.push(reference);
            }
            Ok(Reply::ServicesChanged {
                services: done,
                warnings: Vec::new(),
            })
        }
        Request::ServiceRm { services } => {
            let ids = services
                .iter()
                .map(|r| service_id(&state, r))
                .collect::<Result<Vec<_>, _>>()?;
            let mut done = Vec::new();
            for (reference, id) in services.iter().zip(ids) {
                if done.contains(reference) {
                    continue;
                }
                execute(manager, Command::RemoveService { id }).await?;
                done.push(reference.clone());
            }
            Ok(Reply::ServicesChanged {
                services: done,
                warnings: Vec::new(),
            })
        }
        Request::ServiceUpdate {
            service,
            mut changes,
            no_resolve_image,
            registry_auth,
        } => {
            let id = service_id(&state, &service)?;
            let old = &state.services[&id];
            let mut warnings = Vec::new();
            if let Some(image) = changes.image.take() {
                if image.trim().is_empty() {
                    return Err(ApiError::new("the image must not be empty"));
                }
                ImageRef::parse(&image).map_err(ApiError::new)?;
                let image = if no_resolve_image {
                    image
                } else {
                    // The new credentials, else the ones the service has.
                    let creds = match (&registry_auth, &old.registry_auth) {
                        (Some(c), _) => Some((**c).clone()),
                        (None, Some(sealed)) => Some(
                            manager
                                .open_registry_auth(&id, sealed)
                                .map_err(cluster_error)?,
                        ),
                        (None, None) => None,
                    };
                    pin_image(docker_socket, &image, creds.as_ref(), &mut warnings).await
                };
                changes.image = Some(image);
            }
            let mut s = updated_service(&state, old, &changes, now_ms())?;
            // The spec as it would be: a port published before this check existed is
            // refused too, until `--publish-rm` takes it away.
            reserved.check(&s.spec)?;
            if let Some(c) = &registry_auth {
                s.registry_auth = Some(manager.seal_registry_auth(&id, c).map_err(cluster_error)?);
            }
            if let Some(status) = &s.update_status {
                if s.update_status != old.update_status {
                    info!(service = %s.spec.name, %id, state = status.state.as_str(), "service update started");
                }
            }
            execute(
                manager,
                Command::UpdateService {
                    service: Box::new(s),
                },
            )
            .await?;
            Ok(Reply::ServicesChanged {
                services: vec![service],
                warnings,
            })
        }
        Request::ServiceSetSpec {
            service,
            mut spec,
            version,
            force_update,
            keep_shoal_fields,
            no_resolve_image,
            registry_auth,
        } => {
            let id = service_id(&state, &service)?;
            let old = &state.services[&id];
            if old.version != version {
                return Err(ApiError::new(format!(
                    "update out of sequence: service {} is at version {}, the update was made from version {version}",
                    old.spec.name, old.version
                )));
            }
            if spec.name != old.spec.name {
                return Err(ApiError::new(format!(
                    "a service cannot be renamed ({} to {})",
                    old.spec.name, spec.name
                )));
            }
            let mut warnings = Vec::new();
            if spec.image != old.spec.image && !no_resolve_image {
                ImageRef::parse(&spec.image).map_err(ApiError::new)?;
                let creds = match (&registry_auth, &old.registry_auth) {
                    (Some(c), _) => Some((**c).clone()),
                    (None, Some(sealed)) => Some(
                        manager
                            .open_registry_auth(&id, sealed)
                            .map_err(cluster_error)?,
                    ),
                    (None, None) => None,
                };
                spec.image =
                    pin_image(docker_socket, &spec.image, creds.as_ref(), &mut warnings).await;
            }
            // A port the update does not say how to balance (Docker's clients know no
            // such field) keeps what it had.
            for p in spec.ports.iter_mut().filter(|p| p.balance.is_none()) {
                p.balance = old
                    .spec
                    .ports
                    .iter()
                    .find(|o| {
                        (o.protocol, o.published, o.target, o.mode)
                            == (p.protocol, p.published, p.target, p.mode)
                    })
                    .and_then(|o| o.balance);
            }
            // Docker's ServiceSpec cannot say these: a Docker client's update keeps them.
            if keep_shoal_fields {
                spec.container.privileged = old.spec.container.privileged;
                spec.container
                    .devices
                    .clone_from(&old.spec.container.devices);
            }
            let mut stamped = old.clone();
            stamped.updated_ms = now_ms();
            let force = force_update > old.force_update;
            let mut s = with_spec(&state, stamped, *spec, force, now_ms())?;
            reserved.check(&s.spec)?;
            if let Some(c) = &registry_auth {
                s.registry_auth = Some(manager.seal_registry_auth(&id, c).map_err(cluster_error)?);
            }
            execute(
                manager,
                Command::UpdateService {
                    service: Box::new(s),
                },
            )
            .await?;
            Ok(Reply::ServicesChanged {
                services: vec![service],
                warnings,
            })
        }
        Request::ServiceLogs {
            service,
            tail,
            since,
            no_task_ids,
            no_trunc,
            raw,
            follow,
        } => {
            if follow {
                return Err(ApiError::new(
                    "internal error: service logs -f is a streaming request",
                ));
            }
            let options = super::logs::LogsOptions {
                reference: service,
                tail,
                since,
                style: PrefixStyle {
                    no_task_ids,
                    no_trunc,
                    raw,
                },
            };
            super::logs::logs(state, manager, docker_socket, options).await
        }
        Request::NetworkCreate {
            name,
            driver,
            subnet,
            gateway,
            attachable,
            options,
            labels,
        } => {
            check_name("network", &name)?;
            let driver = driver.unwrap_or_else(|| "overlay".into());
            if driver != "overlay" {
                return Err(ApiError::new(format!(
                    "network driver {driver:?} is not supported: only overlay"
                )));
            }
            // Docker's form: the option's presence asks for it (`--opt encrypted`,
            // `encrypted=true`); a value that says no is refused rather than guessed at.
            let encrypted = match options.get(ENCRYPTED_OPTION).map(String::as_str) {
                None => false,
                Some("" | "true") => true,
                Some(other) => {
                    return Err(ApiError::new(format!(
                    "--opt encrypted={other}: leave the value out (--opt encrypted) or give true"
                )))
                }
            };
            if gateway.is_some() && subnet.is_none() {
                return Err(ApiError::new("--gateway needs --subnet"));
            }
            if let Some(n) = state.networks.values().find(|n| n.name == name) {
                return Err(ApiError::new(format!(
                    "network with name {name} already exists (ID {})",
                    n.id
                )));
            }
            let NetworkAddressing {
                subnet,
                gateway,
                vni,
            } = Networks::from_state(&state)
                .and_then(|mut networks| networks.allocate(&name, subnet, gateway))
                .map_err(|e| ApiError::new(e.to_string()))?;
            let network = Network {
                id: new_id(),
                name: name.clone(),
                driver,
                subnet: Some(subnet),
                gateway: Some(gateway),
                vni: Some(vni),
                ingress: false,
                attachable,
                internal: false,
                encrypted,
                labels,
                options,
                version: 0,
            };
            let id = network.id.clone();
            execute(manager, Command::UpsertNetwork { network }).await?;
            info!(network = %name, %id, %subnet, vni, "network created");
            Ok(Reply::NetworkCreated { id })
        }
        Request::NetworkLs => Ok(Reply::Networks {
            networks: state.networks.values().cloned().collect(),
        }),
        Request::NetworkInspect { networks } => {
            let ids = networks
                .iter()
                .map(|r| network_id(&state, r))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Reply::Networks {
                networks: ids.iter().map(|id| state.networks[id].clone()).collect(),
            })
        }
        Request::NetworkRm { networks } => {
            let ids = networks
                .iter()
                .map(|r| network_id(&state, r))
                .collect::<Result<Vec<_>, _>>()?;
            for (reference, id) in networks.iter().zip(&ids) {
                if let Some(s) = state
                    .services
                    .values()
                    .find(|s| s.spec.networks.contains(id))
                {
                    return Err(ApiError::new(format!(
                        "network {reference} is in use by service {}",
                        s.spec.name
                    )));
                }
            }
            // Tasks of services just removed still hold their addresses while they stop
            // (their grace period): wait for them, as `docker stack rm` removes the
            // services and then at once the networks.
            let started = std::time::Instant::now();
            let mut state = state;
            loop {
                let stopping = networks.iter().zip(&ids).find_map(|(reference, id)| {
                    state
                        .tasks
                        .values()
                        .find(|t| {
                            !t.status.state.is_terminal()
                                && t.networks.iter().any(|a| &a.network_id == id)
                        })
                        .map(|t| (reference, t.id.clone()))
                });
                let Some((reference, task)) = stopping else {
                    break;
                };
                if started.elapsed() > NETWORK_RM_WAITS_AT_MOST {
                    return Err(ApiError::new(format!(
                        "network {reference} is in use by task {task} (still stopping after {}s)",
                        NETWORK_RM_WAITS_AT_MOST.as_secs()
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                state = manager.state().await.map_err(cluster_error)?;
                if state
                    .services
                    .values()
                    .any(|s| ids.iter().any(|id| s.spec.networks.contains(id)))
                {
                    return Err(ApiError::new(format!(
                        "network {reference} is in use by a service again"
                    )));
                }
            }
            let mut done = Vec::new();
            for (reference, id) in networks.iter().zip(ids) {
                execute(manager, Command::RemoveNetwork { id }).await?;
                done.push(reference.clone());
            }
            Ok(Reply::NetworksChanged { networks: done })
        }
        r @ (Request::ObjectCreate { .. }
        | Request::ObjectState { .. }
        | Request::ObjectRm { .. }
        | Request::ObjectSetLabels { .. }) => {
            super::data_objects::request(manager, &state, r).await
        }
        _ => Err(ApiError::new(
            "internal error: not a service or network request",
        )),
    }
}

#[cfg(test)]
pub(super) mod tests;
