//! Running `shoal agent` on a lab host (demo and lab tests).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{HostState, LabState};

/// The unix socket a host's agent serves its API on (the CLI's SHOAL_API_SOCKET).
pub fn api_socket(host: &HostState) -> PathBuf {
    host.run_dir.join("shoal.sock")
}

/// The host's agent's Docker Engine API socket (the host's dockerd has `docker.sock`
/// in the same directory).
pub fn engine_api_socket(host: &HostState) -> PathBuf {
    host.run_dir.join("engine.sock")
}

/// Where a host's agent writes its status file (`agent.json`).
pub fn status_file(host: &HostState) -> PathBuf {
    host.run_dir.join("agent").join("agent.json")
}

/// Where a host's agent dumps the declared state it computed (`overlay.json`,
/// `dns.json`, `lb.json`): for people and tests; the agent itself reads nothing there.
pub fn declared_dir(host: &HostState) -> PathBuf {
    host.run_dir.join("agent").join("declared")
}

/// Starts `shoal agent` on a host, in the background, with its own pin and data dirs,
/// and waits until it has attached its XDP program. Returns its status file's content.
pub fn start(
    state: &LabState,
    host: &HostState,
    shoal: &Path,
    extra_args: &[String],
) -> Result<String> {
    let data_dir = host.run_dir.join("agent");
    fs::create_dir_all(&data_dir)?;
    // Appended to, so a restarted agent's log follows the first one's.
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(host.run_dir.join("agent.log"))?;
    let status = status_file(host);
    let _ = fs::remove_file(&status);
    let argv = vec![
        shoal.display().to_string(),
        "agent".into(),
        "--underlay-interface".into(),
        host.underlay_interface.clone(),
        "--pin-dir".into(),
        host.pin_dir.display().to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--docker-socket".into(),
        host.docker_host.trim_start_matches("unix://").to_owned(),
        "--netns-dir".into(),
        host.run_dir.join("netns").display().to_string(),
        "--api-socket".into(),
        api_socket(host).display().to_string(),
        "--engine-api-socket".into(),
        engine_api_socket(host).display().to_string(),
    ]
    .into_iter()
    // Names outside the cluster resolve through the lab's upstream, unless the caller
    // names one.
    .chain(
        state
            .client
            .dns
            .filter(|_| !extra_args.iter().any(|a| a.starts_with("--dns-upstream")))
            .map(|dns| ["--dns-upstream".to_string(), dns.to_string()])
            .into_iter()
            .flatten(),
    )
    .chain(extra_args.iter().cloned())
    .collect::<Vec<String>>();
    let mut cmd = super::exec_command(state, &host.name, &argv)?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let child = cmd.spawn().context("starting shoal agent")?;
    drop(child);
    // The agent writes agent.json once its XDP program is attached.
    let start = Instant::now();
    while !status.exists() {
        if start.elapsed() > Duration::from_secs(60) {
            let log = fs::read_to_string(host.run_dir.join("agent.log")).unwrap_or_default();
            bail!(
                "shoal agent on {} did not start within 60 s; its log:\n{log}",
                host.name
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(fs::read_to_string(&status)?.trim().to_owned())
}
