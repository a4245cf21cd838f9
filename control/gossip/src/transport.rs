//! chitchat's transport with the cluster key on it: every chitchat message is serialized,
//! sealed ([`crate::seal`]) and sent as one datagram on the [`Wire`]; every datagram
//! received is opened and parsed before chitchat sees it. Anything that fails is dropped
//! and counted, and the socket goes on.
use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_trait::async_trait;
use chitchat::{
    transport::{Socket, Transport},
    ChitchatMessage, Deserializable, Serializable,
};
use tracing::warn;

use crate::{
    admit::admit,
    keys::Keyring,
    seal::{Opener, Sealer, MAX_PACKET},
    wire::{Wire, WireSocket},
    Counter, Counters,
};

pub(crate) struct SecureTransport {
    pub(crate) wire: Wire,
    pub(crate) cluster_id: String,
    pub(crate) keyring: Arc<RwLock<Keyring>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) max_age: Duration,
}

#[async_trait]
impl Transport for SecureTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = WireSocket::bind(&self.wire, listen_addr).await?;
        Ok(Box::new(SecureSocket {
            socket,
            sealer: Sealer::new(self.cluster_id.clone(), self.keyring.clone())?,
            opener: Opener::new(
                self.cluster_id.clone(),
                self.keyring.clone(),
                self.counters.clone(),
                self.max_age,
            ),
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
    counters: Arc<Counters>,
    /// One byte more than the largest accepted datagram, so an oversized one shows.
    buf: Box<[u8]>,
    plain: Vec<u8>,
}

#[async_trait]
impl Socket for SecureSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        self.plain.clear();
        msg.serialize(&mut self.plain);
        let Some(packet) = self.sealer.seal(&self.plain) else {
            if self.counters.bump(Counter::SendTooBig) == 1 {
                warn!(%to, len = self.plain.len(),
                    "gossip message too big for one datagram even compressed; not sent");
            }
            return Ok(());
        };
        self.socket.send_to(to, packet).await?;
        self.counters.bump(Counter::Sent);
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (from, packet) = self.socket.recv(&mut self.buf).await?;
            if let Some(msg) = receive(&mut self.opener, &self.counters, from, &packet) {
                return Ok((from, msg));
            }
        }
    }
}

/// What a node makes of one datagram it received: opened with the cluster keys
/// ([`Opener::open`]), then read as exactly one chitchat message. `None`: dropped and
/// counted. Everything a datagram's sender controls passes through here before chitchat
/// sees it (the fuzz target `gossip_datagram` drives it).
pub(crate) fn receive(
    opener: &mut Opener,
    counters: &Counters,
    from: SocketAddr,
    packet: &[u8],
) -> Option<ChitchatMessage> {
    let plain = opener.open(from, packet)?;
    let mut cursor = plain.as_slice();
    let why = match ChitchatMessage::deserialize(&mut cursor) {
        Ok(msg) if cursor.is_empty() => match admit(&plain) {
            Ok(()) => {
                counters.bump(Counter::Received);
                return Some(msg);
            }
            Err(why) => why,
        },
        Ok(_) => "bytes after the message".to_string(),
        Err(e) => e.to_string(),
    };
    // Sealed with a cluster key, yet not a chitchat message, or one chitchat cannot
    // handle safely (`admit`).
    if counters.bump(Counter::BadMessage) == 1 {
        warn!(%from, len = plain.len(), reason = %why,
            "authentic gossip packet is not an acceptable chitchat message; dropped \
             (further ones are only counted)");
    }
    None
}
