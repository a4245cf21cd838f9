//! Node identity: the cluster's root CA, node certificates with the role inside, renewal,
//! and the rustls configurations for mutual TLS between nodes and managers.
//!
//! Swarm's model:
//! - `swarm init` makes a root CA ([`ClusterCa`], ECDSA P-256, 20 years, subject
//!   `CN=shoal-root-ca, O=<cluster ID>`). Its key lives with the managers (in the store);
//!   every node keeps only its certificate ([`CaCertificate`]). Its SHA-256 ([`CaDigest`])
//!   goes into the join tokens, so a joining node can pin the CA before it trusts anything.
//! - A node makes its own key and sends only a CSR ([`NodeIdentity::generate_key_and_csr`]).
//!   The CA ([`ClusterCa::issue`]) verifies the CSR's signature (proof the node holds the
//!   key), takes **only its public key** from it, and writes everything else itself:
//!   `CN=<node ID>, OU=shoal-manager|shoal-worker, O=<cluster ID>`, SAN DNS `<node ID>`,
//!   and for managers SAN DNS `shoal-manager` ([`MANAGER_SERVER_NAME`]) plus the addresses
//!   and names the caller passes in [`IssueOptions`]. Both key usages (TLS server and
//!   client), 90 days by default, `notBefore` backdated 1 hour for small clock skews, and
//!   never past the CA's own expiry. The CA never sees a node's private key.
//! - The role is in the certificate, so a server authorizes a call from the certificate the
//!   peer presented ([`PeerIdentity`]); a worker's certificate cannot reach manager-only APIs.
//! - Renewal: a node renews when less than a third of its certificate's lifetime is left
//!   ([`renewal_due`]): at 60 of 90 days by default.
//! - Rotation (`swarm ca --rotate`): a new root ([`ClusterCa::successor`]) that the
//!   current one cross-signs; nodes trust both ([`CaTrust`]) until every member holds a
//!   certificate from the new one, then only the new one.
//!
//! Server names: every node certificate carries its node ID as a DNS SAN, and manager
//! certificates carry `shoal-manager` as well. A node that dials "any manager" (by
//! address, e.g. `192.168.77.11:2377`) verifies the server name [`MANAGER_SERVER_NAME`]: a
//! certificate from the cluster CA that names `shoal-manager` proves the peer is one of
//! this cluster's managers, whatever address it was reached at (Swarm does the same with
//! `swarm-manager`). A node that wants one particular node verifies that node's ID instead.
//!
//! TLS: 1.3 only, rustls with the `ring` provider. See [`server_config`],
//! [`join_server_config`], [`client_config`] and [`bootstrap_client_config`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

mod ca;
pub(crate) mod cert;
mod identity;
mod tls;
mod trust;

pub use ca::{CaCertificate, ClusterCa, IssueOptions, NodeCertificate};
pub use identity::{
    new_node_id, renew_after, renewal_due, NodeCsr, NodeIdentity, NodeKey, PeerIdentity,
};
pub use tls::{
    bootstrap_client_config, client_config, is_ca_pin_mismatch, join_server_config,
    manager_server_name, pinned_ca_from_chain, server_config, CaPinMismatch,
};
pub use trust::{CaTrust, NextRoot};

/// The CA certificate's common name.
pub const CA_COMMON_NAME: &str = "shoal-root-ca";

/// The DNS name every manager certificate carries (and no worker certificate): the server
/// name a node verifies when it dials any manager.
pub const MANAGER_SERVER_NAME: &str = "shoal-manager";

/// How long a new root CA is valid: 20 years.
pub const CA_VALIDITY: std::time::Duration = std::time::Duration::from_secs(20 * 365 * 24 * 3600);

/// How long a node certificate is valid unless told otherwise: 90 days (Swarm's default).
pub const DEFAULT_NODE_CERT_VALIDITY: std::time::Duration =
    std::time::Duration::from_secs(90 * 24 * 3600);

/// How far back a certificate's `notBefore` is set, so a peer whose clock is a little
/// behind still accepts it (Swarm backdates by 1 hour too).
pub const CERT_BACKDATE: std::time::Duration = std::time::Duration::from_secs(3600);

