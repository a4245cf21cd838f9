//! Service virtual IPs balanced at the socket (the cgroup `sock_addr` programs in
//! `ebpf/shoal-ebpf/src/sock_vip.rs`): map names, key and value layouts, counters.
//!
//! A connection to `VIP:port` from a container is given a backend when the socket
//! connects (TCP, connected UDP) or sends (unconnected UDP): the destination address is
//! rewritten before any packet exists, so no packet is ever translated. Replies of
//! unconnected UDP get the VIP back as their source at `recvmsg`, and `getpeername` of a
//! translated socket says the VIP.
//!
//! Scoping: every lookup is keyed by the socket's network namespace cookie and the
//! VIP's network, so a container sees only VIPs of networks it is attached to, and an
//! agent only ever translates sockets of containers it manages (all programs of all
//! agents on one kernel run for every socket).
//!
//! All addresses and ports are in network byte order, as the kernel hands them over.

/// Program names in the object file.
pub const CONNECT4: &str = "shoal_vip_connect4";
pub const SENDMSG4: &str = "shoal_vip_sendmsg4";
pub const RECVMSG4: &str = "shoal_vip_recvmsg4";
pub const GETPEERNAME4: &str = "shoal_vip_getpeername4";
/// The same for dual-stack AF_INET6 sockets naming `::ffff:VIP`.
pub const CONNECT6: &str = "shoal_vip_connect6";
pub const SENDMSG6: &str = "shoal_vip_sendmsg6";
pub const RECVMSG6: &str = "shoal_vip_recvmsg6";
pub const GETPEERNAME6: &str = "shoal_vip_getpeername6";
/// Every program, in attach order.
pub const PROGRAMS: [&str; 8] = [
    CONNECT4,
    SENDMSG4,
    RECVMSG4,
    GETPEERNAME4,
    CONNECT6,
    SENDMSG6,
    RECVMSG6,
    GETPEERNAME6,
];

/// VIP address (u32, network order) -> [`VipValue`].
pub const VIPS_MAP: &str = "VIP_SERVICES";
/// [`BackendKey`] -> backend address (u32, network order). Slots `0..count` of a VIP
/// hold its healthy backends.
pub const BACKENDS_MAP: &str = "VIP_BACKENDS";
/// [`BackendKey`] with `slot` = backend address -> [`BackendState`] as u32: every
/// declared backend of a VIP, healthy or not (a UDP flow stays on a draining backend,
/// leaves an unhealthy or removed one).
pub const BACKEND_STATE_MAP: &str = "VIP_BACKEND_STATE";
/// [`ScopeKey`] -> 1: the namespace may use VIPs of the network.
pub const SCOPES_MAP: &str = "VIP_SCOPES";
/// [`FlowKey`] -> backend address: the backend of an unconnected UDP flow (LRU).
pub const FLOWS_MAP: &str = "VIP_UDP_FLOWS";
/// [`FlowKey`] with `addr` = backend -> VIP: what `recvmsg` and `getpeername` give
/// back (LRU).
pub const REVERSE_MAP: &str = "VIP_REVERSE";
/// Per-CPU `u64` counters, one slot per [`Counter`].
pub const STATS_MAP: &str = "VIP_STATS";
/// Per-CPU `u64` per VIP (u32 key, as [`VIPS_MAP`]): the connects and new UDP flows the
/// VIP balanced. The agent creates a VIP's entry (zeroed) with the VIP and removes it
/// with it; the programs only add to an existing one.
pub const CONNECTS_MAP: &str = "VIP_CONNECTS";
/// [`NodePortKey`] -> [`Destination`] (`addr` = the published port's frontend key in
/// [`VIPS_MAP`], `port` = the target port): a published port reached from the node
/// itself (one of its addresses or 127.0.0.1) or from a container on it.
pub const NODEPORTS_MAP: &str = "VIP_NODEPORTS";
/// [`FlowKey`] with `addr`, `port` = backend, target port -> [`Destination`] the socket
/// named (node address, published port): what `recvmsg` and `getpeername` give back
/// (LRU).
pub const NODEPORT_REVERSE_MAP: &str = "VIP_NODEPORT_REVERSE";

/// Every map, for pinning.
pub const MAPS: [&str; 10] = [
    VIPS_MAP,
    BACKENDS_MAP,
    BACKEND_STATE_MAP,
    SCOPES_MAP,
    FLOWS_MAP,
    REVERSE_MAP,
    STATS_MAP,
    NODEPORTS_MAP,
    NODEPORT_REVERSE_MAP,
    CONNECTS_MAP,
];

