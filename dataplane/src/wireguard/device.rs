//! The userspace WireGuard device: a TUN interface in the WireGuard namespace, a UDP
//! socket on the underlay, and one boringtun [`Tunn`] per peer.
//!
//! Threads (each with its own buffers, made once: nothing is allocated per packet on
//! the device's side), working in batches (see [`super::batch`]):
//! - outbound, one worker per core (at most [`MAX_OUT_WORKERS`]), each reading its own
//!   queue of the multi-queue TUN: reads the packets waiting in its queue (encrypted
//!   networks' VXLAN datagrams, sent by the kernel to peers' data-path addresses), up
//!   to [`BATCH`],
//!   finds each one's peer by that address, encrypts it, and sends the batch with one
//!   `sendmmsg`: a run of equal-sized datagrams to one peer goes as one UDP GSO message
//!   (`UDP_SEGMENT`), one trip through the kernel's stack for up to 64 datagrams;
//! - inbound: receives with `recvmmsg` on a socket with UDP GRO (one message may hold
//!   many datagrams of one sender), finds the peer by the source address (a datagram
//!   from anyone else is dropped and counted as foreign), decrypts each datagram and
//!   keeps the packet inside only if it comes from that same peer's address (a peer
//!   can speak only for itself). Handshake messages are answered; garbage, replays and
//!   datagrams that fail authentication are dropped and counted. The batch's packets
//!   go into the TUN with as few writes as they allow: a run of equal-sized VXLAN
//!   datagrams of one flow is one UDP GSO super-packet, which the kernel cuts back into
//!   those datagrams and whose inner TCP segments the VXLAN device's GRO merges.
//!
//! A session's mutex is held only around boringtun's call, never across a system call.
//! - timers: every [`TICK`], each session's timers (handshake retries, rekeying every
//!   two minutes, keepalives, expiry), as WireGuard's protocol says.
//!
//! A peer is a node of the cluster with a registered key: the set is replaced whole
//! from the declared state ([`Device::set_peers`]); a peer that leaves it is dropped at
//! once, with its sessions, so its datagrams are foreign from then on.
//!
//! Key changes lose no packet. When this node's key changes ([`Device::rotate`]) or a
//! peer's does (its new key in the declared state), the peer gets a new session under
//! the new pair of keys, and the session that carried its traffic until then stays as
//! its *previous* one: packets keep going out in it until the new one has made its
//! handshake (each side starts one every [`TICK`] until it succeeds: it does once the
//! other side knows the new key), and datagrams of either keep being taken (a data
//! message names its session by its receiver index; a handshake initiation is tried
//! under the new keys, then the old). The previous session goes [`OVERLAP_GRACE`] after
//! the new one is made, or [`OVERLAP_MAX`] after the change if it never is.
use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, RwLock,
    },
    thread,
    time::{Duration, Instant},
};

use boringtun::{
    noise::{errors::WireGuardError, Tunn, TunnResult},
    x25519::PublicKey,
};
use serde::Serialize;

use super::{key::NodeKey, tun};

mod inbound;
mod outbound;

/// How often the sessions' timers run.
pub const TICK: Duration = Duration::from_millis(100);
/// How long a peer's previous session stays after the new one made its handshake (the
/// other side switches when its own side of the new session is made, one round trip
/// later; its packets still on the way arrive in the previous session).
pub const OVERLAP_GRACE: Duration = Duration::from_secs(5);
/// How long a peer's previous session stays at most after a key change when the new
/// one never makes its handshake (the other side never learned the new key).
pub const OVERLAP_MAX: Duration = Duration::from_secs(120);
/// How long a blocked read waits before looking whether the device is stopping.
const POLL: Duration = Duration::from_millis(200);
/// Room for one handshake or timer message.
const BUF: usize = 2048;
/// Most packets read from the TUN and sent per batch.
pub const BATCH: usize = 64;
/// Most `wg-out` workers, whatever the core count.
const MAX_OUT_WORKERS: usize = 8;
/// Most messages taken per `recvmmsg`.
const RX_MSGS: usize = 16;
/// Room for one received message: one datagram, or the datagrams UDP GRO merged.
const RX_BUF: usize = 65_536;
/// Decrypted packets kept for the TUN before they are written.
const RX_PACKETS: usize = 128;
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
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
    /// WireGuard datagrams sent and received (handshakes included), in bytes.
    tx_bytes: AtomicU64,
    rx_bytes: AtomicU64,
    handshakes: AtomicU64,
    dropped: AtomicU64,
}

/// One WireGuard session: this node's key and the peer's.
struct Session {
    /// The index boringtun puts in the upper 24 bits of this session's receiver
    /// indices: how a datagram names the session it is for.
    index: u32,
    /// The peer's.
    theirs: PublicKey,
    tunn: Mutex<Tunn>,
}

impl Session {
    fn new(shared: &Shared, key: &NodeKey, theirs: PublicKey) -> Arc<Session> {
        let index = shared.next_index.fetch_add(1, Relaxed) & 0x00ff_ffff;
        Arc::new(Session {
            index,
            theirs,
            tunn: Mutex::new(Tunn::new(
                key.secret().clone(),
                theirs,
                None,
                None,
                index,
                None,
            )),
        })
    }

