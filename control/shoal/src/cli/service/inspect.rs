//! What `shoal service inspect` prints: Docker's JSON shape (durations in nanoseconds,
//! times in RFC 3339), and `--pretty`'s layout after Docker's formatter.

use std::fmt::Write as _;

use serde_json::{json, Value};
use shoal_cluster::store::{
    ContainerOptions, EndpointMode, FailureAction, FileReference, Mount, Network, PublishMode,
    RestartCondition, Service, ServiceMode, ServiceSpec, UpdateConfig, UpdateOrder, UpdateState,
    UpdateStatus,
};

use super::views::human_duration;
use crate::api::MAX_FAILURE_RATIO_PPM;

/// Milliseconds since the epoch as Docker's timestamps: `2023-11-14T22:13:20.123000000Z`.
pub(crate) fn iso(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let nanos = (ms % 1000) * 1_000_000;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Milliseconds as Go prints a `time.Duration`: `0s`, `500ms`, `1.5s`, `1m30s`, `1h0m0s`.
fn go_duration(ms: u64) -> String {
    if ms < 1000 {
        return if ms == 0 {
            "0s".into()
        } else {
            format!("{ms}ms")
        };
    }
    let (h, m, s, frac) = (
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000,
    );
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{}s", format!("{frac:03}").trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

/// Milliseconds as Docker's JSON durations: nanoseconds.
fn nanos(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

fn restart_condition(c: RestartCondition) -> &'static str {
    match c {
        RestartCondition::Any => "any",
        RestartCondition::OnFailure => "on-failure",
        RestartCondition::None => "none",
    }
}

fn endpoint_mode(m: EndpointMode) -> &'static str {
    match m {
        EndpointMode::Vip => "vip",
        EndpointMode::Dnsrr => "dnsrr",
    }
}

fn failure_action(a: FailureAction) -> &'static str {
    match a {
        FailureAction::Pause => "pause",
        FailureAction::Continue => "continue",
        FailureAction::Rollback => "rollback",
    }
}

fn order(o: UpdateOrder) -> &'static str {
    match o {
        UpdateOrder::StopFirst => "stop-first",
        UpdateOrder::StartFirst => "start-first",
    }
}

/// Docker's float `MaxFailureRatio` (0 and 1 as integers, as Go prints them).
fn failure_ratio(ppm: u32) -> f64 {
    f64::from(ppm) / f64::from(MAX_FAILURE_RATIO_PPM)
}

fn update_config_value(c: &UpdateConfig) -> Value {
    let ratio = match c.max_failure_ratio_ppm {
        0 => json!(0),
        MAX_FAILURE_RATIO_PPM => json!(1),
        ppm => json!(failure_ratio(ppm)),
    };
    json!({
        "Parallelism": c.parallelism,
        "Delay": nanos(c.delay_ms),
        "FailureAction": failure_action(c.failure_action),
        "Monitor": nanos(c.monitor_ms),
        "MaxFailureRatio": ratio,
        "Order": order(c.order),
    })
}

fn update_status_value(u: &UpdateStatus) -> Value {
    let mut v = json!({
        "State": u.state.as_str(),
        "StartedAt": iso(u.started_ms),
        "Message": u.message,
    });
    if let Some(done) = u.completed_ms {
        v["CompletedAt"] = json!(iso(done));
    }
    v
}

fn ports_value(spec: &ServiceSpec) -> Vec<Value> {
    spec.ports
        .iter()
        .map(|p| {
            json!({
                "Protocol": format!("{:?}", p.protocol).to_lowercase(),
                "TargetPort": p.target,
                "PublishedPort": p.published,
                "PublishMode": match p.mode { PublishMode::Ingress => "ingress", PublishMode::Host => "host" },
                "Balance": p.balance().as_str(),
            })
        })
        .collect()
}

/// A service's secrets (`what`: `Secret`) or configs (`Config`) as Docker's
/// `ContainerSpec` lists them: `File` (the target, owner and mode), then the object's ID
/// and name (`SecretID`, `SecretName`).
pub(super) fn file_references_value(refs: &[FileReference], what: &str) -> Value {
    Value::Array(
        refs.iter()
            .map(|r| {
                let mut v = json!({
                    "File": {"Name": r.target, "UID": r.uid, "GID": r.gid, "Mode": r.mode},
                });
                v[format!("{what}ID")] = json!(r.id);
                v[format!("{what}Name")] = json!(r.name);
                v
            })
            .collect(),
    )
}

