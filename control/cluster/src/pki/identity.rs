//! A node's own identity (key + certificate), CSRs, renewal, and reading the identity of a
//! peer from the certificate it presented.

use std::fmt;
use std::time::SystemTime;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use serde::{Deserialize, Serialize};

use super::ca::{CaCertificate, NodeCertificate};
use super::cert::{node_cert_fields, parse_x509, pem_decode, pem_encode, random_bytes};
use super::trust::{CaTrust, NextRoot};
use super::{PkiError, Role, CA_COMMON_NAME, MANAGER_SERVER_NAME};
use crate::token::base36;

/// When a certificate valid from `not_before` to `not_after` should be renewed: once less
/// than a third of its lifetime is left (day 60 of a 90-day certificate). Swarm renews at a
/// random point between 50% and 80% of the lifetime; a fixed two thirds leaves a third of
/// the lifetime (30 days by default) for retries while a manager is unreachable.
pub fn renew_after(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_after - lifetime / 3
}

/// `now` is at or past [`renew_after`] (which includes an expired certificate).
pub fn renewal_due(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    now >= renew_after(not_before, not_after)
}

/// A new random node ID: 128 random bits as 25 lowercase base-36 characters, like Swarm's
/// IDs. Always contains a letter, so it is a valid DNS name (an all-digit name is not).
pub fn new_node_id() -> String {
    loop {
        let id = base36::encode_padded(&random_bytes::<16>(), 25);
        if id.bytes().any(|b| b.is_ascii_lowercase()) {
            return id;
        }
    }
}

/// A node ID goes into the certificate's CN and as a DNS SAN, and is the server name peers
/// verify: 1 to 63 characters of `[a-z0-9-]`, not starting or ending with `-`, at least
/// one letter, not one of the reserved names.
pub(crate) fn validate_node_id(id: &str) -> Result<(), PkiError> {
    let bad = |reason| {
        Err(PkiError::InvalidNodeId {
            id: id.to_string(),
            reason,
        })
    };
    if id.is_empty() || id.len() > 63 {
        return bad("must be 1 to 63 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("may only contain a-z, 0-9 and -");
    }
    if id.starts_with('-') || id.ends_with('-') {
        return bad("must not start or end with -");
    }
    if !id.bytes().any(|b| b.is_ascii_lowercase()) {
        return bad("must contain a letter");
    }
    if id == MANAGER_SERVER_NAME || id == CA_COMMON_NAME {
        return bad("is a reserved name");
    }
    Ok(())
}

/// A node's private key (ECDSA P-256), made on the node; it never leaves it. `Debug` does
/// not show it.
pub struct NodeKey {
    key: KeyPair,
}

impl NodeKey {
    pub fn generate() -> Result<Self, PkiError> {
        Ok(NodeKey {
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
        })
    }

    /// A CSR for this key with `CN=<node_id>`. The CN is only a request: the CA decides
    /// the node ID it writes into the certificate.
    pub fn csr(&self, node_id: &str) -> Result<NodeCsr, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        params.distinguished_name = dn;
        let csr = params.serialize_request(&self.key)?;
        Ok(NodeCsr::from_der(csr.der().to_vec()))
    }

    /// Reads a PKCS#8 `PRIVATE KEY` PEM block.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let der = pem_decode(pem, "PRIVATE KEY", "the node key")?;
        let key =
            KeyPair::try_from(der.as_slice()).map_err(|e| PkiError::InvalidKey(e.to_string()))?;
        Ok(NodeKey { key })
    }

    /// The key as PKCS#8 PEM. Secret: for the node's own data directory only.
    pub fn to_pem_secret(&self) -> String {
        self.key.serialize_pem()
    }

    pub(crate) fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    fn public_key_raw(&self) -> &[u8] {
        self.key.public_key_raw()
    }
}

impl Clone for NodeKey {
    fn clone(&self) -> Self {
        NodeKey {
            key: KeyPair::try_from(self.key.serialized_der())
                .expect("a key that was read once reads again"),
        }
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey([redacted])")
    }
}

/// A certificate signing request: the node's public key, signed with its private key.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeCsr {
    der: CertificateSigningRequestDer<'static>,
}

impl NodeCsr {
    /// Wraps DER bytes. They are parsed and their signature checked by
    /// [`super::ClusterCa::issue`].
    pub fn from_der(der: impl Into<Vec<u8>>) -> Self {
        NodeCsr {
            der: CertificateSigningRequestDer::from(der.into()),
        }
    }

