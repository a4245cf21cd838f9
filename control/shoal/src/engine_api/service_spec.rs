//! Docker's `ServiceSpec` (what `POST /services/create` and `/services/ID/update` carry)
//! as shoal's spec: the inverse of `cli/service/inspect.rs`'s `spec_value`. Every field
//! is either carried out or refused naming it: a field shoal does not do yet with a
//! value set is an error, never dropped.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use shoal_cluster::store::{
    check_mounts, data_object::FileReference, ContainerOptions, DnsConfig, EndpointMode,
    FailureAction, HealthCheck, Limits, Mount, MountKind, Placement, PortBalance, PortConfig,
    Protocol, PublishMode, RestartCondition, ServiceMode, ServiceSpec, Ulimit, UpdateConfig,
    UpdateOrder, DEFAULT_RESTART_DELAY_MS, DEFAULT_STOP_GRACE_MS,
};

use crate::api::{effective_capabilities, MAX_FAILURE_RATIO_PPM};

/// One JSON object being read: each field taken once; what is left with a value set is
/// refused by [`Fields::done`].
struct Fields {
    path: String,
    map: Map<String, Value>,
}

/// A value Docker's Go types would leave at their zero (absent, null, empty, 0, false).
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_unset),
    }
}

impl Fields {
    fn of(path: &str, v: Value) -> Result<Fields, String> {
        match v {
            Value::Object(map) => Ok(Fields {
                path: path.to_owned(),
                map,
            }),
            Value::Null => Ok(Fields {
                path: path.to_owned(),
                map: Map::new(),
            }),
            other => Err(format!("{path}: expected an object, got {other}")),
        }
    }

    fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    /// The field `key`, matched without regard to case as Go's JSON decoder (which
    /// dockerd uses) does: SDKs send `"replicated"` for `Replicated`.
    fn take(&mut self, key: &str) -> Option<Value> {
        let found = if self.map.contains_key(key) {
            Some(key.to_owned())
        } else {
            self.map
                .keys()
                .find(|k| k.eq_ignore_ascii_case(key))
                .cloned()
        };
        found
            .and_then(|k| self.map.remove(&k))
            .filter(|v| !v.is_null())
    }

    fn object(&mut self, key: &str) -> Result<Fields, String> {
        let at = self.at(key);
        Fields::of(&at, self.take(key).unwrap_or(Value::Null))
    }

    fn string(&mut self, key: &str) -> Result<String, String> {
        match self.take(key) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(format!("{}: expected a string, got {other}", self.at(key))),
        }
    }

    fn strings(&mut self, key: &str) -> Result<Vec<String>, String> {
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(format!("{}: expected strings, got {other}", self.at(key))),
                })
                .collect(),
            Some(other) => Err(format!("{}: expected a list, got {other}", self.at(key))),
        }
    }

    fn string_map(&mut self, key: &str) -> Result<BTreeMap<String, String>, String> {
        match self.take(key) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    other => Err(format!(
                        "{}.{k}: expected a string, got {other}",
                        self.at(key)
                    )),
                })
                .collect(),
            Some(other) => Err(format!("{}: expected an object, got {other}", self.at(key))),
        }
    }

    fn u64(&mut self, key: &str) -> Result<Option<u64>, String> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                format!("{}: expected a number of 0 or more, got {v}", self.at(key))
            }),
        }
    }

    /// A Go duration in nanoseconds, as milliseconds.
    fn millis(&mut self, key: &str) -> Result<Option<u64>, String> {
        Ok(self.u64(key)?.map(|ns| ns / 1_000_000))
    }

    fn bool(&mut self, key: &str) -> Result<Option<bool>, String> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(format!(
                "{}: expected true or false, got {other}",
                self.at(key)
            )),
        }
    }

    /// Drops a field whose value changes nothing here (`accept` says which values).
    fn allow(&mut self, key: &str, accept: impl Fn(&Value) -> bool) -> Result<(), String> {
        match self.take(key) {
            Some(v) if !accept(&v) => {
                Err(format!("{} = {v} is not supported by shoal", self.at(key)))
            }
            _ => Ok(()),
        }
    }

    /// Every field left must be unset.
    fn done(self) -> Result<(), String> {
        let set: Vec<String> = self
            .map
            .iter()
            .filter(|(_, v)| !is_unset(v))
            .map(|(k, _)| format!("{}.{k}", self.path))
            .collect();
        if set.is_empty() {
            Ok(())
        } else {
            Err(format!("not supported by shoal yet: {}", set.join(", ")))
        }
    }
}

