//! Registry credentials of a service (`service create|update --with-registry-auth`).
//!
//! The CLI reads the user's credentials for the image's registry and sends them to the
//! managers; the manager that takes the request seals them ([`RegistryAuthKey::seal`])
//! before they go into the store, so the Raft log, snapshots and every copy of the state
//! hold only ciphertext. The key is derived with HKDF-SHA256 from the cluster CA's
//! private key, which only managers hold (salt: the cluster ID), and seals with
//! AES-256-GCM under a fresh random nonce, the service's ID as associated data (a sealed
//! value cannot be moved to another service). The leader opens them when it answers a
//! node's state request, and hands a service's credentials only to a node that has a
//! live task of that service.
//!
//! A root CA rotation takes the key off the CA key (a rotation may be done because that
//! key leaked): the key in use, derived as above, goes into the store beside a new random
//! one, which seals from then on, and every service's credentials are sealed again under
//! it in the rotation's own command ([`RegistryKeyring`]: the newest key seals, each
//! opens). The store keeps the two newest keys.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;

use crate::pki::ClusterCa;
use crate::store::RegistryKey;

/// HKDF's `info`: names what the derived key is for, so no other use of the CA key
/// can yield the same key.
const KEY_INFO: &[u8] = b"shoal registry auth v1";

/// A user's credentials for one registry, as Docker's `X-Registry-Auth` carries them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredentials {
    /// The registry as the user's docker config names it (`192.168.77.100:5000`,
    /// `https://index.docker.io/v1/`).
    pub server_address: String,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RegistryCredentials {{ server_address: {:?}, username: {:?}, password: <redacted> }}",
            self.server_address, self.username
        )
    }
}

/// Credentials sealed for the store: hex nonce and hex ciphertext (with its tag).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedCredentials {
    pub nonce: String,
    pub ciphertext: String,
}

impl fmt::Debug for SealedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SealedCredentials {{ {} bytes }}",
            self.ciphertext.len() / 2
        )
    }
}

/// Why credentials could not be sealed or opened. Never carries the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryAuthError {
    #[error("no randomness for a nonce")]
    Random,
    #[error("sealed registry credentials are malformed")]
    Malformed,
    #[error("sealed registry credentials do not open with this cluster's key (another service's, or damaged)")]
    Open,
}

/// The managers' key for registry credentials.
pub struct RegistryAuthKey {
    key: LessSafeKey,
}

impl fmt::Debug for RegistryAuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RegistryAuthKey(<redacted>)")
    }
}

impl RegistryAuthKey {
    /// The key every manager of the CA's cluster derives alike.
    pub fn derive(ca: &ClusterCa) -> RegistryAuthKey {
        Self::from_secret(ca.key_der_secret(), ca.cluster_id())
    }

    pub(crate) fn from_secret(secret: &[u8], cluster_id: &str) -> RegistryAuthKey {
        Self::from_bytes(&derived_bytes(secret, cluster_id))
    }

