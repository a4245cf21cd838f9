//! How the device moves packets in batches (pure functions over bytes, no I/O):
//!
//! - runs of datagrams that one UDP GSO send can carry (`UDP_SEGMENT`: one peer, every
//!   datagram of the first one's length except the last, which may be shorter);
//! - runs of decrypted packets that one TUN write can carry as a UDP GSO super-packet
//!   (`IFF_VNET_HDR`, `VIRTIO_NET_HDR_GSO_UDP_L4`): the VXLAN datagrams of one outer
//!   flow, of equal length; the kernel cuts it back into those datagrams, and the VXLAN
//!   device's GRO merges the inner TCP segments they carry;
//! - the super-packet's headers.

/// Length of the `virtio_net_hdr` in front of every packet read from or written to a
/// TUN made with `IFF_VNET_HDR` (no `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
pub const VNET_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const VNET_GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`.
pub const VNET_GSO_UDP_L4: u8 = 5;
/// Most datagrams in one GSO send or one super-packet (the kernel's `UDP_MAX_SEGMENTS`
/// is 64 on the oldest kernels that have UDP GSO).
pub const MAX_SEGMENTS: usize = 64;
/// IPv4 header (no options) and UDP header: what comes before a datagram's payload.
pub const IP_UDP_HDR: usize = 28;
/// The largest IPv4 packet.
const MAX_IPV4: usize = 65_535;

/// The end (exclusive) of the run that starts at `start`, among `n` items: item `j`
/// joins while `joins(start, j)`, its length (`len(j)`) is at most the first one's
/// (a shorter one ends the run), the run has fewer than [`MAX_SEGMENTS`] items and
/// its lengths add up, with [`IP_UDP_HDR`], to one IPv4 packet at most.
pub fn run_end(
    n: usize,
    start: usize,
    len: impl Fn(usize) -> usize,
    joins: impl Fn(usize, usize) -> bool,
) -> usize {
    let size = len(start);
    let mut total = IP_UDP_HDR + size;
    let mut end = start + 1;
    while end < n && end - start < MAX_SEGMENTS && size > 0 {
        let l = len(end);
        if l > size || l == 0 || total + l > MAX_IPV4 || !joins(start, end) {
            break;
        }
        total += l;
        end += 1;
        if l < size {
            break;
        }
    }
    end
}

fn be16(p: &[u8], at: usize) -> usize {
    u16::from_be_bytes([p[at], p[at + 1]]) as usize
}

/// Whether `p` is an IPv4 UDP packet that a super-packet can carry: no IP options, not
/// a fragment, a payload, lengths that agree with its size.
pub fn coalescable(p: &[u8]) -> bool {
    p.len() > IP_UDP_HDR
        && p[0] == 0x45
        && p[9] == 17
        && be16(p, 6) & 0x3fff == 0
        && be16(p, 2) == p.len()
        && be16(p, 24) == p.len() - 20
}

/// Whether `a` and `b` (both [`coalescable`]) belong to one outer flow: addresses,
/// ports and TOS (ECN marks are kept) alike.
pub fn same_flow(a: &[u8], b: &[u8]) -> bool {
    a[1] == b[1] && a[12..24] == b[12..24]
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

/// Makes `first` (a [`coalescable`] packet) the head of a super-packet whose payloads
/// add up to `payload` bytes, each datagram's payload `segment` bytes (the last may be
/// shorter): IPv4 total length and checksum, UDP length, and the UDP checksum field
/// holding the pseudo-header's sum (the kernel fills in each datagram's, as for any
/// packet whose checksum is left to offload). Returns the `virtio_net_hdr` to write in
/// front of it.
pub fn super_header(first: &mut [u8], payload: usize, segment: usize) -> [u8; VNET_HDR_LEN] {
    let ip_len = (IP_UDP_HDR + payload) as u16;
    let udp_len = (8 + payload) as u16;
    first[2..4].copy_from_slice(&ip_len.to_be_bytes());
    first[10..12].copy_from_slice(&[0, 0]);
    let ip_sum = !fold(sum16(&first[..20]));
    first[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    first[24..26].copy_from_slice(&udp_len.to_be_bytes());
    let pseudo = fold(sum16(&first[12..20]) + 17 + udp_len as u32);
    first[26..28].copy_from_slice(&pseudo.to_be_bytes());
    vnet_header(
        VNET_F_NEEDS_CSUM,
        VNET_GSO_UDP_L4,
        IP_UDP_HDR,
        segment,
        20,
        6,
    )
}

/// A `virtio_net_hdr` (native byte order: the TUN's legacy header).
pub fn vnet_header(
    flags: u8,
    gso_type: u8,
    hdr_len: usize,
    gso_size: usize,
    csum_start: usize,
    csum_offset: usize,
) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&(hdr_len as u16).to_ne_bytes());
    h[4..6].copy_from_slice(&(gso_size as u16).to_ne_bytes());
    h[6..8].copy_from_slice(&(csum_start as u16).to_ne_bytes());
    h[8..10].copy_from_slice(&(csum_offset as u16).to_ne_bytes());
    h
}

/// What a `virtio_net_hdr` read from the TUN asks: (flags, gso type, csum start, csum
/// offset).
pub fn parse_vnet_header(h: &[u8]) -> (u8, u8, usize, usize) {
    let at = |i: usize| u16::from_ne_bytes([h[i], h[i + 1]]) as usize;
    (h[0], h[1], at(6), at(8))
}

/// Completes a checksum the kernel left to offload (`VIRTIO_NET_HDR_F_NEEDS_CSUM`):
/// the ones' complement sum from `start` to the end, stored at `start + offset`
/// (whose field already holds the pseudo-header's sum). False if out of bounds.
pub fn complete_checksum(p: &mut [u8], start: usize, offset: usize) -> bool {
    if start >= p.len() || start + offset + 2 > p.len() {
        return false;
    }
    let mut sum = !fold(sum16(&p[start..]));
    // A UDP checksum of zero means "none": send its equivalent.
    if sum == 0 {
        sum = 0xffff;
    }
    p[start + offset..start + offset + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/UDP packet 10.0.0.1:4000 -> 10.0.0.2:4789 with `payload` bytes of `fill`.
    fn packet(payload: usize, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; IP_UDP_HDR + payload];
        p[..20].copy_from_slice(&[
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[20..28].copy_from_slice(&[0x0f, 0xa0, 0x12, 0xb5, 0, 0, 0, 0]);
        p[24..26].copy_from_slice(&(len - 20).to_be_bytes());
        p
    }

    #[test]
    fn runs_take_equal_lengths_and_end_after_a_shorter_one() {
        let lens = [100, 100, 100, 60, 100, 100];
        let all = |_: usize, _: usize| true;
        assert_eq!(run_end(lens.len(), 0, |i| lens[i], all), 4);
        assert_eq!(run_end(lens.len(), 4, |i| lens[i], all), 6);
        // A longer one starts a run of its own.
        let lens = [60, 100];
        assert_eq!(run_end(2, 0, |i| lens[i], all), 1);
        // One that does not join ends it.
        let lens = [100; 5];
        assert_eq!(run_end(5, 0, |i| lens[i], |_, j| j != 3), 3);
    }

    #[test]
    fn runs_fit_one_ipv4_packet_and_the_segment_limit() {
        let lens = vec![1412usize; 100];
        let end = run_end(lens.len(), 0, |i| lens[i], |_, _| true);
        assert_eq!(end, (65_535 - IP_UDP_HDR) / 1412);
        let small = vec![10usize; 100];
        assert_eq!(
            run_end(small.len(), 0, |i| small[i], |_, _| true),
            MAX_SEGMENTS
        );
    }

    #[test]
    fn coalescable_wants_plain_udp_with_consistent_lengths() {
        let p = packet(100, 7);
        assert!(coalescable(&p));
        let mut frag = p.clone();
        frag[6] = 0x20; // more fragments
        assert!(!coalescable(&frag));
        let mut tcp = p.clone();
        tcp[9] = 6;
        assert!(!coalescable(&tcp));
        let mut options = p.clone();
        options[0] = 0x46;
        assert!(!coalescable(&options));
        assert!(!coalescable(&p[..p.len() - 1]));
        let mut other = p.clone();
        assert!(same_flow(&p, &other));
        other[23] ^= 1; // destination port
        assert!(!same_flow(&p, &other));
        let mut ecn = p.clone();
        ecn[1] = 3;
        assert!(!same_flow(&p, &ecn));
    }

    #[test]
    fn super_header_sets_lengths_and_checksums() {
        let mut first = packet(1412, 1);
        let h = super_header(&mut first, 3 * 1412, 1412);
        assert_eq!(be16(&first, 2), IP_UDP_HDR + 3 * 1412);
        assert_eq!(be16(&first, 24), 8 + 3 * 1412);
        // The IPv4 header sums to all ones.
        assert_eq!(fold(sum16(&first[..20])), 0xffff);
        // The UDP field holds the pseudo-header's sum: completing it over a payload of
        // zeros gives the checksum of the header fields alone.
        let pseudo = u16::from_be_bytes([first[26], first[27]]);
        let want = fold(0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + (8 + 3 * 1412) as u32);
        assert_eq!(pseudo, want);
        assert_eq!(h[0], VNET_F_NEEDS_CSUM);
        assert_eq!(h[1], VNET_GSO_UDP_L4);
        assert_eq!(parse_vnet_header(&h), (1, 5, 20, 6));
        assert_eq!(u16::from_ne_bytes([h[4], h[5]]), 1412);
    }

    #[test]
    fn a_completed_checksum_verifies() {
        let mut p = packet(33, 0x5a);
        // The pseudo-header's sum in the field, as the kernel leaves it.
        let pseudo = fold(sum16(&p[12..20]) + 17 + be16(&p, 24) as u32);
        p[26..28].copy_from_slice(&pseudo.to_be_bytes());
        assert!(complete_checksum(&mut p, 20, 6));
        // Pseudo-header plus the UDP header and payload (checksum included) sums to
        // all ones.
        let total = fold(sum16(&p[12..20]) + 17 + be16(&p, 24) as u32 + sum16(&p[20..]));
        assert_eq!(total, 0xffff);
        assert!(!complete_checksum(&mut p, 60, 6));
    }
}
