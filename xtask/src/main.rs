//! `cargo xtask`: shoal's developer tasks.
//!
//! - `setup`: install what a fresh machine lacks (idempotent).
//! - `lab up|status|exec|client|down`: the multi-host lab (see `lab/mod.rs`).
//! - `demo`: README's main job: set up, build, bring up a lab and show it working.
//! - `test`: README's test command: set up, fmt, clippy, unit, eBPF and lab tests.
//! - `bench SUITE`: benchmarks with BENCH/RATIO lines and target/bench/SUITE.json.
//! - `chaos [--scenario NAME]...`: faults on a 5-host lab under load (see `chaos/`).
//! - `soak [--minutes N]`: churn on the chaos lab with idle connections held (see `soak/`).
//! - `fuzz [--runs N] [TARGET]...`: the cargo-fuzz targets (see `fuzz.rs`).
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xtask::{bench, chaos, demo, fuzz, lab, setup, soak, testrun};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "shoal's developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything a fresh machine lacks (Debian packages, rust-src, bpf-linker,
    /// lab images). A second run changes nothing.
    Setup,
    /// The multi-host lab in network namespaces.
    Lab {
        #[command(subcommand)]
        command: LabCmd,
    },
    /// Set up, build, bring up a 3-host lab and show what runs on it.
    Demo,
    /// Set up, then run fmt, clippy, unit tests, eBPF fixture tests and lab tests.
    Test {
        /// Skip the lab tests (they need root and take minutes).
        #[arg(long)]
        no_lab: bool,
    },
    /// Run a benchmark suite against its baseline (suites: overlay, dns, cluster, gossip,
    /// gossip_lab, vip, services, update, lb, pull).
    Bench { suite: String },
    /// Scripted faults on a 5-host lab (3 managers) under constant load, each scenario
    /// checking that nothing was lost (scenarios: leader_kill, worker_kill, restart_all,
    /// partition, underlay_cut; all of them when none is named).
    Chaos {
        /// Run only this scenario (repeatable).
        #[arg(long = "scenario", value_name = "NAME")]
        scenarios: Vec<String>,
    },
    /// Build the cargo-fuzz targets (nightly) and run each for N inputs, one line per
    /// target; fails on a crash, naming the input (targets: manager_port,
    /// gossip_datagram, dns_query, compose, declared_state, ebpf_frames (root); all of
    /// them when none is named). Builds in $SHOAL_FUZZ_TARGET_DIR, else
    /// /var/tmp/shoal-fuzz-target.
    Fuzz {
        /// Inputs per target.
        #[arg(long, default_value_t = fuzz::DEFAULT_RUNS)]
        runs: u64,
        targets: Vec<String>,
    },
    /// Churn (scales, updates, a worker drained and made active) for N minutes on the
    /// chaos lab with idle connections held and a steady load; then nothing cut, lost,
    /// grown or leaked.
    Soak {
        /// How long the churn lasts, in minutes (at least 3).
        #[arg(long, default_value_t = 60)]
        minutes: u64,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Bring up N hosts with their own dockerd and a shoal agent (not yet in a cluster),
    /// plus a client namespace.
    Up {
        #[arg(long, default_value_t = 3)]
        hosts: u32,
        #[arg(long, default_value = lab::layout::DEFAULT_PREFIX)]
        prefix: String,
        /// Leave the hosts without a shoal agent.
        #[arg(long)]
        no_agent: bool,
        /// Give every host a second underlay interface, eth1 on 192.168.78.0/24, for
        /// `swarm init/join --data-path-addr eth1`.
        #[arg(long)]
        data_path_underlay: bool,
        /// Do not load the lab images into the hosts' dockerds: tasks pull them from the
        /// lab registry (preloading only saves time).
        #[arg(long)]
        no_preload: bool,
    },
    /// Show hosts, underlay addresses, docker sockets and the client.
    Status {
        #[arg(long, default_value = lab::layout::DEFAULT_PREFIX)]
        prefix: String,
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a host (DOCKER_HOST points at its dockerd).
    Exec {
        #[arg(long, default_value = lab::layout::DEFAULT_PREFIX)]
        prefix: String,
        host: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run a command in the client namespace.
    Client {
        #[arg(long, default_value = lab::layout::DEFAULT_PREFIX)]
        prefix: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove everything the lab made; fails and lists what is left if anything is.
    Down {
        #[arg(long, default_value = lab::layout::DEFAULT_PREFIX)]
        prefix: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Setup => setup::run(&setup::SetupOptions::default()).map(|_| ExitCode::SUCCESS),
        Cmd::Demo => demo::run().map(|_| ExitCode::SUCCESS),
        Cmd::Test { no_lab } => testrun::run(!no_lab),
        Cmd::Lab { command } => run_lab(command),
        Cmd::Bench { suite } => bench::run(&suite),
        Cmd::Chaos { scenarios } => chaos::run(&scenarios),
        Cmd::Fuzz { runs, targets } => fuzz::command(runs, &targets).map(|_| ExitCode::SUCCESS),
        Cmd::Soak { minutes } => soak::run(minutes),
    }
}

fn run_lab(cmd: LabCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCmd::Up {
            hosts,
            prefix,
            no_agent,
            data_path_underlay,
            no_preload,
        } => {
            let options = lab::UpOptions {
                hosts,
                preload: !no_preload,
            };
            let state = lab::up_with(&lab::Layout::new(&prefix)?, options)?;
            if data_path_underlay {
                lab::data_path::add(&state)?;
                println!(
                    "lab: every host has {} on a second underlay (192.168.78.0/24)",
                    lab::data_path::DATA_PATH_IF
                );
            }
            print!("{}", lab::describe(&state));
            if !no_agent {
                // `lab exec HOST -- shoal ...` then talks to that host's agent; plain
                // agents, as on a real host: what a node's executor declares is applied.
                let shoal = xtask::util::shoal_binary()?;
                for h in &state.hosts {
                    lab::agent::start(&state, h, &shoal, &[])?;
                    println!("lab: {}: shoal agent running", h.name);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Status { prefix, json } => {
            let state = lab::require_state(&lab::Layout::new(&prefix)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&state)?);
            } else {
                print!("{}", lab::describe(&state));
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Exec {
            prefix,
            host,
            command,
        } => {
            let state = lab::require_state(&lab::Layout::new(&prefix)?)?;
            exit_code(lab::status_of(lab::exec_command(&state, &host, &command)?)?)
        }
        LabCmd::Client { prefix, command } => {
            let state = lab::require_state(&lab::Layout::new(&prefix)?)?;
            exit_code(lab::status_of(lab::client_command(&state, &command)?)?)
        }
        LabCmd::Down { prefix } => {
            lab::down(&lab::Layout::new(&prefix)?)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> anyhow::Result<ExitCode> {
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(c.clamp(1, 255) as u8),
        None => ExitCode::FAILURE,
    })
}
