//! Declared load-balancing state of one node: the services this node must balance, their
//! virtual IPs, published ports and backends (tasks, on this node or another). Plain
//! data, serializable, checked as a whole by [`LbState::validate`] against the node's
//! overlay state before any map is touched; a refused state leaves the last good one in
//! force.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::Ipv4Addr,
};

use serde::{Deserialize, Serialize};

use crate::overlay::state::OverlayState;

/// A node this one cannot reach by its own probes, as [`LbState::drain_unreachable`]
/// takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreached {
    /// Unreachable: no new flow to its backends from here.
    Draining,
    /// Unreachable for long: none of its flows either.
    Lost,
}

/// The whole declared load-balancing state of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbState {
    /// The overlay network that carries routing-mesh traffic between nodes (Swarm's
    /// `ingress`). Required as soon as any service publishes a port in ingress mode.
    #[serde(default)]
    pub ingress_network: Option<String>,
    #[serde(default)]
    pub services: Vec<Service>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Cluster-wide service ID.
    pub id: String,
    /// Service name (for stats and messages).
    pub name: String,
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// How a backend is chosen for a new flow on its published ports (a port may say
    /// otherwise).
    #[serde(default)]
    pub balance: Balance,
    /// One virtual IP per network the service is on (vip mode only). Connections to a
    /// VIP, on any port, go to a backend's address on that network, same port (as
    /// Swarm's IPVS fwmark service does).
    #[serde(default)]
    pub vips: Vec<Vip>,
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
    #[serde(default)]
    pub backends: Vec<Backend>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    #[default]
    Vip,
    Dnsrr,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Per new flow, the next backend in turn (Swarm's). A connection whose flow entry
    /// is lost (evicted under pressure) is cut at its next segment.
    RoundRobin,
    /// Maglev consistent hashing of the flow's client address and port: every node
    /// picks the same backend for the same flow, with or without a flow entry, so a
    /// connection whose entry was evicted still reaches its backend.
    #[default]
    Maglev,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    pub network: String,
    pub address: Ipv4Addr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Answers on every node's addresses; reaches a backend on any node.
    #[default]
    Ingress,
    /// Answers only on nodes running a backend, straight to the local backend.
    Host,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedPort {
    pub protocol: Protocol,
    pub published: u16,
    pub target: u16,
    #[serde(default)]
    pub mode: PublishMode,
    /// How this port balances; none: as its service says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<Balance>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Task ID.
    pub task: String,
    /// Underlay address (VTEP) of the node running the task.
    pub node: Ipv4Addr,
    /// The task's address on each network it is attached to, by network ID.
    pub addresses: BTreeMap<String, Ipv4Addr>,
    #[serde(default)]
    pub state: BackendState,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Gets new flows.
    #[default]
    Healthy,
    /// Gets no new flows; its existing flows are cut (no packets go to it).
    Unhealthy,
    /// Gets no new flows; its existing flows keep going to it until they end.
    Draining,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LbStateError {
    #[error("service {0:?} is declared twice")]
    DuplicateService(String),
    #[error("service {service:?}: published port {port} must be 1..=65535")]
    PortOutOfRange { service: String, port: u16 },
    #[error("service {service:?}: target port {port} must be 1..=65535")]
    TargetOutOfRange { service: String, port: u16 },
    #[error("published port {port}/{protocol} is used by both {first:?} and {second:?}")]
    PortUsedTwice {
        port: u16,
        protocol: Protocol,
        first: String,
        second: String,
    },
    #[error(
        "service {service:?} publishes a port in ingress mode but no ingress network is declared"
    )]
    NoIngressNetwork { service: String },
    #[error("ingress network {0:?} is not a declared overlay network")]
    UnknownIngressNetwork(String),
    #[error("service {service:?}: {what} is on unknown network {network:?}")]
    UnknownNetwork {
        service: String,
        what: String,
        network: String,
    },
    #[error("service {service:?}: {what} {address} is outside network {network:?} ({subnet})")]
    OutsideSubnet {
        service: String,
        what: String,
        address: Ipv4Addr,
        network: String,
        subnet: String,
    },
    #[error("service {service:?} in dnsrr mode cannot have virtual IPs")]
    DnsrrWithVip { service: String },
    #[error("service {service:?} has two virtual IPs on network {network:?}")]
    DuplicateVip { service: String, network: String },
    #[error("virtual IP {address} is declared twice ({first:?}, {second:?})")]
    VipUsedTwice {
        address: Ipv4Addr,
        first: String,
        second: String,
    },
    #[error("service {service:?}: backend {task:?} is declared twice")]
    DuplicateBackend { service: String, task: String },
    #[error("service {service:?}: backend {task:?} has no address on network {network:?}, which the service uses")]
    BackendNotOnNetwork {
        service: String,
        task: String,
        network: String,
    },
}

