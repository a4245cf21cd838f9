//! `shoal agent cleanup [--force]`: removes everything the agent made on this host, with
//! the agent stopped: the task containers and sandboxes it started on the node's
//! dockerd and the sandbox image it loaded there, its dataplane (networks and their namespaces, the mesh's veth with its address, route
//! and filter, the eBPF programs and their pins; see `shoal_dataplane::cleanup`), the
//! sysctls it changed (restored from the journal), the tmpfs of tasks' secrets and
//! configs, and its files.
//!
//! Refused while an agent runs (it would make it all again), and while the node is in a
//! swarm unless `--force` (then the node's swarm state goes too, as Docker's `swarm
//! leave --force` does to a node that cannot reach its managers).
use std::{fs, io, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use shoal_cluster::manager;
use shoal_dataplane::{
    cleanup::{self, Report},
    probe,
};
use shoal_orchestrator::{docker::DockerClient, executor, sandbox};

use crate::{config::AgentPaths, status};

/// How long dockerd may take per request.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the agent writes in its data directory (status files, dumps, its swarm state).
/// Anything else there is not the agent's and stays.
const DATA_FILES: [&str; 9] = [
    status::STATUS_FILE,
    "overlay.json",
    "vip.json",
    "lb.json",
    "dns.json",
    "gossip.json",
    "egress.json",
    "wireguard.json",
    // The node's WireGuard key: a cleaned-up host is no longer a node.
    shoal_dataplane::wireguard::key::KEY_FILE,
];
/// Directories the agent writes in its data directory.
const DATA_DIRS: [&str; 2] = ["declared", "cluster"];

/// Runs cleanup; prints one line per thing done or left, fails if anything was left.
pub fn run(paths: &AgentPaths, force: bool) -> Result<()> {
    probe::root().map_err(anyhow::Error::msg)?;
    if let Some(why) = status::running_agent(&paths.data_dir, &paths.api_socket) {
        bail!("the agent is running ({why}): stop it first (systemctl stop shoal-agent), then run cleanup");
    }
    let cluster_dir = paths.data_dir.join("cluster");
    if !force && cluster_dir.exists() {
        match manager::local_role(&cluster_dir) {
            Ok(None) => {}
            Ok(Some(role)) => bail!(
                "this node is still in a swarm (as a {}): leave it first with `shoal swarm leave` while the agent runs, or pass --force to remove its swarm state too",
                role_name(role)
            ),
            Err(e) => bail!(
                "cannot tell whether this node is in a swarm ({}: {e}); pass --force to remove it anyway",
                cluster_dir.display()
            ),
        }
    }

    let mut report = Report::default();
    remove_containers(&paths.docker_socket, &mut report);
    // The tasks' secrets and configs (a tmpfs), once their containers are gone.
    if let Some(dir) = paths
        .netns_dir
        .parent()
        .map(|run| run.join(super::TASK_FILES_DIR))
    {
        match executor::TaskFiles::remove(&dir) {
            Ok(true) => report.done.push(format!(
                "removed the tmpfs of tasks' secrets and configs {}",
                dir.display()
            )),
            Ok(false) => {}
            Err(e) => report
                .problems
                .push(format!("removing the tmpfs {}: {e}", dir.display())),
        }
    }
    let dataplane = cleanup::remove_dataplane(&cleanup::AgentPaths {
        pin_dir: paths.pin_dir.clone(),
        netns_dir: paths.netns_dir.clone(),
        data_dir: paths.data_dir.clone(),
    });
    report.done.extend(dataplane.done);
    report.problems.extend(dataplane.problems);
    remove_files(paths, &mut report);

    for line in &report.done {
        println!("{line}");
    }
    for line in &report.problems {
        println!("problem: {line}");
    }
    match report.problems.len() {
        0 => {
            println!("cleanup done: nothing of the agent's is left on this host");
            Ok(())
        }
        n => bail!("cleanup left {n} thing(s) behind (see the problem lines)"),
    }
}

fn role_name(role: shoal_cluster::pki::Role) -> &'static str {
    match role {
        shoal_cluster::pki::Role::Manager => "manager",
        shoal_cluster::pki::Role::Worker => "worker",
    }
}

/// The task containers and sandboxes on the node's dockerd, running or not, then the
/// sandbox image.
fn remove_containers(socket: &Path, report: &mut Report) {
    let removed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime to talk to dockerd")
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                let docker = DockerClient::connect_with_timeout(socket, DOCKER_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                let containers = executor::remove_all_task_containers(&docker).await?;
                // Still in use if a sandbox could not be removed: that one is reported.
                let image = sandbox::remove_image(&docker).await;
                Ok((containers, image))
            })
        });
    match removed {
        Ok((containers, image)) => {
            for (name, outcome) in containers {
                match outcome {
                    Ok(()) => report.done.push(format!("removed container {name}")),
                    Err(e) => report
                        .problems
                        .push(format!("removing container {name}: {e}")),
                }
            }
            match image {
                Ok(true) => report
                    .done
                    .push(format!("removed the sandbox image {}", sandbox::image::TAG)),
                Ok(false) => {}
                Err(e) => report.problems.push(e),
            }
        }
        Err(e) => report
            .problems
            .push(format!("the agent's containers could not be removed: {e}")),
    }
}

/// The agent's files: its data directory's own entries (then the directory, if that
/// leaves it empty), the API socket, and `/run/shoal`-like parents left empty.
fn remove_files(paths: &AgentPaths, report: &mut Report) {
    let data = &paths.data_dir;
    let mut removed = Vec::new();
    for name in DATA_FILES {
        match fs::remove_file(data.join(name)) {
            Ok(()) => removed.push(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => report
                .problems
                .push(format!("removing {}: {e}", data.join(name).display())),
        }
    }
    for name in DATA_DIRS {
        match fs::remove_dir_all(data.join(name)) {
            Ok(()) => removed.push(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => report
                .problems
                .push(format!("removing {}: {e}", data.join(name).display())),
        }
    }
    if !removed.is_empty() {
        report.done.push(format!(
            "removed the agent's files in {}: {}",
            data.display(),
            removed.join(", ")
        ));
    }
    cleanup::remove_empty_dir(data, "data directory", report);

    for (what, socket) in [
        ("API socket", &paths.api_socket),
        ("Engine API socket", &paths.engine_api_socket),
    ] {
        match fs::symlink_metadata(socket) {
            Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
                match fs::remove_file(socket) {
                    Ok(()) => report
                        .done
                        .push(format!("removed the {what} {}", socket.display())),
                    Err(e) => report
                        .problems
                        .push(format!("removing the {what} {}: {e}", socket.display())),
                }
            }
            _ => {}
        }
    }
    // The directory the API socket and the namespaces share by default (/run/shoal),
    // only when that leaves it empty: it may be a directory of other things.
    if let (Some(a), Some(n)) = (paths.api_socket.parent(), paths.netns_dir.parent()) {
        if a == n && fs::remove_dir(a).is_ok() {
            report
                .done
                .push(format!("removed the empty directory {}", a.display()));
        }
    }
}
