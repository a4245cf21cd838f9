//! Shared certificate helpers: PEM, time conversion, serial numbers, reading the fields
//! shoal puts into its certificates.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use super::{PkiError, Role};

/// Cryptographically random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .expect("the operating system's random number generator failed");
    out
}

/// A random positive 127-bit serial number (RFC 5280 allows up to 20 octets).
pub(crate) fn random_serial() -> rcgen::SerialNumber {
    let mut bytes = random_bytes::<16>();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40; // no leading zero octet, so it is always 16 octets long
    rcgen::SerialNumber::from_slice(&bytes)
}

pub(crate) fn to_offset(t: SystemTime) -> Result<OffsetDateTime, PkiError> {
    let offset = OffsetDateTime::from(t);
    // X.509 times (GeneralizedTime) stop at year 9999.
    if !(1950..=9999).contains(&offset.year()) {
        return Err(PkiError::InvalidValidity(format!(
            "time out of range for a certificate: year {}",
            offset.year()
        )));
    }
    // Whole seconds: what the certificate will hold.
    Ok(offset
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond"))
}

pub(crate) fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

pub(crate) fn pem_encode(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The contents of the one PEM block in `text`, which must have tag `tag`.
pub(crate) fn pem_decode(text: &str, tag: &str, what: &'static str) -> Result<Vec<u8>, PkiError> {
    let block = pem::parse(text).map_err(|e| PkiError::Pem {
        what,
        reason: e.to_string(),
    })?;
    if block.tag() != tag {
        return Err(PkiError::Pem {
            what,
            reason: format!("expected a {tag} block, found {}", block.tag()),
        });
    }
    Ok(block.into_contents())
}

pub(crate) fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::InvalidCertificate(format!("cannot parse DER: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidCertificate(
            "trailing bytes after the certificate".into(),
        ));
    }
    Ok(cert)
}

/// The one value of a name attribute (CN, OU, O); none or several is an error.
pub(crate) fn single_attribute<'a, I>(mut values: I, what: &'static str) -> Result<String, PkiError>
where
    I: Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
{
    let first = values
        .next()
        .ok_or_else(|| PkiError::InvalidCertificate(format!("no {what} in the subject")))?;
    if values.next().is_some() {
        return Err(PkiError::InvalidCertificate(format!(
            "more than one {what} in the subject"
        )));
    }
    first
        .as_str()
        .map(str::to_string)
        .map_err(|_| PkiError::InvalidCertificate(format!("the {what} is not a string")))
}

pub(crate) fn common_name(name: &X509Name<'_>) -> Result<String, PkiError> {
    single_attribute(name.iter_common_name(), "common name")
}

pub(crate) fn organization(name: &X509Name<'_>) -> Result<String, PkiError> {
    single_attribute(name.iter_organization(), "organization")
}

/// The fields shoal writes into a node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeCertFields {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

pub(crate) fn node_cert_fields(cert: &X509Certificate<'_>) -> Result<NodeCertFields, PkiError> {
    let subject = cert.subject();
    let node_id = common_name(subject)?;
    let ou = single_attribute(subject.iter_organizational_unit(), "organizational unit")?;
    let role = Role::from_organizational_unit(&ou).ok_or_else(|| {
        PkiError::InvalidCertificate(format!(
            "organizational unit {ou:?} names no role (expected shoal-manager or shoal-worker)"
        ))
    })?;
    let cluster_id = organization(subject)?;
    if cert.is_ca() {
        return Err(PkiError::InvalidCertificate(
            "a CA certificate is not a node certificate".into(),
        ));
    }
    let validity = cert.validity();
    Ok(NodeCertFields {
        node_id,
        role,
        cluster_id,
        not_before: from_unix(validity.not_before.timestamp()),
        not_after: from_unix(validity.not_after.timestamp()),
    })
}
