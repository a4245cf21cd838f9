//! The cluster's root CA and the certificates it issues.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::cert::{
    common_name, from_unix, node_cert_fields, organization, parse_x509, pem_decode, pem_encode,
    random_serial, to_offset, NodeCertFields,
};
use super::identity::{validate_node_id, NodeCsr};
use super::{
    CaDigest, PkiError, Role, CA_COMMON_NAME, CA_VALIDITY, CERT_BACKDATE,
    DEFAULT_NODE_CERT_VALIDITY, MANAGER_SERVER_NAME,
};

/// The root CA certificate alone: what every node trusts. No key.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCertificate {
    der: CertificateDer<'static>,
    digest: CaDigest,
    cluster_id: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl CaCertificate {
    /// Reads a DER certificate and checks that it is a shoal root CA: a self-signed CA
    /// certificate with `CN=shoal-root-ca` and the cluster ID as its organization.
    pub fn from_der(der: impl Into<Vec<u8>>) -> Result<Self, PkiError> {
        let der: Vec<u8> = der.into();
        let (cluster_id, not_before, not_after) = {
            let cert = parse_x509(&der)?;
            if !cert.is_ca() {
                return Err(PkiError::NotACa("basic constraints do not say CA".into()));
            }
            let cn = common_name(cert.subject())?;
            if cn != CA_COMMON_NAME {
                return Err(PkiError::NotACa(format!(
                    "common name is {cn:?}, expected {CA_COMMON_NAME:?}"
                )));
            }
            if cert.subject().as_raw() != cert.issuer().as_raw() {
                return Err(PkiError::NotACa("not self-signed".into()));
            }
            cert.verify_signature(None).map_err(|e| {
                PkiError::NotACa(format!("its self-signature does not verify: {e}"))
            })?;
            let validity = cert.validity();
            (
                organization(cert.subject())?,
                from_unix(validity.not_before.timestamp()),
                from_unix(validity.not_after.timestamp()),
            )
        };
        Ok(CaCertificate {
            digest: CaDigest::of_der(&der),
            der: CertificateDer::from(der),
            cluster_id,
            not_before,
            not_after,
        })
    }

    /// Reads a `CERTIFICATE` PEM block; see [`CaCertificate::from_der`].
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        Self::from_der(pem_decode(pem, "CERTIFICATE", "the CA certificate")?)
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    pub fn pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }

    /// SHA-256 of the DER: what join tokens carry.
    pub fn digest(&self) -> CaDigest {
        self.digest
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
}

impl fmt::Debug for CaCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaCertificate")
            .field("cluster_id", &self.cluster_id)
            .field("digest", &self.digest)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl Serialize for CaCertificate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.pem())
    }
}

impl<'de> Deserialize<'de> for CaCertificate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pem = String::deserialize(deserializer)?;
        CaCertificate::from_pem(&pem).map_err(serde::de::Error::custom)
    }
}

/// How [`ClusterCa::issue`] makes a node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueOptions {
    /// How long the certificate is valid from now. Default [`DEFAULT_NODE_CERT_VALIDITY`]
    /// (90 days). Never past the CA's own expiry.
    pub validity: Duration,
    /// How far before now `notBefore` is set. Default [`CERT_BACKDATE`] (1 hour).
    pub backdate: Duration,
    /// The time to count from instead of the clock (tests; an already-expired certificate).
    pub now: Option<SystemTime>,
    /// Extra DNS names in the certificate (a manager's host names). `shoal-manager` is
    /// reserved: the CA adds it to manager certificates itself.
    pub dns_names: Vec<String>,
    /// IP addresses in the certificate (a manager's advertise and listen addresses).
    pub ip_addresses: Vec<IpAddr>,
}

impl Default for IssueOptions {
    fn default() -> Self {
        IssueOptions {
            validity: DEFAULT_NODE_CERT_VALIDITY,
            backdate: CERT_BACKDATE,
            now: None,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
        }
    }
}

impl IssueOptions {
    /// The defaults with another validity.
    pub fn with_validity(validity: Duration) -> Self {
        IssueOptions {
            validity,
            ..IssueOptions::default()
        }
    }
}

/// A node certificate issued by the cluster CA (the node's key is not in it).
#[derive(Clone, PartialEq, Eq)]
pub struct NodeCertificate {
    der: CertificateDer<'static>,
    fields: NodeCertFields,
}

