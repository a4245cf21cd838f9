//! rustls configurations for the cluster's mutual TLS: TLS 1.3 only, `ring` provider,
//! trust = the cluster's root CA and nothing else (and, during a rotation, the next root
//! too: see [`super::CaTrust`]).
//!
//! | config | who | verifies the peer | presents |
//! |---|---|---|---|
//! | [`server_config`] | a manager's API listener | client certificate required, from the cluster CA | its certificate + the CA |
//! | [`join_server_config`] | the listener a joining node reaches | client certificate verified if given, else anonymous | its certificate + the CA |
//! | [`client_config`] | a node calling a manager | server certificate from the cluster CA, for the server name dialled | its certificate + the CA |
//! | [`bootstrap_client_config`] | a joining node (no certificate yet) | the server's chain must contain a CA whose SHA-256 is the token's digest, and the server certificate must chain to it | nothing |
//!
//! Server name: dial [`manager_server_name`] (`shoal-manager`) to reach any manager of the
//! cluster, wherever it is; dial a node ID to reach that node only.
//!
//! With [`join_server_config`], a connection may have no peer certificate: the API layer
//! must then refuse everything except the join call, which must check the join token
//! (see [`crate::token::JoinTokens::check`]). One way to serve both on port 2377 is
//! `tokio_rustls::LazyConfigAcceptor` choosing the config by ALPN.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};

use super::ca::CaCertificate;
use super::identity::NodeIdentity;
use super::trust::CaTrust;
use super::{CaDigest, PkiError, MANAGER_SERVER_NAME};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(trust: &CaTrust) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for root in trust.roots() {
        roots.add(root.der().clone())?;
    }
    Ok(Arc::new(roots))
}

fn builder_error(e: impl std::fmt::Display) -> PkiError {
    PkiError::Tls(rustls::Error::General(e.to_string()))
}

/// The server name every manager's certificate carries: dial it to reach any manager.
pub fn manager_server_name() -> ServerName<'static> {
    ServerName::try_from(MANAGER_SERVER_NAME).expect("a valid DNS name")
}

/// A server that requires a client certificate from the cluster CA (`trust`, normally
/// `identity.trust()`). Read the client's node ID and role afterwards with
/// [`super::PeerIdentity::from_peer_certificates`].
pub fn server_config(
    identity: &NodeIdentity,
    trust: impl Into<CaTrust>,
) -> Result<ServerConfig, PkiError> {
    server(identity, &trust.into(), true)
}

/// Like [`server_config`], but a client without a certificate is let through (a joining
/// node); a client that presents one must still present one from the cluster CA.
pub fn join_server_config(
    identity: &NodeIdentity,
    trust: impl Into<CaTrust>,
) -> Result<ServerConfig, PkiError> {
    server(identity, &trust.into(), false)
}

fn server(
    identity: &NodeIdentity,
    trust: &CaTrust,
    require_client_cert: bool,
) -> Result<ServerConfig, PkiError> {
    let provider = provider();
    let mut verifier = WebPkiClientVerifier::builder_with_provider(roots(trust)?, provider.clone());
    if !require_client_cert {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier.build().map_err(builder_error)?;
    Ok(ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain(), identity.key().private_key_der())?)
}

/// A client that presents `identity` and accepts a server certificate from the cluster
/// CA (`trust`) that is valid for the server name dialled ([`manager_server_name`] or a
/// node ID).
pub fn client_config(
    identity: &NodeIdentity,
    trust: impl Into<CaTrust>,
) -> Result<ClientConfig, PkiError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&trust.into())?)
        .with_client_auth_cert(identity.chain(), identity.key().private_key_der())?)
}

/// The client of a node that is joining and has no certificate yet: it trusts only a CA
/// whose certificate's SHA-256 is `ca_digest` (from the join token), found in the chain
/// the server sends; the server's certificate must chain to that CA (through the
/// chain's cross-signed root during a rotation) and be valid for the
/// server name dialled (use [`manager_server_name`], so only a manager passes). A server
/// of another cluster, or a man in the middle, fails the handshake, before the node sends
/// its token. After the handshake, take the CA from the server's chain with
/// [`pinned_ca_from_chain`].
pub fn bootstrap_client_config(ca_digest: &CaDigest) -> Result<ClientConfig, PkiError> {
    let provider = provider();
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
            digest: *ca_digest,
            provider,
        }))
        .with_no_client_auth())
}

