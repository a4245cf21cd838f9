//! Sealing gossip packets with the cluster key, for one receiver: XChaCha20-Poly1305
//! over every chitchat message, a key ID so the managers can rotate keys, the sender's
//! node ID, the receiver's node ID bound in, and a replay window per sender.
//!
//! ```text
//!  0      4        8                  24        32          40  41
//!  +------+--------+------------------+---------+-----------+---+-----------+---------------------+-----+
//!  | SHG2 | key ID | sender instance  |   seq   | sent (ms) | n | sender ID | chitchat envelope   | tag |
//!  +------+--------+------------------+---------+-----------+---+-----------+---------------------+-----+
//!  header (41 + n bytes): authenticated                                         encrypted           16 bytes
//!  associated data: header, cluster ID, receiver's node ID (each ID with a 16-bit length)
//!  nonce (24 bytes) = sender instance || seq
//! ```
//!
//! The receiver's node ID is not on the wire, only in the associated data: a packet
//! sealed for node A fails authentication at node B, so one captured on its way to A
//! cannot be replayed to B (whose replay window has never seen it). The sender's ID
//! says which member a reply to that address is sealed for; it is as trustworthy as
//! the cluster key (a key holder may name any member), so nothing else rests on it:
//! what a message says about a node must be signed by that node ([`crate::screen`]).
//!
//! The sender instance is 16 random bytes drawn when a node's socket opens, the sequence
//! starts at 1 and grows by one per packet, so a nonce is never reused under a key. A
//! receiver keeps, per sender instance, the highest sequence seen and a 128-packet
//! window below it (reordered UDP still passes; a second copy does not). A packet whose
//! send time is further than `max_age` from the receiver's clock is dropped, which bounds
//! how long a window must be remembered: one idle for twice `max_age` can be forgotten,
//! since every packet it could still stop is too old anyway.
//!
//! Packets of the version before (`SHG1`, `SHGz`: no receiver bound, records unsigned)
//! are dropped and counted as `old_version`.
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use chacha20poly1305::{
    aead::{AeadInOut, KeyInit},
    Key, Tag, XChaCha20Poly1305, XNonce,
};
use tracing::warn;

use crate::{keys::Keyring, Counter, Counters};

pub(crate) const MAGIC: [u8; 4] = *b"SHG2";
/// The same layout, the body zstd-compressed before sealing: used only when the plain
/// message would not fit in one datagram (chitchat 0.11's digest is uncompressed).
pub(crate) const MAGIC_ZSTD: [u8; 4] = *b"SHZ2";
/// The previous version's magics.
const OLD_MAGICS: [[u8; 4]; 2] = [*b"SHG1", *b"SHGz"];
/// Most bytes a compressed body may expand to.
const MAX_PLAIN: usize = 1 << 20;
/// The header before the sender's node ID.
pub(crate) const HEADER_FIXED: usize = 41;
/// Longest node ID a header carries.
pub(crate) const MAX_NODE_ID: usize = 128;
pub(crate) const TAG_LEN: usize = 16;
/// The largest datagram shoal sends or accepts: the largest UDP payload over IPv4.
pub const MAX_PACKET: usize = 65_507;
/// Per-sender replay window, in packets.
const WINDOW: u64 = 128;
/// How many sender instances are remembered before idle ones are pruned.
const MAX_SENDERS: usize = 16_384;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&Key::from(*key))
}

fn aad(header: &[u8], cluster_id: &str, receiver: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 4 + cluster_id.len() + receiver.len());
    aad.extend_from_slice(header);
    for id in [cluster_id, receiver] {
        aad.extend_from_slice(&(id.len().min(u16::MAX as usize) as u16).to_be_bytes());
        aad.extend_from_slice(id.as_bytes());
    }
    aad
}

/// The sending half: one per socket.
pub(crate) struct Sealer {
    cluster_id: String,
    node_id: String,
    keyring: Arc<RwLock<Keyring>>,
    instance: [u8; 16],
    seq: u64,
}

