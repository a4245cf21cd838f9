//! The container flags of `service create` and `update` read into the spec's
//! [`ContainerOptions`] and the update's [`ContainerChanges`], plus the two read on the
//! client: `--env-file` (Docker's format) and `--network`'s long form.

use std::{collections::BTreeMap, path::Path};

use shoal_cluster::store::{ContainerOptions, Device, DnsConfig, Limits};

use super::{
    changes::split_args,
    limit_flags::{limits, reservations},
    mount_flags::parse_mounts,
    CreateArgs, ServiceUpdateArgs,
};
use crate::api::{
    check_alias, check_container_options, effective_capabilities, normalize_capability, parse_host,
    parse_sysctl, parse_ulimit, ContainerChanges,
};

/// One `--network` value: `NET`, or `name=NET,alias=A,alias=B`.
pub(super) fn parse_network(text: &str) -> Result<(String, Vec<String>), String> {
    if !text.contains('=') {
        if text.is_empty() {
            return Err("invalid --network \"\": a network name or ID is required".into());
        }
        return Ok((text.to_owned(), Vec::new()));
    }
    let mut name = None;
    let mut aliases = Vec::new();
    for field in text.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| format!("invalid --network {text:?}: {field:?} is not K=V"))?;
        match k.trim() {
            "name" | "target" => name = Some(v.to_owned()),
            "alias" => {
                check_alias(v).map_err(|e| format!("invalid --network {text:?}: {e}"))?;
                aliases.push(v.to_owned());
            }
            other => {
                return Err(format!(
                    "invalid --network {text:?}: unknown field {other:?} (name and alias are supported)"
                ))
            }
        }
    }
    match name {
        Some(n) if !n.is_empty() => Ok((n, aliases)),
        _ => Err(format!("invalid --network {text:?}: name=NET is required")),
    }
}

/// Networks in order, and the aliases of each that has some (by the reference given).
type Networks = (Vec<String>, BTreeMap<String, Vec<String>>);

/// `--network` values: the networks in order, and the aliases of each that has some.
fn parse_networks(values: &[String]) -> Result<Networks, String> {
    let mut networks = Vec::new();
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in values {
        let (net, a) = parse_network(v)?;
        if !a.is_empty() {
            aliases.entry(net.clone()).or_default().extend(a);
        }
        networks.push(net);
    }
    Ok((networks, aliases))
}

/// An env file's entries, as Docker reads one: `K=V` lines kept as they are (the value
/// untrimmed), blank lines and `#` comments skipped, a bare `K` taking the value
/// `lookup` gives it (dropped when it has none). A name with whitespace is refused.
pub(super) fn parse_env_file(
    path: &Path,
    text: &[u8],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    let shown = path.display();
    let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
    let mut entries = Vec::new();
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        let line = std::str::from_utf8(line)
            .map_err(|_| format!("env file {shown}: line {n} is not valid UTF-8"))?;
        let line = line.strip_suffix('\r').unwrap_or(line).trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (line, None),
        };
        if name.is_empty() {
            return Err(format!("env file {shown}: line {n}: no variable name"));
        }
        let name = match value {
            Some(_) => name,
            None => name.trim_end(),
        };
        if name.contains(char::is_whitespace) {
            return Err(format!(
                "env file {shown}: line {n}: variable {name:?} contains whitespace"
            ));
        }
        match value {
            Some(v) => entries.push(format!("{name}={v}")),
            None => {
                if let Some(v) = lookup(name) {
                    entries.push(format!("{name}={v}"));
                }
            }
        }
    }
    Ok(entries)
}

/// The entries of every `--env-file`, in order, read here on the client.
fn read_env_files(paths: &[std::path::PathBuf]) -> Result<Vec<String>, String> {
    let mut env = Vec::new();
    for p in paths {
        let text =
            std::fs::read(p).map_err(|e| format!("reading env file {}: {e}", p.display()))?;
        env.extend(parse_env_file(p, &text, &|k| std::env::var(k).ok())?);
    }
    Ok(env)
}

/// Capabilities given to a flag of `service update`, each in Docker's form.
fn normalize_capabilities(list: &[String], flag: &str) -> Result<Vec<String>, String> {
    list.iter()
        .map(|c| normalize_capability(c).map_err(|e| format!("invalid {flag}: {e}")))
        .collect()
}

/// `--device` (or `--device-add`) values, each checked.
fn parse_devices(values: &[String]) -> Result<Vec<Device>, String> {
    values.iter().map(|d| Device::parse(d)).collect()
}

/// `--entrypoint`: split as a shell splits words.
fn parse_entrypoint(text: &str) -> Result<Vec<String>, String> {
    split_args(text).map_err(|e| e.replace("--args", "--entrypoint"))
}

