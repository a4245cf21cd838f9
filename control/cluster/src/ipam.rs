//! The cluster's one allocator: which subnet, gateway and VNI each network gets, which
//! addresses inside a subnet are taken (gateway, task addresses, service VIPs), which
//! published ports the managers choose.
//!
//! The cluster store records the results in its objects (networks, services, tasks); the
//! allocators are rebuilt from them whenever something is to be allocated (module
//! `cluster`), so there is no second copy to keep in step. The dataplane only ever sees
//! the resulting addresses. Nothing here reads the clock or the kernel: the current time
//! is an argument ([`Millis`]) and the host's own routes are a list of reserved prefixes
//! handed in by the caller.
//!
//! - [`SubnetAllocator`] cuts network subnets out of the default address pools
//!   ([`PoolConfig`], Swarm's 10.0.0.0/8 in /24s unless configured otherwise), first fit,
//!   and refuses any subnet that overlaps another network's or a reserved prefix, whether
//!   it is picked from a pool or requested by the user (`--subnet`).
//! - [`AddressPool`] hands out addresses within one subnet. The gateway is taken first.
//! - [`NumberPool`] hands out numbers from a range: VNIs, published ports.
//! - Rebuilt from the store: [`Networks`] (a new network's subnet, gateway and VNI;
//!   ingress at `swarm init`), [`Addresses`] (task addresses and VIPs, for the
//!   scheduler), [`PublishedPorts`] (ports in [`DYNAMIC_PORTS`]).
//!
//! Design choices:
//! - **Hold-back.** A released address is not handed out again for a while (default
//!   [`DEFAULT_HOLD_BACK`]): other hosts may still have it in their neighbour caches and
//!   FDBs, or a peer may still send to the old task, so an immediate reuse would deliver
//!   a new task's traffic to a stale place or vice versa. Allocation prefers addresses
//!   that were never used, then the address released longest ago whose hold-back is over;
//!   a held address is never handed out early. Release times are part of the serialized
//!   state, so a restarted manager keeps honouring them; rebuilt from the store, a pool
//!   takes them from the ended tasks the store keeps as history.
//! - **Cursor, not bitmap.** Memory must follow the number of *allocated* addresses, not
//!   the subnet size (a /16 has 65k addresses, an IPv6 /64 2^64): a pool keeps a cursor
//!   below which every address has been handed out at least once, the set of allocated
//!   addresses, and the released ones ordered by release time. Allocation is O(log n): take
//!   the cursor (skipping addresses that were requested specifically ahead of it), or the
//!   oldest released address. Subnet allocation likewise walks only the allocated
//!   networks in order, never the candidates one by one.
//!
//! ```
//! use std::time::Duration;
//! use shoal_cluster::ipam::{AddressPool, Millis, PoolConfig, SubnetAllocator};
//!
//! let mut subnets = SubnetAllocator::new(PoolConfig::default(), vec!["10.0.0.0/24".parse().unwrap()]).unwrap();
//! let subnet = subnets.allocate("web").unwrap();
//! assert_eq!(subnet.to_string(), "10.0.1.0/24");
//!
//! let mut addrs = AddressPool::new(subnet, Duration::from_secs(60)).unwrap();
//! assert_eq!(addrs.gateway().to_string(), "10.0.1.1");
//! let now = Millis(1_700_000_000_000);
//! assert_eq!(addrs.allocate(now).unwrap().to_string(), "10.0.1.2");
//! ```

mod address;
mod cluster;
mod number;
mod subnet;

use std::{
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

pub use address::{AddressPool, Subnet};
pub use cluster::{
    Addresses, NetworkAddressing, Networks, PublishedPorts, DYNAMIC_PORTS, INGRESS_VNI,
    NETWORK_VNIS,
};
pub use number::NumberPool;
pub use subnet::{PoolConfig, SubnetAllocator};

/// How long a released address is held back before it is handed out again, unless
/// configured otherwise.
pub const DEFAULT_HOLD_BACK: Duration = Duration::from_secs(60);

/// A point in time: milliseconds since the Unix epoch. Passed in by the caller (so tests
/// need no sleeping) and stored with released addresses.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// This time plus `d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Self {
        Millis(self.0.saturating_add(duration_ms(d)))
    }
}

