//! `shoal agent`: the daemon every host runs as root.
//!
//! Start-up: prepare the pin directory, load the underlay XDP program (its stats map
//! pinned, so counters survive restarts) and attach it to the underlay interface;
//! connect to the node's dockerd and start the one event watch; start the declared-
//! state pipeline and the dataplane's reconcilers following it ([`dataplane`]); resume
//! the cluster role (its executor is the pipeline's source), or, in the standalone
//! mode, follow the declared-state files ([`files`]); serve the CLI's API; publish
//! `agent.json`. Then, until SIGTERM or SIGINT, log the counters if asked to.
//! Shutdown: remove `agent.json`. The program stays attached through its pinned link
//! (the next agent swaps its own in), and the pinned maps and the overlay stay, so a
//! restarted agent changes nothing that works; `shoal agent cleanup` ([`cleanup`])
//! removes it all once the agent is stopped. The sysctls the dataplane changes are
//! journaled in `<data_dir>/sysctl-restore.json` first, so cleanup can restore them.
//!
//! ```text
//!  executor (store view + gossip)  ─┐                      ┌─▶ overlay ─ present networks ─┐
//!  or --declared-* files (files.rs) ─┴─▶ pipeline ─watch──▶├─▶ service VIPs     ◀───────────┤
//!             dockerd events (one watch) ──┘  (containers' ├─▶ routing mesh     ◀───────────┤
//!                                              namespaces) ├─▶ task egress                  │
//!                                                          └─▶ DNS listeners    ◀───────────┘
//! ```
pub mod cleanup;
mod dataplane;
mod files;
mod metrics;
mod traffic;
pub mod validate;
mod web;

use std::{fmt, fs, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use shoal::{
    api::server as api_server,
    cluster_agent::{ClusterAgent, ClusterAgentConfig, EngineSource, NodeLinks},
};
use shoal_dataplane::{
    bpffs,
    egress::EgressParams,
    underlay::{UnderlayProgram, UnderlayStats},
};
use shoal_orchestrator::{docker::DockerClient, events::DockerEvents, pipeline::Pipeline};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
    time::{interval_at, Instant, Interval, MissedTickBehavior},
};
use tracing::{info, warn};

use crate::{config::AgentConfig, status::AgentStatus};

/// The tmpfs of tasks' secrets and configs, in the agent's run directory.
pub(crate) const TASK_FILES_DIR: &str = "task-files";
/// Why a standalone agent refuses `swarm init` and `swarm join`.
const STANDALONE_NO_SWARM: &str = "this agent applies --declared-* files (standalone mode), so a swarm's services would get no network on this node: restart it without those flags to init or join a swarm";

/// How long the agent waits for the node's dockerd at start before going on without it.
const DOCKER_WAIT: Duration = Duration::from_secs(5);
/// How long one request to dockerd may take.
const DOCKER_TIMEOUT: Duration = shoal_orchestrator::docker::DEFAULT_TIMEOUT;
/// The async runtime's worker threads.
const AGENT_THREADS: usize = 2;
/// How often the reconcilers' threads are checked.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: AgentConfig) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!("the agent must run as root (it loads eBPF programs and attaches XDP); running as uid {euid}");
    }
    // Two threads for the agent's own work (the reconcilers and the resolver have
    // threads of their own): Raft's heartbeats, votes and appends must not wait behind
    // a busy or blocking task (serializing a state for a node, a Docker call, a read
    // of a big file), and on a starved machine two runnable threads get twice one's
    // share of the CPU.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(AGENT_THREADS)
        .thread_name("shoal-agent")
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(config))
}

