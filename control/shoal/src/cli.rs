//! `shoal swarm ...` and `shoal node ...`: the docker CLI's forms, turned into requests
//! to the local agent ([`crate::api`]) and their answers into Docker's output.
//!
//! - this file: the arguments (clap), building the [`Request`], running a command.
//! - [`format`]: the output (join instructions, the `node ls` table, `inspect`); `node
//!   ls -f` and `node ps` use [`crate::filters`] and the task list of `service ps`.
//! - [`template`]: `--format`'s Go-template subset.
//! - [`service`] and [`network`]: `shoal service ...` and `shoal network ...`.
//! - [`ca`]: `shoal swarm ca [--rotate]` (it follows a rotation until it is over).

pub mod ca;
pub mod data_object;
pub mod format;
pub mod info;
pub mod network;
pub mod registry_auth;
pub mod service;
pub mod stack;
pub mod template;
pub mod unlock_key;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use ipnet::Ipv4Net;

use crate::api::{
    client::{Client, ClientError},
    Availability, NodeRole, NodeView, Reply, Request, Secret, DEFAULT_API_SOCKET,
};

/// The agent's API socket, on every CLI command.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ApiSocketArg {
    /// The local agent's API socket (`lab exec` sets SHOAL_API_SOCKET to the host's)
    #[arg(
        long,
        value_name = "PATH",
        env = "SHOAL_API_SOCKET",
        default_value = DEFAULT_API_SOCKET,
        global = true
    )]
    pub api_socket: PathBuf,
}