    fn from_bytes(bytes: &[u8; 32]) -> RegistryAuthKey {
        RegistryAuthKey {
            key: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes make an AES-256 key"),
            ),
        }
    }

    /// A key kept in the store.
    pub fn from_stored(stored: &RegistryKey) -> Result<RegistryAuthKey, RegistryAuthError> {
        let bytes: [u8; 32] = STANDARD_NO_PAD
            .decode(&stored.key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(RegistryAuthError::Malformed)?;
        Ok(Self::from_bytes(&bytes))
    }

    /// A new random key, for the store.
    pub fn generate() -> Result<RegistryKey, RegistryAuthError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| RegistryAuthError::Random)?;
        Ok(RegistryKey {
            key: STANDARD_NO_PAD.encode(bytes),
        })
    }

    /// The key [`RegistryAuthKey::derive`] makes of `ca`, as the store keeps it.
    pub fn stored_of(ca: &ClusterCa) -> RegistryKey {
        RegistryKey {
            key: STANDARD_NO_PAD.encode(derived_bytes(ca.key_der_secret(), ca.cluster_id())),
        }
    }

    /// Seals `creds` for service `service_id`.
    pub fn seal(
        &self,
        service_id: &str,
        creds: &RegistryCredentials,
    ) -> Result<SealedCredentials, RegistryAuthError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| RegistryAuthError::Random)?;
        let mut data = serde_json::to_vec(creds).map_err(|_| RegistryAuthError::Malformed)?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(service_id.as_bytes()),
                &mut data,
            )
            .map_err(|_| RegistryAuthError::Malformed)?;
        Ok(SealedCredentials {
            nonce: hex(&nonce),
            ciphertext: hex(&data),
        })
    }

    /// Opens credentials sealed for service `service_id`.
    pub fn open(
        &self,
        service_id: &str,
        sealed: &SealedCredentials,
    ) -> Result<RegistryCredentials, RegistryAuthError> {
        let nonce: [u8; NONCE_LEN] = unhex(&sealed.nonce)
            .and_then(|n| n.try_into().ok())
            .ok_or(RegistryAuthError::Malformed)?;
        let mut data = unhex(&sealed.ciphertext).ok_or(RegistryAuthError::Malformed)?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(service_id.as_bytes()),
                &mut data,
            )
            .map_err(|_| RegistryAuthError::Open)?;
        serde_json::from_slice(plain).map_err(|_| RegistryAuthError::Malformed)
    }
}

/// HKDF-SHA256 of `secret`, salted with the cluster ID: 32 bytes.
fn derived_bytes(secret: &[u8], cluster_id: &str) -> [u8; 32] {
    struct Len32;
    impl ring::hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let prk = Salt::new(HKDF_SHA256, cluster_id.as_bytes()).extract(secret);
    let mut out = [0u8; 32];
    prk.expand(&[KEY_INFO], Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF-SHA256 yields 32 bytes");
    out
}

/// The managers' keys of registry credentials: the newest seals, each opens.
pub struct RegistryKeyring {
    keys: Vec<RegistryAuthKey>,
}

impl fmt::Debug for RegistryKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegistryKeyring({} keys, <redacted>)", self.keys.len())
    }
}

impl From<RegistryAuthKey> for RegistryKeyring {
    fn from(key: RegistryAuthKey) -> Self {
        RegistryKeyring { keys: vec![key] }
    }
}

impl RegistryKeyring {
    /// The keys the store keeps (newest first), or, when it keeps none (no CA rotation
    /// yet), the one derived from the root CA `ca`. A stored key that does not read is
    /// left out (logged): what it sealed no longer opens, and the pull says so.
    pub fn new(stored: &[RegistryKey], ca: &ClusterCa) -> RegistryKeyring {
        if stored.is_empty() {
            return RegistryKeyring {
                keys: vec![RegistryAuthKey::derive(ca)],
            };
        }
        let keys = stored
            .iter()
            .filter_map(|k| match RegistryAuthKey::from_stored(k) {
                Ok(key) => Some(key),
                Err(e) => {
                    tracing::warn!(error = %e, "a registry credential key in the store does not read");
                    None
                }
            })
            .collect();
        RegistryKeyring { keys }
    }

    /// Seals with the newest key.
    pub fn seal(
        &self,
        service_id: &str,
        creds: &RegistryCredentials,
    ) -> Result<SealedCredentials, RegistryAuthError> {
        self.keys
            .first()
            .ok_or(RegistryAuthError::Open)?
            .seal(service_id, creds)
    }

