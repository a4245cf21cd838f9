//! What `shoal service ls` and `ps` print, in Docker's words and layout (`inspect`'s
//! output is `inspect`'s).

use std::collections::BTreeMap;

use serde_json::{json, Value};
use shoal_cluster::store::{PortConfig, PublishMode, Service, ServiceMode, Task, TaskState};

use super::{ServiceLsArgs, TaskListArgs};
use crate::{
    api::ServiceStateView,
    cli::{
        format::{align, align_tabs, short},
        template::Format,
    },
    filters::{self, service_matches, task_matches, Filters},
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

pub(crate) fn service_ls(
    args: &ServiceLsArgs,
    filters: &Filters,
    view: &ServiceStateView,
) -> Result<String, String> {
    let mut services: Vec<&Service> = view
        .services
        .iter()
        .filter(|s| service_matches(s, filters))
        .collect();
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

impl TaskListArgs {
    /// Checks `--format` and reads `--filter`, before the agent is asked.
    pub fn check(&self) -> Result<Filters, String> {
        Format::parse(self.format.as_deref())?;
        filters::from_args(&self.filters, filters::TASK_KEYS)
    }
}

/// The columns of a task list, Docker's titles and `--format` keys in order.
const TASK_COLUMNS: [(&str, &str); 8] = [
    ("ID", "ID"),
    ("Name", "NAME"),
    ("Image", "IMAGE"),
    ("Node", "NODE"),
    ("DesiredState", "DESIRED STATE"),
    ("CurrentState", "CURRENT STATE"),
    ("Error", "ERROR"),
    ("Ports", "PORTS"),
];

/// `service ps` and `node ps`: the view's tasks that pass `filters`, grouped by service
/// and slot (node for global services), the current one first, history below it marked
/// ` \_ `, newest first.
pub(crate) fn task_list(
    args: &TaskListArgs,
    filters: &Filters,
    view: &ServiceStateView,
) -> Result<String, String> {
    let host = |t: &Task| {
        t.node_id
            .as_ref()
            .map(|n| view.nodes.get(n).cloned().unwrap_or_else(|| n.clone()))
            .unwrap_or_default()
    };
    let mut items: Vec<Value> = Vec::new();
    for s in &view.services {
        let mut groups: BTreeMap<(u64, String), Vec<&Task>> = BTreeMap::new();
        for t in view.tasks.iter().filter(|t| {
            t.service_id == s.id && task_matches(t, &view.services, &view.nodes, filters)
        }) {
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
                items.push(json!({
                    "ID": id,
                    "Name": name,
                    "Image": image,
                    "Node": host(t),
                    "DesiredState": title(t.desired_state),
                    "CurrentState": current,
                    "Error": err,
                    "Ports": ports,
                }));
            }
        }
    }
    if args.quiet {
        return Ok(items
            .iter()
            .map(|v| format!("{}\n", v["ID"].as_str().unwrap_or_default()))
            .collect());
    }
    match Format::parse(args.format.as_deref())? {
        Format::Default => {
            let mut rows = vec![TASK_COLUMNS.iter().map(|(_, h)| h.to_string()).collect()];
            for v in &items {
                rows.push(
                    TASK_COLUMNS
                        .iter()
                        .map(|(k, _)| v[*k].as_str().unwrap_or_default().to_owned())
                        .collect(),
                );
            }
            Ok(align(&rows))
        }
        Format::Lines(t) => items.iter().map(|v| Ok(t.render(v)? + "\n")).collect(),
        Format::Table(t) => {
            let header: serde_json::Map<String, Value> = TASK_COLUMNS
                .iter()
                .map(|(k, h)| (k.to_string(), json!(h)))
                .collect();
            let mut text = t.render(&Value::Object(header))? + "\n";
            for v in &items {
                text += &t.render(v)?;
                text.push('\n');
            }
            Ok(align_tabs(&text))
        }
    }
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

    fn service(id: &str, name: &str, mode: ServiceMode, labels: &[(&str, &str)]) -> Service {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        serde_json::from_value(json!({
            "id": id, "spec": {"name": name, "image": "nginx:1", "mode": mode, "labels": labels},
        }))
        .expect("a service")
    }

    fn task(id: &str, service_id: &str, slot: u64, node: &str, desired: TaskState) -> Task {
        serde_json::from_value(json!({
            "id": id, "service_id": service_id, "slot": slot, "node_id": node,
            "desired_state": desired,
            "status": {"state": desired, "timestamp_ms": 1_000},
        }))
        .expect("a task")
    }

    fn view() -> ServiceStateView {
        ServiceStateView {
            services: vec![
                service(
                    "s1web",
                    "web",
                    ServiceMode::Replicated { replicas: 1 },
                    &[("tier", "front")],
                ),
                service("s2db", "db", ServiceMode::Global, &[]),
            ],
            tasks: vec![
                task("t1", "s1web", 1, "n1", TaskState::Running),
                task("t0", "s1web", 1, "n2", TaskState::Shutdown),
                task("t2", "s2db", 0, "n2", TaskState::Running),
            ],
            nodes: [("n1".into(), "h1".into()), ("n2".into(), "h2".into())].into(),
            networks: vec![],
            now_ms: 3_000,
        }
    }

    /// `service ls --format FORMAT -f FILTER...`, `argv` being FORMAT then the filters.
    fn ls(argv: &[&str]) -> Result<String, String> {
        let args = ServiceLsArgs {
            quiet: false,
            format: Some(argv[0].to_owned()),
            filters: argv[1..].iter().map(|f| f.to_string()).collect(),
        };
        let f = filters::from_args(&args.filters, filters::SERVICE_KEYS)?;
        service_ls(&args, &f, &view())
    }

    #[test]
    fn service_ls_filters_and_json_lines_are_dockers() {
        assert_eq!(
            ls(&["json", "mode=replicated"]).unwrap(),
            "{\"ID\":\"s1web\",\"Image\":\"nginx:1\",\"Mode\":\"replicated\",\"Name\":\"web\",\"Ports\":\"\",\"Replicas\":\"1/1\"}\n"
        );
        assert_eq!(ls(&["{{.Name}}", "label=tier=front"]).unwrap(), "web\n");
        assert_eq!(ls(&["{{.Name}}", "name=d"]).unwrap(), "db\n");
        assert_eq!(ls(&["{{.Name}}", "id=s2"]).unwrap(), "db\n");
        assert_eq!(ls(&["{{.Name}}"]).unwrap(), "db\nweb\n");
        assert_eq!(ls(&["{{.Name}}", "label=nope"]).unwrap(), "");
        assert_eq!(ls(&["json", "x=1"]).unwrap_err(), "invalid filter 'x'");
    }

    fn ps(format: Option<&str>, filter: &[&str]) -> Result<String, String> {
        let args = TaskListArgs {
            quiet: false,
            no_trunc: false,
            format: format.map(str::to_owned),
            filters: filter.iter().map(|f| f.to_string()).collect(),
        };
        let f = args.check()?;
        task_list(&args, &f, &view())
    }

    #[test]
    fn task_lists_filter_and_format_as_dockers() {
        assert_eq!(
            ps(Some("json"), &["node=h1"]).unwrap(),
            "{\"CurrentState\":\"Running 2 seconds ago\",\"DesiredState\":\"Running\",\"Error\":\"\",\"ID\":\"t1\",\"Image\":\"nginx:1\",\"Name\":\"web.1\",\"Node\":\"h1\",\"Ports\":\"\"}\n"
        );
        // History under the current task; desired-state as the Engine API reads it.
        assert_eq!(
            ps(Some("{{.ID}} {{.Name}}"), &["name=web"]).unwrap(),
            "t1 web.1\nt0  \\_ web.1\n"
        );
        assert_eq!(
            ps(Some("{{.ID}}"), &["desired-state=shutdown"]).unwrap(),
            "t0\n"
        );
        assert_eq!(ps(Some("{{.ID}}"), &["id=t2"]).unwrap(), "t2\n");
        let table = ps(None, &["desired-state=running"]).unwrap();
        assert!(
            table.starts_with(
                "ID        NAME      IMAGE     NODE      DESIRED STATE   CURRENT STATE"
            ),
            "{table}"
        );
        assert_eq!(table.lines().count(), 3, "{table}");
        assert_eq!(
            ps(Some("table {{.Name}}\t{{.Node}}"), &["node=n2"]).unwrap(),
            // Filtered first, grouped after (as the docker CLI, which groups what the
            // API's filters let through): web.1's old task alone heads its slot.
            "NAME      NODE\nweb.1     h2\ndb.n2     h2\n"
        );
        assert_eq!(ps(None, &["nope=1"]).unwrap_err(), "invalid filter 'nope'");
        assert!(ps(Some("{{"), &[]).is_err());
    }
}
