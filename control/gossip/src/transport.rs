//! chitchat's transport with the cluster's keys on it: every chitchat message is
//! serialized, sealed for the node it goes to ([`crate::seal`]) and sent as one datagram
//! on the [`Wire`]; every datagram received is opened, its sender checked against the
//! [`TrustSet`], and its content screened ([`crate::screen`]) and admitted
//! ([`crate::admit`]) before chitchat sees it. Anything that fails is dropped and
//! counted, and the socket goes on.
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_trait::async_trait;
use chitchat::{
    transport::{Socket, Transport},
    ChitchatMessage, Deserializable, Serializable,
};
use tokio::{sync::watch, time::Instant};
use tracing::warn;

use crate::{
    admit::admit,
    identity::TrustSet,
    intake::{members_first, Datagram, BATCH},
    keys::Keyring,
    reach::{Probe, ProbeTiming, Reach, ReachSender},
    screen::{Direction, Refusal, Screen},
    seal::{Opener, Sealer, MAX_PACKET},
    wire::{Wire, WireSocket},
    Counter, Counters,
};

/// Source addresses remembered with the member that sent from them, at most.
const MAX_HEARD_FROM: usize = 4096;

pub(crate) struct SecureTransport {
    pub(crate) wire: Wire,
    pub(crate) cluster_id: String,
    pub(crate) node_id: String,
    pub(crate) keyring: Arc<RwLock<Keyring>>,
    pub(crate) trust: watch::Receiver<Arc<TrustSet>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) max_age: Duration,
    /// This node's probes of every member, and where its verdicts go ([`crate::reach`]).
    pub(crate) probes: ProbeTiming,
    pub(crate) reach: ReachSender,
}

#[async_trait]
impl Transport for SecureTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = WireSocket::bind(&self.wire, listen_addr).await?;
        Ok(Box::new(SecureSocket {
            socket,
            sealer: Sealer::new(
                self.cluster_id.clone(),
                self.node_id.clone(),
                self.keyring.clone(),
            )?,
            inbound: Inbound::new(
                self.cluster_id.clone(),
                self.node_id.clone(),
                self.keyring.clone(),
                self.counters.clone(),
                self.max_age,
            )?,
            outbound: Screen::new()?,
            trust: self.trust.clone(),
            counters: self.counters.clone(),
            buf: vec![0u8; MAX_PACKET + 1].into_boxed_slice(),
            pending: VecDeque::with_capacity(BATCH),
            plain: Vec::with_capacity(MAX_PACKET),
            reach: Reach::new(
                self.node_id.clone(),
                self.probes.clone(),
                self.reach.clone(),
                Instant::now(),
            ),
        }))
    }
}

struct SecureSocket {
    socket: WireSocket,
    sealer: Sealer,
    inbound: Inbound,
    /// The trust check on what this node offers its peers.
    outbound: Screen,
    trust: watch::Receiver<Arc<TrustSet>>,
    counters: Arc<Counters>,
    /// One byte more than the largest accepted datagram, so an oversized one shows.
    buf: Box<[u8]>,
    /// Datagrams read and not opened yet, members' first ([`crate::intake`]).
    pending: VecDeque<Datagram>,
    plain: Vec<u8>,
    /// This node's probes and verdicts: probes go out from `recv` (which chitchat's loop
    /// always has waiting), acks come back through it.
    reach: Reach,
}

fn count(counters: &Counters, counter: Counter, what: impl FnOnce()) {
    if counters.bump(counter) == 1 {
        what();
    }
}