    /// Opens with whichever key sealed them.
    pub fn open(
        &self,
        service_id: &str,
        sealed: &SealedCredentials,
    ) -> Result<RegistryCredentials, RegistryAuthError> {
        let mut error = RegistryAuthError::Open;
        for key in &self.keys {
            match key.open(service_id, sealed) {
                Ok(creds) => return Ok(creds),
                Err(e) => error = e,
            }
        }
        Err(error)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> RegistryCredentials {
        RegistryCredentials {
            server_address: "192.168.77.100:5001".into(),
            username: "alice".into(),
            password: "s3cret pass".into(),
        }
    }

    #[test]
    fn sealed_credentials_open_for_their_service_only() {
        let key = RegistryAuthKey::from_secret(b"ca key bytes", "cluster1");
        let sealed = key.seal("svc1", &creds()).unwrap();
        assert!(!sealed.ciphertext.contains(&hex(b"s3cret")));
        assert_eq!(key.open("svc1", &sealed).unwrap(), creds());
        assert_eq!(key.open("svc2", &sealed), Err(RegistryAuthError::Open));
        // A fresh nonce each time.
        assert_ne!(key.seal("svc1", &creds()).unwrap().nonce, sealed.nonce);
    }

    #[test]
    fn another_cluster_key_does_not_open_them() {
        let a = RegistryAuthKey::from_secret(b"ca key bytes", "cluster1");
        let b = RegistryAuthKey::from_secret(b"other ca key", "cluster1");
        let c = RegistryAuthKey::from_secret(b"ca key bytes", "cluster2");
        let sealed = a.seal("svc1", &creds()).unwrap();
        assert_eq!(b.open("svc1", &sealed), Err(RegistryAuthError::Open));
        assert_eq!(c.open("svc1", &sealed), Err(RegistryAuthError::Open));
        // Every manager derives the same key from the same CA.
        let a2 = RegistryAuthKey::from_secret(b"ca key bytes", "cluster1");
        assert_eq!(a2.open("svc1", &sealed).unwrap(), creds());
    }

    #[test]
    fn damaged_values_are_refused_and_nothing_secret_is_printed() {
        let key = RegistryAuthKey::from_secret(b"k", "c");
        let mut sealed = key.seal("s", &creds()).unwrap();
        sealed.nonce = "zz".into();
        assert_eq!(key.open("s", &sealed), Err(RegistryAuthError::Malformed));
        let mut sealed = key.seal("s", &creds()).unwrap();
        let last = sealed.ciphertext.pop().unwrap();
        sealed.ciphertext.push(if last == '0' { '1' } else { '0' });
        assert_eq!(key.open("s", &sealed), Err(RegistryAuthError::Open));
        assert!(!format!("{:?}", creds()).contains("s3cret"));
        assert_eq!(format!("{key:?}"), "RegistryAuthKey(<redacted>)");
    }

    #[test]
    fn the_key_is_derived_as_before_and_a_keyring_opens_with_each_key() {
        let ca = ClusterCa::new("cluster1").unwrap();
        // As keys were derived before they could be kept in the store.
        let prk = Salt::new(HKDF_SHA256, b"cluster1").extract(ca.key_der_secret());
        let earlier = RegistryAuthKey {
            key: LessSafeKey::new(UnboundKey::from(
                prk.expand(&[KEY_INFO], &AES_256_GCM).unwrap(),
            )),
        };
        let sealed_before = earlier.seal("svc1", &creds()).unwrap();
        let none = RegistryKeyring::new(&[], &ca);
        assert_eq!(none.open("svc1", &sealed_before).unwrap(), creds());

        // After a rotation: a new key seals, the derived one still opens.
        let fresh = RegistryAuthKey::generate().unwrap();
        let stored = [fresh.clone(), RegistryAuthKey::stored_of(&ca)];
        let other_ca = ClusterCa::new("cluster1").unwrap();
        let ring = RegistryKeyring::new(&stored, &other_ca);
        assert_eq!(ring.open("svc1", &sealed_before).unwrap(), creds());
        let sealed_after = ring.seal("svc1", &creds()).unwrap();
        let only_fresh = RegistryAuthKey::from_stored(&fresh).unwrap();
        assert_eq!(only_fresh.open("svc1", &sealed_after).unwrap(), creds());
        assert_eq!(
            earlier.open("svc1", &sealed_after),
            Err(RegistryAuthError::Open)
        );
        assert!(RegistryAuthKey::from_stored(&RegistryKey { key: "abc".into() }).is_err());
        assert!(!format!("{fresh:?} {ring:?}").contains(&fresh.key));
    }
}