impl NodeCertificate {
    /// Reads a node certificate: subject `CN=<node ID>, OU=shoal-manager|shoal-worker,
    /// O=<cluster ID>`. It does not check who signed it ([`super::NodeIdentity::new`] does).
    pub fn from_der(der: impl Into<Vec<u8>>) -> Result<Self, PkiError> {
        let der: Vec<u8> = der.into();
        let fields = node_cert_fields(&parse_x509(&der)?)?;
        Ok(NodeCertificate {
            der: CertificateDer::from(der),
            fields,
        })
    }

    /// Reads a `CERTIFICATE` PEM block; see [`NodeCertificate::from_der`].
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        Self::from_der(pem_decode(pem, "CERTIFICATE", "the node certificate")?)
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    pub fn pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }

    pub fn node_id(&self) -> &str {
        &self.fields.node_id
    }

    pub fn role(&self) -> Role {
        self.fields.role
    }

    pub fn cluster_id(&self) -> &str {
        &self.fields.cluster_id
    }

    pub fn not_before(&self) -> SystemTime {
        self.fields.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.fields.not_after
    }
}

impl fmt::Debug for NodeCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCertificate")
            .field("node_id", &self.fields.node_id)
            .field("role", &self.fields.role)
            .field("cluster_id", &self.fields.cluster_id)
            .field("not_after", &self.fields.not_after)
            .finish()
    }
}

impl Serialize for NodeCertificate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.pem())
    }
}

impl<'de> Deserialize<'de> for NodeCertificate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pem = String::deserialize(deserializer)?;
        NodeCertificate::from_pem(&pem).map_err(serde::de::Error::custom)
    }
}

/// The cluster's root CA: its certificate and its private key. Only managers hold it.
///
/// `Debug` shows the cluster ID and digest, never the key. Serialized (for the store) as
/// `{"cert_pem": ..., "key_pem": ...}`: that form contains the key.
pub struct ClusterCa {
    cert: CaCertificate,
    key: KeyPair,
}

impl ClusterCa {
    /// A new root CA for `cluster_id`, valid for [`CA_VALIDITY`] (20 years).
    pub fn new(cluster_id: &str) -> Result<Self, PkiError> {
        Self::with_validity(cluster_id, SystemTime::now(), CA_VALIDITY)
    }

