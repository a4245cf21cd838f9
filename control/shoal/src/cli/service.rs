//! `shoal service ...`: Docker's forms and output.
//!
//! - this file: the arguments (clap) and running a command.
//! - `spec`: the flags parsed into a `ServiceSpec` (ports, health check, durations, ...).
//! - `policy`: the flag groups create and update share (health check, restart, update
//!   and rollback policy).
//! - `changes`: `update`'s flags parsed into the `ServiceChanges` request.
//! - `container_flags`: the container flags of both (`--entrypoint`, `--user`,
//!   `--hostname`, `--dns*`, `--host`, ...), `--env-file` and `--network`'s long form.
//! - `views`: what `service ls` and `ps` print.
//! - `inspect`: what `service inspect` prints (JSON and `--pretty`).
//! - `progress`: `create`/`scale`/`update`/`rollback` waiting for the service to
//!   converge.
//! - `job`: what jobs show instead (`ls`'s completions, the wait for the job's end).
//! - `logs`: `service logs` (its flags, the request, following the stream).

mod changes;
mod container_flags;
mod file_flags;
pub(crate) mod inspect;
mod job;
pub(crate) mod limit_flags;
mod logs;
mod mount_flags;
mod policy;
mod progress;
pub(crate) mod spec;
pub(crate) mod views;

pub use inspect::inspect_value;
pub use logs::LogsArgs;
pub use policy::{HealthArgs, RestartArgs, RollbackPolicyArgs, UpdatePolicyArgs};
pub use spec::{parse_duration, parse_publish, parse_replicas};
pub use views::{human_duration, replicas};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use super::{
    call, parse_label,
    registry_auth::credentials_for,
    template::{unescape, Format, Template},
    ApiSocketArg, CliError, Output,
};
use crate::api::{client::Client, Reply, Request, ServiceChanges, ServiceStateView};
use crate::filters;
use inspect::inspect_pretty;
use progress::wait_converged;
use spec::parse_scale;
use views::service_ls;
pub(crate) use views::task_list;

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
    Update(Box<ServiceUpdateArgs>),
    /// Revert a service to its previous spec (`update --rollback`)
    Rollback(ServiceRollbackArgs),
    /// Print the logs of a service's (or a task's) containers on this node
    Logs(LogsArgs),
}

