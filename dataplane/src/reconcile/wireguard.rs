//! The WireGuard device as the agent runs it: it runs while the node has an encrypted
//! network (plain networks pay nothing), at this node's data-path address on the
//! cluster's WireGuard port (the data-path port + 1), and its peers are exactly the
//! declared ones: every other node with a registered key. A node removed from the
//! cluster leaves the declared state, and its sessions go with it at once.
//!
//! The node's key is rotated on a schedule (when it is older than the agent's
//! `--wireguard-key-rotation` period) and on demand (`node update
//! --rotate-wireguard-key`: the declared state's count of requests passes the one this
//! node handled, kept in `<data_dir>/wireguard.rotation`). The new key is kept in the
//! data directory, published to whoever registers it with the managers (the gossip
//! member, through [`WireguardNode::public_key`]), and the device goes on carrying the
//! traffic in the old sessions until each peer has made one under the new key
//! ([`crate::wireguard::device`]).
//!
//! `<data_dir>/wireguard.json` shows the device, its counters (foreign, garbage,
//! replayed and spoofed datagrams dropped) and each peer's session, handshakes, packets,
//! bytes and drops; it is written on every change and every [`PERIOD`].
use std::{
    collections::BTreeMap,
    io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use tracing::{info, warn};

use super::{
    runner::{Cue, Reconcile, Report},
    DeclaredNode, PresentNetwork,
};
use crate::wireguard::{
    device::{Device, DeviceConfig, DeviceStats},
    key::{self, NodeKey},
    port_for, OVERHEAD,
};

/// How often the status (the device's counters) is written.
pub const PERIOD: Duration = Duration::from_secs(2);
/// How long a device that failed to start waits before the next try.
const RETRY: Duration = Duration::from_secs(5);
/// Where the count of rotation requests this node handled is kept.
pub const ROTATION_FILE: &str = "wireguard.rotation";

/// This node's fixed part.
#[derive(Clone, Debug)]
pub struct WireguardNode {
    pub netns_dir: PathBuf,
    pub key: NodeKey,
    /// The agent's underlay address, unless the declared state names a data-path one.
    pub vtep: Ipv4Addr,
    /// The underlay's MTU, unless the data-path address is on an interface of its own.
    pub underlay_mtu: u32,
    /// The agent's data-path port, unless the declared state names the swarm's.
    pub data_path_port: u16,
    /// Where the key and the count of rotations handled are kept.
    pub data_dir: PathBuf,
    /// A key older than this is replaced; None: only on demand.
    pub rotation_period: Option<Duration>,
    /// The node's current public key (64 hex digits), for whoever registers it.
    pub public_key: tokio::sync::watch::Sender<String>,
}

/// What `wireguard.json` holds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct WireguardStatus {
    pub running: bool,
    pub public_key: String,
    pub addr: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub mtu: Option<u32>,
    /// Seconds since this node's key was made.
    pub key_age_secs: Option<u64>,
    /// Rotation requests handled (`node update --rotate-wireguard-key`).
    pub rotations_handled: u64,
    /// Declared peers whose key could not be read (they get no session).
    pub refused_peers: Vec<String>,
    pub error: Option<String>,
    #[serde(flatten)]
    pub stats: DeviceStats,
}

impl Report for WireguardStatus {
    fn failures(&self) -> usize {
        usize::from(self.error.is_some()) + self.refused_peers.len()
    }
    fn refused(&self) -> bool {
        false
    }
}

pub struct WireguardReconciler {
    node: WireguardNode,
    device: Option<Device>,
    failed: Option<(DeviceConfig, Instant, String)>,
    /// When the key was made.
    key_made: SystemTime,
    /// Rotation requests handled.
    handled: u64,
    /// The last rotation that failed, and when (retried after [`RETRY`]).
    rotation_failed: Option<(Instant, String)>,
}