impl CreateArgs {
    /// The container settings the flags give, checked.
    pub(super) fn container_options(&self) -> Result<ContainerOptions, String> {
        let options = ContainerOptions {
            entrypoint: self
                .entrypoint
                .as_deref()
                .map(parse_entrypoint)
                .transpose()?
                .unwrap_or_default(),
            user: self.user.clone().unwrap_or_default(),
            dir: self.workdir.clone().unwrap_or_default(),
            hostname: self.hostname.clone().unwrap_or_default(),
            dns: DnsConfig {
                nameservers: self.dns.clone(),
                search: self.dns_search.clone(),
                options: self.dns_option.clone(),
            },
            hosts: self
                .hosts
                .iter()
                .map(|h| parse_host(h))
                .collect::<Result<_, _>>()?,
            init: self.init,
            stop_signal: self.stop_signal.clone().unwrap_or_default(),
            labels: self.container_labels.iter().cloned().collect(),
            mounts: parse_mounts(&self.mounts)?,
            read_only: self.read_only,
            limits: limits(
                self.limit_cpu.as_deref(),
                self.limit_memory.as_deref(),
                self.limit_pids,
            )?
            .into_limits(),
            reservations: {
                let (cpu, memory) =
                    reservations(self.reserve_cpu.as_deref(), self.reserve_memory.as_deref())?;
                Limits {
                    nano_cpus: cpu.unwrap_or(0),
                    memory_bytes: memory.unwrap_or(0),
                    pids: 0,
                }
            },
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            ulimits: self
                .ulimits
                .iter()
                .map(|u| parse_ulimit(u))
                .collect::<Result<_, _>>()?,
            sysctls: self
                .sysctls
                .iter()
                .map(|s| parse_sysctl(s))
                .collect::<Result<_, _>>()?,
            privileged: self.privileged,
            devices: parse_devices(&self.devices)?,
        };
        let (cap_add, cap_drop) = effective_capabilities(&self.cap_add, &self.cap_drop)?;
        let options = ContainerOptions {
            cap_add,
            cap_drop,
            ..options
        };
        check_container_options(&options)?;
        Ok(options)
    }

    /// `--network` values: the networks and their aliases.
    pub(super) fn networks(&self) -> Result<Networks, String> {
        parse_networks(&self.networks)
    }

    /// The environment: every `--env-file`'s entries, then `--env` (Docker's order).
    pub(super) fn environment(&self) -> Result<Vec<String>, String> {
        let mut env = read_env_files(&self.env_files)?;
        env.extend(self.env.iter().cloned());
        Ok(env)
    }
}

impl ServiceUpdateArgs {
    /// The container changes the flags ask for, each checked on its own (the manager
    /// checks the result whole).
    pub(super) fn container_changes(&self) -> Result<ContainerChanges, String> {
        let changes = ContainerChanges {
            entrypoint: self
                .entrypoint
                .as_deref()
                .map(parse_entrypoint)
                .transpose()?,
            user: self.user.clone(),
            dir: self.workdir.clone(),
            hostname: self.hostname.clone(),
            dns_add: self.dns_add.clone(),
            dns_rm: self.dns_rm.clone(),
            dns_search_add: self.dns_search_add.clone(),
            dns_search_rm: self.dns_search_rm.clone(),
            dns_option_add: self.dns_option_add.clone(),
            dns_option_rm: self.dns_option_rm.clone(),
            host_add: self
                .host_add
                .iter()
                .map(|h| parse_host(h))
                .collect::<Result<_, _>>()?,
            host_rm: self.host_rm.clone(),
            init: self.init,
            stop_signal: self.stop_signal.clone(),
            label_add: self.container_label_add.iter().cloned().collect(),
            label_rm: self.container_label_rm.clone(),
            mount_add: parse_mounts(&self.mount_add)?,
            mount_rm: self.mount_rm.clone(),
            read_only: self.read_only,
            limit_nano_cpus: None,
            limit_memory_bytes: None,
            limit_pids: None,
            reserve_nano_cpus: None,
            reserve_memory_bytes: None,
            cap_add: normalize_capabilities(&self.cap_add, "--cap-add")?,
            cap_drop: normalize_capabilities(&self.cap_drop, "--cap-drop")?,
            ulimit_add: self
                .ulimit_add
                .iter()
                .map(|u| parse_ulimit(u))
                .collect::<Result<_, _>>()?,
            ulimit_rm: self.ulimit_rm.clone(),
            sysctl_add: self
                .sysctl_add
                .iter()
                .map(|s| parse_sysctl(s))
                .collect::<Result<_, _>>()?,
            sysctl_rm: self.sysctl_rm.clone(),
            privileged: self.privileged,
            device_add: parse_devices(&self.device_add)?,
            device_rm: self
                .device_rm
                .iter()
                .map(|p| {
                    if p.starts_with('/') {
                        Ok(p.clone())
                    } else {
                        Err(format!(
                            "invalid --device-rm {p:?}: a path in the container (absolute)"
                        ))
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        let given = limits(
            self.limit_cpu.as_deref(),
            self.limit_memory.as_deref(),
            self.limit_pids,
        )?;
        let (reserve_cpu, reserve_memory) =
            reservations(self.reserve_cpu.as_deref(), self.reserve_memory.as_deref())?;
        let changes = ContainerChanges {
            limit_nano_cpus: given.nano_cpus,
            limit_memory_bytes: given.memory_bytes,
            limit_pids: given.pids,
            reserve_nano_cpus: reserve_cpu,
            reserve_memory_bytes: reserve_memory,
            ..changes
        };
        // What the flags add must be valid whatever the service has.
        let mut added = ContainerOptions::default();
        ContainerChanges {
            dns_rm: Vec::new(),
            dns_search_rm: Vec::new(),
            dns_option_rm: Vec::new(),
            host_rm: Vec::new(),
            label_rm: Vec::new(),
            mount_rm: Vec::new(),
            ..changes.clone()
        }
        .apply(&mut added);
        check_container_options(&added)?;
        Ok(changes)
    }

    /// `--network-add` values: the networks and their aliases.
    pub(super) fn networks_added(&self) -> Result<Networks, String> {
        parse_networks(&self.network_add)
    }
}

#[cfg(test)]
mod tests;
