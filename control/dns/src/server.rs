//! Serves the resolver on one UDP socket and one TCP listener per network until shut
//! down.
//!
//! The caller makes the sockets: the agent creates them inside each overlay network's
//! namespace, bound to the network's gateway address on port 53 (a socket stays in the
//! namespace it was made in), and containers' resolv.conf names that address. A query's
//! network is the socket it arrived on, and its source address names the asking
//! container (see [`crate::records::RecordTable::scope`]).
//!
//! The loops are shoal's own rather than [`hickory_server::Server`]'s, for three things
//! that one lacks: a bound on TCP connections, per-source bounds, and relaying forwarded
//! answers byte for byte. Messages are parsed and built with hickory-proto, and the
//! handler is also a hickory-server [`hickory_server::server::RequestHandler`].
//!
//! Bounds and bad input:
//! - **UDP.** Local names are answered inline in the receive loop (no task, no lock
//!   held across a wait); forwards run in their own task. Datagrams from one source
//!   beyond [`ServerConfig::rate_limit`] (a token bucket per source address and network)
//!   are dropped before they are parsed, and so are forwards beyond
//!   [`ServerConfig::max_forwards_per_source`] in flight from one source or
//!   [`ServerConfig::max_forwards`] in flight on one network; the client retries (or its
//!   stub gives up), and another container's queries are still read and answered. What
//!   a flood can still take is kernel socket buffer space: the loop reads as fast as it
//!   answers (microseconds per local name), so other containers' datagrams are lost only
//!   when the flood exceeds that rate. Every datagram is either answered or dropped at
//!   once, except forwards, which end within the forwarder's timeout.
//! - **TCP.** At most [`ServerConfig::max_tcp_connections`] connections per network and
//!   [`ServerConfig::max_tcp_connections_per_source`] per source; a connection beyond
//!   that is closed at once. A connection is closed when it stays idle (or half-sent)
//!   for [`ServerConfig::tcp_idle_timeout`], sends a frame shorter than a DNS header, or
//!   sends input the handler drops. Queries on one connection are answered in order.
//! - **Shutdown.** [`DnsServer::shutdown`] stops reading, lets running forwards and
//!   TCP answers finish for up to [`ServerConfig::shutdown_grace`], then ends them and
//!   closes the sockets.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::forward::Forwarder;
use crate::handler::{HandlerConfig, Outcome, ShoalHandler};
use crate::records::SharedTable;
use crate::stats::{DnsStats, Dropped};

/// The sockets of one network, bound by the caller.
#[derive(Debug)]
pub struct NetworkListener {
    pub network: String,
    pub udp: std::net::UdpSocket,
    pub tcp: std::net::TcpListener,
}

/// A per-source token bucket: `per_second` queries on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

/// Limits and timeouts of a [`DnsServer`]; the defaults suit a node's containers.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub handler: HandlerConfig,
    /// UDP queries per source address and network; `None`: unlimited (benchmarks).
    pub rate_limit: Option<RateLimit>,
    /// Forwards in flight per network, beyond which UDP queries for other names are
    /// dropped (the forwarder has its own node-wide bound, answered with SERVFAIL).
    pub max_forwards: usize,
    /// Forwards in flight per source address and network, beyond which that source's
    /// UDP queries for other names are dropped: one container cannot take every
    /// forwarding slot.
    pub max_forwards_per_source: usize,
    pub max_tcp_connections: usize,
    pub max_tcp_connections_per_source: usize,
    /// How long a TCP connection may wait for (the rest of) a query, or for its answer
    /// to be written.
    pub tcp_idle_timeout: Duration,
    /// How long [`DnsServer::shutdown`] lets running work finish.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            handler: HandlerConfig::default(),
            rate_limit: Some(RateLimit {
                per_second: 5_000.0,
                burst: 10_000.0,
            }),
            max_forwards: 2_048,
            max_forwards_per_source: 128,
            max_tcp_connections: 256,
            max_tcp_connections_per_source: 32,
            tcp_idle_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// Where one network is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedNetwork {
    pub network: String,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
}

/// A running resolver. Dropping it stops the loops too, without waiting.
#[derive(Debug)]
pub struct DnsServer {
    served: Vec<ServedNetwork>,
    shutdown: watch::Sender<bool>,
    loops: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Starts serving every listener's network from `table`, forwarding other names
    /// through `forwarder`. Must be called within a Tokio runtime; fails if a socket
    /// cannot be registered with it.
    pub fn serve(
        listeners: Vec<NetworkListener>,
        table: Arc<SharedTable>,
        forwarder: Forwarder,
        config: ServerConfig,
    ) -> io::Result<DnsServer> {
        Self::serve_counted(
            listeners,
            table,
            forwarder,
            config,
            Arc::new(DnsStats::default()),
        )
    }

