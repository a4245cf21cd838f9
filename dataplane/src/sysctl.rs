//! Kernel parameters (sysctls) the agent changes on the node, and the journal that lets
//! `shoal agent cleanup` put them back.
//!
//! Every change to a sysctl of the node's own network namespace goes through
//! [`SysctlJournal::set`]: the value the parameter had before the agent first changed it
//! is written to `<data_dir>/sysctl-restore.json` (and synced) *before* the new value is,
//! so a crash between the two leaves a journal entry for a value that is still the old
//! one, never a change nobody recorded. A later change of the same parameter (another
//! agent start) keeps the first previous value: that is the host's own.
//!
//! Keys are paths under `/proc/sys` (`net/ipv4/conf/eth0/forwarding`), not dotted
//! names: an interface name may hold a dot (`eth0.100`).
use std::{
    fs, io,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Component, Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

/// Name of the journal in the agent's data directory.
pub const JOURNAL_FILE: &str = "sysctl-restore.json";
/// Where the kernel shows its parameters.
pub const PROC_SYS: &str = "/proc/sys";

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("{key:?} is not a sysctl path under {PROC_SYS} (like net/ipv4/ip_forward)")]
    BadKey { key: String },
    #[error("reading sysctl {key}: {source}")]
    Read { key: String, source: io::Error },
    #[error("writing sysctl {key} = {value}: {source}")]
    Write {
        key: String,
        value: String,
        source: io::Error,
    },
    #[error("reading the sysctl journal {}: {source}", path.display())]
    ReadJournal { path: PathBuf, source: io::Error },
    #[error("the sysctl journal {} is damaged ({message}); it holds the values to restore, so it is not overwritten", path.display())]
    BadJournal { path: PathBuf, message: String },
    #[error("writing the sysctl journal {}: {source}", path.display())]
    WriteJournal { path: PathBuf, source: io::Error },
}

/// One parameter the agent changed, and the value it had before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Path under `/proc/sys`.
    pub key: String,
    pub previous: String,
}

/// What the journal file holds, in the order the parameters were first changed.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalFile {
    entries: Vec<Entry>,
}

/// The journal of one agent; clones share it (the reconcilers' threads each hold one).
#[derive(Clone, Debug)]
pub struct SysctlJournal {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    root: PathBuf,
    entries: Vec<Entry>,
}

impl SysctlJournal {
    /// The journal in `data_dir`, for the kernel's `/proc/sys`; entries already there
    /// (an earlier agent's) are kept.
    pub fn open(data_dir: &Path) -> Result<Self, SysctlError> {
        Self::open_at(&data_dir.join(JOURNAL_FILE), Path::new(PROC_SYS))
    }

    /// The journal at `path` for the parameters under `root` (tests use a directory of
    /// plain files).
    pub fn open_at(path: &Path, root: &Path) -> Result<Self, SysctlError> {
        let entries = read_journal(path)?.map(|j| j.entries).unwrap_or_default();
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                path: path.to_owned(),
                root: root.to_owned(),
                entries,
            })),
        })
    }

    /// Sets `key` to `value`, recording the value it had first if this changes it.
    /// Returns whether it changed anything (a parameter that already has the value is
    /// neither written nor recorded).
    pub fn set(&self, key: &str, value: &str) -> Result<bool, SysctlError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let path = param_path(&inner.root, key)?;
        let current = fs::read_to_string(&path)
            .map_err(|source| SysctlError::Read {
                key: key.to_owned(),
                source,
            })?
            .trim()
            .to_owned();
        if current == value {
            return Ok(false);
        }
        if !inner.entries.iter().any(|e| e.key == key) {
            inner.entries.push(Entry {
                key: key.to_owned(),
                previous: current,
            });
            if let Err(e) = write_journal(&inner.path, &inner.entries) {
                inner.entries.pop();
                return Err(e);
            }
        }
        fs::write(&path, value).map_err(|source| SysctlError::Write {
            key: key.to_owned(),
            value: value.to_owned(),
            source,
        })?;
        Ok(true)
    }

    /// What the journal holds.
    pub fn entries(&self) -> Vec<Entry> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .clone()
    }
}

