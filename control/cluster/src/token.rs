//! Join tokens, Docker's format: `SWMTKN-1-<CA digest>-<secret>`.
//!
//! - `<CA digest>`: the SHA-256 of the cluster root CA certificate (DER) as a base-36
//!   number, lowercase, left-padded with `0` to 50 characters. A joining node pins the CA
//!   by it ([`crate::pki::bootstrap_client_config`]) before it sends anything.
//! - `<secret>`: 128 random bits, base-36, padded to 25 characters.
//!
//! This is byte-for-byte how swarmkit writes version-1 tokens, so a token looks like a
//! Docker one. There is one token per role; whoever presents the manager token joins as a
//! manager. Rotating a role's token ([`JoinTokens::rotate`]) makes a new secret; the old
//! one stops working for new joins, nodes already in keep their certificates.
//!
//! Tokens are secrets: `Display` and `Debug` show [`JoinToken::redacted`]
//! (`SWMTKN-1-<digest>-<redacted>`); the whole token only comes out of
//! [`JoinToken::expose_secret`] and of serialization (for the managers' store).

use std::fmt;
use std::hint::black_box;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::pki::cert::random_bytes;
use crate::pki::CaDigest;
pub use crate::pki::Role;

pub(crate) mod base36;

use base36::Base36Error;

/// The token prefix.
pub const TOKEN_PREFIX: &str = "SWMTKN";
/// The only token version this crate writes and reads.
pub const TOKEN_VERSION: u32 = 1;
/// Characters of the digest part.
pub const DIGEST_CHARS: usize = 50;
/// Characters of the secret part.
pub const SECRET_CHARS: usize = 25;

/// Why a token was refused. Messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a join token: it must start with {TOKEN_PREFIX}-")]
    WrongPrefix,
    #[error("unsupported join token version {0:?} (shoal reads version {TOKEN_VERSION})")]
    WrongVersion(String),
    #[error("malformed join token: expected {TOKEN_PREFIX}-{TOKEN_VERSION}-<CA digest>-<secret>")]
    Malformed,
    #[error("malformed join token: bad CA digest: {0}")]
    BadDigest(String),
    #[error("malformed join token: bad secret: {0}")]
    BadSecret(String),
    #[error(
        "the join token is for another cluster (its CA digest does not match this cluster's CA)"
    )]
    WrongCluster,
    #[error("invalid join token (wrong, or rotated)")]
    Invalid,
    #[error("this is a {found} join token, but a {expected} token is needed")]
    WrongRole { expected: Role, found: Role },
}

/// A token's secret part: 128 random bits. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret([u8; 16]);

impl TokenSecret {
    fn generate() -> Self {
        TokenSecret(random_bytes::<16>())
    }

    /// The secret's bytes (for a constant-time comparison, or a KDF).
    pub fn expose_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret([redacted])")
    }
}

/// One join token. `Display`/`Debug` are redacted; see the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    digest: CaDigest,
    secret: TokenSecret,
}

impl JoinToken {
    /// A new token with a fresh random secret for the CA with this digest.
    pub fn generate(ca_digest: CaDigest) -> Self {
        JoinToken {
            digest: ca_digest,
            secret: TokenSecret::generate(),
        }
    }

    /// Reads a token. Surrounding whitespace (a pasted newline) is ignored; everything
    /// else must be exact: `SWMTKN`, version `1`, 50 characters `[0-9a-z]` of digest (a
    /// number below 2^256), 25 characters `[0-9a-z]` of secret (below 2^128).
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        let mut parts = text.split('-');
        if parts.next() != Some(TOKEN_PREFIX) {
            return Err(TokenError::WrongPrefix);
        }
        let version = parts.next().ok_or(TokenError::Malformed)?;
        if version != TOKEN_VERSION.to_string() {
            let shown: String = version.chars().take(8).collect();
            return Err(TokenError::WrongVersion(shown));
        }
        let (Some(digest), Some(secret), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let digest = base36::decode_fixed::<32>(digest, DIGEST_CHARS).map_err(|e| {
            TokenError::BadDigest(match e {
                Base36Error::OutOfRange => "larger than a SHA-256".into(),
                e => e.to_string(),
            })
        })?;
        let secret = base36::decode_fixed::<16>(secret, SECRET_CHARS).map_err(|e| {
            TokenError::BadSecret(match e {
                Base36Error::Length { expected, found } => {
                    format!("expected {expected} characters, found {found}")
                }
                // Neither the character nor its position: the rest is secret.
                Base36Error::Character { .. } => "characters must be [0-9a-z]".into(),
                Base36Error::OutOfRange => "larger than 128 bits".into(),
            })
        })?;
        Ok(JoinToken {
            digest: CaDigest::from_bytes(digest),
            secret: TokenSecret(secret),
        })
    }