    /// [`serve`](Self::serve), counting into `stats` (shared with other servers of the
    /// node, read by the agent's metrics).
    pub fn serve_counted(
        listeners: Vec<NetworkListener>,
        table: Arc<SharedTable>,
        forwarder: Forwarder,
        config: ServerConfig,
        stats: Arc<DnsStats>,
    ) -> io::Result<DnsServer> {
        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let (shutdown, _) = watch::channel(false);
        let mut served = Vec::new();
        let mut sockets = Vec::new();
        for listener in listeners {
            listener.udp.set_nonblocking(true)?;
            listener.tcp.set_nonblocking(true)?;
            let udp = UdpSocket::from_std(listener.udp)?;
            let tcp = TcpListener::from_std(listener.tcp)?;
            served.push(ServedNetwork {
                network: listener.network.clone(),
                udp: udp.local_addr()?,
                tcp: tcp.local_addr()?,
            });
            sockets.push((listener.network, udp, tcp));
        }
        let config = Arc::new(config);
        let mut loops = Vec::new();
        for (network, udp, tcp) in sockets {
            let handler = Arc::new(ShoalHandler::new(
                table.clone(),
                network,
                forwarder.clone(),
                config.handler.clone(),
            ));
            loops.push(tokio::spawn(serve_udp(
                udp,
                handler.clone(),
                config.clone(),
                stats.clone(),
                shutdown.subscribe(),
            )));
            loops.push(tokio::spawn(serve_tcp(
                tcp,
                handler,
                config.clone(),
                stats.clone(),
                shutdown.subscribe(),
            )));
        }
        Ok(DnsServer {
            served,
            shutdown,
            loops,
        })
    }

    /// The addresses each network is served on.
    pub fn served(&self) -> &[ServedNetwork] {
        &self.served
    }

    /// Stops reading queries, lets running work finish (up to the grace period), and
    /// closes the sockets; they can be bound again once this returns.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        for task in std::mem::take(&mut self.loops) {
            if let Err(error) = task.await {
                if error.is_panic() {
                    tracing::error!(%error, "a DNS server loop panicked");
                }
            }
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// Resolves when shutdown is asked for (or the server is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Lets `tasks` finish for up to `grace`, then aborts the rest.
async fn drain(tasks: &mut JoinSet<()>, grace: Duration) {
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all).await.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// Errors worth a pause before the next read (so a persistent one does not spin).
fn transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

async fn serve_udp(
    socket: UdpSocket,
    handler: Arc<ShoalHandler>,
    config: Arc<ServerConfig>,
    stats: Arc<DnsStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let socket = Arc::new(socket);
    let network = handler.network().to_string();
    let forwards = Arc::new(Semaphore::new(config.max_forwards));
    let per_source = Arc::new(SourceCounts::default());
    let mut limiter = RateLimiter::new(config.rate_limit);
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            received = socket.recv_from(&mut buf) => received,
        };
        while tasks.try_join_next().is_some() {}
        let (len, src) = match received {
            Ok(received) => received,
            Err(error) => {
                tracing::debug!(%network, %error, "receiving a DNS query failed");
                if !transient(&error) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        if src.port() == 0 {
            continue;
        }
        let arrived = Instant::now();
        stats.query(false);
        if !limiter.allow(src.ip(), arrived) {
            stats.dropped(Dropped::RateLimited);
            continue;
        }
        match handler.answer_local(&buf[..len], src.ip(), false) {
            Outcome::Done(None) => stats.dropped(Dropped::Invalid),
            Outcome::Done(Some(answer)) => {
                stats.answered_local(arrived.elapsed());
                if let Err(error) = socket.send_to(&answer, src).await {
                    tracing::debug!(%network, %src, %error, "sending a DNS answer failed");
                }
            }
            Outcome::Forward(pending) => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else {
                    tracing::debug!(%network, %src, "too many forwards in flight, dropped");
                    stats.dropped(Dropped::ForwardLimit);
                    continue;
                };
                let Some(slot) = per_source.take(src.ip(), config.max_forwards_per_source) else {
                    tracing::debug!(%network, %src, "too many forwards in flight from this source, dropped");
                    stats.dropped(Dropped::ForwardLimit);
                    continue;
                };
                let socket = socket.clone();
                let handler = handler.clone();
                let stats = stats.clone();
                tasks.spawn(async move {
                    let _held = (permit, slot);
                    let answer = handler.forward(pending).await;
                    stats.forwarded(arrived.elapsed());
                    if let Err(error) = socket.send_to(&answer, src).await {
                        tracing::debug!(%src, %error, "sending a forwarded DNS answer failed");
                    }
                });
            }
        }
    }
    drain(&mut tasks, config.shutdown_grace).await;
}

async fn serve_tcp(
    listener: TcpListener,
    handler: Arc<ShoalHandler>,
    config: Arc<ServerConfig>,
    stats: Arc<DnsStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let network = handler.network().to_string();
    let connections = Arc::new(Semaphore::new(config.max_tcp_connections));
    let per_source = Arc::new(SourceCounts::default());
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        while tasks.try_join_next().is_some() {}
        let (stream, src) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and the like: wait for connections to close.
                tracing::debug!(%network, %error, "accepting a DNS connection failed");
                if !transient(&error) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%network, %src, "too many DNS connections, closed");
            continue;
        };
        let Some(slot) = per_source.take(src.ip(), config.max_tcp_connections_per_source) else {
            tracing::debug!(%network, %src, "too many DNS connections from this source, closed");
            continue;
        };
        let handler = handler.clone();
        let config = config.clone();
        let stats = stats.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _held = (permit, slot);
            if let Err(error) =
                serve_connection(stream, src, &handler, &config, &stats, shutdown).await
            {
                tracing::debug!(%src, %error, "DNS connection closed");
            }
        });
    }
    drain(&mut tasks, config.shutdown_grace).await;
}

