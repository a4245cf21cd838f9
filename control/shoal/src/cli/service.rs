//! `shoal service ...` and `shoal network ...`: Docker's forms and output.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use clap::{Args, Subcommand, ValueEnum};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use shoal_cluster::store::{
    EndpointMode, HealthCheck, Network, PortConfig, Protocol, PublishMode, RestartCondition,
    Service, ServiceMode, ServiceSpec, Task, TaskState,
};

use super::{
    format::{align, align_tabs},
    parse_label,
    template::{unescape, Format, Template},
    ApiSocketArg, CliError, Output,
};
use crate::api::{client::Client, Reply, Request, ServiceStateView};

/// How long `create`/`scale`/`update` wait for the service to converge.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);
/// A task pending for lack of a node (or address) this long ends the wait with its reason.
const PENDING_GIVE_UP: Duration = Duration::from_secs(3);

/// `shoal service ...`
#[derive(Args, Debug, Clone, PartialEq)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub socket: ApiSocketArg,
    #[command(subcommand)]
    pub command: ServiceCommand,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum ServiceCommand {
    /// Create a service
    Create(Box<CreateArgs>),
    /// List services
    #[command(visible_alias = "list")]
    Ls(ServiceLsArgs),
    /// List the tasks of services (with their history)
    Ps(PsArgs),
    /// Show services in detail (JSON unless --pretty)
    Inspect(ServiceInspectArgs),
    /// Scale replicated services: SERVICE=REPLICAS ...
    Scale(ScaleArgs),
    /// Remove services
    #[command(visible_alias = "remove")]
    Rm(ServiceRmArgs),
    /// Update a service (--force replaces every task)
    Update(ServiceUpdateArgs),
    /// Print the logs of a service's tasks on this node
    Logs(LogsArgs),
}

/// `--mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Replicated,
    Global,
}

/// `--endpoint-mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndpointModeArg {
    Vip,
    Dnsrr,
}