    /// The digest of the CA this token is for.
    pub fn ca_digest(&self) -> &CaDigest {
        &self.digest
    }

    pub fn secret(&self) -> &TokenSecret {
        &self.secret
    }

    /// `SWMTKN-1-<digest>-<redacted>`: safe for logs and errors.
    pub fn redacted(&self) -> String {
        format!(
            "{TOKEN_PREFIX}-{TOKEN_VERSION}-{}-<redacted>",
            base36::encode_padded(self.digest.as_bytes(), DIGEST_CHARS)
        )
    }

    /// The whole token, secret included: for `join-token` output and the join call only.
    pub fn expose_secret(&self) -> String {
        format!(
            "{TOKEN_PREFIX}-{TOKEN_VERSION}-{}-{}",
            base36::encode_padded(self.digest.as_bytes(), DIGEST_CHARS),
            base36::encode_padded(&self.secret.0, SECRET_CHARS)
        )
    }

    /// Digest then secret, the bytes compared by [`JoinTokens::check`].
    fn material(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        out[..32].copy_from_slice(self.digest.as_bytes());
        out[32..].copy_from_slice(&self.secret.0);
        out
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({})", self.redacted())
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JoinToken::parse(s)
    }
}

/// Serialized as the whole token string (the managers' store must keep the secret).
impl Serialize for JoinToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.expose_secret())
    }
}

impl<'de> Deserialize<'de> for JoinToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        JoinToken::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Equal-length byte strings compared without an early exit: the time taken does not
/// depend on where (or whether) they differ.
fn ct_eq(a: &[u8; 48], b: &[u8; 48]) -> bool {
    let mut diff = 0u8;
    for i in 0..48 {
        diff |= black_box(a[i] ^ b[i]);
    }
    black_box(diff) == 0
}

/// The managers' current tokens, one per role. Serialized as
/// `{"worker": "SWMTKN-…", "manager": "SWMTKN-…"}` (secrets included, for the store);
/// `Debug` is redacted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokens {
    pub worker: JoinToken,
    pub manager: JoinToken,
}

impl JoinTokens {
    /// Fresh tokens for both roles, for the CA with this digest.
    pub fn generate(ca_digest: CaDigest) -> Self {
        JoinTokens {
            worker: JoinToken::generate(ca_digest),
            manager: JoinToken::generate(ca_digest),
        }
    }

    pub fn get(&self, role: Role) -> &JoinToken {
        match role {
            Role::Worker => &self.worker,
            Role::Manager => &self.manager,
        }
    }

    /// Replaces `role`'s token with a new secret (same CA digest); the old token no longer
    /// passes [`JoinTokens::check`]. Returns the new token.
    pub fn rotate(&mut self, role: Role) -> &JoinToken {
        let slot = match role {
            Role::Worker => &mut self.worker,
            Role::Manager => &mut self.manager,
        };
        *slot = JoinToken::generate(slot.digest);
        slot
    }

