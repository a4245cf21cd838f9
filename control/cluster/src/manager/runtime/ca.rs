//! Rotating the root CA (`swarm ca --rotate`), with no connection cut on the way.
//!
//! ```text
//!  leader: StartCaRotation{new root + key, cross-signed by the old root}   (store)
//!  every manager: signs with the new root from then on (Signers, following the store)
//!  every node's heartbeat answer names (root, next); a node whose certificate or trust
//!    differ renews: a certificate of the new root, trust {old, new}; its next heartbeat
//!    reports it (SetNodeTls)
//!  leader, once every member reported a certificate of the new root:
//!    FinishCaRotation{new join tokens}: the new root is the root
//!  every node renews once more: trust {new} alone; the old root counts for nothing
//! ```
//! The rotation's state is in the store, so a new leader carries it on where the old one
//! left it; a manager that was down catches up as it applies the log. What the managers
//! sign with is a pure function of the store ([`signers_for`]); when a node must renew is
//! one of its identity and the answer ([`ca_change_due`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::handlers::{propose, read_linear};
use super::{now_ms, other, Core, Runtime};
use crate::manager::persist;
use crate::manager::wire::{Reply, Response, WireError};
use crate::manager::ClusterError;
use crate::pki::{CaCertificate, CaDigest, ClusterCa, NextRoot, NodeIdentity};
use crate::registry_auth::{RegistryAuthKey, RegistryKeyring};
use crate::store::{CaProgress, CaRotation, ClusterState, Command, NodeTls, Resealed, StoredCa};
use crate::token::JoinTokens;

/// The CAs a manager signs with and hands out.
pub(crate) struct Signers {
    /// The cluster's root, with its key.
    pub root: ClusterCa,
    /// During a rotation: the next root, with its key and the root's word for it.
    pub next: Option<(ClusterCa, NextRoot)>,
}

impl Signers {
    pub(crate) fn new(root: ClusterCa) -> Signers {
        Signers { root, next: None }
    }

    /// The CA that signs certificates now: the next root during a rotation.
    pub(crate) fn signing(&self) -> &ClusterCa {
        self.next.as_ref().map_or(&self.root, |(ca, _)| ca)
    }

    /// What heartbeat answers name.
    pub(crate) fn target(&self) -> CaTarget {
        CaTarget {
            root: self.root.digest(),
            next: self.next.as_ref().map(|(ca, _)| ca.digest()),
        }
    }
}

/// The roots a node is to trust, as a heartbeat answer names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CaTarget {
    pub root: CaDigest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<CaDigest>,
}

/// What the managers sign with as `state` says, `current` being what this manager signed
/// with so far (the root made at `swarm init` stays the root until a rotation finished).
pub(crate) fn signers_for(state: &ClusterState, current: &ClusterCa) -> Result<Signers, String> {
    let root = match &state.root_ca {
        Some(stored)
            if CaCertificate::from_pem(&stored.cert_pem)
                .map(|c| c.digest())
                .ok()
                == Some(current.digest()) =>
        {
            current.clone()
        }
        Some(stored) => ClusterCa::from_pem(&stored.cert_pem, &stored.key_pem)
            .map_err(|e| format!("the root CA in the store: {e}"))?,
        None => current.clone(),
    };
    let next = match &state.ca_rotation {
        Some(rotation) => {
            let from = CaCertificate::from_pem(&rotation.from_pem)
                .map_err(|e| format!("the rotation's root: {e}"))?;
            if from.digest() != root.digest() {
                return Err(format!(
                    "the rotation under way starts from root {}, this manager's is {}",
                    from.digest(),
                    root.digest()
                ));
            }
            let ca = ClusterCa::from_pem(&rotation.to.cert_pem, &rotation.to.key_pem)
                .map_err(|e| format!("the rotation's new root: {e}"))?;
            let next = NextRoot::from_pem(
                root.certificate(),
                &rotation.to.cert_pem,
                &rotation.cross_signed_pem,
            )
            .map_err(|e| format!("the rotation's new root: {e}"))?;
            Some((ca, next))
        }
        None => None,
    };
    Ok(Signers { root, next })
}

/// What a node's certificate and trust are, for its heartbeat.
pub(crate) fn tls_of(identity: &NodeIdentity) -> NodeTls {
    let (trust_root, trust_next) = identity.trust().digests();
    NodeTls {
        cert_issuer: identity.issuer().digest(),
        trust_root,
        trust_next,
    }
}

/// Whether a node holding `identity` must renew to follow `target`: its certificate is
/// not the signing root's (the next one during a rotation), or it trusts other roots.
pub(crate) fn ca_change_due(identity: &NodeIdentity, target: &CaTarget) -> bool {
    let tls = tls_of(identity);
    tls.cert_issuer != target.next.unwrap_or(target.root)
        || tls.trust_root != target.root
        || tls.trust_next != target.next
}

/// Where a rotation stands, and the root it started from (what `swarm ca` prints).
#[derive(Debug, Clone)]
pub struct CaStatus {
    /// The cluster's root now (the old one until the rotation finished).
    pub root: CaCertificate,
    pub progress: CaProgress,
}

