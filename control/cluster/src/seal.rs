//! Sealing a manager's secrets at rest.
//!
//! ```text
//!  unlock key / local key (KEK, 32 bytes) ──wraps──▶ data key (DEK, 32 bytes)
//!  data key ──seals──▶ Raft log records, snapshot, CA key, the manager's node key
//! ```
//! Both keys are XChaCha20-Poly1305 keys; every sealed value is a fresh random 24-byte
//! nonce, the ciphertext and its 16-byte tag, with a context string as associated data
//! (a sealed log record cannot pass for a snapshot or a key). The KEK is either kept in
//! a 0600 file beside the wrapped data key, or, with autolock, is the cluster's unlock
//! key (`SWMKEY-1-<base64>`, as Swarm prints it) held only in memory and in the store
//! (which it protects itself). See `manager::keys` for the file and ARCHITECTURE.md for
//! the design.

use std::fmt;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};

use crate::pki::cert::random_bytes;

/// How Swarm prefixes a human-readable unlock key (version 1).
pub const UNLOCK_KEY_PREFIX: &str = "SWMKEY-1-";

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Associated data of a wrapped data key.
const WRAP_CONTEXT: &[u8] = b"shoal manager data key v1";

/// Why a value could not be opened, or a key read. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Wrong key, or the bytes were changed.
    #[error("does not open with this key (wrong key, or damaged)")]
    Open,
    #[error("too short to be a sealed value")]
    Short,
    #[error("encryption failed")]
    Seal,
}

/// Why an unlock key given by a user was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnlockKeyError {
    #[error("invalid unlock key: it must start with {UNLOCK_KEY_PREFIX}")]
    Prefix,
    #[error("invalid unlock key: not a key of 32 bytes in base64 after {UNLOCK_KEY_PREFIX}")]
    Encoding,
}

fn seal_with(key: &[u8; 32], context: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
    let nonce_bytes = random_bytes::<NONCE_LEN>();
    let nonce = XNonce::from(nonce_bytes);
    let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(plain);
    let tag = XChaCha20Poly1305::new(&Key::from(*key))
        .encrypt_inout_detached(&nonce, context, out[NONCE_LEN..].as_mut().into())
        .map_err(|_| SealError::Seal)?;
    out.extend_from_slice(tag.as_slice());
    Ok(out)
}

fn open_with(key: &[u8; 32], context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(SealError::Short);
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce = XNonce::try_from(nonce).map_err(|_| SealError::Short)?;
    let tag = Tag::try_from(tag).map_err(|_| SealError::Short)?;
    let mut plain = body.to_vec();
    XChaCha20Poly1305::new(&Key::from(*key))
        .decrypt_inout_detached(&nonce, context, plain.as_mut_slice().into(), &tag)
        .map_err(|_| SealError::Open)?;
    Ok(plain)
}

/// A manager's data key (DEK): seals its store and keys at rest. Each manager has its
/// own; it never leaves the manager and is on disk only wrapped by a KEK.
#[derive(Clone)]
pub struct DataKey {
    key: [u8; 32],
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    /// A fresh random data key.
    pub fn generate() -> DataKey {
        DataKey {
            key: random_bytes::<32>(),
        }
    }

    /// Seals `plain`; `context` names what it is (it must be given again to open it).
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        seal_with(&self.key, context, plain)
    }

    /// Opens what [`DataKey::seal`] made with the same `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        open_with(&self.key, context, sealed)
    }
}

/// A key-encryption key (KEK): wraps a manager's [`DataKey`]. Either a node's local key
/// (kept in a 0600 file) or, with autolock, the cluster's unlock key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyEncryptionKey {
    key: [u8; 32],
}

impl fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyEncryptionKey(<redacted>)")
    }
}

impl KeyEncryptionKey {
    /// A fresh random key.
    pub fn generate() -> KeyEncryptionKey {
        KeyEncryptionKey {
            key: random_bytes::<32>(),
        }
    }

    /// The key as stored (in the KEK file or the cluster store): base64, no padding.
    pub fn encode(&self) -> String {
        STANDARD_NO_PAD.encode(self.key)
    }

