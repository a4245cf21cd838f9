//! What a service's task containers are made with beyond image, arguments and
//! environment (Docker's `TaskTemplate.ContainerSpec` fields of the same names): the
//! entrypoint, user, working directory, hostname, resolver settings, extra hosts, init,
//! stop signal, container labels, mounts, a read-only root, capabilities and
//! resource limits (Docker's `TaskTemplate.Resources.Limits`); and two Docker's
//! `ContainerSpec` lacks (moby#24862), a privileged container and host devices. Every
//! field defaults to "not set", so stores written before they existed still load.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{device::Device, limits::Limits, mount::Mount};

/// The container settings of a service's tasks (`service create --entrypoint`,
/// `--user`, `--workdir`, `--hostname`, `--dns*`, `--host`, `--init`, `--stop-signal`,
/// `--container-label`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerOptions {
    /// `--entrypoint`, split as a shell splits words (Docker's `Command`); empty: the
    /// image's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// `--user`: `user`, `uid`, `user:group` or `uid:gid`; empty: the image's.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `--workdir`; empty: the image's.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dir: String,
    /// `--hostname`, a template (`{{.Service.Name}}-{{.Task.Slot}}`) expanded per task;
    /// empty: the task ID's first 12 characters.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// `--dns`, `--dns-search`, `--dns-option`.
    #[serde(skip_serializing_if = "DnsConfig::is_empty")]
    pub dns: DnsConfig,
    /// `--host`: extra `/etc/hosts` entries, kept as Docker keeps them: `IP HOSTNAME`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// `--init`: None runs the task under an init process (shoal's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// `--stop-signal` (`SIGTERM`, `TERM`, `15`); empty: the image's, else SIGTERM.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// `--container-label`: labels on each task container (not on the service).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `--mount`: volumes, binds and tmpfs mounts, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// `--read-only`: the container's root filesystem is mounted read-only.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// `--limit-cpu`, `--limit-memory`, `--limit-pids`.
    #[serde(skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    /// Docker's `TaskTemplate.Resources.Reservations` (CPUs and memory; `pids` unused):
    /// the scheduler places a task only on a node whose capacity, less the reservations
    /// of the tasks it already has, holds them.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub reservations: Limits,
    /// `--cap-add`: capabilities given to each task, normalized (`CAP_NET_ADMIN`, or
    /// `ALL`) and sorted (Docker's `CapabilityAdd`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// `--cap-drop`: capabilities taken from each task (Docker's `CapabilityDrop`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// `--ulimit NAME=SOFT[:HARD]`: each task container's resource limits (Docker's
    /// `Ulimits`), by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    /// `--sysctl K=V`: kernel parameters of each task's namespaces (Docker's
    /// `Sysctls`, the names Docker allows for services); `net.*` ones are set in the
    /// task's network namespace (its sandbox's).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// `--privileged`: each task container is privileged (Docker's
    /// `HostConfig.Privileged`: every capability, every host device, no seccomp or
    /// AppArmor profile). Not a field of Docker's `ContainerSpec`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// `--device`: host devices given to each task container, in order (Docker's
    /// `HostConfig.Devices`). Not a field of Docker's `ContainerSpec`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
}

/// One `--ulimit`: the soft and hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

/// The resource limits a container can be given (Docker's list, `setrlimit`'s without
/// `RLIMIT_`).
pub const ULIMIT_NAMES: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// Why a ulimit cannot be set; None: it can.
pub fn ulimit_problem(name: &str, u: &Ulimit) -> Option<String> {
    if !ULIMIT_NAMES.contains(&name) {
        return Some(format!(
            "invalid ulimit type {name:?} (one of {})",
            ULIMIT_NAMES.join(", ")
        ));
    }
    if u.soft > u.hard {
        return Some(format!(
            "ulimit {name}: the soft limit must be less than or equal to the hard limit: {} > {}",
            u.soft, u.hard
        ));
    }
    None
}