    /// Reads a `CERTIFICATE REQUEST` PEM block.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        Ok(Self::from_der(pem_decode(
            pem,
            "CERTIFICATE REQUEST",
            "the certificate signing request",
        )?))
    }

    pub fn der(&self) -> &CertificateSigningRequestDer<'static> {
        &self.der
    }

    pub fn pem(&self) -> String {
        pem_encode("CERTIFICATE REQUEST", self.der.as_ref())
    }
}

impl fmt::Debug for NodeCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeCsr({} bytes)", self.der.as_ref().len())
    }
}

impl Serialize for NodeCsr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.pem())
    }
}

impl<'de> Deserialize<'de> for NodeCsr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pem = String::deserialize(deserializer)?;
        NodeCsr::from_pem(&pem).map_err(serde::de::Error::custom)
    }
}

/// A node's identity: its key, its certificate from the cluster CA, and the roots it
/// trusts ([`CaTrust`]: the cluster's root, and the next one during a rotation).
/// `Debug` does not show the key; the serialized form (`{"key_pem", "cert_pem",
/// "ca_pem"}`, plus `next_ca_pem` and `cross_signed_pem` during a rotation) does, and
/// belongs in the node's data directory with owner-only permissions.
#[derive(Clone)]
pub struct NodeIdentity {
    key: NodeKey,
    cert: NodeCertificate,
    trust: CaTrust,
    /// The certificate was signed by the next root (during a rotation).
    from_next: bool,
}

impl NodeIdentity {
    /// Step one of joining or renewing, on the node: a new key and a CSR for it. Send the
    /// CSR (never the key) to a manager, which answers with a certificate; then
    /// [`NodeIdentity::new`].
    pub fn generate_key_and_csr(node_id: &str) -> Result<(NodeKey, NodeCsr), PkiError> {
        let key = NodeKey::generate()?;
        let csr = key.csr(node_id)?;
        Ok((key, csr))
    }

    /// Puts a key, its certificate and the CA together, checking that the certificate is
    /// for this key and was signed by this CA. Validity dates are not checked here (an
    /// expired identity still loads, so the node can tell it must rejoin); see
    /// [`NodeIdentity::needs_renewal`] and [`NodeIdentity::is_expired`].
    pub fn new(key: NodeKey, cert: NodeCertificate, ca: CaCertificate) -> Result<Self, PkiError> {
        Self::with_trust(key, cert, CaTrust::new(ca))
    }

