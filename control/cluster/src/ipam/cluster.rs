//! The cluster's allocators, rebuilt from the cluster store: [`Networks`],
//! [`Addresses`], [`PublishedPorts`].
//!
//! The store's objects are the record of what is allocated: a network carries its subnet,
//! gateway and VNI, a service its VIPs and published ports, a task its addresses. Whoever
//! allocates rebuilds the allocator it needs from its view of the store, takes what it
//! needs, and writes the result into the objects it proposes: there is no allocator state
//! beside the objects to keep in step with them, and a new leader has nothing to load.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    ops::RangeInclusive,
};

use ipnet::Ipv4Net;

use super::{
    AddressPool, IpamError, Millis, NumberPool, PoolConfig, SubnetAllocator, DEFAULT_HOLD_BACK,
};
use crate::store::{ClusterSpec, ClusterState, Protocol, TaskState};

/// The ingress network's VNI, as in Swarm.
pub const INGRESS_VNI: u32 = 4096;
/// The VNIs of user networks: after ingress's, up to VXLAN's 24 bits.
pub const NETWORK_VNIS: RangeInclusive<u32> = 4097..=0xFF_FFFF;
/// Swarm's range for the published ports the managers choose.
pub const DYNAMIC_PORTS: RangeInclusive<u16> = 30000..=32767;

impl PoolConfig {
    /// The pools `swarm init` recorded in the cluster settings; Swarm's default
    /// (10.0.0.0/8 in /24s) for what is not set. Host bits in a pool are dropped (older
    /// versions did not refuse them at `swarm init`).
    pub fn from_spec(spec: Option<&ClusterSpec>) -> PoolConfig {
        let default = PoolConfig::default();
        let Some(spec) = spec else {
            return default;
        };
        PoolConfig {
            pools: if spec.default_addr_pools.is_empty() {
                default.pools
            } else {
                spec.default_addr_pools.iter().map(Ipv4Net::trunc).collect()
            },
            subnet_prefix_len: match spec.subnet_prefix_len {
                0 => default.subnet_prefix_len,
                len => len,
            },
        }
    }
}

/// What a new network gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkAddressing {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub vni: u32,
}

/// The subnets and VNIs of the networks, to add one.
#[derive(Debug, Clone)]
pub struct Networks {
    subnets: SubnetAllocator,
    vnis: NumberPool,
}

impl Networks {
    /// No network yet (`swarm init`). Fails if the pool configuration is invalid.
    pub fn new(config: PoolConfig) -> Result<Self, IpamError> {
        Ok(Networks {
            subnets: SubnetAllocator::new(config, Vec::new())?,
            vnis: NumberPool::new("VNI", NETWORK_VNIS),
        })
    }

    /// The networks of `state`, with the pools of its cluster settings. Fails if those
    /// are invalid. Networks whose subnets overlap (which the store does not refuse)
    /// are taken as they are: the first one, by ID, is recorded.
    pub fn from_state(state: &ClusterState) -> Result<Self, IpamError> {
        let mut networks = Networks::new(PoolConfig::from_spec(state.cluster.as_ref()))?;
        for n in state.networks.values() {
            if let Some(subnet) = n.subnet {
                // An overlap is for the store's history to explain, not for new
                // networks to fail on: the overlapping part stays taken either way.
                let _ = networks.subnets.allocate_specific(&n.name, subnet.trunc());
            }
        }
        networks.vnis = NumberPool::restore(
            "VNI",
            NETWORK_VNIS,
            state.networks.values().filter_map(|n| n.vni),
        );
        Ok(networks)
    }

    /// The addressing of a new network named `name`: the `subnet` asked for (canonical,
    /// overlapping no other network's, room for a gateway and a task) or else the first
    /// free one of the pools; the `gateway` asked for (a usable address of the subnet) or
    /// else the subnet's first usable address; the VNI after the highest a user network
    /// has. Nothing is recorded when it fails.
    pub fn allocate(
        &mut self,
        name: &str,
        subnet: Option<Ipv4Net>,
        gateway: Option<Ipv4Addr>,
    ) -> Result<NetworkAddressing, IpamError> {
        let subnet = match subnet {
            Some(subnet) => {
                self.subnets.allocate_specific(name, subnet)?;
                subnet
            }
            None => self.subnets.allocate(name)?,
        };
        let gateway = self.gateway_of(subnet, gateway)?;
        let vni = self.vnis.allocate_after_highest().inspect_err(|_| {
            let _ = self.subnets.release(subnet);
        })?;
        Ok(NetworkAddressing {
            subnet,
            gateway,
            vni,
        })
    }

    /// The addressing of the ingress network: the first free subnet of the pools, its
    /// first usable address, [`INGRESS_VNI`].
    pub fn allocate_ingress(&mut self) -> Result<NetworkAddressing, IpamError> {
        let subnet = self.subnets.allocate("ingress")?;
        Ok(NetworkAddressing {
            subnet,
            gateway: self.gateway_of(subnet, None)?,
            vni: INGRESS_VNI,
        })
    }

