//! The underlay XDP program's per-CPU counters.
//!
//! The map `UNDERLAY_STATS` is a per-CPU array of `u64`, one slot per [`Counter`].
//! Every frame adds one to [`Counter::Packets`] and its length to [`Counter::Bytes`],
//! then one to the deepest layer it could be parsed to, so the counters answer both
//! "how much traffic" and "what kind". The data path's guard adds what it did with
//! VXLAN on the data-path port (see [`GuardConfig`]).

/// Name of the per-CPU stats map in the object file and under the pin directory.
pub const STATS_MAP: &str = "UNDERLAY_STATS";
/// Name of the XDP program in the object file.
pub const PROGRAM: &str = "shoal_xdp_underlay";
/// How many IPv6 extension headers the parser follows before giving up on the L4 header.
pub const MAX_IPV6_EXT_HEADERS: u32 = 8;
/// How many 802.1Q/802.1ad tags the parser steps over.
pub const MAX_VLAN_TAGS: u32 = 2;

/// XDP program of the same object for the data-path interface, when the node's
/// data-path address is on another interface than the underlay: the guard and the mesh's
/// reply recording only (no routing mesh, no per-layer counting).
pub const DATA_PATH_PROGRAM: &str = "shoal_xdp_data_path";
/// Array of one [`GuardConfig`]: whether VXLAN on the data-path port is checked.
pub const GUARD_MAP: &str = "UNDERLAY_GUARD";
/// Hash map, a current cluster VTEP's IPv4 address (as on the wire, read natively) ->
/// 1: the outer sources VXLAN on the data-path port is accepted from.
pub const VTEPS_MAP: &str = "UNDERLAY_VTEPS";
/// VTEPs the guard holds: nodes of one cluster.
pub const MAX_VTEPS: u32 = 16_384;

/// The data path's guard. With `enforce` 1, every UDP datagram to `port` arriving on the
/// interface is VXLAN for this node: it passes only if its outer IPv4 source is in
/// [`VTEPS_MAP`], and is dropped and counted otherwise (IPv6 too: no VTEP is IPv6).
/// With `enforce` 0 (no cluster: the standalone mode, or nothing written yet) VXLAN is
/// not checked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardConfig {
    /// 1: check; 0: accept every source.
    pub enforce: u32,
    /// The data-path (VXLAN) UDP port, as on the wire, read natively.
    pub port: u16,
    pub pad: u16,
}

/// One slot of the stats map. The discriminant is the array index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every frame the program saw.
    Packets = 0,
    /// Sum of frame lengths, Ethernet header included.
    Bytes = 1,
    /// Frames that carried at least one VLAN tag.
    Vlan = 2,
    /// Frames whose IPv4 header parsed.
    Ipv4 = 3,
    /// Frames whose IPv6 header parsed.
    Ipv6 = 4,
    /// ARP frames.
    Arp = 5,
    /// Frames of any other ethertype.
    OtherL3 = 6,
    /// TCP segments whose TCP header is complete.
    Tcp = 7,
    /// UDP datagrams whose UDP header is complete.
    Udp = 8,
    /// ICMP (IPv4) messages.
    Icmp = 9,
    /// ICMPv6 messages.
    Icmpv6 = 10,
    /// IP packets with another protocol, no next header, or an extension-header chain
    /// longer than the parser follows.
    OtherL4 = 11,
    /// Non-first IP fragments: their L4 header is in another fragment.
    Fragment = 12,
    /// Frames cut short inside a header, or with a header that contradicts itself
    /// (IPv4 IHL below 5, a version nibble that does not match the ethertype).
    Malformed = 13,
    /// VXLAN on the data-path port from a current cluster VTEP (passed), on the
    /// underlay or the data-path interface.
    VxlanFromCluster = 14,
    /// VXLAN on the data-path port from any other source: dropped.
    VxlanDropped = 15,
}

impl Counter {
    /// Number of slots in the stats map.
    pub const COUNT: u32 = 16;

    /// All counters in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Packets,
        Counter::Bytes,
        Counter::Vlan,
        Counter::Ipv4,
        Counter::Ipv6,
        Counter::Arp,
        Counter::OtherL3,
        Counter::Tcp,
        Counter::Udp,
        Counter::Icmp,
        Counter::Icmpv6,
        Counter::OtherL4,
        Counter::Fragment,
        Counter::Malformed,
        Counter::VxlanFromCluster,
        Counter::VxlanDropped,
    ];

    /// Index of this counter in the stats map.
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Stable lower-case name used in CLI output and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Packets => "packets",
            Counter::Bytes => "bytes",
            Counter::Vlan => "vlan",
            Counter::Ipv4 => "ipv4",
            Counter::Ipv6 => "ipv6",
            Counter::Arp => "arp",
            Counter::OtherL3 => "other_l3",
            Counter::Tcp => "tcp",
            Counter::Udp => "udp",
            Counter::Icmp => "icmp",
            Counter::Icmpv6 => "icmpv6",
            Counter::OtherL4 => "other_l4",
            Counter::Fragment => "fragment",
            Counter::Malformed => "malformed",
            Counter::VxlanFromCluster => "vxlan_from_cluster",
            Counter::VxlanDropped => "vxlan_dropped_not_cluster",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Counter;

    #[test]
    fn all_is_in_index_order_and_complete() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(
                c.index() as usize,
                i,
                "{c:?} is out of order in Counter::ALL"
            );
        }
        assert_eq!(Counter::ALL.len() as u32, Counter::COUNT);
    }

    #[test]
    fn guard_config_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<super::GuardConfig>(), 8);
    }
}
