//! A manager's data key on disk: `manager-key.json` (0600) in the node's cluster
//! directory, the data key ([`DataKey`]) wrapped by a key-encryption key.
//!
//! - Autolock off: the KEK is a random key of this manager's, kept in the same file
//!   (`local_kek`). The node restarts on its own; what the sealing buys is that the
//!   store, the CA key and the node key are never on disk in the clear, and that turning
//!   autolock on is one rewrap.
//! - Autolock on: the KEK is the cluster's unlock key, which is on no disk (it is in the
//!   store, sealed by each manager's data key, and in the managers' memory). After a
//!   restart the file cannot be opened without it: the manager is locked until `swarm
//!   unlock` gives the key back.
//!
//! Every change of wrapping is one atomic rewrite of the file (temp file, fsync,
//! rename), so a crash leaves the old wrapping or the new one; the data key itself never
//! changes, so nothing it sealed is rewritten. `follows_version` is the store version
//! of the autolock setting this wrapping follows: a state replayed from an older point
//! after a restart never undoes a newer decision.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::ClusterError;
use crate::private_fs;
use crate::seal::{DataKey, KeyEncryptionKey};

pub(crate) const KEY_FILE: &str = "manager-key.json";

#[derive(Serialize, Deserialize)]
struct KeyFile {
    /// The data key sealed under the KEK (base64).
    wrapped_data_key: String,
    /// The KEK when it is kept on disk (autolock off); absent: the unlock key wraps
    /// the data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    local_kek: Option<String>,
    #[serde(default)]
    follows_version: u64,
}

/// A manager's keys, in memory while it runs.
pub(crate) struct ManagerKeys {
    data_key: DataKey,
    kek: KeyEncryptionKey,
    /// The KEK is the cluster's unlock key (not on disk).
    autolocked: bool,
    follows_version: u64,
}

impl fmt::Debug for ManagerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerKeys")
            .field("autolocked", &self.autolocked)
            .field("follows_version", &self.follows_version)
            .finish_non_exhaustive()
    }
}

/// What the key file says at start.
pub(crate) enum OnDisk {
    /// No key file: not a manager, or a manager of an older agent (its store in the clear).
    Missing,
    Open(ManagerKeys),
    /// Wrapped by the unlock key: `swarm unlock` must give it.
    Locked,
}

