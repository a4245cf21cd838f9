//! Addresses within one subnet: [`AddressPool`].

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize, Serializer};

use super::{check_canonical, duration_ms, IpamError, Millis};

mod sealed {
    pub trait Sealed {}
    impl Sealed for ipnet::Ipv4Net {}
    impl Sealed for ipnet::Ipv6Net {}
}

/// A subnet type an [`AddressPool`] can hand out addresses from: [`Ipv4Net`] (addresses
/// are [`Ipv4Addr`]) or [`Ipv6Net`] (addresses are [`Ipv6Addr`]). Sealed.
pub trait Subnet:
    sealed::Sealed + Copy + Eq + fmt::Debug + fmt::Display + Into<IpNet> + Serialize + DeserializeOwned
{
    /// The address type of the family.
    type Addr: Copy
        + Eq
        + Ord
        + fmt::Debug
        + fmt::Display
        + Into<IpAddr>
        + Serialize
        + DeserializeOwned;
    /// Whether the all-ones host part is a broadcast address (IPv4) rather than usable.
    #[doc(hidden)]
    const HAS_BROADCAST: bool;
    /// The network address as an integer.
    #[doc(hidden)]
    fn base(&self) -> u128;
    /// The host bits as an integer mask.
    #[doc(hidden)]
    fn host_mask(&self) -> u128;
    #[doc(hidden)]
    fn addr_to_int(addr: Self::Addr) -> u128;
    /// Only called with values that fit the family.
    #[doc(hidden)]
    fn addr_from_int(v: u128) -> Self::Addr;
}

impl Subnet for Ipv4Net {
    type Addr = Ipv4Addr;
    const HAS_BROADCAST: bool = true;
    fn base(&self) -> u128 {
        u32::from(self.network()).into()
    }
    fn host_mask(&self) -> u128 {
        u32::from(self.hostmask()).into()
    }
    fn addr_to_int(addr: Ipv4Addr) -> u128 {
        u32::from(addr).into()
    }
    fn addr_from_int(v: u128) -> Ipv4Addr {
        Ipv4Addr::from(v as u32)
    }
}

impl Subnet for Ipv6Net {
    type Addr = Ipv6Addr;
    const HAS_BROADCAST: bool = false;
    fn base(&self) -> u128 {
        self.network().into()
    }
    fn host_mask(&self) -> u128 {
        self.hostmask().into()
    }
    fn addr_to_int(addr: Ipv6Addr) -> u128 {
        addr.into()
    }
    fn addr_from_int(v: u128) -> Ipv6Addr {
        v.into()
    }
}

/// The addresses of one subnet: the gateway, task addresses and service VIPs.
///
/// Usable addresses are all but the network address and, for IPv4, the broadcast
/// address. The gateway is allocated when the pool is made and stays allocated. Released
/// addresses are held back for the pool's hold-back time before they are handed out again;
/// [`allocate`](Self::allocate) prefers never-used addresses, then the one released longest
/// ago. Memory is proportional to the number of addresses allocated or released, whatever
/// the subnet size. `AddressPool` alone means IPv4; `AddressPool<Ipv6Net>` is IPv6.
///
/// A pool can also be rebuilt from a record of its addresses that is not its own state
/// ([`restore`](Self::restore)): the cluster store keeps the addresses of tasks and VIPs,
/// not the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPool<N: Subnet = Ipv4Net> {
    subnet: N,
    // Addresses are held as offsets from the network address: 0 is the network address,
    // 1..=last are usable.
    last: u128,
    gateway: u128,
    hold_back_ms: u64,
    /// Every usable offset from here on that is in neither `allocated` nor `released` has
    /// never been handed out. `None`: no never-used address left.
    next_unused: Option<u128>,
    /// Only in a restored pool: every usable offset from here up to `next_unused` that is
    /// in neither `allocated` nor `released` was handed out and released at a time the
    /// record no longer holds. `None`: no such address left (always, in a pool that was
    /// never restored).
    next_forgotten: Option<u128>,
    allocated: BTreeSet<u128>,
    /// Released offsets and when they were released...
    released: BTreeMap<u128, Millis>,
    /// ...and the same ordered by release time, oldest first.
    release_order: BTreeSet<(Millis, u128)>,
}

