//! What sealed datagrams travel on: real UDP, or [`MemoryNet`], an in-process network of
//! byte queues for tests and benchmarks that can cut links, isolate nodes, inject raw
//! bytes and record what a node received (to replay it).
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use anyhow::{bail, Context};
use tokio::sync::mpsc;

/// Bytes queued per in-memory socket before further datagrams are dropped, as a full UDP
/// receive buffer would (Linux's default `net.core.rmem_default`).
const RCVBUF: usize = 212_992;
/// Datagrams queued per in-memory socket at most.
const QUEUE: usize = 256;

/// Where a node's gossip socket lives.
#[derive(Clone, Default)]
pub enum Wire {
    /// UDP on the node's real address (7946 by default).
    #[default]
    Udp,
    /// The in-process network.
    Memory(MemoryNet),
}

type Packet = (SocketAddr, Vec<u8>);

#[derive(Default)]
struct NetInner {
    sockets: HashMap<SocketAddr, (mpsc::Sender<Packet>, Arc<AtomicUsize>)>,
    cut: HashSet<(SocketAddr, SocketAddr)>,
    isolated: HashSet<SocketAddr>,
    recording: HashMap<SocketAddr, Vec<Packet>>,
    delivered: u64,
    lost: u64,
    /// Random loss, in parts per million, and the generator's state (xorshift64).
    loss_ppm: u32,
    rng: u64,
}

/// An in-process datagram network. Cloning gives another handle to the same network.
#[derive(Clone, Default)]
pub struct MemoryNet {
    inner: Arc<Mutex<NetInner>>,
}

impl MemoryNet {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts every link between a member of `a` and a member of `b`, both ways.
    pub fn partition(&self, a: &[SocketAddr], b: &[SocketAddr]) {
        let mut inner = self.lock();
        for x in a {
            for y in b {
                inner.cut.insert((*x, *y));
                inner.cut.insert((*y, *x));
            }
        }
    }

    /// Cuts `addr` off from everyone (its process keeps running).
    pub fn isolate(&self, addr: SocketAddr) {
        self.lock().isolated.insert(addr);
    }

    /// Restores every cut link and isolated node.
    pub fn heal(&self) {
        let mut inner = self.lock();
        inner.cut.clear();
        inner.isolated.clear();
    }

    /// Loses each datagram with probability `ppm` / 1,000,000, from a generator seeded
    /// with `seed` (0 for none), so a run can be repeated.
    pub fn set_loss(&self, ppm: u32, seed: u64) {
        let mut inner = self.lock();
        inner.loss_ppm = ppm.min(1_000_000);
        inner.rng = seed | 1;
    }

    /// Delivers raw bytes to `to` as if sent from `from` (cuts apply).
    pub fn inject(&self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.deliver(from, to, bytes);
    }

    /// Starts keeping a copy of every datagram delivered to `addr`.
    pub fn record(&self, addr: SocketAddr) {
        self.lock().recording.entry(addr).or_default();
    }

    /// The datagrams delivered to `addr` since [`MemoryNet::record`].
    pub fn recorded(&self, addr: SocketAddr) -> Vec<(SocketAddr, Vec<u8>)> {
        self.lock()
            .recording
            .get(&addr)
            .cloned()
            .unwrap_or_default()
    }

