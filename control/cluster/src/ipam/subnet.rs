//! Network subnets: [`PoolConfig`] and [`SubnetAllocator`].

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{check_canonical, overlaps, IpamError};

/// Longest subnet prefix a network can get from the pools: a /30 holds a gateway and
/// one task.
const MAX_SUBNET_PREFIX_LEN: u8 = 30;

/// The default address pools networks get their subnets from when none is requested
/// (`docker swarm init --default-addr-pool CIDR ... --default-addr-pool-mask-length N`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// The pools, used in this order. They must not overlap.
    pub pools: Vec<Ipv4Net>,
    /// The prefix length of each network's subnet, at least every pool's own.
    pub subnet_prefix_len: u8,
}

impl Default for PoolConfig {
    /// Swarm's default: 10.0.0.0/8 cut into /24s.
    fn default() -> Self {
        PoolConfig {
            pools: vec![Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 8).expect("/8 is valid")],
            subnet_prefix_len: 24,
        }
    }
}

impl PoolConfig {
    /// Checks that there is a pool, that pools are canonical and disjoint, and that the
    /// subnet size fits every pool and leaves room for a gateway and a task.
    pub fn validate(&self) -> Result<(), IpamError> {
        if self.pools.is_empty() {
            return Err(IpamError::NoPools);
        }
        if self.subnet_prefix_len > MAX_SUBNET_PREFIX_LEN {
            return Err(IpamError::PrefixTooLong {
                prefix_len: self.subnet_prefix_len,
                max: MAX_SUBNET_PREFIX_LEN,
            });
        }
        for (i, &pool) in self.pools.iter().enumerate() {
            check_canonical(pool.into())?;
            if pool.prefix_len() > self.subnet_prefix_len {
                return Err(IpamError::PrefixShorterThanPool {
                    pool,
                    prefix_len: self.subnet_prefix_len,
                });
            }
            if let Some(&other) = self.pools[..i]
                .iter()
                .find(|other| overlaps(&pool.into(), &(**other).into()))
            {
                return Err(IpamError::PoolsOverlap {
                    first: other,
                    second: pool,
                });
            }
        }
        Ok(())
    }
}

/// Which subnet each network has. Subnets from the pools are picked first fit; any subnet,
/// picked or requested, is refused if it overlaps another network's or a reserved prefix.
/// Subnets of both families can be requested; only IPv4 ones are picked from pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetAllocator {
    config: PoolConfig,
    reserved: Vec<IpNet>,
    /// Subnet -> owning network. Keys are canonical and pairwise disjoint, so in key order
    /// (network address, then prefix length) both their starts and their ends ascend.
    networks: BTreeMap<IpNet, String>,
}

impl SubnetAllocator {
    /// An allocator with no network yet. `reserved` are prefixes no network may overlap:
    /// the host's own routes such as the underlay subnet (not the default route, which
    /// overlaps everything). Host bits in them are ignored, so interface addresses with
    /// their prefix length (192.168.77.11/24) can be passed as they are.
    pub fn new(config: PoolConfig, reserved: Vec<IpNet>) -> Result<Self, IpamError> {
        config.validate()?;
        Ok(SubnetAllocator {
            config,
            reserved: normalize(reserved),
            networks: BTreeMap::new(),
        })
    }

    /// The pool configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// The reserved prefixes (truncated to their network address).
    pub fn reserved(&self) -> &[IpNet] {
        &self.reserved
    }

    /// Replaces the reserved prefixes (the host's routes changed, or another manager with
    /// other routes took over). Applies to later allocations; existing networks stay.
    pub fn set_reserved(&mut self, reserved: Vec<IpNet>) {
        self.reserved = normalize(reserved);
    }