impl<N: Subnet> AddressPool<N> {
    /// A pool whose gateway is the first usable address (.1 in a /24), already allocated.
    /// Fails if `subnet` has host bits set or fewer than two usable addresses.
    pub fn new(subnet: N, hold_back: Duration) -> Result<Self, IpamError> {
        let mut pool = Self::empty(subnet, hold_back)?;
        pool.gateway = 1;
        pool.allocated.insert(1);
        pool.next_unused = Some(2);
        Ok(pool)
    }

    /// A pool with the given gateway (`network create --gateway`), already allocated.
    pub fn with_gateway(
        subnet: N,
        gateway: N::Addr,
        hold_back: Duration,
    ) -> Result<Self, IpamError> {
        let mut pool = Self::empty(subnet, hold_back)?;
        pool.gateway = pool.offset_of(gateway)?;
        pool.allocated.insert(pool.gateway);
        Ok(pool)
    }

    /// A pool rebuilt from a record of its addresses that is not the pool's own state,
    /// such as the addresses of the tasks and VIPs in the cluster store: `in_use` are
    /// allocated (with `gateway`), `released` were released at the given times and are
    /// held back from then on.
    ///
    /// What the record no longer holds is inferred. The addresses above the highest one
    /// listed (or the gateway) were never used, and are handed out first, in order. The
    /// ones below it that are listed nowhere were used once and released at a time that
    /// is not known; they count as released long ago, and are handed out, in order, after
    /// the never-used ones and before the recorded releases. An address both in use and
    /// released is in use; one released twice counts from its latest release. Addresses
    /// that are not usable in the subnet are left out: the record may hold stale ones.
    ///
    /// Fails, as [`with_gateway`](Self::with_gateway) does, if the subnet or the gateway
    /// is unusable.
    pub fn restore(
        subnet: N,
        gateway: N::Addr,
        hold_back: Duration,
        in_use: impl IntoIterator<Item = N::Addr>,
        released: impl IntoIterator<Item = (N::Addr, Millis)>,
    ) -> Result<Self, IpamError> {
        let mut pool = Self::empty(subnet, hold_back)?;
        pool.gateway = pool.offset_of(gateway)?;
        pool.allocated.insert(pool.gateway);
        for addr in in_use {
            if let Ok(off) = pool.offset_of(addr) {
                pool.allocated.insert(off);
            }
        }
        for (addr, at) in released {
            let Ok(off) = pool.offset_of(addr) else {
                continue;
            };
            if pool.allocated.contains(&off) {
                continue;
            }
            match pool.released.insert(off, at) {
                Some(earlier) if earlier > at => {
                    pool.released.insert(off, earlier);
                }
                Some(earlier) => {
                    pool.release_order.remove(&(earlier, off));
                    pool.release_order.insert((at, off));
                }
                None => {
                    pool.release_order.insert((at, off));
                }
            }
        }
        let highest = pool
            .allocated
            .last()
            .into_iter()
            .chain(pool.released.keys().next_back())
            .max()
            .copied()
            .unwrap_or(0);
        pool.next_unused = highest.checked_add(1).filter(|&next| next <= pool.last);
        pool.next_forgotten = Some(1);
        Ok(pool)
    }

    fn empty(subnet: N, hold_back: Duration) -> Result<Self, IpamError> {
        check_canonical(subnet.into())?;
        let last = subnet
            .host_mask()
            .saturating_sub(u128::from(N::HAS_BROADCAST));
        if last < 2 {
            return Err(IpamError::SubnetTooSmall {
                subnet: subnet.into(),
            });
        }
        Ok(AddressPool {
            subnet,
            last,
            gateway: 0,
            hold_back_ms: duration_ms(hold_back),
            next_unused: Some(1),
            next_forgotten: None,
            allocated: BTreeSet::new(),
            released: BTreeMap::new(),
            release_order: BTreeSet::new(),
        })
    }

    /// The subnet.
    pub fn subnet(&self) -> N {
        self.subnet
    }

    /// The gateway address.
    pub fn gateway(&self) -> N::Addr {
        self.addr(self.gateway)
    }

    /// How long a released address is held back.
    pub fn hold_back(&self) -> Duration {
        Duration::from_millis(self.hold_back_ms)
    }

    /// How many addresses are allocated, the gateway included.
    pub fn in_use(&self) -> usize {
        self.allocated.len()
    }