    /// A new root CA valid from `now - 1 hour` to `now + validity`.
    pub fn with_validity(
        cluster_id: &str,
        now: SystemTime,
        validity: Duration,
    ) -> Result<Self, PkiError> {
        validate_cluster_id(cluster_id)?;
        if validity.is_zero() {
            return Err(PkiError::InvalidValidity("zero validity".into()));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = root_params(cluster_id, now, now + validity)?;
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert: CaCertificate::from_der(cert.der().to_vec())?,
            key,
        })
    }

    /// The root that replaces this one in a rotation (`swarm ca --rotate`): a new key,
    /// the same cluster and name, valid for [`CA_VALIDITY`]; and its cross-signed
    /// certificate, the new root's name and key certified by this root (see
    /// [`super::NextRoot`]), so that nodes that trust only this root accept what the new
    /// one signs while the rotation runs. The cross-signed certificate never outlives
    /// this root.
    pub fn successor(&self) -> Result<(ClusterCa, CertificateDer<'static>), PkiError> {
        let now = SystemTime::now();
        let next = ClusterCa::with_validity(self.cluster_id(), now, CA_VALIDITY)?;
        let until = (now + CA_VALIDITY).min(self.cert.not_after());
        let params = root_params(self.cluster_id(), now, until)?;
        let issuer = Issuer::from_ca_cert_der(self.cert.der(), &self.key)?;
        let cross = params.signed_by(&next.key, &issuer)?;
        Ok((next, CertificateDer::from(cross.der().to_vec())))
    }

    /// Reads a CA back from its certificate and its PKCS#8 `PRIVATE KEY` PEM, and checks
    /// that the key belongs to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let cert = CaCertificate::from_pem(cert_pem)?;
        let key_der = pem_decode(key_pem, "PRIVATE KEY", "the CA key")?;
        let key = KeyPair::try_from(key_der.as_slice())
            .map_err(|e| PkiError::InvalidKey(e.to_string()))?;
        let parsed = parse_x509(cert.der())?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::KeyMismatch("CA"));
        }
        Ok(ClusterCa { cert, key })
    }

    /// The CA certificate, to hand to nodes.
    pub fn certificate(&self) -> &CaCertificate {
        &self.cert
    }

    pub fn digest(&self) -> CaDigest {
        self.cert.digest()
    }

    pub fn cluster_id(&self) -> &str {
        self.cert.cluster_id()
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's private key as PKCS#8 PEM. Secret: for the managers' store only.
    pub fn key_pem_secret(&self) -> String {
        self.key.serialize_pem()
    }

    /// The CA's private key (PKCS#8 DER). Secret: only for deriving the managers' own
    /// keys (see [`crate::registry_auth`]).
    pub(crate) fn key_der_secret(&self) -> &[u8] {
        self.key.serialized_der()
    }

    /// Signs a node certificate for the key in `csr`.
    ///
    /// The CSR's signature is checked (the node holds the key) and its public key is
    /// used; nothing else in it is (its subject and any requested names are ignored): the
    /// node ID, role and names come from the caller. The subject is `CN=<node_id>,
    /// OU=shoal-<role>, O=<cluster ID>`; SANs are DNS `<node_id>`, DNS `shoal-manager`
    /// for managers, and `opts`' names and addresses.
    pub fn issue(
        &self,
        csr: &NodeCsr,
        node_id: &str,
        role: Role,
        opts: &IssueOptions,
    ) -> Result<NodeCertificate, PkiError> {
        validate_node_id(node_id)?;
        let request = CertificateSigningRequestParams::from_der(csr.der())
            .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;

        if opts.validity.is_zero() {
            return Err(PkiError::InvalidValidity("zero validity".into()));
        }
        let now = opts.now.unwrap_or_else(SystemTime::now);
        let not_before = now.checked_sub(opts.backdate).unwrap_or(now);
        let not_after = (now + opts.validity).min(self.cert.not_after());
        if not_after <= not_before {
            return Err(PkiError::InvalidValidity(
                "the certificate would end before it starts (is the CA expired?)".into(),
            ));
        }

        let mut params = CertificateParams::default();
        params.not_before = to_offset(not_before)?;
        params.not_after = to_offset(not_after)?;
        params.serial_number = Some(random_serial());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationalUnitName, role.organizational_unit());
        dn.push(DnType::OrganizationName, self.cluster_id());
        params.distinguished_name = dn;

        let mut sans = vec![dns_san(node_id)?];
        if role == Role::Manager {
            sans.push(dns_san(MANAGER_SERVER_NAME)?);
        }
        for name in &opts.dns_names {
            if name == MANAGER_SERVER_NAME || name == CA_COMMON_NAME {
                return Err(PkiError::InvalidName(name.clone()));
            }
            if rustls::pki_types::DnsName::try_from(name.as_str()).is_err() {
                return Err(PkiError::InvalidName(name.clone()));
            }
            sans.push(dns_san(name)?);
        }
        sans.extend(opts.ip_addresses.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;

        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;

        let issuer = Issuer::from_ca_cert_der(self.cert.der(), &self.key)?;
        let cert = params.signed_by(&request.public_key, &issuer)?;
        NodeCertificate::from_der(cert.der().to_vec())
    }
}

/// A root CA's certificate: `CN=shoal-root-ca, O=<cluster ID>`, valid from an hour
/// before `now` to `until`, signing node certificates only (path length 0).
fn root_params(
    cluster_id: &str,
    now: SystemTime,
    until: SystemTime,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.not_before = to_offset(now.checked_sub(CERT_BACKDATE).unwrap_or(now))?;
    params.not_after = to_offset(until)?;
    params.serial_number = Some(random_serial());
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = dn;
    // Path length 0: it signs node certificates only, no intermediate CAs.
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn dns_san(name: &str) -> Result<SanType, PkiError> {
    Ok(SanType::DnsName(
        name.try_into()
            .map_err(|_| PkiError::InvalidName(name.to_string()))?,
    ))
}

/// A cluster ID goes into the organization of every certificate: 1 to 64 printable ASCII
/// characters.
fn validate_cluster_id(id: &str) -> Result<(), PkiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(PkiError::InvalidName(id.to_string()));
    }
    Ok(())
}

