//! Cluster keys for gossip. The managers hand keys out (over mutual TLS, outside this
//! crate) and rotate them; a node seals with the primary key and opens with any key in
//! its ring. Rotation without a gap: first add the new key everywhere, then make it
//! primary everywhere, then drop the old one (Swarm rotates every 12 h).
use std::fmt;

use crate::GossipError;

/// Most keys a ring holds: the primary and two others (the previous and the next).
pub const MAX_KEYS: usize = 3;

/// One 256-bit key and the ID that names it on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey {
    pub id: u32,
    pub secret: [u8; 32],
}

impl ClusterKey {
    pub fn new(id: u32, secret: [u8; 32]) -> Self {
        ClusterKey { id, secret }
    }

    /// A fresh random key.
    pub fn generate(id: u32) -> Result<Self, GossipError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| GossipError::Random(e.to_string()))?;
        Ok(ClusterKey { id, secret })
    }

    /// Parses `<id>:<64 hex digits>`, the form the key takes in files and flags.
    pub fn parse(text: &str) -> Result<Self, GossipError> {
        let bad = |why: &str| GossipError::BadKey(why.to_string());
        let (id, hex) = text
            .trim()
            .split_once(':')
            .ok_or_else(|| bad("expected <id>:<64 hex digits>"))?;
        let id: u32 = id.parse().map_err(|_| bad("the key ID is not a number"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the secret must be 64 hex digits"));
        }
        let mut secret = [0u8; 32];
        for (i, byte) in secret.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex checked");
        }
        Ok(ClusterKey { id, secret })
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "ClusterKey {{ id: {}, secret: <redacted> }}", self.id)
    }
}

/// The keys a node accepts, one of which (the primary) it seals with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyring {
    primary: ClusterKey,
    others: Vec<ClusterKey>,
}

impl Keyring {
    pub fn new(primary: ClusterKey) -> Self {
        Keyring {
            primary,
            others: Vec::new(),
        }
    }

    /// A ring with a primary and other accepted keys. Refused when IDs repeat or there
    /// are more than [`MAX_KEYS`] keys.
    pub fn with_others(primary: ClusterKey, others: Vec<ClusterKey>) -> Result<Self, GossipError> {
        if 1 + others.len() > MAX_KEYS {
            return Err(GossipError::BadKey(format!(
                "a key ring holds at most {MAX_KEYS} keys, got {}",
                1 + others.len()
            )));
        }
        let mut ids: Vec<u32> = others.iter().map(|k| k.id).collect();
        ids.push(primary.id);
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(GossipError::BadKey("two keys share one ID".into()));
        }
        Ok(Keyring { primary, others })
    }

    /// The usual rotation step: `next` becomes primary, the old primary stays accepted,
    /// anything older is retired.
    pub fn rotated(&self, next: ClusterKey) -> Result<Self, GossipError> {
        Keyring::with_others(next, vec![self.primary.clone()])
    }

    pub fn primary(&self) -> &ClusterKey {
        &self.primary
    }

    pub fn get(&self, id: u32) -> Option<&ClusterKey> {
        std::iter::once(&self.primary)
            .chain(&self.others)
            .find(|k| k.id == id)
    }

    pub fn ids(&self) -> Vec<u32> {
        std::iter::once(&self.primary)
            .chain(&self.others)
            .map(|k| k.id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_redact() {
        let k = ClusterKey::parse(&format!("7:{}", "ab".repeat(32))).unwrap();
        assert_eq!(k.id, 7);
        assert_eq!(k.secret, [0xab; 32]);
        assert!(!format!("{k:?}").contains("ab"));
        for bad in ["", "7", "x:00", "7:zz", &format!("7:{}", "a".repeat(63))] {
            assert!(ClusterKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ring_rules() {
        let a = ClusterKey::new(1, [1; 32]);
        let b = ClusterKey::new(2, [2; 32]);
        let c = ClusterKey::new(3, [3; 32]);
        let ring = Keyring::new(a.clone());
        let r2 = ring.rotated(b.clone()).unwrap();
        assert_eq!(r2.primary().id, 2);
        assert_eq!(r2.ids(), vec![2, 1]);
        let r3 = r2.rotated(c.clone()).unwrap();
        assert_eq!(r3.ids(), vec![3, 2], "key 1 is retired");
        assert!(Keyring::with_others(a.clone(), vec![a.clone()]).is_err());
        assert!(Keyring::with_others(a, vec![b, c, ClusterKey::new(4, [4; 32])]).is_err());
    }
}
