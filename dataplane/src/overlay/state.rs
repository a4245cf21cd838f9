//! Declared overlay state of one node: what the control plane (or, until it exists, a
//! file) says should exist. Plain data, serializable, checked as a whole by
//! [`OverlayState::validate`] before anything touches the kernel.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::Ipv4Addr,
    str::FromStr,
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Default VXLAN UDP port (IANA; Swarm's `--data-path-port` default).
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// VXLAN over IPv4 adds 50 bytes: outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8.
pub const VXLAN_OVERHEAD: u32 = 50;
/// What an encrypted network's frames carry more: WireGuard over IPv4 (outer IPv4 and
/// UDP, WireGuard's data header and tag), so nothing fragments on the underlay.
pub const ENCRYPTION_OVERHEAD: u32 = crate::wireguard::OVERHEAD;

/// The whole declared overlay state of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayState {
    #[serde(default)]
    pub networks: Vec<Network>,
    #[serde(default)]
    pub local_endpoints: Vec<LocalEndpoint>,
    #[serde(default)]
    pub remote_endpoints: Vec<RemoteEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Cluster-wide network ID (name or ID; endpoints refer to it).
    pub id: String,
    /// VXLAN network identifier, 1..=16777215.
    pub vni: u32,
    pub subnet: Ipv4Net,
    /// The gateway address, held by the network's bridge on every node.
    pub gateway: Ipv4Addr,
    /// MTU inside the overlay; derived from the underlay when absent.
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub encrypted: bool,
}

/// A container on this node attached to a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalEndpoint {
    pub network: String,
    /// Docker container ID or name; the agent finds its network namespace through the
    /// container's PID. A container with several endpoints gets eth0, eth1, ... in the
    /// order its endpoints appear here; the first carries its replies (policy routing).
    pub container: String,
    pub ip: Ipv4Addr,
    /// Derived from the IP when absent (02:42:a.b.c.d, as Docker does).
    #[serde(default)]
    pub mac: Option<Mac>,
}

/// An endpoint on another node, reached through that node's VTEP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteEndpoint {
    pub network: String,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub mac: Option<Mac>,
    /// Underlay address of the node the endpoint lives on.
    pub vtep: Ipv4Addr,
}

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The MAC Docker derives from an IPv4 address: 02:42 then the four address bytes.
    /// Locally administered, unicast, and the same on every node for one IP.
    pub fn from_ip(ip: Ipv4Addr) -> Self {
        let [a, b, c, d] = ip.octets();
        Mac([0x02, 0x42, a, b, c, d])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "bad MAC address {s:?}: want six hex bytes separated by ':'"
            ));
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            *o = u8::from_str_radix(p, 16)
                .ok()
                .filter(|_| p.len() == 2)
                .ok_or_else(|| format!("bad MAC address {s:?}"))?;
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a declared state was refused. The whole state is refused; nothing is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("network {0:?} is declared twice")]
    DuplicateNetwork(String),
    #[error("networks {a:?} and {b:?} both use VNI {vni}")]
    DuplicateVni { a: String, b: String, vni: u32 },
    #[error("network {id:?}: VNI {vni} is outside 1..=16777215")]
    BadVni { id: String, vni: u32 },
    #[error("networks {a:?} ({a_subnet}) and {b:?} ({b_subnet}) overlap")]
    OverlappingSubnets {
        a: String,
        a_subnet: Ipv4Net,
        b: String,
        b_subnet: Ipv4Net,
    },
    #[error("network {id:?}: gateway {gateway} is not a host address of {subnet}")]
    BadGateway {
        id: String,
        gateway: Ipv4Addr,
        subnet: Ipv4Net,
    },
    #[error("network {id:?}: MTU {mtu} is outside 576..=65535")]
    BadMtu { id: String, mtu: u32 },
    #[error("{kind} endpoint {ip} names unknown network {network:?}")]
    UnknownNetwork {
        kind: &'static str,
        ip: Ipv4Addr,
        network: String,
    },
    #[error("{kind} endpoint {ip} is outside network {network:?} ({subnet})")]
    OutsideSubnet {
        kind: &'static str,
        ip: Ipv4Addr,
        network: String,
        subnet: Ipv4Net,
    },
    #[error("endpoint {ip} on network {network:?} is the network's gateway, network or broadcast address")]
    ReservedAddress { ip: Ipv4Addr, network: String },
    #[error("two endpoints on network {network:?} have address {ip}")]
    DuplicateIp { ip: Ipv4Addr, network: String },
    #[error("two endpoints on network {network:?} have MAC {mac}")]
    DuplicateMac { mac: Mac, network: String },
    #[error("container {container:?} is attached to network {network:?} twice")]
    DuplicateAttachment { container: String, network: String },
    #[error("a MAC address must be unicast; {mac} (endpoint {ip}) is multicast")]
    MulticastMac { mac: Mac, ip: Ipv4Addr },
}