impl WireguardReconciler {
    pub fn new(node: WireguardNode) -> Self {
        info!(public_key = %node.key.public_hex(), "WireGuard identity loaded");
        let key_made = key::made_at(&node.data_dir).unwrap_or_else(|_| SystemTime::now());
        let handled = read_handled(&node.data_dir);
        node.public_key.send_replace(node.key.public_hex());
        WireguardReconciler {
            node,
            device: None,
            failed: None,
            key_made,
            handled,
            rotation_failed: None,
        }
    }

    /// Why the key must change now, if it must: `requested` rotations were asked for
    /// (the declared count), or the key is older than the period.
    fn rotation_due(&self, requested: u64) -> Option<String> {
        if requested > self.handled {
            return Some(format!("requested (rotation {requested})"));
        }
        let age = self.key_made.elapsed().unwrap_or_default();
        let period = self.node.rotation_period?;
        (age >= period).then(|| {
            format!(
                "the key is {}s old (period {}s)",
                age.as_secs(),
                period.as_secs()
            )
        })
    }

    /// Makes a new key, kept in the data directory, used by the device and published
    /// for registration.
    fn rotate(&mut self, requested: u64, why: &str) -> io::Result<()> {
        let key = NodeKey::rotate(&self.node.data_dir)?;
        self.handled = self.handled.max(requested);
        write_handled(&self.node.data_dir, self.handled)?;
        info!(old = %self.node.key.public_hex(), new = %key.public_hex(), why, "WireGuard key rotated");
        if let Some(dev) = &self.device {
            dev.rotate(key.clone());
        }
        self.node.public_key.send_replace(key.public_hex());
        self.node.key = key;
        self.key_made = SystemTime::now();
        Ok(())
    }

    /// The device `d` asks for, if any.
    fn wanted(&self, d: &DeclaredNode) -> Result<Option<DeviceConfig>, String> {
        if d.wireguard_peers.is_none() || !d.overlay.networks.iter().any(|n| n.encrypted) {
            return Ok(None);
        }
        let addr = d.data_path_addr.unwrap_or(self.node.vtep);
        let data_path_port = d.data_path_port.unwrap_or(self.node.data_path_port);
        let port = port_for(data_path_port).ok_or_else(|| {
            format!("the data-path port {data_path_port} leaves no port for WireGuard (it uses the next one)")
        })?;
        let underlay_mtu = crate::iface::interface_with(addr)
            .ok()
            .flatten()
            .and_then(|i| crate::iface::mtu(&i).ok())
            .unwrap_or(self.node.underlay_mtu);
        Ok(Some(DeviceConfig {
            addr,
            port,
            mtu: underlay_mtu.saturating_sub(OVERHEAD),
        }))
    }
}

impl Reconcile for WireguardReconciler {
    type Status = WireguardStatus;

