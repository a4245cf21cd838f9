//! Drives the service VIPs: loads the socket programs with their maps pinned under
//! `<pin_dir>/vip` (adopting what a previous agent left there), attaches them at the
//! cgroup v2 root with pinned links, and keeps the maps and each network namespace's VIP
//! addresses matching the declared load-balancing state.
//!
//! Inputs: the declared LB file (`--declared-lb`), the declared overlay file (which
//! containers are on which networks), dockerd (each declared container's namespace,
//! whose cookie scopes its VIPs) and the overlay driver's list of networks present on
//! this node (where the VIP addresses go). A state that fails its checks is refused
//! whole and the last good one stays in force. Map and netlink work runs on a thread of
//! its own; after each apply it writes `<data_dir>/vip.json` (what is applied, the last
//! refusal, a generation number readers can wait on).
use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    pin::Pin,
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, Context, Result};
use futures::{Stream, StreamExt};
use serde::Serialize;
use shoal_dataplane::{
    lb::{
        state::LbState,
        vip::{self, VipProgram},
        vip_addr,
        vip_table::VipTable,
    },
    overlay::state::OverlayState,
};
use shoal_orchestrator::docker::{DockerClient, WatchUpdate};
use tokio::{sync::watch, time::MissedTickBehavior};
use tracing::{info, warn};

use crate::{config::AgentConfig, overlay_driver::PresentNetwork};

/// How often the declared files are checked for changes.
const FILE_POLL_EVERY: Duration = Duration::from_millis(100);
/// How often everything is recomputed and the VIP addresses re-checked (a network's
/// namespace re-made by the overlay loses them).
const RESYNC_EVERY: Duration = Duration::from_secs(10);

/// What the worker thread is asked to make true.
struct Desired {
    /// None: no good state yet; the maps keep what they hold (adopted from a previous
    /// agent, or nothing).
    table: Option<VipTable>,
    /// Per network present on the node: its namespace and the VIPs it answers for.
    addresses: Vec<(PathBuf, BTreeSet<std::net::Ipv4Addr>)>,
    refused: Option<String>,
}

/// What `vip.json` holds.
#[derive(Debug, Default, Serialize)]
struct VipStatus {
    vips: usize,
    healthy_backends: usize,
    /// (node address or 127.0.0.1, published port) pairs the node's own sockets reach.
    node_ports: usize,
    scopes: usize,
    /// Map writes and deletes of the last apply.
    map_writes: usize,
    /// Namespaces whose VIP addresses could not be set, with why.
    failed: Vec<String>,
    /// Why the latest declared state was refused (the last good one stays applied).
    refused: Option<String>,
    elapsed_ms: f64,
    /// Increases with every apply.
    generation: u64,
}

pub struct VipDriver {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl VipDriver {
    /// Loads and attaches the programs, then follows the declared state until stopped.
    pub async fn start(
        config: &AgentConfig,
        lb_file: &Path,
        present: watch::Receiver<Vec<PresentNetwork>>,
    ) -> Result<Self> {
        let overlay_file = config
            .declared_state
            .clone()
            .ok_or_else(|| anyhow!("service VIPs need the declared overlay state"))?;
        let pin_dir = config.pin_dir.join(vip::PIN_SUBDIR);
        let cgroup = vip::cgroup2_root()?;
        let mut program = VipProgram::load_pinned(&pin_dir)
            .with_context(|| format!("loading the VIP programs (maps in {})", pin_dir.display()))?;
        program
            .attach_pinned(&cgroup)
            .with_context(|| format!("attaching the VIP programs at {}", cgroup.display()))?;
        info!(cgroup = %cgroup.display(), pin_dir = %pin_dir.display(), adopted_vips = program.record().vips.len(), "VIP socket programs attached");

        let docker = DockerClient::connect(&config.docker_socket)
            .await
            .context("service VIPs need the node's dockerd")?;
        let events = Box::pin(docker.watch_reconnecting(Duration::from_secs(2)));
        let (tx, rx) = mpsc::channel::<Desired>();
        let status_path = config.data_dir.join("vip.json");
        let worker = thread::Builder::new()
            .name("vip".into())
            .spawn(move || worker(program, rx, &status_path))
            .context("starting the VIP thread")?;
        let (stop, stop_rx) = watch::channel(false);
        let mut follower = Follower {
            lb_file: lb_file.to_owned(),
            overlay_file,
            docker,
            present,
            tx,
            seen: None,
            last_lb: None,
            last_overlay: None,
            cookies: HashMap::new(),
        };
        let task = tokio::spawn(async move {
            follower.run(events, stop_rx).await;
            drop(follower);
            let _ = tokio::task::spawn_blocking(move || worker.join()).await;
        });
        Ok(Self { stop, task })
    }

