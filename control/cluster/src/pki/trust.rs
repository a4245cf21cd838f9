//! What a node trusts: the cluster's root CA and, while the managers rotate it
//! (`swarm ca --rotate`), the next root with its cross-signed certificate.
//!
//! A rotation must not cut any connection, yet nodes learn of it one by one. Two things
//! make every pair of nodes agree at every moment:
//! - the cross-signed certificate: the next root's own name and key, certified by the
//!   current root. A node whose certificate the next root signed presents it after its
//!   own, so a peer that still trusts only the current root finds a path (node ->
//!   cross-signed -> current root) and accepts it;
//! - trusting both roots while the rotation runs, so a peer that knows of the rotation
//!   needs nothing in the chain.
//!
//! Once every member holds a certificate from the next root, the managers make it the
//! root, and each node drops the old one: from then on a certificate the old root
//! signed (and the old root's key) counts for nothing.

use rustls::pki_types::CertificateDer;

use super::ca::{CaCertificate, NodeCertificate};
use super::cert::{parse_x509, pem_decode, pem_encode};
use super::{CaDigest, PkiError};

/// The root a rotation moves to, and the certificate by which the current root vouches
/// for it.
#[derive(Clone, PartialEq, Eq)]
pub struct NextRoot {
    cert: CaCertificate,
    cross_signed: CertificateDer<'static>,
}

impl NextRoot {
    /// `cert` (the next root, self-signed) with `cross_signed`, which must carry its
    /// name and key and be signed by `root`.
    pub fn new(
        root: &CaCertificate,
        cert: CaCertificate,
        cross_signed: impl Into<Vec<u8>>,
    ) -> Result<Self, PkiError> {
        let cross_signed: Vec<u8> = cross_signed.into();
        {
            let bad = |why: &str| {
                Err(PkiError::NotIssuedByCa(format!(
                    "the cross-signed root: {why}"
                )))
            };
            let cross = parse_x509(&cross_signed)?;
            let next = parse_x509(cert.der())?;
            let current = parse_x509(root.der())?;
            if !cross.is_ca() {
                return bad("not a CA certificate");
            }
            if cross.subject().as_raw() != next.subject().as_raw()
                || cross.public_key().raw != next.public_key().raw
            {
                return bad("it does not name the next root's subject and key");
            }
            if cross.issuer().as_raw() != current.subject().as_raw()
                || cross.verify_signature(Some(current.public_key())).is_err()
            {
                return bad("the current root did not sign it");
            }
            if cert.cluster_id() != root.cluster_id() {
                return bad("the next root is another cluster's");
            }
            if cert.digest() == root.digest() {
                return bad("the next root is the current one");
            }
        }
        Ok(NextRoot {
            cert,
            cross_signed: CertificateDer::from(cross_signed),
        })
    }

    /// [`NextRoot::new`] from the two `CERTIFICATE` PEM blocks.
    pub fn from_pem(
        root: &CaCertificate,
        cert_pem: &str,
        cross_signed_pem: &str,
    ) -> Result<Self, PkiError> {
        let cross = pem_decode(cross_signed_pem, "CERTIFICATE", "the cross-signed root")?;
        Self::new(root, CaCertificate::from_pem(cert_pem)?, cross)
    }

    /// The next root itself.
    pub fn cert(&self) -> &CaCertificate {
        &self.cert
    }

    pub fn cross_signed(&self) -> &CertificateDer<'static> {
        &self.cross_signed
    }

    pub fn cross_signed_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cross_signed)
    }
}

impl std::fmt::Debug for NextRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NextRoot({})", self.cert.digest())
    }
}

/// The roots a node trusts: the cluster's root, and the next one while a rotation runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaTrust {
    root: CaCertificate,
    next: Option<NextRoot>,
}

impl CaTrust {
    /// Only `root` (no rotation).
    pub fn new(root: CaCertificate) -> Self {
        CaTrust { root, next: None }
    }

    /// `root` and, during a rotation, `next` (which `root` vouches for).
    pub fn rotating(root: CaCertificate, next: NextRoot) -> Result<Self, PkiError> {
        // Checked again against this root: a `NextRoot` made for another one is refused.
        let next = NextRoot::new(&root, next.cert, next.cross_signed.to_vec())?;
        Ok(CaTrust {
            root,
            next: Some(next),
        })
    }

    /// The cluster's root: what `swarm ca` prints and join tokens pin.
    pub fn root(&self) -> &CaCertificate {
        &self.root
    }

    /// The root being rotated to, while a rotation runs.
    pub fn next(&self) -> Option<&NextRoot> {
        self.next.as_ref()
    }

    /// Every root trusted: the root, then the next one.
    pub fn roots(&self) -> impl Iterator<Item = &CaCertificate> {
        std::iter::once(&self.root).chain(self.next.as_ref().map(|n| &n.cert))
    }

    /// The digests of the root and the next one.
    pub fn digests(&self) -> (CaDigest, Option<CaDigest>) {
        (
            self.root.digest(),
            self.next.as_ref().map(|n| n.cert.digest()),
        )
    }

    /// The trusted root that signed `cert`, if one did.
    pub fn issuer_of(&self, cert: &NodeCertificate) -> Option<&CaCertificate> {
        let parsed = parse_x509(cert.der()).ok()?;
        self.roots()
            .find(|root| super::identity::verify_issued_by(&parsed, root).is_ok())
    }