impl Clone for ClusterCa {
    fn clone(&self) -> Self {
        ClusterCa {
            cert: self.cert.clone(),
            key: KeyPair::try_from(self.key.serialized_der())
                .expect("a key that was read once reads again"),
        }
    }
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster_id", &self.cluster_id())
            .field("digest", &self.digest())
            .field("not_after", &self.cert.not_after())
            .field("key", &"[redacted]")
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct ClusterCaPem {
    cert_pem: String,
    key_pem: String,
}

impl Serialize for ClusterCa {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ClusterCaPem {
            cert_pem: self.cert_pem(),
            key_pem: self.key_pem_secret(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ClusterCa {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pem = ClusterCaPem::deserialize(deserializer)?;
        ClusterCa::from_pem(&pem.cert_pem, &pem.key_pem).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::NodeIdentity;
    use x509_parser::extensions::GeneralName;

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn new_ca_is_a_self_signed_p256_root_for_the_cluster() {
        let now = SystemTime::now();
        let ca = ClusterCa::new("cluster-x").unwrap();
        let cert = ca.certificate();
        assert_eq!(ca.cluster_id(), "cluster-x");
        assert_eq!(ca.digest(), CaDigest::of_der(cert.der()));
        let parsed = parse_x509(cert.der()).unwrap();
        assert!(parsed.is_ca());
        assert_eq!(common_name(parsed.subject()).unwrap(), CA_COMMON_NAME);
        assert_eq!(organization(parsed.subject()).unwrap(), "cluster-x");
        assert_eq!(
            parsed
                .public_key()
                .algorithm
                .parameters
                .as_ref()
                .unwrap()
                .as_oid()
                .unwrap()
                .to_id_string(),
            "1.2.840.10045.3.1.7" // prime256v1
        );
        let bc = parsed.basic_constraints().unwrap().unwrap().value;
        assert_eq!(bc.path_len_constraint, Some(0));
        assert_eq!(secs(cert.not_after()) - secs(now), CA_VALIDITY.as_secs());
        assert!(cert.not_before() <= now);
    }

    #[test]
    fn ca_round_trips_through_pem_and_serde_without_showing_its_key() {
        let ca = ClusterCa::new("cluster-x").unwrap();
        let key_pem = ca.key_pem_secret();
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = ClusterCa::from_pem(&ca.cert_pem(), &key_pem).unwrap();
        assert_eq!(back.digest(), ca.digest());
        assert_eq!(back.certificate(), ca.certificate());

        let json = serde_json::to_string(&ca).unwrap();
        let from_json: ClusterCa = serde_json::from_str(&json).unwrap();
        assert_eq!(from_json.digest(), ca.digest());
        assert_eq!(from_json.clone().key_pem_secret(), key_pem);

        // A reloaded CA still issues certificates that chain to the same root.
        let (key, csr) = NodeIdentity::generate_key_and_csr("node1").unwrap();
        let cert = from_json
            .issue(&csr, "node1", Role::Worker, &IssueOptions::default())
            .unwrap();
        NodeIdentity::new(key, cert, ca.certificate().clone()).unwrap();

        let key_body: String = key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let debug = format!("{ca:?}");
        assert!(debug.contains("[redacted]"), "{debug}");
        assert!(debug.contains("cluster-x"), "{debug}");
        for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!debug.contains(line), "{debug}");
        }
        assert!(!key_body.is_empty());

        let cert_json = serde_json::to_string(ca.certificate()).unwrap();
        let cert_back: CaCertificate = serde_json::from_str(&cert_json).unwrap();
        assert_eq!(&cert_back, ca.certificate());
        assert!(!format!("{cert_back:?}").contains("BEGIN"));
    }

    #[test]
    fn ca_refuses_a_key_that_is_not_its_own_and_non_ca_certificates() {
        let a = ClusterCa::new("cluster-x").unwrap();
        let b = ClusterCa::new("cluster-x").unwrap();
        assert!(matches!(
            ClusterCa::from_pem(&a.cert_pem(), &b.key_pem_secret()),
            Err(PkiError::KeyMismatch("CA"))
        ));
        assert!(matches!(
            ClusterCa::from_pem(&a.cert_pem(), &a.cert_pem()),
            Err(PkiError::Pem { .. })
        ));
        let (_, csr) = NodeIdentity::generate_key_and_csr("node1").unwrap();
        let node = a
            .issue(&csr, "node1", Role::Manager, &IssueOptions::default())
            .unwrap();
        assert!(matches!(
            CaCertificate::from_pem(&node.pem()),
            Err(PkiError::NotACa(_))
        ));
        assert!(matches!(
            CaCertificate::from_der(b"not a certificate".to_vec()),
            Err(PkiError::InvalidCertificate(_))
        ));
        assert!(matches!(ClusterCa::new(""), Err(PkiError::InvalidName(_))));
        assert!(matches!(
            ClusterCa::new("has space"),
            Err(PkiError::InvalidName(_))
        ));
    }