    /// How many released addresses are still held back at `now`.
    pub fn held_back(&self, now: Millis) -> usize {
        self.release_order
            .iter()
            .rev()
            .take_while(|(at, _)| !self.hold_back_over(*at, now))
            .count()
    }

    /// Whether `addr` is allocated (the gateway is).
    pub fn is_allocated(&self, addr: N::Addr) -> bool {
        self.offset_in_subnet(addr)
            .is_some_and(|off| self.allocated.contains(&off))
    }

    /// The allocated addresses, in address order.
    pub fn allocated(&self) -> impl Iterator<Item = N::Addr> + '_ {
        self.allocated.iter().map(|&off| self.addr(off))
    }

    /// Allocates an address: a never-used one if any is left, else (in a restored pool)
    /// one released at a time no longer known, else the one released longest ago
    /// provided its hold-back is over at `now`.
    pub fn allocate(&mut self, now: Millis) -> Result<N::Addr, IpamError> {
        if let Some(off) = self.take_unused().or_else(|| self.take_forgotten()) {
            self.allocated.insert(off);
            return Ok(self.addr(off));
        }
        if let Some(&(at, off)) = self.release_order.first() {
            if self.hold_back_over(at, now) {
                self.release_order.remove(&(at, off));
                self.released.remove(&off);
                self.allocated.insert(off);
                return Ok(self.addr(off));
            }
        }
        // The oldest release is still held back, so all of them are.
        Err(IpamError::AddressesExhausted {
            subnet: self.subnet.into(),
            in_use: self.allocated.len(),
            held_back: self.released.len(),
        })
    }

    /// Allocates `addr` specifically (a static address or a requested VIP). Fails if it is
    /// outside the subnet, the network or broadcast address, already allocated, or
    /// released and still held back at `now`.
    pub fn allocate_specific(&mut self, addr: N::Addr, now: Millis) -> Result<(), IpamError> {
        let off = self.offset_of(addr)?;
        if self.allocated.contains(&off) {
            return Err(IpamError::AddressInUse {
                addr: addr.into(),
                subnet: self.subnet.into(),
            });
        }
        if let Some(&at) = self.released.get(&off) {
            if !self.hold_back_over(at, now) {
                let available_at = at.saturating_add(self.hold_back());
                return Err(IpamError::AddressHeldBack {
                    addr: addr.into(),
                    subnet: self.subnet.into(),
                    available_at,
                    remaining_ms: available_at.0.saturating_sub(now.0),
                });
            }
            self.released.remove(&off);
            self.release_order.remove(&(at, off));
        }
        // An offset ahead of the cursor stays where it is; the cursor skips it later.
        self.allocated.insert(off);
        Ok(())
    }

    /// Releases `addr`; it is held back from `now` on. The gateway cannot be released.
    pub fn release(&mut self, addr: N::Addr, now: Millis) -> Result<(), IpamError> {
        let off = self.offset_of(addr)?;
        if off == self.gateway {
            return Err(IpamError::ReleaseGateway {
                addr: addr.into(),
                subnet: self.subnet.into(),
            });
        }
        if !self.allocated.remove(&off) {
            return Err(IpamError::AddressNotAllocated {
                addr: addr.into(),
                subnet: self.subnet.into(),
            });
        }
        self.released.insert(off, now);
        self.release_order.insert((now, off));
        Ok(())
    }

    /// The next never-used offset, moving the cursor past it. Offsets the cursor skips
    /// were allocated (or allocated and released) specifically ahead of it; each is
    /// skipped once, so this is amortized O(log n).
    fn take_unused(&mut self) -> Option<u128> {
        while let Some(off) = self.next_unused {
            self.next_unused = off.checked_add(1).filter(|&next| next <= self.last);
            if !self.allocated.contains(&off) && !self.released.contains_key(&off) {
                return Some(off);
            }
        }
        None
    }

    /// The next offset below the never-used cursor that is neither allocated nor released,
    /// moving the forgotten cursor past it; amortized O(log n) like
    /// [`take_unused`](Self::take_unused).
    fn take_forgotten(&mut self) -> Option<u128> {
        // Offsets from the never-used cursor on belong to `take_unused`.
        let end = self.next_unused.map_or(self.last, |unused| unused - 1);
        while let Some(off) = self.next_forgotten.filter(|&off| off <= end) {
            self.next_forgotten = off.checked_add(1);
            if !self.allocated.contains(&off) && !self.released.contains_key(&off) {
                return Some(off);
            }
        }
        self.next_forgotten = None;
        None
    }

    fn hold_back_over(&self, released_at: Millis, now: Millis) -> bool {
        released_at.0.saturating_add(self.hold_back_ms) <= now.0
    }

    fn addr(&self, off: u128) -> N::Addr {
        N::addr_from_int(self.subnet.base() + off)
    }

    fn offset_in_subnet(&self, addr: N::Addr) -> Option<u128> {
        let a = N::addr_to_int(addr);
        (a & !self.subnet.host_mask() == self.subnet.base()).then(|| a - self.subnet.base())
    }

    /// The offset of a usable address, or why `addr` is not one.
    fn offset_of(&self, addr: N::Addr) -> Result<u128, IpamError> {
        let (ip, subnet) = (addr.into(), self.subnet.into());
        match self.offset_in_subnet(addr) {
            None => Err(IpamError::OutOfSubnet { addr: ip, subnet }),
            Some(0) => Err(IpamError::NetworkAddress { addr: ip, subnet }),
            Some(off) if off > self.last => Err(IpamError::BroadcastAddress { addr: ip, subnet }),
            Some(off) => Ok(off),
        }
    }

    fn from_state(state: State<N>) -> Result<Self, IpamError> {
        let invalid = |detail: String| IpamError::InvalidState { detail };
        let mut pool = Self::empty(state.subnet, Duration::from_millis(state.hold_back_ms))
            .map_err(|e| invalid(e.to_string()))?;
        let usable = |pool: &Self, addr| pool.offset_of(addr).map_err(|e| invalid(e.to_string()));
        pool.gateway = usable(&pool, state.gateway)?;
        for addr in state.allocated {
            if !pool.allocated.insert(usable(&pool, addr)?) {
                return Err(invalid(format!("{addr} is listed twice")));
            }
        }
        if !pool.allocated.contains(&pool.gateway) {
            return Err(invalid(format!(
                "gateway {} is not allocated",
                state.gateway
            )));
        }
        for Released { addr, at } in state.released {
            let off = usable(&pool, addr)?;
            if pool.allocated.contains(&off) || pool.released.insert(off, at).is_some() {
                return Err(invalid(format!("{addr} is listed twice")));
            }
            pool.release_order.insert((at, off));
        }
        pool.next_unused = state
            .next_unused
            .map(|addr| usable(&pool, addr))
            .transpose()?;
        pool.next_forgotten = state
            .next_forgotten
            .map(|addr| usable(&pool, addr))
            .transpose()?;
        Ok(pool)
    }
}