impl OverlayState {
    /// Checks the state as a whole; on success every endpoint's network exists, every
    /// address fits its subnet and is unique in its network, and every network is
    /// consistent with the others.
    pub fn validate(&self) -> Result<(), StateError> {
        let mut by_id: HashMap<&str, &Network> = HashMap::new();
        let mut by_vni: HashMap<u32, &str> = HashMap::new();
        for n in &self.networks {
            if by_id.insert(&n.id, n).is_some() {
                return Err(StateError::DuplicateNetwork(n.id.clone()));
            }
            if n.vni == 0 || n.vni > 0xff_ffff {
                return Err(StateError::BadVni {
                    id: n.id.clone(),
                    vni: n.vni,
                });
            }
            if let Some(other) = by_vni.insert(n.vni, &n.id) {
                return Err(StateError::DuplicateVni {
                    a: other.to_owned(),
                    b: n.id.clone(),
                    vni: n.vni,
                });
            }
            if !is_host_address(n.subnet, n.gateway) {
                return Err(StateError::BadGateway {
                    id: n.id.clone(),
                    gateway: n.gateway,
                    subnet: n.subnet,
                });
            }
            if let Some(mtu) = n.mtu {
                if !(576..=65535).contains(&mtu) {
                    return Err(StateError::BadMtu {
                        id: n.id.clone(),
                        mtu,
                    });
                }
            }
        }
        let mut sorted: Vec<&Network> = self.networks.iter().collect();
        sorted.sort_by_key(|n| (n.subnet.network(), n.subnet.prefix_len()));
        for w in sorted.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a.subnet.contains(&b.subnet.network()) || b.subnet.contains(&a.subnet.network()) {
                return Err(StateError::OverlappingSubnets {
                    a: a.id.clone(),
                    a_subnet: a.subnet,
                    b: b.id.clone(),
                    b_subnet: b.subnet,
                });
            }
        }

        let mut ips: HashSet<(&str, Ipv4Addr)> = HashSet::new();
        let mut macs: HashSet<(&str, Mac)> = HashSet::new();
        let mut attachments: HashSet<(&str, &str)> = HashSet::new();
        let endpoints = self
            .local_endpoints
            .iter()
            .map(|e| ("local", &e.network, e.ip, e.mac))
            .chain(
                self.remote_endpoints
                    .iter()
                    .map(|e| ("remote", &e.network, e.ip, e.mac)),
            );
        for (kind, network, ip, mac) in endpoints {
            let n = by_id
                .get(network.as_str())
                .ok_or_else(|| StateError::UnknownNetwork {
                    kind,
                    ip,
                    network: network.clone(),
                })?;
            if !n.subnet.contains(&ip) {
                return Err(StateError::OutsideSubnet {
                    kind,
                    ip,
                    network: network.clone(),
                    subnet: n.subnet,
                });
            }
            if ip == n.gateway || !is_host_address(n.subnet, ip) {
                return Err(StateError::ReservedAddress {
                    ip,
                    network: network.clone(),
                });
            }
            if !ips.insert((network, ip)) {
                return Err(StateError::DuplicateIp {
                    ip,
                    network: network.clone(),
                });
            }
            let mac = mac.unwrap_or_else(|| Mac::from_ip(ip));
            if mac.0[0] & 1 == 1 {
                return Err(StateError::MulticastMac { mac, ip });
            }
            if !macs.insert((network, mac)) {
                return Err(StateError::DuplicateMac {
                    mac,
                    network: network.clone(),
                });
            }
        }
        for e in &self.local_endpoints {
            if !attachments.insert((&e.container, &e.network)) {
                return Err(StateError::DuplicateAttachment {
                    container: e.container.clone(),
                    network: e.network.clone(),
                });
            }
        }
        Ok(())
    }

    /// Local endpoints grouped by container, in declared order (eth0 first).
    pub fn containers(&self) -> BTreeMap<&str, Vec<&LocalEndpoint>> {
        let mut out: BTreeMap<&str, Vec<&LocalEndpoint>> = BTreeMap::new();
        for e in &self.local_endpoints {
            out.entry(&e.container).or_default().push(e);
        }
        out
    }

    pub fn network(&self, id: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.id == id)
    }
}

/// True for an address of `subnet` that is neither its network nor its broadcast address
/// (for /31 and /32 every address is a host address).
fn is_host_address(subnet: Ipv4Net, ip: Ipv4Addr) -> bool {
    subnet.contains(&ip)
        && (subnet.prefix_len() >= 31 || (ip != subnet.network() && ip != subnet.broadcast()))
}

