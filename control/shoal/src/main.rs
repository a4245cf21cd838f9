//! `shoal`: the node agent and the command-line tool of shoal.
//!
//! Module map:
//! - `main.rs` (this file): command-line parsing, logging set-up, dispatch, and turning
//!   an error into one line on stderr and a non-zero exit status.
//! - [`config`]: the agent's settings: TOML file and flags, merged, defaulted, checked.
//! - [`agent`]: `shoal agent`, the daemon on every host: attaches the underlay XDP
//!   program, runs the declared-state pipeline and the dataplane's reconcilers, the
//!   cluster role and its API, publishes its status, shuts down on SIGTERM/SIGINT;
//!   `--validate` checks the config and the host (`agent/validate.rs`), `cleanup`
//!   removes what the agent made on the host (`agent/cleanup.rs`).
//! - [`status`]: `<data_dir>/agent.json`, the running agent's status file.
//! - [`stats_cmd`]: `shoal dataplane stats`, prints the pinned underlay counters.
//! - `shoal::cli`: `shoal swarm ...` and `shoal node ...`, which ask the local
//!   agent over its API socket (`shoal::api`); the agent's side is
//!   `shoal::cluster_agent`.

mod agent;
mod config;
mod stats_cmd;
mod status;

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use shoal::cli::{
    self, data_object::DataObjectArgs, network::NetworkArgs, service::ServiceArgs, NodeArgs,
    SwarmArgs,
};
use shoal_dataplane::bpffs::DEFAULT_PIN_DIR;
use tracing_subscriber::{filter::LevelFilter, EnvFilter};

use crate::config::{AgentConfig, AgentPaths, Settings};

