//! The order in which datagrams read from the gossip socket are opened.
//!
//! Everything sent to UDP 7946 waits in one socket buffer, members' probes and acks
//! among whatever else arrives. An agent short of CPU that opens a flood of garbage one
//! datagram at a time (each checked, some decrypted) falls behind: the kernel drops what
//! no longer fits, probes and acks with the rest, and the acks it still reads are late,
//! so members look unreachable because of a stranger's traffic. So the socket is read in
//! batches of up to [`BATCH`] before any datagram is opened; a batch holds members'
//! datagrams first (from an address a member gossips from), in arrival order. While the
//! socket has a backlog (the batch filled), datagrams from any other address are shed
//! unopened: costing a read and an address lookup, not a decryption. Without a backlog
//! they are opened as ever, so a stranger's datagram is still dropped for its own reason
//! and counted as such whenever the node keeps up.
//!
//! A member sending from an address it does not gossip from (a host with several) is
//! known by that address once one of its datagrams from there was opened; under a flood
//! that never pauses it is not, and it is heard again once the backlog is gone.
use std::net::SocketAddr;

/// Datagrams read from the socket in one go before any of them is opened.
pub(crate) const BATCH: usize = 64;

/// A datagram as read: its source and its bytes.
pub(crate) type Datagram = (SocketAddr, Vec<u8>);

/// Puts members' datagrams of `batch` first, keeping each group's arrival order; with
/// `backlog` (the socket held more than the batch), drops the others. Returns how many
/// were dropped.
pub(crate) fn members_first(
    batch: &mut Vec<Datagram>,
    backlog: bool,
    from_member: impl Fn(SocketAddr) -> bool,
) -> u64 {
    let (mut members, others): (Vec<_>, Vec<_>) =
        batch.drain(..).partition(|(from, _)| from_member(*from));
    let shed = if backlog {
        others.len() as u64
    } else {
        members.extend(others);
        0
    };
    *batch = members;
    shed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 7946))
    }

    fn batch(sources: &[u8]) -> Vec<Datagram> {
        sources
            .iter()
            .enumerate()
            .map(|(i, s)| (at(*s), vec![i as u8]))
            .collect()
    }

    fn member(from: SocketAddr) -> bool {
        matches!(from, SocketAddr::V4(a) if a.ip().octets()[3] < 10)
    }

    #[test]
    fn members_datagrams_are_opened_first_in_arrival_order() {
        let mut b = batch(&[50, 1, 51, 2, 1]);
        assert_eq!(members_first(&mut b, false, member), 0);
        let order: Vec<(SocketAddr, u8)> =
            b.iter().map(|(from, bytes)| (*from, bytes[0])).collect();
        // Members 1, 2, 1 (datagrams 1, 3, 4), then the strangers 50, 51 (0, 2).
        assert_eq!(
            order,
            [(at(1), 1), (at(2), 3), (at(1), 4), (at(50), 0), (at(51), 2)]
        );
    }

    #[test]
    fn strangers_are_shed_only_while_the_socket_has_a_backlog() {
        let mut b = batch(&[50, 1, 51, 52, 2]);
        assert_eq!(members_first(&mut b, true, member), 3);
        let sources: Vec<SocketAddr> = b.iter().map(|(from, _)| *from).collect();
        assert_eq!(sources, [at(1), at(2)]);

        let mut only_strangers = batch(&[50, 51]);
        assert_eq!(members_first(&mut only_strangers, true, member), 2);
        assert!(only_strangers.is_empty());
        let mut quiet = batch(&[50, 51]);
        assert_eq!(members_first(&mut quiet, false, member), 0);
        assert_eq!(quiet.len(), 2);
    }
}