impl Sealer {
    /// `node_id`: this node's, at most [`MAX_NODE_ID`] bytes.
    pub(crate) fn new(
        cluster_id: String,
        node_id: String,
        keyring: Arc<RwLock<Keyring>>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !node_id.is_empty() && node_id.len() <= MAX_NODE_ID,
            "a gossip node ID is 1 to {MAX_NODE_ID} bytes"
        );
        let mut instance = [0u8; 16];
        getrandom::fill(&mut instance)
            .map_err(|e| anyhow::anyhow!("no randomness for the gossip sender ID: {e}"))?;
        Ok(Sealer {
            cluster_id,
            node_id,
            keyring,
            instance,
            seq: 0,
        })
    }

    /// Seals `plain` into a datagram for node `receiver`, compressed if it would not fit
    /// otherwise. `None` if even that exceeds [`MAX_PACKET`].
    pub(crate) fn seal(&mut self, plain: &[u8], receiver: &str) -> Option<Vec<u8>> {
        let header_len = HEADER_FIXED + self.node_id.len();
        let compressed;
        let (magic, plain) = if header_len + plain.len() + TAG_LEN > MAX_PACKET {
            compressed = zstd::bulk::compress(plain, 1).ok()?;
            (MAGIC_ZSTD, compressed.as_slice())
        } else {
            (MAGIC, plain)
        };
        self.seal_as(magic, plain, receiver)
    }

    /// Seals `plain` as is under `magic` ([`MAGIC`], or [`MAGIC_ZSTD`] for a compressed
    /// body) for node `receiver`. `None` if it exceeds [`MAX_PACKET`].
    pub(crate) fn seal_as(
        &mut self,
        magic: [u8; 4],
        plain: &[u8],
        receiver: &str,
    ) -> Option<Vec<u8>> {
        let header_len = HEADER_FIXED + self.node_id.len();
        if header_len + plain.len() + TAG_LEN > MAX_PACKET {
            return None;
        }
        let (key_id, key) = {
            let ring = self.keyring.read().unwrap_or_else(|e| e.into_inner());
            let primary = ring.primary();
            (primary.id, primary.secret)
        };
        self.seq += 1;
        let mut out = Vec::with_capacity(header_len + plain.len() + TAG_LEN);
        out.extend_from_slice(&magic);
        out.extend_from_slice(&key_id.to_be_bytes());
        out.extend_from_slice(&self.instance);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&now_ms().to_be_bytes());
        out.push(self.node_id.len() as u8);
        out.extend_from_slice(self.node_id.as_bytes());
        let nonce = XNonce::try_from(&out[8..32]).expect("24-byte nonce");
        let aad = aad(&out[..header_len], &self.cluster_id, receiver);
        out.extend_from_slice(plain);
        let tag = cipher(&key)
            .encrypt_inout_detached(&nonce, &aad, out[header_len..].as_mut().into())
            .ok()?;
        out.extend_from_slice(tag.as_slice());
        Some(out)
    }
}

struct Window {
    top: u64,
    bits: u128,
    last_seen: Instant,
}

impl Window {
    /// Records `seq`; false if it was seen already or is below the window.
    fn accept(&mut self, seq: u64) -> bool {
        if seq > self.top {
            let shift = seq - self.top;
            self.bits = if shift >= WINDOW {
                1
            } else {
                (self.bits << shift) | 1
            };
            self.top = seq;
            true
        } else {
            let back = self.top - seq;
            if back >= WINDOW {
                return false;
            }
            let bit = 1u128 << back;
            if self.bits & bit != 0 {
                return false;
            }
            self.bits |= bit;
            true
        }
    }
}

/// The receiving half: checks, opens and de-duplicates datagrams. Shared by every socket
/// of a node (there is one).
pub(crate) struct Opener {
    cluster_id: String,
    /// This node's ID: only packets sealed for it open.
    node_id: String,
    keyring: Arc<RwLock<Keyring>>,
    counters: Arc<Counters>,
    max_age: Duration,
    windows: HashMap<[u8; 16], Window>,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drop {
    Oversized,
    Malformed,
    OldVersion,
    UnknownKey,
    AuthFailed,
    Stale,
    Replayed,
    TooManySenders,
}

impl Drop {
    fn counter(self) -> Counter {
        match self {
            Drop::Oversized => Counter::Oversized,
            Drop::Malformed => Counter::Malformed,
            Drop::OldVersion => Counter::OldVersion,
            Drop::UnknownKey => Counter::UnknownKey,
            Drop::AuthFailed => Counter::AuthFailed,
            Drop::Stale => Counter::Stale,
            Drop::Replayed => Counter::Replayed,
            Drop::TooManySenders => Counter::TooManySenders,
        }
    }
}

impl Opener {
    pub(crate) fn new(
        cluster_id: String,
        node_id: String,
        keyring: Arc<RwLock<Keyring>>,
        counters: Arc<Counters>,
        max_age: Duration,
    ) -> Self {
        Opener {
            cluster_id,
            node_id,
            keyring,
            counters,
            max_age,
            windows: HashMap::new(),
        }
    }

