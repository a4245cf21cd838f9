//! What `shoal service ls`, `ps` and `inspect` print, in Docker's words and layout.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::{json, Value};
use shoal_cluster::store::{
    EndpointMode, Network, PortConfig, PublishMode, RestartCondition, Service, ServiceMode, Task,
    TaskState,
};

use super::{PsArgs, ServiceLsArgs};
use crate::{
    api::ServiceStateView,
    cli::{
        format::{align, align_tabs, short},
        template::Format,
    },
};

/// Docker's `units.HumanDuration`.
pub fn human_duration(ms: u64) -> String {
    let secs = ms / 1000;
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => plural(s / 60, "minute"),
        s if s < 7200 => "About an hour".into(),
        s if s < 48 * 3600 => plural(s / 3600, "hour"),
        s if s < 14 * 86400 => plural(s / 86400, "day"),
        s => plural(s / (7 * 86400), "week"),
    }
}

fn title(state: TaskState) -> String {
    let s = state.as_str();
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn ports_text(ports: &[PortConfig]) -> String {
    ports
        .iter()
        .filter(|p| p.mode == PublishMode::Ingress)
        .map(|p| {
            format!(
                "*:{}->{}/{}",
                p.published,
                p.target,
                format!("{:?}", p.protocol).to_lowercase()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn mode_text(s: &Service) -> &'static str {
    match s.spec.mode {
        ServiceMode::Replicated { .. } => "replicated",
        ServiceMode::Global => "global",
    }
}

/// Running and desired task counts, as `service ls` shows them.
pub fn replicas(s: &Service, tasks: &[Task]) -> (u64, u64) {
    let mine = tasks
        .iter()
        .filter(|t| t.service_id == s.id && t.desired_state == TaskState::Running);
    let running = mine
        .clone()
        .filter(|t| t.status.state == TaskState::Running)
        .count() as u64;
    let desired = match s.spec.mode {
        ServiceMode::Replicated { replicas } => replicas,
        ServiceMode::Global => mine.count() as u64,
    };
    (running, desired)
}

fn ls_row(s: &Service, tasks: &[Task]) -> Value {
    let (r, d) = replicas(s, tasks);
    json!({
        "ID": short(&s.id),
        "Name": s.spec.name,
        "Mode": mode_text(s),
        "Replicas": format!("{r}/{d}"),
        "Image": s.spec.image,
        "Ports": ports_text(&s.spec.ports),
    })
}

pub(super) fn service_ls(args: &ServiceLsArgs, view: &ServiceStateView) -> Result<String, String> {
    let mut services: Vec<&Service> = view.services.iter().collect();
    services.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    if args.quiet {
        return Ok(services.iter().map(|s| format!("{}\n", s.id)).collect());
    }
    match Format::parse(args.format.as_deref())? {
        Format::Default => {
            let mut rows = vec![vec![
                "ID".to_string(),
                "NAME".into(),
                "MODE".into(),
                "REPLICAS".into(),
                "IMAGE".into(),
                "PORTS".into(),
            ]];
            for s in services {
                let (r, d) = replicas(s, &view.tasks);
                rows.push(vec![
                    short(&s.id).to_string(),
                    s.spec.name.clone(),
                    mode_text(s).into(),
                    format!("{r}/{d}"),
                    s.spec.image.clone(),
                    ports_text(&s.spec.ports),
                ]);
            }
            Ok(align(&rows))
        }
        Format::Lines(t) => services
            .iter()
            .map(|s| Ok(t.render(&ls_row(s, &view.tasks))? + "\n"))
            .collect(),
        Format::Table(t) => {
            let header = json!({"ID": "ID", "Name": "NAME", "Mode": "MODE",
                "Replicas": "REPLICAS", "Image": "IMAGE", "Ports": "PORTS"});
            let mut text = t.render(&header)? + "\n";
            for s in services {
                text += &t.render(&ls_row(s, &view.tasks))?;
                text.push('\n');
            }
            Ok(align_tabs(&text))
        }
    }
}

/// `service ps`: tasks grouped by slot (node for global services), the current one
/// first, history below it marked ` \_ `, newest first.
pub(super) fn service_ps(args: &PsArgs, view: &ServiceStateView) -> Result<String, String> {
    let mut desired_filter: Option<Vec<TaskState>> = None;
    let mut node_filter: Option<String> = None;
    for f in &args.filters {
        match f.split_once('=') {
            Some(("desired-state", v)) => {
                desired_filter = Some(match v {
                    "running" => vec![TaskState::Running],
                    "shutdown" => vec![TaskState::Shutdown, TaskState::Remove],
                    "accepted" => vec![TaskState::Accepted],
                    other => {
                        return Err(format!(
                            "invalid filter desired-state={other}: running, shutdown or accepted"
                        ))
                    }
                })
            }
            Some(("node", v)) => node_filter = Some(v.to_string()),
            _ => {
                return Err(format!(
                    "invalid filter {f:?}: desired-state=... or node=..."
                ))
            }
        }
    }
    let host = |t: &Task| {
        t.node_id
            .as_ref()
            .map(|n| view.nodes.get(n).cloned().unwrap_or_else(|| n.clone()))
            .unwrap_or_default()
    };
    let mut rows = vec![vec![
        "ID".to_string(),
        "NAME".into(),
        "IMAGE".into(),
        "NODE".into(),
        "DESIRED STATE".into(),
        "CURRENT STATE".into(),
        "ERROR".into(),
        "PORTS".into(),
    ]];
    let mut quiet = String::new();
    for s in &view.services {
        let mut groups: BTreeMap<(u64, String), Vec<&Task>> = BTreeMap::new();
        for t in view.tasks.iter().filter(|t| t.service_id == s.id) {
            if let Some(want) = &desired_filter {
                if !want.contains(&t.desired_state) {
                    continue;
                }
            }
            if let Some(n) = &node_filter {
                if &host(t) != n && t.node_id.as_ref() != Some(n) {
                    continue;
                }
            }
            let key = if t.slot == 0 {
                (0, t.node_id.clone().unwrap_or_default())
            } else {
                (t.slot, String::new())
            };
            groups.entry(key).or_default().push(t);
        }
        for (_, mut tasks) in groups {
            tasks.sort_by(|a, b| {
                (b.desired_state == TaskState::Running)
                    .cmp(&(a.desired_state == TaskState::Running))
                    .then(b.created_ms.cmp(&a.created_ms))
            });
            for (i, t) in tasks.iter().enumerate() {
                let name = t.display_name(&s.spec.name);
                let name = if i == 0 { name } else { format!(" \\_ {name}") };
                let id = if args.no_trunc {
                    t.id.clone()
                } else {
                    short(&t.id).to_string()
                };
                let _ = writeln!(quiet, "{id}");
                let age = view.now_ms.saturating_sub(t.status.timestamp_ms);
                let current = format!(
                    "{} {} ago",
                    title(t.status.state),
                    human_duration(age).to_lowercase()
                );
                let err = match &t.status.err {
                    Some(e) if args.no_trunc => format!("{e:?}"),
                    Some(e) => {
                        let q = format!("{e:?}");
                        if q.chars().count() > 30 {
                            format!("{}…\"", q.chars().take(28).collect::<String>())
                        } else {
                            q
                        }
                    }
                    None => String::new(),
                };
                let ports = s
                    .spec
                    .ports
                    .iter()
                    .filter(|p| p.mode == PublishMode::Host)
                    .map(|p| {
                        format!("*:{}->{}/{:?}", p.published, p.target, p.protocol).to_lowercase()
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                rows.push(vec![
                    id,
                    name,
                    s.spec.image.clone(),
                    host(t),
                    title(t.desired_state),
                    current,
                    err,
                    ports,
                ]);
            }
        }
    }
    if args.quiet {
        return Ok(quiet);
    }
    Ok(align(&rows))
}

fn iso(ms: u64) -> String {
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

/// One service as `service inspect` prints it (Docker's shape).
pub fn inspect_value(s: &Service, networks: &[Network]) -> Value {
    let net_name = |id: &str| {
        networks
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let ports: Vec<Value> = s
        .spec
        .ports
        .iter()
        .map(|p| {
            json!({
                "Protocol": format!("{:?}", p.protocol).to_lowercase(),
                "TargetPort": p.target,
                "PublishedPort": p.published,
                "PublishMode": match p.mode { PublishMode::Ingress => "ingress", PublishMode::Host => "host" },
            })
        })
        .collect();
    let mode = match s.spec.mode {
        ServiceMode::Replicated { replicas } => json!({"Replicated": {"Replicas": replicas}}),
        ServiceMode::Global => json!({"Global": {}}),
    };
    let endpoint_mode = match s.spec.endpoint_mode {
        EndpointMode::Vip => "vip",
        EndpointMode::Dnsrr => "dnsrr",
    };
    let mut container = json!({
        "Image": s.spec.image,
        "Init": true,
    });
    if !s.spec.args.is_empty() {
        container["Args"] = json!(s.spec.args);
    }
    if !s.spec.env.is_empty() {
        container["Env"] = json!(s.spec.env);
    }
    if let Some(h) = &s.spec.healthcheck {
        container["Healthcheck"] = json!({
            "Test": h.test,
            "Interval": h.interval_ms * 1_000_000,
            "Timeout": h.timeout_ms * 1_000_000,
            "Retries": h.retries,
            "StartPeriod": h.start_period_ms * 1_000_000,
        });
    }
    json!({
        "ID": s.id,
        "Version": {"Index": s.version},
        "CreatedAt": iso(s.created_ms),
        "UpdatedAt": iso(s.updated_ms),
        "Spec": {
            "Name": s.spec.name,
            "Labels": s.spec.labels,
            "TaskTemplate": {
                "ContainerSpec": container,
                "RestartPolicy": {"Condition": match s.spec.restart_condition {
                    RestartCondition::Any => "any",
                    RestartCondition::OnFailure => "on-failure",
                    RestartCondition::None => "none",
                }},
                "Placement": {"Constraints": s.spec.constraints},
                "Networks": s.spec.networks.iter().map(|n| json!({"Target": n})).collect::<Vec<_>>(),
                "ForceUpdate": s.force_update,
            },
            "Mode": mode,
            "EndpointSpec": {"Mode": endpoint_mode, "Ports": ports},
        },
        "Endpoint": {
            "Spec": {"Mode": endpoint_mode, "Ports": ports},
            "Ports": ports,
            "VirtualIPs": s.endpoint.virtual_ips.iter().map(|v| json!({
                "NetworkID": v.network_id,
                "NetworkName": net_name(&v.network_id),
                "Addr": v.addr,
            })).collect::<Vec<_>>(),
        },
    })
}

pub(super) fn inspect_pretty(s: &Service, networks: &[Network]) -> String {
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
    }
    if !s.spec.constraints.is_empty() {
        let _ = writeln!(out, "Placement:\n Constraints:\t{:?}", s.spec.constraints);
    }
    let _ = writeln!(
        out,
        "RestartPolicy:\n Condition:\t{}",
        match s.spec.restart_condition {
            RestartCondition::Any => "any",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::None => "none",
        }
    );
    let _ = writeln!(out, "ContainerSpec:\n Image:\t\t{}", s.spec.image);
    if !s.spec.args.is_empty() {
        let _ = writeln!(out, " Args:\t\t{}", s.spec.args.join(" "));
    }
    if !s.spec.env.is_empty() {
        let _ = writeln!(out, " Env:\t\t{}", s.spec.env.join(" "));
    }
    if let Some(h) = &s.spec.healthcheck {
        let _ = writeln!(out, " Healthcheck:\t{}", h.test.join(" "));
    }
    if !s.spec.networks.is_empty() {
        let names: Vec<String> = s.spec.networks.iter().map(|n| net_name(n)).collect();
        let _ = writeln!(out, "Networks:\t{}", names.join(" "));
    }
    let _ = writeln!(
        out,
        "Endpoint Mode:\t{}",
        match s.spec.endpoint_mode {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        }
    );
    if !s.spec.ports.is_empty() {
        let _ = writeln!(out, "Ports:");
        for p in &s.spec.ports {
            let _ = writeln!(
                out,
                " PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}",
                p.published,
                format!("{:?}", p.protocol).to_lowercase(),
                p.target,
                match p.mode {
                    PublishMode::Ingress => "ingress",
                    PublishMode::Host => "host",
                }
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
mod tests {
    use super::*;

    #[test]
    fn human_durations_read_like_dockers() {
        assert_eq!(human_duration(300), "Less than a second");
        assert_eq!(human_duration(1500), "1 second");
        assert_eq!(human_duration(42_000), "42 seconds");
        assert_eq!(human_duration(90_000), "About a minute");
        assert_eq!(human_duration(600_000), "10 minutes");
        assert_eq!(iso(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(iso(1_700_000_000_123), "2023-11-14T22:13:20.123000000Z");
    }
}
