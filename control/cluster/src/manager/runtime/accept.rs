//! The manager's listener: accepts connections, runs the TLS handshake (the peer's
//! certificate, if any, names the caller) and serves request frames one by one.
//!
//! Port 2377 is open to anyone who can reach it, so everything a caller can make the
//! manager hold before it has proven who it is, is bounded ([`ListenerLimits`]):
//! - connections at once, in all and per source address; connections still in their
//!   handshake or without a certificate ("strangers") have a smaller pool of their own,
//!   and so do the addresses of the cluster's nodes, so strangers can never take the
//!   slots the nodes reconnect with;
//! - time: the handshake, then the one request a stranger may send (a `Join`), then an
//!   authenticated connection's idle time and each frame's transfer;
//! - size: a stranger's frame holds a `Join` and no more ([`MAX_JOIN_FRAME`]); a worker's
//!   a task report ([`MAX_NODE_FRAME`]); only a manager's may carry a Raft snapshot.
//!
//! A connection over a limit is closed at once, before any TLS work.
//!
//! A peer's certificate is checked again before each request once the listener's trust
//! changed (a root CA rotation ended): a connection opened with a certificate of a root
//! no longer trusted ends there, as a new one would fail its handshake.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{lock, read, Core, Runtime};
use crate::manager::wire::{read_request, write_frame, Reply, Request, WireError, MAX_FRAME};
use crate::manager::Role;
use crate::pki::{CaTrust, NodeCertificate, PeerIdentity};

/// Largest frame from a caller without a certificate: a `Join` (token, CSR, the node's
/// description) is about 1.5 KiB.
pub(crate) const MAX_JOIN_FRAME: usize = 16 << 10;
/// Largest frame from a worker's certificate (task reports of many tasks).
pub(crate) const MAX_NODE_FRAME: usize = 4 << 20;

/// What port 2377 lets callers hold. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerLimits {
    /// Connections at once, all of them (also kept under half the process's file limit).
    pub max_connections: usize,
    /// Connections at once from one address, authenticated or not.
    pub max_per_source: usize,
    /// Connections at once from addresses that are not the cluster's nodes, still in
    /// their handshake or without a certificate.
    pub max_strangers: usize,
    /// The same, from one such address.
    pub max_strangers_per_source: usize,
    /// Connections at once from one node's address before its handshake is done.
    pub max_handshakes_per_node: usize,
    /// Bound on a TLS handshake.
    pub handshake_timeout: Duration,
    /// Bound on a caller without a certificate sending its request, from the handshake.
    pub stranger_timeout: Duration,
    /// An authenticated connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Bound on moving one frame once its length has arrived (in or out).
    pub frame_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 4096,
            max_per_source: 256,
            max_strangers: 512,
            max_strangers_per_source: 8,
            max_handshakes_per_node: 32,
            handshake_timeout: Duration::from_secs(5),
            stranger_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            frame_timeout: Duration::from_secs(60),
        }
    }
}

impl ListenerLimits {
    /// These limits, with `max_connections` under half the process's open-file limit
    /// (beyond it, accept itself would fail for everyone).
    fn within_file_limit(mut self) -> Self {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given, nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            let half = usize::try_from(limit.rlim_cur / 2).unwrap_or(usize::MAX);
            self.max_connections = self.max_connections.min(half.max(64));
        }
        self
    }
}

/// The counts behind [`ListenerLimits`].
#[derive(Default)]
struct Counts {
    all: usize,
    strangers: usize,
    /// Per source: (all, strangers or handshakes).
    by_source: HashMap<IpAddr, (usize, usize)>,
}

/// Admits connections within the limits; each admitted one holds a [`Slot`].
pub(crate) struct Admission {
    limits: ListenerLimits,
    counts: Mutex<Counts>,
    refused: std::sync::atomic::AtomicU64,
}

/// One admitted connection's place in the counts, given back on drop.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    source: IpAddr,
    /// Counted among the strangers (global pool) ...
    stranger: bool,
    /// ... or among its node address's handshakes.
    pending: bool,
}