/// On every manager, for as long as its core runs: follows the store's root CA and
/// rotation (what it signs with, the CA key it keeps), and, while it leads, finishes a
/// rotation once every member follows it.
pub(super) async fn ca_loop(rt: Arc<Runtime>, core: Arc<Core>) {
    let mut versions = core.store.subscribe();
    let tick = rt.timings.heartbeat_interval;
    loop {
        if let Err(e) = rt.follow_ca(&core) {
            tracing::warn!(error = %e, "this manager does not follow the store's root CA; will retry");
        }
        if core.store.is_leader() {
            if let Err(e) = rt.finish_ca_rotation(&core).await {
                tracing::warn!(error = %e, "could not finish the root CA rotation; will retry");
            }
        }
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

impl Runtime {
    /// Takes what the store says the managers sign with; a new root's key is kept in
    /// this manager's files (sealed with its data key), so it resumes with it.
    fn follow_ca(&self, core: &Core) -> Result<(), ClusterError> {
        let current = core.signers();
        let wanted = core
            .store
            .read_stale_with(|state| signers_for(state, &current.root))
            .map_err(ClusterError::Store)?;
        if wanted.target() == current.target() {
            return Ok(());
        }
        if wanted.root.digest() != current.root.digest() {
            persist::save_ca(&self.dir, &wanted.root, &self.require_data_key()?)?;
            tracing::info!(root = %wanted.root.digest(), "the swarm's root CA changed: this manager signs with it");
        } else if let Some((next, _)) = &wanted.next {
            tracing::info!(next = %next.digest(), "root CA rotation: this manager signs with the next root");
        }
        core.set_signers(wanted);
        Ok(())
    }

    /// On the leader: once every member holds a certificate of the rotation's new root,
    /// makes it the root, with join tokens that name it (the old ones no longer fit).
    async fn finish_ca_rotation(&self, core: &Core) -> Result<(), ClusterError> {
        let Some(to) = core.store.read_stale_with(|s| s.ca_rotation_converged()) else {
            return Ok(());
        };
        let tokens = serde_json::to_value(JoinTokens::generate(to))
            .map_err(|e| ClusterError::Protocol(e.to_string()))?;
        let started = core
            .store
            .read_stale_with(|s| s.ca_rotation.as_ref().map(|r| r.started_ms));
        propose(core, Command::FinishCaRotation { to, tokens })
            .await
            .map_err(ClusterError::from)?;
        let took = started.map(|s| now_ms().saturating_sub(s));
        tracing::info!(root = %to, took_ms = ?took, "root CA rotation: every node holds a certificate of the new root; it is the root now");
        Ok(())
    }

    /// On the leader: starts a rotation to a new root (refused while one runs).
    pub(super) async fn do_rotate_ca(&self, core: &Core) -> Reply {
        let state = read_linear(core).await?;
        if state.ca_rotation.is_some() {
            return Err(other(
                "a root CA rotation is already in progress (`shoal swarm ca` shows how far it is)",
            ));
        }
        let signers = core.signers();
        if let Some(stored) = &state.root_ca {
            let digest = CaCertificate::from_pem(&stored.cert_pem).map(|c| c.digest());
            if digest.ok() != Some(signers.root.digest()) {
                return Err(WireError::Busy {
                    detail: "the leader has not taken the last root CA yet; retry".into(),
                });
            }
        }
        let (next, cross) = signers.root.successor().map_err(other)?;
        let cross_signed_pem = NextRoot::new(
            signers.root.certificate(),
            next.certificate().clone(),
            cross.to_vec(),
        )
        .map_err(other)?
        .cross_signed_pem();
        // The credentials' keys leave the CA key behind: a new one seals from now on.
        let before = RegistryKeyring::new(&state.registry_keys, &signers.root);
        let previous = state
            .registry_keys
            .first()
            .cloned()
            .unwrap_or_else(|| RegistryAuthKey::stored_of(&signers.root));
        let registry_keys = vec![RegistryAuthKey::generate().map_err(other)?, previous];
        let after = RegistryKeyring::new(&registry_keys, &signers.root);
        let mut resealed = Vec::new();
        for service in state.services.values() {
            let Some(sealed) = &service.registry_auth else {
                continue;
            };
            match before
                .open(&service.id, sealed)
                .and_then(|creds| after.seal(&service.id, &creds))
            {
                Ok(again) => resealed.push(Resealed {
                    service_id: service.id.clone(),
                    before: sealed.clone(),
                    after: again,
                }),
                Err(e) => {
                    tracing::warn!(service = %service.spec.name, error = %e, "registry credentials not sealed again")
                }
            }
        }
        let desired = next.digest();
        propose(
            core,
            Command::StartCaRotation {
                rotation: Box::new(CaRotation {
                    from_pem: signers.root.cert_pem(),
                    to: StoredCa {
                        cert_pem: next.cert_pem(),
                        key_pem: next.key_pem_secret(),
                    },
                    cross_signed_pem,
                    started_ms: now_ms(),
                }),
                registry_keys,
                resealed,
            },
        )
        .await?;
        tracing::info!(from = %signers.root.digest(), to = %desired, "root CA rotation started");
        Ok(Response::CaRotating { desired })
    }

    /// Where the rotation stands, from the leader's state.
    pub(crate) async fn ca_status(self: &Arc<Self>) -> Result<CaStatus, ClusterError> {
        let core = self.require_manager()?;
        let state = self.read_state().await?;
        let root = match &state.root_ca {
            Some(stored) => CaCertificate::from_pem(&stored.cert_pem)?,
            None => core.signers().root.certificate().clone(),
        };
        let progress = state.ca_progress(root.digest());
        Ok(CaStatus { root, progress })
    }

    /// Starts a rotation; the root it moves to.
    pub(crate) async fn rotate_ca(self: &Arc<Self>) -> Result<CaDigest, ClusterError> {
        self.require_manager()?;
        match self
            .call_leader(crate::manager::wire::Request::RotateCa)
            .await?
        {
            Response::CaRotating { desired } => Ok(desired),
            _ => Err(ClusterError::Protocol(
                "unexpected answer to a root CA rotation".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
