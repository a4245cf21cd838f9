//! TUN queues -> peers: the `wg-out` workers.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
    sync::{atomic::Ordering::Relaxed, Arc},
    thread,
};

use boringtun::noise::TunnResult;

use super::{errno, wait_readable, Peer, Shared, BATCH, MAX_OUT_WORKERS, SOL_UDP, UDP_SEGMENT};
use crate::wireguard::batch::{self, VNET_HDR_LEN};

/// `peer`'s endpoint as a `sockaddr_in`.
fn sockaddr(endpoint: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: endpoint.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*endpoint.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The outbound thread's buffers, made once.
struct Outbound {
    /// One packet as read from the TUN: its `virtio_net_hdr`, then the packet.
    input: Vec<u8>,
    /// The batch's datagrams, one per slot.
    sealed: Vec<u8>,
    /// Each datagram's (offset in `sealed`, length) and peer.
    datagrams: Vec<(usize, usize)>,
    peers: Vec<Arc<Peer>>,
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    addrs: Vec<libc::sockaddr_in>,
    /// Room for each message's `UDP_SEGMENT` control message.
    control: Vec<[u64; 4]>,
    /// Each message's datagrams, as a range of the batch.
    runs: Vec<(usize, usize)>,
}

impl Outbound {
    fn new(slot: usize) -> Outbound {
        Outbound {
            input: vec![0; VNET_HDR_LEN + slot],
            sealed: vec![0; BATCH * slot],
            datagrams: Vec::with_capacity(BATCH),
            peers: Vec::with_capacity(BATCH),
            // SAFETY: iovec, mmsghdr and sockaddr_in are plain C structs; all zeroes is
            // a valid (empty) value of each.
            iov: vec![unsafe { std::mem::zeroed() }; BATCH],
            msgs: vec![unsafe { std::mem::zeroed() }; BATCH],
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            control: vec![[0; 4]; BATCH],
            runs: Vec::with_capacity(BATCH),
        }
    }

    /// Reads and encrypts up to [`BATCH`] packets from the TUN queue `fd`; false once
    /// it has no more.
    fn fill(&mut self, shared: &Shared, fd: libc::c_int) -> bool {
        let slot = shared.slot;
        self.datagrams.clear();
        self.peers.clear();
        let mut last: Option<(Ipv4Addr, Arc<Peer>)> = None;
        while self.datagrams.len() < BATCH {
            // SAFETY: read(2) into our own buffer from our own (non-blocking) TUN
            // descriptor.
            let n = unsafe {
                libc::read(
                    fd,
                    self.input.as_mut_ptr() as *mut libc::c_void,
                    self.input.len(),
                )
            };
            if n <= 0 {
                return false;
            }
            let n = n as usize;
            if n >= self.input.len() {
                // Larger than the MTU: cut short, never sent.
                shared.counters.io_errors.fetch_add(1, Relaxed);
                continue;
            }
            let (hdr, pkt) = self.input[..n].split_at_mut(VNET_HDR_LEN.min(n));
            if hdr.len() < VNET_HDR_LEN || pkt.len() < 20 || pkt[0] >> 4 != 4 {
                shared.counters.not_ipv4.fetch_add(1, Relaxed);
                continue;
            }
            // The TUN is asked for no offload: a packet still left to GSO, or one whose
            // checksum cannot be completed, is not sent.
            let (flags, gso, start, offset) = batch::parse_vnet_header(hdr);
            if gso != batch::VNET_GSO_NONE
                || (flags & batch::VNET_F_NEEDS_CSUM != 0
                    && !batch::complete_checksum(pkt, start, offset))
            {
                shared.counters.io_errors.fetch_add(1, Relaxed);
                continue;
            }
            let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
            let peer = match &last {
                Some((addr, p)) if *addr == dst => p.clone(),
                _ => match shared.peer(dst) {
                    Some(p) => {
                        last = Some((dst, p.clone()));
                        p
                    }
                    None => {
                        shared.counters.no_peer.fetch_add(1, Relaxed);
                        continue;
                    }
                },
            };
            let at = self.datagrams.len() * slot;
            let out = &mut self.sealed[at..at + slot];
            let base = out.as_ptr() as usize;
            let result = peer.sending().tunn().encapsulate(pkt, out);
            match result {
                TunnResult::WriteToNetwork(d) => {
                    peer.counters.tx_packets.fetch_add(1, Relaxed);
                    self.datagrams
                        .push((at + (d.as_ptr() as usize - base), d.len()));
                    self.peers.push(peer);
                }
                TunnResult::Err(_) => {
                    peer.counters.dropped.fetch_add(1, Relaxed);
                }
                _ => {}
            }
        }
        true
    }

    /// Sends the batch: one message per run of datagrams to one peer that UDP GSO can
    /// carry (one datagram each when it cannot), all messages in one `sendmmsg`.
    fn send(&mut self, shared: &Shared) {
        let n = self.datagrams.len();
        let gso = shared.gso.load(Relaxed);
        self.runs.clear();
        let mut i = 0;
        while i < n {
            let end = if gso {
                let (datagrams, peers) = (&self.datagrams, &self.peers);
                batch::run_end(
                    n,
                    i,
                    |k| datagrams[k].1,
                    |a, b| Arc::ptr_eq(&peers[a], &peers[b]),
                )
            } else {
                i + 1
            };
            for k in i..end {
                let (at, len) = self.datagrams[k];
                self.iov[k] = libc::iovec {
                    iov_base: self.sealed[at..].as_mut_ptr() as *mut libc::c_void,
                    iov_len: len,
                };
            }
            let m = self.runs.len();
            self.addrs[m] = sockaddr(self.peers[i].endpoint);
            // SAFETY: all zeroes is a valid msghdr; its pointers point into this
            // struct's own buffers, which outlive the sendmmsg below.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_name = &mut self.addrs[m] as *mut libc::sockaddr_in as *mut libc::c_void;
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdr.msg_iov = &mut self.iov[i];
            hdr.msg_iovlen = (end - i) as _;
            if end - i > 1 {
                hdr.msg_control = self.control[m].as_mut_ptr() as *mut libc::c_void;
                // SAFETY: CMSG_* compute sizes and positions inside the control buffer
                // just set (32 bytes, room for one cmsghdr and a u16).
                unsafe {
                    hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
                    let c = libc::CMSG_FIRSTHDR(&hdr);
                    (*c).cmsg_level = SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    std::ptr::write_unaligned(
                        libc::CMSG_DATA(c) as *mut u16,
                        self.datagrams[i].1 as u16,
                    );
                }
            }
            self.msgs[m] = libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            };
            self.runs.push((i, end));
            i = end;
        }
        let fd = shared.udp.as_raw_fd();
        let total = self.runs.len();
        let mut done = 0;
        while done < total {
            // SAFETY: sendmmsg over the messages built above, all valid.
            let sent = unsafe {
                libc::sendmmsg(
                    fd,
                    self.msgs[done..].as_mut_ptr(),
                    (total - done) as libc::c_uint,
                    0,
                )
            };
            if sent > 0 {
                for &(a, b) in &self.runs[done..done + sent as usize] {
                    let bytes: usize = self.datagrams[a..b].iter().map(|d| d.1).sum();
                    self.peers[a]
                        .counters
                        .tx_bytes
                        .fetch_add(bytes as u64, Relaxed);
                }
                done += sent as usize;
                continue;
            }
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            let (a, b) = self.runs[done];
            if b - a > 1 && matches!(e, libc::EIO | libc::EINVAL | libc::EOPNOTSUPP) {
                // The kernel cannot segment it here: one datagram each, from now on.
                if shared.gso.swap(false, Relaxed) {
                    tracing::warn!(
                        errno = e,
                        "WireGuard: UDP GSO refused, sending datagrams one by one"
                    );
                }
                for k in a..b {
                    let (at, len) = self.datagrams[k];
                    shared.send(&self.peers[k], &self.sealed[at..at + len]);
                }
            } else {
                shared.counters.io_errors.fetch_add((b - a) as u64, Relaxed);
            }
            done += 1;
        }
    }
}

/// How many `wg-out` workers (and TUN queues): one per core the agent may use, at most
/// [`MAX_OUT_WORKERS`]. The kernel gives each outer flow (one per inner flow: VXLAN's
/// source port follows the inner flow's hash) to one queue, so a flow's packets stay in
/// order; a peer's session is shared, behind its mutex, held only for the encryption.
pub(super) fn workers() -> usize {
    thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_OUT_WORKERS)
}

/// TUN queue `queue` -> peers.
pub(super) fn run(shared: &Shared, queue: usize) {
    let mut out = Outbound::new(shared.slot);
    let fd = shared.tun[queue].as_raw_fd();
    while wait_readable(shared, fd) {
        loop {
            let more = out.fill(shared, fd);
            if !out.datagrams.is_empty() {
                out.send(shared);
            }
            if !more {
                break;
            }
        }
    }
}
