//! The userspace WireGuard device: a TUN interface in the WireGuard namespace, a UDP
//! socket on the underlay, and one boringtun [`Tunn`] per peer.
//!
//! Threads (each with its own buffers, made once: nothing is allocated per packet on
//! the device's side):
//! - outbound: reads a packet from the TUN (an encrypted network's VXLAN datagram, sent
//!   by the kernel to a peer's data-path address), finds the peer by that address,
//!   encrypts it and sends it to the peer's WireGuard port;
//! - inbound: receives a datagram, finds the peer by its source address (a datagram
//!   from anyone else is dropped and counted as foreign), decrypts it and writes it to
//!   the TUN only if the packet inside comes from that same peer's address (a peer can
//!   speak only for itself). Handshake messages are answered; garbage, replays and
//!   datagrams that fail authentication are dropped and counted;
//! - timers: every [`TICK`], each session's timers (handshake retries, rekeying every
//!   two minutes, keepalives, expiry), as WireGuard's protocol says.
//!
//! A peer is a node of the cluster with a registered key: the set is replaced whole
//! from the declared state ([`Device::set_peers`]); a peer that leaves it is dropped at
//! once, with its sessions, so its datagrams are foreign from then on.
use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, RwLock,
    },
    thread,
    time::Duration,
};

use boringtun::{
    noise::{errors::WireGuardError, Tunn, TunnResult},
    x25519::PublicKey,
};
use serde::Serialize;

use super::{key::NodeKey, tun};

/// How often the sessions' timers run.
pub const TICK: Duration = Duration::from_millis(100);
/// How long a blocked read waits before looking whether the device is stopping.
const POLL: Duration = Duration::from_millis(200);
/// Room for one datagram or packet (the largest UDP datagram, plus WireGuard's header).
const BUF: usize = 65_536 + 64;
/// Socket buffers asked for (the kernel caps them at its `rmem_max`/`wmem_max`).
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// What a device was made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// This node's data-path address: the TUN's address and the UDP socket's.
    pub addr: Ipv4Addr,
    /// The WireGuard port (every node's).
    pub port: u16,
    /// The TUN's MTU (underlay - [`super::OVERHEAD`]).
    pub mtu: u32,
}

/// Counters of the whole device.
#[derive(Default)]
struct Counters {
    /// Datagrams from an address that is no peer's.
    foreign: AtomicU64,
    /// Datagrams that are no WireGuard message, or fail authentication.
    garbage: AtomicU64,
    /// Data messages whose counter was seen already (replays).
    replayed: AtomicU64,
    /// Decrypted packets whose source is not the peer's address.
    spoofed: AtomicU64,
    /// Packets read from the TUN for an address that is no peer's.
    no_peer: AtomicU64,
    /// Packets read from the TUN that are not IPv4.
    not_ipv4: AtomicU64,
    /// Sends and TUN writes that failed.
    io_errors: AtomicU64,
    /// Handshake messages turned away while the device was under load (a cookie sent).
    under_load: AtomicU64,
}

#[derive(Default)]
struct PeerCounters {
    tx_packets: AtomicU64,
    rx_packets: AtomicU64,
    handshakes: AtomicU64,
    dropped: AtomicU64,
}

struct Peer {
    endpoint: SocketAddrV4,
    public: PublicKey,
    tunn: Mutex<Tunn>,
    counters: PeerCounters,
}

struct Shared {
    stop: AtomicBool,
    tun: OwnedFd,
    udp: UdpSocket,
    key: NodeKey,
    peers: RwLock<HashMap<Ipv4Addr, Arc<Peer>>>,
    counters: Counters,
    next_index: AtomicU32,
}

/// One peer as [`DeviceStats`] shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PeerStats {
    pub addr: Ipv4Addr,
    pub public_key: String,
    /// Seconds since the current session's handshake; None: no session.
    pub last_handshake_secs: Option<f64>,
    pub handshakes: u64,
    pub tx_packets: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub dropped: u64,
}

/// What the device counts, and its peers.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DeviceStats {
    pub foreign: u64,
    pub garbage: u64,
    pub replayed: u64,
    pub spoofed: u64,
    pub no_peer: u64,
    pub not_ipv4: u64,
    pub io_errors: u64,
    pub under_load: u64,
    pub peers: Vec<PeerStats>,
}

