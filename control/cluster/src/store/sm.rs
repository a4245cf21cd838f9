//! Openraft's state machine: the [`ClusterState`] plus what Raft needs beside it (last
//! applied log ID, last membership) and the snapshot.
//!
//! The state itself lives in memory. What makes it durable is the log plus
//! `snapshot.sealed` (sealed with the manager's data key like the log, 0600, written with
//! fsync before openraft may purge the log it covers): at start the state is the
//! snapshot's, and openraft re-applies the log from there to the committed index. An older
//! agent's plain `snapshot.json` is sealed at open and removed.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::state::{ApplyResult, ClusterState};
use super::{RaftId, TypeConfig};
use crate::private_fs::write_atomic;
use crate::seal::DataKey;

const SNAPSHOT_FILE: &str = "snapshot.sealed";
/// The plain snapshot of older agents, sealed into [`SNAPSHOT_FILE`] at open.
const PLAIN_SNAPSHOT_FILE: &str = "snapshot.json";
/// Associated data of the sealed snapshot.
const SNAPSHOT_CONTEXT: &[u8] = b"shoal raft snapshot v1";

#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<RaftId, BasicNode>,
    /// The serialized [`ClusterState`].
    data: Vec<u8>,
}

pub(crate) struct Data {
    pub(crate) state: ClusterState,
    pub(crate) last_applied: Option<LogId<RaftId>>,
    pub(crate) membership: StoredMembership<RaftId, BasicNode>,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

pub(crate) struct Shared {
    dir: PathBuf,
    key: DataKey,
    data: RwLock<Data>,
    version: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Data> {
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Data> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// Openraft's state machine; clones share one state.
#[derive(Clone)]
pub(crate) struct StateMachineStore {
    pub(crate) shared: Arc<Shared>,
}

impl StateMachineStore {
    /// Starts from the snapshot in `dir`, if there is one (sealed with `key`).
    pub(crate) fn open(dir: &Path, key: &DataKey) -> io::Result<Self> {
        let path = dir.join(SNAPSHOT_FILE);
        let parse = |bytes: &[u8]| {
            serde_json::from_slice::<StoredSnapshot>(bytes)
                .map_err(|e| io::Error::other(format!("parse {}: {e}", path.display())))
        };
        seal_plain_snapshot(dir, key)?;
        let snapshot: Option<StoredSnapshot> = match std::fs::read(&path) {
            Ok(sealed) => {
                let plain = key.open(SNAPSHOT_CONTEXT, &sealed).map_err(|e| {
                    io::Error::other(format!(
                        "{} (damaged, or sealed under another data key): {e}",
                        path.display()
                    ))
                })?;
                Some(parse(&plain)?)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut data = Data {
            state: ClusterState::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
            snapshots_built: 0,
        };
        if let Some(s) = snapshot {
            data.state = serde_json::from_slice(&s.data)
                .map_err(|e| io::Error::other(format!("parse {}: {e}", path.display())))?;
            data.last_applied = s.meta.last_log_id;
            data.membership = s.meta.last_membership.clone();
            data.snapshot = Some(s);
        }
        let (version, _) = watch::channel(data.state.version);
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                key: key.clone(),
                data: RwLock::new(data),
                version,
            }),
        })
    }