async fn serve(config: AgentConfig) -> Result<()> {
    // Installed first, so a signal during start-up becomes a clean shutdown after it.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let interface = config.underlay_interface.as_str();
    bpffs::prepare_pin_dir(&config.pin_dir)?;
    // Owner-only: it holds the cluster's secrets (sealed, but still only root's) and
    // the node's state. An older agent's looser modes are narrowed here.
    shoal_cluster::private_fs::create_dir(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let narrowed = shoal_cluster::private_fs::tighten(&config.data_dir)
        .with_context(|| format!("making {} owner-only", config.data_dir.display()))?;
    if narrowed > 0 {
        info!(data_dir = %config.data_dir.display(), narrowed, "made the data directory owner-only");
    }

    let mut program = UnderlayProgram::load_pinned_with(&config.pin_dir, config.lb_flows)?;
    let mode = program.attach_pinned(interface, &config.pin_dir)?;

    let docker = connect_docker(&config).await?;
    let events = DockerEvents::start(&docker);

    // The pipeline: a source's intent in, the node's declared state out.
    let (intent_tx, intent_rx) = watch::channel(None);
    let intent_tx = Arc::new(intent_tx);
    let (declared_tx, declared_rx) = watch::channel(None);
    // Which nodes this one reaches, by gossip's own probes: the pipeline drains the
    // backends of those it does not.
    let (reach_tx, reach_rx) = watch::channel(Arc::default());
    let pipeline = tokio::spawn(
        Pipeline::new(
            docker.clone(),
            declared_tx,
            Some(config.data_dir.join("declared")),
        )
        .with_reachability(Some(reach_rx))
        .run(intent_rx, events.subscribe()),
    );
    // Before the status file: an agent that cannot run its dataplane is not up.
    let mut dataplane = dataplane::Dataplane::start(&config, declared_rx).await?;
    // Bound before the cluster role starts: a taken port stops the agent with the reason.
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let web_listener = match config.web {
        Some(web) => web::bind(web).await?,
        None => None,
    };
    let (report_tx, report_rx) = shoal_orchestrator::node_report::channel();

    let (links, files) = match &config.standalone {
        Some(f) => {
            let files = tokio::spawn(files::follow(f.clone(), intent_tx.clone()));
            // The executor's state goes nowhere: the files say what this node holds.
            (
                NodeLinks {
                    events: events.clone(),
                    ..NodeLinks::detached()
                },
                Some(files),
            )
        }
        None => (
            NodeLinks {
                events: events.clone(),
                intent: intent_tx.clone(),
                ready: Some(dataplane.readiness()),
                egress_dns: EgressParams::new(config.egress_subnet, 0)
                    .ok()
                    .map(|p| p.gateway),
                report: Some(report_tx),
                wireguard_key: Some(dataplane.wireguard_public_key()),
                reach: Some(Arc::new(reach_tx)),
            },
            None,
        ),
    };
    drop(intent_tx);

    // The cluster role this node had (resumed from <data_dir>/cluster/), and the API
    // the CLI reaches it through.
    let cluster = ClusterAgent::start(ClusterAgentConfig {
        data_dir: config.data_dir.clone(),
        listen: config.cluster_listen,
        underlay_interface: Some(config.underlay_interface.clone()),
        advertise_addr: config.advertise_addr.map(Into::into),
        data_path_port: config.data_path_port,
        engine: EngineSource::Docker(config.docker_socket.clone()),
        hostname: None,
        timings: None,
        node: Some(links),
        gossip_listen: Some(config.gossip_listen),
        no_swarm: config
            .standalone
            .as_ref()
            .map(|_| STANDALONE_NO_SWARM.to_owned()),
        dataplane: Some(format!("XDP {mode} on {interface}")),
        // Beside the namespaces, in the agent's run directory (/run/shoal by default),
        // not in its data directory: nothing of a secret is ever among the node's files.
        task_files_dir: config
            .netns_dir
            .parent()
            .map(|run| run.join(TASK_FILES_DIR)),
    })
    .await
    .context("starting the cluster role")?;
    if config.standalone.is_some() && cluster.role_name().await != "none" {
        cluster.shutdown().await;
        bail!("this node is in a swarm, so its dataplane must follow the cluster: --declared-state, --declared-dns and --declared-lb are for standalone use only (start the agent without them, or leave the swarm first)");
    }
    let api_socket = api_server::bind(&config.api_socket)?;
    let api = tokio::spawn(api_server::serve(api_socket, cluster.clone()));
    let engine_socket = api_server::bind_with(
        &config.engine_api_socket,
        0o660,
        shoal::engine_api::docker_group(),
    )?;
    let engine_api = tokio::spawn(shoal::engine_api::serve(
        engine_socket,
        cluster.clone(),
        config.docker_socket.clone(),
        Some(dataplane.readiness()),
    ));
    let metrics_server = metrics_listener.map(|listener| {
        let sources = metrics::Sources {
            pin_dir: config.pin_dir.clone(),
            reconcilers: dataplane.reconcile_stats(),
            dns: dataplane.dns_stats(),
            node: report_rx,
            cluster: cluster.clone(),
            last_role: std::sync::Mutex::new("none"),
        };
        tokio::spawn(metrics::serve(listener, Arc::new(sources)))
    });
    let traffic = tokio::spawn(traffic::run(config.pin_dir.clone(), cluster.clone()));
    let web_server =
        web_listener.map(|listener| tokio::spawn(web::serve(listener, cluster.clone())));
    info!(role = cluster.role_name().await, api_socket = %config.api_socket.display(), "cluster role ready");

    let status = AgentStatus {
        pid: std::process::id(),
        underlay_interface: interface.to_owned(),
        xdp_mode: mode.to_string(),
        pin_dir: config.pin_dir.clone(),
    };
    let status_path = status
        .write(&config.data_dir)
        .with_context(|| format!("writing the status file in {}", config.data_dir.display()))?;
    info!(
        pid = status.pid,
        interface,
        xdp_mode = %mode,
        pin_dir = %config.pin_dir.display(),
        status_file = %status_path.display(),
        "agent started"
    );

    let mut stats_timer = config.stats_interval.map(timer);
    let mut check = timer(CHECK_EVERY);
    let signal_name = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            () = tick(&mut stats_timer) => log_stats(&program),
            _ = check.tick() => dataplane.check_alive(),
        }
    };
    info!(signal = signal_name, "shutting down");
    // No new requests; the role stops cleanly (a restart resumes it).
    api.abort();
    let _ = api.await;
    engine_api.abort();
    let _ = engine_api.await;
    traffic.abort();
    let _ = traffic.await;
    if let Some(w) = web_server {
        w.abort();
        let _ = w.await;
    }
    if let Some(m) = metrics_server {
        m.abort();
        let _ = m.await;
    }
    cluster.shutdown().await;
    if let Some(f) = files {
        f.abort();
    }
    pipeline.abort();
    dataplane.stop();
    drop(program);
    info!(
        interface,
        "underlay XDP program stays attached through its pinned link (the next agent takes it over)"
    );
    if let Err(e) = fs::remove_file(&status_path) {
        warn!(path = %status_path.display(), error = %e, "could not remove the status file");
    }
    info!("agent stopped");
    Ok(())
}

