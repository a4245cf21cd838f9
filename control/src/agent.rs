//! `shoal agent`: the daemon every host runs as root.
//!
//! Start-up: prepare the pin directory, load the underlay XDP program (its stats map
//! pinned, so counters survive restarts), attach it to the underlay interface, publish
//! `agent.json`. Then, until SIGTERM or SIGINT, log the counters if asked to. Shutdown:
//! detach the program, remove `agent.json`. The pinned map stays.
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

use crate::{config::AgentConfig, status::AgentStatus};

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: AgentConfig) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!("the agent must run as root (it loads eBPF programs and attaches XDP); running as uid {euid}");
    }
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

    let mut program = UnderlayProgram::load_pinned(&config.pin_dir)?;
    let mode = program.attach(interface)?;

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
        }
    };

    info!(signal = signal_name, "shutting down");
    drop(program);
    info!(interface, "detached underlay XDP program");
    if let Err(e) = fs::remove_file(&status_path) {
        warn!(path = %status_path.display(), error = %e, "could not remove the status file");
    }
    info!("agent stopped");
    Ok(())
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
