//! Drives the ingress routing mesh: keeps the mesh's pinned maps matching the declared
//! load-balancing state (`--declared-lb`), and the reply path (veth and TC programs)
//! in place in the ingress network's namespace.
//!
//! Runs on a thread of its own, which loads its own copy of the underlay object: the
//! maps are pinned under `<pin_dir>/mesh`, so its copy and the agent's attached XDP
//! program share them, and the TC programs it attaches are this copy's. At start it
//! reads back what the maps hold (a restarted agent adopts them: flows, indices and
//! all), so the first apply only writes what changed.
//!
//! Every 250 ms: the declared LB and overlay files are re-read if they changed; a state
//! that fails its checks is refused whole (the last good one stays in force); the
//! reply path is (re)made when the ingress network's namespace appears or is made
//! again. After each apply `<data_dir>/lb.json` says what is applied, the last refusal,
//! the reply path's state and a generation number readers can wait on.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use serde::Serialize;
use shoal_dataplane::{
    lb::{
        mesh::{plan, MeshMaps, MeshPlan, NodeMesh},
        mesh_reply::{self, ReplyPath},
        state::LbState,
    },
    overlay::{kernel::pin_path, netns, state::OverlayState},
    underlay::UnderlayProgram,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{config::AgentConfig, overlay_driver::PresentNetwork};

const POLL_EVERY: Duration = Duration::from_millis(250);
/// How often a reply path that could not be made is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// How often the backends' nodes get their neighbour entries refreshed.
const NUDGE_EVERY: Duration = Duration::from_secs(5);

/// What `lb.json` holds.
#[derive(Debug, Default, Serialize)]
struct LbStatus {
    /// Published ports in the maps.
    frontends: usize,
    /// Backend entries (one per backend and published port it serves).
    backends: usize,
    /// Map entries written and removed by the last apply.
    written: usize,
    removed: usize,
    /// Why the latest declared state was refused (the last good one stays applied).
    refused: Option<String>,
    /// "ready", "waiting for the ingress network", "no ingress network declared" or why
    /// it failed.
    reply_path: String,
    /// When the last apply finished, in ms since the Unix epoch: a benchmark can tell
    /// when a change took effect.
    applied_at_ms: u128,
    elapsed_ms: f64,
    generation: u64,
}

pub struct LbDriver {
    stop: mpsc::Sender<()>,
    thread: Option<thread::JoinHandle<()>>,
}

impl LbDriver {
    /// Loads the mesh's maps (adopting pinned ones) and starts following `lb_file`.
    pub fn start(
        config: &AgentConfig,
        lb_file: &Path,
        present: watch::Receiver<Vec<PresentNetwork>>,
    ) -> Result<Self> {
        let mut program = UnderlayProgram::load_pinned_with(&config.pin_dir, config.lb_flows)
            .context("loading the routing mesh's programs")?;
        let maps = program
            .take_mesh_maps()
            .context("opening the routing mesh's maps")?;
        let applied = maps
            .read_plan()
            .context("reading back the routing mesh's maps")?;
        info!(
            frontends = applied.frontends.len(),
            backends = applied.backends.len(),
            "routing mesh maps adopted"
        );
        let underlay = config.underlay_interface.clone();
        mesh_reply::enable_forwarding(&underlay)
            .context("the routing mesh needs forwarding on the underlay")?;
        let vtep = shoal_dataplane::iface::ipv4_address(&underlay)
            .with_context(|| format!("reading the address of {underlay}"))?
            .with_context(|| format!("the underlay interface {underlay} has no IPv4 address"))?;
        let mut w = Worker {
            program,
            maps,
            applied,
            lb_file: lb_file.to_owned(),
            overlay_file: config
                .declared_state
                .clone()
                .context("the routing mesh needs --declared-state")?,
            netns_dir: config.netns_dir.clone(),
            status_path: config.data_dir.join("lb.json"),
            underlay,
            vtep,
            vxlan_port: config.data_path_port,
            tx_redirect: mesh_reply::is_veth(&config.underlay_interface),
            present,
            seen: None,
            last_good: None,
            refused: None,
            reply: None,
            reply_error: None,
            last_attempt: None,
            last_nudge: None,
            generation: 0,
        };
        let (stop, stop_rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("lb-mesh".into())
            .spawn(move || w.run(stop_rx))
            .context("starting the routing mesh thread")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread. The maps and the reply path stay (traffic keeps flowing).
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    program: UnderlayProgram,
    maps: MeshMaps,
    applied: MeshPlan,
    lb_file: PathBuf,
    overlay_file: PathBuf,
    netns_dir: PathBuf,
    status_path: PathBuf,
    underlay: String,
    vtep: Ipv4Addr,
    vxlan_port: u16,
    /// The underlay is a veth: remote backends are reached with a redirect.
    tx_redirect: bool,
    present: watch::Receiver<Vec<PresentNetwork>>,
    /// Versions of the two files last read.
    seen: Option<[Option<(SystemTime, u64)>; 2]>,
    last_good: Option<(LbState, OverlayState)>,
    refused: Option<String>,
    reply: Option<ReplyPath>,
    reply_error: Option<String>,
    last_attempt: Option<Instant>,
    last_nudge: Option<Instant>,
    generation: u64,
}

fn file_version(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Worker {
    fn run(&mut self, stop: mpsc::Receiver<()>) {
        loop {
            self.step();
            match stop.recv_timeout(POLL_EVERY) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    }

    fn step(&mut self) {
        let versions = [
            file_version(&self.lb_file),
            file_version(&self.overlay_file),
        ];
        let files_changed = self.seen != Some(versions);
        if files_changed {
            self.seen = Some(versions);
            match read(&self.lb_file, &self.overlay_file) {
                Ok(good) => {
                    self.refused = None;
                    self.last_good = Some(good);
                }
                Err(why) => {
                    warn!(refused = %why, "declared LB state refused; the last good one stays");
                    self.refused = Some(why);
                }
            }
        }
        let error_before = self.reply_error.clone();
        let reply_changed = self.ensure_reply_path() || error_before != self.reply_error;
        if files_changed || reply_changed {
            self.apply();
        }
        if self.last_nudge.is_none_or(|t| t.elapsed() >= NUDGE_EVERY) {
            self.last_nudge = Some(Instant::now());
            let mut nodes: Vec<Ipv4Addr> = self
                .applied
                .backends
                .values()
                .map(|b| shoal_dataplane::lb::mesh::ipv4(b.0.node))
                .filter(|n| *n != self.vtep)
                .collect();
            nodes.sort();
            nodes.dedup();
            mesh_reply::nudge_neighbours(&nodes, self.vxlan_port);
        }
    }

    /// (Re)makes the reply path when the ingress network's namespace is new to us.
    /// Returns whether the ifindex the maps must hold changed.
    fn ensure_reply_path(&mut self) -> bool {
        let Some((lb, overlay)) = &self.last_good else {
            return false;
        };
        let Some(net) = lb
            .ingress_network
            .as_deref()
            .and_then(|n| overlay.network(n))
        else {
            self.reply_error = Some("no ingress network declared".into());
            return self.reply.take().is_some();
        };
        let vni = net.vni;
        let path = pin_path(&self.netns_dir, vni);
        let present = self.present.borrow().iter().any(|p| p.vni == vni);
        if !present {
            let changed = self.reply.take().is_some();
            self.reply_error = Some("waiting for the ingress network".into());
            return changed;
        }
        let inode = netns::inode(&path).ok();
        if let Some(r) = &self.reply {
            if Some(r.netns_inode) == inode {
                return false;
            }
        }
        // A failed attempt is retried every few seconds, not on every poll.
        if self.reply.is_none() && self.reply_error.is_some() {
            if let Some(at) = self.last_attempt {
                if at.elapsed() < RETRY_EVERY {
                    return false;
                }
            }
        }
        self.last_attempt = Some(Instant::now());
        let before = self.reply.as_ref().map(|r| r.netns_ifindex);
        let subnet = net.subnet.to_string();
        let made =
            mesh_reply::ensure(&mut self.program, &path, vni, &self.underlay).and_then(|r| {
                mesh_reply::ensure_node_path(&path, vni, &subnet, &self.underlay)?;
                Ok(r)
            });
        match made {
            Ok(r) => {
                info!(netns = %path.display(), host_veth = %r.host_veth, "routing mesh reply path ready");
                self.reply = Some(r);
                self.reply_error = None;
            }
            Err(e) => {
                warn!(error = %e, "routing mesh reply path");
                self.reply = None;
                self.reply_error = Some(e.to_string());
            }
        }
        before != self.reply.as_ref().map(|r| r.netns_ifindex)
    }

    fn apply(&mut self) {
        let start = Instant::now();
        let mut status = LbStatus {
            refused: self.refused.clone(),
            reply_path: self.reply_error.clone().unwrap_or_else(|| "ready".into()),
            ..Default::default()
        };
        if let Some((lb, overlay)) = &self.last_good {
            let node = NodeMesh {
                vtep: self.vtep,
                addresses: node_addresses(),
                vxlan_port: self.vxlan_port,
                netns_veth_ifindex: self.reply.as_ref().map_or(0, |r| r.netns_ifindex),
                underlay_ifindex: self.reply.as_ref().map_or(0, |r| r.underlay_ifindex),
                tx_redirect: self.tx_redirect,
            };
            match plan(lb, overlay, &node, &self.applied) {
                Ok(next) => match self.maps.apply(&self.applied, &next) {
                    Ok(r) => {
                        status.written = r.written;
                        status.removed = r.removed;
                        self.applied = next;
                    }
                    Err(e) => {
                        warn!(error = %e, "applying the routing mesh's maps");
                        status.refused = Some(format!("applying the maps: {e}"));
                        // What an interrupted apply left is unknown: read it back.
                        if let Ok(now) = self.maps.read_plan() {
                            self.applied = now;
                        }
                    }
                },
                Err(e) => {
                    warn!(error = %e, "declared LB state refused");
                    status.refused = Some(e.to_string());
                }
            }
        }
        status.frontends = self.applied.frontends.len();
        status.backends = self.applied.backends.len();
        status.elapsed_ms = start.elapsed().as_secs_f64() * 1e3;
        status.applied_at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        self.generation += 1;
        status.generation = self.generation;
        info!(
            frontends = status.frontends,
            written = status.written,
            removed = status.removed,
            "routing mesh applied"
        );
        if let Err(e) = write_status(&self.status_path, &status) {
            warn!(path = %self.status_path.display(), error = %e, "writing lb.json");
        }
    }
}

fn read(lb_file: &Path, overlay_file: &Path) -> Result<(LbState, OverlayState), String> {
    let text = std::fs::read_to_string(lb_file)
        .map_err(|e| format!("reading declared LB state {}: {e}", lb_file.display()))?;
    let lb: LbState = serde_json::from_str(&text)
        .map_err(|e| format!("declared LB state {}: {e}", lb_file.display()))?;
    let text = std::fs::read_to_string(overlay_file)
        .map_err(|e| format!("reading declared state {}: {e}", overlay_file.display()))?;
    let overlay: OverlayState = serde_json::from_str(&text)
        .map_err(|e| format!("declared state {}: {e}", overlay_file.display()))?;
    lb.validate(&overlay)
        .map_err(|e| format!("declared LB state {} refused: {e}", lb_file.display()))?;
    Ok((lb, overlay))
}

/// Every IPv4 address of the host's interfaces but loopback and link-local ones:
/// published ports answer on all of them.
pub(crate) fn node_addresses() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills ifap with a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it says.
            let family = unsafe { (*ifa.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: AF_INET means sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let a = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !a.is_loopback() && !a.is_link_local() && !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: ifap came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    out
}

fn write_status(path: &Path, status: &LbStatus) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(status)?)?;
    std::fs::rename(&tmp, path)
}