    fn persist(&self, snapshot: &StoredSnapshot) -> io::Result<()> {
        let bytes = serde_json::to_vec(snapshot).map_err(io::Error::other)?;
        let sealed = self
            .shared
            .key
            .seal(SNAPSHOT_CONTEXT, &bytes)
            .map_err(|e| io::Error::other(format!("sealing the snapshot: {e}")))?;
        write_atomic(&self.shared.dir.join(SNAPSHOT_FILE), &sealed, true)
    }
}

/// Seals an older agent's plain `snapshot.json` into `snapshot.sealed`, then removes the
/// plain one (beside a sealed one, it is what a crash after the rename left).
fn seal_plain_snapshot(dir: &Path, key: &DataKey) -> io::Result<()> {
    let plain_path = dir.join(PLAIN_SNAPSHOT_FILE);
    let plain = match std::fs::read(&plain_path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let path = dir.join(SNAPSHOT_FILE);
    if !path.exists() {
        serde_json::from_slice::<StoredSnapshot>(&plain)
            .map_err(|e| io::Error::other(format!("parse {}: {e}", plain_path.display())))?;
        let sealed = key
            .seal(SNAPSHOT_CONTEXT, &plain)
            .map_err(|e| io::Error::other(format!("sealing the snapshot: {e}")))?;
        write_atomic(&path, &sealed, true)?;
        tracing::info!(path = %path.display(), "sealed the plain snapshot an older agent left");
    }
    std::fs::remove_file(&plain_path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<RaftId>> {
        let stored = {
            let mut d = self.shared.write();
            d.snapshots_built += 1;
            let data =
                serde_json::to_vec(&d.state).map_err(|e| StorageIOError::read_state_machine(&e))?;
            let snapshot_id = match d.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, d.snapshots_built),
                None => format!("0-0-{}", d.snapshots_built),
            };
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: d.last_applied,
                    last_membership: d.membership.clone(),
                    snapshot_id,
                },
                data,
            }
        };
        // Durable before openraft may purge the log the snapshot covers.
        self.persist(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(stored.meta.signature()), &e))?;
        self.shared.write().snapshot = Some(stored.clone());
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<RaftId>>, StoredMembership<RaftId, BasicNode>), StorageError<RaftId>>
    {
        let d = self.shared.read();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError<RaftId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let version = {
            let mut d = self.shared.write();
            for entry in entries {
                d.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => ApplyResult::Applied {
                        version: d.state.version,
                    },
                    EntryPayload::Normal(ref command) => d.state.apply(command),
                    EntryPayload::Membership(m) => {
                        d.membership = StoredMembership::new(Some(entry.log_id), m);
                        ApplyResult::Applied {
                            version: d.state.version,
                        }
                    }
                };
                out.push(result);
            }
            d.state.version
        };
        self.shared.version.send_replace(version);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<RaftId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<RaftId>> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        let state: ClusterState = serde_json::from_slice(&stored.data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.persist(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let version = state.version;
        {
            let mut d = self.shared.write();
            d.state = state;
            d.last_applied = meta.last_log_id;
            d.membership = meta.last_membership.clone();
            d.snapshot = Some(stored);
        }
        self.shared.version.send_replace(version);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<RaftId>> {
        Ok(self.shared.read().snapshot.clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::Command;
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "shoal-store-sm-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        crate::private_fs::create_dir(&d).unwrap();
        d
    }

    fn secret_entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::SetTokens {
                tokens: serde_json::json!({"worker": "SWMTKN-1-topsecretvalue"}),
            }),
        }
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    #[tokio::test]
    async fn the_snapshot_is_sealed_owner_only_and_opens_only_with_its_key() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempdir("sealed");
        let key = DataKey::generate();
        let mut sm = StateMachineStore::open(&dir, &key).unwrap();
        sm.apply([secret_entry(1)]).await.unwrap();
        sm.build_snapshot().await.unwrap();
        let path = dir.join(SNAPSHOT_FILE);
        assert!(!contains(&std::fs::read(&path).unwrap(), "topsecretvalue"));
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);

        let back = StateMachineStore::open(&dir, &key).unwrap();
        assert_eq!(back.shared.read().state.version, 1);
        assert!(back.shared.read().state.tokens.is_some());
        let e = StateMachineStore::open(&dir, &DataKey::generate())
            .err()
            .unwrap();
        assert!(e.to_string().contains("another data key"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn an_older_plain_snapshot_is_sealed_at_open() {
        let dir = tempdir("plain");
        let mut state = ClusterState::default();
        state.apply(&Command::SetTokens {
            tokens: serde_json::json!({"worker": "SWMTKN-1-topsecretvalue"}),
        });
        let plain = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 7)),
                last_membership: StoredMembership::default(),
                snapshot_id: "1-7-1".into(),
            },
            data: serde_json::to_vec(&state).unwrap(),
        };
        std::fs::write(
            dir.join(PLAIN_SNAPSHOT_FILE),
            serde_json::to_vec(&plain).unwrap(),
        )
        .unwrap();
        let key = DataKey::generate();
        let sm = StateMachineStore::open(&dir, &key).unwrap();
        assert!(!dir.join(PLAIN_SNAPSHOT_FILE).exists());
        assert!(!contains(
            &std::fs::read(dir.join(SNAPSHOT_FILE)).unwrap(),
            "topsecretvalue"
        ));
        assert_eq!(sm.shared.read().state, state);
        assert_eq!(sm.shared.read().last_applied.unwrap().index, 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
