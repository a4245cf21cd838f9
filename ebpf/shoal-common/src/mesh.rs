//! The ingress routing mesh: map names, key and value layouts, counters.
//!
//! The mesh lives in the underlay XDP program (`ebpf/shoal-ebpf/src/xdp_mesh.rs`, called
//! from `xdp_underlay.rs`) and, for the reply path, in two TC programs of the same
//! object (`tc_mesh.rs`): one on `br0` of the ingress network's namespace, one on the
//! host end of the mesh veth. Where a meshed flow entered the cluster is recorded by the
//! XDP program itself ([`REPLY_MAP`]), on the node that forwards to a local task and on
//! the task's node from the VXLAN datagram, after the data path's guard has checked
//! that its outer source is a cluster VTEP: only XDP sees that outer header.
//!
//! All addresses and ports are kept as they are on the wire (network byte order), read
//! and written as native integers: an address `a.b.c.d` is `u32::from_ne_bytes([a, b,
//! c, d])`, a port `p` is `u16::from_ne_bytes(p.to_be_bytes())`.

/// XDP: the node's own addresses (u32) -> 1. Published ports answer on these.
pub const ADDRS_MAP: &str = "MESH_ADDRS";
/// XDP: [`FrontendKey`] -> [`Frontend`], one per published port.
pub const FRONTENDS_MAP: &str = "MESH_FRONTENDS";
/// XDP: array, `frontend * MAX_SLOTS + i` -> backend address; slots `0..count` of a
/// frontend hold the backends that take new flows, in round-robin order.
pub const SLOTS_MAP: &str = "MESH_SLOTS";
/// XDP: array, `row * MAGLEV_SIZE + i` -> backend address: the Maglev lookup table of
/// a frontend in Maglev mode (its `maglev_row`).
pub const MAGLEV_MAP: &str = "MESH_MAGLEV";
/// XDP: [`BackendKey`] -> [`BackendValue`]: every declared backend of a frontend,
/// whatever its state (a flow on a draining backend stays, one on an unhealthy or
/// removed backend is moved or dropped).
pub const BACKENDS_MAP: &str = "MESH_BACKENDS";
/// XDP: LRU [`FlowKey`] (as the client sent it) -> [`FlowValue`]: the live flows (UDP
/// flows, TCP connections past their handshake). Sized by the agent (`--lb-flows`).
pub const FLOWS_MAP: &str = "MESH_FLOWS";
/// XDP: LRU [`FlowKey`] -> [`FlowValue`]: TCP connections opening (a SYN seen, no ACK
/// yet). Kept apart from [`FLOWS_MAP`] so that SYN floods push out only each other,
/// never a live or closing connection. Sized like the flow table.
pub const OPENING_MAP: &str = "MESH_OPENING";
/// XDP: LRU [`FlowKey`] -> [`FlowValue`]: TCP connections closing (a FIN seen from the
/// client; its last ACKs still find their backend here). Kept apart so that closed
/// connections push out only each other: they go first, never a live flow, and a SYN
/// flood does not push them out before they end. Sized like the flow table.
pub const CLOSING_MAP: &str = "MESH_CLOSING";
/// XDP: per-CPU round-robin position per frontend (u32).
pub const RR_MAP: &str = "MESH_RR";
/// Array of one [`Config`].
pub const CONFIG_MAP: &str = "MESH_CONFIG";
/// XDP writes, TC (task side) reads: LRU [`FlowKey`] of the reply (source = backend) ->
/// the address the client connected to (u32). Sized like the flow table.
pub const REPLY_MAP: &str = "MESH_REPLY";
/// XDP writes, TC reads: as [`REPLY_MAP`], for TCP connections opening (a SYN), apart
/// for the same reason as [`OPENING_MAP`]: a SYN flood must not push out the reply
/// entry of a live or closing connection. Sized like the flow table.
pub const REPLY_OPENING_MAP: &str = "MESH_REPLY_OPENING";
/// XDP writes, TC reads: as [`REPLY_MAP`], for TCP connections the client closed (a
/// FIN): the task's last segments (its FIN) still leave from the published address.
pub const REPLY_CLOSING_MAP: &str = "MESH_REPLY_CLOSING";
/// TC (task side): [`RevPortKey`] -> published port (u32, low 16 bits as on the wire).
pub const REVPORT_MAP: &str = "MESH_REVPORT";
/// Per-CPU `u64` counters, one slot per [`Counter`].
pub const STATS_MAP: &str = "MESH_STATS";
/// XDP: per-CPU `u64` counters per frontend (published port): slot
/// `frontend * FRONTEND_COUNTERS + FRONTEND_*`. Zeroed by the agent when it gives a
/// frontend ID to a port.
pub const FRONTEND_STATS_MAP: &str = "MESH_FRONTEND_STATS";
/// Counters per frontend in [`FRONTEND_STATS_MAP`].
pub const FRONTEND_COUNTERS: u32 = 3;
/// New flows (TCP connections opened, UDP flows) the frontend balanced.
pub const FRONTEND_NEW_FLOWS: u32 = 0;
/// Frames the frontend forwarded.
pub const FRONTEND_PACKETS: u32 = 1;
/// Bytes of those frames (IP packets, before encapsulation).
pub const FRONTEND_BYTES: u32 = 2;

