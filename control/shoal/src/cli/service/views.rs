//! What `shoal service ls` and `ps` print, in Docker's words and layout (`inspect`'s
//! output is `inspect`'s).

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::{json, Value};
use shoal_cluster::store::{PortConfig, PublishMode, Service, ServiceMode, Task, TaskState};

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
        ServiceMode::ReplicatedJob { .. } => "replicated job",
        ServiceMode::GlobalJob => "global job",
    }
}

/// `service ls`'s REPLICAS: `running/desired`, and a job's completions.
fn replicas_text(s: &Service, tasks: &[Task]) -> String {
    if s.spec.mode.is_job() {
        return super::job::replicas_text(s, tasks);
    }
    let (r, d) = replicas(s, tasks);
    format!("{r}/{d}")
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
        ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob => {
            let (running, desired, _, _) = super::job::counts(s, tasks);
            return (running, desired);
        }
    };
    (running, desired)
}

fn ls_row(s: &Service, tasks: &[Task]) -> Value {
    json!({
        "ID": short(&s.id),
        "Name": s.spec.name,
        "Mode": mode_text(s),
        "Replicas": replicas_text(s, tasks),
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
                rows.push(vec![
                    short(&s.id).to_string(),
                    s.spec.name.clone(),
                    mode_text(s).into(),
                    replicas_text(s, &view.tasks),
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
                // The image the task runs: the spec it was made from, which stays
                // the old one until a rolling update replaces the task.
                let image = t.spec.as_deref().map_or(&s.spec.image, |spec| &spec.image);
                rows.push(vec![
                    id,
                    name,
                    image.clone(),
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
    }
}
