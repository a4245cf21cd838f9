//! Who may speak for which node: each node's own signing key, and the set of nodes a
//! receiver trusts.
//!
//! A node makes an Ed25519 key ([`LocalIdentity`]) each time its gossip starts, kept only
//! in memory, and signs its record with it ([`crate::record`]). The managers learn the
//! public half over mutual TLS (a node can register only its own) and hand every node
//! the list of current members' keys, each with the one gossip generation and address
//! it signs for: the [`TrustSet`]. A record, a node update or a heartbeat is taken only
//! for a node that list names, in exactly that generation at exactly that address, and
//! a record only with a signature by that key. A node removed from the cluster leaves
//! the list, and with it every table.
use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use chitchat::ChitchatId;
use ring::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519},
};

use crate::{record::Claim, GossipError};

/// Bytes of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// A node's public signing key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        PublicKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// 64 lowercase hex digits, the form the store keeps.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads 64 hex digits.
    pub fn parse_hex(text: &str) -> Result<Self, GossipError> {
        let text = text.trim();
        if text.len() != 2 * PUBLIC_KEY_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(GossipError::BadKey(format!(
                "a node's gossip key is {} hex digits, got {:?}",
                2 * PUBLIC_KEY_LEN,
                text
            )));
        }
        let mut out = [0u8; PUBLIC_KEY_LEN];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex checked");
        }
        Ok(PublicKey(out))
    }

    /// Whether `signature` is this key's over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// This node's signing key for one run of its gossip, and the generation it signs for.
/// Never written anywhere: a restarted node makes a new one (and a new generation), so
/// a stolen disk holds no key that speaks for the node.
pub struct LocalIdentity {
    pair: Ed25519KeyPair,
    public: PublicKey,
    generation: u64,
}

impl LocalIdentity {
    /// A fresh key, for the generation "now" (microseconds since the epoch: a restarted
    /// node's is higher, as chitchat wants).
    pub fn generate() -> Result<Self, GossipError> {
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1)
            .max(1);
        Self::generate_for(generation)
    }

    /// A fresh key for `generation` (nonzero).
    pub fn generate_for(generation: u64) -> Result<Self, GossipError> {
        if generation == 0 {
            return Err(GossipError::BadConfig("gossip generation 0".into()));
        }
        let random = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&random)
            .map_err(|_| GossipError::Random("no randomness for a gossip key".into()))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|e| GossipError::BadKey(format!("a fresh gossip key does not read: {e}")))?;
        Ok(Self::of(pair, generation))
    }

    fn of(pair: Ed25519KeyPair, generation: u64) -> Self {
        let public = PublicKey(
            pair.public_key()
                .as_ref()
                .try_into()
                .expect("an Ed25519 public key is 32 bytes"),
        );
        LocalIdentity {
            pair,
            public,
            generation,
        }
    }

    /// The key made from `seed`: the same every time, for the fuzz harness's seed inputs
    /// (which must hold records that still verify when read back). A node never uses it.
    pub(crate) fn from_seed(seed: &[u8; 32], generation: u64) -> Result<Self, GossipError> {
        if generation == 0 {
            return Err(GossipError::BadConfig("gossip generation 0".into()));
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| GossipError::BadKey(format!("a gossip key seed does not read: {e}")))?;
        Ok(Self::of(pair, generation))
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.pair
            .sign(message)
            .as_ref()
            .try_into()
            .expect("an Ed25519 signature is 64 bytes")
    }
}

impl fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private half is never printed.
        write!(
            f,
            "LocalIdentity {{ public: {}, generation: {} }}",
            self.public, self.generation
        )
    }
}

/// What the managers say about one member: the key its records are signed with, and the
/// gossip generation and address that key speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustedNode {
    pub generation: u64,
    pub addr: SocketAddr,
    pub key: PublicKey,
}

/// Every member a node takes gossip about, by node ID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustSet {
    nodes: BTreeMap<String, TrustedNode>,
}

impl TrustSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces one member.
    pub fn insert(&mut self, node_id: impl Into<String>, node: TrustedNode) {
        self.nodes.insert(node_id.into(), node);
    }

    pub fn remove(&mut self, node_id: &str) -> Option<TrustedNode> {
        self.nodes.remove(node_id)
    }

    pub fn get(&self, node_id: &str) -> Option<&TrustedNode> {
        self.nodes.get(node_id)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &TrustedNode)> {
        self.nodes.iter().map(|(id, n)| (id.as_str(), n))
    }

    /// The member `id` names, if `id` is exactly its trusted generation and address.
    pub(crate) fn trusts(&self, id: &ChitchatId) -> Option<&TrustedNode> {
        self.trusts_claim(id.into())
    }

    /// [`TrustSet::trusts`] for a claim read off the wire.
    pub(crate) fn trusts_claim(&self, claim: Claim<'_>) -> Option<&TrustedNode> {
        self.nodes
            .get(claim.node_id)
            .filter(|n| n.generation == claim.generation && n.addr == claim.addr)
    }

    /// Whether some member gossips from `addr`.
    pub(crate) fn lists_addr(&self, addr: SocketAddr) -> bool {
        self.nodes.values().any(|n| n.addr == addr)
    }

    /// The one member whose gossip address is `addr` (none when two claim it).
    pub(crate) fn node_at(&self, addr: SocketAddr) -> Option<&str> {
        let mut found = None;
        for (id, n) in &self.nodes {
            if n.addr == addr {
                if found.is_some() {
                    return None;
                }
                found = Some(id.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sign_verify_and_read_back() {
        let me = LocalIdentity::generate().unwrap();
        let other = LocalIdentity::generate().unwrap();
        assert!(me.generation() > 0);
        let sig = me.sign(b"record");
        assert!(me.public_key().verifies(b"record", &sig));
        assert!(!me.public_key().verifies(b"recorD", &sig));
        assert!(!other.public_key().verifies(b"record", &sig));
        assert!(!me.public_key().verifies(b"record", &sig[..63]));
        let hex = me.public_key().to_hex();
        assert_eq!(PublicKey::parse_hex(&hex).unwrap(), me.public_key());
        for bad in ["", "ab", &hex[1..], &format!("{}zz", &hex[2..])] {
            assert!(PublicKey::parse_hex(bad).is_err(), "{bad:?}");
        }
        assert!(LocalIdentity::generate_for(0).is_err());
        assert!(!format!("{me:?}").contains("pair"));
    }

    #[test]
    fn trust_is_exact_and_addresses_unambiguous() {
        let key = LocalIdentity::generate().unwrap().public_key();
        let a: SocketAddr = "10.0.0.1:7946".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:7946".parse().unwrap();
        let mut t = TrustSet::new();
        t.insert(
            "n1",
            TrustedNode {
                generation: 5,
                addr: a,
                key,
            },
        );
        assert!(t.trusts(&ChitchatId::new("n1", 5, a)).is_some());
        assert!(
            t.trusts(&ChitchatId::new("n1", 6, a)).is_none(),
            "generation"
        );
        assert!(t.trusts(&ChitchatId::new("n1", 5, b)).is_none(), "address");
        assert!(t.trusts(&ChitchatId::new("n2", 5, a)).is_none(), "node");
        assert_eq!(t.node_at(a), Some("n1"));
        assert_eq!(t.node_at(b), None);
        t.insert(
            "n2",
            TrustedNode {
                generation: 1,
                addr: a,
                key,
            },
        );
        assert_eq!(t.node_at(a), None, "two nodes claim one address");
        assert!(t.remove("n2").is_some());
        assert_eq!(t.node_at(a), Some("n1"));
    }
}