/// Every map, for pinning (`<pin_dir>/mesh/<name>`).
pub const MAPS: [&str; 16] = [
    ADDRS_MAP,
    FRONTENDS_MAP,
    SLOTS_MAP,
    MAGLEV_MAP,
    BACKENDS_MAP,
    FLOWS_MAP,
    OPENING_MAP,
    CLOSING_MAP,
    RR_MAP,
    CONFIG_MAP,
    REPLY_MAP,
    REPLY_OPENING_MAP,
    REPLY_CLOSING_MAP,
    REVPORT_MAP,
    STATS_MAP,
    FRONTEND_STATS_MAP,
];

/// The tables sized by the agent's `--lb-flows`.
pub const FLOW_TABLES: [&str; 6] = [
    FLOWS_MAP,
    OPENING_MAP,
    CLOSING_MAP,
    REPLY_MAP,
    REPLY_OPENING_MAP,
    REPLY_CLOSING_MAP,
];

/// The TC program agents before the data path's guard attached on `vxlan0` ingress in
/// the ingress network's namespace to record replies from any VXLAN datagram, whoever
/// sent it. The object no longer has it; the agent removes such a filter where it finds
/// one.
pub const LEGACY_TC_FROM_OVERLAY: &str = "shoal_tc_mesh_from_overlay";
/// TC program on `br0` ingress in the ingress network's namespace: a task's reply to a
/// meshed flow leaves with the address and port the client connected to.
pub const TC_REPLY: &str = "shoal_tc_mesh_reply";
/// TC program on the host end of the mesh veth: sends replies out of the underlay.
pub const TC_TO_UNDERLAY: &str = "shoal_tc_mesh_to_underlay";

/// Capacities.
pub const MAX_ADDRS: u32 = 256;
pub const MAX_FRONTENDS: u32 = 256;
/// Backends that take new flows, per frontend.
pub const MAX_SLOTS: u32 = 128;
pub const MAX_BACKENDS: u32 = 65_536;
/// Frontends in Maglev mode: every published port may be (Maglev is the default).
pub const MAX_MAGLEV_ROWS: u32 = MAX_FRONTENDS;
/// Entries of one Maglev lookup table (prime).
pub const MAGLEV_SIZE: u32 = 16_381;
pub const MAX_REVPORTS: u32 = 65_536;
/// Default flow table capacity (the agent's `--lb-flows` overrides it).
pub const DEFAULT_FLOWS: u32 = 262_144;

/// Marker in the first two bytes of the inner source MAC of a meshed frame; the last
/// four bytes are the address the client connected to. Locally administered, unicast.
pub const MESH_MAC_PREFIX: [u8; 2] = [0x0e, 0x5d];

/// Bytes the VXLAN encapsulation adds: outer Ethernet, IPv4, UDP, VXLAN.
pub const ENCAP_LEN: usize = 14 + 20 + 8 + 8;

/// `Config::flags`: send to remote backends with a redirect, not XDP_TX (the underlay
/// is a veth: XDP_TX does not wake a peer that has no XDP program of its own).
pub const FLAG_TX_REDIRECT: u16 = 1;

