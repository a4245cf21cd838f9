//! What a task's two containers are made with, from the task and its service's spec
//! (pure, so every setting can be checked without dockerd): the sandbox, which holds
//! what Docker takes from the container whose namespace another joins (hostname,
//! resolv.conf, /etc/hosts), and the task's own container (everything else).

use std::{collections::HashMap, net::Ipv4Addr};

use bollard::models::{
    ContainerCreateBody, DeviceMapping, HealthConfig, HostConfig, Mount, MountTmpfsOptions,
    MountType, MountVolumeOptions, MountVolumeOptionsDriverConfig, ResourcesUlimits,
};
use shoal_cluster::store::{self, MountKind, Service, Task};

use super::containers::{
    LABEL_NODE_ID, LABEL_SERVICE_ID, LABEL_SERVICE_NAME, LABEL_SHOAL_TASK_ID, LABEL_SLOT,
    LABEL_TASK, LABEL_TASK_ID, LABEL_TASK_NAME,
};
use crate::{
    sandbox,
    task_template::{self, TaskContext},
};

/// The node a task starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeIdentity {
    pub(super) id: String,
    pub(super) hostname: String,
}

/// Where the task's resolver is: `gateway`, its first network's gateway (the
/// embedded DNS), or for a task with no network the egress bridge's listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Resolver {
    pub(super) addr: Option<Ipv4Addr>,
    /// The task is on an overlay network (its resolver is the embedded DNS).
    pub(super) on_overlay: bool,
}