    /// Checks a presented token and says which role it grants. With `expected`, a token of
    /// the other role is refused with [`TokenError::WrongRole`].
    ///
    /// Constant time: the presented digest and secret are compared with both roles' in
    /// full, always both, without early exits, so the time taken says nothing about which
    /// role matched or how much of a wrong secret was right. (Parsing looks only at the
    /// presented text, which the caller already has.)
    pub fn check(&self, presented: &str, expected: Option<Role>) -> Result<Role, TokenError> {
        let presented = JoinToken::parse(presented)?;
        let material = presented.material();
        let worker = ct_eq(&material, &self.worker.material());
        let manager = ct_eq(&material, &self.manager.material());
        let role = match (worker, manager) {
            (_, true) => Role::Manager,
            (true, false) => Role::Worker,
            (false, false) => {
                // The digest is public (it is in every token): saying it differs leaks nothing.
                return Err(if presented.digest != self.worker.digest {
                    TokenError::WrongCluster
                } else {
                    TokenError::Invalid
                });
            }
        };
        match expected {
            Some(expected) if expected != role => Err(TokenError::WrongRole {
                expected,
                found: role,
            }),
            _ => Ok(role),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> CaDigest {
        CaDigest::of_der(b"a CA certificate")
    }

    #[test]
    fn token_has_docker_shape_and_round_trips() {
        let t = JoinToken::generate(digest());
        let full = t.expose_secret();
        let parts: Vec<&str> = full.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], "SWMTKN");
        assert_eq!(parts[1], "1");
        assert_eq!(parts[2].len(), 50);
        assert_eq!(parts[3].len(), 25);
        assert!(parts[2..]
            .concat()
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
        let back = JoinToken::parse(&full).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.ca_digest(), &digest());
        assert_eq!(back.secret(), t.secret());
        assert_eq!(JoinToken::parse(&format!("  {full}\n")).unwrap(), t);
        assert_eq!(full.parse::<JoinToken>().unwrap(), t);
    }

    #[test]
    fn reads_a_docker_token() {
        // The digest part is base-36 of the CA's SHA-256, as swarmkit writes it.
        let d = CaDigest::from_bytes([0xff; 32]);
        let text =
            "SWMTKN-1-6dp5qcb22im238nr3wvp0ic7q99w035jmy2iw7i6n43d37jtof-f5lxx1zz5pnorynqglhzmsp33";
        let t = JoinToken::parse(text).unwrap();
        assert_eq!(t.ca_digest(), &d);
        assert_eq!(t.secret().expose_bytes(), &[0xff; 16]);
        assert_eq!(t.expose_secret(), text);
    }