    /// (delivered, lost to cuts or full queues) datagrams so far.
    pub fn stats(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.delivered, inner.lost)
    }

    fn deliver(&self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        let mut inner = self.lock();
        let unlucky = inner.loss_ppm > 0 && {
            let mut x = inner.rng;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            inner.rng = x;
            x % 1_000_000 < u64::from(inner.loss_ppm)
        };
        if unlucky
            || inner.isolated.contains(&from)
            || inner.isolated.contains(&to)
            || inner.cut.contains(&(from, to))
        {
            inner.lost += 1;
            return;
        }
        if let Some(rec) = inner.recording.get_mut(&to) {
            rec.push((from, bytes.clone()));
        }
        let Some((tx, queued)) = inner.sockets.get(&to) else {
            inner.lost += 1;
            return;
        };
        let len = bytes.len();
        if queued.load(Ordering::Relaxed) + len <= RCVBUF && tx.try_send((from, bytes)).is_ok() {
            queued.fetch_add(len, Ordering::Relaxed);
            inner.delivered += 1;
        } else {
            inner.lost += 1;
        }
    }

    fn bind(&self, addr: SocketAddr) -> anyhow::Result<MemorySocket> {
        if addr.port() == 0 {
            bail!("the in-memory network needs a fixed port, got {addr}");
        }
        let mut inner = self.lock();
        if inner.sockets.contains_key(&addr) {
            bail!("{addr} is already bound on the in-memory network");
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        inner.sockets.insert(addr, (tx, queued.clone()));
        Ok(MemorySocket {
            net: self.clone(),
            addr,
            rx,
            queued,
        })
    }
}

pub(crate) struct MemorySocket {
    net: MemoryNet,
    addr: SocketAddr,
    rx: mpsc::Receiver<Packet>,
    queued: Arc<AtomicUsize>,
}

impl Drop for MemorySocket {
    fn drop(&mut self) {
        self.net.lock().sockets.remove(&self.addr);
    }
}

/// A bound socket on either wire.
pub(crate) enum WireSocket {
    Udp(tokio::net::UdpSocket),
    Memory(MemorySocket),
}

impl WireSocket {
    pub(crate) async fn bind(wire: &Wire, addr: SocketAddr) -> anyhow::Result<Self> {
        match wire {
            Wire::Udp => {
                let socket = tokio::net::UdpSocket::bind(addr)
                    .await
                    .with_context(|| format!("binding the gossip socket on {addr}/udp"))?;
                widen_receive_buffer(&socket);
                Ok(WireSocket::Udp(socket))
            }
            Wire::Memory(net) => Ok(WireSocket::Memory(net.bind(addr)?)),
        }
    }

    /// Sends one datagram. Errors are returned only for a broken socket; a datagram
    /// the network refuses (no route, too big) is lost like any UDP datagram.
    pub(crate) async fn send_to(&self, to: SocketAddr, bytes: Vec<u8>) -> anyhow::Result<()> {
        match self {
            WireSocket::Udp(s) => match s.send_to(&bytes, to).await {
                Ok(_) => Ok(()),
                Err(e) if is_transient(&e) => {
                    tracing::debug!(%to, error = %e, "gossip datagram not sent");
                    Ok(())
                }
                Err(e) => Err(e).context("sending a gossip datagram"),
            },
            WireSocket::Memory(s) => {
                s.net.deliver(s.addr, to, bytes);
                Ok(())
            }
        }
    }

    /// Sends one datagram if the socket takes it at once; otherwise it is lost, as a
    /// datagram may be.
    pub(crate) fn try_send_to(&self, to: SocketAddr, bytes: &[u8]) {
        match self {
            WireSocket::Udp(s) => {
                if let Err(e) = s.try_send_to(bytes, to) {
                    tracing::debug!(%to, error = %e, "gossip probe not sent");
                }
            }
            WireSocket::Memory(s) => s.net.deliver(s.addr, to, bytes.to_vec()),
        }
    }

    /// Receives one datagram into `buf` (UDP) or as a whole vector (memory).
    pub(crate) async fn recv(&mut self, buf: &mut [u8]) -> anyhow::Result<(SocketAddr, Vec<u8>)> {
        match self {
            WireSocket::Udp(s) => loop {
                match s.recv_from(buf).await {
                    Ok((n, from)) => return Ok((from, buf[..n].to_vec())),
                    Err(e) if is_transient(&e) => continue,
                    Err(e) => return Err(e).context("receiving a gossip datagram"),
                }
            },
            WireSocket::Memory(s) => {
                let packet =
                    s.rx.recv()
                        .await
                        .context("the in-memory network closed this socket")?;
                s.queued.fetch_sub(packet.1.len(), Ordering::Relaxed);
                Ok(packet)
            }
        }
    }
}