/// Sets a parameter without recording it: only for a namespace the agent made itself
/// and removes whole (its parameters go with it, so there is nothing to restore).
/// `key` is a path under `/proc/sys` of the calling thread's namespace.
pub fn set_unrecorded(key: &str, value: &str) -> Result<(), SysctlError> {
    let path = param_path(Path::new(PROC_SYS), key)?;
    fs::write(&path, value).map_err(|source| SysctlError::Write {
        key: key.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// What happened to one journal entry on restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restored {
    /// Written back.
    Restored,
    /// Already had its previous value.
    Unchanged,
    /// The parameter no longer exists (its interface is gone): nothing to restore.
    Gone,
    /// Could not be written back.
    Failed(String),
}

/// Writes every journaled parameter back to its previous value, last changed first, and
/// removes the journal once nothing failed. No journal: nothing to do.
pub fn restore(data_dir: &Path) -> Result<Vec<(Entry, Restored)>, SysctlError> {
    restore_at(&data_dir.join(JOURNAL_FILE), Path::new(PROC_SYS))
}

/// [`restore`] for the journal at `path` and the parameters under `root`.
pub fn restore_at(path: &Path, root: &Path) -> Result<Vec<(Entry, Restored)>, SysctlError> {
    let Some(journal) = read_journal(path)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in journal.entries.into_iter().rev() {
        let outcome = restore_one(root, &entry);
        out.push((entry, outcome));
    }
    if !out.iter().any(|(_, r)| matches!(r, Restored::Failed(_))) {
        fs::remove_file(path).map_err(|source| SysctlError::WriteJournal {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(out)
}

fn restore_one(root: &Path, entry: &Entry) -> Restored {
    let path = match param_path(root, &entry.key) {
        Ok(p) => p,
        Err(e) => return Restored::Failed(e.to_string()),
    };
    match fs::read_to_string(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Restored::Gone,
        Err(e) => Restored::Failed(format!("reading it: {e}")),
        Ok(now) if now.trim() == entry.previous => Restored::Unchanged,
        Ok(_) => match fs::write(&path, &entry.previous) {
            Ok(()) => Restored::Restored,
            Err(e) => Restored::Failed(format!("writing {}: {e}", entry.previous)),
        },
    }
}

/// `root/key`, refusing keys that are absolute, empty or climb out of `root`.
fn param_path(root: &Path, key: &str) -> Result<PathBuf, SysctlError> {
    let rel = Path::new(key);
    let plain = !key.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(SysctlError::BadKey {
            key: key.to_owned(),
        });
    }
    Ok(root.join(rel))
}

fn read_journal(path: &Path) -> Result<Option<JournalFile>, SysctlError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SysctlError::ReadJournal {
                path: path.to_owned(),
                source,
            })
        }
    };
    let journal: JournalFile =
        serde_json::from_str(&text).map_err(|e| SysctlError::BadJournal {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    for entry in &journal.entries {
        param_path(Path::new(PROC_SYS), &entry.key).map_err(|e| SysctlError::BadJournal {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(Some(journal))
}

/// Writes the journal whole through a synced temporary file and a rename, so a crash
/// leaves the old journal or the new one, never half of one.
fn write_journal(path: &Path, entries: &[Entry]) -> Result<(), SysctlError> {
    let err = |source| SysctlError::WriteJournal {
        path: path.to_owned(),
        source,
    };
    let text = serde_json::to_string_pretty(&JournalFile {
        entries: entries.to_vec(),
    })
    .map_err(|e| err(io::Error::other(e)))?;
    let tmp = path.with_extension(format!("json.tmp-{}", std::process::id()));
    let written = (|| {
        // Owner-only, like everything in the agent's data directory.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /proc/sys and a journal path in a fresh temporary directory.
    struct Fake {
        dir: PathBuf,
    }

    impl Fake {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("shoal-sysctl-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("sys/net/ipv4/conf/eth0.100")).unwrap();
            fs::write(dir.join("sys/net/ipv4/conf/eth0.100/forwarding"), "0\n").unwrap();
            fs::write(dir.join("sys/net/ipv4/conf/eth0.100/rp_filter"), "1\n").unwrap();
            fs::write(dir.join("sys/net/ipv4/ip_forward"), "1\n").unwrap();
            Self { dir }
        }
        fn root(&self) -> PathBuf {
            self.dir.join("sys")
        }
        fn journal(&self) -> PathBuf {
            self.dir.join(JOURNAL_FILE)
        }
        fn value(&self, key: &str) -> String {
            fs::read_to_string(self.root().join(key))
                .unwrap()
                .trim()
                .to_owned()
        }
        fn open(&self) -> SysctlJournal {
            SysctlJournal::open_at(&self.journal(), &self.root()).unwrap()
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    const FWD: &str = "net/ipv4/conf/eth0.100/forwarding";
    const RPF: &str = "net/ipv4/conf/eth0.100/rp_filter";

    #[test]
    fn a_change_is_journaled_before_it_is_made_and_restored() {
        let fake = Fake::new("restore");
        let journal = fake.open();
        assert!(journal.set(FWD, "1").unwrap());
        assert!(journal.set(RPF, "2").unwrap());
        assert_eq!(fake.value(FWD), "1");
        assert_eq!(fake.value(RPF), "2");
        // Already at its value: neither written nor recorded.
        assert!(!journal.set("net/ipv4/ip_forward", "1").unwrap());
        let on_disk = SysctlJournal::open_at(&fake.journal(), &fake.root())
            .unwrap()
            .entries();
        assert_eq!(
            on_disk,
            vec![
                Entry {
                    key: FWD.into(),
                    previous: "0".into()
                },
                Entry {
                    key: RPF.into(),
                    previous: "1".into()
                },
            ]
        );
        let report = restore_at(&fake.journal(), &fake.root()).unwrap();
        assert_eq!(report.len(), 2);
        assert!(report.iter().all(|(_, r)| *r == Restored::Restored));
        assert_eq!(fake.value(FWD), "0");
        assert_eq!(fake.value(RPF), "1");
        assert!(!fake.journal().exists(), "a finished restore removes it");
        // Nothing journaled: nothing to do.
        assert!(restore_at(&fake.journal(), &fake.root())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_first_previous_value_wins_across_agent_starts() {
        let fake = Fake::new("first");
        fake.open().set(FWD, "1").unwrap();
        // The host changes it meanwhile; a new agent changes it again.
        fs::write(fake.root().join(FWD), "0").unwrap();
        let second = fake.open();
        assert!(second.set(FWD, "1").unwrap());
        assert_eq!(second.entries().len(), 1);
        assert_eq!(second.entries()[0].previous, "0");
    }

    #[test]
    fn gone_parameters_are_skipped_and_bad_keys_refused() {
        let fake = Fake::new("gone");
        fake.open().set(FWD, "1").unwrap();
        fs::remove_dir_all(fake.root().join("net/ipv4/conf/eth0.100")).unwrap();
        let report = restore_at(&fake.journal(), &fake.root()).unwrap();
        assert_eq!(report[0].1, Restored::Gone);
        for key in ["", "/proc/sys/net/ipv4/ip_forward", "net/../../etc/passwd"] {
            assert!(
                matches!(fake.open().set(key, "1"), Err(SysctlError::BadKey { .. })),
                "{key:?}"
            );
        }
    }

    #[test]
    fn a_damaged_journal_is_refused_not_overwritten() {
        let fake = Fake::new("damaged");
        fs::write(fake.journal(), "{\"entries\": [").unwrap();
        let err = SysctlJournal::open_at(&fake.journal(), &fake.root()).unwrap_err();
        assert!(matches!(err, SysctlError::BadJournal { .. }), "{err}");
        assert!(restore_at(&fake.journal(), &fake.root()).is_err());
        assert_eq!(
            fs::read_to_string(fake.journal()).unwrap(),
            "{\"entries\": ["
        );
    }

    #[test]
    fn a_failed_restore_keeps_the_journal() {
        let fake = Fake::new("failed");
        fake.open().set(FWD, "1").unwrap();
        // A directory where the parameter was: reading it fails with something other
        // than NotFound.
        let p = fake.root().join(FWD);
        fs::remove_file(&p).unwrap();
        fs::create_dir(&p).unwrap();
        let report = restore_at(&fake.journal(), &fake.root()).unwrap();
        assert!(matches!(report[0].1, Restored::Failed(_)), "{report:?}");
        assert!(fake.journal().exists());
    }
}
