//! Relays queries for names the record table does not own to the node's upstream
//! resolvers, and relays their answers back unchanged.
//!
//! Decisions:
//! - **Faithful relay.** The query goes out as the client sent it and the answer comes
//!   back as the upstream sent it; only the 16-bit ID is changed (a fresh random ID on
//!   the way out, the client's ID on the way back). Nothing is decoded beyond the header
//!   and the question section, so record types this crate knows nothing about, EDNS
//!   options and DNSSEC records pass through untouched.
//! - **Transport follows the client.** A UDP query is forwarded over UDP; an answer with
//!   TC set is returned as is, the client retries over TCP, and that query is forwarded
//!   over TCP (2-byte length framing). The forwarder never upgrades on its own: the
//!   client's EDNS payload size is what the upstream sized its answer for.
//! - **One fresh socket per UDP attempt**, bound to an ephemeral port and connected to
//!   the upstream, plus a fresh random ID: the kernel drops datagrams from any other
//!   address, and a datagram that gets through must still carry the ID, the response
//!   bit, the opcode and the question of the query, or it is ignored and the forwarder
//!   keeps waiting. Being connected also turns an ICMP port unreachable into an error,
//!   so a dead upstream costs a round trip, not a timeout.
//! - **Upstreams in order, each with the full timeout.** Each upstream gets one attempt
//!   bounded by [`ForwardConfig::timeout`]; on a timeout, an I/O error (refused, reset,
//!   unreachable) or an answer with SERVFAIL, REFUSED or NOTIMP the next one is tried,
//!   as glibc's stub resolver does. So a query takes at most `timeout * upstreams.len()`
//!   (6 s with the defaults and three nameservers, which glibc also caps at); a client
//!   retrying sooner simply sends a new query. If every upstream fails with one of those
//!   answers, the last such answer is relayed (it is still the upstreams' answer).
//! - **A bound on concurrent forwards.** Beyond [`ForwardConfig::max_in_flight`] a
//!   forward fails at once with [`ForwardError::Busy`] instead of queueing: queued work
//!   would only answer after the client gave up, and the handler answers SERVFAIL.

mod resolv_conf;
mod wire;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub use wire::servfail_for;
use wire::QueryInfo;

/// Where [`ForwardConfig::from_system`] reads the host's resolvers from.
pub const SYSTEM_RESOLV_CONF: &str = "/etc/resolv.conf";
/// Default bound on one attempt at one upstream.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default bound on concurrent forwards.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Largest DNS message (UDP datagram or TCP frame).
const MAX_MESSAGE: usize = u16::MAX as usize;

/// Where and how queries are forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardConfig {
    /// Upstream resolvers, tried in this order.
    pub upstreams: Vec<SocketAddr>,
    /// Bound on one attempt at one upstream (see the module docs for the total).
    pub timeout: Duration,
    /// Concurrent forwards beyond this fail at once with [`ForwardError::Busy`].
    pub max_in_flight: usize,
}