    #[test]
    fn issued_certificate_has_node_id_role_names_and_validity() {
        let ca = ClusterCa::new("cluster-x").unwrap();
        let now = SystemTime::now();
        let opts = IssueOptions {
            validity: Duration::from_secs(600),
            now: Some(now),
            dns_names: vec!["h1.example".into()],
            ip_addresses: vec!["192.168.77.11".parse().unwrap(), "::1".parse().unwrap()],
            ..IssueOptions::default()
        };
        // The CSR asks for another name: the CA writes the one it was given.
        let (_, csr) = NodeIdentity::generate_key_and_csr("asked-for").unwrap();
        let m = ca.issue(&csr, "manager1", Role::Manager, &opts).unwrap();
        assert_eq!(m.node_id(), "manager1");
        assert_eq!(m.role(), Role::Manager);
        assert_eq!(m.cluster_id(), "cluster-x");
        assert_eq!(secs(m.not_after()), secs(now) + 600);
        assert_eq!(secs(m.not_before()), secs(now) - 3600);

        let parsed = parse_x509(m.der()).unwrap();
        assert!(!parsed.is_ca());
        let ou: Vec<_> = parsed
            .subject()
            .iter_organizational_unit()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(ou, ["shoal-manager"]);
        let sans = &parsed
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        let dns: Vec<&str> = sans
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(*d),
                _ => None,
            })
            .collect();
        assert_eq!(dns, ["manager1", "shoal-manager", "h1.example"]);
        let ips = sans
            .iter()
            .filter(|n| matches!(n, GeneralName::IPAddress(_)))
            .count();
        assert_eq!(ips, 2);
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(parsed
            .key_usage()
            .unwrap()
            .unwrap()
            .value
            .digital_signature());

        let (_, csr) = NodeIdentity::generate_key_and_csr("worker1").unwrap();
        let w = ca
            .issue(&csr, "worker1", Role::Worker, &IssueOptions::default())
            .unwrap();
        assert_eq!(w.role(), Role::Worker);
        let parsed = parse_x509(w.der()).unwrap();
        let sans = &parsed
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(sans.len(), 1, "a worker is named by its node ID only");
        let days = (secs(w.not_after()) - secs(SystemTime::now()) + 60) / (24 * 3600);
        assert_eq!(days, 90);

        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(serde_json::from_str::<NodeCertificate>(&json).unwrap(), w);
        assert_eq!(NodeCertificate::from_pem(&w.pem()).unwrap(), w);
    }

    #[test]
    fn issue_refuses_bad_csrs_names_and_validity() {
        let ca = ClusterCa::new("cluster-x").unwrap();
        let (_, csr) = NodeIdentity::generate_key_and_csr("node1").unwrap();
        let opts = IssueOptions::default();

        // A CSR whose signature does not verify (one byte of the signature flipped).
        let mut der = csr.der().to_vec();
        let last = der.len() - 3;
        der[last] ^= 0x01;
        assert!(matches!(
            ca.issue(&NodeCsr::from_der(der), "node1", Role::Worker, &opts),
            Err(PkiError::InvalidCsr(_))
        ));
        assert!(matches!(
            ca.issue(
                &NodeCsr::from_der(b"junk".to_vec()),
                "node1",
                Role::Worker,
                &opts
            ),
            Err(PkiError::InvalidCsr(_))
        ));

        for bad in [
            "",
            "UPPER",
            "has.dot",
            "-lead",
            "trail-",
            "12345",
            "shoal-manager",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(
                    ca.issue(&csr, bad, Role::Worker, &opts),
                    Err(PkiError::InvalidNodeId { .. })
                ),
                "{bad:?}"
            );
        }
        for bad in ["shoal-manager", "not a name", ""] {
            let opts = IssueOptions {
                dns_names: vec![bad.into()],
                ..IssueOptions::default()
            };
            assert!(
                matches!(
                    ca.issue(&csr, "node1", Role::Manager, &opts),
                    Err(PkiError::InvalidName(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            ca.issue(
                &csr,
                "node1",
                Role::Worker,
                &IssueOptions::with_validity(Duration::ZERO)
            ),
            Err(PkiError::InvalidValidity(_))
        ));
    }

    #[test]
    fn a_node_certificate_never_outlives_the_ca() {
        let now = SystemTime::now();
        let ca = ClusterCa::with_validity("cluster-x", now, Duration::from_secs(3600)).unwrap();
        let (_, csr) = NodeIdentity::generate_key_and_csr("node1").unwrap();
        let cert = ca
            .issue(&csr, "node1", Role::Worker, &IssueOptions::default())
            .unwrap();
        assert_eq!(cert.not_after(), ca.certificate().not_after());
    }
}