    /// The inverse of [`KeyEncryptionKey::encode`].
    pub fn decode(text: &str) -> Result<KeyEncryptionKey, UnlockKeyError> {
        let bytes = STANDARD_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| UnlockKeyError::Encoding)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| UnlockKeyError::Encoding)?;
        Ok(KeyEncryptionKey { key })
    }

    /// As the user sees it: `SWMKEY-1-<base64>`.
    pub fn to_unlock_key(&self) -> String {
        format!("{UNLOCK_KEY_PREFIX}{}", self.encode())
    }

    /// Reads a key the user typed (surrounding white space ignored).
    pub fn parse_unlock_key(text: &str) -> Result<KeyEncryptionKey, UnlockKeyError> {
        let rest = text
            .trim()
            .strip_prefix(UNLOCK_KEY_PREFIX)
            .ok_or(UnlockKeyError::Prefix)?;
        KeyEncryptionKey::decode(rest)
    }

    /// `data_key` sealed under this key.
    pub fn wrap(&self, data_key: &DataKey) -> Result<Vec<u8>, SealError> {
        seal_with(&self.key, WRAP_CONTEXT, &data_key.key)
    }

    /// The data key [`KeyEncryptionKey::wrap`] sealed; [`SealError::Open`] for another key.
    pub fn unwrap(&self, wrapped: &[u8]) -> Result<DataKey, SealError> {
        let plain = open_with(&self.key, WRAP_CONTEXT, wrapped)?;
        let key: [u8; 32] = plain.try_into().map_err(|_| SealError::Open)?;
        Ok(DataKey { key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let key = DataKey::generate();
        let sealed = key.seal(b"log", b"SECRET_ENV=topsecretvalue").unwrap();
        assert!(!sealed
            .windows(b"topsecretvalue".len())
            .any(|w| w == b"topsecretvalue"));
        assert_eq!(
            key.open(b"log", &sealed).unwrap(),
            b"SECRET_ENV=topsecretvalue"
        );
        assert_eq!(key.open(b"snapshot", &sealed), Err(SealError::Open));
        assert_eq!(
            DataKey::generate().open(b"log", &sealed),
            Err(SealError::Open)
        );
        let mut changed = sealed.clone();
        changed[30] ^= 1;
        assert_eq!(key.open(b"log", &changed), Err(SealError::Open));
        assert_eq!(key.open(b"log", &sealed[..20]), Err(SealError::Short));
        // A fresh nonce every time.
        assert_ne!(
            key.seal(b"log", b"x").unwrap(),
            key.seal(b"log", b"x").unwrap()
        );
    }

    #[test]
    fn a_wrapped_data_key_unwraps_only_with_its_kek() {
        let dek = DataKey::generate();
        let kek = KeyEncryptionKey::generate();
        let wrapped = kek.wrap(&dek).unwrap();
        let back = kek.unwrap(&wrapped).unwrap();
        let sealed = dek.seal(b"c", b"v").unwrap();
        assert_eq!(back.open(b"c", &sealed).unwrap(), b"v");
        assert_eq!(
            KeyEncryptionKey::generate().unwrap(&wrapped).unwrap_err(),
            SealError::Open
        );
    }

    #[test]
    fn unlock_keys_read_back_as_swarm_writes_them() {
        let kek = KeyEncryptionKey::generate();
        let text = kek.to_unlock_key();
        assert!(text.starts_with("SWMKEY-1-"), "{text}");
        assert_eq!(text.len(), "SWMKEY-1-".len() + 43, "{text}");
        assert_eq!(
            KeyEncryptionKey::parse_unlock_key(&format!("  {text}\n")).unwrap(),
            kek
        );
        // Swarm's own form (raw standard base64).
        let swarm = "SWMKEY-1-WuYH/IX284+lRcXuoVf38viIDK3HJEKY13MIHX+tTt8";
        assert!(KeyEncryptionKey::parse_unlock_key(swarm).is_ok());
        assert_eq!(
            KeyEncryptionKey::parse_unlock_key("WuYH/IX284+lRcXuoVf38viIDK3HJEKY13MIHX+tTt8"),
            Err(UnlockKeyError::Prefix)
        );
        assert_eq!(
            KeyEncryptionKey::parse_unlock_key("SWMKEY-1-short"),
            Err(UnlockKeyError::Encoding)
        );
        assert_eq!(
            KeyEncryptionKey::parse_unlock_key("SWMKEY-1-!!!!"),
            Err(UnlockKeyError::Encoding)
        );
        assert!(!format!("{kek:?}").contains(&kek.encode()));
    }
}