/// The certificate in `chain` (as `peer_certificates()` returns it) whose SHA-256 is
/// `digest`, read as the cluster's CA certificate.
pub fn pinned_ca_from_chain(
    chain: &[CertificateDer<'_>],
    digest: &CaDigest,
) -> Option<CaCertificate> {
    chain
        .iter()
        .find(|c| CaDigest::of_der(c) == *digest)
        .and_then(|c| CaCertificate::from_der(c.to_vec()).ok())
}

/// Why a [`bootstrap_client_config`] handshake failed when the server's CA is not the one
/// the join token names. It reaches the caller inside the handshake error
/// (`rustls::Error::InvalidCertificate(CertificateError::Other(..))`, itself inside the
/// `io::Error` of tokio-rustls); [`is_ca_pin_mismatch`] finds it. rustls prints it with
/// `Debug`, so `Debug` prints the message too.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CaPinMismatch {
    /// The digest from the join token.
    pub expected: CaDigest,
}

impl fmt::Display for CaPinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the manager's CA does not match the join token's CA digest {} (a manager of another cluster, or a man in the middle)",
            self.expected
        )
    }
}

impl fmt::Debug for CaPinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for CaPinMismatch {}

/// Whether `err` (a `rustls::Error`, or an `io::Error` wrapping one, as a failed
/// tokio-rustls connect returns) is a [`CaPinMismatch`]: the join token is for another
/// cluster than the manager's.
pub fn is_ca_pin_mismatch(err: &(dyn std::error::Error + 'static)) -> bool {
    let tls = match err.downcast_ref::<std::io::Error>() {
        Some(io) => io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
        None => err.downcast_ref::<rustls::Error>(),
    };
    matches!(
        tls,
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))))
            if inner.downcast_ref::<CaPinMismatch>().is_some()
    )
}

#[derive(Debug)]
struct PinnedCaVerifier {
    digest: CaDigest,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = pinned_ca_from_chain(intermediates, &self.digest) else {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(CaPinMismatch {
                    expected: self.digest,
                })),
            )));
        };
        let roots = roots(&CaTrust::new(ca)).map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{ClusterCa, IssueOptions, Role};

    #[test]
    fn pinned_ca_is_found_by_digest_only() {
        let ca = ClusterCa::new("cluster-x").unwrap();
        let other = ClusterCa::new("cluster-x").unwrap();
        let (key, csr) = NodeIdentity::generate_key_and_csr("manager1").unwrap();
        let cert = ca
            .issue(&csr, "manager1", Role::Manager, &IssueOptions::default())
            .unwrap();
        let id = NodeIdentity::new(key, cert, ca.certificate().clone()).unwrap();
        let chain = id.chain();
        assert_eq!(
            pinned_ca_from_chain(&chain, &ca.digest()).as_ref(),
            Some(ca.certificate())
        );
        assert_eq!(pinned_ca_from_chain(&chain, &other.digest()), None);
        // The leaf matching the digest is not taken as a CA.
        let leaf_digest = CaDigest::of_der(&chain[0]);
        assert_eq!(pinned_ca_from_chain(&chain, &leaf_digest), None);
    }

    #[test]
    fn pin_mismatch_is_recognised_through_the_io_error() {
        let mismatch = rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
            Arc::new(CaPinMismatch {
                expected: CaDigest::of_der(b"x"),
            }),
        )));
        assert!(is_ca_pin_mismatch(&mismatch));
        assert!(format!("{mismatch:?}").contains("does not match the join token's CA digest"));
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, mismatch);
        assert!(is_ca_pin_mismatch(&io));
        let other = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(!is_ca_pin_mismatch(&other));
        assert!(!is_ca_pin_mismatch(&std::io::Error::other("x")));
    }
}