fn read_update_config(mut f: Fields, default: UpdateConfig) -> Result<UpdateConfig, String> {
    let mut c = default;
    if let Some(p) = f.u64("Parallelism")? {
        c.parallelism = p;
    }
    if let Some(d) = f.millis("Delay")? {
        c.delay_ms = d;
    }
    if let Some(m) = f.millis("Monitor")? {
        c.monitor_ms = m;
    }
    match f.string("FailureAction")?.as_str() {
        "" => {}
        "pause" => c.failure_action = FailureAction::Pause,
        "continue" => c.failure_action = FailureAction::Continue,
        "rollback" => c.failure_action = FailureAction::Rollback,
        other => {
            return Err(format!(
                "{}: unknown failure action {other:?}",
                f.at("FailureAction")
            ))
        }
    }
    match f.string("Order")?.as_str() {
        "" => {}
        "stop-first" => c.order = UpdateOrder::StopFirst,
        "start-first" => c.order = UpdateOrder::StartFirst,
        other => return Err(format!("{}: unknown order {other:?}", f.at("Order"))),
    }
    if let Some(r) = f.take("MaxFailureRatio") {
        let ratio = r
            .as_f64()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                format!(
                    "{}: expected a number from 0 to 1, got {r}",
                    f.at("MaxFailureRatio")
                )
            })?;
        c.max_failure_ratio_ppm = (ratio * f64::from(MAX_FAILURE_RATIO_PPM)).round() as u32;
    }
    f.done()?;
    Ok(c)
}

/// The platforms Docker's CLI pins from the image's manifest: shoal's nodes run Linux on
/// the machine's architecture, so one such entry must be there.
fn platforms_allow_this_machine(v: &Value) -> bool {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    v.as_array().is_some_and(|list| {
        list.is_empty()
            || list.iter().any(|p| {
                p["OS"].as_str().unwrap_or("linux") == "linux"
                    && p["Architecture"].as_str().is_none_or(|a| a == arch)
            })
    })
}