/// Capacities. The hash maps written from declared state are not preallocated (they cost
/// what they hold); the two LRU maps are, and are sized for the connections and UDP
/// flows of one node's containers (an evicted reverse entry only loses the VIP in
/// `getpeername` or a reply's source for a socket idle longer than the LRU's reach).
pub const MAX_VIPS: u32 = 16_384;
pub const MAX_BACKENDS: u32 = 262_144;
pub const MAX_SCOPES: u32 = 65_536;
pub const MAX_FLOWS: u32 = 65_536;
pub const MAX_REVERSE: u32 = 131_072;
pub const MAX_NODEPORTS: u32 = 16_384;

/// The frontend key of a published port in [`VIPS_MAP`] and [`BACKENDS_MAP`]: an
/// address in `0.0.0.0/8`, which no socket can name as a destination, made of the
/// protocol and the published port (network order, as every key here).
pub const fn nodeport_frontend(protocol: u8, published: u16) -> u32 {
    u32::from_ne_bytes([0, protocol, (published >> 8) as u8, published as u8])
}

/// Value of [`VIPS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipValue {
    /// The VIP's network (its VNI).
    pub network: u32,
    /// Healthy backends, in slots `0..count` of [`BACKENDS_MAP`].
    pub count: u32,
    /// Round-robin cursor, advanced by every new flow.
    pub cursor: u64,
}

/// Key of [`BACKENDS_MAP`] and [`BACKEND_STATE_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub vip: u32,
    pub slot: u32,
}

/// Key of [`SCOPES_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeKey {
    /// `bpf_get_netns_cookie` of the container's namespace (`SO_NETNS_COOKIE` from
    /// userspace).
    pub netns: u64,
    /// The network's VNI.
    pub network: u32,
    pub _pad: u32,
}

/// Key of [`FLOWS_MAP`] and [`REVERSE_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// `bpf_get_socket_cookie` of the socket.
    pub socket: u64,
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Key of [`NODEPORTS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodePortKey {
    /// Namespace cookie of the sockets this entry is for (the node's own namespace, or
    /// a container's).
    pub netns: u64,
    /// The address the socket names (a node address, or 127.0.0.1).
    pub addr: u32,
    /// The published port.
    pub port: u16,
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    pub _pad: u8,
}

/// Value of [`NODEPORTS_MAP`] and [`NODEPORT_REVERSE_MAP`]: an address and a port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// A backend's state as [`BACKEND_STATE_MAP`] holds it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendState {
    Healthy = 0,
    Draining = 1,
    Unhealthy = 2,
}

impl BackendState {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Healthy),
            1 => Some(Self::Draining),
            2 => Some(Self::Unhealthy),
            _ => None,
        }
    }
}

/// One slot of [`STATS_MAP`]. The discriminant is the array index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// TCP connects to a VIP given a backend.
    ConnectTcp = 0,
    /// UDP connects to a VIP given a backend.
    ConnectUdp = 1,
    /// Unconnected UDP sends to a VIP sent to a backend.
    Sendmsg = 2,
    /// Of those, sends that started a new flow (a backend chosen).
    UdpFlowNew = 3,
    /// Received datagrams whose source was given back as the VIP.
    Recvmsg = 4,
    /// `getpeername` answers given back as the VIP.
    Getpeername = 5,
    /// Connects or sends to a VIP in scope that has no healthy backend (left to reach
    /// the VIP itself, which refuses them).
    NoBackend = 6,
    /// Flow or reverse entries that could not be written (map pressure).
    MapUpdateFailed = 7,
}

impl Counter {
    pub const COUNT: u32 = 8;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::ConnectTcp,
        Counter::ConnectUdp,
        Counter::Sendmsg,
        Counter::UdpFlowNew,
        Counter::Recvmsg,
        Counter::Getpeername,
        Counter::NoBackend,
        Counter::MapUpdateFailed,
    ];

    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Stable lower-case name used in CLI output and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::ConnectTcp => "vip_connect_tcp",
            Counter::ConnectUdp => "vip_connect_udp",
            Counter::Sendmsg => "vip_sendmsg",
            Counter::UdpFlowNew => "vip_udp_flow_new",
            Counter::Recvmsg => "vip_recvmsg",
            Counter::Getpeername => "vip_getpeername",
            Counter::NoBackend => "vip_no_backend",
            Counter::MapUpdateFailed => "vip_map_update_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_in_index_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i, "{c:?}");
        }
    }

    #[test]
    fn keys_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<VipValue>(), 16);
        assert_eq!(core::mem::size_of::<BackendKey>(), 8);
        assert_eq!(core::mem::size_of::<ScopeKey>(), 16);
        assert_eq!(core::mem::size_of::<FlowKey>(), 16);
        assert_eq!(core::mem::size_of::<NodePortKey>(), 16);
        assert_eq!(core::mem::size_of::<Destination>(), 8);
    }

    #[test]
    fn nodeport_frontend_is_in_0_0_0_0_8() {
        let k = nodeport_frontend(6, 8080);
        assert_eq!(k.to_ne_bytes(), [0, 6, 0x1f, 0x90]);
    }
}
