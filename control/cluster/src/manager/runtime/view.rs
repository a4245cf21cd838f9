//! What a node may see of the cluster state ([`NodeView`]): what its own tasks need, and
//! nothing of other services beyond what its network state is made of.
//!
//! - Its own tasks and their services, whole (spec, env, labels: what it runs), and the
//!   registry credentials of the services it has a live task of, opened.
//! - The networks its tasks are on (`ingress` too when any service publishes a port:
//!   every node carries the routing mesh), and on those networks only: the other tasks
//!   attached (remote endpoints, DNS records, load-balancing backends) and their services
//!   reduced to what naming and balancing need (name, mode, networks, aliases, ports,
//!   endpoint mode, VIPs). Never another service's image, command, env, labels,
//!   container settings, health check or previous spec, nor another task's status text.
//! - The containers attached to those networks that are not tasks (its own among them:
//!   their networks count as present).
//! - Every node (addresses: gossip seeds, VTEPs, the managers' list), without the labels
//!   of the others; the cluster's settings and gossip keys.
//! - The secrets and configs its live tasks use (their data: the node mounts them into
//!   the tasks' containers), and no other.
//! - No join tokens, unlock key, other secrets or configs, sealed credentials, revocation
//!   record, root CA key or registry credential keys (a node's trust comes with its
//!   certificate).

use std::collections::{BTreeMap, BTreeSet};

use crate::manager::NodeView;
use crate::registry_auth::RegistryKeyring;
use crate::store::{
    ClusterState, Service, ServiceSpec, Task, TaskState, TaskStatus, UpdateConfig,
    DEFAULT_RESTART_DELAY_MS, DEFAULT_STOP_GRACE_MS,
};

/// Node `node_id`'s view of `state`. Credentials that do not open are left out
/// (logged): the node's pull then fails with the registry's answer, which says what is
/// wrong.
pub(super) fn node_view(state: ClusterState, node_id: &str, key: &RegistryKeyring) -> NodeView {
    let ClusterState {
        version,
        mut nodes,
        mut networks,
        mut services,
        tokens: _,
        cluster,
        mut tasks,
        mut attachments,
        mut secrets,
        mut configs,
        gossip_keys,
        removed_nodes: _,
        unlock_key: _,
        autolock_version,
        swarm_version,
        root_ca: _,
        ca_rotation: _,
        registry_keys: _,
    } = state;
    let own = |t: &Task| t.node_id.as_deref() == Some(node_id);
    let own_services: BTreeSet<String> = tasks
        .values()
        .filter(|t| own(t))
        .map(|t| t.service_id.clone())
        .collect();

    // The networks present on the node: its tasks' (as attached, and as their services
    // say), and ingress wherever a port is published.
    let ingress = networks.values().find(|n| n.ingress).map(|n| n.id.clone());
    let publishes = |s: &ServiceSpec| !s.ports.is_empty();
    let service_networks = |s: &ServiceSpec| -> Vec<String> {
        let mut nets = s.networks.clone();
        if publishes(s) {
            nets.extend(ingress.clone());
        }
        nets
    };
    let mut local: BTreeSet<String> = BTreeSet::new();
    for t in tasks.values().filter(|t| own(t)) {
        local.extend(t.networks.iter().map(|a| a.network_id.clone()));
        if let Some(spec) = &t.spec {
            local.extend(service_networks(spec));
        }
    }
    for id in &own_services {
        if let Some(s) = services.get(id) {
            local.extend(service_networks(&s.spec));
        }
    }
    if services.values().any(|s| publishes(&s.spec)) {
        local.extend(ingress.clone());
    }
    local.extend(
        attachments
            .values()
            .filter(|a| a.node_id == node_id)
            .map(|a| a.network_id.clone()),
    );
    networks.retain(|id, _| local.contains(id));
    // Containers attached to a network present here (its own among them).
    attachments.retain(|_, a| local.contains(&a.network_id));

    // Tasks: the node's own, and the others attached to a network present here.
    tasks.retain(|_, t| own(t) || t.networks.iter().any(|a| local.contains(&a.network_id)));
    for t in tasks.values_mut().filter(|t| !own(t)) {
        t.networks.retain(|a| local.contains(&a.network_id));
        t.spec = t.spec.take().map(|s| Box::new(reduced(&s, &local)));
        t.status = TaskStatus {
            state: t.status.state,
            timestamp_ms: t.status.timestamp_ms,
            ..TaskStatus::default()
        };
    }
    let named: BTreeSet<String> = tasks.values().map(|t| t.service_id.clone()).collect();

    // Secrets and configs: the ones the node's live tasks use (a task's own spec, the
    // one it was made from, says which).
    let mut used_secrets = BTreeSet::new();
    let mut used_configs = BTreeSet::new();
    for t in tasks.values().filter(|t| {
        own(t) && t.desired_state <= TaskState::Running && !t.status.state.is_terminal()
    }) {
        let spec = t
            .spec
            .as_deref()
            .or_else(|| services.get(&t.service_id).map(|s| &s.spec));
        if let Some(spec) = spec {
            used_secrets.extend(spec.secrets.iter().map(|r| r.id.clone()));
            used_configs.extend(spec.configs.iter().map(|r| r.id.clone()));
        }
    }
    secrets.retain(|id, _| used_secrets.contains(id));
    configs.retain(|id, _| used_configs.contains(id));

    // Services: the node's own whole; the others on a network present here, reduced.
    services.retain(|id, s| {
        own_services.contains(id)
            || named.contains(id)
            || service_networks(&s.spec).iter().any(|n| local.contains(n))
    });
    let mut registry_auth = BTreeMap::new();
    for service in services.values_mut() {
        let sealed = service.registry_auth.take();
        if !own_services.contains(&service.id) {
            *service = reduced_service(service, &local);
            continue;
        }
        let Some(sealed) = sealed else {
            continue;
        };
        let live = tasks.values().any(|t| {
            t.service_id == service.id
                && own(t)
                && t.desired_state == TaskState::Running
                && !t.status.state.is_terminal()
        });
        if !live {
            continue;
        }
        match key.open(&service.id, &sealed) {
            Ok(creds) => {
                registry_auth.insert(service.id.clone(), creds);
            }
            Err(e) => {
                tracing::warn!(service = %service.spec.name, error = %e, "registry credentials")
            }
        }
    }

    for node in nodes.values_mut().filter(|n| n.id != node_id) {
        node.labels.clear();
    }

    NodeView {
        state: ClusterState {
            version,
            nodes,
            networks,
            services,
            tokens: None,
            cluster,
            tasks,
            attachments,
            secrets,
            configs,
            gossip_keys,
            removed_nodes: BTreeMap::new(),
            unlock_key: None,
            autolock_version,
            swarm_version,
            root_ca: None,
            ca_rotation: None,
            registry_keys: Vec::new(),
        },
        registry_auth,
    }
}