/// The container options in Docker's `ContainerSpec` (each only when set, as Docker
/// omits empty ones).
fn container_options_value(container: &mut Value, o: &ContainerOptions) {
    let mut set = |key: &str, value: Value| container[key] = value;
    if !o.entrypoint.is_empty() {
        set("Command", json!(o.entrypoint));
    }
    for (key, text) in [
        ("User", &o.user),
        ("Dir", &o.dir),
        ("Hostname", &o.hostname),
        ("StopSignal", &o.stop_signal),
    ] {
        if !text.is_empty() {
            set(key, json!(text));
        }
    }
    if !o.labels.is_empty() {
        set("Labels", json!(o.labels));
    }
    if !o.hosts.is_empty() {
        set("Hosts", json!(o.hosts));
    }
    if !o.dns.is_empty() {
        let mut dns = json!({});
        for (key, list) in [
            ("Nameservers", &o.dns.nameservers),
            ("Search", &o.dns.search),
            ("Options", &o.dns.options),
        ] {
            if !list.is_empty() {
                dns[key] = json!(list);
            }
        }
        set("DNSConfig", dns);
    }
    if !o.mounts.is_empty() {
        set("Mounts", o.mounts.iter().map(mount_value).collect());
    }
    if o.read_only {
        set("ReadOnly", json!(true));
    }
    if !o.cap_add.is_empty() {
        set("CapabilityAdd", json!(o.cap_add));
    }
    if !o.cap_drop.is_empty() {
        set("CapabilityDrop", json!(o.cap_drop));
    }
    if !o.sysctls.is_empty() {
        set("Sysctls", json!(o.sysctls));
    }
    if !o.ulimits.is_empty() {
        set(
            "Ulimits",
            o.ulimits
                .iter()
                .map(|(name, u)| json!({"Name": name, "Soft": u.soft, "Hard": u.hard}))
                .collect(),
        );
    }
}

/// One mount as Docker's `ContainerSpec.Mounts[]` (empty parts omitted, as Docker's).
fn mount_value(m: &Mount) -> Value {
    let mut v = json!({"Type": m.kind.as_str(), "Target": m.target});
    if !m.source.is_empty() {
        v["Source"] = json!(m.source);
    }
    if m.read_only {
        v["ReadOnly"] = json!(true);
    }
    if !m.volume_driver.is_empty() || !m.volume_options.is_empty() {
        let mut driver = json!({});
        if !m.volume_driver.is_empty() {
            driver["Name"] = json!(m.volume_driver);
        }
        if !m.volume_options.is_empty() {
            driver["Options"] = json!(m.volume_options);
        }
        v["VolumeOptions"] = json!({"DriverConfig": driver});
    }
    if m.tmpfs_size.is_some() || m.tmpfs_mode.is_some() {
        let mut tmpfs = json!({});
        if let Some(size) = m.tmpfs_size {
            tmpfs["SizeBytes"] = json!(size);
        }
        if let Some(mode) = m.tmpfs_mode {
            tmpfs["Mode"] = json!(mode);
        }
        v["TmpfsOptions"] = tmpfs;
    }
    v
}

/// Docker's `TaskTemplate.Placement`: `Constraints`, and `Preferences` and
/// `MaxReplicas` when set.
fn placement_value(spec: &ServiceSpec) -> Value {
    let mut p = json!({"Constraints": spec.constraints});
    if !spec.placement.preferences.is_empty() {
        p["Preferences"] = spec
            .placement
            .preferences
            .iter()
            .map(|d| json!({"Spread": {"SpreadDescriptor": d}}))
            .collect();
    }
    if spec.placement.max_replicas_per_node > 0 {
        p["MaxReplicas"] = json!(spec.placement.max_replicas_per_node);
    }
    p
}