/// Answers the queries of one TCP connection (2-byte length framing, RFC 1035 4.2.2)
/// in order, until the client closes it, idles, misbehaves or the server stops.
async fn serve_connection(
    mut stream: TcpStream,
    src: SocketAddr,
    handler: &ShoalHandler,
    config: &ServerConfig,
    stats: &DnsStats,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let idle = config.tcp_idle_timeout;
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "idle");
    let mut body = Vec::new();
    loop {
        let mut len = [0u8; 2];
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => return Ok(()),
            read = tokio::time::timeout(idle, stream.read_exact(&mut len)) => {
                match read {
                    Err(_) => return Err(timed_out()),
                    Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Ok(result) => { result?; }
                }
            }
        }
        let len = usize::from(u16::from_be_bytes(len));
        if len < 12 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame shorter than a DNS header",
            ));
        }
        body.resize(len, 0);
        tokio::time::timeout(idle, stream.read_exact(&mut body))
            .await
            .map_err(|_| timed_out())??;
        let arrived = Instant::now();
        stats.query(true);
        let answer = match handler.answer_local(&body, src.ip(), true) {
            Outcome::Done(Some(answer)) => {
                stats.answered_local(arrived.elapsed());
                answer
            }
            Outcome::Forward(pending) => {
                let answer = handler.forward(pending).await;
                stats.forwarded(arrived.elapsed());
                answer
            }
            Outcome::Done(None) => {
                stats.dropped(Dropped::Invalid);
                return Err(io::Error::new(io::ErrorKind::InvalidData, "dropped input"));
            }
        };
        let Ok(answer_len) = u16::try_from(answer.len()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "answer too long",
            ));
        };
        let mut frame = Vec::with_capacity(answer.len() + 2);
        frame.extend_from_slice(&answer_len.to_be_bytes());
        frame.extend_from_slice(&answer);
        tokio::time::timeout(idle, stream.write_all(&frame))
            .await
            .map_err(|_| timed_out())??;
    }
}

/// Counts of things in flight per source address.
#[derive(Debug, Default)]
struct SourceCounts {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted thing, given back on drop.
struct SourceSlot {
    counts: Arc<SourceCounts>,
    ip: IpAddr,
}

impl SourceCounts {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Token buckets per source address, owned by one receive loop.
#[derive(Debug)]
struct RateLimiter {
    limit: Option<RateLimit>,
    buckets: HashMap<IpAddr, Bucket>,
    last_sweep: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// How often full buckets are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Sources tracked per receive loop at most (a /16 network's worth).
const MAX_SOURCES: usize = 65_536;

impl RateLimiter {
    fn new(limit: Option<RateLimit>) -> Self {
        Self {
            limit,
            buckets: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.last_sweep = now;
            self.buckets.retain(|_, bucket| {
                let refilled =
                    bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * limit.per_second;
                refilled < limit.burst
            });
        }
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&ip) {
            // Only a flood of (spoofed) sources gets here: start over rather than grow
            // without bound, letting every source in once more.
            tracing::debug!(sources = self.buckets.len(), "rate limiter full, reset");
            self.buckets.clear();
        }
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: limit.burst,
            at: now,
        });
        let refilled =
            bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * limit.per_second;
        bucket.tokens = refilled.min(limit.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_allows_the_burst_then_the_rate() {
        let mut limiter = RateLimiter::new(Some(RateLimit {
            per_second: 10.0,
            burst: 5.0,
        }));
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let b: IpAddr = "10.0.0.3".parse().unwrap();
        let start = Instant::now();
        let allowed = (0..20).filter(|_| limiter.allow(a, start)).count();
        assert_eq!(allowed, 5, "the burst, then nothing at the same instant");
        assert!(limiter.allow(b, start), "another source has its own bucket");
        let later = start + Duration::from_millis(500);
        let allowed = (0..20).filter(|_| limiter.allow(a, later)).count();
        assert_eq!(allowed, 5, "half a second at 10/s refills 5");
        let much_later = start + Duration::from_secs(60);
        assert!(limiter.allow(a, much_later));
        assert!(limiter.buckets.len() <= 1, "idle full buckets are swept");
    }

    #[test]
    fn unlimited_rate_allows_everything() {
        let mut limiter = RateLimiter::new(None);
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..100_000).all(|_| limiter.allow(a, Instant::now())));
        assert!(limiter.buckets.is_empty());
    }

    #[test]
    fn source_counts_bound_and_release() {
        let counts = Arc::new(SourceCounts::default());
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let first = counts.take(a, 2).unwrap();
        let _second = counts.take(a, 2).unwrap();
        assert!(counts.take(a, 2).is_none());
        drop(first);
        assert!(counts.take(a, 2).is_some());
    }
}
