//! Cluster-wide settings: the options chosen at `swarm init`, the gossip keys and the
//! autolock unlock key.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Cluster-wide settings chosen at `swarm init` (`--default-addr-pool`,
/// `--default-addr-pool-mask-length`, `--data-path-port`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    /// The cluster ID (the `O=` of every certificate).
    pub id: String,
    /// Pools overlay subnets are allocated from (`10.0.0.0/8`).
    #[serde(default)]
    pub default_addr_pools: Vec<Ipv4Net>,
    /// The prefix length of each subnet taken from the pools.
    #[serde(default)]
    pub subnet_prefix_len: u8,
    /// The UDP port of VXLAN traffic.
    #[serde(default)]
    pub data_path_port: u16,
}

/// Most gossip keys kept at once (the primary, the previous and one more).
pub const MAX_GOSSIP_KEYS: usize = 3;

/// One gossip cluster key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKey {
    /// Names the key on the wire.
    pub id: u32,
    /// 32 bytes as 64 hex digits.
    pub secret: String,
    /// When the leader made it (ms since the epoch): the rotation timer's reference.
    pub created_ms: u64,
}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(
            f,
            "GossipKey {{ id: {}, created_ms: {}, secret: <redacted> }}",
            self.id, self.created_ms
        )
    }
}

/// The cluster's unlock key while autolock is on: the key-encryption key that wraps every
/// manager's data key (see [`crate::seal`]). Replicated to the managers through the log,
/// which each of them seals with its data key; never part of a node's view.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockKey {
    /// 32 bytes, base64 without padding ([`crate::seal::KeyEncryptionKey::encode`]).
    pub key: String,
}

impl std::fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnlockKey(<redacted>)")
    }
}

/// A key of services' registry credentials (AES-256-GCM), kept in the store once a CA
/// rotation took these keys off the CA key. Managers only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryKey {
    /// 32 bytes, base64 without padding.
    pub key: String,
}

impl std::fmt::Debug for RegistryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryKey(<redacted>)")
    }
}
