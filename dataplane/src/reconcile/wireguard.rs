//! The WireGuard device as the agent runs it: it runs while the node has an encrypted
//! network (plain networks pay nothing), at this node's data-path address on the
//! cluster's WireGuard port (the data-path port + 1), and its peers are exactly the
//! declared ones: every other node with a registered key. A node removed from the
//! cluster leaves the declared state, and its sessions go with it at once.
//!
//! `<data_dir>/wireguard.json` shows the device, its counters (foreign, garbage,
//! replayed and spoofed datagrams dropped) and each peer's session, handshakes, packets,
//! bytes and drops; it is written on every change and every [`PERIOD`].
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
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
}

/// What `wireguard.json` holds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct WireguardStatus {
    pub running: bool,
    pub public_key: String,
    pub addr: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub mtu: Option<u32>,
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
}

impl WireguardReconciler {
    pub fn new(node: WireguardNode) -> Self {
        info!(public_key = %node.key.public_hex(), "WireGuard identity loaded");
        WireguardReconciler {
            node,
            device: None,
            failed: None,
        }
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
        let mut status = WireguardStatus {
            public_key: self.node.key.public_hex(),
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
        Some(status)
    }

    fn period(&self) -> Duration {
        PERIOD
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::state::{Network, OverlayState};

    fn reconciler() -> WireguardReconciler {
        WireguardReconciler::new(WireguardNode {
            netns_dir: std::env::temp_dir().join("shoal-wg-unit-never-made"),
            key: NodeKey::generate().unwrap(),
            vtep: "192.168.77.11".parse().unwrap(),
            underlay_mtu: 1500,
            data_path_port: 4789,
        })
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