/// `--mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Replicated,
    Global,
    /// Tasks that run to completion: --replicas of them, --max-concurrent at once
    ReplicatedJob,
    /// One task per node that runs to completion
    GlobalJob,
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
    /// Job tasks run at once (replicated-job mode; default: --replicas)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_concurrent: Option<String>,
    /// Publish a port: PUBLISHED:TARGET[/PROTO], TARGET[/PROTO] or
    /// mode=ingress|host,target=N,published=N,protocol=tcp|udp (repeatable)
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Network to attach to: NET, or name=NET,alias=A[,alias=B] (repeatable)
    #[arg(long = "network", value_name = "NET")]
    pub networks: Vec<String>,
    /// Environment variable K=V (repeatable)
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Read environment variables from a file: K=V lines, # comments; a bare K takes
    /// this shell's value (repeatable)
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<std::path::PathBuf>,
    /// Overwrite the image's entrypoint (split as a shell splits words)
    #[arg(long, value_name = "CMD", allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Container hostname; may name {{.Service.Name}}, {{.Service.ID}}, {{.Task.Slot}},
    /// {{.Task.ID}}, {{.Task.Name}}, {{.Node.ID}}, {{.Node.Hostname}}
    #[arg(long, value_name = "TEMPLATE")]
    pub hostname: Option<String>,
    /// Resolver for names the cluster does not own (repeatable)
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<String>,
    /// resolv.conf option, e.g. ndots:2 (repeatable)
    #[arg(long = "dns-option", value_name = "OPTION")]
    pub dns_option: Vec<String>,
    /// DNS search domain (repeatable)
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// Extra /etc/hosts entry HOST:IP (repeatable)
    #[arg(long = "host", value_name = "HOST:IP")]
    pub hosts: Vec<String>,
    /// Run an init process in each container (default true; --init=false: none)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub init: Option<bool>,
    /// Signal that stops a container (default: the image's, else SIGTERM)
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Container label K=V (repeatable)
    #[arg(long = "container-label", value_name = "K=V", value_parser = parse_label)]
    pub container_labels: Vec<(String, String)>,
    /// Placement constraint, e.g. node.role==manager (repeatable)
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<String>,
    /// At most N tasks of the service on one node (0: no limit; replicated mode)
    #[arg(long, value_name = "N")]
    pub replicas_max_per_node: Option<u64>,
    /// Spread the tasks over a node label's values: spread=node.labels.KEY (repeatable)
    #[arg(long = "placement-pref", value_name = "PREF")]
    pub placement_prefs: Vec<String>,
    /// Give each task a secret as a file: NAME, or
    /// source=NAME,target=PATH,uid=N,gid=N,mode=0400 (repeatable)
    #[arg(long = "secret", value_name = "SPEC")]
    pub secrets: Vec<String>,
    /// Give each task a config as a file: NAME, or
    /// source=NAME,target=/PATH,uid=N,gid=N,mode=0444 (repeatable)
    #[arg(long = "config", value_name = "SPEC")]
    pub configs: Vec<String>,
    /// Attach a mount: type=volume|bind|tmpfs,source=SRC,target=/PATH[,readonly]
    /// [,volume-driver=D,volume-opt=K=V,tmpfs-size=N,tmpfs-mode=MODE] (repeatable)
    #[arg(long = "mount", value_name = "SPEC")]
    pub mounts: Vec<String>,
    /// Mount the container's root filesystem read-only
    #[arg(long)]
    pub read_only: bool,
    /// Limit each task's CPUs (e.g. 0.5)
    #[arg(long, value_name = "CPUS")]
    pub limit_cpu: Option<String>,
    /// Limit each task's memory (e.g. 64m, 1g)
    #[arg(long, value_name = "BYTES")]
    pub limit_memory: Option<String>,
    /// Limit the processes of each task (0: no limit)
    #[arg(long, value_name = "N")]
    pub limit_pids: Option<u64>,
    /// Reserve CPUs for each task on its node (e.g. 0.5)
    #[arg(long, value_name = "CPUS")]
    pub reserve_cpu: Option<String>,
    /// Reserve memory for each task on its node (e.g. 64m, 1g)
    #[arg(long, value_name = "BYTES")]
    pub reserve_memory: Option<String>,
    /// Add a Linux capability to each task (CAP_NET_ADMIN, NET_ADMIN, ALL)
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability from each task (CAP_CHOWN, CHOWN, ALL)
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// A resource limit of each task container, NAME=SOFT[:HARD] (e.g. nofile=1024:2048;
    /// repeatable)
    #[arg(long = "ulimit", value_name = "ULIMIT")]
    pub ulimits: Vec<String>,
    /// A kernel parameter of each task, K=V (net.*, fs.mqueue.*, kernel.msg*/sem/shm*;
    /// repeatable)
    #[arg(long = "sysctl", value_name = "K=V")]
    pub sysctls: Vec<String>,
    /// Run each task container privileged: every capability and host device, no
    /// seccomp or AppArmor profile (shoal's; Docker's services have no such flag)
    #[arg(long)]
    pub privileged: bool,
    /// Give each task a host device, PATH_ON_HOST[:PATH_IN_CONTAINER[:CGROUP_PERMISSIONS]]
    /// (permissions a combination of r, w, m; default rwm; repeatable)
    #[arg(long = "device", value_name = "DEVICE")]
    pub devices: Vec<String>,
    /// How the service's name resolves: a VIP, or DNS round robin
    #[arg(long, value_enum, default_value = "vip")]
    pub endpoint_mode: EndpointModeArg,
    #[command(flatten)]
    pub health: HealthArgs,
    #[command(flatten)]
    pub restart: RestartArgs,
    /// Time to wait before force killing a container (default 10s)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub stop_grace_period: Option<String>,
    #[command(flatten)]
    pub update_policy: UpdatePolicyArgs,
    #[command(flatten)]
    pub rollback_policy: RollbackPolicyArgs,
    /// Service label K=V (repeatable)
    #[arg(short = 'l', long = "label", value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Exit at once instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Send the registry credentials of your docker config to the nodes that pull
    #[arg(long)]
    pub with_registry_auth: bool,
    /// Do not pin the image's tag to its digest (each node pulls the tag itself)
    #[arg(long)]
    pub no_resolve_image: bool,
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
    /// Filter (repeatable): id=ID, label=KEY[=VALUE], mode=replicated|global|
    /// replicated-job|global-job, name=NAME
    #[arg(short, long = "filter", value_name = "K=V")]
    pub filters: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct PsArgs {
    #[command(flatten)]
    pub tasks: TaskListArgs,
    /// Services (name, ID or unique ID prefix)
    #[arg(value_name = "SERVICE", required = true)]
    pub services: Vec<String>,
}