fn files_error(path: &Path, e: impl fmt::Display) -> ClusterError {
    ClusterError::Files {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn read(dir: &Path) -> Result<Option<KeyFile>, ClusterError> {
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| files_error(&path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(files_error(&path, e)),
    }
}

fn wrapped(file: &KeyFile, path: &Path) -> Result<Vec<u8>, ClusterError> {
    STANDARD
        .decode(&file.wrapped_data_key)
        .map_err(|e| files_error(path, format!("the wrapped data key: {e}")))
}

/// Reads the key file; opens it when its KEK is in it.
pub(crate) fn load(dir: &Path) -> Result<OnDisk, ClusterError> {
    let path = dir.join(KEY_FILE);
    let Some(file) = read(dir)? else {
        return Ok(OnDisk::Missing);
    };
    let Some(kek) = &file.local_kek else {
        return Ok(OnDisk::Locked);
    };
    let kek = KeyEncryptionKey::decode(kek).map_err(|e| files_error(&path, e))?;
    let data_key = kek
        .unwrap(&wrapped(&file, &path)?)
        .map_err(|e| files_error(&path, format!("the data key: {e}")))?;
    Ok(OnDisk::Open(ManagerKeys {
        data_key,
        kek,
        autolocked: false,
        follows_version: file.follows_version,
    }))
}

/// Opens a locked key file with the unlock key `kek`. A wrong key is
/// [`ClusterError::BadUnlockKey`] and changes nothing.
pub(crate) fn unlock(dir: &Path, kek: &KeyEncryptionKey) -> Result<ManagerKeys, ClusterError> {
    let path = dir.join(KEY_FILE);
    let file = read(dir)?.ok_or(ClusterError::NotLocked)?;
    if file.local_kek.is_some() {
        return Err(ClusterError::NotLocked);
    }
    let data_key = kek
        .unwrap(&wrapped(&file, &path)?)
        .map_err(|_| ClusterError::BadUnlockKey)?;
    Ok(ManagerKeys {
        data_key,
        kek: kek.clone(),
        autolocked: true,
        follows_version: file.follows_version,
    })
}

/// A new data key for a manager, wrapped by `unlock_key` (autolock) or else by a new
/// local KEK, written to `dir`.
pub(crate) fn create(
    dir: &Path,
    unlock_key: Option<&KeyEncryptionKey>,
) -> Result<ManagerKeys, ClusterError> {
    let keys = ManagerKeys {
        data_key: DataKey::generate(),
        kek: unlock_key
            .cloned()
            .unwrap_or_else(KeyEncryptionKey::generate),
        autolocked: unlock_key.is_some(),
        follows_version: 0,
    };
    keys.save(dir)?;
    Ok(keys)
}

/// Removes the key file (the node is no manager any more).
pub(crate) fn remove(dir: &Path) -> Result<(), ClusterError> {
    let path = dir.join(KEY_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(files_error(&path, e)),
    }
}

impl ManagerKeys {
    pub(crate) fn data_key(&self) -> &DataKey {
        &self.data_key
    }

    /// The store version of the autolock setting the wrapping follows.
    pub(crate) fn follows_version(&self) -> u64 {
        self.follows_version
    }

    fn save(&self, dir: &Path) -> Result<(), ClusterError> {
        let path = dir.join(KEY_FILE);
        let wrapped = self
            .kek
            .wrap(&self.data_key)
            .map_err(|e| files_error(&path, e))?;
        let file = KeyFile {
            wrapped_data_key: STANDARD.encode(wrapped),
            local_kek: (!self.autolocked).then(|| self.kek.encode()),
            follows_version: self.follows_version,
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| files_error(&path, e))?;
        private_fs::write_atomic(&path, &json, true).map_err(|e| files_error(&path, e))
    }

    /// Follows the store's autolock setting as of store version `version`: wraps the
    /// data key under `unlock_key` (autolock on; the file then holds no KEK), or under a
    /// new local KEK (autolock off). Does nothing when the setting is older than the one
    /// followed. Returns whether the wrapping changed.
    pub(crate) fn follow(
        &mut self,
        dir: &Path,
        unlock_key: Option<&KeyEncryptionKey>,
        version: u64,
    ) -> Result<bool, ClusterError> {
        if version <= self.follows_version {
            return Ok(false);
        }
        let changed = match (unlock_key, self.autolocked) {
            (Some(key), true) if *key == self.kek => false,
            (None, false) => false,
            _ => true,
        };
        let mut next = ManagerKeys {
            data_key: self.data_key.clone(),
            kek: self.kek.clone(),
            autolocked: self.autolocked,
            follows_version: version,
        };
        if changed {
            next.kek = unlock_key
                .cloned()
                .unwrap_or_else(KeyEncryptionKey::generate);
            next.autolocked = unlock_key.is_some();
        }
        next.save(dir)?;
        *self = next;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "shoal-manager-keys-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        private_fs::create_dir(&d).unwrap();
        d
    }

    fn file_text(dir: &Path) -> String {
        std::fs::read_to_string(dir.join(KEY_FILE)).unwrap()
    }

    #[test]
    fn autolock_on_rotate_and_off_rewrap_the_same_data_key() {
        let dir = tempdir("follow");
        let mut keys = create(&dir, None).unwrap();
        let sealed = keys.data_key().seal(b"t", b"v").unwrap();
        let OnDisk::Open(_) = load(&dir).unwrap() else {
            panic!("a local KEK opens on its own");
        };

        let first = KeyEncryptionKey::generate();
        assert!(keys.follow(&dir, Some(&first), 5).unwrap());
        assert!(!file_text(&dir).contains("local_kek"));
        assert!(!file_text(&dir).contains(&first.encode()));
        assert!(matches!(load(&dir).unwrap(), OnDisk::Locked));
        let opened = unlock(&dir, &first).unwrap();
        assert_eq!(opened.data_key().open(b"t", &sealed).unwrap(), b"v");
        assert_eq!(opened.follows_version(), 5);

        // An older setting (a state replayed from before) changes nothing.
        assert!(!keys.follow(&dir, None, 4).unwrap());
        assert!(matches!(load(&dir).unwrap(), OnDisk::Locked));

        // Rotation: the old key no longer opens it; the new one does.
        let second = KeyEncryptionKey::generate();
        assert!(keys.follow(&dir, Some(&second), 9).unwrap());
        assert!(matches!(
            unlock(&dir, &first),
            Err(ClusterError::BadUnlockKey)
        ));
        let opened = unlock(&dir, &second).unwrap();
        assert_eq!(opened.data_key().open(b"t", &sealed).unwrap(), b"v");

        // Off: a new local KEK on disk, and it opens without a key again.
        assert!(keys.follow(&dir, None, 12).unwrap());
        let OnDisk::Open(opened) = load(&dir).unwrap() else {
            panic!("autolock off: opens on its own");
        };
        assert_eq!(opened.data_key().open(b"t", &sealed).unwrap(), b"v");
        assert!(matches!(
            unlock(&dir, &second),
            Err(ClusterError::NotLocked)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_wrong_unlock_key_changes_nothing() {
        let dir = tempdir("wrong");
        let key = KeyEncryptionKey::generate();
        create(&dir, Some(&key)).unwrap();
        let before = file_text(&dir);
        assert!(matches!(
            unlock(&dir, &KeyEncryptionKey::generate()),
            Err(ClusterError::BadUnlockKey)
        ));
        assert_eq!(file_text(&dir), before);
        assert!(unlock(&dir, &key).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
