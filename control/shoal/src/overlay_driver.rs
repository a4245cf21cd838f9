//! Drives the overlay reconciler: reads the declared state, finds each declared
//! container's network namespace through Docker, and hands both to the reconciler,
//! which runs on a thread of its own (it owns netlink sockets in many namespaces and
//! blocks on them; the agent's async loop must not).
//!
//! Triggers: the declared-state file changing, a container starting, dying or being
//! removed (a restarted container has a new namespace and must be plumbed again), and a
//! periodic resync that re-reads the kernel to repair anything changed behind our back.
//! After each apply the driver writes `<data_dir>/overlay.json` (what is applied, what
//! failed, the last refusal), which operators and tests read.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, SystemTime},
};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use shoal_dataplane::{
    iface,
    overlay::{
        kernel::NetlinkKernel,
        plan::{ContainerNetns, NodeParams},
        reconciler::Reconciler,
        state::OverlayState,
    },
};
use tracing::{info, warn};

use shoal_orchestrator::docker::DockerClient;

use crate::config::AgentConfig;

/// How often the kernel is re-read to repair drift.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// How often the declared-state file is checked for changes.
pub const FILE_POLL_EVERY: Duration = Duration::from_millis(500);

enum Msg {
    Apply {
        state: OverlayState,
        containers: HashMap<String, ContainerNetns>,
        resync_first: bool,
        /// Why the file's current content was not taken (the last good state is
        /// applied instead), or None if it was.
        refused: Option<String>,
    },
    /// The file was bad and there is no good state yet.
    Refused(String),
}

/// What `overlay.json` holds.
#[derive(Debug, Default, Serialize)]
struct OverlayStatus {
    /// VNIs of the networks that exist on this node.
    networks: Vec<u32>,
    attachments: usize,
    remotes: usize,
    applied_ops: usize,
    absent_containers: Vec<String>,
    vanished_containers: Vec<String>,
    failed: Vec<String>,
    /// Why the latest declared state was refused (the last good one stays applied).
    refused: Option<String>,
    elapsed_ms: f64,
    /// Increases with every apply, so a reader can wait for the next one.
    generation: u64,
}

/// An overlay network that exists on this node now: where its namespace is pinned and
/// the gateway address its bridge holds (where the node's DNS listens for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresentNetwork {
    pub id: String,
    pub vni: u32,
    pub gateway: std::net::Ipv4Addr,
    pub netns_path: PathBuf,
}

/// The reconciler's thread.
pub struct OverlayDriver {
    tx: mpsc::Sender<Msg>,
    /// The networks present after the latest apply.
    pub present: tokio::sync::watch::Receiver<Vec<PresentNetwork>>,
    thread: Option<thread::JoinHandle<()>>,
    docker: DockerClient,
    state_file: PathBuf,
    last_seen: Option<(SystemTime, u64)>,
    last_good: Option<OverlayState>,
}