/// Docker's `ServiceSpec` as shoal's, with the spec's `ForceUpdate` counter.
pub fn from_docker(v: Value) -> Result<(ServiceSpec, u64), String> {
    let mut spec_f = Fields::of("Spec", v)?;
    let name = spec_f.string("Name")?;
    let labels = spec_f.string_map("Labels")?;

    let mut task = spec_f.object("TaskTemplate")?;
    let mut c = task.object("ContainerSpec")?;
    let image = c.string("Image")?;
    if image.trim().is_empty() {
        return Err("Spec.TaskTemplate.ContainerSpec.Image: an image is required".into());
    }
    let args = c.strings("Args")?;
    let env = c.strings("Env")?;
    let mut container = ContainerOptions {
        entrypoint: c.strings("Command")?,
        user: c.string("User")?,
        dir: c.string("Dir")?,
        hostname: c.string("Hostname")?,
        hosts: c.strings("Hosts")?,
        init: c.bool("Init")?,
        stop_signal: c.string("StopSignal")?,
        labels: c.string_map("Labels")?,
        dns: DnsConfig::default(),
        mounts: mounts(&mut c)?,
        read_only: c.bool("ReadOnly")?.unwrap_or(false),
        limits: Limits::default(),
        reservations: Limits::default(),
        cap_add: Vec::new(),
        cap_drop: Vec::new(),
        ulimits: ulimits(&mut c)?,
        sysctls: c.string_map("Sysctls")?,
        // Docker's ContainerSpec has no such fields: an update through this API keeps
        // the service's (`Request::ServiceSetSpec`'s `keep_shoal_fields`).
        privileged: false,
        devices: Vec::new(),
    };
    let (cap_add, cap_drop) =
        effective_capabilities(&c.strings("CapabilityAdd")?, &c.strings("CapabilityDrop")?)
            .map_err(|e| format!("{}: {e}", c.at("CapabilityAdd/CapabilityDrop")))?;
    container.cap_add = cap_add;
    container.cap_drop = cap_drop;
    check_mounts(&container.mounts).map_err(|e| format!("{}: {e}", c.at("Mounts")))?;
    let mut dns = c.object("DNSConfig")?;
    container.dns = DnsConfig {
        nameservers: dns.strings("Nameservers")?,
        search: dns.strings("Search")?,
        options: dns.strings("Options")?,
    };
    dns.done()?;
    let stop_grace_ms = c
        .millis("StopGracePeriod")?
        .unwrap_or(DEFAULT_STOP_GRACE_MS);
    let healthcheck = match c.take("Healthcheck") {
        None => None,
        Some(h) => {
            let mut h = Fields::of("Spec.TaskTemplate.ContainerSpec.Healthcheck", h)?;
            let check = HealthCheck {
                test: h.strings("Test")?,
                interval_ms: h.millis("Interval")?.unwrap_or(0),
                timeout_ms: h.millis("Timeout")?.unwrap_or(0),
                retries: h.u64("Retries")?.unwrap_or(0),
                start_period_ms: h.millis("StartPeriod")?.unwrap_or(0),
            };
            h.done()?;
            (!check.test.is_empty()).then_some(check)
        }
    };
    let secrets = file_references(&mut c, "Secrets", "Secret")?;
    let configs = file_references(&mut c, "Configs", "Config")?;
    c.allow("Isolation", |v| v.as_str() == Some("default"))?;
    c.done()?;

    let mut restart = task.object("RestartPolicy")?;
    let restart_condition = match restart.string("Condition")?.as_str() {
        "" | "any" => RestartCondition::Any,
        "on-failure" => RestartCondition::OnFailure,
        "none" => RestartCondition::None,
        other => {
            return Err(format!(
                "Spec.TaskTemplate.RestartPolicy.Condition: unknown condition {other:?}"
            ))
        }
    };
    let restart_delay_ms = restart.millis("Delay")?.unwrap_or(DEFAULT_RESTART_DELAY_MS);
    let restart_max_attempts = restart.u64("MaxAttempts")?.unwrap_or(0);
    let restart_window_ms = restart.millis("Window")?.unwrap_or(0);
    restart.done()?;

    // Limits are set on each container; reservations count against nodes' capacity.
    let mut resources = task.object("Resources")?;
    let mut limits = resources.object("Limits")?;
    container.limits = Limits {
        nano_cpus: limits.u64("NanoCPUs")?.unwrap_or(0),
        memory_bytes: limits.u64("MemoryBytes")?.unwrap_or(0),
        pids: limits.u64("Pids")?.unwrap_or(0),
    };
    limits.done()?;
    let mut reservations = resources.object("Reservations")?;
    container.reservations = Limits {
        nano_cpus: reservations.u64("NanoCPUs")?.unwrap_or(0),
        memory_bytes: reservations.u64("MemoryBytes")?.unwrap_or(0),
        pids: 0,
    };
    reservations.done()?;
    resources.done()?;

    let mut placement = task.object("Placement")?;
    let constraints = placement.strings("Constraints")?;
    let max_replicas_per_node = placement.u64("MaxReplicas")?.unwrap_or(0);
    let mut preferences = Vec::new();
    if let Some(list) = placement.take("Preferences") {
        let Value::Array(list) = list else {
            return Err("Spec.TaskTemplate.Placement.Preferences: expected a list".into());
        };
        for p in list {
            let at = "Spec.TaskTemplate.Placement.Preferences[]";
            let mut p = Fields::of(at, p)?;
            let mut spread = p.object("Spread")?;
            let descriptor = spread.string("SpreadDescriptor")?;
            spread.done()?;
            p.done()?;
            Placement::spread_label(&descriptor).map_err(|e| format!("{at}.Spread: {e}"))?;
            preferences.push(descriptor);
        }
    }
    placement.allow("Platforms", platforms_allow_this_machine)?;
    placement.done()?;

    let mut networks = Vec::new();
    let mut network_aliases = BTreeMap::new();
    if let Some(list) = task.take("Networks") {
        let Value::Array(list) = list else {
            return Err("Spec.TaskTemplate.Networks: expected a list".into());
        };
        for n in list {
            let mut n = Fields::of("Spec.TaskTemplate.Networks[]", n)?;
            let target = n.string("Target")?;
            if target.is_empty() {
                return Err("Spec.TaskTemplate.Networks[].Target: a network is required".into());
            }
            let aliases = n.strings("Aliases")?;
            n.done()?;
            if !aliases.is_empty() {
                network_aliases.insert(target.clone(), aliases);
            }
            networks.push(target);
        }
    }
    let force_update = task.u64("ForceUpdate")?.unwrap_or(0);
    task.allow("Runtime", |v| v.as_str() == Some("container"))?;
    task.done()?;

    let mode = match spec_f.take("Mode") {
        None => ServiceMode::Replicated { replicas: 1 },
        Some(m) => {
            let mut m = Fields::of("Spec.Mode", m)?;
            let mode = if let Some(r) = m.take("Replicated") {
                let mut r = Fields::of("Spec.Mode.Replicated", r)?;
                let replicas = r.u64("Replicas")?.unwrap_or(1);
                r.done()?;
                ServiceMode::Replicated { replicas }
            } else if m.take("Global").is_some() {
                ServiceMode::Global
            } else if let Some(j) = m.take("ReplicatedJob") {
                let mut j = Fields::of("Spec.Mode.ReplicatedJob", j)?;
                let total_completions = j.u64("TotalCompletions")?.unwrap_or(1);
                let max_concurrent = j.u64("MaxConcurrent")?.unwrap_or(total_completions);
                j.done()?;
                ServiceMode::ReplicatedJob {
                    max_concurrent,
                    total_completions,
                }
            } else if m.take("GlobalJob").is_some() {
                ServiceMode::GlobalJob
            } else {
                ServiceMode::Replicated { replicas: 1 }
            };
            m.done()?;
            mode
        }
    };
    let update_config =
        read_update_config(spec_f.object("UpdateConfig")?, UpdateConfig::default())?;
    let rollback_config = read_update_config(
        spec_f.object("RollbackConfig")?,
        UpdateConfig::rollback_default(),
    )?;

    let mut endpoint = spec_f.object("EndpointSpec")?;
    let endpoint_mode = match endpoint.string("Mode")?.as_str() {
        "" | "vip" => EndpointMode::Vip,
        "dnsrr" => EndpointMode::Dnsrr,
        other => return Err(format!("Spec.EndpointSpec.Mode: unknown mode {other:?}")),
    };
    let mut ports = Vec::new();
    if let Some(list) = endpoint.take("Ports") {
        let Value::Array(list) = list else {
            return Err("Spec.EndpointSpec.Ports: expected a list".into());
        };
        for p in list {
            let mut p = Fields::of("Spec.EndpointSpec.Ports[]", p)?;
            let protocol = match p.string("Protocol")?.as_str() {
                "" | "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                other => {
                    return Err(format!(
                        "Spec.EndpointSpec.Ports[].Protocol: {other:?} is not supported"
                    ))
                }
            };
            let port = |v: Option<u64>, what: &str| -> Result<u16, String> {
                u16::try_from(v.unwrap_or(0))
                    .map_err(|_| format!("Spec.EndpointSpec.Ports[].{what}: not a port"))
            };
            let target = port(p.u64("TargetPort")?, "TargetPort")?;
            let published = port(p.u64("PublishedPort")?, "PublishedPort")?;
            let mode = match p.string("PublishMode")?.as_str() {
                "" | "ingress" => PublishMode::Ingress,
                "host" => PublishMode::Host,
                other => {
                    return Err(format!(
                        "Spec.EndpointSpec.Ports[].PublishMode: unknown mode {other:?}"
                    ))
                }
            };
            // shoal's own field (`service inspect` shows it); Docker's clients send none.
            let balance = match p.string("Balance")?.as_str() {
                "" => None,
                word => Some(
                    PortBalance::parse(word)
                        .map_err(|e| format!("Spec.EndpointSpec.Ports[].Balance: {e}"))?,
                ),
            };
            p.allow("Name", |_| true)?;
            p.done()?;
            if target == 0 {
                return Err("Spec.EndpointSpec.Ports[].TargetPort: a port is required".into());
            }
            ports.push(PortConfig {
                protocol,
                target,
                published,
                mode,
                balance,
            });
        }
    }
    endpoint.done()?;
    spec_f.done()?;

    Ok((
        ServiceSpec {
            placement: Placement {
                max_replicas_per_node,
                preferences,
            },
            name,
            labels,
            image,
            args,
            env,
            mode,
            networks,
            network_aliases,
            ports,
            endpoint_mode,
            constraints,
            healthcheck,
            restart_condition,
            restart_delay_ms,
            restart_max_attempts,
            restart_window_ms,
            stop_grace_ms,
            container,
            update_config,
            rollback_config,
            secrets,
            configs,
        },
        force_update,
    ))
}