/// Another service as a node sees it: its allocations on the networks present there.
fn reduced_service(s: &Service, local: &BTreeSet<String>) -> Service {
    let mut endpoint = s.endpoint.clone();
    endpoint
        .virtual_ips
        .retain(|v| local.contains(&v.network_id));
    Service {
        id: s.id.clone(),
        spec: reduced(&s.spec, local),
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
        endpoint,
        force_update: 0,
        registry_auth: None,
        previous_spec: None,
        job_status: None,
        update_status: None,
        version: s.version,
    }
}

/// What naming and balancing need of another service's spec, and nothing else (written
/// out field by field: a field added to the spec stays out until it is chosen here).
fn reduced(spec: &ServiceSpec, local: &BTreeSet<String>) -> ServiceSpec {
    ServiceSpec {
        placement: Default::default(),
        name: spec.name.clone(),
        labels: BTreeMap::new(),
        image: String::new(),
        args: Vec::new(),
        env: Vec::new(),
        mode: spec.mode,
        networks: spec
            .networks
            .iter()
            .filter(|n| local.contains(*n))
            .cloned()
            .collect(),
        network_aliases: spec
            .network_aliases
            .iter()
            .filter(|(net, _)| local.contains(*net))
            .map(|(net, names)| (net.clone(), names.clone()))
            .collect(),
        ports: spec.ports.clone(),
        endpoint_mode: spec.endpoint_mode,
        constraints: Vec::new(),
        healthcheck: None,
        restart_condition: Default::default(),
        restart_delay_ms: DEFAULT_RESTART_DELAY_MS,
        restart_max_attempts: 0,
        restart_window_ms: 0,
        stop_grace_ms: DEFAULT_STOP_GRACE_MS,
        container: Default::default(),
        update_config: UpdateConfig::default(),
        secrets: Vec::new(),
        configs: Vec::new(),
        rollback_config: UpdateConfig::rollback_default(),
    }
}

#[cfg(test)]
mod tests;