#[async_trait]
impl Socket for SecureSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        let trust = self.trust.borrow().clone();
        let Some(receiver) = self.inbound.member_at(&trust, to) else {
            count(&self.counters, Counter::SendUnknownPeer, || {
                warn!(%to, "no member known at this gossip address: nothing sent \
                    (further ones are only counted)")
            });
            return Ok(());
        };
        self.plain.clear();
        msg.serialize(&mut self.plain);
        // Generations no longer trusted (a restarted or removed node's, dead in chitchat's
        // state for a while) are not offered to peers that would refuse them.
        let screened = self.outbound.screen(
            &self.plain,
            &self.inbound.cluster_id,
            &trust,
            Direction::Out,
        );
        if let Ok(Some(rewritten)) = screened.map(|s| s.rewritten) {
            self.plain = rewritten;
        }
        let Some(packet) = self.sealer.seal(&self.plain, &receiver) else {
            count(&self.counters, Counter::SendTooBig, || {
                warn!(%to, len = self.plain.len(),
                    "gossip message too big for one datagram even compressed; not sent")
            });
            return Ok(());
        };
        self.socket.send_to(to, packet).await?;
        self.counters.bump(Counter::Sent);
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            self.probe_due();
            let Some((from, packet)) = self.pending.pop_front() else {
                let next = self.reach.next_due();
                // Cancel-safe: a datagram is either received whole (and kept in
                // `pending` with the rest of its batch) or left in the socket, and
                // probing keeps its state in `self`.
                // Datagrams first: an ack already queued is read before the next round
                // judges its sender.
                let first = tokio::select! {
                    biased;
                    r = self.socket.recv(&mut self.buf) => r?,
                    () = tokio::time::sleep_until(next) => continue,
                };
                self.read_batch(first);
                continue;
            };
            let trust = self.trust.borrow().clone();
            match self.inbound.receive(&trust, from, &packet) {
                Some(Received::Chitchat(msg, _)) => return Ok((from, msg)),
                Some(Received::Probe {
                    sender,
                    probe: Probe::Ask { stamp },
                }) => self.send_now(from, &sender, Probe::Answer { stamp }),
                Some(Received::Probe {
                    sender,
                    probe: Probe::Answer { stamp },
                }) => {
                    let back = self.reach.judged_back;
                    self.reach.answered(&sender, stamp, Instant::now());
                    if self.reach.judged_back > back {
                        self.counters.bump(Counter::ReachableAgain);
                    }
                }
                None => {}
            }
        }
    }
}

impl SecureSocket {
    /// Reads what else waits in the socket after `first`, up to a batch, into
    /// `pending`: members' datagrams first, strangers' shed while there is a backlog.
    fn read_batch(&mut self, first: Datagram) {
        let mut batch = Vec::with_capacity(BATCH);
        batch.push(first);
        while batch.len() < BATCH {
            match self.socket.try_recv(&mut self.buf) {
                Some(datagram) => batch.push(datagram),
                None => break,
            }
        }
        let backlog = batch.len() == BATCH;
        let trust = self.trust.borrow().clone();
        let shed = members_first(&mut batch, backlog, |from| {
            trust.lists_addr(from) || self.inbound.member_at(&trust, from).is_some()
        });
        if shed > 0 {
            self.counters.add(Counter::Shed, shed);
        }
        self.pending.extend(batch);
    }

    /// Sends the probes due now, one to every member but this node.
    fn probe_due(&mut self) {
        let trust = self.trust.borrow().clone();
        let judged = self.reach.judged_unreachable;
        for due in self.reach.due(Instant::now(), &trust) {
            self.send_now(due.addr, &due.node, due.probe);
        }
        for _ in judged..self.reach.judged_unreachable {
            self.counters.bump(Counter::Unreachable);
        }
    }

    /// Seals `probe` for member `node` and sends it to `to` without waiting: a probe or
    /// an ack the socket cannot take at once is lost, as a datagram would be.
    fn send_now(&mut self, to: SocketAddr, node: &str, probe: Probe) {
        let Some(packet) = self.sealer.seal(&probe.encode(), node) else {
            return;
        };
        self.socket.try_send_to(to, &packet);
    }
}

/// What a datagram that passed the receive step holds.
pub(crate) enum Received {
    /// A chitchat message for chitchat, and the bytes it was read from.
    Chitchat(ChitchatMessage, Vec<u8>),
    /// A member's probe or ack ([`crate::reach`]).
    Probe { sender: String, probe: Probe },
}

/// A node's receiving side: what it keeps between datagrams (replay windows, the
/// screen's last checks, which member sent from which address).
pub(crate) struct Inbound {
    opener: Opener,
    screen: Screen,
    cluster_id: String,
    counters: Arc<Counters>,
    /// Where authenticated packets came from, and which member said it sent them: a
    /// member sending from another address than its gossip address (a host with several)
    /// still gets its replies, sealed for it.
    heard_from: HashMap<SocketAddr, String>,
}