    /// The allocated subnets and their owners, IPv4 first, in address order.
    pub fn networks(&self) -> impl Iterator<Item = (IpNet, &str)> + '_ {
        self.networks
            .iter()
            .map(|(net, owner)| (*net, owner.as_str()))
    }

    /// The network owning exactly `subnet`, if allocated.
    pub fn owner(&self, subnet: impl Into<IpNet>) -> Option<&str> {
        self.networks.get(&subnet.into()).map(String::as_str)
    }

    /// Picks the first free subnet of the configured size from the pools, in pool order,
    /// and records it as `owner`'s.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Net, IpamError> {
        let prefix_len = self.config.subnet_prefix_len;
        let found = self
            .config
            .pools
            .iter()
            .find_map(|&pool| self.first_free(pool, prefix_len));
        let Some(subnet) = found else {
            return Err(IpamError::PoolsExhausted {
                pools: self.config.pools.clone(),
                prefix_len,
                allocated: self.networks.len(),
                reserved: self
                    .reserved
                    .iter()
                    .filter(|r| self.config.pools.iter().any(|p| overlaps(r, &(*p).into())))
                    .count(),
            });
        };
        self.networks.insert(subnet.into(), owner.to_owned());
        Ok(subnet)
    }

    /// Records `subnet` as `owner`'s (`network create --subnet`), if it is canonical and
    /// overlaps neither another network's subnet nor a reserved prefix. It need not lie in
    /// a pool.
    pub fn allocate_specific(
        &mut self,
        owner: &str,
        subnet: impl Into<IpNet>,
    ) -> Result<(), IpamError> {
        let subnet = subnet.into();
        check_canonical(subnet)?;
        self.check_free(subnet)?;
        if let Some(&reserved) = self.reserved.iter().find(|r| overlaps(r, &subnet)) {
            return Err(IpamError::ReservedOverlap {
                requested: subnet,
                reserved,
            });
        }
        self.networks.insert(subnet, owner.to_owned());
        Ok(())
    }

    /// Frees `subnet` (exactly as allocated); it can be allocated again at once.
    pub fn release(&mut self, subnet: impl Into<IpNet>) -> Result<(), IpamError> {
        let subnet = subnet.into();
        match self.networks.remove(&subnet) {
            Some(_) => Ok(()),
            None => Err(IpamError::SubnetNotAllocated { subnet }),
        }
    }

    /// Fails if `subnet` overlaps an allocated subnet. O(log n): since allocated subnets
    /// are disjoint, only the last one starting at or before `subnet` can contain its
    /// start, and any other overlapping one starts inside it.
    fn check_free(&self, subnet: IpNet) -> Result<(), IpamError> {
        let (first, last) = (subnet.network(), subnet.broadcast());
        let max = subnet.max_prefix_len();
        let key = |addr, len| IpNet::new(addr, len).expect("prefix length within range");
        let before = self.networks.range(..=key(first, max)).next_back();
        let inside = self.networks.range(key(first, 0)..=key(last, max)).next();
        match before.filter(|(net, _)| net.contains(&first)).or(inside) {
            Some((existing, owner)) => Err(IpamError::SubnetOverlap {
                requested: subnet,
                existing: *existing,
                owner: owner.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The first aligned `/prefix_len` in `pool` that overlaps no allocated subnet and no
    /// reserved prefix. Walks the allocated subnets in order alongside the candidate and
    /// jumps over each obstacle, so the cost follows the number of subnets allocated in
    /// the pool, not the number of candidates.
    fn first_free(&self, pool: Ipv4Net, prefix_len: u8) -> Option<Ipv4Net> {
        let step = 1u64 << (32 - prefix_len);
        let pool_end = u64::from(u32::from(pool.broadcast()));
        let mut start = u64::from(u32::from(pool.network()));
        let mut taken = self.ipv4_ranges_from(pool.network()).peekable();
        let reserved: Vec<(u64, u64)> = self.reserved.iter().filter_map(ipv4_range).collect();
        while start + step - 1 <= pool_end {
            let end = start + step - 1;
            // Ends ascend with starts, so what ends before this candidate ends before all
            // later ones too.
            while taken.next_if(|&(_, last)| last < start).is_some() {}
            let obstacle_end = match taken.peek() {
                Some(&(first, last)) if first <= end => Some(last),
                _ => reserved
                    .iter()
                    .filter(|&&(first, last)| first <= end && last >= start)
                    .map(|&(_, last)| last)
                    .max(),
            };
            match obstacle_end {
                None => {
                    let addr = Ipv4Addr::from(start as u32);
                    return Some(Ipv4Net::new(addr, prefix_len).expect("prefix length <= 30"));
                }
                // Past the obstacle, to the next aligned candidate.
                Some(last) => start = (last + 1).div_ceil(step) * step,
            }
        }
        None
    }

    /// The allocated IPv4 subnets ending at or after `from`, in order, as inclusive ranges.
    fn ipv4_ranges_from(&self, from: Ipv4Addr) -> impl Iterator<Item = (u64, u64)> + '_ {
        let probe = IpNet::V4(Ipv4Net::new(from, 32).expect("/32 is valid"));
        let start_key = match self.networks.range(..=probe).next_back() {
            Some((net, _)) if net.contains(&probe) => *net,
            _ => IpNet::V4(Ipv4Net::new(from, 0).expect("/0 is valid")),
        };
        self.networks
            .range(start_key..)
            .map_while(|(net, _)| ipv4_range(net))
    }

    fn from_state(state: State) -> Result<Self, IpamError> {
        let invalid = |e: IpamError| IpamError::InvalidState {
            detail: e.to_string(),
        };
        let mut allocator = Self::new(state.config, state.reserved).map_err(invalid)?;
        for Network { subnet, owner } in state.networks {
            // Reserved prefixes are not checked: they may have changed since.
            check_canonical(subnet).map_err(invalid)?;
            allocator.check_free(subnet).map_err(invalid)?;
            allocator.networks.insert(subnet, owner);
        }
        Ok(allocator)
    }
}

fn normalize(mut nets: Vec<IpNet>) -> Vec<IpNet> {
    for net in &mut nets {
        *net = net.trunc();
    }
    nets.sort();
    nets.dedup();
    nets
}

/// An IPv4 prefix as an inclusive range of integers; `None` for IPv6.
fn ipv4_range(net: &IpNet) -> Option<(u64, u64)> {
    match net {
        IpNet::V4(n) => Some((
            u32::from(n.network()).into(),
            u32::from(n.broadcast()).into(),
        )),
        IpNet::V6(_) => None,
    }
}

/// The serialized form.
#[derive(Serialize, Deserialize)]
struct State {
    config: PoolConfig,
    reserved: Vec<IpNet>,
    networks: Vec<Network>,
}

#[derive(Serialize, Deserialize)]
struct Network {
    subnet: IpNet,
    owner: String,
}

impl Serialize for SubnetAllocator {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        State {
            config: self.config.clone(),
            reserved: self.reserved.clone(),
            networks: self
                .networks()
                .map(|(subnet, owner)| Network {
                    subnet,
                    owner: owner.to_owned(),
                })
                .collect(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SubnetAllocator {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::from_state(State::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
