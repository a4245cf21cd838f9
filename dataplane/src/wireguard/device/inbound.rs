//! Peers -> TUN: the `wg-in` thread.

use std::{net::Ipv4Addr, os::fd::AsRawFd, sync::atomic::Ordering::Relaxed};

use boringtun::noise::{errors::WireGuardError, TunnResult};

use super::{errno, Peer, Session, Shared, BUF, RX_BUF, RX_MSGS, RX_PACKETS, SOL_UDP, UDP_GRO};
use crate::wireguard::batch::{self, IP_UDP_HDR, VNET_HDR_LEN};

/// Decrypted packets on their way into the TUN, and how they are written.
struct Plain {
    /// The packets, one per slot.
    buf: Vec<u8>,
    /// Each packet's (offset in `buf`, length).
    packets: Vec<(usize, usize)>,
    iov: Vec<libc::iovec>,
}

/// The `virtio_net_hdr` of a packet written as it is.
const PLAIN_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

impl Plain {
    fn new(slot: usize) -> Plain {
        Plain {
            buf: vec![0; RX_PACKETS * slot],
            packets: Vec::with_capacity(RX_PACKETS),
            // SAFETY: all zeroes is a valid (empty) iovec.
            iov: vec![unsafe { std::mem::zeroed() }; batch::MAX_SEGMENTS + 1],
        }
    }

    fn full(&self) -> bool {
        self.packets.len() == RX_PACKETS
    }

    /// Writes the packets to the TUN: each run that one super-packet can carry as
    /// one, the others one by one.
    fn flush(&mut self, shared: &Shared) {
        let n = self.packets.len();
        let mut i = 0;
        while i < n {
            let (at, len) = self.packets[i];
            let end =
                if shared.coalesce.load(Relaxed) && batch::coalescable(&self.buf[at..at + len]) {
                    let (buf, packets) = (&self.buf, &self.packets);
                    let bytes = |k: usize| &buf[packets[k].0..packets[k].0 + packets[k].1];
                    batch::run_end(
                        n,
                        i,
                        |k| packets[k].1.saturating_sub(IP_UDP_HDR),
                        |a, b| batch::coalescable(bytes(b)) && batch::same_flow(bytes(a), bytes(b)),
                    )
                } else {
                    i + 1
                };
            if end - i == 1 || !self.write_super(shared, i, end) {
                for k in i..end {
                    let (at, len) = self.packets[k];
                    self.write_one(shared, at, len);
                }
            }
            i = end;
        }
        self.packets.clear();
    }

    fn write_one(&mut self, shared: &Shared, at: usize, len: usize) {
        self.iov[0] = libc::iovec {
            iov_base: PLAIN_HDR.as_ptr() as *mut libc::c_void,
            iov_len: VNET_HDR_LEN,
        };
        self.iov[1] = libc::iovec {
            iov_base: self.buf[at..].as_mut_ptr() as *mut libc::c_void,
            iov_len: len,
        };
        if writev(shared, &self.iov[..2]).is_err() {
            shared.counters.io_errors.fetch_add(1, Relaxed);
        }
    }

    /// Writes packets `i..end` (one flow, equal lengths but the last) as one
    /// super-packet; false (the packets untouched) if the TUN refuses it.
    fn write_super(&mut self, shared: &Shared, i: usize, end: usize) -> bool {
        let (at, len) = self.packets[i];
        let segment = len - IP_UDP_HDR;
        let payload: usize = self.packets[i..end].iter().map(|p| p.1 - IP_UDP_HDR).sum();
        let mut saved = [0u8; IP_UDP_HDR];
        saved.copy_from_slice(&self.buf[at..at + IP_UDP_HDR]);
        let hdr = batch::super_header(&mut self.buf[at..at + len], payload, segment);
        self.iov[0] = libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: VNET_HDR_LEN,
        };
        for (slot, k) in (i..end).enumerate() {
            let (at, len) = self.packets[k];
            let skip = if k == i { 0 } else { IP_UDP_HDR };
            self.iov[slot + 1] = libc::iovec {
                iov_base: self.buf[at + skip..].as_mut_ptr() as *mut libc::c_void,
                iov_len: len - skip,
            };
        }
        match writev(shared, &self.iov[..end - i + 1]) {
            Ok(()) => true,
            Err(e) if e == libc::EINVAL => {
                // This kernel's TUN takes no UDP GSO: one packet per write from now on.
                if shared.coalesce.swap(false, Relaxed) {
                    tracing::warn!(
                        "WireGuard: the TUN refused a UDP GSO write, writing packets one by one"
                    );
                }
                self.buf[at..at + IP_UDP_HDR].copy_from_slice(&saved);
                false
            }
            Err(_) => {
                shared
                    .counters
                    .io_errors
                    .fetch_add((end - i) as u64, Relaxed);
                true
            }
        }
    }
}