/// The MTU of a network given the underlay's.
pub fn overlay_mtu(network: &Network, underlay_mtu: u32) -> u32 {
    network.mtu.unwrap_or_else(|| {
        let overhead = VXLAN_OVERHEAD
            + if network.encrypted {
                ENCRYPTION_OVERHEAD
            } else {
                0
            };
        underlay_mtu.saturating_sub(overhead)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_state() -> OverlayState {
        serde_json::from_str(
            r#"{
              "networks": [
                {"id": "web", "vni": 4097, "subnet": "10.0.9.0/24", "gateway": "10.0.9.1"},
                {"id": "db", "vni": 4098, "subnet": "10.0.10.0/24", "gateway": "10.0.10.1", "mtu": 1400}
              ],
              "local_endpoints": [{"network": "web", "container": "c1", "ip": "10.0.9.2"}],
              "remote_endpoints": [
                {"network": "web", "ip": "10.0.9.3", "vtep": "192.168.77.12"},
                {"network": "db", "ip": "10.0.10.3", "mac": "02:00:00:00:00:01", "vtep": "192.168.77.12"}
              ]
            }"#,
        )
        .expect("parse")
    }

    fn refused(edit: impl FnOnce(&mut OverlayState), expected: &str) {
        let mut s = ok_state();
        edit(&mut s);
        let err = s.validate().expect_err("must be refused").to_string();
        assert!(
            err.contains(expected),
            "error {err:?} should mention {expected:?}"
        );
    }

    #[test]
    fn a_good_state_passes_and_round_trips() {
        let s = ok_state();
        s.validate().expect("valid");
        let again: OverlayState =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn contradictions_are_refused_naming_the_problem() {
        refused(
            |s| s.remote_endpoints[0].ip = "10.0.9.2".parse().unwrap(),
            "10.0.9.2",
        );
        refused(
            |s| s.remote_endpoints[0].ip = "10.0.99.3".parse().unwrap(),
            "outside",
        );
        refused(
            |s| s.local_endpoints[0].network = "nope".into(),
            "unknown network \"nope\"",
        );
        refused(
            |s| s.local_endpoints[0].ip = "10.0.9.1".parse().unwrap(),
            "gateway",
        );
        refused(
            |s| s.local_endpoints[0].ip = "10.0.9.255".parse().unwrap(),
            "broadcast",
        );
        refused(|s| s.networks[1].vni = 4097, "VNI 4097");
        refused(|s| s.networks[1].vni = 1 << 24, "outside 1..=16777215");
        refused(
            |s| s.networks[1].subnet = "10.0.0.0/16".parse().unwrap(),
            "overlap",
        );
        refused(
            |s| s.networks[1].gateway = "10.0.11.1".parse().unwrap(),
            "not a host address",
        );
        refused(|s| s.networks[1].mtu = Some(100), "MTU 100");
        refused(|s| s.networks.push(s.networks[0].clone()), "declared twice");
        refused(
            |s| s.remote_endpoints[1].mac = Some("03:00:00:00:00:01".parse().unwrap()),
            "multicast",
        );
        refused(
            |s| {
                s.remote_endpoints[0].mac = Some(Mac::from_ip("10.0.9.2".parse().unwrap()));
            },
            "MAC 02:42:0a:00:09:02",
        );
        refused(
            |s| {
                let mut again = s.local_endpoints[0].clone();
                again.ip = "10.0.9.20".parse().unwrap();
                s.local_endpoints.push(again);
            },
            "twice",
        );
    }

    #[test]
    fn unknown_fields_and_bad_macs_fail_to_parse() {
        assert!(serde_json::from_str::<OverlayState>(r#"{"netwrks": []}"#).is_err());
        assert!("02:42:0a:00:09".parse::<Mac>().is_err());
        assert!("zz:42:0a:00:09:02".parse::<Mac>().is_err());
        assert_eq!(
            "02:42:0a:00:09:02".parse::<Mac>().unwrap(),
            Mac::from_ip("10.0.9.2".parse().unwrap())
        );
    }

    #[test]
    fn mtu_follows_the_underlay() {
        let s = ok_state();
        assert_eq!(overlay_mtu(&s.networks[0], 1500), 1450);
        assert_eq!(overlay_mtu(&s.networks[1], 1500), 1400, "declared MTU wins");
        let mut enc = s.networks[0].clone();
        enc.encrypted = true;
        assert_eq!(overlay_mtu(&enc, 1500), 1390, "VXLAN 50 and WireGuard 60");
    }
}