    /// Stops following. The programs, links and maps stay pinned: VIPs keep working
    /// while no agent runs, and the next agent adopts them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Follower {
    lb_file: PathBuf,
    overlay_file: PathBuf,
    docker: DockerClient,
    present: watch::Receiver<Vec<PresentNetwork>>,
    tx: mpsc::Sender<Desired>,
    seen: Option<[Option<(SystemTime, u64)>; 2]>,
    last_lb: Option<LbState>,
    last_overlay: Option<OverlayState>,
    /// Namespace identity -> cookie, so a namespace is entered once.
    cookies: HashMap<u64, u64>,
}

impl Follower {
    async fn run(
        &mut self,
        mut events: Pin<Box<dyn Stream<Item = WatchUpdate> + Send>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut poll = tokio::time::interval(FILE_POLL_EVERY);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let due = tokio::select! {
                _ = stop.changed() => return,
                _ = poll.tick() => self.files_changed(),
                _ = resync.tick() => true,
                Ok(()) = self.present.changed() => true,
                update = events.next() => match update {
                    Some(WatchUpdate::Event(ev)) => self.concerns(&ev.id, &ev.name),
                    Some(WatchUpdate::Subscribed) => true,
                    Some(WatchUpdate::Lost(_)) | None => false,
                },
            };
            if due {
                if let Err(e) = self.recompute().await {
                    warn!(error = %format!("{e:#}"), "service VIPs");
                }
            }
        }
    }

    fn files_changed(&mut self) -> bool {
        let now = [
            file_version(&self.lb_file),
            file_version(&self.overlay_file),
        ];
        if self.seen == Some(now) {
            return false;
        }
        self.seen = Some(now);
        true
    }

    fn concerns(&self, id: &str, name: &str) -> bool {
        self.last_overlay.as_ref().is_some_and(|s| {
            s.containers()
                .keys()
                .any(|c| *c == name || *c == id || (c.len() >= 12 && id.starts_with(c)))
        })
    }

