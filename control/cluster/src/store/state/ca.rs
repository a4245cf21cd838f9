//! The cluster's root CA in the store: the root a finished rotation made current, a
//! rotation under way (`swarm ca --rotate`), and what each node's heartbeats say of its
//! certificate and trust.
//!
//! Before the first rotation the store holds no root: every manager keeps the one made
//! at `swarm init` in its own files (sealed with its data key). A rotation puts the new
//! root, with its key, in the store: it is replicated to every manager (each seals its
//! copy of the log and snapshots with its data key, as it does the unlock key), so any
//! manager that leads can sign with it and finish the rotation. Nodes never see it: it
//! is not part of a node's view.

use serde::{Deserialize, Serialize};

use super::ClusterState;
use crate::pki::CaDigest;
use crate::registry_auth::SealedCredentials;

/// A root CA with its key, as PEM. Managers only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for StoredCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digest = crate::pki::CaCertificate::from_pem(&self.cert_pem)
            .map(|c| c.digest().to_string())
            .unwrap_or_else(|_| "unreadable".into());
        write!(f, "StoredCa({digest}, key: <redacted>)")
    }
}

/// A rotation of the root CA under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotation {
    /// The root being replaced (its certificate).
    pub from_pem: String,
    /// The new root, with its key: what the managers sign with from now on.
    pub to: StoredCa,
    /// The new root's name and key certified by the old root (see `pki::NextRoot`).
    pub cross_signed_pem: String,
    /// When it started (ms since the epoch, chosen by the proposer).
    pub started_ms: u64,
}

/// A node's certificate and trust, as its heartbeats last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTls {
    /// The root that signed the node's certificate.
    pub cert_issuer: CaDigest,
    /// The root the node trusts.
    pub trust_root: CaDigest,
    /// The next root it trusts too, during a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_next: Option<CaDigest>,
}

/// Registry credentials sealed again under new keys, in one rotation's command: replaced
/// only where the service still holds `before`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resealed {
    pub service_id: String,
    pub before: SealedCredentials,
    pub after: SealedCredentials,
}

/// How far a rotation has come, as `swarm ca --rotate` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaProgress {
    /// The root the rotation moves to (the current root when none runs).
    pub desired: Option<CaDigest>,
    /// Whether a rotation runs (the managers still sign with the new root only as the
    /// next one).
    pub in_progress: bool,
    /// The current members.
    pub nodes: usize,
    /// Members whose certificate the desired root signed.
    pub certs_rotated: usize,
    /// Members that trust the desired root, and it alone.
    pub roots_rotated: usize,
    /// Members not there yet: (node ID, hostname, whether it is Down).
    pub pending: Vec<(String, String, bool)>,
}

impl ClusterState {
    /// The nodes that must follow a rotation: every node listed and not revoked.
    fn ca_members(&self) -> impl Iterator<Item = &super::Node> {
        self.nodes
            .values()
            .filter(|n| !self.removed_nodes.contains_key(&n.id))
    }

    /// The root a rotation under way moves to, once every member reported a
    /// certificate that root signed: time to make it the root.
    pub fn ca_rotation_converged(&self) -> Option<CaDigest> {
        let to = self.ca_rotation_target()?;
        self.ca_members()
            .all(|n| n.tls.as_deref().is_some_and(|t| t.cert_issuer == to))
            .then_some(to)
    }

    /// The digest of the root a rotation under way moves to.
    pub fn ca_rotation_target(&self) -> Option<CaDigest> {
        let rotation = self.ca_rotation.as_ref()?;
        crate::pki::CaCertificate::from_pem(&rotation.to.cert_pem)
            .ok()
            .map(|c| c.digest())
    }

    /// How far the rotation to `desired` (the rotation's target, else the current root
    /// `root`) has come: certificates first, then trust (a node drops the old root once
    /// the rotation is over).
    pub fn ca_progress(&self, root: CaDigest) -> CaProgress {
        let target = self.ca_rotation_target();
        let desired = target.unwrap_or(root);
        let mut p = CaProgress {
            desired: Some(desired),
            in_progress: self.ca_rotation.is_some(),
            ..CaProgress::default()
        };
        for n in self.ca_members() {
            p.nodes += 1;
            let cert = n.tls.as_deref().is_some_and(|t| t.cert_issuer == desired);
            let trust = n
                .tls
                .as_deref()
                .is_some_and(|t| t.trust_root == desired && t.trust_next.is_none());
            p.certs_rotated += usize::from(cert);
            p.roots_rotated += usize::from(trust);
            if !(cert && trust) {
                p.pending.push((
                    n.id.clone(),
                    n.hostname.clone(),
                    n.status == super::NodeStatus::Down,
                ));
            }
        }
        p
    }
}

/// Why a rotation's command does not fit the state (the text of the refusal).
pub(super) fn check_start(
    state: &ClusterState,
    rotation: &CaRotation,
    registry_keys: &[super::RegistryKey],
) -> Result<(), String> {
    use crate::pki::{CaCertificate, ClusterCa, NextRoot};
    if state.ca_rotation.is_some() {
        return Err("a root CA rotation is already in progress".into());
    }
    let from = CaCertificate::from_pem(&rotation.from_pem).map_err(|e| format!("the root: {e}"))?;
    if let Some(root) = &state.root_ca {
        let current =
            CaCertificate::from_pem(&root.cert_pem).map_err(|e| format!("the stored root: {e}"))?;
        if current.digest() != from.digest() {
            return Err(format!(
                "the rotation starts from root {}, the cluster's is {}",
                from.digest(),
                current.digest()
            ));
        }
    }
    ClusterCa::from_pem(&rotation.to.cert_pem, &rotation.to.key_pem)
        .map_err(|e| format!("the new root: {e}"))?;
    NextRoot::from_pem(&from, &rotation.to.cert_pem, &rotation.cross_signed_pem)
        .map_err(|e| e.to_string())?;
    if registry_keys.is_empty() || registry_keys.len() > 2 {
        return Err(format!(
            "1 or 2 registry credential keys, got {}",
            registry_keys.len()
        ));
    }
    if registry_keys
        .iter()
        .any(|k| crate::registry_auth::RegistryAuthKey::from_stored(k).is_err())
    {
        return Err("a registry credential key is not 32 bytes in base64".into());
    }
    Ok(())
}