    fn tunn(&self) -> std::sync::MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether its handshake is made (it can carry packets).
    fn made(&self) -> bool {
        self.tunn().stats().0.is_some()
    }
}

struct Peer {
    endpoint: SocketAddrV4,
    /// The session under both sides' current keys.
    current: Arc<Session>,
    /// While a key changes: the session that carried the traffic before (see the
    /// module's comment).
    previous: Option<Arc<Session>>,
    /// When the key changed (None: no previous session).
    changed_at: Option<Instant>,
    /// When the timers first saw `current` made, while there is a previous session.
    current_made_at: Mutex<Option<Instant>>,
    counters: Arc<PeerCounters>,
}

impl Peer {
    /// The session to send in: the current one once made, else the previous one while
    /// there is one.
    fn sending(&self) -> &Arc<Session> {
        match &self.previous {
            Some(previous) if !self.current.made() => previous,
            _ => &self.current,
        }
    }

    /// The session a datagram is for: the one its receiver index names (data,
    /// handshake responses and cookies), else the current one.
    fn receiving(&self, datagram: &[u8]) -> &Arc<Session> {
        let receiver = match datagram.first() {
            Some(2) if datagram.len() >= 12 => &datagram[8..12],
            Some(3 | 4) if datagram.len() >= 8 => &datagram[4..8],
            _ => return &self.current,
        };
        let index = u32::from_le_bytes(receiver.try_into().unwrap_or_default()) >> 8;
        match &self.previous {
            Some(previous) if previous.index == index => previous,
            _ => &self.current,
        }
    }

    /// The peer after a key change: a new current session under `key` and `theirs`;
    /// the session that carries its traffic now (the current one if made, else the
    /// previous one if made) stays as the previous one.
    fn changed(&self, shared: &Shared, key: &NodeKey, theirs: PublicKey) -> Peer {
        let carrying = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|s| s.made())
            .cloned();
        Peer {
            endpoint: self.endpoint,
            current: Session::new(shared, key, theirs),
            changed_at: carrying.as_ref().map(|_| Instant::now()),
            previous: carrying,
            current_made_at: Mutex::new(None),
            counters: self.counters.clone(),
        }
    }
}

struct Shared {
    stop: AtomicBool,
    /// The TUN's queues, one per `wg-out` worker (decrypted packets go into the first).
    tun: Vec<OwnedFd>,
    udp: UdpSocket,
    /// This node's key (replaced by [`Device::rotate`]).
    key: RwLock<NodeKey>,
    peers: RwLock<HashMap<Ipv4Addr, Arc<Peer>>>,
    counters: Counters,
    next_index: AtomicU32,
    /// Room for one packet and WireGuard's overhead (from the TUN's MTU).
    slot: usize,
    /// Whether UDP GSO sends work (off for good once the kernel refuses one).
    gso: AtomicBool,
    /// Whether the TUN takes super-packets (off for good once it refuses one).
    coalesce: AtomicBool,
}