    /// Opens one datagram: the plaintext and the sender's node ID, or `None` (dropped and
    /// counted; the first drop of each kind is logged).
    pub(crate) fn open(&mut self, from: std::net::SocketAddr, packet: &[u8]) -> Option<Opened> {
        match self.try_open(packet) {
            Ok(plain) => Some(plain),
            Err(why) => {
                if self.counters.bump(why.counter()) == 1 {
                    warn!(%from, len = packet.len(), reason = ?why,
                        "gossip packet dropped (further drops of this kind are only counted)");
                }
                None
            }
        }
    }

    fn try_open(&mut self, packet: &[u8]) -> Result<Opened, Drop> {
        if packet.len() > MAX_PACKET {
            return Err(Drop::Oversized);
        }
        if packet.len() >= 4 && OLD_MAGICS.iter().any(|m| packet[..4] == *m) {
            return Err(Drop::OldVersion);
        }
        if packet.len() < HEADER_FIXED + TAG_LEN {
            return Err(Drop::Malformed);
        }
        let compressed = match packet[..4].try_into().expect("4 bytes") {
            MAGIC => false,
            MAGIC_ZSTD => true,
            _ => return Err(Drop::Malformed),
        };
        let header_len = HEADER_FIXED + packet[HEADER_FIXED - 1] as usize;
        if packet.len() < header_len + TAG_LEN {
            return Err(Drop::Malformed);
        }
        let sender =
            std::str::from_utf8(&packet[HEADER_FIXED..header_len]).map_err(|_| Drop::Malformed)?;
        let key_id = u32::from_be_bytes(packet[4..8].try_into().expect("4 bytes"));
        let key = {
            let ring = self.keyring.read().unwrap_or_else(|e| e.into_inner());
            ring.get(key_id).map(|k| k.secret)
        }
        .ok_or(Drop::UnknownKey)?;
        let nonce = XNonce::try_from(&packet[8..32]).expect("24-byte nonce");
        let aad = aad(&packet[..header_len], &self.cluster_id, &self.node_id);
        let body_end = packet.len() - TAG_LEN;
        let tag = Tag::try_from(&packet[body_end..]).expect("16-byte tag");
        let mut plain = packet[header_len..body_end].to_vec();
        cipher(&key)
            .decrypt_inout_detached(&nonce, &aad, plain.as_mut_slice().into(), &tag)
            .map_err(|_| Drop::AuthFailed)?;
        // Authentic from here on: the header fields can be trusted.
        let sent_ms = u64::from_be_bytes(packet[32..40].try_into().expect("8 bytes"));
        let age = now_ms().abs_diff(sent_ms);
        if age > self.max_age.as_millis() as u64 {
            return Err(Drop::Stale);
        }
        let instance: [u8; 16] = packet[8..24].try_into().expect("16 bytes");
        let seq = u64::from_be_bytes(packet[24..32].try_into().expect("8 bytes"));
        let now = Instant::now();
        if !self.windows.contains_key(&instance) && self.windows.len() >= MAX_SENDERS {
            let forget = self.max_age * 2;
            self.windows
                .retain(|_, w| now.duration_since(w.last_seen) < forget);
            if self.windows.len() >= MAX_SENDERS {
                return Err(Drop::TooManySenders);
            }
        }
        let window = self.windows.entry(instance).or_insert(Window {
            top: 0,
            bits: 0,
            last_seen: now,
        });
        if !window.accept(seq) {
            return Err(Drop::Replayed);
        }
        window.last_seen = now;
        let plain = if compressed {
            // Authentic but not well formed: counted as malformed.
            zstd::bulk::decompress(&plain, MAX_PLAIN).map_err(|_| Drop::Malformed)?
        } else {
            plain
        };
        Ok(Opened {
            plain,
            sender: sender.to_string(),
        })
    }
}

/// An opened datagram.
pub(crate) struct Opened {
    pub plain: Vec<u8>,
    /// The sender's node ID, as its header says.
    pub sender: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ClusterKey;

