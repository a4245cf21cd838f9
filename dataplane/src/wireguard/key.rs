//! The node's WireGuard identity: an X25519 key pair whose private half is kept in the
//! agent's data directory (mode 0600, never sent anywhere) and whose public half the
//! node registers with the managers, who record it on the node's store record.
use std::{
    fmt,
    fs::{self, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    time::SystemTime,
};

use boringtun::x25519::{PublicKey, StaticSecret};

/// File name of the private key in the agent's data directory.
pub const KEY_FILE: &str = "wireguard.key";

/// The node's key pair.
#[derive(Clone)]
pub struct NodeKey {
    secret: StaticSecret,
    public: PublicKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.public_hex())
    }
}

impl NodeKey {
    pub fn from_secret(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        NodeKey { secret, public }
    }

    /// A new random key pair (from the kernel's random source).
    pub fn generate() -> io::Result<Self> {
        let mut bytes = [0u8; 32];
        fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Self::from_secret(bytes))
    }

    /// Reads the key in `data_dir`, making one if there is none. A file that does not
    /// hold a key is an error (it is not replaced: a node's identity never changes
    /// behind its operator's back).
    pub fn load_or_create(data_dir: &Path) -> io::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = parse_hex32(text.trim()).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                Ok(Self::from_secret(bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                key.store(data_dir)?;
                Ok(key)
            }
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("reading {}: {e}", path.display()),
            )),
        }
    }

    /// A new key pair, kept in `data_dir` in place of the one there (written whole to a
    /// new file, then renamed over the old one: a crash leaves one key or the other).
    pub fn rotate(data_dir: &Path) -> io::Result<Self> {
        let key = Self::generate()?;
        key.store(data_dir)?;
        Ok(key)
    }

    fn store(&self, data_dir: &Path) -> io::Result<()> {
        fs::create_dir_all(data_dir)?;
        let temp = data_dir.join(format!("{KEY_FILE}.new"));
        let _ = fs::remove_file(&temp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        f.write_all(hex(self.secret.as_bytes()).as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&temp, data_dir.join(KEY_FILE))
    }

    pub fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The public key as the store records it: 64 hex digits.
    pub fn public_hex(&self) -> String {
        hex(self.public.as_bytes())
    }
}

/// When the key in `data_dir` was made (its file's modification time).
pub fn made_at(data_dir: &Path) -> io::Result<SystemTime> {
    fs::metadata(data_dir.join(KEY_FILE))?.modified()
}

/// A public key as the store records it (64 hex digits).
pub fn parse_public(text: &str) -> Result<PublicKey, String> {
    parse_hex32(text).map(PublicKey::from)
}

fn parse_hex32(text: &str) -> Result<[u8; 32], String> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a WireGuard key is 64 hex digits".into());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_and_read_back() {
        let dir = std::env::temp_dir().join(format!("shoal-wgkey-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let a = NodeKey::load_or_create(&dir).unwrap();
        let b = NodeKey::load_or_create(&dir).unwrap();
        assert_eq!(a.public_hex(), b.public_hex());
        let mode = fs::metadata(dir.join(KEY_FILE)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        assert_eq!(parse_public(&a.public_hex()).unwrap(), a.public());
        let made = made_at(&dir).unwrap();
        let c = NodeKey::rotate(&dir).unwrap();
        assert_ne!(c.public_hex(), a.public_hex(), "a new key");
        assert_eq!(
            NodeKey::load_or_create(&dir).unwrap().public_hex(),
            c.public_hex(),
            "the new key is the one kept"
        );
        assert!(made_at(&dir).unwrap() >= made);
        let mode = fs::metadata(dir.join(KEY_FILE)).unwrap();
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        assert!(!dir.join(format!("{KEY_FILE}.new")).exists());
        fs::write(dir.join(KEY_FILE), "nonsense").unwrap();
        assert!(NodeKey::load_or_create(&dir).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_public_keys_are_refused() {
        assert!(parse_public("00").is_err());
        assert!(parse_public(&"zz".repeat(32)).is_err());
        assert!(parse_public(&"ab".repeat(32)).is_ok());
    }
}