/// `Frontend::mode`.
pub const MODE_INGRESS: u8 = 0;
pub const MODE_HOST: u8 = 1;
/// `Frontend::balance`.
pub const BALANCE_ROUND_ROBIN: u8 = 0;
pub const BALANCE_MAGLEV: u8 = 1;
/// `BackendValue::state`.
pub const STATE_HEALTHY: u32 = 0;
pub const STATE_UNHEALTHY: u32 = 1;
pub const STATE_DRAINING: u32 = 2;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrontendKey {
    pub protocol: u8,
    pub pad: u8,
    /// Published port (wire order).
    pub port: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    /// Index of the frontend: its slots, round-robin position, backends' key.
    pub id: u32,
    /// Target port (wire order).
    pub target_port: u16,
    /// `MODE_*`.
    pub mode: u8,
    /// `BALANCE_*`.
    pub balance: u8,
    /// Slots `0..count` hold backends that take new flows; 0: none.
    pub count: u32,
    /// Row of the Maglev table (Maglev mode only).
    pub maglev_row: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub frontend: u32,
    /// The backend's address on the ingress network.
    pub addr: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendValue {
    /// Underlay address (VTEP) of the backend's node.
    pub node: u32,
    /// `STATE_*`.
    pub state: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: u32,
    pub dst: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub pad: [u8; 3],
}

/// `FlowValue::state`: where a TCP connection is, as the client's segments tell (the
/// node that meshes a flow sees only the client's half: replies leave from the task's
/// node). 0 is "established" so that entries written before states existed read as
/// live.
pub const FLOW_ESTABLISHED: u8 = 0;
/// A SYN seen, no ACK yet (in [`OPENING_MAP`]).
pub const FLOW_OPENING: u8 = 1;
/// A FIN seen from the client (in [`CLOSING_MAP`]).
pub const FLOW_CLOSING: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Backend address on the ingress network.
    pub backend: u32,
    /// Index of the frontend (published port).
    pub frontend: u16,
    /// `FLOW_*` (UDP flows: always established).
    pub state: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevPortKey {
    /// Backend address on the ingress network.
    pub addr: u32,
    /// Target port (wire order).
    pub port: u16,
    pub protocol: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// 1 once the agent has written the rest; 0: the mesh does nothing.
    pub enabled: u32,
    /// This node's underlay address (VTEP).
    pub vtep: u32,
    /// VNI of the ingress network (host order).
    pub vni: u32,
    /// VXLAN UDP port (wire order).
    pub vxlan_port: u16,
    /// `FLAG_*`.
    pub flags: u16,
    /// Ifindex, inside the ingress network's namespace, of the mesh veth's end there.
    pub netns_veth_ifindex: u32,
    /// Ifindex of the underlay interface (replies leave through it; the kernel's FIB
    /// lookup needs forwarding enabled on it).
    pub underlay_ifindex: u32,
}

/// Hash of a flow for Maglev: the client's address and port, the protocol and the
/// published port, not the node address the client reached, so every node maps a flow
/// to the same table entry. The same function runs in the XDP program and in tests.
#[inline(always)]
pub const fn flow_hash(src: u32, src_port: u16, dst_port: u16, protocol: u8) -> u32 {
    // Bob Jenkins' final mix (jhash's __jhash_final) over three words.
    let mut a = src.wrapping_add(0xdead_beef);
    let mut b = ((src_port as u32) << 16 | dst_port as u32).wrapping_add(0xdead_beef);
    let mut c = (protocol as u32).wrapping_add(0xdead_beef);
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

/// XDP: LRU node address (u32) -> [`NextHop`]: the FIB's answer towards a backend's
/// node, reused for [`NEXTHOP_TTL_NS`] so that not every frame pays for a lookup.
pub const NEXTHOP_MAP: &str = "MESH_NEXTHOP";
/// Nodes whose next hop is cached.
pub const MAX_NEXTHOPS: u32 = 4096;
/// How long a cached next hop is used before the FIB is asked again.
pub const NEXTHOP_TTL_NS: u64 = 1_000_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// Destination then source MAC.
    pub macs: [u8; 12],
    pub ifindex: u32,
    /// bpf_ktime_get_ns() of the lookup.
    pub at_ns: u64,
}

/// One slot of the stats map. The discriminant is the array index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Frames to a published port that the mesh sent to a remote backend (XDP_TX).
    Remote = 0,
    /// Frames to a published port sent to a backend on this node.
    Local = 1,
    /// Bytes of the frames above, before encapsulation.
    Bytes = 2,
    /// New flows given a backend.
    NewFlows = 3,
    /// Flows whose backend became unhealthy or was removed and got a new one.
    Rechosen = 4,
    /// Flow table inserts the kernel refused.
    FlowInsertFailed = 5,
    /// Flows ended by a TCP RST (their entry is removed).
    FlowsEnded = 6,
    /// Dropped: no backend takes new flows.
    DropNoBackend = 7,
    /// Dropped: TCP segment other than a SYN without a flow (round-robin mode), or on a
    /// flow whose backend is gone.
    DropNoFlow = 8,
    /// Dropped: IPv4 fragment to a published port (the ports of later fragments are
    /// unknown, so they cannot follow the first).
    DropFragment = 9,
    /// Dropped: no route or no resolved neighbour towards the backend's node.
    DropNoRoute = 10,
    /// Dropped: the frame could not be grown for the encapsulation.
    DropEncap = 11,
    /// Dropped: a header to a published port is cut short or contradicts itself.
    DropMalformed = 12,
    /// Reply path (task side): reply entries written (XDP: a meshed frame to a local
    /// backend, or one in VXLAN from a cluster VTEP; a connection's entry is written when
    /// it opens, when its handshake ends and when the client closes it).
    RepliesRecorded = 13,
    /// Reply path: replies rewritten to the published address and port.
    Replies = 14,
    /// Reply path: replies sent out of the underlay.
    RepliesOut = 15,
    /// Reply path: replies dropped (no route to the client, no published port known).
    RepliesDropped = 16,
    /// Entries written to the live flow table (UDP flows, TCP connections at the end of
    /// their handshake, connections found again after their entry was lost).
    LiveInserted = 17,
    /// Entries that left the live flow table because their connection ended (a FIN from
    /// the client moved it to the closing table, a RST removed it) or its backend went
    /// away. Inserted minus these minus the entries held: live flows the full table
    /// evicted.
    LiveClosed = 18,
    /// TCP segments other than a SYN whose connection is in no flow table (its entry
    /// was evicted under pressure, or the connection began before this node held it):
    /// sent to the Maglev backend in Maglev mode, dropped in round-robin mode.
    FlowMisses = 19,
}