impl ForwardConfig {
    /// These upstreams with the default timeout (2 s) and bound (1024).
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self {
            upstreams,
            timeout: DEFAULT_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// Upstreams from the `nameserver` lines of a resolv.conf, port 53, with the
    /// default timeout and bound. Read as glibc reads it: comments (`#`, `;`) and other
    /// keywords ignored, text after the address ignored, unparsable addresses skipped
    /// (with a warning), at most the first three nameservers (duplicates dropped). IPv6
    /// is accepted, with a zone (`fe80::1%eth0`). Loopback upstreams are kept: the agent
    /// forwards from the node's own network namespace, where they are reachable.
    /// `options timeout:`/`attempts:` are not taken over.
    ///
    /// Fails with [`ForwardError::NoUpstream`] when no usable nameserver is left; a
    /// caller that wants to run anyway can build a config with no upstreams, whose
    /// forwards then fail with that error.
    pub fn from_resolv_conf(text: &str) -> Result<Self, ForwardError> {
        let upstreams = resolv_conf::nameservers(text);
        if upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        Ok(Self::new(upstreams))
    }

    /// [`Self::from_resolv_conf`] on the file at `path`.
    pub fn from_path(path: &Path) -> Result<Self, ForwardError> {
        let text = std::fs::read_to_string(path).map_err(|source| ForwardError::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        Self::from_resolv_conf(&text)
    }

    /// [`Self::from_resolv_conf`] on the host's `/etc/resolv.conf`.
    pub fn from_system() -> Result<Self, ForwardError> {
        Self::from_path(Path::new(SYSTEM_RESOLV_CONF))
    }
}

/// Why a query was not relayed. The handler answers the client SERVFAIL for all of
/// these (see [`servfail_for`]) except [`ForwardError::Malformed`], which may not be
/// answerable at all.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolver configured")]
    NoUpstream,
    /// Every upstream in the list either timed out (these) or failed otherwise (logged).
    #[error("no answer from upstream resolvers {upstreams:?} in time")]
    Timeout { upstreams: Vec<SocketAddr> },
    #[error("too many forwarded queries in flight (at most {max_in_flight})")]
    Busy { max_in_flight: usize },
    #[error("malformed query: {0}")]
    Malformed(String),
    /// Every upstream failed and none timed out; this is the first one's error.
    #[error("upstream resolver {upstream}: {source}")]
    Io {
        upstream: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Relays queries to the upstreams of a [`ForwardConfig`]. Cheap to clone; clones share
/// the bound on concurrent forwards.
#[derive(Debug, Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ForwardConfig,
    in_flight: AtomicUsize,
}

/// One slot of the concurrency bound, given back on drop (also when the forward's
/// future is dropped half-way).
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How one attempt at one upstream ended.
enum Attempt {
    Answer(Vec<u8>),
    TimedOut,
    Failed(io::Error),
}

impl Forwarder {
    pub fn new(config: ForwardConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                in_flight: AtomicUsize::new(0),
            }),
        }
    }

    pub fn config(&self) -> &ForwardConfig {
        &self.inner.config
    }

    /// Forwards in flight right now (for metrics and tests).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Relays one query (wire format, as the client sent it) and returns the upstream's
    /// answer in wire format, byte for byte, except that the ID is set back to the
    /// client's. `over_tcp`: how the client asked, and so how the upstream is asked.
    /// See the module docs for the order of upstreams, timeouts and what counts as an
    /// answer.
    pub async fn forward(&self, query: &[u8], over_tcp: bool) -> Result<Vec<u8>, ForwardError> {
        let config = &self.inner.config;
        self.forward_to(query, over_tcp, &config.upstreams).await
    }

    /// [`Self::forward`] to `upstreams` instead of the configured ones (a task's own
    /// resolvers), with the configured timeout and the shared bound on forwards.
    pub async fn forward_to(
        &self,
        query: &[u8],
        over_tcp: bool,
        upstreams: &[SocketAddr],
    ) -> Result<Vec<u8>, ForwardError> {
        let info = QueryInfo::parse(query).map_err(ForwardError::Malformed)?;
        if query.len() > MAX_MESSAGE {
            return Err(ForwardError::Malformed(format!(
                "{} bytes is longer than a DNS message can be",
                query.len()
            )));
        }
        let config = &self.inner.config;
        if upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let _slot = self.take_slot()?;

        let mut outgoing = query.to_vec();
        let mut timed_out = Vec::new();
        let mut first_error = None;
        let mut fallback = None;
        for &upstream in upstreams {
            let id: u16 = rand::random();
            wire::set_id(&mut outgoing, id);
            let attempt = async {
                if over_tcp {
                    exchange_tcp(upstream, &outgoing, &info, id).await
                } else {
                    exchange_udp(upstream, &outgoing, &info, id).await
                }
            };
            let attempt = match tokio::time::timeout(config.timeout, attempt).await {
                Ok(Ok(answer)) => Attempt::Answer(answer),
                Ok(Err(e)) => Attempt::Failed(e),
                Err(_) => Attempt::TimedOut,
            };
            match attempt {
                Attempt::Answer(mut answer) => {
                    wire::set_id(&mut answer, info.header.id);
                    let rcode = wire::Header::parse(&answer).map_or(0, |h| h.rcode());
                    if matches!(
                        rcode,
                        wire::RCODE_SERVFAIL | wire::RCODE_REFUSED | wire::RCODE_NOTIMP
                    ) {
                        tracing::debug!(%upstream, rcode, "upstream answered with an error, trying the next");
                        fallback = Some(answer);
                        continue;
                    }
                    return Ok(answer);
                }
                Attempt::TimedOut => {
                    tracing::debug!(%upstream, timeout = ?config.timeout, over_tcp, "upstream timed out");
                    timed_out.push(upstream);
                }
                Attempt::Failed(source) => {
                    tracing::debug!(%upstream, over_tcp, "upstream failed: {source}");
                    first_error.get_or_insert(ForwardError::Io { upstream, source });
                }
            }
        }
        if let Some(answer) = fallback {
            return Ok(answer);
        }
        if !timed_out.is_empty() {
            return Err(ForwardError::Timeout {
                upstreams: timed_out,
            });
        }
        Err(first_error.unwrap_or(ForwardError::NoUpstream))
    }

    fn take_slot(&self) -> Result<Slot<'_>, ForwardError> {
        let max_in_flight = self.inner.config.max_in_flight;
        self.inner
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_in_flight).then_some(n + 1)
            })
            .map_err(|_| ForwardError::Busy { max_in_flight })?;
        Ok(Slot(&self.inner.in_flight))
    }
}

fn unspecified_for(upstream: SocketAddr) -> SocketAddr {
    match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// Sends `query` (already carrying `id`) from a fresh connected socket and waits for
/// the first datagram that answers it; others are ignored. Unbounded: the caller
/// applies the timeout.
async fn exchange_udp(
    upstream: SocketAddr,
    query: &[u8],
    info: &QueryInfo,
    id: u16,
) -> io::Result<Vec<u8>> {
    let socket = UdpSocket::bind(unspecified_for(upstream)).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let len = socket.recv(&mut buf).await?;
        let datagram = &buf[..len];
        if info.accepts(id, datagram) {
            return Ok(datagram.to_vec());
        }
        tracing::debug!(%upstream, len, "ignoring a datagram that does not answer the query");
    }
}

/// Sends `query` (already carrying `id`) over a fresh TCP connection and reads framed
/// messages until one answers it. Unbounded: the caller applies the timeout.
async fn exchange_tcp(
    upstream: SocketAddr,
    query: &[u8],
    info: &QueryInfo,
    id: u16,
) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let mut framed = Vec::with_capacity(2 + query.len());
    // forward() refuses queries longer than MAX_MESSAGE, so the length fits.
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    loop {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut message).await?;
        if info.accepts(id, &message) {
            return Ok(message);
        }
        tracing::debug!(%upstream, len = message.len(), "ignoring a TCP message that does not answer the query");
    }
}
