//! `shoal`: the node agent and the command-line tool of shoal.
//!
//! Module map:
//! - `main.rs` (this file): command-line parsing, logging set-up, dispatch, and turning
//!   an error into one line on stderr and a non-zero exit status.
//! - [`config`]: the agent's settings: TOML file and flags, merged, defaulted, checked.
//! - [`agent`]: `shoal agent`, the daemon on every host: attaches the underlay XDP
//!   program, runs the declared-state pipeline and the dataplane's reconcilers, the
//!   cluster role and its API, publishes its status, shuts down on SIGTERM/SIGINT.
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
use shoal::cli::{self, network::NetworkArgs, service::ServiceArgs, NodeArgs, SwarmArgs};
use shoal_dataplane::bpffs::DEFAULT_PIN_DIR;
use tracing_subscriber::{filter::LevelFilter, EnvFilter};

use crate::config::{AgentConfig, Settings};

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
    /// Manage services (create, ls, ps, inspect, scale, rm, update, logs)
    Service(ServiceArgs),
    /// Manage overlay networks (create, ls, inspect, rm)
    Network(NetworkArgs),
    /// Inspect this node's dataplane
    #[command(subcommand)]
    Dataplane(DataplaneCommand),
}

#[derive(Args)]
struct AgentArgs {
    /// TOML config file; flags override its values
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration, print it, and exit
    #[arg(long)]
    validate: bool,
    #[command(flatten)]
    settings: Settings,
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
    let config = AgentConfig::load(args.config.as_deref(), args.settings)?;
    if args.validate {
        let interval = config.stats_interval.map_or(0, |d| d.as_secs());
        println!(
            "config ok: underlay_interface={} pin_dir={} data_dir={} stats_interval_secs={interval} api_socket={} cluster_listen={}",
            config.underlay_interface,
            config.pin_dir.display(),
            config.data_dir.display(),
            config.api_socket.display(),
            config.cluster_listen,
        );
        return Ok(());
    }
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
    fn one_line_skips_repeated_causes() {
        let inner = std::io::Error::other("disk on fire");
        let outer = anyhow::Error::new(inner).context("writing x: disk on fire");
        assert_eq!(
            one_line(&outer.context("starting")),
            "starting: writing x: disk on fire"
        );
    }
}