/// `ContainerSpec.Mounts`: `[{Type, Source, Target, ReadOnly, VolumeOptions:
/// {DriverConfig: {Name, Options}}, TmpfsOptions: {SizeBytes, Mode}}]` (the inverse of
/// `service inspect`'s).
fn mounts(c: &mut Fields) -> Result<Vec<Mount>, String> {
    let at = c.at("Mounts");
    let Some(list) = c.take("Mounts") else {
        return Ok(Vec::new());
    };
    let Value::Array(list) = list else {
        return Err(format!("{at}: expected a list"));
    };
    let mut mounts = Vec::new();
    for item in list {
        let mut m = Fields::of(&format!("{at}[]"), item)?;
        let kind = m.string("Type")?;
        let kind = match kind.as_str() {
            "" => MountKind::Volume,
            k => MountKind::parse(k).ok_or_else(|| {
                format!("{at}[].Type: {k:?} is not supported by shoal (volume, bind, tmpfs are)")
            })?,
        };
        let mut mount = Mount {
            kind,
            source: m.string("Source")?,
            target: m.string("Target")?,
            read_only: m.bool("ReadOnly")?.unwrap_or(false),
            ..Default::default()
        };
        m.allow("Consistency", |v| {
            matches!(v.as_str(), Some("" | "default" | "consistent"))
        })?;
        let mut volume = m.object("VolumeOptions")?;
        let mut driver = volume.object("DriverConfig")?;
        mount.volume_driver = driver.string("Name")?;
        mount.volume_options = driver.string_map("Options")?;
        driver.done()?;
        volume.done()?;
        let mut tmpfs = m.object("TmpfsOptions")?;
        mount.tmpfs_size = tmpfs.u64("SizeBytes")?;
        mount.tmpfs_mode = tmpfs
            .u64("Mode")?
            .map(|mode| {
                u32::try_from(mode)
                    .map_err(|_| format!("{at}[].TmpfsOptions.Mode: not a file mode"))
            })
            .transpose()?;
        tmpfs.done()?;
        m.done()?;
        mounts.push(mount);
    }
    Ok(mounts)
}