    /// [`NodeIdentity::new`] with the roots of a rotation: the certificate must be signed
    /// by one of them.
    pub fn with_trust(
        key: NodeKey,
        cert: NodeCertificate,
        trust: CaTrust,
    ) -> Result<Self, PkiError> {
        let from_next = {
            let parsed = parse_x509(cert.der())?;
            if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(PkiError::KeyMismatch("node"));
            }
            match verify_issued_by(&parsed, trust.root()) {
                Ok(()) => false,
                Err(e) => match trust.next() {
                    Some(next) if verify_issued_by(&parsed, next.cert()).is_ok() => true,
                    _ => return Err(e),
                },
            }
        };
        if cert.cluster_id() != trust.root().cluster_id() {
            return Err(PkiError::NotIssuedByCa(format!(
                "certificate is for cluster {:?}, the CA is cluster {:?}",
                cert.cluster_id(),
                trust.root().cluster_id()
            )));
        }
        Ok(NodeIdentity {
            key,
            cert,
            trust,
            from_next,
        })
    }

    /// Reads an identity back from its three PEM blocks; see [`NodeIdentity::new`].
    pub fn from_pem(key_pem: &str, cert_pem: &str, ca_pem: &str) -> Result<Self, PkiError> {
        Self::new(
            NodeKey::from_pem(key_pem)?,
            NodeCertificate::from_pem(cert_pem)?,
            CaCertificate::from_pem(ca_pem)?,
        )
    }

    /// [`NodeIdentity::from_pem`] during a rotation: `next` is the next root's PEM and
    /// its cross-signed certificate's (`None`: no rotation).
    pub fn from_pem_rotating(
        key_pem: &str,
        cert_pem: &str,
        ca_pem: &str,
        next: Option<(&str, &str)>,
    ) -> Result<Self, PkiError> {
        let root = CaCertificate::from_pem(ca_pem)?;
        let trust = match next {
            Some((cert, cross)) => {
                let next = NextRoot::from_pem(&root, cert, cross)?;
                CaTrust::rotating(root, next)?
            }
            None => CaTrust::new(root),
        };
        Self::with_trust(
            NodeKey::from_pem(key_pem)?,
            NodeCertificate::from_pem(cert_pem)?,
            trust,
        )
    }

    pub fn node_id(&self) -> &str {
        self.cert.node_id()
    }

    pub fn role(&self) -> Role {
        self.cert.role()
    }

    pub fn cluster_id(&self) -> &str {
        self.cert.cluster_id()
    }

    pub fn not_before(&self) -> SystemTime {
        self.cert.not_before()
    }

    pub fn not_after(&self) -> SystemTime {
        self.cert.not_after()
    }

    pub fn certificate(&self) -> &NodeCertificate {
        &self.cert
    }

    /// The cluster's root CA, as this node trusts it (see [`NodeIdentity::trust`]).
    pub fn ca(&self) -> &CaCertificate {
        self.trust.root()
    }

    /// Every root this node trusts (two during a rotation).
    pub fn trust(&self) -> &CaTrust {
        &self.trust
    }

    /// The root that signed this node's certificate.
    pub fn issuer(&self) -> &CaCertificate {
        match (self.from_next, self.trust.next()) {
            (true, Some(next)) => next.cert(),
            _ => self.trust.root(),
        }
    }

    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    /// When this certificate should be renewed; see [`renew_after`].
    pub fn renew_after(&self) -> SystemTime {
        renew_after(self.not_before(), self.not_after())
    }

    /// Less than a third of the certificate's lifetime is left at `now` (or it expired).
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        renewal_due(self.not_before(), self.not_after(), now)
    }

    /// Past `notAfter`: peers refuse it; the node must join again.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now > self.not_after()
    }

    /// What peers see of this node.
    pub fn peer_identity(&self) -> PeerIdentity {
        PeerIdentity {
            node_id: self.node_id().to_string(),
            role: self.role(),
            cluster_id: self.cluster_id().to_string(),
            not_before: self.not_before(),
            not_after: self.not_after(),
        }
    }

    /// The chain a node presents: its certificate; the next root's cross-signed
    /// certificate when that root signed it (a peer that trusts only the current root
    /// reaches it through that one); then the cluster's root (so a joining node that pins
    /// the root by the token's digest finds it in the chain).
    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        let mut chain = vec![self.cert.der().clone()];
        if let (true, Some(next)) = (self.from_next, self.trust.next()) {
            chain.push(next.cross_signed().clone());
        }
        chain.push(self.trust.root().der().clone());
        chain
    }
}

pub(super) fn verify_issued_by(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    ca: &CaCertificate,
) -> Result<(), PkiError> {
    let ca_parsed = parse_x509(ca.der())?;
    if cert.issuer().as_raw() != ca_parsed.subject().as_raw() {
        return Err(PkiError::NotIssuedByCa(
            "its issuer is not the CA's subject".into(),
        ));
    }
    cert.verify_signature(Some(ca_parsed.public_key()))
        .map_err(|_| PkiError::NotIssuedByCa("the CA's signature does not verify".into()))
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id())
            .field("role", &self.role())
            .field("cluster_id", &self.cluster_id())
            .field("not_after", &self.not_after())
            .field("key", &"[redacted]")
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct NodeIdentityPem {
    key_pem: String,
    cert_pem: String,
    ca_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cross_signed_pem: Option<String>,
}

impl Serialize for NodeIdentity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let next = self.trust.next();
        NodeIdentityPem {
            key_pem: self.key.to_pem_secret(),
            cert_pem: self.cert.pem(),
            ca_pem: self.trust.root().pem(),
            next_ca_pem: next.map(|n| n.cert().pem()),
            cross_signed_pem: next.map(NextRoot::cross_signed_pem),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for NodeIdentity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pem = NodeIdentityPem::deserialize(deserializer)?;
        let next = match (&pem.next_ca_pem, &pem.cross_signed_pem) {
            (Some(cert), Some(cross)) => Some((cert.as_str(), cross.as_str())),
            (None, None) => None,
            _ => {
                return Err(serde::de::Error::custom(
                    "a next root CA without its cross-signed certificate, or the reverse",
                ))
            }
        };
        NodeIdentity::from_pem_rotating(&pem.key_pem, &pem.cert_pem, &pem.ca_pem, next)
            .map_err(serde::de::Error::custom)
    }
}