impl Admission {
    pub(crate) fn new(limits: ListenerLimits) -> Arc<Admission> {
        Arc::new(Admission {
            limits: limits.within_file_limit(),
            counts: Mutex::new(Counts::default()),
            refused: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub(crate) fn limits(&self) -> &ListenerLimits {
        &self.limits
    }

    /// Connections refused so far for being over a limit.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A place for a new connection from `source` (`node`: the address is one of the
    /// cluster's nodes'), or `None` when it is over a limit.
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr, node: bool) -> Option<Slot> {
        let l = &self.limits;
        let mut c = lock(&self.counts);
        let (all, pending) = c.by_source.get(&source).copied().unwrap_or((0, 0));
        let over = c.all >= l.max_connections
            || all >= l.max_per_source
            || if node {
                pending >= l.max_handshakes_per_node
            } else {
                c.strangers >= l.max_strangers || pending >= l.max_strangers_per_source
            };
        if over {
            drop(c);
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        c.all += 1;
        if !node {
            c.strangers += 1;
        }
        let entry = c.by_source.entry(source).or_default();
        entry.0 += 1;
        entry.1 += 1;
        Some(Slot {
            admission: self.clone(),
            source,
            stranger: !node,
            pending: true,
        })
    }
}

impl Slot {
    /// The caller proved who it is: its place leaves the pre-authentication pools.
    pub(crate) fn authenticated(&mut self) {
        let mut c = lock(&self.admission.counts);
        if self.stranger {
            c.strangers -= 1;
            self.stranger = false;
        }
        if self.pending {
            if let Some(e) = c.by_source.get_mut(&self.source) {
                e.1 -= 1;
            }
            self.pending = false;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = lock(&self.admission.counts);
        c.all -= 1;
        if self.stranger {
            c.strangers -= 1;
        }
        let gone = match c.by_source.get_mut(&self.source) {
            Some(e) => {
                e.0 -= 1;
                if self.pending {
                    e.1 -= 1;
                }
                e.0 == 0
            }
            None => false,
        };
        if gone {
            c.by_source.remove(&self.source);
        }
    }
}

/// The addresses of the cluster's nodes (advertise and data-path), as this member's
/// copy of the store has them.
fn node_addresses(core: &Core) -> HashSet<IpAddr> {
    core.store.read_stale_with(|state| {
        state
            .nodes
            .values()
            .flat_map(|n| {
                let advertise = n
                    .advertise_addr
                    .parse::<std::net::SocketAddr>()
                    .map(|a| a.ip())
                    .ok();
                [advertise, n.data_path_addr]
            })
            .flatten()
            .collect()
    })
}

pub(super) async fn accept_loop(
    rt: Arc<Runtime>,
    core: Arc<Core>,
    listener: TcpListener,
    admission: Arc<Admission>,
) {
    let mut conns = JoinSet::new();
    let mut nodes = (0, HashSet::new());
    let mut said = (std::time::Instant::now(), 0);
    let failures = Arc::new(HandshakeFailures::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, from)) => {
                    let version = *core.store.subscribe().borrow();
                    if nodes.0 != version || version == 0 {
                        nodes = (version, node_addresses(&core));
                    }
                    let source = from.ip().to_canonical();
                    let Some(slot) = admission.admit(source, nodes.1.contains(&source)) else {
                        // Said at most every 10 s: a flood must not flood the log too.
                        let refused = admission.refused();
                        if said.0.elapsed() >= Duration::from_secs(10) {
                            tracing::warn!(
                                %source,
                                refused_since = refused - said.1,
                                "connections to the manager port refused: over a limit"
                            );
                            said = (std::time::Instant::now(), refused);
                        }
                        continue;
                    };
                    let config = read(&core.server_config);
                    conns.spawn(serve_conn(rt.clone(), core.clone(), config, tcp, slot, failures.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Failed handshakes from the nodes' own addresses, said in the log (at most every 10 s
/// per address): a node that cannot connect (a certificate of a root no longer trusted)
/// is worth knowing of; strangers' failures are not.
#[derive(Default)]
struct HandshakeFailures {
    said: Mutex<HashMap<IpAddr, (Instant, u64)>>,
}

impl HandshakeFailures {
    fn note(&self, source: IpAddr, error: &str) {
        let mut said = lock(&self.said);
        let entry = said
            .entry(source)
            .or_insert((Instant::now() - Duration::from_secs(3600), 0));
        entry.1 += 1;
        if entry.0.elapsed() >= Duration::from_secs(10) {
            tracing::warn!(%source, failed = entry.1, %error, "TLS handshake with a node's address failed");
            *entry = (Instant::now(), 0);
        }
    }
}

async fn serve_conn(
    rt: Arc<Runtime>,
    core: Arc<Core>,
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    mut slot: Slot,
    failures: Arc<HandshakeFailures>,
) {
    let limits = slot.admission.limits().clone();
    let _ = tcp.set_nodelay(true);
    let accept = TlsAcceptor::from(config).accept(tcp);
    let mut tls = match tokio::time::timeout(limits.handshake_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) if !slot.stranger => {
            failures.note(slot.source, &e.to_string());
            return;
        }
        _ => return,
    };
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| NodeCertificate::from_der(c.to_vec()).ok());
    let peer = PeerIdentity::from_peer_certificates(tls.get_ref().1.peer_certificates())
        .ok()
        .filter(|p| p.cluster_id() == rt.cluster_id);
    let Some(peer) = peer else {
        // A stranger: one request (a `Join`, the only one it may make), small and soon.
        let request =
            async { read_request(&mut tls, MAX_JOIN_FRAME, limits.stranger_timeout).await };
        let request = match tokio::time::timeout(limits.stranger_timeout, request).await {
            Ok(Ok(Some(request))) => request,
            _ => return,
        };
        let reply = answer(&rt, None, request).await;
        let _ = respond(&mut tls, &reply, limits.frame_timeout).await;
        return;
    };
    slot.authenticated();
    let max = match peer.role() {
        Role::Manager => MAX_FRAME,
        Role::Worker => MAX_NODE_FRAME,
    };
    let mut trusted: Arc<CaTrust> = read(&core.server_trust);
    loop {
        let request = match tokio::time::timeout(
            limits.idle_timeout,
            read_request(&mut tls, max, limits.frame_timeout),
        )
        .await
        {
            Ok(Ok(Some(request))) => request,
            _ => return,
        };
        let now = read(&core.server_trust);
        if !Arc::ptr_eq(&now, &trusted) {
            if leaf.as_ref().and_then(|c| now.issuer_of(c)).is_none() {
                tracing::info!(node = %peer.node_id(), "closing a connection whose certificate no trusted root signed any more");
                return;
            }
            trusted = now;
        }
        let reply = answer(&rt, Some(peer.clone()), request).await;
        if respond(&mut tls, &reply, limits.frame_timeout)
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn answer(
    rt: &Arc<Runtime>,
    peer: Option<PeerIdentity>,
    request: Result<Request, WireError>,
) -> Reply {
    rt.handle(peer, request?).await
}

async fn respond<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    reply: &Reply,
    timeout: Duration,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    match tokio::time::timeout(timeout, write_frame(stream, &body)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ListenerLimits {
        ListenerLimits {
            max_connections: 10,
            max_per_source: 6,
            max_strangers: 5,
            max_strangers_per_source: 2,
            max_handshakes_per_node: 3,
            ..ListenerLimits::default()
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 168, 77, last])
    }

    #[test]
    fn strangers_are_bounded_per_source_and_in_all() {
        let a = Admission::new(limits());
        let mut held = Vec::new();
        held.extend(a.admit(ip(100), false));
        held.extend(a.admit(ip(100), false));
        assert!(a.admit(ip(100), false).is_none(), "per source");
        held.extend(a.admit(ip(101), false));
        held.extend(a.admit(ip(101), false));
        held.extend(a.admit(ip(102), false));
        assert_eq!(held.len(), 5);
        assert!(a.admit(ip(103), false).is_none(), "all strangers");
        assert_eq!(a.refused(), 2);
        // A node's address has its own pool: strangers cannot take its slots.
        let node: Vec<Slot> = (0..3).filter_map(|_| a.admit(ip(11), true)).collect();
        assert_eq!(node.len(), 3);
        assert!(a.admit(ip(11), true).is_none(), "handshakes per node");
        // Places come back when connections end.
        held.truncate(3);
        assert!(a.admit(ip(103), false).is_some());
    }

    #[test]
    fn authenticated_connections_leave_the_handshake_pools_but_count_in_all() {
        let a = Admission::new(limits());
        let mut node = Vec::new();
        for _ in 0..6 {
            let mut s = a.admit(ip(11), true).expect("a place");
            s.authenticated();
            node.push(s);
        }
        assert!(a.admit(ip(11), true).is_none(), "per source, in all");
        let mut strangers = Vec::new();
        for last in 100..104 {
            let mut s = a.admit(ip(last), false).expect("a place");
            s.authenticated();
            strangers.push(s);
        }
        assert!(a.admit(ip(104), false).is_none(), "all connections");
        drop(node);
        drop(strangers);
        let c = lock(&a.counts);
        assert_eq!((c.all, c.strangers, c.by_source.len()), (0, 0, 0));
    }
}