    fn reconcile(
        &mut self,
        declared: Option<&DeclaredNode>,
        _present: &[PresentNetwork],
        _cue: Cue,
    ) -> Option<WireguardStatus> {
        let d = declared?;
        // In a cluster only: the key is registered with the managers there.
        if d.wireguard_peers.is_some() {
            let retry = self
                .rotation_failed
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() >= RETRY);
            if let (Some(why), true) = (self.rotation_due(d.wireguard_rotation), retry) {
                match self.rotate(d.wireguard_rotation, &why) {
                    Ok(()) => self.rotation_failed = None,
                    Err(e) => {
                        warn!(error = %e, "rotating the WireGuard key");
                        self.rotation_failed = Some((Instant::now(), e.to_string()));
                    }
                }
            }
        }
        let mut status = WireguardStatus {
            public_key: self.node.key.public_hex(),
            key_age_secs: Some(self.key_made.elapsed().unwrap_or_default().as_secs()),
            rotations_handled: self.handled,
            ..Default::default()
        };
        let wanted = match self.wanted(d) {
            Ok(w) => w,
            Err(e) => {
                status.error = Some(e);
                None
            }
        };
        if self.device.as_ref().map(|dev| dev.config()) != wanted.as_ref() {
            if let Some(old) = self.device.take() {
                info!(addr = %old.config().addr, port = old.config().port, "WireGuard device stopped");
            }
        }
        if let (None, Some(config)) = (&self.device, &wanted) {
            let wait =
                matches!(&self.failed, Some((c, at, _)) if c == config && at.elapsed() < RETRY);
            if !wait {
                match Device::start(&self.node.netns_dir, self.node.key.clone(), config.clone()) {
                    Ok(dev) => {
                        info!(addr = %config.addr, port = config.port, mtu = config.mtu, "WireGuard device started");
                        self.device = Some(dev);
                        self.failed = None;
                    }
                    Err(e) => {
                        warn!(error = %e, "starting the WireGuard device");
                        self.failed = Some((config.clone(), Instant::now(), e.to_string()));
                    }
                }
            }
        }
        if let Some(dev) = &self.device {
            let mut peers = BTreeMap::new();
            for (addr, text) in d.wireguard_peers.iter().flatten() {
                if *addr == dev.config().addr {
                    continue;
                }
                match key::parse_public(text) {
                    Ok(k) => {
                        peers.insert(*addr, k);
                    }
                    Err(e) => status.refused_peers.push(format!("{addr}: {e}")),
                }
            }
            let (added, removed) = dev.set_peers(&peers);
            if added + removed > 0 {
                info!(
                    added,
                    removed,
                    peers = peers.len(),
                    "WireGuard peers changed"
                );
            }
            status.running = true;
            status.addr = Some(dev.config().addr);
            status.port = Some(dev.config().port);
            status.mtu = Some(dev.config().mtu);
            status.stats = dev.stats();
        }
        if status.error.is_none() {
            status.error = self.failed.as_ref().map(|(_, _, e)| e.clone());
        }
        if status.error.is_none() {
            status.error =
                (self.rotation_failed.as_ref()).map(|(_, e)| format!("rotating the key: {e}"));
        }
        Some(status)
    }

    fn period(&self) -> Duration {
        PERIOD
    }
}