/// A spec as Docker's `Spec` (and `PreviousSpec`).
pub(crate) fn spec_value(spec: &ServiceSpec, force_update: u64) -> Value {
    let mode = match spec.mode {
        ServiceMode::Replicated { replicas } => json!({"Replicated": {"Replicas": replicas}}),
        ServiceMode::Global => json!({"Global": {}}),
        ServiceMode::ReplicatedJob {
            max_concurrent,
            total_completions,
        } => json!({"ReplicatedJob": {
            "MaxConcurrent": max_concurrent,
            "TotalCompletions": total_completions,
        }}),
        ServiceMode::GlobalJob => json!({"GlobalJob": {}}),
    };
    let options = &spec.container;
    let mut container = json!({
        "Image": spec.image,
        "Init": options.init(),
        "StopGracePeriod": nanos(spec.stop_grace_ms),
    });
    if !spec.args.is_empty() {
        container["Args"] = json!(spec.args);
    }
    if !spec.env.is_empty() {
        container["Env"] = json!(spec.env);
    }
    container_options_value(&mut container, options);
    if !spec.secrets.is_empty() {
        container["Secrets"] = file_references_value(&spec.secrets, "Secret");
    }
    if !spec.configs.is_empty() {
        container["Configs"] = file_references_value(&spec.configs, "Config");
    }
    if let Some(h) = &spec.healthcheck {
        container["Healthcheck"] = json!({
            "Test": h.test,
            "Interval": nanos(h.interval_ms),
            "Timeout": nanos(h.timeout_ms),
            "Retries": h.retries,
            "StartPeriod": nanos(h.start_period_ms),
        });
    }
    let mut v = json!({
        "Name": spec.name,
        "Labels": spec.labels,
        "TaskTemplate": {
            "ContainerSpec": container,
            "RestartPolicy": {
                "Condition": restart_condition(spec.restart_condition),
                "Delay": nanos(spec.restart_delay_ms),
                "MaxAttempts": spec.restart_max_attempts,
                "Window": nanos(spec.restart_window_ms),
            },
            "Placement": placement_value(spec),
            "Networks": spec.networks.iter().map(|n| {
                let mut attachment = json!({"Target": n});
                if let Some(aliases) = spec.network_aliases.get(n) {
                    attachment["Aliases"] = json!(aliases);
                }
                attachment
            }).collect::<Vec<_>>(),
            "ForceUpdate": force_update,
        },
        "Mode": mode,
        "UpdateConfig": update_config_value(&spec.update_config),
        "RollbackConfig": update_config_value(&spec.rollback_config),
        "EndpointSpec": {"Mode": endpoint_mode(spec.endpoint_mode), "Ports": ports_value(spec)},
    });
    let limits = &options.limits;
    if !limits.is_empty() {
        let mut shown = json!({});
        for (key, n) in [
            ("NanoCPUs", limits.nano_cpus),
            ("MemoryBytes", limits.memory_bytes),
            ("Pids", limits.pids),
        ] {
            if n > 0 {
                shown[key] = json!(n);
            }
        }
        v["TaskTemplate"]["Resources"] = json!({"Limits": shown});
    }
    let reservations = &options.reservations;
    if !reservations.is_empty() {
        let mut shown = json!({});
        for (key, n) in [
            ("NanoCPUs", reservations.nano_cpus),
            ("MemoryBytes", reservations.memory_bytes),
        ] {
            if n > 0 {
                shown[key] = json!(n);
            }
        }
        if v["TaskTemplate"].get("Resources").is_none() {
            v["TaskTemplate"]["Resources"] = json!({});
        }
        v["TaskTemplate"]["Resources"]["Reservations"] = shown;
    }
    // A job has no rolling update: Docker shows no update or rollback config for it.
    if spec.mode.is_job() {
        if let Some(o) = v.as_object_mut() {
            o.remove("UpdateConfig");
            o.remove("RollbackConfig");
        }
    }
    v
}

/// The settings of a service that Docker's `ServiceSpec` has no field for
/// (`--privileged`, `--device`), in the names of Docker's `HostConfig`, which they go
/// to; None when none is set. Shown beside `Spec`, never in it: Docker's clients echo
/// `Spec` back on update, and the Engine API's reader refuses fields Docker does not
/// have (the managers keep these across such an update instead).
fn shoal_spec_value(o: &ContainerOptions) -> Option<Value> {
    if !o.privileged && o.devices.is_empty() {
        return None;
    }
    let mut v = json!({"Privileged": o.privileged});
    if !o.devices.is_empty() {
        v["Devices"] = o
            .devices
            .iter()
            .map(|d| {
                json!({
                    "PathOnHost": d.path_on_host,
                    "PathInContainer": d.path_in_container,
                    "CgroupPermissions": d.cgroup_permissions,
                })
            })
            .collect();
    }
    Some(v)
}