/// One peer as [`DeviceStats`] shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PeerStats {
    pub addr: Ipv4Addr,
    pub public_key: String,
    /// While a key changes: the peer's key in the session that carried the traffic
    /// before (this node's or the peer's key changed), kept until the new one is made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_public_key: Option<String>,
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
    /// The `wg-out` workers (the TUN's queues).
    pub out_workers: usize,
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
        let tun = tun::open(
            &ns,
            super::IFNAME,
            config.addr,
            config.mtu,
            outbound::workers(),
        )?;
        for q in &tun.queues {
            // SAFETY: fcntl on our own descriptor.
            unsafe {
                let flags = libc::fcntl(q.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(q.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
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
        for (level, opt, value) in [
            (libc::SOL_SOCKET, libc::SO_RCVBUF, SOCKET_BUFFER),
            (libc::SOL_SOCKET, libc::SO_SNDBUF, SOCKET_BUFFER),
            // Datagrams of one sender arrive merged (a kernel without it: one by one).
            (SOL_UDP, UDP_GRO, 1),
        ] {
            // SAFETY: setsockopt with a c_int value on our own socket.
            unsafe {
                libc::setsockopt(
                    udp.as_raw_fd(),
                    level,
                    opt,
                    &value as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            tun: tun.queues,
            udp,
            key: RwLock::new(key),
            peers: RwLock::new(HashMap::new()),
            counters: Counters::default(),
            next_index: AtomicU32::new(1),
            slot: (config.mtu as usize + 128).max(2048),
            gso: AtomicBool::new(true),
            coalesce: AtomicBool::new(true),
        });
        let mut threads = Vec::new();
        for queue in 0..shared.tun.len() {
            let s = shared.clone();
            threads.push(
                thread::Builder::new()
                    .name("wg-out".into())
                    .spawn(move || outbound::run(&s, queue))?,
            );
        }
        for (name, run) in [
            ("wg-in", inbound::run as fn(&Shared)),
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
        let key = self
            .shared
            .key
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut table = self.shared.peers.write().unwrap_or_else(|e| e.into_inner());
        let before = table.len();
        table.retain(|addr, _| peers.contains_key(addr));
        let removed = before - table.len();
        let mut added = 0;
        for (addr, public) in peers {
            match table.get(addr) {
                Some(p) if p.current.theirs == *public => {}
                // A new key: traffic goes on in the session it is in until the new
                // one is made.
                Some(p) => {
                    let next = p.changed(&self.shared, &key, *public);
                    table.insert(*addr, Arc::new(next));
                }
                None => {
                    table.insert(
                        *addr,
                        Arc::new(Peer {
                            endpoint: SocketAddrV4::new(*addr, self.config.port),
                            current: Session::new(&self.shared, &key, *public),
                            previous: None,
                            changed_at: None,
                            current_made_at: Mutex::new(None),
                            counters: Arc::default(),
                        }),
                    );
                    added += 1;
                }
            }
        }
        (added, removed)
    }

    /// Makes `key` this node's key: every peer gets a new session under it, and the
    /// session it is in goes on carrying its traffic until the new one is made (once
    /// the peer knows the new key).
    pub fn rotate(&self, key: NodeKey) {
        let mut table = self.shared.peers.write().unwrap_or_else(|e| e.into_inner());
        for peer in table.values_mut() {
            let next = peer.changed(&self.shared, &key, peer.current.theirs);
            *peer = Arc::new(next);
        }
        *self.shared.key.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// This node's public key, as the device uses it now.
    pub fn public_key(&self) -> PublicKey {
        self.shared
            .key
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .public()
    }

    /// The device's counters and its peers' sessions.
    pub fn stats(&self) -> DeviceStats {
        let c = &self.shared.counters;
        let table = self.shared.peers.read().unwrap_or_else(|e| e.into_inner());
        let mut peers: Vec<PeerStats> = table
            .iter()
            .map(|(addr, p)| {
                let since = p.sending().tunn().stats().0;
                PeerStats {
                    addr: *addr,
                    public_key: hex(&p.current.theirs),
                    previous_public_key: p.previous.as_ref().map(|s| hex(&s.theirs)),
                    last_handshake_secs: since.map(|d| d.as_secs_f64()),
                    handshakes: p.counters.handshakes.load(Relaxed),
                    tx_packets: p.counters.tx_packets.load(Relaxed),
                    rx_packets: p.counters.rx_packets.load(Relaxed),
                    tx_bytes: p.counters.tx_bytes.load(Relaxed),
                    rx_bytes: p.counters.rx_bytes.load(Relaxed),
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
            out_workers: self.shared.tun.len(),
            peers,
        }
    }
}

fn hex(key: &PublicKey) -> String {
    key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
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

    fn send(&self, peer: &Peer, datagram: &[u8]) {
        if self.udp.send_to(datagram, peer.endpoint).is_err() {
            self.counters.io_errors.fetch_add(1, Relaxed);
        } else {
            peer.counters
                .tx_bytes
                .fetch_add(datagram.len() as u64, Relaxed);
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

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Every session's timers; while a key changes, the new session's handshake, and the
/// previous session's end.
fn timers(shared: &Shared) {
    let mut out = vec![0u8; BUF];
    while !shared.stop.load(Relaxed) {
        thread::sleep(TICK);
        let peers: Vec<(Ipv4Addr, Arc<Peer>)> = shared
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(a, p)| (*a, p.clone()))
            .collect();
        for (addr, peer) in peers {
            for session in [Some(&peer.current), peer.previous.as_ref()]
                .into_iter()
                .flatten()
            {
                let result = session.tunn().update_timers(&mut out);
                if let TunnResult::WriteToNetwork(d) = result {
                    shared.send(&peer, d);
                }
            }
            let Some(changed_at) = peer.changed_at else {
                continue;
            };
            let made = peer.current.made();
            let done = {
                let mut made_at = peer
                    .current_made_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if made && made_at.is_none() {
                    *made_at = Some(Instant::now());
                }
                made_at.is_some_and(|at| at.elapsed() >= OVERLAP_GRACE)
                    || changed_at.elapsed() >= OVERLAP_MAX
            };
            if !made && !done {
                // Nothing is sent in the new session yet: it starts its handshake
                // itself (boringtun sends none while one is on its way).
                let result = peer
                    .current
                    .tunn()
                    .format_handshake_initiation(&mut out, false);
                if let TunnResult::WriteToNetwork(d) = result {
                    shared.send(&peer, d);
                }
            }
            if done {
                let mut table = shared.peers.write().unwrap_or_else(|e| e.into_inner());
                if let Some(p) = table.get_mut(&addr) {
                    if Arc::ptr_eq(p, &peer) {
                        *p = Arc::new(Peer {
                            endpoint: peer.endpoint,
                            current: peer.current.clone(),
                            previous: None,
                            changed_at: None,
                            current_made_at: Mutex::new(None),
                            counters: peer.counters.clone(),
                        });
                    }
                }
            }
        }
    }
}