    /// Whether a node that trusts `self` may take `offered` from the managers: its root
    /// must be one this node trusts already (the same root, or the next one once the
    /// rotation finished); its next root was vouched for by that root when it was made.
    /// A root this node never trusted is refused, and so is going back to a root it
    /// dropped.
    pub fn accepts(&self, offered: &CaTrust) -> Result<(), PkiError> {
        if self.roots().any(|r| r == offered.root()) {
            return Ok(());
        }
        Err(PkiError::NotIssuedByCa(format!(
            "the managers offered root CA {}, which this node does not trust (it trusts {}); join the swarm again",
            offered.root.digest(),
            self.roots()
                .map(|r| r.digest().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        )))
    }
}

impl From<CaCertificate> for CaTrust {
    fn from(root: CaCertificate) -> Self {
        CaTrust::new(root)
    }
}

impl From<&CaCertificate> for CaTrust {
    fn from(root: &CaCertificate) -> Self {
        CaTrust::new(root.clone())
    }
}

impl From<&CaTrust> for CaTrust {
    fn from(trust: &CaTrust) -> Self {
        trust.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{ClusterCa, IssueOptions, NodeIdentity, Role};

    fn leaf(ca: &ClusterCa, id: &str) -> NodeCertificate {
        let (_, csr) = NodeIdentity::generate_key_and_csr(id).unwrap();
        ca.issue(&csr, id, Role::Worker, &IssueOptions::default())
            .unwrap()
    }

    #[test]
    fn the_current_root_vouches_for_its_successor_and_no_other() {
        let old = ClusterCa::new("c1").unwrap();
        let (new, cross) = old.successor().unwrap();
        assert_eq!(new.cluster_id(), "c1");
        assert_ne!(new.digest(), old.digest());
        let next =
            NextRoot::new(old.certificate(), new.certificate().clone(), cross.to_vec()).unwrap();
        let back = NextRoot::from_pem(old.certificate(), &new.cert_pem(), &next.cross_signed_pem())
            .unwrap();
        assert_eq!(back, next);

        // Another root's cross-signature, or the pair swapped, is refused.
        let stranger = ClusterCa::new("c1").unwrap();
        assert!(NextRoot::new(
            stranger.certificate(),
            new.certificate().clone(),
            cross.to_vec()
        )
        .is_err());
        let (other, other_cross) = stranger.successor().unwrap();
        assert!(NextRoot::new(
            old.certificate(),
            other.certificate().clone(),
            cross.to_vec()
        )
        .is_err());
        assert!(NextRoot::new(
            old.certificate(),
            new.certificate().clone(),
            other_cross.to_vec()
        )
        .is_err());
        // A leaf is not a root's cross-signature.
        assert!(NextRoot::new(
            old.certificate(),
            new.certificate().clone(),
            leaf(&old, "node1").der().to_vec()
        )
        .is_err());
        // Another cluster's root cannot be the next one.
        let elsewhere = ClusterCa::new("c2").unwrap();
        let (_, cross_c2) = elsewhere.successor().unwrap();
        assert!(NextRoot::new(
            old.certificate(),
            elsewhere.certificate().clone(),
            cross_c2.to_vec()
        )
        .is_err());
    }

    #[test]
    fn a_rotating_trust_knows_which_root_signed_a_certificate() {
        let old = ClusterCa::new("c1").unwrap();
        let (new, cross) = old.successor().unwrap();
        let next =
            NextRoot::new(old.certificate(), new.certificate().clone(), cross.to_vec()).unwrap();
        let trust = CaTrust::rotating(old.certificate().clone(), next.clone()).unwrap();
        assert_eq!(trust.roots().count(), 2);
        assert_eq!(trust.digests(), (old.digest(), Some(new.digest())));
        assert_eq!(trust.issuer_of(&leaf(&old, "a1")), Some(old.certificate()));
        assert_eq!(trust.issuer_of(&leaf(&new, "a2")), Some(new.certificate()));
        let stranger = ClusterCa::new("c1").unwrap();
        assert_eq!(trust.issuer_of(&leaf(&stranger, "a3")), None);
        // The next root made for another root does not fit this one.
        assert!(CaTrust::rotating(stranger.certificate().clone(), next).is_err());
    }

    #[test]
    fn a_node_moves_only_to_roots_it_trusts_already() {
        let old = ClusterCa::new("c1").unwrap();
        let (new, cross) = old.successor().unwrap();
        let next =
            NextRoot::new(old.certificate(), new.certificate().clone(), cross.to_vec()).unwrap();
        let before = CaTrust::new(old.certificate().clone());
        let during = CaTrust::rotating(old.certificate().clone(), next).unwrap();
        let after = CaTrust::new(new.certificate().clone());
        // Into the rotation (vouched for by the root it has), and out of it.
        before.accepts(&during).unwrap();
        during.accepts(&after).unwrap();
        during.accepts(&before).unwrap();
        // Not straight to a root it never trusted, nor back to one it dropped.
        assert!(before.accepts(&after).is_err());
        assert!(after.accepts(&before).is_err());
        assert!(after.accepts(&during).is_err());
    }
}