    async fn recompute(&mut self) -> Result<()> {
        let mut refused = None;
        match read_json::<OverlayState>(&self.overlay_file).and_then(|s| {
            s.validate()
                .map_err(|e| format!("{} refused: {e}", self.overlay_file.display()))?;
            Ok(s)
        }) {
            Ok(s) => self.last_overlay = Some(s),
            Err(e) => refused = Some(e),
        }
        let Some(overlay) = self.last_overlay.clone() else {
            warn!(
                why = refused.as_deref().unwrap_or(""),
                "no good overlay state yet; VIPs wait"
            );
            return Ok(());
        };
        match read_json::<LbState>(&self.lb_file).and_then(|s| {
            s.validate(&overlay)
                .map_err(|e| format!("{} refused: {e}", self.lb_file.display()))?;
            Ok(s)
        }) {
            Ok(s) => {
                if self.last_lb.as_ref() != Some(&s) {
                    info!(file = %self.lb_file.display(), services = s.services.len(), "declared load-balancing state taken");
                }
                self.last_lb = Some(s);
            }
            Err(e) => {
                warn!(error = %e, "declared load-balancing state not applied; the last good one stays");
                refused = Some(e);
            }
        }
        let Some(lb) = self.last_lb.clone() else {
            return self.send(Desired {
                table: None,
                addresses: Vec::new(),
                refused,
            });
        };
        let mut cookies = HashMap::new();
        let mut live = BTreeSet::new();
        for name in overlay.containers().keys() {
            match self.docker.container_netns(name).await {
                Ok(Some(c)) => {
                    live.insert(c.netns_id);
                    let cookie = match self.cookies.get(&c.netns_id) {
                        Some(k) => *k,
                        None => match vip::netns_cookie(&c.netns_path) {
                            Ok(k) => {
                                self.cookies.insert(c.netns_id, k);
                                k
                            }
                            Err(e) => {
                                warn!(container = %name, error = %e, "reading a container's namespace cookie");
                                continue;
                            }
                        },
                    };
                    cookies.insert((*name).to_owned(), cookie);
                }
                Ok(None) => {}
                Err(e) => warn!(container = %name, error = %e, "looking up a declared container"),
            }
        }
        self.cookies.retain(|id, _| live.contains(id));
        let mut table = VipTable::from_declared(&lb, &overlay, &cookies);
        // Published ports from the node itself (its own namespace's sockets) and from
        // its containers.
        let node_addrs = crate::lb_driver::node_addresses();
        match vip::current_netns_cookie() {
            Ok(own) => table.add_node_ports(&lb, own, &node_addrs),
            Err(e) => warn!(error = %e, "reading the node's namespace cookie"),
        }
        table.add_container_node_ports(&lb, &overlay, &cookies, &node_addrs);
        let addresses = self
            .present
            .borrow()
            .iter()
            .map(|n| (n.netns_path.clone(), vip::vip_addresses(&table, n.vni)))
            .collect();
        self.send(Desired {
            table: Some(table),
            addresses,
            refused,
        })
    }

    fn send(&self, d: Desired) -> Result<()> {
        self.tx
            .send(d)
            .map_err(|_| anyhow!("the VIP thread has stopped"))
    }
}

fn worker(mut program: VipProgram, rx: mpsc::Receiver<Desired>, status_path: &Path) {
    let mut status = VipStatus::default();
    while let Ok(mut d) = rx.recv() {
        // Only the newest wish matters.
        while let Ok(newer) = rx.try_recv() {
            d = newer;
        }
        let started = Instant::now();
        status.refused = d.refused;
        status.failed.clear();
        status.map_writes = 0;
        let Some(table) = d.table else {
            status.generation += 1;
            if let Err(e) = write_status(status_path, &status) {
                warn!(error = %e, "writing {}", status_path.display());
            }
            continue;
        };
        match program.apply(&table) {
            Ok(n) => {
                if n > 0 {
                    info!(
                        map_writes = n,
                        vips = table.vips.len(),
                        scopes = table.scopes.len(),
                        "service VIPs applied"
                    );
                }
                status.map_writes = n;
            }
            Err(e) => {
                warn!(error = %e, "writing the VIP maps");
                status.failed.push(format!("maps: {e}"));
            }
        }
        for (netns, addrs) in &d.addresses {
            match vip_addr::sync_addresses(netns, addrs) {
                Ok(c) if !c.added.is_empty() || !c.removed.is_empty() => {
                    info!(netns = %netns.display(), added = ?c.added, removed = ?c.removed, "VIP addresses")
                }
                Ok(_) => {}
                Err(e) => status.failed.push(format!("{}: {e}", netns.display())),
            }
        }
        // Published ports' frontends (network 0) are counted as node ports, not VIPs.
        let vips: Vec<_> = (table.vips.iter())
            .filter(|(_, spec)| spec.network != 0)
            .map(|(vip, _)| *vip)
            .collect();
        status.vips = vips.len();
        status.healthy_backends = vips.iter().map(|v| table.healthy(*v).len()).sum();
        status.node_ports = table.nodeports.len();
        status.scopes = table.scopes.len();
        status.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        status.generation += 1;
        if let Err(e) = write_status(status_path, &status) {
            warn!(error = %e, "writing {}", status_path.display());
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn file_version(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn write_status(path: &Path, status: &VipStatus) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(status)?)?;
    std::fs::rename(&tmp, path)
}