/// The options of a task list (`service ps`, `node ps`).
#[derive(Args, Debug, Clone, PartialEq)]
pub struct TaskListArgs {
    /// Only print task IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate IDs and errors
    #[arg(long)]
    pub no_trunc: bool,
    /// `json`, `table TEMPLATE` or a Go template such as '{{.Name}}\t{{.Node}}'
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Filter (repeatable): desired-state=running|shutdown|accepted, id=ID,
    /// label=KEY[=VALUE], name=NAME, node=NODE, service=SERVICE
    #[arg(short, long = "filter", value_name = "K=V")]
    pub filters: Vec<String>,
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
    /// Roll back to the previous spec (alone: no other change with it)
    #[arg(long)]
    pub rollback: bool,
    /// A new image
    #[arg(long)]
    pub image: Option<String>,
    /// A new number of tasks
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub replicas: Option<String>,
    /// New command arguments, split as a shell splits words
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub args: Option<String>,
    /// Add or change an environment variable K=V (repeatable)
    #[arg(long = "env-add", value_name = "K=V")]
    pub env_add: Vec<String>,
    /// Remove an environment variable (repeatable)
    #[arg(long = "env-rm", value_name = "K")]
    pub env_rm: Vec<String>,
    /// Add or change a service label K=V (repeatable)
    #[arg(long = "label-add", value_name = "K=V", value_parser = parse_label)]
    pub label_add: Vec<(String, String)>,
    /// Remove a service label (repeatable)
    #[arg(long = "label-rm", value_name = "K")]
    pub label_rm: Vec<String>,
    /// Publish a port, as --publish of create (repeatable)
    #[arg(long = "publish-add", value_name = "SPEC")]
    pub publish_add: Vec<String>,
    /// Stop publishing a port: PUBLISHED:TARGET[/PROTO], or PORT[/PROTO] for a
    /// published or target port (repeatable)
    #[arg(long = "publish-rm", value_name = "SPEC")]
    pub publish_rm: Vec<String>,
    /// Attach to a network: NET, or name=NET,alias=A[,alias=B] (repeatable)
    #[arg(long = "network-add", value_name = "NET")]
    pub network_add: Vec<String>,
    /// Detach from a network (repeatable)
    #[arg(long = "network-rm", value_name = "NET")]
    pub network_rm: Vec<String>,
    /// Add a placement constraint (repeatable)
    #[arg(long = "constraint-add", value_name = "EXPR")]
    pub constraint_add: Vec<String>,
    /// Remove a placement constraint (repeatable)
    #[arg(long = "constraint-rm", value_name = "EXPR")]
    pub constraint_rm: Vec<String>,
    /// At most N tasks of the service on one node (0: no limit)
    #[arg(long, value_name = "N")]
    pub replicas_max_per_node: Option<u64>,
    /// Add a placement preference, spread=node.labels.KEY (repeatable)
    #[arg(long = "placement-pref-add", value_name = "PREF")]
    pub placement_pref_add: Vec<String>,
    /// Remove a placement preference, spread=node.labels.KEY (repeatable)
    #[arg(long = "placement-pref-rm", value_name = "PREF")]
    pub placement_pref_rm: Vec<String>,
    /// Add a secret, as --secret of create (repeatable)
    #[arg(long = "secret-add", value_name = "SPEC")]
    pub secret_add: Vec<String>,
    /// Remove a secret, by name or ID (repeatable)
    #[arg(long = "secret-rm", value_name = "SECRET")]
    pub secret_rm: Vec<String>,
    /// Add a config, as --config of create (repeatable)
    #[arg(long = "config-add", value_name = "SPEC")]
    pub config_add: Vec<String>,
    /// Remove a config, by name or ID (repeatable)
    #[arg(long = "config-rm", value_name = "CONFIG")]
    pub config_rm: Vec<String>,
    /// Add or replace a mount, as --mount of create (repeatable)
    #[arg(long = "mount-add", value_name = "SPEC")]
    pub mount_add: Vec<String>,
    /// Remove a mount by its target path (repeatable)
    #[arg(long = "mount-rm", value_name = "TARGET")]
    pub mount_rm: Vec<String>,
    /// Mount the container's root filesystem read-only (--read-only=false: writable)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub read_only: Option<bool>,
    /// Limit each task's CPUs (0: no limit)
    #[arg(long, value_name = "CPUS")]
    pub limit_cpu: Option<String>,
    /// Limit each task's memory (0: no limit)
    #[arg(long, value_name = "BYTES")]
    pub limit_memory: Option<String>,
    /// Limit the processes of each task (0: no limit)
    #[arg(long, value_name = "N")]
    pub limit_pids: Option<u64>,
    /// Reserve CPUs for each task on its node (0: no reservation)
    #[arg(long, value_name = "CPUS")]
    pub reserve_cpu: Option<String>,
    /// Reserve memory for each task on its node (0: no reservation)
    #[arg(long, value_name = "BYTES")]
    pub reserve_memory: Option<String>,
    /// Add a Linux capability (and take it off the dropped ones)
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability (and take it off the added ones)
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Add or replace a ulimit, NAME=SOFT[:HARD] (repeatable)
    #[arg(long = "ulimit-add", value_name = "ULIMIT")]
    pub ulimit_add: Vec<String>,
    /// Remove a ulimit by name (repeatable)
    #[arg(long = "ulimit-rm", value_name = "NAME")]
    pub ulimit_rm: Vec<String>,
    /// Add or replace a kernel parameter, K=V (repeatable)
    #[arg(long = "sysctl-add", value_name = "K=V")]
    pub sysctl_add: Vec<String>,
    /// Remove a kernel parameter by name (repeatable)
    #[arg(long = "sysctl-rm", value_name = "K")]
    pub sysctl_rm: Vec<String>,
    /// Run each task container privileged (--privileged=false: not)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub privileged: Option<bool>,
    /// Add or replace a host device (the same path in the container replaces it), as
    /// --device of create (repeatable)
    #[arg(long = "device-add", value_name = "DEVICE")]
    pub device_add: Vec<String>,
    /// Remove a device by its path in the container (repeatable)
    #[arg(long = "device-rm", value_name = "PATH_IN_CONTAINER")]
    pub device_rm: Vec<String>,
    /// How the service's name resolves: a VIP, or DNS round robin
    #[arg(long, value_enum)]
    pub endpoint_mode: Option<EndpointModeArg>,
    /// Overwrite the image's entrypoint ("": the image's again)
    #[arg(long, value_name = "CMD", allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Container hostname (a template, as for create)
    #[arg(long, value_name = "TEMPLATE")]
    pub hostname: Option<String>,
    /// Add a resolver (repeatable)
    #[arg(long = "dns-add", value_name = "IP")]
    pub dns_add: Vec<String>,
    /// Remove a resolver (repeatable)
    #[arg(long = "dns-rm", value_name = "IP")]
    pub dns_rm: Vec<String>,
    /// Add a resolv.conf option (repeatable)
    #[arg(long = "dns-option-add", value_name = "OPTION")]
    pub dns_option_add: Vec<String>,
    /// Remove a resolv.conf option (repeatable)
    #[arg(long = "dns-option-rm", value_name = "OPTION")]
    pub dns_option_rm: Vec<String>,
    /// Add a DNS search domain (repeatable)
    #[arg(long = "dns-search-add", value_name = "DOMAIN")]
    pub dns_search_add: Vec<String>,
    /// Remove a DNS search domain (repeatable)
    #[arg(long = "dns-search-rm", value_name = "DOMAIN")]
    pub dns_search_rm: Vec<String>,
    /// Add an /etc/hosts entry HOST:IP (repeatable)
    #[arg(long = "host-add", value_name = "HOST:IP")]
    pub host_add: Vec<String>,
    /// Remove /etc/hosts entries: HOST (all of it) or HOST:IP (repeatable)
    #[arg(long = "host-rm", value_name = "HOST[:IP]")]
    pub host_rm: Vec<String>,
    /// Run an init process in each container (--init=false: none)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub init: Option<bool>,
    /// Signal that stops a container
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Add or change a container label K=V (repeatable)
    #[arg(long = "container-label-add", value_name = "K=V", value_parser = parse_label)]
    pub container_label_add: Vec<(String, String)>,
    /// Remove a container label (repeatable)
    #[arg(long = "container-label-rm", value_name = "K")]
    pub container_label_rm: Vec<String>,
    #[command(flatten)]
    pub health: HealthArgs,
    #[command(flatten)]
    pub restart: RestartArgs,
    /// Time to wait before force killing a container
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub stop_grace_period: Option<String>,
    #[command(flatten)]
    pub update_policy: UpdatePolicyArgs,
    #[command(flatten)]
    pub rollback_policy: RollbackPolicyArgs,
    /// Send the registry credentials of your docker config (for the service's image)
    /// to the nodes that pull
    #[arg(long)]
    pub with_registry_auth: bool,
    /// Do not pin the new image's tag to its digest
    #[arg(long)]
    pub no_resolve_image: bool,
    /// Exit at once instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct ServiceRollbackArgs {
    /// Exit at once instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

pub(crate) fn state(client: &Client, services: Vec<String>) -> Result<ServiceStateView, CliError> {
    match call(client, &Request::ServiceState { services })? {
        Reply::ServiceState(v) => Ok(*v),
        _ => Err(CliError::Output(
            "unexpected reply to a service query".into(),
        )),
    }
}

/// Sends an update (or rollback) of `service`, prints its name, and unless `detach`
/// waits for the service to converge.
fn update(
    client: &Client,
    service: &str,
    request: &Request,
    detach: bool,
    warnings: &mut Vec<String>,
) -> Result<String, CliError> {
    let since = shoal_orchestrator::scheduler::now_ms().saturating_sub(5000);
    if let Reply::ServicesChanged { warnings: w, .. } = call(client, request)? {
        warnings.extend(w);
    }
    println!("{service}");
    if detach {
        Ok(String::new())
    } else {
        wait_converged(client, &[service.to_owned()], since)
    }
}

/// Runs `shoal service ...` against the agent.
pub fn run_service(args: &ServiceArgs) -> Result<Output, CliError> {
    let client = Client::new(&args.socket.api_socket);
    let mut warnings = Vec::new();
    let stdout = match &args.command {
        ServiceCommand::Create(a) => {
            let spec = a.spec().map_err(CliError::Usage)?;
            let registry_auth = a
                .with_registry_auth
                .then(|| credentials_for(&spec.image).map(Box::new))
                .transpose()
                .map_err(CliError::Usage)?;
            let since = shoal_orchestrator::scheduler::now_ms().saturating_sub(5000);
            let reply = call(
                &client,
                &Request::ServiceCreate {
                    spec: Box::new(spec),
                    no_resolve_image: a.no_resolve_image,
                    registry_auth,
                },
            )?;
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
            let filters =
                filters::from_args(&a.filters, filters::SERVICE_KEYS).map_err(CliError::Usage)?;
            let view = state(&client, Vec::new())?;
            service_ls(a, &filters, &view).map_err(CliError::Output)?
        }
        ServiceCommand::Ps(a) => {
            let filters = a.tasks.check().map_err(CliError::Usage)?;
            let view = state(&client, a.services.clone())?;
            task_list(&a.tasks, &filters, &view).map_err(CliError::Output)?
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
                    .map(|s| inspect_pretty(s, &view.networks, view.now_ms))
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
            let Reply::ServicesChanged { services, .. } = reply else {
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
                Reply::ServicesChanged { services, .. } => {
                    services.iter().map(|s| format!("{s}\n")).collect()
                }
                _ => return Err(CliError::Output("unexpected reply to service rm".into())),
            }
        }
        ServiceCommand::Update(a) => {
            let changes = a.changes().map_err(CliError::Usage)?;
            let registry_auth = if a.with_registry_auth {
                let image = match &a.image {
                    Some(image) => image.clone(),
                    None => state(&client, vec![a.service.clone()])?
                        .services
                        .first()
                        .map(|s| s.spec.image.clone())
                        .ok_or_else(|| {
                            CliError::Output(format!("service {} not found", a.service))
                        })?,
                };
                Some(Box::new(credentials_for(&image).map_err(CliError::Usage)?))
            } else {
                None
            };
            let request = Request::ServiceUpdate {
                service: a.service.clone(),
                changes: Box::new(changes),
                no_resolve_image: a.no_resolve_image,
                registry_auth,
            };
            update(&client, &a.service, &request, a.detach, &mut warnings)?
        }
        ServiceCommand::Rollback(a) => {
            let request = Request::ServiceUpdate {
                service: a.service.clone(),
                changes: Box::new(ServiceChanges {
                    rollback: true,
                    ..Default::default()
                }),
                no_resolve_image: false,
                registry_auth: None,
            };
            update(&client, &a.service, &request, a.detach, &mut warnings)?
        }
        ServiceCommand::Logs(a) => logs::run(&client, a, &mut warnings)?,
    };
    Ok(Output { stdout, warnings })
}