/// Who is on the other end of a mutual-TLS connection, read from the certificate it
/// presented. Only meaningful after the handshake verified that certificate against the
/// cluster CA (the configs from [`super::server_config`] and [`super::client_config`] do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    node_id: String,
    role: Role,
    cluster_id: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl PeerIdentity {
    /// Reads node ID, role and cluster ID from a node certificate.
    pub fn from_certificate(der: &CertificateDer<'_>) -> Result<Self, PkiError> {
        let fields = node_cert_fields(&parse_x509(der)?)?;
        Ok(PeerIdentity {
            node_id: fields.node_id,
            role: fields.role,
            cluster_id: fields.cluster_id,
            not_before: fields.not_before,
            not_after: fields.not_after,
        })
    }

    /// From what a rustls connection reports (`peer_certificates()`): the first
    /// certificate is the peer's own. None or empty: [`PkiError::NoPeerCertificate`] (a
    /// joining node on the join listener).
    pub fn from_peer_certificates(certs: Option<&[CertificateDer<'_>]>) -> Result<Self, PkiError> {
        match certs.and_then(|c| c.first()) {
            Some(cert) => Self::from_certificate(cert),
            None => Err(PkiError::NoPeerCertificate),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// `Ok` if this peer may make a call that needs `needed` (see [`Role::allows`]): a
    /// worker calling a manager-only API gets [`PkiError::NotAuthorized`].
    pub fn authorize(&self, needed: Role) -> Result<(), PkiError> {
        if self.role.allows(needed) {
            Ok(())
        } else {
            Err(PkiError::NotAuthorized {
                node_id: self.node_id.clone(),
                role: self.role,
                needed,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::{ClusterCa, IssueOptions};

    fn enroll(ca: &ClusterCa, node_id: &str, role: Role, opts: &IssueOptions) -> NodeIdentity {
        let (key, csr) = NodeIdentity::generate_key_and_csr(node_id).unwrap();
        let cert = ca.issue(&csr, node_id, role, opts).unwrap();
        NodeIdentity::new(key, cert, ca.certificate().clone()).unwrap()
    }

    #[test]
    fn renewal_is_due_when_a_third_of_the_lifetime_is_left() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let end = start + Duration::from_secs(90 * 24 * 3600);
        let at = renew_after(start, end);
        assert_eq!(at, start + Duration::from_secs(60 * 24 * 3600));
        assert!(!renewal_due(start, end, at - Duration::from_secs(1)));
        assert!(!renewal_due(start, end, at - Duration::from_nanos(1)));
        assert!(renewal_due(start, end, at));
        assert!(renewal_due(start, end, end + Duration::from_secs(1)));
        // A degenerate certificate (ends before it starts) is always due.
        assert!(renewal_due(end, start, start));
    }

    #[test]
    fn identity_knows_its_role_id_dates_and_when_to_renew() {
        let ca = ClusterCa::new("cluster-x").unwrap();
        let now = SystemTime::now();
        let opts = IssueOptions {
            validity: Duration::from_secs(5 * 60),
            backdate: Duration::from_secs(60),
            now: Some(now),
            ..IssueOptions::default()
        };
        let id = enroll(&ca, "worker1", Role::Worker, &opts);
        assert_eq!(id.node_id(), "worker1");
        assert_eq!(id.role(), Role::Worker);
        assert_eq!(id.cluster_id(), "cluster-x");
        // Lifetime 6 minutes (1 backdated): renew at 4 minutes after notBefore.
        assert_eq!(
            id.not_after().duration_since(id.not_before()).unwrap(),
            Duration::from_secs(360)
        );
        assert_eq!(id.renew_after(), id.not_before() + Duration::from_secs(240));
        assert!(!id.needs_renewal(id.renew_after() - Duration::from_secs(1)));
        assert!(id.needs_renewal(id.renew_after()));
        assert!(!id.is_expired(id.not_after()));
        assert!(id.is_expired(id.not_after() + Duration::from_secs(1)));

        let peer = id.peer_identity();
        assert_eq!(peer.node_id(), "worker1");
        assert_eq!(peer.role(), Role::Worker);
        assert_eq!(
            PeerIdentity::from_certificate(id.certificate().der()).unwrap(),
            peer
        );
    }

    #[test]
    fn identity_refuses_a_certificate_for_another_key_or_from_another_ca() {
        let ca = ClusterCa::new("cluster-x").unwrap();
        let other_ca = ClusterCa::new("cluster-x").unwrap();
        let (key, csr) = NodeIdentity::generate_key_and_csr("node1").unwrap();
        let (other_key, _) = NodeIdentity::generate_key_and_csr("node1").unwrap();
        let cert = ca
            .issue(&csr, "node1", Role::Worker, &IssueOptions::default())
            .unwrap();
        assert!(matches!(
            NodeIdentity::new(other_key, cert.clone(), ca.certificate().clone()),
            Err(PkiError::KeyMismatch("node"))
        ));
        assert!(matches!(
            NodeIdentity::new(key.clone(), cert.clone(), other_ca.certificate().clone()),
            Err(PkiError::NotIssuedByCa(_))
        ));
        let third = ClusterCa::new("cluster-y").unwrap();
        assert!(matches!(
            NodeIdentity::new(key.clone(), cert.clone(), third.certificate().clone()),
            Err(PkiError::NotIssuedByCa(_))
        ));
        NodeIdentity::new(key, cert, ca.certificate().clone()).unwrap();
    }

    #[test]
    fn identity_round_trips_and_debug_hides_the_key() {
        let ca = ClusterCa::new("cluster-x").unwrap();
        let id = enroll(&ca, "manager1", Role::Manager, &IssueOptions::default());
        let json = serde_json::to_value(&id).unwrap();
        let key_pem = json["key_pem"].as_str().unwrap().to_string();
        assert!(key_pem.contains("PRIVATE KEY"));
        let back: NodeIdentity = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.node_id(), "manager1");
        assert_eq!(back.role(), Role::Manager);
        assert_eq!(back.certificate(), id.certificate());
        assert_eq!(back.ca(), id.ca());
        let again = NodeIdentity::from_pem(
            &key_pem,
            json["cert_pem"].as_str().unwrap(),
            json["ca_pem"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(again.certificate(), id.certificate());

        for shown in [format!("{id:?}"), format!("{:?}", id.key())] {
            assert!(shown.contains("[redacted]"), "{shown}");
            for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!shown.contains(line), "{shown}");
            }
        }
        let key = NodeKey::from_pem(&key_pem).unwrap();
        assert_eq!(key.to_pem_secret(), key_pem);
    }

    #[test]
    fn csr_round_trips_and_carries_the_requested_name() {
        let (_, csr) = NodeIdentity::generate_key_and_csr("node1").unwrap();
        let pem = csr.pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let back = NodeCsr::from_pem(&pem).unwrap();
        assert_eq!(back, csr);
        let json = serde_json::to_string(&csr).unwrap();
        assert_eq!(serde_json::from_str::<NodeCsr>(&json).unwrap(), csr);
        let params = rcgen::CertificateSigningRequestParams::from_der(csr.der()).unwrap();
        assert_eq!(
            params.params.distinguished_name.get(&DnType::CommonName),
            Some(&rcgen::DnValue::Utf8String("node1".into()))
        );
        assert!(NodeCsr::from_pem(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        .is_err());
    }

    #[test]
    fn peer_identity_authorizes_by_role() {
        let ca = ClusterCa::new("cluster-x").unwrap();
        let w = enroll(&ca, "worker1", Role::Worker, &IssueOptions::default());
        let m = enroll(&ca, "manager1", Role::Manager, &IssueOptions::default());
        let chain = [
            w.certificate().der().clone(),
            ca.certificate().der().clone(),
        ];
        let peer = PeerIdentity::from_peer_certificates(Some(&chain)).unwrap();
        assert_eq!(peer.node_id(), "worker1");
        assert!(peer.authorize(Role::Worker).is_ok());
        let err = peer.authorize(Role::Manager).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node worker1 is a worker; this needs a manager"
        );
        let peer = PeerIdentity::from_certificate(m.certificate().der()).unwrap();
        assert!(peer.authorize(Role::Manager).is_ok());
        assert!(matches!(
            PeerIdentity::from_peer_certificates(None),
            Err(PkiError::NoPeerCertificate)
        ));
        assert!(matches!(
            PeerIdentity::from_peer_certificates(Some(&[])),
            Err(PkiError::NoPeerCertificate)
        ));
        // The CA certificate is not a node.
        assert!(PeerIdentity::from_certificate(ca.certificate().der()).is_err());
    }

    #[test]
    fn new_node_ids_are_valid_distinct_dns_names() {
        let ids: std::collections::BTreeSet<String> = (0..200).map(|_| new_node_id()).collect();
        assert_eq!(ids.len(), 200);
        for id in &ids {
            assert_eq!(id.len(), 25);
            validate_node_id(id).unwrap();
            rustls::pki_types::ServerName::try_from(id.as_str()).unwrap();
        }
    }
}