impl OverlayDriver {
    /// Adopts what the kernel holds and starts the reconciler thread.
    pub async fn start(
        config: &AgentConfig,
        state_file: &Path,
        docker: DockerClient,
    ) -> Result<Self> {
        let underlay = &config.underlay_interface;
        let vtep = iface::ipv4_address(underlay)
            .with_context(|| format!("reading the address of {underlay}"))?
            .ok_or_else(|| anyhow!("the underlay interface {underlay} has no IPv4 address: the overlay needs one as its VTEP"))?;
        let node = NodeParams {
            vtep,
            underlay_interface: underlay.clone(),
            underlay_mtu: iface::mtu(underlay)
                .with_context(|| format!("reading the MTU of {underlay}"))?,
            port: config.data_path_port,
        };
        let netns_dir = config.netns_dir.clone();
        let status_path = config.data_dir.join("overlay.json");
        let (tx, rx) = mpsc::channel::<Msg>();
        let (present_tx, present) = tokio::sync::watch::channel(Vec::new());
        let pin_dir = config.netns_dir.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<()>>();
        let thread = thread::Builder::new()
            .name("overlay".into())
            .spawn(move || {
                let kernel = match NetlinkKernel::new(None, netns_dir) {
                    Ok(k) => k,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("opening netlink: {e}")));
                        return;
                    }
                };
                let reconciler = match Reconciler::new(kernel, node) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("{e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                reconcile_loop(reconciler, rx, &status_path, |state, applied| {
                    let now = present_networks(state, applied, &pin_dir);
                    present_tx.send_if_modified(|old| {
                        let changed = *old != now;
                        *old = now;
                        changed
                    });
                });
            })
            .context("starting the overlay thread")?;
        ready_rx
            .await
            .context("the overlay thread died while starting")??;
        info!(%vtep, port = config.data_path_port, "overlay reconciler started");
        Ok(Self {
            tx,
            present,
            thread: Some(thread),
            docker,
            state_file: state_file.to_owned(),
            last_seen: None,
            last_good: None,
        })
    }

    /// Re-applies if the declared-state file changed since the last look.
    pub async fn poll_file(&mut self) -> Result<()> {
        let seen = file_version(&self.state_file);
        if seen.is_some() && seen != self.last_seen {
            self.last_seen = seen;
            self.reload(false).await?;
        }
        Ok(())
    }

    /// Reads the declared state (keeping the last good one if the file is bad) and
    /// applies it with fresh container locations; `resync_first` re-reads the kernel.
    pub async fn reload(&mut self, resync_first: bool) -> Result<()> {
        let refused = match read_state(&self.state_file) {
            Ok(state) => {
                self.last_good = Some(state);
                None
            }
            Err(e) => {
                warn!(error = %e, "declared overlay state not applied; the last good one stays");
                Some(e)
            }
        };
        let Some(state) = self.last_good.clone() else {
            return self.send(Msg::Refused(refused.unwrap_or_default()));
        };
        let mut containers = HashMap::new();
        for name in state.containers().keys() {
            match self.docker.container_netns(name).await {
                Ok(Some(c)) => {
                    containers.insert(
                        (*name).to_owned(),
                        ContainerNetns {
                            path: c.netns_path,
                            id: c.netns_id,
                        },
                    );
                }
                Ok(None) => {}
                Err(e) => warn!(container = %name, error = %e, "looking up a declared container"),
            }
        }
        self.send(Msg::Apply {
            state,
            containers,
            resync_first,
            refused,
        })
    }

    /// True if a container event concerns a container the declared state names.
    pub fn concerns(&self, id: &str, name: &str) -> bool {
        self.last_good.as_ref().is_some_and(|s| {
            s.containers()
                .keys()
                .any(|c| *c == name || (c.len() >= 12 && id.starts_with(c)) || *c == id)
        })
    }

    fn send(&self, msg: Msg) -> Result<()> {
        self.tx
            .send(msg)
            .map_err(|_| anyhow!("the overlay reconciler thread has stopped"))
    }

    /// Stops the thread. What the overlay made stays: an agent restart must not cut
    /// traffic that works.
    pub fn stop(mut self) {
        drop(std::mem::replace(&mut self.tx, mpsc::channel().0));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn file_version(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn read_state(path: &Path) -> Result<OverlayState, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading declared state {}: {e}", path.display()))?;
    let state: OverlayState = serde_json::from_str(&text)
        .map_err(|e| format!("declared state {}: {e}", path.display()))?;
    state
        .validate()
        .map_err(|e| format!("declared state {} refused: {e}", path.display()))?;
    Ok(state)
}

/// The networks in `applied`, named from the declared state.
fn present_networks(
    state: Option<&OverlayState>,
    applied: &shoal_dataplane::overlay::model::KernelState,
    netns_dir: &Path,
) -> Vec<PresentNetwork> {
    applied
        .networks
        .iter()
        .filter_map(|(vni, objects)| {
            let id = state?.networks.iter().find(|n| n.vni == *vni)?.id.clone();
            Some(PresentNetwork {
                id,
                vni: *vni,
                gateway: objects.spec.gateway,
                netns_path: shoal_dataplane::overlay::kernel::pin_path(netns_dir, *vni),
            })
        })
        .collect()
}

fn reconcile_loop(
    mut reconciler: Reconciler<NetlinkKernel>,
    rx: mpsc::Receiver<Msg>,
    status_path: &Path,
    mut on_applied: impl FnMut(Option<&OverlayState>, &shoal_dataplane::overlay::model::KernelState),
) {
    let mut status = OverlayStatus::default();
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Refused(why) => {
                status.refused = Some(why);
            }
            Msg::Apply {
                state,
                containers,
                resync_first,
                refused,
            } => {
                status.refused = refused;
                if resync_first {
                    if let Err(e) = reconciler.resync() {
                        warn!(error = %e, "re-reading the overlay from the kernel");
                    }
                }
                match reconciler.apply(&state, |c| containers.get(c).cloned()) {
                    Ok(report) => {
                        if report.applied > 0 || !report.failed.is_empty() {
                            info!(
                                ops = report.applied,
                                failed = report.failed.len(),
                                absent = report.absent_containers.len(),
                                ms = report.elapsed.as_secs_f64() * 1e3,
                                "overlay reconciled"
                            );
                        }
                        status.applied_ops = report.applied;
                        status.absent_containers = report.absent_containers;
                        status.vanished_containers = report.vanished_containers;
                        status.failed = report.failed;
                        status.elapsed_ms = report.elapsed.as_secs_f64() * 1e3;
                    }
                    Err(e) => {
                        warn!(error = %e, "overlay state refused");
                        status.refused = Some(e.to_string());
                    }
                }
            }
        }
        let applied = reconciler.applied();
        on_applied(reconciler.last_good(), applied);
        status.networks = applied.networks.keys().copied().collect();
        status.attachments = applied.networks.values().map(|n| n.attachments.len()).sum();
        status.remotes = applied.networks.values().map(|n| n.remotes.len()).sum();
        status.generation += 1;
        if let Err(e) = write_status(status_path, &status) {
            warn!(error = %e, "writing {}", status_path.display());
        }
    }
}

fn write_status(path: &Path, status: &OverlayStatus) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(status)?)?;
    std::fs::rename(&tmp, path)
}