/// The sandbox of task `t` of `service` (the task container `container`) on `node`:
/// the hostname template expanded, the resolver and `--dns*` settings, `--host`
/// entries.
pub(super) fn sandbox_spec(
    t: &Task,
    service: &Service,
    container: &str,
    node: &NodeIdentity,
    resolver: Resolver,
) -> Result<sandbox::Spec, String> {
    let options = &service.spec.container;
    let hostname = if options.hostname.is_empty() {
        t.id.chars().take(12).collect()
    } else {
        let cx = TaskContext {
            service_name: &service.spec.name,
            service_id: &service.id,
            task_slot: t.slot,
            task_id: &t.id,
            task_name: container,
            node_id: &node.id,
            node_hostname: &node.hostname,
        };
        task_template::expand(&options.hostname, &cx).map_err(|e| format!("--hostname: {e}"))?
    };
    // On an overlay the embedded DNS answers the cluster's names and forwards the rest
    // to the service's own resolvers (`--dns`, declared with the task's DNS state);
    // with no network there is no name of the cluster's to answer, so those resolvers,
    // when it has them, are the task's, as under Swarm.
    let nameservers = if !resolver.on_overlay && !options.dns.nameservers.is_empty() {
        options.dns.nameservers.clone()
    } else {
        resolver.addr.iter().map(|a| a.to_string()).collect()
    };
    let extra_hosts = options
        .hosts
        .iter()
        .filter_map(|entry| {
            // Docker's stored form is `IP HOSTNAME [ALIAS...]`; dockerd takes `HOST:IP`.
            let mut words = entry.split_whitespace();
            let ip = words.next()?;
            Some(words.map(|h| format!("{h}:{ip}")).collect::<Vec<_>>())
        })
        .flatten()
        .collect();
    Ok(sandbox::Spec {
        name: sandbox::name(container),
        task_id: t.id.clone(),
        service_name: service.spec.name.clone(),
        hostname,
        nameservers,
        dns_search: options.dns.search.clone(),
        dns_options: options.dns.options.clone(),
        extra_hosts,
        sysctls: options
            .sysctls
            .iter()
            .filter(|(k, _)| is_net_sysctl(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

/// A `net.*` kernel parameter: one of the task's network namespace (its sandbox's).
fn is_net_sysctl(name: &str) -> bool {
    name.starts_with("net.")
}

/// A service's `--mount` as dockerd takes it. A named volume the node lacks is created
/// by dockerd when the container is (with the driver and options given), as under
/// Swarm; an empty source is an anonymous volume, removed with the container.
fn engine_mount(m: &store::Mount) -> Mount {
    let volume_options = (m.kind == MountKind::Volume
        && (!m.volume_driver.is_empty() || !m.volume_options.is_empty()))
    .then(|| MountVolumeOptions {
        driver_config: Some(MountVolumeOptionsDriverConfig {
            name: (!m.volume_driver.is_empty()).then(|| m.volume_driver.clone()),
            options: (!m.volume_options.is_empty()).then(|| {
                m.volume_options
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
        }),
        ..Default::default()
    });
    let tmpfs_options = (m.kind == MountKind::Tmpfs
        && (m.tmpfs_size.is_some() || m.tmpfs_mode.is_some()))
    .then(|| MountTmpfsOptions {
        size_bytes: m.tmpfs_size.map(|s| s as i64),
        mode: m.tmpfs_mode.map(|mode| mode as i64),
        ..Default::default()
    });
    Mount {
        target: Some(m.target.clone()),
        source: (!m.source.is_empty()).then(|| m.source.clone()),
        typ: Some(match m.kind {
            MountKind::Volume => MountType::VOLUME,
            MountKind::Bind => MountType::BIND,
            MountKind::Tmpfs => MountType::TMPFS,
        }),
        read_only: m.read_only.then_some(true),
        volume_options,
        tmpfs_options,
        ..Default::default()
    }
}

/// The task's own container (named `container`, on `node`, in the namespace of the
/// sandbox `sandbox_id`): image, entrypoint and arguments, environment, user, working
/// directory, stop signal, init, the container labels under Swarm's task labels and
/// shoal's own, the health check, the service's `--mount`s, `--read-only` and `--limit-*`,
/// `--privileged` and `--device`s, and `files` (its secrets' and configs' files).
pub(super) fn task_container(
    t: &Task,
    service: &Service,
    container: &str,
    node_id: &str,
    sandbox_id: &str,
    files: Vec<Mount>,
) -> ContainerCreateBody {
    let spec = &service.spec;
    let options = &spec.container;
    // Swarm's and shoal's labels last: a container label cannot pose as another task's.
    let mut labels: HashMap<String, String> = options
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.extend([
        (LABEL_TASK.to_string(), String::new()),
        (LABEL_TASK_ID.to_string(), t.id.clone()),
        (LABEL_TASK_NAME.to_string(), container.to_string()),
        (LABEL_SERVICE_ID.to_string(), service.id.clone()),
        (LABEL_SERVICE_NAME.to_string(), spec.name.clone()),
        (LABEL_NODE_ID.to_string(), node_id.to_string()),
        (LABEL_SLOT.to_string(), t.slot.to_string()),
        (LABEL_SHOAL_TASK_ID.to_string(), t.id.clone()),
    ]);
    let ns = |ms: u64| (ms > 0).then(|| (ms as i64).saturating_mul(1_000_000));
    let healthcheck = spec.healthcheck.as_ref().map(|h| HealthConfig {
        test: Some(h.test.clone()),
        interval: ns(h.interval_ms),
        timeout: ns(h.timeout_ms),
        retries: (h.retries > 0).then_some(h.retries as i64),
        start_period: ns(h.start_period_ms),
        start_interval: None,
    });
    let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
    // 0 is "no limit": dockerd is not told.
    let limit = |n: u64| (n > 0).then(|| i64::try_from(n).unwrap_or(i64::MAX));
    let mounts: Vec<Mount> = options
        .mounts
        .iter()
        .map(engine_mount)
        .chain(files)
        .collect();
    // Hostname, resolv.conf and /etc/hosts come from the sandbox (Docker refuses them
    // on a container that joins another's namespace).
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint: (!options.entrypoint.is_empty()).then(|| options.entrypoint.clone()),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        user: non_empty(&options.user),
        working_dir: non_empty(&options.dir),
        stop_signal: non_empty(&options.stop_signal),
        labels: Some(labels),
        healthcheck,
        host_config: Some(HostConfig {
            network_mode: Some(format!("container:{sandbox_id}")),
            init: Some(options.init()),
            mounts: (!mounts.is_empty()).then_some(mounts),
            readonly_rootfs: options.read_only.then_some(true),
            nano_cpus: limit(options.limits.nano_cpus),
            memory: limit(options.limits.memory_bytes),
            pids_limit: limit(options.limits.pids),
            cap_add: (!options.cap_add.is_empty()).then(|| options.cap_add.clone()),
            cap_drop: (!options.cap_drop.is_empty()).then(|| options.cap_drop.clone()),
            ulimits: (!options.ulimits.is_empty()).then(|| {
                options
                    .ulimits
                    .iter()
                    .map(|(name, u)| ResourcesUlimits {
                        name: Some(name.clone()),
                        soft: Some(u.soft),
                        hard: Some(u.hard),
                    })
                    .collect()
            }),
            sysctls: {
                let own: HashMap<String, String> = options
                    .sysctls
                    .iter()
                    .filter(|(k, _)| !is_net_sysctl(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                (!own.is_empty()).then_some(own)
            },
            privileged: options.privileged.then_some(true),
            devices: (!options.devices.is_empty()).then(|| {
                options
                    .devices
                    .iter()
                    .map(|d| DeviceMapping {
                        path_on_host: Some(d.path_on_host.clone()),
                        path_in_container: Some(d.path_in_container.clone()),
                        cgroup_permissions: Some(d.cgroup_permissions.clone()),
                    })
                    .collect()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
