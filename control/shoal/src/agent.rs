//! `shoal agent`: the daemon every host runs as root.
//!
//! Start-up: prepare the pin directory, load the underlay XDP program (its stats map
//! pinned, so counters survive restarts), attach it to the underlay interface, start
//! the overlay reconciler if a declared state is configured, publish `agent.json`.
//! Then, until SIGTERM or SIGINT: reconcile the overlay when the declared state or a
//! declared container changes (and every 30 s to repair drift), and log the counters if
//! asked to. Shutdown: remove `agent.json`. The program stays attached through its
//! pinned link (the next agent swaps its own in), and the pinned maps and the overlay
//! stay, so a restarted agent changes nothing that works.
use std::{fmt, fs, time::Duration};

use anyhow::{bail, Context, Result};
use shoal_dataplane::{
    bpffs,
    underlay::{UnderlayProgram, UnderlayStats},
};
use tokio::{
    signal::unix::{signal, SignalKind},
    time::{interval_at, Instant, Interval, MissedTickBehavior},
};
use tracing::{info, warn};

use std::pin::Pin;

use futures::{Stream, StreamExt};
use shoal::{
    api::server as api_server,
    cluster_agent::{ClusterAgent, ClusterAgentConfig, EngineSource},
};
use shoal_orchestrator::docker::{DockerClient, WatchUpdate};

use crate::{
    config::AgentConfig,
    dns_driver::DnsDriver,
    overlay_driver::{self, OverlayDriver},
    status::AgentStatus,
};

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: AgentConfig) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!("the agent must run as root (it loads eBPF programs and attaches XDP); running as uid {euid}");
    }
    // One thread: the agent's own work is light (the overlay reconciler has a thread of
    // its own), and the resolver answers fastest without cross-thread wake-ups (measured
    // with two workers: ~1.7 epoll_wait per query and ~12% more CPU per query).
    tokio::runtime::Builder::new_current_thread()
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
    fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;

    let mut program = UnderlayProgram::load_pinned_with(&config.pin_dir, config.lb_flows)?;
    let mode = program.attach_pinned(interface, &config.pin_dir)?;

    // Before the status file: an agent that cannot run its overlay is not up.
    let mut overlay = match &config.declared_state {
        Some(file) => Some(Overlay::start(&config, file).await?),
        None => None,
    };
    // Service VIPs (socket-level balancing), following the declared LB state.
    let vip = match (&config.declared_lb, &overlay) {
        (Some(file), Some(o)) => Some(
            crate::vip_driver::VipDriver::start(&config, file, o.driver.present.clone()).await?,
        ),
        _ => None,
    };
    // The ingress routing mesh (XDP above, its maps and reply path), same declared state.
    let mesh = match (&config.declared_lb, &overlay) {
        (Some(file), Some(o)) => Some(crate::lb_driver::LbDriver::start(
            &config,
            file,
            o.driver.present.clone(),
        )?),
        _ => None,
    };

    // The cluster role this node had (resumed from <data_dir>/cluster/), and the API
    // the CLI reaches it through.
    let cluster = ClusterAgent::start(ClusterAgentConfig {
        data_dir: config.data_dir.clone(),
        listen: config.cluster_listen,
        underlay_interface: Some(config.underlay_interface.clone()),
        data_path_port: config.data_path_port,
        engine: EngineSource::Docker(config.docker_socket.clone()),
        hostname: None,
        timings: None,
        declared: Some(shoal_orchestrator::node_state::DeclaredPaths::for_agent(
            &config.data_dir,
            config.declared_state.as_deref(),
            config.dns.as_ref().map(|d| d.declared.as_path()),
            config.declared_lb.as_deref(),
        )),
        gossip_listen: Some(config.gossip_listen),
    })
    .await
    .context("starting the cluster role")?;
    let api_socket = api_server::bind(&config.api_socket)?;
    let api = tokio::spawn(api_server::serve(api_socket, cluster.clone()));
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

    let mut stats_timer = config.stats_interval.map(stats_timer);
    let signal_name = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            () = tick(&mut stats_timer) => log_stats(&program),
            result = next_overlay_step(&mut overlay) => {
                if let Err(e) = result {
                    warn!(error = %format!("{e:#}"), "overlay");
                }
            }
        }
    };
    if let Some(v) = vip {
        v.stop().await;
    }
    if let Some(m) = mesh {
        m.stop();
    }
    if let Some(o) = overlay {
        if let Some(dns) = o.dns {
            dns.shutdown().await;
        }
        o.driver.stop();
    }

    info!(signal = signal_name, "shutting down");
    // No new requests; the role stops cleanly (a restart resumes it).
    api.abort();
    let _ = api.await;
    cluster.shutdown().await;
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

/// The overlay side of the agent: the reconciler's driver and what wakes it.
struct Overlay {
    driver: OverlayDriver,
    events: Pin<Box<dyn Stream<Item = WatchUpdate> + Send>>,
    file_timer: Interval,
    resync_timer: Interval,
    /// The embedded resolver, serving the networks the overlay has on this node.
    dns: Option<DnsDriver>,
}

impl Overlay {
    async fn start(config: &AgentConfig, file: &std::path::Path) -> Result<Self> {
        let docker = DockerClient::connect(&config.docker_socket)
            .await
            .context("the overlay needs the node's dockerd")?;
        let events = Box::pin(docker.watch_reconnecting(Duration::from_secs(2)));
        let driver = OverlayDriver::start(config, file, docker).await?;
        let dns = config.dns.as_ref().map(DnsDriver::new).transpose()?;
        Ok(Self {
            driver,
            events,
            file_timer: stats_timer(overlay_driver::FILE_POLL_EVERY),
            resync_timer: stats_timer(overlay_driver::RESYNC_EVERY),
            dns,
        })
    }
}

/// Waits for the next thing that needs the overlay reconciled, and reconciles.
async fn next_overlay_step(overlay: &mut Option<Overlay>) -> Result<()> {
    let Some(o) = overlay else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = o.file_timer.tick() => {
            if let Some(dns) = &mut o.dns {
                dns.poll_file();
            }
            o.driver.poll_file().await
        }
        Ok(()) = o.driver.present.changed(), if o.dns.is_some() => {
            let present = o.driver.present.borrow_and_update().clone();
            if let Some(dns) = &mut o.dns {
                dns.networks_changed(&present).await;
            }
            Ok(())
        }
        _ = o.resync_timer.tick() => o.driver.reload(true).await,
        update = o.events.next() => match update {
            Some(WatchUpdate::Subscribed) => o.driver.reload(false).await,
            Some(WatchUpdate::Event(ev)) if o.driver.concerns(&ev.id, &ev.name) => {
                info!(container = %ev.name, action = ev.action.as_str(), "declared container changed");
                o.driver.reload(false).await
            }
            Some(WatchUpdate::Event(_)) => Ok(()),
            Some(WatchUpdate::Lost(e)) => {
                warn!(error = %e, "lost dockerd's events; retrying");
                Ok(())
            }
            None => Ok(()),
        },
    }
}

fn stats_timer(period: Duration) -> Interval {
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
