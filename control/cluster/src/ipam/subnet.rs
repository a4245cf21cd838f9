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
mod tests {
    use std::{collections::HashSet, time::Instant};

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn net4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| net(s)).collect()
    }
    fn pools(list: &[&str], subnet_prefix_len: u8) -> PoolConfig {
        PoolConfig {
            pools: list.iter().map(|s| net4(s)).collect(),
            subnet_prefix_len,
        }
    }

    #[test]
    fn default_pool_gives_consecutive_24s() {
        assert_eq!(PoolConfig::default(), pools(&["10.0.0.0/8"], 24));
        let mut a = SubnetAllocator::new(PoolConfig::default(), vec![]).unwrap();
        assert_eq!(a.allocate("one").unwrap(), net4("10.0.0.0/24"));
        assert_eq!(a.allocate("two").unwrap(), net4("10.0.1.0/24"));
        assert_eq!(a.owner(net4("10.0.1.0/24")), Some("two"));
        assert_eq!(
            a.networks().collect::<Vec<_>>(),
            [(net("10.0.0.0/24"), "one"), (net("10.0.1.0/24"), "two")]
        );
    }

    #[test]
    fn default_pool_skips_reserved_prefixes() {
        // Same size, smaller (an interface address, given with host bits) and bigger.
        let reserved = nets(&[
            "10.0.0.0/24",
            "10.0.1.77/32",
            "10.0.2.0/23",
            "192.168.77.11/24",
        ]);
        let mut a = SubnetAllocator::new(PoolConfig::default(), reserved).unwrap();
        assert!(a.reserved().contains(&net("10.0.1.77/32")));
        assert!(a.reserved().contains(&net("192.168.77.0/24")));
        assert_eq!(a.allocate("n").unwrap(), net4("10.0.4.0/24"));
        assert_eq!(a.allocate("n").unwrap(), net4("10.0.5.0/24"));

        // A reserved prefix much bigger than a subnet is jumped over in one go.
        let mut a = SubnetAllocator::new(PoolConfig::default(), nets(&["10.0.0.0/10"])).unwrap();
        assert_eq!(a.allocate("n").unwrap(), net4("10.64.0.0/24"));

        // Changing the reserved list affects later allocations only.
        a.set_reserved(nets(&["10.64.1.0/24"]));
        assert_eq!(a.allocate("n").unwrap(), net4("10.0.0.0/24"));
        assert_eq!(a.allocate("n").unwrap(), net4("10.0.1.0/24"));
    }

    #[test]
    fn custom_pools_and_mask_length() {
        let cfg = pools(&["192.168.0.0/20", "172.20.0.0/16"], 22);
        let mut a = SubnetAllocator::new(cfg, vec![]).unwrap();
        let got: Vec<_> = (0..6)
            .map(|_| a.allocate("n").unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            [
                "192.168.0.0/22",
                "192.168.4.0/22",
                "192.168.8.0/22",
                "192.168.12.0/22",
                "172.20.0.0/22",
                "172.20.4.0/22"
            ]
        );
        // A subnet as big as its pool.
        let mut a = SubnetAllocator::new(pools(&["172.30.0.0/16"], 16), vec![]).unwrap();
        assert_eq!(a.allocate("n").unwrap(), net4("172.30.0.0/16"));
        assert!(a.allocate("n").is_err());
    }

    #[test]
    fn pool_exhaustion_names_the_pools() {
        let cfg = pools(&["192.168.0.0/23", "172.31.0.0/24"], 24);
        let mut a = SubnetAllocator::new(cfg, nets(&["172.31.0.0/25"])).unwrap();
        a.allocate("a").unwrap();
        a.allocate("b").unwrap();
        let err = a.allocate("c").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free /24 subnet left in address pools 192.168.0.0/23, 172.31.0.0/24 \
             (2 subnets allocated, 1 reserved prefixes overlap the pools)"
        );
        assert!(matches!(
            err,
            IpamError::PoolsExhausted {
                prefix_len: 24,
                allocated: 2,
                reserved: 1,
                ..
            }
        ));
    }

    #[test]
    fn release_makes_a_subnet_allocatable_again() {
        let mut a = SubnetAllocator::new(PoolConfig::default(), vec![]).unwrap();
        let first = a.allocate("a").unwrap();
        let second = a.allocate("b").unwrap();
        a.release(first).unwrap();
        assert_eq!(a.owner(first), None);
        assert_eq!(a.allocate("c").unwrap(), first);
        assert_eq!(a.allocate("d").unwrap(), net4("10.0.2.0/24"));
        a.release(second).unwrap();
        assert_eq!(
            a.release(second).unwrap_err().to_string(),
            "subnet 10.0.1.0/24 is not allocated"
        );
        a.allocate_specific("e", net4("10.0.1.0/24")).unwrap();
    }

    #[test]
    fn requested_subnet_accepted_if_free_and_then_skipped() {
        let mut a = SubnetAllocator::new(PoolConfig::default(), vec![]).unwrap();
        a.allocate_specific("mine", net4("10.0.1.0/24")).unwrap();
        a.allocate_specific("big", net4("10.0.4.0/22")).unwrap();
        // Outside the pools is fine too, and IPv6 as well.
        a.allocate_specific("other", net4("172.28.0.0/16")).unwrap();
        a.allocate_specific("v6", net("fd00:1::/64")).unwrap();
        let got: Vec<_> = (0..4)
            .map(|_| a.allocate("n").unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            ["10.0.0.0/24", "10.0.2.0/24", "10.0.3.0/24", "10.0.8.0/24"]
        );
    }

    #[test]
    fn requested_subnet_overlapping_a_network_is_refused_both_ways() {
        let mut a = SubnetAllocator::new(PoolConfig::default(), vec![]).unwrap();
        a.allocate_specific("web", net4("10.0.9.0/24")).unwrap();
        a.allocate_specific("db", net4("10.1.0.0/16")).unwrap();
        let refuse =
            |a: &mut SubnetAllocator, s: &str| a.allocate_specific("x", net(s)).unwrap_err();

        // Bigger than an existing subnet (it starts inside the request).
        let err = refuse(&mut a, "10.0.0.0/16");
        assert_eq!(
            err,
            IpamError::SubnetOverlap {
                requested: net("10.0.0.0/16"),
                existing: net("10.0.9.0/24"),
                owner: "web".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "subnet 10.0.0.0/16 overlaps 10.0.9.0/24, the subnet of network \"web\""
        );
        // Smaller (inside an existing subnet, at its start or further in), and equal.
        for s in [
            "10.0.9.128/25",
            "10.0.9.0/25",
            "10.0.9.0/24",
            "10.1.200.0/24",
            "10.1.0.0/24",
        ] {
            assert!(
                matches!(refuse(&mut a, s), IpamError::SubnetOverlap { .. }),
                "{s}"
            );
        }
        // Much bigger, covering both.
        assert!(matches!(
            refuse(&mut a, "0.0.0.0/0"),
            IpamError::SubnetOverlap { .. }
        ));
        // Neighbours are fine, and a refused request changed nothing.
        a.allocate_specific("x", net4("10.0.8.0/24")).unwrap();
        a.allocate_specific("y", net4("10.0.10.0/24")).unwrap();
        a.allocate_specific("z", net4("10.2.0.0/16")).unwrap();
        assert_eq!(a.networks().count(), 5);

        // IPv6 likewise; the families never overlap each other.
        a.allocate_specific("v6", net("fd00:1::/64")).unwrap();
        assert!(matches!(
            refuse(&mut a, "fd00::/16"),
            IpamError::SubnetOverlap { .. }
        ));
        assert!(matches!(
            refuse(&mut a, "fd00:1::/96"),
            IpamError::SubnetOverlap { .. }
        ));
        a.allocate_specific("v6b", net("fd00:2::/64")).unwrap();
    }

    #[test]
    fn requested_subnet_overlapping_a_reserved_prefix_is_refused_both_ways() {
        let reserved = nets(&["192.168.77.0/24", "10.0.9.5/32"]);
        let mut a = SubnetAllocator::new(PoolConfig::default(), reserved).unwrap();
        for (req, res) in [
            ("192.168.0.0/16", "192.168.77.0/24"),
            ("192.168.77.0/28", "192.168.77.0/24"),
            ("192.168.77.0/24", "192.168.77.0/24"),
            ("10.0.9.0/24", "10.0.9.5/32"),
        ] {
            assert_eq!(
                a.allocate_specific("x", net(req)),
                Err(IpamError::ReservedOverlap {
                    requested: net(req),
                    reserved: net(res)
                })
            );
        }
        assert_eq!(
            a.allocate_specific("x", net4("10.0.9.0/24"))
                .unwrap_err()
                .to_string(),
            "subnet 10.0.9.0/24 overlaps 10.0.9.5/32, which is reserved (a route of this host)"
        );
        a.allocate_specific("x", net4("192.168.78.0/24")).unwrap();
    }

    #[test]
    fn requested_subnet_covering_a_pool() {
        let mut a = SubnetAllocator::new(PoolConfig::default(), vec![]).unwrap();
        a.allocate_specific("x", net4("10.0.0.0/12")).unwrap();
        assert_eq!(a.allocate("n").unwrap(), net4("10.16.0.0/24"));

        // A network that starts before the pool and covers all of it.
        let mut a = SubnetAllocator::new(pools(&["10.1.0.0/16"], 24), vec![]).unwrap();
        a.allocate_specific("x", net4("10.0.0.0/8")).unwrap();
        assert!(matches!(
            a.allocate("n"),
            Err(IpamError::PoolsExhausted { .. })
        ));
    }

    #[test]
    fn bad_input_refused() {
        let new = |cfg: PoolConfig| SubnetAllocator::new(cfg, vec![]).unwrap_err();
        assert_eq!(new(pools(&[], 24)), IpamError::NoPools);
        assert_eq!(
            new(pools(&["10.0.0.0/16"], 8)).to_string(),
            "subnet size /8 does not fit in address pool 10.0.0.0/16: \
             the subnet prefix length must be at least 16"
        );
        assert_eq!(
            new(pools(&["10.0.0.0/8"], 31)),
            IpamError::PrefixTooLong {
                prefix_len: 31,
                max: 30
            }
        );
        assert_eq!(
            new(pools(&["10.0.0.1/8"], 24)).to_string(),
            "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"
        );
        assert_eq!(
            new(pools(&["10.0.0.0/8", "192.168.0.0/16", "10.20.0.0/16"], 24)),
            IpamError::PoolsOverlap {
                first: net4("10.0.0.0/8"),
                second: net4("10.20.0.0/16")
            }
        );

        let mut a = SubnetAllocator::new(PoolConfig::default(), vec![]).unwrap();
        assert!(matches!(
            a.allocate_specific("x", net("10.0.9.1/24")),
            Err(IpamError::HostBitsSet { .. })
        ));
        assert!(matches!(
            a.release(net("10.0.9.0/24")),
            Err(IpamError::SubnetNotAllocated { .. })
        ));
        // Releasing needs the exact subnet, not one inside it.
        a.allocate_specific("x", net("10.0.9.0/24")).unwrap();
        assert!(a.release(net("10.0.9.0/25")).is_err());
        assert_eq!(a.owner(net("10.0.9.0/24")), Some("x"));
    }

    #[test]
    fn thousands_of_networks_quickly() {
        let start = Instant::now();
        let mut a = SubnetAllocator::new(PoolConfig::default(), nets(&["10.0.7.0/24"])).unwrap();
        let got: Vec<_> = (0..3_000)
            .map(|i| a.allocate(&format!("n{i}")).unwrap())
            .collect();
        let unique: HashSet<_> = got.iter().collect();
        assert_eq!(unique.len(), 3_000);
        assert!(!unique.contains(&net4("10.0.7.0/24")));
        // The 3000th, one past 10.0.7.0/24: 10.0.0.0 + 3000 * 256.
        assert_eq!(got[2_999], net4("10.11.184.0/24"));
        // A hole in the middle is found again.
        a.release(net4("10.5.0.0/24")).unwrap();
        assert_eq!(a.allocate("again").unwrap(), net4("10.5.0.0/24"));
        assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
    }

    #[test]
    fn serde_round_trip_preserves_behavior() {
        let mut a = SubnetAllocator::new(
            pools(&["10.10.0.0/16", "10.20.0.0/16"], 24),
            nets(&["10.10.2.0/24"]),
        )
        .unwrap();
        a.allocate("a").unwrap();
        a.allocate("b").unwrap();
        a.allocate_specific("c", net4("10.10.4.0/24")).unwrap();
        a.allocate_specific("v6", net("fd00:1::/64")).unwrap();
        a.release(net4("10.10.0.0/24")).unwrap();

        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains("\"10.10.4.0/24\""), "{json}");
        let mut b: SubnetAllocator = serde_json::from_str(&json).unwrap();
        assert_eq!(b, a);
        assert_eq!(serde_json::to_string(&b).unwrap(), json);
        for x in [&mut a, &mut b] {
            assert_eq!(x.allocate("d").unwrap(), net4("10.10.0.0/24"));
            assert_eq!(x.allocate("e").unwrap(), net4("10.10.3.0/24"));
            assert_eq!(x.allocate("f").unwrap(), net4("10.10.5.0/24"));
            assert!(x.allocate_specific("g", net4("10.10.4.128/25")).is_err());
        }
        assert_eq!(a, b);

        // Stored state with overlapping networks, or a bad config, is refused.
        let mut v = serde_json::to_value(&a).unwrap();
        v["networks"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"subnet": "10.10.0.128/25", "owner": "dup"}));
        let err = serde_json::from_value::<SubnetAllocator>(v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("overlaps 10.10.0.0/24"), "{err}");
        let mut v = serde_json::to_value(&a).unwrap();
        v["config"]["subnet_prefix_len"] = 8.into();
        assert!(serde_json::from_value::<SubnetAllocator>(v).is_err());
        // A network overlapping a reserved prefix (the routes changed) still loads.
        let mut v = serde_json::to_value(&a).unwrap();
        v["reserved"] = serde_json::json!(["10.10.0.0/16"]);
        serde_json::from_value::<SubnetAllocator>(v).unwrap();
    }
}