/// `shoal swarm ...`
#[derive(Args, Debug, Clone, PartialEq)]
pub struct SwarmArgs {
    #[command(flatten)]
    pub socket: ApiSocketArg,
    #[command(subcommand)]
    pub command: SwarmCommand,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum SwarmCommand {
    /// Initialize a swarm: this node becomes its first manager
    Init(InitArgs),
    /// Join a swarm as a worker or a manager (the token says which)
    Join(JoinArgs),
    /// Print (or rotate) the token to join as a worker or a manager
    JoinToken(JoinTokenArgs),
    /// Leave the swarm
    Leave(LeaveArgs),
    /// Change the swarm's settings (autolock)
    Update(SwarmUpdateArgs),
    /// Unlock a manager that restarted with autolock on (the key is read from the
    /// terminal, or from stdin)
    Unlock,
    /// Print (or rotate) the key that unlocks a restarted manager
    UnlockKey(UnlockKeyArgs),
    /// Print the swarm's root CA certificate, or rotate it (--rotate)
    Ca(ca::CaArgs),
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct InitArgs {
    /// Address other nodes reach this manager at: IP, IP:PORT or interface name
    /// [default: the underlay interface's IPv4]
    #[arg(long, value_name = "ADDR")]
    pub advertise_addr: Option<String>,
    /// Listen address for the managers' traffic, ADDR[:PORT] [default: 0.0.0.0:2377]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen_addr: Option<String>,
    /// Address or interface of this node's overlay (VXLAN) traffic, when it is not the
    /// advertise address's [default: the advertise address]
    #[arg(long, value_name = "ADDR|IF")]
    pub data_path_addr: Option<String>,
    /// UDP port of the VXLAN data path, which every node of the swarm follows
    /// [default: the agent's --data-path-port, 4789]
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub data_path_port: Option<u16>,
    /// Address pool(s) networks' subnets are taken from (repeatable)
    /// [default: 10.0.0.0/8]
    #[arg(long = "default-addr-pool", value_name = "CIDR")]
    pub default_addr_pool: Vec<Ipv4Net>,
    /// Prefix length of the subnets taken from the pools [default: 24]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=30))]
    pub default_addr_pool_mask_length: Option<u8>,
    /// Keep the managers' swarm data locked after a restart until `shoal swarm unlock`
    /// gives the unlock key (printed now)
    #[arg(long)]
    pub autolock: bool,
    /// On a manager of a swarm that lost its majority for good: make this node the only
    /// manager, keeping the swarm's state (nodes, services, secrets, tokens)
    #[arg(long)]
    pub force_new_cluster: bool,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct SwarmUpdateArgs {
    /// Lock managers after a restart until `shoal swarm unlock` (`--autolock=false`
    /// turns it off)
    #[arg(
        long,
        value_name = "true|false",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub autolock: Option<bool>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct UnlockKeyArgs {
    /// Only print the key
    #[arg(short, long)]
    pub quiet: bool,
    /// Replace the key: managers no longer unlock with the old one
    #[arg(long)]
    pub rotate: bool,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct JoinArgs {
    /// The join token (`shoal swarm join-token worker|manager` on a manager prints it)
    #[arg(long, value_name = "TOKEN")]
    pub token: String,
    /// Address other nodes reach this node at: IP, IP:PORT or interface name
    #[arg(long, value_name = "ADDR")]
    pub advertise_addr: Option<String>,
    /// Listen address for the managers' traffic, if this node joins as a manager
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen_addr: Option<String>,
    /// Address or interface of this node's overlay (VXLAN) traffic, when it is not the
    /// advertise address's [default: the advertise address]
    #[arg(long, value_name = "ADDR|IF")]
    pub data_path_addr: Option<String>,
    /// A manager of the swarm, HOST[:PORT] (port 2377 if not given)
    #[arg(value_name = "HOST:PORT")]
    pub remote: String,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct JoinTokenArgs {
    /// Only print the token
    #[arg(short, long)]
    pub quiet: bool,
    /// Replace the token: the old one no longer lets nodes join
    #[arg(long)]
    pub rotate: bool,
    /// Which token
    #[arg(value_enum, value_name = "worker|manager")]
    pub role: NodeRole,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct LeaveArgs {
    /// Leave even as a manager (the last manager leaving ends the swarm)
    #[arg(short, long)]
    pub force: bool,
}

/// `shoal node ...`
#[derive(Args, Debug, Clone, PartialEq)]
pub struct NodeArgs {
    #[command(flatten)]
    pub socket: ApiSocketArg,
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum NodeCommand {
    /// List the swarm's nodes
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show nodes in detail (JSON unless --pretty)
    Inspect(InspectArgs),
    /// Remove nodes from the swarm
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Make workers managers
    Promote(NodesArgs),
    /// Make managers workers
    Demote(NodesArgs),
    /// Change a node's availability or labels
    Update(UpdateArgs),
    /// List the tasks on nodes (this node by default), with their history
    Ps(NodePsArgs),
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct NodePsArgs {
    #[command(flatten)]
    pub tasks: service::TaskListArgs,
    /// ID, unique ID prefix or hostname; `self` is this node [default: self]
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct LsArgs {
    /// Only print IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// `json`, `table TEMPLATE` or a Go template such as '{{.ID}}\t{{.Hostname}}'
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Filter (repeatable): id=ID, membership=accepted|pending, name=HOSTNAME,
    /// node.label=KEY[=VALUE], role=manager|worker
    #[arg(short, long = "filter", value_name = "K=V")]
    pub filters: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct InspectArgs {
    /// Human-readable output instead of JSON
    #[arg(long)]
    pub pretty: bool,
    /// `json` or a Go template such as '{{.Description.Hostname}}'
    #[arg(short, long, value_name = "FORMAT", conflicts_with = "pretty")]
    pub format: Option<String>,
    /// ID, unique ID prefix or hostname; `self` is this node
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct RmArgs {
    /// Remove even a node that is not Down
    #[arg(short, long)]
    pub force: bool,
    /// ID, unique ID prefix or hostname
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct NodesArgs {
    /// ID, unique ID prefix or hostname
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct UpdateArgs {
    /// Whether tasks may be placed on the node
    #[arg(long, value_enum)]
    pub availability: Option<AvailabilityArg>,
    /// Add or change a label, KEY=VALUE (repeatable)
    #[arg(long = "label-add", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub label_add: Vec<(String, String)>,
    /// Remove a label (repeatable)
    #[arg(long = "label-rm", value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// Give the node a new WireGuard key (encrypted overlay networks); traffic keeps
    /// flowing while every other node learns it
    #[arg(long = "rotate-wireguard-key")]
    pub rotate_wireguard_key: bool,
    /// ID, unique ID prefix or hostname
    #[arg(value_name = "NODE")]
    pub node: String,
}

/// `--availability` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AvailabilityArg {
    Active,
    Pause,
    Drain,
}

impl From<AvailabilityArg> for Availability {
    fn from(a: AvailabilityArg) -> Self {
        match a {
            AvailabilityArg::Active => Availability::Active,
            AvailabilityArg::Pause => Availability::Pause,
            AvailabilityArg::Drain => Availability::Drain,
        }
    }
}

/// `KEY=VALUE` or `KEY` (empty value), as Docker takes labels.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').unwrap_or((text, ""));
    if key.is_empty() {
        return Err(format!("invalid label {text:?}: the key is empty"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Checks a HOST[:PORT] early, so a typo fails before the agent is asked.
fn check_remote(remote: &str) -> Result<(), String> {
    if remote.is_empty() {
        return Err("the manager address is empty".into());
    }
    if remote.parse::<SocketAddr>().is_ok() || remote.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    match remote.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        Some(_) => Err(format!(
            "invalid manager address {remote:?}: expected HOST:PORT"
        )),
        None => Ok(()),
    }
}

impl SwarmCommand {
    /// The request this command sends (`swarm unlock` reads its key first).
    pub fn request(&self) -> Result<Request, String> {
        Ok(match self {
            SwarmCommand::Init(a) => Request::SwarmInit {
                advertise_addr: a.advertise_addr.clone(),
                listen_addr: a.listen_addr.clone(),
                data_path_addr: a.data_path_addr.clone(),
                data_path_port: a.data_path_port,
                default_addr_pool: a.default_addr_pool.clone(),
                default_addr_pool_mask_length: a.default_addr_pool_mask_length,
                autolock: a.autolock,
                force_new_cluster: a.force_new_cluster,
            },
            SwarmCommand::Join(a) => {
                check_remote(&a.remote)?;
                Request::SwarmJoin {
                    token: Secret::new(a.token.trim()),
                    remote: a.remote.clone(),
                    advertise_addr: a.advertise_addr.clone(),
                    listen_addr: a.listen_addr.clone(),
                    data_path_addr: a.data_path_addr.clone(),
                }
            }
            SwarmCommand::JoinToken(a) => Request::JoinToken {
                role: a.role,
                rotate: a.rotate,
            },
            SwarmCommand::Leave(a) => Request::SwarmLeave { force: a.force },
            SwarmCommand::Update(a) => Request::SwarmUpdate {
                autolock: a.autolock,
            },
            SwarmCommand::Unlock => unlock_key::request()?,
            SwarmCommand::UnlockKey(a) => Request::UnlockKey { rotate: a.rotate },
            SwarmCommand::Ca(a) => {
                a.check()?;
                a.request()
            }
        })
    }
}

impl NodeCommand {
    /// A malformed `--format` or `--filter` is refused before the agent is asked.
    pub fn check_format(&self) -> Result<(), String> {
        match self {
            NodeCommand::Ls(a) => {
                template::Format::parse(a.format.as_deref())?;
                crate::filters::from_args(&a.filters, crate::filters::NODE_KEYS).map(drop)
            }
            NodeCommand::Ps(a) => a.tasks.check().map(drop),
            NodeCommand::Inspect(InspectArgs {
                format: Some(f), ..
            }) if f != "json" => template::Template::parse(&template::unescape(f)).map(drop),
            _ => Ok(()),
        }
    }

    /// The request this command sends.
    pub fn request(&self) -> Request {
        match self {
            NodeCommand::Ls(_) => Request::NodeLs,
            NodeCommand::Ps(a) => Request::NodeInspect {
                nodes: if a.nodes.is_empty() {
                    vec!["self".to_owned()]
                } else {
                    a.nodes.clone()
                },
            },
            NodeCommand::Inspect(a) => Request::NodeInspect {
                nodes: a.nodes.clone(),
            },
            NodeCommand::Rm(a) => Request::NodeRm {
                nodes: a.nodes.clone(),
                force: a.force,
            },
            NodeCommand::Promote(a) => Request::NodePromote {
                nodes: a.nodes.clone(),
            },
            NodeCommand::Demote(a) => Request::NodeDemote {
                nodes: a.nodes.clone(),
            },
            NodeCommand::Update(a) => Request::NodeUpdate {
                node: a.node.clone(),
                availability: a.availability.map(Into::into),
                label_add: a.label_add.iter().cloned().collect::<BTreeMap<_, _>>(),
                label_rm: a.label_rm.clone(),
                rotate_wireguard_key: a.rotate_wireguard_key,
            },
        }
    }
}

/// What went wrong running a CLI command; one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Output(String),
}

/// What a CLI command prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    /// For stderr, each after `WARNING: `.
    pub warnings: Vec<String>,
}

/// Sends one request to the agent (`service` and `network` commands).
pub(crate) fn call(client: &Client, request: &Request) -> Result<Reply, CliError> {
    Ok(client.call(request)?)
}

/// Runs `shoal swarm ...` against the agent.
pub fn run_swarm(args: &SwarmArgs) -> Result<Output, CliError> {
    if let SwarmCommand::Ca(a) = &args.command {
        return ca::run(&args.socket.api_socket, a);
    }
    let request = args.command.request().map_err(CliError::Usage)?;
    let reply = Client::new(&args.socket.api_socket).call(&request)?;
    Ok(Output {
        stdout: format::swarm(&args.command, &reply).map_err(CliError::Output)?,
        warnings: format::warnings(&reply).to_vec(),
    })
}

/// `shoal node ps`: the tasks on `nodes` (resolved by the agent), as `service ps` lists
/// them.
fn node_ps(client: &Client, args: &NodePsArgs, nodes: &[NodeView]) -> Result<Output, CliError> {
    let filters = args.tasks.check().map_err(CliError::Usage)?;
    let mut view = match call(client, &Request::ServiceState { services: vec![] })? {
        Reply::ServiceState(view) => *view,
        _ => {
            return Err(CliError::Output(
                "unexpected reply to a service query".into(),
            ))
        }
    };
    view.tasks.retain(|t| {
        t.node_id
            .as_deref()
            .is_some_and(|id| nodes.iter().any(|n| n.id == id))
    });
    Ok(Output {
        stdout: service::task_list(&args.tasks, &filters, &view).map_err(CliError::Output)?,
        warnings: Vec::new(),
    })
}

/// Runs `shoal node ...` against the agent.
pub fn run_node(args: &NodeArgs) -> Result<Output, CliError> {
    args.command.check_format().map_err(CliError::Usage)?;
    let client = Client::new(&args.socket.api_socket);
    let reply = client.call(&args.command.request())?;
    if let (NodeCommand::Ps(a), Reply::Nodes { nodes, .. }) = (&args.command, &reply) {
        return node_ps(&client, a, nodes);
    }
    Ok(Output {
        stdout: format::node(&args.command, &reply).map_err(CliError::Output)?,
        warnings: format::warnings(&reply).to_vec(),
    })
}