/// `ContainerSpec.Ulimits`: `[{Name, Soft, Hard}]` (checked with the rest of the
/// container options by the manager).
fn ulimits(c: &mut Fields) -> Result<BTreeMap<String, Ulimit>, String> {
    let at = c.at("Ulimits");
    let Some(list) = c.take("Ulimits") else {
        return Ok(BTreeMap::new());
    };
    let Value::Array(list) = list else {
        return Err(format!("{at}: expected a list"));
    };
    let mut out = BTreeMap::new();
    for item in list {
        let mut u = Fields::of(&format!("{at}[]"), item)?;
        let name = u.string("Name")?;
        let mut limit = |key: &str| -> Result<i64, String> {
            match u.take(key) {
                None => Ok(0),
                Some(v) => v
                    .as_i64()
                    .ok_or_else(|| format!("{at}[].{key}: expected a number, got {v}")),
            }
        };
        let soft = limit("Soft")?;
        let hard = limit("Hard")?;
        u.done()?;
        if name.is_empty() {
            return Err(format!("{at}[].Name: a name is required"));
        }
        out.insert(name, Ulimit { soft, hard });
    }
    Ok(out)
}

/// `ContainerSpec.Secrets|Configs`: `[{File: {Name, UID, GID, Mode}, SecretID,
/// SecretName}]` (the ID may be empty: the name is then looked up, as the CLI's flags
/// are).
fn file_references(c: &mut Fields, key: &str, what: &str) -> Result<Vec<FileReference>, String> {
    let at = c.at(key);
    let Some(list) = c.take(key) else {
        return Ok(Vec::new());
    };
    let Value::Array(list) = list else {
        return Err(format!("{at}: expected a list"));
    };
    let mut refs = Vec::new();
    for item in list {
        let mut r = Fields::of(&format!("{at}[]"), item)?;
        let id = r.string(&format!("{what}ID"))?;
        let name = r.string(&format!("{what}Name"))?;
        if id.is_empty() && name.is_empty() {
            return Err(format!("{at}[]: a {what}ID or {what}Name is required"));
        }
        let mut file = r.object("File")?;
        let target = file.string("Name")?;
        let uid = file.string("UID")?;
        let gid = file.string("GID")?;
        let mode = file.u64("Mode")?.unwrap_or(0o444);
        file.done()?;
        r.done()?;
        refs.push(FileReference {
            target: if target.is_empty() {
                name.clone()
            } else {
                target
            },
            id,
            name,
            uid: if uid.is_empty() { "0".into() } else { uid },
            gid: if gid.is_empty() { "0".into() } else { gid },
            mode: u32::try_from(mode).map_err(|_| format!("{at}[].File.Mode: not a file mode"))?,
        });
    }
    Ok(refs)
}

#[cfg(test)]
mod tests;