impl WireSocket {
    /// Receives one datagram already waiting, if any; errors other than an empty
    /// socket are left for [`WireSocket::recv`] to meet.
    pub(crate) fn try_recv(&mut self, buf: &mut [u8]) -> Option<(SocketAddr, Vec<u8>)> {
        match self {
            WireSocket::Udp(s) => s
                .try_recv_from(buf)
                .ok()
                .map(|(n, from)| (from, buf[..n].to_vec())),
            WireSocket::Memory(s) => {
                let packet = s.rx.try_recv().ok()?;
                s.queued.fetch_sub(packet.1.len(), Ordering::Relaxed);
                Some(packet)
            }
        }
    }
}

/// Bytes the gossip socket's receive buffer is asked to hold: what arrives while the
/// agent is kept off the CPU for a second under a flood of 2,000 datagrams/s, so members'
/// probes and acks are not among what the kernel drops (the default, 208 KiB, holds about
/// a hundred full datagrams).
const UDP_RCVBUF: libc::c_int = 4 << 20;

/// Asks for [`UDP_RCVBUF`], past `net.core.rmem_max` where allowed (root), else up to
/// it; the default buffer is kept if both are refused (logged: gossip works, with less
/// room for bursts).
fn widen_receive_buffer(socket: &tokio::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let set = |option: libc::c_int| {
        // SAFETY: a valid socket descriptor and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&UDP_RCVBUF).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    if !set(libc::SO_RCVBUFFORCE) && !set(libc::SO_RCVBUF) {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "gossip socket keeps the default receive buffer"
        );
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    // EPERM: a firewall rule on this host drops the datagram (a partition made with
    // nftables or iptables); the socket is fine, the datagram is lost.
    matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | HostUnreachable
            | NetworkUnreachable
            | OutOfMemory
            | PermissionDenied
    ) || matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::ENOBUFS))
}

#[cfg(test)]
mod tests {
    use super::is_transient;
    use std::io::{Error, ErrorKind};

    #[test]
    fn a_datagram_the_host_or_network_refuses_is_lost_not_a_broken_socket() {
        for errno in [
            libc::EPERM,
            libc::ECONNREFUSED,
            libc::EHOSTUNREACH,
            libc::ENOBUFS,
        ] {
            assert!(is_transient(&Error::from_raw_os_error(errno)), "{errno}");
        }
        assert!(!is_transient(&Error::from_raw_os_error(libc::EBADF)));
        assert!(!is_transient(&Error::from(ErrorKind::InvalidInput)));
    }

    /// The receive buffer the kernel gave a socket, in bytes (twice what was granted:
    /// the kernel's bookkeeping share).
    fn receive_buffer(socket: &tokio::net::UdpSocket) -> libc::c_int {
        use std::os::fd::AsRawFd;
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket descriptor, and room for the c_int the option is.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                std::ptr::from_mut(&mut value).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", Error::last_os_error());
        value
    }

    #[tokio::test]
    async fn the_gossip_socket_has_a_wider_receive_buffer_than_the_default() {
        let plain = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let super::WireSocket::Udp(gossip) =
            super::WireSocket::bind(&super::Wire::Udp, "127.0.0.1:0".parse().unwrap())
                .await
                .unwrap()
        else {
            unreachable!("a UDP wire binds a UDP socket")
        };
        let (default, widened) = (receive_buffer(&plain), receive_buffer(&gossip));
        println!("receive buffer: default {default} bytes, gossip socket {widened} bytes");
        // Twice the request as root (past rmem_max); without root at least rmem_max,
        // doubled, which is above the default unless the host lowered rmem_max to it.
        if is_root() {
            assert_eq!(widened, 2 * super::UDP_RCVBUF);
        } else {
            assert!(widened >= default, "{widened} < {default}");
        }
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