/// The serialized form: addresses rather than offsets, so the stored state reads well.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct State<N: Subnet> {
    subnet: N,
    gateway: N::Addr,
    hold_back_ms: u64,
    /// Addresses from this one to the end of the subnet that are listed in neither
    /// `allocated` nor `released` were never handed out; `null` when none is left.
    next_unused: Option<N::Addr>,
    /// Only in a restored pool: addresses from this one up to `next_unused` that are
    /// listed in neither `allocated` nor `released` were released at a time not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_forgotten: Option<N::Addr>,
    allocated: Vec<N::Addr>,
    /// Oldest release first.
    released: Vec<Released<N::Addr>>,
}

#[derive(Serialize, Deserialize)]
struct Released<A> {
    addr: A,
    at: Millis,
}

impl<N: Subnet> Serialize for AddressPool<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        State {
            subnet: self.subnet,
            gateway: self.gateway(),
            hold_back_ms: self.hold_back_ms,
            next_unused: self.next_unused.map(|off| self.addr(off)),
            next_forgotten: self.next_forgotten.map(|off| self.addr(off)),
            allocated: self.allocated().collect(),
            released: self
                .release_order
                .iter()
                .map(|&(at, off)| Released {
                    addr: self.addr(off),
                    at,
                })
                .collect(),
        }
        .serialize(serializer)
    }
}

impl<'de, N: Subnet> Deserialize<'de> for AddressPool<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let state = State::<N>::deserialize(deserializer)?;
        Self::from_state(state).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