/// One service as `service inspect` prints it (Docker's shape). The store keeps one
/// `force_update`, shown in both `Spec` and `PreviousSpec`.
pub fn inspect_value(s: &Service, networks: &[Network]) -> Value {
    let net_name = |id: &str| {
        networks
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let ports = ports_value(&s.spec);
    let mut v = json!({
        "ID": s.id,
        "Version": {"Index": s.version},
        "CreatedAt": iso(s.created_ms),
        "UpdatedAt": iso(s.updated_ms),
        "Spec": spec_value(&s.spec, s.force_update),
        "Endpoint": {
            "Spec": {"Mode": endpoint_mode(s.spec.endpoint_mode), "Ports": ports},
            "Ports": ports,
            "VirtualIPs": s.endpoint.virtual_ips.iter().map(|v| json!({
                "NetworkID": v.network_id,
                "NetworkName": net_name(&v.network_id),
                "Addr": v.addr,
            })).collect::<Vec<_>>(),
        },
    });
    if let Some(shoal) = shoal_spec_value(&s.spec.container) {
        v["ShoalSpec"] = shoal;
    }
    if let Some(previous) = &s.previous_spec {
        v["PreviousSpec"] = spec_value(previous, s.force_update);
    }
    if let Some(u) = &s.update_status {
        v["UpdateStatus"] = update_status_value(u);
    }
    if let Some(j) = &s.job_status {
        v["JobStatus"] = json!({
            "JobIteration": {"Index": j.job_iteration},
            "LastExecution": iso(j.last_execution_ms),
        });
    }
    v
}

/// `UpdateStatus:` of `--pretty`; `now_ms` for its "... ago".
fn pretty_update_status(out: &mut String, u: &UpdateStatus, now_ms: u64) {
    let ago = |ms: u64| format!("{} ago", human_duration(now_ms.saturating_sub(ms)));
    let _ = writeln!(out, "UpdateStatus:\n State:\t\t{}", u.state.as_str());
    let _ = writeln!(out, " Started:\t{}", ago(u.started_ms));
    // Docker shows it for a finished update only, not a finished rollback.
    if let (UpdateState::Completed, Some(done)) = (u.state, u.completed_ms) {
        let _ = writeln!(out, " Completed:\t{}", ago(done));
    }
    let _ = writeln!(out, " Message:\t{}", u.message);
}

/// `UpdateConfig:` (`what` = "Update") or `RollbackConfig:` ("Rollback") of `--pretty`.
fn pretty_update_config(out: &mut String, what: &str, c: &UpdateConfig) {
    let _ = writeln!(out, "{what}Config:\n Parallelism:\t{}", c.parallelism);
    if c.delay_ms > 0 {
        let _ = writeln!(out, " Delay:\t\t{}", go_duration(c.delay_ms));
    }
    let _ = writeln!(out, " On failure:\t{}", failure_action(c.failure_action));
    if c.monitor_ms > 0 {
        let _ = writeln!(out, " Monitoring Period: {}", go_duration(c.monitor_ms));
    }
    let _ = writeln!(
        out,
        " Max failure ratio: {}",
        failure_ratio(c.max_failure_ratio_ppm)
    );
    let _ = writeln!(
        out,
        " {what} order:{}{}",
        if what == "Update" { "      " } else { "    " },
        order(c.order)
    );
}

/// `RestartPolicy:` of `--pretty` (Docker's formatter has none; the same layout).
fn pretty_restart_policy(out: &mut String, spec: &ServiceSpec) {
    let _ = writeln!(
        out,
        "RestartPolicy:\n Condition:\t{}",
        restart_condition(spec.restart_condition)
    );
    if spec.restart_delay_ms > 0 {
        let _ = writeln!(out, " Delay:\t\t{}", go_duration(spec.restart_delay_ms));
    }
    if spec.restart_max_attempts > 0 {
        let _ = writeln!(out, " Max attempts:\t{}", spec.restart_max_attempts);
    }
    if spec.restart_window_ms > 0 {
        let _ = writeln!(out, " Window:\t{}", go_duration(spec.restart_window_ms));
    }
}

/// `service inspect --pretty`; `now_ms` for the update status's "... ago".
pub(super) fn inspect_pretty(s: &Service, networks: &[Network], now_ms: u64) -> String {
    let net_name = |id: &str| {
        networks
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let mut out = String::new();
    let _ = writeln!(out, "\nID:\t\t{}", s.id);
    let _ = writeln!(out, "Name:\t\t{}", s.spec.name);
    if !s.spec.labels.is_empty() {
        let _ = writeln!(out, "Labels:");
        for (k, v) in &s.spec.labels {
            let _ = writeln!(out, " {k}={v}");
        }
    }
    match s.spec.mode {
        ServiceMode::Replicated { replicas } => {
            let _ = writeln!(out, "Service Mode:\tReplicated\n Replicas:\t{replicas}");
        }
        ServiceMode::Global => {
            let _ = writeln!(out, "Service Mode:\tGlobal");
        }
        ServiceMode::ReplicatedJob {
            max_concurrent,
            total_completions,
        } => {
            let _ = writeln!(
                out,
                "Service Mode:\tReplicated Job\n Max Concurrent:\t{max_concurrent}\n Total Completions:\t{total_completions}"
            );
        }
        ServiceMode::GlobalJob => {
            let _ = writeln!(out, "Service Mode:\tGlobal Job");
        }
    }
    if let Some(j) = &s.job_status {
        let _ = writeln!(
            out,
            "JobStatus:\n Iteration:\t{}\n Last execution:\t{} ago",
            j.job_iteration,
            human_duration(now_ms.saturating_sub(j.last_execution_ms))
        );
    }
    if let Some(u) = &s.update_status {
        pretty_update_status(&mut out, u, now_ms);
    }
    let max_replicas = s.spec.placement.max_replicas_per_node;
    let preferences = &s.spec.placement.preferences;
    if !s.spec.constraints.is_empty() || max_replicas > 0 || !preferences.is_empty() {
        let _ = writeln!(out, "Placement:");
    }
    if !s.spec.constraints.is_empty() {
        let _ = writeln!(out, " Constraints:\t{:?}", s.spec.constraints);
    }
    if !preferences.is_empty() {
        let shown: Vec<String> = preferences.iter().map(|d| format!("spread={d}")).collect();
        let _ = writeln!(out, " Preferences:\t[{}]", shown.join(" "));
    }
    if max_replicas > 0 {
        let _ = writeln!(out, " Max Replicas Per Node:\t{max_replicas}");
    }
    if !s.spec.mode.is_job() {
        pretty_update_config(&mut out, "Update", &s.spec.update_config);
        pretty_update_config(&mut out, "Rollback", &s.spec.rollback_config);
    }
    pretty_restart_policy(&mut out, &s.spec);
    let _ = writeln!(out, "ContainerSpec:\n Image:\t\t{}", s.spec.image);
    if !s.spec.args.is_empty() {
        let _ = writeln!(out, " Args:\t\t{}", s.spec.args.join(" "));
    }
    if !s.spec.env.is_empty() {
        let _ = writeln!(out, " Env:\t\t{}", s.spec.env.join(" "));
    }
    let options = &s.spec.container;
    if !options.dir.is_empty() {
        let _ = writeln!(out, " Dir:\t\t{}", options.dir);
    }
    if let Some(init) = options.init {
        let _ = writeln!(out, " Init:\t\t{init}");
    }
    if !options.user.is_empty() {
        let _ = writeln!(out, " User: {}", options.user);
    }
    if let Some(h) = &s.spec.healthcheck {
        let _ = writeln!(out, " Healthcheck:\t{}", h.test.join(" "));
    }
    if options.privileged {
        let _ = writeln!(out, " Privileged:\ttrue");
    }
    if !options.devices.is_empty() {
        let shown: Vec<String> = options.devices.iter().map(|d| d.to_string()).collect();
        let _ = writeln!(out, " Devices:\t{}", shown.join(" "));
    }
    if !s.spec.networks.is_empty() {
        let names: Vec<String> = s.spec.networks.iter().map(|n| net_name(n)).collect();
        let _ = writeln!(out, "Networks:\t{}", names.join(" "));
    }
    let _ = writeln!(
        out,
        "Endpoint Mode:\t{}",
        endpoint_mode(s.spec.endpoint_mode)
    );
    if !s.spec.ports.is_empty() {
        let _ = writeln!(out, "Ports:");
        for p in &s.spec.ports {
            let _ = writeln!(
                out,
                " PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}\n  Balance = {}",
                p.published,
                format!("{:?}", p.protocol).to_lowercase(),
                p.target,
                match p.mode {
                    PublishMode::Ingress => "ingress",
                    PublishMode::Host => "host",
                },
                p.balance().as_str()
            );
        }
    }
    if !s.endpoint.virtual_ips.is_empty() {
        let _ = writeln!(out, "Virtual IPs:");
        for v in &s.endpoint.virtual_ips {
            let _ = writeln!(out, " {}: {}", net_name(&v.network_id), v.addr);
        }
    }
    out
}

#[cfg(test)]
mod tests;