    /// The gateway of a subnet just recorded (checking the subnet has room for a gateway
    /// and a task); the subnet is released if it fails.
    fn gateway_of(
        &mut self,
        subnet: Ipv4Net,
        gateway: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
        let pool = match gateway {
            Some(g) => AddressPool::with_gateway(subnet, g, DEFAULT_HOLD_BACK),
            None => AddressPool::new(subnet, DEFAULT_HOLD_BACK),
        };
        pool.map(|p| p.gateway()).inspect_err(|_| {
            let _ = self.subnets.release(subnet);
        })
    }
}

/// Task addresses and VIPs: one pool per network with a subnet.
///
/// In use: the gateway, every service's VIPs, the addresses of every task that runs or
/// may still run (told to run, or not yet ended), and of every attached container. An ended task kept as history released
/// its addresses when it ended (its status time): they are held back for
/// [`DEFAULT_HOLD_BACK`] from then. See [`AddressPool::restore`] for the order addresses
/// are handed out in.
#[derive(Debug, Clone)]
pub struct Addresses {
    now: Millis,
    /// By network ID; why not, for a network whose subnet or gateway is unusable.
    pools: HashMap<String, Result<AddressPool, IpamError>>,
}

impl Addresses {
    /// The addresses recorded in `state`, at time `now`.
    pub fn from_state(state: &ClusterState, now: Millis) -> Self {
        let mut in_use: HashMap<&str, Vec<Ipv4Addr>> = HashMap::new();
        let mut released: HashMap<&str, Vec<(Ipv4Addr, Millis)>> = HashMap::new();
        for v in state
            .services
            .values()
            .flat_map(|s| &s.endpoint.virtual_ips)
        {
            in_use.entry(&v.network_id).or_default().push(v.addr.addr());
        }
        for t in state.tasks.values() {
            let live = t.desired_state == TaskState::Running || !t.status.state.is_terminal();
            for a in &t.networks {
                if live {
                    in_use.entry(&a.network_id).or_default().push(a.addr.addr());
                } else {
                    let at = Millis(t.status.timestamp_ms);
                    released
                        .entry(&a.network_id)
                        .or_default()
                        .push((a.addr.addr(), at));
                }
            }
        }
        // Containers that are not tasks: in use while attached; a detached one's address
        // is no longer mentioned anywhere (free, after the never-used ones).
        for a in state.attachments.values() {
            if let Some(addr) = a.addr {
                in_use.entry(&a.network_id).or_default().push(addr.addr());
            }
        }
        let pools = state
            .networks
            .values()
            .filter_map(|n| {
                let subnet = n.subnet?.trunc();
                let pool = match n.gateway {
                    Some(gateway) => Ok(gateway),
                    None => AddressPool::new(subnet, DEFAULT_HOLD_BACK).map(|p| p.gateway()),
                }
                .and_then(|gateway| {
                    AddressPool::restore(
                        subnet,
                        gateway,
                        DEFAULT_HOLD_BACK,
                        in_use.remove(n.id.as_str()).unwrap_or_default(),
                        released.remove(n.id.as_str()).unwrap_or_default(),
                    )
                });
                Some((n.id.clone(), pool))
            })
            .collect();
        Addresses { now, pools }
    }

    /// An address on network `network_id` for a task or a VIP, with the subnet's
    /// prefix length (`10.0.1.5/24`).
    pub fn allocate(&mut self, network_id: &str) -> Result<Ipv4Net, IpamError> {
        let pool = self
            .pools
            .get_mut(network_id)
            .ok_or_else(|| IpamError::NoSubnet {
                network: network_id.to_owned(),
            })?
            .as_mut()
            .map_err(|e| e.clone())?;
        let addr = pool.allocate(self.now)?;
        Ok(Ipv4Net::new(addr, pool.subnet().prefix_len()).expect("the subnet's prefix length"))
    }
}

/// The published ports of the services, per protocol, to choose free ones in
/// [`DYNAMIC_PORTS`].
#[derive(Debug, Clone)]
pub struct PublishedPorts {
    pools: BTreeMap<Protocol, NumberPool>,
}

impl PublishedPorts {
    /// The ports every service of `state` publishes.
    pub fn from_state(state: &ClusterState) -> Self {
        let mut ports = PublishedPorts {
            pools: BTreeMap::new(),
        };
        for p in state.services.values().flat_map(|s| &s.spec.ports) {
            ports.claim(p.protocol, p.published);
        }
        ports
    }

    /// Records `port` as published, so that ports chosen later avoid it. A port outside
    /// [`DYNAMIC_PORTS`] needs no record; whether another service publishes it already
    /// is the store's check, not this one's.
    pub fn claim(&mut self, protocol: Protocol, port: u16) {
        let pool = self.pool(protocol);
        if pool.contains(port.into()) && !pool.is_used(port.into()) {
            let _ = pool.allocate_specific(port.into());
        }
    }

    /// The lowest free port of [`DYNAMIC_PORTS`] for `protocol`.
    pub fn allocate(&mut self, protocol: Protocol) -> Result<u16, IpamError> {
        let port = self.pool(protocol).allocate_lowest()?;
        Ok(u16::try_from(port).expect("DYNAMIC_PORTS holds ports"))
    }

    fn pool(&mut self, protocol: Protocol) -> &mut NumberPool {
        self.pools.entry(protocol).or_insert_with(|| {
            let (first, last) = DYNAMIC_PORTS.into_inner();
            NumberPool::new("port", first.into()..=last.into())
        })
    }
}

#[cfg(test)]
mod tests;