impl Counter {
    pub const COUNT: u32 = 20;

    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Remote,
        Counter::Local,
        Counter::Bytes,
        Counter::NewFlows,
        Counter::Rechosen,
        Counter::FlowInsertFailed,
        Counter::FlowsEnded,
        Counter::DropNoBackend,
        Counter::DropNoFlow,
        Counter::DropFragment,
        Counter::DropNoRoute,
        Counter::DropEncap,
        Counter::DropMalformed,
        Counter::RepliesRecorded,
        Counter::Replies,
        Counter::RepliesOut,
        Counter::RepliesDropped,
        Counter::LiveInserted,
        Counter::LiveClosed,
        Counter::FlowMisses,
    ];

    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Stable lower-case name used in CLI output and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Remote => "mesh_remote",
            Counter::Local => "mesh_local",
            Counter::Bytes => "mesh_bytes",
            Counter::NewFlows => "mesh_new_flows",
            Counter::Rechosen => "mesh_flows_rechosen",
            Counter::FlowInsertFailed => "mesh_flow_insert_failed",
            Counter::FlowsEnded => "mesh_flows_ended_rst",
            Counter::DropNoBackend => "mesh_drop_no_backend",
            Counter::DropNoFlow => "mesh_drop_no_flow",
            Counter::DropFragment => "mesh_drop_fragment",
            Counter::DropNoRoute => "mesh_drop_no_route",
            Counter::DropEncap => "mesh_drop_encap",
            Counter::DropMalformed => "mesh_drop_malformed",
            Counter::RepliesRecorded => "mesh_replies_recorded",
            Counter::Replies => "mesh_replies",
            Counter::RepliesOut => "mesh_replies_out",
            Counter::RepliesDropped => "mesh_replies_dropped",
            Counter::LiveInserted => "mesh_live_flows_inserted",
            Counter::LiveClosed => "mesh_live_flows_closed",
            Counter::FlowMisses => "mesh_flow_misses",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Counter;

    #[test]
    fn all_is_in_index_order_and_complete() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i, "{c:?} is out of order");
        }
        assert_eq!(Counter::ALL.len() as u32, Counter::COUNT);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<super::FrontendKey>(), 4);
        assert_eq!(size_of::<super::Frontend>(), 16);
        assert_eq!(size_of::<super::BackendKey>(), 8);
        assert_eq!(size_of::<super::FlowKey>(), 16);
        // The size flow tables pinned by earlier agents were made with.
        assert_eq!(size_of::<super::FlowValue>(), 8);
        assert_eq!(size_of::<super::RevPortKey>(), 8);
        assert_eq!(size_of::<super::Config>(), 24);
    }
}