    fn ring(id: u32, byte: u8) -> Arc<RwLock<Keyring>> {
        Arc::new(RwLock::new(Keyring::new(ClusterKey::new(id, [byte; 32]))))
    }

    /// The opener of node `me` in cluster c1.
    fn opener_for(me: &str, keyring: Arc<RwLock<Keyring>>) -> (Opener, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        (
            Opener::new(
                "c1".into(),
                me.into(),
                keyring,
                counters.clone(),
                Duration::from_secs(60),
            ),
            counters,
        )
    }

    fn opener(keyring: Arc<RwLock<Keyring>>) -> (Opener, Arc<Counters>) {
        opener_for("n1", keyring)
    }

    fn sealer(cluster: &str, keyring: Arc<RwLock<Keyring>>) -> Sealer {
        Sealer::new(cluster.into(), "n2".into(), keyring).unwrap()
    }

    fn plain(o: Option<Opened>) -> Vec<u8> {
        o.expect("opens").plain
    }

    const FROM: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        1,
    ));

    #[test]
    fn round_trip_and_replay() {
        let keys = ring(1, 7);
        let mut sealer = sealer("c1", keys.clone());
        let (mut opener, counters) = opener(keys);
        let a = sealer.seal(b"hello", "n1").unwrap();
        let b = sealer.seal(b"world", "n1").unwrap();
        // Reordered delivery passes, a second copy does not.
        let opened = opener.open(FROM, &b).unwrap();
        assert_eq!(
            (opened.plain.as_slice(), opened.sender.as_str()),
            (&b"world"[..], "n2")
        );
        assert_eq!(plain(opener.open(FROM, &a)), b"hello");
        assert!(opener.open(FROM, &a).is_none());
        assert!(opener.open(FROM, &b).is_none());
        assert_eq!(counters.snapshot().replayed, 2);
    }

    #[test]
    fn a_packet_sealed_for_one_node_opens_at_no_other() {
        let keys = ring(1, 7);
        let mut sealer = sealer("c1", keys.clone());
        let (mut n1, c1) = opener_for("n1", keys.clone());
        let (mut n3, c3) = opener_for("n3", keys);
        let for_n1 = sealer.seal(b"for n1", "n1").unwrap();
        // Replayed to n3 (which has never seen this sender): refused there...
        assert!(n3.open(FROM, &for_n1).is_none());
        assert_eq!(c3.snapshot().auth_failed, 1);
        // ...and n3 remembered nothing of it: its own packets from that sender pass.
        assert_eq!(
            plain(n3.open(FROM, &sealer.seal(b"for n3", "n3").unwrap())),
            b"for n3"
        );
        // n1 still opens it.
        assert_eq!(plain(n1.open(FROM, &for_n1)), b"for n1");
        assert_eq!(c1.snapshot().auth_failed, 0);
        // The sender's name is authenticated: rewriting it breaks the packet.
        let mut renamed = sealer.seal(b"x", "n1").unwrap();
        renamed[HEADER_FIXED + 1] = b'3';
        assert!(n1.open(FROM, &renamed).is_none());
        assert_eq!(c1.snapshot().auth_failed, 1);
        // A sender ID longer than the packet.
        let mut long = sealer.seal(b"x", "n1").unwrap();
        long[HEADER_FIXED - 1] = 255;
        long.truncate(HEADER_FIXED + 40);
        assert!(n1.open(FROM, &long).is_none());
        assert_eq!(c1.snapshot().malformed, 1);
        assert!(Sealer::new("c1".into(), String::new(), ring(1, 7)).is_err());
        assert!(Sealer::new("c1".into(), "x".repeat(MAX_NODE_ID + 1), ring(1, 7)).is_err());
    }

    #[test]
    fn window_rejects_far_behind() {
        let mut w = Window {
            top: 0,
            bits: 0,
            last_seen: Instant::now(),
        };
        assert!(w.accept(1));
        assert!(w.accept(500));
        assert!(!w.accept(1), "below the window");
        assert!(w.accept(499));
        assert!(!w.accept(499));
        assert!(w.accept(500 - 127));
        assert!(!w.accept(500 - 128));
    }

    #[test]
    fn wrong_cluster_wrong_key_tamper_garbage_old_version() {
        let keys = ring(1, 7);
        let (mut opener, counters) = opener(keys.clone());
        // Same key, other cluster ID: the AAD differs, so authentication fails.
        let mut other_cluster = sealer("c2", keys);
        assert!(opener
            .open(FROM, &other_cluster.seal(b"x", "n1").unwrap())
            .is_none());
        // Same key ID, other secret.
        let mut outsider = sealer("c1", ring(1, 8));
        assert!(opener
            .open(FROM, &outsider.seal(b"x", "n1").unwrap())
            .is_none());
        // Unknown key ID.
        let mut retired = sealer("c1", ring(9, 7));
        assert!(opener
            .open(FROM, &retired.seal(b"x", "n1").unwrap())
            .is_none());
        // One flipped bit in the body, then in the header.
        let mut good = sealer("c1", ring(1, 7));
        let header = HEADER_FIXED + 2;
        let mut p = good.seal(b"payload", "n1").unwrap();
        p[header] ^= 1;
        assert!(opener.open(FROM, &p).is_none());
        let mut p = good.seal(b"payload", "n1").unwrap();
        p[30] ^= 1;
        assert!(opener.open(FROM, &p).is_none());
        // Garbage, truncated, oversized.
        assert!(opener
            .open(FROM, b"not a gossip packet at all, really not")
            .is_none());
        let p = good.seal(b"payload", "n1").unwrap();
        assert!(opener.open(FROM, &p[..header + 3]).is_none());
        assert!(opener.open(FROM, &vec![0u8; MAX_PACKET + 1]).is_none());
        // The previous version's packets, whatever follows the magic.
        let mut old = b"SHG1".to_vec();
        old.extend_from_slice(&[0u8; 80]);
        assert!(opener.open(FROM, &old).is_none());
        assert!(opener.open(FROM, b"SHGz").is_none());
        let s = counters.snapshot();
        assert_eq!(s.auth_failed, 4);
        assert_eq!(s.unknown_key, 1);
        assert_eq!(s.malformed, 2);
        assert_eq!(s.oversized, 1);
        assert_eq!(s.old_version, 2);
        // Nothing was remembered for packets that failed: the good sender still passes.
        assert_eq!(
            plain(opener.open(FROM, &good.seal(b"ok", "n1").unwrap())),
            b"ok"
        );
    }

    #[test]
    fn stale_packets_are_dropped() {
        let keys = ring(1, 7);
        let mut sealer = sealer("c1", keys.clone());
        let counters = Arc::new(Counters::default());
        let mut opener = Opener::new(
            "c1".into(),
            "n1".into(),
            keys,
            counters.clone(),
            Duration::ZERO,
        );
        let p = sealer.seal(b"x", "n1").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(opener.open(FROM, &p).is_none());
        assert_eq!(counters.snapshot().stale, 1);
    }

    #[test]
    fn too_big_is_compressed_or_refused() {
        let keys = ring(1, 7);
        let mut sealer = sealer("c1", keys.clone());
        let (mut opener, _) = opener(keys);
        let fits = vec![0u8; MAX_PACKET - (HEADER_FIXED + 2) - TAG_LEN];
        let p = sealer.seal(&fits, "n1").unwrap();
        assert_eq!(p[..4], MAGIC);
        assert_eq!(p.len(), MAX_PACKET);
        assert_eq!(plain(opener.open(FROM, &p)), fits);
        // Larger but compressible: sealed compressed, opened whole.
        let big = vec![7u8; 3 * MAX_PACKET];
        let p = sealer.seal(&big, "n1").unwrap();
        assert_eq!(p[..4], MAGIC_ZSTD);
        assert!(p.len() <= MAX_PACKET);
        assert_eq!(plain(opener.open(FROM, &p)), big);
        // Larger and incompressible: refused.
        let mut noise = vec![0u8; MAX_PACKET];
        getrandom::fill(&mut noise).unwrap();
        assert!(sealer.seal(&noise, "n1").is_none());
    }
}