/// One writev(2) into the TUN; the errno if it fails.
fn writev(shared: &Shared, iov: &[libc::iovec]) -> Result<(), i32> {
    // SAFETY: writev(2) from valid iovecs to our own TUN descriptor.
    let n = unsafe {
        libc::writev(
            shared.tun[0].as_raw_fd(),
            iov.as_ptr(),
            iov.len() as libc::c_int,
        )
    };
    if n < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// The inbound thread's receive buffers, made once.
struct Inbound {
    bufs: Vec<u8>,
    iov: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
    control: Vec<[u64; 8]>,
    msgs: Vec<libc::mmsghdr>,
}

impl Inbound {
    fn new() -> Inbound {
        let mut me = Inbound {
            bufs: vec![0; RX_MSGS * RX_BUF],
            // SAFETY: all zeroes is a valid value of these plain C structs.
            iov: vec![unsafe { std::mem::zeroed() }; RX_MSGS],
            addrs: vec![unsafe { std::mem::zeroed() }; RX_MSGS],
            control: vec![[0; 8]; RX_MSGS],
            msgs: vec![unsafe { std::mem::zeroed() }; RX_MSGS],
        };
        for k in 0..RX_MSGS {
            me.iov[k] = libc::iovec {
                iov_base: me.bufs[k * RX_BUF..].as_mut_ptr() as *mut libc::c_void,
                iov_len: RX_BUF,
            };
        }
        me
    }

    /// Receives up to [`RX_MSGS`] messages (waits [`POLL`] at most for the first);
    /// how many.
    fn receive(&mut self, shared: &Shared) -> usize {
        for k in 0..RX_MSGS {
            let hdr = &mut self.msgs[k].msg_hdr;
            hdr.msg_name = &mut self.addrs[k] as *mut libc::sockaddr_in as *mut libc::c_void;
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdr.msg_iov = &mut self.iov[k];
            hdr.msg_iovlen = 1;
            hdr.msg_control = self.control[k].as_mut_ptr() as *mut libc::c_void;
            hdr.msg_controllen = std::mem::size_of::<[u64; 8]>() as _;
            hdr.msg_flags = 0;
        }
        // SAFETY: recvmmsg into the buffers set up above, all owned by self.
        let n = unsafe {
            libc::recvmmsg(
                shared.udp.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                RX_MSGS as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            if !matches!(errno(), libc::EAGAIN | libc::EINTR) {
                shared.counters.io_errors.fetch_add(1, Relaxed);
            }
            return 0;
        }
        n as usize
    }

    /// Message `k`: its sender, its bytes, and the size of the datagrams UDP GRO
    /// merged into it (its length if none).
    fn message(&self, k: usize) -> (Option<Ipv4Addr>, &[u8], usize) {
        let m = &self.msgs[k];
        let len = (m.msg_len as usize).min(RX_BUF);
        let a = &self.addrs[k];
        let from = (a.sin_family == libc::AF_INET as libc::sa_family_t)
            .then(|| Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)));
        let mut segment = len;
        // SAFETY: walking the control messages the kernel wrote into our buffer.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
            while !c.is_null() {
                if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    let size = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                    if size > 0 {
                        segment = size as usize;
                    }
                }
                c = libc::CMSG_NXTHDR(&m.msg_hdr, c);
            }
        }
        (from, &self.bufs[k * RX_BUF..k * RX_BUF + len], segment)
    }
}