/// shoal: a container overlay network with an eBPF dataplane.
#[derive(Parser)]
#[command(name = "shoal", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent (as root, on every host)
    Agent(Box<AgentArgs>),
    /// Show this node's view of the swarm and its dataplane (Docker's `info` Swarm part)
    Info(shoal::cli::info::InfoArgs),
    /// Manage the swarm (init, join, join-token, leave)
    Swarm(SwarmArgs),
    /// Manage the swarm's nodes (ls, inspect, rm, promote, demote, update)
    Node(NodeArgs),
    /// Manage services (create, ls, ps, inspect, scale, rm, update, rollback, logs)
    Service(ServiceArgs),
    /// Manage overlay networks (create, ls, inspect, rm)
    Network(NetworkArgs),
    /// Manage secrets: data given to services' tasks as files on a tmpfs (create, ls,
    /// inspect, rm)
    Secret(DataObjectArgs),
    /// Manage configs: data given to services' tasks as files (create, ls, inspect, rm)
    Config(DataObjectArgs),
    /// Inspect this node's dataplane
    #[command(subcommand)]
    Dataplane(DataplaneCommand),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AgentArgs {
    #[command(subcommand)]
    action: Option<AgentAction>,
    /// TOML config file; flags override its values [default: /etc/shoal/agent.toml
    /// when it exists]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration and the host (root, BTF, the eBPF programs load, cgroup
    /// v2, bpffs, the underlay interface, dockerd, free ports), print each finding, and
    /// exit non-zero if anything is wrong
    #[arg(long)]
    validate: bool,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum AgentAction {
    /// Remove everything the agent made on this host (its containers, networks and
    /// their namespaces, devices, eBPF programs and pins, files) and restore the
    /// sysctls it changed; the agent must be stopped
    Cleanup(CleanupArgs),
}

#[derive(Args)]
struct CleanupArgs {
    /// Also when the node is still in a swarm (its swarm state is removed too)
    #[arg(long)]
    force: bool,
    /// The agent's TOML config file, to find what it made [default:
    /// /etc/shoal/agent.toml when it exists]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The agent's bpffs pin directory [default: /sys/fs/bpf/shoal]
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    /// The agent's data directory [default: /var/lib/shoal]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The node's dockerd socket [default: /var/run/docker.sock]
    #[arg(long, value_name = "PATH")]
    docker_socket: Option<PathBuf>,
    /// Where the agent pinned its network namespaces [default: /run/shoal/netns]
    #[arg(long, value_name = "DIR")]
    netns_dir: Option<PathBuf>,
    /// The agent's API socket [default: /run/shoal/shoal.sock]
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
}

impl CleanupArgs {
    /// The paths of the config file, overridden by these flags.
    fn paths(&self) -> anyhow::Result<AgentPaths> {
        let flags = Settings {
            pin_dir: self.pin_dir.clone(),
            data_dir: self.data_dir.clone(),
            docker_socket: self.docker_socket.clone(),
            netns_dir: self.netns_dir.clone(),
            api_socket: self.api_socket.clone(),
            ..Settings::default()
        };
        let settings = Settings::from_config_file(self.config.as_deref())?.overridden_by(flags);
        Ok(AgentPaths::resolve(&settings)?)
    }
}

#[derive(Subcommand)]
enum DataplaneCommand {
    /// Print the underlay XDP program's counters, the routing mesh's and the service
    /// VIPs' (counters, map fill) from their pinned maps
    Stats(StatsArgs),
}

#[derive(Args)]
struct StatsArgs {
    /// bpffs directory the agent pinned its maps in (`lab exec` sets SHOAL_PIN_DIR to
    /// the host's)
    #[arg(long, value_name = "DIR", env = "SHOAL_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Print one JSON object {"packets":N,...} instead of a table
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Agent(args) => run_agent(*args),
        Command::Info(args) => print_output(cli::info::run_info(&args)),
        Command::Swarm(args) => print_output(cli::run_swarm(&args)),
        Command::Node(args) => print_output(cli::run_node(&args)),
        Command::Service(args) => print_output(cli::service::run_service(&args)),
        Command::Network(args) => print_output(cli::network::run_network(&args)),
        Command::Secret(args) => print_output(cli::data_object::run_data_object(
            shoal_cluster::store::ObjectKind::Secret,
            &args,
        )),
        Command::Config(args) => print_output(cli::data_object::run_data_object(
            shoal_cluster::store::ObjectKind::Config,
            &args,
        )),
        Command::Dataplane(DataplaneCommand::Stats(args)) => {
            stats_cmd::run(&args.pin_dir, args.json)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Prints a CLI command's output (warnings first, on stderr).
fn print_output(result: Result<cli::Output, cli::CliError>) -> anyhow::Result<()> {
    let output = result?;
    for warning in &output.warnings {
        eprintln!("WARNING: {warning}");
    }
    print!("{}", output.stdout);
    Ok(())
}

fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    if let Some(AgentAction::Cleanup(cleanup)) = &args.action {
        return agent::cleanup::run(&cleanup.paths()?, cleanup.force);
    }
    if args.validate {
        return agent::validate::run(args.config.as_deref(), args.settings);
    }
    let config = AgentConfig::load(args.config.as_deref(), args.settings)?;
    agent::run(config)
}

/// Logs to stderr, filtered by RUST_LOG (default: info, openraft's own chatter at warn);
/// colours only on a terminal.
fn init_logging() {
    let filter = match std::env::var("RUST_LOG") {
        Ok(_) => EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .from_env_lossy(),
        Err(_) => EnvFilter::new("info,openraft=warn"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The error and its causes joined with ": ", skipping a cause whose text the message
/// already includes (many library errors repeat their source in their own message).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn agent_flags_reach_the_settings() {
        let cli = Cli::try_parse_from([
            "shoal",
            "agent",
            "--underlay-interface",
            "eth1",
            "--stats-interval",
            "5",
        ])
        .unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("not the agent command");
        };
        assert_eq!(args.settings.underlay_interface.as_deref(), Some("eth1"));
        assert_eq!(args.settings.stats_interval_secs, Some(5));
        assert_eq!(args.settings.pin_dir, None);
    }

    #[test]
    fn cleanup_takes_its_own_flags_and_refuses_the_agents_before_it() {
        let cli = Cli::try_parse_from([
            "shoal",
            "agent",
            "cleanup",
            "--force",
            "--pin-dir",
            "/sys/fs/bpf/x",
        ])
        .unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("not the agent command");
        };
        let Some(AgentAction::Cleanup(c)) = args.action else {
            panic!("not cleanup");
        };
        assert!(c.force);
        assert_eq!(
            c.pin_dir.as_deref(),
            Some(std::path::Path::new("/sys/fs/bpf/x"))
        );
        // A run flag before the subcommand would be silently ignored: refused.
        assert!(
            Cli::try_parse_from(["shoal", "agent", "--underlay-interface", "eth0", "cleanup"])
                .is_err()
        );
        // Cleanup takes no flag it would not use.
        assert!(Cli::try_parse_from(["shoal", "agent", "cleanup", "--lb-flows", "5"]).is_err());
    }

    #[test]
    fn one_line_skips_repeated_causes() {
        let inner = std::io::Error::other("disk on fire");
        let outer = anyhow::Error::new(inner).context("writing x: disk on fire");
        assert_eq!(
            one_line(&outer.context("starting")),
            "starting: writing x: disk on fire"
        );
    }
}