/// The kernel parameters Docker lets a service set (`opts.ValidateSysctl`): IPC ones
/// (the task's own IPC namespace), `fs.mqueue.*`, and `net.*` (its network namespace).
pub fn sysctl_problem(name: &str) -> Option<String> {
    const NAMES: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let allowed = NAMES.contains(&name)
        || ["net.", "fs.mqueue."]
            .iter()
            .any(|p| name.len() > p.len() && name.starts_with(p));
    (!allowed).then(|| format!("sysctl '{name}' is not whitelisted"))
}

/// Docker's `DNSConfig`: the task's resolv.conf settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsConfig {
    /// `--dns`: the resolvers names the embedded DNS does not own are asked of.
    pub nameservers: Vec<String>,
    /// `--dns-search`.
    pub search: Vec<String>,
    /// `--dns-option` (`ndots:2`, `timeout:3`, ...).
    pub options: Vec<String>,
}

impl DnsConfig {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.search.is_empty() && self.options.is_empty()
    }
}

impl ContainerOptions {
    /// Whether tasks run under an init process.
    pub fn init(&self) -> bool {
        self.init.unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ServiceSpec;

    fn spec() -> ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "name": "s", "image": "i", "mode": {"replicated": {"replicas": 1}}
        }))
        .unwrap()
    }

    #[test]
    fn a_spec_stored_before_container_options_loads_with_none_set() {
        let s = spec();
        assert_eq!(s.container, ContainerOptions::default());
        assert!(s.network_aliases.is_empty());
        assert!(
            s.container.init(),
            "tasks run under init unless told not to"
        );
        // Nothing unset is written, so such a spec reads back the same.
        let text = serde_json::to_value(&s).unwrap();
        assert_eq!(text["container"], serde_json::json!({}));
        assert!(text.get("network_aliases").is_none());
    }

    #[test]
    fn every_container_option_changes_the_tasks() {
        let base = spec();
        type Change = Box<dyn Fn(&mut ServiceSpec)>;
        let changed: Vec<Change> = vec![
            Box::new(|s| s.container.entrypoint = vec!["/bin/sh".into()]),
            Box::new(|s| s.container.user = "1000".into()),
            Box::new(|s| s.container.dir = "/srv".into()),
            Box::new(|s| s.container.hostname = "{{.Service.Name}}".into()),
            Box::new(|s| s.container.dns.nameservers = vec!["10.0.0.53".into()]),
            Box::new(|s| s.container.dns.search = vec!["example.org".into()]),
            Box::new(|s| s.container.dns.options = vec!["ndots:2".into()]),
            Box::new(|s| s.container.hosts = vec!["10.1.2.3 db".into()]),
            Box::new(|s| s.container.init = Some(false)),
            Box::new(|s| s.container.stop_signal = "SIGINT".into()),
            Box::new(|s| {
                s.container.labels.insert("tier".into(), "web".into());
            }),
            Box::new(|s| {
                s.container.mounts = vec![Mount {
                    target: "/data".into(),
                    source: "data".into(),
                    ..Default::default()
                }]
            }),
            Box::new(|s| s.container.read_only = true),
            Box::new(|s| s.container.limits.nano_cpus = 500_000_000),
            Box::new(|s| s.container.limits.memory_bytes = 64 << 20),
            Box::new(|s| s.container.limits.pids = 100),
            Box::new(|s| s.container.cap_add = vec!["CAP_NET_ADMIN".into()]),
            Box::new(|s| s.container.cap_drop = vec!["CAP_CHOWN".into()]),
            Box::new(|s| s.container.privileged = true),
            Box::new(|s| {
                s.container.devices = vec![Device::parse("/dev/null:/dev/xnull").unwrap()]
            }),
            Box::new(|s| {
                s.network_aliases.insert("net1".into(), vec!["db".into()]);
            }),
        ];
        for (i, change) in changed.iter().enumerate() {
            let mut other = base.clone();
            change(&mut other);
            assert!(base.tasks_differ(&other), "change {i}");
            let back: ServiceSpec =
                serde_json::from_value(serde_json::to_value(&other).unwrap()).unwrap();
            assert_eq!(back, other, "change {i} survives the store");
        }
    }
}
