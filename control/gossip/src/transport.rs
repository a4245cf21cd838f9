//! chitchat's transport with the cluster's keys on it: every chitchat message is
//! serialized, sealed for the node it goes to ([`crate::seal`]) and sent as one datagram
//! on the [`Wire`]; every datagram received is opened, its sender checked against the
//! [`TrustSet`], and its content screened ([`crate::screen`]) before chitchat parses it.
//! Anything that fails is dropped and counted, and the socket goes on.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_trait::async_trait;
use chitchat::{
    transport::{Socket, Transport},
    ChitchatMessage, Deserializable, Serializable,
};
use tokio::sync::watch;
use tracing::warn;

use crate::{
    identity::TrustSet,
    keys::Keyring,
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
            opener: Opener::new(
                self.cluster_id.clone(),
                self.node_id.clone(),
                self.keyring.clone(),
                self.counters.clone(),
                self.max_age,
            ),
            cluster_id: self.cluster_id.clone(),
            trust: self.trust.clone(),
            screen: Screen::new()?,
            heard_from: HashMap::new(),
            counters: self.counters.clone(),
            buf: vec![0u8; MAX_PACKET + 1].into_boxed_slice(),
            plain: Vec::with_capacity(MAX_PACKET),
        }))
    }
}

struct SecureSocket {
    socket: WireSocket,
    sealer: Sealer,
    opener: Opener,
    cluster_id: String,
    trust: watch::Receiver<Arc<TrustSet>>,
    screen: Screen,
    /// Where authenticated packets came from, and which member said it sent them: a
    /// member sending from another address than its gossip address (a host with several)
    /// still gets its replies, sealed for it.
    heard_from: HashMap<SocketAddr, String>,
    counters: Arc<Counters>,
    /// One byte more than the largest accepted datagram, so an oversized one shows.
    buf: Box<[u8]>,
    plain: Vec<u8>,
}

impl SecureSocket {
    /// The member at `to`: the one the managers list there, else the one last heard from
    /// there.
    fn receiver(&self, to: SocketAddr) -> Option<String> {
        let trust = self.trust.borrow();
        trust.node_at(to).map(str::to_owned).or_else(|| {
            self.heard_from
                .get(&to)
                .filter(|id| trust.get(id).is_some())
                .cloned()
        })
    }

    fn count(&self, counter: Counter, what: impl FnOnce()) {
        if self.counters.bump(counter) == 1 {
            what();
        }
    }
}

#[async_trait]
impl Socket for SecureSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        let Some(receiver) = self.receiver(to) else {
            self.count(Counter::SendUnknownPeer, || {
                warn!(%to, "no member known at this gossip address: nothing sent \
                    (further ones are only counted)")
            });
            return Ok(());
        };
        self.plain.clear();
        msg.serialize(&mut self.plain);
        // Generations no longer trusted (a restarted or removed node's, dead in chitchat's
        // state for a while) are not offered to peers that would refuse them.
        let trust = self.trust.borrow().clone();
        let screened = self
            .screen
            .screen(&self.plain, &self.cluster_id, &trust, Direction::Out);
        if let Ok(Some(rewritten)) = screened.map(|s| s.rewritten) {
            self.plain = rewritten;
        }
        let Some(packet) = self.sealer.seal(&self.plain, &receiver) else {
            self.count(Counter::SendTooBig, || {
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
            let (from, packet) = self.socket.recv(&mut self.buf).await?;
            let Some(opened) = self.opener.open(from, &packet) else {
                continue;
            };
            let trust = self.trust.borrow().clone();
            if trust.get(&opened.sender).is_none() {
                self.count(Counter::UnknownSender, || {
                    warn!(%from, sender = %opened.sender,
                        "gossip packet from a node that is not a member; dropped \
                         (further ones are only counted)")
                });
                continue;
            }
            if !self.heard_from.contains_key(&from) && self.heard_from.len() >= MAX_HEARD_FROM {
                self.heard_from.clear();
            }
            self.heard_from.insert(from, opened.sender.clone());
            let screened =
                match self
                    .screen
                    .screen(&opened.plain, &self.cluster_id, &trust, Direction::In)
                {
                    Ok(s) => s,
                    Err(why) => {
                        self.count(Counter::BadMessage, || {
                            warn!(%from, sender = %opened.sender, len = opened.plain.len(), %why,
                            "authentic gossip packet is not a chitchat message; dropped")
                        });
                        continue;
                    }
                };
            for refused in &screened.refused {
                let counter = match refused.why {
                    Refusal::UntrustedHeartbeat => Counter::UntrustedHeartbeat,
                    Refusal::UntrustedNode => Counter::UntrustedNode,
                    Refusal::BadDelta => Counter::BadDelta,
                    Refusal::Forged => Counter::ForgedRecord,
                };
                self.count(counter, || {
                    warn!(%from, sender = %opened.sender, about = ?refused.node,
                        reason = ?refused.why, detail = %refused.detail,
                        "gossip about a node left out (further ones of this kind are only \
                         counted)")
                });
            }
            let bytes = screened.rewritten.as_deref().unwrap_or(&opened.plain);
            let mut cursor = bytes;
            match ChitchatMessage::deserialize(&mut cursor) {
                Ok(msg) if cursor.is_empty() => {
                    self.counters.bump(Counter::Received);
                    return Ok((from, msg));
                }
                _ => {
                    self.count(Counter::BadMessage, || {
                        warn!(%from, sender = %opened.sender, len = bytes.len(),
                            "authentic gossip packet is not a chitchat message; dropped")
                    });
                }
            }
        }
    }
}