    #[test]
    fn display_debug_and_errors_do_not_leak_the_secret() {
        let tokens = JoinTokens::generate(digest());
        for t in [&tokens.worker, &tokens.manager] {
            let secret_part = t.expose_secret().rsplit('-').next().unwrap().to_string();
            for shown in [
                t.to_string(),
                format!("{t:?}"),
                format!("{tokens:?}"),
                t.redacted(),
                format!("{:?}", t.secret()),
            ] {
                assert!(!shown.contains(&secret_part), "{shown}");
            }
            assert!(t.to_string().ends_with("-<redacted>"));
            assert!(t.to_string().starts_with("SWMTKN-1-"));
        }
        // A malformed secret is not echoed either.
        let d = base36::encode_padded(digest().as_bytes(), 50);
        let err = JoinToken::parse(&format!("SWMTKN-1-{d}-s3cretSECRETs3cretSECRETs"))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn parse_errors_are_specific() {
        let d = base36::encode_padded(digest().as_bytes(), 50);
        let s = base36::encode_padded(&[7; 16], 25);
        let ok = format!("SWMTKN-1-{d}-{s}");
        assert!(JoinToken::parse(&ok).is_ok());

        assert_eq!(JoinToken::parse(""), Err(TokenError::WrongPrefix));
        assert_eq!(
            JoinToken::parse(&format!("SWMTKX-1-{d}-{s}")),
            Err(TokenError::WrongPrefix)
        );
        assert_eq!(
            JoinToken::parse(&format!("swmtkn-1-{d}-{s}")),
            Err(TokenError::WrongPrefix)
        );
        assert_eq!(
            JoinToken::parse(&format!("SWMTKN-2-{d}-{s}")),
            Err(TokenError::WrongVersion("2".into()))
        );
        assert_eq!(JoinToken::parse("SWMTKN"), Err(TokenError::Malformed));
        assert_eq!(
            JoinToken::parse(&format!("SWMTKN-1-{d}")),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            JoinToken::parse(&format!("SWMTKN-1-{d}-{s}-extra")),
            Err(TokenError::Malformed)
        );
        assert!(matches!(
            JoinToken::parse(&format!("SWMTKN-1-{}-{s}", &d[1..])),
            Err(TokenError::BadDigest(m)) if m.contains("expected 50 characters, found 49")
        ));
        let upper = d.to_uppercase();
        assert!(matches!(
            JoinToken::parse(&format!("SWMTKN-1-{upper}-{s}")),
            Err(TokenError::BadDigest(m)) if m.contains("[0-9a-z]")
        ));
        assert!(matches!(
            JoinToken::parse(&format!("SWMTKN-1-{}-{s}", "z".repeat(50))),
            Err(TokenError::BadDigest(m)) if m.contains("larger than a SHA-256")
        ));
        assert!(matches!(
            JoinToken::parse(&format!("SWMTKN-1-{d}-{}", &s[..24])),
            Err(TokenError::BadSecret(m)) if m.contains("expected 25 characters, found 24")
        ));
        assert!(matches!(
            JoinToken::parse(&format!("SWMTKN-1-{d}-{}", "z".repeat(25))),
            Err(TokenError::BadSecret(m)) if m.contains("larger than 128 bits")
        ));
        assert!(matches!(
            JoinToken::parse(&format!("SWMTKN-1-{d}-{}_", &s[..24])),
            Err(TokenError::BadSecret(_))
        ));
    }

    #[test]
    fn check_gives_the_role_and_refuses_rotated_and_foreign_tokens() {
        let mut tokens = JoinTokens::generate(digest());
        assert_ne!(tokens.worker, tokens.manager);
        let worker = tokens.worker.expose_secret();
        let manager = tokens.manager.expose_secret();

        assert_eq!(tokens.check(&worker, None), Ok(Role::Worker));
        assert_eq!(tokens.check(&manager, None), Ok(Role::Manager));
        assert_eq!(tokens.check(&worker, Some(Role::Worker)), Ok(Role::Worker));
        assert_eq!(
            tokens.check(&worker, Some(Role::Manager)),
            Err(TokenError::WrongRole {
                expected: Role::Manager,
                found: Role::Worker
            })
        );

        let new_worker = tokens.rotate(Role::Worker).expose_secret();
        assert_ne!(new_worker, worker);
        assert_eq!(tokens.check(&worker, None), Err(TokenError::Invalid));
        assert_eq!(tokens.check(&new_worker, None), Ok(Role::Worker));
        // Rotating one role leaves the other alone.
        assert_eq!(tokens.check(&manager, None), Ok(Role::Manager));
        assert_eq!(tokens.worker.ca_digest(), &digest());

        let foreign = JoinToken::generate(CaDigest::of_der(b"another CA")).expose_secret();
        assert_eq!(tokens.check(&foreign, None), Err(TokenError::WrongCluster));
        assert_eq!(tokens.check("nonsense", None), Err(TokenError::WrongPrefix));
    }

    #[test]
    fn tokens_serialize_whole_for_the_store() {
        let tokens = JoinTokens::generate(digest());
        let json = serde_json::to_value(&tokens).unwrap();
        assert_eq!(json["worker"], tokens.worker.expose_secret());
        assert_eq!(json["manager"], tokens.manager.expose_secret());
        let back: JoinTokens = serde_json::from_value(json).unwrap();
        assert_eq!(back, tokens);
        assert!(serde_json::from_str::<JoinTokens>(r#"{"worker":"x","manager":"y"}"#).is_err());
    }

    #[test]
    fn constant_time_compare_is_correct() {
        let a = [3u8; 48];
        let mut b = a;
        assert!(ct_eq(&a, &b));
        for i in [0, 31, 32, 47] {
            b = a;
            b[i] ^= 0x80;
            assert!(!ct_eq(&a, &b));
        }
    }
}