impl Inbound {
    /// The receiving side of node `node_id`: only packets sealed for it open.
    pub(crate) fn new(
        cluster_id: String,
        node_id: String,
        keyring: Arc<RwLock<Keyring>>,
        counters: Arc<Counters>,
        max_age: Duration,
    ) -> std::io::Result<Self> {
        Ok(Inbound {
            opener: Opener::new(
                cluster_id.clone(),
                node_id,
                keyring,
                counters.clone(),
                max_age,
            ),
            screen: Screen::new()?,
            cluster_id,
            counters,
            heard_from: HashMap::new(),
        })
    }

    /// The member at `to`: the one the managers list there, else the one last heard from
    /// there.
    fn member_at(&self, trust: &TrustSet, to: SocketAddr) -> Option<String> {
        trust.node_at(to).map(str::to_owned).or_else(|| {
            self.heard_from
                .get(&to)
                .filter(|id| trust.get(id).is_some())
                .cloned()
        })
    }

    /// What a node makes of one datagram it received, with `trust` the members the
    /// managers list: opened with the cluster keys for this node ([`Opener::open`]), its
    /// sender a member; then either a member's reachability probe or ack
    /// ([`crate::reach`], exactly [`Probe`]'s form), or, what it says about each node
    /// screened ([`Screen`]: only trusted generations, only records signed by their
    /// node), exactly one chitchat message that chitchat can hold ([`admit`]): that
    /// message, and the bytes it was read from. `None`: dropped and counted. Everything
    /// a datagram's sender controls passes through here before chitchat or the prober
    /// sees it (the fuzz target `gossip_datagram` drives it).
    pub(crate) fn receive(
        &mut self,
        trust: &TrustSet,
        from: SocketAddr,
        packet: &[u8],
    ) -> Option<Received> {
        let opened = self.opener.open(from, packet)?;
        let (sender, len) = (opened.sender, opened.plain.len());
        let counters = self.counters.clone();
        if trust.get(&sender).is_none() {
            count(&counters, Counter::UnknownSender, || {
                warn!(%from, %sender,
                    "gossip packet from a node that is not a member; dropped \
                     (further ones are only counted)")
            });
            return None;
        }
        if !self.heard_from.contains_key(&from) && self.heard_from.len() >= MAX_HEARD_FROM {
            self.heard_from.clear();
        }
        self.heard_from.insert(from, sender.clone());
        let why = match Probe::parse(&opened.plain) {
            Some(Ok(probe)) => return Some(Received::Probe { sender, probe }),
            Some(Err(why)) => why,
            None => match self.chitchat(&opened.plain, trust, from, &sender) {
                Ok(received) => return Some(received),
                Err(why) => why,
            },
        };
        // Sealed with a cluster key by a member, yet not a chitchat message, or one
        // chitchat cannot handle safely (`admit`).
        count(&counters, Counter::BadMessage, || {
            warn!(%from, %sender, len, reason = %why,
                "authentic gossip packet is not an acceptable chitchat message; dropped \
                 (further ones are only counted)")
        });
        None
    }

    /// Screens `plain` (from member `sender` at `from`) and reads it as one chitchat
    /// message that chitchat can hold; the error says why not.
    fn chitchat(
        &mut self,
        plain: &[u8],
        trust: &TrustSet,
        from: SocketAddr,
        sender: &str,
    ) -> Result<Received, String> {
        let counters = &*self.counters;
        let screened = self
            .screen
            .screen(plain, &self.cluster_id, trust, Direction::In)?;
        for refused in &screened.refused {
            let counter = match refused.why {
                Refusal::UntrustedHeartbeat => Counter::UntrustedHeartbeat,
                Refusal::UntrustedNode => Counter::UntrustedNode,
                Refusal::BadDelta => Counter::BadDelta,
                Refusal::Forged => Counter::ForgedRecord,
            };
            count(counters, counter, || {
                warn!(%from, %sender, about = ?refused.node,
                    reason = ?refused.why, detail = %refused.detail,
                    "gossip about a node left out (further ones of this kind are \
                     only counted)")
            });
        }
        let plain = screened.rewritten.unwrap_or_else(|| plain.to_vec());
        let mut cursor = plain.as_slice();
        match ChitchatMessage::deserialize(&mut cursor) {
            Ok(msg) if cursor.is_empty() => {
                admit(&plain)?;
                counters.bump(Counter::Received);
                Ok(Received::Chitchat(msg, plain))
            }
            Ok(_) => Err("bytes after the message".to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}