/// The count of rotation requests handled, kept in the data directory (0 when none is
/// kept: a node's record starts at 0).
fn read_handled(data_dir: &Path) -> u64 {
    std::fs::read_to_string(data_dir.join(ROTATION_FILE))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn write_handled(data_dir: &Path, handled: u64) -> io::Result<()> {
    let temp = data_dir.join(format!("{ROTATION_FILE}.new"));
    std::fs::write(&temp, format!("{handled}\n"))?;
    std::fs::rename(&temp, data_dir.join(ROTATION_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::state::{Network, OverlayState};

    fn reconciler() -> WireguardReconciler {
        reconciler_in(
            &std::env::temp_dir().join(format!("shoal-wg-unit-{}-none", std::process::id())),
            None,
        )
    }

    fn reconciler_in(data_dir: &Path, rotation_period: Option<Duration>) -> WireguardReconciler {
        WireguardReconciler::new(WireguardNode {
            netns_dir: std::env::temp_dir().join("shoal-wg-unit-never-made"),
            key: NodeKey::load_or_create(data_dir).unwrap(),
            vtep: "192.168.77.11".parse().unwrap(),
            underlay_mtu: 1500,
            data_path_port: 4789,
            data_dir: data_dir.to_path_buf(),
            rotation_period,
            public_key: tokio::sync::watch::channel(String::new()).0,
        })
    }

    #[test]
    fn keys_rotate_on_demand_once_per_request_and_on_schedule() {
        let dir = std::env::temp_dir().join(format!("shoal-wg-unit-{}-rot", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut r = reconciler_in(&dir, None);
        let mut published = r.node.public_key.subscribe();
        let first = r.node.key.public_hex();
        assert_eq!(*published.borrow_and_update(), first);
        let mut d = declared(false, true);
        // Nothing asked: the key stays.
        let s = r.reconcile(Some(&d), &[], Cue::Start).unwrap();
        assert_eq!(
            (s.public_key.as_str(), s.rotations_handled),
            (first.as_str(), 0)
        );
        // One request: one new key, kept, published, counted.
        d.wireguard_rotation = 1;
        let s = r.reconcile(Some(&d), &[], Cue::Start).unwrap();
        assert_ne!(s.public_key, first);
        assert_eq!(s.rotations_handled, 1);
        assert!(published.has_changed().unwrap());
        assert_eq!(*published.borrow_and_update(), s.public_key);
        let second = s.public_key;
        assert_eq!(NodeKey::load_or_create(&dir).unwrap().public_hex(), second);
        // The same count again (and after a restart, read back): no new key.
        let s = r.reconcile(Some(&d), &[], Cue::Start).unwrap();
        assert_eq!(s.public_key, second);
        let mut again = reconciler_in(&dir, None);
        let s = again.reconcile(Some(&d), &[], Cue::Start).unwrap();
        assert_eq!(
            (s.public_key.as_str(), s.rotations_handled),
            (second.as_str(), 1)
        );
        // Standalone (no cluster): nothing rotates.
        d.wireguard_rotation = 2;
        let mut alone = d.clone();
        alone.wireguard_peers = None;
        assert!(again.reconcile(Some(&alone), &[], Cue::Start).is_some());
        assert_eq!(again.node.key.public_hex(), second);
        // On schedule: a key older than the period is replaced, a young one is not.
        let mut scheduled = reconciler_in(&dir, Some(Duration::from_secs(3600)));
        d.wireguard_rotation = 1;
        let s = scheduled.reconcile(Some(&d), &[], Cue::Start).unwrap();
        assert_eq!(s.public_key, second, "young key kept");
        scheduled.key_made = SystemTime::now() - Duration::from_secs(3601);
        let s = scheduled.reconcile(Some(&d), &[], Cue::Start).unwrap();
        assert_ne!(s.public_key, second, "old key replaced");
        assert!(s.key_age_secs.unwrap() < 60);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn declared(encrypted: bool, cluster: bool) -> DeclaredNode {
        DeclaredNode {
            overlay: OverlayState {
                networks: vec![Network {
                    id: "n".into(),
                    vni: 4097,
                    subnet: "10.0.9.0/24".parse().unwrap(),
                    gateway: "10.0.9.1".parse().unwrap(),
                    mtu: None,
                    encrypted,
                }],
                ..Default::default()
            },
            wireguard_peers: cluster
                .then(|| BTreeMap::from([("192.168.77.12".parse().unwrap(), "ab".repeat(32))])),
            data_path_addr: Some("10.9.9.9".parse().unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn a_device_only_for_an_encrypted_network_in_a_cluster() {
        let r = reconciler();
        assert_eq!(
            r.wanted(&declared(false, true)),
            Ok(None),
            "plain networks only"
        );
        assert_eq!(r.wanted(&declared(true, false)), Ok(None), "no cluster");
        let want = r.wanted(&declared(true, true)).unwrap().unwrap();
        assert_eq!(want.addr, "10.9.9.9".parse::<Ipv4Addr>().unwrap());
        assert_eq!(want.port, 4790, "the data-path port + 1");
        assert_eq!(want.mtu, 1440);
        let mut last_port = declared(true, true);
        last_port.data_path_port = Some(u16::MAX);
        assert!(r
            .wanted(&last_port)
            .unwrap_err()
            .contains("no port for WireGuard"));
    }

    #[test]
    fn no_device_is_started_for_plain_networks() {
        let mut r = reconciler();
        let s = r
            .reconcile(Some(&declared(false, true)), &[], Cue::Start)
            .unwrap();
        assert!(
            !s.running && s.error.is_none() && s.stats.peers.is_empty(),
            "{s:?}"
        );
        assert!(r.device.is_none());
        assert!(
            r.reconcile(None, &[], Cue::Start).is_none(),
            "nothing declared yet"
        );
    }
}