/// A node's role in the cluster. It is written into the node's certificate (as the
/// organizational unit `shoal-manager` or `shoal-worker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Worker,
    Manager,
}

impl Role {
    /// `"worker"` or `"manager"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }

    /// The organizational unit in a certificate of this role.
    pub fn organizational_unit(self) -> &'static str {
        match self {
            Role::Worker => "shoal-worker",
            Role::Manager => "shoal-manager",
        }
    }

    /// The role a certificate's organizational unit names, if it names one.
    pub fn from_organizational_unit(ou: &str) -> Option<Role> {
        match ou {
            "shoal-worker" => Some(Role::Worker),
            "shoal-manager" => Some(Role::Manager),
            _ => None,
        }
    }

    /// Whether a node of this role may make calls that need `needed`: a manager may do
    /// anything a worker may (managers run tasks too), a worker only worker calls.
    pub fn allows(self, needed: Role) -> bool {
        match needed {
            Role::Worker => true,
            Role::Manager => self == Role::Manager,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "worker" => Ok(Role::Worker),
            "manager" => Ok(Role::Manager),
            other => Err(PkiError::UnknownRole(other.to_string())),
        }
    }
}

/// The SHA-256 digest of the root CA certificate's DER: what join tokens carry to pin the
/// CA. Shown as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaDigest([u8; 32]);

impl CaDigest {
    /// The digest of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> CaDigest {
        CaDigest(Sha256::digest(der).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> CaDigest {
        CaDigest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters, without the `sha256:` prefix.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl fmt::Debug for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaDigest({self})")
    }
}

impl FromStr for CaDigest {
    type Err = PkiError;

    /// `sha256:<64 hex digits>` or the bare hex.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        let bad = || PkiError::InvalidDigest(s.to_string());
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(CaDigest(out))
    }
}

impl Serialize for CaDigest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CaDigest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What went wrong with a certificate, key, CSR or TLS setup. Messages never contain key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    #[error("not a cluster root CA certificate: {0}")]
    NotACa(String),
    #[error("the private key does not match the {0} certificate")]
    KeyMismatch(&'static str),
    #[error("invalid private key: {0}")]
    InvalidKey(String),
    #[error("the certificate was not issued by this cluster's CA: {0}")]
    NotIssuedByCa(String),
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    #[error("invalid node ID {id:?}: {reason}")]
    InvalidNodeId { id: String, reason: &'static str },
    #[error("invalid name for a certificate: {0:?}")]
    InvalidName(String),
    #[error("unknown role {0:?} (expected worker or manager)")]
    UnknownRole(String),
    #[error("invalid CA digest {0:?} (expected sha256:<64 hex digits>)")]
    InvalidDigest(String),
    #[error("invalid validity: {0}")]
    InvalidValidity(String),
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("node {node_id} is a {role}; this needs a {needed}")]
    NotAuthorized {
        node_id: String,
        role: Role,
        needed: Role,
    },
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_strings_round_trip() {
        for role in [Role::Worker, Role::Manager] {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
            assert_eq!(
                Role::from_organizational_unit(role.organizational_unit()),
                Some(role)
            );
            assert_eq!(
                serde_json::to_string(&role).unwrap(),
                format!("\"{}\"", role.as_str())
            );
        }
        assert!("admin".parse::<Role>().is_err());
        assert_eq!(Role::from_organizational_unit("swarm-manager"), None);
    }

    #[test]
    fn role_authorization_is_one_way() {
        assert!(Role::Manager.allows(Role::Manager));
        assert!(Role::Manager.allows(Role::Worker));
        assert!(Role::Worker.allows(Role::Worker));
        assert!(!Role::Worker.allows(Role::Manager));
    }

    #[test]
    fn digest_text_forms() {
        let d = CaDigest::of_der(b"abc");
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.to_string().parse::<CaDigest>().unwrap(), d);
        assert_eq!(d.to_hex().parse::<CaDigest>().unwrap(), d);
        assert!("sha256:abc".parse::<CaDigest>().is_err());
        assert!(
            "sha256:zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
                .parse::<CaDigest>()
                .is_err()
        );
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<CaDigest>(&json).unwrap(), d);
    }
}