impl From<SystemTime> for Millis {
    /// Times before the epoch become 0.
    fn from(t: SystemTime) -> Self {
        Millis(t.duration_since(UNIX_EPOCH).map_or(0, duration_ms))
    }
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Everything that can go wrong in IPAM. Messages name the subnet or pools involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    // ---- configuration and input ----
    /// The pool configuration lists no pool.
    #[error("no default address pool configured")]
    NoPools,
    /// A prefix with bits set past its prefix length, e.g. 10.0.9.1/24.
    #[error("{net} has host bits set; did you mean {canonical}?")]
    HostBitsSet { net: IpNet, canonical: IpNet },
    /// The subnet size asked for is bigger than a pool it should be cut from.
    #[error(
        "subnet size /{prefix_len} does not fit in address pool {pool}: \
         the subnet prefix length must be at least {}",
        pool.prefix_len()
    )]
    PrefixShorterThanPool { pool: Ipv4Net, prefix_len: u8 },
    /// The subnet size asked for leaves no room for a gateway and a task.
    #[error("subnet size /{prefix_len} is too small for a network: at most /{max}")]
    PrefixTooLong { prefix_len: u8, max: u8 },
    /// Two configured pools overlap.
    #[error("address pools {first} and {second} overlap")]
    PoolsOverlap { first: Ipv4Net, second: Ipv4Net },
    /// A subnet with fewer than two usable addresses (gateway plus one).
    #[error(
        "subnet {subnet} is too small: it needs room for a gateway and at least one more address"
    )]
    SubnetTooSmall { subnet: IpNet },

    // ---- subnets ----
    /// A requested subnet overlaps another network's subnet.
    #[error("subnet {requested} overlaps {existing}, the subnet of network {owner:?}")]
    SubnetOverlap {
        requested: IpNet,
        existing: IpNet,
        owner: String,
    },
    /// A requested subnet overlaps a reserved prefix (a route of the host, the underlay).
    #[error("subnet {requested} overlaps {reserved}, which is reserved (a route of this host)")]
    ReservedOverlap { requested: IpNet, reserved: IpNet },
    /// Every subnet of the pools is taken or reserved.
    #[error(
        "no free /{prefix_len} subnet left in address pools {} \
         ({allocated} subnets allocated, {reserved} reserved prefixes overlap the pools)",
        join(pools)
    )]
    PoolsExhausted {
        pools: Vec<Ipv4Net>,
        prefix_len: u8,
        allocated: usize,
        reserved: usize,
    },
    /// Releasing a subnet that is not allocated.
    #[error("subnet {subnet} is not allocated")]
    SubnetNotAllocated { subnet: IpNet },

    // ---- addresses ----
    /// Every usable address of the subnet is allocated or held back.
    #[error("no free address in {subnet} ({in_use} in use, {held_back} held back after release)")]
    AddressesExhausted {
        subnet: IpNet,
        in_use: usize,
        held_back: usize,
    },
    /// The address is not in the subnet.
    #[error("{addr} is not in subnet {subnet}")]
    OutOfSubnet { addr: IpAddr, subnet: IpNet },
    /// The network address (all host bits zero) is never handed out.
    #[error("{addr} is the network address of {subnet}")]
    NetworkAddress { addr: IpAddr, subnet: IpNet },
    /// The IPv4 broadcast address (all host bits one) is never handed out.
    #[error("{addr} is the broadcast address of {subnet}")]
    BroadcastAddress { addr: IpAddr, subnet: IpNet },
    /// The address is already allocated (possibly as the gateway).
    #[error("{addr} is already in use in {subnet}")]
    AddressInUse { addr: IpAddr, subnet: IpNet },
    /// The address was released recently and its hold-back is not over.
    #[error(
        "{addr} in {subnet} was released recently and is held back for another {remaining_ms} ms \
         so that stale neighbour entries elsewhere expire"
    )]
    AddressHeldBack {
        addr: IpAddr,
        subnet: IpNet,
        available_at: Millis,
        remaining_ms: u64,
    },
    /// Releasing an address that is not allocated.
    #[error("{addr} is not allocated in {subnet}")]
    AddressNotAllocated { addr: IpAddr, subnet: IpNet },
    /// An address on a network that has no subnet (or does not exist).
    #[error("network {network} has no subnet")]
    NoSubnet { network: String },
    /// The gateway lives as long as the subnet; it is not released on its own.
    #[error("{addr} is the gateway of {subnet} and cannot be released")]
    ReleaseGateway { addr: IpAddr, subnet: IpNet },

    // ---- numbers (VNIs, ports) ----
    /// Every number of the range is in use.
    #[error("no free {what} left in {first}-{last}")]
    NumbersExhausted {
        what: &'static str,
        first: u32,
        last: u32,
    },
    /// The number is not in the range.
    #[error("{what} {number} is outside {first}-{last}")]
    NumberOutOfRange {
        what: &'static str,
        number: u32,
        first: u32,
        last: u32,
    },
    /// The number is already in use.
    #[error("{what} {number} is already in use")]
    NumberInUse { what: &'static str, number: u32 },
    /// Releasing a number that is not in use.
    #[error("{what} {number} is not allocated")]
    NumberNotAllocated { what: &'static str, number: u32 },

    // ---- stored state ----
    /// Deserialized state that breaks an invariant (overlapping networks, an address
    /// listed twice, ...).
    #[error("invalid stored IPAM state: {detail}")]
    InvalidState { detail: String },
}

fn join(nets: &[Ipv4Net]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses a prefix with host bits set.
fn check_canonical(net: IpNet) -> Result<(), IpamError> {
    let canonical = net.trunc();
    if canonical == net {
        Ok(())
    } else {
        Err(IpamError::HostBitsSet { net, canonical })
    }
}

/// Whether two prefixes share at least one address (never across address families).
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}