/// `--restart-condition` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartArg {
    Any,
    OnFailure,
    None,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct CreateArgs {
    /// Service name
    #[arg(long)]
    pub name: Option<String>,
    /// Number of tasks (replicated mode)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub replicas: Option<String>,
    /// Service mode
    #[arg(long, value_enum, default_value = "replicated")]
    pub mode: ModeArg,
    /// Publish a port: PUBLISHED:TARGET[/PROTO], TARGET[/PROTO] or
    /// mode=ingress|host,target=N,published=N,protocol=tcp|udp (repeatable)
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Network to attach to (repeatable)
    #[arg(long = "network", value_name = "NET")]
    pub networks: Vec<String>,
    /// Environment variable K=V (repeatable)
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Placement constraint, e.g. node.role==manager (repeatable)
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<String>,
    /// How the service's name resolves: a VIP, or DNS round robin
    #[arg(long, value_enum, default_value = "vip")]
    pub endpoint_mode: EndpointModeArg,
    /// Command to run to check health
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between running the check (e.g. 2s, 500ms, 1m30s)
    #[arg(long, value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// Consecutive failures needed to report unhealthy
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u64>,
    /// Start period for the container to initialize before counting retries
    #[arg(long, value_name = "DURATION")]
    pub health_start_period: Option<String>,
    /// Maximum time to allow one check to run
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Disable any container-specified health check
    #[arg(long, conflicts_with = "health_cmd")]
    pub no_healthcheck: bool,
    /// Restart when the task ends: any, on-failure or none
    #[arg(long, value_enum, default_value = "any")]
    pub restart_condition: RestartArg,
    /// Service label K=V (repeatable)
    #[arg(short = 'l', long = "label", value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Exit at once instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// The image
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Command and arguments
    #[arg(
        value_name = "ARG",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct ServiceLsArgs {
    /// Only print IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// `json`, `table TEMPLATE` or a Go template such as '{{.Name}}\t{{.Replicas}}'
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct PsArgs {
    /// Only print task IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate IDs and errors
    #[arg(long)]
    pub no_trunc: bool,
    /// Filter: desired-state=running|shutdown|accepted, node=HOST
    #[arg(short, long = "filter", value_name = "K=V")]
    pub filters: Vec<String>,
    /// Services (name, ID or unique ID prefix)
    #[arg(value_name = "SERVICE", required = true)]
    pub services: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct ServiceInspectArgs {
    /// Human-readable output instead of JSON
    #[arg(long)]
    pub pretty: bool,
    /// `json` or a Go template such as '{{.Endpoint.VirtualIPs}}'
    #[arg(short, long, value_name = "FORMAT", conflicts_with = "pretty")]
    pub format: Option<String>,
    #[arg(value_name = "SERVICE", required = true)]
    pub services: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct ScaleArgs {
    /// Exit at once instead of waiting for the services to converge
    #[arg(short, long)]
    pub detach: bool,
    /// SERVICE=REPLICAS
    #[arg(value_name = "SERVICE=REPLICAS", required = true)]
    pub scales: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct ServiceRmArgs {
    #[arg(value_name = "SERVICE", required = true)]
    pub services: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct ServiceUpdateArgs {
    /// Replace every task even if nothing changed (spreads them again)
    #[arg(long)]
    pub force: bool,
    /// A new image
    #[arg(long)]
    pub image: Option<String>,
    /// A new number of tasks
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub replicas: Option<String>,
    /// Exit at once instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct LogsArgs {
    /// Number of lines from the end of each task's log ("all" by default)
    #[arg(long, short = 'n', value_name = "N")]
    pub tail: Option<String>,
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

/// `shoal network ...`
#[derive(Args, Debug, Clone, PartialEq)]
pub struct NetworkArgs {
    #[command(flatten)]
    pub socket: ApiSocketArg,
    #[command(subcommand)]
    pub command: NetworkCommand,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum NetworkCommand {
    /// Create an overlay network
    Create(NetworkCreateArgs),
    /// List networks
    #[command(visible_alias = "list")]
    Ls(NetworkLsArgs),
    /// Show networks in detail
    Inspect(NetworkInspectArgs),
    /// Remove networks (refused while a service uses one)
    #[command(visible_alias = "remove")]
    Rm(NetworkRmArgs),
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct NetworkCreateArgs {
    /// Driver (only overlay)
    #[arg(short, long, default_value = "overlay")]
    pub driver: String,
    /// Subnet in CIDR form [default: the next free one from the cluster's pools]
    #[arg(long)]
    pub subnet: Option<Ipv4Net>,
    /// Gateway address [default: the subnet's first address]
    #[arg(long)]
    pub gateway: Option<Ipv4Addr>,
    /// Let standalone containers attach
    #[arg(long)]
    pub attachable: bool,
    /// Driver option K=V (repeatable; `encrypted` marks an encrypted overlay)
    #[arg(short, long = "opt", value_name = "K=V", value_parser = parse_label)]
    pub opts: Vec<(String, String)>,
    /// Label K=V (repeatable)
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct NetworkLsArgs {
    /// Only print IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// `json`, `table TEMPLATE` or a Go template
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct NetworkInspectArgs {
    /// `json` or a Go template such as '{{range .IPAM.Config}}...'
    #[arg(short, long, value_name = "FORMAT")]
    pub format: Option<String>,
    #[arg(value_name = "NETWORK", required = true)]
    pub networks: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct NetworkRmArgs {
    #[arg(value_name = "NETWORK", required = true)]
    pub networks: Vec<String>,
}

// ---- parsing ----

/// A replica count: a non-negative integer.
pub fn parse_replicas(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| format!("invalid replicas value {text:?}: must be a non-negative integer"))
}

/// Docker's durations: `300ms`, `2s`, `1m30s`, `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {text:?}: use e.g. 500ms, 2s, 1m30s");
    let t = text.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(secs * 1000);
    }
    let mut total = 0u64;
    let mut num = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let value: f64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let factor = match unit.as_str() {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(bad()),
        };
        total += (value * factor) as u64;
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

fn parse_protocol(text: &str, spec: &str) -> Result<Protocol, String> {
    match text {
        "tcp" | "" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        other => Err(format!(
            "invalid publish spec {spec:?}: protocol {other:?} is not tcp or udp"
        )),
    }
}

fn parse_port(text: &str, spec: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid publish spec {spec:?}: {text:?} is not a port (1-65535)"))
}

/// `-p`: `PUB:TGT[/proto]`, `TGT[/proto]` (published chosen by the managers), or the
/// long form `mode=ingress|host,target=N,published=N,protocol=tcp|udp`.
pub fn parse_publish(spec: &str) -> Result<PortConfig, String> {
    if spec.contains('=') {
        let mut port = PortConfig {
            protocol: Protocol::Tcp,
            target: 0,
            published: 0,
            mode: PublishMode::Ingress,
        };
        for field in spec.split(',') {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| format!("invalid publish spec {spec:?}: {field:?} is not K=V"))?;
            match k.trim() {
                "mode" => {
                    port.mode = match v {
                        "ingress" => PublishMode::Ingress,
                        "host" => PublishMode::Host,
                        other => {
                            return Err(format!(
                            "invalid publish spec {spec:?}: mode {other:?} is not ingress or host"
                        ))
                        }
                    }
                }
                "target" => port.target = parse_port(v, spec)?,
                "published" => port.published = parse_port(v, spec)?,
                "protocol" => port.protocol = parse_protocol(v, spec)?,
                other => {
                    return Err(format!(
                        "invalid publish spec {spec:?}: unknown field {other:?}"
                    ))
                }
            }
        }
        if port.target == 0 {
            return Err(format!("invalid publish spec {spec:?}: target is required"));
        }
        return Ok(port);
    }
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let protocol = parse_protocol(proto, spec)?;
    let (published, target) = match ports.split_once(':') {
        Some((p, t)) => (parse_port(p, spec)?, parse_port(t, spec)?),
        None => (0, parse_port(ports, spec)?),
    };
    Ok(PortConfig {
        protocol,
        target,
        published,
        mode: PublishMode::Ingress,
    })
}

impl CreateArgs {
    /// The spec the CLI sends (networks as given; the manager resolves them).
    pub fn spec(&self) -> Result<ServiceSpec, String> {
        let mode = match (self.mode, &self.replicas) {
            (ModeArg::Global, Some(_)) => {
                return Err("--replicas can only be used with replicated mode".into())
            }
            (ModeArg::Global, None) => ServiceMode::Global,
            (ModeArg::Replicated, r) => ServiceMode::Replicated {
                replicas: r.as_deref().map(parse_replicas).transpose()?.unwrap_or(1),
            },
        };
        let ports = self
            .publish
            .iter()
            .map(|p| parse_publish(p))
            .collect::<Result<Vec<_>, _>>()?;
        let healthcheck = if self.no_healthcheck {
            Some(HealthCheck {
                test: vec!["NONE".into()],
                interval_ms: 0,
                timeout_ms: 0,
                retries: 0,
                start_period_ms: 0,
            })
        } else if let Some(cmd) = &self.health_cmd {
            Some(HealthCheck {
                test: vec!["CMD-SHELL".into(), cmd.clone()],
                interval_ms: self
                    .health_interval
                    .as_deref()
                    .map(parse_duration)
                    .transpose()?
                    .unwrap_or(0),
                timeout_ms: self
                    .health_timeout
                    .as_deref()
                    .map(parse_duration)
                    .transpose()?
                    .unwrap_or(0),
                retries: self.health_retries.unwrap_or(0),
                start_period_ms: self
                    .health_start_period
                    .as_deref()
                    .map(parse_duration)
                    .transpose()?
                    .unwrap_or(0),
            })
        } else {
            if self.health_interval.is_some()
                || self.health_retries.is_some()
                || self.health_start_period.is_some()
                || self.health_timeout.is_some()
            {
                return Err("--health-interval/--health-retries/--health-start-period/--health-timeout need --health-cmd".into());
            }
            None
        };
        for e in &self.env {
            if e.is_empty() || e.starts_with('=') {
                return Err(format!("invalid environment variable {e:?}: expected K=V"));
            }
        }
        for c in &self.constraints {
            shoal_orchestrator::scheduler::Constraint::parse(c)?;
        }
        Ok(ServiceSpec {
            name: self.name.clone().unwrap_or_else(|| {
                format!("svc-{}", &shoal_orchestrator::scheduler::new_id()[..8])
            }),
            labels: self.labels.iter().cloned().collect(),
            image: self.image.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            mode,
            networks: self.networks.clone(),
            ports,
            endpoint_mode: match self.endpoint_mode {
                EndpointModeArg::Vip => EndpointMode::Vip,
                EndpointModeArg::Dnsrr => EndpointMode::Dnsrr,
            },
            constraints: self.constraints.clone(),
            healthcheck,
            restart_condition: match self.restart_condition {
                RestartArg::Any => RestartCondition::Any,
                RestartArg::OnFailure => RestartCondition::OnFailure,
                RestartArg::None => RestartCondition::None,
            },
        })
    }
}

fn parse_scale(text: &str) -> Result<(String, u64), String> {
    let (name, n) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid scale specifier {text:?}: expected SERVICE=REPLICAS"))?;
    if name.is_empty() {
        return Err(format!("invalid scale specifier {text:?}: no service"));
    }
    Ok((name.to_string(), parse_replicas(n)?))
}

// ---- output ----

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

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
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

fn service_ls(args: &ServiceLsArgs, view: &ServiceStateView) -> Result<String, String> {
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
fn service_ps(args: &PsArgs, view: &ServiceStateView) -> Result<String, String> {
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

fn inspect_pretty(s: &Service, networks: &[Network]) -> String {
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

fn network_value(n: &Network) -> Value {
    let mut config = json!({});
    if let Some(s) = &n.subnet {
        config["Subnet"] = json!(s);
    }
    if let Some(g) = &n.gateway {
        config["Gateway"] = json!(g);
    }
    json!({
        "Name": n.name,
        "Id": n.id,
        "Scope": "swarm",
        "Driver": n.driver,
        "IPAM": {"Driver": "default", "Config": [config]},
        "Internal": n.internal,
        "Attachable": n.attachable,
        "Ingress": n.ingress,
        "Options": {
            "com.docker.network.driver.overlay.vxlanid_list": n.vni.map(|v| v.to_string()).unwrap_or_default(),
        },
        "Labels": n.labels,
        "DriverOptions": n.options,
    })
}

fn networks_output(command: &NetworkCommand, networks: &[Network]) -> Result<String, String> {
    match command {
        NetworkCommand::Ls(args) => {
            let mut nets: Vec<&Network> = networks.iter().collect();
            nets.sort_by(|a, b| a.name.cmp(&b.name));
            if args.quiet {
                return Ok(nets.iter().map(|n| format!("{}\n", short(&n.id))).collect());
            }
            let row = |n: &Network| json!({"ID": short(&n.id), "Name": n.name, "Driver": n.driver, "Scope": "swarm"});
            match Format::parse(args.format.as_deref())? {
                Format::Default => {
                    let mut rows = vec![vec![
                        "NETWORK ID".to_string(),
                        "NAME".into(),
                        "DRIVER".into(),
                        "SCOPE".into(),
                    ]];
                    for n in nets {
                        rows.push(vec![
                            short(&n.id).to_string(),
                            n.name.clone(),
                            n.driver.clone(),
                            "swarm".into(),
                        ]);
                    }
                    Ok(align(&rows))
                }
                Format::Lines(t) => nets.iter().map(|n| Ok(t.render(&row(n))? + "\n")).collect(),
                Format::Table(t) => {
                    let mut text = t.render(&json!({"ID": "NETWORK ID", "Name": "NAME",
                        "Driver": "DRIVER", "Scope": "SCOPE"}))?
                        + "\n";
                    for n in nets {
                        text += &t.render(&row(n))?;
                        text.push('\n');
                    }
                    Ok(align_tabs(&text))
                }
            }
        }
        NetworkCommand::Inspect(args) => {
            let values: Vec<Value> = networks.iter().map(network_value).collect();
            match args.format.as_deref() {
                None | Some("") | Some("json") => Ok(format!(
                    "{}\n",
                    serde_json::to_string_pretty(&values).unwrap_or_default()
                )),
                Some(f) => {
                    let t = Template::parse(&unescape(f))?;
                    values.iter().map(|v| Ok(t.render(v)? + "\n")).collect()
                }
            }
        }
        _ => Err("unexpected reply".into()),
    }
}

// ---- running ----

fn call(client: &Client, request: &Request) -> Result<Reply, CliError> {
    Ok(client.call(request)?)
}

fn state(client: &Client, services: Vec<String>) -> Result<ServiceStateView, CliError> {
    match call(client, &Request::ServiceState { services })? {
        Reply::ServiceState(v) => Ok(*v),
        _ => Err(CliError::Output(
            "unexpected reply to a service query".into(),
        )),
    }
}

/// One line per replica (per node for a global service): its task's state, as Docker's
/// progress shows it.
fn progress_lines(
    s: &Service,
    live: &[&Task],
    desired: u64,
    view: &ServiceStateView,
) -> Vec<String> {
    let bar = |state: TaskState| {
        let done = match state {
            TaskState::New => 1,
            TaskState::Pending => 2,
            TaskState::Assigned => 3,
            TaskState::Accepted | TaskState::Preparing => 5,
            TaskState::Ready => 6,
            TaskState::Starting => 7,
            TaskState::Running => 9,
            _ => 0,
        };
        let width = done * 50 / 9;
        format!("[{}>{}]", "=".repeat(width), " ".repeat(50 - width))
    };
    match s.spec.mode {
        ServiceMode::Replicated { .. } => (1..=desired)
            .map(|slot| {
                let state = live
                    .iter()
                    .find(|t| t.slot == slot)
                    .map_or(TaskState::New, |t| t.status.state);
                format!("{slot}/{desired}: {:<10} {}", state.as_str(), bar(state))
            })
            .collect(),
        ServiceMode::Global => live
            .iter()
            .map(|t| {
                let node = t
                    .node_id
                    .as_ref()
                    .map(|n| view.nodes.get(n).cloned().unwrap_or_else(|| n.clone()))
                    .unwrap_or_default();
                format!(
                    "{node}: {:<10} {}",
                    t.status.state.as_str(),
                    bar(t.status.state)
                )
            })
            .collect(),
    }
}

/// An error worth retrying while waiting (no leader or quorum for a moment).
fn transient(e: &CliError) -> bool {
    let text = e.to_string();
    text.contains("no quorum") || text.contains("not the leader") || text.contains("cannot reach")
}

/// Waits until each service converges, printing progress; an error when one cannot.
fn wait_converged(client: &Client, services: &[String], since_ms: u64) -> Result<String, CliError> {
    let start = Instant::now();
    let mut pending_since: Option<Instant> = None;
    let mut last_line = String::new();
    let out = std::io::stdout();
    loop {
        // A manager busy with an election answers again shortly: retry until the bound.
        let view = match state(client, services.to_vec()) {
            Ok(v) => v,
            Err(e) if start.elapsed() < CONVERGE_TIMEOUT && transient(&e) => {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut lines = Vec::new();
        let mut all = true;
        let mut pending_err = None;
        for s in &view.services {
            let (running, desired) = replicas(s, &view.tasks);
            let live: Vec<&Task> = view
                .tasks
                .iter()
                .filter(|t| t.service_id == s.id && t.desired_state == TaskState::Running)
                .collect();
            if let Some(t) = view.tasks.iter().find(|t| {
                t.service_id == s.id
                    && t.created_ms >= since_ms
                    && t.status.state == TaskState::Rejected
            }) {
                return Err(CliError::Output(format!(
                    "service {} cannot converge: task {} was rejected: {}",
                    s.spec.name,
                    t.display_name(&s.spec.name),
                    t.status.err.clone().unwrap_or_default()
                )));
            }
            if let Some(t) = live.iter().find(|t| t.status.state == TaskState::Pending) {
                pending_err = Some(format!(
                    "service {} cannot converge: task {} is pending: {}",
                    s.spec.name,
                    t.display_name(&s.spec.name),
                    t.status.err.clone().unwrap_or_default()
                ));
            }
            let converged = running == desired
                && live.len() as u64 == desired
                && live.iter().all(|t| t.force_update == s.force_update)
                && (desired > 0 || matches!(s.spec.mode, ServiceMode::Replicated { .. }));
            all &= converged;
            lines.push(format!(
                "{}: overall progress: {running} out of {desired} tasks",
                s.spec.name
            ));
            lines.extend(progress_lines(s, &live, desired, &view));
        }
        let text = lines.join("\n");
        if text != last_line {
            let mut o = out.lock();
            let _ = writeln!(o, "{text}");
            let _ = o.flush();
            last_line = text;
        }
        if all && !view.services.is_empty() {
            return Ok("verify: Service converged\n".into());
        }
        match (pending_err, pending_since) {
            (Some(e), Some(t)) if t.elapsed() > PENDING_GIVE_UP => {
                return Err(CliError::Output(e));
            }
            (Some(_), None) => pending_since = Some(Instant::now()),
            (None, _) => pending_since = None,
            _ => {}
        }
        if start.elapsed() > CONVERGE_TIMEOUT {
            return Err(CliError::Output(format!(
                "the service did not converge within {} s (see `shoal service ps`)",
                CONVERGE_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `shoal service ...` against the agent.
pub fn run_service(args: &ServiceArgs) -> Result<Output, CliError> {
    let client = Client::new(&args.socket.api_socket);
    let mut warnings = Vec::new();
    let stdout = match &args.command {
        ServiceCommand::Create(a) => {
            let spec = a.spec().map_err(CliError::Usage)?;
            let since = shoal_orchestrator::scheduler::now_ms().saturating_sub(5000);
            let reply = call(&client, &Request::ServiceCreate { spec })?;
            let Reply::ServiceCreated { id, warnings: w } = reply else {
                return Err(CliError::Output(
                    "unexpected reply to service create".into(),
                ));
            };
            warnings.extend(w);
            println!("{id}");
            if a.detach {
                String::new()
            } else {
                wait_converged(&client, &[id], since)?
            }
        }
        ServiceCommand::Ls(a) => {
            Format::parse(a.format.as_deref()).map_err(CliError::Usage)?;
            let view = state(&client, Vec::new())?;
            service_ls(a, &view).map_err(CliError::Output)?
        }
        ServiceCommand::Ps(a) => {
            let view = state(&client, a.services.clone())?;
            service_ps(a, &view).map_err(CliError::Usage)?
        }
        ServiceCommand::Inspect(a) => {
            let template = match a.format.as_deref() {
                None | Some("") | Some("json") => None,
                Some(f) => Some(Template::parse(&unescape(f)).map_err(CliError::Usage)?),
            };
            let view = state(&client, a.services.clone())?;
            let values: Vec<Value> = view
                .services
                .iter()
                .map(|s| inspect_value(s, &view.networks))
                .collect();
            if let Some(t) = template {
                values
                    .iter()
                    .map(|v| Ok(t.render(v)? + "\n"))
                    .collect::<Result<String, String>>()
                    .map_err(CliError::Output)?
            } else if a.pretty {
                view.services
                    .iter()
                    .map(|s| inspect_pretty(s, &view.networks))
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(&values).unwrap_or_default()
                )
            }
        }
        ServiceCommand::Scale(a) => {
            let scales = a
                .scales
                .iter()
                .map(|s| parse_scale(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(CliError::Usage)?;
            let since = shoal_orchestrator::scheduler::now_ms().saturating_sub(5000);
            let reply = call(
                &client,
                &Request::ServiceScale {
                    scales: scales.clone(),
                },
            )?;
            let Reply::ServicesChanged { services } = reply else {
                return Err(CliError::Output("unexpected reply to service scale".into()));
            };
            for (name, n) in &scales {
                println!("{name} scaled to {n}");
            }
            if a.detach {
                String::new()
            } else {
                wait_converged(&client, &services, since)?
            }
        }
        ServiceCommand::Rm(a) => {
            match call(
                &client,
                &Request::ServiceRm {
                    services: a.services.clone(),
                },
            )? {
                Reply::ServicesChanged { services } => {
                    services.iter().map(|s| format!("{s}\n")).collect()
                }
                _ => return Err(CliError::Output("unexpected reply to service rm".into())),
            }
        }
        ServiceCommand::Update(a) => {
            let replicas = a
                .replicas
                .as_deref()
                .map(parse_replicas)
                .transpose()
                .map_err(CliError::Usage)?;
            let since = shoal_orchestrator::scheduler::now_ms().saturating_sub(5000);
            call(
                &client,
                &Request::ServiceUpdate {
                    service: a.service.clone(),
                    force: a.force,
                    image: a.image.clone(),
                    replicas,
                },
            )?;
            println!("{}", a.service);
            if a.detach {
                String::new()
            } else {
                wait_converged(&client, std::slice::from_ref(&a.service), since)?
            }
        }
        ServiceCommand::Logs(a) => match call(
            &client,
            &Request::ServiceLogs {
                service: a.service.clone(),
                tail: a.tail.clone(),
            },
        )? {
            Reply::ServiceLogs { lines, warnings: w } => {
                warnings.extend(w);
                lines.iter().map(|l| format!("{l}\n")).collect()
            }
            _ => return Err(CliError::Output("unexpected reply to service logs".into())),
        },
    };
    Ok(Output { stdout, warnings })
}

/// Runs `shoal network ...` against the agent.
pub fn run_network(args: &NetworkArgs) -> Result<Output, CliError> {
    let client = Client::new(&args.socket.api_socket);
    let stdout = match &args.command {
        NetworkCommand::Create(a) => match call(
            &client,
            &Request::NetworkCreate {
                name: a.name.clone(),
                driver: Some(a.driver.clone()),
                subnet: a.subnet,
                gateway: a.gateway,
                attachable: a.attachable,
                options: a.opts.iter().cloned().collect(),
                labels: a.labels.iter().cloned().collect(),
            },
        )? {
            Reply::NetworkCreated { id } => format!("{id}\n"),
            _ => {
                return Err(CliError::Output(
                    "unexpected reply to network create".into(),
                ))
            }
        },
        NetworkCommand::Ls(a) => {
            Format::parse(a.format.as_deref()).map_err(CliError::Usage)?;
            match call(&client, &Request::NetworkLs)? {
                Reply::Networks { networks } => {
                    networks_output(&args.command, &networks).map_err(CliError::Output)?
                }
                _ => return Err(CliError::Output("unexpected reply to network ls".into())),
            }
        }
        NetworkCommand::Inspect(a) => {
            if let Some(f) = a.format.as_deref().filter(|f| *f != "json") {
                Template::parse(&unescape(f)).map_err(CliError::Usage)?;
            }
            match call(
                &client,
                &Request::NetworkInspect {
                    networks: a.networks.clone(),
                },
            )? {
                Reply::Networks { networks } => {
                    networks_output(&args.command, &networks).map_err(CliError::Output)?
                }
                _ => {
                    return Err(CliError::Output(
                        "unexpected reply to network inspect".into(),
                    ))
                }
            }
        }
        NetworkCommand::Rm(a) => match call(
            &client,
            &Request::NetworkRm {
                networks: a.networks.clone(),
            },
        )? {
            Reply::NetworksChanged { networks } => {
                networks.iter().map(|n| format!("{n}\n")).collect()
            }
            _ => return Err(CliError::Output("unexpected reply to network rm".into())),
        },
    };
    Ok(Output {
        stdout,
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_specs_short_and_long() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol),
            (8080, 80, Protocol::Tcp)
        );
        let p = parse_publish("53:53/udp").unwrap();
        assert_eq!(p.protocol, Protocol::Udp);
        let p = parse_publish("80").unwrap();
        assert_eq!((p.published, p.target), (0, 80));
        let p = parse_publish("mode=host,target=80,published=8081,protocol=tcp").unwrap();
        assert_eq!((p.mode, p.published), (PublishMode::Host, 8081));
        for bad in [
            "8080:80/sctp",
            "x:80",
            "0:80",
            "70000:80",
            "mode=weird,target=80",
            "published=80",
            "target=80,colour=red",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replicas_and_durations() {
        assert_eq!(parse_replicas("4"), Ok(4));
        assert!(parse_replicas("-1").unwrap_err().contains("non-negative"));
        assert!(parse_replicas("two").is_err());
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("2s"), Ok(2000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000));
        assert_eq!(parse_duration("3"), Ok(3000));
        assert!(parse_duration("soon").is_err());
        assert!(parse_scale("web=x").is_err());
        assert!(parse_scale("=3").is_err());
        assert_eq!(parse_scale("web=3"), Ok(("web".into(), 3)));
    }

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