impl LbState {
    /// Checks the state as a whole against the node's overlay state; the first problem
    /// found is returned.
    pub fn validate(&self, overlay: &OverlayState) -> Result<(), LbStateError> {
        if let Some(ingress) = &self.ingress_network {
            if overlay.network(ingress).is_none() {
                return Err(LbStateError::UnknownIngressNetwork(ingress.clone()));
            }
        }
        let mut ids = HashSet::new();
        let mut published: HashMap<(Protocol, u16), &str> = HashMap::new();
        let mut vips: HashMap<Ipv4Addr, &str> = HashMap::new();
        for s in &self.services {
            if !ids.insert(s.id.as_str()) {
                return Err(LbStateError::DuplicateService(s.id.clone()));
            }
            if s.endpoint_mode == EndpointMode::Dnsrr && !s.vips.is_empty() {
                return Err(LbStateError::DnsrrWithVip {
                    service: s.id.clone(),
                });
            }
            let in_subnet = |what: String, network: &str, address: Ipv4Addr| {
                let n = overlay
                    .network(network)
                    .ok_or_else(|| LbStateError::UnknownNetwork {
                        service: s.id.clone(),
                        what: what.clone(),
                        network: network.to_string(),
                    })?;
                if !n.subnet.contains(&address) {
                    return Err(LbStateError::OutsideSubnet {
                        service: s.id.clone(),
                        what,
                        address,
                        network: network.to_string(),
                        subnet: n.subnet.to_string(),
                    });
                }
                Ok(())
            };
            let mut vip_networks = HashSet::new();
            for v in &s.vips {
                in_subnet("virtual IP".into(), &v.network, v.address)?;
                if !vip_networks.insert(v.network.as_str()) {
                    return Err(LbStateError::DuplicateVip {
                        service: s.id.clone(),
                        network: v.network.clone(),
                    });
                }
                if let Some(first) = vips.insert(v.address, &s.id) {
                    return Err(LbStateError::VipUsedTwice {
                        address: v.address,
                        first: first.to_string(),
                        second: s.id.clone(),
                    });
                }
            }
            let mut needs_ingress = false;
            for p in &s.ports {
                if p.published == 0 {
                    return Err(LbStateError::PortOutOfRange {
                        service: s.id.clone(),
                        port: p.published,
                    });
                }
                if p.target == 0 {
                    return Err(LbStateError::TargetOutOfRange {
                        service: s.id.clone(),
                        port: p.target,
                    });
                }
                if let Some(first) = published.insert((p.protocol, p.published), &s.id) {
                    return Err(LbStateError::PortUsedTwice {
                        port: p.published,
                        protocol: p.protocol,
                        first: first.to_string(),
                        second: s.id.clone(),
                    });
                }
                needs_ingress |= p.mode == PublishMode::Ingress;
            }
            if needs_ingress && self.ingress_network.is_none() {
                return Err(LbStateError::NoIngressNetwork {
                    service: s.id.clone(),
                });
            }
            // Networks every backend must be on: each VIP's, and ingress when published.
            let mut required: Vec<&str> = s.vips.iter().map(|v| v.network.as_str()).collect();
            if needs_ingress {
                required.extend(self.ingress_network.as_deref());
            }
            let mut tasks = HashSet::new();
            for b in &s.backends {
                if !tasks.insert(b.task.as_str()) {
                    return Err(LbStateError::DuplicateBackend {
                        service: s.id.clone(),
                        task: b.task.clone(),
                    });
                }
                for (network, address) in &b.addresses {
                    in_subnet(format!("backend {:?}", b.task), network, *address)?;
                }
                for network in &required {
                    if !b.addresses.contains_key(*network) {
                        return Err(LbStateError::BackendNotOnNetwork {
                            service: s.id.clone(),
                            task: b.task.clone(),
                            network: network.to_string(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes out of this node's load balancing the healthy backends on the nodes of
    /// `unreachable` (underlay addresses this node cannot reach now, by its own probes):
    /// on a [`Unreached::Draining`] node they become draining (no new flow or connection
    /// from this node, a retransmitted SYN included; the flows they have are left
    /// alone, kept if the verdict was wrong), on a [`Unreached::Lost`] one unhealthy
    /// (their flows move too: with Maglev, to a backend that resets them, and the client
    /// opens a new connection instead of waiting on a path that is gone). A service
    /// whose every healthy backend is on such a node is left as it is: sending nowhere
    /// would not serve it better. Returns how many backends it changed.
    pub fn drain_unreachable(&mut self, unreachable: &BTreeMap<Ipv4Addr, Unreached>) -> usize {
        if unreachable.is_empty() {
            return 0;
        }
        let mut changed = 0;
        for s in &mut self.services {
            let reachable_healthy = s
                .backends
                .iter()
                .any(|b| b.state == BackendState::Healthy && !unreachable.contains_key(&b.node));
            if !reachable_healthy {
                continue;
            }
            for b in &mut s.backends {
                if b.state != BackendState::Healthy {
                    continue;
                }
                b.state = match unreachable.get(&b.node) {
                    None => continue,
                    Some(Unreached::Draining) => BackendState::Draining,
                    Some(Unreached::Lost) => BackendState::Unhealthy,
                };
                changed += 1;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::state::Network;

    fn overlay() -> OverlayState {
        let net = |id: &str, vni, subnet: &str, gw: &str| Network {
            id: id.into(),
            vni,
            subnet: subnet.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            mtu: None,
            encrypted: false,
        };
        OverlayState {
            networks: vec![
                net("ingress", 4096, "10.255.0.0/16", "10.255.0.1"),
                net("web", 4097, "10.0.1.0/24", "10.0.1.1"),
            ],
            ..Default::default()
        }
    }

    fn good() -> LbState {
        serde_json::from_str(
            r#"{
              "ingress_network": "ingress",
              "services": [{
                "id": "s1", "name": "myweb",
                "vips": [{"network": "web", "address": "10.0.1.2"}],
                "ports": [{"protocol": "tcp", "published": 8080, "target": 80}],
                "backends": [
                  {"task": "t1", "node": "192.168.77.11",
                   "addresses": {"web": "10.0.1.3", "ingress": "10.255.0.3"}},
                  {"task": "t2", "node": "192.168.77.12", "state": "draining",
                   "addresses": {"web": "10.0.1.4", "ingress": "10.255.0.4"}}
                ]
              }]
            }"#,
        )
        .unwrap()
    }

    #[test]
    fn good_state_passes() {
        good().validate(&overlay()).unwrap();
    }

    fn refused(edit: impl FnOnce(&mut LbState), expected: &str) {
        let mut s = good();
        edit(&mut s);
        let err = s.validate(&overlay()).unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "{err:?} does not mention {expected:?}"
        );
    }

    #[test]
    fn bad_states_are_refused_with_a_clear_message() {
        refused(
            |s| {
                let mut t = s.services[0].clone();
                t.id = "s2".into();
                t.vips.clear();
                s.services.push(t);
            },
            "8080/tcp is used by both",
        );
        refused(|s| s.services[0].ports[0].published = 0, "1..=65535");
        refused(
            |s| {
                s.services[0].backends[0]
                    .addresses
                    .insert("nope".into(), "10.9.0.1".parse().unwrap())
                    .map(|_| ())
                    .unwrap_or(())
            },
            "unknown network \"nope\"",
        );
        refused(|s| s.ingress_network = None, "no ingress network");
        refused(
            |s| {
                s.services[0].backends[1].addresses.remove("ingress");
            },
            "has no address on network \"ingress\"",
        );
        refused(
            |s| s.services[0].vips[0].address = "10.0.2.2".parse().unwrap(),
            "outside network",
        );
        refused(
            |s| s.services[0].endpoint_mode = EndpointMode::Dnsrr,
            "dnsrr",
        );
    }

    #[test]
    fn backends_on_unreachable_nodes_get_no_new_flows_unless_none_would_be_left() {
        let node = |n: u8| Ipv4Addr::new(192, 168, 77, n);
        let mut s = good();
        // A third backend, healthy, on another node.
        let mut t3 = s.services[0].backends[0].clone();
        t3.task = "t3".into();
        t3.node = node(13);
        s.services[0].backends.push(t3);
        let states = |s: &LbState| -> Vec<BackendState> {
            s.services[0].backends.iter().map(|b| b.state).collect()
        };
        use BackendState::{Draining, Healthy, Unhealthy};
        let cut = |nodes: &[(u8, Unreached)]| -> BTreeMap<Ipv4Addr, Unreached> {
            nodes.iter().map(|(n, u)| (node(*n), *u)).collect()
        };

        let mut none = s.clone();
        assert_eq!(none.drain_unreachable(&BTreeMap::new()), 0);
        assert_eq!(none, s);

        // t1's node unreachable: t1 drains, t2 stays draining, t3 healthy.
        let mut one = s.clone();
        assert_eq!(one.drain_unreachable(&cut(&[(11, Unreached::Draining)])), 1);
        assert_eq!(states(&one), [Draining, Draining, Healthy]);
        one.validate(&overlay()).unwrap();
        // Nothing else changes: addresses, ports, the other services.
        let mut back = one.clone();
        back.services[0].backends[0].state = Healthy;
        assert_eq!(back, s);

        // Unreachable for long: its flows are given up too.
        let mut lost = s.clone();
        assert_eq!(lost.drain_unreachable(&cut(&[(11, Unreached::Lost)])), 1);
        assert_eq!(states(&lost), [Unhealthy, Draining, Healthy]);
        lost.validate(&overlay()).unwrap();

        // Every healthy backend's node unreachable: left as it is.
        let mut all = s.clone();
        let both = cut(&[(11, Unreached::Lost), (13, Unreached::Draining)]);
        assert_eq!(all.drain_unreachable(&both), 0);
        assert_eq!(all, s);

        // An unhealthy backend on an unreachable node stays unhealthy.
        let mut sick = s.clone();
        sick.services[0].backends[0].state = Unhealthy;
        let before = sick.clone();
        assert_eq!(
            sick.drain_unreachable(&cut(&[(11, Unreached::Draining)])),
            0
        );
        assert_eq!(sick, before);
    }

    #[test]
    fn out_of_range_port_is_a_parse_error() {
        let err = serde_json::from_str::<PublishedPort>(
            r#"{"protocol":"tcp","published":70000,"target":80}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("70000"), "{err}");
    }
}