/// Peers -> TUN.
pub(super) fn run(shared: &Shared) {
    let mut rx = Inbound::new();
    let mut plain = Plain::new(shared.slot);
    let mut net = vec![0u8; BUF];
    while !shared.stop.load(Relaxed) {
        let n = rx.receive(shared);
        for k in 0..n {
            let truncated = rx.msgs[k].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let (from, bytes, segment) = rx.message(k);
            if truncated {
                shared.counters.io_errors.fetch_add(1, Relaxed);
                continue;
            }
            let peer = from.and_then(|a| shared.peer(a));
            for datagram in bytes.chunks(segment.max(1)) {
                let Some(peer) = &peer else {
                    shared.counters.foreign.fetch_add(1, Relaxed);
                    continue;
                };
                peer.counters
                    .rx_bytes
                    .fetch_add(datagram.len() as u64, Relaxed);
                let session = peer.receiving(datagram);
                let mut result = receive(shared, peer, session, datagram, &mut plain, &mut net);
                // A handshake initiation names no session: while a key changes, one the
                // current session turned away (its first check, mac1, is over the key it
                // was made for; nothing changed) may be for the previous one.
                if let (Err(_), Some(previous), Some(1)) =
                    (&result, &peer.previous, datagram.first())
                {
                    result = receive(shared, peer, previous, datagram, &mut plain, &mut net);
                }
                if let Err(e) = result {
                    shared.count_error(peer, &e);
                }
            }
        }
        plain.flush(shared);
    }
}

/// Takes one datagram from `peer` in `session`: answers handshakes, keeps decrypted
/// packets in `plain` for the TUN. The error of the datagram itself, uncounted.
fn receive(
    shared: &Shared,
    peer: &Peer,
    session: &Session,
    datagram: &[u8],
    plain: &mut Plain,
    net: &mut [u8],
) -> Result<(), WireGuardError> {
    let from = *peer.endpoint.ip();
    let kind = datagram.first().copied().unwrap_or(0);
    let slot = shared.slot;
    if plain.full() {
        plain.flush(shared);
    }
    let at = plain.packets.len() * slot;
    let out = &mut plain.buf[at..at + slot];
    let base = out.as_ptr() as usize;
    let src = Some(std::net::IpAddr::V4(from));
    let result = session.tunn().decapsulate(src, datagram, out);
    match result {
        TunnResult::WriteToNetwork(d) => {
            match (kind, d.first()) {
                // An initiation answered, or our initiation answered (the keepalive
                // that confirms it): a session is made.
                (1, Some(2)) | (2, Some(4)) => {
                    peer.counters.handshakes.fetch_add(1, Relaxed);
                }
                // A cookie instead: too many handshakes at once.
                (_, Some(3)) => {
                    shared.counters.under_load.fetch_add(1, Relaxed);
                }
                _ => {}
            }
            shared.send(peer, d);
            // Queued packets go out behind it (boringtun's protocol: call again with
            // nothing until it is done).
            loop {
                let result = session.tunn().decapsulate(None, &[], net);
                match result {
                    TunnResult::WriteToNetwork(d) => shared.send(peer, d),
                    _ => break,
                }
            }
        }
        TunnResult::WriteToTunnelV4(p, src) => {
            if src == from {
                peer.counters.rx_packets.fetch_add(1, Relaxed);
                let off = p.as_ptr() as usize - base;
                plain.packets.push((at + off, p.len()));
            } else {
                shared.counters.spoofed.fetch_add(1, Relaxed);
                peer.counters.dropped.fetch_add(1, Relaxed);
            }
        }
        TunnResult::WriteToTunnelV6(..) => {
            shared.counters.spoofed.fetch_add(1, Relaxed);
            peer.counters.dropped.fetch_add(1, Relaxed);
        }
        TunnResult::Done => {}
        TunnResult::Err(e) => return Err(e),
    }
    Ok(())
}