/// A running device. Dropping it stops its threads and removes the TUN.
pub struct Device {
    config: DeviceConfig,
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Device {
    /// Makes the TUN in the WireGuard namespace under `netns_dir` and the UDP socket
    /// (in the caller's namespace: the underlay's), and starts the threads.
    pub fn start(netns_dir: &Path, key: NodeKey, config: DeviceConfig) -> io::Result<Device> {
        let ns = super::ensure_netns(netns_dir)?;
        let tun = tun::open(&ns, super::IFNAME, config.addr, config.mtu)?;
        // SAFETY: fcntl on our own descriptor.
        unsafe {
            let flags = libc::fcntl(tun.fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(tun.fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        let udp = UdpSocket::bind(SocketAddrV4::new(config.addr, config.port)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "bind the WireGuard socket {}:{}: {e}",
                    config.addr, config.port
                ),
            )
        })?;
        udp.set_read_timeout(Some(POLL))?;
        for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            // SAFETY: setsockopt with a c_int value on our own socket.
            unsafe {
                libc::setsockopt(
                    udp.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &SOCKET_BUFFER as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            tun: tun.fd,
            udp,
            key,
            peers: RwLock::new(HashMap::new()),
            counters: Counters::default(),
            next_index: AtomicU32::new(1),
        });
        let mut threads = Vec::new();
        for (name, run) in [
            ("wg-out", outbound as fn(&Shared)),
            ("wg-in", inbound as fn(&Shared)),
            ("wg-timers", timers as fn(&Shared)),
        ] {
            let s = shared.clone();
            threads.push(
                thread::Builder::new()
                    .name(name.into())
                    .spawn(move || run(&s))?,
            );
        }
        Ok(Device {
            config,
            shared,
            threads,
        })
    }

    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// Makes the peers exactly `peers` (data-path address -> public key): new ones are
    /// added, those whose key changed start over, the rest are dropped with their
    /// sessions at once. Returns how many were added and removed.
    pub fn set_peers(&self, peers: &BTreeMap<Ipv4Addr, PublicKey>) -> (usize, usize) {
        let mut table = self.shared.peers.write().unwrap_or_else(|e| e.into_inner());
        let before = table.len();
        table.retain(|addr, p| peers.get(addr) == Some(&p.public));
        let removed = before - table.len();
        let mut added = 0;
        for (addr, public) in peers {
            if table.contains_key(addr) {
                continue;
            }
            let index = self.shared.next_index.fetch_add(1, Relaxed) & 0x00ff_ffff;
            let tunn = Tunn::new(
                self.shared.key.secret().clone(),
                *public,
                None,
                None,
                index,
                None,
            );
            table.insert(
                *addr,
                Arc::new(Peer {
                    endpoint: SocketAddrV4::new(*addr, self.config.port),
                    public: *public,
                    tunn: Mutex::new(tunn),
                    counters: PeerCounters::default(),
                }),
            );
            added += 1;
        }
        (added, removed)
    }

    /// The device's counters and its peers' sessions.
    pub fn stats(&self) -> DeviceStats {
        let c = &self.shared.counters;
        let table = self.shared.peers.read().unwrap_or_else(|e| e.into_inner());
        let mut peers: Vec<PeerStats> = table
            .iter()
            .map(|(addr, p)| {
                let (since, tx, rx, _, _) =
                    p.tunn.lock().unwrap_or_else(|e| e.into_inner()).stats();
                PeerStats {
                    addr: *addr,
                    public_key: p
                        .public
                        .as_bytes()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                    last_handshake_secs: since.map(|d| d.as_secs_f64()),
                    handshakes: p.counters.handshakes.load(Relaxed),
                    tx_packets: p.counters.tx_packets.load(Relaxed),
                    rx_packets: p.counters.rx_packets.load(Relaxed),
                    tx_bytes: tx as u64,
                    rx_bytes: rx as u64,
                    dropped: p.counters.dropped.load(Relaxed),
                }
            })
            .collect();
        peers.sort_by_key(|p| p.addr);
        DeviceStats {
            foreign: c.foreign.load(Relaxed),
            garbage: c.garbage.load(Relaxed),
            replayed: c.replayed.load(Relaxed),
            spoofed: c.spoofed.load(Relaxed),
            no_peer: c.no_peer.load(Relaxed),
            not_ipv4: c.not_ipv4.load(Relaxed),
            io_errors: c.io_errors.load(Relaxed),
            under_load: c.under_load.load(Relaxed),
            peers,
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn peer(&self, addr: Ipv4Addr) -> Option<Arc<Peer>> {
        self.peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .cloned()
    }

    fn send(&self, to: SocketAddrV4, datagram: &[u8]) {
        if self.udp.send_to(datagram, to).is_err() {
            self.counters.io_errors.fetch_add(1, Relaxed);
        }
    }

    fn write_tun(&self, packet: &[u8]) {
        // SAFETY: write(2) from a valid buffer to our own TUN descriptor.
        let n = unsafe {
            libc::write(
                self.tun.as_raw_fd(),
                packet.as_ptr() as *const libc::c_void,
                packet.len(),
            )
        };
        if n < 0 {
            self.counters.io_errors.fetch_add(1, Relaxed);
        }
    }

    /// Counts a decapsulation error against the device and the peer.
    fn count_error(&self, peer: &Peer, e: &WireGuardError) {
        peer.counters.dropped.fetch_add(1, Relaxed);
        let c = &self.counters;
        match e {
            WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => {
                c.replayed.fetch_add(1, Relaxed)
            }
            WireGuardError::UnderLoad => c.under_load.fetch_add(1, Relaxed),
            // Expired or not-yet-made sessions are no attack: the peer is rekeying.
            WireGuardError::NoCurrentSession | WireGuardError::ConnectionExpired => 0,
            _ => c.garbage.fetch_add(1, Relaxed),
        };
    }
}

/// Waits until `fd` is readable or [`POLL`] passes; false if the device is stopping.
fn wait_readable(shared: &Shared, fd: libc::c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd.
    unsafe { libc::poll(&mut p, 1, POLL.as_millis() as libc::c_int) };
    !shared.stop.load(Relaxed)
}

/// TUN -> peers.
fn outbound(shared: &Shared) {
    let mut packet = vec![0u8; BUF];
    let mut out = vec![0u8; BUF];
    let fd = shared.tun.as_raw_fd();
    while wait_readable(shared, fd) {
        loop {
            // SAFETY: read(2) into our own buffer from our own (non-blocking) TUN
            // descriptor.
            let n =
                unsafe { libc::read(fd, packet.as_mut_ptr() as *mut libc::c_void, packet.len()) };
            if n <= 0 {
                break;
            }
            let n = n as usize;
            let pkt = &packet[..n];
            if n < 20 || pkt[0] >> 4 != 4 {
                shared.counters.not_ipv4.fetch_add(1, Relaxed);
                continue;
            }
            let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
            let Some(peer) = shared.peer(dst) else {
                shared.counters.no_peer.fetch_add(1, Relaxed);
                continue;
            };
            let mut tunn = peer.tunn.lock().unwrap_or_else(|e| e.into_inner());
            match tunn.encapsulate(pkt, &mut out) {
                TunnResult::WriteToNetwork(d) => {
                    peer.counters.tx_packets.fetch_add(1, Relaxed);
                    shared.send(peer.endpoint, d);
                }
                TunnResult::Err(_) => {
                    peer.counters.dropped.fetch_add(1, Relaxed);
                }
                _ => {}
            }
        }
    }
}

/// Peers -> TUN.
fn inbound(shared: &Shared) {
    let mut datagram = vec![0u8; BUF];
    let mut out = vec![0u8; BUF];
    while !shared.stop.load(Relaxed) {
        let (n, from) = match shared.udp.recv_from(&mut datagram) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => {
                shared.counters.io_errors.fetch_add(1, Relaxed);
                continue;
            }
        };
        let SocketAddr::V4(from) = from else {
            shared.counters.foreign.fetch_add(1, Relaxed);
            continue;
        };
        let Some(peer) = shared.peer(*from.ip()) else {
            shared.counters.foreign.fetch_add(1, Relaxed);
            continue;
        };
        let kind = datagram.first().copied().unwrap_or(0);
        let mut tunn = peer.tunn.lock().unwrap_or_else(|e| e.into_inner());
        let mut first = true;
        loop {
            let input: &[u8] = if first { &datagram[..n] } else { &[] };
            let src = first.then_some(std::net::IpAddr::V4(*from.ip()));
            match tunn.decapsulate(src, input, &mut out) {
                TunnResult::WriteToNetwork(d) => {
                    if first {
                        match (kind, d.first()) {
                            // An initiation answered, or our initiation answered (the
                            // keepalive that confirms it): a session is made.
                            (1, Some(2)) | (2, Some(4)) => {
                                peer.counters.handshakes.fetch_add(1, Relaxed);
                            }
                            // A cookie instead: too many handshakes at once.
                            (_, Some(3)) => {
                                shared.counters.under_load.fetch_add(1, Relaxed);
                            }
                            _ => {}
                        }
                    }
                    shared.send(peer.endpoint, d);
                    first = false;
                    // Queued packets go out behind it (boringtun's protocol: call again
                    // with nothing until it is done).
                    continue;
                }
                TunnResult::WriteToTunnelV4(p, src) => {
                    if src == *from.ip() {
                        peer.counters.rx_packets.fetch_add(1, Relaxed);
                        shared.write_tun(p);
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
                TunnResult::Err(e) => {
                    if first {
                        shared.count_error(&peer, &e);
                    }
                }
            }
            break;
        }
    }
}

/// Every session's timers.
fn timers(shared: &Shared) {
    let mut out = vec![0u8; BUF];
    while !shared.stop.load(Relaxed) {
        thread::sleep(TICK);
        let peers: Vec<Arc<Peer>> = shared
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for peer in peers {
            let mut tunn = peer.tunn.lock().unwrap_or_else(|e| e.into_inner());
            if let TunnResult::WriteToNetwork(d) = tunn.update_timers(&mut out) {
                shared.send(peer.endpoint, d);
            }
        }
    }
}