/// The node's dockerd, waited for up to [`DOCKER_WAIT`] (it may be starting with the
/// agent): the executor runs tasks on it and the pipeline finds containers through it.
/// A dockerd still down after that does not stop the agent: the rest of the node
/// (gossip, DNS, the mesh, the cluster role) works without it, and the event watch
/// picks dockerd up when it comes (`shoal info` says it is unreachable until then).
async fn connect_docker(config: &AgentConfig) -> Result<DockerClient> {
    let socket = &config.docker_socket;
    let start = Instant::now();
    loop {
        match DockerClient::connect(socket).await {
            Ok(d) => return Ok(d),
            Err(e) if start.elapsed() >= DOCKER_WAIT => {
                warn!(
                    socket = %socket.display(), error = %e, waited_s = DOCKER_WAIT.as_secs(),
                    "the node's dockerd is unreachable; going on without it until it answers"
                );
                return DockerClient::unreached(socket, DOCKER_TIMEOUT)
                    .with_context(|| format!("dockerd socket {}", socket.display()));
            }
            Err(e) => {
                warn!(socket = %socket.display(), error = %e, "waiting for the node's dockerd");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn timer(period: Duration) -> Interval {
    let mut timer = interval_at(Instant::now() + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// The next tick of `timer`; never, if there is none.
async fn tick(timer: &mut Option<Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn log_stats(program: &UnderlayProgram) {
    match program.stats() {
        Ok(stats) => info!(counters = %Counters(&stats), "underlay stats"),
        Err(e) => warn!(error = %e, "reading underlay stats"),
    }
}

/// `name=value` for every counter, space-separated.
struct Counters<'a>(&'a UnderlayStats);

impl fmt::Display for Counters<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (counter, value)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{}={value}", counter.name())?;
        }
        Ok(())
    }
}
